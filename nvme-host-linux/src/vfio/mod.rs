//! The VFIO transport (`trtype:PCIe`): a PCI function bound to vfio-pci, with the IOMMU on.
//!
//! Layout, bottom up:
//! - [`sysfs`]: PCI functions, drivers and IOMMU groups as sysfs shows them; binding; the
//!   pre-flight checks whose errors say what to do.
//! - `ioctl`: VFIO ioctl numbers, the calls themselves, capability-chain parsing.
//! - `iommu`: DMA mapping behind a small trait; today the legacy container with type1v2
//!   (`/dev/vfio/vfio` + `/dev/vfio/<group>`). iommufd with the vfio cdev
//!   (`/dev/iommu`, `/dev/vfio/devices/vfioN`) would be a second implementation there, with
//!   its own way to get the device descriptor.
//! - `device`: the device descriptor: regions, config space, BAR0 mmap, reset.
//! - `share`: the IOVA partition that lets the processes of a shared-memory group use one
//!   container (each maps its own memory in its own slice).
//! - [`VfioTransport`]: all of it as a [`Transport`].

mod device;
pub(crate) mod ioctl;
mod iommu;
pub(crate) mod share;
pub mod sysfs;

use std::fmt;
use std::os::fd::{BorrowedFd, OwnedFd};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::dmapool::DmaPool;
use crate::error::{Error, Result};
use crate::iova::{map_skipping_stale, Attempt, IovaAllocator, MapError};
use crate::memory::SharedMemory;
use crate::mmio::Mmio;
use crate::transport::{FunctionReset, Transport};
use crate::trid::PciAddress;

use device::Device;
use iommu::{DmaMapper, Type1Container};
pub use sysfs::{PciFunction, Sysfs, NVME_CLASS};

/// A controller opened through VFIO.
pub struct VfioTransport {
    addr: PciAddress,
    ids: (u16, u16),
    bar: Mmio,
    iovas: Mutex<IovaAllocator>,
    /// A member of a shared-memory group: the device is reset only by the last member out.
    shared: bool,
    /// Set when this process is the last member of its group to leave.
    last_member: AtomicBool,
    /// MSI-X vectors the driver may use (see [`MAX_MSIX_VECTORS`]).
    msix_vectors: u16,
    /// Serialises this process's MSI-X changes (the group's join lock serialises processes).
    msix_lock: Mutex<()>,
    /// DMA memory carved for buffers, rings and pages (released in `drop`).
    pool: DmaPool,
    // Drop order matters: the device closes before the group and container it came from.
    device: Device,
    iommu: Type1Container,
}

impl fmt::Debug for VfioTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VfioTransport")
            .field("addr", &self.addr.to_string())
            .field(
                "ids",
                &format_args!("{:04x}:{:04x}", self.ids.0, self.ids.1),
            )
            .field("bar_len", &self.bar.len())
            .field("iova_ranges", &self.iommu.iova_ranges().0)
            .finish()
    }
}

/// At most this many MSI-X vectors are enabled (the first interrupt-driven queue enables them
/// all at once: kernels before 6.5 cannot add vectors to an enabled MSI-X function later).
/// Queues with larger ids are polled.
pub const MAX_MSIX_VECTORS: u16 = 256;

/// The MSI-X vectors the driver may use on `device`.
fn msix_vectors(device: &Device) -> u16 {
    device.msix_vectors().min(u32::from(MAX_MSIX_VECTORS)) as u16
}

/// NVMe functions bound to vfio-pci on this machine, by address.
pub fn probe() -> Result<Vec<PciAddress>> {
    Ok(Sysfs::new().vfio_nvme_functions())
}

