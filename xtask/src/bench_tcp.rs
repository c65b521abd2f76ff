//! `cargo xtask bench-hw --tcp`: nvme-perf over NVMe/TCP against the kernel's own NVMe/TCP
//! initiator, both talking to the same target in one VM boot.
//!
//! A measurement, not a test. In the guest (TCG, `-smp 2`), Linux's NVMe/TCP target
//! (nvmet-tcp) exports a `null_blk` device (4 KiB blocks, 1 GiB, completions inline, no
//! memory behind it) on 127.0.0.1:4420. Then, 4 KiB random reads at QD32 and QD1, the
//! initiator pinned to CPU 0 (the target's kernel threads run where the scheduler puts them,
//! the same for both):
//! 1. `nvme-perf -r 'trtype:TCP ...'`: this driver's NVMe/TCP transport, polled;
//! 2. the kernel's initiator (`nvme connect -t tcp`, Debian's nvme-cli, one poll queue),
//!    fio io_uring on the namespace's block device: plain, and polled (`--hipri`).
//!
//! xtask parses every run's JSON and prints IOPS, average latency and the ratios.

use std::fs;

use crate::bench_hw::{fio_figures, guest_cpu_of, json_of, perf_figures, Figures, BENCH_SH};
use crate::hw::{NVMET_MODULES, NVMET_SH};
use crate::vm::{self, VmOpts};

/// The subsystem the guest exports.
const NQN: &str = "nqn.2026-11.io.nvme-rs:bench-tcp";
/// The host NQN the kernel's initiator connects with (nvme-cli has no `/etc/nvme/hostnqn`
/// in the guest).
const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:6e766d65-7273-4265-6e63-685463700001";
/// Queue depths measured, in this order.
const DEPTHS: [u32; 2] = [32, 1];
/// Kernel modules of the initiator (their dependencies come from modules.dep).
const INITIATOR_MODULES: &[&str] = &["nvme-tcp"];

/// One measured configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// nvme-perf over this driver's NVMe/TCP transport.
    Perf,
    /// fio io_uring through the kernel's NVMe/TCP initiator.
    Kernel { hipri: bool },
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Run {
    kind: Kind,
    depth: u32,
}

impl Run {
    fn all() -> Vec<Run> {
        let ours = DEPTHS.map(|depth| Run {
            kind: Kind::Perf,
            depth,
        });
        let kernel = DEPTHS.iter().flat_map(|&depth| {
            [false, true].map(|hipri| Run {
                kind: Kind::Kernel { hipri },
                depth,
            })
        });
        ours.into_iter().chain(kernel).collect()
    }

    fn name(&self) -> String {
        let base = match self.kind {
            Kind::Perf => "perf-tcp",
            Kind::Kernel { hipri: false } => "fio-nvme-tcp",
            Kind::Kernel { hipri: true } => "fio-nvme-tcp-hipri",
        };
        format!("{base}-q{}", self.depth)
    }

    fn label(&self) -> &'static str {
        match self.kind {
            Kind::Perf => "nvme-perf (this driver, NVMe/TCP)",
            Kind::Kernel { hipri: false } => "fio io_uring, kernel nvme-tcp",
            Kind::Kernel { hipri: true } => "fio io_uring --hipri, kernel nvme-tcp",
        }
    }

    /// The guest command (`$dev` is the kernel initiator's block device).
    fn command(&self, time_s: u64) -> String {
        match self.kind {
            Kind::Perf => format!(
                "/bin/nvme-perf -q {} -o 4096 -w randread -t {time_s} -c 0x1 --json \
                 -r \"trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420 subnqn:{NQN} ns:1\"",
                self.depth
            ),
            Kind::Kernel { hipri } => format!(
                "taskset 0x1 /bin/fio --name={name} --filename=$dev --ioengine=io_uring --direct=1 \
                 --rw=randread --bs=4096 --iodepth={} --runtime={time_s} --time_based --norandommap \
                 --randrepeat=0 --cpus_allowed=0 --output-format=json --output=/tmp/{name}.json{}",
                self.depth,
                if hipri { " --hipri" } else { "" },
                name = self.name(),
            ),
        }
    }
}

