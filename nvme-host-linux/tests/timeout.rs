//! Commands that do not complete in time (`AttachOptions::timeout_action`,
//! `IoQueuePair::set_timeout`): software controller faults make completions go missing
//! (`Drop`: the command ran, its completion never comes) or hold commands back
//! (`DelayExecution`: the controller can still give them back). Lost completion -> timeout
//! -> Abort -> "not aborted" -> controller reset; held command -> Abort -> aborted, no
//! reset; and with the action `None`, nothing but the timeout error.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nvme_host_linux::regs::opcode::{AdminOpcode, NvmOpcode};
use nvme_host_linux::sim::{AbortSeen, CommandMatch, SimConfig, SimController};
use nvme_host_linux::testkit::pattern;
use nvme_host_linux::{
    AttachOptions, Controller, Error, QueueOptions, SimTransport, TimeoutAction, Transport,
    TransportId,
};

/// Short bounds: every test waits at most a few hundred milliseconds for a timeout.
const ADMIN_TIMEOUT: Duration = Duration::from_millis(200);
const ABORT_TIMEOUT: Duration = Duration::from_millis(150);

fn attach(action: TimeoutAction) -> Controller {
    let t: Arc<dyn Transport> = Arc::new(SimTransport::with_config(SimConfig::default()).unwrap());
    let opts = AttachOptions {
        admin_timeout: ADMIN_TIMEOUT,
        abort_timeout: ABORT_TIMEOUT,
        timeout_action: action,
        ..Default::default()
    };
    Controller::attach_transport(t, TransportId::parse("trtype:sim").unwrap(), &opts).unwrap()
}

fn sim(ctrl: &Controller) -> &SimController {
    ctrl.sim().expect("a software controller in this process")
}

const LOG_PAGE: u8 = AdminOpcode::GetLogPage as u8;

/// The controller works: an Identify, and a write read back through `qp` (which
/// reconnects first if a reset happened).
fn works(ctrl: &Controller, qp: &mut nvme_host_linux::IoQueuePair, seed: u64) {
    assert_eq!(
        ctrl.identify_controller().unwrap().serial(),
        ctrl.identify().serial()
    );
    qp.process_completions(usize::MAX, |t, r| panic!("nothing outstanding: {t} {r:?}"));
    let mut buf = ctrl.alloc_dma(8192).unwrap();
    pattern::fill(seed, 64, 512, &mut buf.as_mut_slice()[..4096]);
    qp.write_sync(1, 64, buf.slice(0..4096).unwrap()).unwrap();
    qp.read_sync(1, 64, buf.slice(4096..8192).unwrap()).unwrap();
    pattern::check(seed, 64, 512, &buf.as_slice()[4096..]).unwrap();
}

#[test]
fn an_admin_command_whose_completion_is_lost_is_aborted_then_the_controller_reset() {
    let ctrl = attach(TimeoutAction::Abort);
    let s = sim(&ctrl);
    let mut qp = ctrl.alloc_io_queue(QueueOptions::new(16)).unwrap();
    works(&ctrl, &mut qp, 1);
    let resets = s.stats().resets;
    let lost = s.faults().drop_nth(CommandMatch::admin(LOG_PAGE), 1, false);
    let r = ctrl.smart_log();
    // The log page ran, its completion never came: the Abort named it, the controller
    // answered "not aborted", the driver reset the controller, which completed it.
    assert!(matches!(r, Err(Error::AbortedByReset)), "{:?}", r.err());
    let named = s.faults().fired_on(lost);
    assert_eq!(named.len(), 1);
    assert_eq!(
        s.faults().aborts(),
        [AbortSeen {
            sqid: 0,
            cid: named[0].1,
            aborted: false
        }],
        "one Abort, of the lost command (SQ 0, its CID)"
    );
    assert_eq!(s.stats().resets, resets + 1, "one reset");
    // Everything works again: admin commands, and I/O on the re-created queues.
    works(&ctrl, &mut qp, 2);
    ctrl.smart_log().unwrap();
    assert_eq!(s.dma_errors(), 0, "{:?}", s.dma_error_log());
}

