//! A queue pair: one submission and one completion ring, command identifiers in fixed
//! storage, PRP lists or SGL descriptors ([`DataPointer`]), and transparent splitting of
//! large transfers.
//!
//! Command identifiers are `generation << index_bits | slot index`. A slot's generation
//! advances every time it is reused, so a late or duplicated completion for an earlier use of
//! the slot is recognised and dropped instead of completing the wrong request. Every value
//! read from the completion (CID, SQ head) is range-checked before use. At least
//! [`MIN_GENERATION_BITS`] of the 16 CID bits carry the generation, so a queue pair has at
//! most [`MAX_COMMANDS`] commands in flight whatever its ring size (a larger ring still
//! works; it is never full).
//!
//! Nothing here allocates, locks or makes a system call: submission writes the entry and
//! moves the tail; [`QueuePair::poll`] (or [`QueuePair::ring`]) writes the doorbell once for
//! everything submitted since the last write.
//!
//! The completion queue's head doorbell is written lazily (NVMe lets the host report
//! consumed entries whenever it likes): only when the entries consumed since the last
//! report, plus every command that may still complete, could exceed what the controller
//! sees as free in the completion queue. Then it is written before the submission doorbell,
//! so the controller never finds the queue full; otherwise the submission doorbell goes out
//! alone, without waiting behind a head write. With shadow doorbells the same rule decides
//! when the shadow head is published.

use nvme_regs::entry::PSDT_SGL;
use nvme_regs::status::GenericStatus;
use nvme_regs::{CompletionEntry, Status};

use crate::cmd::Command;
use crate::dma::DmaRegion;
use crate::hal::RegisterAccess;
use crate::prp::{self, PrpError};
use crate::queue::{CompletionQueue, PciRings, QueueError, Rings, ShadowSlot, SubmissionQueue};
use crate::sgl::{self, SglError};

/// Largest number of logical blocks one read/write command can carry (NLB is 16 bits).
pub const MAX_BLOCKS_PER_COMMAND: u32 = 65536;

const NONE: u16 = u16::MAX;

/// CID bits always left to the generation.
pub const MIN_GENERATION_BITS: u32 = 2;
/// Most commands one queue pair has in flight (the slot index fits the other CID bits).
pub const MAX_COMMANDS: usize = (1 << (16 - MIN_GENERATION_BITS)) - 1;

/// The CID of a slot's next use after `cid`: the generation (the high bits) advanced by one
/// (`step` is 1 << index bits), wrapping within its bits. Never 0xffff, which means "no
/// command" in the error log: the index bits are chosen so that no slot's index is all
/// ones (see `QueuePair::build`).
#[inline]
const fn next_cid(cid: u16, step: u16) -> u16 {
    cid.wrapping_add(step)
}

/// What a queue pair needs to know about its queues and the controller.
#[derive(Clone, Copy, Debug)]
pub struct QueueConfig {
    /// Queue identifier (0 for the admin queue).
    pub qid: u16,
    /// Entries of the submission and completion rings.
    pub entries: u32,
    /// CAP.DSTRD.
    pub dstrd: u8,
    /// Controller memory page size in bytes (CC.MPS).
    pub page_size: usize,
    /// Largest transfer of one command in bytes (MDTS); larger I/Os are split.
    pub max_transfer: usize,
    /// Memory of the submission ring (`entries * 64` bytes, page aligned).
    pub sq: DmaRegion,
    /// Memory of the completion ring (`entries * 16` bytes, page aligned).
    pub cq: DmaRegion,
    /// Memory for PRP lists: [`QueueConfig::prp_len`] bytes, page aligned.
    pub prp: DmaRegion,
}

impl QueueConfig {
    /// PRP list pages each command slot needs.
    pub const fn prp_pages_per_slot(page_size: usize, max_transfer: usize) -> usize {
        prp::list_pages_for_transfer(max_transfer, page_size)
    }
    /// Bytes of PRP list memory a queue of `entries` needs.
    pub const fn prp_len(entries: u32, page_size: usize, max_transfer: usize) -> usize {
        Self::slots(entries) * Self::prp_pages_per_slot(page_size, max_transfer) * page_size
    }
    /// Command slots a queue of `entries` uses: a ring of N holds N-1 commands, and a
    /// queue pair at most [`MAX_COMMANDS`].
    pub const fn slots(entries: u32) -> usize {
        let n = entries as usize - 1;
        if n < MAX_COMMANDS {
            n
        } else {
            MAX_COMMANDS
        }
    }
}

/// The result of a completed request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// Dword 0 of the (last, or first failing) completion entry.
    pub dw0: u32,
    /// Dword 1.
    pub dw1: u32,
    /// Status; `status.is_success()` for a successful request.
    pub status: Status,
    /// The request's opcode, for error reports (kept by the queue pair, so that the caller's
    /// context need not carry it); 0 for admin completions handed over through a group's
    /// mailbox (their submitter knows its command).
    pub opcode: u8,
}

impl Completion {
    /// `Ok(dw0)` on success, `Err(status)` otherwise.
    pub fn result(&self) -> Result<u32, Status> {
        if self.status.is_success() {
            Ok(self.dw0)
        } else {
            Err(self.status)
        }
    }
}

