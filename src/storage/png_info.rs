//! Reading a PNG's generation recipe back: sdq's own `sdq` JSON chunk, or the A1111-style
//! `parameters` text that A1111, sdq and most other tools write.
//!
//! The `parameters` text is the prompt, an optional `Negative prompt:` part, and a last
//! line of `Key: value` settings separated by `, ` (a value holding commas is quoted).
//! [`parse_parameters`] splits it; [`PngInfo::recipe`] turns either source into the fields
//! of a job request. Used by `POST /v1/png-info`, `GET /v1/images/{id}/metadata` and
//! A1111's `/sdapi/v1/png-info`.

use serde_json::{json, Map, Value};

use super::png::{read_text_chunks, SPEC_CHUNK};

/// Why a file's metadata could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PngInfoError {
    #[error("not a readable PNG: {0}")]
    NotPng(String),
}

/// The text chunks of one PNG, with the two that carry a recipe picked out.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PngInfo {
    /// The A1111-style `parameters` text, if present.
    pub parameters: Option<String>,
    /// sdq's job spec (the `sdq` chunk), if present and valid JSON.
    pub spec: Option<Value>,
    /// Every text chunk, `parameters` and `sdq` included, in file order.
    pub chunks: Vec<(String, String)>,
}

/// A parsed `parameters` text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parameters {
    pub prompt: String,
    pub negative_prompt: String,
    /// The settings line as `(key, value)`, in order, quotes removed.
    pub settings: Vec<(String, String)>,
}

impl Parameters {
    /// The value of a setting, by its exact key.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.settings
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads the text chunks of a PNG.
pub fn read(bytes: &[u8]) -> Result<PngInfo, PngInfoError> {
    let chunks = read_text_chunks(bytes).map_err(|e| PngInfoError::NotPng(e.to_string()))?;
    let find = |key: &str| {
        chunks
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    Ok(PngInfo {
        parameters: find("parameters"),
        spec: find(SPEC_CHUNK)
            .and_then(|s| serde_json::from_str::<Value>(&s).ok())
            .filter(Value::is_object),
        chunks,
    })
}

/// Splits an A1111 `parameters` text into prompt, negative prompt and settings.
pub fn parse_parameters(text: &str) -> Parameters {
    let mut lines: Vec<&str> = text.trim_end().lines().collect();
    let mut out = Parameters::default();
    // The last line holds the settings when it looks like `Key: value, Key: value, ...`.
    if let Some(last) = lines.last() {
        let settings = parse_settings(last);
        if settings.len() >= 3 || settings.iter().any(|(k, _)| k == "Steps") {
            out.settings = settings;
            lines.pop();
        }
    }
    let mut negative: Option<Vec<&str>> = None;
    let mut prompt = Vec::new();
    for line in lines {
        match (&mut negative, line.strip_prefix("Negative prompt:")) {
            (None, Some(rest)) => negative = Some(vec![rest.trim_start()]),
            (Some(neg), _) => neg.push(line),
            (None, None) => prompt.push(line),
        }
    }
    out.prompt = prompt.join("\n").trim().to_string();
    out.negative_prompt = negative.map(|n| n.join("\n")).unwrap_or_default();
    out.negative_prompt = out.negative_prompt.trim().to_string();
    out
}

/// Splits `Key: value, Key: "quoted, value", ...`. Text that is not of that shape yields
/// the pairs found before it.
fn parse_settings(line: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = line.trim();
    while !rest.is_empty() {
        let Some(colon) = rest.find(':') else { break };
        let key = rest[..colon].trim();
        // A key is a short label; a long or comma-holding one means this is prose.
        if key.is_empty() || key.len() > 64 || key.contains(',') {
            break;
        }
        let after = rest[colon + 1..].trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            match closing_quote(quoted) {
                Some(end) => (unescape(&quoted[..end]), &quoted[end + 1..]),
                None => (after.to_string(), ""),
            }
        } else {
            match after.find(", ") {
                Some(end) => (after[..end].trim().to_string(), &after[end..]),
                None => (after.trim().to_string(), ""),
            }
        };
        out.push((key.to_string(), value));
        rest = next
            .trim_start()
            .strip_prefix(',')
            .unwrap_or(next)
            .trim_start();
    }
    out
}

fn closing_quote(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            '"' if !escaped => return Some(i),
            _ => escaped = false,
        }
    }
    None
}

fn unescape(s: &str) -> String {
    s.replace("\\\"", "\"").replace("\\\\", "\\")
}

