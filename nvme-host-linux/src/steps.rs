//! `NVME_TRACE_STEPS=1`: the driver prints on standard error when attaching to and
//! detaching from a controller reach each of their steps, as milliseconds since the first
//! step and as the system's monotonic clock (the same clock `/proc/uptime` counts), so that
//! a process's start-up before its first step can be told apart too. For finding where a
//! short-lived process (a management tool beside a running application) spends its time;
//! off, a step costs one load of a flag.

use std::sync::OnceLock;
use std::time::Instant;

/// The variable that turns the trace on.
pub const TRACE_VAR: &str = "NVME_TRACE_STEPS";

/// `Some(first step's time)` when tracing.
static START: OnceLock<Option<Instant>> = OnceLock::new();

/// Records that the driver (or a tool using it) reached `what`.
#[inline]
pub fn step(what: &str) {
    let start = START.get_or_init(|| std::env::var_os(TRACE_VAR).map(|_| Instant::now()));
    if let Some(t0) = start {
        print(t0, what);
    }
}

/// The system's monotonic clock in seconds (`CLOCK_MONOTONIC`, the clock every process of
/// the machine shares; `/proc/uptime` counts the same while the machine does not sleep).
pub fn monotonic_secs() -> f64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as f64 + t.tv_nsec() as f64 * 1e-9)
        .unwrap_or(0.0)
}

#[cold]
fn print(t0: &Instant, what: &str) {
    let since = t0.elapsed().as_secs_f64() * 1e3;
    let mono = monotonic_secs();
    eprintln!(
        "nvme-steps: {since:9.3} ms (monotonic {mono:.4} s, pid {}) {what}",
        std::process::id()
    );
}
