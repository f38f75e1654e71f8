//! The job model: what a user asked for and where the job stands.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::JobStatus;

/// A validated generation request, stored with the job as JSON.
///
/// Plain values only: the queue does not know the inference types; the worker converts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub prompt: String,
    pub negative_prompt: String,
    pub model: String,
    pub width: u32,
    pub height: u32,
    pub steps: u32,
    pub guidance_scale: f64,
    pub seed: u64,
    pub scheduler: String,
    pub num_images: u32,
    pub long_prompt: String,
    /// img2img / inpaint: object-store key of the uploaded start image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_image: Option<String>,
    /// Inpaint: object-store key of the mask (white = repaint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_image: Option<String>,
    /// How much of the start image is replaced (0 keeps it, 1 repaints it entirely).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strength: Option<f64>,
    /// The caller's own label for whoever asked (OpenAI's `user`), kept with the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// What `enqueue` needs.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub spec: JobSpec,
    pub priority: i32,
    pub max_attempts: i32,
}

/// A job row.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub id: Uuid,
    pub status: JobStatus,
    pub spec: JobSpec,
    pub priority: i32,
    pub attempt: i32,
    pub max_attempts: i32,
    pub worker: Option<String>,
    pub cancel_requested: bool,
    pub progress_step: i64,
    pub progress_total: i64,
    pub last_seq: i64,
    pub error: Option<String>,
    pub timings: Option<serde_json::Value>,
    pub run_at: i64,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

/// A claimed job and the token that fences every write about it.
#[derive(Debug, Clone)]
pub struct Lease {
    pub job: Job,
    pub token: Uuid,
}

/// An uploaded image, about to be recorded with the job's completion.
#[derive(Debug, Clone)]
pub struct NewImage {
    pub id: Uuid,
    pub index: i64,
    pub object_key: String,
    pub url: String,
    pub seed: i64,
    pub width: i64,
    pub height: i64,
    pub bytes: i64,
}

/// An image row.
#[derive(Debug, Clone, Serialize)]
pub struct ImageRecord {
    pub id: Uuid,
    pub job_id: Uuid,
    pub index: i64,
    pub object_key: String,
    pub seed: i64,
    pub width: i64,
    pub height: i64,
    pub bytes: i64,
    pub created_at: i64,
}

/// A page of `GET /v1/jobs`: newest first, after an optional cursor.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub status: Option<JobStatus>,
    /// Only jobs older than this one.
    pub before: Option<Uuid>,
    pub limit: i64,
}

/// A worker process as operators see it (`GET /v1/workers`).
#[derive(Debug, Clone, Serialize)]
pub struct WorkerInfo {
    pub name: String,
    pub host: String,
    pub device: String,
    /// The model it has loaded, if any.
    pub model: Option<String>,
    pub current_job: Option<Uuid>,
    pub started_at: i64,
    pub last_seen_at: i64,
}
