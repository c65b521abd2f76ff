//! [`TcpTransport`]: NVMe/TCP as a [`Transport`], so that [`Controller`] and
//! [`IoQueuePair`](crate::IoQueuePair) work over it as over PCIe.
//!
//! There is no IOMMU and no register BAR: "mapping" memory for the controller records it in
//! a [`MemoryTable`] (its IOVA is its address in this process), which the I/O queues
//! resolve their commands' data pointers in, and the controller's registers are properties
//! reached with Fabrics commands on the admin queue ([`TcpController`]).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nvme_core::{Command, Completion, ControllerInfo, DmaRegion};
use nvme_regs::features::NumberOfQueues;
use nvme_regs::identify::{cns, NamespaceList};
use nvme_regs::opcode::DataDirection;
use nvme_regs::registers::Csts;
use zerocopy::FromBytes;

use super::controller::{TcpController, TcpControllerOptions};
use super::ioq::{MemoryTable, TcpRings};
use super::queue::Data;
use crate::admin::{Admin, Liveness, StateRef, ADMIN_DATA};
use crate::attach::AttachOptions;
use crate::controller::Controller;
use crate::dma::{DmaBuffer, DmaMapping};
use crate::dmapool::DmaPool;
use crate::error::{Error, Result};
use crate::memory::SharedMemory;
use crate::mmio::Mmio;
use crate::transport::Transport;
use crate::trid::{TcpOptions, TransportId};

/// A controller over NVMe/TCP as a transport: its association (admin queue), made anew
/// when it fails, and the host memory its queues may move data to and from.
pub struct TcpTransport {
    ctrl: Mutex<Arc<TcpController>>,
    /// Associations made after the first: an I/O queue connected under an earlier one
    /// reconnects (see [`TcpRings`]).
    generation: Arc<AtomicU64>,
    memory: Arc<MemoryTable>,
    pool: DmaPool,
}

impl fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpTransport")
            .field("controller", &*self.current())
            .finish()
    }
}

impl TcpTransport {
    /// The transport of a connected controller.
    pub fn new(ctrl: TcpController) -> TcpTransport {
        TcpTransport {
            ctrl: Mutex::new(Arc::new(ctrl)),
            generation: Arc::default(),
            memory: Arc::default(),
            pool: DmaPool::new(),
        }
    }

    fn current(&self) -> std::sync::MutexGuard<'_, Arc<TcpController>> {
        self.ctrl.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The controller's admin queue (the current association's).
    pub fn controller(&self) -> Arc<TcpController> {
        self.current().clone()
    }

    /// The current association when it is alive (its admin queue has not failed and, when
    /// `probe`, answers a Keep Alive); otherwise a new one ([`TcpController::connect_again`],
    /// which must reach the same controller: the same serial number), after which every I/O
    /// queue reconnects. `force`: a new one whatever the state of the current (a controller
    /// reset over TCP). Returns the association and its generation.
    pub(crate) fn association(
        &self,
        probe: bool,
        force: bool,
    ) -> Result<(Arc<TcpController>, u64)> {
        let mut cur = self.current();
        let alive = || cur.failure().is_none() && (!probe || cur.keep_alive().is_ok());
        if !force && alive() {
            return Ok((cur.clone(), self.generation.load(Ordering::Acquire)));
        }
        let new = cur.connect_again()?;
        if new.identify().sn != cur.identify().sn {
            return Err(Error::Transport(format!(
                "NVMe/TCP {}: reconnecting reached another controller (serial number '{}', was '{}'); attach again",
                cur.peer(),
                new.identify().serial(),
                cur.identify().serial()
            )));
        }
        // The old association ends here (shut down, its connection closed) unless a command
        // still holds it.
        *cur = Arc::new(new);
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        Ok((cur.clone(), generation))
    }

    /// `transport` as NVMe/TCP, if it is.
    pub fn of(transport: &dyn Transport) -> Option<&TcpTransport> {
        transport.as_any().downcast_ref()
    }

    /// Opens I/O queue `qid` of `entries` entries (see
    /// [`TcpController::connect_io_queue`]).
    pub(crate) fn io_queue(&self, qid: u16, entries: u32, max_transfer: usize) -> Result<TcpRings> {
        let connect = |ctrl: &TcpController, generation: u64| {
            let mut r = ctrl.connect_io_queue(qid, entries, max_transfer, self.memory.clone())?;
            r.set_association(self.generation.clone(), generation);
            Ok(r)
        };
        let (ctrl, generation) = self.association(false, false)?;
        match connect(&ctrl, generation) {
            Ok(r) => Ok(r),
            // The association may have gone with the connection (a target restart): check
            // it (a Keep Alive), make a new one if so, and try once more.
            Err(e) => match self.association(true, false)? {
                (_, g) if g == generation => Err(e),
                (ctrl, g) => connect(&ctrl, g),
            },
        }
    }
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        self.pool.release(|iova, len| self.memory.remove(iova, len));
        self.current().shutdown();
    }
}

