//! `nvmectl`: NVMe management over this driver, with nvme-cli's subcommands and output
//! and SPDK's transport ids.
//!
//! Every subcommand is a function of an attached [`Controller`] and its options that issues
//! admin commands only (`read` / `write` add one queue pair for the call) and leaves
//! nothing behind, so that it can run as a short-lived secondary beside an application.
//! With `trtype:TCP`, `discover` and `id-ctrl` use an NVMe/TCP admin queue
//! ([`nvme_host_linux::tcp::TcpController`]) instead. The formatters ([`idctrl`], [`idns`],
//! [`logs`], [`features`], [`list`], [`mod@identify`], [`mod@discover`], and those of
//! [`ops`] and [`manage`]) are pure functions of the driver's data types.
//! [`manage`]'s subcommands change the namespaces (`format`, `create-ns`, `delete-ns`,
//! `attach-ns`, `detach-ns`) or test the device (`device-self-test`).

pub mod args;
pub mod discover;
pub mod features;
pub mod idctrl;
pub mod identify;
pub mod idns;
pub mod io;
pub mod list;
pub mod logs;
pub mod manage;
pub mod ops;
#[cfg(test)]
mod testdata;
pub mod text;

use std::ffi::OsString;
use std::fmt;
use std::io::Write as _;
use std::process::ExitCode;

use nvme_host_linux::regs::features::FeatureSelect;
use nvme_host_linux::tcp::{self, TcpController, TcpControllerOptions};
use nvme_host_linux::{
    AttachOptions, Controller, PciAddress, Role, TcpOptions, TransportId, TransportKind,
};

use args::{
    Cli, Cmd, DiscoverArgs, ErrorLogArgs, GetFeatureArgs, IdCtrlArgs, IdNsArgs, IdentifyArgs,
    IoArgs, OutputFormat, SmartLogArgs,
};

/// Why `nvmectl` failed.
#[derive(Debug)]
pub enum Error {
    /// The command line is wrong (exit status 2).
    Usage(String),
    /// The driver failed; its message is printed as is (exit status 1).
    Driver(nvme_host_linux::Error),
    /// Anything else (exit status 1).
    Failed(String),
    /// SIGINT or SIGTERM abandoned the command (exit status 128 + the signal).
    Interrupted {
        /// The signal.
        signal: i32,
        /// What was abandoned, and how far it got.
        what: String,
    },
}

impl Error {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => 2,
            Error::Interrupted { signal, .. } => (128 + signal).clamp(1, 255) as u8,
            _ => 1,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(m) | Error::Failed(m) => f.write_str(m),
            Error::Driver(e) => write!(f, "{e}"),
            Error::Interrupted { signal, what } => write!(
                f,
                "interrupted by {}: {what}; detached from the controller",
                crate::signals::name(*signal)
            ),
        }
    }
}

impl std::error::Error for Error {}

impl From<nvme_host_linux::Error> for Error {
    fn from(e: nvme_host_linux::Error) -> Error {
        Error::Driver(e)
    }
}

/// A `Result` with `nvmectl`'s [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches to the controller `trid` names; with `shm_id`, as a member of that
/// shared-memory group (beside a running application).
///
/// The only place `nvmectl` attaches. In a group it is a secondary when an application
/// runs (or the primary of a fresh group when none does); dropping the controller detaches
/// and leaves the group, and the last member out removes it.
pub fn attach(trid: &TransportId, shm_id: Option<u32>) -> Result<Controller> {
    let opts = AttachOptions {
        group: shm_id,
        // A management command is short: the long-running members' monitors look after
        // the group (its start is a third of a secondary's attach in a TCG guest).
        group_monitor: false,
        ..AttachOptions::default()
    };
    Ok(Controller::attach_with(trid, &opts)?)
}

