//! [`SimClient`]: one connection to a controller process started by
//! [`crate::spawn_daemon`].

use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use nvme_regs::Status;
use zerocopy::IntoBytes;

use crate::daemon::DaemonStatus;
use crate::proto::{self, Op, Reply, Request, REPLY_LEN};
use crate::{
    AsyncEventType, CommandMatch, FaultAction, FaultCounters, FaultId, FaultRule, Repeat, SimError,
    SimStats,
};

/// How long a request waits for its reply before failing.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest BAR a daemon may announce.
const MAX_BAR_LEN: usize = 1 << 30;

struct Conn {
    fd: OwnedFd,
    seq: u32,
    /// A protocol error or disconnect happened: every later request fails at once.
    broken: bool,
}

/// One connection to a software controller process ([`crate::spawn_daemon`]).
///
/// It gives what [`crate::SimController`] gives in-process: the BAR (a memfd received at
/// connect time, to map `MAP_SHARED`), DMA mapping, the namespaces' backing memfds, fault
/// injection and counters. Requests from several threads are serialised on the one
/// connection. Dropping the client closes the connection; the controller, its queues and
/// the DMA mappings this client made stay (see the [daemon](crate::spawn_daemon) rules).
pub struct SimClient {
    conn: Mutex<Conn>,
    bar_fd: OwnedFd,
    bar_len: usize,
    pid: u32,
    namespaces: u32,
    vectors: u16,
    id: u64,
}

impl fmt::Debug for SimClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimClient")
            .field("pid", &self.pid)
            .field("client", &self.id)
            .field("bar_len", &self.bar_len)
            .field("namespaces", &self.namespaces)
            .finish_non_exhaustive()
    }
}

impl SimClient {
    /// Connects to the controller process serving `socket_path`. The process must run as
    /// this process's effective uid (checked with `SO_PEERCRED`; the daemon checks ours
    /// the same way). Receives the BAR.
    pub fn connect(socket_path: &Path) -> Result<SimClient, SimError> {
        Self::connect_as(socket_path, proto::euid())
    }

