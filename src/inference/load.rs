//! Loading a model: configs read and cross-checked before any weight is touched, then
//! the tokenizers and the weights of the text encoders, UNet and VAE (read through a
//! memory map), from which the modules are built.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
use candle_transformers::models::stable_diffusion::vae::AutoEncoderKLConfig;

use super::clip::{ClipTextModel, ClipTextModelWithProjection};
use super::embeddings::EmbeddingLibrary;
use super::model_config::{read_json, ClipTextConfig, ModelIndex, UNetConfig, VaeConfig};
use super::pipeline::{BaseModel, BaseModules, StableDiffusion, XlText};
use super::schedulers::SchedulerConfigFile;
use super::tokenizer::PromptTokenizer;
use super::unet::UNet;
use super::vae_decoder::AutoEncoderKL;
use super::vae_encoder::VaeEncoder;
use super::weights::Weights;
use super::InferenceError;

fn find_weights(dir: &Path, stem: &str, dtype: DType) -> Result<PathBuf, InferenceError> {
    let plain = dir.join(format!("{stem}.safetensors"));
    let half = dir.join(format!("{stem}.fp16.safetensors"));
    let candidates = if dtype == DType::F32 {
        [plain, half]
    } else {
        [half, plain]
    };
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .ok_or_else(|| InferenceError::invalid_model(dir, format!("no {stem}.safetensors")))
}

fn read_weights(
    dir: &Path,
    stem: &str,
    dtype: DType,
    device: &Device,
) -> Result<Weights, InferenceError> {
    Weights::read(&find_weights(dir, stem, dtype)?, dtype, device)
}

/// Refuses UNets whose inputs or outputs the pipeline cannot feed or read, before the
/// weights are touched (the UNet itself checks its block layout).
fn check_unet(dir: &Path, c: &UNetConfig) -> Result<(), InferenceError> {
    if !matches!(c.in_channels, 4 | 9) || c.out_channels != 4 {
        return Err(InferenceError::invalid_model(
            dir,
            format!(
                "UNets with {} input and {} output channels are not supported \
                 (4 in and out, or 9 in for inpainting)",
                c.in_channels, c.out_channels
            ),
        ));
    }
    Ok(())
}

/// Checks that the text encoders produce what the UNet reads: token features of
/// `cross_attention_dim` and, for SDXL, a pooled projection that with the six time-id
/// embeddings fills `projection_class_embeddings_input_dim`.
fn check_conditioning(
    folder: &Path,
    unet: &UNetConfig,
    text: &ClipTextConfig,
    text_2: Option<&ClipTextConfig>,
) -> Result<(), InferenceError> {
    let bad = |why: String| Err(InferenceError::invalid_model(folder, why));
    let width = text.hidden_size + text_2.map_or(0, |c| c.hidden_size);
    if width != unet.cross_attention_dim {
        return bad(format!(
            "the text encoders give {width} features but the UNet's cross_attention_dim is {}",
            unet.cross_attention_dim
        ));
    }
    match (unet.addition_embed_type.as_deref(), text_2) {
        (None, None) => Ok(()),
        (Some("text_time"), Some(c2)) => {
            let time = unet.addition_time_embed_dim.unwrap_or(256);
            let want = c2.projection_dim + 6 * time;
            if unet.projection_class_embeddings_input_dim != Some(want) {
                return bad(format!(
                    "projection_class_embeddings_input_dim should be {want} \
                     (text_encoder_2's projection_dim + 6 × addition_time_embed_dim)"
                ));
            }
            Ok(())
        }
        (Some("text_time"), None) => {
            bad("an SDXL UNet needs text_encoder_2 in model_index.json".into())
        }
        (None, Some(_)) => bad("text_encoder_2 given but the UNet takes no text_time".into()),
        (Some(other), _) => bad(format!("unsupported addition_embed_type '{other}'")),
    }
}

/// Maps diffusers' VAE config onto candle's.
pub(crate) fn vae_blocks(c: &VaeConfig) -> AutoEncoderKLConfig {
    AutoEncoderKLConfig {
        block_out_channels: c.block_out_channels.clone(),
        layers_per_block: c.layers_per_block,
        latent_channels: c.latent_channels,
        norm_num_groups: c.norm_num_groups,
        use_quant_conv: c.use_quant_conv,
        use_post_quant_conv: c.use_post_quant_conv,
    }
}

/// Everything a model is built from, whatever its files look like (a diffusers folder
/// or a single-file checkpoint).
pub(super) struct Parts {
    /// Where it came from, for messages.
    pub(super) origin: PathBuf,
    pub(super) unet_config: UNetConfig,
    pub(super) vae_config: VaeConfig,
    pub(super) text_config: ClipTextConfig,
    pub(super) scheduler_config: SchedulerConfigFile,
    pub(super) tokenizer: PromptTokenizer,
    pub(super) unet: Weights,
    /// In the VAE's own dtype (see [`vae_dtype`]).
    pub(super) vae: Weights,
    pub(super) text_encoder: Weights,
    /// SDXL: the second tokenizer, config, weights and `force_zeros_for_empty_prompt`.
    pub(super) xl: Option<XlParts>,
}

