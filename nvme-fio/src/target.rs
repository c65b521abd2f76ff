//! fio's `filename` as a transport id: SPDK's plugin syntax, `trtype=PCIe
//! traddr=0000.04.00.0 ns=1`, where `.` stands for the PCI address's `:` (fio splits file
//! names at `:`).

use nvme_host_linux::{TransportId, TransportKind};

/// A job file's target: the controller (without a namespace) and the namespace, if named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Target {
    /// The controller's transport id (`nsid` cleared: one attachment serves every namespace).
    pub trid: TransportId,
    /// `ns=N`; the controller's first namespace when absent.
    pub nsid: Option<u32>,
}

/// `0000.04.00.0` or `04.00.0` -> `0000:04:00.0` / `04:00.0`: every `.` but the last (the
/// function's) was a `:`. Addresses already written with `:` are left alone.
fn pci_address(v: &str) -> String {
    match v.rfind('.') {
        Some(last) if !v.contains(':') => format!("{}{}", v[..last].replace('.', ":"), &v[last..]),
        _ => v.to_string(),
    }
}

/// Parses a job's `filename`. Errors say what fio's syntax for this engine is.
pub(crate) fn parse(name: &str) -> Result<Target, String> {
    let mut pairs = Vec::new();
    for tok in name.split_whitespace() {
        match tok.split_once(['=', ':']) {
            Some((k, v)) if k.eq_ignore_ascii_case("traddr") => {
                pairs.push(format!("traddr:{}", pci_address(v)))
            }
            Some((k, v)) => pairs.push(format!("{k}:{v}")),
            None => pairs.push(tok.to_string()),
        }
    }
    let mut trid = TransportId::parse(&pairs.join(" ")).map_err(|e| {
        format!(
            "filename '{name}': {e}; write it as 'trtype=PCIe traddr=0000.04.00.0 ns=1' ('.' for \
             the address's ':', which fio reserves) or 'trtype=sim size=64M lbasize=512'"
        )
    })?;
    if matches!(trid.kind, TransportKind::Pcie { traddr: None }) {
        return Err(format!(
            "filename '{name}': trtype=PCIe needs traddr=, e.g. 'trtype=PCIe traddr=0000.04.00.0 ns=1'"
        ));
    }
    let nsid = trid.nsid.take();
    Ok(Target { trid, nsid })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcie_with_dots_for_colons() {
        let t = parse("trtype=PCIe traddr=0000.04.00.0 ns=1").unwrap();
        assert_eq!(t.nsid, Some(1));
        assert_eq!(t.trid.to_string(), "trtype:PCIe traddr:0000:04:00.0");
        let t = parse("trtype=pcie traddr=5e.1f.7").unwrap();
        assert_eq!(t.trid.name(), "0000:5e:1f.7");
        assert_eq!(t.nsid, None);
    }

    #[test]
    fn sim_options_pass_through() {
        let t = parse("trtype=sim size=64M lbasize=4096 ns=1").unwrap();
        let TransportKind::Sim(o) = &t.trid.kind else {
            panic!("not sim: {t:?}")
        };
        assert_eq!((o.size, o.lba_size), (64 << 20, 4096));
        assert_eq!(t.nsid, Some(1));
    }

    #[test]
    fn bad_names_say_how_to_write_them() {
        let e = parse("/dev/nvme0n1").unwrap_err();
        assert!(e.contains("trtype=PCIe traddr=0000.04.00.0"), "{e}");
        let e = parse("trtype=PCIe").unwrap_err();
        assert!(e.contains("needs traddr"), "{e}");
        let e = parse("trtype=sim lbasize=520").unwrap_err();
        assert!(e.contains("512 or 4096"), "{e}");
    }
}
