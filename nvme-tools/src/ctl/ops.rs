//! nvme-cli's operator subcommands beyond identify and the standard logs: `fw-log`,
//! `get-log`, `set-feature`, `list-ns`, `ns-descs`, `flush`, `write-zeroes`, `compare`,
//! `dsm`, `admin-passthru` and `io-passthru`, with nvme-cli 2.3's options and output.
//!
//! Each is a function of an attached [`Controller`] and its options that returns what it
//! prints ([`Printed`]); the I/O ones use a queue pair that lives only for the call. The
//! formatters are pure functions of the bytes the controller returned.

use std::path::Path;
use std::time::Duration;

use nvme_host_linux::nvme_core::cmd::DsmRange;
use nvme_host_linux::nvme_core::Command;
use nvme_host_linux::regs::features::{feature_name, fid};
use nvme_host_linux::regs::identify::{cns, nidt, Oacs, IDENTIFY_DATA_SIZE};
use nvme_host_linux::regs::log::lid;
use nvme_host_linux::regs::status::CommandSpecificStatus;
use nvme_host_linux::{Controller, DsmAttributes, WriteZeroesOptions, MAX_DSM_RANGES};

use super::args::{
    DsmArgs, FlushArgs, FwLogArgs, GetLogArgs, ListNsArgs, NsDescsArgs, OutputFormat, PassthruArgs,
    SetFeatureArgs, WriteZeroesArgs,
};
use super::text::{alt_hex, hex_string, nvme_cli_dump, uuid_string};
use super::{io, namespace_id, Error, Result};
use crate::json::Json;

/// What a subcommand prints: bytes for stdout and lines for stderr.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Printed {
    /// Text or raw bytes for stdout.
    pub stdout: Vec<u8>,
    /// Status lines for stderr (nvme-cli prints some there).
    pub stderr: String,
}

