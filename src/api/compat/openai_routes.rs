//! `POST /v1/images/generations` (JSON) and `POST /v1/images/edits` (multipart): parse,
//! translate (`openai.rs`), submit through the shared path, wait, answer as OpenAI does,
//! or stream `image_generation.*` / `image_edit.*` events. Errors use OpenAI's shape.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Multipart, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::image_ops::encode_as;
use super::openai::{self, Delivery, GenerateParams, ModelDefaults};
use super::{body_bytes, job_pngs, wait};
use crate::api::submit::submit_job;
use crate::api::validate::{parse_json, MAX_BODY_BYTES};
use crate::api::{ApiError, AppState, Caller, InputFiles, SubmitRequest};
use crate::inference::hub;
use crate::queue::{Job, JobStatus, Scope};

/// An error in OpenAI's shape. Only 429 and 503 invite the SDKs' automatic retries: a
/// retried generation is a second job.
pub enum OpenAiError {
    Api(ApiError),
    /// The job ran and failed (or was canceled by someone): not the request's fault, and
    /// not worth retrying blindly.
    Job {
        status: StatusCode,
        message: String,
    },
}

impl From<ApiError> for OpenAiError {
    fn from(e: ApiError) -> Self {
        OpenAiError::Api(e)
    }
}

impl OpenAiError {
    fn body(&self) -> (StatusCode, Value) {
        match self {
            OpenAiError::Api(e) => {
                if let ApiError::Internal(detail) = e {
                    tracing::error!(%detail, "internal error");
                }
                openai::error_body(e)
            }
            OpenAiError::Job { status, message } => (
                *status,
                serde_json::json!({"error": {"message": message, "type": "server_error", "param": null, "code": "job_failed"}}),
            ),
        }
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let (status, body) = self.body();
        let mut response = (status, Json(body)).into_response();
        // Keep what our own error says in headers (`WWW-Authenticate`, `Retry-After`).
        if let OpenAiError::Api(e) = self {
            for (name, value) in e.into_response().headers() {
                if name != axum::http::header::CONTENT_TYPE
                    && name != axum::http::header::CONTENT_LENGTH
                {
                    response.headers_mut().insert(name.clone(), value.clone());
                }
            }
        }
        if !matches!(status.as_u16(), 429 | 503) {
            response
                .headers_mut()
                .insert("x-should-retry", HeaderValue::from_static("false"));
        }
        response
    }
}

type Result<T> = std::result::Result<T, OpenAiError>;

/// The caller of an OpenAI route: `Authorization: Bearer KEY` (what the SDKs send as
/// their API key); a refusal in OpenAI's shape.
pub struct OpenAiCaller(pub Caller);

impl FromRequestParts<AppState> for OpenAiCaller {
    type Rejection = OpenAiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        let caller = state.auth.authenticate(&parts.headers, false).await?;
        Ok(OpenAiCaller(caller))
    }
}

/// The defaults of the model a request will run on, for the quality presets.
fn model_defaults(state: &AppState, model: Option<&str>) -> ModelDefaults {
    let model = model
        .filter(|m| !openai::is_openai_model(m))
        .unwrap_or(&state.settings.default_model);
    ModelDefaults {
        steps: hub::known(model).map_or(30, |k| k.default_steps as u32),
        max_steps: state.settings.limits.max_steps,
    }
}

/// Where this server is, as the client reached it, for absolute image URLs.
fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .filter(|s| *s == "https" || *s == "http")
        .unwrap_or("http");
    format!("{scheme}://{host}")
}

/// `POST /v1/images/generations`
pub async fn generations(
    State(state): State<AppState>,
    OpenAiCaller(caller): OpenAiCaller,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let params: GenerateParams = parse_json(&body_bytes(body)?)?;
    let defaults = model_defaults(&state, params.model.as_deref());
    let (request, delivery) = openai::to_submit(params, defaults)?;
    let files = InputFiles::default();
    let base = base_url(&headers);
    run(
        state,
        caller,
        (request, files),
        delivery,
        base,
        "image_generation",
    )
    .await
}

/// `POST /v1/images/edits`: multipart with `image` (or `image[]`), an optional `mask`
/// (transparent = edit → inpainting; none → img2img), and the generation fields as text.
pub async fn edits(
    State(state): State<AppState>,
    OpenAiCaller(caller): OpenAiCaller,
    request: Request,
) -> Result<Response> {
    let headers = request.headers().clone();
    let mut form = Multipart::from_request(request, &state)
        .await
        .map_err(|e| ApiError::MalformedJson(format!("expected multipart/form-data: {e}")))?;
    let mut fields = Map::new();
    let mut images = Vec::new();
    let mut mask = None;
    while let Some(part) = form.next_field().await.map_err(multipart_error)? {
        let name = part.name().unwrap_or_default().to_string();
        match name.as_str() {
            "image" | "image[]" => {
                images.push(part.bytes().await.map_err(multipart_error)?.to_vec())
            }
            "mask" => mask = Some(part.bytes().await.map_err(multipart_error)?.to_vec()),
            _ if part.file_name().is_some() => {
                return Err(ApiError::invalid(&name, format!("sdq takes no '{name}' file")).into())
            }
            _ => {
                let text = part.text().await.map_err(multipart_error)?;
                fields.insert(name.clone(), form_value(&name, text));
            }
        }
    }
    let params: GenerateParams = parse_json(&serde_json::to_vec(&fields).unwrap_or_default())?;
    let defaults = model_defaults(&state, params.model.as_deref());
    let (request, files, delivery) = openai::edit_to_submit(params, images, mask, defaults)?;
    let base = base_url(&headers);
    run(
        state,
        caller,
        (request, files),
        delivery,
        base,
        "image_edit",
    )
    .await
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge(MAX_BODY_BYTES)
    } else {
        ApiError::MalformedJson(format!("malformed multipart body: {}", e.body_text()))
    }
}

