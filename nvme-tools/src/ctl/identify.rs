//! `identify`: a controller summary in the layout of SPDK's `spdk_nvme_identify`.
//!
//! The data is gathered by [`gather`] (admin commands only) into [`Summary`]; [`format()`]
//! is pure, so it is tested with hand-made data.

use std::fmt::Display;

use nvme_host_linux::nvme_core::Command;
use nvme_host_linux::regs::features::{
    fid, Arbitration, FeatureSelect, NumberOfQueues, PowerManagement,
};
use nvme_host_linux::regs::identify::{
    cns, IdentifyController, IdentifyNamespace, Oacs, Oncs, IDENTIFY_DATA_SIZE,
};
use nvme_host_linux::regs::log::{CriticalWarning, ErrorLogEntry, FirmwareSlotLog, SmartLog};
use nvme_host_linux::regs::registers::{Cap, Vs};
use nvme_host_linux::regs::Status;
use nvme_host_linux::Controller;

use super::text::{celsius, hex_string, human_bytes, spdk_dump};
use super::Result;

/// Column where values start (SPDK's controller section).
const VALUE_COLUMN: usize = 39;

/// The features the summary shows: each is the value or the error text of Get Features.
#[derive(Clone, Debug)]
pub struct Features {
    /// Arbitration (FID 01h).
    pub arbitration: std::result::Result<u32, String>,
    /// Power Management (FID 02h).
    pub power: std::result::Result<u32, String>,
    /// Temperature Threshold (FID 04h), composite over-temperature.
    pub temp_threshold: std::result::Result<u32, String>,
    /// Number of Queues (FID 07h).
    pub queues: std::result::Result<u32, String>,
}

/// An active namespace: its id, Identify Namespace data and (with `-x`) its raw bytes.
#[derive(Clone, Debug)]
pub struct NamespaceInfo {
    /// Namespace id.
    pub nsid: u32,
    /// Identify Namespace data.
    pub id: IdentifyNamespace,
    /// The raw 4096 bytes, for `-x`.
    pub raw: Option<Vec<u8>>,
}

/// Everything `identify` prints about one controller.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Transport name (PCI address or `sim`).
    pub name: String,
    /// PCI vendor and device id.
    pub pci_id: (u16, u16),
    /// CAP.
    pub cap: Cap,
    /// VS.
    pub vs: Vs,
    /// I/O queues granted at attach (submission, completion).
    pub io_queues: (u16, u16),
    /// Identify Controller data.
    pub id: IdentifyController,
    /// The raw Identify Controller bytes, for `-x`.
    pub raw: Option<Vec<u8>>,
    /// The SMART / Health log (or why it could not be read).
    pub smart: std::result::Result<SmartLog, String>,
    /// The Firmware Slot log.
    pub firmware: std::result::Result<FirmwareSlotLog, String>,
    /// The Error Information log entries.
    pub errors: std::result::Result<Vec<ErrorLogEntry>, String>,
    /// Features.
    pub features: Features,
    /// Active namespaces.
    pub namespaces: Vec<NamespaceInfo>,
}

fn feature(ctrl: &Controller, fid: u8, cdw11: u32) -> std::result::Result<u32, String> {
    ctrl.get_features(fid, FeatureSelect::Current, 0, cdw11)
        .map_err(|e| e.to_string())
}

