//! `/sdapi/v1/*` handlers: parse, translate (`a1111.rs`), call the shared submit / get /
//! cancel functions, answer in A1111's shapes. Errors use A1111's body
//! (`{"error", "detail", "body", "errors"}`) with our statuses.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::a1111::{self, A1111Request, Mode};
use super::{body_bytes, image_ops, job_pngs, now_ms, wait};
use crate::api::submit::submit_job;
use crate::api::validate::{available, parse_json};
use crate::api::{ApiError, AppState, Caller};
use crate::inference::catalogue::Kind;
use crate::inference::hub;
use crate::inference::schedulers::a1111::{A1111_SAMPLERS, A1111_SCHEDULES};
use crate::queue::{JobStatus, ListQuery};
use crate::storage::png_info;

/// An error in A1111's shape, keeping the headers our own error would carry
/// (`Retry-After`); a 401 asks for HTTP Basic, which is what A1111 clients can send.
pub struct A1111Error {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
    headers: HeaderMap,
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
        let (status, code) = (e.status(), e.code());
        // Our own response carries the right headers (and logs internal errors once).
        let headers = e.into_response().headers().clone();
        Self {
            status,
            code,
            message,
            field,
            headers,
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
        let mut response = (self.status, Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(retry) = self.headers.get(header::RETRY_AFTER) {
            headers.insert(header::RETRY_AFTER, retry.clone());
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"sdq\""),
            );
        }
        response
    }
}

/// The caller of an A1111 route: `Authorization: Bearer KEY`, or HTTP Basic with the key as
/// the password (any user name), which is what `webuiapi` and most A1111 clients send.
pub struct A1111Caller(pub Caller);

impl FromRequestParts<AppState> for A1111Caller {
    type Rejection = A1111Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        let caller = state.auth.authenticate(&parts.headers, true).await?;
        Ok(A1111Caller(caller))
    }
}

type Result<T> = std::result::Result<T, A1111Error>;

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
    A1111Caller(caller): A1111Caller,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    generate(state, caller, body_bytes(body)?, Mode::Txt2Img).await
}

/// `POST /sdapi/v1/img2img`
pub async fn img2img(
    State(state): State<AppState>,
    A1111Caller(caller): A1111Caller,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    generate(state, caller, body_bytes(body)?, Mode::Img2Img).await
}

