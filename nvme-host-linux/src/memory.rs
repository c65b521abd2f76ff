//! Shared memory segments for DMA: hugetlbfs when hugepages are available, ordinary shared
//! memory otherwise. Every segment is a memfd, so it can be handed to another process (or to
//! the software controller) by file descriptor and mapped at any address there.
//!
//! `Mapping` is the crate's one owner of an `mmap`, and the one place that turns mapped
//! memory into references, slices or `DmaRegion`s: hence the `unsafe` allowed here.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU8, Ordering};

use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::unistd::ftruncate;
use nvme_core::DmaRegion;

/// Size of a huge page on x86_64 (the default hugetlbfs size).
pub const HUGE_PAGE: usize = 2 << 20;

/// Where segments come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backing {
    /// 2 MiB hugetlbfs pages (`memfd_create(MFD_HUGETLB)`).
    HugePages,
    /// Ordinary shared memory (`memfd_create`), 4 KiB pages.
    Shared,
}

/// What the first allocation found: 0 = unknown, 1 = hugepages work, 2 = they do not.
static HUGE_STATE: AtomicU8 = AtomicU8::new(0);

/// Types that may be viewed in place in a shared mapping with [`Mapping::view`]: the
/// group's control segment.
///
/// # Safety
/// Implement only for `#[repr(C)]` types for which
/// - every bit pattern is a valid value (integers, atomics, arrays and structures of them,
///   `nvme_core::SharedState` structures, the group's robust mutex): the
///   bytes come from a file that another process wrote;
/// - every field that another process may write while this one holds a reference is an
///   atomic or behind an `UnsafeCell` (the robust mutex); the others are written only by
///   the process that creates the segment, through [`Mapping::view_mut`], before it makes
///   the segment known to anyone else.
pub(crate) unsafe trait SharedView: Sync {}

// SAFETY: `#[repr(C)]`, integers and atomics only; the atomics are the only fields written
// after the creator publishes the group (the build id is written once, before).
unsafe impl SharedView for crate::group::layout::GroupIdent {}
// SAFETY: `#[repr(C)]` (layout asserted in group::layout); made of integers, atomics, arrays
// and structures of them, the robust mutex (UnsafeCell) and nvme-core's SharedAdminState
// (a SharedState: atomics only). The plain fields (trid, info, pci_addr, iova_slices) are
// written only by the creator before it publishes the magic (`group::Creating`).
unsafe impl SharedView for crate::group::layout::GroupHeader {}

