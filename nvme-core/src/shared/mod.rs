//! The admin queue shared by several processes.
//!
//! One controller has one admin queue; every process of a group submits to it and each sees
//! only the completions of its own commands. All state lives in [`SharedAdminState`], a
//! `#[repr(C)]` block of atomics placed in shared memory by the host: no pointers, valid when
//! zero-filled, mapped at any address in each process (the rings and PRP list pages are
//! described per process by [`SharedAdminQueue`]'s own mapping of the same memory).
//!
//! Protocol (every step under the group's [`RobustLock`]):
//! - **submit**: claim a free slot (state CLAIMED, owner = the submitter), write the entry,
//!   publish the new SQ tail, mark the slot SUBMITTED, write the doorbell.
//! - **reap**: for each new completion entry, look the slot up (index and generation are
//!   checked), hand the completion to the owner's mailbox (or straight to the caller when it
//!   is the owner), free the slot, advance the shared CQ head, write the head doorbell.
//! - **mailboxes** are single-producer (whoever holds the lock) single-consumer (the owner,
//!   without the lock) rings.
//!
//! A process may die at any instruction. The next lock holder is told (the lock is robust)
//! and calls [`SharedAdminQueue::recover`]: it frees slots that were claimed but never
//! published, rewrites the doorbells from the shared tail and head, and carries on. A step
//! replayed after a death is harmless: a completion for a freed or reused slot fails the
//! generation check and is dropped, and owners ignore mailbox entries whose tag they are not
//! waiting for. Completions for a process that is gone are dropped: the mailbox's owner id
//! (member index and epoch) no longer matches.

use core::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use core::time::Duration;

use nvme_regs::registers::{cq_head_doorbell, offset, sq_tail_doorbell, Cap};
use nvme_regs::{CompletionEntry, Status, SubmissionEntry};

use crate::cmd::Command;
use crate::dma::{DmaRegion, CQE_SIZE, SQE_SIZE};
use crate::hal::{LockOutcome, RegisterAccess, RobustLock};
use crate::prp;
use crate::qpair::{Completion, QueueConfig, SubmitError};

/// Processes a group can hold.
pub const MAX_MEMBERS: usize = 64;
/// Admin commands one process may have outstanding (its mailbox size).
pub const MAILBOX_LEN: usize = 16;
/// Largest admin queue the shared protocol supports (entries).
pub const MAX_ADMIN_ENTRIES: u32 = 256;
const SLOTS: usize = MAX_ADMIN_ENTRIES as usize - 1;
const INDEX_BITS: u32 = 8;

const FREE: u32 = 0;
const CLAIMED: u32 = 1;
const SUBMITTED: u32 = 2;

/// Identifies one process's membership: member index and an epoch that changes every time
/// the index is reused. Zero means "nobody".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnerId(u32);

impl OwnerId {
    /// The id of member `index` (< [`MAX_MEMBERS`]) in its `epoch`.
    pub const fn new(index: usize, epoch: u32) -> OwnerId {
        OwnerId((epoch << 8) | (index as u32 + 1))
    }
    /// The member index.
    pub const fn index(self) -> usize {
        (self.0 & 0xff) as usize - 1
    }
    /// The raw value stored in shared memory.
    pub const fn raw(self) -> u32 {
        self.0
    }
    /// The group itself, owner of the Asynchronous Event Requests whose completions go to
    /// every member (see [`SharedAdminQueue::enable_events`]).
    pub const EVENTS: OwnerId = OwnerId(u32::MAX);
}

/// Asynchronous event completions (dword 0) kept for members to read.
pub const EVENTS_LEN: usize = 16;

#[repr(C)]
struct AdminSlot {
    state: AtomicU32,
    owner: AtomicU32,
    generation: AtomicU32,
    _pad: u32,
    tag: AtomicU64,
}

#[repr(C)]
struct MailEntry {
    tag: AtomicU64,
    dw0: AtomicU32,
    dw1: AtomicU32,
    status: AtomicU32,
    _pad: u32,
}

#[repr(C)]
struct Mailbox {
    /// Consumer position (the owner advances it).
    head: AtomicU32,
    /// Producer position (the lock holder advances it).
    tail: AtomicU32,
    /// The owner this mailbox currently belongs to.
    owner: AtomicU32,
    /// Commands submitted by the owner and not yet consumed.
    outstanding: AtomicU32,
    entries: [MailEntry; MAILBOX_LEN],
}

