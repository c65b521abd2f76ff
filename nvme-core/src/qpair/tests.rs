use super::*;
use core::cell::{Cell, RefCell};
use nvme_regs::status::MediaErrorStatus;
use nvme_regs::SubmissionEntry;
use std::vec;
use std::vec::Vec;

const PS: usize = 4096;

/// Page-aligned test memory with a fake IOVA (leaked: it must outlive everything).
struct Mem(DmaRegion);

impl Mem {
    fn new(pages: usize, iova: u64) -> Mem {
        Mem(crate::dma::test_memory(pages, iova))
    }
    fn region(&self) -> DmaRegion {
        self.0
    }
    fn u64_at(&self, off: usize) -> u64 {
        self.0.read_obj::<u64>(off).expect("inside the test memory")
    }
}

/// Records doorbell writes; the test plays the controller by hand.
#[derive(Default)]
struct Doorbells {
    writes: RefCell<Vec<(usize, u32)>>,
}
impl RegisterAccess for &'static Doorbells {
    fn read32(&self, _: usize) -> u32 {
        0
    }
    fn write32(&self, offset: usize, value: u32) {
        self.writes.borrow_mut().push((offset, value));
    }
}

/// A hand-driven controller over the rings' memory.
struct Device {
    sq: DmaRegion,
    cq: DmaRegion,
    entries: u32,
    sq_head: Cell<u32>,
    cq_tail: Cell<u32>,
    phase: Cell<bool>,
}

impl Device {
    fn new(sq: &Mem, cq: &Mem, entries: u32) -> Device {
        Device {
            sq: sq.region(),
            cq: cq.region(),
            entries,
            sq_head: Cell::new(0),
            cq_tail: Cell::new(0),
            phase: Cell::new(true),
        }
    }
    /// Consumes submission entries up to `tail`.
    fn fetch(&self, tail: u32) -> Vec<SubmissionEntry> {
        let mut v = Vec::new();
        while self.sq_head.get() != tail {
            let at = self.sq_head.get() as usize * 64;
            v.push(
                self.sq
                    .read_obj::<SubmissionEntry>(at)
                    .expect("inside the SQ"),
            );
            self.sq_head.set((self.sq_head.get() + 1) % self.entries);
        }
        v
    }
    fn post(&self, cid: u16, status: Status, dw0: u32) {
        let e = CompletionEntry {
            dw0,
            dw1: 0,
            sq_head: self.sq_head.get() as u16,
            sq_id: 1,
            cid,
            status: status.to_completion_word(self.phase.get()),
        };
        assert!(self.cq.write_obj(self.cq_tail.get() as usize * 16, &e));
        let t = self.cq_tail.get() + 1;
        if t == self.entries {
            self.cq_tail.set(0);
            self.phase.set(!self.phase.get());
        } else {
            self.cq_tail.set(t);
        }
    }
}

struct Rig {
    sq: Mem,
    cq: Mem,
    prp: Mem,
    data: Mem,
    bells: &'static Doorbells,
}

type TestQp = QueuePair<PciRings<&'static Doorbells>, u64, Vec<Slot<u64>>>;

impl Rig {
    fn new(entries: u32, max_transfer: usize, data_pages: usize) -> Rig {
        let prp_pages = QueueConfig::prp_len(entries, PS, max_transfer) / PS;
        Rig {
            sq: Mem::new((entries as usize * 64).div_ceil(PS), 0x10_0000),
            cq: Mem::new((entries as usize * 16).div_ceil(PS), 0x20_0000),
            prp: Mem::new(prp_pages.max(1), 0x30_0000),
            data: Mem::new(data_pages, 0x4000_0000),
            bells: std::boxed::Box::leak(std::boxed::Box::default()),
        }
    }
    fn qp(&self, entries: u32, max_transfer: usize) -> (TestQp, Device) {
        let cfg = QueueConfig {
            qid: 1,
            entries,
            dstrd: 0,
            page_size: PS,
            max_transfer,
            sq: self.sq.region(),
            cq: self.cq.region(),
            prp: self.prp.region(),
        };
        let slots = (0..QueueConfig::slots(entries))
            .map(|_| Slot::EMPTY)
            .collect();
        let qp = QueuePair::new(cfg, self.bells, slots).unwrap();
        let dev = Device::new(&self.sq, &self.cq, entries);
        (qp, dev)
    }
    fn last_sq_tail(&self) -> u32 {
        self.bells
            .writes
            .borrow()
            .iter()
            .rev()
            .find(|(o, _)| *o == 0x1008)
            .unwrap()
            .1
    }
}

fn drain(qp: &mut TestQp) -> Vec<(u64, Completion)> {
    let mut out = Vec::new();
    qp.poll(usize::MAX, |t, c| out.push((t, c)));
    out
}

