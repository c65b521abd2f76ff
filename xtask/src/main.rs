//! `cargo xtask`: the project's tasks, run from anywhere in the workspace.
//!
//! - `cargo xtask test`: the full test run (the toolchain versions, formatting, clippy, tests,
//!   the driver built without its optional features, doc tests, docs, the `no_std` check,
//!   the fuzz smoke run, and the hardware suite in a QEMU VM). This is the
//!   command the README names and `.ci/run` runs.
//! - `cargo xtask nostd`: only the `no_std` check (`ci/nostd-check`).
//! - `cargo xtask fuzz --smoke`: the fuzz targets (`fuzz/`) on stable Rust, briefly (part of
//!   `test`); `cargo xtask fuzz TARGET [-- libFuzzer args]`: a cargo-fuzz campaign.
//! - `cargo xtask bench [-- criterion args]`: the criterion benchmarks;
//!   `cargo xtask bench --instructions`: instructions per I/O counted by callgrind.
//! - `cargo xtask test-hw [args]`: the hardware suite (QEMU VM or a real device).
//! - `cargo xtask bench-hw [args]`: this driver against the kernel's (fio) in a QEMU VM.
//! - `cargo xtask fio-hw [args]`: fio with the nvme-fio engine against QEMU's controller in a
//!   VM.
//! - `cargo xtask torture [args]`: rounds of random kills and stops of a group's processes
//!   on the software controller, each round checked (`nvme-torture`).

mod bench_hw;
mod bench_spdk;
mod bench_tcp;
mod cargo;
mod cli_compare;
mod fio_hw;
mod hw;
mod instructions;
mod runner;
mod torture;
mod vm;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::runner::{Runner, Skip};

