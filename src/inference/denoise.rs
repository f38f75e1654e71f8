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
use super::schedulers::NoiseSource;
use super::unet::AddedConditions;
use super::InferenceError;

impl StableDiffusion {
    pub(super) fn denoise(
        &self,
        req: &GenerateRequest,
        conditioning: Conditioning,
        use_cfg: bool,
        started: Instant,
        on_step: &mut dyn FnMut(StepProgress) -> ControlFlow<()>,
    ) -> Result<Vec<FloatImage>, InferenceError> {
        if let Some(what) = self.scheduler_config.unsupported() {
            return Err(InferenceError::invalid_model(
                &self.folder,
                format!("scheduler_config.json asks for {what}, which sdq does not implement"),
            ));
        }
        let added = conditioning
            .added
            .as_ref()
            .map(|(text_embeds, time_ids)| AddedConditions {
                text_embeds,
                time_ids,
            });
        let batch = req.num_images;
        let multiple = self.size_multiple();
        let (lh, lw) = (req.height / multiple, req.width / multiple);
        let channels = self.vae_config.latent_channels;
        let mut scheduler = req.scheduler.build(&self.scheduler_config, req.steps);
        let shape = [batch, channels, lh, lw];
        let like = Tensor::zeros(&shape, self.dtype, &self.device)?;
        let supplied = req
            .noise
            .iter()
            .enumerate()
            .map(|(i, n)| n.to_tensor(&format!("noise array {}", i + 1), &shape, &like))
            .collect::<Result<_, _>>()?;
        let mut noise = Draws {
            supplied,
            per_image: (0..batch)
                .map(|i| TorchRng::new(req.seed.wrapping_add(i as u64)))
                .collect(),
        };
        let timesteps = scheduler.timesteps().to_vec();
        if timesteps.is_empty() {
            // PNDM's Runge-Kutta warm-up needs more steps than a very short run has.
            return Err(InferenceError::InvalidRequest(format!(
                "{} cannot run {} steps with this model's scheduler config",
                req.scheduler, req.steps
            )));
        }
        let (start, mut latents, inpaint) = match &req.init_image {
            None => {
                if self.unet_in_channels != 4 {
                    return Err(InferenceError::InvalidRequest(
                        "this is an inpainting model: give an init image and a mask".into(),
                    ));
                }
                // Given latents do not consume the generators, exactly as in diffusers.
                let initial = match &req.latents {
                    Some(given) => given.to_tensor("latents", &shape, &like)?,
                    None => {
                        let mut rng_only = Draws {
                            supplied: Default::default(),
                            per_image: std::mem::take(&mut noise.per_image),
                        };
                        let drawn = rng_only.randn_like(&like)?;
                        noise.per_image = rng_only.per_image;
                        drawn
                    }
                };
                (0, (initial * scheduler.init_noise_sigma())?, None)
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
