//! DMA memory: the one module of nvme-core that holds `unsafe` code.
//!
//! A [`DmaRegion`] names memory that both the CPU and the device use: where the CPU sees it
//! (a virtual address) and where the device sees it (an IOVA). Its creator promises, once,
//! in [`DmaRegion::new`], that the memory stays valid and mapped; every access after that is
//! a safe, bounds-checked method here:
//! - [`write_sqe`](DmaRegion::write_sqe): a volatile store of a 64-byte submission entry;
//! - [`read_cqe`](DmaRegion::read_cqe): an acquire load of the completion dword that holds
//!   the phase tag, then volatile loads of the rest, so a half-written entry is never seen;
//! - [`zero`](DmaRegion::zero), [`read_u32`](DmaRegion::read_u32) /
//!   [`write_u32`](DmaRegion::write_u32) / [`write_u64`](DmaRegion::write_u64) (doorbell
//!   shadows, PRP list entries), [`read_obj`](DmaRegion::read_obj) /
//!   [`write_obj`](DmaRegion::write_obj) (whole structures, copied);
//! - [`shared`](DmaRegion::shared): a reference to a structure made only of atomics that
//!   lives in memory shared with other processes ([`shared_ref`](DmaRegion::shared_ref): a
//!   [`SharedRef`] handle to it, checked once);
//! - [`ring`](DmaRegion::ring): a [`DmaRing`], the queue rings' view, checked once when made
//!   so that each entry access checks only its index.
//!
//! Memory the device writes is only ever read through volatile or atomic loads: Rust never
//! holds a `&[u8]` to it.
#![allow(unsafe_code)]

use core::sync::atomic::{AtomicU32, Ordering};

use nvme_regs::{CompletionEntry, SubmissionEntry};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Size of a submission queue entry in bytes.
pub const SQE_SIZE: usize = 64;
/// Size of a completion queue entry in bytes.
pub const CQE_SIZE: usize = 16;

/// A range of DMA-able memory: where the CPU sees it and where the device sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaRegion {
    vaddr: *mut u8,
    iova: u64,
    len: usize,
}

// SAFETY: a DmaRegion describes memory that may be accessed from any thread (every access
// is volatile or atomic); moving the description moves no data.
unsafe impl Send for DmaRegion {}
// SAFETY: as above; the methods taking `&self` only perform volatile or atomic accesses.
unsafe impl Sync for DmaRegion {}

/// Structures that may be referenced in memory shared with other processes and with the
/// device: `#[repr(C)]`, made of atomics only (so any bytes another process writes are a
/// valid value and every access is atomic), and valid when zero-filled.
///
/// # Safety
/// Implement only for such structures.
pub unsafe trait SharedState: Sync {}

// SAFETY: `#[repr(C)]`, built of AtomicU32/AtomicU64 and arrays of structs of them only.
unsafe impl SharedState for crate::shared::SharedAdminState {}

impl DmaRegion {
    /// Describes `len` bytes at CPU address `vaddr`, visible to the device at `iova`.
    ///
    /// # Safety
    /// The memory must be valid for reads and writes of `len` bytes, mapped for the device at
    /// `iova`, and stay so while any copy of this region (or a sub-region) is used. Nothing
    /// may hold a Rust reference to it other than through [`DmaRegion::shared`].
    pub const unsafe fn new(vaddr: *mut u8, iova: u64, len: usize) -> DmaRegion {
        DmaRegion { vaddr, iova, len }
    }
    /// No memory: zero bytes at IOVA 0 (every access and sub-region of it is refused).
    pub const EMPTY: DmaRegion = DmaRegion {
        vaddr: core::ptr::null_mut(),
        iova: 0,
        len: 0,
    };
    /// CPU address of the first byte.
    pub const fn vaddr(&self) -> *mut u8 {
        self.vaddr
    }
    /// Device address of the first byte.
    pub const fn iova(&self) -> u64 {
        self.iova
    }
    /// Length in bytes.
    pub const fn len(&self) -> usize {
        self.len
    }
    /// Is the region empty?
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The sub-region `[offset, offset + len)`, or `None` if it does not fit.
    #[inline]
    pub fn sub(&self, offset: usize, len: usize) -> Option<DmaRegion> {
        let end = offset.checked_add(len)?;
        if end > self.len {
            return None;
        }
        Some(DmaRegion {
            // SAFETY: offset <= self.len, so the result stays inside (or one past) the region.
            vaddr: unsafe { self.vaddr.add(offset) },
            iova: self.iova + offset as u64,
            len,
        })
    }

