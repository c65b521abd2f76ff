//! `nvmectl`'s command line: nvme-cli's subcommand and option names, SPDK's `-r` / `-i`.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use nvme_host_linux::regs::features::FeatureSelect;
use nvme_host_linux::TransportId;

use super::features::parse_select;
use super::text::parse_number;

/// The whole command line.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "nvmectl",
    version,
    about = "NVMe management over the userspace driver: nvme-cli's subcommands and output, SPDK's transport ids.",
    after_help = "Examples:\n  nvmectl list\n  nvmectl id-ctrl -r 'trtype:PCIe traddr:0000:04:00.0'\n  nvmectl smart-log -r 'trtype:sim'\n  nvmectl read -r 'trtype:sim' -n 1 -s 0 -c 7 -z 4096 -d out.bin"
)]
pub struct Cli {
    /// Controller, e.g. 'trtype:PCIe traddr:0000:04:00.0 ns:1' or 'trtype:sim nscount:2
    /// lbasize:4096 size:64M serial:S'. Required except for `list`.
    #[arg(short = 'r', long = "transport", value_name = "TRID", global = true, value_parser = TransportId::parse)]
    pub transport: Option<TransportId>,
    /// Shared-memory group id: attach beside a running application that uses the same id
    /// (as a secondary), or start the group (as its primary) when none runs.
    #[arg(short = 'i', long = "shmem-grp-id", value_name = "ID", global = true)]
    pub shm_id: Option<u32>,
    /// Diagnostics: after the subcommand, print this process's role in the group, the I/O
    /// queue ids the whole group uses and the software controller's pid on stderr.
    #[arg(long = "show-group", hide = true, global = true)]
    pub show_group: bool,
    /// The subcommand.
    #[command(subcommand)]
    pub command: Cmd,
}

/// Subcommands, named as in nvme-cli (plus SPDK's `identify`).
#[derive(Subcommand, Debug, Clone)]
pub enum Cmd {
    /// List controllers and their namespaces (every NVMe function bound to vfio-pci, or -r).
    List(ListArgs),
    /// Identify Controller.
    IdCtrl(IdCtrlArgs),
    /// Identify Namespace.
    IdNs(IdNsArgs),
    /// SMART / Health Information log.
    SmartLog(SmartLogArgs),
    /// Error Information log.
    ErrorLog(ErrorLogArgs),
    /// Get Features.
    GetFeature(GetFeatureArgs),
    /// Read blocks to a file or stdout.
    Read(IoArgs),
    /// Write blocks from a file or stdin.
    Write(IoArgs),
    /// Summary in the style of SPDK's spdk_nvme_identify.
    Identify(IdentifyArgs),
    /// Reset the controller, or with --function the PCI function under it (for every
    /// process of the group with -i: their I/O queues reconnect, their outstanding I/O
    /// completes as aborted by the reset).
    Reset(ResetArgs),
}

/// Options of `reset`.
#[derive(Args, Debug, Clone)]
pub struct ResetArgs {
    /// Reset the PCI function too (VFIO_DEVICE_RESET: FLR or the reset method the kernel
    /// picks) while the controller is disabled, then bring it up as a controller reset
    /// does; nvme-cli's `reset` is the controller reset (CC.EN 1 -> 0 -> 1) alone. With
    /// trtype:sim (no PCI function) it is the controller reset.
    #[arg(long)]
    pub function: bool,
}

/// `-o`: nvme-cli's output formats.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// Human-readable text.
    #[default]
    Normal,
    /// JSON.
    Json,
}

