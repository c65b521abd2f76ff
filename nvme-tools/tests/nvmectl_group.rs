//! nvme-cli's operator subcommands of `nvmectl` (fw-log, get-log, set-feature, list-ns,
//! ns-descs, flush, write-zeroes, compare, dsm, admin-passthru, io-passthru,
//! device-self-test, self-test-log, create-ns, delete-ns, attach-ns, detach-ns), each run
//! as a secondary of a shared-memory group beside a running `nvme-perf -i N`, which keeps
//! running through all of them and ends with results and exit status 0; and `format`,
//! which is refused beside perf's I/O queues and runs beside an application that has none
//! (this test process), which then sees the new geometry, and a perf started after it.
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
    perf_in_group_on(
        group,
        "trtype:sim nscount:2 size:16M serial:GRPCTL",
        PERF_QUEUES,
    )
}

/// [`perf_in_group`] with perf's transport id `trid`, once its worker has `queues` I/O
/// queues.
fn perf_in_group_on(group: u32, trid: &str, queues: usize) -> Result<(Proc, Controller), String> {
    let g = group.to_string();
    let args = [
        "-i", &g, "-r", trid, "-q", "8", "-o", "4096", "-w", "randread", "-t", "30",
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
        || me.io_queues_in_use() == queues,
    )?;
    Ok((perf, me))
}

/// perf still runs, only its I/O queues are in use (nvmectl left none behind and deleted
/// none), then SIGINT ends it with results and exit status 0.
fn perf_kept_running(perf: Proc, me: Controller) -> Outcome {
    perf_kept_running_with(perf, me, PERF_QUEUES)
}

