//! `cargo xtask bench-hw --spdk DIR`: our nvme-perf against SPDK's `spdk_nvme_perf`, in one
//! VM boot, alternated.
//!
//! The VM is `bench-hw`'s (one 1 GiB null-co namespace with 4 KiB blocks, TCG, `-smp 2`),
//! with the virtual IOMMU at 48 address bits (SPDK's default IOVA mode needs it), 256
//! hugepages and hugetlbfs at `/dev/hugepages`. `DIR` is what
//! `../shared/tools/build-spdk-perf <spdk git dir> DIR` made (its `bundle/` is copied into
//! the guest's root). Per round, with the order of the two tools swapped every round:
//! 1. QD32 and QD1 4 KiB random reads on core 0, ours and SPDK's;
//! 2. two processes of one shared-memory group (`-i 1`) on cores 0 and 1 at QD32 each: a
//!    primary (`-a 3` warm-up) and, 2 s later, a secondary (`-a 1`), so that their measured
//!    windows overlap; ours, then SPDK's.
//!
//! Both tools print the same table; the guest echoes each run's `Total` line on the console
//! (`BENCH-TEXT <name> rc=<exit> <line>`) and xtask takes IOPS and average latency from it.
//! The result is the medians of the rounds and their ratios against the issue's targets.
//!
//! At QD1 both tools also print latency percentiles (`-L`), and the header gives the host's
//! thread wake-up time ([`vm::host_wakeup_us`]). In a TCG guest QD1 latency has two modes:
//! an I/O whose doorbell reaches QEMU while its main loop is still awake takes a few us
//! (about 7.5 us on this machine kind), one whose doorbell must wake the sleeping main loop
//! pays the host's wake-up as well (25 us and more on a host VM without halt polling). Which
//! mode an I/O gets depends on how soon after its completion the driver rings the next
//! doorbell, to within a microsecond, and on the host's scheduling, so the averages of
//! identical runs can differ by 2x; the percentiles show the two modes.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::hw::VFIO_MODULES;
use crate::vm::{self, VmOpts};

/// Targets (issue 9): ours over SPDK's.
const TARGET_QD32_IOPS: f64 = 1.2;
const TARGET_QD1_LATENCY: f64 = 0.85;
const TARGET_TWO_PROCESSES: f64 = 1.0;
const TARGET_SECONDARY: f64 = 0.95;
/// A secondary's whole process (attach, Identify, detach) beside a running primary.
const TARGET_ATTACH: f64 = 0.10;
/// Secondaries timed per round and tool (their mean is the round's figure).
const ATTACH_RUNS: u32 = 5;

/// The namespace: nsid 1, 4 KiB blocks, 1 GiB, null-co.
const NS_BYTES: u64 = 1 << 30;

/// Where the SPDK bundle is: `DIR/bundle` (build-spdk-perf's output directory) or `DIR`
/// itself; it must hold `spdk/spdk_nvme_perf`.
pub fn bundle_dir(dir: &Path) -> Result<PathBuf, String> {
    for d in [dir.join("bundle"), dir.to_path_buf()] {
        if d.join("spdk/spdk_nvme_perf").is_file() {
            return Ok(d);
        }
    }
    Err(format!(
        "--spdk {}: no SPDK bundle there (looked for bundle/spdk/spdk_nvme_perf and spdk/spdk_nvme_perf); \
         build one with ../shared/tools/build-spdk-perf <spdk git dir> {} (as root; about 5-10 minutes)",
        dir.display(),
        dir.display()
    ))
}

/// Which tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tool {
    Ours,
    Spdk,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Ours => "ours",
            Tool::Spdk => "spdk",
        }
    }
    fn binary(self) -> &'static str {
        match self {
            Tool::Ours => "/bin/nvme-perf",
            Tool::Spdk => "/spdk/spdk_nvme_perf",
        }
    }
    /// The secondary that attaches, identifies the controller and detaches.
    fn identify(self) -> &'static str {
        match self {
            Tool::Ours => "/bin/nvmectl -i 1 id-ctrl -r \"trtype:PCIe traddr:$bdf\"",
            Tool::Spdk => "/spdk/spdk_nvme_identify -i 1 -r \"trtype:PCIe traddr:$bdf\"",
        }
    }
    /// One run's command line (`$bdf`: the controller's address in the guest's shell).
    fn command(self, depth: u32, time_s: u64, extra: &str) -> String {
        format!(
            "{} -q {depth} -o 4096 -w randread -t {time_s} {extra} -r \"trtype:PCIe traddr:$bdf ns:1\"",
            self.binary()
        )
    }
}