    /// A pointer to `[offset, offset + len)` aligned to `align`, or `None` when that is not
    /// inside the region or not aligned.
    #[inline]
    fn at(&self, offset: usize, len: usize, align: usize) -> Option<*mut u8> {
        let end = offset.checked_add(len)?;
        if end > self.len {
            return None;
        }
        // SAFETY: offset + len <= self.len: inside the region.
        let p = unsafe { self.vaddr.add(offset) };
        (p as usize).is_multiple_of(align).then_some(p)
    }

    /// Writes submission entry `index` of a ring that starts at this region (volatile: the
    /// device reads it once the doorbell passes it). Returns `false`, writing nothing, when
    /// the entry is outside the region.
    #[inline]
    pub fn write_sqe(&self, index: u32, entry: &SubmissionEntry) -> bool {
        let Some(p) = self.at(index as usize * SQE_SIZE, SQE_SIZE, 8) else {
            return false;
        };
        // SAFETY: 64 in-bounds, 8-byte aligned bytes of memory valid for writes (`new`).
        unsafe { write_sqe_at(p, entry) };
        true
    }

    /// Reads completion entry `index` of a ring that starts at this region if its phase tag
    /// is `phase`: dword 3 (with the tag) is loaded with acquire ordering before the other
    /// dwords, so the entry is read whole. `None` when the tag differs (not posted yet) or
    /// the entry is outside the region.
    #[inline]
    pub fn read_cqe(&self, index: u32, phase: bool) -> Option<CompletionEntry> {
        let p = self.at(index as usize * CQE_SIZE, CQE_SIZE, 4)?;
        // SAFETY: 16 in-bounds, 4-byte aligned bytes valid for reads (`new`).
        unsafe { read_cqe_at(p, phase) }
    }

    /// Device side, for fake devices and tests: reads submission entry `index` (volatile).
    pub fn read_sqe(&self, index: u32) -> Option<SubmissionEntry> {
        let p = self.at(index as usize * SQE_SIZE, SQE_SIZE, 8)?;
        // SAFETY: 64 in-bounds, 8-byte aligned bytes valid for reads.
        Some(unsafe { read_sqe_at(p) })
    }

    /// Device side, for fake devices and tests: posts completion entry `index` as a
    /// controller does, dwords 0-2 first, then dword 3 (with the phase tag) with release
    /// ordering. Returns `false` when the entry is outside the region.
    pub fn post_cqe(&self, index: u32, entry: &CompletionEntry) -> bool {
        let Some(p) = self.at(index as usize * CQE_SIZE, CQE_SIZE, 4) else {
            return false;
        };
        // SAFETY: 16 in-bounds, 4-byte aligned bytes valid for writes.
        unsafe { post_cqe_at(p, entry) };
        true
    }

    /// The ring of `entries` entries of `N` bytes at the start of this region, or `None`
    /// when it does not fit or the region is not 8-byte aligned. Its accesses check only
    /// the entry index: the rest is checked here, once.
    pub fn ring<const N: usize>(&self, entries: u32) -> Option<DmaRing<N>> {
        let len = (entries as usize).checked_mul(N)?;
        if !N.is_multiple_of(8) {
            return None;
        }
        let vaddr = self.at(0, len, 8)?;
        Some(DmaRing { vaddr, entries })
    }

    /// Zeroes the whole region (volatile: the device may read it afterwards).
    pub fn zero(&self) {
        // SAFETY: the whole region is valid for writes (`new`).
        unsafe { core::ptr::write_bytes(self.vaddr, 0, self.len) };
        core::sync::atomic::compiler_fence(Ordering::Release);
    }

