//! The A1111 dialect's translator: A1111's txt2img / img2img bodies to our
//! [`SubmitRequest`], and our finished job to A1111's response. Pure functions; the
//! routes in `a1111_routes.rs` do the I/O.
//!
//! A1111 clients send every field, most of them null or at their defaults. A field is
//! honoured, or ignored because its value changes nothing, or refused with a 422 that
//! names it: a value that would change the image in a way sdq does not implement is never
//! dropped silently.

use serde::{Deserialize, Deserializer};
use serde_json::{json, Map, Value};

use super::image_ops;
use crate::api::{ApiError, InputFiles, SubmitRequest};
use crate::inference::schedulers::a1111::{from_a1111, to_a1111};
use crate::inference::SchedulerKind;
use crate::queue::{ImageRecord, Job, JobStatus};

/// Which endpoint a body came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Txt2Img,
    Img2Img,
}

/// A1111's sampler when a request names none (its API model's `sampler_index` default).
const DEFAULT_SAMPLER: &str = "Euler";
/// A1111's `denoising_strength` default for img2img.
const DEFAULT_STRENGTH: f64 = 0.75;
/// Largest image the `inpainting_fill: 0` smearing works on (validation caps jobs lower).
const MAX_FILL_PIXELS: u64 = 4 << 20;
/// A1111's `mask_blur` default, in pixels.
const DEFAULT_MASK_BLUR: f64 = 4.0;

/// The fields of A1111's `StableDiffusionProcessing{Txt2Img,Img2Img}API` that sdq reads.
/// Everything else A1111 clients send is accepted and ignored: those fields either do not
/// exist in sdq's world (file naming, saving grids) or only matter when a field checked
/// here enables them (the `hr_*` fields without `enable_hr`).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct A1111Request {
    pub prompt: Option<String>,
    pub negative_prompt: Option<String>,
    pub styles: Option<Vec<String>>,
    pub seed: Option<i64>,
    pub subseed_strength: Option<f64>,
    pub seed_resize_from_w: Option<i64>,
    pub seed_resize_from_h: Option<i64>,
    pub sampler_name: Option<String>,
    pub sampler_index: Option<String>,
    pub scheduler: Option<String>,
    pub batch_size: Option<u32>,
    pub n_iter: Option<u32>,
    pub steps: Option<u32>,
    pub cfg_scale: Option<f64>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    #[serde(deserialize_with = "flag")]
    pub restore_faces: Option<bool>,
    #[serde(deserialize_with = "flag")]
    pub tiling: Option<bool>,
    #[serde(deserialize_with = "flag")]
    pub enable_hr: Option<bool>,
    pub eta: Option<f64>,
    pub s_churn: Option<f64>,
    pub s_noise: Option<f64>,
    pub s_min_uncond: Option<f64>,
    #[schema(value_type = Option<Object>)]
    pub override_settings: Option<Map<String, Value>>,
    pub script_name: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub alwayson_scripts: Option<Map<String, Value>>,
    pub refiner_checkpoint: Option<String>,
    pub infotext: Option<String>,
    #[serde(deserialize_with = "flag")]
    pub send_images: Option<bool>,
    // img2img
    pub init_images: Option<Vec<String>>,
    pub mask: Option<String>,
    pub denoising_strength: Option<f64>,
    pub resize_mode: Option<i64>,
    pub mask_blur: Option<f64>,
    pub mask_blur_x: Option<f64>,
    pub mask_blur_y: Option<f64>,
    #[serde(deserialize_with = "flag")]
    pub inpainting_mask_invert: Option<bool>,
    pub inpainting_fill: Option<i64>,
    #[serde(deserialize_with = "flag")]
    pub inpaint_full_res: Option<bool>,
    pub inpaint_full_res_padding: Option<u32>,
    pub initial_noise_multiplier: Option<f64>,
    #[serde(deserialize_with = "flag")]
    pub include_init_images: Option<bool>,
}

/// A1111 (pydantic) takes `true`/`false` and `0`/`1` alike for its flags.
fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(b)),
        Some(Value::Number(n)) if n.as_f64() == Some(0.0) => Ok(Some(false)),
        Some(Value::Number(n)) if n.as_f64() == Some(1.0) => Ok(Some(true)),
        Some(other) => Err(serde::de::Error::custom(format!(
            "expected a boolean, got {other}"
        ))),
    }
}

/// A translated request: what to submit, and how to answer.
#[derive(Debug)]
pub struct Translated {
    pub request: SubmitRequest,
    /// The start image and mask when the translation made them (decoded, as bytes).
    pub files: InputFiles,
    /// `send_images: false` answers without image data.
    pub send_images: bool,
    pub scheduler: SchedulerKind,
}

fn refuse(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid(field, message)
}

/// Override settings that change nothing about the pixels sdq makes (saving, naming,
/// previews); any other key must match what sdq does or is refused.
const HARMLESS_SETTINGS: &[&str] = &[
    "samples_save",
    "grid_save",
    "return_grid",
    "enable_pnginfo",
    "save_txt",
    "do_not_show_images",
    "live_previews_enable",
    "show_progress_every_n_steps",
    "jpeg_quality",
    "save_to_dirs",
    "samples_filename_pattern",
    "directories_filename_pattern",
    "outdir_samples",
    "outdir_txt2img_samples",
    "outdir_img2img_samples",
    "sd_checkpoint_hash",
];