/// The runs of one round, in order: the console names and the guest script lines.
fn round_script(round: u32, time_s: u64) -> String {
    let order = if round % 2 == 1 {
        [Tool::Ours, Tool::Spdk]
    } else {
        [Tool::Spdk, Tool::Ours]
    };
    let mut s = String::new();
    for depth in [32, 1] {
        // At QD1 both tools also report latency percentiles (`-L`): in a TCG guest the
        // distribution has two modes (see the module's documentation), which the average
        // hides.
        let extra = if depth == 1 { "-c 0x1 -L" } else { "-c 0x1" };
        for t in order {
            s.push_str(&format!(
                "bench {}-q{depth}-r{round} '{}'\n",
                t.name(),
                t.command(depth, time_s, extra)
            ));
        }
    }
    for t in order {
        // Ours also logs its progress once a second (`NVME_PERF_PROGRESS`), so that the two
        // members' rates can be compared over the same seconds.
        let env = if t == Tool::Ours {
            "NVME_PERF_PROGRESS=1 "
        } else {
            ""
        };
        // The primary on core 0 and the secondary on core 1 (`2p`), then the other way round
        // (`2px`): the guest's two cores are not equal (core 0 takes the guest kernel's own
        // work, the console among it), so a secondary's ratio to its primary is judged over
        // both placements.
        for (run, primary, secondary) in [("2p", "0x1", "0x2"), ("2px", "0x2", "0x1")] {
            s.push_str(&format!(
                "bench2 {n}-{run}-a-r{round} {n}-{run}-b-r{round} '{env}{a}' '{env}{b}'\n",
                n = t.name(),
                a = t.command(32, time_s, &format!("-i 1 -c {primary} -a 3")),
                b = t.command(32, time_s, &format!("-i 1 -c {secondary} -a 1")),
            ));
        }
    }
    // What starting nvmectl costs before it attaches anything (a large static binary, the
    // argument parser), for scale.
    s.push_str(&format!(
        "startup ours-start-r{round} {ATTACH_RUNS} '/bin/nvmectl --version'\n"
    ));
    // A primary on core 0 (long enough for the secondaries), and beside it the secondaries
    // one after the other on core 1.
    for t in order {
        s.push_str(&format!(
            "attach {n}-attach-r{round} {ATTACH_RUNS} '{p}' '{i}'\n",
            n = t.name(),
            p = t.command(32, time_s.max(10), "-i 1 -c 0x1"),
            i = t.identify(),
        ));
    }
    s
}

/// The guest's `/init` after [`vm::INIT_PRELUDE`].
const INIT: &str = r#"
echo 256 > /proc/sys/vm/nr_hugepages
mkdir -p /dev/hugepages && mount -t hugetlbfs nodev /dev/hugepages || fail "mounting hugetlbfs"
echo "BENCH-INFO $(grep HugePages_Total /proc/meminfo), clocksource $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"
total() { grep -E '^Total' "$1" | tail -n 1 | tr -s ' '; }
export bdf
# bench NAME 'COMMAND': runs it, echoes its Total line.
bench() {
    name=$1
    echo "BENCH-RUN $name: $2"
    sh -c "$2" > /tmp/$name.out 2> /tmp/$name.err
    rc=$?
    echo "BENCH-TEXT $name rc=$rc $(total /tmp/$name.out)"
    grep -E '^ *(10|50|90)\.00000% :' /tmp/$name.out | head -n 3 | tr -s ' ' | sed "s/^ */BENCH-PCT $name /"
    [ $rc = 0 ] || echo "BENCH-FAIL $name exit $rc: $(tail -n 5 /tmp/$name.err /tmp/$name.out | tr '\n' ' ')"
}
# bench2 NAME-A NAME-B 'COMMAND-A' 'COMMAND-B': A, and 2 s later B, at the same time.
bench2() {
    echo "BENCH-RUN $1: $3"
    echo "BENCH-RUN $2 (2 s later): $4"
    sh -c "$3" > /tmp/$1.out 2> /tmp/$1.err &
    a=$!
    sleep 2
    sh -c "$4" > /tmp/$2.out 2> /tmp/$2.err
    rcb=$?
    wait $a
    rca=$?
    for n in $1 $2; do
        grep "^nvme-perf progress " /tmp/$n.err | sed "s/^nvme-perf progress /BENCH-PROGRESS $n /"
    done
    for r in "$1 $rca" "$2 $rcb"; do
        set -- $r
        echo "BENCH-TEXT $1 rc=$2 $(total /tmp/$1.out)"
        [ $2 = 0 ] || echo "BENCH-FAIL $1 exit $2: $(tail -n 5 /tmp/$1.err /tmp/$1.out | tr '\n' ' ')"
    done
}
# attach NAME N 'PRIMARY' 'SECONDARY': the primary, and once it runs its workload (both
# tools print "Initialization complete") N secondaries one after the other on core 1;
# echoes the uptime before and after them (10 ms resolution: N secondaries together).
attach() {
    echo "BENCH-RUN $1: $3 beside $4"
    sh -c "$3" > /tmp/$1.out 2> /tmp/$1.err &
    a=$!
    i=0
    while ! grep -q "Initialization complete" /tmp/$1.out && [ $i -lt 100 ]; do
        sleep 0.2; i=$((i+1))
    done
    sleep 1
    rc=0
    t0=$(cut -d' ' -f1 /proc/uptime)
    for i in $(seq $2); do
        taskset 0x2 sh -c "$4" > /dev/null 2>> /tmp/$1.err || { rc=$?; break; }
    done
    t1=$(cut -d' ' -f1 /proc/uptime)
    wait $a
    echo "BENCH-ATTACH $1 rc=$rc runs=$2 $t0 $t1"
    [ $rc = 0 ] || echo "BENCH-FAIL $1 exit $rc: $(tail -n 5 /tmp/$1.err | tr '\n' ' ')"
}
# startup NAME N 'COMMAND': N runs of COMMAND on core 1, timed like attach's.
startup() {
    echo "BENCH-RUN $1: $3"
    rc=0
    t0=$(cut -d' ' -f1 /proc/uptime)
    for i in $(seq $2); do
        taskset 0x2 sh -c "$3" > /dev/null 2>> /tmp/$1.err || { rc=$?; break; }
    done
    t1=$(cut -d' ' -f1 /proc/uptime)
    echo "BENCH-ATTACH $1 rc=$rc runs=$2 $t0 $t1"
}
/bin/nvme-setup bind $bdf || fail "nvme-setup bind $bdf"
. /bench.sh
echo "BENCH-INIT done"
finish
"#;

