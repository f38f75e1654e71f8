//! Latents into pixels: the VAE decoder, one image at a time, and 8-bit rounding.

use candle_core::{DType, Tensor};

use super::pipeline::StableDiffusion;
use super::request::GenerateRequest;
use super::vae_tiling::{Tiles, VaeTiling};
use super::InferenceError;

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

impl StableDiffusion {
    /// Latents to 8-bit RGB images, scaled by the VAE's own `scaling_factor`.
    pub(super) fn decode(
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
            let decoded = self.vae_decode(&one, req.vae_tiling)?;
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
        // Every layer has run by now: keep what the kernels re-laid-out for the next process.
        super::mapped::kernel_layouts::image_done();
        Ok(images)
    }

    /// How this model's VAE tiles (its config's `sample_size`, its dtype).
    pub(super) fn vae_tiles(&self) -> Tiles {
        Tiles::for_vae(&self.vae_config, self.vae_dtype)
    }

    /// Unscaled latents to pixels in [-1, 1], in tiles when `tiling` asks for them.
    fn vae_decode(&self, latents: &Tensor, tiling: VaeTiling) -> Result<Tensor, InferenceError> {
        let (_, _, lh, lw) = latents.dims4()?;
        let tiles = self.vae_tiles();
        Ok(if tiles.decode_tiled(tiling, lh, lw) {
            tiles.decode(latents, |tile| self.vae.decode(tile))?
        } else {
            self.vae.decode(latents)?
        })
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::inference::rng::TorchRng;
    use crate::inference::SchedulerKind;

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
        let req = GenerateRequest::example(SchedulerKind::Euler);
        let a = half.decode(&latents, &req).unwrap();
        let b = full
            .decode(&latents.to_dtype(DType::F32).unwrap(), &req)
            .unwrap();
        assert_eq!(a[0].rgb, b[0].rgb);
    }
}
