//! nvme-cli's subcommands that change the namespaces or test the device: `format`,
//! `device-self-test`, `self-test-log`, `create-ns`, `delete-ns`, `attach-ns` and
//! `detach-ns`, with nvme-cli 2.3's options and output, over the driver's
//! [`Controller::format`], [`Controller::device_self_test`] and namespace management.
//!
//! What they leave behind in a group: `format` is refused while any process of the group
//! has I/O queues (the driver names them); the namespace changes reach the other processes
//! through the controller's Namespace Attribute Changed notice (see
//! [`Controller::rescan_namespaces`]).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use nvme_host_linux::regs::identify::{IdentifyNamespace, Oacs};
use nvme_host_linux::regs::log::{self_test, SelfTestLog, SelfTestResult};
use nvme_host_linux::regs::status::StatusCodeType;
use nvme_host_linux::regs::Status;
use nvme_host_linux::{Controller, FormatOptions, NamespaceSpec};

use super::args::{
    AttachNsArgs, CreateNsArgs, DeleteNsArgs, DeviceSelfTestArgs, FormatArgs, OutputFormat,
    SelfTestLogArgs,
};
use super::ops::Printed;
use super::text::alt_hex;
use super::{Error, Result};
use crate::json::Json;

// ---------------------------------------------------------------------------------------
// format

/// The checks nvme-cli makes of `format`'s options before it sends anything.
pub fn check_format_args(a: &FormatArgs) -> Result<()> {
    if a.lbaf.is_some() && a.block_size.is_some() {
        return Err(Error::Usage(
            "Invalid specification of both LBAF and Block Size, please specify only one".into(),
        ));
    }
    if let Some(bs) = a.block_size {
        if !bs.is_power_of_two() {
            return Err(Error::Usage(format!(
                "Invalid value for block size ({bs}), must be a power of two"
            )));
        }
    }
    let bad = |what: &str, v: u8| Err(Error::Usage(format!("invalid {what}:{v}")));
    match () {
        _ if a.ses > 7 => bad("secure erase settings", a.ses),
        _ if a.lbaf.is_some_and(|l| l > 15) => bad("lbaf", a.lbaf.unwrap_or(0)),
        _ if a.pi > 7 => bad("pi", a.pi),
        _ if a.pil > 1 => bad("pil", a.pil),
        _ if a.ms > 1 => bad("ms", a.ms),
        _ => Ok(()),
    }
}

/// The LBA format (index) of `ns` whose data size is `bs` bytes without metadata.
pub fn lbaf_of_block_size(ns: &IdentifyNamespace, bs: u64) -> Option<u8> {
    (0..=ns.nlbaf.min(15) as usize)
        .find(|&i| ns.lbaf[i].data_size() as u64 == bs && ns.lbaf[i].ms == 0)
        .map(|i| i as u8)
}

/// Asks on the terminal; `Ok` only for "yes". Not a terminal: refused with what to do.
fn confirm_format(ctrl: &Controller, nsid: u32) -> Result<()> {
    let all = if nsid == u32::MAX {
        "(ALL namespaces)"
    } else {
        ""
    };
    if !std::io::stdin().is_terminal() {
        return Err(Error::Failed(format!(
            "format erases namespace {nsid:#x}{all} of {}: give --force to confirm (stdin is not a terminal to ask on); nothing was sent",
            ctrl.name()
        )));
    }
    eprint!(
        "You are about to format {}, namespace {nsid:#x}{all}.\nWARNING: Format may irrevocably delete this device's data.\nType 'yes' to format, anything else cancels (--force skips this question): ",
        ctrl.name()
    );
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| Error::Failed(format!("reading the answer: {e}")))?;
    if line.trim() != "yes" {
        return Err(Error::Failed("format cancelled; nothing was sent".into()));
    }
    eprintln!("Sending format operation ... ");
    Ok(())
}

