//! `list`: one row per active namespace, nvme-cli's columns (Node, SN, Model, Namespace,
//! Usage, Format, FW Rev), the node being the transport name.

use nvme_host_linux::Controller;

use super::text::{binary_scale, si_scale};
use super::Result;
use crate::json::Json;

/// One namespace of one controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListRow {
    /// Transport name (PCI address or `sim`).
    pub node: String,
    /// Serial number.
    pub serial: String,
    /// Model number.
    pub model: String,
    /// Firmware revision.
    pub firmware: String,
    /// Namespace id.
    pub nsid: u32,
    /// Bytes in use (NUSE x block size).
    pub used_bytes: u128,
    /// Size in bytes (NSZE x block size).
    pub size_bytes: u128,
    /// Size in blocks (NSZE).
    pub blocks: u64,
    /// Logical block size in bytes.
    pub block_size: u32,
    /// Metadata bytes per block.
    pub metadata: u16,
}

/// The rows of one controller: Identify Controller and Identify Namespace of each active
/// namespace, read now.
pub fn rows(ctrl: &Controller) -> Result<Vec<ListRow>> {
    let id = ctrl.identify_controller()?;
    let mut rows = Vec::new();
    for ns in ctrl.namespaces() {
        let d = ctrl.identify_namespace(ns.id())?;
        let bs = d.block_size();
        rows.push(ListRow {
            node: ctrl.name(),
            serial: id.serial().to_string(),
            model: id.model().to_string(),
            firmware: id.firmware().to_string(),
            nsid: ns.id(),
            used_bytes: d.nuse as u128 * bs as u128,
            size_bytes: d.nsze as u128 * bs as u128,
            blocks: d.nsze,
            block_size: bs,
            metadata: d.current_format().ms,
        });
    }
    Ok(rows)
}

/// `  1.07  GB /   1.07  GB` (nvme-cli's `%6.2f %2sB / %6.2f %2sB`).
pub fn usage(used: u128, size: u128) -> String {
    let (u, us) = si_scale(used as f64);
    let (s, ss) = si_scale(size as f64);
    format!("{u:6.2} {us:>2}B / {s:6.2} {ss:>2}B")
}

/// `512   B +  0 B` (nvme-cli's `%3.0f %2sB + %2d B`).
pub fn lba_format(block_size: u32, metadata: u16) -> String {
    let (v, s) = binary_scale(block_size as f64);
    format!("{v:3.0} {s:>2}B + {metadata:2} B")
}

/// The table: header, dashes, one line per row.
pub fn format_text(rows: &[ListRow]) -> String {
    let node_w = rows.iter().map(|r| r.node.len()).max().unwrap_or(0).max(16);
    let cols: [(&str, usize); 7] = [
        ("Node", node_w),
        ("SN", 20),
        ("Model", 40),
        ("Namespace", 9),
        ("Usage", 26),
        ("Format", 16),
        ("FW Rev", 8),
    ];
    let header: Vec<String> = cols.iter().map(|(n, w)| format!("{n:<w$}")).collect();
    let dashes: Vec<String> = cols.iter().map(|(_, w)| "-".repeat(*w)).collect();
    let mut out = format!("{}\n{}\n", header.join(" "), dashes.join(" "));
    for r in rows {
        out.push_str(&format!(
            "{:<node_w$} {:<20} {:<40} {:<9} {:<26} {:<16} {:<8}\n",
            r.node,
            r.serial,
            r.model,
            r.nsid,
            usage(r.used_bytes, r.size_bytes),
            lba_format(r.block_size, r.metadata),
            r.firmware
        ));
    }
    out
}

/// `list -o json`: nvme-cli's `{"Devices": [...]}`.
pub fn format_json(rows: &[ListRow]) -> String {
    let devices: Vec<Json> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut d = Json::object();
            d.push("NameSpace", r.nsid)
                .push("DevicePath", r.node.as_str())
                .push("Firmware", r.firmware.as_str())
                .push("Index", i)
                .push("ModelNumber", r.model.as_str())
                .push("SerialNumber", r.serial.as_str())
                .push("UsedBytes", r.used_bytes)
                .push("MaximumLBA", r.blocks)
                .push("PhysicalSize", r.size_bytes)
                .push("SectorSize", r.block_size);
            d
        })
        .collect();
    let mut o = Json::object();
    o.push("Devices", devices);
    o.pretty() + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(nsid: u32) -> ListRow {
        ListRow {
            node: "0000:04:00.0".into(),
            serial: "CTL123".into(),
            model: "QEMU NVMe Ctrl".into(),
            firmware: "8.2.2".into(),
            nsid,
            used_bytes: 1 << 20,
            size_bytes: 1 << 30,
            blocks: 1 << 21,
            block_size: 512,
            metadata: 0,
        }
    }

    #[test]
    fn columns_are_nvme_clis() {
        assert_eq!(usage(16 << 20, 16 << 20), " 16.78  MB /  16.78  MB");
        assert_eq!(usage(0, 1 << 30), "  0.00   B /   1.07  GB");
        assert_eq!(lba_format(512, 0), "512   B +  0 B");
        assert_eq!(lba_format(4096, 8), "  4 KiB +  8 B");
        let t = format_text(&[row(1), row(2)]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(
            lines[0].starts_with("Node             SN                   Model "),
            "{t}"
        );
        assert!(
            lines[0].ends_with("Namespace Usage                      Format           FW Rev  "),
            "{t}"
        );
        assert!(
            lines[1].starts_with("---------------- -------------------- ----"),
            "{t}"
        );
        assert_eq!(
            lines[3],
            "0000:04:00.0     CTL123               QEMU NVMe Ctrl                           2           1.05  MB /   1.07  GB    512   B +  0 B   8.2.2   "
        );
    }

    #[test]
    fn json_is_valid() {
        let v: serde_json::Value =
            serde_json::from_str(&format_json(&[row(1)])).expect("valid JSON");
        assert_eq!(v["Devices"][0]["DevicePath"], "0000:04:00.0");
        assert_eq!(v["Devices"][0]["PhysicalSize"], 1u64 << 30);
    }
}
