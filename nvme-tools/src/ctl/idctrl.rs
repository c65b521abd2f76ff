//! `id-ctrl`: the Identify Controller data as nvme-cli prints it (`-H` decodes a few
//! bitfields, `-o json` as nvme-cli's JSON).

use nvme_host_linux::regs::identify::{IdentifyController, PowerStateDescriptor};

use super::text::{
    alt_hex, big, dec, fields_json, hex, json_int, kv_line, raw_ascii, text, uuid_string, Field,
};
use crate::json::Json;

/// Width of the names in nvme-cli's `id-ctrl` output (`vid       : `).
const NAME_WIDTH: usize = 10;

/// The fabrics fields (bytes 1792..1806 of the structure, in `nvmeof`).
fn fabrics_fields(id: &IdentifyController) -> Vec<Field> {
    let b = &id.nvmeof;
    let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    vec![
        dec("ioccsz", u32_at(0)),
        dec("iorcsz", u32_at(4)),
        dec("icdoff", u16_at(8)),
        hex("fcatt", b[10]),
        dec("msdbd", b[11]),
        dec("ofcs", u16_at(12)),
    ]
}

/// The IEEE OUI as nvme-cli shows it (most significant byte first).
fn ieee(id: &IdentifyController) -> u32 {
    u32::from_le_bytes([id.ieee[0], id.ieee[1], id.ieee[2], 0])
}

/// Every field of Identify Controller before the power states, in nvme-cli's order.
pub fn fields(id: &IdentifyController) -> Vec<Field> {
    let mut f = vec![
        hex("vid", id.vid),
        hex("ssvid", id.ssvid),
        text("sn", raw_ascii(&id.sn)),
        text("mn", raw_ascii(&id.mn)),
        text("fr", raw_ascii(&id.fr)),
        dec("rab", id.rab),
        Field {
            name: "ieee",
            value: super::text::Value::Text(format!("{:06x}", ieee(id))),
        },
        hex("cmic", id.cmic),
        dec("mdts", id.mdts),
        hex("cntlid", id.cntlid),
        hex("ver", id.ver),
        hex("rtd3r", id.rtd3r),
        hex("rtd3e", id.rtd3e),
        hex("oaes", id.oaes),
        hex("ctratt", id.ctratt),
        hex("rrls", id.rrls),
        dec("cntrltype", id.cntrltype),
        text("fguid", uuid_string(&id.fguid)),
        dec("crdt1", id.crdt[0]),
        dec("crdt2", id.crdt[1]),
        dec("crdt3", id.crdt[2]),
        dec("nvmsr", id.nvmsr),
        dec("vwci", id.vwci),
        dec("mec", id.mec),
    ];
    f.extend(admin_fields(id));
    f.extend(nvm_fields(id));
    f.push(text("subnqn", raw_ascii(&id.subnqn)));
    f.extend(fabrics_fields(id));
    f
}

fn admin_fields(id: &IdentifyController) -> Vec<Field> {
    vec![
        hex("oacs", id.oacs),
        dec("acl", id.acl),
        dec("aerl", id.aerl),
        hex("frmw", id.frmw),
        hex("lpa", id.lpa),
        dec("elpe", id.elpe),
        dec("npss", id.npss),
        hex("avscc", id.avscc),
        hex("apsta", id.apsta),
        dec("wctemp", id.wctemp),
        dec("cctemp", id.cctemp),
        dec("mtfa", id.mtfa),
        dec("hmpre", id.hmpre),
        dec("hmmin", id.hmmin),
        big("tnvmcap", id.tnvmcap),
        big("unvmcap", id.unvmcap),
        hex("rpmbs", id.rpmbs),
        dec("edstt", id.edstt),
        dec("dsto", id.dsto),
        dec("fwug", id.fwug),
        dec("kas", id.kas),
        hex("hctma", id.hctma),
        dec("mntmt", id.mntmt),
        dec("mxtmt", id.mxtmt),
        hex("sanicap", id.sanicap),
        dec("hmminds", id.hmminds),
        dec("hmmaxd", id.hmmaxd),
        dec("nsetidmax", id.nsetidmax),
        dec("endgidmax", id.endgidmax),
        dec("anatt", id.anatt),
        dec("anacap", id.anacap),
        dec("anagrpmax", id.anagrpmax),
        dec("nanagrpid", id.nanagrpid),
        dec("pels", id.pels),
        dec("domainid", id.domainid),
        big("megcap", id.megcap),
    ]
}

