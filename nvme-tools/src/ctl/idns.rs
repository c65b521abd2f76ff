//! `id-ns`: the Identify Namespace data as nvme-cli prints it.

use nvme_host_linux::regs::identify::{IdentifyNamespace, LbaFormat};

use super::text::{big, dec, fields_json, hex, hex64, hex_string, kv_line, text, Field};
use crate::json::Json;

/// Width of the names in nvme-cli's `id-ns` output (`nsze    : `).
const NAME_WIDTH: usize = 8;

/// NSFEAT bit 4: the optimal performance fields (NPWG..NOWS) are valid.
const NSFEAT_OPTPERF: u8 = 1 << 4;

/// The fields from NSZE to NVMCAP, the same in nvme-cli's text and JSON.
fn head_fields(ns: &IdentifyNamespace) -> Vec<Field> {
    vec![
        hex64("nsze", ns.nsze),
        hex64("ncap", ns.ncap),
        hex64("nuse", ns.nuse),
        hex("nsfeat", ns.nsfeat),
        dec("nlbaf", ns.nlbaf),
        hex("flbas", ns.flbas),
        hex("mc", ns.mc),
        hex("dpc", ns.dpc),
        hex("dps", ns.dps),
        hex("nmic", ns.nmic),
        hex("rescap", ns.rescap),
        hex("fpi", ns.fpi),
        dec("dlfeat", ns.dlfeat),
        dec("nawun", ns.nawun),
        dec("nawupf", ns.nawupf),
        dec("nacwu", ns.nacwu),
        dec("nabsn", ns.nabsn),
        dec("nabo", ns.nabo),
        dec("nabspf", ns.nabspf),
        dec("noiob", ns.noiob),
        big("nvmcap", ns.nvmcap),
    ]
}

/// NPWG to NOWS (only when NSFEAT says they are valid, as nvme-cli does), then the NVMe 2.0
/// copy limits and NULBAF.
fn perf_and_copy_fields(ns: &IdentifyNamespace) -> Vec<Field> {
    let mut f = Vec::new();
    if ns.nsfeat & NSFEAT_OPTPERF != 0 {
        f.extend([
            dec("npwg", ns.npwg),
            dec("npwa", ns.npwa),
            dec("npdg", ns.npdg),
            dec("npda", ns.npda),
            dec("nows", ns.nows),
        ]);
    }
    f.extend([
        dec("mssrl", ns.mssrl),
        dec("mcl", ns.mcl),
        dec("msrc", ns.msrc),
        dec("nulbaf", ns.nulbaf),
    ]);
    f
}

/// Every field of Identify Namespace before the LBA formats, in the order of nvme-cli's
/// text output.
pub fn fields(ns: &IdentifyNamespace) -> Vec<Field> {
    let mut f = head_fields(ns);
    f.extend(perf_and_copy_fields(ns));
    f.extend([
        dec("anagrpid", ns.anagrpid),
        dec("nsattr", ns.nsattr),
        dec("nvmsetid", ns.nvmsetid),
        dec("endgid", ns.endgid),
        text("nguid", hex_string(&ns.nguid)),
        text("eui64", hex_string(&ns.eui64)),
    ]);
    f
}

/// The same fields in the order of nvme-cli's JSON (NSATTR and NVMSETID before NPWG, EUI64
/// before NGUID).
fn json_fields(ns: &IdentifyNamespace) -> Vec<Field> {
    let mut f = head_fields(ns);
    f.extend([dec("nsattr", ns.nsattr), dec("nvmsetid", ns.nvmsetid)]);
    f.extend(perf_and_copy_fields(ns));
    f.extend([
        dec("anagrpid", ns.anagrpid),
        dec("endgid", ns.endgid),
        text("eui64", hex_string(&ns.eui64)),
        text("nguid", hex_string(&ns.nguid)),
    ]);
    f
}

/// The LBA formats the namespace reports (NLBAF is 0's based).
fn formats(ns: &IdentifyNamespace) -> impl Iterator<Item = (usize, &LbaFormat)> {
    ns.lbaf.iter().enumerate().take(ns.nlbaf as usize + 1)
}

/// The LBA formats nvme-cli's text lists: NLBAF + 1 plus the NULBAF unique capability
/// formats (at most the 64 of NVMe 2.0; this structure holds 16).
fn text_formats(ns: &IdentifyNamespace) -> impl Iterator<Item = (usize, &LbaFormat)> {
    let n = ns.nlbaf as usize + 1 + ns.nulbaf as usize;
    ns.lbaf.iter().enumerate().take(n)
}

