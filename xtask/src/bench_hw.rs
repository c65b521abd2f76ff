//! `cargo xtask bench-hw`: our driver against the kernel's, side by side, in one VM boot.
//!
//! A measurement, not a test (it is not part of `cargo xtask test`). The VM is the one of
//! `test-hw` ([`crate::vm`]) with a single namespace: 1 GiB null-co, 4 KiB blocks (no disk
//! I/O behind it). In the guest:
//! 1. the controller is bound to vfio-pci and `nvme-perf -q 32 -o 4096 -w randread -t 10
//!    -c 0x1 --json` runs through our driver, polled and with `--interrupt`, then fio with
//!    this driver's engine (`nvme-fio`, the same workload on CPU 0); then all of it at `-q 1`;
//! 2. the controller goes back to the kernel's nvme driver, loaded with `poll_queues=2`, and
//!    fio (io_uring, 4 KiB random reads, O_DIRECT, pinned to CPU 0 like `-c 0x1`) runs on
//!    `/dev/nvme0n1` at the same depths: plain (interrupts), polled (`--hipri`), and polled
//!    with fixed buffers and registered files;
//! 3. every run prints its JSON on one console line (`BENCH-JSON <name> rc=<exit> {...}`);
//!    xtask parses them and prints IOPS, average latency and the ratios.
//!
//! Absolute numbers in a TCG guest mean little; the ratio to fio is the headline.

use std::fs;

use serde_json::Value;

use crate::hw::{NVME_MODULES, VFIO_MODULES};
use crate::vm::{self, VmOpts};

const USAGE: &str = "usage: cargo xtask bench-hw [--time SECS] [--spdk DIR [--rounds N] | --tcp] [--accel tcg|kvm] [--timeout SECS] [--aw-bits 39|48] [--keep] [--append KERNEL-ARGS]\n\
Boots a QEMU VM with one null-co NVMe namespace and measures 4 KiB random reads at QD32 and QD1:\n\
nvme-perf through this driver (VFIO; polled, then --interrupt), fio with this driver's engine\n\
(nvme-fio), then fio with io_uring through the kernel's nvme driver (plain, polled with --hipri,\n\
polled with fixed buffers and registered files), all on CPU 0; the guest's CPU use per run.\n\
--time: seconds per run (default 10). --append: more guest kernel arguments (e.g. tsc=reliable:\n\
the TCG guest's clock source is otherwise hpet, which makes clock_gettime a syscall and an MMIO read).\n\
Needs fio on the host (apt-get install fio).\n\
--spdk DIR: instead of fio, SPDK's spdk_nvme_perf (DIR: the output directory of\n\
../shared/tools/build-spdk-perf, or its bundle/) alternated with ours in the same boot, --rounds\n\
times (default 3): QD32 and QD1 on core 0, then two processes of one group on cores 0 and 1;\n\
prints the medians and the ratios against the issue's targets, QD1's latency percentiles (-L)\n\
and the host's thread wake-up time (a TCG guest's QD1 I/O waits for it whenever QEMU's main\n\
loop slept before the doorbell).\n\
--tcp: instead, nvme-perf over NVMe/TCP against fio through the kernel's NVMe/TCP initiator, both\n\
reading a null_blk namespace that the guest's nvmet-tcp exports on 127.0.0.1:4420 (needs nvme-cli).";

/// Reference figures from the issue, measured on this machine kind in the same setup
/// (TCG, `-smp 2`, null-co, 4 KiB randread).
const SPDK_QD32_IOPS: f64 = 270_000.0;
const SPDK_QD1_LAT_US: (f64, f64) = (15.0, 19.0);
/// SPDK's QD32 IOPS over fio's (polled, fixed buffers) there: the target ratio.
const TARGET_RATIO: f64 = 11.0;

/// Cores other processes may use during the run before the numbers are called unreliable.
const BUSY_HOST_CORES: f64 = 0.2;

/// Queue depths measured, in this order.
const DEPTHS: [u32; 2] = [32, 1];

/// The namespace: nsid 1, 4 KiB blocks, 1 GiB, null-co.
const NS_BYTES: u64 = 1 << 30;

