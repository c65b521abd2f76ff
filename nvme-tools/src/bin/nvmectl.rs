//! `nvmectl`: NVMe management (nvme-cli's subcommands and output) over this driver.
//! Run `nvmectl --help`; the logic lives in `nvme_tools::ctl`.

#![deny(unsafe_code)]

fn main() -> std::process::ExitCode {
    nvme_tools::ctl::main(std::env::args_os())
}
