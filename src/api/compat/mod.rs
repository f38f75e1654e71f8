//! Compatibility dialects: AUTOMATIC1111's `/sdapi/v1/*` and OpenAI's Images API.
//!
//! Each dialect is a translator (a pure mapping from its request body to our
//! [`SubmitRequest`](crate::api::SubmitRequest) and from our job to its response) plus thin
//! routes that call the same submit / get / cancel functions as `/v1`. There is no second
//! pipeline, no second queue and one validation: a dialect's job is an ordinary job,
//! in the same gallery, owned by the same caller, retried and rescued like any other.

mod a1111;
mod a1111_routes;
mod image_ops;
mod openai;
mod openai_routes;
mod wait;

use axum::routing::{get, post};
use axum::Router;

use super::{ApiError, AppState};
use crate::queue::{ImageRecord, Job};

/// The owner of everything while API keys are off.
const LOCAL_OWNER: &str = "local";

/// The dialects' routes, to merge into the main router.
pub fn router() -> Router<AppState> {
    let sdapi = Router::new()
        .route("/txt2img", post(a1111_routes::txt2img))
        .route("/img2img", post(a1111_routes::img2img))
        .route("/progress", get(a1111_routes::progress))
        .route("/interrupt", post(a1111_routes::interrupt))
        .route("/skip", post(a1111_routes::interrupt))
        .route(
            "/options",
            get(a1111_routes::get_options).post(a1111_routes::set_options),
        )
        .route("/sd-models", get(a1111_routes::sd_models))
        .route("/samplers", get(a1111_routes::samplers))
        .route("/schedulers", get(a1111_routes::schedulers))
        .route("/upscalers", get(a1111_routes::empty_list))
        .route("/latent-upscale-modes", get(a1111_routes::empty_list))
        .route("/sd-vae", get(a1111_routes::empty_list))
        .route("/hypernetworks", get(a1111_routes::empty_list))
        .route("/face-restorers", get(a1111_routes::empty_list))
        .route("/realesrgan-models", get(a1111_routes::empty_list))
        .route("/prompt-styles", get(a1111_routes::empty_list))
        .route("/scripts", get(a1111_routes::scripts))
        .route("/loras", get(a1111_routes::loras))
        .route("/embeddings", get(a1111_routes::embeddings))
        .route("/refresh-checkpoints", post(a1111_routes::nothing))
        .route("/png-info", post(a1111_routes::png_info))
        .fallback(a1111_routes::not_found);
    Router::new()
        .nest("/sdapi/v1", sdapi)
        .route("/v1/images/generations", post(openai_routes::generations))
        .route("/v1/images/edits", post(openai_routes::edits))
}

/// A finished job's images with their PNG bytes, in order.
async fn job_pngs(state: &AppState, job: &Job) -> Result<Vec<(ImageRecord, Vec<u8>)>, ApiError> {
    let records = state.queue.store.job_images(job.id).await?;
    let mut out = Vec::with_capacity(records.len());
    for record in records {
        let bytes = state.images.get(&record.object_key).await?;
        out.push((record, bytes.to_vec()));
    }
    Ok(out)
}

/// A request body, or the same 413 / 400 as `/v1` gives.
fn body_bytes(
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<axum::body::Bytes, ApiError> {
    body.map_err(|e| match e.status() {
        axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::PayloadTooLarge(super::validate::MAX_BODY_BYTES)
        }
        _ => ApiError::MalformedJson(e.body_text()),
    })
}

/// Milliseconds since the epoch, now.
fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