/// Normalises an A1111 checkpoint title (`name.safetensors [hash]`) to a model id.
pub fn checkpoint_name(title: &str) -> String {
    let name = title.trim();
    let name = match name.rsplit_once(" [") {
        Some((head, tail)) if tail.ends_with(']') => head,
        _ => name,
    };
    let name = name
        .strip_suffix(".safetensors")
        .or_else(|| name.strip_suffix(".ckpt"))
        .unwrap_or(name);
    name.to_string()
}

/// What A1111 settings select for a job.
#[derive(Debug, Default, PartialEq)]
pub struct Selected {
    /// `sd_model_checkpoint`.
    pub model: Option<String>,
    /// `sd_vae`: a VAE of the models directory, or `none` (the checkpoint's own).
    pub vae: Option<String>,
    /// `CLIP_stop_at_last_layers`.
    pub clip_skip: Option<u32>,
}

/// Checks A1111 settings (`override_settings`, or a `POST /options` body, whose errors
/// name keys after `prefix`); returns what they select.
pub fn check_settings(settings: &Map<String, Value>, prefix: &str) -> Result<Selected, ApiError> {
    let mut model = None;
    let mut vae = None;
    let mut clip_skip = None;
    for (key, value) in settings {
        let field = format!("{prefix}{key}");
        let ok = match key.as_str() {
            "sd_model_checkpoint" => {
                match value {
                    Value::String(s) if !s.trim().is_empty() => model = Some(checkpoint_name(s)),
                    Value::Null => {}
                    Value::String(_) => {}
                    _ => return Err(refuse(&field, "sd_model_checkpoint must be a model name")),
                }
                true
            }
            "CLIP_stop_at_last_layers" => match value {
                Value::Null => true,
                v => match v.as_u64() {
                    Some(n @ 1..=12) => {
                        clip_skip = (n > 1).then_some(n as u32);
                        true
                    }
                    _ => {
                        return Err(refuse(
                            &field,
                            "CLIP_stop_at_last_layers must be a whole number from 1 to 12",
                        ))
                    }
                },
            },
            "eta_noise_seed_delta" => value.is_null() || value.as_f64() == Some(0.0),
            "eta_ancestral" => value.is_null() || value.as_f64() == Some(1.0),
            "eta_ddim" => value.is_null() || value.as_f64() == Some(0.0),
            // "Automatic" pairs a VAE named like the checkpoint (the default); "None" keeps
            // the checkpoint's own; any other name is a VAE of the models directory.
            "sd_vae" => match value {
                Value::Null => true,
                Value::String(s) => {
                    match s.trim() {
                        "" | "Automatic" => {}
                        "None" => vae = Some("none".to_string()),
                        name => vae = Some(checkpoint_name(name)),
                    }
                    true
                }
                _ => return Err(refuse(&field, "sd_vae must be a VAE name")),
            },
            "samples_format" => value.is_null() || value.as_str() == Some("png"),
            k if HARMLESS_SETTINGS.contains(&k) => true,
            _ => {
                return Err(refuse(
                    &field,
                    format!("sdq does not implement the setting '{key}'"),
                ))
            }
        };
        if !ok {
            return Err(refuse(
                &field,
                format!("sdq cannot honour {key} = {value}; leave it at its default"),
            ));
        }
    }
    Ok(Selected {
        model,
        vae,
        clip_skip,
    })
}

fn positive(v: Option<f64>) -> bool {
    v.is_some_and(|v| v > 0.0)
}

/// The size an img2img job will have: the request's, else the start image's own
/// (rounded down to 8, as our validation does).
fn target_size(
    width: Option<u32>,
    height: Option<u32>,
    init: &str,
) -> Result<(u32, u32), ApiError> {
    if let (Some(w), Some(h)) = (width, height) {
        return Ok((w, h));
    }
    let bytes = image_ops::unb64(init)
        .map_err(|e| refuse("init_images", format!("init_images[0] is {e}")))?;
    let image = crate::inference::init_image::decode(&bytes, "init_images")
        .map_err(|e| refuse("init_images", e.to_string()))?;
    let (w, h) = crate::inference::init_image::default_size(&image);
    Ok((width.unwrap_or(w as u32), height.unwrap_or(h as u32)))
}

