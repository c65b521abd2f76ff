//! An NVMe/TCP target in front of the software controller (NVMe/TCP transport 1.0, the
//! Fabrics commands of NVMe 2.0), so hosts reach a [`SimController`] with
//! `trtype:TCP` as they would reach a kernel target.
//!
//! The target is a *host* of its controller, like any PCIe driver: it maps the BAR, owns DMA
//! memory it maps into the controller with [`SimController::dma_map`], enables the
//! controller once, builds the rings and rings the doorbells. Towards the network it is a
//! fabrics subsystem with a dynamic controller model:
//! - `backend`: the controller side: the admin queue, owned by one thread that multiplexes
//!   every association's admin commands on it (each gets a CID of the target's), the
//!   target's own Asynchronous Event Request (its events go to every association), the
//!   Keep Alive timers, and the pools of controller queue ids and interrupt vectors.
//! - `conn`: one TCP connection (one fabrics queue): ICReq/ICResp, Connect, Property
//!   Get/Set, the admin commands a fabrics controller answers itself, and the data of
//!   every command (in-capsule, or R2T and H2CData for writes, C2HData for reads) bounced
//!   through the connection's own DMA memory. An I/O queue is bridged to a controller I/O
//!   queue pair of its own, created on Connect and deleted when the connection goes.
//! - `pdu`: PDU framing: digests, padding, the host's data alignment.
//! - `crc32c`: the digests.
//!
//! Associations (a Connect of queue 0) each have their own CNTLID, CC and CSTS (enabling
//! and shutting down an association is virtual: the controller stays enabled), Keep Alive
//! timer and held Asynchronous Event Requests. The controller and its namespaces are
//! shared by all of them, as a subsystem's are. The discovery subsystem
//! ([`DISCOVERY_NQN`](nvme_regs::fabrics::DISCOVERY_NQN)) answers Get Log Page 70h with one
//! entry: this subsystem at the listening address.

mod backend;
mod conn;
mod crc32c;
mod pdu;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::eventfd::{EfdFlags, EventFd};
use nvme_regs::CompletionEntry;

use crate::{SimConfig, SimController, SimError, THREAD_STACK};
use backend::{lock, Backend};

/// The subsystem NQN a target serves unless [`TcpTargetOptions::subnqn`] says otherwise.
pub const DEFAULT_SUBNQN: &str = "nqn.2014-08.org.nvmexpress:nvme-sim";

/// What the target does with the digests a host asks for in its ICReq.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DigestPolicy {
    /// Turn on the digests the host asks for (the normal behaviour).
    #[default]
    Grant,
    /// Turn none on, whatever the host asks (to test hosts that require them).
    Refuse,
    /// Turn both on, even those the host did not ask for (to test hosts' checks).
    Force,
}

/// Settings of a [`TcpTarget`].
#[derive(Clone, Debug)]
pub struct TcpTargetOptions {
    /// The subsystem's NQN (default [`DEFAULT_SUBNQN`]); Connect with another one (but the
    /// discovery NQN) is refused with Connect Invalid Parameters pointing at SUBNQN.
    pub subnqn: String,
    /// Host NQNs allowed to connect; empty (the default): any host. Others get Connect
    /// Invalid Host.
    pub allowed_hosts: Vec<String>,
    /// Digests ([`DigestPolicy::Grant`] by default).
    pub digests: DigestPolicy,
    /// MAXH2CDATA granted in ICResp: the most data one H2CData PDU may carry (default
    /// 128 KiB; at least 4096).
    pub maxh2cdata: u32,
    /// The most data the target puts in one C2HData PDU (default 128 KiB).
    pub max_c2h_data: u32,
    /// In-capsule data an I/O queue command may carry (default 8 KiB; IOCCSZ reports it).
    pub in_capsule_data: u32,
    /// The largest transfer of one command (default 128 KiB; MDTS reports the smaller of
    /// this and the controller's own limit). A multiple of the controller's page size.
    pub max_transfer: u32,
    /// Entries of each queue at most (CAP.MQES + 1 as the hosts see it; default 128).
    pub max_queue_entries: u16,
}

