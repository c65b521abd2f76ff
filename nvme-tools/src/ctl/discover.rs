//! `discover`: the Discovery Log Page in nvme-cli's `nvme discover` layout (text: a
//! header line, then one block per entry; JSON: `genctr` and `records`).

use nvme_host_linux::regs::fabrics::{
    AddressFamily, DiscoveryLogEntry, SecureChannel, SubsystemType, TcpSecurityType, TransportType,
    Treq,
};
use nvme_host_linux::tcp::DiscoveryLog;

use crate::json::Json;

fn trtype(e: &DiscoveryLogEntry) -> String {
    match e.transport() {
        Some(TransportType::Rdma) => "rdma".into(),
        Some(TransportType::FibreChannel) => "fc".into(),
        Some(TransportType::Tcp) => "tcp".into(),
        Some(TransportType::Loop) => "loop".into(),
        None => format!("unrecognized ({})", e.trtype),
    }
}

fn adrfam(e: &DiscoveryLogEntry) -> String {
    match e.address_family() {
        Some(AddressFamily::Ipv4) => "ipv4".into(),
        Some(AddressFamily::Ipv6) => "ipv6".into(),
        Some(AddressFamily::InfiniBand) => "infiniband".into(),
        Some(AddressFamily::FibreChannel) => "fibre-channel".into(),
        Some(AddressFamily::Loop) => "pci".into(),
        None => format!("unrecognized ({})", e.adrfam),
    }
}

fn subtype(e: &DiscoveryLogEntry) -> String {
    match e.subsystem_type() {
        Some(SubsystemType::Referral) => "discovery subsystem referral".into(),
        Some(SubsystemType::Nvme) => "nvme subsystem".into(),
        Some(SubsystemType::CurrentDiscovery) => "current discovery subsystem".into(),
        None => format!("unrecognized ({})", e.subtype),
    }
}

fn treq(e: &DiscoveryLogEntry) -> String {
    let t = Treq(e.treq);
    let mut s = match t.secure_channel() {
        SecureChannel::NotSpecified => "not specified",
        SecureChannel::Required => "required",
        SecureChannel::NotRequired => "not required",
        SecureChannel::Reserved => "reserved",
    }
    .to_string();
    if t.sq_flow_control_disable() {
        s.push_str(", sq flow control disable supported");
    }
    s
}

fn eflags(e: &DiscoveryLogEntry) -> String {
    let names = [
        (
            DiscoveryLogEntry::EFLAGS_EPCSD,
            "explicit discovery connections",
        ),
        (
            DiscoveryLogEntry::EFLAGS_DUPRETINFO,
            "duplicate discovery information",
        ),
        (DiscoveryLogEntry::EFLAGS_NCC, "no cdc connectivity"),
    ];
    let set: Vec<&str> = names
        .iter()
        .filter(|(bit, _)| e.eflags & bit != 0)
        .map(|(_, n)| *n)
        .collect();
    if set.is_empty() {
        "none".into()
    } else {
        set.join(", ")
    }
}

fn sectype(e: &DiscoveryLogEntry) -> String {
    match TcpSecurityType::from_u8(e.tsas[0]) {
        Some(TcpSecurityType::None) => "none".into(),
        Some(TcpSecurityType::Tls12) => "tls1.2".into(),
        Some(TcpSecurityType::Tls13) => "tls1.3".into(),
        None => format!("unrecognized ({})", e.tsas[0]),
    }
}

