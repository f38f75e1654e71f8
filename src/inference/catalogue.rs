//! The models directory: what sits in `checkpoints/`, `loras/`, `embeddings/` and
//! `vae/`, with each file's family, size and SHA-256.
//!
//! [`scan`] reads only file headers (safetensors keep names and shapes up front), so a
//! scan is quick; hashes are computed once per file and cached in `.sdq-hashes.json`
//! beside the folders, keyed by path, size and modification time. Pickles (`.ckpt`,
//! `.pt`, ...) are listed with an error, never opened.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::weights::{open_safetensors, refuse_pickle};
use super::InferenceError;

/// The four kinds of file the directory holds, by folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Checkpoint,
    Lora,
    Embedding,
    Vae,
}

impl Kind {
    /// The folder under the models directory.
    pub fn folder(self) -> &'static str {
        match self {
            Kind::Checkpoint => "checkpoints",
            Kind::Lora => "loras",
            Kind::Embedding => "embeddings",
            Kind::Vae => "vae",
        }
    }

    /// Every kind, in listing order.
    pub const ALL: [Kind; 4] = [Kind::Checkpoint, Kind::Lora, Kind::Embedding, Kind::Vae];
}

/// One file (or diffusers folder) of the models directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// What requests call it: the file name without its extension.
    pub name: String,
    pub kind: Kind,
    /// Path relative to the models directory, e.g. `loras/film-grain.safetensors`.
    pub file: String,
    /// Absolute path on this host.
    #[serde(skip)]
    pub path: PathBuf,
    /// `safetensors`, `diffusers` (a folder) or `pickle` (refused).
    pub format: String,
    /// `sd1`, `sd2` or `sdxl` when the tensors tell; `-inpaint` marks 9-channel UNets.
    pub family: Option<String>,
    /// Bytes on disk (a folder: all its files).
    pub size: u64,
    /// Hex SHA-256 of the file (folders have none).
    pub sha256: Option<String>,
    /// Embeddings: token positions it takes.
    pub vectors: Option<usize>,
    /// Why the file cannot be used, if it cannot.
    pub error: Option<String>,
}

/// Everything found, per kind, sorted by name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Catalogue {
    pub checkpoints: Vec<Entry>,
    pub loras: Vec<Entry>,
    pub embeddings: Vec<Entry>,
    pub vae: Vec<Entry>,
}

impl Catalogue {
    /// The entries of one kind.
    pub fn of(&self, kind: Kind) -> &[Entry] {
        match kind {
            Kind::Checkpoint => &self.checkpoints,
            Kind::Lora => &self.loras,
            Kind::Embedding => &self.embeddings,
            Kind::Vae => &self.vae,
        }
    }

    fn of_mut(&mut self, kind: Kind) -> &mut Vec<Entry> {
        match kind {
            Kind::Checkpoint => &mut self.checkpoints,
            Kind::Lora => &mut self.loras,
            Kind::Embedding => &mut self.embeddings,
            Kind::Vae => &mut self.vae,
        }
    }

    /// A1111's "Automatic" VAE: the usable VAE named like checkpoint `model`, if its
    /// family fits.
    pub fn paired_vae(&self, model: &str) -> Option<String> {
        let checkpoint = self.find(Kind::Checkpoint, model)?;
        let vae = self.find(Kind::Vae, model)?;
        let fits = match (vae.family.as_deref(), checkpoint.family.as_deref()) {
            (Some(theirs), Some(ours)) => base_family(theirs) == base_family(ours),
            _ => true,
        };
        (vae.error.is_none() && fits).then(|| vae.name.clone())
    }

    /// The entry of `kind` called `name` (a file name with its extension works too).
    pub fn find(&self, kind: Kind, name: &str) -> Option<&Entry> {
        self.of(kind).iter().find(|e| {
            e.name == name || Path::new(&e.file).file_name().and_then(|f| f.to_str()) == Some(name)
        })
    }
}

/// The file (or folder) of `kind` called `name` in the models directory, or a clear
/// error naming the folder looked in.
pub fn locate(models_dir: &Path, kind: Kind, name: &str) -> Result<PathBuf, InferenceError> {
    let folder = models_dir.join(kind.folder());
    // A path (on the command line) names the file itself.
    let as_path = Path::new(name);
    if name.contains(['/', '\\']) && (as_path.is_file() || as_path.is_dir()) {
        refuse_pickle(as_path)?;
        return Ok(as_path.to_path_buf());
    }
    let unsafe_name = name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.');
    if !unsafe_name {
        let file = folder.join(format!("{name}.safetensors"));
        if file.is_file() {
            return Ok(file);
        }
        let named = folder.join(name);
        if named.is_dir() || (named.is_file() && name.ends_with(".safetensors")) {
            return Ok(named);
        }
        for pickle in ["ckpt", "pt", "pth", "bin"] {
            let p = folder.join(format!("{name}.{pickle}"));
            if p.is_file() {
                refuse_pickle(&p)?;
            }
        }
    }
    Err(InferenceError::InvalidRequest(format!(
        "no {} named '{name}' in {}",
        match kind {
            Kind::Checkpoint => "checkpoint",
            Kind::Lora => "LoRA",
            Kind::Embedding => "embedding",
            Kind::Vae => "VAE",
        },
        folder.display()
    )))
}

