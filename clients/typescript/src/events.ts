// Following a job's events (`GET /v1/jobs/{id}/events`) through dropped connections.
//
// The server gives every event but previews a gap-free `seq` as its SSE `id`, replays the
// stored events after `Last-Event-ID`, and closes the stream after the terminal event. So
// a subscription remembers the last `seq` it delivered, and when the connection drops
// (network error, proxy timeout, server restart) it waits a little and reconnects with
// that `Last-Event-ID`: the caller sees every event exactly once, in order.

import { isAbort, SdqError, type SdqClient } from "./client.js";
import { parseSse } from "./sse.js";
import type { JobEvent, PreviewEvent } from "./types.js";

/** How a subscription ended. */
export interface SubscriptionEnd {
  /** `terminal`: the job finished; `closed`: the caller closed it. */
  reason: "terminal" | "closed";
  /** The terminal event, when the stream delivered one. */
  event?: JobEvent;
}

/** What to do with a job's events. */
export interface SubscribeOptions {
  /** Called once per event, in `seq` order; previews come between them, live only. */
  onEvent: (event: JobEvent) => void;
  /** Resume after this `seq` (0, the default, replays the whole log). */
  lastEventId?: number;
  /** Called before each reconnection, with the attempt number and the delay. */
  onReconnect?: (attempt: number, delayMs: number, cause: unknown) => void;
  /** Called when a connection opens (the first and every reconnection). */
  onOpen?: () => void;
  /** First reconnection delay in ms (doubles up to `maxRetryMs`); a server `retry:` wins. */
  retryMs?: number;
  maxRetryMs?: number;
  /** Closes the subscription when aborted. */
  signal?: AbortSignal;
}

/** A live subscription. */
export interface Subscription {
  /** Stops following; `done` resolves with `closed`. */
  close(): void;
  /** Resolves when the job ends or the subscription is closed; rejects on a lasting error. */
  readonly done: Promise<SubscriptionEnd>;
  /** The last `seq` delivered: resume from here. */
  lastEventId(): number;
}

/** Whether nothing follows this event. */
export function isTerminal(event: JobEvent): boolean {
  return (
    event.type === "succeeded" ||
    event.type === "canceled" ||
    (event.type === "failed" && !event.retrying)
  );
}

/** Whether this is a live preview, outside the `seq` log. */
export function isPreview(event: JobEvent): event is PreviewEvent {
  return event.type === "preview";
}

/** Statuses that mean "try again later" rather than "give up". */
const RETRYABLE = new Set([408, 425, 429, 500, 502, 503, 504]);

/** Follows `jobId`'s events from `options.lastEventId` until the job ends or `close()`. */
export function subscribe(client: SdqClient, jobId: string, options: SubscribeOptions): Subscription {
  const controller = new AbortController();
  if (options.signal) {
    if (options.signal.aborted) controller.abort();
    else options.signal.addEventListener("abort", () => controller.abort(), { once: true });
  }
  let last = options.lastEventId ?? 0;
  const baseRetry = options.retryMs ?? 500;
  const maxRetry = options.maxRetryMs ?? 10_000;
  let serverRetry: number | undefined;

  const run = async (): Promise<SubscriptionEnd> => {
    let failures = 0;
    for (;;) {
      if (controller.signal.aborted) return { reason: "closed" };
      let cause: unknown;
      try {
        const headers = client.headers({ accept: "text/event-stream" });
        if (last > 0) headers["last-event-id"] = String(last);
        const response = await client.rawFetch(`/v1/jobs/${encodeURIComponent(jobId)}/events`, {
          headers,
          signal: controller.signal,
          cache: "no-store",
        });
        if (!response.ok) {
          const error = await client.errorFrom(response);
          if (!RETRYABLE.has(response.status)) throw error;
          cause = error;
          if (error.retryAfter !== undefined) serverRetry = error.retryAfter * 1000;
        } else if (!response.body) {
          throw new SdqError(0, "network", "the event stream has no body");
        } else {
          options.onOpen?.();
          let delivered = 0;
          for await (const message of parseSse(response.body)) {
            if (message.retry !== undefined) serverRetry = message.retry;
            if (!message.data) continue;
            const event = JSON.parse(message.data) as JobEvent;
            if (!isPreview(event)) {
              // A replay may overlap what was delivered before a drop: skip those.
              if (event.seq <= last) continue;
              last = event.seq;
            }
            delivered++;
            failures = 0;
            options.onEvent(event);
            if (isTerminal(event)) {
              controller.abort();
              return { reason: "terminal", event };
            }
          }
          // The server closed the stream without a terminal event. If it is because the
          // job had already ended before we resumed, there is nothing left to wait for.
          if (delivered === 0) {
            const job = await client.job(jobId);
            if (job.status === "succeeded" || job.status === "failed" || job.status === "canceled") {
              return { reason: "terminal" };
            }
          }
          cause = new SdqError(0, "network", "the event stream closed early");
        }
      } catch (e) {
        if (controller.signal.aborted || isAbort(e)) return { reason: "closed" };
        if (e instanceof SdqError && e.status !== 0 && !RETRYABLE.has(e.status)) throw e;
        if (e instanceof SyntaxError) throw new SdqError(0, "bad_event", `the server sent an event that is not JSON: ${e.message}`);
        cause = e;
      }
      failures++;
      const backoff = Math.min(maxRetry, (serverRetry ?? baseRetry) * 2 ** Math.min(failures - 1, 10));
      const delay = Math.round(backoff * (0.75 + Math.random() * 0.5));
      options.onReconnect?.(failures, delay, cause);
      await sleep(delay, controller.signal);
    }
  };

  const done = run();
  // A caller that only uses onEvent should not see an unhandled rejection.
  done.catch(() => undefined);
  return {
    close: () => controller.abort(),
    done,
    lastEventId: () => last,
  };
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done, { once: true });
  });
}
