//! `sdq tiny-model`: a small, random, SD-1.5-shaped model in diffusers layout.
//!
//! The build machines cannot reach the hub, so tests and demos run on this model. Its
//! weights come from a seeded generator and are scaled so that images have visible
//! structure, and its tokenizer is a real CLIP byte-level BPE with a small vocabulary.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use candle_transformers::models::stable_diffusion::vae::AutoEncoderKL;
use serde_json::json;

use super::clip::{ClipTextModel, ClipTextModelWithProjection};
use super::model_config::{ClipTextConfig, UNetConfig, VaeConfig};
use super::rng::TorchRng;
use super::unet::UNet;
use super::InferenceError;

/// The seed used when a model id of `tiny` is generated on first use.
pub const DEFAULT_SEED: u64 = 0;

/// Merges learnt from this text make common prompt words single tokens.
const CORPUS: &str = "a photo of a cat sitting on a red chair, highly detailed, oil painting \
of a mountain landscape at sunset, portrait of an astronaut riding a horse on the moon, \
watercolor of a small house in the forest, digital art of a city street at night with \
neon lights, a bowl of fruit on a wooden table, studio lighting, sharp focus, 4k, \
a dog running on the beach, blue sky and white clouds, a castle on a hill, \
low quality, blurry, bad anatomy, ugly, deformed, cartoon, photograph, beautiful, \
the quick brown fox jumps over the lazy dog, an old man with a beard, a woman in a \
green dress, flowers in a vase, snow covered trees, a river through the valley";
const MERGES: usize = 300;

/// Writes the tiny model into `dir` unless it is already there.
///
/// The model is built in a sibling folder and renamed into place, so two processes that
/// race to create it never see a half-written model.
pub fn ensure(dir: &Path, seed: u64) -> Result<(), InferenceError> {
    ensure_kind(dir, seed, TinyKind::Sd15)
}

/// Like [`ensure`], for any family.
pub fn ensure_kind(dir: &Path, seed: u64, kind: TinyKind) -> Result<(), InferenceError> {
    if dir.join("model_index.json").exists() {
        return Ok(());
    }
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|source| io(parent, source))?;
    let staging = parent.join(format!(
        ".{}.tmp-{}",
        dir.file_name().and_then(|n| n.to_str()).unwrap_or("model"),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&staging);
    write_kind(&staging, seed, kind)?;
    match std::fs::rename(&staging, dir) {
        Ok(()) => Ok(()),
        // Somebody else won the race; their model is identical for the same seed.
        Err(_) if dir.join("model_index.json").exists() => {
            let _ = std::fs::remove_dir_all(&staging);
            Ok(())
        }
        Err(source) => Err(io(dir, source)),
    }
}

fn parse<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).expect("the tiny configs match their structs")
}

fn io(path: &Path, source: std::io::Error) -> InferenceError {
    InferenceError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), InferenceError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| io(parent, source))?;
    }
    let text = serde_json::to_string_pretty(value).expect("json values serialise");
    std::fs::write(path, text + "\n").map_err(|source| io(path, source))
}

/// Which Stable Diffusion family the tiny model imitates.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum TinyKind {
    /// SD 1.x: quick-gelu CLIP, convolutional attention projections, epsilon prediction,
    /// padding with the end marker.
    #[default]
    Sd15,
    /// SD 2.x (768-v): gelu OpenCLIP text encoder, linear attention projections,
    /// upcast attention, v-prediction, padding with "!".
    Sd2,
    /// SD 1.5 inpainting: a UNet with 9 input channels (latents, mask, masked image).
    Inpaint,
    /// SDXL: two text encoders (the second with a projection and "!" padding), a UNet
    /// with `text_time` micro-conditioning, linear projections and deeper transformers
    /// in its lower block, and the SDXL VAE scaling factor.
    Sdxl,
    /// SDXL inpainting: `sdxl` with a 9-channel UNet (`StableDiffusionXLInpaintPipeline`).
    #[serde(rename = "sdxl-inpaint")]
    SdxlInpaint,
    /// SD 1.5 at its published size (860 M-parameter UNet, CLIP ViT-L), random weights:
    /// for benchmarks (about 4.3 GB on disk).
    #[serde(rename = "sd15-full")]
    Sd15Full,
    /// SDXL base at its published size (2.6 G-parameter UNet, CLIP ViT-L and OpenCLIP
    /// bigG), random weights: for benchmarks (about 14 GB on disk).
    #[serde(rename = "sdxl-full")]
    SdxlFull,
}

