//! Liveness, readiness and the model catalogue.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use super::auth::Caller;
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
    // The bus is a fast path: without it SSE polls the store, so it degrades, not fails.
    let event_bus = match state.queue.bus.ping().await {
        Ok(()) => json!({"status": "ok"}),
        Err(e) => json!({"status": "degraded", "error": e.to_string()}),
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
            "checks": {"database": database, "object_store": object_store, "event_bus": event_bus},
        })),
    )
}

/// `GET /v1/workers` (admin): workers seen in the last 30 seconds.
pub async fn workers(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, super::ApiError> {
    caller.require_admin()?;
    let workers = state
        .queue
        .store
        .list_workers(std::time::Duration::from_secs(30))
        .await?;
    let workers: Vec<_> = workers
        .iter()
        .map(|w| {
            json!({
                "name": w.name,
                "host": w.host,
                "device": w.device,
                "model": w.model,
                "current_job": w.current_job,
                "started_at": super::jobs::timestamp(w.started_at),
                "last_seen_at": super::jobs::timestamp(w.last_seen_at),
            })
        })
        .collect();
    Ok(Json(json!({ "workers": workers })))
}

/// `GET /v1/models`: every model sdq knows, with its defaults and whether a request may
/// name it on this server, then the models directory's checkpoints, and its LoRAs,
/// embeddings and VAEs in lists of their own.
pub async fn models(State(state): State<AppState>, _caller: Caller) -> impl IntoResponse {
    let catalogue = state.settings.models_dir.catalogue();
    Json(listing(&state, &catalogue))
}

/// `POST /v1/models/refresh`: scans the models directory again and lists the result.
pub async fn refresh_models(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<impl IntoResponse, super::ApiError> {
    caller.require_admin()?;
    let catalogue = state.settings.models_dir.refresh().await;
    Ok(Json(listing(&state, &catalogue)))
}

/// One models-directory file as the API shows it.
fn file_entry(e: &crate::inference::catalogue::Entry) -> serde_json::Value {
    json!({
        "id": e.name,
        "file": e.file,
        "format": e.format,
        "family": e.family,
        "size": e.size,
        "sha256": e.sha256,
        "vectors": e.vectors,
        "available": e.error.is_none(),
        "error": e.error,
    })
}

fn listing(
    state: &AppState,
    catalogue: &crate::inference::catalogue::Catalogue,
) -> serde_json::Value {
    let mut listed = known_models(state);
    if let Some(models) = listed["models"].as_array_mut() {
        for e in &catalogue.checkpoints {
            let mut entry = file_entry(e);
            entry["source"] = json!("models_dir");
            entry["default"] = json!(e.name == state.settings.default_model);
            models.push(entry);
        }
    }
    if let Some(data) = listed["data"].as_array_mut() {
        data.extend(
            catalogue
                .checkpoints
                .iter()
                .filter(|e| e.error.is_none())
                .map(|e| openai_model(&e.name)),
        );
    }
    listed["loras"] = catalogue.loras.iter().map(file_entry).collect();
    listed["embeddings"] = catalogue.embeddings.iter().map(file_entry).collect();
    listed["vae"] = catalogue.vae.iter().map(file_entry).collect();
    listed
}

/// A model in OpenAI's list shape.
fn openai_model(id: &str) -> serde_json::Value {
    json!({"id": id, "object": "model", "created": 0, "owned_by": "sdq"})
}

fn known_models(state: &AppState) -> serde_json::Value {
    // What this server accepts first, then every other name sdq knows, marked as not
    // enabled here (an operator adds them with --allow-model).
    let enabled = super::validate::available(&state.settings);
    let others = hub::KNOWN_MODELS
        .iter()
        .map(|k| k.name.to_string())
        .filter(|name| !enabled.contains(name));
    let models: Vec<_> = enabled
        .iter()
        .cloned()
        .map(|name| (name, true))
        .chain(others.map(|name| (name, false)))
        .map(|(name, available)| {
            let mut entry = json!({
                "id": name,
                "available": available,
                "default": name == state.settings.default_model,
            });
            if let Some(family) = hub::family(&name) {
                entry["family"] = json!(family);
            }
            if let Some(k) = hub::known(&name) {
                entry["repo"] = json!((!k.repo.is_empty()).then_some(k.repo));
                entry["description"] = json!(k.description);
                entry["defaults"] = json!({
                    "width": k.default_width,
                    "height": k.default_height,
                    "steps": k.default_steps,
                    "guidance_scale": k.default_guidance,
                });
            }
            entry
        })
        .collect();
    // OpenAI's list shape beside ours, so `client.models.list()` works: the models a
    // request may name.
    let data: Vec<_> = enabled.iter().map(|id| openai_model(id)).collect();
    json!({ "models": models, "object": "list", "data": data })
}
