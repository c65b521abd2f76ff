//! Fuzz targets for the driver's readers of untrusted bytes.
//!
//! Each module has a `run(data: &[u8])` that drives the real public code paths with the
//! fuzzer's bytes and panics only when an invariant breaks (a panic inside the driver is a
//! finding too). The libFuzzer binaries in `fuzz_targets/` call these (`cargo fuzz run
//! NAME`); the smoke test in `tests/smoke.rs` calls the same functions on stable Rust with
//! the kept corpus (`fuzz/corpus/NAME/`) and pseudo-random inputs, so CI runs every target
//! without nightly or cargo-fuzz.
//!
//! - [`completions`]: a `QueuePair` and the shared admin queue fed arbitrary completion
//!   entries (and, for the shared queue, arbitrary bytes over its shared state).
//! - [`identify`]: Identify Controller / Namespace data and the SMART, error and firmware
//!   log pages, through `nvme-regs` and `nvmectl`'s text and JSON printers.
//! - [`group_control`]: the checks a process joining a group does on the control segment
//!   and the admin segment layout it describes.
//! - [`sim_protocol`]: the software controller daemon's request handling.
//! - [`tcp_pdus`]: the NVMe/TCP host's admin queue fed arbitrary PDUs (framing, digests,
//!   C2HData, R2T, responses, terminations).

pub mod completions;
pub mod group_control;
pub mod identify;
mod input;
pub mod sim_protocol;
pub mod tcp_pdus;

/// A target's entry point.
pub type Target = fn(&[u8]);

/// Every target by name, for the smoke test and `cargo xtask fuzz`.
pub const TARGETS: &[(&str, Target)] = &[
    ("completions", completions::run),
    ("identify", identify::run),
    ("group_control", group_control::run),
    ("sim_protocol", sim_protocol::run),
    ("tcp_pdus", tcp_pdus::run),
];
