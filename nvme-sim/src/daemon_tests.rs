//! The controller as its own process: [`spawn_daemon`] and [`SimClient`], driven through
//! the BAR by the test host of `testhost.rs`, with other processes connected, killed and
//! gone. Every test checks that its daemon process disappears in the end.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nvme_regs::identify::{IdentifyController, IdentifyNamespace};
use nvme_regs::opcode::{AdminOpcode as A, NvmOpcode as N};
use nvme_regs::status::{CommandSpecificStatus as Cs, GenericStatus as G};
use nvme_regs::Status;
use zerocopy::{FromBytes, IntoBytes};

use crate::mem::{create_memfd, Mapping};
use crate::proto::{self, Op, Reply, Request, REPLY_LEN};
use crate::testhost::*;
use crate::*;

/// Short grace so that daemons of finished tests go away quickly.
const GRACE: Duration = Duration::from_millis(300);
/// Environment variables that turn [`killed_client_child`] into a client process.
const CHILD_SOCKET: &str = "NVME_SIM_TEST_CHILD_SOCKET";
const CHILD_MEM: &str = "NVME_SIM_TEST_CHILD_MEM";
/// "READY!!!" in the mailbox page once the child client has set everything up.
const READY: u64 = u64::from_le_bytes(*b"READY!!!");

/// A temporary directory for one test's socket and files, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = PathBuf::from(format!("/tmp/nvme-sim-{}-{n}-{name}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn sock(&self) -> PathBuf {
        self.0.join("sim.sock")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn options(grace: Duration) -> DaemonOptions {
    DaemonOptions {
        idle_grace: grace,
        ..DaemonOptions::default()
    }
}

/// Is process `pid` gone (a zombie waiting for init counts as gone)?
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the parenthesised command name.
        Ok(s) => s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