impl PngInfo {
    /// Where the recipe comes from: `"sdq"` (our JSON chunk), `"a1111"` (only the
    /// `parameters` text), or `None`.
    pub fn source(&self) -> Option<&'static str> {
        if self.spec.is_some() {
            Some("sdq")
        } else if self.parameters.is_some() {
            Some("a1111")
        } else {
            None
        }
    }

    /// The recipe as job-request fields. sdq's own chunk is the spec itself; an A1111
    /// text is mapped field by field, with `scheduler` resolving A1111's `Sampler` and
    /// `Schedule type` to one of ours (a pair it cannot map leaves `scheduler` out).
    pub fn recipe(&self, scheduler: impl Fn(&str, Option<&str>) -> Option<String>) -> Value {
        if let Some(spec) = &self.spec {
            return spec.clone();
        }
        let Some(text) = &self.parameters else {
            return json!({});
        };
        let p = parse_parameters(text);
        let mut recipe = Map::new();
        recipe.insert("prompt".into(), json!(p.prompt));
        recipe.insert("negative_prompt".into(), json!(p.negative_prompt));
        let int = |key: &str| p.get(key).and_then(|v| v.trim().parse::<u64>().ok());
        let float = |key: &str| p.get(key).and_then(|v| v.trim().parse::<f64>().ok());
        if let Some(model) = p.get("Model") {
            recipe.insert("model".into(), json!(model));
        }
        if let Some((w, h)) = p.get("Size").and_then(|s| s.split_once('x')) {
            if let (Ok(w), Ok(h)) = (w.trim().parse::<u32>(), h.trim().parse::<u32>()) {
                recipe.insert("width".into(), json!(w));
                recipe.insert("height".into(), json!(h));
            }
        }
        if let Some(steps) = int("Steps") {
            recipe.insert("steps".into(), json!(steps));
        }
        if let Some(cfg) = float("CFG scale") {
            recipe.insert("guidance_scale".into(), json!(cfg));
        }
        if let Some(seed) = int("Seed") {
            recipe.insert("seed".into(), json!(seed));
        }
        if let Some(sampler) = p.get("Sampler") {
            if let Some(name) = scheduler(sampler, p.get("Schedule type")) {
                recipe.insert("scheduler".into(), json!(name));
            }
        }
        if let Some(strength) = float("Denoising strength") {
            recipe.insert("strength".into(), json!(strength));
        }
        Value::Object(recipe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::png::{encode, PngMetadata};

    /// (text, prompt, negative prompt, settings)
    type Case<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, &'a str)]);

    #[test]
    fn parameters_split_into_prompt_negative_and_settings() {
        let cases: &[Case] = &[
            (
                "a cat\nNegative prompt: blurry\nSteps: 4, Sampler: Euler a, CFG scale: 7.5, Seed: 42, Size: 64x48, Model: tiny",
                "a cat",
                "blurry",
                &[("Steps", "4"), ("Sampler", "Euler a"), ("CFG scale", "7.5"), ("Seed", "42"), ("Size", "64x48"), ("Model", "tiny")],
            ),
            (
                "line one,\nline two\nNegative prompt: bad\nworse\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, Lora hashes: \"a: 1, b: 2\", Version: v1.10.1",
                "line one,\nline two",
                "bad\nworse",
                &[("Steps", "20"), ("Sampler", "DPM++ 2M"), ("Schedule type", "Karras"), ("Lora hashes", "a: 1, b: 2"), ("Version", "v1.10.1")],
            ),
            ("just a prompt, with commas: and a colon", "just a prompt, with commas: and a colon", "", &[]),
            ("Steps: 1, Seed: 2, Size: 8x8", "", "", &[("Steps", "1"), ("Seed", "2"), ("Size", "8x8")]),
            ("a \"quoted\" thing\nSteps: 3, Note: \"say \\\"hi\\\", ok\", Seed: 9", "a \"quoted\" thing", "", &[("Steps", "3"), ("Note", "say \"hi\", ok"), ("Seed", "9")]),
            ("", "", "", &[]),
        ];
        for (text, prompt, negative, settings) in cases {
            let p = parse_parameters(text);
            assert_eq!(p.prompt, *prompt, "{text}");
            assert_eq!(p.negative_prompt, *negative, "{text}");
            let got: Vec<(&str, &str)> = p
                .settings
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            assert_eq!(got, settings.to_vec(), "{text}");
        }
    }

    fn map(sampler: &str, schedule: Option<&str>) -> Option<String> {
        match (sampler, schedule) {
            ("DPM++ 2M", Some("Karras")) => Some("dpmpp-2m-karras".into()),
            ("Euler a", _) => Some("euler-a".into()),
            _ => None,
        }
    }

    #[test]
    fn a1111_text_becomes_a_recipe() {
        let info = PngInfo {
            parameters: Some("a fox\nNegative prompt: ugly\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234, Size: 512x768, Model hash: abc, Model: dreamshaper, Denoising strength: 0.4".into()),
            ..Default::default()
        };
        assert_eq!(info.source(), Some("a1111"));
        assert_eq!(
            info.recipe(map),
            json!({"prompt": "a fox", "negative_prompt": "ugly", "model": "dreamshaper",
                   "width": 512, "height": 768, "steps": 20, "guidance_scale": 6.5,
                   "seed": 1234, "scheduler": "dpmpp-2m-karras", "strength": 0.4})
        );
        let unknown = PngInfo {
            parameters: Some("x\nSteps: 2, Sampler: LMS, Seed: 1".into()),
            ..Default::default()
        };
        assert!(unknown.recipe(map).get("scheduler").is_none());
        assert_eq!(PngInfo::default().source(), None);
        assert_eq!(PngInfo::default().recipe(map), json!({}));
    }

    #[test]
    fn sdq_pngs_carry_their_spec() {
        let meta = PngMetadata {
            prompt: "a cat".into(),
            negative_prompt: String::new(),
            steps: 4,
            sampler: "Euler a".into(),
            guidance_scale: 7.5,
            seed: 42,
            width: 1,
            height: 1,
            model: "tiny".into(),
            strength: None,
            spec: json!({"prompt": "a cat", "seed": 42, "scheduler": "euler-a"}),
        };
        let png = encode(1, 1, &[1, 2, 3], &meta).unwrap();
        let info = read(&png).unwrap();
        assert_eq!(info.source(), Some("sdq"));
        assert_eq!(info.recipe(map)["scheduler"], "euler-a");
        let params = parse_parameters(info.parameters.as_deref().unwrap());
        assert_eq!(params.prompt, "a cat");
        assert_eq!(params.get("Seed"), Some("42"));
        assert!(read(b"not a png").is_err());
    }
}
