//! `/sdapi/v1/*` handlers: parse, translate (`a1111.rs`), call the shared submit / get /
//! cancel functions, answer in A1111's shapes. Errors use A1111's body
//! (`{"error", "detail", "body", "errors"}`) with our statuses.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::a1111::{self, A1111Request, Mode};
use super::{body_bytes, image_ops, job_pngs, now_ms, wait, LOCAL_OWNER};
use crate::api::jobs::submit_job;
use crate::api::validate::{available, parse_json};
use crate::api::{ApiError, AppState};
use crate::inference::hub;
use crate::inference::schedulers::a1111::{A1111_SAMPLERS, A1111_SCHEDULES};
use crate::queue::{JobStatus, ListQuery};
use crate::storage::png_info;
use axum::extract::rejection::BytesRejection;

/// An error in A1111's shape.
pub struct A1111Error {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
}

impl From<ApiError> for A1111Error {
    fn from(e: ApiError) -> Self {
        let field = match &e {
            ApiError::Invalid { field: Some(f), .. } => Some(a1111::their_field(f).to_string()),
            _ => None,
        };
        let message = match (&e, &field) {
            (
                ApiError::Invalid {
                    field: Some(ours),
                    message,
                },
                Some(theirs),
            ) if ours != theirs => {
                format!("{theirs}: {message}")
            }
            _ => e.to_string(),
        };
        if let ApiError::Internal(detail) = &e {
            tracing::error!(%detail, "internal error");
        }
        Self {
            status: e.status(),
            code: e.code(),
            message,
            field,
        }
    }
}

impl IntoResponse for A1111Error {
    fn into_response(self) -> Response {
        let mut body = json!({
            "error": self.code,
            "detail": self.message,
            "body": "",
            "errors": self.message,
        });
        if let Some(field) = self.field {
            body["field"] = json!(field);
        }
        (self.status, Json(body)).into_response()
    }
}

type Result<T> = std::result::Result<T, A1111Error>;

/// Unknown `/sdapi/v1` routes, in A1111's shape.
pub async fn not_found() -> A1111Error {
    ApiError::NotFound("route").into()
}

/// The caller's default model, if it chose one that this server still accepts.
async fn owner_default(state: &AppState, owner: &str) -> Result<Option<String>> {
    let chosen = state
        .queue
        .store
        .owner_default_model(owner)
        .await
        .map_err(ApiError::from)?;
    Ok(chosen.filter(|m| available(&state.settings).contains(m)))
}

/// `POST /sdapi/v1/txt2img`
pub async fn txt2img(
    State(state): State<AppState>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    generate(state, body_bytes(body)?, Mode::Txt2Img).await
}

/// `POST /sdapi/v1/img2img`
pub async fn img2img(
    State(state): State<AppState>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    generate(state, body_bytes(body)?, Mode::Img2Img).await
}

/// Translates, submits, waits for the end and answers as A1111 does: 200 with the images
/// (none if the job was interrupted), or an error naming why the job failed.
async fn generate(state: AppState, body: Bytes, mode: Mode) -> Result<Response> {
    let request: A1111Request = parse_json(&body)?;
    let echo: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let default = owner_default(&state, LOCAL_OWNER).await?;
    let translated = a1111::to_submit(request, mode, default.as_deref())?;
    let job = submit_job(&state, translated.request).await?;
    let job = wait::until_terminal(&state.queue, job.id).await?;
    match job.status {
        JobStatus::Succeeded | JobStatus::Canceled => {
            let images = if job.status == JobStatus::Succeeded {
                job_pngs(&state, &job).await?
            } else {
                Vec::new()
            };
            let body = a1111::response(
                &job,
                &images,
                translated.scheduler,
                translated.send_images,
                echo,
            );
            Ok(Json(body).into_response())
        }
        _ => Err(A1111Error {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "job_failed",
            message: format!(
                "job {} failed: {}",
                job.id,
                job.error.as_deref().unwrap_or("unknown error")
            ),
            field: None,
        }),
    }
}

#[derive(Deserialize)]
pub struct ProgressParams {
    #[serde(default)]
    skip_current_image: bool,
}

