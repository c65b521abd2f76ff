//! The processing thread: register state machine, queues, command dispatch, completions.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nvme_regs::log::ErrorLogEntry;
use nvme_regs::registers::{offset, Aqa, Cc, Csts, Vs};
use nvme_regs::status::GenericStatus;
use nvme_regs::{Status, SubmissionEntry};

use crate::bar::Bar;
use crate::dma::{DmaView, HostMem, Seg};
use crate::stats::add;
use crate::{Namespace, Shared, SimConfig};
use zerocopy::{FromZeros, IntoBytes};

/// Idle time spent spinning before the thread starts sleeping between polls.
const IDLE_SPIN: Duration = Duration::from_micros(30);
/// Sleep per idle poll once spinning is over.
const IDLE_SLEEP: Duration = Duration::from_micros(50);
/// After this long without work the thread polls less often.
const LONG_IDLE: Duration = Duration::from_millis(20);
/// Sleep per idle poll after [`LONG_IDLE`] (bounds the cost of many idle controllers).
const LONG_IDLE_SLEEP: Duration = Duration::from_micros(250);
/// Commands taken from one submission queue before moving to the next.
const BURST: u32 = 64;
/// Error log entries kept (Identify ELPE + 1).
pub(crate) const ERROR_LOG_ENTRIES: usize = 64;
/// Outstanding Asynchronous Event Requests allowed (Identify AERL + 1).
pub(crate) const AER_LIMIT: usize = 4;

/// CSTS.SHST value "shutdown processing complete".
const SHST_COMPLETE: u32 = 2;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    /// CC.EN = 0 and CSTS.RDY = 0.
    Disabled,
    /// CC.EN = 1 seen and valid; CSTS.RDY is set at the deadline.
    Enabling(Instant),
    /// Processing commands.
    Ready,
    /// CC.EN 1 -> 0 processed; CSTS.RDY is cleared at the deadline.
    Disabling(Instant),
    /// CSTS.CFS is set; nothing is processed until CC.EN is cleared.
    Fatal,
}

/// What a shadow doorbell queue's MMIO doorbell holds after the controller looked at it: a
/// value no host writes (doorbells are below the queue size), so any write is seen.
const DOORBELL_SEEN: u32 = u32::MAX;

/// A queue's entries in the shadow doorbell and EventIdx buffers of Doorbell Buffer Config.
pub(crate) struct Shadow {
    /// The 4-byte shadow doorbell (written by the host).
    db: HostMem,
    /// The 4-byte EventIdx (written by the controller).
    ei: HostMem,
}

impl Shadow {
    /// The shadow doorbell's value (acquire: the entries the host wrote before it are
    /// visible).
    fn load(&self) -> u32 {
        self.db.map.atomic_u32(self.db.off).load(Ordering::Acquire)
    }
    fn store(&self, v: u32) {
        self.db
            .map
            .atomic_u32(self.db.off)
            .store(v, Ordering::Release)
    }
    /// Writes EventIdx, then reads the shadow doorbell again: the host writes its shadow
    /// doorbell before it reads EventIdx, so one of the two sides sees the other's update.
    fn set_event_and_reload(&self, v: u32) -> u32 {
        self.ei
            .map
            .atomic_u32(self.ei.off)
            .store(v, Ordering::Release);
        fence(Ordering::SeqCst);
        self.load()
    }
}

/// A submission queue.
pub(crate) struct Sq {
    pub(crate) cqid: u16,
    pub(crate) size: u32,
    pub(crate) head: u32,
    pub(crate) db: usize,
    /// The ring (`size * 64` bytes), kept mapped as long as the queue exists.
    ring: HostMem,
    /// The ring's IOVA range, checked against the DMA table whenever the table changes.
    iova: u64,
    len: usize,
    /// Is the ring's IOVA range still mapped? (False once the host unmapped it while the
    /// queue exists; the controller then neither fetches from it nor records more errors.)
    mapped: bool,
    /// Shadow doorbell (Doorbell Buffer Config): the tail comes from there.
    shadow: Option<Shadow>,
    /// With a shadow doorbell: the MMIO doorbell was written since the controller last
    /// caught up with the shadow tail (QEMU looks at a queue only then).
    kicked: bool,
}

/// A completion queue.
pub(crate) struct Cq {
    size: u32,
    tail: u32,
    head: u32,
    phase: bool,
    db: usize,
    /// The ring (`size * 16` bytes, 16-byte aligned), kept mapped as long as the queue
    /// exists.
    ring: HostMem,
    /// As for [`Sq`].
    iova: u64,
    len: usize,
    mapped: bool,
    /// Completions waiting for the host to free entries (CQ full).
    overflow: VecDeque<Cqe>,
    /// Submission queues that post here.
    pub(crate) sq_refs: u16,
    /// Shadow doorbell (Doorbell Buffer Config): the head comes from there.
    shadow: Option<Shadow>,
    /// Interrupts enabled (IEN) on this vector (IV).
    pub(crate) vector: Option<u16>,
}

