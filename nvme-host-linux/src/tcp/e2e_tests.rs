//! End to end over TCP on 127.0.0.1: `Controller::attach("trtype:TCP ...")`, the admin
//! helpers and I/O queue pairs against a scripted NVMe/TCP target with one namespace in
//! memory. The tests need only what [`start`] returns (a transport id string and the
//! namespace's bytes), so a real target (the software controller's, Linux's nvmet) can
//! take the scripted one's place.

use std::time::Duration;

use nvme_regs::features::{fid, FeatureSelect};
use nvme_regs::registers::Cc;
use nvme_regs::status::MediaErrorStatus;
use nvme_regs::tcp::digest;

use super::scripted::{start, Config, Target, BLOCKS};
use crate::{AttachOptions, Controller, Error, QueueOptions, TransportId};

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// The same program as over PCIe: attach, identify, logs, features, an I/O queue pair
/// with reads, writes (in the capsule and through R2T), compare, write zeroes, deallocate,
/// flush, split transfers and a batch in flight.
fn exercise(trid: &str, t: &Target) {
    let ctrl = Controller::attach(trid).unwrap();
    assert_eq!(ctrl.identify().model(), "E2E TCP TARGET");
    assert_eq!(ctrl.name(), format!("tcp:{}", trid_addr(trid)));
    assert_eq!(ctrl.max_transfer(), 128 * 1024);
    let ns = ctrl.namespace(1).unwrap();
    assert_eq!((ns.blocks(), ns.block_size()), (BLOCKS, 512));
    assert_eq!(ctrl.identify_controller().unwrap().cntlid, 5);
    assert_eq!(
        ctrl.get_features(fid::KEEP_ALIVE_TIMER, FeatureSelect::Current, 0, 0)
            .unwrap(),
        5000
    );
    let log = ctrl.get_log_page(0x02, u32::MAX, 512, 0).unwrap();
    assert_eq!(&log[..4], &[1, 2, 3, 4]);
    assert!(ctrl.status_register().rdy());
    let mut qp = ctrl.alloc_io_queue(QueueOptions::new(64)).unwrap();
    assert_eq!(qp.qid(), 1);
    assert_eq!(qp.data_pointer(), crate::DataPointer::Sgl);

    let mut buf = ctrl.alloc_dma(1 << 20).unwrap();
    // 4 KiB: in the capsule. 64 KiB: R2T and H2CData.
    for (lba, len, seed) in [(8u64, 4096usize, 1u8), (100, 65536, 2)] {
        buf.as_mut_slice()[..len].copy_from_slice(&pattern(seed, len));
        qp.write_sync(1, lba, buf.slice(0..len).unwrap()).unwrap();
        let disk = t.disk.lock().unwrap();
        assert_eq!(disk[lba as usize * 512..][..len], pattern(seed, len)[..]);
    }
    buf.as_mut_slice().fill(0);
    qp.read_sync(1, 100, buf.slice(0..65536).unwrap()).unwrap();
    assert_eq!(buf.as_slice()[..65536], pattern(2, 65536)[..]);
    // Compare: equal, then not.
    qp.compare_sync(1, 100, buf.slice(0..65536).unwrap())
        .unwrap();
    buf.as_mut_slice()[7] ^= 1;
    let e = qp
        .compare_sync(1, 100, buf.slice(0..65536).unwrap())
        .unwrap_err();
    assert!(
        matches!(e, Error::Nvme { status, .. } if status.is_media(MediaErrorStatus::CompareFailure)),
        "{e}"
    );
    // 1 MiB: eight commands of MDTS each, one request.
    {
        let mut disk = t.disk.lock().unwrap();
        disk[..1 << 20].copy_from_slice(&pattern(3, 1 << 20));
    }
    buf.as_mut_slice().fill(0);
    qp.read_sync(1, 0, buf.slice(0..1 << 20).unwrap()).unwrap();
    assert!(buf.as_slice() == pattern(3, 1 << 20), "1 MiB split read");
    // Write zeroes, deallocate, flush.
    qp.write_zeroes_sync(1, 0, 16, Default::default()).unwrap();
    qp.deallocate(1, 16, 8, 9).unwrap();
    let mut results = Vec::new();
    qp.drain(Duration::from_secs(10), |tok, r| {
        results.push((tok, r.is_ok()))
    })
    .unwrap();
    assert_eq!(results, [(9, true)]);
    qp.flush_sync(1).unwrap();
    {
        let disk = t.disk.lock().unwrap();
        assert!(
            disk[..24 * 512].iter().all(|&b| b == 0),
            "zeroed blocks 0..24"
        );
        assert_ne!(disk[24 * 512], 0, "block 24 left as it was");
    }
    // A batch in flight: 32 reads of 4 KiB, completions matched by token.
    let mut done = [false; 32];
    for i in 0..32u64 {
        let r = buf
            .slice(i as usize * 4096..(i as usize + 1) * 4096)
            .unwrap();
        qp.read(1, 256 + i * 8, r, i).unwrap();
    }
    qp.drain(Duration::from_secs(10), |tok, r| {
        r.unwrap();
        done[tok as usize] = true;
    })
    .unwrap();
    assert!(done.iter().all(|&d| d));
    let disk = t.disk.lock().unwrap().clone();
    assert!(buf.as_slice()[..128 * 1024] == disk[256 * 512..256 * 512 + 128 * 1024]);
    assert_eq!(qp.stats().bad_sq_heads, 0, "SQHD followed");
    drop(qp);
    drop(ctrl);
    let connects = t.connects.lock().unwrap().clone();
    assert_eq!(
        connects[0],
        (0, 31, 0xffff),
        "admin queue: dynamic controller"
    );
    assert_eq!(
        connects[1],
        (1, 63, 5),
        "I/O queue 1: the admin's controller"
    );
    assert!(Cc(*t.cc.lock().unwrap()).shn() != 0, "shut down at detach");
}