/// The guest's `/init` after [`vm::INIT_PRELUDE`], [`BENCH_SH`], `load modules-nvmet` and
/// [`NVMET_SH`].
const INIT: &str = r#"
nqn=$(cat /bench-nqn)
nvmet_subsystem $nqn /dev/nullb0
nvmet_port 1 ipv4 127.0.0.1
nvmet_link 1 $nqn
echo "BENCH-INFO nvmet-tcp exports $nqn (/dev/nullb0: $(cat /sys/block/nullb0/queue/logical_block_size)-byte blocks, $(($(cat /sys/block/nullb0/size) / 2048)) MiB) on 127.0.0.1:4420"
. /bench-driver.sh

load modules-initiator
export LD_LIBRARY_PATH=$(cat /nvme-cli.libpath):$(cat /fio.libpath)
/bin/nvme connect -t tcp -a 127.0.0.1 -s 4420 -n $nqn --hostnqn=$(cat /bench-hostnqn) --nr-poll-queues=1 \
    || fail "nvme connect (the kernel's initiator)"
# No PCIe NVMe driver is loaded: the only NVMe block device is the initiator's.
dev=
i=0
while [ -z "$dev" ] && [ $i -lt 30 ]; do
    for b in /sys/block/nvme*n1; do [ -e $b ] && dev=/dev/$(basename $b); done
    [ -n "$dev" ] || { sleep 1; i=$((i+1)); }
done
[ -b "$dev" ] || { dmesg | tail -n 20; ls /sys/block; fail "no block device from the kernel's NVMe/TCP initiator"; }
echo "BENCH-INFO kernel initiator: $dev, io_poll=$(cat /sys/block/$(basename $dev)/queue/io_poll)"
/bin/fio --version | sed 's/^/BENCH-INFO /'
. /bench-kernel.sh
/bin/nvme disconnect -n $nqn > /dev/null
echo "BENCH-INIT done"
finish
"#;

/// `cargo xtask bench-hw --tcp`: boots the VM, runs everything, prints the table.
pub fn run(time_s: u64, o: VmOpts) -> Result<(), String> {
    let tools = vm::prerequisites(
        &[("fio", "fio"), ("ldd", "libc-bin"), ("nvme", "nvme-cli")],
        ")",
    )?;
    let bins = vm::build_static(&["nvme-tools"], &["nvme-perf"])?;
    let mut ir = vm::Initramfs::new(
        "bench-tcp-vm",
        &tools.busybox,
        &format!("{BENCH_SH}load modules-nvmet\n{NVMET_SH}{INIT}"),
    )?;
    ir.install(&bins[0], "bin/nvme-perf")?;
    crate::fio_hw::install_engine(&mut ir, true)?;
    let nvme_cli =
        vm::which("nvme").ok_or("nvme-cli is not installed (apt-get install nvme-cli)")?;
    let libdirs = ir.dynamic(&nvme_cli, "bin/nvme")?;
    ir.write("nvme-cli.libpath", &libdirs.join(":"))?;
    ir.modules(&tools.moddir, NVMET_MODULES, "modules-nvmet")?;
    ir.modules(&tools.moddir, INITIATOR_MODULES, "modules-initiator")?;
    // 1 GiB, 4 KiB blocks, completed in the submitting context (no timer, no softirq).
    ir.write("params-null_blk", "gb=1 bs=4096 irqmode=0")?;
    ir.write("bench-nqn", NQN)?;
    // No VFIO here (the prelude loads the list if it exists).
    ir.write("modules-vfio", "")?;
    ir.write("bench-hostnqn", HOSTNQN)?;
    let runs = Run::all();
    let (mut driver, mut kernel) = (String::new(), String::new());
    for r in &runs {
        let script = if r.kind == Kind::Perf {
            &mut driver
        } else {
            &mut kernel
        };
        script.push_str(&format!("bench {} {}\n", r.name(), r.command(time_s)));
    }
    ir.write("bench-driver.sh", &driver)?;
    ir.write("bench-kernel.sh", &kernel)?;
    let initrd = ir.pack()?;

    let q = vm::qemu(&tools, &o, &initrd);
    let console = vm::run(q, o.timeout, &ir.work, |l| {
        let l = l.trim_start();
        (l.starts_with("BENCH") && !l.starts_with("BENCH-JSON"))
            || l.starts_with("HWTEST-INIT")
            || l.starts_with("qemu stderr")
    })?;

    let results: Vec<(Run, Result<Figures, String>)> = runs
        .iter()
        .map(|r| {
            let f = json_of(&console.log, &r.name()).and_then(|v| match r.kind {
                Kind::Perf => perf_figures(&v),
                Kind::Kernel { .. } => fio_figures(&v),
            });
            (*r, f)
        })
        .collect();
    let table = table(&results, &console.log, time_s, &o);
    println!("{table}");
    let _ = fs::write(ir.work.join("results.txt"), &table);
    let mut problems: Vec<String> = results
        .iter()
        .filter_map(|(r, f)| f.as_ref().err().map(|e| format!("{}: {e}", r.name())))
        .collect();
    if console.timed_out {
        problems.push(console.timeout_error(o.timeout));
    } else if !console.log.lines().any(|l| l.trim() == "BENCH-INIT done") {
        let init_fail = console
            .log
            .lines()
            .find(|l| l.contains("HWTEST-INIT FAIL"))
            .unwrap_or("the guest did not reach the end of /init");
        problems.push(init_fail.trim().to_string());
    }
    console.verdict(problems, &ir.work)
}

