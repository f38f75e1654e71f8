//! Schemas of the response bodies that handlers build as JSON values (the job view, the
//! listings, the dialects' answers). These types are never constructed: they exist so the
//! OpenAPI document says what the handlers write, and the schemathesis run in
//! `tests/openapi.rs` checks every response against them. Request bodies derive their
//! schemas on the very types the handlers deserialize into.
#![allow(dead_code)]

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::queue::{JobSpec, JobStatus, PreviewImage};
use crate::view::ImageView;

/// The one error body of the native API.
#[derive(ToSchema)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable: `malformed_json`, `invalid_request`, `not_found`, `unauthorized`,
    /// `forbidden`, `unsupported_media_type`, `rate_limited`, `too_many_jobs`, `conflict`,
    /// `payload_too_large`, `insufficient_storage`, `unavailable`, `internal`.
    code: String,
    message: String,
    /// The request field at fault (422 only).
    field: Option<String>,
}

/// Where a job's parts are.
#[derive(Serialize, ToSchema)]
pub struct JobLinks {
    #[serde(rename = "self")]
    self_: String,
    events: String,
    images: String,
    cancel: String,
}

/// The answer to a submission: 202 for a new job, 200 for an idempotent replay.
#[derive(ToSchema)]
pub struct JobCreated {
    id: Uuid,
    status: JobStatus,
    links: JobLinks,
}

#[derive(ToSchema)]
pub struct Progress {
    step: i64,
    total: i64,
}

/// Everything about a job (`GET /v1/jobs/{id}`).
#[derive(ToSchema)]
pub struct JobView {
    id: Uuid,
    owner: String,
    status: JobStatus,
    model: String,
    /// The validated request as it was queued.
    request: JobSpec,
    priority: i32,
    progress: Progress,
    /// 1-based place in line while queued.
    queue_position: Option<i64>,
    attempts: i32,
    max_attempts: i32,
    cancel_requested: bool,
    worker: Option<String>,
    error: Option<String>,
    /// Milliseconds per stage (`load_ms`, `inference_ms`, `encode_ms`, `upload_ms`, ...).
    #[schema(value_type = Option<Object>)]
    timings: Option<Value>,
    /// Filled once the job has succeeded.
    images: Vec<ImageView>,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    started_at: Option<String>,
    #[schema(format = DateTime)]
    finished_at: Option<String>,
    links: JobLinks,
    /// The job's webhook deliveries (empty without `webhook_url`).
    webhooks: Vec<DeliveryView>,
    /// The latest step preview while a job with `previews` runs, else null.
    preview: Option<PreviewImage>,
}

/// One webhook delivery of a job.
#[derive(ToSchema)]
pub struct DeliveryView {
    /// The `webhook-id` header it is sent with (stable across retries).
    id: String,
    /// `started`, `progress` or `completed`.
    event: String,
    /// `pending`, `delivered` or `failed`.
    status: String,
    attempts: i64,
    last_error: Option<String>,
    response_status: Option<i64>,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    next_attempt_at: Option<String>,
    #[schema(format = DateTime)]
    delivered_at: Option<String>,
}

/// One message of a job's event stream (`text/event-stream`).
#[derive(ToSchema)]
pub struct SseMessage {
    /// The event's type, the same as `type` in `data`: `queued`, `started`, `progress`,
    /// `image`, `preview`, `succeeded`, `failed`, `canceled`.
    event: String,
    /// The event's `seq`: send it back as `Last-Event-ID` to resume after it.
    id: String,
    /// The event as JSON: an `Event` (`job_id`, `seq` and the fields of its `EventKind`).
    #[schema(content_media_type = "application/json")]
    data: String,
}

#[derive(ToSchema)]
pub struct JobList {
    jobs: Vec<JobView>,
    /// Pass as `cursor` for the next page; null on the last one.
    next_cursor: Option<String>,
}

#[derive(ToSchema)]
pub struct ImageList {
    images: Vec<ImageView>,
    next_cursor: Option<String>,
}

#[derive(ToSchema)]
pub struct JobImages {
    images: Vec<ImageView>,
}

#[derive(ToSchema)]
pub struct Health {
    status: String,
}

#[derive(ToSchema)]
pub struct Check {
    /// `ok`, `error` or (the event bus) `degraded`.
    status: String,
    error: Option<String>,
    location: Option<String>,
}

#[derive(ToSchema)]
pub struct Checks {
    database: Check,
    object_store: Check,
    event_bus: Check,
}

/// 200 when ready, 503 naming the failing dependency.
#[derive(ToSchema)]
pub struct Readiness {
    /// `ready` or `unavailable`.
    status: String,
    checks: Checks,
}

#[derive(ToSchema)]
pub struct ModelDefaults {
    width: Option<i64>,
    height: Option<i64>,
    steps: Option<i64>,
    guidance_scale: Option<f64>,
}

/// A model sdq knows, or a checkpoint of the models directory.
#[derive(ToSchema)]
pub struct ModelEntry {
    id: String,
    /// Whether a request may name it on this server.
    available: bool,
    default: Option<bool>,
    family: Option<String>,
    repo: Option<String>,
    description: Option<String>,
    defaults: Option<ModelDefaults>,
    /// `models_dir` for checkpoints of the models directory.
    source: Option<String>,
    file: Option<String>,
    format: Option<String>,
    size: Option<i64>,
    sha256: Option<String>,
    error: Option<String>,
}

/// A LoRA, embedding or VAE of the models directory.
#[derive(ToSchema)]
pub struct FileEntry {
    id: String,
    file: Option<String>,
    format: Option<String>,
    family: Option<String>,
    size: Option<i64>,
    sha256: Option<String>,
    vectors: Option<i64>,
    available: bool,
    error: Option<String>,
}

