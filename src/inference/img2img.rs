//! img2img and inpainting: the start image and mask into starting latents, as diffusers'
//! img2img and inpainting pipelines prepare them, and the masked blending that ordinary
//! UNets need after every step.

use candle_core::{DType, Tensor};

use super::draws::Draws;
use super::pipeline::StableDiffusion;
use super::request::InitImage;
use super::schedulers::{NoiseSource, Scheduler};
use super::vae_encoder::Posterior;
use super::vae_tiling::VaeTiling;
use super::InferenceError;

/// What an inpainting run carries through the denoising loop.
pub(super) struct Inpaint {
    /// Inpainting UNets (9 input channels): mask and masked-image latents, concatenated.
    pub(super) conditioning: Option<Tensor>,
    /// Ordinary UNets: the known region is put back after every step.
    pub(super) blend: Option<Blend>,
}

/// Masked latent blending for UNets without mask inputs.
pub(super) struct Blend {
    /// 1 where the image is repainted, at latent resolution.
    mask: Tensor,
    image_latents: Tensor,
    /// The starting noise, reused to noise the known region to each next timestep.
    noise: Tensor,
}

impl Blend {
    /// After the step at `index`: the known region, noised to the next timestep (clean
    /// after the last), replaces what the sampler made of it.
    pub(super) fn apply(
        &self,
        latents: &Tensor,
        scheduler: &dyn Scheduler,
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
pub(super) fn img2img_start(steps: usize, strength: f64, order: usize) -> usize {
    let kept = ((steps as f64 * strength).floor() as usize).min(steps);
    (steps - kept) * order
}

impl StableDiffusion {
    /// The init image as diffusers' image processor gives it to the VAE: `[1, 3, H, W]`
    /// in [-1, 1].
    pub(super) fn init_pixels(
        &self,
        init: &InitImage,
        like: &Tensor,
    ) -> Result<Tensor, InferenceError> {
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
    pub(super) fn sample_posterior(
        &self,
        pixels: &Tensor,
        like: &Tensor,
        noise: &mut Draws,
        tiling: VaeTiling,
    ) -> Result<Tensor, InferenceError> {
        let pixels = pixels.to_dtype(self.vae_dtype)?;
        let (_, _, height, width) = pixels.dims4()?;
        let tiles = self.vae_tiles();
        let posterior = if tiles.encode_tiled(tiling, height, width) {
            Posterior::of(&tiles.encode(&pixels, |tile| self.vae_encoder.moments(tile))?)?
        } else {
            self.vae_encoder.encode(&pixels)?
        };
        let z = noise.randn_like(like)?.to_dtype(self.vae_dtype)?;
        let sample = posterior
            .mean
            .broadcast_add(&posterior.std.broadcast_mul(&z)?)?;
        Ok((sample * self.vae_config.scaling_factor)?.to_dtype(like.dtype())?)
    }

    /// Sets up inpainting as diffusers' `StableDiffusionInpaintPipeline` does, drawing in
    /// its order: the image's posterior (unless an inpainting UNet starts from pure
    /// noise), the starting noise, then the masked image's posterior.
    ///
    /// `given` latents are diffusers' `latents=`: they are the starting noise (scaled by
    /// the initial sigma, whatever the strength), no noise is drawn for them, and the
    /// blending of ordinary UNets noises the known region with them.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn start_inpaint(
        &self,
        init: &InitImage,
        mask: &[u8],
        pixels: &Tensor,
        like: &Tensor,
        noise: &mut Draws,
        scheduler: &dyn Scheduler,
        start: usize,
        given: Option<Tensor>,
        tiling: VaeTiling,
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
        let image_latents = if !nine_channels || (!from_noise && given.is_none()) {
            Some(self.sample_posterior(pixels, like, noise, tiling)?)
        } else {
            None
        };
        let (fresh, latents) = match given {
            Some(given) => {
                let latents = (&given * scheduler.init_noise_sigma())?;
                (given, latents)
            }
            None => {
                let fresh = noise.randn_like(like)?;
                let latents = match (&image_latents, from_noise) {
                    (Some(clean), false) => scheduler.add_noise(clean, &fresh, start)?,
                    _ => (&fresh * scheduler.init_noise_sigma())?,
                };
                (fresh, latents)
            }
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
        let masked_latents = self.sample_posterior(&masked, like, noise, tiling)?;
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn img2img_runs_the_last_strength_fraction_of_the_schedule() {
        // diffusers: int(steps * strength) steps are kept, counted from the end.
        assert_eq!(img2img_start(5, 0.6, 1), 2);
        assert_eq!(img2img_start(10, 1.0, 1), 0);
        assert_eq!(img2img_start(4, 0.5, 2), 4);
        assert_eq!(img2img_start(3, 0.2, 1), 3);
    }
}
