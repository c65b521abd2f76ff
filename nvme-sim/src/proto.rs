//! The wire protocol between [`crate::SimClient`] and a controller process started by
//! [`crate::spawn_daemon`], and the Unix socket primitives both sides use.
//!
//! Messages are fixed-size little-endian structures over a `SOCK_SEQPACKET` Unix socket
//! (message boundaries are kept by the kernel, so a short or long message is detected, not
//! mis-framed). A client sends one [`Request`] and waits for its [`Reply`]; requests on one
//! connection are strictly sequential and carry a sequence number the reply repeats.
//! Every message starts with a magic and the protocol version; every reply carries a status
//! code and, for errors, the error's fields and text. File descriptors travel as
//! `SCM_RIGHTS` ancillary data: the DMA memory of `DmaMap` requests, the BAR of the `Hello`
//! reply and the namespace memfd of `NamespaceFd` replies; each message type carries an
//! exact number of them and anything else is refused (extra descriptors are closed).
//!
//! The same [`Reply`] structure reports the daemon's start-up (or its failure) to
//! [`crate::spawn_daemon`] through a pipe.
//!
//! The socket calls are `nix`'s safe wrappers; taking ownership of received descriptors is
//! [`crate::sys::recv_with_fds`].

use std::io::{self, IoSlice};
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    self, sockopt, AddressFamily, Backlog, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr,
};
use nix::sys::time::TimeVal;
use nvme_regs::Status;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::{
    AsyncEventType, CommandMatch, FaultAction, FaultCounters, FaultRule, QueueMatch, Repeat,
    SimError,
};

/// "NVSD": first word of every message.
pub(crate) const MAGIC: u32 = u32::from_le_bytes(*b"NVSD");
/// Protocol version; a peer speaking another version is refused with a message saying so.
pub(crate) const VERSION: u16 = 2;
/// Bytes of a [`Request`].
pub(crate) const REQUEST_LEN: usize = 64;
/// Bytes of a [`Reply`].
pub(crate) const REPLY_LEN: usize = 416;
/// Bytes of text a [`Reply`] carries (error messages, the fatal reason).
pub(crate) const TEXT_LEN: usize = 200;
/// At most this many descriptors are accepted from one message; more are closed by the
/// kernel (`MSG_CTRUNC`) and the message is refused.
const MAX_RECV_FDS: usize = 8;

/// Request and reply types.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u16)]
pub(crate) enum Op {
    /// First request of a connection. Reply: BAR fd; vals: bar_len, pid, namespaces,
    /// client id, uid, interrupt vectors.
    Hello = 1,
    /// args: iova, file offset, len; one fd.
    DmaMap = 2,
    /// args: iova, len.
    DmaUnmap = 3,
    /// args: nsid. Reply: the namespace memfd; vals: lba_size, blocks.
    NamespaceFd = 4,
    /// args: an encoded [`crate::FaultRule`]. vals: fault id.
    Inject = 5,
    /// args: fault id. vals: removed (0/1).
    RemoveFault = 6,
    /// args: fault id. vals: fired, active (0/1).
    FaultFired = 7,
    /// Remove every fault rule, clear never-ready.
    ClearFaults = 8,
    /// Raise CSTS.CFS.
    RaiseCfs = 9,
    /// args: on (0/1).
    SetNeverReady = 10,
    /// args: event type, info, log page.
    RaiseAsyncEvent = 11,
    /// vals: the [`crate::SimStats`] words.
    Stats = 12,
    /// vals: the [`crate::FaultCounters`] words.
    FaultCounters = 13,
    /// vals: has a reason (0/1); text: the reason.
    FatalReason = 14,
    /// vals: the [`crate::DaemonStatus`] words.
    Status = 15,
    /// The daemon replies, removes its socket and exits.
    Shutdown = 16,
    /// vals: DMA errors so far; text: the latest one, if any.
    DmaErrors = 17,
    /// args: interrupt vector; one fd (an eventfd the controller signals).
    SetInterrupt = 18,
    /// args: interrupt vector. The vector signals nothing from now on.
    ClearInterrupt = 19,
    /// Start-up pipe only: the daemon's pid (vals[0]), sent before building the controller.
    Forked = 100,
    /// Start-up pipe only: the controller runs and the daemon serves the socket.
    Started = 101,
}

