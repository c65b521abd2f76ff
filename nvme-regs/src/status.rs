//! The status field of a completion entry: status code type, status code, and their names.

use core::fmt;

/// Status Code Type (SCT).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum StatusCodeType {
    /// Generic command status (0).
    Generic,
    /// Command specific status (1).
    CommandSpecific,
    /// Media and data integrity errors (2).
    MediaError,
    /// Path related status (3).
    PathRelated,
    /// Vendor specific (7).
    VendorSpecific,
    /// A reserved type (4-6).
    Reserved(u8),
}

impl StatusCodeType {
    /// Decodes the 3-bit SCT value.
    pub const fn from_bits(v: u8) -> StatusCodeType {
        match v & 7 {
            0 => StatusCodeType::Generic,
            1 => StatusCodeType::CommandSpecific,
            2 => StatusCodeType::MediaError,
            3 => StatusCodeType::PathRelated,
            7 => StatusCodeType::VendorSpecific,
            r => StatusCodeType::Reserved(r),
        }
    }
    /// The 3-bit SCT value.
    pub const fn bits(self) -> u8 {
        match self {
            StatusCodeType::Generic => 0,
            StatusCodeType::CommandSpecific => 1,
            StatusCodeType::MediaError => 2,
            StatusCodeType::PathRelated => 3,
            StatusCodeType::VendorSpecific => 7,
            StatusCodeType::Reserved(r) => r & 7,
        }
    }
}

macro_rules! status_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $n:expr, $s:expr;)* }) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, Debug)]
        #[repr(u8)]
        pub enum $name {
            $($(#[$vm])* $v = $n,)*
        }
        impl $name {
            /// Decodes a status code of this type; `None` for codes without a name here.
            pub const fn from_code(sc: u8) -> Option<$name> {
                match sc {
                    $($n => Some($name::$v),)*
                    _ => None,
                }
            }
            /// The specification's name of this status.
            pub const fn name(self) -> &'static str {
                match self {
                    $($name::$v => $s,)*
                }
            }
        }
    };
}

