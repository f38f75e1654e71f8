//! Prompts into what the UNet reads: tokenized in 77-token windows, encoded by one or
//! (SDXL) two CLIP text encoders, batched with the negative prompt under guidance.

use candle_core::{DType, Tensor, D};

use super::pipeline::StableDiffusion;
use super::request::GenerateRequest;
use super::tokenizer::LongPrompt;
use super::InferenceError;

/// A prompt as the UNet reads it.
pub(super) struct PromptEmbeddings {
    /// `[1, 77 × windows, cross_attention_dim]`.
    pub(super) tokens: Tensor,
    /// SDXL: text_encoder_2's projected pooled output of the first window, `[1, proj]`.
    pub(super) pooled: Option<Tensor>,
}

impl PromptEmbeddings {
    /// diffusers' `force_zeros_for_empty_prompt`: zeros shaped like `like`.
    pub(super) fn zeros_like(like: &Self) -> candle_core::Result<Self> {
        Ok(Self {
            tokens: like.tokens.zeros_like()?,
            pooled: like.pooled.as_ref().map(Tensor::zeros_like).transpose()?,
        })
    }
}

/// SDXL's micro-conditioning ids, in diffusers' order: original size (h, w), crop
/// top-left (y, x), target size (h, w). sdq neither crops nor resizes, so the original
/// and target sizes are both the requested size, which is diffusers' default too.
pub fn add_time_ids(height: usize, width: usize) -> [f32; 6] {
    let (h, w) = (height as f32, width as f32);
    [h, w, 0.0, 0.0, h, w]
}

/// Per-token conditioning of the whole UNet batch (negative rows first under
/// classifier-free guidance, one row per image) and SDXL's added conditions beside it.
pub(super) struct Conditioning {
    pub(super) tokens: Tensor,
    /// SDXL: `text_embeds` `[rows, proj]` and `time_ids` `[rows, 6]`.
    pub(super) added: Option<(Tensor, Tensor)>,
}

