//! Command-line tools for the NVMe driver.
//!
//! The binaries are thin: their logic lives here so that it can be unit tested.
//! - [`perf`]: `nvme-perf`, SPDK perf's workloads, options and output.
//! - [`ctl`]: `nvmectl`, nvme-cli's management subcommands.
//! - [`json`]: the JSON writer both use.
//!
//! Both take `-i N` to run as members of a shared-memory group (several processes, one
//! controller). `nvme-perf --lba-range START:COUNT --lease exclusive|shared` confines a
//! run to a range of blocks and holds an LBA range lease on it (`nvme_host_linux::Lease`),
//! so that processes of a group divide a namespace between them; a conflicting claim ends
//! the run with an error naming the holder. `nvme-perf --data-pointer auto|prp|sgl` chooses
//! how I/O commands point to their data (SGLs where the controller supports them, by
//! default).
//!
//! [`sys`] holds the crate's only `unsafe` code (affinity, the TSC, process limits);
//! [`signals`] records SIGINT / SIGTERM for a clean stop.
#![deny(unsafe_code)]

pub mod ctl;
pub mod json;
pub mod perf;
pub mod signals;
pub mod sys;
