//! `nvme-perf` and `nvmectl` as members of one shared-memory group (`-i`): real processes
//! of the built binaries, over a software controller that runs as its own process.
//!
//! `harness = false`: the scenarios run one after another on the main thread, which is the
//! parent every child dies with (`PR_SET_PDEATHSIG`). All groups live under a temporary
//! `NVME_RUN_DIR` of this run, and each scenario has its own group id.

use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use nvme_host_linux::testkit::{self, pid_alive, wait_until, Exit, Outcome, Proc, RunDir};
use nvme_host_linux::{AttachOptions, Controller, Role, TransportId};

const PERF: &str = env!("CARGO_BIN_EXE_nvme-perf");
const NVMECTL: &str = env!("CARGO_BIN_EXE_nvmectl");

/// How long the scenarios wait for a state to come about.
const SETTLE: Duration = Duration::from_secs(10);

/// The directory of group `group` (under this run's `NVME_RUN_DIR`, set in `main`).
fn group_dir(group: u32) -> std::path::PathBuf {
    nvme_host_linux::group::group_dir(group)
}

fn spawn(name: &str, program: &str, args: &[&str]) -> Proc {
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null()).stderr(Stdio::piped());
    Proc::spawn(name, &mut cmd).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs a short command to completion (bounded) and returns how it ended.
fn run(name: &str, program: &str, args: &[&str]) -> Result<Exit, String> {
    spawn(name, program, args).finish()
}

/// The IOPS of the `Total` line of a perf table.
fn total_iops(stdout: &str) -> f64 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("Total "))
        .unwrap_or_else(|| panic!("no Total line in:\n{stdout}"));
    let (_, numbers) = line.rsplit_once(':').expect("a table line has a colon");
    numbers
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("bad Total line: {line}"))
}

fn role_of(stdout: &str) -> &str {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("Joined shared-memory group "))
        .and_then(|rest| rest.split_once(" as "))
        .map(|(_, role)| role)
        .unwrap_or_else(|| panic!("no 'Joined shared-memory group' line in:\n{stdout}"))
}

