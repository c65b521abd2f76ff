//! The hardware test suite: the driver against QEMU's NVMe controller through VFIO in a VM,
//! or against a real device by PCI address (`cargo xtask test-hw --device BDF`).
//!
//! The VM run (default):
//! 1. builds `nvme-hwtest` as a static binary (own target directory, so the normal build is
//!    not invalidated);
//! 2. builds an initramfs from the machine's Debian kernel modules (vfio, vfio-pci, nvme and
//!    their dependencies), busybox-static, that binary and the tools (`nvme-setup`,
//!    `nvmectl`, `nvme-perf`, static too), with an `/init` script;
//! 3. boots QEMU (q35, virtual Intel IOMMU with its default 39-bit address width, TCG unless
//!    `--accel kvm`) with one NVMe controller (serial `deadbeef`) and four namespaces:
//!    512 B file-backed, 4 KiB file-backed, 4 KiB null-co, and a small 4 KiB null-co one
//!    whose every command takes 10 ms (`--slow-ns`: the interrupt waiter's);
//! 4. in the guest: binds the controller to vfio-pci, checks some attach errors for real,
//!    runs the suite (single-process tests, then the multi-process scenarios of a
//!    shared-memory group: `nvme-hwtest --multi-process`, with interrupt-driven queues in
//!    two processes and a thread sleeping on its interrupt, ending with controller resets
//!    by one process under another's checked I/O, the same with PCI function resets, and
//!    `nvmectl -i G reset` beside `nvme-perf -i G` with `--tools /bin`), then
//!    `nvme-torture` against the controller (8 rounds; `--torture-rounds N`), fio with the
//!    `nvme-fio` engine (the job files of `nvme-fio/jobs/hw/`: crc32c verify, 1 MiB blocks,
//!    two job threads; [`crate::fio_hw`]), rebinds the
//!    controller to the kernel's nvme driver and reads back what the suite wrote through
//!    `/dev/nvme0nX` (the manifest's ranges: the single-process pattern and the last
//!    writes acknowledged after the resets and after the function resets); nvmectl's
//!    id-ctrl, id-ns, smart-log, error-log, fw-log (plain and `-o json`) and get-feature
//!    run before the rebind, Debian's nvme-cli's after it (copied in with its libraries);
//!    then loads the kernel's NVMe/TCP target (nvmet-tcp), exports a null_blk namespace on
//!    127.0.0.1:4420 through configfs and runs `nvme-hwtest --tcp` (discovery, the admin
//!    queue with and without digests, Connect rejections, keep-alive kept and expired,
//!    `nvmectl discover`), the suite over TCP with nvme-perf beside it, and a `-i` group
//!    over TCP (`nvme-perf -i 5` with `nvmectl -i 5 smart-log` joining it);
//! 5. parses the serial console: any `FAIL` line, a missing summary, or a guest that does not
//!    finish within the timeout fails the run (the full console log is printed then); the
//!    read-back blocks are also checked in the disk images on the host; the torture run's
//!    `TORTURE SUMMARY` line must be there and report no finding; every fio job file must
//!    pass and fio's verify headers must be in the namespace's disk image; every field
//!    nvme-cli printed must be in nvmectl's output with the same value
//!    ([`crate::cli_compare`]).

use std::fs;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::cargo;
use crate::vm::{self, VmOpts};

/// Kernel modules for VFIO, then for the kernel-driver read-back (dependencies are added
/// from modules.dep).
pub const VFIO_MODULES: &[&str] = &["vfio_iommu_type1", "vfio-pci"];
pub const NVME_MODULES: &[&str] = &["nvme"];
/// Kernel modules for the NVMe/TCP target the TCP checks talk to: nvmet-tcp, null_blk and
/// brd (a RAM disk) for its namespaces, configfs to configure it, and CRC32C for its digests (the crypto API
/// cannot load it on demand in a guest without modprobe).
pub const NVMET_MODULES: &[&str] = &["configfs", "crc32c_generic", "nvmet-tcp", "null_blk", "brd"];

/// Torture rounds in the guest by default (`cargo xtask test`'s hw step): a short run.
pub const TORTURE_SHORT_ROUNDS: u64 = 8;
/// Guest time allowed per torture round beyond the default timeout (TCG).
const TORTURE_SECS_PER_ROUND: u64 = 45;
/// The torture run's mean worker time per round (ms) and its bound on any one wait (s):
/// TCG runs 20-50x slower than the host.
const TORTURE_TIME_PER_ROUND_MS: u64 = 2000;
const TORTURE_BOUND_SECS: u64 = 120;
/// Where the torture writers write on namespace 1: 65536 blocks in (32 MiB), clear of the
/// blocks of the kernel read-back manifest (LBA 0, a third and three quarters in, the end).
const TORTURE_LBA: u64 = 65536;