/// [`Catalogue::paired_vae`] without scanning (and hashing) the whole directory: only
/// the checkpoint `model` and a VAE of the same name are looked at, as the command line
/// needs.
pub fn paired_vae(models_dir: &Path, model: &str) -> Option<String> {
    let mut two = Catalogue::default();
    for kind in [Kind::Checkpoint, Kind::Vae] {
        let path = locate(models_dir, kind, model).ok()?;
        two.of_mut(kind).push(describe(kind, &path, None)?);
    }
    two.paired_vae(model)
}

/// The VAE a job decodes with, as A1111 picks it: the one it names, the checkpoint's own
/// for `none`, and for `automatic` or nothing the VAE paired with the checkpoint, if any.
pub fn choose_vae(
    asked: Option<String>,
    paired: impl FnOnce() -> Option<String>,
) -> Option<String> {
    match asked {
        Some(v) if v.eq_ignore_ascii_case("none") => None,
        Some(v) if v.eq_ignore_ascii_case("automatic") => paired(),
        None => paired(),
        named => named,
    }
}

/// `sd1`, `sd2` or `sdxl` without the `-inpaint` mark.
pub fn base_family(family: &str) -> &str {
    family.strip_suffix("-inpaint").unwrap_or(family)
}

/// Creates the four folders if they are missing (so users see where files go).
pub fn create_folders(models_dir: &Path) -> std::io::Result<()> {
    for kind in Kind::ALL {
        std::fs::create_dir_all(models_dir.join(kind.folder()))?;
    }
    Ok(())
}

/// Lists the models directory. Missing folders are empty; unreadable files are listed
/// with their error.
pub fn scan(models_dir: &Path) -> Catalogue {
    let mut cache = HashCache::load(models_dir);
    let mut catalogue = Catalogue::default();
    for kind in Kind::ALL {
        let folder = models_dir.join(kind.folder());
        let Ok(read) = std::fs::read_dir(&folder) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = read.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths {
            if let Some(entry) = describe(kind, &path, Some(&mut cache)) {
                catalogue.of_mut(kind).push(entry);
            }
        }
        catalogue.of_mut(kind).sort_by(|a, b| a.name.cmp(&b.name));
    }
    cache.save(models_dir);
    catalogue
}

/// One entry; its SHA-256 only with a `cache` to keep it in.
fn describe(kind: Kind, path: &Path, cache: Option<&mut HashCache>) -> Option<Entry> {
    let file_name = path.file_name()?.to_str()?.to_string();
    if file_name.starts_with('.') {
        return None;
    }
    let relative = format!("{}/{file_name}", kind.folder());
    let mut entry = Entry {
        name: file_name.clone(),
        kind,
        file: relative.clone(),
        path: path.to_path_buf(),
        format: String::new(),
        family: None,
        size: 0,
        sha256: None,
        vectors: None,
        error: None,
    };
    if path.is_dir() {
        // A diffusers folder counts where a pipeline (or, under vae/, a VAE) is.
        let marker = if kind == Kind::Vae {
            "config.json"
        } else {
            "model_index.json"
        };
        if kind == Kind::Lora || kind == Kind::Embedding || !path.join(marker).exists() {
            return None;
        }
        entry.format = "diffusers".into();
        entry.size = folder_size(path);
        entry.family = folder_family(path);
        return Some(entry);
    }
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    entry.name = path.file_stem()?.to_str()?.to_string();
    entry.size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    match ext.as_str() {
        "safetensors" => {
            entry.format = "safetensors".into();
            match header(path) {
                Ok(tensors) => {
                    entry.family = match kind {
                        Kind::Checkpoint => checkpoint_family(&tensors),
                        Kind::Lora => lora_family(&tensors),
                        Kind::Embedding => embedding_family(&tensors),
                        Kind::Vae => None,
                    };
                    if kind == Kind::Embedding {
                        entry.vectors = embedding_vectors(&tensors);
                    }
                    entry.sha256 = cache.and_then(|c| c.hash(&relative, path));
                }
                Err(e) => entry.error = Some(e),
            }
        }
        "ckpt" | "pt" | "pth" | "bin" => {
            entry.format = "pickle".into();
            entry.error = refuse_pickle(path).err().map(|e| e.to_string());
        }
        _ => return None,
    }
    Some(entry)
}