/// The text nvme-cli prints for a discovery log.
pub fn format_text(log: &DiscoveryLog) -> String {
    let mut s = format!(
        "\nDiscovery Log Number of Records {}, Generation counter {}\n",
        log.entries.len(),
        log.genctr
    );
    for (i, e) in log.entries.iter().enumerate() {
        s.push_str(&format!("=====Discovery Log Entry {i}======\n"));
        s.push_str(&format!("trtype:  {}\n", trtype(e)));
        s.push_str(&format!("adrfam:  {}\n", adrfam(e)));
        s.push_str(&format!("subtype: {}\n", subtype(e)));
        s.push_str(&format!("treq:    {}\n", treq(e)));
        s.push_str(&format!("portid:  {}\n", e.portid));
        s.push_str(&format!("trsvcid: {}\n", e.trsvcid()));
        s.push_str(&format!("subnqn:  {}\n", e.subnqn()));
        s.push_str(&format!("traddr:  {}\n", e.traddr()));
        s.push_str(&format!("eflags:  {}\n", eflags(e)));
        if e.transport() == Some(TransportType::Tcp) {
            s.push_str(&format!("sectype: {}\n", sectype(e)));
        }
    }
    s
}

/// The JSON nvme-cli prints for a discovery log (`-o json`).
pub fn format_json(log: &DiscoveryLog) -> String {
    let records: Vec<Json> = log
        .entries
        .iter()
        .map(|e| {
            let mut r = Json::object();
            r.push("trtype", trtype(e))
                .push("adrfam", adrfam(e))
                .push("subtype", subtype(e))
                .push("treq", treq(e))
                .push("portid", e.portid)
                .push("trsvcid", e.trsvcid())
                .push("subnqn", e.subnqn())
                .push("traddr", e.traddr())
                .push("eflags", eflags(e));
            if e.transport() == Some(TransportType::Tcp) {
                r.push("sectype", sectype(e));
            }
            r
        })
        .collect();
    let mut o = Json::object();
    o.push("genctr", log.genctr).push("records", records);
    o.pretty() + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use nvme_host_linux::regs::fabrics::DISCOVERY_NQN;
    use nvme_host_linux::regs::identify::fill_ascii;

    fn entry(subtype: u8, treq: u8, subnqn: &str) -> DiscoveryLogEntry {
        let mut e = DiscoveryLogEntry {
            trtype: 3,
            adrfam: 1,
            subtype,
            treq,
            portid: 1,
            ..Default::default()
        };
        fill_ascii(&mut e.trsvcid, "4420");
        fill_ascii(&mut e.traddr, "127.0.0.1");
        e.subnqn[..subnqn.len()].copy_from_slice(subnqn.as_bytes());
        e
    }

    #[test]
    fn text_as_nvme_cli_prints_it() {
        let log = DiscoveryLog {
            genctr: 8,
            recfmt: 0,
            entries: vec![entry(3, 0x4, DISCOVERY_NQN), entry(2, 0x2, "disk1")],
        };
        let want = "
Discovery Log Number of Records 2, Generation counter 8
=====Discovery Log Entry 0======
trtype:  tcp
adrfam:  ipv4
subtype: current discovery subsystem
treq:    not specified, sq flow control disable supported
portid:  1
trsvcid: 4420
subnqn:  nqn.2014-08.org.nvmexpress.discovery
traddr:  127.0.0.1
eflags:  none
sectype: none
=====Discovery Log Entry 1======
trtype:  tcp
adrfam:  ipv4
subtype: nvme subsystem
treq:    not required
portid:  1
trsvcid: 4420
subnqn:  disk1
traddr:  127.0.0.1
eflags:  none
sectype: none
";
        assert_eq!(format_text(&log), want);
        let j = format_json(&log);
        assert!(
            j.contains("\"genctr\" : 8") || j.contains("\"genctr\": 8"),
            "{j}"
        );
        assert!(j.contains("\"subnqn\"") && j.contains("disk1"), "{j}");
        let mut odd = entry(9, 3, "x");
        odd.eflags = 3;
        odd.tsas[0] = 2;
        odd.trtype = 3;
        let t = format_text(&DiscoveryLog {
            genctr: 1,
            recfmt: 0,
            entries: vec![odd],
        });
        assert!(t.contains("subtype: unrecognized (9)"), "{t}");
        assert!(t.contains("treq:    reserved"), "{t}");
        assert!(
            t.contains("eflags:  explicit discovery connections, duplicate discovery information"),
            "{t}"
        );
        assert!(t.contains("sectype: tls1.3"), "{t}");
    }
}