fn nvm_fields(id: &IdentifyController) -> Vec<Field> {
    vec![
        hex("sqes", id.sqes),
        hex("cqes", id.cqes),
        dec("maxcmd", id.maxcmd),
        dec("nn", id.nn),
        hex("oncs", id.oncs),
        hex("fuses", id.fuses),
        hex("fna", id.fna),
        hex("vwc", id.vwc),
        dec("awun", id.awun),
        dec("awupf", id.awupf),
        dec("icsvscc", id.icsvscc),
        dec("nwpc", id.nwpc),
        dec("acwu", id.acwu),
        hex("ocfs", id.ocfs),
        hex("sgls", id.sgls),
        dec("mnan", id.mnan),
        big("maxdna", id.maxdna),
        dec("maxcna", id.maxcna),
    ]
}

/// A power value with its scale (bits 7:6 of IPS / APWS): `-` when not reported.
fn scaled_power(power: u16, scale_byte: u8) -> String {
    match scale_byte >> 6 {
        0 => "-".into(),
        1 => format!("{}.{:04}W", power / 10000, power % 10000),
        2 => format!("{}.{:02}W", power / 100, power % 100),
        _ => "reserved".into(),
    }
}

/// The active power workload (APWS bits 2:0) in nvme-cli's words.
fn workload(apws: u8) -> &'static str {
    match apws & 7 {
        0 => "-",
        1 => "1MiB 32 RW, 30s idle",
        2 => "80K 128KiB SW",
        _ => "reserved",
    }
}

/// One power state descriptor, three lines, as nvme-cli 2.3 prints it.
pub fn power_state(i: usize, ps: &PowerStateDescriptor) -> String {
    let mp = if ps.flags & 1 != 0 {
        format!("{}.{:04}W", ps.mp / 10000, ps.mp % 10000)
    } else {
        format!("{}.{:02}W", ps.mp / 100, ps.mp % 100)
    };
    let non = if ps.flags & 2 != 0 { "non-" } else { "" };
    let pad = " ".repeat(12);
    format!(
        "ps   {i:4} : mp:{mp} {non}operational enlat:{} exlat:{} rrt:{} rrl:{}\n{pad}rwt:{} rwl:{} idle_power:{} active_power:{}\n{pad}active_power_workload:{}\n",
        ps.enlat,
        ps.exlat,
        ps.rrt,
        ps.rrl,
        ps.rwt,
        ps.rwl,
        scaled_power(ps.idlp, ps.ips),
        scaled_power(ps.actp, ps.apw_aps),
        workload(ps.apw_aps),
    )
}

/// One decoded bit range: `  [hi:lo] : value\tdescription`.
fn bits(v: u64, hi: u32, lo: u32, desc: impl AsRef<str>) -> String {
    let width = hi - lo + 1;
    let val = (v >> lo) & ((1u64 << width) - 1);
    format!("  [{hi}:{lo}] : {}\t{}\n", alt_hex(val), desc.as_ref())
}

/// A flag's line: `<name> Supported` or `<name> Not Supported`.
fn flag(v: u64, bit: u32, name: &str) -> String {
    let sup = if v >> bit & 1 != 0 {
        "Supported"
    } else {
        "Not Supported"
    };
    bits(v, bit, bit, format!("{name} {sup}"))
}

