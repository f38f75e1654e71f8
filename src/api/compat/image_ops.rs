//! The few pixel operations the dialects need to turn their inputs into ours and our PNGs
//! into their outputs: mask conventions (A1111's blur and invert, OpenAI's transparent =
//! edit), and re-encoding a stored PNG as JPEG or WebP. Pure functions over bytes.

use std::io::Cursor;

use base64::Engine;
use image::{DynamicImage, GrayImage, ImageFormat};

use crate::inference::init_image::decode;

/// Base64 without line breaks, as both dialects send images.
pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Decodes raw base64 or a `data:image/...;base64,` URL (what A1111 clients send).
pub fn unb64(value: &str) -> Result<Vec<u8>, String> {
    let data = match value.split_once(";base64,") {
        Some((prefix, data)) if prefix.starts_with("data:") => data,
        _ => value,
    };
    base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| format!("not valid base64: {e}"))
}

fn png(image: &DynamicImage) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    // Writing a decoded image to memory as PNG cannot fail.
    image
        .write_to(&mut out, ImageFormat::Png)
        .expect("PNG encoding to memory");
    out.into_inner()
}

/// A1111's mask preparation: gray levels (white = repaint), optionally inverted, then a
/// blur of `blur` pixels (A1111's `mask_blur`; 0 leaves the edge hard). The blur is the
/// `image` crate's fast almost-Gaussian one, whose cost does not grow with the radius, so
/// a large mask with a large blur stays cheap. Returns a PNG.
pub fn a1111_mask(bytes: &[u8], invert: bool, blur: f32) -> Result<Vec<u8>, String> {
    let image = decode(bytes, "mask").map_err(|e| e.to_string())?;
    let mut gray: GrayImage = image.to_luma8();
    if invert {
        image::imageops::invert(&mut gray);
    }
    if blur > 0.0 {
        gray = image::imageops::fast_blur(&gray, blur);
    }
    Ok(png(&DynamicImage::ImageLuma8(gray)))
}

/// A1111's `inpainting_fill: 0` ("fill"): the start image, resized to `width` × `height`
/// (stretched, as `resize_mode` 0 does), with its masked area replaced by the colours
/// around it, smeared by blurs of shrinking radius, so that the repaint starts from a
/// plausible background rather than from what is being replaced. Each layer is a blur of
/// the kept pixels normalised by the blur of the keep weights, laid over the previous
/// layers; the last layer is the kept pixels themselves. Returns a PNG.
pub fn fill_masked(
    init: &[u8],
    mask_png: &[u8],
    width: u32,
    height: u32,
) -> Result<Vec<u8>, String> {
    use image::imageops::{fast_blur, resize, FilterType};
    let rgb = decode(init, "init_images")
        .map_err(|e| e.to_string())?
        .to_rgb8();
    let mask = decode(mask_png, "mask")
        .map_err(|e| e.to_string())?
        .to_luma8();
    let rgb = resize(&rgb, width, height, FilterType::Lanczos3);
    let mask = resize(&mask, width, height, FilterType::Lanczos3);
    // Premultiplied kept colour and keep weight (1 where the pixel is kept).
    let kept = image::Rgba32FImage::from_fn(width, height, |x, y| {
        let keep = 1.0 - mask.get_pixel(x, y).0[0] as f32 / 255.0;
        let [r, g, b] = rgb.get_pixel(x, y).0.map(|c| c as f32 / 255.0 * keep);
        image::Rgba([r, g, b, keep])
    });
    let mut acc = image::Rgba32FImage::new(width, height);
    for (radius, repeats) in [
        (256.0, 1),
        (64.0, 1),
        (16.0, 2),
        (4.0, 4),
        (2.0, 2),
        (0.0, 1),
    ] {
        let layer = if radius > 0.0 {
            fast_blur(&kept, radius)
        } else {
            kept.clone()
        };
        for _ in 0..repeats {
            for (dst, src) in acc.pixels_mut().zip(layer.pixels()) {
                let alpha = src.0[3].clamp(0.0, 1.0);
                for c in 0..4 {
                    dst.0[c] = src.0[c] + dst.0[c] * (1.0 - alpha);
                }
            }
        }
    }
    let out = image::RgbImage::from_fn(width, height, |x, y| {
        let p = acc.get_pixel(x, y).0;
        if p[3] <= f32::EPSILON {
            *rgb.get_pixel(x, y)
        } else {
            image::Rgb([0, 1, 2].map(|c| ((p[c] / p[3]).clamp(0.0, 1.0) * 255.0).round() as u8))
        }
    });
    Ok(png(&DynamicImage::ImageRgb8(out)))
}

