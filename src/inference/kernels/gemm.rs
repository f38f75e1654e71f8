//! Matrix products on strided slices, through the `gemm` crate.
//!
//! `gemm` packs its operands itself, so a strided view (a column of heads inside a
//! token matrix, a tap of a convolution weight) costs nothing extra to pass: that is
//! what lets the convolution and attention kernels skip their copies.

/// A read-only matrix view: element (r, c) is `data[offset + r·row_stride + c·col_stride]`.
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub offset: usize,
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A dense row-major matrix.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            offset: 0,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The last element's index, checked against the slice so the raw call stays in bounds.
    fn check(&self) {
        if self.rows > 0 && self.cols > 0 {
            let last =
                self.offset + (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride;
            assert!(last < self.data.len(), "matrix view out of bounds");
        }
    }
}

/// Whether the product adds to what `dst` holds or overwrites it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accumulate {
    Overwrite,
    Add,
}

/// `dst (rows × cols, row stride dst_stride) (+)= a · b`, on `threads` threads.
pub fn matmul(
    dst: &mut [f32],
    dst_stride: usize,
    a: MatRef,
    b: MatRef,
    accumulate: Accumulate,
    threads: usize,
) {
    assert_eq!(a.cols, b.rows, "inner dimensions differ");
    let (m, n, k) = (a.rows, b.cols, a.cols);
    if m == 0 || n == 0 {
        return;
    }
    a.check();
    b.check();
    assert!(dst_stride >= n && (m - 1) * dst_stride + n <= dst.len());
    if k == 0 {
        if accumulate == Accumulate::Overwrite {
            for r in 0..m {
                dst[r * dst_stride..r * dst_stride + n].fill(0.0);
            }
        }
        return;
    }
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: every element touched lies inside the slices (checked above); dst does not
    // alias a or b because it is borrowed mutably.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_stride as isize,
            accumulate == Accumulate::Add,
            a.data.as_ptr().add(a.offset),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr().add(b.offset),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// The transpose of a row-major `rows × cols` matrix, as a row-major `cols × rows` one.
///
/// Weights are transposed once so that `gemm` finds the unit stride it packs fastest
/// along the output dimension; tiles keep both the reads and the writes in cache lines.
pub fn transpose(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    use rayon::prelude::*;
    const TILE: usize = 32;
    assert_eq!(src.len(), rows * cols, "matrix size");
    let mut dst = vec![0f32; src.len()];
    if src.is_empty() {
        return dst;
    }
    // Each task owns TILE rows of the result (TILE columns of the source).
    dst.par_chunks_mut(TILE * rows)
        .enumerate()
        .for_each(|(block, out)| {
            let c0 = block * TILE;
            let width = out.len() / rows;
            for r0 in (0..rows).step_by(TILE) {
                let height = TILE.min(rows - r0);
                for c in 0..width {
                    let row = &mut out[c * rows + r0..c * rows + r0 + height];
                    for (i, v) in row.iter_mut().enumerate() {
                        *v = src[(r0 + i) * cols + c0 + c];
                    }
                }
            }
        });
    dst
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposes_every_element_once() {
        for (rows, cols) in [(1, 1), (3, 70), (33, 65), (64, 32)] {
            let src: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            let t = transpose(&src, rows, cols);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(
                        t[c * rows + r],
                        src[r * cols + c],
                        "{rows}x{cols} at {r},{c}"
                    );
                }
            }
        }
    }

    #[test]
    fn strided_products_match_the_naive_sum() {
        let (m, n, k) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        // b stored transposed (n × k), read as k × n through strides.
        let bt: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect();
        let mut dst = vec![1.0f32; m * (n + 2)];
        let b = MatRef {
            data: &bt,
            offset: 0,
            rows: k,
            cols: n,
            row_stride: 1,
            col_stride: k,
        };
        matmul(
            &mut dst,
            n + 2,
            MatRef::row_major(&a, m, k),
            b,
            Accumulate::Add,
            2,
        );
        for r in 0..m {
            for c in 0..n {
                let want: f32 = 1.0 + (0..k).map(|i| a[r * k + i] * bt[c * k + i]).sum::<f32>();
                assert!((dst[r * (n + 2) + c] - want).abs() < 1e-5);
            }
            assert_eq!(dst[r * (n + 2) + n], 1.0, "padding untouched");
        }
        matmul(
            &mut dst,
            n + 2,
            MatRef::row_major(&a, m, k),
            b,
            Accumulate::Overwrite,
            1,
        );
        let want: f32 = (0..k).map(|i| a[i] * bt[i]).sum();
        assert!((dst[0] - want).abs() < 1e-5);
    }
}
