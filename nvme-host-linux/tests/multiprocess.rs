//! Several processes sharing one controller: the software controller runs in its own
//! process, driver processes join and leave the group, and some are SIGKILLed.
//!
//! `harness = false`: this binary is both the test runner and the child processes it
//! starts (`NVME_MP_ROLE` selects a child's part).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nvme_host_linux::regs::features::{fid, FeatureSelect};
use nvme_host_linux::{AttachOptions, Controller, QueueOptions, Role, TransportId};

const TRID: &str = "trtype:sim nscount:2 size:64M serial:MPTEST";

// ---------------------------------------------------------------------------------------
// Children

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} not set"))
}

fn attach_from_env() -> Result<Controller, nvme_host_linux::Error> {
    let trid = TransportId::parse(TRID).unwrap();
    let mut opts = AttachOptions {
        group: Some(env("NVME_MP_GROUP").parse().unwrap()),
        ..Default::default()
    };
    if let Ok(ms) = std::env::var("NVME_MP_ADMIN_TIMEOUT_MS") {
        opts.admin_timeout = Duration::from_millis(ms.parse().unwrap());
    }
    Controller::attach_with(&trid, &opts)
}

fn say(line: impl AsRef<str>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", line.as_ref()).unwrap();
    out.flush().unwrap();
}

fn stop_requested() -> bool {
    Path::new(&env("NVME_MP_STOP")).exists()
}

fn pattern(seed: u64, buf: &mut [u8]) {
    let mut x = seed | 1;
    for b in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
    }
}

/// Waits for every outstanding I/O; the first error wins.
fn complete_all(qp: &mut nvme_host_linux::IoQueuePair) -> Result<(), String> {
    let mut err = None;
    qp.drain(Duration::from_secs(10), |_, r| {
        if let Err(e) = r {
            err.get_or_insert(e.to_string());
        }
    })
    .map_err(|e| e.to_string())?;
    err.map_or(Ok(()), Err)
}

