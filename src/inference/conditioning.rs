//! Prompts into what the UNet reads: laid out in 77-token windows (`prompt_plan.rs`:
//! A1111 weights, `BREAK`, embeddings), encoded by one or (SDXL) two CLIP text encoders
//! at the chosen clip skip, batched with the negative prompt under guidance.

use candle_core::{DType, Device, Tensor, D};

use super::clip::ClipTextModel;
use super::extra_networks::split_lora_tags;
use super::pipeline::StableDiffusion;
use super::prompt_plan::{plan, Plan, Slot, Window};
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
    /// `<lora:…>` tags are taken out of the text first (the caller applies the LoRAs).
    pub(super) fn conditioning(
        &self,
        req: &GenerateRequest,
        use_cfg: bool,
    ) -> Result<Conditioning, InferenceError> {
        let strip = |text: &str| {
            split_lora_tags(text)
                .map(|(text, _)| text)
                .map_err(|e| InferenceError::InvalidRequest(e.to_string()))
        };
        let prompt = strip(&req.prompt)?;
        let negative = strip(&req.negative_prompt)?;
        let clip_skip = req.clip_skip.unwrap_or(1);
        // Prompt and negative prompt must cover the same number of 77-token windows.
        let count = |text: &str| self.window_count(text, req.long_prompt);
        let windows = if use_cfg {
            count(&prompt)?.max(count(&negative)?)
        } else {
            count(&prompt)?
        };
        let cond = self.encode_prompt(&prompt, req.long_prompt, windows, clip_skip)?;
        let uncond = if !use_cfg {
            None
        } else if negative.is_empty()
            && self
                .xl
                .as_ref()
                .is_some_and(|xl| xl.force_zeros_for_empty_prompt)
        {
            // Our empty negative prompt is diffusers' `negative_prompt=None`.
            Some(PromptEmbeddings::zeros_like(&cond)?)
        } else {
            Some(self.encode_prompt(&negative, req.long_prompt, windows, clip_skip)?)
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
        let first = plan(&self.tokenizer, text, mode, &self.embeddings, 1)?
            .windows
            .len();
        Ok(match &self.xl {
            Some(xl) => first.max(
                plan(&xl.tokenizer_2, text, mode, &self.embeddings, 1)?
                    .windows
                    .len(),
            ),
            None => first,
        })
    }

    /// Encodes a prompt, window by window, concatenated along the sequence.
    ///
    /// SD 1.x/2.x condition on the final, normalised hidden state (with clip skip `n`,
    /// the state `n - 1` layers earlier, normalised too, as A1111 and diffusers do).
    /// SDXL conditions on the penultimate hidden state (before the final norm) of each
    /// of its two encoders (clip skip moves both further back), joined on the feature
    /// axis, and adds text_encoder_2's projected pooled output of the first window (the
    /// only one diffusers ever sees). Weighted tokens are scaled and the window's mean
    /// restored, per encoder, as A1111 does.
    pub(super) fn encode_prompt(
        &self,
        text: &str,
        mode: LongPrompt,
        windows: usize,
        clip_skip: usize,
    ) -> Result<PromptEmbeddings, InferenceError> {
        let first = plan(&self.tokenizer, text, mode, &self.embeddings, windows)?;
        let layer = |hidden: &[Tensor], back: usize| -> Result<Tensor, InferenceError> {
            hidden
                .len()
                .checked_sub(back)
                .filter(|&i| i > 0)
                .map(|i| hidden[i].clone())
                .ok_or_else(|| {
                    InferenceError::InvalidRequest(format!(
                        "clip_skip {clip_skip} is more than this text encoder's {} layers",
                        hidden.len().saturating_sub(1)
                    ))
                })
        };
        let Some(xl) = &self.xl else {
            let encoded = first
                .windows
                .iter()
                .map(|window| {
                    let (_, vectors) =
                        window_inputs(&self.text_encoder, window, &first, false, &self.device)?;
                    let out = self.text_encoder.forward_embeds(&vectors)?;
                    let z = if clip_skip <= 1 {
                        out.last_hidden_state
                    } else {
                        self.text_encoder
                            .final_norm(&layer(&out.hidden_states, clip_skip)?)?
                    };
                    Ok(emphasis(z, window)?)
                })
                .collect::<Result<Vec<_>, InferenceError>>()?;
            return Ok(PromptEmbeddings {
                tokens: Tensor::cat(&encoded, 1)?,
                pooled: None,
            });
        };
        let second = plan(&xl.tokenizer_2, text, mode, &self.embeddings, windows)?;
        if first.windows.len() != second.windows.len() {
            return Err(InferenceError::InvalidRequest(
                "SDXL's two tokenizers split this prompt into different window counts".into(),
            ));
        }
        let mut tokens = Vec::with_capacity(first.windows.len());
        let mut pooled = None;
        for (w1, w2) in first.windows.iter().zip(&second.windows) {
            let (_, vectors_1) =
                window_inputs(&self.text_encoder, w1, &first, false, &self.device)?;
            let one = self.text_encoder.forward_embeds(&vectors_1)?;
            let (ids_2, vectors_2) = window_inputs(
                &xl.text_encoder_2.text_model,
                w2,
                &second,
                true,
                &self.device,
            )?;
            let (two, projected) = xl.text_encoder_2.forward_embeds(&ids_2, &vectors_2)?;
            let back = clip_skip.max(1) + 1;
            tokens.push(Tensor::cat(
                &[
                    emphasis(layer(&one.hidden_states, back)?, w1)?,
                    emphasis(layer(&two.hidden_states, back)?, w2)?,
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

/// A window's ids and input vectors `[1, window, hidden]`. Embedding positions get ids
/// past the vocabulary (in order of use, as transformers numbers added tokens, which
/// decides SDXL's pooled position) and their vectors in place of a token's.
fn window_inputs(
    encoder: &ClipTextModel,
    window: &Window,
    plan: &Plan,
    second: bool,
    device: &Device,
) -> Result<(Vec<u32>, Tensor), InferenceError> {
    let vocab = encoder.vocab_size() as u32;
    let mut offsets = Vec::with_capacity(plan.embeddings.len());
    let mut next = vocab;
    for e in &plan.embeddings {
        offsets.push(next);
        next += e.vectors() as u32;
    }
    let ids: Vec<u32> = window
        .slots
        .iter()
        .map(|slot| match slot {
            Slot::Token(id) => *id,
            Slot::Vector { embedding, row } => offsets[*embedding] + *row as u32,
        })
        .collect();
    let lookup: Vec<u32> = ids
        .iter()
        .map(|&id| if id >= vocab { 0 } else { id })
        .collect();
    let tokens =
        encoder.token_embeddings(&Tensor::new(lookup.as_slice(), device)?.unsqueeze(0)?)?;
    if !window
        .slots
        .iter()
        .any(|s| matches!(s, Slot::Vector { .. }))
    {
        return Ok((ids, tokens));
    }
    let hidden = encoder.hidden_size();
    let rows = tokens.squeeze(0)?;
    let mut parts = Vec::with_capacity(window.slots.len());
    for (i, slot) in window.slots.iter().enumerate() {
        match slot {
            Slot::Token(_) => parts.push(rows.narrow(0, i, 1)?),
            Slot::Vector { embedding, row } => {
                let e = &plan.embeddings[*embedding];
                let vectors = if second {
                    e.second.as_ref().ok_or_else(|| {
                        InferenceError::InvalidRequest(format!(
                            "embedding '{}' has no vectors for SDXL's second text encoder                              (clip_g): it was made for another model family",
                            e.name
                        ))
                    })?
                } else {
                    &e.first
                };
                if vectors.dim(1)? != hidden {
                    return Err(InferenceError::InvalidRequest(format!(
                        "embedding '{}' has {}-wide vectors but this text encoder takes {hidden}: \
                         it was made for another model family",
                        e.name,
                        vectors.dim(1)?
                    )));
                }
                parts.push(
                    vectors
                        .narrow(0, *row, 1)?
                        .to_device(device)?
                        .to_dtype(rows.dtype())?,
                );
            }
        }
    }
    Ok((ids, Tensor::cat(&parts, 0)?.unsqueeze(0)?))
}

/// A1111's emphasis: each token's state times its weight, then the window rescaled so
/// that its mean is what it was. Unweighted windows are returned untouched.
fn emphasis(z: Tensor, window: &Window) -> candle_core::Result<Tensor> {
    if !window.is_weighted() {
        return Ok(z);
    }
    let (_, seq, _) = z.dims3()?;
    let weights = Tensor::new(window.weights.as_slice(), z.device())?
        .to_dtype(z.dtype())?
        .reshape((1, seq, 1))?;
    let before = z.mean_all()?;
    let weighted = z.broadcast_mul(&weights)?;
    let after = weighted.mean_all()?;
    weighted.broadcast_mul(&(before / after)?)
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
            .encode_prompt("a photo of a cat", LongPrompt::Chunk, 1, 1)
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
        let chunked = sd.encode_prompt(&long, LongPrompt::Chunk, 1, 1).unwrap();
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

    fn tiny() -> (tempfile::TempDir, StableDiffusion) {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("tiny");
        crate::inference::tiny::write_kind(&folder, 0, crate::inference::tiny::TinyKind::Sd15)
            .unwrap();
        let sd = StableDiffusion::load(&folder, &Device::Cpu, DType::F32).unwrap();
        (dir, sd)
    }

    fn encode(sd: &StableDiffusion, text: &str) -> Tensor {
        sd.encode_prompt(text, LongPrompt::Chunk, 1, 1)
            .unwrap()
            .tokens
    }

    fn gap(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    #[test]
    fn weights_of_one_give_exactly_the_unweighted_prompt() {
        let (_dir, sd) = tiny();
        let plain = encode(&sd, "a photo of a cat sitting on a red chair");
        let ones = encode(&sd, "a photo of a (cat:1.0) sitting on a [(red:1.1)] chair");
        assert_eq!(gap(&plain, &ones), 0.0);
        let weighted = encode(&sd, "a photo of a (cat:1.5) sitting on a red chair");
        assert!(
            gap(&plain, &weighted) > 1e-3,
            "a weight changes the embedding"
        );
        // A1111's mean restoration: the window's mean stays what it was.
        let mean = |t: &Tensor| t.mean_all().unwrap().to_scalar::<f32>().unwrap();
        assert!((mean(&plain) - mean(&weighted)).abs() < 1e-5);
        // `<lora:…>` tags are not text.
        let tagged = sd
            .conditioning(
                &GenerateRequest {
                    prompt: "a photo of a cat sitting on a red chair <lora:x:0.5>".into(),
                    negative_prompt: String::new(),
                    guidance_scale: 1.0,
                    ..GenerateRequest::example(crate::inference::SchedulerKind::Euler)
                },
                false,
            )
            .unwrap();
        assert_eq!(gap(&plain, &tagged.tokens), 0.0);
    }

    #[test]
    fn break_starts_a_new_window_and_clip_skip_moves_back_a_layer() {
        let (_dir, sd) = tiny();
        let one = encode(&sd, "a red chair");
        assert_eq!(one.dims(), &[1, 77, 32]);
        let two = encode(&sd, "a red chair BREAK a cat");
        assert_eq!(two.dims(), &[1, 154, 32]);
        // The first window of "a BREAK b" is the first window of "a".
        assert_eq!(gap(&two.narrow(1, 0, 77).unwrap(), &one), 0.0);
        let skipped = sd
            .encode_prompt("a red chair", LongPrompt::Chunk, 1, 2)
            .unwrap()
            .tokens;
        assert!(gap(&one, &skipped) > 1e-3);
        assert!(
            sd.encode_prompt("a red chair", LongPrompt::Chunk, 1, 3)
                .is_err(),
            "2 layers"
        );
    }
}
