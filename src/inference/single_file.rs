//! Single-file checkpoints: one `.safetensors` in the original Stable Diffusion layout
//! (`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.*` or
//! `conditioner.embedders.*`), as A1111, ComfyUI and the Stability releases write them.
//!
//! The family comes from the text encoder's layout (CLIP: SD 1.x; OpenCLIP: SD 2.x; two
//! embedders: SDXL), the architecture from the tensors' shapes (channels, blocks, layers,
//! transformer depths, attention projections, inpainting inputs), and what shapes cannot
//! tell (attention heads, activations, latent scaling, scheduler, tokenizer) from the
//! family's published configs bundled here. Keys are mapped in memory (`ldm_keys.rs`);
//! EMA copies and anything else the model does not use are never read. sdq's own tiny
//! families (base width 32 instead of 320) take their configs from `tiny.rs`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use serde_json::json;

use super::clip::{ClipTextModel, ClipTextModelWithProjection};
use super::ldm_keys::{self, Transform};
use super::load::{vae_blocks, vae_dtype, Parts, XlParts};
use super::mapped::SafetensorsFile;
use super::model_config::{ClipTextConfig, PerBlock, UNetConfig, VaeConfig};
use super::schedulers::SchedulerConfigFile;
use super::tiny::{TinyConfigs, TinyKind};
use super::tokenizer::PromptTokenizer;
use super::unet::UNet;
use super::vae_encoder::VaeEncoder;
use super::weights::{model_file, open_safetensors, Weights};
use super::InferenceError;

mod export;
pub use export::{export, ExportOptions};

const UNET: &str = "model.diffusion_model.";
const VAE: &str = "first_stage_model.";

/// How a file's layers are found: a diffusers name is mapped to the file's name.
type NameMap<'a> = Box<dyn Fn(&str) -> Option<(String, Transform)> + Send + Sync + 'a>;

/// A var-builder backend that reads a single file through a name map and keeps every
/// tensor it hands out, so the weights can be kept by their diffusers names.
struct Mapped<'a> {
    file: &'a SafetensorsFile,
    path: PathBuf,
    map: NameMap<'a>,
    taken: Mutex<HashMap<String, Tensor>>,
}

impl Mapped<'_> {
    fn load(&self, name: &str) -> candle_core::Result<Tensor> {
        let (key, transform) = (self.map)(name).ok_or_else(|| {
            candle_core::Error::Msg(format!("no original name is known for {name}"))
        })?;
        let raw = self.file.load(&key, &Device::Cpu).map_err(|_| {
            candle_core::Error::Msg(format!(
                "{} has no tensor {key} (for {name})",
                self.path.display()
            ))
        })?;
        Ok(match transform {
            Transform::Same => raw,
            Transform::Conv1x1 => {
                let dims = raw.dims().to_vec();
                if dims.len() == 4 {
                    raw.reshape((dims[0], dims[1]))?
                } else {
                    raw
                }
            }
            Transform::Transpose => raw.t()?.contiguous()?,
            Transform::QkvPart(part) => {
                let third = raw.dim(0)? / 3;
                raw.narrow(0, part * third, third)?.contiguous()?
            }
        })
    }

    fn into_weights(self, dtype: DType, device: &Device) -> Result<Weights, InferenceError> {
        Weights::from_map(
            self.taken.into_inner().expect("not poisoned"),
            dtype,
            device,
        )
    }
}

impl SimpleBackend for Mapped<'_> {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.load(name)?;
        if t.shape() != &s {
            candle_core::bail!(
                "{name}: the checkpoint's tensor is {:?} but the architecture read from it \
                 needs {:?}",
                t.dims(),
                s.dims()
            );
        }
        let t = t.to_device(dev)?.to_dtype(dtype)?;
        self.taken
            .lock()
            .expect("not poisoned")
            .insert(name.to_string(), t.clone());
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self.load(name)?.to_device(dev)?.to_dtype(dtype)?;
        self.taken
            .lock()
            .expect("not poisoned")
            .insert(name.to_string(), t.clone());
        Ok(t)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        (self.map)(name).is_some_and(|(key, _)| self.file.info(&key).is_some())
    }
}