/// Maps an A1111 request onto ours. `default_model` is the caller's default (from
/// `/sdapi/v1/options`), used when `override_settings` names no checkpoint.
pub fn to_submit(
    req: A1111Request,
    mode: Mode,
    default_model: Option<&str>,
) -> Result<Translated, ApiError> {
    // Fields whose non-default values sdq does not implement.
    if req.enable_hr == Some(true) {
        return Err(refuse(
            "enable_hr",
            "hires fix (enable_hr) is not supported by sdq",
        ));
    }
    if req.restore_faces == Some(true) {
        return Err(refuse(
            "restore_faces",
            "face restoration is not supported by sdq",
        ));
    }
    if req.tiling == Some(true) {
        return Err(refuse("tiling", "tiling is not supported by sdq"));
    }
    if positive(req.subseed_strength) {
        return Err(refuse(
            "subseed_strength",
            "variation seeds (subseed_strength > 0) are not supported by sdq",
        ));
    }
    for (field, value, size) in [
        ("seed_resize_from_w", req.seed_resize_from_w, req.width),
        ("seed_resize_from_h", req.seed_resize_from_h, req.height),
    ] {
        if value.is_some_and(|v| v > 0 && Some(v) != size.map(i64::from)) {
            return Err(refuse(
                field,
                "resizing the seed's noise is not supported by sdq",
            ));
        }
    }
    if req.styles.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(refuse("styles", "sdq has no prompt styles"));
    }
    if req
        .script_name
        .as_ref()
        .is_some_and(|s| !s.trim().is_empty())
    {
        return Err(refuse("script_name", "sdq runs no scripts"));
    }
    if let Some((name, _)) = req.alwayson_scripts.as_ref().and_then(|m| m.iter().next()) {
        return Err(refuse(
            &format!("alwayson_scripts.{name}"),
            format!("sdq runs no scripts ('{name}')"),
        ));
    }
    if req
        .refiner_checkpoint
        .as_ref()
        .is_some_and(|s| !s.trim().is_empty() && s != "None")
    {
        return Err(refuse(
            "refiner_checkpoint",
            "refiner models are not supported by sdq",
        ));
    }
    if req.infotext.as_ref().is_some_and(|s| !s.trim().is_empty()) {
        return Err(refuse(
            "infotext",
            "sdq does not apply infotexts; send the fields instead",
        ));
    }
    if positive(req.s_churn) {
        return Err(refuse("s_churn", "s_churn > 0 is not supported by sdq"));
    }
    if req.s_noise.is_some_and(|v| v != 1.0) {
        return Err(refuse(
            "s_noise",
            "s_noise other than 1 is not supported by sdq",
        ));
    }
    if positive(req.s_min_uncond) {
        return Err(refuse(
            "s_min_uncond",
            "s_min_uncond > 0 is not supported by sdq",
        ));
    }
    let selected = match &req.override_settings {
        Some(settings) => check_settings(settings, "override_settings.")?,
        None => Selected::default(),
    };

    let sampler = req
        .sampler_name
        .as_deref()
        .filter(|s| !s.trim().is_empty())
        .or(req
            .sampler_index
            .as_deref()
            .filter(|s| !s.trim().is_empty()))
        .unwrap_or(DEFAULT_SAMPLER);
    let scheduler = from_a1111(sampler, req.scheduler.as_deref()).map_err(|e| {
        let field = match e {
            crate::inference::schedulers::a1111::A1111NameError::UnknownSampler(_) => {
                "sampler_name"
            }
            _ => "scheduler",
        };
        refuse(field, e.to_string())
    })?;
    // A1111 hands `eta` to the samplers that take one; ours fix it.
    if let Some(eta) = req.eta {
        let fixed = match scheduler {
            SchedulerKind::Ddim => Some(0.0),
            SchedulerKind::EulerAncestral | SchedulerKind::DpmPp2mSdeKarras => Some(1.0),
            _ => None,
        };
        if let Some(fixed) = fixed.filter(|f| *f != eta) {
            return Err(refuse(
                "eta",
                format!(
                    "sdq's {} uses eta = {fixed}; got {eta}",
                    scheduler.a1111_name()
                ),
            ));
        }
    }

    let seed = match req.seed {
        None | Some(-1) => None,
        Some(s) if s < -1 => return Err(refuse("seed", "seed must be -1 (random) or at least 0")),
        Some(s) => Some(s as u64),
    };
    let images = req.batch_size.unwrap_or(1) as u64 * req.n_iter.unwrap_or(1) as u64;
    let mut files = InputFiles::default();
    let mut request = SubmitRequest {
        prompt: Some(req.prompt.unwrap_or_default()),
        negative_prompt: req.negative_prompt,
        model: selected.model.or(default_model.map(str::to_string)),
        vae: selected.vae,
        clip_skip: selected.clip_skip,
        width: req.width,
        height: req.height,
        steps: req.steps,
        guidance_scale: req.cfg_scale,
        seed,
        scheduler: Some(scheduler.name().to_string()),
        num_images: Some(images.min(u32::MAX as u64) as u32),
        // A1111 shows live previews by default, and its clients poll `/progress` for
        // `current_image`; sdq's previews cost no VAE decode, so they are always on here.
        previews: Some(true),
        ..Default::default()
    };

    if mode == Mode::Img2Img {
        let init = match req.init_images.as_deref() {
            None | Some([]) => {
                return Err(refuse(
                    "init_images",
                    "img2img needs one image in init_images",
                ))
            }
            Some([one]) => one,
            Some(_) => {
                return Err(refuse(
                    "init_images",
                    "sdq takes exactly one image in init_images",
                ))
            }
        };
        if req.resize_mode.is_some_and(|m| m != 0) {
            return Err(refuse(
                "resize_mode",
                "only resize_mode 0 (just resize) is supported by sdq",
            ));
        }
        if req.initial_noise_multiplier.is_some_and(|v| v != 1.0) {
            return Err(refuse(
                "initial_noise_multiplier",
                "initial_noise_multiplier other than 1 is not supported by sdq",
            ));
        }
        request.init_image = Some(init.clone());
        request.strength = Some(req.denoising_strength.unwrap_or(DEFAULT_STRENGTH));
        if let Some(mask) = req.mask.as_deref().filter(|m| !m.trim().is_empty()) {
            let blur = match (req.mask_blur, req.mask_blur_x, req.mask_blur_y) {
                (Some(b), _, _) => b,
                (None, Some(x), Some(y)) if x != y => {
                    return Err(refuse("mask_blur_x", "sdq blurs masks the same in x and y"))
                }
                (None, Some(x), _) | (None, None, Some(x)) => x,
                (None, None, None) => DEFAULT_MASK_BLUR,
            };
            if !(0.0..=64.0).contains(&blur) {
                return Err(refuse("mask_blur", "mask_blur must be between 0 and 64"));
            }
            let bytes =
                image_ops::unb64(mask).map_err(|e| refuse("mask", format!("mask is {e}")))?;
            let prepared = image_ops::a1111_mask(
                &bytes,
                req.inpainting_mask_invert.unwrap_or(false),
                blur as f32,
            )
            .map_err(|e| refuse("mask", e))?;
            // "Only masked" (A1111's default) is honoured where it equals the whole picture.
            if req.inpaint_full_res != Some(false) {
                let (w, h) = target_size(req.width, req.height, init)?;
                let padding = req.inpaint_full_res_padding.unwrap_or(0);
                let whole = image_ops::only_masked_is_whole_picture(&prepared, padding, w, h)
                    .map_err(|e| refuse("mask", e))?;
                if !whole {
                    return Err(refuse(
                        "inpaint_full_res",
                        "inpaint area 'Only masked' is supported only where its crop is the whole picture; send inpaint_full_res: false",
                    ));
                }
            }
            // A1111's fills: 0 smears the surroundings into the masked area first (its
            // default), 1 starts from the original pixels (what the pipeline does).
            match req.inpainting_fill.unwrap_or(0) {
                0 => {
                    let (w, h) = target_size(req.width, req.height, init)?;
                    // Bounded before any pixel buffer: validation refuses larger anyway.
                    if w == 0 || h == 0 || (w as u64) * (h as u64) > MAX_FILL_PIXELS {
                        return Err(refuse("width", "width × height is out of range"));
                    }
                    let bytes = image_ops::unb64(init)
                        .map_err(|e| refuse("init_images", format!("init_images[0] is {e}")))?;
                    let filled = image_ops::fill_masked(&bytes, &prepared, w, h)
                        .map_err(|e| refuse("init_images", e))?;
                    request.init_image = None;
                    files.init = Some(filled);
                }
                1 => {}
                other => {
                    return Err(refuse(
                        "inpainting_fill",
                        format!("inpainting_fill {other} (latent noise / nothing) is not supported by sdq; use 0 (fill) or 1 (original)"),
                    ))
                }
            }
            files.mask = Some(prepared);
        }
    }
    Ok(Translated {
        request,
        files,
        send_images: req.send_images.unwrap_or(true),
        scheduler,
    })
}