/// A model in OpenAI's list shape.
#[derive(ToSchema)]
pub struct OpenAiModel {
    id: String,
    object: String,
    created: i64,
    owned_by: String,
}

/// `GET /v1/models`: ours (`models`, `loras`, `embeddings`, `vae`) and OpenAI's
/// (`object`, `data`) side by side.
#[derive(ToSchema)]
pub struct ModelList {
    models: Vec<ModelEntry>,
    object: String,
    data: Vec<OpenAiModel>,
    loras: Vec<FileEntry>,
    embeddings: Vec<FileEntry>,
    vae: Vec<FileEntry>,
}

#[derive(ToSchema)]
pub struct WorkerView {
    name: String,
    host: String,
    device: String,
    model: Option<String>,
    current_job: Option<Uuid>,
    #[schema(format = DateTime)]
    started_at: String,
    #[schema(format = DateTime)]
    last_seen_at: String,
}

#[derive(ToSchema)]
pub struct WorkerList {
    workers: Vec<WorkerView>,
}

/// An API key as listings show it: never its secret.
#[derive(ToSchema)]
pub struct KeyView {
    id: Uuid,
    name: String,
    /// The token's public start, `sdq_…`.
    prefix: String,
    admin: bool,
    max_queued: Option<i64>,
    /// Days this key's finished jobs are kept (overrides `--retain-days`).
    retain_days: Option<f64>,
    rate_per_min: Option<i64>,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    revoked_at: Option<String>,
    #[schema(format = DateTime)]
    last_used_at: Option<String>,
    /// `whsec_…`: only to the key itself (`/v1/me`) and at creation.
    webhook_secret: Option<String>,
    /// The bearer token: in the creation response only.
    token: Option<String>,
}

#[derive(ToSchema)]
pub struct KeyList {
    keys: Vec<KeyView>,
}

/// `GET /v1/me`
#[derive(ToSchema)]
pub struct Me {
    /// `off` or `required`.
    auth: String,
    admin: bool,
    /// Null while auth is off and no key was sent.
    key: Option<KeyView>,
}

/// A recipe read back from a PNG.
#[derive(ToSchema)]
pub struct PngRecipe {
    /// `sdq`, `a1111` or `none`.
    source: String,
    /// The A1111 `parameters` text, if any.
    parameters: Option<String>,
    /// Job-request fields; submit them (edited or not) to run the recipe again.
    #[schema(value_type = Object)]
    recipe: Value,
}

/// `POST /v1/png-info` as JSON (or multipart with an `image` file part).
#[derive(ToSchema)]
pub struct PngInfoBody {
    /// The PNG, base64 (a `data:` URL is fine too).
    image: String,
}

/// An image-carrying multipart submission: the JSON fields as text parts (or one
/// `request` part holding them as JSON), and the files.
#[derive(ToSchema)]
pub struct JobMultipart {
    #[schema(value_type = Option<String>, format = Binary)]
    image: Option<Vec<u8>>,
    #[schema(value_type = Option<String>, format = Binary)]
    mask: Option<Vec<u8>>,
    /// The other fields of `SubmitRequest`, as JSON.
    request: Option<String>,
    prompt: Option<String>,
}

// ---- AUTOMATIC1111 ----

/// A1111's error shape.
#[derive(ToSchema)]
pub struct A1111Error {
    error: String,
    detail: String,
    body: String,
    errors: String,
    field: Option<String>,
}

/// `txt2img` / `img2img` answers.
#[derive(ToSchema)]
pub struct A1111Images {
    /// PNGs, base64.
    images: Vec<String>,
    #[schema(value_type = Object)]
    parameters: Value,
    /// A JSON document (as a string) describing the generation.
    info: String,
}

#[derive(ToSchema)]
pub struct A1111State {
    skipped: bool,
    interrupted: bool,
    stopping_generation: bool,
    job: String,
    job_count: i64,
    job_timestamp: String,
    job_no: i64,
    sampling_step: i64,
    sampling_steps: i64,
}

#[derive(ToSchema)]
pub struct A1111Progress {
    progress: f64,
    eta_relative: f64,
    state: A1111State,
    current_image: Option<String>,
    textinfo: Option<String>,
}

#[derive(ToSchema)]
pub struct A1111PngInfo {
    info: String,
    #[schema(value_type = Object)]
    items: Value,
    #[schema(value_type = Object)]
    parameters: Value,
}

// ---- OpenAI ----

#[derive(Serialize, ToSchema)]
pub struct OpenAiErrorDetail {
    message: String,
    #[serde(rename = "type")]
    kind: String,
    param: Option<String>,
    code: Option<String>,
}

/// OpenAI's error shape.
#[derive(ToSchema)]
pub struct OpenAiError {
    error: OpenAiErrorDetail,
}

#[derive(ToSchema)]
pub struct OpenAiImage {
    b64_json: Option<String>,
    url: Option<String>,
    revised_prompt: Option<String>,
}

/// OpenAI's `ImagesResponse`.
#[derive(ToSchema)]
pub struct OpenAiImages {
    created: i64,
    data: Vec<OpenAiImage>,
    background: Option<String>,
    size: Option<String>,
    quality: Option<String>,
    output_format: Option<String>,
    #[schema(value_type = Object)]
    usage: Value,
}

/// `POST /v1/images/edits`: multipart, OpenAI's fields as text parts.
#[derive(ToSchema)]
pub struct OpenAiEdit {
    /// One or more start images (`image` or `image[]`).
    #[schema(value_type = String, format = Binary)]
    image: Vec<u8>,
    #[schema(value_type = Option<String>, format = Binary)]
    mask: Option<Vec<u8>>,
    prompt: String,
    model: Option<String>,
    n: Option<String>,
    size: Option<String>,
    response_format: Option<String>,
}
