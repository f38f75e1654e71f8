//! The one submit path: every way of asking for a job (`POST /v1/jobs` as JSON or
//! multipart, and the A1111 / OpenAI dialects) ends here, so validation, quotas,
//! idempotency and input storage happen once.
//!
//! Steps: resolve gallery references (`from_image`, `init_image_id`, `mask_image_id`) for
//! the caller's scope; fingerprint the request for its idempotency key; validate; store the
//! inputs; enqueue (the store checks the quota and the idempotency key in one
//! transaction); remove the stored inputs again if nothing new was queued.

use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::auth::{Caller, USER_MAX_PRIORITY};
use super::validate::{InputFiles, SubmitRequest};
use super::{ApiError, AppState};
use crate::queue::{Enqueued, Idempotency, Job, JobSpec, NewJob};

/// Submissions whose images are being decoded at once (each may hold ~100 MB briefly).
static DECODES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// Longest `Idempotency-Key` accepted.
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// What a submission led to.
#[derive(Debug)]
pub struct Submitted {
    pub job: Job,
    /// True when an earlier request with the same idempotency key made this job.
    pub existing: bool,
}

/// Submits `request` for `caller`: the function every submit route calls.
pub async fn submit_job(
    state: &AppState,
    caller: &Caller,
    request: SubmitRequest,
    mut files: InputFiles,
    idempotency_key: Option<&str>,
) -> Result<Submitted, ApiError> {
    let request = resolve_references(state, caller, request, &mut files).await?;
    let idempotency = idempotency_key
        .map(|key| {
            if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
                return Err(ApiError::invalid(
                    "Idempotency-Key",
                    format!("Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters"),
                ));
            }
            Ok(Idempotency {
                key: key.to_string(),
                fingerprint: fingerprint(&request, &files),
            })
        })
        .transpose()?;
    // Validation decodes the start image and mask: off the async threads, and only a few
    // at a time, so that large images cannot take the server's memory or its event loop.
    // A text-only request has nothing to decode and is checked in place (a hop to the
    // blocking pool and a turn at the decode permits cost more than the checks).
    let has_images = request.init_image.is_some()
        || request.mask_image.is_some()
        || files.init.is_some()
        || files.mask.is_some();
    let submission = if has_images {
        let _permit = DECODES
            .acquire()
            .await
            .map_err(|_| ApiError::Unavailable("shutting down".into()))?;
        let settings = state.settings.clone();
        tokio::task::spawn_blocking(move || request.into_submission(&settings, files))
            .await
            .map_err(|e| ApiError::Internal(format!("validation crashed: {e}")))??
    } else {
        request.into_submission(&state.settings, files)?
    };
    if submission.priority > USER_MAX_PRIORITY && !caller.is_admin() {
        return Err(ApiError::Forbidden(format!(
            "priority above {USER_MAX_PRIORITY} needs an admin key"
        )));
    }
    if submission.spec.webhook_url.is_some() && caller.key().is_none() {
        // Deliveries are signed with the key's whsec_ secret; without a key there is none.
        return Err(ApiError::invalid(
            "webhook_url",
            "webhook_url needs an API key: deliveries are signed with the key's whsec_ secret              (create one with `sdq keys create NAME` and send it as `Authorization: Bearer`,              also while auth is off)",
        ));
    }
    let mut spec = submission.spec;
    // Inputs are stored before the job exists, so a worker never sees a job whose inputs
    // are missing; if nothing new is queued, they are removed again.
    let inputs_prefix = format!("inputs/{}", Uuid::new_v4());
    let mut stored = Vec::new();
    for (name, bytes) in [
        ("init", submission.init_image),
        ("mask", submission.mask_image),
    ] {
        let Some(bytes) = bytes else { continue };
        let key = format!("{inputs_prefix}/{name}");
        state.images.put(&key, bytes.into()).await?;
        stored.push(key.clone());
        match name {
            "init" => spec.init_image = Some(key),
            _ => spec.mask_image = Some(key),
        }
    }
    let queued = state
        .queue
        .submit(NewJob {
            spec,
            priority: submission.priority,
            max_attempts: state.settings.max_attempts,
            owner: caller.owner(),
            max_active: caller.key().and_then(|k| k.max_queued),
            idempotency,
        })
        .await;
    let remove_inputs = !matches!(queued, Ok(Enqueued::New(..)));
    if remove_inputs {
        for key in &stored {
            let _ = state.images.delete(key).await;
        }
    }
    match queued? {
        Enqueued::New(job, _) => {
            tracing::info!(job_id = %job.id, model = %job.spec.model, owner = %job.owner, "job submitted");
            Ok(Submitted {
                job,
                existing: false,
            })
        }
        Enqueued::Existing(job) => Ok(Submitted {
            job,
            existing: true,
        }),
    }
}

/// A gallery image id from a request field; an id the caller cannot see is "no such image".
async fn gallery_image(
    state: &AppState,
    caller: &Caller,
    field: &str,
    raw: &str,
) -> Result<crate::queue::ImageRecord, ApiError> {
    let missing = || ApiError::invalid(field, format!("{field}: no image with id '{raw}'"));
    let id = Uuid::parse_str(raw.trim()).map_err(|_| missing())?;
    state
        .queue
        .store
        .image(id, &caller.scope())
        .await?
        .ok_or_else(missing)
}

