//! Turning a request body into a `JobSpec`, or into a 4xx naming the field at fault.
//!
//! Every bound here exists so that no request can make a worker run out of memory or spin
//! for hours: sizes, steps and image counts are capped before anything is queued.

use serde::Deserialize;

use super::{ApiError, ApiSettings};
use crate::inference::catalogue::{base_family, choose_vae};
use crate::inference::{hub, SchedulerKind, VaeTiling};
use crate::queue::{JobSpec, LoraRef, WebhookEvent};

/// Bodies larger than this are refused with 413 before parsing (room for a base64 start
/// image and mask).
pub const MAX_BODY_BYTES: usize = 16 << 20;

/// Longest `user` label a job keeps.
const MAX_USER_CHARS: usize = 256;

/// Upper bounds on what one job may ask for.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_side: u32,
    /// Per image: bounds VAE attention memory, which grows with the square of the area.
    pub max_pixels: u64,
    /// Per job, all images together.
    pub max_batch_pixels: u64,
    pub max_steps: u32,
    pub max_images: u32,
    pub max_prompt_chars: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_side: 2048,
            max_pixels: 1024 * 1024,
            max_batch_pixels: 4 * 1024 * 1024,
            max_steps: 150,
            max_images: 8,
            max_prompt_chars: 4000,
        }
    }
}

/// The body of `POST /v1/jobs`. Everything but `prompt` has a default (and with
/// `from_image`, the prompt does too).
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default)]
    pub negative_prompt: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    // The bounds in `schema(...)` are those of `Limits::default()`, for the OpenAPI
    // document; the checks below are what enforces them.
    #[serde(default)]
    #[schema(minimum = 64, maximum = 2048, multiple_of = 8)]
    pub width: Option<u32>,
    #[serde(default)]
    #[schema(minimum = 64, maximum = 2048, multiple_of = 8)]
    pub height: Option<u32>,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 150)]
    pub steps: Option<u32>,
    #[serde(default)]
    #[schema(minimum = 0, maximum = 30)]
    pub guidance_scale: Option<f64>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub scheduler: Option<String>,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 8)]
    pub num_images: Option<u32>,
    /// Above 10 needs an admin key.
    #[serde(default)]
    #[schema(minimum = -100, maximum = 100)]
    pub priority: Option<i32>,
    #[serde(default)]
    pub long_prompt: Option<String>,
    /// img2img / inpaint: the start image, base64 (a `data:` URL is fine too).
    #[serde(default)]
    pub init_image: Option<String>,
    /// Inpaint: the mask, base64; white is repainted.
    #[serde(default)]
    pub mask_image: Option<String>,
    /// img2img / inpaint: 0 < strength ≤ 1 (default 0.8, inpaint 1.0).
    #[serde(default)]
    #[schema(exclusive_minimum = 0, maximum = 1)]
    pub strength: Option<f64>,
    /// A label of the caller's own for whoever asked (an end-user id), stored with the job.
    #[serde(default)]
    pub user: Option<String>,
    /// img2img / inpaint: a gallery image of the same owner as the start image.
    #[serde(default)]
    pub init_image_id: Option<String>,
    /// Inpaint: a gallery image of the same owner as the mask.
    #[serde(default)]
    pub mask_image_id: Option<String>,
    /// Re-run the recipe of this gallery image; the other fields given override it.
    #[serde(default)]
    pub from_image: Option<String>,
    // Models directory extras (issue 16): LoRAs, VAE override, clip skip.
    /// LoRAs of the models directory at weights; `<lora:name:w>` in the prompt adds more.
    #[serde(default)]
    pub loras: Option<Vec<LoraRequest>>,
    /// A VAE of the models directory to decode with instead of the model's own.
    #[serde(default)]
    pub vae: Option<String>,
    /// A1111's clip skip: 1 (last layer, the default) to 12.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 12)]
    pub clip_skip: Option<u32>,
    /// An http(s) URL to post the job to as it changes (signed; see the README).
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// Which changes to post: a list (or, in multipart, a comma-separated string) of
    /// `started`, `progress`, `completed`; default `["completed"]`.
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>)]
    pub webhook_events: Option<serde_json::Value>,
    /// Publish live `preview` events while the job runs (default false).
    #[serde(default)]
    pub previews: Option<bool>,
    /// With `previews`: one preview every this many steps, 1 to `steps` (default every
    /// step up to 10 steps, else about ten in all).
    #[serde(default)]
    pub preview_every: Option<u32>,
    /// VAE tiling for large images: `off`, `on` (tiles whenever the image is larger than
    /// the VAE's `sample_size`, as diffusers' `enable_tiling()`), or `auto` (the default:
    /// tiles only when one full-resolution VAE feature map would exceed 1 GiB, i.e. above
    /// about 2 megapixels for SD 1.5 / SDXL in f32).
    #[serde(default)]
    #[schema(example = "auto")]
    pub vae_tiling: Option<String>,
}

