//! DMA memory lives until the device is done with it: a command's data buffer, PRP list and
//! rings stay mapped (and unused by anything else) until its completion is reaped or the
//! controller has been disabled. The software controller executes commands late on request
//! (`DelayExecution`: the data moves after the delay) and counts device accesses to
//! unmapped IOVAs (`dma_errors`), which an IOMMU would fault. The admin timeouts here use
//! the timeout action `None`, under which a timed-out command stays outstanding (the other
//! actions abort it or reset the controller: `tests/timeout.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use nvme_host_linux::nvme_core::Command;
use nvme_host_linux::regs::identify::{cns, IDENTIFY_DATA_SIZE};
use nvme_host_linux::regs::log::lid;
use nvme_host_linux::regs::opcode::{AdminOpcode, NvmOpcode};
use nvme_host_linux::regs::status::GenericStatus;
use nvme_host_linux::regs::Status;
use nvme_host_linux::sim::{CommandMatch, SimConfig, SimController};
use nvme_host_linux::{
    AttachOptions, Controller, Error, QueueOptions, SimTransport, TimeoutAction, Transport,
    TransportId,
};

/// Attaches to a fresh software controller with a short admin timeout (and the timeout
/// action `None`: a command that times out stays outstanding); also returns the
/// transport, which outlives the controller so that the test can look at the software
/// controller after the driver detached.
fn attach(admin_timeout: Duration) -> (Controller, Arc<dyn Transport>) {
    let t: Arc<dyn Transport> = Arc::new(SimTransport::with_config(SimConfig::default()).unwrap());
    let ctrl = Controller::attach_transport(
        t.clone(),
        TransportId::parse("trtype:sim").unwrap(),
        &AttachOptions {
            admin_timeout,
            timeout_action: TimeoutAction::None,
            ..Default::default()
        },
    )
    .unwrap();
    (ctrl, t)
}

fn sim(t: &Arc<dyn Transport>) -> &SimController {
    SimTransport::of(t.as_ref())
        .and_then(|t| t.controller())
        .expect("a software controller in this process")
}

/// Waits (bounded) until `f` holds.
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn assert_no_dma_errors(s: &SimController) {
    assert_eq!(
        s.dma_errors(),
        0,
        "the controller accessed unmapped memory: {:#?}",
        s.dma_error_log()
    );
}

/// Detaches, and checks that nothing touched unmapped memory before or during the detach.
fn detach_cleanly(ctrl: Controller, s: &SimController) {
    assert_no_dma_errors(s);
    drop(ctrl);
    assert_no_dma_errors(s);
}

/// Postpones the transfer and completion of the first command matching `m` by `by`.
fn postpone(s: &SimController, m: CommandMatch, by: Duration) {
    s.faults().delay_execution_nth(m, 1, by, false);
}

/// Identify Controller into a buffer of the caller's: it must time out (its execution is
/// postponed); the caller then drops the buffer.
fn identify_into_a_dropped_buffer_times_out(ctrl: &Controller) {
    let mut buf = ctrl.alloc_dma(IDENTIFY_DATA_SIZE).unwrap();
    let r = ctrl.admin_command(
        Command::identify(cns::CONTROLLER, 0, 0),
        Some(buf.slice(0..IDENTIFY_DATA_SIZE).unwrap()),
    );
    assert!(
        is_admin_timeout(&r, AdminOpcode::Identify as u8),
        "{:?}",
        r.err()
    );
}

fn is_admin_timeout(r: &Result<impl std::fmt::Debug, Error>, opcode: u8) -> bool {
    matches!(r, Err(Error::Timeout { opcode: o, admin: true, .. }) if *o == opcode)
}

fn pattern(seed: u8, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31).wrapping_add(seed) | 1;
    }
}

