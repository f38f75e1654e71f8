//! `multipart/form-data` submissions: file parts `image` (the start image) and `mask`,
//! text parts named like the JSON fields, and optionally a `request` part holding a JSON
//! object. Text values are read as JSON where that parses (`steps=20`, `previews=true`)
//! and as strings otherwise; the fields that are always text stay text.

use axum::extract::Multipart;
use serde_json::{Map, Value};

use super::validate::{parse_body, InputFiles, SubmitRequest};
use super::ApiError;

/// Fields whose values are text even when they look like numbers ("prompt: 42").
const TEXT_FIELDS: &[&str] = &[
    "prompt",
    "negative_prompt",
    "model",
    "scheduler",
    "long_prompt",
    "init_image",
    "mask_image",
    "init_image_id",
    "mask_image_id",
    "from_image",
    "webhook_url",
    "vae",
    "vae_tiling",
];

/// Most parts one request may have (each part costs a little to parse).
const MAX_PARTS: usize = 64;

fn bad_part(e: impl std::fmt::Display) -> ApiError {
    ApiError::MalformedJson(format!("malformed multipart body: {e}"))
}

/// Reads a multipart submission into the same request a JSON body would give.
pub async fn read_submission(
    mut multipart: Multipart,
) -> Result<(SubmitRequest, InputFiles), ApiError> {
    let mut fields = Map::new();
    let mut files = InputFiles::default();
    let mut parts = 0;
    while let Some(field) = multipart.next_field().await.map_err(bad_part)? {
        parts += 1;
        if parts > MAX_PARTS {
            return Err(ApiError::invalid(
                "multipart",
                format!("at most {MAX_PARTS} parts"),
            ));
        }
        let name = field.name().unwrap_or("").to_string();
        match name.as_str() {
            "image" | "mask" => {
                let bytes = field.bytes().await.map_err(bad_part)?.to_vec();
                let slot = if name == "image" {
                    &mut files.init
                } else {
                    &mut files.mask
                };
                if slot.replace(bytes).is_some() {
                    return Err(ApiError::invalid(&name, format!("{name} was sent twice")));
                }
            }
            "request" => {
                let bytes = field.bytes().await.map_err(bad_part)?;
                let value: Value = serde_json::from_slice(&bytes)
                    .map_err(|e| ApiError::MalformedJson(format!("request part: {e}")))?;
                let Value::Object(object) = value else {
                    return Err(ApiError::invalid(
                        "request",
                        "request must be a JSON object",
                    ));
                };
                for (k, v) in object {
                    fields.entry(k).or_insert(v);
                }
            }
            "" => return Err(ApiError::invalid("multipart", "a part has no name")),
            _ => {
                // Strictly UTF-8: a lossy decode would change the prompt silently.
                let bytes = field.bytes().await.map_err(bad_part)?;
                let text = String::from_utf8(bytes.to_vec()).map_err(|e| {
                    ApiError::invalid(&name, format!("{name} is not UTF-8 text: {e}"))
                })?;
                let value = if TEXT_FIELDS.contains(&name.as_str()) {
                    Value::String(text)
                } else {
                    serde_json::from_str(&text).unwrap_or(Value::String(text))
                };
                fields.insert(name, value);
            }
        }
    }
    let body = serde_json::to_vec(&Value::Object(fields))
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok((parse_body(&body)?, files))
}
