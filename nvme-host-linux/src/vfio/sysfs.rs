//! PCI functions as sysfs shows them: class, ids, driver, IOMMU group; binding to and from
//! vfio-pci; and the pre-flight checks that turn "VFIO does not work" into a message that
//! says what to do.
//!
//! Every path is taken relative to a root directory (`/` normally), so tests can fake a
//! sysfs tree in a temporary directory.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::trid::PciAddress;

/// PCI class code of an NVMe controller: mass storage (01), non-volatile memory (08),
/// NVM Express programming interface (02).
pub const NVME_CLASS: u32 = 0x01_08_02;

/// The sysfs (and `/dev`, `/proc`) tree to look at.
#[derive(Clone, Debug)]
pub struct Sysfs {
    root: PathBuf,
}

impl Default for Sysfs {
    fn default() -> Self {
        Sysfs::new()
    }
}

/// One PCI function as sysfs describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciFunction {
    /// Its address.
    pub addr: PciAddress,
    /// Class code (24 bits: class, subclass, programming interface).
    pub class: u32,
    /// Vendor id.
    pub vendor: u16,
    /// Device id.
    pub device: u16,
    /// The driver it is bound to (`nvme`, `vfio-pci`, ...), if any.
    pub driver: Option<String>,
    /// Its IOMMU group, when an IOMMU is active.
    pub iommu_group: Option<u32>,
}

impl PciFunction {
    /// Is it an NVMe controller?
    pub fn is_nvme(&self) -> bool {
        self.class == NVME_CLASS
    }
    /// Is it bound to vfio-pci?
    pub fn is_vfio(&self) -> bool {
        self.driver.as_deref() == Some("vfio-pci")
    }
}

fn read_trimmed(p: &Path) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

fn parse_hex(s: &str) -> Option<u32> {
    u32::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok()
}

fn link_name(p: &Path) -> Option<String> {
    fs::read_link(p)
        .ok()?
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
}