#[test]
fn batch_of_submissions_rings_once_and_completes_out_of_order() {
    let rig = Rig::new(64, 128 << 10, 8);
    let data = rig.data.region();
    let (mut qp, dev) = rig.qp(64, 128 << 10);
    for i in 0..5u64 {
        qp.submit_io(
            Command::read(1, i * 8, 8),
            i * 8,
            512,
            data.sub(i as usize * 4096, 4096).unwrap(),
            100 + i,
        )
        .unwrap();
    }
    assert!(drain(&mut qp).is_empty());
    let sq_bells: Vec<_> = rig
        .bells
        .writes
        .borrow()
        .iter()
        .filter(|(o, _)| *o == 0x1008)
        .copied()
        .collect();
    assert_eq!(
        sq_bells,
        [(0x1008, 5)],
        "five submissions, one doorbell write"
    );
    let cmds = dev.fetch(5);
    assert_eq!(cmds.len(), 5);
    for (i, c) in cmds.iter().enumerate() {
        assert_eq!(c.slba(), i as u64 * 8);
        assert_eq!(c.nlb(), 8);
        assert_eq!(c.prp1, 0x4000_0000 + i as u64 * 4096);
        assert_eq!(c.prp2, 0);
    }
    let mut cids: Vec<u16> = cmds.iter().map(|c| c.cid).collect();
    cids.sort_unstable();
    cids.dedup();
    assert_eq!(cids.len(), 5, "distinct command identifiers");
    for c in cmds.iter().rev() {
        dev.post(c.cid, Status::SUCCESS, c.cid as u32);
    }
    let done = drain(&mut qp);
    let tokens: Vec<u64> = done.iter().map(|(t, _)| *t).collect();
    assert_eq!(tokens, [104, 103, 102, 101, 100]);
    assert!(done.iter().all(|(_, c)| c.status.is_success()));
    assert_eq!(qp.outstanding(), 0);
    assert_eq!(qp.free_slots(), qp.capacity());
    let cq_bells: Vec<_> = rig
        .bells
        .writes
        .borrow()
        .iter()
        .filter(|(o, _)| *o == 0x100c)
        .copied()
        .collect();
    assert!(
        cq_bells.is_empty(),
        "the head is reported lazily: 5 of 63 entries consumed, nothing in flight"
    );
}

/// A controller that runs every command the moment the SQ tail doorbell announces it and
/// will not post into a completion queue it sees as full (it records the attempt instead):
/// the head it sees is the last head doorbell, or with shadow doorbells the shadow head.
struct EagerDevice {
    dev: Device,
    entries: u32,
    /// Shadow doorbell and EventIdx buffers, when the queue pair uses them.
    shadow: Option<(DmaRegion, DmaRegion)>,
    mmio_cq_head: Cell<u32>,
    cq_head_writes: Cell<u32>,
    overflow: Cell<bool>,
}

impl EagerDevice {
    fn cq_head(&self) -> u32 {
        match &self.shadow {
            // Queue 1's CQ head shadow is at byte 12 (stride 0).
            Some((db, _)) => db.read_u32(12).unwrap(),
            None => self.mmio_cq_head.get(),
        }
    }
}

impl RegisterAccess for &'static EagerDevice {
    fn read32(&self, _: usize) -> u32 {
        0
    }
    fn write32(&self, offset: usize, value: u32) {
        match offset {
            0x100c => {
                self.mmio_cq_head.set(value);
                self.cq_head_writes.set(self.cq_head_writes.get() + 1);
            }
            0x1008 => {
                if let Some((_, ei)) = &self.shadow {
                    // Ask for the next SQ tail move; never for CQ head moves (the shadow
                    // head is read instead).
                    ei.write_u32(8, value);
                    ei.write_u32(12, 0x8000_0000);
                }
                for c in self.dev.fetch(value) {
                    if (self.dev.cq_tail.get() + 1) % self.entries == self.cq_head() {
                        self.overflow.set(true);
                        continue;
                    }
                    self.dev.post(c.cid, Status::SUCCESS, 0);
                }
            }
            _ => {}
        }
    }
}

#[test]
fn completion_head_is_reported_lazily_but_before_the_queue_could_fill() {
    for shadow in [false, true] {
        for (entries, depth) in [(2u32, 1u32), (4, 1), (4, 3), (16, 1), (16, 8), (16, 15)] {
            let rig = Rig::new(entries, 4096, 16);
            let shadow_bufs = shadow.then(|| (Mem::new(1, 0x50_0000), Mem::new(1, 0x60_0000)));
            let dev: &'static EagerDevice =
                std::boxed::Box::leak(std::boxed::Box::new(EagerDevice {
                    dev: Device::new(&rig.sq, &rig.cq, entries),
                    entries,
                    shadow: shadow_bufs.as_ref().map(|(d, e)| (d.region(), e.region())),
                    mmio_cq_head: Cell::new(0),
                    cq_head_writes: Cell::new(0),
                    overflow: Cell::new(false),
                }));
            let cfg = QueueConfig {
                qid: 1,
                entries,
                dstrd: 0,
                page_size: PS,
                max_transfer: 4096,
                sq: rig.sq.region(),
                cq: rig.cq.region(),
                prp: rig.prp.region(),
            };
            let slots: Vec<Slot<u64>> = (0..QueueConfig::slots(entries))
                .map(|_| Slot::EMPTY)
                .collect();
            let mut qp = QueuePair::new(cfg, dev, slots).unwrap();
            if let Some((db, ei)) = &shadow_bufs {
                assert!(qp.set_shadow_doorbells(&db.region(), &ei.region(), 0));
            }
            let what = std::format!("{entries} entries, depth {depth}, shadow {shadow}");
            let total = entries as u64 * 10;
            let (mut submitted, mut done) = (0u64, 0u64);
            let mut rounds = 0;
            while done < total {
                rounds += 1;
                assert!(rounds < total * 4, "{what}: completions stopped coming");
                while submitted - done < depth as u64 && submitted < total {
                    let buf = rig.data.region().sub((submitted % 16) as usize * PS, PS);
                    qp.submit_io(
                        Command::read(1, 0, 1),
                        submitted,
                        512,
                        buf.unwrap(),
                        submitted,
                    )
                    .unwrap();
                    submitted += 1;
                }
                // The controller completes at once what the doorbell announces.
                done += qp.poll(usize::MAX, |_, c| assert!(c.status.is_success())) as u64;
                assert!(
                    !dev.overflow.get(),
                    "{what}: the controller found the completion queue full (head reported too late)"
                );
            }
            // Without shadow doorbells every head report is an MMIO write (with them, the
            // controller read the shadow head above, so a missing report would have shown).
            if !shadow {
                let heads = dev.cq_head_writes.get() as u64;
                assert_eq!(heads, qp.stats().cq_doorbells, "{what}");
                assert!(heads >= 1, "{what}: the head was reported");
                if depth == 1 && entries >= 16 {
                    assert!(
                        heads * 4 <= total,
                        "{what}: lazily ({heads} head writes for {total} completions)"
                    );
                }
            }
        }
    }
}

