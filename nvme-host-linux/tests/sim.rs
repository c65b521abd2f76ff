//! The driver against the software controller, in-process.

use std::sync::Arc;
use std::time::Duration;

use nvme_host_linux::nvme_core::Command;
use nvme_host_linux::regs::status::{CommandSpecificStatus, GenericStatus, MediaErrorStatus};
use nvme_host_linux::regs::Status;
use nvme_host_linux::sim::{CommandMatch, NamespaceConfig, SimConfig};
use nvme_host_linux::testkit::pattern;
use nvme_host_linux::{
    AttachOptions, Controller, DataPointer, Error, IoQueuePair, QueueOptions, SimTransport,
    Transport, TransportId,
};

const T: Duration = Duration::from_secs(10);

fn attach_config(cfg: SimConfig) -> Result<Controller, Error> {
    attach_config_with(cfg, &AttachOptions::default())
}

fn attach_config_with(cfg: SimConfig, opts: &AttachOptions) -> Result<Controller, Error> {
    let t: Arc<dyn Transport> = Arc::new(SimTransport::with_config(cfg)?);
    Controller::attach_transport(t, TransportId::parse("trtype:sim").unwrap(), opts)
}

/// Two namespaces (512 B and 4 KiB blocks), 16 KiB MDTS so that splits are easy to reach.
fn two_namespaces() -> Controller {
    two_namespaces_with(DataPointer::Auto)
}

/// [`two_namespaces`], its I/O queues pointing to data with `dp`.
fn two_namespaces_with(dp: DataPointer) -> Controller {
    let opts = AttachOptions {
        data_pointer: dp,
        ..AttachOptions::default()
    };
    attach_config_with(
        SimConfig {
            namespaces: vec![
                NamespaceConfig {
                    lba_size: 512,
                    blocks: 64 << 11,
                },
                NamespaceConfig {
                    lba_size: 4096,
                    blocks: 64 << 8,
                },
            ],
            mdts: 2,
            ..Default::default()
        },
        &opts,
    )
    .expect("attach")
}

#[test]
fn attach_reports_identify_and_namespaces() {
    let ctrl =
        Controller::attach("trtype:sim nscount:2 lbasize:4096 size:16M serial:ABC123").unwrap();
    assert_eq!(ctrl.identify().serial(), "ABC123");
    assert_eq!(ctrl.namespaces().len(), 2);
    for (i, ns) in ctrl.namespaces().iter().enumerate() {
        assert_eq!(ns.id(), i as u32 + 1);
        assert_eq!(ns.block_size(), 4096);
        assert_eq!(ns.blocks(), 4096);
    }
    assert_eq!(ctrl.info().vs.major(), 1);
    assert_eq!(
        ctrl.max_transfer(),
        128 << 10,
        "default MDTS 5 with 4 KiB pages"
    );
    let fresh = ctrl.identify_controller().unwrap();
    assert_eq!(fresh.serial(), "ABC123");
    let ns = ctrl.identify_namespace(2).unwrap();
    assert_eq!(ns.nsze, 4096);
}

#[test]
fn data_reads_back_across_sizes_offsets_and_block_sizes() {
    // The same transfers with PRPs and with SGLs (the controller reports SGL support).
    for dp in [DataPointer::Prp, DataPointer::Sgl] {
        data_reads_back_with(dp);
    }
}