/// The `-H` decode printed after a field, for the fields that have one.
pub fn human_detail(name: &str, id: &IdentifyController) -> Option<String> {
    let s = match name {
        "cmic" => {
            let v = id.cmic as u64;
            let yes = |b: u32, y: &str, n: &str| {
                if v >> b & 1 != 0 {
                    y.to_string()
                } else {
                    n.to_string()
                }
            };
            [
                bits(v, 3, 3, yes(3, "ANA supported", "ANA not supported")),
                bits(v, 2, 2, yes(2, "SR-IOV", "PCI")),
                bits(v, 1, 1, yes(1, "Multi Controller", "Single Controller")),
                bits(v, 0, 0, yes(0, "Multi Port", "Single Port")),
            ]
            .concat()
        }
        "oacs" => {
            let v = id.oacs as u64;
            [
                flag(v, 9, "Get LBA Status Capability"),
                flag(v, 8, "Doorbell Buffer Config"),
                flag(v, 7, "Virtualization Management"),
                flag(v, 6, "NVMe-MI Send and Receive"),
                flag(v, 5, "Directives"),
                flag(v, 4, "Device Self-test"),
                flag(v, 3, "NS Management and Attachment"),
                flag(v, 2, "FW Commit and Download"),
                flag(v, 1, "Format NVM"),
                flag(v, 0, "Security Send and Receive"),
            ]
            .concat()
        }
        "frmw" => {
            let v = id.frmw as u64;
            let ro = if v & 1 != 0 {
                "Firmware Slot 1 Read-Only"
            } else {
                "Firmware Slot 1 Read/Write"
            };
            [
                flag(v, 4, "Firmware Activate Without Reset"),
                bits(v, 3, 1, "Number of Firmware Slots"),
                bits(v, 0, 0, ro),
            ]
            .concat()
        }
        "lpa" => {
            let v = id.lpa as u64;
            [
                flag(v, 4, "Persistent Event log"),
                flag(v, 3, "Telemetry host/controller initiated log page"),
                flag(v, 2, "Extended data for Get Log Page"),
                flag(v, 1, "Command Effects Log Page"),
                flag(v, 0, "SMART/Health Log Page per NS"),
            ]
            .concat()
        }
        "sqes" | "cqes" => {
            let (v, q) = if name == "sqes" {
                (id.sqes, "SQ")
            } else {
                (id.cqes, "CQ")
            };
            let v = v as u64;
            [
                bits(
                    v,
                    7,
                    4,
                    format!("Max {q} Entry Size ({})", 1u32 << (v >> 4)),
                ),
                bits(
                    v,
                    3,
                    0,
                    format!("Min {q} Entry Size ({})", 1u32 << (v & 0xf)),
                ),
            ]
            .concat()
        }
        "oncs" => {
            let v = id.oncs as u64;
            [
                flag(v, 7, "Verify"),
                flag(v, 6, "Timestamp"),
                flag(v, 5, "Reservations"),
                flag(v, 4, "Save and Select"),
                flag(v, 3, "Write Zeroes"),
                flag(v, 2, "Data Set Management"),
                flag(v, 1, "Write Uncorrectable"),
                flag(v, 0, "Compare"),
            ]
            .concat()
        }
        "vwc" => {
            let v = id.vwc as u64;
            let present = if v & 1 != 0 {
                "Volatile Write Cache Present"
            } else {
                "Volatile Write Cache Not Present"
            };
            bits(v, 0, 0, present)
        }
        _ => return None,
    };
    Some(s + "\n")
}

/// `nvme id-ctrl` output: `NVME Identify Controller:`, one `name : value` line per field
/// (with `-H`, decoded bitfields under some), then the power states.
pub fn format_text(id: &IdentifyController, human: bool) -> String {
    let mut out = String::from("NVME Identify Controller:\n");
    for f in fields(id) {
        out.push_str(&kv_line(f.name, NAME_WIDTH, &f.value.human()));
        if human {
            out.extend(human_detail(f.name, id));
        }
    }
    for (i, ps) in id.psd.iter().enumerate().take(id.npss as usize + 1) {
        out.push_str(&power_state(i, ps));
    }
    out
}

