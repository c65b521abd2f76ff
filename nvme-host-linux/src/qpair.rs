//! I/O queue pairs: one per thread, no lock and no system call on the I/O path.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nvme_core::cmd::DsmRange;
use nvme_core::qpair::MAX_BLOCKS_PER_COMMAND;
use nvme_core::{Command, Completion, DmaRegion, PciRings, QueueConfig, QueuePair, Slot};
use nvme_regs::opcode::NvmOpcode;
use zerocopy::IntoBytes;

use crate::controller::Controller;
use crate::dma::{DmaMapping, IoBuf};
use crate::error::{Error, Result};
use crate::mmio::Mmio;
use crate::namespace::Namespace;

mod commands;
mod interrupt;
mod timeout;

pub use commands::{DsmAttributes, WriteZeroesOptions, MAX_DSM_RANGES, SYNC_COMMAND_TIMEOUT};

/// Options of an I/O queue pair: `QueueOptions::new(256)`, `QueueOptions::default()`
/// (256 entries, polled), `QueueOptions::new(64).with_interrupts(true)`.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct QueueOptions {
    /// Entries of the submission and completion rings (at most the controller's CAP.MQES+1).
    /// A ring of N entries holds N-1 commands.
    pub entries: u32,
    /// Ask for an interrupt (an MSI-X vector signalling an eventfd of this process) when
    /// the controller posts a completion, so that [`IoQueuePair::wait`] can sleep instead
    /// of polling. When the controller has no vector for this queue, the queue is polled
    /// and [`IoQueuePair::interrupt_fallback`] says why. Default: off.
    pub interrupts: bool,
    /// Commands in flight at most (`None`: as many as the ring holds, `entries - 1`). Fewer
    /// than the ring holds keep the per-command memory (PRP lists) small while a large ring
    /// lets the completion queue's head doorbell be written rarely: it is written only when
    /// the controller could otherwise find the queue full, about once every
    /// `entries - 1 - requests` completions (see `nvme_core::QueuePair`).
    pub requests: Option<u32>,
}

impl QueueOptions {
    /// Polled queues of `entries` entries.
    pub const fn new(entries: u32) -> QueueOptions {
        QueueOptions {
            entries,
            interrupts: false,
            requests: None,
        }
    }
    /// The same options with interrupts on or off (see [`interrupts`](Self::interrupts)).
    pub const fn with_interrupts(mut self, on: bool) -> QueueOptions {
        self.interrupts = on;
        self
    }
    /// The same options with at most `n` commands in flight (see
    /// [`requests`](Self::requests)).
    pub const fn with_requests(mut self, n: u32) -> QueueOptions {
        self.requests = Some(n);
        self
    }
    /// Command slots of the queue pair: [`requests`](Self::requests) within what the ring
    /// holds. An error names a request count of 0.
    fn slots(&self) -> Result<usize> {
        let ring = QueueConfig::slots(self.entries);
        match self.requests {
            None => Ok(ring),
            Some(0) => Err(Error::Invalid(
                "I/O queue options: 0 requests in flight; give at least 1 (or None for as many as the ring holds)".into(),
            )),
            Some(n) => Ok(ring.min(n as usize)),
        }
    }
}

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions::new(256)
    }
}

/// How I/O commands point to their data ([`AttachOptions::data_pointer`](crate::AttachOptions::data_pointer),
/// [`IoQueuePair::set_data_pointer`]). Admin commands always use PRPs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DataPointer {
    /// SGL descriptors where Identify Controller's SGLS field reports SGL support for NVM
    /// commands, PRPs otherwise.
    #[default]
    Auto,
    /// PRP entries and lists, whatever the controller supports.
    Prp,
    /// SGL descriptors; queue creation fails on a controller without SGL support.
    Sgl,
}

/// Per-request context: the caller's token and a reference keeping the data buffer mapped
/// until the request completes (16 bytes: it moves in registers; the queue pair keeps the
/// opcode for error reports, [`Completion::opcode`]).
struct IoCtx {
    token: u64,
    _buf: Option<Arc<DmaMapping>>,
}

/// The slot storage of a queue pair.
type Slots = Box<[Slot<IoCtx>]>;
/// The engine over PCIe rings and doorbells (a VFIO device or the software controller).
type Qp = QueuePair<PciRings<Mmio>, IoCtx, Slots>;
/// The engine over an NVMe/TCP connection.
type TcpQp = QueuePair<crate::tcp::TcpRings, IoCtx, Slots>;

