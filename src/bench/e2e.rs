//! End to end: model load time, seconds per image, and the process's peak memory.
//!
//! What a user of `sdq generate` or a worker pays: loading the folder (tokenizers, text
//! encoders, UNet, VAE), then text encoding, `steps` UNet evaluations with classifier-free
//! guidance and one VAE decode per image.

use std::ops::ControlFlow;
use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::{DType, Device};

use super::Row;
use crate::inference::{GenerateRequest, InferenceError, SchedulerKind, StableDiffusion};

/// Loads `folder` once, then generates one image per (size, steps) case `iterations`
/// times. The first row is the load itself.
pub fn end_to_end(
    folder: &Path,
    sizes: &[usize],
    steps: &[usize],
    iterations: usize,
    (device, dtype): (&Device, DType),
) -> Result<Vec<Row>, InferenceError> {
    let start = Instant::now();
    let model = StableDiffusion::load(folder, device, dtype)?;
    let load = start.elapsed();
    let mut rows = vec![Row::new("e2e", "load", &[load], None)];
    for &size in sizes {
        for &n in steps {
            let req = GenerateRequest {
                prompt: "a photo of a cat sitting on a red chair".into(),
                negative_prompt: String::new(),
                width: size,
                height: size,
                steps: n,
                guidance_scale: 7.5,
                seed: 1,
                scheduler: SchedulerKind::Ddim,
                num_images: 1,
                long_prompt: Default::default(),
                clip_skip: None,
                vae_tiling: Default::default(),
                latents: None,
                noise: Vec::new(),
                init_image: None,
                preview_every: None,
            };
            let mut times: Vec<Duration> = Vec::new();
            for _ in 0..iterations.max(1) {
                let start = Instant::now();
                model.generate(&req, &mut |_| ControlFlow::Continue(()))?;
                times.push(start.elapsed());
                // Untimed: the kernel layouts the first image made go to disk before the
                // next image (and the next process) runs.
                crate::inference::mapped::kernel_layouts::wait();
            }
            let per_image = super::median(&times).as_secs_f64();
            let case = format!("{size}x{size}, {n} steps, CFG");
            let case = if dtype == DType::F32 {
                case
            } else {
                format!("{case}, {dtype:?}")
            };
            rows.push(
                Row::new("e2e", case, &times, None)
                    .with("ms_per_step", per_image * 1000.0 / n as f64),
            );
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_and_generates_once_on_the_tiny_model() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("tiny");
        crate::inference::tiny::ensure(&folder, 0).unwrap();
        let rows = end_to_end(&folder, &[64], &[1, 2], 1, (&Device::Cpu, DType::F32)).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].case, "load");
        assert!(rows[2].case.contains("2 steps") && rows[2].ours_ms > 0.0);
    }
}
