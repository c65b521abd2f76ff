//! Running cargo and the steps built on it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The workspace root (the parent of the xtask crate).
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one directory below the workspace root")
}

/// The cargo that runs us (`$CARGO`, set by `cargo run`), or `cargo` from `PATH`.
fn cargo_program() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// The workspace target directory: `$CARGO_TARGET_DIR` or `<root>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// Runs `command` with inherited stdio after printing it; an error names the command and
/// how it ended.
fn run(command: &mut Command, shown: &str) -> Result<(), String> {
    println!("$ {shown}");
    std::io::Write::flush(&mut std::io::stdout()).ok();
    let status = command
        .status()
        .map_err(|e| format!("could not start `{shown}`: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{shown}` failed ({status})"))
    }
}

/// Runs `cargo <args>` in the workspace root with extra environment variables `env`.
pub fn cargo(args: &[&str], env: &[(&str, &str)]) -> Result<(), String> {
    let mut command = Command::new(cargo_program());
    command.args(args).current_dir(workspace_root());
    let mut shown = String::new();
    for (key, value) in env {
        command.env(key, value);
        shown.push_str(&format!("{key}={value:?} "));
    }
    shown.push_str("cargo ");
    shown.push_str(&args.join(" "));
    run(&mut command, &shown)
}

/// `$RUSTDOCFLAGS` with `flags` appended (so a caller's own flags are kept).
pub fn rustdocflags_with(flags: &str) -> String {
    match std::env::var("RUSTDOCFLAGS") {
        Ok(existing) if !existing.trim().is_empty() => format!("{existing} {flags}"),
        _ => flags.to_string(),
    }
}

/// Checks that the rustup components (`rustfmt`, `clippy`) are installed, and says how to
/// install the missing ones.
pub fn require_components(components: &[&str]) -> Result<(), String> {
    let mut missing = Vec::new();
    for &component in components {
        let subcommand = match component {
            "rustfmt" => "fmt",
            "clippy" => "clippy",
            other => other,
        };
        let ok = Command::new(cargo_program())
            .args([subcommand, "--version"])
            .current_dir(workspace_root())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            missing.push((component, subcommand));
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let what: Vec<String> = missing
        .iter()
        .map(|(component, sub)| format!("{component} (`cargo {sub}` does not run)"))
        .collect();
    let names: Vec<&str> = missing.iter().map(|(component, _)| *component).collect();
    Err(format!(
        "the Rust toolchain is missing {}; install with `rustup component add {}`",
        what.join(" and "),
        names.join(" "),
    ))
}

/// Prints the toolchain versions (CI logs).
pub fn print_toolchain() -> Result<(), String> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    run(Command::new(rustc).arg("-vV"), "rustc -vV")?;
    run(Command::new(cargo_program()).arg("-V"), "cargo -V")
}

fn nostd_paths() -> (String, String) {
    let manifest = workspace_root().join("ci/nostd-check/Cargo.toml");
    let target = target_dir().join("nostd-check");
    (
        manifest.to_string_lossy().into_owned(),
        target.to_string_lossy().into_owned(),
    )
}

/// `cargo fmt --check` of `ci/nostd-check` (outside the workspace, so `--all` misses it).
pub fn nostd_fmt_check() -> Result<(), String> {
    let (manifest, _) = nostd_paths();
    cargo(&["fmt", "--manifest-path", &manifest, "--", "--check"], &[])
}