/// Asserts that the daemon `pid` exits within `within` and removed its socket.
fn assert_exits(pid: u32, sock: &Path, within: Duration) {
    let t = Instant::now();
    while !gone(pid) {
        assert!(
            t.elapsed() < within,
            "daemon {pid} still running after {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!sock.exists(), "daemon {pid} left its socket behind");
}

/// The test host driving a daemon's controller through a client.
fn client_host(c: &SimClient) -> HostCore {
    HostCore::new(c.bar_fd(), c.bar_len(), 0, |i, fd, o, l| {
        c.dma_map(i, fd, o, l)
    })
}

fn read_ns(c: &SimClient, nsid: u32, offset: u64, len: usize) -> Vec<u8> {
    let f = File::from(c.namespace_fd(nsid).unwrap());
    let mut v = vec![0u8; len];
    f.read_exact_at(&mut v, offset).unwrap();
    v
}

fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < within, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn daemon_enable_identify_io_and_exit_after_last_client() {
    let dir = TempDir::new("basic");
    let cfg = SimConfig {
        serial: "DAEMON-1".into(),
        ..small_config()
    };
    let pid = spawn_daemon_with(cfg, &dir.sock(), &options(GRACE)).unwrap();
    assert_ne!(pid, std::process::id());
    let c = SimClient::connect(&dir.sock()).unwrap();
    assert_eq!(c.pid(), pid);
    assert_eq!(c.namespace_count(), 2);
    assert_eq!(c.client_id(), 1);

    let mut h = client_host(&c);
    h.enable();
    let (s, d) = h.identify(1, 0);
    assert!(s.is_success(), "{s}");
    let id = IdentifyController::read_from_bytes(&d).unwrap();
    assert_eq!(id.serial(), "DAEMON-1");
    assert_eq!(id.nn, 2);
    let (s, d) = h.identify(0, 2);
    assert!(s.is_success());
    let ns = IdentifyNamespace::read_from_bytes(&d).unwrap();
    assert_eq!((ns.nsze, ns.block_size()), (2048, 4096));

    // I/O lands in the daemon's namespace memfd, which this process reads directly.
    h.create_io(1, 16, 16);
    let buf = h.alloc(4096);
    let data = pattern(7, 4096);
    h.write_mem(buf, &data);
    let e = h.exec(1, rw(N::Write, 1, 8, 8, HostCore::iova(buf), 0));
    assert!(e.status().is_success());
    assert_eq!(read_ns(&c, 1, 8 * 512, 4096), data);

    let s = c.stats().unwrap();
    assert_eq!((s.writes, s.bytes_written, s.enables), (1, 4096, 1));
    assert!(s.admin_commands >= 4);
    let st = c.daemon_status().unwrap();
    assert_eq!((st.pid, st.clients, st.connections), (pid, 1, 1));
    assert_eq!((st.dma_maps, st.dma_bytes), (1, DMA_LEN as u64));
    assert_eq!(st.orphaned_dma_maps, 0);
    assert!(matches!(
        c.namespace_fd(3),
        Err(SimError::NoSuchNamespace(3))
    ));

    drop(h);
    drop(c);
    assert_exits(pid, &dir.sock(), GRACE + Duration::from_secs(3));
}

#[test]
fn two_clients_share_one_controller() {
    let dir = TempDir::new("two");
    let pid = spawn_daemon_with(small_config(), &dir.sock(), &options(GRACE)).unwrap();
    let a = SimClient::connect(&dir.sock()).unwrap();
    let mut h = client_host(&a);
    h.enable();
    h.create_io(1, 16, 16);

    let b = SimClient::connect(&dir.sock()).unwrap();
    assert_eq!((b.pid(), b.client_id()), (pid, 2));
    let st = b.daemon_status().unwrap();
    assert_eq!((st.clients, st.dma_maps), (2, 1));
    // B sees A's controller state through its own BAR mapping.
    let bar = Mapping::map(b.bar_fd(), 0, b.bar_len(), false).unwrap();
    let csts = bar.atomic_u32(offset_csts()).load(Ordering::Acquire);
    assert_eq!(csts & 1, 1, "CSTS.RDY seen from the second client");

    // The IOVA table is the controller's: B cannot map over A's range, but next to it.
    let mem = create_memfd("b-dma", 1 << 20).unwrap();
    match b.dma_map(DMA_IOVA + 4096, mem.as_fd(), 0, 1 << 20) {
        Err(SimError::DmaOverlap {
            existing_iova,
            existing_len,
            ..
        }) => assert_eq!((existing_iova, existing_len), (DMA_IOVA, DMA_LEN as u64)),
        r => panic!("expected DmaOverlap, got {r:?}"),
    }
    let b_iova = DMA_IOVA + DMA_LEN as u64;
    b.dma_map(b_iova, mem.as_fd(), 0, 1 << 20).unwrap();
    assert_eq!(a.daemon_status().unwrap().dma_maps, 2);

    // B injects a fault that A's next write meets, while A keeps doing I/O.
    let st = Status::generic(G::DataTransferError).with_dnr();
    let id = b
        .fail_nth(CommandMatch::io(N::Write as u8).on_queue(1), 2, st, false)
        .unwrap();
    let buf = h.alloc(4096);
    h.write_mem(buf, &pattern(3, 4096));
    let w = |h: &mut HostCore| {
        h.exec(1, rw(N::Write, 2, 0, 1, HostCore::iova(buf), 0))
            .status()
    };
    assert!(w(&mut h).is_success());
    assert_eq!(w(&mut h), st);
    assert!(w(&mut h).is_success());
    assert_eq!(b.fault_fired(id).unwrap(), (1, false));
    assert_eq!(b.fault_counters().unwrap().failed, 1);
    // The failed write never executed.
    let s = a.stats().unwrap();
    assert_eq!((s.writes, s.errors), (2, 1));
    assert_eq!(read_ns(&b, 2, 0, 4096), pattern(3, 4096));

    // Both clients at once from two threads.
    std::thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..50 {
                b.stats().unwrap();
            }
        });
        for _ in 0..50 {
            assert!(w(&mut h).is_success());
        }
    });

    // A fatal status raised by B stops A's controller.
    b.raise_cfs().unwrap();
    h.wait_csts("CFS", |c| c.cfs());
    assert!(b.fatal_reason().unwrap().is_some());

    b.dma_unmap(b_iova, 1 << 20).unwrap();
    drop(b);
    wait_until("B's disconnect", Duration::from_secs(2), || {
        a.daemon_status().unwrap().clients == 1
    });
    drop(h);
    drop(a);
    assert_exits(pid, &dir.sock(), GRACE + Duration::from_secs(3));
}

fn offset_csts() -> usize {
    nvme_regs::registers::offset::CSTS
}

/// The mailbox page after the DMA memory in the killed client's file: the state of its
/// admin queue, so that the survivor can take it over.
fn mailbox(file: &File) -> Mapping {
    Mapping::map(file.as_fd(), DMA_LEN as u64, PAGE, false).unwrap()
}

