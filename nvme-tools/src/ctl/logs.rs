//! `smart-log` and `error-log`: the SMART / Health Information and Error Information log
//! pages as nvme-cli prints them.

use nvme_host_linux::regs::log::{ErrorLogEntry, SmartLog};
use nvme_host_linux::regs::Status;

use super::text::{alt_hex, celsius, json_int, si_scale, tab_label};
use crate::json::Json;

/// `35°C (308 Kelvin)`.
fn temperature(kelvin: u16) -> String {
    format!("{}°C ({kelvin} Kelvin)", celsius(kelvin))
}

/// Data units (thousands of 512-byte units) with their size as nvme-cli prints them:
/// `1234 (631.81 MB)`.
fn data_units(units: u128) -> String {
    let (v, suffix) = si_scale(units as f64 * 512_000.0);
    format!("{units} ({v:.2} {suffix}B)")
}

/// The SMART log's lines as (nvme-cli label, text value, JSON key, JSON value).
fn smart_rows(s: &SmartLog) -> Vec<(String, String, String, Json)> {
    let mut rows = Vec::new();
    let mut row = |label: &str, value: String, key: &str, json: Json| {
        rows.push((label.to_string(), value, key.to_string(), json));
    };
    let t = s.temperature_kelvin();
    row(
        "critical_warning",
        alt_hex(s.critical_warning as u64),
        "critical_warning",
        json_int(s.critical_warning.into()),
    );
    row(
        "temperature",
        temperature(t),
        "temperature",
        json_int(t.into()),
    );
    row(
        "available_spare",
        format!("{}%", s.available_spare),
        "avail_spare",
        json_int(s.available_spare.into()),
    );
    row(
        "available_spare_threshold",
        format!("{}%", s.available_spare_threshold),
        "spare_thresh",
        json_int(s.available_spare_threshold.into()),
    );
    row(
        "percentage_used",
        format!("{}%", s.percentage_used),
        "percent_used",
        json_int(s.percentage_used.into()),
    );
    row(
        "endurance group critical warning summary",
        alt_hex(s.endurance_group_critical_warning as u64),
        "endurance_grp_critical_warning_summary",
        json_int(s.endurance_group_critical_warning.into()),
    );
    // 128-bit counters: decimal strings in nvme-cli's JSON.
    let (read, written) = (s.data_units_read(), s.data_units_written());
    row(
        "Data Units Read",
        data_units(read),
        "data_units_read",
        Json::Str(read.to_string()),
    );
    row(
        "Data Units Written",
        data_units(written),
        "data_units_written",
        Json::Str(written.to_string()),
    );
    let counters: [(&str, u128); 8] = [
        ("host_read_commands", s.host_read_commands()),
        ("host_write_commands", s.host_write_commands()),
        (
            "controller_busy_time",
            u128::from_le_bytes(s.controller_busy_time),
        ),
        ("power_cycles", s.power_cycles()),
        ("power_on_hours", s.power_on_hours()),
        ("unsafe_shutdowns", s.unsafe_shutdowns()),
        ("media_errors", s.media_errors()),
        ("num_err_log_entries", s.num_error_log_entries()),
    ];
    for (name, v) in counters {
        row(name, v.to_string(), name, Json::Str(v.to_string()));
    }
    row(
        "Warning Temperature Time",
        s.warning_temp_time.to_string(),
        "warning_temp_time",
        json_int(s.warning_temp_time),
    );
    row(
        "Critical Composite Temperature Time",
        s.critical_temp_time.to_string(),
        "critical_comp_time",
        json_int(s.critical_temp_time),
    );
    for (i, &k) in s.temp_sensor.iter().enumerate().filter(|(_, &k)| k != 0) {
        let label = format!("Temperature Sensor {}", i + 1);
        row(
            &label,
            temperature(k),
            &format!("temperature_sensor_{}", i + 1),
            json_int(k.into()),
        );
    }
    let thermal: [(&str, &str, u32); 4] = [
        (
            "Thermal Management T1 Trans Count",
            "thm_temp1_trans_count",
            s.thm_temp1_transitions,
        ),
        (
            "Thermal Management T2 Trans Count",
            "thm_temp2_trans_count",
            s.thm_temp2_transitions,
        ),
        (
            "Thermal Management T1 Total Time",
            "thm_temp1_total_time",
            s.thm_temp1_total_time,
        ),
        (
            "Thermal Management T2 Total Time",
            "thm_temp2_total_time",
            s.thm_temp2_total_time,
        ),
    ];
    for (label, key, v) in thermal {
        row(label, v.to_string(), key, json_int(v));
    }
    rows
}

/// The critical warning bits as nvme-cli names them (text, JSON key).
const CRITICAL_WARNING_BITS: [(&str, &str); 6] = [
    ("Available Spare", "available_spare"),
    ("Temp. Threshold", "temp_threshold"),
    ("NVM subsystem Reliability", "reliability_degraded"),
    ("Read-only", "ro"),
    ("Volatile mem. backup failed", "vmbu_failed"),
    ("Persistent Mem. RO", "pmr_ro"),
];

