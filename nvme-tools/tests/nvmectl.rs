//! Runs the built `nvmectl` binary against the software controller. Each invocation starts
//! its own in-process controller, so data does not persist between runs: the write / read
//! round trip is tested in the library (`ctl::tests`).

use std::io::Write;
use std::process::{Command, Output, Stdio};

const TRID: &str = "trtype:sim nscount:2 size:16M serial:CTL123";

fn nvmectl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nvmectl"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running nvmectl")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs a command that must succeed and returns its stdout.
fn ok(args: &[&str]) -> String {
    let out = nvmectl(args);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "{args:?}: {stdout}\n{}",
        text(&out.stderr)
    );
    stdout
}

/// Runs a command that must fail with `code` and returns its stderr.
fn fails(args: &[&str], code: i32) -> String {
    let out = nvmectl(args);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    stderr
}

#[test]
fn id_ctrl_prints_nvme_cli_fields() {
    let out = ok(&["id-ctrl", "-r", TRID]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "NVME Identify Controller:");
    assert!(
        lines.iter().any(|l| l.starts_with("sn        : CTL123")),
        "{out}"
    );
    assert!(lines.contains(&"nn        : 2"), "{out}");
    assert!(lines.contains(&"sqes      : 0x66"), "{out}");
    let json = ok(&["id-ctrl", "-r", TRID, "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    assert_eq!(v["nn"], 2);
    assert_eq!(v["sn"].as_str().map(str::trim_end), Some("CTL123"));
}

#[test]
fn list_shows_both_namespaces() {
    let out = ok(&["list", "-r", TRID]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("Node "), "{out}");
    let rows: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("sim "))
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert!(
        rows[0].contains("CTL123") && rows[1].contains(" 2 "),
        "{out}"
    );
    assert!(rows[0].contains("16.78  MB /  16.78  MB"), "{out}");
}

#[test]
fn smart_log_and_get_feature() {
    let out = ok(&["smart-log", "-r", TRID]);
    assert!(
        out.starts_with("Smart Log for NVME device:sim namespace-id:ffffffff\n"),
        "{out}"
    );
    for field in [
        "critical_warning",
        "temperature",
        "available_spare",
        "data_units_read",
        "host_read_commands",
        "power_cycles",
    ] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(field) && l.contains(": ")),
            "{field} missing:\n{out}"
        );
    }
    let out = ok(&["get-feature", "-r", TRID, "-f", "7", "-H"]);
    assert!(
        out.starts_with("get-feature:0x07 (Number of Queues), Current value:0x"),
        "{out}"
    );
    assert!(out.contains("(NSQA): "), "{out}");
}

#[test]
fn identify_summarises_controller_and_namespaces() {
    let out = ok(&["identify", "-r", TRID]);
    for l in [
        "Controller Capabilities/Features",
        "Admin Command Set Attributes",
        "NVM Command Set Attributes",
        "Health Information",
        "Number of Queues",
    ] {
        assert!(out.lines().any(|x| x == l), "{l} missing:\n{out}");
    }
    assert_eq!(out.matches("Namespace ID:").count(), 2, "{out}");
}

#[test]
fn read_writes_blocks_to_stdout() {
    let out = nvmectl(&[
        "read", "-r", TRID, "-n", "2", "-s", "8", "-c", "1", "-z", "1024",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout, vec![0u8; 1024]);
    assert!(text(&out.stderr).contains("read: Success"));
}

#[test]
fn write_takes_stdin() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nvmectl"))
        .args(["write", "-r", TRID, "-s", "1", "-c", "0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running nvmectl");
    child.stdin.take().unwrap().write_all(&[0xa5; 512]).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn errors_name_the_problem() {
    let e = fails(&["id-ctrl", "-r", "trtype:rdma"], 2);
    assert!(e.contains("unknown trtype 'rdma'"), "{e}");
    let e = fails(&["id-ctrl"], 2);
    assert!(e.contains("-r/--transport is required"), "{e}");
    let e = fails(&["id-ns", "-r", TRID, "-n", "9"], 1);
    assert!(e.contains("namespace 9 is not an active namespace"), "{e}");
    let e = fails(&["read", "-r", TRID, "-s", "32767", "-c", "1"], 1);
    assert!(
        e.contains("LBA range 32767..32769 is out of range for namespace 1 (32768 blocks)"),
        "{e}"
    );
    let e = fails(&["read", "-r", TRID, "-c", "1", "-z", "512"], 2);
    assert!(e.contains("0's based"), "{e}");
}
