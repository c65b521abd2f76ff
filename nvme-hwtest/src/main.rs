//! The hardware test suite: the driver against a real or QEMU-emulated NVMe controller
//! through VFIO.
//!
//! ```text
//! nvme-hwtest [--device BDF] [--write-ns N]... [--expect-serial S] [--expect-ns N:BS:BLOCKS]...
//!             [--manifest PATH] [--threads N] [--multi-process] [--tools DIR [--scratch-ns N]]
//! nvme-hwtest --verify-kernel MANIFEST [--device BDF]
//! nvme-hwtest --tcp TRID [--tcp6 TRID] [--tcp-denied NQN] [--tools DIR]
//! ```
//!
//! Prints one line per test (`PASS name (x ms)` or `FAIL name: reason`) and a final
//! `HWTEST SUMMARY passed=N failed=M skipped=K` line that `cargo xtask test-hw` parses.
//! Tests that write run only on namespaces named with `--write-ns` (they destroy data).
//! Without `--write-ns` the suite is read-only.
//!
//! `--manifest PATH` writes a known pattern to known blocks of the first write namespace and
//! records them in PATH; `--multi-process` adds the shared-memory group scenarios (several
//! processes on the controller, some SIGKILLed, then controller resets under I/O whose last
//! acknowledged write joins the manifest; see `mp`); `--tools DIR` adds the scenarios that run
//! the real `nvme-perf` and `nvmectl` from DIR beside each other. After the controller is rebound to the
//! kernel's nvme driver,
//! `--verify-kernel PATH` reads the same blocks from `/dev/nvmeXnY` and compares.
//! `--tcp TRID` runs the NVMe/TCP checks against a kernel target instead (see `tcp`).

#![forbid(unsafe_code)]

mod mp;
mod suite;
mod tcp;
mod verify;

use std::process::ExitCode;

use nvme_host_linux::PciAddress;

/// `nvmectl admin-passthru` of Identify Controller (opcode 06h, CNS 1, 4 KiB read): the
/// raw admin command the tool scenarios send, over PCIe and over NVMe/TCP.
pub const NVMECTL_IDENTIFY_PASSTHRU: &[&str] = &[
    "admin-passthru",
    "-o",
    "6",
    "--cdw10",
    "1",
    "-l",
    "4096",
    "--read",
];

/// Command-line configuration.
#[derive(Debug, Default, Clone)]
pub struct Config {
    /// The controller; `None`: the first NVMe function bound to vfio-pci.
    pub device: Option<PciAddress>,
    /// Namespaces the writing tests may destroy.
    pub write_ns: Vec<u32>,
    /// Serial number the controller must report.
    pub expect_serial: Option<String>,
    /// (nsid, block size, blocks) the controller must report.
    pub expect_ns: Vec<(u32, u32, u64)>,
    /// Where to write the read-back manifest.
    pub manifest: Option<String>,
    /// Threads of the multi-queue test.
    pub threads: usize,
    /// `--verify-kernel MANIFEST`.
    pub verify_kernel: Option<String>,
    /// `--expect-attach-error TEXT`: attaching must fail with a message containing TEXT.
    pub expect_attach_error: Option<String>,
    /// `--as-uid UID`: drop root for the attach-error checks (permission, memlock).
    pub as_uid: Option<u32>,
    /// `--multi-process`: run the multi-process scenarios after the single-process suite.
    pub multi_process: bool,
    /// `--tools DIR`: where `nvme-perf` and `nvmectl` are, for the scenarios that run them.
    pub tools: Option<String>,
    /// `--scratch-ns N`: a namespace whose data `nvme-perf` may overwrite (random writes
    /// anywhere in it); without it perf only reads.
    pub scratch_ns: Option<u32>,
    /// `--slow-ns N`: a read-only namespace whose every command takes milliseconds (QEMU's
    /// null-co with `latency-ns`), where waiting on an interrupt can be told from polling.
    pub slow_ns: Option<u32>,
    /// `--ns-attachment`: the controller supports Namespace Attachment (QEMU's inside an
    /// nvme-subsys device): detach-ns and attach-ns must work, not merely fail cleanly.
    pub ns_attachment: bool,
    /// `--tcp TRID`: run the NVMe/TCP checks against this subsystem.
    pub tcp: Option<String>,
    /// `--tcp-denied NQN`: a subsystem on the same port that allows no host.
    pub tcp_denied: Option<String>,
    /// `--tcp6 TRID`: the same subsystem over IPv6.
    pub tcp6: Option<String>,
    /// `--tcp-nvmet-port DIR`: the configfs directory of the Linux nvmet port that exports
    /// `--tcp`'s subsystem; the check of a target that goes away and comes back unlinks
    /// the subsystem from it and links it again.
    pub tcp_nvmet_port: Option<String>,
    /// `--trid TRID`: run the suite on the controller this transport id names (NVMe/TCP,
    /// say) instead of a VFIO function; the VFIO-only tests are skipped.
    pub trid: Option<String>,
    /// `--verify-file PATH` (with `--verify-kernel`): read the blocks back from this file,
    /// the namespace's backing file on an NVMe over Fabrics target, instead of a kernel
    /// block device.
    pub verify_file: Option<String>,
}

