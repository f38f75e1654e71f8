//! The denoising loop: starting latents, then one scheduler step per timestep with
//! classifier-free guidance, inpainting inputs or blending, and a step callback that can
//! cancel between steps.

use std::ops::ControlFlow;
use std::time::Instant;

use candle_core::Tensor;

use super::conditioning::Conditioning;
use super::decode::FloatImage;
use super::draws::Draws;
use super::img2img::{img2img_start, Inpaint};
use super::pipeline::StableDiffusion;
use super::preview::preview_due;
use super::request::{GenerateRequest, StepProgress};
use super::rng::TorchRng;
use super::schedulers::{NoiseSource, Scheduler};
use super::unet::AddedConditions;
use super::InferenceError;

/// A request's random draws: its supplied arrays (shaped like the latents `like`), then
/// one generator per image, seeded `seed + i`.
pub(super) fn draws(
    req: &GenerateRequest,
    shape: &[usize],
    like: &Tensor,
) -> Result<Draws, InferenceError> {
    let supplied = req
        .noise
        .iter()
        .enumerate()
        .map(|(i, n)| n.to_tensor(&format!("noise array {}", i + 1), shape, like))
        .collect::<Result<_, _>>()?;
    Ok(Draws {
        supplied,
        per_image: (0..req.num_images)
            .map(|i| TorchRng::new(req.seed.wrapping_add(i as u64)))
            .collect(),
    })
}

impl StableDiffusion {
    /// The latent shape of a request: `[num_images, channels, height / f, width / f]`.
    pub(super) fn latent_shape(&self, req: &GenerateRequest) -> [usize; 4] {
        let multiple = self.size_multiple();
        [
            req.num_images,
            self.vae_config.latent_channels,
            req.height / multiple,
            req.width / multiple,
        ]
    }

    /// The request's scheduler, refusing configs sdq does not implement and step counts
    /// that leave the schedule empty.
    pub(super) fn scheduler(
        &self,
        req: &GenerateRequest,
    ) -> Result<Box<dyn Scheduler>, InferenceError> {
        if let Some(what) = self.scheduler_config.unsupported() {
            return Err(InferenceError::invalid_model(
                &self.folder,
                format!("scheduler_config.json asks for {what}, which sdq does not implement"),
            ));
        }
        let scheduler = req.scheduler.build(&self.scheduler_config, req.steps);
        if scheduler.timesteps().is_empty() {
            // PNDM's Runge-Kutta warm-up needs more steps than a very short run has.
            return Err(InferenceError::InvalidRequest(format!(
                "{} cannot run {} steps with this model's scheduler config",
                req.scheduler, req.steps
            )));
        }
        Ok(scheduler)
    }

    /// txt2img's starting latents, shaped like `like`: the given ones, or unit normals
    /// from the per-image generators, scaled by the scheduler's initial sigma.
    pub(super) fn txt2img_latents(
        &self,
        req: &GenerateRequest,
        like: &Tensor,
        noise: &mut Draws,
        scheduler: &dyn Scheduler,
    ) -> Result<Tensor, InferenceError> {
        if self.unet_in_channels != 4 {
            return Err(InferenceError::InvalidRequest(
                "this is an inpainting model: give an init image and a mask".into(),
            ));
        }
        // Given latents do not consume the generators, and drawn ones never come from the
        // supplied arrays, exactly as in diffusers.
        let initial = match &req.latents {
            Some(given) => given.to_tensor("latents", like.dims(), like)?,
            None => {
                let mut rng_only = Draws {
                    supplied: Default::default(),
                    per_image: std::mem::take(&mut noise.per_image),
                };
                let drawn = rng_only.randn_like(like)?;
                noise.per_image = rng_only.per_image;
                drawn
            }
        };
        Ok((initial * scheduler.init_noise_sigma())?)
    }

    pub(super) fn denoise(
        &self,
        req: &GenerateRequest,
        conditioning: Conditioning,
        use_cfg: bool,
        started: Instant,
        on_step: &mut dyn FnMut(StepProgress) -> ControlFlow<()>,
    ) -> Result<Vec<FloatImage>, InferenceError> {
        let added = conditioning
            .added
            .as_ref()
            .map(|(text_embeds, time_ids)| AddedConditions {
                text_embeds,
                time_ids,
            });
        let mut scheduler = self.scheduler(req)?;
        let shape = self.latent_shape(req);
        let like = Tensor::zeros(&shape, self.dtype, &self.device)?;
        let mut noise = draws(req, &shape, &like)?;
        let timesteps = scheduler.timesteps().to_vec();
        let (start, mut latents, inpaint) = match &req.init_image {
            None => {
                let initial = self.txt2img_latents(req, &like, &mut noise, scheduler.as_ref())?;
                (0, initial, None)
            }
            Some(init) => {
                // Inpainting takes given latents as its starting noise, as diffusers'
                // inpainting pipelines do; img2img starts from its image alone.
                if req.latents.is_some() && init.mask.is_none() {
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
                        let clean =
                            self.sample_posterior(&pixels, &like, &mut noise, req.vae_tiling)?;
                        let fresh = noise.randn_like(&clean)?;
                        (start, scheduler.add_noise(&clean, &fresh, start)?, None)
                    }
                    Some(mask) => {
                        let given = req
                            .latents
                            .as_ref()
                            .map(|l| l.to_tensor("latents", &shape, &like))
                            .transpose()?;
                        let (latents, inpaint) = self.start_inpaint(
                            init,
                            mask,
                            &pixels,
                            &like,
                            &mut noise,
                            scheduler.as_ref(),
                            start,
                            given,
                            req.vae_tiling,
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
            let step = index + 1 - start;
            // Only a due preview reads the latents back; otherwise nothing is copied.
            let preview = match req.preview_every {
                Some(every) if preview_due(step, total, every) => {
                    self.preview_family().preview(&latents)?
                }
                _ => None,
            };
            let progress = StepProgress {
                step,
                total,
                elapsed_ms: started.elapsed().as_millis() as u64,
                preview,
            };
            if on_step(progress).is_break() {
                return Err(InferenceError::Canceled);
            }
        }
        self.decode(&latents, req)
    }
}