/// Per depth: every configuration with IOPS, average latency, the guest's CPU use, and
/// ours over it (IOPS) and it over ours (latency).
fn table(results: &[(Run, Result<Figures, String>)], log: &str, time_s: u64, o: &VmOpts) -> String {
    let mut out = format!(
        "bench-hw --tcp: 4 KiB random reads over NVMe/TCP (nvmet-tcp, null_blk, 127.0.0.1), \
         initiator on CPU 0, {time_s} s per run, QEMU {}\n",
        o.accel
    );
    for depth in DEPTHS {
        out.push_str(&format!(
            "\nQD{depth:<3} {:<40} {:>10} {:>11} {:>10} {:>10} {:>7}\n",
            "config", "IOPS", "avg lat us", "ours/this", "this/ours", "guest"
        ));
        out.push_str(&format!(
            "      {:<40} {:>10} {:>11} {:>10} {:>10} {:>7}\n",
            "", "", "", "IOPS", "latency", "CPU %"
        ));
        let ours = results.iter().find_map(|(r, f)| {
            (r.kind == Kind::Perf && r.depth == depth)
                .then(|| f.as_ref().ok().copied())
                .flatten()
        });
        for (r, f) in results.iter().filter(|(r, _)| r.depth == depth) {
            let cpu = guest_cpu_of(log, &r.name()).map_or("-".into(), |c| format!("{c:.0}"));
            match f {
                Ok(f) => {
                    let (ri, rl) = ours.map_or(("-".into(), "-".into()), |u| {
                        (
                            format!("{:.2}x", u.iops / f.iops),
                            format!("{:.2}x", f.lat_us / u.lat_us),
                        )
                    });
                    out.push_str(&format!(
                        "      {:<40} {:>10.0} {:>11.2} {ri:>10} {rl:>10} {cpu:>7}\n",
                        r.label(),
                        f.iops,
                        f.lat_us
                    ));
                }
                Err(e) => out.push_str(&format!("      {:<40} failed: {e}\n", r.label())),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_and_their_commands() {
        let runs = Run::all();
        assert_eq!(runs.len(), 6);
        assert_eq!(runs[0].name(), "perf-tcp-q32");
        assert!(runs[0].command(5).contains(&format!(
            "trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420 subnqn:{NQN} ns:1"
        )));
        let k = runs
            .iter()
            .find(|r| r.name() == "fio-nvme-tcp-hipri-q1")
            .unwrap();
        let c = k.command(5);
        assert!(
            c.contains("--iodepth=1 ") && c.ends_with(" --hipri") && c.contains("--filename=$dev")
        );
    }

    #[test]
    fn table_has_ratios_against_ours_and_names_failures() {
        let results = vec![
            (
                Run {
                    kind: Kind::Perf,
                    depth: 32,
                },
                Ok(Figures {
                    iops: 20_000.0,
                    lat_us: 1600.0,
                }),
            ),
            (
                Run {
                    kind: Kind::Kernel { hipri: false },
                    depth: 32,
                },
                Ok(Figures {
                    iops: 10_000.0,
                    lat_us: 3200.0,
                }),
            ),
            (
                Run {
                    kind: Kind::Perf,
                    depth: 1,
                },
                Err("exit status 1 refused".into()),
            ),
        ];
        let t = table(&results, "", 5, &VmOpts::new(60));
        assert!(t.contains("2.00x"), "{t}");
        assert!(t.contains("failed: exit status 1 refused"), "{t}");
    }
}
