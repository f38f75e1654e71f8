//! The text-to-image pipeline: model loading and the denoising loop.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use candle_transformers::models::stable_diffusion::vae::{AutoEncoderKL, AutoEncoderKLConfig};
use serde::{Deserialize, Serialize};

use super::clip::{ClipTextModel, ClipTextModelWithProjection};
use super::model_config::{read_json, ClipTextConfig, ModelIndex, UNetConfig, VaeConfig};
use super::rng::TorchRng;
use super::schedulers::{NoiseSource, SchedulerConfigFile, SchedulerKind};
use super::tokenizer::{LongPrompt, PromptTokenizer};
use super::unet::{AddedConditions, UNet};
use super::vae_encoder::VaeEncoder;
use super::InferenceError;

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

/// What an inpainting run carries through the denoising loop.
struct Inpaint {
    /// Inpainting UNets (9 input channels): mask and masked-image latents, concatenated.
    conditioning: Option<Tensor>,
    /// Ordinary UNets: the known region is put back after every step.
    blend: Option<Blend>,
}

/// Masked latent blending for UNets without mask inputs.
struct Blend {
    /// 1 where the image is repainted, at latent resolution.
    mask: Tensor,
    image_latents: Tensor,
    /// The starting noise, reused to noise the known region to each next timestep.
    noise: Tensor,
}

impl Blend {
    /// After the step at `index`: the known region, noised to the next timestep (clean
    /// after the last), replaces what the sampler made of it.
    fn apply(
        &self,
        latents: &Tensor,
        scheduler: &dyn super::schedulers::Scheduler,
        index: usize,
        len: usize,
    ) -> candle_core::Result<Tensor> {
        let known = if index + 1 < len {
            scheduler.add_noise(&self.image_latents, &self.noise, index + 1)?
        } else {
            self.image_latents.clone()
        };
        let keep = self.mask.affine(-1.0, 1.0)?;
        known.broadcast_mul(&keep)? + latents.broadcast_mul(&self.mask)?
    }
}

/// The first schedule entry img2img runs, as diffusers' `get_timesteps` picks it: the
/// last `floor(steps * strength)` steps of the full schedule.
fn img2img_start(steps: usize, strength: f64, order: usize) -> usize {
    let kept = ((steps as f64 * strength).floor() as usize).min(steps);
    (steps - kept) * order
}

/// A float32 array given by the caller in place of a random draw, so that a run can be
/// replayed exactly across implementations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NoiseArray {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

impl NoiseArray {
    /// Reads a float32 (or float64, converted) `.npy` file, as numpy's `np.save` writes.
    pub fn read_npy(path: &Path) -> Result<Self, InferenceError> {
        let tensor = Tensor::read_npy(path).map_err(|e| {
            InferenceError::InvalidRequest(format!("cannot read {}: {e}", path.display()))
        })?;
        Self::from_tensor(&tensor)
    }

    /// Copies a tensor's values out, in row-major order.
    pub fn from_tensor(tensor: &Tensor) -> Result<Self, InferenceError> {
        Ok(Self {
            shape: tensor.dims().to_vec(),
            values: tensor.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
        })
    }

    fn to_tensor(
        &self,
        what: &str,
        shape: &[usize],
        like: &Tensor,
    ) -> Result<Tensor, InferenceError> {
        if self.shape != shape {
            return Err(InferenceError::InvalidRequest(format!(
                "{what} has shape {:?} but this request needs {shape:?}",
                self.shape
            )));
        }
        Ok(Tensor::from_slice(&self.values, shape, like.device())?.to_dtype(like.dtype())?)
    }
}

/// Reported after every denoising step.
#[derive(Debug, Clone, Copy)]
pub struct StepProgress {
    /// 1-based step just finished.
    pub step: usize,
    pub total: usize,
    pub elapsed_ms: u64,
}

