//! CPU kernels of our own, where candle's are slow: one op per file.
//!
//! Kernels take slices and shapes, never framework tensors, so each hot loop can be read
//! and tested alone against the naive version in its own tests; the tensor glue is
//! `inference::ops`. Matrix products go to the `gemm` crate (the one candle itself
//! uses, with runtime AVX2 / AVX-512 dispatch); everything around them (gathers,
//! softmax, normalisation, activations) is here, written so the compiler vectorises it
//! inside `simd::vectorised!`.
//!
//! Layout: activations are channels-last (NHWC, or tokens × channels), the layout in
//! which a convolution is a sum of matrix products and attention needs no transposes.

// Kernels index several arrays by one loop variable on purpose (tiles, taps, lanes).
#![allow(clippy::needless_range_loop)]

pub mod attention;
pub mod conv2d;
pub mod exp;
pub mod geglu;
pub mod gemm;
pub mod group_norm;
pub mod simd;
pub mod upsample;
pub mod winograd;

/// How many threads the kernels split work over: candle's own setting
/// (`RAYON_NUM_THREADS`, else every core), so both sides of a benchmark use the same.
pub fn threads() -> usize {
    candle_core::utils::get_num_threads().max(1)
}
