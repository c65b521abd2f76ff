//! The building blocks of a QEMU guest for `test-hw` and `bench-hw`: the options they share,
//! the host prerequisites, static binaries for the guest, a busybox initramfs with the
//! Debian kernel's modules (and dynamic programs with their libraries), the QEMU command line
//! (q35, virtual Intel IOMMU, one NVMe controller) and a run that collects the serial console.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::cargo;

/// Debian packages every VM run needs (`.ci/run` installs them).
pub const PACKAGES: &str = "qemu-system-x86 linux-image-amd64 busybox-static cpio";

/// Options every VM run takes: `--accel`, `--timeout`, `--aw-bits`, `--keep`, `--append`.
#[derive(Debug, Clone, PartialEq)]
pub struct VmOpts {
    /// `tcg` or `kvm`.
    pub accel: String,
    /// The whole guest run (boot to power-off).
    pub timeout: Duration,
    /// The virtual IOMMU's address width (QEMU's default when `None`).
    pub aw_bits: Option<u32>,
    /// Keep the work directory after a successful run.
    pub keep: bool,
    /// Extra kernel command-line arguments (`--append`, e.g. `tsc=reliable`).
    pub append: String,
    /// Put the controller in an NVM subsystem (QEMU's `nvme-subsys` device): then it
    /// supports Namespace Attachment (attach-ns, detach-ns). A guest that loads the kernel's
    /// nvme driver should load `nvme-core` with `multipath=N` (see [`Initramfs::modules`]'s
    /// `params-<module>` files), so that the namespaces' block devices sit under the
    /// controller as without a subsystem.
    pub subsystem: bool,
}

impl VmOpts {
    /// The defaults, with this run's timeout.
    pub fn new(timeout_s: u64) -> Self {
        VmOpts {
            accel: "tcg".into(),
            timeout: Duration::from_secs(timeout_s),
            aw_bits: None,
            keep: false,
            append: String::new(),
            subsystem: false,
        }
    }