/// `format`: the LBA format of `--lbaf`, of `--block-size`, or the one in use; nvme-cli's
/// `Success formatting namespace:1`.
pub fn format(ctrl: &Controller, a: &FormatArgs) -> Result<Printed> {
    check_format_args(a)?;
    let fna_all = ctrl.identify().fna & 1 == 1;
    let nsid = if fna_all {
        // Every namespace is formatted at once on this controller.
        u32::MAX
    } else {
        a.nsid.or(ctrl.transport_id().nsid).unwrap_or(1)
    };
    if nsid == 0 {
        return Err(Error::Usage(
            "Invalid namespace ID, specify a namespace to format or use '-n 0xffffffff' to format all namespaces on this controller.".into(),
        ));
    }
    let lbaf = if nsid != u32::MAX {
        let ns = ctrl.identify_namespace(nsid)?;
        if ns.nsze == 0 {
            return Err(nvme_host_linux::Error::NoSuchNamespace(nsid).into());
        }
        match (a.lbaf, a.block_size) {
            (Some(l), _) => l,
            (None, Some(bs)) => lbaf_of_block_size(&ns, bs).ok_or_else(|| {
                Error::Failed(format!(
                    "LBAF corresponding to given block size {bs} not found\nPlease correct block size, or specify LBAF directly"
                ))
            })?,
            (None, None) => ns.format_index() as u8,
        }
    } else {
        a.lbaf.unwrap_or(0)
    };
    if !a.force {
        confirm_format(ctrl, nsid)?;
    }
    let opts = FormatOptions {
        lbaf,
        ses: a.ses,
        pi: a.pi,
        pil: a.pil == 1,
        ms: a.ms == 1,
        timeout: Some(Duration::from_millis(a.timeout.max(1) as u64)),
    };
    ctrl.format(nsid, opts)?;
    let out = format!("Success formatting namespace:{nsid:x}\n");
    if a.reset {
        ctrl.reset()?;
    }
    Ok(Printed {
        stdout: out.into_bytes(),
        stderr: String::new(),
    })
}

// ---------------------------------------------------------------------------------------
// device-self-test, self-test-log

/// nvme-cli's progress line of `device-self-test --wait`: `[====|      ]  40%`.
pub fn progress_bar(percent: u8, spin: usize) -> String {
    let p = percent.min(100) as usize;
    let spinner = ['-', '\\', '|', '/'][spin % 4];
    format!(
        "\r[{}{spinner}{}] {p:3}%",
        "=".repeat(p / 2),
        " ".repeat(49usize.saturating_sub(p / 2))
    )
}

/// Waits for the running self-test to end, printing nvme-cli's progress bar to `out`.
/// SIGINT or SIGTERM aborts the test (`Aborting device self-test operation`). Gives up
/// when the completion does not move for EDSTT x 60% + 60 seconds, as nvme-cli does.
fn wait_self_test(ctrl: &Controller, out: &mut dyn Write) -> Result<()> {
    let put = |out: &mut dyn Write, s: &str| {
        out.write_all(s.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| Error::Failed(format!("writing stdout: {e}")))
    };
    let patience = Duration::from_secs(ctrl.identify().edstt as u64 * 60 * 60 / 100 + 60);
    put(out, "Waiting for self test completion...\n")?;
    let (mut shown, mut moved, mut spin) = (0u8, Instant::now(), 0usize);
    loop {
        put(out, &progress_bar(shown, spin))?;
        if let Some(signal) = crate::signals::requested() {
            put(out, "\n")?;
            ctrl.device_self_test(u32::MAX, self_test::ABORT)?;
            put(out, "Aborting device self-test operation\n")?;
            return Err(Error::Interrupted {
                signal,
                what: "device-self-test --wait (the test was aborted)".into(),
            });
        }
        std::thread::sleep(Duration::from_millis(250));
        let log = ctrl.self_test_log()?;
        if log.current_operation & 0xf == self_test::NONE {
            put(out, &format!("\r[{}] {:3}%\n", "=".repeat(50), 100))?;
            return Ok(());
        }
        let done = log.completion & 0x7f;
        if done != shown {
            (shown, moved) = (done, Instant::now());
        } else if moved.elapsed() > patience {
            put(out, "\n")?;
            return Err(Error::Failed(format!(
                "no progress for {} seconds, stop waiting",
                patience.as_secs()
            )));
        }
        spin += 1;
    }
}

/// `device-self-test`: starts, aborts or shows the test; `--wait` follows it to the end.
pub fn device_self_test(
    ctrl: &Controller,
    a: &DeviceSelfTestArgs,
    out: &mut dyn Write,
) -> Result<()> {
    let write = |out: &mut dyn Write, s: &str| {
        out.write_all(s.as_bytes())
            .map_err(|e| Error::Failed(format!("writing stdout: {e}")))
    };
    let Some(code) = a.code else {
        let log = ctrl.self_test_log()?;
        if log.current_operation & 0xf == self_test::NONE {
            return write(out, "no self test running\n");
        }
        if a.wait {
            return wait_self_test(ctrl, out);
        }
        return write(out, &format!("progress {}%\n", log.completion & 0x7f));
    };
    if !Oacs::from_bits_truncate(ctrl.identify().oacs).contains(Oacs::SELF_TEST) {
        return Err(Error::Failed(format!(
            "{}: the controller has no Device Self-test (Identify Controller OACS bit 4 is 0)",
            ctrl.name()
        )));
    }
    ctrl.device_self_test(a.nsid, code)?;
    match code {
        self_test::ABORT => write(out, "Aborting device self-test operation\n")?,
        self_test::EXTENDED => write(out, "Extended Device self-test started\n")?,
        self_test::SHORT => write(out, "Short Device self-test started\n")?,
        _ => {}
    }
    if a.wait && code != self_test::ABORT {
        wait_self_test(ctrl, out)?;
    }
    Ok(())
}