impl Printed {
    pub(crate) fn out(s: impl Into<Vec<u8>>) -> Printed {
        Printed {
            stdout: s.into(),
            stderr: String::new(),
        }
    }
    fn err(s: impl Into<String>) -> Printed {
        Printed {
            stdout: Vec::new(),
            stderr: s.into(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// fw-log

/// nvme-cli's `util_fw_to_string`: the 8 bytes, each not printable (or a space) as `.`.
fn fw_string(frs: &[u8; 8]) -> String {
    frs.iter()
        .map(|&b| {
            if (b'!'..=b'~').contains(&b) {
                b as char
            } else {
                '.'
            }
        })
        .collect()
}

/// The Firmware Slot Information log's fields from its bytes (at least 64): AFI and the
/// seven FRS revisions.
pub fn fw_slots(b: &[u8]) -> (u8, [[u8; 8]; 7]) {
    let mut frs = [[0u8; 8]; 7];
    for (i, s) in frs.iter_mut().enumerate() {
        if let Some(src) = b.get(8 + i * 8..16 + i * 8) {
            s.copy_from_slice(src);
        }
    }
    (b.first().copied().unwrap_or(0), frs)
}

/// `nvme fw-log` text of the log's bytes: `afi  : 0x1`, then `frs1 : 0x2020202020302e31
/// (1.0.....)` per slot whose first byte is not zero.
pub fn fw_log_text(log: &[u8], device: &str) -> String {
    let (afi, frs) = fw_slots(log);
    let mut out = format!(
        "Firmware Log for device:{device}\nafi  : {}\n",
        alt_hex(afi as u64)
    );
    for (i, frs) in frs.iter().enumerate().filter(|(_, s)| s[0] != 0) {
        out.push_str(&format!(
            "frs{} : {:#016x} ({})\n",
            i + 1,
            u64::from_le_bytes(*frs),
            fw_string(frs)
        ));
    }
    out
}

/// `nvme fw-log -o json`: `{"<device>": {"Active Firmware Slot (afi)": 1, "Firmware Rev
/// Slot 1": "<u64> (<text>)"}}`.
pub fn fw_log_json(log: &[u8], device: &str) -> String {
    let (afi, frs) = fw_slots(log);
    let mut slots = Json::object();
    slots.push("Active Firmware Slot (afi)", afi);
    for (i, frs) in frs.iter().enumerate().filter(|(_, s)| s[0] != 0) {
        slots.push(
            format!("Firmware Rev Slot {}", i + 1),
            format!("{} ({})", u64::from_le_bytes(*frs), fw_string(frs)),
        );
    }
    let mut o = Json::object();
    o.push(device, slots);
    o.pretty() + "\n"
}

/// `fw-log`.
pub fn fw_log(ctrl: &Controller, a: &FwLogArgs) -> Result<Printed> {
    let b = ctrl.get_log_page(lid::FIRMWARE_SLOT, u32::MAX, 512, 0)?;
    Ok(Printed::out(if a.raw {
        b
    } else {
        match a.output {
            OutputFormat::Normal => fw_log_text(&b, &ctrl.name()).into_bytes(),
            OutputFormat::Json => fw_log_json(&b, &ctrl.name()).into_bytes(),
        }
    }))
}

/// `id-ctrl -b`: the Identify Controller data, raw.
pub fn id_ctrl_raw(ctrl: &Controller) -> Result<Printed> {
    Ok(Printed::out(ctrl.admin_read(
        Command::identify(cns::CONTROLLER, 0, 0),
        IDENTIFY_DATA_SIZE,
    )?))
}

// ---------------------------------------------------------------------------------------
// get-log

/// The Get Log Page command of `get-log`'s options, checked: the length and offset are
/// dword multiples, LSP fits its 7 bits.
pub fn get_log_command(a: &GetLogArgs) -> Result<Command> {
    if a.log_len == 0 || !a.log_len.is_multiple_of(4) {
        return Err(Error::Usage(format!(
            "-l/--log-len {} must be a positive multiple of 4: Get Log Page transfers whole dwords",
            a.log_len
        )));
    }
    if !a.lpo.is_multiple_of(4) {
        return Err(Error::Usage(format!(
            "-o/--lpo {} must be a multiple of 4: the log page offset is in whole dwords",
            a.lpo
        )));
    }
    if a.lsp > 127 {
        return Err(Error::Usage(format!(
            "-s/--lsp {} does not fit the 7-bit log specific field (0-127)",
            a.lsp
        )));
    }
    let mut cmd = Command::get_log_page(a.log_id, a.nsid, a.log_len, a.lpo);
    cmd.0.cdw10 |= (a.lsp as u32) << 8 | (a.rae as u32) << 15;
    cmd.0.cdw11 |= (a.lsi as u32) << 16;
    Ok(cmd)
}

/// `get-log`: nvme-cli's `Device:<dev> log-id:<id> namespace-id:<nsid>` and hex dump, or
/// the raw bytes.
pub fn get_log(ctrl: &Controller, a: &GetLogArgs) -> Result<Printed> {
    let cmd = get_log_command(a)?;
    let len = a.log_len as usize;
    if len > ctrl.max_transfer() {
        return Err(Error::Failed(format!(
            "-l/--log-len {len} exceeds the controller's maximum transfer of {} bytes (MDTS): read the log in pieces with -o/--lpo",
            ctrl.max_transfer()
        )));
    }
    let mut buf = ctrl.alloc_dma(len)?;
    ctrl.admin_command(cmd, Some(buf.slice(0..len)?))?;
    let data = buf.as_slice()[..len].to_vec();
    Ok(Printed::out(if a.raw {
        data
    } else {
        format!(
            "Device:{} log-id:{} namespace-id:{}\n{}",
            ctrl.name(),
            a.log_id,
            alt_hex(a.nsid as u64),
            nvme_cli_dump(&data)
        )
        .into_bytes()
    }))
}

// ---------------------------------------------------------------------------------------
// set-feature

/// C's `%#0*x` with width `w` when `v` is not zero, `8` when it is (as nvme-cli prints
/// value and cdw12): `0x0000015e`, `00000000`.
fn padded_hex(v: u32) -> String {
    if v == 0 {
        "00000000".into()
    } else {
        format!("{v:#010x}")
    }
}

/// nvme-cli's `set-feature:0x04 (Temperature Threshold), value:0x0000015e, cdw12:00000000,
/// save:0` line.
pub fn set_feature_line(fid: u8, value: u32, cdw12: u32, save: bool) -> String {
    format!(
        "set-feature:{fid:#04x} ({}), value:{}, cdw12:{}, save:{}\n",
        feature_name(fid),
        padded_hex(value),
        padded_hex(cdw12),
        alt_hex(save as u64)
    )
}

/// Reads at most `n` bytes from `path`, or stdin (fewer when it ends first).
fn read_up_to(path: Option<&Path>, n: usize) -> Result<Vec<u8>> {
    use std::io::Read;
    let what = path.map_or("stdin".into(), |p| p.display().to_string());
    let input: Box<dyn Read> = match path {
        Some(p) => Box::new(
            std::fs::File::open(p).map_err(|e| Error::Failed(format!("opening {what}: {e}")))?,
        ),
        None => Box::new(std::io::stdin()),
    };
    let mut v = Vec::with_capacity(n);
    input
        .take(n as u64)
        .read_to_end(&mut v)
        .map_err(|e| Error::Failed(format!("reading {what}: {e}")))?;
    Ok(v)
}

/// `set-feature`: Set Features with the value in dword 11, dword 12, and the feature's
/// data (from `-d FILE` or stdin) when it has some. A value the controller cannot save is
/// refused with what to do.
pub fn set_feature(ctrl: &Controller, a: &SetFeatureArgs) -> Result<Printed> {
    if a.fid == 0 {
        return Err(Error::Usage(
            "-f/--feature-id 0 is reserved: give the feature to set (e.g. 4, Temperature Threshold)".into(),
        ));
    }
    let len = a
        .data_len
        .map_or(super::features::data_len(a.fid, a.value), |l| l as usize);
    let mut cmd = Command::set_features(a.fid, a.nsid, a.value, a.save);
    cmd.0.cdw12 = a.cdw12;
    let mut data = Vec::new();
    let r = if len == 0 {
        ctrl.admin_command(cmd, None)
    } else {
        if len > ctrl.max_transfer() {
            return Err(Error::Failed(format!(
                "-l/--data-len {len} exceeds the controller's maximum transfer of {} bytes (MDTS)",
                ctrl.max_transfer()
            )));
        }
        let mut buf = ctrl.alloc_dma(len)?;
        if a.fid == fid::TIMESTAMP && a.value != 0 {
            buf.as_mut_slice()[..4].copy_from_slice(&a.value.to_le_bytes());
        } else {
            let input = read_up_to(a.data.as_deref(), len)?;
            buf.as_mut_slice()[..input.len()].copy_from_slice(&input);
        }
        let r = ctrl.admin_command(cmd, Some(buf.slice(0..len)?));
        data = buf.as_slice()[..len].to_vec();
        r
    };
    match r {
        Ok(_) => {}
        Err(e)
            if e.status().is_some_and(|s| {
                s.is_command_specific(CommandSpecificStatus::FeatureNotSaveable)
            }) =>
        {
            return Err(Error::Failed(format!(
                "set-feature: the controller cannot save feature {:#04x} ({}) (Feature Identifier Not Saveable); nothing was changed: set it without -s/--save (the value then lasts until the next reset or power cycle)",
                a.fid,
                feature_name(a.fid)
            )))
        }
        Err(e) => return Err(e.into()),
    }
    let mut out = set_feature_line(a.fid, a.value, a.cdw12, a.save);
    if !data.is_empty() {
        out.push_str(&nvme_cli_dump(&data));
    }
    Ok(Printed::out(out))
}

// ---------------------------------------------------------------------------------------
// list-ns, ns-descs

/// The non-zero ids of a namespace list (1024 little-endian dwords) with their index.
fn ns_list_ids(data: &[u8]) -> Vec<(usize, u32)> {
    data.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .enumerate()
        .filter(|&(_, id)| id != 0)
        .collect()
}

/// `nvme list-ns` text: `[   0]:0x1` per namespace.
pub fn list_ns_text(data: &[u8]) -> String {
    ns_list_ids(data)
        .into_iter()
        .map(|(i, id)| format!("[{i:4}]:{}\n", alt_hex(id as u64)))
        .collect()
}

/// `nvme list-ns -o json`: `{"nsid_list": [{"nsid": 1}, ...]}`.
pub fn list_ns_json(data: &[u8]) -> String {
    let ids: Vec<Json> = ns_list_ids(data)
        .into_iter()
        .map(|(_, id)| {
            let mut o = Json::object();
            o.push("nsid", id);
            o
        })
        .collect();
    let mut o = Json::object();
    o.push("nsid_list", ids);
    o.pretty() + "\n"
}

/// `list-ns`: the active namespaces with ids from `-n` on (Identify CNS 02h), or with
/// `--all` the allocated ones (CNS 10h), which needs Namespace Management.
pub fn list_ns(ctrl: &Controller, a: &ListNsArgs) -> Result<Printed> {
    if a.nsid == 0 || a.nsid >= 0xffff_fffe {
        return Err(Error::Usage(format!(
            "-n/--namespace-id {} is not a namespace id the list can start from: use 1..=4294967293",
            a.nsid
        )));
    }
    let c = if a.all {
        let oacs = Oacs::from_bits_truncate(ctrl.identify().oacs);
        if !oacs.contains(Oacs::NS_MANAGEMENT) {
            return Err(Error::Failed(
                "--all lists the allocated namespaces (Identify CNS 10h), which needs Namespace Management, and this controller has none (OACS bit 3 is 0): all its namespaces are active; list them without --all".into(),
            ));
        }
        cns::ALLOCATED_NAMESPACE_LIST
    } else {
        cns::ACTIVE_NAMESPACE_LIST
    };
    let data = ctrl.admin_read(Command::identify(c, a.nsid - 1, 0), IDENTIFY_DATA_SIZE)?;
    Ok(Printed::out(match a.output {
        OutputFormat::Normal => list_ns_text(&data),
        OutputFormat::Json => list_ns_json(&data),
    }))
}

/// One namespace identification descriptor: (offset, NIDT, NIDL, type name, value text).
type NsDesc = (usize, u8, u8, &'static str, String);

/// The descriptors of an Identify CNS 03h list, up to the first with NIDL 0 (or one that
/// would run past the 4096 bytes). Unknown types are skipped; each descriptor advances by
/// 4 + NIDL bytes.
pub fn ns_descs_parse(data: &[u8]) -> Vec<NsDesc> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + 4 <= data.len() {
        let (t, l) = (data[pos], data[pos + 1]);
        let Some(v) = data.get(pos + 4..pos + 4 + l as usize) else {
            break;
        };
        if l == 0 {
            break;
        }
        let known = match t {
            nidt::EUI64 if v.len() >= 8 => Some(("eui64", hex_string(&v[..8]))),
            nidt::NGUID if v.len() >= 16 => Some(("nguid", hex_string(&v[..16]))),
            nidt::UUID if v.len() >= 16 => {
                Some(("uuid", uuid_string(v[..16].try_into().expect("16 bytes"))))
            }
            nidt::CSI => Some(("csi", alt_hex(v[0] as u64))),
            _ => None,
        };
        if let Some((name, value)) = known {
            out.push((pos, t, l, name, value));
        }
        pos += 4 + l as usize;
    }
    out
}

/// `nvme ns-descs` text: `eui64   : ...`, `nguid   : ...`, `uuid    : ...`, `csi     : ...`.
pub fn ns_descs_text(nsid: u32, data: &[u8]) -> String {
    let mut out = format!("NVME Namespace Identification Descriptors NS {nsid}:\n");
    for (_, _, _, name, value) in ns_descs_parse(data) {
        out.push_str(&format!("{name:<8}: {value}\n"));
    }
    out
}

/// `nvme ns-descs -o json`: `{"ns-descs": [{"loc": 0, "nidt": 1, "nidl": 8, "type":
/// "eui64", "eui64": "..."}, ...]}` (no key when there is no descriptor).
pub fn ns_descs_json(data: &[u8]) -> String {
    let descs: Vec<Json> = ns_descs_parse(data)
        .into_iter()
        .map(|(pos, t, l, name, value)| {
            let mut o = Json::object();
            o.push("loc", pos as u64);
            o.push("nidt", t);
            o.push("nidl", l);
            o.push("type", name);
            o.push(name, value);
            o
        })
        .collect();
    let mut o = Json::object();
    if !descs.is_empty() {
        o.push("ns-descs", descs);
    }
    o.pretty() + "\n"
}

/// `ns-descs`.
pub fn ns_descs(ctrl: &Controller, a: &NsDescsArgs) -> Result<Printed> {
    let nsid = namespace_id(ctrl, a.nsid)?;
    let data = ctrl.admin_read(
        Command::identify(cns::NS_ID_DESCRIPTORS, nsid, 0),
        IDENTIFY_DATA_SIZE,
    )?;
    Ok(Printed::out(if a.raw {
        data
    } else {
        match a.output {
            OutputFormat::Normal => ns_descs_text(nsid, &data).into_bytes(),
            OutputFormat::Json => ns_descs_json(&data).into_bytes(),
        }
    }))
}

// ---------------------------------------------------------------------------------------
// flush, write-zeroes, dsm (compare is beside read and write)

/// `flush`: `NVMe Flush: success`.
pub fn flush(ctrl: &Controller, a: &FlushArgs) -> Result<Printed> {
    let nsid = namespace_id(ctrl, a.nsid)?;
    io::queue(ctrl)?.flush_sync(nsid)?;
    Ok(Printed::out("NVMe Flush: success\n"))
}

/// `write-zeroes`: the range is checked against the namespace before anything is sent;
/// `NVME Write Zeroes Success`.
pub fn write_zeroes(ctrl: &Controller, a: &WriteZeroesArgs) -> Result<Printed> {
    let nsid = namespace_id(ctrl, a.nsid)?;
    let ns = ctrl.namespace(nsid)?;
    let p = io::plan(
        nsid,
        a.start_block,
        a.block_count,
        None,
        ns.block_size(),
        ns.blocks(),
    )?;
    let opts = WriteZeroesOptions {
        deallocate: a.deac,
        force_unit_access: a.fua,
        limited_retry: a.limited_retry,
    };
    io::queue(ctrl)?.write_zeroes_sync(nsid, p.slba, p.blocks as u32, opts)?;
    Ok(Printed::out("NVME Write Zeroes Success\n"))
}

/// The ranges of `dsm`'s lists: as many as the longest list, missing entries 0 (as
/// nvme-cli).
pub fn dsm_ranges(a: &DsmArgs) -> Result<Vec<DsmRange>> {
    let n = a.ctx_attrs.len().max(a.blocks.len()).max(a.slbs.len());
    if n == 0 || n > MAX_DSM_RANGES {
        return Err(Error::Usage(format!(
            "dsm: {n} ranges; give 1 to {MAX_DSM_RANGES} with -s/--slbs (starting blocks) and -b/--blocks (block counts), comma-separated, e.g. -s 0,100 -b 8,16"
        )));
    }
    Ok((0..n)
        .map(|i| DsmRange {
            attributes: a.ctx_attrs.get(i).copied().unwrap_or(0),
            blocks: a.blocks.get(i).copied().unwrap_or(0),
            slba: a.slbs.get(i).copied().unwrap_or(0),
        })
        .collect())
}

/// `dsm`: every range is checked against the namespace before the command is sent;
/// `NVMe DSM: success`.
pub fn dsm(ctrl: &Controller, a: &DsmArgs) -> Result<Printed> {
    let nsid = namespace_id(ctrl, a.nsid)?;
    let ranges = dsm_ranges(a)?;
    let attrs = if a.cdw11 != 0 {
        DsmAttributes::from_cdw11(a.cdw11)
    } else {
        DsmAttributes {
            integral_read: a.idr,
            integral_write: a.idw,
            deallocate: a.ad,
        }
    };
    io::queue(ctrl)?
        .dataset_management_sync(nsid, &ranges, attrs)
        .map_err(|e| match e {
            e @ (nvme_host_linux::Error::LbaOutOfRange { .. }
            | nvme_host_linux::Error::Invalid(_)) => {
                Error::Failed(format!("-s/--slbs, -b/--blocks: {e}; nothing was sent"))
            }
            e => e.into(),
        })?;
    Ok(Printed::out("NVMe DSM: success\n"))
}

// ---------------------------------------------------------------------------------------
// admin-passthru, io-passthru

/// nvme-cli's name of an opcode (`nvme_cmd_to_string`), `None` for the unknown ones.
pub fn command_name(admin: bool, opcode: u8) -> Option<&'static str> {
    Some(if admin {
        match opcode {
            0x00 => "Delete I/O Submission Queue",
            0x01 => "Create I/O Submission Queue",
            0x02 => "Get Log Page",
            0x04 => "Delete I/O Completion Queue",
            0x05 => "Create I/O Completion Queue",
            0x06 => "Identify",
            0x08 => "Abort",
            0x09 => "Set Features",
            0x0a => "Get Features",
            0x0c => "Asynchronous Event Request",
            0x0d => "Namespace Management",
            0x10 => "Firmware Commit",
            0x11 => "Firmware Image Download",
            0x14 => "Device Self-test",
            0x15 => "Namespace Attachment",
            0x18 => "Keep Alive",
            0x19 => "Directive Send",
            0x1a => "Directive Receive",
            0x1c => "Virtualization Management",
            0x1d => "NVMe-MI Send",
            0x1e => "NVMe-MI Receive",
            0x7c => "Doorbell Buffer Config",
            0x80 => "Format NVM",
            0x81 => "Security Send",
            0x82 => "Security Receive",
            0x84 => "Sanitize",
            0x86 => "Get LBA Status",
            _ => return None,
        }
    } else {
        match opcode {
            0x00 => "Flush",
            0x01 => "Write",
            0x02 => "Read",
            0x04 => "Write Uncorrectable",
            0x05 => "Compare",
            0x08 => "Write Zeroes",
            0x09 => "Dataset Management",
            0x0c => "Verify",
            0x0d => "Reservation Register",
            0x0e => "Reservation Report",
            0x11 => "Reservation Acquire",
            0x15 => "Reservation Release",
            0x19 => "Copy",
            _ => return None,
        }
    })
}

/// The command of the passthru options.
pub fn passthru_command(a: &PassthruArgs) -> Command {
    let mut c = Command::new(a.opcode, a.nsid)
        .cdw10(a.cdw10)
        .cdw11(a.cdw11)
        .cdw12(a.cdw12)
        .cdw13(a.cdw13)
        .cdw14(a.cdw14)
        .cdw15(a.cdw15);
    c.0.flags = a.flags;
    c.0.cdw2 = a.cdw2;
    c.0.cdw3 = a.cdw3;
    c
}

/// nvme-cli's `--show-command` block (`addr` is the data buffer's IOVA here).
pub fn show_command(a: &PassthruArgs, addr: u64) -> String {
    format!(
        "opcode       : {:02x}\nflags        : {:02x}\nrsvd1        : {:04x}\nnsid         : {:08x}\ncdw2         : {:08x}\ncdw3         : {:08x}\ndata_len     : {:08x}\nmetadata_len : {:08x}\naddr         : {addr:x}\nmetadata     : 0\ncdw10        : {:08x}\ncdw11        : {:08x}\ncdw12        : {:08x}\ncdw13        : {:08x}\ncdw14        : {:08x}\ncdw15        : {:08x}\ntimeout_ms   : {:08x}\n",
        a.opcode,
        a.flags,
        0,
        a.nsid,
        a.cdw2,
        a.cdw3,
        a.data_len,
        a.metadata_len,
        a.cdw10,
        a.cdw11,
        a.cdw12,
        a.cdw13,
        a.cdw14,
        a.cdw15,
        a.timeout
    )
}

/// `admin-passthru` (`admin`) or `io-passthru`: the command as given, except what the
/// driver refuses (see [`nvme_host_linux::admin_passthru_refusal`]); on success nvme-cli's
/// `Admin Command Identify is Success and result: 0x00000000` on stderr and, for a read,
/// the data as a hex dump (raw with `-b`, or into `--input-file`).
pub fn passthru(ctrl: &Controller, a: &PassthruArgs, admin: bool) -> Result<Printed> {
    if a.metadata_len != 0 {
        return Err(Error::Usage(format!(
            "-m/--metadata-len {}: this driver sends no separate metadata buffer (MPTR); give 0",
            a.metadata_len
        )));
    }
    let read = a.read || a.opcode & 2 != 0;
    let write = a.write || a.opcode & 1 != 0;
    let len = a.data_len as usize;
    if len > 0 && !read && !write {
        return Err(Error::Usage(format!(
            "-l/--data-len {len} needs a direction: --read (the controller sends the data) or -w/--write (it receives it); opcode bits 1:0 imply one"
        )));
    }
    if len > ctrl.max_transfer() {
        return Err(Error::Failed(format!(
            "-l/--data-len {len} exceeds the controller's maximum transfer of {} bytes (MDTS)",
            ctrl.max_transfer()
        )));
    }
    let mut buf = if len > 0 {
        let mut b = ctrl.alloc_dma(len)?;
        b.as_mut_slice().fill(a.prefill);
        Some(b)
    } else {
        None
    };
    let mut printed = Printed::default();
    if a.show || a.dry_run {
        let addr = buf.as_ref().map_or(0, |b| b.iova());
        printed.stdout.extend(show_command(a, addr).into_bytes());
    }
    if a.dry_run {
        return Ok(printed);
    }
    if let (true, Some(b)) = (write, buf.as_mut()) {
        let input = read_up_to(a.input_file.as_deref(), len)?;
        b.as_mut_slice()[..input.len()].copy_from_slice(&input);
    }
    let cmd = passthru_command(a);
    let data = match buf.as_mut() {
        Some(b) => Some(b.slice(0..len)?),
        None => None,
    };
    let result = if admin {
        let timeout = (a.timeout != 0).then(|| Duration::from_millis(a.timeout as u64));
        ctrl.admin_passthru_timeout(cmd, data, timeout)?.dw0
    } else {
        let timeout = match a.timeout {
            0 => nvme_host_linux::SYNC_COMMAND_TIMEOUT,
            ms => Duration::from_millis(ms as u64),
        };
        io::queue(ctrl)?.passthru_sync(cmd, data, timeout)?
    };
    printed.stderr = format!(
        "{} Command {} is Success and result: 0x{result:08x}\n",
        if admin { "Admin" } else { "IO" },
        command_name(admin, a.opcode).unwrap_or("Vendor Specific")
    );
    if let (true, Some(b)) = (read, buf.as_ref()) {
        let data = &b.as_slice()[..len];
        match &a.input_file {
            Some(path) => std::fs::write(path, data)
                .map_err(|e| Error::Failed(format!("writing {}: {e}", path.display())))?,
            None if a.raw => printed.stdout.extend_from_slice(data),
            None => printed.stdout.extend(nvme_cli_dump(data).into_bytes()),
        }
    }
    Ok(printed)
}

impl From<String> for Printed {
    fn from(s: String) -> Printed {
        Printed::out(s)
    }
}

/// `compare`'s success line (stderr), as nvme-cli's.
pub fn compare_done() -> Printed {
    Printed::err("compare: Success\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fw_log_is_nvme_clis() {
        let mut f = vec![0u8; 512];
        f[0] = 1;
        f[8..16].copy_from_slice(b"1.0     ");
        f[24..32].copy_from_slice(b"2.0-rc1\0");
        let t = fw_log_text(&f, "sim");
        assert_eq!(
            t,
            "Firmware Log for device:sim\nafi  : 0x1\nfrs1 : 0x2020202020302e31 (1.0.....)\nfrs3 : 0x3163722d302e32 (2.0-rc1.)\n"
        );
        let v: serde_json::Value = serde_json::from_str(&fw_log_json(&f, "sim")).unwrap();
        assert_eq!(v["sim"]["Active Firmware Slot (afi)"], 1);
        assert_eq!(
            v["sim"]["Firmware Rev Slot 1"],
            format!("{} (1.0.....)", u64::from_le_bytes(*b"1.0     "))
        );
        assert!(v["sim"].get("Firmware Rev Slot 2").is_none());
    }

    #[test]
    fn set_feature_line_is_nvme_clis() {
        assert_eq!(
            set_feature_line(4, 350, 0, false),
            "set-feature:0x04 (Temperature Threshold), value:0x0000015e, cdw12:00000000, save:0\n"
        );
        assert_eq!(
            set_feature_line(7, 0, 1, true),
            "set-feature:0x07 (Number of Queues), value:00000000, cdw12:0x00000001, save:0x1\n"
        );
    }

    #[test]
    fn namespace_lists_and_descriptors() {
        let mut l = vec![0u8; 4096];
        l[..4].copy_from_slice(&1u32.to_le_bytes());
        l[4..8].copy_from_slice(&0x10u32.to_le_bytes());
        assert_eq!(list_ns_text(&l), "[   0]:0x1\n[   1]:0x10\n");
        let v: serde_json::Value = serde_json::from_str(&list_ns_json(&l)).unwrap();
        assert_eq!(v["nsid_list"][1]["nsid"], 16);

        let mut d = vec![0u8; 4096];
        d[..4].copy_from_slice(&[1, 8, 0, 0]);
        d[4..12].copy_from_slice(&[0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]);
        d[12..16].copy_from_slice(&[3, 16, 0, 0]);
        for (i, b) in d[16..32].iter_mut().enumerate() {
            *b = i as u8;
        }
        d[32..36].copy_from_slice(&[9, 2, 0, 0]); // unknown type: skipped
        d[38..42].copy_from_slice(&[4, 1, 0, 0]);
        let t = ns_descs_text(1, &d);
        assert_eq!(
            t,
            "NVME Namespace Identification Descriptors NS 1:\neui64   : 1122334455667788\nuuid    : 00010203-0405-0607-0809-0a0b0c0d0e0f\ncsi     : 0\n"
        );
        let v: serde_json::Value = serde_json::from_str(&ns_descs_json(&d)).unwrap();
        assert_eq!(v["ns-descs"][1]["loc"], 12);
        assert_eq!(
            v["ns-descs"][1]["uuid"],
            "00010203-0405-0607-0809-0a0b0c0d0e0f"
        );
        assert_eq!(v["ns-descs"][2]["type"], "csi");
        // A descriptor running past the end stops the walk.
        let mut bad = vec![0u8; 8];
        bad[..2].copy_from_slice(&[2, 16]);
        assert!(ns_descs_parse(&bad).is_empty());
    }

    #[test]
    fn passthru_names_and_show_command() {
        assert_eq!(command_name(true, 6), Some("Identify"));
        assert_eq!(command_name(false, 5), Some("Compare"));
        assert_eq!(command_name(true, 0xc5), None);
    }
}