/// Whether A1111's "Only masked" inpainting (`inpaint_full_res`) would work on the whole
/// picture anyway: A1111 crops to the mask's bounding box plus `padding`, grown to the
/// aspect ratio of `width` × `height`. When that region is the whole image, "Only masked"
/// and "Whole picture" are the same computation.
pub fn only_masked_is_whole_picture(
    mask_png: &[u8],
    padding: u32,
    width: u32,
    height: u32,
) -> Result<bool, String> {
    let mask = decode(mask_png, "mask")
        .map_err(|e| e.to_string())?
        .to_luma8();
    let (w, h) = (mask.width() as i64, mask.height() as i64);
    let (mut x1, mut y1, mut x2, mut y2) = (w, h, 0i64, 0i64);
    for (x, y, p) in mask.enumerate_pixels() {
        if p.0[0] > 0 {
            let (x, y) = (x as i64, y as i64);
            (x1, y1, x2, y2) = (x1.min(x), y1.min(y), x2.max(x + 1), y2.max(y + 1));
        }
    }
    if x2 <= x1 || y2 <= y1 {
        // Nothing to repaint: A1111 falls back to the whole picture.
        return Ok(true);
    }
    let pad = padding as i64;
    (x1, y1, x2, y2) = (
        (x1 - pad).max(0),
        (y1 - pad).max(0),
        (x2 + pad).min(w),
        (y2 + pad).min(h),
    );
    // Grow the short side around its centre, then slide it back inside the image.
    let grow = |lo: i64, hi: i64, want: i64, limit: i64| -> (i64, i64) {
        let want = want.min(limit);
        let extra = want - (hi - lo);
        if extra <= 0 {
            return (lo, hi);
        }
        let mut lo = lo - extra / 2;
        let mut hi = hi + (extra - extra / 2);
        if lo < 0 {
            hi -= lo;
            lo = 0;
        }
        if hi > limit {
            lo -= hi - limit;
            hi = limit;
        }
        (lo.max(0), hi)
    };
    let (cw, ch) = (x2 - x1, y2 - y1);
    let target = width as f64 / height.max(1) as f64;
    if (cw as f64 / ch as f64) < target {
        (x1, x2) = grow(x1, x2, (ch as f64 * target).round() as i64, w);
    } else {
        (y1, y2) = grow(y1, y2, (cw as f64 / target).round() as i64, h);
    }
    Ok((x1, y1, x2, y2) == (0, 0, w, h))
}

/// OpenAI's mask convention to ours: where the mask is transparent the image is edited,
/// so the repaint level is `255 - alpha`. A mask without an alpha channel has nothing
/// transparent and is refused. Returns a PNG.
pub fn openai_mask(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let image = decode(bytes, "mask").map_err(|e| e.to_string())?;
    if !image.color().has_alpha() {
        return Err("mask must have an alpha channel: its transparent pixels mark where the image is edited".into());
    }
    let rgba = image.to_rgba8();
    let gray = GrayImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        image::Luma([255 - rgba.get_pixel(x, y).0[3]])
    });
    Ok(png(&DynamicImage::ImageLuma8(gray)))
}

/// An output format OpenAI's `output_format` can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Png,
    /// With a quality of 1–100.
    Jpeg(u8),
    /// Lossless: the `image` crate's WebP encoder has no lossy mode.
    WebpLossless,
}

impl OutputFormat {
    /// OpenAI's name for it.
    pub fn name(self) -> &'static str {
        match self {
            OutputFormat::Png => "png",
            OutputFormat::Jpeg(_) => "jpeg",
            OutputFormat::WebpLossless => "webp",
        }
    }
}