/// `--show-group`'s line: the process's role in its group, the I/O queue ids the whole
/// group uses, and the software controller's pid (`None` outside a group).
pub fn group_summary(ctrl: &Controller) -> Option<String> {
    let id = ctrl.group_id()?;
    let role = match ctrl.role() {
        Role::Primary => "primary",
        Role::Secondary => "secondary",
        Role::Single => "single",
    };
    if ctrl.group_over_fabrics() {
        // Over NVMe/TCP each member has its own association and queue ids.
        let pids: Vec<String> = ctrl.group_members().iter().map(u32::to_string).collect();
        return Some(format!(
            "shared-memory group {id} over NVMe/TCP: {role}, members (pids, each with its own association): {}",
            pids.join(" ")
        ));
    }
    let mut line = format!(
        "shared-memory group {id}: {role}, I/O queue ids in use by the group: {}",
        ctrl.io_queues_in_use()
    );
    if let Some(pid) = ctrl.sim_process() {
        line.push_str(&format!(", controller process {pid}"));
    }
    Some(line)
}

/// Prints [`group_summary`] on stderr when `--show-group` was given.
fn show_group(cli: &Cli, ctrl: &Controller) {
    if cli.show_group {
        if let Some(line) = group_summary(ctrl) {
            eprintln!("nvmectl: {line}");
        }
    }
}

/// The namespace a command addresses: `-n`, else the trid's `ns:`, else 1. It must be an
/// active namespace; the error names it.
pub fn namespace_id(ctrl: &Controller, nsid: Option<u32>) -> Result<u32> {
    let nsid = nsid.or(ctrl.transport_id().nsid).unwrap_or(1);
    ctrl.namespace(nsid)?;
    Ok(nsid)
}

/// `id-ctrl`.
pub fn id_ctrl(ctrl: &Controller, a: &IdCtrlArgs) -> Result<String> {
    let id = ctrl.identify_controller()?;
    Ok(match a.output {
        OutputFormat::Normal => idctrl::format_text(&id, a.human),
        OutputFormat::Json => idctrl::format_json(&id),
    })
}

/// `id-ns`.
pub fn id_ns(ctrl: &Controller, a: &IdNsArgs) -> Result<String> {
    let nsid = namespace_id(ctrl, a.nsid)?;
    let ns = ctrl.identify_namespace(nsid)?;
    Ok(match a.output {
        OutputFormat::Normal => idns::format_text(nsid, &ns, a.human),
        OutputFormat::Json => idns::format_json(&ns),
    })
}

/// `smart-log` (the controller's log, NSID 0xffffffff).
pub fn smart_log(ctrl: &Controller, a: &SmartLogArgs) -> Result<String> {
    let s = ctrl.smart_log()?;
    Ok(match a.output {
        OutputFormat::Normal => logs::smart_text(&s, &ctrl.name(), u32::MAX, a.human),
        OutputFormat::Json => logs::smart_json(&s, a.human),
    })
}

/// `error-log`.
pub fn error_log(ctrl: &Controller, a: &ErrorLogArgs) -> Result<String> {
    let n = a.entries.unwrap_or(ctrl.identify().elpe as usize + 1);
    let entries = ctrl.error_log(n)?;
    Ok(match a.output {
        OutputFormat::Normal => logs::error_text(&entries, &ctrl.name()),
        OutputFormat::Json => logs::error_json(&entries),
    })
}

/// `get-feature`: the features that return data get a DMA buffer for the call.
pub fn get_feature(ctrl: &Controller, a: &GetFeatureArgs) -> Result<String> {
    let len = features::data_len(a.fid, a.cdw11);
    let (value, data) = if len == 0 || a.sel == FeatureSelect::SupportedCapabilities {
        (
            ctrl.get_features(a.fid, a.sel, a.nsid, a.cdw11)?,
            Vec::new(),
        )
    } else {
        let mut buf = ctrl.alloc_dma(len)?;
        let cmd = nvme_host_linux::nvme_core::Command::get_features(a.fid, a.sel, a.nsid, a.cdw11);
        let c = ctrl.admin_command(cmd, Some(buf.slice(0..len)?))?;
        (c.dw0, buf.as_slice().to_vec())
    };
    Ok(features::format_text(a.fid, a.sel, value, &data, a.human))
}

/// `identify`.
pub fn identify(ctrl: &Controller, a: &IdentifyArgs) -> Result<String> {
    Ok(identify::format(&identify::gather(ctrl, a.hex)?))
}

/// Checks `read` / `write` options against the namespace.
pub fn io_plan(ctrl: &Controller, a: &IoArgs) -> Result<io::IoPlan> {
    let nsid = namespace_id(ctrl, a.nsid)?;
    let ns = ctrl.namespace(nsid)?;
    io::plan(
        nsid,
        a.start_block,
        a.block_count,
        a.data_size,
        ns.block_size(),
        ns.blocks(),
    )
}

