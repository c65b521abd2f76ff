//! Several processes sharing one controller: the software controller runs in its own
//! process, driver processes join and leave the group, and some are SIGKILLed.
//!
//! `harness = false`: this binary is both the test runner and the child processes it
//! starts (the test kit's role variable selects a child's part).

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nvme_host_linux::regs::features::{fid, FeatureSelect};
use nvme_host_linux::testkit::{
    self, complete_all, env_u64, pattern, pid_alive, say, stop_requested, wait_until, Outcome,
    Proc, RunDir,
};
use nvme_host_linux::{AttachOptions, Controller, QueueOptions, Role, TransportId};

const TRID: &str = "trtype:sim nscount:2 size:64M serial:MPTEST";

// ---------------------------------------------------------------------------------------
// Children

fn attach_from_env() -> Result<Controller, String> {
    let trid = TransportId::parse(TRID).unwrap();
    let mut opts = AttachOptions {
        group: Some(env_u64("NVME_MP_GROUP")? as u32),
        ..Default::default()
    };
    if let Ok(ms) = env_u64("NVME_MP_ADMIN_TIMEOUT_MS") {
        opts.admin_timeout = Duration::from_millis(ms);
    }
    if let Ok(ms) = env_u64("NVME_MP_ABORT_TIMEOUT_MS") {
        opts.abort_timeout = Duration::from_millis(ms);
    }
    if std::env::var_os("NVME_MP_NO_MONITOR").is_some() {
        opts.group_monitor = false;
    }
    Controller::attach_with(&trid, &opts).map_err(|e| e.to_string())
}

/// Block size of both namespaces.
const BS: usize = 512;

/// Writes and reads back its own region in a loop, 8 I/Os in flight, until told to stop
/// (or `NVME_MP_ROUNDS` rounds: then it reports `STATS <I/Os> <SQ MMIO doorbell writes>
/// <CQ MMIO doorbell writes>` and returns).
fn child_io(ctrl: &Controller) -> Result<(), String> {
    let base = env_u64("NVME_MP_LBA")?;
    let rounds = env_u64("NVME_MP_ROUNDS").ok();
    let mut qp = ctrl
        .alloc_io_queue(QueueOptions::new(32))
        .map_err(|e| e.to_string())?;
    say(format!("QID {}", qp.qid()));
    let mut buf = ctrl.alloc_dma(16 * 4096).map_err(|e| e.to_string())?;
    let mut round = 0u64;
    let mut last_report = Instant::now();
    while !stop_requested() {
        if rounds == Some(round) {
            let st = qp.stats();
            say(format!(
                "STATS {} {} {}",
                round * 16,
                st.sq_doorbells,
                st.cq_doorbells
            ));
            return Ok(());
        }
        round += 1;
        // Eight 4 KiB writes at `base`, `base + 8`, ...: one run of 512-byte blocks.
        let seed = round * 100 + base;
        pattern::fill(seed, base, BS, &mut buf.as_mut_slice()[..8 * 4096]);
        for i in 0..8usize {
            let r = buf.slice(i * 4096..(i + 1) * 4096).unwrap();
            qp.write(1, base + i as u64 * 8, r, i as u64)
                .map_err(|e| e.to_string())?;
        }
        complete_all(&mut qp, Duration::from_secs(10))?;
        for i in 0..8usize {
            let r = buf.slice((8 + i) * 4096..(9 + i) * 4096).unwrap();
            qp.read(1, base + i as u64 * 8, r, i as u64)
                .map_err(|e| e.to_string())?;
        }
        complete_all(&mut qp, Duration::from_secs(10))?;
        let d = buf.as_slice();
        if d[..8 * 4096] != d[8 * 4096..] {
            return Err(format!(
                "round {round}: data read back differs from data written"
            ));
        }
        pattern::check(seed, base, BS, &d[8 * 4096..])
            .map_err(|e| format!("round {round}: {e}"))?;
        if last_report.elapsed() > Duration::from_millis(100) {
            say(format!("PROGRESS {round}"));
            last_report = Instant::now();
        }
    }
    say(format!("DONE {round}"));
    Ok(())
}

/// Sends admin commands whose results it can check, in a loop, until told to stop.
fn child_admin(ctrl: &Controller) -> Result<(), String> {
    let which = env_u64("NVME_MP_NSID")? as u32;
    let mut n = 0u64;
    let expected_queues = ctrl
        .get_features(fid::NUMBER_OF_QUEUES, FeatureSelect::Current, 0, 0)
        .map_err(|e| e.to_string())?;
    while !stop_requested() {
        n += 1;
        match which {
            // Identify namespace `which`: its size and our NSID in the NGUID-less data.
            1 | 2 => {
                let ns = ctrl.identify_namespace(which).map_err(|e| e.to_string())?;
                if ns.nsze != (64 << 20) / 512 {
                    return Err(format!(
                        "identify ns {which}: nsze {} (someone else's data?)",
                        ns.nsze
                    ));
                }
            }
            // Identify controller: the serial.
            3 => {
                let id = ctrl.identify_controller().map_err(|e| e.to_string())?;
                if id.serial() != "MPTEST" {
                    return Err(format!("identify controller: serial '{}'", id.serial()));
                }
            }
            // Get Features: a value (completion dword 0) only this command returns.
            _ => {
                let v = ctrl
                    .get_features(fid::NUMBER_OF_QUEUES, FeatureSelect::Current, 0, 0)
                    .map_err(|e| e.to_string())?;
                if v != expected_queues {
                    return Err(format!(
                        "number of queues {v:#x}, expected {expected_queues:#x}"
                    ));
                }
                let smart = ctrl.smart_log().map_err(|e| e.to_string())?;
                if smart.temperature_kelvin() == 0 {
                    return Err("SMART log without a temperature".into());
                }
            }
        }
        if n.is_multiple_of(50) {
            say(format!("PROGRESS {n}"));
        }
    }
    say(format!("DONE {n}"));
    Ok(())
}

/// Writes a pattern at `NVME_MP_LBA` of namespace 2, or reads it back and compares.
fn child_data(ctrl: &Controller, write: bool) -> Outcome {
    let lba = env_u64("NVME_MP_LBA")?;
    let mut qp = ctrl
        .alloc_io_queue(QueueOptions::default())
        .map_err(|e| e.to_string())?;
    let mut buf = ctrl.alloc_dma(4096).map_err(|e| e.to_string())?;
    let seed = lba * 7 + 1;
    if write {
        pattern::fill(seed, lba, BS, buf.as_mut_slice());
        qp.write_sync(2, lba, &mut buf).map_err(|e| e.to_string())
    } else {
        qp.read_sync(2, lba, &mut buf).map_err(|e| e.to_string())?;
        pattern::check(seed, lba, BS, buf.as_slice())
            .map_err(|e| format!("data differs from what the other process wrote: {e}"))
    }
}

/// Attaches, sends one admin command and detaches, `NVME_MP_CYCLES` times; every attach
/// must succeed, also while the group's last member leaves and another creates it anew.
fn child_cycles() -> Outcome {
    let cycles = env_u64("NVME_MP_CYCLES")?;
    let mut created = 0;
    for i in 0..cycles {
        let ctrl = attach_from_env().map_err(|e| format!("attach {i}: {e}"))?;
        created += u32::from(ctrl.role() == Role::Primary);
        ctrl.identify_controller()
            .map_err(|e| format!("attach {i}: identify: {e}"))?;
        drop(ctrl);
    }
    say(format!("CYCLES {cycles} PRIMARY {created}"));
    Ok(())
}