#[test]
fn queue_full_back_pressure_and_recovery() {
    let rig = Rig::new(4, 4096, 1);
    let data = rig.data.region();
    let (mut qp, dev) = rig.qp(4, 4096);
    assert_eq!(qp.capacity(), 3);
    for t in 0..3 {
        qp.submit_io(
            Command::write(1, 0, 1),
            0,
            512,
            data.sub(0, 512).unwrap(),
            t,
        )
        .unwrap();
    }
    assert_eq!(
        qp.submit_io(
            Command::write(1, 0, 1),
            0,
            512,
            data.sub(0, 512).unwrap(),
            9
        ),
        Err(SubmitError::QueueFull)
    );
    assert_eq!(
        qp.submit(Command::flush(1), None, 9),
        Err(SubmitError::QueueFull)
    );
    qp.ring();
    let cmds = dev.fetch(rig.last_sq_tail());
    dev.post(cmds[1].cid, Status::SUCCESS, 0);
    assert_eq!(drain(&mut qp).len(), 1);
    qp.submit(Command::flush(1), None, 7).unwrap();
    assert_eq!(qp.outstanding(), 3);
}

#[test]
fn identifiers_carry_generations_and_stale_completions_are_dropped() {
    let rig = Rig::new(4, 4096, 1);
    let (mut qp, dev) = rig.qp(4, 4096);
    qp.submit(Command::flush(1), None, 1).unwrap();
    qp.ring();
    let first = dev.fetch(rig.last_sq_tail())[0];
    dev.post(first.cid, Status::SUCCESS, 0);
    assert_eq!(drain(&mut qp).len(), 1);
    // The same slot is reused (LIFO free list) with a new generation.
    qp.submit(Command::flush(1), None, 2).unwrap();
    qp.ring();
    let second = dev.fetch(rig.last_sq_tail())[0];
    assert_ne!(first.cid, second.cid);
    assert_eq!(first.cid & 3, second.cid & 3, "same slot index");
    // A duplicate of the old completion must not complete the new command.
    dev.post(first.cid, Status::SUCCESS, 0);
    assert!(drain(&mut qp).is_empty());
    assert_eq!(qp.stats().stale_completions, 1);
    // A CID outside the slot table is dropped too.
    dev.post(0x0003, Status::SUCCESS, 0);
    assert!(drain(&mut qp).is_empty());
    assert_eq!(qp.stats().stale_completions, 2);
    dev.post(second.cid, Status::SUCCESS, 0);
    assert_eq!(drain(&mut qp)[0].0, 2);
    // Cycle a slot through every generation: CIDs never repeat back to back, never 0xffff.
    let mut last = second.cid;
    for t in 0..20_000u64 {
        qp.submit(Command::flush(1), None, t).unwrap();
        qp.ring();
        let c = dev.fetch(rig.last_sq_tail())[0];
        assert_ne!(c.cid, 0xffff);
        assert_ne!(c.cid, last);
        last = c.cid;
        dev.post(c.cid, Status::SUCCESS, 0);
        assert_eq!(
            drain(&mut qp),
            [(
                t,
                Completion {
                    dw0: 0,
                    dw1: 0,
                    status: Status::SUCCESS,
                    opcode: nvme_regs::opcode::NvmOpcode::Flush as u8,
                }
            )]
        );
    }
}