fn trid_addr(trid: &str) -> String {
    match TransportId::parse(trid).unwrap().kind {
        crate::TransportKind::Tcp(o) => o.addr.to_string(),
        k => panic!("{k:?}"),
    }
}

#[test]
fn a_pcie_program_runs_unchanged_over_tcp() {
    let (trid, t) = start(Config::default());
    exercise(&trid, &t);
}

#[test]
fn with_digests_alignment_small_h2c_pdus_and_success_flags() {
    let (trid, t) = start(Config {
        digests: digest::HEADER | digest::DATA,
        cpda: 1,
        max_h2c: 4096,
        success_flag: true,
        ..Default::default()
    });
    exercise(&format!("{trid} hdgst:1 ddgst:1"), &t);
}

#[test]
fn completions_out_of_order_finish_their_own_requests() {
    let (trid, t) = start(Config {
        swap_reads: true,
        ..Default::default()
    });
    {
        let mut disk = t.disk.lock().unwrap();
        disk[..65536].copy_from_slice(&pattern(5, 65536));
    }
    let ctrl = Controller::attach(&trid).unwrap();
    let mut qp = ctrl.alloc_io_queue(QueueOptions::new(16)).unwrap();
    let mut buf = ctrl.alloc_dma(65536).unwrap();
    for round in 0..4u64 {
        for i in 0..2u64 {
            let at = (round * 2 + i) as usize * 8192;
            qp.read(
                1,
                at as u64 / 512,
                buf.slice(at..at + 8192).unwrap(),
                at as u64,
            )
            .unwrap();
        }
        let mut order = Vec::new();
        qp.drain(Duration::from_secs(10), |tok, r| {
            r.unwrap();
            order.push(tok);
        })
        .unwrap();
        let first = round * 2 * 8192;
        assert_eq!(
            order,
            [first + 8192, first],
            "the second read completes first"
        );
    }
    assert!(buf.as_slice() == pattern(5, 65536));
}

#[test]
fn a_dropped_connection_fails_outstanding_io_naming_it_and_reconnects() {
    dropped_connection(None);
    // The same with the I/O timeout's watchdog on (its own completion path).
    dropped_connection(Some(Duration::from_secs(30)));
}