/// One entry of `loras`.
#[derive(Debug, Clone, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoraRequest {
    pub name: String,
    #[serde(default = "one")]
    pub weight: f64,
}

fn one() -> f64 {
    1.0
}

/// How many LoRAs one job may apply.
pub const MAX_LORAS: usize = 8;

/// A request's validated LoRAs, VAE and clip skip.
type Extras = (Vec<LoraRef>, Option<String>, Option<u32>);

/// Checks the models-directory extras of a request: every LoRA (from `loras` and the
/// prompt's tags) and the VAE must be in the catalogue, usable, and of the model's
/// family when both families are known.
fn check_extras(
    settings: &ApiSettings,
    model: &str,
    prompt: &str,
    loras: Option<Vec<LoraRequest>>,
    vae: Option<String>,
    clip_skip: Option<u32>,
) -> Result<Extras, ApiError> {
    use crate::inference::catalogue::Kind;
    let (_, tags) = crate::inference::extra_networks::split_lora_tags(prompt)
        .map_err(|e| ApiError::invalid("prompt", e.to_string()))?;
    let mut all: Vec<LoraRef> = loras
        .unwrap_or_default()
        .into_iter()
        .map(|l| LoraRef {
            name: l.name,
            weight: l.weight,
        })
        .collect();
    all.extend(tags.into_iter().map(|t| LoraRef {
        name: t.name,
        weight: t.weight,
    }));
    if all.len() > MAX_LORAS {
        return Err(ApiError::invalid(
            "loras",
            format!("at most {MAX_LORAS} LoRAs per job"),
        ));
    }
    if let Some(clip_skip) = clip_skip {
        if !(1..=12).contains(&clip_skip) {
            return Err(ApiError::invalid(
                "clip_skip",
                "clip_skip must be between 1 (last layer) and 12",
            ));
        }
    }
    let catalogue = settings.models_dir.read();
    // A1111's "Automatic": a VAE named like the checkpoint goes with it unless the job
    // names another, or "none" (the checkpoint's own).
    let vae = choose_vae(vae, || catalogue.paired_vae(model));
    if all.is_empty() && vae.is_none() {
        return Ok((all, vae, clip_skip));
    }
    let model_family = model_family(&catalogue, model);
    for (i, lora) in all.iter().enumerate() {
        if !lora.weight.is_finite() || lora.weight.abs() > 10.0 {
            return Err(ApiError::invalid(
                "loras",
                format!("LoRA '{}': weight must be between -10 and 10", lora.name),
            ));
        }
        if all[..i].iter().any(|other| other.name == lora.name) {
            return Err(ApiError::invalid(
                "loras",
                format!("LoRA '{}' is given twice", lora.name),
            ));
        }
        let Some(entry) = catalogue.find(Kind::Lora, &lora.name) else {
            let names: Vec<_> = catalogue.loras.iter().map(|e| e.name.as_str()).collect();
            return Err(ApiError::invalid(
                "loras",
                format!(
                    "no LoRA named '{}' in the models directory; available: {}",
                    lora.name,
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                ),
            ));
        };
        if let Some(error) = &entry.error {
            return Err(ApiError::invalid(
                "loras",
                format!("LoRA '{}' cannot be used: {error}", lora.name),
            ));
        }
        if let (Some(theirs), Some(ours)) = (entry.family.as_deref(), model_family.as_deref()) {
            if base_family(theirs) != base_family(ours) {
                return Err(ApiError::invalid(
                    "loras",
                    format!(
                        "LoRA '{}' is for {theirs} models but '{model}' is {ours}",
                        lora.name
                    ),
                ));
            }
        }
    }
    if let Some(name) = &vae {
        match catalogue.find(Kind::Vae, name) {
            None => {
                return Err(ApiError::invalid(
                    "vae",
                    format!("no VAE named '{name}' in the models directory"),
                ))
            }
            Some(e) if e.error.is_some() => {
                return Err(ApiError::invalid(
                    "vae",
                    format!(
                        "VAE '{name}' cannot be used: {}",
                        e.error.as_deref().unwrap_or_default()
                    ),
                ))
            }
            Some(_) => {}
        }
    }
    Ok((all, vae, clip_skip))
}

