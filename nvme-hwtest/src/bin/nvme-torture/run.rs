//! The orchestrator: rounds of workers, faults, and the check after each round.
//!
//! A round:
//! 1. a fresh run directory (`NVME_RUN_DIR` of its processes) and group id;
//! 2. the first worker (a writer or an admin loop: the primary), then the *keeper* (a
//!    member that only stays attached: the software controller keeps the data in its own
//!    process, which exits once the last member has gone), then 1-4 more workers of random
//!    roles, started without waiting (so that faults also land in attaches);
//! 3. for a random time around `--time-per-round`: faults at random moments to random live
//!    workers (the primary included, never the keeper): SIGKILL, or SIGSTOP and SIGCONT
//!    after a random delay; after a kill, sometimes a new worker of a random role;
//! 4. SIGCONT to every stopped worker, the workers' stop file, and a bounded wait for each
//!    to exit (one that does not is a hang: reported with its role, its last line and its
//!    threads' kernel wait channels, then killed);
//! 5. the verifier attaches (a failed or slow attach counts), reports the queue ids in use
//!    (every worker has gone: anything but 0 is a leak), reads every writer's range and
//!    checks it against the writer's log;
//! 6. the keeper leaves; the group directory and the controller process must go (within
//!    5 s each; otherwise a *leftover*).
//!
//! Every worker runs in a process group of its own, and signals go to the group: a tool
//! worker's nvmectl gets them too.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use nvme_host_linux::testkit::{pid_alive, wait_until, Exit, Proc, RunDir, STOP_VAR};

use crate::rng::Rng;

/// Options of a run.
#[derive(Clone, Debug)]
pub struct Opts {
    /// Rounds to run.
    pub rounds: u64,
    /// Seed of the whole run.
    pub seed: u64,
    /// Mean time the workers run before they are told to stop, in ms.
    pub time_per_round: u64,
    /// The controller.
    pub trid: String,
    /// Namespace the writers write.
    pub nsid: u32,
    /// First LBA of the writers' ranges (real devices: the part of the namespace to destroy).
    pub lba: u64,
    /// Blocks per writer.
    pub blocks: u64,
    /// The nvmectl binary of the tool workers (none: no tool workers).
    pub nvmectl: Option<PathBuf>,
    /// Bound on every wait for a worker (exit after the stop file, READY of the first two).
    pub bound: Duration,
    /// Print every round's line (otherwise only rounds with findings and every 50th).
    pub verbose: bool,
}

/// What a run found.
#[derive(Debug, Default, Clone)]
pub struct Totals {
    pub rounds: u64,
    pub workers: u64,
    pub kills: u64,
    pub stops: u64,
    pub hangs: u64,
    pub failed_attaches: u64,
    pub leaked_qids: u64,
    pub lost_writes: u64,
    pub bad_blocks: u64,
    pub errors: u64,
    pub leftovers: u64,
    pub acked_writes: u64,
    pub max_verify_attach_ms: u64,
}

impl Totals {
    /// Findings: anything that is not zero fails the run.
    pub fn findings(&self) -> u64 {
        self.hangs
            + self.failed_attaches
            + self.leaked_qids
            + self.lost_writes
            + self.bad_blocks
            + self.errors
            + self.leftovers
    }

    fn add(&mut self, o: &Totals) {
        self.rounds += o.rounds;
        self.workers += o.workers;
        self.kills += o.kills;
        self.stops += o.stops;
        self.hangs += o.hangs;
        self.failed_attaches += o.failed_attaches;
        self.leaked_qids += o.leaked_qids;
        self.lost_writes += o.lost_writes;
        self.bad_blocks += o.bad_blocks;
        self.errors += o.errors;
        self.leftovers += o.leftovers;
        self.acked_writes += o.acked_writes;
        self.max_verify_attach_ms = self.max_verify_attach_ms.max(o.max_verify_attach_ms);
    }

    /// The one-line summary.
    pub fn summary(&self) -> String {
        format!(
            "TORTURE SUMMARY rounds={} workers={} kills={} stops={} hangs={} failed_attaches={} leaked_qids={} lost_writes={} bad_blocks={} errors={} leftovers={} acked_writes={} max_verify_attach_ms={}",
            self.rounds,
            self.workers,
            self.kills,
            self.stops,
            self.hangs,
            self.failed_attaches,
            self.leaked_qids,
            self.lost_writes,
            self.bad_blocks,
            self.errors,
            self.leftovers,
            self.acked_writes,
            self.max_verify_attach_ms
        )
    }
}