/// Our field names to A1111's, for error messages.
pub fn their_field(ours: &str) -> &str {
    match ours {
        "guidance_scale" => "cfg_scale",
        "num_images" => "batch_size",
        "init_image" => "init_images",
        "mask_image" => "mask",
        "strength" => "denoising_strength",
        "model" => "override_settings.sd_model_checkpoint",
        "vae" => "override_settings.sd_vae",
        "clip_skip" => "override_settings.CLIP_stop_at_last_layers",
        "scheduler" => "sampler_name",
        other => other,
    }
}

/// A1111's `Processed.js()`-style info of a finished job, as the object that the
/// response carries as a JSON string.
pub fn info(job: &Job, images: &[(ImageRecord, Vec<u8>)], scheduler: SchedulerKind) -> Value {
    let spec = &job.spec;
    let n = images.len().max(1);
    let seeds: Vec<i64> = if images.is_empty() {
        vec![spec.seed as i64]
    } else {
        images.iter().map(|(r, _)| r.seed).collect()
    };
    let infotexts: Vec<String> = images
        .iter()
        .filter_map(|(_, png)| crate::storage::png_info::read(png).ok()?.parameters)
        .collect();
    let (sampler, schedule) = to_a1111(scheduler);
    let timestamp =
        chrono::DateTime::from_timestamp_millis(job.started_at.unwrap_or(job.created_at))
            .map(|t| t.format("%Y%m%d%H%M%S").to_string())
            .unwrap_or_default();
    json!({
        "prompt": spec.prompt,
        "all_prompts": vec![&spec.prompt; n],
        "negative_prompt": spec.negative_prompt,
        "all_negative_prompts": vec![&spec.negative_prompt; n],
        "seed": seeds[0],
        "all_seeds": seeds,
        "subseed": -1,
        "all_subseeds": vec![-1; n],
        "subseed_strength": 0,
        "width": spec.width,
        "height": spec.height,
        "sampler_name": sampler,
        "scheduler": schedule,
        "cfg_scale": spec.guidance_scale,
        "steps": spec.steps,
        "batch_size": spec.num_images,
        "restore_faces": false,
        "face_restoration_model": null,
        "sd_model_name": spec.model,
        "sd_model_hash": null,
        "sd_vae_name": null,
        "sd_vae_hash": null,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": spec.strength,
        "extra_generation_params": {},
        "index_of_first_image": 0,
        "infotexts": infotexts,
        "styles": [],
        "job_timestamp": timestamp,
        "clip_skip": 1,
        "is_using_inpainting_conditioning": false,
        "version": concat!("sdq ", env!("CARGO_PKG_VERSION")),
        "job_id": job.id,
        "status": job.status,
    })
}

