//! The engine under the real fio (`/usr/bin/fio`, 3.33): the job files in `nvme-fio/jobs/`
//! against the software controller, checked on fio's JSON output and exit status.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nvme_host_linux::regs::status::MediaErrorStatus;
use nvme_host_linux::regs::Status;
use nvme_host_linux::sim::{CommandMatch, SimClient};
use nvme_host_linux::{AttachOptions, Controller, TransportId};
use serde_json::Value;

/// Linux's EIO, what fio reports for a failed command.
const EIO: i64 = 5;
/// Linux's EILSEQ, what fio reports for a verify failure.
const EILSEQ: i64 = 84;

/// The engine cargo built for this test run: `target/<profile>/deps/libnvme_fio.so`, beside
/// the test executable (cargo copies it up to `target/<profile>/` only for `cargo build`).
fn engine() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let so = exe.with_file_name("libnvme_fio.so");
    assert!(
        so.exists(),
        "{} is missing: cargo builds the library (cdylib and rlib) before this test",
        so.display()
    );
    so
}

/// A scratch directory for one test (the driver's run directory, fio's JSON output), under
/// cargo's `target/tmp`; each run starts it afresh.
fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("nvme-fio-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch directory");
    d
}

/// What a fio run left.
struct Run {
    ok: bool,
    output: String,
    json: Option<Value>,
}

impl Run {
    fn json(&self) -> &Value {
        self.json
            .as_ref()
            .unwrap_or_else(|| panic!("fio wrote no JSON; its output:\n{}", self.output))
    }
    fn jobs(&self) -> &Vec<Value> {
        self.json()["jobs"].as_array().expect("jobs array")
    }
    fn job(&self, name: &str) -> &Value {
        self.jobs()
            .iter()
            .find(|j| j["jobname"] == name)
            .unwrap_or_else(|| panic!("no job '{name}' in fio's JSON:\n{}", self.output))
    }
}

/// Starts fio on `nvme-fio/jobs/<job>` with `env`; its JSON, stdout and stderr go to files
/// in `dir`.
fn start_fio(job: &str, dir: &Path, env: &[(&str, String)]) -> Child {
    let jobfile = Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs").join(job);
    let file = |ext: &str| File::create(dir.join(format!("{job}.{ext}"))).expect("output file");
    let mut cmd = Command::new("fio");
    cmd.arg("--output-format=json")
        .arg(format!(
            "--output={}",
            dir.join(format!("{job}.json")).display()
        ))
        .arg(&jobfile)
        .env("NVME_FIO_ENGINE", engine())
        .env("NVME_RUN_DIR", dir)
        // fio's own files (verify state when a job ends early) stay in the scratch directory.
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(file("stdout"))
        .stderr(file("stderr"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("fio is not installed: install fio (apt-get install fio), version 3.33")
        }
        Err(e) => panic!("running fio: {e}"),
    }
}

/// What fio, started by [`start_fio`] for `job` in `dir`, left when it exited with `status`.
fn finished(job: &str, dir: &Path, status: ExitStatus) -> Run {
    let read = |ext: &str| std::fs::read_to_string(dir.join(format!("{job}.{ext}")));
    let text = read("json").unwrap_or_default();
    let output = format!(
        "exit status: {status}\nstdout:\n{}\nstderr:\n{}\njson file:\n{text}",
        read("stdout").unwrap_or_default(),
        read("stderr").unwrap_or_default()
    );
    // fio may print lines before the JSON object.
    let json = text
        .find('{')
        .and_then(|i| serde_json::from_str(&text[i..]).ok());
    Run {
        ok: status.success(),
        output,
        json,
    }
}

/// Runs fio on `nvme-fio/jobs/<job>` with `env` to the end.
fn fio(job: &str, dir: &Path, env: &[(&str, String)]) -> Run {
    let status = start_fio(job, dir, env).wait().expect("waiting for fio");
    finished(job, dir, status)
}

/// Runs fio on `nvme-fio/jobs/<job>` alone (no group), in a scratch directory of its own.
fn fio_alone(job: &str) -> Run {
    let dir = scratch(job.trim_end_matches(".fio"));
    fio(job, &dir, &[])
}

fn ios(job: &Value, dir: &str) -> u64 {
    job[dir]["total_ios"].as_u64().expect("total_ios")
}

