//! The OpenAI Images dialect's translator: `images.generate` / `images.edit` parameters to
//! our [`SubmitRequest`], our finished job to an `ImagesResponse`, and our errors to
//! OpenAI's `{error: {message, type, param, code}}`. Pure functions; the routes in
//! `openai_routes.rs` do the I/O.

use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

use super::image_ops::{self, OutputFormat};
use crate::api::{ApiError, InputFiles, SubmitRequest};

/// Model names OpenAI's SDKs send; they all mean "the server's default model".
pub fn is_openai_model(name: &str) -> bool {
    name.starts_with("dall-e") || name.starts_with("gpt-image") || name.starts_with("chatgpt-image")
}

/// The JSON body of `POST /v1/images/generations`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateParams {
    pub prompt: String,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub n: Option<u32>,
    #[serde(default)]
    pub size: Option<String>,
    #[serde(default)]
    pub quality: Option<String>,
    #[serde(default)]
    pub response_format: Option<String>,
    #[serde(default)]
    pub output_format: Option<String>,
    #[serde(default)]
    pub output_compression: Option<i64>,
    #[serde(default)]
    pub user: Option<String>,
    /// The newer name of `user`.
    #[serde(default)]
    pub safety_identifier: Option<String>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub partial_images: Option<i64>,
    #[serde(default)]
    pub background: Option<String>,
    #[serde(default)]
    pub moderation: Option<String>,
    #[serde(default)]
    pub style: Option<String>,
    /// Edits only (multipart), accepted and checked here so both routes share one path.
    #[serde(default)]
    pub input_fidelity: Option<String>,
}

/// How the images go back to the client.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// `b64_json` (the default) or an absolute URL.
    pub url: bool,
    pub format: OutputFormat,
    pub stream: bool,
    /// Partial images asked for while streaming (0–3).
    pub partial_images: u32,
    /// The `quality` label echoed back (`low`, `medium`, `high` or `auto`).
    pub quality: &'static str,
}

/// What a model's defaults say, for the quality presets.
#[derive(Debug, Clone, Copy)]
pub struct ModelDefaults {
    pub steps: u32,
    pub max_steps: u32,
}

fn refuse(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid(param, message)
}

/// Parses `WIDTHxHEIGHT`; `auto` (or nothing) leaves the model's default size.
fn size(value: Option<&str>) -> Result<(Option<u32>, Option<u32>), ApiError> {
    match value.map(str::trim) {
        None | Some("auto") | Some("") => Ok((None, None)),
        Some(s) => {
            let parsed = s
                .split_once('x')
                .and_then(|(w, h)| Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?)));
            match parsed {
                Some((w, h)) => Ok((Some(w), Some(h))),
                None => Err(refuse(
                    "size",
                    format!("size must be WIDTHxHEIGHT (e.g. 512x512) or auto, got '{s}'"),
                )),
            }
        }
    }
}

/// Steps for a quality preset: `low` halves the model's default, `high` / `hd` doubles it.
fn quality(
    value: Option<&str>,
    defaults: ModelDefaults,
) -> Result<(Option<u32>, &'static str), ApiError> {
    let steps = |factor: f64| {
        let s = ((defaults.steps as f64) * factor).round() as u32;
        Some(s.clamp(1, defaults.max_steps.max(1)))
    };
    match value {
        None | Some("auto") => Ok((None, "auto")),
        Some("standard" | "medium") => Ok((None, "medium")),
        Some("low") => Ok((steps(0.5), "low")),
        Some("high" | "hd") => Ok((steps(2.0), "high")),
        Some("xhigh") => Ok((steps(3.0), "high")),
        Some("max") => Ok((steps(4.0), "high")),
        Some(other) => Err(refuse(
            "quality",
            format!("quality must be low, medium, high, xhigh, max, standard, hd or auto, got '{other}'"),
        )),
    }
}

