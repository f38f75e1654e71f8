//! Per-job variants of a loaded model: LoRAs applied, another VAE, an embedding
//! library. A variant shares every untouched module with its base (reference-counted),
//! so making one costs only the layers it patches, and the base stays exactly as loaded
//! for the next job.

use std::path::Path;
use std::sync::Arc;

use candle_core::DType;

use super::clip::{ClipTextModel, ClipTextModelWithProjection};
use super::embeddings::EmbeddingLibrary;
use super::lora::{patches, Lora, Target};
use super::pipeline::StableDiffusion;
use super::unet::UNet;
use super::InferenceError;

impl StableDiffusion {
    /// This model with `loras` applied at their weights, built from the base weights (an
    /// empty list gives the base modules back). The VAE and embeddings are kept.
    pub fn with_loras(&self, loras: &[(&Lora, f64)]) -> Result<Self, InferenceError> {
        let base = &self.base;
        let mut out = self.clone();
        let unet = patches(loras, Target::Unet, &base.unet, Some(&base.unet_config))?;
        out.unet = if unet.is_empty() {
            base.modules.unet.clone()
        } else {
            let vb = base.unet.with(unet).var_builder(self.dtype, &self.device);
            Arc::new(UNet::new(vb, &base.unet_config)?)
        };
        let te = patches(loras, Target::TextEncoder, &base.text_encoder, None)?;
        out.text_encoder = if te.is_empty() {
            base.modules.text_encoder.clone()
        } else {
            let vb = base
                .text_encoder
                .with(te)
                .var_builder(self.dtype, &self.device);
            Arc::new(ClipTextModel::new(vb, &base.text_config)?)
        };
        match (
            &mut out.xl,
            &base.text_encoder_2,
            &base.modules.text_encoder_2,
        ) {
            (Some(xl), Some((config, weights)), Some(module)) => {
                let te2 = patches(loras, Target::TextEncoder2, weights, None)?;
                xl.text_encoder_2 = if te2.is_empty() {
                    module.clone()
                } else {
                    let vb = weights.with(te2).var_builder(self.dtype, &self.device);
                    Arc::new(ClipTextModelWithProjection::new(vb, config)?)
                };
            }
            _ => {
                if let Some((lora, _)) = loras.iter().find(|(l, _)| l.shape().text_encoder_2) {
                    return Err(InferenceError::InvalidRequest(format!(
                        "LoRA '{}' patches SDXL's second text encoder, which this model does \
                         not have: it was made for another model family",
                        lora.name
                    )));
                }
            }
        }
        Ok(out)
    }

    /// This model decoding (and encoding init images) with the VAE at `path`: a
    /// diffusers `vae/` folder, or one `.safetensors` file in the original or diffusers
    /// layout. The latent scaling stays this model's.
    pub fn with_vae(&self, path: &Path) -> Result<Self, InferenceError> {
        let (config, weights) =
            super::single_file::vae_parts(path, &self.vae_config, self.vae_dtype, &self.device)?;
        let (vae, encoder) =
            super::load::build_vae(path, &config, &weights, self.vae_dtype, &self.device)?;
        let mut out = self.clone();
        out.vae = Arc::new(vae);
        out.vae_encoder = Arc::new(encoder);
        out.vae_config = config;
        Ok(out)
    }

    /// This model with its own VAE again (undoing [`Self::with_vae`]).
    pub fn with_base_vae(&self) -> Self {
        let mut out = self.clone();
        let m = &self.base.modules;
        out.vae = m.vae.clone();
        out.vae_encoder = m.vae_encoder.clone();
        out.vae_config = m.vae_config.clone();
        out.vae_dtype = m.vae_dtype;
        out
    }

    /// This model with `library` as the embeddings prompts may call.
    pub fn with_embeddings(&self, library: Arc<EmbeddingLibrary>) -> Self {
        let mut out = self.clone();
        out.embeddings = library;
        out
    }

    /// The linear layers a typical LoRA patches: attention projections of the UNet and
    /// the text encoders, as `(target, module, [out, in])`.
    pub fn attention_layers(&self) -> Vec<(Target, String, [usize; 2])> {
        let base = &self.base;
        let mut parts = vec![
            (Target::Unet, &base.unet),
            (Target::TextEncoder, &base.text_encoder),
        ];
        if let Some((_, w)) = &base.text_encoder_2 {
            parts.push((Target::TextEncoder2, w));
        }
        let wanted = [
            "to_q", "to_k", "to_v", "to_out.0", "q_proj", "k_proj", "v_proj", "out_proj",
        ];
        let mut layers = Vec::new();
        for (target, weights) in parts {
            for name in weights.names() {
                let Some(module) = name.strip_suffix(".weight") else {
                    continue;
                };
                let dims = weights
                    .get(name)
                    .map(|t| t.dims().to_vec())
                    .unwrap_or_default();
                if dims.len() == 2 && wanted.iter().any(|w| module.ends_with(w)) {
                    layers.push((target, module.to_string(), [dims[0], dims[1]]));
                }
            }
        }
        layers.sort();
        layers
    }

    /// The dtype the model runs in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
}
