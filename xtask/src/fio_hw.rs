//! `cargo xtask fio-hw`: the fio engine (`nvme-fio`) against QEMU's NVMe controller through
//! VFIO in a VM, with Debian's fio 3.33 in the guest.
//!
//! 1. builds `libnvme_fio.so` (release; a shared object, so not static: it goes into the
//!    guest with the libraries `ldd` names, beside fio and its own) and `nvme-setup`
//!    (static);
//! 2. boots QEMU with one controller: namespace 1 file-backed (512 B blocks), namespace 2
//!    null-co (4 KiB blocks);
//! 3. in the guest: binds the controller to vfio-pci and runs the job files of
//!    `nvme-fio/jobs/hw/` (crc32c write and read-verify, 1 MiB blocks split by MDTS, two job
//!    threads), printing each JSON result on the console;
//! 4. checks each run (exit status, job errors, I/O counts) and, on the host, the verify
//!    headers fio wrote in namespace 1's image (every 4 KiB block of the 16 MiB verify.fio
//!    wrote starts with fio's magic): data that went through the engine and QEMU reached the
//!    disk.
//!
//! The same jobs run in `cargo xtask test-hw`'s guest after the suite ([`install`],
//! [`check`]), on a file-backed namespace of that VM, clear of the suite's read-back blocks.

use std::fs;
use std::path::Path;

use serde_json::Value;

use crate::cargo;
use crate::hw::VFIO_MODULES;
use crate::vm::{self, VmOpts};

const USAGE: &str = "\
usage: cargo xtask fio-hw [--accel tcg|kvm] [--timeout S] [--aw-bits 39|48] [--keep] [--append ARGS]
Runs fio with the nvme-fio engine against QEMU's NVMe controller in a VM (jobs:
nvme-fio/jobs/hw/). Needs fio 3.33 on the host (apt-get install fio) and the VM packages.";

/// The job files, in the order the guest runs them.
const JOBS: &[&str] = &["verify", "big", "numjobs"];

/// Namespace 1's size; verify.fio writes 16 MiB of it with 4 KiB blocks.
const NS1_BYTES: u64 = 64 << 20;
const VERIFIED_BYTES: u64 = 16 << 20;

/// Where the job files do their I/O in a VM.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// A file-backed namespace verify.fio and big.fio write (16 MiB each).
    pub ns: u32,
    /// Where verify.fio's 16 MiB start.
    pub verify_offset: u64,
    /// Where big.fio's 16 MiB start.
    pub big_offset: u64,
    /// The namespace numjobs.fio reads.
    pub read_ns: u32,
}

/// This command's VM: namespace 1 file-backed, namespace 2 null-co.
const LAYOUT: Layout = Layout {
    ns: 1,
    verify_offset: 0,
    big_offset: 32 << 20,
    read_ns: 2,
};

/// `/fio-run.sh` in the guest: runs the job files (the controller bound to vfio-pci, `$bdf`
/// set), printing `FIO-JSON <job> rc=<status> <fio's JSON>` for each and `FIO-HW done`.
const RUN: &str = r#"export LD_LIBRARY_PATH=$(cat /fio.libpath)
export NVME_FIO_ENGINE=/lib/libnvme_fio.so
export NVME_FIO_TRADDR=$(echo $bdf | tr ':' '.')
. /fio.env
echo "FIO-HW $(/bin/fio --version)"
for j in $(cat /jobs/order); do
    /bin/fio --output-format=json --output=/tmp/$j.json /jobs/$j.fio > /tmp/$j.out 2>&1
    rc=$?
    echo "FIO-JSON $j rc=$rc $(tr -d '\n' < /tmp/$j.json)"
    [ $rc = 0 ] || echo "FIO-FAIL $j exit $rc: $(tail -n 5 /tmp/$j.out | tr '\n' ' ')"
done
echo "FIO-HW done"
"#;

/// The guest's `/init` after [`vm::INIT_PRELUDE`].
const INIT: &str = r#"
/bin/nvme-setup bind $bdf || fail "nvme-setup bind $bdf"
echo "FIO-HW $bdf bound to $(basename $(readlink $dev/driver))"
. /fio-run.sh
finish
"#;

/// Builds the engine (`release` or the dev profile) and puts it into `ir` with fio, the
/// libraries both need, the job files, `/fio-run.sh` (source it in the guest with the
/// controller bound to vfio-pci) and the job files' settings for `layout`.
pub fn install(ir: &mut vm::Initramfs, release: bool, layout: Layout) -> Result<(), String> {
    install_engine(ir, release)?;
    install_jobs(ir, layout)
}