fn output_format(format: Option<&str>, compression: Option<i64>) -> Result<OutputFormat, ApiError> {
    if let Some(c) = compression {
        if !(0..=100).contains(&c) {
            return Err(refuse(
                "output_compression",
                "output_compression must be between 0 and 100",
            ));
        }
    }
    match format {
        None | Some("png") => {
            if compression.is_some_and(|c| c != 100) {
                return Err(refuse(
                    "output_compression",
                    "output_compression applies to jpeg and webp",
                ));
            }
            Ok(OutputFormat::Png)
        }
        Some("jpeg" | "jpg") => Ok(OutputFormat::Jpeg(
            compression.unwrap_or(100).clamp(1, 100) as u8
        )),
        Some("webp") => {
            if compression.is_some_and(|c| c != 100) {
                return Err(refuse(
                    "output_compression",
                    "sdq writes lossless WebP only; leave output_compression at 100 or use jpeg",
                ));
            }
            Ok(OutputFormat::WebpLossless)
        }
        Some(other) => Err(refuse(
            "output_format",
            format!("output_format must be png, jpeg or webp, got '{other}'"),
        )),
    }
}

/// Maps generation parameters onto our request and a delivery. `defaults` are the
/// defaults of the model the request will run on.
pub fn to_submit(
    p: GenerateParams,
    defaults: ModelDefaults,
) -> Result<(SubmitRequest, Delivery), ApiError> {
    let (width, height) = size(p.size.as_deref())?;
    let (steps, quality) = quality(p.quality.as_deref(), defaults)?;
    // DALL·E answers with URLs unless asked otherwise; everything else with base64.
    let dalle = p.model.as_deref().is_some_and(|m| m.starts_with("dall-e"));
    let url = match p.response_format.as_deref() {
        None => dalle && p.stream != Some(true),
        Some("b64_json") => false,
        Some("url") => true,
        Some(other) => {
            return Err(refuse(
                "response_format",
                format!("response_format must be b64_json or url, got '{other}'"),
            ))
        }
    };
    let format = output_format(p.output_format.as_deref(), p.output_compression)?;
    if url && format != OutputFormat::Png {
        return Err(refuse(
            "output_format",
            "a url serves the stored PNG; ask for b64_json to get jpeg or webp",
        ));
    }
    let stream = p.stream.unwrap_or(false);
    let partial_images = match p.partial_images {
        None => 0,
        Some(n @ 0..=3) if stream => n as u32,
        Some(0..=3) => {
            return Err(refuse(
                "partial_images",
                "partial_images needs stream: true",
            ))
        }
        Some(_) => {
            return Err(refuse(
                "partial_images",
                "partial_images must be between 0 and 3",
            ))
        }
    };
    if stream && url {
        return Err(refuse(
            "response_format",
            "streamed images are always b64_json",
        ));
    }
    match p.background.as_deref() {
        None | Some("auto" | "opaque") => {}
        Some("transparent") => {
            return Err(refuse(
                "background",
                "sdq cannot make transparent backgrounds",
            ))
        }
        Some(other) => {
            return Err(refuse(
                "background",
                format!("background must be transparent, opaque or auto, got '{other}'"),
            ))
        }
    }
    match p.moderation.as_deref() {
        None | Some("auto" | "low") => {}
        Some(other) => {
            return Err(refuse(
                "moderation",
                format!("moderation must be low or auto, got '{other}'"),
            ))
        }
    }
    if let Some(style) = p.style {
        return Err(refuse(
            "style",
            format!("sdq has no '{style}' style; leave style out"),
        ));
    }
    match p.input_fidelity.as_deref() {
        None | Some("low") => {}
        Some("high") => {
            return Err(refuse(
                "input_fidelity",
                "sdq has no high input fidelity mode",
            ))
        }
        Some(other) => {
            return Err(refuse(
                "input_fidelity",
                format!("input_fidelity must be high or low, got '{other}'"),
            ))
        }
    }
    let model = p.model.filter(|m| !m.is_empty() && !is_openai_model(m));
    // Partial images are step previews, spaced so that about `partial_images` of them
    // fall before the last step (the stream forwards at most that many).
    let previews = partial_images > 0;
    let preview_every = previews.then(|| {
        let total = steps.unwrap_or(defaults.steps).max(1);
        (total / (partial_images + 1)).max(1)
    });
    let request = SubmitRequest {
        prompt: Some(p.prompt),
        model,
        width,
        height,
        steps,
        num_images: Some(p.n.unwrap_or(1)),
        user: p.user.or(p.safety_identifier),
        previews: previews.then_some(true),
        preview_every,
        ..Default::default()
    };
    Ok((
        request,
        Delivery {
            url,
            format,
            stream,
            partial_images,
            quality,
        },
    ))
}