impl Op {
    pub(crate) fn from_u16(v: u16) -> Option<Op> {
        use Op::*;
        Some(match v {
            1 => Hello,
            2 => DmaMap,
            3 => DmaUnmap,
            4 => NamespaceFd,
            5 => Inject,
            6 => RemoveFault,
            7 => FaultFired,
            8 => ClearFaults,
            9 => RaiseCfs,
            10 => SetNeverReady,
            11 => RaiseAsyncEvent,
            12 => Stats,
            13 => FaultCounters,
            14 => FatalReason,
            15 => Status,
            16 => Shutdown,
            17 => DmaErrors,
            18 => SetInterrupt,
            19 => ClearInterrupt,
            100 => Forked,
            101 => Started,
            _ => return None,
        })
    }

    /// Descriptors a request of this type carries.
    pub(crate) fn request_fds(self) -> usize {
        usize::from(matches!(self, Op::DmaMap | Op::SetInterrupt))
    }

    /// Descriptors a successful reply of this type carries.
    pub(crate) fn reply_fds(self) -> usize {
        usize::from(matches!(self, Op::Hello | Op::NamespaceFd))
    }

    /// Arguments a request of this type uses (the others must be zero).
    fn arg_count(self) -> usize {
        match self {
            Op::DmaMap | Op::RaiseAsyncEvent => 3,
            Op::DmaUnmap => 2,
            Op::NamespaceFd
            | Op::RemoveFault
            | Op::FaultFired
            | Op::SetNeverReady
            | Op::SetInterrupt
            | Op::ClearInterrupt => 1,
            Op::Inject => 6,
            _ => 0,
        }
    }

    /// Is this a request a client may send (not a start-up pipe message)?
    fn is_request(self) -> bool {
        (self as u16) < 100
    }
}

/// A request (64 bytes).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub(crate) struct Request {
    pub(crate) magic: u32,
    pub(crate) version: u16,
    pub(crate) op: u16,
    pub(crate) seq: u32,
    pub(crate) reserved: u32,
    pub(crate) args: [u64; 6],
}

const _: () = assert!(size_of::<Request>() == REQUEST_LEN);

impl Request {
    pub(crate) fn new(op: Op, seq: u32, args: [u64; 6]) -> Request {
        Request {
            magic: MAGIC,
            version: VERSION,
            op: op as u16,
            seq,
            reserved: 0,
            args,
        }
    }

    /// Validates a received request: size, magic, version, type, reserved bits and the
    /// number of descriptors that came with it.
    pub(crate) fn parse(msg: &Received, buf: &[u8]) -> Result<(Op, Request), SimError> {
        if msg.truncated || msg.len != REQUEST_LEN {
            return Err(SimError::Protocol(format!(
                "request of {}{} bytes{} (requests are {REQUEST_LEN} bytes)",
                if msg.truncated { "more than " } else { "" },
                msg.len,
                if msg.fds_truncated {
                    " with too many file descriptors"
                } else {
                    ""
                },
            )));
        }
        let req = Request::read_from_bytes(&buf[..REQUEST_LEN])
            .map_err(|_| SimError::Protocol("request buffer size".into()))?;
        if req.magic != MAGIC {
            return Err(SimError::Protocol(format!(
                "bad magic {:#010x} (not an nvme-sim client)",
                req.magic
            )));
        }
        if req.version != VERSION {
            return Err(SimError::Protocol(format!(
                "the client speaks protocol version {}, this software controller process \
                 speaks version {VERSION} (mismatched builds of nvme-sim)",
                req.version
            )));
        }
        let op = Op::from_u16(req.op)
            .filter(|op| op.is_request())
            .ok_or_else(|| SimError::Protocol(format!("unknown request type {}", req.op)))?;
        if req.reserved != 0 {
            return Err(SimError::Protocol(format!(
                "{op:?} request with reserved field {:#x}",
                req.reserved
            )));
        }
        if let Some(i) = (op.arg_count()..6).find(|&i| req.args[i] != 0) {
            return Err(SimError::Protocol(format!(
                "{op:?} request with unused argument {i} set to {:#x}",
                req.args[i]
            )));
        }
        if msg.fds_truncated || msg.fds.len() != op.request_fds() {
            return Err(SimError::Protocol(format!(
                "{op:?} request with {}{} file descriptors (expected {})",
                msg.fds.len(),
                if msg.fds_truncated { " or more" } else { "" },
                op.request_fds()
            )));
        }
        Ok((op, req))
    }
}

