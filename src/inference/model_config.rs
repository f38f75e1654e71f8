//! The `config.json` files of a diffusers model folder, read with diffusers' defaults.
//!
//! Architectures come from these files, never from per-version tables, so fine-tunes and
//! the tiny test models load the same way as the published checkpoints.

use std::path::Path;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::InferenceError;

/// Reads and parses one JSON config file, naming the file in any error.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, InferenceError> {
    let text = std::fs::read_to_string(path).map_err(|source| InferenceError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| InferenceError::invalid_model(path, e))
}

/// A value that diffusers accepts either once for all blocks or once per block.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum PerBlock<T> {
    One(T),
    Each(Vec<T>),
}

impl<T: Clone> PerBlock<T> {
    /// The value for block `i` of `n`, or `None` when a per-block list has the wrong length.
    pub fn get(&self, i: usize, n: usize) -> Option<T> {
        match self {
            PerBlock::One(v) => Some(v.clone()),
            PerBlock::Each(v) if v.len() == n => v.get(i).cloned(),
            PerBlock::Each(_) => None,
        }
    }
}

/// `unet/config.json` (diffusers `UNet2DConditionModel`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UNetConfig {
    #[serde(default = "four")]
    pub in_channels: usize,
    #[serde(default = "four")]
    pub out_channels: usize,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default = "yes")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    #[serde(default = "two")]
    pub layers_per_block: usize,
    #[serde(default = "one")]
    pub downsample_padding: usize,
    #[serde(default = "one_f")]
    pub mid_block_scale_factor: f64,
    #[serde(default = "thirty_two")]
    pub norm_num_groups: usize,
    #[serde(default = "norm_eps")]
    pub norm_eps: f64,
    #[serde(default = "cross_dim")]
    pub cross_attention_dim: usize,
    #[serde(default = "one_per_block")]
    pub transformer_layers_per_block: PerBlock<usize>,
    #[serde(default = "eight_per_block")]
    pub attention_head_dim: PerBlock<usize>,
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock<usize>>,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default)]
    pub upcast_attention: bool,
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    /// SDXL: width of each sinusoidal embedding of the six `add_time_ids`.
    #[serde(default)]
    pub addition_time_embed_dim: Option<usize>,
    /// SDXL: pooled text embedding width plus six time-id embeddings.
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
    #[serde(default)]
    pub sample_size: Option<usize>,
}

/// `vae/config.json` (diffusers `AutoencoderKL`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VaeConfig {
    #[serde(default = "three")]
    pub in_channels: usize,
    #[serde(default = "three")]
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    #[serde(default = "one")]
    pub layers_per_block: usize,
    #[serde(default = "four")]
    pub latent_channels: usize,
    #[serde(default = "thirty_two")]
    pub norm_num_groups: usize,
    #[serde(default = "vae_scaling")]
    pub scaling_factor: f64,
    #[serde(default)]
    pub shift_factor: Option<f64>,
    #[serde(default)]
    pub force_upcast: bool,
    /// Per-channel latent statistics of some SDXL derivatives (Playground); refused.
    #[serde(default)]
    pub latents_mean: Option<Vec<f64>>,
    #[serde(default)]
    pub latents_std: Option<Vec<f64>>,
    #[serde(default = "yes")]
    pub use_quant_conv: bool,
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
    #[serde(default)]
    pub sample_size: Option<usize>,
}

impl VaeConfig {
    /// How many pixels one latent covers along each side.
    pub fn scale_factor(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
    }
}

/// `text_encoder/config.json` (transformers `CLIPTextConfig` or `CLIPTextModelWithProjection`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClipTextConfig {
    #[serde(default = "clip_vocab")]
    pub vocab_size: usize,
    #[serde(default = "clip_hidden")]
    pub hidden_size: usize,
    #[serde(default = "clip_intermediate")]
    pub intermediate_size: usize,
    #[serde(default = "clip_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "clip_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "seventy_seven")]
    pub max_position_embeddings: usize,
    #[serde(default = "quick_gelu")]
    pub hidden_act: String,
    #[serde(default = "clip_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "clip_projection")]
    pub projection_dim: usize,
    /// Decides where the pooled output is read; transformers' default is 2.
    #[serde(default = "two")]
    pub eos_token_id: u32,
    #[serde(default)]
    pub architectures: Vec<String>,
}

/// `model_index.json`: which component classes the pipeline is made of.
#[derive(Debug, Clone, Deserialize)]
pub struct ModelIndex {
    #[serde(rename = "_class_name", default)]
    pub class_name: String,
    /// SDXL: `["transformers", "CLIPTextModelWithProjection"]`; absent or null otherwise.
    #[serde(default)]
    pub text_encoder_2: Option<serde_json::Value>,
    /// SDXL pipelines: an empty negative prompt means zero embeddings, not encoded "".
    #[serde(default)]
    pub force_zeros_for_empty_prompt: Option<bool>,
}

impl ModelIndex {
    /// Whether the folder is an SDXL pipeline with its second text encoder.
    pub fn has_text_encoder_2(&self) -> bool {
        matches!(&self.text_encoder_2, Some(serde_json::Value::Array(v))
            if v.iter().all(|x| !x.is_null()))
    }
}

fn one() -> usize {
    1
}
fn two<T: From<u8>>() -> T {
    T::from(2)
}
fn three() -> usize {
    3
}
fn four() -> usize {
    4
}
fn thirty_two() -> usize {
    32
}
fn seventy_seven() -> usize {
    77
}
fn one_f() -> f64 {
    1.0
}
fn yes() -> bool {
    true
}
fn norm_eps() -> f64 {
    1e-5
}
fn cross_dim() -> usize {
    1280
}
fn one_per_block() -> PerBlock<usize> {
    PerBlock::One(1)
}
fn eight_per_block() -> PerBlock<usize> {
    PerBlock::One(8)
}
fn vae_scaling() -> f64 {
    0.18215
}
fn clip_vocab() -> usize {
    49408
}
fn clip_hidden() -> usize {
    512
}
fn clip_intermediate() -> usize {
    2048
}
fn clip_layers() -> usize {
    12
}
fn clip_heads() -> usize {
    8
}
fn quick_gelu() -> String {
    "quick_gelu".into()
}
fn clip_eps() -> f64 {
    1e-5
}
fn clip_projection() -> usize {
    512
}
