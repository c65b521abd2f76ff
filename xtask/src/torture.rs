//! `cargo xtask torture`: builds `nvme-torture` (nvme-hwtest) and `nvmectl` and runs the
//! torture rounds against the software controller; see `nvme-hwtest/src/bin/nvme-torture`.
//!
//! ```text
//! cargo xtask torture [--rounds N] [--seed S] [--time-per-round MS] [--release] [other nvme-torture args]
//! ```
//!
//! The debug build is the default (the one `cargo xtask test` has just made, so the short
//! run there builds nothing new); `--release` for long runs.

use std::process::Command;

use crate::cargo;

/// Rounds of the short run in `cargo xtask test`.
pub const SHORT_ROUNDS: u64 = 15;

/// Builds the binaries and runs `nvme-torture args`; `Err` says what failed.
pub fn torture(args: &[String]) -> Result<(), String> {
    let release = args.iter().any(|a| a == "--release");
    let pass: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| *a != "--release")
        .collect();
    let mut build = vec![
        "build",
        "-p",
        "nvme-hwtest",
        "--bin",
        "nvme-torture",
        "-p",
        "nvme-tools",
        "--bin",
        "nvmectl",
    ];
    if release {
        build.push("--release");
    }
    cargo::cargo(&build, &[])?;
    let dir = cargo::target_dir().join(if release { "release" } else { "debug" });
    let exe = dir.join("nvme-torture");
    let nvmectl = dir.join("nvmectl");
    let mut cmd = Command::new(&exe);
    cmd.arg("--nvmectl").arg(&nvmectl).args(&pass);
    println!(
        "$ {} --nvmectl {} {}",
        exe.display(),
        nvmectl.display(),
        pass.join(" ")
    );
    let status = cmd
        .status()
        .map_err(|e| format!("could not start {}: {e}", exe.display()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "nvme-torture found problems or failed ({status}); the lines above say which round and what"
        ))
    }
}

/// The short run of `cargo xtask test`: a few rounds with a seed that changes every run
/// (printed, to reproduce a failure with `cargo xtask torture --seed S`).
pub fn short() -> Result<(), String> {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_secs());
    torture(&[
        "--rounds".into(),
        SHORT_ROUNDS.to_string(),
        "--seed".into(),
        seed.to_string(),
    ])
}