impl Cq {
    /// Is there a free entry? Refreshes the head from the doorbell when it looks full.
    #[inline]
    fn has_room(&mut self, bar: &Bar) -> bool {
        let next = if self.tail + 1 == self.size {
            0
        } else {
            self.tail + 1
        };
        if next != self.head {
            return true;
        }
        let h = match &self.shadow {
            Some(sh) => match sh.load() {
                // Still full: ask for an MMIO write once the host moves past this head (this
                // polling model does not need it; a controller that waits for room would).
                h if h == self.head => sh.set_event_and_reload(h),
                h => h,
            },
            None => bar.load32(self.db),
        };
        if h < self.size {
            self.head = h;
        }
        next != self.head
    }

    /// Writes one entry: dwords 0-2, then dword 3 (CID, status, phase) with a release store.
    #[inline]
    fn write(&mut self, e: &Cqe, sq_head: u16) {
        // `tail < size`: the slot is inside the ring, and 16-byte aligned (the base is,
        // checked at creation). The host only reads an entry after seeing the new phase in
        // dword 3, which is stored last with release ordering.
        let (map, slot) = (&self.ring.map, self.ring.off + self.tail as usize * 16);
        map.store_u32_volatile(slot, e.dw0);
        map.store_u32_volatile(slot + 4, 0);
        map.store_u32_volatile(slot + 8, sq_head as u32 | (e.sqid as u32) << 16);
        let status = e.status.to_completion_word(!self.phase);
        map.atomic_u32(slot + 12)
            .store(e.cid as u32 | (status as u32) << 16, Ordering::Release);
        self.tail += 1;
        if self.tail == self.size {
            self.tail = 0;
            self.phase = !self.phase;
        }
    }
}

/// A completion waiting to be posted.
#[derive(Clone, Copy)]
pub(crate) struct Cqe {
    pub(crate) sqid: u16,
    pub(crate) cid: u16,
    pub(crate) status: Status,
    pub(crate) dw0: u32,
    /// SQ head to report if the submission queue is gone by the time the entry is written.
    pub(crate) sq_head: u16,
}

/// A completion held back by a delay fault.
struct Delayed {
    due: Instant,
    cqid: u16,
    cqe: Cqe,
}

/// A command whose execution a fault postponed (data transfer and completion).
struct Postponed {
    due: Instant,
    sqid: u16,
    cqid: u16,
    cmd: SubmissionEntry,
    /// The rest of the fault decision, applied when it completes.
    delay: Option<Duration>,
    drop: bool,
}

/// What executing a command produced.
pub(crate) enum Outcome {
    /// Complete now with this status and dword 0.
    Done(Status, u32),
    /// The command completes later (Asynchronous Event Request).
    Deferred,
}

impl Outcome {
    pub(crate) fn ok() -> Outcome {
        Outcome::Done(Status::SUCCESS, 0)
    }
}

impl From<Status> for Outcome {
    fn from(s: Status) -> Outcome {
        Outcome::Done(s, 0)
    }
}

/// Feature values (reset to defaults by a controller reset).
#[derive(Clone)]
pub(crate) struct Features {
    pub(crate) arbitration: u32,
    pub(crate) power_management: u32,
    /// Over thresholds of the composite temperature (0) and sensor 1.
    pub(crate) temp_over: [u16; 2],
    /// Under thresholds.
    pub(crate) temp_under: [u16; 2],
    pub(crate) error_recovery: u32,
    pub(crate) volatile_write_cache: bool,
    /// Granted I/O submission and completion queues (not 0's based).
    pub(crate) queues: (u16, u16),
    pub(crate) interrupt_coalescing: u32,
    pub(crate) write_atomicity: u32,
    pub(crate) async_event_config: u32,
    pub(crate) keep_alive: u32,
}

/// The controller model owned by the processing thread.
pub(crate) struct Controller {
    pub(crate) cfg: SimConfig,
    cap: u64,
    pub(crate) bar: Bar,
    pub(crate) shared: Arc<Shared>,
    pub(crate) namespaces: Arc<[Namespace]>,
    pub(crate) dma: DmaView,
    state: State,
    csts: u32,
    shutdown_seen: bool,
    /// The never-ready fault held back RDY during the current enable (counted once).
    ready_withheld: bool,
    /// Memory page size from CC.MPS (valid while enabled).
    pub(crate) page_size: usize,
    /// Largest data transfer (MDTS) in bytes.
    pub(crate) max_transfer: usize,
    pub(crate) sqs: Vec<Option<Sq>>,
    pub(crate) cqs: Vec<Option<Cq>>,
    pub(crate) active_sqs: Vec<u16>,
    overflowing: usize,
    delayed: Vec<Delayed>,
    postponed: Vec<Postponed>,
    pub(crate) segs: Vec<Seg>,
    /// Doorbell Buffer Config: IOVAs of the shadow doorbell and EventIdx buffers.
    pub(crate) dbbuf: Option<(u64, u64)>,
    pub(crate) features: Features,
    pub(crate) aer_outstanding: VecDeque<u16>,
    /// Newest first.
    pub(crate) error_log: VecDeque<ErrorLogEntry>,
    pub(crate) error_count: u64,
    pub(crate) media_errors: u64,
    /// Blocks marked by Write Uncorrectable: (nsid, lba).
    pub(crate) uncorrectable: BTreeSet<(u32, u64)>,
    pub(crate) temperature_warning: bool,
    pub(crate) started: Instant,
    /// The device self-test running, if any.
    pub(crate) self_test: Option<crate::mgmt::SelfTest>,
    /// Device self-test results, newest first (at most 20).
    pub(crate) self_test_results: VecDeque<nvme_regs::log::SelfTestResult>,
    /// NSIDs whose attributes changed since the Changed Namespace List log was last read.
    pub(crate) changed_ns: BTreeSet<u32>,
}

