//! Heun (diffusers `HeunDiscreteScheduler`): an Euler step, then the same step again
//! with the slope averaged between both ends. Each step but the last calls the UNet
//! twice, so the timestep list holds every inner timestep twice.

use candle_core::Tensor;

use super::sigmas::{euler_init_sigma, euler_schedule};
use super::{euler_denoised, FinalSigmas, NoiseSource, Scheduler, SchedulerConfig};

/// What the first half of a Heun step leaves for the second.
struct Pending {
    derivative: Tensor,
    dt: f64,
    sample: Tensor,
}

/// Per-run state of Heun: the doubled schedule and the half-finished step.
pub struct Heun {
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    init_sigma: f64,
    config: SchedulerConfig,
    pending: Option<Pending>,
}

impl Heun {
    /// Sets up `steps` steps (`2 * steps - 1` UNet calls); honours `use_karras_sigmas`.
    pub fn new(config: &SchedulerConfig, steps: usize) -> Self {
        let mut plain = config.clone();
        plain.final_sigmas_type = FinalSigmas::Zero;
        let (once_t, once_s) = euler_schedule(&plain, steps);
        let timesteps: Vec<f64> = once_t[..1]
            .iter()
            .chain(once_t[1..].iter().flat_map(|t| [t, t]))
            .copied()
            .collect();
        let n = once_s.len();
        let sigmas: Vec<f64> = once_s[..1]
            .iter()
            .chain(once_s[1..n - 1].iter().flat_map(|s| [s, s]))
            .chain(&once_s[n - 1..])
            .copied()
            .collect();
        Self {
            init_sigma: euler_init_sigma(config, &sigmas),
            timesteps,
            sigmas,
            config: config.clone(),
            pending: None,
        }
    }
}

impl Scheduler for Heun {
    fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        index: usize,
    ) -> candle_core::Result<Tensor> {
        super::add_noise_at_sigma(self.sigmas[index], original, noise)
    }

    fn order(&self) -> usize {
        2
    }
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        self.init_sigma
    }

    fn scale_model_input(&self, sample: Tensor, index: usize) -> candle_core::Result<Tensor> {
        let sigma = self.sigmas[index];
        sample / (sigma * sigma + 1.0).sqrt()
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        index: usize,
        sample: &Tensor,
        _noise: &mut dyn NoiseSource,
    ) -> candle_core::Result<Tensor> {
        match self.pending.take() {
            None => {
                let (sigma, next) = (self.sigmas[index], self.sigmas[index + 1]);
                let denoised = self.denoised(model_output, sample, sigma)?;
                let derivative = ((sample - denoised)? / sigma)?;
                let dt = next - sigma;
                let prev = (sample + (&derivative * dt)?)?;
                self.pending = Some(Pending {
                    derivative,
                    dt,
                    sample: sample.clone(),
                });
                Ok(prev)
            }
            Some(first) => {
                let sigma_next = self.sigmas[index];
                let denoised = self.denoised(model_output, sample, sigma_next)?;
                let derivative = ((sample - denoised)? / sigma_next)?;
                let slope = ((first.derivative + derivative)? / 2.0)?;
                first.sample + (slope * first.dt)?
            }
        }
    }
}

impl Heun {
    fn denoised(
        &self,
        output: &Tensor,
        sample: &Tensor,
        sigma: f64,
    ) -> candle_core::Result<Tensor> {
        let x0 = euler_denoised(&self.config, output, sample, sigma)?;
        if self.config.clip_sample {
            let r = self.config.clip_sample_range;
            x0.clamp(-r, r)
        } else {
            Ok(x0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inference::schedulers::{SchedulerConfigFile, SchedulerKind};

    #[test]
    fn inner_timesteps_and_sigmas_are_doubled() {
        let config = SchedulerConfigFile::default().resolve(SchedulerKind::Heun);
        let h = Heun::new(&config, 3);
        // HeunDiscreteScheduler().set_timesteps(3).timesteps -> [999, 499.5, 499.5, 0, 0]
        assert_eq!(h.timesteps, vec![999.0, 499.5, 499.5, 0.0, 0.0]);
        assert_eq!(h.sigmas.len(), 6);
        assert_eq!(h.sigmas[1], h.sigmas[2]);
        assert_eq!(h.sigmas[3], h.sigmas[4]);
        assert_eq!(h.sigmas[5], 0.0);
    }

    #[test]
    fn exact_denoiser_lands_on_the_clean_sample() {
        // If the model predicts the true noise of x = x0 + sigma * eps, every step keeps
        // x0 + sigma' * eps and the last one returns x0.
        let config = SchedulerConfigFile::default().resolve(SchedulerKind::Heun);
        let mut h = Heun::new(&config, 4);
        let dev = candle_core::Device::Cpu;
        let x0 = Tensor::new(&[0.5f32, -0.25, 1.0, 0.0], &dev).unwrap();
        let eps = Tensor::new(&[1.0f32, -1.0, 0.5, 2.0], &dev).unwrap();
        let mut x = (&x0 + (&eps * h.sigmas[0]).unwrap()).unwrap();
        struct NoNoise;
        impl NoiseSource for NoNoise {
            fn randn_like(&mut self, _: &Tensor) -> candle_core::Result<Tensor> {
                unreachable!()
            }
        }
        for i in 0..h.timesteps().len() {
            x = h.step(&eps, i, &x, &mut NoNoise).unwrap();
        }
        let diff: f32 = (x - x0)
            .unwrap()
            .abs()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(diff < 1e-4, "{diff}");
    }
}
