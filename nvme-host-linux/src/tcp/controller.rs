//! [`TcpController`]: an NVMe/TCP controller's admin queue. Connecting makes the TCP
//! connection, exchanges ICReq/ICResp, sends the Fabrics Connect of the admin queue, and
//! enables the controller over properties (CC.EN, then CSTS.RDY); a thread sends Keep Alive
//! at half the granted KATO; dropping it shuts the controller down (CC.SHN) and closes.

use std::net::TcpStream;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nvme_core::Command;
use nvme_regs::entry::{CompletionEntry, SubmissionEntry};
use nvme_regs::fabrics::{
    ConnectCommand, ConnectData, ConnectResponse, DiscoveryLogEntry, DiscoveryLogHeader,
    FabricsStatus, InvalidParameter, PropertyCommand, PropertySize, CNTLID_DYNAMIC,
    DISCOVERY_LOG_PAGE, DISCOVERY_NQN,
};
use nvme_regs::features::{fid, FeatureSelect};
use nvme_regs::identify::{IdentifyController, IdentifyNamespace, Uuid};
use nvme_regs::opcode::AdminOpcode;
use nvme_regs::registers::{offset, Cap, Cc, Csts, ShutdownNotification, ShutdownStatus, Vs};
use nvme_regs::status::GenericStatus;
use nvme_regs::tcp::ADMIN_IN_CAPSULE_DATA;
use nvme_regs::{Status, StatusCodeType};
use zerocopy::{FromBytes, IntoBytes};

use super::ioq::{io_in_capsule, MemoryTable, QueueParams, TcpRings};
use super::link::{Link, LinkOptions, Stream};
use super::queue::{Data, SyncQueue};
use super::TcpError;
use crate::trid::TcpOptions;
use crate::{Error, Result};

/// Admin queue entries asked for in Connect (SQSIZE is 0's based).
const ADMIN_QUEUE_ENTRIES: u16 = 32;
/// How long an I/O queue's Connect is retried while the target reports its queue id still
/// connected (see [`TcpController::connect_io_queue`]).
pub(crate) const QUEUE_IN_USE_WAIT: Duration = Duration::from_secs(2);

/// This host's identity on the fabric: its NQN and 16-byte host identifier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostIdentity {
    /// The host NQN.
    pub hostnqn: String,
    /// The host identifier (a UUID).
    pub hostid: [u8; 16],
}

pub(super) fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let hex: String = s.trim().chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(id)
}

impl HostIdentity {
    /// The identity nvme-cli would use: `/etc/nvme/hostnqn` and `/etc/nvme/hostid` when
    /// they exist; else a UUID from `/etc/machine-id` (stable across runs), else a random
    /// one, with the NQN `nqn.2014-08.org.nvmexpress:uuid:<uuid>`.
    pub fn of_this_host() -> HostIdentity {
        let read = |p: &str| std::fs::read_to_string(p).ok();
        let mut random = [0u8; 16];
        if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
            let _ = std::io::Read::read_exact(&mut f, &mut random);
        }
        Self::from_files(
            read("/etc/nvme/hostnqn").as_deref(),
            read("/etc/nvme/hostid").as_deref(),
            read("/etc/machine-id").as_deref(),
            random,
        )
    }

    /// [`HostIdentity::of_this_host`] from the files' contents (`None`: no such file) and
    /// the random identifier used when neither id file gives one.
    pub fn from_files(
        hostnqn: Option<&str>,
        hostid: Option<&str>,
        machine_id: Option<&str>,
        random: [u8; 16],
    ) -> HostIdentity {
        let hostid = hostid
            .and_then(parse_uuid)
            .or_else(|| machine_id.and_then(parse_uuid))
            .unwrap_or(random);
        let hostnqn = hostnqn
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .unwrap_or_else(|| format!("nqn.2014-08.org.nvmexpress:uuid:{}", Uuid(hostid)));
        HostIdentity { hostnqn, hostid }
    }
}

