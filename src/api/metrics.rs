//! `GET /metrics` and the layer that counts and times every HTTP request.

use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::auth::Caller;
use super::{ApiError, AppState};
use crate::observability;

/// Counts and times a request under its route template (`/v1/jobs/{id}`, never the
/// concrete path, so ids cannot blow up the label set). Requests no route matched share
/// one label.
pub async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let response = next.run(request).await;
    observability::http_request(
        &method,
        &route,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// `GET /metrics`: Prometheus text. Open while auth is off (loopback only); an admin key
/// when auth is required, since job counts and worker names describe every tenant.
pub async fn scrape(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let counts = state.queue.store.count_by_status().await?;
    let workers = state
        .queue
        .store
        .list_workers(Duration::from_secs(30))
        .await?;
    // Every status gets a sample, zero included, so a dashboard's series never vanish.
    let by_status: Vec<(&'static str, i64)> = crate::queue::JobStatus::ALL
        .iter()
        .map(|s| {
            let n = counts
                .iter()
                .find(|(c, _)| c == s)
                .map(|(_, n)| *n)
                .unwrap_or(0);
            (s.as_str(), n)
        })
        .collect();
    observability::store_gauges(&by_status, workers.len());
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, observability::CONTENT_TYPE)],
        observability::render(),
    )
        .into_response())
}
