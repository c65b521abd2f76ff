//! NVMe/TCP, host side (`trtype:TCP`): a controller reached over TCP, behind the same
//! [`Controller`](crate::Controller) and [`IoQueuePair`](crate::IoQueuePair) as PCIe, and
//! the discovery service.
//!
//! - `crc32c`: the header and data digests.
//! - `link`: one connection: ICReq/ICResp, PDU framing with digests and data alignment,
//!   the checks on every PDU received.
//! - `queue`: one command at a time over a connection, its data in the capsule, in
//!   C2HData PDUs or in H2CData PDUs answering R2Ts.
//! - `controller`: [`TcpController`]: Fabrics Connect of the admin queue, Property Get/Set,
//!   the enable sequence, admin commands, Keep Alive at the granted KATO, discovery
//!   ([`discover`]); Fabrics Connect of I/O queues (same host, same controller ID).
//! - `ioq`: [`TcpRings`], nvme-core's `Rings` over one non-blocking connection: the I/O
//!   queue pair is nvme-core's engine (CIDs, slots, splitting, status), as over PCIe; the
//!   rings frame capsules (in-capsule data up to IOCCSZ), answer R2Ts, copy C2HData, and
//!   resolve data pointers in the transport's memory table.
//! - `transport`: [`TcpTransport`] and attaching: a [`Controller`](crate::Controller) whose
//!   admin path is the [`TcpController`] and whose memory "mappings" are that table.
//!
//! Recovery: an I/O queue whose connection fails completes its outstanding requests with
//! an error naming the failure and connects again (a new association first when the old
//! one is gone, as after a target restart), at most once per
//! [`RECONNECT_INTERVAL`](crate::RECONNECT_INTERVAL), a bounded number of times; an
//! admin command finding the association failed makes a new one first. A controller reset
//! ([`Controller::reset`](crate::Controller::reset)) is a new association: the I/O queue
//! pairs complete what they had with `AbortedByReset` and reconnect, as after a PCIe reset.
//! An I/O timeout sends an Abort over the admin queue.
//!
//! Shared-memory groups (`-i`): each member opens its own association (see
//! `groupattach`); a reset of one member is a new association of that member only.
//!
//! Not over TCP (yet): function resets, asynchronous events, interrupts (queues are
//! polled), PRP data pointers.

mod controller;
mod crc32c;
#[cfg(test)]
mod e2e_tests;
mod ioq;
mod link;
mod queue;
#[cfg(any(test, feature = "testkit"))]
pub mod scripted;
#[cfg(test)]
mod tests;
mod transport;

use std::fmt;
use std::io;

pub use controller::{discover, DiscoveryLog, HostIdentity, TcpController, TcpControllerOptions};
pub use crc32c::crc32c;
pub use ioq::TcpRings;
pub use link::{frame, Negotiated, Stream};
pub use queue::Data;
pub use transport::TcpTransport;
pub(crate) use transport::{admin_command, attach, connect, csts, no_reset, reset, shutdown};

/// Which digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DigestKind {
    /// The header digest.
    Header,
    /// The data digest.
    Data,
}

impl fmt::Display for DigestKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DigestKind::Header => "header",
            DigestKind::Data => "data",
        })
    }
}

/// What went wrong talking NVMe/TCP. Every message names the controller's address.
#[derive(Debug)]
#[non_exhaustive]
pub enum TcpError {
    /// Nothing listens at the address (TCP connection refused).
    ConnectionRefused {
        /// The address.
        peer: String,
    },
    /// The TCP connection could not be made (unreachable, timed out, ...).
    Connect {
        /// The address.
        peer: String,
        /// The OS error.
        source: io::Error,
    },
    /// The controller closed the connection.
    Closed {
        /// The address.
        peer: String,
        /// What the host was waiting for.
        waiting_for: &'static str,
    },
    /// The controller closed the connection after the keep-alive timeout passed without a
    /// command: it tore the association down.
    KeepAliveExpired {
        /// The address.
        peer: String,
        /// The granted keep-alive timeout, in milliseconds.
        kato_ms: u32,
        /// How long the admin queue had been idle, in milliseconds.
        idle_ms: u64,
    },
    /// Nothing arrived within the timeout.
    NoResponse {
        /// The address.
        peer: String,
        /// What the host was waiting for.
        waiting_for: &'static str,
    },
    /// The subsystem NQN is not known to the controller (Connect Invalid Parameters
    /// pointing at SUBNQN).
    NoSuchSubsystem {
        /// The address.
        peer: String,
        /// The NQN asked for.
        subnqn: String,
    },
    /// The subsystem does not allow this host (Connect Invalid Host).
    HostNotAllowed {
        /// The address.
        peer: String,
        /// The subsystem.
        subnqn: String,
        /// This host's NQN.
        hostnqn: String,
    },
    /// An I/O queue's Connect found its queue id still connected at the target (Command
    /// Sequence Error), beyond the wait for an earlier connection's teardown.
    QueueInUse {
        /// The address.
        peer: String,
        /// The queue id.
        qid: u16,
    },
    /// Connect failed otherwise (busy, authentication required, another bad parameter).
    ConnectRejected {
        /// The address.
        peer: String,
        /// What the completion said, in words.
        reason: String,
    },
    /// The controller declined a digest the host asked for.
    DigestDeclined {
        /// The address.
        peer: String,
        /// Which digest.
        kind: DigestKind,
    },
    /// A received digest did not match the PDU.
    DigestMismatch {
        /// The address.
        peer: String,
        /// Which digest.
        kind: DigestKind,
        /// The PDU type's name.
        pdu: &'static str,
        /// The CRC32C computed here.
        expected: u32,
        /// The digest received.
        received: u32,
    },
    /// The controller terminated the connection (C2HTermReq).
    Terminated {
        /// The address.
        peer: String,
        /// Fatal error status.
        fes: u16,
        /// Fatal error information.
        fei: u32,
    },
    /// The controller sent something the protocol does not allow.
    Protocol {
        /// The address.
        peer: String,
        /// What was wrong.
        message: String,
    },
    /// An earlier failure left the connection unusable.
    Failed {
        /// The address.
        peer: String,
        /// The first failure's message.
        first: String,
    },
    /// A system call on the connection failed.
    Io {
        /// The address.
        peer: String,
        /// What the driver was doing.
        what: String,
        /// The OS error.
        source: io::Error,
    },
}

