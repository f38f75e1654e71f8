//! Noise schedulers, one per file, each following diffusers' math and defaults.
//!
//! A scheduler is built for one generation: it owns its timesteps and any state between
//! steps. Its configuration comes from the model's `scheduler/scheduler_config.json`.

mod config;
mod ddim;
mod euler;
mod euler_ancestral;

pub use config::{BetaSchedule, PredictionType, SchedulerConfig, TimestepSpacing};

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// Draws standard-normal noise shaped like the latents, one generator per image.
pub trait NoiseSource {
    fn randn_like(&mut self, like: &Tensor) -> candle_core::Result<Tensor>;
}

/// One denoising algorithm, set up for a fixed number of steps.
pub trait Scheduler: Send {
    /// The timesteps the UNet is evaluated at, in order.
    fn timesteps(&self) -> &[f64];
    /// How much to scale the initial noise by.
    fn init_noise_sigma(&self) -> f64;
    /// Scales the UNet input for the step at `index`.
    fn scale_model_input(&self, sample: Tensor, index: usize) -> candle_core::Result<Tensor>;
    /// Takes the UNet output at step `index` and returns the next, less noisy sample.
    fn step(
        &mut self,
        model_output: &Tensor,
        index: usize,
        sample: &Tensor,
        noise: &mut dyn NoiseSource,
    ) -> candle_core::Result<Tensor>;
}

/// The schedulers a job may ask for, by their API names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SchedulerKind {
    #[serde(rename = "ddim")]
    Ddim,
    #[serde(rename = "euler")]
    Euler,
    #[serde(rename = "euler-a")]
    EulerAncestral,
}

impl SchedulerKind {
    /// Every supported scheduler, in the order the API lists them.
    pub const ALL: [SchedulerKind; 3] = [Self::Ddim, Self::Euler, Self::EulerAncestral];

    /// The name used in requests.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ddim => "ddim",
            Self::Euler => "euler",
            Self::EulerAncestral => "euler-a",
        }
    }

    /// The sampler name A1111 writes into PNG metadata.
    pub fn a1111_name(self) -> &'static str {
        match self {
            Self::Ddim => "DDIM",
            Self::Euler => "Euler",
            Self::EulerAncestral => "Euler a",
        }
    }

    /// Parses a request's scheduler name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Builds the scheduler for `steps` denoising steps.
    pub fn build(self, config: &SchedulerConfig, steps: usize) -> Box<dyn Scheduler> {
        match self {
            Self::Ddim => Box::new(ddim::Ddim::new(config, steps)),
            Self::Euler => Box::new(euler::Euler::new(config, steps)),
            Self::EulerAncestral => Box::new(euler_ancestral::EulerAncestral::new(config, steps)),
        }
    }
}

impl std::fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Sigmas of the Euler family: `sqrt((1 - ᾱ) / ᾱ)` interpolated at `timesteps`, then 0.
fn euler_sigmas(config: &SchedulerConfig, timesteps: &[f64]) -> Vec<f64> {
    let table: Vec<f64> = config
        .alphas_cumprod()
        .iter()
        .map(|&a| (((1.0 - a) / a) as f32).sqrt() as f64)
        .collect();
    let mut sigmas: Vec<f64> = timesteps.iter().map(|&t| interp(t, &table)).collect();
    sigmas.push(0.0);
    sigmas
}

/// `np.interp(x, arange(len(table)), table)`.
fn interp(x: f64, table: &[f64]) -> f64 {
    if x <= 0.0 {
        return table[0];
    }
    let last = table.len() - 1;
    if x >= last as f64 {
        return table[last];
    }
    let i = x.floor() as usize;
    let frac = x - i as f64;
    table[i] + (table[i + 1] - table[i]) * frac
}

/// The initial noise scale of the Euler family.
fn euler_init_sigma(config: &SchedulerConfig, sigmas: &[f64]) -> f64 {
    let max = sigmas.iter().cloned().fold(0.0, f64::max);
    match config.timestep_spacing {
        TimestepSpacing::Linspace | TimestepSpacing::Trailing => max,
        TimestepSpacing::Leading => (max * max + 1.0).sqrt(),
    }
}

/// The model's prediction of the clean sample, given the Euler-family `sigma`.
fn euler_denoised(
    config: &SchedulerConfig,
    model_output: &Tensor,
    sample: &Tensor,
    sigma: f64,
) -> candle_core::Result<Tensor> {
    match config.prediction_type {
        PredictionType::Epsilon => sample - (model_output * sigma)?,
        PredictionType::VPrediction => {
            let c_out = -sigma / (sigma * sigma + 1.0).sqrt();
            let c_skip = 1.0 / (sigma * sigma + 1.0);
            (model_output * c_out)? + (sample * c_skip)?
        }
        PredictionType::Sample => Ok(model_output.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for kind in SchedulerKind::ALL {
            assert_eq!(SchedulerKind::parse(kind.name()), Some(kind));
        }
        assert_eq!(SchedulerKind::parse("nope"), None);
    }

    #[test]
    fn interp_matches_numpy() {
        let table = [0.0, 10.0, 20.0];
        assert_eq!(interp(0.5, &table), 5.0);
        assert_eq!(interp(-1.0, &table), 0.0);
        assert_eq!(interp(9.0, &table), 20.0);
    }
}
