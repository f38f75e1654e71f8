//! `scheduler_config.json` and the settings each scheduler resolves from it.
//!
//! diffusers switches samplers with `Target.from_config(pipe.scheduler.config)`: the keys
//! written in the file are passed on, and every key the file leaves out takes the default
//! of the *target* class (diffusers records such keys in `_use_default_values` and drops
//! them). So Euler on SD 1.5, whose file has no `timestep_spacing`, uses "linspace" while
//! DDIM on the same file uses "leading". [`SchedulerConfigFile::resolve`] does the same.

use serde::{Deserialize, Serialize};

use super::SchedulerKind;

/// How betas grow over the training timesteps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    Linear,
    ScaledLinear,
    #[serde(rename = "squaredcos_cap_v2")]
    SquaredcosCapV2,
}

/// What the UNet predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    Epsilon,
    VPrediction,
    Sample,
}

/// How inference timesteps are picked from the training ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    Leading,
    Trailing,
    Linspace,
}

/// The noise level after the last step of the sigma-based samplers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinalSigmas {
    Zero,
    SigmaMin,
}

/// `scheduler_config.json` exactly as written: `None` where the file is silent.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SchedulerConfigFile {
    #[serde(rename = "_class_name", default)]
    pub class_name: Option<String>,
    pub num_train_timesteps: Option<usize>,
    pub beta_start: Option<f64>,
    pub beta_end: Option<f64>,
    pub beta_schedule: Option<BetaSchedule>,
    pub trained_betas: Option<Vec<f64>>,
    pub prediction_type: Option<PredictionType>,
    pub timestep_spacing: Option<TimestepSpacing>,
    pub steps_offset: Option<usize>,
    pub set_alpha_to_one: Option<bool>,
    pub clip_sample: Option<bool>,
    pub clip_sample_range: Option<f64>,
    pub skip_prk_steps: Option<bool>,
    pub use_karras_sigmas: Option<bool>,
    pub final_sigmas_type: Option<FinalSigmas>,
    pub solver_order: Option<usize>,
    pub solver_type: Option<String>,
    pub lower_order_final: Option<bool>,
    pub euler_at_final: Option<bool>,
    pub rescale_betas_zero_snr: Option<bool>,
    pub original_inference_steps: Option<usize>,
    pub timestep_scaling: Option<f64>,
    pub interpolation_type: Option<String>,
    pub timestep_type: Option<String>,
    pub thresholding: Option<bool>,
    pub use_exponential_sigmas: Option<bool>,
    pub use_beta_sigmas: Option<bool>,
    pub use_lu_lambdas: Option<bool>,
}

/// Every setting one scheduler runs with, resolved as diffusers' `from_config` would.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub trained_betas: Option<Vec<f64>>,
    pub prediction_type: PredictionType,
    pub timestep_spacing: TimestepSpacing,
    pub steps_offset: usize,
    pub set_alpha_to_one: bool,
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    pub skip_prk_steps: bool,
    pub use_karras_sigmas: bool,
    pub final_sigmas_type: FinalSigmas,
    pub solver_order: usize,
    pub solver_type: Option<String>,
    pub lower_order_final: bool,
    pub euler_at_final: bool,
    pub rescale_betas_zero_snr: bool,
    pub original_inference_steps: usize,
    pub timestep_scaling: f64,
}

impl Default for SchedulerConfig {
    /// DDIM's defaults, as if the model had no scheduler config at all.
    fn default() -> Self {
        SchedulerConfigFile::default().resolve(SchedulerKind::Ddim)
    }
}

/// The few defaults that differ between diffusers' scheduler classes.
struct ClassDefaults {
    beta_start: f64,
    beta_end: f64,
    beta_schedule: BetaSchedule,
    timestep_spacing: TimestepSpacing,
    set_alpha_to_one: bool,
    clip_sample: bool,
}

fn class_defaults(kind: SchedulerKind) -> ClassDefaults {
    let base = ClassDefaults {
        beta_start: 0.0001,
        beta_end: 0.02,
        beta_schedule: BetaSchedule::Linear,
        timestep_spacing: TimestepSpacing::Linspace,
        set_alpha_to_one: false,
        clip_sample: false,
    };
    match kind {
        SchedulerKind::Ddim => ClassDefaults {
            timestep_spacing: TimestepSpacing::Leading,
            set_alpha_to_one: true,
            clip_sample: true,
            ..base
        },
        SchedulerKind::Pndm => ClassDefaults {
            timestep_spacing: TimestepSpacing::Leading,
            ..base
        },
        SchedulerKind::Heun => ClassDefaults {
            beta_start: 0.00085,
            beta_end: 0.012,
            ..base
        },
        SchedulerKind::Lcm => ClassDefaults {
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::ScaledLinear,
            timestep_spacing: TimestepSpacing::Leading,
            set_alpha_to_one: true,
            ..base
        },
        _ => base,
    }
}

