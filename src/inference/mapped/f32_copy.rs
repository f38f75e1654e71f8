//! f32 copies of half-precision weight files, kept on disk for f32 models on the CPU.
//!
//! Most checkpoints people download are f16, and a CPU model runs in f32. Converted at
//! every load, each tensor would become ordinary memory: seconds of work per load, memory
//! that is neither shared between processes nor given back, and weights that the kernels
//! cannot re-lay-out without holding both copies (`ops::transposed`). Written once as an
//! f32 `.safetensors` file in a cache folder, the same weights are mapped like any f32
//! file instead. The copy is named after the source's path, size and modification time,
//! so an edited or replaced source gets a new copy and the old one is removed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use safetensors::tensor::{Dtype, TensorInfo};
use sha2::{Digest, Sha256};

use super::{maps_weights, SafetensorsFile};
use crate::inference::InferenceError;

/// Where copies go; `None` converts in memory at every load (the library's default: the
/// binary sets `DATA_DIR/cache/weights` at start-up unless told otherwise).
static CACHE_DIR: RwLock<Option<PathBuf>> = RwLock::new(None);

/// Room left on the cache's disk after a copy, so a copy never fills it.
const FREE_MARGIN: u64 = 1 << 30;

/// Sets (or, with `None`, turns off) the folder for f32 copies of half-precision files.
pub fn set_cache_dir(dir: Option<PathBuf>) {
    *CACHE_DIR.write().unwrap_or_else(|e| e.into_inner()) = dir;
}

/// The cache folder, if one is set.
pub(super) fn cache_dir() -> Option<PathBuf> {
    CACHE_DIR.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The f32 copy of `source` to load instead of it, written now if it is missing; `None`
/// where `source` should be read as it is: no cache folder is set, weights are not
/// mapped (`SDQ_MAP_WEIGHTS=off`), the file holds no f16 or bf16 tensor, or the copy
/// could not be made (logged; the caller then converts in memory as without a cache).
pub fn for_cpu_f32(source: &Path) -> Option<PathBuf> {
    let dir = cache_dir()?;
    if !maps_weights() {
        return None;
    }
    match copy_in(&dir, source) {
        Ok(copy) => copy,
        Err(e) => {
            tracing::warn!(
                source = %source.display(),
                cache = %dir.display(),
                "no f32 copy of the weights could be kept, converting them in memory: {e}"
            );
            None
        }
    }
}

fn is_half(dtype: Dtype) -> bool {
    matches!(dtype, Dtype::F16 | Dtype::BF16)
}

/// [`for_cpu_f32`] with the cache folder given; errors are the reasons a copy failed.
pub fn copy_in(dir: &Path, source: &Path) -> Result<Option<PathBuf>, InferenceError> {
    let file = SafetensorsFile::open(source)?;
    let tensors = file.tensors();
    if !tensors.iter().any(|(_, info)| is_half(info.dtype)) {
        return Ok(None);
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| InferenceError::Io { path, source }
    };
    let name = CopyName::of(source).map_err(io(source))?;
    let canonical = &name.canonical;
    let copy = dir.join(name.file_name(COPY_SUFFIX));
    // Copies appear whole, by a rename, so one under this name is this version's; one
    // this process cannot read (another user's) is an error, and the caller converts.
    if copy.exists() {
        std::fs::File::open(&copy).map_err(io(&copy))?;
        return Ok(Some(copy));
    }
    let views = widened(&tensors, &file);
    let size: u64 = views
        .iter()
        .map(|(_, v)| safetensors::View::data_len(v) as u64)
        .sum();

    let mut metadata = file.file_metadata().cloned().unwrap_or_default();
    metadata.insert(SOURCE_KEY.into(), canonical.display().to_string());
    let target = CacheFile {
        dir,
        name: &name,
        suffix: COPY_SUFFIX,
        source,
        what: "f32 copy of half-precision weights",
    };
    target.write(views, metadata, size, 0)?;
    Ok(Some(copy))
}

/// What f32 copies' names end with (before `.safetensors`).
const COPY_SUFFIX: &str = "f32";

/// What a file made from one version of a source is called:
/// `<place>-<version>-<stem>.<suffix>.safetensors`, the place hashed from the source's
/// canonical path, the version from its size and modification time.
pub(super) struct CopyName {
    pub(super) place: String,
    pub(super) version: String,
    stem: String,
    pub(super) canonical: PathBuf,
}

impl CopyName {
    pub(super) fn of(source: &Path) -> std::io::Result<Self> {
        let meta = std::fs::metadata(source)?;
        let canonical = std::fs::canonicalize(source)?;
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let hex = |bytes: &[u8]| -> String {
            Sha256::digest(bytes)[..8]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        };
        Ok(Self {
            place: hex(canonical.as_os_str().as_encoded_bytes()),
            version: hex(format!("{}:{modified}", meta.len()).as_bytes()),
            stem: source
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("weights")
                .to_string(),
            canonical,
        })
    }

    pub(super) fn file_name(&self, suffix: &str) -> String {
        format!(
            "{}-{}-{}.{suffix}.safetensors",
            self.place, self.version, self.stem
        )
    }
}

/// One file of the weight cache made from one version of `source`: an f32 copy or its
/// kernel layouts.
pub(super) struct CacheFile<'a> {
    pub(super) dir: &'a Path,
    pub(super) name: &'a CopyName,
    pub(super) suffix: &'a str,
    pub(super) source: &'a Path,
    /// What it holds, for messages.
    pub(super) what: &'a str,
}

