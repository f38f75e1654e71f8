//! The CPU kernels' own layouts of mapped weights, kept on disk beside the f32 copies.
//!
//! On first use the kernels re-lay-out every convolution and linear weight (transposed
//! for `gemm`, or into the Winograd domain): gigabytes of fresh memory written during a
//! process's first image, most of its cost being the kernel zeroing those pages. Once
//! made, the layouts are written (by a background thread, after the image) to one
//! `.kernels.safetensors` file per weight file in the weight cache, named like the f32
//! copies after the source's path, size and modification time; later processes map those
//! pages instead of computing them, so their first image costs what later ones do.
//!
//! A layout is found by where its weight lies in the source file (its byte offset) and
//! by what it is (kind and dimensions): nothing depends on layer names, and a weight that
//! is not a mapped file's pages (LoRA-patched, converted in memory) is never looked up.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use safetensors::tensor::Dtype;

use super::f32_copy::{cache_dir, CacheFile, CopyName};
use super::{window, SafetensorsFile};
use crate::inference::InferenceError;

/// Bumped whenever a kernel's layout changes, so that older files are rewritten.
const LAYOUT_VERSION: &str = "1";
/// Metadata entries: the source's canonical path, and the layout version.
const SOURCE_KEY: &str = "sdq.kernel_layouts_of";
const VERSION_KEY: &str = "sdq.kernel_layout_version";
/// What layout files' names end with.
pub(super) const SUFFIX: &str = "kernels";

/// One re-laid-out weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// The transpose of a row-major `rows × cols` matrix.
    Transposed { rows: usize, cols: usize },
    /// A `[cout, cin, 3, 3]` convolution's weights in the Winograd F(4×4, 3×3) domain.
    Winograd { cout: usize, cin: usize },
}

impl Layout {
    fn tag(self) -> String {
        match self {
            Layout::Transposed { rows, cols } => format!("t{rows}x{cols}"),
            Layout::Winograd { cout, cin } => format!("w{cout}x{cin}"),
        }
    }

    /// Values the layout holds.
    fn len(self) -> usize {
        match self {
            Layout::Transposed { rows, cols } => rows * cols,
            Layout::Winograd { cout, cin } => 36 * cout * cin,
        }
    }
}

/// One weight file mapped in the window, whose layouts may be on disk.
struct Source {
    /// The mapping's first byte and length.
    start: usize,
    len: usize,
    path: PathBuf,
    state: Mutex<SourceState>,
}

#[derive(Default)]
struct SourceState {
    /// The layout file, once looked for: `Some(None)` when there is none (or it is not
    /// this version's). Closed after every image (see [`image_done`]), so that the
    /// model's mappings go with the model.
    file: Option<Option<SafetensorsFile>>,
    /// Layouts made here that the file lacks, by entry name.
    pending: Vec<(String, Weak<Vec<f32>>)>,
}

/// Weight files mapped so far (a file mapped again replaces its old entry).
static SOURCES: Mutex<Vec<Arc<Source>>> = Mutex::new(Vec::new());
/// Whether some source has pending layouts.
static DIRTY: AtomicBool = AtomicBool::new(false);
/// Layouts taken from files and layouts made, since the process started (see [`counts`]).
static TAKEN: AtomicUsize = AtomicUsize::new(0);
static MADE: AtomicUsize = AtomicUsize::new(0);
/// The writer thread, while one runs.
static WRITER: Mutex<Option<std::thread::JoinHandle<()>>> = Mutex::new(None);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Notes a weight file just mapped into the window at `start`.
pub(super) fn register(start: usize, len: usize, path: &Path) {
    let mut sources = lock(&SOURCES);
    sources.retain(|s| s.start + s.len <= start || start + len <= s.start);
    sources.push(Arc::new(Source {
        start,
        len,
        path: path.to_path_buf(),
        state: Mutex::new(SourceState::default()),
    }));
}

/// The mapped file `weight` lies in and the entry name of its `layout`.
fn source_of(weight: &[f32], layout: Layout) -> Option<(Arc<Source>, String)> {
    if cache_dir().is_none() || !window::in_window(weight.as_ptr() as usize) {
        return None;
    }
    let addr = weight.as_ptr() as usize;
    let sources = lock(&SOURCES);
    let source = sources
        .iter()
        .find(|s| addr.wrapping_sub(s.start) < s.len)?
        .clone();
    let name = format!("{}@{}", layout.tag(), addr - source.start);
    Some((source, name))
}

