//! The software controller as its own process ([`spawn_daemon`]), so that driver processes
//! sharing one controller can come, go and be killed while the controller lives on, like
//! hardware.
//!
//! # Start-up
//! The caller binds and listens on the socket (mode 0600) *before* forking, so the socket
//! accepts connections as soon as [`spawn_daemon`] returns. It then forks without exec
//! (library code keeps working from any program that links this crate, with no helper
//! binary to locate). The child is the copy of one thread of a possibly multi-threaded
//! process; before it does anything else it
//! - starts a new session (`setsid`: no controlling terminal, no job-control signals) and
//!   moves to `/`,
//! - points stdin/stdout/stderr at `/dev/null` and closes every other inherited descriptor
//!   except the listening socket and the start-up pipe (the caller's OFD locks must not
//!   outlive the caller because a daemon keeps a copy of their descriptors),
//! - resets signal handlers and the signal mask, ignores `SIGPIPE`,
//! - unmaps the caller's shared mappings (DMA buffers, shared segments: the daemon must not
//!   keep them alive),
//!
//! then forks again and exits, so the daemon is reparented and the caller never keeps a
//! zombie. The daemon reports its pid, builds the [`SimController`] and reports success or
//! the start-up error (an invalid configuration, ...) through a pipe; [`spawn_daemon`]
//! returns that result.
//!
//! Fork without exec (`sys::fork`) is safe here because the child only uses memory it allocates itself
//! (glibc's malloc is fork-safe), starts threads with an explicit stack size (std reads
//! `RUST_MIN_STACK` under the environment lock otherwise), never touches stdio or the
//! environment, never unwinds into the caller's frames (a panic ends in `_exit`) and always
//! leaves with `_exit`. A lock that another thread of the caller held at the moment of the
//! fork (for example the dynamic loader's, inside `dlopen`) stays held in the child; nothing
//! the daemon does needs one.
//!
//! # Serving
//! One thread per client. Clients must run as the daemon's uid (`SO_PEERCRED`, checked on
//! both sides). DMA mappings are recorded with the client that made them; when a client
//! disconnects (or its process dies), its mappings are *not* removed: the controller may
//! still use queues that a dead client created, until a survivor deletes them through the
//! admin queue and calls `dma_unmap` (like an IOMMU; the daemon's own mmaps keep the memory
//! alive, which is safe). [`DaemonStatus`] counts them. The controller's state never
//! depends on which clients are connected.
//!
//! # Exit
//! When no client has been connected for [`DaemonOptions::idle_grace`] (counted from the
//! start, so a daemon whose spawner died before connecting does not leak, and from the last
//! disconnect), or at once when a client sends `shutdown`. The daemon removes its socket
//! file (only if it is still the one it was started with) before exiting.

use std::collections::{BTreeMap, HashSet};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::resource::{getrlimit, Resource};
use nix::sys::signal::{kill, sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use zerocopy::{FromBytes, IntoBytes};

use crate::proto::{self, Op, Reply, Request, REPLY_LEN, REQUEST_LEN};
use crate::sys::{self, ForkedChild};
use crate::{FaultId, SimConfig, SimController, SimError, SimStats, THREAD_STACK};

/// How [`spawn_daemon_with`] starts and runs the controller process.
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    /// The daemon exits when no client has been connected for this long: after it started
    /// (if nobody connects) and after its last client disconnected. Default 2 s.
    pub idle_grace: Duration,
    /// How long [`spawn_daemon_with`] waits for the new process to report that its
    /// controller runs before killing it. Default 10 s.
    pub start_timeout: Duration,
    /// Test hook: the uid clients must have (default: the daemon's own).
    #[cfg(test)]
    pub(crate) client_uid: Option<u32>,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        DaemonOptions {
            idle_grace: Duration::from_secs(2),
            start_timeout: Duration::from_secs(10),
            #[cfg(test)]
            client_uid: None,
        }
    }
}

/// What a controller process reports about itself ([`crate::SimClient::daemon_status`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct DaemonStatus {
    /// The daemon's pid.
    pub pid: u32,
    /// Clients connected now.
    pub clients: u32,
    /// Connections accepted since the start (refused ones not included).
    pub connections: u64,
    /// DMA mappings in place.
    pub dma_maps: u64,
    /// Bytes of those mappings.
    pub dma_bytes: u64,
    /// Mappings whose client has disconnected (a survivor should unmap them once the
    /// queues that used them are deleted).
    pub orphaned_dma_maps: u64,
    /// Bytes of those mappings.
    pub orphaned_dma_bytes: u64,
}

