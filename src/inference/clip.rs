//! CLIP text encoder, built from `text_encoder/config.json`.
//!
//! Written here rather than taken from candle-transformers because its config cannot be
//! built from a file, and SDXL needs every hidden state (the penultimate one) as well as the
//! final normalised output.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{
    embedding, layer_norm, linear, linear_no_bias, Embedding, LayerNorm, Linear, VarBuilder,
};

use super::model_config::ClipTextConfig;

#[derive(Debug, Clone, Copy)]
enum Activation {
    QuickGelu,
    Gelu,
}

impl Activation {
    fn parse(name: &str) -> candle_core::Result<Self> {
        match name {
            "quick_gelu" => Ok(Self::QuickGelu),
            "gelu" => Ok(Self::Gelu),
            other => candle_core::bail!("unsupported CLIP activation '{other}'"),
        }
    }

    fn apply(self, xs: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::QuickGelu => xs * candle_nn::ops::sigmoid(&(xs * 1.702)?)?,
            Self::Gelu => xs.gelu_erf(),
        }
    }
}

#[derive(Debug)]
struct SelfAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
    head_dim: usize,
}

impl SelfAttention {
    fn new(vb: VarBuilder, c: &ClipTextConfig) -> candle_core::Result<Self> {
        let h = c.hidden_size;
        if !h.is_multiple_of(c.num_attention_heads) {
            candle_core::bail!("hidden_size {h} is not divisible by num_attention_heads");
        }
        Ok(Self {
            q_proj: linear(h, h, vb.pp("q_proj"))?,
            k_proj: linear(h, h, vb.pp("k_proj"))?,
            v_proj: linear(h, h, vb.pp("v_proj"))?,
            out_proj: linear(h, h, vb.pp("out_proj"))?,
            heads: c.num_attention_heads,
            head_dim: h / c.num_attention_heads,
        })
    }

    fn forward(&self, xs: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t, c) = xs.dims3()?;
        let split = |x: Tensor| -> candle_core::Result<Tensor> {
            x.reshape((b, t, self.heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let scale = (self.head_dim as f64).powf(-0.5);
        let q = split((self.q_proj.forward(xs)? * scale)?)?;
        let k = split(self.k_proj.forward(xs)?)?;
        let v = split(self.v_proj.forward(xs)?)?;
        let scores = q.matmul(&k.t()?)?.broadcast_add(mask)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, t, c))?;
        self.out_proj.forward(&out)
    }
}

#[derive(Debug)]
struct EncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: SelfAttention,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl EncoderLayer {
    fn new(vb: VarBuilder, c: &ClipTextConfig, act: Activation) -> candle_core::Result<Self> {
        let h = c.hidden_size;
        Ok(Self {
            layer_norm1: layer_norm(h, c.layer_norm_eps, vb.pp("layer_norm1"))?,
            self_attn: SelfAttention::new(vb.pp("self_attn"), c)?,
            layer_norm2: layer_norm(h, c.layer_norm_eps, vb.pp("layer_norm2"))?,
            fc1: linear(h, c.intermediate_size, vb.pp("mlp").pp("fc1"))?,
            fc2: linear(c.intermediate_size, h, vb.pp("mlp").pp("fc2"))?,
            act,
        })
    }

    fn forward(&self, xs: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let attn = self
            .self_attn
            .forward(&self.layer_norm1.forward(xs)?, mask)?;
        let xs = (xs + attn)?;
        let mlp = self.fc2.forward(
            &self
                .act
                .apply(&self.fc1.forward(&self.layer_norm2.forward(&xs)?)?)?,
        )?;
        xs + mlp
    }
}

/// What one forward pass of the text encoder yields.
pub struct TextEncoding {
    /// Output of the last layer after the final layer norm (what SD 1.x/2.x condition on).
    pub last_hidden_state: Tensor,
    /// Input embeddings followed by each layer's output, without the final norm.
    pub hidden_states: Vec<Tensor>,
}

/// The CLIP text transformer (`text_model.*` weights).
#[derive(Debug)]
pub struct ClipTextModel {
    token_embedding: Embedding,
    position_embedding: Embedding,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    max_positions: usize,
}

