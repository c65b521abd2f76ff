//! A run: attach the controllers, assign namespaces to workers as SPDK does, launch the
//! workers, print progress once a second on a terminal, then the results.

use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nvme_host_linux::nvme_core::qpair::MAX_BLOCKS_PER_COMMAND;
use nvme_host_linux::{AttachOptions, Controller, Lease, LeaseMode, Role, TransportKind};

use super::args::{self, Config};
use super::report::{self, JsonContext, Report};
use super::worker::{self, Job, Shared, WorkerOutcome, WorkerPlan};
use super::Error;

/// How a run ended.
#[derive(Debug)]
pub struct Outcome {
    /// The results.
    pub report: Report,
    /// An I/O failed and `-Q` was not given.
    pub failed: bool,
    /// I/Os that never completed.
    pub lost: u64,
    /// SIGINT or SIGTERM stopped the run early (the report covers the run so far).
    pub interrupted: Option<i32>,
}

impl Outcome {
    /// No I/O error (or `-Q`), nothing lost.
    pub fn success(&self) -> bool {
        !self.failed && self.lost == 0
    }
}

/// Where the start-up lines go: stdout, or stderr when stdout carries JSON.
#[derive(Clone, Copy)]
struct Console {
    json: bool,
}

impl Console {
    fn info(&self, line: &str) {
        if self.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }
}

/// Runs the benchmark described by `cfg` on the controllers of its `-r` options and prints
/// the results (the table, or JSON).
pub fn run(cfg: &Config) -> Result<Outcome, Error> {
    let console = Console { json: cfg.json };
    let cores = select_cores(cfg)?;
    console.info("Initializing NVMe Controllers");
    let ctrls = attach_all(cfg, cores.len(), console)?;
    run_attached(cfg, &cores, &ctrls, console)
}

/// Like [`run`], on controllers the caller attached (the `-r` options are not used): for
/// embedding, and for tests that inject faults into a software controller.
pub fn run_with(cfg: &Config, ctrls: &[Controller]) -> Result<Outcome, Error> {
    let console = Console { json: cfg.json };
    let cores = select_cores(cfg)?;
    run_attached(cfg, &cores, ctrls, console)
}

fn run_attached(
    cfg: &Config,
    cores: &[usize],
    ctrls: &[Controller],
    console: Console,
) -> Result<Outcome, Error> {
    let namespaces = select_namespaces(ctrls, cfg)?;
    // Held until the run is over (dropped at the end of this function).
    let _leases = claim_leases(&namespaces, cfg, console)?;
    let plans = associate_workers(&namespaces, cores, console);
    check_queue_counts(ctrls, &plans, cfg.qpairs)?;
    let most_jobs = plans.iter().map(|p| p.jobs.len()).max().unwrap_or(0);
    args::check_buffer_memory(
        cfg.io_depth,
        cfg.io_size,
        plans.len(),
        most_jobs,
        args::buffer_memory_limit(),
    )?;
    console.info("Initialization complete. Launching workers.");
    let outcomes = launch(plans, cfg, console)?;
    let outcome = Outcome {
        interrupted: crate::signals::requested(),
        failed: outcomes.iter().any(|o| o.failed),
        lost: outcomes.iter().map(|o| o.lost).sum(),
        report: Report {
            io_size: cfg.io_size,
            rows: outcomes.into_iter().flat_map(|o| o.rows).collect(),
        },
    };
    print_results(&outcome.report, cfg);
    Ok(outcome)
}

/// The cores of `-c`, checked against those the process may use; without `-c`, the first
/// core available (core 0 unless the process is restricted).
fn select_cores(cfg: &Config) -> Result<Vec<usize>, Error> {
    let available = crate::sys::available_cores()
        .map_err(|e| Error::new(format!("reading the process's CPU affinity: {e}")))?;
    match &cfg.cores {
        Some(cores) => {
            args::check_cores(
                cores,
                &available,
                cfg.core_mask.as_deref().unwrap_or_default(),
            )?;
            Ok(cores.clone())
        }
        None => available
            .first()
            .map(|&c| vec![c])
            .ok_or_else(|| Error::new("no CPU is available to this process")),
    }
}

