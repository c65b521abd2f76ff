//! Attaching to a controller, its namespaces, and synchronous admin commands.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::{Duration, Instant};

use nvme_core::{
    Command, Completion, ControllerInfo, ControllerInit, InitOptions, QueueConfig, QueuePair, Slot,
};
use nvme_regs::features::FeatureSelect;
use nvme_regs::identify::{cns, IdentifyController, IdentifyNamespace, IDENTIFY_DATA_SIZE};
use nvme_regs::log::{lid, AsyncEvent, ErrorLogEntry, FirmwareSlotLog, SmartLog};
use nvme_regs::opcode::DataDirection;
use nvme_regs::registers::{Csts, ShutdownNotification, ShutdownStatus};
use zerocopy::FromBytes;

use crate::backend::Transport;
use crate::dma::{DmaBuffer, DmaMapping, IoBuf};
use crate::error::{Error, Result};
use crate::group::{Group, Role};
use crate::mmio::Mmio;
use crate::qpair::{IoQueuePair, QueueOptions};
use crate::transport::{TransportId, TransportKind};

/// Bytes of the admin queue's own data buffer (identify, log pages, features).
const ADMIN_DATA: usize = 64 << 10;
/// Largest transfer the driver uses per command when the controller reports no MDTS.
const MAX_TRANSFER_CAP: usize = 2 << 20;

/// Options for [`Controller::attach_with`].
#[derive(Clone, Debug)]
pub struct AttachOptions {
    /// Admin queue entries.
    pub admin_entries: u32,
    /// I/O queues to ask the controller for.
    pub io_queues: u16,
    /// Bound on every synchronous admin command.
    pub admin_timeout: Duration,
    /// Shared-memory group id (`-i`): processes with the same id share the controller.
    pub group: Option<u32>,
}

impl Default for AttachOptions {
    fn default() -> Self {
        AttachOptions {
            admin_entries: 64,
            io_queues: 64,
            admin_timeout: Duration::from_secs(10),
            group: None,
        }
    }
}

/// An active namespace.
#[derive(Clone, Debug)]
pub struct Namespace {
    id: u32,
    block_size: u32,
    blocks: u64,
    identify: Box<IdentifyNamespace>,
}

impl Namespace {
    /// Namespace id.
    pub fn id(&self) -> u32 {
        self.id
    }
    /// Logical block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }
    /// Size in logical blocks (NSZE).
    pub fn blocks(&self) -> u64 {
        self.blocks
    }
    /// Size in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.blocks * self.block_size as u64
    }
    /// The Identify Namespace data read at attach.
    pub fn identify(&self) -> &IdentifyNamespace {
        &self.identify
    }
}

/// Context of an admin command: a sequence number to match its completion.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub(crate) struct AdminTag(pub(crate) u64);

pub(crate) type AdminQp = QueuePair<Mmio, AdminTag, Box<[Slot<AdminTag>]>>;

/// Where admin commands go: a queue pair this process owns alone, or the group's shared one.
pub(crate) enum AdminKind {
    /// This process owns the controller.
    Local {
        /// The admin queue pair.
        qp: Box<AdminQp>,
        /// Its rings and PRP lists.
        _rings: DmaMapping,
    },
    /// The admin queue of a shared-memory group.
    Shared,
}

pub(crate) struct Admin {
    kind: AdminKind,
    regs: Mmio,
    next_tag: u64,
    data: DmaBuffer,
    /// Asynchronous events received and not yet handed out (process-local admin queue).
    events: Vec<u32>,
    /// Is an Asynchronous Event Request outstanding (process-local admin queue)?
    aer_armed: bool,
    /// Data memory of commands that timed out (or met a fatal controller) while the
    /// controller still owned it: (tag, the mapping). An entry goes when the command's late
    /// completion is reaped, or after the controller was disabled (see `Inner`'s drop).
    /// The admin data buffer is among them when such a command used it; the next command
    /// gets a fresh one.
    parked: Vec<(u64, Arc<DmaMapping>)>,
}

/// The tag of Asynchronous Event Requests on a process-local admin queue (commands count
/// from 1).
const AER_TAG: AdminTag = AdminTag(0);