/// SDXL's second text encoder, as read.
pub(super) struct XlParts {
    pub(super) tokenizer_2: PromptTokenizer,
    pub(super) text_config_2: ClipTextConfig,
    pub(super) text_encoder_2: Weights,
    pub(super) force_zeros_for_empty_prompt: bool,
}

/// The VAE runs in f32 when its config asks for `force_upcast` under f16.
pub(super) fn vae_dtype(config: &VaeConfig, dtype: DType) -> DType {
    if config.force_upcast && dtype == DType::F16 {
        DType::F32
    } else {
        dtype
    }
}

/// Reads a diffusers-layout folder's configs, tokenizers and weights.
pub(super) fn folder_parts(
    folder: &Path,
    device: &Device,
    dtype: DType,
) -> Result<Parts, InferenceError> {
    if !folder.is_dir() {
        return Err(InferenceError::invalid_model(folder, "not a directory"));
    }
    let unet_config: UNetConfig = read_json(&folder.join("unet/config.json"))?;
    let vae_config: VaeConfig = read_json(&folder.join("vae/config.json"))?;
    let text_config: ClipTextConfig = read_json(&folder.join("text_encoder/config.json"))?;
    let scheduler_path = folder.join("scheduler/scheduler_config.json");
    let scheduler_config: SchedulerConfigFile = if scheduler_path.exists() {
        read_json(&scheduler_path)?
    } else {
        SchedulerConfigFile::default()
    };
    let index_path = folder.join("model_index.json");
    let index: Option<ModelIndex> = if index_path.exists() {
        Some(read_json(&index_path)?)
    } else {
        None
    };
    let xl_config: Option<ClipTextConfig> = match &index {
        Some(index) if index.has_text_encoder_2() => {
            Some(read_json(&folder.join("text_encoder_2/config.json"))?)
        }
        _ => None,
    };
    // Configs are checked before any weight is read.
    check_conditioning(folder, &unet_config, &text_config, xl_config.as_ref())?;
    check_unet(&folder.join("unet"), &unet_config)?;
    check_vae(&folder.join("vae"), &vae_config)?;
    let tokenizer = PromptTokenizer::load(
        &folder.join("tokenizer"),
        text_config.max_position_embeddings,
    )?;
    let text_encoder = read_weights(&folder.join("text_encoder"), "model", dtype, device)?
        .with_text_model_prefix();
    let xl = match xl_config {
        None => None,
        Some(config) => Some(XlParts {
            tokenizer_2: PromptTokenizer::load(
                &folder.join("tokenizer_2"),
                config.max_position_embeddings,
            )?,
            text_encoder_2: read_weights(&folder.join("text_encoder_2"), "model", dtype, device)?
                .with_text_model_prefix(),
            text_config_2: config,
            // diffusers' SDXL text-to-image and inpainting pipelines default to true.
            force_zeros_for_empty_prompt: index
                .as_ref()
                .and_then(|i| i.force_zeros_for_empty_prompt)
                .unwrap_or(true),
        }),
    };
    let unet = read_weights(
        &folder.join("unet"),
        "diffusion_pytorch_model",
        dtype,
        device,
    )?;
    let vae = read_weights(
        &folder.join("vae"),
        "diffusion_pytorch_model",
        vae_dtype(&vae_config, dtype),
        device,
    )?;
    Ok(Parts {
        origin: folder.to_path_buf(),
        unet_config,
        vae_config,
        text_config,
        scheduler_config,
        tokenizer,
        unet,
        vae,
        text_encoder,
        xl,
    })
}

/// VAEs whose latents sdq cannot scale are refused before their weights are read.
pub(super) fn check_vae(dir: &Path, c: &VaeConfig) -> Result<(), InferenceError> {
    if c.latents_mean.is_some() || c.latents_std.is_some() {
        return Err(InferenceError::invalid_model(
            dir,
            "VAEs with latents_mean / latents_std are not supported",
        ));
    }
    Ok(())
}

/// Builds the VAE decoder and encoder from their weights.
pub(super) fn build_vae(
    origin: &Path,
    config: &VaeConfig,
    weights: &Weights,
    vae_dtype: DType,
    device: &Device,
) -> Result<(AutoEncoderKL, VaeEncoder), InferenceError> {
    let vb = weights.var_builder(vae_dtype, device);
    let bad = |e: candle_core::Error| InferenceError::invalid_model(&origin.join("vae"), e);
    let vae = AutoEncoderKL::new(
        vb.clone(),
        config.in_channels,
        config.out_channels,
        vae_blocks(config),
    )
    .map_err(bad)?;
    let encoder = VaeEncoder::new(vb, config).map_err(bad)?;
    Ok((vae, encoder))
}