/// Reply status codes.
mod code {
    pub(super) const OK: u32 = 0;
    pub(super) const INVALID_ARGUMENT: u32 = 1;
    pub(super) const INVALID_CONFIG: u32 = 2;
    pub(super) const FAILED: u32 = 3;
    pub(super) const DMA_OVERLAP: u32 = 4;
    pub(super) const DMA_NOT_MAPPED: u32 = 5;
    pub(super) const DMA_PARTIAL_UNMAP: u32 = 6;
    pub(super) const NO_SUCH_NAMESPACE: u32 = 7;
    pub(super) const OUT_OF_RANGE: u32 = 8;
    pub(super) const PROTOCOL: u32 = 9;
    pub(super) const PEER_CREDENTIALS: u32 = 10;
}

/// A reply (416 bytes): status code, up to 24 values, up to 200 bytes of text.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub(crate) struct Reply {
    pub(crate) magic: u32,
    pub(crate) version: u16,
    pub(crate) op: u16,
    pub(crate) seq: u32,
    pub(crate) code: u32,
    pub(crate) vals: [u64; 24],
    pub(crate) text_len: u32,
    pub(crate) reserved: u32,
    pub(crate) text: [u8; TEXT_LEN],
}

const _: () = assert!(size_of::<Reply>() == REPLY_LEN);
// Every counter fits in one reply.
const _: () = assert!(crate::SimStats::WORDS <= 24);

impl Reply {
    /// A success reply to request `op` number `seq`.
    pub(crate) fn ok(op: Op, seq: u32) -> Reply {
        Reply {
            magic: MAGIC,
            version: VERSION,
            op: op as u16,
            seq,
            code: code::OK,
            vals: [0; 24],
            text_len: 0,
            reserved: 0,
            text: [0; TEXT_LEN],
        }
    }

    /// An error reply; `op` 0 when the request could not be parsed.
    pub(crate) fn error(op: u16, seq: u32, e: &SimError) -> Reply {
        let mut r = Reply::ok(Op::Hello, seq);
        r.op = op;
        let mut v = |vals: &[u64]| r.vals[..vals.len()].copy_from_slice(vals);
        let (c, text) = match e {
            SimError::InvalidArgument(m) => (code::INVALID_ARGUMENT, m.clone()),
            SimError::InvalidConfig(m) => (code::INVALID_CONFIG, m.clone()),
            SimError::Protocol(m) => (code::PROTOCOL, m.clone()),
            SimError::Daemon(m) => (code::FAILED, m.clone()),
            SimError::Io { .. } | SimError::Thread(_) | SimError::Disconnected => {
                (code::FAILED, e.to_string())
            }
            SimError::DmaOverlap {
                iova,
                len,
                existing_iova,
                existing_len,
            } => {
                v(&[*iova, *len, *existing_iova, *existing_len]);
                (code::DMA_OVERLAP, String::new())
            }
            SimError::DmaNotMapped { iova, len } => {
                v(&[*iova, *len]);
                (code::DMA_NOT_MAPPED, String::new())
            }
            SimError::DmaPartialUnmap {
                iova,
                len,
                existing_iova,
                existing_len,
            } => {
                v(&[*iova, *len, *existing_iova, *existing_len]);
                (code::DMA_PARTIAL_UNMAP, String::new())
            }
            SimError::NoSuchNamespace(n) => {
                v(&[u64::from(*n)]);
                (code::NO_SUCH_NAMESPACE, String::new())
            }
            SimError::OutOfRange {
                nsid,
                offset,
                len,
                size,
            } => {
                v(&[u64::from(*nsid), *offset, *len, *size]);
                (code::OUT_OF_RANGE, String::new())
            }
            SimError::PeerCredentials {
                peer_pid,
                peer_uid,
                expected_uid,
            } => {
                v(&[
                    u64::from(*peer_pid),
                    u64::from(*peer_uid),
                    u64::from(*expected_uid),
                ]);
                (code::PEER_CREDENTIALS, String::new())
            }
        };
        r.code = c;
        r.set_text(&text);
        r
    }

