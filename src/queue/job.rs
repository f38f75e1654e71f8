//! The job model: what a user asked for and where the job stands.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::JobStatus;

/// A validated generation request, stored with the job as JSON.
///
/// Plain values only: the queue does not know the inference types; the worker converts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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
    // Models directory extras (issue 16): LoRAs, VAE override, clip skip.
    /// LoRAs to apply, from the body's `loras` and the prompt's `<lora:…>` tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loras: Vec<LoraRef>,
    /// A VAE of the models directory to decode with instead of the model's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vae: Option<String>,
    /// A1111's clip skip (1 = last layer, 2 = penultimate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_skip: Option<u32>,
    /// Where to post the job as it changes (vetted by the SSRF guard).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// What to post about; empty without `webhook_url`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhook_events: Vec<super::WebhookEvent>,
    /// Publish `preview` events while the job runs (live-only; see `events.rs`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub previews: bool,
    /// With `previews`: one every this many steps (`None`: [`default_preview_every`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_every: Option<u32>,
    /// VAE tiling: `off`, `on` or `auto` (absent: `auto`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vae_tiling: Option<String>,
}

/// The preview interval of a job of `steps` steps that did not choose one: about ten
/// previews in all, and every step for short jobs (`max(1, steps / 10)`).
pub fn default_preview_every(steps: u32) -> u32 {
    (steps / 10).max(1)
}

/// A LoRA of the models directory at a weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LoraRef {
    pub name: String,
    pub weight: f64,
}

impl JobSpec {
    /// Steps between previews (meaningful when `previews` is on).
    pub fn preview_every(&self) -> usize {
        self.preview_every
            .unwrap_or_else(|| default_preview_every(self.steps))
            .max(1) as usize
    }

    /// What a worker must hold besides the model to run this job without rebuilding
    /// layers: its LoRA set (sorted, so the order of a request does not matter) and VAE.
    /// Empty for a job that needs neither. Workers prefer jobs whose key matches theirs.
    pub fn adapters_key(&self) -> String {
        adapters_key(&self.loras, self.vae.as_deref())
    }

    /// What a job must share with others to run in one UNet batch with them (dynamic
    /// batching): the model and its LoRA set and VAE, the size, the scheduler and its
    /// step count, the guidance scale and clip skip. Prompts, seeds, image counts and
    /// previews may differ. `None` for img2img and inpainting, which always run alone.
    /// Stored in the `batch_key` column at enqueue.
    pub fn batch_key(&self) -> Option<String> {
        if self.init_image.is_some() || self.mask_image.is_some() {
            return None;
        }
        // `{:?}` of an f64 is its shortest exact form: 7.5 and 7.50000001 differ.
        Some(format!(
            "txt2img|{}|{}|{}x{}|{}|{}|{:?}|{}",
            self.model,
            self.adapters_key(),
            self.width,
            self.height,
            self.scheduler,
            self.steps,
            self.guidance_scale,
            self.clip_skip.unwrap_or(1),
        ))
    }

    /// The `webhook_events` bit mask the jobs table keeps (0 without a webhook).
    pub fn webhook_mask(&self) -> i64 {
        if self.webhook_url.is_some() {
            super::webhooks::events_mask(&self.webhook_events)
        } else {
            0
        }
    }
}

/// The key of [`JobSpec::adapters_key`] for a LoRA set and VAE.
pub fn adapters_key(loras: &[LoraRef], vae: Option<&str>) -> String {
    let mut parts: Vec<String> = loras
        .iter()
        .map(|l| format!("{}:{}", l.name, l.weight))
        .collect();
    parts.sort();
    if let Some(vae) = vae {
        parts.push(format!("vae={vae}"));
    }
    parts.join(",")
}

/// What `enqueue` needs.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub spec: JobSpec,
    pub priority: i32,
    pub max_attempts: i32,
    /// Who the job belongs to: a key id, or `keys::LOCAL_OWNER`.
    pub owner: String,
    /// Refuse the job if the owner already has this many queued or running.
    pub max_active: Option<i64>,
    /// Return the job an earlier submission with this key created instead of a new one.
    pub idempotency: Option<Idempotency>,
}

impl NewJob {
    /// A job of the local owner with no quota and no idempotency key.
    pub fn local(spec: JobSpec, priority: i32, max_attempts: i32) -> Self {
        Self {
            spec,
            priority,
            max_attempts,
            owner: super::keys::LOCAL_OWNER.to_string(),
            max_active: None,
            idempotency: None,
        }
    }
}

/// An `Idempotency-Key` and the fingerprint of the request it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    pub key: String,
    /// SHA-256 of the canonical request: the same key with another body is a conflict.
    pub fingerprint: String,
}

/// What `enqueue` did.
#[derive(Debug, Clone)]
pub enum Enqueued {
    /// A new job, and its `queued` event.
    New(Job, super::Event),
    /// The job an earlier request with the same idempotency key and body created.
    Existing(Job),
}