/// Why a submission was refused. Nothing was submitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// Not enough free submission entries or command slots now; poll and retry.
    QueueFull,
    /// The request needs more commands than the queue can ever hold at once.
    TooLarge {
        /// Commands the request needs.
        commands: usize,
        /// Commands the queue holds.
        capacity: usize,
    },
    /// The data buffer cannot be described with PRPs.
    Prp(PrpError),
    /// The data buffer cannot be described with an SGL.
    Sgl(SglError),
    /// The data length is not a positive multiple of the block size.
    BadLength {
        /// Data length in bytes.
        len: usize,
        /// Logical block size in bytes.
        block_size: u32,
    },
    /// A single (unsplittable) command's data exceeds the maximum transfer size.
    ExceedsMaxTransfer {
        /// Data length in bytes.
        len: usize,
        /// Maximum transfer size in bytes.
        max: usize,
    },
}

impl core::fmt::Display for SubmitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SubmitError::QueueFull => write!(f, "queue full: process completions and retry"),
            SubmitError::TooLarge { commands, capacity } => write!(
                f,
                "request needs {commands} commands but the queue holds {capacity}; use a deeper queue or a smaller request"
            ),
            SubmitError::Prp(e) => write!(f, "{e}"),
            SubmitError::Sgl(e) => write!(f, "{e}"),
            SubmitError::BadLength { len, block_size } => write!(
                f,
                "data length {len} is not a positive multiple of the {block_size}-byte block size"
            ),
            SubmitError::ExceedsMaxTransfer { len, max } => {
                write!(f, "data length {len} exceeds the controller's maximum transfer of {max} bytes")
            }
        }
    }
}

impl core::error::Error for SubmitError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            SubmitError::Prp(e) => Some(e),
            SubmitError::Sgl(e) => Some(e),
            _ => None,
        }
    }
}

impl From<PrpError> for SubmitError {
    fn from(e: PrpError) -> Self {
        SubmitError::Prp(e)
    }
}

impl From<SglError> for SubmitError {
    fn from(e: SglError) -> Self {
        SubmitError::Sgl(e)
    }
}

/// How a queue pair's commands point to their data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DataPointer {
    /// PRP entries and lists (every controller takes them).
    #[default]
    Prp,
    /// SGL descriptors (PSDT 01b): only for controllers whose Identify SGLS field reports
    /// SGL support for NVM commands, and only on I/O queues (admin commands over PCIe use
    /// PRPs).
    Sgl,
}

/// A slot's state word: CID (bits 0-15), head slot index (16-31: a split request's first
/// slot; [`NONE`] for a request of one command and for a free slot), commands pending
/// (32-47, for a head) and flags (48-63), so that a submission initialises it with one store
/// and a completion checks it with one compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SlotState(u64);

/// A command using the slot is outstanding at the controller.
const IN_FLIGHT: u64 = 1 << 48;
/// The slot holds one command of a request split into several (its completion goes the
/// general way, [`QueuePair::complete_other`]).
const PART: u64 = 1 << 49;
/// One pending command, in the state word.
const ONE_PENDING: u64 = 1 << 32;

impl SlotState {
    #[inline]
    const fn new(cid: u16, head: u16, pending: u16, flags: u64) -> SlotState {
        SlotState(cid as u64 | (head as u64) << 16 | (pending as u64) << 32 | flags)
    }
    /// A free slot whose last use had `cid`.
    #[inline]
    const fn free(cid: u16) -> SlotState {
        SlotState::new(cid, NONE, 0, 0)
    }
    /// A slot in flight with `cid`, the only command of its request. Its head field is
    /// [`NONE`] (only a split request's slots name their head), so that the state is the
    /// CID or'ed with a constant: one `or` to build, one compare to check.
    #[inline]
    const fn single(cid: u16) -> SlotState {
        SlotState::new(cid, NONE, 1, IN_FLIGHT)
    }
    /// The free state after a one-command request in this [`single`](Self::single) state:
    /// its low 32 bits (the CID and a head field already [`NONE`]), one move; the same as
    /// [`free`](Self::free) with its CID.
    #[inline]
    const fn freed(self) -> SlotState {
        SlotState(self.0 & 0xffff_ffff)
    }
    #[inline]
    const fn cid(self) -> u16 {
        self.0 as u16
    }
    #[inline]
    const fn head(self) -> u16 {
        (self.0 >> 16) as u16
    }
    #[inline]
    const fn pending(self) -> u16 {
        (self.0 >> 32) as u16
    }
    #[inline]
    const fn in_flight(self) -> bool {
        self.0 & IN_FLIGHT != 0
    }
}

/// Per-command tracking state. Storage for these comes from the caller (an array, a boxed
/// slice, or memory of its own), one per command the queue may hold.
#[derive(Debug)]
pub struct Slot<T> {
    /// CID of the current (or last) use (the generation in the high bits, the slot index in
    /// the low ones), head slot, commands pending, in flight: see [`SlotState`].
    state: SlotState,
    /// Next free slot (free list link).
    next_free: u16,
    /// For the head of a split request: the result so far (a single command's result is
    /// its completion entry's). For every head: the request's opcode.
    result: Completion,
    /// For a head: the caller's context, handed back on completion.
    ctx: Option<T>,
}

