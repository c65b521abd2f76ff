//! `smart-log` and `error-log`: the SMART / Health Information and Error Information log
//! pages as nvme-cli prints them.

use nvme_host_linux::regs::log::{ErrorLogEntry, SmartLog};
use nvme_host_linux::regs::Status;

use super::text::{alt_hex, celsius, tab_label};
use crate::json::Json;

/// `35 C (308 Kelvin)`.
fn temperature(kelvin: u16) -> String {
    format!("{} C ({kelvin} Kelvin)", celsius(kelvin))
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
        s.critical_warning.into(),
    );
    row("temperature", temperature(t), "temperature", t.into());
    row(
        "available_spare",
        format!("{}%", s.available_spare),
        "avail_spare",
        s.available_spare.into(),
    );
    row(
        "available_spare_threshold",
        format!("{}%", s.available_spare_threshold),
        "spare_thresh",
        s.available_spare_threshold.into(),
    );
    row(
        "percentage_used",
        format!("{}%", s.percentage_used),
        "percent_used",
        s.percentage_used.into(),
    );
    row(
        "endurance group critical warning summary",
        alt_hex(s.endurance_group_critical_warning as u64),
        "endurance_grp_critical_warning_summary",
        s.endurance_group_critical_warning.into(),
    );
    let counters: [(&str, u128); 10] = [
        ("data_units_read", s.data_units_read()),
        ("data_units_written", s.data_units_written()),
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
        row(name, v.to_string(), name, v.into());
    }
    row(
        "Warning Temperature Time",
        s.warning_temp_time.to_string(),
        "warning_temp_time",
        s.warning_temp_time.into(),
    );
    row(
        "Critical Composite Temperature Time",
        s.critical_temp_time.to_string(),
        "critical_comp_time",
        s.critical_temp_time.into(),
    );
    for (i, &k) in s.temp_sensor.iter().enumerate().filter(|(_, &k)| k != 0) {
        let label = format!("Temperature Sensor {}", i + 1);
        row(
            &label,
            temperature(k),
            &format!("temperature_sensor_{}", i + 1),
            k.into(),
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
        row(label, v.to_string(), key, v.into());
    }
    rows
}

/// The `-H` decode of the critical warning byte.
fn critical_warning_detail(cw: u8) -> String {
    let names = [
        "Available Spare",
        "Temp. Threshold",
        "NVM subsystem Reliability",
        "Read-only",
        "Volatile mem. backup failed",
        "Persistent Mem. RO",
    ];
    names
        .iter()
        .enumerate()
        .map(|(b, n)| format!("      [{b}:{b}]:{n:<26}: {}\n", cw >> b & 1))
        .collect()
}

/// `nvme smart-log` output for the log of `nsid` (0xffffffff: the controller) on `device`.
pub fn smart_text(s: &SmartLog, device: &str, nsid: u32, human: bool) -> String {
    let mut out = format!("Smart Log for NVME device:{device} namespace-id:{nsid:x}\n");
    for (label, value, _, _) in smart_rows(s) {
        out.push_str(&format!("{}: {value}\n", tab_label(&label)));
        if human && label == "critical_warning" {
            out.push_str(&critical_warning_detail(s.critical_warning));
        }
    }
    out
}

/// `nvme smart-log -o json`.
pub fn smart_json(s: &SmartLog) -> String {
    let mut o = Json::object();
    for (_, _, key, json) in smart_rows(s) {
        o.push(key, json);
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
    vec![
        (
            "error_count",
            e.error_count.to_string(),
            "error_count",
            e.error_count.into(),
        ),
        ("sqid", e.sqid.to_string(), "sqid", e.sqid.into()),
        ("cmdid", alt_hex(e.cmdid as u64), "cmdid", e.cmdid.into()),
        (
            "status_field",
            format!("{}({status})", alt_hex(status.0 as u64)),
            "status_field",
            status.0.into(),
        ),
        (
            "phase_tag",
            alt_hex((e.status_field & 1) as u64),
            "phase_tag",
            (e.status_field & 1).into(),
        ),
        (
            "parm_err_loc",
            alt_hex(e.parm_error_location as u64),
            "parm_error_location",
            e.parm_error_location.into(),
        ),
        ("lba", alt_hex(e.lba), "lba", e.lba.into()),
        ("nsid", alt_hex(e.nsid as u64), "nsid", e.nsid.into()),
        ("vs", e.vs.to_string(), "vs", e.vs.into()),
        (
            "trtype",
            trtype_name(e.trtype).to_string(),
            "trtype",
            e.trtype.into(),
        ),
        ("cs", alt_hex(e.cs), "cs", e.cs.into()),
        (
            "trtype_spec_info",
            alt_hex(e.trtype_spec_info as u64),
            "trtype_spec_info",
            e.trtype_spec_info.into(),
        ),
    ]
}

/// The entries worth showing: those with a non-zero error count.
fn used(entries: &[ErrorLogEntry]) -> impl Iterator<Item = (usize, &ErrorLogEntry)> {
    entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.error_count != 0)
}

/// `nvme error-log` output: the header, then each entry with a non-zero error count.
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

/// `nvme error-log -o json`: `{"errors": [...]}` of the entries with a non-zero count.
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
        assert_eq!(lines[2], "temperature\t\t\t\t: 35 C (308 Kelvin)");
        assert_eq!(lines[3], "available_spare\t\t\t\t: 97%");
        assert!(lines.contains(&"data_units_read\t\t\t\t: 1234"), "{t}");
        assert!(
            lines.contains(&"host_read_commands\t\t\t: 18446744073709551616"),
            "{t}"
        );
        assert!(
            lines.contains(&"Temperature Sensor 3\t\t\t: 27 C (300 Kelvin)"),
            "{t}"
        );
        assert!(
            !t.contains("Temperature Sensor 1"),
            "sensors reading 0 are absent"
        );
        let h = smart_text(&sample(), "sim", u32::MAX, true);
        assert!(h.contains("critical_warning\t\t\t: 0x2\n      [0:0]:Available Spare           : 0\n      [1:1]:Temp. Threshold           : 1\n"), "{h}");
    }

    #[test]
    fn smart_json_is_valid() {
        let v: serde_json::Value =
            serde_json::from_str(&smart_json(&sample())).expect("valid JSON");
        assert_eq!(v["temperature"], 308);
        assert_eq!(v["avail_spare"], 97);
        assert_eq!(v["data_units_read"], 1234);
        assert_eq!(v["temperature_sensor_3"], 300);
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
    fn error_log_shows_used_entries() {
        let t = error_text(&entries(), "sim");
        assert!(
            t.starts_with(
                "Error Log Entries for device:sim entries:3\n.................\n Entry[ 1]   \n"
            ),
            "{t}"
        );
        assert_eq!(t.matches("Entry[").count(), 1, "{t}");
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
        assert!(t.contains("status_field\t: 0x4080(LBA Out of Range"), "{t}");
        let v: serde_json::Value =
            serde_json::from_str(&error_json(&entries())).expect("valid JSON");
        assert_eq!(v["errors"].as_array().unwrap().len(), 1);
        assert_eq!(v["errors"][0]["lba"], 0x8000);
    }
}