impl Enqueued {
    pub fn job(&self) -> &Job {
        match self {
            Enqueued::New(job, _) | Enqueued::Existing(job) => job,
        }
    }
}

/// A job row.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub id: Uuid,
    pub owner: String,
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

/// One job's completion in a batched `JobStore::complete_many`: what `complete` takes.
#[derive(Debug, Clone)]
pub struct Completion {
    pub id: Uuid,
    pub token: Uuid,
    pub images: Vec<NewImage>,
    pub timings: serde_json::Value,
}

/// An image row.
#[derive(Debug, Clone, Serialize)]
pub struct ImageRecord {
    pub id: Uuid,
    pub job_id: Uuid,
    pub owner: String,
    /// The job's model and prompt, copied so the gallery can filter and show them.
    pub model: String,
    pub prompt: String,
    pub index: i64,
    pub object_key: String,
    pub seed: i64,
    pub width: i64,
    pub height: i64,
    pub bytes: i64,
    pub created_at: i64,
}

/// A page of `GET /v1/jobs`: newest first, after an optional cursor.
#[derive(Debug, Clone)]
pub struct ListQuery {
    pub scope: super::Scope,
    pub status: Option<JobStatus>,
    /// Only jobs older than this cursor (the last job of the previous page).
    pub before: Option<Cursor>,
    pub limit: i64,
}

impl ListQuery {
    /// The newest `limit` jobs `scope` may see.
    pub fn newest(scope: super::Scope, limit: i64) -> Self {
        Self {
            scope,
            status: None,
            before: None,
            limit,
        }
    }
}

/// A position in a newest-first listing: the `(created_at, id)` of the last row seen.
/// It names a place, not a row, so it stays valid when that row is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: i64,
    pub id: Uuid,
}

impl Cursor {
    /// The opaque text form used in `next_cursor`.
    pub fn encode(&self) -> String {
        format!("{}_{}", self.created_at, self.id.simple())
    }

    pub fn decode(s: &str) -> Option<Self> {
        let (ms, id) = s.split_once('_')?;
        Some(Self {
            created_at: ms.parse().ok()?,
            id: Uuid::try_parse(id).ok()?,
        })
    }
}

/// A page of the gallery: newest first, filtered.
#[derive(Debug, Clone)]
pub struct ImageQuery {
    pub scope: super::Scope,
    pub job_id: Option<Uuid>,
    pub model: Option<String>,
    /// Only images created at or after this time (ms since the epoch).
    pub since: Option<i64>,
    pub before: Option<Cursor>,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn txt2img() -> JobSpec {
        JobSpec {
            prompt: "a cat".into(),
            model: "tiny".into(),
            width: 64,
            height: 64,
            steps: 4,
            guidance_scale: 7.5,
            seed: 1,
            scheduler: "euler".into(),
            num_images: 1,
            long_prompt: "chunk".into(),
            ..Default::default()
        }
    }

    #[test]
    fn batch_keys_ignore_what_each_job_keeps_and_separate_the_rest() {
        let base = txt2img();
        let key = base.batch_key().expect("txt2img batches");
        let own = JobSpec {
            prompt: "a dog".into(),
            negative_prompt: "blurry".into(),
            seed: 99,
            num_images: 2,
            previews: true,
            ..txt2img()
        };
        assert_eq!(own.batch_key().as_ref(), Some(&key));
        // Clip skip 1 is the default layer.
        let skip_one = JobSpec {
            clip_skip: Some(1),
            ..txt2img()
        };
        assert_eq!(skip_one.batch_key().as_ref(), Some(&key));
        let differing = [
            JobSpec {
                model: "other".into(),
                ..txt2img()
            },
            JobSpec {
                width: 128,
                ..txt2img()
            },
            JobSpec {
                height: 128,
                ..txt2img()
            },
            JobSpec {
                steps: 5,
                ..txt2img()
            },
            JobSpec {
                scheduler: "ddim".into(),
                ..txt2img()
            },
            JobSpec {
                guidance_scale: 7.0,
                ..txt2img()
            },
            JobSpec {
                clip_skip: Some(2),
                ..txt2img()
            },
            JobSpec {
                vae: Some("ft-mse".into()),
                ..txt2img()
            },
            JobSpec {
                loras: vec![LoraRef {
                    name: "film".into(),
                    weight: 0.5,
                }],
                ..txt2img()
            },
        ];
        for spec in differing {
            let other = spec.batch_key().expect("txt2img batches");
            assert_ne!(other, key, "{spec:?}");
        }
        let img2img = JobSpec {
            init_image: Some("inputs/x/init".into()),
            strength: Some(0.5),
            ..txt2img()
        };
        assert_eq!(img2img.batch_key(), None, "img2img runs alone");
    }
}
