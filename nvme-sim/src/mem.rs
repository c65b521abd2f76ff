//! Shared memory: memfd creation and `mmap(MAP_SHARED)` mappings.
//!
//! Every `mmap`/`munmap` of the crate lives here. A [`Mapping`] owns one mapping of a file
//! descriptor range and unmaps it when dropped; the rest of the crate only sees its base
//! pointer and length.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

use crate::SimError;

/// The system page size (cached after the first call).
pub(crate) fn page_size() -> usize {
    use std::sync::OnceLock;
    static PAGE: OnceLock<usize> = OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf has no memory-safety preconditions.
        let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if v > 0 {
            v as usize
        } else {
            4096
        }
    })
}

fn io_err(op: &'static str) -> SimError {
    SimError::Io {
        op,
        source: io::Error::last_os_error(),
    }
}

/// Creates an anonymous memfd of `len` bytes (sparse: no memory is used until written).
pub(crate) fn create_memfd(name: &str, len: u64) -> Result<OwnedFd, SimError> {
    let cname =
        CString::new(name).map_err(|_| SimError::InvalidConfig(format!("bad name {name:?}")))?;
    // SAFETY: `cname` is a valid NUL-terminated string; memfd_create only reads it.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io_err("memfd_create"));
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = libc::off_t::try_from(len)
        .map_err(|_| SimError::InvalidConfig(format!("memfd size {len} too large")))?;
    // SAFETY: ftruncate on a valid fd has no memory-safety preconditions.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), len) } != 0 {
        return Err(io_err("ftruncate"));
    }
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

// SAFETY: a Mapping is a plain address range of shared memory; it has no thread affinity and
// all accesses through it go through raw pointers whose users synchronise among themselves.
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
            return Err(io_err("mmap"));
        }
        Ok(Mapping {
            map_base: NonNull::new(p.cast()).ok_or_else(|| io_err("mmap"))?,
            map_len,
            skew,
            len,
        })
    }

    /// Start of the requested range.
    pub(crate) fn ptr(&self) -> *mut u8 {
        self.map_base.as_ptr().wrapping_add(self.skew)
    }

    /// Length of the requested range.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the range was returned by mmap with this length and is unmapped only here.
        unsafe {
            libc::munmap(self.map_base.as_ptr().cast(), self.map_len);
        }
    }
}

/// Size of the file behind `fd` (None when fstat fails or it is not a regular file).
pub(crate) fn file_size(fd: BorrowedFd<'_>) -> Option<u64> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a `struct stat` into the buffer we provide.
    if unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: fstat succeeded, so the structure is initialised.
    let st = unsafe { st.assume_init() };
    (st.st_mode & libc::S_IFMT == libc::S_IFREG).then_some(st.st_size as u64)
}

/// Releases the backing pages of `[offset, offset + len)` of a memfd (they read as zero
/// afterwards). Returns false when the kernel refused.
pub(crate) fn punch_hole(fd: BorrowedFd<'_>, offset: u64, len: u64) -> bool {
    let (Ok(off), Ok(l)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return false;
    };
    // SAFETY: fallocate on a valid fd has no memory-safety preconditions.
    unsafe {
        libc::fallocate(
            fd.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off,
            l,
        ) == 0
    }
}
