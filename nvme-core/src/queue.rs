//! Submission and completion rings over caller-provided DMA memory.
//!
//! The submission ring only writes entries and moves its tail; the doorbell is written by
//! [`SubmissionQueue::ring`] when the tail moved since the last ring, so a batch of any size
//! costs one doorbell write. The completion ring reads the dword holding the phase tag with an
//! acquire load and only then the rest of the entry, so it never sees a half-written entry.

use core::sync::atomic::{fence, Ordering};

use nvme_regs::{CompletionEntry, SubmissionEntry};

use crate::dma::{CqCursor, DmaRegion, DmaRing, DmaWord, SqCursor};
pub use crate::dma::{CQE_SIZE, SQE_SIZE};
use crate::hal::RegisterAccess;

/// Errors in a queue's configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueError {
    /// Fewer than 2 or more than 65536 entries.
    BadSize(u32),
    /// The memory region is smaller than the ring.
    RegionTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes given.
        given: usize,
    },
    /// The ring is not aligned to the controller's memory page size.
    Misaligned {
        /// IOVA of the ring.
        iova: u64,
        /// Required alignment in bytes.
        align: usize,
    },
}

impl core::fmt::Display for QueueError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            QueueError::BadSize(n) => write!(f, "queue size {n} is outside 2..=65536 entries"),
            QueueError::RegionTooSmall { needed, given } => {
                write!(f, "queue memory is {given} bytes, the ring needs {needed}")
            }
            QueueError::Misaligned { iova, align } => {
                write!(
                    f,
                    "queue memory at IOVA {iova:#x} is not aligned to {align} bytes"
                )
            }
        }
    }
}

impl core::error::Error for QueueError {}

/// A queue's entries in the shadow doorbell and EventIdx buffers that Doorbell Buffer Config
/// gives the controller (NVMe 1.4 5.7): the host writes the new tail or head to the shadow
/// entry and writes the MMIO doorbell only when the controller's EventIdx asks for it.
#[derive(Clone, Copy, Debug)]
pub struct ShadowSlot {
    /// The 4-byte shadow doorbell.
    db: DmaWord,
    /// The 4-byte EventIdx.
    ei: DmaWord,
}

impl ShadowSlot {
    /// The entries at byte `offset` of the shadow doorbell buffer `db` and the EventIdx
    /// buffer `ei` (both given to the controller with Doorbell Buffer Config). `None` when
    /// the offset is outside either buffer or not 4-byte aligned.
    pub fn new(db: &DmaRegion, ei: &DmaRegion, offset: usize) -> Option<ShadowSlot> {
        Some(ShadowSlot {
            db: db.word(offset)?,
            ei: ei.word(offset)?,
        })
    }
    /// Sets both entries to 0 (before the queue is created).
    pub fn clear(&self) {
        self.db.write(0);
        self.ei.write(0);
    }
}

/// Does moving a doorbell from `old` to `new` pass the controller's EventIdx `ei`? (The
/// same test as virtio's `vring_need_event`, on 16-bit values.)
pub const fn need_event(ei: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(ei).wrapping_sub(1) < new.wrapping_sub(old)
}

/// A queue's doorbell: its register, the value last written to it, and the shadow
/// doorbell slot when the controller took Doorbell Buffer Config.
#[derive(Debug)]
struct Doorbell {
    /// Byte offset of the register in BAR0.
    offset: usize,
    /// Value last written (or published to the shadow).
    rung: u32,
    shadow: Option<ShadowSlot>,
}

impl Doorbell {
    const fn new(offset: usize) -> Doorbell {
        Doorbell {
            offset,
            rung: 0,
            shadow: None,
        }
    }

    /// Announces `value` if it moved since the last time: a release fence orders the
    /// caller's memory accesses (entries written, or completions read) before it, then the
    /// MMIO write, or with shadow doorbells the shadow write and the MMIO write only when
    /// the controller's EventIdx asks for it. Returns whether it wrote the MMIO register.
    #[inline]
    fn ring<R: RegisterAccess>(&mut self, regs: &R, value: u32) -> bool {
        if value == self.rung {
            return false;
        }
        fence(Ordering::Release);
        let wrote = match &self.shadow {
            Some(slot) => {
                slot.db.write(value);
                // The shadow write must be visible before we read EventIdx, or both sides
                // could miss each other's update (the controller reads the shadow after
                // writing EventIdx).
                fence(Ordering::SeqCst);
                let ei = slot.ei.read();
                let ask = need_event(ei as u16, value as u16, self.rung as u16);
                if ask {
                    regs.write32(self.offset, value);
                }
                ask
            }
            None => {
                regs.write32(self.offset, value);
                true
            }
        };
        self.rung = value;
        wrote
    }
}

