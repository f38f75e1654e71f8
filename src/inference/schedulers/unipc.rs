//! UniPC (diffusers `UniPCMultistepScheduler`, B(h) = expm1(h) "bh2", x0 prediction):
//! a multistep predictor, plus a corrector that refines each new sample with the model
//! output computed on it before the next prediction is made. This is diffusers' UniPC,
//! not the one in candle-transformers.

use candle_core::Tensor;

use super::config::round_half_even;
use super::sigmas::{
    alpha_sigma, final_sigma, interp, karras, lambda, log_table, sigma_table, sigma_to_t, to_f32,
};
use super::{NoiseSource, PredictionType, Scheduler, SchedulerConfig};

/// Per-run state: the schedule, the recent x0 predictions and the pending correction.
pub struct UniPc {
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    order: usize,
    bh1: bool,
    config: SchedulerConfig,
    /// Most recent last; at most `order` of them.
    outputs: Vec<Tensor>,
    last_sample: Option<Tensor>,
    this_order: usize,
    lower_order_nums: usize,
}

/// The UniPC coefficients for one update: `R` (powers of the step ratios), `b`, and the
/// two scalars every update uses.
struct Coefficients {
    r: Vec<Vec<f64>>,
    b: Vec<f64>,
    h_phi_1: f64,
    b_h: f64,
}

fn coefficients(rks: &[f64], h: f64, order: usize, bh1: bool) -> Coefficients {
    let hh = -h;
    let h_phi_1 = hh.exp_m1();
    let mut h_phi_k = h_phi_1 / hh - 1.0;
    let b_h = if bh1 { hh } else { hh.exp_m1() };
    let mut factorial = 1.0;
    let (mut r, mut b) = (Vec::new(), Vec::new());
    for i in 1..=order {
        r.push(rks.iter().map(|rk| rk.powi(i as i32 - 1)).collect());
        b.push(h_phi_k * factorial / b_h);
        factorial *= (i + 1) as f64;
        h_phi_k = h_phi_k / hh - 1.0 / factorial;
    }
    Coefficients { r, b, h_phi_1, b_h }
}

/// Solves the small dense system `a x = y` by Gaussian elimination with pivoting.
fn solve(mut a: Vec<Vec<f64>>, mut y: Vec<f64>) -> Vec<f64> {
    let n = y.len();
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
            .expect("non-empty");
        a.swap(col, pivot);
        y.swap(col, pivot);
        let pivot_row = a[col].clone();
        for row in col + 1..n {
            let f = a[row][col] / pivot_row[col];
            for (cell, p) in a[row].iter_mut().zip(&pivot_row).skip(col) {
                *cell -= f * p;
            }
            y[row] -= f * y[col];
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let rest: f64 = (row + 1..n).map(|k| a[row][k] * x[k]).sum();
        x[row] = (y[row] - rest) / a[row][row];
    }
    x
}

/// `Σ weights[k] * tensors[k]`, or `None` for no terms.
fn weighted_sum(weights: &[f64], tensors: &[Tensor]) -> candle_core::Result<Option<Tensor>> {
    let mut acc: Option<Tensor> = None;
    for (w, t) in weights.iter().zip(tensors) {
        let term = (t * *w)?;
        acc = Some(match acc {
            Some(a) => (a + term)?,
            None => term,
        });
    }
    Ok(acc)
}

impl UniPc {
    /// Sets up `steps` steps with the file's `solver_order` (default 2).
    pub fn new(config: &SchedulerConfig, steps: usize) -> Self {
        let table = sigma_table(config);
        let mut timesteps = config.multistep_timesteps(steps);
        let mut sigmas: Vec<f64> = if config.use_karras_sigmas {
            let sigmas = karras(table[0], table[table.len() - 1], timesteps.len());
            let logs = log_table(&table);
            timesteps = sigmas
                .iter()
                .map(|&s| round_half_even(sigma_to_t(s, &logs)))
                .collect();
            sigmas
        } else {
            timesteps.iter().map(|&t| interp(t, &table)).collect()
        };
        sigmas.push(final_sigma(config, &table));
        Self {
            timesteps,
            sigmas: to_f32(sigmas),
            order: config.solver_order,
            bh1: config.solver_type.as_deref() == Some("bh1"),
            config: config.clone(),
            outputs: Vec::new(),
            last_sample: None,
            this_order: 1,
            lower_order_nums: 0,
        }
    }

    fn x0(&self, output: &Tensor, sample: &Tensor, sigma: f64) -> candle_core::Result<Tensor> {
        let (alpha_t, sigma_t) = alpha_sigma(sigma);
        match self.config.prediction_type {
            PredictionType::Epsilon => (sample - (output * sigma_t)?)? / alpha_t,
            PredictionType::VPrediction => (sample * alpha_t)? - (output * sigma_t)?,
            PredictionType::Sample => Ok(output.clone()),
        }
    }

    /// Ratios of log-SNR steps to the current one, and the matching differences of x0
    /// predictions, for the `order - 1` older outputs; `offset` is 0 for the predictor
    /// and 1 for the corrector (which looks one step further back).
    fn history(
        &self,
        index: usize,
        offset: usize,
        order: usize,
        h: f64,
        lambda_s0: f64,
    ) -> candle_core::Result<(Vec<f64>, Vec<Tensor>)> {
        let m0 = &self.outputs[self.outputs.len() - 1];
        let (mut rks, mut d1s) = (Vec::new(), Vec::new());
        for k in 1..order {
            let rk = (lambda(self.sigmas[index - k - offset]) - lambda_s0) / h;
            let mk = &self.outputs[self.outputs.len() - 1 - k];
            d1s.push(((mk - m0)? / rk)?);
            rks.push(rk);
        }
        rks.push(1.0);
        Ok((rks, d1s))
    }

