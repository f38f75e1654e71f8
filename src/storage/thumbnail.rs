//! Gallery thumbnails: a JPEG whose longest side is at most 256 pixels, made once at
//! upload so listing the gallery never decodes a full image.

use image::codecs::jpeg::JpegEncoder;
use image::imageops::FilterType;
use image::RgbImage;

/// Longest side of a thumbnail.
pub const THUMBNAIL_SIDE: u32 = 256;

/// JPEG quality of thumbnails: small files that still look right at gallery size.
const QUALITY: u8 = 82;

#[derive(Debug, thiserror::Error)]
pub enum ThumbnailError {
    #[error("image buffer is {got} bytes, expected {expected} for {width}×{height} RGB")]
    BadBuffer {
        got: usize,
        expected: usize,
        width: u32,
        height: u32,
    },
    #[error("JPEG encoding failed: {0}")]
    Encode(#[from] image::ImageError),
}

/// The thumbnail size of a `width` × `height` image (never larger than the image).
pub fn thumbnail_size(width: u32, height: u32) -> (u32, u32) {
    let longest = width.max(height).max(1);
    if longest <= THUMBNAIL_SIDE {
        return (width.max(1), height.max(1));
    }
    let scale = THUMBNAIL_SIDE as f64 / longest as f64;
    (
        ((width as f64 * scale).round() as u32).clamp(1, THUMBNAIL_SIDE),
        ((height as f64 * scale).round() as u32).clamp(1, THUMBNAIL_SIDE),
    )
}

/// A JPEG thumbnail of packed RGB pixels.
pub fn thumbnail_jpeg(width: u32, height: u32, rgb: &[u8]) -> Result<Vec<u8>, ThumbnailError> {
    let expected = width as usize * height as usize * 3;
    let image =
        RgbImage::from_raw(width, height, rgb.to_vec()).ok_or(ThumbnailError::BadBuffer {
            got: rgb.len(),
            expected,
            width,
            height,
        })?;
    let (tw, th) = thumbnail_size(width, height);
    let small = if (tw, th) == (width, height) {
        image
    } else {
        image::imageops::resize(&image, tw, th, FilterType::Triangle)
    };
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, QUALITY).encode_image(&small)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbnails_fit_in_256_and_keep_the_aspect() {
        assert_eq!(thumbnail_size(512, 512), (256, 256));
        assert_eq!(thumbnail_size(1024, 512), (256, 128));
        assert_eq!(thumbnail_size(64, 48), (64, 48));
        assert_eq!(thumbnail_size(300, 2000), (38, 256));
        let rgb = vec![200u8; 512 * 384 * 3];
        let jpeg = thumbnail_jpeg(512, 384, &rgb).unwrap();
        let decoded = image::load_from_memory(&jpeg).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (256, 192));
        assert!(thumbnail_jpeg(10, 10, &rgb[..5]).is_err());
    }
}
