//! Noise schedulers, one per file, each following diffusers' math and defaults.
//!
//! A scheduler is built for one generation: it owns its timesteps and any state between
//! steps. Its configuration comes from the model's `scheduler/scheduler_config.json`.

pub mod a1111;
mod config;
mod ddim;
mod dpm_solver;
mod euler;
mod euler_ancestral;
mod heun;
mod lcm;
mod pndm;
mod sigmas;
mod unipc;

pub use config::{
    BetaSchedule, FinalSigmas, PredictionType, SchedulerConfig, SchedulerConfigFile,
    TimestepSpacing,
};

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// Draws standard-normal noise shaped like the latents, one generator per image.
pub trait NoiseSource {
    /// Standard normals with the shape, dtype and device of `like`.
    fn randn_like(&mut self, like: &Tensor) -> candle_core::Result<Tensor>;
}

/// One denoising algorithm, set up for a fixed number of steps.
pub trait Scheduler: Send {
    /// The timesteps the UNet is evaluated at, in order.
    fn timesteps(&self) -> &[f64];
    /// How much to scale the initial noise by (sigma-based schedulers start above 1).
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }
    /// Scales the UNet input for the step at `index` (only sigma-based schedulers do).
    fn scale_model_input(&self, sample: Tensor, _index: usize) -> candle_core::Result<Tensor> {
        Ok(sample)
    }
    /// How many schedule entries one step spans (2 for Heun): img2img starts at
    /// `skipped_steps * order`, as diffusers slices its timesteps.
    fn order(&self) -> usize {
        1
    }
    /// Noises a clean sample to the level of schedule entry `index` (img2img's start).
    fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        index: usize,
    ) -> candle_core::Result<Tensor>;
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
    #[serde(rename = "pndm")]
    Pndm,
    #[serde(rename = "euler")]
    Euler,
    #[serde(rename = "euler-a")]
    EulerAncestral,
    #[serde(rename = "heun")]
    Heun,
    #[serde(rename = "dpmpp-2m")]
    DpmPp2m,
    #[serde(rename = "dpmpp-2m-karras")]
    DpmPp2mKarras,
    #[serde(rename = "dpmpp-2m-sde-karras")]
    DpmPp2mSdeKarras,
    #[serde(rename = "unipc")]
    UniPc,
    #[serde(rename = "lcm")]
    Lcm,
}

impl SchedulerKind {
    /// Every supported scheduler, in the order the API lists them.
    pub const ALL: [SchedulerKind; 10] = [
        Self::Ddim,
        Self::Pndm,
        Self::Euler,
        Self::EulerAncestral,
        Self::Heun,
        Self::DpmPp2m,
        Self::DpmPp2mKarras,
        Self::DpmPp2mSdeKarras,
        Self::UniPc,
        Self::Lcm,
    ];

    /// The name used in requests.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ddim => "ddim",
            Self::Pndm => "pndm",
            Self::Euler => "euler",
            Self::EulerAncestral => "euler-a",
            Self::Heun => "heun",
            Self::DpmPp2m => "dpmpp-2m",
            Self::DpmPp2mKarras => "dpmpp-2m-karras",
            Self::DpmPp2mSdeKarras => "dpmpp-2m-sde-karras",
            Self::UniPc => "unipc",
            Self::Lcm => "lcm",
        }
    }

    /// The sampler name A1111 writes into PNG metadata.
    pub fn a1111_name(self) -> &'static str {
        match self {
            Self::Ddim => "DDIM",
            Self::Pndm => "PLMS",
            Self::Euler => "Euler",
            Self::EulerAncestral => "Euler a",
            Self::Heun => "Heun",
            Self::DpmPp2m => "DPM++ 2M",
            Self::DpmPp2mKarras => "DPM++ 2M Karras",
            Self::DpmPp2mSdeKarras => "DPM++ 2M SDE Karras",
            Self::UniPc => "UniPC",
            Self::Lcm => "LCM",
        }
    }

    /// Parses a request's scheduler name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Builds the scheduler for `steps` denoising steps from the model's config file.
    pub fn build(self, file: &SchedulerConfigFile, steps: usize) -> Box<dyn Scheduler> {
        let config = &file.resolve(self);
        match self {
            Self::Ddim => Box::new(ddim::Ddim::new(config, steps)),
            Self::Pndm => Box::new(pndm::Pndm::new(config, steps)),
            Self::Euler => Box::new(euler::Euler::new(config, steps)),
            Self::EulerAncestral => Box::new(euler_ancestral::EulerAncestral::new(config, steps)),
            Self::Heun => Box::new(heun::Heun::new(config, steps)),
            Self::DpmPp2m | Self::DpmPp2mKarras => {
                Box::new(dpm_solver::DpmSolver::new(config, steps, false))
            }
            Self::DpmPp2mSdeKarras => Box::new(dpm_solver::DpmSolver::new(config, steps, true)),
            Self::UniPc => Box::new(unipc::UniPc::new(config, steps)),
            Self::Lcm => Box::new(lcm::Lcm::new(config, steps)),
        }
    }
}

impl std::fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `sqrt(ᾱ_t) x + sqrt(1 - ᾱ_t) n`: forward diffusion of the ᾱ-indexed schedulers.
fn add_noise_at_timestep(
    alphas_cumprod: &[f64],
    t: f64,
    original: &Tensor,
    noise: &Tensor,
) -> candle_core::Result<Tensor> {
    let a = alphas_cumprod[t as usize];
    (original * a.sqrt())? + (noise * (1.0 - a).sqrt())?
}

/// `x + sigma n`: forward diffusion of the Euler family, whose samples are unscaled.
fn add_noise_at_sigma(
    sigma: f64,
    original: &Tensor,
    noise: &Tensor,
) -> candle_core::Result<Tensor> {
    original + (noise * sigma)?
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
}