impl TinyKind {
    /// Whether this is a published geometry (`*-full`) rather than a tiny one.
    pub fn is_full_size(self) -> bool {
        matches!(self, TinyKind::Sd15Full | TinyKind::SdxlFull)
    }
}

/// Where a model's random weights come from.
enum Filler {
    /// The tiny models: torch-compatible normal draws in a fixed order, so the parity
    /// fixtures (generated by diffusers from the same files) stay valid.
    Torch(Box<TorchRng>),
    /// The full-size models: uniform draws generated while streaming to disk.
    Uniform { seed: u64, files: u64 },
}

impl Filler {
    fn new(kind: TinyKind, seed: u64) -> Self {
        if kind.is_full_size() {
            Filler::Uniform { seed, files: 0 }
        } else {
            Filler::Torch(Box::new(TorchRng::new(seed)))
        }
    }

    fn save(
        &mut self,
        path: &Path,
        build: impl FnOnce(VarBuilder) -> candle_core::Result<()>,
        rename: impl Fn(&str) -> String,
    ) -> Result<(), InferenceError> {
        match self {
            Filler::Torch(rng) => save_random(path, rng, build, rename),
            Filler::Uniform { seed, files } => {
                *files += 1;
                let seed = seed.wrapping_mul(1_000_003).wrapping_add(*files);
                super::full_size::save_uniform(path, seed, build, rename)
            }
        }
    }
}

/// Writes a complete SD-1.5-shaped model folder to `dir` (which must not exist yet).
pub fn write(dir: &Path, seed: u64) -> Result<(), InferenceError> {
    write_kind(dir, seed, TinyKind::Sd15)
}

/// The configs of a tiny model, as `write_kind` writes them (single-file checkpoints of
/// the tiny families take their architecture from here, as real ones take theirs from
/// the family's published configs).
#[derive(Debug, Clone)]
pub struct TinyConfigs {
    pub text: serde_json::Value,
    /// SDXL: text_encoder_2's.
    pub text_2: Option<serde_json::Value>,
    pub unet: serde_json::Value,
    pub vae: serde_json::Value,
    pub scheduler: serde_json::Value,
    pub model_index: serde_json::Value,
    /// Pad tokens of `tokenizer` (and SDXL's `tokenizer_2`).
    pub pads: Vec<&'static str>,
}

