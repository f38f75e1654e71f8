//! `.safetensors` files whose tensors are the file's own pages.
//!
//! On the CPU a tensor stored in the dtype it is used in, and aligned for it, is handed
//! out without a copy: its data stays in the page cache, is read from disk only when a
//! layer first touches it, and counts once however many processes map the same file
//! (see `window.rs` for how that works with candle's owned storage). Anything else (a
//! dtype conversion, another device, a renamed or transposed layer) is copied as before.

pub mod f32_copy;
pub mod kernel_layouts;
mod window;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::safetensors::Load;
use candle_core::{Device, Tensor, WithDType};
use safetensors::tensor::{Dtype, Metadata, TensorInfo};
use safetensors::SafeTensors;

use window::WindowMap;
pub use window::{usage, MapAwareAllocator};

/// Drops a mapped tensor's pages from memory once a kernel has made its own copy of them
/// in another layout (they are re-read from the file if anything needs them again);
/// returns false, doing nothing, for data that is not a file's pages.
pub fn evict<T>(data: &[T]) -> bool {
    window::evict(data.as_ptr() as usize, std::mem::size_of_val(data))
}

/// Whether `data` is a mapped file's pages (so that [`evict`] would free its memory).
pub fn holds<T>(data: &[T]) -> bool {
    window::in_window(data.as_ptr() as usize)
}

use super::InferenceError;

/// Where the file's bytes are.
enum Bytes {
    /// In the mapping window: tensors can be its pages.
    Window(WindowMap),
    /// An ordinary read-only mapping (no window could be had): tensors are copied out.
    Plain { addr: *mut u8, len: usize },
}

// SAFETY: both are plain read-mostly memory owned by this value (see `WindowMap`).
unsafe impl Send for Bytes {}
unsafe impl Sync for Bytes {}

impl Bytes {
    fn slice(&self) -> &[u8] {
        let (addr, len) = match self {
            Bytes::Window(w) => (w.as_ptr(), w.len()),
            Bytes::Plain { addr, len } => (*addr, *len),
        };
        // SAFETY: the mapping lives as long as `self` and is `len` bytes long.
        unsafe { std::slice::from_raw_parts(addr, len) }
    }
}

impl Drop for Bytes {
    fn drop(&mut self) {
        if let Bytes::Plain { addr, len } = self {
            // SAFETY: the mapping was made by `open` and nothing points into it any more
            // (tensors of a plain mapping are copies).
            unsafe { libc::munmap(addr.cast(), *len) };
        }
    }
}

/// Whether tensors may be the files' pages: `SDQ_MAP_WEIGHTS=off` copies them at load
/// instead, for model files that get rewritten in place while a process runs from them
/// (a mapped file must be replaced by a rename, as `sdq models pull` does).
fn maps_weights() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        !matches!(
            std::env::var("SDQ_MAP_WEIGHTS").as_deref(),
            Ok("off" | "0" | "false")
        )
    })
}

/// One open `.safetensors` file.
pub struct SafetensorsFile {
    path: PathBuf,
    bytes: Bytes,
    /// Where the tensor data begins (after the length and the JSON header).
    data_start: usize,
    metadata: Metadata,
    /// Tensors already handed out from the window, so that a second request for the
    /// same name shares the first one's storage instead of owning the same pages twice.
    taken: Mutex<HashMap<String, Tensor>>,
}

impl std::fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SafetensorsFile({})", self.path.display())
    }
}

