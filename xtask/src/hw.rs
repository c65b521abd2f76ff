//! The hardware test suite: the driver against QEMU's NVMe controller through VFIO in a VM,
//! or against a real device by PCI address (`cargo xtask test-hw --device BDF`).
//!
//! The VM run (default):
//! 1. builds `nvme-hwtest` as a static binary (own target directory, so the normal build is
//!    not invalidated);
//! 2. builds an initramfs from the machine's Debian kernel modules (vfio, vfio-pci, nvme and
//!    their dependencies), busybox-static and that binary, with an `/init` script;
//! 3. boots QEMU (q35, virtual Intel IOMMU with its default 39-bit address width, TCG unless
//!    `--accel kvm`) with one NVMe controller (serial `deadbeef`) and three namespaces:
//!    512 B file-backed, 4 KiB file-backed, 4 KiB null-co;
//! 4. in the guest: binds the controller to vfio-pci, checks some attach errors for real,
//!    runs the suite, rebinds the controller to the kernel's nvme driver and reads back what
//!    the suite wrote through `/dev/nvme0nX`;
//! 5. parses the serial console: any `FAIL` line, a missing summary, or a guest that does not
//!    finish within the timeout fails the run (the full console log is printed then); the
//!    read-back blocks are also checked in the disk images on the host.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::cargo;

/// Debian packages the VM run needs (`.ci/run` installs them).
const PACKAGES: &str = "qemu-system-x86 linux-image-amd64 busybox-static cpio";

/// Kernel modules for VFIO, then for the kernel-driver read-back (dependencies are added
/// from modules.dep).
const VFIO_MODULES: &[&str] = &["vfio_iommu_type1", "vfio-pci"];
const NVME_MODULES: &[&str] = &["nvme"];

/// Options of `cargo xtask test-hw`.
#[derive(Debug, Clone, PartialEq)]
struct Opts {
    device: Option<String>,
    write_ns: Vec<u32>,
    accel: String,
    timeout: Duration,
    aw_bits: Option<u32>,
    keep: bool,
}

const USAGE: &str = "usage: cargo xtask test-hw [--accel tcg|kvm] [--timeout SECS] [--aw-bits 39|48] [--keep]\n       \
cargo xtask test-hw --device 0000:bb:dd.f [--write-ns NSID]...\n\
Without --device: boots a QEMU VM with an emulated NVMe controller behind a virtual IOMMU and runs the suite there.\n\
With --device: runs the suite on the host against a real controller bound to vfio-pci (`nvme-setup bind BDF`).\n\
Writing tests run only on namespaces named with --write-ns: they DESTROY the data there.";

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        device: None,
        write_ns: Vec::new(),
        accel: "tcg".into(),
        timeout: Duration::from_secs(300),
        aw_bits: None,
        keep: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = |n: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{n} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--device" => o.device = Some(val("--device")?),
            "--write-ns" => {
                let v = val("--write-ns")?;
                o.write_ns.push(
                    v.parse()
                        .map_err(|_| format!("--write-ns {v}: expected a namespace id"))?,
                );
            }
            "--accel" => {
                o.accel = val("--accel")?;
                if o.accel != "tcg" && o.accel != "kvm" {
                    return Err(format!("--accel {}: expected tcg or kvm", o.accel));
                }
            }
            "--timeout" => {
                let v = val("--timeout")?;
                o.timeout = Duration::from_secs(
                    v.parse()
                        .map_err(|_| format!("--timeout {v}: expected seconds"))?,
                );
            }
            "--aw-bits" => {
                let v = val("--aw-bits")?;
                o.aw_bits = Some(v.parse().ok().filter(|b| *b == 39 || *b == 48).ok_or(
                    format!("--aw-bits {v}: QEMU's intel-iommu accepts 39 or 48"),
                )?);
            }
            "--keep" => o.keep = true,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument '{other}'\n{USAGE}")),
        }
    }
    if o.device.is_none() && !o.write_ns.is_empty() {
        return Err(
            "--write-ns is for --device runs (the VM's namespaces are always written)".into(),
        );
    }
    Ok(o)
}

