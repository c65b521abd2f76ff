//! `get-feature`: nvme-cli's `get-feature:0x07 (Number of Queues), Current value:0x003f003f`
//! line, with `-H` the decoded fields of the features this build knows.

use nvme_host_linux::regs::features::{
    feature_name, fid, Arbitration, FeatureSelect, NumberOfQueues, PowerManagement,
};

use super::text::{celsius, nvme_cli_dump};

/// The SEL value's name as nvme-cli prints it.
pub fn select_name(sel: FeatureSelect) -> &'static str {
    match sel {
        FeatureSelect::Current => "Current",
        FeatureSelect::Default => "Default",
        FeatureSelect::Saved => "Saved",
        FeatureSelect::SupportedCapabilities => "Supported capabilities",
    }
}

/// Parses `-s`: 0-3 or a name (`current`, `default`, `saved`, `supported`).
pub fn parse_select(s: &str) -> Result<FeatureSelect, String> {
    match s.to_ascii_lowercase().as_str() {
        "0" | "current" => Ok(FeatureSelect::Current),
        "1" | "default" => Ok(FeatureSelect::Default),
        "2" | "saved" => Ok(FeatureSelect::Saved),
        "3" | "supported" => Ok(FeatureSelect::SupportedCapabilities),
        _ => Err(format!(
            "'{s}' is not a select value: 0 (current), 1 (default), 2 (saved), 3 (supported capabilities)"
        )),
    }
}

/// Bytes of the data buffer that Get Features returns for `fid` (0: dword 0 only).
pub fn data_len(fid: u8, cdw11: u32) -> usize {
    match fid {
        fid::LBA_RANGE_TYPE | fid::HOST_MEMORY_BUFFER => 4096,
        fid::AUTONOMOUS_POWER_STATE => 256,
        fid::TIMESTAMP => 8,
        fid::HOST_IDENTIFIER if cdw11 & 1 != 0 => 16,
        fid::HOST_IDENTIFIER => 8,
        _ => 0,
    }
}

/// The `get-feature:` line. nvme-cli prints the value with C's `%#0*x`, 10 wide, and 8 wide
/// when it is 0 (C's `#` adds no `0x` to zero): `value:00000000`.
pub fn summary(fid: u8, sel: FeatureSelect, value: u32) -> String {
    let value = if value == 0 {
        "00000000".to_string()
    } else {
        format!("{value:#010x}")
    };
    format!(
        "get-feature:{fid:#04x} ({}), {} value:{value}\n",
        feature_name(fid),
        select_name(sel)
    )
}

/// Supported capabilities (SEL 3) as nvme-cli 2.3 lists them: one line per bit set.
fn capabilities(value: u32) -> String {
    [
        (0, "  Feature is saveable\n"),
        (1, "  Feature is per-namespace\n"),
        (2, "  Feature is changeable\n"),
    ]
    .iter()
    .filter(|(b, _)| value >> b & 1 != 0)
    .map(|(_, l)| *l)
    .collect()
}

fn enabled(on: bool) -> &'static str {
    if on {
        "Enabled"
    } else {
        "Disabled"
    }
}

/// The `-H` decode of a feature value (`None` for features this build does not decode).
pub fn decode(fid: u8, value: u32, data: &[u8]) -> Option<String> {
    let s = match fid {
        fid::ARBITRATION => {
            let a = Arbitration::from_dword(value);
            let ab = if a.ab == 7 { "No limit".into() } else { (1u32 << a.ab).to_string() };
            format!(
                "\tHigh Priority Weight   (HPW): {}\n\tMedium Priority Weight (MPW): {}\n\tLow Priority Weight    (LPW): {}\n\tArbitration Burst       (AB): {ab}\n",
                a.hpw as u32 + 1,
                a.mpw as u32 + 1,
                a.lpw as u32 + 1
            )
        }
        fid::POWER_MANAGEMENT => {
            let p = PowerManagement::from_dword(value);
            format!("\tWorkload Hint (WH): {}\n\tPower State   (PS): {}\n", p.wh, p.ps)
        }
        fid::TEMPERATURE_THRESHOLD => {
            let k = value as u16;
            let kind = if (value >> 20) & 3 == 1 { "Under Temperature Threshold" } else { "Over Temperature Threshold" };
            format!(
                "\tThreshold Type Select         (THSEL): {} - {kind}\n\tThreshold Temperature Select (TMPSEL): {}\n\tTemperature Threshold         (TMPTH): {} C ({k} K)\n",
                (value >> 20) & 3,
                (value >> 16) & 0xf,
                celsius(k)
            )
        }
        fid::ERROR_RECOVERY => format!(
            "\tDeallocated or Unwritten Logical Block Error Enable (DULBE): {}\n\tTime Limited Error Recovery                          (TLER): {} ms\n",
            enabled(value >> 16 & 1 != 0),
            (value & 0xffff) * 100
        ),
        fid::VOLATILE_WRITE_CACHE => format!("\tVolatile Write Cache Enable (WCE): {}\n", enabled(value & 1 != 0)),
        fid::NUMBER_OF_QUEUES => {
            let q = NumberOfQueues::from_dword(value);
            format!(
                "\tNumber of IO Completion Queues Allocated (NCQA): {}\n\tNumber of IO Submission Queues Allocated (NSQA): {}\n",
                q.cq, q.sq
            )
        }
        fid::INTERRUPT_COALESCING => format!(
            "\tAggregation Time     (TIME): {} usec\n\tAggregation Threshold (THR): {}\n",
            ((value >> 8) & 0xff) * 100,
            (value & 0xff) + 1
        ),
        fid::WRITE_ATOMICITY => format!("\tDisable Normal (DN): {}\n", if value & 1 != 0 { "True" } else { "False" }),
        fid::KEEP_ALIVE_TIMER => format!("\tKeep Alive Timeout (KATO) in milliseconds: {value}\n"),
        fid::TIMESTAMP if data.len() >= 8 => {
            let ms = u64::from_le_bytes([data[0], data[1], data[2], data[3], data[4], data[5], 0, 0]);
            format!("\tThe timestamp is : {ms} ms\n\tSynch: {}\n\tOrigin: {}\n", data[6] & 1, (data[6] >> 1) & 7)
        }
        _ => return None,
    };
    Some(s)
}