    /// Reads the 32-bit word at `offset` (volatile). `None` when outside or misaligned.
    #[inline]
    pub fn read_u32(&self, offset: usize) -> Option<u32> {
        let p = self.at(offset, 4, 4)?;
        // SAFETY: 4 in-bounds aligned bytes valid for reads.
        Some(unsafe { (p as *const u32).read_volatile() })
    }

    /// The 32-bit word at `offset`, checked once for later accesses; `None` when outside or
    /// misaligned.
    pub fn word(&self, offset: usize) -> Option<DmaWord> {
        let p = self.at(offset, 4, 4)?;
        Some(DmaWord { p: p as *mut u32 })
    }

    /// Writes the 32-bit word at `offset` (volatile). Returns `false` when outside or
    /// misaligned.
    #[inline]
    pub fn write_u32(&self, offset: usize, value: u32) -> bool {
        let Some(p) = self.at(offset, 4, 4) else {
            return false;
        };
        // SAFETY: 4 in-bounds aligned bytes valid for writes.
        unsafe { (p as *mut u32).write_volatile(value) };
        true
    }

    /// Writes the 64-bit word at `offset` (volatile; a PRP list entry, say). Returns `false`
    /// when outside or misaligned.
    #[inline]
    pub fn write_u64(&self, offset: usize, value: u64) -> bool {
        let Some(p) = self.at(offset, 8, 8) else {
            return false;
        };
        // SAFETY: 8 in-bounds aligned bytes valid for writes.
        unsafe { (p as *mut u64).write_volatile(value) };
        true
    }

    /// Copies `out.len()` bytes from `offset` into `out`. Returns `false` (copying nothing)
    /// when that is outside the region. Call once the device has finished writing them (its
    /// completion was read with [`read_cqe`](Self::read_cqe)).
    pub fn read_bytes(&self, offset: usize, out: &mut [u8]) -> bool {
        let Some(p) = self.at(offset, out.len(), 1) else {
            return false;
        };
        // SAFETY: `out.len()` in-bounds bytes valid for reads; `out` is ordinary memory that
        // cannot overlap memory only reached through DmaRegions.
        unsafe { core::ptr::copy_nonoverlapping(p, out.as_mut_ptr(), out.len()) };
        true
    }

    /// Copies `src` to `offset`. Returns `false` (copying nothing) when it does not fit.
    pub fn write_bytes(&self, offset: usize, src: &[u8]) -> bool {
        let Some(p) = self.at(offset, src.len(), 1) else {
            return false;
        };
        // SAFETY: `src.len()` in-bounds bytes valid for writes; no overlap (as above).
        unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), p, src.len()) };
        true
    }

    /// A copy of the `T` at `offset` (any bytes are a valid `T`), or `None` when it does not
    /// fit.
    pub fn read_obj<T: FromBytes + IntoBytes>(&self, offset: usize) -> Option<T> {
        let mut v = T::new_zeroed();
        self.read_bytes(offset, v.as_mut_bytes()).then_some(v)
    }

    /// Writes `value` at `offset`. Returns `false` when it does not fit.
    pub fn write_obj<T: IntoBytes + Immutable>(&self, offset: usize, value: &T) -> bool {
        self.write_bytes(offset, value.as_bytes())
    }

    /// [`shared`](Self::shared), checked once: a handle that dereferences without checks.
    pub fn shared_ref<T: SharedState>(&self) -> Option<SharedRef<T>> {
        let p = self.at(0, core::mem::size_of::<T>(), core::mem::align_of::<T>())?;
        Some(SharedRef { ptr: p as *const T })
    }

    /// The shared structure at the start of this region, or `None` when the region is too
    /// small or misaligned for it.
    pub fn shared<T: SharedState>(&self) -> Option<&T> {
        let p = self.at(0, core::mem::size_of::<T>(), core::mem::align_of::<T>())?;
        // SAFETY: in bounds and aligned; `T` is made of atomics and valid for any bytes
        // (SharedState contract), so every value another process or the device leaves is
        // a valid `T` and all accesses through the reference are atomic. The memory lives as
        // long as the region (the `new` contract covers copies, so the borrow of `self` is a
        // conservative lifetime).
        Some(unsafe { &*(p as *const T) })
    }
}