impl CacheFile<'_> {
    pub(super) fn path(&self) -> PathBuf {
        self.dir.join(self.name.file_name(self.suffix))
    }

    /// Writes `views` (`size` bytes) with `metadata`, whole: after checking that the disk
    /// keeps its margin (counting `reclaimed` bytes the write frees), removing the files
    /// of the source's older versions, then through a synced staging file and a rename, so
    /// that a reader only ever sees a complete file.
    pub(super) fn write<V: safetensors::View>(
        &self,
        views: Vec<(String, V)>,
        metadata: HashMap<String, String>,
        size: u64,
        reclaimed: u64,
    ) -> Result<(), InferenceError> {
        let (dir, path) = (self.dir, self.path());
        let io = |at: &Path| {
            let at = at.to_path_buf();
            move |source| InferenceError::Io { path: at, source }
        };
        let gib = |bytes: u64| bytes as f64 / (1u64 << 30) as f64;
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let free = free_bytes(dir).map_err(io(dir))?;
        if free + reclaimed < size + FREE_MARGIN {
            return Err(InferenceError::invalid_model(
                self.source,
                format!(
                    "its {} would take {:.1} GiB and {} has {:.1} GiB free",
                    self.what,
                    gib(size),
                    dir.display(),
                    gib(free)
                ),
            ));
        }
        remove_older_copies(dir, &self.name.place, &path, self.suffix);
        let started = std::time::Instant::now();
        tracing::info!(
            source = %self.source.display(),
            file = %path.display(),
            gib = gib(size),
            "writing the {} (once per version of the file)",
            self.what
        );
        let staging = dir.join(format!(
            ".{}-{}.tmp-{}-{:?}.{}",
            self.name.place,
            self.name.version,
            std::process::id(),
            std::thread::current().id(),
            self.suffix
        ));
        let written = safetensors::serialize_to_file(views, Some(metadata), &staging)
            .map_err(|e| InferenceError::invalid_model(&staging, e))
            .and_then(|()| {
                std::fs::File::open(&staging)
                    .and_then(|f| f.sync_all())
                    .map_err(io(&staging))
            })
            .and_then(|()| std::fs::rename(&staging, &path).map_err(io(&path)));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&staging);
            return Err(e);
        }
        tracing::info!(
            file = %path.display(),
            secs = started.elapsed().as_secs_f64(),
            "{} written",
            self.what
        );
        Ok(())
    }
}