/// A1111's txt2img / img2img response: raw base64 PNGs (with their `parameters` chunk),
/// the request as received (start images left out unless `include_init_images`), and the
/// info as a JSON string.
pub fn response(
    job: &Job,
    images: &[(ImageRecord, Vec<u8>)],
    scheduler: SchedulerKind,
    send_images: bool,
    mut echo: Value,
) -> Value {
    if let Some(obj) = echo.as_object_mut() {
        if obj.get("include_init_images") != Some(&Value::Bool(true)) {
            for key in ["init_images", "mask"] {
                if obj.contains_key(key) {
                    obj.insert(key.into(), Value::Null);
                }
            }
        }
    }
    let data: Vec<String> = if send_images {
        images.iter().map(|(_, png)| image_ops::b64(png)).collect()
    } else {
        Vec::new()
    };
    json!({
        "images": data,
        "parameters": echo,
        "info": info(job, images, scheduler).to_string(),
    })
}

/// `/sdapi/v1/progress` for a caller: its running job (if any) and how many of its jobs
/// are waiting. `now_ms` is the current time; `current_image` a preview, base64.
pub fn progress(
    running: Option<&Job>,
    waiting: usize,
    now_ms: i64,
    current_image: Option<String>,
) -> Value {
    let job_count = waiting + usize::from(running.is_some());
    let (mut progress, mut eta, mut step, mut total) = (0.0, 0.0, 0, 0);
    let mut interrupted = false;
    let mut timestamp = "0".to_string();
    let mut job_name = String::new();
    if let Some(job) = running.filter(|j| j.status == JobStatus::Running) {
        step = job.progress_step;
        total = job.progress_total;
        interrupted = job.cancel_requested;
        job_name = job.id.to_string();
        let started = job.started_at.unwrap_or(now_ms);
        timestamp = chrono::DateTime::from_timestamp_millis(started)
            .map(|t| t.format("%Y%m%d%H%M%S").to_string())
            .unwrap_or(timestamp);
        if total > 0 {
            progress = (step as f64 / total as f64).clamp(0.0, 1.0);
        }
        if step > 0 {
            let elapsed = (now_ms - started).max(0) as f64 / 1000.0;
            eta = elapsed / step as f64 * (total - step).max(0) as f64;
        }
    }
    json!({
        "progress": progress,
        "eta_relative": eta,
        "state": {
            "skipped": false,
            "interrupted": interrupted,
            "stopping_generation": false,
            "job": job_name,
            "job_count": job_count,
            "job_timestamp": timestamp,
            "job_no": 0,
            "sampling_step": step,
            "sampling_steps": total,
        },
        "current_image": current_image,
        "textinfo": null,
    })
}

