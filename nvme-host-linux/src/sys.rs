//! The system calls and ioctls that need `unsafe`: each is a small safe function here, with
//! the reason it is sound next to it. The rest of the crate calls these, or `nix`'s safe
//! wrappers, and denies `unsafe_code`.
//!
//! What lives elsewhere: `mmap`/`munmap` and every pointer into mapped memory
//! (`memory::Mapping`), register access (`mmio`), the robust process-shared mutex
//! (`group::robust`), and taking ownership of received descriptors (`group::fdpass`).
//!
//! The VFIO ioctls are typed: one function per request, taking the structure that request
//! expects, so no caller can pair a request with the wrong argument.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use vfio_bindings::bindings::vfio::{
    vfio_device_info, vfio_group_status, vfio_iommu_type1_dma_map, vfio_iommu_type1_dma_unmap,
};

use crate::vfio::ioctl::{self as nr, AlignedBuf};

/// The result of `ioctl(2)`: the return value, or errno.
fn check(r: libc::c_int) -> io::Result<i32> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// An ioctl whose argument is a value that the kernel does not dereference.
///
/// # Safety
/// `req` must be a request that takes its argument by value (or ignores it).
unsafe fn ioctl_value(
    fd: BorrowedFd<'_>,
    req: libc::c_ulong,
    arg: libc::c_ulong,
) -> io::Result<i32> {
    // SAFETY: the caller picks a request that reads no memory through `arg`.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), req, arg) })
}

/// An ioctl whose argument points at `T`, the structure `req` expects.
///
/// # Safety
/// `T` must be the plain `#[repr(C)]` structure (no pointers inside) that `req` reads and
/// writes, and its `argsz` (if it has one) at most `size_of::<T>()`.
unsafe fn ioctl_ptr<T>(fd: BorrowedFd<'_>, req: libc::c_ulong, arg: &mut T) -> io::Result<i32> {
    // SAFETY: `arg` is valid for reads and writes of a `T`, which is what the kernel
    // accesses for `req` (caller's contract); it outlives the call.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), req, arg as *mut T) })
}

/// An ioctl whose argument is a `*_info` structure of at least `min` bytes followed by room
/// for its capability chain, in `buf`; the structure's first word (`argsz`) bounds what the
/// kernel reads and writes. Checked here: `argsz` fits the buffer and covers the structure.
///
/// # Safety
/// `req` must be a VFIO request that takes such an argsz-prefixed structure of `min` bytes.
unsafe fn ioctl_argsz(
    fd: BorrowedFd<'_>,
    req: libc::c_ulong,
    buf: &mut AlignedBuf,
    min: usize,
) -> io::Result<()> {
    let b = buf.bytes();
    let argsz = nr::u32_at(b, 0).unwrap_or(0) as usize;
    if b.len() < min || argsz < min || argsz > b.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "VFIO info buffer of {} bytes with argsz {argsz} (at least {min})",
                b.len()
            ),
        ));
    }
    // SAFETY: `b` is valid for reads and writes of `b.len()` bytes, 8-byte aligned (an
    // AlignedBuf), and the kernel touches at most argsz <= b.len() bytes of it (checked
    // above; caller's contract on `req`).
    check(unsafe { libc::ioctl(fd.as_raw_fd(), req, b.as_mut_ptr()) }).map(|_| ())
}

/// `VFIO_GET_API_VERSION` on a container.
pub(crate) fn vfio_get_api_version(container: BorrowedFd<'_>) -> io::Result<i32> {
    // SAFETY: takes no argument.
    unsafe { ioctl_value(container, nr::GET_API_VERSION, 0) }
}

/// `VFIO_CHECK_EXTENSION`: 1 if the container supports IOMMU type `kind`.
pub(crate) fn vfio_check_extension(container: BorrowedFd<'_>, kind: u32) -> io::Result<i32> {
    // SAFETY: the argument is the extension number, by value.
    unsafe { ioctl_value(container, nr::CHECK_EXTENSION, kind as libc::c_ulong) }
}

