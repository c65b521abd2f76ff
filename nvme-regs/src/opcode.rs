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
}