/// Options of `list`.
#[derive(Args, Debug, Clone)]
pub struct ListArgs {
    /// Output format.
    #[arg(short = 'o', long = "output-format", value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// Options of `id-ctrl`.
#[derive(Args, Debug, Clone)]
pub struct IdCtrlArgs {
    /// Decode some fields.
    #[arg(short = 'H', long = "human-readable")]
    pub human: bool,
    /// Output format.
    #[arg(short = 'o', long = "output-format", value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// Options of `id-ns`.
#[derive(Args, Debug, Clone)]
pub struct IdNsArgs {
    /// Namespace id (default: the trid's ns:, else 1).
    #[arg(short = 'n', long = "namespace-id", value_name = "NSID", value_parser = parse_nsid)]
    pub nsid: Option<u32>,
    /// Decode the LBA formats.
    #[arg(short = 'H', long = "human-readable")]
    pub human: bool,
    /// Output format.
    #[arg(short = 'o', long = "output-format", value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// Options of `smart-log`.
#[derive(Args, Debug, Clone)]
pub struct SmartLogArgs {
    /// Decode the critical warning bits.
    #[arg(short = 'H', long = "human-readable")]
    pub human: bool,
    /// Output format.
    #[arg(short = 'o', long = "output-format", value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// Options of `error-log`.
#[derive(Args, Debug, Clone)]
pub struct ErrorLogArgs {
    /// Entries to read (default: all the controller keeps, ELPE + 1).
    #[arg(short = 'e', long = "log-entries", value_name = "N", value_parser = parse_entries)]
    pub entries: Option<usize>,
    /// Output format.
    #[arg(short = 'o', long = "output-format", value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// Options of `get-feature`.
#[derive(Args, Debug, Clone)]
pub struct GetFeatureArgs {
    /// Feature id (decimal or 0x hex).
    #[arg(short = 'f', long = "feature-id", value_name = "FID", value_parser = parse_number::<u8>)]
    pub fid: u8,
    /// Namespace id, for namespace-specific features.
    #[arg(short = 'n', long = "namespace-id", value_name = "NSID", default_value = "0", value_parser = parse_number::<u32>)]
    pub nsid: u32,
    /// Select: 0 current, 1 default, 2 saved, 3 supported capabilities.
    #[arg(short = 's', long = "sel", value_name = "SEL", default_value = "0", value_parser = parse_select)]
    pub sel: FeatureSelect,
    /// Command dword 11 (e.g. the sensor of Temperature Threshold).
    #[arg(short = 'c', long = "cdw11", value_name = "CDW11", default_value = "0", value_parser = parse_number::<u32>)]
    pub cdw11: u32,
    /// Decode the value.
    #[arg(short = 'H', long = "human-readable")]
    pub human: bool,
}

/// Options of `read` and `write` (nvme-cli's names).
#[derive(Args, Debug, Clone)]
pub struct IoArgs {
    /// Namespace id (default: the trid's ns:, else 1).
    #[arg(short = 'n', long = "namespace-id", value_name = "NSID", value_parser = parse_nsid)]
    pub nsid: Option<u32>,
    /// First logical block.
    #[arg(short = 's', long = "start-block", value_name = "LBA", default_value = "0", value_parser = parse_number::<u64>)]
    pub start_block: u64,
    /// Blocks, 0's based (0 = one block), as in nvme-cli.
    #[arg(short = 'c', long = "block-count", value_name = "N", default_value = "0", value_parser = parse_number::<u16>)]
    pub block_count: u16,
    /// Bytes: must be (block-count + 1) x block size (default: that size).
    #[arg(short = 'z', long = "data-size", value_name = "BYTES", value_parser = parse_number::<u64>)]
    pub data_size: Option<u64>,
    /// File to write to (read) or take the data from (write); default stdout / stdin.
    #[arg(short = 'd', long = "data", value_name = "FILE")]
    pub data: Option<PathBuf>,
}

/// Options of `identify`.
#[derive(Args, Debug, Clone)]
pub struct IdentifyArgs {
    /// Hex dump of the Identify Controller and Namespace data.
    #[arg(short = 'x')]
    pub hex: bool,
}

fn parse_nsid(s: &str) -> Result<u32, String> {
    match parse_number::<u32>(s)? {
        0 | u32::MAX => Err(format!(
            "namespace id {s} is not a namespace; use 1..=4294967294"
        )),
        n => Ok(n),
    }
}

fn parse_entries(s: &str) -> Result<usize, String> {
    match parse_number::<usize>(s)? {
        0 => Err("-e must be at least 1".into()),
        n => Ok(n),
    }
}

impl Cli {
    /// Parses `args` (program name first); clap's error carries the help or usage text.
    pub fn parse_args<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        Cli::try_parse_from(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::parse_args(std::iter::once("nvmectl").chain(args.iter().copied()))
    }

    #[test]
    fn global_options_go_anywhere() {
        let c = parse(&["id-ctrl", "-r", "trtype:sim nscount:2", "-H", "-o", "json"]).unwrap();
        assert!(c.transport.is_some());
        let Cmd::IdCtrl(a) = c.command else { panic!() };
        assert!(a.human);
        assert_eq!(a.output, OutputFormat::Json);
        let c = parse(&["-r", "trtype:sim", "-i", "3", "list"]).unwrap();
        assert_eq!(c.shm_id, Some(3));
    }

    #[test]
    fn io_options_are_nvme_clis() {
        let c = parse(&[
            "read", "-n", "2", "-s", "0x10", "-c", "7", "-z", "4096", "-d", "f",
        ])
        .unwrap();
        let Cmd::Read(a) = c.command else { panic!() };
        assert_eq!(
            (a.nsid, a.start_block, a.block_count, a.data_size),
            (Some(2), 16, 7, Some(4096))
        );
        assert_eq!(a.data, Some(PathBuf::from("f")));
        // -c is a 16-bit 0's based count.
        assert!(parse(&["write", "-c", "65536"]).is_err());
        assert!(parse(&["read", "-n", "0"])
            .unwrap_err()
            .to_string()
            .contains("not a namespace"));
    }

    #[test]
    fn feature_options() {
        let c = parse(&[
            "get-feature",
            "-f",
            "0x07",
            "-s",
            "supported",
            "-c",
            "0x100000",
            "-H",
        ])
        .unwrap();
        let Cmd::GetFeature(a) = c.command else {
            panic!()
        };
        assert_eq!(
            (a.fid, a.sel, a.cdw11, a.nsid),
            (7, FeatureSelect::SupportedCapabilities, 0x10_0000, 0)
        );
        assert!(parse(&["get-feature"]).is_err(), "-f is required");
        assert!(parse(&["get-feature", "-f", "7", "-s", "4"]).is_err());
    }

    #[test]
    fn bad_transport_is_a_usage_error() {
        let e = parse(&["list", "-r", "trtype:rdma"]).unwrap_err();
        assert!(e.to_string().contains("unknown trtype 'rdma'"), "{e}");
        assert!(e.use_stderr());
    }
}