/// Deletes the copies and kernel layouts in `dir` whose source is gone or has changed
/// since (and staging files a killed process left), returning what it deleted (or, with `dry_run`, would).
pub fn prune(dir: &Path, dry_run: bool) -> Vec<PathBuf> {
    let layouts = format!(".{}.safetensors", super::kernel_layouts::SUFFIX);
    let files = |dir: &Path| -> Vec<(PathBuf, String)> {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| (e.path(), e.file_name().to_string_lossy().into_owned()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut stale = Vec::new();
    let drop_if = |stale: &mut Vec<PathBuf>, path: PathBuf, current: bool| {
        if !current && (dry_run || std::fs::remove_file(&path).is_ok()) {
            stale.push(path);
        }
    };
    // Copies first: a layout file whose source is a copy removed here goes with it.
    for (path, name) in files(dir) {
        if name.ends_with(&layouts) {
            continue;
        }
        let current = if name.ends_with(".f32.safetensors") {
            SafetensorsFile::open(&path)
                .ok()
                .and_then(|f| f.file_metadata()?.get(SOURCE_KEY).cloned())
                .and_then(|source| CopyName::of(Path::new(&source)).ok())
                .is_some_and(|n| n.file_name(COPY_SUFFIX) == name)
        } else {
            // A staging file an hour old belongs to no copy under way.
            !(name.starts_with('.') && name.contains(".tmp-"))
                || std::fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age.as_secs() < 3600)
        };
        drop_if(&mut stale, path, current);
    }
    // In a dry run the copies it would delete still exist: judge as if they did not.
    let removed: Vec<PathBuf> = match std::fs::canonicalize(dir) {
        Ok(canonical) => stale
            .iter()
            .filter_map(|p| Some(canonical.join(p.file_name()?)))
            .collect(),
        Err(_) => Vec::new(),
    };
    for (path, name) in files(dir) {
        if name.ends_with(&layouts) {
            let source_gone = super::kernel_layouts::source_of_file(&path)
                .is_some_and(|source| removed.contains(&source));
            let current = !source_gone && super::kernel_layouts::is_current(&path, &name);
            drop_if(&mut stale, path, current);
        }
    }
    stale.sort();
    stale
}

/// The copy's metadata entry naming its source.
const SOURCE_KEY: &str = "sdq.f32_copy_of";

/// The tensors a copy holds: all of the source's but a training checkpoint's EMA copy of
/// the UNet (`model_ema.*`), which no model reads.
fn widened<'a>(
    tensors: &[(String, &TensorInfo)],
    file: &'a SafetensorsFile,
) -> Vec<(String, Widened<'a>)> {
    tensors
        .iter()
        .filter(|(name, _)| !name.starts_with("model_ema."))
        .map(|(name, info)| {
            let (start, end) = info.data_offsets;
            let bytes = &file.bytes.slice()[file.data_start + start..file.data_start + end];
            (
                name.clone(),
                Widened {
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    bytes,
                },
            )
        })
        .collect()
}

/// One tensor of the source, converted to f32 when it is written if it is f16 or bf16.
struct Widened<'a> {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: &'a [u8],
}

impl safetensors::View for Widened<'_> {
    fn dtype(&self) -> Dtype {
        if is_half(self.dtype) {
            Dtype::F32
        } else {
            self.dtype
        }
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
        if !is_half(self.dtype) {
            return std::borrow::Cow::Borrowed(self.bytes);
        }
        let bits: Vec<u16> = self
            .bytes
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect();
        let mut wide = vec![0f32; bits.len()];
        match self.dtype {
            Dtype::F16 => bits
                .reinterpret_cast::<half::f16>()
                .convert_to_f32_slice(&mut wide),
            _ => bits
                .reinterpret_cast::<half::bf16>()
                .convert_to_f32_slice(&mut wide),
        }
        std::borrow::Cow::Owned(wide.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    fn data_len(&self) -> usize {
        if is_half(self.dtype) {
            self.bytes.len() * 2
        } else {
            self.bytes.len()
        }
    }
}

/// Deletes the files with `suffix` made from an earlier version of the same source.
fn remove_older_copies(dir: &Path, place: &str, keep: &Path, suffix: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if path != keep
            && name.starts_with(&format!("{place}-"))
            && name.ends_with(&format!(".{suffix}.safetensors"))
        {
            // A process still running from the old copy keeps its pages: on Linux a
            // removed file lives until its last mapping goes.
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Bytes an unprivileged writer may still use on the disk holding `dir`.
fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `stat` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stat.f_bavail as u64 * stat.f_frsize as u64)
}