fn dropped_connection(timeout: Option<Duration>) {
    let (trid, t) = start(Config {
        close_io_after: Some(3),
        ..Default::default()
    });
    let ctrl = Controller::attach(&trid).unwrap();
    let mut qp = ctrl.alloc_io_queue(QueueOptions::new(16)).unwrap();
    qp.set_timeout(timeout);
    let mut buf = ctrl.alloc_dma(4096).unwrap();
    qp.flush_sync(1).unwrap();
    qp.flush_sync(1).unwrap();
    // The third command is taken and the connection closed: both outstanding fail.
    qp.read(1, 0, buf.slice(0..512).unwrap(), 1).unwrap();
    qp.read(1, 1, buf.slice(512..1024).unwrap(), 2).unwrap();
    let mut failed = Vec::new();
    qp.drain(Duration::from_secs(10), |tok, r| {
        failed.push((tok, r.unwrap_err().to_string()))
    })
    .unwrap();
    failed.sort();
    assert_eq!(failed.len(), 2, "{failed:?}");
    for (tok, e) in &failed {
        assert!([1, 2].contains(tok));
        assert!(e.contains("closed the connection"), "{e}");
    }
    assert_eq!(qp.outstanding(), 0);
    // The queue connected again (same queue id, same controller): commands go on.
    qp.flush_sync(1).unwrap();
    let io: Vec<_> = t
        .connects
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.0 == 1)
        .copied()
        .collect();
    assert_eq!(io, [(1, 15, 5), (1, 15, 5)]);
}

#[test]
fn after_a_target_restart_a_new_association_and_the_queues_reconnect() {
    let (trid, t) = start(Config::default());
    let ctrl = Controller::attach(&trid).unwrap();
    let mut qp = ctrl.alloc_io_queue(QueueOptions::new(16)).unwrap();
    let mut buf = ctrl.alloc_dma(4096).unwrap();
    buf.as_mut_slice().fill(0x42);
    qp.write_sync(1, 0, buf.slice(0..4096).unwrap()).unwrap();
    t.restart();
    // The queue finds its connection closed, the old controller ID refused: a new
    // association (controller 6) and the queue again, within the read's wait.
    let mut r = qp.read_sync(1, 0, buf.slice(0..4096).unwrap());
    if let Err(e) = &r {
        assert!(e.to_string().contains("closed the connection"), "{e}");
        r = qp.read_sync(1, 0, buf.slice(0..4096).unwrap());
    }
    r.unwrap();
    assert!(buf.as_slice().iter().all(|&b| b == 0x42));
    let connects = t.connects.lock().unwrap().clone();
    assert!(connects.contains(&(0, 31, 0xffff)), "{connects:?}");
    assert_eq!(connects.last(), Some(&(1, 15, 6)), "{connects:?}");
    // The admin path uses the new association too.
    assert_eq!(ctrl.identify_controller().unwrap().cntlid, 5);
    assert!(ctrl.status_register().rdy());
}

#[test]
fn a_controller_reset_is_a_new_association() {
    let (trid, t) = start(Config {
        swap_reads: true,
        ..Default::default()
    });
    let ctrl = Controller::attach(&trid).unwrap();
    let mut qp = ctrl.alloc_io_queue(QueueOptions::new(16)).unwrap();
    let mut buf = ctrl.alloc_dma(4096).unwrap();
    // One read held by the target (it answers reads in pairs) when the reset comes.
    qp.read(1, 0, buf.slice(0..512).unwrap(), 7).unwrap();
    qp.ring();
    ctrl.reset().unwrap();
    let mut got = Vec::new();
    qp.drain(Duration::from_secs(10), |tok, r| got.push((tok, r)))
        .unwrap();
    assert!(
        matches!(got[..], [(7, Err(Error::AbortedByReset))]),
        "{got:?}"
    );
    // Reconnected under the new association: a flush works.
    qp.flush_sync(1).unwrap();
    let connects = t.connects.lock().unwrap().clone();
    let admin = connects.iter().filter(|c| c.0 == 0).count();
    let io = connects.iter().filter(|c| c.0 == 1).count();
    assert_eq!((admin, io), (2, 2), "{connects:?}");
}

#[test]
fn c2h_data_outside_the_command_fails_the_queue() {
    let (trid, _t) = start(Config {
        c2h_out_of_range: true,
        ..Default::default()
    });
    let ctrl = Controller::attach(&trid).unwrap();
    let mut qp = ctrl.alloc_io_queue(QueueOptions::new(16)).unwrap();
    let mut buf = ctrl.alloc_dma(4096).unwrap();
    buf.as_mut_slice().fill(0x5a);
    let e = qp.read_sync(1, 0, buf.slice(0..1024).unwrap()).unwrap_err();
    let m = e.to_string();
    assert!(m.contains("C2HData") && m.contains("offset 1024"), "{m}");
    assert!(buf.as_slice().iter().all(|&b| b == 0x5a), "nothing written");
}

