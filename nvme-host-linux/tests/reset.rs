//! Controller reset in a process that attached alone: outstanding I/O completes once, as
//! aborted by the reset; no DMA memory is used after it was let go; the queues, the
//! asynchronous event request and acknowledged data survive; a fatal controller recovers;
//! a controller that never becomes ready again is a clear error.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nvme_host_linux::regs::opcode::NvmOpcode;
use nvme_host_linux::sim::{AsyncEventType, CommandMatch, SimConfig, SimController};
use nvme_host_linux::testkit::pattern;
use nvme_host_linux::{
    AttachOptions, Controller, Error, QueueOptions, SimTransport, Transport, TransportId,
};

const T: Duration = Duration::from_secs(10);

fn sim(ctrl: &Controller) -> &SimController {
    ctrl.sim().expect("a software controller in this process")
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < T, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_reset_aborts_outstanding_io_once_and_everything_comes_back() {
    let ctrl = Controller::attach("trtype:sim size:16M").unwrap();
    let s = sim(&ctrl);
    let mut qp = ctrl.alloc_io_queue(QueueOptions::new(16)).unwrap();
    let mut buf = ctrl.alloc_dma(8192).unwrap();
    // An acknowledged write survives the reset.
    let mut acked = vec![0u8; 4096];
    pattern::fill(1, 0, 512, &mut acked);
    buf.as_mut_slice()[..4096].copy_from_slice(&acked);
    qp.write_sync(1, 0, buf.slice(0..4096).unwrap()).unwrap();
    // A write the controller holds (its transfer and completion come 1.5 s later) is in
    // flight when the reset comes.
    let held = Duration::from_millis(1500);
    s.faults()
        .delay_execution_nth(CommandMatch::io(NvmOpcode::Write as u8), 1, held, false);
    let submitted = Instant::now();
    qp.write(1, 8, buf.slice(4096..8192).unwrap(), 7).unwrap();
    qp.ring();
    wait_until("the controller holds the write", || {
        s.faults().counters().executions_delayed == 1
    });
    let resets = s.stats().resets;
    ctrl.reset().unwrap();
    assert!(s.stats().resets > resets, "the controller was disabled");
    // New submissions before the queue pair reconnects are refused, not lost.
    assert!(matches!(
        qp.read(1, 0, buf.slice(0..4096).unwrap(), 8),
        Err(Error::AbortedByReset)
    ));
    let mut done = Vec::new();
    qp.process_completions(usize::MAX, |t, r| done.push((t, r)));
    assert_eq!(done.len(), 1, "the held write completes once: {done:?}");
    assert_eq!(done[0].0, 7);
    assert!(matches!(done[0].1, Err(Error::AbortedByReset)), "{done:?}");
    assert_eq!(qp.outstanding(), 0);
    // The controller let go of the held write at its reset; nothing touched memory that
    // was let go, and nothing completes twice, also past the time it was held for.
    drop(buf);
    wait_until("the reset dropped the held write", || {
        s.faults().counters().delayed_executed == 1
    });
    while submitted.elapsed() < held + Duration::from_millis(300) {
        std::thread::sleep(Duration::from_millis(10));
        let mut late = 0;
        qp.process_completions(usize::MAX, |_, _| late += 1);
        assert_eq!(late, 0, "nothing completes twice");
    }
    assert_eq!(s.dma_errors(), 0, "{:?}", s.dma_error_log());
    // The queue pair works again on the re-created queues, and the acknowledged data is
    // there.
    let mut buf = ctrl.alloc_dma(4096).unwrap();
    qp.read_sync(1, 0, buf.slice(0..4096).unwrap()).unwrap();
    assert_eq!(buf.as_slice(), &acked[..]);
    qp.write_sync(1, 8, buf.slice(0..4096).unwrap()).unwrap();
    // Admin commands and asynchronous events work after the reset.
    assert_eq!(
        ctrl.identify_controller().unwrap().serial(),
        ctrl.identify().serial()
    );
    s.faults()
        .raise_async_event(AsyncEventType::Notice, 1, 0x04);
    let mut events = Vec::new();
    wait_until("the event after the reset", || {
        events = ctrl.async_events();
        !events.is_empty()
    });
    assert_eq!((events[0].event_type, events[0].info), (2, 1));
    // A second queue pair created after the reset works too, and so does a second reset.
    let mut qp2 = ctrl.alloc_io_queue(QueueOptions::new(8)).unwrap();
    ctrl.reset().unwrap();
    let mut buf2 = ctrl.alloc_dma(4096).unwrap();
    for q in [&mut qp, &mut qp2] {
        q.process_completions(usize::MAX, |_, _| panic!("nothing was outstanding"));
        q.read_sync(1, 0, buf2.slice(0..4096).unwrap()).unwrap();
        assert_eq!(buf2.as_slice(), &acked[..]);
    }
    drop((qp, qp2));
    assert_eq!(s.dma_errors(), 0, "{:?}", s.dma_error_log());
}

/// Attaches alone to a software controller in this process.
fn attach(opts: AttachOptions) -> Controller {
    let t: Arc<dyn Transport> = Arc::new(SimTransport::with_config(SimConfig::default()).unwrap());
    Controller::attach_transport(t, TransportId::parse("trtype:sim").unwrap(), &opts).unwrap()
}

#[test]
fn a_fatal_controller_recovers_with_a_reset() {
    // Left to the caller: the admin command reports the fatal status.
    let ctrl = attach(AttachOptions {
        reset_on_fatal: false,
        ..Default::default()
    });
    let mut qp = ctrl.alloc_io_queue(QueueOptions::default()).unwrap();
    let mut buf = ctrl.alloc_dma(4096).unwrap();
    sim(&ctrl).faults().raise_cfs();
    wait_until("fatal status", || ctrl.status_register().cfs());
    assert!(matches!(
        ctrl.identify_controller(),
        Err(Error::ControllerFatal)
    ));
    assert!(ctrl.status_register().cfs(), "nothing reset it");
    ctrl.reset().unwrap();
    assert!(!ctrl.status_register().cfs());
    qp.process_completions(usize::MAX, |_, _| {});
    qp.write_sync(1, 0, buf.slice(0..4096).unwrap()).unwrap();
    ctrl.smart_log().unwrap();
}

#[test]
fn an_admin_command_that_finds_the_controller_fatal_resets_it() {
    let ctrl = attach(AttachOptions::default());
    let mut qp = ctrl.alloc_io_queue(QueueOptions::default()).unwrap();
    let mut buf = ctrl.alloc_dma(4096).unwrap();
    let resets = sim(&ctrl).stats().resets;
    sim(&ctrl).faults().raise_cfs();
    wait_until("fatal status", || ctrl.status_register().cfs());
    // The command is aborted by the reset it caused; retried, it works.
    assert!(matches!(ctrl.smart_log(), Err(Error::AbortedByReset)));
    assert!(!ctrl.status_register().cfs());
    assert!(sim(&ctrl).stats().resets > resets);
    ctrl.smart_log().unwrap();
    // The queue pair reconnects and works.
    qp.process_completions(usize::MAX, |_, _| {});
    qp.write_sync(1, 0, buf.slice(0..4096).unwrap()).unwrap();
}

#[test]
fn a_controller_that_does_not_come_back_is_a_clear_error() {
    // CAP.TO of 500 ms: the bring-up gives up on readiness quickly.
    let cfg = SimConfig {
        timeout_500ms: 1,
        ..Default::default()
    };
    let t: Arc<dyn Transport> = Arc::new(SimTransport::with_config(cfg).unwrap());
    let ctrl = Controller::attach_transport(
        t,
        TransportId::parse("trtype:sim").unwrap(),
        &AttachOptions::default(),
    )
    .unwrap();
    let mut qp = ctrl.alloc_io_queue(QueueOptions::default()).unwrap();
    sim(&ctrl).faults().set_never_ready(true);
    let e = ctrl.reset().unwrap_err();
    assert!(
        e.to_string().contains("did not become ready within CAP.TO"),
        "{e}"
    );
    // Until a reset succeeds: admin commands fail at once, and the queue pair does not
    // reconnect to a controller that is not ready (submissions stay refused rather than
    // going to queues that do not exist).
    assert!(matches!(ctrl.smart_log(), Err(Error::NeedsReset)));
    let mut buf = ctrl.alloc_dma(4096).unwrap();
    assert_eq!(qp.process_completions(usize::MAX, |_, _| {}), 0);
    assert!(matches!(
        qp.write(1, 0, buf.slice(0..4096).unwrap(), 1),
        Err(Error::AbortedByReset)
    ));
    // Once the controller behaves, a reset brings everything back.
    sim(&ctrl).faults().set_never_ready(false);
    ctrl.reset().unwrap();
    qp.process_completions(usize::MAX, |_, _| {});
    qp.write_sync(1, 0, buf.slice(0..4096).unwrap()).unwrap();
}