/// Shared state of an attached controller.
pub(crate) struct Inner {
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) regs: Mmio,
    pub(crate) trid: TransportId,
    pub(crate) info: Box<ControllerInfo>,
    pub(crate) namespaces: Arc<[Namespace]>,
    pub(crate) max_transfer: usize,
    pub(crate) admin: Mutex<Admin>,
    qids: Mutex<Vec<bool>>,
    pub(crate) group: Option<Arc<Group>>,
    /// Position in the group's asynchronous event record this controller has read up to.
    event_cursor: Mutex<u64>,
    pub(crate) granted: u16,
    opts: AttachOptions,
    pub(crate) monitor_stop: Arc<AtomicBool>,
    /// Shadow doorbell and EventIdx buffers (one page each) given to the controller with
    /// Doorbell Buffer Config, when it offers it.
    pub(crate) shadow: Option<Arc<DmaMapping>>,
    /// Memory of queue pairs dropped while the controller may still use it (their queue
    /// deletion failed): rings and the buffers of requests in flight. Let go after the
    /// controller is shut down and disabled (see `release_parked`).
    pub(crate) quarantine: Mutex<Vec<crate::qpair::Quarantined>>,
}

/// An attached NVMe controller. Cheap to clone; every clone and every queue pair keeps the
/// controller attached. The last one to go shuts the controller down (CC.SHN) and detaches.
#[derive(Clone)]
pub struct Controller {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("transport", &self.inner.trid.to_string())
            .finish()
    }
}

/// Gives the controller shadow doorbell buffers (Doorbell Buffer Config) when it offers them
/// and `NVME_NO_SHADOW_DOORBELLS` is not set. A failure only means MMIO doorbells.
fn setup_shadow_doorbells(
    transport: &Arc<dyn Transport>,
    info: &ControllerInfo,
    admin: &mut Admin,
    timeout: Duration,
) -> Option<Arc<DmaMapping>> {
    use nvme_regs::identify::Oacs;
    if !info.identify.oacs().contains(Oacs::DOORBELL_BUFFER_CONFIG)
        || std::env::var_os("NVME_NO_SHADOW_DOORBELLS").is_some()
    {
        return None;
    }
    let ps = info.page_size;
    let mem = Arc::new(DmaMapping::new(transport, "nvme-dbbuf", 2 * ps).ok()?);
    let r = mem.region();
    let cmd = Command::doorbell_buffer_config(r.iova(), r.iova() + ps as u64);
    // The buffers are not a PRP, but the controller may use them once the command ran:
    // on a timeout they stay mapped like a data buffer.
    admin
        .execute(None, cmd, None, Some(mem.clone()), timeout)
        .ok()?;
    Some(mem)
}

pub(crate) fn init_options(opts: &AttachOptions) -> InitOptions {
    InitOptions {
        admin_entries: opts.admin_entries,
        io_queues: opts.io_queues,
        page_size: None,
        admin_timeout_ms: opts.admin_timeout.as_millis().min(u32::MAX as u128) as u32,
    }
}

/// Where the admin rings and PRP lists sit in their segment.
pub(crate) struct AdminLayout {
    pub(crate) entries: u32,
    pub(crate) sq_len: usize,
    pub(crate) cq_len: usize,
    pub(crate) prp_len: usize,
    pub(crate) len: usize,
}

impl AdminLayout {
    pub(crate) fn new(entries: u32, page_size: usize) -> AdminLayout {
        let sq_len = (entries as usize * 64).next_multiple_of(page_size);
        let cq_len = (entries as usize * 16).next_multiple_of(page_size);
        let prp_len = QueueConfig::prp_len(entries, page_size, ADMIN_DATA).max(page_size);
        AdminLayout {
            entries,
            sq_len,
            cq_len,
            prp_len,
            len: sq_len + cq_len + prp_len,
        }
    }
    pub(crate) fn sq_off(&self) -> usize {
        0
    }
    pub(crate) fn cq_off(&self) -> usize {
        self.sq_len
    }
    pub(crate) fn prp_off(&self) -> usize {
        self.sq_len + self.cq_len
    }
}

