//! The NVMe driver for Linux: attach to a controller, allocate DMA buffers, create one I/O
//! queue pair per thread, submit commands and poll for their completions.
//!
//! Transports: `trtype:PCIe traddr:dddd:bb:dd.f` (a controller bound to vfio-pci),
//! `trtype:sim` (the built-in software controller, no hardware needed), and
//! `trtype:TCP traddr:IP trsvcid:PORT subnqn:NQN` (NVMe/TCP: the same [`Controller`] and
//! [`IoQueuePair`] API; in a shared-memory group over TCP each process has an association
//! of its own; no function resets, interrupts or asynchronous events over TCP).
//!
//! Cargo features, all off by default:
//! - `sim`: the software controller (`trtype:sim`, `SimTransport`, the `sim` module with
//!   the device's own API). Without it `trtype:sim` still parses, and attaching says that
//!   this build has no software controller.
//! - `testkit`: the multi-process test kit (`testkit` module).
//! - `test-hooks`: hidden hooks that the multi-process tests use to provoke failures.
//!
//! Where each job lives:
//! - `controller`: [`Controller`], an attached controller (identity, namespaces, queue ids,
//!   synchronous admin helpers, detach); `attach`: attaching alone or in a group
//!   ([`AttachOptions`]), namespaces; `shadow`: shadow doorbells (Doorbell Buffer Config),
//!   a process's own pages or its group's; `namespace`: [`Namespace`].
//! - `admin`: the one admin path: nvme-core's shared admin queue protocol for a process
//!   alone (a group of one, in-process lock) and for a group (robust mutex in the group's
//!   files), bring-up, timed-out commands' memory, controller liveness.
//! - `qpair`: [`IoQueuePair`], one per thread (`qpair::commands`: synchronous Flush,
//!   Write Zeroes, Dataset Management and I/O passthru); `dma`: [`DmaBuffer`].
//! - `passthru`: [`Controller::admin_passthru`] and the admin commands it refuses.
//! - `manage`: Format NVM ([`Controller::format`]), Device Self-test, Namespace
//!   Management and Attachment, and [`Controller::rescan_namespaces`], which brings the
//!   namespace list (`namespace::NamespaceTable`) up to date after them.
//! - `lease`: LBA range leases ([`Controller::lease`], [`Lease`]): processes of a group own
//!   or share ranges of blocks, and a process that opted in has its writes outside them
//!   refused before submission (the group's table is `group::leases`).
//! - `transport`: the [`Transport`] trait; `vfio` (PCIe through VFIO) and `simtransport`
//!   (the software controller) implement it; `trid`: transport id strings.
//! - `tcp`: NVMe/TCP (`trtype:TCP`): the admin queue of a controller over TCP
//!   ([`tcp::TcpController`]: Fabrics Connect, properties, admin commands, Keep Alive),
//!   discovery ([`tcp::discover`]), [`tcp::TcpTransport`] (the transport a [`Controller`]
//!   over TCP has: no registers, host memory in a table instead of an IOMMU) and
//!   [`tcp::TcpRings`] (an I/O queue's connection, under nvme-core's queue pair).
//! - `group`: the shared-memory group (files, members, liveness, queue id pool, descriptor
//!   passing, the namespace record joiners read instead of sending Identify);
//!   `groupattach`: creating, joining and cleaning up after dead members. Over NVMe/TCP a
//!   group shares no controller state: each member has its own association, the group
//!   gives the member table, liveness, leases and the checks on who may join.
//! - `dmapool`: [`DmaPool`], the transport's pool of mapped regions that buffers, rings and
//!   pages are carved from.
//! - `memory`, `mmio`, `sys`, `iova`, `error`: mappings, registers, system calls, IOVA
//!   allocation, the error type.
//!
//! Where `unsafe` lives (everything else denies it): `memory` (the one RAII type for every
//! `mmap`, and the safe views of mapped memory: DMA regions, bytes, the control header),
//! `dmapool` (a pooled range's bytes, owned alone by the allocator's rule),
//! `mmio` (volatile register access), `sys` (system calls and ioctls without a safe
//! wrapper in `nix`), `group::robust` (the robust process-shared pthread mutex in shared
//! memory) and one statement in `group::fdpass` (owning descriptors received with
//! `SCM_RIGHTS`).

