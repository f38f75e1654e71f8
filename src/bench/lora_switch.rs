//! `sdq bench lora-switch`: what changing a job's LoRA set costs beside loading the model
//! it patches. Workers keep a model loaded and patch copies of the affected layers per
//! job, so a switch should cost a small fraction of a load.

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use super::Row;
use crate::inference::lora::Lora;
use crate::inference::rng::TorchRng;
use crate::inference::{InferenceError, StableDiffusion};

/// Times loading `folder` (the baseline) against switching between two random rank-16
/// LoRAs that patch every attention projection (UNet and text encoders); the row's
/// `speedup` is how many switches fit in one load, and `clear_ms` is dropping the LoRAs.
pub fn lora_switch(
    folder: &Path,
    iterations: usize,
    device: &Device,
    dtype: DType,
) -> Result<Row, InferenceError> {
    let iterations = iterations.max(1);
    let mut loads = Vec::new();
    let mut sd = None;
    for _ in 0..iterations.min(3) {
        drop(sd.take());
        let t = Instant::now();
        sd = Some(StableDiffusion::load(folder, device, dtype)?);
        loads.push(t.elapsed());
    }
    let sd = sd.expect("loaded at least once");
    let layers = sd.attention_layers();
    let mut rng = TorchRng::new(7);
    let mut random = |name: &str| -> Result<Lora, InferenceError> {
        let rank = 16;
        let pairs = layers
            .iter()
            .map(|(target, module, [out, inp])| {
                let down = Tensor::from_vec(rng.randn(rank * inp), (rank, *inp), device)?;
                let up = (Tensor::from_vec(rng.randn(out * rank), (*out, rank), device)? * 0.01)?;
                Ok((*target, module.clone(), down, up, Some(8.0)))
            })
            .collect::<Result<Vec<_>, InferenceError>>()?;
        Ok(Lora::from_layers(name, pairs))
    };
    let (a, b) = (random("a")?, random("b")?);
    let mut switches = Vec::new();
    let mut clears = Vec::new();
    let mut current = sd.with_loras(&[(&a, 0.8)])?;
    for i in 0..iterations {
        let next = if i % 2 == 0 { &b } else { &a };
        let t = Instant::now();
        current = sd.with_loras(&[(next, 0.8)])?;
        switches.push(t.elapsed());
        let t = Instant::now();
        let plain = sd.with_loras(&[])?;
        clears.push(t.elapsed());
        drop(plain);
    }
    drop(current);
    let clear_ms = super::median(&clears).as_secs_f64() * 1000.0;
    Ok(Row::new(
        "lora-switch",
        format!("two rank-16 LoRAs, {} layers", layers.len()),
        &switches,
        Some(("model load", &loads)),
    )
    .with("clear_ms", clear_ms)
    .with("layers", layers.len() as f64))
}
