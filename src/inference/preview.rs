//! Step previews: a cheap look at the latents while a job denoises.
//!
//! A VAE decode per step would cost as much as a UNet step, so previews use a fitted
//! linear map instead: each latent pixel's 4 channels times a 4×3 matrix, plus a bias,
//! gives an RGB value in [-1, 1]. The image has the latents' size (1/8 of the output per
//! side) and is encoded as a small JPEG `data:` URL.
//!
//! The factors are the community's published least-squares fits of the VAEs' decoders
//! (the SD 1.x fit is shared by SD 2.x, whose VAE is the same; SDXL's VAE has its own,
//! with a bias), as A1111's "Approx cheap" and ComfyUI's latent previews also use them.

use std::io::Cursor;

use base64::Engine as _;
use candle_core::{DType, Tensor};
use image::codecs::jpeg::JpegEncoder;

use super::InferenceError;

/// Which fitted map a model's latents need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreviewFamily {
    /// SD 1.x and 2.x (the same VAE).
    Sd1,
    Sdxl,
}

/// `FACTORS[channel][rgb]` and the bias added to each colour.
struct LatentToRgb {
    factors: [[f32; 3]; 4],
    bias: [f32; 3],
}

const SD1: LatentToRgb = LatentToRgb {
    factors: [
        [0.3512, 0.2297, 0.3227],
        [0.3250, 0.4974, 0.2350],
        [-0.2829, 0.1762, 0.2721],
        [-0.2120, -0.2616, -0.7177],
    ],
    bias: [0.0, 0.0, 0.0],
};

const SDXL: LatentToRgb = LatentToRgb {
    factors: [
        [0.3651, 0.4232, 0.4341],
        [-0.2533, -0.0042, 0.1068],
        [0.1076, 0.1111, -0.0362],
        [-0.3165, -0.2492, -0.2188],
    ],
    bias: [0.1084, -0.0175, -0.0011],
};

/// JPEG quality of previews: they are looked at small and replaced within a step or two.
const JPEG_QUALITY: u8 = 75;

/// One preview as the step callback hands it out.
#[derive(Debug, Clone, PartialEq)]
pub struct Preview {
    pub width: usize,
    pub height: usize,
    /// `data:image/jpeg;base64,...`
    pub data_url: String,
}

impl PreviewFamily {
    fn map(self) -> &'static LatentToRgb {
        match self {
            Self::Sd1 => &SD1,
            Self::Sdxl => &SDXL,
        }
    }

    /// Maps one image's latents (`[4, h, w]`, channels first, as floats) to 8-bit RGB,
    /// row-major, channels last.
    ///
    /// Noisy latents of sigma-based schedulers are far larger than clean ones (about
    /// `sqrt(1 + sigma²)` RMS against about 1), which would clip every pixel; such
    /// latents are scaled down to unit RMS first so early previews show structure.
    pub fn latents_to_rgb(self, latents: &[f32], height: usize, width: usize) -> Vec<u8> {
        let plane = height * width;
        debug_assert_eq!(latents.len(), 4 * plane);
        let rms = (latents.iter().map(|v| (v * v) as f64).sum::<f64>()
            / latents.len().max(1) as f64)
            .sqrt() as f32;
        let scale = if rms > 1.0 { 1.0 / rms } else { 1.0 };
        let map = self.map();
        let mut rgb = Vec::with_capacity(plane * 3);
        for p in 0..plane {
            for (colour, bias) in map.bias.iter().enumerate() {
                let mut v = *bias;
                for (c, row) in map.factors.iter().enumerate() {
                    v += latents[c * plane + p] * scale * row[colour];
                }
                rgb.push((((v + 1.0) * 127.5).round()).clamp(0.0, 255.0) as u8);
            }
        }
        rgb
    }

    /// The preview of the first image of a batch of latents (`[batch, 4, h, w]`).
    /// `None` for latents this map does not fit (not 4 channels).
    pub fn preview(self, latents: &Tensor) -> Result<Option<Preview>, InferenceError> {
        let (_, channels, height, width) = latents.dims4()?;
        if channels != 4 {
            return Ok(None);
        }
        let first = latents.get(0)?.to_dtype(DType::F32)?.flatten_all()?;
        let rgb = self.latents_to_rgb(&first.to_vec1::<f32>()?, height, width);
        let jpeg = encode_jpeg(width as u32, height as u32, &rgb)?;
        Ok(Some(Preview {
            width,
            height,
            data_url: format!(
                "data:image/jpeg;base64,{}",
                base64::engine::general_purpose::STANDARD.encode(jpeg)
            ),
        }))
    }
}

fn encode_jpeg(width: u32, height: u32, rgb: &[u8]) -> Result<Vec<u8>, InferenceError> {
    let mut out = Cursor::new(Vec::new());
    JpegEncoder::new_with_quality(&mut out, JPEG_QUALITY)
        .encode(rgb, width, height, image::ExtendedColorType::Rgb8)
        .map_err(|e| InferenceError::InvalidRequest(format!("preview encoding failed: {e}")))?;
    Ok(out.into_inner())
}

