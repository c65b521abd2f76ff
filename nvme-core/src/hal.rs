//! The hardware and OS abstraction: register access, DMA memory, a clock and a lock.

use core::sync::atomic::{AtomicBool, Ordering};

/// Access to a controller's registers (BAR0), by byte offset.
///
/// Implementations perform volatile (uncached MMIO) accesses. A write that rings a doorbell
/// must be ordered after the caller's earlier writes to DMA memory (a release fence before
/// the store).
pub trait RegisterAccess {
    /// Reads the 32-bit register at `offset`.
    fn read32(&self, offset: usize) -> u32;
    /// Writes the 32-bit register at `offset`.
    fn write32(&self, offset: usize, value: u32);
    /// Reads a 64-bit register as two 32-bit reads, low dword first.
    fn read64(&self, offset: usize) -> u64 {
        self.read32(offset) as u64 | (self.read32(offset + 4) as u64) << 32
    }
    /// Writes a 64-bit register as two 32-bit writes, low dword first.
    fn write64(&self, offset: usize, value: u64) {
        self.write32(offset, value as u32);
        self.write32(offset + 4, (value >> 32) as u32);
    }
}

impl<R: RegisterAccess + ?Sized> RegisterAccess for &R {
    fn read32(&self, offset: usize) -> u32 {
        (**self).read32(offset)
    }
    fn write32(&self, offset: usize, value: u32) {
        (**self).write32(offset, value)
    }
    fn read64(&self, offset: usize) -> u64 {
        (**self).read64(offset)
    }
    fn write64(&self, offset: usize, value: u64) {
        (**self).write64(offset, value)
    }
}

/// A range of DMA-able memory: where the CPU sees it and where the device sees it.
///
/// The memory stays mapped (for the CPU and the device) for as long as anything built over
/// the region uses it; that is the caller's promise when it creates the region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaRegion {
    vaddr: *mut u8,
    iova: u64,
    len: usize,
}

// SAFETY: a DmaRegion is a description (address, IOVA, length); moving it between threads
// moves no data. Access to the memory is governed by the structures built over it.
unsafe impl Send for DmaRegion {}
// SAFETY: as above; sharing the description shares no mutable state.
unsafe impl Sync for DmaRegion {}

impl DmaRegion {
    /// Describes `len` bytes at CPU address `vaddr`, visible to the device at `iova`.
    ///
    /// # Safety
    /// The memory must be valid for reads and writes of `len` bytes, mapped for the device at
    /// `iova`, and stay so while any queue, PRP list or command built over it is in use.
    pub const unsafe fn new(vaddr: *mut u8, iova: u64, len: usize) -> DmaRegion {
        DmaRegion { vaddr, iova, len }
    }
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
    pub fn sub(&self, offset: usize, len: usize) -> Option<DmaRegion> {
        let end = offset.checked_add(len)?;
        if end > self.len {
            return None;
        }
        // SAFETY: in bounds of a region whose validity the creator promised.
        Some(unsafe { DmaRegion::new(self.vaddr.add(offset), self.iova + offset as u64, len) })
    }
}

/// A monotonic clock in nanoseconds.
pub trait Clock {
    /// Nanoseconds since an arbitrary fixed point; never decreases.
    fn now_ns(&self) -> u64;
}

/// A lock that can live in shared memory and be taken by any process or thread.
///
/// # Safety
/// `lock` must not return while another holder has not called `unlock`.
pub unsafe trait RawLock {
    /// Takes the lock, waiting as long as needed.
    fn lock(&self);
    /// Releases the lock taken by the caller.
    fn unlock(&self);
    /// Takes the lock if it is free.
    fn try_lock(&self) -> bool;
}

/// What taking a [`RobustLock`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockOutcome {
    /// The lock was free or released normally.
    Acquired,
    /// The previous holder died while holding it: the protected state may be half-updated
    /// and must be made consistent (then [`RobustLock::mark_consistent`]) before unlocking.
    PreviousOwnerDied,
}

/// A lock shared between processes that survives the death of its holder (a robust,
/// process-shared mutex on Linux).
///
/// # Safety
/// `lock` must not return while another holder has not called `unlock` or died.
pub unsafe trait RobustLock {
    /// Takes the lock, waiting as long as needed.
    fn lock(&self) -> LockOutcome;
    /// Takes the lock if it is free.
    fn try_lock(&self) -> Option<LockOutcome>;
    /// Takes the lock, waiting at most `timeout`; `None` when it stayed held (by a process
    /// that is stopped or stuck rather than dead). The default waits without a bound.
    fn lock_timeout(&self, timeout: core::time::Duration) -> Option<LockOutcome> {
        let _ = timeout;
        Some(self.lock())
    }
    /// Declares the protected state consistent after [`LockOutcome::PreviousOwnerDied`].
    fn mark_consistent(&self);
    /// Releases the lock.
    fn unlock(&self);
}

// SAFETY: a spin lock has no owner that can die independently within one process; it
// never reports a dead owner.
unsafe impl RobustLock for SpinLock {
    fn lock(&self) -> LockOutcome {
        RawLock::lock(self);
        LockOutcome::Acquired
    }
    fn try_lock(&self) -> Option<LockOutcome> {
        RawLock::try_lock(self).then_some(LockOutcome::Acquired)
    }
    fn mark_consistent(&self) {}
    fn unlock(&self) {
        RawLock::unlock(self)
    }
}

/// The default in-process lock: a test-and-test-and-set spin lock, usable in shared memory
/// (it is a single atomic byte).
#[derive(Default, Debug)]
pub struct SpinLock(AtomicBool);

impl SpinLock {
    /// A new unlocked lock.
    pub const fn new() -> SpinLock {
        SpinLock(AtomicBool::new(false))
    }
}

// SAFETY: compare_exchange with Acquire admits only one holder; unlock stores with Release.
unsafe impl RawLock for SpinLock {
    fn lock(&self) {
        while !RawLock::try_lock(self) {
            while self.0.load(Ordering::Relaxed) {
                core::hint::spin_loop();
            }
        }
    }
    fn unlock(&self) {
        self.0.store(false, Ordering::Release);
    }
    fn try_lock(&self) -> bool {
        self.0
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }
}

/// An in-process mutex from the `spin` crate, for data that does not live in shared memory.
pub type Mutex<T> = spin::Mutex<T>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn spin_lock_excludes() {
        struct Shared {
            lock: SpinLock,
            value: core::cell::UnsafeCell<u64>,
        }
        // SAFETY: `value` is only touched with `lock` held.
        unsafe impl Sync for Shared {}
        let s = Arc::new(Shared {
            lock: SpinLock::new(),
            value: 0.into(),
        });
        let threads: std::vec::Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        RawLock::lock(&s.lock);
                        // SAFETY: the lock is held.
                        unsafe { *s.value.get() += 1 };
                        RawLock::unlock(&s.lock);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // SAFETY: every thread has been joined; nothing else touches the value.
        let total = unsafe { *s.value.get() };
        assert_eq!(total, 40_000);
        assert!(RawLock::try_lock(&s.lock));
        assert!(!RawLock::try_lock(&s.lock));
    }

    #[test]
    fn sub_regions_are_bounded() {
        let mut mem = [0u8; 64];
        // SAFETY: test memory outlives the region.
        let r = unsafe { DmaRegion::new(mem.as_mut_ptr(), 0x1000, 64) };
        let s = r.sub(16, 48).unwrap();
        assert_eq!(s.iova(), 0x1010);
        assert_eq!(s.len(), 48);
        assert!(r.sub(17, 48).is_none());
        assert!(r.sub(usize::MAX, 2).is_none());
    }
}
