//! Liveness, readiness and the model catalogue.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use super::AppState;
use crate::inference::hub;

/// `GET /health`: the process is up.
pub async fn health() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// `GET /ready`: every dependency answers; 503 naming the ones that do not.
pub async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let database = match state.queue.store.ping().await {
        Ok(()) => json!({"status": "ok"}),
        Err(e) => json!({"status": "error", "error": e.to_string()}),
    };
    let object_store = match state.images.list("health-check-none").await {
        Ok(_) => json!({"status": "ok", "location": state.images.description()}),
        Err(e) => json!({"status": "error", "error": e.to_string()}),
    };
    let ok = database["status"] == "ok" && object_store["status"] == "ok";
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "status": if ok { "ready" } else { "unavailable" },
            "checks": {"database": database, "object_store": object_store},
        })),
    )
}

/// `GET /v1/models`: what a request may name in `model`, with each model's defaults.
pub async fn models(State(state): State<AppState>) -> impl IntoResponse {
    let models: Vec<_> = super::validate::available(&state.settings)
        .into_iter()
        .map(|name| match hub::known(&name) {
            Some(k) => json!({
                "id": name,
                "repo": (!k.repo.is_empty()).then_some(k.repo),
                "description": k.description,
                "default": name == state.settings.default_model,
                "defaults": {"width": k.default_width, "height": k.default_height, "steps": k.default_steps, "guidance_scale": k.default_guidance},
            }),
            None => json!({"id": name, "default": name == state.settings.default_model}),
        })
        .collect();
    Json(json!({ "models": models }))
}
