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
    after_help = "Examples:\n  nvmectl list\n  nvmectl id-ctrl -r 'trtype:PCIe traddr:0000:04:00.0'\n  nvmectl smart-log -r 'trtype:sim'\n  nvmectl read -r 'trtype:sim' -n 1 -s 0 -c 7 -z 4096 -d out.bin\n  nvmectl discover -r 'trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420'"
)]
pub struct Cli {
    /// Controller, e.g. 'trtype:PCIe traddr:0000:04:00.0 ns:1', 'trtype:sim nscount:2
    /// lbasize:4096 size:64M serial:S' or (discover, id-ctrl) 'trtype:TCP adrfam:IPv4
    /// traddr:IP trsvcid:4420 subnqn:NQN'. Required except for `list`.
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
    /// Firmware Slot Information log (LID 03h).
    FwLog(FwLogArgs),
    /// Any log page, as a hex dump or raw binary (--log-id: -i is the group id here).
    GetLog(GetLogArgs),
    /// Set Features.
    SetFeature(SetFeatureArgs),
    /// Active namespace list (Identify CNS 02h; --all: allocated, CNS 10h).
    ListNs(ListNsArgs),
    /// Namespace Identification Descriptor list (Identify CNS 03h).
    NsDescs(NsDescsArgs),
    /// Flush a namespace's volatile write cache.
    Flush(FlushArgs),
    /// Write Zeroes to a range of blocks.
    WriteZeroes(WriteZeroesArgs),
    /// Compare blocks with a file or stdin; a mismatch fails (exit status 1).
    Compare(IoArgs),
    /// Dataset Management (deallocate / trim with --ad) of ranges of blocks.
    Dsm(DsmArgs),
    /// Any admin command, except those the driver owns for the group.
    AdminPassthru(PassthruArgs),
    /// Any I/O command, on a queue pair of its own.
    IoPassthru(PassthruArgs),
    /// The Discovery Log Page of an NVMe/TCP discovery controller, as `nvme discover`
    /// prints it (-r 'trtype:TCP adrfam:IPv4 traddr:IP trsvcid:PORT').
    Discover(DiscoverArgs),
    /// Format NVM: a new LBA format, erasing the namespace (--force, or confirm on a
    /// terminal); refused while processes of the group have I/O queues.
    Format(FormatArgs),
    /// Device Self-test: start (-s 1 short, 2 extended), abort (-s 15) or show the test.
    DeviceSelfTest(DeviceSelfTestArgs),
    /// Device Self-test log (LID 06h).
    SelfTestLog(SelfTestLogArgs),
    /// Namespace Management: create a namespace (not attached; see attach-ns).
    CreateNs(CreateNsArgs),
    /// Namespace Management: delete a namespace.
    DeleteNs(DeleteNsArgs),
    /// Namespace Attachment: attach a namespace to controllers (default: this one).
    AttachNs(AttachNsArgs),
    /// Namespace Attachment: detach a namespace from controllers (default: this one).
    DetachNs(AttachNsArgs),
}