/// Builds a module once through `map` and returns the weights it read.
fn read_through<'a>(
    file: &'a SafetensorsFile,
    path: &Path,
    map: NameMap<'a>,
    dtype: DType,
    device: &Device,
    build: impl FnOnce(VarBuilder) -> candle_core::Result<()>,
) -> Result<Weights, InferenceError> {
    let backend = Mapped {
        file,
        path: path.to_path_buf(),
        map,
        taken: Mutex::new(HashMap::new()),
    };
    let shared = std::sync::Arc::new(backend);
    {
        let boxed: Box<dyn SimpleBackend + '_> = Box::new(Shared(shared.clone()));
        let vb = VarBuilder::from_backend(boxed, dtype, device.clone());
        build(vb).map_err(|e| InferenceError::invalid_model(path, e))?;
    }
    let backend = std::sync::Arc::try_unwrap(shared)
        .map_err(|_| InferenceError::invalid_model(path, "builder kept its backend"))?;
    backend.into_weights(dtype, device)
}

/// Lets the builder own a handle while we keep the backend.
struct Shared<'a>(std::sync::Arc<Mapped<'a>>);

impl SimpleBackend for Shared<'_> {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0.get(s, name, h, dtype, dev)
    }
    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.0.get_unchecked(name, dtype, dev)
    }
    fn contains_tensor(&self, name: &str) -> bool {
        self.0.contains_tensor(name)
    }
}

/// The single-file families sdq knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Sd1,
    Sd2,
    Sdxl,
}

/// Shapes by name, from the header.
type Header = BTreeMap<String, Vec<usize>>;

fn family_of(header: &Header) -> Option<Family> {
    let has = |p: &str| header.keys().any(|k| k.starts_with(p));
    if has("conditioner.embedders.1.model.") {
        Some(Family::Sdxl)
    } else if has("cond_stage_model.model.") {
        Some(Family::Sd2)
    } else if has("cond_stage_model.transformer.") {
        Some(Family::Sd1)
    } else {
        None
    }
}