status_enum! {
    /// Generic command status codes (SCT 0), including the NVM command set's 0x80-0x84.
    GenericStatus {
        /// Successful completion.
        Success = 0x00, "Successful Completion";
        /// Invalid command opcode.
        InvalidOpcode = 0x01, "Invalid Command Opcode";
        /// Invalid field in command.
        InvalidField = 0x02, "Invalid Field in Command";
        /// Command ID conflict.
        CommandIdConflict = 0x03, "Command ID Conflict";
        /// Data transfer error.
        DataTransferError = 0x04, "Data Transfer Error";
        /// Aborted due to power loss notification.
        AbortedPowerLoss = 0x05, "Commands Aborted due to Power Loss Notification";
        /// Internal error.
        InternalError = 0x06, "Internal Error";
        /// Abort requested.
        AbortRequested = 0x07, "Command Abort Requested";
        /// Aborted due to SQ deletion.
        AbortedSqDeletion = 0x08, "Command Aborted due to SQ Deletion";
        /// Aborted due to failed fused command.
        AbortedFailedFused = 0x09, "Command Aborted due to Failed Fused Command";
        /// Aborted due to missing fused command.
        AbortedMissingFused = 0x0a, "Command Aborted due to Missing Fused Command";
        /// Invalid namespace or format.
        InvalidNamespaceOrFormat = 0x0b, "Invalid Namespace or Format";
        /// Command sequence error.
        CommandSequenceError = 0x0c, "Command Sequence Error";
        /// Invalid SGL segment descriptor.
        InvalidSglSegmentDescriptor = 0x0d, "Invalid SGL Segment Descriptor";
        /// Invalid number of SGL descriptors.
        InvalidSglCount = 0x0e, "Invalid Number of SGL Descriptors";
        /// Data SGL length invalid.
        DataSglLengthInvalid = 0x0f, "Data SGL Length Invalid";
        /// Metadata SGL length invalid.
        MetadataSglLengthInvalid = 0x10, "Metadata SGL Length Invalid";
        /// SGL descriptor type invalid.
        SglDescriptorTypeInvalid = 0x11, "SGL Descriptor Type Invalid";
        /// Invalid use of controller memory buffer.
        InvalidCmbUse = 0x12, "Invalid Use of Controller Memory Buffer";
        /// PRP offset invalid.
        PrpOffsetInvalid = 0x13, "PRP Offset Invalid";
        /// Atomic write unit exceeded.
        AtomicWriteUnitExceeded = 0x14, "Atomic Write Unit Exceeded";
        /// Operation denied.
        OperationDenied = 0x15, "Operation Denied";
        /// SGL offset invalid.
        SglOffsetInvalid = 0x16, "SGL Offset Invalid";
        /// Host identifier inconsistent format.
        HostIdInconsistentFormat = 0x18, "Host Identifier Inconsistent Format";
        /// Keep alive timer expired.
        KeepAliveExpired = 0x19, "Keep Alive Timer Expired";
        /// Keep alive timeout invalid.
        KeepAliveInvalid = 0x1a, "Keep Alive Timeout Invalid";
        /// Aborted due to preempt and abort.
        AbortedPreempt = 0x1b, "Command Aborted due to Preempt and Abort";
        /// Sanitize failed.
        SanitizeFailed = 0x1c, "Sanitize Failed";
        /// Sanitize in progress.
        SanitizeInProgress = 0x1d, "Sanitize In Progress";
        /// SGL data block granularity invalid.
        SglGranularityInvalid = 0x1e, "SGL Data Block Granularity Invalid";
        /// Command not supported for queue in CMB.
        NotSupportedForCmbQueue = 0x1f, "Command Not Supported for Queue in CMB";
        /// Namespace is write protected.
        NamespaceWriteProtected = 0x20, "Namespace is Write Protected";
        /// Command interrupted.
        CommandInterrupted = 0x21, "Command Interrupted";
        /// Transient transport error.
        TransientTransportError = 0x22, "Transient Transport Error";
        /// LBA out of range.
        LbaOutOfRange = 0x80, "LBA Out of Range";
        /// Capacity exceeded.
        CapacityExceeded = 0x81, "Capacity Exceeded";
        /// Namespace not ready.
        NamespaceNotReady = 0x82, "Namespace Not Ready";
        /// Reservation conflict.
        ReservationConflict = 0x83, "Reservation Conflict";
        /// Format in progress.
        FormatInProgress = 0x84, "Format In Progress";
    }
}

status_enum! {
    /// Command specific status codes (SCT 1).
    CommandSpecificStatus {
        /// Completion queue invalid.
        CompletionQueueInvalid = 0x00, "Completion Queue Invalid";
        /// Invalid queue identifier.
        InvalidQueueId = 0x01, "Invalid Queue Identifier";
        /// Invalid queue size.
        InvalidQueueSize = 0x02, "Invalid Queue Size";
        /// Abort command limit exceeded.
        AbortLimitExceeded = 0x03, "Abort Command Limit Exceeded";
        /// Asynchronous event request limit exceeded.
        AerLimitExceeded = 0x05, "Asynchronous Event Request Limit Exceeded";
        /// Invalid firmware slot.
        InvalidFirmwareSlot = 0x06, "Invalid Firmware Slot";
        /// Invalid firmware image.
        InvalidFirmwareImage = 0x07, "Invalid Firmware Image";
        /// Invalid interrupt vector.
        InvalidInterruptVector = 0x08, "Invalid Interrupt Vector";
        /// Invalid log page.
        InvalidLogPage = 0x09, "Invalid Log Page";
        /// Invalid format.
        InvalidFormat = 0x0a, "Invalid Format";
        /// Firmware activation requires conventional reset.
        FirmwareNeedsReset = 0x0b, "Firmware Activation Requires Conventional Reset";
        /// Invalid queue deletion.
        InvalidQueueDeletion = 0x0c, "Invalid Queue Deletion";
        /// Feature identifier not saveable.
        FeatureNotSaveable = 0x0d, "Feature Identifier Not Saveable";
        /// Feature not changeable.
        FeatureNotChangeable = 0x0e, "Feature Not Changeable";
        /// Feature not namespace specific.
        FeatureNotNamespaceSpecific = 0x0f, "Feature Not Namespace Specific";
        /// Namespace insufficient capacity (Namespace Management).
        NamespaceInsufficientCapacity = 0x15, "Namespace Insufficient Capacity";
        /// Namespace identifier unavailable (Namespace Management).
        NamespaceIdUnavailable = 0x16, "Namespace Identifier Unavailable";
        /// Namespace already attached (Namespace Attachment).
        NamespaceAlreadyAttached = 0x18, "Namespace Already Attached";
        /// Namespace is private (Namespace Attachment).
        NamespaceIsPrivate = 0x19, "Namespace Is Private";
        /// Namespace not attached (Namespace Attachment).
        NamespaceNotAttached = 0x1a, "Namespace Not Attached";
        /// Controller list invalid (Namespace Attachment).
        ControllerListInvalid = 0x1c, "Controller List Invalid";
        /// Device self-test in progress (Device Self-test).
        SelfTestInProgress = 0x1d, "Device Self-test in Progress";
        /// Conflicting attributes (NVM command set).
        ConflictingAttributes = 0x80, "Conflicting Attributes";
        /// Invalid protection information (NVM command set).
        InvalidProtectionInfo = 0x81, "Invalid Protection Information";
        /// Attempted write to read only range (NVM command set).
        WriteToReadOnlyRange = 0x82, "Attempted Write to Read Only Range";
    }
}