/// The admin queue's shared state. Valid when zero-filled; [`SharedAdminState::configure`]
/// sets the geometry once.
#[repr(C)]
pub struct SharedAdminState {
    entries: AtomicU32,
    page_size: AtomicU32,
    prp_bytes_per_slot: AtomicU32,
    dstrd: AtomicU32,
    max_transfer: AtomicU64,
    sq_tail: AtomicU32,
    sq_head: AtomicU32,
    /// CQ head in bits 30:0, expected phase in bit 31.
    cq_head_phase: AtomicU32,
    _pad: u32,
    stale_completions: AtomicU64,
    dropped_for_dead: AtomicU64,
    /// Asynchronous Event Requests the group keeps outstanding, and how many are.
    aer_target: AtomicU32,
    aer_outstanding: AtomicU32,
    /// Number of asynchronous events ever recorded; event `n` is `events[n % EVENTS_LEN]`.
    events_seq: AtomicU64,
    events: [AtomicU32; EVENTS_LEN],
    /// Controller reset generation: odd while a reset is under way (or after one failed),
    /// advanced by two per reset.
    reset_gen: AtomicU64,
    /// The member resetting the controller (0: nobody; with an odd generation, the last
    /// reset failed and the controller needs another).
    reset_owner: AtomicU32,
    _pad2: u32,
    slots: [AdminSlot; SLOTS],
    mailboxes: [Mailbox; MAX_MEMBERS],
}

/// Errors configuring the shared admin queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SharedAdminError {
    /// The queue size is outside 2..=[`MAX_ADMIN_ENTRIES`].
    BadSize(u32),
    /// A ring or the PRP area is smaller than the geometry needs.
    RegionTooSmall,
    /// The shared state was never configured (or is corrupt).
    NotConfigured,
    /// The doorbell stride in the shared state is not the controller's (CAP.DSTRD): with
    /// it, this process would ring other queues' doorbells.
    WrongDoorbellStride {
        /// The stride exponent found in the shared state.
        shared: u32,
        /// The controller's CAP.DSTRD.
        controller: u8,
    },
}

impl core::fmt::Display for SharedAdminError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SharedAdminError::BadSize(n) => {
                write!(
                    f,
                    "shared admin queue of {n} entries: must be 2..={MAX_ADMIN_ENTRIES}"
                )
            }
            SharedAdminError::RegionTooSmall => write!(f, "shared admin queue memory is too small"),
            SharedAdminError::NotConfigured => {
                write!(f, "shared admin queue state is not configured")
            }
            SharedAdminError::WrongDoorbellStride { shared, controller } => write!(
                f,
                "the shared admin queue's doorbell stride exponent is {shared}, the controller's CAP.DSTRD is {controller}: the shared state is damaged"
            ),
        }
    }
}

impl core::error::Error for SharedAdminError {}

/// Why a command was not put in the shared admin queue. Nothing was submitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminSubmitError {
    /// The command itself was refused (queue full, data too large, PRPs).
    Submit(SubmitError),
    /// The group's lock stayed held longer than the bound: its holder is alive but stopped
    /// or stuck (a dead holder is recovered from, not waited for).
    LockTimeout,
    /// The shared state's geometry is not valid (corrupt or never configured).
    Corrupt(SharedAdminError),
    /// Another member is resetting the controller: retry once it is done.
    Resetting,
    /// The last reset did not bring the controller back: it needs another reset.
    NeedsReset,
}

impl core::fmt::Display for AdminSubmitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            AdminSubmitError::Submit(e) => write!(f, "{e}"),
            AdminSubmitError::LockTimeout => write!(
                f,
                "the shared admin queue's lock stayed held past the bound: another process of the group holds it and is stopped or stuck (a debugger, SIGSTOP?)"
            ),
            AdminSubmitError::Corrupt(e) => write!(f, "{e}"),
            AdminSubmitError::Resetting => write!(
                f,
                "another process of the group is resetting the controller: retry when it is done"
            ),
            AdminSubmitError::NeedsReset => write!(
                f,
                "the controller did not come back from its last reset: it needs another reset"
            ),
        }
    }
}

impl core::error::Error for AdminSubmitError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            AdminSubmitError::Submit(e) => Some(e),
            AdminSubmitError::Corrupt(e) => Some(e),
            AdminSubmitError::LockTimeout
            | AdminSubmitError::Resetting
            | AdminSubmitError::NeedsReset => None,
        }
    }
}

impl From<SubmitError> for AdminSubmitError {
    fn from(e: SubmitError) -> Self {
        AdminSubmitError::Submit(e)
    }
}

impl From<prp::PrpError> for AdminSubmitError {
    fn from(e: prp::PrpError) -> Self {
        AdminSubmitError::Submit(e.into())
    }
}

/// The geometry of the shared admin queue, read once from shared memory and validated.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    entries: u32,
    page_size: usize,
    prp_bytes_per_slot: usize,
    max_transfer: usize,
    sq_doorbell: usize,
    cq_doorbell: usize,
}