impl Default for TcpTargetOptions {
    fn default() -> Self {
        TcpTargetOptions {
            subnqn: DEFAULT_SUBNQN.into(),
            allowed_hosts: Vec::new(),
            digests: DigestPolicy::Grant,
            maxh2cdata: 128 << 10,
            max_c2h_data: 128 << 10,
            in_capsule_data: 8192,
            max_transfer: 128 << 10,
            max_queue_entries: 128,
        }
    }
}

/// State every thread of a target shares.
pub(crate) struct Inner {
    backend: Arc<Backend>,
    registry: Arc<Registry>,
    opts: TcpTargetOptions,
    local: SocketAddr,
    /// Command slots per connection (the queue entries hosts may use).
    nslots: usize,
    /// Bytes of one command's transfer at most.
    max_xfer: usize,
    stop: AtomicBool,
    conns: Mutex<HashMap<u64, TcpStream>>,
    next_conn: AtomicU64,
}

/// A running NVMe/TCP target: a listening socket, a thread accepting connections, a
/// thread per connection (two per connection: one reads, one writes) and the software
/// controller they share. Dropping it closes every connection and stops the controller.
pub struct TcpTarget {
    inner: Arc<Inner>,
    accept: Option<JoinHandle<()>>,
}

impl SimController {
    /// Serves this controller over NVMe/TCP on `addr` (port 0: any free port, see
    /// [`TcpTarget::local_addr`]). The target becomes the controller's only host: it
    /// enables it with its own admin queue, so the controller must not be enabled yet.
    pub fn serve_tcp(
        self,
        addr: SocketAddr,
        opts: TcpTargetOptions,
    ) -> Result<TcpTarget, SimError> {
        TcpTarget::serve(self, addr, opts)
    }
}

impl TcpTarget {
    /// Starts a software controller with `config` and serves it on `addr`.
    pub fn start(
        config: SimConfig,
        addr: SocketAddr,
        opts: TcpTargetOptions,
    ) -> Result<TcpTarget, SimError> {
        TcpTarget::serve(SimController::start(config)?, addr, opts)
    }

    fn serve(
        sim: SimController,
        addr: SocketAddr,
        opts: TcpTargetOptions,
    ) -> Result<TcpTarget, SimError> {
        let bad = |m: String| Err(SimError::InvalidArgument(m));
        if opts.subnqn.is_empty()
            || opts.subnqn.len() > nvme_regs::fabrics::NQN_MAX
            || opts.subnqn == nvme_regs::fabrics::DISCOVERY_NQN
        {
            return bad(format!(
                "subsystem NQN {:?}: give 1 to {} bytes other than the discovery NQN",
                opts.subnqn,
                nvme_regs::fabrics::NQN_MAX
            ));
        }
        if opts.maxh2cdata < nvme_regs::tcp::MIN_MAXH2CDATA || !opts.maxh2cdata.is_multiple_of(4) {
            return bad(format!(
                "maxh2cdata {} (a multiple of 4, at least {})",
                opts.maxh2cdata,
                nvme_regs::tcp::MIN_MAXH2CDATA
            ));
        }
        if opts.max_c2h_data == 0
            || !opts.in_capsule_data.is_multiple_of(16)
            || opts.in_capsule_data > 1 << 20
        {
            return bad(format!(
                "max_c2h_data {} (at least 1) / in_capsule_data {} (a multiple of 16, at most 1 MiB)",
                opts.max_c2h_data, opts.in_capsule_data
            ));
        }
        let registry = Arc::new(Registry::default());
        let backend = Backend::start(sim, registry.clone())?;
        let page = backend.page;
        let fail = |b: &Backend, m: String| {
            b.stop();
            Err(SimError::InvalidArgument(m))
        };
        let mqes = backend.cap.mqes() as usize;
        let nslots = (opts.max_queue_entries as usize).min(mqes);
        if nslots < 2 {
            return fail(
                &backend,
                format!("max_queue_entries {} (at least 2)", opts.max_queue_entries),
            );
        }
        let max_xfer = opts.max_transfer as usize;
        if max_xfer < page || !max_xfer.is_multiple_of(page) || max_xfer / page > page / 8 {
            return fail(
                &backend,
                format!(
                    "max_transfer {max_xfer}: a multiple of the controller's {page}-byte page, at most {} bytes",
                    page / 8 * page
                ),
            );
        }
        let listener = match TcpListener::bind(addr) {
            Ok(l) => l,
            Err(e) => {
                backend.stop();
                return Err(SimError::Io {
                    op: "binding the NVMe/TCP listening socket",
                    source: e,
                });
            }
        };
        let local = listener.local_addr().map_err(|e| SimError::Io {
            op: "getsockname",
            source: e,
        })?;
        listener.set_nonblocking(true).map_err(|e| SimError::Io {
            op: "set_nonblocking",
            source: e,
        })?;
        let inner = Arc::new(Inner {
            backend,
            registry,
            opts,
            local,
            nslots,
            max_xfer,
            stop: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
        });
        let i = inner.clone();
        let accept = std::thread::Builder::new()
            .name("nvme-sim-tcp-accept".into())
            .stack_size(THREAD_STACK)
            .spawn(move || accept_loop(&i, listener))
            .map_err(|e| {
                inner.backend.stop();
                SimError::Thread(e)
            })?;
        Ok(TcpTarget {
            inner,
            accept: Some(accept),
        })
    }