#[test]
fn large_transfer_is_split_at_max_transfer_with_prp_lists() {
    // 8 KiB MDTS, 64 KiB + 512 B read at a 512-byte buffer offset: 9 parts.
    let rig = Rig::new(32, 8192, 20);
    let data = rig.data.region();
    let (mut qp, dev) = rig.qp(32, 8192);
    let buf = data.sub(512, 65536 + 512).unwrap();
    qp.submit_io(Command::read(3, 0, 1), 1000, 512, buf, 77)
        .unwrap();
    qp.ring();
    let cmds = dev.fetch(rig.last_sq_tail());
    assert_eq!(cmds.len(), 9);
    for (i, c) in cmds.iter().enumerate() {
        assert_eq!(c.nsid, 3);
        assert_eq!(c.slba(), 1000 + i as u64 * 16);
        let blocks = if i == 8 { 1 } else { 16 };
        assert_eq!(c.nlb(), blocks);
        let iova = 0x4000_0000 + 512 + i as u64 * 8192;
        assert_eq!(c.prp1, iova);
        if i < 8 {
            // 8 KiB at offset 512 spans 3 pages: PRP2 is a list of two entries.
            let list_iova = c.prp2;
            assert!((0x30_0000..0x30_0000 + rig.prp.0.len() as u64).contains(&list_iova));
            let off = (list_iova - 0x30_0000) as usize;
            let list: Vec<u64> = (0..2).map(|k| rig.prp.u64_at(off + k * 8)).collect();
            let page0 = iova & !4095;
            assert_eq!(list, [page0 + 4096, page0 + 8192]);
        } else {
            assert_eq!(c.prp2, 0);
        }
    }
    // Completions in any order; the request completes once, after the last part.
    for c in &cmds[..8] {
        dev.post(c.cid, Status::SUCCESS, 0);
    }
    assert!(drain(&mut qp).is_empty());
    assert_eq!(qp.outstanding(), 1);
    dev.post(cmds[8].cid, Status::SUCCESS, 0);
    assert_eq!(drain(&mut qp).len(), 1);
    assert_eq!(qp.free_slots(), qp.capacity());
}

#[test]
fn split_request_reports_the_failing_part() {
    let rig = Rig::new(16, 4096, 4);
    let data = rig.data.region();
    let (mut qp, dev) = rig.qp(16, 4096);
    qp.submit_io(Command::compare(1, 0, 1), 0, 4096, data, 5)
        .unwrap();
    qp.ring();
    let cmds = dev.fetch(rig.last_sq_tail());
    assert_eq!(cmds.len(), 4);
    let miscompare = Status::media(MediaErrorStatus::CompareFailure);
    dev.post(cmds[0].cid, Status::SUCCESS, 0);
    dev.post(cmds[2].cid, miscompare, 0);
    dev.post(cmds[1].cid, Status::SUCCESS, 0);
    dev.post(cmds[3].cid, Status::SUCCESS, 0);
    let done = drain(&mut qp);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].1.status, miscompare);
    assert_eq!(done[0].1.result(), Err(miscompare));
}

#[test]
fn a_split_request_whose_later_part_fails_is_not_submitted_at_all() {
    // A 2-byte "block" and a 4094-byte transfer limit put the second part at an address
    // that is not dword aligned: its PRPs cannot be built after the first part was queued.
    let rig = Rig::new(16, 4096, 4);
    let data = rig.data.region();
    let (mut qp, dev) = rig.qp(16, 4096);
    qp.submit_io(Command::read(1, 0, 1), 0, 512, data.sub(0, 512).unwrap(), 1)
        .unwrap();
    qp.lower_max_transfer(4094);
    let free = qp.free_slots();
    assert_eq!(
        qp.submit_io(Command::write(1, 0, 1), 8, 2, data.sub(0, 8188).unwrap(), 2),
        Err(SubmitError::Prp(PrpError::Misaligned(0x4000_0000 + 4094)))
    );
    assert_eq!(
        qp.free_slots(),
        free,
        "the first part's slot was given back"
    );
    assert_eq!(qp.outstanding(), 1);
    qp.ring();
    let cmds = dev.fetch(rig.last_sq_tail());
    assert_eq!(cmds.len(), 1, "only the earlier request reached the ring");
    assert_eq!(cmds[0].opcode, 0x02);
    // The queue goes on normally: the earlier request completes, a new split one works.
    dev.post(cmds[0].cid, Status::SUCCESS, 0);
    assert_eq!(drain(&mut qp).len(), 1);
    qp.submit_io(
        Command::read(1, 0, 1),
        0,
        512,
        data.sub(0, 8192).unwrap(),
        3,
    )
    .unwrap();
    qp.ring();
    let cmds = dev.fetch(rig.last_sq_tail());
    assert_eq!(cmds.len(), 3, "8 KiB in parts of 7 blocks (3584 bytes)");
    for c in &cmds {
        dev.post(c.cid, Status::SUCCESS, 0);
    }
    let done = drain(&mut qp);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].0, 3);
    assert_eq!(qp.free_slots(), qp.capacity());
}

#[test]
fn the_largest_queues_keep_identifiers_apart() {
    // 65536 entries: the slot index must not eat the generation's bits (it did for queues
    // of 32770 entries or more, and every completion then matched slot 0).
    let entries = 65536;
    let rig = Rig::new(entries, 4096, 1);
    let (mut qp, dev) = rig.qp(entries, 4096);
    assert_eq!(qp.capacity(), MAX_COMMANDS);
    assert_eq!(QueueConfig::slots(entries), MAX_COMMANDS);
    let data = rig.data.region().sub(0, 512).unwrap();
    let mut submitted = 0u64;
    while qp.submit_io(Command::read(1, 0, 1), 0, 512, data, submitted) == Ok(()) {
        submitted += 1;
    }
    assert_eq!(
        submitted as usize, MAX_COMMANDS,
        "full at the capacity, not before"
    );
    qp.ring();
    let cmds = dev.fetch(rig.last_sq_tail());
    assert_eq!(cmds.len(), MAX_COMMANDS);
    let mut cids: Vec<u16> = cmds.iter().map(|c| c.cid).collect();
    cids.sort_unstable();
    cids.dedup();
    assert_eq!(
        cids.len(),
        MAX_COMMANDS,
        "every command in flight has its own CID"
    );
    // Complete in reverse: each completion finishes exactly its own request, once.
    let mut done = vec![false; MAX_COMMANDS];
    for c in cmds.iter().rev().take(100) {
        dev.post(c.cid, Status::SUCCESS, 0);
    }
    for (token, c) in drain(&mut qp) {
        assert!(c.status.is_success());
        assert!(!std::mem::replace(&mut done[token as usize], true));
    }
    assert_eq!(done.iter().filter(|d| **d).count(), 100);
    assert!(
        done[MAX_COMMANDS - 100..].iter().all(|d| *d),
        "the completed requests are the ones whose completions came"
    );
    assert_eq!(qp.outstanding(), MAX_COMMANDS - 100);
    // A stale completion (an old generation of a reused slot) is dropped.
    let c = cmds[MAX_COMMANDS - 1].cid;
    dev.post(c, Status::SUCCESS, 0);
    assert!(drain(&mut qp).is_empty());
    assert_eq!(qp.stats().stale_completions, 1);
}