/// Runs the hardware suite with the arguments given after `cargo xtask test-hw`.
pub fn test_hw(args: &[String]) -> Result<(), String> {
    let o = parse(args)?;
    match &o.device {
        Some(bdf) => real_device(bdf, &o.write_ns),
        None => vm(&o),
    }
}

/// Whether `cargo xtask test` runs the hardware suite (with no arguments) as its last step.
/// On: the VM run passes reliably on the CI machines (TCG, about 15-25 s for boot, suite and
/// read-back) and `.ci/run` installs its packages. Where they are missing, the step fails
/// with a message that says what to install (or use `--skip-hw`).
pub fn ci_step_enabled() -> bool {
    true
}

fn real_device(bdf: &str, write_ns: &[u32]) -> Result<(), String> {
    cargo::cargo(&["build", "--release", "-p", "nvme-hwtest"], &[])?;
    let bin = cargo::target_dir().join("release/nvme-hwtest");
    let mut cmd = Command::new(&bin);
    cmd.args(["--device", bdf]);
    for n in write_ns {
        cmd.args(["--write-ns", &n.to_string()]);
    }
    if write_ns.is_empty() {
        println!("read-only run: pass --write-ns NSID to run the writing tests on a namespace whose data may be destroyed");
    }
    println!("$ {cmd:?}");
    let out = cmd
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", bin.display()))?;
    let mut log = String::new();
    for line in BufReader::new(out.stdout.expect("piped")).lines() {
        let line = line.map_err(|e| e.to_string())?;
        println!("{line}");
        log.push_str(&line);
        log.push('\n');
    }
    let r = check_log(&log, false);
    r.map(|s| println!("hardware suite on {bdf}: {s}"))
}

/// What the console log says: `Ok(summary)` or why it failed.
fn check_log(log: &str, vm: bool) -> Result<String, String> {
    let fails: Vec<&str> = log
        .lines()
        .map(|l| l.trim_start_matches(['\r', ' ']))
        .filter(|l| l.starts_with("FAIL ") || l.starts_with("HWTEST-INIT FAIL"))
        .collect();
    let summary = log
        .lines()
        .find_map(|l| l.trim().strip_prefix("HWTEST SUMMARY "));
    let Some(summary) = summary else {
        return Err(format!(
            "the suite printed no summary line (it crashed or the guest stopped early){}",
            if fails.is_empty() {
                String::new()
            } else {
                format!("; failures: {}", fails.join(" | "))
            }
        ));
    };
    let mut out = format!("suite: {summary}");
    if vm {
        let Some(verify) = log
            .lines()
            .find_map(|l| l.trim().strip_prefix("HWTEST VERIFY "))
        else {
            return Err(format!(
                "no kernel read-back result (HWTEST VERIFY line missing); {out}"
            ));
        };
        out.push_str(&format!("; kernel read-back: {verify}"));
        if !log.lines().any(|l| l.trim() == "HWTEST-INIT done") {
            return Err(format!("the guest did not reach the end of /init; {out}"));
        }
    }
    if !fails.is_empty() {
        return Err(format!(
            "{} failure(s): {}; {out}",
            fails.len(),
            fails.join(" | ")
        ));
    }
    if !summary.contains("failed=0") {
        return Err(out);
    }
    Ok(out)
}

/// The newest `/boot/vmlinuz-<ver>` that has `/lib/modules/<ver>/modules.dep`.
fn find_kernel() -> Result<(PathBuf, PathBuf), String> {
    let mut found = Vec::new();
    for e in fs::read_dir("/boot").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(ver) = name.strip_prefix("vmlinuz-") {
            let mods = Path::new("/lib/modules").join(ver);
            if mods.join("modules.dep").exists() {
                found.push((ver.to_string(), e.path(), mods));
            }
        }
    }
    found.sort_by_key(|a| version_key(&a.0));
    found
        .pop()
        .map(|(_, k, m)| (k, m))
        .ok_or_else(|| "no /boot/vmlinuz-<version> with matching /lib/modules/<version>".into())
}

