//! Command-line options (SPDK perf's letters and long forms) and their validation into a
//! [`Config`].

use std::ffi::OsString;
use std::time::Duration;

use clap::{ArgAction, Parser};
use nvme_host_linux::{DataPointer, LeaseMode, TransportId};

use super::lba::{parse_lba_range, LbaRange};
use super::Error;

/// `nvme-perf`'s command line, as typed. [`Cli::validate`] turns it into a [`Config`].
#[derive(Parser, Debug, Clone)]
#[command(
    name = "nvme-perf",
    version,
    about = "Measures NVMe I/O performance (the workloads and output of SPDK's spdk_nvme_perf).",
    after_help = "Example: nvme-perf -q 32 -o 4k -w randread -t 10 -r 'trtype:sim'"
)]
pub struct Cli {
    /// Queue depth per namespace per core.
    #[arg(short = 'q', long = "io-depth", value_name = "N")]
    pub io_depth: u32,
    /// I/O size in bytes; suffixes k, m, g (e.g. 4k, 128k, 1m). `-s` is the older spelling.
    #[arg(short = 'o', long = "io-size", short_alias = 's', value_name = "SIZE", value_parser = parse_size)]
    pub io_size: u64,
    /// I/O pattern: read, write, randread, randwrite, rw, randrw.
    #[arg(short = 'w', long = "io-pattern", value_name = "PATTERN")]
    pub io_pattern: String,
    /// Percentage of reads (0-100) for rw and randrw.
    #[arg(short = 'M', long = "rwmixread", value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(0..=100))]
    pub rwmixread: Option<u8>,
    /// Seconds to run (after the warm-up).
    #[arg(short = 't', long = "time", value_name = "SECONDS")]
    pub time: u64,
    /// Seconds of warm-up, excluded from the results.
    #[arg(
        short = 'a',
        long = "warmup-time",
        value_name = "SECONDS",
        default_value_t = 0
    )]
    pub warmup_time: u64,
    /// Cores to run workers on, a hexadecimal mask (default 0x1): one pinned worker per core.
    #[arg(short = 'c', long = "core-mask", value_name = "MASK")]
    pub core_mask: Option<String>,
    /// Controller to use, e.g. 'trtype:PCIe traddr:0000:04:00.0 ns:1' or 'trtype:sim'
    /// (repeatable).
    #[arg(short = 'r', long = "transport", value_name = "TRID", value_parser = TransportId::parse)]
    pub transport: Vec<TransportId>,
    /// I/O queue pairs per namespace per core.
    #[arg(
        short = 'P',
        long = "num-qpairs",
        value_name = "N",
        default_value_t = 1
    )]
    pub qpairs: u32,
    /// Software latency tracking: -L for percentiles, -LL for the full histogram too.
    #[arg(short = 'L', long = "enable-sw-latency-tracking", action = ArgAction::Count)]
    pub latency: u8,
    /// Stop after N I/Os per namespace per core (in addition to the time limit).
    #[arg(short = 'd', long = "number-ios", value_name = "N")]
    pub number_ios: Option<u64>,
    /// Continue after I/O errors, printing every Nth error.
    #[arg(short = 'Q', long = "continue-on-error", value_name = "N")]
    pub continue_on_error: Option<u64>,
    /// Entries of each I/O queue (default: 1024, or what the queue depth needs if more,
    /// within the controller's maximum).
    #[arg(long = "io-queue-size", value_name = "N")]
    pub io_queue_size: Option<u32>,
    /// Print the results as one JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Shared-memory group id: processes started with the same id share the controllers
    /// (the first is the primary, the others secondaries; each has its own I/O queues).
    #[arg(short = 'i', long = "shmem-grp-id", value_name = "ID")]
    pub shmem_grp_id: Option<u32>,
    /// Restrict the I/O to COUNT blocks from LBA START of each namespace (e.g. 0:262144).
    #[arg(long = "lba-range", value_name = "START:COUNT", value_parser = parse_lba_range)]
    pub lba_range: Option<LbaRange>,
    /// Hold an LBA range lease on the blocks the run uses (its --lba-range, or the whole
    /// namespace) for the whole run: exclusive (no other process may lease them) or shared
    /// (other shared leases may overlap). Its writes are checked against it; a claim that
    /// conflicts with another process's lease ends the run with an error naming it.
    #[arg(long = "lease", value_name = "exclusive|shared")]
    pub lease: Option<LeaseMode>,
    /// Completions by interrupt: each I/O queue gets an MSI-X vector and a worker with
    /// nothing completed sleeps until one fires instead of polling (a queue the controller
    /// has no vector for is polled, with a warning).
    #[arg(long)]
    pub interrupt: bool,
    /// How I/O commands point to their data: auto (SGLs where the controller reports SGL
    /// support, else PRPs), prp or sgl. Not in SPDK's perf.
    #[arg(long = "data-pointer", value_name = "auto|prp|sgl", default_value = "auto", value_parser = parse_data_pointer)]
    pub data_pointer: DataPointer,
}