    /// Stores `s` (cut at a character boundary to fit).
    pub(crate) fn set_text(&mut self, s: &str) {
        let mut n = s.len().min(TEXT_LEN);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        self.text[..n].copy_from_slice(&s.as_bytes()[..n]);
        self.text[n..].fill(0);
        self.text_len = n as u32;
    }

    /// The text (invalid UTF-8 replaced; an out-of-range length is clamped).
    pub(crate) fn text(&self) -> String {
        let n = (self.text_len as usize).min(TEXT_LEN);
        String::from_utf8_lossy(&self.text[..n]).into_owned()
    }

    /// Checks a received reply's framing: size, magic and version.
    pub(crate) fn parse(msg: &Received, buf: &[u8]) -> Result<Reply, SimError> {
        if msg.truncated || msg.len != REPLY_LEN {
            return Err(SimError::Protocol(format!(
                "reply of {}{} bytes (replies are {REPLY_LEN} bytes)",
                if msg.truncated { "more than " } else { "" },
                msg.len
            )));
        }
        let r = Reply::read_from_bytes(&buf[..REPLY_LEN])
            .map_err(|_| SimError::Protocol("reply buffer size".into()))?;
        if r.magic != MAGIC {
            return Err(SimError::Protocol(format!(
                "bad magic {:#010x} in the reply (not an nvme-sim controller process)",
                r.magic
            )));
        }
        if r.version != VERSION {
            return Err(SimError::Protocol(format!(
                "the software controller process speaks protocol version {}, this client \
                 speaks version {VERSION} (mismatched builds of nvme-sim)",
                r.version
            )));
        }
        Ok(r)
    }

    /// The error this reply reports, if any.
    pub(crate) fn failure(&self) -> Option<SimError> {
        let v = &self.vals;
        let u32_of = |x: u64| x as u32;
        Some(match self.code {
            code::OK => return None,
            code::INVALID_ARGUMENT => SimError::InvalidArgument(self.text()),
            code::INVALID_CONFIG => SimError::InvalidConfig(self.text()),
            code::FAILED => SimError::Daemon(self.text()),
            code::PROTOCOL => SimError::Protocol(self.text()),
            code::DMA_OVERLAP => SimError::DmaOverlap {
                iova: v[0],
                len: v[1],
                existing_iova: v[2],
                existing_len: v[3],
            },
            code::DMA_NOT_MAPPED => SimError::DmaNotMapped {
                iova: v[0],
                len: v[1],
            },
            code::DMA_PARTIAL_UNMAP => SimError::DmaPartialUnmap {
                iova: v[0],
                len: v[1],
                existing_iova: v[2],
                existing_len: v[3],
            },
            code::NO_SUCH_NAMESPACE => SimError::NoSuchNamespace(u32_of(v[0])),
            code::OUT_OF_RANGE => SimError::OutOfRange {
                nsid: u32_of(v[0]),
                offset: v[1],
                len: v[2],
                size: v[3],
            },
            code::PEER_CREDENTIALS => SimError::PeerCredentials {
                peer_pid: u32_of(v[0]),
                peer_uid: u32_of(v[1]),
                expected_uid: u32_of(v[2]),
            },
            c => SimError::Protocol(format!(
                "reply with unknown status code {c}: {}",
                self.text()
            )),
        })
    }
}

// ---------------------------------------------------------------------------------------
// Encoding of fault rules and counters