impl ClipTextModel {
    /// Builds the model; `vb` points at the root of `model.safetensors`.
    pub fn new(vb: VarBuilder, c: &ClipTextConfig) -> candle_core::Result<Self> {
        let act = Activation::parse(&c.hidden_act)?;
        let vb = vb.pp("text_model");
        let emb = vb.pp("embeddings");
        let layers = (0..c.num_hidden_layers)
            .map(|i| EncoderLayer::new(vb.pp("encoder").pp("layers").pp(i), c, act))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            token_embedding: embedding(c.vocab_size, c.hidden_size, emb.pp("token_embedding"))?,
            position_embedding: embedding(
                c.max_position_embeddings,
                c.hidden_size,
                emb.pp("position_embedding"),
            )?,
            layers,
            final_layer_norm: layer_norm(
                c.hidden_size,
                c.layer_norm_eps,
                vb.pp("final_layer_norm"),
            )?,
            max_positions: c.max_position_embeddings,
        })
    }

    /// Encodes token ids of shape `[batch, seq]` (seq ≤ max_position_embeddings).
    pub fn forward(&self, ids: &Tensor) -> candle_core::Result<TextEncoding> {
        self.forward_embeds(&self.token_embeddings(ids)?)
    }

    /// The input vectors of token ids `[batch, seq]`: `[batch, seq, hidden]`.
    pub fn token_embeddings(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        self.token_embedding.forward(ids)
    }

    /// How many rows the token embedding has (ids at or above are not tokens).
    pub fn vocab_size(&self) -> usize {
        self.token_embedding.embeddings().dim(0).unwrap_or(0)
    }

    /// Width of the token vectors.
    pub fn hidden_size(&self) -> usize {
        self.token_embedding.embeddings().dim(1).unwrap_or(0)
    }

    /// The final layer norm, which SD 1.x/2.x apply after a skipped layer too (clip skip).
    pub fn final_norm(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.final_layer_norm.forward(xs)
    }

    /// Encodes token vectors `[batch, seq, hidden]` (textual inversion replaces some).
    pub fn forward_embeds(&self, tokens: &Tensor) -> candle_core::Result<TextEncoding> {
        let (_, seq, _) = tokens.dims3()?;
        if seq > self.max_positions {
            candle_core::bail!("{seq} tokens exceed the {} positions", self.max_positions);
        }
        let device = tokens.device();
        let positions = Tensor::arange(0u32, seq as u32, device)?.unsqueeze(0)?;
        let mut xs = tokens.broadcast_add(&self.position_embedding.forward(&positions)?)?;
        let mask = causal_mask(seq, xs.dtype(), device)?;
        let mut hidden_states = Vec::with_capacity(self.layers.len() + 1);
        hidden_states.push(xs.clone());
        for layer in &self.layers {
            xs = layer.forward(&xs, &mask)?;
            hidden_states.push(xs.clone());
        }
        Ok(TextEncoding {
            last_hidden_state: self.final_layer_norm.forward(&xs)?,
            hidden_states,
        })
    }
}

/// Which token's final state is the pooled output, as transformers' CLIP text model
/// picks it: configs still carrying the old `eos_token_id` of 2 (SDXL's among them) take
/// the first largest id, which is the end marker of CLIP's vocabulary; newer configs take
/// the first occurrence of their end marker (padding may repeat it).
pub fn pooled_position(ids: &[u32], eos_token_id: u32) -> usize {
    if eos_token_id == 2 {
        let max = ids.iter().copied().max().unwrap_or(0);
        ids.iter().position(|&id| id == max).unwrap_or(0)
    } else {
        // With no end marker at all torch's argmax of all zeros is 0.
        ids.iter().position(|&id| id == eos_token_id).unwrap_or(0)
    }
}

/// `CLIPTextModelWithProjection` (SDXL's text_encoder_2): the text model plus a bias-free
/// projection of its pooled output, which SDXL's UNet reads as `text_embeds`.
#[derive(Debug)]
pub struct ClipTextModelWithProjection {
    pub text_model: ClipTextModel,
    text_projection: Linear,
    eos_token_id: u32,
}

impl ClipTextModelWithProjection {
    /// Builds the model; `vb` points at the root of `model.safetensors`.
    pub fn new(vb: VarBuilder, c: &ClipTextConfig) -> candle_core::Result<Self> {
        Ok(Self {
            text_model: ClipTextModel::new(vb.clone(), c)?,
            text_projection: linear_no_bias(
                c.hidden_size,
                c.projection_dim,
                vb.pp("text_projection"),
            )?,
            eos_token_id: c.eos_token_id,
        })
    }

    /// Encodes one window of ids (`[1, seq]`): every hidden state and the projected
    /// pooled output `[1, projection_dim]`.
    pub fn forward(&self, ids: &[u32]) -> candle_core::Result<(TextEncoding, Tensor)> {
        let device = self.text_projection.weight().device();
        let input = Tensor::new(ids, device)?.unsqueeze(0)?;
        self.forward_embeds(ids, &self.text_model.token_embeddings(&input)?)
    }

    /// Like [`Self::forward`] from token vectors `[1, seq, hidden]`; `ids` still decide
    /// the pooled position (textual-inversion positions carry ids past the vocabulary,
    /// as transformers gives tokens added to a tokenizer).
    pub fn forward_embeds(
        &self,
        ids: &[u32],
        tokens: &Tensor,
    ) -> candle_core::Result<(TextEncoding, Tensor)> {
        let encoding = self.text_model.forward_embeds(tokens)?;
        let at = pooled_position(ids, self.eos_token_id);
        let pooled = encoding.last_hidden_state.narrow(1, at, 1)?.squeeze(1)?;
        let projected = self.text_projection.forward(&pooled)?;
        Ok((encoding, projected))
    }
}

/// An additive mask that hides later tokens from earlier ones, as CLIP's text model does.
fn causal_mask(seq: usize, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
    let values: Vec<f32> = (0..seq)
        .flat_map(|i| (0..seq).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(values, (1, 1, seq, seq), device)?.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_configs_pool_at_the_first_largest_id() {
        // SD 1.x-style padding repeats the end marker (49407); SDXL's tokenizer_2 pads
        // with "!" (0). Either way the first end marker is the pooled position.
        let eos_padded = [49406, 320, 1929, 49407, 49407, 49407];
        let bang_padded = [49406, 320, 1929, 49407, 0, 0];
        assert_eq!(pooled_position(&eos_padded, 2), 3);
        assert_eq!(pooled_position(&bang_padded, 2), 3);
        // An id larger than the marker wins under the legacy rule (transformers' argmax).
        assert_eq!(pooled_position(&[5, 60_000, 9, 49407], 2), 1);
    }

    #[test]
    fn newer_configs_pool_at_the_first_end_marker() {
        let ids = [510, 3, 7, 511, 511, 0];
        assert_eq!(pooled_position(&ids, 511), 3);
        // Not the largest id: only the configured marker counts.
        assert_eq!(pooled_position(&[510, 600, 511, 0], 511), 2);
        assert_eq!(pooled_position(&[510, 600, 0], 511), 0);
    }
}