/// How to connect.
#[derive(Clone, Debug)]
pub struct TcpControllerOptions {
    /// Keep-alive timeout asked for in Connect, in milliseconds (0: none; a discovery
    /// controller may still grant one).
    pub kato_ms: u32,
    /// How long to wait for the TCP connection and for each response.
    pub timeout: Duration,
    /// This host's identity (default: [`HostIdentity::of_this_host`]; `hostnqn:` in the
    /// transport id overrides the NQN).
    pub host: Option<HostIdentity>,
    /// Send Keep Alive from a thread of its own at half the granted KATO (default); off,
    /// the caller sends [`TcpController::keep_alive`] in time itself.
    pub keep_alive_thread: bool,
}

impl Default for TcpControllerOptions {
    fn default() -> Self {
        TcpControllerOptions {
            kato_ms: 5000,
            timeout: Duration::from_secs(10),
            host: None,
            keep_alive_thread: true,
        }
    }
}

/// The Discovery Log Page as read (its generation counter was the same before and after).
#[derive(Clone, Debug)]
pub struct DiscoveryLog {
    /// Generation counter.
    pub genctr: u64,
    /// Record format.
    pub recfmt: u16,
    /// The entries.
    pub entries: Vec<DiscoveryLogEntry>,
}

/// State shared with the keep-alive thread.
struct Shared {
    queue: Mutex<SyncQueue>,
    kato_ms: u32,
    timeout: Duration,
}

/// An NVMe/TCP controller's admin queue.
pub struct TcpController {
    shared: Arc<Shared>,
    keep_alive: Mutex<Option<(mpsc::Sender<()>, JoinHandle<()>)>>,
    /// Shut down already ([`TcpController::shutdown`]).
    shut_down: std::sync::atomic::AtomicBool,
    cntlid: u16,
    cap: Cap,
    vs: Vs,
    subnqn: String,
    hostnqn: String,
    peer: String,
    identify: Box<IdentifyController>,
    /// What I/O queues connect with: the transport id, this host, the timeout.
    options: TcpOptions,
    host: HostIdentity,
    timeout: Duration,
    /// What this association was connected with (for [`TcpController::connect_again`]).
    connected_with: TcpControllerOptions,
}

impl std::fmt::Debug for TcpController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpController")
            .field("peer", &self.peer)
            .field("subnqn", &self.subnqn)
            .field("cntlid", &self.cntlid)
            .finish()
    }
}

fn open_tcp(o: &TcpOptions, timeout: Duration) -> Result<Box<dyn Stream>, TcpError> {
    let peer = o.addr.to_string();
    let s = TcpStream::connect_timeout(&o.addr, timeout).map_err(|e| {
        if e.kind() == std::io::ErrorKind::ConnectionRefused {
            TcpError::ConnectionRefused { peer: peer.clone() }
        } else {
            TcpError::Connect {
                peer: peer.clone(),
                source: e,
            }
        }
    })?;
    s.set_nodelay(true).map_err(|e| TcpError::Io {
        peer,
        what: "setting TCP_NODELAY".into(),
        source: e,
    })?;
    Ok(Box::new(s))
}

impl TcpController {
    /// Connects to the subsystem `o.subnqn` (an error names `subnqn:` when it is missing).
    pub fn connect(o: &TcpOptions, opts: &TcpControllerOptions) -> Result<TcpController> {
        let subnqn = o.subsystem().map_err(Error::BadTransport)?.to_string();
        let stream = open_tcp(o, opts.timeout)?;
        Self::over_stream(stream, o, &subnqn, opts)
    }

    /// Connects to the discovery controller at `o`'s address (`o.subnqn` when it names one,
    /// else the well-known discovery NQN).
    pub fn connect_discovery(o: &TcpOptions, opts: &TcpControllerOptions) -> Result<TcpController> {
        let subnqn = o
            .subnqn
            .clone()
            .unwrap_or_else(|| DISCOVERY_NQN.to_string());
        let stream = open_tcp(o, opts.timeout)?;
        Self::over_stream(stream, o, &subnqn, opts)
    }

