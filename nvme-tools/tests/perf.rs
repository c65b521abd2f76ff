//! Runs the built `nvme-perf` binary against the software controller.

use std::process::{Command, Output};

fn perf(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nvme-perf"))
        .args(args)
        .output()
        .expect("running nvme-perf")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The numbers after the `:` of a table line.
fn columns(line: &str) -> Vec<f64> {
    let (_, numbers) = line.rsplit_once(':').expect("a table line has a colon");
    numbers
        .split_whitespace()
        .map(|n| n.parse().expect("a number"))
        .collect()
}

#[test]
fn randrw_prints_spdks_table() {
    let out = perf(&[
        "-r",
        "trtype:sim size:64M",
        "-t",
        "1",
        "-q",
        "8",
        "-o",
        "4096",
        "-w",
        "randrw",
        "-M",
        "70",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "Initializing NVMe Controllers");
    assert!(
        lines[1].starts_with("Attached to NVMe Controller at sim ["),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].starts_with("Associating SIM (sim) NSID 1 with lcore "),
        "{}",
        lines[2]
    );
    assert_eq!(lines[3], "Initialization complete. Launching workers.");
    // Not a terminal: no per-second lines.
    assert_eq!(
        lines[4],
        "========================================================"
    );
    assert_eq!(lines[5].trim(), "Latency(us)");
    assert!(
        lines[6].starts_with("Device Information")
            && lines[6].ends_with("IOPS      MiB/s    Average        min        max")
    );
    assert!(
        lines[7].starts_with("SIM (sim) NSID 1 from core "),
        "{}",
        lines[7]
    );
    assert_eq!(
        lines[8],
        "========================================================"
    );
    assert!(lines[9].starts_with("Total "), "{}", lines[9]);
    let row = columns(lines[7]);
    let total = columns(lines[9]);
    assert_eq!(row.len(), 5);
    assert_eq!(row, total, "one row: the total is the row");
    let [iops, mib_s, avg, min, max] = total[..] else {
        unreachable!()
    };
    assert!(iops > 0.0, "{stdout}");
    assert!((mib_s - iops * 4096.0 / 1048576.0).abs() < 0.02, "{stdout}");
    assert!(min > 0.0 && min <= avg && avg <= max, "{stdout}");
}

#[test]
fn json_output_and_number_ios() {
    let out = perf(&[
        "-r",
        "trtype:sim size:64M",
        "-t",
        "10",
        "-q",
        "8",
        "-o",
        "4k",
        "-w",
        "randread",
        "-d",
        "1000",
        "-L",
        "--json",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    // The start-up lines go to stderr: stdout is only the JSON.
    assert!(text(&out.stderr).contains("Initialization complete. Launching workers."));
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("valid JSON");
    assert_eq!(v["io_pattern"], "randread");
    assert_eq!(v["io_size"], 4096);
    let dev = &v["devices"][0];
    assert_eq!(dev["name"], "SIM (sim) NSID 1");
    assert_eq!(dev["ios"], 1000, "-d 1000 stops after exactly 1000 I/Os");
    assert_eq!(dev["reads"], 1000);
    assert_eq!(dev["errors"], 0);
    assert!(
        dev["elapsed_s"].as_f64().unwrap() < 5.0,
        "-d ends the run before -t"
    );
    assert!(dev["iops"].as_f64().unwrap() > 0.0);
    let p = dev["percentiles_us"]
        .as_array()
        .expect("-L adds percentiles");
    assert_eq!(p.len(), 15);
    assert_eq!(p[3]["percentile"].as_f64(), Some(50.0));
    assert_eq!(v["total"]["ios"], 1000);
    assert!(v["total"]["latency_us"]["min"].as_f64().unwrap() > 0.0);
}

fn fails_with(args: &[&str], message: &str) {
    let out = perf(args);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(
        stderr.contains(message),
        "{args:?}: expected '{message}' in:\n{stderr}"
    );
}

#[test]
fn errors_say_what_is_wrong() {
    let base = ["-q", "1", "-t", "1", "-r", "trtype:sim size:16M"];
    let with = |extra: &[&'static str]| -> Vec<&str> {
        base.iter().copied().chain(extra.iter().copied()).collect()
    };
    fails_with(
        &with(&["-o", "4k", "-w", "randrw"]),
        "-w randrw needs -M/--rwmixread",
    );
    fails_with(
        &with(&["-o", "4k", "-w", "read", "-c", "0x10000000"]),
        "names core 28, which does not exist",
    );
    fails_with(
        &[
            "-q",
            "1",
            "-t",
            "1",
            "-o",
            "512",
            "-w",
            "read",
            "-r",
            "trtype:sim size:16M lbasize:4096",
        ],
        "I/O size 512 is not a multiple of the 4096-byte block size of SIM (sim) NSID 1",
    );
    fails_with(
        &["-q", "1", "-t", "1", "-o", "4k", "-w", "read"],
        "pass -r 'trtype:sim'",
    );
    fails_with(
        &with(&["-o", "4k", "-w", "read", "-r", "trtype:sim ns:3"]),
        "namespace 3 is not an active namespace of sim",
    );
    // Usage errors come from clap, with exit code 2.
    let out = perf(&[
        "-q",
        "1",
        "-t",
        "1",
        "-o",
        "4q",
        "-w",
        "read",
        "-r",
        "trtype:sim",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("bad size '4q'"));
}

/// Runs nvme-perf with `env` set, at most `bound`; a run still going then is killed and
/// fails the test.
fn perf_bounded(args: &[&str], env: &[(&str, &str)], bound: std::time::Duration) -> Output {
    use std::process::Stdio;
    let started = std::time::Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_nvme-perf"))
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running nvme-perf");
    // Read both pipes as they fill, so a talkative child cannot block on them.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let read = |r: &mut dyn std::io::Read| {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        v
    };
    let out = std::thread::spawn(move || read(&mut out));
    let err = std::thread::spawn(move || read(&mut err));
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Output {
                status,
                stdout: out.join().unwrap(),
                stderr: err.join().unwrap(),
            };
        }
        if started.elapsed() > bound {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "nvme-perf {args:?} still running after {} ms",
                bound.as_millis()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn a_worker_panicking_in_setup_ends_the_run_with_an_error() {
    // Two workers when two cores are available: the one that does not panic waits at the
    // start gate and must be released too.
    let cores = nvme_tools::sys::available_cores().unwrap();
    let (mask, panicking) = match cores[..] {
        [a, b, ..] => (format!("0x{:x}", (1u128 << a) | (1u128 << b)), "1"),
        [a] => (format!("0x{:x}", 1u128 << a), "0"),
        [] => unreachable!("a process runs on some core"),
    };
    let out = perf_bounded(
        &[
            "-r",
            "trtype:sim size:16M",
            "-q",
            "4",
            "-o",
            "4k",
            "-w",
            "randread",
            "-t",
            "5",
            "-c",
            &mask,
        ],
        &[("NVME_PERF_TEST_PANIC_IN_SETUP", panicking)],
        std::time::Duration::from_secs(30),
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "nvme-perf: error: worker thread nvme-perf-{} panicked: test hook NVME_PERF_TEST_PANIC_IN_SETUP={panicking}: worker {panicking} panics during its setup",
            cores[panicking.parse::<usize>().unwrap()]
        )),
        "{stderr}"
    );
    let stdout = text(&out.stdout);
    assert!(
        !stdout.contains("Total "),
        "no results for a run that did not start:\n{stdout}"
    );
}

#[test]
fn interrupt_mode_completes_and_falls_back_with_a_warning() {
    let run = |trid: &str| {
        let out = perf(&[
            "-r",
            trid,
            "-t",
            "10",
            "-q",
            "4",
            "-o",
            "4k",
            "-w",
            "randrw",
            "-M",
            "50",
            "-d",
            "2000",
            "-P",
            "2",
            "--interrupt",
            "--json",
        ]);
        let stdout = text(&out.stdout);
        let stderr = text(&out.stderr);
        assert!(out.status.success(), "{stdout}\n{stderr}");
        let v: serde_json::Value = serde_json::from_str(&stdout).expect("valid JSON");
        assert_eq!(v["total"]["ios"], 2000, "{stdout}");
        assert_eq!(v["devices"][0]["errors"], 0);
        stderr
    };
    let stderr = run("trtype:sim size:64M");
    assert!(!stderr.contains("polled"), "{stderr}");
    // Two queue pairs (-P 2) and two vectors: queue 2 has none and is polled.
    let stderr = run("trtype:sim size:64M vectors:2");
    assert!(
        stderr.contains("has 2 MSI-X vectors") && stderr.contains("queue 2 would need vector 2"),
        "{stderr}"
    );
}
