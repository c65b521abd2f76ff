//! The built-in software controller (`trtype:sim`, cargo feature `sim`) as a transport: in
//! this process, or in a process of its own that the members of a shared-memory group share.

use std::fmt;
use std::sync::Mutex;

use nvme_sim::{SimClient, SimController, SimError};

use crate::dmapool::DmaPool;
use crate::error::{Error, Result};
use crate::iova::{map_skipping_stale, Attempt, IovaAllocator, MapError};
use crate::memory::{Mapping, SharedMemory};
use crate::mmio::Mmio;
use crate::transport::{member_iova_range, Transport};
use crate::trid::SimOptions;

/// Where the software controller runs.
enum Device {
    /// A thread of this process.
    InProcess(SimController),
    /// Its own process, reached over a socket (shared-memory groups).
    Process(SimClient),
}

impl Device {
    fn dma_map(&self, iova: u64, mem: &SharedMemory) -> std::result::Result<(), SimError> {
        match self {
            Device::InProcess(s) => s.dma_map(iova, mem.fd(), 0, mem.len()),
            Device::Process(c) => c.dma_map(iova, mem.fd(), 0, mem.len()),
        }
    }
    fn dma_unmap(&self, iova: u64, len: usize) -> std::result::Result<(), SimError> {
        match self {
            Device::InProcess(s) => s.dma_unmap(iova, len),
            Device::Process(c) => c.dma_unmap(iova, len),
        }
    }
    fn interrupt_vectors(&self) -> u16 {
        match self {
            Device::InProcess(s) => s.interrupt_vectors(),
            Device::Process(c) => c.interrupt_vectors(),
        }
    }
    fn set_interrupt(
        &self,
        vector: u16,
        fd: Option<std::os::fd::BorrowedFd<'_>>,
    ) -> std::result::Result<(), SimError> {
        match self {
            Device::InProcess(s) => s.set_interrupt(vector, fd),
            Device::Process(c) => c.set_interrupt(vector, fd),
        }
    }
}

/// The software controller as a transport: its BAR mapped here, and DMA mappings made in
/// its own table, at IOVAs this process allocates.
pub struct SimTransport {
    dev: Device,
    bar: Mmio,
    iovas: Mutex<IovaAllocator>,
    pool: DmaPool,
}

impl fmt::Debug for SimTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("SimTransport");
        if let Device::Process(c) = &self.dev {
            d.field("process", &c.pid());
        }
        d.field("bar_len", &self.bar.len()).finish()
    }
}

/// Maps a software controller's BAR image (its memfd) as a register handle.
fn map_sim_bar(fd: std::os::fd::BorrowedFd<'_>, len: usize) -> Result<Mmio> {
    let map = Mapping::new(fd, 0, len, false)
        .map_err(|e| Error::os("mapping the software controller's BAR", e))?;
    Mmio::new(map).map_err(|len| {
        Error::Transport(format!(
            "software controller BAR of {len} bytes is too small"
        ))
    })
}

impl SimTransport {
    /// Starts a software controller in this process from transport options.
    pub fn start(opts: &SimOptions) -> Result<SimTransport> {
        Self::with_config(Self::config(opts))
    }

    /// The software controller configuration that transport options describe.
    pub fn config(opts: &SimOptions) -> nvme_sim::SimConfig {
        let blocks = opts.size / opts.lba_size as u64;
        nvme_sim::SimConfig {
            namespaces: vec![
                nvme_sim::NamespaceConfig {
                    lba_size: opts.lba_size,
                    blocks
                };
                opts.namespaces as usize
            ],
            mdts: opts.mdts,
            mqes: opts.mqes,
            serial: opts.serial.clone(),
            interrupt_vectors: opts.vectors,
            ..Default::default()
        }
    }

    /// Starts a software controller in this process with a full configuration.
    pub fn with_config(cfg: nvme_sim::SimConfig) -> Result<SimTransport> {
        let sim = SimController::start(cfg)
            .map_err(|e| Error::Transport(format!("software controller: {e}")))?;
        let bar = map_sim_bar(sim.bar_fd(), sim.bar_len())?;
        // The whole 47-bit space minus page 0: the simulated IOMMU has no holes.
        let iovas = Mutex::new(IovaAllocator::new(&[(0, (1 << 47) - 1)], 4096));
        Ok(SimTransport {
            dev: Device::InProcess(sim),
            bar,
            iovas,
            pool: DmaPool::new(),
        })
    }