impl<T> Slot<T> {
    /// An unused slot.
    pub const EMPTY: Slot<T> = Slot {
        state: SlotState::free(0),
        next_free: NONE,
        result: Completion {
            dw0: 0,
            dw1: 0,
            status: Status::SUCCESS,
            opcode: 0,
        },
        ctx: None,
    };
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Slot::EMPTY
    }
}

/// Counters of unusual events, for diagnostics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Completions whose CID did not match an outstanding command (dropped).
    pub stale_completions: u64,
    /// Polls whose last completion had an SQ head outside the ring (head ignored; the SQ
    /// head is recorded once per poll, from its last completion).
    pub bad_sq_heads: u64,
    /// Doorbell writes to the submission queue tail.
    pub sq_doorbells: u64,
    /// Doorbell writes to the completion queue head (lazy: far fewer than the SQ's at low
    /// depths).
    pub cq_doorbells: u64,
}

/// A submission/completion queue pair with command tracking.
///
/// `Q` moves the entries ([`PciRings`]: a PCIe controller's rings and doorbells; or a
/// transport's own [`Rings`]), `T` is the caller's per-request context (handed back on
/// completion), `S` is the slot storage.
pub struct QueuePair<Q: Rings, T, S: AsMut<[Slot<T>]>> {
    rings: Q,
    slots: S,
    capacity: u16,
    free_head: u16,
    free_count: u16,
    /// `1 << index_bits`: one generation step of a CID.
    cid_step: u16,
    /// `(1 << index_bits) - 1`: the slot index bits of a CID.
    index_mask: u16,
    qid: u16,
    page_size: usize,
    max_transfer: usize,
    prp: DmaRegion,
    prp_bytes_per_slot: usize,
    /// Completion queue entries the controller may count as occupied: entries consumed
    /// since the head doorbell was last written plus commands that may still post one
    /// (submitted, not completed). Kept as it changes, so that the lazy head check is one
    /// compare (see the module documentation).
    cq_debt: u32,
    /// `cq_debt` above this (the N-1 entries a ring of N holds) writes the head doorbell.
    cq_limit: u32,
    /// Data as SGL descriptors ([`DataPointer::Sgl`]) rather than PRPs.
    sgl: bool,
    /// Slots that split requests hold beyond their head slot: requests outstanding are the
    /// slots in use less these (so that a one-command request, the usual case, counts
    /// nothing but `free_count`).
    split_extra: u16,
    stats: QueueStats,
    _ctx: core::marker::PhantomData<T>,
}

/// The PCIe queue pair: rings in DMA memory, doorbells through `R`.
impl<R: RegisterAccess, T, S: AsMut<[Slot<T>]>> QueuePair<PciRings<R>, T, S> {
    /// Builds a queue pair over `cfg`'s memory. `slots` may be shorter than
    /// [`QueueConfig::slots`] (fewer commands in flight) but not empty.
    pub fn new(cfg: QueueConfig, regs: R, slots: S) -> Result<Self, QueueError> {
        let sq = SubmissionQueue::new(
            cfg.sq,
            cfg.entries,
            nvme_regs::registers::sq_tail_doorbell(cfg.qid, cfg.dstrd),
            cfg.page_size,
        )?;
        let cq = CompletionQueue::new(
            cfg.cq,
            cfg.entries,
            nvme_regs::registers::cq_head_doorbell(cfg.qid, cfg.dstrd),
            cfg.page_size,
        )?;
        let prp_pages = QueueConfig::prp_pages_per_slot(cfg.page_size, cfg.max_transfer);
        let prp_bytes_per_slot = prp_pages * cfg.page_size;
        if prp_bytes_per_slot != 0 && !cfg.prp.iova().is_multiple_of(cfg.page_size as u64) {
            return Err(QueueError::Misaligned {
                iova: cfg.prp.iova(),
                align: cfg.page_size,
            });
        }
        let rings = PciRings { sq, cq, regs };
        QueuePair::build(
            rings,
            cfg.qid,
            cfg.page_size,
            cfg.max_transfer,
            Some((cfg.prp, prp_bytes_per_slot)),
            slots,
        )
    }

    /// IOVA of the submission ring (for Create I/O SQ or ASQ).
    pub fn sq_iova(&self) -> u64 {
        self.rings.sq.iova()
    }
    /// IOVA of the completion ring (for Create I/O CQ or ACQ).
    pub fn cq_iova(&self) -> u64 {
        self.rings.cq.iova()
    }
    /// Uses the shadow doorbell and EventIdx buffers (Doorbell Buffer Config) for this
    /// queue pair's doorbells: `db` and `ei` are the two buffers given to the controller;
    /// this queue's entries sit where its doorbells sit in BAR0 (less 0x1000). Zeroes them;
    /// call before the queues are created. Returns `false` (and keeps MMIO doorbells) when
    /// the buffers are too small for this queue id with stride `dstrd`.
    pub fn set_shadow_doorbells(&mut self, db: &DmaRegion, ei: &DmaRegion, dstrd: u8) -> bool {
        let base = nvme_regs::registers::offset::DOORBELLS;
        let sq_off = nvme_regs::registers::sq_tail_doorbell(self.qid, dstrd) - base;
        let cq_off = nvme_regs::registers::cq_head_doorbell(self.qid, dstrd) - base;
        let (Some(sq), Some(cq)) = (
            ShadowSlot::new(db, ei, sq_off),
            ShadowSlot::new(db, ei, cq_off),
        ) else {
            return false;
        };
        sq.clear();
        cq.clear();
        self.rings.sq.set_shadow(Some(sq));
        self.rings.cq.set_shadow(Some(cq));
        true
    }
    /// The register access this queue pair rings doorbells through.
    pub fn regs(&self) -> &R {
        &self.rings.regs
    }
}