/// Options of `format` (nvme-cli's; `--pi` and `--reset` have no short form here: `-i` is
/// the group id and `-r` the transport).
#[derive(Args, Debug, Clone)]
pub struct FormatArgs {
    /// Namespace id (default: the trid's ns:, else 1; 0xffffffff: every namespace).
    #[arg(short = 'n', long = "namespace-id", value_name = "NSID", value_parser = parse_number::<u32>)]
    pub nsid: Option<u32>,
    /// How long to wait for the format, in milliseconds.
    #[arg(short = 't', long = "timeout", value_name = "MS", default_value = "600000", value_parser = parse_number::<u32>)]
    pub timeout: u32,
    /// LBA format index to apply (default: the one in use).
    #[arg(short = 'l', long = "lbaf", value_name = "LBAF", value_parser = parse_number::<u8>)]
    pub lbaf: Option<u8>,
    /// Secure erase settings: 0 none, 1 user data erase, 2 cryptographic erase.
    #[arg(short = 's', long = "ses", value_name = "SES", default_value = "0", value_parser = parse_number::<u8>)]
    pub ses: u8,
    /// Protection information: 0 off, 1-3 type 1-3.
    #[arg(long = "pi", value_name = "PI", default_value = "0", value_parser = parse_number::<u8>)]
    pub pi: u8,
    /// Protection information location: 1 first bytes of metadata, 0 last.
    #[arg(short = 'p', long = "pil", value_name = "PIL", default_value = "0", value_parser = parse_number::<u8>)]
    pub pil: u8,
    /// Metadata settings: 1 extended LBA (metadata with the data), 0 separate.
    #[arg(short = 'm', long = "ms", value_name = "MS", default_value = "0", value_parser = parse_number::<u8>)]
    pub ms: u8,
    /// Reset the controller after a successful format (for the whole group).
    #[arg(long = "reset")]
    pub reset: bool,
    /// Do not ask for confirmation (needed when stdin is not a terminal).
    #[arg(long = "force")]
    pub force: bool,
    /// The LBA format by its block size (instead of --lbaf).
    #[arg(short = 'b', long = "block-size", value_name = "BYTES", value_parser = parse_number::<u64>)]
    pub block_size: Option<u64>,
}

/// Options of `device-self-test`.
#[derive(Args, Debug, Clone)]
pub struct DeviceSelfTestArgs {
    /// Namespace the test includes (0: the controller only; default: every namespace).
    #[arg(short = 'n', long = "namespace-id", value_name = "NSID", default_value = "0xffffffff", value_parser = parse_number::<u32>)]
    pub nsid: u32,
    /// 1 short test, 2 extended test, 0xe vendor specific, 0xf abort the running test;
    /// without it: show the running test.
    #[arg(short = 's', long = "self-test-code", value_name = "CODE", value_parser = parse_number::<u8>)]
    pub code: Option<u8>,
    /// Wait for the test to finish, showing its progress (SIGINT aborts the test).
    #[arg(short = 'w', long = "wait")]
    pub wait: bool,
}

/// Options of `self-test-log`.
#[derive(Args, Debug, Clone)]
pub struct SelfTestLogArgs {
    /// Result entries to show (1-20).
    #[arg(short = 'e', long = "dst-entries", value_name = "N", default_value = "20", value_parser = parse_number::<u8>)]
    pub entries: u8,
    /// Output format.
    #[arg(short = 'o', long = "output-format", value_enum, default_value_t)]
    pub output: OutputFormat,
    /// Name each result and code.
    #[arg(short = 'v', long = "verbose")]
    pub verbose: bool,
}

/// Options of `create-ns` (nvme-cli's; `--nvmset-id` has no short form here).
#[derive(Args, Debug, Clone)]
pub struct CreateNsArgs {
    /// Size in logical blocks (NSZE).
    #[arg(short = 's', long = "nsze", value_name = "BLOCKS", default_value = "0", value_parser = parse_number::<u64>)]
    pub nsze: u64,
    /// Capacity in logical blocks (NCAP).
    #[arg(short = 'c', long = "ncap", value_name = "BLOCKS", default_value = "0", value_parser = parse_number::<u64>)]
    pub ncap: u64,
    /// Formatted LBA size: the LBA format index (or give --block-size).
    #[arg(short = 'f', long = "flbas", value_name = "FLBAS", value_parser = parse_number::<u8>)]
    pub flbas: Option<u8>,
    /// End-to-end data protection settings (DPS).
    #[arg(short = 'd', long = "dps", value_name = "DPS", default_value = "0", value_parser = parse_number::<u8>)]
    pub dps: u8,
    /// Multi-path I/O and sharing (NMIC).
    #[arg(short = 'm', long = "nmic", value_name = "NMIC", default_value = "0", value_parser = parse_number::<u8>)]
    pub nmic: u8,
    /// ANA group identifier.
    #[arg(short = 'a', long = "anagrp-id", value_name = "ID", default_value = "0", value_parser = parse_number::<u32>)]
    pub anagrpid: u32,
    /// NVM set identifier.
    #[arg(long = "nvmset-id", value_name = "ID", default_value = "0", value_parser = parse_number::<u16>)]
    pub nvmsetid: u16,
    /// The LBA format by its block size (instead of --flbas).
    #[arg(short = 'b', long = "block-size", value_name = "BYTES", value_parser = parse_number::<u64>)]
    pub block_size: Option<u64>,
    /// How long to wait, in milliseconds.
    #[arg(short = 't', long = "timeout", value_name = "MS", default_value = "120000", value_parser = parse_number::<u32>)]
    pub timeout: u32,
    /// Command set identifier (0: NVM).
    #[arg(short = 'y', long = "csi", value_name = "CSI", default_value = "0", value_parser = parse_number::<u8>)]
    pub csi: u8,
}

