//! `nvme-perf` and `nvmectl` over `trtype:TCP`, against the scripted NVMe/TCP target of
//! the driver's test kit (`nvme_host_linux::tcp::scripted`) on 127.0.0.1: the same tools,
//! only the transport id changes.

use std::process::{Command, Output, Stdio};

use nvme_host_linux::tcp::scripted::{start, Config, BLOCKS};

fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running the tool")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok(bin: &str, args: &[&str]) -> Output {
    let out = run(bin, args);
    assert!(
        out.status.success(),
        "{args:?}: {}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

/// Asserts that nvme-perf's output has its TCP row for namespace 1 with IOPS above 0.
fn assert_tcp_row_has_iops(stdout: &str) {
    let row = stdout
        .lines()
        .find(|l| l.starts_with("TCP (tcp:127.0.0.1:") && l.contains("NSID 1 from core"))
        .unwrap_or_else(|| panic!("no TCP row:\n{stdout}"));
    let iops: f64 = row
        .rsplit_once(':')
        .unwrap()
        .1
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(iops > 0.0, "{row}");
}

const PERF: &str = env!("CARGO_BIN_EXE_nvme-perf");
const CTL: &str = env!("CARGO_BIN_EXE_nvmectl");

#[test]
fn nvme_perf_runs_over_tcp() {
    let (trid, t) = start(Config::default());
    let out = ok(
        PERF,
        &[
            "-r", &trid, "-t", "1", "-q", "16", "-o", "4096", "-w", "randrw", "-M", "50",
        ],
    );
    let stdout = text(&out.stdout);
    assert_tcp_row_has_iops(&stdout);
    let connects = t.connects.lock().unwrap().clone();
    assert!(
        connects
            .iter()
            .any(|&(qid, _, cntlid)| qid >= 1 && cntlid == 5),
        "an I/O queue connected to the admin's controller: {connects:?}"
    );
    let (reads, writes) = *t.io.lock().unwrap();
    assert!(reads > 0 && writes > 0, "{reads} reads, {writes} writes");
}

#[test]
fn nvmectl_subcommands_run_over_tcp() {
    let (trid, t) = start(Config::default());
    let id = text(&ok(CTL, &["id-ctrl", "-r", &trid]).stdout);
    assert!(id.contains("E2E TCP TARGET"), "{id}");
    let ns = text(&ok(CTL, &["id-ns", "-r", &trid, "-n", "1"]).stdout);
    assert!(ns.contains(&format!("nsze    : {BLOCKS:#x}")), "{ns}");
    let f = text(&ok(CTL, &["get-feature", "-r", &trid, "-f", "0xf"]).stdout);
    assert!(f.contains("0x00001388"), "KATO 5000 ms: {f}");
    // Blocks 8..10 hold a pattern: `read` prints them.
    let pattern: Vec<u8> = (0..1024u32).map(|i| (i * 7 + 3) as u8).collect();
    t.disk.lock().unwrap()[8 * 512..10 * 512].copy_from_slice(&pattern);
    let out = ok(
        CTL,
        &[
            "read", "-r", &trid, "-n", "1", "-s", "8", "-c", "1", "-z", "1024",
        ],
    );
    assert_eq!(out.stdout, pattern);
    ok(
        CTL,
        &["write-zeroes", "-r", &trid, "-n", "1", "-s", "8", "-c", "0"],
    );
    assert!(t.disk.lock().unwrap()[8 * 512..9 * 512]
        .iter()
        .all(|&b| b == 0));
    ok(CTL, &["flush", "-r", &trid, "-n", "1"]);
}

/// nvme-sim's NVMe/TCP target on 127.0.0.1, one namespace of 16384 512-byte blocks.
fn sim_target() -> nvme_host_linux::sim::TcpTarget {
    use nvme_host_linux::sim::{NamespaceConfig, SimConfig, TcpTarget};
    let cfg = SimConfig {
        namespaces: vec![NamespaceConfig {
            lba_size: 512,
            blocks: 16384,
        }],
        ..Default::default()
    };
    TcpTarget::start(cfg, "127.0.0.1:0".parse().unwrap(), Default::default())
        .expect("starting the target")
}

/// The software controller behind nvme-sim's NVMe/TCP target: perf's random reads, then
/// `nvmectl id-ctrl` and `read`.
#[test]
fn nvme_perf_and_nvmectl_against_the_software_controllers_target() {
    let target = sim_target();
    let trid = target.transport_id();
    let out = ok(
        PERF,
        &[
            "-r", &trid, "-t", "1", "-q", "8", "-o", "4096", "-w", "randread",
        ],
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.lines().any(|l| l.starts_with("TCP (tcp:127.0.0.1:")),
        "{stdout}"
    );
    let id = text(&ok(CTL, &["id-ctrl", "-r", &trid]).stdout);
    assert!(id.contains("mdts"), "{id}");
    let out = ok(
        CTL,
        &[
            "read", "-r", &trid, "-n", "1", "-s", "0", "-c", "7", "-z", "4096",
        ],
    );
    assert_eq!(out.stdout.len(), 4096);
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Connected I/O queue 1s across the target's associations: one per nvme-perf run with a
/// single worker (which claims its lease before it makes its queue).
fn io_queues_connected(target: &nvme_host_linux::sim::TcpTarget) -> usize {
    (1..=200)
        .filter(|&cntlid| target.controller_queue(cntlid, 1).is_some())
        .count()
}

/// `-i` over NVMe/TCP against nvme-sim's target: nvme-perf as the primary, nvmectl joining
/// beside it, a lease conflict across members, a member SIGKILLed (cleaned up; its blocks
/// can be leased again at once) and a member naming another subsystem (refused), while
/// the primary keeps completing I/O; the last one out removes the group.
#[test]
fn a_shared_memory_group_over_tcp() {
    use nvme_host_linux::testkit::{wait_until, RunDir};
    use std::time::Duration;
    let target = sim_target();
    let trid = target.transport_id();
    let dir = RunDir::new("tcp-group").expect("the run directory");
    let group = "7";
    let cmd = |bin: &str, args: &[&str]| {
        let mut c = Command::new(bin);
        c.args(["-i", group, "-r", &trid])
            .args(args)
            .env("NVME_RUN_DIR", dir.path())
            .stdin(Stdio::null());
        c
    };
    let spawn = |bin: &str, args: &[&str]| {
        cmd(bin, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the tool")
    };
    let writer = |range: &str, secs: &str| {
        [
            "-t",
            secs,
            "-q",
            "8",
            "-o",
            "4096",
            "-w",
            "randwrite",
            "--lba-range",
            range,
            "--lease",
            "exclusive",
        ]
        .map(str::to_string)
    };
    let primary = spawn(PERF, &args(&writer("0:4096", "30")));
    let a = primary.id().to_string();
    wait_until("the primary writes", Duration::from_secs(10), || {
        io_queues_connected(&target) == 1
    })
    .unwrap();

    // nvmectl beside it: a secondary with an association of its own.
    let out = cmd(CTL, &["--show-group", "smart-log"]).output().unwrap();
    let err = text(&out.stderr);
    assert!(out.status.success(), "{}\n{err}", text(&out.stdout));
    assert!(
        err.contains(&format!(
            "nvmectl: shared-memory group {group} over NVMe/TCP: secondary, members (pids, each with its own association): {a} "
        )),
        "{err}"
    );
    assert!(
        text(&out.stdout).contains("temperature"),
        "{}",
        text(&out.stdout)
    );

    // A lease overlapping the primary's is refused, naming it.
    let out = cmd(PERF, &args(&writer("1000:100", "1"))).output().unwrap();
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("pid {a} (nvme-perf"))
            && err.contains("exclusive lease on LBAs 0..4096"),
        "{err}"
    );

    // Format is refused while another member runs (its queues are its association's).
    let out = cmd(CTL, &["format", "-n", "1", "--force"])
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(
        !out.status.success() && err.contains(&format!("pid {a} (nvme-perf): I/O queues")),
        "{err}"
    );

    // A member killed with SIGKILL while it holds a lease...
    let mut killed = spawn(PERF, &args(&writer("8192:1024", "30")));
    let b = killed.id().to_string();
    wait_until("the second writer writes", Duration::from_secs(10), || {
        io_queues_connected(&target) == 2
    })
    .unwrap();
    let out = cmd(CTL, &["--show-group", "id-ctrl"]).output().unwrap();
    let err = text(&out.stderr);
    assert!(err.contains(&format!(" {a} {b} ")), "{err}");
    killed.kill().unwrap();
    killed.wait().unwrap();
    // ...is cleaned up (by the primary's monitor, or by the next process to join)...
    let out = cmd(CTL, &["--show-group", "id-ctrl"]).output().unwrap();
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!(": {a} ")) && !err.contains(&format!(" {b}")),
        "{err}"
    );
    // ...and its blocks are free for a new member.
    let out = cmd(PERF, &args(&writer("8192:1024", "1")))
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(
        stdout.contains(&format!("Joined shared-memory group {group} as secondary")),
        "{stdout}"
    );

    // A member naming another subsystem is refused, saying which the group reaches.
    let other = format!(
        "{} subnqn:nqn.2014-08.org.example:other",
        trid.split(" subnqn:").next().unwrap()
    );
    let out = Command::new(CTL)
        .args(["-i", group, "-r", &other, "id-ctrl"])
        .env("NVME_RUN_DIR", dir.path())
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("shared-memory group {group} reaches 'trtype:TCP"))
            && err.contains("not 'trtype:TCP")
            && err.contains("example:other"),
        "{err}"
    );

    // A process of another build is refused (the same check as over PCIe).
    let out = cmd(CTL, &["id-ctrl"])
        .env("NVME_TEST_BUILD_ID", "another build")
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(
        !out.status.success() && err.contains("created by a different build"),
        "{err}"
    );

    // A TCP member of a group that drives a software controller is refused too.
    let sim = Command::new(PERF)
        .args([
            "-i",
            "8",
            "-r",
            "trtype:sim",
            "-t",
            "30",
            "-q",
            "1",
            "-o",
            "4096",
            "-w",
            "read",
        ])
        .env("NVME_RUN_DIR", dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(
        "the trtype:sim group is up",
        Duration::from_secs(10),
        || dir.group_dir(8).join("sim.sock").exists(),
    )
    .unwrap();
    let out = Command::new(CTL)
        .args(["-i", "8", "-r", &trid, "id-ctrl"])
        .env("NVME_RUN_DIR", dir.path())
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains(
                "group 8 drives a software controller (trtype:sim), not a controller over NVMe/TCP"
            ),
        "{err}"
    );
    let sim_pid = sim.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &sim_pid])
        .status()
        .unwrap()
        .success());
    let out = sim.wait_with_output().unwrap();
    assert!(out.status.success());

    // The primary wrote all along: stopped now, it reports its I/O and removes the group.
    let stop = Command::new("kill").args(["-INT", &a]).status().unwrap();
    assert!(stop.success());
    let out = primary.wait_with_output().unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert_tcp_row_has_iops(&stdout);
    assert!(
        !dir.group_dir(7).exists(),
        "the last member removes the group"
    );
}
