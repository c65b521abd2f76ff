//! `cargo xtask bench --instructions`: instructions per I/O, counted by callgrind, for one
//! 4 KiB read submitted and completed through the core engine (against a same-thread fake
//! device) and through the host API (against the in-process software controller).
//!
//! Deterministic where timings on a shared machine are not: the same build gives the same
//! counts. Only the driver's instructions count: the workloads
//! (`nvme-core/examples/engine_instructions.rs`, `nvme-host-linux/examples/api_instructions.rs`)
//! call the driver in two ways, and callgrind collects only inside them
//! (`--collect-atstart=no --toggle-collect=...`):
//! - **in an application's loop**: the driver's calls inlined into the loop, as into any
//!   caller; the loop's own bookkeeping counts as the driver's. The budget is judged here.
//! - **per call**: each submission and each poll through a never-inlined function of its
//!   own, which adds a function's entry and exit (the registers the driver's code uses,
//!   saved and restored) to every call.
//!
//! The fake device's work toggles collection off again, and so does waiting for the
//! software controller, whose thread never enters the measured functions. The fake device
//! is counted on its own, for scale.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::cargo::{cargo, target_dir, workspace_root};

/// The core engine's budget (issue 9): instructions per I/O, driver side, in an
/// application's loop, at batch 1 and at batch 32.
pub const BUDGET: f64 = 150.0;

/// I/Os of each core-engine run (about 1 s under callgrind).
const ENGINE_IOS: u64 = 100_000;
/// I/Os of each host-API run (the software controller's thread is slow under valgrind; a
/// multiple of 32).
const API_IOS: u64 = 20_480;

/// How the workload calls the driver.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Inlined into an application's loop.
    Loop,
    /// Through never-inlined functions.
    Calls,
}

impl Mode {
    fn arg(self) -> &'static str {
        match self {
            Mode::Loop => "loop",
            Mode::Calls => "calls",
        }
    }
}

/// One workload binary and how to count it.
struct Workload {
    path: &'static str,
    example: &'static str,
    ios: u64,
    /// Toggles of each mode.
    toggles: fn(Mode) -> &'static [&'static str],
    /// The toggle of the fake device's work alone, when there is one.
    device: Option<&'static str>,
}

fn workloads() -> [Workload; 2] {
    [
        Workload {
            path: "core engine (QueuePair, fake device)",
            example: "engine_instructions",
            ios: ENGINE_IOS,
            toggles: |m| match m {
                Mode::Loop => &["*app_loop*", "*fake_device_work*"],
                Mode::Calls => &["*driver_submit*", "*driver_poll*", "*fake_device_work*"],
            },
            device: Some("*fake_device_work*"),
        },
        Workload {
            path: "host API (IoQueuePair, trtype:sim)",
            example: "api_instructions",
            ios: API_IOS,
            toggles: |m| match m {
                Mode::Loop => &["*app_loop*", "*wait_for_controller*"],
                Mode::Calls => &["*driver_submit*", "*driver_ring*", "*driver_poll*"],
            },
            device: None,
        },
    ]
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

/// Runs `bin mode batch ios` under callgrind collecting only inside `toggles`; returns the
/// instructions counted.
fn callgrind(bin: &Path, out: &Path, args: [String; 3], toggles: &[&str]) -> Result<u64, String> {
    let mut cmd = Command::new("valgrind");
    cmd.arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg("--collect-atstart=no");
    for t in toggles {
        cmd.arg(format!("--toggle-collect={t}"));
    }
    cmd.arg(bin).args(args).stdout(Stdio::null());
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

/// One row of the table: instructions per I/O in each mode.
struct Row {
    path: &'static str,
    batch: u64,
    in_loop: f64,
    per_call: f64,
    device: Option<f64>,
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
    for w in workloads() {
        let bin = examples.join(w.example);
        for batch in [1, 32] {
            println!(
                "counting {} at batch {batch} ({} I/Os)...",
                w.example, w.ios
            );
            let count = |mode: Mode, toggles: &[&str], what: &str| {
                let out = outdir.join(format!("callgrind.{}.b{batch}.{what}", w.example));
                let args = [mode.arg().to_string(), batch.to_string(), w.ios.to_string()];
                callgrind(&bin, &out, args, toggles).map(|n| n as f64 / w.ios as f64)
            };
            let in_loop = count(Mode::Loop, (w.toggles)(Mode::Loop), "loop")?;
            let per_call = count(Mode::Calls, (w.toggles)(Mode::Calls), "calls")?;
            let device = match w.device {
                Some(t) => Some(count(Mode::Loop, &[t], "device")?),
                None => None,
            };
            rows.push(Row {
                path: w.path,
                batch,
                in_loop,
                per_call,
                device,
            });
        }
    }
    println!();
    println!(
        "Instructions per 4 KiB read, submit + complete, driver side (callgrind, release build, {})",
        workspace_root().display()
    );
    println!();
    println!(
        "| path | batch | in an application's loop | per call (never-inlined functions) | fake device (not counted) |"
    );
    println!("|---|---:|---:|---:|---:|");
    for r in &rows {
        let device = r.device.map_or("-".to_string(), |d| format!("{d:.1}"));
        println!(
            "| {} | {} | {:.1} | {:.1} | {device} |",
            r.path, r.batch, r.in_loop, r.per_call
        );
    }
    println!();
    let worst = rows
        .iter()
        .filter(|r| r.device.is_some())
        .map(|r| r.in_loop)
        .fold(0.0, f64::max);
    println!(
        "core engine budget: {BUDGET} instructions per I/O in an application's loop, at batch 1 and 32: {}",
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
