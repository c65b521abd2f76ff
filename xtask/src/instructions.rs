//! `cargo xtask bench --instructions`: instructions per I/O, counted by callgrind, for one
//! 4 KiB read submitted and completed through the core engine (against a same-thread fake
//! device) and through the host API (against the in-process software controller).
//!
//! Deterministic where timings on a shared machine are not: the same build gives the same
//! counts. Only the driver's instructions count: the workloads
//! (`nvme-core/examples/engine_instructions.rs`, `nvme-host-linux/examples/api_instructions.rs`)
//! call the driver through a few never-inlined functions, and callgrind collects only inside
//! them (`--collect-atstart=no --toggle-collect=...`); the fake device's work toggles
//! collection off again, and the software controller runs on a thread that never enters
//! them. The fake device is counted on its own, for scale.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::cargo::{cargo, target_dir, workspace_root};

/// The core engine's budget (issue 9): instructions per I/O, driver side.
pub const BUDGET: f64 = 150.0;

/// I/Os of each core-engine run (about 1 s under callgrind).
const ENGINE_IOS: u64 = 100_000;
/// I/Os of each host-API run (the software controller's thread is slow under valgrind).
const API_IOS: u64 = 20_000;

/// One measurement: a workload binary, its toggles, and what to call the row.
struct Case {
    path: &'static str,
    example: &'static str,
    batch: u64,
    ios: u64,
    toggles: &'static [&'static str],
    /// The toggle of the fake device's work alone, when there is one.
    device: Option<&'static str>,
}

const ENGINE_TOGGLES: &[&str] = &["*driver_submit*", "*driver_poll*", "*fake_device_work*"];
const API_TOGGLES: &[&str] = &["*driver_submit*", "*driver_ring*", "*driver_poll*"];

fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for batch in [1, 32] {
        v.push(Case {
            path: "core engine (QueuePair, fake device)",
            example: "engine_instructions",
            batch,
            ios: ENGINE_IOS,
            toggles: ENGINE_TOGGLES,
            device: Some("*fake_device_work*"),
        });
    }
    for batch in [1, 32] {
        v.push(Case {
            path: "host API (IoQueuePair, trtype:sim)",
            example: "api_instructions",
            batch,
            ios: API_IOS,
            toggles: API_TOGGLES,
            device: None,
        });
    }
    v
}

/// Is valgrind there? The error says what to install.
fn require_valgrind() -> Result<(), String> {
    let found = Command::new("valgrind")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        Ok(())
    } else {
        Err(
            "valgrind (callgrind) is not installed: on Debian or Ubuntu, \
             `sudo apt-get install valgrind` (package `valgrind`), then run this again"
                .into(),
        )
    }
}

/// The total of the events callgrind collected, from its output file.
pub fn parse_summary(out: &str) -> Option<u64> {
    out.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Runs `bin batch ios` under callgrind collecting only inside `toggles`; returns the
/// instructions counted.
fn callgrind(
    bin: &Path,
    out: &Path,
    batch: u64,
    ios: u64,
    toggles: &[&str],
) -> Result<u64, String> {
    let mut cmd = Command::new("valgrind");
    cmd.arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg("--collect-atstart=no");
    for t in toggles {
        cmd.arg(format!("--toggle-collect={t}"));
    }
    cmd.arg(bin)
        .arg(batch.to_string())
        .arg(ios.to_string())
        .stdout(Stdio::null());
    let shown = format!("{cmd:?}");
    let output = cmd
        .output()
        .map_err(|e| format!("could not start valgrind: {e}"))?;
    if !output.status.success() {
        let err = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = err.lines().rev().take(15).collect();
        return Err(format!(
            "{shown} failed ({}):\n{}",
            output.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    let text = std::fs::read_to_string(out)
        .map_err(|e| format!("reading callgrind's output {}: {e}", out.display()))?;
    parse_summary(&text).ok_or_else(|| format!("no event total in {}", out.display()))
}

/// Builds the workloads, counts, prints the table. `Err` says what failed.
pub fn run() -> Result<(), String> {
    require_valgrind()?;
    // One build at a time (the project's machines are small).
    cargo(
        &[
            "build",
            "--release",
            "-p",
            "nvme-core",
            "--example",
            "engine_instructions",
        ],
        &[],
    )?;
    cargo(
        &[
            "build",
            "--release",
            "-p",
            "nvme-host-linux",
            "--features",
            "sim",
            "--example",
            "api_instructions",
        ],
        &[],
    )?;
    let examples = target_dir().join("release").join("examples");
    let outdir: PathBuf = target_dir().join("instructions");
    std::fs::create_dir_all(&outdir).map_err(|e| format!("creating {}: {e}", outdir.display()))?;
    let mut rows = Vec::new();
    for c in cases() {
        let bin = examples.join(c.example);
        let out = outdir.join(format!("callgrind.{}.b{}", c.example, c.batch));
        println!(
            "counting {} at batch {} ({} I/Os)...",
            c.example, c.batch, c.ios
        );
        let driver = callgrind(&bin, &out, c.batch, c.ios, c.toggles)? as f64 / c.ios as f64;
        let device = match c.device {
            Some(t) => {
                let out = outdir.join(format!("callgrind.{}.b{}.device", c.example, c.batch));
                Some(callgrind(&bin, &out, c.batch, c.ios, &[t])? as f64 / c.ios as f64)
            }
            None => None,
        };
        rows.push((c, driver, device));
    }
    println!();
    println!(
        "Instructions per 4 KiB read, submit + complete, driver side (callgrind, release build, {})",
        workspace_root().display()
    );
    println!();
    println!("| path | batch | driver instructions / I/O | fake device (not counted) |");
    println!("|---|---:|---:|---:|");
    for (c, driver, device) in &rows {
        let device = device.map_or("-".to_string(), |d| format!("{d:.1}"));
        println!("| {} | {} | {driver:.1} | {device} |", c.path, c.batch);
    }
    println!();
    let worst = rows
        .iter()
        .filter(|(c, _, _)| c.device.is_some())
        .map(|(_, d, _)| *d)
        .fold(0.0, f64::max);
    println!(
        "core engine budget: {BUDGET} instructions per I/O: {}",
        if worst <= BUDGET { "met" } else { "not met" }
    );
    println!("callgrind output: {}", outdir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_callgrinds_total() {
        let out = "events: Ir\nfl=(1) a.rs\n...\nsummary: 51601170\n\ntotals: 51601170\n";
        assert_eq!(parse_summary(out), Some(51_601_170));
        assert_eq!(parse_summary("totals: 12 \n"), Some(12));
        assert_eq!(parse_summary("events: Ir\n"), None);
    }
}
