// @ts-check
// LiveJobs, the shared per-job view behind the React hooks, against a real server.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { LiveJobs, SdqClient } from "../dist/index.js";
import { longJob, smallJob, startSdq, waitFor } from "./support/sdq-server.mjs";

/** @type {Awaited<ReturnType<typeof startSdq>>} */
let server;
/** @type {SdqClient} */
let client;

before(async () => {
  server = await startSdq();
  client = new SdqClient({ baseUrl: server.url });
});
after(async () => {
  await server?.stop();
});

test("a job deep in the queue is polled, streams once next in line, and ends with its images", async () => {
  const live = new LiveJobs(client);
  try {
    const running = await client.submit(longJob("first"));
    await waitFor(async () => (await client.job(running.id)).status === "running", 60_000, "first job running");
    const second = await client.submit(longJob("second"));
    const third = await client.submit(smallJob("third"));
    const seen = [];
    const stop = live.watch(third.id, (l) => seen.push(l));
    const twoOthers = live.watch(second.id, () => undefined);

    await waitFor(() => live.get(third.id)?.state.position === 2, 10_000, "position 2");
    assert.equal(live.get(third.id)?.connected, false, "no stream is held for a job two places back");
    assert.equal(live.get(third.id)?.job?.request.prompt, "third");

    await client.cancel(running.id);
    await waitFor(() => live.get(second.id)?.state.status === "running", 60_000, "second job running");
    await waitFor(() => live.get(third.id)?.state.position === 1, 10_000, "position 1");
    await waitFor(() => live.get(third.id)?.connected, 10_000, "a stream once next in line");

    await client.cancel(second.id);
    const done = await waitFor(() => {
      const l = live.get(third.id);
      return l?.state.status === "succeeded" && l.job?.status === "succeeded" && l;
    }, 60_000, "third job done");
    assert.equal(done.state.images.length, 1);
    assert.equal(done.job?.images[0]?.width, 64);
    assert.deepEqual(done.events.map((e) => e.seq), done.events.map((_, i) => i + 1), "the whole log, from the start");
    assert.equal(done.end?.reason, "terminal");
    assert.equal(live.get(second.id)?.state.status, "canceled");
    assert.ok(seen.length > 3, "the listener heard every change");
    stop();
    twoOthers();
  } finally {
    live.close();
  }
});

test("watchers of one job share its view; an unknown job ends with an error", async () => {
  const live = new LiveJobs(client);
  try {
    const { id } = await client.submit(smallJob("shared"));
    const a = [];
    const b = [];
    live.watch(id, (l) => a.push(l));
    live.watch(id, (l) => b.push(l));
    await waitFor(() => live.get(id)?.state.status === "succeeded", 60_000, "done");
    assert.equal(a.at(-1), b.at(-1), "both watchers see the same object");
    live.watch("00000000-0000-0000-0000-000000000000", () => undefined);
    await waitFor(() => live.get("00000000-0000-0000-0000-000000000000")?.error?.status === 404, 10_000, "404");
  } finally {
    live.close();
  }
});