/// `nvme id-ctrl -o json`: the fields (the IEEE OUI as a number; `subnqn` only when it is
/// not empty, as nvme-cli does) and `psds`.
pub fn format_json(id: &IdentifyController) -> String {
    let mut f = fields(id);
    f.retain(|f| f.name != "subnqn" || f.value != super::text::Value::Text(String::new()));
    let mut o = fields_json(&f);
    if let Json::Obj(members) = &mut o {
        if let Some(m) = members.iter_mut().find(|(k, _)| k == "ieee") {
            m.1 = json_int(ieee(id));
        }
    }
    let psds: Vec<Json> = id
        .psd
        .iter()
        .take(id.npss as usize + 1)
        .map(|ps| {
            let mut p = Json::object();
            p.push("max_power", ps.mp)
                .push("flags", ps.flags)
                .push("entry_lat", json_int(ps.enlat))
                .push("exit_lat", json_int(ps.exlat))
                .push("read_tput", ps.rrt)
                .push("read_lat", ps.rrl)
                .push("write_tput", ps.rwt)
                .push("write_lat", ps.rwl)
                .push("idle_power", ps.idlp)
                .push("idle_scale", ps.ips >> 6)
                .push("active_power", ps.actp)
                .push("active_power_work", ps.apw_aps & 7)
                .push("active_scale", ps.apw_aps >> 6);
            p
        })
        .collect();
    o.push("psds", psds);
    o.pretty() + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::testdata::templates;
    use nvme_host_linux::regs::identify::fill_ascii;

    fn sample() -> IdentifyController {
        let mut id = templates().ctrl;
        id.vid = 0x1b36;
        fill_ascii(&mut id.sn, "CTL123");
        id.ieee = [0x00, 0x54, 0x52];
        id.ver = 0x0001_0400;
        id.oacs = 0x000a;
        id.sqes = 0x66;
        id.npss = 0;
        id.psd[0].mp = 2500;
        id.psd[0].flags = 0;
        id.psd[0].enlat = 16;
        id.psd[0].exlat = 4;
        id
    }

    #[test]
    fn text_lines_are_nvme_clis() {
        let t = format_text(&sample(), false);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "NVME Identify Controller:");
        assert_eq!(lines[1], "vid       : 0x1b36");
        assert_eq!(lines[3], "sn        : CTL123              ");
        for want in [
            "ieee      : 525400",
            "ver       : 0x10400",
            "oacs      : 0xa",
            "sqes      : 0x66",
            "ioccsz    : 0",
        ] {
            assert!(lines.contains(&want), "{want} missing in\n{t}");
        }
        assert_eq!(
            lines[lines.len() - 3],
            "ps      0 : mp:25.00W operational enlat:16 exlat:4 rrt:0 rrl:0"
        );
        assert_eq!(
            lines[lines.len() - 2],
            "            rwt:0 rwl:0 idle_power:- active_power:-"
        );
        assert_eq!(
            lines[lines.len() - 1],
            "            active_power_workload:-"
        );
        for want in [
            "nvmsr     : 0",
            "mec       : 0",
            "domainid  : 0",
            "megcap    : 0",
            "icsvscc   : 0",
            "ocfs      : 0",
            "maxdna    : 0",
            "maxcna    : 0",
            "fcatt     : 0",
        ] {
            assert!(lines.contains(&want), "{want} missing in\n{t}");
        }
        assert!(!t.contains("  [1:1]"), "no decode without -H");
    }

    #[test]
    fn human_decodes_bitfields() {
        let t = format_text(&sample(), true);
        assert!(
            t.contains("oacs      : 0xa\n  [9:9] : 0\tGet LBA Status Capability Not Supported\n"),
            "{t}"
        );
        assert!(
            t.contains("  [3:3] : 0x1\tNS Management and Attachment Supported\n"),
            "{t}"
        );
        assert!(t.contains("  [1:1] : 0x1\tFormat NVM Supported\n"), "{t}");
        assert!(
            t.contains(
                "  [7:4] : 0x6\tMax SQ Entry Size (64)\n  [3:0] : 0x6\tMin SQ Entry Size (64)\n"
            ),
            "{t}"
        );
    }

    #[test]
    fn json_is_valid_and_numeric() {
        let v: serde_json::Value =
            serde_json::from_str(&format_json(&sample())).expect("valid JSON");
        assert_eq!(v["vid"], 0x1b36);
        assert_eq!(v["sn"], "CTL123              ");
        assert_eq!(v["ieee"], 0x525400);
        assert_eq!(v["psds"].as_array().unwrap().len(), 1);
        assert_eq!(v["psds"][0]["max_power"], 2500);
        assert_eq!(v["psds"][0]["active_power_work"], 0);
        assert_eq!(
            v["tnvmcap"], "1048576",
            "128-bit fields are strings in nvme-cli's JSON"
        );
        let mut id = sample();
        id.maxdna = (1u128 << 70).to_le_bytes();
        id.sgls = 0x8000_0001;
        let nqn = b"nqn.2019-08.org.qemu:deadbeef";
        id.subnqn = [0; 256];
        id.subnqn[..nqn.len()].copy_from_slice(nqn);
        let v: serde_json::Value = serde_json::from_str(&format_json(&id)).unwrap();
        assert_eq!(v["maxdna"], (1u128 << 70).to_string());
        assert_eq!(
            v["sgls"], 0x8000_0001u32 as i32,
            "json-c's int32, as nvme-cli 2.3"
        );
        assert_eq!(v["subnqn"], "nqn.2019-08.org.qemu:deadbeef");
        id.subnqn = [0; 256];
        let v: serde_json::Value = serde_json::from_str(&format_json(&id)).unwrap();
        assert!(v.get("subnqn").is_none(), "an empty subnqn is left out");
        assert!(v.get("ioccsz").is_some());
    }

    #[test]
    fn power_scales() {
        let mut ps = sample().psd[0];
        ps.flags = 3;
        ps.mp = 12345;
        ps.idlp = 500;
        ps.ips = 2 << 6;
        ps.apw_aps = (1 << 6) | 2;
        ps.actp = 15000;
        let p = power_state(1, &ps);
        assert!(
            p.starts_with("ps      1 : mp:1.2345W non-operational"),
            "{p}"
        );
        assert!(p.contains("idle_power:5.00W active_power:1.5000W\n"), "{p}");
        assert!(p.ends_with("active_power_workload:80K 128KiB SW\n"), "{p}");
    }
}