#[derive(Debug, Clone, PartialEq)]
struct Opts {
    time_s: u64,
    vm: VmOpts,
    /// `--spdk DIR`: compare with SPDK's perf instead of fio.
    spdk: Option<std::path::PathBuf>,
    /// `--rounds N` (with `--spdk`).
    rounds: u32,
    /// `--tcp`: NVMe/TCP, ours against the kernel's initiator.
    tcp: bool,
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut vm = VmOpts::new(300);
    let mut time_s = 10;
    let mut spdk = None;
    let mut rounds = 3;
    let mut tcp = false;
    vm::parse_args(args, USAGE, &mut vm, |flag, val| {
        match flag {
            "--time" => {
                let v = val(flag)?;
                time_s = v
                    .parse()
                    .ok()
                    .filter(|t| *t > 0)
                    .ok_or(format!("--time {v}: expected seconds (> 0)"))?;
            }
            "--spdk" => spdk = Some(std::path::PathBuf::from(val(flag)?)),
            "--tcp" => tcp = true,
            "--rounds" => {
                let v = val(flag)?;
                rounds = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=20).contains(n))
                    .ok_or(format!("--rounds {v}: expected 1 to 20"))?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    if spdk.is_none() && rounds != 3 {
        return Err("--rounds goes with --spdk".into());
    }
    if tcp && spdk.is_some() {
        return Err("--tcp and --spdk are separate benchmarks: give one".into());
    }
    Ok(Opts {
        time_s,
        vm,
        spdk,
        rounds,
        tcp,
    })
}

/// Which program a run uses, and how.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// nvme-perf through our driver, polled or with `--interrupt`.
    Perf { interrupt: bool },
    /// fio io_uring through the kernel driver.
    Fio { hipri: bool, fixed: bool },
    /// fio with this driver's engine (`nvme-fio`, VFIO, polled).
    FioEngine,
}

/// One measured configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Run {
    kind: Kind,
    depth: u32,
}

impl Run {
    /// All runs, in the order the guest makes them: nvme-perf at each depth (our driver
    /// first: one rebind only), then per depth the fio variants.
    fn all() -> Vec<Run> {
        let perf = DEPTHS.iter().flat_map(|&depth| {
            [
                Kind::Perf { interrupt: false },
                Kind::Perf { interrupt: true },
                Kind::FioEngine,
            ]
            .map(|kind| Run { kind, depth })
        });
        let fio = DEPTHS.iter().flat_map(|&depth| {
            [(false, false), (true, false), (true, true)].map(|(hipri, fixed)| Run {
                kind: Kind::Fio { hipri, fixed },
                depth,
            })
        });
        perf.into_iter().chain(fio).collect()
    }

    /// Name on the console line and in files (`perf-q32`, `fio-hipri-fixed-q1`).
    fn name(&self) -> String {
        let base = match self.kind {
            Kind::Perf { interrupt: false } => "perf",
            Kind::Perf { interrupt: true } => "perf-irq",
            Kind::Fio { hipri: false, .. } => "fio",
            Kind::Fio { fixed: false, .. } => "fio-hipri",
            Kind::Fio { .. } => "fio-hipri-fixed",
            Kind::FioEngine => "fio-nvme",
        };
        format!("{base}-q{}", self.depth)
    }