    /// Connects to the software controller process serving `socket`, as group member
    /// `member` (which fixes the IOVA range this process allocates from).
    pub(crate) fn connect(socket: &std::path::Path, member: usize) -> Result<SimTransport> {
        let client = SimClient::connect(socket).map_err(|e| {
            Error::Transport(format!(
                "connecting to the software controller at {}: {e}",
                socket.display()
            ))
        })?;
        let bar = map_sim_bar(client.bar_fd(), client.bar_len())?;
        let (base, len) = member_iova_range(member);
        let iovas = Mutex::new(IovaAllocator::new(&[(base, base + len - 1)], 4096));
        Ok(SimTransport {
            dev: Device::Process(client),
            bar,
            iovas,
            pool: DmaPool::new(),
        })
    }

    /// Maps `mem` at a fixed IOVA (a group's admin segment, below every member's range).
    pub(crate) fn map_fixed(&self, mem: &SharedMemory, iova: u64) -> Result<()> {
        self.dev
            .dma_map(iova, mem)
            .map_err(|e| Error::Transport(format!("software controller DMA map: {e}")))
    }

    /// The software controller, when it runs in this process (its faults, statistics and
    /// DMA error record).
    pub fn controller(&self) -> Option<&SimController> {
        match &self.dev {
            Device::InProcess(s) => Some(s),
            Device::Process(_) => None,
        }
    }

    /// The pid of the software controller's own process, when it has one.
    pub fn process(&self) -> Option<u32> {
        match &self.dev {
            Device::InProcess(_) => None,
            Device::Process(c) => Some(c.pid()),
        }
    }

    /// `transport` as a software controller, if it is one.
    pub fn of(transport: &dyn Transport) -> Option<&SimTransport> {
        transport.as_any().downcast_ref()
    }
}

impl Drop for SimTransport {
    fn drop(&mut self) {
        self.pool.release(|iova, len| self.unmap_dma(iova, len));
    }
}

impl Transport for SimTransport {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn regs(&self) -> Option<Mmio> {
        Some(self.bar.clone())
    }
    fn map_dma(&self, mem: &SharedMemory) -> Result<u64> {
        let len = mem.len() as u64;
        // In a group, a range can still be mapped for a member that had this member slot
        // before (its memory is kept while the controller may use it): that range stays
        // allocated here and the search moves on.
        map_skipping_stale(&self.iovas, len, 16, |iova| match self.dev.dma_map(iova, mem) {
            Ok(()) => Attempt::Mapped,
            Err(SimError::DmaOverlap { .. }) => Attempt::Stale,
            Err(e) => Attempt::Failed(e),
        })
        .map_err(|e| match e {
            MapError::OutOfSpace => Error::Transport("software controller: out of IOVA space".into()),
            MapError::Stale => Error::Transport(format!(
                "software controller DMA map: 17 ranges in a row for {len} bytes are still mapped for an earlier process"
            )),
            MapError::Failed(e) => Error::Transport(format!("software controller DMA map: {e}")),
        })
    }
    fn unmap_dma(&self, iova: u64, len: usize) {
        // A failed unmap leaves the range mapped in the device: keep it out of the allocator.
        if self.dev.dma_unmap(iova, len).is_ok() {
            self.iovas
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .free(iova, len as u64);
        }
    }
    fn dma_pool(&self) -> Option<&DmaPool> {
        Some(&self.pool)
    }
    fn pci_id(&self) -> Option<(u16, u16)> {
        None
    }
    fn name(&self) -> String {
        "sim".into()
    }
    fn gone(&self) -> bool {
        // A controller process is not our child (it was double-forked), so it is reaped
        // at once when it dies and its pid no longer exists. A thread of ours cannot go.
        self.process().is_some_and(|pid| {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            nix::sys::signal::kill(pid, None) == Err(nix::errno::Errno::ESRCH)
        })
    }
    fn unmap_range(&self, iova: u64, len: u64) {
        if let Device::Process(c) = &self.dev {
            let _ = c.dma_unmap(iova, len as usize);
        }
    }
    fn last_member_left(&self) {
        if let Device::Process(c) = &self.dev {
            let _ = c.shutdown();
        }
    }
    fn interrupt_vectors(&self) -> u16 {
        self.dev.interrupt_vectors()
    }
    fn set_interrupt(
        &self,
        vector: u16,
        eventfd: Option<std::os::fd::BorrowedFd<'_>>,
    ) -> Result<()> {
        self.dev
            .set_interrupt(vector, eventfd)
            .map_err(|e| Error::Transport(format!("software controller: {e}")))
    }
    fn function_reset_supported(&self) -> bool {
        true
    }
    /// The software controller has no PCI function: its nearest thing, a controller reset
    /// (CC.EN 1 -> 0, which the driver's reset path has just done: queues, in-flight
    /// commands and features go, the namespaces' data stays), is all there is, so this adds
    /// nothing to it.
    fn reset_function(&self) -> Result<crate::transport::FunctionReset> {
        Ok(crate::transport::FunctionReset::default())
    }
}
