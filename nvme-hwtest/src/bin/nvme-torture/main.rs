//! `nvme-torture`: rounds of random SIGKILL and SIGSTOP/SIGCONT of the processes of a
//! shared-memory group (primaries, secondaries, tools) in the middle of I/O, admin commands,
//! attaches and detaches, each round checked afterwards: a fresh attach succeeds, no queue
//! id is leaked, every acknowledged write reads back, the group goes away with its last
//! member. `cargo xtask torture` builds and runs it against the software controller.
//!
//! ```text
//! nvme-torture [--rounds N] [--seed S] [--time-per-round MS] [--trid TRID] [--nsid N]
//!              [--lba LBA] [--blocks N] [--nvmectl PATH|none] [--bound-secs S] [--verbose]
//! ```
//!
//! The same binary is each round's worker processes (the test kit's role variable selects
//! the part; see `worker`). Prints one line per round with findings and a final
//! `TORTURE SUMMARY ...` line; exits 1 when anything was found.

#![forbid(unsafe_code)]

mod ledger;
mod rng;
mod run;
mod worker;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage: nvme-torture [--rounds N] [--seed S] [--time-per-round MS] [--trid TRID] \
[--nsid N] [--lba LBA] [--blocks N] [--nvmectl PATH|none] [--bound-secs S] [--verbose]\n\
Writers write blocks [--lba, --lba + writers * --blocks) of namespace --nsid: that data is destroyed.";

fn parse(args: &[String]) -> Result<run::Opts, String> {
    let mut o = run::Opts {
        rounds: 20,
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
        time_per_round: 300,
        trid: "trtype:sim nscount:1 size:64M serial:TORTURE".into(),
        nsid: 1,
        lba: 0,
        blocks: 256,
        // nvmectl next to this binary (both are built into the same target directory).
        nvmectl: std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("nvmectl")))
            .filter(|p| p.exists()),
        bound: Duration::from_secs(20),
        verbose: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
        };
        let num = |name: &str, v: String| -> Result<u64, String> {
            let parsed = match v.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16).ok(),
                None => v.parse().ok(),
            };
            parsed.ok_or_else(|| format!("{name} {v}: expected a number"))
        };
        match a.as_str() {
            "--rounds" => o.rounds = num(a, val(a)?)?,
            "--seed" => o.seed = num(a, val(a)?)?,
            "--time-per-round" => o.time_per_round = num(a, val(a)?)?.max(2),
            "--trid" => o.trid = val(a)?,
            "--nsid" => o.nsid = num(a, val(a)?)? as u32,
            "--lba" => o.lba = num(a, val(a)?)?,
            "--blocks" => {
                o.blocks = num(a, val(a)?)?;
                if o.blocks < worker::SLOT || !o.blocks.is_multiple_of(worker::SLOT) {
                    return Err(format!("--blocks: a multiple of {}", worker::SLOT));
                }
            }
            "--nvmectl" => {
                let v = val(a)?;
                o.nvmectl = (v != "none").then(|| PathBuf::from(v));
            }
            "--bound-secs" => o.bound = Duration::from_secs(num(a, val(a)?)?.max(1)),
            "--verbose" | "-v" => o.verbose = true,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument '{other}'\n{USAGE}")),
        }
    }
    Ok(o)
}

fn main() -> ExitCode {
    if let Some(role) = nvme_host_linux::testkit::role() {
        return ExitCode::from(worker::run(&role));
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("nvme-torture: {e}");
            return ExitCode::from(2);
        }
    };
    if opts.nvmectl.is_none() {
        println!("torture: no nvmectl (--nvmectl): no tool workers");
    }
    let totals = run::run(&opts);
    if totals.findings() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
