//! The results: SPDK perf's table, latency percentiles and histogram, and the JSON form.
//! Everything here is a pure function of the numbers, so the exact text is tested.

use std::fmt::Write;

use super::stats::Stats;
use crate::json::Json;

/// The percentile cutoffs SPDK perf prints with `-L`, as fractions.
pub const CUTOFFS: [f64; 15] = [
    0.01, 0.10, 0.25, 0.50, 0.75, 0.90, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999, 0.99999, 0.999999,
    0.9999999,
];

const RULE: &str = "========================================================";

/// The results of one namespace on one worker.
#[derive(Clone, Debug)]
pub struct Row {
    /// `PCIE (0000:04:00.0) NSID 1`, `SIM (sim) NSID 1`.
    pub name: String,
    /// Namespace id.
    pub nsid: u32,
    /// The worker's core.
    pub core: usize,
    /// Measured seconds (after the warm-up, until the last I/O completed).
    pub elapsed_s: f64,
    /// The counters.
    pub stats: Stats,
}

/// A row's (or the total's) figures.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Figures {
    /// I/Os per second.
    pub iops: f64,
    /// MiB per second.
    pub mib_s: f64,
    /// Average latency in microseconds.
    pub avg_us: f64,
    /// Smallest latency in microseconds.
    pub min_us: f64,
    /// Largest latency in microseconds.
    pub max_us: f64,
}

impl Row {
    /// IOPS = completions / elapsed seconds; MiB/s = IOPS x I/O size / 2^20.
    pub fn figures(&self, io_size: usize) -> Figures {
        let s = &self.stats;
        let iops = if self.elapsed_s > 0.0 {
            s.ios as f64 / self.elapsed_s
        } else {
            0.0
        };
        let (avg_us, min_us, max_us) = if s.ios == 0 {
            (0.0, 0.0, 0.0)
        } else {
            (
                s.latency_sum_ns as f64 / s.ios as f64 / 1e3,
                s.latency_min_ns as f64 / 1e3,
                s.latency_max_ns as f64 / 1e3,
            )
        };
        Figures {
            iops,
            mib_s: mib_s(iops, io_size),
            avg_us,
            min_us,
            max_us,
        }
    }

    /// The latency percentiles (empty without a histogram or I/O).
    pub fn percentiles(&self) -> Vec<(f64, f64)> {
        match &self.stats.histogram {
            Some(h) => percentiles(
                h.iter_recorded()
                    .map(|v| (v.value_iterated_to(), v.count_at_value())),
                h.len(),
            ),
            None => Vec::new(),
        }
    }
}

fn mib_s(iops: f64, io_size: usize) -> f64 {
    iops * io_size as f64 / (1024.0 * 1024.0)
}

/// All the results of a run.
#[derive(Clone, Debug)]
pub struct Report {
    /// Bytes per I/O.
    pub io_size: usize,
    /// One row per namespace per worker, in worker order.
    pub rows: Vec<Row>,
}

/// Totals over the rows that did I/O.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Totals {
    /// I/Os completed.
    pub ios: u64,
    /// Errors.
    pub errors: u64,
    /// I/Os aborted by controller resets (and submitted again).
    pub aborted_by_reset: u64,
    /// Sum of the rows' IOPS and MiB/s; average latency weighted by I/O count; min of the
    /// mins, max of the maxes.
    pub figures: Figures,
}

impl Report {
    /// The totals, as SPDK computes them.
    pub fn totals(&self) -> Totals {
        let mut t = Figures {
            iops: 0.0,
            mib_s: 0.0,
            avg_us: 0.0,
            min_us: f64::MAX,
            max_us: 0.0,
        };
        let (mut ios, mut errors, mut sum_ns) = (0u64, 0u64, 0u128);
        let mut aborted_by_reset = 0;
        for row in &self.rows {
            errors += row.stats.errors;
            aborted_by_reset += row.stats.aborted_by_reset;
            if row.stats.ios == 0 {
                continue;
            }
            let f = row.figures(self.io_size);
            t.iops += f.iops;
            t.mib_s += f.mib_s;
            t.min_us = t.min_us.min(f.min_us);
            t.max_us = t.max_us.max(f.max_us);
            ios += row.stats.ios;
            sum_ns += row.stats.latency_sum_ns as u128;
        }
        if ios == 0 {
            t.min_us = 0.0;
        } else {
            t.avg_us = sum_ns as f64 / ios as f64 / 1e3;
        }
        Totals {
            ios,
            errors,
            aborted_by_reset,
            figures: t,
        }
    }

