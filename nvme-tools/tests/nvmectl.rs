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
        "Data Units Read",
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

/// How a bounded run ended.
struct Bounded {
    code: Option<i32>,
    /// Peak resident memory of the child (its `ru_maxrss`), kB.
    max_rss_kb: i64,
    stderr: String,
    took: std::time::Duration,
}

/// The resident memory of a running process, kB (`VmRSS`), 0 once it is gone.
fn rss_kb(pid: u32) -> i64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Runs nvmectl with `stdin` held open (never written, never closed) until it exits, at
/// most `bound`, and kills it as soon as its resident memory passes `rss_limit_kb` (so a
/// run that reads without bound fails the test instead of filling the machine). The child
/// is reaped with `wait4`, which gives its own peak resident memory.
// Reaped with wait4 (not Child::wait), which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn run_bounded(args: &[&str], bound: std::time::Duration, rss_limit_kb: i64) -> Bounded {
    use std::io::Read;
    let started = std::time::Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_nvmectl"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running nvmectl");
    let _stdin = child.stdin.take();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let pid = child.id() as libc::pid_t;
    loop {
        let mut status = 0;
        // SAFETY: an all-zero rusage is valid; wait4 writes only into `status` and `usage`.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: as above; `pid` is our unreaped child.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        assert!(r >= 0, "wait4: {}", std::io::Error::last_os_error());
        if r == pid {
            return Bounded {
                code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
                max_rss_kb: usage.ru_maxrss,
                stderr: reader.join().unwrap(),
                took: started.elapsed(),
            };
        }
        let rss = rss_kb(child.id());
        let verdict = if rss > rss_limit_kb {
            Some(format!("resident memory reached {rss} kB"))
        } else if started.elapsed() > bound {
            Some(format!("still running after {} ms", bound.as_millis()))
        } else {
            None
        };
        if let Some(why) = verdict {
            let _ = child.kill();
            let _ = child.wait();
            panic!("nvmectl {args:?}: {why}");
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Resident memory nvmectl may reach for a small write: the program, the software
/// controller's DMA buffer and a chunk, far below anything that copies its input.
const SMALL_RSS_KB: i64 = 48 * 1024;

#[test]
fn write_from_dev_zero_reads_only_what_it_needs() {
    let b = run_bounded(
        &[
            "write",
            "-r",
            TRID,
            "-n",
            "2",
            "-s",
            "16",
            "-c",
            "255",
            "-z",
            "131072",
            "-d",
            "/dev/zero",
        ],
        std::time::Duration::from_secs(20),
        SMALL_RSS_KB,
    );
    assert_eq!(b.code, Some(0), "{}", b.stderr);
    assert!(b.stderr.contains("write: Success"), "{}", b.stderr);
    assert!(
        b.max_rss_kb < SMALL_RSS_KB,
        "peak resident memory {} kB for a 128 KiB write",
        b.max_rss_kb
    );
    println!(
        "write of 128 KiB from /dev/zero: {} ms, peak {} kB",
        b.took.as_millis(),
        b.max_rss_kb
    );
}

#[test]
fn write_out_of_range_fails_before_reading_its_input() {
    // stdin stays open and empty: a write that read its input first would wait forever.
    let b = run_bounded(
        &["write", "-r", TRID, "-s", "32768", "-c", "0"],
        std::time::Duration::from_secs(20),
        SMALL_RSS_KB,
    );
    assert_eq!(b.code, Some(1), "{}", b.stderr);
    assert!(
        b.stderr.contains(
            "-s/--start-block 32768 -c/--block-count 0: LBA range 32768..32769 is out of range for namespace 1 (32768 blocks)"
        ),
        "{}",
        b.stderr
    );
    // The same with a file that never ends.
    let b = run_bounded(
        &[
            "write",
            "-r",
            TRID,
            "-n",
            "2",
            "-s",
            "32760",
            "-c",
            "15",
            "-d",
            "/dev/zero",
        ],
        std::time::Duration::from_secs(20),
        SMALL_RSS_KB,
    );
    assert_eq!(b.code, Some(1), "{}", b.stderr);
    assert!(
        b.stderr
            .contains("LBA range 32760..32776 is out of range for namespace 2 (32768 blocks)"),
        "{}",
        b.stderr
    );
}

#[test]
fn write_refuses_a_short_file_before_writing() {
    let dir = std::env::temp_dir().join(format!("nvmectl-short-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("short.bin");
    std::fs::write(&f, [0x5a; 1000]).unwrap();
    let e = fails(
        &["write", "-r", TRID, "-c", "1", "-d", f.to_str().unwrap()],
        1,
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        e.contains("has 1000 bytes, fewer than the 1024 bytes to write (2 block(s) of 512 bytes); nothing was written"),
        "{e}"
    );
}

/// A local TCP port with nothing listening on it (bound, then released).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a port");
    l.local_addr().unwrap().port()
}

#[test]
fn discover_and_tcp_errors_name_the_problem() {
    let trid = format!(
        "trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{}",
        closed_port()
    );
    let e = fails(&["discover", "-r", &trid], 1);
    assert!(e.contains("connection refused"), "{e}");
    let e = fails(&["id-ctrl", "-r", &trid], 1);
    assert!(e.contains("connection refused"), "{e}");
    let e = fails(&["discover", "-r", TRID], 2);
    assert!(
        e.contains("discover needs an NVMe/TCP discovery controller"),
        "{e}"
    );
    let e = fails(&["discover", "-r", "trtype:TCP traddr:10.0.0.300"], 2);
    assert!(e.contains("is not an IP address"), "{e}");
    // Every subcommand attaches over TCP (through `Controller`): the same error.
    let e = fails(&["smart-log", "-r", &format!("{trid} subnqn:nqn.x:y")], 1);
    assert!(e.contains("connection refused"), "{e}");
}