/// The configs of one tiny family.
pub fn configs(kind: TinyKind) -> TinyConfigs {
    if matches!(
        kind,
        TinyKind::Sdxl | TinyKind::SdxlInpaint | TinyKind::SdxlFull
    ) {
        return sdxl_configs(kind);
    }
    let sd2 = kind == TinyKind::Sd2;
    let unet_in = if kind == TinyKind::Inpaint { 9 } else { 4 };
    let (vocab, _) = train_bpe(CORPUS, MERGES);
    // SD 2's tokenizer pads with "!" (id 0), not with the end marker.
    let pad = if sd2 { "!" } else { super::tokenizer::EOS };
    let mut text_config = json!({
        "_name_or_path": "sdq/tiny",
        "architectures": ["CLIPTextModel"],
        "model_type": "clip_text_model",
        "vocab_size": vocab.len(),
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
        "hidden_act": if sd2 { "gelu" } else { "quick_gelu" },
        "layer_norm_eps": 1e-5,
        "projection_dim": 32,
        "bos_token_id": vocab.len() - 2,
        "eos_token_id": vocab.len() - 1,
        "pad_token_id": 1,
        "torch_dtype": "float32",
    });
    let mut unet_config = json!({
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": "0.30.0",
        "sample_size": 8,
        "in_channels": unet_in,
        "out_channels": 4,
        "block_out_channels": [32, 64],
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "layers_per_block": 1,
        "attention_head_dim": [2, 4],
        "cross_attention_dim": 32,
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "act_fn": "silu",
        "center_input_sample": false,
        "flip_sin_to_cos": true,
        "freq_shift": 0,
        "downsample_padding": 1,
        "mid_block_scale_factor": 1,
        "use_linear_projection": sd2,
        "upcast_attention": sd2,
    });
    let mut vae_config = vae_config(0.18215);
    // Exactly Stable Diffusion 1.5's file (2.1's adds v-prediction): it leaves
    // `timestep_spacing` out, so each sampler falls back to its own diffusers default.
    let mut scheduler_config = json!({
        "_class_name": "PNDMScheduler",
        "_diffusers_version": "0.30.0",
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "clip_sample": false,
        "set_alpha_to_one": false,
        "skip_prk_steps": true,
        "steps_offset": 1,
        "trained_betas": null,
    });
    if sd2 {
        scheduler_config["_class_name"] = json!("DDIMScheduler");
        scheduler_config["prediction_type"] = json!("v_prediction");
    }
    let pipeline = if kind == TinyKind::Inpaint {
        "StableDiffusionInpaintPipeline"
    } else {
        "StableDiffusionPipeline"
    };
    let model_index = json!({
        "_class_name": pipeline,
        "_diffusers_version": "0.30.0",
        "feature_extractor": [null, null],
        "safety_checker": [null, null],
        "requires_safety_checker": false,
        "scheduler": ["diffusers", if sd2 { "DDIMScheduler" } else { "PNDMScheduler" }],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    });
    if kind == TinyKind::Sd15Full {
        use super::full_size as full;
        full::patch(&mut text_config, full::clip_l());
        full::patch(&mut unet_config, full::sd15_unet());
        full::patch(&mut vae_config, full::vae(512));
    }
    TinyConfigs {
        text: text_config,
        text_2: None,
        unet: unet_config,
        vae: vae_config,
        scheduler: scheduler_config,
        model_index,
        pads: vec![pad],
    }
}

/// Writes a tokenizer folder of the tiny vocabulary, padding with `pad`.
pub fn write_tiny_tokenizer(dir: &Path, pad: &str) -> Result<(), InferenceError> {
    let (vocab, merges) = train_bpe(CORPUS, MERGES);
    write_tokenizer(dir, &vocab, &merges, pad)
}

/// Writes a complete model folder of the given family to `dir`.
pub fn write_kind(dir: &Path, seed: u64, kind: TinyKind) -> Result<(), InferenceError> {
    if matches!(
        kind,
        TinyKind::Sdxl | TinyKind::SdxlInpaint | TinyKind::SdxlFull
    ) {
        return write_sdxl(dir, seed, kind);
    }
    write_sd(dir, Filler::new(kind, seed), configs(kind))
}

/// A random model with Stable Diffusion 1.5's real architecture (860M-parameter UNet,
/// CLIP-L-sized text encoder, the full VAE) and the tiny vocabulary: what `sdq bench
/// --lora-switch --full-size` loads and patches, so timings are those of a real model.
///
/// `shrink` divides every width (2: a quarter of the parameters), for machines without
/// room for the real size.
pub fn write_sd15_sized(dir: &Path, shrink: usize) -> Result<(), InferenceError> {
    let mut c = configs(TinyKind::Sd15);
    let w = |n: usize| n / shrink.max(1);
    let real = json!({
        "block_out_channels": [w(320), w(640), w(1280), w(1280)],
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "layers_per_block": 2,
        "attention_head_dim": 8,
        "cross_attention_dim": w(768),
        "sample_size": 64,
    });
    for (k, v) in real.as_object().expect("object") {
        c.unet[k] = v.clone();
    }
    for (k, v) in [
        ("hidden_size", w(768)),
        ("intermediate_size", w(3072)),
        ("num_hidden_layers", 12),
        ("num_attention_heads", 12),
    ] {
        c.text[k] = json!(v);
    }
    c.vae["block_out_channels"] = json!([w(128), w(256), w(512), w(512)]);
    c.vae["layers_per_block"] = json!(2);
    // Uniform draws streamed to disk: a billion torch-compatible draws would take minutes.
    write_sd(dir, Filler::new(TinyKind::Sd15Full, DEFAULT_SEED), c)
}