/// Writes a submission entry at `p` (volatile).
///
/// # Safety
/// `p` is 8-byte aligned and valid for writes of 64 bytes.
#[inline]
unsafe fn write_sqe_at(p: *mut u8, entry: &SubmissionEntry) {
    // As eight 64-bit words: the compiler keeps an entry built in registers there instead of
    // copying it through the stack field by field.
    let words: [u64; 8] = zerocopy::transmute!(*entry);
    let p = p as *mut u64;
    for (i, w) in words.into_iter().enumerate() {
        // SAFETY: the caller's promise (64 bytes, 8-byte aligned); the device reads the
        // entry only after the doorbell.
        unsafe { p.add(i).write_volatile(w) };
    }
}

/// Reads a submission entry at `p` (volatile).
///
/// # Safety
/// `p` is 8-byte aligned and valid for reads of 64 bytes.
unsafe fn read_sqe_at(p: *mut u8) -> SubmissionEntry {
    // SAFETY: the caller's promise; any bytes are a valid SubmissionEntry (plain integers).
    unsafe { (p as *const SubmissionEntry).read_volatile() }
}

/// Reads the completion entry at `p` if its phase tag is `phase`: dword 3 with acquire
/// ordering first, then the others (volatile).
///
/// # Safety
/// `p` is 4-byte aligned and valid for reads of 16 bytes.
#[inline]
unsafe fn read_cqe_at(p: *mut u8, phase: bool) -> Option<CompletionEntry> {
    // SAFETY: the caller's promise.
    unsafe { read_cqe_tagged(p, if phase { PHASE_TAG } else { 0 }) }
}

/// The phase tag's bit in a completion entry's dword 3.
const PHASE_TAG: u32 = 1 << 16;

/// [`read_cqe_at`] with the phase expected as dword 3's tag bit ([`PHASE_TAG`] or 0): one
/// compare.
///
/// # Safety
/// As for [`read_cqe_at`].
#[inline]
unsafe fn read_cqe_tagged(p: *mut u8, tag: u32) -> Option<CompletionEntry> {
    // SAFETY: the caller's promise; the device writes the bytes concurrently, so they are
    // read only atomically or volatile.
    unsafe {
        let dw3 = AtomicU32::from_ptr(p.add(12) as *mut u32).load(Ordering::Acquire);
        if dw3 & PHASE_TAG != tag {
            return None;
        }
        let (cid, status) = CompletionEntry::split_dw3(dw3);
        let dw0 = (p as *const u32).read_volatile();
        let dw1 = (p.add(4) as *const u32).read_volatile();
        let dw2 = (p.add(8) as *const u32).read_volatile();
        Some(CompletionEntry {
            dw0,
            dw1,
            sq_head: dw2 as u16,
            sq_id: (dw2 >> 16) as u16,
            cid,
            status,
        })
    }
}

/// Posts the completion entry at `p` as a controller does: dwords 0-2, then dword 3 (with
/// the phase tag) with release ordering.
///
/// # Safety
/// `p` is 4-byte aligned and valid for writes of 16 bytes.
unsafe fn post_cqe_at(p: *mut u8, entry: &CompletionEntry) {
    let dw2 = entry.sq_head as u32 | (entry.sq_id as u32) << 16;
    let dw3 = entry.cid as u32 | (entry.status as u32) << 16;
    // SAFETY: the caller's promise; the host reads the bytes only atomically or volatile.
    unsafe {
        (p as *mut u32).write_volatile(entry.dw0);
        (p.add(4) as *mut u32).write_volatile(entry.dw1);
        (p.add(8) as *mut u32).write_volatile(dw2);
        AtomicU32::from_ptr(p.add(12) as *mut u32).store(dw3, Ordering::Release);
    }
}

/// One 32-bit word of DMA memory, made by [`DmaRegion::word`] (which checked that it is
/// inside its region and 4-byte aligned): accesses check nothing more. A shadow doorbell
/// or EventIdx entry. The region's validity promise ([`DmaRegion::new`]) covers it like a
/// copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaWord {
    /// 4-byte aligned, inside the region.
    p: *mut u32,
}

// SAFETY: as for DmaRegion: a description of memory accessed only volatile.
unsafe impl Send for DmaWord {}
// SAFETY: as above.
unsafe impl Sync for DmaWord {}

