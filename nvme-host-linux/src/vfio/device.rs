//! A VFIO device descriptor: device info, regions, PCI config space, BAR0 mapping, reset.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET, VFIO_PCI_BAR0_REGION_INDEX,
    VFIO_PCI_CONFIG_REGION_INDEX, VFIO_REGION_INFO_FLAG_MMAP,
};

use nix::sys::uio::{pread, pwrite};

use super::ioctl::{self, AlignedBuf};
use crate::error::{Error, Result};
use crate::sys;
use crate::trid::PciAddress;

/// PCI command register and its bits.
pub(crate) const PCI_COMMAND: u64 = 0x04;
pub(crate) const PCI_COMMAND_MEMORY: u16 = 1 << 1;
pub(crate) const PCI_COMMAND_MASTER: u16 = 1 << 2;
pub(crate) const PCI_COMMAND_INTX_DISABLE: u16 = 1 << 10;

/// The command register value that lets the controller work with polled queues: memory
/// space and bus mastering on, legacy interrupts off; other bits kept.
pub(crate) fn command_for_polling(cmd: u16) -> u16 {
    cmd | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER | PCI_COMMAND_INTX_DISABLE
}

/// Smallest BAR0 the driver accepts: the 4 KiB register block plus the admin queue's two
/// doorbells.
pub(crate) const MIN_BAR0: u64 = 0x1000 + 8;

/// One region of the device (offset within the device fd, size, flags) with the raw info
/// buffer for its capabilities.
#[derive(Debug)]
pub(crate) struct Region {
    pub(crate) flags: u32,
    pub(crate) size: u64,
    pub(crate) offset: u64,
    pub(crate) raw: Vec<u8>,
}

/// An open VFIO device.
#[derive(Debug)]
pub(crate) struct Device {
    fd: OwnedFd,
    pub(crate) flags: u32,
    config: Region,
}

impl Device {
    /// `VFIO_GROUP_GET_DEVICE_FD` for `addr`, then its info and config region.
    pub(crate) fn open(group: BorrowedFd<'_>, addr: &PciAddress) -> Result<Device> {
        let name = CString::new(addr.to_string()).expect("no NUL in a PCI address");
        let fd = sys::vfio_group_get_device_fd(group, &name)
            .map_err(|e| Error::os(format!("VFIO_GROUP_GET_DEVICE_FD for {addr}"), e))?;
        Self::from_fd(fd, addr)
    }

    /// A device descriptor another process of a shared-memory group opened (received over a
    /// Unix socket): its info and config region.
    pub(crate) fn from_fd(fd: OwnedFd, addr: &PciAddress) -> Result<Device> {
        let info = sys::vfio_device_get_info(fd.as_fd())
            .map_err(|e| Error::os(format!("VFIO_DEVICE_GET_INFO for {addr}"), e))?;
        if info.flags & VFIO_DEVICE_FLAGS_PCI == 0 {
            return Err(Error::Transport(format!(
                "{addr}: VFIO reports a device that is not PCI"
            )));
        }
        let config = region_info(fd.as_fd(), VFIO_PCI_CONFIG_REGION_INDEX)
            .map_err(|e| Error::os(format!("VFIO_DEVICE_GET_REGION_INFO(config) for {addr}"), e))?;
        Ok(Device {
            fd,
            flags: info.flags,
            config,
        })
    }

    /// The descriptor (to hand to another process).
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Can VFIO reset the function (FLR, PM or bus reset)?
    pub(crate) fn can_reset(&self) -> bool {
        self.flags & VFIO_DEVICE_FLAGS_RESET != 0
    }

    /// `VFIO_DEVICE_RESET`.
    pub(crate) fn reset(&self) -> io::Result<()> {
        sys::vfio_device_reset(self.fd.as_fd())
    }