/// Opens the first NVMe function bound to vfio-pci, or says which NVMe functions exist and
/// how to bind one.
pub fn open_first() -> Result<VfioTransport> {
    let sys = Sysfs::new();
    match sys.vfio_nvme_functions().first() {
        Some(a) => VfioTransport::open_in(&sys, a),
        None => {
            let all: Vec<String> = sys.nvme_functions().iter().map(sysfs::describe).collect();
            Err(Error::Transport(if all.is_empty() {
                "no NVMe controller found: sysfs lists no PCI function of class 010802 (see `lspci -D -d ::0108`)".into()
            } else {
                format!(
                    "no NVMe controller is bound to vfio-pci; NVMe functions here: {}. Bind one with `nvme-setup bind <addr>`",
                    all.join(", ")
                )
            }))
        }
    }
}

impl VfioTransport {
    /// Opens `addr` through VFIO: pre-flight checks, container and group, device, reset,
    /// bus mastering on and INTx off, BAR0 mapping.
    pub fn open(addr: &PciAddress) -> Result<VfioTransport> {
        Self::open_in(&Sysfs::new(), addr)
    }

    /// [`open`](Self::open) with sysfs and `/dev` under another root (for tests).
    pub fn open_in(sys: &Sysfs, addr: &PciAddress) -> Result<VfioTransport> {
        Self::open_with(sys, addr, Duration::ZERO)
    }

    fn open_with(sys: &Sysfs, addr: &PciAddress, busy_wait: Duration) -> Result<VfioTransport> {
        let group = sys.check_vfio(addr)?;
        let iommu = Type1Container::open(sys, addr, group, busy_wait)?;
        let device = Device::open(iommu.group(), addr)?;
        // Reset on attach: whatever a previous user left running (queues, DMA) stops. When
        // the function has no reset method, the controller reset (CC.EN=0) at bring-up does
        // the same for NVMe state.
        if device.can_reset() {
            device
                .reset()
                .map_err(|e| Error::os(format!("VFIO_DEVICE_RESET of {addr}"), e))?;
        }
        let id = device
            .config_u32(0)
            .map_err(|e| Error::os(format!("reading the config space of {addr}"), e))?;
        if id == u32::MAX {
            return Err(Error::Transport(format!(
                "{addr} reads all ones from config space: the device is gone or powered down (check `lspci -s {addr}` and dmesg)"
            )));
        }
        let ids = (id as u16, (id >> 16) as u16);
        device
            .enable_bus_master()
            .map_err(|e| Error::os(format!("enabling bus mastering on {addr}"), e))?;
        let bar = device.map_bar0(addr)?;
        let (ranges, page) = iommu.iova_ranges();
        let iovas = Mutex::new(IovaAllocator::new(ranges, page));
        Ok(VfioTransport {
            addr: *addr,
            ids,
            bar,
            iovas,
            shared: false,
            last_member: AtomicBool::new(false),
            msix_vectors: msix_vectors(&device),
            msix_lock: Mutex::new(()),
            pool: DmaPool::new(),
            device,
            iommu,
        })
    }

    /// Opens `addr` for the process creating a shared-memory group: as [`open`](Self::open)
    /// (device reset included), but waiting a little while the group node is still held by
    /// the exiting processes of a previous group.
    pub(crate) fn open_group_creator(addr: &PciAddress) -> Result<VfioTransport> {
        let mut t = Self::open_with(&Sysfs::new(), addr, Duration::from_secs(5))?;
        t.shared = true;
        Ok(t)
    }