/// The family's published configs (what shapes cannot tell), or the tiny family's.
fn template(family: Family, inpaint: bool, base_width: usize) -> Result<TinyConfigs, String> {
    if base_width != 320 {
        let kind = match (family, inpaint) {
            (Family::Sd1, false) => TinyKind::Sd15,
            (Family::Sd1, true) => TinyKind::Inpaint,
            (Family::Sd2, false) => TinyKind::Sd2,
            (Family::Sdxl, false) => TinyKind::Sdxl,
            (Family::Sdxl, true) => TinyKind::SdxlInpaint,
            (Family::Sd2, true) => return Err("no tiny SD 2 inpainting family".into()),
        };
        let c = super::tiny::configs(kind);
        if c.unet["block_out_channels"][0].as_u64() != Some(base_width as u64) {
            return Err(format!(
                "a UNet {base_width} channels wide is neither a published family (320) nor \
                 sdq's tiny one"
            ));
        }
        return Ok(c);
    }
    let clip_l = json!({"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072,
        "num_hidden_layers": 12, "num_attention_heads": 12, "max_position_embeddings": 77,
        "hidden_act": "quick_gelu", "projection_dim": 768, "eos_token_id": 2});
    let sd_vae = |scaling: f64| {
        json!({"block_out_channels": [128, 256, 512, 512],
        "layers_per_block": 2, "latent_channels": 4, "norm_num_groups": 32,
        "scaling_factor": scaling, "force_upcast": true, "sample_size": 512})
    };
    let scaled_linear = json!({"num_train_timesteps": 1000, "beta_start": 0.00085,
        "beta_end": 0.012, "beta_schedule": "scaled_linear", "clip_sample": false,
        "set_alpha_to_one": false, "skip_prk_steps": true, "steps_offset": 1});
    Ok(match family {
        Family::Sd1 => TinyConfigs {
            text: clip_l,
            text_2: None,
            unet: json!({"attention_head_dim": 8, "sample_size": 64}),
            vae: sd_vae(0.18215),
            scheduler: scaled_linear,
            model_index: json!({}),
            pads: vec![super::tokenizer::EOS],
        },
        Family::Sd2 => {
            let mut scheduler = scaled_linear;
            // As diffusers' single-file loader: SD 2.x defaults to 2.1's v-prediction,
            // its inpainting model to epsilon.
            scheduler["prediction_type"] = json!(if inpaint { "epsilon" } else { "v_prediction" });
            TinyConfigs {
                text: json!({"vocab_size": 49408, "hidden_size": 1024, "intermediate_size": 4096,
                    "num_hidden_layers": 23, "num_attention_heads": 16, "max_position_embeddings": 77,
                    "hidden_act": "gelu", "projection_dim": 512, "eos_token_id": 2}),
                text_2: None,
                unet: json!({"attention_head_dim": [5, 10, 20, 20], "use_linear_projection": true,
                    "upcast_attention": !inpaint, "sample_size": 96}),
                vae: sd_vae(0.18215),
                scheduler,
                model_index: json!({}),
                pads: vec!["!"],
            }
        }
        Family::Sdxl => {
            let mut scheduler = scaled_linear;
            scheduler["timestep_spacing"] = json!("leading");
            scheduler["_class_name"] = json!("EulerDiscreteScheduler");
            TinyConfigs {
                text: clip_l,
                text_2: Some(json!({"vocab_size": 49408, "hidden_size": 1280,
                    "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 20,
                    "max_position_embeddings": 77, "hidden_act": "gelu", "projection_dim": 1280,
                    "eos_token_id": 2})),
                unet: json!({"attention_head_dim": [5, 10, 20], "use_linear_projection": true,
                    "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
                    "sample_size": 128}),
                vae: sd_vae(0.13025),
                scheduler,
                model_index: json!({"force_zeros_for_empty_prompt": true}),
                pads: vec![super::tokenizer::EOS, "!"],
            }
        }
    })
}

