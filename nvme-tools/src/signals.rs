//! SIGINT and SIGTERM for the tools: the handler only records the signal in atomics
//! (`signal-hook`'s `flag`, async-signal-safe); the tools look at [`requested`] where they
//! can stop cleanly (nvme-perf's progress loop, nvmectl between I/O chunks and while it
//! waits for input), finish, and detach (the last member of a group removes it, and the
//! controller gets its shutdown notification).
//!
//! A second SIGINT or SIGTERM while the first is being handled ends the process at once
//! (status 128 + the signal), for a stop that itself got stuck.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::flag;

struct Flags {
    pending: Arc<AtomicBool>,
    which: Arc<AtomicUsize>,
}

static FLAGS: OnceLock<Flags> = OnceLock::new();

/// Installs the handlers for SIGINT and SIGTERM (once per process; later calls do nothing).
pub fn install() -> io::Result<()> {
    if FLAGS.get().is_some() {
        return Ok(());
    }
    let flags = Flags {
        pending: Arc::new(AtomicBool::new(false)),
        which: Arc::new(AtomicUsize::new(0)),
    };
    for sig in [SIGINT, SIGTERM] {
        // In this order: a signal that finds one already pending exits; else it is recorded.
        flag::register_conditional_shutdown(sig, 128 + sig, flags.pending.clone())?;
        flag::register_usize(sig, flags.which.clone(), sig as usize)?;
        flag::register(sig, flags.pending.clone())?;
    }
    let _ = FLAGS.set(flags);
    Ok(())
}

/// The signal received (SIGINT or SIGTERM), once one was; `None` before, or when
/// [`install`] was not called.
pub fn requested() -> Option<i32> {
    let f = FLAGS.get()?;
    if !f.pending.load(Ordering::Relaxed) {
        return None;
    }
    match f.which.load(Ordering::Relaxed) {
        0 => Some(SIGINT),
        s => Some(s as i32),
    }
}

/// `SIGINT`, `SIGTERM`.
pub fn name(signal: i32) -> String {
    match signal {
        SIGINT => "SIGINT".into(),
        SIGTERM => "SIGTERM".into(),
        s => format!("signal {s}"),
    }
}
