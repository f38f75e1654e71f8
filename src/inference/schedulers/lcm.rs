//! LCM (diffusers `LCMScheduler`): latent consistency sampling. Each step jumps to a
//! clean-sample estimate (with the consistency-model boundary scalings) and, except on
//! the last step, re-noises it to the next timestep with a fresh draw.

use candle_core::Tensor;

use super::{NoiseSource, PredictionType, Scheduler, SchedulerConfig};

/// Per-run state of LCM: the skipping schedule and the ᾱ table.
pub struct Lcm {
    timesteps: Vec<f64>,
    alphas_cumprod: Vec<f64>,
    config: SchedulerConfig,
}

impl Lcm {
    /// Sets up `steps` steps picked from the `original_inference_steps` distillation
    /// schedule (LCM ignores `timestep_spacing`, as diffusers does).
    pub fn new(config: &SchedulerConfig, steps: usize) -> Self {
        let original = config
            .original_inference_steps
            .clamp(1, config.num_train_timesteps);
        let k = config.num_train_timesteps / original;
        // The distillation timesteps k-1, 2k-1, ..., newest first.
        let origin: Vec<usize> = (1..=original).rev().map(|i| i * k - 1).collect();
        let steps = steps.clamp(1, origin.len());
        let timesteps = (0..steps)
            .map(|i| {
                // np.linspace(0, len, steps, endpoint=False) multiplies the index by the step.
                let at = (i as f64 * (origin.len() as f64 / steps as f64)).floor() as usize;
                origin[at] as f64
            })
            .collect();
        Self {
            timesteps,
            alphas_cumprod: config.alphas_cumprod(),
            config: config.clone(),
        }
    }

    /// `c_skip` and `c_out` of the consistency boundary condition at timestep `t`.
    fn boundary_scalings(&self, t: f64) -> (f64, f64) {
        let sigma_data2 = 0.25;
        let scaled = t * self.config.timestep_scaling;
        let c_skip = sigma_data2 / (scaled * scaled + sigma_data2);
        let c_out = scaled / (scaled * scaled + sigma_data2).sqrt();
        (c_skip, c_out)
    }
}

impl Scheduler for Lcm {
    fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        index: usize,
    ) -> candle_core::Result<Tensor> {
        super::add_noise_at_timestep(&self.alphas_cumprod, self.timesteps[index], original, noise)
    }
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        index: usize,
        sample: &Tensor,
        noise: &mut dyn NoiseSource,
    ) -> candle_core::Result<Tensor> {
        let t = self.timesteps[index];
        let alpha = self.alphas_cumprod[t as usize];
        let beta = 1.0 - alpha;
        let x0 = match self.config.prediction_type {
            PredictionType::Epsilon => ((sample - (model_output * beta.sqrt())?)? / alpha.sqrt())?,
            PredictionType::Sample => model_output.clone(),
            PredictionType::VPrediction => {
                ((sample * alpha.sqrt())? - (model_output * beta.sqrt())?)?
            }
        };
        let x0 = if self.config.clip_sample {
            let r = self.config.clip_sample_range;
            x0.clamp(-r, r)?
        } else {
            x0
        };
        let (c_skip, c_out) = self.boundary_scalings(t);
        let denoised = ((x0 * c_out)? + (sample * c_skip)?)?;
        match self.timesteps.get(index + 1) {
            Some(&next) => {
                let alpha_prev = self.alphas_cumprod[next as usize];
                let z = noise.randn_like(&denoised)?;
                (denoised * alpha_prev.sqrt())? + (z * (1.0 - alpha_prev).sqrt())?
            }
            None => Ok(denoised),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inference::schedulers::{SchedulerConfigFile, SchedulerKind};

    fn config() -> SchedulerConfig {
        SchedulerConfigFile::default().resolve(SchedulerKind::Lcm)
    }

    #[test]
    fn timesteps_match_diffusers() {
        // LCMScheduler().set_timesteps(4).timesteps -> [999, 759, 499, 259]
        assert_eq!(
            Lcm::new(&config(), 4).timesteps,
            vec![999.0, 759.0, 499.0, 259.0]
        );
        assert_eq!(Lcm::new(&config(), 1).timesteps, vec![999.0]);
    }

    #[test]
    fn draws_noise_on_every_step_but_the_last() {
        struct Counting(usize);
        impl NoiseSource for Counting {
            fn randn_like(&mut self, like: &Tensor) -> candle_core::Result<Tensor> {
                self.0 += 1;
                like.zeros_like()
            }
        }
        let mut lcm = Lcm::new(&config(), 4);
        let x = Tensor::ones(
            (1, 4, 2, 2),
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let mut noise = Counting(0);
        let mut sample = x.clone();
        for i in 0..4 {
            sample = lcm
                .step(&x.zeros_like().unwrap(), i, &sample, &mut noise)
                .unwrap();
        }
        assert_eq!(noise.0, 3);
    }
}