/// The cursor (`cursor`: [`SqCursor::new`] or [`CqCursor::new`]) over a ring of `entries`
/// entries of `N` bytes at the start of `mem`, once the ring is checked: 2..=65536 entries,
/// inside `mem`, aligned to `align` (the controller's page size).
fn checked_ring<const N: usize, C>(
    mem: &DmaRegion,
    entries: u32,
    align: usize,
    cursor: fn(DmaRing<N>) -> Option<C>,
) -> Result<C, QueueError> {
    if !(2..=65536).contains(&entries) {
        return Err(QueueError::BadSize(entries));
    }
    let needed = entries as usize * N;
    if mem.len() < needed {
        return Err(QueueError::RegionTooSmall {
            needed,
            given: mem.len(),
        });
    }
    let misaligned = QueueError::Misaligned {
        iova: mem.iova(),
        align,
    };
    if !mem.iova().is_multiple_of(align as u64) || !(mem.vaddr() as usize).is_multiple_of(N) {
        return Err(misaligned);
    }
    mem.ring::<N>(entries).and_then(cursor).ok_or(misaligned)
}

/// A submission ring: entries written by the host, consumed by the controller.
#[derive(Debug)]
pub struct SubmissionQueue {
    mem: DmaRegion,
    /// The entries (checked against `mem` once, 2..=65536 of them) and the tail.
    ring: SqCursor,
    /// Last head reported by the controller.
    head: u32,
    /// The tail doorbell.
    bell: Doorbell,
}

impl SubmissionQueue {
    /// A ring of `entries` entries over `mem`, with its tail doorbell at byte offset `doorbell`.
    /// `align` is the controller's memory page size (queues must be page aligned).
    pub fn new(
        mem: DmaRegion,
        entries: u32,
        doorbell: usize,
        align: usize,
    ) -> Result<SubmissionQueue, QueueError> {
        let ring = checked_ring(&mem, entries, align, SqCursor::new)?;
        Ok(SubmissionQueue {
            mem,
            ring,
            head: 0,
            bell: Doorbell::new(doorbell),
        })
    }
    /// Number of entries in the ring.
    pub fn size(&self) -> u32 {
        self.ring.entries()
    }
    /// 0's based size, as Create I/O SQ and AQA encode it.
    pub fn size_0based(&self) -> u16 {
        (self.ring.entries() - 1) as u16
    }
    /// IOVA of the ring.
    pub fn iova(&self) -> u64 {
        self.mem.iova()
    }
    /// Number of entries the controller has not consumed yet (as far as the host knows).
    #[inline]
    pub fn in_use(&self) -> u32 {
        // Both are below `size`: no division needed.
        let tail = self.ring.tail();
        if tail >= self.head {
            tail - self.head
        } else {
            tail + self.ring.entries() - self.head
        }
    }
    /// Number of entries that can be pushed now (a ring of N holds at most N-1).
    #[inline]
    pub fn free(&self) -> u32 {
        self.ring.entries() - 1 - self.in_use()
    }
    /// Is the ring full (no entry can be pushed)?
    #[inline]
    pub fn is_full(&self) -> bool {
        self.ring.next() == self.head
    }
    /// Writes `entry` at the tail and advances it. Does not ring the doorbell.
    /// Returns `false` (and writes nothing) when the ring is full.
    #[inline(always)]
    pub fn push(&mut self, entry: &SubmissionEntry) -> bool {
        if self.is_full() {
            return false;
        }
        // The controller does not read this slot until the doorbell moves past it.
        self.ring.push(entry);
        true
    }
    /// Takes back the last `n` entries pushed. They must not have been announced to the
    /// controller yet (no [`ring`](Self::ring) since they were pushed).
    pub fn unpush(&mut self, n: u32) {
        let tail = self.ring.tail();
        let pushed = (tail + self.ring.entries() - self.bell.rung) % self.ring.entries();
        assert!(
            n <= pushed,
            "unpush of entries the controller was told about"
        );
        self.ring
            .set_tail((tail + self.ring.entries() - n) % self.ring.entries());
    }
    /// Records the SQ head the controller reported in a completion. Values outside the ring
    /// are ignored and reported as `false` (a misbehaving device must not corrupt our state).
    #[inline]
    pub fn update_head(&mut self, head: u16) -> bool {
        if (head as u32) < self.ring.entries() {
            self.head = head as u32;
            true
        } else {
            false
        }
    }
    /// Has the tail moved since the doorbell was last written?
    pub fn needs_ring(&self) -> bool {
        self.ring.tail() != self.bell.rung
    }
    /// Writes the tail doorbell if the tail moved since the last write (with shadow
    /// doorbells: publishes it, and writes the MMIO doorbell only if the controller asks).
    /// Returns whether it wrote the MMIO doorbell.
    #[inline]
    pub fn ring<R: RegisterAccess>(&mut self, regs: &R) -> bool {
        // The entries must be visible to the device before the doorbell tells it to read
        // them (the doorbell's release fence).
        self.bell.ring(regs, self.ring.tail())
    }
    /// Uses shadow doorbells from now on (`None`: MMIO doorbells only).
    pub fn set_shadow(&mut self, slot: Option<ShadowSlot>) {
        self.bell.shadow = slot;
    }
    /// The tail and the last head the controller reported.
    pub fn positions(&self) -> (u32, u32) {
        (self.ring.tail(), self.head)
    }
    /// Resets the ring to empty (after the controller deleted or reset the queue).
    pub fn reset(&mut self) {
        self.ring.set_tail(0);
        self.head = 0;
        self.bell.rung = 0;
    }
}