impl<Q: Rings, T, S: AsMut<[Slot<T>]>> QueuePair<Q, T, S> {
    /// Builds a queue pair over a transport's own rings (`rings.size()` entries), with
    /// queue id `qid`. Its commands describe their data with SGLs
    /// ([`DataPointer::Sgl`]; there is no PRP list memory): one Data Block descriptor per
    /// command, whose address is the data's IOVA for the transport to resolve. `slots` may
    /// be shorter than the queue (fewer commands in flight) but not empty.
    pub fn with_rings(
        rings: Q,
        qid: u16,
        page_size: usize,
        max_transfer: usize,
        slots: S,
    ) -> Result<Self, QueueError> {
        if !(2..=65536).contains(&rings.size()) {
            return Err(QueueError::BadSize(rings.size()));
        }
        let mut qp = QueuePair::build(rings, qid, page_size, max_transfer, None, slots)?;
        qp.sgl = true;
        Ok(qp)
    }

    /// The common part of the constructors: `prp` is the PRP list memory and the bytes of
    /// it each slot uses (`None`: none, SGLs only).
    fn build(
        mut rings: Q,
        qid: u16,
        page_size: usize,
        max_transfer: usize,
        prp: Option<(DmaRegion, usize)>,
        mut slots: S,
    ) -> Result<Self, QueueError> {
        let entries = rings.size();
        let (prp, prp_bytes_per_slot) = match prp {
            Some(p) => p,
            // An empty region at IOVA 0: `prp_list` never hands it out.
            None => (DmaRegion::EMPTY, 0),
        };
        let capacity = slots
            .as_mut()
            .len()
            .min(QueueConfig::slots(entries))
            .min(
                prp.len()
                    .checked_div(prp_bytes_per_slot)
                    .unwrap_or(usize::MAX),
            )
            .min(MAX_COMMANDS);
        if capacity == 0 {
            return Err(QueueError::RegionTooSmall {
                needed: prp_bytes_per_slot,
                given: prp.len(),
            });
        }
        // Enough index bits that the highest slot index is not all ones (capacity <= mask):
        // then no CID is 0xffff, whatever its generation, and `next_cid` need not check.
        // MAX_COMMANDS is one below 2^(16 - MIN_GENERATION_BITS), so this fits.
        let index_bits = u32::BITS - (capacity as u32).leading_zeros();
        let index_bits = index_bits.clamp(1, 16 - MIN_GENERATION_BITS);
        let index_mask = ((1u32 << index_bits) - 1) as u16;
        rings.cid_index_mask(index_mask);
        let mut qp = QueuePair {
            rings,
            slots,
            capacity: capacity as u16,
            free_head: NONE,
            free_count: 0,
            index_mask,
            cid_step: 1u16 << index_bits,
            qid,
            page_size,
            max_transfer,
            prp,
            prp_bytes_per_slot,
            cq_debt: 0,
            cq_limit: entries - 1,
            sgl: false,
            split_extra: 0,
            stats: QueueStats::default(),
            _ctx: core::marker::PhantomData,
        };
        qp.reset_slots();
        Ok(qp)
    }

    fn reset_slots(&mut self) {
        let cap = self.capacity as usize;
        let slots = self.slots.as_mut();
        let index_mask = self.index_mask;
        for (i, s) in slots[..cap].iter_mut().enumerate() {
            // Keep the generation (a late completion of an earlier use stays stale).
            s.state = SlotState::free((s.state.cid() & !index_mask) | i as u16);
            s.ctx = None;
            s.next_free = if i + 1 < cap { (i + 1) as u16 } else { NONE };
        }
        // Storage past the capacity is never used; nothing there may look in flight (a
        // completion naming such a slot is then stale, see `complete`).
        for s in slots[cap..].iter_mut() {
            s.state = SlotState::free(s.state.cid());
        }
        self.free_head = 0;
        self.free_count = self.capacity;
        self.cq_debt = 0;
        self.split_extra = 0;
    }