fn data_reads_back_with(dp: DataPointer) {
    let ctrl = two_namespaces_with(dp);
    assert_eq!(ctrl.max_transfer(), 16 << 10);
    let mut qp = ctrl.alloc_io_queue(QueueOptions::new(1024)).unwrap();
    assert_eq!(qp.data_pointer(), dp);
    let mut wbuf = ctrl.alloc_dma(5 << 20).unwrap();
    let mut rbuf = ctrl.alloc_dma(5 << 20).unwrap();
    for ns in ctrl.namespaces().to_vec() {
        let bs = ns.block_size() as usize;
        // One block up to several MiB, at offsets that put PRP1 mid-page and force lists and
        // splits (MDTS is 16 KiB here).
        let sizes = [
            bs,
            2 * bs,
            4096,
            8192 + bs,
            16 << 10,
            (16 << 10) + bs,
            100 * 4096,
            4 << 20,
        ];
        let offsets = [0usize, 4, 512, 4096 - 4, 4096 + 2048];
        let mut lba = 0u64;
        for (i, &size) in sizes.iter().enumerate() {
            let size = size.next_multiple_of(bs);
            for &off in &offsets {
                if off % 4 != 0 || off + size > wbuf.len() {
                    continue;
                }
                pattern::fill(
                    (i * 31 + off) as u64 + ns.id() as u64 * 1000,
                    lba,
                    bs,
                    &mut wbuf.as_mut_slice()[off..off + size],
                );
                qp.write_sync(ns.id(), lba, wbuf.slice(off..off + size).unwrap())
                    .unwrap();
                rbuf.as_mut_slice().fill(0);
                let roff = (off + 8) % 4096;
                qp.read_sync(ns.id(), lba, rbuf.slice(roff..roff + size).unwrap())
                    .unwrap();
                assert!(
                    wbuf.as_slice()[off..off + size] == rbuf.as_slice()[roff..roff + size],
                    "{dp:?}: ns {} size {size} write offset {off} read offset {roff}: data differs",
                    ns.id()
                );
                // The controller's own copy agrees byte for byte.
                let mut backing = vec![0u8; size];
                ctrl.sim()
                    .unwrap()
                    .read_backing(ns.id(), lba * bs as u64, &mut backing)
                    .unwrap();
                assert!(backing == wbuf.as_slice()[off..off + size]);
                lba += (size / bs) as u64 + 3;
            }
        }
    }
    // Splitting really happened: a 4 MiB transfer at 16 KiB MDTS is 256 commands.
    assert_eq!(qp.stats().stale_completions, 0);
}

fn expect_status(r: Result<(), Error>, want: Status) {
    match r {
        Err(Error::Nvme { status, .. }) => {
            assert_eq!(status.code(), want.code(), "got {status}, want {want}")
        }
        other => panic!("expected NVMe status {want}, got {other:?}"),
    }
}

fn run(
    qp: &mut IoQueuePair,
    cmd: Command,
    data: Option<nvme_host_linux::IoBuf<'_>>,
) -> Result<(), Error> {
    qp.submit(cmd, data, 7).unwrap();
    let mut out = None;
    qp.drain(T, |t, r| {
        assert_eq!(t, 7);
        out = Some(r)
    })
    .unwrap();
    out.unwrap()
}

#[test]
fn controller_statuses_surface_as_typed_errors() {
    let ctrl = two_namespaces();
    let mut qp = ctrl.alloc_io_queue(QueueOptions::default()).unwrap();
    let mut buf = ctrl.alloc_dma(8192).unwrap();
    let blocks = ctrl.namespace(1).unwrap().blocks();
    expect_status(
        run(
            &mut qp,
            Command::read(1, blocks - 1, 2),
            Some(buf.slice(0..1024).unwrap()),
        ),
        Status::generic(GenericStatus::LbaOutOfRange),
    );
    expect_status(
        run(
            &mut qp,
            Command::read(99, 0, 1),
            Some(buf.slice(0..512).unwrap()),
        ),
        Status::generic(GenericStatus::InvalidNamespaceOrFormat),
    );
    expect_status(
        run(&mut qp, Command::new(0x7e, 1), None),
        Status::generic(GenericStatus::InvalidOpcode),
    );
    // Compare against different data: Compare Failure (media error).
    buf.as_mut_slice()[..512].fill(1);
    qp.write_sync(1, 10, buf.slice(0..512).unwrap()).unwrap();
    buf.as_mut_slice()[..512].fill(2);
    expect_status(
        qp.compare_sync(1, 10, buf.slice(0..512).unwrap()),
        Status::media(MediaErrorStatus::CompareFailure),
    );
    buf.as_mut_slice()[..512].fill(1);
    qp.compare_sync(1, 10, buf.slice(0..512).unwrap()).unwrap();
    // Admin: an invalid log page and an invalid feature.
    match ctrl.get_log_page(0x7f, u32::MAX, 512, 0) {
        Err(e) => assert!(
            e.status()
                .unwrap()
                .is_command_specific(CommandSpecificStatus::InvalidLogPage),
            "{e}"
        ),
        Ok(_) => panic!("invalid log page accepted"),
    }
    let e = ctrl
        .get_features(
            0x7d,
            nvme_host_linux::regs::features::FeatureSelect::Current,
            0,
            0,
        )
        .unwrap_err();
    assert!(
        e.status().unwrap().is_generic(GenericStatus::InvalidField),
        "{e}"
    );
    assert!(
        e.to_string().contains("Get Features") && e.to_string().contains("Invalid Field"),
        "{e}"
    );
    // Every injected status comes back exactly.
    let injected = [
        Status::generic(GenericStatus::DataTransferError),
        Status::generic(GenericStatus::InternalError).with_dnr(),
        Status::media(MediaErrorStatus::UnrecoveredReadError),
        Status::media(MediaErrorStatus::WriteFault),
        Status::generic(GenericStatus::NamespaceNotReady),
    ];
    for s in injected {
        let id = ctrl
            .sim()
            .unwrap()
            .faults()
            .fail_nth(CommandMatch::io(0x02), 1, s, false);
        match qp.read_sync(1, 0, buf.slice(0..512).unwrap()) {
            Err(Error::Nvme {
                status,
                opcode: 0x02,
                admin: false,
            }) => {
                assert_eq!(status.code(), s.code());
                assert_eq!(status.dnr(), s.dnr());
            }
            other => panic!("injected {s}, got {other:?}"),
        }
        assert_eq!(ctrl.sim().unwrap().faults().fired(id), 1);
    }
    qp.read_sync(1, 0, buf.slice(0..512).unwrap()).unwrap();
}