#[test]
fn an_admin_command_the_controller_still_holds_is_aborted_without_a_reset() {
    let ctrl = attach(TimeoutAction::Abort);
    let s = sim(&ctrl);
    let mut qp = ctrl.alloc_io_queue(QueueOptions::new(16)).unwrap();
    let resets = s.stats().resets;
    let held = s.faults().delay_execution_nth(
        CommandMatch::admin(LOG_PAGE),
        1,
        Duration::from_secs(5),
        false,
    );
    let start = Instant::now();
    let r = ctrl.smart_log();
    assert!(
        matches!(r, Err(Error::TimeoutAborted { opcode: LOG_PAGE, admin: true, waited_ms }) if waited_ms == ADMIN_TIMEOUT.as_millis() as u64),
        "{:?}",
        r.err()
    );
    assert!(start.elapsed() < Duration::from_secs(5), "not waited out");
    let e = r.unwrap_err().to_string();
    assert!(e.contains("was aborted") && e.contains("retry"), "{e}");
    let named = s.faults().fired_on(held);
    assert_eq!(
        s.faults().aborts(),
        [AbortSeen {
            sqid: 0,
            cid: named[0].1,
            aborted: true
        }]
    );
    // The controller gave the command back: no reset, and it never ran (the held
    // execution was dropped by the Abort).
    assert_eq!(s.stats().resets, resets, "no reset");
    assert_eq!(s.faults().counters().delayed_executed, 1);
    works(&ctrl, &mut qp, 3);
    assert_eq!(s.stats().resets, resets, "no reset");
    assert_eq!(s.dma_errors(), 0, "{:?}", s.dma_error_log());
}

#[test]
fn with_the_action_none_a_timeout_is_only_reported() {
    let ctrl = attach(TimeoutAction::None);
    let s = sim(&ctrl);
    let mut qp = ctrl.alloc_io_queue(QueueOptions::new(16)).unwrap();
    let resets = s.stats().resets;
    s.faults().drop_nth(CommandMatch::admin(LOG_PAGE), 1, false);
    let r = ctrl.smart_log();
    assert!(
        matches!(
            r,
            Err(Error::Timeout {
                opcode: LOG_PAGE,
                admin: true,
                ..
            })
        ),
        "{:?}",
        r.err()
    );
    assert!(s.faults().aborts().is_empty(), "no Abort");
    assert_eq!(s.stats().resets, resets, "no reset");
    // The I/O timeout does nothing either: the write stays outstanding.
    qp.set_timeout(Some(Duration::from_millis(100)));
    s.faults()
        .drop_nth(CommandMatch::io(NvmOpcode::Write as u8), 1, false);
    let mut buf = ctrl.alloc_dma(4096).unwrap();
    qp.write(1, 0, buf.slice(0..4096).unwrap(), 9).unwrap();
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(400) {
        qp.process_completions(usize::MAX, |t, r| panic!("completed: {t} {r:?}"));
    }
    assert_eq!(qp.outstanding(), 1);
    // A drain gives up on it by name (how many, how long), and leaves it outstanding.
    let e = qp
        .drain(Duration::from_millis(50), |t, r| {
            panic!("completed: {t} {r:?}")
        })
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::DrainTimeout {
                outstanding: 1,
                waited_ms: 50
            }
        ),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .contains("1 I/O request(s) still outstanding after 50 ms"),
        "{e}"
    );
    assert_eq!(qp.outstanding(), 1);
    assert!(s.faults().aborts().is_empty(), "no Abort");
    assert_eq!(s.stats().resets, resets, "no reset");
    works_admin(&ctrl);
    // Let the queue pair go without waiting for the lost write: a reset completes it.
    ctrl.reset().unwrap();
    let mut done = 0;
    qp.process_completions(usize::MAX, |_, r| {
        assert!(matches!(r, Err(Error::AbortedByReset)));
        done += 1;
    });
    assert_eq!(done, 1);
}

fn works_admin(ctrl: &Controller) {
    ctrl.smart_log().unwrap();
}

#[test]
fn with_the_action_reset_the_controller_is_reset_without_an_abort() {
    let ctrl = attach(TimeoutAction::Reset);
    let s = sim(&ctrl);
    let mut qp = ctrl.alloc_io_queue(QueueOptions::new(16)).unwrap();
    let resets = s.stats().resets;
    s.faults().drop_nth(CommandMatch::admin(LOG_PAGE), 1, false);
    let r = ctrl.smart_log();
    assert!(matches!(r, Err(Error::AbortedByReset)), "{:?}", r.err());
    assert!(s.faults().aborts().is_empty(), "no Abort");
    assert_eq!(s.stats().resets, resets + 1, "one reset");
    works(&ctrl, &mut qp, 4);
}

/// Submits writes of 4 KiB at LBAs 0, 8, ... (tokens 0, 1, ...) from `buf`.
fn submit_writes(
    qp: &mut nvme_host_linux::IoQueuePair,
    buf: &mut nvme_host_linux::DmaBuffer,
    n: u64,
) {
    for i in 0..n {
        let at = i as usize * 4096;
        qp.write(1, i * 8, buf.slice(at..at + 4096).unwrap(), i)
            .unwrap();
    }
    qp.ring();
}

