//! A loaded model and its entry points: check the request, condition on the prompts,
//! denoise, decode.
//!
//! Each stage has its own file beside this one: `load.rs` (a model folder into memory),
//! `conditioning.rs` (prompts into UNet conditioning), `denoise.rs` (the denoising loop),
//! `img2img.rs` (start image and mask into starting latents), `decode.rs` (latents into
//! pixels); `request.rs` holds what callers pass in and `draws.rs` where random draws
//! come from.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device};

use super::clip::{ClipTextModel, ClipTextModelWithProjection};
use super::decode::{FloatImage, GeneratedImage};
use super::embeddings::EmbeddingLibrary;
use super::model_config::{ClipTextConfig, UNetConfig, VaeConfig};
use super::preview::PreviewFamily;
use super::request::{GenerateRequest, StepProgress};
use super::schedulers::SchedulerConfigFile;
use super::tokenizer::PromptTokenizer;
use super::unet::UNet;
use super::vae_decoder::AutoEncoderKL;
use super::vae_encoder::VaeEncoder;
use super::weights::Weights;
use super::InferenceError;

/// A loaded Stable Diffusion model (SD 1.x, 2.x or XL layout) ready to generate.
///
/// Cloning is cheap: every module is shared. Per-job variants (LoRAs, another VAE,
/// embeddings; see `variants.rs`) are clones with some modules rebuilt.
#[derive(Clone)]
pub struct StableDiffusion {
    pub(super) tokenizer: Arc<PromptTokenizer>,
    pub(super) text_encoder: Arc<ClipTextModel>,
    /// SDXL only: the second tokenizer and text encoder.
    pub(super) xl: Option<XlText>,
    pub(super) unet: Arc<UNet>,
    pub(super) vae: Arc<AutoEncoderKL>,
    /// The VAE runs in f32 when its config sets `force_upcast` and the model runs in f16,
    /// as diffusers' SDXL pipelines do (SDXL's VAE overflows in f16).
    pub(super) vae_dtype: DType,
    pub(super) vae_encoder: Arc<VaeEncoder>,
    /// 9 for inpainting UNets (latents, mask, masked-image latents), else 4.
    pub(super) unet_in_channels: usize,
    pub(super) vae_config: VaeConfig,
    pub(super) scheduler_config: SchedulerConfigFile,
    pub(super) device: Device,
    pub(super) dtype: DType,
    pub(super) folder: PathBuf,
    /// The base weights and configs, kept so that variants can rebuild modules.
    pub(super) base: Arc<BaseModel>,
    /// Textual-inversion embeddings prompts may call by name.
    pub(super) embeddings: Arc<EmbeddingLibrary>,
}

/// What a variant rebuilds modules from: the base model's weights, never modified.
pub(super) struct BaseModel {
    pub(super) unet_config: UNetConfig,
    pub(super) unet: Weights,
    pub(super) text_config: ClipTextConfig,
    pub(super) text_encoder: Weights,
    /// SDXL: text_encoder_2's config and weights.
    pub(super) text_encoder_2: Option<(ClipTextConfig, Weights)>,
    /// The modules as loaded, which variants without a patch for them reuse.
    pub(super) modules: BaseModules,
}

/// The modules built from [`BaseModel`]'s weights.
pub(super) struct BaseModules {
    pub(super) unet: Arc<UNet>,
    pub(super) text_encoder: Arc<ClipTextModel>,
    pub(super) text_encoder_2: Option<Arc<ClipTextModelWithProjection>>,
    pub(super) vae: Arc<AutoEncoderKL>,
    pub(super) vae_encoder: Arc<VaeEncoder>,
    pub(super) vae_config: VaeConfig,
    pub(super) vae_dtype: DType,
}

/// SDXL's second text encoder and the pipeline setting that goes with it.
#[derive(Clone)]
pub(super) struct XlText {
    pub(super) tokenizer_2: Arc<PromptTokenizer>,
    pub(super) text_encoder_2: Arc<ClipTextModelWithProjection>,
    /// An empty negative prompt is all-zero conditioning rather than encoded "".
    pub(super) force_zeros_for_empty_prompt: bool,
}

impl StableDiffusion {
    /// The folder the model was loaded from.
    pub fn folder(&self) -> &Path {
        &self.folder
    }

    /// Which latent→RGB map previews of this model use: SDXL's VAE has its own.
    pub fn preview_family(&self) -> PreviewFamily {
        if self.xl.is_some() {
            PreviewFamily::Sdxl
        } else {
            PreviewFamily::Sd1
        }
    }

    /// Image sides must be multiples of this.
    pub fn size_multiple(&self) -> usize {
        self.vae_config.scale_factor()
    }

