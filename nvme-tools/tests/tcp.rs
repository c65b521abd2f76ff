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

/// The software controller behind nvme-sim's NVMe/TCP target: perf's random reads, then
/// `nvmectl id-ctrl` and `read`.
#[test]
fn nvme_perf_and_nvmectl_against_the_software_controllers_target() {
    use nvme_host_linux::sim::{NamespaceConfig, SimConfig, TcpTarget};
    let cfg = SimConfig {
        namespaces: vec![NamespaceConfig {
            lba_size: 512,
            blocks: 16384,
        }],
        ..Default::default()
    };
    let target = TcpTarget::start(cfg, "127.0.0.1:0".parse().unwrap(), Default::default())
        .expect("starting the target");
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
