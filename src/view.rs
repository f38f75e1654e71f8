//! The JSON shapes of jobs and images: what `GET /v1/jobs/{id}` answers and what a
//! webhook delivery posts are one function, so the two cannot drift apart. Built from
//! queue types only, so that both the API and the deliverer (`maintenance`) can use it.

use serde::Serialize;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::queue::{Delivery, ImageRecord, Job, JobStatus, JobStore, Scope, StoreError};

/// Milliseconds since the epoch as RFC 3339.
pub fn timestamp(ms: i64) -> Value {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| json!(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)))
        .unwrap_or(Value::Null)
}

/// An image as listings show it.
#[derive(Serialize, utoipa::ToSchema)]
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
    #[schema(value_type = String, format = DateTime)]
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

/// The links every job view carries.
pub fn job_links(id: Uuid) -> Value {
    json!({
        "self": format!("/v1/jobs/{id}"),
        "events": format!("/v1/jobs/{id}/events"),
        "images": format!("/v1/jobs/{id}/images"),
        "cancel": format!("/v1/jobs/{id}/cancel"),
    })
}

/// Everything a client wants to know about a job in one object (without its webhook
/// deliveries, which [`with_deliveries`] adds for the API): this is also the body of
/// every webhook delivery.
pub async fn job_view(store: &dyn JobStore, job: &Job, scope: &Scope) -> Result<Value, StoreError> {
    let position = if job.status == JobStatus::Queued {
        store.queue_position(job.id).await?
    } else {
        None
    };
    let images: Vec<ImageView> = if job.status == JobStatus::Succeeded {
        store
            .job_images(job.id, scope)
            .await?
            .iter()
            .map(ImageView::from)
            .collect()
    } else {
        Vec::new()
    };
    // Only a running job with previews on has one; it is live-only and cleared at the end.
    let preview = if job.status == JobStatus::Running && job.spec.previews {
        store.latest_preview(job.id, scope).await?
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
        "links": job_links(id),
    }))
}

/// One webhook delivery as the job view lists it.
pub fn delivery_view(d: &Delivery) -> Value {
    json!({
        "id": d.message_id(),
        "event": d.event,
        "status": d.status,
        "attempts": d.attempts,
        "last_error": d.last_error,
        "response_status": d.response_status,
        "created_at": timestamp(d.created_at),
        "next_attempt_at": (d.status == crate::queue::DeliveryStatus::Pending)
            .then(|| timestamp(d.next_attempt_at)),
        "delivered_at": d.delivered_at.map(timestamp),
    })
}

/// `view` with the job's webhook deliveries added as `webhooks` (an empty list for a job
/// without a webhook).
pub async fn with_deliveries(
    store: &dyn JobStore,
    job: &Job,
    mut view: Value,
) -> Result<Value, StoreError> {
    let deliveries = if job.spec.webhook_url.is_some() {
        store.job_deliveries(job.id).await?
    } else {
        Vec::new()
    };
    view["webhooks"] = Value::Array(deliveries.iter().map(delivery_view).collect());
    Ok(view)
}