#[test]
fn host_side_checks_name_the_problem() {
    let ctrl = two_namespaces();
    let mut qp = ctrl.alloc_io_queue(QueueOptions::default()).unwrap();
    let mut buf = ctrl.alloc_dma(8192).unwrap();
    let cap = ctrl.namespace(2).unwrap().blocks();
    let e = qp.read(2, cap, buf.slice(0..4096).unwrap(), 0).unwrap_err();
    assert!(matches!(e, Error::LbaOutOfRange { nsid: 2, .. }), "{e}");
    assert!(
        e.to_string().contains("out of range for namespace 2"),
        "{e}"
    );
    let e = qp.read(2, 0, buf.slice(0..512).unwrap(), 0).unwrap_err();
    assert!(
        e.to_string()
            .contains("not a positive multiple of the 4096-byte block size"),
        "{e}"
    );
    let e = qp.read(1, 0, buf.slice(2..514).unwrap(), 0).unwrap_err();
    assert!(e.to_string().contains("not 4-byte aligned"), "{e}");
    let e = qp.read(5, 0, buf.slice(0..512).unwrap(), 0).unwrap_err();
    assert!(matches!(e, Error::NoSuchNamespace(5)));
    let e = buf.slice(0..9000).unwrap_err();
    assert!(
        e.to_string().contains("outside the 8192-byte DMA buffer"),
        "{e}"
    );
    assert_eq!(qp.outstanding(), 0);
    let e = Controller::attach("trtype:sim lbasize:777").unwrap_err();
    assert!(e.to_string().contains("512 or 4096"), "{e}");
    let e = Controller::attach("trtype:PCIe traddr:zz").unwrap_err();
    assert!(e.to_string().contains("bad PCI address"), "{e}");
}

