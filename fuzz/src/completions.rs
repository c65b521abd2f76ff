//! Completion processing with arbitrary completion entries.
//!
//! The first byte picks the subject:
//! - even: a [`QueuePair`] (`nvme_core::qpair`) of 2 to 64 entries over a fake device that
//!   fetches what the doorbell announces. The rest of the input is a program of submissions
//!   (single commands and transfers split by MDTS), proper completions of fetched commands
//!   with arbitrary status and SQ head, completions with entirely arbitrary fields and phase,
//!   replays of earlier entries, polls and aborts. Checked after every step: a request
//!   completes at most once and only if it was submitted, `outstanding()` equals the
//!   requests not yet completed, and free slots plus requests in flight never exceed the
//!   capacity (all slots free when nothing is outstanding).
//! - odd: the shared admin queue (`nvme_core::shared`) over a [`SharedAdminState`] in test
//!   memory with the in-process lock, two members, the same kinds of completion entries,
//!   plus arbitrary bytes written over the shared state (a corrupt group member), recovery,
//!   member release and asynchronous events. Until the state is corrupted, each member gets
//!   only its own tags, each at most once; after, only the absence of panics (and of
//!   accesses outside the regions, which `DmaRegion` bounds-checks) is required.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;

use nvme_core::hal::InProcessLock;
use nvme_core::regs::registers::sq_tail_doorbell;
use nvme_core::regs::CompletionEntry;
use nvme_core::shared::{OwnerId, SharedAdminQueue, SharedAdminState, MAX_ADMIN_ENTRIES};
use nvme_core::{Command, DmaRegion, QueueConfig, QueuePair, RegisterAccess, Slot};

use crate::input::{leaked_region, Input};

const PAGE: usize = 4096;
/// Largest ring the target builds (small rings wrap, and the phase flips, often).
const MAX_ENTRIES: u32 = 64;
/// Data buffer pages.
const DATA_PAGES: usize = 64;
/// Largest MDTS the target uses.
const MAX_TRANSFER: usize = 16 * PAGE;

/// Memory reused by every input of one thread.
#[derive(Clone, Copy)]
struct Arena {
    sq: DmaRegion,
    cq: DmaRegion,
    prp: DmaRegion,
    data: DmaRegion,
    state: DmaRegion,
}

impl Arena {
    fn get() -> Arena {
        thread_local! {
            static ARENA: Arena = Arena {
                sq: leaked_region(MAX_ADMIN_ENTRIES as usize * 64, 0x10_0000),
                cq: leaked_region(MAX_ADMIN_ENTRIES as usize * 16, 0x20_0000),
                prp: leaked_region(
                    QueueConfig::prp_len(MAX_ADMIN_ENTRIES, PAGE, MAX_TRANSFER),
                    0x100_0000,
                ),
                data: leaked_region(DATA_PAGES * PAGE, 0x4000_0000),
                state: leaked_region(
                    std::mem::size_of::<SharedAdminState>().next_multiple_of(PAGE),
                    0,
                ),
            };
        }
        ARENA.with(|a| *a)
    }
}

/// The device side: fetches the entries the SQ tail doorbell announces, posts completion
/// entries at its CQ tail with its phase.
struct Device {
    sq: DmaRegion,
    cq: DmaRegion,
    entries: u32,
    sq_doorbell: usize,
    sq_head: Cell<u32>,
    cq_tail: Cell<u32>,
    phase: Cell<bool>,
    /// CIDs fetched and not yet completed by `complete_fetched`.
    fetched: RefCell<Vec<u16>>,
    /// Every entry posted, for replays.
    posted: RefCell<Vec<CompletionEntry>>,
}

impl Device {
    fn new(sq: DmaRegion, cq: DmaRegion, entries: u32, qid: u16) -> Device {
        Device {
            sq,
            cq,
            entries,
            sq_doorbell: sq_tail_doorbell(qid, 0),
            sq_head: Cell::new(0),
            cq_tail: Cell::new(0),
            phase: Cell::new(true),
            fetched: RefCell::new(Vec::new()),
            posted: RefCell::new(Vec::new()),
        }
    }