impl Sysfs {
    /// The machine's own tree (`/`).
    pub fn new() -> Sysfs {
        Sysfs {
            root: PathBuf::from("/"),
        }
    }
    /// A tree under `root` (for tests: a fake `sys/bus/pci/devices/...`).
    pub fn with_root(root: impl Into<PathBuf>) -> Sysfs {
        Sysfs { root: root.into() }
    }
    /// `root` + an absolute path.
    pub fn path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }
    /// The sysfs directory of a PCI function.
    pub fn device_dir(&self, addr: &PciAddress) -> PathBuf {
        self.path("/sys/bus/pci/devices").join(addr.to_string())
    }

    /// One PCI function; `None` when sysfs has no such function.
    pub fn function(&self, addr: &PciAddress) -> Option<PciFunction> {
        let dir = self.device_dir(addr);
        if !dir.exists() {
            return None;
        }
        let class = read_trimmed(&dir.join("class"))
            .and_then(|s| parse_hex(&s))
            .unwrap_or(0);
        let vendor = read_trimmed(&dir.join("vendor"))
            .and_then(|s| parse_hex(&s))
            .unwrap_or(0xffff) as u16;
        let device = read_trimmed(&dir.join("device"))
            .and_then(|s| parse_hex(&s))
            .unwrap_or(0xffff) as u16;
        let driver = link_name(&dir.join("driver"));
        let iommu_group = link_name(&dir.join("iommu_group")).and_then(|g| g.parse().ok());
        Some(PciFunction {
            addr: *addr,
            class,
            vendor,
            device,
            driver,
            iommu_group,
        })
    }

    /// Every PCI function, sorted by address.
    pub fn functions(&self) -> Vec<PciFunction> {
        let Ok(dir) = fs::read_dir(self.path("/sys/bus/pci/devices")) else {
            return Vec::new();
        };
        let mut v: Vec<PciFunction> = dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<PciAddress>().ok())
            .filter_map(|a| self.function(&a))
            .collect();
        v.sort_by_key(|f| f.addr);
        v
    }

    /// Every NVMe controller function, whatever its driver.
    pub fn nvme_functions(&self) -> Vec<PciFunction> {
        self.functions()
            .into_iter()
            .filter(PciFunction::is_nvme)
            .collect()
    }

    /// The devices in IOMMU group `group` with their drivers (names as sysfs lists them).
    pub fn group_devices(&self, group: u32) -> Vec<(String, Option<String>)> {
        let dir = self
            .path("/sys/kernel/iommu_groups")
            .join(group.to_string())
            .join("devices");
        let Ok(rd) = fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut v: Vec<(String, Option<String>)> = rd
            .filter_map(|e| {
                let e = e.ok()?;
                let name = e.file_name().to_string_lossy().into_owned();
                let driver = link_name(&e.path().join("driver"));
                Some((name, driver))
            })
            .collect();
        v.sort();
        v
    }

    /// Does the kernel have an active IOMMU (any IOMMU group at all)?
    pub fn iommu_active(&self) -> bool {
        fs::read_dir(self.path("/sys/kernel/iommu_groups")).is_ok_and(|mut d| d.next().is_some())
    }

    /// Is the vfio-pci driver loaded?
    pub fn vfio_pci_loaded(&self) -> bool {
        self.path("/sys/bus/pci/drivers/vfio-pci").exists()
    }

    /// The pre-flight check before opening `addr` through VFIO: the function exists, is
    /// bound to vfio-pci, and sits in an IOMMU group. Returns the group number, or an error
    /// that says what is wrong and how to fix it.
    pub fn check_vfio(&self, addr: &PciAddress) -> Result<u32> {
        let Some(f) = self.function(addr) else {
            let nvme: Vec<String> = self.nvme_functions().iter().map(describe).collect();
            let have = if nvme.is_empty() {
                "this machine has no NVMe functions".to_string()
            } else {
                format!("NVMe functions here: {}", nvme.join(", "))
            };
            return Err(Error::Transport(format!(
                "PCI device {addr} not found ({} does not exist); {have}. List them with `nvme-setup status` or `lspci -D -d ::0108`",
                self.device_dir(addr).display()
            )));
        };
        match f.driver.as_deref() {
            Some("vfio-pci") => {}
            Some("nvme") => {
                return Err(Error::Transport(format!(
                    "{addr} is bound to the kernel nvme driver; bind it to vfio-pci first (this detaches its block devices): \
                     `nvme-setup bind {addr}` (or: modprobe vfio-pci; echo vfio-pci > {dir}/driver_override; \
                     echo {addr} > {dir}/driver/unbind; echo {addr} > /sys/bus/pci/drivers_probe)",
                    dir = self.device_dir(addr).display()
                )))
            }
            Some(other) => {
                return Err(Error::Transport(format!(
                    "{addr} is bound to the {other} driver, not vfio-pci; bind it with `nvme-setup bind {addr}`"
                )))
            }
            None => {
                let load = if self.vfio_pci_loaded() { "" } else { "modprobe vfio-pci, then " };
                return Err(Error::Transport(format!(
                    "{addr} is not bound to any driver; {load}bind it to vfio-pci: `nvme-setup bind {addr}`"
                )));
            }
        }
        if !f.is_nvme() {
            return Err(Error::Transport(format!(
                "{addr} is not an NVMe controller (PCI class {:06x}, expected {NVME_CLASS:06x}); check the address with `lspci -D -s {addr}`",
                f.class
            )));
        }
        let Some(group) = f.iommu_group else {
            return Err(Error::Transport(no_iommu_message(addr)));
        };
        Ok(group)
    }

    /// NVMe functions bound to vfio-pci.
    pub fn vfio_nvme_functions(&self) -> Vec<PciAddress> {
        self.nvme_functions()
            .into_iter()
            .filter(PciFunction::is_vfio)
            .map(|f| f.addr)
            .collect()
    }

    /// The message for a group that VFIO reports not viable: which devices share it and
    /// what to do with them.
    pub fn not_viable_message(&self, addr: &PciAddress, group: u32) -> String {
        let me = addr.to_string();
        let others: Vec<String> = self
            .group_devices(group)
            .into_iter()
            .filter(|(n, _)| *n != me)
            .filter(|(_, d)| d.as_deref() != Some("vfio-pci") && d.as_deref() != Some("pcieport"))
            .map(|(n, d)| format!("{n} (driver {})", d.as_deref().unwrap_or("none")))
            .collect();
        format!(
            "IOMMU group {group} of {addr} is not viable: every device in a group must be bound to vfio-pci (or to no driver) \
             before VFIO lets one of them be used. Other devices in group {group} still bound to a host driver: {}. \
             Bind them with `nvme-setup bind <addr>` or unbind them (echo <addr> > /sys/bus/pci/devices/<addr>/driver/unbind), \
             or move the controller to a slot with its own group",
            if others.is_empty() { "none found in sysfs (check /sys/kernel/iommu_groups/N/devices)".to_string() } else { others.join(", ") }
        )
    }

    /// Binds `addr` to `driver` (`vfio-pci`, or `None` to give it back to whichever kernel
    /// driver claims it, normally `nvme`) through `driver_override` and `drivers_probe`.
    pub fn bind(&self, addr: &PciAddress, driver: Option<&str>) -> io::Result<()> {
        let dir = self.device_dir(addr);
        if !dir.exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("PCI device {addr} not found"),
            ));
        }
        let write = |p: PathBuf, v: &str| {
            fs::write(&p, v).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("writing '{}' to {}: {e}", v.trim(), p.display()),
                )
            })
        };
        write(
            dir.join("driver_override"),
            &format!("{}\n", driver.unwrap_or("")),
        )?;
        if let Some(cur) = link_name(&dir.join("driver")) {
            if Some(cur.as_str()) == driver {
                return Ok(());
            }
            write(dir.join("driver/unbind"), &addr.to_string())?;
        }
        // drivers_probe fails with an error when no driver takes the device; check below.
        let _ = write(self.path("/sys/bus/pci/drivers_probe"), &addr.to_string());
        if let Some(want) = driver {
            let now = link_name(&dir.join("driver"));
            if now.as_deref() != Some(want) {
                let hint = if want == "vfio-pci" && !self.vfio_pci_loaded() {
                    " (vfio-pci is not loaded: modprobe vfio-pci)"
                } else {
                    ""
                };
                return Err(io::Error::other(format!(
                    "{addr} did not bind to {want}{hint}; it is bound to {}",
                    now.as_deref().unwrap_or("no driver")
                )));
            }
        }
        Ok(())
    }

    /// Free and total 2 MiB hugepages (from `/proc/meminfo`).
    pub fn hugepages(&self) -> Option<(u64, u64)> {
        let s = fs::read_to_string(self.path("/proc/meminfo")).ok()?;
        let get = |k: &str| {
            s.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        Some((get("HugePages_Free:")?, get("HugePages_Total:")?))
    }
}