/// A1111's `/png-info` answer: the `parameters` text, the other text chunks, and the
/// text parsed into A1111's keys (`Prompt`, `Negative prompt`, each setting, and the size
/// split into `Size-1` / `Size-2`).
pub fn png_info_response(info: &crate::storage::png_info::PngInfo) -> Value {
    let text = info.parameters.clone().unwrap_or_default();
    let items: Map<String, Value> = info
        .chunks
        .iter()
        .filter(|(k, _)| k != "parameters")
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let mut parameters = Map::new();
    if info.parameters.is_some() {
        let parsed = crate::storage::png_info::parse_parameters(&text);
        parameters.insert("Prompt".into(), json!(parsed.prompt));
        parameters.insert("Negative prompt".into(), json!(parsed.negative_prompt));
        for (key, value) in &parsed.settings {
            parameters.insert(key.clone(), json!(value));
            if key == "Size" {
                if let Some((w, h)) = value.split_once('x') {
                    parameters.insert("Size-1".into(), json!(w));
                    parameters.insert("Size-2".into(), json!(h));
                }
            }
        }
    }
    json!({"info": text, "items": items, "parameters": parameters})
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What webuiapi 0.9.17's `txt2img()` sends with its defaults.
    fn webuiapi_txt2img() -> Value {
        serde_json::from_str(
            r#"{
            "enable_hr": false, "hr_scale": 2, "hr_upscaler": "Latent", "hr_second_pass_steps": 0,
            "hr_resize_x": 0, "hr_resize_y": 0, "hr_checkpoint_name": null, "hr_sampler_name": null,
            "hr_scheduler": null, "hr_prompt": "", "hr_negative_prompt": "", "denoising_strength": 0.7,
            "firstphase_width": 0, "firstphase_height": 0, "prompt": "a fox", "styles": [],
            "seed": -1, "subseed": -1, "subseed_strength": 0.0, "seed_resize_from_h": 0,
            "seed_resize_from_w": 0, "batch_size": 2, "n_iter": 3, "steps": 20, "cfg_scale": 7.0,
            "width": 512, "height": 512, "restore_faces": false, "tiling": false,
            "do_not_save_samples": false, "do_not_save_grid": false, "negative_prompt": "",
            "eta": 1.0, "s_churn": 0, "s_tmax": 0, "s_tmin": 0, "s_noise": 1,
            "override_settings": {}, "override_settings_restore_afterwards": true,
            "sampler_name": "Euler a", "scheduler": "automatic", "sampler_index": "Euler a",
            "script_name": null, "script_args": [], "send_images": true, "save_images": false,
            "alwayson_scripts": {}
        }"#,
        )
        .unwrap()
    }

    fn webuiapi_img2img() -> Value {
        let mut v = webuiapi_txt2img();
        let o = v.as_object_mut().unwrap();
        for k in ["enable_hr", "hr_scale", "hr_upscaler", "firstphase_width"] {
            o.remove(k);
        }
        let png = image_ops::b64(&{
            let img = image::RgbImage::from_fn(8, 8, |x, _| image::Rgb([x as u8 * 30, 0, 0]));
            let mut out = std::io::Cursor::new(Vec::new());
            img.write_to(&mut out, image::ImageFormat::Png).unwrap();
            out.into_inner()
        });
        o.insert(
            "init_images".into(),
            json!([format!("data:image/png;base64,{png}")]),
        );
        o.insert("resize_mode".into(), json!(0));
        o.insert("denoising_strength".into(), json!(0.75));
        o.insert("image_cfg_scale".into(), json!(1.5));
        o.insert("mask_blur".into(), json!(4));
        o.insert("inpainting_fill".into(), json!(0));
        o.insert("inpaint_full_res".into(), json!(true));
        o.insert("inpaint_full_res_padding".into(), json!(0));
        o.insert("inpainting_mask_invert".into(), json!(0));
        o.insert("initial_noise_multiplier".into(), json!(1));
        o.insert("include_init_images".into(), json!(false));
        v
    }

    fn translate(body: Value, mode: Mode) -> Result<Translated, ApiError> {
        let req: A1111Request = serde_json::from_value(body).expect("parses");
        to_submit(req, mode, Some("owner-default"))
    }

    fn with(mut body: Value, key: &str, value: Value) -> Value {
        body[key] = value;
        body
    }

    #[test]
    fn webuiapi_defaults_map_onto_a_job() {
        let t = translate(webuiapi_txt2img(), Mode::Txt2Img).unwrap();
        let r = &t.request;
        assert_eq!(r.prompt.as_deref(), Some("a fox"));
        assert_eq!(
            (r.width, r.height, r.steps),
            (Some(512), Some(512), Some(20))
        );
        assert_eq!(r.guidance_scale, Some(7.0));
        assert_eq!(r.seed, None, "-1 is a random seed");
        assert_eq!(r.num_images, Some(6), "batch_size × n_iter");
        assert_eq!(r.scheduler.as_deref(), Some("euler-a"));
        assert_eq!(r.model.as_deref(), Some("owner-default"));
        assert!(r.init_image.is_none() && t.send_images);
    }

    #[test]
    fn fields_map_as_a_table() {
        // (field, value, what the submit request then holds)
        type Check = fn(&Translated) -> bool;
        let cases: Vec<(&str, Value, Check)> = vec![
            ("seed", json!(42), |t| t.request.seed == Some(42)),
            ("seed", json!(null), |t| t.request.seed.is_none()),
            ("sampler_name", json!("Heun"), |t| {
                t.request.scheduler.as_deref() == Some("heun")
            }),
            ("sampler_name", json!(null), |t| {
                t.request.scheduler.as_deref() == Some("euler-a")
            }),
            ("scheduler", json!("Uniform"), |t| {
                t.request.scheduler.as_deref() == Some("euler-a")
            }),
            ("n_iter", json!(null), |t| t.request.num_images == Some(2)),
            ("negative_prompt", json!("blurry"), |t| {
                t.request.negative_prompt.as_deref() == Some("blurry")
            }),
            (
                "override_settings",
                json!({"sd_model_checkpoint": "tiny-sd2.safetensors [abc123]"}),
                |t| t.request.model.as_deref() == Some("tiny-sd2"),
            ),
            (
                "override_settings",
                json!({"CLIP_stop_at_last_layers": 1, "samples_save": false}),
                |t| t.request.model.as_deref() == Some("owner-default"),
            ),
            ("send_images", json!(false), |t| !t.send_images),
            ("send_images", json!(0), |t| !t.send_images),
            ("eta", json!(null), |t| {
                t.scheduler == SchedulerKind::EulerAncestral
            }),
            ("styles", json!(null), |_| true),
            ("alwayson_scripts", json!(null), |_| true),
            ("seed_resize_from_w", json!(512), |_| true),
            ("hr_scale", json!(4), |_| true),
            ("some_future_field", json!({"x": 1}), |_| true),
            (
                "override_settings",
                json!({"CLIP_stop_at_last_layers": 2, "sd_vae": "vae-ft-mse.safetensors"}),
                |t| {
                    t.request.clip_skip == Some(2) && t.request.vae.as_deref() == Some("vae-ft-mse")
                },
            ),
            ("override_settings", json!({"sd_vae": "None"}), |t| {
                t.request.vae.as_deref() == Some("none")
            }),
        ];
        for (field, value, check) in cases {
            let body = with(webuiapi_txt2img(), field, value.clone());
            let t =
                translate(body, Mode::Txt2Img).unwrap_or_else(|e| panic!("{field}={value}: {e}"));
            assert!(check(&t), "{field}={value}: {:?}", t.request);
        }
        // Both sampler fields null: A1111's own default sampler.
        let mut body = with(webuiapi_txt2img(), "sampler_name", json!(null));
        body["sampler_index"] = json!(null);
        let t = translate(body, Mode::Txt2Img).unwrap();
        assert_eq!(t.request.scheduler.as_deref(), Some("euler"));
        // DDIM runs with eta 0; webuiapi's eta 1 would be another image in A1111.
        let ddim = with(webuiapi_txt2img(), "sampler_name", json!("DDIM"));
        assert!(translate(with(ddim.clone(), "eta", json!(0)), Mode::Txt2Img).is_ok());
        assert!(translate(ddim, Mode::Txt2Img).is_err());
    }

    #[test]
    fn unsupported_values_are_refused_by_name() {
        let cases: Vec<(&str, Value, &str)> = vec![
            ("enable_hr", json!(true), "enable_hr"),
            ("restore_faces", json!(true), "restore_faces"),
            ("restore_faces", json!(1), "restore_faces"),
            ("tiling", json!(true), "tiling"),
            ("subseed_strength", json!(0.3), "subseed_strength"),
            ("seed_resize_from_h", json!(256), "seed_resize_from_h"),
            ("styles", json!(["cinematic"]), "styles"),
            ("script_name", json!("x/y/z plot"), "script_name"),
            (
                "alwayson_scripts",
                json!({"ControlNet": {"args": []}}),
                "alwayson_scripts.ControlNet",
            ),
            ("s_churn", json!(0.5), "s_churn"),
            ("s_noise", json!(0.9), "s_noise"),
            ("eta", json!(0.5), "eta"),
            ("sampler_name", json!("DPM adaptive"), "sampler_name"),
            ("scheduler", json!("karras"), "scheduler"),
            ("scheduler", json!("exponential"), "scheduler"),
            ("seed", json!(-5), "seed"),
            (
                "override_settings",
                json!({"CLIP_stop_at_last_layers": 13}),
                "override_settings.CLIP_stop_at_last_layers",
            ),
            (
                "override_settings",
                json!({"sd_vae": 5}),
                "override_settings.sd_vae",
            ),
            (
                "override_settings",
                json!({"img2img_color_correction": true}),
                "override_settings.img2img_color_correction",
            ),
            (
                "refiner_checkpoint",
                json!("xl-refiner"),
                "refiner_checkpoint",
            ),
            ("infotext", json!("a cat\nSteps: 2"), "infotext"),
            ("s_min_uncond", json!(1.0), "s_min_uncond"),
        ];
        for (field, value, named) in cases {
            let body = with(webuiapi_txt2img(), field, value.clone());
            match translate(body, Mode::Txt2Img) {
                Err(ApiError::Invalid { field: Some(f), .. }) => {
                    assert_eq!(f, named, "{field}={value}")
                }
                other => panic!("{field}={value}: {other:?}"),
            }
        }
    }

    #[test]
    fn img2img_maps_start_image_strength_and_mask() {
        let t = translate(webuiapi_img2img(), Mode::Img2Img).unwrap();
        assert!(t
            .request
            .init_image
            .as_deref()
            .unwrap()
            .starts_with("data:image/png;base64,"));
        assert_eq!(t.request.strength, Some(0.75));
        assert!(t.files.mask.is_none());

        let mask = webuiapi_img2img()["init_images"][0].clone();
        let masked = with(
            with(
                with(webuiapi_img2img(), "mask", mask),
                "inpaint_full_res",
                json!(false),
            ),
            "inpainting_fill",
            json!(1),
        );
        let t = translate(masked.clone(), Mode::Img2Img).unwrap();
        assert!(t.files.mask.is_some());
        let inverted = with(masked.clone(), "inpainting_mask_invert", json!(1));
        let t2 = translate(inverted, Mode::Img2Img).unwrap();
        assert_ne!(t.files.mask, t2.files.mask);

        // "Only masked" is honoured when its crop is the whole picture (a mask reaching
        // across the image), refused for a small patch.
        let patch = |x0: u32, x1: u32| {
            let img = image::GrayImage::from_fn(64, 64, |x, y| {
                image::Luma([if (x0..x1).contains(&x) && (20..30).contains(&y) {
                    255
                } else {
                    0
                }])
            });
            let mut out = std::io::Cursor::new(Vec::new());
            img.write_to(&mut out, image::ImageFormat::Png).unwrap();
            json!(image_ops::b64(&out.into_inner()))
        };
        let only_masked = with(
            with(masked.clone(), "inpaint_full_res", json!(true)),
            "mask_blur",
            json!(0),
        );
        assert!(translate(
            with(only_masked.clone(), "mask", patch(0, 64)),
            Mode::Img2Img
        )
        .is_ok());
        let cases: Vec<(Value, &str)> = vec![
            (
                with(only_masked.clone(), "mask", patch(20, 30)),
                "inpaint_full_res",
            ),
            (
                with(masked.clone(), "inpainting_fill", json!(2)),
                "inpainting_fill",
            ),
            (with(masked.clone(), "mask", json!("%%%")), "mask"),
            (with(masked.clone(), "mask_blur", json!(500)), "mask_blur"),
            (
                with(webuiapi_img2img(), "resize_mode", json!(1)),
                "resize_mode",
            ),
            (
                with(webuiapi_img2img(), "initial_noise_multiplier", json!(1.2)),
                "initial_noise_multiplier",
            ),
            (
                with(webuiapi_img2img(), "init_images", json!([])),
                "init_images",
            ),
            (
                with(webuiapi_img2img(), "init_images", json!(["a", "b"])),
                "init_images",
            ),
            (
                with(webuiapi_img2img(), "init_images", json!(null)),
                "init_images",
            ),
        ];
        for (body, named) in cases {
            match translate(body, Mode::Img2Img) {
                Err(ApiError::Invalid { field: Some(f), .. }) => assert_eq!(f, named),
                other => panic!("{named}: {other:?}"),
            }
        }
    }

    #[test]
    fn png_info_answers_in_a1111_keys() {
        let info = crate::storage::png_info::PngInfo {
            parameters: Some("a cat\nNegative prompt: dog\nSteps: 4, Size: 64x48, Seed: 3".into()),
            spec: None,
            chunks: vec![
                ("parameters".into(), "...".into()),
                ("sdq".into(), "{}".into()),
            ],
        };
        let r = png_info_response(&info);
        assert_eq!(r["parameters"]["Prompt"], "a cat");
        assert_eq!(r["parameters"]["Negative prompt"], "dog");
        assert_eq!(r["parameters"]["Steps"], "4");
        assert_eq!(
            (
                r["parameters"]["Size-1"].as_str(),
                r["parameters"]["Size-2"].as_str()
            ),
            (Some("64"), Some("48"))
        );
        assert_eq!(r["items"], json!({"sdq": "{}"}));
        let none = png_info_response(&Default::default());
        assert_eq!(none, json!({"info": "", "items": {}, "parameters": {}}));
    }

    #[test]
    fn checkpoint_titles_become_model_ids() {
        for (title, id) in [
            ("tiny", "tiny"),
            (
                "v1-5-pruned-emaonly.safetensors [6ce0161689]",
                "v1-5-pruned-emaonly",
            ),
            (" sd-turbo [abc] ", "sd-turbo"),
            ("model.ckpt", "model"),
            ("a [b] c", "a [b] c"),
        ] {
            assert_eq!(checkpoint_name(title), id);
        }
        assert_eq!(their_field("guidance_scale"), "cfg_scale");
        assert_eq!(their_field("width"), "width");
    }

    fn job(status: JobStatus, step: i64, total: i64) -> Job {
        Job {
            id: uuid::Uuid::nil(),
            owner: "local".into(),
            status,
            spec: crate::queue::JobSpec {
                prompt: "a fox".into(),
                model: "tiny".into(),
                width: 64,
                height: 48,
                steps: 4,
                guidance_scale: 7.5,
                seed: 9,
                scheduler: "euler-a".into(),
                num_images: 2,
                ..Default::default()
            },
            priority: 0,
            attempt: 1,
            max_attempts: 3,
            worker: None,
            cancel_requested: false,
            progress_step: step,
            progress_total: total,
            last_seq: 0,
            error: None,
            timings: None,
            run_at: 0,
            created_at: 1_000,
            started_at: Some(2_000),
            finished_at: None,
        }
    }

    #[test]
    fn progress_reports_the_running_job() {
        let idle = progress(None, 0, 5_000, None);
        assert_eq!(
            (
                idle["progress"].as_f64(),
                idle["state"]["job_count"].as_u64()
            ),
            (Some(0.0), Some(0))
        );
        let running = job(JobStatus::Running, 2, 4);
        let p = progress(Some(&running), 1, 6_000, Some("abc".into()));
        assert_eq!(p["progress"], 0.5);
        assert_eq!(p["eta_relative"], 4.0, "2 steps in 4 s, 2 to go");
        assert_eq!(p["state"]["job_count"], 2);
        assert_eq!(
            (
                p["state"]["sampling_step"].as_i64(),
                p["state"]["sampling_steps"].as_i64()
            ),
            (Some(2), Some(4))
        );
        assert_eq!(p["current_image"], "abc");
    }

    #[test]
    fn response_carries_images_info_and_the_request() {
        let done = job(JobStatus::Succeeded, 4, 4);
        let record = |seed| ImageRecord {
            id: uuid::Uuid::new_v4(),
            job_id: done.id,
            index: 0,
            object_key: String::new(),
            seed,
            width: 64,
            height: 48,
            bytes: 3,
            created_at: 0,
            owner: "local".into(),
            model: "tiny".into(),
            prompt: "a fox".into(),
        };
        let images = vec![(record(9), vec![1, 2, 3]), (record(10), vec![4, 5])];
        let echo = json!({"prompt": "a fox", "init_images": ["xyz"], "mask": "m"});
        let r = response(&done, &images, SchedulerKind::EulerAncestral, true, echo);
        assert_eq!(r["images"], json!(["AQID", "BAU="]));
        assert_eq!(r["parameters"]["init_images"], Value::Null);
        assert_eq!(r["parameters"]["prompt"], "a fox");
        let info: Value = serde_json::from_str(r["info"].as_str().unwrap()).unwrap();
        assert_eq!(info["all_seeds"], json!([9, 10]));
        assert_eq!(info["seed"], 9);
        assert_eq!(info["all_prompts"], json!(["a fox", "a fox"]));
        assert_eq!(info["sampler_name"], "Euler a");
        assert_eq!(info["sd_model_name"], "tiny");
        assert_eq!(
            (info["width"].as_u64(), info["height"].as_u64()),
            (Some(64), Some(48))
        );
        let r = response(
            &done,
            &images,
            SchedulerKind::EulerAncestral,
            false,
            json!({}),
        );
        assert_eq!(r["images"], json!([]));
    }
}
