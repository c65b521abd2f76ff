//! The test kit of the multi-process tests (cargo feature `testkit`, off by default): the
//! driver's own integration tests, the tools' tests and the hardware suite use it.
//!
//! - A test binary starts itself again as child processes, each in a *role*
//!   ([`RunDir::rerun`], [`role`]), or starts other programs ([`Proc::spawn`]); every child
//!   dies with the thread that started it (`PR_SET_PDEATHSIG`).
//! - A child reports one line per event on its standard output ([`say`]: `READY ...`,
//!   `PROGRESS n`, `ERROR why`); the parent waits for lines with a bound ([`Proc::line`]),
//!   and for the exit ([`Proc::finish`]), then looks at how it ended ([`Exit`]).
//! - Each scenario runs in its own temporary run directory ([`RunDir`]: `NVME_RUN_DIR` of
//!   the children, with the groups' directories and a stop file in it).
//! - [`pattern`]: data that depends on the seed and the absolute LBA, so that any read can be
//!   checked against what some other process wrote.
//! - [`io_through_resets`]: a child's checked I/O through controller resets by other
//!   processes, reporting the last acknowledged write (for a read-back).
//! - [`run_scenarios`]: the runner of `harness = false` test binaries.

mod interrupts;
mod leases;
pub mod pattern;
mod resets;

pub use interrupts::{check_interrupt_report, check_interrupt_reports, interrupt_io, wait_cost};
pub use leases::{claim_leases, lease_spec};
pub use resets::{io_through_resets, Acked, ResetIo};

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The environment variable that carries a child's role.
pub const ROLE_VAR: &str = "NVME_TEST_ROLE";
/// The environment variable that carries the path of the stop file.
pub const STOP_VAR: &str = "NVME_TEST_STOP";
/// How long [`Proc::line`] and [`Proc::finish`] wait unless told otherwise.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(20);

/// What a scenario returns: `Err` (or a panic) fails it.
pub type Outcome = Result<(), String>;

/// A named scenario of [`run_scenarios`].
pub type Scenario = (&'static str, fn() -> Outcome);

// ---------------------------------------------------------------------------------------
// The child's side

/// The role this process was started in by [`RunDir::rerun`]; `None` in the parent.
pub fn role() -> Option<String> {
    std::env::var(ROLE_VAR).ok()
}

/// Writes `line` to standard output at once (the parent reads it as it comes).
pub fn say(line: impl AsRef<str>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", line.as_ref());
    let _ = out.flush();
}

/// A child's exit status for the outcome of its role: 0, or 1 after an `ERROR why` line.
pub fn exit_code(r: Outcome) -> u8 {
    match r {
        Ok(()) => 0,
        Err(e) => {
            say(format!("ERROR {e}"));
            1
        }
    }
}

/// Whether the parent asked its children to stop ([`RunDir::stop`]).
pub fn stop_requested() -> bool {
    std::env::var_os(STOP_VAR).is_some_and(|p| Path::new(&p).exists())
}

/// The environment variable `name`, or an error that names it.
pub fn env(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("{name} not set"))
}

/// The environment variable `name` as a number.
pub fn env_u64(name: &str) -> Result<u64, String> {
    env(name)?
        .parse()
        .map_err(|_| format!("{name}: not a number"))
}

/// Waits (at most `bound`) for every I/O outstanding on `qp`; the first error wins.
pub fn complete_all(qp: &mut crate::IoQueuePair, bound: Duration) -> Outcome {
    let mut err = None;
    qp.drain(bound, |_, r| {
        if let Err(e) = r {
            err.get_or_insert(e.to_string());
        }
    })
    .map_err(|e| e.to_string())?;
    err.map_or(Ok(()), Err)
}

// ---------------------------------------------------------------------------------------
// Run directories