fn attach_all(cfg: &Config, workers: usize, console: Console) -> Result<Vec<Controller>, Error> {
    let opts = AttachOptions {
        // The primary of a group asks for the queues; a secondary uses what it was granted.
        io_queues: (workers * cfg.qpairs as usize).clamp(64, u16::MAX as usize - 1) as u16,
        group: cfg.shm_id,
        data_pointer: cfg.data_pointer,
        ..AttachOptions::default()
    };
    cfg.transports
        .iter()
        .map(|trid| {
            let ctrl = Controller::attach_with(trid, &opts)
                .map_err(|e| Error::new(format!("attaching '{trid}': {e}")))?;
            let (vid, did) = ctrl.pci_id();
            console.info(&format!(
                "Attached to NVMe Controller at {} [{vid:04x}:{did:04x}]",
                ctrl.name()
            ));
            if let Some(line) = group_line(&ctrl) {
                console.info(&line);
            }
            Ok(ctrl)
        })
        .collect()
}

/// `Joined shared-memory group 1 as secondary`: the start-up line of a group member
/// (`None` outside a group).
pub fn group_line(ctrl: &Controller) -> Option<String> {
    let id = ctrl.group_id()?;
    let role = match ctrl.role() {
        Role::Primary => "primary",
        Role::Secondary => "secondary",
        Role::Single => return None,
    };
    Some(format!("Joined shared-memory group {id} as {role}"))
}

/// `PCIE (0000:04:00.0) NSID 1`, `SIM (sim) NSID 1`: SPDK's name of a namespace.
pub fn device_name(ctrl: &Controller, nsid: u32) -> String {
    let kind = match ctrl.transport_id().kind {
        TransportKind::Pcie { .. } => "PCIE",
        TransportKind::Sim(_) => "SIM",
        TransportKind::Tcp(_) => "TCP",
    };
    format!("{kind} ({}) NSID {nsid}", ctrl.name())
}

/// The namespaces to use: `ns:N` of a transport id, or all active ones. Checks the I/O
/// size against each and sizes its I/O queues.
fn select_namespaces(ctrls: &[Controller], cfg: &Config) -> Result<Vec<Job>, Error> {
    let mut jobs = Vec::new();
    for (ctrl_index, ctrl) in ctrls.iter().enumerate() {
        let active = ctrl.namespaces();
        let chosen: Vec<_> = match ctrl.transport_id().nsid {
            Some(nsid) => vec![ctrl.namespace(nsid).map_err(|_| {
                let ids: Vec<String> = active.iter().map(|n| n.id().to_string()).collect();
                Error::new(format!(
                    "namespace {nsid} is not an active namespace of {} (active: {})",
                    ctrl.name(),
                    if ids.is_empty() {
                        "none".into()
                    } else {
                        ids.join(", ")
                    }
                ))
            })?],
            None => active.iter().collect(),
        };
        if chosen.is_empty() {
            return Err(Error::new(format!(
                "controller {} has no active namespaces",
                ctrl.name()
            )));
        }
        for ns in chosen {
            let name = device_name(ctrl, ns.id());
            let bs = ns.block_size();
            if !cfg.io_size.is_multiple_of(bs as usize) {
                return Err(Error::new(format!(
                    "I/O size {} is not a multiple of the {bs}-byte block size of {name}",
                    cfg.io_size
                )));
            }
            if (cfg.io_size as u64) > ns.size_bytes() {
                return Err(Error::new(format!(
                    "I/O size {} is larger than {name} ({} bytes)",
                    cfg.io_size,
                    ns.size_bytes()
                )));
            }
            let (first_lba, blocks) = match cfg.lba_range {
                Some(r) => {
                    r.check(ns.blocks(), &name).map_err(Error::new)?;
                    if (cfg.io_size as u64) > r.count.saturating_mul(bs as u64) {
                        return Err(Error::new(format!(
                            "I/O size {} is larger than --lba-range {}:{} ({} blocks of {bs} bytes of {name})",
                            cfg.io_size, r.start, r.count, r.count
                        )));
                    }
                    (r.start, r.count)
                }
                None => (0, ns.blocks()),
            };
            let geometry = QueueGeometry {
                io_depth: cfg.io_depth,
                qpairs: cfg.qpairs,
                io_size: cfg.io_size,
                block_size: bs,
                max_transfer: ctrl.max_transfer(),
                max_entries: ctrl.info().cap.max_queue_entries(),
            };
            let queue_entries = geometry
                .entries(cfg.io_queue_size)
                .map_err(|e| Error::new(format!("{name}: {e}")))?;
            let queue_requests = geometry.requests(queue_entries);
            jobs.push(Job {
                ctrl: ctrl.clone(),
                ctrl_index,
                nsid: ns.id(),
                name,
                first_lba,
                blocks,
                block_size: bs,
                queue_entries,
                queue_requests,
            });
        }
    }
    Ok(jobs)
}