#[test]
fn refuses_what_cannot_be_submitted() {
    let rig = Rig::new(4, 4096, 8);
    let data = rig.data.region();
    let (mut qp, _dev) = rig.qp(4, 4096);
    assert_eq!(
        qp.submit_io(Command::read(1, 0, 1), 0, 512, data, 0),
        Err(SubmitError::TooLarge {
            commands: 8,
            capacity: 3
        })
    );
    assert_eq!(
        qp.submit_io(Command::read(1, 0, 1), 0, 512, data.sub(2, 512).unwrap(), 0),
        Err(SubmitError::Prp(PrpError::Misaligned(0x4000_0002)))
    );
    assert_eq!(
        qp.submit_io(Command::read(1, 0, 1), 0, 512, data.sub(0, 700).unwrap(), 0),
        Err(SubmitError::BadLength {
            len: 700,
            block_size: 512
        })
    );
    assert_eq!(
        qp.submit(Command::identify(1, 0, 0), data.sub(0, 8192), 0),
        Err(SubmitError::ExceedsMaxTransfer {
            len: 8192,
            max: 4096
        })
    );
    assert_eq!(qp.outstanding(), 0);
    assert_eq!(qp.free_slots(), 3);
    assert!(rig.bells.writes.borrow().is_empty());
}

#[test]
fn abort_all_returns_every_context() {
    let rig = Rig::new(8, 4096, 8);
    let data = rig.data.region();
    let (mut qp, _dev) = rig.qp(8, 4096);
    qp.submit_io(
        Command::read(1, 0, 1),
        0,
        512,
        data.sub(0, 8192).unwrap(),
        1,
    )
    .unwrap();
    qp.submit(Command::flush(1), None, 2).unwrap();
    let mut got = Vec::new();
    let n = qp.abort_all(TestQp::ABORTED, |t, c| got.push((t, c.status)));
    assert_eq!(n, 2);
    got.sort_by_key(|g| g.0);
    assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), [1, 2]);
    assert!(got[0].1.is_generic(GenericStatus::AbortedSqDeletion));
    assert_eq!(qp.free_slots(), qp.capacity());
    assert_eq!(qp.outstanding(), 0);
}

#[test]
fn a_poll_stops_reading_when_nothing_is_left_in_flight() {
    let rig = Rig::new(8, 4096, 1);
    let (mut qp, dev) = rig.qp(8, 4096);
    qp.submit(Command::flush(1), None, 1).unwrap();
    qp.ring();
    let cmd = dev.fetch(rig.last_sq_tail())[0];
    dev.post(cmd.cid, Status::SUCCESS, 0);
    // An entry that matches no command, posted behind the real one.
    dev.post(0x3ffe, Status::SUCCESS, 0);
    assert_eq!(drain(&mut qp).len(), 1);
    assert_eq!(
        qp.stats().stale_completions,
        0,
        "nothing was in flight after the first entry: the second is not read"
    );
    assert!(drain(&mut qp).is_empty());
    assert_eq!(
        qp.stats().stale_completions,
        1,
        "the next poll reads it (one entry at most)"
    );
    // The queue goes on as before.
    qp.submit(Command::flush(1), None, 2).unwrap();
    qp.ring();
    let cmd = dev.fetch(rig.last_sq_tail())[0];
    dev.post(cmd.cid, Status::SUCCESS, 0);
    assert_eq!(drain(&mut qp)[0].0, 2);
}

#[test]
fn stale_completions_are_reported_at_once_when_the_queue_could_fill() {
    // A ring of 4 holds 3 entries. One command in flight; entries that match no command
    // fill the completion queue without finishing anything.
    let rig = Rig::new(4, 4096, 1);
    let (mut qp, dev) = rig.qp(4, 4096);
    let data = rig.data.region().sub(0, 512).unwrap();
    qp.submit_io(Command::read(1, 0, 1), 0, 512, data, 1)
        .unwrap();
    assert!(drain(&mut qp).is_empty());
    let cmd = dev.fetch(rig.last_sq_tail())[0];
    let head_writes = || {
        rig.bells
            .writes
            .borrow()
            .iter()
            .filter(|(o, _)| *o == 0x100c)
            .count()
    };
    dev.post(0x3ffe, Status::SUCCESS, 0);
    dev.post(0x3ffd, Status::SUCCESS, 0);
    assert!(drain(&mut qp).is_empty());
    assert_eq!(
        head_writes(),
        0,
        "2 unreported + 1 in flight: the controller still has room"
    );
    dev.post(0x3ffc, Status::SUCCESS, 0);
    assert!(drain(&mut qp).is_empty());
    assert_eq!(qp.stats().stale_completions, 3);
    assert_eq!(
        head_writes(),
        1,
        "3 unreported + 1 in flight would leave the controller no room for the real one"
    );
    // The controller has room for the real completion, and it arrives.
    dev.post(cmd.cid, Status::SUCCESS, 0);
    assert_eq!(drain(&mut qp)[0].0, 1);
}

