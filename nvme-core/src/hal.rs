//! The hardware and OS abstraction: register access, a clock and a lock. DMA memory is
//! [`DmaRegion`](crate::DmaRegion).

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

/// A monotonic clock in nanoseconds.
pub trait Clock {
    /// Nanoseconds since an arbitrary fixed point; never decreases.
    fn now_ns(&self) -> u64;
}

/// What taking a [`RobustLock`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockOutcome {
    /// The lock was free or released normally.
    Acquired,
    /// The previous holder died while holding it: the protected state may be half-updated
    /// and must be made consistent (then [`RobustLock::mark_consistent`]) before the guard
    /// is dropped.
    PreviousOwnerDied,
}

/// A lock that survives the death of its holder: a robust, process-shared mutex for state
/// shared by processes, or [`spin::Mutex`] within one process (whose holder cannot die
/// without the whole process). Dropping the guard releases the lock.
///
/// Memory safety never rests on the lock: the state it protects is made of atomics. It
/// keeps the protocol's steps from interleaving.
pub trait RobustLock {
    /// Proof of holding the lock; dropping it unlocks.
    type Guard<'a>
    where
        Self: 'a;
    /// Takes the lock, waiting at most `bound` (`None`: as long as needed). `None` when it
    /// stayed held past the bound (by a holder that is stopped or stuck rather than dead).
    fn lock(&self, bound: Option<core::time::Duration>) -> Option<(Self::Guard<'_>, LockOutcome)>;
    /// Takes the lock if it is free.
    fn try_lock(&self) -> Option<(Self::Guard<'_>, LockOutcome)>;
    /// Declares the protected state consistent after [`LockOutcome::PreviousOwnerDied`].
    fn mark_consistent(&self, guard: &Self::Guard<'_>);
}

/// The in-process lock of a process's own admin queue (a group of one).
pub type InProcessLock = spin::Mutex<()>;

/// The in-process lock: a holder cannot die without the process, so the outcome is always
/// [`LockOutcome::Acquired`], and nothing can stop a holder while others wait (no bound).
impl RobustLock for spin::Mutex<()> {
    type Guard<'a> = spin::MutexGuard<'a, ()>;
    fn lock(&self, _bound: Option<core::time::Duration>) -> Option<(Self::Guard<'_>, LockOutcome)> {
        Some((spin::Mutex::lock(self), LockOutcome::Acquired))
    }
    fn try_lock(&self) -> Option<(Self::Guard<'_>, LockOutcome)> {
        spin::Mutex::try_lock(self).map(|g| (g, LockOutcome::Acquired))
    }
    fn mark_consistent(&self, _guard: &Self::Guard<'_>) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    #[test]
    fn the_in_process_lock_excludes() {
        // Two non-atomic steps (load, store) under the lock: lost updates show a broken lock.
        let s = Arc::new((spin::Mutex::new(()), AtomicU64::new(0)));
        let threads: std::vec::Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        let (g, o) = RobustLock::lock(&s.0, None).unwrap();
                        assert_eq!(o, LockOutcome::Acquired);
                        let v = s.1.load(Ordering::Relaxed);
                        std::hint::spin_loop();
                        s.1.store(v + 1, Ordering::Relaxed);
                        drop(g);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(s.1.load(Ordering::Relaxed), 40_000);
        let g = RobustLock::try_lock(&s.0).unwrap();
        assert!(RobustLock::try_lock(&s.0).is_none());
        drop(g);
        assert!(RobustLock::try_lock(&s.0).is_some());
    }
}