/// fio ran `job` without error and read and/or wrote what it was asked to.
fn assert_clean(run: &Run, job: &Value) {
    assert!(run.ok, "fio failed:\n{}", run.output);
    assert_eq!(job["error"], 0, "job error:\n{}", run.output);
    assert!(
        !run.output.contains("verify:") && !run.output.contains("nvme-fio:"),
        "verify failures or engine errors:\n{}",
        run.output
    );
}

#[test]
fn randwrite_crc32c_then_read_verify_pass() {
    let run = fio_alone("verify.fio");
    let w = run.job("write-verify");
    assert_clean(&run, w);
    assert_eq!(ios(w, "write"), 16 << 20 >> 12, "16 MiB of 4 KiB writes");
    assert_eq!(
        ios(w, "read"),
        16 << 20 >> 12,
        "each write read back and verified"
    );
    let r = run.job("read-verify");
    assert_clean(&run, r);
    assert_eq!(
        ios(r, "read"),
        16 << 20 >> 12,
        "the second pass verified all of it"
    );
    assert_eq!(ios(r, "write"), 0);
}

#[test]
fn md5_verify_with_bssplit_on_4k_blocks() {
    let run = fio_alone("verify-md5.fio");
    let j = run.job("write-verify-md5");
    assert_clean(&run, j);
    assert!(ios(j, "write") > 0 && ios(j, "read") > 0, "{}", run.output);
    assert_eq!(
        j["write"]["io_bytes"], j["read"]["io_bytes"],
        "every byte written was read back"
    );
}

#[test]
fn verifying_unwritten_blocks_fails() {
    // The check that the verify passes above are real: data fio never wrote does not pass.
    let run = fio_alone("unwritten.fio");
    assert!(!run.ok, "fio should fail:\n{}", run.output);
    assert!(
        run.output.contains("verify: bad magic header"),
        "fio names the verify failure:\n{}",
        run.output
    );
    assert_eq!(run.job("read-unwritten")["error"], EILSEQ, "{}", run.output);
}

#[test]
fn randrw_batched_with_ramp_and_percentiles() {
    let run = fio_alone("randrw.fio");
    let j = run.job("randrw");
    assert_clean(&run, j);
    for d in ["read", "write"] {
        assert!(ios(j, d) > 0, "no {d}s:\n{}", run.output);
        let p = &j[d]["clat_ns"]["percentile"];
        for k in ["50.000000", "99.000000", "99.900000"] {
            assert!(
                p[k].as_u64().is_some_and(|v| v > 0),
                "{d} p{k}:\n{}",
                run.output
            );
        }
    }
    // Batched submission: fio recorded batches of more than one I/O.
    let submit = j["iodepth_submit"].as_object().expect("iodepth_submit");
    let batched: f64 = submit
        .iter()
        .filter(|(k, _)| k.as_str() != "0" && k.as_str() != "4")
        .map(|(_, v)| v.as_f64().unwrap_or(0.0))
        .sum();
    assert!(
        batched > 0.0,
        "no batch of 5 or more submitted:\n{}",
        run.output
    );
}

#[test]
fn two_job_threads_share_one_attachment() {
    let run = fio_alone("numjobs.fio");
    let jobs: Vec<&Value> = run
        .jobs()
        .iter()
        .filter(|j| j["jobname"] == "two-threads")
        .collect();
    assert_eq!(jobs.len(), 2, "{}", run.output);
    for j in jobs {
        assert_clean(&run, j);
        assert_eq!(ios(j, "write"), 8 << 20 >> 13, "{}", run.output);
        assert_eq!(ios(j, "read"), 8 << 20 >> 13, "{}", run.output);
    }
}

#[test]
fn writing_past_the_namespace_fails_clearly() {
    let run = fio_alone("past-end.fio");
    assert!(!run.ok, "fio should fail:\n{}", run.output);
    assert!(
        run.output.contains("reaches past the end of namespace 1")
            && run.output.contains("67108864 bytes"),
        "{}",
        run.output
    );
}

/// The driver's run directory of this test process's groups (one for all: the driver reads
/// `NVME_RUN_DIR` from the environment when it attaches).
fn group_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = scratch("groups");
        std::env::set_var("NVME_RUN_DIR", &d);
        d
    })
}