/// Reads what the summary needs: Identify Controller and Namespace, the SMART, firmware
/// and error logs, four features. Admin commands only; `hex` also keeps the raw identify
/// data. A log or feature the controller refuses is shown as such, not an error.
pub fn gather(ctrl: &Controller, hex: bool) -> Result<Summary> {
    let id = ctrl.identify_controller()?;
    let raw = if hex {
        Some(ctrl.admin_read(Command::identify(cns::CONTROLLER, 0, 0), IDENTIFY_DATA_SIZE)?)
    } else {
        None
    };
    let mut namespaces = Vec::new();
    for ns in ctrl.namespaces() {
        let nsid = ns.id();
        let raw = if hex {
            Some(ctrl.admin_read(
                Command::identify(cns::NAMESPACE, nsid, 0),
                IDENTIFY_DATA_SIZE,
            )?)
        } else {
            None
        };
        namespaces.push(NamespaceInfo {
            nsid,
            id: ctrl.identify_namespace(nsid)?,
            raw,
        });
    }
    let info = ctrl.info();
    Ok(Summary {
        name: ctrl.name(),
        pci_id: ctrl.pci_id(),
        cap: info.cap,
        vs: info.vs,
        io_queues: (info.io_queues.sq, info.io_queues.cq),
        smart: ctrl.smart_log().map_err(|e| e.to_string()),
        firmware: ctrl.firmware_log().map_err(|e| e.to_string()),
        errors: ctrl
            .error_log(id.elpe as usize + 1)
            .map_err(|e| e.to_string()),
        features: Features {
            arbitration: feature(ctrl, fid::ARBITRATION, 0),
            power: feature(ctrl, fid::POWER_MANAGEMENT, 0),
            temp_threshold: feature(ctrl, fid::TEMPERATURE_THRESHOLD, 0),
            queues: feature(ctrl, fid::NUMBER_OF_QUEUES, 0),
        },
        id,
        raw,
        namespaces,
    })
}

/// The report under construction.
struct Report(String);

impl Report {
    fn title(&mut self, t: &str) {
        self.0.push_str(&format!("{t}\n{}\n", "=".repeat(t.len())));
    }
    fn kv(&mut self, label: &str, value: impl Display) {
        let label = format!("{label}:");
        self.0.push_str(&format!("{label:<VALUE_COLUMN$}{value}\n"));
    }
    fn line(&mut self, s: &str) {
        self.0.push_str(s);
        self.0.push('\n');
    }
}

fn supported(b: bool) -> &'static str {
    if b {
        "Supported"
    } else {
        "Not Supported"
    }
}

fn yes(b: bool) -> &'static str {
    if b {
        "Yes"
    } else {
        "No"
    }
}

fn controller(r: &mut Report, s: &Summary) {
    let (id, cap) = (&s.id, s.cap);
    r.title("Controller Capabilities/Features");
    r.kv("Vendor ID", format!("{:04x}", id.vid));
    r.kv("Subsystem Vendor ID", format!("{:04x}", id.ssvid));
    r.kv("Serial Number", id.serial());
    r.kv("Model Number", id.model());
    r.kv("Firmware Version", id.firmware());
    r.kv("Recommended Arb Burst", id.rab);
    r.kv(
        "IEEE OUI Identifier",
        format!("{:02x} {:02x} {:02x}", id.ieee[0], id.ieee[1], id.ieee[2]),
    );
    r.line("Multi-path I/O");
    r.kv("  May have multiple subsystem ports", yes(id.cmic & 1 != 0));
    r.kv("  May have multiple controllers", yes(id.cmic & 2 != 0));
    r.kv("  Associated with SR-IOV VF", yes(id.cmic & 4 != 0));
    match id.max_transfer_bytes(cap.min_page_size()) {
        Some(b) => r.kv("Max Data Transfer Size", b),
        None => r.kv("Max Data Transfer Size", "Unlimited"),
    }
    r.kv("Max Number of Namespaces", id.nn);
    r.kv("Max Number of I/O Queues", s.io_queues.0.min(s.io_queues.1));
    r.kv("NVMe Specification Version (VS)", s.vs);
    r.kv("NVMe Specification Version (Identify)", Vs(id.ver));
    r.kv("Maximum Queue Entries", cap.max_queue_entries());
    r.kv("Contiguous Queues Required", yes(cap.cqr()));
    r.line("Arbitration Mechanisms Supported");
    r.kv("  Weighted Round Robin", supported(cap.ams() & 1 != 0));
    r.kv("  Vendor Specific", supported(cap.ams() & 2 != 0));
    r.kv("Reset Timeout", format!("{} ms", cap.timeout_ms()));
    r.kv("Doorbell Stride", format!("{} bytes", 4u32 << cap.dstrd()));
    r.kv("NVM Subsystem Reset", supported(cap.nssrs()));
    r.line("Command Sets Supported");
    r.kv("  NVM Command Set", supported(cap.css() & 1 != 0));
    r.kv("Boot Partition", supported(cap.bps()));
    r.kv(
        "Memory Page Size Minimum",
        format!("{} bytes", cap.min_page_size()),
    );
    r.kv(
        "Memory Page Size Maximum",
        format!("{} bytes", cap.max_page_size()),
    );
    r.kv("Persistent Memory Region", supported(cap.pmrs()));
    r.line("Optional Asynchronous Events Supported");
    r.kv(
        "  Namespace Attribute Notices",
        supported(id.oaes >> 8 & 1 != 0),
    );
    r.kv(
        "  Firmware Activation Notices",
        supported(id.oaes >> 9 & 1 != 0),
    );
    r.kv("128-bit Host Identifier", supported(id.ctratt & 1 != 0));
    r.line("");
    r.title("Controller Memory Buffer Support");
    r.kv("Supported", yes(cap.cmbs()));
    r.line("");
}