fn perf_args(group: &str, mask: &str, seconds: &str, trid: &'static str) -> Vec<String> {
    [
        "-i", group, "-r", trid, "-q", "8", "-o", "4096", "-w", "randread", "-t", seconds, "-c",
        mask,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn spawn_perf(name: &str, args: &[String]) -> Proc {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    spawn(name, PERF, &args)
}

/// A CPU mask of one core.
fn mask(core: usize) -> String {
    format!("0x{:x}", 1u128 << core)
}

// ---------------------------------------------------------------------------------------
// Scenarios

/// Two perf processes in one group, started together: on two cores, then on the same core.
fn two_perfs_share_a_controller() -> Outcome {
    const GROUP: &str = "21";
    const TRID: &str = "trtype:sim size:64M";
    let cores = nvme_tools::sys::available_cores().expect("affinity");
    let mut layouts = Vec::new();
    if cores.len() >= 2 {
        layouts.push(("disjoint", mask(cores[0]), mask(cores[1])));
    } else {
        println!("    (one core available: skipped the disjoint-cores run)");
    }
    layouts.push(("same core", mask(cores[0]), mask(cores[0])));
    for (layout, a, b) in layouts {
        let started = Instant::now();
        let pa = spawn_perf(
            &format!("perf A ({layout}, -c {a})"),
            &perf_args(GROUP, &a, "2", TRID),
        );
        let pb = spawn_perf(
            &format!("perf B ({layout}, -c {b})"),
            &perf_args(GROUP, &b, "2", TRID),
        );
        // A 2 s run; sharing a core halves each one's CPU, not its run time. Hanging, as
        // SPDK's secondaries did on a shared core (#644), would end here.
        let bound = Duration::from_secs(15);
        let ea = pa.finish_by(started + bound)?;
        let eb = pb.finish_by(started + bound)?;
        let mut roles = Vec::new();
        for e in [&ea, &eb] {
            e.clean()?;
            let iops = total_iops(&e.stdout);
            assert!(iops > 0.0, "{}: no I/O\n{}", e.name, e.stdout);
            roles.push(role_of(&e.stdout).to_string());
            println!(
                "    {}: {}, {iops:.0} IOPS, exited after {} ms",
                e.name,
                roles.last().unwrap(),
                e.took.as_millis()
            );
        }
        roles.sort();
        assert_eq!(
            roles,
            ["primary", "secondary"],
            "{layout}: one process created the group, the other joined it"
        );
        wait_until("the group is removed", SETTLE, || {
            !group_dir(GROUP.parse().unwrap()).exists()
        })?;
    }
    Ok(())
}

/// 100 short-lived nvmectl runs beside a running perf: every one works, perf does not
/// notice, no queue id leaks, and the device really served perf's reads meanwhile.
fn nvmectl_cycles_beside_perf() -> Outcome {
    const GROUP: u32 = 22;
    const TRID: &str = "trtype:sim size:64M serial:MPTOOLS";
    let cores = nvme_tools::sys::available_cores().expect("affinity");
    let mut perf = spawn_perf(
        "perf",
        &perf_args(&GROUP.to_string(), &mask(cores[0]), "120", TRID),
    );
    perf.line("Initialization complete")?;
    // This process joins too, to look at the group from inside.
    let opts = AttachOptions {
        group: Some(GROUP),
        ..AttachOptions::default()
    };
    let me = Controller::attach_with(&TransportId::parse("trtype:sim").unwrap(), &opts)
        .expect("the test process joins the group");
    assert_eq!(me.role(), Role::Secondary, "perf created the group");
    let daemon = me.sim_process().expect("a controller process");
    wait_until("perf's worker has its I/O queue", SETTLE, || {
        me.io_queues_in_use() == 1
    })?;
    let reads_before = me.smart_log().unwrap().host_read_commands();

    let g = GROUP.to_string();
    let ctl = |sub: &str| {
        run(
            &format!("nvmectl {sub}"),
            NVMECTL,
            &["-i", &g, "-r", "trtype:sim", sub],
        )
    };
    let cycles_started = Instant::now();
    for i in 0..100 {
        let e = ctl(if i % 2 == 0 { "id-ctrl" } else { "smart-log" })?;
        e.clean()?;
        if i % 2 == 0 {
            // The group's controller (perf's serial), not a fresh one of nvmectl's own.
            assert!(
                e.stdout.starts_with("NVME Identify Controller:"),
                "{}",
                e.stdout
            );
            assert!(e.stdout.contains("\nsn        : MPTOOLS"), "{}", e.stdout);
        } else {
            assert!(
                e.stdout
                    .starts_with("Smart Log for NVME device:sim namespace-id:ffffffff"),
                "{}",
                e.stdout
            );
        }
        if i % 10 == 9 {
            let l = ctl("list")?;
            l.clean()?;
            assert!(
                l.stdout
                    .lines()
                    .any(|r| r.starts_with("sim ") && r.contains("MPTOOLS")),
                "{}",
                l.stdout
            );
        }
    }
    let cycles = cycles_started.elapsed();
    println!(
        "    110 nvmectl runs in {} ms ({:.1} ms each)",
        cycles.as_millis(),
        cycles.as_secs_f64() * 1000.0 / 110.0
    );
    // perf runs until it is told to stop (below), however long the runs take on a busy
    // machine.
    assert!(
        perf.running(),
        "perf ended before the nvmectl runs did ({} ms)",
        cycles.as_millis()
    );
    // Seen by nvmectl itself: it is a secondary, and only perf's queue is in use.
    let e = run(
        "nvmectl --show-group",
        NVMECTL,
        &[
            "-i",
            &g,
            "-r",
            "trtype:sim",
            "--show-group",
            "get-feature",
            "-f",
            "7",
        ],
    )?;
    assert_eq!(e.code, Some(0), "{}", e.stderr);
    assert_eq!(
        e.stderr.trim_end(),
        format!(
            "nvmectl: shared-memory group {GROUP}: secondary, I/O queue ids in use by the group: 1, controller process {daemon}"
        )
    );
    assert_eq!(me.io_queues_in_use(), 1, "only perf's queue is in use");
    let reads_after = me.smart_log().unwrap().host_read_commands();
    assert!(
        reads_after > reads_before + 1000,
        "perf's reads reached the controller meanwhile: {reads_before} -> {reads_after}"
    );

    send(&perf, libc::SIGINT);
    let e = perf.finish_by(Instant::now() + SETTLE)?;
    assert_eq!(e.code, Some(0), "{}", e.stderr);
    assert_eq!(
        e.stderr.trim_end(),
        "nvme-perf: stopped by SIGINT: the results are those of the run so far"
    );
    assert_eq!(role_of(&e.stdout), "primary");
    let iops = total_iops(&e.stdout);
    assert!(iops > 0.0, "{}", e.stdout);
    println!("    perf beside them: {iops:.0} IOPS");
    assert_eq!(me.io_queues_in_use(), 0, "perf returned its queue id");
    drop(me);
    // The test process was the last member: the group and its controller process are gone.
    assert!(
        !group_dir(GROUP).exists(),
        "group removed by the last member"
    );
    wait_until("the controller process exits", SETTLE, || {
        !pid_alive(daemon)
    })?;
    Ok(())
}

/// nvmectl with `-i` and nobody in the group: it creates the group, works, and removes it.
fn nvmectl_alone_creates_and_removes_the_group() -> Outcome {
    const GROUP: u32 = 23;
    let g = GROUP.to_string();
    for round in 0..2 {
        let e = run(
            "lone nvmectl",
            NVMECTL,
            &[
                "-i",
                &g,
                "-r",
                "trtype:sim serial:SOLO",
                "--show-group",
                "id-ctrl",
            ],
        )?;
        assert_eq!(e.code, Some(0), "round {round}: {}", e.stderr);
        assert!(e.stdout.contains("\nsn        : SOLO"), "{}", e.stdout);
        let prefix = format!(
            "nvmectl: shared-memory group {GROUP}: primary, I/O queue ids in use by the group: 0, controller process "
        );
        let pid: u32 = e
            .stderr
            .trim_end()
            .strip_prefix(&prefix)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("round {round}: stderr {:?}", e.stderr));
        assert!(
            !group_dir(GROUP).exists(),
            "round {round}: group removed on exit"
        );
        wait_until("the controller process exits", SETTLE, || !pid_alive(pid))?;
    }
    Ok(())
}

/// `nvmectl write` into a group's controller (which outlives nvmectl): from `/dev/zero`
/// and from a file longer than the blocks, exactly the requested blocks change.
fn nvmectl_write_changes_exactly_the_requested_blocks() -> Outcome {
    const GROUP: u32 = 24;
    const BS: usize = 512;
    let opts = AttachOptions {
        group: Some(GROUP),
        ..AttachOptions::default()
    };
    let me = Controller::attach_with(&TransportId::parse("trtype:sim size:16M").unwrap(), &opts)
        .expect("the test process creates the group");
    let mut qp = me
        .alloc_io_queue(nvme_host_linux::QueueOptions::new(4))
        .unwrap();
    let mut buf = me.alloc_dma(32 * BS).unwrap();
    buf.as_mut_slice().fill(0xa5);
    qp.write_sync(1, 0, buf.slice(0..32 * BS).unwrap()).unwrap();

    let g = GROUP.to_string();
    let e = run(
        "nvmectl write from /dev/zero",
        NVMECTL,
        &[
            "-i",
            &g,
            "-r",
            "trtype:sim",
            "write",
            "-s",
            "8",
            "-c",
            "7",
            "-d",
            "/dev/zero",
        ],
    )?;
    assert_eq!(e.code, Some(0), "{}", e.stderr);
    let file = std::env::temp_dir().join(format!("nvmectl-pattern-{}", std::process::id()));
    let pattern: Vec<u8> = [0x11u8, 0x22, 0x33]
        .iter()
        .flat_map(|&b| std::iter::repeat_n(b, BS))
        .collect();
    std::fs::write(&file, &pattern).unwrap();
    let e = run(
        "nvmectl write from a longer file",
        NVMECTL,
        &[
            "-i",
            &g,
            "-r",
            "trtype:sim",
            "write",
            "-s",
            "20",
            "-c",
            "1",
            "-d",
            file.to_str().unwrap(),
        ],
    );
    let _ = std::fs::remove_file(&file);
    let e = e?;
    assert_eq!(e.code, Some(0), "{}", e.stderr);

    qp.read_sync(1, 0, buf.slice(0..32 * BS).unwrap()).unwrap();
    for (lba, block) in buf.as_slice().chunks(BS).enumerate() {
        let want = match lba {
            8..16 => 0x00,
            20 => 0x11,
            21 => 0x22,
            _ => 0xa5,
        };
        assert!(
            block.iter().all(|&b| b == want),
            "block {lba}: expected {want:#04x}, found {:#04x}...",
            block[0]
        );
    }
    drop(qp);
    drop(me);
    assert!(
        !group_dir(GROUP).exists(),
        "group removed by the last member"
    );
    Ok(())
}

/// Sends `signal` to a child.
fn send(p: &Proc, signal: i32) {
    // SAFETY: kill has no memory effects; the pid is our child's, not yet reaped (Proc reaps
    // it only in finish/kill).
    let rc = unsafe { libc::kill(p.pid() as libc::pid_t, signal) };
    assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
}

/// A group id of its own for a scenario: large, and different in every run.
fn fresh_group(salt: u32) -> u32 {
    2_000_000_000 + (std::process::id() % 100_000) * 8 + salt
}

/// A 30 s nvme-perf run of `workload` at depth `qd` in `group` (its own software
/// controller), once it has started, and this process joined to the group to watch it.
fn perf_in_group(
    name: &str,
    group: u32,
    qd: &str,
    workload: &str,
) -> Result<(Proc, Controller), String> {
    let g = group.to_string();
    let args = [
        "-i",
        &g,
        "-r",
        "trtype:sim size:64M",
        "-q",
        qd,
        "-o",
        "4096",
        "-w",
        workload,
        "-t",
        "30",
    ];
    let mut perf = spawn(name, PERF, &args);
    perf.line("Initialization complete")?;
    let opts = AttachOptions {
        group: Some(group),
        ..AttachOptions::default()
    };
    let me = Controller::attach_with(&TransportId::parse("trtype:sim").unwrap(), &opts)
        .map_err(|e| format!("the test process joins the group: {e}"))?;
    Ok((perf, me))
}

/// Ctrl-C (SIGINT) and SIGTERM on a 30 s perf run in a group: it stops within seconds,
/// prints SPDK's table of the run so far, exits 0 and, as the last member, removes the
/// group.
fn perf_stops_cleanly_on_sigint_and_sigterm() -> Outcome {
    for (salt, signal, name) in [(1, libc::SIGINT, "SIGINT"), (2, libc::SIGTERM, "SIGTERM")] {
        let group = fresh_group(salt);
        // Join to see perf's reads reach the controller: the run is under way.
        let (perf, me) = perf_in_group(&format!("perf -t 30 ({name})"), group, "8", "randread")?;
        wait_until("perf's reads reach the controller", SETTLE, || {
            me.smart_log().unwrap().host_read_commands() > 1000
        })?;
        let daemon = me.sim_process().expect("a controller process");
        drop(me);
        assert!(group_dir(group).exists(), "perf is still in the group");
        let signalled = Instant::now();
        send(&perf, signal);
        let e = perf.finish_by(signalled + Duration::from_secs(10))?;
        println!(
            "    {name}: exited {} ms after the signal",
            signalled.elapsed().as_millis()
        );
        assert_eq!(e.code, Some(0), "{name}: {}\n{}", e.stdout, e.stderr);
        assert!(
            e.stderr.contains(&format!(
                "nvme-perf: stopped by {name}: the results are those of the run so far"
            )),
            "{}",
            e.stderr
        );
        assert!(
            e.stdout.contains("Device Information") && total_iops(&e.stdout) > 0.0,
            "{name}: the table of the run so far:\n{}",
            e.stdout
        );
        assert!(
            !group_dir(group).exists(),
            "{name}: perf, the last member, removed the group"
        );
        wait_until("the controller process exits", SETTLE, || {
            !pid_alive(daemon)
        })?;
    }
    Ok(())
}

/// An `nvme-perf` random-write run in `group` on `--lba-range range` holding a lease of
/// `mode`, for `seconds`.
fn leased_perf(name: &str, group: u32, range: &str, mode: &str, seconds: &str) -> Proc {
    let g = group.to_string();
    let args = [
        "-i",
        &g,
        "-r",
        "trtype:sim size:16M",
        "-q",
        "4",
        "-o",
        "4096",
        "-w",
        "randwrite",
        "-t",
        seconds,
        "--lba-range",
        range,
        "--lease",
        mode,
    ];
    spawn(name, PERF, &args)
}

/// Two perf processes of one group with `--lease exclusive`: on disjoint LBA ranges both
/// run; on overlapping ones the second exits 1 with an error that names the first.
fn perf_leases_disjoint_ranges_run_overlapping_ones_fail() -> Outcome {
    let group = fresh_group(3);
    let mut a = leased_perf("perf A 0:4096", group, "0:4096", "exclusive", "2");
    a.line("Holding an exclusive lease on LBAs 0..4096 of SIM (sim) NSID 1")?;
    let mut b = leased_perf("perf B 4096:4096", group, "4096:4096", "exclusive", "2");
    b.line("Holding an exclusive lease on LBAs 4096..8192 of SIM (sim) NSID 1")?;
    for p in [a, b] {
        let e = p.finish()?;
        e.clean()?;
        assert!(
            total_iops(&e.stdout) > 0.0,
            "{}: no I/O\n{}",
            e.name,
            e.stdout
        );
    }

    let mut a = leased_perf("perf A 0:4096 (30 s)", group, "0:4096", "exclusive", "30");
    a.line("Holding an exclusive lease")?;
    let want = format!(
        "nvme-perf: error: SIM (sim) NSID 1: cannot claim an exclusive lease on LBAs 2048..6144 of namespace 1: pid {} (nvme-perf, member 0 of the group) holds an exclusive lease on LBAs 0..4096 of namespace 1",
        a.pid()
    );
    let refused = [
        ("perf B 2048:4096", "2048:4096", "exclusive", want.as_str()),
        // A shared claim on the same blocks fails the same way; elsewhere it runs.
        (
            "perf C shared",
            "4000:100",
            "shared",
            "cannot claim a shared lease on LBAs 4000..4100",
        ),
    ];
    for (name, range, mode, want) in refused {
        let e = leased_perf(name, group, range, mode, "2").finish()?;
        assert_eq!(e.code, Some(1), "{name}: {}\n{}", e.stdout, e.stderr);
        assert!(
            e.stderr.contains(want),
            "{name}: expected '{want}' in:\n{}",
            e.stderr
        );
    }
    leased_perf("perf D shared", group, "4096:100", "shared", "1")
        .finish()?
        .clean()?;
    send(&a, libc::SIGINT);
    let e = a.finish()?;
    assert_eq!(e.code, Some(0), "{}\n{}", e.stdout, e.stderr);
    wait_until("the group is removed", SETTLE, || {
        !group_dir(group).exists()
    })?;
    Ok(())
}

/// `nvmectl -i N reset` and `reset --function` beside a running perf: the tool resets the
/// group's controller, the perf run carries on (its queues reconnect; the I/O the reset aborted is not counted as an
/// error) and ends with results and no error.
fn nvmectl_reset_beside_perf() -> Outcome {
    let group = fresh_group(4);
    let g = group.to_string();
    let (perf, me) = perf_in_group("perf -t 30", group, "16", "randwrite")?;
    let writes = || me.smart_log().unwrap().host_write_commands();
    wait_until("perf's writes reach the controller", SETTLE, || {
        writes() > 1000
    })?;
    // A controller reset, then a function reset (on the software controller, with no PCI
    // function, the same controller reset).
    for extra in [None, Some("--function")] {
        let mut args = vec!["-i", &g, "-r", "trtype:sim", "reset"];
        args.extend(extra);
        let e = run("nvmectl reset", NVMECTL, &args)?;
        assert_eq!(
            e.code,
            Some(0),
            "{}
{}",
            e.stdout,
            e.stderr
        );
        if extra.is_some() {
            assert_eq!(
                e.stderr.trim(),
                "function reset: Success (PCI command register - before, - after)"
            );
        }
        // perf keeps writing through the re-created queues.
        let after = writes();
        wait_until("perf writes again after the reset", SETTLE, || {
            writes() > after + 1000
        })?;
    }
    drop(me);
    let signalled = Instant::now();
    send(&perf, libc::SIGINT);
    let e = perf.finish_by(signalled + Duration::from_secs(10))?;
    assert_eq!(
        e.code,
        Some(0),
        "{}
{}",
        e.stdout,
        e.stderr
    );
    assert!(total_iops(&e.stdout) > 0.0, "{}", e.stdout);
    assert!(!e.stderr.contains("error"), "{}", e.stderr);
    // perf saw the resets: each aborted its queue depth of writes once.
    assert!(
        e.stdout
            .contains("Controller resets during the run aborted "),
        "{}",
        e.stdout
    );
    Ok(())
}

/// Ctrl-C on an `nvmectl write` that waits for its input (stdin open, silent): it
/// abandons the write, detaches (removing the group it created) and exits 130.
fn nvmectl_abandons_a_write_on_sigint() -> Outcome {
    let group = fresh_group(3);
    let g = group.to_string();
    let mut cmd = Command::new(NVMECTL);
    cmd.args(["-i", &g, "-r", "trtype:sim", "write", "-s", "0", "-c", "0"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped());
    // Its stdin stays open (and silent) while the Proc holds the child.
    let p = Proc::spawn("nvmectl write", &mut cmd)?;
    wait_until("nvmectl created the group", SETTLE, || {
        group_dir(group).exists()
    })?;
    let signalled = Instant::now();
    send(&p, libc::SIGINT);
    let e = p.finish_by(signalled + Duration::from_secs(10))?;
    assert_eq!(e.code, Some(130), "{}", e.stderr);
    assert!(
        e.stderr.contains(
            "nvmectl: error: interrupted by SIGINT: write abandoned after 0 of 1 block(s); detached from the controller"
        ),
        "{}",
        e.stderr
    );
    assert!(!group_dir(group).exists(), "the group is removed");
    Ok(())
}

fn main() -> ExitCode {
    // Before any thread exists: every child and this process's own attaches use it.
    let dir = RunDir::new("tools-mp").expect("the run directory");
    std::env::set_var("NVME_RUN_DIR", dir.path());
    testkit::run_scenarios(
        "multiprocess",
        &[
            ("two_perfs_share_a_controller", two_perfs_share_a_controller),
            ("nvmectl_cycles_beside_perf", nvmectl_cycles_beside_perf),
            (
                "nvmectl_alone_creates_and_removes_the_group",
                nvmectl_alone_creates_and_removes_the_group,
            ),
            (
                "nvmectl_write_changes_exactly_the_requested_blocks",
                nvmectl_write_changes_exactly_the_requested_blocks,
            ),
            (
                "perf_stops_cleanly_on_sigint_and_sigterm",
                perf_stops_cleanly_on_sigint_and_sigterm,
            ),
            (
                "nvmectl_abandons_a_write_on_sigint",
                nvmectl_abandons_a_write_on_sigint,
            ),
            ("nvmectl_reset_beside_perf", nvmectl_reset_beside_perf),
            (
                "perf_leases_disjoint_ranges_run_overlapping_ones_fail",
                perf_leases_disjoint_ranges_run_overlapping_ones_fail,
            ),
        ],
    )
}
