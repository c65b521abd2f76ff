//! What the engine benchmark (`benches/engine.rs`) and the instruction counter
//! (`examples/engine_instructions.rs`) share: DMA memory from the heap and a same-thread fake
//! device that completes every command the moment its doorbell is written.

use std::cell::Cell;

use nvme_core::regs::CompletionEntry;
use nvme_core::{DmaRegion, PciRings, QueueConfig, QueuePair, RegisterAccess, Slot};

/// Memory page size of the fake controller.
pub const PAGE: usize = 4096;
/// Ring entries of the measured queue pair.
pub const ENTRIES: u32 = 256;

/// Zeroed, page-aligned memory that lives until the process exits, as a DMA region with a
/// made-up IOVA.
pub fn memory(len: usize, iova: u64) -> DmaRegion {
    let layout = std::alloc::Layout::from_size_align(len, PAGE).unwrap();
    // SAFETY: a non-zero size layout.
    let p = unsafe { std::alloc::alloc_zeroed(layout) };
    assert!(!p.is_null());
    // SAFETY: never freed and used only through this region: valid for the whole process.
    unsafe { DmaRegion::new(p, iova, len) }
}

/// A device that completes every new command when the SQ tail doorbell is written.
pub struct FakeDevice {
    sq: DmaRegion,
    cq: DmaRegion,
    sq_head: Cell<u32>,
    cq_tail: Cell<u32>,
    phase: Cell<bool>,
}

impl FakeDevice {
    /// The device's side of a doorbell write: for the SQ tail doorbell, fetch each command
    /// up to the new tail and post its completion (the CQ head doorbell needs nothing: the
    /// ring never fills at these depths). Never inlined, so that the instruction counter can
    /// leave it out; the driver's part of a doorbell write is the call, as it would be the
    /// store to the register.
    #[inline(never)]
    pub fn fake_device_work(&self, offset: usize, tail: u32) {
        if offset != nvme_core::regs::registers::sq_tail_doorbell(1, 0) {
            return;
        }
        while self.sq_head.get() != tail {
            let e = self.sq.read_sqe(self.sq_head.get()).unwrap();
            self.sq_head.set((self.sq_head.get() + 1) % ENTRIES);
            let c = CompletionEntry {
                dw0: 0,
                dw1: 0,
                sq_head: self.sq_head.get() as u16,
                sq_id: 1,
                cid: e.cid,
                status: self.phase.get() as u16,
            };
            self.cq.post_cqe(self.cq_tail.get(), &c);
            let t = self.cq_tail.get() + 1;
            if t == ENTRIES {
                self.cq_tail.set(0);
                self.phase.set(!self.phase.get());
            } else {
                self.cq_tail.set(t);
            }
        }
    }
}

impl RegisterAccess for FakeDevice {
    fn read32(&self, _offset: usize) -> u32 {
        0
    }
    fn write32(&self, offset: usize, value: u32) {
        self.fake_device_work(offset, value);
    }
}

/// The measured queue pair.
pub type Qp<'a> = QueuePair<PciRings<&'a FakeDevice>, u64, Vec<Slot<u64>>>;

/// A queue pair 1 of [`ENTRIES`] entries (MDTS 128 KiB) over fresh memory, its fake device
/// (leaked: it lives as long as the process), and 32 pages of data buffers.
pub fn rig() -> (Qp<'static>, DmaRegion) {
    let max_transfer = 128 << 10;
    let sq = memory(ENTRIES as usize * 64, 0x10_0000);
    let cq = memory(ENTRIES as usize * 16, 0x20_0000);
    let prp = memory(
        QueueConfig::prp_len(ENTRIES, PAGE, max_transfer).max(PAGE),
        0x30_0000,
    );
    let data = memory(32 * PAGE, 0x4000_0000);
    let cfg = QueueConfig {
        qid: 1,
        entries: ENTRIES,
        dstrd: 0,
        page_size: PAGE,
        max_transfer,
        sq,
        cq,
        prp,
    };
    let dev: &'static FakeDevice = Box::leak(Box::new(FakeDevice {
        sq,
        cq,
        sq_head: Cell::new(0),
        cq_tail: Cell::new(0),
        phase: Cell::new(true),
    }));
    let slots: Vec<Slot<u64>> = (0..QueueConfig::slots(ENTRIES))
        .map(|_| Slot::EMPTY)
        .collect();
    (QueuePair::new(cfg, dev, slots).unwrap(), data)
}
