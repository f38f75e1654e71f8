//! Finding a model folder: the offline `tiny` model, a local folder, or a hub download.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::InferenceError;

/// A model that sdq knows by a short name.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct KnownModel {
    pub name: &'static str,
    pub repo: &'static str,
    pub description: &'static str,
    pub default_width: usize,
    pub default_height: usize,
    pub default_steps: usize,
    pub default_guidance: f64,
}

/// The short names; `tiny` is generated locally and needs no network.
pub const KNOWN_MODELS: &[KnownModel] = &[
    KnownModel {
        name: "tiny",
        repo: "",
        description: "small random model generated on first use (tests, demos)",
        default_width: 64,
        default_height: 64,
        default_steps: 4,
        default_guidance: 7.5,
    },
    KnownModel {
        name: "sd-turbo",
        repo: "stabilityai/sd-turbo",
        description: "SD 2.1 distilled for 1-4 steps",
        default_width: 512,
        default_height: 512,
        default_steps: 1,
        default_guidance: 0.0,
    },
    KnownModel {
        name: "v1-5",
        repo: "stable-diffusion-v1-5/stable-diffusion-v1-5",
        description: "Stable Diffusion 1.5",
        default_width: 512,
        default_height: 512,
        default_steps: 30,
        default_guidance: 7.5,
    },
    KnownModel {
        name: "v2-1",
        repo: "stabilityai/stable-diffusion-2-1",
        description: "Stable Diffusion 2.1 (v-prediction)",
        default_width: 768,
        default_height: 768,
        default_steps: 30,
        default_guidance: 7.5,
    },
];

/// Files a diffusers SD 1.x/2.x folder needs.
const REQUIRED_FILES: &[&str] = &[
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "tokenizer/tokenizer_config.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
];

/// Looks a short name up.
pub fn known(name: &str) -> Option<&'static KnownModel> {
    KNOWN_MODELS.iter().find(|m| m.name == name)
}

/// Turns a model id into a local folder, generating or downloading it if needed.
///
/// `tiny` is written under `models_dir` on first use; a known name or `owner/repo` comes
/// from the Hugging Face cache or the hub; anything else must be an existing folder.
pub fn resolve(model: &str, models_dir: &Path) -> Result<PathBuf, InferenceError> {
    if model == "tiny" {
        let dir = models_dir.join("tiny");
        super::tiny::ensure(&dir, super::tiny::DEFAULT_SEED)?;
        return Ok(dir);
    }
    if let Some(known) = known(model) {
        return download(model, known.repo);
    }
    let path = Path::new(model);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let looks_like_repo = model.split('/').count() == 2
        && model.split('/').all(|p| !p.is_empty())
        && !model.starts_with('.')
        && !model.starts_with('/');
    if looks_like_repo {
        return download(model, model);
    }
    Err(InferenceError::UnknownModel(model.to_string()))
}

/// Fetches a repo's SD files, from the local cache when they are all there.
fn download(model: &str, repo: &str) -> Result<PathBuf, InferenceError> {
    let unavailable = |reason: String| InferenceError::ModelUnavailable {
        model: model.to_string(),
        reason: format!(
            "{reason}. To run offline, download '{repo}' into the Hugging Face cache on a \
             connected machine, or pass a local diffusers folder with --model /path/to/folder \
             (or use --model tiny)"
        ),
    };
    let cache = hf_hub::Cache::from_env();
    let cached = cache.model(repo.to_string());
    if let Some(paths) = REQUIRED_FILES
        .iter()
        .map(|f| cached.get(f))
        .collect::<Option<Vec<_>>>()
    {
        return snapshot_root(&paths[0]);
    }
    if std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1") {
        return Err(unavailable(
            "it is not in the local cache and HF_HUB_OFFLINE=1".into(),
        ));
    }
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(true)
        .build()
        .map_err(|e| unavailable(format!("cannot start the hub client: {e}")))?;
    let repo_api = api.model(repo.to_string());
    let mut first = None;
    for file in REQUIRED_FILES {
        let path = repo_api
            .get(file)
            .map_err(|e| unavailable(format!("downloading {file} from the hub failed: {e}")))?;
        first.get_or_insert(path);
    }
    snapshot_root(&first.expect("at least one file"))
}

/// `model_index.json` sits at the root of the snapshot folder.
fn snapshot_root(model_index: &Path) -> Result<PathBuf, InferenceError> {
    model_index
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| InferenceError::invalid_model(model_index, "no parent folder"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_names_are_rejected_without_network() {
        let dir = tempfile::tempdir().unwrap();
        let err = resolve("no-such-model", dir.path()).unwrap_err();
        assert!(matches!(err, InferenceError::UnknownModel(_)), "{err}");
    }

    #[test]
    fn offline_hub_models_fail_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::env::set_var("HF_HOME", dir.path());
        std::env::set_var("HF_HUB_OFFLINE", "1");
        let err = resolve("sd-turbo", dir.path()).unwrap_err().to_string();
        assert!(err.contains("sd-turbo"), "{err}");
        assert!(err.contains("--model"), "{err}");
    }
}
