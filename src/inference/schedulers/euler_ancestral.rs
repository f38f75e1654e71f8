//! Euler Ancestral (diffusers `EulerAncestralDiscreteScheduler`): an Euler step to a
//! lower noise level, then fresh noise added back, so each step draws from the RNG.

use candle_core::Tensor;

use super::config::FinalSigmas;
use super::sigmas::{euler_init_sigma, euler_schedule};
use super::{euler_denoised, NoiseSource, Scheduler, SchedulerConfig};

/// Per-step state of an Euler Ancestral run.
pub struct EulerAncestral {
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    init_sigma: f64,
    config: SchedulerConfig,
}

impl EulerAncestral {
    /// Sets up `steps` steps (diffusers' ancestral Euler has no Karras option).
    pub fn new(config: &SchedulerConfig, steps: usize) -> Self {
        let mut plain = config.clone();
        plain.use_karras_sigmas = false;
        plain.final_sigmas_type = FinalSigmas::Zero;
        let (timesteps, sigmas) = euler_schedule(&plain, steps);
        Self {
            init_sigma: euler_init_sigma(config, &sigmas),
            timesteps,
            sigmas,
            config: config.clone(),
        }
    }
}

impl Scheduler for EulerAncestral {
    fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        index: usize,
    ) -> candle_core::Result<Tensor> {
        super::add_noise_at_sigma(self.sigmas[index], original, noise)
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
        noise: &mut dyn NoiseSource,
    ) -> candle_core::Result<Tensor> {
        let sigma_from = self.sigmas[index];
        let sigma_to = self.sigmas[index + 1];
        let denoised = euler_denoised(&self.config, model_output, sample, sigma_from)?;
        let sigma_up = (sigma_to * sigma_to * (sigma_from * sigma_from - sigma_to * sigma_to)
            / (sigma_from * sigma_from))
            .sqrt();
        let sigma_down = (sigma_to * sigma_to - sigma_up * sigma_up).sqrt();
        let derivative = ((sample - denoised)? / sigma_from)?;
        let prev = (sample + (derivative * (sigma_down - sigma_from))?)?;
        let fresh = noise.randn_like(&prev)?;
        prev + (fresh * sigma_up)?
    }
}