    fn predict(&self, x: &Tensor, index: usize, order: usize) -> candle_core::Result<Tensor> {
        let (s0, t) = (self.sigmas[index], self.sigmas[index + 1]);
        let (alpha_t, sigma_t) = alpha_sigma(t);
        let sigma_s0 = alpha_sigma(s0).1;
        let h = lambda(t) - lambda(s0);
        let (rks, d1s) = self.history(index, 0, order, h, lambda(s0))?;
        let c = coefficients(&rks, h, order, self.bh1);
        let m0 = &self.outputs[self.outputs.len() - 1];
        let base = ((x * (sigma_t / sigma_s0))? - (m0 * (alpha_t * c.h_phi_1))?)?;
        let rhos = match order {
            1 => vec![],
            2 => vec![0.5],
            _ => solve(
                c.r[..order - 1]
                    .iter()
                    .map(|row| row[..order - 1].to_vec())
                    .collect(),
                c.b[..order - 1].to_vec(),
            ),
        };
        match weighted_sum(&rhos, &d1s)? {
            Some(res) => base - (res * (alpha_t * c.b_h))?,
            None => Ok(base),
        }
    }

    /// Refines the sample just predicted (from `last`) with the model output `model_t`
    /// computed on it.
    fn correct(
        &self,
        model_t: &Tensor,
        last: &Tensor,
        index: usize,
    ) -> candle_core::Result<Tensor> {
        let order = self.this_order;
        let (s0, t) = (self.sigmas[index - 1], self.sigmas[index]);
        let (alpha_t, sigma_t) = alpha_sigma(t);
        let sigma_s0 = alpha_sigma(s0).1;
        let h = lambda(t) - lambda(s0);
        let (rks, d1s) = self.history(index, 1, order, h, lambda(s0))?;
        let c = coefficients(&rks, h, order, self.bh1);
        let rhos = if order == 1 {
            vec![0.5]
        } else {
            solve(c.r, c.b.clone())
        };
        let m0 = &self.outputs[self.outputs.len() - 1];
        let base = ((last * (sigma_t / sigma_s0))? - (m0 * (alpha_t * c.h_phi_1))?)?;
        let d1_t = ((model_t - m0)? * rhos[rhos.len() - 1])?;
        let correction = match weighted_sum(&rhos[..rhos.len() - 1], &d1s)? {
            Some(res) => (res + d1_t)?,
            None => d1_t,
        };
        base - (correction * (alpha_t * c.b_h))?
    }
}

impl Scheduler for UniPc {
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
        _noise: &mut dyn NoiseSource,
    ) -> candle_core::Result<Tensor> {
        let m = self.x0(model_output, sample, self.sigmas[index])?;
        let sample = match (&self.last_sample, index > 0) {
            (Some(last), true) => self.correct(&m, last, index)?,
            _ => sample.clone(),
        };
        self.outputs.push(m);
        if self.outputs.len() > self.order {
            self.outputs.remove(0);
        }
        let room = if self.config.lower_order_final {
            self.order.min(self.timesteps.len() - index)
        } else {
            self.order
        };
        self.this_order = room.min(self.lower_order_nums + 1);
        let prev = self.predict(&sample, index, self.this_order)?;
        self.last_sample = Some(sample);
        self.lower_order_nums = (self.lower_order_nums + 1).min(self.order);
        Ok(prev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inference::schedulers::{SchedulerConfigFile, SchedulerKind};

    fn sd15() -> SchedulerConfig {
        serde_json::from_str::<SchedulerConfigFile>(
            r#"{"beta_start":0.00085,"beta_end":0.012,"beta_schedule":"scaled_linear",
                "steps_offset":1}"#,
        )
        .unwrap()
        .resolve(SchedulerKind::UniPc)
    }

    #[test]
    fn timesteps_match_diffusers() {
        // UniPCMultistepScheduler(SD 1.5 betas).set_timesteps(6) -> linspace spacing
        assert_eq!(
            UniPc::new(&sd15(), 6).timesteps,
            vec![999.0, 832.0, 666.0, 500.0, 333.0, 166.0]
        );
    }

    #[test]
    fn solve_inverts_a_small_system() {
        let x = solve(vec![vec![1.0, 1.0], vec![1.0, 3.0]], vec![3.0, 7.0]);
        assert!((x[0] - 1.0).abs() < 1e-12 && (x[1] - 2.0).abs() < 1e-12);
    }

    #[test]
    fn exact_denoiser_lands_on_the_clean_sample() {
        for order in [1, 2, 3] {
            let mut config = sd15();
            config.solver_order = order;
            let mut s = UniPc::new(&config, 6);
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
                let (a, sg) = alpha_sigma(s.sigmas[i]);
                let e = ((&x - (&x0 * a).unwrap()).unwrap() / sg).unwrap();
                x = s.step(&e, i, &x, &mut NoNoise).unwrap();
            }
            let diff: f32 = (x - &x0)
                .unwrap()
                .abs()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar()
                .unwrap();
            assert!(diff < 1e-3, "order {order}: {diff}");
        }
    }
}