#[test]
fn what_tcp_does_not_do_is_refused_clearly() {
    let (trid, _t) = start(Config::default());
    let parsed = TransportId::parse(&trid).unwrap();
    let ctrl = Controller::attach(&trid).unwrap();
    let e = ctrl.reset_function().unwrap_err().to_string();
    assert!(e.contains("no PCI function"), "{e}");
    let mut qp = ctrl
        .alloc_io_queue(QueueOptions::new(8).with_interrupts(true))
        .unwrap();
    assert!(qp.interrupt_fallback().unwrap().contains("polled"));
    let e = qp.set_data_pointer(crate::DataPointer::Prp).unwrap_err();
    assert!(e.to_string().contains("SGLs"), "{e}");
    // The same attach options with PRPs are refused when the queue is made.
    let opts = AttachOptions {
        data_pointer: crate::DataPointer::Prp,
        ..Default::default()
    };
    let ctrl = Controller::attach_with(&parsed, &opts).unwrap();
    let e = ctrl.alloc_io_queue(QueueOptions::new(8)).unwrap_err();
    assert!(e.to_string().contains("SGLs"), "{e}");
}

/// Data round trips any target must pass (it only needs a namespace 1 of at least 4 MiB
/// in 512-byte blocks, and MDTS of at most 128 KiB): writes in the capsule and through
/// R2T, a split 1 MiB transfer, a batch of reads in flight, compare, write zeroes.
fn round_trips(trid: &str) {
    let ctrl = Controller::attach(trid).unwrap();
    let ns = ctrl.namespace(1).unwrap();
    assert_eq!(ns.block_size(), 512);
    assert!(ns.blocks() >= 8192);
    let mut qp = ctrl.alloc_io_queue(QueueOptions::new(64)).unwrap();
    let mut buf = ctrl.alloc_dma(1 << 20).unwrap();
    let mut back = ctrl.alloc_dma(1 << 20).unwrap();
    for (lba, len, seed) in [
        (0u64, 4096usize, 11u8),
        (64, 65536, 12),
        (2048, 1 << 20, 13),
    ] {
        buf.as_mut_slice()[..len].copy_from_slice(&pattern(seed, len));
        qp.write_sync(1, lba, buf.slice(0..len).unwrap()).unwrap();
        back.as_mut_slice().fill(0);
        qp.read_sync(1, lba, back.slice(0..len).unwrap()).unwrap();
        assert!(
            back.as_slice()[..len] == pattern(seed, len)[..],
            "{len} bytes at {lba}"
        );
    }
    qp.compare_sync(1, 2048, buf.slice(0..1 << 20).unwrap())
        .unwrap();
    buf.as_mut_slice()[4095] ^= 0x80;
    let e = qp
        .compare_sync(1, 2048, buf.slice(0..4096).unwrap())
        .unwrap_err();
    assert!(
        matches!(e, Error::Nvme { status, .. } if status.is_media(MediaErrorStatus::CompareFailure)),
        "{e}"
    );
    // 32 reads of 4 KiB of the 1 MiB written, in flight together.
    back.as_mut_slice().fill(0);
    for i in 0..32u64 {
        let r = back
            .slice(i as usize * 4096..(i as usize + 1) * 4096)
            .unwrap();
        qp.read(1, 2048 + i * 8, r, i).unwrap();
    }
    let mut seen = 0u64;
    qp.drain(Duration::from_secs(10), |tok, r| {
        r.unwrap();
        seen |= 1 << tok;
    })
    .unwrap();
    assert_eq!(seen, u32::MAX as u64);
    assert!(back.as_slice()[..128 << 10] == pattern(13, 1 << 20)[..128 << 10]);
    qp.write_zeroes_sync(1, 64, 8, Default::default()).unwrap();
    qp.read_sync(1, 64, back.slice(0..8192).unwrap()).unwrap();
    assert!(back.as_slice()[..4096].iter().all(|&b| b == 0));
    assert!(back.as_slice()[4096..8192] == pattern(12, 8192)[4096..]);
    qp.flush_sync(1).unwrap();
}

