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

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
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
// (a SharedState: atomics only). The plain fields (trid, info, pci_addr, iova_slices, the
// shadow page offsets) are written only by the creator before it publishes the magic
// (`group::Creating`); the namespace record's are atomics and its robust mutex, but for a
// padding word nobody writes.
unsafe impl SharedView for crate::group::layout::GroupHeader {}

/// A shared mapping of a file (a memfd, a group file, a device region): the one type that
/// owns an `mmap` in this crate. It is unmapped when dropped; whatever uses the memory keeps
/// the `Mapping` (or an `Arc` of it) alive.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    /// The slot in [`sigbus`]'s table when the mapping is guarded against truncation.
    guard: Option<usize>,
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
        Ok(Mapping {
            ptr,
            len,
            guard: None,
        })
    }

    /// As [`Mapping::new`] for a file another process may truncate while this one uses it
    /// (the group's files): an access past the file's new end replaces the whole mapping
    /// with private zero-filled memory instead of killing the process with SIGBUS, and
    /// [`Mapping::damaged`] says so from then on. See [`sigbus`].
    pub(crate) fn new_guarded(
        fd: BorrowedFd<'_>,
        len: usize,
        populate: bool,
    ) -> io::Result<Mapping> {
        let mut m = Mapping::new(fd, 0, len, populate)?;
        m.guard = Some(sigbus::guard(m.ptr.as_ptr() as usize, len)?);
        Ok(m)
    }

    /// Was the file under a guarded mapping truncated under it (and the mapping replaced by
    /// zeros)? Always false for an unguarded mapping.
    pub(crate) fn damaged(&self) -> bool {
        self.guard.is_some_and(sigbus::hit)
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
        if let Some(slot) = self.guard {
            sigbus::unguard(slot);
        }
        // SAFETY: our own mapping; its users hold it alive while they use it.
        unsafe { libc::munmap(self.ptr.as_ptr() as *mut libc::c_void, self.len) };
    }
}

/// Survives the truncation of a mapped group file.
///
/// The group's files (`control`, `admin.mem`) are ordinary files any process of the same
/// user can open; one that truncates a file makes every access past the new end fault with
/// SIGBUS in every process that maps it. Their mappings are therefore registered here, and a
/// SIGBUS handler (installed once, chained to the one before it) answers a fault inside a
/// registered mapping by mapping private zero-filled memory over the whole of it
/// (`MAP_FIXED`), as Wayland compositors do for their clients' shared memory pools. The
/// faulting access then completes on zeros, which the readers of the group state refuse
/// as damaged; the process goes on and reports the group as unusable
/// ([`Mapping::damaged`]). A fault anywhere else goes to the previous handler (the Rust
/// runtime's stack-overflow check, or the default action), so real crashes still crash.
///
/// The handler only loads atomics and calls `mmap`, a plain system call.
mod sigbus {
    use std::io;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::OnceLock;

    /// Mappings guarded at once in one process (two per group membership).
    const SLOTS: usize = 64;
    /// A slot's `start` while its registration is being written.
    const CLAIMED: usize = usize::MAX;

    struct Slot {
        /// Start address; 0: free.
        start: AtomicUsize,
        len: AtomicUsize,
        /// A fault hit the mapping and it was replaced.
        hit: AtomicBool,
    }

    #[allow(clippy::declare_interior_mutable_const)]
    const FREE: Slot = Slot {
        start: AtomicUsize::new(0),
        len: AtomicUsize::new(0),
        hit: AtomicBool::new(false),
    };
    static TABLE: [Slot; SLOTS] = [FREE; SLOTS];

    /// The SIGBUS action found when ours was installed (set once, before ours is live).
    static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

    /// Registers `[start, start + len)`; returns its slot.
    pub(super) fn guard(start: usize, len: usize) -> io::Result<usize> {
        install()?;
        for (i, slot) in TABLE.iter().enumerate() {
            if slot
                .start
                .compare_exchange(0, CLAIMED, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                slot.hit.store(false, Ordering::Relaxed);
                slot.len.store(len, Ordering::Relaxed);
                slot.start.store(start, Ordering::Release);
                return Ok(i);
            }
        }
        Err(io::Error::other(format!(
            "more than {SLOTS} group file mappings in one process"
        )))
    }

    /// Forgets a registration (before the mapping goes).
    pub(super) fn unguard(slot: usize) {
        TABLE[slot].start.store(0, Ordering::Release);
    }

    /// Did a fault replace the mapping of `slot`?
    pub(super) fn hit(slot: usize) -> bool {
        TABLE[slot].hit.load(Ordering::Acquire)
    }