/// Tensor names and shapes from a safetensors header.
pub fn header(path: &Path) -> Result<BTreeMap<String, Vec<usize>>, String> {
    let file = open_safetensors(path).map_err(|e| e.to_string())?;
    Ok(file
        .tensors()
        .into_iter()
        .map(|(name, info)| (name, info.shape.clone()))
        .collect())
}

/// `sd1`, `sd2` or `sdxl` from a single-file checkpoint's text encoder layout, with
/// `-inpaint` for 9 input channels.
pub fn checkpoint_family(tensors: &BTreeMap<String, Vec<usize>>) -> Option<String> {
    let has = |prefix: &str| tensors.keys().any(|k| k.starts_with(prefix));
    let base = if has("conditioner.embedders.1.model.") {
        "sdxl"
    } else if has("cond_stage_model.model.") {
        "sd2"
    } else if has("cond_stage_model.transformer.") {
        "sd1"
    } else {
        return None;
    };
    let inpaint = tensors
        .get("model.diffusion_model.input_blocks.0.0.weight")
        .and_then(|s| s.get(1))
        == Some(&9);
    Some(if inpaint {
        format!("{base}-inpaint")
    } else {
        base.to_string()
    })
}

/// The family of a diffusers folder, from its configs.
fn folder_family(path: &Path) -> Option<String> {
    let unet: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path.join("unet/config.json")).ok()?).ok()?;
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path.join("model_index.json")).ok()?).ok()?;
    let base = if index
        .get("text_encoder_2")
        .is_some_and(|v| v.get(1).is_some_and(|c| !c.is_null()))
    {
        "sdxl"
    } else {
        match unet.get("cross_attention_dim").and_then(|v| v.as_u64()) {
            Some(1024) => "sd2",
            _ => {
                let te: serde_json::Value = serde_json::from_str(
                    &std::fs::read_to_string(path.join("text_encoder/config.json")).ok()?,
                )
                .ok()?;
                if te.get("hidden_act").and_then(|v| v.as_str()) == Some("gelu") {
                    "sd2"
                } else {
                    "sd1"
                }
            }
        }
    };
    let inpaint = unet.get("in_channels").and_then(|v| v.as_u64()) == Some(9);
    Some(if inpaint {
        format!("{base}-inpaint")
    } else {
        base.to_string()
    })
}

/// A LoRA's family: two text encoders mean SDXL; otherwise the width its
/// cross-attention keys read (768, 1024, 2048).
pub fn lora_family(tensors: &BTreeMap<String, Vec<usize>>) -> Option<String> {
    let has = |p: &str| tensors.keys().any(|k| k.starts_with(p));
    if has("lora_te2_") || has("lora_te1_") || has("text_encoder_2.") {
        return Some("sdxl".into());
    }
    let width = tensors.iter().find_map(|(k, shape)| {
        let down = k.contains("attn2") && (k.contains("to_k") || k.contains("to_v"));
        let a = k.ends_with("lora_down.weight")
            || k.ends_with("lora_A.weight")
            || k.ends_with("down.weight");
        (down && a).then(|| shape.get(1).copied()).flatten()
    })?;
    family_of_width(width)
}

fn family_of_width(width: usize) -> Option<String> {
    match width {
        768 => Some("sd1".into()),
        1024 => Some("sd2".into()),
        2048 => Some("sdxl".into()),
        _ => None,
    }
}

/// An embedding's family from its vectors' width (`clip_g` means SDXL).
fn embedding_family(tensors: &BTreeMap<String, Vec<usize>>) -> Option<String> {
    if tensors.contains_key("clip_g") {
        return Some("sdxl".into());
    }
    let width = tensors.values().next().and_then(|s| s.last().copied())?;
    family_of_width(width).filter(|f| f != "sdxl")
}

fn embedding_vectors(tensors: &BTreeMap<String, Vec<usize>>) -> Option<usize> {
    let shape = tensors
        .get("clip_l")
        .or_else(|| tensors.get("emb_params"))
        .or_else(|| {
            tensors
                .iter()
                .find(|(k, _)| k.starts_with("string_to_param"))
                .map(|(_, v)| v)
        })
        .or_else(|| {
            (tensors.len() == 1)
                .then(|| tensors.values().next())
                .flatten()
        })?;
    Some(if shape.len() == 1 { 1 } else { shape[0] })
}

fn folder_size(path: &Path) -> u64 {
    let Ok(read) = std::fs::read_dir(path) else {
        return 0;
    };
    read.filter_map(Result::ok)
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                folder_size(&p)
            } else {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            }
        })
        .sum()
}

/// SHA-256 sums already computed, keyed by relative path, valid while size and
/// modification time are unchanged.
#[derive(Default, Serialize, Deserialize)]
struct HashCache {
    files: BTreeMap<String, CachedHash>,
    #[serde(skip)]
    changed: bool,
}

