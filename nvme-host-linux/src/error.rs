//! The driver's error type: every failure names the problem and, where there is one, what to
//! do about it. Errors on the I/O path carry only plain data (no allocation per I/O).

use std::fmt;
use std::io;

use nvme_core::shared::AdminSubmitError;
use nvme_core::{InitError, SubmitError};
use nvme_regs::Status;

/// Errors of the driver API.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The transport id string is malformed or names an unknown transport or option.
    BadTransport(String),
    /// The transport could not be opened (device missing, not bound to vfio-pci, no IOMMU,
    /// permission denied, ...). The message says which and what to do.
    Transport(String),
    /// A shared-memory group problem: owned by another user, a different build, full, ...
    Group(String),
    /// A system call failed.
    Os {
        /// What the driver was doing.
        what: String,
        /// The OS error.
        source: io::Error,
    },
    /// The controller did not come up.
    Init(InitError),
    /// A command completed with an error status.
    Nvme {
        /// The command's opcode.
        opcode: u8,
        /// Whether it was an admin command.
        admin: bool,
        /// The status the controller returned.
        status: Status,
    },
    /// The controller reports Controller Fatal Status (CSTS.CFS): it must be reset
    /// (detach and attach again).
    ControllerFatal,
    /// The request was aborted by a controller reset ([`Controller::reset`], a reset after
    /// a fatal status, or after a command timed out and was not given back by an Abort:
    /// see [`TimeoutAction`](crate::TimeoutAction)): it may or may not have been carried
    /// out; retry it. A submission refused this way was not made
    /// (the reset is under way: process completions and retry).
    ///
    /// [`Controller::reset`]: crate::Controller::reset
    AbortedByReset,
    /// The last [`Controller::reset`](crate::Controller::reset) did not bring the controller
    /// back: commands fail at once until a reset succeeds.
    NeedsReset,
    /// The controller is gone: its registers read as all ones (the device was removed) or
    /// the software controller's process died. Every later command fails at once.
    ControllerGone,
    /// A command was refused before submission.
    Submit(SubmitError),
    /// The group's admin lock stayed held past the admin timeout: another process of the
    /// group holds it and is stopped or stuck (a dead holder is recovered from instead).
    AdminLockTimeout,
    /// A command did not complete in time.
    Timeout {
        /// The command's opcode.
        opcode: u8,
        /// Whether it was an admin command.
        admin: bool,
        /// How long the driver waited, in milliseconds.
        waited_ms: u64,
    },
    /// [`IoQueuePair::drain`](crate::IoQueuePair::drain) gave up: requests were still
    /// outstanding when its time ran out (they stay outstanding).
    DrainTimeout {
        /// Requests outstanding.
        outstanding: usize,
        /// How long the drain waited, in milliseconds.
        waited_ms: u64,
    },
    /// A command did not complete in time and the driver aborted it (Abort command; see
    /// [`TimeoutAction::Abort`](crate::TimeoutAction::Abort)): the controller completed
    /// it with Command Abort Requested instead of carrying it out to the end. Nothing of it
    /// is outstanding any more. It is safe to retry; a write aborted this way may have
    /// written some of its blocks.
    TimeoutAborted {
        /// The command's opcode.
        opcode: u8,
        /// Whether it was an admin command.
        admin: bool,
        /// How long the driver waited before aborting it, in milliseconds.
        waited_ms: u64,
    },
    /// The namespace does not exist (or is not active) on this controller.
    NoSuchNamespace(u32),
    /// The LBA range is beyond the namespace.
    LbaOutOfRange {
        /// Namespace.
        nsid: u32,
        /// First LBA requested.
        lba: u64,
        /// Blocks requested.
        blocks: u64,
        /// Namespace size in blocks.
        capacity: u64,
    },
    /// The buffer length is not a positive multiple of the namespace's block size.
    BadLength {
        /// Buffer length in bytes.
        len: usize,
        /// Block size in bytes.
        block_size: u32,
    },
    /// A buffer range is outside its DMA buffer.
    OutOfBounds {
        /// Requested start.
        offset: usize,
        /// Requested length.
        len: usize,
        /// Buffer length.
        buffer: usize,
    },
    /// Every I/O queue the controller granted is in use.
    NoQueuesLeft {
        /// Queues the controller granted.
        granted: u16,
    },
    /// A synchronous call was made on a queue pair with I/O outstanding.
    Busy {
        /// I/Os outstanding.
        outstanding: usize,
    },
    /// Invalid argument.
    Invalid(String),
    /// A lease claim ([`Controller::lease`](crate::Controller::lease)) overlaps a lease
    /// another process of the group holds in a way their modes forbid; says who holds it.
    LeaseConflict(Box<crate::LeaseConflict>),
    /// A write outside the LBA ranges this process holds leases on, on a namespace whose
    /// writes it checks (see [`Lease`](crate::Lease)); nothing was submitted.
    OutsideLease {
        /// Namespace.
        nsid: u32,
        /// First LBA of the write.
        lba: u64,
        /// Blocks written.
        blocks: u64,
    },
    /// NVMe/TCP: the connection, the Connect, a digest or the keep-alive failed; the
    /// message names the address and what failed.
    Tcp(crate::tcp::TcpError),
}

impl From<crate::tcp::TcpError> for Error {
    fn from(e: crate::tcp::TcpError) -> Error {
        Error::Tcp(e)
    }
}