    /// The queue identifier.
    pub fn qid(&self) -> u16 {
        self.qid
    }
    /// The number of ring entries.
    pub fn entries(&self) -> u32 {
        self.rings.size()
    }
    /// Commands this queue pair can have outstanding at once.
    pub fn capacity(&self) -> usize {
        self.capacity as usize
    }
    /// Requests submitted and not yet completed.
    pub fn outstanding(&self) -> usize {
        (self.capacity - self.free_count - self.split_extra) as usize
    }
    /// Free command slots.
    pub fn free_slots(&self) -> usize {
        self.free_count as usize
    }
    /// The largest transfer of one command in bytes.
    pub fn max_transfer(&self) -> usize {
        self.max_transfer
    }
    /// Lowers the largest transfer of one command (once the controller's MDTS is known).
    /// Raising it is refused: the PRP list memory was sized for the old value.
    pub fn lower_max_transfer(&mut self, max_transfer: usize) {
        self.max_transfer = self.max_transfer.min(max_transfer);
    }
    /// Index of the slot the next submitted command will use, for callers that keep
    /// per-slot data of their own (a Dataset Management range, say). `None` when full.
    pub fn next_slot(&self) -> Option<usize> {
        (self.free_head != NONE).then_some(self.free_head as usize)
    }
    /// How commands point to their data from now on (default [`DataPointer::Prp`]). SGLs
    /// only for controllers that report SGL support (Identify SGLS), on I/O queues.
    pub fn set_data_pointer(&mut self, dp: DataPointer) {
        self.sgl = dp == DataPointer::Sgl;
    }
    /// How commands point to their data.
    pub fn data_pointer(&self) -> DataPointer {
        if self.sgl {
            DataPointer::Sgl
        } else {
            DataPointer::Prp
        }
    }
    /// Diagnostic counters.
    pub fn stats(&self) -> QueueStats {
        self.stats
    }
    /// The rings.
    pub fn rings(&self) -> &Q {
        &self.rings
    }
    /// The rings, to change them (a transport's own state, say).
    pub fn rings_mut(&mut self) -> &mut Q {
        &mut self.rings
    }

    /// Takes a free slot, advances its generation and returns (index, cid).
    #[inline]
    fn alloc_slot(&mut self) -> (u16, u16) {
        let idx = self.free_head;
        debug_assert!(idx != NONE);
        // The generation is the CID's high bits: adding one there wraps it within them and
        // keeps the index (index_bits <= 16 - MIN_GENERATION_BITS, see `new`).
        let step = self.cid_step;
        let slot = &mut self.slots.as_mut()[idx as usize];
        self.free_head = slot.next_free;
        let cid = next_cid(slot.state.cid(), step);
        slot.state = SlotState::new(cid, NONE, 0, IN_FLIGHT | PART);
        self.free_count -= 1;
        (idx, cid)
    }

    #[inline]
    fn free_slot(&mut self, idx: u16) {
        let head = self.free_head;
        let slot = &mut self.slots.as_mut()[idx as usize];
        slot.state = SlotState::free(slot.state.cid());
        slot.next_free = head;
        self.free_head = idx;
        self.free_count += 1;
    }

    fn prp_list(&self, idx: u16) -> Option<DmaRegion> {
        if self.prp_bytes_per_slot == 0 {
            return None;
        }
        self.prp.sub(
            idx as usize * self.prp_bytes_per_slot,
            self.prp_bytes_per_slot,
        )
    }

    /// PRP1 and PRP2 for `data`, with the PRP list (when it spans more than two pages) in
    /// the list pages of slot `slot`.
    #[inline]
    fn prps(&self, iova: u64, len: usize, slot: u16) -> Result<(u64, u64), PrpError> {
        match prp::without_list(iova, len, self.page_size) {
            Some(p) => Ok(p),
            None => self.prps_with_list(iova, len, slot),
        }
    }

    #[inline(never)]
    fn prps_with_list(&self, iova: u64, len: usize, slot: u16) -> Result<(u64, u64), PrpError> {
        let list = self.prp_list(slot);
        prp::build(iova, len, self.page_size, list.as_ref())
    }

    /// Submits one command with an optional data buffer (at most the maximum transfer size).
    /// The doorbell is written by the next [`poll`](Self::poll) or [`ring`](Self::ring).
    pub fn submit(
        &mut self,
        cmd: Command,
        data: Option<DmaRegion>,
        ctx: T,
    ) -> Result<(), SubmitError> {
        if let Some(d) = &data {
            if d.len() > self.max_transfer {
                return Err(SubmitError::ExceedsMaxTransfer {
                    len: d.len(),
                    max: self.max_transfer,
                });
            }
        }
        self.submit_one(cmd, data.map(|d| (d.iova(), d.len())), ctx)
    }

    /// Submits `cmd` as one command, with `data` (IOVA and length, within the maximum
    /// transfer size) described by its PRPs.
    #[inline(always)]
    fn submit_one(
        &mut self,
        cmd: Command,
        data: Option<(u64, usize)>,
        ctx: T,
    ) -> Result<(), SubmitError> {
        // The head of the free list becomes the request's only slot.
        let idx = self.free_head;
        if idx == NONE {
            return Err(SubmitError::QueueFull);
        }
        let mut e = cmd.0;
        if let Some((iova, len)) = data {
            if self.sgl {
                (e.prp1, e.prp2) = sgl::single(iova, len)?;
                e.set_psdt(PSDT_SGL);
            } else {
                (e.prp1, e.prp2) = self.prps(iova, len, idx)?;
            }
        }
        let step = self.cid_step;
        let Some(slot) = self.slots.as_mut().get_mut(idx as usize) else {
            return Err(SubmitError::QueueFull); // not reached: free slots are in range
        };
        e.cid = next_cid(slot.state.cid(), step);
        // Written before the slot is taken; the controller sees it only after the doorbell.
        if !self.rings.push(&e) {
            return Err(SubmitError::QueueFull);
        }
        slot.state = SlotState::single(e.cid);
        slot.result.opcode = e.opcode;
        slot.ctx = Some(ctx);
        self.free_head = slot.next_free;
        self.free_count -= 1;
        self.cq_debt += 1;
        Ok(())
    }