fn write_sd(dir: &Path, mut filler: Filler, c: TinyConfigs) -> Result<(), InferenceError> {
    write_tiny_tokenizer(&dir.join("tokenizer"), c.pads[0])?;
    let (text_config, unet_config, vae_config, scheduler_config, model_index) =
        (c.text, c.unet, c.vae, c.scheduler, c.model_index);
    write_json(&dir.join("text_encoder/config.json"), &text_config)?;
    write_json(&dir.join("unet/config.json"), &unet_config)?;
    write_json(&dir.join("vae/config.json"), &vae_config)?;
    write_json(
        &dir.join("scheduler/scheduler_config.json"),
        &scheduler_config,
    )?;

    let text: ClipTextConfig = parse(text_config);
    filler.save(
        &dir.join("text_encoder/model.safetensors"),
        |vb| ClipTextModel::new(vb, &text).map(drop),
        str::to_string,
    )?;
    finish(dir, &mut filler, unet_config, vae_config, &model_index)
}

/// The part every family shares: UNet and VAE weights drawn (in that order, after the
/// text encoders) from `rng`, then `model_index.json`, written last because its presence
/// marks a complete model.
fn finish(
    dir: &Path,
    filler: &mut Filler,
    unet_config: serde_json::Value,
    vae_config: serde_json::Value,
    model_index: &serde_json::Value,
) -> Result<(), InferenceError> {
    let unet: UNetConfig = parse(unet_config);
    filler.save(
        &dir.join("unet/diffusion_pytorch_model.safetensors"),
        |vb| UNet::new(vb, &unet).map(drop),
        str::to_string,
    )?;
    let vae: VaeConfig = parse(vae_config);
    filler.save(
        &dir.join("vae/diffusion_pytorch_model.safetensors"),
        |vb| AutoEncoderKL::new(vb, 3, 3, super::load::vae_blocks(&vae)).map(drop),
        modern_vae_attention_name,
    )?;
    write_json(&dir.join("model_index.json"), model_index)
}

/// The tiny VAE of every family; only the latent scaling differs (SDXL's 0.13025).
fn vae_config(scaling_factor: f64) -> serde_json::Value {
    json!({
        "_class_name": "AutoencoderKL",
        "_diffusers_version": "0.30.0",
        "sample_size": 64,
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "block_out_channels": [32, 32, 64, 64],
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
        "layers_per_block": 1,
        "act_fn": "silu",
        "norm_num_groups": 32,
        "scaling_factor": scaling_factor,
        "force_upcast": true,
    })
}

/// A tiny CLIP text encoder config; `with_projection` makes it SDXL's text_encoder_2.
fn text_config(
    vocab: usize,
    hidden: usize,
    act: &str,
    eos_token_id: usize,
    with_projection: bool,
) -> serde_json::Value {
    json!({
        "_name_or_path": "sdq/tiny",
        "architectures": [if with_projection { "CLIPTextModelWithProjection" } else { "CLIPTextModel" }],
        "model_type": "clip_text_model",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": hidden + 5,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
        "hidden_act": act,
        "layer_norm_eps": 1e-5,
        "projection_dim": 24,
        "bos_token_id": vocab - 2,
        "eos_token_id": eos_token_id,
        "pad_token_id": 1,
        "torch_dtype": "float32",
    })
}