impl Source {
    /// Opens the layout file if it is there and this version's.
    fn open(&self) -> Option<SafetensorsFile> {
        let dir = cache_dir()?;
        let name = CopyName::of(&self.path).ok()?;
        let path = dir.join(name.file_name(SUFFIX));
        if !path.exists() {
            return None;
        }
        let file = match SafetensorsFile::open(&path) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(file = %path.display(), "unreadable kernel layouts, remaking them: {e}");
                return None;
            }
        };
        let meta = file.file_metadata();
        let ours = meta.and_then(|m| m.get(SOURCE_KEY)).map(PathBuf::from) == Some(name.canonical)
            && meta.and_then(|m| m.get(VERSION_KEY)).map(String::as_str) == Some(LAYOUT_VERSION);
        ours.then_some(file)
    }
}

/// `weight`'s `layout` as stored by an earlier process, when there is one; the values are
/// the layout file's pages.
pub fn load(weight: &[f32], layout: Layout) -> Option<Vec<f32>> {
    let (source, name) = source_of(weight, layout)?;
    let mut state = lock(&source.state);
    let file = state.file.get_or_insert_with(|| source.open()).as_ref()?;
    let info = file.info(&name)?;
    if info.dtype != Dtype::F32 || info.shape != [layout.len()] {
        return None;
    }
    let values = file.take_f32(&name)?;
    TAKEN.fetch_add(1, Ordering::Relaxed);
    Some(values)
}

/// How many layouts this process has taken from layout files and how many it has made
/// and offered for writing.
pub fn counts() -> (usize, usize) {
    (TAKEN.load(Ordering::Relaxed), MADE.load(Ordering::Relaxed))
}

/// Offers a layout just made for `weight`, to be written after the image (only a weak
/// reference is kept: a layout whose layer is gone by then is not written).
pub fn offer(weight: &[f32], layout: Layout, made: &Arc<Vec<f32>>) {
    let Some((source, name)) = source_of(weight, layout) else {
        return;
    };
    if made.len() != layout.len() {
        return;
    }
    lock(&source.state)
        .pending
        .push((name, Arc::downgrade(made)));
    MADE.fetch_add(1, Ordering::Relaxed);
    DIRTY.store(true, Ordering::Release);
}

/// Called when an image is done: closes the layout files (the layers keep the pages they
/// took) and, if layouts were made, starts writing them in the background.
pub fn image_done() {
    let sources: Vec<Arc<Source>> = lock(&SOURCES).clone();
    for source in &sources {
        lock(&source.state).file = None;
    }
    if !DIRTY.load(Ordering::Acquire) {
        return;
    }
    let mut writer = lock(&WRITER);
    if writer.as_ref().is_some_and(|w| !w.is_finished()) {
        // It checks for more pending layouts before it ends.
        return;
    }
    if let Some(done) = writer.take() {
        let _ = done.join();
    }
    // The write is part of the work of the job whose image made the layouts: its log
    // lines carry that job's span.
    let span = tracing::Span::current();
    let spawned = std::thread::Builder::new()
        .name("sdq-kernel-layouts".into())
        .spawn(move || {
            span.in_scope(|| {
                while DIRTY.swap(false, Ordering::AcqRel) {
                    write_pending();
                }
            })
        });
    match spawned {
        Ok(handle) => *writer = Some(handle),
        Err(e) => tracing::warn!("could not start writing kernel layouts: {e}"),
    }
}

/// Waits for the layouts being written, if any (before a short-lived process exits).
pub fn wait() {
    let handle = lock(&WRITER).take();
    if let Some(handle) = handle {
        let _ = handle.join();
    }
}

/// Writes every source's pending layouts, logging what failed.
fn write_pending() {
    let Some(dir) = cache_dir() else {
        return;
    };
    let sources: Vec<Arc<Source>> = lock(&SOURCES).clone();
    for source in sources {
        let pending: Vec<(String, Arc<Vec<f32>>)> = {
            let mut state = lock(&source.state);
            std::mem::take(&mut state.pending)
                .into_iter()
                .filter_map(|(name, weak)| Some((name, weak.upgrade()?)))
                .collect()
        };
        if pending.is_empty() {
            continue;
        }
        if let Err(e) = write(&dir, &source, pending) {
            tracing::warn!(
                source = %source.path.display(),
                "kernel layouts not kept (the next process makes them again): {e}"
            );
        }
    }
}