/// Options of `delete-ns`.
#[derive(Args, Debug, Clone)]
pub struct DeleteNsArgs {
    /// The namespace to delete (default: the trid's ns:; 0xffffffff: every namespace).
    #[arg(short = 'n', long = "namespace-id", value_name = "NSID", value_parser = parse_number::<u32>)]
    pub nsid: Option<u32>,
    /// How long to wait, in milliseconds.
    #[arg(short = 't', long = "timeout", value_name = "MS", default_value = "120000", value_parser = parse_number::<u32>)]
    pub timeout: u32,
}

/// Options of `attach-ns` and `detach-ns`.
#[derive(Args, Debug, Clone)]
pub struct AttachNsArgs {
    /// The namespace.
    #[arg(short = 'n', long = "namespace-id", value_name = "NSID", value_parser = parse_nsid)]
    pub nsid: Option<u32>,
    /// Comma-separated controller ids (default: this controller's, Identify CNTLID).
    #[arg(short = 'c', long = "controllers", value_name = "LIST", value_delimiter = ',', value_parser = parse_number::<u16>)]
    pub controllers: Vec<u16>,
}

/// Options of `discover`.
#[derive(Args, Debug, Clone)]
pub struct DiscoverArgs {
    /// Output format.
    #[arg(short = 'o', long = "output-format", value_enum, default_value_t)]
    pub output: OutputFormat,
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
    /// The 4096 bytes of the Identify Controller data, raw.
    #[arg(short = 'b', long = "raw-binary")]
    pub raw: bool,
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

/// Options of `fw-log`.
#[derive(Args, Debug, Clone)]
pub struct FwLogArgs {
    /// Output format.
    #[arg(short = 'o', long = "output-format", value_enum, default_value_t)]
    pub output: OutputFormat,
    /// The 512 bytes of the log, raw.
    #[arg(short = 'b', long = "raw-binary")]
    pub raw: bool,
}

/// Options of `get-log`: nvme-cli's, except that `--log-id` and `--rae` have no short form
/// (`-i` is the shared-memory group id, `-r` the transport).
#[derive(Args, Debug, Clone)]
pub struct GetLogArgs {
    /// Log page identifier (nvme-cli's -i).
    #[arg(long = "log-id", value_name = "LID", value_parser = parse_number::<u8>)]
    pub log_id: u8,
    /// Bytes to read: a positive multiple of 4.
    #[arg(short = 'l', long = "log-len", value_name = "LEN", value_parser = parse_number::<u32>)]
    pub log_len: u32,
    /// Namespace id (default 0xffffffff: the controller).
    #[arg(short = 'n', long = "namespace-id", value_name = "NSID", default_value = "0xffffffff", value_parser = parse_number::<u32>)]
    pub nsid: u32,
    /// Log page offset in bytes (a multiple of 4).
    #[arg(short = 'o', long = "lpo", value_name = "OFFSET", default_value = "0", value_parser = parse_number::<u64>)]
    pub lpo: u64,
    /// Log specific field (0-127).
    #[arg(short = 's', long = "lsp", value_name = "LSP", default_value = "0", value_parser = parse_number::<u8>)]
    pub lsp: u8,
    /// Log specific identifier.
    #[arg(short = 'S', long = "lsi", value_name = "LSI", default_value = "0", value_parser = parse_number::<u16>)]
    pub lsi: u16,
    /// Retain asynchronous event (nvme-cli's -r).
    #[arg(long = "rae")]
    pub rae: bool,
    /// The log's bytes, raw, instead of the hex dump.
    #[arg(short = 'b', long = "raw-binary")]
    pub raw: bool,
}

/// Options of `set-feature`.
#[derive(Args, Debug, Clone)]
pub struct SetFeatureArgs {
    /// Namespace id, for namespace-specific features.
    #[arg(short = 'n', long = "namespace-id", value_name = "NSID", default_value = "0", value_parser = parse_number::<u32>)]
    pub nsid: u32,
    /// Feature id.
    #[arg(short = 'f', long = "feature-id", value_name = "FID", value_parser = parse_number::<u8>)]
    pub fid: u8,
    /// New value (command dword 11).
    #[arg(short = 'v', long = "value", value_name = "VALUE", default_value = "0", value_parser = parse_number::<u32>)]
    pub value: u32,
    /// Command dword 12, if the feature uses it.
    #[arg(short = 'c', long = "cdw12", value_name = "CDW12", default_value = "0", value_parser = parse_number::<u32>)]
    pub cdw12: u32,
    /// Bytes of feature data (default: the feature's own size, 0 for most).
    #[arg(short = 'l', long = "data-len", value_name = "LEN", value_parser = parse_number::<u32>)]
    pub data_len: Option<u32>,
    /// File with the feature data (default stdin, when the feature has data).
    #[arg(short = 'd', long = "data", value_name = "FILE")]
    pub data: Option<PathBuf>,
    /// Ask the controller to save the value across power cycles.
    #[arg(short = 's', long = "save")]
    pub save: bool,
}

/// Options of `list-ns`.
#[derive(Args, Debug, Clone)]
pub struct ListNsArgs {
    /// The list starts at this namespace id.
    #[arg(short = 'n', long = "namespace-id", value_name = "NSID", default_value = "1", value_parser = parse_number::<u32>)]
    pub nsid: u32,
    /// Every allocated namespace, attached or not (Identify CNS 10h).
    #[arg(short = 'a', long = "all")]
    pub all: bool,
    /// Output format.
    #[arg(short = 'o', long = "output-format", value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// Options of `ns-descs`.
#[derive(Args, Debug, Clone)]
pub struct NsDescsArgs {
    /// Namespace id (default: the trid's ns:, else 1).
    #[arg(short = 'n', long = "namespace-id", value_name = "NSID", value_parser = parse_nsid)]
    pub nsid: Option<u32>,
    /// Output format.
    #[arg(short = 'o', long = "output-format", value_enum, default_value_t)]
    pub output: OutputFormat,
    /// The 4096 bytes of the list, raw.
    #[arg(short = 'b', long = "raw-binary")]
    pub raw: bool,
}

/// Options of `flush`.
#[derive(Args, Debug, Clone)]
pub struct FlushArgs {
    /// Namespace id (default: the trid's ns:, else 1).
    #[arg(short = 'n', long = "namespace-id", value_name = "NSID", value_parser = parse_nsid)]
    pub nsid: Option<u32>,
}

/// Options of `write-zeroes` (nvme-cli's, without the protection information ones).
#[derive(Args, Debug, Clone)]
pub struct WriteZeroesArgs {
    /// Namespace id (default: the trid's ns:, else 1).
    #[arg(short = 'n', long = "namespace-id", value_name = "NSID", value_parser = parse_nsid)]
    pub nsid: Option<u32>,
    /// First logical block.
    #[arg(short = 's', long = "start-block", value_name = "LBA", default_value = "0", value_parser = parse_number::<u64>)]
    pub start_block: u64,
    /// Blocks, 0's based (0 = one block), as in nvme-cli.
    #[arg(short = 'c', long = "block-count", value_name = "N", default_value = "0", value_parser = parse_number::<u16>)]
    pub block_count: u16,
    /// DEAC: the controller may deallocate the blocks.
    #[arg(short = 'd', long = "deac")]
    pub deac: bool,
    /// Limited retry.
    #[arg(short = 'l', long = "limited-retry")]
    pub limited_retry: bool,
    /// Force unit access.
    #[arg(short = 'f', long = "force-unit-access")]
    pub fua: bool,
}

/// Options of `dsm` (nvme-cli's, except that `--idr` has no short form: `-r` is the
/// transport).
#[derive(Args, Debug, Clone)]
pub struct DsmArgs {
    /// Namespace id (default: the trid's ns:, else 1).
    #[arg(short = 'n', long = "namespace-id", value_name = "NSID", value_parser = parse_nsid)]
    pub nsid: Option<u32>,
    /// Comma-separated context attributes of each range.
    #[arg(short = 'a', long = "ctx-attrs", value_name = "LIST", value_delimiter = ',', value_parser = parse_number::<u32>)]
    pub ctx_attrs: Vec<u32>,
    /// Comma-separated block counts of each range (1's based).
    #[arg(short = 'b', long = "blocks", value_name = "LIST", value_delimiter = ',', value_parser = parse_number::<u32>)]
    pub blocks: Vec<u32>,
    /// Comma-separated starting blocks of each range.
    #[arg(short = 's', long = "slbs", value_name = "LIST", value_delimiter = ',', value_parser = parse_number::<u64>)]
    pub slbs: Vec<u64>,
    /// Attribute Deallocate.
    #[arg(short = 'd', long = "ad")]
    pub ad: bool,
    /// Attribute Integral Dataset for Write.
    #[arg(short = 'w', long = "idw")]
    pub idw: bool,
    /// Attribute Integral Dataset for Read (nvme-cli's -r).
    #[arg(long = "idr")]
    pub idr: bool,
    /// Command dword 11 (all the attributes at once, instead of --ad/--idw/--idr).
    #[arg(short = 'c', long = "cdw11", value_name = "CDW11", default_value = "0", value_parser = parse_number::<u32>)]
    pub cdw11: u32,
}

/// Options of `admin-passthru` and `io-passthru`: nvme-cli's, except that `--input-file`
/// and `--read` have no short form (`-i` is the group id, `-r` the transport).
#[derive(Args, Debug, Clone)]
pub struct PassthruArgs {
    /// Opcode.
    #[arg(short = 'o', long = "opcode", value_name = "OPCODE", value_parser = parse_number::<u8>)]
    pub opcode: u8,
    /// Command flags (fused operation, SGLs): must be 0, the driver builds the data pointer.
    #[arg(short = 'f', long = "flags", value_name = "FLAGS", default_value = "0", value_parser = parse_number::<u8>)]
    pub flags: u8,
    /// Byte the data buffer is filled with before the command.
    #[arg(short = 'p', long = "prefill", value_name = "BYTE", default_value = "0", value_parser = parse_number::<u8>)]
    pub prefill: u8,
    /// Namespace id.
    #[arg(short = 'n', long = "namespace-id", value_name = "NSID", default_value = "0", value_parser = parse_number::<u32>)]
    pub nsid: u32,
    /// Bytes of data to transfer.
    #[arg(short = 'l', long = "data-len", value_name = "LEN", default_value = "0", value_parser = parse_number::<u32>)]
    pub data_len: u32,
    /// Metadata length: must be 0 (no separate metadata buffers).
    #[arg(short = 'm', long = "metadata-len", value_name = "LEN", default_value = "0", value_parser = parse_number::<u32>)]
    pub metadata_len: u32,
    /// Timeout in milliseconds (0: the driver's default).
    #[arg(short = 't', long = "timeout", value_name = "MS", default_value = "0", value_parser = parse_number::<u32>)]
    pub timeout: u32,
    /// Command dword 2.
    #[arg(short = '2', long = "cdw2", value_name = "V", default_value = "0", value_parser = parse_number::<u32>)]
    pub cdw2: u32,
    /// Command dword 3.
    #[arg(short = '3', long = "cdw3", value_name = "V", default_value = "0", value_parser = parse_number::<u32>)]
    pub cdw3: u32,
    /// Command dword 10.
    #[arg(short = '4', long = "cdw10", value_name = "V", default_value = "0", value_parser = parse_number::<u32>)]
    pub cdw10: u32,
    /// Command dword 11.
    #[arg(short = '5', long = "cdw11", value_name = "V", default_value = "0", value_parser = parse_number::<u32>)]
    pub cdw11: u32,
    /// Command dword 12.
    #[arg(short = '6', long = "cdw12", value_name = "V", default_value = "0", value_parser = parse_number::<u32>)]
    pub cdw12: u32,
    /// Command dword 13.
    #[arg(short = '7', long = "cdw13", value_name = "V", default_value = "0", value_parser = parse_number::<u32>)]
    pub cdw13: u32,
    /// Command dword 14.
    #[arg(short = '8', long = "cdw14", value_name = "V", default_value = "0", value_parser = parse_number::<u32>)]
    pub cdw14: u32,
    /// Command dword 15.
    #[arg(short = '9', long = "cdw15", value_name = "V", default_value = "0", value_parser = parse_number::<u32>)]
    pub cdw15: u32,
    /// File the data is read from (--write) or written to (--read); default stdin / the
    /// hex dump (nvme-cli's -i).
    #[arg(long = "input-file", value_name = "FILE")]
    pub input_file: Option<PathBuf>,
    /// With --read: the data raw on stdout instead of the hex dump.
    #[arg(short = 'b', long = "raw-binary")]
    pub raw: bool,
    /// Print the command before sending it.
    #[arg(short = 's', long = "show-command")]
    pub show: bool,
    /// Print the command and send nothing.
    #[arg(short = 'd', long = "dry-run")]
    pub dry_run: bool,
    /// The controller transfers data to the host (nvme-cli's -r; implied by opcode bit 1).
    #[arg(long = "read")]
    pub read: bool,
    /// The host transfers data to the controller (implied by opcode bit 0).
    #[arg(short = 'w', long = "write")]
    pub write: bool,
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
    use clap::CommandFactory;

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
    fn operator_subcommands_take_nvme_clis_options() {
        Cli::command().debug_assert();
        let c = parse(&[
            "-i", "3", "get-log", "--log-id", "2", "-l", "512", "-o", "8", "--rae", "-b",
        ])
        .unwrap();
        assert_eq!(c.shm_id, Some(3), "-i stays the group id");
        let Cmd::GetLog(a) = c.command else { panic!() };
        assert_eq!(
            (a.log_id, a.log_len, a.lpo, a.rae, a.raw, a.nsid),
            (2, 512, 8, true, true, u32::MAX)
        );
        let c = parse(&[
            "admin-passthru",
            "-o",
            "6",
            "-4",
            "1",
            "-l",
            "4096",
            "--read",
            "-s",
        ])
        .unwrap();
        let Cmd::AdminPassthru(a) = c.command else {
            panic!()
        };
        assert_eq!(
            (a.opcode, a.cdw10, a.data_len, a.read, a.show),
            (6, 1, 4096, true, true)
        );
        let c = parse(&["dsm", "--ad", "-s", "0,100", "-b", "8,0x10", "--idr"]).unwrap();
        let Cmd::Dsm(a) = c.command else { panic!() };
        assert_eq!(
            (a.slbs, a.blocks, a.ad, a.idr),
            (vec![0, 100], vec![8, 16], true, true)
        );
        let c = parse(&["write-zeroes", "-s", "5", "-c", "3", "-d", "-f"]).unwrap();
        let Cmd::WriteZeroes(a) = c.command else {
            panic!()
        };
        assert_eq!(
            (a.start_block, a.block_count, a.deac, a.fua),
            (5, 3, true, true)
        );
        let c = parse(&["set-feature", "-f", "4", "-v", "0x15e", "-s"]).unwrap();
        let Cmd::SetFeature(a) = c.command else {
            panic!()
        };
        assert_eq!((a.fid, a.value, a.save), (4, 350, true));
        assert!(
            parse(&["get-log", "-l", "512"]).is_err(),
            "--log-id is required"
        );
    }

    #[test]
    fn bad_transport_is_a_usage_error() {
        let e = parse(&["list", "-r", "trtype:rdma"]).unwrap_err();
        assert!(e.to_string().contains("unknown trtype 'rdma'"), "{e}");
        assert!(e.use_stderr());
    }
}
