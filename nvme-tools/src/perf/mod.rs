//! `nvme-perf`: SPDK perf's workloads, options and output over this driver.
//!
//! [`main`] is the whole program; the pieces are public for tests and reuse:
//! [`args`] (options), [`lba`] (where I/O goes), [`stats`] and [`report`] (results and
//! their text), [`crate::sys`] (affinity), [`mod@run`] (attach, associate, run the workers).

pub mod args;
pub mod clock;
pub mod lba;
pub mod report;
pub mod run;
pub mod stats;
mod worker;

use std::ffi::OsString;
use std::fmt;
use std::process::ExitCode;

pub use run::{run, run_with, Outcome};

/// An error that ends `nvme-perf`, with a message for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(String);

impl Error {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Error {
        Error(message.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// The `nvme-perf` program: parses `args` (program name first), runs, prints, and returns
/// the exit code (0 on success, 1 on errors, 2 on bad usage).
///
/// SIGINT or SIGTERM stops the run as SPDK perf's Ctrl-C does: the workers drain, the
/// results so far are printed, the controllers are detached, and the exit status is that
/// of a run that ended by itself (0 unless an I/O failed). A signal during start-up is
/// acted on once the workers start (they stop at once). A second signal exits at once.
pub fn main<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match args::Cli::parse_args(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    // SIGINT / SIGTERM stop the run; the results so far are printed and the controllers
    // detached, as without a signal.
    if let Err(e) = crate::signals::install() {
        eprintln!(
            "nvme-perf: warning: no SIGINT/SIGTERM handling ({e}): Ctrl-C will not print results"
        );
    }
    let result = cli.validate().and_then(|(config, warnings)| {
        for w in &warnings {
            eprintln!("nvme-perf: warning: {w}");
        }
        run(&config)
    });
    if let Ok(Outcome {
        interrupted: Some(sig),
        ..
    }) = &result
    {
        eprintln!(
            "nvme-perf: stopped by {}: the results are those of the run so far",
            crate::signals::name(*sig)
        );
    }
    match result {
        Ok(outcome) if outcome.success() => ExitCode::SUCCESS,
        Ok(outcome) => {
            if outcome.lost > 0 {
                eprintln!("nvme-perf: error: {} I/Os did not complete", outcome.lost);
            }
            eprintln!("nvme-perf: errors occurred");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("nvme-perf: error: {e}");
            ExitCode::from(1)
        }
    }
}
