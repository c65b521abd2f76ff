//! The core engine alone: submit + complete of 4 KiB reads through a [`QueuePair`] against a
//! fake device that completes every command the moment its doorbell is written (same
//! thread, no simulator, no system call). What is measured is the driver's own per-I/O work:
//! CID allocation, PRP setup, the SQE write, the doorbell, the CQE read, the CID lookup and
//! the completion callback.
//!
//! `cargo xtask bench -- engine` (or `cargo bench -p nvme-core`). Criterion reports the time
//! per I/O; compare runs side by side on the same machine.

use std::cell::Cell;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use nvme_core::regs::CompletionEntry;
use nvme_core::{Command, DmaRegion, QueueConfig, QueuePair, RegisterAccess, Slot};

const PAGE: usize = 4096;
const ENTRIES: u32 = 256;

/// Zeroed, page-aligned memory that lives until the process exits, as a DMA region with a
/// made-up IOVA.
fn memory(len: usize, iova: u64) -> DmaRegion {
    let layout = std::alloc::Layout::from_size_align(len, PAGE).unwrap();
    // SAFETY: a non-zero size layout.
    let p = unsafe { std::alloc::alloc_zeroed(layout) };
    assert!(!p.is_null());
    // SAFETY: never freed and used only through this region: valid for the whole process.
    unsafe { DmaRegion::new(p, iova, len) }
}

/// A device that completes every new command when the SQ tail doorbell is written.
struct FakeDevice {
    sq: DmaRegion,
    cq: DmaRegion,
    sq_head: Cell<u32>,
    cq_tail: Cell<u32>,
    phase: Cell<bool>,
}

impl RegisterAccess for FakeDevice {
    fn read32(&self, _offset: usize) -> u32 {
        0
    }
    fn write32(&self, offset: usize, value: u32) {
        if offset != nvme_core::regs::registers::sq_tail_doorbell(1, 0) {
            return; // the CQ head doorbell: the ring never fills at these depths
        }
        while self.sq_head.get() != value {
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

fn engine(c: &mut Criterion) {
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
    let dev = FakeDevice {
        sq,
        cq,
        sq_head: Cell::new(0),
        cq_tail: Cell::new(0),
        phase: Cell::new(true),
    };
    let slots: Vec<Slot<u64>> = (0..QueueConfig::slots(ENTRIES))
        .map(|_| Slot::EMPTY)
        .collect();
    let mut qp = QueuePair::new(cfg, &dev, slots).unwrap();
    let read = Command::read(1, 0, 1);

    let mut group = c.benchmark_group("engine_read_4k");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(3));
    for batch in [1u64, 32] {
        group.bench_function(format!("batch{batch}"), |b| {
            b.iter_custom(|iters| {
                let mut done = 0u64;
                let start = std::time::Instant::now();
                let mut lba = 0u64;
                while done < iters {
                    let n = batch.min(iters - done);
                    for i in 0..n {
                        let buf = data.sub(i as usize * PAGE, PAGE).unwrap();
                        qp.submit_io(read, lba, 512, buf, i).unwrap();
                        lba = (lba + 8) % (1 << 20);
                    }
                    let mut got = 0;
                    while got < n {
                        got += qp.poll(64, |t, c| {
                            std::hint::black_box((t, c));
                        }) as u64;
                    }
                    done += n;
                }
                start.elapsed()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, engine);
criterion_main!(benches);