/// An edit: the generation parameters plus the start image and optional mask (bytes of
/// the multipart parts), which become the job's input files.
pub fn edit_to_submit(
    p: GenerateParams,
    images: Vec<Vec<u8>>,
    mask: Option<Vec<u8>>,
    defaults: ModelDefaults,
) -> Result<(SubmitRequest, InputFiles, Delivery), ApiError> {
    let image = match <[Vec<u8>; 1]>::try_from(images) {
        Ok([one]) => one,
        Err(v) if v.is_empty() => return Err(refuse("image", "an edit needs an image")),
        Err(_) => return Err(refuse("image", "sdq edits one image at a time")),
    };
    let (request, delivery) = to_submit(p, defaults)?;
    let mask = mask
        .map(|m| image_ops::openai_mask(&m).map_err(|e| refuse("mask", e)))
        .transpose()?;
    let files = InputFiles {
        init: Some(image),
        mask,
    };
    Ok((request, files, delivery))
}

/// Our field names to OpenAI's parameter names, for errors.
pub fn their_param(ours: &str) -> &str {
    match ours {
        "num_images" => "n",
        "width" | "height" => "size",
        "steps" => "quality",
        "init_image" => "image",
        "mask_image" => "mask",
        other => other,
    }
}

/// One image of the response.
pub fn datum(delivery: &Delivery, encoded: &[u8], url: &str, prompt: &str) -> Value {
    if delivery.url {
        json!({"url": url, "revised_prompt": prompt})
    } else {
        json!({"b64_json": image_ops::b64(encoded), "revised_prompt": prompt})
    }
}

/// sdq does not meter tokens; the usage block is present (the SDKs read it) and zero.
pub fn usage() -> Value {
    json!({
        "input_tokens": 0,
        "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
        "output_tokens": 0,
        "total_tokens": 0,
    })
}

/// The `ImagesResponse` body.
pub fn images_response(
    created: i64,
    data: Vec<Value>,
    width: u32,
    height: u32,
    delivery: &Delivery,
) -> Value {
    json!({
        "created": created,
        "data": data,
        "background": "opaque",
        "size": format!("{width}x{height}"),
        "quality": delivery.quality,
        "output_format": delivery.format.name(),
        "usage": usage(),
    })
}

/// A streaming event: `event_type` is e.g. `image_generation.completed` or
/// `image_edit.partial_image`; `(width, height)` the image's size.
pub fn stream_event(
    event_type: &str,
    created: i64,
    b64: String,
    (width, height): (u32, u32),
    delivery: &Delivery,
    partial_index: Option<u32>,
) -> Value {
    let mut event = json!({
        "type": event_type,
        "b64_json": b64,
        "background": "opaque",
        "created_at": created,
        "output_format": delivery.format.name(),
        "quality": delivery.quality,
        "size": format!("{width}x{height}"),
    });
    match partial_index {
        Some(i) => event["partial_image_index"] = json!(i),
        None => event["usage"] = usage(),
    }
    event
}

