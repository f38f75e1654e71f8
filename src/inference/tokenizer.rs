//! CLIP's byte-level BPE tokenizer, loaded from `tokenizer.json` or from `vocab.json` +
//! `merges.txt`, and the 77-token windows that the text encoder reads.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Lowercase, Replace, Sequence as NormalizerSequence, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{Model, SplitDelimiterBehavior, Tokenizer};

use super::InferenceError;

/// CLIP's word-splitting pattern (the one in every SD `tokenizer.json`).
const CLIP_SPLIT: &str = r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
/// Start-of-text marker.
pub const BOS: &str = "<|startoftext|>";
/// End-of-text marker, also the padding token of SD 1.x.
pub const EOS: &str = "<|endoftext|>";

/// What to do with prompts longer than one 77-token window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LongPrompt {
    /// Encode in 75-token chunks and concatenate the embeddings (as A1111 does).
    #[default]
    Chunk,
    /// Cut to one window, exactly as diffusers does.
    Truncate,
}

/// The tokenizer plus the ids that frame and pad every window.
pub struct PromptTokenizer {
    inner: Backend,
    bos: u32,
    eos: u32,
    pad: u32,
    window: usize,
}

/// Where ids come from: a model folder's tokenizer, or CLIP's own vocabulary (bundled,
/// for single-file checkpoints, which carry no tokenizer).
enum Backend {
    Folder(Box<Tokenizer>),
    Bundled(Box<instant_clip_tokenizer::Tokenizer>),
}

#[derive(Deserialize)]
struct TokenizerConfig {
    #[serde(default)]
    pad_token: Option<TokenName>,
    #[serde(default)]
    model_max_length: Option<f64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TokenName {
    Plain(String),
    Added { content: String },
}

impl PromptTokenizer {
    /// Loads from a `tokenizer/` folder; `window` is the text encoder's position count.
    pub fn load(dir: &Path, window: usize) -> Result<Self, InferenceError> {
        let json = dir.join("tokenizer.json");
        let mut inner = if json.exists() {
            Tokenizer::from_file(&json).map_err(|e| InferenceError::invalid_model(&json, e))?
        } else {
            build_clip_tokenizer(&dir.join("vocab.json"), &dir.join("merges.txt"))?
        };
        let config_path = dir.join("tokenizer_config.json");
        let config: Option<TokenizerConfig> = if config_path.exists() {
            Some(super::model_config::read_json(&config_path)?)
        } else {
            None
        };
        let id = |token: &str| {
            inner
                .token_to_id(token)
                .ok_or_else(|| InferenceError::invalid_model(dir, format!("no '{token}' token")))
        };
        let bos = id(BOS)?;
        let eos = id(EOS)?;
        let pad_name = match config.as_ref().and_then(|c| c.pad_token.as_ref()) {
            Some(TokenName::Plain(t)) | Some(TokenName::Added { content: t }) => Some(t.clone()),
            None => None,
        };
        let pad = match &pad_name {
            Some(t) => id(t)?,
            None => eos,
        };
        if let Some(name) = pad_name.filter(|t| t != BOS && t != EOS) {
            add_special(&mut inner, &name)
                .map_err(|e| InferenceError::invalid_model(&config_path, e))?;
        }
        let window = config
            .and_then(|c| c.model_max_length)
            .filter(|m| *m >= 3.0 && (*m as usize) <= window)
            .map(|m| m as usize)
            .unwrap_or(window);
        Ok(Self {
            inner: Backend::Folder(Box::new(inner)),
            bos,
            eos,
            pad,
            window,
        })
    }

    /// CLIP's tokenizer (the vocabulary every published SD text encoder uses), padding
    /// with the end marker (SD 1.x, SDXL's first encoder) or "!" (OpenCLIP encoders).
    /// The vocabulary ships inside the `instant-clip-tokenizer` crate, so nothing is
    /// downloaded.
    pub fn bundled_clip(pad: &str, window: usize) -> Result<Self, InferenceError> {
        let inner = instant_clip_tokenizer::Tokenizer::new();
        let bos = inner.start_of_text().to_u16() as u32;
        let eos = inner.end_of_text().to_u16() as u32;
        let pad = match pad {
            EOS => eos,
            // "!" is the first byte token of CLIP's vocabulary.
            "!" => 0,
            other => {
                return Err(InferenceError::InvalidRequest(format!(
                    "the bundled CLIP tokenizer cannot pad with '{other}'"
                )))
            }
        };
        Ok(Self {
            inner: Backend::Bundled(Box::new(inner)),
            bos,
            eos,
            pad,
            window,
        })
    }

