//! DMA mapping through the IOMMU: the legacy VFIO container with the type1v2 backend.
//!
//! The transport uses the [`DmaMapper`] trait only, so an iommufd backend (`/dev/iommu` with
//! the vfio cdev `/dev/vfio/devices/vfioN`) can be added later as a second implementation
//! next to [`Type1Container`] without touching the rest.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use vfio_bindings::bindings::vfio::{
    vfio_iommu_type1_dma_map, VFIO_TYPE1v2_IOMMU, VFIO_API_VERSION, VFIO_DMA_MAP_FLAG_READ,
    VFIO_DMA_MAP_FLAG_WRITE, VFIO_GROUP_FLAGS_VIABLE,
};

use super::ioctl::{self, AlignedBuf};
use super::sysfs::Sysfs;
use crate::error::{Error, Result};
use crate::sys;
use crate::trid::PciAddress;

/// Inclusive `(start, last)` IOVA ranges.
type Ranges = Vec<(u64, u64)>;

/// What the transport needs from an IOMMU backend.
pub(crate) trait DmaMapper: Send + Sync + std::fmt::Debug {
    /// Maps `len` bytes at process address `vaddr` to device address `iova`, read-write.
    fn map(&self, vaddr: u64, iova: u64, len: u64) -> io::Result<()>;
    /// Removes the mapping at `iova`.
    fn unmap(&self, iova: u64, len: u64) -> io::Result<()>;
    /// The usable IOVA ranges (inclusive) and the smallest IOMMU page size.
    fn iova_ranges(&self) -> (&[(u64, u64)], u64);
}

/// The fallback when the kernel does not report usable ranges (no
/// `VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE`, kernels before 5.4): the narrowest address width
/// that Intel and AMD IOMMUs implement (39 bits), minus page 0 and the x86 MSI window
/// (0xfee00000-0xfeefffff), which is never translated as DMA. Only used when the cap is absent.
const FALLBACK_RANGES: [(u64, u64); 2] = [(0x1000, 0xfedf_ffff), (0xfef0_0000, (1 << 39) - 1)];

/// A VFIO container (`/dev/vfio/vfio`) with the type1v2 IOMMU set, and the group in it.
#[derive(Debug)]
pub(crate) struct Type1Container {
    // Drop order: the group leaves the container before the container closes.
    group: OwnedFd,
    container: OwnedFd,
    ranges: Vec<(u64, u64)>,
    /// Whether the ranges came from the kernel (false: [`FALLBACK_RANGES`]).
    pub(crate) ranges_from_kernel: bool,
    page_size: u64,
}

fn permission_message(path: &Path) -> String {
    format!(
        "permission denied opening {}: VFIO needs root, or the device's group node given to your user \
         (chown $USER {0}; `nvme-setup bind <addr> --user $USER` does it) plus a locked-memory limit large enough for \
         the DMA memory (ulimit -l unlimited, or memlock in /etc/security/limits.conf)",
        path.display()
    )
}

fn open_rw(path: &Path) -> io::Result<OwnedFd> {
    Ok(OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)?
        .into())
}