/// An admin command that timed out still owns the admin data buffer: the next command
/// must not share it, or the late transfer lands in the next command's data.
///
/// Timeline (admin timeout T = 1.5 s): Identify is fetched at 0 and executes (writes its
/// 4 KiB) at 2.0 s; the driver gives up at 1.5 s. The Firmware Slot log is fetched at
/// ~1.5 s, its data written at once, its completion posted 1.0 s later (~2.5 s). The late
/// Identify data arrives in between.
#[test]
fn admin_timeout_keeps_the_admin_data_buffer_until_the_late_completion() {
    let (ctrl, t) = attach(Duration::from_millis(1500));
    let s = sim(&t);
    let faults = s.faults();
    let reference = ctrl
        .get_log_page(lid::FIRMWARE_SLOT, u32::MAX, 512, 0)
        .unwrap();
    assert!(reference.iter().any(|&b| b != 0), "the log has content");

    postpone(
        s,
        CommandMatch::admin(AdminOpcode::Identify as u8),
        Duration::from_millis(2000),
    );
    let r = ctrl.identify_controller();
    assert!(
        is_admin_timeout(&r, AdminOpcode::Identify as u8),
        "{:?}",
        r.err()
    );
    assert_eq!(faults.counters().delayed_executed, 0, "not executed yet");

    faults.delay_nth(
        CommandMatch::admin(AdminOpcode::GetLogPage as u8),
        1,
        Duration::from_millis(1000),
        false,
    );
    let log = ctrl
        .get_log_page(lid::FIRMWARE_SLOT, u32::MAX, 512, 0)
        .unwrap();
    // The scenario happened as planned: the late Identify transfer took place while the
    // log page command was in flight.
    assert_eq!(
        faults.counters().delayed_executed,
        1,
        "the late Identify ran before the log page completed"
    );
    assert_eq!(
        log, reference,
        "the log page data was overwritten by the late Identify transfer"
    );
    // The late completion is reaped by the next admin command; the driver then lets the
    // old buffer go. Nothing touched unmapped memory on the way.
    let id = ctrl.identify_controller().unwrap();
    assert_eq!(id.serial(), ctrl.identify().serial());
    detach_cleanly(ctrl, s);
}

/// An admin command with the caller's buffer times out and the caller drops the buffer:
/// the driver keeps it mapped until the late transfer is over.
#[test]
fn admin_timeout_keeps_the_callers_buffer_mapped() {
    let (ctrl, t) = attach(Duration::from_millis(200));
    let s = sim(&t);
    let faults = s.faults();
    // Held 10 times longer than the timeout: a loaded machine that stalls this thread for
    // a while still sees the timeout first.
    postpone(
        s,
        CommandMatch::admin(AdminOpcode::Identify as u8),
        Duration::from_millis(2000),
    );
    identify_into_a_dropped_buffer_times_out(&ctrl);
    wait_until("the late Identify executed", || {
        faults.counters().delayed_executed == 1
    });
    // An admin command afterwards: the controller has finished that step, and the driver
    // reaps the late completion.
    assert_eq!(
        ctrl.identify_controller().unwrap().serial(),
        ctrl.identify().serial()
    );
    detach_cleanly(ctrl, s);
}

/// An I/O queue pair dropped with a read in flight, and the controller refuses to delete the
/// queue: the read's buffer and the rings stay mapped, and the late read lands in them.
/// The last detach disables the controller before letting them go.
#[test]
fn queue_pair_dropped_with_io_in_flight_and_a_failed_deletion() {
    let (ctrl, t) = attach(Duration::from_secs(2));
    let s = sim(&t);
    let faults = s.faults();
    let mut data = vec![0u8; 4096];
    pattern(7, &mut data);
    s.write_backing(1, 0, &data).unwrap();

    let mut qp = ctrl.alloc_io_queue(QueueOptions::new(16)).unwrap();
    let mut buf = ctrl.alloc_dma(4096).unwrap();
    // Longer than the 5 s the queue pair's drop waits for outstanding I/O.
    postpone(
        s,
        CommandMatch::io(NvmOpcode::Read as u8),
        Duration::from_millis(6500),
    );
    faults.fail_nth(
        CommandMatch::admin(AdminOpcode::DeleteIoSq as u8),
        1,
        Status::generic(GenericStatus::InternalError).with_dnr(),
        false,
    );
    qp.read(1, 0, buf.slice(0..4096).unwrap(), 1).unwrap();
    qp.ring();
    wait_until("the read was fetched", || {
        faults.counters().executions_delayed == 1
    });
    drop(buf);
    drop(qp);
    assert_eq!(
        ctrl.io_queues_in_use(),
        1,
        "the queue id stays reserved: the controller still has the queue"
    );
    wait_until("the late read executed", || {
        faults.counters().delayed_executed == 1
    });
    // A round trip through the controller: the step that ran the read is over.
    ctrl.identify_controller().unwrap();
    assert_no_dma_errors(s);
    assert_eq!(s.stats().reads, 1);
    assert_eq!(s.stats().bytes_read, 4096, "the read transferred its data");
    let resets = s.stats().resets;
    drop(ctrl);
    assert!(
        s.stats().resets > resets,
        "the controller was disabled before the parked memory was unmapped"
    );
    assert_no_dma_errors(s);
}

