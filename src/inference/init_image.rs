//! Decoding img2img start images and inpainting masks from encoded bytes (PNG, JPEG,
//! WebP, ...), for the CLI and the worker alike.
//!
//! Decoding is bounded: an image that claims huge dimensions (a decompression bomb) is
//! refused before any pixel buffer is allocated.

use image::{DynamicImage, GrayImage, ImageReader, Limits};

use super::request::InitImage;
use super::InferenceError;

/// Largest side we accept for an input image, before resizing.
pub const MAX_INPUT_SIDE: u32 = 4096;

/// Decodes an image with bounded dimensions and memory.
pub fn decode(bytes: &[u8], what: &str) -> Result<DynamicImage, InferenceError> {
    let bad =
        |e: String| InferenceError::InvalidRequest(format!("{what} is not a readable image: {e}"));
    let mut reader = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| bad(e.to_string()))?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_INPUT_SIDE);
    limits.max_image_height = Some(MAX_INPUT_SIDE);
    limits.max_alloc = Some(256 << 20);
    reader.limits(limits);
    reader.decode().map_err(|e| bad(e.to_string()))
}

/// The size an init image gives a job that names none: its own, rounded down to 8.
pub fn default_size(image: &DynamicImage) -> (usize, usize) {
    (
        image.width() as usize / 8 * 8,
        image.height() as usize / 8 * 8,
    )
}

/// Builds the pipeline's start image, resized (Lanczos, as diffusers' image processor
/// does) to `width` × `height` (default: its own size rounded down to 8 pixels), with an
/// optional mask converted to gray levels like PIL's `convert("L")`.
pub fn init_image(
    image: &[u8],
    mask: Option<&[u8]>,
    width: Option<usize>,
    height: Option<usize>,
    strength: Option<f64>,
) -> Result<InitImage, InferenceError> {
    let decoded = decode(image, "init_image")?;
    let (dw, dh) = default_size(&decoded);
    let (w, h) = (width.unwrap_or(dw), height.unwrap_or(dh));
    if w == 0 || h == 0 {
        return Err(InferenceError::InvalidRequest(
            "init_image is smaller than 8 pixels".into(),
        ));
    }
    let rgb = decoded.to_rgb8();
    let rgb = if (rgb.width() as usize, rgb.height() as usize) == (w, h) {
        rgb
    } else {
        image::imageops::resize(
            &rgb,
            w as u32,
            h as u32,
            image::imageops::FilterType::Lanczos3,
        )
    };
    let mask = mask
        .map(|bytes| -> Result<Vec<u8>, InferenceError> {
            let rgb = decode(bytes, "mask_image")?.to_rgb8();
            // PIL's convert("L"): ITU-R 601-2 luma in 16-bit fixed point, rounded.
            let gray = GrayImage::from_fn(rgb.width(), rgb.height(), |x, y| {
                let [r, g, b] = rgb.get_pixel(x, y).0.map(u32::from);
                image::Luma([((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16) as u8])
            });
            let gray = if (gray.width() as usize, gray.height() as usize) == (w, h) {
                gray
            } else {
                image::imageops::resize(
                    &gray,
                    w as u32,
                    h as u32,
                    image::imageops::FilterType::Lanczos3,
                )
            };
            Ok(gray.into_raw())
        })
        .transpose()?;
    let default_strength = if mask.is_some() { 1.0 } else { 0.8 };
    Ok(InitImage {
        width: w,
        height: h,
        rgb: rgb.into_raw(),
        strength: strength.unwrap_or(default_strength),
        mask,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let img =
            image::RgbImage::from_fn(width, height, |x, y| image::Rgb([x as u8, y as u8, 128]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn sizes_default_to_the_image_rounded_down() {
        let init = init_image(&png(70, 45), None, None, None, None).unwrap();
        assert_eq!((init.width, init.height), (64, 40));
        assert_eq!(init.rgb.len(), 64 * 40 * 3);
        assert_eq!(init.strength, 0.8);
        let inpaint =
            init_image(&png(64, 64), Some(&png(32, 32)), Some(64), Some(48), None).unwrap();
        assert_eq!(inpaint.mask.as_ref().unwrap().len(), 64 * 48);
        assert_eq!(inpaint.strength, 1.0);
    }

    #[test]
    fn garbage_and_bombs_are_refused() {
        assert!(matches!(
            init_image(b"not an image", None, None, None, None),
            Err(InferenceError::InvalidRequest(_))
        ));
        // A valid PNG header that claims 100000 × 100000 pixels.
        let mut bomb = png(1, 1);
        bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let err = init_image(&bomb, None, None, None, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("init_image"), "{err}");
    }
}
