//! A vectorisable `exp` and the activations built on it (SiLU, exact GELU).
//!
//! `f32::exp` is a libm call per element, which no compiler vectorises; softmax over
//! attention scores and SiLU after every GroupNorm spend most of their time there.
//! These are branch-free polynomials (a few ulp from libm) that vectorise inside
//! `simd::vectorised!`.

/// e^x for every finite x (about 1e-38 below -87.3, about 2e38 above 88.3).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so that n·ln2 is exact in the high part (Cody–Waite).
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding and subtracting 1.5·2^23 rounds to the nearest integer without a branch.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.3);
    // n = round(x / ln 2), as a float and, read from the low mantissa bits of the
    // rounding sum, as an integer (no float-to-int conversion, which does not vectorise).
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let n_int = shifted.to_bits() as i32 - ROUND.to_bits() as i32;
    let r = x - n * LN2_HI - n * LN2_LO;
    // Taylor series of e^r to r^7 on |r| ≤ ln2/2: relative error below 3e-8.
    let p = 1.0 / 5040.0;
    let p = p * r + 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    let scale = f32::from_bits(((n_int + 127) as u32) << 23);
    p * scale
}

/// x · sigmoid(x).
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// The error function, Abramowitz & Stegun 7.1.26 refined (max error 1.5e-7).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let y = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let v = 1.0 - y * exp(-a * a);
    v.copysign(x)
}

/// GELU as diffusers computes it: x · Φ(x) with the exact error function.
#[inline(always)]
pub fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

super::simd::vectorised! {
    /// Applies SiLU in place.
    pub fn silu_in_place(xs: &mut [f32]) {
        for x in xs.iter_mut() {
            *x = silu(*x);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_a_few_ulp_of_libm() {
        let mut worst = 0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let rel = ((exp(x) - x.exp()) / x.exp()).abs();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 5e-7, "relative error {worst}");
        assert_eq!(exp(-200.0), 0.0f32.max(exp(-200.0)));
        assert!(exp(-200.0) < 1e-37);
        assert!(exp(200.0).is_finite());
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn silu_and_gelu_match_their_definitions() {
        for i in -400..400 {
            let x = i as f32 / 37.0;
            let silu_ref = x / (1.0 + (-x).exp());
            assert!(
                (silu(x) - silu_ref).abs() <= 1e-6 * (1.0 + silu_ref.abs()),
                "silu({x})"
            );
            let gelu_ref = 0.5 * x as f64 * (1.0 + libm_erf(x as f64 / std::f64::consts::SQRT_2));
            assert!(
                (gelu_erf(x) as f64 - gelu_ref).abs() <= 1e-6 * (1.0 + gelu_ref.abs()),
                "gelu({x}) = {} vs {gelu_ref}",
                gelu_erf(x)
            );
        }
        let mut v = vec![-3.0, 0.0, 2.0];
        silu_in_place(&mut v);
        assert!((v[2] - silu(2.0)).abs() < 1e-7 && v[1] == 0.0);
    }

    /// erf by its Taylor series in f64, the reference for the approximation above.
    fn libm_erf(x: f64) -> f64 {
        if x.abs() > 4.0 {
            return x.signum();
        }
        let (mut term, mut sum, mut n) = (x, x, 0.0);
        while term.abs() > 1e-17 {
            n += 1.0;
            term *= -x * x / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }
}