#[test]
fn a_watchdog_can_name_the_outstanding_command_of_a_request() {
    // 8 KiB MDTS: a 12 KiB read is two commands.
    let rig = Rig::new(16, 8192, 4);
    let data = rig.data.region();
    let (mut qp, dev) = rig.qp(16, 8192);
    assert_eq!(qp.request_cid(0), None);
    let head = qp.next_slot().unwrap();
    qp.submit_io(
        Command::read(1, 0, 1),
        0,
        512,
        data.sub(0, 12288).unwrap(),
        5,
    )
    .unwrap();
    qp.ring();
    let cmds = dev.fetch(rig.last_sq_tail());
    assert_eq!(cmds.len(), 2);
    assert_eq!(qp.request_cid(head), Some(cmds[0].cid));
    assert_eq!(qp.abortable_cid(head), Some(cmds[0].cid));
    // Only the head starts a request; out of range is nothing.
    let other = (0..qp.capacity()).find(|&i| i != head && qp.request_cid(i).is_some());
    assert_eq!(other, None);
    assert_eq!(qp.request_cid(usize::MAX), None);
    // The first part completes: the request is still the head's, and the command still
    // out is the second part.
    dev.post(cmds[0].cid, Status::SUCCESS, 0);
    assert!(drain(&mut qp).is_empty());
    assert_eq!(qp.request_cid(head), Some(cmds[0].cid));
    assert_eq!(qp.abortable_cid(head), Some(cmds[1].cid));
    dev.post(cmds[1].cid, Status::SUCCESS, 0);
    assert_eq!(drain(&mut qp).len(), 1);
    assert_eq!(qp.request_cid(head), None);
    assert_eq!(qp.abortable_cid(head), None);
    // The next request in the slot has another identifier.
    let again = qp.next_slot().unwrap();
    qp.submit(Command::flush(1), None, 6).unwrap();
    let cid = qp.request_cid(again).unwrap();
    assert_ne!(Some(cid), Some(cmds[0].cid).filter(|_| again == head));
}

#[test]
fn sgl_mode_gives_each_command_one_data_block_descriptor() {
    use nvme_regs::sgl::{SglDescriptor, SglDescriptorType};
    // 8 KiB MDTS: a 20 KiB + 512 B read at a 512-byte offset is 3 parts, a 4 KiB one is one.
    let rig = Rig::new(32, 8192, 20);
    let data = rig.data.region();
    let (mut qp, dev) = rig.qp(32, 8192);
    assert_eq!(qp.data_pointer(), DataPointer::Prp);
    qp.set_data_pointer(DataPointer::Sgl);
    assert_eq!(qp.data_pointer(), DataPointer::Sgl);
    qp.submit_io(
        Command::read(1, 0, 1),
        50,
        512,
        data.sub(512, 20 * 1024 + 512).unwrap(),
        1,
    )
    .unwrap();
    qp.submit_io(
        Command::write(1, 0, 1),
        9,
        512,
        data.sub(4, 4096).unwrap(),
        2,
    )
    .unwrap();
    qp.ring();
    let cmds = dev.fetch(rig.last_sq_tail());
    assert_eq!(cmds.len(), 4);
    let want = [
        (0x4000_0000 + 512, 8192),
        (0x4000_0000 + 512 + 8192, 8192),
        (0x4000_0000 + 512 + 16384, 4608),
        (0x4000_0004, 4096),
    ];
    for (c, &(iova, len)) in cmds.iter().zip(&want) {
        assert_eq!(c.psdt(), nvme_regs::entry::PSDT_SGL, "PSDT 01b");
        let d = SglDescriptor::from_dptr(c.prp1, c.prp2);
        assert_eq!(d.kind(), Some(SglDescriptorType::DataBlock));
        assert_eq!((d.address, d.length), (iova, len));
        dev.post(c.cid, Status::SUCCESS, 0);
    }
    let mut done = drain(&mut qp);
    done.sort_by_key(|(t, _)| *t);
    // Each request's opcode comes back with it (the split read's from its head slot).
    let opcodes: Vec<(u64, u8)> = done.iter().map(|(t, c)| (*t, c.opcode)).collect();
    assert_eq!(opcodes, [(1, 0x02), (2, 0x01)]);
    // Back to PRPs: PSDT 00b, PRP1 the buffer's address.
    qp.set_data_pointer(DataPointer::Prp);
    qp.submit_io(Command::read(1, 0, 1), 0, 512, data.sub(0, 512).unwrap(), 3)
        .unwrap();
    qp.ring();
    let cmds = dev.fetch(rig.last_sq_tail());
    assert_eq!(cmds[0].psdt(), 0);
    assert_eq!((cmds[0].prp1, cmds[0].prp2), (0x4000_0000, 0));
    // A misaligned buffer is refused with the SGL's error, nothing submitted.
    qp.set_data_pointer(DataPointer::Sgl);
    assert_eq!(
        qp.submit(Command::read(1, 0, 1), data.sub(2, 512), 4),
        Err(SubmitError::Sgl(SglError::Misaligned(0x4000_0002)))
    );
}