/// nvme-core's queue pair over the transport's rings: one engine, two kinds of rings.
// The PCIe engine stays inline on purpose: boxing it would cost a load per call on the
// I/O path that the instruction count measures.
#[allow(clippy::large_enum_variant)]
enum Engine {
    /// Rings in memory and doorbells.
    Pci(Qp),
    /// Capsules on a connection (boxed: the PCIe engine's fields keep their places and
    /// the variant is told by a pointer that is never null).
    Tcp(Box<TcpQp>),
}

/// Runs `$body` with `$q` bound to the engine's queue pair, whichever kind it is. The
/// NVMe/TCP arm runs out of line, so that the PCIe path compiles as it did with one engine
/// (one more compare and branch).
macro_rules! with_qp {
    ($engine:expr, |$q:ident| $body:expr) => {
        match $engine {
            Engine::Pci($q) => $body,
            Engine::Tcp($q) => $crate::qpair::out_of_line(move || $body),
        }
    };
}

/// Calls `f`, never inlined into the caller (see `with_qp`).
#[inline(never)]
pub(crate) fn out_of_line<R>(f: impl FnOnce() -> R) -> R {
    f()
}
pub(crate) use with_qp;

/// What the I/O path needs of a namespace: its id, log2 of its block size (a power of two:
/// 2^LBADS, checked when the namespace was identified) and its size in blocks.
#[derive(Clone, Copy, Debug)]
struct NsGeometry {
    id: u32,
    shift: u32,
    blocks: u64,
}

impl NsGeometry {
    fn of(ns: &Namespace) -> NsGeometry {
        debug_assert!(ns.block_size().is_power_of_two());
        NsGeometry {
            id: ns.id(),
            shift: ns.block_size().trailing_zeros(),
            blocks: ns.blocks(),
        }
    }
    fn block_size(&self) -> u32 {
        1 << self.shift
    }
}

/// What a queue pair leaves with its controller when the controller may still use it (the
/// queue deletion failed): its rings and the buffers of the requests it had in flight.
pub(crate) struct Quarantined {
    _rings: Option<DmaMapping>,
    _bufs: Vec<Arc<DmaMapping>>,
}

/// An I/O queue pair. It belongs to one thread at a time (`Send`, not `Sync`): submission and
/// completion take no lock. Completions are delivered by
/// [`process_completions`](Self::process_completions) with the token given at submission.
pub struct IoQueuePair {
    qp: Engine,
    dsm: DmaRegion,
    /// The controller's namespaces, in NSID order (usually NSID n at index n-1).
    namespaces: Box<[NsGeometry]>,
    qid: u16,
    /// The controller's reset generation this pair's queues were created in.
    generation: u64,
    /// The controller's current reset generation lives here (in `live`'s memory).
    reset_gen: nvme_core::SharedRef<nvme_core::shared::SharedAdminState>,
    /// Keeps `reset_gen`'s memory mapped.
    live: Arc<crate::admin::Liveness>,
    ctrl: Controller,
    /// The I/O timeout's watchdog, when one is set ([`set_timeout`](Self::set_timeout)).
    timeout: Option<Box<timeout::IoTimeout>>,
    /// This process's LBA range leases, as this pair last copied them (`crate::lease`).
    leases: crate::lease::LeaseView,
    /// The completion queue's interrupt, when it has one ([`QueueOptions::interrupts`]).
    irq: Option<interrupt::Interrupt>,
    /// Why interrupts were asked for and the queue is polled.
    irq_fallback: Option<String>,
    // Dropped last: the controller must stop using the rings first (see Drop).
    rings: Option<DmaMapping>,
}

impl std::fmt::Debug for IoQueuePair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoQueuePair")
            .field("qid", &self.qid)
            .field("entries", &with_qp!(&self.qp, |q| q.entries()))
            .finish()
    }
}

