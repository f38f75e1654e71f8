//! The HTTP API: axum routes, errors, validation, SSE.
//!
//! Handlers are thin: parse, validate, call the queue, map the result. The router is built
//! by [`router`] so tests can call it in-process; [`serve`] binds it to a socket.

mod error;
mod events;
mod health;
mod images;
mod jobs;
mod server;
mod validate;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;

pub use error::ApiError;
pub use events::parse_last_event_id;
pub use server::{serve, Timeouts};
pub use validate::{parse_body, Limits, SubmitRequest};

use crate::queue::Queue;
use crate::storage::ImageStore;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub queue: Queue,
    pub images: ImageStore,
    pub settings: Arc<ApiSettings>,
}

/// Server-side choices that shape requests.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// The model a request without `model` gets.
    pub default_model: String,
    /// Model ids a request may name (the default model is always allowed).
    pub models: Vec<String>,
    pub limits: Limits,
    /// Attempts a job gets before it fails for good.
    pub max_attempts: i32,
}

/// All routes, with their state.
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/jobs", post(jobs::submit).get(jobs::list))
        .route("/jobs/{id}", get(jobs::get))
        .route("/jobs/{id}/cancel", post(jobs::cancel))
        .route("/jobs/{id}/events", get(events::stream))
        .route("/jobs/{id}/images", get(jobs::images))
        .route("/images/{id}", get(images::get))
        .route("/models", get(health::models))
        .route("/workers", get(health::workers))
        .route("/health", get(health::health))
        .route("/ready", get(health::ready));
    Router::new()
        .nest("/v1", v1)
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .fallback(error::not_found)
        .layer(axum::extract::DefaultBodyLimit::max(
            validate::MAX_BODY_BYTES,
        ))
        .with_state(state)
}