/// Whether a preview is due after `step` of `total` when one is made every `every`
/// steps. The last step never gets one: the finished image follows at once.
pub fn preview_due(step: usize, total: usize, every: usize) -> bool {
    every > 0 && step < total && step.is_multiple_of(every)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// A 2×3 latent whose pixels each turn on one channel (or none, or a noisy one).
    fn known_latents() -> Vec<f32> {
        let (h, w) = (2, 3);
        let mut l = vec![0.0f32; 4 * h * w];
        // pixel p has channel p at 1.0 for p < 4; pixel 4 is all zeros; pixel 5 is -1 on channel 3
        for c in 0..4 {
            l[c * h * w + c] = 1.0;
        }
        l[3 * h * w + 5] = -1.0;
        l
    }

    fn expected(map: &LatentToRgb, channel: Option<(usize, f32)>) -> [u8; 3] {
        let mut out = [0u8; 3];
        for (i, o) in out.iter_mut().enumerate() {
            let v = map.bias[i] + channel.map_or(0.0, |(c, s)| s * map.factors[c][i]);
            *o = ((v + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8;
        }
        out
    }

    #[test]
    fn known_latents_map_to_the_fitted_colours() {
        for (family, map) in [(PreviewFamily::Sd1, &SD1), (PreviewFamily::Sdxl, &SDXL)] {
            let rgb = family.latents_to_rgb(&known_latents(), 2, 3);
            assert_eq!(rgb.len(), 2 * 3 * 3);
            for p in 0..4 {
                assert_eq!(
                    rgb[p * 3..p * 3 + 3],
                    expected(map, Some((p, 1.0))),
                    "{family:?} pixel {p}"
                );
            }
            assert_eq!(rgb[12..15], expected(map, None), "{family:?} zero pixel");
            assert_eq!(
                rgb[15..18],
                expected(map, Some((3, -1.0))),
                "{family:?} pixel 5"
            );
        }
        // Concrete values, so a changed factor table fails here: SD 1.x channel 0 alone is
        // a light warm grey, channel 3 negated is blue-heavy.
        let rgb = PreviewFamily::Sd1.latents_to_rgb(&known_latents(), 2, 3);
        assert_eq!(rgb[0..3], [172, 157, 169]);
        assert_eq!(rgb[15..18], [155, 161, 219]);
        assert_eq!(rgb[12..15], [128, 128, 128]);
        // SDXL's bias shifts the zero latent off grey.
        let xl = PreviewFamily::Sdxl.latents_to_rgb(&known_latents(), 2, 3);
        assert_eq!(xl[12..15], [141, 125, 127]);
        assert_ne!(rgb[0..3], xl[0..3], "the families' maps differ");
    }

    #[test]
    fn noisy_latents_are_scaled_to_unit_rms() {
        let calm = vec![0.5f32; 4 * 4];
        let loud: Vec<f32> = calm.iter().map(|v| v * 20.0).collect();
        let a = PreviewFamily::Sd1.latents_to_rgb(&calm, 2, 2);
        let b = PreviewFamily::Sd1.latents_to_rgb(&loud, 2, 2);
        // 20× the latents is scaled back to RMS 1, i.e. 2× the calm ones, not clipped.
        assert!(b.iter().any(|&v| v != 0 && v != 255), "{b:?}");
        assert_ne!(a, b);
    }

    #[test]
    fn preview_is_a_small_jpeg_of_latent_size() {
        let latents = Tensor::randn(0f32, 1.0, (2, 4, 8, 12), &Device::Cpu).unwrap();
        let preview = PreviewFamily::Sdxl.preview(&latents).unwrap().unwrap();
        assert_eq!((preview.width, preview.height), (12, 8));
        let b64 = preview
            .data_url
            .strip_prefix("data:image/jpeg;base64,")
            .expect("a JPEG data URL");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let img = image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg).unwrap();
        assert_eq!((img.width(), img.height()), (12, 8));
        assert!(bytes.len() < 4096, "{} bytes", bytes.len());
        let eight = Tensor::zeros((1, 8, 8, 8), DType::F32, &Device::Cpu).unwrap();
        assert!(PreviewFamily::Sd1.preview(&eight).unwrap().is_none());
    }

    #[test]
    fn previews_are_due_every_n_steps_but_not_at_the_end() {
        let due: Vec<usize> = (1..=10).filter(|&s| preview_due(s, 10, 3)).collect();
        assert_eq!(due, [3, 6, 9]);
        let every: Vec<usize> = (1..=4).filter(|&s| preview_due(s, 4, 1)).collect();
        assert_eq!(every, [1, 2, 3]);
        assert!(!preview_due(2, 4, 0));
    }
}