/// `--lease`: a lease of the blocks each namespace's jobs use, held by the caller for the
/// run. A conflict with another process's lease is an error that names that process.
fn claim_leases(jobs: &[Job], cfg: &Config, console: Console) -> Result<Vec<Lease>, Error> {
    let Some(mode) = cfg.lease else {
        return Ok(Vec::new());
    };
    jobs.iter()
        .map(|job| {
            let lbas = job.first_lba..job.first_lba + job.blocks;
            let lease = job
                .ctrl
                .lease(job.nsid, lbas.clone(), mode)
                .map_err(|e| Error::new(format!("{}: {e}", job.name)))?;
            let article = match mode {
                LeaseMode::Exclusive => "an",
                LeaseMode::Shared => "a",
            };
            console.info(&format!(
                "Holding {article} {mode} lease on LBAs {}..{} of {}",
                lbas.start, lbas.end, job.name
            ));
            Ok(lease)
        })
        .collect()
}

/// What decides the size of an I/O queue.
#[derive(Clone, Copy, Debug)]
pub struct QueueGeometry {
    /// `-q`.
    pub io_depth: u32,
    /// `-P`.
    pub qpairs: u32,
    /// `-o`.
    pub io_size: usize,
    /// The namespace's block size.
    pub block_size: u32,
    /// The controller's largest transfer per command.
    pub max_transfer: usize,
    /// The controller's largest queue (CAP.MQES + 1).
    pub max_entries: u32,
}

impl QueueGeometry {
    /// Commands one I/O takes (the driver splits I/Os above the maximum transfer).
    pub fn commands_per_io(&self) -> usize {
        let bs = self.block_size.max(1) as usize;
        let chunk = (self.max_transfer / bs).clamp(1, MAX_BLOCKS_PER_COMMAND as usize) * bs;
        self.io_size.div_ceil(chunk)
    }

    /// Commands this queue pair's share of the queue depth keeps in flight.
    fn commands_in_flight(&self) -> usize {
        let per_qpair = self.io_depth.div_ceil(self.qpairs.max(1)) as usize;
        per_qpair.saturating_mul(self.commands_per_io())
    }

    /// Entries per I/O queue: `requested` if it is valid, else [`DEFAULT_RING_ENTRIES`] or
    /// what this queue pair's share of the queue depth needs if that is more, within the
    /// controller's maximum. (When the queue is smaller than the depth, the rest waits for
    /// free entries.) A ring larger than the commands in flight lets the driver write the
    /// completion queue's head doorbell rarely, as SPDK's perf, which takes the controller's
    /// largest queue, does too.
    pub fn entries(&self, requested: Option<u32>) -> Result<u32, String> {
        let parts = self.commands_per_io();
        let entries = match requested {
            Some(n) if n < 2 || n > self.max_entries => {
                return Err(format!(
                    "--io-queue-size {n} is outside 2..={} (the controller's CAP.MQES+1)",
                    self.max_entries
                ))
            }
            Some(n) => n,
            None => (self.commands_in_flight().saturating_add(1))
                .max(DEFAULT_RING_ENTRIES as usize)
                .clamp(2, self.max_entries as usize) as u32,
        };
        if parts > entries as usize - 1 {
            return Err(format!(
                "an I/O of {} bytes takes {parts} commands (maximum transfer {} bytes), more than an I/O queue of {entries} entries holds; lower -o{}",
                self.io_size,
                self.max_transfer,
                if requested.is_some() { " or raise --io-queue-size" } else { "" }
            ));
        }
        Ok(entries)
    }

