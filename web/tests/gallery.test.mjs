// @ts-check
// The gallery in Chromium against a real `sdq serve`: results appear newest first,
// infinite scroll, the model filter, an image with its parameters, "use these
// parameters", img2img from a gallery image (by id, not uploaded again), download and
// delete with confirmation.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { SdqClient, SdqError } from "../../clients/typescript/dist/index.js";
import { startSdq, waitFor } from "../../clients/typescript/test/support/sdq-server.mjs";
import { launch, openPage, screenshot } from "./support/browser.mjs";

/** @type {Awaited<ReturnType<typeof startSdq>>} */
let server;
/** @type {import("playwright-core").Browser} */
let browser;
/** @type {SdqClient} */
let api;

async function run(request) {
  const { id } = await api.submit(request);
  return waitFor(async () => {
    const j = await api.job(id);
    assert.notEqual(j.status, "failed", j.error ?? "");
    return j.status === "succeeded" && j;
  }, 120_000, `job ${id}`);
}

before(async () => {
  server = await startSdq({ args: ["--allow-model", "tiny-sdxl"] });
  api = new SdqClient({ baseUrl: server.url });
  browser = await launch();
  // 6 × 8 images: more than one page of the gallery (40).
  for (let i = 0; i < 6; i++) {
    await run({ prompt: `filler ${i}`, width: 64, height: 64, steps: 2, seed: 100 + i, num_images: 8 });
  }
  await run({ prompt: "an sdxl lantern", model: "tiny-sdxl", width: 64, height: 64, steps: 3, seed: 5 });
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

async function gallery(options = {}) {
  const opened = await openPage(browser, server.url, options);
  await opened.page.goto(`${server.url}/gallery`);
  await opened.page.locator(".gallery-item").first().waitFor({ timeout: 30_000 });
  return opened;
}

describe("gallery", () => {
  test("a new result appears first; scrolling loads the next page; the model filter narrows", async () => {
    const { page, problems, context } = await openPage(browser, server.url);
    await page.goto(`${server.url}/`);
    await waitFor(async () => (await page.locator('select[name="model"]').inputValue()) === "tiny", 10_000, "models");
    await page.getByLabel("Prompt", { exact: true }).fill("a lighthouse in the gallery");
    await page.getByRole("button", { name: "Generate" }).click();
    await page.locator("article.job-card .badge", { hasText: "succeeded" }).waitFor({ timeout: 60_000 });
    await page.getByRole("link", { name: "Gallery" }).click();
    const items = page.locator(".gallery-item");
    await items.first().waitFor();
    assert.match((await items.first().textContent()) ?? "", /a lighthouse in the gallery/, "newest first");
    await waitFor(async () => (await items.count()) === 40, 10_000, "the first page");
    await waitFor(() => items.first().locator("img").evaluate((el) => el instanceof HTMLImageElement && el.complete && el.naturalWidth > 0), 10_000, "a thumbnail");
    await screenshot(page, "gallery");
    await items.last().scrollIntoViewIfNeeded();
    await waitFor(async () => (await items.count()) === 50, 15_000, "the second page on scroll");
    await page.getByText("That is everything.").waitFor();

    await page.getByLabel("Model", { exact: true }).selectOption("tiny-sdxl");
    await waitFor(async () => (await items.count()) === 1, 10_000, "one tiny-sdxl image");
    assert.match((await items.first().textContent()) ?? "", /an sdxl lantern/);
    assert.deepEqual(problems, []);
    await context.close();
  });

  test("an image opens with its parameters, which load into the form", async () => {
    const { page, problems, context } = await gallery();
    await page.locator(".gallery-item", { hasText: "filler 3" }).first().click();
    const dialog = page.getByRole("dialog");
    await dialog.waitFor();
    await dialog.locator("dd", { hasText: "filler 3" }).waitFor();
    const text = (await dialog.locator(".params-list").textContent()) ?? "";
    assert.match(text, /steps2/);
    assert.match(text, /seed10[3-9]|seed11[0-1]/, "the image's own seed (job seed + index)");
    const download = dialog.getByRole("link", { name: "Download" });
    assert.match((await download.getAttribute("download")) ?? "", /\.png$/);
    const href = (await download.getAttribute("href")) ?? "";
    assert.match(href, /\/v1\/images\/[0-9a-f-]+$/);
    await screenshot(page, "gallery-image");
    await dialog.getByRole("button", { name: "Use these parameters" }).click();
    await page.waitForURL(`${server.url}/`);
    assert.equal(await page.getByLabel("Prompt", { exact: true }).inputValue(), "filler 3");
    assert.equal(await page.getByLabel("Steps").inputValue(), "2");
    assert.equal(await page.getByLabel("Random").isChecked(), false, "the seed is kept");
    assert.match(await page.getByLabel("Seed", { exact: true }).inputValue(), /^1(0[3-9]|1[01])$/);
    assert.deepEqual(problems, []);
    await context.close();
  });

  test("img2img from a gallery image names it by id instead of uploading it again", async () => {
    const { page, problems, context } = await gallery();
    const item = page.locator(".gallery-item", { hasText: "an sdxl lantern" });
    const imageId = await item.getAttribute("data-image-id");
    await item.click();
    await page.getByRole("dialog").getByRole("button", { name: "Send to img2img" }).click();
    await page.waitForURL(`${server.url}/img2img`);
    await page.getByText("gallery: an sdxl lantern · 64×64").waitFor();
    await page.getByLabel("Prompt", { exact: true }).fill("the lantern, repainted");
    const request = page.waitForRequest((r) => r.method() === "POST" && new URL(r.url()).pathname === "/v1/jobs");
    await page.getByRole("button", { name: "Generate" }).click();
    const body = JSON.parse((await request).postData() ?? "{}");
    assert.equal(body.init_image_id, imageId);
    assert.equal(body.init_image, undefined);
    await page.locator("article.job-card .badge", { hasText: "succeeded" }).waitFor({ timeout: 60_000 });

    // The picker in the img2img view does the same.
    await page.getByRole("button", { name: "Remove" }).click();
    await page.getByRole("button", { name: "From gallery…" }).click();
    const picker = page.getByRole("dialog", { name: "Choose a start image" });
    await picker.locator(".gallery-item").first().waitFor();
    await picker.locator(".gallery-item", { hasText: "filler 4" }).first().click();
    await page.getByText(/gallery: filler 4 · 64×64/).waitFor();
    assert.equal(await page.getByRole("dialog").count(), 0, "the picker closed");
    assert.deepEqual(problems, []);
    await context.close();
  });

  test("delete asks first, then removes the image", async () => {
    const { page, problems, context } = await gallery();
    const item = page.locator(".gallery-item", { hasText: "filler 5" }).first();
    const imageId = String(await item.getAttribute("data-image-id"));
    await item.click();
    const dialog = page.getByRole("dialog");
    await dialog.getByRole("button", { name: "Delete…" }).click();
    await dialog.getByText("Delete this image for good?").waitFor();
    await dialog.getByRole("button", { name: "Keep it" }).click();
    assert.equal(await dialog.getByText("Delete this image for good?").count(), 0);
    await api.blob(`/v1/images/${imageId}`); // still there
    await dialog.getByRole("button", { name: "Delete…" }).click();
    await dialog.getByRole("button", { name: "Delete image" }).click();
    await waitFor(async () => (await page.getByRole("dialog").count()) === 0, 10_000, "the dialog to close");
    assert.equal(await page.locator(`.gallery-item[data-image-id="${imageId}"]`).count(), 0);
    await assert.rejects(api.blob(`/v1/images/${imageId}`), (e) => e instanceof SdqError && e.status === 404);
    assert.deepEqual(problems, []);
    await context.close();
  });

  test("the gallery on a phone-sized window", async () => {
    const { page, problems, context } = await gallery({ viewport: { width: 390, height: 844 }, mobile: true });
    assert.ok((await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth)) <= 0);
    await screenshot(page, "phone-gallery");
    await page.locator(".gallery-item").first().tap();
    await page.getByRole("dialog").getByRole("button", { name: "Use these parameters" }).waitFor();
    await screenshot(page, "phone-gallery-image");
    assert.deepEqual(problems, []);
    await context.close();
  });
});
