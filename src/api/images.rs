//! `GET /v1/images/{id}`: the PNG bytes.

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::IntoResponse;

use super::jobs::parse_id;
use super::{ApiError, AppState};

pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id, "image")?;
    let record = state
        .queue
        .store
        .image(id)
        .await?
        .ok_or(ApiError::NotFound("image"))?;
    let bytes = state.images.get(&record.object_key).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/png".to_string()),
            // An image id always names the same bytes.
            (
                header::CACHE_CONTROL,
                "public, max-age=31536000, immutable".to_string(),
            ),
        ],
        bytes,
    ))
}