impl SchedulerConfigFile {
    /// The settings `kind` runs with: the file's keys over `kind`'s own defaults, plus
    /// what the sampler's name fixes (Karras sigmas for the `-karras` variants).
    pub fn resolve(&self, kind: SchedulerKind) -> SchedulerConfig {
        let d = class_defaults(kind);
        let karras = match kind {
            SchedulerKind::DpmPp2m => false,
            SchedulerKind::DpmPp2mKarras | SchedulerKind::DpmPp2mSdeKarras => true,
            _ => self.use_karras_sigmas.unwrap_or(false),
        };
        SchedulerConfig {
            num_train_timesteps: self.num_train_timesteps.unwrap_or(1000),
            beta_start: self.beta_start.unwrap_or(d.beta_start),
            beta_end: self.beta_end.unwrap_or(d.beta_end),
            beta_schedule: self.beta_schedule.unwrap_or(d.beta_schedule),
            trained_betas: self.trained_betas.clone(),
            prediction_type: self.prediction_type.unwrap_or(PredictionType::Epsilon),
            timestep_spacing: self.timestep_spacing.unwrap_or(d.timestep_spacing),
            steps_offset: self.steps_offset.unwrap_or(0),
            set_alpha_to_one: self.set_alpha_to_one.unwrap_or(d.set_alpha_to_one),
            clip_sample: self.clip_sample.unwrap_or(d.clip_sample),
            clip_sample_range: self.clip_sample_range.unwrap_or(1.0),
            skip_prk_steps: self.skip_prk_steps.unwrap_or(false),
            use_karras_sigmas: karras,
            final_sigmas_type: self.final_sigmas_type.unwrap_or(FinalSigmas::Zero),
            solver_order: self.solver_order.unwrap_or(2).clamp(1, 3),
            solver_type: self.solver_type.clone(),
            lower_order_final: self.lower_order_final.unwrap_or(true),
            euler_at_final: self.euler_at_final.unwrap_or(false),
            rescale_betas_zero_snr: self.rescale_betas_zero_snr.unwrap_or(false),
            original_inference_steps: self.original_inference_steps.unwrap_or(50),
            timestep_scaling: self.timestep_scaling.unwrap_or(10.0),
        }
    }

    /// Settings this crate does not implement; a model that asks for one is refused
    /// rather than silently sampled differently from diffusers.
    pub fn unsupported(&self) -> Option<String> {
        let on = |v: Option<bool>| v.unwrap_or(false);
        if on(self.thresholding) {
            return Some("thresholding".into());
        }
        if on(self.use_exponential_sigmas) || on(self.use_beta_sigmas) || on(self.use_lu_lambdas) {
            return Some("exponential, beta or lu-lambda sigmas".into());
        }
        if let Some(t) = self
            .interpolation_type
            .as_deref()
            .filter(|t| *t != "linear")
        {
            return Some(format!("interpolation_type '{t}'"));
        }
        if let Some(t) = self.timestep_type.as_deref().filter(|t| *t != "discrete") {
            return Some(format!("timestep_type '{t}'"));
        }
        None
    }
}

impl SchedulerConfig {
    /// Betas in float32, as diffusers builds them with torch.
    pub fn betas(&self) -> Vec<f32> {
        let n = self.num_train_timesteps;
        let betas: Vec<f32> = if let Some(trained) = &self.trained_betas {
            trained.iter().map(|&b| b as f32).collect()
        } else {
            match self.beta_schedule {
                BetaSchedule::Linear => linspace(self.beta_start, self.beta_end, n)
                    .into_iter()
                    .map(|b| b as f32)
                    .collect(),
                BetaSchedule::ScaledLinear => {
                    linspace(self.beta_start.sqrt(), self.beta_end.sqrt(), n)
                        .into_iter()
                        .map(|b| (b as f32) * (b as f32))
                        .collect()
                }
                BetaSchedule::SquaredcosCapV2 => {
                    let alpha_bar = |t: f64| {
                        ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
                            .cos()
                            .powi(2)
                    };
                    (0..n)
                        .map(|i| {
                            let t1 = i as f64 / n as f64;
                            let t2 = (i + 1) as f64 / n as f64;
                            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
                        })
                        .collect()
                }
            }
        };
        if self.rescale_betas_zero_snr {
            rescale_zero_terminal_snr(&betas)
        } else {
            betas
        }
    }

