//! GEGLU, the gated feed-forward activation of every transformer block.
//!
//! The projection's output holds `[value | gate]` halves per token; the result is
//! `value · gelu(gate)` with diffusers' exact (erf) GELU. candle computes it as a chunk,
//! a scalar-libm GELU pass and a multiply; this is one vectorised pass.

use rayon::prelude::*;

use super::exp::gelu_erf;
use super::simd::vectorised;

/// `proj` is `rows × 2·inner`; returns `rows × inner`.
pub fn geglu(proj: &[f32], inner: usize) -> Vec<f32> {
    assert!(inner > 0 && proj.len().is_multiple_of(2 * inner));
    let rows = proj.len() / (2 * inner);
    let mut out = vec![0f32; rows * inner];
    out.par_chunks_mut(64 * inner)
        .zip(proj.par_chunks(64 * 2 * inner))
        .for_each(|(dst, src)| {
            gate_rows(dst, src, inner);
        });
    out
}

vectorised! {
    fn gate_rows(dst: &mut [f32], src: &[f32], inner: usize) {
        for (d, s) in dst.chunks_exact_mut(inner).zip(src.chunks_exact(2 * inner)) {
            let (value, gate) = s.split_at(inner);
            for ((d, v), g) in d.iter_mut().zip(value).zip(gate) {
                *d = v * gelu_erf(*g);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates_the_first_half_with_the_gelu_of_the_second() {
        let inner = 3;
        let proj: Vec<f32> = (0..2 * 2 * inner).map(|i| i as f32 * 0.3 - 1.5).collect();
        let out = geglu(&proj, inner);
        for r in 0..2 {
            for i in 0..inner {
                let value = proj[r * 2 * inner + i];
                let gate = proj[r * 2 * inner + inner + i] as f64;
                let gelu = 0.5 * gate * (1.0 + erf(gate / std::f64::consts::SQRT_2));
                let want = value as f64 * gelu;
                assert!((out[r * inner + i] as f64 - want).abs() < 1e-5);
            }
        }
    }

    fn erf(x: f64) -> f64 {
        let (mut term, mut sum, mut n) = (x, x, 0.0);
        while term.abs() > 1e-17 {
            n += 1.0;
            term *= -x * x / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }
}
