//! Admin and NVM command set opcodes.

/// Admin command opcodes (NVMe 1.4 figure 139).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum AdminOpcode {
    /// Delete I/O Submission Queue.
    DeleteIoSq = 0x00,
    /// Create I/O Submission Queue.
    CreateIoSq = 0x01,
    /// Get Log Page.
    GetLogPage = 0x02,
    /// Delete I/O Completion Queue.
    DeleteIoCq = 0x04,
    /// Create I/O Completion Queue.
    CreateIoCq = 0x05,
    /// Identify.
    Identify = 0x06,
    /// Abort.
    Abort = 0x08,
    /// Set Features.
    SetFeatures = 0x09,
    /// Get Features.
    GetFeatures = 0x0a,
    /// Asynchronous Event Request.
    AsyncEventRequest = 0x0c,
    /// Namespace Management.
    NamespaceManagement = 0x0d,
    /// Firmware Commit.
    FirmwareCommit = 0x10,
    /// Firmware Image Download.
    FirmwareImageDownload = 0x11,
    /// Device Self-test.
    DeviceSelfTest = 0x14,
    /// Namespace Attachment.
    NamespaceAttachment = 0x15,
    /// Keep Alive.
    KeepAlive = 0x18,
    /// Doorbell Buffer Config.
    DoorbellBufferConfig = 0x7c,
    /// Format NVM.
    FormatNvm = 0x80,
    /// Sanitize.
    Sanitize = 0x84,
}

impl AdminOpcode {
    /// Decodes an admin opcode; `None` for opcodes not named here.
    pub const fn from_u8(v: u8) -> Option<AdminOpcode> {
        use AdminOpcode::*;
        Some(match v {
            0x00 => DeleteIoSq,
            0x01 => CreateIoSq,
            0x02 => GetLogPage,
            0x04 => DeleteIoCq,
            0x05 => CreateIoCq,
            0x06 => Identify,
            0x08 => Abort,
            0x09 => SetFeatures,
            0x0a => GetFeatures,
            0x0c => AsyncEventRequest,
            0x0d => NamespaceManagement,
            0x10 => FirmwareCommit,
            0x11 => FirmwareImageDownload,
            0x14 => DeviceSelfTest,
            0x15 => NamespaceAttachment,
            0x18 => KeepAlive,
            0x7c => DoorbellBufferConfig,
            0x80 => FormatNvm,
            0x84 => Sanitize,
            _ => return None,
        })
    }
}

/// NVM command set I/O opcodes (NVMe 1.4 figure 346).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum NvmOpcode {
    /// Flush.
    Flush = 0x00,
    /// Write.
    Write = 0x01,
    /// Read.
    Read = 0x02,
    /// Write Uncorrectable.
    WriteUncorrectable = 0x04,
    /// Compare.
    Compare = 0x05,
    /// Write Zeroes.
    WriteZeroes = 0x08,
    /// Dataset Management.
    DatasetManagement = 0x09,
    /// Verify.
    Verify = 0x0c,
}

impl NvmOpcode {
    /// Decodes an NVM opcode; `None` for opcodes not named here.
    pub const fn from_u8(v: u8) -> Option<NvmOpcode> {
        use NvmOpcode::*;
        Some(match v {
            0x00 => Flush,
            0x01 => Write,
            0x02 => Read,
            0x04 => WriteUncorrectable,
            0x05 => Compare,
            0x08 => WriteZeroes,
            0x09 => DatasetManagement,
            0x0c => Verify,
            _ => return None,
        })
    }
}

/// Data transfer direction encoded in an opcode's two low bits.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DataDirection {
    /// No data transfer.
    None,
    /// Host to controller.
    HostToController,
    /// Controller to host.
    ControllerToHost,
    /// Bidirectional.
    Bidirectional,
}

impl DataDirection {
    /// The direction an opcode's bits 1:0 encode.
    pub const fn of_opcode(opcode: u8) -> DataDirection {
        match opcode & 3 {
            0 => DataDirection::None,
            1 => DataDirection::HostToController,
            2 => DataDirection::ControllerToHost,
            _ => DataDirection::Bidirectional,
        }
    }
}