impl IoQueuePair {
    pub(crate) fn create(ctrl: Controller, opts: QueueOptions) -> Result<IoQueuePair> {
        let info = ctrl.info();
        let max_entries = info.cap.max_queue_entries();
        if opts.entries < 2 || opts.entries > max_entries {
            return Err(Error::Invalid(format!(
                "I/O queue size {} is outside 2..={max_entries} (the controller's CAP.MQES+1)",
                opts.entries
            )));
        }
        if crate::tcp::TcpTransport::of(ctrl.transport().as_ref()).is_some() {
            return Self::create_tcp(ctrl, opts);
        }
        let entries = opts.entries;
        let nslots = opts.slots()?;
        let ps = info.page_size;
        let max_transfer = ctrl.max_transfer();
        let sq_len = (entries as usize * 64).next_multiple_of(ps);
        let cq_len = (entries as usize * 16).next_multiple_of(ps);
        let prp_len = nslots * QueueConfig::prp_pages_per_slot(ps, max_transfer) * ps;
        let dsm_len = (nslots * std::mem::size_of::<DsmRange>()).next_multiple_of(ps);
        let data_pointer = ctrl.io_data_pointer(ctrl.options().data_pointer)?;
        let qid = ctrl.alloc_qid()?;
        let live = ctrl.state().liveness().clone();
        let generation = live.generation();
        let build = || -> Result<(Qp, DmaMapping, DmaRegion)> {
            let rings = DmaMapping::new(
                ctrl.transport(),
                "nvme-ioq",
                sq_len + cq_len + prp_len + dsm_len,
            )?;
            let r = rings.region();
            let cfg = QueueConfig {
                qid,
                entries,
                dstrd: info.cap.dstrd(),
                page_size: ps,
                max_transfer,
                sq: r.sub(0, sq_len).expect("sq"),
                cq: r.sub(sq_len, cq_len).expect("cq"),
                prp: r.sub(sq_len + cq_len, prp_len).expect("prp"),
            };
            let dsm = r.sub(sq_len + cq_len + prp_len, dsm_len).expect("dsm");
            let slots: Box<[Slot<IoCtx>]> = (0..nslots).map(|_| Slot::EMPTY).collect();
            let regs = crate::transport::registers(ctrl.transport().as_ref())?;
            let mut qp = QueuePair::new(cfg, regs, slots)
                .map_err(|e| Error::Invalid(format!("I/O queue {qid}: {e}")))?;
            qp.set_data_pointer(data_pointer);
            if let Some(sh) = ctrl.shadow_doorbells() {
                // The two pages were given to the controller with Doorbell Buffer Config and
                // live as long as the controller, which this queue pair keeps.
                // Every queue must use them once the controller has them.
                // Zeroes this queue's entries first (an earlier user of the qid, maybe a
                // member that died, may have left values there).
                if !qp.set_shadow_doorbells(sh.db(), sh.ei(), info.cap.dstrd()) {
                    return Err(Error::Invalid(format!(
                        "I/O queue {qid}: its shadow doorbells fall outside the {ps}-byte Doorbell Buffer Config pages"
                    )));
                }
            }
            Ok((qp, rings, dsm))
        };
        let (qp, rings, dsm) = match build() {
            Ok(x) => x,
            Err(e) => {
                ctrl.free_qid(qid);
                return Err(e);
            }
        };
        let (irq, irq_fallback) = match opts
            .interrupts
            .then(|| interrupt::Interrupt::enable(&ctrl, qid))
            .transpose()
        {
            Ok(None) => (None, None),
            Ok(Some(interrupt::Outcome::On(irq))) => (Some(irq), None),
            Ok(Some(interrupt::Outcome::Polled(why))) => (None, Some(why)),
            Err(e) => {
                ctrl.free_qid(qid);
                return Err(e);
            }
        };
        let give_up = |e: Error, cq_created: bool| {
            if let Some(irq) = &irq {
                irq.disable(&ctrl);
            }
            if !cq_created || ctrl.admin_command(Command::delete_io_cq(qid), None).is_ok() {
                ctrl.free_qid(qid);
            }
            Err(e)
        };
        if let Err(e) = ctrl.admin_command(
            create_cq_command(qid, entries, qp.cq_iova(), irq.as_ref()),
            None,
        ) {
            return give_up(e, false);
        }
        if let Err(e) =
            ctrl.admin_command(Command::create_io_sq(qid, entries, qp.sq_iova(), qid), None)
        {
            return give_up(e, true);
        }
        Ok(Self::assemble(
            ctrl,
            Engine::Pci(qp),
            dsm,
            qid,
            (live, generation),
            (irq, irq_fallback),
            rings,
        ))
    }

    /// The queue pair around its engine, once its queues exist at the controller.
    fn assemble(
        ctrl: Controller,
        qp: Engine,
        dsm: DmaRegion,
        qid: u16,
        (live, generation): (Arc<crate::admin::Liveness>, u64),
        (irq, irq_fallback): (Option<interrupt::Interrupt>, Option<String>),
        rings: DmaMapping,
    ) -> IoQueuePair {
        let leases = ctrl.state().leases().view();
        IoQueuePair {
            qp,
            dsm,
            namespaces: ctrl
                .namespaces_shared()
                .iter()
                .map(NsGeometry::of)
                .collect(),
            qid,
            generation,
            reset_gen: live.shared_state(),
            live,
            ctrl,
            timeout: None,
            leases,
            irq,
            irq_fallback,
            rings: Some(rings),
        }
    }