/// A `Result` with the driver's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn opcode_name(opcode: u8, admin: bool) -> &'static str {
    use nvme_regs::opcode::{AdminOpcode as A, NvmOpcode as N};
    if admin {
        match A::from_u8(opcode) {
            Some(A::Identify) => "Identify",
            Some(A::GetLogPage) => "Get Log Page",
            Some(A::GetFeatures) => "Get Features",
            Some(A::SetFeatures) => "Set Features",
            Some(A::CreateIoCq) => "Create I/O CQ",
            Some(A::CreateIoSq) => "Create I/O SQ",
            Some(A::DeleteIoCq) => "Delete I/O CQ",
            Some(A::DeleteIoSq) => "Delete I/O SQ",
            Some(A::Abort) => "Abort",
            Some(A::AsyncEventRequest) => "Asynchronous Event Request",
            Some(A::FormatNvm) => "Format NVM",
            Some(A::DeviceSelfTest) => "Device Self-test",
            Some(A::NamespaceManagement) => "Namespace Management",
            Some(A::NamespaceAttachment) => "Namespace Attachment",
            _ => "admin command",
        }
    } else {
        match N::from_u8(opcode) {
            Some(N::Read) => "Read",
            Some(N::Write) => "Write",
            Some(N::Flush) => "Flush",
            Some(N::Compare) => "Compare",
            Some(N::WriteZeroes) => "Write Zeroes",
            Some(N::DatasetManagement) => "Dataset Management",
            _ => "I/O command",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadTransport(m) | Error::Transport(m) | Error::Invalid(m) | Error::Group(m) => write!(f, "{m}"),
            Error::Os { what, source } => write!(f, "{what}: {source}"),
            Error::Init(e) => write!(f, "controller bring-up failed: {e}"),
            Error::Nvme { opcode, admin, status } => {
                write!(f, "{} (opcode {opcode:#04x}) failed: {status}", opcode_name(*opcode, *admin))
            }
            Error::NeedsReset => write!(
                f,
                "the controller did not come back from its last reset: reset it again (Controller::reset, nvmectl reset) or detach"
            ),
            Error::AbortedByReset => write!(
                f,
                "aborted by a controller reset: the command may or may not have been carried out; retry it"
            ),
            Error::ControllerGone => write!(
                f,
                "the controller is gone (its device was removed, or the software controller's process died): detach, and attach again once it is back"
            ),
            Error::ControllerFatal => write!(
                f,
                "controller fatal status (CSTS.CFS=1): the controller stopped processing commands; reset it (Controller::reset, nvmectl reset) or detach and attach again"
            ),
            Error::Submit(e) => write!(f, "{e}"),
            Error::AdminLockTimeout => write!(f, "{}", AdminSubmitError::LockTimeout),
            Error::Timeout { opcode, admin, waited_ms } => write!(
                f,
                "{} (opcode {opcode:#04x}) did not complete within {waited_ms} ms",
                opcode_name(*opcode, *admin)
            ),
            Error::DrainTimeout { outstanding, waited_ms } => write!(
                f,
                "{outstanding} I/O request(s) still outstanding after {waited_ms} ms of waiting for completions"
            ),
            Error::TimeoutAborted { opcode, admin, waited_ms } => write!(
                f,
                "{} (opcode {opcode:#04x}) did not complete within {waited_ms} ms and was aborted (Command Abort Requested): it did not run to the end; retry it",
                opcode_name(*opcode, *admin)
            ),
            Error::NoSuchNamespace(n) => write!(f, "namespace {n} is not an active namespace of this controller"),
            Error::LbaOutOfRange { nsid, lba, blocks, capacity } => write!(
                f,
                "LBA range {lba}..{} is out of range for namespace {nsid} ({capacity} blocks)",
                lba.saturating_add(*blocks)
            ),
            Error::BadLength { len, block_size } => {
                write!(f, "buffer length {len} is not a positive multiple of the {block_size}-byte block size")
            }
            Error::OutOfBounds { offset, len, buffer } => {
                write!(f, "range {offset}..{} is outside the {buffer}-byte DMA buffer", offset.saturating_add(*len))
            }
            Error::NoQueuesLeft { granted } => write!(
                f,
                "all {granted} I/O queues the controller granted are in use; free a queue pair first"
            ),
            Error::LeaseConflict(c) => write!(f, "{c}"),
            Error::Tcp(e) => write!(f, "{e}"),
            Error::OutsideLease { nsid, lba, blocks } => write!(
                f,
                "write to LBAs {lba}..{} of namespace {nsid} refused: this process checks its writes against its LBA range leases there and holds none covering these blocks; claim a lease on them first (Controller::lease, nvme-perf --lease)",
                lba.saturating_add(*blocks)
            ),
            Error::Busy { outstanding } => {
                write!(f, "synchronous call on a queue pair with {outstanding} I/Os outstanding; complete them first")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Os { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<InitError> for Error {
    fn from(e: InitError) -> Self {
        Error::Init(e)
    }
}

impl From<AdminSubmitError> for Error {
    fn from(e: AdminSubmitError) -> Self {
        match e {
            AdminSubmitError::Submit(e) => Error::Submit(e),
            AdminSubmitError::LockTimeout => Error::AdminLockTimeout,
            AdminSubmitError::Resetting => Error::AbortedByReset,
            AdminSubmitError::NeedsReset => Error::NeedsReset,
            AdminSubmitError::Corrupt(e) => Error::Group(format!(
                "the group's shared admin queue state is not valid ({e}): a process of the group wrote over it; detach every process of the group so that it is created anew"
            )),
        }
    }
}

impl From<SubmitError> for Error {
    fn from(e: SubmitError) -> Self {
        Error::Submit(e)
    }
}

impl Error {
    /// The NVMe status, when the controller reported one.
    pub fn status(&self) -> Option<Status> {
        match self {
            Error::Nvme { status, .. } => Some(*status),
            Error::Init(InitError::Command { status, .. }) => Some(*status),
            _ => None,
        }
    }
    pub(crate) fn os(what: impl Into<String>, source: io::Error) -> Error {
        Error::Os {
            what: what.into(),
            source,
        }
    }
}