/// `--data-pointer`'s value.
pub fn parse_data_pointer(s: &str) -> Result<DataPointer, String> {
    match s {
        "auto" => Ok(DataPointer::Auto),
        "prp" => Ok(DataPointer::Prp),
        "sgl" => Ok(DataPointer::Sgl),
        _ => Err(format!(
            "'{s}' is not a data pointer kind: use auto, prp or sgl"
        )),
    }
}

/// Which I/O a workload issues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Workload {
    /// Random LBAs (`rand*`) or sequential ones.
    pub random: bool,
    /// Percentage of reads: 100 for read, 0 for write, `-M` for rw.
    pub read_percent: u8,
}

impl Workload {
    /// The pattern's SPDK name (`randrw`, `read`, ...).
    pub fn name(&self) -> &'static str {
        match (self.random, self.read_percent) {
            (false, 100) => "read",
            (false, 0) => "write",
            (false, _) => "rw",
            (true, 100) => "randread",
            (true, 0) => "randwrite",
            (true, _) => "randrw",
        }
    }
}

/// Validated options of a run.
#[derive(Clone, Debug)]
pub struct Config {
    /// I/Os in flight per namespace per worker.
    pub io_depth: u32,
    /// Bytes per I/O.
    pub io_size: usize,
    /// The workload.
    pub workload: Workload,
    /// Measured run time.
    pub time: Duration,
    /// Warm-up before the measurement.
    pub warmup: Duration,
    /// Cores to run one worker each on; `None` = the first core available to the process.
    pub cores: Option<Vec<usize>>,
    /// `-c` as typed, for messages.
    pub core_mask: Option<String>,
    /// The controllers.
    pub transports: Vec<TransportId>,
    /// Queue pairs per namespace per worker.
    pub qpairs: u32,
    /// 0: no histogram, 1: percentiles (`-L`), 2: and the histogram (`-LL`).
    pub latency_level: u8,
    /// Stop after this many I/Os per namespace per worker.
    pub number_ios: Option<u64>,
    /// Continue after I/O errors, printing every Nth one.
    pub continue_on_error: Option<u64>,
    /// Entries per I/O queue, when given.
    pub io_queue_size: Option<u32>,
    /// JSON output.
    pub json: bool,
    /// Shared-memory group (`-i`) every controller is attached in.
    pub shm_id: Option<u32>,
    /// PRPs or SGLs for the I/O commands (`--data-pointer`).
    pub data_pointer: DataPointer,
    /// The blocks of each namespace the run uses (`--lba-range`; all when `None`).
    pub lba_range: Option<LbaRange>,
    /// The lease held on those blocks during the run (`--lease`).
    pub lease: Option<LeaseMode>,
    /// Interrupt-driven completions (`--interrupt`).
    pub interrupts: bool,
}