    /// The address the target listens on (with the port the system chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local
    }

    /// The subsystem NQN hosts connect to.
    pub fn subnqn(&self) -> &str {
        &self.inner.opts.subnqn
    }

    /// The driver's transport ID string of this subsystem:
    /// `trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420 subnqn:...`.
    pub fn transport_id(&self) -> String {
        let a = self.inner.local;
        format!(
            "trtype:TCP adrfam:{} traddr:{} trsvcid:{} subnqn:{}",
            if a.is_ipv4() { "IPv4" } else { "IPv6" },
            a.ip(),
            a.port(),
            self.inner.opts.subnqn
        )
    }

    /// The software controller behind the target (its namespaces, faults, statistics).
    pub fn controller(&self) -> &SimController {
        &self.inner.backend.sim
    }

    /// Associations alive now (discovery ones included).
    pub fn associations(&self) -> usize {
        lock(&self.inner.registry.assocs).len()
    }

    /// The controller's queue id behind I/O queue `qid` of association `cntlid` (the
    /// target's own numbering, what [`Faults`](crate::Faults) rules and statistics see),
    /// while that queue is connected.
    pub fn controller_queue(&self, cntlid: u16, qid: u16) -> Option<u16> {
        let a = self.inner.registry.get(cntlid)?;
        let q = lock(&a.queues);
        q.get(&qid)?.sim_qid
    }

    /// TCP connections open now.
    pub fn connections(&self) -> usize {
        lock(&self.inner.conns).len()
    }
}

impl Drop for TcpTarget {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Release);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        self.inner.backend.stop();
    }
}

impl std::fmt::Debug for TcpTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpTarget")
            .field("local_addr", &self.inner.local)
            .field("subnqn", &self.inner.opts.subnqn)
            .finish_non_exhaustive()
    }
}

fn accept_loop(inner: &Arc<Inner>, listener: TcpListener) {
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    while !inner.stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, _)) => {
                threads.retain(|t| !t.is_finished());
                let id = inner.next_conn.fetch_add(1, Ordering::Relaxed);
                let Ok(clone) = stream.try_clone() else {
                    continue;
                };
                if stream.set_nonblocking(false).is_err() {
                    continue;
                }
                lock(&inner.conns).insert(id, clone);
                let i = inner.clone();
                match std::thread::Builder::new()
                    .name(format!("nvme-sim-tcp-{id}"))
                    .stack_size(THREAD_STACK)
                    .spawn(move || conn::serve(i, stream, id))
                {
                    Ok(t) => threads.push(t),
                    Err(_) => {
                        if let Some(s) = lock(&inner.conns).remove(&id) {
                            let _ = s.shutdown(Shutdown::Both);
                        }
                    }
                }
            }
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::Interrupted =>
            {
                let mut fds = [nix::poll::PollFd::new(
                    listener.as_fd(),
                    nix::poll::PollFlags::POLLIN,
                )];
                let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(20u16));
            }
            // Out of descriptors and the like: wait for connections to go.
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    for s in lock(&inner.conns).values() {
        let _ = s.shutdown(Shutdown::Both);
    }
    for t in threads {
        let _ = t.join();
    }
}