    /// An I/O queue pair over NVMe/TCP: a connection of its own (Fabrics Connect of queue
    /// `qid`), polled; the same engine over [`TcpRings`](crate::tcp::TcpRings).
    #[cold]
    fn create_tcp(ctrl: Controller, opts: QueueOptions) -> Result<IoQueuePair> {
        if ctrl.options().data_pointer == DataPointer::Prp {
            return Err(prp_over_tcp());
        }
        let tcp = crate::tcp::TcpTransport::of(ctrl.transport().as_ref()).expect("NVMe/TCP");
        let entries = opts.entries;
        let max_transfer = ctrl.max_transfer();
        let ps = ctrl.info().page_size;
        let slots = opts.slots()?;
        let dsm_len = (slots * std::mem::size_of::<DsmRange>()).next_multiple_of(ps);
        let qid = ctrl.alloc_qid()?;
        let live = ctrl.state().liveness().clone();
        let generation = live.generation();
        let build = || -> Result<(TcpQp, DmaMapping)> {
            // The DSM ranges live in memory the connection resolves, like any data.
            let mem = DmaMapping::new(ctrl.transport(), "nvme-tcp-dsm", dsm_len)?;
            let rings = tcp.io_queue(qid, entries, max_transfer)?;
            let slots: Slots = (0..slots).map(|_| Slot::EMPTY).collect();
            let qp = QueuePair::with_rings(rings, qid, ps, max_transfer, slots)
                .map_err(|e| Error::Invalid(format!("I/O queue {qid}: {e}")))?;
            Ok((qp, mem))
        };
        let (qp, mem) = match build() {
            Ok(x) => x,
            Err(e) => {
                ctrl.free_qid(qid);
                return Err(e);
            }
        };
        let dsm = mem.region();
        let fallback = opts
            .interrupts
            .then(|| "NVMe/TCP queues are polled (no interrupts over TCP)".to_string());
        Ok(Self::assemble(
            ctrl,
            Engine::Tcp(Box::new(qp)),
            dsm,
            qid,
            (live, generation),
            (None, fallback),
            mem,
        ))
    }

    /// The error a failed submission gives: over NVMe/TCP a queue whose connection failed
    /// says so instead of "queue full". Such a queue with nothing outstanding (no request
    /// whose completion only [`process_completions`](Self::process_completions) could
    /// deliver) tries to connect again here, when an attempt is due: a caller that only
    /// submits when its queue is idle (the `*_sync` calls) still recovers, and its next
    /// submission goes out on the new connection.
    #[cold]
    fn submit_error(&mut self, e: nvme_core::SubmitError) -> Error {
        match &mut self.qp {
            Engine::Tcp(q) => match q.rings().failure().map(str::to_string) {
                Some(f) => {
                    if q.outstanding() == 0 && q.rings().needs_reconnect() {
                        let (ctrl, qid) = (&self.ctrl, self.qid);
                        Self::recover_connection(q, ctrl, qid, &mut |_, _| {});
                    }
                    Error::Transport(f)
                }
                None => Error::from(e),
            },
            Engine::Pci(_) => Error::from(e),
        }
    }

    /// Over NVMe/TCP, when the queue's connection failed or the controller was reset (a
    /// new association): completes every outstanding request (with an error naming the
    /// failure, or [`Error::AbortedByReset`]), then connects the queue again (a new
    /// association first when the old one is gone: a target restart): at most one attempt
    /// per [`RECONNECT_INTERVAL`], [`RECONNECT_ATTEMPTS`] in all, after which the queue
    /// stays failed and says why. Returns how many requests it completed.
    #[cold]
    fn recover_connection<F: FnMut(u64, Result<()>)>(
        q: &mut TcpQp,
        ctrl: &Controller,
        qid: u16,
        f: &mut F,
    ) -> usize {
        let why = q.rings().failure().map(str::to_string);
        let n = q.abort_all(Qp::ABORTED, |ctx: IoCtx, _| {
            let e = match &why {
                Some(w) => Error::Transport(w.clone()),
                None => Error::AbortedByReset,
            };
            f(ctx.token, Err(e))
        });
        let (attempts, last) = q.rings().attempts;
        let wait = last.is_some_and(|t| t.elapsed() < RECONNECT_INTERVAL);
        if attempts >= RECONNECT_ATTEMPTS || wait {
            return n;
        }
        let tcp = crate::tcp::TcpTransport::of(ctrl.transport().as_ref()).expect("NVMe/TCP");
        match tcp.io_queue(qid, q.entries(), ctrl.max_transfer()) {
            Ok(mut fresh) => {
                nvme_core::Rings::cid_index_mask(&mut fresh, q.rings().cid_mask());
                *q.rings_mut() = fresh;
            }
            Err(e) => {
                let r = q.rings_mut();
                let first = why
                    .as_deref()
                    .unwrap_or("the controller was reset (a new association)");
                let first = first.split("; reconnecting").next().unwrap_or(first);
                let tried = attempts + 1;
                let end = if tried == RECONNECT_ATTEMPTS {
                    "; gave up: attach again"
                } else {
                    ""
                };
                r.set_failure(format!(
                    "{first}; reconnecting I/O queue {qid} failed {tried} time(s), last: {e}{end}"
                ));
                r.attempts = (tried, Some(Instant::now()));
            }
        }
        n
    }

