// The shapes of sdq's public API (`/v1`), written by hand against docs/api-contract.md
// and the server's handlers; `test/contract.test.ts` checks them against a real server.

/** Where a job stands. `queued → running → succeeded | failed | canceled`. */
export type JobStatus = "queued" | "running" | "succeeded" | "failed" | "canceled";

/** Every scheduler the server accepts, by its API name. */
export const SCHEDULERS = [
  "ddim",
  "pndm",
  "euler",
  "euler-a",
  "heun",
  "dpmpp-2m",
  "dpmpp-2m-karras",
  "dpmpp-2m-sde-karras",
  "unipc",
  "lcm",
] as const;

/** A scheduler's API name. */
export type Scheduler = (typeof SCHEDULERS)[number];

/** Events a webhook may be sent for. */
export type WebhookEvent = "started" | "progress" | "completed";

/** The body of `POST /v1/jobs`; everything but `prompt` has a server default. */
export interface SubmitRequest {
  prompt: string;
  negative_prompt?: string;
  model?: string;
  width?: number;
  height?: number;
  steps?: number;
  guidance_scale?: number;
  seed?: number;
  scheduler?: Scheduler | string;
  num_images?: number;
  priority?: number;
  long_prompt?: "chunk" | "truncate";
  /** img2img / inpainting start image: base64 or a `data:` URL. */
  init_image?: string;
  /** Inpainting mask (white = repaint): base64 or a `data:` URL. */
  mask_image?: string;
  /** A gallery image of the same owner as the start image. */
  init_image_id?: string;
  /** A gallery image of the same owner as the mask. */
  mask_image_id?: string;
  /** img2img / inpainting: 0 < strength ≤ 1. */
  strength?: number;
  /** Re-run the recipe of this image id; other fields override it. */
  from_image?: string;
  /** Ask for `preview` events while the job runs. */
  previews?: boolean;
  /** Steps between previews (default `max(1, steps / 10)`). */
  preview_every?: number;
  webhook_url?: string;
  webhook_events?: WebhookEvent[];
  /** LoRAs of the models directory; `<lora:name:weight>` in the prompt adds more. */
  loras?: LoraRef[];
  /** A VAE of the models directory (`none`: the model's own). */
  vae?: string;
  /** A1111's clip skip, 1–12. */
  clip_skip?: number;
  /** An end user's id, stored with the job. */
  user?: string;
  /** VAE tiling for large images: `off`, `on` (whenever the image is larger than the
   * VAE's tile), or `auto` (the default: only when the untiled pass would need over 1 GiB
   * per feature map). */
  vae_tiling?: "off" | "on" | "auto";
}

/** Where a job's resources live. */
export interface JobLinks {
  self: string;
  events: string;
  images: string;
  cancel: string;
}

/** `POST /v1/jobs` → 202. */
export interface SubmitResponse {
  id: string;
  status: JobStatus;
  links: JobLinks;
}

/** A job's request after the server applied its defaults. */
export interface JobSpec {
  prompt: string;
  negative_prompt: string;
  model: string;
  width: number;
  height: number;
  steps: number;
  guidance_scale: number;
  seed: number;
  scheduler: string;
  num_images: number;
  long_prompt: string;
  /** Object-store key of the stored start image. */
  init_image?: string;
  /** Object-store key of the stored mask. */
  mask_image?: string;
  strength?: number;
  /** LoRAs of the models directory at their weights. */
  loras?: LoraRef[];
  /** A VAE of the models directory in place of the model's own. */
  vae?: string;
  /** A1111's clip skip (1 = last layer). */
  clip_skip?: number;
  /** An end user's id, as the OpenAI dialect's `user` (stored, never used). */
  user?: string;
  previews?: boolean;
  preview_every?: number;
  webhook_url?: string;
  webhook_events?: WebhookEvent[];
  /** `off`, `on` or `auto`; absent: `auto`. */
  vae_tiling?: string;
}

/** A LoRA of the models directory at a weight (1 when left out of a request). */
export interface LoraRef {
  name: string;
  weight?: number;
}

/** An image as a job lists it: the same view as the gallery's. */
export type JobImage = GalleryImage;

/** Milliseconds spent in each phase of a finished job. */
export interface Timings {
  load_ms?: number;
  inference_ms?: number;
  encode_ms?: number;
  upload_ms?: number;
  total_ms?: number;
  [phase: string]: number | undefined;
}

/** The latest step preview of a running job. */
export interface Preview {
  step: number;
  /** Steps in all, as progress counts them. */
  total: number;
  /** A `data:image/jpeg;base64,…` URL. */
  image: string;
  /** The preview's size: the latents', 1/8 of the image's per side. */
  width: number;
  height: number;
}

/** `GET /v1/jobs/{id}`. */
export interface Job {
  id: string;
  status: JobStatus;
  model: string;
  request: JobSpec;
  priority: number;
  progress: { step: number; total: number };
  /** 1-based place in the queue while queued, else null. */
  queue_position: number | null;
  attempts: number;
  max_attempts: number;
  cancel_requested: boolean;
  worker: string | null;
  error: string | null;
  timings: Timings | null;
  images: JobImage[];
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
  links: JobLinks;
  /** The key id that owns the job, or `local` when auth is off. */
  owner?: string;
  /** While running with previews on: the latest one. */
  preview?: Preview | null;
  /** The job's webhook deliveries (`GET /v1/jobs/{id}`; absent from webhook bodies). */
  webhooks?: WebhookDelivery[];
}