#[derive(Serialize, Deserialize)]
struct CachedHash {
    size: u64,
    modified_ns: u128,
    sha256: String,
}

const CACHE_FILE: &str = ".sdq-hashes.json";

impl HashCache {
    fn load(models_dir: &Path) -> Self {
        std::fs::read_to_string(models_dir.join(CACHE_FILE))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }

    fn save(&self, models_dir: &Path) {
        if !self.changed {
            return;
        }
        if let Ok(text) = serde_json::to_string_pretty(self) {
            let tmp = models_dir.join(format!("{CACHE_FILE}.tmp-{}", std::process::id()));
            // Several processes may scan one directory; the rename keeps the file whole.
            if std::fs::write(&tmp, text).is_ok() {
                let _ = std::fs::rename(&tmp, models_dir.join(CACHE_FILE));
            }
        }
    }

    fn hash(&mut self, relative: &str, path: &Path) -> Option<String> {
        let meta = std::fs::metadata(path).ok()?;
        let modified_ns = meta
            .modified()
            .ok()?
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_nanos();
        if let Some(c) = self.files.get(relative) {
            if c.size == meta.len() && c.modified_ns == modified_ns {
                return Some(c.sha256.clone());
            }
        }
        let sha256 = sha256_file(path).ok()?;
        self.files.insert(
            relative.to_string(),
            CachedHash {
                size: meta.len(),
                modified_ns,
                sha256: sha256.clone(),
            },
        );
        self.changed = true;
        Some(sha256)
    }
}

/// Hex SHA-256 of a file, read in 1 MiB blocks.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    use sha2::Digest;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor};
    use std::collections::HashMap;

    fn save(path: &Path, tensors: &[(&str, &[usize])]) {
        let map: HashMap<String, Tensor> = tensors
            .iter()
            .map(|(k, s)| {
                (
                    k.to_string(),
                    Tensor::zeros(*s, DType::F32, &Device::Cpu).unwrap(),
                )
            })
            .collect();
        candle_core::safetensors::save(&map, path).unwrap();
    }

    #[test]
    fn a_scan_lists_each_kind_with_family_size_and_hash() {
        let dir = tempfile::tempdir().unwrap();
        create_folders(dir.path()).unwrap();
        let root = dir.path();
        save(
            &root.join("loras/xl-style.safetensors"),
            &[(
                "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",
                &[4, 8],
            )],
        );
        save(
            &root.join("loras/sd-style.safetensors"),
            &[(
                "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight",
                &[4, 768],
            )],
        );
        save(
            &root.join("embeddings/bad-hands.safetensors"),
            &[("emb_params", &[3, 768])],
        );
        save(
            &root.join("checkpoints/mine.safetensors"),
            &[
                ("cond_stage_model.model.token_embedding.weight", &[10, 4]),
                (
                    "model.diffusion_model.input_blocks.0.0.weight",
                    &[4, 9, 3, 3],
                ),
            ],
        );
        std::fs::write(root.join("checkpoints/old.ckpt"), b"PK pickle").unwrap();
        std::fs::write(root.join("checkpoints/broken.safetensors"), b"\x10\x00").unwrap();
        std::fs::write(root.join("checkpoints/readme.txt"), b"ignored").unwrap();

        let c = scan(root);
        let names = |v: &[Entry]| v.iter().map(|e| e.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&c.checkpoints), ["broken", "mine", "old"]);
        assert_eq!(names(&c.loras), ["sd-style", "xl-style"]);
        let mine = c.find(Kind::Checkpoint, "mine").unwrap();
        assert_eq!(mine.family.as_deref(), Some("sd2-inpaint"));
        assert_eq!(
            mine.sha256.as_deref(),
            Some(sha256_file(&mine.path).unwrap().as_str())
        );
        assert_eq!(mine.size, std::fs::metadata(&mine.path).unwrap().len());
        assert!(c
            .find(Kind::Checkpoint, "old")
            .unwrap()
            .error
            .as_deref()
            .unwrap()
            .contains("pickle"));
        assert!(c.find(Kind::Checkpoint, "broken").unwrap().error.is_some());
        assert_eq!(
            c.find(Kind::Lora, "xl-style").unwrap().family.as_deref(),
            Some("sdxl")
        );
        assert_eq!(
            c.find(Kind::Lora, "sd-style.safetensors")
                .unwrap()
                .family
                .as_deref(),
            Some("sd1")
        );
        let emb = c.find(Kind::Embedding, "bad-hands").unwrap();
        assert_eq!((emb.family.as_deref(), emb.vectors), (Some("sd1"), Some(3)));

        // Hashes are cached: a second scan finds them in the cache file.
        assert!(root.join(CACHE_FILE).exists());
        assert_eq!(scan(root), c);
    }
}