/// What one run measured: IOPS and average latency (us) from its `Total` line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Figures {
    pub iops: f64,
    pub lat_us: f64,
}

/// The figures of run `name` from the console log: `BENCH-TEXT <name> rc=0 Total : IOPS
/// MiB/s avg min max`.
fn figures(log: &str, name: &str) -> Result<Figures, String> {
    let prefix = format!("BENCH-TEXT {name} rc=");
    let line = log
        .lines()
        .find_map(|l| l.trim().strip_prefix(&prefix))
        .ok_or_else(|| format!("{name}: no result line (the guest stopped before this run?)"))?;
    let (rc, rest) = line.split_once(' ').unwrap_or((line, ""));
    if rc != "0" {
        let fail = format!("BENCH-FAIL {name} ");
        let why = log
            .lines()
            .find_map(|l| l.trim().strip_prefix(&fail))
            .unwrap_or("");
        return Err(format!("{name}: exit status {rc} {why}").trim().to_string());
    }
    let nums: Vec<f64> = rest
        .split_once(':')
        .map(|(_, n)| n)
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    match nums[..] {
        [iops, _mib, avg, ..] if iops > 0.0 => Ok(Figures { iops, lat_us: avg }),
        _ => Err(format!("{name}: no IOPS in its Total line '{rest}'")),
    }
}

/// Percentile `pct` (10, 50 or 90) of run `name`'s latency in us, from its `-L` summary
/// echoed as `BENCH-PCT <name> 50.00000% : 7.903us`.
fn percentile(log: &str, name: &str, pct: u32) -> Option<f64> {
    let prefix = format!("BENCH-PCT {name} {pct}.00000% :");
    log.lines()
        .find_map(|l| l.trim().strip_prefix(&prefix))?
        .trim()
        .strip_suffix("us")?
        .parse()
        .ok()
}

/// The mean time of one secondary in ms, from the `BENCH-ATTACH <name> rc=0 runs=N T0 T1`
/// line (uptimes in seconds).
fn attach_ms(log: &str, name: &str) -> Result<f64, String> {
    let prefix = format!("BENCH-ATTACH {name} rc=");
    let line = log
        .lines()
        .find_map(|l| l.trim().strip_prefix(&prefix))
        .ok_or_else(|| format!("{name}: no result line (the guest stopped before this run?)"))?;
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.first() != Some(&"0") {
        let fail = format!("BENCH-FAIL {name} ");
        let why = log
            .lines()
            .find_map(|l| l.trim().strip_prefix(&fail))
            .unwrap_or("");
        return Err(format!("{name}: a secondary failed: {why}")
            .trim()
            .to_string());
    }
    let bad = || format!("{name}: bad line 'BENCH-ATTACH {name} rc={line}'");
    let runs: f64 = f
        .get(1)
        .and_then(|r| r.strip_prefix("runs="))
        .and_then(|r| r.parse().ok())
        .filter(|r| *r > 0.0)
        .ok_or_else(bad)?;
    let t: Vec<f64> = f[2..].iter().filter_map(|x| x.parse().ok()).collect();
    match t[..] {
        [t0, t1] if t1 >= t0 => Ok((t1 - t0) * 1000.0 / runs),
        _ => Err(bad()),
    }
}