impl DaemonStatus {
    fn to_words(self) -> [u64; 7] {
        [
            u64::from(self.pid),
            u64::from(self.clients),
            self.connections,
            self.dma_maps,
            self.dma_bytes,
            self.orphaned_dma_maps,
            self.orphaned_dma_bytes,
        ]
    }

    pub(crate) fn from_words(w: &[u64]) -> DaemonStatus {
        DaemonStatus {
            pid: w[0] as u32,
            clients: w[1] as u32,
            connections: w[2],
            dma_maps: w[3],
            dma_bytes: w[4],
            orphaned_dma_maps: w[5],
            orphaned_dma_bytes: w[6],
        }
    }
}

/// Starts a software controller with `config` in a new process that serves
/// `socket_path`; returns once the socket accepts connections and the controller runs.
/// Connect with [`crate::SimClient::connect`].
///
/// - The socket (mode 0600) is bound and listening before the process is forked, so
///   connecting right after this returns cannot race with the start-up. `socket_path` must
///   not be in use: a socket file nobody listens on any more (left by a daemon that was
///   killed) is replaced; a live one is an error.
/// - The caller may be multi-threaded. The new process is forked without exec (any
///   program that links this crate can start one) and, before anything else, starts a new
///   session, points stdio at `/dev/null`, closes every descriptor it inherited except the
///   socket (so the caller's file locks keep their liveness meaning), resets signal
///   handlers and unmaps the caller's shared memory; it then forks again, so it is not the
///   caller's child (no zombie).
/// - Start-up errors of the new process (an invalid `config`, ...) are returned here.
/// - The process serves any number of clients that run as the same uid. A client that
///   disconnects or dies leaves the controller as it was: its queues keep existing and its
///   DMA mappings stay in place until another client deletes and unmaps them
///   ([`crate::SimClient::daemon_status`] counts them).
/// - It exits when no client has been connected for 2 s (after the start if nobody
///   connects, and after the last client left), or at once on
///   [`crate::SimClient::shutdown`], and removes the socket file.
///
/// See [`spawn_daemon_with`] for other timings and the daemon's pid.
pub fn spawn_daemon(config: SimConfig, socket_path: &Path) -> Result<(), SimError> {
    spawn_daemon_with(config, socket_path, &DaemonOptions::default()).map(|_| ())
}

/// [`spawn_daemon`] with options; returns the daemon's pid.
pub fn spawn_daemon_with(
    config: SimConfig,
    socket_path: &Path,
    options: &DaemonOptions,
) -> Result<u32, SimError> {
    let listener = bind_fresh(socket_path)?;
    let ident = socket_ident(socket_path);
    let cleanup = || remove_socket_if(socket_path, ident);
    let (pipe_r, pipe_w) = match pipe() {
        Ok(p) => p,
        Err(e) => {
            cleanup();
            return Err(e);
        }
    };
    // The daemon leaves the working directory (so that it keeps no mount busy).
    let path = std::env::current_dir()
        .map(|d| d.join(socket_path))
        .unwrap_or_else(|_| socket_path.to_path_buf());
    let setup = ChildSetup {
        config,
        path,
        ident,
        grace: options.idle_grace,
        #[cfg(test)]
        client_uid: options.client_uid.unwrap_or_else(proto::euid),
        #[cfg(not(test))]
        client_uid: proto::euid(),
    };
    // The child only runs `first_child` (then `_exit`s) and only uses what it is handed.
    let (forked, (_, listener, pipe_w)) = sys::fork(
        (setup, listener, pipe_w),
        |child, (setup, listener, pipe_w)| first_child(child, setup, listener, pipe_w),
    );
    let pid = match forked {
        Ok(pid) => pid,
        Err(source) => {
            let e = SimError::Io {
                op: "fork the software controller process",
                source,
            };
            cleanup();
            return Err(e);
        }
    };
    drop(pipe_w);
    let started = read_startup(pipe_r.as_fd(), options.start_timeout);
    reap(pid);
    // The daemon has its own copy of the listening socket.
    drop(listener);
    match started {
        Ok(pid) => Ok(pid),
        Err((e, daemon)) => {
            if let Some(p) = daemon {
                // `p` is the daemon that reported its pid and failed to start in time.
                let _ = kill(Pid::from_raw(p as libc::pid_t), Signal::SIGKILL);
            }
            cleanup();
            Err(e)
        }
    }
}