/// `read`: the blocks' data.
pub fn read(ctrl: &Controller, a: &IoArgs) -> Result<Vec<u8>> {
    io::read_blocks(ctrl, &io_plan(ctrl, a)?)
}

/// `write`: writes the first `(c + 1) x block size` bytes of `data` (an error when there
/// are fewer).
pub fn write(ctrl: &Controller, a: &IoArgs, data: &[u8]) -> Result<()> {
    let p = io_plan(ctrl, a)?;
    io::write_from(
        ctrl,
        &p,
        Box::new(std::io::Cursor::new(data.to_vec())),
        "the input",
    )
}

/// `write` from `-d FILE` or stdin: the range is checked before the input is opened, and
/// only the bytes the blocks take are read, a DMA buffer at a time. A regular file that is
/// too short is refused before anything is written.
pub fn write_input(ctrl: &Controller, a: &IoArgs) -> Result<()> {
    let p = io_plan(ctrl, a)?;
    match a.data.as_deref() {
        Some(path) => {
            let what = path.display().to_string();
            let f = std::fs::File::open(path)
                .map_err(|e| Error::Failed(format!("opening {what}: {e}")))?;
            let meta = f
                .metadata()
                .map_err(|e| Error::Failed(format!("reading {what}: {e}")))?;
            if meta.is_file() && meta.len() < p.bytes() as u64 {
                return Err(Error::Failed(format!(
                    "{what} has {} bytes, fewer than the {} bytes to write ({} block(s) of {} bytes); nothing was written",
                    meta.len(),
                    p.bytes(),
                    p.blocks,
                    p.block_size
                )));
            }
            io::write_from(ctrl, &p, Box::new(f), &what)
        }
        None => io::write_from(ctrl, &p, Box::new(std::io::stdin()), "stdin"),
    }
}

/// `compare` from `-d FILE` or stdin: the range is checked before the input is opened
/// (as `write`); a mismatch is an error naming the blocks (exit status 1).
pub fn compare_input(ctrl: &Controller, a: &IoArgs) -> Result<()> {
    let p = io_plan(ctrl, a)?;
    match a.data.as_deref() {
        Some(path) => {
            let what = path.display().to_string();
            let f = std::fs::File::open(path)
                .map_err(|e| Error::Failed(format!("opening {what}: {e}")))?;
            io::compare_from(ctrl, &p, Box::new(f), &what)
        }
        None => io::compare_from(ctrl, &p, Box::new(std::io::stdin()), "stdin"),
    }
}

/// Writes what a subcommand of [`ops`] printed: stdout first, then its stderr lines.
fn print(p: ops::Printed) -> Result<()> {
    output(None, &p.stdout)?;
    eprint!("{}", p.stderr);
    Ok(())
}

/// The controllers `list` shows without `-r`: every NVMe function bound to vfio-pci.
fn probed_transports() -> Result<Vec<TransportId>> {
    let addrs: Vec<PciAddress> = nvme_host_linux::vfio::probe()?;
    Ok(addrs
        .into_iter()
        .map(|a| TransportId {
            kind: TransportKind::Pcie { traddr: Some(a) },
            nsid: None,
        })
        .collect())
}

/// `list`: the rows of `-r`'s controller, or of every probed one (a controller that cannot
/// be attached is reported on stderr and skipped).
fn list(cli: &Cli, a: &args::ListArgs) -> Result<String> {
    let trids = match &cli.transport {
        Some(t) => vec![t.clone()],
        None => probed_transports()?,
    };
    if trids.is_empty() {
        eprintln!(
            "nvmectl: no NVMe controller is bound to vfio-pci; bind one with `nvme-setup bind <pci address>`, or try the software controller: nvmectl list -r 'trtype:sim'"
        );
        return Ok("No NVMe devices detected.\n".into());
    }
    let mut rows = Vec::new();
    for trid in &trids {
        let r = attach(trid, cli.shm_id).and_then(|c| {
            let rows = list::rows(&c);
            show_group(cli, &c);
            rows
        });
        match r {
            Ok(r) => rows.extend(r),
            Err(e) if cli.transport.is_none() => eprintln!("nvmectl: {}: {e}", trid.name()),
            Err(e) => return Err(e),
        }
    }
    Ok(match a.output {
        OutputFormat::Normal => list::format_text(&rows),
        OutputFormat::Json => list::format_json(&rows),
    })
}