    /// The table SPDK perf prints at the end.
    pub fn table(&self) -> String {
        let w = self.rows.iter().map(|r| r.name.len()).max().unwrap_or(0);
        let mut out = String::new();
        let _ = writeln!(out, "{RULE}");
        let _ = writeln!(out, "{:>width$}", "Latency(us)", width = w + 60);
        let _ = writeln!(
            out,
            "{:<width$}: {:>10} {:>10} {:>10} {:>10} {:>10}",
            "Device Information",
            "IOPS",
            "MiB/s",
            "Average",
            "min",
            "max",
            width = w + 13
        );
        for row in self.rows.iter().filter(|r| r.stats.ios > 0) {
            let f = row.figures(self.io_size);
            let _ = writeln!(
                out,
                "{:<w$.w$} from core {:>2}: {}",
                row.name,
                row.core,
                figures_columns(&f)
            );
        }
        let totals = self.totals();
        if totals.ios > 0 {
            let _ = writeln!(out, "{RULE}");
            let _ = writeln!(
                out,
                "{:<width$}: {}",
                "Total",
                figures_columns(&totals.figures),
                width = w + 13
            );
            out.push('\n');
        }
        if totals.aborted_by_reset > 0 {
            let _ = writeln!(
                out,
                "Controller resets during the run aborted {} I/Os; they were submitted again (not counted above).\n",
                totals.aborted_by_reset
            );
        }
        out
    }

    /// `-L`: the percentile summary of every row.
    pub fn percentile_summary(&self) -> String {
        let mut out = String::new();
        if self.totals().ios == 0 {
            return out;
        }
        for row in &self.rows {
            let _ = writeln!(
                out,
                "Summary latency data for {:<43.43} from core {}:",
                row.name, row.core
            );
            let _ = writeln!(out, "{}", "=".repeat(81));
            for (cutoff, ns) in row.percentiles() {
                let _ = writeln!(out, "{}", percentile_line(cutoff, ns));
            }
            out.push('\n');
        }
        out
    }

    /// `-LL`: the latency histogram of every row.
    pub fn histograms(&self) -> String {
        let mut out = String::new();
        if self.totals().ios == 0 {
            return out;
        }
        for row in &self.rows {
            let _ = writeln!(
                out,
                "Latency histogram for {:<43.43} from core {}:",
                row.name, row.core
            );
            let _ = writeln!(out, "{}", "=".repeat(78));
            let _ = writeln!(out, "       Range in us     Cumulative    IO count");
            if let Some(h) = &row.stats.histogram {
                let total = h.len();
                let mut so_far = 0;
                for v in h.iter_recorded() {
                    let value = v.value_iterated_to();
                    so_far += v.count_at_value();
                    let line = bucket_line(
                        h.lowest_equivalent(value),
                        value,
                        so_far,
                        total,
                        v.count_at_value(),
                    );
                    let _ = writeln!(out, "{line}");
                }
            }
            out.push('\n');
        }
        out
    }

    /// The results as one JSON object (see the crate README for the fields).
    pub fn json(&self, context: &JsonContext<'_>) -> String {
        let mut out = Json::object();
        out.push("io_size", self.io_size)
            .push("io_depth", context.io_depth)
            .push("io_pattern", context.io_pattern)
            .push("rwmixread", context.read_percent)
            .push("time_s", context.time_s)
            .push("warmup_s", context.warmup_s);
        let mut devices = Vec::with_capacity(self.rows.len());
        for row in &self.rows {
            let mut d = Json::object();
            d.push("name", row.name.as_str())
                .push("nsid", row.nsid)
                .push("core", row.core)
                .push("elapsed_s", Json::fixed(row.elapsed_s, 6))
                .push("ios", row.stats.ios)
                .push("reads", row.stats.reads)
                .push("writes", row.stats.writes)
                .push("errors", row.stats.errors);
            push_figures(&mut d, &row.figures(self.io_size));
            if row.stats.histogram.is_some() {
                let percentiles = row
                    .percentiles()
                    .iter()
                    .map(|&(cutoff, ns)| {
                        let mut p = Json::object();
                        p.push("percentile", Json::fixed(cutoff * 100.0, 5))
                            .push("us", Json::fixed(ns / 1e3, 3));
                        p
                    })
                    .collect::<Vec<_>>();
                d.push("percentiles_us", percentiles);
            }
            devices.push(d);
        }
        out.push("devices", devices);
        let t = self.totals();
        let mut total = Json::object();
        total
            .push("ios", t.ios)
            .push("errors", t.errors)
            .push("aborted_by_reset", t.aborted_by_reset);
        push_figures(&mut total, &t.figures);
        out.push("total", total);
        out.compact()
    }
}