fn admin_attributes(r: &mut Report, id: &IdentifyController) {
    let oacs = id.oacs();
    r.title("Admin Command Set Attributes");
    r.kv(
        "Security Send/Receive",
        supported(oacs.contains(Oacs::SECURITY)),
    );
    r.kv("Format NVM", supported(oacs.contains(Oacs::FORMAT_NVM)));
    r.kv(
        "Firmware Activate/Download",
        supported(oacs.contains(Oacs::FIRMWARE)),
    );
    r.kv(
        "Namespace Management",
        supported(oacs.contains(Oacs::NS_MANAGEMENT)),
    );
    r.kv(
        "Device Self-Test",
        supported(oacs.contains(Oacs::SELF_TEST)),
    );
    r.kv("Directives", supported(oacs.contains(Oacs::DIRECTIVES)));
    r.kv("NVMe-MI", supported(oacs.contains(Oacs::NVME_MI)));
    r.kv(
        "Virtualization Management",
        supported(oacs.contains(Oacs::VIRTUALIZATION)),
    );
    r.kv(
        "Doorbell Buffer Config",
        supported(oacs.contains(Oacs::DOORBELL_BUFFER_CONFIG)),
    );
    r.kv(
        "Get LBA Status Capability",
        supported(oacs.contains(Oacs::GET_LBA_STATUS)),
    );
    r.kv("Abort Command Limit", id.acl as u32 + 1);
    r.kv("Async Event Request Limit", id.aerl as u32 + 1);
    r.kv("Number of Firmware Slots", (id.frmw >> 1) & 7);
    r.kv("Firmware Slot 1 Read-Only", yes(id.frmw & 1 != 0));
    r.kv(
        "Firmware Activation Without Reset",
        supported(id.frmw >> 4 & 1 != 0),
    );
    match id.fwug {
        0 => r.kv("Firmware Update Granularity", "No Information Provided"),
        0xff => r.kv("Firmware Update Granularity", "No Restriction"),
        g => r.kv(
            "Firmware Update Granularity",
            format!("{} KiB", g as u32 * 4),
        ),
    }
    let lpa = id.lpa;
    r.kv("Per-Namespace SMART Log", yes(lpa & 1 != 0));
    r.kv("Command Effects Log Page", supported(lpa >> 1 & 1 != 0));
    r.kv("Get Log Page Extended Data", supported(lpa >> 2 & 1 != 0));
    r.kv("Telemetry Log Pages", supported(lpa >> 3 & 1 != 0));
    r.kv("Persistent Event Log Pages", supported(lpa >> 4 & 1 != 0));
    r.kv("Error Log Page Entries Supported", id.elpe as u32 + 1);
    match id.kas {
        0 => r.kv("Keep Alive", "Not Supported"),
        k => r.kv("Keep Alive Granularity", format!("{} ms", k as u32 * 100)),
    }
    r.line("");
}