/// Writes and reads back its own region in a loop, 8 I/Os in flight, until told to stop.
fn child_io(ctrl: &Controller) -> Result<(), String> {
    let base: u64 = env("NVME_MP_LBA").parse().unwrap();
    let mut qp = ctrl
        .alloc_io_queue(QueueOptions { entries: 32 })
        .map_err(|e| e.to_string())?;
    say(format!("QID {}", qp.qid()));
    let mut buf = ctrl.alloc_dma(16 * 4096).map_err(|e| e.to_string())?;
    let mut round = 0u64;
    let mut last_report = Instant::now();
    while !stop_requested() {
        round += 1;
        for i in 0..8usize {
            pattern(
                round * 100 + i as u64 + base,
                &mut buf.as_mut_slice()[i * 4096..(i + 1) * 4096],
            );
        }
        for i in 0..8usize {
            let r = buf.slice(i * 4096..(i + 1) * 4096).unwrap();
            qp.write(1, base + i as u64 * 8, r, i as u64)
                .map_err(|e| e.to_string())?;
        }
        complete_all(&mut qp)?;
        for i in 0..8usize {
            let r = buf.slice((8 + i) * 4096..(9 + i) * 4096).unwrap();
            qp.read(1, base + i as u64 * 8, r, i as u64)
                .map_err(|e| e.to_string())?;
        }
        complete_all(&mut qp)?;
        let d = buf.as_slice();
        if d[..8 * 4096] != d[8 * 4096..] {
            return Err(format!(
                "round {round}: data read back differs from data written"
            ));
        }
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
    let which: u32 = env("NVME_MP_NSID").parse().unwrap();
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

fn child(role: &str) -> i32 {
    // Die with the test runner, whatever happens to it.
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag of this process.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
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
        "admin" => child_admin(&ctrl),
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
        "hold-lock" => {
            ctrl.__test_hold_group_lock();
            say("HOLDING");
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        "write" | "check" => {
            let lba: u64 = env("NVME_MP_LBA").parse().unwrap();
            let mut qp = ctrl.alloc_io_queue(QueueOptions::default()).unwrap();
            let mut buf = ctrl.alloc_dma(8192).unwrap();
            pattern(lba * 7 + 1, &mut buf.as_mut_slice()[..4096]);
            if role == "write" {
                qp.write_sync(2, lba, buf.slice(0..4096).unwrap())
                    .map_err(|e| e.to_string())
            } else {
                qp.read_sync(2, lba, buf.slice(4096..8192).unwrap())
                    .map_err(|e| e.to_string())
                    .and_then(|_| {
                        let d = buf.as_slice();
                        if d[..4096] == d[4096..] {
                            Ok(())
                        } else {
                            Err("data differs from what the other process wrote".into())
                        }
                    })
            }
        }
        "queues" => {
            // Report the pool after survivors' cleanup settles, then create one queue.
            std::thread::sleep(Duration::from_millis(300));
            say(format!("IN-USE {}", ctrl.io_queues_in_use()));
            let qp = ctrl
                .alloc_io_queue(QueueOptions { entries: 16 })
                .map_err(|e| e.to_string());
            qp.map(|q| say(format!("QID {}", q.qid())))
        }
        other => Err(format!("unknown role {other}")),
    };
    match r {
        Ok(()) => 0,
        Err(e) => {
            say(format!("ERROR {e}"));
            1
        }
    }
}

// ---------------------------------------------------------------------------------------
// Parent side

struct Proc {
    name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

struct Scenario {
    dir: PathBuf,
    group: u32,
}

impl Scenario {
    fn new(group: u32) -> Scenario {
        let dir = std::env::temp_dir().join(format!("nvme-mp-{}-{group}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scenario { dir, group }
    }
    fn stop_file(&self) -> PathBuf {
        self.dir.join("stop")
    }
    fn group_dir(&self) -> PathBuf {
        self.dir.join(format!("nvme-rs.{}", self.group))
    }
    fn spawn(&self, name: &str, role: &str, extra: &[(&str, String)]) -> Proc {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.env("NVME_MP_ROLE", role)
            .env("NVME_MP_GROUP", self.group.to_string())
            .env("NVME_RUN_DIR", &self.dir)
            .env("NVME_MP_STOP", self.stop_file())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Proc {
            name: name.into(),
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }
    fn stop(&self) {
        std::fs::write(self.stop_file(), b"").unwrap();
    }
    fn clear_stop(&self) {
        let _ = std::fs::remove_file(self.stop_file());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A scenario that failed half-way must not leave its processes behind.
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Proc {
    /// Waits for a line starting with `prefix`; fails on an ERROR line or a timeout.
    fn expect(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.starts_with(prefix) {
                        return l;
                    }
                    if l.starts_with("ERROR") || l.starts_with("ATTACH-ERROR") {
                        panic!("{}: {l} (while waiting for {prefix})", self.name);
                    }
                }
                Err(_) => panic!("{}: no '{prefix}' line; saw {:?}", self.name, self.seen),
            }
        }
    }
    /// Waits for progress beyond what was seen so far.
    fn progresses(&mut self) {
        self.expect("PROGRESS");
        self.expect("PROGRESS");
    }
    fn kill(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }
    /// Waits for the process to exit; returns its exit status, stderr and ERROR lines.
    fn finish(mut self) -> Exit {
        let name = std::mem::take(&mut self.name);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                let mut stderr = String::new();
                use std::io::Read;
                self.child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut stderr)
                    .unwrap();
                while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(50)) {
                    self.seen.push(l);
                }
                let errors = self
                    .seen
                    .iter()
                    .filter(|l| l.starts_with("ERROR"))
                    .cloned()
                    .collect();
                return Exit {
                    name,
                    code: st.code().unwrap_or(-1),
                    stderr,
                    errors,
                };
            }
            if Instant::now() > deadline {
                self.kill();
                panic!("{name}: did not exit; saw {:?}", self.seen);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// How a child ended.
struct Exit {
    name: String,
    code: i32,
    stderr: String,
    errors: Vec<String>,
}

impl Exit {
    /// Exit status 0, no ERROR line, nothing on stderr.
    fn clean(self) {
        assert!(self.errors.is_empty(), "{}: {:?}", self.name, self.errors);
        assert_eq!(self.code, 0, "{} exit status", self.name);
        assert!(
            self.stderr.is_empty(),
            "{} printed on stderr: {}",
            self.name,
            self.stderr
        );
    }
}

fn lba(n: u64) -> (&'static str, String) {
    ("NVME_MP_LBA", n.to_string())
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(pid, 0) == 0 }
}

// ---------------------------------------------------------------------------------------
// Scenarios

fn primary_and_secondaries_share_io_and_admin() {
    let s = Scenario::new(11);
    let mut p = s.spawn("primary", "io", &[lba(0)]);
    assert!(p.expect("READY").starts_with("READY primary"));
    p.expect("QID");
    let mut io2 = s.spawn("secondary io", "io", &[lba(4096)]);
    assert!(io2.expect("READY").starts_with("READY secondary"));
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
        assert!(a.expect("READY").starts_with("READY secondary"));
    }
    for a in &mut admins {
        a.expect("PROGRESS");
    }
    p.progresses();
    io2.progresses();
    s.stop();
    for proc in admins.into_iter().chain([io2, p]) {
        proc.finish().clean();
    }
    wait_until("the group is removed", || !s.group_dir().exists());
}

fn killed_secondaries_are_cleaned_up() {
    let s = Scenario::new(12);
    let mut p = s.spawn("primary", "io", &[lba(0)]);
    p.expect("READY primary");
    let p_qid = p.expect("QID");
    let mut victim = s.spawn("victim io", "io", &[lba(4096)]);
    victim.expect("READY");
    victim.expect("QID");
    victim.expect("PROGRESS"); // mid-I/O
    victim.kill();
    let mut holder = s.spawn("lock holder", "hold-lock", &[]);
    holder.expect("HOLDING");
    holder.kill();
    // The primary keeps going through both deaths.
    p.progresses();
    // A new process attaches (its identify needs the lock the holder died with), finds the
    // victims' queue ids returned, and creates a queue.
    let mut q = s.spawn("newcomer", "queues", &[]);
    assert!(q.expect("READY").starts_with("READY secondary"));
    assert_eq!(
        q.expect("IN-USE"),
        "IN-USE 1",
        "only the primary's queue is left"
    );
    let new_qid = q.expect("QID");
    assert_ne!(new_qid, p_qid);
    q.finish().clean();
    p.progresses();
    s.stop();
    p.finish().clean();
}

fn killed_primary_is_replaced() {
    let s = Scenario::new(13);
    let mut p = s.spawn("primary", "io", &[lba(0)]);
    p.expect("READY primary");
    let p_qid = p.expect("QID");
    let mut sec = s.spawn("secondary", "io", &[lba(4096)]);
    sec.expect("READY secondary");
    sec.expect("QID");
    sec.expect("PROGRESS");
    p.kill();
    sec.progresses();
    // A new process becomes the primary; the old primary's queue id is free again and can be
    // created on the controller, so the old queue is gone from it.
    let mut n = s.spawn("new primary", "queues", &[]);
    assert!(
        n.expect("READY").starts_with("READY primary"),
        "the newcomer takes the primary role"
    );
    assert_eq!(n.expect("IN-USE"), "IN-USE 1");
    assert_eq!(
        n.expect("QID"),
        p_qid,
        "the dead primary's queue was deleted and its id reused"
    );
    n.finish().clean();
    sec.progresses();
    s.stop();
    sec.finish().clean();
}

fn data_written_by_one_process_reads_back_in_another() {
    let s = Scenario::new(14);
    let mut keeper = s.spawn("keeper", "wait", &[]);
    keeper.expect("READY primary");
    s.spawn("writer", "write", &[lba(77)]).finish().clean();
    s.spawn("reader", "check", &[lba(77)]).finish().clean();
    let other = s
        .spawn("reader of other data", "check", &[lba(78)])
        .finish();
    assert_eq!(
        other.code, 1,
        "reading blocks nobody wrote must not match the pattern"
    );
    assert!(
        other.errors[0].contains("data differs"),
        "{:?}",
        other.errors
    );
    s.stop();
    keeper.finish().clean();
}

fn a_different_build_is_refused() {
    let s = Scenario::new(15);
    let mut keeper = s.spawn("keeper", "wait", &[]);
    keeper.expect("READY primary");
    let mut other = s.spawn(
        "other build",
        "wait",
        &[(
            "NVME_TEST_BUILD_ID",
            "nvme-host-linux 9.9.9 (elsewhere)".into(),
        )],
    );
    let line = other.expect("ATTACH-ERROR");
    assert!(
        line.contains("different build") && line.contains("9.9.9"),
        "{line}"
    );
    assert_eq!(other.finish().code, 3);
    s.stop();
    keeper.finish().clean();
}

fn a_different_transport_is_refused() {
    let s = Scenario::new(19);
    let mut keeper = s.spawn("keeper", "wait", &[]);
    keeper.expect("READY primary");
    std::env::set_var("NVME_RUN_DIR", &s.dir);
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
    s.stop();
    keeper.finish().clean();
}

fn a_group_of_another_user_is_refused() {
    let s = Scenario::new(16);
    std::fs::create_dir_all(s.group_dir()).unwrap();
    let path = std::ffi::CString::new(s.group_dir().to_str().unwrap()).unwrap();
    // SAFETY: chown(2) on a path we created.
    if unsafe { libc::chown(path.as_ptr(), 4242, 4242) } != 0 {
        println!("    (skipped the foreign-owner check: chown needs root here)");
        return;
    }
    std::env::set_var("NVME_RUN_DIR", &s.dir);
    let opts = AttachOptions {
        group: Some(16),
        ..Default::default()
    };
    let e = Controller::attach_with(&TransportId::parse(TRID).unwrap(), &opts).unwrap_err();
    std::env::remove_var("NVME_RUN_DIR");
    let msg = e.to_string();
    assert!(msg.contains("belongs to user 4242"), "{msg}");
}

fn last_member_out_releases_everything() {
    let s = Scenario::new(17);
    let mut a = s.spawn("a", "wait", &[]);
    a.expect("READY primary");
    let daemon_pid: i32 = a
        .expect("DAEMON")
        .trim_start_matches("DAEMON ")
        .parse()
        .unwrap();
    assert!(daemon_pid > 0 && pid_alive(daemon_pid));
    let mut b = s.spawn("b", "wait", &[]);
    b.expect("READY secondary");
    let daemon = std::fs::read_dir(s.group_dir()).unwrap().count();
    assert!(daemon >= 3, "group files exist while members live");
    s.stop();
    a.finish().clean();
    b.finish().clean();
    wait_until("the group directory is removed", || !s.group_dir().exists());
    wait_until("the controller process exits", || !pid_alive(daemon_pid));
    s.clear_stop();
    // A new process starts a fresh group as primary.
    let mut c = s.spawn("c", "wait", &[]);
    c.expect("READY primary");
    s.stop();
    c.finish().clean();
}

fn asynchronous_events_reach_every_process() {
    let s = Scenario::new(18);
    let mut a = s.spawn("a", "events", &[]);
    a.expect("READY primary");
    let mut b = s.spawn("b", "events", &[]);
    b.expect("READY secondary");
    // The test plays the device's environment: it tells the controller process to raise a
    // SMART / health event (temperature, SMART log page).
    let client = nvme_host_linux::sim::SimClient::connect(&s.group_dir().join("sim.sock")).unwrap();
    client
        .raise_async_event(nvme_host_linux::sim::AsyncEventType::SmartHealth, 1, 2)
        .unwrap();
    assert_eq!(a.expect("EVENT"), "EVENT 1 1 2");
    assert_eq!(b.expect("EVENT"), "EVENT 1 1 2");
    drop(client);
    a.finish().clean();
    b.finish().clean();
}

fn a_stopped_lock_holder_is_an_error_not_a_hang() {
    let s = Scenario::new(20);
    let mut keeper = s.spawn("keeper", "wait", &[]);
    keeper.expect("READY primary");
    // Alive but never releasing the admin lock: what a process stopped in a debugger does.
    let mut holder = s.spawn("holder", "hold-lock", &[]);
    holder.expect("HOLDING");
    let start = Instant::now();
    let mut late = s.spawn(
        "late",
        "wait",
        &[("NVME_MP_ADMIN_TIMEOUT_MS", "500".into())],
    );
    let line = late.expect("ATTACH-ERROR");
    assert!(line.contains("stopped or stuck"), "{line}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "the bound applies"
    );
    assert_eq!(late.finish().code, 3);
    // Once the holder is gone for good, the next process recovers the lock and joins.
    holder.kill();
    let mut next = s.spawn("next", "wait", &[]);
    next.expect("READY secondary");
    s.stop();
    next.finish().clean();
    keeper.finish().clean();
}

fn main() {
    if let Ok(role) = std::env::var("NVME_MP_ROLE") {
        std::process::exit(child(&role));
    }
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let scenarios: &[(&str, fn())] = &[
        (
            "primary_and_secondaries_share_io_and_admin",
            primary_and_secondaries_share_io_and_admin,
        ),
        (
            "killed_secondaries_are_cleaned_up",
            killed_secondaries_are_cleaned_up,
        ),
        ("killed_primary_is_replaced", killed_primary_is_replaced),
        (
            "data_written_by_one_process_reads_back_in_another",
            data_written_by_one_process_reads_back_in_another,
        ),
        ("a_different_build_is_refused", a_different_build_is_refused),
        (
            "a_different_transport_is_refused",
            a_different_transport_is_refused,
        ),
        (
            "a_group_of_another_user_is_refused",
            a_group_of_another_user_is_refused,
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
            "asynchronous_events_reach_every_process",
            asynchronous_events_reach_every_process,
        ),
    ];
    let mut failed = 0;
    let mut ran = 0;
    for (name, f) in scenarios {
        if !filter.is_empty() && !filter.iter().any(|p| name.contains(p.as_str())) {
            continue;
        }
        ran += 1;
        let start = Instant::now();
        let r = std::panic::catch_unwind(f);
        match r {
            Ok(()) => println!("test {name} ... ok ({} ms)", start.elapsed().as_millis()),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    println!("\nmultiprocess: {} passed; {failed} failed", ran - failed);
    if failed > 0 {
        std::process::exit(101);
    }
}
