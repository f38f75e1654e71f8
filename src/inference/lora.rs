//! LoRA files (kohya / A1111, LoCon, and diffusers / PEFT) and the patched weights they
//! give.
//!
//! A LoRA holds, for some layers, two small matrices `down` (`[r, in]`, or `[r, in, kh,
//! kw]` for LoCon convolutions) and `up` (`[out, r]`) whose product, times `alpha / r`
//! and the user's weight, is added to the layer's weight. sdq adds it to a *copy* of the
//! base tensor (see `weights.rs`), so the base model stays as it was for the next job.
//!
//! Layers are named in one of three ways, all resolved against the model's own names:
//! kohya's flattened diffusers names (`lora_unet_down_blocks_0_attentions_0_…`), kohya's
//! flattened original names for SDXL (`lora_unet_input_blocks_4_1_…`), and diffusers'
//! dotted names (`unet.down_blocks.0.attentions.0.….lora_A.weight`).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::model_config::UNetConfig;
use super::weights::{open_safetensors, Weights};
use super::InferenceError;

/// Which part of the model a LoRA layer patches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    Unet,
    TextEncoder,
    /// SDXL's second text encoder.
    TextEncoder2,
}

/// How a layer was named in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LayerName {
    /// kohya: dots replaced by underscores (diffusers' or the original module path).
    Flat(String),
    /// diffusers / PEFT: the module path as is.
    Dotted(String),
}

/// One layer's low-rank pair.
#[derive(Debug, Clone)]
struct Pair {
    target: Target,
    layer: LayerName,
    down: Tensor,
    up: Tensor,
    alpha: Option<f64>,
}

/// A parsed LoRA file.
#[derive(Debug, Clone)]
pub struct Lora {
    /// How the caller named it (for messages).
    pub name: String,
    pairs: Vec<Pair>,
}

/// Where the family of a LoRA shows: which parts it patches and the width of the text
/// features its cross-attention layers read.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct LoraShape {
    pub unet: bool,
    pub text_encoder: bool,
    pub text_encoder_2: bool,
    /// `in` of the cross-attention key projection (768 SD 1.x, 1024 SD 2.x, 2048 SDXL).
    pub cross_attention_dim: Option<usize>,
}

fn bad(path: &str, why: impl std::fmt::Display) -> InferenceError {
    InferenceError::InvalidRequest(format!("LoRA '{path}': {why}"))
}

