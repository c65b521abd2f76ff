//! BAR0 as seen from the device: registers and doorbells in a shared memory mapping.
//!
//! The host writes registers and doorbells with volatile stores into its own mapping of the
//! same memfd; the device polls them here with atomic loads (acquire for doorbells, so the
//! queue entries written before the doorbell are visible).

use std::sync::atomic::Ordering;

use crate::mem::Mapping;

/// The device's mapping of BAR0.
pub(crate) struct Bar {
    map: Mapping,
}

impl Bar {
    pub(crate) fn new(map: Mapping) -> Bar {
        // The mapping comes from mmap, so it is page aligned: every naturally aligned offset
        // below is naturally aligned in memory (the accessors check it anyway).
        debug_assert!(map.is_aligned(0, 8));
        Bar { map }
    }

    /// Reads a 32-bit register or doorbell (acquire).
    #[inline]
    pub(crate) fn load32(&self, off: usize) -> u32 {
        self.map.atomic_u32(off).load(Ordering::Acquire)
    }

    /// Writes a 32-bit register (release).
    #[inline]
    pub(crate) fn store32(&self, off: usize, v: u32) {
        self.map.atomic_u32(off).store(v, Ordering::Release)
    }

    /// Replaces a 32-bit doorbell with `v` and returns what was there (acquire and release):
    /// a host write between the two cannot be lost.
    #[inline]
    pub(crate) fn swap32(&self, off: usize, v: u32) -> u32 {
        self.map.atomic_u32(off).swap(v, Ordering::AcqRel)
    }

    /// Reads a 64-bit register.
    pub(crate) fn load64(&self, off: usize) -> u64 {
        self.map.atomic_u64(off).load(Ordering::Acquire)
    }

    /// Writes a 64-bit register.
    pub(crate) fn store64(&self, off: usize, v: u64) {
        self.map.atomic_u64(off).store(v, Ordering::Release)
    }
}