/// What a connection's writer thread sends, in order.
pub(crate) enum Out {
    /// An R2T asking for all of a command's data.
    R2t { slot: u16, cid: u16, len: u32 },
    /// A command of slot `slot` completed with `cqe` (its CID is the target's): send its
    /// data if it succeeded and moves data to the host, then its response; free the slot.
    Done { slot: u16, cqe: CompletionEntry },
    /// A response to a command that got no slot.
    Resp(CompletionEntry),
    /// A C2HTermReq: the last thing sent on the connection.
    Term(Vec<u8>),
    /// Stop the writer.
    Close,
}

/// The way into a connection's writer thread: a channel and the eventfd it waits on
/// (which the controller also signals when it posts to the connection's I/O queue).
#[derive(Clone)]
pub(crate) struct Outbox {
    tx: mpsc::Sender<Out>,
    wake: Arc<EventFd>,
}

impl Outbox {
    pub(crate) fn new() -> io::Result<(Outbox, mpsc::Receiver<Out>)> {
        let (tx, rx) = mpsc::channel();
        let wake = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(io::Error::from)?;
        Ok((
            Outbox {
                tx,
                wake: Arc::new(wake),
            },
            rx,
        ))
    }

    /// Hands `o` to the writer and wakes it.
    pub(crate) fn send(&self, o: Out) {
        // The writer is gone only once the connection is torn down: nothing to tell then.
        if self.tx.send(o).is_ok() {
            let _ = self.wake.write(1);
        }
    }
}

/// Async events an association keeps until the host asks for them.
const MAX_PENDING_EVENTS: usize = 16;
/// Asynchronous Event Requests an association may hold (AERL + 1).
pub(crate) const AER_LIMIT: usize = 4;

/// One association: a host's admin queue and the I/O queues connected to its CNTLID.
pub(crate) struct Assoc {
    pub(crate) cntlid: u16,
    pub(crate) discovery: bool,
    pub(crate) hostnqn: String,
    pub(crate) subnqn: String,
    /// Keep Alive Timeout in ms (0: none).
    pub(crate) kato_ms: AtomicU32,
    last_activity: Mutex<Instant>,
    /// CC and CSTS as this association sees them.
    pub(crate) regs: Mutex<(u32, u32)>,
    /// I/O queues granted by Set Features Number of Queues.
    pub(crate) io_queues: AtomicU16,
    /// The admin connection's socket (to end the association).
    admin: TcpStream,
    /// Connected I/O queues by QID.
    pub(crate) queues: Mutex<HashMap<u16, IoQueue>>,
    pub(crate) aers: Mutex<AerState>,
    pub(crate) dead: AtomicBool,
}

/// An I/O queue connected to an association.
pub(crate) struct IoQueue {
    /// Its connection's socket (to end it).
    pub(crate) sock: TcpStream,
    /// The controller's queue id behind it, once created.
    pub(crate) sim_qid: Option<u16>,
}

/// Asynchronous Event Requests held and events not yet reported.
#[derive(Default)]
pub(crate) struct AerState {
    pub(crate) held: Vec<(Outbox, u16)>,
    pub(crate) events: VecDeque<u32>,
}

impl Assoc {
    /// Restarts the Keep Alive timer (every command does).
    pub(crate) fn touch(&self) {
        *lock(&self.last_activity) = Instant::now();
    }