fn nvm_attributes(r: &mut Report, id: &IdentifyController) {
    let oncs = id.oncs();
    r.title("NVM Command Set Attributes");
    r.line("Submission Queue Entry Size");
    r.kv("  Max", 1u32 << (id.sqes >> 4));
    r.kv("  Min", 1u32 << (id.sqes & 0xf));
    r.line("Completion Queue Entry Size");
    r.kv("  Max", 1u32 << (id.cqes >> 4));
    r.kv("  Min", 1u32 << (id.cqes & 0xf));
    r.kv("Number of Namespaces", id.nn);
    r.kv("Compare Command", supported(oncs.contains(Oncs::COMPARE)));
    r.kv(
        "Write Uncorrectable Command",
        supported(oncs.contains(Oncs::WRITE_UNCORRECTABLE)),
    );
    r.kv(
        "Dataset Management Command",
        supported(oncs.contains(Oncs::DATASET_MANAGEMENT)),
    );
    r.kv(
        "Write Zeroes Command",
        supported(oncs.contains(Oncs::WRITE_ZEROES)),
    );
    r.kv(
        "Set Features Save Field",
        supported(oncs.contains(Oncs::SAVE_SELECT)),
    );
    r.kv("Reservations", supported(oncs.contains(Oncs::RESERVATIONS)));
    r.kv("Timestamp", supported(oncs.contains(Oncs::TIMESTAMP)));
    r.kv("Verify", supported(oncs.contains(Oncs::VERIFY)));
    r.kv(
        "Volatile Write Cache",
        if id.has_volatile_write_cache() {
            "Present"
        } else {
            "Not Present"
        },
    );
    r.kv("Atomic Write Unit (Normal)", id.awun as u32 + 1);
    r.kv("Atomic Write Unit (PFail)", id.awupf as u32 + 1);
    r.kv("Atomic Compare & Write Unit", id.acwu as u32 + 1);
    r.kv("Fused Compare & Write", supported(id.fuses & 1 != 0));
    r.line("Scatter-Gather List");
    r.kv("  SGL Command Set", supported(id.sgls & 3 != 0));
    r.line("");
}

fn firmware(r: &mut Report, s: &Summary) {
    r.title("Firmware Slot Information");
    match &s.firmware {
        Ok(fw) => {
            r.kv("Active slot", fw.active_slot());
            let next = (fw.afi >> 4) & 7;
            if next != 0 {
                r.kv("Next controller reset slot", next);
            }
            let slots = ((s.id.frmw >> 1) & 7).max(1) as usize;
            for slot in 1..=slots {
                if let Some(rev) = fw.revision(slot) {
                    r.kv(&format!("Slot {slot} Firmware Revision"), rev);
                }
            }
        }
        Err(e) => r.kv("Firmware Slot log", format!("not available: {e}")),
    }
    r.line("");
}

fn error_log(r: &mut Report, s: &Summary) {
    r.title("Error Log");
    match &s.errors {
        Ok(entries) => {
            for (i, e) in entries
                .iter()
                .enumerate()
                .filter(|(_, e)| e.error_count != 0)
            {
                let st = Status::from_completion_word(e.status_field);
                r.kv("Entry", i);
                r.kv("Error Count", format!("{:#x}", e.error_count));
                r.kv("Submission Queue Id", format!("{:#x}", e.sqid));
                r.kv("Command Id", format!("{:#x}", e.cmdid));
                r.kv("Phase Bit", e.status_field & 1);
                r.kv("Status Code", format!("{:#x}", st.sc()));
                r.kv("Status Code Type", format!("{:#x}", st.sct().bits()));
                r.kv("Status", st);
                r.kv("Do Not Retry", st.dnr() as u8);
                r.kv("Error Location", format!("{:#x}", e.parm_error_location));
                r.kv("LBA", format!("{:#x}", e.lba));
                r.kv("Namespace", format!("{:#x}", e.nsid));
                r.kv("Vendor Log Page", format!("{:#x}", e.vs));
                r.line("-----------");
            }
        }
        Err(e) => r.kv("Error log", format!("not available: {e}")),
    }
    r.line("");
}

fn features(r: &mut Report, s: &Summary) {
    let f = &s.features;
    r.title("Arbitration");
    match f.arbitration {
        Ok(v) => {
            let a = Arbitration::from_dword(v);
            match a.ab {
                7 => r.kv("Arbitration Burst", "no limit"),
                ab => r.kv("Arbitration Burst", 1u32 << ab),
            }
            if s.cap.ams() & 1 != 0 {
                r.kv("Low Priority Weight", a.lpw as u32 + 1);
                r.kv("Medium Priority Weight", a.mpw as u32 + 1);
                r.kv("High Priority Weight", a.hpw as u32 + 1);
            }
        }
        Err(ref e) => r.kv("Get Features", format!("failed: {e}")),
    }
    r.line("");
    power(r, s);
    r.title("Number of Queues");
    match f.queues {
        Ok(v) => {
            let q = NumberOfQueues::from_dword(v);
            r.kv("Number of I/O Submission Queues", q.sq);
            r.kv("Number of I/O Completion Queues", q.cq);
        }
        Err(ref e) => r.kv("Get Features", format!("failed: {e}")),
    }
    r.line("");
}

