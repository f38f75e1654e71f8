//! Nearest-neighbour resize of channels-last images (the UNet's and VAE's upsamplers).

/// Resizes `x` (`batch × h × w × c`) to `oh × ow` as torch's `nearest` mode does:
/// output pixel (y, x) reads input (⌊y·h/oh⌋, ⌊x·w/ow⌋).
pub fn nearest_nhwc(
    x: &[f32],
    (batch, h, w, c): (usize, usize, usize, usize),
    (oh, ow): (usize, usize),
) -> Vec<f32> {
    assert_eq!(x.len(), batch * h * w * c);
    let mut out = vec![0f32; batch * oh * ow * c];
    for b in 0..batch {
        for y in 0..oh {
            let iy = y * h / oh;
            let dst_row = &mut out[(b * oh + y) * ow * c..(b * oh + y + 1) * ow * c];
            for (xo, px) in dst_row.chunks_exact_mut(c).enumerate() {
                let ix = xo * w / ow;
                let src = ((b * h + iy) * w + ix) * c;
                px.copy_from_slice(&x[src..src + c]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_each_pixel_and_handles_odd_targets() {
        // 1 image, 2×2, 2 channels.
        let x = [1., 10., 2., 20., 3., 30., 4., 40.];
        let out = nearest_nhwc(&x, (1, 2, 2, 2), (4, 4));
        assert_eq!(&out[0..8], &[1., 10., 1., 10., 2., 20., 2., 20.]);
        assert_eq!(&out[24..32], &[3., 30., 3., 30., 4., 40., 4., 40.]);
        let odd = nearest_nhwc(&x, (1, 2, 2, 2), (3, 3));
        // torch: row 1 of 3 reads ⌊1·2/3⌋ = 0, row 2 reads 1.
        assert_eq!(&odd[6..12], &[1., 10., 1., 10., 2., 20.]);
        assert_eq!(&odd[12..14], &[3., 30.]);
    }
}