    /// The function's MSI-X vectors as VFIO reports them (0 when it has none or VFIO cannot
    /// signal them through eventfds).
    pub(crate) fn msix_vectors(&self) -> u32 {
        use vfio_bindings::bindings::vfio::{VFIO_IRQ_INFO_EVENTFD, VFIO_PCI_MSIX_IRQ_INDEX};
        match sys::vfio_device_get_irq_info(self.fd.as_fd(), VFIO_PCI_MSIX_IRQ_INDEX) {
            Ok(info) if info.flags & VFIO_IRQ_INFO_EVENTFD != 0 => info.count,
            _ => 0,
        }
    }

    /// Is MSI-X enabled on the function (the Enable bit of the MSI-X capability's Message
    /// Control, which vfio-pci passes through from the device)? `Ok(false)` when the
    /// function has no MSI-X capability.
    pub(crate) fn msix_enabled(&self) -> io::Result<bool> {
        const PCI_STATUS: u64 = 0x06;
        const PCI_STATUS_CAP_LIST: u16 = 1 << 4;
        const PCI_CAPABILITY_LIST: u64 = 0x34;
        const PCI_CAP_ID_MSIX: u8 = 0x11;
        const PCI_MSIX_FLAGS_ENABLE: u16 = 1 << 15;
        if self.config_u16(PCI_STATUS)? & PCI_STATUS_CAP_LIST == 0 {
            return Ok(false);
        }
        let mut b = [0u8; 1];
        self.config_read(PCI_CAPABILITY_LIST, &mut b)?;
        let mut at = u64::from(b[0] & !3);
        // At most 48 capabilities fit in the 192 bytes after the header: a longer chain is
        // a loop.
        for _ in 0..48 {
            if at < 0x40 {
                return Ok(false);
            }
            let head = self.config_u16(at)?;
            if head as u8 == PCI_CAP_ID_MSIX {
                return Ok(self.config_u16(at + 2)? & PCI_MSIX_FLAGS_ENABLE != 0);
            }
            at = u64::from((head >> 8) as u8 & !3);
        }
        Ok(false)
    }

