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
mod partial_images;
mod wait;

pub(crate) use a1111::A1111Request;
pub(crate) use openai::GenerateParams;

use axum::http::Method as M;
use axum::routing::{get, post};

use super::{Access::Key, ApiError, AppState, Routes};
use crate::queue::{ImageRecord, Job, Scope};

/// Adds the dialects' routes to the route table. Every one needs a key when auth is on
/// (each dialect checks it itself, to answer in its own shape).
pub(super) fn routes(r: Routes) -> Routes {
    use a1111_routes as a;
    let r = r
        .add(M::POST, "/sdapi/v1/txt2img", Key, post(a::txt2img))
        .add(M::POST, "/sdapi/v1/img2img", Key, post(a::img2img))
        .add(M::GET, "/sdapi/v1/progress", Key, get(a::progress))
        .add(M::POST, "/sdapi/v1/interrupt", Key, post(a::interrupt))
        .add(M::POST, "/sdapi/v1/skip", Key, post(a::interrupt))
        .add(M::GET, "/sdapi/v1/options", Key, get(a::get_options))
        .add(M::POST, "/sdapi/v1/options", Key, post(a::set_options))
        .add(M::GET, "/sdapi/v1/sd-models", Key, get(a::sd_models))
        .add(M::GET, "/sdapi/v1/samplers", Key, get(a::samplers))
        .add(M::GET, "/sdapi/v1/schedulers", Key, get(a::schedulers))
        .add(M::GET, "/sdapi/v1/scripts", Key, get(a::scripts))
        .add(M::GET, "/sdapi/v1/loras", Key, get(a::loras))
        .add(M::GET, "/sdapi/v1/embeddings", Key, get(a::embeddings))
        .add(M::GET, "/sdapi/v1/sd-vae", Key, get(a::sd_vae))
        .add(
            M::POST,
            "/sdapi/v1/refresh-checkpoints",
            Key,
            post(a::nothing),
        )
        .add(M::POST, "/sdapi/v1/png-info", Key, post(a::png_info));
    // Lists sdq has nothing in.
    let empty = [
        "/sdapi/v1/upscalers",
        "/sdapi/v1/latent-upscale-modes",
        "/sdapi/v1/hypernetworks",
        "/sdapi/v1/face-restorers",
        "/sdapi/v1/realesrgan-models",
        "/sdapi/v1/prompt-styles",
    ];
    empty
        .into_iter()
        .fold(r, |r, path| r.add(M::GET, path, Key, get(a::empty_list)))
        .add(
            M::POST,
            "/v1/images/generations",
            Key,
            post(openai_routes::generations),
        )
        .add(M::POST, "/v1/images/edits", Key, post(openai_routes::edits))
}

/// A finished job's images with their PNG bytes, in order.
async fn job_pngs(
    state: &AppState,
    job: &Job,
    scope: &Scope,
) -> Result<Vec<(ImageRecord, Vec<u8>)>, ApiError> {
    let records = state.queue.store.job_images(job.id, scope).await?;
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
