//! Euler (diffusers `EulerDiscreteScheduler`, no churn).

use candle_core::Tensor;

use super::sigmas::{euler_init_sigma, euler_schedule};
use super::{euler_denoised, NoiseSource, Scheduler, SchedulerConfig};

/// Per-step state of an Euler run: its timesteps and noise levels.
pub struct Euler {
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    init_sigma: f64,
    config: SchedulerConfig,
}

impl Euler {
    /// Sets up `steps` steps; honours `use_karras_sigmas` and `final_sigmas_type`.
    pub fn new(config: &SchedulerConfig, steps: usize) -> Self {
        let (timesteps, sigmas) = euler_schedule(config, steps);
        Self {
            init_sigma: euler_init_sigma(config, &sigmas),
            timesteps,
            sigmas,
            config: config.clone(),
        }
    }
}

impl Scheduler for Euler {
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
        _noise: &mut dyn NoiseSource,
    ) -> candle_core::Result<Tensor> {
        let sigma = self.sigmas[index];
        let denoised = euler_denoised(&self.config, model_output, sample, sigma)?;
        let derivative = ((sample - denoised)? / sigma)?;
        let dt = self.sigmas[index + 1] - sigma;
        sample + (derivative * dt)?
    }
}
