//! PNDM (diffusers `PNDMScheduler`): pseudo linear multistep. With `skip_prk_steps`
//! (every SD 1.x/2.x config) it is PLMS: one warm-up step evaluated twice, then
//! Adams–Bashforth combinations of up to four past noise predictions. Without it, four
//! Runge–Kutta steps (three UNet calls each) warm the history up first.

use candle_core::Tensor;

use super::{NoiseSource, PredictionType, Scheduler, SchedulerConfig};

/// Per-run state of PNDM: the schedule and the history of noise predictions.
pub struct Pndm {
    timesteps: Vec<f64>,
    prk_count: usize,
    /// `num_train_timesteps / steps`, the distance between two PLMS timesteps.
    step_ratio: i64,
    alphas_cumprod: Vec<f64>,
    final_alpha_cumprod: f64,
    prediction_type: PredictionType,
    counter: usize,
    ets: Vec<Tensor>,
    cur_model_output: Option<Tensor>,
    cur_sample: Option<Tensor>,
}

impl Pndm {
    /// Sets up `steps` steps; the UNet is called `steps + 1` times with PLMS only.
    pub fn new(config: &SchedulerConfig, steps: usize) -> Self {
        let steps = steps.clamp(1, config.num_train_timesteps);
        let ascending: Vec<i64> = config
            .integer_timesteps(steps)
            .into_iter()
            .rev()
            .map(|t| t as i64)
            .collect();
        let n = ascending.len();
        let step_ratio = (config.num_train_timesteps / steps) as i64;
        let (prk, plms): (Vec<i64>, Vec<i64>) = if config.skip_prk_steps {
            // The second-to-last timestep is visited twice: PLMS needs one extra model
            // output before it can take its first multistep.
            let mut plms = ascending[..n - 1].to_vec();
            plms.extend_from_slice(&ascending[n.saturating_sub(2)..n - 1]);
            plms.push(ascending[n - 1]);
            plms.reverse();
            (Vec::new(), plms)
        } else {
            let half = step_ratio / 2;
            let tail = &ascending[n.saturating_sub(4)..];
            let pairs: Vec<i64> = tail.iter().flat_map(|&t| [t, t + half]).collect();
            let doubled: Vec<i64> = pairs[..pairs.len() - 1]
                .iter()
                .flat_map(|&t| [t, t])
                .collect();
            let mut prk = doubled[1..doubled.len() - 1].to_vec();
            prk.reverse();
            let plms = ascending[..n.saturating_sub(3)]
                .iter()
                .rev()
                .copied()
                .collect();
            (prk, plms)
        };
        let alphas_cumprod = config.alphas_cumprod();
        Self {
            prk_count: prk.len(),
            timesteps: prk.iter().chain(&plms).map(|&t| t as f64).collect(),
            step_ratio,
            final_alpha_cumprod: if config.set_alpha_to_one {
                1.0
            } else {
                alphas_cumprod[0]
            },
            alphas_cumprod,
            prediction_type: config.prediction_type,
            counter: 0,
            ets: Vec::new(),
            cur_model_output: None,
            cur_sample: None,
        }
    }

    /// Formula (9) of the PNDM paper: from `sample` at `t` to `prev_t` given a noise
    /// estimate.
    fn prev_sample(
        &self,
        sample: &Tensor,
        t: i64,
        prev_t: i64,
        model_output: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let alpha = self.alphas_cumprod[t as usize];
        let alpha_prev = if prev_t >= 0 {
            self.alphas_cumprod[prev_t as usize]
        } else {
            self.final_alpha_cumprod
        };
        let (beta, beta_prev) = (1.0 - alpha, 1.0 - alpha_prev);
        let eps = match self.prediction_type {
            PredictionType::Epsilon => model_output.clone(),
            PredictionType::VPrediction => {
                ((model_output * alpha.sqrt())? + (sample * beta.sqrt())?)?
            }
            // diffusers refuses this; the noise it implies is the natural reading.
            PredictionType::Sample => ((sample - (model_output * alpha.sqrt())?)? / beta.sqrt())?,
        };
        let sample_coeff = (alpha_prev / alpha).sqrt();
        let denom = alpha * beta_prev.sqrt() + (alpha * beta * alpha_prev).sqrt();
        (sample * sample_coeff)? - (eps * ((alpha_prev - alpha) / denom))?
    }

