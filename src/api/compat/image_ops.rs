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
