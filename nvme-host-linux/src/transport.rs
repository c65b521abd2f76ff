//! Transports: how the driver reaches a controller's registers and makes memory visible to
//! it. VFIO (`trtype:PCIe`) and the built-in software controller (`trtype:sim`, module
//! `simtransport`, cargo feature `sim`) implement [`Transport`]; an embedder can implement
//! it for a transport of its own.

use std::fmt;

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
    /// Removes every DMA mapping inside `[iova, iova + len)`, whoever made it (a survivor
    /// cleaning up after a dead process). Transports without that ability do nothing.
    fn unmap_range(&self, _iova: u64, _len: u64) {}
    /// Called when the last process of a shared-memory group leaves (after the controller
    /// was shut down): a transport with a process of its own may stop it.
    fn last_member_left(&self) {}
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