    /// The token ids of `text` without the start/end markers.
    pub fn content_ids(&self, text: &str) -> Result<Vec<u32>, InferenceError> {
        match &self.inner {
            Backend::Folder(inner) => {
                let enc = inner.encode(text, false).map_err(|e| {
                    InferenceError::InvalidRequest(format!("cannot tokenize prompt: {e}"))
                })?;
                Ok(enc.get_ids().to_vec())
            }
            Backend::Bundled(inner) => {
                let mut out = Vec::new();
                inner.encode(text, &mut out);
                Ok(out.iter().map(|t| t.to_u16() as u32).collect())
            }
        }
    }

    /// Splits `text` into framed, padded windows of exactly `window` ids each.
    ///
    /// `min_windows` pads the result with empty windows so that a negative prompt can be
    /// made as long as its positive prompt.
    pub fn windows(
        &self,
        text: &str,
        mode: LongPrompt,
        min_windows: usize,
    ) -> Result<Vec<Vec<u32>>, InferenceError> {
        let ids = self.content_ids(text)?;
        let per_window = self.window - 2;
        let mut chunks: Vec<&[u32]> = match mode {
            LongPrompt::Truncate => vec![&ids[..ids.len().min(per_window)]],
            LongPrompt::Chunk if ids.is_empty() => vec![&ids[..]],
            LongPrompt::Chunk => ids.chunks(per_window).collect(),
        };
        while chunks.len() < min_windows {
            chunks.push(&[]);
        }
        Ok(chunks
            .into_iter()
            .map(|chunk| {
                let mut w = Vec::with_capacity(self.window);
                w.push(self.bos);
                w.extend_from_slice(chunk);
                w.push(self.eos);
                w.resize(self.window, self.pad);
                w
            })
            .collect())
    }

    /// How many content tokens a prompt has (to warn when truncating).
    pub fn token_count(&self, text: &str) -> Result<usize, InferenceError> {
        Ok(self.content_ids(text)?.len())
    }

    /// Ids per window, markers included.
    pub fn window(&self) -> usize {
        self.window
    }

    /// The start-of-text id that opens every window.
    pub fn bos(&self) -> u32 {
        self.bos
    }

    /// The end-of-text id that closes every window's content.
    pub fn eos(&self) -> u32 {
        self.eos
    }

    /// The id that fills a window after its end marker.
    pub fn pad(&self) -> u32 {
        self.pad
    }
}

/// Makes `token` an added special token, as transformers does with every special token
/// it is given: SD 2's pad token "!" then never merges with neighbouring "!" in a
/// prompt ("!!!" is three pad ids), exactly as diffusers tokenizes it.
pub(crate) fn add_special(tokenizer: &mut Tokenizer, token: &str) -> tokenizers::Result<()> {
    tokenizer.add_special_tokens([tokenizers::AddedToken::from(token.to_string(), true)])?;
    Ok(())
}

/// Builds CLIP's fast tokenizer from its two plain files, as transformers would.
pub fn build_clip_tokenizer(vocab: &Path, merges: &Path) -> Result<Tokenizer, InferenceError> {
    let (vocab_s, merges_s) = (vocab.to_string_lossy(), merges.to_string_lossy());
    let bpe = BPE::from_file(&vocab_s, &merges_s)
        .end_of_word_suffix("</w>".into())
        .unk_token(EOS.into())
        .build()
        .map_err(|e| InferenceError::invalid_model(vocab, e))?;
    let bad = |e: tokenizers::Error| InferenceError::invalid_model(vocab, e);
    let bos = bpe
        .token_to_id(BOS)
        .ok_or_else(|| bad("vocab.json has no start token".into()))?;
    let eos = bpe
        .token_to_id(EOS)
        .ok_or_else(|| bad("vocab.json has no end token".into()))?;
    let mut tok = Tokenizer::new(bpe);
    tok.with_normalizer(Some(NormalizerSequence::new(vec![
        NFC.into(),
        Replace::new(
            tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".into()),
            " ",
        )
        .map_err(bad)?
        .into(),
        Lowercase.into(),
    ])))
    .map_err(bad)?;
    tok.with_pre_tokenizer(Some(PreTokenizerSequence::new(vec![
        Split::new(
            SplitPattern::Regex(CLIP_SPLIT.into()),
            SplitDelimiterBehavior::Removed,
            true,
        )
        .map_err(bad)?
        .into(),
        ByteLevel::new(false, true, false).into(),
    ])));
    tok.with_post_processor(Some(
        RobertaProcessing::new((EOS.into(), eos), (BOS.into(), bos))
            .trim_offsets(false)
            .add_prefix_space(false),
    ));
    tok.with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::default()));
    // As in every published tokenizer.json: a prompt that spells out a marker gets the
    // marker's id, as transformers' CLIPTokenizer gives it, not the pieces of its text.
    tok.add_special_tokens([
        tokenizers::AddedToken::from(BOS, true),
        tokenizers::AddedToken::from(EOS, true),
    ])
    .map_err(bad)?;
    Ok(tok)
}
