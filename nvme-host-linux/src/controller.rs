//! An attached controller: its identity, namespaces, queue ids, synchronous admin
//! commands, and detaching.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nvme_core::{Command, Completion, ControllerInfo};
use nvme_regs::features::FeatureSelect;
use nvme_regs::identify::{cns, IdentifyController, IdentifyNamespace, IDENTIFY_DATA_SIZE};
use nvme_regs::log::{lid, AsyncEvent, ErrorLogEntry, FirmwareSlotLog, SmartLog};
use nvme_regs::registers::Csts;
use zerocopy::FromBytes;

use crate::admin::{disable, shutdown, Admin, ADMIN_DATA};
use crate::attach::AttachOptions;
use crate::dma::{DmaBuffer, IoBuf};
use crate::error::{Error, Result};
use crate::group::{Group, Role};
use crate::lease::{Lease, LeaseMode, LeaseRange, LocalLeases};
use crate::mmio::Mmio;
use crate::namespace::{Namespace, NamespaceTable};
use crate::qpair::{IoQueuePair, QueueOptions};
use crate::shadow::ShadowPages;
use crate::transport::{FunctionReset, Transport};
use crate::trid::TransportId;

/// Largest transfer the driver uses per command when the controller reports no MDTS.
const MAX_TRANSFER_CAP: usize = 2 << 20;

/// Shared state of an attached controller.
pub(crate) struct Inner {
    live: Arc<crate::admin::Liveness>,
    transport: Arc<dyn Transport>,
    /// The registers (`None` over NVMe/TCP).
    regs: Option<Mmio>,
    trid: TransportId,
    info: Box<ControllerInfo>,
    namespaces: NamespaceTable,
    max_transfer: usize,
    admin: Mutex<Admin>,
    qids: Mutex<Vec<bool>>,
    /// Serialises this process's interrupt set-up (the group's interrupt lock serialises
    /// the processes).
    irq_lock: Mutex<()>,
    group: Option<Arc<Group>>,
    /// Position in the group's asynchronous event record this controller has read up to.
    event_cursor: Mutex<u64>,
    granted: u16,
    opts: AttachOptions,
    monitor_stop: Arc<AtomicBool>,
    /// Shadow doorbell and EventIdx buffers (one page each) given to the controller with
    /// Doorbell Buffer Config, when it offers it: this process's own, or its group's.
    shadow: Option<ShadowPages>,
    /// Memory of queue pairs dropped while the controller may still use it (their queue
    /// deletion failed): rings and the buffers of requests in flight. Let go after the
    /// controller is shut down and disabled (see `release_parked`).
    quarantine: Mutex<Vec<crate::qpair::Quarantined>>,
    /// This attach's LBA range leases, private to the process (`lease`).
    leases: Arc<LocalLeases>,
}

/// An attached NVMe controller. Cheap to clone; every clone and every queue pair keeps the
/// controller attached. The last one to go shuts the controller down (CC.SHN) and detaches.
#[derive(Clone)]
pub struct Controller {
    att: Arc<Attached>,
}

/// What the application's handles share: the controller and the group's monitor thread.
/// Dropping the last handle (on the application's thread, never the monitor's) stops and
/// joins the monitor, then detaches.
struct Attached {
    inner: Arc<Inner>,
    monitor: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Attached {
    fn drop(&mut self) {
        crate::steps::step("detach: stopping the monitor");
        self.inner.monitor_stop.store(true, Ordering::Release);
        if let Some(m) = lock(&self.monitor).take() {
            m.thread().unpark();
            let _ = m.join();
        }
        // Nothing else holds the controller now (the monitor's reference went with it).
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.detach(),
            None => {
                // Cannot happen: only handles and the monitor hold it. Leave the controller
                // as it is rather than tear it down under someone.
                eprintln!("nvme: controller still referenced at detach; not detaching");
            }
        }
    }
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("transport", &self.inner().trid.to_string())
            .finish()
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves the admin queue consistent (every step is
    // complete or not started), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Controller {
    /// Builds the controller from an attach (every attach path ends here).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        transport: Arc<dyn Transport>,
        trid: TransportId,
        opts: &AttachOptions,
        info: ControllerInfo,
        namespaces: Vec<Namespace>,
        mut admin: Admin,
        group: Option<Arc<Group>>,
        shadow: Option<ShadowPages>,
    ) -> Controller {
        // Attached: from now on a timed-out command can escalate to this controller's reset.
        admin.set_timeout_action(opts.timeout_action, opts.abort_timeout);
        let max_transfer = info.max_transfer.min(MAX_TRANSFER_CAP);
        let granted = info.io_queues.sq.min(info.io_queues.cq);
        let inner = Inner {
            shadow,
            regs: admin.liveness().regs().cloned(),
            live: admin.liveness().clone(),
            transport,
            trid,
            info: Box::new(info),
            namespaces: NamespaceTable::new(namespaces),
            max_transfer,
            admin: Mutex::new(admin),
            qids: Mutex::new(vec![false; granted as usize + 1]),
            irq_lock: Mutex::new(()),
            event_cursor: Mutex::new(group.as_ref().map_or(0, |g| g.events_seq())),
            group,
            granted,
            opts: opts.clone(),
            monitor_stop: Arc::new(AtomicBool::new(false)),
            quarantine: Mutex::new(Vec::new()),
            leases: Arc::default(),
        };
        Controller {
            att: Arc::new(Attached {
                inner: Arc::new(inner),
                monitor: Mutex::new(None),
            }),
        }
    }

