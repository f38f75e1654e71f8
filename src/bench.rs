//! `sdq bench`: side-by-side timings printed as ratios.
//!
//! These machines are noisy, so the two sides run interleaved (A, B, A, B, ...) on the
//! same inputs and the report compares medians: a slow spell hits both alike.

use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::inference::model_config::{read_json, UNetConfig};
use crate::inference::rng::TorchRng;
use crate::inference::unet::{candle_config, UNet};
use crate::inference::InferenceError;

/// The result of one side-by-side benchmark.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub name: String,
    pub ours: Duration,
    pub baseline: Duration,
    pub iterations: usize,
}

impl Comparison {
    /// How many times faster ours is than the baseline (above 1: ours is faster).
    pub fn speedup(&self) -> f64 {
        self.baseline.as_secs_f64() / self.ours.as_secs_f64().max(1e-12)
    }
}

impl std::fmt::Display for Comparison {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: ours {:.2} ms, candle-transformers {:.2} ms (median of {}), {:.2}x",
            self.name,
            self.ours.as_secs_f64() * 1000.0,
            self.baseline.as_secs_f64() * 1000.0,
            self.iterations,
            self.speedup()
        )
    }
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// One UNet evaluation (a denoising step with classifier-free guidance: batch 2) of our
/// UNet against candle-transformers' on the same weights and inputs.
pub fn unet_step(
    folder: &std::path::Path,
    width: usize,
    height: usize,
    iterations: usize,
    device: &Device,
) -> Result<Comparison, InferenceError> {
    let config: UNetConfig = read_json(&folder.join("unet/config.json"))?;
    if config.addition_embed_type.is_some() || config.in_channels != 4 {
        return Err(InferenceError::InvalidRequest(
            "the UNet benchmark compares SD 1.x/2.x text-to-image UNets only".into(),
        ));
    }
    let weights = folder.join("unet/diffusion_pytorch_model.safetensors");
    // SAFETY: read-only mapping of a model file that is not rewritten while we run.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, device) }
        .map_err(|e| InferenceError::invalid_model(&weights, e))?;
    let ours = UNet::new(vb.clone(), &config)?;
    let theirs = candle_transformers::models::stable_diffusion::unet_2d::UNet2DConditionModel::new(
        vb,
        4,
        4,
        false,
        candle_config(&config),
    )?;
    let (lh, lw) = (height / 8, width / 8);
    let mut rng = TorchRng::new(0);
    let latents = Tensor::from_vec(rng.randn(2 * 4 * lh * lw), (2, 4, lh, lw), device)?;
    let context_len = 77 * 2 * config.cross_attention_dim;
    let context = Tensor::from_vec(
        rng.randn(context_len),
        (2, 77, config.cross_attention_dim),
        device,
    )?;
    let sync = |t: Tensor| -> Result<(), InferenceError> {
        // Reading one value waits for asynchronous devices to finish.
        t.flatten_all()?.get(0)?.to_scalar::<f32>()?;
        Ok(())
    };
    // Warm up both (allocations, kernel caches).
    sync(ours.forward(&latents, 500.0, &context, None)?)?;
    sync(theirs.forward(&latents, 500.0, &context)?)?;
    let (mut a, mut b) = (
        Vec::with_capacity(iterations),
        Vec::with_capacity(iterations),
    );
    for i in 0..iterations.max(1) {
        let t = 999.0 - (i as f64 * 37.0) % 999.0;
        let start = Instant::now();
        sync(ours.forward(&latents, t, &context, None)?)?;
        a.push(start.elapsed());
        let start = Instant::now();
        sync(theirs.forward(&latents, t, &context)?)?;
        b.push(start.elapsed());
    }
    Ok(Comparison {
        name: format!("UNet step {width}x{height}, CFG batch 2"),
        ours: median(a),
        baseline: median(b),
        iterations: iterations.max(1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_both_unets_on_the_tiny_model() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("tiny");
        crate::inference::tiny::ensure(&folder, 0).unwrap();
        let c = unet_step(&folder, 64, 64, 3, &Device::Cpu).unwrap();
        assert_eq!(c.iterations, 3);
        assert!(c.ours > Duration::ZERO && c.baseline > Duration::ZERO);
        assert!(c.to_string().contains("x"));
        // The SDXL-only layout is refused rather than compared wrongly.
        let xl = dir.path().join("xl");
        crate::inference::tiny::ensure_kind(&xl, 0, crate::inference::tiny::TinyKind::Sdxl)
            .unwrap();
        assert!(unet_step(&xl, 64, 64, 1, &Device::Cpu).is_err());
    }
}