    /// Commands in flight at most on a queue of `entries` entries: the queue depth's share
    /// (the driver's per-command memory is sized by it, not by the ring).
    pub fn requests(&self, entries: u32) -> u32 {
        self.commands_in_flight()
            .clamp(1, entries.saturating_sub(1).max(1) as usize) as u32
    }
}

/// Default entries of an I/O queue (within the controller's maximum): large enough that
/// the completion queue's head doorbell goes out about once per thousand completions at
/// low queue depths, small enough (80 KiB of rings) to cost nothing.
pub const DEFAULT_RING_ENTRIES: u32 = 1024;

/// SPDK's association of namespaces with workers: round robin over both lists, as many
/// pairs as the longer list has entries (every namespace is used and every worker busy).
/// Returns (namespace index, worker index) pairs.
pub fn association(namespaces: usize, workers: usize) -> Vec<(usize, usize)> {
    if namespaces == 0 || workers == 0 {
        return Vec::new();
    }
    (0..namespaces.max(workers))
        .map(|i| (i % namespaces, i % workers))
        .collect()
}

fn associate_workers(namespaces: &[Job], cores: &[usize], console: Console) -> Vec<WorkerPlan> {
    let mut plans: Vec<WorkerPlan> = cores
        .iter()
        .enumerate()
        .map(|(index, &core)| WorkerPlan {
            index,
            core,
            jobs: Vec::new(),
        })
        .collect();
    for (ns, w) in association(namespaces.len(), cores.len()) {
        let job = &namespaces[ns];
        console.info(&format!("Associating {} with lcore {}", job.name, cores[w]));
        plans[w].jobs.push(job.clone());
    }
    plans
}

/// Every controller must have granted the queue pairs its jobs need.
fn check_queue_counts(
    ctrls: &[Controller],
    plans: &[WorkerPlan],
    qpairs: u32,
) -> Result<(), Error> {
    for (index, ctrl) in ctrls.iter().enumerate() {
        let jobs = plans
            .iter()
            .flat_map(|p| &p.jobs)
            .filter(|j| j.ctrl_index == index)
            .count();
        let needed = jobs * qpairs as usize;
        let q = ctrl.info().io_queues;
        let granted = q.sq.min(q.cq) as usize;
        if needed > granted {
            return Err(Error::new(format!(
                "controller {} granted {granted} I/O queues; this run needs {needed} (its namespaces x cores x -P {qpairs})",
                ctrl.name()
            )));
        }
    }
    Ok(())
}

/// Spawns the workers, starts them together once all are set up, shows progress, and
/// collects their results.
fn launch(
    plans: Vec<WorkerPlan>,
    cfg: &Config,
    console: Console,
) -> Result<Vec<WorkerOutcome>, Error> {
    let workers = plans.len();
    let shared = Arc::new(Shared::new(workers));
    let config = Arc::new(cfg.clone());
    let mut handles = Vec::with_capacity(workers);
    for plan in plans {
        let (config, for_worker) = (config.clone(), shared.clone());
        // The progress loop sleeps until the next second; a worker that ends wakes it.
        let main = std::thread::current();
        let spawned = std::thread::Builder::new()
            .name(format!("nvme-perf-{}", plan.core))
            .spawn(move || {
                let outcome = worker::run_worker(plan, config, for_worker, workers);
                main.unpark();
                outcome
            });
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                shared.gate.open(false);
                join_all(handles)?;
                return Err(Error::new(format!("starting a worker thread: {e}")));
            }
        }
    }
    shared.gate.wait_for(workers);
    let go = !shared.setup_failed.load(Ordering::Relaxed);
    shared.gate.open(go);
    if go {
        show_progress(&handles, &shared, cfg, console);
    }
    join_all(handles)
}