    /// Whether CC.EN is set.
    pub(crate) fn enabled(&self) -> bool {
        lock(&self.regs).0 & 1 != 0
    }

    /// Ends the association: shuts down its connections (their threads clean up).
    pub(crate) fn kill(&self) {
        self.dead.store(true, Ordering::Release);
        let _ = self.admin.shutdown(Shutdown::Both);
        self.end_io_queues();
    }

    /// Ends the association's I/O queue connections (a controller reset deletes them).
    pub(crate) fn end_io_queues(&self) {
        for q in lock(&self.queues).values() {
            let _ = q.sock.shutdown(Shutdown::Both);
        }
    }

    /// Completes a held Asynchronous Event Request with `dw0`, or keeps the event.
    fn deliver(&self, dw0: u32) {
        let mut a = lock(&self.aers);
        if let Some((out, slot)) = a.held.pop() {
            out.send(Out::Done {
                slot,
                cqe: CompletionEntry {
                    dw0,
                    ..Default::default()
                },
            });
        } else if a.events.len() < MAX_PENDING_EVENTS {
            a.events.push_back(dw0);
        }
    }
}

/// The associations of a target.
#[derive(Default)]
pub(crate) struct Registry {
    assocs: Mutex<HashMap<u16, Arc<Assoc>>>,
    next_cntlid: Mutex<u16>,
}

/// What a new association is made of.
pub(crate) struct NewAssoc {
    pub(crate) discovery: bool,
    pub(crate) hostnqn: String,
    pub(crate) subnqn: String,
    pub(crate) kato_ms: u32,
    pub(crate) io_queues: u16,
    pub(crate) admin: TcpStream,
}

impl Registry {
    /// Creates an association with a CNTLID of its own (`None`: every CNTLID is in use).
    pub(crate) fn create(&self, n: NewAssoc) -> Option<Arc<Assoc>> {
        let mut map = lock(&self.assocs);
        let mut next = lock(&self.next_cntlid);
        // CNTLIDs 1..=0xffef (0xfff0 and up are reserved).
        for _ in 0..0xffef {
            *next = if *next >= 0xffef { 1 } else { *next + 1 };
            if let std::collections::hash_map::Entry::Vacant(slot) = map.entry(*next) {
                let a = Arc::new(Assoc {
                    cntlid: *next,
                    discovery: n.discovery,
                    hostnqn: n.hostnqn,
                    subnqn: n.subnqn,
                    kato_ms: AtomicU32::new(n.kato_ms),
                    last_activity: Mutex::new(Instant::now()),
                    regs: Mutex::new((0, 0)),
                    io_queues: AtomicU16::new(n.io_queues),
                    admin: n.admin,
                    queues: Mutex::new(HashMap::new()),
                    aers: Mutex::new(AerState::default()),
                    dead: AtomicBool::new(false),
                });
                slot.insert(a.clone());
                return Some(a);
            }
        }
        None
    }

    pub(crate) fn get(&self, cntlid: u16) -> Option<Arc<Assoc>> {
        lock(&self.assocs).get(&cntlid).cloned()
    }

    pub(crate) fn remove(&self, cntlid: u16) {
        lock(&self.assocs).remove(&cntlid);
    }

    /// The controller reported an asynchronous event: every I/O association hears of it.
    fn async_event(&self, dw0: u32) {
        let all: Vec<_> = lock(&self.assocs).values().cloned().collect();
        for a in all.iter().filter(|a| !a.discovery) {
            a.deliver(dw0);
        }
    }

    /// Ends the associations whose Keep Alive Timeout passed without a command.
    fn expire_keep_alive(&self) {
        let all: Vec<_> = lock(&self.assocs).values().cloned().collect();
        for a in all {
            let kato = a.kato_ms.load(Ordering::Relaxed);
            if kato != 0
                && !a.dead.load(Ordering::Acquire)
                && lock(&a.last_activity).elapsed() > Duration::from_millis(kato as u64)
            {
                a.kill();
            }
        }
    }
}