/// The family of a model a request names, when it is known.
fn model_family(catalogue: &crate::inference::catalogue::Catalogue, model: &str) -> Option<String> {
    if let Some(f) = hub::family(model) {
        return Some(f.to_string());
    }
    catalogue
        .find(crate::inference::catalogue::Kind::Checkpoint, model)
        .and_then(|e| e.family.clone())
}

/// Start image and mask bytes that did not come as base64 fields: multipart file parts,
/// gallery images, or the inputs of a re-run recipe.
#[derive(Debug, Clone, Default)]
pub struct InputFiles {
    pub init: Option<Vec<u8>>,
    pub mask: Option<Vec<u8>>,
}

/// Formats an input image may have; anything else is 415.
const INPUT_FORMATS: &[image::ImageFormat] = &[
    image::ImageFormat::Png,
    image::ImageFormat::Jpeg,
    image::ImageFormat::WebP,
];

/// Largest start image or mask, in pixels, checked from the header before decoding.
pub const MAX_INPUT_PIXELS: u64 = 4096 * 4096;

/// A validated submission: the spec (input keys still unset), its priority, and the
/// decoded input images to store before the job is queued.
#[derive(Debug)]
pub struct Submission {
    pub spec: JobSpec,
    pub priority: i32,
    pub init_image: Option<Vec<u8>>,
    pub mask_image: Option<Vec<u8>>,
}

/// Decodes a base64 (or `data:…;base64,`) field into bytes.
pub fn base64_field(field: &str, value: &str) -> Result<Vec<u8>, ApiError> {
    use base64::Engine;
    let data = match value.split_once(";base64,") {
        Some((prefix, data)) if prefix.starts_with("data:") => data,
        _ => value,
    };
    // Clients wrap base64 at 76 columns; whitespace never matters here.
    let data: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| ApiError::invalid(field, format!("{field} is not valid base64: {e}")))
}

/// Checks that bytes form a readable PNG, JPEG or WebP image of bounded size, reading the
/// header before anything is decoded; returns the image's own size.
pub fn input_image(field: &str, bytes: &[u8]) -> Result<(u32, u32), ApiError> {
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ApiError::invalid(field, format!("{field} cannot be read: {e}")))?;
    match reader.format() {
        Some(format) if INPUT_FORMATS.contains(&format) => {}
        Some(format) => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "{field} is {format:?}; send PNG, JPEG or WebP"
            )))
        }
        None => {
            return Err(ApiError::invalid(
                field,
                format!("{field} is not a PNG, JPEG or WebP image"),
            ))
        }
    }
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| ApiError::invalid(field, format!("{field} is not a readable image: {e}")))?;
    let max_side = crate::inference::init_image::MAX_INPUT_SIDE;
    if w == 0 || h == 0 || w > max_side || h > max_side || w as u64 * h as u64 > MAX_INPUT_PIXELS {
        return Err(ApiError::invalid(
            field,
            format!("{field} is {w}×{h}; each side must be at most {max_side} pixels"),
        ));
    }
    // Only now decode (bounded again inside): a truncated or corrupt body is caught here,
    // not in the worker.
    crate::inference::init_image::decode(bytes, field)
        .map_err(|e| ApiError::invalid(field, e.to_string()))?;
    Ok((w, h))
}

/// Parses the raw body, naming the offending field when the JSON is well-formed.
pub fn parse_body(bytes: &[u8]) -> Result<SubmitRequest, ApiError> {
    parse_json(bytes)
}