impl DmaWord {
    /// Reads the word (volatile: the device may write it).
    #[inline]
    pub fn read(&self) -> u32 {
        // SAFETY: 4 aligned bytes inside the region (`DmaRegion::word`), valid for reads.
        unsafe { self.p.read_volatile() }
    }
    /// Writes the word (volatile: the device reads it).
    #[inline]
    pub fn write(&self, value: u32) {
        // SAFETY: 4 aligned bytes inside the region (`DmaRegion::word`), valid for writes.
        unsafe { self.p.write_volatile(value) }
    }
}

/// A ring of `entries` entries of `N` bytes in DMA memory, made by [`DmaRegion::ring`]
/// (which checked that it fits its region and is aligned): an access checks only the
/// index. The region's validity promise ([`DmaRegion::new`]) covers it like a copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaRing<const N: usize> {
    /// 8-byte aligned; `entries * N` bytes from here are inside the region.
    vaddr: *mut u8,
    entries: u32,
}

// SAFETY: as for DmaRegion: a description of memory accessed only volatile or atomically.
unsafe impl<const N: usize> Send for DmaRing<N> {}
// SAFETY: as above.
unsafe impl<const N: usize> Sync for DmaRing<N> {}

impl<const N: usize> DmaRing<N> {
    /// Number of entries.
    pub const fn entries(&self) -> u32 {
        self.entries
    }
    /// Entry `index`, when it is one.
    #[inline]
    fn entry(&self, index: u32) -> Option<*mut u8> {
        // SAFETY: index < entries: inside the `entries * N` bytes checked in `ring`.
        (index < self.entries).then(|| unsafe { self.vaddr.add(index as usize * N) })
    }
}

impl DmaRing<SQE_SIZE> {
    /// [`DmaRegion::write_sqe`], checking only the index.
    #[inline]
    pub fn write_sqe(&self, index: u32, entry: &SubmissionEntry) -> bool {
        let Some(p) = self.entry(index) else {
            return false;
        };
        // SAFETY: an entry of the ring: 64 bytes, 8-byte aligned (`DmaRegion::ring`), valid
        // for writes (`DmaRegion::new`).
        unsafe { write_sqe_at(p, entry) };
        true
    }
    /// [`DmaRegion::read_sqe`], checking only the index.
    pub fn read_sqe(&self, index: u32) -> Option<SubmissionEntry> {
        let p = self.entry(index)?;
        // SAFETY: an entry of the ring, as in `write_sqe`.
        Some(unsafe { read_sqe_at(p) })
    }
}

impl DmaRing<CQE_SIZE> {
    /// [`DmaRegion::read_cqe`], checking only the index.
    #[inline]
    pub fn read_cqe(&self, index: u32, phase: bool) -> Option<CompletionEntry> {
        let p = self.entry(index)?;
        // SAFETY: an entry of the ring: 16 bytes, 8-byte aligned (`DmaRegion::ring`), valid
        // for reads (`DmaRegion::new`).
        unsafe { read_cqe_at(p, phase) }
    }
    /// [`DmaRegion::post_cqe`], checking only the index.
    pub fn post_cqe(&self, index: u32, entry: &CompletionEntry) -> bool {
        let Some(p) = self.entry(index) else {
            return false;
        };
        // SAFETY: an entry of the ring, as in `read_cqe`.
        unsafe { post_cqe_at(p, entry) };
        true
    }
}

/// The host's place in a submission ring: the tail, where the next entry goes. The tail is
/// below the ring's entries at all times (it starts at 0 and only [`push`](Self::push) and
/// [`set_tail`](Self::set_tail) move it, both within the ring), so writing the entry there
/// checks nothing.
#[derive(Debug)]
pub struct SqCursor {
    ring: DmaRing<SQE_SIZE>,
    /// Below `ring.entries`.
    tail: u32,
}