    /// A transport over descriptors received from a live member of a shared-memory group
    /// (container, group, device, in that order; see [`shared_fds`](Self::shared_fds)). No
    /// reset and no config-space change: the controller is running for the others.
    pub(crate) fn from_shared_fds(addr: &PciAddress, fds: Vec<OwnedFd>) -> Result<VfioTransport> {
        let [container, group, device]: [OwnedFd; 3] = fds.try_into().map_err(|v: Vec<_>| {
            Error::Transport(format!(
                "received {} VFIO descriptors, expected 3 (container, group, device)",
                v.len()
            ))
        })?;
        let iommu = Type1Container::from_fds(container, group)?;
        let device = Device::from_fd(device, addr)?;
        let id = device
            .config_u32(0)
            .map_err(|e| Error::os(format!("reading the config space of {addr}"), e))?;
        if id == u32::MAX {
            return Err(Error::Transport(format!(
                "{addr} reads all ones from config space: the device is gone or powered down"
            )));
        }
        let bar = device.map_bar0(addr)?;
        let (ranges, page) = iommu.iova_ranges();
        let iovas = Mutex::new(IovaAllocator::new(ranges, page));
        Ok(VfioTransport {
            addr: *addr,
            ids: (id as u16, (id >> 16) as u16),
            bar,
            iovas,
            shared: true,
            last_member: AtomicBool::new(false),
            msix_vectors: msix_vectors(&device),
            msix_lock: Mutex::new(()),
            pool: DmaPool::new(),
            device,
            iommu,
        })
    }

    /// Copies of the container, group and device descriptors, for a joining process.
    pub(crate) fn shared_fds(&self) -> Result<Vec<OwnedFd>> {
        [self.iommu.container(), self.iommu.group(), self.device.fd()]
            .iter()
            .map(|f| {
                f.try_clone_to_owned()
                    .map_err(|e| Error::os("duplicating a VFIO descriptor", e))
            })
            .collect()
    }

    /// The IOVA slices of a shared-memory group ([`share::partition`] of the usable ranges):
    /// slice 0 for the admin segment, slice `i + 1` for member `i`.
    pub(crate) fn group_slices(&self) -> Result<Vec<(u64, u64)>> {
        let (ranges, _) = self.iommu.iova_ranges();
        share::partition(ranges, share::SLICES).ok_or_else(|| {
            Error::Transport(format!(
                "the IOMMU's usable IOVA ranges {ranges:x?} of {} are too small to give each of {} group members a slice of at least {} MiB",
                self.addr,
                share::SLICES - 1,
                share::MIN_SLICE >> 20
            ))
        })
    }

    /// Restricts this process's IOVA allocations to `slice` (`(start, len)`).
    pub(crate) fn use_slice(&self, slice: (u64, u64)) {
        let (_, page) = self.iommu.iova_ranges();
        let (start, len) = slice;
        *self.iovas.lock().unwrap_or_else(|p| p.into_inner()) =
            IovaAllocator::new(&[(start, start + len - 1)], page);
    }

    /// Maps `mem` at a fixed IOVA (the group's admin segment, in slice 0).
    pub(crate) fn map_fixed(&self, mem: &SharedMemory, iova: u64) -> Result<()> {
        self.iommu
            .map(mem.as_ptr() as u64, iova, mem.len() as u64)
            .map_err(|e| map_error(&self.addr, mem, iova, e))
    }

    /// The PCI address.
    pub fn address(&self) -> PciAddress {
        self.addr
    }

    /// The IOVA ranges in use (inclusive), and whether the kernel reported them (`false`: the
    /// 39-bit fallback).
    pub fn iova_ranges(&self) -> (Vec<(u64, u64)>, bool) {
        (
            self.iommu.iova_ranges().0.to_vec(),
            self.iommu.ranges_from_kernel,
        )
    }

    /// Can VFIO reset the function (it is reset on attach and on detach when it can)?
    pub fn reset_supported(&self) -> bool {
        self.device.can_reset()
    }

    /// Free IOVA space in bytes.
    pub fn iova_free(&self) -> u64 {
        self.iovas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .free_bytes()
    }
}

impl Drop for VfioTransport {
    fn drop(&mut self) {
        // Reset on detach: the controller stops all DMA before its mappings go away with the
        // container. Without a reset method, at least take away bus mastering. In a
        // shared-memory group only the last member out does it: the others keep using the
        // controller.
        let alone = !self.shared || self.last_member.load(Ordering::Acquire);
        if alone && !(self.device.can_reset() && self.device.reset().is_ok()) {
            let _ = self.device.disable_bus_master();
        }
        // The device no longer uses the pool (its queues are deleted, or it was reset):
        // unmap the regions, which in a group's shared container would outlive us.
        self.pool.release(|iova, len| self.unmap_dma(iova, len));
    }
}