    /// Posts `e` at the tail: its phase bit is the device's unless `raw_phase`.
    fn post(&self, mut e: CompletionEntry, raw_phase: bool) {
        if !raw_phase {
            e.status = (e.status & !1) | self.phase.get() as u16;
        }
        assert!(
            self.cq.post_cqe(self.cq_tail.get(), &e),
            "the ring holds `entries`"
        );
        self.posted.borrow_mut().push(e);
        let t = self.cq_tail.get() + 1;
        if t == self.entries {
            self.cq_tail.set(0);
            self.phase.set(!self.phase.get());
        } else {
            self.cq_tail.set(t);
        }
    }

    /// Completes the `pick`-th fetched command with `status` (the phase bit is set by
    /// `post`), reporting the real SQ head unless `sq_head` is given.
    fn complete_fetched(&self, pick: u16, status: u16, dw0: u32, sq_head: Option<u16>) {
        let cid = {
            let mut f = self.fetched.borrow_mut();
            if f.is_empty() {
                return;
            }
            let i = pick as usize % f.len();
            f.remove(i)
        };
        self.post(
            CompletionEntry {
                dw0,
                dw1: 0,
                sq_head: sq_head.unwrap_or(self.sq_head.get() as u16),
                sq_id: 0,
                cid,
                status: status << 1,
            },
            false,
        );
    }
}