/// nvme-cli's names of the self-test results (index: the result, 0xa on: reserved).
fn result_name(r: u8) -> &'static str {
    match r {
        0x0 => "Operation completed without error",
        0x1 => "Operation was aborted by a Device Self-test command",
        0x2 => "Operation was aborted by a Controller Level Reset",
        0x3 => "Operation was aborted due to a removal of a namespace from the namespace inventory",
        0x4 => "Operation was aborted due to the processing of a Format NVM command",
        0x5 => "A fatal error or unknown test error occurred while the controller was executing the device self-test operation and the operation did not complete",
        0x6 => "Operation completed with a segment that failed and the segment that failed is not known",
        0x7 => "Operation completed with one or more failed segments and the first segment that failed is indicated in the SegmentNumber field",
        0x8 => "Operation was aborted for unknown reason",
        0x9 => "Operation was aborted due to a sanitize operation",
        0xf => "Entry not used (does not contain a result)",
        _ => "Reserved",
    }
}

fn code_name(c: u8) -> &'static str {
    match c {
        self_test::SHORT => "Short device self-test operation",
        self_test::EXTENDED => "Extended device self-test operation",
        self_test::VENDOR => "Vendor specific",
        _ => "Reserved",
    }
}

fn result_text(r: &SelfTestResult, verbose: bool, out: &mut String) {
    let op = r.result();
    out.push_str(&format!(
        "  Operation Result             : {}",
        alt_hex(op as u64)
    ));
    if verbose {
        out.push_str(&format!(" {}", result_name(op)));
    }
    out.push('\n');
    if op == self_test::RESULT_NOT_USED {
        return;
    }
    out.push_str(&format!("  Self Test Code               : {:x}", r.code()));
    if verbose {
        out.push_str(&format!(" {}", code_name(r.code())));
    }
    out.push('\n');
    if op == 0x7 {
        out.push_str(&format!(
            "  Segment Number               : {}\n",
            alt_hex(r.seg as u64)
        ));
    }
    out.push_str(&format!(
        "  Valid Diagnostic Information : {}\n  Power on hours (POH)         : {}\n",
        alt_hex(r.vdi as u64),
        alt_hex(r.power_on_hours())
    ));
    if r.vdi & self_test::VDI_NSID != 0 {
        out.push_str(&format!(
            "  Namespace Identifier         : {}\n",
            alt_hex(r.nsid() as u64)
        ));
    }
    if r.vdi & self_test::VDI_FLBA != 0 {
        out.push_str(&format!(
            "  Failing LBA                  : {}\n",
            alt_hex(r.failing_lba())
        ));
    }
    if r.vdi & self_test::VDI_SCT != 0 {
        out.push_str(&format!(
            "  Status Code Type             : {}\n",
            alt_hex(r.sct as u64)
        ));
    }
    if r.vdi & self_test::VDI_SC != 0 {
        out.push_str(&format!(
            "  Status Code                  : {}",
            alt_hex(r.sc as u64)
        ));
        if verbose {
            let sct = StatusCodeType::from_bits(r.sct & 7);
            out.push_str(&format!(" {}", Status::new(sct, r.sc)));
        }
        out.push('\n');
    }
    out.push_str(&format!(
        "  Vendor Specific              : {} {}\n",
        alt_hex(r.vs[0] as u64),
        alt_hex(r.vs[1] as u64)
    ));
}

/// `nvme self-test-log` text: the current operation and completion, then the first
/// `entries` results.
pub fn self_test_log_text(log: &SelfTestLog, entries: u8, device: &str, verbose: bool) -> String {
    let mut out = format!(
        "Device Self Test Log for NVME device:{device}\nCurrent operation  : {}\nCurrent Completion : {}%\n",
        alt_hex(log.current_operation as u64),
        log.completion
    );
    for (i, r) in log.results.iter().take(entries as usize).enumerate() {
        out.push_str(&format!("Self Test Result[{i}]:\n"));
        result_text(r, verbose, &mut out);
    }
    out
}

