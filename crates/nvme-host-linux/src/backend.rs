//! Transports: how the driver reaches a controller's registers and makes memory visible to
//! it. VFIO (`trtype:PCIe`) and the built-in software controller (`trtype:sim`) implement
//! [`Transport`]; an embedder can implement it for a transport of its own.

use std::fmt;
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::iova::IovaAllocator;
use crate::memory::{map_fd, SharedMemory};
use crate::mmio::Mmio;
use crate::transport::SimOptions;

/// What the driver needs from a transport.
pub trait Transport: Send + Sync + fmt::Debug {
    /// The controller's register BAR.
    fn regs(&self) -> Mmio;
    /// Makes `mem` visible to the controller and returns its device address (IOVA).
    fn map_dma(&self, mem: &SharedMemory) -> Result<u64>;
    /// Reverses [`map_dma`](Self::map_dma).
    fn unmap_dma(&self, iova: u64, len: usize);
    /// PCI vendor and device id, for messages (`None` when there is no PCI function).
    fn pci_id(&self) -> Option<(u16, u16)>;
    /// A short name (the PCI address, or `sim`).
    fn name(&self) -> String;
    /// The software controller behind this transport, if it is one (for tests and tools).
    fn sim(&self) -> Option<&nvme_sim::SimController> {
        None
    }
}

/// The built-in software controller as a transport.
pub struct SimTransport {
    sim: nvme_sim::SimController,
    bar: std::ptr::NonNull<u8>,
    bar_len: usize,
    iovas: Mutex<IovaAllocator>,
}

// SAFETY: the BAR pointer refers to a shared mapping owned by this struct; register accesses
// through it are volatile and may come from any thread.
unsafe impl Send for SimTransport {}
// SAFETY: as above; the IOVA allocator is behind a mutex.
unsafe impl Sync for SimTransport {}

impl fmt::Debug for SimTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimTransport")
            .field("bar_len", &self.bar_len)
            .finish()
    }
}

impl SimTransport {
    /// Starts a software controller from transport options.
    pub fn start(opts: &SimOptions) -> Result<SimTransport> {
        let blocks = opts.size / opts.lba_size as u64;
        let cfg = nvme_sim::SimConfig {
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
        };
        Self::with_config(cfg)
    }

    /// Starts a software controller with a full configuration.
    pub fn with_config(cfg: nvme_sim::SimConfig) -> Result<SimTransport> {
        let sim = nvme_sim::SimController::start(cfg)
            .map_err(|e| Error::Transport(format!("software controller: {e}")))?;
        let bar_len = sim.bar_len();
        let bar = map_fd(sim.bar_fd(), 0, bar_len, false)
            .map_err(|e| Error::os("mapping the software controller's BAR", e))?;
        // The whole 47-bit space minus page 0: the simulated IOMMU has no holes.
        let iovas = Mutex::new(IovaAllocator::new(&[(0, (1 << 47) - 1)], 4096));
        Ok(SimTransport {
            sim,
            bar,
            bar_len,
            iovas,
        })
    }
}

impl Drop for SimTransport {
    fn drop(&mut self) {
        // SAFETY: our own mapping; the controller (and every queue using the BAR) is gone.
        unsafe { libc::munmap(self.bar.as_ptr() as *mut libc::c_void, self.bar_len) };
    }
}

impl Transport for SimTransport {
    fn regs(&self) -> Mmio {
        // SAFETY: the BAR mapping lives as long as this transport, which the controller and
        // its queue pairs keep alive.
        unsafe { Mmio::new(self.bar, self.bar_len) }
    }
    fn map_dma(&self, mem: &SharedMemory) -> Result<u64> {
        let iova = self
            .iovas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .alloc(mem.len() as u64)
            .ok_or_else(|| Error::Transport("software controller: out of IOVA space".into()))?;
        if let Err(e) = self.sim.dma_map(iova, mem.fd(), 0, mem.len()) {
            self.iovas
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .free(iova, mem.len() as u64);
            return Err(Error::Transport(format!(
                "software controller DMA map: {e}"
            )));
        }
        Ok(iova)
    }
    fn unmap_dma(&self, iova: u64, len: usize) {
        let _ = self.sim.dma_unmap(iova, len);
        self.iovas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .free(iova, len as u64);
    }
    fn pci_id(&self) -> Option<(u16, u16)> {
        None
    }
    fn name(&self) -> String {
        "sim".into()
    }
    fn sim(&self) -> Option<&nvme_sim::SimController> {
        Some(&self.sim)
    }
}