#![deny(unsafe_code)]

mod admin;
mod attach;
mod controller;
mod dma;
mod dmapool;
mod error;
pub mod group;
mod groupattach;
mod iova;
mod lease;
mod manage;
pub mod memory;
mod mmio;
mod namespace;
mod passthru;
mod qpair;
mod shadow;
#[cfg(feature = "sim")]
mod simtransport;
pub mod steps;
mod sys;
pub mod tcp;
#[cfg(feature = "testkit")]
pub mod testkit;
mod transport;
mod trid;
pub mod vfio;

pub use attach::{AttachOptions, TimeoutAction};
pub use controller::Controller;
pub use dma::{DmaBuffer, IoBuf};
pub use dmapool::{DmaPool, PoolStats};
pub use error::{Error, Result};
pub use group::Role;
pub use lease::{Lease, LeaseConflict, LeaseMode, LeaseRange};
pub use manage::{FormatOptions, NamespaceSpec, FORMAT_TIMEOUT, NS_MANAGEMENT_TIMEOUT};
pub use mmio::Mmio;
pub use namespace::Namespace;
pub use passthru::admin_passthru_refusal;
pub use qpair::{DataPointer, IoQueuePair, QueueOptions};
pub use qpair::{DsmAttributes, WriteZeroesOptions, MAX_DSM_RANGES, SYNC_COMMAND_TIMEOUT};
pub use qpair::{RECONNECT_ATTEMPTS, RECONNECT_INTERVAL};
#[cfg(feature = "sim")]
pub use simtransport::SimTransport;
pub use transport::{FunctionReset, Transport};
pub use trid::{PciAddress, SimOptions, TcpOptions, TransportId, TransportKind};

pub use nvme_core;
pub use nvme_regs as regs;
#[cfg(feature = "sim")]
pub use nvme_sim as sim;

/// Opens a PCIe controller through VFIO (no address: the first NVMe function bound to
/// vfio-pci; [`vfio::probe`] lists them all).
fn open_pcie(traddr: Option<&PciAddress>) -> Result<std::sync::Arc<dyn Transport>> {
    vfio::open_pcie(traddr)
}

/// Starts the built-in software controller in this process (`trtype:sim`).
#[cfg(feature = "sim")]
fn open_sim(opts: &SimOptions) -> Result<std::sync::Arc<dyn Transport>> {
    Ok(std::sync::Arc::new(SimTransport::start(opts)?))
}

/// Without the `sim` feature: the error that says so.
#[cfg(not(feature = "sim"))]
fn open_sim(_: &SimOptions) -> Result<std::sync::Arc<dyn Transport>> {
    Err(no_sim())
}

/// What `trtype:sim` gives in a build without the software controller.
#[cfg(not(feature = "sim"))]
fn no_sim() -> Error {
    Error::Transport(
        "this build has no software controller: enable the `sim` feature of nvme-host-linux".into(),
    )
}

/// The workspace README's examples (they use `trtype:sim`), compiled and run as doctests.
#[cfg(all(doctest, feature = "sim"))]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

#[cfg(all(test, not(feature = "sim")))]
mod tests {
    use super::*;

    #[test]
    fn without_the_sim_feature_trtype_sim_says_so() {
        const WANT: &str = "this build has no software controller: enable the `sim` feature";
        let e = Controller::attach("trtype:sim nscount:2").unwrap_err();
        assert!(e.to_string().contains(WANT), "{e}");
        // The transport id still parses.
        let trid = TransportId::parse("trtype:sim nscount:2 lbasize:4096").unwrap();
        assert!(matches!(trid.kind, TransportKind::Sim(ref o) if o.namespaces == 2));
        // In a group: refused before the group's directory is made.
        let id = 4_000_000_007;
        let opts = AttachOptions {
            group: Some(id),
            ..Default::default()
        };
        let e = Controller::attach_with(&trid, &opts).unwrap_err();
        assert!(e.to_string().contains(WANT), "{e}");
        assert!(!group::group_dir(id).exists());
    }
}