/// `nvme self-test-log -o json`.
pub fn self_test_log_json(log: &SelfTestLog, entries: u8) -> String {
    let reports: Vec<Json> = log
        .results
        .iter()
        .take(entries as usize)
        .map(|r| {
            let mut o = Json::object();
            o.push("Self test result", r.result());
            if r.result() == self_test::RESULT_NOT_USED {
                return o;
            }
            o.push("Self test code", r.code());
            o.push("Segment number", r.seg);
            o.push("Valid Diagnostic Information", r.vdi);
            o.push("Power on hours", r.power_on_hours());
            if r.vdi & self_test::VDI_NSID != 0 {
                o.push("Namespace Identifier", r.nsid());
            }
            if r.vdi & self_test::VDI_FLBA != 0 {
                o.push("Failing LBA", r.failing_lba());
            }
            if r.vdi & self_test::VDI_SCT != 0 {
                o.push("Status Code Type", r.sct);
            }
            if r.vdi & self_test::VDI_SC != 0 {
                o.push("Status Code", r.sc);
            }
            o.push("Vendor Specific", u16::from_le_bytes(r.vs));
            o
        })
        .collect();
    let mut o = Json::object();
    o.push("Current Device Self-Test Operation", log.current_operation);
    o.push("Current Device Self-Test Completion", log.completion);
    o.push("List of Valid Reports", reports);
    o.pretty() + "\n"
}

/// `self-test-log`.
pub fn self_test_log(ctrl: &Controller, a: &SelfTestLogArgs) -> Result<Printed> {
    let log = ctrl.self_test_log()?;
    let n = a.entries.min(self_test::RESULTS as u8);
    Ok(Printed::from(match a.output {
        OutputFormat::Normal => self_test_log_text(&log, n, &ctrl.name(), a.verbose),
        OutputFormat::Json => self_test_log_json(&log, n),
    }))
}

// ---------------------------------------------------------------------------------------
// create-ns, delete-ns, attach-ns, detach-ns

/// `create-ns`: `create-ns: Success, created nsid:2`.
pub fn create_ns(ctrl: &Controller, a: &CreateNsArgs) -> Result<Printed> {
    if a.flbas.is_some() && a.block_size.is_some() {
        return Err(Error::Usage(
            "Invalid specification of both FLBAS and Block Size, please specify only one".into(),
        ));
    }
    let flbas = match (a.flbas, a.block_size) {
        (Some(f), _) => f,
        (None, Some(bs)) => {
            if !bs.is_power_of_two() {
                return Err(Error::Usage(format!(
                    "Invalid value for block size ({bs}). Block size must be a power of two"
                )));
            }
            // The formats every namespace may use: Identify Namespace of NSID FFFFFFFFh.
            let ns = ctrl.identify_namespace(u32::MAX)?;
            lbaf_of_block_size(&ns, bs).ok_or_else(|| {
                Error::Failed(format!(
                    "FLBAS corresponding to block size {bs} not found\nPlease correct block size, or specify FLBAS directly"
                ))
            })?
        }
        (None, None) => {
            return Err(Error::Usage(
                "FLBAS corresponding to block size 0 not found\nPlease correct block size, or specify FLBAS directly: give -f/--flbas or -b/--block-size".into(),
            ))
        }
    };
    let spec = NamespaceSpec {
        nsze: a.nsze,
        ncap: a.ncap,
        flbas,
        dps: a.dps,
        nmic: a.nmic,
        anagrpid: a.anagrpid,
        nvmsetid: a.nvmsetid,
        csi: a.csi,
        timeout: Some(Duration::from_millis(a.timeout.max(1) as u64)),
    };
    let nsid = ctrl.create_namespace(&spec)?;
    Ok(Printed::from(format!(
        "create-ns: Success, created nsid:{nsid}\n"
    )))
}

/// `delete-ns`: `delete-ns: Success, deleted nsid:2`.
pub fn delete_ns(ctrl: &Controller, a: &DeleteNsArgs) -> Result<Printed> {
    let Some(nsid) = a.nsid.or(ctrl.transport_id().nsid).filter(|&n| n != 0) else {
        return Err(Error::Usage(
            "delete-ns: give the namespace to delete with -n/--namespace-id".into(),
        ));
    };
    let timeout = Duration::from_millis(a.timeout.max(1) as u64);
    ctrl.delete_namespace(nsid, Some(timeout))?;
    Ok(Printed::from(format!(
        "delete-ns: Success, deleted nsid:{nsid}\n"
    )))
}

