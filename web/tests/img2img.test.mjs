// @ts-check
// img2img and inpainting in Chromium: start images by file picker, drag and drop and
// paste; the size following the image; painting, undoing, erasing and inverting a mask;
// jobs with an inpainting model and an ordinary one, against a real `sdq serve`.
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
/** A 96×64 PNG made by the server, to use as a start image. */
let png = Buffer.alloc(0);

before(async () => {
  server = await startSdq({ args: ["--allow-model", "tiny-inpaint"] });
  api = new SdqClient({ baseUrl: server.url });
  browser = await launch();
  const { id } = await api.submit({ prompt: "a start image", width: 96, height: 64, steps: 4, seed: 3 });
  const job = await waitFor(async () => {
    const j = await api.job(id);
    return j.status === "succeeded" && j;
  }, 120_000, "the start image");
  png = Buffer.from(await (await api.blob(job.images[0].url)).arrayBuffer());
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

/** Opens a view and waits for the models. */
async function open(path, options = {}) {
  const opened = await openPage(browser, server.url, options);
  await opened.page.goto(`${server.url}${path}`);
  await waitFor(async () => (await opened.page.locator('select[name="model"]').inputValue()) === "tiny", 10_000, "models");
  return opened;
}

/** Dispatches a drop of `bytes` as a file named `name` on the element `selector`. */
async function dropFile(page, selector, name, bytes, type = "image/png") {
  await page.evaluate(
    ({ selector, name, b64, type }) => {
      const bin = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      const dt = new DataTransfer();
      dt.items.add(new File([bin], name, { type }));
      const target = selector ? document.querySelector(selector) : document.body;
      if (!target) throw new Error(`no ${selector}`);
      target.dispatchEvent(new DragEvent("dragover", { dataTransfer: dt, bubbles: true, cancelable: true }));
      target.dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
    },
    { selector, name, b64: bytes.toString("base64"), type },
  );
}

/** The body of the next `POST /v1/jobs` the page sends, and the job's id. */
async function submitAndCapture(page) {
  const request = page.waitForRequest((r) => r.method() === "POST" && new URL(r.url()).pathname === "/v1/jobs");
  const response = page.waitForResponse((r) => r.request().method() === "POST" && new URL(r.url()).pathname === "/v1/jobs");
  await page.getByRole("button", { name: "Generate" }).click();
  const body = JSON.parse((await request).postData() ?? "{}");
  const res = await response;
  assert.equal(res.status(), 202, await res.text());
  return { body, id: (await res.json()).id };
}

async function succeeded(id) {
  return waitFor(async () => {
    const j = await api.job(id);
    assert.notEqual(j.status, "failed", j.error ?? "");
    return j.status === "succeeded" && j;
  }, 120_000, `job ${id}`);
}

/** Paints a stroke across the mask canvas, from and to fractions of its box. */
async function paint(page, from, to) {
  const box = await page.getByTestId("mask-canvas").boundingBox();
  assert.ok(box);
  await page.mouse.move(box.x + box.width * from[0], box.y + box.height * from[1]);
  await page.mouse.down();
  for (let i = 1; i <= 10; i++) {
    const t = i / 10;
    await page.mouse.move(box.x + box.width * (from[0] + (to[0] - from[0]) * t), box.y + box.height * (from[1] + (to[1] - from[1]) * t));
  }
  await page.mouse.up();
}

/** The mask a request carried, as a grid of on/off at the given fractions. */
async function maskAt(page, dataUrl, points) {
  return page.evaluate(
    async ({ dataUrl, points }) => {
      const img = new Image();
      img.src = dataUrl;
      await img.decode();
      const c = document.createElement("canvas");
      c.width = img.naturalWidth;
      c.height = img.naturalHeight;
      const ctx = c.getContext("2d", { willReadFrequently: true });
      if (!ctx) throw new Error("no 2d context");
      ctx.drawImage(img, 0, 0);
      const data = ctx.getImageData(0, 0, c.width, c.height).data;
      return {
        size: [c.width, c.height],
        values: points.map(([x, y]) => data[(Math.floor(y * c.height) * c.width + Math.floor(x * c.width)) * 4]),
      };
    },
    { dataUrl, points },
  );
}

describe("img2img", () => {
  test("a start image from the file picker sets the size; strength goes with the job", async () => {
    const { page, problems, context } = await open("/img2img");
    await page.getByLabel("Prompt", { exact: true }).fill("the same, as a painting");
    assert.equal(await page.getByRole("button", { name: "Generate" }).isDisabled(), true);
    await page.getByText("Choose a start image.").waitFor();
    await page.getByLabel("Start image file").setInputFiles({ name: "start.png", mimeType: "image/png", buffer: png });
    await page.getByAltText("Start image: start.png").waitFor();
    await page.getByText("start.png · 96×64").waitFor();
    assert.equal(await page.getByLabel("Width").inputValue(), "96");
    assert.equal(await page.getByLabel("Height").inputValue(), "64");
    await page.getByLabel(/Strength/).fill("0.5");
    await screenshot(page, "img2img");
    const { body, id } = await submitAndCapture(page);
    assert.match(body.init_image, /^data:image\/png;base64,/);
    assert.equal(body.strength, 0.5);
    assert.equal(body.mask_image, undefined);
    const job = await succeeded(id);
    assert.equal(job.request.width, 96);
    assert.equal(job.request.height, 64);
    assert.equal(job.request.strength, 0.5);
    assert.ok(job.request.init_image, "the start image was stored with the job");
    await page.locator("article.job-card .badge", { hasText: "succeeded" }).waitFor({ timeout: 30_000 });
    assert.deepEqual(problems, []);
    await context.close();
  });

  test("a size the user chose stays when a start image arrives; drop and paste work too", async () => {
    const { page, problems, context } = await open("/img2img");
    await page.locator('select[name="size_preset"]').selectOption("256²");
    await dropFile(page, '[data-testid="init-dropzone"]', "dropped.png", png);
    await page.getByText("dropped.png · 96×64").waitFor();
    assert.equal(await page.getByLabel("Width").inputValue(), "256", "the chosen size stays");
    await page.evaluate((b64) => {
      const bin = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      const dt = new DataTransfer();
      dt.items.add(new File([bin], "clip.png", { type: "image/png" }));
      window.dispatchEvent(new ClipboardEvent("paste", { clipboardData: dt, bubbles: true, cancelable: true }));
    }, png.toString("base64"));
    await page.getByText("pasted image · 96×64").waitFor();
    // A file that is not an image is refused with a message, not sent.
    await dropFile(page, '[data-testid="init-dropzone"]', "notes.txt", Buffer.from("hello"), "text/plain");
    await page.getByText("notes.txt is not an image").waitFor();
    assert.deepEqual(problems, []);
    await context.close();
  });
});

describe("parameters from a PNG", () => {
  test("a PNG dropped on the page loads its recipe into the form", async () => {
    const { page, problems, context } = await open("/txt2img");
    await page.getByLabel("Prompt", { exact: true }).fill("something else");
    await dropFile(page, null, "recipe.png", png);
    await waitFor(async () => (await page.getByLabel("Prompt", { exact: true }).inputValue()) === "a start image", 10_000, "the prompt read from the PNG");
    assert.equal(await page.getByLabel("Width").inputValue(), "96");
    assert.equal(await page.getByLabel("Height").inputValue(), "64");
    assert.equal(await page.getByLabel("Steps").inputValue(), "4");
    assert.equal(await page.getByLabel("Seed").inputValue(), "3");
    // Anything but a PNG is refused with a message.
    await dropFile(page, null, "notes.txt", Buffer.from("hello"), "text/plain");
    await page.getByText("notes.txt is not a PNG").waitFor();
    await screenshot(page, "png-recipe-dropped");
    assert.deepEqual(problems, []);
    await context.close();
  });
});

describe("inpainting", () => {
  test("paint, undo, erase and invert a mask; repaint with an inpainting model and an ordinary one", async () => {
    const { page, problems, context } = await open("/inpaint");
    await page.getByLabel("Start image file").setInputFiles({ name: "start.png", mimeType: "image/png", buffer: png });
    await page.getByTestId("mask-canvas").waitFor();
    await page.getByLabel("Prompt", { exact: true }).fill("a red door");
    await page.getByText("Paint the area to repaint.").waitFor();
    assert.equal(await page.getByRole("button", { name: "Generate" }).isDisabled(), true);

    await page.getByLabel(/Brush/).fill("16");
    await paint(page, [0.1, 0.5], [0.4, 0.5]);
    assert.equal(await page.getByRole("button", { name: "Generate" }).isDisabled(), false);
    await page.getByRole("button", { name: "Undo" }).click();
    assert.equal(await page.getByRole("button", { name: "Generate" }).isDisabled(), true, "undo took the stroke back");
    await paint(page, [0.1, 0.5], [0.4, 0.5]);
    // Erase the stroke's right end.
    await page.getByRole("button", { name: "Eraser" }).click();
    await paint(page, [0.35, 0.3], [0.35, 0.7]);
    await page.getByRole("button", { name: "Eraser on" }).click();
    await page.locator('select[name="model"]').selectOption("tiny-inpaint");
    await screenshot(page, "inpaint");

    const first = await submitAndCapture(page);
    assert.match(first.body.mask_image, /^data:image\/png;base64,/);
    const mask = await maskAt(page, first.body.mask_image, [[0.2, 0.5], [0.35, 0.5], [0.8, 0.2], [0.2, 0.05]]);
    assert.deepEqual(mask.size, [96, 64], "the mask has the start image's size");
    assert.deepEqual(mask.values, [255, 0, 0, 0], "painted is white; erased and unpainted are black");
    const job = await succeeded(first.id);
    assert.equal(job.request.model, "tiny-inpaint");
    assert.ok(job.request.mask_image, "the mask was stored with the job");

    await page.getByRole("button", { name: "Invert" }).click();
    await page.locator('select[name="model"]').selectOption("tiny");
    assert.equal(await page.getByLabel("Width").inputValue(), "96", "the start image's size outlasts a model change");
    assert.equal(await page.getByLabel("Height").inputValue(), "64");
    const second = await submitAndCapture(page);
    const inverted = await maskAt(page, second.body.mask_image, [[0.2, 0.5], [0.35, 0.5], [0.8, 0.2]]);
    assert.deepEqual(inverted.values, [0, 255, 255], "invert swaps painted and unpainted");
    assert.equal((await succeeded(second.id)).request.model, "tiny");

    await page.getByRole("button", { name: "Clear" }).click();
    assert.equal(await page.getByRole("button", { name: "Generate" }).isDisabled(), true, "clear leaves nothing to repaint");
    assert.deepEqual(problems, []);
    await context.close();
  });
});