    /// [`connect`](Self::connect), requiring the daemon to run as `uid`.
    pub(crate) fn connect_as(socket_path: &Path, uid: u32) -> Result<SimClient, SimError> {
        let fd = proto::connect(socket_path)?;
        proto::check_peer(proto::peer_cred(fd.as_fd())?, uid)?;
        proto::set_timeouts(fd.as_fd(), REPLY_TIMEOUT)?;
        let mut conn = Conn {
            fd,
            seq: 0,
            broken: false,
        };
        let (r, bar_fd) = call_on(&mut conn, Op::Hello, [0; 6], None)?;
        let bar_fd = bar_fd.ok_or_else(|| SimError::Protocol("Hello reply without BAR".into()))?;
        let bar_len = usize::try_from(r.vals[0])
            .ok()
            .filter(|&l| l > 0 && l <= MAX_BAR_LEN && l % 4096 == 0)
            .ok_or_else(|| SimError::Protocol(format!("BAR length {:#x}", r.vals[0])))?;
        // Mapping beyond the end of the memfd would fault (SIGBUS) on access.
        if crate::mem::file_size(bar_fd.as_fd()).is_none_or(|s| s < bar_len as u64) {
            return Err(SimError::Protocol(format!(
                "the BAR descriptor is not a file of at least {bar_len:#x} bytes"
            )));
        }
        let pid = u32::try_from(r.vals[1])
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| SimError::Protocol(format!("daemon pid {}", r.vals[1])))?;
        let namespaces = u32::try_from(r.vals[2])
            .ok()
            .filter(|&n| n <= 1024)
            .ok_or_else(|| SimError::Protocol(format!("{} namespaces", r.vals[2])))?;
        let vectors = u16::try_from(r.vals[5])
            .ok()
            .filter(|&n| n <= 2048)
            .ok_or_else(|| SimError::Protocol(format!("{} interrupt vectors", r.vals[5])))?;
        Ok(SimClient {
            conn: Mutex::new(conn),
            bar_fd,
            bar_len,
            pid,
            namespaces,
            vectors,
            id: r.vals[3],
        })
    }

    /// The memfd holding BAR0 (registers at 0, doorbells from 0x1000). Map it `MAP_SHARED`
    /// for [`bar_len`](Self::bar_len) bytes.
    pub fn bar_fd(&self) -> BorrowedFd<'_> {
        self.bar_fd.as_fd()
    }

    /// Size of BAR0 in bytes.
    pub fn bar_len(&self) -> usize {
        self.bar_len
    }

    /// The controller process's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Number of namespaces (NSIDs are `1..=count`).
    pub fn namespace_count(&self) -> u32 {
        self.namespaces
    }

    /// The controller's MSI-X interrupt vectors (see [`set_interrupt`](Self::set_interrupt)).
    pub fn interrupt_vectors(&self) -> u16 {
        self.vectors
    }

    /// This connection's number in the daemon (1 for the first client, ...).
    pub fn client_id(&self) -> u64 {
        self.id
    }

    fn lock(&self) -> MutexGuard<'_, Conn> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn call(&self, op: Op, args: [u64; 6]) -> Result<Reply, SimError> {
        call_on(&mut self.lock(), op, args, None).map(|(r, _)| r)
    }

    /// Lets the controller access `len` bytes of `fd` from `offset` at device addresses
    /// `[iova, iova + len)`. The descriptor is sent to the daemon, which maps it itself, so
    /// `fd` may be closed afterwards. The mapping outlives this client (until
    /// [`dma_unmap`](Self::dma_unmap) by any client).
    pub fn dma_map(
        &self,
        iova: u64,
        fd: BorrowedFd<'_>,
        offset: u64,
        len: usize,
    ) -> Result<(), SimError> {
        let args = [iova, offset, len as u64, 0, 0, 0];
        call_on(&mut self.lock(), Op::DmaMap, args, Some(fd)).map(|_| ())
    }

    /// Makes the controller signal `eventfd` (an `eventfd(2)`, written with 1) whenever it
    /// posts to a completion queue created with interrupts on `vector`; `None` stops the
    /// vector signalling. Like `VFIO_DEVICE_SET_IRQS` for one MSI-X vector.
    pub fn set_interrupt(
        &self,
        vector: u16,
        eventfd: Option<BorrowedFd<'_>>,
    ) -> Result<(), SimError> {
        let args = [u64::from(vector), 0, 0, 0, 0, 0];
        match eventfd {
            Some(fd) => call_on(&mut self.lock(), Op::SetInterrupt, args, Some(fd)).map(|_| ()),
            None => self.call(Op::ClearInterrupt, args).map(|_| ()),
        }
    }

    /// Removes every DMA mapping inside `[iova, iova + len)`, whoever made it (a mapping
    /// may not be split). Commands that start after this returns no longer see the range.
    pub fn dma_unmap(&self, iova: u64, len: usize) -> Result<(), SimError> {
        self.call(Op::DmaUnmap, [iova, len as u64, 0, 0, 0, 0])
            .map(|_| ())
    }

    /// The memfd backing namespace `nsid` (byte `i` of the namespace at file offset `i`),
    /// to read or write the backing store from this process (`pread`, `mmap`).
    pub fn namespace_fd(&self, nsid: u32) -> Result<OwnedFd, SimError> {
        let (_, fd) = call_on(
            &mut self.lock(),
            Op::NamespaceFd,
            [u64::from(nsid), 0, 0, 0, 0, 0],
            None,
        )?;
        fd.ok_or_else(|| SimError::Protocol("namespace reply without descriptor".into()))
    }

    /// Installs a command fault rule (see [`crate::Faults::inject`]).
    pub fn inject(&self, rule: FaultRule) -> Result<FaultId, SimError> {
        let r = self.call(Op::Inject, proto::encode_rule(&rule))?;
        Ok(FaultId::from_raw(r.vals[0]))
    }

    /// Fails the `nth` (1-based) command matching `m` with `status`; with `every`, also
    /// every later matching command (see [`crate::Faults::fail_nth`]).
    pub fn fail_nth(
        &self,
        m: CommandMatch,
        nth: u64,
        status: Status,
        every: bool,
    ) -> Result<FaultId, SimError> {
        self.inject(rule(m, nth, every, FaultAction::Fail(status)))
    }

    /// Delays the completion of the `nth` matching command (and later ones with `every`).
    pub fn delay_nth(
        &self,
        m: CommandMatch,
        nth: u64,
        delay: Duration,
        every: bool,
    ) -> Result<FaultId, SimError> {
        self.inject(rule(m, nth, every, FaultAction::Delay(delay)))
    }

    /// Never posts the completion of the `nth` matching command (and later ones with
    /// `every`).
    pub fn drop_nth(&self, m: CommandMatch, nth: u64, every: bool) -> Result<FaultId, SimError> {
        self.inject(rule(m, nth, every, FaultAction::Drop))
    }

    /// Removes a rule; false when it was already spent or removed.
    pub fn remove_fault(&self, id: FaultId) -> Result<bool, SimError> {
        Ok(self.call(Op::RemoveFault, [id.raw(), 0, 0, 0, 0, 0])?.vals[0] != 0)
    }

    /// How many times rule `id` fired, and whether it is still installed.
    pub fn fault_fired(&self, id: FaultId) -> Result<(u64, bool), SimError> {
        let r = self.call(Op::FaultFired, [id.raw(), 0, 0, 0, 0, 0])?;
        Ok((r.vals[0], r.vals[1] != 0))
    }

    /// Removes every command rule and clears never-ready (see [`crate::Faults::clear`]).
    pub fn clear_faults(&self) -> Result<(), SimError> {
        self.call(Op::ClearFaults, [0; 6]).map(|_| ())
    }

    /// Sets CSTS.CFS (see [`crate::Faults::raise_cfs`]).
    pub fn raise_cfs(&self) -> Result<(), SimError> {
        self.call(Op::RaiseCfs, [0; 6]).map(|_| ())
    }

    /// While set, enabling never sets CSTS.RDY (see [`crate::Faults::set_never_ready`]).
    pub fn set_never_ready(&self, on: bool) -> Result<(), SimError> {
        self.call(Op::SetNeverReady, [u64::from(on), 0, 0, 0, 0, 0])
            .map(|_| ())
    }

    /// Queues an asynchronous event (see [`crate::Faults::raise_async_event`]).
    pub fn raise_async_event(
        &self,
        event_type: AsyncEventType,
        info: u8,
        log_page: u8,
    ) -> Result<(), SimError> {
        let args = [
            event_type as u64,
            u64::from(info),
            u64::from(log_page),
            0,
            0,
            0,
        ];
        self.call(Op::RaiseAsyncEvent, args).map(|_| ())
    }

    /// A snapshot of the controller's command counters.
    pub fn stats(&self) -> Result<SimStats, SimError> {
        let r = self.call(Op::Stats, [0; 6])?;
        let mut w = [0u64; SimStats::WORDS];
        w.copy_from_slice(&r.vals[..SimStats::WORDS]);
        Ok(SimStats::from_words(&w))
    }

    /// Counters of fired faults.
    pub fn fault_counters(&self) -> Result<FaultCounters, SimError> {
        Ok(proto::counters_from_words(
            &self.call(Op::FaultCounters, [0; 6])?.vals,
        ))
    }

    /// Why the controller last set CSTS.CFS, if it did (at most 200 bytes of it).
    pub fn fatal_reason(&self) -> Result<Option<String>, SimError> {
        let r = self.call(Op::FatalReason, [0; 6])?;
        Ok((r.vals[0] != 0).then(|| r.text()))
    }

    /// DMA errors so far (see [`crate::SimController::dma_errors`]) and the latest one.
    pub fn dma_errors(&self) -> Result<(u64, Option<String>), SimError> {
        let r = self.call(Op::DmaErrors, [0; 6])?;
        Ok((r.vals[0], (r.vals[0] != 0).then(|| r.text())))
    }

    /// The daemon's clients and DMA mappings.
    pub fn daemon_status(&self) -> Result<DaemonStatus, SimError> {
        Ok(DaemonStatus::from_words(
            &self.call(Op::Status, [0; 6])?.vals,
        ))
    }

    /// Stops the controller process now (it replies first). Other clients see their
    /// connection closed; their BAR mappings stay readable but nothing processes them.
    pub fn shutdown(&self) -> Result<(), SimError> {
        self.call(Op::Shutdown, [0; 6]).map(|_| ())
    }
}