    fn install() -> io::Result<()> {
        static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
        (*INSTALLED.get_or_init(|| {
            // SAFETY: a zeroed sigaction is a valid "nothing" value; we fill it in.
            let mut ours: libc::sigaction = unsafe { std::mem::zeroed() };
            ours.sa_sigaction = on_sigbus as *const () as usize;
            ours.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESTART;
            // SAFETY: as above.
            let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
            // SAFETY: `sa_mask` is ours to initialise.
            unsafe { libc::sigemptyset(&mut ours.sa_mask) };
            // Read the current action first, so that the handler always finds it.
            // SAFETY: a null new action only reads the current one into `old`.
            if unsafe { libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut old) } != 0 {
                return Err(io::Error::last_os_error().raw_os_error().unwrap_or(0));
            }
            let _ = PREVIOUS.set(old);
            // SAFETY: installs a handler that is async-signal-safe (atomics and mmap).
            if unsafe { libc::sigaction(libc::SIGBUS, &ours, std::ptr::null_mut()) } != 0 {
                return Err(io::Error::last_os_error().raw_os_error().unwrap_or(0));
            }
            Ok(())
        }))
        .map_err(io::Error::from_raw_os_error)
    }

    extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
        // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
        let addr = unsafe { (*info).si_addr() } as usize;
        for slot in &TABLE {
            let start = slot.start.load(Ordering::Acquire);
            if start == 0 || start == CLAIMED || addr < start {
                continue;
            }
            let len = slot.len.load(Ordering::Relaxed);
            if addr - start >= len {
                continue;
            }
            // SAFETY: replaces exactly the registered mapping, which its `Mapping` still
            // owns (it unregisters before unmapping), with private zeroed memory of the same
            // size and protection: every reference into it stays valid.
            let p = unsafe {
                libc::mmap(
                    start as *mut libc::c_void,
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if p != libc::MAP_FAILED {
                slot.hit.store(true, Ordering::Release);
                return;
            }
            break;
        }
        chain(sig, info, ctx);
    }

    /// Hands a fault that is not ours to the action that was there before.
    fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
        let prev = PREVIOUS.get().map(|a| (a.sa_sigaction, a.sa_flags));
        match prev {
            Some((h, flags)) if h != libc::SIG_DFL && h != libc::SIG_IGN => {
                if flags & libc::SA_SIGINFO != 0 {
                    // SAFETY: the previous handler was installed with SA_SIGINFO, so it has
                    // this signature.
                    let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                        unsafe { std::mem::transmute(h) };
                    f(sig, info, ctx);
                } else {
                    // SAFETY: a handler without SA_SIGINFO takes the signal number only.
                    let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(h) };
                    f(sig);
                }
            }
            _ => {
                // The default action: restore it and return; the access faults again and
                // the process ends as it would have without us.
                // SAFETY: a zeroed sigaction with SIG_DFL (0) is the default action.
                let mut dfl: libc::sigaction = unsafe { std::mem::zeroed() };
                dfl.sa_sigaction = libc::SIG_DFL;
                // SAFETY: restores the default action for SIGBUS.
                unsafe { libc::sigaction(sig, &dfl, std::ptr::null_mut()) };
            }
        }
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
        Self::create(name, len, true)
    }

    /// As [`SharedMemory::new`], without faulting the pages in: each is allocated (zeroed)
    /// on first touch, by this process or whoever else maps the memfd.
    pub fn new_lazy(name: &str, len: usize) -> io::Result<SharedMemory> {
        Self::create(name, len, false)
    }

    /// Allocates, hugepages first unless `NVME_NO_HUGE=1`; `populate` faults pages in.
    fn create(name: &str, len: usize, populate: bool) -> io::Result<SharedMemory> {
        let want_huge = std::env::var_os("NVME_NO_HUGE").is_none_or(|v| v != "1");
        if want_huge && HUGE_STATE.load(Ordering::Relaxed) != 2 {
            match Self::make(name, len, Backing::HugePages, populate) {
                Ok(m) => {
                    HUGE_STATE.store(1, Ordering::Relaxed);
                    return Ok(m);
                }
                Err(_) => HUGE_STATE.store(2, Ordering::Relaxed),
            }
        }
        Self::make(name, len, Backing::Shared, populate)
    }

    /// Allocates with a specific backing; fails rather than falling back.
    pub fn with_backing(name: &str, len: usize, backing: Backing) -> io::Result<SharedMemory> {
        Self::make(name, len, backing, true)
    }

    fn make(name: &str, len: usize, backing: Backing, populate: bool) -> io::Result<SharedMemory> {
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
            | MFdFlags::MFD_ALLOW_SEALING
            | if backing == Backing::HugePages {
                MFdFlags::MFD_HUGETLB
            } else {
                MFdFlags::empty()
            };
        let fd = memfd_create(cname.as_c_str(), flags)?;
        ftruncate(&fd, len as libc::off_t)?;
        // The size is fixed from here on: whoever else gets the descriptor (the software
        // controller's process) can neither shrink the memory under our mapping (SIGBUS)
        // nor grow it.
        fcntl(
            &fd,
            FcntlArg::F_ADD_SEALS(
                SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL,
            ),
        )?;
        let map = Mapping::new(fd.as_fd(), 0, len, populate)?;
        Ok(SharedMemory { map, fd, backing })
    }

    /// Maps an existing file (a group's shared segment, opened by path) of `len` bytes.
    /// The file must already have that size. The mapping is guarded: if another process
    /// truncates the file, this one reads zeros there instead of dying of SIGBUS, and
    /// [`SharedMemory::damaged`] turns true.
    pub fn from_file(file: std::fs::File, len: usize) -> io::Result<SharedMemory> {
        let fd = OwnedFd::from(file);
        let map = Mapping::new_guarded(fd.as_fd(), len, true)?;
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
    /// Was the file truncated under this mapping (see [`SharedMemory::from_file`])?
    pub fn damaged(&self) -> bool {
        self.map.damaged()
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
        // Sealed: whoever holds the descriptor can neither shrink nor grow it.
        assert_eq!(ftruncate(m.fd(), 4096), Err(nix::errno::Errno::EPERM));
        assert_eq!(ftruncate(m.fd(), 16384), Err(nix::errno::Errno::EPERM));
        assert_eq!(second.bytes()[100], 42);
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

    /// A file of `len` bytes in the temporary directory, removed when the test ends.
    struct TempFile(std::path::PathBuf);
    impl TempFile {
        fn new(name: &str, len: u64) -> (TempFile, std::fs::File) {
            let path = std::env::temp_dir().join(format!("nvme-rs-{name}-{}", std::process::id()));
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .unwrap();
            f.set_len(len).unwrap();
            (TempFile(path), f)
        }
    }
    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn a_group_file_truncated_under_its_mapping_reads_as_zeros() {
        let (file, f) = TempFile::new("guarded", 8192);
        let other = f.try_clone().unwrap();
        let m = SharedMemory::from_file(f, 8192).unwrap();
        let r = m.region(0, 8192, 0).unwrap();
        assert!(r.write_u32(4096 + 8, 0xfeed));
        assert_eq!(r.read_u32(4096 + 8), Some(0xfeed));
        assert!(!m.damaged());
        // Another process (here: another descriptor) cuts the file to one page.
        other.set_len(4096).unwrap();
        // Past the end: without the guard this access dies of SIGBUS.
        assert_eq!(r.read_u32(4096 + 8), Some(0));
        assert!(m.damaged());
        // The whole mapping was replaced: stays usable memory, reads zero, takes writes.
        assert_eq!(r.read_u32(0), Some(0));
        assert!(r.write_u32(16, 7));
        assert_eq!(r.read_u32(16), Some(7));
        drop(m);
        drop(file);
    }

    #[test]
    fn a_fault_outside_guarded_mappings_still_kills() {
        use nix::sys::wait::{waitpid, WaitStatus};
        use nix::unistd::{fork, ForkResult};
        // Our handler is installed (by a guarded mapping) and an unguarded mapping faults.
        let (_guarded_file, g) = TempFile::new("other-guarded", 4096);
        let _guarded = SharedMemory::from_file(g, 4096).unwrap();
        let (_file, f) = TempFile::new("unguarded", 8192);
        let m = Mapping::new(f.as_fd(), 0, 8192, false).unwrap();
        let r = m.region(0, 8192, 0).unwrap();
        f.set_len(0).unwrap();
        // SAFETY: the child only reads memory and exits (async-signal-safe steps only).
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                let v = r.read_u32(4096);
                // Reached only if the fault was swallowed.
                // SAFETY: ends the child without running the parent's destructors.
                unsafe { libc::_exit(if v.is_some() { 0 } else { 1 }) };
            }
            ForkResult::Parent { child } => {
                let st = waitpid(child, None).unwrap();
                assert_eq!(
                    st,
                    WaitStatus::Signaled(child, nix::sys::signal::Signal::SIGBUS, false)
                );
            }
        }
    }

    #[test]
    fn falls_back_without_hugepages() {
        let m = SharedMemory::new("test", 4096).unwrap();
        if hugepages_free().unwrap_or(0) == 0 {
            assert_eq!(m.backing(), Backing::Shared);
        }
    }
}
