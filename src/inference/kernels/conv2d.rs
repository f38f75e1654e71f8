//! 2-D convolution on channels-last (NHWC) activations as matrix products.
//!
//! A 1×1 convolution is one product, `x (pixels × cin) · Wᵀ`, with candle's
//! `[cout, cin, 1, 1]` weight read in place as the right operand. A k×k convolution
//! gathers, for a chunk of output rows (one per output pixel, every image of the batch
//! folded into the same rows), each row's receptive field in the weight's own order
//! (`cin`-major, then the k·k taps), so the product is one `(rows × cin·k·k) ·
//! (cin·k·k × cout)` per chunk. The right operand is the weight either transposed once
//! into that row-major matrix ([`ConvWeights::Kn`], what `gemm` reads fastest: unit
//! stride along `cout`) or read in place through strides ([`ConvWeights::Oihw`], which
//! `gemm` packs one scalar at a time on every call). One product per chunk also lets the products run over all rows at once on small maps,
//! where splitting rows across threads would make each thread pack the whole weight.
//! Bias (per channel, or per image and channel: the time embedding of a resnet), a
//! residual and an output scale are applied in the same pass over the chunk while it is
//! in cache.

use rayon::prelude::*;

use super::gemm::{matmul, Accumulate, MatRef};

/// Geometry of one convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dShape {
    pub batch: usize,
    pub height: usize,
    pub width: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl Conv2dShape {
    /// Output height and width.
    pub fn output_hw(&self) -> (usize, usize) {
        let out = |n: usize| (n + 2 * self.padding - self.kernel) / self.stride + 1;
        (out(self.height), out(self.width))
    }

    /// Elements of the output tensor.
    pub fn output_len(&self) -> usize {
        let (oh, ow) = self.output_hw();
        self.batch * oh * ow * self.out_channels
    }
}

/// What is added to the products before they are stored: `(acc + bias + residual) · scale`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Epilogue<'a> {
    /// One value per output channel.
    pub bias: Option<&'a [f32]>,
    /// One value per image and output channel (`[batch, cout]`).
    pub batch_bias: Option<&'a [f32]>,
    /// A tensor of the output's shape (NHWC).
    pub residual: Option<&'a [f32]>,
    /// Multiplies the sum; 1 when `None`.
    pub scale: Option<f32>,
}

/// A convolution's weight, as the kernel reads it.
#[derive(Debug, Clone, Copy)]
pub enum ConvWeights<'a> {
    /// candle's `[cout, cin, k, k]`.
    Oihw(&'a [f32]),
    /// The same transposed: a row-major `(cin·k·k) × cout` matrix (`gemm::transpose`).
    Kn(&'a [f32]),
}

impl<'a> ConvWeights<'a> {
    fn data(&self) -> &'a [f32] {
        match self {
            ConvWeights::Oihw(w) | ConvWeights::Kn(w) => w,
        }
    }

    /// The weight as a `depth × cout` matrix.
    fn matrix(&self, depth: usize, cout: usize) -> MatRef<'a> {
        match *self {
            ConvWeights::Oihw(data) => MatRef {
                data,
                offset: 0,
                rows: depth,
                cols: cout,
                row_stride: 1,
                col_stride: depth,
            },
            ConvWeights::Kn(data) => MatRef::row_major(data, depth, cout),
        }
    }
}

/// Bytes of gathered input a task may hold: the products stream their left operand
/// from this buffer, so it need not fit in cache, only stay small next to the model.
const MAX_GATHER_BYTES: usize = 8 << 20;
/// Fewer rows than this per product and the weight's packing outweighs the products.
const MIN_CHUNK_ROWS: usize = 256;

