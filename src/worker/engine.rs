//! The worker's loaded model: kept between jobs, with the variant (LoRAs, VAE,
//! embeddings) the last job asked for.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device};

use crate::inference::embeddings::EmbeddingLibrary;
use crate::inference::lora::Lora;
use crate::inference::{self, catalogue, InferenceError, StableDiffusion};
use crate::queue::JobSpec;

/// Keeps the most recently used model loaded, and the variant of it (LoRAs, VAE) that
/// the last job asked for: the next job with the same model and adapters reuses both,
/// one with other adapters rebuilds only the patched layers from the base weights.
pub(super) struct Engine {
    loaded: Mutex<Option<Loaded>>,
    models_dir: PathBuf,
    device: Device,
    dtype: DType,
}

struct Loaded {
    model: String,
    base: Arc<StableDiffusion>,
    /// `JobSpec::adapters_key` of `variant`.
    adapters: String,
    variant: Arc<StableDiffusion>,
    /// The embeddings folder as last read (names, sizes, times), to reread on change.
    embeddings_stamp: Vec<(String, u64, u128)>,
}

/// What identifies the embeddings folder's contents without reading the files.
fn folder_stamp(dir: &std::path::Path) -> Vec<(String, u64, u128)> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut stamp: Vec<_> = read
        .filter_map(Result::ok)
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            let modified = meta
                .modified()
                .ok()?
                .duration_since(std::time::UNIX_EPOCH)
                .ok()?
                .as_nanos();
            Some((
                e.file_name().to_string_lossy().into_owned(),
                meta.len(),
                modified,
            ))
        })
        .collect();
    stamp.sort();
    stamp
}

impl Engine {
    pub(super) fn new(models_dir: PathBuf, device: Device, dtype: DType) -> Self {
        Self {
            loaded: Mutex::new(None),
            models_dir,
            device,
            dtype,
        }
    }

    pub(super) fn loaded_model(&self) -> Option<String> {
        self.loaded
            .lock()
            .expect("engine lock")
            .as_ref()
            .map(|l| l.model.clone())
    }

    pub(super) fn loaded_adapters(&self) -> Option<String> {
        self.loaded
            .lock()
            .expect("engine lock")
            .as_ref()
            .map(|l| l.adapters.clone())
    }

    /// Blocking: the model of `spec` with its LoRAs, VAE and the models directory's
    /// embeddings, loading or rebuilding only what differs from the last job.
    pub(super) fn get(&self, spec: &JobSpec) -> Result<Arc<StableDiffusion>, InferenceError> {
        let adapters = spec.adapters_key();
        let embeddings_dir = self.models_dir.join(catalogue::Kind::Embedding.folder());
        let stamp = folder_stamp(&embeddings_dir);
        let mut guard = self.loaded.lock().expect("engine lock");
        if let Some(l) = guard.as_ref() {
            if l.model == spec.model && l.adapters == adapters && l.embeddings_stamp == stamp {
                return Ok(l.variant.clone());
            }
        }
        let base = match guard.take() {
            Some(l) if l.model == spec.model => l.base,
            _ => {
                // The old model is dropped before the next loads, so two never share memory.
                let folder = inference::hub::resolve(&spec.model, &self.models_dir)?;
                Arc::new(StableDiffusion::load(&folder, &self.device, self.dtype)?)
            }
        };
        let variant = Arc::new(build_variant(&base, spec, &self.models_dir)?);
        *guard = Some(Loaded {
            model: spec.model.clone(),
            base,
            adapters,
            variant: variant.clone(),
            embeddings_stamp: stamp,
        });
        Ok(variant)
    }
}

/// The job's variant of a loaded model: its LoRAs and VAE from the models directory, and
/// the directory's embeddings.
pub fn build_variant(
    base: &StableDiffusion,
    spec: &JobSpec,
    models_dir: &std::path::Path,
) -> Result<StableDiffusion, InferenceError> {
    let loras = spec
        .loras
        .iter()
        .map(|l| {
            let path = catalogue::locate(models_dir, catalogue::Kind::Lora, &l.name)?;
            Ok((Lora::read(&path, &l.name)?, l.weight))
        })
        .collect::<Result<Vec<_>, InferenceError>>()?;
    let refs: Vec<(&Lora, f64)> = loras.iter().map(|(l, w)| (l, *w)).collect();
    let mut variant = base.with_loras(&refs)?;
    if let Some(vae) = &spec.vae {
        let path = catalogue::locate(models_dir, catalogue::Kind::Vae, vae)?;
        variant = variant.with_vae(&path)?;
    }
    let (library, errors) =
        EmbeddingLibrary::read_dir(&models_dir.join(catalogue::Kind::Embedding.folder()));
    for error in errors {
        tracing::warn!(%error, "embedding skipped");
    }
    Ok(variant.with_embeddings(Arc::new(library)))
}