#[test]
fn data_round_trips_through_the_scripted_target() {
    let (trid, _t) = start(Config {
        digests: digest::DATA,
        ..Default::default()
    });
    round_trips(&format!("{trid} ddgst:1"));
}

/// nvme-sim's NVMe/TCP target on 127.0.0.1, one namespace of 16384 512-byte blocks.
#[cfg(feature = "sim")]
fn sim_target() -> nvme_sim::TcpTarget {
    let cfg = nvme_sim::SimConfig {
        namespaces: vec![nvme_sim::NamespaceConfig {
            lba_size: 512,
            blocks: 16384,
        }],
        ..Default::default()
    };
    let addr = "127.0.0.1:0".parse().unwrap();
    nvme_sim::TcpTarget::start(cfg, addr, Default::default()).unwrap()
}

/// The software controller behind nvme-sim's NVMe/TCP target.
#[cfg(feature = "sim")]
#[test]
fn data_round_trips_through_the_software_controllers_tcp_target() {
    let target = sim_target();
    round_trips(&target.transport_id());
    round_trips(&format!("{} hdgst:1 ddgst:1", target.transport_id()));
}

/// A queue id whose earlier connection the target is still tearing down (Linux's nvmet
/// answers Connect with Command Sequence Error for a moment): Connect is tried again, and
/// the queue pair is made.
#[test]
fn an_io_connect_refused_while_the_target_tears_down_the_qid_is_tried_again() {
    let (trid, t) = start(Config {
        busy_io_connects: 2,
        ..Config::default()
    });
    let ctrl = Controller::attach(&trid).unwrap();
    let mut qp = ctrl.alloc_io_queue(QueueOptions::new(16)).unwrap();
    let io: Vec<u16> = t
        .connects
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.0 != 0)
        .map(|c| c.0)
        .collect();
    assert_eq!(
        io,
        vec![1, 1, 1],
        "two refused Connects of queue 1, then one accepted"
    );
    let mut buf = ctrl.alloc_dma(4096).unwrap();
    buf.as_mut_slice().fill(0x5a);
    qp.write_sync(1, 0, buf.slice(0..4096).unwrap()).unwrap();
    assert!(t.disk.lock().unwrap()[..4096].iter().all(|&b| b == 0x5a));
}

/// A queue id that stays connected at the target: the error says so, after the wait.
#[test]
fn an_io_queue_id_that_stays_connected_is_reported() {
    let (trid, _t) = start(Config {
        busy_io_connects: usize::MAX,
        ..Config::default()
    });
    let ctrl = Controller::attach(&trid).unwrap();
    let e = ctrl.alloc_io_queue(QueueOptions::new(16)).unwrap_err();
    let m = e.to_string();
    assert!(
        m.contains("I/O queue 1 is still connected at the target")
            && m.contains("Command Sequence Error"),
        "{m}"
    );
}

/// A target that goes away and refuses to connect for a while, then comes back, under a
/// program that only uses the synchronous calls (it never polls with nothing in flight):
/// the failed submissions try to connect again, and I/O works again once the target is
/// back.
#[test]
fn a_queue_used_synchronously_reconnects_once_the_target_is_back() {
    use std::sync::atomic::Ordering;
    let (trid, t) = start(Config::default());
    let ctrl = Controller::attach(&trid).unwrap();
    let mut qp = ctrl.alloc_io_queue(QueueOptions::new(16)).unwrap();
    let mut buf = ctrl.alloc_dma(4096).unwrap();
    qp.read_sync(1, 0, buf.slice(0..512).unwrap()).unwrap();
    t.refuse_connects.store(true, Ordering::SeqCst);
    t.restart();
    let gone = qp.read_sync(1, 0, buf.slice(0..512).unwrap()).unwrap_err();
    assert!(gone.to_string().contains("closed the connection"), "{gone}");
    // While the target refuses, each due attempt fails and says why.
    std::thread::sleep(crate::RECONNECT_INTERVAL * 2);
    let refused = qp.read_sync(1, 0, buf.slice(0..512).unwrap()).unwrap_err();
    assert!(
        refused.to_string().contains("no such subsystem"),
        "{refused}"
    );
    t.refuse_connects.store(false, Ordering::SeqCst);
    let back = std::time::Instant::now();
    loop {
        std::thread::sleep(crate::RECONNECT_INTERVAL);
        match qp.read_sync(1, 0, buf.slice(0..512).unwrap()) {
            Ok(()) => break,
            Err(e) => assert!(
                back.elapsed() < Duration::from_secs(5),
                "no read within 5 s of the target's return: {e}"
            ),
        }
    }
}