/// OpenAI's error body and status for one of our errors. `param` uses OpenAI's names.
pub fn error_body(err: &ApiError) -> (StatusCode, Value) {
    let status = err.status();
    let kind = match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        s if s >= 500 => "server_error",
        _ => "invalid_request_error",
    };
    let param = match err {
        ApiError::Invalid { field: Some(f), .. } => json!(their_param(f)),
        _ => Value::Null,
    };
    let message = match err {
        ApiError::Invalid {
            field: Some(f),
            message,
        } if f != their_param(f) => {
            format!("{message} (parameter '{}')", their_param(f))
        }
        _ => err.to_string(),
    };
    (
        status,
        json!({"error": {"message": message, "type": kind, "param": param, "code": err.code()}}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: ModelDefaults = ModelDefaults {
        steps: 4,
        max_steps: 150,
    };

    fn params(v: Value) -> GenerateParams {
        serde_json::from_value(v).expect("parses")
    }

    fn translate(v: Value) -> Result<(SubmitRequest, Delivery), ApiError> {
        to_submit(params(v), DEFAULTS)
    }

    #[test]
    fn parameters_map_as_a_table() {
        type Check = fn(&SubmitRequest, &Delivery) -> bool;
        let cases: Vec<(Value, Check)> = vec![
            (json!({"prompt": "a"}), |r, d| {
                r.num_images == Some(1)
                    && r.width.is_none()
                    && !d.url
                    && d.format == OutputFormat::Png
                    && d.quality == "auto"
            }),
            (json!({"prompt": "a", "n": 2, "size": "64x48"}), |r, _| {
                r.num_images == Some(2) && r.width == Some(64) && r.height == Some(48)
            }),
            (json!({"prompt": "a", "size": "auto"}), |r, _| {
                r.width.is_none()
            }),
            (json!({"prompt": "a", "model": "dall-e-3"}), |r, _| {
                r.model.is_none()
            }),
            (json!({"prompt": "a", "model": "gpt-image-1"}), |r, _| {
                r.model.is_none()
            }),
            (json!({"prompt": "a", "model": "tiny-sd2"}), |r, _| {
                r.model.as_deref() == Some("tiny-sd2")
            }),
            (json!({"prompt": "a", "quality": "low"}), |r, d| {
                r.steps == Some(2) && d.quality == "low"
            }),
            (json!({"prompt": "a", "quality": "hd"}), |r, d| {
                r.steps == Some(8) && d.quality == "high"
            }),
            (json!({"prompt": "a", "quality": "standard"}), |r, d| {
                r.steps.is_none() && d.quality == "medium"
            }),
            (json!({"prompt": "a", "response_format": "url"}), |_, d| {
                d.url
            }),
            (
                json!({"prompt": "a", "output_format": "jpeg", "output_compression": 50}),
                |_, d| d.format == OutputFormat::Jpeg(50),
            ),
            (json!({"prompt": "a", "output_format": "jpeg"}), |_, d| {
                d.format == OutputFormat::Jpeg(100)
            }),
            (json!({"prompt": "a", "output_format": "webp"}), |_, d| {
                d.format == OutputFormat::WebpLossless
            }),
            (json!({"prompt": "a", "user": "u-1"}), |r, _| {
                r.user.as_deref() == Some("u-1")
            }),
            (
                json!({"prompt": "a", "stream": true, "partial_images": 2}),
                |r, d| {
                    d.stream
                        && d.partial_images == 2
                        && r.previews == Some(true)
                        && r.preview_every.is_some_and(|n| n >= 1)
                },
            ),
            (
                json!({"prompt": "a", "background": "opaque", "moderation": "low"}),
                |_, _| true,
            ),
            (
                json!({"prompt": "a", "n": null, "size": null, "quality": null}),
                |r, _| r.num_images == Some(1),
            ),
        ];
        for (body, check) in cases {
            let (r, d) = translate(body.clone()).unwrap_or_else(|e| panic!("{body}: {e}"));
            assert!(check(&r, &d), "{body}: {r:?} {d:?}");
        }
    }

    #[test]
    fn unsupported_parameters_are_refused_by_name() {
        let cases: Vec<(Value, &str)> = vec![
            (json!({"prompt": "a", "size": "big"}), "size"),
            (json!({"prompt": "a", "quality": "ultra"}), "quality"),
            (
                json!({"prompt": "a", "response_format": "png"}),
                "response_format",
            ),
            (
                json!({"prompt": "a", "output_format": "gif"}),
                "output_format",
            ),
            (
                json!({"prompt": "a", "output_format": "webp", "output_compression": 80}),
                "output_compression",
            ),
            (
                json!({"prompt": "a", "output_compression": 101, "output_format": "jpeg"}),
                "output_compression",
            ),
            (
                json!({"prompt": "a", "response_format": "url", "output_format": "jpeg"}),
                "output_format",
            ),
            (
                json!({"prompt": "a", "partial_images": 2}),
                "partial_images",
            ),
            (
                json!({"prompt": "a", "stream": true, "partial_images": 4}),
                "partial_images",
            ),
            (
                json!({"prompt": "a", "background": "transparent"}),
                "background",
            ),
            (json!({"prompt": "a", "style": "vivid"}), "style"),
            (
                json!({"prompt": "a", "input_fidelity": "high"}),
                "input_fidelity",
            ),
        ];
        for (body, named) in cases {
            match translate(body.clone()) {
                Err(ApiError::Invalid { field: Some(f), .. }) => assert_eq!(f, named, "{body}"),
                other => panic!("{body}: {other:?}"),
            }
        }
        assert!(
            serde_json::from_value::<GenerateParams>(json!({"prompt": "a", "colour": 1})).is_err()
        );
    }

    #[test]
    fn edits_take_one_image_and_an_alpha_mask() {
        let png = |alpha: bool| {
            let img = if alpha {
                image::DynamicImage::ImageRgba8(image::RgbaImage::new(8, 8))
            } else {
                image::DynamicImage::ImageRgb8(image::RgbImage::new(8, 8))
            };
            let mut out = std::io::Cursor::new(Vec::new());
            img.write_to(&mut out, image::ImageFormat::Png).unwrap();
            out.into_inner()
        };
        let p = || params(json!({"prompt": "a"}));
        let (_, f, _) = edit_to_submit(p(), vec![png(false)], None, DEFAULTS).unwrap();
        assert!(f.init.is_some() && f.mask.is_none());
        let (_, f, _) = edit_to_submit(p(), vec![png(false)], Some(png(true)), DEFAULTS).unwrap();
        assert!(f.mask.is_some());
        let named = |res: Result<(SubmitRequest, InputFiles, Delivery), ApiError>| match res {
            Err(ApiError::Invalid { field: Some(f), .. }) => f,
            other => panic!("{other:?}"),
        };
        assert_eq!(named(edit_to_submit(p(), vec![], None, DEFAULTS)), "image");
        assert_eq!(
            named(edit_to_submit(
                p(),
                vec![png(false), png(false)],
                None,
                DEFAULTS
            )),
            "image"
        );
        assert_eq!(
            named(edit_to_submit(
                p(),
                vec![png(false)],
                Some(png(false)),
                DEFAULTS
            )),
            "mask"
        );
    }

    #[test]
    fn errors_take_openai_shape() {
        let (status, body) = error_body(&ApiError::invalid(
            "num_images",
            "num_images must be between 1 and 8",
        ));
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(body["error"]["param"], "n");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert!(body["error"]["message"].as_str().unwrap().contains("'n'"));
        let (status, body) = error_body(&ApiError::NotFound("image"));
        assert_eq!(
            (status.as_u16(), body["error"]["type"].as_str()),
            (404, Some("not_found_error"))
        );
        let (status, body) = error_body(&ApiError::Unavailable("db".into()));
        assert_eq!(
            (status.as_u16(), body["error"]["type"].as_str()),
            (503, Some("server_error"))
        );
    }

    #[test]
    fn responses_have_the_sdk_shape() {
        let d = Delivery {
            url: false,
            format: OutputFormat::Png,
            stream: false,
            partial_images: 0,
            quality: "auto",
        };
        let body = images_response(
            7,
            vec![datum(&d, &[1, 2, 3], "http://x/1", "a")],
            64,
            48,
            &d,
        );
        assert_eq!(body["data"][0]["b64_json"], "AQID");
        assert_eq!(body["size"], "64x48");
        assert_eq!(body["output_format"], "png");
        assert_eq!(body["usage"]["total_tokens"], 0);
        let u = Delivery {
            url: true,
            ..d.clone()
        };
        assert_eq!(
            datum(&u, &[], "http://x/1", "a"),
            json!({"url": "http://x/1", "revised_prompt": "a"})
        );
        let e = stream_event(
            "image_generation.partial_image",
            7,
            "QQ==".into(),
            (64, 48),
            &d,
            Some(1),
        );
        assert_eq!(e["type"], "image_generation.partial_image");
        assert_eq!(e["partial_image_index"], 1);
        let c = stream_event(
            "image_generation.completed",
            7,
            "QQ==".into(),
            (64, 48),
            &d,
            None,
        );
        assert!(c.get("usage").is_some() && c.get("partial_image_index").is_none());
    }
}