/// Packs a rule into request arguments.
pub(crate) fn encode_rule(rule: &FaultRule) -> [u64; 6] {
    let m = &rule.matcher;
    let (kind, qid) = match m.queue {
        QueueMatch::Any => (0u64, 0u64),
        QueueMatch::Admin => (1, 0),
        QueueMatch::Io => (2, 0),
        QueueMatch::Queue(q) => (3, u64::from(q)),
    };
    let mut w0 = kind | qid << 16;
    if let Some(o) = m.opcode {
        w0 |= 1 << 32 | u64::from(o) << 40;
    }
    let nsid = match m.nsid {
        Some(n) => {
            w0 |= 1 << 48;
            u64::from(n)
        }
        None => 0,
    };
    let repeat = match rule.repeat {
        Repeat::Once => 0u64,
        Repeat::Always => 1,
    };
    let (action, value) = match rule.action {
        FaultAction::Fail(s) => (0u64, u64::from(s.0)),
        FaultAction::Delay(d) => (1, u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        FaultAction::Drop => (2, 0),
        FaultAction::DelayExecution(d) => (3, u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
    };
    [w0, nsid, rule.nth, repeat | action << 8, value, 0]
}

/// Unpacks and validates a rule.
pub(crate) fn decode_rule(a: &[u64; 6]) -> Result<FaultRule, SimError> {
    let bad = |m: String| Err(SimError::InvalidArgument(format!("fault rule: {m}")));
    let w0 = a[0];
    if w0 & !(0xffff | 0xffff << 16 | 1 << 32 | 0xff << 40 | 1 << 48) != 0 || w0 & 0xfffc != 0 {
        return bad(format!("reserved bits set in {w0:#x}"));
    }
    let qid = (w0 >> 16) as u16;
    let queue = match w0 & 0xffff {
        0 => QueueMatch::Any,
        1 => QueueMatch::Admin,
        2 => QueueMatch::Io,
        _ => QueueMatch::Queue(qid),
    };
    if !matches!(queue, QueueMatch::Queue(_)) && qid != 0 {
        return bad(format!("queue id {qid} without a queue match"));
    }
    let opcode = (w0 & 1 << 32 != 0).then_some((w0 >> 40) as u8);
    if opcode.is_none() && (w0 >> 40) as u8 != 0 {
        return bad("opcode value without the opcode flag".into());
    }
    let nsid = match (w0 & 1 << 48 != 0, u32::try_from(a[1])) {
        (true, Ok(n)) => Some(n),
        (true, Err(_)) => return bad(format!("nsid {:#x}", a[1])),
        (false, _) if a[1] != 0 => return bad("nsid value without the nsid flag".into()),
        (false, _) => None,
    };
    let repeat = match a[3] & 0xff {
        0 => Repeat::Once,
        1 => Repeat::Always,
        r => return bad(format!("repeat {r}")),
    };
    let action = match a[3] >> 8 {
        0 => match u16::try_from(a[4]) {
            Ok(s) => FaultAction::Fail(Status(s)),
            Err(_) => return bad(format!("status {:#x}", a[4])),
        },
        1 => FaultAction::Delay(Duration::from_nanos(a[4])),
        2 if a[4] == 0 => FaultAction::Drop,
        3 => FaultAction::DelayExecution(Duration::from_nanos(a[4])),
        k => return bad(format!("action {k} with value {:#x}", a[4])),
    };
    if a[5] != 0 {
        return bad("reserved argument set".into());
    }
    Ok(FaultRule {
        matcher: CommandMatch {
            queue,
            opcode,
            nsid,
        },
        nth: a[2],
        repeat,
        action,
    })
}

/// The asynchronous event type with code `v`.
pub(crate) fn event_type(v: u64) -> Result<AsyncEventType, SimError> {
    Ok(match v {
        0 => AsyncEventType::Error,
        1 => AsyncEventType::SmartHealth,
        2 => AsyncEventType::Notice,
        6 => AsyncEventType::IoCommandSet,
        7 => AsyncEventType::Vendor,
        _ => {
            return Err(SimError::InvalidArgument(format!(
                "asynchronous event type {v}"
            )))
        }
    })
}

/// The fault counters as reply values.
pub(crate) fn counters_to_words(c: &FaultCounters) -> [u64; COUNTER_WORDS] {
    [
        c.failed,
        c.delayed,
        c.dropped,
        c.cfs_raised,
        c.ready_withheld,
        c.async_events_raised,
        c.executions_delayed,
        c.delayed_executed,
        c.aborts_received,
        c.aborts_done,
    ]
}

/// Reply values of [`Op::FaultCounters`].
pub(crate) const COUNTER_WORDS: usize = 10;

/// The fault counters from reply values.
pub(crate) fn counters_from_words(w: &[u64]) -> FaultCounters {
    FaultCounters {
        failed: w[0],
        delayed: w[1],
        dropped: w[2],
        cfs_raised: w[3],
        ready_withheld: w[4],
        async_events_raised: w[5],
        executions_delayed: w[6],
        delayed_executed: w[7],
        aborts_received: w[8],
        aborts_done: w[9],
    }
}

// ---------------------------------------------------------------------------------------
// Sockets

fn io_err(op: &'static str, e: Errno) -> SimError {
    SimError::Io {
        op,
        source: e.into(),
    }
}

/// Bytes of `sockaddr_un.sun_path`.
const SUN_PATH_LEN: usize =
    size_of::<libc::sockaddr_un>() - std::mem::offset_of!(libc::sockaddr_un, sun_path);

/// The address of a filesystem socket path.
fn sockaddr(path: &Path) -> Result<UnixAddr, SimError> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() || bytes.contains(&0) || bytes.len() >= SUN_PATH_LEN {
        return Err(SimError::InvalidArgument(format!(
            "socket path {:?}: must be non-empty, without NUL bytes and shorter than {} bytes",
            path, SUN_PATH_LEN
        )));
    }
    UnixAddr::new(path).map_err(|e| io_err("socket address", e))
}

/// A new `SOCK_SEQPACKET` Unix socket (close-on-exec).
fn seqpacket() -> Result<OwnedFd, SimError> {
    socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| io_err("socket(AF_UNIX, SOCK_SEQPACKET)", e))
}