fn mailbox_word(m: &Mapping, i: usize) -> &AtomicU64 {
    assert!(i < PAGE / 8);
    m.atomic_u64(i * 8)
}

/// Runs as a separate client process for `killed_client_keeps_queues_until_deleted` (and
/// does nothing in a normal test run): brings the controller up from its own memory,
/// creates I/O queue 1, writes a block, publishes its admin queue state and waits to be
/// killed.
#[test]
fn killed_client_child() {
    let (Some(sock), Some(mem)) = (std::env::var_os(CHILD_SOCKET), std::env::var_os(CHILD_MEM))
    else {
        return;
    };
    let c = SimClient::connect(Path::new(&sock)).unwrap();
    let file = File::options().read(true).write(true).open(&mem).unwrap();
    let mut h = HostCore::with_memory(
        c.bar_fd(),
        c.bar_len(),
        0,
        OwnedFd::from(file.try_clone().unwrap()),
    );
    c.dma_map(DMA_IOVA, file.as_fd(), 0, DMA_LEN).unwrap();
    h.enable();
    h.create_io(1, 16, 16);
    let buf = h.alloc(4096);
    h.write_mem(buf, &pattern(9, 4096));
    let e = h.exec(1, rw(N::Write, 1, 0, 8, HostCore::iova(buf), 0));
    assert!(e.status().is_success());
    let q = h.queues[0].unwrap();
    let m = mailbox(&file);
    let words = [
        q.sq_off as u64,
        q.sq_size.into(),
        q.sq_tail.into(),
        q.cq_off as u64,
        q.cq_size.into(),
        q.cq_head.into(),
        q.phase.into(),
        h.next as u64,
        h.cid.into(),
    ];
    for (i, w) in words.into_iter().enumerate() {
        mailbox_word(&m, i + 1).store(w, Ordering::Relaxed);
    }
    mailbox_word(&m, 0).store(READY, Ordering::Release);
    // Wait to be killed (give up if the parent test died).
    std::thread::sleep(Duration::from_secs(30));
    std::process::exit(1);
}

