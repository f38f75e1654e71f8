//! Loading a diffusers-layout folder: configs read and cross-checked before any weight
//! is touched, then the tokenizers, text encoders, UNet and VAE, memory-mapped.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use candle_transformers::models::stable_diffusion::vae::AutoEncoderKLConfig;

use super::clip::{ClipTextModel, ClipTextModelWithProjection};
use super::model_config::{read_json, ClipTextConfig, ModelIndex, UNetConfig, VaeConfig};
use super::pipeline::{StableDiffusion, XlText};
use super::schedulers::SchedulerConfigFile;
use super::tokenizer::PromptTokenizer;
use super::unet::UNet;
use super::vae_decoder::AutoEncoderKL;
use super::vae_encoder::VaeEncoder;
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

fn load_weights<'a>(
    dir: &Path,
    stem: &str,
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'a>, InferenceError> {
    let path = find_weights(dir, stem, dtype)?;
    // SAFETY: the file is memory-mapped read-only; a model folder is not rewritten while
    // a process runs from it.
    unsafe { VarBuilder::from_mmaped_safetensors(&[&path], dtype, device) }
        .map_err(|e| InferenceError::invalid_model(&path, e))
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

impl StableDiffusion {
    /// Loads a diffusers-layout folder; the architecture comes from its config files.
    pub fn load(folder: &Path, device: &Device, dtype: DType) -> Result<Self, InferenceError> {
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
        check_conditioning(folder, &unet_config, &text_config, xl_config.as_ref())?;
        if vae_config.latents_mean.is_some() || vae_config.latents_std.is_some() {
            return Err(InferenceError::invalid_model(
                &folder.join("vae"),
                "VAEs with latents_mean / latents_std are not supported",
            ));
        }
        let tokenizer = PromptTokenizer::load(
            &folder.join("tokenizer"),
            text_config.max_position_embeddings,
        )?;

        let te_vb = load_weights(&folder.join("text_encoder"), "model", dtype, device)?;
        let text_encoder = ClipTextModel::new(te_vb, &text_config)
            .map_err(|e| InferenceError::invalid_model(&folder.join("text_encoder"), e))?;
        let xl = match &xl_config {
            None => None,
            Some(config) => {
                let dir = folder.join("text_encoder_2");
                let vb = load_weights(&dir, "model", dtype, device)?;
                Some(XlText {
                    tokenizer_2: PromptTokenizer::load(
                        &folder.join("tokenizer_2"),
                        config.max_position_embeddings,
                    )?,
                    text_encoder_2: ClipTextModelWithProjection::new(vb, config)
                        .map_err(|e| InferenceError::invalid_model(&dir, e))?,
                    // diffusers' SDXL text-to-image and inpainting pipelines default to true.
                    force_zeros_for_empty_prompt: index
                        .as_ref()
                        .and_then(|i| i.force_zeros_for_empty_prompt)
                        .unwrap_or(true),
                })
            }
        };

        let unet_vb = load_weights(
            &folder.join("unet"),
            "diffusion_pytorch_model",
            dtype,
            device,
        )?;
        check_unet(&folder.join("unet"), &unet_config)?;
        let unet = UNet::new(unet_vb, &unet_config)
            .map_err(|e| InferenceError::invalid_model(&folder.join("unet"), e))?;

        let vae_dtype = if vae_config.force_upcast && dtype == DType::F16 {
            DType::F32
        } else {
            dtype
        };
        let vae_vb = load_weights(
            &folder.join("vae"),
            "diffusion_pytorch_model",
            vae_dtype,
            device,
        )?;
        let vae = AutoEncoderKL::new(
            vae_vb.clone(),
            vae_config.in_channels,
            vae_config.out_channels,
            vae_blocks(&vae_config),
        )
        .map_err(|e| InferenceError::invalid_model(&folder.join("vae"), e))?;
        let vae_encoder = VaeEncoder::new(vae_vb, &vae_config)
            .map_err(|e| InferenceError::invalid_model(&folder.join("vae"), e))?;

        Ok(Self {
            tokenizer,
            text_encoder,
            xl,
            unet,
            vae,
            vae_dtype,
            vae_encoder,
            unet_in_channels: unet_config.in_channels,
            vae_config,
            scheduler_config,
            device: device.clone(),
            dtype,
            folder: folder.to_path_buf(),
        })
    }
}
