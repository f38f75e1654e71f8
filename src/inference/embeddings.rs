//! Textual-inversion embeddings: learnt token vectors that a prompt calls by name.
//!
//! Files are A1111's and diffusers' `.safetensors` forms: `emb_params` or
//! `string_to_param.*` (`[vectors, width]`), a single tensor under any key (diffusers'
//! `learned_embeds`), or SDXL's pair `clip_l` / `clip_g` (one part per text encoder).
//! A prompt uses one by its file name, as a whole word, in either prompt; each vector
//! takes one token position.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::weights::open_safetensors;
use super::InferenceError;

/// One embedding: `[vectors, width]` per text encoder.
#[derive(Debug, Clone)]
pub struct Embedding {
    /// The word that calls it (its file name).
    pub name: String,
    /// For the first (or only) text encoder.
    pub first: Tensor,
    /// SDXL: for text_encoder_2.
    pub second: Option<Tensor>,
}

impl Embedding {
    /// How many token positions it takes.
    pub fn vectors(&self) -> usize {
        self.first.dim(0).unwrap_or(0)
    }

    /// Reads one embedding file; `name` is the word prompts use.
    pub fn read(path: &Path, name: &str) -> Result<Self, InferenceError> {
        let bad = |why: String| {
            InferenceError::InvalidRequest(format!(
                "embedding '{name}' ({}): {why}",
                path.display()
            ))
        };
        let file = open_safetensors(path).map_err(|e| bad(e.to_string()))?;
        let names: Vec<String> = file.tensors().into_iter().map(|(n, _)| n).collect();
        let load = |key: &str| -> Result<Tensor, InferenceError> {
            let t = file
                .load(key, &Device::Cpu)
                .map_err(|e| bad(e.to_string()))?
                .to_dtype(DType::F32)?;
            match t.dims().len() {
                1 => Ok(t.unsqueeze(0)?),
                2 => Ok(t),
                _ => Err(bad(format!(
                    "'{key}' has shape {:?}, not [vectors, width]",
                    t.dims()
                ))),
            }
        };
        let has = |k: &str| names.iter().any(|n| n == k);
        let (first, second) = if has("clip_l") && has("clip_g") {
            (load("clip_l")?, Some(load("clip_g")?))
        } else if has("emb_params") {
            (load("emb_params")?, None)
        } else if let Some(key) = names.iter().find(|n| n.starts_with("string_to_param")) {
            (load(key)?, None)
        } else if names.len() == 1 {
            (load(&names[0])?, None)
        } else {
            return Err(bad(format!(
                "not a textual-inversion file (keys: {})",
                names.join(", ")
            )));
        };
        if let Some(second) = &second {
            if second.dim(0)? != first.dim(0)? {
                return Err(bad("clip_l and clip_g have different vector counts".into()));
            }
        }
        if first.dim(0)? == 0 {
            return Err(bad("the embedding has no vectors".into()));
        }
        Ok(Self {
            name: name.to_string(),
            first,
            second,
        })
    }
}

/// The embeddings a model may use, by lowercase name (CLIP lowercases prompts).
#[derive(Debug, Clone, Default)]
pub struct EmbeddingLibrary {
    by_name: HashMap<String, Arc<Embedding>>,
}