#[test]
fn an_io_write_whose_completion_is_lost_is_aborted_then_the_controller_reset() {
    let ctrl = attach(TimeoutAction::Abort);
    let s = sim(&ctrl);
    let mut qp = ctrl.alloc_io_queue(QueueOptions::new(16)).unwrap();
    let limit = Duration::from_millis(150);
    qp.set_timeout(Some(limit));
    assert_eq!(qp.timeout(), Some(limit));
    let resets = s.stats().resets;
    // Write 2 of 4 is lost (it ran; its completion never comes); write 3 is held by the
    // controller long enough to be outstanding when the reset comes.
    let write = NvmOpcode::Write as u8;
    let lost = s.faults().drop_nth(CommandMatch::io(write), 2, false);
    s.faults()
        .delay_execution_nth(CommandMatch::io(write), 3, Duration::from_secs(5), false);
    let mut buf = ctrl.alloc_dma(4 * 4096).unwrap();
    pattern::fill(5, 0, 512, buf.as_mut_slice());
    submit_writes(&mut qp, &mut buf, 4);
    let mut done: Vec<(u64, Result<(), Error>)> = Vec::new();
    let start = Instant::now();
    while qp.outstanding() > 0 {
        assert!(start.elapsed() < Duration::from_secs(10), "{done:?}");
        qp.process_completions(usize::MAX, |t, r| done.push((t, r)));
    }
    // Each write completed exactly once: 0 and 3 normally, the lost one and the held one
    // as aborted by the reset (each may or may not have been carried out).
    done.sort_by_key(|d| d.0);
    assert_eq!(
        done.iter().map(|d| d.0).collect::<Vec<_>>(),
        [0, 1, 2, 3],
        "{done:?}"
    );
    assert!(done[0].1.is_ok() && done[3].1.is_ok(), "{done:?}");
    for d in &done[1..3] {
        assert!(matches!(d.1, Err(Error::AbortedByReset)), "{done:?}");
    }
    assert!(start.elapsed() >= limit, "not before the timeout");
    let named = s.faults().fired_on(lost);
    assert_eq!(
        s.faults().aborts(),
        [AbortSeen {
            sqid: qp.qid(),
            cid: named[0].1,
            aborted: false
        }],
        "one Abort, of the lost write (its SQ, its CID)"
    );
    assert_eq!(s.stats().resets, resets + 1, "one reset");
    // Nothing completes twice, and no memory was used after it was let go.
    drop(buf);
    let mut late = 0;
    qp.process_completions(usize::MAX, |_, _| late += 1);
    assert_eq!(late, 0);
    // New I/O works (the queues were re-created) and reads back.
    works(&ctrl, &mut qp, 6);
    assert_eq!(s.dma_errors(), 0, "{:?}", s.dma_error_log());
}

#[test]
fn an_io_write_the_controller_still_holds_is_aborted_without_a_reset() {
    let ctrl = attach(TimeoutAction::Abort);
    let s = sim(&ctrl);
    let mut qp = ctrl.alloc_io_queue(QueueOptions::new(16)).unwrap();
    qp.set_timeout(Some(Duration::from_millis(150)));
    let resets = s.stats().resets;
    let write = NvmOpcode::Write as u8;
    let held =
        s.faults()
            .delay_execution_nth(CommandMatch::io(write), 2, Duration::from_secs(5), false);
    let mut buf = ctrl.alloc_dma(3 * 4096).unwrap();
    submit_writes(&mut qp, &mut buf, 3);
    let mut done: Vec<(u64, Result<(), Error>)> = Vec::new();
    let start = Instant::now();
    while qp.outstanding() > 0 {
        assert!(start.elapsed() < Duration::from_secs(4), "{done:?}");
        qp.process_completions(usize::MAX, |t, r| done.push((t, r)));
    }
    done.sort_by_key(|d| d.0);
    assert_eq!(done.len(), 3, "{done:?}");
    assert!(done[0].1.is_ok() && done[2].1.is_ok(), "{done:?}");
    assert!(
        matches!(
            done[1].1,
            Err(Error::TimeoutAborted {
                opcode: 0x01,
                admin: false,
                waited_ms: 150
            })
        ),
        "{done:?}"
    );
    let named = s.faults().fired_on(held);
    assert_eq!(
        s.faults().aborts(),
        [AbortSeen {
            sqid: qp.qid(),
            cid: named[0].1,
            aborted: true
        }]
    );
    assert_eq!(s.stats().resets, resets, "no reset");
    works(&ctrl, &mut qp, 7);
    assert_eq!(s.dma_errors(), 0, "{:?}", s.dma_error_log());
}