    /// What the table calls it.
    fn label(&self) -> &'static str {
        match self.kind {
            Kind::Perf { interrupt: false } => "nvme-perf (this driver, VFIO)",
            Kind::Perf { interrupt: true } => "nvme-perf --interrupt (this driver, MSI-X)",
            Kind::Fio { hipri: false, .. } => "fio io_uring (interrupts)",
            Kind::Fio { fixed: false, .. } => "fio io_uring --hipri (polled)",
            Kind::Fio { .. } => "fio io_uring polled + fixedbufs + registerfiles",
            Kind::FioEngine => "fio, this driver's engine (nvme-fio, VFIO)",
        }
    }

    /// The guest command (`$bdf` is the controller's address in the guest's shell).
    fn command(&self, time_s: u64) -> String {
        match self.kind {
            Kind::Perf { interrupt } => format!(
                "/bin/nvme-perf -q {} -o 4096 -w randread -t {time_s} -c 0x1 --json{} -r \"trtype:PCIe traddr:$bdf ns:1\"",
                self.depth,
                if interrupt { " --interrupt" } else { "" }
            ),
            Kind::FioEngine => format!(
                "/bin/fio --name={} --ioengine=external:/lib/libnvme_fio.so --thread=1 \
                 --filename=\"trtype=PCIe traddr=$(echo $bdf | tr : .) ns=1\" --rw=randread --bs=4096 \
                 --iodepth={} --runtime={time_s} --time_based --norandommap --randrepeat=0 \
                 --cpus_allowed=0 --output-format=json --output=/tmp/{}.json",
                self.name(),
                self.depth,
                self.name()
            ),
            Kind::Fio { hipri, fixed } => {
                let mut c = format!(
                    "taskset 0x1 /bin/fio --name={} --filename=/dev/nvme0n1 --ioengine=io_uring --direct=1 \
                     --rw=randread --bs=4096 --iodepth={} --runtime={time_s} --time_based --norandommap \
                     --randrepeat=0 --cpus_allowed=0 --output-format=json --output=/tmp/{}.json",
                    self.name(),
                    self.depth,
                    self.name()
                );
                if hipri {
                    c.push_str(" --hipri");
                }
                if fixed {
                    c.push_str(" --fixedbufs --registerfiles");
                }
                c
            }
        }
    }
}

/// The guest's `/init` after [`vm::INIT_PRELUDE`] and [`BENCH_SH`]: `/bench-driver.sh` and
/// `/bench-kernel.sh` are the runs (generated).
const INIT: &str = r#"
echo "BENCH-INFO clocksource $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"
/bin/nvme-setup bind $bdf || fail "nvme-setup bind $bdf"
echo "BENCH-INFO $bdf bound to $(basename $(readlink $dev/driver))"
# fio and the nvme-fio engine are dynamic (the other tools are static).
export LD_LIBRARY_PATH=$(cat /fio.libpath)
. /bench-driver.sh

load modules-nvme
/bin/nvme-setup unbind $bdf || fail "nvme-setup unbind $bdf"
i=0
while [ ! -b /dev/nvme0n1 ] && [ $i -lt 30 ]; do sleep 1; i=$((i+1)); done
[ -b /dev/nvme0n1 ] || fail "no /dev/nvme0n1 after the rebind to the kernel driver"
echo "BENCH-INFO $bdf bound to $(basename $(readlink $dev/driver)); $(dmesg | grep -o 'nvme0: [0-9/]* default/read/poll queues'); io_poll=$(cat /sys/block/nvme0n1/queue/io_poll); poll_queues=$(cat /sys/module/nvme/parameters/poll_queues)"
/bin/fio --version | sed 's/^/BENCH-INFO /'
. /bench-kernel.sh
echo "BENCH-INIT done"
finish
"#;

/// `bench NAME CMD...`: runs one measurement and prints its JSON (the file
/// `/tmp/NAME.json` if the command wrote one, else its stdout) on one console line, with
/// the guest's CPU ticks before and after.
pub(crate) const BENCH_SH: &str = r#"
# The guest's CPU time so far (all CPUs, in clock ticks): busy, then total.
cpu_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8}' /proc/stat; }
bench() {
    name=$1; shift
    echo "BENCH-RUN $name: $*"
    before=$(cpu_ticks)
    "$@" > /tmp/$name.out 2> /tmp/$name.err
    rc=$?
    echo "BENCH-CPU $name $before $(cpu_ticks)"
    f=/tmp/$name.json; [ -s $f ] || f=/tmp/$name.out
    echo "BENCH-JSON $name rc=$rc $(tr -d '\n' < $f)"
    [ $rc = 0 ] || echo "BENCH-FAIL $name exit $rc: $(tail -n 5 /tmp/$name.err | tr '\n' ' ')"
}
"#;