    /// The queue id on the controller.
    pub fn qid(&self) -> u16 {
        self.qid
    }
    /// Commands the queue pair can have in flight.
    pub fn capacity(&self) -> usize {
        with_qp!(&self.qp, |q| q.capacity())
    }
    /// Requests submitted and not completed.
    pub fn outstanding(&self) -> usize {
        with_qp!(&self.qp, |q| q.outstanding())
    }
    /// The controller.
    pub fn controller(&self) -> &Controller {
        &self.ctrl
    }
    /// How this queue pair's commands point to their data (PRPs or SGLs, `Auto` resolved).
    pub fn data_pointer(&self) -> DataPointer {
        match with_qp!(&self.qp, |q| q.data_pointer()) {
            nvme_core::DataPointer::Prp => DataPointer::Prp,
            nvme_core::DataPointer::Sgl => DataPointer::Sgl,
        }
    }
    /// Chooses how this queue pair's next commands point to their data; [`DataPointer::Sgl`]
    /// is refused (and nothing changes) when the controller does not support SGLs.
    pub fn set_data_pointer(&mut self, dp: DataPointer) -> Result<()> {
        let dp = self.ctrl.io_data_pointer(dp)?;
        match &mut self.qp {
            Engine::Pci(q) => q.set_data_pointer(dp),
            Engine::Tcp(_) if dp == nvme_core::DataPointer::Prp => return Err(prp_over_tcp()),
            Engine::Tcp(_) => {}
        }
        Ok(())
    }
    /// Diagnostic counters of the underlying queue pair.
    pub fn stats(&self) -> nvme_core::qpair::QueueStats {
        with_qp!(&self.qp, |q| q.stats())
    }

    /// The namespace `nsid`: at index `nsid - 1` when the NSIDs are dense (one compare),
    /// else searched.
    #[inline]
    fn namespace(&self, nsid: u32) -> Result<NsGeometry> {
        match self.namespaces.get(nsid.wrapping_sub(1) as usize) {
            Some(g) if g.id == nsid => Ok(*g),
            _ => self.namespace_search(nsid),
        }
    }

    #[cold]
    fn namespace_search(&self, nsid: u32) -> Result<NsGeometry> {
        self.namespaces
            .iter()
            .find(|n| n.id == nsid)
            .copied()
            .ok_or(Error::NoSuchNamespace(nsid))
    }

    #[inline]
    fn check_range(&self, nsid: u32, lba: u64, blocks: u64, capacity: u64) -> Result<()> {
        if blocks == 0 || lba.checked_add(blocks).is_none_or(|end| end > capacity) {
            return Err(Error::LbaOutOfRange {
                nsid,
                lba,
                blocks,
                capacity,
            });
        }
        Ok(())
    }

    // Always inlined: a caller's I/O loop gets the whole fast path (through `read`, `write`
    // and `compare`) instead of a call that LLVM's size heuristics may choose.
    #[inline(always)]
    fn data_io(
        &mut self,
        op: NvmOpcode,
        nsid: u32,
        lba: u64,
        buf: IoBuf<'_>,
        token: u64,
    ) -> Result<()> {
        self.current()?;
        let ns = self.namespace(nsid)?;
        // Checked once here (the engine's own check of the length is a shift and a compare).
        let blocks = buf.len >> ns.shift;
        if blocks == 0 || blocks << ns.shift != buf.len {
            return Err(Error::BadLength {
                len: buf.len,
                block_size: ns.block_size(),
            });
        }
        self.check_range(nsid, lba, blocks as u64, ns.blocks)?;
        if let NvmOpcode::Write = op {
            self.leases.check_write(nsid, lba, blocks as u64)?;
        }
        let ctx = IoCtx {
            token,
            _buf: Some(buf.map.clone()),
        };
        let r = match &mut self.qp {
            Engine::Pci(q) => q.submit_blocks(
                Command::new(op as u8, nsid),
                lba,
                blocks,
                ns.shift,
                buf.region(),
                ctx,
            ),
            Engine::Tcp(q) => {
                let region = buf.region();
                out_of_line(move || {
                    let cmd = Command::new(op as u8, nsid);
                    q.submit_blocks(cmd, lba, blocks, ns.shift, region, ctx)
                })
            }
        };
        r.map_err(|e| self.submit_error(e))
    }