/// `VFIO_SET_IOMMU`: selects IOMMU type `kind` for the container.
pub(crate) fn vfio_set_iommu(container: BorrowedFd<'_>, kind: u32) -> io::Result<()> {
    // SAFETY: the argument is the IOMMU type, by value.
    unsafe { ioctl_value(container, nr::SET_IOMMU, kind as libc::c_ulong) }.map(|_| ())
}

/// `VFIO_GROUP_GET_STATUS`: the group's flags.
pub(crate) fn vfio_group_get_status(group: BorrowedFd<'_>) -> io::Result<u32> {
    let mut status = vfio_group_status {
        argsz: std::mem::size_of::<vfio_group_status>() as u32,
        flags: 0,
    };
    // SAFETY: the request takes a `struct vfio_group_status`, argsz its size.
    unsafe { ioctl_ptr(group, nr::GROUP_GET_STATUS, &mut status) }?;
    Ok(status.flags)
}

/// `VFIO_GROUP_SET_CONTAINER`: adds the group to `container`.
pub(crate) fn vfio_group_set_container(
    group: BorrowedFd<'_>,
    container: BorrowedFd<'_>,
) -> io::Result<()> {
    let mut cfd: i32 = container.as_raw_fd();
    // SAFETY: the request reads an `int` (the container descriptor, open while borrowed).
    unsafe { ioctl_ptr(group, nr::GROUP_SET_CONTAINER, &mut cfd) }.map(|_| ())
}

