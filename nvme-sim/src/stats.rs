//! Command counters, updated by the processing thread (relaxed atomics) and read by
//! [`crate::SimController::stats`]; the SMART log reports from the same counters.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of the controller's counters (they survive controller resets).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct SimStats {
    /// Commands fetched from any submission queue.
    pub commands: u64,
    /// Commands fetched from the admin submission queue.
    pub admin_commands: u64,
    /// Commands fetched from I/O submission queues.
    pub io_commands: u64,
    /// Read commands.
    pub reads: u64,
    /// Write commands.
    pub writes: u64,
    /// Flush commands.
    pub flushes: u64,
    /// Compare commands.
    pub compares: u64,
    /// Write Zeroes commands.
    pub write_zeroes: u64,
    /// Dataset Management commands.
    pub dataset_management: u64,
    /// Bytes transferred to the host by Read.
    pub bytes_read: u64,
    /// Bytes transferred from the host by Write.
    pub bytes_written: u64,
    /// Completions with an error status (including injected ones).
    pub errors: u64,
    /// Completion queue entries written.
    pub completions: u64,
    /// Times a completion had to wait because its completion queue was full.
    pub cq_full_waits: u64,
    /// Controller resets (CC.EN 1 -> 0) processed.
    pub resets: u64,
    /// Enables (CC.EN 0 -> 1) processed.
    pub enables: u64,
    /// Commands fetched from I/O submission queues whose tail the controller read from the
    /// shadow doorbell buffer (Doorbell Buffer Config) rather than from the MMIO doorbell.
    pub shadow_fetches: u64,
}

macro_rules! counters {
    ($($f:ident),* $(,)?) => {
        /// The live counters.
        #[derive(Default)]
        pub(crate) struct Counters {
            $(pub(crate) $f: AtomicU64,)*
        }
        impl Counters {
            pub(crate) fn snapshot(&self) -> SimStats {
                SimStats { $($f: self.$f.load(Ordering::Relaxed),)* }
            }
        }
        impl SimStats {
            /// Number of counters (words of [`SimStats::to_words`]).
            pub(crate) const WORDS: usize = [$(stringify!($f)),*].len();
            /// The counters in declaration order (the daemon protocol's encoding).
            pub(crate) fn to_words(self) -> [u64; Self::WORDS] {
                [$(self.$f),*]
            }
            /// The inverse of [`SimStats::to_words`].
            pub(crate) fn from_words(w: &[u64; Self::WORDS]) -> SimStats {
                let mut it = w.iter().copied();
                SimStats { $($f: it.next().unwrap_or(0),)* }
            }
        }
    };
}

counters!(
    commands,
    admin_commands,
    io_commands,
    reads,
    writes,
    flushes,
    compares,
    write_zeroes,
    dataset_management,
    bytes_read,
    bytes_written,
    errors,
    completions,
    cq_full_waits,
    resets,
    enables,
    shadow_fetches,
);

/// Adds `n` to a counter (relaxed; the processing thread is the only writer).
#[inline]
pub(crate) fn add(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}