fn rule(m: CommandMatch, nth: u64, every: bool, action: FaultAction) -> FaultRule {
    FaultRule {
        matcher: m,
        nth,
        repeat: if every { Repeat::Always } else { Repeat::Once },
        action,
    }
}

/// Sends one request and receives its reply (and the descriptor it must carry).
fn call_on(
    c: &mut Conn,
    op: Op,
    args: [u64; 6],
    fd: Option<BorrowedFd<'_>>,
) -> Result<(Reply, Option<OwnedFd>), SimError> {
    if c.broken {
        return Err(SimError::Disconnected);
    }
    let r = exchange(c, op, args, fd);
    if matches!(
        r,
        Err(SimError::Disconnected | SimError::Protocol(_) | SimError::Io { .. })
    ) {
        c.broken = true;
    }
    r
}

fn exchange(
    c: &mut Conn,
    op: Op,
    args: [u64; 6],
    fd: Option<BorrowedFd<'_>>,
) -> Result<(Reply, Option<OwnedFd>), SimError> {
    c.seq = c.seq.wrapping_add(1);
    let req = Request::new(op, c.seq, args);
    let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
    // A failed send (the daemon closed the connection) may still leave a reply that says
    // why (a refusal), so receive in any case.
    let sent = proto::send(c.fd.as_fd(), req.as_bytes(), &fds);
    let mut buf = [0u8; REPLY_LEN];
    let mut received = proto::recv(c.fd.as_fd(), &mut buf);
    if matches!(&received, Err(e) if e.kind() == io::ErrorKind::ConnectionReset) {
        // The daemon closed the connection with our request unread; a reply it sent
        // before (a refusal) may still be queued behind the reported reset.
        received = proto::recv(c.fd.as_fd(), &mut buf);
    }
    let msg = match received {
        Ok(m) if m.len == 0 && !m.truncated => return Err(SimError::Disconnected),
        Ok(m) => m,
        Err(e) if sent.is_err() || e.kind() == io::ErrorKind::ConnectionReset => {
            return Err(SimError::Disconnected)
        }
        Err(e) => {
            return Err(SimError::Io {
                op: "receive a reply from the software controller process",
                source: e,
            })
        }
    };
    let r = Reply::parse(&msg, &buf)?;
    let mut fds = msg.fds;
    if r.op == 0 {
        // The daemon refused the connection or a malformed request; it closes it.
        return Err(r
            .failure()
            .unwrap_or_else(|| SimError::Protocol("success reply to no request".into())));
    }
    if sent.is_err() || r.op != op as u16 || r.seq != c.seq {
        return Err(SimError::Protocol(format!(
            "reply {}/{} to request {op:?}/{}",
            r.op, r.seq, c.seq
        )));
    }
    if let Some(e) = r.failure() {
        return Err(e);
    }
    if msg.fds_truncated || fds.len() != op.reply_fds() {
        return Err(SimError::Protocol(format!(
            "{op:?} reply with {} file descriptors (expected {})",
            fds.len(),
            op.reply_fds()
        )));
    }
    Ok((r, fds.pop()))
}