fn join_all(
    handles: Vec<JoinHandle<Result<WorkerOutcome, Error>>>,
) -> Result<Vec<WorkerOutcome>, Error> {
    let mut outcomes = Vec::with_capacity(handles.len());
    let mut first_error = None;
    for h in handles {
        let name = h.thread().name().unwrap_or("?").to_string();
        match h.join() {
            Ok(Ok(o)) => outcomes.push(o),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(payload) => {
                let what = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "no message".into());
                first_error
                    .get_or_insert(Error::new(format!("worker thread {name} panicked: {what}")));
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(outcomes),
    }
}

/// `NVME_PERF_PROGRESS=1`: once a second, `nvme-perf progress <monotonic s> <I/Os so far>`
/// on stderr (warm-up included), so that the rates of several processes can be compared
/// over the same seconds (`cargo xtask bench-hw --spdk` does, for a group's two members).
pub const PROGRESS_VAR: &str = "NVME_PERF_PROGRESS";

/// Once a second, on a terminal only: `<n> IOPS, <n.nn> MiB/s` over the last second. Stops
/// the workers on SIGINT / SIGTERM ([`crate::signals`]). Sleeps until the next second
/// (a worker that ends, or a signal, wakes it earlier): the main thread must not take CPU
/// time from the workers, which may share its cores (in a TCG guest every wake-up costs
/// tens of microseconds of emulated time).
fn show_progress(
    handles: &[JoinHandle<Result<WorkerOutcome, Error>>],
    shared: &Shared,
    cfg: &Config,
    console: Console,
) {
    let tty = !console.json && std::io::stdout().is_terminal();
    let log = std::env::var_os(PROGRESS_VAR).is_some();
    let start = Instant::now();
    let mut next = start + Duration::from_secs(1);
    let mut last = 0;
    let mut printed = false;
    while !handles.iter().all(JoinHandle::is_finished) {
        if crate::signals::requested().is_some() {
            shared.stop.store(true, Ordering::Relaxed);
        }
        let now = Instant::now();
        if now >= next {
            let total: u64 = shared
                .progress
                .iter()
                .map(|p| p.0.load(Ordering::Relaxed))
                .sum();
            if tty {
                // The second that just ended counts as warm-up if it began during it.
                let warmup = next - Duration::from_secs(1) < start + cfg.warmup;
                let line = report::periodic_line(total - last, cfg.io_size, warmup);
                print!("{line}\r");
                let _ = std::io::stdout().flush();
                printed = true;
            }
            if log {
                eprintln!(
                    "nvme-perf progress {:.3} {total}",
                    nvme_host_linux::steps::monotonic_secs()
                );
            }
            last = total;
            next += Duration::from_secs(1);
        }
        std::thread::park_timeout(next.saturating_duration_since(now));
    }
    if printed {
        println!();
    }
}

fn print_results(report: &Report, cfg: &Config) {
    if cfg.json {
        let context = JsonContext {
            io_depth: cfg.io_depth,
            io_pattern: cfg.workload.name(),
            read_percent: cfg.workload.read_percent,
            time_s: cfg.time.as_secs(),
            warmup_s: cfg.warmup.as_secs(),
        };
        println!("{}", report.json(&context));
        return;
    }
    let mut out = report.table();
    if cfg.latency_level >= 1 {
        out.push_str(&report.percentile_summary());
    }
    if cfg.latency_level >= 2 {
        out.push_str(&report.histograms());
    }
    print!("{out}");
    let _ = std::io::stdout().flush();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::perf::args::Cli;
    use nvme_host_linux::regs::opcode::NvmOpcode;
    use nvme_host_linux::regs::status::MediaErrorStatus;
    use nvme_host_linux::regs::Status;
    use nvme_host_linux::sim::CommandMatch;

    fn config(args: &str) -> Config {
        let argv = ["nvme-perf", "-r", "trtype:sim"]
            .into_iter()
            .chain(args.split_whitespace());
        Cli::parse_args(argv).unwrap().validate().unwrap().0
    }

    fn sim(trid: &str) -> Controller {
        Controller::attach(trid).unwrap()
    }

    fn fail_reads_from(ctrl: &Controller, nth: u64) {
        let status = Status::media(MediaErrorStatus::UnrecoveredReadError);
        ctrl.sim().unwrap().faults().fail_nth(
            CommandMatch::io(NvmOpcode::Read as u8),
            nth,
            status,
            true,
        );
    }

    #[test]
    fn number_ios_is_exact_per_namespace_and_core() {
        // Two namespaces, two queue pairs each, a depth that does not divide evenly.
        let ctrl = sim("trtype:sim nscount:2 size:16M");
        let outcome = run_with(
            &config("-q 7 -o 4k -w randrw -M 50 -t 10 -P 2 -d 500 -L"),
            &[ctrl],
        )
        .unwrap();
        assert!(outcome.success());
        let rows = &outcome.report.rows;
        assert_eq!(rows.len(), 2);
        for r in rows {
            assert_eq!(r.stats.ios, 500, "{}", r.name);
            assert_eq!(r.stats.reads + r.stats.writes, 500);
            assert!(r.stats.reads > 0 && r.stats.writes > 0);
            assert!(r.elapsed_s < 5.0, "-d ends the run early: {}", r.elapsed_s);
            assert_eq!(r.stats.histogram.as_ref().unwrap().len(), 500);
        }
        assert_eq!(rows[1].name, "SIM (sim) NSID 2");
    }

    #[test]
    fn an_lba_range_confines_the_writes_and_its_lease_is_held() {
        let ctrl = sim("trtype:sim size:1M lbasize:512");
        let sim = ctrl.sim().unwrap();
        sim.write_backing(1, 0, &[0xff; 1 << 20]).unwrap();
        // 64 sequential one-block writes (of perf's zeroed buffers) from LBA 1000: each
        // block of the range once, nothing else.
        let cfg = config("-q 4 -o 512 -w write -t 10 -d 64 --lba-range 1000:64 --lease exclusive");
        assert_eq!(cfg.lease, Some(nvme_host_linux::LeaseMode::Exclusive));
        let outcome = run_with(&cfg, std::slice::from_ref(&ctrl)).unwrap();
        assert!(outcome.success());
        assert_eq!(outcome.report.rows[0].stats.writes, 64);
        let mut data = vec![0u8; 1 << 20];
        sim.read_backing(1, 0, &mut data).unwrap();
        let written: Vec<usize> = (0..2048).filter(|b| data[b * 512] == 0).collect();
        assert_eq!(written, (1000..1064).collect::<Vec<_>>());
        // The run released its lease: this process can lease the blocks again, and its
        // writes outside the new lease are refused (the namespace stays enforced).
        let _l = ctrl
            .lease(1, 1000..1064, nvme_host_linux::LeaseMode::Exclusive)
            .unwrap();
        let mut qp = ctrl.alloc_io_queue(Default::default()).unwrap();
        let mut buf = ctrl.alloc_dma(512).unwrap();
        let e = qp
            .write_sync(1, 999, buf.slice(0..512).unwrap())
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("write to LBAs 999..1000 of namespace 1 refused"),
            "{e}"
        );
    }

    #[test]
    fn an_lba_range_must_fit_the_namespace_and_the_io_size() {
        let ctrl = sim("trtype:sim size:1M lbasize:512");
        let e = run_with(
            &config("-q 1 -o 512 -w read -t 1 --lba-range 2000:49"),
            std::slice::from_ref(&ctrl),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("--lba-range 2000:49 goes past the end of SIM (sim) NSID 1 (2048 blocks)"),
            "{e}"
        );
        let e = run_with(&config("-q 1 -o 4k -w read -t 1 --lba-range 0:7"), &[ctrl])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("I/O size 4096 is larger than --lba-range 0:7"),
            "{e}"
        );
    }

    #[test]
    fn large_ios_are_split_by_the_driver() {
        // MDTS 3: at most 32 KiB per command, so each 256 KiB write is 8 commands.
        let ctrl = sim("trtype:sim size:16M mdts:3");
        assert_eq!(ctrl.max_transfer(), 32 << 10);
        let outcome = run_with(&config("-q 4 -o 256k -w write -t 10 -d 64"), &[ctrl]).unwrap();
        assert!(outcome.success());
        assert_eq!(outcome.report.rows[0].stats.writes, 64);
    }

    #[test]
    fn an_io_error_stops_the_run() {
        let ctrl = sim("trtype:sim size:16M");
        fail_reads_from(&ctrl, 50);
        let outcome = run_with(&config("-q 4 -o 4k -w randread -t 10"), &[ctrl]).unwrap();
        assert!(outcome.failed && !outcome.success());
        let row = &outcome.report.rows[0];
        assert!(
            row.stats.errors >= 1 && row.stats.errors <= 4,
            "{}",
            row.stats.errors
        );
        assert!(
            row.elapsed_s < 5.0,
            "stopped at the first error: {}",
            row.elapsed_s
        );
    }

    #[test]
    fn continue_on_error_with_q() {
        let ctrl = sim("trtype:sim size:16M");
        fail_reads_from(&ctrl, 101);
        let outcome = run_with(
            &config("-q 4 -o 4k -w randread -t 10 -d 300 -Q 100"),
            &[ctrl],
        )
        .unwrap();
        assert!(outcome.success(), "-Q: errors do not fail the run");
        let row = &outcome.report.rows[0];
        assert_eq!((row.stats.ios, row.stats.errors), (300, 200));
    }

    #[test]
    fn association_is_spdks_round_robin() {
        assert_eq!(association(1, 1), [(0, 0)]);
        // One namespace, two cores: both cores drive it.
        assert_eq!(association(1, 2), [(0, 0), (0, 1)]);
        // Two namespaces, one core: the core drives both.
        assert_eq!(association(2, 1), [(0, 0), (1, 0)]);
        assert_eq!(association(3, 2), [(0, 0), (1, 1), (2, 0)]);
        assert!(association(0, 2).is_empty());
    }

    #[test]
    fn queue_sizes() {
        let g = QueueGeometry {
            io_depth: 32,
            qpairs: 1,
            io_size: 4096,
            block_size: 512,
            max_transfer: 128 << 10,
            max_entries: 2048,
        };
        assert_eq!(g.commands_per_io(), 1);
        // A large ring, few commands in flight: the depth's share.
        assert_eq!(g.entries(None), Ok(DEFAULT_RING_ENTRIES));
        assert_eq!(g.requests(DEFAULT_RING_ENTRIES), 32);
        let three = QueueGeometry { qpairs: 3, ..g };
        assert_eq!(three.requests(three.entries(None).unwrap()), 11);
        let qd1 = QueueGeometry { io_depth: 1, ..g };
        assert_eq!(qd1.requests(qd1.entries(None).unwrap()), 1);
        // A controller with small queues: its maximum.
        let small = QueueGeometry {
            max_entries: 64,
            ..g
        };
        assert_eq!(small.entries(None), Ok(64));
        assert_eq!(
            QueueGeometry {
                io_depth: 4096,
                ..g
            }
            .entries(None),
            Ok(2048),
            "clamped to the maximum"
        );
        let deep = QueueGeometry {
            io_depth: 1500,
            ..g
        };
        assert_eq!(
            deep.entries(None),
            Ok(1501),
            "the depth's needs above the default"
        );
        assert_eq!(deep.requests(1501), 1500);
        assert_eq!(g.requests(9), 8, "never more than the ring holds");
        // 1 MiB I/Os over a 128 KiB maximum transfer: 8 commands each.
        let big = QueueGeometry {
            io_size: 1 << 20,
            ..g
        };
        assert_eq!(big.commands_per_io(), 8);
        assert_eq!(big.entries(None), Ok(DEFAULT_RING_ENTRIES));
        assert_eq!(big.requests(DEFAULT_RING_ENTRIES), 32 * 8);
        assert_eq!(big.entries(Some(9)), Ok(9));
        let e = big.entries(Some(8)).unwrap_err();
        assert!(
            e.contains("takes 8 commands") && e.contains("--io-queue-size"),
            "{e}"
        );
        let e = g.entries(Some(4096)).unwrap_err();
        assert!(e.contains("outside 2..=2048"), "{e}");
        assert!(g.entries(Some(1)).is_err());
        let tiny = QueueGeometry {
            io_size: 1 << 20,
            max_entries: 4,
            ..g
        };
        assert!(tiny.entries(None).unwrap_err().contains("lower -o"));
    }
}
