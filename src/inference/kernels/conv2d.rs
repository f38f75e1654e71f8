//! 2-D convolution on channels-last (NHWC) activations as a sum of matrix products.
//!
//! For each kernel tap (ky, kx) the output rows (one per output pixel, every image of
//! the batch folded into the same rows) gain `shifted input · W[:, :, ky, kx]ᵀ`. The
//! weight tap is read in place from candle's `[cout, cin, kh, kw]` tensor through
//! strides, so weights are never re-laid out; the shifted input is either the input
//! itself (1×1 convolutions and the centre tap of a padded 3×3) or a gather of whole
//! `cin`-long pixel rows into a buffer one chunk of output rows long, never a full
//! im2col matrix. Bias (per channel, or per image and channel: the time embedding of a
//! resnet), a residual and an output scale are applied in the same pass over the
//! chunk while it is in cache.

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

/// Output rows (pixels) per task: large enough that a task's matrix products run near
/// the machine's peak, small enough that the gathered input stays in the core's cache.
const MAX_CHUNK_ROWS: usize = 1024;

/// Convolves `x` (NHWC) with `weight` (`[cout, cin, k, k]`) into `out` (NHWC).
pub fn conv2d_nhwc(
    x: &[f32],
    shape: Conv2dShape,
    weight: &[f32],
    epilogue: Epilogue,
    out: &mut [f32],
    threads: usize,
) {
    let s = shape;
    let (oh, ow) = s.output_hw();
    let (cin, cout, k) = (s.in_channels, s.out_channels, s.kernel);
    assert_eq!(x.len(), s.batch * s.height * s.width * cin, "input size");
    assert_eq!(weight.len(), cout * cin * k * k, "weight size");
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
    let chunk = rows.div_ceil(2 * threads).clamp(16, MAX_CHUNK_ROWS);
    let tasks = rows.div_ceil(chunk);
    // With fewer tasks than threads the products themselves are split instead.
    let inner_threads = if tasks < threads { threads } else { 1 };
    let run = |(task, dst): (usize, &mut [f32])| {
        let first = task * chunk;
        let n = dst.len() / cout;
        let mut gathered = Vec::new();
        let mut wrote = false;
        for ky in 0..k {
            for kx in 0..k {
                let tap = ky * k + kx;
                let direct = s.stride == 1
                    && ky == s.padding
                    && kx == s.padding
                    && (oh, ow) == (s.height, s.width);
                let lhs = if direct {
                    // The centre tap of a same-size convolution reads the input itself.
                    MatRef {
                        data: x,
                        offset: first * cin,
                        rows: n,
                        cols: cin,
                        row_stride: cin,
                        col_stride: 1,
                    }
                } else {
                    gathered.resize(n * cin, 0.0);
                    gather(x, &s, (oh, ow), first, ky, kx, &mut gathered);
                    MatRef::row_major(&gathered, n, cin)
                };
                let rhs = MatRef {
                    data: weight,
                    offset: tap,
                    rows: cin,
                    cols: cout,
                    row_stride: k * k,
                    col_stride: cin * k * k,
                };
                let mode = if wrote {
                    Accumulate::Add
                } else {
                    Accumulate::Overwrite
                };
                matmul(dst, cout, lhs, rhs, mode, inner_threads);
                wrote = true;
            }
        }
        finish(dst, first, (oh * ow, cout), &epilogue);
    };
    if tasks == 1 {
        run((0, out));
    } else {
        out.par_chunks_mut(chunk * cout).enumerate().for_each(run);
    }
}

/// Copies, for output rows `first..first + n`, the input pixel that tap (ky, kx) reads
/// (zeros where it falls in the padding).
fn gather(
    x: &[f32],
    s: &Conv2dShape,
    (oh, ow): (usize, usize),
    first: usize,
    ky: usize,
    kx: usize,
    buf: &mut [f32],
) {
    let cin = s.in_channels;
    for (i, row) in buf.chunks_exact_mut(cin).enumerate() {
        let p = first + i;
        let (b, rest) = (p / (oh * ow), p % (oh * ow));
        let (oy, ox) = (rest / ow, rest % ow);
        let iy = (oy * s.stride + ky) as isize - s.padding as isize;
        let ix = (ox * s.stride + kx) as isize - s.padding as isize;
        if iy < 0 || ix < 0 || iy >= s.height as isize || ix >= s.width as isize {
            row.fill(0.0);
        } else {
            let src = ((b * s.height + iy as usize) * s.width + ix as usize) * cin;
            row.copy_from_slice(&x[src..src + cin]);
        }
    }
}

/// Bias, residual and scale over one chunk of output rows starting at row `first`.
fn finish(dst: &mut [f32], first: usize, (pixels, cout): (usize, usize), e: &Epilogue) {
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
            (2, 9, 7, 5, 6, 3, 1, 1),   // same-size 3×3, odd sizes
            (1, 8, 8, 4, 3, 3, 2, 1),   // downsampler
            (2, 7, 9, 3, 4, 3, 2, 0),   // downsampler without padding
            (2, 6, 5, 7, 5, 1, 1, 0),   // 1×1 shortcut / projection
            (1, 40, 33, 3, 2, 3, 1, 1), // many chunks
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
                for threads in [1, 2] {
                    let mut out = vec![f32::NAN; s.output_len()];
                    conv2d_nhwc(&x, s, &w, e, &mut out, threads);
                    for (i, (a, b)) in out.iter().zip(&want).enumerate() {
                        assert!((a - b).abs() < 1e-4, "{s:?} at {i}: {a} vs {b}");
                    }
                }
            }
        }
    }
}