/// Brings the controller up with a process-local admin queue pair over `rings`.
pub(crate) fn bring_up(
    transport: &Arc<dyn Transport>,
    init: &mut ControllerInit,
    rings: nvme_core::DmaRegion,
    layout: &AdminLayout,
) -> Result<(ControllerInfo, AdminQp, DmaBuffer)> {
    let regs = transport.regs();
    let cfg = init.admin_queue_config(
        rings.sub(layout.sq_off(), layout.sq_len).expect("sq"),
        rings.sub(layout.cq_off(), layout.cq_len).expect("cq"),
        rings.sub(layout.prp_off(), layout.prp_len).expect("prp"),
        ADMIN_DATA,
    );
    let slots: Box<[Slot<AdminTag>]> = (0..QueueConfig::slots(layout.entries))
        .map(|_| Slot::EMPTY)
        .collect();
    let mut qp = QueuePair::new(cfg, regs.clone(), slots)
        .map_err(|e| Error::Init(nvme_core::InitError::Queue(e)))?;
    let mut data = DmaBuffer::new(transport, ADMIN_DATA)?;
    let data_region = IoBuf::from(&mut data).region();
    let start = Instant::now();
    let info = loop {
        let now = start.elapsed().as_nanos() as u64;
        match init.poll(&regs, &mut qp, &data_region, now) {
            Poll::Ready(r) => break r?,
            Poll::Pending => std::thread::sleep(Duration::from_micros(20)),
        }
    };
    qp.lower_max_transfer(info.max_transfer.min(MAX_TRANSFER_CAP));
    Ok((info, qp, data))
}

