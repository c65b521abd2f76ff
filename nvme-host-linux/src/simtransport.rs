//! The built-in software controller (`trtype:sim`, cargo feature `sim`) as a transport: in
//! this process ([`SimTransport`]) or in a process of its own that the members of a
//! shared-memory group share ([`SimClientTransport`]).

use std::fmt;
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::iova::IovaAllocator;
use crate::memory::{Mapping, SharedMemory};
use crate::mmio::Mmio;
use crate::transport::{member_iova_range, Transport};
use crate::trid::SimOptions;

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

/// Allocates an IOVA for `mem` and maps it with `map`; gives the IOVA back if that fails.
fn map_with_iova(
    iovas: &Mutex<IovaAllocator>,
    mem: &SharedMemory,
    map: impl Fn(u64) -> std::result::Result<(), nvme_sim::SimError>,
) -> Result<u64> {
    let lock = || iovas.lock().unwrap_or_else(|p| p.into_inner());
    let len = mem.len() as u64;
    // In a group, a range can still be mapped for a member that had this member slot
    // before (its memory is kept while the controller may use it): that range stays
    // allocated here and the next one is tried.
    for _ in 0..16 {
        let iova = lock()
            .alloc(len)
            .ok_or_else(|| Error::Transport("software controller: out of IOVA space".into()))?;
        match map(iova) {
            Ok(()) => return Ok(iova),
            Err(nvme_sim::SimError::DmaOverlap { .. }) => continue,
            Err(e) => {
                lock().free(iova, len);
                return Err(Error::Transport(format!(
                    "software controller DMA map: {e}"
                )));
            }
        }
    }
    Err(Error::Transport(format!(
        "software controller DMA map: 16 ranges of {len} bytes in a row are still mapped for an earlier process"
    )))
}

/// Unmaps with `unmap`, then returns the IOVA range to the allocator.
fn unmap_with_iova<E>(
    iovas: &Mutex<IovaAllocator>,
    iova: u64,
    len: usize,
    unmap: impl FnOnce() -> std::result::Result<(), E>,
) {
    // A failed unmap leaves the range mapped in the device: keep it out of the allocator.
    if unmap().is_ok() {
        iovas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .free(iova, len as u64);
    }
}

/// The built-in software controller as a transport.
pub struct SimTransport {
    sim: nvme_sim::SimController,
    bar: Mmio,
    iovas: Mutex<IovaAllocator>,
}

impl fmt::Debug for SimTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimTransport")
            .field("bar_len", &self.bar.len())
            .finish()
    }
}

impl SimTransport {
    /// Starts a software controller from transport options.
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
            ..Default::default()
        }
    }

    /// Starts a software controller with a full configuration.
    pub fn with_config(cfg: nvme_sim::SimConfig) -> Result<SimTransport> {
        let sim = nvme_sim::SimController::start(cfg)
            .map_err(|e| Error::Transport(format!("software controller: {e}")))?;
        let bar = map_sim_bar(sim.bar_fd(), sim.bar_len())?;
        // The whole 47-bit space minus page 0: the simulated IOMMU has no holes.
        let iovas = Mutex::new(IovaAllocator::new(&[(0, (1 << 47) - 1)], 4096));
        Ok(SimTransport { sim, bar, iovas })
    }
}

impl SimTransport {
    /// The software controller (its faults, statistics, DMA error record).
    pub fn controller(&self) -> &nvme_sim::SimController {
        &self.sim
    }
    /// `transport` as a software controller in this process, if it is one.
    pub fn of(transport: &dyn Transport) -> Option<&SimTransport> {
        transport.as_any().downcast_ref()
    }
}

impl Transport for SimTransport {
    fn regs(&self) -> Mmio {
        self.bar.clone()
    }
    fn map_dma(&self, mem: &SharedMemory) -> Result<u64> {
        map_with_iova(&self.iovas, mem, |iova| {
            self.sim.dma_map(iova, mem.fd(), 0, mem.len())
        })
    }
    fn unmap_dma(&self, iova: u64, len: usize) {
        unmap_with_iova(&self.iovas, iova, len, || self.sim.dma_unmap(iova, len));
    }
    fn pci_id(&self) -> Option<(u16, u16)> {
        None
    }
    fn name(&self) -> String {
        "sim".into()
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// A software controller running in its own process (shared-memory groups).
pub struct SimClientTransport {
    client: nvme_sim::SimClient,
    bar: Mmio,
    iovas: Mutex<IovaAllocator>,
}

impl fmt::Debug for SimClientTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimClientTransport")
            .field("daemon", &self.client.pid())
            .finish()
    }
}

impl SimClientTransport {
    /// Connects to the software controller process serving `socket`, as group member
    /// `member` (which fixes the IOVA range this process allocates from).
    pub fn connect(socket: &std::path::Path, member: usize) -> Result<SimClientTransport> {
        let client = nvme_sim::SimClient::connect(socket).map_err(|e| {
            Error::Transport(format!(
                "connecting to the software controller at {}: {e}",
                socket.display()
            ))
        })?;
        let bar = map_sim_bar(client.bar_fd(), client.bar_len())?;
        let (base, len) = member_iova_range(member);
        let iovas = Mutex::new(IovaAllocator::new(&[(base, base + len - 1)], 4096));
        Ok(SimClientTransport { client, bar, iovas })
    }

    /// Maps `mem` at a fixed IOVA (the group's admin segment, below every member's range).
    pub(crate) fn map_fixed(&self, mem: &SharedMemory, iova: u64) -> Result<()> {
        self.client
            .dma_map(iova, mem.fd(), 0, mem.len())
            .map_err(|e| Error::Transport(format!("software controller DMA map: {e}")))
    }
}

impl SimClientTransport {
    /// The connection to the software controller's process.
    pub(crate) fn client(&self) -> &nvme_sim::SimClient {
        &self.client
    }
}

impl Transport for SimClientTransport {
    fn regs(&self) -> Mmio {
        self.bar.clone()
    }
    fn map_dma(&self, mem: &SharedMemory) -> Result<u64> {
        map_with_iova(&self.iovas, mem, |iova| {
            self.client.dma_map(iova, mem.fd(), 0, mem.len())
        })
    }
    fn unmap_dma(&self, iova: u64, len: usize) {
        unmap_with_iova(&self.iovas, iova, len, || self.client.dma_unmap(iova, len));
    }
    fn pci_id(&self) -> Option<(u16, u16)> {
        None
    }
    fn name(&self) -> String {
        "sim".into()
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn unmap_range(&self, iova: u64, len: u64) {
        let _ = self.client.dma_unmap(iova, len as usize);
    }
    fn last_member_left(&self) {
        let _ = self.client.shutdown();
    }
}