fn map_error(addr: &PciAddress, mem: &SharedMemory, iova: u64, e: std::io::Error) -> Error {
    if e.raw_os_error() == Some(libc::ENOMEM) {
        use nix::sys::resource::{getrlimit, Resource};
        let memlock = match getrlimit(Resource::RLIMIT_MEMLOCK) {
            Ok((cur, _)) if cur == libc::RLIM_INFINITY => "unlimited".to_string(),
            Ok((cur, _)) => format!("{} KiB", cur / 1024),
            Err(_) => "unknown".into(),
        };
        let huge = match crate::memory::hugepages_free() {
            Some(n) => format!("{n} free 2 MiB hugepages"),
            None => "no hugepage information".into(),
        };
        return Error::Transport(format!(
            "VFIO could not pin {} bytes of DMA memory for {addr} (ENOMEM): the locked-memory limit is {memlock} \
             (raise it: ulimit -l unlimited, or run as root), or memory is short ({huge}; reserve more with \
             `nvme-setup hugepages <count>`)",
            mem.len()
        ));
    }
    Error::os(
        format!(
            "VFIO_IOMMU_MAP_DMA of {} bytes at IOVA {iova:#x} for {addr}",
            mem.len()
        ),
        e,
    )
}

impl Transport for VfioTransport {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn regs(&self) -> Option<Mmio> {
        Some(self.bar.clone())
    }
    fn map_dma(&self, mem: &SharedMemory) -> Result<u64> {
        let len = mem.len() as u64;
        // In a group, a range can still be mapped by the process that had this member slot
        // before and is just leaving (or died without unmapping): that range stays allocated
        // here and the search moves on.
        let stale_tries = if self.shared { 16 } else { 0 };
        map_skipping_stale(&self.iovas, len, stale_tries, |iova| {
            match self.iommu.map(mem.as_ptr() as u64, iova, len) {
                Ok(()) => Attempt::Mapped,
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) && self.shared => Attempt::Stale,
                Err(e) => Attempt::Failed((iova, e)),
            }
        })
        .map_err(|e| match e {
            MapError::OutOfSpace => Error::Transport(format!(
                "out of IOVA space for {addr}: no free range of {len} bytes inside the IOMMU's usable ranges {:x?}{}",
                self.iommu.iova_ranges().0,
                if self.shared { " (this process's slice of them)" } else { "" },
                addr = self.addr
            )),
            MapError::Stale => Error::Transport(format!(
                "DMA map for {}: 17 IOVA ranges in a row for {len} bytes are still mapped for an earlier member of the group",
                self.addr
            )),
            MapError::Failed((iova, e)) => map_error(&self.addr, mem, iova, e),
        })
    }
    fn unmap_dma(&self, iova: u64, len: usize) {
        // An IOVA range whose unmap failed stays allocated, so it is never handed out twice.
        if self.iommu.unmap(iova, len as u64).is_ok() {
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
        Some(self.ids)
    }
    fn name(&self) -> String {
        self.addr.to_string()
    }
    fn unmap_range(&self, iova: u64, len: u64) {
        let _ = self.iommu.unmap_range(iova, len);
    }
    fn last_member_left(&self) {
        self.last_member.store(true, Ordering::Release);
    }
    fn interrupt_vectors(&self) -> u16 {
        self.msix_vectors
    }
    fn set_interrupt(&self, vector: u16, eventfd: Option<BorrowedFd<'_>>) -> Result<()> {
        let addr = self.addr;
        let n = self.msix_vectors;
        if vector >= n {
            return Err(Error::Invalid(format!(
                "{addr}: MSI-X vector {vector} does not exist (the driver uses {n})"
            )));
        }
        let _serial = self.msix_lock.lock().unwrap_or_else(|p| p.into_inner());
        let enabled = self
            .device
            .msix_enabled()
            .map_err(|e| Error::os(format!("reading the MSI-X capability of {addr}"), e))?;
        let set = if enabled {
            self.device.set_msix(u32::from(vector), &[eventfd])
        } else if eventfd.is_none() {
            return Ok(());
        } else {
            // Enables MSI-X with every vector the driver may use; only ours signals.
            let mut fds = vec![None; n as usize];
            fds[vector as usize] = eventfd;
            self.device.set_msix(0, &fds)
        };
        set.map_err(|e| {
            Error::os(
                format!(
                    "VFIO_DEVICE_SET_IRQS (MSI-X vector {vector} of {n}{}) on {addr}",
                    if enabled { "" } else { ", enabling MSI-X" }
                ),
                e,
            )
        })
    }
    fn function_reset_supported(&self) -> bool {
        self.device.can_reset()
    }
    fn reset_function(&self) -> Result<FunctionReset> {
        let addr = self.addr;
        let command = || {
            self.device
                .config_u16(device::PCI_COMMAND)
                .map_err(|e| Error::os(format!("reading the PCI command register of {addr}"), e))
        };
        let before = command()?;
        // vfio-pci blocks access to the BAR while it resets (its mmap is zapped and faulted
        // in again afterwards, at the same address), and saves and restores the config
        // space around the reset.
        self.device
            .reset()
            .map_err(|e| Error::os(format!("VFIO_DEVICE_RESET of {addr}"), e))?;
        let after = command()?;
        if after == u16::MAX {
            return Err(Error::Transport(format!(
                "{addr} reads all ones from config space after VFIO_DEVICE_RESET: the device is gone"
            )));
        }
        if device::command_for_polling(after) != after {
            self.device.enable_bus_master().map_err(|e| {
                Error::os(
                    format!("enabling bus mastering on {addr} after its reset"),
                    e,
                )
            })?;
        }
        Ok(FunctionReset {
            command_before: Some(before),
            command_after: Some(after),
        })
    }
}