/// A completion ring: entries written by the controller, consumed by the host.
#[derive(Debug)]
pub struct CompletionQueue {
    mem: DmaRegion,
    /// The entries (checked against `mem` once, 2..=65536 of them), the head and the phase
    /// tag expected there.
    ring: CqCursor,
    /// The head doorbell.
    bell: Doorbell,
}

impl CompletionQueue {
    /// A ring of `entries` entries over `mem` with its head doorbell at byte offset
    /// `doorbell`. The memory must be zeroed (phase tags 0) before the controller uses it;
    /// `new` zeroes it.
    pub fn new(
        mem: DmaRegion,
        entries: u32,
        doorbell: usize,
        align: usize,
    ) -> Result<CompletionQueue, QueueError> {
        let ring = checked_ring(&mem, entries, align, CqCursor::new)?;
        // The controller does not write to the ring before the queue is created.
        if let Some(ring) = mem.sub(0, entries as usize * CQE_SIZE) {
            ring.zero();
        }
        Ok(CompletionQueue {
            mem,
            ring,
            bell: Doorbell::new(doorbell),
        })
    }
    /// Number of entries in the ring.
    pub fn size(&self) -> u32 {
        self.ring.entries()
    }
    /// 0's based size, as Create I/O CQ and AQA encode it.
    pub fn size_0based(&self) -> u16 {
        (self.ring.entries() - 1) as u16
    }
    /// IOVA of the ring.
    pub fn iova(&self) -> u64 {
        self.mem.iova()
    }
    /// Takes the next completion if the controller has posted it.
    #[inline]
    pub fn pop(&mut self) -> Option<CompletionEntry> {
        self.ring.pop()
    }
    /// Entries consumed since the head doorbell was last written: the controller still
    /// counts them as occupied.
    #[inline]
    pub fn unreported(&self) -> u32 {
        let rung = self.bell.rung;
        let head = self.ring.head();
        if head >= rung {
            head - rung
        } else {
            head + self.ring.entries() - rung
        }
    }
    /// Writes the head doorbell if the head moved since the last write.
    #[inline]
    pub fn ring<R: RegisterAccess>(&mut self, regs: &R) -> bool {
        // Our reads of the entries before the new head must be done before the doorbell
        // lets the controller overwrite them (the doorbell's release fence).
        self.bell.ring(regs, self.ring.head())
    }
    /// Uses shadow doorbells from now on (`None`: MMIO doorbells only).
    pub fn set_shadow(&mut self, slot: Option<ShadowSlot>) {
        self.bell.shadow = slot;
    }
    /// The head and the phase tag expected at the head.
    pub fn position(&self) -> (u32, bool) {
        (self.ring.head(), self.ring.phase())
    }
    /// Resets the ring (zeroes it; phase back to 1).
    pub fn reset(&mut self) {
        // As in `new`; the controller no longer uses the queue.
        if let Some(ring) = self.mem.sub(0, self.ring.entries() as usize * CQE_SIZE) {
            ring.zero();
        }
        self.ring.reset();
        self.bell.rung = 0;
    }
}