/// Replaces `from_image`, `init_image_id` and `mask_image_id` with what they name.
async fn resolve_references(
    state: &AppState,
    caller: &Caller,
    mut request: SubmitRequest,
    files: &mut InputFiles,
) -> Result<SubmitRequest, ApiError> {
    if let Some(raw) = request.from_image.take() {
        let image = gallery_image(state, caller, "from_image", &raw).await?;
        let job = state
            .queue
            .store
            .get(image.job_id, &caller.scope())
            .await?
            .ok_or_else(|| ApiError::invalid("from_image", "the image's job no longer exists"))?;
        let recipe = recipe_of(&job.spec, image.seed);
        // The recipe's own start image and mask come along unless the request brings its own.
        let brings_init =
            request.init_image.is_some() || request.init_image_id.is_some() || files.init.is_some();
        if !brings_init {
            if let Some(key) = &job.spec.init_image {
                files.init = Some(state.images.get(key).await?.to_vec());
            }
            let brings_mask = request.mask_image.is_some()
                || request.mask_image_id.is_some()
                || files.mask.is_some();
            if !brings_mask {
                if let Some(key) = &job.spec.mask_image {
                    files.mask = Some(state.images.get(key).await?.to_vec());
                }
            }
        }
        request = overlay(recipe, request)?;
    }
    for (field, id, slot) in [
        (
            "init_image_id",
            request.init_image_id.take(),
            &mut files.init,
        ),
        (
            "mask_image_id",
            request.mask_image_id.take(),
            &mut files.mask,
        ),
    ] {
        let Some(raw) = id else { continue };
        if slot.is_some() {
            return Err(ApiError::invalid(
                field,
                format!("{field} was given besides another start image or mask"),
            ));
        }
        let image = gallery_image(state, caller, field, &raw).await?;
        *slot = Some(state.images.get(&image.object_key).await?.to_vec());
    }
    Ok(request)
}

/// The request that reproduces image `seed` of a job.
pub fn recipe_of(spec: &JobSpec, seed: i64) -> SubmitRequest {
    SubmitRequest {
        prompt: Some(spec.prompt.clone()),
        negative_prompt: Some(spec.negative_prompt.clone()),
        model: Some(spec.model.clone()),
        width: Some(spec.width),
        height: Some(spec.height),
        steps: Some(spec.steps),
        guidance_scale: Some(spec.guidance_scale),
        seed: Some(seed as u64),
        scheduler: Some(spec.scheduler.clone()),
        num_images: Some(1),
        long_prompt: Some(spec.long_prompt.clone()),
        strength: spec.init_image.as_ref().and(spec.strength),
        vae_tiling: spec.vae_tiling.clone(),
        ..Default::default()
    }
}

/// `base` with every field `over` sets replacing it.
fn overlay(base: SubmitRequest, over: SubmitRequest) -> Result<SubmitRequest, ApiError> {
    let internal = |e: serde_json::Error| ApiError::Internal(e.to_string());
    let mut merged = serde_json::to_value(base).map_err(internal)?;
    let over = serde_json::to_value(over).map_err(internal)?;
    if let (Value::Object(merged), Value::Object(over)) = (&mut merged, over) {
        for (k, v) in over {
            if !v.is_null() {
                merged.insert(k, v);
            }
        }
    }
    serde_json::from_value(merged).map_err(internal)
}

/// SHA-256 over the request as resolved and its input bytes: what "the same body" means for
/// an idempotency key, whatever encoding (JSON, multipart, gallery ids) carried it.
fn fingerprint(request: &SubmitRequest, files: &InputFiles) -> String {
    let mut hasher = Sha256::new();
    hasher.update(serde_json::to_vec(request).unwrap_or_default());
    for file in [&files.init, &files.mask] {
        match file {
            Some(bytes) => {
                hasher.update([1u8]);
                hasher.update(Sha256::digest(bytes));
            }
            None => hasher.update([0u8]),
        }
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_keeps_the_recipe_where_the_request_is_silent() {
        let spec = JobSpec {
            prompt: "a cat".into(),
            model: "tiny".into(),
            width: 64,
            height: 64,
            steps: 4,
            seed: 1,
            num_images: 2,
            scheduler: "ddim".into(),
            long_prompt: "chunk".into(),
            ..Default::default()
        };
        let merged = overlay(
            recipe_of(&spec, 9),
            SubmitRequest {
                steps: Some(6),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(merged.prompt.as_deref(), Some("a cat"));
        assert_eq!(merged.steps, Some(6));
        assert_eq!(merged.seed, Some(9));
        assert_eq!(merged.num_images, Some(1));
        assert_eq!(merged.scheduler.as_deref(), Some("ddim"));
    }

    #[test]
    fn fingerprints_differ_with_body_or_files() {
        let a = SubmitRequest {
            prompt: Some("a".into()),
            ..Default::default()
        };
        let b = SubmitRequest {
            prompt: Some("b".into()),
            ..Default::default()
        };
        let none = InputFiles::default();
        let file = InputFiles {
            init: Some(vec![1, 2, 3]),
            mask: None,
        };
        assert_eq!(fingerprint(&a, &none), fingerprint(&a.clone(), &none));
        assert_ne!(fingerprint(&a, &none), fingerprint(&b, &none));
        assert_ne!(fingerprint(&a, &none), fingerprint(&a, &file));
    }
}