/** One webhook delivery: one per (job, event); `id` is the `webhook-id` header. */
export interface WebhookDelivery {
  id: string;
  event: WebhookEvent;
  status: "pending" | "delivered" | "failed";
  attempts: number;
  last_error: string | null;
  response_status: number | null;
  created_at: string;
  next_attempt_at: string | null;
  delivered_at: string | null;
}

/** A page of `GET /v1/jobs`. */
export interface JobList {
  jobs: Job[];
  next_cursor: string | null;
}

/** An image as the events list it. */
export interface ImageSummary {
  index: number;
  id: string;
  url: string;
  seed: number;
}

/** What every event carries. */
interface EventBase {
  job_id: string;
  /** The job's gap-free sequence number (the SSE `id`); previews have none. */
  seq: number;
}

/** One message of `GET /v1/jobs/{id}/events`, by its `type` (the SSE `event:` name). */
export type JobEvent =
  | (EventBase & { type: "queued"; position: number })
  | (EventBase & { type: "started"; attempt: number; worker: string })
  | (EventBase & { type: "progress"; step: number; total: number; elapsed_ms: number; eta_ms: number })
  | (EventBase & ({ type: "image" } & ImageSummary))
  | (EventBase & { type: "succeeded"; images: ImageSummary[]; timings: Timings })
  | (EventBase & { type: "failed"; error: string; retrying: boolean })
  | (EventBase & { type: "canceled" })
  | PreviewEvent;

/**
 * A step preview: live only, outside the `seq` log. It comes without an SSE `id`, so it
 * never moves `Last-Event-ID`; its `seq` is that of the last stored event before it.
 */
export interface PreviewEvent {
  job_id: string;
  seq?: number;
  type: "preview";
  step: number;
  total: number;
  /** A `data:image/jpeg;base64,…` URL. */
  image: string;
  width: number;
  height: number;
}

/** Every event type. */
export type JobEventType = JobEvent["type"];

/** A gallery image (`GET /v1/images`). */
export interface GalleryImage {
  id: string;
  job_id: string;
  index: number;
  url: string;
  thumbnail_url: string;
  seed: number;
  width: number;
  height: number;
  bytes: number;
  model: string;
  prompt: string;
  created_at: string;
}

/** A page of the gallery, newest first. */
export interface GalleryPage {
  images: GalleryImage[];
  next_cursor: string | null;
}

/** The recipe an image was made with, as far as its metadata tells. */
export interface Recipe {
  prompt?: string;
  negative_prompt?: string;
  model?: string;
  width?: number;
  height?: number;
  steps?: number;
  guidance_scale?: number;
  seed?: number;
  scheduler?: string;
  strength?: number;
  num_images?: number;
  [field: string]: unknown;
}

/** `GET /v1/images/{id}/metadata` and `POST /v1/png-info`. */
export interface ImageMetadata {
  source: "sdq" | "a1111" | null;
  parameters: string | null;
  recipe: Recipe;
}

/** A model's defaults, applied when a request leaves a field out. */
export interface ModelDefaults {
  width: number;
  height: number;
  steps: number;
  guidance_scale: number;
}

/** One entry of `GET /v1/models`. */
export interface Model {
  id: string;
  /** Whether this server accepts jobs for it. */
  available: boolean;
  /** The model a job without `model` gets. */
  default: boolean;
  repo?: string | null;
  description?: string;
  defaults?: ModelDefaults;
  /** `hub` for the known models, `models_dir` for checkpoints of the models directory. */
  source?: string;
  /** Models directory checkpoints: `sd1`, `sd2`, `sdxl` (`-inpaint` for 9-channel UNets). */
  family?: string | null;
  file?: string | null;
  format?: string | null;
  size?: number | null;
  sha256?: string | null;
  /** Why a checkpoint cannot be used, if it cannot. */
  error?: string | null;
}

/** One entry of `GET /v1/workers`. */
export interface Worker {
  name: string;
  host: string;
  device: string;
  model: string | null;
  current_job: string | null;
  started_at: string;
  last_seen_at: string;
}

/** An API key as the server describes it (never its secret). */
export interface ApiKey {
  id: string;
  name: string;
  /** The first characters of the token, to tell keys apart. */
  prefix?: string;
  admin: boolean;
  max_queued: number | null;
  rate_per_min: number | null;
  created_at: string;
  revoked_at?: string | null;
  last_used_at?: string | null;
  /** Days its finished jobs are kept (null: the server's `--retain-days`). */
  retain_days?: number | null;
  /** The key's webhook signing secret (`GET /v1/me` only). */
  webhook_secret?: string;
  /** The token itself: in the answer of `POST /v1/keys` only. */
  token?: string;
}

/** `GET /v1/me`: whether the server wants keys, and which key this is. */
export interface Me {
  auth: "off" | "required";
  /** Admin rights: an admin key, or the local user while auth is off. */
  admin: boolean;
  key: ApiKey | null;
}

/** The one error body: `{"error": {code, message, field?}}`. */
export interface ErrorBody {
  error: { code: string; message: string; field?: string };
}