pub(crate) fn default_features(cfg: &SimConfig) -> Features {
    Features {
        arbitration: 0,
        power_management: 0,
        temp_over: [crate::admin::WCTEMP, 0xffff],
        temp_under: [0, 0],
        error_recovery: 0,
        volatile_write_cache: true,
        queues: (cfg.max_io_queues, cfg.max_io_queues),
        interrupt_coalescing: 0,
        write_atomicity: 0,
        async_event_config: 0,
        keep_alive: 0,
    }
}

impl Controller {
    pub(crate) fn new(
        cfg: SimConfig,
        bar: Bar,
        shared: Arc<Shared>,
        namespaces: Arc<[Namespace]>,
    ) -> Controller {
        let cap = cfg.cap().0;
        bar.store64(offset::CAP, cap);
        bar.store32(offset::VS, Vs::V1_4.0);
        let nq = cfg.max_io_queues as usize + 1;
        let max_transfer = if cfg.mdts == 0 {
            usize::MAX
        } else {
            (4096usize << cfg.mpsmin) << cfg.mdts
        };
        let dma = DmaView::new(shared.dma.clone());
        Controller {
            features: default_features(&cfg),
            cap,
            bar,
            shared,
            namespaces,
            dma,
            state: State::Disabled,
            csts: 0,
            shutdown_seen: false,
            ready_withheld: false,
            page_size: 4096,
            max_transfer,
            sqs: (0..nq).map(|_| None).collect(),
            cqs: (0..nq).map(|_| None).collect(),
            active_sqs: Vec::with_capacity(nq),
            overflowing: 0,
            delayed: Vec::new(),
            postponed: Vec::new(),
            segs: Vec::with_capacity(64),
            dbbuf: None,
            aer_outstanding: VecDeque::with_capacity(AER_LIMIT),
            error_log: VecDeque::with_capacity(ERROR_LOG_ENTRIES),
            error_count: 0,
            media_errors: 0,
            uncorrectable: BTreeSet::new(),
            temperature_warning: false,
            started: Instant::now(),
            self_test: None,
            self_test_results: VecDeque::with_capacity(nvme_regs::log::self_test::RESULTS),
            changed_ns: BTreeSet::new(),
            cfg,
        }
    }

    /// The thread's main loop: poll, process, back off when idle.
    pub(crate) fn run(mut self) {
        let mut idle_since: Option<Instant> = None;
        while !self.shared.stop.load(Ordering::Acquire) {
            self.dma.sync();
            if self.step() {
                idle_since = None;
                continue;
            }
            let now = Instant::now();
            match idle_since {
                None => idle_since = Some(now),
                Some(t) if now - t >= LONG_IDLE => std::thread::sleep(LONG_IDLE_SLEEP),
                Some(t) if now - t >= IDLE_SPIN => std::thread::sleep(IDLE_SLEEP),
                Some(_) => std::hint::spin_loop(),
            }
        }
    }

    /// One polling pass; returns true when it did something.
    fn step(&mut self) -> bool {
        if self.self_test.is_some() {
            self.check_self_test();
        }
        if self.dma.take_changed() {
            self.revalidate_queues();
        }
        let mut busy = self.poll_registers();
        if self.state != State::Ready {
            return busy;
        }
        if self.overflowing > 0 {
            busy |= self.drain_overflow();
        }
        let mut i = 0;
        while i < self.active_sqs.len() {
            busy |= self.process_sq(self.active_sqs[i]);
            i += 1;
        }
        if !self.delayed.is_empty() {
            busy |= self.post_due_delayed();
        }
        if !self.postponed.is_empty() {
            busy |= self.run_due_postponed();
        }
        if !self.aer_outstanding.is_empty() && self.shared.faults.events_pending() {
            busy |= self.deliver_events();
        }
        busy
    }

    fn set_csts(&mut self, v: u32) {
        self.csts = v;
        self.bar.store32(offset::CSTS, v);
    }

    fn fatal(&mut self, reason: String) {
        *self
            .shared
            .fatal_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(reason);
        // RDY stays as it was: the host's reset (CC.EN = 0, wait for RDY = 0) still works.
        self.set_csts(self.csts | Csts::CFS);
        self.state = State::Fatal;
    }