    /// Runs txt2img and returns 8-bit images. `on_step` is called after every step;
    /// `Break` cancels the run.
    pub fn generate(
        &self,
        req: &GenerateRequest,
        on_step: &mut dyn FnMut(StepProgress) -> ControlFlow<()>,
    ) -> Result<Vec<GeneratedImage>, InferenceError> {
        Ok(self
            .generate_float(req, on_step)?
            .iter()
            .map(FloatImage::to_u8)
            .collect())
    }

    /// Runs txt2img and returns the decoded images before 8-bit rounding (what the parity
    /// tests compare with diffusers' `output_type="np"`).
    ///
    /// Steps: encode the prompts, take or draw the starting latents (one generator per
    /// image, seeded `seed + i`), denoise with classifier-free guidance, decode with the VAE.
    pub fn generate_float(
        &self,
        req: &GenerateRequest,
        on_step: &mut dyn FnMut(StepProgress) -> ControlFlow<()>,
    ) -> Result<Vec<FloatImage>, InferenceError> {
        self.check_request(req)?;
        let started = Instant::now();
        let use_cfg = req.guidance_scale > 1.0;

        let conditioning = self.conditioning(req, use_cfg)?;
        self.denoise(req, conditioning, use_cfg, started, on_step)
    }

    /// Refuses sizes the VAE cannot produce and empty runs.
    pub(super) fn check_request(&self, req: &GenerateRequest) -> Result<(), InferenceError> {
        let multiple = self.size_multiple();
        if !req.width.is_multiple_of(multiple)
            || !req.height.is_multiple_of(multiple)
            || req.width == 0
            || req.height == 0
        {
            return Err(InferenceError::InvalidRequest(format!(
                "width and height must be positive multiples of {multiple}"
            )));
        }
        if req.steps == 0 || req.num_images == 0 {
            return Err(InferenceError::InvalidRequest(
                "steps and num_images must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inference::SchedulerKind;

    #[test]
    fn previews_come_when_due_and_not_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("tiny");
        crate::inference::tiny::ensure(&folder, 0).unwrap();
        let sd = StableDiffusion::load(&folder, &Device::Cpu, DType::F32).unwrap();
        assert_eq!(sd.preview_family(), PreviewFamily::Sd1);
        let mut req = GenerateRequest::example(SchedulerKind::Euler);
        req.steps = 5;
        let run = |req: &GenerateRequest| {
            let mut previews = Vec::new();
            let images = sd
                .generate(req, &mut |p| {
                    if let Some(preview) = p.preview {
                        previews.push((p.step, preview));
                    }
                    ControlFlow::Continue(())
                })
                .unwrap();
            (images, previews)
        };
        let (plain, none) = run(&req);
        assert!(none.is_empty());
        req.preview_every = Some(2);
        let (with, previews) = run(&req);
        let steps: Vec<usize> = previews.iter().map(|(s, _)| *s).collect();
        assert_eq!(steps, [2, 4]);
        for (_, p) in &previews {
            assert_eq!((p.width, p.height), (8, 8));
            assert!(p.data_url.starts_with("data:image/jpeg;base64,"));
        }
        assert_ne!(previews[0].1.data_url, previews[1].1.data_url);
        // Previews only look: the image is the same with or without them.
        assert_eq!(plain[0].rgb, with[0].rgb);
    }

    #[test]
    fn tiny_model_generates_varied_deterministic_images() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("tiny");
        crate::inference::tiny::ensure(&folder, 0).unwrap();
        let sd = StableDiffusion::load(&folder, &Device::Cpu, DType::F32).unwrap();
        for kind in SchedulerKind::ALL {
            let mut steps = Vec::new();
            let t = Instant::now();
            let img = sd
                .generate(&GenerateRequest::example(kind), &mut |p| {
                    steps.push((p.step, p.total));
                    ControlFlow::Continue(())
                })
                .unwrap();
            eprintln!("{kind}: {:?}", t.elapsed());
            // Progress counts UNet evaluations, as diffusers' progress bar does: PNDM and
            // Heun evaluate more often than their step count.
            let total = steps[0].1;
            assert!(total >= 4, "{kind}: {total} evaluations for 4 steps");
            assert_eq!(steps, (1..=total).map(|s| (s, total)).collect::<Vec<_>>());
            let rgb = &img[0].rgb;
            assert_eq!(rgb.len(), 64 * 64 * 3);
            let mean = rgb.iter().map(|&v| v as f64).sum::<f64>() / rgb.len() as f64;
            let std = (rgb.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>()
                / rgb.len() as f64)
                .sqrt();
            eprintln!("{kind}: mean {mean:.1} std {std:.1}");
            assert!(std > 20.0, "{kind}: image is nearly flat (std {std})");
            let again = sd
                .generate(&GenerateRequest::example(kind), &mut |_| {
                    ControlFlow::Continue(())
                })
                .unwrap();
            assert_eq!(again[0].rgb, img[0].rgb, "{kind}: same seed, same pixels");
        }
    }
}
