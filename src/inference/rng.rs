//! Random numbers that reproduce PyTorch's CPU generator.
//!
//! `torch.Generator("cpu").manual_seed(s)` is a Mersenne Twister (MT19937), and
//! `torch.randn` on a float32 tensor of 16 or more elements turns its draws into normals
//! with a 16-wide Box–Muller. Doing the same here means a seed gives the same starting
//! latents as diffusers on CPU, so any image can be reproduced across implementations.

use std::f64::consts::PI;

const N: usize = 624;
const M: usize = 397;

/// PyTorch's CPU generator: MT19937 seeded like `manual_seed`.
#[derive(Clone)]
pub struct TorchRng {
    state: [u32; N],
    index: usize,
}

impl TorchRng {
    /// Same as `torch.Generator("cpu").manual_seed(seed)`.
    pub fn new(seed: u64) -> Self {
        let mut state = [0u32; N];
        state[0] = (seed & 0xffff_ffff) as u32;
        for j in 1..N {
            let prev = state[j - 1];
            state[j] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(j as u32);
        }
        Self { state, index: N }
    }

    fn twist(&mut self) {
        for i in 0..N {
            let y = (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % N] & 0x7fff_ffff);
            let mut next = self.state[(i + M) % N] ^ (y >> 1);
            if y & 1 != 0 {
                next ^= 0x9908_b0df;
            }
            self.state[i] = next;
        }
        self.index = 0;
    }

    /// The next raw 32-bit output.
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// A float32 uniform in [0, 1) built from 24 bits, as `torch.rand` does.
    pub fn uniform_f32(&mut self) -> f32 {
        ((self.next_u32() & 0x00ff_ffff) as f32) * (1.0 / 16_777_216.0)
    }

    /// `n` standard normals as `torch.randn(n)` gives them for float32 and `n >= 16`.
    ///
    /// Smaller draws take a different (double precision) path in PyTorch that no
    /// latent or noise tensor of a real model ever uses, so they are refused.
    pub fn randn(&mut self, n: usize) -> Vec<f32> {
        assert!(n >= 16, "torch-compatible normals need at least 16 values");
        let mut data: Vec<f32> = (0..n).map(|_| self.uniform_f32()).collect();
        let mut i = 0;
        while i + 16 <= n {
            box_muller_16(&mut data[i..i + 16]);
            i += 16;
        }
        if !n.is_multiple_of(16) {
            // PyTorch redraws the last 16 values from fresh uniforms.
            let tail = &mut data[n - 16..];
            for v in tail.iter_mut() {
                *v = self.uniform_f32();
            }
            box_muller_16(tail);
        }
        data
    }
}

fn box_muller_16(data: &mut [f32]) {
    for j in 0..8 {
        let u1 = 1.0 - data[j];
        let u2 = data[j + 8];
        let radius = (-2.0 * u1.ln()).sqrt();
        let theta = 2.0 * (PI as f32) * u2;
        data[j] = radius * theta.cos();
        data[j + 8] = radius * theta.sin();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_uniform_matches_torch_rand_with_seed_zero() {
        // torch.manual_seed(0); torch.rand(1) == 0.4962566 (MT19937's first output 2357136044).
        let mut rng = TorchRng::new(0);
        assert_eq!(rng.clone().next_u32(), 2_357_136_044);
        assert!((rng.uniform_f32() - 0.496_256_6).abs() < 1e-6);
    }

    #[test]
    fn randn_is_deterministic_and_roughly_standard() {
        let a = TorchRng::new(42).randn(4096);
        assert_eq!(a, TorchRng::new(42).randn(4096));
        assert_ne!(a, TorchRng::new(43).randn(4096));
        let mean = a.iter().sum::<f32>() / a.len() as f32;
        let var = a.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / a.len() as f32;
        assert!(mean.abs() < 0.1, "mean {mean}");
        assert!((var - 1.0).abs() < 0.1, "var {var}");
    }

    #[test]
    fn odd_lengths_redraw_the_tail() {
        let a = TorchRng::new(7).randn(20);
        let b = TorchRng::new(7).randn(32);
        assert_eq!(a[..4], b[..4]);
        assert_ne!(a[4..], b[4..20]);
    }
}