/// `25.00 W` from a power value in 0.01 W (or 0.0001 W with MXPS).
fn watts(mp: u16, tenth_mw: bool) -> String {
    if tenth_mw {
        format!("{}.{:04} W", mp / 10000, mp % 10000)
    } else {
        format!("{}.{:02} W", mp / 100, mp % 100)
    }
}

fn latency(us: u32) -> String {
    if us == 0 {
        "Not Reported".into()
    } else {
        format!("{us} microseconds")
    }
}

fn power(r: &mut Report, s: &Summary) {
    let id = &s.id;
    r.title("Power Management");
    r.kv("Number of Power States", id.npss as u32 + 1);
    match s.features.power {
        Ok(v) => r.kv(
            "Current Power State",
            format!("Power State #{}", PowerManagement::from_dword(v).ps),
        ),
        Err(ref e) => r.kv("Current Power State", format!("unknown: {e}")),
    }
    for (i, ps) in id.psd.iter().enumerate().take(id.npss as usize + 1) {
        r.line(&format!("Power State #{i}:"));
        r.kv("  Max Power", watts(ps.mp, ps.flags & 1 != 0));
        r.kv(
            "  Non-Operational State",
            if ps.flags & 2 != 0 {
                "Non-Operational"
            } else {
                "Operational"
            },
        );
        r.kv("  Entry Latency", latency(ps.enlat));
        r.kv("  Exit Latency", latency(ps.exlat));
        r.kv("  Relative Read Throughput", ps.rrt & 0x1f);
        r.kv("  Relative Read Latency", ps.rrl & 0x1f);
        r.kv("  Relative Write Throughput", ps.rwt & 0x1f);
        r.kv("  Relative Write Latency", ps.rwl & 0x1f);
    }
    r.kv(
        "Non-Operational Permissive Mode",
        supported(id.ctratt >> 1 & 1 != 0),
    );
    r.line("");
}

fn kelvin(k: u16) -> String {
    format!("{k} Kelvin ({} Celsius)", celsius(k))
}

fn ok(bad: bool, no: &'static str, yes: &'static str) -> &'static str {
    if bad {
        yes
    } else {
        no
    }
}

fn health(r: &mut Report, s: &Summary) {
    r.title("Health Information");
    let h = match &s.smart {
        Ok(h) => h,
        Err(e) => {
            r.kv("SMART / Health log", format!("not available: {e}"));
            r.line("");
            return;
        }
    };
    let cw = h.critical_warning();
    r.line("Critical Warnings:");
    r.kv(
        "  Available Spare Space",
        ok(cw.contains(CriticalWarning::SPARE), "OK", "WARNING"),
    );
    r.kv(
        "  Temperature",
        ok(cw.contains(CriticalWarning::TEMPERATURE), "OK", "WARNING"),
    );
    r.kv(
        "  Device Reliability",
        ok(cw.contains(CriticalWarning::RELIABILITY), "OK", "WARNING"),
    );
    r.kv(
        "  Read Only",
        ok(cw.contains(CriticalWarning::READ_ONLY), "No", "Yes"),
    );
    r.kv(
        "  Volatile Memory Backup",
        ok(
            cw.contains(CriticalWarning::VOLATILE_BACKUP),
            "OK",
            "WARNING",
        ),
    );
    r.kv("Current Temperature", kelvin(h.temperature_kelvin()));
    match s.features.temp_threshold {
        Ok(v) => r.kv("Temperature Threshold", kelvin(v as u16)),
        Err(ref e) => r.kv("Temperature Threshold", format!("unknown: {e}")),
    }
    for (i, &k) in h.temp_sensor.iter().enumerate().filter(|(_, &k)| k != 0) {
        r.kv(&format!("Temperature Sensor {}", i + 1), kelvin(k));
    }
    r.kv("Available Spare", format!("{}%", h.available_spare));
    r.kv(
        "Available Spare Threshold",
        format!("{}%", h.available_spare_threshold),
    );
    r.kv("Life Percentage Used", format!("{}%", h.percentage_used));
    r.kv("Data Units Read", h.data_units_read());
    r.kv("Data Units Written", h.data_units_written());
    r.kv("Host Read Commands", h.host_read_commands());
    r.kv("Host Write Commands", h.host_write_commands());
    r.kv(
        "Controller Busy Time",
        format!("{} minutes", u128::from_le_bytes(h.controller_busy_time)),
    );
    r.kv("Power Cycles", h.power_cycles());
    r.kv("Power On Hours", format!("{} hours", h.power_on_hours()));
    r.kv("Unsafe Shutdowns", h.unsafe_shutdowns());
    r.kv("Unrecoverable Media Errors", h.media_errors());
    r.kv("Lifetime Error Log Entries", h.num_error_log_entries());
    r.kv(
        "Warning Temperature Time",
        format!("{} minutes", h.warning_temp_time),
    );
    r.kv(
        "Critical Temperature Time",
        format!("{} minutes", h.critical_temp_time),
    );
    r.line("");
}