/// Sorts one file key into (target, layer, role) where role is `down`, `up` or `alpha`.
fn classify(key: &str) -> Result<Option<(Target, LayerName, &'static str)>, String> {
    for marker in [
        "hada_w1_a",
        "hada_w1_b",
        "lokr_w1",
        "lokr_w2",
        "lora_mid",
        "dora_scale",
        ".diff",
        "oft_blocks",
    ] {
        if key.contains(marker) {
            return Err(format!(
                "'{key}' is a LyCORIS / DoRA format (LoHa, LoKr, Tucker, DoRA, OFT or full \
                 difference) that sdq does not apply; plain LoRA and LoCon are supported"
            ));
        }
    }
    // kohya / A1111
    if let Some((prefix, rest)) = ["lora_unet_", "lora_te1_", "lora_te2_", "lora_te_"]
        .iter()
        .find_map(|p| key.strip_prefix(p).map(|r| (*p, r)))
    {
        let target = match prefix {
            "lora_unet_" => Target::Unet,
            "lora_te2_" => Target::TextEncoder2,
            _ => Target::TextEncoder,
        };
        let (layer, role) = if let Some(l) = rest.strip_suffix(".lora_down.weight") {
            (l, "down")
        } else if let Some(l) = rest.strip_suffix(".lora_up.weight") {
            (l, "up")
        } else if let Some(l) = rest.strip_suffix(".alpha") {
            (l, "alpha")
        } else {
            return Err(format!("unrecognised key '{key}'"));
        };
        return Ok(Some((target, LayerName::Flat(layer.to_string()), role)));
    }
    // diffusers / PEFT
    let (target, rest) = if let Some(r) = key.strip_prefix("unet.") {
        (Target::Unet, r)
    } else if let Some(r) = key.strip_prefix("text_encoder_2.") {
        (Target::TextEncoder2, r)
    } else if let Some(r) = key.strip_prefix("text_encoder.") {
        (Target::TextEncoder, r)
    } else if let Some(r) = key.strip_prefix("base_model.model.") {
        (Target::Unet, r)
    } else {
        return Err(format!("unrecognised key '{key}'"));
    };
    let rest = rest.strip_prefix("base_model.model.").unwrap_or(rest);
    let found = [
        (".lora_A.weight", "down"),
        (".lora_B.weight", "up"),
        (".lora.down.weight", "down"),
        (".lora.up.weight", "up"),
        (".lora_linear_layer.down.weight", "down"),
        (".lora_linear_layer.up.weight", "up"),
        (".alpha", "alpha"),
        // Old attention processors: `….processor.to_q_lora.down.weight`.
        (".down.weight", "down"),
        (".up.weight", "up"),
    ]
    .iter()
    .find_map(|(suffix, role)| rest.strip_suffix(suffix).map(|l| (l, *role)));
    let Some((layer, role)) = found else {
        return Err(format!("unrecognised key '{key}'"));
    };
    // Old diffusers attention processors: `attn1.processor.to_q_lora` is `attn1.to_q`.
    let layer = match layer.split_once(".processor.") {
        Some((module, lora)) => {
            let inner = lora.strip_suffix("_lora").unwrap_or(lora);
            let inner = if inner == "to_out" { "to_out.0" } else { inner };
            format!("{module}.{inner}")
        }
        None => layer.to_string(),
    };
    Ok(Some((target, LayerName::Dotted(layer), role)))
}

/// The down and up matrices and alpha of one layer, as they are found in a file.
type Halves = (Option<Tensor>, Option<Tensor>, Option<f64>);

impl Lora {
    /// Reads a LoRA `.safetensors` file (pickles are refused).
    pub fn read(path: &Path, name: &str) -> Result<Self, InferenceError> {
        let file = open_safetensors(path).map_err(|e| bad(name, e))?;
        let mut parts: HashMap<(Target, String, bool), Halves> = HashMap::new();
        for (key, _) in file.tensors() {
            let (target, layer, role) = match classify(&key).map_err(|e| bad(name, e))? {
                Some(c) => c,
                None => continue,
            };
            let (text, dotted) = match &layer {
                LayerName::Flat(s) => (s.clone(), false),
                LayerName::Dotted(s) => (s.clone(), true),
            };
            let tensor = file
                .load(&key, &Device::Cpu)
                .map_err(|e| bad(name, e))?
                .to_dtype(DType::F32)?;
            let entry = parts.entry((target, text, dotted)).or_default();
            match role {
                "down" => entry.0 = Some(tensor),
                "up" => entry.1 = Some(tensor),
                _ => entry.2 = Some(tensor.flatten_all()?.to_vec1::<f32>()?[0] as f64),
            }
        }
        let mut pairs = Vec::with_capacity(parts.len());
        let mut keys: Vec<_> = parts.into_iter().collect();
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        for ((target, text, dotted), (down, up, alpha)) in keys {
            let (Some(down), Some(up)) = (down, up) else {
                return Err(bad(
                    name,
                    format!("layer '{text}' lacks its down or up matrix"),
                ));
            };
            let rank = down.dim(0)?;
            if up.dims().len() < 2 || up.dim(1)? != rank {
                return Err(bad(
                    name,
                    format!(
                        "layer '{text}': up {:?} does not match down {:?}",
                        up.dims(),
                        down.dims()
                    ),
                ));
            }
            let layer = if dotted {
                LayerName::Dotted(text)
            } else {
                LayerName::Flat(text)
            };
            pairs.push(Pair {
                target,
                layer,
                down,
                up,
                alpha,
            });
        }
        if pairs.is_empty() {
            return Err(bad(name, "the file holds no LoRA layers"));
        }
        Ok(Self {
            name: name.to_string(),
            pairs,
        })
    }

