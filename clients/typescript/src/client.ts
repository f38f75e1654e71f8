// The HTTP client: one method per route of `/v1`, one error type, the key in a header.

import { subscribe, type SubscribeOptions, type Subscription } from "./events.js";
import type {
  GalleryPage,
  ImageMetadata,
  Job,
  JobImage,
  JobList,
  JobStatus,
  Me,
  ApiKey,
  Model,
  SubmitRequest,
  SubmitResponse,
  Worker,
} from "./types.js";

/** A failed request: the server's `{"error": {code, message, field}}`, or a network error. */
export class SdqError extends Error {
  /** HTTP status; 0 when the server could not be reached. */
  readonly status: number;
  /** The server's error code (`unauthorized`, `invalid_request`, …), or `network`. */
  readonly code: string;
  /** The request field at fault, when the server named one. */
  readonly field?: string;
  /** Seconds to wait before retrying (`Retry-After`), when the server said. */
  readonly retryAfter?: number;

  constructor(status: number, code: string, message: string, field?: string, retryAfter?: number) {
    super(message);
    this.name = "SdqError";
    this.status = status;
    this.code = code;
    if (field !== undefined) this.field = field;
    if (retryAfter !== undefined) this.retryAfter = retryAfter;
  }
}

/** Where the key comes from: a fixed string, or a function read before every request. */
export type KeySource = string | null | undefined | (() => string | null | undefined);

/** How a client reaches its server. */
export interface ClientOptions {
  /** The server's origin, e.g. `http://127.0.0.1:7860`; empty for the page's own. */
  baseUrl?: string;
  /** The API key, sent as `Authorization: Bearer …` (never in a URL). */
  apiKey?: KeySource;
  /** A fetch implementation; the global one by default. */
  fetch?: typeof fetch;
  /** Called on every 401, e.g. to ask the user for a key. */
  onUnauthorized?: (error: SdqError) => void;
}

/** `GET /v1/jobs` filters. */
export interface ListJobsOptions {
  status?: JobStatus;
  limit?: number;
  cursor?: string;
}

/** `GET /v1/images` filters. */
export interface ListImagesOptions {
  cursor?: string;
  limit?: number;
  model?: string;
  job_id?: string;
  /** An RFC 3339 time or milliseconds since the epoch. */
  since?: string | number;
}

/** What `cancel` did: `canceled` for a queued job, `requested` for a running one. */
export interface CancelResult {
  outcome: "canceled" | "requested";
  job: Job;
}

/** A client of one sdq server. */
export class SdqClient {
  readonly baseUrl: string;
  private readonly keySource: KeySource;
  private readonly fetchImpl: typeof fetch;
  private readonly onUnauthorized: ((error: SdqError) => void) | undefined;

  constructor(options: ClientOptions = {}) {
    this.baseUrl = (options.baseUrl ?? "").replace(/\/+$/, "");
    this.keySource = options.apiKey;
    const f = options.fetch ?? globalThis.fetch;
    // Bound so that a browser's fetch is not called with the client as `this`.
    this.fetchImpl = (input, init) => f(input, init);
    this.onUnauthorized = options.onUnauthorized;
  }

  /** The key requests carry now, if any. */
  apiKey(): string | null {
    const k = typeof this.keySource === "function" ? this.keySource() : this.keySource;
    return k ? k : null;
  }

  /** An absolute URL for a server path. */
  url(path: string): string {
    return `${this.baseUrl}${path}`;
  }

  /** The headers every request carries: the key, when there is one. */
  headers(extra: Record<string, string> = {}): Record<string, string> {
    const key = this.apiKey();
    return key ? { ...extra, authorization: `Bearer ${key}` } : { ...extra };
  }

  /** Sends a request and returns the response, or throws an `SdqError` for any non-2xx. */
  async request(method: string, path: string, init: { body?: unknown; headers?: Record<string, string>; signal?: AbortSignal } = {}): Promise<Response> {
    const headers = this.headers(init.headers);
    let body: string | undefined;
    if (method !== "GET" && method !== "HEAD") {
      // The server refuses state-changing requests that are not JSON (a CSRF guard).
      headers["content-type"] = "application/json";
      if (init.body !== undefined) body = JSON.stringify(init.body);
    }
    let response: Response;
    try {
      response = await this.fetchImpl(this.url(path), {
        method,
        headers,
        ...(body !== undefined ? { body } : {}),
        ...(init.signal ? { signal: init.signal } : {}),
      });
    } catch (e) {
      if (isAbort(e)) throw e;
      throw new SdqError(0, "network", `cannot reach the server: ${String((e as Error)?.message ?? e)}`);
    }
    if (!response.ok && response.status !== 304) {
      throw await this.errorFrom(response);
    }
    return response;
  }

  /** Turns a failed response into an `SdqError`, telling `onUnauthorized` about 401s. */
  async errorFrom(response: Response): Promise<SdqError> {
    let code = `http_${response.status}`;
    let message = response.statusText || `HTTP ${response.status}`;
    let field: string | undefined;
    try {
      const body = (await response.json()) as { error?: { code?: string; message?: string; field?: string } };
      if (body?.error) {
        code = body.error.code ?? code;
        message = body.error.message ?? message;
        field = body.error.field;
      }
    } catch {
      // not JSON: keep the status line
    }
    const retryHeader = response.headers.get("retry-after");
    const retryAfter = retryHeader !== null && /^\d+$/.test(retryHeader) ? Number(retryHeader) : undefined;
    const error = new SdqError(response.status, code, message, field, retryAfter);
    if (response.status === 401) this.onUnauthorized?.(error);
    return error;
  }