/// SDXL in miniature, laid out as stabilityai/stable-diffusion-xl-base-1.0 is: CLIP-L-like
/// text_encoder (quick-gelu, padding with the end marker) and OpenCLIP-like
/// text_encoder_2 (gelu, projection, "!" padding, the legacy `eos_token_id` of 2 that
/// selects transformers' argmax pooling), their widths (32 + 64) summing to the UNet's
/// cross_attention_dim; a UNet whose first block has no attention, later blocks use
/// linear projections and deeper transformers; Euler with leading spacing.
fn sdxl_configs(kind: TinyKind) -> TinyConfigs {
    let inpaint = kind == TinyKind::SdxlInpaint;
    let (vocab, _) = train_bpe(CORPUS, MERGES);
    let mut text_1 = text_config(vocab.len(), 32, "quick_gelu", vocab.len() - 1, false);
    let mut text_2 = text_config(vocab.len(), 64, "gelu", 2, true);
    let time_dim = 8;
    let mut unet_config = json!({
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": "0.30.0",
        "sample_size": 8,
        "in_channels": if inpaint { 9 } else { 4 },
        "out_channels": 4,
        "block_out_channels": [32, 64],
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "layers_per_block": 2,
        "attention_head_dim": [2, 4],
        "transformer_layers_per_block": [1, 2],
        "cross_attention_dim": 32 + 64,
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "act_fn": "silu",
        "center_input_sample": false,
        "flip_sin_to_cos": true,
        "freq_shift": 0,
        "downsample_padding": 1,
        "mid_block_scale_factor": 1,
        "use_linear_projection": true,
        "upcast_attention": false,
        "addition_embed_type": "text_time",
        "addition_embed_type_num_heads": 64,
        "addition_time_embed_dim": time_dim,
        "projection_class_embeddings_input_dim": text_2["projection_dim"].as_u64().unwrap_or(0) as usize + 6 * time_dim,
    });
    let mut vae_config = vae_config(0.13025);
    if kind == TinyKind::SdxlFull {
        use super::full_size as full;
        full::patch(&mut text_1, full::clip_l());
        full::patch(&mut text_2, full::clip_bigg());
        full::patch(&mut unet_config, full::sdxl_unet());
        full::patch(&mut vae_config, full::vae(1024));
    }
    let scheduler_config = json!({
        "_class_name": "EulerDiscreteScheduler",
        "_diffusers_version": "0.30.0",
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "clip_sample": false,
        "interpolation_type": "linear",
        "prediction_type": "epsilon",
        "sample_max_value": 1.0,
        "set_alpha_to_one": false,
        "skip_prk_steps": true,
        "steps_offset": 1,
        "timestep_spacing": "leading",
        "trained_betas": null,
        "use_karras_sigmas": false,
    });
    let mut model_index = json!({
        "_class_name": if inpaint { "StableDiffusionXLInpaintPipeline" } else { "StableDiffusionXLPipeline" },
        "_diffusers_version": "0.30.0",
        "feature_extractor": [null, null],
        "image_encoder": [null, null],
        "force_zeros_for_empty_prompt": true,
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    });
    if inpaint {
        // As in diffusers/stable-diffusion-xl-1.0-inpainting-0.1: no aesthetic score ids.
        model_index["requires_aesthetics_score"] = json!(false);
    }
    TinyConfigs {
        text: text_1,
        text_2: Some(text_2),
        unet: unet_config,
        vae: vae_config,
        scheduler: scheduler_config,
        model_index,
        pads: vec![super::tokenizer::EOS, "!"],
    }
}

fn write_sdxl(dir: &Path, seed: u64, kind: TinyKind) -> Result<(), InferenceError> {
    let c = sdxl_configs(kind);
    write_tiny_tokenizer(&dir.join("tokenizer"), c.pads[0])?;
    write_tiny_tokenizer(&dir.join("tokenizer_2"), c.pads[1])?;
    let text_2 = c.text_2.expect("SDXL has two text encoders");
    let (text_1, unet_config, vae_config, scheduler_config, model_index) =
        (c.text, c.unet, c.vae, c.scheduler, c.model_index);
    write_json(&dir.join("text_encoder/config.json"), &text_1)?;
    write_json(&dir.join("text_encoder_2/config.json"), &text_2)?;
    write_json(&dir.join("unet/config.json"), &unet_config)?;
    write_json(&dir.join("vae/config.json"), &vae_config)?;
    write_json(
        &dir.join("scheduler/scheduler_config.json"),
        &scheduler_config,
    )?;

    let mut filler = Filler::new(kind, seed);
    let text_1: ClipTextConfig = parse(text_1);
    filler.save(
        &dir.join("text_encoder/model.safetensors"),
        |vb| ClipTextModel::new(vb, &text_1).map(drop),
        str::to_string,
    )?;
    let text_2: ClipTextConfig = parse(text_2);
    filler.save(
        &dir.join("text_encoder_2/model.safetensors"),
        |vb| ClipTextModelWithProjection::new(vb, &text_2).map(drop),
        str::to_string,
    )?;
    finish(dir, &mut filler, unet_config, vae_config, &model_index)
}

