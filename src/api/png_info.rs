//! Reading recipes back out of PNGs: `GET /v1/images/{id}/metadata` for gallery images and
//! `POST /v1/png-info` for any uploaded PNG (sdq's own chunks or A1111's `parameters`).
//! The recipe comes back as job-request fields, so it can be edited and submitted again.

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::Json;
use serde_json::{json, Map, Value};

use super::auth::Caller;
use super::jobs::parse_id;
use super::validate::{base64_field, MAX_BODY_BYTES};
use super::{ApiError, AppState, SubmitRequest};
use crate::inference::schedulers::a1111::from_a1111;
use crate::storage::png_info;

/// Request fields a recipe may carry: those of `SubmitRequest` whose values are plain
/// settings (start images and gallery references are not part of a recipe's text).
fn recipe_fields() -> Vec<String> {
    let Ok(Value::Object(all)) = serde_json::to_value(SubmitRequest::default()) else {
        return Vec::new();
    };
    all.keys()
        .filter(|k| {
            !matches!(
                k.as_str(),
                "init_image" | "mask_image" | "init_image_id" | "mask_image_id" | "from_image"
            )
        })
        .cloned()
        .collect()
}

/// `{source, parameters, recipe}` for PNG bytes.
fn describe(bytes: &[u8]) -> Result<Value, ApiError> {
    let info =
        png_info::read(bytes).map_err(|e| ApiError::invalid("image", format!("image: {e}")))?;
    let recipe = info.recipe(|sampler, schedule| {
        from_a1111(sampler, schedule)
            .ok()
            .map(|k| k.name().to_string())
    });
    let keep = recipe_fields();
    let recipe: Map<String, Value> = match recipe {
        Value::Object(map) => map
            .into_iter()
            .filter(|(k, v)| keep.contains(k) && !v.is_null())
            .collect(),
        _ => Map::new(),
    };
    Ok(json!({
        "source": info.source(),
        "parameters": info.parameters,
        "recipe": recipe,
    }))
}

/// `GET /v1/images/{id}/metadata`
pub async fn metadata(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id, "image")?;
    let record = state
        .queue
        .store
        .image(id, &caller.scope())
        .await?
        .ok_or(ApiError::NotFound("image"))?;
    let bytes = state.images.get(&record.object_key).await?;
    Ok(Json(describe(&bytes)?))
}

/// `POST /v1/png-info`: a multipart `image` part, or JSON `{"image": base64}`.
pub async fn read(
    State(state): State<AppState>,
    _caller: Caller,
    request: Request,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let is_multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("multipart/form-data"));
    let bytes = if is_multipart {
        let mut multipart = Multipart::from_request(request, &state)
            .await
            .map_err(|e| ApiError::MalformedJson(e.body_text()))?;
        let mut image = None;
        while let Some(field) = multipart
            .next_field()
            .await
            .map_err(|e| ApiError::MalformedJson(format!("malformed multipart body: {e}")))?
        {
            if field.name() == Some("image") {
                let data = field.bytes().await.map_err(|e| {
                    ApiError::MalformedJson(format!("malformed multipart body: {e}"))
                })?;
                image = Some(data.to_vec());
            }
        }
        image.ok_or_else(|| ApiError::invalid("image", "send the PNG as a part named `image`"))?
    } else {
        let body = Bytes::from_request(request, &state)
            .await
            .map_err(|e| match e.status() {
                StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(MAX_BODY_BYTES),
                _ => ApiError::MalformedJson(e.body_text()),
            })?;
        let value: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::MalformedJson(format!("malformed JSON: {e}")))?;
        let image = value
            .get("image")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::invalid("image", "image must be a base64 PNG"))?;
        base64_field("image", image)?
    };
    if !bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        let looks_like_image = image::guess_format(&bytes).is_ok();
        return Err(if looks_like_image {
            ApiError::UnsupportedMediaType("image must be a PNG: only PNGs carry recipes".into())
        } else {
            ApiError::invalid("image", "image is not a PNG")
        });
    }
    Ok((StatusCode::OK, Json(describe(&bytes)?)))
}