/// The `-H` decode of the critical warning byte: `      Available Spare[0]             : 0`.
fn critical_warning_detail(cw: u8) -> String {
    CRITICAL_WARNING_BITS
        .iter()
        .enumerate()
        .map(|(b, (n, _))| format!("      {:<31}: {}\n", format!("{n}[{b}]"), cw >> b & 1))
        .collect()
}

/// `nvme smart-log` output for the log of `nsid` (0xffffffff: the controller) on `device`.
pub fn smart_text(s: &SmartLog, device: &str, nsid: u32, human: bool) -> String {
    let mut out = format!("Smart Log for NVME device:{device} namespace-id:{nsid:x}\n");
    for (label, value, _, _) in smart_rows(s) {
        if label.starts_with("Temperature Sensor") {
            // nvme-cli 2.3 aligns these with spaces, not tabs.
            out.push_str(&format!("{label}           : {value}\n"));
        } else {
            out.push_str(&format!("{}: {value}\n", tab_label(&label)));
        }
        if human && label == "critical_warning" {
            out.push_str(&critical_warning_detail(s.critical_warning));
        }
    }
    out
}

/// `nvme smart-log -o json` (with `human`, `-H`: the critical warning as an object of its
/// bits).
pub fn smart_json(s: &SmartLog, human: bool) -> String {
    let mut o = Json::object();
    for (_, _, key, json) in smart_rows(s) {
        if human && key == "critical_warning" {
            let cw = s.critical_warning;
            let mut bits = Json::object();
            bits.push("value", json_int(cw.into()));
            for (b, (_, k)) in CRITICAL_WARNING_BITS.iter().enumerate() {
                bits.push(*k, json_int((cw >> b & 1).into()));
            }
            o.push(key, bits);
        } else {
            o.push(key, json);
        }
    }
    o.pretty() + "\n"
}

/// The transport type of an error entry in nvme-cli's words.
fn trtype_name(t: u8) -> &'static str {
    match t {
        0 => "The transport type is not indicated or the error is not transport related.",
        1 => "RDMA Transport error.",
        2 => "Fibre Channel Transport error.",
        3 => "TCP Transport error.",
        254 => "Intra-host Transport error.",
        _ => "Reserved",
    }
}

/// One error entry's fields as (nvme-cli label, text, JSON key, JSON value).
fn error_rows(e: &ErrorLogEntry) -> Vec<(&'static str, String, &'static str, Json)> {
    let status = Status::from_completion_word(e.status_field);
    // The status code's name from the specification (nvme-cli adds a sentence after it).
    let status_name = status.name().unwrap_or("unrecognized");
    vec![
        (
            "error_count",
            e.error_count.to_string(),
            "error_count",
            e.error_count.into(),
        ),
        ("sqid", e.sqid.to_string(), "sqid", json_int(e.sqid.into())),
        (
            "cmdid",
            alt_hex(e.cmdid as u64),
            "cmdid",
            json_int(e.cmdid.into()),
        ),
        (
            "status_field",
            format!("{}({status_name})", alt_hex(status.0 as u64)),
            "status_field",
            json_int(status.0.into()),
        ),
        (
            "phase_tag",
            alt_hex((e.status_field & 1) as u64),
            "phase_tag",
            json_int((e.status_field & 1).into()),
        ),
        (
            "parm_err_loc",
            alt_hex(e.parm_error_location as u64),
            "parm_error_location",
            json_int(e.parm_error_location.into()),
        ),
        ("lba", alt_hex(e.lba), "lba", e.lba.into()),
        ("nsid", alt_hex(e.nsid as u64), "nsid", json_int(e.nsid)),
        ("vs", e.vs.to_string(), "vs", json_int(e.vs.into())),
        (
            "trtype",
            trtype_name(e.trtype).to_string(),
            "trtype",
            json_int(e.trtype.into()),
        ),
        ("cs", alt_hex(e.cs), "cs", e.cs.into()),
        (
            "trtype_spec_info",
            alt_hex(e.trtype_spec_info as u64),
            "trtype_spec_info",
            json_int(e.trtype_spec_info.into()),
        ),
    ]
}

/// Every entry read, empty or not, as nvme-cli lists them.
fn used(entries: &[ErrorLogEntry]) -> impl Iterator<Item = (usize, &ErrorLogEntry)> {
    entries.iter().enumerate()
}

/// `nvme error-log` output: the header, then every entry read (empty ones too, as nvme-cli
/// does).
pub fn error_text(entries: &[ErrorLogEntry], device: &str) -> String {
    let rule = ".................\n";
    let mut out = format!(
        "Error Log Entries for device:{device} entries:{}\n{rule}",
        entries.len()
    );
    for (i, e) in used(entries) {
        out.push_str(&format!(" Entry[{i:2}]   \n{rule}"));
        for (label, value, _, _) in error_rows(e) {
            let tabs = if label.len() >= 16 {
                ""
            } else if label.len() >= 8 {
                "\t"
            } else {
                "\t\t"
            };
            out.push_str(&format!("{label}{tabs}: {value}\n"));
        }
        out.push_str(rule);
    }
    out
}