/// Builds the engine (`release` or the dev profile) and puts it into `ir` as
/// `/lib/libnvme_fio.so`, with fio as `/bin/fio` and the libraries both need (their
/// directories, for `LD_LIBRARY_PATH`, in `/fio.libpath`).
pub fn install_engine(ir: &mut vm::Initramfs, release: bool) -> Result<(), String> {
    let fio = vm::which("fio").ok_or("fio is not installed (apt-get install fio)")?;
    let mut build = vec!["build", "-p", "nvme-fio"];
    if release {
        build.push("--release");
    }
    cargo::cargo(&build, &[])?;
    let profile = if release { "release" } else { "debug" };
    let engine = cargo::target_dir().join(profile).join("libnvme_fio.so");
    let mut libdirs = ir.dynamic(&fio, "bin/fio")?;
    for d in ir.dynamic(&engine, "lib/libnvme_fio.so")? {
        if !libdirs.contains(&d) {
            libdirs.push(d);
        }
    }
    ir.write("fio.libpath", &libdirs.join(":"))
}

/// The job files, their settings for `layout` and `/fio-run.sh`.
fn install_jobs(ir: &mut vm::Initramfs, layout: Layout) -> Result<(), String> {
    let jobs = cargo::workspace_root().join("nvme-fio/jobs/hw");
    for j in JOBS {
        ir.install(&jobs.join(format!("{j}.fio")), &format!("jobs/{j}.fio"))?;
    }
    ir.write("jobs/order", &JOBS.join("\n"))?;
    ir.write(
        "fio.env",
        &format!(
            "export NVME_FIO_NS={} NVME_FIO_VERIFY_OFFSET={} NVME_FIO_BIG_OFFSET={} NVME_FIO_READ_NS={}\n",
            layout.ns, layout.verify_offset, layout.big_offset, layout.read_ns
        ),
    )?;
    ir.write("fio-run.sh", RUN)
}

/// Checks the jobs' results on the console and verify.fio's data in `img` (the image of
/// `layout.ns`); a summary when all passed.
pub fn check(log: &str, img: &Path, layout: Layout) -> Result<String, String> {
    let mut problems = Vec::new();
    let mut lines = Vec::new();
    for j in JOBS {
        match check_job(log, j) {
            Ok(line) => lines.push(format!("{j}: {line}")),
            Err(e) => problems.push(format!("fio job file {j}: {e}")),
        }
    }
    if !log.lines().any(|l| l.trim() == "FIO-HW done") {
        problems.push("the guest did not finish the fio jobs".into());
    }
    if problems.is_empty() {
        if let Err(e) = check_image(img, layout.verify_offset) {
            problems.push(e);
        }
    }
    if problems.is_empty() {
        Ok(format!(
            "{} fio job files passed ({})",
            JOBS.len(),
            lines.join("; ")
        ))
    } else {
        Err(problems.join("; "))
    }
}

/// Runs the VM with the arguments given after `cargo xtask fio-hw`.
pub fn fio_hw(args: &[String]) -> Result<(), String> {
    let mut o = VmOpts::new(300);
    vm::parse_args(args, USAGE, &mut o, |_, _| Ok(false))?;
    let tools = vm::prerequisites(&[("fio", "fio"), ("ldd", "libc-bin")], ")")?;

    let setup = vm::build_static(&["nvme-tools"], &["nvme-setup"])?;
    let mut ir = vm::Initramfs::new("fio-hw-vm", &tools.busybox, INIT)?;
    ir.install(&setup[0], "bin/nvme-setup")?;
    install(&mut ir, true, LAYOUT)?;
    ir.modules(&tools.moddir, VFIO_MODULES, "modules-vfio")?;
    let initrd = ir.pack()?;

    let img = ir.work.join("ns1.img");
    let mut q = vm::qemu(&tools, &o, &initrd);
    vm::namespace(&mut q, 1, 512, NS1_BYTES, Some(&img))?;
    vm::namespace(&mut q, 2, 4096, 256 << 20, None)?;
    let console = vm::run(q, o.timeout, &ir.work, |l| {
        let l = l.trim_start();
        (l.starts_with("FIO-") && !l.starts_with("FIO-JSON"))
            || l.starts_with("HWTEST-INIT")
            || l.starts_with("qemu stderr")
    })?;

    let mut problems = Vec::new();
    if console.timed_out {
        problems.push(console.timeout_error(o.timeout));
    } else {
        match check(&console.log, &img, LAYOUT) {
            Ok(summary) => println!("fio-hw: {summary}"),
            Err(e) => problems.push(e),
        }
    }
    println!(
        "guest run took {:.1} s ({})",
        console.took.as_secs_f64(),
        o.accel
    );
    if problems.is_empty() {
        if !o.keep {
            let _ = fs::remove_dir_all(&ir.work);
        }
        Ok(())
    } else {
        console.dump(&ir.work);
        Err(problems.join("\n"))
    }
}

