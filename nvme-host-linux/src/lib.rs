//! The NVMe driver for Linux: attach to a controller, allocate DMA buffers, create one I/O
//! queue pair per thread, submit commands and poll for their completions.
//!
//! Transports: `trtype:sim` (the built-in software controller, no hardware needed) and
//! `trtype:PCIe traddr:dddd:bb:dd.f` (a controller bound to vfio-pci).

mod backend;
mod controller;
mod dma;
mod error;
pub mod group;
mod groupattach;
pub mod iova;
pub mod memory;
mod mmio;
mod qpair;
#[cfg(feature = "testkit")]
pub mod testkit;
mod transport;
pub mod vfio;

pub use backend::{SimTransport, Transport};
pub use controller::{AttachOptions, Controller, Namespace};
pub use dma::{DmaBuffer, IoBuf};
pub use error::{Error, Result};
pub use group::Role;
pub use mmio::Mmio;
pub use qpair::{IoQueuePair, QueueOptions};
pub use transport::{PciAddress, SimOptions, TransportId, TransportKind};

pub use nvme_core as core;
pub use nvme_regs as regs;
pub use nvme_sim as sim;

/// Opens a PCIe controller through VFIO (no address: the first NVMe function bound to
/// vfio-pci; [`vfio::probe`] lists them all).
fn open_pcie(traddr: Option<&PciAddress>) -> Result<std::sync::Arc<dyn Transport>> {
    vfio::open_pcie(traddr)
}

/// The workspace README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
