//! The controller's registers: a handle on the mapped BAR0. Volatile accesses through raw
//! pointers into the mapping: hence the `unsafe` allowed here.
#![allow(unsafe_code)]

use std::sync::Arc;

use nvme_core::RegisterAccess;
use nvme_regs::registers::{offset, Cc, Csts, RegisterBlock};

use crate::memory::Mapping;

/// A handle on a mapped BAR0: volatile 32-bit accesses at byte offsets (doorbells, and
/// everything the core engine does), and the named registers through `volatile-register`'s
/// [`RegisterBlock`].
///
/// Every handle keeps the mapping alive (it holds a reference to it), so no copy of it, on
/// any thread, can touch the BAR after it was unmapped.
#[derive(Clone, Debug)]
pub struct Mmio {
    map: Arc<Mapping>,
}

/// Bytes a BAR0 must have: the registers and the admin queue's two doorbells.
const MIN_LEN: usize = offset::DOORBELLS + 8;

impl Mmio {
    /// A handle on `map`, a mapping of a controller's BAR0 (or memory standing in for it).
    /// Fails, returning the length, when it is too small for the registers and the admin
    /// doorbells.
    pub fn new(map: Mapping) -> std::result::Result<Mmio, usize> {
        if map.len() < MIN_LEN || !(map.as_ptr() as usize).is_multiple_of(8) {
            return Err(map.len());
        }
        Ok(Mmio { map: Arc::new(map) })
    }
    /// Length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }
    /// Is the mapping empty? (Never: too small mappings are refused.)
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }
    /// The named registers (CAP .. CMBSZ).
    pub fn block(&self) -> &RegisterBlock {
        // SAFETY: the mapping holds at least MIN_LEN > size_of::<RegisterBlock>() bytes and
        // is 8-byte aligned (checked in `new`), and lives as long as `self`. RegisterBlock
        // is made of volatile-register cells, so every access through it is volatile.
        unsafe { &*(self.map.as_ptr() as *const RegisterBlock) }
    }
    /// CSTS, read now.
    pub fn csts(&self) -> Csts {
        Csts(self.block().csts.read())
    }
    /// CC, read now.
    pub fn cc(&self) -> Cc {
        Cc(self.block().cc.read())
    }
    /// Writes CC.
    pub fn set_cc(&self, cc: Cc) {
        // SAFETY: a volatile store to the CC register inside the mapping; writing CC is
        // what the caller means to do to the controller.
        unsafe { self.block().cc.write(cc.0) }
    }
    #[inline]
    fn ptr(&self, offset: usize) -> *mut u32 {
        assert!(
            offset.is_multiple_of(4) && offset + 4 <= self.map.len(),
            "register offset {offset:#x} outside BAR"
        );
        // SAFETY: in bounds of the mapping (asserted above).
        unsafe { self.map.as_ptr().add(offset) as *mut u32 }
    }
}

impl RegisterAccess for Mmio {
    #[inline]
    fn read32(&self, offset: usize) -> u32 {
        // SAFETY: `ptr` is in bounds and 4-byte aligned; the mapping lives as long as
        // `self`; registers are read volatile.
        unsafe { self.ptr(offset).read_volatile() }
    }
    #[inline]
    fn write32(&self, offset: usize, value: u32) {
        // SAFETY: as in `read32`.
        unsafe { self.ptr(offset).write_volatile(value) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{Backing, SharedMemory};

    #[test]
    fn named_registers_and_offsets_agree_and_the_mapping_outlives_the_owner() {
        let mem = SharedMemory::with_backing("bar", 0x2000, Backing::Shared).unwrap();
        let regs = Mmio::new(Mapping::new(mem.fd(), 0, 0x2000, false).unwrap()).unwrap();
        regs.write32(offset::CSTS, 0x1);
        assert!(regs.csts().rdy());
        regs.set_cc(Cc(0).with_en(true));
        assert_eq!(regs.read32(offset::CC), 1);
        assert!(regs.cc().en());
        let copy = regs.clone();
        drop(regs);
        drop(mem);
        // The copy still reaches the (still mapped) registers.
        assert_eq!(copy.read32(offset::CC), 1);
        let small = SharedMemory::with_backing("bar", 0x1000, Backing::Shared).unwrap();
        let map = Mapping::new(small.fd(), 0, 0x1000, false).unwrap();
        assert_eq!(Mmio::new(map).unwrap_err(), 0x1000);
    }
}
