// @ts-check
// Keys in Chromium against `sdq serve --auth required`: the prompt, a refused key, the
// key kept in localStorage and sent only in a header (never in a URL), images shown
// through the key, a revoked key leading back to the prompt, workers for admins only.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";

import { SdqClient } from "../../clients/typescript/dist/index.js";
import { sdqBin, startSdq } from "../../clients/typescript/test/support/sdq-server.mjs";
import { launch, openPage, screenshot } from "./support/browser.mjs";

/** @type {Awaited<ReturnType<typeof startSdq>>} */
let server;
/** @type {import("playwright-core").Browser} */
let browser;
let adminToken = "";
let dataDir = "";
/** @type {SdqClient} */
let admin;

// Each refused request is logged by Chromium as a failed resource: that is the point here.
const REFUSED = [/status of 401 \(Unauthorized\)/];

before(async () => {
  // A server that requires auth will not start without a key: the operator makes one first.
  dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "sdq-web-auth-"));
  const out = execFileSync(sdqBin(), ["--data-dir", dataDir, "keys", "create", "ops", "--admin"], { encoding: "utf8" });
  server = await startSdq({ args: ["--auth", "required"], dataDir });
  adminToken = /^token\s+(\S+)/m.exec(out)?.[1] ?? "";
  assert.ok(adminToken.startsWith("sdq_"), out);
  admin = new SdqClient({ baseUrl: server.url, apiKey: adminToken });
  browser = await launch();
});
after(async () => {
  await browser?.close();
  await server?.stop();
  if (dataDir) fs.rmSync(dataDir, { recursive: true, force: true });
});

/** Creates a key through the admin API. */
async function createKey(name, isAdmin = false) {
  const r = await admin.request("POST", "/v1/keys", { body: { name, admin: isAdmin } });
  return /** @type {{ id: string, token: string }} */ (await r.json());
}

describe("keys", () => {
  test("the UI asks for a key, refuses a wrong one, then works with the right one", async () => {
    const user = await createKey("alice");
    const { page, problems, context } = await openPage(browser, server.url, { allow: REFUSED });
    /** @type {string[]} */
    const urls = [];
    /** @type {string[]} */
    const authHeaders = [];
    page.on("request", (r) => {
      urls.push(r.url());
      const h = r.headers().authorization;
      if (h) authHeaders.push(h);
    });
    await page.goto(`${server.url}/`);
    const prompt = page.getByRole("dialog", { name: "API key" });
    await prompt.getByText("This server requires an API key.").waitFor();
    assert.equal(await page.evaluate(() => document.activeElement?.getAttribute("name")), "api-key", "the key field has focus");
    await screenshot(page, "key-prompt");

    await prompt.getByLabel("Key").fill("sdq_not-a-real-key");
    await prompt.getByRole("button", { name: "Save key" }).click();
    await page.getByRole("dialog", { name: "API key" }).getByText("The server refused the stored key. Enter another.").waitFor();

    await page.getByRole("dialog", { name: "API key" }).getByLabel("Key").fill(user.token);
    await page.getByRole("dialog", { name: "API key" }).getByRole("button", { name: "Save key" }).click();
    await page.getByRole("button", { name: "Key: alice" }).waitFor();
    assert.equal(await page.getByRole("dialog").count(), 0);
    assert.equal(await page.evaluate(() => localStorage.getItem("sdq.apiKey")), user.token);
    await page.locator('select[name="model"]').waitFor();

    await page.getByLabel("Prompt", { exact: true }).fill("a keyed job");
    await page.getByRole("button", { name: "Generate" }).click();
    const card = page.locator("article.job-card").first();
    await card.locator(".badge", { hasText: "succeeded" }).waitFor({ timeout: 60_000 });
    const src = await card.locator("img.job-image").getAttribute("src");
    assert.match(src ?? "", /^blob:/, "an image is fetched with the key and shown from an object URL");
    // Not an admin: no workers.
    assert.equal(await page.locator(".workers").count(), 0);

    await page.getByRole("link", { name: "Gallery" }).click();
    await page.locator(".gallery-item img").first().waitFor();
    assert.match((await page.locator(".gallery-item img").first().getAttribute("src")) ?? "", /^blob:/);

    assert.ok(authHeaders.some((h) => h === `Bearer ${user.token}`), "the key travels in the header");
    assert.deepEqual(urls.filter((u) => u.includes(user.token) || u.includes("sdq_")), [], "never in a URL");
    assert.deepEqual(problems, []);

    // Revoked: the next request is a 401, and the prompt comes back.
    await admin.request("DELETE", `/v1/keys/${user.id}`);
    await page.reload();
    await page.getByRole("dialog", { name: "API key" }).getByText("The server refused the stored key. Enter another.").waitFor({ timeout: 30_000 });
    assert.deepEqual(problems, []);
    await context.close();
  });

  test("an admin key sees the workers", async () => {
    const { page, problems, context } = await openPage(browser, server.url, { allow: REFUSED });
    await page.goto(`${server.url}/queue`);
    await page.getByRole("dialog", { name: "API key" }).getByLabel("Key").fill(adminToken);
    await page.getByRole("dialog", { name: "API key" }).getByRole("button", { name: "Save key" }).click();
    await page.getByRole("button", { name: "Key: ops" }).waitFor();
    await page.locator(".queue-panel.full .worker").first().waitFor({ timeout: 30_000 });
    assert.deepEqual(problems, []);
    await context.close();
  });
});