/// The UNet's config: the template's, with everything the tensors tell written over it.
fn infer_unet(header: &Header, template: &serde_json::Value) -> Result<UNetConfig, String> {
    let shape = |k: &str| header.get(&format!("{UNET}{k}"));
    let has = |k: &str| header.contains_key(&format!("{UNET}{k}"));
    let conv_in = shape("input_blocks.0.0.weight").ok_or("no UNet (model.diffusion_model.*)")?;
    let out = shape("out.2.weight").ok_or("the UNet has no output convolution")?;
    // Downsamplers sit at input_blocks.(i+1)(lpb+1); the first one gives lpb.
    let mut downsamplers: Vec<usize> = (1..64)
        .filter(|k| has(&format!("input_blocks.{k}.0.op.weight")))
        .collect();
    downsamplers.sort();
    let lpb = match downsamplers.first() {
        Some(first) => first - 1,
        None => (1..64)
            .take_while(|k| has(&format!("input_blocks.{k}.0.in_layers.0.weight")))
            .count(),
    };
    let levels = downsamplers.len() + 1;
    let mut channels = Vec::new();
    let mut down_types = Vec::new();
    let mut depths = Vec::new();
    for i in 0..levels {
        let k = 1 + i * (lpb + 1);
        let width = shape(&format!("input_blocks.{k}.0.out_layers.3.weight"))
            .ok_or_else(|| format!("input block {k} has no resnet"))?[0];
        channels.push(width);
        let depth = (0..64)
            .take_while(|t| {
                has(&format!(
                    "input_blocks.{k}.1.transformer_blocks.{t}.attn1.to_q.weight"
                ))
            })
            .count();
        down_types.push(if depth > 0 {
            "CrossAttnDownBlock2D"
        } else {
            "DownBlock2D"
        });
        depths.push(depth.max(1));
    }
    let up_types: Vec<&str> = (0..levels)
        .map(|i| {
            if has(&format!(
                "output_blocks.{}.1.transformer_blocks.0.attn1.to_q.weight",
                i * (lpb + 1)
            )) {
                "CrossAttnUpBlock2D"
            } else {
                "UpBlock2D"
            }
        })
        .collect();
    let (cross, linear) = header
        .iter()
        .find(|(k, _)| k.starts_with(UNET) && k.ends_with("attn2.to_k.weight"))
        .map(|(k, s)| {
            let proj = k
                .split(".transformer_blocks.")
                .next()
                .map(|p| format!("{p}.proj_in.weight"));
            let linear = proj
                .and_then(|p| header.get(&p))
                .is_some_and(|s| s.len() == 2);
            (s[1], linear)
        })
        .ok_or("the UNet has no cross-attention")?;
    let mut c = template.clone();
    let obj = c.as_object_mut().ok_or("bad template")?;
    obj.insert("in_channels".into(), json!(conv_in[1]));
    obj.insert("out_channels".into(), json!(out[0]));
    obj.insert("block_out_channels".into(), json!(channels));
    obj.insert("layers_per_block".into(), json!(lpb));
    obj.insert("down_block_types".into(), json!(down_types));
    obj.insert("up_block_types".into(), json!(up_types));
    obj.insert("cross_attention_dim".into(), json!(cross));
    obj.insert("use_linear_projection".into(), json!(linear));
    if depths.iter().any(|&d| d != 1) {
        obj.insert("transformer_layers_per_block".into(), json!(depths));
    }
    match shape("label_emb.0.0.weight") {
        Some(s) => {
            obj.insert("addition_embed_type".into(), json!("text_time"));
            obj.insert("projection_class_embeddings_input_dim".into(), json!(s[1]));
        }
        None => {
            obj.remove("addition_embed_type");
        }
    }
    let config: UNetConfig = serde_json::from_value(c).map_err(|e| e.to_string())?;
    if let PerBlock::Each(heads) = &config.attention_head_dim {
        if heads.len() != levels {
            return Err(format!(
                "{levels} UNet levels, but the family's configs have {}",
                heads.len()
            ));
        }
    }
    Ok(config)
}

/// The VAE's config from an original-layout VAE under `prefix`.
fn infer_vae(
    header: &Header,
    prefix: &str,
    template: &serde_json::Value,
) -> Result<VaeConfig, String> {
    let has = |k: &str| header.contains_key(&format!("{prefix}{k}"));
    let levels = (0..16)
        .take_while(|i| has(&format!("encoder.down.{i}.block.0.conv1.weight")))
        .count();
    if levels == 0 {
        return Err("no VAE encoder (encoder.down.0.…)".into());
    }
    let channels: Vec<usize> = (0..levels)
        .map(|i| header[&format!("{prefix}encoder.down.{i}.block.0.conv1.weight")][0])
        .collect();
    let lpb = (0..16)
        .take_while(|j| has(&format!("encoder.down.0.block.{j}.conv1.weight")))
        .count();
    let latent = header
        .get(&format!("{prefix}encoder.conv_out.weight"))
        .map(|s| s[0] / 2)
        .ok_or("the VAE has no encoder.conv_out")?;
    let mut c = template.clone();
    let obj = c.as_object_mut().ok_or("bad template")?;
    obj.insert("block_out_channels".into(), json!(channels));
    obj.insert("layers_per_block".into(), json!(lpb));
    obj.insert("latent_channels".into(), json!(latent));
    obj.insert("use_quant_conv".into(), json!(has("quant_conv.weight")));
    obj.insert(
        "use_post_quant_conv".into(),
        json!(has("post_quant_conv.weight")),
    );
    serde_json::from_value(c).map_err(|e| e.to_string())
}

