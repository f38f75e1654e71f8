//! `scheduler_config.json`, with diffusers' defaults for every missing key.

use serde::{Deserialize, Serialize};

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

/// The keys of `scheduler_config.json` that our schedulers read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SchedulerConfig {
    #[serde(default = "train_steps")]
    pub num_train_timesteps: usize,
    #[serde(default = "beta_start")]
    pub beta_start: f64,
    #[serde(default = "beta_end")]
    pub beta_end: f64,
    #[serde(default = "beta_schedule")]
    pub beta_schedule: BetaSchedule,
    #[serde(default = "prediction_type")]
    pub prediction_type: PredictionType,
    #[serde(default = "spacing")]
    pub timestep_spacing: TimestepSpacing,
    #[serde(default)]
    pub steps_offset: usize,
    #[serde(default = "yes")]
    pub set_alpha_to_one: bool,
    #[serde(default)]
    pub clip_sample: bool,
    #[serde(default = "one")]
    pub clip_sample_range: f64,
    #[serde(rename = "_class_name", default)]
    pub class_name: String,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("every field has a default")
    }
}

impl SchedulerConfig {
    /// Betas in float32, as diffusers builds them with torch.
    pub fn betas(&self) -> Vec<f32> {
        let n = self.num_train_timesteps;
        match self.beta_schedule {
            BetaSchedule::Linear => linspace(self.beta_start, self.beta_end, n)
                .into_iter()
                .map(|b| b as f32)
                .collect(),
            BetaSchedule::ScaledLinear => linspace(self.beta_start.sqrt(), self.beta_end.sqrt(), n)
                .into_iter()
                .map(|b| (b as f32) * (b as f32))
                .collect(),
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
    }

    /// The running product of `1 - beta`, computed in float32 like torch.cumprod.
    pub fn alphas_cumprod(&self) -> Vec<f64> {
        let mut acc = 1.0f32;
        self.betas()
            .into_iter()
            .map(|b| {
                acc *= 1.0 - b;
                acc as f64
            })
            .collect()
    }

    /// The inference timesteps for `steps` steps, as integers, per `timestep_spacing`.
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
}

impl SchedulerConfig {
    /// The Euler family's timesteps: like [`Self::integer_timesteps`] but unrounded for
    /// `linspace`, as diffusers keeps them as floats there.
    pub fn float_timesteps(&self, steps: usize) -> Vec<f64> {
        match self.timestep_spacing {
            TimestepSpacing::Linspace => {
                let n = self.num_train_timesteps;
                linspace(0.0, (n - 1) as f64, steps.clamp(1, n))
                    .into_iter()
                    .rev()
                    .collect()
            }
            _ => self.integer_timesteps(steps),
        }
    }
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

fn train_steps() -> usize {
    1000
}
fn beta_start() -> f64 {
    0.0001
}
fn beta_end() -> f64 {
    0.02
}
fn beta_schedule() -> BetaSchedule {
    BetaSchedule::Linear
}
fn prediction_type() -> PredictionType {
    PredictionType::Epsilon
}
fn spacing() -> TimestepSpacing {
    TimestepSpacing::Leading
}
fn yes() -> bool {
    true
}
fn one() -> f64 {
    1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sd15() -> SchedulerConfig {
        serde_json::from_str(
            r#"{"beta_start":0.00085,"beta_end":0.012,"beta_schedule":"scaled_linear",
                "steps_offset":1,"set_alpha_to_one":false}"#,
        )
        .unwrap()
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
    }

    #[test]
    fn linspace_spacing_matches_diffusers() {
        let mut c = sd15();
        c.timestep_spacing = TimestepSpacing::Linspace;
        // np.linspace(0, 999, 4).round()[::-1] -> [999, 666, 333, 0]
        assert_eq!(c.integer_timesteps(4), vec![999.0, 666.0, 333.0, 0.0]);
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
}
