//! One UNet evaluation (a denoising step with classifier-free guidance: batch 2).
//!
//! Ours against candle-transformers' `UNet2DConditionModel` on the same weights and
//! inputs where candle can express the model (SD 1.x / 2.x), otherwise (SDXL) against
//! our own UNet running candle's layers instead of our kernels.

use std::cell::RefCell;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::{interleaved, Row};
use crate::inference::model_config::{read_json, UNetConfig};
use crate::inference::ops::Path as LayerPath;
use crate::inference::rng::TorchRng;
use crate::inference::unet::{candle_config, AddedConditions, UNet};
use crate::inference::InferenceError;

/// What our UNet runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Baseline {
    /// candle-transformers' UNet where it fits the model, else `candle-ops`.
    Auto,
    /// candle-transformers' `UNet2DConditionModel` (SD 1.x / 2.x only).
    CandleTransformers,
    /// Our UNet on candle's layers (NCHW) instead of our kernels.
    CandleOps,
    /// Ours alone (for side-by-side runs against another process, e.g. PyTorch).
    None,
}

/// Reading one value waits for asynchronous devices to finish.
fn sync(t: &Tensor) -> Result<(), InferenceError> {
    t.flatten_all()?
        .get(0)?
        .to_dtype(DType::F32)?
        .to_scalar::<f32>()?;
    Ok(())
}

/// Times `iterations` UNet evaluations of each side at `width × height`.
#[allow(clippy::type_complexity)]
pub fn unet_step(
    folder: &Path,
    (width, height): (usize, usize),
    iterations: usize,
    device: &Device,
    baseline: Baseline,
) -> Result<Row, InferenceError> {
    let config: UNetConfig = read_json(&folder.join("unet/config.json"))?;
    let sdxl = config.addition_embed_type.is_some();
    let weights = folder.join("unet/diffusion_pytorch_model.safetensors");
    // Loaded as a worker loads it (on the CPU, the file's own pages), shared by both sides.
    let vb = crate::inference::weights::Weights::read(&weights, DType::F32, device)?
        .var_builder(DType::F32, device);
    let ours = RefCell::new(UNet::new(vb.clone(), &config)?);
    let our_path = ours.borrow().path();

    let (lh, lw) = (height / 8, width / 8);
    let mut rng = TorchRng::new(0);
    let ch = config.in_channels;
    let latents = Tensor::from_vec(rng.randn(2 * ch * lh * lw), (2, ch, lh, lw), device)?;
    let dim = config.cross_attention_dim;
    let context = Tensor::from_vec(rng.randn(2 * 77 * dim), (2, 77, dim), device)?;
    let pooled = config
        .projection_class_embeddings_input_dim
        .map(|d| d - 6 * config.addition_time_embed_dim.unwrap_or(256))
        .unwrap_or(0);
    let text_embeds = if pooled > 0 {
        Tensor::from_vec(rng.randn(2 * pooled), (2, pooled), device)?
    } else {
        Tensor::zeros((2, 1), DType::F32, device)?
    };
    let size = [
        height as f32,
        width as f32,
        0.0,
        0.0,
        height as f32,
        width as f32,
    ];
    let time_ids = Tensor::from_vec([size, size].concat(), (2, 6), device)?;
    let added = AddedConditions {
        text_embeds: &text_embeds,
        time_ids: &time_ids,
    };
    let added = sdxl.then_some(&added);
    let timestep = |i: usize| 999.0 - (i as f64 * 37.0) % 999.0;

    let fits_candle = !sdxl && ch == 4;
    let baseline = match baseline {
        Baseline::Auto if fits_candle => Baseline::CandleTransformers,
        Baseline::Auto => Baseline::CandleOps,
        Baseline::CandleTransformers if !fits_candle => {
            return Err(InferenceError::InvalidRequest(
                "candle-transformers' UNet covers SD 1.x/2.x text-to-image UNets only".into(),
            ))
        }
        other => other,
    };
    let theirs = if baseline == Baseline::CandleTransformers {
        Some(
            candle_transformers::models::stable_diffusion::unet_2d::UNet2DConditionModel::new(
                vb,
                4,
                4,
                false,
                candle_config(&config),
            )?,
        )
    } else {
        None
    };
    let run_ours = |i: usize| -> Result<(), InferenceError> {
        let mut unet = ours.borrow_mut();
        unet.set_path(our_path);
        sync(&unet.forward(&latents, timestep(i), &context, added)?)
    };
    let mut run_theirs = |i: usize| -> Result<(), InferenceError> {
        match &theirs {
            Some(t) => sync(&t.forward(&latents, timestep(i), &context)?),
            None => {
                let mut unet = ours.borrow_mut();
                unet.set_path(LayerPath::Candle);
                let out = unet.forward(&latents, timestep(i), &context, added);
                unet.set_path(our_path);
                sync(&out?)
            }
        }
    };
    let (name, b): (
        &str,
        Option<&mut dyn FnMut(usize) -> Result<(), InferenceError>>,
    ) = match baseline {
        Baseline::None => ("", None),
        Baseline::CandleTransformers => ("candle-transformers", Some(&mut run_theirs)),
        _ => ("sdq on candle ops", Some(&mut run_theirs)),
    };
    let (a, b) = interleaved(iterations, run_ours, b)?;
    let family = if sdxl { "sdxl" } else { "sd" };
    let case = format!("{family} {width}x{height} CFG batch 2");
    Ok(Row::new(
        "unet",
        case,
        &a,
        (!b.is_empty()).then_some((name, &b[..])),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_once_at_a_tiny_size_against_each_baseline() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("tiny");
        crate::inference::tiny::ensure(&folder, 0).unwrap();
        let row = unet_step(&folder, (64, 64), 1, &Device::Cpu, Baseline::Auto).unwrap();
        assert_eq!(row.baseline.as_deref(), Some("candle-transformers"));
        assert!(row.ours_ms > 0.0 && row.speedup.unwrap() > 0.0);
        let alone = unet_step(&folder, (64, 48), 1, &Device::Cpu, Baseline::None).unwrap();
        assert!(alone.baseline.is_none() && alone.case.contains("64x48"));
        // SDXL falls back to our UNet on candle's layers; candle's own UNet is refused.
        let xl = dir.path().join("xl");
        crate::inference::tiny::ensure_kind(&xl, 0, crate::inference::tiny::TinyKind::Sdxl)
            .unwrap();
        let row = unet_step(&xl, (64, 64), 1, &Device::Cpu, Baseline::Auto).unwrap();
        assert_eq!(row.baseline.as_deref(), Some("sdq on candle ops"));
        assert!(unet_step(&xl, (64, 64), 1, &Device::Cpu, Baseline::CandleTransformers).is_err());
    }
}