impl Transport for TcpTransport {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn regs(&self) -> Option<Mmio> {
        None
    }
    /// Records `mem` for the I/O queues; its IOVA is its address here.
    fn map_dma(&self, mem: &SharedMemory) -> Result<u64> {
        let iova = mem.as_ptr() as u64;
        let region = mem.region(0, mem.len(), iova).ok_or_else(|| {
            Error::Transport(format!(
                "NVMe/TCP: {} bytes at {iova:#x} cannot be described as one region",
                mem.len()
            ))
        })?;
        if !self.memory.insert(region) {
            return Err(Error::Transport(format!(
                "NVMe/TCP: {} bytes at {iova:#x} overlap memory already registered",
                mem.len()
            )));
        }
        Ok(iova)
    }
    fn unmap_dma(&self, iova: u64, len: usize) {
        self.memory.remove(iova, len);
    }
    fn dma_pool(&self) -> Option<&DmaPool> {
        Some(&self.pool)
    }
    fn pci_id(&self) -> Option<(u16, u16)> {
        None
    }
    fn name(&self) -> String {
        format!("tcp:{}", self.current().peer())
    }
    // `gone` stays false: a failed association is made anew (see `association`), so the
    // controller is never known gone for good.
    fn unmap_range(&self, iova: u64, len: u64) {
        self.memory.remove_range(iova, len);
    }
}

/// Attaches a controller over NVMe/TCP (`trtype:TCP`): connects its admin queue (Keep Alive
/// from a thread of its own), asks for `opts.io_queues` I/O queues, and builds the same
/// [`Controller`] as PCIe's over it.
pub(crate) fn attach(
    o: &TcpOptions,
    trid: TransportId,
    opts: &AttachOptions,
) -> Result<Controller> {
    let (transport, info, admin) = connect(o, opts)?;
    Controller::finish(transport, trid, opts, info, admin, None)
}

/// Opens an association with the controller (`o`) and asks for `opts.io_queues` I/O
/// queues: the transport, what bring-up learned and the admin path, for
/// [`Controller::finish`] (alone, or as a member of a group over NVMe/TCP, which has an
/// association of its own).
pub(crate) fn connect(
    o: &TcpOptions,
    opts: &AttachOptions,
) -> Result<(Arc<dyn Transport>, ControllerInfo, Admin)> {
    let copts = TcpControllerOptions {
        timeout: opts.admin_timeout,
        ..Default::default()
    };
    let ctrl = TcpController::connect(o, &copts)?;
    let cap = ctrl.cap();
    let identify = *ctrl.identify();
    let n = opts.io_queues.max(1);
    let asked = Command::set_number_of_queues(NumberOfQueues { sq: n, cq: n });
    let granted = ctrl.admin(asked.0, Data::None)?;
    let mut list = [0u8; 4096];
    ctrl.admin(
        Command::identify(cns::ACTIVE_NAMESPACE_LIST, 0, 0).0,
        Data::ToHost(&mut list),
    )?;
    let vs = ctrl.version();
    let transport: Arc<dyn Transport> = Arc::new(TcpTransport::new(ctrl));
    let info = ControllerInfo {
        cap,
        vs,
        // CC.MPS = 0 (TcpController's enable).
        page_size: 4096,
        max_transfer: identify
            .max_transfer_bytes(cap.min_page_size())
            .unwrap_or(usize::MAX),
        io_queues: NumberOfQueues::from_dword(granted.dw0),
        identify,
        namespaces: NamespaceList::read_from_bytes(&list).expect("4096 bytes"),
    };
    // The reset generation I/O queue pairs read: a page of its own (no reset over TCP, so
    // it stays 0).
    let len = std::mem::size_of::<nvme_core::shared::SharedAdminState>().next_multiple_of(4096);
    let state = Arc::new(DmaMapping::new(&transport, "nvme-tcp-state", len)?);
    let region = state.region();
    let state = StateRef::Local {
        _keep: state,
        state: region,
    };
    let live = Liveness::new(&transport, state, nvme_core::shared::OwnerId::new(0, 1));
    let data = DmaBuffer::new(&transport, ADMIN_DATA)?;
    let admin = Admin::tcp(live, data);
    Ok((transport, info, admin))
}