    /// Takes `flag` if it is one of the shared options (`val` gives its value): `Ok(true)`
    /// when taken, `Ok(false)` when it is not a shared option.
    pub fn take(
        &mut self,
        flag: &str,
        mut val: impl FnMut(&str) -> Result<String, String>,
    ) -> Result<bool, String> {
        match flag {
            "--accel" => {
                self.accel = val(flag)?;
                if self.accel != "tcg" && self.accel != "kvm" {
                    return Err(format!("--accel {}: expected tcg or kvm", self.accel));
                }
            }
            "--timeout" => {
                let v = val(flag)?;
                self.timeout = Duration::from_secs(
                    v.parse()
                        .map_err(|_| format!("--timeout {v}: expected seconds"))?,
                );
            }
            "--aw-bits" => {
                let v = val(flag)?;
                self.aw_bits = Some(v.parse().ok().filter(|b| *b == 39 || *b == 48).ok_or(
                    format!("--aw-bits {v}: QEMU's intel-iommu accepts 39 or 48"),
                )?);
            }
            "--keep" => self.keep = true,
            "--append" => {
                self.append.push(' ');
                self.append.push_str(&val(flag)?);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// A value-taking option's value, or an error that names the option.
pub type Value<'a> = dyn FnMut(&str) -> Result<String, String> + 'a;

/// Walks a command line: the shared options go to `vm`, `-h`/`--help` returns `usage`, the
/// others go to `own(flag, value)`, which says `Ok(false)` for an option it does not know.
pub fn parse_args(
    args: &[String],
    usage: &str,
    vm: &mut VmOpts,
    mut own: impl FnMut(&str, &mut Value<'_>) -> Result<bool, String>,
) -> Result<(), String> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = |n: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{n} needs a value\n{usage}"))
        };
        if a == "-h" || a == "--help" {
            return Err(usage.into());
        }
        if !vm.take(a, &mut val)? && !own(a, &mut val)? {
            return Err(format!("unknown argument '{a}'\n{usage}"));
        }
    }
    Ok(())
}

/// What the host provides for a VM run.
pub struct Tools {
    pub qemu: PathBuf,
    pub busybox: PathBuf,
    pub kernel: PathBuf,
    pub moddir: PathBuf,
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

pub fn version_key(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Is this ELF file statically linked (no PT_INTERP program header)?
pub fn is_static_elf(path: &Path) -> bool {
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

pub fn which(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(prog))
        .find(|p| p.is_file())
}

/// Checks everything a VM run needs, and says what to install. `extra` are further
/// programs as (name, Debian package); `hint` ends the message (how else to go on).
pub fn prerequisites(extra: &[(&str, &str)], hint: &str) -> Result<Tools, String> {
    let mut missing = Vec::new();
    let mut packages = PACKAGES.to_string();
    let qemu = which("qemu-system-x86_64");
    if qemu.is_none() {
        missing.push("qemu-system-x86_64 (package qemu-system-x86)".to_string());
    }
    for (prog, pkg) in [("cpio", "cpio")].iter().chain(extra) {
        if which(prog).is_none() {
            missing.push(format!("{prog} (package {pkg})"));
        }
        if !packages.split(' ').any(|p| p == *pkg) {
            packages.push(' ');
            packages.push_str(pkg);
        }
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
            "the hardware VM needs: {}. Install them: apt-get install {packages} (as root{hint})",
            missing.join(", ")
        ));
    }
    let (kernel, moddir) = kernel.expect("checked");
    if fs::File::open(&kernel).is_err() {
        return Err(format!(
            "cannot read {} (Debian installs kernels readable by root only): run as root, or \
             `sudo chmod a+r {}`",
            kernel.display(),
            kernel.display()
        ));
    }
    let tools = Tools {
        qemu: qemu.expect("checked"),
        busybox: busybox.expect("checked"),
        kernel,
        moddir,
    };
    let qemu_version = Command::new(&tools.qemu)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(String::from))
        .unwrap_or_default();
    println!("kernel {}, {qemu_version}", tools.kernel.display());
    Ok(tools)
}

/// Builds `bins` of `packages` as static release binaries in their own target directory
/// (so the normal build is not invalidated) and returns their paths, in the order of `bins`.
///
/// Not position-independent (`relocation-model=static`): every run of a tool in the guest
/// sits at the same addresses, so TCG reuses the code it translated for the last run
/// instead of translating the binary again, and there are no relocations to apply.
/// Measured in the bench VM: `nvmectl --version` 34-46 ms per run instead of 152 ms.
pub fn build_static(packages: &[&str], bins: &[&str]) -> Result<Vec<PathBuf>, String> {
    let static_dir = cargo::target_dir().join("hwtest-static");
    let static_dir_s = static_dir.to_string_lossy().into_owned();
    let mut args = vec!["build", "--release"];
    for p in packages {
        args.extend(["-p", p]);
    }
    for b in bins {
        args.extend(["--bin", b]);
    }
    args.extend(["--target", "x86_64-unknown-linux-gnu"]);
    cargo::cargo(
        &args,
        &[
            (
                "RUSTFLAGS",
                "-C target-feature=+crt-static -C relocation-model=static",
            ),
            ("CARGO_TARGET_DIR", &static_dir_s),
            ("CARGO_PROFILE_RELEASE_DEBUG", "0"),
            ("CARGO_PROFILE_RELEASE_STRIP", "symbols"),
        ],
    )?;
    let paths: Vec<PathBuf> = bins
        .iter()
        .map(|b| static_dir.join("x86_64-unknown-linux-gnu/release").join(b))
        .collect();
    if let Some(b) = paths.iter().find(|b| !is_static_elf(b)) {
        return Err(format!("{} is not statically linked", b.display()));
    }
    Ok(paths)
}

/// The module files for `names` and everything they depend on, in load order.
pub fn module_closure(
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

/// Runs a shell pipeline, for cpio and module decompression.
pub fn sh(script: &str, dir: &Path) -> Result<(), String> {
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

/// The start of every guest's `/init`: mounts, `finish`/`fail`, `load LIST` (insmod the
/// modules named in `/LIST`, with the parameters in `/params-<module>` if that exists), the
/// VFIO modules loaded, and the NVMe controller found: `$bdf`, `$dev`, `$group`.
pub const INIT_PRELUDE: &str = r#"#!/bin/busybox sh
# /init of the hardware guest (generated by xtask).
/bin/busybox mkdir -p /proc /sys /dev /tmp /etc
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
finish() { echo "HWTEST-INIT done"; sync; poweroff -f; }
fail() { echo "HWTEST-INIT FAIL: $*"; finish; }
load() {
    for m in $(cat /$1); do
        insmod /lib/modules/$m $(cat /params-${m%.ko} 2>/dev/null) || fail "insmod $m"
    done
}
echo "HWTEST-INIT start: kernel $(uname -r), $(nproc) CPUs, $(grep HugePages_Total /proc/meminfo)"
load modules-vfio
bdf=""
for d in /sys/bus/pci/devices/*; do
    if [ "$(cat $d/class)" = "0x010802" ]; then bdf=$(basename $d); break; fi
done
[ -n "$bdf" ] || fail "no NVMe controller (PCI class 0x010802) in the guest"
dev=/sys/bus/pci/devices/$bdf
[ -e $dev/iommu_group ] || fail "$bdf has no IOMMU group: is the virtual IOMMU missing?"
group=$(basename $(readlink $dev/iommu_group))
"#;

/// The guest's root file system, built in `<target>/<name>/root`.
pub struct Initramfs {
    /// `<target>/<name>`: the initramfs, disk images and the console log.
    pub work: PathBuf,
    root: PathBuf,
    /// Modules already in the image (relative to the module directory).
    loaded: BTreeSet<String>,
}

impl Initramfs {
    /// A fresh tree with busybox and `init` (the prelude followed by `body`).
    pub fn new(name: &str, busybox: &Path, body: &str) -> Result<Self, String> {
        let work = cargo::target_dir().join(name);
        let _ = fs::remove_dir_all(&work);
        let root = work.join("root");
        for d in ["bin", "lib/modules", "proc", "sys", "dev", "tmp", "etc"] {
            fs::create_dir_all(root.join(d)).map_err(|e| format!("creating {d}: {e}"))?;
        }
        let ir = Initramfs {
            work,
            root,
            loaded: BTreeSet::new(),
        };
        ir.install(busybox, "bin/busybox")?;
        ir.write("init", &format!("{INIT_PRELUDE}{body}"))?;
        ir.chmod("init", 0o755)?;
        Ok(ir)
    }

    /// Copies `from` to `rel` in the image, keeping its mode (executables stay executable).
    pub fn install(&self, from: &Path, rel: &str) -> Result<(), String> {
        let to = self.root.join(rel);
        if let Some(d) = to.parent() {
            fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
        }
        fs::copy(from, &to)
            .map(|_| ())
            .map_err(|e| format!("copying {} to {}: {e}", from.display(), to.display()))
    }

    pub fn write(&self, rel: &str, s: &str) -> Result<(), String> {
        fs::write(self.root.join(rel), s).map_err(|e| format!("writing {rel}: {e}"))
    }

    fn chmod(&self, rel: &str, mode: u32) -> Result<(), String> {
        fs::set_permissions(self.root.join(rel), fs::Permissions::from_mode(mode))
            .map_err(|e| format!("chmod {rel}: {e}"))
    }

    /// Adds the modules `names` with their dependencies (less those already added) and
    /// lists them in `/<list>` for the prelude's `load <list>`.
    pub fn modules(&mut self, moddir: &Path, names: &[&str], list: &str) -> Result<(), String> {
        let mods = module_closure(moddir, names, &self.loaded)?;
        let mut text = String::new();
        for m in &mods {
            let name = m.file_name().unwrap().to_string_lossy().into_owned();
            let dest = self.root.join("lib/modules");
            let name = match [("xz", ".xz"), ("zstd", ".zst")]
                .iter()
                .find_map(|(tool, ext)| Some((tool, name.strip_suffix(ext)?)))
            {
                Some((tool, base)) => {
                    sh(
                        &format!(
                            "{tool} -dc '{}' > '{}'",
                            m.display(),
                            dest.join(base).display()
                        ),
                        &self.work,
                    )?;
                    base.to_string()
                }
                None => {
                    self.install(m, &format!("lib/modules/{name}"))?;
                    name
                }
            };
            text.push_str(&name);
            text.push('\n');
            self.loaded.insert(
                m.strip_prefix(moddir)
                    .unwrap_or(m)
                    .to_string_lossy()
                    .into_owned(),
            );
        }
        self.write(list, &text)
    }

    /// Adds a dynamically linked program at `rel` with the loader and the libraries `ldd`
    /// names, at their paths on the host. Returns the library directories (for
    /// `LD_LIBRARY_PATH`).
    pub fn dynamic(&self, prog: &Path, rel: &str) -> Result<Vec<String>, String> {
        let out = Command::new("ldd")
            .arg(prog)
            .output()
            .map_err(|e| format!("ldd {}: {e}", prog.display()))?;
        if !out.status.success() {
            return Err(format!(
                "ldd {}: {}",
                prog.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        self.install(prog, rel)?;
        let mut dirs = Vec::new();
        for lib in ldd_paths(&String::from_utf8_lossy(&out.stdout)) {
            let real = fs::canonicalize(&lib).map_err(|e| format!("{lib}: {e}"))?;
            self.install(&real, lib.trim_start_matches('/'))?;
            let dir = Path::new(&lib).parent().map(|d| d.to_string_lossy());
            if let Some(d) = dir.filter(|d| !dirs.iter().any(|x: &String| x == d)) {
                dirs.push(d.into_owned());
            }
        }
        Ok(dirs)
    }

    /// Packs the tree into `<work>/initramfs.cpio` (uncompressed: the guest unpacks it
    /// faster than it would decompress it under TCG).
    pub fn pack(&self) -> Result<PathBuf, String> {
        sh(
            "find . | cpio -o -H newc -R 0:0 --quiet > ../initramfs.cpio",
            &self.root,
        )?;
        Ok(self.work.join("initramfs.cpio"))
    }
}

/// The library paths in `ldd` output (the loader included, the vDSO not).
fn ldd_paths(ldd: &str) -> Vec<String> {
    ldd.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| path.to_string())
        })
        .collect()
}

/// The QEMU command line: q35, the virtual Intel IOMMU, 2 CPUs, hugepages, the kernel and
/// `initrd`, and one NVMe controller (serial `deadbeef`, id `nvme0`) without namespaces.
pub fn qemu(tools: &Tools, o: &VmOpts, initrd: &Path) -> Command {
    let mut q = Command::new(&tools.qemu);
    let kvm = o.accel == "kvm";
    let machine = if kvm {
        "q35,accel=kvm"
    } else {
        "q35,accel=tcg"
    };
    let cpu = if kvm { "host" } else { "max" };
    let iommu = match o.aw_bits {
        Some(b) => format!("intel-iommu,intremap=on,caching-mode=on,aw-bits={b}"),
        None => "intel-iommu,intremap=on,caching-mode=on".to_string(),
    };
    q.args(["-machine", machine, "-cpu", cpu, "-m", "1024", "-smp", "2"]);
    q.args(["-nographic", "-no-reboot", "-device", &iommu]);
    q.arg("-kernel").arg(&tools.kernel);
    q.arg("-initrd").arg(initrd);
    q.arg("-append").arg(format!(
        // no_timer_check: on a busy host the TCG guest's early check of the IO-APIC timer
        // can fail ("timer doesn't work through Interrupt-remapped IO-APIC": a panic).
        "console=ttyS0 intel_iommu=on iommu=pt quiet panic=-1 no_timer_check hugepages=64{}",
        o.append
    ));
    if o.subsystem {
        q.args(["-device", "nvme-subsys,id=subsys0,nqn=deadbeef"]);
        q.args(["-device", "nvme,serial=deadbeef,id=nvme0,subsys=subsys0"]);
    } else {
        q.args(["-device", "nvme,serial=deadbeef,id=nvme0"]);
    }
    q
}

/// Adds namespace `nsid` of `bytes` with `bs`-byte blocks: file-backed by `image` (created
/// fresh and sparse), or null-co (reads return zeros, no disk I/O).
pub fn namespace(
    q: &mut Command,
    nsid: u32,
    bs: u32,
    bytes: u64,
    image: Option<&Path>,
) -> Result<(), String> {
    namespace_with_latency(q, nsid, bs, bytes, image, None)
}

/// [`namespace`], a null-co one taking `latency` for every request when given (null-co's
/// `latency-ns`: a slow device without disk I/O).
pub fn namespace_with_latency(
    q: &mut Command,
    nsid: u32,
    bs: u32,
    bytes: u64,
    image: Option<&Path>,
    latency: Option<std::time::Duration>,
) -> Result<(), String> {
    let latency = latency.map_or(String::new(), |d| format!(",latency-ns={}", d.as_nanos()));
    let drive = match image {
        Some(img) => {
            fs::File::create(img)
                .and_then(|f| f.set_len(bytes))
                .map_err(|e| format!("creating {}: {e}", img.display()))?;
            format!(
                "file={},if=none,id=d{nsid},format=raw,discard=unmap",
                img.display()
            )
        }
        None => format!("driver=null-co,size={bytes},read-zeroes=on{latency},if=none,id=d{nsid}"),
    };
    q.args(["-drive", &drive]);
    q.args([
        "-device",
        &format!(
            "nvme-ns,drive=d{nsid},nsid={nsid},logical_block_size={bs},physical_block_size={bs}"
        ),
    ]);
    Ok(())
}

/// What a guest run left: the console log (also in `<work>/console.log`), how QEMU ended.
pub struct Console {
    pub log: String,
    pub timed_out: bool,
    pub status: ExitStatus,
    pub took: Duration,
    /// CPU time on the host during the run, in average cores busy: (QEMU, everything else).
    pub host_cores: Option<(f64, f64)>,
}

/// How long the host takes to wake a sleeping thread: the median and 90th percentile, in
/// us, over `samples` wake-ups of a parked thread by one that spins between them (as QEMU's
/// vCPU thread wakes its main loop at each doorbell). `None` for no samples, or when a
/// wake-up does not arrive within a second.
///
/// A guest at QD1 pays this once per I/O whenever QEMU's main loop went to sleep before the
/// doorbell: on a host whose idle CPUs halt at once (a VM without halt polling, say), it is
/// tens of us, the larger part of a TCG guest's QD1 latency.
pub fn host_wakeup_us(samples: usize) -> Option<(f64, f64)> {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    if samples == 0 {
        return None;
    }

    let base = Instant::now();
    let since = move || base.elapsed().as_nanos() as u64;
    let (go, woke, stop) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let waiter = {
        let (go, woke, stop) = (go.clone(), woke.clone(), stop.clone());
        std::thread::spawn(move || loop {
            while !go.swap(false, Ordering::AcqRel) {
                if stop.load(Ordering::Acquire) {
                    return;
                }
                std::thread::park();
            }
            woke.store(since().max(1), Ordering::Release);
        })
    };
    let spin = |d: Duration| {
        let t = Instant::now();
        while t.elapsed() < d {
            std::hint::spin_loop();
        }
    };
    let mut lat = Vec::with_capacity(samples);
    for _ in 0..samples {
        // Long enough for the waiter to park and its CPU to go idle.
        spin(Duration::from_micros(200));
        woke.store(0, Ordering::Release);
        let t0 = since();
        go.store(true, Ordering::Release);
        waiter.thread().unpark();
        let give_up = Instant::now() + Duration::from_secs(1);
        let t1 = loop {
            match woke.load(Ordering::Acquire) {
                0 if Instant::now() > give_up => break None,
                0 => std::hint::spin_loop(),
                t => break Some(t),
            }
        };
        match t1 {
            Some(t1) => lat.push(t1.saturating_sub(t0) as f64 / 1000.0),
            None => break,
        }
    }
    stop.store(true, Ordering::Release);
    waiter.thread().unpark();
    let _ = waiter.join();
    if lat.len() < samples {
        return None;
    }
    lat.sort_by(f64::total_cmp);
    Some((lat[samples / 2], lat[samples * 9 / 10]))
}

/// Host CPU ticks: (busy, all) summed over CPUs from `/proc/stat`, and this process's
/// waited-for children's user + system ticks (`cutime` + `cstime` in `/proc/self/stat`).
fn cpu_ticks() -> Option<(u64, u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let cpu: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let all: u64 = cpu.iter().take(8).sum();
    let busy = all - cpu.get(3)? - cpu.get(4)?;
    let me = fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces): state is field 3, cutime 16.
    let rest: Vec<&str> = me.rsplit_once(')')?.1.split_whitespace().collect();
    let children = rest.get(13)?.parse::<u64>().ok()? + rest.get(14)?.parse::<u64>().ok()?;
    Some((busy, all, children))
}

/// Average cores busy with the child (QEMU) and with everything else between two
/// [`cpu_ticks`] samples.
fn host_cores(before: (u64, u64, u64), after: (u64, u64, u64)) -> Option<(f64, f64)> {
    let ncpu = std::thread::available_parallelism().ok()?.get() as f64;
    let all = after.1.checked_sub(before.1)? as f64 / ncpu;
    let busy = after.0.checked_sub(before.0)? as f64;
    let child = after.2.checked_sub(before.2)? as f64;
    (all > 0.0).then(|| (child / all, (busy - child).max(0.0) / all))
}

/// Runs QEMU until it exits or `timeout` passes (then kills it), echoing the console lines
/// `show` accepts as `guest| ...`.
pub fn run(
    mut q: Command,
    timeout: Duration,
    work: &Path,
    show: impl Fn(&str) -> bool,
) -> Result<Console, String> {
    q.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    println!("$ {q:?}");
    let ticks = cpu_ticks();
    let start = Instant::now();
    let mut child = q
        .spawn()
        .map_err(|e| format!("starting {}: {e}", q.get_program().to_string_lossy()))?;
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
        let left = timeout.saturating_sub(start.elapsed());
        match rx.recv_timeout(left.min(Duration::from_millis(500))) {
            Ok(l) => {
                let l = l.trim_end_matches('\r').to_string();
                if show(&l) {
                    println!("guest| {l}");
                }
                log.push_str(&l);
                log.push('\n');
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if start.elapsed() >= timeout {
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
    Ok(Console {
        log,
        timed_out,
        status,
        took,
        host_cores: ticks.zip(cpu_ticks()).and_then(|(a, b)| host_cores(a, b)),
    })
}

impl Console {
    /// A measurement's end: prints how busy the host's CPUs were, then `Ok` when there is
    /// no problem, else dumps the console log into `work` and returns the problems.
    pub fn verdict(&self, problems: Vec<String>, work: &Path) -> Result<(), String> {
        if let Some((qemu, other)) = self.host_cores {
            println!(
                "host CPUs during the run: QEMU {qemu:.2} cores, everything else {other:.2} cores"
            );
        }
        if problems.is_empty() {
            Ok(())
        } else {
            self.dump(work);
            Err(problems.join("; "))
        }
    }
    /// The error for a guest that did not finish within `timeout`.
    pub fn timeout_error(&self, timeout: Duration) -> String {
        format!(
            "the guest did not finish within {} s (hung?); QEMU killed",
            timeout.as_secs()
        )
    }

    /// Prints the whole console log (after a failure), saying where it is kept.
    pub fn dump(&self, work: &Path) {
        println!(
            "----- guest console log ({}) -----",
            work.join("console.log").display()
        );
        print!("{}", self.log);
        println!("----- end of guest console log -----");
    }
}

/// A command line for tests.
#[cfg(test)]
pub fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_numerically() {
        assert!(version_key("6.10.0-1-amd64") > version_key("6.9.0-3-amd64"));
    }

    #[test]
    fn shared_options() {
        let mut o = VmOpts::new(300);
        let v = |x: &'static str| move |_: &str| Ok::<_, String>(x.to_string());
        assert!(o.take("--accel", v("kvm")).unwrap());
        assert!(o.take("--aw-bits", v("48")).unwrap());
        assert!(o.take("--timeout", v("9")).unwrap());
        assert!(!o.take("--device", v("x")).unwrap());
        assert!(o.take("--append", v("tsc=reliable")).unwrap());
        assert_eq!(o.append, " tsc=reliable");
        assert_eq!(
            (o.accel.as_str(), o.aw_bits, o.timeout.as_secs()),
            ("kvm", Some(48), 9)
        );
        assert!(o.take("--accel", v("hvf")).is_err());
        assert!(o.take("--aw-bits", v("40")).is_err());
    }

    #[test]
    fn host_cpu_shares() {
        assert!(cpu_ticks().is_some());
        let n = std::thread::available_parallelism().unwrap().get() as u64;
        let (qemu, other) = host_cores((0, 0, 0), (150 * n / 2, 100 * n, 100)).unwrap();
        assert!((qemu - 1.0).abs() < 1e-9 && (other - 0.5).abs() < 1e-9);
    }

    #[test]
    fn a_parked_thread_is_woken_and_timed() {
        let (p50, p90) = host_wakeup_us(50).expect("the waiter never woke");
        assert!(p50 > 0.0 && p50 <= p90 && p90 < 1e6, "{p50} {p90}");
        assert_eq!(host_wakeup_us(0), None);
    }

    #[test]
    fn ldd_output() {
        let ldd = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x1)\n\
                   \tlibx.so => not found\n\t/lib64/ld-linux-x86-64.so.2 (0x2)\n";
        assert_eq!(
            ldd_paths(ldd),
            [
                "/lib/x86_64-linux-gnu/libz.so.1",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
    }
}