    /// Reads `buf.len()` bytes (a multiple of the block size) from `lba`.
    #[inline]
    pub fn read<'a>(
        &mut self,
        nsid: u32,
        lba: u64,
        buf: impl Into<IoBuf<'a>>,
        token: u64,
    ) -> Result<()> {
        self.data_io(NvmOpcode::Read, nsid, lba, buf.into(), token)
    }
    /// Writes `buf.len()` bytes (a multiple of the block size) at `lba`.
    #[inline]
    pub fn write<'a>(
        &mut self,
        nsid: u32,
        lba: u64,
        buf: impl Into<IoBuf<'a>>,
        token: u64,
    ) -> Result<()> {
        self.data_io(NvmOpcode::Write, nsid, lba, buf.into(), token)
    }
    /// Compares the blocks at `lba` with `buf`; a mismatch completes with Compare Failure.
    pub fn compare<'a>(
        &mut self,
        nsid: u32,
        lba: u64,
        buf: impl Into<IoBuf<'a>>,
        token: u64,
    ) -> Result<()> {
        self.data_io(NvmOpcode::Compare, nsid, lba, buf.into(), token)
    }
    /// Writes zeroes to `blocks` (1..=65536) blocks at `lba`.
    pub fn write_zeroes(&mut self, nsid: u32, lba: u64, blocks: u32, token: u64) -> Result<()> {
        self.current()?;
        let capacity = self.namespace(nsid)?.blocks;
        if blocks > MAX_BLOCKS_PER_COMMAND {
            return Err(Error::Invalid(format!(
                "write zeroes of {blocks} blocks: at most {MAX_BLOCKS_PER_COMMAND} per command"
            )));
        }
        self.check_range(nsid, lba, blocks as u64, capacity)?;
        self.leases.check_write(nsid, lba, blocks as u64)?;
        let ctx = IoCtx { token, _buf: None };
        let cmd = Command::write_zeroes(nsid, lba, blocks.max(1));
        with_qp!(&mut self.qp, |q| q.submit(cmd, None, ctx)).map_err(|e| self.submit_error(e))
    }
    /// Deallocates (trims) `blocks` blocks at `lba` (Dataset Management, one range).
    pub fn deallocate(&mut self, nsid: u32, lba: u64, blocks: u32, token: u64) -> Result<()> {
        self.current()?;
        let capacity = self.namespace(nsid)?.blocks;
        self.check_range(nsid, lba, blocks as u64, capacity)?;
        self.leases.check_write(nsid, lba, blocks as u64)?;
        let Some(slot) = with_qp!(&mut self.qp, |q| q.next_slot()) else {
            return Err(Error::Submit(nvme_core::SubmitError::QueueFull));
        };
        let range = DsmRange {
            attributes: 0,
            blocks,
            slba: lba,
        };
        let entry = self.dsm.sub(slot * 16, 16).expect("one DSM range per slot");
        // The entry is inside this queue pair's DSM area and belongs to the slot the next
        // command uses; no command of that slot is in flight.
        assert!(
            entry.write_bytes(0, range.as_bytes()),
            "a DSM range is 16 bytes"
        );
        let ctx = IoCtx { token, _buf: None };
        let cmd = Command::deallocate(nsid, 1);
        with_qp!(&mut self.qp, |q| q.submit(cmd, Some(entry), ctx))
            .map_err(|e| self.submit_error(e))
    }
    /// Flushes the namespace's volatile write cache.
    pub fn flush(&mut self, nsid: u32, token: u64) -> Result<()> {
        self.current()?;
        self.namespace(nsid)?;
        let ctx = IoCtx { token, _buf: None };
        let cmd = Command::flush(nsid);
        with_qp!(&mut self.qp, |q| q.submit(cmd, None, ctx)).map_err(|e| self.submit_error(e))
    }
    /// Submits any I/O command as built, with an optional data range (at most the maximum
    /// transfer size; not split). Nothing is checked beyond the data pointer: the
    /// controller's status reports the rest.
    /// A process that enforces LBA range leases on the namespace has the command's
    /// blocks checked against them first (see [`Lease`](crate::Lease)).
    pub fn submit(&mut self, cmd: Command, data: Option<IoBuf<'_>>, token: u64) -> Result<()> {
        self.current()?;
        self.leases.check_command(&cmd, data.as_ref())?;
        let ctx = IoCtx {
            token,
            _buf: data.map(|d| d.map.clone()),
        };
        let region = data.map(|d| d.region());
        with_qp!(&mut self.qp, |q| q.submit(cmd, region, ctx)).map_err(|e| self.submit_error(e))
    }
    /// Writes the doorbell for everything submitted since the last write (also done by
    /// [`process_completions`](Self::process_completions)).
    #[inline]
    pub fn ring(&mut self) {
        if self.reset_generation() == self.generation {
            with_qp!(&mut self.qp, |q| q.ring());
        }
    }

    /// The controller's reset generation now (one load).
    #[inline]
    fn reset_generation(&self) -> u64 {
        self.reset_gen.get().reset_generation()
    }

    /// Are this pair's queues those of the controller's current generation? A reset since
    /// they were created (or one under way) refuses new submissions until
    /// [`process_completions`](Self::process_completions) has reconnected.
    #[inline]
    fn current(&self) -> Result<()> {
        if self.reset_generation() == self.generation {
            Ok(())
        } else {
            Err(Error::AbortedByReset)
        }
    }

    /// After a controller reset (generation `now`, even: finished): completes every request
    /// of the old queues with [`Error::AbortedByReset`] (the controller was disabled before
    /// the reset finished, so none of their memory is in use), empties the rings and creates
    /// the queues again with the same id and memory. Returns the requests finished.
    #[cold]
    fn reconnect<F: FnMut(u64, Result<()>)>(&mut self, now: u64, f: &mut F) -> usize {
        let n = with_qp!(&mut self.qp, |q| q
            .abort_all(Qp::ABORTED, |ctx: IoCtx, _| {
                f(ctx.token, Err(Error::AbortedByReset))
            }));
        // Over NVMe/TCP there is no controller reset (the generation never moves).
        let Engine::Pci(qp) = &mut self.qp else {
            return n;
        };
        if let Some(sh) = self.ctrl.shadow_doorbells() {
            // The reset zeroed the pages; zeroed again for this queue before it is created
            // (an I/O thread of this process may have rung between the two). It fit at
            // creation.
            qp.set_shadow_doorbells(sh.db(), sh.ei(), self.ctrl.info().cap.dstrd());
        }
        let entries = qp.entries();
        let (sq, cq) = (qp.sq_iova(), qp.cq_iova());
        let created = self
            .ctrl
            .admin_command(
                create_cq_command(self.qid, entries, cq, self.irq.as_ref()),
                None,
            )
            .and_then(|_| {
                self.ctrl
                    .admin_command(Command::create_io_sq(self.qid, entries, sq, self.qid), None)
            });
        // On failure the generation stays old: submissions keep being refused, and the next
        // call tries again.
        if created.is_ok() {
            self.generation = now;
        }
        n
    }

    /// Rings the doorbell, then processes up to `max` completions, calling `f(token, result)`
    /// for each finished request. Returns how many finished.
    #[inline]
    pub fn process_completions<F: FnMut(u64, Result<()>)>(
        &mut self,
        max: usize,
        mut f: F,
    ) -> usize {
        let now = self.reset_generation();
        if now != self.generation {
            // Odd: a reset is under way; wait for it to finish.
            return if now & 1 == 0 {
                self.reconnect(now, &mut f)
            } else {
                0
            };
        }
        if self.timeout.is_some() {
            return self.process_completions_watched(max, &mut f);
        }
        match &mut self.qp {
            Engine::Pci(q) => q.poll(max, |ctx: IoCtx, c| f(ctx.token, io_result(c))),
            Engine::Tcp(q) => {
                let (ctrl, qid) = (&self.ctrl, self.qid);
                out_of_line(move || {
                    let n = q.poll(max, |ctx: IoCtx, c| f(ctx.token, io_result(c)));
                    if q.rings().needs_reconnect() {
                        n + Self::recover_connection(q, ctrl, qid, &mut f)
                    } else {
                        n
                    }
                })
            }
        }
    }

    /// Polls until nothing is outstanding or `timeout` passes, calling `f` for each finished
    /// request. A blocking wait: after 50 us without a completion it sleeps briefly between
    /// polls, so that it does not starve what shares its CPU (on a small machine, the
    /// software controller's own thread).
    pub fn drain<F: FnMut(u64, Result<()>)>(&mut self, timeout: Duration, mut f: F) -> Result<()> {
        let start = Instant::now();
        let mut since_progress = start;
        // The controller's status (a CSTS read, an MMIO trip) once a millisecond, not on
        // every spin.
        let mut next_check = Duration::from_millis(1);
        while self.outstanding() > 0 {
            if self.process_completions(usize::MAX, &mut f) > 0 {
                since_progress = Instant::now();
            }
            let waited = start.elapsed();
            if waited > next_check {
                self.ctrl.state().check_alive()?;
                next_check = waited + Duration::from_millis(1);
            }
            if waited > timeout {
                return Err(Error::DrainTimeout {
                    outstanding: self.outstanding(),
                    waited_ms: timeout.as_millis() as u64,
                });
            }
            crate::admin::wait_a_little(since_progress);
        }
        Ok(())
    }

    fn submit_and_wait(&mut self, submit: impl FnOnce(&mut Self) -> Result<()>) -> Result<()> {
        if self.outstanding() > 0 {
            return Err(Error::Busy {
                outstanding: self.outstanding(),
            });
        }
        submit(self)?;
        let mut result = Ok(());
        self.drain(Duration::from_secs(30), |_, r| result = r)?;
        result
    }
    /// Reads synchronously (no other I/O may be outstanding).
    pub fn read_sync<'a>(&mut self, nsid: u32, lba: u64, buf: impl Into<IoBuf<'a>>) -> Result<()> {
        let buf = buf.into();
        self.submit_and_wait(|q| q.read(nsid, lba, buf, 0))
    }
    /// Writes synchronously (no other I/O may be outstanding).
    pub fn write_sync<'a>(&mut self, nsid: u32, lba: u64, buf: impl Into<IoBuf<'a>>) -> Result<()> {
        let buf = buf.into();
        self.submit_and_wait(|q| q.write(nsid, lba, buf, 0))
    }
    /// Compares synchronously (no other I/O may be outstanding).
    pub fn compare_sync<'a>(
        &mut self,
        nsid: u32,
        lba: u64,
        buf: impl Into<IoBuf<'a>>,
    ) -> Result<()> {
        let buf = buf.into();
        self.submit_and_wait(|q| q.compare(nsid, lba, buf, 0))
    }
}