/// A shared-memory group over NVMe/TCP, two members in this process (each membership is
/// a descriptor of its own): each has its own association and queue ids, the group gives
/// roles, the member table and leases; a member naming another subsystem, or another
/// transport, is refused; the last one out removes the group.
#[cfg(feature = "sim")]
#[test]
fn a_group_over_tcp_gives_each_member_its_own_association() {
    use crate::{LeaseMode, Role};
    let target = sim_target();
    let trid = TransportId::parse(&target.transport_id()).unwrap();
    // Unique on this machine while this process runs (groups live in /dev/shm).
    let id = 3_000_000_000 + std::process::id() % 1_000_000_000;
    let opts = AttachOptions {
        group: Some(id),
        ..Default::default()
    };
    let a = Controller::attach_with(&trid, &opts).unwrap();
    let b = Controller::attach_with(&trid, &opts).unwrap();
    assert_eq!((a.role(), b.role()), (Role::Primary, Role::Secondary));
    assert!(a.group_over_fabrics() && b.group_over_fabrics());
    assert_eq!(b.group_members(), vec![std::process::id(); 2]);
    assert_eq!(target.associations(), 2, "one association per member");
    // Queue ids are each association's own: both get queue 1.
    let mut qa = a.alloc_io_queue(QueueOptions::new(8)).unwrap();
    let mut qb = b.alloc_io_queue(QueueOptions::new(8)).unwrap();
    assert_eq!((qa.qid(), qb.qid()), (1, 1));
    assert_eq!(a.io_queues_in_use(), 1);
    let mut buf = a.alloc_dma(4096).unwrap();
    buf.as_mut_slice().copy_from_slice(&pattern(9, 4096));
    qa.write_sync(1, 40, buf.slice(0..4096).unwrap()).unwrap();
    let mut back = b.alloc_dma(4096).unwrap();
    qb.read_sync(1, 40, back.slice(0..4096).unwrap()).unwrap();
    assert_eq!(back.as_slice(), &pattern(9, 4096)[..]);
    // A reset is one member's new association: the other member's queue goes on as is.
    b.reset().unwrap();
    // (The target ends b's old association when it sees the connection close.)
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while target.associations() != 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(target.associations(), 2, "b's old association ended");
    qa.read_sync(1, 40, buf.slice(0..4096).unwrap()).unwrap();
    assert_eq!(buf.as_slice(), &pattern(9, 4096)[..]);
    // Leases span the group.
    let lease = a.lease(1, 0..100, LeaseMode::Exclusive).unwrap();
    let e = b.lease(1, 50..60, LeaseMode::Shared).unwrap_err();
    assert!(matches!(e, Error::LeaseConflict { .. }), "{e}");
    drop(lease);
    drop(b.lease(1, 50..60, LeaseMode::Shared).unwrap());
    // Another subsystem at the same target, or another transport: refused, saying which.
    let crate::trid::TransportKind::Tcp(mut o) = trid.kind.clone() else {
        unreachable!("a TCP transport id")
    };
    o.subnqn = Some("nqn.2014-08.org.example:other".into());
    let other = TransportId {
        kind: crate::trid::TransportKind::Tcp(o),
        nsid: None,
    };
    let e = Controller::attach_with(&other, &opts)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("group {id} reaches"))
            && e.contains("not 'trtype:TCP")
            && e.contains(":other"),
        "{e}"
    );
    let sim = TransportId::parse("trtype:sim").unwrap();
    let e = Controller::attach_with(&sim, &opts)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("over NVMe/TCP") && e.contains("not trtype:sim"),
        "{e}"
    );
    assert_eq!(target.associations(), 2, "the refused ones opened none");
    drop((qb, b));
    assert_eq!(a.group_members(), vec![std::process::id()]);
    drop((qa, a));
    assert!(
        !crate::group::group_dir(id).exists(),
        "the last member removes the group"
    );
}