/// The longest run: `-t` plus `-a`, one year. Longer is a typo (or an overflow attempt), and
/// durations in nanoseconds stay far inside `u64` (584 years).
pub const MAX_RUN_SECONDS: u64 = 365 * 24 * 3600;

/// Checks `-t` and `-a`, each alone and their sum, against [`MAX_RUN_SECONDS`] (checked
/// arithmetic: a sum that overflows is refused like any other that is too long).
pub fn check_run_time(time: u64, warmup: u64) -> Result<(), Error> {
    let limit = format!("at most {MAX_RUN_SECONDS} seconds (365 days)");
    if time > MAX_RUN_SECONDS {
        return Err(Error::new(format!("-t/--time {time} is too long: {limit}")));
    }
    if warmup > MAX_RUN_SECONDS {
        return Err(Error::new(format!(
            "-a/--warmup-time {warmup} is too long: {limit}"
        )));
    }
    match time.checked_add(warmup) {
        Some(total) if total <= MAX_RUN_SECONDS => Ok(()),
        _ => Err(Error::new(format!(
            "-t {time} plus -a {warmup} is too long: the run and its warm-up take {limit}"
        ))),
    }
}

/// The limit on the I/O buffers of a run: half of the machine's memory (`MemTotal`), or
/// 16 GiB when that cannot be read. The buffers are DMA memory, locked in RAM.
pub fn buffer_memory_limit() -> u64 {
    let total_kb = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
    });
    match total_kb {
        Some(kb) => kb.saturating_mul(1024) / 2,
        None => 16 << 30,
    }
}

/// Checks the I/O buffers a run allocates, `-q` x `-o` for each namespace of each worker,
/// against `limit` bytes.
pub fn check_buffer_memory(
    io_depth: u32,
    io_size: usize,
    workers: usize,
    namespaces: usize,
    limit: u64,
) -> Result<(), Error> {
    let total = [io_size, workers, namespaces]
        .iter()
        .fold(io_depth as u128, |t, &n| t.saturating_mul(n as u128));
    if total <= limit as u128 {
        return Ok(());
    }
    Err(Error::new(format!(
        "-q {io_depth} x -o {io_size} x {workers} worker(s) x {namespaces} namespace(s) asks for {} of I/O buffers, more than the limit of {} (half of this machine's memory); lower -q or -o",
        format_bytes(total),
        format_bytes(limit as u128)
    )))
}

/// `512 bytes`, `4.0 KiB`, `16.0 TiB`.
pub fn format_bytes(n: u128) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Things worth telling the user that do not stop the run.
pub type Warnings = Vec<String>;

impl Cli {
    /// Parses `args` (the first is the program name). Help and usage errors come back as
    /// clap errors, which know how to print themselves.
    pub fn parse_args<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        Cli::try_parse_from(args)
    }

    /// Checks the options against each other and returns the run's configuration.
    pub fn validate(self) -> Result<(Config, Warnings), Error> {
        let mut warnings = Vec::new();
        if self.io_depth == 0 {
            return Err(Error::new("-q/--io-depth must be at least 1"));
        }
        if self.qpairs == 0 {
            return Err(Error::new(
                "-P (queue pairs per namespace) must be at least 1",
            ));
        }
        if self.time == 0 {
            return Err(Error::new("-t/--time must be at least 1 second"));
        }
        check_run_time(self.time, self.warmup_time)?;
        if self.continue_on_error == Some(0) {
            return Err(Error::new("-Q needs N >= 1 (print every Nth error)"));
        }
        if self.number_ios == Some(0) {
            return Err(Error::new("-d/--number-ios must be at least 1"));
        }
        let io_size = usize::try_from(self.io_size)
            .map_err(|_| Error::new(format!("I/O size {} is too large", self.io_size)))?;
        let workload = parse_workload(&self.io_pattern, self.rwmixread, &mut warnings)?;
        let cores = self.core_mask.as_deref().map(parse_core_mask).transpose()?;
        // One namespace per worker at least; the run checks again once it knows them all.
        let workers = cores.as_ref().map_or(1, Vec::len);
        check_buffer_memory(self.io_depth, io_size, workers, 1, buffer_memory_limit())?;
        if self.transport.is_empty() {
            return Err(Error::new(
                "no controller given: pass -r 'trtype:sim' for the built-in software controller, \
                 or -r 'trtype:PCIe traddr:0000:04:00.0' for a controller bound to vfio-pci",
            ));
        }
        let config = Config {
            io_depth: self.io_depth,
            io_size,
            workload,
            time: Duration::from_secs(self.time),
            warmup: Duration::from_secs(self.warmup_time),
            cores,
            core_mask: self.core_mask,
            transports: self.transport,
            qpairs: self.qpairs,
            latency_level: self.latency.min(2),
            number_ios: self.number_ios,
            continue_on_error: self.continue_on_error,
            io_queue_size: self.io_queue_size,
            json: self.json,
            shm_id: self.shmem_grp_id,
            data_pointer: self.data_pointer,
            lba_range: self.lba_range,
            lease: self.lease,
            interrupts: self.interrupt,
        };
        Ok((config, warnings))
    }
}