/// Convolves `x` (NHWC) with `weight` into `out` (NHWC).
pub fn conv2d_nhwc(
    x: &[f32],
    shape: Conv2dShape,
    weight: ConvWeights,
    epilogue: Epilogue,
    out: &mut [f32],
    threads: usize,
) {
    let s = shape;
    let (oh, ow) = s.output_hw();
    let (cin, cout, k) = (s.in_channels, s.out_channels, s.kernel);
    assert_eq!(x.len(), s.batch * s.height * s.width * cin, "input size");
    assert_eq!(weight.data().len(), cout * cin * k * k, "weight size");
    assert_eq!(out.len(), s.output_len(), "output size");
    if let Some(b) = epilogue.bias {
        assert_eq!(b.len(), cout);
    }
    if let Some(b) = epilogue.batch_bias {
        assert_eq!(b.len(), s.batch * cout);
    }
    if let Some(r) = epilogue.residual {
        assert_eq!(r.len(), out.len());
    }
    let rows = s.batch * oh * ow;
    if rows == 0 || cout == 0 {
        return;
    }
    let threads = threads.max(1);
    let depth = cin * k * k;
    // The weight as the right operand: row (ci, ky, kx), column co.
    let rhs = weight.matrix(depth, cout);
    let pointwise = k == 1 && s.stride == 1 && s.padding == 0;
    // Rows per task: one task per thread when each gets enough rows, else one task whose
    // products use every thread; never more gathered input than MAX_GATHER_BYTES.
    let per_thread = rows.div_ceil(threads);
    let mut chunk = if threads > 1 && per_thread >= MIN_CHUNK_ROWS {
        per_thread
    } else {
        rows
    };
    if !pointwise {
        chunk = chunk.min((MAX_GATHER_BYTES / (4 * depth)).max(MIN_CHUNK_ROWS));
    }
    let tasks = rows.div_ceil(chunk);
    let inner_threads = if tasks < threads { threads } else { 1 };
    let run = |(task, dst): (usize, &mut [f32])| {
        let first = task * chunk;
        let n = dst.len() / cout;
        if pointwise {
            let lhs = MatRef {
                data: x,
                offset: first * cin,
                rows: n,
                cols: cin,
                row_stride: cin,
                col_stride: 1,
            };
            matmul(dst, cout, lhs, rhs, Accumulate::Overwrite, inner_threads);
        } else {
            GATHERED.with_borrow_mut(|buf| {
                buf.resize(n * depth, 0.0);
                gather(x, &s, (oh, ow), first, &mut buf[..n * depth]);
                let lhs = MatRef::row_major(&buf[..n * depth], n, depth);
                matmul(dst, cout, lhs, rhs, Accumulate::Overwrite, inner_threads);
            });
        }
        finish(dst, first, (oh * ow, cout), &epilogue);
    };
    if tasks == 1 {
        run((0, out));
    } else {
        out.par_chunks_mut(chunk * cout).enumerate().for_each(run);
    }
}