/// Over NVMe/TCP: the least time between two attempts to reconnect a failed I/O queue.
pub const RECONNECT_INTERVAL: Duration = Duration::from_millis(100);
/// Over NVMe/TCP: attempts to reconnect a failed I/O queue before it stays failed.
pub const RECONNECT_ATTEMPTS: u32 = 50;

/// An I/O command's result from its completion.
#[inline]
fn io_result(c: Completion) -> Result<()> {
    if c.status.is_success() {
        Ok(())
    } else {
        Err(Error::Nvme {
            opcode: c.opcode,
            admin: false,
            status: c.status,
        })
    }
}

/// Why PRPs cannot be used over NVMe/TCP.
fn prp_over_tcp() -> Error {
    Error::Invalid(
        "NVMe/TCP commands describe their data with SGLs; PRP data pointers cannot be used over TCP (use DataPointer::Auto or Sgl)".into(),
    )
}

/// Create I/O Completion Queue for queue `qid`, with interrupts on `irq`'s vector if any.
fn create_cq_command(
    qid: u16,
    entries: u32,
    iova: u64,
    irq: Option<&interrupt::Interrupt>,
) -> Command {
    match irq {
        Some(irq) => Command::create_io_cq_with_interrupt(qid, entries, iova, irq.vector()),
        None => Command::create_io_cq(qid, entries, iova),
    }
}