/// A DMA buffer dropped right after an I/O was submitted: the request's reference keeps
/// it mapped, and the late transfer lands.
#[test]
fn dma_buffer_dropped_while_an_io_is_in_flight() {
    let (ctrl, t) = attach(Duration::from_secs(2));
    let s = sim(&t);
    let faults = s.faults();
    let mut qp = ctrl.alloc_io_queue(QueueOptions::new(16)).unwrap();
    let mut data = vec![0u8; 8192];
    pattern(3, &mut data);
    s.write_backing(1, 0, &data[..4096]).unwrap();
    postpone(
        s,
        CommandMatch::io(NvmOpcode::Write as u8),
        Duration::from_millis(300),
    );
    postpone(
        s,
        CommandMatch::io(NvmOpcode::Read as u8),
        Duration::from_millis(300),
    );
    let mut wbuf = ctrl.alloc_dma(4096).unwrap();
    wbuf.as_mut_slice().copy_from_slice(&data[4096..]);
    qp.write(1, 8, wbuf.slice(0..4096).unwrap(), 1).unwrap();
    drop(wbuf);
    let mut rbuf = ctrl.alloc_dma(4096).unwrap();
    qp.read(1, 0, rbuf.slice(0..4096).unwrap(), 2).unwrap();
    drop(rbuf);
    qp.ring();
    let mut done = Vec::new();
    wait_until("both I/Os completed", || {
        qp.process_completions(8, |token, r| done.push((token, r.is_ok())));
        done.len() == 2
    });
    done.sort();
    assert_eq!(done, vec![(1, true), (2, true)]);
    assert_eq!(faults.counters().delayed_executed, 2);
    let mut landed = vec![0u8; 4096];
    s.read_backing(1, 8 * 512, &mut landed).unwrap();
    assert_eq!(
        landed,
        data[4096..],
        "the late write transferred the buffer"
    );
    assert_eq!(
        s.stats().bytes_read,
        4096,
        "the late read transferred its data"
    );
    assert_no_dma_errors(s);
}

/// Buffers are carved from the transport's DMA pool: a buffer dropped while its write is in
/// flight keeps its range, so buffers allocated meanwhile get other memory (their contents
/// cannot leak into the late transfer); once the completion is reaped the range is free
/// again, and the next allocation of that size gets it back, zeroed.
#[test]
fn a_pooled_range_is_not_reused_while_its_io_is_in_flight() {
    let (ctrl, t) = attach(Duration::from_secs(2));
    let s = sim(&t);
    let pool = t
        .dma_pool()
        .expect("the software controller's transport has a pool");
    let mut qp = ctrl.alloc_io_queue(QueueOptions::new(16)).unwrap();
    let mut data = vec![0u8; 8192];
    pattern(5, &mut data);
    postpone(
        s,
        CommandMatch::io(NvmOpcode::Write as u8),
        Duration::from_millis(300),
    );
    let regions = pool.stats().regions;
    let mut wbuf = ctrl.alloc_dma(8192).unwrap();
    wbuf.as_mut_slice().copy_from_slice(&data);
    let busy = wbuf.iova();
    qp.write(1, 16, wbuf.slice(0..8192).unwrap(), 1).unwrap();
    qp.ring();
    drop(wbuf);
    // Meanwhile: buffers of the same size, filled with something else.
    let mut others = Vec::new();
    for _ in 0..8 {
        let mut b = ctrl.alloc_dma(8192).unwrap();
        assert_ne!(
            b.iova(),
            busy,
            "the in-flight write's range was handed out again"
        );
        assert!(
            b.iova() + 8192 <= busy || b.iova() >= busy + 8192,
            "overlaps the in-flight range"
        );
        b.as_mut_slice().fill(0xee);
        others.push(b);
    }
    assert_eq!(pool.stats().regions, regions, "all from the same region");
    let mut done = Vec::new();
    wait_until("the write completed", || {
        qp.process_completions(8, |token, r| done.push((token, r.is_ok())));
        !done.is_empty()
    });
    assert_eq!(done, vec![(1, true)]);
    let mut landed = vec![0u8; 8192];
    s.read_backing(1, 16 * 512, &mut landed).unwrap();
    assert_eq!(
        landed, data,
        "the late write transferred the dropped buffer's data"
    );
    // Free now: first fit hands the same range out again, zeroed.
    let again = ctrl.alloc_dma(8192).unwrap();
    assert_eq!(again.iova(), busy);
    assert!(
        again.as_slice().iter().all(|&b| b == 0),
        "a reused range is zeroed"
    );
    drop(others);
    assert_no_dma_errors(s);
}