fn blocks(n: u64, bs: u32) -> String {
    format!("{n} ({})", human_bytes(n as u128 * bs as u128))
}

fn deallocated_read_value(dlfeat: u8) -> &'static str {
    match dlfeat & 7 {
        1 => "All 0x00",
        2 => "All 0xFF",
        _ => "Unknown",
    }
}

fn namespace(r: &mut Report, s: &Summary, ns: &NamespaceInfo) {
    let (id, cid) = (&ns.id, &s.id);
    let bs = id.block_size();
    r.line(&format!("Namespace ID:{}", ns.nsid));
    if let Some(raw) = &ns.raw {
        r.0.push_str(&spdk_dump(raw));
        r.line("");
    }
    r.kv(
        "Deallocate",
        supported(cid.oncs().contains(Oncs::DATASET_MANAGEMENT)),
    );
    r.kv(
        "Deallocated/Unwritten Error",
        supported(id.nsfeat >> 2 & 1 != 0),
    );
    r.kv("Deallocated Read Value", deallocated_read_value(id.dlfeat));
    r.kv(
        "Deallocate in Write Zeroes",
        supported(id.dlfeat >> 3 & 1 != 0),
    );
    r.kv(
        "Deallocated Guard Field",
        if id.dlfeat >> 4 & 1 != 0 {
            "CRC for Read Value"
        } else {
            "0xFFFF"
        },
    );
    r.kv("Flush", supported(cid.has_volatile_write_cache()));
    r.kv("Reservation", supported(id.rescap != 0));
    r.kv(
        "Namespace Sharing Capabilities",
        if id.nmic & 1 != 0 {
            "Multiple Controllers"
        } else {
            "Private"
        },
    );
    r.kv("Size (in LBAs)", blocks(id.nsze, bs));
    r.kv("Capacity (in LBAs)", blocks(id.ncap, bs));
    r.kv("Utilization (in LBAs)", blocks(id.nuse, bs));
    if id.nguid.iter().any(|&b| b != 0) {
        r.kv("NGUID", hex_string(&id.nguid));
    }
    if id.eui64.iter().any(|&b| b != 0) {
        r.kv("EUI64", hex_string(&id.eui64));
    }
    r.kv("Thin Provisioning", supported(id.thin_provisioned()));
    r.kv("Per-NS Atomic Units", yes(id.nsfeat >> 1 & 1 != 0));
    r.kv("NGUID/EUI64 Never Reused", yes(id.nsfeat >> 3 & 1 != 0));
    r.kv("Number of LBA Formats", id.nlbaf as u32 + 1);
    r.kv(
        "Current LBA Format",
        format!("LBA Format #{:02}", id.format_index()),
    );
    for (i, f) in id.lbaf.iter().enumerate().take(id.nlbaf as usize + 1) {
        r.line(&format!(
            "LBA Format #{i:02}: Data Size: {:5}  Metadata Size: {:5}",
            f.data_size(),
            f.ms
        ));
    }
    r.line("");
}