status_enum! {
    /// Media and data integrity errors (SCT 2).
    MediaErrorStatus {
        /// Write fault.
        WriteFault = 0x80, "Write Fault";
        /// Unrecovered read error.
        UnrecoveredReadError = 0x81, "Unrecovered Read Error";
        /// End-to-end guard check error.
        GuardCheckError = 0x82, "End-to-end Guard Check Error";
        /// End-to-end application tag check error.
        ApplicationTagCheckError = 0x83, "End-to-end Application Tag Check Error";
        /// End-to-end reference tag check error.
        ReferenceTagCheckError = 0x84, "End-to-end Reference Tag Check Error";
        /// Compare failure.
        CompareFailure = 0x85, "Compare Failure";
        /// Access denied.
        AccessDenied = 0x86, "Access Denied";
        /// Deallocated or unwritten logical block.
        DeallocatedOrUnwritten = 0x87, "Deallocated or Unwritten Logical Block";
    }
}

/// The status field of a completion (phase tag removed): SC, SCT, CRD, More and DNR.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Status(pub u16);

impl Status {
    /// Successful completion.
    pub const SUCCESS: Status = Status(0);

    /// Decodes the 16-bit word holding the phase tag (bit 0) and the status field.
    pub const fn from_completion_word(word: u16) -> Status {
        Status(word >> 1)
    }
    /// Builds a status from a type and a code (no CRD, More or DNR).
    pub const fn new(sct: StatusCodeType, sc: u8) -> Status {
        Status(sc as u16 | (sct.bits() as u16) << 8)
    }
    /// A generic status.
    pub const fn generic(sc: GenericStatus) -> Status {
        Status::new(StatusCodeType::Generic, sc as u8)
    }
    /// A command specific status.
    pub const fn command_specific(sc: CommandSpecificStatus) -> Status {
        Status::new(StatusCodeType::CommandSpecific, sc as u8)
    }
    /// A media error status.
    pub const fn media(sc: MediaErrorStatus) -> Status {
        Status::new(StatusCodeType::MediaError, sc as u8)
    }
    /// Returns this status with Do Not Retry set.
    pub const fn with_dnr(self) -> Status {
        Status(self.0 | 1 << 14)
    }
    /// The status field shifted into a completion's status word with the given phase.
    pub const fn to_completion_word(self, phase: bool) -> u16 {
        (self.0 << 1) | phase as u16
    }
    /// Status Code (SC).
    pub const fn sc(self) -> u8 {
        self.0 as u8
    }
    /// Status Code Type (SCT).
    pub const fn sct(self) -> StatusCodeType {
        StatusCodeType::from_bits((self.0 >> 8) as u8)
    }
    /// Command Retry Delay (CRD).
    pub const fn crd(self) -> u8 {
        ((self.0 >> 11) & 0x3) as u8
    }
    /// More: further information in the error log page.
    pub const fn more(self) -> bool {
        self.0 & (1 << 13) != 0
    }
    /// Do Not Retry (DNR).
    pub const fn dnr(self) -> bool {
        self.0 & (1 << 14) != 0
    }
    /// Is this a successful completion (SCT 0, SC 0)?
    pub const fn is_success(self) -> bool {
        self.0 & 0x7ff == 0
    }
    /// Status code type and code without CRD/More/DNR, for comparisons.
    pub const fn code(self) -> (StatusCodeType, u8) {
        (self.sct(), self.sc())
    }
    /// Is this the given generic status?
    pub const fn is_generic(self, sc: GenericStatus) -> bool {
        self.0 & 0x7ff == sc as u16
    }
    /// Is this the given command specific status?
    pub const fn is_command_specific(self, sc: CommandSpecificStatus) -> bool {
        self.0 & 0x7ff == (1 << 8) | sc as u16
    }
    /// Is this the given media error status?
    pub const fn is_media(self, sc: MediaErrorStatus) -> bool {
        self.0 & 0x7ff == (2 << 8) | sc as u16
    }
    /// The specification's name for this status, if it has one here.
    pub const fn name(self) -> Option<&'static str> {
        match self.sct() {
            StatusCodeType::Generic => match GenericStatus::from_code(self.sc()) {
                Some(s) => Some(s.name()),
                None => None,
            },
            StatusCodeType::CommandSpecific => match CommandSpecificStatus::from_code(self.sc()) {
                Some(s) => Some(s.name()),
                None => None,
            },
            StatusCodeType::MediaError => match MediaErrorStatus::from_code(self.sc()) {
                Some(s) => Some(s.name()),
                None => None,
            },
            _ => None,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n}")?,
            None => write!(f, "status")?,
        }
        write!(f, " (sct 0x{:x}, sc 0x{:02x}", self.sct().bits(), self.sc())?;
        if self.dnr() {
            write!(f, ", dnr")?;
        }
        if self.more() {
            write!(f, ", more")?;
        }
        write!(f, ")")
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_every_field() {
        // sc 0x85, sct 2, crd 1, more, dnr, phase 1
        let word: u16 = 1 | (0x85 << 1) | (2 << 9) | (1 << 12) | (1 << 14) | (1 << 15);
        let s = Status::from_completion_word(word);
        assert_eq!(s.sc(), 0x85);
        assert_eq!(s.sct(), StatusCodeType::MediaError);
        assert_eq!(s.crd(), 1);
        assert!(s.more());
        assert!(s.dnr());
        assert!(!s.is_success());
        assert!(s.is_media(MediaErrorStatus::CompareFailure));
        assert_eq!(s.name(), Some("Compare Failure"));
        assert_eq!(s.to_completion_word(true), word);
    }

    #[test]
    fn names_and_display() {
        let s = Status::command_specific(CommandSpecificStatus::InvalidQueueId).with_dnr();
        assert_eq!(s.sct(), StatusCodeType::CommandSpecific);
        assert_eq!(
            std::format!("{s}"),
            "Invalid Queue Identifier (sct 0x1, sc 0x01, dnr)"
        );
        assert!(
            Status::generic(GenericStatus::LbaOutOfRange).is_generic(GenericStatus::LbaOutOfRange)
        );
        assert_eq!(
            Status::new(StatusCodeType::VendorSpecific, 0xc0).name(),
            None
        );
        assert!(Status::SUCCESS.is_success());
        assert!(Status::SUCCESS.with_dnr().is_success());
        for sc in 0..=255u8 {
            if let Some(g) = GenericStatus::from_code(sc) {
                assert_eq!(g as u8, sc);
            }
        }
    }
}