/// Writes to `-d FILE`, or stdout.
fn output(path: Option<&std::path::Path>, data: &[u8]) -> Result<()> {
    let r = match path {
        Some(p) => std::fs::write(p, data),
        None => std::io::stdout().write_all(data),
    };
    let what = path.map_or("stdout".into(), |p| p.display().to_string());
    r.map_err(|e| Error::Failed(format!("writing {what}: {e}")))
}

/// Attaches to `-r` (a usage error without it) and runs `f`; the controller is detached
/// when `f` returns.
fn with_controller<T>(cli: &Cli, f: impl FnOnce(&Controller) -> Result<T>) -> Result<T> {
    let Some(trid) = &cli.transport else {
        return Err(Error::Usage(
            "-r/--transport is required, e.g. -r 'trtype:PCIe traddr:0000:04:00.0' or -r 'trtype:sim'; `nvmectl list` shows the controllers bound to vfio-pci".into(),
        ));
    };
    let ctrl = attach(trid, cli.shm_id)?;
    let r = f(&ctrl);
    show_group(cli, &ctrl);
    r
}

/// `-r`'s NVMe/TCP options, when it names `trtype:TCP`.
fn tcp_transport(cli: &Cli) -> Option<&TcpOptions> {
    match &cli.transport {
        Some(TransportId {
            kind: TransportKind::Tcp(o),
            ..
        }) => Some(o),
        _ => None,
    }
}

/// `discover`: connects to the discovery controller `-r` names and prints its log.
pub fn discover(cli: &Cli, a: &DiscoverArgs) -> Result<String> {
    let Some(o) = tcp_transport(cli) else {
        return Err(Error::Usage(
            "discover needs an NVMe/TCP discovery controller: -r 'trtype:TCP adrfam:IPv4 traddr:<IP> trsvcid:<port>' (subnqn: defaults to the discovery NQN)".into(),
        ));
    };
    let log = tcp::discover(o, &TcpControllerOptions::default())?;
    Ok(match a.output {
        OutputFormat::Normal => discover::format_text(&log),
        OutputFormat::Json => discover::format_json(&log),
    })
}

/// `-r`'s NVMe/TCP options when they name a discovery controller (no `subnqn:`, or the
/// discovery NQN): it has an admin queue only, so it is reached without a [`Controller`].
fn tcp_discovery(cli: &Cli) -> Option<&TcpOptions> {
    tcp_transport(cli).filter(|o| {
        o.subnqn
            .as_deref()
            .is_none_or(|n| n == nvme_host_linux::regs::fabrics::DISCOVERY_NQN)
    })
}

/// `id-ctrl` of an NVMe/TCP discovery controller (every other controller, over TCP too, is
/// attached as a [`Controller`]).
fn id_ctrl_discovery(o: &TcpOptions, a: &IdCtrlArgs) -> Result<Vec<u8>> {
    let opts = TcpControllerOptions::default();
    let c = TcpController::connect_discovery(o, &opts)?;
    if a.raw {
        let mut b = vec![0u8; 4096];
        let cmd = nvme_host_linux::nvme_core::Command::identify(1, 0, 0).0;
        c.admin(cmd, tcp::Data::ToHost(&mut b))?;
        return Ok(b);
    }
    let id = c.identify_controller()?;
    Ok(match a.output {
        OutputFormat::Normal => idctrl::format_text(&id, a.human).into_bytes(),
        OutputFormat::Json => idctrl::format_json(&id).into_bytes(),
    })
}