/// Binds a listening socket at `path`, replacing a stale socket file.
fn bind_fresh(path: &Path) -> Result<OwnedFd, SimError> {
    match proto::bind_listen(path) {
        Err(SimError::Io { source, .. }) if source.raw_os_error() == Some(libc::EADDRINUSE) => {
            let is_socket = std::fs::symlink_metadata(path)
                .map(|m| m.file_type().is_socket())
                .unwrap_or(false);
            if !is_socket {
                return Err(SimError::InvalidArgument(format!(
                    "{} exists and is not a socket",
                    path.display()
                )));
            }
            match proto::connect(path) {
                Ok(_) => Err(SimError::InvalidArgument(format!(
                    "{}: a software controller process already serves this socket",
                    path.display()
                ))),
                Err(SimError::Io { source, .. })
                    if source.raw_os_error() == Some(libc::ECONNREFUSED) =>
                {
                    // Nobody listens: left by a daemon that was killed.
                    std::fs::remove_file(path).map_err(|e| SimError::Io {
                        op: "remove a stale software controller socket",
                        source: e,
                    })?;
                    proto::bind_listen(path)
                }
                Err(e) => Err(e),
            }
        }
        r => r,
    }
}

/// Device and inode of the socket file (to remove only our own socket).
fn socket_ident(path: &Path) -> (u64, u64) {
    std::fs::symlink_metadata(path).map_or((0, 0), |m| (m.dev(), m.ino()))
}

fn remove_socket_if(path: &Path, ident: (u64, u64)) {
    if ident != (0, 0) && socket_ident(path) == ident {
        let _ = std::fs::remove_file(path);
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SimError> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| SimError::Io {
        op: "pipe2",
        source: e.into(),
    })
}