/// The whole report, in SPDK's order.
pub fn format(s: &Summary) -> String {
    let mut r = Report(String::new());
    let rule = "=".repeat(53);
    r.line(&rule);
    r.line(&format!(
        "NVMe Controller at {} [{:04x}:{:04x}]",
        s.name, s.pci_id.0, s.pci_id.1
    ));
    r.line(&rule);
    if let Some(raw) = &s.raw {
        r.0.push_str(&spdk_dump(raw));
        r.line("");
    }
    controller(&mut r, s);
    admin_attributes(&mut r, &s.id);
    nvm_attributes(&mut r, &s.id);
    firmware(&mut r, s);
    error_log(&mut r, s);
    features(&mut r, s);
    health(&mut r, s);
    r.title("Active Namespaces");
    if s.namespaces.is_empty() {
        r.line("No active namespaces");
    }
    for ns in &s.namespaces {
        namespace(&mut r, s, ns);
    }
    r.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::testdata::templates;
    use nvme_host_linux::regs::identify::fill_ascii;

    fn sample() -> Summary {
        let t = templates();
        let mut id = t.ctrl;
        fill_ascii(&mut id.sn, "CTL123");
        id.mdts = 5;
        id.oacs = Oacs::FORMAT_NVM.bits();
        id.oncs = (Oncs::DATASET_MANAGEMENT | Oncs::WRITE_ZEROES).bits();
        id.frmw = 0x3;
        id.elpe = 63;
        let mut smart = t.smart;
        smart.temperature = 308u16.to_le_bytes();
        smart.critical_warning = CriticalWarning::TEMPERATURE.bits();
        let mut fw = t.firmware;
        fw.afi = 1;
        fw.frs[0] = *b"1.0     ";
        let mut err = ErrorLogEntry::default();
        (err.error_count, err.lba) = (3, 0x40);
        let mut ns = t.ns;
        (ns.nsze, ns.ncap, ns.nuse, ns.nlbaf, ns.flbas) = (2048, 2048, 1024, 0, 0);
        ns.lbaf[0].lbads = 12;
        Summary {
            name: "0000:04:00.0".into(),
            pci_id: (0x1b36, 0x0010),
            cap: Cap::new(1023, true, 30, 0, false, 1, 0, 4),
            vs: Vs::V1_4,
            io_queues: (64, 64),
            id,
            raw: Some(vec![0x41; 20]),
            smart: Ok(smart),
            firmware: Ok(fw),
            errors: Ok(vec![ErrorLogEntry::default(), err]),
            features: Features {
                arbitration: Ok(7),
                power: Ok(0),
                temp_threshold: Ok(343),
                queues: Err("Get Features (opcode 0x0a) failed: Invalid Field in Command".into()),
            },
            namespaces: vec![NamespaceInfo {
                nsid: 1,
                id: ns,
                raw: None,
            }],
        }
    }

    #[test]
    fn sections_in_spdks_layout() {
        let t = format(&sample());
        let has = |l: &str| t.lines().any(|x| x == l);
        for l in [
            "NVMe Controller at 0000:04:00.0 [1b36:0010]",
            "00000000: 41 41 41 41 41 41 41 41-41 41 41 41 41 41 41 41  AAAAAAAAAAAAAAAA",
            "Serial Number:                         CTL123",
            "Max Data Transfer Size:                131072",
            "Reset Timeout:                         15000 ms",
            "Memory Page Size Maximum:              65536 bytes",
            "Format NVM:                            Supported",
            "Namespace Management:                  Not Supported",
            "Error Log Page Entries Supported:      64",
            "Write Zeroes Command:                  Supported",
            "Compare Command:                       Not Supported",
            "Slot 1 Firmware Revision:              1.0",
            "Error Count:                           0x3",
            "LBA:                                   0x40",
            "Arbitration Burst:                     no limit",
            "  Temperature:                         WARNING",
            "Current Temperature:                   308 Kelvin (35 Celsius)",
            "Temperature Threshold:                 343 Kelvin (70 Celsius)",
            "Get Features:                          failed: Get Features (opcode 0x0a) failed: Invalid Field in Command",
            "Namespace ID:1",
            "Size (in LBAs):                        2048 (8.00 MiB)",
            "Utilization (in LBAs):                 1024 (4.00 MiB)",
            "Current LBA Format:                    LBA Format #00",
            "LBA Format #00: Data Size:  4096  Metadata Size:     0",
        ] {
            assert!(has(l), "missing line {l:?} in\n{t}");
        }
        assert_eq!(t.matches("Entry:").count(), 1, "only used error entries");
        assert!(!t.contains("NGUID:"), "zero NGUID is not shown");
    }
}