/// Run `name`'s progress samples from the console log: `BENCH-PROGRESS <name> <monotonic
/// s> <I/Os so far>`, in time order.
fn progress(log: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("BENCH-PROGRESS {name} ");
    log.lines()
        .filter_map(|l| l.trim().strip_prefix(&prefix))
        .filter_map(|rest| {
            let mut w = rest.split_whitespace().map(|x| x.parse::<f64>().ok());
            Some((w.next()??, w.next()??))
        })
        .collect()
}

/// The I/Os of a progress log at time `t`, interpolated between its samples.
fn ios_at(p: &[(f64, f64)], t: f64) -> Option<f64> {
    let i = p.iter().position(|&(ts, _)| ts >= t)?;
    if i == 0 {
        return (p[0].0 == t).then_some(p[0].1);
    }
    let ((t0, n0), (t1, n1)) = (p[i - 1], p[i]);
    Some(n0 + (n1 - n0) * (t - t0) / (t1 - t0))
}

/// B's rate over A's, over the seconds both ran at full speed: from the later of their
/// first samples (each a second after its workers started) to a second before the earlier
/// of their last ones (a run's last second may be its drain). `None` without at least two
/// such seconds. Whatever each process's start-up took, both are measured over the same
/// time, where their `Total` lines each cover their own window.
fn same_seconds_ratio(a: &[(f64, f64)], b: &[(f64, f64)]) -> Option<f64> {
    let start = a.first()?.0.max(b.first()?.0);
    let end = a.last()?.0.min(b.last()?.0) - 1.0;
    if end - start < 2.0 {
        return None;
    }
    let rate = |p: &[(f64, f64)]| Some((ios_at(p, end)? - ios_at(p, start)?) / (end - start));
    let (ra, rb) = (rate(a)?, rate(b)?);
    (ra > 0.0).then(|| rb / ra)
}

/// The median of `v` (the middle value; the mean of the two middle ones for an even count).
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// One row of the table: a value per round and their median.
struct Row {
    label: String,
    values: Vec<Option<f64>>,
}

impl Row {
    fn median(&self) -> Option<f64> {
        median(self.values.iter().flatten().copied().collect())
    }
}