/// A worker's part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Writer,
    Admin,
    Attacher,
    Tool,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Writer => "writer",
            Role::Admin => "admin",
            Role::Attacher => "attacher",
            Role::Tool => "tool",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    /// SIGSTOPped; SIGCONT due at this instant.
    Stopped(Instant),
    Killed,
}

struct Worker {
    name: String,
    role: Role,
    proc: Option<Proc>,
    /// Its process group (its pid: each worker leads a group of its own).
    pgid: u32,
    state: State,
    stderr: PathBuf,
    /// What happened to it, for reports.
    history: Vec<String>,
}

/// The verifier attaches within this bound or the attach counts as failed.
const VERIFY_ATTACH_BOUND_MS: u64 = 5000;

/// One round's world.
struct Round<'a> {
    opts: &'a Opts,
    dir: RunDir,
    group: u32,
    epoch: u64,
    rng: Rng,
    workers: Vec<Worker>,
    /// `log:lba:blocks` of every writer started.
    writers: Vec<String>,
    t: Totals,
    notes: Vec<String>,
    start: Instant,
    /// The software controller's process, as the verifier saw it.
    sim_pid: Option<u32>,
}

/// Runs the rounds; prints a line per round with findings (every round with `verbose`)
/// and the summary. Returns the totals.
pub fn run(opts: &Opts) -> Totals {
    let mut total = Totals::default();
    let mut rng = Rng::new(opts.seed);
    let start = Instant::now();
    println!(
        "torture: {} rounds, seed {:#x}, ~{} ms per round, {}",
        opts.rounds, opts.seed, opts.time_per_round, opts.trid
    );
    for index in 0..opts.rounds {
        let seed = rng.next();
        let (t, notes) = match round(opts, index, seed) {
            Ok(r) => r,
            Err(e) => {
                // The harness itself failed (could not make a directory, start a process).
                let t = Totals {
                    rounds: 1,
                    errors: 1,
                    ..Default::default()
                };
                (t, vec![format!("round could not run: {e}")])
            }
        };
        total.add(&t);
        if opts.verbose || t.findings() > 0 || (index + 1) % 50 == 0 {
            println!(
                "round {index} seed {seed:#x}: workers {} kills {} stops {} acked {} findings {} ({} s total)",
                t.workers,
                t.kills,
                t.stops,
                t.acked_writes,
                t.findings(),
                start.elapsed().as_secs()
            );
            for n in &notes {
                println!("  {n}");
            }
        }
    }
    println!("{}", total.summary());
    total
}

/// Runs round `index` from `seed`.
fn round(opts: &Opts, index: u64, seed: u64) -> Result<(Totals, Vec<String>), String> {
    let mut rng = Rng::new(seed);
    let dir = RunDir::new(&format!("torture-{index}"))?;
    let mut r = Round {
        opts,
        dir,
        group: 1 + (index % 60000) as u32,
        epoch: rng.next(),
        rng,
        workers: Vec::new(),
        writers: Vec::new(),
        t: Totals {
            rounds: 1,
            ..Default::default()
        },
        notes: Vec::new(),
        start: Instant::now(),
        sim_pid: None,
    };
    r.play()?;
    Ok((r.t, r.notes))
}

