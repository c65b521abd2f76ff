//! `nvme-perf`: measures NVMe I/O performance with SPDK perf's options and output.
//! Run `nvme-perf --help`; the logic lives in `nvme_tools::perf`.

#![deny(unsafe_code)]

fn main() -> std::process::ExitCode {
    nvme_tools::perf::main(std::env::args_os())
}
