//! Euler (diffusers `EulerDiscreteScheduler`, no churn).

use candle_core::Tensor;

use super::{
    euler_denoised, euler_init_sigma, euler_sigmas, NoiseSource, Scheduler, SchedulerConfig,
};

pub struct Euler {
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    init_sigma: f64,
    config: SchedulerConfig,
}

impl Euler {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Self {
        let timesteps = config.float_timesteps(steps);
        let sigmas = euler_sigmas(config, &timesteps);
        Self {
            init_sigma: euler_init_sigma(config, &sigmas),
            timesteps,
            sigmas,
            config: config.clone(),
        }
    }
}

impl Scheduler for Euler {
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
