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
mod tests;