/// Opens `trtype:PCIe` with an optional address (none: the first NVMe function bound to
/// vfio-pci).
pub(crate) fn open_pcie(traddr: Option<&PciAddress>) -> Result<Arc<dyn Transport>> {
    let t = match traddr {
        Some(a) => VfioTransport::open(a)?,
        None => open_first()?,
    };
    Ok(Arc::new(t))
}

#[cfg(test)]
mod tests {
    use super::sysfs::tests::FakeSys;
    use super::*;

    #[test]
    fn open_reports_preflight_errors_before_touching_dev() {
        let fake = FakeSys::new("open");
        fake.add("0000:00:05.0", NVME_CLASS, Some("nvme"), Some(4));
        fake.add("0000:00:04.0", NVME_CLASS, Some("vfio-pci"), Some(3));
        let s = fake.sysfs();
        let e = VfioTransport::open_in(&s, &"0000:00:05.0".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("kernel nvme driver") && e.contains("nvme-setup bind"),
            "{e}"
        );
        let e = VfioTransport::open_in(&s, &"0000:0a:00.0".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("not found"), "{e}");
        // Bound to vfio-pci, but the fake /dev has no vfio nodes.
        let e = VfioTransport::open_in(&s, &"0000:00:04.0".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("dev/vfio/vfio does not exist") && e.contains("modprobe vfio-pci"),
            "{e}"
        );
    }

    #[test]
    fn attach_names_a_missing_device() {
        let e = crate::Controller::attach("trtype:PCIe traddr:00ff:1f:1f.7")
            .unwrap_err()
            .to_string();
        assert!(e.contains("PCI device 00ff:1f:1f.7 not found"), "{e}");
    }
}
