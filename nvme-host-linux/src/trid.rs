//! Transport identifiers in SPDK's form: `trtype:PCIe traddr:0000:04:00.0 ns:1`,
//! `trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420 subnqn:nqn.2014-08.org.example:disk1`.
//!
//! Pairs are separated by whitespace; each is `key:value` or `key=value` (the first `:` or
//! `=` separates, so PCI addresses keep their colons). Keys and the `trtype` value are
//! case-insensitive.

use std::fmt;

/// A parsed transport identifier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportId {
    /// Which transport.
    pub kind: TransportKind,
    /// `ns:N`: the namespace a tool should use (all active namespaces when absent).
    pub nsid: Option<u32>,
}

/// The transports this build knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransportKind {
    /// `trtype:PCIe`: a controller bound to vfio-pci; `None` = every such controller.
    Pcie {
        /// Normalised PCI address `dddd:bb:dd.f`.
        traddr: Option<PciAddress>,
    },
    /// `trtype:sim`: the built-in software controller.
    Sim(SimOptions),
    /// `trtype:TCP`: an NVMe/TCP controller.
    Tcp(TcpOptions),
}

/// Options of an NVMe/TCP controller: `adrfam:IPv4|IPv6 traddr:ADDR trsvcid:PORT
/// subnqn:NQN hostnqn:NQN hdgst:0|1 ddgst:0|1`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpOptions {
    /// The controller's address and port (`traddr`, `trsvcid`; port 4420 when absent).
    pub addr: std::net::SocketAddr,
    /// `subnqn`: the subsystem (absent: only discovery is possible).
    pub subnqn: Option<String>,
    /// `hostnqn`: this host's NQN (absent: one derived from the host id).
    pub hostnqn: Option<String>,
    /// `hdgst:1`: ask for header digests (CRC32C).
    pub header_digest: bool,
    /// `ddgst:1`: ask for data digests (CRC32C).
    pub data_digest: bool,
}

impl TcpOptions {
    /// The subsystem NQN, or an error saying that `subnqn:` is needed and how to find it.
    pub fn subsystem(&self) -> Result<&str, String> {
        self.subnqn.as_deref().ok_or_else(|| {
            format!(
                "missing subnqn: trtype:TCP traddr:{} trsvcid:{} needs subnqn:<NQN> to reach a subsystem; `nvmectl discover -r 'trtype:TCP traddr:{} trsvcid:{}'` lists them",
                self.addr.ip(),
                self.addr.port(),
                self.addr.ip(),
                self.addr.port()
            )
        })
    }
}

/// Checks an NQN's length and characters (`what`: the key it came from).
fn check_nqn(what: &str, v: &str) -> Result<(), String> {
    if v.len() > nvme_regs::fabrics::NQN_MAX {
        return Err(format!(
            "bad {what} '{v}': an NQN has at most {} bytes",
            nvme_regs::fabrics::NQN_MAX
        ));
    }
    if !v.is_ascii() || v.bytes().any(|b| b.is_ascii_control()) {
        return Err(format!(
            "bad {what} '{v}': an NQN is printable ASCII (e.g. nqn.2014-08.org.example:disk1)"
        ));
    }
    Ok(())
}

