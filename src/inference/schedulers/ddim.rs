//! DDIM (diffusers `DDIMScheduler`), deterministic (eta = 0).

use candle_core::Tensor;

use super::{NoiseSource, PredictionType, Scheduler, SchedulerConfig};

/// Per-run state of DDIM: the timesteps and the ᾱ table.
pub struct Ddim {
    timesteps: Vec<f64>,
    alphas_cumprod: Vec<f64>,
    final_alpha_cumprod: f64,
    step_ratio: usize,
    config: SchedulerConfig,
}

impl Ddim {
    /// Sets up `steps` steps.
    pub fn new(config: &SchedulerConfig, steps: usize) -> Self {
        let alphas_cumprod = config.alphas_cumprod();
        let final_alpha_cumprod = if config.set_alpha_to_one {
            1.0
        } else {
            alphas_cumprod[0]
        };
        Self {
            timesteps: config.integer_timesteps(steps),
            alphas_cumprod,
            final_alpha_cumprod,
            step_ratio: config.num_train_timesteps / steps.max(1),
            config: config.clone(),
        }
    }
}

impl Scheduler for Ddim {
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
        _noise: &mut dyn NoiseSource,
    ) -> candle_core::Result<Tensor> {
        let t = self.timesteps[index] as usize;
        // diffusers steps back by a fixed ratio, whatever the spacing.
        let prev_t = t as i64 - self.step_ratio as i64;
        let alpha_t = self.alphas_cumprod[t];
        let alpha_prev = if prev_t >= 0 {
            self.alphas_cumprod[prev_t as usize]
        } else {
            self.final_alpha_cumprod
        };
        let beta_t = 1.0 - alpha_t;
        let (pred_original, pred_epsilon) = match self.config.prediction_type {
            PredictionType::Epsilon => {
                let x0 = ((sample - (model_output * beta_t.sqrt())?)? / alpha_t.sqrt())?;
                (x0, model_output.clone())
            }
            PredictionType::Sample => {
                let eps = ((sample - (model_output * alpha_t.sqrt())?)? / beta_t.sqrt())?;
                (model_output.clone(), eps)
            }
            PredictionType::VPrediction => {
                let x0 = ((sample * alpha_t.sqrt())? - (model_output * beta_t.sqrt())?)?;
                let eps = ((model_output * alpha_t.sqrt())? + (sample * beta_t.sqrt())?)?;
                (x0, eps)
            }
        };
        let pred_original = if self.config.clip_sample {
            let r = self.config.clip_sample_range;
            pred_original.clamp(-r, r)?
        } else {
            pred_original
        };
        let direction = (pred_epsilon * (1.0 - alpha_prev).sqrt())?;
        (pred_original * alpha_prev.sqrt())? + direction
    }
}
