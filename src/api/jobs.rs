//! `/v1/jobs` handlers and the JSON view of a job.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use super::validate::{parse_body, SubmitRequest, MAX_BODY_BYTES};
use super::{ApiError, AppState};
use crate::queue::{CancelOutcome, ImageRecord, Job, JobStatus, ListQuery, NewJob};

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
    pub index: i64,
    pub url: String,
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
            index: r.index,
            url: format!("/v1/images/{}", r.id),
            seed: r.seed,
            width: r.width,
            height: r.height,
            bytes: r.bytes,
            created_at: timestamp(r.created_at),
        }
    }
}

/// Everything a client wants to know about a job in one object.
pub async fn job_view(state: &AppState, job: &Job) -> Result<Value, ApiError> {
    let position = if job.status == JobStatus::Queued {
        state.queue.store.queue_position(job.id).await?
    } else {
        None
    };
    let images: Vec<ImageView> = if job.status == JobStatus::Succeeded {
        state
            .queue
            .store
            .job_images(job.id)
            .await?
            .iter()
            .map(ImageView::from)
            .collect()
    } else {
        Vec::new()
    };
    let id = job.id;
    Ok(json!({
        "id": id,
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

/// `POST /v1/jobs`
pub async fn submit(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(MAX_BODY_BYTES),
        _ => ApiError::MalformedJson(e.body_text()),
    })?;
    let job = submit_job(&state, parse_body(&body)?).await?;
    let body = json!({"id": job.id, "status": job.status, "links": links(job.id)});
    Ok((
        StatusCode::ACCEPTED,
        [("location", format!("/v1/jobs/{}", job.id))],
        Json(body),
    ))
}

/// Validates a request, stores its input images and queues the job: the one submit path
/// behind `/v1/jobs` and the compatibility dialects.
pub(crate) async fn submit_job(state: &AppState, request: SubmitRequest) -> Result<Job, ApiError> {
    let submission = request.into_submission(&state.settings)?;
    let mut spec = submission.spec;
    // Inputs are stored before the job exists, so a worker never sees a job whose inputs
    // are missing; if queuing then fails, they are removed again.
    let inputs_prefix = format!("inputs/{}", uuid::Uuid::new_v4());
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
        })
        .await;
    let job = match queued {
        Ok(job) => job,
        Err(e) => {
            for key in &stored {
                let _ = state.images.delete(key).await;
            }
            return Err(e.into());
        }
    };
    tracing::info!(job_id = %job.id, model = %job.spec.model, "job submitted");
    Ok(job)
}

/// The job with this id, or 404.
pub(crate) async fn find_job(state: &AppState, id: Uuid) -> Result<Job, ApiError> {
    state
        .queue
        .store
        .get(id)
        .await?
        .ok_or(ApiError::NotFound("job"))
}

/// `GET /v1/jobs/{id}`
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let job = find_job(&state, parse_id(&id, "job")?).await?;
    Ok(Json(job_view(&state, &job).await?))
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
            Uuid::parse_str(c).map_err(|_| ApiError::invalid("cursor", "cursor is not valid"))?,
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
            status,
            before,
            limit,
        })
        .await?;
    let next_cursor = (jobs.len() as i64 == limit)
        .then(|| jobs.last().map(|j| j.id))
        .flatten();
    let mut views = Vec::with_capacity(jobs.len());
    for job in &jobs {
        views.push(job_view(&state, job).await?);
    }
    Ok(Json(json!({"jobs": views, "next_cursor": next_cursor})))
}

/// `POST /v1/jobs/{id}/cancel`: 200 when a queued job is canceled, 202 when a running job
/// has been asked to stop, 409 when the job has already finished.
pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id, "job")?;
    let outcome = state.queue.cancel(id).await?;
    let job = find_job(&state, id).await?;
    let status = match outcome {
        CancelOutcome::Canceled(_) => StatusCode::OK,
        CancelOutcome::Requested => StatusCode::ACCEPTED,
    };
    Ok((status, Json(job_view(&state, &job).await?)))
}

/// `GET /v1/jobs/{id}/images`
pub async fn images(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id, "job")?;
    state
        .queue
        .store
        .get(id)
        .await?
        .ok_or(ApiError::NotFound("job"))?;
    let images: Vec<ImageView> = state
        .queue
        .store
        .job_images(id)
        .await?
        .iter()
        .map(ImageView::from)
        .collect();
    Ok(Json(json!({ "images": images })))
}