/// Parses the `trtype:TCP` pairs.
fn parse_tcp(s: &str, pairs: Vec<(String, String)>) -> Result<(TcpOptions, Option<u32>), String> {
    use std::net::IpAddr;
    let (mut adrfam, mut traddr, mut port) = (None, None, None);
    let (mut subnqn, mut hostnqn, mut nsid) = (None, None, None);
    let (mut hdgst, mut ddgst) = (false, false);
    let flag = |k: &str, v: &str| match v.to_ascii_lowercase().as_str() {
        "1" | "on" | "yes" | "true" => Ok(true),
        "0" | "off" | "no" | "false" => Ok(false),
        _ => Err(format!("bad transport id '{s}': {k}:{v} is not 0 or 1")),
    };
    for (k, v) in pairs {
        match k.as_str() {
            "adrfam" => {
                adrfam = Some(match v.to_ascii_lowercase().as_str() {
                    "ipv4" => 4,
                    "ipv6" => 6,
                    _ => return Err(format!("bad transport id '{s}': adrfam:{v} is not IPv4 or IPv6 (the address families NVMe/TCP uses)")),
                })
            }
            "traddr" => {
                let a = v.trim_start_matches('[').trim_end_matches(']');
                traddr = Some(a.parse::<IpAddr>().map_err(|_| {
                    format!("bad transport id '{s}': traddr:{v} is not an IP address (e.g. traddr:192.168.1.10 or traddr:fe80::1; host names are not resolved)")
                })?)
            }
            "trsvcid" => {
                port = Some(v.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                    format!("bad transport id '{s}': trsvcid:{v} is not a TCP port in 1..=65535 (NVMe/TCP uses 4420, discovery often 8009)")
                })?)
            }
            "subnqn" => {
                check_nqn("subnqn", &v)?;
                subnqn = Some(v)
            }
            "hostnqn" => {
                check_nqn("hostnqn", &v)?;
                hostnqn = Some(v)
            }
            "hdgst" => hdgst = flag(&k, &v)?,
            "ddgst" => ddgst = flag(&k, &v)?,
            "ns" => nsid = Some(parse_nsid(&v)?),
            _ => return Err(format!("bad transport id '{s}': unknown key '{k}' for trtype TCP (known: adrfam, traddr, trsvcid, subnqn, hostnqn, hdgst, ddgst, ns)")),
        }
    }
    let Some(ip) = traddr else {
        return Err(format!(
            "bad transport id '{s}': trtype:TCP needs traddr:<IP address> (e.g. 'trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420')"
        ));
    };
    match (adrfam, ip) {
        (Some(6), IpAddr::V4(_)) | (Some(4), IpAddr::V6(_)) => {
            return Err(format!(
                "bad transport id '{s}': traddr:{ip} is not an IPv{} address (adrfam)",
                adrfam.unwrap_or(4)
            ))
        }
        _ => {}
    }
    let port = port.unwrap_or(nvme_regs::tcp::DEFAULT_PORT);
    Ok((
        TcpOptions {
            addr: std::net::SocketAddr::new(ip, port),
            subnqn,
            hostnqn,
            header_digest: hdgst,
            data_digest: ddgst,
        },
        nsid,
    ))
}

/// Options of the software controller: `nscount:N lbasize:512|4096 size:1G mdts:N mqes:N
/// serial:S vectors:N`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimOptions {
    /// Number of namespaces.
    pub namespaces: u32,
    /// Logical block size in bytes (512 or 4096).
    pub lba_size: u32,
    /// Namespace size in bytes.
    pub size: u64,
    /// MDTS (power of two of 4 KiB pages; 0 = unlimited).
    pub mdts: u8,
    /// CAP.MQES (0's based maximum queue entries).
    pub mqes: u16,
    /// Serial number.
    pub serial: String,
    /// MSI-X interrupt vectors (default 65, as QEMU's controller has).
    pub vectors: u16,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            namespaces: 1,
            lba_size: 512,
            size: 1 << 30,
            mdts: 5,
            mqes: 1023,
            serial: "SIM0001".into(),
            vectors: 65,
        }
    }
}

/// A PCI address `domain:bus:device.function`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddress {
    /// Domain (segment).
    pub domain: u16,
    /// Bus.
    pub bus: u8,
    /// Device (0-31).
    pub device: u8,
    /// Function (0-7).
    pub function: u8,
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

impl std::str::FromStr for PciAddress {
    type Err = String;
    /// Parses `dddd:bb:dd.f` or `bb:dd.f` (domain 0), hexadecimal.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "bad PCI address '{s}': expected dddd:bb:dd.f, e.g. 0000:04:00.0 (see `lspci -D`)"
            )
        };
        let parts: Vec<&str> = s.split(':').collect();
        let (domain, bus, devfn) = match parts.as_slice() {
            [d, b, df] => (u16::from_str_radix(d, 16).map_err(|_| bad())?, *b, *df),
            [b, df] => (0, *b, *df),
            _ => return Err(bad()),
        };
        let bus = u8::from_str_radix(bus, 16).map_err(|_| bad())?;
        let (dev, func) = devfn.split_once('.').ok_or_else(bad)?;
        let device = u8::from_str_radix(dev, 16).map_err(|_| bad())?;
        let function = u8::from_str_radix(func, 16).map_err(|_| bad())?;
        if device > 31 || function > 7 {
            return Err(bad());
        }
        Ok(PciAddress {
            domain,
            bus,
            device,
            function,
        })
    }
}

