//! `GET /v1/me` (who am I) and the admin's key management: `GET/POST /v1/keys`,
//! `DELETE /v1/keys/{id}`.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Caller;
use super::jobs::{parse_id, timestamp};
use super::{ApiError, AppState};
use crate::queue::keys::{issue, TOKEN_PREFIX};
use crate::queue::{ApiKey, NewApiKey};

/// A key as the API shows it: never its hash; its webhook secret only to itself.
pub fn key_view(key: &ApiKey) -> Value {
    json!({
        "id": key.id,
        "name": key.name,
        "prefix": format!("{TOKEN_PREFIX}{}", key.lookup),
        "admin": key.admin,
        "max_queued": key.max_queued,
        "retain_days": key.retain_days,
        "rate_per_min": key.rate_per_min,
        "created_at": timestamp(key.created_at),
        "revoked_at": key.revoked_at.map(timestamp),
        "last_used_at": key.last_used_at.map(timestamp),
    })
}

/// `GET /v1/me`: the auth mode and the calling key.
pub async fn me(State(state): State<AppState>, caller: Caller) -> Json<Value> {
    let mut key = caller.key().map(key_view);
    if let (Some(view), Some(k)) = (key.as_mut(), caller.key()) {
        view["webhook_secret"] = json!(k.webhook_secret);
    }
    Json(json!({"auth": state.auth.mode, "admin": caller.is_admin(), "key": key}))
}

/// `GET /v1/keys` (admin).
pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let keys = state.queue.store.list_keys().await?;
    Ok(Json(
        json!({"keys": keys.iter().map(key_view).collect::<Vec<_>>()}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    name: String,
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    max_queued: Option<i64>,
    #[serde(default)]
    rate_per_min: Option<i64>,
    #[serde(default)]
    retain_days: Option<f64>,
}

/// Checks the limits a key may be given (shared with `sdq keys create`).
pub fn check_new_key(new: &NewApiKey) -> Result<(), String> {
    if new.name.trim().is_empty() || new.name.chars().count() > 100 {
        return Err("name must be 1 to 100 characters".into());
    }
    if new
        .max_queued
        .is_some_and(|n| !(1..=1_000_000).contains(&n))
    {
        return Err("max_queued must be between 1 and 1000000".into());
    }
    if new
        .rate_per_min
        .is_some_and(|n| !(1..=1_000_000).contains(&n))
    {
        return Err("rate_per_min must be between 1 and 1000000".into());
    }
    if new
        .retain_days
        .is_some_and(|d| !(d.is_finite() && d > 0.0 && d <= 36_500.0))
    {
        return Err("retain_days must be a number of days between 0 and 36500".into());
    }
    Ok(())
}

/// `POST /v1/keys` (admin): issues a key; the token is in this response only.
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    caller.require_admin()?;
    let body: CreateKey = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid("body", format!("invalid key request: {e}")))?;
    let new = NewApiKey {
        name: body.name,
        admin: body.admin,
        max_queued: body.max_queued,
        rate_per_min: body.rate_per_min,
        retain_days: body.retain_days,
    };
    check_new_key(&new).map_err(|m| ApiError::invalid("body", m))?;
    let issued = issue(new, chrono::Utc::now().timestamp_millis());
    state.queue.store.insert_key(&issued.key).await?;
    let mut view = key_view(&issued.key);
    view["token"] = json!(issued.token);
    view["webhook_secret"] = json!(issued.key.webhook_secret);
    Ok((StatusCode::CREATED, Json(view)))
}

/// `DELETE /v1/keys/{id}` (admin): revokes a key (it keeps its jobs and images).
pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let id = parse_id(&id, "key")?;
    let key = state
        .queue
        .store
        .revoke_key(id)
        .await?
        .ok_or(ApiError::NotFound("key"))?;
    Ok(Json(key_view(&key)))
}