/// Options of `cargo xtask test-hw`.
#[derive(Debug, Clone, PartialEq)]
struct Opts {
    device: Option<String>,
    write_ns: Vec<u32>,
    vm: VmOpts,
    /// Rounds of `nvme-torture` in the guest after the suite (0: none).
    torture_rounds: u64,
    /// Its seed (default: the clock).
    torture_seed: Option<u64>,
    /// `--tcp-only`: boot, run the NVMe/TCP checks alone, power off.
    tcp_only: bool,
}

const USAGE: &str = "usage: cargo xtask test-hw [--accel tcg|kvm] [--timeout SECS] [--aw-bits 39|48] [--keep] [--append KERNEL-ARGS]\n                          \
[--torture-rounds N] [--torture-seed S] [--tcp-only]\n       \
cargo xtask test-hw --device 0000:bb:dd.f [--write-ns NSID]...\n\
Without --device: boots a QEMU VM with an emulated NVMe controller behind a virtual IOMMU and runs the suite there,\n\
then N rounds of nvme-torture (default 8; 0: none) against the controller, then the NVMe/TCP checks against the kernel's target;\n\
without --timeout the VM's timeout grows with N. --tcp-only: the NVMe/TCP checks alone.\n\
With --device: runs the suite on the host against a real controller bound to vfio-pci (`nvme-setup bind BDF`).\n\
Writing tests run only on namespaces named with --write-ns: they DESTROY the data there.";

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut vm = VmOpts::new(300);
    let (mut device, mut write_ns) = (None, Vec::new());
    let (mut torture_rounds, mut torture_seed) = (TORTURE_SHORT_ROUNDS, None);
    let mut tcp_only = false;
    let number = |flag: &str, v: String| {
        v.parse::<u64>()
            .map_err(|_| format!("{flag} {v}: expected a number"))
    };
    vm::parse_args(args, USAGE, &mut vm, |flag, val| {
        match flag {
            "--device" => device = Some(val(flag)?),
            "--torture-rounds" => torture_rounds = number(flag, val(flag)?)?,
            "--torture-seed" => torture_seed = Some(number(flag, val(flag)?)?),
            "--tcp-only" => tcp_only = true,
            "--write-ns" => {
                let v = val(flag)?;
                write_ns.push(
                    v.parse()
                        .map_err(|_| format!("--write-ns {v}: expected a namespace id"))?,
                );
            }
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    if device.is_none() && !write_ns.is_empty() {
        return Err(
            "--write-ns is for --device runs (the VM's namespaces are always written)".into(),
        );
    }
    if !args.iter().any(|a| a == "--timeout") {
        vm.timeout += std::time::Duration::from_secs(
            torture_rounds.saturating_sub(TORTURE_SHORT_ROUNDS) * TORTURE_SECS_PER_ROUND,
        );
    }
    Ok(Opts {
        device,
        write_ns,
        vm,
        torture_rounds,
        torture_seed,
        tcp_only,
    })
}

/// Runs the hardware suite with the arguments given after `cargo xtask test-hw`.
pub fn test_hw(args: &[String]) -> Result<(), String> {
    let o = parse(args)?;
    match &o.device {
        Some(bdf) => real_device(bdf, &o.write_ns),
        None => vm(&o),
    }
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
    let r = check_log(&log, false, None);
    r.map(|s| println!("hardware suite on {bdf}: {s}"))
}

/// What the console log says: `Ok(summary)` or why it failed.
/// `torture`: the rounds of `nvme-torture` the guest was to run (`None`: not asked for).
fn check_log(log: &str, vm: bool, torture: Option<u64>) -> Result<String, String> {
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
        match tcp_summary(log) {
            Ok(t) => out.push_str(&format!("; {t}")),
            Err(e) => return Err(format!("{e}; {out}")),
        }
        if let Some(t) = torture {
            match check_torture(log, t) {
                Ok(s) => out.push_str(&format!("; torture: {s}")),
                Err(e) => return Err(format!("{e}; {out}")),
            }
        }
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

/// The NVMe/TCP results: the checks' summary, the suite's over TCP, nvme-perf's beside it,
/// the read-back from the target's file and the `-i` group's tools. `Ok(them)` when all are there with no failure.
fn tcp_summary(log: &str) -> Result<String, String> {
    let line = |prefix: &str| {
        log.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .map(str::trim)
            .ok_or(format!("no NVMe/TCP result ({}line missing)", prefix))
    };
    let tcp = line("HWTEST TCP SUMMARY ")?;
    let suite = line("HWTEST TRID SUMMARY ")?;
    let perf = line("HWTEST TCP-PERF ")?;
    let verify = line("HWTEST VERIFY-FILE ")?;
    let group = line("HWTEST TCP-GROUP ")?;
    let out = format!(
        "nvme/tcp: {tcp}; suite over TCP: {suite}; nvme-perf beside it: {perf}; read-back from the target's disk: {verify}; a -i group over TCP: {group}"
    );
    let perf_ok = perf.starts_with("rc=0 ") && perf.contains("Total");
    // nvme-perf -i 5 ran to its end with I/O; nvmectl -i 5 joined it as a secondary.
    let group_ok = group.starts_with("perf rc=0 nvmectl rc=0 over NVMe/TCP: secondary ")
        && group.contains("Total");
    if tcp.contains("failed=0")
        && suite.contains("failed=0")
        && perf_ok
        && group_ok
        && verify.contains("failed=0")
    {
        Ok(out)
    } else {
        Err(out)
    }
}

/// A `--tcp-only` run's console log: the TCP summary, no `FAIL` line, the end of `/init`.
fn check_tcp_log(log: &str) -> Result<String, String> {
    let out = tcp_summary(log)?;
    let fails: Vec<&str> = log
        .lines()
        .map(|l| l.trim_start_matches(['\r', ' ']))
        .filter(|l| l.starts_with("FAIL ") || l.starts_with("HWTEST-INIT FAIL"))
        .collect();
    if !fails.is_empty() {
        return Err(format!("{}; {out}", fails.join(" | ")));
    }
    if !log.lines().any(|l| l.trim() == "HWTEST-INIT done") {
        return Err(format!("the guest did not reach the end of /init; {out}"));
    }
    Ok(out)
}

/// The counters of `TORTURE SUMMARY` that must be 0.
const TORTURE_FINDINGS: [&str; 7] = [
    "hangs",
    "failed_attaches",
    "leaked_qids",
    "lost_writes",
    "bad_blocks",
    "errors",
    "leftovers",
];

/// The torture run's summary line: `Ok(its counters)` when it ran `rounds` rounds and found
/// nothing, or what is wrong.
fn check_torture(log: &str, rounds: u64) -> Result<String, String> {
    let line = log
        .lines()
        .find_map(|l| l.trim().strip_prefix("TORTURE SUMMARY "))
        .ok_or("the torture run printed no TORTURE SUMMARY line (it crashed or did not run)")?;
    let get = |k: &str| {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| format!("no {k}= in TORTURE SUMMARY {line}"))
    };
    if get("rounds")? != rounds {
        return Err(format!(
            "{rounds} torture rounds asked for: TORTURE SUMMARY {line}"
        ));
    }
    let found: Vec<String> = TORTURE_FINDINGS
        .iter()
        .map(|k| get(k).map(|n| (k, n)))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{k}={n}"))
        .collect();
    if !found.is_empty() {
        return Err(format!(
            "the torture run found {} (the round lines above say which; reproduce with --torture-seed): TORTURE SUMMARY {line}",
            found.join(" ")
        ));
    }
    Ok(line.to_string())
}

/// The test guest's `/init` after [`vm::INIT_PRELUDE`] (VFIO loaded, `$bdf` found).
const INIT: &str = r#"
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

# Torture: the processes of a group killed and stopped at random, each round checked.
if [ -s /torture.args ]; then
    /bin/nvme-torture --trid "trtype:PCIe traddr:$bdf" $(cat /torture.args)
    echo "HWTEST-INIT torture exited with status $?"
fi

# fio with this driver's engine (nvme-fio): its VM job files, on namespace 2.
[ -s /fio-run.sh ] && (. /fio-run.sh)

# nvmectl's side of the comparison with nvme-cli, through VFIO (crate::cli_compare).
. /cli-compare.sh
cli_all nvmectl nvmectl_cmd

# Give the controller back to the kernel's nvme driver and read back through it.
load modules-nvme
/bin/nvme-setup unbind $bdf || fail "nvme-setup unbind $bdf"
echo "HWTEST-INIT $bdf now bound to $(basename $(readlink $dev/driver 2>/dev/null || echo none))"
/bin/nvme-hwtest --device $bdf --expect-attach-error "bound to the kernel nvme driver"
/bin/nvme-hwtest --verify-kernel /tmp/readback --device $bdf

# nvme-cli's side, through the kernel driver.
cli_all nvme-cli nvmecli_cmd
echo "HWTEST-INIT nvme-cli comparison outputs done"
"#;

/// The NVMe/TCP checks of the guest's `/init` (after the NVMe modules are loaded: the
/// target's modules share their dependencies).
/// Shell functions that set up Linux's NVMe/TCP target through configfs (after
/// `load modules-nvmet`): `nvmet_subsystem NQN [DEVICE]` (any host may connect; DEVICE,
/// if given, is namespace 1), `nvmet_port ID ipv4|ipv6 ADDR` (a TCP port on ADDR:4420),
/// `nvmet_link ID NQN` (the subsystem on the port). `$N` is the nvmet directory.
pub const NVMET_SH: &str = r#"
ip link set lo up || ifconfig lo 127.0.0.1 up || fail "loopback up"
mount -t configfs none /sys/kernel/config 2>/dev/null
N=/sys/kernel/config/nvmet
nvmet_subsystem() {
    mkdir $N/subsystems/$1 || fail "nvmet subsystem $1"
    [ -n "$2" ] || return 0
    echo 1 > $N/subsystems/$1/attr_allow_any_host
    mkdir $N/subsystems/$1/namespaces/1
    echo $2 > $N/subsystems/$1/namespaces/1/device_path
    echo 1 > $N/subsystems/$1/namespaces/1/enable || fail "nvmet namespace of $1 on $2"
}
nvmet_port() {
    mkdir $N/ports/$1 || fail "nvmet port $1"
    echo tcp > $N/ports/$1/addr_trtype
    echo $2 > $N/ports/$1/addr_adrfam
    echo $3 > $N/ports/$1/addr_traddr
    echo 4420 > $N/ports/$1/addr_trsvcid
}
nvmet_link() {
    ln -s $N/subsystems/$2 $N/ports/$1/subsystems/$2 || fail "nvmet: $2 on port $1"
}
"#;

const INIT_TCP: &str = r#"
# NVMe/TCP: the kernel's target exports a null_blk device as a subsystem on 127.0.0.1:4420
# and [::1]:4420 (with the discovery service on the same ports), beside a subsystem that
# allows no host.
nqn=nqn.2026-11.io.nvme-rs:tcp-null
denied=nqn.2026-11.io.nvme-rs:tcp-denied
nvmet_subsystem $nqn /dev/nullb0
nvmet_subsystem $denied
nvmet_port 1 ipv4 127.0.0.1
nvmet_link 1 $nqn
nvmet_link 1 $denied
nvmet_port 2 ipv6 ::1
nvmet_link 2 $nqn
echo "HWTEST-INIT nvmet-tcp exports $nqn on 127.0.0.1:4420 and [::1]:4420"
/bin/nvme-hwtest --tcp "trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420 subnqn:$nqn" \
    --tcp6 "trtype:TCP adrfam:IPv6 traddr:::1 trsvcid:4420 subnqn:$nqn" --tcp-denied $denied --tools /bin \
    --tcp-nvmet-port $N/ports/1
echo "HWTEST-INIT tcp checks exited with status $?"

# I/O over NVMe/TCP: the hardware suite's single-process tests through the same API as on
# PCIe, on a subsystem whose data is then read back from its disk, while
# nvme-perf in another process (its own association) reads the null subsystem.
# A 64 MiB RAM disk (brd) behind it: a block device, so that Write Zeroes works (nvmet's
# file backend zeroes with fallocate, which the initramfs's ramfs does not have).
data=nqn.2026-11.io.nvme-rs:tcp-data
[ -b /dev/ram0 ] || fail "no /dev/ram0 (brd)"
nvmet_subsystem $data /dev/ram0
nvmet_link 1 $data
tcp="trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420"
/bin/nvme-perf -r "$tcp subnqn:$nqn ns:1" -q 16 -o 4096 -w randread -t 20 > /tmp/tcp-perf.out 2>&1 &
perf=$!
/bin/nvme-hwtest --trid "$tcp subnqn:$data" --write-ns 1 --manifest /tmp/tcp-readback
wait $perf
echo "HWTEST TCP-PERF rc=$? $(grep -m1 Total /tmp/tcp-perf.out | tr -s ' ')"
tail -n 4 /tmp/tcp-perf.out | sed 's/^/  nvme-perf: /'
/bin/nvme-hwtest --verify-kernel /tmp/tcp-readback --verify-file /dev/ram0

# A shared-memory group over NVMe/TCP: nvme-perf -i 5 on the null subsystem, nvmectl -i 5
# beside it as a secondary; each opens its own association with the target.
NVME_RUN_DIR=/tmp /bin/nvme-perf -i 5 -r "$tcp subnqn:$nqn ns:1" -q 8 -o 4096 -w randread -t 5 > /tmp/tcp-group-perf.out 2>&1 &
gperf=$!
for i in 1 2 3 4 5 6 7 8 9 10; do
    grep -q "Joined shared-memory group 5" /tmp/tcp-group-perf.out && break
    sleep 1
done
NVME_RUN_DIR=/tmp /bin/nvmectl -i 5 -r "$tcp subnqn:$nqn" --show-group smart-log > /tmp/tcp-group-ctl.out 2>&1
ctl=$?
wait $gperf
echo "HWTEST TCP-GROUP perf rc=$? nvmectl rc=$ctl $(grep -m1 -o 'over NVMe/TCP: [a-z]*' /tmp/tcp-group-ctl.out) $(grep -m1 Total /tmp/tcp-group-perf.out | tr -s ' ')"
[ $ctl = 0 ] || sed 's/^/  nvmectl: /' /tmp/tcp-group-ctl.out
"#;

/// `/cli-compare.sh`: runs the subcommands that [`crate::cli_compare`] compares with one
/// tool, each output as a `CLI-OUT` block on the console. `nvmectl_cmd SUB ARGS` runs
/// nvmectl on the controller through VFIO, `nvmecli_cmd SUB ARGS` Debian's nvme-cli on
/// `/dev/nvme0` with the libraries copied in (`/nvme-cli.libpath`). Namespaces are in
/// `/cli-namespaces`, feature ids in `/cli-features`; Error Recovery is per namespace
/// (namespace 1).
const CLI_COMPARE_SH: &str = r#"
cli_run() {
    local t=$1 n=$2 rc; shift 2
    echo "CLI-OUT $t $n"
    "$@" >/tmp/cli.out 2>/tmp/cli.err; rc=$?
    sed 's/^/CLI|/' /tmp/cli.out
    sed 's/^/CLI-ERR|/' /tmp/cli.err
    echo "CLI-END $t $n rc=$rc"
}
nvmectl_cmd() { /bin/nvmectl "$@" -r "trtype:PCIe traddr:$bdf"; }
nvmecli_cmd() { sub=$1; shift; LD_LIBRARY_PATH=$(cat /nvme-cli.libpath) /bin/nvme $sub /dev/nvme0 "$@"; }
cli_all() {
    local t=$1 c=$2 x a n f ns start=$(date +%s)
    for x in "" .json; do
        a=""; [ -n "$x" ] && a="-o json"
        cli_run $t id-ctrl$x $c id-ctrl $a
        for n in $(cat /cli-namespaces); do cli_run $t id-ns-$n$x $c id-ns -n $n $a; done
        cli_run $t smart-log$x $c smart-log $a
        cli_run $t error-log$x $c error-log $a
        cli_run $t fw-log$x $c fw-log $a
    done
    for f in $(cat /cli-features); do
        ns=""; [ $f = 0x05 ] && ns="-n 1"
        cli_run $t get-feature-$f $c get-feature -f $f $ns
    done
    echo "HWTEST-INIT $t's outputs for the nvme-cli comparison took $(( $(date +%s) - start )) s"
}
"#;

/// The features compared (current values): those QEMU's controller supports and nvmectl
/// names.
const CLI_FEATURES: &[u8] = &[
    0x01, 0x02, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0e,
];

/// Where the fio jobs do their I/O: namespace 2 (4 KiB blocks, 64 MiB, file-backed) from
/// 1 MiB and 24 MiB, clear of the suite's read-back blocks there (the first block, about
/// 21.3-21.9 MiB, the last 32 KiB); reads on the null namespace 3.
const FIO_LAYOUT: crate::fio_hw::Layout = crate::fio_hw::Layout {
    ns: 2,
    verify_offset: 1 << 20,
    big_offset: 24 << 20,
    read_ns: 3,
};

/// The VM's slow namespace: null-co, 4 KiB blocks, 16 MiB, every command taking
/// [`SLOW_NS_LATENCY`] (the interrupt scenario waits on it; `--slow-ns`).
const SLOW_NS: (u32, u32, u64) = (4, 4096, 16 << 20);
const SLOW_NS_LATENCY: std::time::Duration = std::time::Duration::from_millis(10);

/// Namespaces of the VM: (nsid, block size, bytes, file-backed).
const NAMESPACES: [(u32, u32, u64, bool); 3] = [
    (1, 512, 128 << 20, true),
    (2, 4096, 64 << 20, true),
    (3, 4096, 1 << 30, false),
];

fn vm(o: &Opts) -> Result<(), String> {
    let tools = vm::prerequisites(
        &[("fio", "fio"), ("ldd", "libc-bin"), ("nvme", "nvme-cli")],
        "; .ci/run installs them in CI), or skip this step with `cargo xtask test --skip-hw`",
    )?;

    // 1. The static binaries.
    let names = [
        "nvme-hwtest",
        "nvme-setup",
        "nvmectl",
        "nvme-perf",
        "nvme-torture",
    ];
    let bins = vm::build_static(&["nvme-hwtest", "nvme-tools"], &names)?;

    // 2. The initramfs.
    let init = if o.tcp_only {
        format!("load modules-nvme\nload modules-nvmet\n{NVMET_SH}{INIT_TCP}finish\n")
    } else {
        format!("{INIT}load modules-nvmet\n{NVMET_SH}{INIT_TCP}finish\n")
    };
    let mut ir = vm::Initramfs::new("hwtest-vm", &tools.busybox, &init)?;
    for (bin, name) in bins.iter().zip(names) {
        ir.install(bin, &format!("bin/{name}"))?;
    }
    ir.modules(&tools.moddir, VFIO_MODULES, "modules-vfio")?;
    ir.modules(&tools.moddir, NVME_MODULES, "modules-nvme")?;
    // The controller is in an NVM subsystem (below): without multipath the kernel keeps
    // the namespaces' block devices under the controller, where the read-back finds them.
    ir.write("params-nvme-core", "multipath=N")?;
    ir.modules(&tools.moddir, NVMET_MODULES, "modules-nvmet")?;
    // One 64 MiB RAM disk for the NVMe/TCP data subsystem.
    ir.write("params-brd", "rd_nr=1 rd_size=65536")?;
    let mut args = String::from("--expect-serial deadbeef --multi-process --tools /bin");
    for (nsid, bs, bytes, file) in NAMESPACES {
        args.push_str(&format!(" --expect-ns {nsid}:{bs}:{}", bytes / bs as u64));
        // File-backed namespaces keep data (read back by the kernel); the null one is
        // scratch for the tools' random writes.
        let role = if file { "--write-ns" } else { "--scratch-ns" };
        args.push_str(&format!(" {role} {nsid}"));
    }
    let (slow, slow_bs, slow_bytes) = SLOW_NS;
    args.push_str(&format!(
        " --expect-ns {slow}:{slow_bs}:{} --slow-ns {slow} --ns-attachment",
        slow_bytes / slow_bs as u64
    ));
    ir.write("hwtest.args", &args)?;
    let torture = (o.torture_rounds > 0 && !o.tcp_only).then(|| {
        let seed = o.torture_seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_secs())
        });
        println!(
            "torture in the guest: {} rounds, seed {seed} (reproduce: cargo xtask test-hw --torture-rounds {} --torture-seed {seed})",
            o.torture_rounds, o.torture_rounds
        );
        format!(
            "--nsid 1 --lba {TORTURE_LBA} --blocks 256 --nvmectl /bin/nvmectl --rounds {} --seed {seed} \
             --time-per-round {TORTURE_TIME_PER_ROUND_MS} --bound-secs {TORTURE_BOUND_SECS} --verbose",
            o.torture_rounds
        )
    });
    ir.write("torture.args", torture.as_deref().unwrap_or(""))?;
    // The engine from the dev profile: the test step's build has it (correctness only here).
    crate::fio_hw::install(&mut ir, false, FIO_LAYOUT)?;
    // Debian's nvme-cli with its libraries, and the comparison's script.
    let nvme_cli =
        vm::which("nvme").ok_or("nvme-cli is not installed (apt-get install nvme-cli)")?;
    let libdirs = ir.dynamic(&nvme_cli, "bin/nvme")?;
    ir.write("nvme-cli.libpath", &libdirs.join(":"))?;
    ir.write("cli-compare.sh", CLI_COMPARE_SH)?;
    let nsids: Vec<String> = NAMESPACES
        .iter()
        .map(|n| n.0)
        .chain([SLOW_NS.0])
        .map(|n| n.to_string())
        .collect();
    ir.write("cli-namespaces", &nsids.join(" "))?;
    let fids: Vec<String> = CLI_FEATURES.iter().map(|f| format!("{f:#04x}")).collect();
    ir.write("cli-features", &fids.join(" "))?;
    let initrd = ir.pack()?;

    // 3. Disk images (fresh, sparse) and QEMU.
    // In an NVM subsystem, so that QEMU's controller supports Namespace Attachment.
    let vm_opts = VmOpts {
        subsystem: true,
        ..o.vm.clone()
    };
    let mut q = vm::qemu(&tools, &vm_opts, &initrd);
    let mut images = Vec::new();
    for (nsid, bs, bytes, file) in NAMESPACES {
        let img = file.then(|| ir.work.join(format!("ns{nsid}.img")));
        vm::namespace(&mut q, nsid, bs, bytes, img.as_deref())?;
        if let Some(img) = img {
            images.push((nsid, img));
        }
    }
    let (slow, slow_bs, slow_bytes) = SLOW_NS;
    vm::namespace_with_latency(
        &mut q,
        slow,
        slow_bs,
        slow_bytes,
        None,
        Some(SLOW_NS_LATENCY),
    )?;
    let shown = [
        "PASS ",
        "FAIL ",
        "SKIP ",
        "HWTEST",
        "TORTURE",
        "torture",
        "round ",
        "qemu stderr",
        "nvme-setup",
        "0000:",
        "FIO-HW",
        "FIO-FAIL",
    ];
    let console = vm::run(q, o.vm.timeout, &ir.work, |l| {
        shown.iter().any(|p| l.trim_start().starts_with(p)) || l.starts_with("  ")
    })?;
    let log = &console.log;
    let mut result = if console.timed_out {
        Err(console.timeout_error(o.vm.timeout))
    } else if o.tcp_only {
        check_tcp_log(log)
    } else {
        check_log(log, true, Some(o.torture_rounds).filter(|&r| r > 0))
    };
    // The read-back blocks and fio's verify headers exist only after the PCIe suite.
    if result.is_ok() && !o.tcp_only {
        if let Err(e) = check_images(log, &images) {
            result = Err(e);
        }
    }
    if let (Ok(summary), false) = (&result, o.tcp_only) {
        let img = ir.work.join(format!("ns{}.img", FIO_LAYOUT.ns));
        result = crate::fio_hw::check(log, &img, FIO_LAYOUT).map(|f| format!("{summary}; {f}"));
    }
    if !console.timed_out && !o.tcp_only {
        // Reported even when something else failed: the field list is worth having.
        let cli = crate::cli_compare::check(log);
        match (&cli, &result) {
            (Ok(c), Ok(s)) => result = Ok(format!("{s}; nvme-cli comparison: {c}")),
            (Err(e), Ok(_)) => result = Err(format!("nvme-cli comparison: {e}")),
            (Ok(c), Err(_)) | (Err(c), Err(_)) => println!("nvme-cli comparison: {c}"),
        }
    }
    if result.is_ok() && !console.status.success() {
        result = Err(format!("QEMU exited with {}", console.status));
    }
    match result {
        Ok(s) => {
            println!(
                "hardware suite in the VM: {s}; boot + suite + read-back took {:.1} s ({})",
                console.took.as_secs_f64(),
                o.vm.accel
            );
            if !o.vm.keep {
                let _ = fs::remove_dir_all(&ir.work);
            }
            Ok(())
        }
        Err(e) => {
            console.dump(&ir.work);
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
    use crate::vm::strings as s;

    #[test]
    fn parses_options() {
        let o = parse(&[]).unwrap();
        assert_eq!(
            (
                o.vm.accel.as_str(),
                o.vm.timeout.as_secs(),
                o.device.is_none()
            ),
            ("tcg", 300, true)
        );
        let o = parse(&s(&["--device", "0000:01:00.0", "--write-ns", "2"])).unwrap();
        assert_eq!(o.write_ns, [2]);
        assert!(parse(&s(&["--write-ns", "1"])).is_err());
        assert!(parse(&s(&["--accel", "hvf"])).is_err());
        assert!(parse(&s(&["--aw-bits", "40"])).is_err());
        // Torture rounds: the default short run, more rounds lengthen the default timeout
        // (not one given explicitly).
        assert_eq!(o.torture_rounds, TORTURE_SHORT_ROUNDS);
        let o = parse(&s(&["--torture-rounds", "13", "--torture-seed", "7"])).unwrap();
        assert_eq!((o.torture_rounds, o.torture_seed), (13, Some(7)));
        assert_eq!(
            o.vm.timeout.as_secs(),
            300 + (13 - TORTURE_SHORT_ROUNDS) * TORTURE_SECS_PER_ROUND
        );
        let o = parse(&s(&["--torture-rounds", "13", "--timeout", "60"])).unwrap();
        assert_eq!(o.vm.timeout.as_secs(), 60);
        assert!(parse(&s(&["--torture-rounds", "x"])).is_err());
    }

    #[test]
    fn log_checks() {
        let tcp_io = "HWTEST TRID SUMMARY passed=13 failed=0 skipped=2\nHWTEST TCP-PERF rc=0 Total : 5000.00 IOPS\nHWTEST VERIFY-FILE passed=3 failed=0\nHWTEST TCP-GROUP perf rc=0 nvmectl rc=0 over NVMe/TCP: secondary Total : 900.00 IOPS\n";
        let good = format!("PASS a (1 ms)\nHWTEST SUMMARY passed=1 failed=0 skipped=0\nPASS k\nHWTEST VERIFY passed=1 failed=0\nHWTEST TCP SUMMARY passed=6 failed=0\n{tcp_io}HWTEST-INIT done\n");
        let good = good.as_str();
        assert!(check_log(good, true, None)
            .unwrap()
            .contains("nvme/tcp: passed=6 failed=0"));
        assert!(
            check_log(&good.replace("HWTEST TCP SUMMARY", "X"), true, None)
                .unwrap_err()
                .contains("NVMe/TCP")
        );
        assert!(check_log(
            &good.replace("passed=6 failed=0", "passed=5 failed=1"),
            true,
            None
        )
        .is_err());
        // Over TCP: the suite, perf beside it and the read-back from the target's file.
        for (from, to) in [
            (
                "TRID SUMMARY passed=13 failed=0",
                "TRID SUMMARY passed=12 failed=1",
            ),
            ("TCP-PERF rc=0", "TCP-PERF rc=1"),
            ("TCP-PERF rc=0 Total : 5000.00 IOPS", "TCP-PERF rc=0 "),
            (
                "VERIFY-FILE passed=3 failed=0",
                "VERIFY-FILE passed=2 failed=1",
            ),
            ("HWTEST VERIFY-FILE", "X"),
            // The -i group over TCP: both tools' status, nvmectl's role, perf's I/O.
            ("TCP-GROUP perf rc=0", "TCP-GROUP perf rc=1"),
            ("nvmectl rc=0", "nvmectl rc=1"),
            ("TCP: secondary", "TCP: primary"),
            ("secondary Total : 900.00 IOPS", "secondary "),
            ("HWTEST TCP-GROUP", "X"),
        ] {
            assert!(
                check_log(&good.replace(from, to), true, None).is_err(),
                "{from} -> {to}"
            );
        }
        assert!(check_log(&good.replace("PASS a", "FAIL a: x"), true, None)
            .unwrap_err()
            .contains("FAIL a: x"));
        assert!(check_log("PASS a\n", true, None)
            .unwrap_err()
            .contains("no summary"));
        assert!(check_log(&good.replace("HWTEST VERIFY", "X"), true, None)
            .unwrap_err()
            .contains("read-back"));
        assert!(check_log(&good.replace("HWTEST-INIT done", ""), true, None).is_err());
        assert!(check_log(&good.replace("HWTEST-INIT done", ""), false, None).is_ok());
        // The torture summary: present, with the rounds asked for, and no finding.
        let t = "TORTURE SUMMARY rounds=3 workers=9 kills=2 stops=1 hangs=0 failed_attaches=0 leaked_qids=0 lost_writes=0 bad_blocks=0 errors=0 leftovers=0 acked_writes=50 max_verify_attach_ms=300\n";
        let with = format!("{good}{t}");
        assert!(check_log(&with, true, Some(3))
            .unwrap()
            .contains("torture: rounds=3"));
        assert!(check_log(good, true, Some(3))
            .unwrap_err()
            .contains("no TORTURE SUMMARY"));
        assert!(check_log(&with, true, Some(4)).is_err());
        let tcp = format!(
            "PASS tcp-admin (3 ms)\nHWTEST TCP SUMMARY passed=1 failed=0\n{tcp_io}HWTEST-INIT done\n"
        );
        let tcp = tcp.as_str();
        assert!(check_tcp_log(tcp).unwrap().contains("passed=1"));
        assert!(check_tcp_log(&tcp.replace("PASS tcp-admin", "FAIL tcp-admin: x")).is_err());
        assert!(check_tcp_log(&tcp.replace("HWTEST-INIT done", "")).is_err());
        let e = check_log(
            &with.replace("lost_writes=0", "lost_writes=2"),
            true,
            Some(3),
        )
        .unwrap_err();
        assert!(e.contains("found lost_writes=2"), "{e}");
    }
}