/// One RGB image as the VAE decoded it: floats in [0, 1], row-major, channels last
/// (what diffusers returns with `output_type="np"`).
#[derive(Debug, Clone)]
pub struct FloatImage {
    pub width: usize,
    pub height: usize,
    pub seed: u64,
    pub rgb: Vec<f32>,
}

impl FloatImage {
    /// Rounds to 8 bits the way diffusers' `numpy_to_pil` does.
    pub fn to_u8(&self) -> GeneratedImage {
        GeneratedImage {
            width: self.width,
            height: self.height,
            seed: self.seed,
            rgb: self
                .rgb
                .iter()
                .map(|&v| (v * 255.0).round_ties_even().clamp(0.0, 255.0) as u8)
                .collect(),
        }
    }
}

/// One RGB image, 8 bits per channel, row-major.
#[derive(Debug, Clone)]
pub struct GeneratedImage {
    pub width: usize,
    pub height: usize,
    pub seed: u64,
    pub rgb: Vec<u8>,
}

/// A loaded Stable Diffusion model (SD 1.x, 2.x or XL layout) ready to generate.
pub struct StableDiffusion {
    tokenizer: PromptTokenizer,
    text_encoder: ClipTextModel,
    /// SDXL only: the second tokenizer and text encoder.
    xl: Option<XlText>,
    unet: UNet,
    vae: AutoEncoderKL,
    /// The VAE runs in f32 when its config sets `force_upcast` and the model runs in f16,
    /// as diffusers' SDXL pipelines do (SDXL's VAE overflows in f16).
    vae_dtype: DType,
    vae_encoder: VaeEncoder,
    /// 9 for inpainting UNets (latents, mask, masked-image latents), else 4.
    unet_in_channels: usize,
    vae_config: VaeConfig,
    scheduler_config: SchedulerConfigFile,
    device: Device,
    dtype: DType,
    folder: PathBuf,
}

/// SDXL's second text encoder and the pipeline setting that goes with it.
struct XlText {
    tokenizer_2: PromptTokenizer,
    text_encoder_2: ClipTextModelWithProjection,
    /// An empty negative prompt is all-zero conditioning rather than encoded "".
    force_zeros_for_empty_prompt: bool,
}

/// A prompt as the UNet reads it.
struct PromptEmbeddings {
    /// `[1, 77 × windows, cross_attention_dim]`.
    tokens: Tensor,
    /// SDXL: text_encoder_2's projected pooled output of the first window, `[1, proj]`.
    pooled: Option<Tensor>,
}

impl PromptEmbeddings {
    /// diffusers' `force_zeros_for_empty_prompt`: zeros shaped like `like`.
    fn zeros_like(like: &Self) -> candle_core::Result<Self> {
        Ok(Self {
            tokens: like.tokens.zeros_like()?,
            pooled: like.pooled.as_ref().map(Tensor::zeros_like).transpose()?,
        })
    }
}

/// SDXL's micro-conditioning ids, in diffusers' order: original size (h, w), crop
/// top-left (y, x), target size (h, w). sdq neither crops nor resizes, so the original
/// and target sizes are both the requested size, which is diffusers' default too.
pub fn add_time_ids(height: usize, width: usize) -> [f32; 6] {
    let (h, w) = (height as f32, width as f32);
    [h, w, 0.0, 0.0, h, w]
}

/// Per-token conditioning of the whole UNet batch (negative rows first under
/// classifier-free guidance, one row per image) and SDXL's added conditions beside it.
struct Conditioning {
    tokens: Tensor,
    /// SDXL: `text_embeds` `[rows, proj]` and `time_ids` `[rows, 6]`.
    added: Option<(Tensor, Tensor)>,
}