/// A text encoder's config: the template's heads and activation, the tensors' sizes.
fn infer_text(
    header: &Header,
    open_clip: bool,
    prefix: &str,
    template: &serde_json::Value,
    drop_last_layer: bool,
) -> Result<ClipTextConfig, String> {
    let get = |k: &str| header.get(&format!("{prefix}{k}"));
    let (vocab_hidden, positions, layers, intermediate, projection) = if open_clip {
        let layers = (0..128)
            .take_while(|i| get(&format!("transformer.resblocks.{i}.ln_1.weight")).is_some())
            .count();
        (
            get("token_embedding.weight"),
            get("positional_embedding").map(|s| s[0]),
            layers,
            get("transformer.resblocks.0.mlp.c_fc.weight").map(|s| s[0]),
            get("text_projection").map(|s| s[1]),
        )
    } else {
        let layers = (0..128)
            .take_while(|i| {
                get(&format!("text_model.encoder.layers.{i}.layer_norm1.weight")).is_some()
            })
            .count();
        (
            get("text_model.embeddings.token_embedding.weight"),
            get("text_model.embeddings.position_embedding.weight").map(|s| s[0]),
            layers,
            get("text_model.encoder.layers.0.mlp.fc1.weight").map(|s| s[0]),
            None,
        )
    };
    let vh = vocab_hidden.ok_or_else(|| format!("no token embedding under {prefix}"))?;
    // SD 2.x conditions on the penultimate layer: diffusers' converted encoder stops there.
    let layers = if drop_last_layer {
        layers.saturating_sub(1)
    } else {
        layers
    };
    let mut c = template.clone();
    let obj = c.as_object_mut().ok_or("bad template")?;
    obj.insert("vocab_size".into(), json!(vh[0]));
    obj.insert("hidden_size".into(), json!(vh[1]));
    obj.insert("num_hidden_layers".into(), json!(layers));
    if let Some(p) = positions {
        obj.insert("max_position_embeddings".into(), json!(p));
    }
    if let Some(i) = intermediate {
        obj.insert("intermediate_size".into(), json!(i));
    }
    if let Some(p) = projection {
        obj.insert("projection_dim".into(), json!(p));
    }
    serde_json::from_value(c).map_err(|e| e.to_string())
}

/// The CLIP text model of SD 1.x / SDXL's first encoder: transformers' names under a
/// prefix (old files lack `text_model.`).
fn clip_map<'a>(header: &'a Header, prefix: &'a str) -> NameMap<'a> {
    let bare = !header
        .keys()
        .any(|k| k.starts_with(&format!("{prefix}text_model.")));
    Box::new(move |name: &str| {
        let inner = if bare {
            name.strip_prefix("text_model.").unwrap_or(name)
        } else {
            name
        };
        Some((format!("{prefix}{inner}"), Transform::Same))
    })
}

fn open_clip_map(prefix: &str) -> NameMap<'_> {
    Box::new(move |name: &str| ldm_keys::open_clip(name).map(|(k, t)| (format!("{prefix}{k}"), t)))
}