    fn inner(&self) -> &Inner {
        &self.att.inner
    }

    /// The options this process attached with.
    pub(crate) fn options(&self) -> &AttachOptions {
        &self.inner().opts
    }

    /// `dp` for this controller's I/O queues: `Auto` becomes SGLs when Identify SGLS reports
    /// SGL support for NVM commands, PRPs otherwise; `Sgl` without that support is an error.
    pub(crate) fn io_data_pointer(&self, dp: crate::DataPointer) -> Result<nvme_core::DataPointer> {
        let sgls = self.identify().sgl_support();
        Ok(match dp {
            crate::DataPointer::Prp => nvme_core::DataPointer::Prp,
            crate::DataPointer::Auto if !sgls.supported() => nvme_core::DataPointer::Prp,
            crate::DataPointer::Auto => nvme_core::DataPointer::Sgl,
            crate::DataPointer::Sgl if sgls.supported() => nvme_core::DataPointer::Sgl,
            crate::DataPointer::Sgl => {
                return Err(Error::Invalid(format!(
                    "SGL data pointers asked for, but the controller does not support SGLs for NVM commands (Identify SGLS = {:#x}); use DataPointer::Prp or Auto",
                    sgls.0
                )))
            }
        })
    }

    /// The controller's state (what the group's monitor and cleanup work with).
    pub(crate) fn state(&self) -> &Inner {
        self.inner()
    }
    /// The transport.
    pub(crate) fn transport(&self) -> &Arc<dyn Transport> {
        self.inner().transport()
    }
    /// The shared-memory group this process belongs to, if any.
    pub(crate) fn group(&self) -> Option<&Arc<Group>> {
        self.inner().group()
    }
    /// The group when its members share the admin queue and queue ids (see
    /// `Inner::shared_group`).
    pub(crate) fn shared_group(&self) -> Option<&Arc<Group>> {
        self.inner().shared_group()
    }
    /// Shadow doorbell and EventIdx buffers, when the controller took them.
    pub(crate) fn shadow_doorbells(&self) -> Option<&ShadowPages> {
        self.inner().shadow.as_ref()
    }
    /// The namespaces, shared with queue pairs.
    pub(crate) fn namespaces_shared(&self) -> &Arc<[Namespace]> {
        self.inner().namespaces.current()
    }
    /// The table of namespace lists (a rescan appends to it).
    pub(crate) fn namespace_table(&self) -> &NamespaceTable {
        &self.inner().namespaces
    }
    /// Starts the group's monitor thread with `run`, which gets the controller's state
    /// (not a handle: the application's last handle always detaches on its own thread) and
    /// the stop flag; it is joined before detaching.
    pub(crate) fn start_monitor(
        &self,
        run: impl FnOnce(Arc<Inner>, Arc<AtomicBool>) + Send + 'static,
    ) -> std::io::Result<()> {
        let inner = self.att.inner.clone();
        let stop = self.inner().monitor_stop.clone();
        let handle = std::thread::Builder::new()
            .name("nvme-group".into())
            .spawn(move || run(inner, stop))?;
        *lock(&self.att.monitor) = Some(handle);
        Ok(())
    }
    /// Parks the memory of a queue pair the controller may still use.
    pub(crate) fn quarantine(&self, q: crate::qpair::Quarantined) {
        lock(&self.inner().quarantine).push(q);
    }