/// The JSON result of job file `name` on the console.
fn result_of(log: &str, name: &str) -> Result<Value, String> {
    let prefix = format!("FIO-JSON {name} rc=");
    let line = log
        .lines()
        .find_map(|l| l.trim().strip_prefix(prefix.as_str()))
        .ok_or("no result on the console")?;
    let (rc, rest) = line.split_once(' ').unwrap_or((line, ""));
    if rc != "0" {
        let why = log
            .lines()
            .find(|l| l.contains(&format!("FIO-FAIL {name} ")))
            .unwrap_or("");
        return Err(format!("fio exited with {rc}: {}", why.trim()));
    }
    let start = rest.find('{').ok_or("no JSON")?;
    serde_json::from_str(&rest[start..]).map_err(|e| format!("fio's JSON: {e}"))
}

fn ios(job: &Value, dir: &str) -> u64 {
    job[dir]["total_ios"].as_u64().unwrap_or(0)
}

/// Checks job file `name`'s result; a summary line when it passed.
fn check_job(log: &str, name: &str) -> Result<String, String> {
    let v = result_of(log, name)?;
    let jobs = v["jobs"].as_array().ok_or("no jobs in fio's JSON")?;
    let mut summary = Vec::new();
    for j in jobs {
        let jname = j["jobname"].as_str().unwrap_or("?");
        if j["error"] != 0 {
            return Err(format!("job {jname}: error {}", j["error"]));
        }
        let (r, w) = (ios(j, "read"), ios(j, "write"));
        let expected = match (name, jname) {
            // 16 MiB of 4 KiB blocks written and read back (verify), then read again.
            ("verify", "write-verify") => Some((4096, 4096)),
            ("verify", "read-verify") => Some((4096, 0)),
            // 16 writes of 1 MiB, each verified.
            ("big", _) => Some((16, 16)),
            _ => None,
        };
        match expected {
            Some(e) if (r, w) != e => {
                return Err(format!(
                    "job {jname}: {r} reads and {w} writes, expected {} and {}",
                    e.0, e.1
                ))
            }
            None if r == 0 => return Err(format!("job {jname}: no reads")),
            _ => {}
        }
        summary.push(format!(
            "{jname} {r} reads ({:.0} IOPS) {w} writes ({:.0} IOPS)",
            j["read"]["iops"].as_f64().unwrap_or(0.0),
            j["write"]["iops"].as_f64().unwrap_or(0.0)
        ));
    }
    if name == "numjobs" && jobs.len() != 2 {
        return Err(format!("{} jobs, expected 2 threads", jobs.len()));
    }
    Ok(summary.join("; "))
}

/// Every 4 KiB block of the 16 MiB from `offset` holds an fio verify header (its magic
/// 0xacca, little-endian, first): verify.fio's writes are on QEMU's disk.
fn check_image(img: &Path, offset: u64) -> Result<(), String> {
    let data = fs::read(img).map_err(|e| format!("reading {}: {e}", img.display()))?;
    let at = |b: u64| (offset + b * 4096) as usize;
    let bad: Vec<u64> = (0..VERIFIED_BYTES / 4096)
        .filter(|&b| data.get(at(b)..at(b) + 2) != Some(&[0xca, 0xac]))
        .collect();
    if bad.is_empty() {
        println!(
            "fio: the namespace's image holds fio's verify header in all {} blocks verify.fio wrote",
            VERIFIED_BYTES / 4096
        );
        Ok(())
    } else {
        Err(format!(
            "{} of the {} blocks verify.fio wrote lack fio's verify header in {} (first: block {})",
            bad.len(),
            VERIFIED_BYTES / 4096,
            img.display(),
            bad[0]
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_results_from_the_console() {
        let ok = r#"FIO-JSON big rc=0 {"jobs":[{"jobname":"big-blocks","error":0,"read":{"total_ios":16,"iops":5.0},"write":{"total_ios":16,"iops":4.0}}]}"#;
        assert!(check_job(ok, "big").unwrap().contains("16 reads"));
        let short = ok.replace(
            "\"total_ios\":16,\"iops\":4.0",
            "\"total_ios\":15,\"iops\":4.0",
        );
        assert!(check_job(&short, "big")
            .unwrap_err()
            .contains("expected 16"));
        let failed = "FIO-JSON big rc=1 \nFIO-FAIL big exit 1: nvme-fio: boom";
        assert!(check_job(failed, "big").unwrap_err().contains("boom"));
        assert!(check_job("", "big").is_err());
    }
}