/// candle builds the VAE's attention under the names of diffusers < 0.14 (`query`,
/// `proj_attn`, ...); diffusers today saves `to_q` ... `to_out.0`, and candle reads both,
/// so the tiny model is written the way current diffusers writes it.
fn modern_vae_attention_name(name: &str) -> String {
    [
        (".query.", ".to_q."),
        (".key.", ".to_k."),
        (".value.", ".to_v."),
        (".proj_attn.", ".to_out.0."),
    ]
    .iter()
    .fold(name.to_string(), |n, (old, new)| n.replace(old, new))
}

/// Builds a module against an empty `VarMap` to learn its parameter names and shapes,
/// fills every parameter from `rng`, and saves them as safetensors under `rename(name)`.
fn save_random(
    path: &Path,
    rng: &mut TorchRng,
    build: impl FnOnce(VarBuilder) -> candle_core::Result<()>,
    rename: impl Fn(&str) -> String,
) -> Result<(), InferenceError> {
    let varmap = VarMap::new();
    build(VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))?;
    let vars = varmap.data().lock().expect("varmap lock");
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for name in names {
        let var = &vars[name];
        let dims = var.dims().to_vec();
        let n: usize = dims.iter().product();
        let normals = {
            let mut v = rng.randn(n.max(16));
            v.truncate(n);
            v
        };
        let values: Vec<f32> = if name.ends_with(".bias") {
            normals.iter().map(|v| 0.05 * v).collect()
        } else if dims.len() == 1 {
            // Norm scales: near one so activations keep their size.
            normals.iter().map(|v| 1.0 + 0.1 * v).collect()
        } else {
            let fan_in = (n / dims[0]).max(1) as f32;
            let std = 1.0 / fan_in.sqrt();
            normals.iter().map(|v| std * v).collect()
        };
        tensors.insert(rename(name), Tensor::from_vec(values, dims, &Device::Cpu)?);
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| io(parent, source))?;
    }
    candle_core::safetensors::save(&tensors, path)?;
    Ok(())
}

/// GPT-2's reversible byte-to-character map, which CLIP's vocabulary is written in.
pub(crate) fn bytes_to_unicode() -> Vec<(u8, char)> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars = printable.clone();
    let mut extra = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + extra);
            extra += 1;
        }
    }
    printable
        .into_iter()
        .zip(chars)
        .map(|(b, c)| (b as u8, char::from_u32(c).expect("valid char")))
        .collect()
}

/// Learns `count` BPE merges from `corpus` and returns CLIP's vocabulary layout: bytes,
/// bytes ending a word, merged tokens in merge order, then the start and end markers.
fn train_bpe(corpus: &str, count: usize) -> (Vec<String>, Vec<(String, String)>) {
    let byte_chars = bytes_to_unicode();
    let mut vocab: Vec<String> = byte_chars.iter().map(|(_, c)| c.to_string()).collect();
    vocab.extend(byte_chars.iter().map(|(_, c)| format!("{c}</w>")));

    let mut words: BTreeMap<Vec<String>, usize> = BTreeMap::new();
    for word in corpus
        .to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let mut symbols: Vec<String> = word.chars().map(|c| c.to_string()).collect();
        if let Some(last) = symbols.last_mut() {
            last.push_str("</w>");
        }
        *words.entry(symbols).or_default() += 1;
    }
    let mut merges = Vec::new();
    for _ in 0..count {
        let mut pairs: BTreeMap<(String, String), usize> = BTreeMap::new();
        for (symbols, freq) in &words {
            for w in symbols.windows(2) {
                *pairs.entry((w[0].clone(), w[1].clone())).or_default() += freq;
            }
        }
        // Highest count wins; BTreeMap order breaks ties the same way every run.
        let Some((best, _)) = pairs.into_iter().fold(
            None::<((String, String), usize)>,
            |acc, (pair, n)| match acc {
                Some((_, m)) if m >= n => acc,
                _ => Some((pair, n)),
            },
        ) else {
            break;
        };
        let merged = format!("{}{}", best.0, best.1);
        words = words
            .into_iter()
            .map(|(symbols, freq)| {
                let mut out = Vec::with_capacity(symbols.len());
                let mut i = 0;
                while i < symbols.len() {
                    if i + 1 < symbols.len() && symbols[i] == best.0 && symbols[i + 1] == best.1 {
                        out.push(merged.clone());
                        i += 2;
                    } else {
                        out.push(symbols[i].clone());
                        i += 1;
                    }
                }
                (out, freq)
            })
            .fold(BTreeMap::new(), |mut acc, (s, f)| {
                *acc.entry(s).or_default() += f;
                acc
            });
        vocab.push(merged);
        merges.push(best);
    }
    vocab.push(super::tokenizer::BOS.into());
    vocab.push(super::tokenizer::EOS.into());
    (vocab, merges)
}