    /// A LoRA from pairs in memory: `(target, module, down, up, alpha)` with modules
    /// named the diffusers way (benchmarks and tests build random ones).
    pub fn from_layers(
        name: &str,
        layers: Vec<(Target, String, Tensor, Tensor, Option<f64>)>,
    ) -> Self {
        Self {
            name: name.to_string(),
            pairs: layers
                .into_iter()
                .map(|(target, module, down, up, alpha)| Pair {
                    target,
                    layer: LayerName::Dotted(module),
                    down,
                    up,
                    alpha,
                })
                .collect(),
        }
    }

    /// What the file patches, to tell its family without a model at hand.
    pub fn shape(&self) -> LoraShape {
        let mut shape = LoraShape::default();
        for p in &self.pairs {
            match p.target {
                Target::Unet => shape.unet = true,
                Target::TextEncoder => shape.text_encoder = true,
                Target::TextEncoder2 => shape.text_encoder_2 = true,
            }
            let name = match &p.layer {
                LayerName::Flat(s) | LayerName::Dotted(s) => s,
            };
            if p.target == Target::Unet
                && (name.ends_with("attn2_to_k") || name.ends_with("attn2.to_k"))
                && shape.cross_attention_dim.is_none()
            {
                shape.cross_attention_dim = p.down.dims().get(1).copied();
            }
        }
        shape
    }
}

/// The model's layer names as a LoRA may spell them, for one component.
struct Index {
    /// flattened name → module (diffusers, without `.weight`).
    flat: HashMap<String, String>,
}

impl Index {
    fn new(weights: &Weights, unet: Option<&UNetConfig>) -> Self {
        let mut flat = HashMap::new();
        for name in weights.names() {
            let Some(module) = name.strip_suffix(".weight") else {
                continue;
            };
            let is_matrix = weights
                .get(name)
                .is_some_and(|t| matches!(t.dims().len(), 2 | 4));
            if !is_matrix {
                continue;
            }
            flat.insert(module.replace('.', "_"), module.to_string());
            if let Some(config) = unet {
                if let Some(original) = super::ldm_keys::unet(name, config) {
                    if let Some(m) = original.strip_suffix(".weight") {
                        flat.insert(m.replace('.', "_"), module.to_string());
                    }
                }
            }
        }
        Self { flat }
    }

    fn resolve(&self, layer: &LayerName, weights: &Weights, text: bool) -> Option<String> {
        match layer {
            LayerName::Flat(f) => self.flat.get(f).cloned(),
            LayerName::Dotted(d) => {
                // transformers 5 names text layers without `text_model.`.
                let candidates = if text && !d.starts_with("text_model.") {
                    vec![format!("text_model.{d}"), d.clone()]
                } else {
                    vec![d.clone()]
                };
                candidates
                    .into_iter()
                    .find(|c| weights.get(&format!("{c}.weight")).is_some())
            }
        }
    }
}