/// Runs the parsed command line; text goes to stdout.
pub fn run(cli: &Cli) -> Result<()> {
    let text = match &cli.command {
        Cmd::List(a) => list(cli, a)?,
        Cmd::Discover(a) => discover(cli, a)?,
        Cmd::IdCtrl(a) if tcp_discovery(cli).is_some() => {
            let o = tcp_discovery(cli).expect("checked");
            return output(None, &id_ctrl_discovery(o, a)?);
        }
        Cmd::IdCtrl(a) if a.raw => return print(with_controller(cli, ops::id_ctrl_raw)?),
        Cmd::IdCtrl(a) => with_controller(cli, |c| id_ctrl(c, a))?,
        Cmd::IdNs(a) => with_controller(cli, |c| id_ns(c, a))?,
        Cmd::SmartLog(a) => with_controller(cli, |c| smart_log(c, a))?,
        Cmd::ErrorLog(a) => with_controller(cli, |c| error_log(c, a))?,
        Cmd::GetFeature(a) => with_controller(cli, |c| get_feature(c, a))?,
        Cmd::Identify(a) => with_controller(cli, |c| identify(c, a))?,
        Cmd::Reset(a) if a.function => {
            let f = with_controller(cli, |c| c.reset_function().map_err(Error::from))?;
            let hex = |v: Option<u16>| v.map_or("-".into(), |v| format!("{v:#06x}"));
            // Said on stderr like nvme-cli's status lines; stdout stays empty as for `reset`.
            eprintln!(
                "function reset: Success (PCI command register {} before, {} after)",
                hex(f.command_before),
                hex(f.command_after)
            );
            return Ok(());
        }
        Cmd::Reset(_) => {
            with_controller(cli, |c| c.reset().map_err(Error::from))?;
            return Ok(());
        }
        Cmd::Read(a) => {
            let data = with_controller(cli, |c| read(c, a))?;
            output(a.data.as_deref(), &data)?;
            eprintln!("read: Success");
            return Ok(());
        }
        Cmd::FwLog(a) => return print(with_controller(cli, |c| ops::fw_log(c, a))?),
        Cmd::GetLog(a) => return print(with_controller(cli, |c| ops::get_log(c, a))?),
        Cmd::SetFeature(a) => return print(with_controller(cli, |c| ops::set_feature(c, a))?),
        Cmd::ListNs(a) => return print(with_controller(cli, |c| ops::list_ns(c, a))?),
        Cmd::NsDescs(a) => return print(with_controller(cli, |c| ops::ns_descs(c, a))?),
        Cmd::Flush(a) => return print(with_controller(cli, |c| ops::flush(c, a))?),
        Cmd::WriteZeroes(a) => return print(with_controller(cli, |c| ops::write_zeroes(c, a))?),
        Cmd::Dsm(a) => return print(with_controller(cli, |c| ops::dsm(c, a))?),
        Cmd::AdminPassthru(a) => {
            return print(with_controller(cli, |c| ops::passthru(c, a, true))?)
        }
        Cmd::IoPassthru(a) => return print(with_controller(cli, |c| ops::passthru(c, a, false))?),
        Cmd::Format(a) => {
            // Options checked before attaching: a bad command line sends nothing.
            manage::check_format_args(a)?;
            return print(with_controller(cli, |c| manage::format(c, a))?);
        }
        Cmd::DeviceSelfTest(a) => {
            return with_controller(cli, |c| {
                manage::device_self_test(c, a, &mut std::io::stdout().lock())
            })
        }
        Cmd::SelfTestLog(a) => {
            return print(with_controller(cli, |c| manage::self_test_log(c, a))?)
        }
        Cmd::CreateNs(a) => return print(with_controller(cli, |c| manage::create_ns(c, a))?),
        Cmd::DeleteNs(a) => return print(with_controller(cli, |c| manage::delete_ns(c, a))?),
        Cmd::AttachNs(a) => return print(with_controller(cli, |c| manage::attach_ns(c, a, true))?),
        Cmd::DetachNs(a) => {
            return print(with_controller(cli, |c| manage::attach_ns(c, a, false))?)
        }
        Cmd::Compare(a) => {
            with_controller(cli, |c| compare_input(c, a))?;
            return print(ops::compare_done());
        }
        Cmd::Write(a) => {
            // Attach and check the range first: a missing -r or a bad range is reported
            // before the input is opened.
            with_controller(cli, |c| write_input(c, a))?;
            eprintln!("write: Success");
            return Ok(());
        }
    };
    output(None, text.as_bytes())
}