/// Re-encodes a stored PNG; PNG passes through untouched, metadata chunks included.
pub fn encode_as(png_bytes: &[u8], format: OutputFormat) -> Result<Vec<u8>, String> {
    if format == OutputFormat::Png {
        return Ok(png_bytes.to_vec());
    }
    let image = decode(png_bytes, "image")
        .map_err(|e| e.to_string())?
        .to_rgb8();
    let mut out = Cursor::new(Vec::new());
    match format {
        OutputFormat::Jpeg(quality) => {
            let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality);
            image.write_with_encoder(encoder)
        }
        OutputFormat::WebpLossless => {
            let encoder = image::codecs::webp::WebPEncoder::new_lossless(&mut out);
            image.write_with_encoder(encoder)
        }
        OutputFormat::Png => unreachable!("handled above"),
    }
    .map_err(|e| e.to_string())?;
    Ok(out.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgba, RgbaImage};

    fn encode_png(image: DynamicImage) -> Vec<u8> {
        png(&image)
    }

    #[test]
    fn openai_masks_repaint_where_transparent() {
        let mask = RgbaImage::from_fn(4, 2, |x, _| Rgba([10, 20, 30, if x < 2 { 0 } else { 255 }]));
        let ours = openai_mask(&encode_png(DynamicImage::ImageRgba8(mask))).unwrap();
        let gray = image::load_from_memory(&ours).unwrap().to_luma8();
        assert_eq!(gray.as_raw(), &[255, 255, 0, 0, 255, 255, 0, 0]);
        let opaque = encode_png(DynamicImage::ImageRgb8(image::RgbImage::new(2, 2)));
        assert!(openai_mask(&opaque).unwrap_err().contains("alpha"));
        assert!(openai_mask(b"junk").is_err());
    }

    #[test]
    fn a1111_masks_invert_and_blur() {
        let half = GrayImage::from_fn(16, 1, |x, _| image::Luma([if x < 8 { 255 } else { 0 }]));
        let bytes = encode_png(DynamicImage::ImageLuma8(half));
        let plain = image::load_from_memory(&a1111_mask(&bytes, false, 0.0).unwrap())
            .unwrap()
            .to_luma8();
        assert_eq!((plain.as_raw()[0], plain.as_raw()[15]), (255, 0));
        let inverted = image::load_from_memory(&a1111_mask(&bytes, true, 0.0).unwrap())
            .unwrap()
            .to_luma8();
        assert_eq!((inverted.as_raw()[0], inverted.as_raw()[15]), (0, 255));
        let blurred = image::load_from_memory(&a1111_mask(&bytes, false, 2.0).unwrap())
            .unwrap()
            .to_luma8();
        let (edge_in, edge_out) = (blurred.as_raw()[7], blurred.as_raw()[8]);
        assert!(edge_in < 255 && edge_out > 0, "{edge_in} {edge_out}");
    }

    #[test]
    fn only_masked_matches_whole_picture_when_the_crop_is_everything() {
        let mask = |w: u32, h: u32, x0: u32, x1: u32, y0: u32, y1: u32| {
            let img = GrayImage::from_fn(w, h, |x, y| {
                image::Luma([if (x0..x1).contains(&x) && (y0..y1).contains(&y) {
                    255
                } else {
                    0
                }])
            });
            encode_png(DynamicImage::ImageLuma8(img))
        };
        let cases = [
            // (mask, padding, target size, whole?)
            (mask(64, 64, 0, 32, 0, 64), 0, (64, 64), true), // half a square: grown to all
            (mask(64, 64, 0, 0, 0, 0), 0, (64, 64), true),   // empty mask
            (mask(64, 64, 20, 30, 20, 30), 0, (64, 64), false), // a small patch
            (mask(64, 64, 20, 30, 20, 30), 40, (64, 64), true), // padded out to the edges
            (mask(128, 64, 0, 32, 0, 64), 0, (64, 64), false), // a square crop of a wide image
            (mask(128, 64, 60, 68, 0, 64), 0, (128, 64), true), // a strip grown to the aspect
        ];
        for (i, (png, padding, (w, h), whole)) in cases.into_iter().enumerate() {
            assert_eq!(
                only_masked_is_whole_picture(&png, padding, w, h).unwrap(),
                whole,
                "case {i}"
            );
        }
    }

    #[test]
    fn fill_replaces_the_masked_area_with_its_surroundings() {
        // Blue on the left, a red block under the mask on the right half's middle.
        let init = image::RgbImage::from_fn(32, 16, |x, y| {
            if (16..24).contains(&x) && (4..12).contains(&y) {
                image::Rgb([255, 0, 0])
            } else {
                image::Rgb([0, 0, 255])
            }
        });
        let mask = GrayImage::from_fn(32, 16, |x, y| {
            image::Luma([if (16..24).contains(&x) && (4..12).contains(&y) {
                255
            } else {
                0
            }])
        });
        let filled = fill_masked(
            &encode_png(DynamicImage::ImageRgb8(init.clone())),
            &encode_png(DynamicImage::ImageLuma8(mask)),
            32,
            16,
        )
        .unwrap();
        let filled = image::load_from_memory(&filled).unwrap().to_rgb8();
        assert_eq!(
            filled.get_pixel(0, 0),
            init.get_pixel(0, 0),
            "kept pixels stay"
        );
        let inside = filled.get_pixel(20, 8).0;
        assert!(
            inside[0] < 40 && inside[2] > 200,
            "the red block became blue: {inside:?}"
        );
    }

    #[test]
    fn outputs_reencode_to_the_asked_format() {
        let rgb =
            image::RgbImage::from_fn(16, 8, |x, y| image::Rgb([x as u8 * 15, y as u8 * 30, 77]));
        let png_bytes = encode_png(DynamicImage::ImageRgb8(rgb.clone()));
        assert_eq!(encode_as(&png_bytes, OutputFormat::Png).unwrap(), png_bytes);
        let jpeg = encode_as(&png_bytes, OutputFormat::Jpeg(90)).unwrap();
        assert_eq!(image::guess_format(&jpeg).unwrap(), ImageFormat::Jpeg);
        let webp = encode_as(&png_bytes, OutputFormat::WebpLossless).unwrap();
        assert_eq!(image::guess_format(&webp).unwrap(), ImageFormat::WebP);
        let back = image::load_from_memory(&webp).unwrap().to_rgb8();
        assert_eq!(back, rgb, "lossless WebP keeps every pixel");
        let small = encode_as(&png_bytes, OutputFormat::Jpeg(10)).unwrap();
        assert!(small.len() < jpeg.len());
    }
}
