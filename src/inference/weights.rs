//! One component's weights in memory, by diffusers name.
//!
//! Modules are built from these maps rather than straight from the files, so that a
//! LoRA can be applied by building the affected modules again from a copy of the map in
//! which only the patched tensors differ: the base tensors are shared (candle tensors
//! are reference-counted), never written to, and serve the next job unchanged.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::mapped::SafetensorsFile;
use super::InferenceError;

/// Tensors of one component (UNet, VAE, a text encoder) by their diffusers names.
#[derive(Clone, Default)]
pub struct Weights {
    tensors: HashMap<String, Tensor>,
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Weights({} tensors)", self.tensors.len())
    }
}

/// Opens a `.safetensors` file, memory-mapped (see [`SafetensorsFile`]), with a clear
/// error for anything that is not one (pickles are never read).
pub fn open_safetensors(path: &Path) -> Result<SafetensorsFile, InferenceError> {
    SafetensorsFile::open(path)
}

/// The file to read a model's weights from for `dtype` on `device`: `path` itself, or,
/// for an f32 model on the CPU, the f32 copy of a half-precision file
/// (`mapped::f32_copy`), whose tensors are then mapped rather than converted.
pub fn model_file(path: &Path, dtype: DType, device: &Device) -> PathBuf {
    let copy = (device.is_cpu() && dtype == DType::F32)
        .then(|| super::mapped::f32_copy::for_cpu_f32(path))
        .flatten();
    copy.unwrap_or_else(|| path.to_path_buf())
}

/// `.ckpt`, `.pt`, `.pth` and `.bin` files are Python pickles, which can run code when
/// loaded: sdq refuses them rather than unpickle.
pub fn refuse_pickle(path: &Path) -> Result<(), InferenceError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    if matches!(ext.as_deref(), Some("ckpt" | "pt" | "pth" | "bin")) {
        return Err(InferenceError::invalid_model(
            path,
            "pickle files (.ckpt, .pt, .pth, .bin) are refused because loading them can run \
             arbitrary code; use the .safetensors version of this file",
        ));
    }
    Ok(())
}

/// Floating-point tensors take the model's dtype; integer buffers keep theirs.
fn convert(tensor: Tensor, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
    let tensor = tensor.to_device(device)?;
    if tensor.dtype().is_float() {
        tensor.to_dtype(dtype)
    } else {
        Ok(tensor)
    }
}

impl Weights {
    /// Every tensor of a diffusers-layout `.safetensors` file.
    pub fn read(path: &Path, dtype: DType, device: &Device) -> Result<Self, InferenceError> {
        let file = open_safetensors(&model_file(path, dtype, device))?;
        let mut tensors = HashMap::new();
        for (name, _) in file.tensors() {
            let tensor = file
                .load(&name, device)
                .map_err(|e| InferenceError::invalid_model(path, e))?;
            tensors.insert(name, convert(tensor, dtype, device)?);
        }
        Ok(Self { tensors })
    }

    /// Builds a map from tensors already named the diffusers way.
    pub fn from_map(
        tensors: HashMap<String, Tensor>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self, InferenceError> {
        let tensors = tensors
            .into_iter()
            .map(|(name, t)| Ok((name, convert(t, dtype, device)?)))
            .collect::<candle_core::Result<_>>()?;
        Ok(Self { tensors })
    }

    /// A builder over these tensors (sharing them, not copying).
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_tensors(self.tensors.clone(), dtype, device)
    }

    /// The tensor called `name`, if any.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// Names of every tensor.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// How many tensors there are.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// A copy in which `patched` replace the tensors of the same names.
    pub fn with(&self, patched: HashMap<String, Tensor>) -> Self {
        let mut tensors = self.tensors.clone();
        tensors.extend(patched);
        Self { tensors }
    }

    /// transformers 5 saves `CLIPTextModel` and `CLIPTextModelWithProjection` without the
    /// `text_model.` prefix that every earlier version wrote; both layouts load as the
    /// older one (`text_projection` sits outside the text model in either).
    pub fn with_text_model_prefix(self) -> Self {
        let prefixed = self.tensors.keys().any(|k| k.starts_with("text_model."));
        if prefixed {
            return self;
        }
        let tensors = self
            .tensors
            .into_iter()
            .map(|(name, t)| {
                if name.starts_with("text_projection") {
                    (name, t)
                } else {
                    (format!("text_model.{name}"), t)
                }
            })
            .collect();
        Self { tensors }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pickles_are_refused_by_extension() {
        for name in ["model.ckpt", "x.PT", "a.pth", "pytorch_model.bin"] {
            let err = refuse_pickle(Path::new(name)).unwrap_err().to_string();
            assert!(err.contains("pickle"), "{name}: {err}");
        }
        assert!(refuse_pickle(Path::new("model.safetensors")).is_ok());
    }

    #[test]
    fn truncated_files_are_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.safetensors");
        let t = Tensor::zeros((4, 4), DType::F32, &Device::Cpu).unwrap();
        candle_core::safetensors::save(&HashMap::from([("w".to_string(), t)]), &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
        let err = Weights::read(&path, DType::F32, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("broken.safetensors"), "{err}");
        std::fs::write(&path, b"not a safetensors file at all").unwrap();
        assert!(Weights::read(&path, DType::F32, &Device::Cpu).is_err());
    }

    #[test]
    fn unprefixed_text_encoders_gain_the_prefix() {
        let t = Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap();
        let map = HashMap::from([
            ("embeddings.token_embedding.weight".to_string(), t.clone()),
            ("text_projection.weight".to_string(), t),
        ]);
        let w = Weights::from_map(map, DType::F32, &Device::Cpu)
            .unwrap()
            .with_text_model_prefix();
        assert!(w
            .get("text_model.embeddings.token_embedding.weight")
            .is_some());
        assert!(w.get("text_projection.weight").is_some());
    }
}