/// A shared mapping of a file (a memfd, a group file, a device region): the one type that
/// owns an `mmap` in this crate. It is unmapped when dropped; whatever uses the memory keeps
/// the `Mapping` (or an `Arc` of it) alive.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the struct owns a shared mapping and only hands out raw pointers; access to the
// memory is governed by its users (DMA buffers, queues, register handles).
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd` at `offset`, shared, read-write; `populate` faults the
    /// pages in.
    pub fn new(fd: BorrowedFd<'_>, offset: u64, len: usize, populate: bool) -> io::Result<Mapping> {
        let flags = libc::MAP_SHARED | if populate { libc::MAP_POPULATE } else { 0 };
        // SAFETY: a new mapping chosen by the kernel; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(p as *mut u8).ok_or_else(|| io::Error::other("mmap returned NULL"))?;
        Ok(Mapping { ptr, len })
    }
    /// Start of the mapping.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Is it empty? (Never: mmap refuses zero lengths.)
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes `[offset, offset + len)` as a region for the core engine, which the device
    /// reaches at `iova + offset` (`iova`: the device address of the mapping's first byte,
    /// mapped by the caller through the transport). `None` if the range does not fit.
    ///
    /// A `DmaRegion` is a raw description without a lifetime: whoever keeps it must keep
    /// this mapping (and the device's mapping at `iova`) alive as long as the region or any
    /// copy of it is used. Every holder in the crate does so by owning the mapping next to
    /// the region (`DmaMapping`, the group's admin segment, a queue pair's rings).
    pub(crate) fn region(&self, offset: usize, len: usize, iova: u64) -> Option<DmaRegion> {
        if offset.checked_add(len)? > self.len {
            return None;
        }
        // The device address must not wrap either (a damaged group header can give any IOVA).
        let region_iova = iova.checked_add(offset as u64)?;
        region_iova.checked_add(len as u64)?;
        // SAFETY: `[offset, offset + len)` is inside the mapping (checked above), which is
        // readable and writable; its lifetime is the holder's contract stated above.
        Some(unsafe { DmaRegion::new(self.ptr.as_ptr().add(offset), region_iova, len) })
    }

    /// The `T` at the start of the mapping, or `None` if the mapping is too short for it
    /// or misaligned. See [`SharedView`] for what may be viewed.
    pub(crate) fn view<T: SharedView>(&self) -> Option<&T> {
        let fits = self.len >= std::mem::size_of::<T>();
        let aligned = (self.ptr.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>());
        // SAFETY: in bounds and aligned (checked); any bytes are a valid T and concurrent
        // writes from other processes go through atomics or UnsafeCell (SharedView); the
        // reference lives no longer than `&self`, so not longer than the mapping.
        (fits && aligned).then(|| unsafe { &*(self.ptr.as_ptr() as *const T) })
    }

    /// The `T` at the start of the mapping, writable: for the process that creates a
    /// segment, before any other process can know of it ([`SharedView`]).
    pub(crate) fn view_mut<T: SharedView>(&mut self) -> Option<&mut T> {
        let fits = self.len >= std::mem::size_of::<T>();
        let aligned = (self.ptr.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>());
        // SAFETY: as in `view`; `&mut self` rules out every other reference into the
        // mapping in this process, and no other process uses it yet (SharedView).
        (fits && aligned).then(|| unsafe { &mut *(self.ptr.as_ptr() as *mut T) })
    }

    /// The whole mapping as bytes.
    ///
    /// For memory that nobody else writes while the slice lives: no device access in
    /// flight and no other process writing it. The only caller is a DMA buffer, which
    /// hands out its data only while no I/O uses it (`DmaBuffer::try_as_slice`).
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is `len` readable bytes and lives as long as `&self`; no
        // concurrent writer by the contract above.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The whole mapping as writable bytes. As [`Mapping::bytes`], and `&mut self` rules
    /// out any other reference through this mapping.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, for writes; the borrow is exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our own mapping; its users hold it alive while they use it.
        unsafe { libc::munmap(self.ptr.as_ptr() as *mut libc::c_void, self.len) };
    }
}

/// A memfd-backed shared mapping, populated at creation.
#[derive(Debug)]
pub struct SharedMemory {
    map: Mapping,
    fd: OwnedFd,
    backing: Backing,
}

impl SharedMemory {
    /// Allocates `len` bytes (rounded up to the page size of the backing), zero-filled.
    /// Tries hugepages first unless `NVME_NO_HUGE=1` is set; falls back to ordinary shared
    /// memory when no hugepages are reserved.
    pub fn new(name: &str, len: usize) -> io::Result<SharedMemory> {
        let want_huge = std::env::var_os("NVME_NO_HUGE").is_none_or(|v| v != "1");
        if want_huge && HUGE_STATE.load(Ordering::Relaxed) != 2 {
            match Self::with_backing(name, len, Backing::HugePages) {
                Ok(m) => {
                    HUGE_STATE.store(1, Ordering::Relaxed);
                    return Ok(m);
                }
                Err(_) => HUGE_STATE.store(2, Ordering::Relaxed),
            }
        }
        Self::with_backing(name, len, Backing::Shared)
    }

    /// Allocates with a specific backing; fails rather than falling back.
    pub fn with_backing(name: &str, len: usize, backing: Backing) -> io::Result<SharedMemory> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "zero-length shared memory",
            ));
        }
        let page = match backing {
            Backing::HugePages => HUGE_PAGE,
            Backing::Shared => 4096,
        };
        let len = len.div_ceil(page) * page;
        let cname = CString::new(name)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"))?;
        let flags = MFdFlags::MFD_CLOEXEC
            | if backing == Backing::HugePages {
                MFdFlags::MFD_HUGETLB
            } else {
                MFdFlags::empty()
            };
        let fd = memfd_create(cname.as_c_str(), flags)?;
        ftruncate(&fd, len as libc::off_t)?;
        let map = Mapping::new(fd.as_fd(), 0, len, true)?;
        Ok(SharedMemory { map, fd, backing })
    }

    /// Maps an existing file (a group's shared segment, opened by path) of `len` bytes.
    /// The file must already have that size.
    pub fn from_file(file: std::fs::File, len: usize) -> io::Result<SharedMemory> {
        let fd = OwnedFd::from(file);
        let map = Mapping::new(fd.as_fd(), 0, len, true)?;
        Ok(SharedMemory {
            map,
            fd,
            backing: Backing::Shared,
        })
    }

    /// The memfd behind the segment.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
    /// Start of the mapping in this process.
    pub fn as_ptr(&self) -> *mut u8 {
        self.map.as_ptr()
    }
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }
    /// Is it empty? (Never: zero-length segments are refused.)
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }
    /// The backing in use.
    pub fn backing(&self) -> Backing {
        self.backing
    }
    /// See [`Mapping::region`].
    pub(crate) fn region(&self, offset: usize, len: usize, iova: u64) -> Option<DmaRegion> {
        self.map.region(offset, len, iova)
    }
    /// See [`Mapping::view`].
    pub(crate) fn view<T: SharedView>(&self) -> Option<&T> {
        self.map.view()
    }
    /// See [`Mapping::view_mut`].
    pub(crate) fn view_mut<T: SharedView>(&mut self) -> Option<&mut T> {
        self.map.view_mut()
    }
    /// See [`Mapping::bytes`].
    pub(crate) fn bytes(&self) -> &[u8] {
        self.map.bytes()
    }
    /// See [`Mapping::bytes_mut`].
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        self.map.bytes_mut()
    }
}

/// Hugepage status of this machine, for messages and the setup tool.
pub fn hugepages_free() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_memory_is_zeroed_and_shareable() {
        let mut m = SharedMemory::with_backing("test", 5000, Backing::Shared).unwrap();
        assert_eq!(m.len(), 8192);
        assert!(m.bytes().iter().all(|&b| b == 0));
        m.bytes_mut()[100] = 42;
        // A second mapping of the same fd sees the write (as another process would).
        let second = Mapping::new(m.fd(), 0, 8192, false).unwrap();
        assert_eq!(second.bytes()[100], 42);
        assert!(SharedMemory::with_backing("test", 0, Backing::Shared).is_err());
    }

    #[test]
    fn regions_stay_inside_the_mapping() {
        let m = SharedMemory::with_backing("test", 8192, Backing::Shared).unwrap();
        let r = m.region(4096, 4096, 0x10_0000).unwrap();
        assert_eq!((r.iova(), r.len()), (0x10_1000, 4096));
        assert_eq!(r.vaddr() as usize, m.as_ptr() as usize + 4096);
        assert!(r.write_u32(0, 7));
        assert_eq!(m.bytes()[4096], 7);
        assert!(m.region(4096, 4097, 0).is_none());
        assert!(m.region(usize::MAX, 2, 0).is_none());
        assert_eq!(m.region(8192, 0, 0).map(|r| r.len()), Some(0));
    }

    #[test]
    fn falls_back_without_hugepages() {
        let m = SharedMemory::new("test", 4096).unwrap();
        if hugepages_free().unwrap_or(0) == 0 {
            assert_eq!(m.backing(), Backing::Shared);
        }
    }
}