/// Where a [`QueuePair`](crate::QueuePair)'s commands go and where its completions come
/// from. The queue pair keeps the bookkeeping (command identifiers and their generations,
/// the slot table, splitting by the maximum transfer size, results); the rings move
/// entries. [`PciRings`] are a PCIe controller's: rings in DMA memory and doorbells. A
/// transport without shared rings (NVMe over Fabrics: capsules on a connection) implements
/// the same calls over its own medium.
///
/// Nothing here may block: `push` queues, [`ring_sq`](Self::ring_sq) announces, `pop`
/// returns what has arrived.
pub trait Rings {
    /// Entries of the submission queue (a queue of N holds at most N-1 commands).
    fn size(&self) -> u32;
    /// Entries that can be pushed now.
    fn free(&self) -> u32;
    /// Queues `entry` (not yet announced to the controller). `false` (and nothing queued)
    /// when the queue is full or the entry cannot be sent.
    fn push(&mut self, entry: &SubmissionEntry) -> bool;
    /// Takes back the last `n` entries pushed; none of them was announced yet.
    fn unpush(&mut self, n: u32);
    /// Announces everything pushed since the last call (the tail doorbell). Returns whether
    /// it told the controller (an MMIO doorbell write, a send).
    fn ring_sq(&mut self) -> bool;
    /// The next completion entry, if the controller has posted one.
    fn pop(&mut self) -> Option<CompletionEntry>;
    /// Records the submission queue head a completion reported; `false` (and ignored) when
    /// it is outside the queue.
    fn update_sq_head(&mut self, head: u16) -> bool;
    /// Completion entries consumed and not yet reported to the controller (the controller
    /// still counts them as occupied). A transport without a completion ring: 0.
    fn cq_unreported(&self) -> u32 {
        0
    }
    /// Reports the consumed completion entries (the head doorbell). Returns whether it told
    /// the controller.
    fn ring_cq(&mut self) -> bool {
        false
    }
    /// Empties both queues (the controller deleted them, was reset, or the connection went).
    fn reset(&mut self);
    /// Called once by the queue pair: the bits of a command identifier that index its slot
    /// table (`cid & mask`), for a transport that keeps per-command state of its own.
    fn cid_index_mask(&mut self, mask: u16) {
        let _ = mask;
    }
}

/// A PCIe controller's queues: a submission and a completion ring in DMA memory, with their
/// doorbells written through `R`.
#[derive(Debug)]
pub struct PciRings<R: RegisterAccess> {
    /// The submission ring.
    pub sq: SubmissionQueue,
    /// The completion ring.
    pub cq: CompletionQueue,
    /// The registers the doorbells are written through.
    pub regs: R,
}

