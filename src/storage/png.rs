//! PNG files that carry their own recipe: an A1111-style `parameters` text chunk and a
//! JSON chunk with the full job spec, so an image can be re-run from itself.

use serde::Serialize;

/// What goes into the metadata chunks.
#[derive(Debug, Clone, Serialize)]
pub struct PngMetadata {
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: u32,
    /// A1111's sampler name, e.g. "Euler a".
    pub sampler: String,
    pub guidance_scale: f64,
    pub seed: u64,
    pub width: u32,
    pub height: u32,
    pub model: String,
    /// img2img / inpaint: A1111's "Denoising strength".
    pub strength: Option<f64>,
    /// The full job spec, written as the `sdq` JSON chunk.
    pub spec: serde_json::Value,
}

impl PngMetadata {
    /// The text A1111 writes into its `parameters` chunk.
    pub fn a1111_parameters(&self) -> String {
        let mut text = self.prompt.clone();
        if !self.negative_prompt.is_empty() {
            text.push_str("\nNegative prompt: ");
            text.push_str(&self.negative_prompt);
        }
        text.push_str(&format!(
            "\nSteps: {}, Sampler: {}, CFG scale: {}, Seed: {}, Size: {}x{}, Model: {}",
            self.steps,
            self.sampler,
            self.guidance_scale,
            self.seed,
            self.width,
            self.height,
            self.model
        ));
        if let Some(strength) = self.strength {
            text.push_str(&format!(", Denoising strength: {strength}"));
        }
        text
    }
}

/// Keyword of the JSON chunk holding the job spec.
pub const SPEC_CHUNK: &str = "sdq";

/// Encodes 8-bit RGB pixels as PNG with both metadata chunks.
pub fn encode(
    width: u32,
    height: u32,
    rgb: &[u8],
    meta: &PngMetadata,
) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let params = meta.a1111_parameters();
        // tEXt is Latin-1 only; A1111 falls back to iTXt for other prompts, and so do we.
        if params.chars().all(|c| (c as u32) < 256) {
            encoder.add_text_chunk("parameters".into(), params)?;
        } else {
            encoder.add_itxt_chunk("parameters".into(), params)?;
        }
        encoder.add_itxt_chunk(SPEC_CHUNK.into(), meta.spec.to_string())?;
        let mut writer = encoder.write_header()?;
        writer.write_image_data(rgb)?;
        writer.finish()?;
    }
    Ok(out)
}

/// Reads the text chunks back (`keyword → text`), for tests and `sdq` re-runs.
pub fn read_text_chunks(bytes: &[u8]) -> Result<Vec<(String, String)>, png::DecodingError> {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let reader = decoder.read_info()?;
    let info = reader.info();
    let mut chunks: Vec<(String, String)> = info
        .uncompressed_latin1_text
        .iter()
        .map(|c| (c.keyword.clone(), c.text.clone()))
        .collect();
    for c in &info.utf8_text {
        if let Ok(text) = c.get_text() {
            chunks.push((c.keyword.clone(), text));
        }
    }
    Ok(chunks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(prompt: &str) -> PngMetadata {
        PngMetadata {
            prompt: prompt.into(),
            negative_prompt: "blurry".into(),
            steps: 4,
            sampler: "Euler a".into(),
            guidance_scale: 7.5,
            seed: 42,
            width: 2,
            height: 1,
            model: "tiny".into(),
            strength: None,
            spec: serde_json::json!({"prompt": prompt, "seed": 42}),
        }
    }

    #[test]
    fn chunks_round_trip() {
        for prompt in ["a cat", "猫の写真"] {
            let png = encode(2, 1, &[255, 0, 0, 0, 255, 0], &meta(prompt)).unwrap();
            let chunks = read_text_chunks(&png).unwrap();
            let params = &chunks.iter().find(|(k, _)| k == "parameters").unwrap().1;
            assert!(params.starts_with(prompt));
            assert!(params.contains("Negative prompt: blurry"));
            assert!(params.contains(
                "Steps: 4, Sampler: Euler a, CFG scale: 7.5, Seed: 42, Size: 2x1, Model: tiny"
            ));
            let spec = &chunks.iter().find(|(k, _)| k == SPEC_CHUNK).unwrap().1;
            let spec: serde_json::Value = serde_json::from_str(spec).unwrap();
            assert_eq!(spec["prompt"], prompt);
        }
    }
}