/// Command line of `cargo xtask`.
#[derive(Parser, Debug)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Build, test and benchmark tasks for the NVMe driver workspace"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand, Debug)]
enum Task {
    /// The full test run: fmt, clippy, tests, doc tests, rustdoc, the no_std check, and the
    /// hardware suite in a QEMU VM. Stops at the first failure. CI runs this.
    Test(TestArgs),
    /// Only the no_std check: build (and on x86_64 Linux, run) `ci/nostd-check`.
    Nostd,
    /// Run the criterion benchmarks (`cargo bench`); arguments after `--` go to criterion.
    /// `--instructions`: instead, count instructions per I/O with callgrind (needs valgrind).
    Bench {
        /// Count the driver's instructions per 4 KiB read (core engine and host API, batch 1
        /// and 32) with callgrind instead of timing.
        #[arg(long)]
        instructions: bool,
        /// Arguments for criterion, e.g. `-- --save-baseline main` or `-- prp`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Fuzzing: `--smoke` runs every target briefly on stable Rust (what `test` runs);
    /// `fuzz TARGET [-- libFuzzer args]` runs a coverage-guided campaign with cargo-fuzz.
    Fuzz(FuzzArgs),
    /// Run the hardware test suite; all arguments are passed through.
    TestHw {
        /// Arguments for the hardware suite, e.g. `--device 0000:01:00.0`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Benchmark this driver (nvme-perf) against the kernel's (fio io_uring) in a QEMU VM;
    /// a measurement, not part of `test`. All arguments are passed through.
    BenchHw {
        /// Arguments for the benchmark, e.g. `--time 5`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// fio (Debian's 3.33) with the nvme-fio engine against QEMU's NVMe controller in a VM:
    /// the job files of nvme-fio/jobs/hw/. All arguments are passed through.
    FioHw {
        /// Arguments for the VM, e.g. `--timeout 600 --keep`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Compare nvmectl's output with nvme-cli's again from a kept guest console log
    /// (`test-hw --keep` leaves it in target/hwtest-vm/console.log), without booting.
    CliCompare {
        /// The console log.
        log: std::path::PathBuf,
    },
    /// Rounds of random SIGKILL and SIGSTOP/SIGCONT of the processes sharing a software
    /// controller, each round checked: a fresh attach, no leaked queue id, every
    /// acknowledged write read back. `--rounds N --seed S --time-per-round MS`, `--release`;
    /// other arguments go to nvme-torture.
    Torture {
        /// Arguments, e.g. `--rounds 1000 --seed 7 --release`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// Options of `fuzz`.
#[derive(Args, Debug, Clone)]
struct FuzzArgs {
    /// Run every target over its corpus and seeded random inputs, on stable Rust, without
    /// libFuzzer (the CI check).
    #[arg(long, conflicts_with = "target")]
    smoke: bool,
    /// Seconds of random inputs per target for --smoke.
    #[arg(long, default_value_t = 5.0, requires = "smoke")]
    secs: f64,
    /// The target of a campaign: completions, identify, group_control or sim_protocol.
    #[arg(required_unless_present = "smoke")]
    target: Option<String>,
    /// Arguments for libFuzzer, e.g. `-- -runs=10000000 -max_total_time=600`.
    #[arg(last = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

/// Options of `test`.
#[derive(Args, Debug, Clone)]
struct TestArgs {
    /// Skip the hardware suite even when it is enabled.
    #[arg(long)]
    skip_hw: bool,
    /// Skip the slow checks that are not tests: fmt, clippy and rustdoc.
    #[arg(long)]
    quick: bool,
    /// Check and test only these workspace packages instead of the whole workspace
    /// (repeatable; for local iteration: CI always runs the whole workspace).
    #[arg(short, long, value_name = "PACKAGE")]
    package: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Test(args) => test(args),
        Task::Nostd => {
            let mut runner = Runner::new("nostd");
            runner.step(
                "nostd",
                "build and run ci/nostd-check".into(),
                Skip::No,
                cargo::nostd_check,
            );
            runner.run()
        }
        Task::Bench {
            instructions: true, ..
        } => instructions::run().map_err(|e| eprintln!("xtask bench --instructions: {e}")),
        Task::Bench { args, .. } => cargo::bench(&args).map_err(|e| eprintln!("xtask bench: {e}")),
        Task::Fuzz(a) => {
            let result = match (a.smoke, a.target) {
                (true, _) => cargo::fuzz_smoke(a.secs),
                (false, Some(t)) => cargo::fuzz_run(&t, &a.args),
                (false, None) => Err("name a target or pass --smoke".into()),
            };
            result.map_err(|e| eprintln!("xtask fuzz: {e}"))
        }
        Task::TestHw { args } => hw::test_hw(&args).map_err(|e| eprintln!("xtask test-hw: {e}")),
        Task::CliCompare { log } => std::fs::read_to_string(&log)
            .map_err(|e| format!("reading {}: {e}", log.display()))
            .and_then(|l| cli_compare::check(&l))
            .map(|s| println!("{s}"))
            .map_err(|e| eprintln!("xtask cli-compare: {e}")),
        Task::Torture { args } => {
            torture::torture(&args).map_err(|e| eprintln!("xtask torture: {e}"))
        }
        Task::FioHw { args } => fio_hw::fio_hw(&args).map_err(|e| eprintln!("xtask fio-hw: {e}")),
        Task::BenchHw { args } => {
            bench_hw::bench_hw(&args).map_err(|e| eprintln!("xtask bench-hw: {e}"))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(()) => ExitCode::FAILURE,
    }
}

/// The full test run. Errors are already reported.
fn test(args: TestArgs) -> Result<(), ()> {
    let name = "test";
    let components: &[&str] = if args.quick {
        &[]
    } else {
        &["rustfmt", "clippy"]
    };
    if let Err(e) = cargo::require_components(components) {
        eprintln!("xtask {name}: {e}");
        return Err(());
    }
    // The fio engine's tests run the real fio: say so now rather than after the build.
    let needs_fio = args.package.is_empty() || args.package.iter().any(|p| p == "nvme-fio");
    if needs_fio && vm::which("fio").is_none() {
        eprintln!(
            "xtask {name}: the fio engine's tests (nvme-fio) run fio 3.33, which is not installed: \
             apt-get install fio (.ci/run installs it), or leave them out with --package"
        );
        return Err(());
    }

    let quick = if args.quick {
        Skip::Because("--quick")
    } else {
        Skip::No
    };
    let hw = if args.skip_hw {
        Skip::Because("--skip-hw")
    } else if !args.package.is_empty() {
        Skip::Because("--package")
    } else {
        Skip::No
    };
    // `--workspace`, or `-p a -p b` with --package.
    let (select, fmt_select) = if args.package.is_empty() {
        (vec!["--workspace".to_string()], vec!["--all".to_string()])
    } else {
        let select: Vec<String> = args
            .package
            .iter()
            .flat_map(|p| ["-p".to_string(), p.clone()])
            .collect();
        (select.clone(), select)
    };
    let cmd = |head: &[&str], select: &[String], tail: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = head.iter().map(|s| s.to_string()).collect();
        v.extend(select.iter().cloned());
        v.extend(tail.iter().map(|s| s.to_string()));
        v
    };

    let mut r = Runner::new(name);
    r.step(
        "toolchain",
        "rustc -vV; cargo -V".into(),
        Skip::No,
        cargo::print_toolchain,
    );

    let fmt = cmd(&["fmt"], &fmt_select, &["--", "--check"]);
    r.step("fmt", shown(&fmt), quick, move || {
        cargo::cargo(&strs(&fmt), &[])?;
        cargo::nostd_fmt_check()?;
        cargo::fuzz_fmt_check()
    });

    let clippy = cmd(
        &["clippy"],
        &select,
        &["--all-targets", "--", "-D", "warnings"],
    );
    r.step("clippy", shown(&clippy), quick, move || {
        cargo::cargo(&strs(&clippy), &[])?;
        cargo::nostd_clippy()?;
        cargo::fuzz_clippy()
    });

    let tests = cmd(&["test"], &select, &["--all-targets"]);
    r.step("test", shown(&tests), Skip::No, move || {
        cargo::cargo(&strs(&tests), &[])
    });

    // A short torture run: the processes of a group killed and stopped at random, each
    // round checked (`cargo xtask torture` for long runs).
    let torture_skip = if args.package.is_empty() {
        Skip::No
    } else {
        Skip::Because("--package")
    };
    r.step(
        "torture",
        format!(
            "cargo xtask torture --rounds {} --seed <now>",
            torture::SHORT_ROUNDS
        ),
        torture_skip,
        torture::short,
    );

    // The driver without its optional features (no software controller, no test kit): the
    // workspace build above turns them on (nvme-tools and nvme-hwtest enable them), so the
    // build a production user gets is checked on its own: clippy (not with --quick), and its
    // unit tests.
    let bare = if args.package.is_empty() {
        Skip::No
    } else {
        Skip::Because("--package")
    };
    let bare_clippy: Vec<String> = ["clippy", "-p", "nvme-host-linux", "--lib", "--tests"]
        .into_iter()
        .chain(["--", "-D", "warnings"])
        .map(String::from)
        .collect();
    let bare_test: Vec<String> = ["test", "-p", "nvme-host-linux", "--lib"]
        .into_iter()
        .map(String::from)
        .collect();
    r.step(
        "no-features",
        format!("{}; {}", shown(&bare_clippy), shown(&bare_test)),
        bare,
        move || {
            if !args.quick {
                cargo::cargo(&strs(&bare_clippy), &[])?;
            }
            cargo::cargo(&strs(&bare_test), &[])
        },
    );

    let doctests = cmd(&["test"], &select, &["--doc"]);
    r.step("doctest", shown(&doctests), Skip::No, move || {
        cargo::cargo(&strs(&doctests), &[])
    });

    let doc = cmd(&["doc"], &select, &["--no-deps"]);
    r.step(
        "doc",
        format!("RUSTDOCFLAGS=\"-D warnings\" {}", shown(&doc)),
        quick,
        move || {
            let flags = cargo::rustdocflags_with("-D warnings");
            cargo::cargo(&strs(&doc), &[("RUSTDOCFLAGS", &flags)])
        },
    );

    r.step(
        "nostd",
        "build and run ci/nostd-check".into(),
        Skip::No,
        cargo::nostd_check,
    );
    let fuzz = if args.package.is_empty() {
        Skip::No
    } else {
        Skip::Because("--package")
    };
    r.step(
        "fuzz",
        "cargo xtask fuzz --smoke --secs 3 (fuzz targets on their corpus + random inputs)".into(),
        fuzz,
        || cargo::fuzz_smoke(3.0),
    );
    r.step("hw", "hardware suite: hw::test_hw(&[])".into(), hw, || {
        hw::test_hw(&[])
    });
    r.run()
}

/// `cargo a b c` for display.
fn shown(args: &[String]) -> String {
    format!("cargo {}", args.join(" "))
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn trailing_args_pass_through() {
        let cli = Cli::try_parse_from(["xtask", "bench", "--", "--save-baseline", "main"]).unwrap();
        match cli.task {
            Task::Bench { args, instructions } => {
                assert_eq!(args, ["--save-baseline", "main"]);
                assert!(!instructions);
            }
            other => panic!("parsed as {other:?}"),
        }
        let cli = Cli::try_parse_from(["xtask", "bench", "--instructions"]).unwrap();
        match cli.task {
            Task::Bench { args, instructions } => assert!(instructions && args.is_empty()),
            other => panic!("parsed as {other:?}"),
        }
        let cli = Cli::try_parse_from(["xtask", "torture", "--rounds", "5", "--release"]).unwrap();
        match cli.task {
            Task::Torture { args } => assert_eq!(args, ["--rounds", "5", "--release"]),
            other => panic!("parsed as {other:?}"),
        }
        let cli = Cli::try_parse_from(["xtask", "test-hw", "--device", "0000:01:00.0"]).unwrap();
        match cli.task {
            Task::TestHw { args } => assert_eq!(args, ["--device", "0000:01:00.0"]),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn fuzz_flags() {
        let cli = Cli::try_parse_from(["xtask", "fuzz", "--smoke", "--secs", "2"]).unwrap();
        match cli.task {
            Task::Fuzz(a) => assert!(a.smoke && a.secs == 2.0 && a.target.is_none()),
            other => panic!("parsed as {other:?}"),
        }
        let cli = Cli::try_parse_from(["xtask", "fuzz", "identify", "--", "-runs=5"]).unwrap();
        match cli.task {
            Task::Fuzz(a) => {
                assert_eq!(a.target.as_deref(), Some("identify"));
                assert_eq!(a.args, ["-runs=5"]);
            }
            other => panic!("parsed as {other:?}"),
        }
        assert!(Cli::try_parse_from(["xtask", "fuzz"]).is_err());
    }

    #[test]
    fn test_flags() {
        let cli = Cli::try_parse_from(["xtask", "test", "--skip-hw", "--quick"]).unwrap();
        match cli.task {
            Task::Test(a) => assert!(a.skip_hw && a.quick),
            other => panic!("parsed as {other:?}"),
        }
    }
}