/// The admin data buffer size.
pub(crate) const ADMIN_DATA_LEN: usize = ADMIN_DATA;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves the admin queue consistent (every step is
    // complete or not started), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Controller {
    /// Attaches to the controller named by a transport id string, e.g. `trtype:sim` or
    /// `trtype:PCIe traddr:0000:04:00.0`.
    pub fn attach(trid: &str) -> Result<Controller> {
        let trid = TransportId::parse(trid).map_err(Error::BadTransport)?;
        Controller::attach_with(&trid, &AttachOptions::default())
    }

    /// Attaches with explicit options.
    pub fn attach_with(trid: &TransportId, opts: &AttachOptions) -> Result<Controller> {
        if let Some(id) = opts.group {
            return crate::groupattach::attach(trid, opts, id);
        }
        let transport: Arc<dyn Transport> = match &trid.kind {
            TransportKind::Sim(o) => crate::open_sim(o)?,
            TransportKind::Pcie { traddr } => crate::open_pcie(traddr.as_ref())?,
        };
        Controller::attach_transport(transport, trid.clone(), opts)
    }

    /// Attaches through a transport the caller opened (a software controller with a custom
    /// configuration, or a transport of the embedder's own).
    pub fn attach_transport(
        transport: Arc<dyn Transport>,
        trid: TransportId,
        opts: &AttachOptions,
    ) -> Result<Controller> {
        let regs = transport.regs();
        let mut init = ControllerInit::new(&regs, init_options(opts))?;
        let layout = AdminLayout::new(opts.admin_entries, init.page_size());
        let rings = DmaMapping::new(&transport, "nvme-admin", layout.len)?;
        let (info, qp, data) = bring_up(&transport, &mut init, rings.region(), &layout)?;
        let admin = Admin {
            kind: AdminKind::Local {
                qp: Box::new(qp),
                _rings: rings,
            },
            regs,
            next_tag: 1,
            data,
            events: Vec::new(),
            aer_armed: false,
            parked: Vec::new(),
        };
        Controller::finish(transport, trid, opts, info, admin, None)
    }

    /// Identifies the namespaces and builds the controller (every attach path ends here).
    pub(crate) fn finish(
        transport: Arc<dyn Transport>,
        trid: TransportId,
        opts: &AttachOptions,
        info: ControllerInfo,
        mut admin: Admin,
        group: Option<Group>,
    ) -> Result<Controller> {
        let group = group.map(Arc::new);
        let max_transfer = info.max_transfer.min(MAX_TRANSFER_CAP);
        let granted = info.io_queues.sq.min(info.io_queues.cq);
        admin.arm_events();
        let mut namespaces = Vec::new();
        for nsid in info.namespaces.iter() {
            let id: IdentifyNamespace = admin.read_struct(
                group.as_deref(),
                Command::identify(cns::NAMESPACE, nsid, 0),
                opts.admin_timeout,
            )?;
            let block_size = id.block_size();
            if id.nsze == 0 || block_size == 0 {
                continue;
            }
            namespaces.push(Namespace {
                id: nsid,
                block_size,
                blocks: id.nsze,
                identify: Box::new(id),
            });
        }
        let shadow = match &group {
            // Controller-wide buffers would have to live in the group's shared memory; a
            // group uses MMIO doorbells for now.
            Some(_) => None,
            None => setup_shadow_doorbells(&transport, &info, &mut admin, opts.admin_timeout),
        };
        let inner = Inner {
            shadow,
            regs: admin.regs.clone(),
            transport,
            trid,
            info: Box::new(info),
            namespaces: namespaces.into(),
            max_transfer,
            admin: Mutex::new(admin),
            qids: Mutex::new(vec![false; granted as usize + 1]),
            event_cursor: Mutex::new(group.as_ref().map_or(0, |g| g.events_seq())),
            group,
            granted,
            opts: opts.clone(),
            monitor_stop: Arc::new(AtomicBool::new(false)),
            quarantine: Mutex::new(Vec::new()),
        };
        Ok(Controller {
            inner: Arc::new(inner),
        })
    }

    /// The transport id this controller was attached with.
    pub fn transport_id(&self) -> &TransportId {
        &self.inner.trid
    }
    /// The transport's short name (PCI address or `sim`).
    pub fn name(&self) -> String {
        self.inner.transport.name()
    }
    /// PCI vendor and device id (the Identify vendor ids when there is no PCI function).
    pub fn pci_id(&self) -> (u16, u16) {
        self.inner
            .transport
            .pci_id()
            .unwrap_or((self.inner.info.identify.vid, self.inner.info.identify.ssvid))
    }
    /// What bring-up learned: CAP, VS, page size, MDTS, queues granted, Identify data.
    pub fn info(&self) -> &ControllerInfo {
        &self.inner.info
    }
    /// The Identify Controller data read at attach.
    pub fn identify(&self) -> &IdentifyController {
        &self.inner.info.identify
    }
    /// Active namespaces.
    pub fn namespaces(&self) -> &[Namespace] {
        &self.inner.namespaces
    }
    /// An active namespace by id.
    pub fn namespace(&self, nsid: u32) -> Result<&Namespace> {
        self.inner
            .namespaces
            .iter()
            .find(|n| n.id == nsid)
            .ok_or(Error::NoSuchNamespace(nsid))
    }
    /// Largest transfer of one command in bytes (larger I/Os are split).
    pub fn max_transfer(&self) -> usize {
        self.inner.max_transfer
    }
    /// The software controller behind this controller, when it is `trtype:sim`.
    #[cfg(feature = "sim")]
    pub fn sim(&self) -> Option<&nvme_sim::SimController> {
        self.inner.transport.sim()
    }
    /// Allocates a zeroed DMA buffer of `len` bytes.
    pub fn alloc_dma(&self, len: usize) -> Result<DmaBuffer> {
        DmaBuffer::new(&self.inner.transport, len)
    }
    /// Creates an I/O queue pair for the calling thread.
    pub fn alloc_io_queue(&self, opts: QueueOptions) -> Result<IoQueuePair> {
        IoQueuePair::create(self.clone(), opts)
    }
    /// I/O queue ids in use (by every process of the group, in a group).
    pub fn io_queues_in_use(&self) -> usize {
        if let Some(g) = &self.inner.group {
            return g.qids_in_use();
        }
        lock(&self.inner.qids).iter().filter(|&&b| b).count()
    }
    /// This process's role: alone, or primary / secondary of a shared-memory group.
    pub fn role(&self) -> Role {
        self.inner.group.as_ref().map_or(Role::Single, |g| g.role())
    }
    /// Asynchronous events (SMART/health warnings, notices, errors) that arrived since the
    /// last call. In a shared-memory group every process sees every event. Reading the
    /// log page an event names (e.g. [`smart_log`](Self::smart_log)) re-enables that
    /// event type on the controller.
    pub fn async_events(&self) -> Vec<AsyncEvent> {
        let mut out = Vec::new();
        match &self.inner.group {
            Some(g) => {
                let q = g.admin(self.inner.regs.clone());
                q.reap();
                let mut cursor = lock(&self.inner.event_cursor);
                q.events_since(&mut cursor, |dw0| out.push(AsyncEvent::from_dword(dw0)));
            }
            None => {
                let mut admin = lock(&self.inner.admin);
                admin.poll_events();
                out.extend(admin.events.drain(..).map(AsyncEvent::from_dword));
            }
        }
        out
    }

    /// The pid of the software controller's own process (shared-memory groups over
    /// `trtype:sim`), if there is one.
    #[cfg(feature = "sim")]
    pub fn sim_process(&self) -> Option<u32> {
        self.inner.transport.sim_client().map(|c| c.pid())
    }
    /// Test hook: takes the group's admin lock and never releases it, so that a test can
    /// kill this process while it holds the lock. Does nothing outside a group.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn __test_hold_group_lock(&self) {
        if let Some(g) = &self.inner.group {
            g.hold_lock_forever();
        }
    }
    /// The shared-memory group id, if any.
    pub fn group_id(&self) -> Option<u32> {
        self.inner.group.as_ref().map(|g| g.id())
    }

    pub(crate) fn alloc_qid(&self) -> Result<u16> {
        if let Some(g) = &self.inner.group {
            return g.alloc_qid(self.inner.granted);
        }
        let mut q = lock(&self.inner.qids);
        let granted = (q.len() - 1) as u16;
        let id = q
            .iter()
            .skip(1)
            .position(|b| !b)
            .ok_or(Error::NoQueuesLeft { granted })?
            + 1;
        q[id] = true;
        Ok(id as u16)
    }
    pub(crate) fn free_qid(&self, qid: u16) {
        if let Some(g) = &self.inner.group {
            return g.free_qid(qid);
        }
        if let Some(b) = lock(&self.inner.qids).get_mut(qid as usize) {
            *b = false;
        }
    }

    /// Runs an admin command synchronously, with an optional data range, and returns its
    /// completion. A failing status is an [`Error::Nvme`].
    pub fn admin_command(&self, cmd: Command, data: Option<IoBuf<'_>>) -> Result<Completion> {
        let timeout = self.inner.opts.admin_timeout;
        let mut admin = lock(&self.inner.admin);
        let c = admin.execute(
            self.inner.group.as_deref(),
            cmd,
            data.map(|d| d.region()),
            data.map(|d| d.map.clone()),
            timeout,
        )?;
        Ok(c)
    }

    /// Runs an admin command that reads `len` bytes into the admin data buffer and returns a
    /// copy of them.
    pub fn admin_read(&self, cmd: Command, len: usize) -> Result<Vec<u8>> {
        if len > ADMIN_DATA {
            return Err(Error::Invalid(format!(
                "admin transfer of {len} bytes exceeds {ADMIN_DATA}"
            )));
        }
        let timeout = self.inner.opts.admin_timeout;
        let mut admin = lock(&self.inner.admin);
        admin.read_bytes(self.inner.group.as_deref(), cmd, len, timeout)
    }

    /// Identify Controller, read now.
    pub fn identify_controller(&self) -> Result<IdentifyController> {
        let b = self.admin_read(Command::identify(cns::CONTROLLER, 0, 0), IDENTIFY_DATA_SIZE)?;
        Ok(IdentifyController::read_from_bytes(&b).expect("4096 bytes"))
    }
    /// Identify Namespace `nsid`, read now.
    pub fn identify_namespace(&self, nsid: u32) -> Result<IdentifyNamespace> {
        let b = self.admin_read(
            Command::identify(cns::NAMESPACE, nsid, 0),
            IDENTIFY_DATA_SIZE,
        )?;
        Ok(IdentifyNamespace::read_from_bytes(&b).expect("4096 bytes"))
    }
    /// Get Log Page: `len` bytes (a multiple of 4) of log `lid` for `nsid` from byte `offset`.
    pub fn get_log_page(&self, lid: u8, nsid: u32, len: usize, offset: u64) -> Result<Vec<u8>> {
        if len == 0 || !len.is_multiple_of(4) {
            return Err(Error::Invalid(format!(
                "log page length {len} must be a positive multiple of 4"
            )));
        }
        self.admin_read(Command::get_log_page(lid, nsid, len as u32, offset), len)
    }
    /// The SMART / Health Information log (controller-wide).
    pub fn smart_log(&self) -> Result<SmartLog> {
        let b = self.get_log_page(lid::SMART, u32::MAX, 512, 0)?;
        Ok(SmartLog::read_from_bytes(&b).expect("512 bytes"))
    }
    /// The first `entries` Error Information log entries.
    pub fn error_log(&self, entries: usize) -> Result<Vec<ErrorLogEntry>> {
        let entries = entries.clamp(1, ADMIN_DATA / 64);
        let b = self.get_log_page(lid::ERROR, u32::MAX, entries * 64, 0)?;
        Ok(b.chunks_exact(64)
            .map(|c| ErrorLogEntry::read_from_bytes(c).expect("64 bytes"))
            .collect())
    }
    /// The Firmware Slot Information log.
    pub fn firmware_log(&self) -> Result<FirmwareSlotLog> {
        let b = self.get_log_page(lid::FIRMWARE_SLOT, u32::MAX, 512, 0)?;
        Ok(FirmwareSlotLog::read_from_bytes(&b).expect("512 bytes"))
    }
    /// Get Features: returns completion dword 0.
    pub fn get_features(&self, fid: u8, sel: FeatureSelect, nsid: u32, cdw11: u32) -> Result<u32> {
        Ok(self
            .admin_command(Command::get_features(fid, sel, nsid, cdw11), None)?
            .dw0)
    }
    /// Set Features: returns completion dword 0.
    pub fn set_features(&self, fid: u8, nsid: u32, cdw11: u32, save: bool) -> Result<u32> {
        Ok(self
            .admin_command(Command::set_features(fid, nsid, cdw11, save), None)?
            .dw0)
    }
    /// Reads CSTS now.
    pub fn status_register(&self) -> Csts {
        self.inner.regs.csts()
    }
}

