//! `id-ns`: the Identify Namespace data as nvme-cli prints it.

use nvme_host_linux::regs::identify::{IdentifyNamespace, LbaFormat};

use super::text::{dec, fields_json, hex, hex_string, kv_line, text, Field};
use crate::json::Json;

/// Width of the names in nvme-cli's `id-ns` output (`nsze    : `).
const NAME_WIDTH: usize = 8;

/// NSFEAT bit 4: the optimal performance fields (NPWG..NOWS) are valid.
const NSFEAT_OPTPERF: u8 = 1 << 4;

/// Every field of Identify Namespace before the LBA formats, in nvme-cli's order (NPWG to
/// NOWS only when NSFEAT says they are valid, as nvme-cli does).
pub fn fields(ns: &IdentifyNamespace) -> Vec<Field> {
    let mut f = vec![
        hex("nsze", ns.nsze),
        hex("ncap", ns.ncap),
        hex("nuse", ns.nuse),
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
        dec("nvmcap", u128::from_le_bytes(ns.nvmcap)),
    ];
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
        dec("anagrpid", ns.anagrpid),
        dec("nsattr", ns.nsattr),
        dec("nvmsetid", ns.nvmsetid),
        dec("endgid", ns.endgid),
        text("nguid", hex_string(&ns.nguid)),
        text("eui64", hex_string(&ns.eui64)),
    ]);
    f
}

/// The LBA formats the namespace reports (NLBAF is 0's based).
fn formats(ns: &IdentifyNamespace) -> impl Iterator<Item = (usize, &LbaFormat)> {
    ns.lbaf.iter().enumerate().take(ns.nlbaf as usize + 1)
}

/// One LBA format line: `lbaf  0 : ms:0   lbads:9  rp:0 (in use)`; with `human`, nvme-cli's
/// `-H` wording.
pub fn lbaf_line(i: usize, f: &LbaFormat, in_use: bool, human: bool) -> String {
    let tail = if in_use { " (in use)" } else { "" };
    if human {
        let rp = ["Best", "Better", "Good", "Degraded"][(f.rp & 3) as usize];
        return format!(
            "LBA Format {i:2} : Metadata Size: {:<3} bytes - Data Size: {:<2} bytes - Relative Performance: {:#x} {rp}{tail}\n",
            f.ms,
            f.data_size(),
            f.rp & 3
        );
    }
    format!(
        "lbaf {i:2} : ms:{:<3} lbads:{:<2} rp:{}{tail}\n",
        f.ms,
        f.lbads,
        super::text::alt_hex((f.rp & 3) as u64)
    )
}

/// `nvme id-ns` output: `NVME Identify Namespace N:`, the fields, the LBA formats.
pub fn format_text(nsid: u32, ns: &IdentifyNamespace, human: bool) -> String {
    let mut out = format!("NVME Identify Namespace {nsid}:\n");
    for f in fields(ns) {
        out.push_str(&kv_line(f.name, NAME_WIDTH, &f.value.human()));
    }
    for (i, f) in formats(ns) {
        out.push_str(&lbaf_line(i, f, i == ns.format_index(), human));
    }
    out
}

/// `nvme id-ns -o json`: the fields and `lbafs` (`ms`, `ds`, `rp`).
pub fn format_json(ns: &IdentifyNamespace) -> String {
    let mut o = fields_json(&fields(ns));
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
        assert_eq!(lines[lines.len() - 2], "lbaf  0 : ms:0   lbads:9  rp:0");
        assert_eq!(
            lines[lines.len() - 1],
            "lbaf  1 : ms:8   lbads:12 rp:0x2 (in use)"
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
    }
}