    /// Follows CC, keeps the read-only registers intact; returns true on a transition.
    fn poll_registers(&mut self) -> bool {
        // Read-only registers: undo host writes.
        if self.bar.load64(offset::CAP) != self.cap {
            self.bar.store64(offset::CAP, self.cap);
        }
        if self.bar.load32(offset::VS) != Vs::V1_4.0 {
            self.bar.store32(offset::VS, Vs::V1_4.0);
        }
        if self.bar.load32(offset::CSTS) != self.csts {
            self.bar.store32(offset::CSTS, self.csts);
        }
        let cc = Cc(self.bar.load32(offset::CC));
        let mut changed = false;

        // Shutdown notification.
        if cc.shn() != 0 && !self.shutdown_seen {
            self.shutdown_seen = true;
            self.set_csts(Csts(self.csts).with_shst(SHST_COMPLETE).0);
            changed = true;
        } else if cc.shn() == 0 && self.shutdown_seen {
            self.shutdown_seen = false;
        }

        if self.shared.faults.take_cfs_request() {
            self.fatal("controller fatal status injected by Faults::raise_cfs".into());
            return true;
        }

        match self.state {
            State::Disabled if cc.en() => {
                add(&self.shared.stats.enables, 1);
                self.set_csts(Csts(self.csts).with_shst(0).0);
                self.ready_withheld = false;
                match self.enable(cc) {
                    Ok(()) => self.state = State::Enabling(Instant::now() + self.cfg.ready_delay),
                    Err(reason) => self.fatal(reason),
                }
                changed = true;
            }
            State::Enabling(due) => {
                if !cc.en() {
                    self.reset();
                    self.state = State::Disabled;
                    changed = true;
                } else if Instant::now() >= due {
                    if self.shared.faults.never_ready() {
                        if !self.ready_withheld {
                            self.ready_withheld = true;
                            self.shared.faults.note_ready_withheld();
                        }
                    } else {
                        self.set_csts(self.csts | Csts::RDY);
                        self.state = State::Ready;
                        changed = true;
                    }
                }
            }
            State::Ready | State::Fatal if !cc.en() => {
                self.reset();
                self.set_csts(self.csts & !Csts::CFS);
                self.state = State::Disabling(Instant::now() + self.cfg.ready_delay);
                changed = true;
            }
            State::Disabling(due) if Instant::now() >= due => {
                self.set_csts(self.csts & !Csts::RDY);
                self.state = State::Disabled;
                changed = true;
            }
            _ => {}
        }
        changed
    }

    /// Validates the admin queue setup and creates the admin queues.
    fn enable(&mut self, cc: Cc) -> Result<(), String> {
        if cc.css() != 0 {
            return Err(format!("CC.CSS {} is not the NVM command set", cc.css()));
        }
        if cc.ams() != 0 {
            return Err(format!(
                "CC.AMS {} is not supported (round robin only)",
                cc.ams()
            ));
        }
        if cc.mps() < self.cfg.mpsmin || cc.mps() > self.cfg.mpsmax {
            return Err(format!(
                "CC.MPS {} is outside CAP.MPSMIN..=MPSMAX ({}..={})",
                cc.mps(),
                self.cfg.mpsmin,
                self.cfg.mpsmax
            ));
        }
        if cc.iosqes() != 0 && cc.iosqes() != 6 {
            return Err(format!("CC.IOSQES {} (must be 6)", cc.iosqes()));
        }
        if cc.iocqes() != 0 && cc.iocqes() != 4 {
            return Err(format!("CC.IOCQES {} (must be 4)", cc.iocqes()));
        }
        let page = 4096usize << cc.mps();
        let aqa = Aqa(self.bar.load32(offset::AQA));
        let max = (self.cfg.mqes as u32 + 1).min(4096);
        for (name, n) in [("ASQS", aqa.asqs()), ("ACQS", aqa.acqs())] {
            if n < 2 || n > max {
                return Err(format!("AQA.{name} gives {n} entries (2..={max} allowed)"));
            }
        }
        let asq = self.bar.load64(offset::ASQ);
        let acq = self.bar.load64(offset::ACQ);
        for (name, a) in [("ASQ", asq), ("ACQ", acq)] {
            if a & (page as u64 - 1) != 0 {
                return Err(format!(
                    "{name} {a:#x} is not aligned to the {page}-byte page"
                ));
            }
        }
        self.page_size = page;
        let cq = self
            .make_cq(acq, aqa.acqs(), 0)
            .map_err(|_| format!("ACQ [{acq:#x}, +{:#x}) is not DMA-mapped", aqa.acqs() * 16))?;
        let sq = self
            .make_sq(asq, aqa.asqs(), 0, 0)
            .map_err(|_| format!("ASQ [{asq:#x}, +{:#x}) is not DMA-mapped", aqa.asqs() * 64))?;
        self.cqs[0] = Some(cq);
        self.sqs[0] = Some(sq);
        if let Some(c) = self.cqs[0].as_mut() {
            c.sq_refs = 1;
        }
        self.active_sqs.push(0);
        Ok(())
    }