impl Conditioning {
    /// Stacks `uncond` (if guided) and `cond`, each repeated once per image.
    fn batch(
        cond: PromptEmbeddings,
        uncond: Option<PromptEmbeddings>,
        images: usize,
        time_ids: [f32; 6],
        dtype: DType,
    ) -> candle_core::Result<Self> {
        let parts: Vec<PromptEmbeddings> = uncond.into_iter().chain([cond]).collect();
        let rows = parts.len() * images;
        let tokens = parts
            .iter()
            .map(|p| p.tokens.repeat((images, 1, 1)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let pooled = parts
            .iter()
            .map(|p| p.pooled.as_ref().map(|t| t.repeat((images, 1))))
            .collect::<Option<candle_core::Result<Vec<_>>>>()
            .transpose()?;
        let added = match pooled {
            Some(pooled) => {
                let device = tokens[0].device();
                let ids = Tensor::new(&time_ids, device)?
                    .unsqueeze(0)?
                    .repeat((rows, 1))?
                    .to_dtype(dtype)?;
                Some((Tensor::cat(&pooled, 0)?.to_dtype(dtype)?, ids))
            }
            None => None,
        };
        Ok(Self {
            tokens: Tensor::cat(&tokens, 0)?.to_dtype(dtype)?,
            added,
        })
    }
}

/// Where random draws come from: the caller's arrays first, in order, then one
/// torch-compatible generator per image, seeded `seed + i` (diffusers' list of
/// generators draws image by image in the same way).
struct Draws {
    supplied: std::collections::VecDeque<Tensor>,
    per_image: Vec<TorchRng>,
}

impl NoiseSource for Draws {
    fn randn_like(&mut self, like: &Tensor) -> candle_core::Result<Tensor> {
        if let Some(next) = self.supplied.pop_front() {
            if next.dims() != like.dims() {
                candle_core::bail!(
                    "a supplied noise array has shape {:?}, the step needs {:?}",
                    next.dims(),
                    like.dims()
                );
            }
            return next.to_dtype(like.dtype());
        }
        let (batch, c, h, w) = like.dims4()?;
        debug_assert_eq!(batch, self.per_image.len());
        let per_image = c * h * w;
        let values: Vec<f32> = self
            .per_image
            .iter_mut()
            .flat_map(|g| g.randn(per_image))
            .collect();
        Tensor::from_vec(values, (batch, c, h, w), like.device())?.to_dtype(like.dtype())
    }
}

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

    /// The folder the model was loaded from.
    pub fn folder(&self) -> &Path {
        &self.folder
    }

    /// Image sides must be multiples of this.
    pub fn size_multiple(&self) -> usize {
        self.vae_config.scale_factor()
    }

    /// How many 77-token windows `text` needs (the larger count of SDXL's two tokenizers).
    fn window_count(&self, text: &str, mode: LongPrompt) -> Result<usize, InferenceError> {
        let first = self.tokenizer.windows(text, mode, 1)?.len();
        Ok(match &self.xl {
            Some(xl) => first.max(xl.tokenizer_2.windows(text, mode, 1)?.len()),
            None => first,
        })
    }

    /// Encodes a prompt, window by window, concatenated along the sequence.
    ///
    /// SD 1.x/2.x condition on the final, normalised hidden state. SDXL conditions on the
    /// penultimate hidden state (before the final norm) of each of its two encoders,
    /// joined on the feature axis, and adds text_encoder_2's projected pooled output of
    /// the first window (the only one diffusers ever sees).
    fn encode_prompt(
        &self,
        text: &str,
        mode: LongPrompt,
        windows: usize,
    ) -> Result<PromptEmbeddings, InferenceError> {
        let first = self.tokenizer.windows(text, mode, windows)?;
        let ids_tensor = |ids: &[u32]| Tensor::new(ids, &self.device)?.unsqueeze(0);
        let Some(xl) = &self.xl else {
            let encoded = first
                .iter()
                .map(|ids| {
                    Ok(self
                        .text_encoder
                        .forward(&ids_tensor(ids)?)?
                        .last_hidden_state)
                })
                .collect::<Result<Vec<_>, InferenceError>>()?;
            return Ok(PromptEmbeddings {
                tokens: Tensor::cat(&encoded, 1)?,
                pooled: None,
            });
        };
        let second = xl.tokenizer_2.windows(text, mode, windows)?;
        if first.len() != second.len() {
            return Err(InferenceError::InvalidRequest(
                "SDXL's two tokenizers split this prompt into different window counts".into(),
            ));
        }
        let penultimate = |hidden: &[Tensor]| hidden[hidden.len().saturating_sub(2)].clone();
        let mut tokens = Vec::with_capacity(first.len());
        let mut pooled = None;
        for (ids_1, ids_2) in first.iter().zip(&second) {
            let one = self.text_encoder.forward(&ids_tensor(ids_1)?)?;
            let (two, projected) = xl.text_encoder_2.forward(ids_2)?;
            tokens.push(Tensor::cat(
                &[
                    penultimate(&one.hidden_states),
                    penultimate(&two.hidden_states),
                ],
                D::Minus1,
            )?);
            pooled.get_or_insert(projected);
        }
        Ok(PromptEmbeddings {
            tokens: Tensor::cat(&tokens, 1)?,
            pooled,
        })
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
        let started = Instant::now();
        let batch = req.num_images;
        let use_cfg = req.guidance_scale > 1.0;

        // Prompt and negative prompt must cover the same number of 77-token windows.
        let count = |text: &str| self.window_count(text, req.long_prompt);
        let windows = if use_cfg {
            count(&req.prompt)?.max(count(&req.negative_prompt)?)
        } else {
            count(&req.prompt)?
        };
        let cond = self.encode_prompt(&req.prompt, req.long_prompt, windows)?;
        let uncond = if !use_cfg {
            None
        } else if req.negative_prompt.is_empty()
            && self
                .xl
                .as_ref()
                .is_some_and(|xl| xl.force_zeros_for_empty_prompt)
        {
            // Our empty negative prompt is diffusers' `negative_prompt=None`.
            Some(PromptEmbeddings::zeros_like(&cond)?)
        } else {
            Some(self.encode_prompt(&req.negative_prompt, req.long_prompt, windows)?)
        };
        let conditioning = Conditioning::batch(
            cond,
            uncond,
            batch,
            add_time_ids(req.height, req.width),
            self.dtype,
        )?;
        self.denoise(req, conditioning, use_cfg, started, on_step)
    }

    fn denoise(
        &self,
        req: &GenerateRequest,
        conditioning: Conditioning,
        use_cfg: bool,
        started: Instant,
        on_step: &mut dyn FnMut(StepProgress) -> ControlFlow<()>,
    ) -> Result<Vec<FloatImage>, InferenceError> {
        if let Some(what) = self.scheduler_config.unsupported() {
            return Err(InferenceError::invalid_model(
                &self.folder,
                format!("scheduler_config.json asks for {what}, which sdq does not implement"),
            ));
        }
        let added = conditioning
            .added
            .as_ref()
            .map(|(text_embeds, time_ids)| AddedConditions {
                text_embeds,
                time_ids,
            });
        let batch = req.num_images;
        let multiple = self.size_multiple();
        let (lh, lw) = (req.height / multiple, req.width / multiple);
        let channels = self.vae_config.latent_channels;
        let mut scheduler = req.scheduler.build(&self.scheduler_config, req.steps);
        let shape = [batch, channels, lh, lw];
        let like = Tensor::zeros(&shape, self.dtype, &self.device)?;
        let supplied = req
            .noise
            .iter()
            .enumerate()
            .map(|(i, n)| n.to_tensor(&format!("noise array {}", i + 1), &shape, &like))
            .collect::<Result<_, _>>()?;
        let mut noise = Draws {
            supplied,
            per_image: (0..batch)
                .map(|i| TorchRng::new(req.seed.wrapping_add(i as u64)))
                .collect(),
        };
        let timesteps = scheduler.timesteps().to_vec();
        if timesteps.is_empty() {
            // PNDM's Runge-Kutta warm-up needs more steps than a very short run has.
            return Err(InferenceError::InvalidRequest(format!(
                "{} cannot run {} steps with this model's scheduler config",
                req.scheduler, req.steps
            )));
        }
        let (start, mut latents, inpaint) = match &req.init_image {
            None => {
                if self.unet_in_channels != 4 {
                    return Err(InferenceError::InvalidRequest(
                        "this is an inpainting model: give an init image and a mask".into(),
                    ));
                }
                // Given latents do not consume the generators, exactly as in diffusers.
                let initial = match &req.latents {
                    Some(given) => given.to_tensor("latents", &shape, &like)?,
                    None => {
                        let mut rng_only = Draws {
                            supplied: Default::default(),
                            per_image: std::mem::take(&mut noise.per_image),
                        };
                        let drawn = rng_only.randn_like(&like)?;
                        noise.per_image = rng_only.per_image;
                        drawn
                    }
                };
                (0, (initial * scheduler.init_noise_sigma())?, None)
            }
            Some(init) => {
                if req.latents.is_some() {
                    return Err(InferenceError::InvalidRequest(
                        "img2img starts from its image: latents cannot be given too".into(),
                    ));
                }
                let start = img2img_start(req.steps, init.strength, scheduler.order());
                if start >= timesteps.len() {
                    return Err(InferenceError::InvalidRequest(format!(
                        "strength {} leaves no denoising step out of {}",
                        init.strength, req.steps
                    )));
                }
                let pixels = self.init_pixels(init, &like)?;
                match &init.mask {
                    None if self.unet_in_channels != 4 => {
                        return Err(InferenceError::InvalidRequest(
                            "this is an inpainting model: give a mask too".into(),
                        ))
                    }
                    // Draw order as in diffusers: the posterior sample, then add_noise's noise.
                    None => {
                        let clean = self.sample_posterior(&pixels, &like, &mut noise)?;
                        let fresh = noise.randn_like(&clean)?;
                        (start, scheduler.add_noise(&clean, &fresh, start)?, None)
                    }
                    Some(mask) => {
                        let (latents, inpaint) = self.start_inpaint(
                            init,
                            mask,
                            &pixels,
                            &like,
                            &mut noise,
                            scheduler.as_ref(),
                            start,
                        )?;
                        (start, latents, Some(inpaint))
                    }
                }
            }
        };
        let total = timesteps.len() - start;
        for (index, &t) in timesteps.iter().enumerate().skip(start) {
            let input = if use_cfg {
                Tensor::cat(&[&latents, &latents], 0)?
            } else {
                latents.clone()
            };
            let mut input = scheduler.scale_model_input(input, index)?;
            if let Some(Inpaint {
                conditioning: Some(extra),
                ..
            }) = &inpaint
            {
                // Inpainting UNets read the mask and the masked image beside the latents.
                let extra = if use_cfg {
                    Tensor::cat(&[extra, extra], 0)?
                } else {
                    extra.clone()
                };
                input = Tensor::cat(&[&input, &extra], 1)?;
            }
            let predicted = self
                .unet
                .forward(&input, t, &conditioning.tokens, added.as_ref())?;
            let predicted = if use_cfg {
                let parts = predicted.chunk(2, 0)?;
                let (uncond, cond) = (&parts[0], &parts[1]);
                (uncond + ((cond - uncond)? * req.guidance_scale)?)?
            } else {
                predicted
            };
            latents = scheduler.step(&predicted, index, &latents, &mut noise)?;
            if let Some(Inpaint {
                blend: Some(blend), ..
            }) = &inpaint
            {
                latents = blend.apply(&latents, scheduler.as_ref(), index, timesteps.len())?;
            }
            let progress = StepProgress {
                step: index + 1 - start,
                total,
                elapsed_ms: started.elapsed().as_millis() as u64,
            };
            if on_step(progress).is_break() {
                return Err(InferenceError::Canceled);
            }
        }
        self.decode(&latents, req)
    }

    /// The init image as diffusers' image processor gives it to the VAE: `[1, 3, H, W]`
    /// in [-1, 1].
    fn init_pixels(&self, init: &InitImage, like: &Tensor) -> Result<Tensor, InferenceError> {
        let (_, _, lh, lw) = like.dims4()?;
        let multiple = self.size_multiple();
        if init.width != lw * multiple || init.height != lh * multiple {
            return Err(InferenceError::InvalidRequest(format!(
                "the init image is {}x{} but the request is {}x{}",
                init.width,
                init.height,
                lw * multiple,
                lh * multiple
            )));
        }
        if !(init.strength > 0.0 && init.strength <= 1.0) {
            return Err(InferenceError::InvalidRequest(
                "strength must be in (0, 1]".into(),
            ));
        }
        if init.rgb.len() != init.width * init.height * 3 {
            return Err(InferenceError::InvalidRequest(
                "the init image has the wrong number of pixels".into(),
            ));
        }
        Ok(
            Tensor::from_slice(&init.rgb, (init.height, init.width, 3), &self.device)?
                .to_dtype(DType::F32)?
                .permute((2, 0, 1))?
                .unsqueeze(0)?
                .affine(2.0 / 255.0, -1.0)?
                .to_dtype(self.dtype)?,
        )
    }

    /// Encodes `pixels` and draws one posterior sample per image of the batch (drawn like
    /// the latents), times the VAE's `scaling_factor`.
    fn sample_posterior(
        &self,
        pixels: &Tensor,
        like: &Tensor,
        noise: &mut Draws,
    ) -> Result<Tensor, InferenceError> {
        let posterior = self.vae_encoder.encode(&pixels.to_dtype(self.vae_dtype)?)?;
        let z = noise.randn_like(like)?.to_dtype(self.vae_dtype)?;
        let sample = posterior
            .mean
            .broadcast_add(&posterior.std.broadcast_mul(&z)?)?;
        Ok((sample * self.vae_config.scaling_factor)?.to_dtype(like.dtype())?)
    }

    /// Sets up inpainting as diffusers' `StableDiffusionInpaintPipeline` does, drawing in
    /// its order: the image's posterior (unless an inpainting UNet starts from pure
    /// noise), the starting noise, then the masked image's posterior.
    #[allow(clippy::too_many_arguments)]
    fn start_inpaint(
        &self,
        init: &InitImage,
        mask: &[u8],
        pixels: &Tensor,
        like: &Tensor,
        noise: &mut Draws,
        scheduler: &dyn super::schedulers::Scheduler,
        start: usize,
    ) -> Result<(Tensor, Inpaint), InferenceError> {
        if mask.len() != init.width * init.height {
            return Err(InferenceError::InvalidRequest(
                "the mask must be one gray byte per pixel of the init image".into(),
            ));
        }
        let (batch, _, lh, lw) = like.dims4()?;
        let nine_channels = self.unet_in_channels == 9;
        // Strength 1 starts from pure noise rather than from the noised image.
        let from_noise = init.strength >= 1.0;
        let image_latents = if !nine_channels || !from_noise {
            Some(self.sample_posterior(pixels, like, noise)?)
        } else {
            None
        };
        let fresh = noise.randn_like(like)?;
        let latents = match (&image_latents, from_noise) {
            (Some(clean), false) => scheduler.add_noise(clean, &fresh, start)?,
            _ => (&fresh * scheduler.init_noise_sigma())?,
        };
        // White (>= 0.5) repaints; the masked image keeps only what is not repainted.
        let repaint: Vec<f32> = mask
            .iter()
            .map(|&m| if m as f32 / 255.0 >= 0.5 { 1.0 } else { 0.0 })
            .collect();
        let full = Tensor::from_vec(repaint, (1, 1, init.height, init.width), &self.device)?
            .to_dtype(self.dtype)?;
        let keep = full.affine(-1.0, 1.0)?;
        let masked = pixels.broadcast_mul(&keep)?;
        let masked_latents = self.sample_posterior(&masked, like, noise)?;
        // torch's nearest interpolation to the latent size picks every 8th pixel.
        let step = self.size_multiple();
        let small: Vec<f32> = {
            let values = full.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            (0..lh)
                .flat_map(|y| (0..lw).map(move |x| (y, x)))
                .map(|(y, x)| values[y * step * init.width + x * step])
                .collect()
        };
        let mask_latent = Tensor::from_vec(small, (1, 1, lh, lw), &self.device)?
            .to_dtype(self.dtype)?
            .repeat((batch, 1, 1, 1))?;
        let inpaint = if nine_channels {
            Inpaint {
                conditioning: Some(Tensor::cat(&[&mask_latent, &masked_latents], 1)?),
                blend: None,
            }
        } else {
            Inpaint {
                conditioning: None,
                blend: Some(Blend {
                    mask: mask_latent,
                    image_latents: image_latents.expect("drawn for ordinary UNets"),
                    noise: fresh,
                }),
            }
        };
        Ok((latents, inpaint))
    }

    /// Latents to 8-bit RGB images, scaled by the VAE's own `scaling_factor`.
    fn decode(
        &self,
        latents: &Tensor,
        req: &GenerateRequest,
    ) -> Result<Vec<FloatImage>, InferenceError> {
        let mut latents = (latents.to_dtype(self.vae_dtype)? / self.vae_config.scaling_factor)?;
        if let Some(shift) = self.vae_config.shift_factor {
            latents = (latents + shift)?;
        }
        let mut images = Vec::with_capacity(req.num_images);
        for i in 0..req.num_images {
            let one = latents.narrow(0, i, 1)?;
            let decoded = self.vae.decode(&one)?;
            let pixels = ((decoded.to_dtype(DType::F32)? / 2.0)? + 0.5)?
                .clamp(0.0, 1.0)?
                .squeeze(0)?
                .permute((1, 2, 0))?
                .flatten_all()?
                .to_vec1::<f32>()?;
            images.push(FloatImage {
                width: req.width,
                height: req.height,
                seed: req.seed.wrapping_add(i as u64),
                rgb: pixels,
            });
        }
        Ok(images)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(scheduler: SchedulerKind) -> GenerateRequest {
        GenerateRequest {
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
            latents: None,
            noise: Vec::new(),
            init_image: None,
        }
    }

    #[test]
    fn time_ids_are_original_size_crop_and_target_size_height_first() {
        assert_eq!(add_time_ids(48, 64), [48.0, 64.0, 0.0, 0.0, 48.0, 64.0]);
        assert_eq!(
            add_time_ids(1024, 768),
            [1024.0, 768.0, 0.0, 0.0, 1024.0, 768.0]
        );
    }

    #[test]
    fn sdxl_conditioning_joins_both_encoders_and_zeroes_an_empty_negative_prompt() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("xl");
        crate::inference::tiny::write_kind(&folder, 0, crate::inference::tiny::TinyKind::Sdxl)
            .unwrap();
        let sd = StableDiffusion::load(&folder, &Device::Cpu, DType::F32).unwrap();
        let xl = sd
            .xl
            .as_ref()
            .expect("an SDXL folder loads both text encoders");
        assert!(xl.force_zeros_for_empty_prompt);

        // Penultimate states of a 32- and a 64-wide encoder side by side; the pooled
        // output is text_encoder_2's projection (24 wide).
        let cond = sd
            .encode_prompt("a photo of a cat", LongPrompt::Chunk, 1)
            .unwrap();
        assert_eq!(cond.tokens.dims(), &[1, 77, 96]);
        let pooled = cond.pooled.as_ref().unwrap();
        assert_eq!(pooled.dims(), &[1, 24]);
        let ids_1 = sd
            .tokenizer
            .windows("a photo of a cat", LongPrompt::Chunk, 1)
            .unwrap();
        let first = sd
            .text_encoder
            .forward(
                &Tensor::new(ids_1[0].as_slice(), &Device::Cpu)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap(),
            )
            .unwrap();
        let left = cond.tokens.narrow(2, 0, 32).unwrap();
        let penultimate = &first.hidden_states[first.hidden_states.len() - 2];
        let gap = (left - penultimate)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert_eq!(
            gap.to_scalar::<f32>().unwrap(),
            0.0,
            "left half is encoder 1's penultimate state"
        );

        // Two windows for a long prompt; the pooled output stays the first window's.
        let long = "a photo of a cat, ".repeat(20);
        let chunked = sd.encode_prompt(&long, LongPrompt::Chunk, 1).unwrap();
        assert_eq!(chunked.tokens.dims(), &[1, 154, 96]);
        assert_eq!(chunked.pooled.as_ref().unwrap().dims(), &[1, 24]);

        let zeros = PromptEmbeddings::zeros_like(&cond).unwrap();
        let batch =
            Conditioning::batch(cond, Some(zeros), 2, add_time_ids(48, 64), DType::F32).unwrap();
        assert_eq!(batch.tokens.dims(), &[4, 77, 96]);
        let (text_embeds, time_ids) = batch.added.as_ref().unwrap();
        assert_eq!(text_embeds.dims(), &[4, 24]);
        // Negative rows first, all zero; positive rows carry the pooled output.
        let sums: Vec<f32> = text_embeds
            .abs()
            .unwrap()
            .sum(1)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(&sums[..2], &[0.0, 0.0]);
        assert!(sums[2] > 0.0 && sums[2] == sums[3]);
        assert_eq!(
            time_ids.to_vec2::<f32>().unwrap(),
            vec![vec![48.0, 64.0, 0.0, 0.0, 48.0, 64.0]; 4]
        );
    }

    #[test]
    fn a_force_upcast_vae_runs_in_f32_under_f16() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("xl");
        crate::inference::tiny::write_kind(&folder, 0, crate::inference::tiny::TinyKind::Sdxl)
            .unwrap();
        let full = StableDiffusion::load(&folder, &Device::Cpu, DType::F32).unwrap();
        let half = StableDiffusion::load(&folder, &Device::Cpu, DType::F16).unwrap();
        assert_eq!(full.vae_dtype, DType::F32);
        assert_eq!(
            half.vae_dtype,
            DType::F32,
            "vae/config.json sets force_upcast"
        );
        // The same f16 latents decode alike with the upcast VAE and the f32 model's.
        let mut rng = TorchRng::new(5);
        let latents = Tensor::from_vec(rng.randn(4 * 8 * 8), (1, 4, 8, 8), &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F16)
            .unwrap();
        let req = request(SchedulerKind::Euler);
        let a = half.decode(&latents, &req).unwrap();
        let b = full
            .decode(&latents.to_dtype(DType::F32).unwrap(), &req)
            .unwrap();
        assert_eq!(a[0].rgb, b[0].rgb);
    }

    #[test]
    fn img2img_runs_the_last_strength_fraction_of_the_schedule() {
        // diffusers: int(steps * strength) steps are kept, counted from the end.
        assert_eq!(img2img_start(5, 0.6, 1), 2);
        assert_eq!(img2img_start(10, 1.0, 1), 0);
        assert_eq!(img2img_start(4, 0.5, 2), 4);
        assert_eq!(img2img_start(3, 0.2, 1), 3);
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
                .generate(&request(kind), &mut |p| {
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
                .generate(&request(kind), &mut |_| ControlFlow::Continue(()))
                .unwrap();
            assert_eq!(again[0].rgb, img[0].rgb, "{kind}: same seed, same pixels");
        }
    }
}
