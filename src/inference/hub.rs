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

/// The short names; `tiny` is generated locally and needs no network. Defaults are the
/// ones each model card recommends (turbo models: 1 step, no guidance).
pub const KNOWN_MODELS: &[KnownModel] = &[
    known_model(
        "tiny",
        "",
        "small random SD-1.5-shaped model generated on first use (tests, demos)",
        64,
        4,
        7.5,
    ),
    known_model(
        "tiny-sd2",
        "",
        "small random SD-2-shaped model (v-prediction), generated locally",
        64,
        4,
        7.5,
    ),
    known_model(
        "tiny-inpaint",
        "",
        "small random SD-1.5 inpainting model, generated locally",
        64,
        4,
        7.5,
    ),
    known_model(
        "tiny-sdxl",
        "",
        "small random SDXL-shaped model, generated locally",
        64,
        4,
        5.0,
    ),
    known_model(
        "tiny-sdxl-inpaint",
        "",
        "small random SDXL inpainting model, generated locally",
        64,
        4,
        5.0,
    ),
    known_model(
        "sd-turbo",
        "stabilityai/sd-turbo",
        "SD 2.1 distilled for 1-4 steps",
        512,
        1,
        0.0,
    ),
    known_model(
        "v1-5",
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "Stable Diffusion 1.5",
        512,
        30,
        7.5,
    ),
    known_model(
        "v1-5-inpaint",
        "stable-diffusion-v1-5/stable-diffusion-inpainting",
        "Stable Diffusion 1.5 inpainting (9-channel UNet)",
        512,
        30,
        7.5,
    ),
    known_model(
        "v2-1",
        "stabilityai/stable-diffusion-2-1",
        "Stable Diffusion 2.1 (v-prediction)",
        768,
        30,
        7.5,
    ),
    known_model(
        "v2-inpaint",
        "stabilityai/stable-diffusion-2-inpainting",
        "Stable Diffusion 2 inpainting (9-channel UNet)",
        512,
        30,
        7.5,
    ),
    known_model(
        "xl",
        "stabilityai/stable-diffusion-xl-base-1.0",
        "Stable Diffusion XL base 1.0",
        1024,
        30,
        5.0,
    ),
    known_model(
        "xl-inpaint",
        "diffusers/stable-diffusion-xl-1.0-inpainting-0.1",
        "Stable Diffusion XL inpainting 0.1",
        1024,
        30,
        8.0,
    ),
    known_model(
        "xl-turbo",
        "stabilityai/sdxl-turbo",
        "SDXL distilled for 1-4 steps",
        512,
        1,
        0.0,
    ),
];

const fn known_model(
    name: &'static str,
    repo: &'static str,
    description: &'static str,
    size: usize,
    steps: usize,
    guidance: f64,
) -> KnownModel {
    KnownModel {
        name,
        repo,
        description,
        default_width: size,
        default_height: size,
        default_steps: steps,
        default_guidance: guidance,
    }
}

/// The offline tiny models: `tiny` (SD 1.5 shape), `tiny-sd2`, `tiny-inpaint`,
/// `tiny-sdxl`, `tiny-sdxl-inpaint`.
fn tiny_kind(model: &str) -> Option<super::tiny::TinyKind> {
    use super::tiny::TinyKind;
    match model {
        "tiny" => Some(TinyKind::Sd15),
        "tiny-sd2" => Some(TinyKind::Sd2),
        "tiny-inpaint" => Some(TinyKind::Inpaint),
        "tiny-sdxl" => Some(TinyKind::Sdxl),
        "tiny-sdxl-inpaint" => Some(TinyKind::SdxlInpaint),
        _ => None,
    }
}

/// The family of a known model: `sd1`, `sd2` or `sdxl` (`-inpaint` for 9-channel UNets).
pub fn family(name: &str) -> Option<&'static str> {
    Some(match name {
        "tiny" | "v1-5" => "sd1",
        "tiny-inpaint" | "v1-5-inpaint" => "sd1-inpaint",
        "tiny-sd2" | "sd-turbo" | "v2-1" => "sd2",
        "v2-inpaint" => "sd2-inpaint",
        "tiny-sdxl" | "xl" | "xl-turbo" => "sdxl",
        "tiny-sdxl-inpaint" | "xl-inpaint" => "sdxl-inpaint",
        _ => return None,
    })
}

/// Looks a short name up.
pub fn known(name: &str) -> Option<&'static KnownModel> {
    KNOWN_MODELS.iter().find(|m| m.name == name)
}