    /// Builds a completion queue over `[iova, iova + entries * 16)`.
    pub(crate) fn make_cq(&mut self, iova: u64, entries: u32, qid: u16) -> Result<Cq, Status> {
        let len = entries as usize * 16;
        let ring = self
            .dma
            .translate_owned(iova, len)
            .ok_or_else(|| Status::generic(GenericStatus::DataTransferError).with_dnr())?;
        if !ring.map.is_aligned(ring.off, 16) {
            return Err(Status::generic(GenericStatus::InternalError).with_dnr());
        }
        // A new queue starts at head 0 whatever an earlier queue with this id left in the
        // doorbell register (the register is write-only on real hardware).
        let db = nvme_regs::registers::cq_head_doorbell(qid, self.cfg.dstrd);
        self.bar.store32(db, 0);
        let shadow = self.shadow_of(qid, db)?;
        Ok(Cq {
            shadow,
            size: entries,
            tail: 0,
            head: 0,
            phase: false,
            db,
            ring,
            iova,
            len,
            mapped: true,
            overflow: VecDeque::new(),
            vector: None,
            sq_refs: 0,
        })
    }

    /// Builds a submission queue over `[iova, iova + entries * 64)`.
    pub(crate) fn make_sq(
        &mut self,
        iova: u64,
        entries: u32,
        qid: u16,
        cqid: u16,
    ) -> Result<Sq, Status> {
        let len = entries as usize * 64;
        let ring = self
            .dma
            .translate_owned(iova, len)
            .ok_or_else(|| Status::generic(GenericStatus::DataTransferError).with_dnr())?;
        // As for completion queues: a new queue starts at tail 0.
        let db = nvme_regs::registers::sq_tail_doorbell(qid, self.cfg.dstrd);
        let shadow = self.shadow_of(qid, db)?;
        // With a shadow doorbell, the queue is looked at after its first MMIO write only.
        self.bar
            .store32(db, if shadow.is_some() { DOORBELL_SEEN } else { 0 });
        Ok(Sq {
            shadow,
            kicked: false,
            cqid,
            size: entries,
            head: 0,
            db,
            ring,
            iova,
            len,
            mapped: true,
        })
    }

    /// The shadow doorbell and EventIdx entries of the doorbell at BAR offset `db` of I/O
    /// queue `qid`, when Doorbell Buffer Config gave the buffers (the admin queue keeps MMIO
    /// doorbells). Entries outside the host's mapped memory fail the queue's creation.
    pub(crate) fn shadow_of(&mut self, qid: u16, db: usize) -> Result<Option<Shadow>, Status> {
        let Some((dbs, eis)) = self.dbbuf.filter(|_| qid != 0) else {
            return Ok(None);
        };
        let off = (db - offset::DOORBELLS) as u64;
        let bad = || Status::generic(GenericStatus::DataTransferError).with_dnr();
        let mut entry = |base: u64| -> Result<HostMem, Status> {
            let m = base
                .checked_add(off)
                .and_then(|a| self.dma.translate_owned(a, 4))
                .ok_or_else(bad)?;
            if m.map.is_aligned(m.off, 4) {
                Ok(m)
            } else {
                Err(bad())
            }
        };
        Ok(Some(Shadow {
            db: entry(dbs)?,
            ei: entry(eis)?,
        }))
    }

    /// Doorbell Buffer Config (NVMe 1.4 5.7): from now on I/O queues take their doorbells
    /// from the shadow buffer at `dbs`; the controller writes EventIdx entries at `eis`.
    /// Queues that exist already switch over with their current positions written to their
    /// shadow doorbells (as QEMU does).
    pub(crate) fn doorbell_buffer_config(&mut self, dbs: u64, eis: u64) -> Status {
        let page = self.page_size as u64 - 1;
        if dbs & page != 0 || eis & page != 0 || dbs == 0 || eis == 0 {
            return Status::generic(GenericStatus::InvalidField).with_dnr();
        }
        self.dbbuf = Some((dbs, eis));
        for qid in 1..self.sqs.len() {
            if let Some(db) = self.sqs[qid].as_ref().map(|q| q.db) {
                let shadow = self.shadow_of(qid as u16, db).ok().flatten();
                let tail = self.bar.load32(db);
                if let Some(sq) = self.sqs[qid].as_mut() {
                    if let Some(sh) = &shadow {
                        sh.store(tail);
                        sq.kicked = true;
                        self.bar.store32(db, DOORBELL_SEEN);
                    }
                    sq.shadow = shadow;
                }
            }
            if let Some(db) = self.cqs[qid].as_ref().map(|q| q.db) {
                let shadow = self.shadow_of(qid as u16, db).ok().flatten();
                if let Some(cq) = self.cqs[qid].as_mut() {
                    if let Some(sh) = &shadow {
                        sh.store(cq.head);
                    }
                    cq.shadow = shadow;
                }
            }
        }
        Status::SUCCESS
    }

    /// Controller reset: all queues and in-flight state go, features return to defaults.
    fn reset(&mut self) {
        // Doorbell Buffer Config is forgotten too (as QEMU does): the host sends it again.
        self.dbbuf = None;
        add(&self.shared.stats.resets, 1);
        // Doorbells reset to 0.
        for qid in 0..=self.cfg.max_io_queues {
            self.bar.store32(
                nvme_regs::registers::sq_tail_doorbell(qid, self.cfg.dstrd),
                0,
            );
            self.bar.store32(
                nvme_regs::registers::cq_head_doorbell(qid, self.cfg.dstrd),
                0,
            );
        }
        self.sqs.iter_mut().for_each(|q| *q = None);
        self.cqs.iter_mut().for_each(|q| *q = None);
        self.active_sqs.clear();
        self.overflowing = 0;
        self.delayed.clear();
        for _ in self.postponed.drain(..) {
            self.shared.faults.note_delayed_executed();
        }
        self.aer_outstanding.clear();
        self.features = default_features(&self.cfg);
        self.temperature_warning = false;
        // A controller level reset aborts the running device self-test (this controller
        // does not resume extended tests after a reset).
        self.end_self_test(nvme_regs::log::self_test::RESULT_ABORTED_BY_RESET);
    }

