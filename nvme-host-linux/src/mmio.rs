//! Volatile access to a mapped register BAR.

use std::ptr::NonNull;

use nvme_core::RegisterAccess;

/// A view of a mapped BAR0: volatile 32-bit accesses at byte offsets.
///
/// The mapping is owned elsewhere (the transport) and outlives every `Mmio` made from it:
/// queue pairs and the controller hold the transport alive.
#[derive(Clone, Copy, Debug)]
pub struct Mmio {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: register accesses are single volatile loads/stores; the device arbitrates
// concurrent accesses, and each doorbell has a single writer by construction.
unsafe impl Send for Mmio {}
// SAFETY: as above.
unsafe impl Sync for Mmio {}

impl Mmio {
    /// A view of `len` bytes of registers at `base`.
    ///
    /// # Safety
    /// `base..base+len` must be a mapping of device registers (or memory standing in for
    /// them) that stays mapped while this view or any copy of it is used.
    pub unsafe fn new(base: NonNull<u8>, len: usize) -> Mmio {
        Mmio { base, len }
    }
    /// Length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Is the mapping empty?
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    #[inline]
    fn ptr(&self, offset: usize) -> *mut u32 {
        assert!(
            offset.is_multiple_of(4) && offset + 4 <= self.len,
            "register offset {offset:#x} outside BAR"
        );
        // SAFETY: in bounds of the mapping (asserted above).
        unsafe { self.base.as_ptr().add(offset) as *mut u32 }
    }
}

impl RegisterAccess for Mmio {
    #[inline]
    fn read32(&self, offset: usize) -> u32 {
        // SAFETY: `ptr` is in bounds and 4-byte aligned; registers are read volatile.
        unsafe { self.ptr(offset).read_volatile() }
    }
    #[inline]
    fn write32(&self, offset: usize, value: u32) {
        // SAFETY: as in `read32`.
        unsafe { self.ptr(offset).write_volatile(value) }
    }
}