/// `nvme error-log -o json`: `{"errors": [...]}` of every entry read.
pub fn error_json(entries: &[ErrorLogEntry]) -> String {
    let errors: Vec<Json> = used(entries)
        .map(|(_, e)| {
            let mut o = Json::object();
            for (_, _, key, json) in error_rows(e) {
                o.push(key, json);
            }
            o
        })
        .collect();
    let mut o = Json::object();
    o.push("errors", errors);
    o.pretty() + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::testdata::templates;

    fn sample() -> SmartLog {
        let mut s = templates().smart;
        s.critical_warning = 0x2;
        s.temperature = 308u16.to_le_bytes();
        s.available_spare = 97;
        s.data_units_read = 1234u128.to_le_bytes();
        s.host_read_commands = (u64::MAX as u128 + 1).to_le_bytes();
        s.temp_sensor[2] = 300;
        s
    }

    #[test]
    fn smart_lines_are_nvme_clis() {
        let t = smart_text(&sample(), "sim", u32::MAX, false);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "Smart Log for NVME device:sim namespace-id:ffffffff"
        );
        assert_eq!(lines[1], "critical_warning\t\t\t: 0x2");
        assert_eq!(lines[2], "temperature\t\t\t\t: 35°C (308 Kelvin)");
        assert_eq!(lines[3], "available_spare\t\t\t\t: 97%");
        for want in [
            "Data Units Read\t\t\t\t: 1234 (631.81 MB)",
            "Data Units Written\t\t\t: 0 (0.00 B)",
            "host_read_commands\t\t\t: 18446744073709551616",
            "Temperature Sensor 3           : 27°C (300 Kelvin)",
        ] {
            assert!(lines.contains(&want), "{want} missing in\n{t}");
        }
        assert!(
            !t.contains("Temperature Sensor 1"),
            "sensors reading 0 are absent"
        );
        let h = smart_text(&sample(), "sim", u32::MAX, true);
        assert!(h.contains("critical_warning\t\t\t: 0x2\n      Available Spare[0]             : 0\n      Temp. Threshold[1]             : 1\n"), "{h}");
        assert!(
            h.contains("      Volatile mem. backup failed[4] : 0\n"),
            "{h}"
        );
    }

    #[test]
    fn smart_json_is_valid() {
        let v: serde_json::Value =
            serde_json::from_str(&smart_json(&sample(), false)).expect("valid JSON");
        assert_eq!(v["temperature"], 308);
        assert_eq!(v["avail_spare"], 97);
        assert_eq!(v["critical_warning"], 2);
        assert_eq!(v["data_units_read"], "1234", "128-bit counters are strings");
        assert_eq!(v["host_read_commands"], "18446744073709551616");
        assert_eq!(v["temperature_sensor_3"], 300);
        let h: serde_json::Value =
            serde_json::from_str(&smart_json(&sample(), true)).expect("valid JSON");
        assert_eq!(h["critical_warning"]["value"], 2);
        assert_eq!(h["critical_warning"]["temp_threshold"], 1);
        assert_eq!(h["critical_warning"]["available_spare"], 0);
    }

    fn entries() -> Vec<ErrorLogEntry> {
        let mut e = ErrorLogEntry::default();
        (e.error_count, e.sqid, e.cmdid, e.lba, e.nsid) = (7, 1, 0x12, 0x8000, 1);
        e.status_field =
            Status::generic(nvme_host_linux::regs::status::GenericStatus::LbaOutOfRange)
                .with_dnr()
                .to_completion_word(true);
        vec![ErrorLogEntry::default(), e, ErrorLogEntry::default()]
    }

    #[test]
    fn error_log_lists_every_entry() {
        let t = error_text(&entries(), "sim");
        assert_eq!(t.matches("Entry[").count(), 3, "empty entries too: {t}");
        assert!(
            t.starts_with("Error Log Entries for device:sim entries:3\n.................\n Entry[ 0]   \n.................\nerror_count\t: 0\n"),
            "{t}"
        );
        assert!(
            t.contains("status_field\t: 0(Successful Completion)\n"),
            "{t}"
        );
        for want in [
            "error_count\t: 7",
            "sqid\t\t: 1",
            "cmdid\t\t: 0x12",
            "phase_tag\t: 0x1",
            "lba\t\t: 0x8000",
            "trtype_spec_info: 0",
        ] {
            assert!(t.lines().any(|l| l == want), "{want} missing in\n{t}");
        }
        assert!(
            t.contains("status_field\t: 0x4080(LBA Out of Range)\n"),
            "{t}"
        );
        let v: serde_json::Value =
            serde_json::from_str(&error_json(&entries())).expect("valid JSON");
        assert_eq!(v["errors"].as_array().unwrap().len(), 3);
        assert_eq!(v["errors"][1]["lba"], 0x8000);
        assert_eq!(v["errors"][1]["status_field"], 0x4080);
        assert_eq!(v["errors"][0]["error_count"], 0);
    }
}