impl SqCursor {
    /// At entry 0 of `ring`; `None` for a ring of no entries.
    pub const fn new(ring: DmaRing<SQE_SIZE>) -> Option<SqCursor> {
        if ring.entries == 0 {
            return None;
        }
        Some(SqCursor { ring, tail: 0 })
    }
    /// Entries in the ring.
    #[inline]
    pub const fn entries(&self) -> u32 {
        self.ring.entries
    }
    /// The tail: where the next entry goes.
    #[inline]
    pub const fn tail(&self) -> u32 {
        self.tail
    }
    /// The entry after the tail (0 after the last).
    #[inline]
    pub const fn next(&self) -> u32 {
        let next = self.tail + 1;
        if next == self.ring.entries {
            0
        } else {
            next
        }
    }
    /// Writes `entry` at the tail (volatile: the device reads it once the doorbell passes
    /// it) and moves the tail to the next entry. The caller checks that the ring has room.
    #[inline]
    pub fn push(&mut self, entry: &SubmissionEntry) {
        // SAFETY: tail < entries (this type's invariant): an entry of the ring, 64 bytes,
        // 8-byte aligned (`DmaRegion::ring`), valid for writes (`DmaRegion::new`).
        unsafe { write_sqe_at(self.ring.vaddr.add(self.tail as usize * SQE_SIZE), entry) };
        self.tail = self.next();
    }
    /// Moves the tail to `tail` (taking back entries not yet announced, or emptying the
    /// ring); `false`, and nothing moved, when that is not an entry of the ring.
    pub fn set_tail(&mut self, tail: u32) -> bool {
        if tail < self.ring.entries {
            self.tail = tail;
            true
        } else {
            false
        }
    }
}

/// The host's place in a completion ring: the head, the next entry to read, and the phase
/// tag expected there. The head is kept as a pointer to its entry, always inside the ring (it
/// starts at the first entry and only [`pop`](Self::pop) moves it, back to the first after
/// the last), so reading the entry there checks nothing and moving on is one add.
#[derive(Debug)]
pub struct CqCursor {
    ring: DmaRing<CQE_SIZE>,
    /// The head's entry: `ring.vaddr + head * CQE_SIZE` with `head < ring.entries`.
    at: *mut u8,
    /// One past the ring's last entry.
    end: *mut u8,
    /// The phase tag expected at the head, where dword 3 holds it: [`PHASE_TAG`] or 0.
    tag: u32,
}

// SAFETY: as for DmaRing: a description of memory read only volatile or atomically; the
// pointers are into the ring the cursor owns a copy of.
unsafe impl Send for CqCursor {}
// SAFETY: as above; `&self` methods read no memory.
unsafe impl Sync for CqCursor {}

impl CqCursor {
    /// At entry 0 of `ring`, expecting phase tag 1 (a new or reset ring, zeroed); `None`
    /// for a ring of no entries.
    pub fn new(ring: DmaRing<CQE_SIZE>) -> Option<CqCursor> {
        if ring.entries == 0 {
            return None;
        }
        // SAFETY: the ring's `entries * CQE_SIZE` bytes are inside its region
        // (`DmaRegion::ring`): one past them is in bounds or one past the region's end.
        let end = unsafe { ring.vaddr.add(ring.entries as usize * CQE_SIZE) };
        Some(CqCursor {
            ring,
            at: ring.vaddr,
            end,
            tag: PHASE_TAG,
        })
    }
    /// Entries in the ring.
    #[inline]
    pub const fn entries(&self) -> u32 {
        self.ring.entries
    }
    /// The head: the index of the next entry to read.
    #[inline]
    pub fn head(&self) -> u32 {
        ((self.at as usize - self.ring.vaddr as usize) / CQE_SIZE) as u32
    }
    /// The phase tag expected at the head.
    pub const fn phase(&self) -> bool {
        self.tag != 0
    }
    /// Takes the entry at the head if the controller has posted it (its phase tag is the
    /// one expected; dword 3 is read with acquire ordering before the others, so the entry
    /// is read whole) and moves the head on, flipping the expected tag at the wrap.
    #[inline]
    pub fn pop(&mut self) -> Option<CompletionEntry> {
        // SAFETY: `at` is an entry of the ring (this type's invariant): 16 bytes, 8-byte
        // aligned (`DmaRegion::ring`), valid for reads (`DmaRegion::new`).
        let cqe = unsafe { read_cqe_tagged(self.at, self.tag) }?;
        // SAFETY: `at` is an entry of the ring, so the next is at most one past its end.
        self.at = unsafe { self.at.add(CQE_SIZE) };
        if self.at == self.end {
            self.at = self.ring.vaddr;
            self.tag ^= PHASE_TAG;
        }
        Some(cqe)
    }
    /// Back to entry 0 and phase tag 1 (after the ring was zeroed).
    pub fn reset(&mut self) {
        self.at = self.ring.vaddr;
        self.tag = PHASE_TAG;
    }
}