/// The patched tensors of one component for a set of LoRAs at their weights: for every
/// layer any of them touches, `base + Σ weight · alpha / r · up · down`, in the model's
/// dtype. An empty map when none touches this component.
pub fn patches(
    loras: &[(&Lora, f64)],
    target: Target,
    weights: &Weights,
    unet_config: Option<&UNetConfig>,
) -> Result<HashMap<String, Tensor>, InferenceError> {
    // Per layer, the scaled factors of every LoRA that touches it, checked against the
    // layer's shape; the sums are formed at the end, in one pass per layer.
    let mut terms: HashMap<String, Vec<(Tensor, Tensor)>> = HashMap::new();
    let mut index: Option<Index> = None;
    for (lora, multiplier) in loras {
        for pair in lora.pairs.iter().filter(|p| p.target == target) {
            let index = index.get_or_insert_with(|| Index::new(weights, unet_config));
            let text = target != Target::Unet;
            let Some(module) = index.resolve(&pair.layer, weights, text) else {
                let what = match &pair.layer {
                    LayerName::Flat(s) | LayerName::Dotted(s) => s,
                };
                return Err(bad(
                    &lora.name,
                    format!(
                        "this model has no layer '{what}' ({target:?}); the LoRA was made for \
                         another model family"
                    ),
                ));
            };
            let base = weights
                .get(&format!("{module}.weight"))
                .expect("resolved against these weights");
            let rank = pair.down.dim(0)?;
            let out = pair.up.dim(0)?;
            let scale = pair.alpha.unwrap_or(rank as f64) / rank as f64 * multiplier;
            let up = pair.up.reshape((out, rank))?;
            let down = pair.down.reshape((rank, ()))?;
            if out * down.dim(1)? != base.elem_count() || out != base.dim(0)? {
                return Err(bad(
                    &lora.name,
                    format!(
                        "layer '{module}' is {:?} in this model but the LoRA makes {:?}; the \
                         LoRA was made for another model family",
                        base.dims(),
                        [out, down.dim(1)?]
                    ),
                ));
            }
            // The scale goes on the small factor, not on the layer-sized product.
            let up = (up.to_dtype(DType::F32)? * scale)?;
            let down = down.to_dtype(DType::F32)?;
            terms.entry(module).or_default().push((up, down));
        }
    }
    terms
        .into_iter()
        .map(|(module, factors)| {
            let name = format!("{module}.weight");
            let base = weights.get(&name).expect("resolved");
            Ok((name, patch_layer(base, &factors)?))
        })
        .collect()
}

/// `base + Σ up · down` in `base`'s dtype. On the CPU in f32 it is one copy of the layer
/// and one accumulating multi-threaded GEMM per LoRA (no layer-sized temporaries); a
/// switch is bound by memory bandwidth, so each pass saved counts.
fn patch_layer(base: &Tensor, factors: &[(Tensor, Tensor)]) -> Result<Tensor, InferenceError> {
    if base.device().is_cpu() && base.dtype() == DType::F32 {
        use super::kernels::gemm::{matmul, Accumulate, MatRef};
        let mut dst: Vec<f32> = base.flatten_all()?.to_vec1()?;
        let rows = base.dim(0)?;
        let cols = base.elem_count() / rows.max(1);
        for (up, down) in factors {
            let rank = up.dim(1)?;
            let up: Vec<f32> = up.flatten_all()?.to_vec1()?;
            let down: Vec<f32> = down.flatten_all()?.to_vec1()?;
            matmul(
                &mut dst,
                cols,
                MatRef::row_major(&up, rows, rank),
                MatRef::row_major(&down, rank, cols),
                Accumulate::Add,
                super::kernels::threads(),
            );
        }
        return Ok(Tensor::from_vec(dst, base.dims(), base.device())?);
    }
    let mut sum = base.to_dtype(DType::F32)?;
    for (up, down) in factors {
        sum = (sum + up.matmul(down)?.reshape(base.dims())?)?;
    }
    Ok(sum.to_dtype(base.dtype())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_every_format_are_sorted_out() {
        let (t, l, r) = classify("lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight")
            .unwrap()
            .unwrap();
        assert_eq!((t, r), (Target::Unet, "down"));
        assert_eq!(
            l,
            LayerName::Flat("down_blocks_0_attentions_0_proj_in".into())
        );
        let (t, _, r) = classify("lora_te2_text_model_encoder_layers_0_mlp_fc1.alpha")
            .unwrap()
            .unwrap();
        assert_eq!((t, r), (Target::TextEncoder2, "alpha"));
        let (t, l, r) =
            classify("text_encoder.text_model.encoder.layers.1.self_attn.q_proj.lora_B.weight")
                .unwrap()
                .unwrap();
        assert_eq!((t, r), (Target::TextEncoder, "up"));
        assert_eq!(
            l,
            LayerName::Dotted("text_model.encoder.layers.1.self_attn.q_proj".into())
        );
        let (_, l, _) = classify(
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.up.weight",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            l,
            LayerName::Dotted(
                "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0".into()
            )
        );
        let err = classify("lora_unet_x.hada_w1_a").unwrap_err();
        assert!(err.contains("LyCORIS"), "{err}");
        assert!(classify("something.else").is_err());
    }
}