/// Parses a JSON body into `T`: malformed JSON is a 400, a well-formed body with a missing,
/// unknown or mistyped field a 422 naming that field.
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(&mut de);
    match parsed {
        Ok(req) => {
            de.end()
                .map_err(|e| ApiError::MalformedJson(format!("malformed JSON: {e}")))?;
            Ok(req)
        }
        Err(err) => {
            let path = err.path().to_string();
            let inner = err.into_inner();
            if inner.is_syntax() || inner.is_eof() {
                return Err(ApiError::MalformedJson(format!("malformed JSON: {inner}")));
            }
            let message = inner.to_string();
            // serde reports a missing or unknown field at the parent path; name it ourselves.
            let field = if let Some(name) = quoted(&message, "missing field `") {
                name
            } else if let Some(name) = quoted(&message, "unknown field `") {
                name
            } else if path == "." {
                String::new()
            } else {
                path
            };
            Err(ApiError::Invalid {
                field: (!field.is_empty()).then_some(field),
                message,
            })
        }
    }
}

fn quoted(message: &str, prefix: &str) -> Option<String> {
    let rest = message.split(prefix).nth(1)?;
    Some(rest.split('`').next()?.to_string())
}

impl SubmitRequest {
    /// Applies defaults and bounds; returns the submission, or the first bad field.
    /// `files` holds start image and mask bytes that did not come as base64 fields.
    pub fn into_submission(
        self,
        settings: &ApiSettings,
        files: InputFiles,
    ) -> Result<Submission, ApiError> {
        let limits = &settings.limits;
        if self.init_image_id.is_some() || self.mask_image_id.is_some() || self.from_image.is_some()
        {
            // Resolved into `files` by the submit path before validation.
            return Err(ApiError::Internal(
                "gallery references must be resolved before validation".into(),
            ));
        }
        let prompt = self
            .prompt
            .ok_or_else(|| ApiError::invalid("prompt", "missing field `prompt`"))?;
        if prompt.trim().is_empty() {
            return Err(ApiError::invalid("prompt", "prompt must not be empty"));
        }
        if prompt.chars().count() > limits.max_prompt_chars {
            return Err(ApiError::invalid(
                "prompt",
                format!(
                    "prompt is longer than {} characters",
                    limits.max_prompt_chars
                ),
            ));
        }
        let negative_prompt = self.negative_prompt.unwrap_or_default();
        if negative_prompt.chars().count() > limits.max_prompt_chars {
            return Err(ApiError::invalid(
                "negative_prompt",
                format!(
                    "negative_prompt is longer than {} characters",
                    limits.max_prompt_chars
                ),
            ));
        }
        let model = self.model.unwrap_or_else(|| settings.default_model.clone());
        let checkpoint = settings
            .models_dir
            .read()
            .find(crate::inference::catalogue::Kind::Checkpoint, &model)
            .cloned();
        if let Some(error) = checkpoint.as_ref().and_then(|c| c.error.clone()) {
            return Err(ApiError::invalid(
                "model",
                format!("checkpoint '{model}' cannot be used: {error}"),
            ));
        }
        if model != settings.default_model
            && !settings.models.contains(&model)
            && checkpoint.is_none()
        {
            return Err(ApiError::invalid(
                "model",
                format!(
                    "unknown model '{model}'; available: {}",
                    available(settings).join(", ")
                ),
            ));
        }
        let defaults = hub::known(&model);
        let init = one_input("init_image", self.init_image.as_deref(), files.init)?;
        let mask = one_input("mask_image", self.mask_image.as_deref(), files.mask)?;
        let init = init
            .map(|bytes| input_image("init_image", &bytes).map(|size| (bytes, size)))
            .transpose()?;
        let mask = mask
            .map(|bytes| input_image("mask_image", &bytes).map(|size| (bytes, size)))
            .transpose()?;
        if let (Some((_, init_size)), Some((_, mask_size))) = (&init, &mask) {
            if init_size != mask_size {
                return Err(ApiError::invalid(
                    "mask_image",
                    format!(
                        "mask_image is {}×{} but the start image is {}×{}; they must match",
                        mask_size.0, mask_size.1, init_size.0, init_size.1
                    ),
                ));
            }
        }
        if mask.is_some() && init.is_none() {
            return Err(ApiError::invalid(
                "mask_image",
                "mask_image needs an init_image to repaint",
            ));
        }
        if let Some(strength) = self.strength {
            if init.is_none() {
                return Err(ApiError::invalid(
                    "strength",
                    "strength applies to an init_image",
                ));
            }
            if !strength.is_finite() || strength <= 0.0 || strength > 1.0 {
                return Err(ApiError::invalid(
                    "strength",
                    "strength must be greater than 0 and at most 1",
                ));
            }
        }
        // A start image gives its own size, rounded down to 8, unless the request names one.
        let own_size = init.as_ref().map(|(_, (w, h))| (*w / 8 * 8, *h / 8 * 8));
        let width = self
            .width
            .or(own_size.map(|s| s.0))
            .unwrap_or(defaults.map_or(512, |d| d.default_width as u32));
        let height = self
            .height
            .or(own_size.map(|s| s.1))
            .unwrap_or(defaults.map_or(512, |d| d.default_height as u32));
        for (field, value) in [("width", width), ("height", height)] {
            if value % 8 != 0 || value < 64 || value > limits.max_side {
                return Err(ApiError::invalid(
                    field,
                    format!(
                        "{field} must be a multiple of 8 between 64 and {}, got {value}",
                        limits.max_side
                    ),
                ));
            }
        }
        let num_images = self.num_images.unwrap_or(1);
        if num_images == 0 || num_images > limits.max_images {
            return Err(ApiError::invalid(
                "num_images",
                format!("num_images must be between 1 and {}", limits.max_images),
            ));
        }
        if (width as u64) * (height as u64) > limits.max_pixels {
            return Err(ApiError::invalid(
                "width",
                format!(
                    "width × height must be at most {} pixels",
                    limits.max_pixels
                ),
            ));
        }
        if (width as u64) * (height as u64) * num_images as u64 > limits.max_batch_pixels {
            return Err(ApiError::invalid(
                "num_images",
                format!(
                    "num_images × width × height must be at most {} pixels",
                    limits.max_batch_pixels
                ),
            ));
        }
        let steps = self
            .steps
            .unwrap_or(defaults.map_or(30, |d| d.default_steps as u32));
        if steps == 0 || steps > limits.max_steps {
            return Err(ApiError::invalid(
                "steps",
                format!("steps must be between 1 and {}", limits.max_steps),
            ));
        }
        let guidance_scale = self
            .guidance_scale
            .unwrap_or(defaults.map_or(7.5, |d| d.default_guidance));
        if !guidance_scale.is_finite() || !(0.0..=30.0).contains(&guidance_scale) {
            return Err(ApiError::invalid(
                "guidance_scale",
                "guidance_scale must be between 0 and 30",
            ));
        }
        let scheduler = self.scheduler.unwrap_or_else(|| "euler-a".into());
        if SchedulerKind::parse(&scheduler).is_none() {
            let names: Vec<_> = SchedulerKind::ALL.iter().map(|k| k.name()).collect();
            return Err(ApiError::invalid(
                "scheduler",
                format!(
                    "unknown scheduler '{scheduler}'; available: {}",
                    names.join(", ")
                ),
            ));
        }
        let long_prompt = self.long_prompt.unwrap_or_else(|| "chunk".into());
        if long_prompt != "chunk" && long_prompt != "truncate" {
            return Err(ApiError::invalid(
                "long_prompt",
                "long_prompt must be 'chunk' or 'truncate'",
            ));
        }
        let priority = self.priority.unwrap_or(0);
        if !(-100..=100).contains(&priority) {
            return Err(ApiError::invalid(
                "priority",
                "priority must be between -100 and 100",
            ));
        }
        if let Some(user) = &self.user {
            if user.chars().count() > MAX_USER_CHARS {
                return Err(ApiError::invalid(
                    "user",
                    format!("user is longer than {MAX_USER_CHARS} characters"),
                ));
            }
        }
        let (loras, vae, clip_skip) = check_extras(
            settings,
            &model,
            &prompt,
            self.loras,
            self.vae,
            self.clip_skip,
        )?;
        let (webhook_url, webhook_events) =
            check_webhook(settings, self.webhook_url, self.webhook_events)?;
        let previews = self.previews.unwrap_or(false);
        let preview_every = match self.preview_every {
            None => None,
            Some(_) if !previews => {
                return Err(ApiError::invalid(
                    "preview_every",
                    "preview_every needs previews: true",
                ))
            }
            Some(n) if n == 0 || n > steps => {
                return Err(ApiError::invalid(
                    "preview_every",
                    format!("preview_every must be between 1 and steps ({steps})"),
                ))
            }
            Some(n) => Some(n),
        };
        if let Some(mode) = &self.vae_tiling {
            if VaeTiling::parse(mode).is_none() {
                return Err(ApiError::invalid(
                    "vae_tiling",
                    "vae_tiling must be 'off', 'on' or 'auto'",
                ));
            }
        }
        // A seed chosen here is stored with the job, so every image can be reproduced.
        let seed = self
            .seed
            .unwrap_or_else(|| (uuid::Uuid::new_v4().as_u128() as u64) >> 32);
        Ok(Submission {
            spec: JobSpec {
                prompt,
                negative_prompt,
                model,
                width,
                height,
                steps,
                guidance_scale,
                seed,
                scheduler,
                num_images,
                long_prompt,
                init_image: None,
                mask_image: None,
                strength: init.as_ref().map(|_| {
                    self.strength
                        .unwrap_or(if mask.is_some() { 1.0 } else { 0.8 })
                }),
                user: self.user,
                loras,
                vae,
                clip_skip,
                webhook_url,
                webhook_events,
                previews,
                preview_every,
                vae_tiling: self.vae_tiling,
            },
            priority,
            init_image: init.map(|(bytes, _)| bytes),
            mask_image: mask.map(|(bytes, _)| bytes),
        })
    }
}