impl SharedAdminState {
    /// Sets the geometry. Called once, by the process that creates the group, on zeroed
    /// memory, before any other process uses it.
    pub fn configure(
        &self,
        entries: u32,
        page_size: usize,
        max_transfer: usize,
        dstrd: u8,
    ) -> Result<(), SharedAdminError> {
        if !(2..=MAX_ADMIN_ENTRIES).contains(&entries) {
            return Err(SharedAdminError::BadSize(entries));
        }
        self.entries.store(entries, Ordering::Relaxed);
        self.page_size.store(page_size as u32, Ordering::Relaxed);
        let prp_pages = prp::list_pages_for_transfer(max_transfer, page_size);
        self.prp_bytes_per_slot
            .store((prp_pages * page_size) as u32, Ordering::Relaxed);
        self.max_transfer
            .store(max_transfer as u64, Ordering::Relaxed);
        self.dstrd.store(dstrd as u32, Ordering::Relaxed);
        self.sq_tail.store(0, Ordering::Relaxed);
        self.sq_head.store(0, Ordering::Relaxed);
        self.cq_head_phase.store(1 << 31, Ordering::Release);
        Ok(())
    }
    /// Lowers the largest admin transfer (once the controller's MDTS is known; the PRP
    /// list areas stay sized for the configured value).
    pub fn lower_max_transfer(&self, max_transfer: usize) {
        self.max_transfer
            .fetch_min(max_transfer as u64, Ordering::Relaxed);
    }
    /// Bytes of PRP list memory the configured queue needs (one area per slot).
    pub const fn prp_len(entries: u32, page_size: usize, max_transfer: usize) -> usize {
        QueueConfig::prp_len(entries, page_size, max_transfer)
    }
    /// The geometry, each value read once and checked: a process of the group that wrote
    /// nonsense here gets the other members an error, never an access outside their rings.
    /// `dstrd` is the controller's CAP.DSTRD, as this process read it.
    fn geometry(
        &self,
        sq: &DmaRegion,
        cq: &DmaRegion,
        prp: &DmaRegion,
        controller_dstrd: u8,
    ) -> Result<Geometry, SharedAdminError> {
        let entries = self.entries.load(Ordering::Acquire);
        let page_size = self.page_size.load(Ordering::Relaxed) as usize;
        let prp_bytes_per_slot = self.prp_bytes_per_slot.load(Ordering::Relaxed) as usize;
        let max_transfer = usize::try_from(self.max_transfer.load(Ordering::Relaxed))
            .map_err(|_| SharedAdminError::NotConfigured)?;
        let dstrd = self.dstrd.load(Ordering::Relaxed);
        if !(2..=MAX_ADMIN_ENTRIES).contains(&entries)
            || !page_size.is_power_of_two()
            || !(4096..=1 << 27).contains(&page_size)
            || dstrd > 15
        {
            return Err(SharedAdminError::NotConfigured);
        }
        if dstrd != u32::from(controller_dstrd) {
            return Err(SharedAdminError::WrongDoorbellStride {
                shared: dstrd,
                controller: controller_dstrd,
            });
        }
        let slots = entries as usize - 1;
        let fits = sq.len() >= entries as usize * SQE_SIZE
            && cq.len() >= entries as usize * CQE_SIZE
            && prp_bytes_per_slot
                .checked_mul(slots)
                .is_some_and(|n| n <= prp.len());
        if !fits {
            return Err(SharedAdminError::RegionTooSmall);
        }
        Ok(Geometry {
            entries,
            page_size,
            prp_bytes_per_slot,
            max_transfer,
            sq_doorbell: sq_tail_doorbell(0, dstrd as u8),
            cq_doorbell: cq_head_doorbell(0, dstrd as u8),
        })
    }
    /// The number of asynchronous events recorded so far (where a new reader starts).
    pub fn events_seq(&self) -> u64 {
        self.events_seq.load(Ordering::Acquire)
    }
    /// The controller reset generation (odd: a reset is under way, or the last one failed).
    #[inline]
    pub fn reset_generation(&self) -> u64 {
        self.reset_gen.load(Ordering::Acquire)
    }
    /// The member resetting the controller, while the generation is odd (`None`: nobody,
    /// so the last reset failed).
    pub fn reset_owner(&self) -> Option<OwnerId> {
        let raw = self.reset_owner.load(Ordering::Acquire);
        (raw != 0).then_some(OwnerId(raw))
    }
    /// Completions dropped because their slot was free or reused (diagnostics).
    pub fn stale_completions(&self) -> u64 {
        self.stale_completions.load(Ordering::Relaxed)
    }
    /// Completions dropped because their owner had left or died (diagnostics).
    pub fn dropped_for_dead(&self) -> u64 {
        self.dropped_for_dead.load(Ordering::Relaxed)
    }
}