/// Connects a new socket to `path`.
pub(crate) fn connect(path: &Path) -> Result<OwnedFd, SimError> {
    let sa = sockaddr(path)?;
    let fd = seqpacket()?;
    loop {
        match socket::connect(fd.as_raw_fd(), &sa) {
            Ok(()) => return Ok(fd),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(io_err("connect to the software controller socket", e)),
        }
    }
}

/// Binds a new listening socket to `path` (which must not exist) with mode 0600.
pub(crate) fn bind_listen(path: &Path) -> Result<OwnedFd, SimError> {
    use std::os::unix::fs::PermissionsExt;
    let sa = sockaddr(path)?;
    let fd = seqpacket()?;
    socket::bind(fd.as_raw_fd(), &sa)
        .map_err(|e| io_err("bind the software controller socket", e))?;
    // Nobody can connect before listen(2), so the mode is right before anyone can use it.
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        let _ = std::fs::remove_file(path);
        return Err(SimError::Io {
            op: "chmod 0600 the software controller socket",
            source: e,
        });
    }
    let backlog = Backlog::new(64).expect("a valid backlog");
    if let Err(e) = socket::listen(&fd, backlog) {
        let e = io_err("listen on the software controller socket", e);
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(fd)
}

/// Accepts a connection (close-on-exec, blocking) from a non-blocking listener; `None`
/// when none is pending.
pub(crate) fn accept(listener: BorrowedFd<'_>) -> io::Result<Option<OwnedFd>> {
    match socket::accept4(listener, SockFlag::SOCK_CLOEXEC) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::EAGAIN | Errno::EINTR) => Ok(None),
        // The peer gave up before we accepted: not an error of the listener.
        Err(Errno::ECONNABORTED) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Sets or clears `O_NONBLOCK`.
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    let fl = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL)?);
    let fl = if on {
        fl | OFlag::O_NONBLOCK
    } else {
        fl & !OFlag::O_NONBLOCK
    };
    fcntl(fd, FcntlArg::F_SETFL(fl))?;
    Ok(())
}