fn version_key(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Is this ELF file statically linked (no PT_INTERP program header)?
fn is_static_elf(path: &Path) -> bool {
    let Ok(b) = fs::read(path) else { return false };
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[32..40].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        o + 4 <= b.len() && u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) != 3
    })
}

fn which(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(prog))
        .find(|p| p.is_file())
}

/// Checks everything the VM run needs, and says what to install.
fn prerequisites() -> Result<(PathBuf, PathBuf, PathBuf, PathBuf), String> {
    let mut missing = Vec::new();
    let qemu = which("qemu-system-x86_64");
    if qemu.is_none() {
        missing.push("qemu-system-x86_64 (package qemu-system-x86)".to_string());
    }
    if which("cpio").is_none() {
        missing.push("cpio (package cpio)".to_string());
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| is_static_elf(p));
    if busybox.is_none() {
        missing.push("a static busybox (package busybox-static)".to_string());
    }
    let kernel = find_kernel();
    if let Err(e) = &kernel {
        missing.push(format!(
            "a kernel with modules: {e} (package linux-image-amd64)"
        ));
    }
    if !missing.is_empty() {
        return Err(format!(
            "the hardware test VM needs: {}. Install them: apt-get install {PACKAGES} \
             (as root; .ci/run installs them in CI), or skip this step with `cargo xtask test --skip-hw`",
            missing.join(", ")
        ));
    }
    let (k, m) = kernel.expect("checked");
    if fs::File::open(&k).is_err() {
        return Err(format!(
            "cannot read {} (Debian installs kernels readable by root only): run as root, or \
             `sudo chmod a+r {}`",
            k.display(),
            k.display()
        ));
    }
    Ok((qemu.expect("checked"), busybox.expect("checked"), k, m))
}

/// The module files for `names` and everything they depend on, in load order.
fn module_closure(
    moddir: &Path,
    names: &[&str],
    skip: &BTreeSet<String>,
) -> Result<Vec<PathBuf>, String> {
    let dep = fs::read_to_string(moddir.join("modules.dep"))
        .map_err(|e| format!("reading {}/modules.dep: {e}", moddir.display()))?;
    let deps: Vec<(String, Vec<String>)> = dep
        .lines()
        .filter_map(|l| {
            let (m, d) = l.split_once(':')?;
            Some((
                m.trim().to_string(),
                d.split_whitespace().map(String::from).collect(),
            ))
        })
        .collect();
    let stem = |p: &str| {
        Path::new(p)
            .file_name()
            .map(|n| {
                n.to_string_lossy()
                    .split('.')
                    .next()
                    .unwrap_or("")
                    .replace('_', "-")
            })
            .unwrap_or_default()
    };
    let builtin = fs::read_to_string(moddir.join("modules.builtin")).unwrap_or_default();
    let mut order: Vec<String> = Vec::new();
    for name in names {
        let want = name.replace('_', "-");
        let Some((m, d)) = deps.iter().find(|(m, _)| stem(m) == want) else {
            if builtin.lines().any(|l| stem(l) == want) {
                continue;
            }
            return Err(format!(
                "module {name} not found in {}/modules.dep",
                moddir.display()
            ));
        };
        // modules.dep lists dependencies so that the last must load first.
        for x in d.iter().rev().chain(std::iter::once(m)) {
            if !order.contains(x) && !skip.contains(x) {
                order.push(x.clone());
            }
        }
    }
    Ok(order.iter().map(|m| moddir.join(m)).collect())
}

