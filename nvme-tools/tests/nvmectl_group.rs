//! nvme-cli's operator subcommands of `nvmectl` (fw-log, get-log, set-feature, list-ns,
//! ns-descs, flush, write-zeroes, compare, dsm, admin-passthru, io-passthru), each run as a
//! secondary of a shared-memory group beside a running `nvme-perf -i N`, which keeps
//! running through all of them and ends with results and exit status 0.
//!
//! `harness = false`: the scenarios run one after another on the main thread, the parent
//! perf dies with (`PR_SET_PDEATHSIG`). All groups live under a temporary `NVME_RUN_DIR`
//! of this run, and each scenario has its own group id. The group's software controller
//! runs as its own process, so data written by one nvmectl run is there for the next.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Output, Stdio};
use std::time::{Duration, Instant};

use nvme_host_linux::testkit::{self, Outcome, Proc, RunDir};
use nvme_host_linux::{AttachOptions, Controller, Role, TransportId};

const PERF: &str = env!("CARGO_BIN_EXE_nvme-perf");
const NVMECTL: &str = env!("CARGO_BIN_EXE_nvmectl");
const BS: usize = 512;
/// I/O queues perf uses: one per namespace (two) for its one worker.
const PERF_QUEUES: usize = 2;

/// A group id of its own for a scenario: large, and different in every run.
fn fresh_group(salt: u32) -> u32 {
    2_100_000_000 + (std::process::id() % 100_000) * 8 + salt
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// One nvmectl run in `group` (`-i N -r trtype:sim`, stdin empty).
fn ctl(group: u32, args: &[&str]) -> Output {
    let g = group.to_string();
    Command::new(NVMECTL)
        .args(["-i", &g, "-r", "trtype:sim"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running nvmectl")
}

/// A run that must succeed; returns its output.
fn ok(group: u32, args: &[&str]) -> Output {
    let o = ctl(group, args);
    assert!(
        o.status.success(),
        "nvmectl {args:?}: exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        text(&o.stdout),
        text(&o.stderr)
    );
    o
}

/// A run that must fail with exit status `code`; returns its stderr.
fn fails(group: u32, args: &[&str], code: i32) -> String {
    let o = ctl(group, args);
    let e = text(&o.stderr);
    assert_eq!(o.status.code(), Some(code), "nvmectl {args:?}: {e}");
    e
}

/// A 30 s `nvme-perf -i group` random read run, once it has started, and this process
/// joined to the group to watch it.
fn perf_in_group(group: u32) -> Result<(Proc, Controller), String> {
    let g = group.to_string();
    let args = [
        "-i",
        &g,
        "-r",
        "trtype:sim nscount:2 size:16M serial:GRPCTL",
        "-q",
        "8",
        "-o",
        "4096",
        "-w",
        "randread",
        "-t",
        "30",
    ];
    let mut cmd = Command::new(PERF);
    cmd.args(args).stdin(Stdio::null()).stderr(Stdio::piped());
    let mut perf = Proc::spawn("nvme-perf -t 30", &mut cmd)?;
    perf.line("Initialization complete")?;
    let opts = AttachOptions {
        group: Some(group),
        ..AttachOptions::default()
    };
    let me = Controller::attach_with(&TransportId::parse("trtype:sim").unwrap(), &opts)
        .map_err(|e| format!("the test process joins the group: {e}"))?;
    assert_eq!(me.role(), Role::Secondary, "perf created the group");
    testkit::wait_until(
        "perf's worker has its I/O queues",
        Duration::from_secs(10),
        || me.io_queues_in_use() == PERF_QUEUES,
    )?;
    Ok((perf, me))
}

/// perf still runs, only its I/O queues are in use (nvmectl left none behind and deleted
/// none), then SIGINT ends it with results and exit status 0.
fn perf_kept_running(mut perf: Proc, me: Controller) -> Outcome {
    assert!(
        perf.running(),
        "perf ended before the nvmectl runs did: they did not run beside it"
    );
    assert_eq!(
        me.io_queues_in_use(),
        PERF_QUEUES,
        "only perf's I/O queues are in use"
    );
    drop(me);
    let kill = Command::new("kill")
        .args(["-INT", &perf.pid().to_string()])
        .status()
        .map_err(|e| format!("kill -INT: {e}"))?;
    assert!(kill.success(), "kill -INT {}", perf.pid());
    let e = perf.finish_by(Instant::now() + Duration::from_secs(20))?;
    assert_eq!(e.code, Some(0), "{}\n{}", e.stdout, e.stderr);
    assert!(
        e.stdout.lines().any(|l| l.starts_with("Total ")),
        "perf's table:\n{}",
        e.stdout
    );
    assert!(!e.stderr.contains("error"), "{}", e.stderr);
    Ok(())
}

/// A file of this run's temporary directory holding `data`.
fn file(name: &str, data: &[u8]) -> PathBuf {
    let dir = PathBuf::from(std::env::var("NVME_RUN_DIR").expect("set in main"));
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Blocks `lba..lba + n` of namespace 1, read by nvmectl.
fn read_blocks(group: u32, lba: u64, n: usize) -> Vec<u8> {
    let (l, c) = (lba.to_string(), (n - 1).to_string());
    ok(group, &["read", "-s", &l, "-c", &c]).stdout
}

/// flush, write-zeroes, compare, dsm and io-passthru on the group's controller.
fn data_commands_beside_perf() -> Outcome {
    let group = fresh_group(1);
    let (perf, me) = perf_in_group(group)?;
    // 8 blocks of a pattern at LBA 100.
    let pattern: Vec<u8> = (0..8 * BS).map(|i| (i * 7 % 251) as u8 + 1).collect();
    let pf = file("pattern.bin", &pattern);
    ok(group, &["write", "-s", "100", "-c", "7", "-d", s(&pf)]);

    // compare: the same data matches; one byte off is a Compare Failure, exit status 1.
    let o = ok(group, &["compare", "-s", "100", "-c", "7", "-d", s(&pf)]);
    assert!(
        text(&o.stderr).contains("compare: Success"),
        "{}",
        text(&o.stderr)
    );
    let mut other = pattern.clone();
    other[5 * BS + 17] ^= 0xff;
    let of = file("other.bin", &other);
    let e = fails(group, &["compare", "-s", "100", "-c", "7", "-d", s(&of)], 1);
    assert!(
        e.contains("COMPARE: blocks 100..108 of namespace 1 differ from")
            && e.contains("NVMe status: Compare Failure: The command failed due to a miscompare during a Compare command(0x4285)"),
        "{e}"
    );
    // The blocks are unchanged by the compare.
    assert_eq!(read_blocks(group, 100, 8), pattern);

    // write-zeroes of blocks 102-103 (-c is 0's based), with DEAC.
    let o = ok(group, &["write-zeroes", "-s", "102", "-c", "1", "--deac"]);
    assert_eq!(text(&o.stdout), "NVME Write Zeroes Success\n");
    let mut want = pattern.clone();
    want[2 * BS..4 * BS].fill(0);
    assert_eq!(read_blocks(group, 100, 8), want, "write-zeroes");
    // Out of range: refused before anything is sent.
    let e = fails(group, &["write-zeroes", "-s", "32767", "-c", "1"], 1);
    assert!(
        e.contains("LBA range 32767..32769 is out of range for namespace 1 (32768 blocks)"),
        "{e}"
    );

    // dsm --ad of block 104 and blocks 106-107 (-b counts are 1's based, as nvme-cli).
    let o = ok(group, &["dsm", "--ad", "-s", "104,106", "-b", "1,2"]);
    assert_eq!(text(&o.stdout), "NVMe DSM: success\n");
    want[4 * BS..5 * BS].fill(0);
    want[6 * BS..8 * BS].fill(0);
    assert_eq!(read_blocks(group, 100, 8), want, "dsm deallocate");
    let e = fails(group, &["dsm", "--ad", "-s", "104,40000", "-b", "1,1"], 1);
    assert!(
        e.contains("LBA range 40000..40001 is out of range") && e.contains("nothing was sent"),
        "{e}"
    );
    assert_eq!(
        read_blocks(group, 100, 8),
        want,
        "a refused dsm changes nothing"
    );

    // flush.
    let o = ok(group, &["flush", "-n", "1"]);
    assert_eq!(text(&o.stdout), "NVMe Flush: success\n");

    // io-passthru Read (02h) of block 101, raw: the pattern's second block.
    let o = ok(
        group,
        &[
            "io-passthru",
            "-o",
            "2",
            "-n",
            "1",
            "--cdw10",
            "101",
            "-l",
            "512",
            "--read",
            "-b",
        ],
    );
    assert_eq!(o.stdout, pattern[BS..2 * BS], "io-passthru read");
    assert_eq!(
        text(&o.stderr),
        "IO Command Read is Success and result: 0x00000000\n"
    );
    perf_kept_running(perf, me)
}

/// fw-log, list-ns, ns-descs, get-log, set-feature and admin-passthru on the group's
/// controller.
fn admin_commands_beside_perf() -> Outcome {
    let group = fresh_group(2);
    let (perf, me) = perf_in_group(group)?;

    // fw-log: text, JSON and raw; get-log of LID 03h gives the same bytes.
    let t = text(&ok(group, &["fw-log"]).stdout);
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(
        lines[..2],
        ["Firmware Log for device:sim", "afi  : 0x1"],
        "{t}"
    );
    assert!(
        lines[2].starts_with("frs1 : 0x") && lines[2].ends_with(')'),
        "{t}"
    );
    let j = text(&ok(group, &["fw-log", "-o", "json"]).stdout);
    let v: serde_json::Value = serde_json::from_str(&j).expect("valid JSON");
    assert_eq!(v["sim"]["Active Firmware Slot (afi)"], 1, "{j}");
    let raw = ok(group, &["fw-log", "-b"]).stdout;
    assert_eq!(raw.len(), 512);
    let log = ok(group, &["get-log", "--log-id", "3", "-l", "512", "-b"]).stdout;
    assert_eq!(log, raw, "get-log 3 is the firmware slot log");
    // get-log as a hex dump: nvme-cli's header, then 32 rows of 16 bytes.
    let h = text(&ok(group, &["get-log", "--log-id", "2", "-l", "512"]).stdout);
    assert!(
        h.starts_with("Device:sim log-id:2 namespace-id:0xffffffff\n       0  1  2"),
        "{h}"
    );
    assert_eq!(h.lines().filter(|l| l.contains(": ")).count(), 32, "{h}");
    let e = fails(group, &["get-log", "--log-id", "2", "-l", "10"], 2);
    assert!(e.contains("must be a positive multiple of 4"), "{e}");

    // list-ns: both namespaces; --all is refused (no Namespace Management).
    let o = ok(group, &["list-ns"]);
    assert_eq!(text(&o.stdout), "[   0]:0x1\n[   1]:0x2\n");
    let o = ok(group, &["list-ns", "-n", "2", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&text(&o.stdout)).unwrap();
    assert_eq!(v["nsid_list"], serde_json::json!([{"nsid": 2}]));
    let e = fails(group, &["list-ns", "--all"], 1);
    assert!(
        e.contains("Identify CNS 10h") && e.contains("without --all"),
        "{e}"
    );

    // ns-descs: the EUI64 and NGUID Identify Namespace reports.
    let d = text(&ok(group, &["ns-descs", "-n", "2"]).stdout);
    let id: serde_json::Value = serde_json::from_str(&text(
        &ok(group, &["id-ns", "-n", "2", "-o", "json"]).stdout,
    ))
    .unwrap();
    let (eui, nguid) = (id["eui64"].as_str().unwrap(), id["nguid"].as_str().unwrap());
    assert_eq!(
        d,
        format!(
            "NVME Namespace Identification Descriptors NS 2:\neui64   : {eui}\nnguid   : {nguid}\n"
        )
    );

    // set-feature / get-feature round trip of the Temperature Threshold, then back.
    let o = ok(group, &["set-feature", "-f", "4", "-v", "350"]);
    assert_eq!(
        text(&o.stdout),
        "set-feature:0x04 (Temperature Threshold), value:0x0000015e, cdw12:00000000, save:0\n"
    );
    let g = text(&ok(group, &["get-feature", "-f", "4"]).stdout);
    assert_eq!(
        g,
        "get-feature:0x04 (Temperature Threshold), Current value:0x0000015e\n"
    );
    let e = fails(group, &["set-feature", "-f", "4", "-v", "360", "-s"], 1);
    assert!(
        e.contains("cannot save feature 0x04 (Temperature Threshold)")
            && e.contains("without -s/--save"),
        "{e}"
    );
    ok(group, &["set-feature", "-f", "4", "-v", "343"]);
    let g = text(&ok(group, &["get-feature", "-f", "4"]).stdout);
    assert!(g.ends_with("Current value:0x00000157\n"), "{g}");

    // admin-passthru of Identify Controller: id-ctrl's bytes.
    const IDENTIFY_PASSTHRU: &[&str] = &[
        "admin-passthru",
        "-o",
        "6",
        "--cdw10",
        "1",
        "-l",
        "4096",
        "--read",
    ];
    let o = ok(group, &[IDENTIFY_PASSTHRU, &["-b"]].concat());
    assert_eq!(
        text(&o.stderr),
        "Admin Command Identify is Success and result: 0x00000000\n"
    );
    let id_ctrl = ok(group, &["id-ctrl", "-b"]).stdout;
    assert_eq!(id_ctrl.len(), 4096);
    assert_eq!(o.stdout, id_ctrl, "admin-passthru Identify = id-ctrl -b");
    assert_eq!(&id_ctrl[4..10], b"GRPCTL", "perf's controller");
    let o = ok(group, IDENTIFY_PASSTHRU);
    assert!(
        text(&o.stdout).contains("\n0000: fe ff fe ff"),
        "{}",
        text(&o.stdout)
    );
    // Delete I/O SQ of perf's queue (id 1): refused, naming why; perf's queue stays.
    let e = fails(group, &["admin-passthru", "-o", "0", "--cdw10", "1"], 1);
    assert!(
        e.contains("admin passthru of opcode 0x00 refused: the driver owns the I/O queues"),
        "{e}"
    );
    let e = fails(group, &["admin-passthru", "-o", "0xc"], 1);
    assert!(e.contains("Asynchronous Event Requests"), "{e}");
    perf_kept_running(perf, me)
}

fn main() -> ExitCode {
    // Before any thread exists: every child and this process's own attaches use it.
    let dir = RunDir::new("nvmectl-group").expect("the run directory");
    std::env::set_var("NVME_RUN_DIR", dir.path());
    testkit::run_scenarios(
        "nvmectl_group",
        &[
            ("data_commands_beside_perf", data_commands_beside_perf),
            ("admin_commands_beside_perf", admin_commands_beside_perf),
        ],
    )
}