/// Waits until `fd` is readable (or hung up) for at most `timeout`; false on timeout.
pub(crate) fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
    let mut p = [PollFd::new(fd, PollFlags::POLLIN)];
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    let ms = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
    match poll(&mut p, ms) {
        Ok(r) => Ok(r > 0),
        Err(Errno::EINTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Sets the send and receive timeouts of a socket.
pub(crate) fn set_timeouts(fd: BorrowedFd<'_>, t: Duration) -> Result<(), SimError> {
    let tv = TimeVal::new(
        t.as_secs() as libc::time_t,
        t.subsec_micros() as libc::suseconds_t,
    );
    let err = |e| io_err("setsockopt(SO_RCVTIMEO/SO_SNDTIMEO)", e);
    socket::setsockopt(&fd, sockopt::ReceiveTimeout, &tv).map_err(err)?;
    socket::setsockopt(&fd, sockopt::SendTimeout, &tv).map_err(err)?;
    Ok(())
}

/// Credentials of the peer of a connected Unix socket.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct PeerCred {
    pub(crate) pid: u32,
    pub(crate) uid: u32,
}

/// `SO_PEERCRED`: for an accepted connection, the connecting process at `connect` time;
/// for a connecting socket, the process that called `listen` (with [`crate::spawn_daemon`],
/// the spawning process, not the daemon: only the uid is meaningful to a client).
pub(crate) fn peer_cred(fd: BorrowedFd<'_>) -> Result<PeerCred, SimError> {
    let c = socket::getsockopt(&fd, sockopt::PeerCredentials).map_err(|e| SimError::Io {
        op: "getsockopt(SO_PEERCRED)",
        source: e.into(),
    })?;
    Ok(PeerCred {
        pid: c.pid() as u32,
        uid: c.uid(),
    })
}

/// Refuses a peer that does not run as `expected_uid`.
pub(crate) fn check_peer(peer: PeerCred, expected_uid: u32) -> Result<(), SimError> {
    if peer.uid == expected_uid {
        Ok(())
    } else {
        Err(SimError::PeerCredentials {
            peer_pid: peer.pid,
            peer_uid: peer.uid,
            expected_uid,
        })
    }
}

/// The effective uid of this process.
pub(crate) fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Sends one message with `fds` attached (`MSG_NOSIGNAL`: a dead peer is an error, not a
/// SIGPIPE).
pub(crate) fn send(sock: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    assert!(fds.len() <= MAX_RECV_FDS);
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let rights = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
    let iov = [IoSlice::new(data)];
    let n = loop {
        match socket::sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Err(Errno::EINTR) => continue,
            r => break r?,
        }
    };
    if n != data.len() {
        return Err(io::Error::other("short send of a packet"));
    }
    Ok(())
}

/// One received message.
pub(crate) struct Received {
    /// Bytes received (0: the peer closed the connection).
    pub(crate) len: usize,
    /// The message was longer than the buffer.
    pub(crate) truncated: bool,
    /// More descriptors came than fit (the kernel closed the rest).
    pub(crate) fds_truncated: bool,
    /// Descriptors received (close-on-exec; closed when dropped).
    pub(crate) fds: Vec<OwnedFd>,
}

/// Receives one message into `buf` and the descriptors attached to it.
pub(crate) fn recv(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Received> {
    let crate::sys::RecvMsg {
        len,
        truncated,
        mut fds,
    } = crate::sys::recv_with_fds(sock, buf)?;
    // Every descriptor that arrived is owned (and closed) here; more than MAX_RECV_FDS
    // counts as truncated.
    let fds_truncated = fds.len() > MAX_RECV_FDS;
    fds.truncate(MAX_RECV_FDS);
    Ok(Received {
        len,
        truncated,
        fds_truncated,
        fds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nvme_regs::status::GenericStatus;
    use std::os::fd::AsFd;

    #[test]
    fn rules_round_trip_and_garbage_is_refused() {
        let rules = [
            FaultRule {
                matcher: CommandMatch::any(),
                nth: 1,
                repeat: Repeat::Once,
                action: FaultAction::Drop,
            },
            FaultRule {
                matcher: CommandMatch::io(0x02).on_queue(7).with_nsid(3),
                nth: 5,
                repeat: Repeat::Always,
                action: FaultAction::Fail(Status::generic(GenericStatus::DataTransferError)),
            },
            FaultRule {
                matcher: CommandMatch::admin(0x06),
                nth: 2,
                repeat: Repeat::Once,
                action: FaultAction::Delay(Duration::from_millis(3)),
            },
            FaultRule {
                matcher: CommandMatch::io(0x02),
                nth: 1,
                repeat: Repeat::Once,
                action: FaultAction::DelayExecution(Duration::from_millis(250)),
            },
        ];
        for r in rules {
            assert_eq!(decode_rule(&encode_rule(&r)).unwrap(), r);
        }
        let good = encode_rule(&rules[1]);
        for (i, bad) in [(0, 1u64 << 60), (0, 4), (3, 3), (3, 9 << 8), (5, 1)] {
            let mut a = good;
            a[i] |= bad;
            let e = decode_rule(&a).unwrap_err();
            assert!(e.to_string().contains("fault rule"), "{e}");
        }
    }

    #[test]
    fn errors_round_trip_through_replies() {
        let errs = [
            SimError::DmaOverlap {
                iova: 1,
                len: 2,
                existing_iova: 3,
                existing_len: 4,
            },
            SimError::NoSuchNamespace(9),
            SimError::PeerCredentials {
                peer_pid: 5,
                peer_uid: 6,
                expected_uid: 7,
            },
            SimError::InvalidConfig("x".repeat(300)),
        ];
        for e in &errs {
            let r = Reply::error(Op::DmaMap as u16, 3, e);
            let back = r.failure().unwrap();
            let (a, b) = (e.to_string(), back.to_string());
            if a.len() < 150 {
                assert_eq!(a, b);
            } else {
                assert!(b.len() < a.len() && a.starts_with(&b), "{b}");
            }
        }
        let mut r = Reply::ok(Op::Stats, 1);
        r.set_text("é".repeat(150).as_str());
        assert_eq!(r.text(), "é".repeat(100));
        assert!(r.failure().is_none());
    }

    #[test]
    fn descriptors_cross_and_extra_ones_are_flagged() {
        let (a, b) = socket::socketpair(
            socket::AddressFamily::Unix,
            socket::SockType::SeqPacket,
            None,
            socket::SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let f = std::fs::File::open("/dev/null").unwrap();
        let mut buf = [0u8; 16];
        send(a.as_fd(), b"two", &[f.as_fd(), f.as_fd()]).unwrap();
        let m = recv(b.as_fd(), &mut buf).unwrap();
        assert_eq!((m.len, m.truncated, m.fds_truncated), (3, false, false));
        assert_eq!(&buf[..3], b"two");
        assert_eq!(m.fds.len(), 2);
        let flags = fcntl(&m.fds[0], FcntlArg::F_GETFD).unwrap();
        assert_ne!(flags & libc::FD_CLOEXEC, 0, "received close-on-exec");
        // More descriptors than any message carries, and a longer message than the buffer.
        let raw = vec![f.as_raw_fd(); MAX_RECV_FDS + 3];
        let iov = [IoSlice::new(&[7u8; 20])];
        let cm = [ControlMessage::ScmRights(&raw)];
        socket::sendmsg::<()>(a.as_raw_fd(), &iov, &cm, MsgFlags::empty(), None).unwrap();
        let m = recv(b.as_fd(), &mut buf).unwrap();
        assert!(m.truncated && m.fds_truncated);
        assert_eq!(m.fds.len(), MAX_RECV_FDS, "the extra ones are closed");
        drop(a);
        let m = recv(b.as_fd(), &mut buf).unwrap();
        assert_eq!((m.len, m.fds.len()), (0, 0), "end of the connection");
    }

    #[test]
    fn peer_check_refuses_another_uid() {
        // A real connection reports this process's credentials.
        let (a, _b) = socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let me = peer_cred(a.as_fd()).unwrap();
        assert_eq!(me.uid, euid());
        assert_eq!(me.pid, std::process::id());
        check_peer(me, euid()).unwrap();
        // Another uid is refused with a message naming both.
        let e = check_peer(me, euid() + 1).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, SimError::PeerCredentials { .. }));
        assert!(text.contains(&format!("uid {}", euid())), "{text}");
        assert!(text.contains(&format!("uid {}", euid() + 1)), "{text}");
    }
}