fn parse_size(v: &str) -> Option<u64> {
    let v = v.trim();
    let (num, mult) = match v.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let m = match v[i..].to_ascii_lowercase().as_str() {
                "k" | "kb" | "kib" => 1u64 << 10,
                "m" | "mb" | "mib" => 1 << 20,
                "g" | "gb" | "gib" => 1 << 30,
                "t" | "tb" | "tib" => 1 << 40,
                _ => return None,
            };
            (&v[..i], m)
        }
        None => (v, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

impl TransportId {
    /// Parses a transport identifier. Errors name the offending part and what is accepted.
    pub fn parse(s: &str) -> Result<TransportId, String> {
        let mut trtype: Option<String> = None;
        let mut pairs = Vec::new();
        for tok in s.split_whitespace() {
            let Some(i) = tok.find([':', '=']) else {
                return Err(format!("bad transport id '{s}': '{tok}' is not key:value (e.g. 'trtype:PCIe traddr:0000:04:00.0')"));
            };
            let (k, v) = (tok[..i].to_ascii_lowercase(), &tok[i + 1..]);
            if v.is_empty() {
                return Err(format!("bad transport id '{s}': '{k}' has no value"));
            }
            if k == "trtype" {
                trtype = Some(v.to_ascii_lowercase());
            } else {
                pairs.push((k, v.to_string()));
            }
        }
        let Some(trtype) = trtype else {
            return Err(format!("bad transport id '{s}': no trtype; use 'trtype:PCIe traddr:<pci address>' or 'trtype:sim'"));
        };
        let mut nsid = None;
        let kind = match trtype.as_str() {
            "pcie" => {
                let mut traddr = None;
                for (k, v) in pairs {
                    match k.as_str() {
                        "traddr" => traddr = Some(v.parse::<PciAddress>()?),
                        "ns" => nsid = Some(parse_nsid(&v)?),
                        _ => return Err(format!("bad transport id '{s}': unknown key '{k}' for trtype PCIe (known: traddr, ns)")),
                    }
                }
                TransportKind::Pcie { traddr }
            }
            "sim" => {
                let mut o = SimOptions::default();
                for (k, v) in pairs {
                    let bad = |what: &str| format!("bad transport id '{s}': {k}:{v} is not {what}");
                    match k.as_str() {
                        "ns" => nsid = Some(parse_nsid(&v)?),
                        "nscount" => {
                            o.namespaces = v.parse().ok().filter(|n| (1..=1024).contains(n)).ok_or_else(|| bad("a namespace count in 1..=1024"))?
                        }
                        "lbasize" => {
                            o.lba_size = v.parse().ok().filter(|n| *n == 512 || *n == 4096).ok_or_else(|| bad("512 or 4096"))?
                        }
                        "size" => o.size = parse_size(&v).filter(|n| *n >= 1 << 20).ok_or_else(|| bad("a size of at least 1M (e.g. 1G, 512M)"))?,
                        "mdts" => o.mdts = v.parse().ok().filter(|n| *n <= 10).ok_or_else(|| bad("an MDTS exponent in 0..=10"))?,
                        "mqes" => o.mqes = v.parse().ok().filter(|n| *n >= 1).ok_or_else(|| bad("a 0's based queue size in 1..=65535"))?,
                        "serial" => o.serial = v,
                        "vectors" => o.vectors = v.parse().ok().filter(|n| *n <= 2048).ok_or_else(|| bad("an MSI-X vector count in 0..=2048"))?,
                        _ => {
                            return Err(format!(
                                "bad transport id '{s}': unknown key '{k}' for trtype sim (known: ns, nscount, lbasize, size, mdts, mqes, serial, vectors)"
                            ))
                        }
                    }
                }
                TransportKind::Sim(o)
            }
            "tcp" => {
                let (o, n) = parse_tcp(s, pairs)?;
                nsid = n;
                TransportKind::Tcp(o)
            }
            other => {
                return Err(format!(
                    "bad transport id '{s}': unknown trtype '{other}' (supported: PCIe, sim, TCP)"
                ))
            }
        };
        Ok(TransportId { kind, nsid })
    }

    /// A short name for output: the PCI address, or `sim`.
    pub fn name(&self) -> String {
        match &self.kind {
            TransportKind::Pcie { traddr: Some(a) } => a.to_string(),
            TransportKind::Pcie { traddr: None } => "PCIe".into(),
            TransportKind::Sim(_) => "sim".into(),
            TransportKind::Tcp(o) => match &o.subnqn {
                Some(n) => format!("{} {n}", o.addr),
                None => o.addr.to_string(),
            },
        }
    }
}

fn parse_nsid(v: &str) -> Result<u32, String> {
    v.parse::<u32>()
        .ok()
        .filter(|n| *n != 0 && *n != u32::MAX)
        .ok_or_else(|| format!("bad namespace id 'ns:{v}': expected 1..=4294967294"))
}

impl std::str::FromStr for TransportId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        TransportId::parse(s)
    }
}

