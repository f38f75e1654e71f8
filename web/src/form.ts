// The generation form's state, and how it becomes a request or is filled from a recipe.

import type { Model, Recipe, SubmitRequest } from "sdq-client";

/** Which pipeline the form drives. */
export type Mode = "txt2img" | "img2img" | "inpaint";

/** A start image for img2img and inpainting. */
export interface InitImage {
  /** What the page shows and draws on: a data URL or an object URL. */
  src: string;
  /** The bytes to send, as a data URL. */
  dataUrl: string;
  width: number;
  height: number;
  /** Where it came from, for the label. */
  name: string;
  /** Set when it was picked from the gallery. */
  galleryId?: string;
}

/** Everything the user can set. */
export interface FormState {
  prompt: string;
  negative_prompt: string;
  model: string;
  width: number;
  height: number;
  steps: number;
  guidance_scale: number;
  /** Empty: the model's own scheduler. */
  scheduler: string;
  seed: number;
  randomSeed: boolean;
  num_images: number;
  strength: number;
  previews: boolean;
  /** The user picked a size since the last start image: keep it when a new one comes. */
  sizeChosen: boolean;
}

/** The form before the models have loaded. */
export const INITIAL_FORM: FormState = {
  prompt: "",
  negative_prompt: "",
  model: "",
  width: 512,
  height: 512,
  steps: 20,
  guidance_scale: 7.5,
  scheduler: "",
  seed: 42,
  randomSeed: true,
  num_images: 1,
  strength: 0.75,
  // Previews are cheap on the server (no VAE decode) and show a job taking shape.
  previews: true,
  sizeChosen: false,
};

/** Size presets, as A1111 users know them. */
export const SIZE_PRESETS: { label: string; width: number; height: number }[] = [
  { label: "64²", width: 64, height: 64 },
  { label: "256²", width: 256, height: 256 },
  { label: "512²", width: 512, height: 512 },
  { label: "512×768", width: 512, height: 768 },
  { label: "768×512", width: 768, height: 512 },
  { label: "768²", width: 768, height: 768 },
  { label: "1024²", width: 1024, height: 1024 },
];

/** The server's bounds on a side and on an image's area. */
export const MAX_SIDE = 2048;
export const MIN_SIDE = 64;
export const MAX_PIXELS = 1024 * 1024;

/** A form that has taken a model's defaults. */
export function withModel(form: FormState, model: Model): FormState {
  const d = model.defaults;
  if (!d) return { ...form, model: model.id };
  return {
    ...form,
    model: model.id,
    width: d.width,
    height: d.height,
    steps: d.steps,
    guidance_scale: d.guidance_scale,
    sizeChosen: false,
  };
}

/** The size a start image gets: its own, to a multiple of 8, within the server's bounds. */
export function sizeFor(width: number, height: number): { width: number; height: number } {
  let scale = Math.min(1, Math.sqrt(MAX_PIXELS / (width * height)), MAX_SIDE / Math.max(width, height));
  scale = Math.max(scale, MIN_SIDE / Math.min(width, height));
  const fit = (v: number) => Math.min(MAX_SIDE, Math.max(MIN_SIDE, Math.floor((v * scale) / 8) * 8));
  return { width: fit(width), height: fit(height) };
}

/** A random seed, in the 32-bit range A1111 uses. */
export function randomSeed(): number {
  return Math.floor(Math.random() * 0xffffffff);
}

/** The request for this form; `seed` is the one to use (the form's, or a fresh one). */
export function toRequest(form: FormState, mode: Mode, seed: number, init: InitImage | null, mask: string | null): SubmitRequest {
  const req: SubmitRequest = {
    prompt: form.prompt,
    width: form.width,
    height: form.height,
    steps: form.steps,
    guidance_scale: form.guidance_scale,
    seed,
    num_images: form.num_images,
  };
  if (form.negative_prompt.trim()) req.negative_prompt = form.negative_prompt;
  if (form.model) req.model = form.model;
  if (form.scheduler) req.scheduler = form.scheduler;
  if (form.previews) req.previews = true;
  if (mode !== "txt2img" && init) {
    // A gallery image is named, not uploaded again.
    if (init.galleryId) req.init_image_id = init.galleryId;
    else req.init_image = init.dataUrl;
    req.strength = form.strength;
    if (mode === "inpaint" && mask) req.mask_image = mask;
  }
  return req;
}

/** The form with a recipe's fields (from a gallery image or a dropped PNG) loaded. */
export function fromRecipe(form: FormState, recipe: Recipe, models: Model[]): FormState {
  const next = { ...form };
  if (typeof recipe.prompt === "string") next.prompt = recipe.prompt;
  if (typeof recipe.negative_prompt === "string") next.negative_prompt = recipe.negative_prompt;
  if (typeof recipe.model === "string" && models.some((m) => m.id === recipe.model && m.available)) {
    next.model = recipe.model;
  }
  if (typeof recipe.width === "number") next.width = recipe.width;
  if (typeof recipe.height === "number") next.height = recipe.height;
  if (typeof recipe.width === "number" || typeof recipe.height === "number") next.sizeChosen = true;
  if (typeof recipe.steps === "number") next.steps = recipe.steps;
  if (typeof recipe.guidance_scale === "number") next.guidance_scale = recipe.guidance_scale;
  if (typeof recipe.scheduler === "string") next.scheduler = recipe.scheduler;
  if (typeof recipe.seed === "number") {
    next.seed = recipe.seed;
    next.randomSeed = false;
  }
  if (typeof recipe.strength === "number") next.strength = recipe.strength;
  return next;
}

/** "1.2 s", "3 min 4 s": a duration for people. */
export function formatMs(ms: number | null | undefined): string {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return "–";
  if (ms < 1000) return `${Math.max(0, Math.round(ms))} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  const m = Math.floor(s / 60);
  return `${m} min ${Math.round(s - m * 60)} s`;
}