impl Drop for IoQueuePair {
    fn drop(&mut self) {
        // Give outstanding I/O a moment, then delete the queues: the controller completes or
        // aborts whatever is left, and stops using the rings.
        let _ = self.drain(Duration::from_secs(5), |_, _| {});
        if let Engine::Tcp(q) = &mut self.qp {
            // Over NVMe/TCP the queue goes with its connection (closed when the pair
            // drops): nothing at the controller can still move this process's data.
            q.abort_all(Qp::ABORTED, |_, _| {});
            self.ctrl.free_qid(self.qid);
            return;
        }
        let sq = self
            .ctrl
            .admin_command(Command::delete_io_sq(self.qid), None);
        let cq = self
            .ctrl
            .admin_command(Command::delete_io_cq(self.qid), None);
        let mut bufs = Vec::new();
        let kept = &mut bufs;
        with_qp!(&mut self.qp, |q| q
            .abort_all(Qp::ABORTED, |ctx, _| kept.extend(ctx._buf)));
        if let Some(irq) = &self.irq {
            irq.disable(&self.ctrl);
        }
        if sq.is_ok() && cq.is_ok() {
            // The controller completed or aborted every command of the queue (Delete I/O SQ
            // aborts what is outstanding) and no longer uses the rings.
            self.ctrl.free_qid(self.qid);
            drop(bufs);
            self.rings.take();
            return;
        }
        // The controller may still own the queues: it may still fetch, transfer data of the
        // requests in flight, and post completions. Keep the qid reserved so it is not
        // reused, and park the memory with the controller, which lets it go once the
        // controller is shut down and disabled.
        let parked = Quarantined {
            _rings: self.rings.take(),
            _bufs: bufs,
        };
        self.ctrl.quarantine(parked);
    }
}