/// Does the controller report fatal status (or has it disappeared)?
pub(crate) fn fatal(regs: &Mmio) -> bool {
    let csts = regs.csts();
    csts.cfs() || csts.is_all_ones()
}

impl Admin {
    /// An admin path through the group's shared admin queue (the process already joined).
    pub(crate) fn shared(regs: Mmio, data: DmaBuffer) -> Admin {
        Admin {
            kind: AdminKind::Shared,
            regs,
            next_tag: 1,
            data,
            events: Vec::new(),
            aer_armed: false,
            parked: Vec::new(),
        }
    }

    /// Keeps one Asynchronous Event Request outstanding on a process-local admin queue.
    /// (In a group the shared admin queue does this for everyone.)
    fn arm_events(&mut self) {
        if let AdminKind::Local { qp, .. } = &mut self.kind {
            if !self.aer_armed
                && qp
                    .submit(Command::async_event_request(), None, AER_TAG)
                    .is_ok()
            {
                self.aer_armed = true;
                qp.ring();
            }
        }
    }

    /// Reaps completions of a process-local admin queue without a command of our own
    /// outstanding: asynchronous events, and late completions of commands that timed out.
    fn poll_events(&mut self) {
        self.poll_local();
        self.arm_events();
    }

    /// Reaps completions of a process-local admin queue: asynchronous events, and late
    /// completions of commands that timed out. Submits nothing.
    fn poll_local(&mut self) {
        if let AdminKind::Local { qp, .. } = &mut self.kind {
            let (events, armed, parked) = (&mut self.events, &mut self.aer_armed, &mut self.parked);
            qp.poll(usize::MAX, |t, c| {
                if t == AER_TAG {
                    *armed = false;
                    if c.status.is_success() {
                        events.push(c.dw0);
                    }
                } else {
                    unpark(parked, t.0);
                }
            });
        }
    }