    /// The running product of `1 - beta`, computed in float32 like torch.cumprod.
    pub fn alphas_cumprod(&self) -> Vec<f64> {
        let mut acc = 1.0f32;
        let mut out: Vec<f64> = self
            .betas()
            .into_iter()
            .map(|b| {
                acc *= 1.0 - b;
                acc as f64
            })
            .collect();
        if self.rescale_betas_zero_snr {
            // A zero terminal ᾱ would make the last sigma infinite; diffusers nudges it.
            if let Some(last) = out.last_mut() {
                *last = 2f64.powi(-24);
            }
        }
        out
    }

    /// The inference timesteps for `steps` steps, as integers, per `timestep_spacing`
    /// (DDIM, PNDM, and the Euler family before they turn them into floats).
    pub fn integer_timesteps(&self, steps: usize) -> Vec<f64> {
        let n = self.num_train_timesteps;
        let steps = steps.clamp(1, n);
        match self.timestep_spacing {
            TimestepSpacing::Linspace => linspace(0.0, (n - 1) as f64, steps)
                .into_iter()
                .rev()
                .map(round_half_even)
                .collect(),
            TimestepSpacing::Leading => {
                let ratio = n / steps;
                (0..steps)
                    .rev()
                    .map(|i| (i * ratio + self.steps_offset) as f64)
                    .collect()
            }
            TimestepSpacing::Trailing => {
                let ratio = n as f64 / steps as f64;
                (0..steps)
                    .map(|i| round_half_even(n as f64 - i as f64 * ratio) - 1.0)
                    .collect()
            }
        }
    }

    /// The Euler family's timesteps: like [`Self::integer_timesteps`] but unrounded for
    /// `linspace`, as diffusers keeps them as floats there.
    pub fn float_timesteps(&self, steps: usize) -> Vec<f64> {
        match self.timestep_spacing {
            TimestepSpacing::Linspace => {
                let n = self.num_train_timesteps;
                linspace(0.0, (n - 1) as f64, steps.clamp(1, n))
                    .into_iter()
                    .rev()
                    // diffusers builds them in float32.
                    .map(|t| t as f32 as f64)
                    .collect()
            }
            _ => self.integer_timesteps(steps),
        }
    }

    /// The multistep solvers' timesteps (DPM-Solver, UniPC): `steps + 1` points of which
    /// the last (t = 0) is dropped, so the first step starts from a lower noise level
    /// than DDIM's for "leading" and "linspace".
    pub fn multistep_timesteps(&self, steps: usize) -> Vec<f64> {
        let n = self.num_train_timesteps;
        let steps = steps.clamp(1, n);
        match self.timestep_spacing {
            TimestepSpacing::Linspace => linspace(0.0, (n - 1) as f64, steps + 1)
                .into_iter()
                .rev()
                .take(steps)
                .map(round_half_even)
                .collect(),
            TimestepSpacing::Leading => {
                let ratio = n / (steps + 1);
                (1..=steps)
                    .rev()
                    .map(|i| (i * ratio + self.steps_offset) as f64)
                    .collect()
            }
            TimestepSpacing::Trailing => self.integer_timesteps(steps),
        }
    }
}

/// Rescales betas so the last timestep has zero signal (Lin et al. 2023), as diffusers'
/// `rescale_zero_terminal_snr` does in float32.
fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let mut acc = 1.0f32;
    let mut sqrt_bar: Vec<f32> = betas
        .iter()
        .map(|b| {
            acc *= 1.0 - b;
            acc.sqrt()
        })
        .collect();
    let first = sqrt_bar[0];
    let last = *sqrt_bar.last().expect("at least one beta");
    for v in sqrt_bar.iter_mut() {
        *v -= last;
        *v *= first / (first - last);
    }
    let bar: Vec<f32> = sqrt_bar.iter().map(|v| v * v).collect();
    let mut out = Vec::with_capacity(bar.len());
    out.push(1.0 - bar[0]);
    for w in bar.windows(2) {
        out.push(1.0 - w[1] / w[0]);
    }
    out
}