/// The whole `get-feature` output as nvme-cli prints it: the line, then the capabilities
/// for SEL 3 (with or without `human`), else with `human` the decode, else the data buffer (if the feature has one) as
/// nvme-cli's hex dump.
pub fn format_text(fid: u8, sel: FeatureSelect, value: u32, data: &[u8], human: bool) -> String {
    let mut out = summary(fid, sel, value);
    if sel == FeatureSelect::SupportedCapabilities {
        out.push_str(&capabilities(value));
    } else if human {
        out.extend(decode(fid, value, data));
    } else if !data.is_empty() {
        out.push_str(&nvme_cli_dump(data));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_line_is_nvme_clis() {
        assert_eq!(
            summary(7, FeatureSelect::Current, 0x003f_003f),
            "get-feature:0x07 (Number of Queues), Current value:0x003f003f\n"
        );
        assert_eq!(
            summary(0x81, FeatureSelect::Saved, 0),
            "get-feature:0x81 (Host Identifier), Saved value:00000000\n"
        );
    }

    #[test]
    fn human_decodes() {
        let t = format_text(7, FeatureSelect::Current, 0x001f_003f, &[], true);
        assert!(t.ends_with("\tNumber of IO Completion Queues Allocated (NCQA): 32\n\tNumber of IO Submission Queues Allocated (NSQA): 64\n"), "{t}");
        let a = decode(fid::ARBITRATION, 0x0302_0107, &[]).unwrap();
        assert!(
            a.contains("(HPW): 4\n") && a.contains("(LPW): 2\n") && a.contains("(AB): No limit\n"),
            "{a}"
        );
        let tt = decode(fid::TEMPERATURE_THRESHOLD, 343, &[]).unwrap();
        assert!(tt.contains("(TMPTH): 70 C (343 K)"), "{tt}");
        assert!(decode(0x7f, 1, &[]).is_none());
        let caps = format_text(4, FeatureSelect::SupportedCapabilities, 0b101, &[], false);
        assert!(
            caps.ends_with("value:0x00000005\n  Feature is saveable\n  Feature is changeable\n"),
            "{caps}"
        );
    }

    #[test]
    fn data_features_dump_their_buffer() {
        assert_eq!(data_len(fid::TIMESTAMP, 0), 8);
        assert_eq!(data_len(fid::NUMBER_OF_QUEUES, 0), 0);
        let data = [0xe8, 0x03, 0, 0, 0, 0, 0x03, 0];
        let t = format_text(fid::TIMESTAMP, FeatureSelect::Current, 0, &data, true);
        assert!(
            t.contains("The timestamp is : 1000 ms\n\tSynch: 1\n\tOrigin: 1\n"),
            "{t}"
        );
        assert!(
            !t.contains("0000: e8"),
            "-H decodes instead of dumping: {t}"
        );
        let t = format_text(fid::TIMESTAMP, FeatureSelect::Current, 0, &data, false);
        assert!(t.contains("0000: e8 03 00 00 00 00 03 00"), "{t}");
    }

    #[test]
    fn select_values() {
        assert_eq!(parse_select("2"), Ok(FeatureSelect::Saved));
        assert_eq!(parse_select("Default"), Ok(FeatureSelect::Default));
        assert!(parse_select("9").is_err());
    }
}