impl Round<'_> {
    fn note(&mut self, s: String) {
        self.notes.push(s);
    }

    fn command(&self, role: &str, stop: &Path, seed: u64) -> Result<Command, String> {
        let mut cmd = self.dir.rerun(role)?;
        cmd.env(STOP_VAR, stop)
            .env("NVME_TORTURE_TRID", &self.opts.trid)
            .env("NVME_TORTURE_GROUP", self.group.to_string())
            .env("NVME_TORTURE_NSID", self.opts.nsid.to_string())
            .env("NVME_TORTURE_EPOCH", self.epoch.to_string())
            .env("NVME_TORTURE_SEED", seed.to_string());
        Ok(cmd)
    }

    fn random_role(&mut self) -> Role {
        let tool = self.opts.nvmectl.is_some();
        match self.rng.below(10) {
            0..=3 => Role::Writer,
            4 | 5 => Role::Admin,
            6 | 7 => Role::Attacher,
            _ if tool => Role::Tool,
            _ => Role::Writer,
        }
    }

    /// Starts a worker in `role`, in a process group of its own.
    fn spawn(&mut self, role: Role) -> Result<usize, String> {
        use std::os::unix::process::CommandExt;
        let i = self.workers.len();
        let name = format!("{}#{i}", role.name());
        let seed = self.rng.next();
        let stop = self.dir.path().join("stop-workers");
        let mut cmd = self.command(role.name(), &stop, seed)?;
        let stderr = self.dir.path().join(format!("{name}.stderr"));
        let file =
            std::fs::File::create(&stderr).map_err(|e| format!("{}: {e}", stderr.display()))?;
        cmd.stderr(file).process_group(0);
        match role {
            Role::Writer => {
                let w = self.writers.len() as u64;
                let lba = self.opts.lba + w * self.opts.blocks;
                let log = self.dir.path().join(format!("writer{w}.log"));
                cmd.env("NVME_TORTURE_LOG", &log)
                    .env("NVME_TORTURE_LBA", lba.to_string())
                    .env("NVME_TORTURE_BLOCKS", self.opts.blocks.to_string());
                self.writers
                    .push(format!("{}:{lba}:{}", log.display(), self.opts.blocks));
            }
            Role::Tool => {
                let exe = self
                    .opts
                    .nvmectl
                    .as_ref()
                    .expect("tool workers need nvmectl");
                cmd.env("NVME_TORTURE_NVMECTL", exe);
            }
            Role::Admin | Role::Attacher => {}
        }
        let proc = Proc::spawn(&name, &mut cmd)?.with_wait(self.opts.bound);
        self.t.workers += 1;
        self.workers.push(Worker {
            name,
            role,
            pgid: proc.pid(),
            proc: Some(proc),
            state: State::Running,
            stderr,
            history: vec![format!("started at {} ms", self.ms())],
        });
        Ok(i)
    }

    fn ms(&self) -> u128 {
        self.start.elapsed().as_millis()
    }

    fn signal(&mut self, i: usize, sig: Signal) {
        let at = self.ms();
        let w = &mut self.workers[i];
        let pid = w.proc.as_ref().expect("not finished").pid();
        // The process is our child and not reaped yet (we reap only when finishing it), so
        // its pid (and process group id) cannot have been reused.
        let _ = killpg(Pid::from_raw(pid as i32), sig);
        w.history.push(format!("{sig:?} at {at} ms"));
    }

    /// Live (not killed) workers that are running or stopped.
    fn targets(&mut self) -> Vec<usize> {
        (0..self.workers.len())
            .filter(|&i| self.workers[i].state != State::Killed)
            .collect()
    }

    fn play(&mut self) -> Result<(), String> {
        // The primary, then the keeper.
        let first = if self.rng.chance(70) {
            Role::Writer
        } else {
            Role::Admin
        };
        let p = self.spawn(first)?;
        if let Err(e) = self.workers[p]
            .proc
            .as_mut()
            .expect("running")
            .line("READY")
        {
            self.t.failed_attaches += 1;
            self.note(format!("the first worker did not attach: {e}"));
            return Ok(());
        }
        let keeper_stop = self.dir.path().join("stop-keeper");
        let mut cmd = self.command("keeper", &keeper_stop, 0)?;
        cmd.stderr(std::process::Stdio::inherit());
        let mut keeper = Proc::spawn("keeper", &mut cmd)?.with_wait(self.opts.bound);
        if let Err(e) = keeper.line("READY") {
            self.t.failed_attaches += 1;
            self.note(format!("the keeper did not attach: {e}"));
            return Ok(());
        }
        for _ in 0..self.rng.range(1, 4) {
            let role = self.random_role();
            self.spawn(role)?;
        }

        // Faults.
        let t = self.opts.time_per_round;
        let run_for = Duration::from_millis(self.rng.range(t / 2, t + t / 2));
        let mut events: Vec<Duration> = (0..self.rng.range(0, 4))
            .map(|_| Duration::from_millis(self.rng.below(run_for.as_millis() as u64 + 1)))
            .collect();
        events.sort();
        let begin = Instant::now();
        let mut next = events.into_iter().peekable();
        while begin.elapsed() < run_for || next.peek().is_some() {
            let now = Instant::now();
            for i in 0..self.workers.len() {
                if let State::Stopped(until) = self.workers[i].state {
                    if now >= until {
                        self.signal(i, Signal::SIGCONT);
                        self.workers[i].state = State::Running;
                    }
                }
            }
            if next.peek().is_some_and(|&at| begin.elapsed() >= at) {
                next.next();
                self.fault();
            }
            std::thread::sleep(Duration::from_millis(2));
        }

        // Stop the survivors.
        for i in 0..self.workers.len() {
            if let State::Stopped(_) = self.workers[i].state {
                self.signal(i, Signal::SIGCONT);
                self.workers[i].state = State::Running;
            }
        }
        std::fs::write(self.dir.path().join("stop-workers"), b"")
            .map_err(|e| format!("stop file: {e}"))?;
        for i in 0..self.workers.len() {
            self.finish(i);
        }
        self.wait_for_orphans();

        // Check.
        self.verify();

        // The keeper leaves last; the group and the controller process must go.
        std::fs::write(&keeper_stop, b"").map_err(|e| format!("stop file: {e}"))?;
        match keeper.finish_by(Instant::now() + self.opts.bound) {
            Ok(e) if e.code == Some(0) && e.errors.is_empty() => {}
            Ok(e) => {
                self.t.errors += 1;
                self.note(format!("keeper: exit {:?}, {:?}", e.code, e.errors));
            }
            Err(e) => {
                self.t.hangs += 1;
                self.note(format!("HANG keeper did not leave: {e}"));
            }
        }
        let gdir = self.dir.group_dir(self.group);
        if let Err(e) = wait_until(
            "the group directory is removed",
            Duration::from_secs(5),
            || !gdir.exists(),
        ) {
            self.t.leftovers += 1;
            self.note(format!("{e}: {}", gdir.display()));
        }
        if let Some(pid) = self.sim_pid {
            if let Err(e) = wait_until(
                "the software controller's process exits",
                Duration::from_secs(5),
                || !pid_alive(pid),
            ) {
                self.t.leftovers += 1;
                self.note(format!("{e} (pid {pid})"));
            }
        }
        Ok(())
    }

    /// One fault: SIGKILL or SIGSTOP (SIGCONT later) to a random live worker; after a kill,
    /// sometimes a new worker.
    fn fault(&mut self) {
        let targets = self.targets();
        if targets.is_empty() {
            return;
        }
        let i = targets[self.rng.below(targets.len() as u64) as usize];
        if self.rng.chance(60) {
            self.signal(i, Signal::SIGKILL);
            self.workers[i].state = State::Killed;
            self.t.kills += 1;
            if self.rng.chance(50) {
                let role = self.random_role();
                if let Err(e) = self.spawn(role) {
                    self.t.errors += 1;
                    self.note(format!("starting a {} worker: {e}", role.name()));
                }
            }
        } else if self.workers[i].state == State::Running {
            self.signal(i, Signal::SIGSTOP);
            let delay = Duration::from_millis(self.rng.range(5, 300));
            self.workers[i].state = State::Stopped(Instant::now() + delay);
            self.t.stops += 1;
        }
    }

    /// Waits for worker `i` to exit (a killed one is only reaped) and records what it says.
    fn finish(&mut self, i: usize) {
        let bound = self.opts.bound;
        let w = &mut self.workers[i];
        let mut proc = w.proc.take().expect("finished once");
        let pid = proc.pid();
        let deadline = Instant::now() + bound;
        while proc.running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let killed = w.state == State::Killed;
        let (name, role, history) = (w.name.clone(), w.role, w.history.join(", "));
        let stderr_path = w.stderr.clone();
        if proc.running() {
            let threads = threads_of(pid);
            let e = proc.finish_by(Instant::now()).err().unwrap_or_default();
            self.t.hangs += 1;
            self.note(format!(
                "HANG {name} ({}) did not exit within {} s of the stop ({history}); its threads: {threads}; {e}",
                role.name(),
                bound.as_secs()
            ));
            return;
        }
        let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        match proc.finish_by(Instant::now()) {
            Ok(exit) => self.account(&name, role, killed, &exit, &stderr, &history),
            Err(e) => {
                self.t.errors += 1;
                self.note(format!("{name}: {e}"));
            }
        }
    }

    fn account(
        &mut self,
        name: &str,
        role: Role,
        killed: bool,
        exit: &Exit,
        stderr: &str,
        history: &str,
    ) {
        for line in exit.stdout.lines() {
            if line.starts_with("HANG") {
                self.t.hangs += 1;
                self.note(format!("{name}: {line}"));
            }
        }
        if !exit.errors.is_empty() {
            for e in &exit.errors {
                if e.starts_with("ATTACH-ERROR") {
                    self.t.failed_attaches += 1;
                } else {
                    self.t.errors += 1;
                }
            }
            self.note(format!(
                "{name} ({}): {:?} ({history}); stderr: {}",
                role.name(),
                exit.errors,
                stderr.trim()
            ));
        } else if !killed && exit.code != Some(0) {
            self.t.errors += 1;
            self.note(format!(
                "{name} ({}): exit status {:?} ({history}); stderr: {}",
                role.name(),
                exit.code,
                stderr.trim()
            ));
        }
    }

    /// Waits until no process is left in the workers' process groups: a killed tool
    /// worker's `nvmectl` gets the same SIGKILL but is not its parent's to wait for, and
    /// may still be dying (a member whose liveness lock is still held, with its queues)
    /// when the worker itself has been reaped. Zombies do not count (their descriptors and
    /// locks are gone). One that is still there after the bound is a hang.
    fn wait_for_orphans(&mut self) {
        let groups: Vec<u32> = self.workers.iter().map(|w| w.pgid).collect();
        let start = Instant::now();
        loop {
            let left = live_in_groups(&groups);
            if left.is_empty() {
                if start.elapsed() > Duration::from_millis(100) {
                    self.note(format!(
                        "waited {} ms for workers' children to exit",
                        start.elapsed().as_millis()
                    ));
                }
                return;
            }
            if start.elapsed() > self.opts.bound {
                self.t.hangs += 1;
                self.note(format!(
                    "HANG processes of the workers' process groups still there {} s after the workers exited: {}",
                    self.opts.bound.as_secs(),
                    left.join(", ")
                ));
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The fresh attach and the checks.
    fn verify(&mut self) {
        let cmd = self.command("verify", &self.dir.path().join("stop-verify"), 0);
        let mut cmd = match cmd {
            Ok(c) => c,
            Err(e) => {
                self.t.errors += 1;
                self.note(e);
                return;
            }
        };
        cmd.env("NVME_TORTURE_WRITERS", self.writers.join(";"))
            .stderr(std::process::Stdio::piped());
        let exit =
            Proc::spawn("verify", &mut cmd).and_then(|p| p.with_wait(self.opts.bound * 3).finish());
        let exit = match exit {
            Ok(e) => e,
            Err(e) => {
                self.t.hangs += 1;
                self.note(format!("HANG verify: {e}"));
                return;
            }
        };
        let mut seen_verified = false;
        for line in exit.stdout.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            match f[0] {
                "ATTACHED" => {
                    let ms: u64 = f.get(1).and_then(|s| s.parse().ok()).unwrap_or(u64::MAX);
                    self.t.max_verify_attach_ms = ms;
                    if ms > VERIFY_ATTACH_BOUND_MS {
                        self.t.failed_attaches += 1;
                        self.note(format!("the verifier took {ms} ms to attach"));
                    }
                }
                "QIDS" => {
                    let n: u64 = f.get(1).and_then(|s| s.parse().ok()).unwrap_or(u64::MAX);
                    if n != 0 {
                        self.t.leaked_qids += n;
                        self.note(format!("{n} queue ids in use after every worker left"));
                    }
                }
                "BAD" | "WRITER"
                    if line.contains("bad-blocks 0") && line.contains("lost-blocks 0") => {}
                "BAD" | "WRITER" => self.note(line.to_string()),
                "VERIFIED" => {
                    seen_verified = true;
                    let num = |k: &str| {
                        f.iter()
                            .position(|&x| x == k)
                            .and_then(|p| f.get(p + 1))
                            .and_then(|s| s.parse::<u64>().ok())
                            .unwrap_or(0)
                    };
                    self.t.acked_writes += num("acked");
                    self.t.lost_writes += num("lost-blocks");
                    self.t.bad_blocks += num("bad-blocks");
                }
                _ => {}
            }
        }
        if exit.errors.iter().any(|e| e.starts_with("ATTACH-ERROR")) {
            self.t.failed_attaches += 1;
            self.note(format!(
                "verifier: {:?}; stderr {}",
                exit.errors,
                exit.stderr.trim()
            ));
        } else if !seen_verified || exit.code != Some(0) {
            self.t.errors += 1;
            self.note(format!(
                "verifier: exit {:?} {:?}; stderr {}",
                exit.code,
                exit.errors,
                exit.stderr.trim()
            ));
        }
    }
}

/// `pid (comm) state` of every process that is not a zombie and whose process group is one
/// of `groups`.
fn live_in_groups(groups: &[u32]) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (head, rest) = stat.rsplit_once(')')?;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let (state, pgrp) = (*f.first()?, f.get(2)?.parse::<u32>().ok()?);
            (state != "Z" && groups.contains(&pgrp)).then(|| {
                let comm = head.split_once('(').map_or("", |(_, c)| c);
                format!("{pid} ({comm}) {state}")
            })
        })
        .collect()
}

/// `name state wchan` of every thread of `pid`: where a hung process waits.
fn threads_of(pid: u32) -> String {
    let mut out = String::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return "(gone)".into();
    };
    for t in tasks.flatten() {
        let p = t.path();
        let read = |f: &str| std::fs::read_to_string(p.join(f)).unwrap_or_default();
        let stat = read("stat");
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next().map(str::to_string))
            .unwrap_or_default();
        let _ = write!(
            out,
            "[{} {} {}] ",
            read("comm").trim(),
            state,
            read("wchan").trim()
        );
    }
    out
}