#[test]
fn submit_blocks_takes_the_callers_count_or_the_general_path() {
    let rig = Rig::new(32, 8192, 8);
    let data = rig.data.region();
    let (mut qp, dev) = rig.qp(32, 8192);
    // One command of 8 blocks of 512 bytes.
    qp.submit_blocks(
        Command::read(1, 0, 1),
        100,
        8,
        9,
        data.sub(0, 4096).unwrap(),
        1,
    )
    .unwrap();
    // A count that disagrees with the length: the general path goes by the length.
    qp.submit_blocks(
        Command::read(1, 0, 1),
        200,
        7,
        9,
        data.sub(0, 4096).unwrap(),
        2,
    )
    .unwrap();
    // Larger than the maximum transfer: split (12 KiB at 8 KiB MDTS: two commands).
    qp.submit_blocks(
        Command::read(1, 0, 1),
        300,
        24,
        9,
        data.sub(0, 12288).unwrap(),
        3,
    )
    .unwrap();
    // Not a whole number of blocks.
    assert_eq!(
        qp.submit_blocks(
            Command::read(1, 0, 1),
            0,
            1,
            9,
            data.sub(0, 700).unwrap(),
            4
        ),
        Err(SubmitError::BadLength {
            len: 700,
            block_size: 512
        })
    );
    qp.ring();
    let cmds = dev.fetch(rig.last_sq_tail());
    let got: Vec<(u64, u32)> = cmds.iter().map(|c| (c.slba(), c.nlb())).collect();
    assert_eq!(got, [(100, 8), (200, 8), (300, 16), (316, 8)]);
    for c in &cmds {
        dev.post(c.cid, Status::SUCCESS, 0);
    }
    let mut tokens: Vec<u64> = drain(&mut qp).into_iter().map(|(t, _)| t).collect();
    tokens.sort_unstable();
    assert_eq!(tokens, [1, 2, 3]);
}

#[test]
fn report_cq_head_writes_the_head_at_once_and_only_when_it_moved() {
    let rig = Rig::new(64, 128 << 10, 8);
    let data = rig.data.region();
    let (mut qp, dev) = rig.qp(64, 128 << 10);
    let cq_head_writes = || {
        rig.bells
            .writes
            .borrow()
            .iter()
            .filter(|(o, _)| *o == 0x100c)
            .map(|(_, v)| *v)
            .collect::<Vec<_>>()
    };
    qp.report_cq_head();
    assert!(cq_head_writes().is_empty(), "nothing consumed yet");
    for i in 0..3u64 {
        let buf = data.sub(i as usize * 4096, 4096).unwrap();
        qp.submit_io(Command::read(1, i * 8, 8), i * 8, 512, buf, i)
            .unwrap();
    }
    qp.ring();
    for c in dev.fetch(3) {
        dev.post(c.cid, Status::SUCCESS, 0);
    }
    assert_eq!(drain(&mut qp).len(), 3);
    assert!(
        cq_head_writes().is_empty(),
        "the lazy rule keeps the head back on a 64-entry queue"
    );
    qp.report_cq_head();
    assert_eq!(cq_head_writes(), [3]);
    qp.report_cq_head();
    assert_eq!(cq_head_writes(), [3], "no second write for the same head");
    assert_eq!(qp.stats().cq_doorbells, 1);
}

/// A transport's own rings, the way a fabrics transport uses them: capsules queued in a
/// list, sent on `ring_sq`, completions from a list the test fills; `refuse_push` makes
/// a push fail while `free` still promises room.
#[derive(Default)]
struct ListRings {
    size: u32,
    queued: Vec<SubmissionEntry>,
    sent: Vec<SubmissionEntry>,
    completions: std::collections::VecDeque<CompletionEntry>,
    in_flight: u32,
    mask: Option<u16>,
    refuse_push: Option<usize>,
    resets: usize,
    /// Every SQ head the queue pair recorded.
    heads: Vec<u16>,
}

impl Rings for ListRings {
    fn size(&self) -> u32 {
        self.size
    }
    fn free(&self) -> u32 {
        self.size - 1 - self.in_flight - self.queued.len() as u32
    }
    fn push(&mut self, entry: &SubmissionEntry) -> bool {
        if self.refuse_push == Some(self.queued.len()) || self.free() == 0 {
            return false;
        }
        self.queued.push(*entry);
        true
    }
    fn unpush(&mut self, n: u32) {
        let keep = self.queued.len() - n as usize;
        self.queued.truncate(keep);
    }
    fn ring_sq(&mut self) -> bool {
        if self.queued.is_empty() {
            return false;
        }
        self.in_flight += self.queued.len() as u32;
        self.sent.append(&mut self.queued);
        true
    }
    fn pop(&mut self) -> Option<CompletionEntry> {
        let c = self.completions.pop_front()?;
        self.in_flight -= 1;
        Some(c)
    }
    fn update_sq_head(&mut self, head: u16) -> bool {
        self.heads.push(head);
        (head as u32) < self.size
    }
    fn reset(&mut self) {
        self.queued.clear();
        self.completions.clear();
        self.in_flight = 0;
        self.resets += 1;
    }
    fn cid_index_mask(&mut self, mask: u16) {
        self.mask = Some(mask);
    }
}