/// [`perf_kept_running`] of a perf with `queues` I/O queues.
fn perf_kept_running_with(mut perf: Proc, me: Controller, queues: usize) -> Outcome {
    assert!(
        perf.running(),
        "perf ended before the nvmectl runs did: they did not run beside it"
    );
    assert_eq!(
        me.io_queues_in_use(),
        queues,
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

    // list-ns: both namespaces, active and (--all, Namespace Management) allocated.
    let o = ok(group, &["list-ns"]);
    assert_eq!(text(&o.stdout), "[   0]:0x1\n[   1]:0x2\n");
    let o = ok(group, &["list-ns", "-n", "2", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&text(&o.stdout)).unwrap();
    assert_eq!(v["nsid_list"], serde_json::json!([{"nsid": 2}]));
    let o = ok(group, &["list-ns", "--all"]);
    assert_eq!(text(&o.stdout), "[   0]:0x1\n[   1]:0x2\n");

    // ns-descs: the EUI64 and NGUID Identify Namespace reports.
    let d = text(&ok(group, &["ns-descs", "-n", "2"]).stdout);
    let id = id_ns_json(group, 2);
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

/// `id-ns -n nsid -o json`.
fn id_ns_json(group: u32, nsid: u32) -> serde_json::Value {
    let n = nsid.to_string();
    let o = ok(group, &["id-ns", "-n", &n, "-o", "json"]);
    serde_json::from_str(&text(&o.stdout)).expect("valid JSON")
}

/// The Device Self-test log as JSON.
fn self_test_json(group: u32) -> serde_json::Value {
    let o = ok(group, &["self-test-log", "-o", "json"]);
    serde_json::from_str(&text(&o.stdout)).expect("valid JSON")
}

/// device-self-test and self-test-log, then detach-ns, delete-ns, create-ns and attach-ns
/// of namespace 3 beside a perf that uses namespace 1; format is refused, naming perf.
fn namespace_commands_beside_perf() -> Outcome {
    let group = fresh_group(3);
    let (perf, me) = perf_in_group_on(group, "trtype:sim nscount:3 size:8M serial:GRPNS ns:1", 1)?;

    // No test yet: twenty unused entries.
    let t = text(&ok(group, &["self-test-log"]).stdout);
    assert!(
        t.starts_with("Device Self Test Log for NVME device:sim\nCurrent operation  : 0\nCurrent Completion : 0%\nSelf Test Result[0]:\n  Operation Result             : 0xf\n"),
        "{t}"
    );
    assert_eq!(
        t.matches("Operation Result             : 0xf").count(),
        20,
        "{t}"
    );
    let o = ok(group, &["device-self-test"]);
    assert_eq!(text(&o.stdout), "no self test running\n");
    // A short test, waited for: nvme-cli's lines and progress bar.
    let o = ok(group, &["device-self-test", "-s", "1", "-n", "1", "--wait"]);
    let out = text(&o.stdout);
    assert!(
        out.starts_with("Short Device self-test started\nWaiting for self test completion...\n")
            && out.ends_with(&format!("\r[{}] 100%\n", "=".repeat(50))),
        "{out:?}"
    );
    let v = self_test_json(group);
    assert_eq!(v["Current Device Self-Test Operation"], 0, "{v}");
    let r = &v["List of Valid Reports"][0];
    assert_eq!(
        (&r["Self test result"], &r["Self test code"]),
        (&0.into(), &1.into()),
        "{v}"
    );
    assert_eq!(r["Namespace Identifier"], 1, "{v}");
    // An extended test, aborted; a second start while it runs is refused by the controller.
    let o = ok(group, &["device-self-test", "-s", "2"]);
    assert_eq!(text(&o.stdout), "Extended Device self-test started\n");
    let e = fails(group, &["device-self-test", "-s", "1"], 1);
    assert!(e.contains("Device Self-test in Progress"), "{e}");
    let o = ok(group, &["device-self-test", "-s", "15"]);
    assert_eq!(text(&o.stdout), "Aborting device self-test operation\n");
    let v = self_test_json(group);
    let r = &v["List of Valid Reports"];
    assert_eq!(
        (&r[0]["Self test result"], &r[0]["Self test code"]),
        (&1.into(), &2.into()),
        "{v}"
    );
    assert_eq!(r[1]["Self test code"], 1, "the short test moved down: {v}");
    assert!(
        r[0].get("Namespace Identifier").is_none(),
        "all namespaces: {v}"
    );

    // format is refused while perf has its I/O queue, naming it; nothing changes.
    let e = fails(group, &["format", "-n", "3", "--lbaf", "1", "--force"], 1);
    assert!(
        e.contains("refused")
            && e.contains(&format!("pid {} (nvme-perf): I/O queue ids 1", perf.pid())),
        "{e}"
    );
    let id = id_ns_json(group, 3);
    assert_eq!(id["flbas"], 0, "{id}");

    // Namespace 3: detach, delete, create (4 KiB blocks), attach.
    assert_eq!(
        text(&ok(group, &["detach-ns", "-n", "3"]).stdout),
        "detach-ns: Success, nsid:3\n"
    );
    assert_eq!(
        text(&ok(group, &["list-ns"]).stdout),
        "[   0]:0x1\n[   1]:0x2\n"
    );
    assert_eq!(
        text(&ok(group, &["list-ns", "--all"]).stdout),
        "[   0]:0x1\n[   1]:0x2\n[   2]:0x3\n"
    );
    let e = fails(group, &["detach-ns", "-n", "3"], 1);
    assert!(e.contains("Namespace Not Attached"), "{e}");
    assert_eq!(
        text(&ok(group, &["delete-ns", "-n", "3"]).stdout),
        "delete-ns: Success, deleted nsid:3\n"
    );
    assert_eq!(
        text(&ok(group, &["list-ns", "--all"]).stdout),
        "[   0]:0x1\n[   1]:0x2\n"
    );
    let e = fails(
        group,
        &["create-ns", "-s", "4096", "-c", "4096", "-b", "4096"],
        1,
    );
    assert!(e.contains("Namespace Insufficient Capacity"), "{e}");
    let e = fails(group, &["create-ns", "-s", "1024", "-c", "1024"], 2);
    assert!(e.contains("specify FLBAS directly"), "{e}");
    let o = ok(
        group,
        &["create-ns", "-s", "1024", "-c", "1024", "-b", "4096"],
    );
    assert_eq!(text(&o.stdout), "create-ns: Success, created nsid:3\n");
    assert_eq!(
        text(&ok(group, &["attach-ns", "-n", "3"]).stdout),
        "attach-ns: Success, nsid:3\n"
    );
    let id = id_ns_json(group, 3);
    assert_eq!(
        (&id["nsze"], &id["flbas"]),
        (&1024.into(), &1.into()),
        "{id}"
    );
    // The application's process sees the change through the controller's notice.
    testkit::wait_until(
        "the group member rescans after the Namespace Attribute Changed notice",
        Duration::from_secs(10),
        || {
            me.async_events();
            me.namespace(3)
                .is_ok_and(|n| n.block_size() == 4096 && n.blocks() == 1024)
        },
    )?;
    // Data written to the new namespace reads back.
    let pf = file("ns3.bin", &[0x3c; 4096]);
    ok(
        group,
        &["write", "-n", "3", "-s", "1023", "-c", "0", "-d", s(&pf)],
    );
    assert_eq!(
        ok(group, &["read", "-n", "3", "-s", "1023", "-c", "0"]).stdout,
        vec![0x3c; 4096]
    );
    perf_kept_running_with(perf, me, 1)
}

/// format as a secondary beside an application without I/O queues (this process): the
/// confirmation, the new LBA format, erased data; the application rescans and sees the new
/// geometry, and a perf started afterwards runs on it.
fn format_in_a_group() -> Outcome {
    let group = fresh_group(4);
    let opts = AttachOptions {
        group: Some(group),
        ..AttachOptions::default()
    };
    let trid = TransportId::parse("trtype:sim nscount:2 size:16M serial:GRPFMT").unwrap();
    let app = Controller::attach_with(&trid, &opts).map_err(|e| format!("attach: {e}"))?;
    assert_eq!(app.role(), Role::Primary);
    let pf = file("fmt.bin", &[0x5a; 8 * BS]);
    ok(
        group,
        &["write", "-n", "2", "-s", "0", "-c", "7", "-d", s(&pf)],
    );

    // Without --force and with no terminal to ask on: refused, nothing sent.
    let e = fails(group, &["format", "-n", "2", "--lbaf", "1"], 1);
    assert!(
        e.contains("give --force to confirm") && e.contains("nothing was sent"),
        "{e}"
    );
    assert_eq!(
        ok(group, &["read", "-n", "2", "-s", "0", "-c", "0"]).stdout,
        vec![0x5a; BS]
    );
    let e = fails(
        group,
        &["format", "-n", "2", "--lbaf", "1", "-b", "4096", "--force"],
        2,
    );
    assert!(e.contains("both LBAF and Block Size"), "{e}");
    let e = fails(group, &["format", "-n", "2", "-b", "8192", "--force"], 1);
    assert!(
        e.contains("LBAF corresponding to given block size 8192 not found"),
        "{e}"
    );

    let o = ok(group, &["format", "-n", "2", "-b", "4096", "--force"]);
    assert_eq!(text(&o.stdout), "Success formatting namespace:2\n");
    let id = id_ns_json(group, 2);
    assert_eq!(
        (&id["flbas"], &id["nsze"]),
        (&1.into(), &4096.into()),
        "{id}"
    );
    assert_eq!(
        ok(group, &["read", "-n", "2", "-s", "0", "-c", "0"]).stdout,
        vec![0; 4096],
        "the format erased the namespace"
    );
    // The application still has the old geometry until it rescans.
    assert_eq!(
        app.namespace(2).map(|n| n.block_size()).ok(),
        Some(BS as u32)
    );
    assert!(app.rescan_namespaces().map_err(|e| e.to_string())?);
    assert_eq!(
        app.namespace(2).map(|n| (n.block_size(), n.blocks())).ok(),
        Some((4096, 4096))
    );

    // A perf started now uses 4 KiB blocks on namespace 2 and ends cleanly.
    let g = group.to_string();
    let out = Command::new(PERF)
        .args([
            "-i",
            &g,
            "-r",
            "trtype:sim ns:2",
            "-q",
            "4",
            "-o",
            "4096",
            "-w",
            "randrw",
            "-M",
            "50",
            "-t",
            "1",
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running perf: {e}"))?;
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).lines().any(|l| l.starts_with("Total ")),
        "{}",
        text(&out.stdout)
    );
    // Back to 512-byte blocks (--reset: the controller is reset for the group afterwards).
    let o = ok(
        group,
        &["format", "-n", "2", "--lbaf", "0", "--force", "--reset"],
    );
    assert_eq!(text(&o.stdout), "Success formatting namespace:2\n");
    assert!(app.rescan_namespaces().map_err(|e| e.to_string())?);
    assert_eq!(
        app.namespace(2).map(|n| n.block_size()).ok(),
        Some(BS as u32)
    );
    assert_eq!(
        app.role(),
        Role::Primary,
        "the application is still the group's primary"
    );
    Ok(())
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
            (
                "namespace_commands_beside_perf",
                namespace_commands_beside_perf,
            ),
            ("format_in_a_group", format_in_a_group),
        ],
    )
}