impl EmbeddingLibrary {
    /// A library of the given embeddings.
    pub fn new(embeddings: impl IntoIterator<Item = Embedding>) -> Self {
        Self {
            by_name: embeddings
                .into_iter()
                .map(|e| (e.name.to_lowercase(), Arc::new(e)))
                .collect(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Every `.safetensors` embedding in `dir` (a missing folder is an empty library),
    /// and the files that could not be read, with why.
    pub fn read_dir(dir: &Path) -> (Self, Vec<String>) {
        let mut found = Vec::new();
        let mut errors = Vec::new();
        let Ok(read) = std::fs::read_dir(dir) else {
            return (Self::default(), errors);
        };
        let mut paths: Vec<_> = read.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths {
            let is_st = path.extension().and_then(|e| e.to_str()) == Some("safetensors");
            let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            if !is_st || stem.starts_with('.') {
                continue;
            }
            match Embedding::read(&path, stem) {
                Ok(e) => found.push(e),
                Err(e) => errors.push(e.to_string()),
            }
        }
        (Self::new(found), errors)
    }

    /// Splits `text` into plain text and embeddings called by name (whole words,
    /// case-insensitive), in order.
    pub fn split<'a>(&self, text: &'a str) -> Vec<Piece<'a>> {
        if self.by_name.is_empty() {
            return vec![Piece::Text(text)];
        }
        let mut pieces = Vec::new();
        let mut plain_from = 0;
        let word_char = |c: char| c.is_alphanumeric() || c == '_' || c == '-';
        let mut i = 0;
        while i < text.len() {
            let c = text[i..].chars().next().expect("in bounds");
            let starts_word =
                word_char(c) && text[..i].chars().next_back().is_none_or(|p| !word_char(p));
            if starts_word {
                let end = text[i..]
                    .find(|ch: char| !word_char(ch))
                    .map_or(text.len(), |e| i + e);
                if let Some(e) = self.by_name.get(&text[i..end].to_lowercase()) {
                    if plain_from < i {
                        pieces.push(Piece::Text(&text[plain_from..i]));
                    }
                    pieces.push(Piece::Embedding(e.clone()));
                    plain_from = end;
                }
                i = end;
            } else {
                i += c.len_utf8();
            }
        }
        if plain_from < text.len() || pieces.is_empty() {
            pieces.push(Piece::Text(&text[plain_from..]));
        }
        pieces
    }
}

/// Part of a prompt fragment.
#[derive(Debug, Clone)]
pub enum Piece<'a> {
    Text(&'a str),
    Embedding(Arc<Embedding>),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emb(name: &str, n: usize) -> Embedding {
        Embedding {
            name: name.into(),
            first: Tensor::zeros((n, 4), DType::F32, &Device::Cpu).unwrap(),
            second: None,
        }
    }

    fn shown(pieces: &[Piece]) -> Vec<String> {
        pieces
            .iter()
            .map(|p| match p {
                Piece::Text(t) => format!("'{t}'"),
                Piece::Embedding(e) => format!("<{}>", e.name),
            })
            .collect()
    }

    #[test]
    fn names_are_whole_words_in_any_case() {
        let lib = EmbeddingLibrary::new([emb("bad-hands", 2), emb("style_x", 1)]);
        assert_eq!(
            shown(&lib.split("a cat, Bad-Hands, (style_x:1.2) style_xy")),
            [
                "'a cat, '",
                "<bad-hands>",
                "', ('",
                "<style_x>",
                "':1.2) style_xy'"
            ]
        );
        assert_eq!(shown(&lib.split("plain")), ["'plain'"]);
        assert_eq!(shown(&lib.split("style_x")), ["<style_x>"]);
    }

    #[test]
    fn files_of_each_layout_read() {
        let dir = tempfile::tempdir().unwrap();
        let t = |n: usize, w: usize| Tensor::ones((n, w), DType::F32, &Device::Cpu).unwrap();
        let write = |file: &str, tensors: Vec<(&str, Tensor)>| {
            let path = dir.path().join(file);
            let map: HashMap<String, Tensor> = tensors
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            candle_core::safetensors::save(&map, &path).unwrap();
            path
        };
        let a =
            Embedding::read(&write("a.safetensors", vec![("emb_params", t(3, 8))]), "a").unwrap();
        assert_eq!((a.vectors(), a.second.is_none()), (3, true));
        let b = Embedding::read(&write("b.safetensors", vec![("<b>", t(1, 8))]), "b").unwrap();
        assert_eq!(b.vectors(), 1);
        let c = Embedding::read(
            &write(
                "c.safetensors",
                vec![("clip_l", t(2, 8)), ("clip_g", t(2, 16))],
            ),
            "c",
        )
        .unwrap();
        assert_eq!(c.second.unwrap().dims(), &[2, 16]);
        let err = Embedding::read(
            &write("d.safetensors", vec![("x", t(1, 8)), ("y", t(1, 8))]),
            "d",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("not a textual-inversion file"),
            "{err}"
        );
    }
}
