// @ts-check
// Starts a real `sdq serve` on a free port for the client and browser tests, and a TCP
// proxy in front of it that can drop connections (what a flaky network does to SSE).

import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

/** The repository root (this file is clients/typescript/test/support/). */
export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../../..");

/** The sdq binary: $SDQ_BIN, else the debug build. */
export function sdqBin() {
  const bin = process.env.SDQ_BIN ?? path.join(REPO, "target/debug/sdq");
  if (!fs.existsSync(bin)) {
    throw new Error(`no sdq binary at ${bin}: run \`cargo build\` first or set SDQ_BIN`);
  }
  return bin;
}

/** A free TCP port on the loopback address. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const addr = s.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      s.close(() => resolve(port));
    });
  });
}

/**
 * Starts `sdq serve --model tiny` with its own data directory and waits until it answers.
 * @param {{ args?: string[], env?: Record<string, string>, dataDir?: string }} [options]
 */
export async function startSdq(options = {}) {
  const port = await freePort();
  const dataDir = options.dataDir ?? fs.mkdtempSync(path.join(os.tmpdir(), "sdq-web-test-"));
  const args = ["serve", "--model", "tiny", "--data-dir", dataDir, "--bind", `127.0.0.1:${port}`, ...(options.args ?? [])];
  const proc = spawn(sdqBin(), args, {
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn", ...(options.env ?? {}) },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let log = "";
  proc.stdout.on("data", (d) => (log += d));
  proc.stderr.on("data", (d) => (log += d));
  let exited = /** @type {number | null | string} */ (null);
  proc.on("exit", (code, signal) => (exited = code ?? signal ?? "exit"));
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 120_000;
  for (;;) {
    if (exited !== null) throw new Error(`sdq exited (${exited}) before answering:\n${log}`);
    try {
      const r = await fetch(`${url}/health`);
      if (r.ok) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      proc.kill("SIGKILL");
      throw new Error(`sdq did not answer within 120 s:\n${log}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    url,
    port,
    dataDir,
    proc,
    log: () => log,
    /** Stops the server (SIGTERM, then SIGKILL) and removes its data. */
    async stop() {
      if (exited === null) {
        const done = new Promise((r) => proc.once("exit", r));
        proc.kill("SIGTERM");
        const timer = setTimeout(() => proc.kill("SIGKILL"), 15_000);
        await done;
        clearTimeout(timer);
      }
      if (!options.dataDir) fs.rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/**
 * A TCP proxy to `target` that records each connection's bytes and can cut a connection
 * in the middle of its response, as a network failure would.
 * @param {number} targetPort
 */
export async function startProxy(targetPort) {
  /** @type {{ request: string, response: string, cut: boolean }[]} */
  const connections = [];
  /** @type {{ at: (response: string) => number | null } | null} */
  let cutRule = null;
  const sockets = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect(targetPort, "127.0.0.1");
    const record = { request: "", response: "", cut: false };
    connections.push(record);
    sockets.add(client);
    sockets.add(upstream);
    client.on("data", (d) => {
      record.request += d.toString("latin1");
      upstream.write(d);
    });
    upstream.on("data", (d) => {
      const before = record.response.length;
      record.response += d.toString("latin1");
      const cut = cutRule && !record.cut ? cutRule.at(record.response) : null;
      if (cut !== null && cut !== undefined) {
        // Forward the bytes before the cut, then drop both sides mid-stream.
        record.cut = true;
        cutRule = null;
        const keep = Math.max(0, cut - before);
        client.end(d.subarray(0, keep), () => client.destroy());
        upstream.destroy();
        return;
      }
      client.write(d);
    });
    const close = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on("error", close);
    upstream.on("error", close);
    client.on("close", close);
    upstream.on("close", close);
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", () => r(undefined)));
  const addr = server.address();
  const port = typeof addr === "object" && addr ? addr.port : 0;
  return {
    url: `http://127.0.0.1:${port}`,
    connections,
    /**
     * Cuts the next connection at the offset `at` returns for its response so far (null:
     * not yet), e.g. `beforeNth("event: progress", 3)`.
     */
    cutNext(/** @type {(response: string) => number | null} */ at) {
      cutRule = { at };
    },
    async stop() {
      for (const s of sockets) s.destroy();
      await new Promise((r) => server.close(() => r(undefined)));
    },
  };
}

/**
 * A cut rule for `cutNext`: just before the SSE message holding the `n`-th `text`, so the
 * messages before it arrive whole.
 */
export function beforeNth(text, n) {
  return (/** @type {string} */ response) => {
    let at = -1;
    for (let i = 0; i < n; i++) {
      at = response.indexOf(text, at + 1);
      if (at < 0) return null;
    }
    return response.lastIndexOf("\n\n", at) + 2;
  };
}

/** A small, quick job for the tiny model. */
export function smallJob(prompt = "a red house", extra = {}) {
  return { prompt, width: 64, height: 64, steps: 4, seed: 7, ...extra };
}

/** A job that runs long enough to watch (and cancel) on the tiny model. */
export function longJob(prompt = "a long job", extra = {}) {
  return { prompt, width: 256, height: 256, steps: 150, seed: 1, ...extra };
}

/** Polls `check` until it returns a truthy value or `timeoutMs` passes. */
export async function waitFor(check, timeoutMs = 30_000, what = "condition") {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
