//! Noise levels (sigmas) shared by the sigma-based samplers, computed with diffusers'
//! precision: the table in float32 as torch builds it, interpolation in float64 as numpy
//! does, and the final schedule rounded to float32.

use super::config::{FinalSigmas, SchedulerConfig};

/// `((1 - ᾱ) / ᾱ) ** 0.5` for every training timestep, in float32 like torch.
pub(crate) fn sigma_table(config: &SchedulerConfig) -> Vec<f64> {
    config
        .alphas_cumprod()
        .iter()
        .map(|&a| {
            let a = a as f32;
            ((1.0f32 - a) / a).sqrt() as f64
        })
        .collect()
}

/// `np.log` of the table, which numpy keeps in float32 for a float32 array.
pub(crate) fn log_table(table: &[f64]) -> Vec<f64> {
    table.iter().map(|&s| (s as f32).ln() as f64).collect()
}

/// `np.interp(x, arange(len(table)), table)`.
pub(crate) fn interp(x: f64, table: &[f64]) -> f64 {
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

/// Karras et al. (2022) spacing with rho = 7 between `max` and `min`, `n` levels.
pub(crate) fn karras(min: f64, max: f64, n: usize) -> Vec<f64> {
    let rho = 7.0;
    let (min_inv, max_inv) = (min.powf(1.0 / rho), max.powf(1.0 / rho));
    super::config::linspace(0.0, 1.0, n)
        .into_iter()
        .map(|ramp| (max_inv + ramp * (min_inv - max_inv)).powf(rho))
        .collect()
}

/// The (fractional) training timestep whose log-sigma is `sigma`'s, by linear
/// interpolation in log space (diffusers' `_sigma_to_t`).
pub(crate) fn sigma_to_t(sigma: f64, log_sigmas: &[f64]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    // The last index whose log-sigma is at most ours, kept off the final entry.
    let count = log_sigmas.iter().filter(|&&l| log_sigma - l >= 0.0).count();
    let low = count.saturating_sub(1).min(log_sigmas.len() - 2);
    let high = low + 1;
    let w = ((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[high])).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * high as f64
}

/// The Euler family's schedule: sigmas at `timesteps` (or Karras-spaced between the
/// first and last of them), then the final level. Returns `(timesteps, sigmas)` with
/// one more sigma than timesteps.
pub(crate) fn euler_schedule(config: &SchedulerConfig, steps: usize) -> (Vec<f64>, Vec<f64>) {
    let table = sigma_table(config);
    let mut timesteps = config.float_timesteps(steps);
    let mut sigmas: Vec<f64> = timesteps.iter().map(|&t| interp(t, &table)).collect();
    if config.use_karras_sigmas {
        let (min, max) = (sigmas[sigmas.len() - 1], sigmas[0]);
        sigmas = karras(min, max, sigmas.len());
        let logs = log_table(&table);
        timesteps = sigmas.iter().map(|&s| sigma_to_t(s, &logs)).collect();
        timesteps.iter_mut().for_each(|t| *t = *t as f32 as f64);
    }
    sigmas.push(final_sigma(config, &table));
    (timesteps, to_f32(sigmas))
}

/// The level after the last step: zero, or the smallest training sigma.
pub(crate) fn final_sigma(config: &SchedulerConfig, table: &[f64]) -> f64 {
    match config.final_sigmas_type {
        FinalSigmas::Zero => 0.0,
        FinalSigmas::SigmaMin => table[0],
    }
}

/// `alpha_t = 1 / sqrt(sigma^2 + 1)` and `sigma_t = sigma * alpha_t`: the variance-preserving
/// scalings behind an Euler-style sigma, used by the multistep solvers.
pub(crate) fn alpha_sigma(sigma: f64) -> (f64, f64) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

/// Half the log-SNR, `log(alpha_t / sigma_t)`; +inf at sigma = 0, which the multistep
/// update formulas turn into "return the clean-sample prediction".
pub(crate) fn lambda(sigma: f64) -> f64 {
    let (a, s) = alpha_sigma(sigma);
    a.ln() - s.ln()
}

/// Rounds every value to float32, as diffusers stores its schedules.
pub(crate) fn to_f32(values: Vec<f64>) -> Vec<f64> {
    values.into_iter().map(|v| v as f32 as f64).collect()
}

/// The initial noise scale of the Euler family.
pub(crate) fn euler_init_sigma(config: &SchedulerConfig, sigmas: &[f64]) -> f64 {
    use super::config::TimestepSpacing;
    let max = sigmas.iter().cloned().fold(0.0, f64::max);
    match config.timestep_spacing {
        TimestepSpacing::Linspace | TimestepSpacing::Trailing => max,
        TimestepSpacing::Leading => (max * max + 1.0).sqrt(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interp_matches_numpy() {
        let table = [0.0, 10.0, 20.0];
        assert_eq!(interp(0.5, &table), 5.0);
        assert_eq!(interp(-1.0, &table), 0.0);
        assert_eq!(interp(9.0, &table), 20.0);
    }

    #[test]
    fn karras_spans_max_to_min() {
        let s = karras(0.03, 14.6, 5);
        assert!((s[0] - 14.6).abs() < 1e-9 && (s[4] - 0.03).abs() < 1e-9);
        assert!(s.windows(2).all(|w| w[1] < w[0]));
    }

    #[test]
    fn sigma_to_t_inverts_the_table() {
        let config = SchedulerConfig::default();
        let table = sigma_table(&config);
        let logs = log_table(&table);
        for t in [0usize, 1, 250, 998, 999] {
            let back = sigma_to_t(table[t], &logs);
            assert!((back - t as f64).abs() < 1e-3, "{t} -> {back}");
        }
        let mid = (table[10] * table[11]).sqrt();
        assert!((sigma_to_t(mid, &logs) - 10.5).abs() < 1e-3);
    }
}
