//! `nvme-setup`: prepares a machine for the userspace driver, in the spirit of SPDK's
//! `setup.sh`: lists NVMe functions and their drivers, binds them to vfio-pci and back to
//! the kernel's nvme driver, reserves hugepages, and reports what is missing.

#![deny(unsafe_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use nvme_host_linux::vfio::sysfs::{describe, PciFunction, Sysfs};
use nvme_host_linux::PciAddress;

/// Command line of `nvme-setup`.
#[derive(Parser, Debug)]
#[command(
    name = "nvme-setup",
    about = "Prepare NVMe controllers and hugepages for the userspace driver (VFIO)"
)]
struct Cli {
    /// Root of the sysfs, /dev and /proc trees (for tests).
    #[arg(long, default_value = "/", hide = true)]
    root: PathBuf,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// List NVMe functions, their drivers and IOMMU groups, and report what is missing
    /// (the default).
    Status,
    /// Bind controllers to vfio-pci (their kernel block devices disappear).
    Bind {
        /// PCI addresses (dddd:bb:dd.f).
        addrs: Vec<PciAddress>,
        /// Every NVMe controller not in use by a mounted filesystem.
        #[arg(long)]
        all: bool,
        /// Bind even when a namespace has a mounted filesystem or is in use.
        #[arg(long)]
        force: bool,
        /// Give this user (name or uid) the device's `/dev/vfio/<group>` node.
        #[arg(long)]
        user: Option<String>,
    },
    /// Give controllers back to the kernel's nvme driver.
    Unbind {
        /// PCI addresses (dddd:bb:dd.f).
        addrs: Vec<PciAddress>,
        /// Every NVMe controller bound to vfio-pci.
        #[arg(long)]
        all: bool,
    },
    /// Reserve COUNT 2 MiB hugepages (0 releases them).
    Hugepages {
        /// Number of 2 MiB pages.
        count: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let sys = Sysfs::with_root(&cli.root);
    let r = match cli.cmd.unwrap_or(Cmd::Status) {
        Cmd::Status => {
            status(&sys);
            Ok(())
        }
        Cmd::Bind {
            addrs,
            all,
            force,
            user,
        } => bind(&sys, addrs, all, force, user.as_deref()),
        Cmd::Unbind { addrs, all } => unbind(&sys, addrs, all),
        Cmd::Hugepages { count } => hugepages(&sys, count),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nvme-setup: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Kernel block devices (`nvme0n1`, ...) of a controller bound to the nvme driver.
fn block_devices(sys: &Sysfs, addr: &PciAddress) -> Vec<String> {
    let mut v = Vec::new();
    let Ok(ctrls) = fs::read_dir(sys.device_dir(addr).join("nvme")) else {
        return v;
    };
    for c in ctrls.flatten() {
        for n in fs::read_dir(c.path()).into_iter().flatten().flatten() {
            let name = n.file_name().to_string_lossy().into_owned();
            if name.starts_with("nvme") && name.contains('n') && n.path().join("size").exists() {
                v.push(name);
            }
        }
    }
    v.sort();
    v
}

/// Mounts and swap on the controller's block devices.
fn in_use(sys: &Sysfs, addr: &PciAddress) -> Vec<String> {
    let devs = block_devices(sys, addr);
    let mut uses = Vec::new();
    for (file, what) in [("/proc/mounts", "mounted on"), ("/proc/swaps", "swap")] {
        let text = fs::read_to_string(sys.path(file)).unwrap_or_default();
        for l in text.lines() {
            let mut f = l.split_whitespace();
            let (Some(src), dst) = (f.next(), f.next()) else {
                continue;
            };
            if let Some(d) = devs.iter().find(|d| {
                src.strip_prefix("/dev/")
                    .is_some_and(|s| s.starts_with(d.as_str()))
            }) {
                uses.push(format!("{d} {what} {}", dst.unwrap_or("")));
            }
        }
    }
    uses
}

fn status(sys: &Sysfs) {
    let nvme = sys.nvme_functions();
    println!("NVMe functions:");
    if nvme.is_empty() {
        println!("  none (no PCI function of class 010802)");
    }
    for f in &nvme {
        let group = match f.iommu_group {
            Some(g) => {
                let node = sys.path(&format!("/dev/vfio/{g}"));
                let others: Vec<String> = sys
                    .group_devices(g)
                    .into_iter()
                    .filter(|(n, _)| *n != f.addr.to_string())
                    .map(|(n, d)| format!("{n} ({})", d.unwrap_or_else(|| "no driver".into())))
                    .collect();
                let mut s = format!("IOMMU group {g}");
                if f.is_vfio() {
                    s.push_str(&format!(
                        ", {} {}",
                        node.display(),
                        if node.exists() { "present" } else { "MISSING" }
                    ));
                }
                if !others.is_empty() {
                    s.push_str(&format!(", shared with {}", others.join(", ")));
                }
                s
            }
            None => "no IOMMU group".into(),
        };
        let devs = block_devices(sys, &f.addr);
        let devs = if devs.is_empty() {
            String::new()
        } else {
            format!(", block devices {}", devs.join(" "))
        };
        println!("  {}, {group}{devs}", describe(f));
    }
    let mut missing = Vec::new();
    if !sys.iommu_active() {
        missing.push(
            "no IOMMU is active (/sys/kernel/iommu_groups is empty): enable VT-d/AMD-Vi in the firmware and boot with \
             intel_iommu=on or amd_iommu=on"
                .to_string(),
        );
    }
    if !sys.vfio_pci_loaded() {
        missing
            .push("vfio-pci is not loaded: `modprobe vfio-pci` (`nvme-setup bind` does it)".into());
    }
    if sys.vfio_pci_loaded() && !sys.path("/dev/vfio/vfio").exists() {
        missing.push("/dev/vfio/vfio is missing: `modprobe vfio`".into());
    }
    if !nvme.is_empty() && !nvme.iter().any(PciFunction::is_vfio) {
        missing.push("no NVMe controller is bound to vfio-pci: `nvme-setup bind <addr>`".into());
    }
    match sys.hugepages() {
        Some((free, total)) => {
            println!("Hugepages (2 MiB): {free} free of {total}");
            if total == 0 {
                missing.push(
                    "no hugepages reserved (optional: DMA memory falls back to ordinary shared memory): `nvme-setup hugepages 1024`"
                        .into(),
                );
            }
        }
        None => missing.push("cannot read /proc/meminfo".into()),
    }
    let root = nvme_tools::sys::is_root();
    if let Ok(limit) = nvme_tools::sys::memlock_limit() {
        let s = match limit {
            None => "unlimited".to_string(),
            Some(n) => format!("{} KiB", n / 1024),
        };
        println!(
            "Locked-memory limit: {s}{}",
            if root {
                " (root: not enforced for VFIO)"
            } else {
                ""
            }
        );
        if !root && limit.is_some_and(|n| n < (256 << 20)) {
            missing.push(format!(
                "the locked-memory limit ({s}) is small for VFIO, which pins all DMA memory: `ulimit -l unlimited` or memlock in /etc/security/limits.conf"
            ));
        }
    }
    if missing.is_empty() {
        println!("Ready: nothing missing.");
    } else {
        println!("Missing:");
        for m in missing {
            println!("  - {m}");
        }
    }
}

fn targets(
    sys: &Sysfs,
    addrs: Vec<PciAddress>,
    all: bool,
    pick: impl Fn(&PciFunction) -> bool,
) -> Result<Vec<PciAddress>, String> {
    match (addrs.is_empty(), all) {
        (true, false) => Err(
            "name the controllers (PCI addresses, see `nvme-setup status`) or pass --all".into(),
        ),
        (false, true) => Err("pass either addresses or --all, not both".into()),
        (true, true) => Ok(sys
            .nvme_functions()
            .iter()
            .filter(|f| pick(f))
            .map(|f| f.addr)
            .collect()),
        (false, false) => Ok(addrs),
    }
}

fn uid_of(sys: &Sysfs, user: &str) -> Result<u32, String> {
    if let Ok(n) = user.parse() {
        return Ok(n);
    }
    let passwd = fs::read_to_string(sys.path("/etc/passwd"))
        .map_err(|e| format!("reading /etc/passwd: {e}"))?;
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 2 && f[0] == user)
                .then(|| f[2].parse().ok())
                .flatten()
        })
        .ok_or_else(|| format!("no user '{user}' in /etc/passwd"))
}

