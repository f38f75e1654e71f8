//! `/v1/jobs` handlers and the JSON view of a job.

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use super::auth::Caller;
use super::submit::{submit_job, Submitted};
use super::validate::{parse_body, InputFiles, MAX_BODY_BYTES};
use super::{ApiError, AppState};
use crate::queue::{CancelOutcome, Cursor, ImageRecord, Job, JobStatus, ListQuery};

/// Milliseconds since the epoch as RFC 3339.
pub(crate) fn timestamp(ms: i64) -> Value {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| json!(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)))
        .unwrap_or(Value::Null)
}

/// Parses a path id; anything that is not a UUID cannot name a job.
pub(crate) fn parse_id(raw: &str, what: &'static str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::NotFound(what))
}

#[derive(Serialize)]
pub struct ImageView {
    pub id: Uuid,
    pub job_id: Uuid,
    pub index: i64,
    pub url: String,
    pub thumbnail_url: String,
    pub model: String,
    pub prompt: String,
    pub seed: i64,
    pub width: i64,
    pub height: i64,
    pub bytes: i64,
    pub created_at: Value,
}

impl From<&ImageRecord> for ImageView {
    fn from(r: &ImageRecord) -> Self {
        Self {
            id: r.id,
            job_id: r.job_id,
            index: r.index,
            url: format!("/v1/images/{}", r.id),
            thumbnail_url: format!("/v1/images/{}/thumbnail", r.id),
            model: r.model.clone(),
            prompt: r.prompt.clone(),
            seed: r.seed,
            width: r.width,
            height: r.height,
            bytes: r.bytes,
            created_at: timestamp(r.created_at),
        }
    }
}

/// Everything a client wants to know about a job in one object.
pub async fn job_view(state: &AppState, caller: &Caller, job: &Job) -> Result<Value, ApiError> {
    let position = if job.status == JobStatus::Queued {
        state.queue.store.queue_position(job.id).await?
    } else {
        None
    };
    let images: Vec<ImageView> = if job.status == JobStatus::Succeeded {
        state
            .queue
            .store
            .job_images(job.id, &caller.scope())
            .await?
            .iter()
            .map(ImageView::from)
            .collect()
    } else {
        Vec::new()
    };
    // Only a running job with previews on has one; it is live-only and cleared at the end.
    let preview = if job.status == JobStatus::Running && job.spec.previews {
        state
            .queue
            .store
            .latest_preview(job.id, &caller.scope())
            .await?
    } else {
        None
    };
    let id = job.id;
    Ok(json!({
        "id": id,
        "owner": job.owner,
        "status": job.status,
        "model": job.spec.model,
        "request": job.spec,
        "priority": job.priority,
        "progress": {"step": job.progress_step, "total": job.progress_total},
        "queue_position": position,
        "attempts": job.attempt,
        "max_attempts": job.max_attempts,
        "cancel_requested": job.cancel_requested,
        "worker": job.worker,
        "error": job.error,
        "timings": job.timings,
        "images": images,
        "preview": preview,
        "created_at": timestamp(job.created_at),
        "started_at": job.started_at.map(timestamp),
        "finished_at": job.finished_at.map(timestamp),
        "links": links(id),
    }))
}

fn links(id: Uuid) -> Value {
    json!({
        "self": format!("/v1/jobs/{id}"),
        "events": format!("/v1/jobs/{id}/events"),
        "images": format!("/v1/jobs/{id}/images"),
        "cancel": format!("/v1/jobs/{id}/cancel"),
    })
}

/// `POST /v1/jobs`: a JSON body, or multipart with the start image and mask as files.
/// 202 for a new job; 200 with the same job when an `Idempotency-Key` is replayed.
pub async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    request: Request,
) -> Result<impl IntoResponse, ApiError> {
    let idempotency_key = idempotency_key(request.headers())?;
    let is_multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("multipart/form-data"));
    let (body, files) = if is_multipart {
        let multipart = Multipart::from_request(request, &state)
            .await
            .map_err(|e| ApiError::MalformedJson(e.body_text()))?;
        super::multipart::read_submission(multipart).await?
    } else {
        let bytes = Bytes::from_request(request, &state)
            .await
            .map_err(|e| match e.status() {
                StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(MAX_BODY_BYTES),
                _ => ApiError::MalformedJson(e.body_text()),
            })?;
        (parse_body(&bytes)?, InputFiles::default())
    };
    let Submitted { job, existing } =
        submit_job(&state, &caller, body, files, idempotency_key.as_deref()).await?;
    let status = if existing {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let body = json!({"id": job.id, "status": job.status, "links": links(job.id)});
    Ok((
        status,
        [("location", format!("/v1/jobs/{}", job.id))],
        Json(body),
    ))
}