/// Creates shared-memory group `group` as its primary with the software controller `trid`,
/// so that fio joins it as a secondary (engine option `shm_id`) and the test can reach the
/// controller's fault injection and counters.
fn primary(trid: &str, group: u32) -> (Controller, SimClient) {
    let dir = group_dir();
    let trid = TransportId::parse(trid).expect("trid");
    let opts = AttachOptions {
        group: Some(group),
        ..Default::default()
    };
    let ctrl = Controller::attach_with(&trid, &opts).expect("attach as the group's primary");
    let sim = SimClient::connect(&dir.join(format!("nvme-rs.{group}/sim.sock"))).expect("sim");
    (ctrl, sim)
}

/// A group id of this test process: `n` picks one of its groups.
fn group_id(n: u32) -> u32 {
    40_000 + (std::process::id() % 10_000) * 4 + n
}

#[test]
fn one_mib_blocks_split_by_mdts() {
    let group = group_id(0);
    let (ctrl, sim) = primary("trtype:sim size:64M mdts:3", group);
    let run = fio(
        "mdts.fio",
        group_dir(),
        &[("NVME_FIO_GROUP", group.to_string())],
    );
    let stats = sim.stats().expect("controller counters");
    drop(ctrl);
    let j = run.job("big-blocks");
    assert_clean(&run, j);
    assert_eq!(ios(j, "write"), 32, "{}", run.output);
    assert_eq!(ios(j, "read"), 32, "verified after the split writes");
    // MDTS 3 = 32 KiB: each 1 MiB request went to the controller as 32 commands.
    assert_eq!((stats.writes, stats.reads), (32 * 32, 32 * 32), "{stats:?}");
    assert_eq!(stats.bytes_written, 32 << 20, "{stats:?}");
}

#[test]
fn nvme_error_status_reaches_fio_as_eio() {
    let group = group_id(1);
    // The controller fails the 10th write with a media error.
    let (ctrl, sim) = primary("trtype:sim size:64M", group);
    let fault = sim
        .fail_nth(
            CommandMatch::io(0x01),
            10,
            Status::media(MediaErrorStatus::WriteFault),
            false,
        )
        .expect("inject");
    let run = fio(
        "group-errors.fio",
        group_dir(),
        &[("NVME_FIO_GROUP", group.to_string())],
    );
    assert_eq!(
        sim.fault_fired(fault).expect("fault state").0,
        1,
        "{}",
        run.output
    );
    drop(ctrl);
    assert!(!run.ok, "fio should fail:\n{}", run.output);
    assert_eq!(run.job("group-write")["error"], EIO, "{}", run.output);
    assert!(
        run.output
            .contains("write of 4096 bytes at offset 36864 failed")
            && run.output.contains("Write Fault (sct 0x2, sc 0x80"),
        "the NVMe status is named:\n{}",
        run.output
    );
}

/// Waits up to `limit` for `cond`, polling; false if it never held.
fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

#[test]
fn a_dead_controller_ends_the_job_with_eio() {
    let group = group_id(2);
    let (ctrl, sim) = primary("trtype:sim size:64M", group);
    let sim_pid = ctrl
        .sim_process()
        .expect("the group's controller runs as a process");
    let mut child = start_fio(
        "controller-dies.fio",
        group_dir(),
        &[("NVME_FIO_GROUP", group.to_string())],
    );
    let reading = wait_for(Duration::from_secs(60), || {
        sim.stats().is_ok_and(|s| s.reads > 100)
    });
    let killed = Command::new("kill")
        .args(["-KILL", &sim_pid.to_string()])
        .status()
        .expect("kill");
    assert!(
        killed.success(),
        "killing the controller's process {sim_pid}"
    );
    // fio must end by itself: before the engine checked the controller, its job thread
    // polled for completions that never came, and fio could not be stopped but by SIGKILL.
    let mut status = None;
    let ended = wait_for(Duration::from_secs(60), || {
        status = child.try_wait().expect("fio's status");
        status.is_some()
    });
    if !ended {
        let _ = child.kill();
        let _ = child.wait();
    }
    let run = finished(
        "controller-dies.fio",
        group_dir(),
        status.unwrap_or_default(),
    );
    assert!(reading, "fio never read:\n{}", run.output);
    assert!(
        ended,
        "fio kept running after the controller died:\n{}",
        run.output
    );
    drop(ctrl);
    assert!(!run.ok, "fio should fail:\n{}", run.output);
    assert_eq!(run.job("controller-dies")["error"], EIO, "{}", run.output);
    assert!(
        run.output.contains("the controller is lost") && run.output.contains("fail with EIO"),
        "{}",
        run.output
    );
}