    /// Fetches and executes commands of one submission queue; true if any.
    fn process_sq(&mut self, qid: u16) -> bool {
        let Some(sq) = self.sqs[qid as usize].as_mut() else {
            return false;
        };
        let tail = match &sq.shadow {
            None => self.bar.load32(sq.db),
            Some(sh) => {
                // As QEMU: the queue is looked at once its MMIO doorbell was written; the
                // tail then comes from the shadow doorbell; caught up, the controller writes
                // its head to EventIdx and reads the shadow once more before it waits for
                // the next MMIO write.
                if self.bar.swap32(sq.db, DOORBELL_SEEN) != DOORBELL_SEEN {
                    sq.kicked = true;
                }
                if !sq.kicked {
                    return false;
                }
                let mut t = sh.load();
                if t == sq.head {
                    t = sh.set_event_and_reload(sq.head);
                }
                if t == sq.head || t >= sq.size {
                    // Nothing new, or a tail outside the ring (ignored until the next write).
                    sq.kicked = false;
                    return false;
                }
                t
            }
        };
        if tail >= sq.size || tail == sq.head {
            return false;
        }
        let shadow = sq.shadow.is_some();
        if !sq.mapped {
            // The host unmapped the ring while the queue exists: an IOMMU would fault the
            // fetch. Recorded once, when the table changed (see `revalidate_queues`).
            return false;
        }
        let mut n = 0;
        while n < BURST {
            let Some(sq) = self.sqs[qid as usize].as_mut() else {
                break;
            };
            if sq.head == tail {
                break;
            }
            let cqid = sq.cqid as usize;
            // Back-pressure: fetch only when the completion can be posted.
            let room = match self.cqs[cqid].as_mut() {
                Some(cq) => cq.overflow.is_empty() && cq.has_room(&self.bar),
                None => false,
            };
            match room {
                true => {}
                false => {
                    if n == 0 {
                        add(&self.shared.stats.cq_full_waits, 1);
                    }
                    break;
                }
            }
            // `head < size`. The host wrote the entry before the doorbell we loaded with
            // acquire ordering.
            let cmd = Self::sq_entry(sq, sq.head);
            sq.head = if sq.head + 1 == sq.size {
                0
            } else {
                sq.head + 1
            };
            let cqid = sq.cqid;
            self.run_command(qid, cqid, &cmd);
            n += 1;
            if self.state != State::Ready {
                break;
            }
        }
        if shadow {
            add(&self.shared.stats.shadow_fetches, n as u64);
        }
        n > 0
    }

    fn run_command(&mut self, sqid: u16, cqid: u16, cmd: &SubmissionEntry) {
        let st = &self.shared.stats;
        add(&st.commands, 1);
        add(
            if sqid == 0 {
                &st.admin_commands
            } else {
                &st.io_commands
            },
            1,
        );
        let decision = self
            .shared
            .faults
            .check(sqid, cmd.cid, cmd.opcode, cmd.nsid);
        if let Some(d) = decision.as_ref().filter(|d| d.fail.is_none()) {
            if let Some(t) = d.delay_execution {
                self.postponed.push(Postponed {
                    due: Instant::now() + t,
                    sqid,
                    cqid,
                    cmd: *cmd,
                    delay: d.delay,
                    drop: d.drop,
                });
                return;
            }
        }
        let outcome = match decision.as_ref().and_then(|d| d.fail) {
            Some(s) => Outcome::Done(s, 0),
            None if sqid == 0 => self.admin(cmd),
            None => self.io(cmd),
        };
        let Outcome::Done(status, dw0) = outcome else {
            return;
        };
        let cqe = self.completion(sqid, cmd, status, dw0);
        if let Some(d) = decision {
            if d.drop {
                return;
            }
            if let Some(t) = d.delay {
                self.delayed.push(Delayed {
                    due: Instant::now() + t,
                    cqid,
                    cqe,
                });
                return;
            }
        }
        self.post(cqid, cqe);
    }

    /// Builds a completion for `cmd`, logging errors.
    pub(crate) fn completion(
        &mut self,
        sqid: u16,
        cmd: &SubmissionEntry,
        status: Status,
        dw0: u32,
    ) -> Cqe {
        if !status.is_success() {
            self.log_error(sqid, cmd, status);
        }
        let sq_head = self.sqs[sqid as usize]
            .as_ref()
            .map_or(0, |s| s.head as u16);
        Cqe {
            sqid,
            cid: cmd.cid,
            status,
            dw0,
            sq_head,
        }
    }