    /// Submits a read/write/compare-like command (`cmd` carries opcode, NSID and flags) for
    /// `data.len() / block_size` blocks starting at `slba`, split into several commands when
    /// it exceeds the maximum transfer size or 65536 blocks. The context is handed back once,
    /// when every part has completed; the first failing part's status wins.
    #[inline(always)]
    pub fn submit_io(
        &mut self,
        cmd: Command,
        slba: u64,
        block_size: u32,
        data: DmaRegion,
        ctx: T,
    ) -> Result<(), SubmitError> {
        let len = data.len();
        // The common case, one command, without a division: NVMe block sizes are powers of
        // two (2^LBADS). Anything else (and every error) takes the general path. With
        // `last` the index of the last byte (wrapping for an empty buffer, which the block
        // count check then refuses): 1 <= len <= max_transfer, at most 65536 blocks, whole
        // blocks.
        if block_size.is_power_of_two() {
            let shift = block_size.trailing_zeros();
            let last = len.wrapping_sub(1);
            if last < self.max_transfer
                && last >> shift < MAX_BLOCKS_PER_COMMAND as usize
                && len & (block_size as usize - 1) == 0
            {
                let data = Some((data.iova(), len));
                let blocks = (len >> shift) as u32;
                return self.submit_one(cmd.with_lba_range(slba, blocks), data, ctx);
            }
        }
        self.submit_split(&cmd.clone(), slba, block_size, data, ctx)
    }

    /// [`submit_io`](Self::submit_io) for a caller that has counted the blocks already:
    /// `data` should be `blocks` blocks of `1 << block_shift` bytes. The common case, one
    /// command, is a shift and a few compares; anything else (every error included) takes
    /// the general path, which checks everything again and goes by the data's length.
    #[inline(always)]
    pub fn submit_blocks(
        &mut self,
        cmd: Command,
        slba: u64,
        blocks: usize,
        block_shift: u32,
        data: DmaRegion,
        ctx: T,
    ) -> Result<(), SubmitError> {
        let len = data.len();
        if len != 0
            && len <= self.max_transfer
            && blocks <= MAX_BLOCKS_PER_COMMAND as usize
            && block_shift < 32
            && (blocks as u64) << block_shift == len as u64
        {
            let data = Some((data.iova(), len));
            return self.submit_one(cmd.with_lba_range(slba, blocks as u32), data, ctx);
        }
        let block_size = 1u32.checked_shl(block_shift).unwrap_or(0);
        self.submit_split(&cmd.clone(), slba, block_size, data, ctx)
    }

    /// [`submit_io`](Self::submit_io) in general: checks, then as many commands as it takes.
    #[inline(never)]
    fn submit_split(
        &mut self,
        cmd: &Command,
        slba: u64,
        block_size: u32,
        data: DmaRegion,
        ctx: T,
    ) -> Result<(), SubmitError> {
        let len = data.len();
        if block_size == 0 || len == 0 || !len.is_multiple_of(block_size as usize) {
            return Err(SubmitError::BadLength { len, block_size });
        }
        if data.iova() & 3 != 0 {
            return Err(if self.sgl {
                SubmitError::Sgl(SglError::Misaligned(data.iova()))
            } else {
                SubmitError::Prp(PrpError::Misaligned(data.iova()))
            });
        }
        let blocks = (len / block_size as usize) as u64;
        let chunk_blocks =
            ((self.max_transfer / block_size as usize) as u64).min(MAX_BLOCKS_PER_COMMAND as u64);
        if chunk_blocks == 0 {
            return Err(SubmitError::ExceedsMaxTransfer {
                len: block_size as usize,
                max: self.max_transfer,
            });
        }
        let parts = blocks.div_ceil(chunk_blocks) as usize;
        let size = self.rings.size();
        if parts > self.capacity as usize || parts > size as usize - 1 {
            return Err(SubmitError::TooLarge {
                commands: parts,
                capacity: self.capacity.min((size - 1) as u16) as usize,
            });
        }
        if parts > self.free_count as usize || parts > self.rings.free() as usize {
            return Err(SubmitError::QueueFull);
        }
        let chunk_bytes = chunk_blocks as usize * block_size as usize;
        let mut head = NONE;
        let mut ctx = Some(ctx);
        for part in 0..parts {
            let offset = part * chunk_bytes;
            let part_len = chunk_bytes.min(len - offset);
            let part_blocks = (part_len / block_size as usize) as u32;
            let built = match data.sub(offset, part_len) {
                None => Err(SubmitError::Prp(PrpError::Empty)),
                Some(region) if self.sgl => {
                    sgl::single(region.iova(), part_len).map_err(SubmitError::from)
                }
                Some(region) => {
                    let list = self.prp_list(self.free_head);
                    prp::build(region.iova(), part_len, self.page_size, list.as_ref())
                        .map_err(SubmitError::from)
                }
            };
            let (prp1, prp2) = match built {
                Ok(p) => p,
                Err(e) => {
                    // Never leave a part of a request behind: take back the parts already
                    // in the ring (the doorbell has not been written since they were put
                    // there) and their slots.
                    self.unwind(head, part);
                    return Err(e);
                }
            };
            let (idx, cid) = self.alloc_slot();
            if head == NONE {
                head = idx;
            }
            let mut e = cmd
                .with_lba_range(slba + part as u64 * chunk_blocks, part_blocks)
                .0;
            e.cid = cid;
            e.prp1 = prp1;
            e.prp2 = prp2;
            if self.sgl {
                e.set_psdt(PSDT_SGL);
            }
            let slot = &mut self.slots.as_mut()[idx as usize];
            let pending = if idx == head { parts as u16 } else { 0 };
            slot.state = SlotState::new(cid, head, pending, IN_FLIGHT | PART);
            if idx == head {
                slot.result = Completion {
                    dw0: 0,
                    dw1: 0,
                    status: Status::SUCCESS,
                    opcode: e.opcode,
                };
                slot.ctx = ctx.take();
            }
            if !self.rings.push(&e) {
                // Not reached for rings that count their free entries exactly: take back
                // what this request pushed, this part's slot included.
                self.unwind(head, part);
                return Err(SubmitError::QueueFull);
            }
        }
        self.cq_debt += parts as u32;
        self.split_extra += parts as u16 - 1;
        Ok(())
    }