/// One LBA format line: `lbaf  0 : ms:0   lbads:9  rp:0 (in use)` (nvme-cli 2.3 leaves a
/// space at the end of the others); with `human`, nvme-cli's `-H` wording.
pub fn lbaf_line(i: usize, f: &LbaFormat, in_use: bool, human: bool) -> String {
    let tail = if in_use { "(in use)" } else { "" };
    let rp = super::text::alt_hex(f.rp as u64);
    if human {
        let perf = match f.rp {
            3 => "Degraded",
            2 => "Good",
            1 => "Better",
            _ => "Best",
        };
        return format!(
            "LBA Format {i:2} : Metadata Size: {:<3} bytes - Data Size: {:<2} bytes - Relative Performance: {rp} {perf} {tail}\n",
            f.ms,
            f.data_size(),
        );
    }
    format!(
        "lbaf {i:2} : ms:{:<3} lbads:{:<2} rp:{rp} {tail}\n",
        f.ms, f.lbads,
    )
}

/// `nvme id-ns` output: `NVME Identify Namespace N:`, the fields, the LBA formats.
pub fn format_text(nsid: u32, ns: &IdentifyNamespace, human: bool) -> String {
    let mut out = format!("NVME Identify Namespace {nsid}:\n");
    for f in fields(ns) {
        if f.name == "nsattr" {
            // nvme-cli 2.3 aligns this one with a tab.
            out.push_str(&format!("nsattr\t: {}\n", f.value.human()));
        } else {
            out.push_str(&kv_line(f.name, NAME_WIDTH, &f.value.human()));
        }
    }
    for (i, f) in text_formats(ns) {
        out.push_str(&lbaf_line(i, f, i == ns.format_index(), human));
    }
    out
}

/// `nvme id-ns -o json`: the fields and `lbafs` (`ms`, `ds`, `rp`).
pub fn format_json(ns: &IdentifyNamespace) -> String {
    let mut o = fields_json(&json_fields(ns));
    let lbafs: Vec<Json> = formats(ns)
        .map(|(_, f)| {
            let mut l = Json::object();
            l.push("ms", f.ms).push("ds", f.lbads).push("rp", f.rp);
            l
        })
        .collect();
    o.push("lbafs", lbafs);
    o.pretty() + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::testdata::templates;

    fn sample() -> IdentifyNamespace {
        let mut ns = templates().ns;
        ns.nsze = 0x8000;
        ns.ncap = 0x8000;
        ns.nuse = 0;
        ns.nsfeat = 0;
        ns.nlbaf = 1;
        ns.flbas = 1;
        ns.lbaf[0] = LbaFormat {
            ms: 0,
            lbads: 9,
            rp: 0,
        };
        ns.lbaf[1] = LbaFormat {
            ms: 8,
            lbads: 12,
            rp: 2,
        };
        ns.eui64 = [0x11, 0x22, 0, 0, 0, 0, 0, 0xff];
        ns
    }

    #[test]
    fn text_lines_are_nvme_clis() {
        let t = format_text(3, &sample(), false);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "NVME Identify Namespace 3:");
        assert_eq!(lines[1], "nsze    : 0x8000");
        assert_eq!(lines[3], "nuse    : 0");
        assert!(lines.contains(&"eui64   : 11220000000000ff"), "{t}");
        assert!(!t.contains("npwg"), "NPWG only with NSFEAT bit 4");
        assert_eq!(lines[lines.len() - 2], "lbaf  0 : ms:0   lbads:9  rp:0 ");
        assert_eq!(
            lines[lines.len() - 1],
            "lbaf  1 : ms:8   lbads:12 rp:0x2 (in use)"
        );
        for want in ["mssrl   : 0", "mcl     : 0", "nulbaf  : 0", "nsattr\t: 0"] {
            assert!(lines.contains(&want), "{want} missing in\n{t}");
        }
        let mut ns = sample();
        ns.nulbaf = 1;
        ns.mcl = 4096;
        let t = format_text(3, &ns, false);
        assert!(t.contains("\nmcl     : 4096\n"), "{t}");
        assert!(
            t.ends_with("lbaf  2 : ms:0   lbads:0  rp:0 \n"),
            "NULBAF formats listed: {t}"
        );
        let mut ns = sample();
        ns.nsfeat = 0x10;
        assert!(format_text(3, &ns, false).contains("\nnpwg    : 0\n"));
    }

    #[test]
    fn human_lba_formats() {
        let t = format_text(1, &sample(), true);
        assert!(
            t.contains("LBA Format  1 : Metadata Size: 8   bytes - Data Size: 4096 bytes - Relative Performance: 0x2 Good (in use)\n"),
            "{t}"
        );
    }

    #[test]
    fn json_is_valid() {
        let v: serde_json::Value =
            serde_json::from_str(&format_json(&sample())).expect("valid JSON");
        assert_eq!(v["nsze"], 0x8000);
        assert_eq!(v["eui64"], "11220000000000ff");
        assert_eq!(v["lbafs"][1]["ds"], 12);
        assert_eq!(v["lbafs"].as_array().unwrap().len(), 2);
        assert_eq!(
            v["nvmcap"], "1048576",
            "128-bit fields are strings in nvme-cli's JSON"
        );
        assert_eq!(v["mssrl"], 0);
        assert_eq!(v["nulbaf"], 0);
    }
}