impl fmt::Display for TcpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TcpError::ConnectionRefused { peer } => write!(
                f,
                "NVMe/TCP {peer}: connection refused: no target listens there (check traddr/trsvcid, and that the target's port is enabled)"
            ),
            TcpError::Connect { peer, source } => {
                write!(f, "NVMe/TCP {peer}: cannot connect: {source}")
            }
            TcpError::Closed { peer, waiting_for } => write!(
                f,
                "NVMe/TCP {peer}: the controller closed the connection (while the host waited for {waiting_for})"
            ),
            TcpError::KeepAliveExpired { peer, kato_ms, idle_ms } => write!(
                f,
                "NVMe/TCP {peer}: keep-alive expired: the controller closed the association after {idle_ms} ms without a command (keep-alive timeout {kato_ms} ms); connect again"
            ),
            TcpError::NoResponse { peer, waiting_for } => write!(
                f,
                "NVMe/TCP {peer}: no {waiting_for} from the controller within the timeout"
            ),
            TcpError::NoSuchSubsystem { peer, subnqn } => write!(
                f,
                "NVMe/TCP {peer}: no such subsystem '{subnqn}' (Connect Invalid Parameters: SUBNQN); `nvmectl discover` lists the subsystems there"
            ),
            TcpError::HostNotAllowed { peer, subnqn, hostnqn } => write!(
                f,
                "NVMe/TCP {peer}: host '{hostnqn}' is not allowed to connect to '{subnqn}' (Connect Invalid Host): add it to the subsystem's allowed hosts, or pass the allowed one as hostnqn:"
            ),
            TcpError::QueueInUse { peer, qid } => write!(
                f,
                "NVMe/TCP {peer}: I/O queue {qid} is still connected at the target (Connect: Command Sequence Error) after waiting {} ms for an earlier connection of it to close",
                controller::QUEUE_IN_USE_WAIT.as_millis()
            ),
            TcpError::ConnectRejected { peer, reason } => {
                write!(f, "NVMe/TCP {peer}: Connect rejected: {reason}")
            }
            TcpError::DigestDeclined { peer, kind } => write!(
                f,
                "NVMe/TCP {peer}: the controller does not support {kind} digests; connect without {}",
                if *kind == DigestKind::Header { "hdgst:1" } else { "ddgst:1" }
            ),
            TcpError::DigestMismatch { peer, kind, pdu, expected, received } => write!(
                f,
                "NVMe/TCP {peer}: {kind} digest mismatch on a {pdu} PDU (received {received:#010x}, computed {expected:#010x}): the connection is corrupt and was dropped"
            ),
            TcpError::Terminated { peer, fes, fei } => {
                let name = nvme_regs::tcp::FatalErrorStatus::from_u16(*fes)
                    .map_or("reserved status", |s| s.name());
                write!(
                    f,
                    "NVMe/TCP {peer}: the controller terminated the connection: {name} (FES {fes:#x}, FEI {fei:#x})"
                )
            }
            TcpError::Protocol { peer, message } => {
                write!(f, "NVMe/TCP {peer}: protocol error: {message}")
            }
            TcpError::Failed { peer, first } => write!(
                f,
                "NVMe/TCP {peer}: the connection failed earlier and carries no more commands (first failure: {first}); connect again"
            ),
            TcpError::Io { peer, what, source } => write!(f, "NVMe/TCP {peer}: {what}: {source}"),
        }
    }
}

impl std::error::Error for TcpError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TcpError::Connect { source, .. } | TcpError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
