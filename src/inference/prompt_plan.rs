//! A prompt laid out into the text encoder's windows: which token (or embedding vector)
//! sits at each position, and with which weight.
//!
//! Plain prompts give exactly the windows they always had: content ids in chunks of 75,
//! each framed by the start and end markers and padded. Weighted fragments are tokenized
//! one by one (as A1111 does), `BREAK` closes the current window, and an embedding's
//! vectors never straddle two windows.

use std::sync::Arc;

use super::embeddings::{Embedding, EmbeddingLibrary, Piece};
use super::prompt_weights::{self, Fragment};
use super::tokenizer::{LongPrompt, PromptTokenizer};
use super::InferenceError;

/// What sits at one position of a window.
#[derive(Debug, Clone)]
pub enum Slot {
    Token(u32),
    /// Row `row` of embedding `embedding` (an index into [`Plan::embeddings`]).
    Vector {
        embedding: usize,
        row: usize,
    },
}

/// One window: exactly `window` slots and as many weights.
#[derive(Debug, Clone)]
pub struct Window {
    pub slots: Vec<Slot>,
    pub weights: Vec<f32>,
}

impl Window {
    /// Whether any weight differs from 1 (the weighted path is then needed).
    pub fn is_weighted(&self) -> bool {
        self.weights.iter().any(|&w| w != 1.0)
    }
}

/// A whole prompt for one tokenizer.
#[derive(Debug, Clone)]
pub struct Plan {
    pub windows: Vec<Window>,
    /// The embeddings the slots refer to, in order of first use.
    pub embeddings: Vec<Arc<Embedding>>,
}

enum Item {
    Token(u32, f32),
    Vectors(usize, usize, f32),
    Break,
}

/// Lays `text` out for `tokenizer`; `min_windows` pads with empty windows so that a
/// negative prompt can match its prompt's length.
pub fn plan(
    tokenizer: &PromptTokenizer,
    text: &str,
    mode: LongPrompt,
    library: &EmbeddingLibrary,
    min_windows: usize,
) -> Result<Plan, InferenceError> {
    let per_window = tokenizer.window() - 2;
    let mut embeddings: Vec<Arc<Embedding>> = Vec::new();
    let mut items = Vec::new();
    for fragment in prompt_weights::parse(text) {
        let (text, weight) = match fragment {
            Fragment::Break => {
                items.push(Item::Break);
                continue;
            }
            Fragment::Text(text, weight) => (text, weight),
        };
        for piece in library.split(&text) {
            match piece {
                Piece::Text(t) => items.extend(
                    tokenizer
                        .content_ids(t)?
                        .into_iter()
                        .map(|id| Item::Token(id, weight)),
                ),
                Piece::Embedding(e) => {
                    if e.vectors() > per_window {
                        return Err(InferenceError::InvalidRequest(format!(
                            "embedding '{}' has {} vectors, more than a {per_window}-token window",
                            e.name,
                            e.vectors()
                        )));
                    }
                    let index = match embeddings.iter().position(|x| Arc::ptr_eq(x, &e)) {
                        Some(i) => i,
                        None => {
                            embeddings.push(e.clone());
                            embeddings.len() - 1
                        }
                    };
                    items.push(Item::Vectors(index, e.vectors(), weight));
                }
            }
        }
    }

    let mut contents: Vec<Vec<(Slot, f32)>> = Vec::new();
    let mut current: Vec<(Slot, f32)> = Vec::new();
    for item in items {
        match item {
            Item::Break => contents.push(std::mem::take(&mut current)),
            Item::Token(id, w) => {
                if current.len() == per_window {
                    contents.push(std::mem::take(&mut current));
                }
                current.push((Slot::Token(id), w));
            }
            Item::Vectors(embedding, n, w) => {
                if current.len() + n > per_window {
                    contents.push(std::mem::take(&mut current));
                }
                current.extend((0..n).map(|row| (Slot::Vector { embedding, row }, w)));
            }
        }
    }
    if !current.is_empty() || contents.is_empty() {
        contents.push(current);
    }
    if mode == LongPrompt::Truncate {
        // diffusers keeps the first window's worth of tokens.
        contents.truncate(1);
    }
    while contents.len() < min_windows {
        contents.push(Vec::new());
    }
    let windows = contents
        .into_iter()
        .map(|content| {
            let mut slots = Vec::with_capacity(tokenizer.window());
            let mut weights = Vec::with_capacity(tokenizer.window());
            slots.push(Slot::Token(tokenizer.bos()));
            weights.push(1.0);
            for (slot, w) in content {
                slots.push(slot);
                weights.push(w);
            }
            slots.push(Slot::Token(tokenizer.eos()));
            weights.push(1.0);
            while slots.len() < tokenizer.window() {
                slots.push(Slot::Token(tokenizer.pad()));
                weights.push(1.0);
            }
            Window { slots, weights }
        })
        .collect();
    Ok(Plan {
        windows,
        embeddings,
    })
}