/// Runs an admin command over the admin queue's connection (the association made anew
/// first when it failed), its data (`region`, in memory registered with the transport)
/// copied to or from the PDUs, waiting up to `timeout`.
pub(crate) fn admin_command(
    transport: &dyn Transport,
    cmd: Command,
    region: Option<DmaRegion>,
    timeout: Duration,
) -> Result<Completion> {
    let len = region.map_or(0, |r| r.len());
    let mut bytes = vec![0u8; len];
    let data = match (cmd.direction(), region) {
        (_, None) => Data::None,
        (DataDirection::ControllerToHost, Some(_)) => Data::ToHost(&mut bytes),
        (DataDirection::HostToController, Some(r)) => {
            r.read_bytes(0, &mut bytes);
            Data::FromHost(&bytes)
        }
        (d, Some(_)) => {
            return Err(Error::Invalid(format!(
            "admin command {:#04x} with data moving {d:?}: NVMe/TCP moves data one way per command",
            cmd.opcode()
        )))
        }
    };
    let t = TcpTransport::of(transport).ok_or_else(|| {
        Error::Transport(format!("{}: not an NVMe/TCP transport", transport.name()))
    })?;
    let (ctrl, _) = t.association(false, false)?;
    let c = ctrl.admin_with_timeout(cmd.0, data, timeout)?;
    if let (DataDirection::ControllerToHost, Some(r)) = (cmd.direction(), region) {
        r.write_bytes(0, &bytes);
    }
    Ok(Completion {
        dw0: c.dw0,
        dw1: c.dw1,
        status: c.status(),
        opcode: cmd.opcode(),
    })
}

/// CSTS of the controller behind `transport` (a Property Get), all ones when it cannot be
/// read (as a removed PCIe device reads).
pub(crate) fn csts(transport: &dyn Transport) -> Csts {
    TcpTransport::of(transport)
        .and_then(|t| t.controller().csts().ok())
        .unwrap_or(Csts(u32::MAX))
}

/// Shuts the controller behind `transport` down (see [`TcpController::shutdown`]).
pub(crate) fn shutdown(transport: &dyn Transport) {
    if let Some(t) = TcpTransport::of(transport) {
        t.current().shutdown();
    }
}

/// A controller reset over NVMe/TCP: a new association (the old one shut down); every I/O
/// queue pair then completes its outstanding requests with
/// [`Error::AbortedByReset`] and reconnects.
pub(crate) fn reset(transport: &dyn Transport) -> Result<()> {
    let t = TcpTransport::of(transport).ok_or_else(no_reset)?;
    t.association(false, true).map(|_| ())
}

/// What a function reset gives over NVMe/TCP.
pub(crate) fn no_reset() -> Error {
    Error::Transport(
        "NVMe/TCP: there is no PCI function to reset over TCP; a controller reset (a new association) is what there is".into(),
    )
}
