//! `nvme-sim-target`: the software NVMe controller served over NVMe/TCP, for trying the
//! driver's `trtype:TCP` without a kernel target.
//!
//! ```sh
//! nvme-sim-target --listen 127.0.0.1:4420 --size 1G
//! nvme-perf -r 'trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420 subnqn:nqn.2014-08.org.nvmexpress:nvme-sim' ...
//! ```
//!
//! It runs until killed (Ctrl-C). Arguments are parsed by hand: the crate keeps its
//! dependencies to the spec types and `nix`.
#![forbid(unsafe_code)]

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;

use nvme_sim::{DigestPolicy, NamespaceConfig, SimConfig, TcpTarget, TcpTargetOptions};

const USAGE: &str = "\
usage: nvme-sim-target [options]

Serves a software NVMe controller (nvme-sim) over NVMe/TCP until killed.

options:
  --listen ADDR        address and port to listen on (default 127.0.0.1:4420)
  --size SIZE          size of each namespace: bytes or with K, M, G, T (default 1G)
  --lba-size BYTES     logical block size, 512 or 4096 (default 512)
  --namespaces N       number of namespaces (default 1)
  --subnqn NQN         subsystem NQN (default nqn.2014-08.org.nvmexpress:nvme-sim)
  --allow-host NQN     accept only this host NQN (repeat for more; default: any host)
  --digests POLICY     grant (what hosts ask), refuse or force (default grant)
  --queue-entries N    entries per queue at most (default 128)
  -h, --help           this text";

struct Args {
    listen: SocketAddr,
    size: u64,
    lba: u32,
    namespaces: u32,
    opts: TcpTargetOptions,
}

fn parse_size(s: &str) -> Option<u64> {
    let (num, shift) = match s.as_bytes().last()?.to_ascii_uppercase() {
        b'K' => (&s[..s.len() - 1], 10),
        b'M' => (&s[..s.len() - 1], 20),
        b'G' => (&s[..s.len() - 1], 30),
        b'T' => (&s[..s.len() - 1], 40),
        _ => (s, 0),
    };
    num.parse::<u64>().ok()?.checked_mul(1 << shift)
}

fn parse(mut it: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut a = Args {
        listen: "127.0.0.1:4420".parse().expect("address"),
        size: 1 << 30,
        lba: 512,
        namespaces: 1,
        opts: TcpTargetOptions::default(),
    };
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Ok(None);
        }
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{flag} needs a value (see --help)"))
        };
        match flag.as_str() {
            "--listen" => {
                let v = value()?;
                a.listen = v
                    .to_socket_addrs()
                    .ok()
                    .and_then(|mut i| i.next())
                    .ok_or_else(|| {
                        format!("--listen {v}: give an address and port, like 127.0.0.1:4420")
                    })?;
            }
            "--size" => {
                let v = value()?;
                a.size = parse_size(&v).filter(|&s| s > 0).ok_or_else(|| {
                    format!("--size {v}: give bytes, or a number with K, M, G or T")
                })?;
            }
            "--lba-size" => {
                let v = value()?;
                a.lba = v
                    .parse()
                    .ok()
                    .filter(|l| *l == 512 || *l == 4096)
                    .ok_or_else(|| format!("--lba-size {v}: 512 or 4096"))?;
            }
            "--namespaces" => {
                let v = value()?;
                a.namespaces = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=1024).contains(n))
                    .ok_or_else(|| format!("--namespaces {v}: 1 to 1024"))?;
            }
            "--subnqn" => a.opts.subnqn = value()?,
            "--allow-host" => {
                let v = value()?;
                a.opts.allowed_hosts.push(v);
            }
            "--digests" => {
                let v = value()?;
                a.opts.digests = match v.as_str() {
                    "grant" => DigestPolicy::Grant,
                    "refuse" => DigestPolicy::Refuse,
                    "force" => DigestPolicy::Force,
                    _ => return Err(format!("--digests {v}: grant, refuse or force")),
                };
            }
            "--queue-entries" => {
                let v = value()?;
                a.opts.max_queue_entries = v
                    .parse()
                    .ok()
                    .filter(|n| *n >= 2)
                    .ok_or_else(|| format!("--queue-entries {v}: 2 to 65535"))?;
            }
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
    }
    if !a.size.is_multiple_of(a.lba as u64) {
        return Err(format!(
            "--size {} is not a multiple of the {}-byte block size",
            a.size, a.lba
        ));
    }
    Ok(Some(a))
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("nvme-sim-target: {e}");
            return ExitCode::from(2);
        }
    };
    let ns = NamespaceConfig {
        lba_size: args.lba,
        blocks: args.size / args.lba as u64,
    };
    let config = SimConfig {
        namespaces: vec![ns; args.namespaces as usize],
        ..SimConfig::default()
    };
    let target = match TcpTarget::start(config, args.listen, args.opts) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("nvme-sim-target: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("listening: {}", target.transport_id());
    loop {
        std::thread::park();
    }
}
