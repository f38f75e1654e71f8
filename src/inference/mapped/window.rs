//! The address range model files are mapped into, and the allocator that knows it.
//!
//! candle's CPU tensors own a `Vec`, so a tensor cannot borrow a memory map. Instead each
//! model file is mapped (privately, copy-on-write) into one range of address space
//! reserved at the first load, and its tensors are `Vec`s pointing into that mapping.
//! [`MapAwareAllocator`], the program's global allocator, sends every free that falls in
//! the range here instead of to the system allocator: the tensor's pages go back to the
//! kernel, and once a file's last tensor is freed (and the file is closed) the whole
//! mapping is replaced by reserved, inaccessible memory again, for reuse by a later file.
//! What this costs the rest of the program is one range check per free.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Address space reserved for mappings: nothing is committed, and no file is mapped
/// twice at once, so this is room for many models loaded one after another.
const WINDOW_BYTES: usize = 1 << 44;
/// Mappings start on 1 GiB boundaries so that freed ranges are easy to reuse.
const SLOT_ALIGN: usize = 1 << 30;
const MAX_SLOTS: usize = 256;

/// Start of the reserved range; 0 until it is reserved (or if it could not be).
static BASE: AtomicUsize = AtomicUsize::new(0);

#[derive(Clone, Copy)]
struct Slot {
    /// Offset of the slot in the window, and the address space it owns.
    offset: usize,
    reserved: usize,
    /// Whether a file is mapped here now.
    mapped: bool,
    /// Whether the file is still open (more tensors may be taken from it).
    open: bool,
    /// Tensors taken from it and not yet freed.
    live: usize,
}

const EMPTY: Slot = Slot {
    offset: 0,
    reserved: 0,
    mapped: false,
    open: false,
    live: 0,
};

struct Table {
    /// Whether reserving the window was tried (it is tried once).
    tried: bool,
    slots: [Slot; MAX_SLOTS],
    /// Slots in use so far (mapped or free for reuse).
    count: usize,
    /// End of the last slot, as an offset in the window.
    end: usize,
}

static TABLE: Mutex<Table> = Mutex::new(Table {
    tried: false,
    slots: [EMPTY; MAX_SLOTS],
    count: 0,
    end: 0,
});

/// The table even after a panic elsewhere: its fields are updated before anything can
/// panic, so it is never left half-written.
fn table() -> MutexGuard<'static, Table> {
    TABLE.lock().unwrap_or_else(|e| e.into_inner())
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if page > 0 {
        page as usize
    } else {
        4096
    }
}

/// Inaccessible, uncommitted memory at `addr` (or anywhere, for a null `addr`).
///
/// # Safety
/// With a non-null `addr`, the range must be part of the window and hold nothing that
/// is still in use.
unsafe fn reserve_at(addr: *mut libc::c_void, len: usize) -> *mut libc::c_void {
    let fixed = if addr.is_null() { 0 } else { libc::MAP_FIXED };
    libc::mmap(
        addr,
        len,
        libc::PROT_NONE,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | fixed,
        -1,
        0,
    )
}

pub(super) fn in_window(addr: usize) -> bool {
    let base = BASE.load(Ordering::Acquire);
    base != 0 && addr.wrapping_sub(base) < WINDOW_BYTES
}

/// One file mapped in the window.
#[derive(Debug)]
pub(super) struct WindowMap {
    slot: usize,
    addr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory; who may write it is decided by the `Vec`s taken
// from it, each of which owns its own bytes.
unsafe impl Send for WindowMap {}
unsafe impl Sync for WindowMap {}

impl WindowMap {
    /// Maps `len` bytes of `fd` into the window, or `None` when there is no window (it
    /// could not be reserved, or is full), so that the caller maps it the usual way.
    pub(super) fn map(fd: libc::c_int, len: usize) -> Option<Self> {
        if len == 0 {
            return None;
        }
        let mut t = table();
        if !t.tried {
            t.tried = true;
            // SAFETY: a fresh reservation at an address of the kernel's choosing.
            let base = unsafe { reserve_at(std::ptr::null_mut(), WINDOW_BYTES) };
            if base != libc::MAP_FAILED {
                BASE.store(base as usize, Ordering::Release);
            }
        }
        let base = BASE.load(Ordering::Acquire);
        if base == 0 {
            return None;
        }
        let need = len.div_ceil(SLOT_ALIGN) * SLOT_ALIGN;
        let count = t.count;
        let reuse = t.slots[..count]
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.mapped && s.reserved >= need)
            .min_by_key(|(_, s)| s.reserved)
            .map(|(i, _)| i);
        let slot = match reuse {
            Some(i) => i,
            None => {
                if count == MAX_SLOTS || t.end + need > WINDOW_BYTES {
                    return None;
                }
                t.slots[count] = Slot {
                    offset: t.end,
                    reserved: need,
                    ..EMPTY
                };
                t.end += need;
                t.count += 1;
                count
            }
        };
        let addr = (base + t.slots[slot].offset) as *mut libc::c_void;
        // Private and writable: a tensor that is written to gets its own copy of the
        // page (copy-on-write) and the file is never changed.
        // SAFETY: the slot's range belongs to the window and nothing is mapped there.
        let got = unsafe {
            libc::mmap(
                addr,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_FIXED,
                fd,
                0,
            )
        };
        if got == libc::MAP_FAILED {
            // A failed fixed mapping may have removed the reservation: put it back.
            // SAFETY: as above, nothing in the slot is in use.
            unsafe { reserve_at(addr, t.slots[slot].reserved) };
            return None;
        }
        // Start reading the file in the background: every page will be needed by the
        // first step, and faulting them in one at a time is slower than readahead.
        // SAFETY: advice on the mapping just made.
        unsafe { libc::madvise(got, len, libc::MADV_WILLNEED) };
        t.slots[slot].mapped = true;
        t.slots[slot].open = true;
        t.slots[slot].live = 0;
        Some(Self {
            slot,
            addr: got.cast(),
            len,
        })
    }

