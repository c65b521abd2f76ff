//! Shared memory: memfd creation, `mmap(MAP_SHARED)` mappings and the only accessors of
//! their memory.
//!
//! Every `mmap`/`munmap` of the crate lives here, and so does every access to mapped memory.
//! A [`Mapping`] owns one mapping of a file descriptor range and unmaps it when dropped; the
//! rest of the crate reaches its bytes through bounds-checked methods taking offsets (they
//! panic on an out-of-range offset, like slice indexing), never through a pointer:
//! - atomic accessors ([`Mapping::atomic_u32`], [`Mapping::atomic_u64`]) and volatile copies
//!   ([`Mapping::read_volatile`], `Mapping::write_volatile`,
//!   [`Mapping::store_u32_volatile`]) for memory that another agent writes while this
//!   process reads it (BAR registers and doorbells, queue rings, PRP lists);
//! - plain copies ([`Mapping::read`], [`Mapping::write`], [`Mapping::fill`],
//!   [`Mapping::copy_to`]) for bulk data (namespace storage, data buffers), which the
//!   protocol gives to one side at a time.
//!
//! Mapped memory is shared with other processes (and other mappings of the same file in this
//! one), so Rust never holds a `&[u8]` or `&mut [u8]` into it: every access goes through a
//! raw pointer derived from the mapping's base, or through an atomic type placed on it.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};

use nix::fcntl::FallocateFlags;
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::stat::{fstat, SFlag};
use nix::unistd::{ftruncate, sysconf, SysconfVar};

use crate::sys::ForkedChild;
use crate::SimError;

/// The system page size (cached after the first call).
pub(crate) fn page_size() -> usize {
    use std::sync::OnceLock;
    static PAGE: OnceLock<usize> = OnceLock::new();
    *PAGE.get_or_init(|| match sysconf(SysconfVar::PAGE_SIZE) {
        Ok(Some(v)) if v > 0 => v as usize,
        _ => 4096,
    })
}

fn io_err(op: &'static str, e: nix::Error) -> SimError {
    SimError::Io {
        op,
        source: io::Error::from(e),
    }
}

/// Creates an anonymous memfd of `len` bytes (sparse: no memory is used until written).
pub(crate) fn create_memfd(name: &str, len: u64) -> Result<OwnedFd, SimError> {
    let cname =
        CString::new(name).map_err(|_| SimError::InvalidConfig(format!("bad name {name:?}")))?;
    let fd = memfd_create(cname.as_c_str(), MFdFlags::MFD_CLOEXEC)
        .map_err(|e| io_err("memfd_create", e))?;
    let len = libc::off_t::try_from(len)
        .map_err(|_| SimError::InvalidConfig(format!("memfd size {len} too large")))?;
    ftruncate(&fd, len).map_err(|e| io_err("ftruncate", e))?;
    Ok(fd)
}

/// One `MAP_SHARED` mapping of a file range, read/write. Unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mapping {
    /// Start of the mapping as returned by mmap (page aligned).
    map_base: NonNull<u8>,
    /// Length passed to mmap.
    map_len: usize,
    /// Offset of the requested range inside the mapping (file offset rounding).
    skew: usize,
    /// Length of the requested range.
    len: usize,
}