    /// Connects over a stream the caller opened (a socket pair in tests) to `subnqn`.
    pub fn over_stream(
        stream: Box<dyn Stream>,
        o: &TcpOptions,
        subnqn: &str,
        opts: &TcpControllerOptions,
    ) -> Result<TcpController> {
        let peer = o.addr.to_string();
        let mut host = opts.host.clone().unwrap_or_else(HostIdentity::of_this_host);
        if let Some(n) = &o.hostnqn {
            host.hostnqn = n.clone();
        }
        let link = Link::establish(
            stream,
            peer.clone(),
            LinkOptions {
                header_digest: o.header_digest,
                data_digest: o.data_digest,
            },
            opts.timeout,
        )?;
        let mut q = SyncQueue::new(link, ADMIN_IN_CAPSULE_DATA);
        let admin = ConnectCommand::new(0, ADMIN_QUEUE_ENTRIES - 1, opts.kato_ms);
        let cntlid = fabrics_connect(&mut q, &host, subnqn, admin, CNTLID_DYNAMIC)?;
        let (cap, vs) = enable(&mut q, opts.timeout)?;
        let mut c = TcpController {
            shared: Arc::new(Shared {
                queue: Mutex::new(q),
                kato_ms: 0,
                timeout: opts.timeout,
            }),
            keep_alive: Mutex::new(None),
            shut_down: std::sync::atomic::AtomicBool::new(false),
            cntlid,
            cap,
            vs,
            subnqn: subnqn.to_string(),
            hostnqn: host.hostnqn.clone(),
            peer,
            identify: Box::new(<IdentifyController as zerocopy::FromZeros>::new_zeroed()),
            options: o.clone(),
            connected_with: TcpControllerOptions {
                host: Some(host.clone()),
                ..opts.clone()
            },
            host,
            timeout: opts.timeout,
        };
        c.identify = Box::new(c.identify_controller()?);
        // The granted KATO (the controller may round what Connect asked for); a controller
        // without the feature keeps what was asked.
        let granted = c
            .get_features(fid::KEEP_ALIVE_TIMER, FeatureSelect::Current, 0, 0)
            .unwrap_or(opts.kato_ms);
        Arc::get_mut(&mut c.shared).expect("not shared yet").kato_ms = granted;
        if granted != 0 && opts.keep_alive_thread {
            *c.keep_alive.get_mut().unwrap_or_else(|p| p.into_inner()) =
                Some(start_keep_alive(&c.shared, granted));
        }
        Ok(c)
    }

    /// The controller ID Connect granted.
    pub fn cntlid(&self) -> u16 {
        self.cntlid
    }
    /// The keep-alive timeout in force, in milliseconds (0: none).
    pub fn kato_ms(&self) -> u32 {
        self.shared.kato_ms
    }
    /// CAP as read at connect.
    pub fn cap(&self) -> Cap {
        self.cap
    }
    /// VS as read at connect.
    pub fn version(&self) -> Vs {
        self.vs
    }
    /// The subsystem NQN connected to.
    pub fn subnqn(&self) -> &str {
        &self.subnqn
    }
    /// This host's NQN as sent in Connect.
    pub fn hostnqn(&self) -> &str {
        &self.hostnqn
    }
    /// The controller's address.
    pub fn peer(&self) -> &str {
        &self.peer
    }
    /// Identify Controller as read at connect.
    pub fn identify(&self) -> &IdentifyController {
        &self.identify
    }
    /// What ICResp granted: digests, data alignment, MAXH2CDATA.
    pub fn negotiated(&self) -> super::link::Negotiated {
        self.queue().link.negotiated()
    }

    /// A new association with the same subsystem, as this one was made (same address,
    /// host, digests, KATO): what a reconnect after a dropped connection or a target
    /// restart, or a controller reset over TCP, starts with.
    pub fn connect_again(&self) -> Result<TcpController> {
        let stream = open_tcp(&self.options, self.timeout)?;
        Self::over_stream(stream, &self.options, &self.subnqn, &self.connected_with)
    }