/// A fresh temporary directory for one scenario's groups (`NVME_RUN_DIR`), removed when
/// dropped.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    /// Creates `<temp>/nvme-<tag>.<pid>`, emptied first.
    pub fn new(tag: &str) -> Result<RunDir, String> {
        let path = std::env::temp_dir().join(format!("nvme-{tag}.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(RunDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory of group `id` under this run directory (where the driver puts it when
    /// `NVME_RUN_DIR` is this directory).
    pub fn group_dir(&self, id: u32) -> PathBuf {
        crate::group::group_dir_in(&self.path, id)
    }

    /// The stop file of this directory's children.
    pub fn stop_file(&self) -> PathBuf {
        self.path.join("stop")
    }

    /// Asks the children to stop ([`stop_requested`] turns true).
    pub fn stop(&self) -> Outcome {
        std::fs::write(self.stop_file(), b"").map_err(|e| format!("creating the stop file: {e}"))
    }

    /// Withdraws [`RunDir::stop`], for children started later.
    pub fn clear_stop(&self) {
        let _ = std::fs::remove_file(self.stop_file());
    }

    /// A command that starts the current executable again in `role`, with this directory as
    /// its `NVME_RUN_DIR`, the stop file, no standard input and its standard error piped
    /// (for [`Exit::stderr`]; set it to inherit to see it instead).
    pub fn rerun(&self, role: &str) -> Result<Command, String> {
        let exe = std::env::current_exe().map_err(|e| format!("the test binary: {e}"))?;
        let mut cmd = Command::new(exe);
        cmd.env(ROLE_VAR, role)
            .env(STOP_VAR, self.stop_file())
            .env("NVME_RUN_DIR", &self.path)
            .stdin(Stdio::null())
            .stderr(Stdio::piped());
        Ok(cmd)
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

// ---------------------------------------------------------------------------------------
// Children seen from the parent

/// A child process whose standard output is read line by line as it comes. Dropping it
/// kills the process if it still runs (a scenario that failed half-way leaves nothing
/// behind).
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    started: Instant,
    wait: Duration,
}

impl Proc {
    /// Starts `cmd` with its standard output piped; the child gets `SIGKILL` when the thread
    /// that started it ends (`PR_SET_PDEATHSIG`), whatever happens to the test.
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Proc, String> {
        cmd.stdout(Stdio::piped());
        crate::sys::kill_with_parent(cmd);
        let started = Instant::now();
        let mut child = cmd.spawn().map_err(|e| format!("starting {name}: {e}"))?;
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().expect("stdout is piped");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Ok(Proc {
            name: name.into(),
            child,
            lines: rx,
            seen: Vec::new(),
            started,
            wait: DEFAULT_WAIT,
        })
    }

    /// Sets how long [`Proc::line`] and [`Proc::finish`] wait (slow machines, VMs).
    pub fn with_wait(mut self, wait: Duration) -> Proc {
        self.wait = wait;
        self
    }

    /// The name given at [`Proc::spawn`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a line that starts with `prefix` and returns it. A line starting with
    /// `ERROR` or `ATTACH-ERROR` (when not the one waited for) or no such line in time is an
    /// error that says what was seen.
    pub fn line(&mut self, prefix: &str) -> Result<String, String> {
        let deadline = Instant::now() + self.wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.starts_with(prefix) {
                        return Ok(l);
                    }
                    if is_error(&l) {
                        return Err(format!("{}: {l} (while waiting for {prefix})", self.name));
                    }
                }
                Err(_) => {
                    return Err(format!(
                        "{}: no '{prefix}' line within {} s; saw {:?}",
                        self.name,
                        self.wait.as_secs(),
                        self.seen
                    ))
                }
            }
        }
    }

    /// Waits for two more `PROGRESS` lines: the child is making progress now.
    pub fn progresses(&mut self) -> Outcome {
        self.line("PROGRESS")?;
        self.line("PROGRESS").map(|_| ())
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills the process (`SIGKILL`) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits (at most the wait set for this process) for the exit.
    pub fn finish(self) -> Result<Exit, String> {
        let deadline = Instant::now() + self.wait;
        self.finish_by(deadline)
    }

    /// Waits until `deadline` for the exit; a process still running then is killed and the
    /// result is an error.
    pub fn finish_by(mut self, deadline: Instant) -> Result<Exit, String> {
        let name = std::mem::take(&mut self.name);
        loop {
            if let Some(st) = self.child.try_wait().map_err(|e| format!("{name}: {e}"))? {
                let took = self.started.elapsed();
                let mut stderr = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_string(&mut stderr);
                }
                // The reader thread sends the rest and ends at end of file.
                while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(5)) {
                    self.seen.push(l);
                }
                let errors = self.seen.iter().filter(|l| is_error(l)).cloned().collect();
                return Ok(Exit {
                    name,
                    code: st.code(),
                    stdout: self.seen.join("\n"),
                    stderr,
                    errors,
                    took,
                });
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(format!(
                    "{name}: did not exit within {} ms of its start; saw {:?}",
                    self.started.elapsed().as_millis(),
                    self.seen
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.running() {
            self.kill();
        }
    }
}

fn is_error(line: &str) -> bool {
    line.starts_with("ERROR") || line.starts_with("ATTACH-ERROR")
}

/// How a child ended.
#[derive(Debug)]
pub struct Exit {
    /// The name given at [`Proc::spawn`].
    pub name: String,
    /// The exit status; `None` when a signal ended the process.
    pub code: Option<i32>,
    /// Every line of its standard output.
    pub stdout: String,
    /// Its standard error (empty when not piped).
    pub stderr: String,
    /// Its lines that start with `ERROR` or `ATTACH-ERROR`.
    pub errors: Vec<String>,
    /// From the start to the exit.
    pub took: Duration,
}

impl Exit {
    /// Exit status 0, no error line, nothing on standard error.
    pub fn clean(&self) -> Outcome {
        if self.code != Some(0) || !self.errors.is_empty() || !self.stderr.is_empty() {
            return Err(format!(
                "{} did not end cleanly: exit status {:?}, errors {:?}\nstdout:\n{}\nstderr:\n{}",
                self.name, self.code, self.errors, self.stdout, self.stderr
            ));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Waiting, processes, the runner

/// Polls `f` every 20 ms until it is true; an error after `bound`.
pub fn wait_until(what: &str, bound: Duration, mut f: impl FnMut() -> bool) -> Outcome {
    let deadline = Instant::now() + bound;
    while !f() {
        if Instant::now() > deadline {
            return Err(format!(
                "timed out after {} ms waiting until {what}",
                bound.as_millis()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Whether process `pid` exists and has not exited (a zombie counts as gone).
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Runs the scenarios of a `harness = false` test binary one after another on this thread
/// (the parent its children die with), as libtest would: the arguments that do not start
/// with `-` select scenarios by substring; one line per scenario, then a summary. A
/// scenario fails by returning `Err` or by panicking.
pub fn run_scenarios(label: &str, scenarios: &[Scenario]) -> ExitCode {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let (mut ran, mut failed) = (0, 0);
    for (name, f) in scenarios {
        if !filter.is_empty() && !filter.iter().any(|p| name.contains(p.as_str())) {
            continue;
        }
        ran += 1;
        let start = Instant::now();
        match std::panic::catch_unwind(f) {
            Ok(Ok(())) => println!("test {name} ... ok ({} ms)", start.elapsed().as_millis()),
            Ok(Err(e)) => {
                println!("test {name} ... FAILED\n    {e}");
                failed += 1;
            }
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    println!("\n{label}: {} passed; {failed} failed", ran - failed);
    if failed > 0 {
        ExitCode::from(101)
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_is_read_line_by_line_and_its_end_is_seen() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo READY 1; echo PROGRESS 1; echo oops >&2; exit 3"])
            .stderr(Stdio::piped());
        let mut p = Proc::spawn("sh", &mut cmd).unwrap();
        assert_eq!(p.line("READY").unwrap(), "READY 1");
        let e = p.finish().unwrap();
        assert_eq!(e.code, Some(3));
        assert_eq!(e.stdout, "READY 1\nPROGRESS 1");
        assert_eq!(e.stderr, "oops\n");
        assert!(e.clean().unwrap_err().contains("exit status Some(3)"));
    }

    #[test]
    fn error_lines_and_silence_are_failures() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo ERROR broken; sleep 30"]);
        let mut p = Proc::spawn("failing", &mut cmd)
            .unwrap()
            .with_wait(Duration::from_millis(300));
        let e = p.line("READY").unwrap_err();
        assert!(e.contains("failing: ERROR broken"), "{e}");
        let e = p.line("READY").unwrap_err();
        assert!(e.contains("no 'READY' line"), "{e}");
        let pid = p.pid();
        assert!(pid_alive(pid));
        let start = Instant::now();
        let e = p.finish().unwrap_err();
        assert!(e.contains("did not exit"), "{e}");
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the bound applies"
        );
        assert!(!pid_alive(pid), "killed and reaped");
    }

    #[test]
    fn run_directories_and_waiting() {
        let d = RunDir::new("testkit-selftest").unwrap();
        let path = d.path().to_path_buf();
        assert!(path.is_dir());
        assert_eq!(d.group_dir(5), path.join("nvme-rs.5"));
        d.stop().unwrap();
        assert!(d.stop_file().exists());
        d.clear_stop();
        assert!(!d.stop_file().exists());
        let e = wait_until("never", Duration::from_millis(50), || false).unwrap_err();
        assert!(e.contains("waiting until never"), "{e}");
        let mut n = 0;
        wait_until("three polls", Duration::from_secs(5), || {
            n += 1;
            n == 3
        })
        .unwrap();
        drop(d);
        assert!(!path.exists(), "removed when dropped");
    }
}