impl StableDiffusion {
    /// Loads a diffusers-layout folder or a single-file checkpoint (`.safetensors` in the
    /// original Stable Diffusion layout); the architecture comes from the folder's config
    /// files, or from the checkpoint's tensors.
    pub fn load(path: &Path, device: &Device, dtype: DType) -> Result<Self, InferenceError> {
        let parts = if path.is_file() {
            super::single_file::parts(path, device, dtype)?
        } else {
            folder_parts(path, device, dtype)?
        };
        Self::from_parts(parts, device, dtype)
    }

    /// Builds the modules from their weights.
    pub(super) fn from_parts(
        parts: Parts,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, InferenceError> {
        let origin = parts.origin.clone();
        let bad = |dir: &str| {
            let path = origin.join(dir);
            move |e: candle_core::Error| InferenceError::invalid_model(&path, e)
        };
        let text_encoder = Arc::new(
            ClipTextModel::new(
                parts.text_encoder.var_builder(dtype, device),
                &parts.text_config,
            )
            .map_err(bad("text_encoder"))?,
        );
        let (xl, text_encoder_2) = match parts.xl {
            None => (None, None),
            Some(x) => {
                let te2 = Arc::new(
                    ClipTextModelWithProjection::new(
                        x.text_encoder_2.var_builder(dtype, device),
                        &x.text_config_2,
                    )
                    .map_err(bad("text_encoder_2"))?,
                );
                (
                    Some(XlText {
                        tokenizer_2: Arc::new(x.tokenizer_2),
                        text_encoder_2: te2.clone(),
                        force_zeros_for_empty_prompt: x.force_zeros_for_empty_prompt,
                    }),
                    Some((x.text_config_2, x.text_encoder_2, te2)),
                )
            }
        };
        let unet = Arc::new(
            UNet::new(parts.unet.var_builder(dtype, device), &parts.unet_config)
                .map_err(bad("unet"))?,
        );
        let vae_dtype = vae_dtype(&parts.vae_config, dtype);
        let (vae, vae_encoder) =
            build_vae(&origin, &parts.vae_config, &parts.vae, vae_dtype, device)?;
        let (vae, vae_encoder) = (Arc::new(vae), Arc::new(vae_encoder));
        let (text_encoder_2_parts, text_encoder_2_module) = match text_encoder_2 {
            Some((config, weights, module)) => (Some((config, weights)), Some(module)),
            None => (None, None),
        };
        let base = BaseModel {
            unet_config: parts.unet_config.clone(),
            unet: parts.unet,
            text_config: parts.text_config,
            text_encoder: parts.text_encoder,
            text_encoder_2: text_encoder_2_parts,
            modules: BaseModules {
                unet: unet.clone(),
                text_encoder: text_encoder.clone(),
                text_encoder_2: text_encoder_2_module,
                vae: vae.clone(),
                vae_encoder: vae_encoder.clone(),
                vae_config: parts.vae_config.clone(),
                vae_dtype,
            },
        };
        Ok(Self {
            tokenizer: Arc::new(parts.tokenizer),
            text_encoder,
            xl,
            unet,
            vae,
            vae_dtype,
            vae_encoder,
            unet_in_channels: parts.unet_config.in_channels,
            vae_config: parts.vae_config,
            scheduler_config: parts.scheduler_config,
            device: device.clone(),
            dtype,
            folder: origin,
            base: Arc::new(base),
            embeddings: Arc::new(EmbeddingLibrary::default()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inference::tiny::{write_kind, TinyKind};

    /// transformers 5 writes CLIP text encoders without `text_model.`; such folders load
    /// and encode exactly as the older layout does.
    #[test]
    fn text_encoders_saved_without_the_text_model_prefix_load_alike() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("xl");
        write_kind(&folder, 0, TinyKind::Sdxl).unwrap();
        let old = StableDiffusion::load(&folder, &Device::Cpu, DType::F32).unwrap();
        for part in ["text_encoder", "text_encoder_2"] {
            let path = folder.join(part).join("model.safetensors");
            let tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
            let stripped: std::collections::HashMap<String, candle_core::Tensor> = tensors
                .into_iter()
                .map(|(k, v)| (k.strip_prefix("text_model.").unwrap_or(&k).to_string(), v))
                .collect();
            assert!(!stripped.keys().any(|k| k.starts_with("text_model.")));
            candle_core::safetensors::save(&stripped, &path).unwrap();
        }
        let new = StableDiffusion::load(&folder, &Device::Cpu, DType::F32).unwrap();
        let a = old
            .encode_prompt(
                "a photo of a cat",
                crate::inference::tokenizer::LongPrompt::Chunk,
                1,
                1,
            )
            .unwrap();
        let b = new
            .encode_prompt(
                "a photo of a cat",
                crate::inference::tokenizer::LongPrompt::Chunk,
                1,
                1,
            )
            .unwrap();
        let gap = (a.tokens - b.tokens)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert_eq!(gap.to_scalar::<f32>().unwrap(), 0.0);
        let gap = (a.pooled.unwrap() - b.pooled.unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert_eq!(gap.to_scalar::<f32>().unwrap(), 0.0);
    }
}