/// The `Idempotency-Key` header, if any.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    headers
        .get("idempotency-key")
        .map(|v| {
            v.to_str().map(|s| s.trim().to_string()).map_err(|_| {
                ApiError::invalid("Idempotency-Key", "Idempotency-Key must be visible ASCII")
            })
        })
        .transpose()
}

/// Reads a job the caller may see, or 404.
pub async fn owned_job(state: &AppState, caller: &Caller, raw_id: &str) -> Result<Job, ApiError> {
    let id = parse_id(raw_id, "job")?;
    state
        .queue
        .store
        .get(id, &caller.scope())
        .await?
        .ok_or(ApiError::NotFound("job"))
}

/// `GET /v1/jobs/{id}`
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let job = owned_job(&state, &caller, &id).await?;
    Ok(Json(job_view(&state, &caller, &job).await?))
}

/// `DELETE /v1/jobs/{id}`: a finished job and everything it stored; 409 while it runs.
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id, "job")?;
    let (job, images) = state
        .queue
        .store
        .delete_job(id, &caller.scope())
        .await?
        .ok_or(ApiError::NotFound("job"))?;
    // Rows first, then objects: a crash in between leaves orphans for the collector,
    // never a row without its object.
    for image in &images {
        super::images::delete_objects(&state, image).await;
    }
    for key in [&job.spec.init_image, &job.spec.mask_image]
        .into_iter()
        .flatten()
    {
        if let Err(e) = state.images.delete(key).await {
            tracing::warn!(job_id = %job.id, %key, error = %e, "input not deleted");
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub struct ListParams {
    status: Option<String>,
    cursor: Option<String>,
    limit: Option<i64>,
}

/// `GET /v1/jobs?status=&cursor=&limit=`: newest first; `next_cursor` fetches the next page.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::Invalid {
        field: None,
        message: e.body_text(),
    })?;
    let status = match params.status.as_deref() {
        None => None,
        Some(s) => Some(
            JobStatus::parse(s)
                .ok_or_else(|| ApiError::invalid("status", format!("unknown status '{s}'")))?,
        ),
    };
    let before = match params.cursor.as_deref() {
        None => None,
        Some(c) => Some(
            Cursor::decode(c).ok_or_else(|| ApiError::invalid("cursor", "cursor is not valid"))?,
        ),
    };
    let limit = params.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            "limit must be between 1 and 100",
        ));
    }
    let jobs = state
        .queue
        .store
        .list(&ListQuery {
            scope: caller.scope(),
            status,
            before,
            limit,
        })
        .await?;
    let next_cursor = (jobs.len() as i64 == limit)
        .then(|| {
            jobs.last().map(|j| {
                Cursor {
                    created_at: j.created_at,
                    id: j.id,
                }
                .encode()
            })
        })
        .flatten();
    let mut views = Vec::with_capacity(jobs.len());
    for job in &jobs {
        views.push(job_view(&state, &caller, job).await?);
    }
    Ok(Json(json!({"jobs": views, "next_cursor": next_cursor})))
}

/// `POST /v1/jobs/{id}/cancel`: 200 when a queued job is canceled, 202 when a running job
/// has been asked to stop, 409 when the job has already finished.
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id, "job")?;
    let outcome = state.queue.cancel(id, &caller.scope()).await?;
    let job = state
        .queue
        .store
        .get(id, &caller.scope())
        .await?
        .ok_or(ApiError::NotFound("job"))?;
    let status = match outcome {
        CancelOutcome::Canceled(_) => StatusCode::OK,
        CancelOutcome::Requested => StatusCode::ACCEPTED,
    };
    Ok((status, Json(job_view(&state, &caller, &job).await?)))
}

/// `GET /v1/jobs/{id}/images`
pub async fn images(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let job = owned_job(&state, &caller, &id).await?;
    let images: Vec<ImageView> = state
        .queue
        .store
        .job_images(job.id, &caller.scope())
        .await?
        .iter()
        .map(ImageView::from)
        .collect();
    Ok(Json(json!({ "images": images })))
}