/// A [`SharedState`] structure in DMA or shared memory, made by [`DmaRegion::shared_ref`]
/// (which checked size and alignment): [`get`](Self::get) is a plain dereference. The
/// region's validity promise ([`DmaRegion::new`]) covers it like a copy of the region.
#[derive(Debug)]
pub struct SharedRef<T: SharedState> {
    /// In bounds and aligned for `T` (checked in `shared_ref`).
    ptr: *const T,
}

impl<T: SharedState> Clone for SharedRef<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T: SharedState> Copy for SharedRef<T> {}

// SAFETY: `T: SharedState` is Sync and made of atomics; the handle is a description of
// memory, like DmaRegion.
unsafe impl<T: SharedState> Send for SharedRef<T> {}
// SAFETY: as above.
unsafe impl<T: SharedState> Sync for SharedRef<T> {}

impl<T: SharedState> SharedRef<T> {
    /// The structure.
    #[inline]
    pub fn get(&self) -> &T {
        // SAFETY: in bounds and aligned (`DmaRegion::shared_ref`), valid while the region is
        // (`DmaRegion::new`'s promise, which covers this copy); `T` is valid for any bytes
        // and accessed only atomically (SharedState), as in `DmaRegion::shared`.
        unsafe { &*self.ptr }
    }
}

