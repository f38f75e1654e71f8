//! Writing a diffusers folder as a single-file checkpoint in the original (A1111)
//! layout: the inverse of loading one.

use super::*;

/// What `export` writes besides the model itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExportOptions {
    /// Store the weights in half precision (what most published checkpoints are).
    pub half: bool,
    /// Also write a decoy EMA copy of the UNet (`model_ema.*`, negated weights), as
    /// training checkpoints carry one, so tests can show it is never read.
    pub ema: bool,
    /// Write only the VAE, in the original layout without `first_stage_model.` (as
    /// standalone VAE files are published).
    pub vae_only: bool,
}

/// Writes a diffusers folder as one `.safetensors` checkpoint in the original layout
/// (`sdq models export`), the inverse of loading one.
pub fn export(folder: &Path, out: &Path, options: ExportOptions) -> Result<(), InferenceError> {
    let parts = crate::inference::load::folder_parts(folder, &Device::Cpu, DType::F32)?;
    let dtype = if options.half { DType::F16 } else { DType::F32 };
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let levels = parts.vae_config.block_out_channels.len();
    let vae_prefix = if options.vae_only { "" } else { VAE };
    for name in parts.vae.names() {
        let (key, transform) = ldm_keys::vae(name, levels).ok_or_else(|| {
            InferenceError::invalid_model(folder, format!("no original name for VAE tensor {name}"))
        })?;
        let t = parts.vae.get(name).expect("listed");
        let t = match transform {
            Transform::Conv1x1 if t.dims().len() == 2 => t.unsqueeze(2)?.unsqueeze(3)?,
            _ => t.clone(),
        };
        tensors.insert(format!("{vae_prefix}{key}"), t);
    }
    if !options.vae_only {
        for name in parts.unet.names() {
            let key = ldm_keys::unet(name, &parts.unet_config).ok_or_else(|| {
                InferenceError::invalid_model(
                    folder,
                    format!("no original name for UNet tensor {name}"),
                )
            })?;
            let t = parts.unet.get(name).expect("listed").clone();
            if options.ema {
                // EMA keys drop the dots of the module path, as the original trainer saved them.
                tensors.insert(
                    format!("model_ema.diffusion_model{}", key.replace('.', "")),
                    t.neg()?,
                );
            }
            tensors.insert(format!("{UNET}{key}"), t);
        }
        if options.ema {
            tensors.insert(
                "model_ema.decay".into(),
                Tensor::new(&[0.9999f32], &Device::Cpu)?,
            );
        }
        match &parts.xl {
            None if parts.text_config.hidden_act == "gelu" => {
                // SD 2.x: OpenCLIP layout (with the projection OpenCLIP has and SD 2 ignores).
                export_open_clip(
                    &parts.text_encoder,
                    "cond_stage_model.model.",
                    &mut tensors,
                    folder,
                )?;
                let h = parts.text_config.hidden_size;
                tensors.insert(
                    "cond_stage_model.model.text_projection".into(),
                    Tensor::zeros((h, h), DType::F32, &Device::Cpu)?,
                );
            }
            None => {
                for name in parts.text_encoder.names() {
                    let t = parts.text_encoder.get(name).expect("listed").clone();
                    tensors.insert(format!("cond_stage_model.transformer.{name}"), t);
                }
            }
            Some(xl) => {
                for name in parts.text_encoder.names() {
                    let t = parts.text_encoder.get(name).expect("listed").clone();
                    tensors.insert(format!("conditioner.embedders.0.transformer.{name}"), t);
                }
                export_open_clip(
                    &xl.text_encoder_2,
                    "conditioner.embedders.1.model.",
                    &mut tensors,
                    folder,
                )?;
            }
        }
    }
    let tensors = tensors
        .into_iter()
        .map(|(k, t)| {
            let t = if t.dtype().is_float() {
                t.to_dtype(dtype)?
            } else {
                t
            };
            Ok((k, t))
        })
        .collect::<candle_core::Result<HashMap<_, _>>>()?;
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).map_err(|source| InferenceError::Io {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    candle_core::safetensors::save(&tensors, out)?;
    Ok(())
}

/// Writes a transformers CLIP text model in OpenCLIP's layout: fused query/key/value,
/// transposed projection.
fn export_open_clip(
    weights: &Weights,
    prefix: &str,
    tensors: &mut HashMap<String, Tensor>,
    folder: &Path,
) -> Result<(), InferenceError> {
    let mut fused: BTreeMap<String, [Option<Tensor>; 3]> = BTreeMap::new();
    for name in weights.names() {
        if name.ends_with("position_ids") {
            continue;
        }
        let Some((key, transform)) = ldm_keys::open_clip(name) else {
            return Err(InferenceError::invalid_model(
                folder,
                format!("no OpenCLIP name for text tensor {name}"),
            ));
        };
        let t = weights.get(name).expect("listed").clone();
        match transform {
            Transform::QkvPart(part) => {
                fused.entry(key).or_default()[part] = Some(t);
            }
            Transform::Transpose => {
                tensors.insert(format!("{prefix}{key}"), t.t()?.contiguous()?);
            }
            _ => {
                tensors.insert(format!("{prefix}{key}"), t);
            }
        }
    }
    for (key, parts) in fused {
        let parts: Vec<Tensor> = parts.into_iter().collect::<Option<_>>().ok_or_else(|| {
            InferenceError::invalid_model(folder, format!("{key}: q, k or v missing"))
        })?;
        tensors.insert(format!("{prefix}{key}"), Tensor::cat(&parts, 0)?);
    }
    Ok(())
}