/// Run parameters echoed in the JSON output.
#[derive(Clone, Copy, Debug)]
pub struct JsonContext<'a> {
    /// Queue depth.
    pub io_depth: u32,
    /// Pattern name (`randrw`, ...).
    pub io_pattern: &'a str,
    /// Read percentage.
    pub read_percent: u8,
    /// Measured seconds requested.
    pub time_s: u64,
    /// Warm-up seconds.
    pub warmup_s: u64,
}

fn figures_columns(f: &Figures) -> String {
    format!(
        "{:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
        f.iops, f.mib_s, f.avg_us, f.min_us, f.max_us
    )
}

/// Adds `iops`, `mib_s` and `latency_us` to the object `o`.
fn push_figures(o: &mut Json, f: &Figures) {
    let mut latency = Json::object();
    latency
        .push("avg", Json::fixed(f.avg_us, 3))
        .push("min", Json::fixed(f.min_us, 3))
        .push("max", Json::fixed(f.max_us, 3));
    o.push("iops", Json::fixed(f.iops, 2))
        .push("mib_s", Json::fixed(f.mib_s, 2))
        .push("latency_us", latency);
}

/// SPDK's percentile computation over histogram buckets given as (largest value in the
/// bucket, count), in increasing order: each cutoff gets the first bucket at which the
/// cumulative share reaches it. Returns (cutoff, value) pairs.
pub fn percentiles(buckets: impl IntoIterator<Item = (u64, u64)>, total: u64) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(CUTOFFS.len());
    if total == 0 {
        return out;
    }
    let mut cutoffs = CUTOFFS.iter().copied().peekable();
    let mut so_far = 0u64;
    for (value, count) in buckets {
        if count == 0 {
            continue;
        }
        so_far += count;
        let share = so_far as f64 / total as f64;
        while let Some(c) = cutoffs.next_if(|&c| share >= c) {
            out.push((c, value as f64));
        }
    }
    out
}

/// `  1.00000% :    12.345us` (cutoff as a fraction, latency in nanoseconds).
pub fn percentile_line(cutoff: f64, ns: f64) -> String {
    format!("{:9.5}% : {:9.3}us", cutoff * 100.0, ns / 1e3)
}

/// `    9.775 -     9.833:    0.0011%  (        1)`: a histogram bucket from `low_ns` to
/// `high_ns`, the cumulative share and its count.
pub fn bucket_line(low_ns: u64, high_ns: u64, so_far: u64, total: u64, count: u64) -> String {
    let share = if total == 0 {
        0.0
    } else {
        so_far as f64 * 100.0 / total as f64
    };
    format!(
        "{:9.3} - {:9.3}: {:9.4}%  ({:9})",
        low_ns as f64 / 1e3,
        high_ns as f64 / 1e3,
        share,
        count
    )
}