/// The `nvmectl` program: parses `args` (program name first), runs, and returns the exit
/// status (0, 1 on errors, 2 on usage errors, 128 + the signal when SIGINT or SIGTERM
/// abandoned the command).
pub fn main<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    nvme_host_linux::steps::step("nvmectl: main");
    let cli = match Cli::parse_args(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    // SIGINT / SIGTERM: a command that is quick (the admin ones) finishes; read and write
    // are abandoned between two commands or while waiting for input. Either way the
    // controller is detached before the process exits.
    if let Err(e) = crate::signals::install() {
        eprintln!("nvmectl: warning: no SIGINT/SIGTERM handling: {e}");
    }
    nvme_host_linux::steps::step("nvmectl: arguments parsed");
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nvmectl: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRID: &str = "trtype:sim nscount:2 size:16M mdts:1 serial:CTL123";

    fn ctrl() -> Controller {
        attach(&TransportId::parse(TRID).unwrap(), None).unwrap()
    }

    fn io(nsid: u32, slba: u64, c: u16) -> IoArgs {
        IoArgs {
            nsid: Some(nsid),
            start_block: slba,
            block_count: c,
            data_size: None,
            data: None,
        }
    }

    #[test]
    fn write_then_read_round_trips_across_chunks() {
        let c = ctrl();
        // mdts:1 = 8 KiB per command: 40 blocks of 512 bytes take three commands.
        let data: Vec<u8> = (0..40 * 512).map(|i| (i * 7 % 251) as u8).collect();
        write(&c, &io(2, 100, 39), &data).unwrap();
        assert_eq!(read(&c, &io(2, 100, 39)).unwrap(), data);
        assert_eq!(read(&c, &io(2, 120, 0)).unwrap(), data[20 * 512..21 * 512]);
        assert!(
            read(&c, &io(1, 100, 0)).unwrap().iter().all(|&b| b == 0),
            "other namespace untouched"
        );
        assert_eq!(
            c.io_queues_in_use(),
            0,
            "read and write leave no queue behind"
        );
        let e = write(&c, &io(2, 0, 1), &data[..100]).unwrap_err();
        assert!(e.to_string().contains("fewer than the 1024 bytes"), "{e}");
    }

    #[test]
    fn errors_name_the_namespace_and_range() {
        let c = ctrl();
        let e = id_ns(
            &c,
            &IdNsArgs {
                nsid: Some(9),
                human: false,
                output: OutputFormat::Normal,
            },
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "namespace 9 is not an active namespace of this controller"
        );
        let e = read(&c, &io(1, 32768, 0)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "-s/--start-block 32768 -c/--block-count 0: LBA range 32768..32769 is out of range for namespace 1 (32768 blocks)"
        );
    }

    #[test]
    fn admin_subcommands_over_one_controller() {
        let c = ctrl();
        let t = id_ctrl(
            &c,
            &IdCtrlArgs {
                human: false,
                raw: false,
                output: OutputFormat::Normal,
            },
        )
        .unwrap();
        assert!(t.contains("\nsn        : CTL123"), "{t}");
        let f = GetFeatureArgs {
            fid: 7,
            nsid: 0,
            sel: FeatureSelect::Current,
            cdw11: 0,
            human: false,
        };
        assert!(get_feature(&c, &f)
            .unwrap()
            .starts_with("get-feature:0x07 (Number of Queues), Current value:0x"));
        // A failing admin command lands in the error log.
        assert!(c.get_features(0x7f, FeatureSelect::Current, 0, 0).is_err());
        let e = error_log(
            &c,
            &ErrorLogArgs {
                entries: Some(4),
                output: OutputFormat::Json,
            },
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&e).expect("valid JSON");
        assert!(!v["errors"].as_array().unwrap().is_empty(), "{e}");
        let s = identify(&c, &IdentifyArgs { hex: true }).unwrap();
        assert!(
            s.contains("Serial Number:                         CTL123"),
            "{s}"
        );
        assert!(
            s.contains("\n00000000: FE FF FE FF 43 54 4C 31-32 33 20 20"),
            "{s}"
        );
        assert_eq!(s.matches("Namespace ID:").count(), 2);
        assert_eq!(group_summary(&c), None, "not in a group");
        let rows = list::rows(&c).unwrap();
        assert_eq!(rows.iter().map(|r| r.nsid).collect::<Vec<_>>(), [1, 2]);
    }
}