/// `np.linspace(start, end, n)`.
pub(crate) fn linspace(start: f64, end: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f64;
    (0..n)
        .map(|i| {
            if i == n - 1 {
                end
            } else {
                start + step * i as f64
            }
        })
        .collect()
}

/// numpy rounds halves to even.
pub(crate) fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - x.signum()
    } else {
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sd15_file() -> SchedulerConfigFile {
        serde_json::from_str(
            r#"{"_class_name":"PNDMScheduler","beta_start":0.00085,"beta_end":0.012,
                "beta_schedule":"scaled_linear","steps_offset":1,"set_alpha_to_one":false,
                "skip_prk_steps":true,"clip_sample":false,"trained_betas":null}"#,
        )
        .unwrap()
    }

    fn sd15() -> SchedulerConfig {
        sd15_file().resolve(SchedulerKind::Ddim)
    }

    #[test]
    fn missing_keys_take_the_target_class_defaults() {
        let file = sd15_file();
        assert_eq!(
            file.resolve(SchedulerKind::Ddim).timestep_spacing,
            TimestepSpacing::Leading
        );
        assert_eq!(
            file.resolve(SchedulerKind::Euler).timestep_spacing,
            TimestepSpacing::Linspace
        );
        let empty = SchedulerConfigFile::default();
        assert!(empty.resolve(SchedulerKind::Ddim).clip_sample);
        assert_eq!(
            empty.resolve(SchedulerKind::Lcm).beta_schedule,
            BetaSchedule::ScaledLinear
        );
        assert!(file.resolve(SchedulerKind::DpmPp2mKarras).use_karras_sigmas);
        assert!(!file.resolve(SchedulerKind::DpmPp2m).use_karras_sigmas);
    }

    #[test]
    fn leading_spacing_matches_diffusers() {
        // DDIMScheduler(steps_offset=1).set_timesteps(4) -> [751, 501, 251, 1]
        assert_eq!(sd15().integer_timesteps(4), vec![751.0, 501.0, 251.0, 1.0]);
    }

    #[test]
    fn trailing_spacing_matches_diffusers() {
        let mut c = sd15();
        c.timestep_spacing = TimestepSpacing::Trailing;
        // sd-turbo: set_timesteps(4) -> [999, 749, 499, 249]
        assert_eq!(c.integer_timesteps(4), vec![999.0, 749.0, 499.0, 249.0]);
        assert_eq!(c.integer_timesteps(1), vec![999.0]);
        // np.arange(1000, 0, -1000/3).round() - 1 -> [999, 666, 332]
        assert_eq!(c.integer_timesteps(3), vec![999.0, 666.0, 332.0]);
    }

    #[test]
    fn linspace_spacing_matches_diffusers() {
        let mut c = sd15();
        c.timestep_spacing = TimestepSpacing::Linspace;
        // np.linspace(0, 999, 4).round()[::-1] -> [999, 666, 333, 0]
        assert_eq!(c.integer_timesteps(4), vec![999.0, 666.0, 333.0, 0.0]);
    }

    #[test]
    fn multistep_spacing_matches_diffusers() {
        let mut c = sd15();
        // DPMSolverMultistepScheduler(leading, steps_offset=1).set_timesteps(4)
        //   -> [801, 601, 401, 201]
        assert_eq!(c.multistep_timesteps(4), vec![801.0, 601.0, 401.0, 201.0]);
        c.timestep_spacing = TimestepSpacing::Linspace;
        // np.linspace(0, 999, 5).round()[::-1][:-1] -> [999, 749, 500, 250]
        assert_eq!(c.multistep_timesteps(4), vec![999.0, 749.0, 500.0, 250.0]);
    }

    #[test]
    fn scaled_linear_alphas_decrease() {
        let a = sd15().alphas_cumprod();
        assert_eq!(a.len(), 1000);
        assert!((a[0] - (1.0 - 0.00085)).abs() < 1e-6);
        assert!(a.windows(2).all(|w| w[1] < w[0]));
        // A well-known value: alphas_cumprod[999] of SD 1.5 is about 0.00466.
        assert!((a[999] - 0.004_660_8).abs() < 1e-5, "{}", a[999]);
    }

    #[test]
    fn zero_snr_rescale_ends_at_zero_signal() {
        let mut c = sd15();
        c.rescale_betas_zero_snr = true;
        let betas = c.betas();
        assert!((betas[999] - 1.0).abs() < 1e-6);
        let a = c.alphas_cumprod();
        assert_eq!(a[999], 2f64.powi(-24));
    }
}