const USAGE: &str = "usage: nvme-hwtest [--device BDF] [--write-ns N]... [--expect-serial S] \
[--expect-ns NSID:BLOCKSIZE:BLOCKS]... [--manifest PATH] [--threads N] [--multi-process]\n                   \
[--tools DIR [--scratch-ns N]] [--slow-ns N] [--ns-attachment]\n       \
nvme-hwtest --trid TRID [--write-ns N]... [--expect-ns NSID:BLOCKSIZE:BLOCKS]... [--manifest PATH]\n       \
nvme-hwtest --verify-kernel MANIFEST [--device BDF | --verify-file PATH]\n       \
nvme-hwtest --device BDF [--as-uid UID] --expect-attach-error TEXT\n       \
nvme-hwtest --tcp 'trtype:TCP traddr:IP trsvcid:PORT subnqn:NQN' [--tcp6 TRID] [--tcp-denied NQN] [--tools DIR]\n                   \
[--tcp-nvmet-port CONFIGFS-DIR]\n\
Tests that write run only on namespaces named with --write-ns: they destroy data there.";

fn parse_args(args: &[String]) -> Result<Config, String> {
    let mut c = Config {
        threads: 4,
        ..Default::default()
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--device" => c.device = Some(val("--device")?.parse()?),
            "--write-ns" => {
                let v = val("--write-ns")?;
                c.write_ns.push(
                    v.parse()
                        .map_err(|_| format!("--write-ns {v}: expected a namespace id"))?,
                )
            }
            "--expect-serial" => c.expect_serial = Some(val("--expect-serial")?),
            "--expect-ns" => {
                let v = val("--expect-ns")?;
                let p: Vec<&str> = v.split(':').collect();
                let bad = || {
                    format!("--expect-ns {v}: expected NSID:BLOCKSIZE:BLOCKS, e.g. 1:512:262144")
                };
                if p.len() != 3 {
                    return Err(bad());
                }
                c.expect_ns.push((
                    p[0].parse().map_err(|_| bad())?,
                    p[1].parse().map_err(|_| bad())?,
                    p[2].parse().map_err(|_| bad())?,
                ));
            }
            "--manifest" => c.manifest = Some(val("--manifest")?),
            "--multi-process" => c.multi_process = true,
            "--ns-attachment" => c.ns_attachment = true,
            "--tcp" => c.tcp = Some(val("--tcp")?),
            "--tcp-denied" => c.tcp_denied = Some(val("--tcp-denied")?),
            "--tcp6" => c.tcp6 = Some(val("--tcp6")?),
            "--tcp-nvmet-port" => c.tcp_nvmet_port = Some(val("--tcp-nvmet-port")?),
            "--trid" => c.trid = Some(val("--trid")?),
            "--verify-file" => c.verify_file = Some(val("--verify-file")?),
            "--tools" => c.tools = Some(val("--tools")?),
            "--scratch-ns" => {
                let v = val("--scratch-ns")?;
                c.scratch_ns = Some(
                    v.parse()
                        .map_err(|_| format!("--scratch-ns {v}: expected a namespace id"))?,
                )
            }
            "--slow-ns" => {
                let v = val("--slow-ns")?;
                c.slow_ns = Some(
                    v.parse()
                        .map_err(|_| format!("--slow-ns {v}: expected a namespace id"))?,
                )
            }
            "--threads" => {
                let v = val("--threads")?;
                c.threads = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=64).contains(n))
                    .ok_or(format!("--threads {v}: expected 1..=64"))?
            }
            "--verify-kernel" => c.verify_kernel = Some(val("--verify-kernel")?),
            "--expect-attach-error" => c.expect_attach_error = Some(val("--expect-attach-error")?),
            "--as-uid" => {
                let v = val("--as-uid")?;
                c.as_uid = Some(
                    v.parse()
                        .map_err(|_| format!("--as-uid {v}: expected a numeric user id"))?,
                )
            }
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument '{other}'\n{USAGE}")),
        }
    }
    if c.tools.is_some() && !c.multi_process && c.tcp.is_none() {
        return Err("--tools needs --multi-process: the tools run in a shared-memory group".into());
    }
    if c.trid.is_some() && (c.device.is_some() || c.multi_process) {
        return Err(
            "--trid runs the single-process suite on that controller: no --device, no --multi-process"
                .into(),
        );
    }
    if c.manifest.is_some() && c.write_ns.is_empty() {
        return Err("--manifest needs --write-ns: the read-back test writes a pattern".into());
    }
    Ok(c)
}

