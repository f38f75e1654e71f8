//! `sdq tiny-model --kind sd15-full|sdxl-full`: the real architectures with random weights.
//!
//! Benchmarks need the shapes of the published models (an SD 1.5 UNet is 860 M
//! parameters, SDXL's 2.6 G) and the build machines cannot reach the hub. These folders
//! have the published `config.json` geometry of every component, so sdq, candle and
//! diffusers all load them, and random weights drawn like torch's default initialisation
//! (uniform within ±1/√fan_in), so activations keep a realistic scale. The tokenizer is
//! the tiny model's (a real CLIP BPE with a small vocabulary; its ids index the full
//! embedding table). Weights are generated tensor by tensor while the file is written,
//! so writing SDXL's 10 GB UNet needs no more memory than its largest tensor.

use std::borrow::Cow;
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;
use serde_json::{json, Value};

use super::InferenceError;

/// Overwrites the keys of `base` with those of `patch` (one level deep).
pub(crate) fn patch(base: &mut Value, patch: Value) {
    if let (Some(base), Value::Object(patch)) = (base.as_object_mut(), patch) {
        base.extend(patch);
    }
}

/// SD 1.5's UNet, VAE and CLIP ViT-L/14 text encoder (stable-diffusion-v1-5).
pub(crate) fn sd15_unet() -> Value {
    json!({
        "sample_size": 64,
        "block_out_channels": [320, 640, 1280, 1280],
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "layers_per_block": 2,
        "attention_head_dim": 8,
        "cross_attention_dim": 768,
    })
}

/// The VAE of SD 1.5 and SDXL (they differ in scaling factor only).
pub(crate) fn vae(sample_size: usize) -> Value {
    json!({
        "sample_size": sample_size,
        "block_out_channels": [128, 256, 512, 512],
        "layers_per_block": 2,
    })
}

/// CLIP ViT-L/14's text transformer (SD 1.5's encoder, SDXL's first).
pub(crate) fn clip_l() -> Value {
    json!({
        "vocab_size": 49408,
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "projection_dim": 768,
    })
}

/// OpenCLIP ViT-bigG/14's text transformer (SDXL's second encoder, with projection).
pub(crate) fn clip_bigg() -> Value {
    json!({
        "vocab_size": 49408,
        "hidden_size": 1280,
        "intermediate_size": 5120,
        "num_hidden_layers": 32,
        "num_attention_heads": 20,
        "projection_dim": 1280,
    })
}

/// stable-diffusion-xl-base-1.0's UNet.
pub(crate) fn sdxl_unet() -> Value {
    json!({
        "sample_size": 128,
        "block_out_channels": [320, 640, 1280],
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "layers_per_block": 2,
        "attention_head_dim": [5, 10, 20],
        "transformer_layers_per_block": [1, 2, 10],
        "cross_attention_dim": 2048,
        "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 2816,
    })
}

/// Records every parameter a module asks for (name and shape) without allocating it:
/// each answer is a zero broadcast to the shape.
#[derive(Default, Clone)]
#[allow(clippy::type_complexity)]
struct Recorder {
    seen: Arc<Mutex<Vec<(String, Vec<usize>)>>>,
}

impl candle_nn::var_builder::SimpleBackend for Recorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.seen
            .lock()
            .expect("recorder lock")
            .push((name.to_string(), s.dims().to_vec()));
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("{name}: the recorder needs shapes")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// One parameter, generated when the writer asks for its bytes.
struct RandomTensor {
    shape: Vec<usize>,
    seed: u64,
    /// Uniform values in `centre ± half_width`.
    centre: f32,
    half_width: f32,
}

impl safetensors::View for RandomTensor {
    fn dtype(&self) -> safetensors::Dtype {
        safetensors::Dtype::F32
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        let n: usize = self.shape.iter().product();
        let mut state = self.seed;
        let mut bytes = Vec::with_capacity(n * 4);
        for _ in 0..n {
            // splitmix64: fast, and every tensor has its own stream.
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let unit = (z >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
            let v = self.centre + self.half_width * (2.0 * unit - 1.0);
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        Cow::Owned(bytes)
    }

    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * 4
    }
}

/// Learns a module's parameters by building it, then writes them as random f32 values to
/// `path` (saved under `rename(name)`), one tensor at a time.
pub(crate) fn save_uniform(
    path: &Path,
    seed: u64,
    build: impl FnOnce(VarBuilder) -> candle_core::Result<()>,
    rename: impl Fn(&str) -> String,
) -> Result<(), InferenceError> {
    let recorder = Recorder::default();
    build(VarBuilder::from_backend(
        Box::new(recorder.clone()),
        DType::F32,
        Device::Cpu,
    ))?;
    let mut params = std::mem::take(&mut *recorder.seen.lock().expect("recorder lock"));
    params.sort();
    params.dedup();
    let tensors: Vec<(String, RandomTensor)> = params
        .into_iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let n: usize = shape.iter().product();
            let (centre, half_width) = if name.ends_with(".bias") {
                (0.0, 0.02)
            } else if shape.len() == 1 {
                // Norm scales: near one so activations keep their size.
                (1.0, 0.1)
            } else {
                // torch's default: kaiming-uniform, ±1/√fan_in.
                (0.0, 1.0 / ((n / shape[0]).max(1) as f32).sqrt())
            };
            let tensor = RandomTensor {
                shape,
                seed: seed ^ (i as u64).wrapping_mul(0x2545_F491_4F6C_DD1D),
                centre,
                half_width,
            };
            (rename(&name), tensor)
        })
        .collect();
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| InferenceError::Io {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    safetensors::serialize_to_file(tensors, None, path)
        .map_err(|e| InferenceError::invalid_model(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_every_parameter_with_its_shape_and_scale() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        save_uniform(
            &path,
            7,
            |vb| {
                candle_nn::linear(300, 4, vb.pp("lin"))?;
                candle_nn::layer_norm(4, 1e-5, vb.pp("norm"))?;
                Ok(())
            },
            |n| n.replace("lin", "proj"),
        )
        .unwrap();
        let loaded = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
        let w = loaded["proj.weight"]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(loaded["proj.weight"].dims(), &[4, 300]);
        let bound = 1.0 / 300f32.sqrt();
        assert!(w.iter().all(|v| v.abs() <= bound));
        let mean_abs = w.iter().map(|v| v.abs()).sum::<f32>() / w.len() as f32;
        assert!(
            (mean_abs - bound / 2.0).abs() < 0.1 * bound,
            "uniform spread"
        );
        let g = loaded["norm.weight"].to_vec1::<f32>().unwrap();
        assert!(g.iter().all(|v| (v - 1.0).abs() <= 0.1));
        assert!(loaded.contains_key("proj.bias") && loaded.contains_key("norm.bias"));
    }
}