/// Multipart fields are text; the numeric and boolean ones become JSON numbers and
/// booleans when they parse as such (else validation names them).
fn form_value(name: &str, text: String) -> Value {
    match name {
        "n" | "output_compression" | "partial_images" => text
            .trim()
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or(Value::String(text)),
        "stream" => match text.trim() {
            "true" | "True" | "1" => Value::Bool(true),
            "false" | "False" | "0" => Value::Bool(false),
            _ => Value::String(text),
        },
        _ => Value::String(text),
    }
}

/// Submits, then answers with the whole response or a stream.
async fn run(
    state: AppState,
    caller: Caller,
    (request, files): (SubmitRequest, InputFiles),
    delivery: Delivery,
    base: String,
    prefix: &'static str,
) -> Result<Response> {
    let job = submit_job(&state, &caller, request, files, None).await?.job;
    let scope = caller.scope();
    if delivery.stream {
        return Ok(stream(state, job, scope, delivery, prefix).into_response());
    }
    let job = wait::until_terminal(&state.queue, job.id, &scope).await?;
    let images = finished_images(&state, &job, &scope, &delivery).await?;
    let data = images
        .iter()
        .map(|(id, encoded)| {
            let url = format!("{base}/v1/images/{id}");
            openai::datum(&delivery, encoded, &url, &job.spec.prompt)
        })
        .collect();
    let created = job.finished_at.unwrap_or(job.created_at) / 1000;
    Ok(Json(openai::images_response(
        created,
        data,
        job.spec.width,
        job.spec.height,
        &delivery,
    ))
    .into_response())
}

/// The images of a finished job, encoded as asked; a job that did not succeed is an error.
async fn finished_images(
    state: &AppState,
    job: &Job,
    scope: &Scope,
    delivery: &Delivery,
) -> Result<Vec<(uuid::Uuid, Vec<u8>)>> {
    match job.status {
        JobStatus::Succeeded => {}
        JobStatus::Canceled => {
            return Err(OpenAiError::Job {
                status: StatusCode::CONFLICT,
                message: format!("job {} was canceled", job.id),
            })
        }
        _ => {
            return Err(OpenAiError::Job {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message: format!(
                    "job {} failed: {}",
                    job.id,
                    job.error.as_deref().unwrap_or("unknown error")
                ),
            })
        }
    }
    let mut out = Vec::new();
    for (record, png) in job_pngs(state, job, scope).await? {
        let encoded = if delivery.url {
            png
        } else {
            encode_as(&png, delivery.format)
                .map_err(|e| ApiError::Internal(format!("re-encoding image {}: {e}", record.id)))?
        };
        out.push((record.id, encoded));
    }
    Ok(out)
}

/// The streamed answer: up to `partial_images` `{prefix}.partial_image` events from the
/// job's step previews while it runs, then `{prefix}.completed` per image once it ends
/// (or one `error` event).
fn stream(
    state: AppState,
    job: Job,
    scope: Scope,
    delivery: Delivery,
    prefix: &'static str,
) -> Sse<impl futures::Stream<Item = std::result::Result<SseEvent, Infallible>>> {
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        if delivery.partial_images > 0 {
            super::partial_images::forward(
                &state.queue,
                job.id,
                &scope,
                (job.spec.width, job.spec.height),
                &delivery,
                prefix,
                &tx,
            )
            .await;
        }
        let events = match stream_events(&state, &job, &scope, &delivery, prefix).await {
            Ok(events) => events,
            Err(e) => {
                let (_, body) = e.body();
                vec![SseEvent::default().event("error").data(body.to_string())]
            }
        };
        for event in events {
            if tx.send(Ok(event)).await.is_err() {
                return;
            }
        }
    });
    Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

async fn stream_events(
    state: &AppState,
    job: &Job,
    scope: &Scope,
    delivery: &Delivery,
    prefix: &'static str,
) -> Result<Vec<SseEvent>> {
    let job = wait::until_terminal(&state.queue, job.id, scope).await?;
    let created = job.finished_at.unwrap_or(job.created_at) / 1000;
    let images = finished_images(state, &job, scope, delivery).await?;
    Ok(images
        .into_iter()
        .map(|(_, encoded)| {
            let data = openai::stream_event(
                &format!("{prefix}.completed"),
                created,
                super::image_ops::b64(&encoded),
                (job.spec.width, job.spec.height),
                delivery,
                None,
            );
            SseEvent::default()
                .event(format!("{prefix}.completed"))
                .data(data.to_string())
        })
        .collect())
}