fn bind(
    sys: &Sysfs,
    addrs: Vec<PciAddress>,
    all: bool,
    force: bool,
    user: Option<&str>,
) -> Result<(), String> {
    let list = targets(sys, addrs, all, |f| !f.is_vfio())?;
    if list.is_empty() {
        println!("nothing to bind: every NVMe controller is bound to vfio-pci already");
        return Ok(());
    }
    if let Some(a) = list.iter().find(|a| sys.function(a).is_none()) {
        return Err(format!(
            "PCI device {a} not found; `nvme-setup status` lists the NVMe controllers"
        ));
    }
    if !sys.vfio_pci_loaded() && sys.path("/").as_path() == Path::new("/") {
        let st = std::process::Command::new("modprobe")
            .arg("vfio-pci")
            .status();
        if !st.is_ok_and(|s| s.success()) {
            return Err(
                "`modprobe vfio-pci` failed: is the vfio-pci module installed for this kernel?"
                    .into(),
            );
        }
    }
    let mut failed = 0;
    for addr in list {
        let Some(f) = sys.function(&addr) else {
            eprintln!("{addr}: no such PCI device");
            failed += 1;
            continue;
        };
        if !f.is_nvme() && !force {
            eprintln!(
                "{addr}: not an NVMe controller (class {:06x}); pass --force to bind it anyway",
                f.class
            );
            failed += 1;
            continue;
        }
        let uses = in_use(sys, &addr);
        if !uses.is_empty() && !force {
            eprintln!(
                "{addr}: in use ({}); not binding it (unmount first, or --force)",
                uses.join(", ")
            );
            failed += 1;
            continue;
        }
        match sys.bind(&addr, Some("vfio-pci")) {
            Ok(()) => {
                let g = sys.function(&addr).and_then(|f| f.iommu_group);
                let node = g.map(|g| sys.path(&format!("/dev/vfio/{g}")));
                println!(
                    "{addr}: bound to vfio-pci{}",
                    node.as_ref()
                        .map(|n| format!(" ({})", n.display()))
                        .unwrap_or_default()
                );
                if g.is_none() {
                    eprintln!("{addr}: warning: no IOMMU group, VFIO cannot use it: enable the IOMMU (intel_iommu=on / amd_iommu=on)");
                }
                if let (Some(u), Some(node)) = (user, node) {
                    let uid = uid_of(sys, u)?;
                    std::os::unix::fs::chown(&node, Some(uid), None)
                        .map_err(|e| format!("chown {}: {e}", node.display()))?;
                    println!("{addr}: {} now belongs to uid {uid}; raise that user's locked-memory limit too", node.display());
                }
            }
            Err(e) => {
                eprintln!("{addr}: {e}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        return Err(format!("{failed} controller(s) not bound"));
    }
    Ok(())
}

fn unbind(sys: &Sysfs, addrs: Vec<PciAddress>, all: bool) -> Result<(), String> {
    let list = targets(sys, addrs, all, PciFunction::is_vfio)?;
    if list.is_empty() {
        println!("nothing to unbind: no NVMe controller is bound to vfio-pci");
    }
    let mut failed = 0;
    for addr in list {
        match sys.bind(&addr, None) {
            Ok(()) => {
                let d = sys
                    .function(&addr)
                    .and_then(|f| f.driver)
                    .unwrap_or_else(|| "no driver (is the nvme module loaded?)".into());
                println!("{addr}: bound to {d}");
            }
            Err(e) => {
                eprintln!("{addr}: {e}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        return Err(format!("{failed} controller(s) not given back"));
    }
    Ok(())
}

fn hugepages(sys: &Sysfs, count: u64) -> Result<(), String> {
    let p = sys.path("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages");
    fs::write(&p, count.to_string())
        .map_err(|e| format!("writing {count} to {}: {e} (needs root)", p.display()))?;
    let got: u64 = fs::read_to_string(&p)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    println!("2 MiB hugepages reserved: {got} of {count} requested");
    if got < count {
        return Err(format!(
            "the kernel reserved only {got} of {count} hugepages (memory is fragmented or short); \
             try again, reserve at boot with hugepages={count} on the kernel command line, or use fewer"
        ));
    }
    Ok(())
}