impl<R: RegisterAccess> Rings for PciRings<R> {
    #[inline]
    fn size(&self) -> u32 {
        self.sq.size()
    }
    #[inline]
    fn free(&self) -> u32 {
        self.sq.free()
    }
    #[inline(always)]
    fn push(&mut self, entry: &SubmissionEntry) -> bool {
        self.sq.push(entry)
    }
    fn unpush(&mut self, n: u32) {
        self.sq.unpush(n)
    }
    #[inline]
    fn ring_sq(&mut self) -> bool {
        self.sq.ring(&self.regs)
    }
    #[inline]
    fn pop(&mut self) -> Option<CompletionEntry> {
        self.cq.pop()
    }
    #[inline]
    fn update_sq_head(&mut self, head: u16) -> bool {
        self.sq.update_head(head)
    }
    #[inline]
    fn cq_unreported(&self) -> u32 {
        self.cq.unreported()
    }
    #[inline]
    fn ring_cq(&mut self) -> bool {
        self.cq.ring(&self.regs)
    }
    fn reset(&mut self) {
        self.sq.reset();
        self.cq.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::cell::RefCell;
    use std::vec::Vec;

    /// Records doorbell writes.
    #[derive(Default)]
    pub(crate) struct Regs(pub RefCell<Vec<(usize, u32)>>);
    impl RegisterAccess for Regs {
        fn read32(&self, _offset: usize) -> u32 {
            0
        }
        fn write32(&self, offset: usize, value: u32) {
            self.0.borrow_mut().push((offset, value));
        }
    }

    use crate::dma::test_memory;

    #[test]
    fn submission_ring_batches_doorbells_and_respects_head() {
        let mem = test_memory(1, 0x10000);
        let mut sq = SubmissionQueue::new(mem, 4, 0x1008, 4096).unwrap();
        let regs = Regs::default();
        let e = SubmissionEntry {
            opcode: 2,
            ..Default::default()
        };
        assert!(sq.push(&e));
        assert!(sq.push(&e));
        assert!(sq.push(&e));
        assert!(!sq.push(&e), "a ring of 4 holds 3");
        assert_eq!(sq.free(), 0);
        assert!(sq.ring(&regs));
        assert!(!sq.ring(&regs), "no second write without new entries");
        assert_eq!(*regs.0.borrow(), [(0x1008, 3)]);
        assert!(sq.update_head(2));
        assert!(!sq.update_head(4), "out of range head ignored");
        assert_eq!(sq.free(), 2);
        assert!(sq.push(&e));
        assert!(sq.push(&e));
        sq.ring(&regs);
        assert_eq!(regs.0.borrow()[1], (0x1008, 1), "tail wrapped");
        assert_eq!(mem.read_obj::<u8>(0), Some(2));
    }

    #[test]
    fn completion_ring_follows_phase_and_wraps() {
        let mem = test_memory(1, 0x20000);
        assert!(mem.write_bytes(0, &[0xff; 4096]));
        let mut cq = CompletionQueue::new(mem, 2, 0x100c, 4096).unwrap();
        assert!(cq.pop().is_none(), "zeroed ring has no entries");
        let post = |mem: &DmaRegion, idx: usize, cid: u16, phase: u16| {
            let e = CompletionEntry {
                dw0: 7,
                dw1: 0,
                sq_head: 1,
                sq_id: 3,
                cid,
                status: phase,
            };
            assert!(mem.write_obj(idx * 16, &e));
        };
        post(&mem, 0, 10, 1);
        let c = cq.pop().unwrap();
        assert_eq!((c.cid, c.dw0, c.sq_head, c.sq_id), (10, 7, 1, 3));
        assert!(cq.pop().is_none());
        post(&mem, 1, 11, 1);
        assert_eq!(cq.pop().unwrap().cid, 11);
        // Wrapped: the old entry 0 still has phase 1, which is now stale.
        assert!(cq.pop().is_none());
        post(&mem, 0, 12, 0);
        assert_eq!(cq.pop().unwrap().cid, 12);
        let regs = Regs::default();
        assert!(cq.ring(&regs));
        assert_eq!(*regs.0.borrow(), [(0x100c, 1)]);
    }

    #[test]
    fn shadow_doorbells_write_mmio_only_when_the_controller_asks() {
        assert!(
            need_event(0, 1, 0),
            "controller caught up at 0: 0 -> 1 crosses it"
        );
        assert!(!need_event(5, 3, 1), "event index ahead of the new value");
        assert!(need_event(2, 5, 1));
        assert!(
            !need_event(1, 5, 2),
            "already past the event index before this move"
        );
        assert!(need_event(0xffff, 1, 0xfffe), "wraps at 16 bits");
        let mem = test_memory(1, 0x10000);
        let mut sq = SubmissionQueue::new(mem, 8, 0x1008, 4096).unwrap();
        // The shadow doorbell and EventIdx buffers, with this queue's entry at offset 8.
        let (db, ei) = (test_memory(1, 0x20000), test_memory(1, 0x30000));
        assert!(
            ShadowSlot::new(&db, &ei, 4096).is_none(),
            "outside the buffers"
        );
        assert!(ShadowSlot::new(&db, &ei, 6).is_none(), "misaligned");
        sq.set_shadow(Some(ShadowSlot::new(&db, &ei, 8).unwrap()));
        let regs = Regs::default();
        let e = SubmissionEntry::default();
        sq.push(&e);
        assert!(sq.ring(&regs), "the controller waits at 0: MMIO write");
        assert_eq!(db.read_u32(8), Some(1));
        // The controller says: tell me when the tail passes 5.
        ei.write_u32(8, 5);
        sq.push(&e);
        assert!(!sq.ring(&regs), "no MMIO write before the event index");
        assert_eq!(db.read_u32(8), Some(2), "the shadow holds the new tail");
        for _ in 0..4 {
            sq.push(&e);
        }
        assert!(sq.ring(&regs), "passing the event index writes MMIO");
        assert_eq!(*regs.0.borrow(), [(0x1008, 1), (0x1008, 6)]);
    }

    #[test]
    fn rejects_bad_rings() {
        let mem = test_memory(1, 0x10000);
        assert_eq!(
            SubmissionQueue::new(mem, 1, 0, 4096).unwrap_err(),
            QueueError::BadSize(1)
        );
        assert!(matches!(
            SubmissionQueue::new(mem, 65, 0, 4096),
            Err(QueueError::RegionTooSmall { .. })
        ));
        let off = mem.sub(64, 1024).unwrap();
        assert!(matches!(
            SubmissionQueue::new(off, 4, 0, 4096),
            Err(QueueError::Misaligned { .. })
        ));
    }
}