/// The results of every round as rows, and the headline ratios against the targets.
fn table(log: &str, rounds: u32, header: &str) -> (String, Vec<String>) {
    let mut problems = Vec::new();
    let mut get = |name: String| match figures(log, &name) {
        Ok(f) => Some(f),
        Err(e) => {
            problems.push(e);
            None
        }
    };
    let mut rows: Vec<Row> = Vec::new();
    let mut row = |label: &str, f: &mut dyn FnMut(u32) -> Option<f64>| {
        let values = (1..=rounds).map(&mut *f).collect();
        rows.push(Row {
            label: label.to_string(),
            values,
        });
    };
    let mut all = std::collections::BTreeMap::new();
    for r in 1..=rounds {
        for t in [Tool::Ours, Tool::Spdk] {
            for run in ["q32", "q1", "2p-a", "2p-b", "2px-a", "2px-b"] {
                let name = format!("{}-{run}-r{r}", t.name());
                all.insert((t.name(), run, r), get(name));
            }
        }
    }
    let f = |t: &str, run: &str, r: u32| all.get(&(t, run, r)).copied().flatten();
    row("QD32 IOPS, ours", &mut |r| {
        f("ours", "q32", r).map(|x| x.iops)
    });
    row("QD32 IOPS, SPDK", &mut |r| {
        f("spdk", "q32", r).map(|x| x.iops)
    });
    row("QD1 avg latency us, ours", &mut |r| {
        f("ours", "q1", r).map(|x| x.lat_us)
    });
    row("QD1 avg latency us, SPDK", &mut |r| {
        f("spdk", "q1", r).map(|x| x.lat_us)
    });
    let sum = |t: &str, r: u32| Some(f(t, "2p-a", r)?.iops + f(t, "2p-b", r)?.iops);
    row("2 processes QD32 IOPS (sum), ours", &mut |r| sum("ours", r));
    row("2 processes QD32 IOPS (sum), SPDK", &mut |r| sum("spdk", r));
    let sec = |t: &str, r: u32| Some(f(t, "2p-b", r)?.iops / f(t, "2p-a", r)?.iops);
    row("secondary / primary IOPS, ours", &mut |r| sec("ours", r));
    row("secondary / primary IOPS, SPDK", &mut |r| sec("spdk", r));
    row("secondary / primary, ours, same seconds", &mut |r| {
        same_seconds_ratio(
            &progress(log, &format!("ours-2p-a-r{r}")),
            &progress(log, &format!("ours-2p-b-r{r}")),
        )
    });
    let mut attach = |run: &str, r: u32| match attach_ms(log, &format!("{run}-r{r}")) {
        Ok(ms) => Some(ms),
        Err(e) => {
            problems.push(e);
            None
        }
    };
    let attach_label = "secondary attach+identify+detach ms, ";
    row(&format!("{attach_label}ours"), &mut |r| {
        attach("ours-attach", r)
    });
    row(&format!("{attach_label}SPDK"), &mut |r| {
        attach("spdk-attach", r)
    });
    row("nvmectl --version alone ms, for scale", &mut |r| {
        attach("ours-start", r)
    });
    // The two core placements (see `round_script`): with the cores swapped, then the
    // geometric mean of both, in which the cores' difference cancels out.
    let same = |run: &str, r: u32| {
        same_seconds_ratio(
            &progress(log, &format!("ours-{run}-a-r{r}")),
            &progress(log, &format!("ours-{run}-b-r{r}")),
        )
    };
    row("ours, same seconds, cores swapped", &mut |r| same("2px", r));
    row("ours, same seconds, both placements", &mut |r| {
        Some((same("2p", r)? * same("2px", r)?).sqrt())
    });
    let sec_x = |t: &str, r: u32| Some(f(t, "2px-b", r)?.iops / f(t, "2px-a", r)?.iops);
    row("SPDK sec/prim, cores swapped", &mut |r| sec_x("spdk", r));
    row("SPDK sec/prim, both placements", &mut |r| {
        Some((sec("spdk", r)? * sec_x("spdk", r)?).sqrt())
    });
    for pct in [10, 50, 90] {
        for (t, name) in [(Tool::Ours, "ours"), (Tool::Spdk, "SPDK")] {
            row(&format!("QD1 latency p{pct} us, {name}"), &mut |r| {
                percentile(log, &format!("{}-q1-r{r}", t.name()), pct)
            });
        }
    }

    let mut out = format!("{header}\n\n{:<38}", "");
    for r in 1..=rounds {
        out.push_str(&format!(" {:>10}", format!("round {r}")));
    }
    out.push_str(&format!(" {:>10}\n", "median"));
    let fmt = |v: Option<f64>| match v {
        Some(x) if x >= 100.0 => format!("{x:>10.0}"),
        Some(x) => format!("{x:>10.2}"),
        None => format!("{:>10}", "-"),
    };
    for row in &rows {
        out.push_str(&format!("{:<38}", row.label));
        for v in &row.values {
            out.push_str(&format!(" {}", fmt(*v)));
        }
        out.push_str(&format!(" {}\n", fmt(row.median())));
    }
    let m = |i: usize| rows[i].median();
    let ratio = |a: Option<f64>, b: Option<f64>| Some(a? / b?);
    let verdict = |what: &str, r: Option<f64>, target: f64, higher: bool| match r {
        Some(r) => {
            let met = if higher { r >= target } else { r <= target };
            format!(
                "{what}: {r:.2}x (target {} {target:.2}x: {})\n",
                if higher { ">=" } else { "<=" },
                if met { "met" } else { "NOT met" }
            )
        }
        None => format!("{what}: not measured\n"),
    };
    out.push('\n');
    out.push_str(&verdict(
        "QD32 IOPS, ours / SPDK",
        ratio(m(0), m(1)),
        TARGET_QD32_IOPS,
        true,
    ));
    out.push_str(&verdict(
        "QD1 average latency, ours / SPDK",
        ratio(m(2), m(3)),
        TARGET_QD1_LATENCY,
        false,
    ));
    if let Some(r) = ratio(m(18), m(19)) {
        out.push_str(&format!(
            "QD1 median latency, ours / SPDK: {r:.2}x (no target; the average depends on how many I/Os wait for a host wake-up)\n"
        ));
    }
    out.push_str(&verdict(
        "2 processes aggregate IOPS, ours / SPDK",
        ratio(m(4), m(5)),
        TARGET_TWO_PROCESSES,
        true,
    ));
    out.push_str(&verdict(
        "secondary / primary QD32 IOPS, ours, over the same seconds, both core placements",
        m(13),
        TARGET_SECONDARY,
        true,
    ));
    out.push_str(&verdict(
        "a secondary's attach + identify + detach beside a primary, ours / SPDK",
        ratio(m(9), m(10)),
        TARGET_ATTACH,
        false,
    ));
    (out, problems)
}