/// Runs the benchmark with the arguments given after `cargo xtask bench-hw`.
pub fn bench_hw(args: &[String]) -> Result<(), String> {
    let o = parse(args)?;
    if let Some(dir) = &o.spdk {
        return crate::bench_spdk::run(dir, o.time_s, o.rounds, o.vm);
    }
    if o.tcp {
        return crate::bench_tcp::run(o.time_s, o.vm);
    }
    let tools = vm::prerequisites(&[("fio", "fio"), ("ldd", "libc-bin")], ")")?;

    let bins = vm::build_static(&["nvme-tools"], &["nvme-perf", "nvme-setup"])?;
    let mut ir = vm::Initramfs::new("bench-hw-vm", &tools.busybox, &format!("{BENCH_SH}{INIT}"))?;
    ir.install(&bins[0], "bin/nvme-perf")?;
    ir.install(&bins[1], "bin/nvme-setup")?;
    crate::fio_hw::install_engine(&mut ir, true)?;
    ir.modules(&tools.moddir, VFIO_MODULES, "modules-vfio")?;
    ir.modules(&tools.moddir, NVME_MODULES, "modules-nvme")?;
    ir.write("params-nvme", "poll_queues=2")?;
    let runs = Run::all();
    let (mut driver, mut kernel) = (String::new(), String::new());
    for r in &runs {
        let script = if matches!(r.kind, Kind::Perf { .. } | Kind::FioEngine) {
            &mut driver
        } else {
            &mut kernel
        };
        script.push_str(&format!("bench {} {}\n", r.name(), r.command(o.time_s)));
    }
    ir.write("bench-driver.sh", &driver)?;
    ir.write("bench-kernel.sh", &kernel)?;
    let initrd = ir.pack()?;

    let mut q = vm::qemu(&tools, &o.vm, &initrd);
    vm::namespace(&mut q, 1, 4096, NS_BYTES, None)?;
    let console = vm::run(q, o.vm.timeout, &ir.work, |l| {
        let l = l.trim_start();
        (l.starts_with("BENCH") && !l.starts_with("BENCH-JSON"))
            || l.starts_with("HWTEST-INIT")
            || l.starts_with("qemu stderr")
    })?;

    let results: Vec<(Run, Result<Figures, String>)> = runs
        .iter()
        .map(|r| (*r, result_of(&console.log, r)))
        .collect();
    let clock = console
        .log
        .lines()
        .find_map(|l| l.trim().strip_prefix("BENCH-INFO clocksource "))
        .unwrap_or("unknown");
    let header = format!(
        "bench-hw: 4 KiB random reads, 1 GiB null-co namespace, CPU 0, {} s per run, QEMU {}, \
         guest clock source {clock}{}",
        o.time_s,
        o.vm.accel,
        if o.vm.append.is_empty() {
            String::new()
        } else {
            format!(", kernel arguments +{}", o.vm.append)
        }
    );
    let cpu: Vec<Option<f64>> = runs.iter().map(|r| guest_cpu(&console.log, r)).collect();
    let table = table(&results, &cpu, &header);
    println!("{table}");
    let _ = fs::write(ir.work.join("results.txt"), &table);

    let mut problems: Vec<String> = results
        .iter()
        .filter_map(|(r, f)| f.as_ref().err().map(|e| format!("{}: {e}", r.name())))
        .collect();
    if console.timed_out {
        problems.push(console.timeout_error(o.vm.timeout));
    } else if !console.log.lines().any(|l| l.trim() == "BENCH-INIT done") {
        let init_fail = console
            .log
            .lines()
            .find(|l| l.contains("HWTEST-INIT FAIL"))
            .unwrap_or("the guest did not reach the end of /init");
        problems.push(init_fail.trim().to_string());
    }
    println!(
        "guest run took {:.1} s ({}); console log and results in {}",
        console.took.as_secs_f64(),
        o.vm.accel,
        ir.work.display()
    );
    if let Some((qemu, other)) = console.host_cores {
        let ncpu = std::thread::available_parallelism().map_or(0, |n| n.get());
        println!(
            "host CPUs during the run: QEMU {qemu:.2} cores, everything else {other:.2} cores (of {ncpu})"
        );
        if other > BUSY_HOST_CORES {
            println!(
                "WARNING: other processes used {other:.2} cores during the run: QEMU competed for \
                 the host's CPUs and the numbers are low; measure on an idle host"
            );
        }
    }
    if problems.is_empty() {
        if !o.vm.keep {
            let _ = fs::remove_dir_all(ir.work.join("root"));
            let _ = fs::remove_file(ir.work.join("initramfs.cpio"));
        }
        Ok(())
    } else {
        console.dump(&ir.work);
        Err(problems.join("; "))
    }
}

