// @ts-check
// The generate view, the queue and the workers in Chromium, against a real
// `sdq serve --model tiny`.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { SdqClient } from "../../clients/typescript/dist/index.js";
import { startSdq, waitFor } from "../../clients/typescript/test/support/sdq-server.mjs";
import { launch, openPage, screenshot } from "./support/browser.mjs";

/** @type {Awaited<ReturnType<typeof startSdq>>} */
let server;
/** @type {import("playwright-core").Browser} */
let browser;
/** @type {SdqClient} */
let api;

before(async () => {
  server = await startSdq({ args: ["--allow-model", "tiny-sdxl"] });
  api = new SdqClient({ baseUrl: server.url });
  browser = await launch();
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

/** Cancels whatever is still queued or running, so each test starts with an empty queue. */
async function drainQueue() {
  for (const status of /** @type {const} */ (["queued", "running"])) {
    for (const job of (await api.jobs({ status, limit: 100 })).jobs) {
      await api.cancel(job.id).catch(() => undefined);
    }
  }
  await waitFor(async () => (await api.jobs({ status: "running" })).jobs.length === 0, 60_000, "an idle worker");
}

/** Opens the generate view and waits for the models (and their defaults) to load. */
async function generateView(options = {}) {
  const opened = await openPage(browser, server.url, options);
  await opened.page.goto(`${server.url}/`);
  await opened.page.locator('select[name="model"]').waitFor();
  await waitFor(async () => (await opened.page.locator('select[name="model"]').inputValue()) === "tiny", 10_000, "the default model");
  return opened;
}

/** Fills the form for a job of `steps` steps at `size`. */
async function fill(page, prompt, { steps = 4, size = 64 } = {}) {
  await page.getByLabel("Prompt", { exact: true }).fill(prompt);
  await page.getByLabel("Width").fill(String(size));
  await page.getByLabel("Height").fill(String(size));
  await page.getByLabel("Steps").fill(String(steps));
}

describe("generate view", () => {
  test("the default model's defaults fill the form; another model brings its own", async () => {
    const { page, problems, context } = await generateView();
    // The model's defaults reach the form just after the model is selected.
    await waitFor(async () => (await page.getByLabel("Width").inputValue()) === "64", 10_000, "the model's width");
    assert.equal(await page.getByLabel("Width").inputValue(), "64");
    assert.equal(await page.getByLabel("Height").inputValue(), "64");
    assert.equal(await page.getByLabel("Steps").inputValue(), "4");
    assert.equal(await page.getByLabel("Guidance").inputValue(), "7.5");
    await page.locator('select[name="model"]').selectOption("tiny-sdxl");
    assert.equal(await page.getByLabel("Guidance").inputValue(), "5");
    const disabled = await page.locator('select[name="model"] option[disabled]').count();
    assert.ok(disabled > 0, "models this server does not run are listed but disabled");
    await page.locator('select[name="model"]').selectOption("tiny");
    assert.equal(await page.getByLabel("Guidance").inputValue(), "7.5");
    await page.locator('select[name="size_preset"]').selectOption("512×768");
    assert.equal(await page.getByLabel("Width").inputValue(), "512");
    assert.equal(await page.getByLabel("Height").inputValue(), "768");
    assert.deepEqual(problems, []);
    await context.close();
  });

  test("txt2img shows progress advancing with an ETA, then the image", async () => {
    await drainQueue();
    const { page, problems, context } = await generateView();
    await fill(page, "a lighthouse at dusk", { steps: 120, size: 128 });
    await page.getByRole("button", { name: "Generate" }).click();
    const card = page.locator("article.job-card").first();
    const bar = card.getByRole("progressbar");
    await bar.waitFor({ timeout: 60_000 });
    const seen = new Set();
    let sawEta = false;
    let shot = false;
    await waitFor(async () => {
      const status = await card.locator(".badge").textContent();
      if (status === "running") {
        const now = await bar.getAttribute("aria-valuenow").catch(() => null);
        if (now !== null) seen.add(Number(now));
        sawEta ||= (await card.locator(".progress-eta").count()) > 0;
        if (!shot && seen.size >= 3) {
          shot = true;
          await screenshot(page, "generate-running");
        }
      }
      return status === "succeeded";
    }, 120_000, "the job to succeed");
    const steps = [...seen].filter((s) => s > 0 && s < 120);
    assert.ok(steps.length >= 3, `progress advanced through several steps (saw ${[...seen].join(",")})`);
    assert.ok(sawEta, "an ETA was shown while running");
    const img = card.locator("img.job-image");
    await img.waitFor();
    await waitFor(() => img.evaluate((el) => el instanceof HTMLImageElement && el.complete && el.naturalWidth === 128), 10_000, "the image to load");
    assert.match((await card.locator(".job-meta").first().textContent()) ?? "", /128×128 · 120 steps/);
    await screenshot(page, "generate-done");
    assert.deepEqual(problems, []);
    await context.close();
  });

  test("previews update while the job runs, then give way to the image", async () => {
    await drainQueue();
    const { page, problems, context } = await generateView();
    await fill(page, "a harbour in the rain", { steps: 100, size: 128 });
    const toggle = page.getByLabel("Step previews");
    assert.equal(await toggle.isChecked(), true, "previews are asked for by default");
    await page.getByRole("button", { name: "Generate" }).click();
    const card = page.locator("article.job-card").first();
    const preview = card.locator("img.job-preview");
    await preview.waitFor({ timeout: 60_000 });
    const sources = new Set();
    const sizes = new Set();
    let shot = false;
    await waitFor(async () => {
      const status = await card.locator(".badge").textContent();
      if (status === "running" && (await preview.count()) > 0) {
        const src = await preview.getAttribute("src").catch(() => null);
        if (src) sources.add(src);
        const size = await preview
          .evaluate((el) => (el instanceof HTMLImageElement && el.complete ? `${el.naturalWidth}x${el.naturalHeight}` : ""))
          .catch(() => "");
        if (size) sizes.add(size);
        if (!shot && sources.size >= 2) {
          shot = true;
          await screenshot(page, "generate-preview");
        }
      }
      return status === "succeeded";
    }, 180_000, "the job to succeed");
    assert.ok(sources.size >= 2, `the preview changed as steps went by (saw ${sources.size})`);
    for (const src of sources) assert.match(src, /^data:image\/jpeg;base64,/);
    assert.deepEqual([...sizes], ["16x16"], "previews are the latents' size (1/8 per side)");
    await card.locator("img.job-image").waitFor();
    assert.equal(await preview.count(), 0, "the finished image replaces the preview");
    assert.deepEqual(problems, []);
    await context.close();
  });

  test("Ctrl+Enter submits, and the last seed can be reused", async () => {
    await drainQueue();
    const { page, problems, context } = await generateView();
    await fill(page, "keyboard only");
    assert.equal(await page.getByRole("button", { name: "Reuse last seed" }).isDisabled(), true);
    await page.getByLabel("Prompt", { exact: true }).press("Control+Enter");
    const card = page.locator("article.job-card").first();
    await card.locator(".badge", { hasText: "succeeded" }).waitFor({ timeout: 60_000 });
    const seed = /seed (\d+)/.exec((await card.locator(".job-meta").first().textContent()) ?? "")?.[1];
    assert.ok(seed, "the card shows the seed");
    await page.getByRole("button", { name: "Reuse last seed" }).click();
    assert.equal(await page.getByLabel("Seed", { exact: true }).inputValue(), seed);
    assert.equal(await page.getByLabel("Random").isChecked(), false);
    // The same seed again gives the same image: same size in bytes, from the job view.
    await page.getByLabel("Prompt", { exact: true }).press("Control+Enter");
    // The first card is the earlier, finished job until the new one is added above it.
    await waitFor(async () => (await page.locator("article.job-card").count()) === 2, 10_000, "the second job's card");
    await page.locator("article.job-card").nth(0).locator(".badge", { hasText: "succeeded" }).waitFor({ timeout: 60_000 });
    const ids = await page.locator("article.job-card").evaluateAll((cards) => cards.map((c) => c.getAttribute("data-job-id")));
    const [second, first] = await Promise.all(ids.slice(0, 2).map((id) => api.job(String(id))));
    assert.equal(second?.request.seed, Number(seed));
    assert.equal(second?.images[0]?.bytes, first?.images[0]?.bytes);
    assert.deepEqual(problems, []);
    await context.close();
  });

  test("a long job is canceled from its card", async () => {
    await drainQueue();
    const { page, problems, context } = await generateView();
    await fill(page, "a very long job", { steps: 150, size: 256 });
    await page.getByRole("button", { name: "Generate" }).click();
    const card = page.locator("article.job-card").first();
    await card.getByRole("progressbar").waitFor({ timeout: 60_000 });
    await waitFor(async () => Number(await card.getByRole("progressbar").getAttribute("aria-valuenow")) >= 1, 60_000, "a step");
    await card.getByRole("button", { name: "Cancel" }).click();
    await card.locator(".badge", { hasText: "canceled" }).waitFor({ timeout: 30_000 });
    const id = await card.getAttribute("data-job-id");
    const job = await api.job(String(id));
    assert.equal(job.status, "canceled");
    assert.ok(job.progress.step < 150, "it stopped before the end");
    assert.equal(await card.getByRole("button", { name: "Cancel" }).count(), 0);
    assert.deepEqual(problems, []);
    await context.close();
  });

  test("two queued jobs each show their own position, here and in the queue panel", async () => {
    await drainQueue();
    const { page, problems, context } = await generateView();
    await fill(page, "a watercolor fox in the snow", { steps: 8, size: 128 });
    await page.getByLabel("Images").fill("2");
    await page.getByRole("button", { name: "Generate" }).click();
    await page.locator("article.job-card").first().locator(".badge", { hasText: "succeeded" }).waitFor({ timeout: 60_000 });
    await page.getByLabel("Images").fill("1");
    await fill(page, "running first", { steps: 150, size: 256 });
    await page.getByRole("button", { name: "Generate" }).click();
    await page.locator("article.job-card").first().getByRole("progressbar").waitFor({ timeout: 60_000 });
    await fill(page, "queued second");
    await page.getByRole("button", { name: "Generate" }).click();
    await page.locator("article.job-card").nth(1).waitFor();
    await fill(page, "queued third");
    await page.getByRole("button", { name: "Generate" }).click();
    const cards = page.locator("article.job-card");
    await waitFor(async () => (await cards.count()) === 4, 10_000, "four cards");
    // Newest first: third, second, running, done.
    await cards.nth(0).getByText("Queued: position 2").waitFor({ timeout: 15_000 });
    await cards.nth(1).getByText("Queued: position 1").waitFor({ timeout: 15_000 });
    assert.equal(await cards.nth(2).locator(".badge").textContent(), "running");
    const panel = page.locator("aside .queue-panel");
    await panel.getByText("Position 1 · 4 steps").waitFor({ timeout: 10_000 });
    await panel.getByText("Position 2 · 4 steps").waitFor();
    await panel.locator(".queue-item.running").getByRole("progressbar").waitFor();
    await waitFor(async () => Number(await cards.nth(2).getByRole("progressbar").getAttribute("aria-valuenow")) >= 3, 60_000, "a few steps");
    await screenshot(page, "generate");

    await page.getByRole("link", { name: "Queue" }).click();
    const full = page.locator(".queue-panel.full");
    await full.getByText("Position 2 · 4 steps").waitFor();
    await full.getByRole("heading", { name: "Workers" }).waitFor();
    await full.locator(".worker").first().waitFor({ timeout: 30_000 });
    assert.match((await full.locator(".worker").first().textContent()) ?? "", /cpu/);
    await screenshot(page, "queue");

    // Cancel the running job from the panel: the next one starts and the positions move up.
    await full.locator(".queue-item.running").getByRole("button", { name: /Cancel/ }).click();
    await waitFor(async () => (await full.locator(".queue-item").count()) <= 2, 30_000, "the running job gone");
    await drainQueue();
    await waitFor(async () => (await full.locator(".queue-item").count()) === 0, 30_000, "an empty queue");
    await full.getByText("Nothing queued or running.").waitFor();
    assert.deepEqual(problems, []);
    await context.close();
  });

  test("dark theme follows the system", async () => {
    const { page, problems, context } = await generateView({ colorScheme: "dark" });
    const bg = await page.evaluate(() => getComputedStyle(document.body.parentElement ?? document.body).backgroundColor);
    assert.equal(bg, "rgb(18, 19, 24)");
    await page.getByLabel("Prompt", { exact: true }).fill("a watercolor fox in the snow");
    await screenshot(page, "generate-dark");
    assert.deepEqual(problems, []);
    await context.close();
  });

  test("a phone-sized window: no sideways scrolling, and a job runs", async () => {
    await drainQueue();
    const { page, problems, context } = await generateView({ viewport: { width: 390, height: 844 }, mobile: true });
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `no horizontal overflow (${overflow}px)`);
    await fill(page, "a tiny phone job");
    await page.getByRole("button", { name: "Generate" }).tap();
    const card = page.locator("article.job-card").first();
    await card.locator(".badge", { hasText: "succeeded" }).waitFor({ timeout: 60_000 });
    await card.locator("img.job-image").waitFor();
    assert.ok((await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth)) <= 0);
    await screenshot(page, "phone-generate", true);
    await page.getByRole("link", { name: "Queue" }).tap();
    await page.locator(".queue-panel.full").waitFor();
    await screenshot(page, "phone-queue");
    assert.deepEqual(problems, []);
    await context.close();
  });

  test("every control has a label and keyboard focus is visible", async () => {
    const { page, problems, context } = await generateView();
    const unlabeled = await page.evaluate(() =>
      [...document.querySelectorAll("input, select, textarea, button")]
        .filter((el) => !(el instanceof HTMLInputElement && el.type === "file"))
        .filter((el) => {
          const labelled = el.getAttribute("aria-label") || (el.id && document.querySelector(`label[for="${el.id}"]`)) || el.closest("label");
          const text = el instanceof HTMLButtonElement ? el.textContent?.trim() : "";
          return !labelled && !text;
        })
        .map((el) => el.outerHTML.slice(0, 80)),
    );
    assert.deepEqual(unlabeled, []);
    await page.keyboard.press("Tab");
    const outline = await page.evaluate(() => {
      const el = document.activeElement;
      return el ? getComputedStyle(el).outlineStyle : "none";
    });
    assert.notEqual(outline, "none", "the focused control shows a focus ring");
    assert.deepEqual(problems, []);
    await context.close();
  });
});

describe("served by the binary", () => {
  test("UI routes load the page; API paths stay JSON", async () => {
    const { page, problems, context } = await openPage(browser, server.url);
    await page.goto(`${server.url}/queue`);
    await page.locator(".queue-panel.full").waitFor();
    const response = await page.request.get(`${server.url}/v1/no-such-route`);
    assert.equal(response.status(), 404);
    assert.equal((await response.json()).error.code, "not_found");
    const missing = await page.request.get(`${server.url}/assets/missing.js`);
    assert.equal(missing.status(), 404);
    assert.deepEqual(problems, []);
    await context.close();
  });
});