    fn step_prk(
        &mut self,
        output: &Tensor,
        t: i64,
        sample: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let half = self.step_ratio / 2;
        let prev_t = t - if self.counter % 2 == 1 { 0 } else { half };
        let base_t = self.timesteps[self.counter / 4 * 4] as i64;
        let accumulate = |acc: &Option<Tensor>, w: f64| match acc {
            Some(a) => a + (output * w)?,
            None => output * w,
        };
        let output = match self.counter % 4 {
            0 => {
                self.cur_model_output = Some(accumulate(&self.cur_model_output, 1.0 / 6.0)?);
                self.ets.push(output.clone());
                self.cur_sample = Some(sample.clone());
                output.clone()
            }
            1 | 2 => {
                self.cur_model_output = Some(accumulate(&self.cur_model_output, 1.0 / 3.0)?);
                output.clone()
            }
            _ => {
                let done = accumulate(&self.cur_model_output, 1.0 / 6.0)?;
                self.cur_model_output = None;
                done
            }
        };
        let from = self.cur_sample.clone().unwrap_or_else(|| sample.clone());
        self.counter += 1;
        self.prev_sample(&from, base_t, prev_t, &output)
    }

    fn step_plms(
        &mut self,
        output: &Tensor,
        t: i64,
        sample: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let (mut t, mut prev_t) = (t, t - self.step_ratio);
        if self.counter != 1 {
            let keep = self.ets.len().saturating_sub(3);
            self.ets.drain(..keep);
            self.ets.push(output.clone());
        } else {
            // The repeated timestep: step from the previous one again, averaging slopes.
            prev_t = t;
            t += self.step_ratio;
        }
        let e = &self.ets;
        let k = e.len();
        let mut from = sample.clone();
        let combined = if k == 1 && self.counter == 0 {
            self.cur_sample = Some(sample.clone());
            output.clone()
        } else if k == 1 && self.counter == 1 {
            from = self.cur_sample.take().unwrap_or(from);
            ((output + &e[0])? / 2.0)?
        } else if k == 2 {
            (((&e[1] * 3.0)? - &e[0])? / 2.0)?
        } else if k == 3 {
            (((&e[2] * 23.0)? - (&e[1] * 16.0)? + (&e[0] * 5.0)?)? / 12.0)?
        } else {
            ((((&e[3] * 55.0)? - (&e[2] * 59.0)?)? + (&e[1] * 37.0)? - (&e[0] * 9.0)?)? / 24.0)?
        };
        self.counter += 1;
        self.prev_sample(&from, t, prev_t, &combined)
    }
}

impl Scheduler for Pndm {
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
        let t = self.timesteps[index] as i64;
        if self.counter < self.prk_count {
            self.step_prk(model_output, t, sample)
        } else {
            self.step_plms(model_output, t, sample)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inference::schedulers::{SchedulerConfigFile, SchedulerKind};

    fn config(skip_prk: bool) -> SchedulerConfig {
        let mut c = SchedulerConfigFile {
            beta_start: Some(0.00085),
            beta_end: Some(0.012),
            beta_schedule: Some(super::super::BetaSchedule::ScaledLinear),
            steps_offset: Some(1),
            ..Default::default()
        }
        .resolve(SchedulerKind::Pndm);
        c.skip_prk_steps = skip_prk;
        c
    }

    #[test]
    fn plms_schedule_repeats_the_second_timestep() {
        // PNDMScheduler(skip_prk_steps=True, steps_offset=1).set_timesteps(4).timesteps
        let p = Pndm::new(&config(true), 4);
        assert_eq!(p.timesteps, vec![751.0, 501.0, 501.0, 251.0, 1.0]);
    }

    #[test]
    fn prk_schedule_matches_diffusers() {
        // PNDMScheduler(steps_offset=1).set_timesteps(6).timesteps
        let p = Pndm::new(&config(false), 6);
        let want = [
            831.0, 748.0, 748.0, 665.0, 665.0, 582.0, 582.0, 499.0, 499.0, 416.0, 416.0, 333.0,
            333.0, 167.0, 1.0,
        ];
        assert_eq!(p.timesteps, want);
        assert_eq!(p.prk_count, 12);
    }

    #[test]
    fn zero_noise_prediction_only_rescales() {
        // With eps = 0 each step multiplies by sqrt(ᾱ_prev / ᾱ_t): the clean signal survives.
        let c = config(true);
        let mut p = Pndm::new(&c, 4);
        let a = c.alphas_cumprod();
        let x = Tensor::ones(
            (1, 4, 2, 2),
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let zero = x.zeros_like().unwrap();
        let mut sample = (&x * a[751].sqrt()).unwrap();
        struct NoNoise;
        impl NoiseSource for NoNoise {
            fn randn_like(&mut self, _: &Tensor) -> candle_core::Result<Tensor> {
                unreachable!("PNDM draws no noise")
            }
        }
        for i in 0..p.timesteps().len() {
            sample = p.step(&zero, i, &sample, &mut NoNoise).unwrap();
        }
        let v: Vec<f32> = sample.flatten_all().unwrap().to_vec1().unwrap();
        let want = a[0].sqrt() as f32;
        assert!(v.iter().all(|x| (x - want).abs() < 1e-4), "{v:?} vs {want}");
    }
}