/// Clippy on `ci/nostd-check`, in its own target directory.
pub fn nostd_clippy() -> Result<(), String> {
    let (manifest, target) = nostd_paths();
    cargo(
        &[
            "clippy",
            "--manifest-path",
            &manifest,
            "--target-dir",
            &target,
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )
}

/// The `no_std` check: builds `ci/nostd-check` (a `#![no_std]` `#![no_main]` binary that
/// links nvme-core and nvme-regs with `-nostdlib`) in its own target directory, then, on
/// x86_64 Linux, runs it (it exits 0 when its checks of the linked code pass).
pub fn nostd_check() -> Result<(), String> {
    let (manifest_s, target_s) = nostd_paths();
    cargo(
        &[
            "build",
            "--manifest-path",
            &manifest_s,
            "--target-dir",
            &target_s,
        ],
        &[],
    )
    .map_err(|e| {
        format!(
            "{e}: nvme-core or nvme-regs may need std now (look above for a duplicate \
             `panic_impl` lang item or undefined symbols)"
        )
    })?;
    if cfg!(all(target_arch = "x86_64", target_os = "linux")) {
        let binary = Path::new(&target_s).join("debug/nostd-check");
        let shown = binary.to_string_lossy().into_owned();
        run(&mut Command::new(&binary), &shown).map_err(|e| {
            format!("{e}: the exit code is the number of the failed check in ci/nostd-check/src/main.rs")
        })?;
    }
    Ok(())
}

fn fuzz_paths() -> (String, String) {
    let manifest = workspace_root().join("fuzz/Cargo.toml");
    // The workspace's target directory: the dependencies the fuzz crate shares with the
    // workspace (same versions and features) are not built twice.
    let target = target_dir();
    (
        manifest.to_string_lossy().into_owned(),
        target.to_string_lossy().into_owned(),
    )
}

/// `cargo fmt --check` of `fuzz/` (outside the workspace).
pub fn fuzz_fmt_check() -> Result<(), String> {
    let (manifest, _) = fuzz_paths();
    cargo(&["fmt", "--manifest-path", &manifest, "--", "--check"], &[])
}

/// Clippy on `fuzz/` (its library and smoke test; the libFuzzer binaries are one line
/// each and need libFuzzer built).
pub fn fuzz_clippy() -> Result<(), String> {
    let (manifest, target) = fuzz_paths();
    cargo(
        &[
            "clippy",
            "--manifest-path",
            &manifest,
            "--target-dir",
            &target,
            "--no-default-features",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )
}

/// The fuzz smoke run: every fuzz target on stable Rust, without libFuzzer, over its kept
/// corpus (`fuzz/corpus/<target>/`) and then seeded random mutations for `secs` seconds per
/// target (`fuzz/tests/smoke.rs`). Fails on any panic, naming the saved input.
pub fn fuzz_smoke(secs: f64) -> Result<(), String> {
    let (manifest, target) = fuzz_paths();
    let secs = secs.to_string();
    cargo(
        &[
            "test",
            "--manifest-path",
            &manifest,
            "--target-dir",
            &target,
            "--no-default-features",
            "--test",
            "smoke",
            "--",
            "--nocapture",
        ],
        &[("NVME_FUZZ_SMOKE_SECS", &secs)],
    )
}

/// A coverage-guided campaign: `cargo fuzz run -s none <target> <args>` in `fuzz/` (libFuzzer
/// through cargo-fuzz; stable Rust works without sanitizers). New inputs go to
/// `target/fuzz-work/<target>`, the kept corpus is read too.
pub fn fuzz_run(target: &str, args: &[String]) -> Result<(), String> {
    let has_cargo_fuzz = Command::new(cargo_program())
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_cargo_fuzz {
        return Err(
            "cargo-fuzz is not installed (`cargo fuzz` does not run); install it with \
             `cargo install cargo-fuzz` (the smoke run, `cargo xtask fuzz --smoke`, needs \
             nothing extra)"
                .into(),
        );
    }
    let work = target_dir().join("fuzz-work").join(target);
    std::fs::create_dir_all(&work).map_err(|e| format!("creating {}: {e}", work.display()))?;
    let corpus = workspace_root().join("fuzz/corpus").join(target);
    let mut command = Command::new(cargo_program());
    command
        .args(["fuzz", "run", "-s", "none", target])
        .arg(&work)
        .arg(&corpus)
        .arg("--")
        .arg("-print_final_stats=1")
        .args(args)
        .current_dir(workspace_root().join("fuzz"));
    let shown = format!(
        "(cd fuzz && cargo fuzz run -s none {target} {} {} -- -print_final_stats=1 {})",
        work.display(),
        corpus.display(),
        args.join(" ")
    );
    run(&mut command, &shown)
}

/// `cargo bench` over every benchmark target of the workspace, with `args` for criterion.
pub fn bench(args: &[String]) -> Result<(), String> {
    let metadata = Command::new(cargo_program())
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("could not run `cargo metadata`: {e}"))?;
    if !metadata.status.success() {
        return Err(format!("`cargo metadata` failed ({})", metadata.status));
    }
    let json = String::from_utf8_lossy(&metadata.stdout);
    if !json.contains(r#""kind":["bench"]"#) {
        println!("no benchmark targets in the workspace yet (add a [[bench]] with criterion)");
        return Ok(());
    }
    // `--bench '*'` selects the bench targets only: library test harnesses would reject
    // criterion's arguments.
    let mut cargo_args = vec!["bench", "--workspace", "--bench", "*"];
    if !args.is_empty() {
        cargo_args.push("--");
        cargo_args.extend(args.iter().map(String::as_str));
    }
    cargo(&cargo_args, &[])?;
    let reports = target_dir().join("criterion");
    println!();
    println!("criterion results: {}", reports.display());
    println!("  per benchmark: <group>/<name>/new/estimates.json (baselines next to `new`)");
    let html = reports.join("report/index.html");
    if html.exists() {
        println!("  HTML report: {}", html.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_has_the_workspace_manifest() {
        assert!(workspace_root().join("Cargo.toml").is_file());
        assert!(workspace_root().join("ci/nostd-check/Cargo.toml").is_file());
    }

    #[test]
    fn missing_component_message_says_how_to_install() {
        let err = require_components(&["no-such-component"]).unwrap_err();
        assert!(
            err.contains("rustup component add no-such-component"),
            "{err}"
        );
    }
}