/// A tokenizer folder of the template's kind: sdq's tiny vocabulary, or CLIP's.
fn tokenizer(
    family_tiny: bool,
    pad: &str,
    window: usize,
) -> Result<PromptTokenizer, InferenceError> {
    if !family_tiny {
        return PromptTokenizer::bundled_clip(pad, window);
    }
    let root = std::env::temp_dir().join(format!(
        "sdq-tiny-tokenizer-{}",
        if pad == "!" { "bang" } else { "eos" }
    ));
    if !root.join("tokenizer.json").exists() {
        let staging = root.with_extension(format!("tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        super::tiny::write_tiny_tokenizer(&staging, pad)?;
        if std::fs::rename(&staging, &root).is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
    }
    PromptTokenizer::load(&root, window)
}

/// Reads a single-file checkpoint into the parts of a model.
pub(super) fn parts(path: &Path, device: &Device, dtype: DType) -> Result<Parts, InferenceError> {
    let file = open_safetensors(&model_file(path, dtype, device))?;
    let header: Header = file
        .tensors()
        .into_iter()
        .map(|(n, info)| (n, info.shape.clone()))
        .collect();
    let bad = |why: String| InferenceError::invalid_model(path, why);
    let family = family_of(&header).ok_or_else(|| {
        bad(
            "not a Stable Diffusion checkpoint in the original layout: no cond_stage_model.* \
             or conditioner.embedders.* text encoder"
                .into(),
        )
    })?;
    let conv_in = header
        .get(&format!("{UNET}input_blocks.0.0.weight"))
        .ok_or_else(|| bad("no UNet (model.diffusion_model.*)".into()))?;
    let (base_width, inpaint) = (conv_in[0], conv_in[1] == 9);
    let tiny = base_width != 320;
    let t = template(family, inpaint, base_width).map_err(&bad)?;
    let unet_config = infer_unet(&header, &t.unet).map_err(&bad)?;
    let vae_config = infer_vae(&header, VAE, &t.vae).map_err(&bad)?;
    let mut scheduler: serde_json::Value = t.scheduler.clone();
    // ModelSpec metadata may say how the model predicts.
    if let Some(meta) = file.file_metadata() {
        match meta.get("modelspec.prediction_type").map(String::as_str) {
            Some("v") | Some("v_prediction") => {
                scheduler["prediction_type"] = json!("v_prediction")
            }
            Some("epsilon") => scheduler["prediction_type"] = json!("epsilon"),
            _ => {}
        }
    }
    let scheduler_config: SchedulerConfigFile =
        serde_json::from_value(scheduler).map_err(|e| bad(e.to_string()))?;

    let unet = {
        let c = unet_config.clone();
        let map: NameMap = Box::new(move |name: &str| {
            ldm_keys::unet(name, &c).map(|k| (format!("{UNET}{k}"), Transform::Same))
        });
        let c = unet_config.clone();
        read_through(&file, path, map, dtype, device, |vb| {
            UNet::new(vb, &c).map(drop)
        })?
    };
    let vae_dt = vae_dtype(&vae_config, dtype);
    let vae = {
        let levels = vae_config.block_out_channels.len();
        let map: NameMap = Box::new(move |name: &str| {
            ldm_keys::vae(name, levels).map(|(k, t)| (format!("{VAE}{k}"), t))
        });
        let c = vae_config.clone();
        read_through(&file, path, map, vae_dt, device, |vb| {
            candle_transformers::models::stable_diffusion::vae::AutoEncoderKL::new(
                vb.clone(),
                c.in_channels,
                c.out_channels,
                vae_blocks(&c),
            )?;
            VaeEncoder::new(vb, &c).map(drop)
        })?
    };
    let (text_config, text_encoder, xl) = match family {
        Family::Sd1 | Family::Sd2 => {
            let open = family == Family::Sd2;
            let prefix = if open {
                "cond_stage_model.model."
            } else {
                "cond_stage_model.transformer."
            };
            // Published SD 2.x checkpoints carry OpenCLIP's last layer, which SD 2 skips.
            let config = infer_text(&header, open, prefix, &t.text, open && !tiny).map_err(&bad)?;
            let map = if open {
                open_clip_map(prefix)
            } else {
                clip_map(&header, prefix)
            };
            let cfg = config.clone();
            let weights = read_through(&file, path, map, dtype, device, |vb| {
                ClipTextModel::new(vb, &cfg).map(drop)
            })?;
            (config, weights, None)
        }
        Family::Sdxl => {
            let p1 = "conditioner.embedders.0.transformer.";
            let p2 = "conditioner.embedders.1.model.";
            let c1 = infer_text(&header, false, p1, &t.text, false).map_err(&bad)?;
            let template_2 = t
                .text_2
                .clone()
                .ok_or_else(|| bad("no second encoder template".into()))?;
            let c2 = infer_text(&header, true, p2, &template_2, false).map_err(&bad)?;
            let cfg1 = c1.clone();
            let w1 = read_through(&file, path, clip_map(&header, p1), dtype, device, |vb| {
                ClipTextModel::new(vb, &cfg1).map(drop)
            })?;
            let cfg2 = c2.clone();
            let w2 = read_through(&file, path, open_clip_map(p2), dtype, device, |vb| {
                ClipTextModelWithProjection::new(vb, &cfg2).map(drop)
            })?;
            let xl = XlParts {
                tokenizer_2: tokenizer(tiny, t.pads[1], c2.max_position_embeddings)?,
                text_config_2: c2,
                text_encoder_2: w2,
                force_zeros_for_empty_prompt: t.model_index["force_zeros_for_empty_prompt"]
                    .as_bool()
                    .unwrap_or(true),
            };
            (c1, w1, Some(xl))
        }
    };
    Ok(Parts {
        origin: path.to_path_buf(),
        tokenizer: tokenizer(tiny, t.pads[0], text_config.max_position_embeddings)?,
        unet_config,
        vae_config,
        text_config,
        scheduler_config,
        unet,
        vae,
        text_encoder,
        xl,
    })
}

/// A VAE for [`super::StableDiffusion::with_vae`]: a diffusers `vae/` folder (its
/// config and weights), or a `.safetensors` file in the original layout (with or without
/// `first_stage_model.`) or diffusers' layout, whose architecture is read from its
/// tensors on top of the model's own VAE config.
pub(super) fn vae_parts(
    path: &Path,
    model_vae: &VaeConfig,
    dtype: DType,
    device: &Device,
) -> Result<(VaeConfig, Weights), InferenceError> {
    if path.is_dir() {
        let config: VaeConfig = super::model_config::read_json(&path.join("config.json"))?;
        super::load::check_vae(path, &config)?;
        let file = [
            "diffusion_pytorch_model.safetensors",
            "diffusion_pytorch_model.fp16.safetensors",
        ]
        .iter()
        .map(|f| path.join(f))
        .find(|p| p.exists())
        .ok_or_else(|| {
            InferenceError::invalid_model(path, "no diffusion_pytorch_model.safetensors")
        })?;
        return Ok((config, Weights::read(&file, dtype, device)?));
    }
    let file = open_safetensors(&model_file(path, dtype, device))?;
    let header: Header = file
        .tensors()
        .into_iter()
        .map(|(n, info)| (n, info.shape.clone()))
        .collect();
    let template =
        serde_json::to_value(model_vae).map_err(|e| InferenceError::invalid_model(path, e))?;
    if header.keys().any(|k| k.starts_with("encoder.down_blocks.")) {
        // Already diffusers' names: the shapes give the architecture.
        let levels = (0..16)
            .take_while(|i| {
                header.contains_key(&format!("encoder.down_blocks.{i}.resnets.0.conv1.weight"))
            })
            .count();
        let mut c = template;
        c["block_out_channels"] = json!((0..levels)
            .map(|i| header[&format!("encoder.down_blocks.{i}.resnets.0.conv1.weight")][0])
            .collect::<Vec<_>>());
        let config: VaeConfig =
            serde_json::from_value(c).map_err(|e| InferenceError::invalid_model(path, e))?;
        return Ok((config, Weights::read(path, dtype, device)?));
    }
    let prefix = if header.keys().any(|k| k.starts_with(VAE)) {
        VAE
    } else {
        ""
    };
    let config = infer_vae(&header, prefix, &template)
        .map_err(|e| InferenceError::invalid_model(path, e))?;
    let levels = config.block_out_channels.len();
    let map: NameMap = Box::new(move |name: &str| {
        ldm_keys::vae(name, levels).map(|(k, t)| (format!("{prefix}{k}"), t))
    });
    let c = config.clone();
    let weights = read_through(&file, path, map, dtype, device, |vb| {
        candle_transformers::models::stable_diffusion::vae::AutoEncoderKL::new(
            vb.clone(),
            c.in_channels,
            c.out_channels,
            vae_blocks(&c),
        )?;
        VaeEncoder::new(vb, &c).map(drop)
    })?;
    Ok((config, weights))
}

#[cfg(test)]
mod tests;