/// Writes the layout file of `source`: what it already held plus `new`, replacing it by a
/// rename (a process mapping the old one keeps reading it).
fn write(
    dir: &Path,
    source: &Source,
    new: Vec<(String, Arc<Vec<f32>>)>,
) -> Result<(), InferenceError> {
    let name = CopyName::of(&source.path).map_err(|e| InferenceError::Io {
        path: source.path.clone(),
        source: e,
    })?;
    let target = CacheFile {
        dir,
        name: &name,
        suffix: SUFFIX,
        source: &source.path,
        what: "kernel layouts",
    };
    let path = target.path();
    let old = source.open();
    let mut views: Vec<(String, Raw)> = Vec::new();
    let mut seen = HashSet::new();
    for (entry, values) in &new {
        if seen.insert(entry.clone()) {
            views.push((entry.clone(), Raw::of(values)));
        }
    }
    if let Some(old) = &old {
        for (entry, info) in old.tensors() {
            if seen.insert(entry.clone()) {
                let (start, end) = info.data_offsets;
                let bytes = &old.bytes.slice()[old.data_start + start..old.data_start + end];
                views.push((
                    entry,
                    Raw {
                        shape: info.shape.clone(),
                        bytes: std::borrow::Cow::Borrowed(bytes),
                    },
                ));
            }
        }
    }
    let size: u64 = views.iter().map(|(_, v)| v.bytes.len() as u64).sum();
    let metadata = HashMap::from([
        (SOURCE_KEY.to_string(), name.canonical.display().to_string()),
        (VERSION_KEY.to_string(), LAYOUT_VERSION.to_string()),
    ]);
    // The old file's room comes back when it is replaced.
    let reclaimed = std::fs::metadata(&path).map_or(0, |m| m.len());
    target.write(views, metadata, size, reclaimed)
}

/// Whether `name`, a file in the weight cache, is a layout file of the current version of
/// its source (for `sdq gc`).
pub(super) fn is_current(path: &Path, name: &str) -> bool {
    let Some(meta) = header_metadata(path) else {
        return false;
    };
    meta.get(VERSION_KEY).map(String::as_str) == Some(LAYOUT_VERSION)
        && meta
            .get(SOURCE_KEY)
            .and_then(|source| CopyName::of(Path::new(source)).ok())
            .is_some_and(|n| n.file_name(SUFFIX) == name)
}

/// The source a layout file was made from, as its metadata names it.
pub(super) fn source_of_file(path: &Path) -> Option<PathBuf> {
    header_metadata(path)?.get(SOURCE_KEY).map(PathBuf::from)
}

/// A `.safetensors` file's `__metadata__`, read from its header alone (without mapping,
/// and so without reading ahead, gigabytes of layouts).
fn header_metadata(path: &Path) -> Option<HashMap<String, String>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).ok()?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).ok()?;
    let len = u64::from_le_bytes(len);
    // A layout file's header lists a few thousand entries; anything far larger is not one.
    if len > 64 << 20 {
        return None;
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header).ok()?;
    let mut json: HashMap<String, serde_json::Value> = serde_json::from_slice(&header).ok()?;
    serde_json::from_value(json.remove("__metadata__")?).ok()
}

/// An f32 tensor's bytes, as written.
struct Raw<'a> {
    shape: Vec<usize>,
    bytes: std::borrow::Cow<'a, [u8]>,
}

impl<'a> Raw<'a> {
    fn of(values: &'a [f32]) -> Self {
        let bytes = if cfg!(target_endian = "little") {
            // SAFETY: any f32 is 4 initialised bytes, which is the little-endian layout
            // safetensors stores.
            std::borrow::Cow::Borrowed(unsafe {
                std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), values.len() * 4)
            })
        } else {
            std::borrow::Cow::Owned(values.iter().flat_map(|v| v.to_le_bytes()).collect())
        };
        Self {
            shape: vec![values.len()],
            bytes,
        }
    }
}

impl safetensors::View for Raw<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }

    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}