/// Parses an I/O pattern and the read mix.
fn parse_workload(
    pattern: &str,
    mix: Option<u8>,
    warnings: &mut Warnings,
) -> Result<Workload, Error> {
    let lower = pattern.to_ascii_lowercase();
    let (random, kind) = match lower.strip_prefix("rand") {
        Some(rest) => (true, rest),
        None => (false, lower.as_str()),
    };
    let read_percent = match kind {
        "read" | "write" => {
            if mix.is_some() {
                warnings.push(format!("ignoring -M: it applies only to rw and randrw, not {pattern}"));
            }
            if kind == "read" {
                100
            } else {
                0
            }
        }
        "rw" => mix.ok_or_else(|| {
            Error::new(format!(
                "-w {pattern} needs -M/--rwmixread: the percentage of reads, 0-100 (e.g. -M 70)"
            ))
        })?,
        _ => {
            return Err(Error::new(format!(
                "unknown I/O pattern '{pattern}': use one of read, write, randread, randwrite, rw, randrw"
            )))
        }
    };
    Ok(Workload {
        random,
        read_percent,
    })
}

/// Parses a size in bytes with an optional `k`, `m` or `g` suffix (powers of 1024; `kb`,
/// `kib` also accepted). Zero is refused.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || {
        format!("bad size '{s}': expected bytes, optionally with a k, m or g suffix (e.g. 4096, 4k, 128k, 1m)")
    };
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(split);
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(bad()),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let v = n.checked_mul(1 << shift).ok_or_else(bad)?;
    if v == 0 {
        return Err(format!("bad size '{s}': must be above zero"));
    }
    Ok(v)
}

/// Parses a hexadecimal core mask (`0x3`, `3`, `0xff00`, any length) into the sorted core
/// numbers it names.
pub fn parse_core_mask(mask: &str) -> Result<Vec<usize>, Error> {
    let bad = || {
        Error::new(format!(
            "bad core mask '{mask}': expected a hexadecimal mask such as 0x1 or 0x3"
        ))
    };
    let t = mask.trim();
    let hex = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    if hex.is_empty() {
        return Err(bad());
    }
    let mut cores = Vec::new();
    for (i, c) in hex.chars().rev().enumerate() {
        let nibble = c.to_digit(16).ok_or_else(bad)?;
        cores.extend((0..4).filter(|b| nibble & (1 << b) != 0).map(|b| i * 4 + b));
    }
    if cores.is_empty() {
        return Err(Error::new(format!("core mask '{mask}' selects no cores")));
    }
    cores.sort_unstable();
    Ok(cores)
}

