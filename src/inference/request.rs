//! What a caller hands the pipeline, and what it hears back after every step.

use serde::{Deserialize, Serialize};

use super::draws::NoiseArray;
use super::preview::Preview;
use super::schedulers::SchedulerKind;
use super::tokenizer::LongPrompt;
use super::vae_tiling::VaeTiling;

/// One generation, as the pipeline sees it (already validated by the caller).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GenerateRequest {
    pub prompt: String,
    #[serde(default)]
    pub negative_prompt: String,
    pub width: usize,
    pub height: usize,
    pub steps: usize,
    pub guidance_scale: f64,
    pub seed: u64,
    pub scheduler: SchedulerKind,
    pub num_images: usize,
    #[serde(default)]
    pub long_prompt: LongPrompt,
    /// A1111's clip skip: 1 (or none) conditions on the last layer, 2 on the one before.
    #[serde(default)]
    pub clip_skip: Option<usize>,
    /// Whether the VAE decodes (and encodes) large images in overlapping tiles.
    #[serde(default)]
    pub vae_tiling: VaeTiling,
    /// Starting latents instead of drawing them, exactly as diffusers' `latents=`
    /// (unit normals, `[num_images, channels, height / 8, width / 8]`).
    #[serde(skip)]
    pub latents: Option<NoiseArray>,
    /// Later random draws (ancestral, SDE and LCM noise), in the order diffusers makes
    /// them, each shaped like the latents; draws beyond these come from the RNG.
    #[serde(skip)]
    pub noise: Vec<NoiseArray>,
    /// img2img: start from this image instead of pure noise.
    #[serde(skip)]
    pub init_image: Option<InitImage>,
    /// Hand out a preview of the latents every this many steps (`None`: never, and the
    /// loop copies nothing).
    #[serde(skip)]
    pub preview_every: Option<usize>,
}

/// The image img2img starts from, and how much of it to repaint.
#[derive(Debug, Clone, PartialEq)]
pub struct InitImage {
    /// Must equal the request's size.
    pub width: usize,
    pub height: usize,
    /// 8-bit RGB, row-major.
    pub rgb: Vec<u8>,
    /// 0 keeps the image, 1 replaces it entirely (diffusers' `strength`).
    pub strength: f64,
    /// Inpainting: one gray byte per pixel, white (>= 128) is repainted.
    pub mask: Option<Vec<u8>>,
}

/// Reported after every denoising step.
#[derive(Debug, Clone)]
pub struct StepProgress {
    /// 1-based step just finished.
    pub step: usize,
    pub total: usize,
    pub elapsed_ms: u64,
    /// The latents after this step as a small image, when a preview was due.
    pub preview: Option<Preview>,
}

#[cfg(test)]
impl GenerateRequest {
    /// A small txt2img request for unit tests.
    pub(crate) fn example(scheduler: SchedulerKind) -> Self {
        Self {
            prompt: "a photo of a cat".into(),
            negative_prompt: "blurry".into(),
            width: 64,
            height: 64,
            steps: 4,
            guidance_scale: 7.5,
            seed: 1,
            scheduler,
            num_images: 1,
            long_prompt: LongPrompt::Chunk,
            clip_skip: None,
            vae_tiling: VaeTiling::Auto,
            latents: None,
            noise: Vec::new(),
            init_image: None,
            preview_every: None,
        }
    }
}