/// `VFIO_GROUP_GET_DEVICE_FD`: a new descriptor for the device named `name` (its PCI
/// address) in the group.
pub(crate) fn vfio_group_get_device_fd(group: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: the request reads a NUL-terminated string, which `name` is and which outlives
    // the call.
    let raw =
        check(unsafe { libc::ioctl(group.as_raw_fd(), nr::GROUP_GET_DEVICE_FD, name.as_ptr()) })?;
    // SAFETY: on success the ioctl returns a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// `VFIO_DEVICE_GET_INFO`.
pub(crate) fn vfio_device_get_info(device: BorrowedFd<'_>) -> io::Result<vfio_device_info> {
    let mut info = vfio_device_info {
        argsz: std::mem::size_of::<vfio_device_info>() as u32,
        ..Default::default()
    };
    // SAFETY: the request takes a `struct vfio_device_info`, argsz its size.
    unsafe { ioctl_ptr(device, nr::DEVICE_GET_INFO, &mut info) }?;
    Ok(info)
}

/// `VFIO_DEVICE_GET_REGION_INFO` into `buf`: a `struct vfio_region_info` (32 bytes, argsz
/// and index filled in by the caller) and room for its capability chain.
pub(crate) fn vfio_device_get_region_info(
    device: BorrowedFd<'_>,
    buf: &mut AlignedBuf,
) -> io::Result<()> {
    // SAFETY: the request takes an argsz-prefixed `struct vfio_region_info` of 32 bytes.
    unsafe { ioctl_argsz(device, nr::DEVICE_GET_REGION_INFO, buf, 32) }
}

/// `VFIO_DEVICE_GET_IRQ_INFO` for interrupt `index` (`VFIO_PCI_MSIX_IRQ_INDEX`, ...).
pub(crate) fn vfio_device_get_irq_info(
    device: BorrowedFd<'_>,
    index: u32,
) -> io::Result<vfio_bindings::bindings::vfio::vfio_irq_info> {
    let mut info = vfio_bindings::bindings::vfio::vfio_irq_info {
        argsz: std::mem::size_of::<vfio_bindings::bindings::vfio::vfio_irq_info>() as u32,
        index,
        ..Default::default()
    };
    // SAFETY: the request takes a `struct vfio_irq_info`, argsz its size.
    unsafe { ioctl_ptr(device, nr::DEVICE_GET_IRQ_INFO, &mut info) }?;
    Ok(info)
}

/// `VFIO_DEVICE_SET_IRQS` with `VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER`:
/// vectors `start..start + fds.len()` of interrupt `index` signal the given eventfds (`None`:
/// nothing). The kernel takes its own reference to each eventfd.
pub(crate) fn vfio_device_set_irq_eventfds(
    device: BorrowedFd<'_>,
    index: u32,
    start: u32,
    fds: &[Option<BorrowedFd<'_>>],
) -> io::Result<()> {
    use vfio_bindings::bindings::vfio::{VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD};
    // struct vfio_irq_set { u32 argsz; u32 flags; u32 index; u32 start; u32 count; s32 data[]; }
    const HEADER: usize = 20;
    let argsz = HEADER + 4 * fds.len();
    let mut buf = AlignedBuf::new(argsz);
    let b = buf.bytes();
    let flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
    for (i, word) in [argsz as u32, flags, index, start, fds.len() as u32]
        .into_iter()
        .enumerate()
    {
        b[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    for (i, fd) in fds.iter().enumerate() {
        let raw: i32 = fd.map_or(-1, |f| f.as_raw_fd());
        b[HEADER + i * 4..HEADER + i * 4 + 4].copy_from_slice(&raw.to_ne_bytes());
    }
    // SAFETY: the request takes an argsz-prefixed `struct vfio_irq_set` (20 bytes) followed
    // by `count` descriptors, all inside argsz; the descriptors are borrowed for the call.
    unsafe { ioctl_argsz(device, nr::DEVICE_SET_IRQS, &mut buf, HEADER) }
}

/// `VFIO_DEVICE_RESET`.
pub(crate) fn vfio_device_reset(device: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: takes no argument.
    unsafe { ioctl_value(device, nr::DEVICE_RESET, 0) }.map(|_| ())
}

/// `VFIO_IOMMU_GET_INFO` into `buf`: a `struct vfio_iommu_type1_info` (24 bytes, argsz
/// filled in by the caller) and room for its capability chain.
pub(crate) fn vfio_iommu_get_info(
    container: BorrowedFd<'_>,
    buf: &mut AlignedBuf,
) -> io::Result<()> {
    // SAFETY: the request takes an argsz-prefixed `struct vfio_iommu_type1_info` of 24
    // bytes.
    unsafe { ioctl_argsz(container, nr::IOMMU_GET_INFO, buf, 24) }
}

/// `VFIO_IOMMU_MAP_DMA`: lets the device reach `map.size` bytes of this process's memory at
/// `map.vaddr` through `map.iova`.
///
/// The ioctl itself only reads `map`; the kernel pins the pages (or fails). Which memory the
/// device may then write is the caller's business: the driver maps only its own shared
/// segments (`memory::SharedMemory`) and unmaps them before they are unmapped for the CPU.
pub(crate) fn vfio_iommu_map_dma(
    container: BorrowedFd<'_>,
    mut map: vfio_iommu_type1_dma_map,
) -> io::Result<()> {
    map.argsz = std::mem::size_of::<vfio_iommu_type1_dma_map>() as u32;
    // SAFETY: the request takes a `struct vfio_iommu_type1_dma_map`, argsz its size.
    unsafe { ioctl_ptr(container, nr::IOMMU_MAP_DMA, &mut map) }.map(|_| ())
}

/// `VFIO_IOMMU_UNMAP_DMA` of `[iova, iova + size)`: returns the number of bytes the kernel
/// unmapped.
pub(crate) fn vfio_iommu_unmap_dma(
    container: BorrowedFd<'_>,
    iova: u64,
    size: u64,
) -> io::Result<u64> {
    let mut u = vfio_iommu_type1_dma_unmap {
        argsz: std::mem::size_of::<vfio_iommu_type1_dma_unmap>() as u32,
        flags: 0,
        iova,
        size,
        ..Default::default()
    };
    // SAFETY: the request takes a `struct vfio_iommu_type1_dma_unmap`, argsz its size; with
    // no flags the kernel reads no dirty bitmap after it.
    unsafe { ioctl_ptr(container, nr::IOMMU_UNMAP_DMA, &mut u) }?;
    Ok(u.size)
}

/// Makes the child that `cmd` starts get `SIGKILL` when the thread that started it ends
/// (`PR_SET_PDEATHSIG`).
#[cfg(feature = "testkit")]
pub(crate) fn kill_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only calls prctl, which
    // is async-signal-safe, allocates nothing and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}