fn answer(rings: &mut ListRings, status: u16) {
    let sent = std::mem::take(&mut rings.sent);
    for e in sent {
        rings.completions.push_back(CompletionEntry {
            cid: e.cid,
            status: status << 1,
            ..Default::default()
        });
    }
}

#[test]
fn a_transports_own_rings_get_sgl_commands_split_and_completed_by_the_same_engine() {
    let rings = ListRings {
        size: 32,
        ..Default::default()
    };
    let slots: Vec<Slot<u64>> = (0..31).map(|_| Slot::EMPTY).collect();
    let mut qp = QueuePair::with_rings(rings, 3, PS, 8 * PS, slots).unwrap();
    assert_eq!(qp.rings().mask, Some(31), "the slot index bits of a CID");
    assert_eq!(qp.data_pointer(), DataPointer::Sgl);
    assert_eq!((qp.capacity(), qp.entries(), qp.qid()), (31, 32, 3));
    // 24 pages at IOVA 0x1234_0000: three commands of 8 pages, one SGL descriptor each.
    let mem = Mem::new(24, 0x1234_0000);
    let data = mem.region();
    qp.submit_io(Command::new(2, 1), 100, 512, data, 7).unwrap();
    assert_eq!(qp.rings().queued.len(), 3);
    assert_eq!(qp.poll(8, |_, _| panic!("nothing completed yet")), 0);
    let sent = qp.rings().sent.clone();
    assert_eq!(sent.len(), 3, "ring_sq sent the batch");
    for (i, e) in sent.iter().enumerate() {
        assert_eq!(e.psdt(), PSDT_SGL);
        assert_eq!(
            e.prp1,
            0x1234_0000 + (i * 8 * PS) as u64,
            "part {i}'s address"
        );
        assert_eq!(e.cdw10 as u64, 100 + i as u64 * 64, "part {i}'s LBA");
    }
    answer(qp.rings_mut(), 0);
    let mut done = Vec::new();
    assert_eq!(qp.poll(8, |t, c| done.push((t, c.status))), 1);
    assert_eq!(done, vec![(7, Status::SUCCESS)]);
    assert_eq!(qp.outstanding(), 0);

    // A push that fails although the rings promised room: nothing of the request stays.
    qp.rings_mut().refuse_push = Some(1);
    assert_eq!(
        qp.submit_io(Command::new(2, 1), 0, 512, data, 8),
        Err(SubmitError::QueueFull)
    );
    assert!(
        qp.rings().queued.is_empty(),
        "the first part was taken back"
    );
    assert_eq!((qp.free_slots(), qp.outstanding()), (31, 0));
    qp.rings_mut().refuse_push = None;

    // A failed connection: every outstanding request comes back once, the rings are reset.
    qp.submit(Command::new(0, 1), None, 9).unwrap();
    qp.ring();
    let mut aborted = Vec::new();
    assert_eq!(qp.abort_all(Status::SUCCESS, |t, _| aborted.push(t)), 1);
    assert_eq!((aborted, qp.rings().resets), (vec![9], 1));
    assert_eq!(qp.free_slots(), 31);
}

#[test]
fn the_sq_head_is_taken_from_the_last_completion_of_a_poll_and_checked() {
    let rings = ListRings {
        size: 8,
        ..Default::default()
    };
    let slots: Vec<Slot<u64>> = (0..7).map(|_| Slot::EMPTY).collect();
    let mut qp = QueuePair::with_rings(rings, 1, PS, 8 * PS, slots).unwrap();
    for t in 0..3 {
        qp.submit(Command::new(0, 1), None, t).unwrap();
    }
    qp.ring();
    // A bad head in the middle of a poll is overtaken by the last one (heads only move
    // forward); a bad last head is counted and ignored.
    for (i, head) in [(0, 99u16), (1, 2), (2, 999)] {
        let cid = qp.rings().sent[i].cid;
        qp.rings_mut().completions.push_back(CompletionEntry {
            cid,
            sq_head: head,
            ..Default::default()
        });
        if i == 0 {
            continue;
        }
        let mut done = Vec::new();
        qp.poll(8, |t, _| done.push(t));
        let want: Vec<u64> = if i == 1 { vec![0, 1] } else { vec![2] };
        assert_eq!(done, want);
        assert_eq!(
            qp.stats().bad_sq_heads,
            if i == 1 { 0 } else { 1 },
            "poll {i}"
        );
        assert_eq!(qp.rings().heads.len(), i, "one head per poll");
        assert_eq!(qp.rings().heads.last(), Some(&[2, 999][i - 1]));
    }
}

#[test]
fn a_one_command_slot_frees_to_the_free_state_of_its_cid() {
    for cid in [0u16, 1, 0x3ffe, 0x4001, 0xbffe, 0xfffe] {
        let single = SlotState::single(cid);
        assert!(single.in_flight());
        assert_eq!(single.freed(), SlotState::free(cid), "{cid:#x}");
        assert!(!single.freed().in_flight());
    }
}