#[test]
fn queue_full_back_pressure() {
    let ctrl = two_namespaces();
    let mut qp = ctrl.alloc_io_queue(QueueOptions::new(8)).unwrap();
    assert_eq!(qp.capacity(), 7);
    let mut buf = ctrl.alloc_dma(128 << 10).unwrap();
    // Hold completions back so the queue really fills.
    let faults = ctrl.sim().unwrap().faults();
    let id = faults.delay_nth(CommandMatch::io(0x01), 1, Duration::from_millis(200), true);
    let mut submitted = 0u64;
    loop {
        match qp.write(1, submitted, buf.slice(0..512).unwrap(), submitted) {
            Ok(()) => submitted += 1,
            Err(Error::Submit(nvme_host_linux::nvme_core::SubmitError::QueueFull)) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(submitted, 7);
    // A 32 KiB write needs two commands at 16 KiB MDTS: refused as a whole, not half-sent.
    let big = qp
        .write(1, 100, buf.slice(0..32 << 10).unwrap(), 99)
        .unwrap_err();
    assert!(matches!(
        big,
        Error::Submit(nvme_host_linux::nvme_core::SubmitError::QueueFull)
    ));
    faults.remove(id);
    let mut done = Vec::new();
    qp.drain(T, |t, r| {
        r.unwrap();
        done.push(t)
    })
    .unwrap();
    done.sort_unstable();
    assert_eq!(done, (0..7).collect::<Vec<_>>());
    // Larger than the queue can ever hold is a different error.
    let e = qp
        .write(1, 0, buf.slice(0..128 << 10).unwrap(), 0)
        .unwrap_err();
    assert!(e.to_string().contains("queue holds"), "{e}");
}

/// A large ring with few commands in flight (`QueueOptions::requests`): the queue pair
/// takes only that many commands, and the completion queue's head doorbell goes out about
/// once per ring's worth of completions instead of once per I/O.
#[test]
fn fewer_requests_than_the_ring_holds() {
    let ctrl = two_namespaces();
    let e = ctrl
        .alloc_io_queue(QueueOptions::new(64).with_requests(0))
        .unwrap_err();
    assert!(e.to_string().contains("0 requests"), "{e}");
    let mut qp = ctrl
        .alloc_io_queue(QueueOptions::new(64).with_requests(2))
        .unwrap();
    assert_eq!(qp.capacity(), 2);
    let mut buf = ctrl.alloc_dma(4096).unwrap();
    for i in 0..3u64 {
        let r = qp.write(
            1,
            i,
            buf.slice(i as usize * 512..(i as usize + 1) * 512).unwrap(),
            i,
        );
        assert_eq!(r.is_ok(), i < 2, "submission {i}: {r:?}");
    }
    qp.drain(T, |_, r| r.unwrap()).unwrap();
    // 200 I/Os at depth 1 on a 64-entry ring: the head is reported when the consumed
    // entries plus the one in flight would exceed 63, so 3 times, not 200.
    let before = qp.stats().cq_doorbells;
    for i in 0..200u64 {
        qp.read_sync(1, i, buf.slice(0..512).unwrap()).unwrap();
    }
    let rung = qp.stats().cq_doorbells - before;
    assert!(
        (1..=4).contains(&rung),
        "{rung} head doorbells for 200 I/Os"
    );
    // The default is as many requests as the ring holds.
    assert_eq!(
        ctrl.alloc_io_queue(QueueOptions::new(64))
            .unwrap()
            .capacity(),
        63
    );
}

#[test]
fn write_zeroes_deallocate_and_flush() {
    let ctrl = two_namespaces();
    let mut qp = ctrl.alloc_io_queue(QueueOptions::default()).unwrap();
    let mut buf = ctrl.alloc_dma(16 << 10).unwrap();
    buf.as_mut_slice().fill(0xee);
    qp.write_sync(2, 8, &mut buf).unwrap();
    qp.write_zeroes(2, 9, 1, 1).unwrap();
    qp.deallocate(2, 11, 1, 2).unwrap();
    qp.flush(2, 3).unwrap();
    let mut tokens = vec![];
    qp.drain(T, |t, r| {
        r.unwrap();
        tokens.push(t)
    })
    .unwrap();
    tokens.sort_unstable();
    assert_eq!(tokens, [1, 2, 3]);
    qp.read_sync(2, 8, &mut buf).unwrap();
    let d = buf.as_slice();
    assert!(d[..4096].iter().all(|&b| b == 0xee));
    assert!(d[4096..8192].iter().all(|&b| b == 0), "write zeroes");
    assert!(d[8192..12288].iter().all(|&b| b == 0xee));
    assert!(
        d[12288..].iter().all(|&b| b == 0),
        "deallocated blocks read as zeroes"
    );
}

#[test]
fn queue_ids_are_pooled_and_reused() {
    let ctrl = attach_config(SimConfig {
        max_io_queues: 3,
        ..Default::default()
    })
    .unwrap();
    let a = ctrl.alloc_io_queue(QueueOptions::default()).unwrap();
    let b = ctrl.alloc_io_queue(QueueOptions::default()).unwrap();
    let c = ctrl.alloc_io_queue(QueueOptions::default()).unwrap();
    let mut ids = vec![a.qid(), b.qid(), c.qid()];
    ids.sort_unstable();
    assert_eq!(ids, [1, 2, 3]);
    let e = ctrl.alloc_io_queue(QueueOptions::default()).unwrap_err();
    assert!(matches!(e, Error::NoQueuesLeft { granted: 3 }), "{e}");
    let freed = b.qid();
    drop(b);
    assert_eq!(ctrl.io_queues_in_use(), 2);
    let d = ctrl.alloc_io_queue(QueueOptions::default()).unwrap();
    assert_eq!(d.qid(), freed);
    let e = ctrl.alloc_io_queue(QueueOptions::new(1 << 20)).unwrap_err();
    assert!(e.to_string().contains("CAP.MQES"), "{e}");
}

#[test]
fn bring_up_timeout_and_fatal_status() {
    let cfg = SimConfig {
        timeout_500ms: 1,
        ..Default::default()
    };
    let t = SimTransport::with_config(cfg).unwrap();
    t.controller().unwrap().faults().set_never_ready(true);
    let t: Arc<dyn Transport> = Arc::new(t);
    let start = std::time::Instant::now();
    let e = Controller::attach_transport(
        t,
        TransportId::parse("trtype:sim").unwrap(),
        &AttachOptions::default(),
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Init(nvme_host_linux::nvme_core::InitError::ReadyTimeout {
                ready: true,
                timeout_ms: 500
            })
        ),
        "{e}"
    );
    assert!(start.elapsed() >= Duration::from_millis(500));
    assert!(e.to_string().contains("CAP.TO"), "{e}");

    // CFS raised while the controller runs: admin commands fail instead of hanging forever,
    // and the status register shows it (here the caller resets; see tests/reset.rs for the
    // automatic reset).
    let t: Arc<dyn Transport> = Arc::new(SimTransport::with_config(SimConfig::default()).unwrap());
    let ctrl = Controller::attach_transport(
        t,
        TransportId::parse("trtype:sim").unwrap(),
        &AttachOptions {
            reset_on_fatal: false,
            ..Default::default()
        },
    )
    .unwrap();
    ctrl.sim().unwrap().faults().raise_cfs();
    let start = std::time::Instant::now();
    while !ctrl.status_register().cfs() {
        assert!(start.elapsed() < T, "CSTS.CFS never set");
        std::thread::sleep(Duration::from_millis(1));
    }
    let started = std::time::Instant::now();
    let e = ctrl.smart_log().unwrap_err();
    assert!(matches!(e, Error::ControllerFatal), "{e}");
    assert!(e.to_string().contains("reset it"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "fatal status noticed promptly"
    );
}

#[test]
fn queue_pairs_on_several_threads() {
    let ctrl = two_namespaces();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let ctrl = ctrl.clone();
            std::thread::spawn(move || {
                let mut qp = ctrl.alloc_io_queue(QueueOptions::new(64)).unwrap();
                let mut buf = ctrl.alloc_dma(64 * 4096).unwrap();
                // LBAs t * 64.. of the 4 KiB namespace; the second half (LBAs t * 64 + 32..,
                // never written) differs from the first until the reads land there.
                pattern::fill(t, t * 64, 4096, buf.as_mut_slice());
                // 32 writes in flight at once, one region per thread.
                for i in 0..32usize {
                    qp.write(
                        2,
                        t * 64 + i as u64,
                        buf.slice(i * 4096..(i + 1) * 4096).unwrap(),
                        i as u64,
                    )
                    .unwrap();
                }
                let mut n = 0;
                qp.drain(T, |_, r| {
                    r.unwrap();
                    n += 1
                })
                .unwrap();
                assert_eq!(n, 32);
                for i in 0..32usize {
                    qp.read(
                        2,
                        t * 64 + i as u64,
                        buf.slice((32 + i) * 4096..(33 + i) * 4096).unwrap(),
                        i as u64,
                    )
                    .unwrap();
                }
                qp.drain(T, |_, r| r.unwrap()).unwrap();
                let d = buf.as_slice();
                assert!(d[..32 * 4096] == d[32 * 4096..]);
                pattern::check(t, t * 64, 4096, &d[32 * 4096..]).unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(ctrl.io_queues_in_use(), 0);
}

#[test]
fn buffer_in_flight_cannot_be_read() {
    let ctrl = two_namespaces();
    let mut qp = ctrl.alloc_io_queue(QueueOptions::default()).unwrap();
    let mut buf = ctrl.alloc_dma(4096).unwrap();
    let faults = ctrl.sim().unwrap().faults();
    faults.delay_nth(CommandMatch::io(0x02), 1, Duration::from_millis(100), false);
    qp.read(1, 0, &mut buf, 1).unwrap();
    qp.ring();
    assert!(buf.in_flight());
    assert!(buf.try_as_slice().is_none());
    assert!(buf.try_as_mut_slice().is_none());
    qp.drain(T, |_, r| r.unwrap()).unwrap();
    assert!(!buf.in_flight());
    assert!(buf.try_as_slice().is_some());
}

#[test]
fn a_recreated_queue_id_works_again() {
    // A new queue with the id of a deleted one starts at tail 0, whatever the old queue's
    // last doorbell value was (it must not be taken for the new queue's tail).
    let ctrl = two_namespaces();
    let mut buf = ctrl.alloc_dma(4096).unwrap();
    for round in 0..4u64 {
        let mut qp = ctrl.alloc_io_queue(QueueOptions::new(16)).unwrap();
        assert_eq!(qp.qid(), 1);
        for i in 0..(5 - round) {
            qp.read_sync(1, i, buf.slice(0..512).unwrap()).unwrap();
        }
        assert_eq!(qp.stats().stale_completions, 0, "round {round}");
    }
    let stats = ctrl.sim().unwrap().stats();
    assert_eq!(
        stats.errors, 0,
        "the controller saw commands nobody submitted"
    );
    assert_eq!(stats.reads, 5 + 4 + 3 + 2);
}

#[test]
fn asynchronous_events_are_delivered() {
    use nvme_host_linux::sim::AsyncEventType;
    let ctrl = two_namespaces();
    assert!(ctrl.async_events().is_empty());
    let faults = ctrl.sim().unwrap().faults();
    for info in [1u8, 2] {
        faults.raise_async_event(AsyncEventType::SmartHealth, info, 0x02);
        let start = std::time::Instant::now();
        let events = loop {
            let e = ctrl.async_events();
            if !e.is_empty() {
                break e;
            }
            assert!(start.elapsed() < T, "event {info} never arrived");
            std::thread::sleep(Duration::from_millis(1));
        };
        assert_eq!(events.len(), 1);
        assert_eq!(
            (events[0].event_type, events[0].info, events[0].log_page),
            (1, info, 2)
        );
        // Reading the log page is what the host does next; admin commands keep working
        // with the event request outstanding.
        ctrl.smart_log().unwrap();
    }
}

#[test]
fn data_pointer_follows_the_controllers_sgl_support() {
    // SGLs reported: Auto takes them; PRPs can be forced, and the queue switched back.
    let ctrl = two_namespaces();
    let mut qp = ctrl.alloc_io_queue(QueueOptions::default()).unwrap();
    assert_eq!(qp.data_pointer(), DataPointer::Sgl);
    qp.set_data_pointer(DataPointer::Prp).unwrap();
    assert_eq!(qp.data_pointer(), DataPointer::Prp);
    let forced = two_namespaces_with(DataPointer::Prp);
    let qp = forced.alloc_io_queue(QueueOptions::default()).unwrap();
    assert_eq!(qp.data_pointer(), DataPointer::Prp);

    // No SGL support: Auto takes PRPs, and SGLs asked for by force are refused by name.
    let no_sgl = || SimConfig {
        sgl: false,
        ..Default::default()
    };
    let ctrl = attach_config(no_sgl()).unwrap();
    let mut qp = ctrl.alloc_io_queue(QueueOptions::default()).unwrap();
    assert_eq!(qp.data_pointer(), DataPointer::Prp);
    let e = qp.set_data_pointer(DataPointer::Sgl).unwrap_err();
    assert!(e.to_string().contains("does not support SGLs"), "{e}");
    assert_eq!(qp.data_pointer(), DataPointer::Prp);
    let mut buf = ctrl.alloc_dma(4096).unwrap();
    qp.write_sync(1, 0, &mut buf).unwrap();
    let opts = AttachOptions {
        data_pointer: DataPointer::Sgl,
        ..AttachOptions::default()
    };
    let ctrl = attach_config_with(no_sgl(), &opts).unwrap();
    let e = ctrl.alloc_io_queue(QueueOptions::default()).unwrap_err();
    assert!(e.to_string().contains("Identify SGLS = 0x0"), "{e}");
}