impl fmt::Display for TransportId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            TransportKind::Pcie { traddr: Some(a) } => write!(f, "trtype:PCIe traddr:{a}")?,
            TransportKind::Pcie { traddr: None } => write!(f, "trtype:PCIe")?,
            TransportKind::Sim(o) => {
                write!(
                    f,
                    "trtype:sim nscount:{} lbasize:{} size:{} mdts:{} mqes:{}",
                    o.namespaces, o.lba_size, o.size, o.mdts, o.mqes
                )?;
                if o.vectors != SimOptions::default().vectors {
                    write!(f, " vectors:{}", o.vectors)?;
                }
            }
            TransportKind::Tcp(o) => {
                let fam = if o.addr.is_ipv4() { "IPv4" } else { "IPv6" };
                write!(
                    f,
                    "trtype:TCP adrfam:{fam} traddr:{} trsvcid:{}",
                    o.addr.ip(),
                    o.addr.port()
                )?;
                if let Some(n) = &o.subnqn {
                    write!(f, " subnqn:{n}")?;
                }
                if let Some(n) = &o.hostnqn {
                    write!(f, " hostnqn:{n}")?;
                }
                if o.header_digest {
                    write!(f, " hdgst:1")?;
                }
                if o.data_digest {
                    write!(f, " ddgst:1")?;
                }
            }
        }
        if let Some(ns) = self.nsid {
            write!(f, " ns:{ns}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_spdk_forms() {
        let t = TransportId::parse("trtype:PCIe traddr:0000:04:00.0 ns:1").unwrap();
        assert_eq!(t.nsid, Some(1));
        let TransportKind::Pcie { traddr: Some(a) } = t.kind else {
            panic!()
        };
        assert_eq!(a.to_string(), "0000:04:00.0");
        let t = TransportId::parse("trtype=pcie traddr=5e:1f.7").unwrap();
        assert_eq!(t.name(), "0000:5e:1f.7");
        assert_eq!(
            TransportId::parse("TRTYPE:PCIe").unwrap().kind,
            TransportKind::Pcie { traddr: None }
        );
        let t = TransportId::parse("trtype:sim nscount:2 lbasize:4096 size:64M mdts:3").unwrap();
        let TransportKind::Sim(o) = t.kind else {
            panic!()
        };
        assert_eq!(
            (o.namespaces, o.lba_size, o.size, o.mdts),
            (2, 4096, 64 << 20, 3)
        );
        let round = TransportId::parse("trtype:sim nscount:2 ns:2").unwrap();
        assert_eq!(TransportId::parse(&round.to_string()).unwrap(), round);
    }

    #[test]
    fn errors_name_the_problem() {
        let e = TransportId::parse("traddr:0000:04:00.0").unwrap_err();
        assert!(e.contains("no trtype"), "{e}");
        let e = TransportId::parse("trtype:rdma").unwrap_err();
        assert!(
            e.contains("unknown trtype 'rdma'") && e.contains("PCIe, sim, TCP"),
            "{e}"
        );
        let e = TransportId::parse("trtype:PCIe traddr:0000:04:00").unwrap_err();
        assert!(
            e.contains("bad PCI address '0000:04:00'") && e.contains("lspci"),
            "{e}"
        );
        let e = TransportId::parse("trtype:PCIe traddr:0000:04:20.0").unwrap_err();
        assert!(e.contains("bad PCI address"), "{e}");
        let e = TransportId::parse("trtype:sim lbasize:1000").unwrap_err();
        assert!(e.contains("512 or 4096"), "{e}");
        let e = TransportId::parse("trtype:sim colour:red").unwrap_err();
        assert!(e.contains("unknown key 'colour'"), "{e}");
        let e = TransportId::parse("trtype:sim ns:0").unwrap_err();
        assert!(e.contains("bad namespace id"), "{e}");
        let e = TransportId::parse("trtype:sim bogus").unwrap_err();
        assert!(e.contains("not key:value"), "{e}");
        assert_eq!(parse_size("4k"), Some(4096));
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("2X"), None);
    }

    #[test]
    fn parses_tcp() {
        let t = TransportId::parse(
            "trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420 subnqn:nqn.2014-08.org.example:disk1 hostnqn:nqn.2014-08.org.example:host hdgst:1 ns:2",
        )
        .unwrap();
        let TransportKind::Tcp(o) = &t.kind else {
            panic!("{t:?}")
        };
        assert_eq!(o.addr, "127.0.0.1:4420".parse().unwrap());
        assert_eq!(o.subsystem().unwrap(), "nqn.2014-08.org.example:disk1");
        assert_eq!(o.hostnqn.as_deref(), Some("nqn.2014-08.org.example:host"));
        assert!(o.header_digest && !o.data_digest);
        assert_eq!(t.nsid, Some(2));
        assert_eq!(TransportId::parse(&t.to_string()).unwrap(), t);
        let t = TransportId::parse("trtype:tcp adrfam:ipv6 traddr:[::1] trsvcid:8009").unwrap();
        let TransportKind::Tcp(o) = &t.kind else {
            panic!("{t:?}")
        };
        assert_eq!(o.addr, "[::1]:8009".parse().unwrap());
        assert_eq!(TransportId::parse(&t.to_string()).unwrap(), t);
        // The port defaults to 4420; without subnqn only discovery is possible.
        let t = TransportId::parse("trtype:TCP traddr:10.0.0.2").unwrap();
        let TransportKind::Tcp(o) = &t.kind else {
            panic!("{t:?}")
        };
        assert_eq!(o.addr.port(), 4420);
        let e = o.subsystem().unwrap_err();
        assert!(
            e.contains("missing subnqn") && e.contains("nvmectl discover"),
            "{e}"
        );
    }

    #[test]
    fn tcp_errors_name_the_problem() {
        let e = TransportId::parse("trtype:TCP traddr:300.1.1.1").unwrap_err();
        assert!(e.contains("traddr:300.1.1.1 is not an IP address"), "{e}");
        let e = TransportId::parse("trtype:TCP traddr:storage.example").unwrap_err();
        assert!(
            e.contains("not an IP address") && e.contains("not resolved"),
            "{e}"
        );
        let e = TransportId::parse("trtype:TCP traddr:127.0.0.1 trsvcid:70000").unwrap_err();
        assert!(e.contains("trsvcid:70000 is not a TCP port"), "{e}");
        let e = TransportId::parse("trtype:TCP traddr:127.0.0.1 trsvcid:0").unwrap_err();
        assert!(e.contains("is not a TCP port"), "{e}");
        let e = TransportId::parse("trtype:TCP trsvcid:4420").unwrap_err();
        assert!(e.contains("needs traddr"), "{e}");
        let e = TransportId::parse("trtype:TCP adrfam:IPv6 traddr:127.0.0.1").unwrap_err();
        assert!(e.contains("not an IPv6 address"), "{e}");
        let e = TransportId::parse("trtype:TCP adrfam:IB traddr:127.0.0.1").unwrap_err();
        assert!(e.contains("adrfam:IB is not IPv4 or IPv6"), "{e}");
        let long = "n".repeat(224);
        let e =
            TransportId::parse(&format!("trtype:TCP traddr:127.0.0.1 subnqn:{long}")).unwrap_err();
        assert!(e.contains("at most 223 bytes"), "{e}");
        let e = TransportId::parse("trtype:TCP traddr:127.0.0.1 hdgst:maybe").unwrap_err();
        assert!(e.contains("hdgst:maybe is not 0 or 1"), "{e}");
        let e = TransportId::parse("trtype:TCP traddr:127.0.0.1 lbasize:512").unwrap_err();
        assert!(e.contains("unknown key 'lbasize' for trtype TCP"), "{e}");
    }
}