/// Reaps the intermediate child, which exits right after forking the daemon; kills it if
/// it is stuck (a lock of the caller's held at the fork, say) and has not exited after 2 s.
fn reap(pid: Pid) {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut flags = Some(WaitPidFlag::WNOHANG);
    loop {
        match waitpid(pid, flags) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(_) => return,
            Err(Errno::EINTR) => continue,
            // ECHILD: SIGCHLD is ignored, or another thread of the caller reaped it.
            Err(_) => return,
        }
        if flags.is_some() && Instant::now() >= deadline {
            // `pid` is our unreaped child.
            let _ = kill(pid, Signal::SIGKILL);
            flags = None;
        } else if flags.is_some() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Reads the daemon's start-up report: `Ok(pid)`, or the error and the daemon's pid if it
/// got that far.
fn read_startup(pipe: BorrowedFd<'_>, timeout: Duration) -> Result<u32, (SimError, Option<u32>)> {
    let deadline = Instant::now() + timeout;
    let mut daemon = None;
    loop {
        let mut buf = [0u8; REPLY_LEN];
        let mut got = 0;
        while got < REPLY_LEN {
            let left = deadline.saturating_duration_since(Instant::now());
            match proto::wait_readable(pipe, left) {
                Ok(true) => {}
                Ok(false) if left.is_zero() => {
                    return Err((
                        SimError::Daemon(format!(
                            "the new process did not report its start within {timeout:?} \
                             (it was killed)"
                        )),
                        daemon,
                    ))
                }
                Ok(false) => continue,
                Err(e) => {
                    return Err((
                        SimError::Io {
                            op: "poll the start-up pipe",
                            source: e,
                        },
                        daemon,
                    ))
                }
            }
            match nix::unistd::read(pipe, &mut buf[got..]) {
                Ok(0) => {
                    return Err((
                        SimError::Daemon(
                            "the new process exited during start-up without reporting why".into(),
                        ),
                        None,
                    ))
                }
                Ok(n) => got += n,
                Err(Errno::EINTR) => {}
                Err(e) => {
                    return Err((
                        SimError::Io {
                            op: "read the start-up pipe",
                            source: e.into(),
                        },
                        daemon,
                    ))
                }
            }
        }
        let r = match Reply::read_from_bytes(&buf) {
            Ok(r) if r.magic == proto::MAGIC && r.version == proto::VERSION => r,
            _ => {
                return Err((
                    SimError::Protocol("malformed start-up report".into()),
                    daemon,
                ))
            }
        };
        if let Some(e) = r.failure() {
            return Err((e, daemon));
        }
        let pid = u32::try_from(r.vals[0]).ok().filter(|&p| p > 0);
        match (Op::from_u16(r.op), pid) {
            (Some(Op::Forked), Some(p)) => daemon = Some(p),
            (Some(Op::Started), Some(p)) if daemon == Some(p) => return Ok(p),
            _ => {
                return Err((
                    SimError::Protocol(format!("unexpected start-up report {}", r.op)),
                    daemon,
                ))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The child side

/// What the daemon needs, prepared before the fork.
struct ChildSetup {
    config: SimConfig,
    path: PathBuf,
    ident: (u64, u64),
    grace: Duration,
    client_uid: u32,
}

/// Writes one report to the start-up pipe (a single atomic write: REPLY_LEN < PIPE_BUF).
fn report(pipe: BorrowedFd<'_>, r: &Reply) {
    let _ = nix::unistd::write(pipe, r.as_bytes());
}

/// The intermediate child: detaches from the caller, forks the daemon and exits.
fn first_child(child: &ForkedChild, setup: ChildSetup, listener: OwnedFd, pipe_w: OwnedFd) -> i32 {
    // setsid cannot fail here: a fresh child is never a process group leader.
    let _ = nix::unistd::setsid();
    let _ = nix::unistd::chdir("/");
    detach_stdio();
    close_fds_except(child, &[listener.as_raw_fd(), pipe_w.as_raw_fd()]);
    reset_signals(child);
    crate::mem::drop_inherited_shared_mappings(child);
    // This process has a single thread now; the grandchild continues in `daemon_main`.
    let (forked, (_, _, pipe_w)) =
        sys::fork((setup, listener, pipe_w), |_, (setup, listener, pipe_w)| {
            daemon_main(setup, listener, pipe_w)
        });
    match forked {
        Ok(_) => 0,
        Err(source) => {
            let e = SimError::Io {
                op: "fork the software controller daemon",
                source,
            };
            report(pipe_w.as_fd(), &Reply::error(Op::Forked as u16, 0, &e));
            1
        }
    }
}

/// Stdin, stdout and stderr onto /dev/null (closed if that cannot be opened).
fn detach_stdio() {
    match std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        Ok(null) => {
            let null = OwnedFd::from(null);
            let _ = nix::unistd::dup2_stdin(&null);
            let _ = nix::unistd::dup2_stdout(&null);
            let _ = nix::unistd::dup2_stderr(&null);
            if null.as_raw_fd() <= 2 {
                // It was opened as one of the standard descriptors: it stays open as such.
                let _ = null.into_raw_fd();
            }
        }
        Err(_) => {
            for std_fd in 0..3 {
                let _ = nix::unistd::close(std_fd);
            }
        }
    }
}

/// Closes every descriptor from 3 up except `keep`.
fn close_fds_except(child: &ForkedChild, keep: &[RawFd]) {
    let mut keep: Vec<u32> = keep.iter().filter(|&&k| k > 2).map(|&k| k as u32).collect();
    keep.sort_unstable();
    let mut lo = 3u32;
    for k in keep {
        if k > lo {
            close_range(child, lo, k - 1);
        }
        lo = k + 1;
    }
    close_range(child, lo, u32::MAX);
}

fn close_range(child: &ForkedChild, lo: u32, hi: u32) {
    if sys::close_range(child, lo, hi) {
        return;
    }
    // Kernels before 5.9: close one by one up to the descriptor limit. Nothing in this
    // process uses the ones closed (they are the caller's).
    let max = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((cur, _)) => cur.min(1 << 20) as u32,
        Err(_) => 65536,
    };
    for fd in lo..=hi.min(max) {
        let _ = nix::unistd::close(fd as RawFd);
    }
}

/// Default handlers for every signal (the caller's handlers are not ours), `SIGPIPE`
/// ignored, nothing blocked.
fn reset_signals(child: &ForkedChild) {
    sys::reset_signal_dispositions(child);
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}

/// The daemon: reports its pid, starts the controller, reports the outcome, serves.
fn daemon_main(setup: ChildSetup, listener: OwnedFd, pipe_w: OwnedFd) -> i32 {
    let pid = std::process::id();
    let mut r = Reply::ok(Op::Forked, 0);
    r.vals[0] = u64::from(pid);
    report(pipe_w.as_fd(), &r);
    let ChildSetup {
        config,
        path,
        ident,
        grace,
        client_uid,
    } = setup;
    let sim = match SimController::start(config) {
        Ok(s) => s,
        Err(e) => {
            report(pipe_w.as_fd(), &Reply::error(Op::Started as u16, 0, &e));
            return 1;
        }
    };
    if let Err(e) = proto::set_nonblocking(listener.as_fd(), true) {
        let e = SimError::Io {
            op: "make the listening socket non-blocking",
            source: e,
        };
        report(pipe_w.as_fd(), &Reply::error(Op::Started as u16, 0, &e));
        return 1;
    }
    let daemon = Arc::new(Daemon {
        sim,
        pid,
        path,
        ident,
        grace,
        client_uid,
        state: Mutex::new(State::new()),
    });
    let mut r = Reply::ok(Op::Started, 0);
    r.vals[0] = u64::from(pid);
    report(pipe_w.as_fd(), &r);
    drop(pipe_w);
    daemon.serve(listener)
}

/// At most this many clients at once.
const MAX_CLIENTS: usize = 256;
/// How often the accept loop looks at the idle clock.
const POLL: Duration = Duration::from_millis(50);

/// One DMA mapping and who made it.
struct MapRecord {
    len: u64,
    owner: u64,
}

struct State {
    clients: usize,
    /// Connections accepted whose thread has not registered or refused them yet.
    pending: usize,
    next_id: u64,
    connections: u64,
    /// When the last client left (or the daemon started); meaningful when `clients == 0`.
    idle_since: Instant,
    /// Ids of connected clients.
    live: HashSet<u64>,
    /// DMA mappings by IOVA.
    maps: BTreeMap<u64, MapRecord>,
}

impl State {
    /// No client yet; idle since now.
    fn new() -> State {
        State {
            clients: 0,
            pending: 0,
            next_id: 0,
            connections: 0,
            idle_since: Instant::now(),
            live: HashSet::new(),
            maps: BTreeMap::new(),
        }
    }
}

impl State {
    /// Registers a new client; returns its id.
    fn register(&mut self) -> Result<u64, SimError> {
        if self.clients >= MAX_CLIENTS {
            return Err(SimError::Daemon(format!(
                "too many clients (at most {MAX_CLIENTS})"
            )));
        }
        self.clients += 1;
        self.next_id += 1;
        self.connections += 1;
        self.live.insert(self.next_id);
        Ok(self.next_id)
    }
}

struct Daemon {
    sim: SimController,
    pid: u32,
    path: PathBuf,
    ident: (u64, u64),
    grace: Duration,
    client_uid: u32,
    state: Mutex<State>,
}

impl Daemon {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The accept loop; returns the exit code when idle for the grace period.
    fn serve(self: &Arc<Self>, listener: OwnedFd) -> i32 {
        loop {
            if let Ok(true) = proto::wait_readable(listener.as_fd(), POLL) {
                while let Ok(Some(conn)) = proto::accept(listener.as_fd()) {
                    self.admit(conn);
                }
            }
            let idle = {
                let st = self.lock();
                st.clients == 0 && st.pending == 0 && st.idle_since.elapsed() >= self.grace
            };
            if idle {
                // No new connection from now on; refuse those that raced with the decision.
                remove_socket_if(&self.path, self.ident);
                let why = SimError::Daemon(format!(
                    "the process is exiting (no client for {:?})",
                    self.grace
                ));
                while let Ok(Some(conn)) = proto::accept(listener.as_fd()) {
                    // Take the Hello if it is there already: closing a socket with unread
                    // data resets the connection, and the client would not see why.
                    let _ = proto::set_nonblocking(conn.as_fd(), true);
                    let mut buf = [0u8; REQUEST_LEN];
                    let _ = proto::recv(conn.as_fd(), &mut buf);
                    refuse(conn.as_fd(), &why);
                }
                return 0;
            }
        }
    }

    /// Starts the thread of a new connection.
    fn admit(self: &Arc<Self>, conn: OwnedFd) {
        // Counted until its thread has registered or refused it, so that the idle check
        // cannot exit under a connection that was just accepted.
        self.lock().pending += 1;
        let d = self.clone();
        let spawned = std::thread::Builder::new()
            .name("nvme-sim-client".into())
            .stack_size(THREAD_STACK)
            .spawn(move || d.connection(conn));
        if spawned.is_err() {
            // The closure (and the connection) was dropped: the client sees it closed.
            self.lock().pending -= 1;
        }
    }

    /// Checks the credentials of a new connection, registers and serves it.
    fn connection(&self, conn: OwnedFd) {
        let checked =
            proto::peer_cred(conn.as_fd()).and_then(|c| proto::check_peer(c, self.client_uid));
        let id = {
            let mut st = self.lock();
            st.pending -= 1;
            checked.and_then(|()| st.register())
        };
        match id {
            Ok(id) => {
                if self.serve_client(conn.as_fd(), id) {
                    self.exit_now();
                }
                self.client_gone(id);
            }
            Err(e) => refuse_after_first(conn.as_fd(), &e),
        }
    }

    fn client_gone(&self, id: u64) {
        let mut st = self.lock();
        if st.live.remove(&id) {
            st.clients -= 1;
            if st.clients == 0 {
                st.idle_since = Instant::now();
            }
        }
    }

    /// Removes the socket file and exits the process now.
    fn exit_now(&self) -> ! {
        remove_socket_if(&self.path, self.ident);
        sys::exit_now(0)
    }

    /// Serves one client until it disconnects or breaks the protocol. Returns `true` when
    /// the client asked the daemon to shut down (the reply is sent; the caller exits).
    fn serve_client(&self, conn: BorrowedFd<'_>, id: u64) -> bool {
        let mut greeted = false;
        loop {
            let mut buf = [0u8; REQUEST_LEN];
            let msg = match proto::recv(conn, &mut buf) {
                Ok(m) if m.len == 0 && !m.truncated => return false,
                Ok(m) => m,
                Err(_) => return false,
            };
            let (op, req) = match Request::parse(&msg, &buf) {
                Ok(x) => x,
                Err(e) => {
                    refuse(conn, &e);
                    return false;
                }
            };
            if greeted == (op == Op::Hello) {
                let e = SimError::Protocol(if greeted {
                    "a second Hello on one connection".into()
                } else {
                    format!("{op:?} before Hello")
                });
                refuse(conn, &e);
                return false;
            }
            let (reply, fd) = match self.handle(op, &req, &msg.fds, id) {
                Ok(x) => x,
                Err(e) => (Reply::error(op as u16, req.seq, &e), None),
            };
            let fds: Vec<BorrowedFd<'_>> = fd.iter().map(|f| f.as_fd()).collect();
            if proto::send(conn, reply.as_bytes(), &fds).is_err() {
                return false;
            }
            greeted |= op == Op::Hello && reply.failure().is_none();
            if op == Op::Shutdown {
                return true;
            }
        }
    }

    /// Executes one request; returns the reply and the descriptor to attach.
    fn handle(
        &self,
        op: Op,
        req: &Request,
        fds: &[OwnedFd],
        client: u64,
    ) -> Result<(Reply, Option<OwnedFd>), SimError> {
        let a = &req.args;
        let mut r = Reply::ok(op, req.seq);
        let mut fd = None;
        let dup = |f: BorrowedFd<'_>| {
            f.try_clone_to_owned().map_err(|e| SimError::Io {
                op: "dup a descriptor to send",
                source: e,
            })
        };
        let vector = |v: u64| {
            u16::try_from(v).map_err(|_| SimError::InvalidArgument(format!("interrupt vector {v}")))
        };
        let size = |v: u64, what: &str| {
            usize::try_from(v).map_err(|_| SimError::InvalidArgument(format!("{what} {v:#x}")))
        };
        match op {
            Op::Hello => {
                fd = Some(dup(self.sim.bar_fd())?);
                r.vals[..6].copy_from_slice(&[
                    self.sim.bar_len() as u64,
                    u64::from(self.pid),
                    u64::from(self.sim.namespace_count()),
                    client,
                    u64::from(proto::euid()),
                    u64::from(self.sim.interrupt_vectors()),
                ]);
            }
            Op::DmaMap => {
                let len = size(a[2], "DMA length")?;
                let mut st = self.lock();
                self.sim.dma_map(a[0], fds[0].as_fd(), a[1], len)?;
                st.maps.insert(
                    a[0],
                    MapRecord {
                        len: a[2],
                        owner: client,
                    },
                );
            }
            Op::DmaUnmap => {
                let len = size(a[1], "DMA length")?;
                let mut st = self.lock();
                self.sim.dma_unmap(a[0], len)?;
                let end = a[0].saturating_add(a[1]);
                st.maps
                    .retain(|&iova, m| !(iova >= a[0] && iova.saturating_add(m.len) <= end));
            }
            Op::NamespaceFd => {
                let nsid = u32::try_from(a[0]).map_err(|_| SimError::NoSuchNamespace(u32::MAX))?;
                let ns = self.sim.namespace_data(nsid)?;
                fd = Some(dup(ns.fd())?);
                r.vals[0] = u64::from(ns.lba_size());
                r.vals[1] = ns.blocks();
            }
            Op::Inject => {
                r.vals[0] = self.sim.faults().inject(proto::decode_rule(a)?).raw();
            }
            Op::RemoveFault => {
                r.vals[0] = u64::from(self.sim.faults().remove(FaultId::from_raw(a[0])));
            }
            Op::FaultFired => {
                let id = FaultId::from_raw(a[0]);
                r.vals[0] = self.sim.faults().fired(id);
                r.vals[1] = u64::from(self.sim.faults().is_active(id));
            }
            Op::ClearFaults => self.sim.faults().clear(),
            Op::RaiseCfs => self.sim.faults().raise_cfs(),
            Op::SetNeverReady => match a[0] {
                0 | 1 => self.sim.faults().set_never_ready(a[0] == 1),
                v => return Err(SimError::InvalidArgument(format!("never-ready flag {v}"))),
            },
            Op::RaiseAsyncEvent => {
                let t = proto::event_type(a[0])?;
                let (Ok(info), Ok(log)) = (u8::try_from(a[1]), u8::try_from(a[2])) else {
                    return Err(SimError::InvalidArgument(format!(
                        "asynchronous event info {:#x} / log page {:#x}",
                        a[1], a[2]
                    )));
                };
                self.sim.faults().raise_async_event(t, info, log);
            }
            Op::Stats => {
                r.vals[..SimStats::WORDS].copy_from_slice(&self.sim.stats().to_words());
            }
            Op::FaultCounters => {
                r.vals[..proto::COUNTER_WORDS]
                    .copy_from_slice(&proto::counters_to_words(&self.sim.faults().counters()));
            }
            Op::FatalReason => {
                if let Some(m) = self.sim.fatal_reason() {
                    r.vals[0] = 1;
                    r.set_text(&m);
                }
            }
            Op::Status => r.vals[..7].copy_from_slice(&self.status().to_words()),
            Op::Shutdown => {}
            Op::DmaErrors => {
                r.vals[0] = self.sim.dma_errors();
                if let Some(last) = self.sim.dma_error_log().pop() {
                    r.set_text(&last);
                }
            }
            Op::SetInterrupt => self
                .sim
                .set_interrupt(vector(a[0])?, Some(fds[0].as_fd()))?,
            Op::ClearInterrupt => self.sim.set_interrupt(vector(a[0])?, None)?,
            Op::Forked | Op::Started => {
                return Err(SimError::Protocol(format!("{op:?} is not a request")))
            }
        }
        Ok((r, fd))
    }

    fn status(&self) -> DaemonStatus {
        let st = self.lock();
        let mut s = DaemonStatus {
            pid: self.pid,
            clients: st.clients as u32,
            connections: st.connections,
            ..DaemonStatus::default()
        };
        for m in st.maps.values() {
            s.dma_maps += 1;
            s.dma_bytes += m.len;
            if !st.live.contains(&m.owner) {
                s.orphaned_dma_maps += 1;
                s.orphaned_dma_bytes += m.len;
            }
        }
        s
    }
}

/// Sends an error that ends the connection (the caller then closes it).
fn refuse(conn: BorrowedFd<'_>, e: &SimError) {
    let _ = proto::send(conn, Reply::error(0, 0, e).as_bytes(), &[]);
}

/// Refuses a new connection after reading its first request (for at most 2 s), so that
/// closing it does not reset it before the client reads why.
fn refuse_after_first(conn: BorrowedFd<'_>, e: &SimError) {
    let _ = proto::set_timeouts(conn, Duration::from_secs(2));
    let mut buf = [0u8; REQUEST_LEN];
    let _ = proto::recv(conn, &mut buf);
    refuse(conn, e);
}

/// Entry points for the fuzz targets (`fuzz/`, feature `fuzzing`): the daemon's request
/// handling without a daemon process.
#[cfg(feature = "fuzzing")]
pub mod fuzzing {
    use super::*;
    use nix::sys::socket::{self, AddressFamily, Shutdown, SockFlag, SockType};
    use std::sync::OnceLock;

    /// Bytes of the memfd attached to messages that carry descriptors.
    const FD_FILE_LEN: u64 = 64 << 10;
    /// Messages per connection: every one is queued on the socket before the daemon serves
    /// them, and a Unix socket queues few datagrams (`net.unix.max_dgram_qlen`).
    pub const MAX_MESSAGES: usize = 8;

    struct Fixture {
        daemon: Daemon,
        file: OwnedFd,
    }

    fn fixture() -> &'static Fixture {
        static FIXTURE: OnceLock<Fixture> = OnceLock::new();
        FIXTURE.get_or_init(|| {
            let config = SimConfig {
                namespaces: vec![crate::NamespaceConfig {
                    blocks: 2048,
                    ..Default::default()
                }],
                ..SimConfig::default()
            };
            let sim = SimController::start(config).expect("the software controller starts");
            Fixture {
                daemon: Daemon {
                    sim,
                    pid: std::process::id(),
                    path: PathBuf::from("/nonexistent/nvme-sim-fuzz.sock"),
                    ident: (0, 0),
                    grace: Duration::ZERO,
                    client_uid: proto::euid(),
                    state: Mutex::new(State::new()),
                },
                file: crate::mem::create_memfd("nvme-sim-fuzz", FD_FILE_LEN)
                    .expect("a memfd for DMA"),
            }
        })
    }

    /// Sends `messages` (bytes, and how many descriptors to attach: a 64 KiB memfd, at most
    /// 16) on one new connection of an in-process daemon, serves the connection with the
    /// daemon's own request loop (`serve_client`, as for a socket client), and parses every
    /// reply as a client does. Returns the replies' status codes. At most [`MAX_MESSAGES`]
    /// messages are sent. The daemon and its controller live as long as the process; what a
    /// connection leaves (DMA mappings, fault rules) is removed after it.
    pub fn serve(messages: &[(&[u8], usize)]) -> Vec<Result<u32, SimError>> {
        let f = fixture();
        let d = &f.daemon;
        let (client, server) = socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        )
        .expect("socketpair");
        for &(bytes, fds) in messages.iter().take(MAX_MESSAGES) {
            let fds: Vec<BorrowedFd<'_>> = (0..fds.min(16)).map(|_| f.file.as_fd()).collect();
            // A zero-length message is the end of the connection, as on a real socket.
            if proto::send(client.as_fd(), bytes, &fds).is_err() {
                break;
            }
        }
        let _ = socket::shutdown(client.as_raw_fd(), Shutdown::Write);
        let id = d.lock().register().expect("one client at a time");
        let _shutdown = d.serve_client(server.as_fd(), id);
        d.client_gone(id);
        drop(server);
        let mut replies = Vec::new();
        loop {
            let mut buf = [0u8; REPLY_LEN + 1];
            match proto::recv(client.as_fd(), &mut buf) {
                Ok(m) if m.len == 0 && !m.truncated => break,
                Ok(m) => replies.push(Reply::parse(&m, &buf).map(|r| {
                    let _ = (r.failure(), r.text());
                    r.code
                })),
                Err(_) => break,
            }
        }
        // Undo what the connection left, so that inputs do not depend on each other.
        let maps: Vec<(u64, u64)> = {
            let mut st = d.lock();
            let owned: Vec<(u64, u64)> = st
                .maps
                .iter()
                .filter(|(_, m)| m.owner == id)
                .map(|(&iova, m)| (iova, m.len))
                .collect();
            st.maps.retain(|_, m| m.owner != id);
            owned
        };
        for (iova, len) in maps {
            let _ = d.sim.dma_unmap(iova, len as usize);
        }
        d.sim.faults().clear();
        replies
    }
}