/// Turns a model id into a local folder, generating or downloading it if needed.
///
/// `tiny` is written under `models_dir` on first use; a known name or `owner/repo` comes
/// from the Hugging Face cache or the hub; a checkpoint of the models directory by name;
/// anything else must be an existing folder or `.safetensors` file.
pub fn resolve(model: &str, models_dir: &Path) -> Result<PathBuf, InferenceError> {
    if let Some(kind) = tiny_kind(model) {
        let dir = models_dir.join(model);
        super::tiny::ensure_kind(&dir, super::tiny::DEFAULT_SEED, kind)?;
        return Ok(dir);
    }
    if let Some(known) = known(model) {
        return download(model, known.repo);
    }
    if let Some(entry) = checkpoint(models_dir, model) {
        return Ok(entry);
    }
    let path = Path::new(model);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if path.is_file() {
        // Single-file checkpoints; pickles are refused with a reason.
        super::weights::refuse_pickle(path)?;
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

/// A checkpoint of the models directory called `name`: `checkpoints/NAME.safetensors`
/// or a diffusers folder `checkpoints/NAME/`.
pub fn checkpoint(models_dir: &Path, name: &str) -> Option<PathBuf> {
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return None;
    }
    let folder = models_dir.join("checkpoints");
    let file = folder.join(format!("{name}.safetensors"));
    if file.is_file() {
        return Some(file);
    }
    let named = folder.join(name);
    (named.is_dir() && named.join("model_index.json").exists()
        || named.is_file() && name.ends_with(".safetensors"))
    .then_some(named)
}

/// The files of one pipeline component that loading needs, by its folder name in
/// `model_index.json` (`unet`, `vae`, `text_encoder_2`, `tokenizer`, `scheduler`, ...).
fn component_files(component: &str) -> Vec<String> {
    let files: &[&str] = if component.starts_with("tokenizer") {
        &[
            "vocab.json",
            "merges.txt",
            "tokenizer_config.json",
            "special_tokens_map.json",
        ]
    } else if component.starts_with("text_encoder") {
        &["config.json", "model.safetensors"]
    } else if component == "scheduler" {
        &["scheduler_config.json"]
    } else if component == "unet" || component == "vae" {
        &["config.json", "diffusion_pytorch_model.safetensors"]
    } else {
        // safety_checker, feature_extractor, image_encoder: not used for generation.
        &[]
    };
    files.iter().map(|f| format!("{component}/{f}")).collect()
}

/// Every file to fetch for a pipeline, from its `model_index.json`: components whose
/// entry is `[library, class]` (a `null` class means the pipeline has none).
pub fn pipeline_files(model_index: &serde_json::Value) -> Vec<String> {
    let mut files = vec!["model_index.json".to_string()];
    if let Some(map) = model_index.as_object() {
        let mut names: Vec<&String> = map
            .iter()
            .filter(|(k, v)| !k.starts_with('_') && v.get(1).is_some_and(|c| !c.is_null()))
            .map(|(k, _)| k)
            .collect();
        names.sort();
        for name in names {
            files.extend(component_files(name));
        }
    }
    files
}

/// `sdq models pull REPO`: fetches a diffusers repo into the Hugging Face cache (with a
/// progress bar) and returns its folder.
pub fn pull(repo: &str) -> Result<PathBuf, InferenceError> {
    download(repo, repo)
}

/// Fetches a repo's files, from the local cache when they are all there.
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
    if let Some(index_path) = cached.get("model_index.json") {
        let index: serde_json::Value = super::model_config::read_json(&index_path)?;
        if pipeline_files(&index)
            .iter()
            .all(|f| cached.get(f).is_some())
        {
            return snapshot_root(&index_path);
        }
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
    let fetch = |file: &str| {
        repo_api
            .get(file)
            .map_err(|e| unavailable(format!("downloading {file} from the hub failed: {e}")))
    };
    let index_path = fetch("model_index.json")?;
    let index: serde_json::Value = super::model_config::read_json(&index_path)?;
    for file in pipeline_files(&index) {
        fetch(&file)?;
    }
    snapshot_root(&index_path)
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
    fn files_to_fetch_follow_model_index() {
        let sdxl = serde_json::json!({
            "_class_name": "StableDiffusionXLPipeline",
            "feature_extractor": [null, null],
            "scheduler": ["diffusers", "EulerDiscreteScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "tokenizer_2": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        });
        let files = pipeline_files(&sdxl);
        assert!(files.contains(&"text_encoder_2/model.safetensors".to_string()));
        assert!(files.contains(&"tokenizer_2/merges.txt".to_string()));
        assert!(files.contains(&"scheduler/scheduler_config.json".to_string()));
        assert!(files.contains(&"unet/diffusion_pytorch_model.safetensors".to_string()));
        assert!(!files.iter().any(|f| f.starts_with("feature_extractor")));
        assert_eq!(files.len(), 1 + 1 + 2 * 2 + 2 * 4 + 2 + 2);
    }

    #[test]
    fn every_family_has_a_name() {
        for name in [
            "sd-turbo",
            "v1-5",
            "v1-5-inpaint",
            "v2-1",
            "v2-inpaint",
            "xl",
            "xl-inpaint",
            "xl-turbo",
            "tiny",
        ] {
            assert!(known(name).is_some(), "{name}");
        }
        assert_eq!(known("xl").unwrap().default_width, 1024);
        assert_eq!(known("xl-turbo").unwrap().default_guidance, 0.0);
    }

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