/// Translates, submits, waits for the end and answers as A1111 does: 200 with the images
/// (none if the job was interrupted), or an error naming why the job failed.
async fn generate(state: AppState, caller: Caller, body: Bytes, mode: Mode) -> Result<Response> {
    let request: A1111Request = parse_json(&body)?;
    let echo: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let default = owner_default(&state, &caller.owner()).await?;
    let translated = a1111::to_submit(request, mode, default.as_deref())?;
    let scope = caller.scope();
    let job = submit_job(&state, &caller, translated.request, translated.files, None)
        .await?
        .job;
    let job = wait::until_terminal(&state.queue, job.id, &scope).await?;
    match job.status {
        JobStatus::Succeeded | JobStatus::Canceled => {
            let images = if job.status == JobStatus::Succeeded {
                job_pngs(&state, &job, &scope).await?
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
            headers: HeaderMap::new(),
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
    A1111Caller(caller): A1111Caller,
    params: std::result::Result<Query<ProgressParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>> {
    let skip_image = params.is_ok_and(|Query(p)| p.skip_current_image);
    let store = &state.queue.store;
    let running = store
        .list(&ListQuery {
            status: Some(JobStatus::Running),
            ..ListQuery::newest(caller.scope(), 1)
        })
        .await
        .map_err(ApiError::from)?;
    let queued = store
        .list(&ListQuery {
            status: Some(JobStatus::Queued),
            ..ListQuery::newest(caller.scope(), 100)
        })
        .await
        .map_err(ApiError::from)?;
    // A1111 sends `current_image` as bare base64, without the data: URL's prefix.
    let current_image = match running.first() {
        Some(job) if !skip_image => store
            .latest_preview(job.id, &caller.scope())
            .await
            .map_err(ApiError::from)?
            .and_then(|p| p.image.split_once(',').map(|(_, b64)| b64.to_string())),
        _ => None,
    };
    Ok(Json(a1111::progress(
        running.first(),
        queued.len(),
        now_ms(),
        current_image,
    )))
}

/// `POST /sdapi/v1/interrupt` and `/skip`: cancel the caller's running jobs. Any body is
/// accepted (A1111 takes none).
pub async fn interrupt(
    State(state): State<AppState>,
    A1111Caller(caller): A1111Caller,
) -> Result<Json<Value>> {
    let scope = caller.scope();
    let running = state
        .queue
        .store
        .list(&ListQuery {
            status: Some(JobStatus::Running),
            ..ListQuery::newest(scope.clone(), 100)
        })
        .await
        .map_err(ApiError::from)?;
    for job in running {
        match state.queue.cancel(job.id, &scope).await {
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
pub async fn get_options(
    State(state): State<AppState>,
    A1111Caller(caller): A1111Caller,
) -> Result<Json<Value>> {
    Ok(Json(options(&state, &caller.owner()).await?))
}

/// `POST /sdapi/v1/options`: `sd_model_checkpoint` sets the caller's default model (an
/// unknown one is a 422); other settings are accepted only at the values sdq implements.
pub async fn set_options(
    State(state): State<AppState>,
    A1111Caller(caller): A1111Caller,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Json<Value>> {
    let settings: Map<String, Value> = parse_json(&body_bytes(body)?)?;
    let selected = a1111::check_settings(&settings, "")?;
    if selected.vae.is_some() || selected.clip_skip.is_some() {
        // sdq keeps a default model per key, not a default VAE or clip skip; a job takes
        // those in its own override_settings.
        let field = if selected.vae.is_some() {
            "sd_vae"
        } else {
            "CLIP_stop_at_last_layers"
        };
        return Err(ApiError::invalid(
            field,
            format!("sdq keeps no default {field}; send it in each request's override_settings"),
        )
        .into());
    }
    if let Some(name) = selected.model {
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
            .set_owner_default_model(&caller.owner(), Some(&name))
            .await
            .map_err(ApiError::from)?;
    }
    Ok(Json(Value::Null))
}

/// `GET /sdapi/v1/sd-models`: the models this server accepts; checkpoints of the models
/// directory carry A1111's `title` (`file [short hash]`) and hashes.
pub async fn sd_models(State(state): State<AppState>, _: A1111Caller) -> Json<Value> {
    let catalogue = state.settings.models_dir.catalogue();
    let models: Vec<Value> = available(&state.settings)
        .into_iter()
        .map(|id| {
            if let Some(entry) = catalogue.find(Kind::Checkpoint, &id) {
                let short = entry.sha256.as_deref().map(|h| &h[..10]);
                let file = file_name(&entry.file);
                return json!({
                    "title": match short {
                        Some(h) => format!("{file} [{h}]"),
                        None => file.to_string(),
                    },
                    "model_name": entry.name,
                    "hash": short,
                    "sha256": entry.sha256,
                    "filename": entry.file,
                    "config": null,
                });
            }
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
pub async fn samplers(_: A1111Caller) -> Json<Value> {
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
pub async fn schedulers(_: A1111Caller) -> Json<Value> {
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
pub async fn empty_list(_: A1111Caller) -> Json<Value> {
    Json(json!([]))
}

/// `GET /sdapi/v1/scripts`: sdq runs no scripts.
pub async fn scripts(_: A1111Caller) -> Json<Value> {
    Json(json!({"txt2img": [], "img2img": []}))
}

fn file_name(file: &str) -> &str {
    file.rsplit('/').next().unwrap_or(file)
}

/// `GET /sdapi/v1/loras`: the usable LoRAs of the models directory, as A1111's Lora
/// extension lists them (`<lora:name:weight>` in a prompt calls one).
pub async fn loras(State(state): State<AppState>, _: A1111Caller) -> Json<Value> {
    let catalogue = state.settings.models_dir.catalogue();
    let list: Vec<Value> = catalogue
        .loras
        .iter()
        .filter(|e| e.error.is_none())
        .map(|e| json!({"name": e.name, "alias": e.name, "path": e.file, "metadata": {}}))
        .collect();
    Json(json!(list))
}

/// `GET /sdapi/v1/embeddings`: textual-inversion embeddings of the models directory;
/// files that cannot be used are `skipped`.
pub async fn embeddings(State(state): State<AppState>, _: A1111Caller) -> Json<Value> {
    let catalogue = state.settings.models_dir.catalogue();
    let (mut loaded, mut skipped) = (Map::new(), Map::new());
    for e in &catalogue.embeddings {
        let view = json!({
            "step": null,
            "sd_checkpoint": null,
            "sd_checkpoint_name": null,
            "shape": null,
            "vectors": e.vectors,
        });
        if e.error.is_none() {
            loaded.insert(e.name.clone(), view);
        } else {
            skipped.insert(e.name.clone(), view);
        }
    }
    Json(json!({"loaded": loaded, "skipped": skipped}))
}

/// `GET /sdapi/v1/sd-vae`: the usable VAEs of the models directory (a job's `sd_vae`
/// override names one).
pub async fn sd_vae(State(state): State<AppState>, _: A1111Caller) -> Json<Value> {
    let catalogue = state.settings.models_dir.catalogue();
    let list: Vec<Value> = catalogue
        .vae
        .iter()
        .filter(|e| e.error.is_none())
        .map(|e| json!({"model_name": e.name, "filename": e.file}))
        .collect();
    Json(json!(list))
}

/// Routes that have nothing to do in sdq (`refresh-checkpoints`: models are read per job).
pub async fn nothing(_: A1111Caller) -> Json<Value> {
    Json(Value::Null)
}

#[derive(Deserialize)]
pub struct PngInfoRequest {
    image: String,
}

/// `POST /sdapi/v1/png-info`: the `parameters` text of a PNG, parsed as A1111 does, and
/// its other text chunks.
pub async fn png_info(
    _: A1111Caller,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Json<Value>> {
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