    fn log_error(&mut self, sqid: u16, cmd: &SubmissionEntry, status: Status) {
        add(&self.shared.stats.errors, 1);
        if status.sct() == nvme_regs::StatusCodeType::MediaError {
            self.media_errors += 1;
        }
        self.error_count += 1;
        let has_lba = sqid != 0 && matches!(cmd.opcode, 0x01 | 0x02 | 0x04 | 0x05 | 0x08 | 0x0c);
        let mut e = ErrorLogEntry::default();
        e.error_count = self.error_count;
        e.sqid = sqid;
        e.cmdid = cmd.cid;
        e.status_field = status.to_completion_word(false);
        e.parm_error_location = 0xffff;
        e.lba = if has_lba { cmd.slba() } else { 0 };
        e.nsid = cmd.nsid;
        if self.error_log.len() == ERROR_LOG_ENTRIES {
            self.error_log.pop_back();
        }
        self.error_log.push_front(e);
    }

    /// Posts a completion to `cqid`, or queues it while the CQ is full.
    pub(crate) fn post(&mut self, cqid: u16, e: Cqe) {
        let Some(cq) = self.cqs.get_mut(cqid as usize).and_then(|c| c.as_mut()) else {
            return; // the completion queue is gone (deleted or reset)
        };
        if !cq.mapped {
            // The ring was unmapped under the queue: the write would fault.
            self.shared.dma.record_error(format!(
                "completion (SQ {} CID {:#x}) to CQ {cqid}, whose ring at IOVA {:#x} is no longer mapped",
                e.sqid, e.cid, cq.iova
            ));
            return;
        }
        if !cq.overflow.is_empty() || !cq.has_room(&self.bar) {
            cq.overflow.push_back(e);
            self.overflowing += 1;
            add(&self.shared.stats.cq_full_waits, 1);
            return;
        }
        let head = self.sqs[e.sqid as usize]
            .as_ref()
            .map_or(e.sq_head, |s| s.head as u16);
        cq.write(&e, head);
        add(&self.shared.stats.completions, 1);
        if let Some(v) = cq.vector {
            self.shared.irqs.signal(v);
        }
    }

    fn drain_overflow(&mut self) -> bool {
        let mut moved = false;
        for cq in self.cqs.iter_mut().flatten().filter(|c| c.mapped) {
            while !cq.overflow.is_empty() && cq.has_room(&self.bar) {
                let Some(e) = cq.overflow.pop_front() else {
                    break;
                };
                let head = self.sqs[e.sqid as usize]
                    .as_ref()
                    .map_or(e.sq_head, |s| s.head as u16);
                cq.write(&e, head);
                self.overflowing -= 1;
                add(&self.shared.stats.completions, 1);
                moved = true;
                if let Some(v) = cq.vector {
                    self.shared.irqs.signal(v);
                }
            }
        }
        moved
    }

    fn post_due_delayed(&mut self) -> bool {
        let now = Instant::now();
        let mut any = false;
        let mut i = 0;
        while i < self.delayed.len() {
            if self.delayed[i].due <= now {
                let d = self.delayed.remove(i);
                self.post(d.cqid, d.cqe);
                any = true;
            } else {
                i += 1;
            }
        }
        any
    }

    /// Executes postponed commands that are due (their data moves now) and completes them.
    fn run_due_postponed(&mut self) -> bool {
        let now = Instant::now();
        let mut any = false;
        let mut i = 0;
        while i < self.postponed.len() {
            if self.postponed[i].due > now {
                i += 1;
                continue;
            }
            let p = self.postponed.remove(i);
            any = true;
            self.run_postponed(p);
            // Counted once the transfer and the completion are done (tests wait for it).
            self.shared.faults.note_delayed_executed();
        }
        any
    }

    fn run_postponed(&mut self, p: Postponed) {
        let outcome = if p.sqid == 0 {
            self.admin(&p.cmd)
        } else {
            self.io(&p.cmd)
        };
        let Outcome::Done(status, dw0) = outcome else {
            return;
        };
        let cqe = self.completion(p.sqid, &p.cmd, status, dw0);
        if p.drop {
            return;
        }
        match p.delay {
            Some(t) => self.delayed.push(Delayed {
                due: Instant::now() + t,
                cqid: p.cqid,
                cqe,
            }),
            None => self.post(p.cqid, cqe),
        }
    }

    /// After the DMA table changed: marks queues whose ring the host unmapped (recording a
    /// DMA error for each; the controller stops using that ring).
    fn revalidate_queues(&mut self) {
        // After a shutdown or outside Ready the host may take the rings back: not an error
        // unless the controller touches them (`post` records that).
        let record = self.state == State::Ready && !self.shutdown_seen;
        for (qid, sq) in self.sqs.iter_mut().enumerate() {
            if let Some(sq) = sq.as_mut().filter(|q| q.mapped) {
                if !self.dma.is_mapped(sq.iova, sq.len) {
                    sq.mapped = false;
                    if record {
                        self.shared.dma.record_error(format!(
                            "SQ {qid}: ring at IOVA {:#x}+{:#x} unmapped while the queue exists",
                            sq.iova, sq.len
                        ));
                    }
                }
            }
        }
        for (qid, cq) in self.cqs.iter_mut().enumerate() {
            if let Some(cq) = cq.as_mut().filter(|q| q.mapped) {
                if !self.dma.is_mapped(cq.iova, cq.len) {
                    cq.mapped = false;
                    if record {
                        self.shared.dma.record_error(format!(
                            "CQ {qid}: ring at IOVA {:#x}+{:#x} unmapped while the queue exists",
                            cq.iova, cq.len
                        ));
                    }
                }
            }
        }
    }