/// What one run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Figures {
    pub(crate) iops: f64,
    pub(crate) lat_us: f64,
}

/// How busy the guest's CPUs were during the run, in percent of all of them, from its
/// `BENCH-CPU name busy0 total0 busy1 total1` console line (`/proc/stat` ticks before and
/// after).
fn guest_cpu(log: &str, r: &Run) -> Option<f64> {
    guest_cpu_of(log, &r.name())
}

/// [`guest_cpu`] of the run called `name`.
pub(crate) fn guest_cpu_of(log: &str, name: &str) -> Option<f64> {
    let prefix = format!("BENCH-CPU {name} ");
    let line = log.lines().find_map(|l| l.trim().strip_prefix(&prefix))?;
    let t: Vec<f64> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    match t[..] {
        [b0, t0, b1, t1] if t1 > t0 => Some(100.0 * (b1 - b0) / (t1 - t0)),
        _ => None,
    }
}

/// The run's figures from its `BENCH-JSON` console line.
fn result_of(log: &str, r: &Run) -> Result<Figures, String> {
    let v = json_of(log, &r.name())?;
    match r.kind {
        Kind::Perf { .. } => perf_figures(&v),
        Kind::Fio { .. } | Kind::FioEngine => fio_figures(&v),
    }
}

/// The JSON of the run called `name`, from its `BENCH-JSON` console line, or why there is
/// none (no line, a failed exit with the end of its stderr, bad JSON).
pub(crate) fn json_of(log: &str, name: &str) -> Result<Value, String> {
    let prefix = format!("BENCH-JSON {name} rc=");
    let line = log
        .lines()
        .find_map(|l| l.trim().strip_prefix(&prefix))
        .ok_or("no result line (the guest stopped before this run?)")?;
    let (rc, json) = line.split_once(' ').unwrap_or((line, ""));
    if rc != "0" {
        let fail = format!("BENCH-FAIL {name} ");
        let why = log
            .lines()
            .find_map(|l| l.trim().strip_prefix(&fail))
            .unwrap_or("");
        return Err(format!("exit status {rc} {why}").trim().to_string());
    }
    serde_json::from_str(json).map_err(|e| format!("bad JSON ({e}): {json:.200}"))
}

fn num(v: &Value, path: &[&str]) -> Result<f64, String> {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_f64)
        .ok_or_else(|| format!("no number at {} in the JSON", path.join(".")))
}

/// nvme-perf `--json`: `total.iops`, `total.latency_us.avg`, `total.errors`.
pub(crate) fn perf_figures(v: &Value) -> Result<Figures, String> {
    let errors = num(v, &["total", "errors"])?;
    if errors > 0.0 {
        return Err(format!("{errors} I/O errors"));
    }
    Ok(Figures {
        iops: num(v, &["total", "iops"])?,
        lat_us: num(v, &["total", "latency_us", "avg"])?,
    })
}

/// fio `--output-format=json`: the one job's `read.iops` and `read.lat_ns.mean`.
pub(crate) fn fio_figures(v: &Value) -> Result<Figures, String> {
    let job = v
        .get("jobs")
        .and_then(|j| j.get(0))
        .ok_or("no jobs in fio's JSON")?;
    let error = num(job, &["error"])?;
    if error != 0.0 {
        return Err(format!("fio job error {error}"));
    }
    Ok(Figures {
        iops: num(job, &["read", "iops"])?,
        lat_us: num(job, &["read", "lat_ns", "mean"])? / 1e3,
    })
}

