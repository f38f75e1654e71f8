//! Scaled dot-product attention, tiled, with an online softmax.
//!
//! The score matrix of a 64×64 latent's self-attention is 4096² per head (1 GiB at CFG
//! batch 2 with 8 heads); materialising it and running softmax over it in separate
//! passes is what made attention half of a step. Here each task takes one head and a
//! block of queries, walks the keys a block at a time, and keeps a running maximum and
//! sum per query (the "online softmax" of FlashAttention), so only a
//! `QUERY_BLOCK × KEY_BLOCK` tile of scores ever exists, and it stays in cache.
//! Queries and values are read in the token-major layout the projections produce
//! (`[batch, tokens, heads · head_dim]`), heads selected through strides. Keys are
//! transposed once per call into `[batch, head, head_dim, keys]`: `q kᵀ` then reads them
//! with unit stride along the keys, which `gemm` packs with vector copies; through
//! strides it packed every key block one scalar at a time for every query block.

use rayon::prelude::*;

use super::exp::exp;
use super::gemm::{matmul, Accumulate, MatRef};
use super::simd::vectorised;

/// Geometry: `batch × queries` rows of `heads × head_dim` attend over `keys` rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    pub batch: usize,
    pub queries: usize,
    pub keys: usize,
    pub heads: usize,
    pub head_dim: usize,
}

// A 256 × 1024 tile of scores (1 MiB) stays in a core's 2 MiB L2 here, and the larger
// the tile, the fewer times each block of queries and keys is packed for `gemm`: against
// 64 × 512, the 512² step takes 4 % less CPU time and the 768² step 7 % (`sdq bench unet`).
const QUERY_BLOCK: usize = 256;
const KEY_BLOCK: usize = 1024;

/// `out = softmax(scale · q kᵀ) v` per head; all tensors `[batch, tokens, heads · head_dim]`.
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: AttentionShape,
    scale: f32,
    out: &mut [f32],
) {
    let AttentionShape {
        batch,
        queries,
        keys,
        heads,
        head_dim: d,
    } = shape;
    let width = heads * d;
    assert_eq!(q.len(), batch * queries * width);
    assert_eq!(
        (k.len(), v.len()),
        (batch * keys * width, batch * keys * width)
    );
    assert_eq!(out.len(), q.len());
    if q.is_empty() {
        return;
    }
    let kt = keys_by_head(k, shape);
    let q_blocks = queries.div_ceil(QUERY_BLOCK);
    // Every (image, query block) writes its own rows of `out`; heads are columns of it.
    let tasks: Vec<(usize, usize, usize)> = (0..batch)
        .flat_map(|b| (0..q_blocks).flat_map(move |qb| (0..heads).map(move |h| (b, qb, h))))
        .collect();
    let results: Vec<(usize, usize, usize, Vec<f32>)> = tasks
        .into_par_iter()
        .map(|(b, qb, h)| {
            let q0 = qb * QUERY_BLOCK;
            let rows = QUERY_BLOCK.min(queries - q0);
            let acc = block(q, &kt, v, shape, scale, (b, q0, rows, h));
            (b, q0, h, acc)
        })
        .collect();
    for (b, q0, h, acc) in results {
        for (i, row) in acc.chunks_exact(d).enumerate() {
            let o = (b * queries + q0 + i) * width + h * d;
            out[o..o + d].copy_from_slice(row);
        }
    }
}

/// `k` (`[batch, keys, heads · d]`) as `[batch, head, d, keys]`.
fn keys_by_head(k: &[f32], shape: AttentionShape) -> Vec<f32> {
    let AttentionShape {
        keys,
        heads,
        head_dim: d,
        ..
    } = shape;
    let width = heads * d;
    let mut kt = vec![0f32; k.len()];
    // One task per (image, head): a d × keys matrix gathered from d columns of k.
    kt.par_chunks_mut(d * keys)
        .enumerate()
        .for_each(|(bh, dst)| {
            let (b, h) = (bh / heads, bh % heads);
            for j in 0..keys {
                let src = &k[(b * keys + j) * width + h * d..][..d];
                for (c, v) in src.iter().enumerate() {
                    dst[c * keys + j] = *v;
                }
            }
        });
    kt
}

/// One head of one query block: returns `rows × head_dim` normalised outputs; `kt` is
/// the keys as `keys_by_head` lays them out.
fn block(
    q: &[f32],
    kt: &[f32],
    v: &[f32],
    shape: AttentionShape,
    scale: f32,
    (b, q0, rows, h): (usize, usize, usize, usize),
) -> Vec<f32> {
    let AttentionShape {
        queries,
        keys,
        heads,
        head_dim: d,
        ..
    } = shape;
    let width = heads * d;
    let q_view = MatRef {
        data: q,
        offset: (b * queries + q0) * width + h * d,
        rows,
        cols: d,
        row_stride: width,
        col_stride: 1,
    };
    let mut acc = vec![0f32; rows * d];
    let mut max = vec![f32::NEG_INFINITY; rows];
    let mut sum = vec![0f32; rows];
    let mut scores = vec![0f32; rows * KEY_BLOCK.min(keys)];
    for k0 in (0..keys).step_by(KEY_BLOCK) {
        let n = KEY_BLOCK.min(keys - k0);
        let scores = &mut scores[..rows * n];
        // scores = q · kᵀ, kᵀ being this head's d × keys matrix.
        let k_view = MatRef {
            data: kt,
            offset: (b * heads + h) * d * keys + k0,
            rows: d,
            cols: n,
            row_stride: keys,
            col_stride: 1,
        };
        matmul(scores, n, q_view, k_view, Accumulate::Overwrite, 1);
        softmax_block(scores, n, scale, &mut max, &mut sum, &mut acc, d);
        let v_view = MatRef {
            data: v,
            offset: (b * keys + k0) * width + h * d,
            rows: n,
            cols: d,
            row_stride: width,
            col_stride: 1,
        };
        matmul(
            &mut acc,
            d,
            MatRef::row_major(scores, rows, n),
            v_view,
            Accumulate::Add,
            1,
        );
    }
    for (row, s) in acc.chunks_exact_mut(d).zip(&sum) {
        let inv = 1.0 / s;
        row.iter_mut().for_each(|a| *a *= inv);
    }
    acc
}