#[test]
fn killed_client_keeps_queues_until_deleted() {
    let dir = TempDir::new("kill");
    let pid = spawn_daemon_with(small_config(), &dir.sock(), &options(GRACE)).unwrap();
    let survivor = SimClient::connect(&dir.sock()).unwrap();
    let mem_path = dir.0.join("child-dma");
    let file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&mem_path)
        .unwrap();
    file.set_len((DMA_LEN + PAGE) as u64).unwrap();
    let m = mailbox(&file);

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "daemon_tests::killed_client_child",
            "--exact",
            "--test-threads=1",
        ])
        .env(CHILD_SOCKET, dir.sock())
        .env(CHILD_MEM, &mem_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while mailbox_word(&m, 0).load(Ordering::Acquire) != READY {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("client process exited early: {st}");
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "client process not ready"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let st = survivor.daemon_status().unwrap();
    assert_eq!((st.clients, st.dma_maps, st.orphaned_dma_maps), (2, 1, 0));

    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    wait_until(
        "the daemon to see the death",
        Duration::from_secs(2),
        || survivor.daemon_status().unwrap().clients == 1,
    );
    let st = survivor.daemon_status().unwrap();
    assert_eq!(st.pid, pid);
    assert_eq!((st.dma_maps, st.orphaned_dma_maps), (1, 1));
    assert_eq!(st.orphaned_dma_bytes, DMA_LEN as u64);

    // The controller lives on, with the dead client's queues: the survivor takes over the
    // admin queue (its state is in the file) and deletes them.
    let mut h = HostCore::with_memory(
        survivor.bar_fd(),
        survivor.bar_len(),
        0,
        OwnedFd::from(file.try_clone().unwrap()),
    );
    assert!(h.csts().rdy() && !h.csts().cfs());
    let w: Vec<u64> = (1..10)
        .map(|i| mailbox_word(&m, i).load(Ordering::Relaxed))
        .collect();
    h.queues[0] = Some(HostQueue {
        sq_off: w[0] as usize,
        sq_size: w[1] as u32,
        sq_tail: w[2] as u32,
        cq_off: w[3] as usize,
        cq_size: w[4] as u32,
        cq_head: w[5] as u32,
        phase: w[6] != 0,
        auto_ack: true,
    });
    h.next = w[7] as usize;
    h.cid = w[8] as u16;
    assert_eq!(read_ns(&survivor, 1, 0, 4096), pattern(9, 4096));
    let del = |op: A| {
        let mut c = cmd(op as u8);
        c.cdw10 = 1;
        c
    };
    let e = h.admin(del(A::DeleteIoSq));
    assert!(
        e.status().is_success(),
        "the dead client's SQ 1: {}",
        e.status()
    );
    let e = h.admin(del(A::DeleteIoCq));
    assert!(
        e.status().is_success(),
        "the dead client's CQ 1: {}",
        e.status()
    );
    let e = h.admin(del(A::DeleteIoSq));
    assert!(
        e.status().is_command_specific(Cs::InvalidQueueId),
        "{}",
        e.status()
    );
    // The survivor can use the controller: a new queue pair in the same place.
    h.create_io(1, 16, 16);
    let buf = h.alloc(4096);
    let e = h.exec(1, rw(N::Read, 1, 0, 8, HostCore::iova(buf), 0));
    assert!(e.status().is_success());
    assert_eq!(h.read_mem(buf, 4096), pattern(9, 4096));

    // Clean up as a survivor would: reset the controller, then unmap the dead client's
    // memory.
    h.disable();
    survivor.dma_unmap(DMA_IOVA, DMA_LEN).unwrap();
    let st = survivor.daemon_status().unwrap();
    assert_eq!((st.dma_maps, st.orphaned_dma_maps), (0, 0));
    drop(h);
    drop(survivor);
    assert_exits(pid, &dir.sock(), GRACE + Duration::from_secs(3));
}

#[test]
fn daemon_exits_when_nobody_connects() {
    // Like a spawner that died before connecting.
    let dir = TempDir::new("idle");
    // A grace long enough that the daemon is certainly still there for the first checks,
    // even on a loaded machine.
    let grace = Duration::from_secs(2);
    let pid = spawn_daemon_with(small_config(), &dir.sock(), &options(grace)).unwrap();
    assert!(dir.sock().exists());
    assert!(!gone(pid));
    assert_exits(pid, &dir.sock(), grace + Duration::from_secs(3));
    // Nobody to connect to any more.
    assert!(matches!(
        SimClient::connect(&dir.sock()),
        Err(SimError::Io { .. })
    ));
}

#[test]
fn invalid_config_is_reported_by_spawn() {
    let dir = TempDir::new("badcfg");
    let cfg = SimConfig {
        namespaces: vec![NamespaceConfig {
            lba_size: 1000,
            blocks: 8,
        }],
        ..SimConfig::default()
    };
    let e = spawn_daemon(cfg, &dir.sock()).unwrap_err();
    assert!(
        matches!(&e, SimError::InvalidConfig(m) if m.contains("lba_size 1000")),
        "{e}"
    );
    assert!(e
        .to_string()
        .contains("invalid simulated controller configuration"));
    assert!(!dir.sock().exists(), "socket left behind");
}

#[test]
fn shutdown_stops_the_daemon_at_once() {
    let dir = TempDir::new("shutdown");
    let long = Duration::from_secs(60);
    let pid = spawn_daemon_with(small_config(), &dir.sock(), &options(long)).unwrap();
    let a = SimClient::connect(&dir.sock()).unwrap();
    let b = SimClient::connect(&dir.sock()).unwrap();
    a.shutdown().unwrap();
    assert_exits(pid, &dir.sock(), Duration::from_secs(3));
    assert!(matches!(b.stats(), Err(SimError::Disconnected)));
    // The connection is known broken from now on.
    assert!(matches!(b.stats(), Err(SimError::Disconnected)));
    assert!(matches!(a.stats(), Err(SimError::Disconnected)));
}

/// Running as another uid needs root (to start the daemon or the client as someone
/// else), which these tests do not have. The checks are exercised instead by making each
/// side expect a uid that is not this process's: the daemon through a test-only option,
/// the client through `connect_as`. (`proto`'s unit tests check `SO_PEERCRED` itself.)
#[test]
fn peer_credentials_are_checked_on_both_sides() {
    let dir = TempDir::new("cred");
    let me = proto::euid();
    let opts = DaemonOptions {
        client_uid: Some(me + 1),
        ..options(GRACE)
    };
    let pid = spawn_daemon_with(small_config(), &dir.sock(), &opts).unwrap();
    // The daemon refuses us.
    match SimClient::connect(&dir.sock()) {
        Err(SimError::PeerCredentials {
            peer_pid,
            peer_uid,
            expected_uid,
        }) => {
            assert_eq!(
                (peer_pid, peer_uid, expected_uid),
                (std::process::id(), me, me + 1)
            );
        }
        r => panic!("expected a refusal, got {r:?}"),
    }
    // We refuse the daemon. SO_PEERCRED on a connecting socket names the process that
    // called listen(2): the spawner (this process), not the daemon.
    match SimClient::connect_as(&dir.sock(), me + 1) {
        Err(e @ SimError::PeerCredentials { .. }) => {
            let t = e.to_string();
            assert!(t.contains(&format!("uid {me}")) && t.contains(&format!("uid {}", me + 1)));
        }
        r => panic!("expected a refusal, got {r:?}"),
    }
    assert_exits(pid, &dir.sock(), GRACE + Duration::from_secs(3));
}

/// Sends raw bytes (and descriptors) on a new connection; returns the reply.
fn raw_exchange(conn: &OwnedFd, data: &[u8], fds: &[std::os::fd::BorrowedFd<'_>]) -> Reply {
    proto::send(conn.as_fd(), data, fds).unwrap();
    let mut buf = [0u8; REPLY_LEN];
    let msg = proto::recv(conn.as_fd(), &mut buf).unwrap();
    Reply::parse(&msg, &buf).unwrap()
}

fn assert_protocol_error(r: &Reply, text: &str) {
    match r.failure() {
        Some(SimError::Protocol(m)) => assert!(m.contains(text), "{m:?} lacks {text:?}"),
        e => panic!("expected a protocol error with {text:?}, got {e:?}"),
    }
}

#[test]
fn malformed_requests_are_refused_and_the_daemon_survives() {
    let dir = TempDir::new("proto");
    let pid = spawn_daemon_with(small_config(), &dir.sock(), &options(GRACE)).unwrap();
    let good = SimClient::connect(&dir.sock()).unwrap();
    let connect = || proto::connect(&dir.sock()).unwrap();

    let r = raw_exchange(&connect(), &[1, 2, 3], &[]);
    assert_protocol_error(&r, "request of 3 bytes");
    let r = raw_exchange(&connect(), &[0u8; 200], &[]);
    assert_protocol_error(&r, "request of more than 64 bytes");

    let mut req = Request::new(Op::Hello, 1, [0; 6]);
    req.version = 99;
    let r = raw_exchange(&connect(), req.as_bytes(), &[]);
    assert_protocol_error(&r, "protocol version 99");

    let mut req = Request::new(Op::Hello, 1, [0; 6]);
    req.magic = 0;
    assert_protocol_error(&raw_exchange(&connect(), req.as_bytes(), &[]), "bad magic");

    let req = Request::new(Op::Stats, 1, [0; 6]);
    assert_protocol_error(
        &raw_exchange(&connect(), req.as_bytes(), &[]),
        "Stats before Hello",
    );

    // After a proper Hello: a DMA map without its descriptor, then one with two.
    let c = connect();
    let r = raw_exchange(&c, Request::new(Op::Hello, 1, [0; 6]).as_bytes(), &[]);
    assert!(r.failure().is_none());
    let req = Request::new(Op::DmaMap, 2, [0x1000, 0, 4096, 0, 0, 0]);
    assert_protocol_error(&raw_exchange(&c, req.as_bytes(), &[]), "0 file descriptors");
    let c = connect();
    raw_exchange(&c, Request::new(Op::Hello, 1, [0; 6]).as_bytes(), &[]);
    let mem = create_memfd("x", 4096).unwrap();
    let r = raw_exchange(&c, req.as_bytes(), &[mem.as_fd(), mem.as_fd()]);
    assert_protocol_error(&r, "2 file descriptors");
    // Unused arguments must be zero; unknown request types are refused.
    let c = connect();
    raw_exchange(&c, Request::new(Op::Hello, 1, [0; 6]).as_bytes(), &[]);
    let req = Request::new(Op::Stats, 2, [0, 0, 0, 0, 0, 5]);
    assert_protocol_error(&raw_exchange(&c, req.as_bytes(), &[]), "unused argument 5");
    let c = connect();
    raw_exchange(&c, Request::new(Op::Hello, 1, [0; 6]).as_bytes(), &[]);
    let mut req = Request::new(Op::Stats, 2, [0; 6]);
    req.op = Op::Started as u16;
    assert_protocol_error(
        &raw_exchange(&c, req.as_bytes(), &[]),
        "unknown request type",
    );

    // Argument errors are ordinary replies that keep the connection.
    let e = good.dma_map(0, mem.as_fd(), 4096, 4096).unwrap_err();
    assert!(matches!(e, SimError::InvalidArgument(_)), "{e}");
    let e = good.dma_unmap(0x5000, 4096).unwrap_err();
    assert!(
        matches!(
            e,
            SimError::DmaNotMapped {
                iova: 0x5000,
                len: 4096
            }
        ),
        "{e}"
    );
    let e = good
        .raise_async_event(AsyncEventType::Notice, 1, 2)
        .and_then(|_| good.set_never_ready(false));
    assert!(e.is_ok());
    // The daemon closes a refused connection after its reply: wait for the state, bounded.
    let start = std::time::Instant::now();
    let st = loop {
        let st = good.daemon_status().unwrap();
        if st.clients == 1 || start.elapsed() > Duration::from_secs(10) {
            break st;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    assert_eq!(st.clients, 1, "refused connections are closed");
    assert_eq!(st.connections, 10);
    drop(good);
    assert_exits(pid, &dir.sock(), GRACE + Duration::from_secs(3));
}

#[test]
fn socket_path_rules() {
    let dir = TempDir::new("path");
    let sock = dir.sock();
    // A stale socket (its listener gone) is replaced.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let pid = spawn_daemon_with(small_config(), &sock, &options(GRACE)).unwrap();
    // A live one is not.
    let e = spawn_daemon(small_config(), &sock).unwrap_err();
    assert!(e.to_string().contains("already serves"), "{e}");
    // Neither is a file that is not a socket.
    let f = dir.0.join("file");
    std::fs::write(&f, b"x").unwrap();
    let e = spawn_daemon(small_config(), &f).unwrap_err();
    assert!(e.to_string().contains("not a socket"), "{e}");
    let long = dir.0.join("x".repeat(120));
    let e = spawn_daemon(small_config(), &long).unwrap_err();
    assert!(matches!(e, SimError::InvalidArgument(_)), "{e}");
    let c = SimClient::connect(&sock).unwrap();
    assert_eq!(c.pid(), pid);
    drop(c);
    assert_exits(pid, &sock, GRACE + Duration::from_secs(3));
}

/// Takes an OFD write lock on the whole file; false when another open file description
/// holds one.
fn ofd_lock(f: &File) -> bool {
    use nix::fcntl::{fcntl, FcntlArg};
    let fl = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    fcntl(f, FcntlArg::F_OFD_SETLK(&fl)).is_ok()
}

#[test]
fn daemon_is_detached_from_its_spawner() {
    let dir = TempDir::new("detach");
    // State of this process that the daemon must not keep: a descriptor holding an OFD
    // lock, and a shared mapping.
    let lock_path = dir.0.join("lock");
    let held = File::create(&lock_path).unwrap();
    assert!(ofd_lock(&held));
    let shared = create_memfd("parent-only-mem", 1 << 20).unwrap();
    let map = Mapping::map(shared.as_fd(), 0, 1 << 20, false).unwrap();
    let pid = spawn_daemon_with(small_config(), &dir.sock(), &options(GRACE)).unwrap();

    // Not our child, in its own session, in /, stdio on /dev/null.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let (ppid, sid): (u32, i32) = (f[1].parse().unwrap(), f[3].parse().unwrap());
    assert_ne!(ppid, std::process::id());
    assert_ne!(sid, nix::unistd::getsid(None).unwrap().as_raw());
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
        Path::new("/")
    );
    let fds: Vec<(String, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            Some((
                e.file_name().to_string_lossy().into_owned(),
                target.to_string_lossy().into_owned(),
            ))
        })
        .collect();
    for (fd, target) in &fds {
        if ["0", "1", "2"].contains(&fd.as_str()) {
            assert_eq!(target, "/dev/null", "daemon fd {fd}");
        }
        assert!(
            !target.contains("parent-only") && !target.contains(&*lock_path.to_string_lossy()),
            "daemon inherited fd {fd} -> {target}"
        );
    }
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    assert!(
        !maps.contains("parent-only"),
        "daemon kept the shared mapping"
    );

    // Closing our descriptor releases the lock: nobody else holds its file description
    // (other tests' process spawns may hold a copy for an instant, hence the retries).
    drop(held);
    let again = File::options().write(true).open(&lock_path).unwrap();
    wait_until("the lock to be free", Duration::from_secs(2), || {
        ofd_lock(&again)
    });

    drop(map);
    assert_exits(pid, &dir.sock(), GRACE + Duration::from_secs(3));
}