fn write_tokenizer(
    dir: &Path,
    vocab: &[String],
    merges: &[(String, String)],
    pad: &str,
) -> Result<(), InferenceError> {
    std::fs::create_dir_all(dir).map_err(|source| io(dir, source))?;
    let vocab_map: serde_json::Map<String, serde_json::Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    write_json(
        &dir.join("vocab.json"),
        &serde_json::Value::Object(vocab_map),
    )?;
    let mut merges_txt = String::from("#version: 0.2\n");
    for (a, b) in merges {
        merges_txt.push_str(&format!("{a} {b}\n"));
    }
    let merges_path = dir.join("merges.txt");
    std::fs::write(&merges_path, merges_txt).map_err(|source| io(&merges_path, source))?;
    let special = |t: &str| json!({"content": t, "lstrip": false, "normalized": true, "rstrip": false, "single_word": false, "__type": "AddedToken"});
    write_json(
        &dir.join("tokenizer_config.json"),
        &json!({
            "tokenizer_class": "CLIPTokenizer",
            "model_max_length": 77,
            "do_lower_case": true,
            "errors": "replace",
            "add_prefix_space": false,
            "bos_token": special(super::tokenizer::BOS),
            "eos_token": special(super::tokenizer::EOS),
            "unk_token": special(super::tokenizer::EOS),
            "pad_token": special(pad),
        }),
    )?;
    write_json(
        &dir.join("special_tokens_map.json"),
        &json!({
            "bos_token": super::tokenizer::BOS,
            "eos_token": super::tokenizer::EOS,
            "unk_token": super::tokenizer::EOS,
            "pad_token": pad,
        }),
    )?;
    let mut tokenizer =
        super::tokenizer::build_clip_tokenizer(&dir.join("vocab.json"), &merges_path)?;
    let json_path = dir.join("tokenizer.json");
    super::tokenizer::add_special(&mut tokenizer, pad)
        .map_err(|e| InferenceError::invalid_model(&json_path, e))?;
    tokenizer
        .save(&json_path, true)
        .map_err(|e| InferenceError::invalid_model(&json_path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_covers_every_byte_once() {
        let map = bytes_to_unicode();
        assert_eq!(map.len(), 256);
        let mut bytes: Vec<u8> = map.iter().map(|(b, _)| *b).collect();
        bytes.sort();
        bytes.dedup();
        assert_eq!(bytes.len(), 256);
        assert_eq!(map[0], (b'!', '!'));
    }

    #[test]
    fn bpe_training_is_deterministic_and_learns_words() {
        let (vocab, merges) = train_bpe(CORPUS, MERGES);
        assert_eq!((vocab.clone(), merges.clone()), train_bpe(CORPUS, MERGES));
        assert_eq!(vocab.len(), 512 + merges.len() + 2);
        assert!(vocab.contains(&"a</w>".to_string()));
        assert!(
            vocab.contains(&"of</w>".to_string()),
            "common words become tokens"
        );
    }
}