impl SafetensorsFile {
    /// Maps a `.safetensors` file and checks its header; pickles are refused before
    /// anything is read.
    pub fn open(path: &Path) -> Result<Self, InferenceError> {
        super::weights::refuse_pickle(path)?;
        let bad = |why: String| {
            InferenceError::invalid_model(path, format!("not a readable .safetensors file: {why}"))
        };
        let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
        let len = file.metadata().map_err(|e| bad(e.to_string()))?.len() as usize;
        if len < 8 {
            return Err(bad("the file is too short to have a header".into()));
        }
        use std::os::fd::AsRawFd;
        let window = if maps_weights() {
            WindowMap::map(file.as_raw_fd(), len)
        } else {
            None
        };
        let bytes = match window {
            Some(w) => {
                kernel_layouts::register(w.as_ptr() as usize, w.len(), path);
                Bytes::Window(w)
            }
            None => {
                // SAFETY: a fresh read-only mapping of the whole file.
                let addr = unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        len,
                        libc::PROT_READ,
                        libc::MAP_PRIVATE,
                        file.as_raw_fd(),
                        0,
                    )
                };
                if addr == libc::MAP_FAILED {
                    return Err(bad(std::io::Error::last_os_error().to_string()));
                }
                Bytes::Plain {
                    addr: addr.cast(),
                    len,
                }
            }
        };
        let (header, metadata) =
            SafeTensors::read_metadata(bytes.slice()).map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            path: path.to_path_buf(),
            bytes,
            data_start: 8 + header,
            metadata,
            taken: Mutex::new(HashMap::new()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every tensor's name and description.
    pub fn tensors(&self) -> Vec<(String, &TensorInfo)> {
        self.metadata.tensors().into_iter().collect()
    }

    /// The description of `name`, if the file has it.
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.metadata.info(name)
    }

    /// The file's `__metadata__` strings.
    pub fn file_metadata(&self) -> Option<&HashMap<String, String>> {
        self.metadata.metadata().as_ref()
    }

    /// Whether tensors come out as the file's own pages (see the module's comment).
    pub fn maps_tensors(&self) -> bool {
        matches!(self.bytes, Bytes::Window(_))
    }

    /// The f32 tensor `name`'s values as a `Vec` over the file's own pages, when the file
    /// is in the window and the tensor is f32 and aligned.
    pub(super) fn take_f32(&self, name: &str) -> Option<Vec<f32>> {
        let Bytes::Window(window) = &self.bytes else {
            return None;
        };
        let info = self.info(name)?;
        if info.dtype != Dtype::F32 {
            return None;
        }
        let (start, end) = info.data_offsets;
        // A layout taken again gives two `Vec`s over the same bytes: both are only read,
        // and each free is counted.
        window_vec(
            window,
            &self.bytes.slice()[self.data_start + start..self.data_start + end],
        )
    }

    /// The tensor `name` on `device`, in the file's dtype.
    pub fn load(&self, name: &str, device: &Device) -> candle_core::Result<Tensor> {
        let info = self.info(name).ok_or_else(|| {
            candle_core::Error::Msg(format!("{} has no tensor {name}", self.path.display()))
        })?;
        let (start, end) = info.data_offsets;
        let data = &self.bytes.slice()[self.data_start + start..self.data_start + end];
        if let (Bytes::Window(window), true) = (&self.bytes, device.is_cpu()) {
            let mut taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(t) = taken.get(name) {
                return Ok(t.clone());
            }
            if let Some(t) = in_place(window, info, data)? {
                taken.insert(name.to_string(), t.clone());
                return Ok(t);
            }
        }
        let view = safetensors::tensor::TensorView::new(info.dtype, info.shape.clone(), data)
            .map_err(|e| {
                candle_core::Error::Msg(format!("{}: {name}: {e}", self.path.display()))
            })?;
        view.load(device)
    }
}

/// A `Vec<T>` over a tensor's own bytes in the window, when they are aligned for `T`.
fn window_vec<T>(window: &WindowMap, data: &[u8]) -> Option<Vec<T>> {
    if data.is_empty() || !(data.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>()) {
        return None;
    }
    let n = data.len() / std::mem::size_of::<T>();
    window.take();
    // SAFETY: the bytes are `n` aligned values of `T` (the header was validated), in a
    // private writable mapping that stays until this `Vec` is freed; nothing writes them
    // (model weights). Its free goes to the window through the global allocator, never to
    // the system allocator.
    Some(unsafe { Vec::from_raw_parts(data.as_ptr() as *mut T, n, n) })
}

