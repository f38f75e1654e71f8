// @ts-check
// The SSE parser on streams split at awkward places.
import assert from "node:assert/strict";
import { test } from "node:test";

import { parseSse } from "../dist/index.js";

/** A byte stream delivering `chunks` one at a time. */
function streamOf(chunks) {
  const encoder = new TextEncoder();
  return new ReadableStream({
    start(controller) {
      for (const c of chunks) controller.enqueue(encoder.encode(c));
      controller.close();
    },
  });
}

async function collect(chunks) {
  const out = [];
  for await (const m of parseSse(streamOf(chunks))) out.push(m);
  return out;
}

test("messages carry id, event and data; comments are skipped", async () => {
  const got = await collect([": keep-alive\n\nid: 1\nevent: queued\ndata: {\"a\":1}\n\nid: 2\nevent: progress\ndata: x\n\n"]);
  assert.deepEqual(got, [
    { id: "1", event: "queued", data: '{"a":1}' },
    { id: "2", event: "progress", data: "x" },
  ]);
});

test("a message split anywhere, even inside a CRLF, parses the same", async () => {
  const text = "id: 7\r\nevent: image\r\ndata: {\"i\":0}\r\n\r\nevent: preview\r\ndata: p\r\n\r\n";
  const whole = await collect([text]);
  for (let cut = 1; cut < text.length; cut++) {
    assert.deepEqual(await collect([text.slice(0, cut), text.slice(cut)]), whole, `cut at ${cut}`);
  }
  assert.equal(whole.length, 2);
  assert.equal(whole[1]?.id, undefined, "a preview has no id");
});

test("multi-line data joins with newlines; retry is read; an unterminated tail is dropped", async () => {
  const got = await collect(["retry: 1500\ndata: a\ndata:b\n\n", "data: never finished"]);
  assert.deepEqual(got, [{ event: "message", data: "a\nb", retry: 1500 }]);
});

test("multi-byte characters split across chunks survive", async () => {
  const bytes = new TextEncoder().encode("data: café ☕\n\n");
  const stream = new ReadableStream({
    start(c) {
      for (const b of bytes) c.enqueue(new Uint8Array([b]));
      c.close();
    },
  });
  const out = [];
  for await (const m of parseSse(stream)) out.push(m.data);
  assert.deepEqual(out, ["café ☕"]);
});