/// `attach-ns` (`attach`) or `detach-ns`: `attach-ns: Success, nsid:2`. Without
/// `--controllers` the namespace is attached to (detached from) this controller.
pub fn attach_ns(ctrl: &Controller, a: &AttachNsArgs, attach: bool) -> Result<Printed> {
    let name = if attach { "attach-ns" } else { "detach-ns" };
    let Some(nsid) = a.nsid else {
        return Err(Error::Usage(format!(
            "{name}: namespace-id parameter required"
        )));
    };
    let ids = if a.controllers.is_empty() {
        vec![ctrl.identify().cntlid]
    } else {
        a.controllers.clone()
    };
    if attach {
        ctrl.attach_namespace(nsid, &ids)?;
    } else {
        ctrl.detach_namespace(nsid, &ids)?;
    }
    Ok(Printed::from(format!("{name}: Success, nsid:{nsid}\n")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_test_log_is_nvme_clis() {
        let mut failed = SelfTestResult::new(self_test::EXTENDED, 0x7, 0x1c, 1);
        failed.seg = 3;
        failed.vdi |= self_test::VDI_FLBA | self_test::VDI_SCT | self_test::VDI_SC;
        failed.flba = 0x1234u64.to_le_bytes();
        failed.sct = 2;
        failed.sc = 0x81;
        let ok = SelfTestResult::new(self_test::SHORT, 0, 0, u32::MAX);
        let log = SelfTestLog::new(self_test::SHORT, 40, &[failed, ok]);
        let t = self_test_log_text(&log, 3, "sim", false);
        assert_eq!(
            t,
            "Device Self Test Log for NVME device:sim\nCurrent operation  : 0x1\nCurrent Completion : 40%\n\
Self Test Result[0]:\n  Operation Result             : 0x7\n  Self Test Code               : 2\n  Segment Number               : 0x3\n  Valid Diagnostic Information : 0xf\n  Power on hours (POH)         : 0x1c\n  Namespace Identifier         : 0x1\n  Failing LBA                  : 0x1234\n  Status Code Type             : 0x2\n  Status Code                  : 0x81\n  Vendor Specific              : 0 0\n\
Self Test Result[1]:\n  Operation Result             : 0\n  Self Test Code               : 1\n  Valid Diagnostic Information : 0\n  Power on hours (POH)         : 0\n  Vendor Specific              : 0 0\n\
Self Test Result[2]:\n  Operation Result             : 0xf\n"
        );
        let v = self_test_log_text(&log, 1, "sim", true);
        assert!(
            v.contains("  Self Test Code               : 2 Extended device self-test operation\n"),
            "{v}"
        );
        assert!(
            v.contains("Status Code                  : 0x81 Unrecovered Read Error"),
            "{v}"
        );
        let j: serde_json::Value = serde_json::from_str(&self_test_log_json(&log, 20)).unwrap();
        assert_eq!(j["Current Device Self-Test Operation"], 1);
        assert_eq!(j["Current Device Self-Test Completion"], 40);
        let r = j["List of Valid Reports"].as_array().unwrap();
        assert_eq!(r.len(), 20);
        assert_eq!(r[0]["Failing LBA"], 0x1234);
        assert_eq!(r[0]["Segment number"], 3);
        assert!(r[1].get("Namespace Identifier").is_none());
        assert_eq!(r[2]["Self test result"], 15);
        assert!(r[2].get("Self test code").is_none());
    }

    #[test]
    fn progress_bar_is_nvme_clis() {
        assert_eq!(progress_bar(0, 0), format!("\r[-{}]   0%", " ".repeat(49)));
        assert_eq!(
            progress_bar(40, 1),
            format!("\r[{}\\{}]  40%", "=".repeat(20), " ".repeat(29))
        );
    }

    fn fmt_args() -> FormatArgs {
        FormatArgs {
            nsid: None,
            timeout: 600000,
            lbaf: None,
            ses: 0,
            pi: 0,
            pil: 0,
            ms: 0,
            reset: false,
            force: true,
            block_size: None,
        }
    }

    #[test]
    fn format_options_are_checked_as_nvme_cli_does() {
        assert!(check_format_args(&fmt_args()).is_ok());
        let both = FormatArgs {
            lbaf: Some(1),
            block_size: Some(4096),
            ..fmt_args()
        };
        assert!(check_format_args(&both)
            .unwrap_err()
            .to_string()
            .contains("both LBAF and Block Size"));
        let odd = FormatArgs {
            block_size: Some(1000),
            ..fmt_args()
        };
        assert!(check_format_args(&odd)
            .unwrap_err()
            .to_string()
            .contains("power of two"));
        let pil = FormatArgs {
            pil: 2,
            ..fmt_args()
        };
        assert_eq!(
            check_format_args(&pil).unwrap_err().to_string(),
            "invalid pil:2"
        );
    }
}