/// The result table: per depth, every configuration with IOPS, average latency and the
/// ratios of ours to it; then the headline against the issue's SPDK reference.
/// `cpu[i]`: the guest's CPU use during `results[i]` (see [`guest_cpu`]), when known.
fn table(results: &[(Run, Result<Figures, String>)], cpu: &[Option<f64>], header: &str) -> String {
    let mut out = format!("{header}\n");
    let ours = |depth: u32| {
        results.iter().find_map(|(r, f)| {
            (r.kind == Kind::Perf { interrupt: false } && r.depth == depth)
                .then(|| f.as_ref().ok().copied())
                .flatten()
        })
    };
    let best_fio = |depth: u32| {
        results.iter().find_map(|(r, f)| {
            (r.kind
                == Kind::Fio {
                    hipri: true,
                    fixed: true,
                }
                && r.depth == depth)
                .then(|| f.as_ref().ok().copied())
                .flatten()
        })
    };
    for depth in DEPTHS {
        out.push_str(&format!(
            "\nQD{depth:<3} {:<47} {:>11} {:>11} {:>11} {:>11} {:>9}\n",
            "config", "IOPS", "avg lat us", "ours/this", "this/ours", "guest"
        ));
        out.push_str(&format!(
            "      {:<47} {:>11} {:>11} {:>11} {:>11} {:>9}\n",
            "", "", "", "IOPS", "latency", "CPU %"
        ));
        let us = ours(depth);
        for (i, (r, f)) in results
            .iter()
            .enumerate()
            .filter(|(_, (r, _))| r.depth == depth)
        {
            let busy = cpu
                .get(i)
                .copied()
                .flatten()
                .map_or("-".into(), |c| format!("{c:.0}"));
            match f {
                Ok(f) => {
                    let (ri, rl) = match us {
                        Some(u) => (
                            format!("{:.2}x", u.iops / f.iops),
                            format!("{:.2}x", f.lat_us / u.lat_us),
                        ),
                        None => ("-".into(), "-".into()),
                    };
                    out.push_str(&format!(
                        "      {:<47} {:>11.0} {:>11.2} {ri:>11} {rl:>11} {busy:>9}\n",
                        r.label(),
                        f.iops,
                        f.lat_us
                    ));
                }
                Err(e) => out.push_str(&format!("      {:<47} failed: {e}\n", r.label())),
            }
        }
    }
    out.push_str(&format!(
        "\nreference (issue, same setup): spdk_nvme_perf ~{:.0} K IOPS at QD32 and {}-{} us at QD1; \
         fio polled + fixed buffers ~23 K IOPS at QD32, ~18 K at QD1: SPDK ~{TARGET_RATIO:.0}x fio\n",
        SPDK_QD32_IOPS / 1e3,
        SPDK_QD1_LAT_US.0,
        SPDK_QD1_LAT_US.1
    ));
    if let (Some(u), Some(f)) = (ours(32), best_fio(32)) {
        let ratio = u.iops / f.iops;
        out.push_str(&format!(
            "headline QD32: {:.0} IOPS = {ratio:.2}x fio polled + fixed (target >= {TARGET_RATIO:.0}x: {}); {:.0}% of SPDK's ~{:.0} K\n",
            u.iops,
            if ratio >= TARGET_RATIO { "met" } else { "NOT met" },
            100.0 * u.iops / SPDK_QD32_IOPS,
            SPDK_QD32_IOPS / 1e3
        ));
    }
    if let Some(u) = ours(1) {
        let vs_fio = best_fio(1)
            .map(|f| format!(", fio polled + fixed {:.2} us", f.lat_us))
            .unwrap_or_default();
        out.push_str(&format!(
            "headline QD1: {:.2} us average latency (target < SPDK's {}-{} us: {}){vs_fio}\n",
            u.lat_us,
            SPDK_QD1_LAT_US.0,
            SPDK_QD1_LAT_US.1,
            if u.lat_us < SPDK_QD1_LAT_US.0 {
                "met"
            } else if u.lat_us < SPDK_QD1_LAT_US.1 {
                "within SPDK's range"
            } else {
                "NOT met"
            }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::strings as s;

    #[test]
    fn parses_options() {
        let o = parse(&[]).unwrap();
        assert_eq!((o.time_s, o.vm.accel.as_str()), (10, "tcg"));
        let o = parse(&s(&["--time", "3", "--keep", "--accel", "kvm"])).unwrap();
        assert_eq!((o.time_s, o.vm.keep, o.vm.accel.as_str()), (3, true, "kvm"));
        assert!(parse(&s(&["--time", "0"])).is_err());
        assert!(parse(&s(&["--device", "x"])).is_err());
        let o = parse(&s(&["--spdk", "/tmp/spdk", "--rounds", "5"])).unwrap();
        assert_eq!(
            (o.spdk.as_deref(), o.rounds),
            (Some(std::path::Path::new("/tmp/spdk")), 5)
        );
        assert!(parse(&s(&["--rounds", "5"])).is_err());
        assert!(parse(&s(&["--spdk", "d", "--rounds", "0"])).is_err());
    }

    #[test]
    fn runs_in_order() {
        let names: Vec<String> = Run::all().iter().map(Run::name).collect();
        assert_eq!(
            names,
            [
                "perf-q32",
                "perf-irq-q32",
                "fio-nvme-q32",
                "perf-q1",
                "perf-irq-q1",
                "fio-nvme-q1",
                "fio-q32",
                "fio-hipri-q32",
                "fio-hipri-fixed-q32",
                "fio-q1",
                "fio-hipri-q1",
                "fio-hipri-fixed-q1"
            ]
        );
        let fixed = Run {
            kind: Kind::Fio {
                hipri: true,
                fixed: true,
            },
            depth: 1,
        };
        let c = fixed.command(10);
        assert!(c.contains("--iodepth=1 ") && c.ends_with("--hipri --fixedbufs --registerfiles"));
        assert!(c.starts_with("taskset 0x1 ") && c.contains("--cpus_allowed=0"));
        let perf = Run {
            kind: Kind::Perf { interrupt: false },
            depth: 32,
        };
        assert!(perf
            .command(10)
            .starts_with("/bin/nvme-perf -q 32 -o 4096 -w randread -t 10 -c 0x1 --json -r"));
        let irq = Run {
            kind: Kind::Perf { interrupt: true },
            depth: 1,
        };
        assert!(
            irq.command(10).contains(" -q 1 ") && irq.command(10).contains("--json --interrupt -r")
        );
        let engine = Run {
            kind: Kind::FioEngine,
            depth: 32,
        }
        .command(10);
        assert!(
            engine.contains("--ioengine=external:/lib/libnvme_fio.so --thread=1")
                && engine.contains("--iodepth=32 ")
                && engine.contains("--output=/tmp/fio-nvme-q32.json"),
            "{engine}"
        );
    }

    #[test]
    fn parses_results() {
        let perf = Run {
            kind: Kind::Perf { interrupt: false },
            depth: 32,
        };
        let fio = Run {
            kind: Kind::Fio {
                hipri: false,
                fixed: false,
            },
            depth: 32,
        };
        let log = "BENCH-JSON perf-q32 rc=0 {\"total\":{\"ios\":10,\"errors\":0,\"iops\":1000.0,\"mib_s\":3.9,\"latency_us\":{\"avg\":31.9,\"min\":1,\"max\":90}}}\n\
                   BENCH-JSON fio-q32 rc=0 {  \"fio version\" : \"fio-3.33\",  \"jobs\" : [    {      \"jobname\" : \"fio-q32\",      \"error\" : 0,      \"read\" : {        \"iops\" : 100.0,        \"lat_ns\" : {          \"mean\" : 320000.0        }      }    }  ]}\n";
        assert_eq!(
            result_of(log, &perf).unwrap(),
            Figures {
                iops: 1000.0,
                lat_us: 31.9
            }
        );
        assert_eq!(
            result_of(log, &fio).unwrap(),
            Figures {
                iops: 100.0,
                lat_us: 320.0
            }
        );
        let failed = "BENCH-JSON perf-q32 rc=1 \nBENCH-FAIL perf-q32 exit 1: no hugepages\n";
        assert!(result_of(failed, &perf)
            .unwrap_err()
            .contains("no hugepages"));
        assert!(result_of("", &perf).unwrap_err().contains("no result"));
        let results = vec![(perf, result_of(log, &perf)), (fio, result_of(log, &fio))];
        let cpu_log = "BENCH-CPU perf-q32 100 1000 250 1200\nBENCH-CPU fio-q32 1 2 3\n";
        let cpu: Vec<_> = [perf, fio].iter().map(|r| guest_cpu(cpu_log, r)).collect();
        assert_eq!(cpu, [Some(75.0), None]);
        let t = table(&results, &cpu, "header");
        assert!(t.contains("10.00x"), "{t}");
        assert!(
            t.lines()
                .any(|l| l.contains("VFIO") && l.trim_end().ends_with(" 75")),
            "{t}"
        );
    }
}