    /// Reaps late completions of this process's timed-out commands (letting their memory
    /// go) without waiting for anything.
    pub(crate) fn reap_parked(&mut self, group: Option<&Group>) {
        if self.parked.is_empty() {
            return;
        }
        match (&self.kind, group) {
            (AdminKind::Local { .. }, _) => self.poll_local(),
            (AdminKind::Shared, Some(g)) => {
                let parked = &mut self.parked;
                g.admin(self.regs.clone())
                    .poll(false, |t, _| unpark(parked, t));
            }
            (AdminKind::Shared, None) => {}
        }
    }

    /// Is memory of timed-out commands still waiting for the controller?
    pub(crate) fn has_parked(&self) -> bool {
        !self.parked.is_empty()
    }

    /// Lets go of the memory of timed-out commands: only once the controller can no longer
    /// use it (disabled), or leaked (`forget`) when that cannot be known.
    pub(crate) fn release_parked(&mut self, forget: bool) {
        for (_, m) in self.parked.drain(..) {
            if forget {
                std::mem::forget(m);
            }
        }
    }

    /// Submits and waits. `data` is the data pointer's region; `keep` keeps the memory the
    /// command points to mapped: until the completion arrives, and past a timeout until the
    /// late completion is reaped (see `parked`).
    fn execute(
        &mut self,
        group: Option<&Group>,
        cmd: Command,
        region: Option<nvme_core::DmaRegion>,
        keep: Option<Arc<DmaMapping>>,
        timeout: Duration,
    ) -> Result<Completion> {
        let tag = AdminTag(self.next_tag);
        self.next_tag += 1;
        let r = self.execute_inner(group, cmd, region, tag, timeout);
        if let (Err(Error::Timeout { .. } | Error::ControllerFatal), Some(k)) = (&r, keep) {
            // Submitted and not completed: the controller may still transfer.
            self.parked.push((tag.0, k));
        }
        r
    }