/// One process's handle on the shared admin queue.
pub struct SharedAdminQueue<'a, R: RegisterAccess, L: RobustLock> {
    state: &'a SharedAdminState,
    lock: &'a L,
    regs: R,
    sq: DmaRegion,
    cq: DmaRegion,
    prp: DmaRegion,
    me: OwnerId,
    lock_timeout: Option<Duration>,
    /// The controller's CAP.DSTRD, read by this process: the shared state's must match.
    dstrd: u8,
}

/// The lock held, and the geometry read under it.
struct Held<'g, L: RobustLock + 'g> {
    _guard: L::Guard<'g>,
    geo: Geometry,
}

impl<'a, R: RegisterAccess, L: RobustLock> SharedAdminQueue<'a, R, L> {
    /// A handle for member `me` over this process's mapping of the rings (`sq`, `cq`: the
    /// configured number of entries) and the PRP list area. Reads the controller's CAP
    /// once, to check the doorbell stride the shared state names.
    pub fn new(
        state: &'a SharedAdminState,
        lock: &'a L,
        regs: R,
        sq: DmaRegion,
        cq: DmaRegion,
        prp: DmaRegion,
        me: OwnerId,
    ) -> Result<Self, SharedAdminError> {
        let dstrd = Cap(regs.read64(offset::CAP)).dstrd();
        state.geometry(&sq, &cq, &prp, dstrd)?;
        if me.index() >= MAX_MEMBERS {
            return Err(SharedAdminError::RegionTooSmall);
        }
        Ok(SharedAdminQueue {
            state,
            lock,
            regs,
            sq,
            cq,
            prp,
            me,
            lock_timeout: None,
            dstrd,
        })
    }

    /// This member's id.
    pub fn owner(&self) -> OwnerId {
        self.me
    }
    /// Ring entries (as configured).
    pub fn entries(&self) -> u32 {
        self.state.entries.load(Ordering::Relaxed)
    }
    /// IOVA of the submission ring (for ASQ).
    pub fn sq_iova(&self) -> u64 {
        self.sq.iova()
    }
    /// IOVA of the completion ring (for ACQ).
    pub fn cq_iova(&self) -> u64 {
        self.cq.iova()
    }