/// The tensor over its own bytes in the window, when its dtype has a candle twin and the
/// bytes are aligned for it.
fn in_place(
    window: &WindowMap,
    info: &TensorInfo,
    data: &[u8],
) -> candle_core::Result<Option<Tensor>> {
    fn wrap<T: WithDType>(
        window: &WindowMap,
        shape: &[usize],
        data: &[u8],
    ) -> candle_core::Result<Option<Tensor>> {
        match window_vec::<T>(window, data) {
            Some(vec) => Tensor::from_vec(vec, shape, &Device::Cpu).map(Some),
            None => Ok(None),
        }
    }
    let shape = &info.shape;
    match info.dtype {
        Dtype::F32 => wrap::<f32>(window, shape, data),
        Dtype::F16 => wrap::<half::f16>(window, shape, data),
        Dtype::BF16 => wrap::<half::bf16>(window, shape, data),
        Dtype::F64 => wrap::<f64>(window, shape, data),
        Dtype::U8 => wrap::<u8>(window, shape, data),
        Dtype::U32 => wrap::<u32>(window, shape, data),
        Dtype::I64 => wrap::<i64>(window, shape, data),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    fn write(dir: &Path, tensors: &[(&str, Tensor)]) -> PathBuf {
        let path = dir.join("w.safetensors");
        let map: HashMap<String, Tensor> = tensors
            .iter()
            .map(|(n, t)| (n.to_string(), t.clone()))
            .collect();
        candle_core::safetensors::save(&map, &path).unwrap();
        path
    }

    #[test]
    fn tensors_are_the_files_pages_and_go_back_when_freed() {
        let dir = tempfile::tempdir().unwrap();
        let a = Tensor::arange(0f32, 4096.0, &Device::Cpu)
            .unwrap()
            .reshape((64, 64))
            .unwrap();
        let b = Tensor::arange(0f32, 10.0, &Device::Cpu).unwrap();
        let path = write(dir.path(), &[("a", a.clone()), ("b", b.clone())]);
        let file = SafetensorsFile::open(&path).unwrap();
        assert!(file.maps_tensors());
        let bytes = file.bytes.slice().as_ptr_range();
        let got = file.load("a", &Device::Cpu).unwrap();
        let again = file.load("a", &Device::Cpu).unwrap();
        let gb = file.load("b", &Device::Cpu).unwrap();
        let data_ptr = |t: &Tensor| {
            let (storage, _) = t.storage_and_layout();
            let candle_core::Storage::Cpu(cpu) = &*storage else {
                panic!("not on the CPU")
            };
            cpu.as_slice::<f32>().unwrap().as_ptr() as *const u8
        };
        assert!(
            bytes.contains(&data_ptr(&got)),
            "the tensor is not the file's memory"
        );
        assert_eq!(
            data_ptr(&got),
            data_ptr(&again),
            "a second load owns the same pages again"
        );
        assert_eq!(got.to_vec2::<f32>().unwrap(), a.to_vec2::<f32>().unwrap());
        assert_eq!(gb.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap());
        // Arithmetic on them allocates ordinary memory; writes stay private.
        let sum = (&got + 1.0).unwrap();
        assert_eq!(sum.to_vec2::<f32>().unwrap()[1][2], 67.0);
        drop(file);
        drop((got, again, sum));
        assert_eq!(gb.to_vec1::<f32>().unwrap()[9], 9.0, "b outlives its file");
        drop(gb);
        // The file on disk is unchanged and can be mapped again.
        let file = SafetensorsFile::open(&path).unwrap();
        let again = file.load("a", &Device::Cpu).unwrap();
        assert_eq!(again.to_vec2::<f32>().unwrap(), a.to_vec2::<f32>().unwrap());
    }

    #[test]
    fn other_dtypes_and_devices_are_converted_copies() {
        let dir = tempfile::tempdir().unwrap();
        let a = Tensor::arange(0f32, 6.0, &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F16)
            .unwrap();
        let i = Tensor::new(&[1i64, 2, 3], &Device::Cpu).unwrap();
        let path = write(dir.path(), &[("a", a), ("i", i)]);
        let file = SafetensorsFile::open(&path).unwrap();
        let got = file.load("a", &Device::Cpu).unwrap();
        assert_eq!(got.dtype(), DType::F16);
        let f = got.to_dtype(DType::F32).unwrap();
        assert_eq!(f.to_vec1::<f32>().unwrap(), vec![0., 1., 2., 3., 4., 5.]);
        assert_eq!(
            file.load("i", &Device::Cpu)
                .unwrap()
                .to_vec1::<i64>()
                .unwrap(),
            vec![1, 2, 3]
        );
        let err = file.load("missing", &Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("missing"), "{err}");
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.safetensors");
        std::fs::write(&path, b"short").unwrap();
        let err = SafetensorsFile::open(&path).unwrap_err().to_string();
        assert!(
            err.contains("x.safetensors") && err.contains("too short"),
            "{err}"
        );
        std::fs::write(&path, b"\xff\xff\xff\xff\xff\xff\xff\x7fjunkjunk").unwrap();
        assert!(SafetensorsFile::open(&path).is_err());
        std::fs::write(&path, []).unwrap();
        assert!(SafetensorsFile::open(&path).is_err());
    }
}
