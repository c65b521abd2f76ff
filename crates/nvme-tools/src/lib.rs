//! Command-line tools for the NVMe driver.
//!
//! The binaries are thin: their logic lives here so that it can be unit tested.
//! - [`perf`]: `nvme-perf`, SPDK perf's workloads, options and output.

pub mod ctl;
pub mod perf;