    /// The transport id this controller was attached with.
    pub fn transport_id(&self) -> &TransportId {
        &self.inner().trid
    }
    /// The transport's short name (PCI address or `sim`).
    pub fn name(&self) -> String {
        self.inner().transport.name()
    }
    /// PCI vendor and device id (the Identify vendor ids when there is no PCI function).
    pub fn pci_id(&self) -> (u16, u16) {
        self.inner().transport.pci_id().unwrap_or((
            self.inner().info.identify.vid,
            self.inner().info.identify.ssvid,
        ))
    }
    /// What bring-up learned: CAP, VS, page size, MDTS, queues granted, Identify data.
    pub fn info(&self) -> &ControllerInfo {
        &self.inner().info
    }
    /// The Identify Controller data read at attach.
    pub fn identify(&self) -> &IdentifyController {
        &self.inner().info.identify
    }
    /// Active namespaces, as identified at attach or by the latest
    /// [`rescan_namespaces`](Self::rescan_namespaces) (which Format NVM, Namespace
    /// Management and Attachment through this controller, and a Namespace Attribute Changed
    /// event seen by [`async_events`](Self::async_events), run).
    pub fn namespaces(&self) -> &[Namespace] {
        self.inner().namespaces.current()
    }
    /// An active namespace by id (see [`namespaces`](Self::namespaces)).
    pub fn namespace(&self, nsid: u32) -> Result<&Namespace> {
        self.inner()
            .namespaces
            .current()
            .iter()
            .find(|n| n.id() == nsid)
            .ok_or(Error::NoSuchNamespace(nsid))
    }
    /// Claims a lease on blocks `lbas` of namespace `nsid` ([`LeaseMode::Exclusive`]: no
    /// other lease may overlap it; [`LeaseMode::Shared`]: only shared ones may), in the
    /// group's shared table: [`Error::LeaseConflict`] names the process holding a lease in
    /// the way. From then on this process's writes to the namespace outside the ranges it
    /// holds are refused ([`Error::OutsideLease`]); reads are not checked. Dropping the
    /// [`Lease`] releases it; a process that dies loses its leases. See [`Lease`] for the
    /// whole contract.
    ///
    /// ```
    /// # use nvme_host_linux::{Controller, LeaseMode, QueueOptions, Error};
    /// let ctrl = Controller::attach("trtype:sim size:1M lbasize:512")?;
    /// let lease = ctrl.lease(1, 0..1024, LeaseMode::Exclusive)?;
    /// let mut qp = ctrl.alloc_io_queue(QueueOptions::default())?;
    /// let mut buf = ctrl.alloc_dma(4096)?;
    /// qp.write_sync(1, 1016, buf.slice(0..4096)?)?; // blocks 1016..1024: inside
    /// let e = qp.write_sync(1, 1020, buf.slice(0..4096)?).unwrap_err(); // 1020..1028
    /// assert!(matches!(e, Error::OutsideLease { lba: 1020, .. }));
    /// drop(lease);
    /// # Ok::<(), nvme_host_linux::Error>(())
    /// ```
    pub fn lease(&self, nsid: u32, lbas: std::ops::Range<u64>, mode: LeaseMode) -> Result<Lease> {
        let ns = self.namespace(nsid)?;
        if lbas.start >= lbas.end {
            return Err(Error::Invalid(format!(
                "lease of LBAs {}..{} of namespace {nsid}: the range is empty; give start..end with start < end",
                lbas.start, lbas.end
            )));
        }
        if lbas.end > ns.blocks() {
            return Err(Error::LbaOutOfRange {
                nsid,
                lba: lbas.start,
                blocks: lbas.end - lbas.start,
                capacity: ns.blocks(),
            });
        }
        let range = LeaseRange {
            nsid,
            start: lbas.start,
            count: lbas.end - lbas.start,
            mode,
        };
        self.inner().leases.claim(self, range)
    }
    /// Turns on the lease check of writes to namespace `nsid` without claiming a lease:
    /// every write there is refused ([`Error::OutsideLease`]) until this process holds a
    /// lease covering it. Claiming a lease does this too; it cannot be turned off.
    pub fn enforce_leases(&self, nsid: u32) -> Result<()> {
        self.namespace(nsid)?;
        self.inner().leases.enforce(nsid);
        Ok(())
    }
    /// Largest transfer of one command in bytes (larger I/Os are split).
    pub fn max_transfer(&self) -> usize {
        self.inner().max_transfer
    }
    /// The software controller behind this controller, when it is `trtype:sim`.
    #[cfg(feature = "sim")]
    pub fn sim(&self) -> Option<&nvme_sim::SimController> {
        crate::SimTransport::of(self.inner().transport.as_ref()).and_then(|t| t.controller())
    }
    /// Allocates a zeroed DMA buffer of `len` bytes.
    pub fn alloc_dma(&self, len: usize) -> Result<DmaBuffer> {
        DmaBuffer::new(&self.inner().transport, len)
    }
    /// Creates an I/O queue pair for the calling thread.
    pub fn alloc_io_queue(&self, opts: QueueOptions) -> Result<IoQueuePair> {
        IoQueuePair::create(self.clone(), opts)
    }
    /// I/O queue ids in use (by every process of the group, in a group over PCIe or
    /// `trtype:sim`; over NVMe/TCP each member's association has queue ids of its own, and
    /// this counts this process's).
    pub fn io_queues_in_use(&self) -> usize {
        if let Some(g) = self.inner().shared_group() {
            return g.qids_in_use();
        }
        lock(&self.inner().qids).iter().filter(|&&b| b).count()
    }
    /// This process's role: alone, or primary / secondary of a shared-memory group.
    pub fn role(&self) -> Role {
        self.inner()
            .group
            .as_ref()
            .map_or(Role::Single, |g| g.role())
    }
    /// Asynchronous events (SMART/health warnings, notices, errors) that arrived since the
    /// last call. In a shared-memory group every process sees every event. Reading the
    /// log page an event names (e.g. [`smart_log`](Self::smart_log)) re-enables that
    /// event type on the controller. A Namespace Attribute Changed notice is handled here:
    /// the Changed Namespace List is read (which re-enables the notice) and the namespaces
    /// are rescanned ([`rescan_namespaces`](Self::rescan_namespaces)); a failure of either
    /// leaves the list as it was (rescan again later).
    pub fn async_events(&self) -> Vec<AsyncEvent> {
        let mut out = Vec::new();
        {
            let mut cursor = lock(&self.inner().event_cursor);
            lock(&self.inner().admin).events_since(
                self.inner().group.as_deref(),
                &mut cursor,
                &mut |dw0| out.push(AsyncEvent::from_dword(dw0)),
            );
        }
        if out.iter().any(crate::manage::is_namespace_change) {
            let _ = self.get_log_page(lid::CHANGED_NAMESPACES, u32::MAX, 4096, 0);
            let _ = self.rescan_namespaces();
        }
        out
    }