thread_local! {
    /// Each thread's gather buffer, kept between calls: a fresh one per call would be
    /// fresh pages, and the kernel zeroing them cost more than the gather.
    static GATHERED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Writes, for output rows `first..first + n`, each row's receptive field in the
/// weight's order: `buf[i][ci·k·k + ky·k + kx]` is the input pixel that tap (ky, kx)
/// of output pixel `first + i` reads, channel `ci` (zero where it falls in the padding).
fn gather(x: &[f32], s: &Conv2dShape, (oh, ow): (usize, usize), first: usize, buf: &mut [f32]) {
    let (cin, k) = (s.in_channels, s.kernel);
    let taps = k * k;
    for (i, row) in buf.chunks_exact_mut(cin * taps).enumerate() {
        let p = first + i;
        let (b, rest) = (p / (oh * ow), p % (oh * ow));
        let (oy, ox) = (rest / ow, rest % ow);
        for ky in 0..k {
            for kx in 0..k {
                let tap = ky * k + kx;
                let iy = (oy * s.stride + ky) as isize - s.padding as isize;
                let ix = (ox * s.stride + kx) as isize - s.padding as isize;
                if iy < 0 || ix < 0 || iy >= s.height as isize || ix >= s.width as isize {
                    for ci in 0..cin {
                        row[ci * taps + tap] = 0.0;
                    }
                } else {
                    let src = ((b * s.height + iy as usize) * s.width + ix as usize) * cin;
                    for (ci, v) in x[src..src + cin].iter().enumerate() {
                        row[ci * taps + tap] = *v;
                    }
                }
            }
        }
    }
}

/// Bias, residual and scale over one chunk of output rows starting at row `first`
/// (`pixels` rows per image, for the per-image bias).
pub fn finish(dst: &mut [f32], first: usize, (pixels, cout): (usize, usize), e: &Epilogue) {
    if e.is_identity() {
        return;
    }
    apply_rows(dst, first, pixels, cout, e);
}

super::simd::vectorised! {
    fn apply_rows(dst: &mut [f32], first: usize, pixels: usize, cout: usize, e: &Epilogue) {
        for (i, row) in dst.chunks_exact_mut(cout).enumerate() {
            e.apply(row, first + i, pixels);
        }
    }
}

impl Epilogue<'_> {
    /// Whether applying it changes nothing.
    pub fn is_identity(&self) -> bool {
        self.bias.is_none()
            && self.batch_bias.is_none()
            && self.residual.is_none()
            && self.scale.is_none()
    }

    /// Applies it to output pixel `p` (an index over every image's pixels, `pixels` per
    /// image), whose channels are `row`.
    #[inline(always)]
    pub fn apply(&self, row: &mut [f32], p: usize, pixels: usize) {
        let cout = row.len();
        if let Some(bias) = self.bias {
            row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
        }
        if let Some(bias) = self.batch_bias {
            let b = p / pixels;
            let bias = &bias[b * cout..(b + 1) * cout];
            row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
        }
        if let Some(res) = self.residual {
            let res = &res[p * cout..(p + 1) * cout];
            row.iter_mut().zip(res).for_each(|(v, r)| *v += r);
        }
        if let Some(scale) = self.scale {
            row.iter_mut().for_each(|v| *v *= scale);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The definition, one output value at a time.
    pub(crate) fn naive(x: &[f32], s: Conv2dShape, w: &[f32], e: Epilogue) -> Vec<f32> {
        let (oh, ow) = s.output_hw();
        let (cin, cout, k) = (s.in_channels, s.out_channels, s.kernel);
        let mut out = vec![0f32; s.output_len()];
        for b in 0..s.batch {
            for oy in 0..oh {
                for ox in 0..ow {
                    for co in 0..cout {
                        let mut acc = 0f64;
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * s.stride + ky) as isize - s.padding as isize;
                                let ix = (ox * s.stride + kx) as isize - s.padding as isize;
                                if iy < 0
                                    || ix < 0
                                    || iy >= s.height as isize
                                    || ix >= s.width as isize
                                {
                                    continue;
                                }
                                for ci in 0..cin {
                                    let xv = x[((b * s.height + iy as usize) * s.width
                                        + ix as usize)
                                        * cin
                                        + ci];
                                    let wv = w[((co * cin + ci) * k + ky) * k + kx];
                                    acc += xv as f64 * wv as f64;
                                }
                            }
                        }
                        let o = ((b * oh + oy) * ow + ox) * cout + co;
                        let mut v = acc as f32;
                        v += e.bias.map_or(0.0, |bb| bb[co]);
                        v += e.batch_bias.map_or(0.0, |bb| bb[b * cout + co]);
                        v += e.residual.map_or(0.0, |r| r[o]);
                        out[o] = v * e.scale.unwrap_or(1.0);
                    }
                }
            }
        }
        out
    }

    pub(crate) fn values(n: usize, seed: f32) -> Vec<f32> {
        (0..n).map(|i| ((i as f32 + seed) * 0.618).sin()).collect()
    }

    #[test]
    fn matches_the_definition_for_every_geometry_the_models_use() {
        let cases = [
            // (batch, h, w, cin, cout, kernel, stride, padding)
            (2, 9, 7, 5, 6, 3, 1, 1),      // same-size 3×3, odd sizes
            (1, 8, 8, 4, 3, 3, 2, 1),      // downsampler
            (2, 7, 9, 3, 4, 3, 2, 0),      // downsampler without padding
            (2, 6, 5, 7, 5, 1, 1, 0),      // 1×1 shortcut / projection
            (1, 40, 33, 3, 2, 3, 1, 1),    // many chunks
            (1, 24, 24, 1000, 2, 3, 1, 1), // wide input: chunks capped by the gather buffer
        ];
        for (batch, height, width, cin, cout, kernel, stride, padding) in cases {
            let s = Conv2dShape {
                batch,
                height,
                width,
                in_channels: cin,
                out_channels: cout,
                kernel,
                stride,
                padding,
            };
            let x = values(batch * height * width * cin, 1.0);
            let w = values(cout * cin * kernel * kernel, 2.0);
            let bias = values(cout, 3.0);
            let batch_bias = values(batch * cout, 4.0);
            let residual = values(s.output_len(), 5.0);
            for e in [
                Epilogue::default(),
                Epilogue {
                    bias: Some(&bias),
                    batch_bias: Some(&batch_bias),
                    residual: Some(&residual),
                    scale: Some(0.5),
                },
            ] {
                let want = naive(&x, s, &w, e);
                let kn =
                    crate::inference::kernels::gemm::transpose(&w, cout, cin * kernel * kernel);
                let layouts = [
                    ("oihw", ConvWeights::Oihw(&w)),
                    ("kn", ConvWeights::Kn(&kn)),
                ];
                for (layout, weights) in layouts {
                    for threads in [1, 2] {
                        let mut out = vec![f32::NAN; s.output_len()];
                        conv2d_nhwc(&x, s, weights, e, &mut out, threads);
                        for (i, (a, b)) in out.iter().zip(&want).enumerate() {
                            assert!((a - b).abs() < 1e-4, "{s:?} {layout} at {i}: {a} vs {b}");
                        }
                    }
                }
            }
        }
    }
}
