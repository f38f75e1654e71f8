//! Winograd F(4×4, 3×3): stride-1, padding-1 3×3 convolutions with 4× fewer multiplies.
//!
//! Each 4×4 block of output pixels is computed from its 6×6 input patch as
//! `Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A`: the elementwise products become 36 independent
//! matrix products (tiles × cin) · (cin × cout), one per position of the 6×6 transformed
//! tile, so 36 products replace the 9 × 16 = 144 a direct convolution spends per block.
//! The weights are transformed once (`WinogradWeights::new`, 4× the 3×3 weight's size,
//! so callers keep it for convolutions on large maps where it pays); inputs and outputs
//! are transformed per tile, vectorised over channels. Accuracy: F(4×4) adds rounding of
//! order 1e-6 relative in f32 (the transforms' coefficients reach 8 and 1/24), checked in
//! the tests below and end to end by the parity fixtures.

use rayon::prelude::*;

use super::conv2d::{Conv2dShape, Epilogue};
use super::gemm::{matmul, Accumulate, MatRef};
use super::simd::vectorised;

/// G: the 6×3 weight transform.
const G: [[f32; 3]; 6] = [
    [1.0 / 4.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// 3×3 convolution weights in the Winograd domain: 36 row-major `cin × cout` matrices.
#[derive(Debug, Clone)]
pub struct WinogradWeights {
    cin: usize,
    cout: usize,
    u: std::sync::Arc<Vec<f32>>,
}

impl WinogradWeights {
    /// Transforms candle's `[cout, cin, 3, 3]` weights: `U = G g Gᵀ` per channel pair.
    pub fn new(weight: &[f32], cout: usize, cin: usize) -> Self {
        assert_eq!(weight.len(), cout * cin * 9);
        let mut u = vec![0f32; 36 * cin * cout];
        // One task per input channel: it owns row `ci` of each of the 36 matrices (disjoint
        // from every other task's, so they write through one shared pointer, and the fresh
        // pages are faulted in on every core), and forms each channel pair's whole 6×6
        // tile at once (in f64: the coefficients reach 1/24, and this runs once per layer).
        let dst = SharedMut(u.as_mut_ptr());
        (0..cin).into_par_iter().for_each(|ci| {
            let dst = &dst;
            for co in 0..cout {
                let g = &weight[(co * cin + ci) * 9..][..9];
                let mut gg = [[0f64; 3]; 6];
                for (i, gi) in G.iter().enumerate() {
                    for b in 0..3 {
                        gg[i][b] = (0..3).map(|a| gi[a] as f64 * g[a * 3 + b] as f64).sum();
                    }
                }
                for i in 0..6 {
                    for (j, gj) in G.iter().enumerate() {
                        let v: f64 = (0..3).map(|b| gg[i][b] * gj[b] as f64).sum();
                        let at = (i * 6 + j) * cin * cout + ci * cout + co;
                        // SAFETY: `at` < 36·cin·cout, and only this task writes row `ci`.
                        unsafe { *dst.0.add(at) = v as f32 };
                    }
                }
            }
        });
        Self {
            cin,
            cout,
            u: std::sync::Arc::new(u),
        }
    }

    /// Weights already in the Winograd domain (`values`, as [`WinogradWeights::values`]
    /// gives them), or `None` if they are not `36·cin·cout` long.
    pub fn from_values(values: std::sync::Arc<Vec<f32>>, cout: usize, cin: usize) -> Option<Self> {
        (values.len() == 36 * cin * cout).then_some(Self {
            cin,
            cout,
            u: values,
        })
    }

    /// The transformed weights (to keep them, see `inference::mapped::kernel_layouts`).
    pub fn values(&self) -> &std::sync::Arc<Vec<f32>> {
        &self.u
    }

    /// Bytes held (for deciding whether a layer is worth it).
    pub fn bytes(&self) -> usize {
        self.u.len() * 4
    }
}

/// `out[0..6] = Bᵀ · d[0..6]`, elementwise over channels.
#[inline(always)]
fn input_rows(d: [&[f32]; 6], out: &mut [Vec<f32>; 6]) {
    let c = d[0].len();
    for k in 0..c {
        let (d0, d1, d2, d3, d4, d5) = (d[0][k], d[1][k], d[2][k], d[3][k], d[4][k], d[5][k]);
        out[0][k] = 4.0 * d0 - 5.0 * d2 + d4;
        out[1][k] = -4.0 * d1 - 4.0 * d2 + d3 + d4;
        out[2][k] = 4.0 * d1 - 4.0 * d2 - d3 + d4;
        out[3][k] = -2.0 * d1 - d2 + 2.0 * d3 + d4;
        out[4][k] = 2.0 * d1 - d2 - 2.0 * d3 + d4;
        out[5][k] = 4.0 * d1 - 5.0 * d3 + d5;
    }
}

/// `out[0..4] = Aᵀ · m[0..6]`, elementwise over channels.
#[inline(always)]
fn output_rows(m: [&[f32]; 6], out: &mut [Vec<f32>; 4]) {
    let c = m[0].len();
    for k in 0..c {
        let (m0, m1, m2, m3, m4, m5) = (m[0][k], m[1][k], m[2][k], m[3][k], m[4][k], m[5][k]);
        out[0][k] = m0 + m1 + m2 + m3 + m4;
        out[1][k] = m1 - m2 + 2.0 * (m3 - m4);
        out[2][k] = m1 + m2 + 4.0 * (m3 + m4);
        out[3][k] = m1 - m2 + 8.0 * (m3 - m4) + m5;
    }
}

/// Convolves NHWC `x` with 3×3 weights (stride 1, padding 1) into NHWC `out`.
pub fn conv3x3_winograd(
    x: &[f32],
    shape: Conv2dShape,
    weights: &WinogradWeights,
    epilogue: Epilogue,
    out: &mut [f32],
) {
    let s = shape;
    assert!(
        s.kernel == 3 && s.stride == 1 && s.padding == 1,
        "Winograd needs a same-size 3x3"
    );
    let (cin, cout) = (s.in_channels, s.out_channels);
    assert_eq!((weights.cin, weights.cout), (cin, cout));
    assert_eq!(x.len(), s.batch * s.height * s.width * cin);
    assert_eq!(out.len(), s.output_len());
    let (th, tw) = (s.height.div_ceil(4), s.width.div_ceil(4));
    let tiles = s.batch * th * tw;
    // Tiles per task: its transformed inputs and products (36 × tiles × channels each)
    // should stay within a core's cache.
    let per_task = (4_000_000 / (36 * 4 * (cin + cout))).clamp(8, 96);
    let tasks = tiles.div_ceil(per_task);
    // Each task writes whole 4×4 blocks, scattered over rows of `out`; the blocks of
    // different tasks never overlap, so the raw pointer below is shared safely.
    let out_ptr = SharedMut(out.as_mut_ptr());
    let out_len = out.len();
    (0..tasks).into_par_iter().for_each(|task| {
        let first = task * per_task;
        let n = per_task.min(tiles - first);
        let mut v = vec![0f32; 36 * n * cin];
        let mut m = vec![0f32; 36 * n * cout];
        transform_inputs(x, &s, (th, tw), first, n, &mut v);
        for xi in 0..36 {
            matmul(
                &mut m[xi * n * cout..(xi + 1) * n * cout],
                cout,
                MatRef::row_major(&v[xi * n * cin..(xi + 1) * n * cin], n, cin),
                MatRef::row_major(
                    &weights.u[xi * cin * cout..(xi + 1) * cin * cout],
                    cin,
                    cout,
                ),
                Accumulate::Overwrite,
                1,
            );
        }
        transform_outputs(&m, &s, (th, tw), first, n, &epilogue, (out_ptr, out_len));
    });
}

#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: tasks write disjoint elements (see conv3x3_winograd).
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    fn get(self) -> *mut f32 {
        self.0
    }
}

vectorised! {
/// `v[ξ][t][c]` = (Bᵀ d B)[ξ] for tiles `first..first + n`.
fn transform_inputs(
    x: &[f32],
    s: &Conv2dShape,
    tiles: (usize, usize),
    first: usize,
    n: usize,
    v: &mut [f32],
) {
    let (th, tw) = tiles;
    let cin = s.in_channels;
    let zeros = vec![0f32; cin];
    let mut cols: [Vec<f32>; 6] = std::array::from_fn(|_| vec![0f32; cin]);
    let mut rows: [Vec<f32>; 6] = std::array::from_fn(|_| vec![0f32; cin]);
    // tmp[i][j]: the column transform of the patch, i = transformed row, j = patch column.
    let mut tmp: Vec<Vec<f32>> = vec![vec![0f32; cin]; 36];
    for t in 0..n {
        let tile = first + t;
        let (b, rest) = (tile / (th * tw), tile % (th * tw));
        let (y0, x0) = ((rest / tw) * 4, (rest % tw) * 4);
        let pixel = |py: usize, px: usize| -> &[f32] {
            // Patch (py, px) is input (y0 + py - 1, x0 + px - 1).
            let (iy, ix) = ((y0 + py) as isize - 1, (x0 + px) as isize - 1);
            if iy < 0 || ix < 0 || iy >= s.height as isize || ix >= s.width as isize {
                &zeros
            } else {
                let o = ((b * s.height + iy as usize) * s.width + ix as usize) * cin;
                &x[o..o + cin]
            }
        };
        for j in 0..6 {
            input_rows(
                [pixel(0, j), pixel(1, j), pixel(2, j), pixel(3, j), pixel(4, j), pixel(5, j)],
                &mut cols,
            );
            for i in 0..6 {
                tmp[i * 6 + j].copy_from_slice(&cols[i]);
            }
        }
        for i in 0..6 {
            let r = &tmp[i * 6..i * 6 + 6];
            input_rows([&r[0], &r[1], &r[2], &r[3], &r[4], &r[5]], &mut rows);
            for j in 0..6 {
                let xi = i * 6 + j;
                v[(xi * n + t) * cin..(xi * n + t + 1) * cin].copy_from_slice(&rows[j]);
            }
        }
    }
}
}

vectorised! {
/// Output blocks from `m[ξ][t][c]`, with the epilogue, into `out`.
fn transform_outputs(
    m: &[f32],
    s: &Conv2dShape,
    tiles: (usize, usize),
    first: usize,
    n: usize,
    e: &Epilogue,
    dst: (SharedMut, usize),
) {
    let ((th, tw), (out, out_len)) = (tiles, dst);
    let cout = s.out_channels;
    let mut cols: [Vec<f32>; 4] = std::array::from_fn(|_| vec![0f32; cout]);
    let mut rows: [Vec<f32>; 4] = std::array::from_fn(|_| vec![0f32; cout]);
    let mut tmp: Vec<Vec<f32>> = vec![vec![0f32; cout]; 24];
    let at = |xi: usize, t: usize| &m[(xi * n + t) * cout..(xi * n + t + 1) * cout];
    let pixels = s.height * s.width;
    for t in 0..n {
        let tile = first + t;
        let (b, rest) = (tile / (th * tw), tile % (th * tw));
        let (y0, x0) = ((rest / tw) * 4, (rest % tw) * 4);
        for j in 0..6 {
            output_rows(
                [at(j, t), at(6 + j, t), at(12 + j, t), at(18 + j, t), at(24 + j, t), at(30 + j, t)],
                &mut cols,
            );
            for i in 0..4 {
                tmp[i * 6 + j].copy_from_slice(&cols[i]);
            }
        }
        for i in 0..4 {
            let y = y0 + i;
            let r = &tmp[i * 6..i * 6 + 6];
            output_rows([&r[0], &r[1], &r[2], &r[3], &r[4], &r[5]], &mut rows);
            if y >= s.height {
                continue;
            }
            for (j, row) in rows.iter().enumerate() {
                let xo = x0 + j;
                if xo >= s.width {
                    continue;
                }
                let p = (b * s.height + y) * s.width + xo;
                assert!((p + 1) * cout <= out_len);
                // SAFETY: in bounds (checked), and pixel p belongs to this task's tile only.
                let dst = unsafe { std::slice::from_raw_parts_mut(out.get().add(p * cout), cout) };
                dst.copy_from_slice(row);
                e.apply(dst, p, pixels);
            }
        }
    }
}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inference::kernels::conv2d::tests::{naive, values};

    #[test]
    fn matches_the_definition_with_ragged_edges_and_epilogue() {
        for (batch, height, width, cin, cout) in
            [(2, 9, 7, 5, 6), (1, 16, 12, 8, 3), (1, 3, 5, 4, 4)]
        {
            let s = Conv2dShape {
                batch,
                height,
                width,
                in_channels: cin,
                out_channels: cout,
                kernel: 3,
                stride: 1,
                padding: 1,
            };
            let x = values(batch * height * width * cin, 1.0);
            let w = values(cout * cin * 9, 2.0);
            let bias = values(cout, 3.0);
            let batch_bias = values(batch * cout, 4.0);
            let residual = values(s.output_len(), 5.0);
            let e = Epilogue {
                bias: Some(&bias),
                batch_bias: Some(&batch_bias),
                residual: Some(&residual),
                scale: Some(0.5),
            };
            let want = naive(&x, s, &w, e);
            let weights = WinogradWeights::new(&w, cout, cin);
            assert_eq!(weights.bytes(), 36 * cin * cout * 4);
            let mut out = vec![f32::NAN; s.output_len()];
            conv3x3_winograd(&x, s, &weights, e, &mut out);
            for (i, (a, b)) in out.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() < 1e-4 * (1.0 + b.abs()),
                    "{s:?} at {i}: {a} vs {b}"
                );
            }
        }
    }
}