/// Page-aligned, zeroed heap memory standing in for DMA memory in tests and fake devices
/// (its IOVA is made up). It lives until the test process exits.
#[cfg(test)]
pub(crate) fn test_memory(pages: usize, iova: u64) -> DmaRegion {
    let layout = std::alloc::Layout::from_size_align(pages * 4096, 4096).expect("layout");
    // SAFETY: a non-zero size layout.
    let p = unsafe { std::alloc::alloc_zeroed(layout) };
    assert!(!p.is_null(), "allocation failed");
    // SAFETY: the allocation is never freed, so it stays valid for the process's lifetime,
    // and nothing else references it.
    unsafe { DmaRegion::new(p, iova, pages * 4096) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_regions_are_bounded() {
        let r = test_memory(1, 0x1000);
        let s = r.sub(16, 48).unwrap();
        assert_eq!(s.iova(), 0x1010);
        assert_eq!(s.len(), 48);
        assert_eq!(s.vaddr() as usize, r.vaddr() as usize + 16);
        assert!(r.sub(4096 - 47, 48).is_none());
        assert!(r.sub(usize::MAX, 2).is_none());
    }

    #[test]
    fn accesses_outside_or_misaligned_are_refused() {
        let r = test_memory(1, 0x1000);
        assert!(
            !r.write_sqe(64, &SubmissionEntry::default()),
            "past the end"
        );
        assert!(r.write_sqe(63, &SubmissionEntry::default()));
        assert!(r.read_cqe(256, false).is_none());
        assert!(r.read_u32(4094).is_none());
        assert!(r.read_u32(2).is_none(), "misaligned");
        assert!(!r.write_u64(4, 1), "misaligned");
        assert!(!r.write_bytes(4090, &[0; 7]));
        assert!(r.read_obj::<u64>(4089).is_none());
    }

    #[test]
    fn cursors_stay_inside_their_ring_and_follow_the_phase() {
        let r = test_memory(1, 0x1000);
        assert!(SqCursor::new(r.ring::<SQE_SIZE>(0).unwrap()).is_none());
        assert!(CqCursor::new(r.ring::<CQE_SIZE>(0).unwrap()).is_none());
        let mut sq = SqCursor::new(r.ring::<SQE_SIZE>(3).unwrap()).unwrap();
        for i in 0..7u16 {
            assert_eq!(sq.tail(), (i % 3) as u32);
            sq.push(&SubmissionEntry {
                cid: i,
                ..Default::default()
            });
        }
        // Entries 0, 1, 2, 0, 1, 2, 0: entry 0 holds the last, the rest the one before.
        assert_eq!(r.read_sqe(0).map(|e| e.cid), Some(6));
        assert_eq!(r.read_sqe(2).map(|e| e.cid), Some(5));
        assert_eq!(
            r.read_sqe(3).map(|e| e.cid),
            Some(0),
            "past the ring: untouched"
        );
        assert!(!sq.set_tail(3), "not an entry of the ring");
        assert!(sq.set_tail(2));
        assert_eq!(sq.next(), 0);
        let ring = r.sub(2048, 32).unwrap();
        let mut cq = CqCursor::new(ring.ring::<CQE_SIZE>(2).unwrap()).unwrap();
        assert!(cq.pop().is_none(), "zeroed: phase 0, tag 1 expected");
        let post = |idx: u32, cid: u16, phase: u16| {
            let c = CompletionEntry {
                cid,
                status: phase,
                ..Default::default()
            };
            assert!(ring.post_cqe(idx, &c));
        };
        post(0, 10, 1);
        post(1, 11, 1);
        assert_eq!(cq.pop().map(|c| c.cid), Some(10));
        assert_eq!(cq.head(), 1);
        assert_eq!(cq.pop().map(|c| c.cid), Some(11));
        assert_eq!((cq.head(), cq.phase()), (0, false), "wrapped, tag flipped");
        assert!(cq.pop().is_none(), "entry 0 still has the old tag");
        post(0, 12, 0);
        assert_eq!(cq.pop().map(|c| c.cid), Some(12));
        cq.reset();
        assert_eq!((cq.head(), cq.phase()), (0, true));
    }

    #[test]
    fn rings_check_their_region_once_and_the_index_always() {
        let r = test_memory(1, 0x1000);
        assert!(r.ring::<SQE_SIZE>(65).is_none(), "does not fit");
        assert!(
            r.sub(4, 128).unwrap().ring::<SQE_SIZE>(1).is_none(),
            "misaligned"
        );
        let sq = r.ring::<SQE_SIZE>(4).unwrap();
        let e = SubmissionEntry {
            opcode: 2,
            cid: 7,
            ..Default::default()
        };
        assert!(sq.write_sqe(3, &e));
        assert!(
            !sq.write_sqe(4, &e),
            "past the ring, though inside the region"
        );
        assert_eq!(r.read_sqe(3).map(|e| e.cid), Some(7));
        assert_eq!(sq.read_sqe(3).map(|e| e.opcode), Some(2));
        let cq = r.sub(1024, 64).unwrap().ring::<CQE_SIZE>(4).unwrap();
        let c = CompletionEntry {
            cid: 9,
            status: 1,
            ..Default::default()
        };
        assert!(cq.post_cqe(2, &c));
        assert!(!cq.post_cqe(4, &c));
        assert_eq!(cq.read_cqe(2, true).map(|c| c.cid), Some(9));
        assert!(cq.read_cqe(2, false).is_none());
        assert!(cq.read_cqe(4, false).is_none(), "past the ring");
    }

    #[test]
    fn completion_entries_are_read_by_phase() {
        let r = test_memory(1, 0x1000);
        assert!(r.read_cqe(0, true).is_none(), "zeroed: phase 0");
        assert!(r.read_cqe(0, false).is_some());
        let e = CompletionEntry {
            dw0: 7,
            dw1: 8,
            sq_head: 9,
            sq_id: 3,
            cid: 0x42,
            status: 1,
        };
        assert!(r.post_cqe(1, &e));
        assert!(!r.post_cqe(256, &e));
        let got = r.read_cqe(1, true).unwrap();
        assert_eq!((got.dw0, got.dw1, got.sq_head, got.sq_id), (7, 8, 9, 3));
        assert_eq!((got.cid, got.status), (0x42, 1));
        assert!(r.read_cqe(1, false).is_none());
        r.zero();
        assert_eq!(r.read_obj::<[u8; 32]>(0), Some([0; 32]));
    }
}