/// The same through the shared admin queue of a group (the software controller runs as a
/// process of its own): a timed-out command keeps the admin data buffer, its late
/// completion reaches this process's mailbox and is reaped by the next command; a caller's
/// buffer dropped after a timeout stays mapped for the late transfer.
#[test]
fn shared_admin_queue_timeouts_keep_their_memory() {
    use nvme_host_linux::sim::{FaultAction, FaultRule, Repeat, SimClient};
    let dir = std::env::temp_dir().join(format!("nvme-dma-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // Only this test of this binary uses a group.
    std::env::set_var("NVME_RUN_DIR", &dir);
    let group = 41;
    let ctrl = Controller::attach_with(
        &TransportId::parse("trtype:sim").unwrap(),
        &AttachOptions {
            group: Some(group),
            admin_timeout: Duration::from_millis(2000),
            timeout_action: TimeoutAction::None,
            ..Default::default()
        },
    )
    .unwrap();
    let client = SimClient::connect(&dir.join(format!("nvme-rs.{group}/sim.sock"))).unwrap();
    let delay_identify = |ms| {
        client
            .inject(FaultRule {
                matcher: CommandMatch::admin(AdminOpcode::Identify as u8),
                nth: 1,
                repeat: Repeat::Once,
                action: FaultAction::DelayExecution(Duration::from_millis(ms)),
            })
            .unwrap()
    };
    let executed = || client.fault_counters().unwrap().delayed_executed;
    let no_dma_errors = || {
        let (n, last) = client.dma_errors().unwrap();
        assert_eq!(n, 0, "the controller accessed unmapped memory: {last:?}");
    };
    let reference = ctrl
        .get_log_page(lid::FIRMWARE_SLOT, u32::MAX, 512, 0)
        .unwrap();

    // 1. The admin data buffer (timeline as in the process-local test).
    delay_identify(2500);
    let r = ctrl.identify_controller();
    assert!(
        is_admin_timeout(&r, AdminOpcode::Identify as u8),
        "{:?}",
        r.err()
    );
    client
        .delay_nth(
            CommandMatch::admin(AdminOpcode::GetLogPage as u8),
            1,
            Duration::from_millis(1000),
            false,
        )
        .unwrap();
    let log = ctrl
        .get_log_page(lid::FIRMWARE_SLOT, u32::MAX, 512, 0)
        .unwrap();
    assert_eq!(
        executed(),
        1,
        "the late Identify ran before the log page completed"
    );
    assert_eq!(
        log, reference,
        "the log page data was overwritten by the late Identify transfer"
    );

    // 2. A caller's buffer, dropped after the timeout.
    delay_identify(3000);
    identify_into_a_dropped_buffer_times_out(&ctrl);
    wait_until("the late Identify executed", || executed() == 2);
    assert_eq!(
        ctrl.identify_controller().unwrap().serial(),
        ctrl.identify().serial()
    );
    no_dma_errors();
    drop(ctrl);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Attaching fails because an admin command timed out: the controller is disabled before
/// the memory that command points to is unmapped, so the late transfer never happens.
#[test]
fn a_failed_attach_disables_the_controller_before_unmapping() {
    let t: Arc<dyn Transport> = Arc::new(SimTransport::with_config(SimConfig::default()).unwrap());
    let s = sim(&t);
    // Identify Namespace 1, read by attach after bring-up.
    postpone(
        s,
        CommandMatch::admin(AdminOpcode::Identify as u8).with_nsid(1),
        Duration::from_millis(2000),
    );
    let r = Controller::attach_transport(
        t.clone(),
        TransportId::parse("trtype:sim").unwrap(),
        &AttachOptions {
            admin_timeout: Duration::from_millis(200),
            ..Default::default()
        },
    );
    assert!(
        is_admin_timeout(&r, AdminOpcode::Identify as u8),
        "{:?}",
        r.err()
    );
    // Executed late, or dropped by the reset.
    wait_until("the delayed Identify is settled", || {
        s.faults().counters().delayed_executed == 1
    });
    assert_no_dma_errors(s);
}