    /// Completes delayed commands of a deleted submission queue as aborted (postponed ones
    /// without executing them).
    pub(crate) fn abort_delayed_of(&mut self, sqid: u16) {
        let mut i = 0;
        while i < self.postponed.len() {
            if self.postponed[i].sqid == sqid {
                let p = self.postponed.remove(i);
                let cqe = self.completion(
                    sqid,
                    &p.cmd,
                    Status::generic(GenericStatus::AbortedSqDeletion),
                    0,
                );
                self.post(p.cqid, cqe);
                self.shared.faults.note_delayed_executed();
            } else {
                i += 1;
            }
        }
        let mut i = 0;
        while i < self.delayed.len() {
            if self.delayed[i].cqe.sqid == sqid {
                let mut d = self.delayed.remove(i);
                d.cqe.status = Status::generic(GenericStatus::AbortedSqDeletion);
                self.post(d.cqid, d.cqe);
            } else {
                i += 1;
            }
        }
    }

    /// Abort (NVMe 1.4 5.1): aborts the command CDW10 names (bits 15:0 SQ id, 31:16 CID)
    /// when the controller still holds it: postponed by `DelayExecution` (it never
    /// executes), its completion delayed by `Delay`, or an outstanding Asynchronous Event
    /// Request. The aborted command completes with Command Abort Requested before the
    /// Abort does, whose dword 0 is 0. Anything else (completed already, its completion
    /// dropped by `Drop`: it executed; never seen) is not aborted: dword 0 bit 0 set, as a
    /// controller that cannot abort it answers (QEMU's always does).
    pub(crate) fn abort(&mut self, cmd: &SubmissionEntry) -> Outcome {
        let (sqid, cid) = (cmd.cdw10 as u16, (cmd.cdw10 >> 16) as u16);
        let requested = Status::generic(GenericStatus::AbortRequested);
        let mut aborted = false;
        if let Some(i) = self
            .postponed
            .iter()
            .position(|p| p.sqid == sqid && p.cmd.cid == cid)
        {
            let p = self.postponed.remove(i);
            let cqe = self.completion(sqid, &p.cmd, requested, 0);
            self.post(p.cqid, cqe);
            self.shared.faults.note_delayed_executed();
            aborted = true;
        } else if let Some(i) = self
            .delayed
            .iter()
            .position(|d| d.cqe.sqid == sqid && d.cqe.cid == cid)
        {
            let mut d = self.delayed.remove(i);
            d.cqe.status = requested;
            self.post(d.cqid, d.cqe);
            aborted = true;
        } else if sqid == 0 {
            if let Some(i) = self.aer_outstanding.iter().position(|&c| c == cid) {
                self.aer_outstanding.remove(i);
                let cqe = Cqe {
                    sqid: 0,
                    cid,
                    status: requested,
                    dw0: 0,
                    sq_head: 0,
                };
                self.post(0, cqe);
                aborted = true;
            }
        }
        self.shared
            .faults
            .note_abort(crate::faults::AbortSeen { sqid, cid, aborted });
        Outcome::Done(Status::SUCCESS, u32::from(!aborted))
    }

    /// Drops queued completions of a deleted completion queue from the accounting.
    pub(crate) fn forget_cq(&mut self, cq: &Cq) {
        self.overflowing -= cq.overflow.len();
    }

    /// Completes outstanding Asynchronous Event Requests with queued events.
    fn deliver_events(&mut self) -> bool {
        let mut any = false;
        while !self.aer_outstanding.is_empty() {
            let Some(ev) = self.shared.faults.pop_event() else {
                break;
            };
            let Some(cid) = self.aer_outstanding.pop_front() else {
                break;
            };
            let cqe = Cqe {
                sqid: 0,
                cid,
                status: Status::SUCCESS,
                dw0: ev.to_dword(),
                sq_head: 0,
            };
            self.post(0, cqe);
            any = true;
        }
        any
    }

    /// Reads the submission queue tail doorbell of `qid` (its shadow doorbell when it has
    /// one).
    pub(crate) fn sq_tail(&self, sq: &Sq) -> u32 {
        match &sq.shadow {
            Some(sh) => sh.load(),
            None => self.bar.load32(sq.db),
        }
    }

    /// Reads the entry at `index` of a submission queue.
    pub(crate) fn sq_entry(sq: &Sq, index: u32) -> SubmissionEntry {
        let mut cmd = SubmissionEntry::new_zeroed();
        // The index is reduced modulo the queue size: the entry is inside the ring.
        let off = sq.ring.off + (index % sq.size) as usize * 64;
        sq.ring.map.read_volatile(off, cmd.as_mut_bytes());
        cmd
    }
}
