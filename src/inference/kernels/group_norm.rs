//! GroupNorm over channels-last activations, with the SiLU that follows it fused.
//!
//! candle's GroupNorm is about ten tensor ops (reshapes, means, broadcasts) on NCHW;
//! here it is three passes over each image: per-channel sums, per-channel squared
//! deviations from the group mean (two passes, in f64, so large maps lose no precision),
//! and one pass that applies `x · a[c] + b[c]` (and SiLU) with the group statistics
//! folded into per-channel `a` and `b`.

use rayon::prelude::*;

use super::exp::silu;
use super::simd::vectorised;

/// Geometry: `batch` images of `pixels` rows of `channels` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupNormShape {
    pub batch: usize,
    pub pixels: usize,
    pub channels: usize,
    pub groups: usize,
}

/// Pixels per task of the parallel passes.
const CHUNK: usize = 256;

/// `out = silu?(groupnorm(x) · gamma + beta)`.
#[allow(clippy::too_many_arguments)]
pub fn group_norm_nhwc(
    x: &[f32],
    shape: GroupNormShape,
    gamma: &[f32],
    beta: &[f32],
    eps: f64,
    fuse_silu: bool,
    out: &mut [f32],
) {
    let GroupNormShape {
        batch,
        pixels,
        channels: c,
        groups,
    } = shape;
    assert!(groups > 0 && c % groups == 0, "channels divide into groups");
    assert_eq!(x.len(), batch * pixels * c);
    assert_eq!(out.len(), x.len());
    assert_eq!((gamma.len(), beta.len()), (c, c));
    let per_group = c / groups;
    let count = (pixels * per_group) as f64;
    for b in 0..batch {
        let image = &x[b * pixels * c..(b + 1) * pixels * c];
        let sums = channel_sums(image, c, None);
        let group_mean: Vec<f64> = sums
            .chunks(per_group)
            .map(|g| g.iter().sum::<f64>() / count)
            .collect();
        let channel_mean: Vec<f64> = (0..c).map(|ch| group_mean[ch / per_group]).collect();
        let squares = channel_sums(image, c, Some(&channel_mean));
        let (mut scale, mut shift) = (vec![0f32; c], vec![0f32; c]);
        for g in 0..groups {
            let var = squares[g * per_group..(g + 1) * per_group]
                .iter()
                .sum::<f64>()
                / count;
            let rstd = 1.0 / (var + eps).sqrt();
            for ch in g * per_group..(g + 1) * per_group {
                let a = rstd * gamma[ch] as f64;
                scale[ch] = a as f32;
                shift[ch] = (beta[ch] as f64 - group_mean[g] * a) as f32;
            }
        }
        let dst = &mut out[b * pixels * c..(b + 1) * pixels * c];
        dst.par_chunks_mut(CHUNK * c)
            .zip(image.par_chunks(CHUNK * c))
            .for_each(|(dst, src)| {
                affine_rows(dst, src, &scale, &shift, fuse_silu);
            });
    }
}

/// Per-channel sums of `x` (or of `(x - mean[c])²` when `mean` is given), in f64.
fn channel_sums(image: &[f32], c: usize, mean: Option<&[f64]>) -> Vec<f64> {
    image
        .par_chunks(CHUNK * c)
        .map(|rows| sums_of_rows(rows, c, mean))
        .reduce(
            || vec![0f64; c],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            },
        )
}

vectorised! {
    /// `dst = silu?(src · scale[c] + shift[c])` over rows of `scale.len()` channels.
    fn affine_rows(dst: &mut [f32], src: &[f32], scale: &[f32], shift: &[f32], fuse_silu: bool) {
        let c = scale.len();
        for (d, s) in dst.chunks_exact_mut(c).zip(src.chunks_exact(c)) {
            let affine = d.iter_mut().zip(s).zip(scale.iter().zip(shift));
            if fuse_silu {
                affine.for_each(|((d, x), (a, b))| *d = silu(x * a + b));
            } else {
                affine.for_each(|((d, x), (a, b))| *d = x * a + b);
            }
        }
    }
}

vectorised! {
    /// Per-channel sums over rows of `c` values (of squared deviations when `mean` is given).
    fn sums_of_rows(rows: &[f32], c: usize, mean: Option<&[f64]>) -> Vec<f64> {
        let mut acc = vec![0f64; c];
        for row in rows.chunks_exact(c) {
            match mean {
                None => acc.iter_mut().zip(row).for_each(|(a, v)| *a += *v as f64),
                Some(mean) => acc.iter_mut().zip(row).zip(mean).for_each(|((a, v), m)| {
                    let d = *v as f64 - m;
                    *a += d * d;
                }),
            }
        }
        acc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_definition() {
        let shape = GroupNormShape {
            batch: 2,
            pixels: 600,
            channels: 12,
            groups: 4,
        };
        let n = shape.batch * shape.pixels * shape.channels;
        // An offset far from zero checks the two-pass variance.
        let x: Vec<f32> = (0..n)
            .map(|i| 100.0 + (i as f32 * 0.37).sin() * 3.0)
            .collect();
        let gamma: Vec<f32> = (0..12).map(|i| 1.0 + i as f32 * 0.1).collect();
        let beta: Vec<f32> = (0..12).map(|i| i as f32 * -0.2).collect();
        for fuse in [false, true] {
            let mut out = vec![0f32; n];
            group_norm_nhwc(&x, shape, &gamma, &beta, 1e-5, fuse, &mut out);
            for b in 0..2 {
                for g in 0..4 {
                    let idx = |p: usize, ch: usize| (b * 600 + p) * 12 + ch;
                    let vals: Vec<f64> = (0..600)
                        .flat_map(|p| (g * 3..g * 3 + 3).map(move |ch| (p, ch)))
                        .map(|(p, ch)| x[idx(p, ch)] as f64)
                        .collect();
                    let mean = vals.iter().sum::<f64>() / vals.len() as f64;
                    let var =
                        vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / vals.len() as f64;
                    for p in [0, 17, 599] {
                        for ch in g * 3..g * 3 + 3 {
                            let mut want = (x[idx(p, ch)] as f64 - mean) / (var + 1e-5).sqrt()
                                * gamma[ch] as f64
                                + beta[ch] as f64;
                            if fuse {
                                want /= 1.0 + (-want).exp();
                            }
                            let got = out[idx(p, ch)] as f64;
                            assert!((got - want).abs() < 1e-4, "{b} {g} {p} {ch}: {got} {want}");
                        }
                    }
                }
            }
        }
    }
}