const INIT: &str = r#"#!/bin/busybox sh
# /init of the hardware-test guest (generated by xtask/src/hw.rs).
/bin/busybox mkdir -p /proc /sys /dev /tmp /etc
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
finish() { echo "HWTEST-INIT done"; sync; poweroff -f; }
fail() { echo "HWTEST-INIT FAIL: $*"; finish; }
echo "HWTEST-INIT start: kernel $(uname -r), $(nproc) CPUs, $(grep HugePages_Total /proc/meminfo)"
for m in $(cat /modules-vfio); do insmod /lib/modules/$m || fail "insmod $m"; done
bdf=""
for d in /sys/bus/pci/devices/*; do
    if [ "$(cat $d/class)" = "0x010802" ]; then bdf=$(basename $d); break; fi
done
[ -n "$bdf" ] || fail "no NVMe controller (PCI class 0x010802) in the guest"
dev=/sys/bus/pci/devices/$bdf
[ -e $dev/iommu_group ] || fail "$bdf has no IOMMU group: is the virtual IOMMU missing?"
group=$(basename $(readlink $dev/iommu_group))

# Attach errors, for real: a device that does not exist, one bound to no driver.
/bin/nvme-hwtest --device 0000:0f:00.0 --expect-attach-error "not found"
/bin/nvme-hwtest --device $bdf --expect-attach-error "not bound to any driver"

/bin/nvme-setup bind $bdf || fail "nvme-setup bind $bdf"
[ "$(basename $(readlink $dev/driver))" = vfio-pci ] || fail "$bdf did not bind to vfio-pci"
/bin/nvme-setup status
echo "HWTEST-INIT $bdf bound to vfio-pci, IOMMU group $group, /dev/vfio: $(ls /dev/vfio | tr '\n' ' ')"

# Permission denied on /dev/vfio/N, and too little locked memory, as an unprivileged user.
chmod 0600 /dev/vfio/$group
/bin/nvme-hwtest --as-uid 65534 --device $bdf --expect-attach-error "permission denied"
chown 65534 /dev/vfio/$group
(ulimit -l 64; /bin/nvme-hwtest --as-uid 65534 --device $bdf --expect-attach-error "locked-memory limit")
chown 0 /dev/vfio/$group

/bin/nvme-hwtest --device $bdf $(cat /hwtest.args) --manifest /tmp/readback
echo "HWTEST-INIT suite exited with status $?"

# Give the controller back to the kernel's nvme driver and read back through it.
for m in $(cat /modules-nvme); do insmod /lib/modules/$m || fail "insmod $m"; done
/bin/nvme-setup unbind $bdf || fail "nvme-setup unbind $bdf"
echo "HWTEST-INIT $bdf now bound to $(basename $(readlink $dev/driver 2>/dev/null || echo none))"
/bin/nvme-hwtest --device $bdf --expect-attach-error "bound to the kernel nvme driver"
/bin/nvme-hwtest --verify-kernel /tmp/readback --device $bdf
finish
"#;

/// Runs a shell pipeline, for cpio.
fn sh(script: &str, dir: &Path) -> Result<(), String> {
    let st = Command::new("sh")
        .args(["-c", script])
        .current_dir(dir)
        .status()
        .map_err(|e| format!("sh -c '{script}': {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("sh -c '{script}' failed ({st})"))
    }
}

fn copy(from: &Path, to: &Path) -> Result<(), String> {
    fs::copy(from, to)
        .map(|_| ())
        .map_err(|e| format!("copying {} to {}: {e}", from.display(), to.display()))
}

/// Namespaces of the VM: (nsid, block size, bytes, file-backed).
const NAMESPACES: [(u32, u32, u64, bool); 3] = [
    (1, 512, 128 << 20, true),
    (2, 4096, 64 << 20, true),
    (3, 4096, 1 << 30, false),
];

fn vm(o: &Opts) -> Result<(), String> {
    let (qemu, busybox, kernel, moddir) = prerequisites()?;
    let qemu_version = Command::new(&qemu)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(String::from))
        .unwrap_or_default();
    println!("kernel {}, {qemu_version}", kernel.display());

    // 1. The static suite binary.
    let static_dir = cargo::target_dir().join("hwtest-static");
    let static_dir_s = static_dir.to_string_lossy().into_owned();
    cargo::cargo(
        &[
            "build",
            "--release",
            "-p",
            "nvme-hwtest",
            "-p",
            "nvme-tools",
            "--bin",
            "nvme-hwtest",
            "--bin",
            "nvme-setup",
            "--target",
            "x86_64-unknown-linux-gnu",
        ],
        &[
            ("RUSTFLAGS", "-C target-feature=+crt-static"),
            ("CARGO_TARGET_DIR", &static_dir_s),
            ("CARGO_PROFILE_RELEASE_DEBUG", "0"),
            ("CARGO_PROFILE_RELEASE_STRIP", "symbols"),
        ],
    )?;
    let bin = static_dir.join("x86_64-unknown-linux-gnu/release/nvme-hwtest");
    let setup = static_dir.join("x86_64-unknown-linux-gnu/release/nvme-setup");
    for b in [&bin, &setup] {
        if !is_static_elf(b) {
            return Err(format!("{} is not statically linked", b.display()));
        }
    }

    // 2. The initramfs.
    let work = cargo::target_dir().join("hwtest-vm");
    let _ = fs::remove_dir_all(&work);
    let root = work.join("root");
    for d in ["bin", "lib/modules", "proc", "sys", "dev", "tmp", "etc"] {
        fs::create_dir_all(root.join(d)).map_err(|e| format!("creating {d}: {e}"))?;
    }
    copy(&busybox, &root.join("bin/busybox"))?;
    copy(&bin, &root.join("bin/nvme-hwtest"))?;
    copy(&setup, &root.join("bin/nvme-setup"))?;
    let vfio = module_closure(&moddir, VFIO_MODULES, &BTreeSet::new())?;
    let loaded: BTreeSet<String> = vfio
        .iter()
        .map(|p| {
            p.strip_prefix(&moddir)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let nvme = module_closure(&moddir, NVME_MODULES, &loaded)?;
    let mut lists = (String::new(), String::new());
    for (mods, list) in [(&vfio, &mut lists.0), (&nvme, &mut lists.1)] {
        for m in mods {
            let name = m.file_name().unwrap().to_string_lossy().into_owned();
            let name = if let Some(base) = name.strip_suffix(".xz") {
                sh(
                    &format!(
                        "xz -dc '{}' > '{}'",
                        m.display(),
                        root.join("lib/modules").join(base).display()
                    ),
                    &work,
                )?;
                base.to_string()
            } else if let Some(base) = name.strip_suffix(".zst") {
                sh(
                    &format!(
                        "zstd -dc '{}' > '{}'",
                        m.display(),
                        root.join("lib/modules").join(base).display()
                    ),
                    &work,
                )?;
                base.to_string()
            } else {
                copy(m, &root.join("lib/modules").join(&name))?;
                name
            };
            list.push_str(&name);
            list.push('\n');
        }
    }
    let write =
        |p: &str, s: &str| fs::write(root.join(p), s).map_err(|e| format!("writing {p}: {e}"));
    write("modules-vfio", &lists.0)?;
    write("modules-nvme", &lists.1)?;
    write("init", INIT)?;
    sh(
        "chmod 755 init bin/busybox bin/nvme-hwtest bin/nvme-setup",
        &root,
    )?;
    let mut args = String::from("--expect-serial deadbeef");
    for (nsid, bs, bytes, file) in NAMESPACES {
        args.push_str(&format!(" --expect-ns {nsid}:{bs}:{}", bytes / bs as u64));
        if file {
            args.push_str(&format!(" --write-ns {nsid}"));
        }
    }
    write("hwtest.args", &args)?;
    sh(
        "find . | cpio -o -H newc -R 0:0 --quiet > ../initramfs.cpio",
        &root,
    )?;

    // 3. Disk images (fresh, sparse) and QEMU.
    let mut q = Command::new(&qemu);
    let machine = if o.accel == "kvm" {
        "q35,accel=kvm"
    } else {
        "q35,accel=tcg"
    };
    let cpu = if o.accel == "kvm" { "host" } else { "max" };
    let iommu = match o.aw_bits {
        Some(b) => format!("intel-iommu,intremap=on,caching-mode=on,aw-bits={b}"),
        None => "intel-iommu,intremap=on,caching-mode=on".to_string(),
    };
    q.args(["-machine", machine, "-cpu", cpu, "-m", "1024", "-smp", "2"]);
    q.args(["-nographic", "-no-reboot", "-device", &iommu]);
    q.arg("-kernel").arg(&kernel);
    q.arg("-initrd").arg(work.join("initramfs.cpio"));
    q.args([
        "-append",
        "console=ttyS0 intel_iommu=on iommu=pt quiet panic=-1 hugepages=64",
    ]);
    q.args(["-device", "nvme,serial=deadbeef,id=nvme0"]);
    let mut images = Vec::new();
    for (nsid, bs, bytes, file) in NAMESPACES {
        let drive = if file {
            let img = work.join(format!("ns{nsid}.img"));
            fs::File::create(&img)
                .and_then(|f| f.set_len(bytes))
                .map_err(|e| format!("creating {}: {e}", img.display()))?;
            let d = format!(
                "file={},if=none,id=d{nsid},format=raw,discard=unmap",
                img.display()
            );
            images.push((nsid, img));
            d
        } else {
            format!("driver=null-co,size={bytes},read-zeroes=on,if=none,id=d{nsid}")
        };
        q.args(["-drive", &drive]);
        q.args([
            "-device",
            &format!("nvme-ns,drive=d{nsid},nsid={nsid},logical_block_size={bs},physical_block_size={bs}"),
        ]);
    }
    q.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    println!("$ {q:?}");
    let start = Instant::now();
    let mut child = q
        .spawn()
        .map_err(|e| format!("starting {}: {e}", qemu.display()))?;
    let (tx, rx) = mpsc::channel::<String>();
    let out = child.stdout.take().expect("piped");
    let err = child.stderr.take().expect("piped");
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx2.send(format!("qemu stderr: {l}"));
        }
    });
    let mut log = String::new();
    let mut timed_out = false;
    loop {
        let left = o.timeout.saturating_sub(start.elapsed());
        match rx.recv_timeout(left.min(Duration::from_millis(500))) {
            Ok(l) => {
                let l = l.trim_end_matches('\r').to_string();
                let shown = l.trim_start();
                if [
                    "PASS ",
                    "FAIL ",
                    "SKIP ",
                    "HWTEST",
                    "qemu stderr",
                    "nvme-setup",
                    "0000:",
                ]
                .iter()
                .any(|p| shown.starts_with(p))
                    || l.starts_with("  ")
                {
                    println!("guest| {l}");
                }
                log.push_str(&l);
                log.push('\n');
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if start.elapsed() >= o.timeout {
                    timed_out = true;
                    let _ = child.kill();
                    break;
                }
            }
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    let took = start.elapsed();
    let _ = fs::write(work.join("console.log"), &log);
    let mut result = if timed_out {
        Err(format!(
            "the guest did not finish within {} s (hung?); QEMU killed",
            o.timeout.as_secs()
        ))
    } else {
        check_log(&log, true)
    };
    if result.is_ok() {
        if let Err(e) = check_images(&log, &images) {
            result = Err(e);
        }
    }
    if result.is_ok() && !status.success() {
        result = Err(format!("QEMU exited with {status}"));
    }
    match result {
        Ok(s) => {
            println!(
                "hardware suite in the VM: {s}; boot + suite + read-back took {:.1} s ({})",
                took.as_secs_f64(),
                o.accel
            );
            if !o.keep {
                let _ = fs::remove_dir_all(&work);
            }
            Ok(())
        }
        Err(e) => {
            println!(
                "----- guest console log ({}) -----",
                work.join("console.log").display()
            );
            print!("{log}");
            println!("----- end of guest console log -----");
            Err(e)
        }
    }
}

/// Checks the read-back blocks a third way: in QEMU's disk images on the host.
fn check_images(log: &str, images: &[(u32, PathBuf)]) -> Result<(), String> {
    let mut checked = 0;
    for l in log.lines() {
        let Some(rest) = l.trim().strip_prefix("HWTEST READBACK ") else {
            continue;
        };
        let kv: Vec<(&str, &str)> = rest
            .split_whitespace()
            .filter_map(|p| p.split_once('='))
            .collect();
        let get = |k: &str| kv.iter().find(|(a, _)| *a == k).map(|(_, v)| *v);
        let bad = || format!("bad read-back line '{l}'");
        let nsid: u32 = get("ns").and_then(|v| v.parse().ok()).ok_or_else(bad)?;
        let lba: u64 = get("lba").and_then(|v| v.parse().ok()).ok_or_else(bad)?;
        let blocks: u64 = get("blocks").and_then(|v| v.parse().ok()).ok_or_else(bad)?;
        let bs: u64 = get("bs").and_then(|v| v.parse().ok()).ok_or_else(bad)?;
        let fnv = get("fnv")
            .and_then(|v| u64::from_str_radix(v, 16).ok())
            .ok_or_else(bad)?;
        let Some((_, img)) = images.iter().find(|(n, _)| *n == nsid) else {
            continue;
        };
        let mut f = fs::File::open(img).map_err(|e| format!("{}: {e}", img.display()))?;
        let mut buf = vec![0u8; (blocks * bs) as usize];
        f.seek(SeekFrom::Start(lba * bs))
            .and_then(|_| f.read_exact(&mut buf))
            .map_err(|e| format!("reading {}: {e}", img.display()))?;
        let sum = buf.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        if sum != fnv {
            return Err(format!(
                "disk image {} at LBA {lba} ({blocks} blocks): checksum {sum:016x}, the guest wrote {fnv:016x}",
                img.display()
            ));
        }
        checked += 1;
    }
    if checked == 0 {
        return Err("no read-back blocks reported by the guest (HWTEST READBACK lines)".into());
    }
    println!("host check: {checked} read-back ranges match in the disk images");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn parses_options() {
        let o = parse(&[]).unwrap();
        assert_eq!(
            (o.accel.as_str(), o.timeout.as_secs(), o.device.is_none()),
            ("tcg", 300, true)
        );
        let o = parse(&s(&["--device", "0000:01:00.0", "--write-ns", "2"])).unwrap();
        assert_eq!(o.write_ns, [2]);
        assert!(parse(&s(&["--write-ns", "1"])).is_err());
        assert!(parse(&s(&["--accel", "hvf"])).is_err());
        assert!(parse(&s(&["--aw-bits", "40"])).is_err());
    }

    #[test]
    fn log_checks() {
        let good = "PASS a (1 ms)\nHWTEST SUMMARY passed=1 failed=0 skipped=0\nPASS k\nHWTEST VERIFY passed=1 failed=0\nHWTEST-INIT done\n";
        assert!(check_log(good, true).is_ok());
        assert!(check_log(&good.replace("PASS a", "FAIL a: x"), true)
            .unwrap_err()
            .contains("FAIL a: x"));
        assert!(check_log("PASS a\n", true)
            .unwrap_err()
            .contains("no summary"));
        assert!(check_log(&good.replace("HWTEST VERIFY", "X"), true)
            .unwrap_err()
            .contains("read-back"));
        assert!(check_log(&good.replace("HWTEST-INIT done", ""), true).is_err());
        assert!(check_log(&good.replace("HWTEST-INIT done", ""), false).is_ok());
    }

    #[test]
    fn versions_sort_numerically() {
        assert!(version_key("6.10.0-1-amd64") > version_key("6.9.0-3-amd64"));
    }
}
