//! The gallery: `GET /v1/images` (newest first), image bytes with caching headers and
//! presigned redirects, thumbnails, and deletion.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::auth::Caller;
use super::jobs::{parse_id, ImageView};
use super::{ApiError, AppState};
use crate::queue::{Cursor, ImageQuery, ImageRecord};
use crate::storage::ImageStore;

/// How long a presigned image URL stays valid.
const PRESIGNED_FOR: Duration = Duration::from_secs(300);

#[derive(Deserialize)]
pub struct ListParams {
    cursor: Option<String>,
    limit: Option<i64>,
    job_id: Option<String>,
    model: Option<String>,
    since: Option<String>,
}

/// `since` as an RFC 3339 time or milliseconds since the epoch.
fn parse_since(raw: &str) -> Option<i64> {
    if let Ok(ms) = raw.trim().parse::<i64>() {
        return Some(ms);
    }
    chrono::DateTime::parse_from_rfc3339(raw.trim())
        .ok()
        .map(|t| t.timestamp_millis())
}

/// `GET /v1/images?cursor&limit&job_id&model&since`
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::Invalid {
        field: None,
        message: e.body_text(),
    })?;
    let limit = params.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            "limit must be between 1 and 200",
        ));
    }
    let before = params
        .cursor
        .as_deref()
        .map(|c| {
            Cursor::decode(c).ok_or_else(|| ApiError::invalid("cursor", "cursor is not valid"))
        })
        .transpose()?;
    let job_id = params
        .job_id
        .as_deref()
        .map(|j| {
            Uuid::parse_str(j).map_err(|_| ApiError::invalid("job_id", "job_id is not a job id"))
        })
        .transpose()?;
    let since = params
        .since
        .as_deref()
        .map(|s| {
            parse_since(s).ok_or_else(|| {
                ApiError::invalid(
                    "since",
                    "since must be an RFC 3339 time or epoch milliseconds",
                )
            })
        })
        .transpose()?;
    let images = state
        .queue
        .store
        .list_images(&ImageQuery {
            scope: caller.scope(),
            job_id,
            model: params.model.filter(|m| !m.is_empty()),
            since,
            before,
            limit,
        })
        .await?;
    let next_cursor = (images.len() as i64 == limit)
        .then(|| {
            images.last().map(|i| {
                Cursor {
                    created_at: i.created_at,
                    id: i.id,
                }
                .encode()
            })
        })
        .flatten();
    let views: Vec<ImageView> = images.iter().map(ImageView::from).collect();
    Ok(Json(json!({"images": views, "next_cursor": next_cursor})))
}

async fn owned_image(
    state: &AppState,
    caller: &Caller,
    raw_id: &str,
) -> Result<ImageRecord, ApiError> {
    let id = parse_id(raw_id, "image")?;
    state
        .queue
        .store
        .image(id, &caller.scope())
        .await?
        .ok_or(ApiError::NotFound("image"))
}

#[derive(Deserialize)]
pub struct GetParams {
    redirect: Option<String>,
}

/// A download name from the seed and the first words of the prompt.
pub fn download_name(record: &ImageRecord) -> String {
    let mut slug = String::new();
    for c in record.prompt.chars() {
        if slug.len() >= 48 {
            break;
        }
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
    }
    let slug = slug.trim_end_matches('-');
    if slug.is_empty() {
        format!("{}.png", record.seed)
    } else {
        format!("{}-{slug}.png", record.seed)
    }
}

/// An image id always names the same bytes, so its ETag is the id and clients may cache
/// forever.
fn cached(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
}

fn bytes_response(
    headers: &HeaderMap,
    etag: String,
    content_type: &'static str,
    disposition: Option<String>,
    bytes: Option<bytes::Bytes>,
) -> Response {
    let mut response = match bytes {
        Some(bytes) if !cached(headers, &etag) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, content_type)],
            Body::from(bytes),
        )
            .into_response(),
        _ => StatusCode::NOT_MODIFIED.into_response(),
    };
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=31536000, immutable"),
    );
    if let Some(d) = disposition.and_then(|d| HeaderValue::from_str(&d).ok()) {
        h.insert(header::CONTENT_DISPOSITION, d);
    }
    response
}

/// `GET /v1/images/{id}`: the PNG; `?redirect=1` answers 302 to a presigned URL when the
/// store can make one.
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(params): Query<GetParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let record = owned_image(&state, &caller, &id).await?;
    let redirect = matches!(params.redirect.as_deref(), Some("1" | "true"));
    if redirect {
        if let Some(url) = state
            .images
            .presigned_get(&record.object_key, PRESIGNED_FOR)
            .await?
        {
            return Ok((StatusCode::FOUND, [(header::LOCATION, url)]).into_response());
        }
    }
    let etag = format!("\"{}\"", record.id.simple());
    let bytes = if cached(&headers, &etag) {
        None
    } else {
        Some(state.images.get(&record.object_key).await?)
    };
    let disposition = format!("inline; filename=\"{}\"", download_name(&record));
    Ok(bytes_response(
        &headers,
        etag,
        "image/png",
        Some(disposition),
        bytes,
    ))
}

/// `GET /v1/images/{id}/thumbnail`: a JPEG no larger than 256 pixels a side.
pub async fn thumbnail(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let record = owned_image(&state, &caller, &id).await?;
    let etag = format!("\"{}-thumb\"", record.id.simple());
    let bytes = if cached(&headers, &etag) {
        None
    } else {
        Some(
            state
                .images
                .get(&ImageStore::thumbnail_key(&record.object_key))
                .await?,
        )
    };
    Ok(bytes_response(&headers, etag, "image/jpeg", None, bytes))
}

/// `DELETE /v1/images/{id}`: the row, then the image and its thumbnail; 204 also when it is
/// already gone, so a retried delete succeeds.
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id, "image")?;
    if let Some(record) = state.queue.store.delete_image(id, &caller.scope()).await? {
        delete_objects(&state, &record).await;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes an image's objects once its row is gone; a failure leaves an orphan for the
/// collector, never a row without its object.
pub async fn delete_objects(state: &AppState, record: &ImageRecord) {
    for key in [
        record.object_key.clone(),
        ImageStore::thumbnail_key(&record.object_key),
    ] {
        if let Err(e) = state.images.delete(&key).await {
            tracing::warn!(image_id = %record.id, %key, error = %e, "object not deleted");
        }
    }
}
