//! Transports: how the driver reaches a controller's registers and makes memory visible to
//! it. VFIO (`trtype:PCIe`) and the built-in software controller (`trtype:sim`, module
//! `simtransport`, cargo feature `sim`) implement [`Transport`]; an embedder can implement
//! it for a transport of its own.

use std::fmt;
use std::os::fd::BorrowedFd;

use crate::dmapool::DmaPool;
use crate::error::Result;
use crate::memory::SharedMemory;
use crate::mmio::Mmio;

/// What the driver needs from a transport.
///
/// A transport-specific handle is reached by downcasting (`as_any`), so the trait itself
/// knows nothing of any one transport.
pub trait Transport: Send + Sync + fmt::Debug + std::any::Any {
    /// This transport as `Any`, to reach its own type (e.g. the software controller of a
    /// [`SimTransport`](crate::SimTransport)).
    fn as_any(&self) -> &dyn std::any::Any;
    /// The controller's register BAR; `None` for a transport without one (NVMe/TCP, whose
    /// registers are properties reached with Fabrics commands on the admin queue).
    fn regs(&self) -> Option<Mmio>;
    /// Makes `mem` visible to the controller and returns its device address (IOVA).
    fn map_dma(&self, mem: &SharedMemory) -> Result<u64>;
    /// Reverses [`map_dma`](Self::map_dma).
    fn unmap_dma(&self, iova: u64, len: usize);
    /// The transport's DMA pool, from which buffers, rings and pages up to a pool region
    /// are carved (one [`map_dma`](Self::map_dma) per region instead of one per
    /// allocation). `None` (the default): every allocation maps a segment of its own. A
    /// transport that has one calls [`DmaPool::release`] when it drops.
    fn dma_pool(&self) -> Option<&DmaPool> {
        None
    }
    /// PCI vendor and device id, for messages (`None` when there is no PCI function).
    fn pci_id(&self) -> Option<(u16, u16)>;
    /// A short name (the PCI address, or `sim`).
    fn name(&self) -> String;
    /// Has the controller gone for good (a software controller's process that died)?
    /// Asked when a command takes long; a transport that cannot tell says `false` (a
    /// removed PCI device is seen in its registers instead).
    fn gone(&self) -> bool {
        false
    }
    /// Removes every DMA mapping inside `[iova, iova + len)`, whoever made it (a survivor
    /// cleaning up after a dead process). Transports without that ability do nothing.
    fn unmap_range(&self, _iova: u64, _len: u64) {}
    /// Called when the last process of a shared-memory group leaves (after the controller
    /// was shut down): a transport with a process of its own may stop it.
    fn last_member_left(&self) {}
    /// How many interrupt vectors (MSI-X table entries) the driver may use; vector `v`
    /// serves the I/O completion queue with id `v` (0 is the admin queue's). 0 (the
    /// default): no interrupts, every queue is polled.
    fn interrupt_vectors(&self) -> u16 {
        0
    }
    /// Makes interrupt vector `vector` signal `eventfd` (an `eventfd(2)`; `None`: nothing
    /// from now on). The vector's previous eventfd, whichever process gave it, is replaced.
    /// The caller serialises calls across the processes of a shared-memory group.
    fn set_interrupt(&self, vector: u16, eventfd: Option<BorrowedFd<'_>>) -> Result<()> {
        let _ = (vector, eventfd);
        Err(crate::error::Error::Transport(format!(
            "{}: this transport has no interrupts",
            self.name()
        )))
    }
    /// Can [`reset_function`](Self::reset_function) reset the function under a live
    /// controller? `false` (the default) makes
    /// [`Controller::reset_function`](crate::Controller::reset_function) refuse at once.
    fn function_reset_supported(&self) -> bool {
        false
    }
    /// Resets the function the controller sits on (PCI: `VFIO_DEVICE_RESET`, an FLR or
    /// another reset method the kernel chose). The driver calls it in the middle of a
    /// controller reset, with the controller disabled, and brings the controller up again
    /// afterwards; the register mapping must stay usable.
    fn reset_function(&self) -> Result<FunctionReset> {
        Err(crate::error::Error::Transport(format!(
            "{}: this transport has no function reset",
            self.name()
        )))
    }
}

/// The register BAR of `t`, or the error saying it has none (a register-based attach of a
/// transport such as NVMe/TCP).
pub(crate) fn registers(t: &dyn Transport) -> Result<Mmio> {
    t.regs().ok_or_else(|| {
        crate::error::Error::Transport(format!(
            "{}: this transport has no controller registers to attach through; attach it by its transport id (Controller::attach)",
            t.name()
        ))
    })
}

/// What a function reset ([`Controller::reset_function`](crate::Controller::reset_function))
/// saw. The PCI fields are `None` on a transport without a PCI function (the software
/// controller).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FunctionReset {
    /// The PCI command register before the reset.
    pub command_before: Option<u16>,
    /// The PCI command register right after the reset, before the driver touched it. The
    /// kernel's vfio-pci saves the function's config space before the reset and restores it
    /// after, so memory decoding and bus mastering are expected to survive; the driver sets
    /// them again when they did not.
    pub command_after: Option<u16>,
}

/// Bits of IOVA space each member of a shared-memory group allocates from (1 TiB); member
/// `i` uses `[(i + 1) << 40, (i + 2) << 40)`, and the group's admin segment sits below.
const MEMBER_IOVA_SHIFT: u32 = 40;

/// The IOVA range `(start, len)` of group member `index`.
pub(crate) fn member_iova_range(index: usize) -> (u64, u64) {
    (
        (index as u64 + 1) << MEMBER_IOVA_SHIFT,
        1 << MEMBER_IOVA_SHIFT,
    )
}