/// Runs the comparison: `time_s` seconds per run, `rounds` rounds.
pub fn run(spdk: &Path, time_s: u64, rounds: u32, mut vm_opts: VmOpts) -> Result<(), String> {
    let bundle = bundle_dir(spdk)?;
    if vm_opts.aw_bits.is_none() {
        vm_opts.aw_bits = Some(48);
    }
    let tools = vm::prerequisites(&[], ")")?;
    let bins = vm::build_static(&["nvme-tools"], &["nvme-perf", "nvme-setup", "nvmectl"])?;
    let mut ir = vm::Initramfs::new("bench-spdk-vm", &tools.busybox, INIT)?;
    ir.install(&bins[0], "bin/nvme-perf")?;
    ir.install(&bins[1], "bin/nvme-setup")?;
    ir.install(&bins[2], "bin/nvmectl")?;
    ir.modules(&tools.moddir, VFIO_MODULES, "modules-vfio")?;
    let root = ir.work.join("root");
    let st = Command::new("cp")
        .arg("-a")
        .arg(bundle.join("."))
        .arg(&root)
        .status()
        .map_err(|e| format!("cp: {e}"))?;
    if !st.success() {
        return Err(format!(
            "copying the SPDK bundle {} into {} failed",
            bundle.display(),
            root.display()
        ));
    }
    let script: String = (1..=rounds).map(|r| round_script(r, time_s)).collect();
    ir.write("bench.sh", &script)?;
    let initrd = ir.pack()?;

    // Boot, runs and slack: 2 processes take the warm-up and start offset longer.
    let per_round = 4 * (time_s + 15) + 4 * (time_s + 20);
    vm_opts.timeout = vm_opts.timeout.max(std::time::Duration::from_secs(
        60 + per_round * rounds as u64,
    ));
    // Measured before QEMU starts, on an otherwise idle host.
    let wakeup = match vm::host_wakeup_us(500) {
        Some((p50, p90)) => format!("host thread wake-up {p50:.1} us median, {p90:.1} us p90"),
        None => "host thread wake-up not measured".to_string(),
    };
    let mut q = vm::qemu(&tools, &vm_opts, &initrd);
    vm::namespace(&mut q, 1, 4096, NS_BYTES, None)?;
    let console = vm::run(q, vm_opts.timeout, &ir.work, |l| {
        let l = l.trim_start();
        l.starts_with("BENCH") || l.starts_with("HWTEST-INIT") || l.starts_with("qemu stderr")
    })?;
    let header = format!(
        "bench-hw --spdk: 4 KiB random reads, 1 GiB null-co namespace, {time_s} s per run, {rounds} rounds \
         alternated (ours first in odd rounds), QEMU {}, aw-bits {}; one process on core 0 (QD32, QD1), \
         two processes of one group on cores 0 and 1 (QD32 each); {wakeup}",
        vm_opts.accel,
        vm_opts.aw_bits.unwrap_or(39)
    );
    let (table, mut problems) = table(&console.log, rounds, &header);
    println!("{table}");
    let _ = std::fs::write(ir.work.join("results.txt"), &table);
    if console.timed_out {
        problems.push(console.timeout_error(vm_opts.timeout));
    }
    println!(
        "guest run took {:.1} s; console log and results in {}",
        console.took.as_secs_f64(),
        ir.work.display()
    );
    console.verdict(problems, &ir.work)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_alternate_the_tools() {
        let r1 = round_script(1, 5);
        let r2 = round_script(2, 5);
        let first = |s: &str| s.lines().next().unwrap().to_string();
        assert!(first(&r1).starts_with("bench ours-q32-r1 '/bin/nvme-perf -q 32"));
        assert!(first(&r2).starts_with("bench spdk-q32-r2 '/spdk/spdk_nvme_perf -q 32"));
        assert_eq!(r1.lines().count(), 11);
        assert!(r1.contains("startup ours-start-r1 5 '/bin/nvmectl --version'"));
        assert!(r1.contains(
            "bench ours-q1-r1 '/bin/nvme-perf -q 1 -o 4096 -w randread -t 5 -c 0x1 -L -r"
        ));
        assert!(r1.contains(
            "bench spdk-q32-r1 '/spdk/spdk_nvme_perf -q 32 -o 4096 -w randread -t 5 -c 0x1 -r"
        ));
        assert!(r1.contains(
            "attach ours-attach-r1 5 '/bin/nvme-perf -q 32 -o 4096 -w randread -t 10 -i 1 -c 0x1 -r \"trtype:PCIe traddr:$bdf ns:1\"' '/bin/nvmectl -i 1 id-ctrl"
        ));
        assert!(r2.contains("attach spdk-attach-r2 5 '/spdk/spdk_nvme_perf"));
        assert!(r1.contains(
            "bench2 ours-2p-a-r1 ours-2p-b-r1 'NVME_PERF_PROGRESS=1 /bin/nvme-perf -q 32 -o 4096 -w randread -t 5 -i 1 -c 0x1 -a 3"
        ));
        assert!(r1.contains("-i 1 -c 0x2 -a 1 -r \"trtype:PCIe traddr:$bdf ns:1\"'"));
        assert!(r1.contains("bench2 spdk-2p-a-r1 spdk-2p-b-r1 '/spdk/spdk_nvme_perf"));
        assert!(r1.contains(
            "bench2 ours-2px-a-r1 ours-2px-b-r1 'NVME_PERF_PROGRESS=1 /bin/nvme-perf -q 32 -o 4096 -w randread -t 5 -i 1 -c 0x2 -a 3"
        ));
        assert!(r2.contains("bench2 spdk-2px-a-r2 spdk-2px-b-r2 '/spdk/spdk_nvme_perf -q 32 -o 4096 -w randread -t 5 -i 1 -c 0x2 -a 3"));
    }

    #[test]
    fn parses_both_tools_total_lines() {
        let log = "BENCH-TEXT ours-q32-r1 rc=0 Total : 183000.50 714.85 174.20 20.10 900.00\n\
                   BENCH-TEXT spdk-q32-r1 rc=0 Total : 214000.00 835.94 149.00 30.58 1229.91\n\
                   BENCH-TEXT spdk-q1-r1 rc=1 \n\
                   BENCH-FAIL spdk-q1-r1 exit 1: EAL: no hugepages\n";
        assert_eq!(
            figures(log, "ours-q32-r1").unwrap(),
            Figures {
                iops: 183000.5,
                lat_us: 174.2
            }
        );
        assert_eq!(figures(log, "spdk-q32-r1").unwrap().iops, 214000.0);
        assert!(figures(log, "spdk-q1-r1")
            .unwrap_err()
            .contains("no hugepages"));
        assert!(figures(log, "ours-q1-r1")
            .unwrap_err()
            .contains("no result"));
    }

    #[test]
    fn medians_and_verdicts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
        let mut log = String::new();
        for r in 1..=3 {
            let k = r as f64;
            for (name, iops, lat) in [
                ("ours-q32", 240.0e3 + k, 130.0),
                ("spdk-q32", 200.0e3, 160.0),
                ("ours-q1", 30.0e3, 30.0 + k),
                ("spdk-q1", 25.0e3, 40.0),
                ("ours-2p-a", 150.0e3, 200.0),
                ("ours-2p-b", 145.0e3, 210.0),
                ("spdk-2p-a", 140.0e3, 220.0),
                ("spdk-2p-b", 140.0e3, 220.0),
                ("ours-2px-a", 150.0e3, 200.0),
                ("ours-2px-b", 150.0e3, 200.0),
                ("spdk-2px-a", 140.0e3, 220.0),
                ("spdk-2px-b", 126.0e3, 240.0),
            ] {
                log.push_str(&format!(
                    "BENCH-TEXT {name}-r{r} rc=0 Total : {iops} 1.0 {lat} 1.0 2.0\n"
                ));
            }
            // Ours' progress: the primary at 100 K I/Os a second from 10.0 s, the secondary
            // at 97 K a second from 12.5 s; with the cores swapped, at 100 K and 99 K.
            for (run, secondary) in [("2p", 97_000), ("2px", 99_000)] {
                for i in 0..12 {
                    let t = 10.0 + i as f64;
                    log.push_str(&format!(
                        "BENCH-PROGRESS ours-{run}-a-r{r} {t:.3} {}\n",
                        100_000 * i
                    ));
                    log.push_str(&format!(
                        "BENCH-PROGRESS ours-{run}-b-r{r} {:.3} {}\n",
                        t + 2.5,
                        secondary * i
                    ));
                }
            }
            // QD1 percentiles: ours mostly in the fast mode, SPDK's in the slow one.
            log.push_str(&format!(
                "BENCH-PCT ours-q1-r{r} 10.00000% : 7.391us\n\
                 BENCH-PCT ours-q1-r{r} 50.00000% : 7.903us\n\
                 BENCH-PCT ours-q1-r{r} 90.00000% : 52.479us\n\
                 BENCH-PCT spdk-q1-r{r} 50.00000% : 3{r}.5us\n"
            ));
            // Five secondaries in 0.30 s (ours) and in 3.40 s (SPDK's).
            log.push_str(&format!(
                "BENCH-ATTACH ours-attach-r{r} rc=0 runs=5 100.00 100.30\n\
                 BENCH-ATTACH spdk-attach-r{r} rc=0 runs=5 200.00 203.40\n\
                 BENCH-ATTACH ours-start-r{r} rc=0 runs=5 300.00 300.10\n"
            ));
        }
        let (t, problems) = table(&log, 3, "h");
        assert!(problems.is_empty(), "{problems:?}");
        assert!(
            t.contains("QD32 IOPS, ours / SPDK: 1.20x (target >= 1.20x: met)"),
            "{t}"
        );
        assert!(
            t.contains("QD1 average latency, ours / SPDK: 0.80x (target <= 0.85x: met)"),
            "{t}"
        );
        assert!(
            t.contains("2 processes aggregate IOPS, ours / SPDK: 1.05x"),
            "{t}"
        );
        assert!(
            t.contains(
                "secondary / primary QD32 IOPS, ours, over the same seconds, both core placements: 0.98x (target >= 0.95x: met)"
            ),
            "{t}"
        );
        // SPDK's over both placements: sqrt(1.0 * 0.9) by its `Total` lines.
        let both = t
            .lines()
            .find(|l| l.starts_with("SPDK sec/prim, both placements"))
            .expect("the row");
        assert_eq!(both.split_whitespace().last(), Some("0.95"), "{both}");
        assert!(
            t.contains("ours / SPDK: 0.09x (target <= 0.10x: met)"),
            "{t}"
        );
        let p50 = t
            .lines()
            .find(|l| l.starts_with("QD1 latency p50 us, SPDK"))
            .expect("the row");
        assert_eq!(p50.split_whitespace().last(), Some("32.50"), "{p50}");
        // SPDK's p10 and p90 were not printed: no value, and no problem either.
        assert!(
            t.contains(&format!(
                "{:<38} {:>10} {:>10} {:>10} {:>10}",
                "QD1 latency p90 us, SPDK", "-", "-", "-", "-"
            )),
            "{t}"
        );
        assert!(
            t.contains("QD1 median latency, ours / SPDK: 0.24x (no target"),
            "{t}"
        );
        let (_, problems) = table("", 1, "h");
        assert_eq!(problems.len(), 15);
    }

    #[test]
    fn rates_over_the_same_seconds() {
        let log = "BENCH-PROGRESS a 10.000 0\nBENCH-PROGRESS a 11.000 100\nBENCH-PROGRESS a 12.000 200\n\
                   BENCH-PROGRESS a 13.000 300\nBENCH-PROGRESS a 14.000 400\nBENCH-PROGRESS a 15.000 500\n\
                   BENCH-PROGRESS b 10.500 0\nBENCH-PROGRESS b 11.500 50\nBENCH-PROGRESS b 12.500 100\n\
                   BENCH-PROGRESS b 13.500 150\nBENCH-PROGRESS b 14.500 200\nBENCH-PROGRESS b 15.500 250\n\
                   BENCH-PROGRESS c 40.000 0\nBENCH-PROGRESS c 41.000 10\n";
        let (a, b) = (progress(log, "a"), progress(log, "b"));
        assert_eq!(a.len(), 6);
        assert_eq!(ios_at(&a, 12.5), Some(250.0));
        // From 10.5 s to 14.0 s: a at 100 a second, b at 50.
        assert!((same_seconds_ratio(&a, &b).unwrap() - 0.5).abs() < 1e-9);
        // Runs that did not overlap for two seconds give nothing.
        assert_eq!(same_seconds_ratio(&a, &progress(log, "c")), None);
        assert_eq!(same_seconds_ratio(&a, &[]), None);
    }

    #[test]
    fn attach_times_and_failures() {
        let log = "BENCH-ATTACH ours-attach-r1 rc=0 runs=5 12.50 13.25\n\
                   BENCH-ATTACH spdk-attach-r1 rc=1 runs=5 12.50 13.25\n\
                   BENCH-FAIL spdk-attach-r1 exit 1: EAL: cannot attach\n";
        assert!((attach_ms(log, "ours-attach-r1").unwrap() - 150.0).abs() < 1e-6);
        assert!(attach_ms(log, "spdk-attach-r1")
            .unwrap_err()
            .contains("EAL: cannot attach"));
        assert!(attach_ms(log, "ours-attach-r2")
            .unwrap_err()
            .contains("no result"));
    }
}