/// `GET /sdapi/v1/progress`: the caller's running job and how many are waiting.
pub async fn progress(
    State(state): State<AppState>,
    params: std::result::Result<Query<ProgressParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>> {
    let _skip_image = params.is_ok_and(|Query(p)| p.skip_current_image);
    let store = &state.queue.store;
    let running = store
        .list(&ListQuery {
            status: Some(JobStatus::Running),
            before: None,
            limit: 1,
        })
        .await
        .map_err(ApiError::from)?;
    let queued = store
        .list(&ListQuery {
            status: Some(JobStatus::Queued),
            before: None,
            limit: 100,
        })
        .await
        .map_err(ApiError::from)?;
    // Step previews are not wired yet: `current_image` stays null.
    Ok(Json(a1111::progress(
        running.first(),
        queued.len(),
        now_ms(),
        None,
    )))
}

/// `POST /sdapi/v1/interrupt` and `/skip`: cancel the caller's running jobs. Any body is
/// accepted (A1111 takes none).
pub async fn interrupt(State(state): State<AppState>) -> Result<Json<Value>> {
    let running = state
        .queue
        .store
        .list(&ListQuery {
            status: Some(JobStatus::Running),
            before: None,
            limit: 100,
        })
        .await
        .map_err(ApiError::from)?;
    for job in running {
        match state.queue.cancel(job.id).await {
            // It finished in the meantime: nothing left to interrupt.
            Ok(_) | Err(crate::queue::StoreError::Conflict { .. }) => {}
            Err(e) => return Err(ApiError::from(e).into()),
        }
    }
    Ok(Json(json!({})))
}

/// The options sdq reports: the caller's model and the fixed values of the settings it
/// knows.
async fn options(state: &AppState, owner: &str) -> Result<Value> {
    let model = owner_default(state, owner)
        .await?
        .unwrap_or_else(|| state.settings.default_model.clone());
    Ok(json!({
        "sd_model_checkpoint": model,
        "sd_checkpoint_hash": null,
        "sd_vae": "Automatic",
        "CLIP_stop_at_last_layers": 1,
        "eta_noise_seed_delta": 0,
        "eta_ancestral": 1,
        "eta_ddim": 0,
        "samples_format": "png",
    }))
}

/// `GET /sdapi/v1/options`
pub async fn get_options(State(state): State<AppState>) -> Result<Json<Value>> {
    Ok(Json(options(&state, LOCAL_OWNER).await?))
}

/// `POST /sdapi/v1/options`: `sd_model_checkpoint` sets the caller's default model (an
/// unknown one is a 422); other settings are accepted only at the values sdq implements.
pub async fn set_options(
    State(state): State<AppState>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Json<Value>> {
    let settings: Map<String, Value> = parse_json(&body_bytes(body)?)?;
    let model = a1111::check_settings(&settings, "")?;
    if let Some(name) = model {
        if !available(&state.settings).contains(&name) {
            return Err(ApiError::invalid(
                "sd_model_checkpoint",
                format!(
                    "model '{name}' not found; available: {}",
                    available(&state.settings).join(", ")
                ),
            )
            .into());
        }
        state
            .queue
            .store
            .set_owner_default_model(LOCAL_OWNER, Some(&name))
            .await
            .map_err(ApiError::from)?;
    }
    Ok(Json(Value::Null))
}

/// `GET /sdapi/v1/sd-models`: the models this server accepts.
pub async fn sd_models(State(state): State<AppState>) -> Json<Value> {
    let models: Vec<Value> = available(&state.settings)
        .into_iter()
        .map(|id| {
            let filename = hub::known(&id)
                .map(|k| k.repo.to_string())
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| id.clone());
            json!({
                "title": id,
                "model_name": id,
                "hash": null,
                "sha256": null,
                "filename": filename,
                "config": null,
            })
        })
        .collect();
    Json(json!(models))
}

/// `GET /sdapi/v1/samplers`
pub async fn samplers() -> Json<Value> {
    let list: Vec<Value> = A1111_SAMPLERS
        .iter()
        .filter(|s| s.listed)
        .map(|s| {
            let mut options = Map::new();
            if let Some(schedule) = s.default_schedule {
                options.insert("scheduler".into(), json!(schedule));
            }
            json!({"name": s.name, "aliases": s.aliases, "options": options})
        })
        .collect();
    Json(json!(list))
}

/// `GET /sdapi/v1/schedulers`
pub async fn schedulers() -> Json<Value> {
    let list: Vec<Value> = A1111_SCHEDULES
        .iter()
        .map(|(name, label)| {
            json!({
                "name": name,
                "label": label,
                "aliases": null,
                "default_rho": if *name == "karras" { json!(7.0) } else { json!(-1) },
                "need_inner_model": false,
            })
        })
        .collect();
    Json(json!(list))
}

/// Lists sdq has nothing in (upscalers, VAEs, hypernetworks, ...).
pub async fn empty_list() -> Json<Value> {
    Json(json!([]))
}

/// `GET /sdapi/v1/scripts`: sdq runs no scripts.
pub async fn scripts() -> Json<Value> {
    Json(json!({"txt2img": [], "img2img": []}))
}

/// `GET /sdapi/v1/loras`: none until the model catalogue lists them.
pub async fn loras() -> Json<Value> {
    Json(json!([]))
}

/// `GET /sdapi/v1/embeddings`: none until the model catalogue lists them.
pub async fn embeddings() -> Json<Value> {
    Json(json!({"loaded": {}, "skipped": {}}))
}

/// Routes that have nothing to do in sdq (`refresh-checkpoints`: models are read per job).
pub async fn nothing() -> Json<Value> {
    Json(Value::Null)
}

#[derive(Deserialize)]
pub struct PngInfoRequest {
    image: String,
}

/// `POST /sdapi/v1/png-info`: the `parameters` text of a PNG, parsed as A1111 does, and
/// its other text chunks.
pub async fn png_info(body: std::result::Result<Bytes, BytesRejection>) -> Result<Json<Value>> {
    let request: PngInfoRequest = parse_json(&body_bytes(body)?)?;
    let bytes = image_ops::unb64(&request.image)
        .map_err(|e| ApiError::invalid("image", format!("image is {e}")))?;
    if image::guess_format(&bytes).is_err() {
        return Err(ApiError::invalid("image", "image is not a readable image").into());
    }
    // A non-PNG image has no text chunks: A1111 answers with empty info too.
    let info = png_info::read(&bytes).unwrap_or_default();
    Ok(Json(a1111::png_info_response(&info)))
}
