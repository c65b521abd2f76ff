//! A worker thread: pinned to its core, it owns the queue pairs and buffers of its
//! namespaces and keeps `qd` I/Os in flight on each, resubmitting a slot as soon as its I/O
//! completes.
//!
//! The I/O path allocates nothing and reads the clock once per polling round, not per I/O:
//! every completion found in a round is stamped with the time after the round, and every
//! I/O submitted in the round with the same time (the doorbell is written right after).
//! The clock is the TSC where it is constant-rate ([`super::clock`]): `Instant::now()` costs
//! 25 ns on a host with a vDSO clock but about 1 us in a TCG guest.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use nvme_host_linux::nvme_core::SubmitError;
use nvme_host_linux::{Controller, DmaBuffer, Error as DriverError, IoQueuePair, QueueOptions};

use super::args::Config;
use super::clock::Clock;
use super::lba::{LbaGen, Mix, XorShift64};
use super::report::Row;
use super::stats::Stats;
use super::Error;

/// How long the workers wait for outstanding I/O after the run before giving up on it.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest sleep on an interrupt (`--interrupt`): the loop looks at the clock, the
/// other queue pairs and the stop flag at least this often.
const SLEEP_STEP: Duration = Duration::from_millis(10);

/// One namespace assigned to one worker.
#[derive(Clone, Debug)]
pub struct Job {
    /// The controller.
    pub ctrl: Controller,
    /// The controller's index among the `-r` controllers.
    pub ctrl_index: usize,
    /// Namespace id.
    pub nsid: u32,
    /// `SIM (sim) NSID 1`.
    pub name: String,
    /// The first LBA the run uses (`--lba-range`; 0 otherwise).
    pub first_lba: u64,
    /// Blocks the run uses from `first_lba` (the namespace's size without `--lba-range`).
    pub blocks: u64,
    /// Block size in bytes.
    pub block_size: u32,
    /// Entries of each I/O queue.
    pub queue_entries: u32,
    /// Commands in flight at most on each I/O queue (the ring may be larger).
    pub queue_requests: u32,
}

/// What one worker does.
#[derive(Debug)]
pub struct WorkerPlan {
    /// Its index among the workers.
    pub index: usize,
    /// The core it is pinned to.
    pub core: usize,
    /// Its namespaces.
    pub jobs: Vec<Job>,
}

/// A counter on its own cache lines (no false sharing between workers).
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Progress(pub AtomicU64);

/// State shared by the workers and the main thread.
#[derive(Debug)]
pub struct Shared {
    /// Set to stop every worker (an I/O error without `-Q`, or a failed setup).
    pub stop: AtomicBool,
    /// A worker's setup failed: nobody starts.
    pub setup_failed: AtomicBool,
    /// I/Os completed so far by each worker (warm-up included), for the per-second line.
    pub progress: Box<[Progress]>,
    /// Workers report their setup here and wait for the main thread's go.
    pub gate: StartGate,
}

impl Shared {
    /// State for `workers` workers and the main thread.
    pub fn new(workers: usize) -> Shared {
        Shared {
            stop: AtomicBool::new(false),
            setup_failed: AtomicBool::new(false),
            progress: (0..workers).map(|_| Progress::default()).collect(),
            gate: StartGate::default(),
        }
    }
}

/// Where the workers wait, after their setup, for the main thread to start (or cancel) the
/// run: every worker starts at the same moment, and none starts if any setup failed.
#[derive(Debug, Default)]
pub struct StartGate {
    /// (workers set up, the decision once made).
    state: Mutex<(usize, Option<bool>)>,
    changed: Condvar,
}