    fn execute_inner(
        &mut self,
        group: Option<&Group>,
        cmd: Command,
        region: Option<nvme_core::DmaRegion>,
        tag: AdminTag,
        timeout: Duration,
    ) -> Result<Completion> {
        let regs = self.regs.clone();
        let start = Instant::now();
        let mut result = None;
        let mut submitted = false;
        loop {
            match &mut self.kind {
                AdminKind::Local { qp, .. } => {
                    if !submitted {
                        qp.submit(cmd, region, tag)?;
                        submitted = true;
                    }
                    let (events, armed, parked) =
                        (&mut self.events, &mut self.aer_armed, &mut self.parked);
                    qp.poll(usize::MAX, |t, c| {
                        if t == tag {
                            result = Some(c);
                        } else if t == AER_TAG {
                            *armed = false;
                            if c.status.is_success() {
                                events.push(c.dw0);
                            }
                        } else {
                            unpark(parked, t.0);
                        }
                    });
                }
                AdminKind::Shared => {
                    let q = group
                        .expect("a shared admin queue belongs to a group")
                        .admin(regs.clone());
                    if !submitted {
                        match q.submit(cmd, region, tag.0) {
                            Ok(()) => submitted = true,
                            // Other processes fill the queue: poll and retry until the timeout.
                            Err(nvme_core::shared::AdminSubmitError::Submit(
                                nvme_core::SubmitError::QueueFull,
                            )) => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                    let parked = &mut self.parked;
                    q.poll(false, |t, c| {
                        if t == tag.0 {
                            result = Some(c);
                        } else {
                            unpark(parked, t);
                        }
                    });
                }
            }
            if let Some(c) = result {
                if !self.aer_armed {
                    self.arm_events();
                }
                if !c.status.is_success() {
                    return Err(Error::Nvme {
                        opcode: cmd.opcode(),
                        admin: true,
                        status: c.status,
                    });
                }
                return Ok(c);
            }
            if start.elapsed() > Duration::from_millis(1) && fatal(&regs) {
                return Err(Error::ControllerFatal);
            }
            if start.elapsed() > timeout {
                // The command stays outstanding; its slot (and PRP list) is reclaimed if it
                // ever completes, its data memory is parked by `execute` until then.
                return Err(Error::Timeout {
                    opcode: cmd.opcode(),
                    admin: true,
                    waited_ms: timeout.as_millis() as u64,
                });
            }
            std::hint::spin_loop();
            if start.elapsed() > Duration::from_micros(200) {
                std::thread::yield_now();
            }
        }
    }

    pub(crate) fn read_bytes(
        &mut self,
        group: Option<&Group>,
        cmd: Command,
        len: usize,
        timeout: Duration,
    ) -> Result<Vec<u8>> {
        debug_assert_eq!(cmd.direction(), DataDirection::ControllerToHost);
        if self.data.in_flight() {
            // A command that timed out still owns the buffer (it is parked): use a new one.
            self.data = self.data.new_like()?;
        }
        self.data.as_mut_slice()[..len].fill(0);
        let io = self.data.slice(0..len)?;
        let region = io.region();
        let keep = io.map.clone();
        self.execute(group, cmd, Some(region), Some(keep), timeout)?;
        Ok(self.data.as_slice()[..len].to_vec())
    }

    fn read_struct<T: FromBytes>(
        &mut self,
        group: Option<&Group>,
        cmd: Command,
        timeout: Duration,
    ) -> Result<T> {
        let b = self.read_bytes(group, cmd, std::mem::size_of::<T>(), timeout)?;
        Ok(T::read_from_bytes(&b).expect("exact size"))
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        // Reached with parked memory only when attaching failed after a timeout (a running
        // controller's `Inner` releases it after shutdown first). A process-local controller
        // is ours: disable it, then let go; a shared one may still run: keep the memory.
        if self.has_parked() {
            let disabled = matches!(self.kind, AdminKind::Local { .. })
                && disable(&self.regs, Duration::from_secs(10));
            self.release_parked(!disabled);
        }
    }
}

/// Lets go of the parked memory of the timed-out command `tag`, whose completion arrived.
fn unpark(parked: &mut Vec<(u64, Arc<DmaMapping>)>, tag: u64) {
    parked.retain(|(t, _)| *t != tag);
}

/// Disables the controller (CC.EN = 0) and waits for CSTS.RDY = 0, bounded by CAP.TO: after
/// a reset the controller touches no host memory. Returns whether it got there.
fn disable(regs: &Mmio, timeout: Duration) -> bool {
    let cc = regs.cc();
    if regs.csts().is_all_ones() {
        return false;
    }
    regs.set_cc(cc.with_en(false));
    let start = Instant::now();
    loop {
        let csts = regs.csts();
        if csts.is_all_ones() {
            return false;
        }
        if !csts.rdy() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// Sends the normal shutdown notification and waits for it, bounded by RTD3E or 10 s (NVMe
/// 1.4 7.6.2).
fn shutdown(regs: &Mmio, rtd3e_us: u32) {
    let cc = regs.cc();
    if !cc.en() || regs.csts().is_all_ones() {
        return;
    }
    regs.set_cc(cc.with_shn(ShutdownNotification::Normal));
    let rtd3e = Duration::from_micros(rtd3e_us as u64);
    let bound = if rtd3e.is_zero() {
        Duration::from_secs(10)
    } else {
        rtd3e.min(Duration::from_secs(60))
    };
    let start = Instant::now();
    while start.elapsed() < bound {
        let csts = regs.csts();
        if csts.shst() == ShutdownStatus::Complete || csts.cfs() || csts.is_all_ones() {
            break;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

impl Inner {
    /// Lets go of memory the controller might still have used (timed-out admin commands,
    /// queue pairs whose deletion failed) once it was shut down: disables it first, and
    /// leaks the memory if it does not become disabled. `controller_down`: this process
    /// shut the controller down; otherwise other processes still use it, so the memory
    /// is leaked (it stays mapped for the controller).
    fn release_parked(&mut self, controller_down: bool) {
        let admin = self.admin.get_mut().unwrap_or_else(|p| p.into_inner());
        let quarantine = self.quarantine.get_mut().unwrap_or_else(|p| p.into_inner());
        if !admin.has_parked() && quarantine.is_empty() {
            return;
        }
        let disabled = controller_down
            && disable(
                &self.regs,
                Duration::from_millis(self.info.cap.timeout_ms() as u64),
            );
        admin.release_parked(!disabled);
        for q in quarantine.drain(..) {
            if !disabled {
                std::mem::forget(q);
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.monitor_stop.store(true, Ordering::Relaxed);
        let group = self.group.clone();
        lock(&self.admin).reap_parked(group.as_deref());
        let Some(group) = &group else {
            shutdown(&self.regs, self.info.identify.rtd3e);
            self.release_parked(true);
            return;
        };
        // Leave the group: the last member out shuts the controller down and removes the
        // group's files; the software controller's process exits when its last client goes.
        if group.lock_join().is_err() {
            // Whether the controller is still used is unknown: keep what it may touch.
            self.release_parked(false);
            return;
        }
        let me = group.me();
        group.admin(self.regs.clone()).release_member(me);
        if group.leave() {
            shutdown(&self.regs, self.info.identify.rtd3e);
            self.release_parked(true);
            self.transport.last_member_left();
            group.remove_files();
        } else {
            self.release_parked(false);
        }
        group.unlock_join();
    }
}