  private async json<T>(method: string, path: string, body?: unknown): Promise<T> {
    const response = await this.request(method, path, body === undefined ? {} : { body });
    return (await response.json()) as T;
  }

  /** `GET /v1/me`: whether the server requires keys, and which key this is. */
  me(): Promise<Me> {
    return this.json("GET", "/v1/me");
  }

  /** `GET /v1/keys` (admin keys only). */
  async keys(): Promise<ApiKey[]> {
    return (await this.json<{ keys: ApiKey[] }>("GET", "/v1/keys")).keys;
  }

  /** `GET /v1/models`: every model the server knows, with its defaults. */
  async models(): Promise<Model[]> {
    return (await this.json<{ models: Model[] }>("GET", "/v1/models")).models;
  }

  /** `GET /v1/workers`: workers seen in the last 30 s. */
  async workers(): Promise<Worker[]> {
    return (await this.json<{ workers: Worker[] }>("GET", "/v1/workers")).workers;
  }

  /** `POST /v1/jobs`; with an idempotency key, a retried submit returns the same job. */
  async submit(request: SubmitRequest, options: { idempotencyKey?: string } = {}): Promise<SubmitResponse> {
    const headers: Record<string, string> = {};
    if (options.idempotencyKey) headers["idempotency-key"] = options.idempotencyKey;
    const response = await this.request("POST", "/v1/jobs", { body: request, headers });
    return (await response.json()) as SubmitResponse;
  }

  /** `GET /v1/jobs/{id}`. */
  job(id: string): Promise<Job> {
    return this.json("GET", `/v1/jobs/${encodeURIComponent(id)}`);
  }

  /** `GET /v1/jobs`: newest first; pass `next_cursor` back as `cursor` for the next page. */
  jobs(options: ListJobsOptions = {}): Promise<JobList> {
    return this.json("GET", `/v1/jobs${query(options)}`);
  }

  /** `POST /v1/jobs/{id}/cancel`; a finished job is a 409 `SdqError`. */
  async cancel(id: string): Promise<CancelResult> {
    const response = await this.request("POST", `/v1/jobs/${encodeURIComponent(id)}/cancel`);
    const job = (await response.json()) as Job;
    return { outcome: response.status === 202 ? "requested" : "canceled", job };
  }

  /** `DELETE /v1/jobs/{id}`: a finished job with everything it stored. */
  async deleteJob(id: string): Promise<void> {
    await this.request("DELETE", `/v1/jobs/${encodeURIComponent(id)}`);
  }

  /** `GET /v1/jobs/{id}/images`. */
  async jobImages(id: string): Promise<JobImage[]> {
    return (await this.json<{ images: JobImage[] }>("GET", `/v1/jobs/${encodeURIComponent(id)}/images`)).images;
  }

  /** `GET /v1/images`: the gallery, newest first. */
  images(options: ListImagesOptions = {}): Promise<GalleryPage> {
    return this.json("GET", `/v1/images${query(options)}`);
  }

  /** `DELETE /v1/images/{id}`: idempotent for the owner. */
  async deleteImage(id: string): Promise<void> {
    await this.request("DELETE", `/v1/images/${encodeURIComponent(id)}`);
  }

  /** `GET /v1/images/{id}/metadata`: the recipe stored in the PNG. */
  imageMetadata(id: string): Promise<ImageMetadata> {
    return this.json("GET", `/v1/images/${encodeURIComponent(id)}/metadata`);
  }

  /** `POST /v1/png-info`: the parameters of any PNG (sdq's or A1111's). */
  async pngInfo(png: Blob | ArrayBuffer | Uint8Array): Promise<ImageMetadata> {
    return this.json("POST", "/v1/png-info", { image: await toBase64(png) });
  }

  /** The bytes behind an image or thumbnail URL, fetched with the key. */
  async blob(path: string, signal?: AbortSignal): Promise<Blob> {
    const response = await this.request("GET", path, signal ? { signal } : {});
    return response.blob();
  }

  /** Follows a job's events; see `subscribe`. */
  subscribe(jobId: string, options: SubscribeOptions): Subscription {
    return subscribe(this, jobId, options);
  }

  /** Raw fetch with the key, for the event stream. */
  rawFetch(path: string, init: RequestInit): Promise<Response> {
    return this.fetchImpl(this.url(path), init);
  }
}

function query(options: object): string {
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(options)) {
    if (v !== undefined && v !== null && v !== "") params.set(k, String(v));
  }
  const s = params.toString();
  return s ? `?${s}` : "";
}

/** Whether `e` is the error fetch throws when its signal aborts. */
export function isAbort(e: unknown): boolean {
  return typeof e === "object" && e !== null && (e as { name?: string }).name === "AbortError";
}

/** Base64 of some bytes, in the browser and in node alike. */
export async function toBase64(data: Blob | ArrayBuffer | Uint8Array): Promise<string> {
  let bytes: Uint8Array;
  if (data instanceof Uint8Array) bytes = data;
  else if (data instanceof ArrayBuffer) bytes = new Uint8Array(data);
  else bytes = new Uint8Array(await data.arrayBuffer());
  let binary = "";
  const chunk = 0x8000;
  for (let i = 0; i < bytes.length; i += chunk) {
    binary += String.fromCharCode(...bytes.subarray(i, i + chunk));
  }
  return btoa(binary);
}