    pub(super) fn as_ptr(&self) -> *mut u8 {
        self.addr
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Notes that a `Vec` now owns bytes of this mapping; its free is counted by
    /// [`release`].
    pub(super) fn take(&self) {
        table().slots[self.slot].live += 1;
    }
}

impl Drop for WindowMap {
    fn drop(&mut self) {
        let mut t = table();
        let slot = &mut t.slots[self.slot];
        slot.open = false;
        if slot.live == 0 {
            unmap(&mut t, self.slot);
        }
    }
}

/// Gives a slot's file mapping back, leaving the range reserved for the next file.
fn unmap(t: &mut Table, slot: usize) {
    let base = BASE.load(Ordering::Acquire);
    let s = &mut t.slots[slot];
    // SAFETY: no tensor and no open file uses the slot any more.
    unsafe { reserve_at((base + s.offset) as *mut libc::c_void, s.reserved) };
    s.mapped = false;
}

/// A tensor's bytes in the window were freed: its whole pages go back to the kernel
/// (pages shared with a neighbouring tensor stay), and the file is unmapped when it was
/// the last.
fn release(addr: usize, size: usize) {
    // The allocation is freed: nobody will read these pages again.
    drop_whole_pages(addr, size);
    let base = BASE.load(Ordering::Acquire);
    let mut t = table();
    let count = t.count;
    let Some(i) = t.slots[..count]
        .iter()
        .position(|s| s.mapped && (addr - base).wrapping_sub(s.offset) < s.reserved)
    else {
        return;
    };
    let s = &mut t.slots[i];
    s.live = s.live.saturating_sub(1);
    if s.live == 0 && !s.open {
        unmap(&mut t, i);
    }
}

/// Takes the resident pages of `len` bytes at `addr` out of this process if they lie in
/// the window, leaving them in the page cache: a later read faults them back in from the
/// file. Returns whether anything was in the window. Only for data nobody writes (model
/// weights): a written page of a private mapping would revert to the file's contents.
pub fn evict(addr: usize, len: usize) -> bool {
    if !in_window(addr) {
        return false;
    }
    // Unwritten pages of a private file mapping: discarding them only costs a re-read.
    drop_whole_pages(addr, len);
    true
}

/// Drops from memory the pages lying wholly inside `len` bytes at `addr`, a range of a
/// private file mapping in the window (pages shared with a neighbour stay).
fn drop_whole_pages(addr: usize, len: usize) {
    let page = page_size();
    let first = addr.div_ceil(page) * page;
    let last = (addr + len) / page * page;
    if last > first {
        // SAFETY: the pages lie inside the given range of a mapping the window owns, and
        // the callers guarantee nobody needs their current contents (see above).
        unsafe {
            libc::madvise(
                first as *mut libc::c_void,
                last - first,
                libc::MADV_DONTNEED,
            )
        };
    }
}

/// Live tensors taken from files in the window, and files mapped there (for tests).
pub fn usage() -> (usize, usize) {
    let t = table();
    let mapped = t.slots[..t.count].iter().filter(|s| s.mapped);
    (mapped.clone().map(|s| s.live).sum(), mapped.count())
}

/// The system allocator, except that memory in the mapping window is released to the
/// window rather than freed (see the module's comment).
pub struct MapAwareAllocator;

// SAFETY: every call is passed to the system allocator, except frees and reallocations
// of window memory, which never came from it and are handled by the window.
unsafe impl GlobalAlloc for MapAwareAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if in_window(ptr as usize) {
            release(ptr as usize, layout.size());
        } else {
            System.dealloc(ptr, layout)
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !in_window(ptr as usize) {
            return System.realloc(ptr, layout, new_size);
        }
        let new = System.alloc(Layout::from_size_align_unchecked(new_size, layout.align()));
        if !new.is_null() {
            std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
            release(ptr as usize, layout.size());
        }
        new
    }
}