    /// Takes back the first `parts` commands of the request whose head slot is `head`, just
    /// put in the ring and not yet announced to the controller, and frees every slot the
    /// request took (one taken for a part not pushed included).
    #[cold]
    fn unwind(&mut self, head: u16, parts: usize) {
        if parts != 0 {
            self.rings.unpush(parts as u32);
        }
        if head == NONE {
            return;
        }
        for i in 0..self.capacity {
            let s = &mut self.slots.as_mut()[i as usize];
            if s.state.in_flight() && s.state.head() == head {
                s.ctx = None;
                self.free_slot(i);
            }
        }
    }

    /// Writes the submission doorbell if anything was submitted since the last write, after
    /// the completion queue's head doorbell when the controller could otherwise find that
    /// queue full (see the module documentation).
    #[inline]
    pub fn ring(&mut self) {
        self.report_cq_head_if_needed();
        if self.rings.ring_sq() {
            self.stats.sq_doorbells += 1;
        }
    }

    /// Writes the completion queue's head doorbell now if entries were consumed since the
    /// last report, whatever the lazy rule says. A queue pair driven by interrupts calls it
    /// before it sleeps: the controller then sees every posted entry consumed, so an entry
    /// posted afterwards raises a new interrupt.
    #[cold]
    pub fn report_cq_head(&mut self) {
        // The entries consumed so far no longer count against the controller's free space.
        let unreported = self.rings.cq_unreported();
        self.cq_debt -= unreported;
        if self.rings.ring_cq() {
            self.stats.cq_doorbells += 1;
        }
    }

    /// Writes the completion queue's head doorbell if the consumed entries not yet reported
    /// plus the commands that may still complete (each may post one entry) exceed the N-1
    /// entries a ring of N can hold.
    #[inline]
    fn report_cq_head_if_needed(&mut self) {
        if self.cq_debt > self.cq_limit {
            self.report_cq_head();
        }
    }

    /// Rings the doorbell for pending submissions, then processes up to `max` completion
    /// entries, calling `f` with the context and result of every request that finished.
    /// Returns the number of requests finished. The completion queue's head doorbell is
    /// written only when it must be (see the module documentation).
    #[inline]
    pub fn poll<F: FnMut(T, Completion)>(&mut self, max: usize, mut f: F) -> usize {
        self.ring();
        let mut reaped = 0;
        let mut finished = 0;
        // The controller's SQ head only moves forward: the last entry's is the one to keep,
        // recorded (and checked) once per poll.
        let mut sq_head = None;
        while reaped < max {
            let Some(cqe) = self.rings.pop() else { break };
            reaped += 1;
            sq_head = Some(cqe.sq_head);
            finished += self.complete(cqe, &mut f) as usize;
            // Nothing left in flight: the controller has nothing more to post, so the next
            // entry is not looked at (at depth 1, a read of the ring after every completion).
            // A stale entry there waits for the next poll.
            if self.free_count == self.capacity {
                break;
            }
        }
        if let Some(head) = sq_head {
            if !self.rings.update_sq_head(head) {
                self.stats.bad_sq_heads += 1;
            }
        }
        // Every entry consumed that finished a command left `cq_debt` as it was (one more
        // unreported, one fewer to come); a stale one (no command of ours) made it grow, and
        // `stale` checked it there.
        finished
    }