/// `0000:00:04.0 (1b36:0010, driver nvme)`.
pub fn describe(f: &PciFunction) -> String {
    format!(
        "{} ({:04x}:{:04x}, driver {})",
        f.addr,
        f.vendor,
        f.device,
        f.driver.as_deref().unwrap_or("none")
    )
}

fn no_iommu_message(addr: &PciAddress) -> String {
    format!(
        "no IOMMU: {addr} has no iommu_group, so VFIO cannot isolate it. Enable the IOMMU: VT-d / AMD-Vi in the firmware \
         and `intel_iommu=on` (Intel) or `amd_iommu=on` (AMD) on the kernel command line, then reboot; in a QEMU guest add \
         `-device intel-iommu,intremap=on,caching-mode=on` with `-machine q35`. /sys/kernel/iommu_groups must not be empty"
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fake sysfs tree in a fresh temporary directory.
    pub(crate) struct FakeSys {
        pub(crate) root: PathBuf,
    }

    impl FakeSys {
        pub(crate) fn new(name: &str) -> FakeSys {
            let root =
                std::env::temp_dir().join(format!("nvme-fake-sysfs-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&root);
            for d in [
                "sys/bus/pci/devices",
                "sys/bus/pci/drivers/nvme",
                "sys/kernel/iommu_groups",
                "sys/devices/pci0000:00",
                "proc",
                "dev/vfio",
            ] {
                fs::create_dir_all(root.join(d)).unwrap();
            }
            fs::write(
                root.join("proc/meminfo"),
                "MemTotal: 1000 kB\nHugePages_Total:      64\nHugePages_Free:       60\n",
            )
            .unwrap();
            FakeSys { root }
        }
        pub(crate) fn driver(&self, name: &str) {
            fs::create_dir_all(self.root.join("sys/bus/pci/drivers").join(name)).unwrap();
        }
        pub(crate) fn add(&self, addr: &str, class: u32, driver: Option<&str>, group: Option<u32>) {
            let real = self.root.join("sys/devices/pci0000:00").join(addr);
            fs::create_dir_all(&real).unwrap();
            fs::write(real.join("class"), format!("0x{class:06x}\n")).unwrap();
            fs::write(real.join("vendor"), "0x1b36\n").unwrap();
            fs::write(real.join("device"), "0x0010\n").unwrap();
            fs::write(real.join("driver_override"), "(null)\n").unwrap();
            symlink(&real, self.root.join("sys/bus/pci/devices").join(addr)).unwrap();
            if let Some(d) = driver {
                self.driver(d);
                symlink(
                    self.root.join("sys/bus/pci/drivers").join(d),
                    real.join("driver"),
                )
                .unwrap();
            }
            if let Some(g) = group {
                let gdir = self
                    .root
                    .join("sys/kernel/iommu_groups")
                    .join(g.to_string());
                fs::create_dir_all(gdir.join("devices")).unwrap();
                symlink(&gdir, real.join("iommu_group")).unwrap();
                symlink(&real, gdir.join("devices").join(addr)).unwrap();
            }
        }
        pub(crate) fn sysfs(&self) -> Sysfs {
            Sysfs::with_root(&self.root)
        }
    }

    impl Drop for FakeSys {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.root);
        }
    }

    fn a(s: &str) -> PciAddress {
        s.parse().unwrap()
    }

    #[test]
    fn lists_functions_and_finds_vfio_nvme() {
        let fake = FakeSys::new("list");
        fake.add("0000:00:04.0", NVME_CLASS, Some("vfio-pci"), Some(3));
        fake.add("0000:00:05.0", NVME_CLASS, Some("nvme"), Some(4));
        fake.add("0000:00:01.0", 0x030000, None, Some(1));
        let s = fake.sysfs();
        assert_eq!(s.functions().len(), 3);
        let nvme = s.nvme_functions();
        assert_eq!(
            nvme.iter().map(|f| f.addr.to_string()).collect::<Vec<_>>(),
            ["0000:00:04.0", "0000:00:05.0"]
        );
        assert_eq!(nvme[0].iommu_group, Some(3));
        assert_eq!((nvme[0].vendor, nvme[0].device), (0x1b36, 0x0010));
        assert_eq!(s.vfio_nvme_functions(), vec![a("0000:00:04.0")]);
        assert_eq!(s.check_vfio(&a("0000:00:04.0")).unwrap(), 3);
        assert!(s.iommu_active());
        assert_eq!(s.hugepages(), Some((60, 64)));
    }

    #[test]
    fn preflight_errors_say_what_to_do() {
        let fake = FakeSys::new("errors");
        fake.add("0000:00:05.0", NVME_CLASS, Some("nvme"), Some(4));
        fake.add("0000:00:06.0", NVME_CLASS, None, None);
        fake.add("0000:00:07.0", 0x020000, Some("vfio-pci"), Some(7));
        fake.add("0000:00:08.0", NVME_CLASS, Some("vfio-pci"), None);
        let s = fake.sysfs();
        let e = s.check_vfio(&a("0000:09:00.0")).unwrap_err().to_string();
        assert!(
            e.contains("PCI device 0000:09:00.0 not found")
                && e.contains("0000:00:05.0 (1b36:0010, driver nvme)"),
            "{e}"
        );
        let e = s.check_vfio(&a("0000:00:05.0")).unwrap_err().to_string();
        assert!(
            e.contains("bound to the kernel nvme driver")
                && e.contains("nvme-setup bind 0000:00:05.0"),
            "{e}"
        );
        let e = s.check_vfio(&a("0000:00:06.0")).unwrap_err().to_string();
        assert!(
            e.contains("not bound to any driver") && e.contains("nvme-setup bind 0000:00:06.0"),
            "{e}"
        );
        let e = s.check_vfio(&a("0000:00:07.0")).unwrap_err().to_string();
        assert!(e.contains("not an NVMe controller"), "{e}");
        let e = s.check_vfio(&a("0000:00:08.0")).unwrap_err().to_string();
        assert!(
            e.contains("no IOMMU") && e.contains("intel_iommu=on"),
            "{e}"
        );
    }

    #[test]
    fn not_viable_names_the_other_devices() {
        let fake = FakeSys::new("viable");
        fake.add("0000:00:04.0", NVME_CLASS, Some("vfio-pci"), Some(3));
        let real = fake.root.join("sys/devices/pci0000:00/0000:00:04.1");
        fs::create_dir_all(&real).unwrap();
        fake.driver("e1000e");
        symlink(
            fake.root.join("sys/bus/pci/drivers/e1000e"),
            real.join("driver"),
        )
        .unwrap();
        symlink(
            &real,
            fake.root
                .join("sys/kernel/iommu_groups/3/devices/0000:00:04.1"),
        )
        .unwrap();
        let m = fake.sysfs().not_viable_message(&a("0000:00:04.0"), 3);
        assert!(
            m.contains("0000:00:04.1 (driver e1000e)") && !m.contains("0000:00:04.0 ("),
            "{m}"
        );
    }

    #[test]
    fn bind_writes_override_and_unbinds() {
        let fake = FakeSys::new("bind");
        fake.add("0000:00:05.0", NVME_CLASS, Some("nvme"), Some(4));
        // The fake kernel does not rebind; bind reports that honestly.
        let e = fake
            .sysfs()
            .bind(&a("0000:00:05.0"), Some("vfio-pci"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("writing '0000:00:05.0'") || e.contains("did not bind to vfio-pci"),
            "{e}"
        );
        let ov = fs::read_to_string(
            fake.root
                .join("sys/bus/pci/devices/0000:00:05.0/driver_override"),
        )
        .unwrap();
        assert_eq!(ov, "vfio-pci\n");
        assert!(fake.sysfs().bind(&a("0000:01:00.0"), None).is_err());
    }
}