    fn mailbox(&self, index: usize) -> &'a Mailbox {
        &self.state.mailboxes[index]
    }

    /// Takes the lock (waiting within the bound when `wait`, else only if it is free),
    /// recovers the shared state if the previous holder died, and reads the geometry.
    fn take(&self, wait: bool) -> Result<Held<'a, L>, AdminSubmitError> {
        let taken = if wait {
            self.lock.lock(self.lock_timeout)
        } else {
            self.lock.try_lock()
        };
        let (guard, outcome) = taken.ok_or(AdminSubmitError::LockTimeout)?;
        let geo = self
            .state
            .geometry(&self.sq, &self.cq, &self.prp, self.dstrd)
            .map_err(AdminSubmitError::Corrupt)?;
        if outcome == LockOutcome::PreviousOwnerDied {
            self.recover_locked(&geo);
            self.lock.mark_consistent(&guard);
        }
        Ok(Held { _guard: guard, geo })
    }

    /// Bounds how long [`submit`](Self::submit) and a waiting [`poll`](Self::poll) wait for
    /// the lock: a member that is stopped (not dead) while holding it would otherwise stall
    /// every other member's admin commands.
    pub fn with_lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = Some(timeout);
        self
    }

    /// Claims this member's mailbox (after joining; clears whatever an earlier holder of the
    /// index left). Takes the lock (within the bound, if one is set).
    pub fn join(&self) -> Result<(), AdminSubmitError> {
        let _held = self.take(true)?;
        let mb = self.mailbox(self.me.index());
        mb.owner.store(self.me.raw(), Ordering::Relaxed);
        mb.outstanding.store(0, Ordering::Relaxed);
        let tail = mb.tail.load(Ordering::Relaxed);
        mb.head.store(tail, Ordering::Release);
        Ok(())
    }

    /// Releases member `who` (it left or died): its mailbox is disowned, so completions
    /// still on their way to it are dropped, and its claimed-but-unpublished slots are
    /// freed. Takes the lock (within the bound, if one is set; on timeout nothing changes:
    /// the mailbox is reset when its index is next claimed, and late completions for `who`
    /// fail the owner check then).
    pub fn release_member(&self, who: OwnerId) {
        let Ok(_held) = self.take(true) else {
            return;
        };
        let mb = self.mailbox(who.index());
        if mb.owner.load(Ordering::Relaxed) == who.raw() {
            mb.owner.store(0, Ordering::Relaxed);
            mb.outstanding.store(0, Ordering::Relaxed);
        }
        for s in &self.state.slots {
            if s.owner.load(Ordering::Relaxed) == who.raw()
                && s.state.load(Ordering::Relaxed) == CLAIMED
            {
                s.state.store(FREE, Ordering::Relaxed);
                s.owner.store(0, Ordering::Relaxed);
            }
        }
    }

    /// Admin commands of `who` still in the controller's hands (published, not completed).
    /// A survivor waits for them before it unmaps a dead member's memory.
    pub fn in_flight_of(&self, who: OwnerId) -> usize {
        self.state
            .slots
            .iter()
            .filter(|s| {
                s.owner.load(Ordering::Relaxed) == who.raw()
                    && s.state.load(Ordering::Relaxed) == SUBMITTED
            })
            .count()
    }

    /// The command identifier of this member's outstanding command `tag` (submitted and not
    /// completed), for an Abort command to name (SQ id 0). `None` when it is not outstanding
    /// (completed meanwhile, or never submitted). Takes the lock (within the bound, if one
    /// is set).
    pub fn cid_of(&self, tag: u64) -> Result<Option<u16>, AdminSubmitError> {
        let held = self.take(true)?;
        let usable = (held.geo.entries - 1) as usize;
        Ok(self.state.slots[..usable]
            .iter()
            .position(|s| {
                s.owner.load(Ordering::Relaxed) == self.me.raw()
                    && s.state.load(Ordering::Relaxed) == SUBMITTED
                    && s.tag.load(Ordering::Relaxed) == tag
            })
            .map(|idx| {
                let generation = self.state.slots[idx].generation.load(Ordering::Relaxed) as u16;
                (generation << INDEX_BITS) | idx as u16
            }))
    }

    /// Makes the shared state consistent after a holder died mid-step (the lock reports it
    /// to whoever takes it next; this takes it now).
    pub fn recover(&self) -> Result<(), AdminSubmitError> {
        let held = self.take(true)?;
        self.recover_locked(&held.geo);
        Ok(())
    }

    fn recover_locked(&self, geo: &Geometry) {
        // A slot claimed but never published: the entry is not in the ring (the tail was not
        // advanced past it), so nothing will complete it.
        for s in &self.state.slots {
            if s.state.load(Ordering::Relaxed) == CLAIMED {
                s.state.store(FREE, Ordering::Relaxed);
                s.owner.store(0, Ordering::Relaxed);
            }
        }
        // The doorbells may lag the shared positions; rewrite both.
        fence(Ordering::Release);
        let tail = self.state.sq_tail.load(Ordering::Relaxed) % geo.entries;
        self.regs.write32(geo.sq_doorbell, tail);
        let head = (self.state.cq_head_phase.load(Ordering::Relaxed) & 0x7fff_ffff) % geo.entries;
        self.regs.write32(geo.cq_doorbell, head);
    }

    /// Takes the reset on for this member: the generation turns odd and this member is its
    /// owner, so that the other members' admin commands wait ([`AdminSubmitError::Resetting`])
    /// and their I/O queue pairs stop. Refused with `Resetting` while another live member
    /// resets; `dead_owner` is a member known to be dead whose reset this one finishes.
    /// Takes the lock.
    pub fn begin_reset(&self, dead_owner: Option<OwnerId>) -> Result<(), AdminSubmitError> {
        let _held = self.take(true)?;
        let g = self.state.reset_gen.load(Ordering::Relaxed);
        let owner = self.state.reset_owner.load(Ordering::Relaxed);
        if g & 1 == 1 && owner != 0 && owner != self.me.raw() && Some(OwnerId(owner)) != dead_owner
        {
            return Err(AdminSubmitError::Resetting);
        }
        self.state
            .reset_owner
            .store(self.me.raw(), Ordering::Relaxed);
        if g & 1 == 0 {
            self.state.reset_gen.store(g + 1, Ordering::Release);
        }
        Ok(())
    }

    /// Ends this member's reset: the generation turns even when it worked (members reconnect
    /// their queues); otherwise it stays odd with no owner, and admin commands fail with
    /// [`AdminSubmitError::NeedsReset`] until a reset works. Takes the lock.
    pub fn end_reset(&self, ok: bool) -> Result<(), AdminSubmitError> {
        let _held = self.take(true)?;
        if self.state.reset_owner.load(Ordering::Relaxed) != self.me.raw() {
            return Ok(());
        }
        self.state.reset_owner.store(0, Ordering::Relaxed);
        let g = self.state.reset_gen.load(Ordering::Relaxed);
        if ok && g & 1 == 1 {
            self.state.reset_gen.store(g + 1, Ordering::Release);
        }
        Ok(())
    }

    /// May this member send admin commands now, as far as resets go?
    fn reset_allows(&self) -> Result<(), AdminSubmitError> {
        if self.state.reset_gen.load(Ordering::Acquire) & 1 == 0 {
            return Ok(());
        }
        match self.state.reset_owner.load(Ordering::Acquire) {
            0 => Err(AdminSubmitError::NeedsReset),
            o if o == self.me.raw() => Ok(()),
            _ => Err(AdminSubmitError::Resetting),
        }
    }

    /// Starts over after the controller was disabled (a reset): every command still in the
    /// queue completes for its owner with "Command Aborted due to SQ Deletion" (the
    /// controller will never complete it), the group's event requests are counted as gone,
    /// and the rings are empty again at position 0. Call with the controller disabled, then
    /// bring it up again over this queue. Takes the lock.
    pub fn reset_after_disable(&self) -> Result<(), AdminSubmitError> {
        let held = self.take(true)?;
        let aborted = Status::generic(nvme_regs::status::GenericStatus::AbortedSqDeletion);
        for (idx, slot) in self.state.slots.iter().enumerate() {
            match slot.state.load(Ordering::Relaxed) {
                SUBMITTED => {
                    // The completion the controller would have posted, made up here.
                    let generation = slot.generation.load(Ordering::Relaxed) as u16;
                    let cqe = CompletionEntry {
                        dw0: 0,
                        dw1: 0,
                        sq_head: 0,
                        sq_id: 0,
                        cid: (generation << INDEX_BITS) | idx as u16,
                        status: aborted.to_completion_word(false),
                    };
                    self.route(&held.geo, &cqe);
                }
                CLAIMED => {
                    slot.state.store(FREE, Ordering::Relaxed);
                    slot.owner.store(0, Ordering::Relaxed);
                }
                _ => {}
            }
        }
        self.state.aer_outstanding.store(0, Ordering::Relaxed);
        self.state.sq_tail.store(0, Ordering::Relaxed);
        self.state.sq_head.store(0, Ordering::Relaxed);
        if let Some(ring) = self.cq.sub(0, held.geo.entries as usize * CQE_SIZE) {
            ring.zero();
        }
        self.state.cq_head_phase.store(1 << 31, Ordering::Release);
        Ok(())
    }

    /// Submits an admin command with an optional data region (at most the configured maximum
    /// transfer). `tag` comes back with the completion, to this process only.
    pub fn submit(
        &self,
        cmd: Command,
        data: Option<DmaRegion>,
        tag: u64,
    ) -> Result<(), AdminSubmitError> {
        let mb = self.mailbox(self.me.index());
        self.reset_allows()?;
        let held = self.take(true)?;
        if mb.outstanding.load(Ordering::Relaxed) as usize >= MAILBOX_LEN {
            return Err(SubmitError::QueueFull.into());
        }
        self.submit_locked(&held.geo, self.me, cmd, data, tag)?;
        mb.outstanding.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Puts a command in the ring on behalf of `owner`. Lock held.
    fn submit_locked(
        &self,
        geo: &Geometry,
        owner: OwnerId,
        cmd: Command,
        data: Option<DmaRegion>,
        tag: u64,
    ) -> Result<(), AdminSubmitError> {
        if let Some(d) = &data {
            if d.len() > geo.max_transfer {
                return Err(SubmitError::ExceedsMaxTransfer {
                    len: d.len(),
                    max: geo.max_transfer,
                }
                .into());
            }
        }
        let tail = self.state.sq_tail.load(Ordering::Relaxed);
        let head = self.state.sq_head.load(Ordering::Relaxed);
        if tail >= geo.entries || head >= geo.entries {
            return Err(AdminSubmitError::Corrupt(SharedAdminError::NotConfigured));
        }
        let next = (tail + 1) % geo.entries;
        if next == head {
            return Err(SubmitError::QueueFull.into());
        }
        let usable = (geo.entries - 1) as usize;
        let Some(idx) = self.state.slots[..usable]
            .iter()
            .position(|s| s.state.load(Ordering::Relaxed) == FREE)
        else {
            return Err(SubmitError::QueueFull.into());
        };
        let slot = &self.state.slots[idx];
        let (prp1, prp2) = match &data {
            Some(d) => {
                let per_slot = geo.prp_bytes_per_slot;
                let list = (per_slot > 0)
                    .then(|| self.prp.sub(idx * per_slot, per_slot))
                    .flatten();
                prp::build(d.iova(), d.len(), geo.page_size, list.as_ref())?
            }
            None => (cmd.0.prp1, cmd.0.prp2),
        };
        // 1. Claim.
        // (The stored value may be anything a corrupt member wrote: no overflow.)
        let generation = slot.generation.load(Ordering::Relaxed).wrapping_add(1) & 0xff;
        slot.generation.store(generation, Ordering::Relaxed);
        slot.owner.store(owner.raw(), Ordering::Relaxed);
        slot.tag.store(tag, Ordering::Relaxed);
        slot.state.store(CLAIMED, Ordering::Relaxed);
        // 2. Write the entry (the controller does not read it before the doorbell passes it;
        // `tail < entries` and the ring holds `entries` entries, so it is in bounds).
        let mut e: SubmissionEntry = cmd.0;
        e.cid = ((generation as u16) << INDEX_BITS) | idx as u16;
        e.prp1 = prp1;
        e.prp2 = prp2;
        if !self.sq.write_sqe(tail, &e) {
            slot.state.store(FREE, Ordering::Relaxed);
            return Err(AdminSubmitError::Corrupt(SharedAdminError::RegionTooSmall));
        }
        // 3. Publish, 4. mark submitted, 5. ring.
        self.state.sq_tail.store(next, Ordering::Release);
        slot.state.store(SUBMITTED, Ordering::Relaxed);
        fence(Ordering::Release);
        self.regs.write32(geo.sq_doorbell, next);
        Ok(())
    }

    /// Keeps `count` Asynchronous Event Requests outstanding on behalf of the whole group
    /// (0 stops re-arming). Their completions are recorded for every member to read with
    /// [`events_since`](Self::events_since); whoever reaps re-arms. Takes the lock.
    pub fn enable_events(&self, count: u32) -> Result<(), AdminSubmitError> {
        let held = self.take(true)?;
        self.state.aer_target.store(count, Ordering::Relaxed);
        self.rearm_locked(&held.geo)
    }

    fn rearm_locked(&self, geo: &Geometry) -> Result<(), AdminSubmitError> {
        if self.reset_allows().is_err() {
            // Another member is resetting: it re-arms when the controller is back.
            return Ok(());
        }
        while self.state.aer_outstanding.load(Ordering::Relaxed)
            < self.state.aer_target.load(Ordering::Relaxed)
        {
            self.submit_locked(
                geo,
                OwnerId::EVENTS,
                Command::async_event_request(),
                None,
                0,
            )?;
            self.state.aer_outstanding.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Calls `f` with completion dword 0 of every asynchronous event recorded since
    /// `cursor` (a value from an earlier call, or 0), oldest first, and moves the cursor.
    /// Returns how many events were lost because more than [`EVENTS_LEN`] arrived between
    /// two calls.
    pub fn events_since<F: FnMut(u32)>(&self, cursor: &mut u64, mut f: F) -> u64 {
        let seq = self.state.events_seq.load(Ordering::Acquire);
        let first = (*cursor).max(seq.saturating_sub(EVENTS_LEN as u64));
        let lost = first - (*cursor).min(first);
        for n in first..seq {
            f(self.state.events[(n % EVENTS_LEN as u64) as usize].load(Ordering::Relaxed));
        }
        *cursor = seq;
        lost
    }

    /// Moves new completions to their owners and records asynchronous events, without
    /// delivering anything to this process (for a background thread: it must not take the
    /// completions a synchronous caller of this process waits for). Does nothing when the
    /// lock is busy.
    pub fn reap(&self) {
        if let Ok(held) = self.take(false) {
            self.reap_locked(&held.geo);
        }
    }

    /// Delivers this process's completions: first what others left in its mailbox, then (if
    /// it still has commands outstanding and the lock is free, or `wait_for_lock`) whatever
    /// is new in the completion queue. Returns the number delivered.
    pub fn poll<F: FnMut(u64, Completion)>(&self, wait_for_lock: bool, mut f: F) -> usize {
        let mut n = self.drain_mailbox(&mut f);
        let mb = self.mailbox(self.me.index());
        if mb.outstanding.load(Ordering::Relaxed) == 0 {
            return n;
        }
        if let Ok(held) = self.take(wait_for_lock) {
            self.reap_locked(&held.geo);
        }
        n += self.drain_mailbox(&mut f);
        n
    }

    fn drain_mailbox<F: FnMut(u64, Completion)>(&self, f: &mut F) -> usize {
        let mb = self.mailbox(self.me.index());
        let mut head = mb.head.load(Ordering::Relaxed);
        let tail = mb.tail.load(Ordering::Acquire);
        let mut n = 0;
        // A tail far ahead of the head is corruption: deliver at most one mailbox's worth.
        while head != tail && n < MAILBOX_LEN {
            let e = &mb.entries[head as usize % MAILBOX_LEN];
            let c = Completion {
                dw0: e.dw0.load(Ordering::Relaxed),
                dw1: e.dw1.load(Ordering::Relaxed),
                status: Status(e.status.load(Ordering::Relaxed) as u16),
                opcode: 0,
            };
            let tag = e.tag.load(Ordering::Relaxed);
            head = head.wrapping_add(1);
            mb.head.store(head, Ordering::Release);
            let _ = mb
                .outstanding
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
            n += 1;
            f(tag, c);
        }
        n
    }

    /// Moves every new completion to its owner's mailbox. Lock held.
    fn reap_locked(&self, geo: &Geometry) {
        let mut hp = self.state.cq_head_phase.load(Ordering::Relaxed);
        let mut reaped = false;
        loop {
            let head = hp & 0x7fff_ffff;
            let phase = hp >> 31 != 0;
            if head >= geo.entries {
                // Corrupt shared state: start over from a known point rather than index
                // outside the ring.
                hp = 1 << 31;
                self.state.cq_head_phase.store(hp, Ordering::Relaxed);
                break;
            }
            let Some(cqe) = self.cq.read_cqe(head, phase) else {
                break;
            };
            self.route(geo, &cqe);
            if (cqe.sq_head as u32) < geo.entries {
                self.state
                    .sq_head
                    .store(cqe.sq_head as u32, Ordering::Relaxed);
            }
            let next = head + 1;
            hp = if next == geo.entries {
                (!phase as u32) << 31
            } else {
                next | (phase as u32) << 31
            };
            self.state.cq_head_phase.store(hp, Ordering::Release);
            reaped = true;
        }
        if reaped {
            // The entries were read before the doorbell lets the controller reuse them.
            fence(Ordering::Release);
            self.regs.write32(geo.cq_doorbell, hp & 0x7fff_ffff);
            // An event completion frees its request: put another one out. A full queue is
            // retried at the next reap.
            let _ = self.rearm_locked(geo);
        }
    }

    /// Records an asynchronous event completion for every member. Lock held.
    fn record_event(&self, cqe: &CompletionEntry) {
        let status = cqe.status();
        if status.is_command_specific(nvme_regs::status::CommandSpecificStatus::AerLimitExceeded) {
            // More are outstanding than we counted (a holder died between publishing one and
            // counting it): the controller holds enough.
            let target = self.state.aer_target.load(Ordering::Relaxed);
            self.state.aer_outstanding.store(target, Ordering::Relaxed);
            return;
        }
        let _ =
            self.state
                .aer_outstanding
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
        if !status.is_success() {
            // Aborted (e.g. by a reset): not an event.
            return;
        }
        let n = self.state.events_seq.load(Ordering::Relaxed);
        self.state.events[(n % EVENTS_LEN as u64) as usize].store(cqe.dw0, Ordering::Relaxed);
        self.state
            .events_seq
            .store(n.wrapping_add(1), Ordering::Release);
    }

    /// Hands one completion to its owner's mailbox and frees its slot. Lock held.
    fn route(&self, geo: &Geometry, cqe: &CompletionEntry) {
        let idx = (cqe.cid & ((1 << INDEX_BITS) - 1)) as usize;
        let generation = (cqe.cid >> INDEX_BITS) as u32;
        let Some(slot) = self
            .state
            .slots
            .get(idx)
            .filter(|_| idx < (geo.entries - 1) as usize)
        else {
            self.state.stale_completions.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if slot.state.load(Ordering::Relaxed) == FREE
            || slot.generation.load(Ordering::Relaxed) != generation
        {
            self.state.stale_completions.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let owner = slot.owner.load(Ordering::Relaxed);
        let tag = slot.tag.load(Ordering::Relaxed);
        if owner == OwnerId::EVENTS.raw() {
            self.record_event(cqe);
            slot.state.store(FREE, Ordering::Relaxed);
            slot.owner.store(0, Ordering::Relaxed);
            return;
        }
        let member = (owner & 0xff) as usize;
        let mb = (1..=MAX_MEMBERS)
            .contains(&member)
            .then(|| self.mailbox(member - 1));
        match mb {
            Some(mb) if mb.owner.load(Ordering::Relaxed) == owner => {
                let tail = mb.tail.load(Ordering::Relaxed);
                let head = mb.head.load(Ordering::Acquire);
                if tail.wrapping_sub(head) as usize >= MAILBOX_LEN {
                    // Cannot happen while submitters respect MAILBOX_LEN; never overwrite.
                    self.state.dropped_for_dead.fetch_add(1, Ordering::Relaxed);
                } else {
                    let e = &mb.entries[tail as usize % MAILBOX_LEN];
                    e.tag.store(tag, Ordering::Relaxed);
                    e.dw0.store(cqe.dw0, Ordering::Relaxed);
                    e.dw1.store(cqe.dw1, Ordering::Relaxed);
                    e.status.store(cqe.status().0 as u32, Ordering::Relaxed);
                    mb.tail.store(tail.wrapping_add(1), Ordering::Release);
                }
            }
            _ => {
                self.state.dropped_for_dead.fetch_add(1, Ordering::Relaxed);
            }
        }
        slot.state.store(FREE, Ordering::Relaxed);
        slot.owner.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;
