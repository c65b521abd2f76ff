//! BAR0 as seen from the device: registers and doorbells in a shared memory mapping.
//!
//! The host writes registers and doorbells with volatile stores into its own mapping of the
//! same memfd; the device polls them here with atomic loads (acquire for doorbells, so the
//! queue entries written before the doorbell are visible).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::mem::Mapping;

/// The device's mapping of BAR0.
pub(crate) struct Bar {
    map: Mapping,
}

impl Bar {
    pub(crate) fn new(map: Mapping) -> Bar {
        // The mapping comes from mmap, so it is page aligned: every naturally aligned offset
        // below is naturally aligned in memory.
        debug_assert!((map.ptr() as usize).is_multiple_of(8));
        Bar { map }
    }

    fn a32(&self, off: usize) -> &AtomicU32 {
        assert!(
            off.is_multiple_of(4) && off + 4 <= self.map.len(),
            "BAR offset {off:#x}"
        );
        // SAFETY: in bounds and 4-byte aligned (checked above; the mapping is page aligned);
        // the memory lives as long as `self.map`, and every access to it, from this or
        // another process, is atomic or volatile, never through a Rust reference to u32.
        unsafe { AtomicU32::from_ptr(self.map.ptr().add(off).cast()) }
    }

    fn a64(&self, off: usize) -> &AtomicU64 {
        assert!(
            off.is_multiple_of(8) && off + 8 <= self.map.len(),
            "BAR offset {off:#x}"
        );
        // SAFETY: as in `a32`, with 8-byte alignment.
        unsafe { AtomicU64::from_ptr(self.map.ptr().add(off).cast()) }
    }

    /// Reads a 32-bit register or doorbell (acquire).
    #[inline]
    pub(crate) fn load32(&self, off: usize) -> u32 {
        self.a32(off).load(Ordering::Acquire)
    }

    /// Writes a 32-bit register (release).
    #[inline]
    pub(crate) fn store32(&self, off: usize, v: u32) {
        self.a32(off).store(v, Ordering::Release)
    }

    /// Reads a 64-bit register.
    pub(crate) fn load64(&self, off: usize) -> u64 {
        self.a64(off).load(Ordering::Acquire)
    }

    /// Writes a 64-bit register.
    pub(crate) fn store64(&self, off: usize, v: u64) {
        self.a64(off).store(v, Ordering::Release)
    }
}