impl StartGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, Option<bool>)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A worker is set up (or failed): waits for the decision and returns it.
    pub fn arrive_and_wait(&self) -> bool {
        let mut s = self.lock();
        s.0 += 1;
        self.changed.notify_all();
        loop {
            if let Some(go) = s.1 {
                return go;
            }
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// A worker that will not wait for the decision (it is unwinding) counts as arrived.
    fn arrive(&self) {
        self.lock().0 += 1;
        self.changed.notify_all();
    }

    /// The main thread: waits until `workers` have arrived.
    pub fn wait_for(&self, workers: usize) {
        let mut s = self.lock();
        while s.0 < workers {
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The main thread: starts the run (`true`) or cancels it.
    pub fn open(&self, go: bool) {
        self.lock().1 = Some(go);
        self.changed.notify_all();
    }
}

/// What a worker brings back.
#[derive(Debug, Default)]
pub struct WorkerOutcome {
    /// One row per namespace.
    pub rows: Vec<Row>,
    /// An I/O failed and `-Q` was not given.
    pub failed: bool,
    /// I/Os that had not completed when the drain timed out.
    pub lost: u64,
}

/// Prints I/O errors and decides whether the run goes on (`-Q N`: yes, printing every Nth).
#[derive(Debug)]
struct ErrorPolicy {
    every: Option<u64>,
    seen: u64,
}

impl ErrorPolicy {
    #[cold]
    fn handle(&mut self, name: &str, core: usize, e: &DriverError, stop: &AtomicBool) {
        self.seen += 1;
        match self.every {
            None => {
                eprintln!("I/O error on {name} from core {core}: {e}");
                stop.store(true, Ordering::Relaxed);
            }
            Some(n) => {
                if (self.seen - 1).is_multiple_of(n) {
                    eprintln!(
                        "I/O error on {name} from core {core}: {e} (error {}, printing every {n})",
                        self.seen
                    );
                }
            }
        }
    }

    fn continues(&self) -> bool {
        self.every.is_some()
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    submitted_ns: u64,
    read: bool,
}

/// One namespace on this worker: `qd` slots, slot `i` using bytes `i*io_size..` of the
/// buffer and queue pair `i % P`; the slot index is the I/O's token.
struct NsRun {
    name: String,
    nsid: u32,
    core: usize,
    io_size: usize,
    qpairs: Vec<IoQueuePair>,
    buf: DmaBuffer,
    slots: Box<[Slot]>,
    /// Slots waiting to be submitted (capacity `qd`: never grows). A polling round pushes
    /// the slots it completes; those from `reaped_from` on are accounted by `complete`.
    pending: Vec<u32>,
    /// Length of `pending` when the polling round started.
    reaped_from: usize,
    /// Slots whose I/O a controller reset aborted in this round (not accounted; rare).
    aborted: Vec<u32>,
    lba: LbaGen,
    mix: Mix,
    rng: XorShift64,
    stats: Stats,
    in_flight: u64,
    limit: Option<u64>,
    draining: bool,
    errors: ErrorPolicy,
}

impl NsRun {
    fn new(
        job: &Job,
        cfg: &Config,
        worker: usize,
        workers: usize,
        core: usize,
    ) -> Result<NsRun, Error> {
        let qd = cfg.io_depth as usize;
        let context = |what: &str, e: DriverError| {
            Error::new(format!("{} on core {core}: {what}: {e}", job.name))
        };
        let lba = LbaGen::new(
            job.blocks,
            job.block_size,
            cfg.io_size,
            cfg.workload.random,
            worker as u64,
            workers as u64,
        )
        .map_err(|e| Error::new(format!("{}: {e}", job.name)))?
        .starting_at(job.first_lba);
        let qpairs = (0..cfg.qpairs)
            .map(|_| {
                let opts = QueueOptions::new(job.queue_entries)
                    .with_requests(job.queue_requests)
                    .with_interrupts(cfg.interrupts);
                let qp = job.ctrl.alloc_io_queue(opts)?;
                if let Some(why) = qp.interrupt_fallback() {
                    eprintln!("nvme-perf: {}: {why}", job.name);
                }
                Ok(qp)
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| context("creating an I/O queue pair", e))?;
        let buf_len = qd
            .checked_mul(cfg.io_size)
            .ok_or_else(|| Error::new(format!("-q {qd} x -o {} overflows", cfg.io_size)))?;
        let buf = job
            .ctrl
            .alloc_dma(buf_len)
            .map_err(|e| context("allocating the I/O buffers", e))?;
        Ok(NsRun {
            name: job.name.clone(),
            nsid: job.nsid,
            core,
            io_size: cfg.io_size,
            qpairs,
            buf,
            slots: vec![Slot::default(); qd].into_boxed_slice(),
            pending: (0..qd as u32).rev().collect(),
            reaped_from: qd,
            aborted: Vec::with_capacity(qd),
            lba,
            mix: Mix::new(cfg.workload.read_percent),
            rng: XorShift64::new(((worker as u64) << 32) ^ job.nsid as u64 ^ 0x6e76_6d65),
            stats: Stats::new(cfg.latency_level > 0),
            in_flight: 0,
            limit: cfg.number_ios,
            draining: false,
            errors: ErrorPolicy {
                every: cfg.continue_on_error,
                seen: 0,
            },
        })
    }

    /// May another I/O start without exceeding `-d`?
    #[inline]
    fn may_submit(&self) -> bool {
        !self.draining
            && self
                .limit
                .is_none_or(|n| self.stats.ios + self.in_flight < n)
    }

    /// Done: nothing in flight and nothing more to start.
    fn finished(&self) -> bool {
        self.in_flight == 0 && !self.may_submit()
    }

    /// Reaps completions onto `pending` (from `reaped_from` on); returns how many. With
    /// `sleep` (interrupt mode, nothing completed in the last round), the first queue pair
    /// with I/O outstanding sleeps until its interrupt fires or [`SLEEP_STEP`] passes.
    #[inline]
    fn poll(&mut self, stop: &AtomicBool, mut sleep: bool) -> usize {
        let NsRun {
            qpairs,
            pending,
            reaped_from,
            aborted,
            stats,
            errors,
            name,
            core,
            draining,
            ..
        } = self;
        *reaped_from = pending.len();
        let mut n = 0;
        for qp in qpairs.iter_mut() {
            let on_completion = |token: u64, result: Result<(), DriverError>| match result {
                Ok(()) => pending.push(token as u32),
                // A controller reset (e.g. `nvmectl -i N reset` beside this run) aborted
                // the I/O: it is not counted, and its slot is used again.
                Err(DriverError::AbortedByReset) => {
                    aborted.push(token as u32);
                    stats.aborted_by_reset += 1;
                }
                Err(e) => {
                    pending.push(token as u32);
                    stats.errors += 1;
                    errors.handle(name, *core, &e, stop);
                    *draining |= !errors.continues();
                }
            };
            n += if sleep && qp.outstanding() > 0 {
                sleep = false;
                // An error of the wait itself (the controller is gone) shows on the next
                // poll as the I/O's errors or the drain's timeout.
                qp.wait(Some(SLEEP_STEP), usize::MAX, on_completion)
                    .unwrap_or(0)
            } else {
                qp.process_completions(usize::MAX, on_completion)
            };
        }
        n
    }

    /// Accounts the I/Os reaped by [`poll`](Self::poll), which finished by `now_ns`.
    #[inline]
    fn complete(&mut self, now_ns: u64) {
        let reaped = self.pending.get(self.reaped_from..).unwrap_or_default();
        for &slot in reaped {
            let s = self.slots[slot as usize];
            self.stats
                .record(now_ns.saturating_sub(s.submitted_ns), s.read);
        }
        self.in_flight -= reaped.len() as u64;
        self.reaped_from = self.pending.len();
        if !self.aborted.is_empty() {
            self.in_flight -= self.aborted.len() as u64;
            self.pending.append(&mut self.aborted);
        }
    }

    /// Starts I/O on free slots until the queue is full or the run says stop, then writes
    /// the doorbells.
    #[inline]
    fn submit(&mut self, now_ns: u64, stop: &AtomicBool) {
        let mut started = false;
        while let Some(&slot) = self.pending.last() {
            if !self.may_submit() {
                break;
            }
            let read = self.mix.next_is_read(&mut self.rng);
            let lba = self.lba.next_lba(&mut self.rng);
            let start = slot as usize * self.io_size;
            let qpairs = self.qpairs.len();
            let qp = &mut self.qpairs[slot as usize % qpairs];
            let result = match self.buf.slice(start..start + self.io_size) {
                Ok(buf) if read => qp.read(self.nsid, lba, buf, slot as u64),
                Ok(buf) => qp.write(self.nsid, lba, buf, slot as u64),
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => {
                    self.pending.pop();
                    self.slots[slot as usize] = Slot {
                        submitted_ns: now_ns,
                        read,
                    };
                    self.in_flight += 1;
                    started = true;
                }
                // Full, or a controller reset under way: try again after the next poll.
                Err(DriverError::Submit(SubmitError::QueueFull) | DriverError::AbortedByReset) => {
                    break
                }
                Err(e) => {
                    self.stats.errors += 1;
                    self.errors.handle(&self.name, self.core, &e, stop);
                    if !self.errors.continues() {
                        self.draining = true;
                    }
                    break;
                }
            }
        }
        if started {
            self.qpairs.iter_mut().for_each(IoQueuePair::ring);
        }
    }
}

/// Makes a panicking worker harmless to the others: one that unwinds before it reached the
/// start gate still arrives there (as a failed setup, so nobody starts and the main thread
/// is not left waiting for it), and one that unwinds later stops the run.
struct UnwindGuard<'a> {
    shared: &'a Shared,
    arrived: bool,
}

impl Drop for UnwindGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.shared.stop.store(true, Ordering::Relaxed);
            if !self.arrived {
                self.shared.setup_failed.store(true, Ordering::Relaxed);
                self.shared.gate.arrive();
            }
        }
    }
}

/// Runs one worker: setup, meet the others, I/O until the time (or `-d`) is up, drain.
pub fn run_worker(
    plan: WorkerPlan,
    cfg: Arc<Config>,
    shared: Arc<Shared>,
    workers: usize,
) -> Result<WorkerOutcome, Error> {
    let mut guard = UnwindGuard {
        shared: &shared,
        arrived: false,
    };
    let setup = setup(&plan, &cfg, workers);
    if setup.is_err() {
        shared.setup_failed.store(true, Ordering::Relaxed);
    }
    guard.arrived = true;
    let go = shared.gate.arrive_and_wait();
    let mut runs = setup?;
    if !go {
        return Ok(WorkerOutcome::default());
    }
    let (elapsed, lost) = io_loop(&mut runs, &cfg, &shared, plan.index);
    let failed = runs
        .iter()
        .any(|r| r.errors.seen > 0 && !r.errors.continues());
    let rows = runs
        .into_iter()
        .map(|r| Row {
            name: r.name,
            nsid: r.nsid,
            core: plan.core,
            elapsed_s: elapsed.as_secs_f64(),
            stats: r.stats,
        })
        .collect();
    Ok(WorkerOutcome { rows, failed, lost })
}

fn setup(plan: &WorkerPlan, cfg: &Config, workers: usize) -> Result<Vec<NsRun>, Error> {
    crate::sys::pin_current_thread(plan.core).map_err(|e| {
        Error::new(format!(
            "pinning the worker thread to core {}: {e}",
            plan.core
        ))
    })?;
    let runs = plan
        .jobs
        .iter()
        .map(|job| NsRun::new(job, cfg, plan.index, workers, plan.core))
        .collect::<Result<Vec<_>, _>>()?;
    test_hook_panic_in_setup(plan.index);
    Ok(runs)
}

/// The environment variable of [`test_hook_panic_in_setup`].
pub const PANIC_IN_SETUP_ENV: &str = "NVME_PERF_TEST_PANIC_IN_SETUP";

/// Test hook, for the integration test of a worker that dies before it reports ready:
/// `NVME_PERF_TEST_PANIC_IN_SETUP=<worker index>` makes that worker panic at the end of
/// its setup (its queue pairs and buffers exist and are released as it unwinds). No
/// other use; unset, it costs one environment look-up per worker at start-up.
fn test_hook_panic_in_setup(worker: usize) {
    if std::env::var(PANIC_IN_SETUP_ENV).is_ok_and(|v| v.trim() == worker.to_string()) {
        panic!("test hook {PANIC_IN_SETUP_ENV}={worker}: worker {worker} panics during its setup");
    }
}

/// The end of the warm-up and of the run, in nanoseconds from the start, saturating: `-a`
/// and `-t` are bounded by the options' check, but a wrapped end (`as u64` of a u128, then
/// an addition that overflowed) once ended a run after one I/O.
fn phase_ends_ns(warmup: Duration, time: Duration) -> (u64, u64) {
    let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    let warmup_end = ns(warmup);
    (warmup_end, warmup_end.saturating_add(ns(time)))
}

/// The I/O loop. Returns the measured time (after the warm-up, until the last completion)
/// and the number of I/Os lost if the drain timed out.
fn io_loop(runs: &mut [NsRun], cfg: &Config, shared: &Shared, index: usize) -> (Duration, u64) {
    let clock = Clock::new();
    let (warmup_end, run_end) = phase_ends_ns(cfg.warmup, cfg.time);
    let mut measuring = warmup_end == 0;
    let mut measure_start = 0;
    let mut drain_deadline = None;
    let mut completed = 0u64;
    for r in runs.iter_mut() {
        r.submit(0, &shared.stop);
    }
    let mut idle = false;
    loop {
        let before = completed;
        // Interrupt mode: when the last round completed nothing, one run with I/O in flight
        // sleeps on its interrupt.
        let sleeper = (cfg.interrupts && idle)
            .then(|| runs.iter().position(|r| r.in_flight > 0))
            .flatten();
        for (i, r) in runs.iter_mut().enumerate() {
            completed += r.poll(&shared.stop, sleeper == Some(i)) as u64;
        }
        idle = completed == before;
        let now = clock.now_ns();
        for r in runs.iter_mut() {
            r.complete(now);
            r.submit(now, &shared.stop);
        }
        shared.progress[index].0.store(completed, Ordering::Relaxed);
        if !measuring && now >= warmup_end {
            runs.iter_mut().for_each(|r| r.stats.reset());
            measuring = true;
            measure_start = now;
        }
        if drain_deadline.is_none() && (now >= run_end || shared.stop.load(Ordering::Relaxed)) {
            runs.iter_mut().for_each(|r| r.draining = true);
            drain_deadline = Some(now.saturating_add(DRAIN_TIMEOUT.as_nanos() as u64));
        }
        let timed_out = drain_deadline.is_some_and(|d| now >= d);
        if timed_out || runs.iter().all(NsRun::finished) {
            let lost = runs.iter().map(|r| r.in_flight).sum();
            return (Duration::from_nanos(now - measure_start), lost);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_ends_saturate() {
        assert_eq!(
            phase_ends_ns(Duration::from_secs(2), Duration::from_secs(3)),
            (2_000_000_000, 5_000_000_000)
        );
        assert_eq!(phase_ends_ns(Duration::ZERO, Duration::from_secs(1)).0, 0);
        // -a u64::MAX: the run ends never, not at once.
        assert_eq!(
            phase_ends_ns(Duration::from_secs(u64::MAX), Duration::from_secs(1)),
            (u64::MAX, u64::MAX)
        );
        // -t 18446744074: 2^64 ns and a bit.
        assert_eq!(
            phase_ends_ns(Duration::ZERO, Duration::from_secs(18_446_744_074)).1,
            u64::MAX
        );
    }
}