fn main() -> ExitCode {
    if let Some(role) = nvme_host_linux::testkit::role() {
        return ExitCode::from(mp::child(&role));
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = match parse_args(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("nvme-hwtest: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(uid) = cfg.as_uid {
        if let Err(e) = drop_root(uid) {
            eprintln!("nvme-hwtest: --as-uid {uid}: {e}");
            return ExitCode::from(2);
        }
    }
    if let Some(trid) = &cfg.tcp {
        let ok = tcp::run(
            trid,
            cfg.tcp6.as_deref(),
            cfg.tcp_denied.as_deref(),
            cfg.tools.as_deref(),
            cfg.tcp_nvmet_port.as_deref(),
        );
        return if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    let ok = match (&cfg.verify_kernel, &cfg.expect_attach_error) {
        (Some(m), _) => match &cfg.verify_file {
            Some(f) => verify::run_file(m, f),
            None => verify::run(m, cfg.device.as_ref()),
        },
        (None, Some(text)) => expect_attach_error(cfg.device.as_ref(), text),
        (None, None) => suite::run(&cfg),
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Becomes user and group `uid` with no supplementary groups.
fn drop_root(uid: u32) -> std::io::Result<()> {
    use nix::unistd::{setgid, setgroups, setuid, Gid, Uid};
    setgroups(&[])?;
    setgid(Gid::from_raw(uid))?;
    setuid(Uid::from_raw(uid))?;
    Ok(())
}

/// Attaching must fail with a message that contains `text` (case-insensitive): checks the
/// driver's error messages against a real kernel.
fn expect_attach_error(device: Option<&PciAddress>, text: &str) -> bool {
    let trid = match device {
        Some(a) => format!("trtype:PCIe traddr:{a}"),
        None => "trtype:PCIe".to_string(),
    };
    let name = format!("attach-error '{text}'");
    match nvme_host_linux::Controller::attach(&trid) {
        Err(e) if e.to_string().to_lowercase().contains(&text.to_lowercase()) => {
            println!("PASS {name}: {e}");
            true
        }
        Err(e) => {
            println!("FAIL {name}: the error does not say '{text}': {e}");
            false
        }
        Ok(_) => {
            println!("FAIL {name}: attaching {trid} succeeded");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn parses_arguments() {
        let c = parse_args(&s(&[
            "--device",
            "0000:00:04.0",
            "--write-ns",
            "1",
            "--expect-ns",
            "2:4096:16384",
        ]))
        .unwrap();
        assert_eq!(c.device.unwrap().to_string(), "0000:00:04.0");
        assert_eq!(c.write_ns, [1]);
        assert_eq!(c.expect_ns, [(2, 4096, 16384)]);
        assert!(parse_args(&s(&["--manifest", "/tmp/x"]))
            .unwrap_err()
            .contains("--write-ns"));
        assert!(parse_args(&s(&["--expect-ns", "1:512"]))
            .unwrap_err()
            .contains("NSID:BLOCKSIZE:BLOCKS"));
        assert!(parse_args(&s(&["--bogus"]))
            .unwrap_err()
            .contains("unknown argument"));
    }
}