    /// Makes MSI-X vectors `start..start + fds.len()` signal `fds` (`None`: nothing); the
    /// first call enables MSI-X on the function with as many vectors as it is given.
    pub(crate) fn set_msix(&self, start: u32, fds: &[Option<BorrowedFd<'_>>]) -> io::Result<()> {
        use vfio_bindings::bindings::vfio::VFIO_PCI_MSIX_IRQ_INDEX;
        sys::vfio_device_set_irq_eventfds(self.fd.as_fd(), VFIO_PCI_MSIX_IRQ_INDEX, start, fds)
    }

    /// Reads config space at `off`.
    pub(crate) fn config_read(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        let n = pread(&self.fd, buf, (self.config.offset + off) as libc::off_t);
        whole_transfer(n, buf.len(), "read", off)
    }

    /// Writes config space at `off`.
    pub(crate) fn config_write(&self, off: u64, buf: &[u8]) -> io::Result<()> {
        let n = pwrite(&self.fd, buf, (self.config.offset + off) as libc::off_t);
        whole_transfer(n, buf.len(), "write", off)
    }

    pub(crate) fn config_u16(&self, off: u64) -> io::Result<u16> {
        let mut b = [0u8; 2];
        self.config_read(off, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    pub(crate) fn config_u32(&self, off: u64) -> io::Result<u32> {
        let mut b = [0u8; 4];
        self.config_read(off, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Sets the command register bits that polled operation needs.
    pub(crate) fn enable_bus_master(&self) -> io::Result<()> {
        let cmd = self.config_u16(PCI_COMMAND)?;
        self.config_write(PCI_COMMAND, &command_for_polling(cmd).to_le_bytes())
    }

    /// Clears bus mastering (the controller can no longer reach memory).
    pub(crate) fn disable_bus_master(&self) -> io::Result<()> {
        let cmd = self.config_u16(PCI_COMMAND)?;
        self.config_write(PCI_COMMAND, &(cmd & !PCI_COMMAND_MASTER).to_le_bytes())
    }

    /// Maps BAR0 (all of it, or the mappable area at its start when VFIO reports a sparse
    /// region), as a register handle.
    pub(crate) fn map_bar0(&self, addr: &PciAddress) -> Result<crate::mmio::Mmio> {
        let r = region_info(self.fd.as_fd(), VFIO_PCI_BAR0_REGION_INDEX)
            .map_err(|e| Error::os(format!("VFIO_DEVICE_GET_REGION_INFO(BAR0) for {addr}"), e))?;
        if r.size < MIN_BAR0 {
            return Err(Error::Transport(format!(
                "BAR0 of {addr} is {} bytes, too small for NVMe registers and doorbells (at least {MIN_BAR0:#x} bytes): \
                 is this really an NVMe controller, and is its BAR assigned (see `lspci -vv -s {addr}`, and dmesg for \"BAR 0: no space\")?",
                r.size
            )));
        }
        if r.flags & VFIO_REGION_INFO_FLAG_MMAP == 0 {
            return Err(Error::Transport(format!(
                "VFIO does not allow mmap of BAR0 of {addr} (region flags {:#x}); the driver needs direct register access",
                r.flags
            )));
        }
        let len = match ioctl::parse_sparse_mmap(&r.raw) {
            None => r.size,
            Some(areas) => areas
                .iter()
                .find(|&&(off, _)| off == 0)
                .map(|&(_, size)| size)
                .filter(|&s| s >= MIN_BAR0)
                .ok_or_else(|| {
                    Error::Transport(format!(
                        "VFIO allows mmap of BAR0 of {addr} only in {areas:x?}, which does not cover the registers and admin doorbells"
                    ))
                })?,
        } as usize;
        let map = crate::memory::Mapping::new(self.fd.as_fd(), r.offset, len, false)
            .map_err(|e| Error::os(format!("mmap of BAR0 of {addr} ({len} bytes)"), e))?;
        crate::mmio::Mmio::new(map).map_err(|len| {
            Error::Transport(format!(
                "the mappable part of BAR0 of {addr} ({len} bytes) is too small"
            ))
        })
    }
}

/// `VFIO_DEVICE_GET_REGION_INFO`, with the capability chain when there is one.
fn region_info(fd: BorrowedFd<'_>, index: u32) -> io::Result<Region> {
    let mut len = 32usize;
    for _ in 0..4 {
        let mut buf = AlignedBuf::new(len);
        let b = buf.bytes();
        b[..4].copy_from_slice(&(len as u32).to_ne_bytes());
        b[8..12].copy_from_slice(&index.to_ne_bytes());
        sys::vfio_device_get_region_info(fd, &mut buf)?;
        let b = buf.bytes();
        let want = ioctl::u32_at(b, 0).unwrap_or(0) as usize;
        if want > len {
            len = want;
            continue;
        }
        return Ok(Region {
            flags: ioctl::u32_at(b, 4).unwrap_or(0),
            size: ioctl::u64_at(b, 16).unwrap_or(0),
            offset: ioctl::u64_at(b, 24).unwrap_or(0),
            raw: b.to_vec(),
        });
    }
    Err(io::Error::other(
        "VFIO_DEVICE_GET_REGION_INFO kept asking for a larger buffer",
    ))
}

/// The result of a config-space `pread`/`pwrite` of `len` bytes: the OS error, a short
/// transfer, or success.
fn whole_transfer(n: nix::Result<usize>, len: usize, what: &str, off: u64) -> io::Result<()> {
    if n? != len {
        return Err(io::Error::other(format!(
            "short config space {what} at {off:#x}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_register_bits() {
        // After FLR the command register is 0; keep SERR and parity bits if set.
        assert_eq!(command_for_polling(0), 0x0406);
        assert_eq!(command_for_polling(0x0140), 0x0546);
        assert_eq!(command_for_polling(0x0406), 0x0406);
    }
}