/// Opens the group node, retrying for up to `wait` while another process has it open.
fn open_busy_wait(path: &Path, wait: std::time::Duration) -> io::Result<OwnedFd> {
    let start = std::time::Instant::now();
    loop {
        match open_rw(path) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && start.elapsed() < wait => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

impl Type1Container {
    /// Opens a container, checks the API and type1v2 support, opens IOMMU group `group` of
    /// `addr`, checks it is viable, puts it in the container and sets the IOMMU.
    ///
    /// `busy_wait`: how long to retry while the group node is busy (a shared-memory group
    /// being re-created while the processes of the previous one are still exiting).
    pub(crate) fn open(
        sys: &Sysfs,
        addr: &PciAddress,
        group: u32,
        busy_wait: std::time::Duration,
    ) -> Result<Type1Container> {
        let cpath = sys.path("/dev/vfio/vfio");
        let container = open_rw(&cpath).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::Transport(format!(
                "{} does not exist: the vfio modules are not loaded; run `modprobe vfio-pci` (or `nvme-setup bind {addr}`, which loads it)",
                cpath.display()
            )),
            io::ErrorKind::PermissionDenied => Error::Transport(permission_message(&cpath)),
            _ => Error::os(format!("opening {}", cpath.display()), e),
        })?;
        let version = sys::vfio_get_api_version(container.as_fd())
            .map_err(|e| Error::os("VFIO_GET_API_VERSION", e))?;
        if version != VFIO_API_VERSION as i32 {
            return Err(Error::Transport(format!(
                "VFIO API version {version} is not the supported {VFIO_API_VERSION}"
            )));
        }
        let has_v2 = sys::vfio_check_extension(container.as_fd(), VFIO_TYPE1v2_IOMMU)
            .map_err(|e| Error::os("VFIO_CHECK_EXTENSION", e))?;
        if has_v2 != 1 {
            return Err(Error::Transport(
                "the kernel's VFIO has no type1v2 IOMMU backend: load vfio_iommu_type1 (modprobe vfio_iommu_type1) and make sure the IOMMU is on (intel_iommu=on / amd_iommu=on)".into(),
            ));
        }

        let gpath = sys.path(&format!("/dev/vfio/{group}"));
        let group_fd = open_busy_wait(&gpath, busy_wait).map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT) => Error::Transport(format!(
                "{} does not exist although {addr} is in IOMMU group {group}: is it really bound to vfio-pci? Rebind with `nvme-setup bind {addr}`",
                gpath.display()
            )),
            Some(libc::EACCES) | Some(libc::EPERM) => Error::Transport(permission_message(&gpath)),
            Some(libc::EBUSY) => Error::Transport(format!(
                "{} is busy: another process has IOMMU group {group} of {addr} open (VFIO allows one opener; stop it, or join it as a secondary process)",
                gpath.display()
            )),
            _ => Error::os(format!("opening {}", gpath.display()), e),
        })?;
        let flags = sys::vfio_group_get_status(group_fd.as_fd())
            .map_err(|e| Error::os("VFIO_GROUP_GET_STATUS", e))?;
        if flags & VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(Error::Transport(sys.not_viable_message(addr, group)));
        }
        sys::vfio_group_set_container(group_fd.as_fd(), container.as_fd())
            .map_err(|e| Error::os(format!("VFIO_GROUP_SET_CONTAINER for group {group}"), e))?;
        sys::vfio_set_iommu(container.as_fd(), VFIO_TYPE1v2_IOMMU)
            .map_err(|e| Error::os("VFIO_SET_IOMMU(type1v2)", e))?;

        Self::finish(container, group_fd)
    }

    /// A container and group that another process of a shared-memory group opened and set
    /// up (received over a Unix socket): only the IOMMU facts are read again.
    pub(crate) fn from_fds(container: OwnedFd, group: OwnedFd) -> Result<Type1Container> {
        Self::finish(container, group)
    }

    fn finish(container: OwnedFd, group: OwnedFd) -> Result<Type1Container> {
        let (ranges, page_size) = Self::info(container.as_fd())?;
        let ranges_from_kernel = ranges.is_some();
        let ranges = ranges.unwrap_or_else(|| FALLBACK_RANGES.to_vec());
        Ok(Type1Container {
            group,
            container,
            ranges,
            ranges_from_kernel,
            page_size,
        })
    }

    /// The container's descriptor (to hand to another process).
    pub(crate) fn container(&self) -> std::os::fd::BorrowedFd<'_> {
        self.container.as_fd()
    }

    /// Removes every mapping inside `[iova, iova + len)`, whichever process of the group made
    /// it; the range must not cut a mapping in two. Returns the bytes unmapped. (Kernels
    /// before 6.0 unmap only mappings made by the calling process.)
    pub(crate) fn unmap_range(&self, iova: u64, len: u64) -> io::Result<u64> {
        sys::vfio_iommu_unmap_dma(self.container.as_fd(), iova, len)
    }

    /// `VFIO_IOMMU_GET_INFO`: usable IOVA ranges (if reported) and the smallest page size.
    fn info(container: std::os::fd::BorrowedFd<'_>) -> Result<(Option<Ranges>, u64)> {
        // struct vfio_iommu_type1_info is 24 bytes; the kernel raises argsz when the
        // capability chain needs more room.
        let mut len = 24usize;
        for _ in 0..4 {
            let mut buf = AlignedBuf::new(len);
            buf.bytes()[..4].copy_from_slice(&(len as u32).to_ne_bytes());
            sys::vfio_iommu_get_info(container, &mut buf)
                .map_err(|e| Error::os("VFIO_IOMMU_GET_INFO", e))?;
            let b = buf.bytes();
            let want = ioctl::u32_at(b, 0).unwrap_or(0) as usize;
            if want > len {
                len = want;
                continue;
            }
            let pgsizes = ioctl::u64_at(b, 8).unwrap_or(0);
            let page = if pgsizes == 0 {
                4096
            } else {
                (1u64 << pgsizes.trailing_zeros()).max(4096)
            };
            return Ok((ioctl::parse_iova_ranges(b), page));
        }
        Err(Error::Transport(
            "VFIO_IOMMU_GET_INFO kept asking for a larger buffer".into(),
        ))
    }

    /// The group's descriptor (to get device descriptors from).
    pub(crate) fn group(&self) -> std::os::fd::BorrowedFd<'_> {
        self.group.as_fd()
    }
}

impl DmaMapper for Type1Container {
    fn map(&self, vaddr: u64, iova: u64, len: u64) -> io::Result<()> {
        let m = vfio_iommu_type1_dma_map {
            argsz: std::mem::size_of::<vfio_iommu_type1_dma_map>() as u32,
            flags: VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
            vaddr,
            iova,
            size: len,
        };
        sys::vfio_iommu_map_dma(self.container.as_fd(), m)
    }
    fn unmap(&self, iova: u64, len: u64) -> io::Result<()> {
        let unmapped = sys::vfio_iommu_unmap_dma(self.container.as_fd(), iova, len)?;
        if unmapped != len {
            return Err(io::Error::other(format!(
                "VFIO unmapped {unmapped} of {len} bytes at IOVA {iova:#x}"
            )));
        }
        Ok(())
    }
    fn iova_ranges(&self) -> (&[(u64, u64)], u64) {
        (&self.ranges, self.page_size)
    }
}
