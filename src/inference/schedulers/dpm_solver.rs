//! DPM-Solver++ 2M (diffusers `DPMSolverMultistepScheduler`, `solver_order=2`,
//! midpoint): a second-order multistep solver in log-SNR time that reuses the previous
//! clean-sample prediction. The SDE variant (`sde-dpmsolver++`) adds fresh noise on
//! every step. `dpmpp-2m`, `dpmpp-2m-karras` and `dpmpp-2m-sde-karras` all land here;
//! their names fix the algorithm, order 2 and the midpoint rule, so a file's
//! `algorithm_type`, `solver_order` and `solver_type` are not read.

use candle_core::Tensor;

use super::config::round_half_even;
use super::sigmas::{
    alpha_sigma, final_sigma, interp, karras, lambda, log_table, sigma_table, sigma_to_t, to_f32,
};
use super::{BetaSchedule, FinalSigmas, NoiseSource, PredictionType, Scheduler, SchedulerConfig};

/// Per-run state: the schedule and the last two clean-sample predictions.
pub struct DpmSolver {
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    sde: bool,
    config: SchedulerConfig,
    previous: Option<Tensor>,
}

impl DpmSolver {
    /// Sets up `steps` steps; `sde` selects `sde-dpmsolver++` (one noise draw per step).
    pub fn new(config: &SchedulerConfig, steps: usize, sde: bool) -> Self {
        let table = sigma_table(config);
        let mut timesteps = config.multistep_timesteps(steps);
        let sigmas = if config.use_karras_sigmas {
            // The Karras range is the whole training range, not the chosen timesteps'.
            let sigmas = karras(table[0], table[table.len() - 1], timesteps.len());
            let logs = log_table(&table);
            timesteps = sigmas
                .iter()
                .map(|&s| {
                    let t = sigma_to_t(s, &logs);
                    if config.beta_schedule == BetaSchedule::SquaredcosCapV2 {
                        t
                    } else {
                        round_half_even(t)
                    }
                })
                .collect();
            sigmas
        } else {
            timesteps.iter().map(|&t| interp(t, &table)).collect()
        };
        let mut sigmas = sigmas;
        sigmas.push(final_sigma(config, &table));
        Self {
            timesteps,
            sigmas: to_f32(sigmas),
            sde,
            config: config.clone(),
            previous: None,
        }
    }

    /// The model output turned into a clean-sample prediction (DPM-Solver++ works on x0).
    fn x0(&self, output: &Tensor, sample: &Tensor, sigma: f64) -> candle_core::Result<Tensor> {
        let (alpha_t, sigma_t) = alpha_sigma(sigma);
        match self.config.prediction_type {
            PredictionType::Epsilon => (sample - (output * sigma_t)?)? / alpha_t,
            PredictionType::VPrediction => (sample * alpha_t)? - (output * sigma_t)?,
            PredictionType::Sample => Ok(output.clone()),
        }
    }
}

impl Scheduler for DpmSolver {
    fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        index: usize,
    ) -> candle_core::Result<Tensor> {
        let (alpha, sigma) = alpha_sigma(self.sigmas[index]);
        (original * alpha)? + (noise * sigma)?
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
        let n = self.timesteps.len();
        let c = &self.config;
        // Few-step runs end with first-order steps, which are more stable there.
        let last_first_order = index == n - 1
            && (c.euler_at_final
                || (c.lower_order_final && n < 15)
                || c.final_sigmas_type == FinalSigmas::Zero);
        let (s0, t) = (self.sigmas[index], self.sigmas[index + 1]);
        let m0 = self.x0(model_output, sample, s0)?;
        let draw = if self.sde {
            Some(noise.randn_like(&m0)?)
        } else {
            None
        };
        let (alpha_t, sigma_t) = alpha_sigma(t);
        let (_, sigma_s0) = alpha_sigma(s0);
        let h = lambda(t) - lambda(s0);
        let d = match (&self.previous, last_first_order) {
            (Some(m1), false) => {
                let r0 = (lambda(s0) - lambda(self.sigmas[index - 1])) / h;
                let d1 = ((&m0 - m1)? / r0)?;
                (&m0 + (d1 * 0.5)?)?
            }
            _ => m0.clone(),
        };
        let prev = match draw {
            None => ((sample * (sigma_t / sigma_s0))? - (d * (alpha_t * (-h).exp_m1()))?)?,
            Some(z) => {
                let decay = (-2.0 * h).exp();
                ((sample * (sigma_t / sigma_s0 * (-h).exp()))?
                    + (d * (alpha_t * (1.0 - decay)))?
                    + (z * (sigma_t * (1.0 - decay).sqrt()))?)?
            }
        };
        self.previous = Some(m0);
        Ok(prev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inference::schedulers::{SchedulerConfigFile, SchedulerKind};

    fn sd15() -> SchedulerConfigFile {
        serde_json::from_str(
            r#"{"beta_start":0.00085,"beta_end":0.012,"beta_schedule":"scaled_linear",
                "steps_offset":1}"#,
        )
        .unwrap()
    }

    #[test]
    fn karras_timesteps_match_diffusers() {
        // DPMSolverMultistepScheduler(SD 1.5 betas, use_karras_sigmas=True).set_timesteps(6)
        //   .timesteps -> [999, 837, 594, 249, 30, 0]
        let s = DpmSolver::new(&sd15().resolve(SchedulerKind::DpmPp2mKarras), 6, false);
        assert_eq!(s.timesteps, vec![999.0, 837.0, 594.0, 249.0, 30.0, 0.0]);
        assert_eq!(*s.sigmas.last().unwrap(), 0.0);
        assert!((s.sigmas[0] - 14.614_642).abs() < 1e-4, "{}", s.sigmas[0]);
    }

    #[test]
    fn exact_denoiser_lands_on_the_clean_sample() {
        // A model that predicts the true noise of x = alpha x0 + sigma eps drives the
        // deterministic solver to x0 exactly, whatever the order of each step.
        let mut s = DpmSolver::new(&sd15().resolve(SchedulerKind::DpmPp2m), 5, false);
        let dev = candle_core::Device::Cpu;
        let x0 = Tensor::new(&[0.5f32, -0.25, 1.0, 0.0], &dev).unwrap();
        let eps = Tensor::new(&[1.0f32, -1.0, 0.5, 2.0], &dev).unwrap();
        let (a, sg) = alpha_sigma(s.sigmas[0]);
        let mut x = ((&x0 * a).unwrap() + (&eps * sg).unwrap()).unwrap();
        struct NoNoise;
        impl NoiseSource for NoNoise {
            fn randn_like(&mut self, _: &Tensor) -> candle_core::Result<Tensor> {
                unreachable!()
            }
        }
        for i in 0..s.timesteps().len() {
            let sigma = s.sigmas[i];
            let (a, sg) = alpha_sigma(sigma);
            // The exact epsilon for the current x given x0.
            let e = ((&x - (&x0 * a).unwrap()).unwrap() / sg).unwrap();
            x = s.step(&e, i, &x, &mut NoNoise).unwrap();
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
