// @ts-check
// The client against a real `sdq serve --model tiny`: every call, errors, events, and
// resuming a stream after the connection drops mid-job.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { applyEvent, initialJobState, SdqClient, SdqError } from "../dist/index.js";
import { beforeNth, longJob, smallJob, startProxy, startSdq, waitFor } from "./support/sdq-server.mjs";

/** @type {Awaited<ReturnType<typeof startSdq>>} */
let server;
/** @type {SdqClient} */
let client;

before(async () => {
  server = await startSdq({ args: ["--allow-model", "tiny-sdxl"] });
  client = new SdqClient({ baseUrl: server.url });
});
after(async () => {
  await server?.stop();
});

/** Follows a job to its end and returns every event. */
async function allEvents(c, id, options = {}) {
  const events = [];
  const sub = c.subscribe(id, { ...options, onEvent: (e) => events.push(e) });
  const end = await sub.done;
  return { events, end, sub };
}

describe("sdq-client against a real server", () => {
  test("models list the default with its defaults and the allowed extras", async () => {
    const models = await client.models();
    const tiny = models.find((m) => m.id === "tiny");
    assert.ok(tiny, "tiny is listed");
    assert.equal(tiny.available, true);
    assert.equal(tiny.default, true);
    assert.deepEqual(tiny.defaults, { width: 64, height: 64, steps: 4, guidance_scale: 7.5 });
    const xl = models.find((m) => m.id === "tiny-sdxl");
    assert.equal(xl?.available, true);
    assert.equal(xl?.defaults?.guidance_scale, 5);
    assert.ok(models.some((m) => !m.available), "models this server does not run are marked");
  });

  test("submit, follow every event in order, then read the job and its PNG", async () => {
    const submitted = await client.submit(smallJob("a lighthouse", { steps: 5, num_images: 2 }));
    assert.equal(submitted.status, "queued");
    assert.equal(submitted.links.events, `/v1/jobs/${submitted.id}/events`);
    const { events, end } = await allEvents(client, submitted.id);
    assert.equal(end.reason, "terminal");
    assert.deepEqual(
      events.map((e) => e.seq),
      events.map((_, i) => i + 1),
      "seq counts up from 1 without a gap or a repeat",
    );
    const types = events.map((e) => e.type);
    assert.equal(types[0], "queued");
    assert.equal(types[1], "started");
    assert.equal(types.at(-1), "succeeded");
    const steps = events.flatMap((e) => (e.type === "progress" ? [e.step] : []));
    assert.deepEqual(steps, [1, 2, 3, 4, 5]);
    assert.equal(types.filter((t) => t === "image").length, 2);

    const state = events.reduce(applyEvent, initialJobState(submitted.id));
    assert.equal(state.status, "succeeded");
    assert.equal(state.images.length, 2);
    assert.equal(state.step, 5);

    const job = await client.job(submitted.id);
    assert.equal(job.status, "succeeded");
    assert.equal(job.request.prompt, "a lighthouse");
    assert.equal(job.request.num_images, 2);
    assert.equal(job.images.length, 2);
    assert.deepEqual(
      (await client.jobImages(submitted.id)).map((i) => i.id),
      job.images.map((i) => i.id),
    );
    const png = new Uint8Array(await (await client.blob(job.images[0].url)).arrayBuffer());
    assert.deepEqual([...png.slice(0, 8)], [137, 80, 78, 71, 13, 10, 26, 10], "a PNG");
  });

  test("the job view has every field the types declare", async () => {
    const { id } = await client.submit(smallJob("shape check"));
    await allEvents(client, id);
    const job = await client.job(id);
    const fields = {
      id: "string", status: "string", model: "string", request: "object", priority: "number",
      progress: "object", attempts: "number", max_attempts: "number", cancel_requested: "boolean",
      images: "object", created_at: "string", links: "object",
    };
    for (const [k, type] of Object.entries(fields)) assert.equal(typeof job[k], type, k);
    for (const k of ["queue_position", "worker", "error", "timings", "started_at", "finished_at"]) {
      assert.ok(k in job, k);
    }
    for (const k of ["prompt", "negative_prompt", "model", "width", "height", "steps", "guidance_scale", "seed", "scheduler", "num_images"]) {
      assert.ok(k in job.request, `request.${k}`);
    }
    for (const k of ["id", "index", "url", "seed", "width", "height", "bytes", "created_at"]) {
      assert.ok(k in job.images[0], `images[0].${k}`);
    }
    const list = await client.jobs({ status: "succeeded", limit: 100 });
    assert.ok(list.jobs.some((j) => j.id === id));
    assert.ok("next_cursor" in list);
  });

  test("resuming with Last-Event-ID after a dropped connection loses and repeats nothing", async () => {
    const proxy = await startProxy(server.port);
    try {
      const viaProxy = new SdqClient({ baseUrl: proxy.url });
      // Drop the first event stream just before its third progress event.
      proxy.cutNext(beforeNth("event: progress", 3));
      const { id } = await viaProxy.submit(smallJob("a dropped stream", { steps: 40 }));
      const reconnects = [];
      const { events, end } = await allEvents(viaProxy, id, {
        retryMs: 50,
        onReconnect: (attempt, delay) => reconnects.push({ attempt, delay }),
      });
      assert.equal(end.reason, "terminal");
      assert.ok(reconnects.length >= 1, "the client reconnected");
      // Connections are reused (keep-alive): look at every request that went through.
      const requests = proxy.connections.map((c) => c.request).join("");
      assert.equal((requests.match(/GET \/v1\/jobs\/[^ ]+\/events /g) ?? []).length, 2, "a second stream was opened");
      assert.equal(proxy.connections.filter((c) => c.cut).length, 1, "the first stream was cut");
      const resumedFrom = /last-event-id: (\d+)/i.exec(requests);
      assert.ok(resumedFrom, "the second stream asked to resume");
      // queued, started, progress 1 and 2 arrived before the cut.
      assert.equal(Number(resumedFrom[1]), 4, "after the events it had already seen");
      assert.deepEqual(
        events.map((e) => e.seq),
        events.map((_, i) => i + 1),
        "every event exactly once, in order, across the drop",
      );
      const steps = events.flatMap((e) => (e.type === "progress" ? [e.step] : []));
      assert.deepEqual(steps, Array.from({ length: 40 }, (_, i) => i + 1));
      assert.equal(events.at(-1)?.type, "succeeded");
    } finally {
      await proxy.stop();
    }
  });

  test("previews arrive live, never move Last-Event-ID, and fold into the job state", async () => {
    const proxy = await startProxy(server.port);
    try {
      const viaProxy = new SdqClient({ baseUrl: proxy.url });
      proxy.cutNext(beforeNth("event: progress", 4));
      const { id } = await viaProxy.submit({ ...smallJob("previews", { steps: 30 }), previews: true, preview_every: 1 });
      const { events, end } = await allEvents(viaProxy, id, { retryMs: 50 });
      assert.equal(end.reason, "terminal");
      const previews = events.filter((e) => e.type === "preview");
      const stored = events.filter((e) => e.type !== "preview");
      assert.ok(previews.length >= 2, `previews arrived (${previews.length})`);
      for (const p of previews) {
        assert.equal(p.type, "preview");
        assert.match(p.image, /^data:image\/jpeg;base64,/);
        assert.ok(p.step >= 1 && p.step < p.total, `step ${p.step} of ${p.total}`);
      }
      // The resume named the last stored event, whatever previews came after it.
      const requests = proxy.connections.map((c) => c.request).join("");
      const resumedFrom = /last-event-id: (\d+)/i.exec(requests);
      assert.ok(resumedFrom, "the second stream asked to resume");
      assert.equal(Number(resumedFrom[1]), 5, "queued, started, progress 1-3");
      assert.deepEqual(stored.map((e) => e.seq), stored.map((_, i) => i + 1), "stored events exactly once");
      let state = initialJobState(id);
      for (const e of events.slice(0, events.indexOf(previews[1]) + 1)) state = applyEvent(state, e);
      assert.equal(state.preview?.image, previews[1].image);
    } finally {
      await proxy.stop();
    }
  });

  test("a subscription resumes from a given Last-Event-ID and ends at once for a finished job", async () => {
    const { id } = await client.submit(smallJob("resume point"));
    const { events: first } = await allEvents(client, id);
    const { events: rest } = await allEvents(client, id, { lastEventId: 3 });
    assert.deepEqual(rest.map((e) => e.seq), first.slice(3).map((e) => e.seq));
    const last = first.at(-1)?.seq ?? 0;
    const { events: none, end } = await allEvents(client, id, { lastEventId: last });
    assert.deepEqual(none, []);
    assert.equal(end.reason, "terminal");
  });

  test("cancel stops a running job; a finished one is a 409", async () => {
    const { id } = await client.submit(longJob("to be canceled"));
    const events = [];
    const sub = client.subscribe(id, { onEvent: (e) => events.push(e) });
    await waitFor(() => events.some((e) => e.type === "progress"), 60_000, "progress");
    const result = await client.cancel(id);
    assert.equal(result.outcome, "requested");
    const end = await sub.done;
    assert.equal(end.event?.type, "canceled");
    assert.equal((await client.job(id)).status, "canceled");
    await assert.rejects(client.cancel(id), (e) => e instanceof SdqError && e.status === 409 && e.code === "conflict");
  });

  test("a queued job is canceled at once", async () => {
    const blocker = await client.submit(longJob("blocker"));
    const queued = await client.submit(smallJob("waiting"));
    const position = (await client.job(queued.id)).queue_position;
    assert.ok(position !== null && position >= 1, `queued at ${position}`);
    assert.equal((await client.cancel(queued.id)).outcome, "canceled");
    await client.cancel(blocker.id);
    const { end } = await allEvents(client, blocker.id);
    assert.equal(end.reason, "terminal");
  });

  test("a bad field is an SdqError naming it; an unknown job is a 404", async () => {
    await assert.rejects(
      client.submit(smallJob("bad", { width: 65 })),
      (e) => e instanceof SdqError && e.status === 422 && e.field === "width" && e.message.length > 0,
    );
    await assert.rejects(client.job("00000000-0000-0000-0000-000000000000"), (e) => e instanceof SdqError && e.status === 404);
    const sub = client.subscribe("00000000-0000-0000-0000-000000000000", { onEvent: () => undefined });
    await assert.rejects(sub.done, (e) => e instanceof SdqError && e.status === 404);
  });

  test("an unreachable server is a network SdqError", async () => {
    const dead = new SdqClient({ baseUrl: "http://127.0.0.1:9" });
    await assert.rejects(dead.models(), (e) => e instanceof SdqError && e.status === 0 && e.code === "network");
  });

  test("workers report the loaded model", async () => {
    const workers = await waitFor(async () => {
      const w = await client.workers();
      return w.length > 0 && w;
    }, 30_000, "a worker");
    assert.ok(workers[0].name);
    assert.ok(workers[0].device);
  });
});