/// Checks `webhook_url` (an http(s) URL whose host, if it is an address, the SSRF guard
/// lets through; names are vetted when they are resolved, at delivery) and
/// `webhook_events`.
fn check_webhook(
    settings: &ApiSettings,
    url: Option<String>,
    events: Option<serde_json::Value>,
) -> Result<(Option<String>, Vec<WebhookEvent>), ApiError> {
    let Some(url) = url else {
        if events.as_ref().is_some_and(|e| !e.is_null()) {
            return Err(ApiError::invalid(
                "webhook_events",
                "webhook_events needs a webhook_url",
            ));
        }
        return Ok((None, Vec::new()));
    };
    let parsed = crate::net_guard::parse_url(&url)
        .map_err(|e| ApiError::invalid("webhook_url", format!("webhook_url: {e}")))?;
    crate::net_guard::check_literal(&parsed, &settings.webhook_allow)
        .map_err(|e| ApiError::invalid("webhook_url", format!("webhook_url: {e}")))?;
    let names: Vec<String> = match events {
        None | Some(serde_json::Value::Null) => {
            return Ok((
                Some(parsed.to_string()),
                crate::queue::webhooks::DEFAULT_EVENTS.to_vec(),
            ))
        }
        Some(serde_json::Value::String(csv)) => csv
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str().map(str::to_string).ok_or_else(|| {
                    ApiError::invalid("webhook_events", "webhook_events must hold strings")
                })
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(ApiError::invalid(
                "webhook_events",
                "webhook_events must be a list of event names",
            ))
        }
    };
    let mut events = Vec::new();
    for name in &names {
        let event = WebhookEvent::parse(name).ok_or_else(|| {
            ApiError::invalid(
                "webhook_events",
                format!("unknown webhook event '{name}'; use started, progress, completed"),
            )
        })?;
        if !events.contains(&event) {
            events.push(event);
        }
    }
    if events.is_empty() {
        return Err(ApiError::invalid(
            "webhook_events",
            "webhook_events must name at least one of started, progress, completed",
        ));
    }
    Ok((Some(parsed.to_string()), events))
}

/// The start image or mask from exactly one source: a base64 field or `files`.
fn one_input(
    field: &str,
    base64: Option<&str>,
    file: Option<Vec<u8>>,
) -> Result<Option<Vec<u8>>, ApiError> {
    match (base64, file) {
        (Some(_), Some(_)) => Err(ApiError::invalid(
            field,
            format!("{field} was given twice (as base64 and as a file or gallery id)"),
        )),
        (Some(value), None) => Ok(Some(base64_field(field, value)?)),
        (None, file) => Ok(file),
    }
}

/// Model ids a request may name.
pub fn available(settings: &ApiSettings) -> Vec<String> {
    let mut names = vec![settings.default_model.clone()];
    names.extend(
        settings
            .models
            .iter()
            .filter(|m| **m != settings.default_model)
            .cloned(),
    );
    // Then the usable checkpoints of the models directory.
    for entry in settings.models_dir.catalogue().checkpoints {
        if entry.error.is_none() && !names.contains(&entry.name) {
            names.push(entry.name);
        }
    }
    names
}

#[cfg(test)]
mod tests;