impl RegisterAccess for Device {
    fn read32(&self, _offset: usize) -> u32 {
        0
    }
    fn write32(&self, offset: usize, value: u32) {
        assert!(
            offset >= 0x1000,
            "a write to a register that is not a doorbell"
        );
        if offset != self.sq_doorbell {
            // The CQ head doorbell, or (after a corrupt member changed the shared doorbell
            // stride) another doorbell: nothing to fetch.
            return;
        }
        // A corrupt shared state may ring any value: fetch at most one ring's worth.
        let target = value % self.entries;
        let mut n = 0;
        while self.sq_head.get() != target && n < self.entries {
            let e = self
                .sq
                .read_sqe(self.sq_head.get())
                .expect("inside the ring");
            self.fetched.borrow_mut().push(e.cid);
            self.sq_head.set((self.sq_head.get() + 1) % self.entries);
            n += 1;
        }
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    if input.u8() & 1 == 0 {
        queue_pair(&mut input);
    } else {
        shared_admin(&mut input);
    }
}

/// An arbitrary completion entry, phase bit included.
fn arbitrary_cqe(input: &mut Input<'_>) -> CompletionEntry {
    CompletionEntry {
        dw0: input.u32(),
        dw1: input.u32(),
        sq_head: input.u16(),
        sq_id: input.u16(),
        cid: input.u16(),
        status: input.u16(),
    }
}

/// A data buffer inside the arena: `pages` pages (or a short, odd-sized piece) at an
/// arbitrary page (or dword) offset.
fn buffer(arena: &Arena, input: &mut Input<'_>) -> Option<DmaRegion> {
    let pages = 1 + input.u8() as usize % 24;
    let start = input.u8() as usize % DATA_PAGES;
    let misalign = if input.u8().is_multiple_of(8) {
        4 * (input.u8() as usize % 8)
    } else {
        0
    };
    arena.data.sub(
        start * PAGE + misalign,
        (pages * PAGE).min(DATA_PAGES * PAGE),
    )
}

fn queue_pair(input: &mut Input<'_>) {
    let arena = Arena::get();
    let entries = 2 + u32::from(input.u8()) % (MAX_ENTRIES - 1);
    let max_transfer = PAGE << (input.u8() % 5);
    let slots_wanted = 1 + input.u8() as usize % entries as usize;
    let cfg = QueueConfig {
        qid: 1,
        entries,
        dstrd: 0,
        page_size: PAGE,
        max_transfer,
        sq: arena.sq,
        cq: arena.cq,
        prp: arena.prp,
    };
    let dev = Device::new(arena.sq, arena.cq, entries, 1);
    let slots: Vec<Slot<u64>> = (0..slots_wanted).map(|_| Slot::EMPTY).collect();
    let mut qp = QueuePair::new(cfg, &dev, slots).expect("a valid configuration");
    let capacity = qp.capacity();
    assert!(capacity >= 1 && capacity <= slots_wanted);

    let mut next_ctx = 0u64;
    let mut live: HashSet<u64> = HashSet::new();
    let mut done: HashSet<u64> = HashSet::new();
    let mut steps = 0;
    while !input.is_empty() && steps < 512 {
        steps += 1;
        match input.u8() % 8 {
            0 => {
                // One command, with or without data.
                let cmd = Command::read(1, input.u64(), 1 + u32::from(input.u16()));
                let data = if input.bool() {
                    buffer(&arena, input)
                } else {
                    None
                };
                next_ctx += 1;
                if qp.submit(cmd, data, next_ctx).is_ok() {
                    live.insert(next_ctx);
                }
            }
            1 => {
                // A transfer split into MDTS-sized commands.
                let block_size = [512u32, 4096, 520, 0][input.u8() as usize % 4];
                let Some(data) = buffer(&arena, input) else {
                    continue;
                };
                let cmd = if input.bool() {
                    Command::write(1, 0, 1)
                } else {
                    Command::read(1, 0, 1)
                };
                next_ctx += 1;
                if qp
                    .submit_io(cmd, input.u32() as u64, block_size, data, next_ctx)
                    .is_ok()
                {
                    live.insert(next_ctx);
                }
            }
            2 | 3 => {
                // A proper completion of a fetched command (arbitrary status; sometimes an
                // arbitrary SQ head).
                let pick = input.u16();
                let status = input.u16() & 0x7fff;
                let head = input.bool().then(|| input.u16());
                dev.complete_fetched(pick, status, input.u32(), head);
            }
            4 => {
                let e = arbitrary_cqe(input);
                let raw_phase = input.bool();
                dev.post(e, raw_phase);
            }
            5 => {
                // A replay of an earlier entry (duplicated or late completion).
                let e = {
                    let p = dev.posted.borrow();
                    if p.is_empty() {
                        continue;
                    }
                    p[input.u16() as usize % p.len()]
                };
                dev.post(e, false);
            }
            6 => {
                let max = input.u8() as usize;
                qp.poll(max, |ctx, _c| {
                    assert!(
                        live.remove(&ctx),
                        "request {ctx} completed but not in flight"
                    );
                    assert!(done.insert(ctx), "request {ctx} completed twice");
                });
            }
            _ => {
                if input.u8() == 0 {
                    qp.abort_all(
                        QueuePair::<nvme_core::PciRings<&Device>, u64, Vec<Slot<u64>>>::ABORTED,
                        |ctx, _| {
                            assert!(live.remove(&ctx), "aborted {ctx}, not in flight");
                            assert!(done.insert(ctx), "request {ctx} completed twice");
                        },
                    );
                    assert!(live.is_empty(), "abort_all left requests behind");
                    // The device restarts with the queue.
                    dev.sq_head.set(0);
                    dev.cq_tail.set(0);
                    dev.phase.set(true);
                    dev.fetched.borrow_mut().clear();
                }
            }
        }
        assert_eq!(
            qp.outstanding(),
            live.len(),
            "outstanding() against the model"
        );
        assert!(
            qp.free_slots() + live.len() <= capacity,
            "free slots {} + in flight {} > capacity {capacity}",
            qp.free_slots(),
            live.len()
        );
        if live.is_empty() {
            assert_eq!(
                qp.free_slots(),
                capacity,
                "slots leaked with nothing in flight"
            );
        }
    }
}

fn shared_admin(input: &mut Input<'_>) {
    let arena = Arena::get();
    let state_mem = arena.state;
    state_mem.zero();
    let state: &SharedAdminState = state_mem.shared().expect("sized and aligned");
    let entries = 2 + u32::from(input.u8()) % 31;
    let max_transfer = 4 * PAGE;
    state
        .configure(entries, PAGE, max_transfer, 0)
        .expect("a valid geometry");
    let lock = InProcessLock::new(());
    let dev = Device::new(arena.sq, arena.cq, entries, 0);
    arena
        .cq
        .sub(0, entries as usize * 16)
        .expect("in the arena")
        .zero();
    let prp = arena
        .prp
        .sub(0, SharedAdminState::prp_len(entries, PAGE, max_transfer))
        .expect("in the arena");
    let owners = [OwnerId::new(0, 1), OwnerId::new(1, 1)];
    let queues: Vec<_> = owners
        .iter()
        .map(|&me| {
            SharedAdminQueue::new(state, &lock, &dev, arena.sq, arena.cq, prp, me)
                .expect("configured")
        })
        .collect();
    for q in &queues {
        q.join().expect("joins");
    }
    // Tags submitted and not yet delivered, per member; until the state is corrupted.
    let mut pending: [HashSet<u64>; 2] = [HashSet::new(), HashSet::new()];
    let mut corrupt = false;
    let mut next_tag = 0u64;
    let mut cursor = 0u64;
    let mut steps = 0;
    while !input.is_empty() && steps < 512 {
        steps += 1;
        let m = input.u8() as usize;
        let who = m & 1;
        let q = &queues[who];
        match (m >> 1) % 10 {
            0 | 1 => {
                let data = if input.bool() {
                    let pages = 1 + input.u8() as usize % 5;
                    arena.data.sub(input.u8() as usize % 8 * PAGE, pages * PAGE)
                } else {
                    None
                };
                next_tag += 1;
                if q.submit(Command::identify(input.u8(), 0, 0), data, next_tag)
                    .is_ok()
                {
                    pending[who].insert(next_tag);
                }
            }
            2 | 3 => {
                let pick = input.u16();
                let status = input.u16() & 0x7fff;
                let head = input.bool().then(|| input.u16());
                dev.complete_fetched(pick, status, input.u32(), head);
            }
            4 => {
                let e = arbitrary_cqe(input);
                let raw_phase = input.bool();
                dev.post(e, raw_phase);
            }
            5 => {
                let wait = input.bool();
                q.poll(wait, |tag, _c| {
                    if !corrupt {
                        assert!(
                            pending[who].remove(&tag),
                            "member {who} got tag {tag}: not its own, or twice"
                        );
                    }
                });
            }
            6 => q.reap(),
            7 => {
                // A corrupt member: arbitrary bytes over the shared state.
                let len = 1 + input.u8() as usize % 16;
                let off = input.u16() as usize % std::mem::size_of::<SharedAdminState>();
                let bytes = input.bytes(len);
                let end = (off + bytes.len()).min(std::mem::size_of::<SharedAdminState>());
                if state_mem.write_bytes(off, &bytes[..end - off]) {
                    corrupt = true;
                }
            }
            8 => match input.u8() % 4 {
                0 => {
                    let _ = q.recover();
                }
                1 => {
                    q.release_member(owners[1 - who]);
                    // The other member's commands now complete to nobody.
                    corrupt = true;
                }
                2 => {
                    let _ = q.enable_events(u32::from(input.u8() % 4));
                }
                _ => {
                    let _ = q.in_flight_of(owners[who]);
                    q.events_since(&mut cursor, |_| {});
                }
            },
            _ => {
                // A replay of an earlier entry.
                let e = {
                    let p = dev.posted.borrow();
                    if p.is_empty() {
                        continue;
                    }
                    p[input.u16() as usize % p.len()]
                };
                dev.post(e, false);
            }
        }
    }
}