/// The once-a-second line: `    12345 IOPS,    48.22 MiB/s` (SPDK prints it with `\r`).
pub fn periodic_line(ios: u64, io_size: usize, warmup: bool) -> String {
    let mib = ios as f64 * io_size as f64 / (1024.0 * 1024.0);
    format!(
        "{}{:9} IOPS, {:8.2} MiB/s",
        if warmup { "[warmup] " } else { "" },
        ios,
        mib
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::perf::stats::new_histogram;

    fn row(
        name: &str,
        core: usize,
        ios: u64,
        sum_ns: u64,
        min_ns: u64,
        max_ns: u64,
        elapsed_s: f64,
    ) -> Row {
        let mut stats = Stats::new(false);
        stats.ios = ios;
        stats.reads = ios;
        stats.latency_sum_ns = sum_ns;
        stats.latency_min_ns = if ios == 0 { u64::MAX } else { min_ns };
        stats.latency_max_ns = max_ns;
        Row {
            name: name.into(),
            nsid: 1,
            core,
            elapsed_s,
            stats,
        }
    }

    #[test]
    fn table_matches_spdk() {
        // 3567.53 IOPS over 10 s at 4 KiB, 4482.10 us average.
        let r = row(
            "PCIE (0000:00:07.0) NSID 1",
            2,
            35_675,
            35_675 * 4_482_100,
            120_330,
            9_001_540,
            10.0,
        );
        let report = Report {
            io_size: 4096,
            rows: vec![r],
        };
        // SPDK's widths: the name column is as wide as the longest name; the header and the
        // Total line are 13 wider (" from core NN").
        let expected = "\
========================================================
                                                                           Latency(us)
Device Information                     :       IOPS      MiB/s    Average        min        max
PCIE (0000:00:07.0) NSID 1 from core  2:    3567.50      13.94    4482.10     120.33    9001.54
========================================================
Total                                  :    3567.50      13.94    4482.10     120.33    9001.54

";
        assert_eq!(report.table(), expected);
        // I/Os aborted by a controller reset are said after the table (SPDK has no line).
        let mut report = report;
        report.rows[0].stats.aborted_by_reset = 32;
        assert_eq!(
            report.table(),
            format!("{expected}Controller resets during the run aborted 32 I/Os; they were submitted again (not counted above).\n\n")
        );
    }

    #[test]
    fn totals_weight_the_average_and_skip_idle_rows() {
        let rows = vec![
            row(
                "SIM (sim) NSID 1",
                0,
                1000,
                1000 * 10_000,
                5_000,
                20_000,
                1.0,
            ),
            row(
                "SIM (sim) NSID 2",
                1,
                3000,
                3000 * 30_000,
                2_000,
                90_000,
                1.0,
            ),
            row("SIM (sim) NSID 3", 1, 0, 0, 0, 0, 1.0),
        ];
        let report = Report {
            io_size: 1 << 20,
            rows,
        };
        let t = report.totals();
        assert_eq!(t.ios, 4000);
        assert_eq!(
            t.figures,
            Figures {
                iops: 4000.0,
                mib_s: 4000.0,
                avg_us: 25.0,
                min_us: 2.0,
                max_us: 90.0
            }
        );
        let table = report.table();
        assert!(table.contains("SIM (sim) NSID 1 from core  0:    1000.00    1000.00      10.00       5.00      20.00\n"), "{table}");
        assert!(table.contains("SIM (sim) NSID 2 from core  1:"));
        assert!(
            !table.contains("NSID 3"),
            "rows without I/O are left out, as SPDK does"
        );
        assert!(table.contains("Total                        :    4000.00    4000.00      25.00       2.00      90.00\n"), "{table}");
        let empty = Report {
            io_size: 4096,
            rows: vec![row("SIM (sim) NSID 1", 0, 0, 0, 0, 0, 1.0)],
        };
        assert!(!empty.table().contains("Total"));
        assert_eq!(empty.totals().figures.min_us, 0.0);
    }

    #[test]
    fn percentile_lines() {
        assert_eq!(percentile_line(0.01, 12_345.0), "  1.00000% :    12.345us");
        assert_eq!(
            percentile_line(0.9999999, 1_234_567.0),
            " 99.99999% :  1234.567us"
        );
        assert_eq!(percentile_line(0.5, 800.0), " 50.00000% :     0.800us");
    }

    #[test]
    fn percentiles_follow_spdk() {
        // 100 I/Os: 1..=100 ns, one each.
        let p = percentiles((1..=100).map(|v| (v, 1)), 100);
        let values: Vec<f64> = p.iter().map(|&(_, v)| v).collect();
        assert_eq!(
            values,
            [
                1.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 98.0, 99.0, 100.0, 100.0, 100.0, 100.0,
                100.0, 100.0
            ]
        );
        assert_eq!(p[9].0, 0.995);
        // A single bucket answers every cutoff.
        assert_eq!(percentiles([(7, 3)], 3).len(), CUTOFFS.len());
        assert!(percentiles([], 0).is_empty());
        // Through a real histogram: values below 256 ns are exact.
        let mut stats = Stats::new(true);
        for v in 1..=200u64 {
            stats.record(v, true);
        }
        let r = Row {
            name: "SIM (sim) NSID 1".into(),
            nsid: 1,
            core: 0,
            elapsed_s: 1.0,
            stats,
        };
        let p = r.percentiles();
        assert_eq!(p[0], (0.01, 2.0));
        assert_eq!(p[3], (0.5, 100.0));
        assert_eq!(p[14], (0.9999999, 200.0));
        let report = Report {
            io_size: 4096,
            rows: vec![r],
        };
        let summary = report.percentile_summary();
        let mut lines = summary.lines();
        assert_eq!(
            lines.next(),
            Some(
                "Summary latency data for SIM (sim) NSID 1                            from core 0:"
            )
        );
        assert_eq!(lines.next(), Some("=".repeat(81).as_str()));
        assert_eq!(lines.next(), Some("  1.00000% :     0.002us"));
        assert_eq!(summary.lines().count(), 2 + 15 + 1);
    }

    #[test]
    fn histogram_lines() {
        assert_eq!(
            bucket_line(9_775, 9_833, 1, 90_000, 1),
            "    9.775 -     9.833:    0.0011%  (        1)"
        );
        let mut stats = Stats::new(true);
        stats.record(100, true);
        stats.record(100, true);
        stats.record(200, false);
        let report = Report {
            io_size: 4096,
            rows: vec![Row {
                name: "SIM (sim) NSID 1".into(),
                nsid: 1,
                core: 3,
                elapsed_s: 1.0,
                stats,
            }],
        };
        let h = report.histograms();
        let lines: Vec<&str> = h.lines().collect();
        assert_eq!(
            lines[0],
            "Latency histogram for SIM (sim) NSID 1                            from core 3:"
        );
        assert_eq!(lines[1], "=".repeat(78));
        assert_eq!(lines[2], "       Range in us     Cumulative    IO count");
        assert_eq!(lines[3], "    0.100 -     0.100:   66.6667%  (        2)");
        assert_eq!(lines[4], "    0.200 -     0.200:  100.0000%  (        1)");
        assert_eq!(lines[5], "");
        // Above 256 ns buckets widen: the range shows the bucket's bounds.
        let mut h = new_histogram();
        h.record(10_000).unwrap();
        let v = h.iter_recorded().next().unwrap().value_iterated_to();
        assert!(
            h.lowest_equivalent(v) <= 10_000 && v >= 10_000 && v - h.lowest_equivalent(v) < 100
        );
    }

    #[test]
    fn periodic() {
        assert_eq!(
            periodic_line(12345, 4096, false),
            "    12345 IOPS,    48.22 MiB/s"
        );
        assert_eq!(
            periodic_line(0, 4096, true),
            "[warmup]         0 IOPS,     0.00 MiB/s"
        );
    }

    #[test]
    fn json_object() {
        let mut r = row("SIM (sim) NSID 1", 0, 2000, 2000 * 5_000, 1_000, 9_000, 2.0);
        r.stats.errors = 1;
        r.stats.aborted_by_reset = 3;
        let report = Report {
            io_size: 4096,
            rows: vec![r],
        };
        let ctx = JsonContext {
            io_depth: 8,
            io_pattern: "randrw",
            read_percent: 70,
            time_s: 2,
            warmup_s: 0,
        };
        assert_eq!(
            report.json(&ctx),
            "{\"io_size\":4096,\"io_depth\":8,\"io_pattern\":\"randrw\",\"rwmixread\":70,\"time_s\":2,\"warmup_s\":0,\
             \"devices\":[{\"name\":\"SIM (sim) NSID 1\",\"nsid\":1,\"core\":0,\"elapsed_s\":2.000000,\"ios\":2000,\
             \"reads\":2000,\"writes\":0,\"errors\":1,\"iops\":1000.00,\"mib_s\":3.91,\
             \"latency_us\":{\"avg\":5.000,\"min\":1.000,\"max\":9.000}}],\
             \"total\":{\"ios\":2000,\"errors\":1,\"aborted_by_reset\":3,\"iops\":1000.00,\"mib_s\":3.91,\
             \"latency_us\":{\"avg\":5.000,\"min\":1.000,\"max\":9.000}}}"
        );
        let mut with_hist = Stats::new(true);
        with_hist.record(1_500, true);
        let report = Report {
            io_size: 512,
            rows: vec![Row {
                name: "x".into(),
                nsid: 2,
                core: 1,
                elapsed_s: 1.0,
                stats: with_hist,
            }],
        };
        let j = report.json(&ctx);
        assert!(
            j.contains("\"percentiles_us\":[{\"percentile\":1.00000,\"us\":1.503},"),
            "{j}"
        );
        assert!(j.contains("{\"percentile\":99.99999,\"us\":1.503}]"), "{j}");
    }
}
