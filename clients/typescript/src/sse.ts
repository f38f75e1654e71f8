// A Server-Sent Events parser over a fetch body. The browser's EventSource cannot send an
// `Authorization` header, and a key must never travel in a URL, so events are read with
// fetch and parsed here, following the WHATWG "event stream interpretation" rules.

/** One dispatched SSE message. */
export interface SseMessage {
  /** The `id:` field of this message, if it had one. */
  id?: string;
  /** The `event:` field, `message` when absent. */
  event: string;
  data: string;
  /** A `retry:` field: the reconnection delay the server asks for, in ms. */
  retry?: number;
}

/** Yields the messages of an event stream as they arrive. */
export async function* parseSse(body: ReadableStream<Uint8Array>): AsyncGenerator<SseMessage> {
  const decoder = new TextDecoder();
  const reader = body.getReader();
  let buffer = "";
  let message = emptyMessage();
  let dataLines: string[] = [];
  let sawField = false;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return; // an unterminated last message is dropped, as the spec says
      buffer += decoder.decode(value, { stream: true });
      for (;;) {
        const end = lineEnd(buffer);
        if (end === null) break;
        const line = buffer.slice(0, end.at);
        buffer = buffer.slice(end.at + end.length);
        if (line === "") {
          if (sawField) {
            yield { ...message, data: dataLines.join("\n") };
          }
          message = emptyMessage();
          dataLines = [];
          sawField = false;
          continue;
        }
        if (line.startsWith(":")) continue; // a comment: keep-alive
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        switch (field) {
          case "data":
            dataLines.push(value);
            sawField = true;
            break;
          case "event":
            message.event = value;
            sawField = true;
            break;
          case "id":
            if (!value.includes("\0")) message.id = value;
            sawField = true;
            break;
          case "retry":
            if (/^\d+$/.test(value)) message.retry = Number(value);
            sawField = true;
            break;
          default:
            break;
        }
      }
    }
  } finally {
    reader.releaseLock();
  }
}

function emptyMessage(): SseMessage {
  return { event: "message", data: "" };
}

/** Where the first line ends (`\n`, `\r\n` or `\r`), or null if no full line is buffered. */
function lineEnd(buffer: string): { at: number; length: number } | null {
  for (let i = 0; i < buffer.length; i++) {
    const c = buffer.charCodeAt(i);
    if (c === 10) return { at: i, length: 1 };
    if (c === 13) {
      // A `\r` at the buffer's end may be the first half of `\r\n`: wait for more.
      if (i + 1 === buffer.length) return null;
      return { at: i, length: buffer.charCodeAt(i + 1) === 10 ? 2 : 1 };
    }
  }
  return null;
}