fn child(role: &str) -> i32 {
    if role == "cycles" {
        return i32::from(testkit::exit_code(child_cycles()));
    }
    let ctrl = match attach_from_env() {
        Ok(c) => c,
        Err(e) => {
            say(format!("ATTACH-ERROR {e}"));
            return 3;
        }
    };
    let role_name = match ctrl.role() {
        Role::Primary => "primary",
        Role::Secondary => "secondary",
        Role::Single => "single",
    };
    say(format!("READY {role_name} {}", std::process::id()));
    let r = match role {
        "io" => child_io(&ctrl),
        "io-resets" => env_u64("NVME_MP_LBA").and_then(|lba| {
            let at = testkit::ResetIo {
                nsid: 1,
                lba,
                block_size: BS,
            };
            testkit::io_through_resets(&ctrl, at).map(|_| ())
        }),
        "reset" => ctrl
            .reset()
            .map_err(|e| e.to_string())
            .map(|_| say("RESET-DONE")),
        "reset-function" => ctrl.reset_function().map_err(|e| e.to_string()).map(|f| {
            say(format!("FUNCTION-RESET {f:?}"));
            say("RESET-DONE")
        }),
        "die-resetting" => match ctrl.__test_begin_reset_and_stop() {
            Ok(()) => {
                say("RESETTING");
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
            Err(e) => Err(e.to_string()),
        },
        "admin" => child_admin(&ctrl),
        "monitor-threads" => ctrl
            .identify_controller()
            .map_err(|e| e.to_string())
            .map(|_| {
                // A new thread names itself once it runs: give it half a second.
                let start = Instant::now();
                while threads_named("nvme-group") == 0
                    && start.elapsed() < Duration::from_millis(500)
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                say(format!("MONITORS {}", threads_named("nvme-group")))
            }),
        "admin-until-error" => {
            // Admin commands until one fails; then one more, whose error is reported too;
            // then stays attached until told to stop.
            let mut n = 0u64;
            let first = loop {
                match ctrl.identify_controller() {
                    Ok(_) => n += 1,
                    Err(e) => break e.to_string(),
                }
                if n == 20 {
                    say("PROGRESS");
                }
            };
            say(format!("ADMIN-ERROR {first}"));
            let next = ctrl.identify_controller().err().map(|e| e.to_string());
            say(format!("NEXT-ERROR {next:?}"));
            while !stop_requested() {
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(())
        }
        "keep-alive-times-out" => {
            // A Keep Alive whose completion the controller loses (the parent's fault rule):
            // it times out, is aborted in vain, and the controller is reset for the group.
            let keep_alive = nvme_host_linux::nvme_core::Command::new(
                nvme_host_linux::regs::opcode::AdminOpcode::KeepAlive as u8,
                0,
            );
            let r = ctrl.admin_command(keep_alive, None);
            say(format!(
                "RESULT {:?}",
                r.as_ref().err().map(|e| e.to_string())
            ));
            ctrl.identify_controller()
                .map_err(|e| format!("identify after the reset: {e}"))
                .map(|id| say(format!("AFTER {}", id.serial())))
        }
        "wait" => {
            say(format!("DAEMON {}", ctrl.sim_process().unwrap_or(0)));
            while !stop_requested() {
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(())
        }
        "events" => {
            let start = Instant::now();
            loop {
                if let Some(e) = ctrl.async_events().first() {
                    say(format!("EVENT {} {} {}", e.event_type, e.info, e.log_page));
                    break Ok(());
                }
                if start.elapsed() > Duration::from_secs(15) {
                    break Err("no asynchronous event arrived".to_string());
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        "outlive-controller" => {
            // Waits for the software controller's process to be killed, then sends admin
            // commands: each must fail as "gone", the first after at most one check, the
            // next at once (not each after the admin timeout).
            say(format!("DAEMON {}", ctrl.sim_process().unwrap_or(0)));
            while !stop_requested() {
                std::thread::sleep(Duration::from_millis(10));
            }
            let first = ctrl.smart_log().err().map(|e| e.to_string());
            let t = Instant::now();
            let second = ctrl.identify_controller().err().map(|e| e.to_string());
            say(format!("FIRST {first:?}"));
            say(format!("SECOND {second:?} {}", t.elapsed().as_millis()));
            Ok(())
        }
        "hold-lock" => {
            ctrl.__test_hold_group_lock();
            say("HOLDING");
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        "keep" => {
            // Stays a member (keeping the group and its controller) until the file
            // NVME_MP_RELEASE exists, whatever the other children are told.
            testkit::env("NVME_MP_RELEASE").map(|release| {
                let release = std::path::PathBuf::from(release);
                while !release.exists() {
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        }
        "hold-join" => {
            // Holds the group's join lock until the file NVME_MP_RELEASE exists, then lets
            // go and stays a member until told to stop.
            let release = std::path::PathBuf::from(testkit::env("NVME_MP_RELEASE").unwrap());
            ctrl.__test_hold_join_lock()
                .map_err(|e| e.to_string())
                .map(|()| {
                    say("HOLDING");
                    while !release.exists() {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    ctrl.__test_release_join_lock();
                    say("RELEASED");
                    while !stop_requested() {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                })
        }
        "write" | "check" => child_data(&ctrl, role == "write"),
        "ns" => {
            say_namespaces(&ctrl);
            Ok(())
        }
        "ns-wait" => {
            say_namespaces(&ctrl);
            while !stop_requested() {
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(())
        }
        "format" => {
            let opts = nvme_host_linux::FormatOptions {
                lbaf: 1,
                ..Default::default()
            };
            ctrl.format(1, opts).map_err(|e| e.to_string()).map(|()| {
                say("FORMATTED");
                say_namespaces(&ctrl);
            })
        }
        "hold-ns-record" => match ctrl.__test_hold_namespace_record_mid_write() {
            Ok(()) => {
                say("HOLDING");
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
            Err(e) => Err(e.to_string()),
        },
        "interrupt-io" => {
            env_u64("NVME_MP_LBA").and_then(|lba| testkit::interrupt_io(&ctrl, 1, lba, BS, 32))
        }
        "queues" => {
            // Report the pool after survivors' cleanup settles, then create one queue.
            std::thread::sleep(Duration::from_millis(300));
            say(format!("IN-USE {}", ctrl.io_queues_in_use()));
            let qp = ctrl
                .alloc_io_queue(QueueOptions::new(16))
                .map_err(|e| e.to_string());
            qp.map(|q| say(format!("QID {}", q.qid())))
        }
        other => Err(format!("unknown role {other}")),
    };
    i32::from(testkit::exit_code(r))
}

/// Says `NS <nsid> <block size> <blocks> <digest of the Identify Namespace data>` for each
/// namespace, then `NS-END`.
fn say_namespaces(ctrl: &Controller) {
    use zerocopy::IntoBytes;
    for ns in ctrl.namespaces() {
        // FNV-1a over the whole structure, vendor-specific bytes included.
        let digest = ns
            .identify()
            .as_bytes()
            .iter()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            });
        say(format!(
            "NS {} {} {} {digest:016x}",
            ns.id(),
            ns.block_size(),
            ns.blocks()
        ));
    }
    say("NS-END");
}

// ---------------------------------------------------------------------------------------
// Parent side

/// One scenario's run directory and group.
struct Scenario {
    dir: RunDir,
    group: u32,
}

impl Scenario {
    fn new(group: u32) -> Scenario {
        Scenario {
            dir: RunDir::new(&format!("mp-{group}")).unwrap(),
            group,
        }
    }
    fn group_dir(&self) -> std::path::PathBuf {
        self.dir.group_dir(self.group)
    }
    fn spawn(&self, name: &str, role: &str, extra: &[(&str, String)]) -> Proc {
        let mut cmd = self.dir.rerun(role).unwrap();
        cmd.env("NVME_MP_GROUP", self.group.to_string());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        Proc::spawn(name, &mut cmd).unwrap_or_else(|e| panic!("{e}"))
    }
    fn stop(&self) -> Outcome {
        self.dir.stop()
    }
    /// Attaches this (test) process to the scenario's group.
    fn attach_here(&self) -> Result<Controller, String> {
        std::env::set_var("NVME_RUN_DIR", self.dir.path());
        let opts = AttachOptions {
            group: Some(self.group),
            ..Default::default()
        };
        let ctrl = Controller::attach_with(&TransportId::parse(TRID).unwrap(), &opts);
        std::env::remove_var("NVME_RUN_DIR");
        ctrl.map_err(|e| e.to_string())
    }
    /// A client of the group's software controller process.
    fn sim(&self) -> Result<nvme_host_linux::sim::SimClient, String> {
        nvme_host_linux::sim::SimClient::connect(&self.group_dir().join("sim.sock"))
            .map_err(|e| e.to_string())
    }
}

/// How long the scenarios wait for a state to come about.
const SETTLE: Duration = Duration::from_secs(10);

fn lba(n: u64) -> (&'static str, String) {
    ("NVME_MP_LBA", n.to_string())
}

// ---------------------------------------------------------------------------------------
// Scenarios

fn primary_and_secondaries_share_io_and_admin() -> Outcome {
    let s = Scenario::new(11);
    let mut p = s.spawn("primary", "io", &[lba(0)]);
    assert!(p.line("READY")?.starts_with("READY primary"));
    p.line("QID")?;
    let mut io2 = s.spawn("secondary io", "io", &[lba(4096)]);
    assert!(io2.line("READY")?.starts_with("READY secondary"));
    let mut admins: Vec<Proc> = (1..=4)
        .map(|n| {
            s.spawn(
                &format!("admin {n}"),
                "admin",
                &[("NVME_MP_NSID", n.to_string())],
            )
        })
        .collect();
    for a in &mut admins {
        assert!(a.line("READY")?.starts_with("READY secondary"));
    }
    for a in &mut admins {
        a.line("PROGRESS")?;
    }
    p.progresses()?;
    io2.progresses()?;
    s.stop()?;
    for proc in admins.into_iter().chain([io2, p]) {
        proc.finish()?.clean()?;
    }
    wait_until("the group is removed", SETTLE, || !s.group_dir().exists())?;
    Ok(())
}

fn killed_secondaries_are_cleaned_up() -> Outcome {
    let s = Scenario::new(12);
    let mut p = s.spawn("primary", "io", &[lba(0)]);
    p.line("READY primary")?;
    let p_qid = p.line("QID")?;
    let mut victim = s.spawn("victim io", "io", &[lba(4096)]);
    victim.line("READY")?;
    victim.line("QID")?;
    victim.line("PROGRESS")?; // mid-I/O
    victim.kill();
    let mut holder = s.spawn("lock holder", "hold-lock", &[]);
    holder.line("HOLDING")?;
    holder.kill();
    // The primary keeps going through both deaths.
    p.progresses()?;
    // A new process attaches (its identify needs the lock the holder died with), finds the
    // victims' queue ids returned, and creates a queue.
    let mut q = s.spawn("newcomer", "queues", &[]);
    assert!(q.line("READY")?.starts_with("READY secondary"));
    assert_eq!(
        q.line("IN-USE")?,
        "IN-USE 1",
        "only the primary's queue is left"
    );
    let new_qid = q.line("QID")?;
    assert_ne!(new_qid, p_qid);
    q.finish()?.clean()?;
    p.progresses()?;
    s.stop()?;
    p.finish()?.clean()?;
    Ok(())
}

fn a_queue_the_controller_would_not_delete_stays_reserved() -> Outcome {
    use nvme_host_linux::regs::opcode::AdminOpcode;
    use nvme_host_linux::regs::status::GenericStatus;
    use nvme_host_linux::regs::Status;
    use nvme_host_linux::sim::CommandMatch;
    let s = Scenario::new(21);
    let mut p = s.spawn("primary", "io", &[lba(0)]);
    p.line("READY primary")?;
    let p_qid = p.line("QID")?;
    let mut victim = s.spawn("victim io", "io", &[lba(4096)]);
    victim.line("READY")?;
    let v_qid = victim.line("QID")?;
    victim.line("PROGRESS")?;
    // The controller refuses to delete the dead process's submission queue: it may still
    // use that queue and its memory, so the queue id must not go to anyone else.
    let sim = s.sim()?;
    let fault = sim
        .fail_nth(
            CommandMatch::admin(AdminOpcode::DeleteIoSq as u8),
            1,
            Status::generic(GenericStatus::InternalError),
            true,
        )
        .map_err(|e| e.to_string())?;
    victim.kill();
    wait_until("the survivors tried to delete the queue", SETTLE, || {
        sim.fault_fired(fault).is_ok_and(|(n, _)| n > 0)
    })?;
    sim.clear_faults().map_err(|e| e.to_string())?;
    let mut q = s.spawn("newcomer", "queues", &[]);
    assert!(q.line("READY")?.starts_with("READY secondary"));
    assert_eq!(
        q.line("IN-USE")?,
        "IN-USE 2",
        "the undeleted queue stays reserved beside the primary's"
    );
    let new_qid = q.line("QID")?;
    assert_ne!(new_qid, p_qid);
    assert_ne!(
        new_qid, v_qid,
        "the undeleted queue's id was handed out again"
    );
    q.finish()?.clean()?;
    p.progresses()?;
    drop(sim);
    s.stop()?;
    p.finish()?.clean()?;
    Ok(())
}

fn killed_primary_is_replaced() -> Outcome {
    let s = Scenario::new(13);
    let mut p = s.spawn("primary", "io", &[lba(0)]);
    p.line("READY primary")?;
    let p_qid = p.line("QID")?;
    let mut sec = s.spawn("secondary", "io", &[lba(4096)]);
    sec.line("READY secondary")?;
    sec.line("QID")?;
    sec.line("PROGRESS")?;
    p.kill();
    sec.progresses()?;
    // A new process becomes the primary; the old primary's queue id is free again and can be
    // created on the controller, so the old queue is gone from it.
    let mut n = s.spawn("new primary", "queues", &[]);
    assert!(
        n.line("READY")?.starts_with("READY primary"),
        "the newcomer takes the primary role"
    );
    assert_eq!(n.line("IN-USE")?, "IN-USE 1");
    assert_eq!(
        n.line("QID")?,
        p_qid,
        "the dead primary's queue was deleted and its id reused"
    );
    n.finish()?.clean()?;
    sec.progresses()?;
    s.stop()?;
    sec.finish()?.clean()?;
    Ok(())
}

fn data_written_by_one_process_reads_back_in_another() -> Outcome {
    let s = Scenario::new(14);
    let mut keeper = s.spawn("keeper", "wait", &[]);
    keeper.line("READY primary")?;
    s.spawn("writer", "write", &[lba(77)]).finish()?.clean()?;
    s.spawn("reader", "check", &[lba(77)]).finish()?.clean()?;
    let other = s
        .spawn("reader of other data", "check", &[lba(78)])
        .finish()?;
    assert_eq!(
        other.code,
        Some(1),
        "reading blocks nobody wrote must not match the pattern"
    );
    assert!(
        other.errors[0].contains("data differs"),
        "{:?}",
        other.errors
    );
    s.stop()?;
    keeper.finish()?.clean()?;
    Ok(())
}

fn every_process_gets_interrupts_on_vectors_of_its_own() -> Outcome {
    let s = Scenario::new(60);
    let mut keeper = s.spawn("keeper", "wait", &[]);
    keeper.line("READY primary")?;
    let mut procs: Vec<Proc> = [100u64, 200]
        .iter()
        .map(|&l| s.spawn(&format!("interrupts at {l}"), "interrupt-io", &[lba(l)]))
        .collect();
    let mut reports = Vec::new();
    for p in &mut procs {
        reports.push((p.line("VECTOR")?, p.line("IRQS")?));
    }
    testkit::check_interrupt_reports(&reports)?;
    for p in procs {
        p.finish()?.clean()?;
    }
    s.stop()?;
    keeper.finish()?.clean()?;
    Ok(())
}

fn a_different_build_is_refused() -> Outcome {
    let s = Scenario::new(15);
    let mut keeper = s.spawn("keeper", "wait", &[]);
    keeper.line("READY primary")?;
    let mut other = s.spawn(
        "other build",
        "wait",
        &[(
            "NVME_TEST_BUILD_ID",
            "nvme-host-linux 9.9.9 (elsewhere)".into(),
        )],
    );
    let line = other.line("ATTACH-ERROR")?;
    assert!(
        line.contains("different build") && line.contains("9.9.9"),
        "{line}"
    );
    assert_eq!(other.finish()?.code, Some(3));
    s.stop()?;
    keeper.finish()?.clean()?;
    Ok(())
}

/// Threads of this process named `name`.
fn threads_named(name: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.flatten()
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.trim_end() == name)
                })
                .count()
        })
        .unwrap_or(0)
}

fn detach_joins_the_monitor_thread_first() -> Outcome {
    let s = Scenario::new(22);
    let ctrl = s.attach_here()?;
    // A new thread names itself once it runs.
    wait_until("the monitor thread runs", SETTLE, || {
        threads_named("nvme-group") >= 1
    })?;
    let before = threads_named("nvme-group");
    let qp = ctrl
        .alloc_io_queue(QueueOptions::new(16))
        .map_err(|e| e.to_string())?;
    drop(ctrl);
    assert_eq!(
        threads_named("nvme-group"),
        before,
        "a queue pair still holds the controller: the monitor keeps running"
    );
    // The last handle goes: the monitor is stopped and joined before the detach, on this
    // thread, so that no thread can touch the registers after they are unmapped and the
    // detach cannot end up on a thread the process does not wait for.
    drop(qp);
    assert_eq!(threads_named("nvme-group"), before - 1);
    assert!(!s.group_dir().exists(), "the last member removed the group");
    s.stop()?;
    Ok(())
}

/// A member's DMA memory comes from its transport's pool: many small buffers and a queue
/// pair cost one device mapping (the pool region), all inside the member's own IOVA slice
/// (1 TiB per member above the group's admin segment, `transport::member_iova_range`).
fn a_members_buffers_come_from_one_mapping_inside_its_iova_slice() -> Outcome {
    let s = Scenario::new(61);
    let ctrl = s.attach_here()?;
    let maps = || -> Result<u64, String> {
        Ok(s.sim()?
            .daemon_status()
            .map_err(|e| e.to_string())?
            .dma_maps)
    };
    let before = maps()?;
    let qp = ctrl
        .alloc_io_queue(QueueOptions::new(16))
        .map_err(|e| e.to_string())?;
    let bufs: Vec<_> = (1..=16)
        .map(|i| ctrl.alloc_dma(i * 4096))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    assert_eq!(
        maps()?,
        before,
        "16 buffers and a queue pair mapped nothing new: the pool has room"
    );
    let slice = |iova: u64| (iova >> 40).checked_sub(1);
    let member = slice(bufs[0].iova()).ok_or("a buffer below every member slice")?;
    assert!(member < 64, "IOVA {:#x} is no member's", bufs[0].iova());
    let mut spans: Vec<(u64, u64)> = Vec::new();
    for b in &bufs {
        assert_eq!(slice(b.iova()), Some(member), "IOVA {:#x}", b.iova());
        assert_eq!(
            slice(b.iova() + b.len() as u64 - 1),
            Some(member),
            "buffer at {:#x} ends outside the slice",
            b.iova()
        );
        assert_eq!(b.iova() % 4096, 0, "page-aligned");
        spans.push((b.iova(), b.iova() + b.len() as u64));
    }
    spans.sort_unstable();
    assert!(
        spans.windows(2).all(|w| w[0].1 <= w[1].0),
        "buffers overlap: {spans:x?}"
    );
    drop((bufs, qp, ctrl));
    assert!(!s.group_dir().exists(), "the last member removed the group");
    s.stop()?;
    Ok(())
}

fn a_dead_controller_process_is_detected_once() -> Outcome {
    let s = Scenario::new(23);
    let mut p = s.spawn("member", "outlive-controller", &[]);
    p.line("READY primary")?;
    let daemon: i32 = p.line("DAEMON")?[7..].parse().map_err(|e| format!("{e}"))?;
    assert!(daemon > 0 && pid_alive(daemon as u32));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon),
        nix::sys::signal::Signal::SIGKILL,
    )
    .map_err(|e| format!("killing the controller process: {e}"))?;
    wait_until("the controller process is gone", SETTLE, || {
        !pid_alive(daemon as u32)
    })?;
    s.stop()?;
    let first = p.line("FIRST")?;
    assert!(first.contains("the controller is gone"), "{first}");
    let second = p.line("SECOND")?;
    assert!(second.contains("the controller is gone"), "{second}");
    // Leaving a group whose controller is gone sends no shutdown notification (nothing
    // would answer it) and still removes the group.
    p.finish()?.clean()?;
    wait_until("the group is removed", SETTLE, || !s.group_dir().exists())?;
    Ok(())
}

/// The software controller process's record of DMA through unmapped addresses.
fn dma_errors(s: &Scenario) -> Result<u64, String> {
    let sim = s.sim()?;
    sim.dma_errors().map(|(n, _)| n).map_err(|e| e.to_string())
}

/// A primary and a secondary doing checked I/O through resets (role `io-resets`), both
/// under way.
fn checked_apps(s: &Scenario) -> Result<(Proc, Proc), String> {
    let mut p = s.spawn("primary", "io-resets", &[lba(0)]);
    p.line("READY primary")?;
    p.line("PROGRESS")?;
    let mut q = s.spawn("secondary", "io-resets", &[lba(4096)]);
    q.line("READY secondary")?;
    q.line("PROGRESS")?;
    Ok((p, q))
}

/// The end of a reset scenario: no DMA through memory that was let go, the applications
/// stop cleanly, and the last one out removes the group.
fn end_checked<const N: usize>(s: &Scenario, apps: [Proc; N]) -> Outcome {
    assert_eq!(dma_errors(s)?, 0, "DMA through memory that was let go");
    s.stop()?;
    for app in apps {
        app.finish()?.clean()?;
    }
    wait_until("the group is removed", SETTLE, || !s.group_dir().exists())
}

fn a_reset_by_one_process_reaches_every_process() -> Outcome {
    let s = Scenario::new(24);
    let (mut p, mut q) = checked_apps(&s)?;
    // A tool joins, resets the controller for the group, and leaves, twice.
    for n in 0..2 {
        let mut r = s.spawn(&format!("reset {n}"), "reset", &[]);
        r.line("READY secondary")?;
        r.line("RESET-DONE")?;
        r.finish()?.clean()?;
        // Both applications carry on, on re-created queues, with checked data.
        p.progresses()?;
        q.progresses()?;
    }
    end_checked(&s, [p, q])
}

fn an_admin_timeout_in_one_process_resets_the_group() -> Outcome {
    use nvme_host_linux::regs::opcode::AdminOpcode;
    use nvme_host_linux::sim::CommandMatch;
    let s = Scenario::new(26);
    let mut p = s.spawn("primary", "io-resets", &[lba(0)]);
    p.line("READY primary")?;
    p.line("PROGRESS")?;
    let sim = s.sim()?;
    let resets = sim.stats().map_err(|e| e.to_string())?.resets;
    sim.drop_nth(CommandMatch::admin(AdminOpcode::KeepAlive as u8), 1, false)
        .map_err(|e| e.to_string())?;
    let mut t = s.spawn(
        "timing out",
        "keep-alive-times-out",
        &[
            ("NVME_MP_ADMIN_TIMEOUT_MS", "300".into()),
            ("NVME_MP_ABORT_TIMEOUT_MS", "200".into()),
        ],
    );
    t.line("READY secondary")?;
    let result = t.line("RESULT")?;
    assert!(result.contains("aborted by a controller reset"), "{result}");
    t.line("AFTER MPTEST")?;
    t.finish()?.clean()?;
    // One Abort, answered "not aborted" (the Keep Alive ran), then one reset, which the
    // primary saw (its round aborted) and went through: its I/O goes on, checked.
    let c = sim.fault_counters().map_err(|e| e.to_string())?;
    assert_eq!((c.aborts_received, c.aborts_done), (1, 0), "{c:?}");
    assert!(sim.stats().map_err(|e| e.to_string())?.resets > resets);
    p.line("ABORTED")?;
    p.progresses()?;
    drop(sim);
    end_checked(&s, [p])
}

/// The software controller's count of controller resets (CC.EN 1 -> 0).
fn sim_resets(s: &Scenario) -> Result<u64, String> {
    let sim = s.sim()?;
    sim.stats().map(|st| st.resets).map_err(|e| e.to_string())
}

/// `Controller::reset_function` by a secondary on the software controller, which has no
/// PCI function: it is the controller reset, through the same path (every process's I/O
/// aborted once and its queues re-created, checked data), with no PCI figures to report.
fn a_function_reset_by_one_process_reaches_every_process() -> Outcome {
    let s = Scenario::new(28);
    let (mut p, mut q) = checked_apps(&s)?;
    for n in 0..2 {
        let before = sim_resets(&s)?;
        let mut r = s.spawn(&format!("function reset {n}"), "reset-function", &[]);
        r.line("READY secondary")?;
        let seen = r.line("FUNCTION-RESET")?;
        assert_eq!(
            seen,
            "FUNCTION-RESET FunctionReset { command_before: None, command_after: None }"
        );
        r.line("RESET-DONE")?;
        r.finish()?.clean()?;
        assert_eq!(sim_resets(&s)?, before + 1, "one controller reset");
        // Both applications saw the reset (their I/O aborted once) and carry on.
        p.line("ABORTED")?;
        q.line("ABORTED")?;
        p.progresses()?;
        q.progresses()?;
    }
    end_checked(&s, [p, q])
}

fn a_member_dying_mid_reset_does_not_wedge_the_group() -> Outcome {
    let s = Scenario::new(25);
    let mut p = s.spawn("primary", "io-resets", &[lba(0)]);
    p.line("READY primary")?;
    p.line("PROGRESS")?;
    let mut r = s.spawn("resetter", "die-resetting", &[]);
    r.line("READY secondary")?;
    r.line("RESETTING")?;
    // The controller is disabled and the reset half done when the resetter dies.
    r.kill();
    // The survivors finish the reset: the primary carries on, a newcomer works.
    p.progresses()?;
    let mut q = s.spawn("newcomer", "queues", &[]);
    assert!(q.line("READY")?.starts_with("READY secondary"));
    q.line("QID")?;
    q.finish()?.clean()?;
    p.progresses()?;
    assert_eq!(dma_errors(&s)?, 0, "DMA through memory that was let go");
    s.stop()?;
    p.finish()?.clean()?;
    Ok(())
}

/// The software controller's I/O command counters: (fetched, fetched through a shadow
/// doorbell).
fn shadow_counts(s: &Scenario) -> Result<(u64, u64), String> {
    let sim = s.sim()?;
    let st = sim.stats().map_err(|e| e.to_string())?;
    Ok((st.io_commands, st.shadow_fetches))
}

/// `STATS <I/Os> <SQ MMIO doorbells> <CQ MMIO doorbells>` of an `io` child with
/// `NVME_MP_ROUNDS`.
fn io_stats(p: &mut Proc) -> Result<[u64; 3], String> {
    let line = p.line("STATS")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|w| w.parse().map_err(|_| format!("bad line {line}")))
        .collect::<Result<_, _>>()?;
    v.try_into().map_err(|_| format!("bad line {line}"))
}

/// I/O rounds (16 I/Os each, 8 in flight, on a 32-entry queue) of the `io` children that
/// report their doorbell counts.
const ROUNDS: u64 = 100;

fn rounds() -> (&'static str, String) {
    ("NVME_MP_ROUNDS", ROUNDS.to_string())
}

/// The environment of a group creator that asks for shadow doorbells (off by default).
fn shadow_on() -> (&'static str, String) {
    ("NVME_SHADOW_DOORBELLS", "1".to_string())
}

fn a_secondarys_io_goes_through_the_groups_shadow_doorbells() -> Outcome {
    let s = Scenario::new(41);
    let mut keeper = s.spawn("keeper", "wait", &[shadow_on()]);
    keeper.line("READY primary")?;
    let mut sec = s.spawn("secondary", "io", &[lba(0), rounds()]);
    sec.line("READY secondary")?;
    let [ios, _sq, cq] = io_stats(&mut sec)?;
    sec.finish()?.clean()?;
    // Every I/O command the controller fetched, it found through the shadow doorbell; the
    // secondary wrote the completion head to MMIO at most once per wrap of its 32-entry
    // queue (the controller's EventIdx did not ask for more).
    let (fetched, via_shadow) = shadow_counts(&s)?;
    assert_eq!(fetched, ios, "I/O commands the controller fetched");
    assert_eq!(via_shadow, fetched, "fetched through a shadow doorbell");
    assert!(
        cq <= ios / 32 + 2,
        "{cq} MMIO completion doorbell writes for {ios} I/Os"
    );
    s.stop()?;
    keeper.finish()?.clean()?;
    Ok(())
}

/// Offsets in the control segment (`group/layout.rs` asserts them): the owners of the I/O
/// queue ids (u32 each), and the shadow doorbell page offsets and on/off record.
const QIDS_AT: u64 = 8744 + 16 * 64;
const SHADOW_AT: u64 = 46816;

/// A member that outlives the scenario's other children (`keep`, the primary, which asks
/// for shadow doorbells): the group and its controller stay after [`Scenario::stop`],
/// until [`release`].
fn keeper(s: &Scenario) -> Result<Proc, String> {
    let release = s.dir.path().join("release-keeper");
    let mut k = s.spawn(
        "keeper",
        "keep",
        &[
            ("NVME_MP_RELEASE", release.display().to_string()),
            shadow_on(),
        ],
    );
    k.line("READY primary")?;
    Ok(k)
}

/// Lets the [`keeper`] go and checks that it ends cleanly.
fn release(s: &Scenario, k: Proc) -> Outcome {
    std::fs::write(s.dir.path().join("release-keeper"), b"").map_err(|e| e.to_string())?;
    k.finish()?.clean()
}

fn read_at(path: &std::path::Path, at: u64, buf: &mut [u8]) -> Outcome {
    use std::os::unix::fs::FileExt;
    std::fs::File::open(path)
        .and_then(|f| f.read_exact_at(buf, at))
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn control_u64(dir: &std::path::Path, at: u64) -> Result<u64, String> {
    let mut b = [0u8; 8];
    read_at(&dir.join("control"), at, &mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn control_u32(dir: &std::path::Path, at: u64) -> Result<u32, String> {
    let mut b = [0u8; 4];
    read_at(&dir.join("control"), at, &mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn a_dead_members_queue_id_is_reused_with_clean_shadow_doorbells() -> Outcome {
    use std::os::unix::fs::FileExt;
    let s = Scenario::new(42);
    let g = s.group_dir();
    let k = keeper(&s)?;
    let mut victim = s.spawn("victim io", "io", &[lba(4096)]);
    victim.line("READY")?;
    let v_qid = victim.line("QID")?;
    victim.line("PROGRESS")?; // mid-I/O
    victim.kill();
    let qid: u64 = v_qid[4..].parse().map_err(|_| v_qid.clone())?;
    wait_until("the dead member's queue id is free", SETTLE, || {
        control_u32(&g, QIDS_AT + 4 * qid).is_ok_and(|owner| owner == 0)
    })?;
    assert_eq!(control_u32(&g, SHADOW_AT + 16)?, 1, "shadow doorbells on");
    // What a member that died with its queue in use can leave in its shadow entries: a
    // tail and a head from the middle of its rings and EventIdx values the controller
    // wrote. A new queue must start from 0, or the controller (waiting for an MMIO write
    // that the EventIdx keeps the host from making) never looks at it.
    let (db, ei) = (control_u64(&g, SHADOW_AT)?, control_u64(&g, SHADOW_AT + 8)?);
    let admin = std::fs::OpenOptions::new()
        .write(true)
        .open(g.join("admin.mem"))
        .map_err(|e| e.to_string())?;
    // Doorbell stride 0: the SQ tail of queue q at 8q, its CQ head at 8q + 4.
    for (at, v) in [(db, 25u32), (db + 4, 13), (ei, 20), (ei + 4, 20)] {
        admin
            .write_all_at(&v.to_le_bytes(), at + 8 * qid)
            .map_err(|e| e.to_string())?;
    }
    let mut n = s.spawn("newcomer", "io", &[lba(8192), rounds()]);
    n.line("READY secondary")?;
    assert_eq!(
        n.line("QID")?,
        v_qid,
        "the dead member's queue id is reused"
    );
    io_stats(&mut n)?;
    n.finish()?.clean()?;
    let (fetched, via_shadow) = shadow_counts(&s)?;
    assert_eq!(via_shadow, fetched, "fetched through a shadow doorbell");
    release(&s, k)
}

fn a_group_reset_keeps_every_member_on_shadow_doorbells() -> Outcome {
    let s = Scenario::new(43);
    let k = keeper(&s)?;
    let mut p = s.spawn("io 1", "io-resets", &[lba(0)]);
    p.line("READY secondary")?;
    p.line("PROGRESS")?;
    let mut q = s.spawn("io 2", "io-resets", &[lba(4096)]);
    q.line("READY secondary")?;
    q.line("PROGRESS")?;
    for n in 0..2 {
        let mut r = s.spawn(&format!("reset {n}"), "reset", &[]);
        r.line("READY secondary")?;
        r.line("RESET-DONE")?;
        r.finish()?.clean()?;
        let (_, before) = shadow_counts(&s)?;
        // Both carry on, on re-created queues, with checked data, through the group's
        // shadow doorbells (given to the controller again by the reset).
        p.progresses()?;
        q.progresses()?;
        let (_, after) = shadow_counts(&s)?;
        assert!(
            after > before,
            "no I/O through shadow doorbells after reset {n}"
        );
    }
    s.stop()?;
    for proc in [p, q] {
        proc.finish()?.clean()?;
    }
    let (fetched, via_shadow) = shadow_counts(&s)?;
    assert_eq!(via_shadow, fetched, "fetched through a shadow doorbell");
    assert_eq!(dma_errors(&s)?, 0, "DMA through memory that was let go");
    release(&s, k)
}

fn the_creator_decides_shadow_doorbells_for_the_group() -> Outcome {
    let off = ("NVME_SHADOW_DOORBELLS", "0".to_string());
    // Not asked for by the creator (the default): MMIO doorbells for everyone, a member
    // that asks for them included.
    let s = Scenario::new(44);
    let mut keeper = s.spawn("keeper", "wait", &[]);
    keeper.line("READY primary")?;
    assert_eq!(control_u32(&s.group_dir(), SHADOW_AT + 16)?, 0);
    let mut sec = s.spawn("secondary", "io", &[lba(0), rounds(), shadow_on()]);
    sec.line("READY secondary")?;
    let [ios, _, _] = io_stats(&mut sec)?;
    sec.finish()?.clean()?;
    assert_eq!(shadow_counts(&s)?, (ios, 0), "no shadow doorbells");
    s.stop()?;
    keeper.finish()?.clean()?;
    // On for the group: a member that would rather not uses them all the same (the
    // controller reads every I/O queue's tail from the shadow buffer).
    let s = Scenario::new(45);
    let mut keeper = s.spawn("keeper", "wait", &[shadow_on()]);
    keeper.line("READY primary")?;
    let mut sec = s.spawn("secondary", "io", &[lba(0), rounds(), off]);
    sec.line("READY secondary")?;
    let [ios, _, _] = io_stats(&mut sec)?;
    sec.finish()?.clean()?;
    assert_eq!(
        shadow_counts(&s)?,
        (ios, ios),
        "all through shadow doorbells"
    );
    s.stop()?;
    keeper.finish()?.clean()?;
    Ok(())
}

/// `AttachOptions::group_monitor`: a member that does without the monitor thread (a
/// short-lived tool) works as a member all the same; one with it has exactly one.
fn a_member_may_do_without_the_monitor_thread() -> Outcome {
    let s = Scenario::new(46);
    let mut keeper = s.spawn("keeper", "wait", &[]);
    keeper.line("READY primary")?;
    for (env, want) in [(None, "MONITORS 1"), (Some("1"), "MONITORS 0")] {
        let env: Vec<(&str, String)> = env
            .map(|v| ("NVME_MP_NO_MONITOR", v.to_string()))
            .into_iter()
            .collect();
        let mut m = s.spawn("member", "monitor-threads", &env);
        m.line("READY secondary")?;
        assert_eq!(m.line("MONITORS")?, want);
        m.finish()?.clean()?;
    }
    s.stop()?;
    keeper.finish()?.clean()?;
    Ok(())
}

fn a_different_transport_is_refused() -> Outcome {
    let s = Scenario::new(19);
    let mut keeper = s.spawn("keeper", "wait", &[]);
    keeper.line("READY primary")?;
    std::env::set_var("NVME_RUN_DIR", s.dir.path());
    let opts = AttachOptions {
        group: Some(19),
        ..Default::default()
    };
    let pcie = TransportId::parse("trtype:PCIe traddr:0000:00:04.0").unwrap();
    let e = Controller::attach_with(&pcie, &opts).unwrap_err();
    std::env::remove_var("NVME_RUN_DIR");
    let msg = e.to_string();
    assert!(
        msg.contains("group 19 drives a software controller (trtype:sim)"),
        "{msg}"
    );
    s.stop()?;
    keeper.finish()?.clean()?;
    Ok(())
}

fn a_group_of_another_user_is_refused() -> Outcome {
    let s = Scenario::new(16);
    std::fs::create_dir_all(s.group_dir()).unwrap();
    let path = std::ffi::CString::new(s.group_dir().to_str().unwrap()).unwrap();
    // SAFETY: chown(2) on a path we created.
    if unsafe { libc::chown(path.as_ptr(), 4242, 4242) } != 0 {
        println!("    (skipped the foreign-owner check: chown needs root here)");
        return Ok(());
    }
    std::env::set_var("NVME_RUN_DIR", s.dir.path());
    let opts = AttachOptions {
        group: Some(16),
        ..Default::default()
    };
    let e = Controller::attach_with(&TransportId::parse(TRID).unwrap(), &opts).unwrap_err();
    std::env::remove_var("NVME_RUN_DIR");
    let msg = e.to_string();
    assert!(msg.contains("belongs to user 4242"), "{msg}");
    Ok(())
}

fn a_group_path_that_is_not_a_directory_is_refused() -> Outcome {
    let s = Scenario::new(25);
    let path = s.group_dir();
    let shown = path.display().to_string();
    let attach = || {
        std::env::set_var("NVME_RUN_DIR", s.dir.path());
        let opts = AttachOptions {
            group: Some(25),
            ..Default::default()
        };
        let r = Controller::attach_with(&TransportId::parse(TRID).unwrap(), &opts);
        std::env::remove_var("NVME_RUN_DIR");
        r
    };
    // A symbolic link to a directory of ours: refused, and never followed.
    let elsewhere = s.dir.path().join("elsewhere");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&elsewhere)
        .unwrap();
    std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
    let msg = attach().unwrap_err().to_string();
    assert!(
        msg.contains(&format!(
            "{shown} is a symbolic link to {}",
            elsewhere.display()
        )),
        "{msg}"
    );
    assert!(
        msg.contains("does not follow it") && msg.contains(&format!("remove it (rm {shown})")),
        "{msg}"
    );
    assert_eq!(
        std::fs::read_dir(&elsewhere).unwrap().count(),
        0,
        "nothing was made through the link"
    );
    // A dangling link too.
    std::fs::remove_dir(&elsewhere).unwrap();
    let msg = attach().unwrap_err().to_string();
    assert!(
        msg.contains(&format!("{shown} is a symbolic link")),
        "{msg}"
    );
    assert!(!elsewhere.exists(), "nothing was made through the link");
    std::fs::remove_file(&path).unwrap();
    // A regular file.
    std::fs::write(&path, b"not a group").unwrap();
    let msg = attach().unwrap_err().to_string();
    assert!(
        msg.contains(&format!("{shown} is a regular file, not a directory"))
            && msg.contains(&format!("remove it (rm {shown})")),
        "{msg}"
    );
    // A symbolic link in place of a file of the group directory is not followed either.
    std::fs::remove_file(&path).unwrap();
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&path)
        .unwrap();
    let target = s.dir.path().join("target");
    std::fs::write(&target, b"").unwrap();
    std::os::unix::fs::symlink(&target, path.join("members.lock")).unwrap();
    let msg = attach().unwrap_err().to_string();
    assert!(
        msg.contains("members.lock is a symbolic link") && msg.contains("remove it"),
        "{msg}"
    );
    // Once removed, the group is made as usual.
    std::fs::remove_dir_all(&path).unwrap();
    let ctrl = attach().map_err(|e| e.to_string())?;
    assert_eq!(ctrl.role(), Role::Primary);
    drop(ctrl);
    assert!(!path.exists(), "the last member removed the group");
    Ok(())
}

fn last_member_out_releases_everything() -> Outcome {
    let s = Scenario::new(17);
    let mut a = s.spawn("a", "wait", &[]);
    a.line("READY primary")?;
    let daemon_pid: u32 = a
        .line("DAEMON")?
        .trim_start_matches("DAEMON ")
        .parse()
        .unwrap();
    assert!(daemon_pid > 0 && pid_alive(daemon_pid));
    let mut b = s.spawn("b", "wait", &[]);
    b.line("READY secondary")?;
    let daemon = std::fs::read_dir(s.group_dir()).unwrap().count();
    assert!(daemon >= 3, "group files exist while members live");
    s.stop()?;
    a.finish()?.clean()?;
    b.finish()?.clean()?;
    wait_until("the group directory is removed", SETTLE, || {
        !s.group_dir().exists()
    })?;
    wait_until("the controller process exits", SETTLE, || {
        !pid_alive(daemon_pid)
    })?;
    s.dir.clear_stop();
    // A new process starts a fresh group as primary.
    let mut c = s.spawn("c", "wait", &[]);
    c.line("READY primary")?;
    s.stop()?;
    c.finish()?.clean()?;
    Ok(())
}

fn asynchronous_events_reach_every_process() -> Outcome {
    let s = Scenario::new(18);
    let mut a = s.spawn("a", "events", &[]);
    a.line("READY primary")?;
    let mut b = s.spawn("b", "events", &[]);
    b.line("READY secondary")?;
    // The test plays the device's environment: it tells the controller process to raise a
    // SMART / health event (temperature, SMART log page).
    let client = s.sim().unwrap();
    client
        .raise_async_event(nvme_host_linux::sim::AsyncEventType::SmartHealth, 1, 2)
        .unwrap();
    assert_eq!(a.line("EVENT")?, "EVENT 1 1 2");
    assert_eq!(b.line("EVENT")?, "EVENT 1 1 2");
    drop(client);
    a.finish()?.clean()?;
    b.finish()?.clean()?;
    Ok(())
}

fn a_stopped_lock_holder_is_an_error_not_a_hang() -> Outcome {
    let s = Scenario::new(20);
    let mut keeper = s.spawn("keeper", "wait", &[]);
    keeper.line("READY primary")?;
    // Alive but never releasing the admin lock: what a process stopped in a debugger does.
    let mut holder = s.spawn("holder", "hold-lock", &[]);
    holder.line("HOLDING")?;
    let start = Instant::now();
    let mut late = s.spawn(
        "late",
        "wait",
        &[("NVME_MP_ADMIN_TIMEOUT_MS", "500".into())],
    );
    let line = late.line("ATTACH-ERROR")?;
    assert!(line.contains("stopped or stuck"), "{line}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "the bound applies"
    );
    assert_eq!(late.finish()?.code, Some(3));
    // Once the holder is gone for good, the next process recovers the lock and joins.
    holder.kill();
    let mut next = s.spawn("next", "wait", &[]);
    next.line("READY secondary")?;
    s.stop()?;
    next.finish()?.clean()?;
    keeper.finish()?.clean()?;
    Ok(())
}

fn attaching_while_the_last_member_leaves_always_succeeds() -> Outcome {
    // Several processes attach and detach the same group at once: the group is torn down by
    // its last member and created again over and over, and every attach must succeed.
    let s = Scenario::new(24);
    const PROCS: usize = 5;
    const CYCLES: usize = 40;
    let procs: Vec<Proc> = (0..PROCS)
        .map(|n| {
            s.spawn(
                &format!("cycler {n}"),
                "cycles",
                &[("NVME_MP_CYCLES", CYCLES.to_string())],
            )
            .with_wait(Duration::from_secs(120))
        })
        .collect();
    let mut created = 0;
    for p in procs {
        let exit = p.finish()?;
        exit.clean()?;
        created += exit
            .stdout
            .rsplit_once("PRIMARY ")
            .and_then(|(_, n)| n.trim().parse::<u32>().ok())
            .ok_or_else(|| format!("{}: no count in {:?}", exit.name, exit.stdout))?;
    }
    // Each primary role was a group created anew (or taken over): the group was torn down
    // by its last member that many times, with the others attaching meanwhile.
    assert!(created > 1, "the group was created only {created} times");
    println!(
        "    ({} attaches; the group was created {created} times)",
        PROCS * CYCLES
    );
    wait_until("the group is removed", SETTLE, || !s.group_dir().exists())?;
    Ok(())
}

/// Byte offsets in the control segment (`group/layout.rs` asserts them): `info.admin_len`
/// and `info.sq_off`.
const ADMIN_LEN_AT: u64 = 408 + 40;
const SQ_OFF_AT: u64 = 408 + 48;

/// Replaces the u64 at `at` in the control file of `dir`; returns the old value.
fn poke_control(dir: &std::path::Path, at: u64, value: u64) -> Result<u64, String> {
    poke_control_bytes(dir, at, &value.to_le_bytes()).map(u64::from_le_bytes)
}

/// [`poke_control`] of `N` bytes (a field narrower than 8 bytes, whose neighbours the
/// running processes must not see change).
fn poke_control_bytes<const N: usize>(
    dir: &std::path::Path,
    at: u64,
    value: &[u8; N],
) -> Result<[u8; N], String> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join("control"))
        .map_err(|e| format!("opening control: {e}"))?;
    let mut old = [0u8; N];
    f.read_exact_at(&mut old, at).map_err(|e| e.to_string())?;
    f.write_all_at(value, at).map_err(|e| e.to_string())?;
    Ok(old)
}

/// A process that tries to join; its attach must fail with an error containing `want`.
fn join_fails_with(s: &Scenario, name: &str, want: &[&str]) -> Outcome {
    let mut late = s.spawn(name, "wait", &[]);
    let line = late
        .line("ATTACH-ERROR")
        .map_err(|e| format!("{e} (a joiner that dies of a signal printed nothing: SIGBUS?)"))?;
    for w in want {
        assert!(line.contains(w), "{line}");
    }
    assert_eq!(late.finish()?.code, Some(3));
    Ok(())
}

fn a_damaged_admin_segment_is_refused_to_joiners() -> Outcome {
    let s = Scenario::new(26);
    let g = s.group_dir();
    // An existing member sending admin commands all along (with shadow doorbells, so that
    // joiners check their pages).
    let mut p = s.spawn(
        "primary",
        "admin",
        &[("NVME_MP_NSID", "3".into()), shadow_on()],
    );
    p.line("READY primary")?;
    p.line("PROGRESS")?;

    // admin.mem shorter than the header says (as a joiner sees it: the members keep their
    // mapping of the real one, set aside meanwhile).
    let admin = g.join("admin.mem");
    let saved = g.join("admin.mem.saved");
    std::fs::rename(&admin, &saved).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&admin)
        .and_then(|f| f.set_len(4096))
        .unwrap();
    join_fails_with(
        &s,
        "joiner of a truncated admin.mem",
        &["admin.mem is 4096 bytes, not the", "damaged (truncated?)"],
    )?;
    std::fs::rename(&saved, &admin).unwrap();
    p.progresses()?;

    // Absurd offsets in the header: the submission ring would end past 2^64.
    let sq_off = poke_control(&g, SQ_OFF_AT, !0xfffu64)?;
    join_fails_with(
        &s,
        "joiner of an absurd layout",
        &[
            "admin queue layout in the control segment is invalid",
            "the submission ring at 0xfffffffffffff000",
            "not inside",
        ],
    )?;
    // The members use the layout they checked when they joined, not the header's.
    p.progresses()?;
    poke_control(&g, SQ_OFF_AT, sq_off)?;

    // An admin segment length that does not match the file.
    let len = poke_control(&g, ADMIN_LEN_AT, 1 << 40)?;
    join_fails_with(
        &s,
        "joiner of a wrong length",
        &[
            "admin.mem is",
            "not the 1099511627776 the control segment says",
        ],
    )?;
    p.progresses()?;
    poke_control(&g, ADMIN_LEN_AT, len)?;

    // The shadow doorbell pages outside the segment, and an on/off record that is neither.
    let db_off = poke_control(&g, SHADOW_AT, 1 << 40)?;
    join_fails_with(
        &s,
        "joiner of absurd shadow pages",
        &[
            "admin queue layout in the control segment is invalid",
            "the shadow doorbell page at 0x10000000000",
        ],
    )?;
    poke_control(&g, SHADOW_AT, db_off)?;
    let on = poke_control(&g, SHADOW_AT + 16, 7)?;
    join_fails_with(
        &s,
        "joiner of a damaged shadow record",
        &[
            "admin queue layout in the control segment is invalid",
            "shadow doorbells recorded as 7",
        ],
    )?;
    p.progresses()?;
    poke_control(&g, SHADOW_AT + 16, on)?;

    // Repaired, the group takes members again.
    let mut next = s.spawn("next", "admin", &[("NVME_MP_NSID", "1".into())]);
    next.line("READY secondary")?;
    next.line("PROGRESS")?;
    p.progresses()?;
    s.stop()?;
    next.finish()?.clean()?;
    p.finish()?.clean()?;
    wait_until("the group is removed", SETTLE, || !g.exists())?;
    Ok(())
}

/// Offset of the shared admin state's doorbell stride in the control segment.
const DSTRD_AT: u64 = 13872 + 12;

/// A primary doing checked I/O and a secondary sending admin commands until one fails
/// (role `admin-until-error`), both under way.
fn io_primary_and_admin_secondary(s: &Scenario) -> Result<(Proc, Proc), String> {
    let mut p = s.spawn("primary", "io", &[lba(0)]);
    p.line("READY primary")?;
    p.progresses()?;
    let mut a = s.spawn(
        "admin",
        "admin-until-error",
        &[("NVME_MP_ADMIN_TIMEOUT_MS", "1000".into())],
    );
    a.line("READY secondary")?;
    a.line("PROGRESS")?;
    Ok((p, a))
}

fn a_damaged_doorbell_stride_is_an_error_for_admin_users_only() -> Outcome {
    let s = Scenario::new(29);
    let g = s.group_dir();
    let (mut p, mut a) = io_primary_and_admin_secondary(&s)?;
    // A neighbour writes stride exponent 3 (the controller's is 0): the admin completion
    // doorbell would land on I/O queue 3's submission doorbell.
    // Only the stride's 4 bytes: the maximum transfer after it stays as it is.
    let old = poke_control_bytes(&g, DSTRD_AT, &3u32.to_le_bytes())?;
    let line = a.line("ADMIN-ERROR")?;
    assert!(line.contains("doorbell stride"), "{line}");
    let line = a.line("NEXT-ERROR")?;
    assert!(line.contains("doorbell stride"), "{line}");
    // I/O does not use the shared admin state: the primary goes on.
    p.progresses()?;
    poke_control_bytes(&g, DSTRD_AT, &old)?;
    s.stop()?;
    a.finish()?.clean()?;
    p.finish()?.clean()?;
    wait_until("the group is removed", SETTLE, || !g.exists())?;
    Ok(())
}

fn a_truncated_control_file_is_an_error_not_sigbus() -> Outcome {
    let s = Scenario::new(30);
    let g = s.group_dir();
    let (mut p, mut a) = io_primary_and_admin_secondary(&s)?;
    // A neighbour cuts the control file under both members' mappings.
    std::fs::OpenOptions::new()
        .write(true)
        .open(g.join("control"))
        .and_then(|f| f.set_len(0))
        .map_err(|e| e.to_string())?;
    a.line("ADMIN-ERROR")?;
    let line = a.line("NEXT-ERROR")?;
    assert!(line.contains("truncated control"), "{line}");
    // The primary's I/O queue pair is its own memory: it goes on.
    p.progresses()?;
    s.stop()?;
    // Both leave on their own (no SIGBUS); the group is unusable, so they leave it as
    // dead members would.
    for proc in [a, p] {
        let exit = proc.finish()?;
        assert_eq!(exit.code, Some(0), "{exit:?}");
    }
    // A fresh attach makes the group anew.
    s.dir.clear_stop();
    let mut next = s.spawn("next", "admin", &[("NVME_MP_NSID", "3".into())]);
    next.line("READY primary")?;
    next.line("PROGRESS")?;
    s.stop()?;
    next.finish()?.clean()?;
    wait_until("the group is removed", SETTLE, || !g.exists())?;
    Ok(())
}

/// The state letter of process `pid` (`/proc/<pid>/stat`).
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

fn signal(p: &Proc, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid() as i32), sig).unwrap();
}

/// Starts a member that takes the join lock, and stops it (SIGSTOP) while it holds it.
fn stopped_join_holder(
    s: &Scenario,
    name: &str,
    release: &std::path::Path,
) -> Result<Proc, String> {
    let mut h = s.spawn(
        name,
        "hold-join",
        &[("NVME_MP_RELEASE", release.display().to_string())],
    );
    h.line("READY")?;
    h.line("HOLDING")?;
    signal(&h, nix::sys::signal::Signal::SIGSTOP);
    let pid = h.pid();
    wait_until("the holder is stopped", SETTLE, || {
        proc_state(pid) == Some('T')
    })?;
    Ok(h)
}

fn a_stopped_join_lock_holder_is_named_not_waited_for() -> Outcome {
    use nix::sys::signal::Signal;
    let s = Scenario::new(27);
    let bound = Duration::from_millis(500);
    let ms = ("NVME_MP_ADMIN_TIMEOUT_MS", bound.as_millis().to_string());
    let mut keeper = s.spawn("keeper", "wait", std::slice::from_ref(&ms));
    keeper.line("READY primary")?;
    let release = s.dir.path().join("release");
    let holder = stopped_join_holder(&s, "holder", &release)?;
    let hpid = holder.pid();

    // A process attaching now fails within the bound, naming the stopped holder.
    let start = Instant::now();
    let mut late = s.spawn("late", "wait", std::slice::from_ref(&ms));
    let line = late.line("ATTACH-ERROR")?;
    let took = start.elapsed();
    for want in [
        "waited 500 ms for the group's join lock".to_string(),
        format!("pid {hpid} (member 1), which is stopped"),
        format!("kill -CONT {hpid}"),
        format!("kill {hpid}"),
    ] {
        assert!(line.contains(&want), "{want:?} not in {line}");
    }
    assert!(took >= bound, "it waited the bound ({took:?})");
    assert!(took < bound + SETTLE, "the bound applies ({took:?})");
    assert_eq!(late.finish()?.code, Some(3));

    // The primary's exit does not hang on the join lock either: it leaves without it, says
    // so, and exits.
    s.stop()?;
    let exit = keeper.finish()?;
    assert_eq!(exit.code, Some(0), "{exit:?}");
    assert!(
        exit.stderr.contains("without its join lock")
            && exit.stderr.contains(&format!("pid {hpid}")),
        "{}",
        exit.stderr
    );
    s.dir.clear_stop();

    // Resumed, the holder lets go; the group recovers: the primary left as if it had died,
    // so a newcomer joins the holder's group, takes the primary role and finds no queue in
    // use.
    signal(&holder, Signal::SIGCONT);
    std::fs::write(&release, b"").unwrap();
    let mut holder = holder;
    holder.line("RELEASED")?;
    let mut next = s.spawn("next", "queues", &[]);
    next.line("READY primary")?;
    assert_eq!(next.line("IN-USE")?, "IN-USE 0");
    next.line("QID")?;
    next.finish()?.clean()?;

    // A stopped holder that is killed instead (it took the primary role the newcomer left):
    // the kernel drops its locks, the next attach succeeds and takes the role in turn.
    std::fs::remove_file(&release).unwrap();
    let mut holder2 = stopped_join_holder(&s, "second holder", &release)?;
    holder2.kill();
    let mut after = s.spawn("after the kill", "wait", &[]);
    after.line("READY primary")?;
    s.stop()?;
    after.finish()?.clean()?;
    holder.finish()?.clean()?;
    wait_until("the group is removed", SETTLE, || !s.group_dir().exists())?;
    Ok(())
}

/// The `NS` lines of a child up to `NS-END` (see `say_namespaces`).
fn namespace_lines(p: &mut Proc) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    loop {
        let l = p.line("NS")?;
        if l == "NS-END" {
            return Ok(out);
        }
        out.push(l);
    }
}

/// Counts the Identify commands the software controller receives from now on: a fault rule
/// that delays each by nothing and counts them (`identify_count`).
fn count_identify(
    s: &Scenario,
) -> Result<
    (
        nvme_host_linux::sim::SimClient,
        nvme_host_linux::sim::FaultId,
    ),
    String,
> {
    use nvme_host_linux::regs::opcode::AdminOpcode;
    use nvme_host_linux::sim::CommandMatch;
    let sim = s.sim()?;
    let id = sim
        .delay_nth(
            CommandMatch::admin(AdminOpcode::Identify as u8),
            1,
            Duration::ZERO,
            true,
        )
        .map_err(|e| e.to_string())?;
    Ok((sim, id))
}

fn identify_count(
    sim: &nvme_host_linux::sim::SimClient,
    id: nvme_host_linux::sim::FaultId,
) -> Result<u64, String> {
    sim.fault_fired(id).map(|f| f.0).map_err(|e| e.to_string())
}

/// Offsets in the control segment (layout 5) of the namespace record's generation and
/// count.
const NS_GENERATION_AT: u64 = 61240 + 64;
const NS_COUNT_AT: u64 = 61240 + 80;

/// Waits until the group's namespace record holds a whole list of `n` namespaces at a
/// generation past `after`; returns the generation.
fn record_refreshed(s: &Scenario, after: u64, n: u32) -> Result<u64, String> {
    let dir = s.group_dir();
    let mut g = 0;
    wait_until("the namespace record is refreshed", SETTLE, || {
        g = control_u64(&dir, NS_GENERATION_AT).unwrap_or(0);
        g > after && g % 2 == 0 && control_u32(&dir, NS_COUNT_AT).ok() == Some(n)
    })
    .map_err(|e| {
        let count = control_u32(&dir, NS_COUNT_AT);
        format!("{e}: generation {g}, count {count:?}")
    })?;
    Ok(g)
}

/// A joiner that reads the namespaces from the group's record: it says the same as
/// `want` and sends no Identify (no admin command at all when `no_admin`).
fn joins_without_identify(s: &Scenario, name: &str, want: &[String], no_admin: bool) -> Outcome {
    let (sim, id) = count_identify(s)?;
    let admin = sim.stats().map_err(|e| e.to_string())?.admin_commands;
    let mut j = s.spawn(name, "ns", &[]);
    j.line("READY secondary")?;
    assert_eq!(namespace_lines(&mut j)?, want, "{name}: other namespaces");
    j.finish()?.clean()?;
    assert_eq!(identify_count(&sim, id)?, 0, "{name} sent Identify");
    if no_admin {
        let after = sim.stats().map_err(|e| e.to_string())?.admin_commands;
        assert_eq!(after, admin, "{name} sent admin commands");
    }
    sim.remove_fault(id).map_err(|e| e.to_string())?;
    Ok(())
}

/// Starts the group's creator (role `ns-wait`); returns it, its namespaces and the
/// namespace record's generation.
fn ns_creator(s: &Scenario) -> Result<(Proc, Vec<String>, u64), String> {
    let mut p = s.spawn("creator", "ns-wait", &[]);
    p.line("READY primary")?;
    let lines = namespace_lines(&mut p)?;
    let g = control_u64(&s.group_dir(), NS_GENERATION_AT)?;
    Ok((p, lines, g))
}

fn a_joiner_reads_the_namespaces_from_the_group_without_identify() -> Outcome {
    let s = Scenario::new(31);
    let (p, creator, g) = ns_creator(&s)?;
    assert_eq!(creator.len(), 2, "{creator:?}");
    assert!(creator[0].starts_with("NS 1 512 131072 "), "{creator:?}");
    // The creator recorded them at bring-up (generation 2: written once).
    assert_eq!(g, 2);
    // Attaching, reading the namespaces and detaching takes no admin command.
    joins_without_identify(&s, "joiner", &creator, true)?;
    s.stop()?;
    p.finish()?.clean()?;
    Ok(())
}

fn a_format_by_one_member_reaches_later_joiners_through_the_record() -> Outcome {
    let s = Scenario::new(32);
    let (p, before, g) = ns_creator(&s)?;
    let mut f = s.spawn("formatter", "format", &[]);
    f.line("READY secondary")?;
    f.line("FORMATTED")?;
    let after = namespace_lines(&mut f)?;
    f.finish()?.clean()?;
    assert!(after[0].starts_with("NS 1 4096 16384 "), "{after:?}");
    assert_eq!(after[1], before[1], "namespace 2 is as it was");
    // Emptied before the format, filled after it: two generations.
    assert_eq!(control_u64(&s.group_dir(), NS_GENERATION_AT)?, g + 4);
    joins_without_identify(&s, "joiner", &after, false)?;
    s.stop()?;
    p.finish()?.clean()?;
    Ok(())
}

fn a_writer_dying_mid_update_does_not_keep_joiners_out() -> Outcome {
    use nix::sys::signal::Signal;
    let s = Scenario::new(33);
    let (p, want, g) = ns_creator(&s)?;
    let mut w = s.spawn("writer", "hold-ns-record", &[]);
    w.line("READY secondary")?;
    w.line("HOLDING")?;
    assert_eq!(control_u64(&s.group_dir(), NS_GENERATION_AT)?, g | 1);
    let (sim, id) = count_identify(&s)?;
    // A live writer in the middle of an update: the joiner sends Identify.
    let mut j = s.spawn("joiner beside the writer", "ns", &[]);
    j.line("READY secondary")?;
    assert_eq!(namespace_lines(&mut j)?, want);
    j.finish()?.clean()?;
    assert_eq!(identify_count(&sim, id)?, 3, "Identify list + 2 namespaces");
    // A format waits for the writer (bounded by the admin timeout), then names it.
    let mut f = s.spawn(
        "formatter beside the writer",
        "format",
        &[("NVME_MP_ADMIN_TIMEOUT_MS", "300".into())],
    );
    f.line("READY secondary")?;
    let e = f.line("ERROR")?;
    let holder = format!("pid {} holds it", w.pid());
    assert!(
        e.contains("namespace record's lock") && e.contains(&holder),
        "{e}"
    );
    assert_eq!(f.finish()?.code, Some(1));
    // The writer dies mid-update; the creator is stopped so that its monitor does not
    // repair the record before the next joiner looks.
    signal(&p, Signal::SIGSTOP);
    w.kill();
    let mut j = s.spawn("joiner after the writer died", "ns", &[]);
    j.line("READY secondary")?;
    assert_eq!(namespace_lines(&mut j)?, want);
    j.finish()?.clean()?;
    assert!(identify_count(&sim, id)? >= 6, "it sent Identify");
    sim.remove_fault(id).map_err(|e| e.to_string())?;
    // Resumed, the creator's monitor refreshes the record; joiners read it again.
    signal(&p, Signal::SIGCONT);
    record_refreshed(&s, g | 1, 2)?;
    joins_without_identify(&s, "joiner after the repair", &want, false)?;
    s.stop()?;
    p.finish()?.clean()?;
    Ok(())
}

fn a_namespace_change_notice_refreshes_the_record() -> Outcome {
    use nvme_host_linux::regs::log::lid;
    use nvme_host_linux::sim::AsyncEventType;
    let s = Scenario::new(34);
    let (p, want, g) = ns_creator(&s)?;
    let (sim, id) = count_identify(&s)?;
    // Namespace Attribute Changed, as if another host had changed a namespace.
    sim.raise_async_event(AsyncEventType::Notice, 0, lid::CHANGED_NAMESPACES)
        .map_err(|e| e.to_string())?;
    record_refreshed(&s, g, 2)?;
    assert_eq!(
        identify_count(&sim, id)?,
        3,
        "the monitor identified the namespaces again"
    );
    sim.remove_fault(id).map_err(|e| e.to_string())?;
    joins_without_identify(&s, "joiner", &want, false)?;
    s.stop()?;
    p.finish()?.clean()?;
    Ok(())
}

fn main() -> ExitCode {
    if let Some(role) = testkit::role() {
        std::process::exit(child(&role));
    }
    let scenarios: &[testkit::Scenario] = &[
        (
            "primary_and_secondaries_share_io_and_admin",
            primary_and_secondaries_share_io_and_admin,
        ),
        (
            "killed_secondaries_are_cleaned_up",
            killed_secondaries_are_cleaned_up,
        ),
        (
            "a_queue_the_controller_would_not_delete_stays_reserved",
            a_queue_the_controller_would_not_delete_stays_reserved,
        ),
        ("killed_primary_is_replaced", killed_primary_is_replaced),
        (
            "data_written_by_one_process_reads_back_in_another",
            data_written_by_one_process_reads_back_in_another,
        ),
        ("a_different_build_is_refused", a_different_build_is_refused),
        (
            "every_process_gets_interrupts_on_vectors_of_its_own",
            every_process_gets_interrupts_on_vectors_of_its_own,
        ),
        (
            "a_damaged_doorbell_stride_is_an_error_for_admin_users_only",
            a_damaged_doorbell_stride_is_an_error_for_admin_users_only,
        ),
        (
            "a_truncated_control_file_is_an_error_not_sigbus",
            a_truncated_control_file_is_an_error_not_sigbus,
        ),
        (
            "a_different_transport_is_refused",
            a_different_transport_is_refused,
        ),
        (
            "a_reset_by_one_process_reaches_every_process",
            a_reset_by_one_process_reaches_every_process,
        ),
        (
            "an_admin_timeout_in_one_process_resets_the_group",
            an_admin_timeout_in_one_process_resets_the_group,
        ),
        (
            "a_function_reset_by_one_process_reaches_every_process",
            a_function_reset_by_one_process_reaches_every_process,
        ),
        (
            "a_member_dying_mid_reset_does_not_wedge_the_group",
            a_member_dying_mid_reset_does_not_wedge_the_group,
        ),
        (
            "a_dead_controller_process_is_detected_once",
            a_dead_controller_process_is_detected_once,
        ),
        (
            "detach_joins_the_monitor_thread_first",
            detach_joins_the_monitor_thread_first,
        ),
        (
            "a_members_buffers_come_from_one_mapping_inside_its_iova_slice",
            a_members_buffers_come_from_one_mapping_inside_its_iova_slice,
        ),
        (
            "a_group_of_another_user_is_refused",
            a_group_of_another_user_is_refused,
        ),
        (
            "a_group_path_that_is_not_a_directory_is_refused",
            a_group_path_that_is_not_a_directory_is_refused,
        ),
        (
            "last_member_out_releases_everything",
            last_member_out_releases_everything,
        ),
        (
            "a_stopped_lock_holder_is_an_error_not_a_hang",
            a_stopped_lock_holder_is_an_error_not_a_hang,
        ),
        (
            "a_stopped_join_lock_holder_is_named_not_waited_for",
            a_stopped_join_lock_holder_is_named_not_waited_for,
        ),
        (
            "asynchronous_events_reach_every_process",
            asynchronous_events_reach_every_process,
        ),
        (
            "a_damaged_admin_segment_is_refused_to_joiners",
            a_damaged_admin_segment_is_refused_to_joiners,
        ),
        (
            "attaching_while_the_last_member_leaves_always_succeeds",
            attaching_while_the_last_member_leaves_always_succeeds,
        ),
        (
            "a_secondarys_io_goes_through_the_groups_shadow_doorbells",
            a_secondarys_io_goes_through_the_groups_shadow_doorbells,
        ),
        (
            "a_dead_members_queue_id_is_reused_with_clean_shadow_doorbells",
            a_dead_members_queue_id_is_reused_with_clean_shadow_doorbells,
        ),
        (
            "a_group_reset_keeps_every_member_on_shadow_doorbells",
            a_group_reset_keeps_every_member_on_shadow_doorbells,
        ),
        (
            "the_creator_decides_shadow_doorbells_for_the_group",
            the_creator_decides_shadow_doorbells_for_the_group,
        ),
        (
            "a_member_may_do_without_the_monitor_thread",
            a_member_may_do_without_the_monitor_thread,
        ),
        (
            "a_joiner_reads_the_namespaces_from_the_group_without_identify",
            a_joiner_reads_the_namespaces_from_the_group_without_identify,
        ),
        (
            "a_format_by_one_member_reaches_later_joiners_through_the_record",
            a_format_by_one_member_reaches_later_joiners_through_the_record,
        ),
        (
            "a_writer_dying_mid_update_does_not_keep_joiners_out",
            a_writer_dying_mid_update_does_not_keep_joiners_out,
        ),
        (
            "a_namespace_change_notice_refreshes_the_record",
            a_namespace_change_notice_refreshes_the_record,
        ),
    ];
    testkit::run_scenarios("multiprocess", scenarios)
}