// SAFETY: a Mapping is a plain address range of shared memory; it has no thread affinity.
// Its accessors only take `&self` and touch the memory through raw pointers or atomics,
// never through Rust references to plain data, exactly as another process sharing the
// memory does.
unsafe impl Send for Mapping {}
// SAFETY: as above; the struct itself is immutable after construction.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd` starting at `offset` (any alignment) with MAP_SHARED.
    /// `noreserve` adds MAP_NORESERVE (large sparse namespace storage).
    pub(crate) fn map(
        fd: BorrowedFd<'_>,
        offset: u64,
        len: usize,
        noreserve: bool,
    ) -> Result<Mapping, SimError> {
        if len == 0 {
            return Err(SimError::InvalidArgument("mapping length is zero".into()));
        }
        let page = page_size() as u64;
        let aligned = offset & !(page - 1);
        let skew = (offset - aligned) as usize;
        let map_len = skew
            .checked_add(len)
            .ok_or_else(|| SimError::InvalidArgument("mapping length overflows".into()))?;
        let off = libc::off_t::try_from(aligned)
            .map_err(|_| SimError::InvalidArgument(format!("file offset {offset:#x} too large")))?;
        let mut flags = libc::MAP_SHARED;
        if noreserve {
            flags |= libc::MAP_NORESERVE;
        }
        // SAFETY: a fresh mapping at a kernel-chosen address; it aliases no Rust object.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd.as_raw_fd(),
                off,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io_err("mmap", nix::Error::last()));
        }
        Ok(Mapping {
            map_base: NonNull::new(p.cast()).ok_or_else(|| io_err("mmap", nix::Error::EINVAL))?,
            map_len,
            skew,
            len,
        })
    }

    /// Is byte `off` of the range at an address that is a multiple of `align`?
    pub(crate) fn is_aligned(&self, off: usize, align: usize) -> bool {
        (self.base() as usize)
            .wrapping_add(off)
            .is_multiple_of(align)
    }

    /// Start of the requested range.
    fn base(&self) -> *mut u8 {
        self.map_base.as_ptr().wrapping_add(self.skew)
    }

    /// The address of `[off, off + len)`, which must lie inside the range (panics otherwise).
    #[inline]
    #[track_caller]
    fn at(&self, off: usize, len: usize) -> *mut u8 {
        assert!(
            off.checked_add(len).is_some_and(|end| end <= self.len),
            "access [{off:#x}, +{len:#x}) outside a mapping of {:#x} bytes",
            self.len
        );
        // In bounds of one mapping (checked above), so `add` is fine; see the callers.
        self.base().wrapping_add(off)
    }

    /// The 32-bit word at `off` (4-byte aligned, in range; panics otherwise) as an atomic.
    #[inline]
    #[track_caller]
    pub(crate) fn atomic_u32(&self, off: usize) -> &AtomicU32 {
        let p = self.at(off, 4);
        assert!(p.cast::<u32>().is_aligned(), "misaligned u32 at {off:#x}");
        // SAFETY: in bounds and 4-byte aligned (checked above); the memory stays mapped as
        // long as `self`, which the returned reference borrows. Every access to it, from this
        // or another process, is atomic or volatile, never through a `&u32`.
        unsafe { AtomicU32::from_ptr(p.cast()) }
    }

    /// The 64-bit word at `off` (8-byte aligned, in range; panics otherwise) as an atomic.
    #[inline]
    #[track_caller]
    pub(crate) fn atomic_u64(&self, off: usize) -> &AtomicU64 {
        let p = self.at(off, 8);
        assert!(p.cast::<u64>().is_aligned(), "misaligned u64 at {off:#x}");
        // SAFETY: as in `atomic_u32`, with 8-byte alignment.
        unsafe { AtomicU64::from_ptr(p.cast()) }
    }

    /// Stores the 32-bit word at `off` (4-byte aligned, in range) with a volatile write.
    #[inline]
    #[track_caller]
    pub(crate) fn store_u32_volatile(&self, off: usize, v: u32) {
        let p = self.at(off, 4).cast::<u32>();
        assert!(p.is_aligned(), "misaligned u32 at {off:#x}");
        // SAFETY: in bounds of the live mapping and aligned (checked above); a volatile
        // store through a raw pointer creates no reference to the shared memory.
        unsafe { std::ptr::write_volatile(p, v) }
    }

    /// Reads a little-endian u64 at `off` (any alignment) with one volatile access.
    #[inline]
    #[track_caller]
    pub(crate) fn load_u64_le_volatile(&self, off: usize) -> u64 {
        let p = self.at(off, 8).cast::<[u8; 8]>();
        // SAFETY: in bounds of the live mapping (checked above); `[u8; 8]` needs no
        // alignment. A torn value (a peer writing concurrently) is merely a wrong value.
        u64::from_le_bytes(unsafe { std::ptr::read_volatile(p) })
    }

    /// Copies `[off, off + buf.len())` into `buf` with volatile loads (8 bytes at a time
    /// where aligned): for memory a peer may be writing (queue entries).
    #[inline]
    #[track_caller]
    pub(crate) fn read_volatile(&self, off: usize, buf: &mut [u8]) {
        let p = self.at(off, buf.len());
        let mut i = 0;
        if p.cast::<u64>().is_aligned() {
            for chunk in buf.chunks_exact_mut(8) {
                // SAFETY: `[off + i, off + i + 8)` is inside the range checked above and
                // 8-byte aligned (the start is, and `i` is a multiple of 8).
                let w = unsafe { std::ptr::read_volatile(p.add(i).cast::<u64>()) };
                chunk.copy_from_slice(&w.to_ne_bytes());
                i += 8;
            }
        }
        for b in &mut buf[i..] {
            // SAFETY: byte `off + i` is inside the range checked above.
            *b = unsafe { std::ptr::read_volatile(p.add(i)) };
            i += 1;
        }
    }

    /// Copies `data` to `[off, off + data.len())` with volatile stores (8 bytes at a time
    /// where aligned): for memory a peer may be reading (queue entries). The test host and
    /// the NVMe/TCP target (a host of the controller) write queue entries.
    #[track_caller]
    pub(crate) fn write_volatile(&self, off: usize, data: &[u8]) {
        let p = self.at(off, data.len());
        let mut i = 0;
        if p.cast::<u64>().is_aligned() {
            for chunk in data.chunks_exact(8) {
                let w = u64::from_ne_bytes(chunk.try_into().expect("8 bytes"));
                // SAFETY: as in `read_volatile`.
                unsafe { std::ptr::write_volatile(p.add(i).cast::<u64>(), w) };
                i += 8;
            }
        }
        for &b in &data[i..] {
            // SAFETY: byte `off + i` is inside the range checked above.
            unsafe { std::ptr::write_volatile(p.add(i), b) };
            i += 1;
        }
    }

    /// Copies `[off, off + buf.len())` into `buf` (bulk data).
    #[inline]
    #[track_caller]
    pub(crate) fn read(&self, off: usize, buf: &mut [u8]) {
        let p = self.at(off, buf.len());
        // SAFETY: the source is inside the live mapping (checked above) and `buf` is
        // ordinary memory, so they cannot overlap. A peer writing the same bytes meanwhile
        // breaks the device protocol; the copy then holds mixed data, as a DMA would.
        unsafe { std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), buf.len()) }
    }

    /// Copies `data` to `[off, off + data.len())` (bulk data).
    #[inline]
    #[track_caller]
    pub(crate) fn write(&self, off: usize, data: &[u8]) {
        let p = self.at(off, data.len());
        // SAFETY: as in `read`, in the other direction.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) }
    }

    /// Sets `[off, off + len)` to `byte`.
    #[inline]
    #[track_caller]
    pub(crate) fn fill(&self, off: usize, len: usize, byte: u8) {
        let p = self.at(off, len);
        // SAFETY: inside the live mapping (checked above).
        unsafe { std::ptr::write_bytes(p, byte, len) }
    }

    /// Copies `[off, off + len)` of this mapping to `[dst_off, dst_off + len)` of `dst`
    /// (which may be this mapping, or another mapping of the same file: the ranges may
    /// overlap).
    #[inline]
    #[track_caller]
    pub(crate) fn copy_to(&self, off: usize, dst: &Mapping, dst_off: usize, len: usize) {
        let s = self.at(off, len);
        let d = dst.at(dst_off, len);
        // SAFETY: both ranges are inside live mappings (checked above); `copy` allows them
        // to overlap. Concurrent writers: as in `read`.
        unsafe { std::ptr::copy(s, d, len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the range was returned by mmap with this length and is unmapped only here;
        // no reference into it can outlive `self` (the accessors borrow it).
        unsafe {
            libc::munmap(self.map_base.as_ptr().cast(), self.map_len);
        }
    }
}

/// Size of the file behind `fd` (None when fstat fails or it is not a regular file).
pub(crate) fn file_size(fd: BorrowedFd<'_>) -> Option<u64> {
    let st = fstat(fd).ok()?;
    (SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG)
        .then_some(st.st_size as u64)
}

/// Releases the backing pages of `[offset, offset + len)` of a memfd (they read as zero
/// afterwards). Returns false when the kernel refused.
pub(crate) fn punch_hole(fd: BorrowedFd<'_>, offset: u64, len: u64) -> bool {
    let (Ok(off), Ok(l)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return false;
    };
    nix::fcntl::fallocate(
        fd,
        FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
        off,
        l,
    )
    .is_ok()
}

/// Unmaps every shared mapping this process inherited through `fork` (the parent's DMA
/// memory, shared segments, other controllers' BARs). Only a freshly forked child can call
/// it (it takes the token [`crate::sys::fork`] hands its child): the child must not keep
/// that memory alive, and nothing it runs uses it.
pub(crate) fn drop_inherited_shared_mappings(_child: &ForkedChild) {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    for line in maps.lines() {
        let mut f = line.split_ascii_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        if perms.as_bytes().get(3) != Some(&b's') {
            continue;
        }
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) else {
            continue;
        };
        if b > a {
            // SAFETY: a shared mapping inherited from the parent. The `ForkedChild` token
            // proves we run in the child of `sys::fork`, which only runs the daemon's
            // start-up code: no object of the child lives in a shared mapping (it has
            // created none yet) and the parent's `Mapping`s are never used or dropped here
            // (the child ends in `_exit`).
            unsafe { libc::munmap(a as *mut libc::c_void, b - a) };
        }
    }
}