    /// Opens I/O queue `qid` of `entries` entries over a connection of its own: TCP to the
    /// admin queue's address, ICReq/ICResp with the same digests, Fabrics Connect with this
    /// association's host and controller ID. `max_transfer` bounds one command's data;
    /// `memory` is where its commands' data pointers are resolved.
    ///
    /// A target still tearing down an earlier connection of the same queue id answers
    /// Connect with Command Sequence Error (Linux's nvmet does, for a moment after the
    /// connection closed): Connect is tried again, with growing pauses, for up to
    /// [`QUEUE_IN_USE_WAIT`].
    pub(crate) fn connect_io_queue(
        &self,
        qid: u16,
        entries: u32,
        max_transfer: usize,
        memory: Arc<MemoryTable>,
    ) -> Result<TcpRings> {
        let start = std::time::Instant::now();
        let mut pause = Duration::from_millis(5);
        loop {
            let stream = open_tcp(&self.options, self.timeout)?;
            match self.connect_io_queue_over(stream, qid, entries, max_transfer, memory.clone()) {
                Err(Error::Tcp(TcpError::QueueInUse { .. }))
                    if start.elapsed() + pause < QUEUE_IN_USE_WAIT =>
                {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                r => return r,
            }
        }
    }

    /// [`connect_io_queue`](Self::connect_io_queue) over a stream the caller opened.
    pub(crate) fn connect_io_queue_over(
        &self,
        stream: Box<dyn Stream>,
        qid: u16,
        entries: u32,
        max_transfer: usize,
        memory: Arc<MemoryTable>,
    ) -> Result<TcpRings> {
        let sqsize = u16::try_from(entries.saturating_sub(1)).map_err(|_| {
            Error::Invalid(format!(
                "I/O queue of {entries} entries: NVMe/TCP queues have at most 65536"
            ))
        })?;
        let link = Link::establish(
            stream,
            self.peer.clone(),
            LinkOptions {
                header_digest: self.options.header_digest,
                data_digest: self.options.data_digest,
            },
            self.timeout,
        )?;
        let mut q = SyncQueue::new(link, ADMIN_IN_CAPSULE_DATA);
        let cmd = ConnectCommand::new(qid, sqsize, 0);
        fabrics_connect(&mut q, &self.host, &self.subnqn, cmd, self.cntlid)?;
        let (stream, peer, neg) = q.link.into_parts();
        let params = QueueParams {
            qid,
            entries,
            in_capsule: io_in_capsule(&self.identify),
            max_transfer,
        };
        Ok(TcpRings::new(stream, peer, neg, params, memory)?)
    }

    /// Has the admin queue's connection failed (the association is gone)? The failure.
    pub(crate) fn failure(&self) -> Option<String> {
        self.queue().failure().map(str::to_string)
    }

    fn queue(&self) -> MutexGuard<'_, SyncQueue> {
        self.shared.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs an admin command; an error status becomes [`Error::Nvme`].
    pub fn admin(&self, sqe: SubmissionEntry, data: Data<'_>) -> Result<CompletionEntry> {
        let mut q = self.queue();
        let c = run(&mut q, sqe, data, &self.shared)?;
        check(sqe.opcode, c)
    }

    /// [`admin`](Self::admin) waiting up to `timeout` for each PDU of the command (instead
    /// of the connect options' timeout).
    pub fn admin_with_timeout(
        &self,
        sqe: SubmissionEntry,
        data: Data<'_>,
        timeout: Duration,
    ) -> Result<CompletionEntry> {
        let mut q = self.queue();
        let changed = timeout != self.shared.timeout;
        if changed {
            q.link.set_timeout(timeout)?;
        }
        let c = run(&mut q, sqe, data, &self.shared);
        if changed {
            let _ = q.link.set_timeout(self.shared.timeout);
        }
        check(sqe.opcode, c?)
    }

    /// Identify Controller.
    pub fn identify_controller(&self) -> Result<IdentifyController> {
        let mut b = [0u8; 4096];
        self.admin(Command::identify(1, 0, 0).0, Data::ToHost(&mut b))?;
        Ok(IdentifyController::read_from_bytes(&b).expect("4096 bytes"))
    }

    /// Identify Namespace.
    pub fn identify_namespace(&self, nsid: u32) -> Result<IdentifyNamespace> {
        let mut b = [0u8; 4096];
        self.admin(Command::identify(0, nsid, 0).0, Data::ToHost(&mut b))?;
        Ok(IdentifyNamespace::read_from_bytes(&b).expect("4096 bytes"))
    }

    /// The active namespace ids (Identify CNS 02h).
    pub fn active_namespaces(&self) -> Result<Vec<u32>> {
        let mut b = [0u8; 4096];
        self.admin(Command::identify(2, 0, 0).0, Data::ToHost(&mut b))?;
        Ok(b.chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .take_while(|&n| n != 0)
            .collect())
    }

    /// Get Log Page `lid` for `nsid` from byte `offset` into `buf`.
    pub fn get_log_page(&self, lid: u8, nsid: u32, offset: u64, buf: &mut [u8]) -> Result<()> {
        if buf.is_empty() || !buf.len().is_multiple_of(4) || !offset.is_multiple_of(4) {
            return Err(Error::Invalid(format!(
                "Get Log Page of {} bytes at offset {offset}: both must be multiples of 4 (and the length nonzero)",
                buf.len()
            )));
        }
        let cmd = Command::get_log_page(lid, nsid, buf.len() as u32, offset);
        self.admin(cmd.0, Data::ToHost(buf))?;
        Ok(())
    }

    /// Get Features: dword 0 of the completion.
    pub fn get_features(&self, fid: u8, sel: FeatureSelect, nsid: u32, cdw11: u32) -> Result<u32> {
        let c = self.admin(Command::get_features(fid, sel, nsid, cdw11).0, Data::None)?;
        Ok(c.dw0)
    }

    /// Set Features: dword 0 of the completion.
    pub fn set_features(&self, fid: u8, nsid: u32, cdw11: u32, save: bool) -> Result<u32> {
        let c = self.admin(Command::set_features(fid, nsid, cdw11, save).0, Data::None)?;
        Ok(c.dw0)
    }

    /// Sends one Keep Alive.
    pub fn keep_alive(&self) -> Result<()> {
        self.admin(Command::new(AdminOpcode::KeepAlive as u8, 0).0, Data::None)?;
        Ok(())
    }

    /// Property Get of a 4- or 8-byte property.
    pub fn property_get(&self, offset: u32, size: PropertySize) -> Result<u64> {
        let mut q = self.queue();
        property_get(&mut q, offset, size)
    }

    /// CSTS, read now.
    pub fn csts(&self) -> Result<Csts> {
        Ok(Csts(
            self.property_get(offset::CSTS as u32, PropertySize::Four)? as u32,
        ))
    }

    /// The Discovery Log Page, read until its generation counter holds still (a discovery
    /// controller: see [`TcpController::connect_discovery`]).
    pub fn discovery_log(&self) -> Result<DiscoveryLog> {
        const RETRIES: usize = 10;
        const CHUNK: usize = 16 * 1024;
        let read_header = |c: &Self| -> Result<DiscoveryLogHeader> {
            let mut h = DiscoveryLogHeader::default();
            c.get_log_page(DISCOVERY_LOG_PAGE, 0, 0, h.as_mut_bytes())?;
            Ok(h)
        };
        let mut h = read_header(self)?;
        for _ in 0..RETRIES {
            let n = usize::try_from(h.numrec).unwrap_or(usize::MAX).min(4096);
            let mut bytes = vec![0u8; n * 1024];
            for (i, chunk) in bytes.chunks_mut(CHUNK).enumerate() {
                let off = 1024 + (i * CHUNK) as u64;
                self.get_log_page(DISCOVERY_LOG_PAGE, 0, off, chunk)?;
            }
            let again = read_header(self)?;
            if again.genctr == h.genctr {
                let entries = bytes
                    .chunks_exact(1024)
                    .map(|c| DiscoveryLogEntry::read_from_bytes(c).expect("1024 bytes"))
                    .collect();
                return Ok(DiscoveryLog {
                    genctr: h.genctr,
                    recfmt: h.recfmt,
                    entries,
                });
            }
            h = again;
        }
        Err(Error::Transport(format!(
            "NVMe/TCP {}: the discovery log kept changing (generation counter moved {RETRIES} times while it was read); try again",
            self.peer
        )))
    }
}

/// Connects to the discovery controller at `o`'s address and reads its log.
pub fn discover(o: &TcpOptions, opts: &TcpControllerOptions) -> Result<DiscoveryLog> {
    let opts = TcpControllerOptions {
        kato_ms: 0,
        ..opts.clone()
    };
    TcpController::connect_discovery(o, &opts)?.discovery_log()
}

/// Runs a command, turning a closed connection into keep-alive expiry when the admin queue
/// had been idle for longer than the KATO.
fn run(
    q: &mut SyncQueue,
    sqe: SubmissionEntry,
    data: Data<'_>,
    shared: &Shared,
) -> Result<CompletionEntry> {
    let idle = q.last_completion.elapsed();
    match q.execute(sqe, data) {
        Err(TcpError::Closed { peer, .. })
            if shared.kato_ms != 0 && idle >= Duration::from_millis(shared.kato_ms as u64) =>
        {
            Err(TcpError::KeepAliveExpired {
                peer,
                kato_ms: shared.kato_ms,
                idle_ms: idle.as_millis() as u64,
            }
            .into())
        }
        r => Ok(r?),
    }
}

fn check(opcode: u8, c: CompletionEntry) -> Result<CompletionEntry> {
    let status = c.status();
    if status.is_success() {
        Ok(c)
    } else {
        Err(Error::Nvme {
            opcode,
            admin: true,
            status,
        })
    }
}

fn copy_nqn(field: &mut [u8; 256], s: &str) {
    let n = s.len().min(255);
    field[..n].copy_from_slice(&s.as_bytes()[..n]);
}

/// Fabrics Connect `cmd` (the admin queue's, or an I/O queue's naming the association's
/// controller `cntlid`); the granted controller ID.
fn fabrics_connect(
    q: &mut SyncQueue,
    host: &HostIdentity,
    subnqn: &str,
    cmd: ConnectCommand,
    cntlid: u16,
) -> Result<u16> {
    let mut data = ConnectData {
        hostid: host.hostid,
        cntlid,
        ..Default::default()
    };
    copy_nqn(&mut data.subnqn, subnqn);
    copy_nqn(&mut data.hostnqn, &host.hostnqn);
    let qid = cmd.qid;
    let cmd = cmd.to_entry();
    let c = q.execute(cmd, Data::FromHost(data.as_bytes()))?;
    let status = c.status();
    if status.is_success() {
        let r = ConnectResponse::from_dword(c.dw0);
        if r.authreq != 0 {
            return Err(TcpError::ConnectRejected {
                peer: q.link.peer.clone(),
                reason: "the subsystem requires in-band authentication (DH-HMAC-CHAP), which this host does not do".into(),
            }
            .into());
        }
        return Ok(r.cntlid);
    }
    if qid != 0 && status.is_generic(GenericStatus::CommandSequenceError) {
        return Err(TcpError::QueueInUse {
            peer: q.link.peer.clone(),
            qid,
        }
        .into());
    }
    Err(connect_error(q.link.peer.clone(), status, c.dw0, subnqn, &host.hostnqn).into())
}

/// The error a failed Connect's completion stands for.
fn connect_error(peer: String, status: Status, dw0: u32, subnqn: &str, hostnqn: &str) -> TcpError {
    let fs = if status.sct() == StatusCodeType::CommandSpecific {
        FabricsStatus::from_code(status.sc())
    } else {
        None
    };
    let p = InvalidParameter::from_dword(dw0);
    match fs {
        Some(FabricsStatus::ConnectInvalidHost) => TcpError::HostNotAllowed {
            peer,
            subnqn: subnqn.into(),
            hostnqn: hostnqn.into(),
        },
        Some(FabricsStatus::ConnectInvalidParameters)
            if p.in_data && p.offset == ConnectData::SUBNQN_OFFSET =>
        {
            TcpError::NoSuchSubsystem {
                peer,
                subnqn: subnqn.into(),
            }
        }
        Some(FabricsStatus::ConnectInvalidParameters) => {
            let what = match (p.in_data, p.offset) {
                (true, ConnectData::HOSTNQN_OFFSET) => "the host NQN".to_string(),
                (true, ConnectData::CNTLID_OFFSET) => "the controller ID".to_string(),
                (true, ConnectData::HOSTID_OFFSET) => "the host identifier".to_string(),
                (true, o) => format!("byte {o} of the Connect data"),
                (false, 44) => "the queue size (SQSIZE)".to_string(),
                (false, 42) => "the queue id".to_string(),
                (false, o) => format!("byte {o} of the Connect command"),
            };
            TcpError::ConnectRejected {
                peer,
                reason: format!("Connect Invalid Parameters: {what} was refused"),
            }
        }
        Some(s) => TcpError::ConnectRejected {
            peer,
            reason: s.name().to_string(),
        },
        None => TcpError::ConnectRejected {
            peer,
            reason: format!("{status}"),
        },
    }
}

fn property_get(q: &mut SyncQueue, offset: u32, size: PropertySize) -> Result<u64> {
    let cmd = PropertyCommand::get(offset, size).to_entry();
    let c = check(cmd.opcode, q.execute(cmd, Data::None)?)?;
    let v = c.dw0 as u64 | (c.dw1 as u64) << 32;
    Ok(if size == PropertySize::Four {
        v & 0xffff_ffff
    } else {
        v
    })
}

fn property_set(q: &mut SyncQueue, offset: u32, value: u32) -> Result<()> {
    let cmd = PropertyCommand::set(offset, PropertySize::Four, value as u64).to_entry();
    check(cmd.opcode, q.execute(cmd, Data::None)?)?;
    Ok(())
}

/// Waits (polling CSTS) until `done` holds or CAP.TO passes.
fn wait_csts(
    q: &mut SyncQueue,
    limit: Duration,
    what: &str,
    done: impl Fn(Csts) -> bool,
) -> Result<Csts> {
    let start = Instant::now();
    loop {
        let csts = Csts(property_get(q, offset::CSTS as u32, PropertySize::Four)? as u32);
        if csts.cfs() {
            return Err(Error::ControllerFatal);
        }
        if done(csts) {
            return Ok(csts);
        }
        if start.elapsed() >= limit {
            return Err(Error::Transport(format!(
                "NVMe/TCP {}: the controller did not {what} within {} ms (CSTS {:#x})",
                q.link.peer,
                limit.as_millis(),
                csts.0
            )));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The enable sequence over properties: CAP and VS, CC (NVM command set, 64/16-byte
/// entries, 4 KiB pages, EN), then CSTS.RDY within CAP.TO.
fn enable(q: &mut SyncQueue, timeout: Duration) -> Result<(Cap, Vs)> {
    let cap = Cap(property_get(q, offset::CAP as u32, PropertySize::Eight)?);
    let vs = Vs(property_get(q, offset::VS as u32, PropertySize::Four)? as u32);
    let cc = Cc(0)
        .with_css(0)
        .with_mps(0)
        .with_ams(0)
        .with_iosqes(6)
        .with_iocqes(4)
        .with_en(true);
    property_set(q, offset::CC as u32, cc.0)?;
    let limit = Duration::from_millis(cap.timeout_ms().max(500) as u64).max(timeout);
    wait_csts(q, limit, "become ready (CSTS.RDY)", |c| c.rdy())?;
    Ok((cap, vs))
}

fn start_keep_alive(shared: &Arc<Shared>, kato_ms: u32) -> (mpsc::Sender<()>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel::<()>();
    let shared = Arc::clone(shared);
    let period = Duration::from_millis((kato_ms / 2).max(1) as u64);
    let h = std::thread::Builder::new()
        .name("nvme-tcp-keepalive".into())
        .spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(period) {
                let mut q = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
                // Only when the queue was idle: any command resets the controller's timer.
                if q.last_completion.elapsed() < period {
                    continue;
                }
                let cmd = Command::new(AdminOpcode::KeepAlive as u8, 0).0;
                let r = run(&mut q, cmd, Data::None, &shared).and_then(|c| check(cmd.opcode, c));
                if let Err(e) = r {
                    // Still under the queue's lock: the next command reports this.
                    q.mark_failed(format!("Keep Alive (from the keep-alive thread): {e}"));
                    return;
                }
            }
        })
        .expect("spawning the keep-alive thread");
    (tx, h)
}

impl TcpController {
    /// Stops Keep Alive and shuts the controller down (CC.SHN, then CSTS.SHST within
    /// 500 ms), once; best effort (the association ends with the socket anyway). Dropping
    /// does it when it was not done.
    pub fn shutdown(&self) {
        if self
            .shut_down
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        let ka = self
            .keep_alive
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some((tx, h)) = ka {
            drop(tx);
            let _ = h.join();
        }
        let mut q = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
        let _ = q.link.set_timeout(Duration::from_secs(1));
        let cc = property_get(&mut q, offset::CC as u32, PropertySize::Four)
            .map(|v| Cc(v as u32).with_shn(ShutdownNotification::Normal));
        if let Ok(cc) = cc {
            if property_set(&mut q, offset::CC as u32, cc.0).is_ok() {
                let limit = Duration::from_millis(500).min(self.shared.timeout);
                let _ = wait_csts(&mut q, limit, "shut down", |c| {
                    c.shst() == ShutdownStatus::Complete
                });
            }
        }
    }
}

impl Drop for TcpController {
    fn drop(&mut self) {
        self.shutdown();
    }
}