    /// Matches a completion entry to its command and, when it finishes the request, calls
    /// `f` with the request's context and result. Returns whether it did.
    #[inline]
    fn complete<F: FnMut(T, Completion)>(&mut self, cqe: CompletionEntry, f: &mut F) -> bool {
        let idx = cqe.cid & self.index_mask;
        let head = self.free_head;
        // The usual case, a request of one command, in one compare of the state word: in
        // flight, this use's CID, its own head, one command pending, not a part.
        let (ctx, result) = match self.slots.as_mut().get_mut(idx as usize) {
            Some(s) if s.state == SlotState::single(cqe.cid) => {
                let ctx = s.ctx.take();
                s.state = SlotState::single(cqe.cid).freed();
                s.next_free = head;
                self.free_head = idx;
                self.free_count += 1;
                let result = Completion {
                    dw0: cqe.dw0,
                    dw1: cqe.dw1,
                    status: cqe.status(),
                    opcode: s.result.opcode,
                };
                (ctx, result)
            }
            _ => match self.complete_other(idx, cqe.cid, cqe.dw0, cqe.dw1, cqe.status()) {
                Some((ctx, c)) => (Some(ctx), c),
                None => return false,
            },
        };
        // One call of `f` (the caller's closure is inlined once).
        match ctx {
            Some(c) => {
                f(c, result);
                true
            }
            None => false,
        }
    }

    /// [`complete`](Self::complete) for anything but a request of one command: a command
    /// of a split request, or a stale completion (no command of ours has its CID; slots
    /// past the capacity are never in flight).
    #[inline(never)]
    fn complete_other(
        &mut self,
        idx: u16,
        cid: u16,
        dw0: u32,
        dw1: u32,
        status: Status,
    ) -> Option<(T, Completion)> {
        let slots = self.slots.as_mut();
        let part = match slots.get(idx as usize) {
            Some(s) => {
                let st = s.state;
                st.in_flight()
                    && st.0 & PART != 0
                    && st.cid() == cid
                    && (st.head() as usize) < slots.len()
            }
            None => false,
        };
        if !part {
            self.stale();
            return None;
        }
        let head = slots[idx as usize].state.head();
        let st = slots[idx as usize].state;
        slots[idx as usize].state = SlotState(st.0 & !IN_FLIGHT);
        let h = &mut slots[head as usize];
        if h.state.pending() == 0 {
            // Not reached: a head keeps a command pending until its last part completes.
            self.stale();
            return None;
        }
        if h.result.status.is_success() {
            h.result = Completion {
                dw0,
                dw1,
                status,
                opcode: h.result.opcode,
            };
        }
        h.state = SlotState(h.state.0 - ONE_PENDING);
        let done = h.state.pending() == 0;
        if idx != head {
            self.free_slot(idx);
            self.split_extra -= 1;
        }
        if !done {
            return None;
        }
        let h = &mut self.slots.as_mut()[head as usize];
        let ctx = h.ctx.take();
        let result = h.result;
        self.free_slot(head);
        ctx.map(|c| (c, result))
    }

    /// A completion entry that finished nothing of ours: counted, and one more entry the
    /// controller counts as occupied (it finished no command that was counted as still to
    /// come), so the lazy head rule is checked again here rather than after every poll.
    #[cold]
    fn stale(&mut self) {
        self.stats.stale_completions += 1;
        self.cq_debt += 1;
        self.report_cq_head_if_needed();
    }

    /// The command identifier of the request whose head slot is `slot` (see
    /// [`next_slot`](Self::next_slot)), while it is outstanding: it identifies this use of
    /// the slot (a later request in the same slot has another). `None` when no request
    /// starts there. For a watchdog that scans the slots now and then (not on every poll).
    pub fn request_cid(&mut self, slot: usize) -> Option<u16> {
        if slot >= self.capacity as usize {
            return None;
        }
        let s = &self.slots.as_mut()[slot];
        // Only the slot a request starts in holds its context, while it is outstanding.
        s.ctx.is_some().then_some(s.state.cid())
    }

    /// The command identifier of a command of the request whose head slot is `slot` that
    /// the controller has not completed yet: the one an Abort command should name (a split
    /// request's first part may have completed while another is still out). `None` when
    /// the request is not outstanding.
    pub fn abortable_cid(&mut self, slot: usize) -> Option<u16> {
        let cid = self.request_cid(slot)?;
        let head = slot as u16;
        let cap = self.capacity as usize;
        let slots = self.slots.as_mut();
        if slots[slot].state.in_flight() {
            return Some(cid);
        }
        let part =
            (0..cap).find(|&i| slots[i].state.in_flight() && slots[i].state.head() == head)?;
        Some(slots[part].state.cid())
    }

    /// Completes every outstanding request with `status` (after the controller was reset or
    /// the queue deleted, when no completion will come) and empties both rings.
    pub fn abort_all<F: FnMut(T, Completion)>(&mut self, status: Status, mut f: F) -> usize {
        let cap = self.capacity as usize;
        let mut n = 0;
        // Only the slot a request starts in holds its context.
        for s in self.slots.as_mut()[..cap].iter_mut() {
            if let Some(ctx) = s.ctx.take() {
                n += 1;
                f(
                    ctx,
                    Completion {
                        dw0: 0,
                        dw1: 0,
                        status,
                        opcode: s.result.opcode,
                    },
                );
            }
        }
        self.rings.reset();
        self.reset_slots();
        n
    }

    /// The status used by [`abort_all`](Self::abort_all) callers for requests lost to a
    /// queue deletion.
    pub const ABORTED: Status = Status::generic(GenericStatus::AbortedSqDeletion);
}

#[cfg(test)]
mod tests;