/// Command dword 10 of Format NVM (NVMe 1.4 figure 394): LBA format `lbaf` (bits 3:0),
/// metadata settings `mset` (bit 4: extended LBA), protection information `pi` (bits 7:5),
/// its location `pil` (bit 8: first bytes of metadata) and secure erase settings `ses`
/// (bits 11:9). Each value is masked to its field.
pub const fn format_nvm_cdw10(lbaf: u8, mset: bool, pi: u8, pil: bool, ses: u8) -> u32 {
    (lbaf as u32 & 0xf)
        | (mset as u32) << 4
        | (pi as u32 & 0x7) << 5
        | (pil as u32) << 8
        | (ses as u32 & 0x7) << 9
}

/// The fields of Format NVM command dword 10: (lbaf, mset, pi, pil, ses); the inverse of
/// [`format_nvm_cdw10`].
pub const fn format_nvm_fields(cdw10: u32) -> (u8, bool, u8, bool, u8) {
    (
        (cdw10 & 0xf) as u8,
        cdw10 & (1 << 4) != 0,
        ((cdw10 >> 5) & 0x7) as u8,
        cdw10 & (1 << 8) != 0,
        ((cdw10 >> 9) & 0x7) as u8,
    )
}

/// Select field (dword 10 bits 3:0) of Namespace Management and Namespace Attachment.
pub mod ns_sel {
    /// Namespace Management: create (the data is an Identify Namespace structure).
    pub const CREATE: u32 = 0x0;
    /// Namespace Management: delete.
    pub const DELETE: u32 = 0x1;
    /// Namespace Attachment: attach (the data is a controller list).
    pub const ATTACH: u32 = 0x0;
    /// Namespace Attachment: detach.
    pub const DETACH: u32 = 0x1;
}

/// A controller list (Namespace Attachment data, Identify CNS 12h/13h): the number of
/// entries, then the controller ids, each a little-endian `u16`, in 4096 bytes. At most
/// 2047 ids fit; the rest are dropped.
pub fn controller_list(ids: &[u16]) -> [u8; 4096] {
    let mut b = [0u8; 4096];
    let n = ids.len().min(2047);
    b[..2].copy_from_slice(&(n as u16).to_le_bytes());
    for (i, id) in ids[..n].iter().enumerate() {
        b[2 + 2 * i..4 + 2 * i].copy_from_slice(&id.to_le_bytes());
    }
    b
}

/// The controller ids of a controller list (see [`controller_list`]); a count past the
/// 2047 that fit is clamped.
pub fn controller_list_ids(b: &[u8]) -> impl Iterator<Item = u16> + '_ {
    let n = b
        .get(..2)
        .map_or(0, |c| u16::from_le_bytes([c[0], c[1]]) as usize)
        .min(2047);
    b.get(2..)
        .unwrap_or(&[])
        .chunks_exact(2)
        .take(n)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opcodes_round_trip_and_directions() {
        for v in 0..=255u8 {
            if let Some(op) = AdminOpcode::from_u8(v) {
                assert_eq!(op as u8, v);
            }
            if let Some(op) = NvmOpcode::from_u8(v) {
                assert_eq!(op as u8, v);
            }
        }
        assert_eq!(
            DataDirection::of_opcode(NvmOpcode::Write as u8),
            DataDirection::HostToController
        );
        assert_eq!(
            DataDirection::of_opcode(NvmOpcode::Read as u8),
            DataDirection::ControllerToHost
        );
        assert_eq!(
            DataDirection::of_opcode(NvmOpcode::Compare as u8),
            DataDirection::HostToController
        );
        assert_eq!(
            DataDirection::of_opcode(AdminOpcode::Identify as u8),
            DataDirection::ControllerToHost
        );
        assert_eq!(
            DataDirection::of_opcode(NvmOpcode::Flush as u8),
            DataDirection::None
        );
    }

    #[test]
    fn format_fields_and_controller_lists() {
        let w = format_nvm_cdw10(1, true, 0, true, 1);
        assert_eq!(w, 1 | 1 << 4 | 1 << 8 | 1 << 9);
        assert_eq!(format_nvm_fields(w), (1, true, 0, true, 1));
        assert_eq!(
            format_nvm_fields(format_nvm_cdw10(0x1f, false, 9, false, 2)),
            (0xf, false, 1, false, 2)
        );
        let l = controller_list(&[1, 0x22]);
        assert_eq!(&l[..6], &[2, 0, 1, 0, 0x22, 0]);
        let mut ids = controller_list_ids(&l);
        assert_eq!(
            (ids.next(), ids.next(), ids.next()),
            (Some(1), Some(0x22), None)
        );
        assert_eq!(
            controller_list_ids(&[5, 0, 1]).count(),
            0,
            "a short list ends early"
        );
    }
}