    /// The pid of the software controller's own process (shared-memory groups over
    /// `trtype:sim`), if there is one.
    #[cfg(feature = "sim")]
    pub fn sim_process(&self) -> Option<u32> {
        crate::SimTransport::of(self.inner().transport.as_ref()).and_then(|t| t.process())
    }
    /// Test hook: takes the group's admin lock and never releases it, so that a test can
    /// kill this process while it holds the lock. Does nothing outside a group.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn __test_hold_group_lock(&self) {
        if let Some(g) = &self.inner().group {
            g.hold_lock_forever();
        }
    }
    /// Test hook: takes the group's lease table lock and never releases it, so that a test
    /// can kill this process while it holds the lock. Does nothing outside a group.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn __test_hold_lease_lock(&self) {
        if let Some(g) = &self.inner().group {
            g.hold_lease_lock_forever();
        }
    }
    /// Test hook: takes the group's namespace record lock, leaves the record half written
    /// and never lets go, so that a test can stop or kill this process in the middle of an
    /// update. Does nothing outside a group.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn __test_hold_namespace_record_mid_write(&self) -> Result<()> {
        match &self.inner().group {
            Some(g) => g.hold_namespace_record_mid_write(),
            None => Ok(()),
        }
    }
    /// Test hook: starts a reset of the group's controller (it is disabled) and stops
    /// there, so that a test can kill this process in the middle of the reset.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn __test_begin_reset_and_stop(&self) -> Result<()> {
        let inner = self.inner();
        lock(&inner.admin).begin_reset_only(inner.group.as_deref())
    }
    /// Test hook: takes the group's join lock (bounded by the admin timeout) and keeps it
    /// until [`__test_release_join_lock`](Self::__test_release_join_lock), so that a test can
    /// stop this process while it holds the lock. Does nothing outside a group.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn __test_hold_join_lock(&self) -> Result<()> {
        match &self.inner().group {
            Some(g) => g.lock_join(self.inner().opts.admin_timeout),
            None => Ok(()),
        }
    }
    /// Test hook: releases the join lock taken by
    /// [`__test_hold_join_lock`](Self::__test_hold_join_lock).
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn __test_release_join_lock(&self) {
        if let Some(g) = &self.inner().group {
            g.unlock_join();
        }
    }
    /// The shared-memory group id, if any.
    pub fn group_id(&self) -> Option<u32> {
        self.inner().group.as_ref().map(|g| g.id())
    }

    /// The pids of the processes in this process's shared-memory group (this one
    /// included; a member that died is listed until the group cleans up after it, which
    /// the survivors do within about 50 ms), empty outside a group.
    pub fn group_members(&self) -> Vec<u32> {
        self.inner()
            .group
            .as_ref()
            .map_or_else(Vec::new, |g| g.member_pids())
    }

    /// Is this process's shared-memory group one over NVMe/TCP, whose members each have an
    /// association of their own with the target (no shared admin queue, queue ids per
    /// member)? False outside a group.
    pub fn group_over_fabrics(&self) -> bool {
        self.inner().group.as_ref().is_some_and(|g| g.fabrics())
    }

    /// The I/O queue ids this process holds when it is not in a group.
    pub(crate) fn local_qids(&self) -> Vec<u16> {
        let q = lock(&self.inner().qids);
        (1..q.len()).filter(|&i| q[i]).map(|i| i as u16).collect()
    }

    pub(crate) fn alloc_qid(&self) -> Result<u16> {
        if let Some(g) = self.inner().shared_group() {
            return g.alloc_qid(self.inner().granted);
        }
        let mut q = lock(&self.inner().qids);
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
    /// Makes interrupt vector `vector` signal `eventfd` (`None`: nothing), serialised
    /// against the other threads of this process and the other members of its group.
    pub(crate) fn set_interrupt(
        &self,
        vector: u16,
        eventfd: Option<std::os::fd::BorrowedFd<'_>>,
    ) -> Result<()> {
        let inner = self.inner();
        let _serial = lock(&inner.irq_lock);
        let set = || inner.transport.set_interrupt(vector, eventfd);
        match inner.shared_group() {
            Some(g) => g.with_interrupt_lock(inner.opts.admin_timeout, set),
            None => set(),
        }
    }
    pub(crate) fn free_qid(&self, qid: u16) {
        if let Some(g) = self.inner().shared_group() {
            return g.free_qid(qid);
        }
        if let Some(b) = lock(&self.inner().qids).get_mut(qid as usize) {
            *b = false;
        }
    }

    /// Runs an admin command synchronously, with an optional data range, and returns its
    /// completion. A failing status is an [`Error::Nvme`].
    pub fn admin_command(&self, cmd: Command, data: Option<IoBuf<'_>>) -> Result<Completion> {
        self.inner().admin_command(cmd, data)
    }

    /// [`admin_command`](Self::admin_command) for a command that may take longer than the
    /// admin timeout ([`AttachOptions::admin_timeout`]): it waits up to `timeout`, and only
    /// then does [`AttachOptions::timeout_action`] apply (by default: Abort, then a reset
    /// when the Abort does not get the command back). Other processes' admin commands go on
    /// meanwhile; this process's other threads wait for its admin path.
    pub fn admin_command_timeout(
        &self,
        cmd: Command,
        data: Option<IoBuf<'_>>,
        timeout: Duration,
    ) -> Result<Completion> {
        self.inner().admin_command_timeout(cmd, data, timeout)
    }

    /// Runs an admin command that reads `len` bytes into the admin data buffer and returns a
    /// copy of them.
    pub fn admin_read(&self, cmd: Command, len: usize) -> Result<Vec<u8>> {
        if len > ADMIN_DATA {
            return Err(Error::Invalid(format!(
                "admin transfer of {len} bytes exceeds {ADMIN_DATA}"
            )));
        }
        self.inner().admin_read(cmd, len)
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
    /// Resets the controller: disables it, brings it up again, re-arms asynchronous events
    /// and shadow doorbells. In a shared-memory group this process resets it for every
    /// member (their admin commands wait meanwhile). Every I/O queue pair of every process
    /// then completes its outstanding requests with [`Error::AbortedByReset`] (once each;
    /// retry them) and re-creates its queues the next time its thread processes
    /// completions. No DMA memory is let go before the controller is disabled. Used after
    /// [`Error::ControllerFatal`], or when commands stop completing.
    pub fn reset(&self) -> Result<()> {
        self.inner().reset(None)
    }

    /// Resets the function the controller sits on, under a live controller: as
    /// [`reset`](Self::reset) (for the whole group, through the same reset path: other
    /// processes wait, their outstanding I/O completes once with [`Error::AbortedByReset`]
    /// and their queue pairs reconnect), with a function-level reset between disabling the
    /// controller and bringing it up again. Over VFIO that is `VFIO_DEVICE_RESET` (an FLR,
    /// or the PM or bus reset the kernel picks), which also returns everything outside
    /// the NVMe registers to its power-on state; any member of a group can do it (each has
    /// the device descriptor). nvme-cli's `nvme reset` is the controller reset; a PCI-level
    /// reset is what `echo 1 > /sys/bus/pci/devices/<bdf>/reset` does with no driver using
    /// the device. On the software controller (`trtype:sim`), which has no PCI function, it
    /// is the controller reset alone. Fails at once, changing nothing, when the function
    /// cannot be reset (VFIO reports no reset method); when `VFIO_DEVICE_RESET` itself
    /// fails, the reset fails as a failed controller reset does (commands fail with
    /// [`Error::NeedsReset`] until a reset works). Returns the PCI command register before
    /// and after the function reset.
    pub fn reset_function(&self) -> Result<FunctionReset> {
        let inner = self.inner();
        if inner.regs.is_none() {
            return Err(crate::tcp::no_reset());
        }
        if !inner.transport.function_reset_supported() {
            return Err(Error::Transport(format!(
                "{}: the function cannot be reset (VFIO reports no reset method: no FLR, PM or bus reset); use a controller reset instead",
                inner.transport.name()
            )));
        }
        inner
            .reset_with(None, true)
            .map(|f| f.expect("a function reset reports what it saw"))
    }

    /// Reads CSTS now (over NVMe/TCP with a Property Get on the admin queue; all ones,
    /// as a removed PCIe device reads, when that fails).
    pub fn status_register(&self) -> Csts {
        match &self.inner().regs {
            Some(regs) => regs.csts(),
            None => crate::tcp::csts(self.inner().transport.as_ref()),
        }
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
        let timeout = Duration::from_millis(self.info.cap.timeout_ms() as u64);
        let disabled = controller_down && self.regs.as_ref().is_some_and(|r| disable(r, timeout));
        admin.release_parked(!disabled);
        for q in quarantine.drain(..) {
            if !disabled {
                std::mem::forget(q);
            }
        }
    }
}

impl Inner {
    /// The register handle (`None` over NVMe/TCP).
    pub(crate) fn regs(&self) -> Option<&Mmio> {
        self.regs.as_ref()
    }
    /// Is the controller still there? (See [`Error::ControllerGone`].)
    pub(crate) fn check_alive(&self) -> Result<()> {
        self.live.check()
    }
    /// Whether the controller is there, and its reset generation.
    pub(crate) fn liveness(&self) -> &Arc<crate::admin::Liveness> {
        &self.live
    }
    /// The transport.
    pub(crate) fn transport(&self) -> &Arc<dyn Transport> {
        &self.transport
    }
    /// The shared-memory group this process belongs to, if any.
    pub(crate) fn group(&self) -> Option<&Arc<Group>> {
        self.group.as_ref()
    }
    /// The group when its members share the controller's admin queue and its queue ids
    /// (over PCIe and `trtype:sim`; not over NVMe/TCP, where each member has an association
    /// of its own).
    pub(crate) fn shared_group(&self) -> Option<&Arc<Group>> {
        self.group.as_ref().filter(|g| !g.fabrics())
    }
    /// This attach's LBA range leases.
    pub(crate) fn leases(&self) -> &Arc<LocalLeases> {
        &self.leases
    }
    /// See [`Controller::admin_read`] (`len` at most the admin data buffer).
    pub(crate) fn admin_read(&self, cmd: Command, len: usize) -> Result<Vec<u8>> {
        self.recovering(|admin| {
            admin.read_bytes(self.group.as_deref(), cmd, len, self.opts.admin_timeout)
        })
    }
    /// See [`Controller::admin_command`].
    pub(crate) fn admin_command(
        &self,
        cmd: Command,
        data: Option<IoBuf<'_>>,
    ) -> Result<Completion> {
        self.admin_command_timeout(cmd, data, self.opts.admin_timeout)
    }

    /// [`admin_command`](Self::admin_command) waiting up to `timeout` instead of the admin
    /// timeout; past it the command gets [`AttachOptions::timeout_action`] as any other.
    pub(crate) fn admin_command_timeout(
        &self,
        cmd: Command,
        data: Option<IoBuf<'_>>,
        timeout: Duration,
    ) -> Result<Completion> {
        self.recovering(|admin| {
            admin.execute(
                self.group.as_deref(),
                cmd,
                data.map(|d| d.region()),
                data.map(|d| d.map.clone()),
                timeout,
            )
        })
    }

    /// Runs `f` on the admin path; when it finds the controller in fatal status and
    /// [`AttachOptions::reset_on_fatal`] is set, or when a command timed out and
    /// [`AttachOptions::timeout_action`] asks for a reset (see [`crate::TimeoutAction`]),
    /// resets the controller (unless another process or thread already did since `f`
    /// began) and reports the command as aborted by the reset. The reset is taken after `f`
    /// let go of the admin path (the reset takes it again, and in a group goes through the
    /// group's reset protocol like any other).
    fn recovering<T>(&self, f: impl FnOnce(&mut Admin) -> Result<T>) -> Result<T> {
        let generation = self.live.generation();
        let (r, reset_wanted) = {
            let mut admin = lock(&self.admin);
            let r = f(&mut admin);
            (r, admin.take_reset_request())
        };
        match r {
            Err(Error::Timeout { .. }) if reset_wanted => {
                if self.live.generation() == generation {
                    match self.reset(None) {
                        Ok(()) | Err(Error::AbortedByReset) => {}
                        Err(e) => return Err(e),
                    }
                }
                // The reset completed the command (as aborted) after disabling the
                // controller: nothing of it is outstanding.
                Err(Error::AbortedByReset)
            }
            Err(Error::ControllerFatal) if self.opts.reset_on_fatal => {
                if self.live.generation() == generation {
                    match self.reset(None) {
                        // Someone else is resetting it right now.
                        Ok(()) | Err(Error::AbortedByReset) => {}
                        Err(e) => return Err(e),
                    }
                }
                Err(Error::AbortedByReset)
            }
            r => r,
        }
    }

    /// Sends an Abort for I/O command `cid` of submission queue `sqid` (an I/O queue pair's
    /// timeout) and waits for its answer, bounded by [`AttachOptions::abort_timeout`].
    pub(crate) fn abort_io(&self, sqid: u16, cid: u16) -> crate::admin::AbortOutcome {
        lock(&self.admin)
            .abort(self.group.as_deref(), sqid, cid, None)
            .0
    }

    /// What a timed-out command gets.
    pub(crate) fn timeout_action(&self) -> crate::TimeoutAction {
        self.opts.timeout_action
    }

    /// See [`Controller::reset`]; `dead_owner`: a member that died resetting, whose reset
    /// this process finishes.
    pub(crate) fn reset(&self, dead_owner: Option<nvme_core::shared::OwnerId>) -> Result<()> {
        self.reset_with(dead_owner, false).map(|_| ())
    }

    /// [`reset`](Self::reset), with a function reset while the controller is disabled when
    /// `function` is set (what it saw is returned then).
    fn reset_with(
        &self,
        dead_owner: Option<nvme_core::shared::OwnerId>,
        function: bool,
    ) -> Result<Option<FunctionReset>> {
        if self.regs.is_none() {
            // NVMe/TCP: a new association (the old one shut down); every I/O queue pair
            // completes what it had with AbortedByReset and reconnects when it sees it.
            if function {
                return Err(crate::tcp::no_reset());
            }
            let _admin = lock(&self.admin);
            return crate::tcp::reset(self.transport.as_ref()).map(|()| None);
        }
        let mut seen = None;
        let mut admin = lock(&self.admin);
        let cap_timeout = Duration::from_millis(self.info.cap.timeout_ms().max(500) as u64);
        let (group, timeout) = (self.group.as_deref(), self.opts.admin_timeout);
        admin.reset(
            group,
            &self.opts,
            cap_timeout,
            dead_owner,
            || {
                if function {
                    seen = Some(self.transport.reset_function()?);
                }
                Ok(())
            },
            |admin| {
                if let Some(sh) = &self.shadow {
                    // The same buffers again (the group's in a group: every member's queue
                    // pairs reconnect over them), from 0 (every queue starts at 0).
                    admin.execute(group, sh.config_command(), None, sh.mapping(), timeout)?;
                }
                Ok(())
            },
        )?;
        // Queue pairs whose deletion failed before: the controller was disabled.
        lock(&self.quarantine).clear();
        Ok(seen)
    }

    /// Leaves the controller: shuts it down when this process was alone or the group's
    /// last member, lets go of memory it may have used, removes the group's files.
    fn detach(&mut self) {
        crate::steps::step("detach: start");
        let group = self.group.clone();
        lock(&self.admin).reap_parked(group.as_deref());
        // A controller that is gone gets no shutdown notification (nothing would answer).
        let alive = self.live.check().is_ok();
        let group = match group {
            // Over NVMe/TCP this process's association is its own: it is shut down (as a
            // process alone does) whatever the group does next.
            Some(g) if g.fabrics() => {
                if alive {
                    crate::tcp::shutdown(self.transport.as_ref());
                }
                self.release_parked(alive);
                self.leave_fabrics_group(&g);
                return;
            }
            g => g,
        };
        let Some(group) = &group else {
            match (alive, &self.regs) {
                (true, Some(regs)) => shutdown(regs, self.info.identify.rtd3e),
                // Over NVMe/TCP: CC.SHN as a property, on the admin queue's connection.
                (true, None) => crate::tcp::shutdown(self.transport.as_ref()),
                (false, _) => {}
            }
            self.release_parked(alive);
            return;
        };
        // Leave the group: the last member out shuts the controller down and removes the
        // group's files; the software controller's process exits when its last client goes.
        // The wait for the join lock is bounded by the admin timeout: a holder that is
        // stopped must not keep this process from exiting.
        if let Err(e) = group.lock_join(self.opts.admin_timeout) {
            // Leave as a process that died does (`Group::abandon` says what that skips);
            // whether the controller is still used is unknown: keep what it may touch.
            eprintln!("nvme: leaving shared-memory group {} without its join lock, as if this process had died (the other members or the next process to attach clean up): {e}", group.id());
            group.abandon();
            self.release_parked(false);
            return;
        }
        let me = group.me();
        let admin = match &self.regs {
            Some(regs) => group.admin(regs.clone()),
            None => Err(Error::Transport("a group without registers".into())),
        };
        match admin {
            Ok(q) => q.release_member(me),
            // Left as a dead member would be: the others clean up after it.
            Err(e) => eprintln!("nvme: leaving the group: {e}"),
        }
        if group.leave() {
            if let (true, Some(regs)) = (alive, &self.regs) {
                shutdown(regs, self.info.identify.rtd3e);
            }
            self.release_parked(alive);
            self.transport.last_member_left();
            group.remove_files();
        } else {
            self.release_parked(false);
        }
        group.unlock_join();
        crate::steps::step("detach: left the group");
    }

    /// Leaves a group over NVMe/TCP (this process's association already shut down): its
    /// record goes (with its leases); the last member out removes the group's files.
    fn leave_fabrics_group(&self, group: &Group) {
        if let Err(e) = group.lock_join(self.opts.admin_timeout) {
            eprintln!("nvme: leaving shared-memory group {} without its join lock, as if this process had died (the other members or the next process to attach clean up): {e}", group.id());
            group.abandon();
            return;
        }
        if group.leave() {
            group.remove_files();
        }
        group.unlock_join();
    }
}
