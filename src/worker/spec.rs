//! From a stored job spec to what inference takes and what its PNGs carry.

use crate::inference::{GenerateRequest, InferenceError, SchedulerKind, VaeTiling};
use crate::queue::JobSpec;
use crate::storage::png::PngMetadata;

/// Converts a stored spec into an inference request.
pub fn generate_request(spec: &JobSpec) -> Result<GenerateRequest, InferenceError> {
    let scheduler = SchedulerKind::parse(&spec.scheduler).ok_or_else(|| {
        InferenceError::InvalidRequest(format!("unknown scheduler '{}'", spec.scheduler))
    })?;
    let long_prompt = serde_json::from_value(serde_json::Value::String(spec.long_prompt.clone()))
        .map_err(|_| {
        InferenceError::InvalidRequest(format!("unknown long_prompt '{}'", spec.long_prompt))
    })?;
    Ok(GenerateRequest {
        prompt: spec.prompt.clone(),
        negative_prompt: spec.negative_prompt.clone(),
        width: spec.width as usize,
        height: spec.height as usize,
        steps: spec.steps as usize,
        guidance_scale: spec.guidance_scale,
        seed: spec.seed,
        scheduler,
        num_images: spec.num_images as usize,
        long_prompt,
        clip_skip: spec.clip_skip.map(|c| c as usize),
        vae_tiling: match &spec.vae_tiling {
            None => VaeTiling::default(),
            Some(name) => VaeTiling::parse(name).ok_or_else(|| {
                InferenceError::InvalidRequest(format!("unknown vae_tiling '{name}'"))
            })?,
        },
        latents: None,
        noise: Vec::new(),
        init_image: None,
        preview_every: spec.previews.then(|| spec.preview_every()),
    })
}

/// The PNG metadata of image `index` of a job.
pub fn png_metadata(spec: &JobSpec, scheduler: SchedulerKind, seed: u64) -> PngMetadata {
    PngMetadata {
        prompt: spec.prompt.clone(),
        negative_prompt: spec.negative_prompt.clone(),
        steps: spec.steps,
        sampler: scheduler.a1111_name().to_string(),
        guidance_scale: spec.guidance_scale,
        seed,
        width: spec.width,
        height: spec.height,
        model: spec.model.clone(),
        strength: spec.init_image.as_ref().and(spec.strength),
        // Where the job reported to is no part of the recipe an image carries.
        spec: serde_json::to_value(JobSpec {
            seed,
            num_images: 1,
            webhook_url: None,
            webhook_events: Vec::new(),
            ..spec.clone()
        })
        .unwrap_or_default(),
    }
}