/// Checks that every core in `cores` is in `available`; the error names the first that is not.
pub fn check_cores(cores: &[usize], available: &[usize], mask: &str) -> Result<(), Error> {
    match cores.iter().find(|c| !available.contains(c)) {
        None => Ok(()),
        Some(c) => Err(Error::new(format!(
            "core mask {mask} names core {c}, which does not exist or is not available to this process (available cores: {})",
            format_core_list(available)
        ))),
    }
}

/// Formats sorted core numbers as ranges: `0-3,6,8-9`.
pub fn format_core_list(cores: &[usize]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < cores.len() {
        let start = cores[i];
        while i + 1 < cores.len() && cores[i + 1] == cores[i] + 1 {
            i += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        if cores[i] == start {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}-{}", cores[i]));
        }
        i += 1;
    }
    if out.is_empty() {
        out.push_str("none");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &str) -> Result<Cli, clap::Error> {
        Cli::parse_args(std::iter::once("nvme-perf").chain(args.split_whitespace()))
    }

    fn config(args: &str) -> Result<(Config, Warnings), String> {
        let mut c = cli(args).map_err(|e| e.to_string())?;
        c.transport.push(TransportId::parse("trtype:sim").unwrap());
        c.validate().map_err(|e| e.to_string())
    }

    #[test]
    fn sizes_take_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("128k"), Ok(128 << 10));
        assert_eq!(parse_size("1m"), Ok(1 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert!(parse_size("4x").unwrap_err().contains("bad size '4x'"));
        assert!(parse_size("k").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("0").unwrap_err().contains("above zero"));
        assert!(parse_size("99999999999999g").is_err());
    }

    #[test]
    fn spdk_letters_and_long_forms() {
        let (c, w) = config("-q 32 -o 4k -w randread -t 3").unwrap();
        assert!(w.is_empty());
        assert_eq!(
            (c.io_depth, c.io_size, c.time),
            (32, 4096, Duration::from_secs(3))
        );
        assert_eq!(
            c.workload,
            Workload {
                random: true,
                read_percent: 100
            }
        );
        assert_eq!(c.cores, None);
        assert_eq!((c.qpairs, c.latency_level, c.json), (1, 0, false));
        let (c, _) = config(
            "--io-depth 4 --io-size 128k --io-pattern rw --rwmixread 30 --time 2 --warmup-time 1 \
             --core-mask 0x3 -P 2 -LL -d 100 -Q 10 --io-queue-size 64 --json",
        )
        .unwrap();
        assert_eq!((c.io_depth, c.io_size), (4, 128 << 10));
        assert_eq!(
            c.workload,
            Workload {
                random: false,
                read_percent: 30
            }
        );
        assert_eq!(c.warmup, Duration::from_secs(1));
        assert_eq!(c.cores, Some(vec![0, 1]));
        assert_eq!(
            (c.qpairs, c.latency_level, c.number_ios, c.continue_on_error),
            (2, 2, Some(100), Some(10))
        );
        assert_eq!((c.io_queue_size, c.json), (Some(64), true));
        assert!(!c.interrupts);
        assert!(
            config("-q 1 -o 4k -w read -t 1 --interrupt")
                .unwrap()
                .0
                .interrupts
        );
        // -s is the older spelling of -o.
        let (c, _) = config("-q 1 -s 1m -w write -t 1").unwrap();
        assert_eq!((c.io_size, c.workload.read_percent), (1 << 20, 0));
        let (c, _) = config("-q 1 -o 512 -w randwrite -t 1 -L").unwrap();
        assert_eq!(c.latency_level, 1);
        let r = cli("-q 1 -o 4k -w read -t 1 -r trtype:sim -r trtype:sim").unwrap();
        assert_eq!(r.transport.len(), 2);
    }

    #[test]
    fn rw_needs_a_mix() {
        let e = config("-q 1 -o 4k -w randrw -t 1").unwrap_err();
        assert!(e.contains("-w randrw needs -M/--rwmixread"), "{e}");
        let e = config("-q 1 -o 4k -w rw -t 1").unwrap_err();
        assert!(e.contains("-M"), "{e}");
        let (c, _) = config("-q 1 -o 4k -w randrw -M 70 -t 1").unwrap();
        assert_eq!(
            c.workload,
            Workload {
                random: true,
                read_percent: 70
            }
        );
        assert_eq!(c.workload.name(), "randrw");
        let (_, w) = config("-q 1 -o 4k -w read -M 70 -t 1").unwrap();
        assert!(w[0].contains("ignoring -M"), "{w:?}");
        let e = cli("-q 1 -o 4k -w rw -M 101 -t 1").unwrap_err().to_string();
        assert!(e.contains("101"), "{e}");
    }

    #[test]
    fn bad_options_are_named() {
        let e = config("-q 1 -o 4k -w randscan -t 1").unwrap_err();
        assert!(e.contains("unknown I/O pattern 'randscan'"), "{e}");
        assert!(config("-q 0 -o 4k -w read -t 1")
            .unwrap_err()
            .contains("-q/--io-depth"));
        assert!(config("-q 1 -o 4k -w read -t 0")
            .unwrap_err()
            .contains("-t/--time"));
        assert!(config("-q 1 -o 4k -w read -t 1 -P 0")
            .unwrap_err()
            .contains("-P"));
        assert!(config("-q 1 -o 4k -w read -t 1 -Q 0")
            .unwrap_err()
            .contains("-Q"));
        let e = cli("-q 1 -o 4x -w read -t 1").unwrap_err().to_string();
        assert!(e.contains("bad size '4x'"), "{e}");
        let e = cli("-q 1 -o 4k -w read -t 1 -r trtype:nope")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown trtype 'nope'"), "{e}");
        let e = cli("-o 4k -w read -t 1").unwrap_err().to_string();
        assert!(e.contains("--io-depth"), "{e}");
        let mut c = cli("-q 1 -o 4k -w read -t 1").unwrap();
        c.transport.clear();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("-r 'trtype:sim'") && e.contains("PCIe"), "{e}");
    }

    #[test]
    fn run_time_is_bounded_and_never_wraps() {
        // 18446744074 s is 2^64 ns and a bit: in nanoseconds it wrapped to 0.29 s.
        let e = config("-q 1 -o 4k -w read -t 18446744074").unwrap_err();
        assert!(
            e.contains("-t/--time 18446744074 is too long: at most 31536000 seconds"),
            "{e}"
        );
        // -a u64::MAX overflowed the end of the run to a moment already past.
        let e = config("-q 1 -o 4k -w read -t 1 -a 18446744073709551615").unwrap_err();
        assert!(
            e.contains("-a/--warmup-time 18446744073709551615 is too long"),
            "{e}"
        );
        let e = config("-q 1 -o 4k -w read -t 31536000 -a 1").unwrap_err();
        assert!(e.contains("-t 31536000 plus -a 1 is too long"), "{e}");
        let (c, _) = config("-q 1 -o 4k -w read -t 31535000 -a 1000").unwrap();
        assert_eq!(c.time + c.warmup, Duration::from_secs(MAX_RUN_SECONDS));
        assert!(check_run_time(u64::MAX, u64::MAX).is_err());
        assert!(check_run_time(MAX_RUN_SECONDS - 1, 1).is_ok());
    }

    #[test]
    fn buffer_memory_is_bounded() {
        // The audit's -q 4294967295 -o 4k: 16 TiB of buffers.
        let e = check_buffer_memory(u32::MAX, 4096, 1, 1, 8 << 30)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "-q 4294967295 x -o 4096 x 1 worker(s) x 1 namespace(s) asks for 16.0 TiB of I/O buffers, more than the limit of 8.0 GiB (half of this machine's memory); lower -q or -o"
        );
        // Workers and namespaces multiply; the product never overflows.
        assert!(check_buffer_memory(1024, 1 << 20, 4, 2, 8 << 30).is_ok());
        assert!(check_buffer_memory(1024, 1 << 20, 4, 3, 8 << 30).is_err());
        assert!(
            check_buffer_memory(u32::MAX, usize::MAX, usize::MAX, usize::MAX, u64::MAX).is_err()
        );
        // validate applies the machine's limit.
        let e = config("-q 4294967295 -o 4k -w read -t 1").unwrap_err();
        assert!(e.contains("asks for 16.0 TiB of I/O buffers"), "{e}");
        assert!(buffer_memory_limit() > 0);
        assert_eq!(format_bytes(512), "512 bytes");
        assert_eq!(format_bytes(1536), "1.5 KiB");
    }

    #[test]
    fn shared_memory_group_id() {
        assert_eq!(config("-q 1 -o 4k -w read -t 1").unwrap().0.shm_id, None);
        assert_eq!(
            config("-q 1 -o 4k -w read -t 1 -i 7").unwrap().0.shm_id,
            Some(7)
        );
        assert_eq!(
            config("-q 1 -o 4k -w read -t 1 --shmem-grp-id 3")
                .unwrap()
                .0
                .shm_id,
            Some(3)
        );
        assert!(cli("-q 1 -o 4k -w read -t 1 -i x").is_err());
        let dp = |extra: &str| {
            config(&format!("-q 1 -o 4k -w read -t 1 {extra}"))
                .unwrap()
                .0
                .data_pointer
        };
        assert_eq!(dp(""), DataPointer::Auto);
        assert_eq!(dp("--data-pointer prp"), DataPointer::Prp);
        assert_eq!(dp("--data-pointer sgl"), DataPointer::Sgl);
        assert!(cli("-q 1 -o 4k -w read -t 1 --data-pointer sg").is_err());
    }

    #[test]
    fn lba_range_and_lease() {
        let (c, _) = config("-q 1 -o 4k -w read -t 1").unwrap();
        assert_eq!((c.lba_range, c.lease), (None, None));
        let (c, _) = config("-q 1 -o 4k -w write -t 1 --lba-range 8:1024 --lease shared").unwrap();
        assert_eq!(
            c.lba_range,
            Some(LbaRange {
                start: 8,
                count: 1024
            })
        );
        assert_eq!(c.lease, Some(LeaseMode::Shared));
        let e = cli("-q 1 -o 4k -w read -t 1 --lease mine")
            .unwrap_err()
            .to_string();
        assert!(e.contains("lease mode 'mine': give exclusive"), "{e}");
        let e = cli("-q 1 -o 4k -w read -t 1 --lba-range 5")
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected START:COUNT"), "{e}");
    }

    #[test]
    fn core_masks() {
        assert_eq!(parse_core_mask("0x1").unwrap(), vec![0]);
        assert_eq!(parse_core_mask("0x3").unwrap(), vec![0, 1]);
        assert_eq!(parse_core_mask("3").unwrap(), vec![0, 1]);
        assert_eq!(parse_core_mask("0XA").unwrap(), vec![1, 3]);
        assert_eq!(parse_core_mask("0x100000000000000000").unwrap(), vec![68]);
        assert!(parse_core_mask("0x0")
            .unwrap_err()
            .to_string()
            .contains("selects no cores"));
        assert!(parse_core_mask("0xg")
            .unwrap_err()
            .to_string()
            .contains("bad core mask '0xg'"));
        assert!(parse_core_mask("0x").is_err());
        check_cores(&[0, 1], &[0, 1, 2], "0x3").unwrap();
        let e = check_cores(&[0, 5], &[0, 1], "0x21")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("core mask 0x21 names core 5") && e.contains("available cores: 0-1"),
            "{e}"
        );
        assert_eq!(format_core_list(&[0, 1, 2, 3, 6, 8, 9]), "0-3,6,8-9");
        assert_eq!(format_core_list(&[4]), "4");
        assert_eq!(format_core_list(&[]), "none");
    }
}