vectorised! {
    /// The online-softmax update for one block of `n` keys: exponentiates `scores` (rows
    /// × n) in place against the running maxima, and rescales the running sums and
    /// accumulated outputs (rows × d) where a maximum grew.
    fn softmax_block(
        scores: &mut [f32],
        n: usize,
        scale: f32,
        max: &mut [f32],
        sum: &mut [f32],
        acc: &mut [f32],
        d: usize,
    ) {
        for i in 0..max.len() {
            let row = &mut scores[i * n..(i + 1) * n];
            let new_max = max[i].max(row_max(row) * scale);
            // Earlier blocks were exponentiated against a smaller maximum: rescale.
            let correction = exp(max[i] - new_max);
            sum[i] = sum[i] * correction + exp_in_place(row, scale, new_max);
            max[i] = new_max;
            if correction != 1.0 {
                acc[i * d..(i + 1) * d]
                    .iter_mut()
                    .for_each(|a| *a *= correction);
            }
        }
    }
}

/// Lanes of the reductions below: independent accumulators the compiler keeps in one
/// vector register (a single running value would serialise the loop).
const LANES: usize = 16;

/// The largest value of `row`.
#[inline(always)]
fn row_max(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (l, v) in lanes.iter_mut().zip(chunk) {
            *l = l.max(*v);
        }
    }
    tail.iter()
        .chain(lanes.iter())
        .fold(f32::NEG_INFINITY, |m, v| m.max(*v))
}

/// `row[j] = exp(row[j] · scale - max)`; returns the sum of the new values.
#[inline(always)]
fn exp_in_place(row: &mut [f32], scale: f32, max: f32) -> f32 {
    let mut lanes = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (l, v) in lanes.iter_mut().zip(chunk.iter_mut()) {
            *v = exp(*v * scale - max);
            *l += *v;
        }
    }
    let mut total: f32 = lanes.iter().sum();
    for v in chunks.into_remainder() {
        *v = exp(*v * scale - max);
        total += *v;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Full score matrix, f64 softmax.
    fn naive(q: &[f32], k: &[f32], v: &[f32], s: AttentionShape, scale: f32) -> Vec<f32> {
        let w = s.heads * s.head_dim;
        let mut out = vec![0f32; q.len()];
        for b in 0..s.batch {
            for h in 0..s.heads {
                for i in 0..s.queries {
                    let qi = &q[(b * s.queries + i) * w + h * s.head_dim..][..s.head_dim];
                    let scores: Vec<f64> = (0..s.keys)
                        .map(|j| {
                            let kj = &k[(b * s.keys + j) * w + h * s.head_dim..][..s.head_dim];
                            qi.iter().zip(kj).map(|(a, b)| (a * b) as f64).sum::<f64>()
                                * scale as f64
                        })
                        .collect();
                    let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for dd in 0..s.head_dim {
                        let o: f64 = (0..s.keys)
                            .map(|j| e[j] * v[(b * s.keys + j) * w + h * s.head_dim + dd] as f64)
                            .sum();
                        out[(b * s.queries + i) * w + h * s.head_dim + dd] = (o / z) as f32;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn matches_full_softmax_across_block_boundaries() {
        // Self-attention over more keys than one block and more queries than one block,
        // and cross-attention over 77 keys.
        for (queries, keys) in [(300, 1100), (257, 77), (70, 77), (1, 1)] {
            let shape = AttentionShape {
                batch: 2,
                queries,
                keys,
                heads: 3,
                head_dim: 5,
            };
            let w = 15;
            let gen = |n: usize, seed: f32| -> Vec<f32> {
                (0..n)
                    .map(|i| ((i as f32 * 0.731 + seed).sin()) * 2.0)
                    .collect()
            };
            let q = gen(2 * queries * w, 0.3);
            let k = gen(2 * keys * w, 1.7);
            let v = gen(2 * keys * w, 2.9);
            let want = naive(&q, &k, &v, shape, 0.7);
            let mut out = vec![f32::NAN; q.len()];
            attention(&q, &k, &v, shape, 0.7, &mut out);
            for (i, (a, b)) in out.iter().zip(&want).enumerate() {
                assert!((a - b).abs() < 2e-5, "{queries}x{keys} at {i}: {a} vs {b}");
            }
        }
    }
}