impl Conditioning {
    /// Stacks `uncond` (if guided) and `cond`, each repeated once per image.
    pub(super) fn batch(
        cond: PromptEmbeddings,
        uncond: Option<PromptEmbeddings>,
        images: usize,
        time_ids: [f32; 6],
        dtype: DType,
    ) -> candle_core::Result<Self> {
        let parts: Vec<PromptEmbeddings> = uncond.into_iter().chain([cond]).collect();
        let rows = parts.len() * images;
        let tokens = parts
            .iter()
            .map(|p| p.tokens.repeat((images, 1, 1)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let pooled = parts
            .iter()
            .map(|p| p.pooled.as_ref().map(|t| t.repeat((images, 1))))
            .collect::<Option<candle_core::Result<Vec<_>>>>()
            .transpose()?;
        let added = match pooled {
            Some(pooled) => {
                let device = tokens[0].device();
                let ids = Tensor::new(&time_ids, device)?
                    .unsqueeze(0)?
                    .repeat((rows, 1))?
                    .to_dtype(dtype)?;
                Some((Tensor::cat(&pooled, 0)?.to_dtype(dtype)?, ids))
            }
            None => None,
        };
        Ok(Self {
            tokens: Tensor::cat(&tokens, 0)?.to_dtype(dtype)?,
            added,
        })
    }
}

impl StableDiffusion {
    /// The UNet's conditioning for a request: the prompt (and, under guidance, the
    /// negative prompt) encoded over the same number of windows, batched per image.
    pub(super) fn conditioning(
        &self,
        req: &GenerateRequest,
        use_cfg: bool,
    ) -> Result<Conditioning, InferenceError> {
        // Prompt and negative prompt must cover the same number of 77-token windows.
        let count = |text: &str| self.window_count(text, req.long_prompt);
        let windows = if use_cfg {
            count(&req.prompt)?.max(count(&req.negative_prompt)?)
        } else {
            count(&req.prompt)?
        };
        let cond = self.encode_prompt(&req.prompt, req.long_prompt, windows)?;
        let uncond = if !use_cfg {
            None
        } else if req.negative_prompt.is_empty()
            && self
                .xl
                .as_ref()
                .is_some_and(|xl| xl.force_zeros_for_empty_prompt)
        {
            // Our empty negative prompt is diffusers' `negative_prompt=None`.
            Some(PromptEmbeddings::zeros_like(&cond)?)
        } else {
            Some(self.encode_prompt(&req.negative_prompt, req.long_prompt, windows)?)
        };
        Ok(Conditioning::batch(
            cond,
            uncond,
            req.num_images,
            add_time_ids(req.height, req.width),
            self.dtype,
        )?)
    }

    /// How many 77-token windows `text` needs (the larger count of SDXL's two tokenizers).
    fn window_count(&self, text: &str, mode: LongPrompt) -> Result<usize, InferenceError> {
        let first = self.tokenizer.windows(text, mode, 1)?.len();
        Ok(match &self.xl {
            Some(xl) => first.max(xl.tokenizer_2.windows(text, mode, 1)?.len()),
            None => first,
        })
    }

    /// Encodes a prompt, window by window, concatenated along the sequence.
    ///
    /// SD 1.x/2.x condition on the final, normalised hidden state. SDXL conditions on the
    /// penultimate hidden state (before the final norm) of each of its two encoders,
    /// joined on the feature axis, and adds text_encoder_2's projected pooled output of
    /// the first window (the only one diffusers ever sees).
    pub(super) fn encode_prompt(
        &self,
        text: &str,
        mode: LongPrompt,
        windows: usize,
    ) -> Result<PromptEmbeddings, InferenceError> {
        let first = self.tokenizer.windows(text, mode, windows)?;
        let ids_tensor = |ids: &[u32]| Tensor::new(ids, &self.device)?.unsqueeze(0);
        let Some(xl) = &self.xl else {
            let encoded = first
                .iter()
                .map(|ids| {
                    Ok(self
                        .text_encoder
                        .forward(&ids_tensor(ids)?)?
                        .last_hidden_state)
                })
                .collect::<Result<Vec<_>, InferenceError>>()?;
            return Ok(PromptEmbeddings {
                tokens: Tensor::cat(&encoded, 1)?,
                pooled: None,
            });
        };
        let second = xl.tokenizer_2.windows(text, mode, windows)?;
        if first.len() != second.len() {
            return Err(InferenceError::InvalidRequest(
                "SDXL's two tokenizers split this prompt into different window counts".into(),
            ));
        }
        let penultimate = |hidden: &[Tensor]| hidden[hidden.len().saturating_sub(2)].clone();
        let mut tokens = Vec::with_capacity(first.len());
        let mut pooled = None;
        for (ids_1, ids_2) in first.iter().zip(&second) {
            let one = self.text_encoder.forward(&ids_tensor(ids_1)?)?;
            let (two, projected) = xl.text_encoder_2.forward(ids_2)?;
            tokens.push(Tensor::cat(
                &[
                    penultimate(&one.hidden_states),
                    penultimate(&two.hidden_states),
                ],
                D::Minus1,
            )?);
            pooled.get_or_insert(projected);
        }
        Ok(PromptEmbeddings {
            tokens: Tensor::cat(&tokens, 1)?,
            pooled,
        })
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn time_ids_are_original_size_crop_and_target_size_height_first() {
        assert_eq!(add_time_ids(48, 64), [48.0, 64.0, 0.0, 0.0, 48.0, 64.0]);
        assert_eq!(
            add_time_ids(1024, 768),
            [1024.0, 768.0, 0.0, 0.0, 1024.0, 768.0]
        );
    }

    #[test]
    fn sdxl_conditioning_joins_both_encoders_and_zeroes_an_empty_negative_prompt() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("xl");
        crate::inference::tiny::write_kind(&folder, 0, crate::inference::tiny::TinyKind::Sdxl)
            .unwrap();
        let sd = StableDiffusion::load(&folder, &Device::Cpu, DType::F32).unwrap();
        let xl = sd
            .xl
            .as_ref()
            .expect("an SDXL folder loads both text encoders");
        assert!(xl.force_zeros_for_empty_prompt);

        // Penultimate states of a 32- and a 64-wide encoder side by side; the pooled
        // output is text_encoder_2's projection (24 wide).
        let cond = sd
            .encode_prompt("a photo of a cat", LongPrompt::Chunk, 1)
            .unwrap();
        assert_eq!(cond.tokens.dims(), &[1, 77, 96]);
        let pooled = cond.pooled.as_ref().unwrap();
        assert_eq!(pooled.dims(), &[1, 24]);
        let ids_1 = sd
            .tokenizer
            .windows("a photo of a cat", LongPrompt::Chunk, 1)
            .unwrap();
        let first = sd
            .text_encoder
            .forward(
                &Tensor::new(ids_1[0].as_slice(), &Device::Cpu)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap(),
            )
            .unwrap();
        let left = cond.tokens.narrow(2, 0, 32).unwrap();
        let penultimate = &first.hidden_states[first.hidden_states.len() - 2];
        let gap = (left - penultimate)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert_eq!(
            gap.to_scalar::<f32>().unwrap(),
            0.0,
            "left half is encoder 1's penultimate state"
        );

        // Two windows for a long prompt; the pooled output stays the first window's.
        let long = "a photo of a cat, ".repeat(20);
        let chunked = sd.encode_prompt(&long, LongPrompt::Chunk, 1).unwrap();
        assert_eq!(chunked.tokens.dims(), &[1, 154, 96]);
        assert_eq!(chunked.pooled.as_ref().unwrap().dims(), &[1, 24]);

        let zeros = PromptEmbeddings::zeros_like(&cond).unwrap();
        let batch =
            Conditioning::batch(cond, Some(zeros), 2, add_time_ids(48, 64), DType::F32).unwrap();
        assert_eq!(batch.tokens.dims(), &[4, 77, 96]);
        let (text_embeds, time_ids) = batch.added.as_ref().unwrap();
        assert_eq!(text_embeds.dims(), &[4, 24]);
        // Negative rows first, all zero; positive rows carry the pooled output.
        let sums: Vec<f32> = text_embeds
            .abs()
            .unwrap()
            .sum(1)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(&sums[..2], &[0.0, 0.0]);
        assert!(sums[2] > 0.0 && sums[2] == sums[3]);
        assert_eq!(
            time_ids.to_vec2::<f32>().unwrap(),
            vec![vec![48.0, 64.0, 0.0, 0.0, 48.0, 64.0]; 4]
        );
    }
}
