//! The multi-process part: several processes share the controller through a shared-memory
//! group over VFIO (descriptors handed over a Unix socket, each process mapping its own
//! memory in its own IOVA slice).
//!
//! The suite starts this binary again as child processes (the test kit's role variable
//! selects a child's part) and talks to them through their standard output, one line per
//! event.
//! Scenarios, in order, in one group: a primary doing I/O; a secondary with the same full
//! traddr doing I/O and admin commands; attaches with another traddr or trtype refused; a
//! process attaching, identifying and detaching a few times; a secondary SIGKILLed mid-I/O
//! (its queues deleted, the others keep going); data written by one process read back by
//! another; the primary SIGKILLed and a newcomer taking the role; the last member out
//! releasing the device for a plain attach. Then, in a new group: a primary doing checked
//! I/O while another process resets the controller twice; its last acknowledged write goes
//! into the kernel read-back manifest. The same again with PCI function resets
//! (`Controller::reset_function`, VFIO_DEVICE_RESET from a secondary). With `--tools`: the
//! real `nvme-perf` and `nvmectl -i G reset` beside each other.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nvme_host_linux::regs::features::{fid, FeatureSelect};
use nvme_host_linux::testkit::{
    complete_all, env, env_u64, io_through_resets, pattern, say, stop_requested, wait_until, Proc,
    ResetIo, RunDir,
};
use nvme_host_linux::{AttachOptions, Controller, PciAddress, QueueOptions, Role, TransportId};

use crate::Config;

type R = Result<(), String>;

/// The group id the scenarios use.
const GROUP: u32 = 7;
/// The group id of the scenarios that run the tools (`--tools`).
const TOOLS_GROUP: u32 = 8;
/// How long a child may take to say something (TCG is slow).
const WAIT: Duration = Duration::from_secs(30);
/// Bytes per I/O of the I/O loop, and I/Os per round.
const IO: usize = 4096;
const PER_ROUND: usize = 8;

// ---------------------------------------------------------------------------------------
// Children

fn attach_from_env(trid: &str) -> Result<Controller, String> {
    let trid = TransportId::parse(trid)?;
    let opts = AttachOptions {
        group: Some(env_u64("NVME_HWTEST_MP_GROUP")? as u32),
        ..Default::default()
    };
    Controller::attach_with(&trid, &opts).map_err(|e| e.to_string())
}

fn role_name(c: &Controller) -> &'static str {
    match c.role() {
        Role::Primary => "primary",
        Role::Secondary => "secondary",
        Role::Single => "single",
    }
}

/// Runs child role `role`; returns the exit status.
pub fn child(role: &str) -> u8 {
    let r = (|| -> R {
        let trid = env("NVME_HWTEST_MP_TRID")?;
        if role == "cycle" {
            return child_cycle(&trid);
        }
        let ctrl = match attach_from_env(&trid) {
            Ok(c) => c,
            Err(e) => {
                say(format!("ATTACH-ERROR {e}"));
                std::process::exit(3);
            }
        };
        say(format!("READY {} {}", role_name(&ctrl), std::process::id()));
        match role {
            "io" => child_io(&ctrl),
            "queues" => {
                // The first buffer after attach: where this member's slice has room.
                let b = ctrl
                    .alloc_dma(2 * PER_ROUND * IO)
                    .map_err(|e| e.to_string())?;
                say(format!("IOVA {:#x}", b.iova()));
                say(format!("IN-USE {}", ctrl.io_queues_in_use()));
                let q = ctrl
                    .alloc_io_queue(QueueOptions::new(16))
                    .map_err(|e| e.to_string())?;
                say(format!("QID {}", q.qid()));
                Ok(())
            }
            "write" | "check" => child_data(&ctrl, role == "write"),
            "claims" => {
                nvme_host_linux::testkit::claim_leases(&ctrl, &env("NVME_HWTEST_MP_LEASES")?, || {})
            }
            "interrupt-wait" => {
                let nsid = env_u64("NVME_HWTEST_MP_SLOW_NS")? as u32;
                let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
                let (ic, iw) = nvme_host_linux::testkit::wait_cost(&ctrl, nsid, 64, true)?;
                let (pc, pw) = nvme_host_linux::testkit::wait_cost(&ctrl, nsid, 64, false)?;
                say(format!(
                    "WAIT-CPU interrupts {:.1} {:.1} polling {:.1} {:.1}",
                    ms(ic),
                    ms(iw),
                    ms(pc),
                    ms(pw)
                ));
                Ok(())
            }
            "interrupt-io" => {
                let nsid = env_u64("NVME_HWTEST_MP_NS")? as u32;
                let bs = ctrl
                    .namespace(nsid)
                    .map_err(|e| e.to_string())?
                    .block_size() as usize;
                let lba = env_u64("NVME_HWTEST_MP_LBA")?;
                nvme_host_linux::testkit::interrupt_io(&ctrl, nsid, lba, bs, 64)
            }
            "io-resets" => {
                let nsid = env_u64("NVME_HWTEST_MP_NS")? as u32;
                let at = ResetIo {
                    nsid,
                    lba: env_u64("NVME_HWTEST_MP_LBA")?,
                    block_size: ctrl
                        .namespace(nsid)
                        .map_err(|e| e.to_string())?
                        .block_size() as usize,
                };
                io_through_resets(&ctrl, at).map(|_| ())
            }
            "reset" => {
                ctrl.reset().map_err(|e| format!("reset: {e}"))?;
                say("RESET-DONE");
                Ok(())
            }
            "reset-function" => {
                let f = ctrl
                    .reset_function()
                    .map_err(|e| format!("function reset: {e}"))?;
                let hex = |v: Option<u16>| v.map_or(String::from("-"), |v| format!("{v:#06x}"));
                say(format!(
                    "FUNCTION-RESET command {} {}",
                    hex(f.command_before),
                    hex(f.command_after)
                ));
                say("RESET-DONE");
                Ok(())
            }
            other => Err(format!("unknown role {other}")),
        }
    })();
    nvme_host_linux::testkit::exit_code(r)
}

/// Writes and reads back its own region, 8 I/Os in flight, until told to stop; with
/// `NVME_HWTEST_MP_ADMIN=1` also admin commands every round.
fn child_io(ctrl: &Controller) -> R {
    let nsid = env_u64("NVME_HWTEST_MP_NS")? as u32;
    let base = env_u64("NVME_HWTEST_MP_LBA")?;
    let admin = std::env::var("NVME_HWTEST_MP_ADMIN").is_ok_and(|v| v == "1");
    let bs = ctrl
        .namespace(nsid)
        .map_err(|e| e.to_string())?
        .block_size() as usize;
    let per = (IO / bs) as u64;
    let serial = ctrl.identify().serial().to_string();
    let mut buf = ctrl
        .alloc_dma(2 * PER_ROUND * IO)
        .map_err(|e| e.to_string())?;
    say(format!("IOVA {:#x}", buf.iova()));
    let mut qp = ctrl
        .alloc_io_queue(QueueOptions::new(32))
        .map_err(|e| e.to_string())?;
    say(format!("QID {}", qp.qid()));
    let mut round = 0u64;
    let mut last = Instant::now();
    while !stop_requested() {
        round += 1;
        let seed = round.wrapping_mul(1000) + base;
        for i in 0..PER_ROUND {
            let lba = base + i as u64 * per;
            pattern::fill(seed, lba, bs, &mut buf.as_mut_slice()[i * IO..(i + 1) * IO]);
        }
        for i in 0..PER_ROUND {
            let r = buf.slice(i * IO..(i + 1) * IO).map_err(|e| e.to_string())?;
            qp.write(nsid, base + i as u64 * per, r, i as u64)
                .map_err(|e| e.to_string())?;
        }
        complete_all(&mut qp, Duration::from_secs(20))?;
        for i in 0..PER_ROUND {
            let r = buf
                .slice((PER_ROUND + i) * IO..(PER_ROUND + i + 1) * IO)
                .map_err(|e| e.to_string())?;
            qp.read(nsid, base + i as u64 * per, r, i as u64)
                .map_err(|e| e.to_string())?;
        }
        complete_all(&mut qp, Duration::from_secs(20))?;
        pattern::check(seed, base, bs, &buf.as_slice()[PER_ROUND * IO..])
            .map_err(|e| format!("round {round}: {e}"))?;
        if admin {
            let id = ctrl.identify_controller().map_err(|e| e.to_string())?;
            if id.serial() != serial {
                return Err(format!("identify controller: serial '{}'", id.serial()));
            }
            let ns = ctrl.identify_namespace(nsid).map_err(|e| e.to_string())?;
            if ns.block_size() as usize != bs {
                return Err(format!(
                    "identify namespace {nsid}: block size {}",
                    ns.block_size()
                ));
            }
            ctrl.get_features(fid::NUMBER_OF_QUEUES, FeatureSelect::Current, 0, 0)
                .map_err(|e| e.to_string())?;
            ctrl.smart_log().map_err(|e| e.to_string())?;
        }
        if last.elapsed() > Duration::from_millis(100) {
            say(format!("PROGRESS {round}"));
            last = Instant::now();
        }
    }
    say(format!("DONE {round}"));
    Ok(())
}

/// Attaches, identifies, reads and detaches a few times.
fn child_cycle(trid: &str) -> R {
    let nsid = env_u64("NVME_HWTEST_MP_NS")? as u32;
    for i in 0..env_u64("NVME_HWTEST_MP_CYCLES")? {
        let start = Instant::now();
        let ctrl = attach_from_env(trid)?;
        if ctrl.role() != Role::Secondary {
            return Err(format!(
                "cycle {i}: role {}, expected secondary",
                role_name(&ctrl)
            ));
        }
        let id = ctrl.identify_controller().map_err(|e| e.to_string())?;
        let ns = ctrl.namespace(nsid).map_err(|e| e.to_string())?.clone();
        let mut qp = ctrl
            .alloc_io_queue(QueueOptions::new(8))
            .map_err(|e| e.to_string())?;
        let mut b = ctrl
            .alloc_dma(ns.block_size() as usize)
            .map_err(|e| e.to_string())?;
        qp.read_sync(nsid, 0, &mut b).map_err(|e| e.to_string())?;
        drop(qp);
        drop(ctrl);
        say(format!(
            "CYCLE {i} serial {} in {} ms",
            id.serial(),
            start.elapsed().as_millis()
        ));
    }
    say("DONE");
    Ok(())
}

/// Writes a pattern at `NVME_HWTEST_MP_LBA`, or reads it back and compares.
fn child_data(ctrl: &Controller, write: bool) -> R {
    let nsid = env_u64("NVME_HWTEST_MP_NS")? as u32;
    let lba = env_u64("NVME_HWTEST_MP_LBA")?;
    let bs = ctrl
        .namespace(nsid)
        .map_err(|e| e.to_string())?
        .block_size() as usize;
    let mut qp = ctrl
        .alloc_io_queue(QueueOptions::default())
        .map_err(|e| e.to_string())?;
    let mut b = ctrl.alloc_dma(4 * IO).map_err(|e| e.to_string())?;
    let seed = 0x6d70_0000 ^ lba;
    if write {
        pattern::fill(seed, lba, bs, b.as_mut_slice());
        qp.write_sync(nsid, lba, &mut b).map_err(|e| e.to_string())
    } else {
        qp.read_sync(nsid, lba, &mut b).map_err(|e| e.to_string())?;
        pattern::check(seed, lba, bs, b.as_slice())
            .map_err(|e| format!("data differs from what the other process wrote: {e}"))
    }
}

// ---------------------------------------------------------------------------------------
// The suite's side

/// The scenarios' shared state: the group, its processes, what they reported.
pub struct Mp {
    dir: RunDir,
    addr: PciAddress,
    nsid: u32,
    bs: u64,
    base: u64,
    primary: Option<Proc>,
    primary_qid: String,
    secondary: Option<Proc>,
    /// The kernel read-back manifest (`--manifest`), to which data scenarios add ranges.
    manifest: Option<String>,
    /// Where `nvme-perf` and `nvmectl` are (`--tools`).
    tools: Option<PathBuf>,
    /// A namespace perf may overwrite (`--scratch-ns`).
    scratch_ns: Option<u32>,
    /// A namespace whose commands take milliseconds (`--slow-ns`).
    slow_ns: Option<u32>,
    /// The controller supports Namespace Attachment (`--ns-attachment`).
    ns_attachment: bool,
}

impl Mp {
    /// Prepares the run directory; the controller is the suite's (not attached now).
    pub fn new(cfg: &Config) -> Result<Mp, String> {
        let addr = match cfg.device {
            Some(a) => a,
            None => *nvme_host_linux::vfio::probe()
                .map_err(|e| e.to_string())?
                .first()
                .ok_or("no NVMe function bound to vfio-pci")?,
        };
        let Some(&nsid) = cfg.write_ns.first() else {
            return Err(
                "SKIP read-only run (the multi-process tests write; pass --write-ns N)".into(),
            );
        };
        // The namespace's size, from a short plain attach (also checks the device is free).
        let (bs, blocks) = {
            let c = Controller::attach(&format!("trtype:PCIe traddr:{addr}"))
                .map_err(|e| format!("attach {addr}: {e}"))?;
            let ns = c.namespace(nsid).map_err(|e| e.to_string())?;
            (ns.block_size() as u64, ns.blocks())
        };
        let dir = RunDir::new("hwtest-mp")?;
        Ok(Mp {
            dir,
            addr,
            nsid,
            bs,
            // Three quarters into the namespace: clear of what the other tests keep.
            base: blocks / 4 * 3,
            primary: None,
            primary_qid: String::new(),
            secondary: None,
            manifest: cfg.manifest.clone(),
            tools: cfg.tools.as_ref().map(PathBuf::from),
            scratch_ns: cfg.scratch_ns,
            slow_ns: cfg.slow_ns,
            ns_attachment: cfg.ns_attachment,
        })
    }

    /// First LBA of data region `k` (64 KiB each).
    fn region(&self, k: u64) -> u64 {
        self.base + k * (65536 / self.bs)
    }
    fn full_trid(&self) -> String {
        format!("trtype:PCIe traddr:{}", self.addr)
    }

    fn spawn(&self, name: &str, role: &str, trid: &str, extra: &[(&str, String)]) -> R2<Proc> {
        let mut cmd = self.dir.rerun(role)?;
        cmd.env("NVME_HWTEST_MP_TRID", trid)
            .env("NVME_HWTEST_MP_GROUP", GROUP.to_string())
            .env("NVME_HWTEST_MP_NS", self.nsid.to_string())
            .stderr(Stdio::inherit());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        Ok(Proc::spawn(name, &mut cmd)?.with_wait(WAIT))
    }

    fn primary(&mut self) -> Result<&mut Proc, String> {
        self.primary
            .as_mut()
            .ok_or_else(|| "no primary (an earlier step failed)".into())
    }
    fn secondary(&mut self) -> Result<&mut Proc, String> {
        self.secondary
            .as_mut()
            .ok_or_else(|| "no secondary (an earlier step failed)".into())
    }

    /// A process creates the group (device reset, bring-up) and does I/O.
    pub fn primary_io(&mut self) -> R {
        self.dir.clear_stop();
        let lba = self.region(0).to_string();
        let mut p = self.spawn(
            "primary",
            "io",
            &self.full_trid(),
            &[("NVME_HWTEST_MP_LBA", lba)],
        )?;
        let ready = p.line("READY")?;
        if !ready.starts_with("READY primary") {
            return Err(format!("first process: {ready}"));
        }
        self.primary_qid = p.line("QID")?;
        p.progresses()?;
        println!("  primary {}, {}", &ready[14..], self.primary_qid);
        self.primary = Some(p);
        Ok(())
    }

    /// A second process joins with the same full traddr (descriptors from the primary) and
    /// does I/O and admin commands while the primary keeps going.
    pub fn secondary_io_admin(&mut self) -> R {
        let lba = self.region(1).to_string();
        let mut s = self.spawn(
            "secondary",
            "io",
            &self.full_trid(),
            &[
                ("NVME_HWTEST_MP_LBA", lba),
                ("NVME_HWTEST_MP_ADMIN", "1".into()),
            ],
        )?;
        let ready = s.line("READY")?;
        if !ready.starts_with("READY secondary") {
            return Err(format!("second process: {ready}"));
        }
        let qid = s.line("QID")?;
        s.progresses()?;
        self.primary()?.progresses()?;
        println!("  secondary {}, {qid}", &ready[16..]);
        self.secondary = Some(s);
        Ok(())
    }

    /// Another controller's address, and another transport type, are refused clearly.
    pub fn refuse_mismatch(&mut self) -> R {
        let other = "trtype:PCIe traddr:0000:0f:00.0";
        let mut p = self.spawn("other traddr", "queues", other, &[])?;
        let line = p
            .line("ATTACH-ERROR")
            .map_err(|e| format!("not refused: {e}"))?;
        let want = format!("drives the controller at {}, not 0000:0f:00.0", self.addr);
        if !line.contains(&want) {
            return Err(format!("the refusal does not say '{want}': {line}"));
        }
        println!("  {line}");
        let code = p.finish()?.code;
        if code != Some(3) {
            return Err(format!("refused process exited with {code:?}"));
        }
        let mut p = self.spawn("trtype:sim", "queues", "trtype:sim", &[])?;
        let line = p
            .line("ATTACH-ERROR")
            .map_err(|e| format!("not refused: {e}"))?;
        if !line.contains("drives the PCIe controller") {
            return Err(format!(
                "the refusal does not name the PCIe controller: {line}"
            ));
        }
        println!("  {line}");
        p.finish()?;
        Ok(())
    }

    /// A management-style process attaches, identifies, reads and detaches a few times.
    pub fn attach_detach_cycles(&mut self) -> R {
        let mut c = self.spawn(
            "cycler",
            "cycle",
            &self.full_trid(),
            &[("NVME_HWTEST_MP_CYCLES", "3".into())],
        )?;
        for _ in 0..3 {
            let l = c.line("CYCLE")?;
            println!("  {l}");
        }
        c.line("DONE")?;
        c.finish()?.clean()?;
        self.primary()?.progresses()?;
        self.secondary()?.progresses()
    }

    /// A secondary SIGKILLed mid-I/O: the others continue, its queue is deleted and its
    /// queue id returned, and a newcomer creates a queue.
    pub fn kill_secondary(&mut self) -> R {
        let lba = self.region(2).to_string();
        let mut v = self.spawn(
            "victim",
            "io",
            &self.full_trid(),
            &[("NVME_HWTEST_MP_LBA", lba)],
        )?;
        v.line("READY secondary")?;
        let v_iova = v.line("IOVA")?;
        let vq = v.line("QID")?;
        v.line("PROGRESS")?;
        v.kill();
        self.primary()?.progresses()?;
        self.secondary()?.progresses()?;
        // The survivors' monitors (every 50 ms) delete the victim's queues and free its member
        // record; a newcomer joining before that finishes takes the next free record (and
        // slice) instead, which is correct but not what this check looks for. Give the
        // cleanup ample time in the slow TCG guest.
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let mut n = self.spawn("newcomer", "queues", "trtype:PCIe", &[])?;
        n.line("READY secondary")?;
        // The newcomer takes the victim's member slot, so its slice: the same first buffer
        // address shows that the victim's mappings were removed (a stale one would be
        // skipped over).
        let n_iova = n.line("IOVA")?;
        if n_iova != v_iova {
            return Err(format!(
                "the newcomer's first buffer is at {n_iova}, the victim's was at {v_iova}: the dead member's IOVA slice was not unmapped"
            ));
        }
        let in_use = n.line("IN-USE")?;
        if in_use != "IN-USE 2" {
            return Err(format!(
                "after the victim ({vq}) died: {in_use}, expected 2 (primary and secondary)"
            ));
        }
        let q = n.line("QID")?;
        n.finish()?.clean()?;
        println!("  victim with {vq} killed mid-I/O; newcomer: {in_use}, created {q}, first buffer at {} like the victim's", &n_iova[5..]);
        self.primary()?.progresses()
    }

    /// Data written by one process reads back in another (while the group lives).
    pub fn data_across_processes(&mut self) -> R {
        let lba = self.region(3).to_string();
        let t = self.full_trid();
        self.spawn(
            "writer",
            "write",
            &t,
            &[("NVME_HWTEST_MP_LBA", lba.clone())],
        )?
        .finish()?
        .clean()?;
        self.spawn("reader", "check", &t, &[("NVME_HWTEST_MP_LBA", lba)])?
            .finish()?
            .clean()?;
        let other = self.region(4).to_string();
        let e = self
            .spawn(
                "reader of other blocks",
                "check",
                &t,
                &[("NVME_HWTEST_MP_LBA", other)],
            )?
            .finish()?;
        if e.code != Some(1) || !e.errors.iter().any(|e| e.contains("data differs")) {
            return Err(format!(
                "reading blocks nobody wrote must not match: exit {:?}, {:?}",
                e.code, e.errors
            ));
        }
        Ok(())
    }

    /// Two more processes of the group, each with two interrupt-driven queue pairs (MSI-X
    /// through `VFIO_DEVICE_SET_IRQS`), beside the primary and secondary's polled I/O: each
    /// queue gets the vector numbered like it, no two share one, every queue consumes
    /// interrupts (a later queue's set-up left the earlier ones' vectors alone), and the
    /// data reads back.
    pub fn interrupts_in_two_processes(&mut self) -> R {
        let t = self.full_trid();
        let mut procs = Vec::new();
        for k in [7, 8] {
            let lba = self.region(k).to_string();
            procs.push(self.spawn(
                &format!("interrupts {k}"),
                "interrupt-io",
                &t,
                &[("NVME_HWTEST_MP_LBA", lba)],
            )?);
        }
        let mut reports = Vec::new();
        for p in &mut procs {
            reports.push((p.line("VECTOR")?, p.line("IRQS")?));
        }
        let vectors = nvme_host_linux::testkit::check_interrupt_reports(&reports)?;
        for p in procs {
            p.finish()?.clean()?;
        }
        println!("  interrupt vectors {vectors:?}");
        self.primary()?.progresses()?;
        self.secondary()?.progresses()?;
        Ok(())
    }

    /// A thread waiting on its interrupt sleeps: 64 reads at QD1 from the slow namespace
    /// (every command takes milliseconds), each awaited with `wait`, cost the thread less
    /// than a third of the wall time in CPU with interrupts; the same through a polled queue
    /// pair is printed beside it (not checked: it is the spinning the interrupts avoid).
    pub fn interrupt_wait_sleeps(&mut self) -> R {
        let Some(slow) = self.slow_ns else {
            return Err("SKIP no --slow-ns".into());
        };
        let t = self.full_trid();
        let mut p = self.spawn(
            "interrupt waiter",
            "interrupt-wait",
            &t,
            &[("NVME_HWTEST_MP_SLOW_NS", slow.to_string())],
        )?;
        let line = p.line("WAIT-CPU")?;
        p.finish()?.clean()?;
        let v: Vec<f64> = line
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        let [irq_cpu, irq_wall, poll_cpu, poll_wall] = v[..] else {
            return Err(format!("bad report: {line}"));
        };
        println!(
            "  64 reads at QD1 from the slow namespace: with interrupts {irq_cpu:.1} ms CPU in {irq_wall:.1} ms, \
             polling {poll_cpu:.1} ms CPU in {poll_wall:.1} ms"
        );
        if irq_cpu * 3.0 > irq_wall {
            return Err(format!(
                "waiting on interrupts used {irq_cpu:.1} ms of CPU in {irq_wall:.1} ms: the thread did not sleep"
            ));
        }
        Ok(())
    }

    /// LBA range leases between processes of the group over VFIO, beside the primary's and
    /// secondary's I/O: an exclusive lease held by one process makes an overlapping claim by
    /// another fail with an error naming the holder's pid, a disjoint shared claim succeeds,
    /// and once the holder is SIGKILLed a newcomer gets the range at once.
    pub fn leases(&mut self) -> R {
        let t = self.full_trid();
        let blocks = 65536 / self.bs;
        let spec = |k: u64, offset: u64, mode: &str| {
            format!("{}:{}:{blocks}:{mode}", self.nsid, self.region(k) + offset)
        };
        let held = spec(9, 0, "exclusive");
        let claims = |me: &Self, name: &str, specs: String| {
            me.spawn(name, "claims", &t, &[("NVME_HWTEST_MP_LEASES", specs)])
        };
        let mut holder = claims(self, "lease holder", held.clone())?;
        let pid = holder.line("READY")?;
        let pid = pid.split_whitespace().nth(2).unwrap_or("?").to_string();
        holder.line(&format!("LEASED {held}"))?;
        holder.line("DONE")?;
        let overlapping = spec(9, blocks / 2, "exclusive");
        let disjoint = spec(10, 0, "shared");
        let mut claimer = claims(self, "lease claimer", format!("{overlapping} {disjoint}"))?;
        let conflict = claimer.line(&format!("CONFLICT {overlapping} "))?;
        if !conflict.contains(&format!("pid {pid} ")) {
            return Err(format!(
                "the conflict should name the holder, pid {pid}: {conflict}"
            ));
        }
        claimer.line(&format!("LEASED {disjoint}"))?;
        claimer.line("DONE")?;
        holder.kill();
        let mut successor = claims(self, "lease successor", held.clone())?;
        successor.line(&format!("LEASED {held}"))?;
        successor.line("DONE")?;
        println!("  {conflict}");
        successor.kill();
        claimer.kill();
        self.primary()?.progresses()?;
        self.secondary()?.progresses()?;
        Ok(())
    }

    /// The primary SIGKILLed: the secondary continues; a newcomer becomes primary and gets
    /// the dead primary's queue id (its queue was deleted on the controller).
    pub fn kill_primary(&mut self) -> R {
        let mut p = self
            .primary
            .take()
            .ok_or("no primary (an earlier step failed)")?;
        p.kill();
        self.secondary()?.progresses()?;
        let mut n = self.spawn("new primary", "queues", &self.full_trid(), &[])?;
        let ready = n.line("READY")?;
        if !ready.starts_with("READY primary") {
            return Err(format!(
                "the newcomer did not take the primary role: {ready}"
            ));
        }
        let in_use = n.line("IN-USE")?;
        if in_use != "IN-USE 1" {
            return Err(format!("{in_use}, expected 1 (the secondary's)"));
        }
        let q = n.line("QID")?;
        if q != self.primary_qid {
            return Err(format!(
                "the newcomer got {q}, not the dead primary's {}: its queue was not deleted",
                self.primary_qid
            ));
        }
        n.finish()?.clean()?;
        println!("  newcomer is primary and reuses the dead primary's {q}");
        self.secondary()?.progresses()
    }

    /// The last member out shuts down and resets; the group's files go, and a plain attach
    /// (which needs the VFIO group free) reads back what the writer wrote.
    pub fn last_member_out(&mut self) -> R {
        self.dir.stop()?;
        let mut s = self
            .secondary
            .take()
            .ok_or("no secondary (an earlier step failed)")?;
        let done = s.line("DONE")?;
        s.finish()?.clean()?;
        let group_dir = self.dir.group_dir(GROUP);
        wait_until("the group directory is removed", WAIT, || {
            !group_dir.exists()
        })?;
        let c = Controller::attach(&self.full_trid())
            .map_err(|e| format!("plain attach after the group ended: {e}"))?;
        let lba = self.region(3);
        let bs = self.bs as usize;
        let mut qp = c
            .alloc_io_queue(QueueOptions::new(8))
            .map_err(|e| e.to_string())?;
        let mut b = c.alloc_dma(4 * IO).map_err(|e| e.to_string())?;
        qp.read_sync(self.nsid, lba, &mut b)
            .map_err(|e| e.to_string())?;
        pattern::check(0x6d70_0000 ^ lba, lba, bs, b.as_slice())
            .map_err(|e| format!("the writer's data after the group ended: {e}"))?;
        println!("  secondary {done}; group removed; plain attach reads the writer's data");
        Ok(())
    }

    /// In a new group (the old one is gone): a primary does checked I/O while another
    /// process resets the controller for the group, twice; each reset aborts the primary's
    /// I/O once, and it carries on, on re-created queues. Its last acknowledged write is
    /// added to the kernel read-back manifest (and shown for the host's disk-image check).
    pub fn resets_under_io(&mut self) -> R {
        self.checked_io_through_resets(false)
    }

    /// As [`resets_under_io`](Self::resets_under_io), with PCI function resets
    /// (`Controller::reset_function`, `VFIO_DEVICE_RESET` from a secondary that received
    /// the device descriptor): the primary's I/O is aborted once per reset and carries on,
    /// the PCI command register keeps memory decoding and bus mastering through the reset
    /// (vfio-pci restores the config space), and the register mapping keeps working (the
    /// controller is brought up through it).
    pub fn function_resets_under_io(&mut self) -> R {
        if let Ok(m) =
            std::fs::read_to_string(format!("/sys/bus/pci/devices/{}/reset_method", self.addr))
        {
            println!("  kernel reset methods of {}: {}", self.addr, m.trim());
        }
        self.checked_io_through_resets(true)
    }

    fn checked_io_through_resets(&mut self, function: bool) -> R {
        self.dir.clear_stop();
        let lba = self.region(if function { 6 } else { 5 });
        let t = self.full_trid();
        let mut p = self.spawn(
            "resets primary",
            "io-resets",
            &t,
            &[("NVME_HWTEST_MP_LBA", lba.to_string())],
        )?;
        let ready = p.line("READY")?;
        if !ready.starts_with("READY primary") {
            return Err(format!("first process of the new group: {ready}"));
        }
        p.line("QID")?;
        p.progresses()?;
        for n in 1..=2 {
            let role = if function { "reset-function" } else { "reset" };
            let mut r = self.spawn(&format!("resetter {n}"), role, &t, &[])?;
            r.line("READY secondary")?;
            let start = Instant::now();
            if function {
                let l = r.line("FUNCTION-RESET")?;
                check_command_register(&l)?;
                println!("  {l}");
            }
            r.line("RESET-DONE")?;
            let took = start.elapsed().as_millis();
            r.finish()?.clean()?;
            // The reset reached the primary (its I/O aborted once), which carries on.
            let aborted = p.line("ABORTED")?;
            p.progresses()?;
            let kind = if function { "function reset" } else { "reset" };
            println!("  {kind} {n} in {took} ms; primary: {aborted}, then progress");
        }
        self.dir.stop()?;
        let done = p.line("DONE")?;
        let acked = p.line("ACKED ")?;
        p.finish()?.clean()?;
        let aborted: u64 = done
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("bad line '{done}'"))?;
        if aborted < 2 {
            return Err(format!("two resets, but the primary saw {aborted}: {done}"));
        }
        let line = &acked["ACKED ".len()..];
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 6 || f[0] != self.nsid.to_string() || f[1] != lba.to_string() {
            return Err(format!("bad line '{acked}'"));
        }
        let group_dir = self.dir.group_dir(GROUP);
        wait_until("the group directory is removed", WAIT, || {
            !group_dir.exists()
        })?;
        println!(
            "  HWTEST READBACK ns={} lba={} blocks={} bs={} fnv={}",
            f[0], f[1], f[2], f[3], f[5]
        );
        if let Some(m) = &self.manifest {
            use std::io::Write;
            std::fs::OpenOptions::new()
                .append(true)
                .open(m)
                .and_then(|mut file| writeln!(file, "{line}"))
                .map_err(|e| format!("adding to the read-back manifest {m}: {e}"))?;
        }
        println!(
            "  primary {done}; its last acknowledged write ({} blocks at LBA {lba}) {}",
            f[2],
            if self.manifest.is_some() {
                "is in the kernel read-back manifest"
            } else {
                "is not read back (no --manifest)"
            }
        );
        Ok(())
    }
}

type R2<T> = Result<T, String>;

/// Checks a `FUNCTION-RESET command BEFORE AFTER ...` line: memory decoding (bit 1) and bus
/// mastering (bit 2) on before the reset, and still on right after it.
fn check_command_register(line: &str) -> R {
    let f: Vec<&str> = line.split_whitespace().collect();
    let parse = |i: usize| {
        f.get(i)
            .and_then(|v| u16::from_str_radix(v.trim_start_matches("0x"), 16).ok())
            .ok_or_else(|| format!("bad line '{line}'"))
    };
    let (before, after) = (parse(2)?, parse(3)?);
    const ON: u16 = 0x2 | 0x4;
    if before & ON != ON || after & ON != ON {
        return Err(format!(
            "PCI command register {before:#06x} before and {after:#06x} after the function reset: memory decoding and bus mastering must be on in both"
        ));
    }
    Ok(())
}

/// A tool run to its end: exit status 0 and nothing on standard error but lines that start
/// with one of `expected`, or an error with its output.
fn tool_ok(e: &nvme_host_linux::testkit::Exit, expected: &[&str]) -> R {
    let unexpected = e
        .stderr
        .lines()
        .any(|l| !l.trim().is_empty() && !expected.iter().any(|p| l.starts_with(p)));
    if e.code != Some(0) || unexpected {
        return Err(format!(
            "{} exited with {:?}\nstdout:\n{}\nstderr:\n{}",
            e.name, e.code, e.stdout, e.stderr
        ));
    }
    Ok(())
}

/// The value of `key` in `nvmectl smart-log`'s text output (`key<tabs>: value`).
fn smart_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().replace(',', "").parse().ok())?
    })
}

/// The `Total` IOPS of nvme-perf's table.
fn perf_total_iops(stdout: &str) -> Option<f64> {
    let line = stdout.lines().find(|l| l.starts_with("Total "))?;
    line.rsplit_once(':')?
        .1
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl Mp {
    fn tool(&self, name: &str) -> R2<Command> {
        let dir = self.tools.as_ref().ok_or("no --tools directory")?;
        let mut c = Command::new(dir.join(name));
        c.env("NVME_RUN_DIR", self.dir.path())
            .stdin(Stdio::null())
            .stderr(Stdio::piped());
        Ok(c)
    }

    /// Runs a tool to its end (bounded by [`WAIT`]).
    fn run_tool(&self, name: &str, args: &[&str]) -> R2<nvme_host_linux::testkit::Exit> {
        let mut c = self.tool(name)?;
        c.args(args);
        Proc::spawn(&format!("{name} {}", args.join(" ")), &mut c)?
            .with_wait(WAIT)
            .finish()
    }

    /// The controller's count of host commands of perf's kind, read by `nvmectl -i G
    /// smart-log` (another process joining the group beside perf).
    fn host_commands(&self, group: &str, key: &str) -> R2<u64> {
        let e = self.run_tool(
            "nvmectl",
            &["-i", group, "-r", &self.full_trid(), "smart-log"],
        )?;
        tool_ok(&e, &[])?;
        smart_field(&e.stdout, key)
            .ok_or_else(|| format!("no {key} in nvmectl smart-log's output:\n{}", e.stdout))
    }

    /// Waits until the controller has counted `more` commands of perf's kind beyond
    /// `from`; returns the count then.
    fn wait_host_commands(&self, group: &str, key: &str, from: u64, more: u64) -> R2<u64> {
        let start = Instant::now();
        loop {
            let n = self.host_commands(group, key)?;
            if n >= from + more {
                return Ok(n);
            }
            if start.elapsed() > WAIT {
                return Err(format!(
                    "{key} went from {from} to {n} in {} s, not by {more}: perf does no I/O",
                    WAIT.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The real tools beside each other: `nvme-perf -i G` (the group's primary) runs random
    /// I/O at queue depth 32 while `nvmectl -i G reset`, in other processes, resets the
    /// controller twice for the group. After each reset the controller's own SMART counter
    /// (read by `nvmectl -i G smart-log`) shows perf's I/O going on, on re-created queues;
    /// perf, stopped with SIGINT, exits 0 with IOPS and says how many I/Os the resets
    /// aborted; then the group is gone and a fresh, plain attach (`nvmectl id-ctrl`) works.
    /// perf writes only to `--scratch-ns` (the VM's null namespace), else it reads.
    pub fn tools_reset_beside_perf(&mut self) -> R {
        let g = TOOLS_GROUP.to_string();
        let (nsid, workload, key) = match self.scratch_ns {
            Some(n) => (n, "randwrite", "host_write_commands"),
            None => (self.nsid, "randread", "host_read_commands"),
        };
        let perf_trid = format!("{} ns:{nsid}", self.full_trid());
        let mut cmd = self.tool("nvme-perf")?;
        cmd.args(["-i", &g, "-q", "32", "-o", "4096", "-w", workload])
            .args(["-t", "120", "-r", &perf_trid]);
        let mut perf = Proc::spawn("nvme-perf", &mut cmd)?.with_wait(WAIT);
        perf.line("Initialization complete")?;
        let mut count = self.wait_host_commands(&g, key, 0, 0)?;
        count = self.wait_host_commands(&g, key, count, 1000)?;
        for n in 1..=2 {
            let start = Instant::now();
            let e = self.run_tool("nvmectl", &["-i", &g, "-r", &self.full_trid(), "reset"])?;
            tool_ok(&e, &[])?;
            let took = start.elapsed().as_millis();
            let before = self.host_commands(&g, key)?;
            let after = self.wait_host_commands(&g, key, before, 1000)?;
            println!("  nvmectl reset {n}: exit 0 in {took} ms; then {key} {before} -> {after}");
            count = after;
        }
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(perf.pid() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .map_err(|e| format!("SIGINT to nvme-perf: {e}"))?;
        let e = perf.finish()?;
        tool_ok(&e, &["nvme-perf: stopped by SIGINT"])?;
        let iops = perf_total_iops(&e.stdout)
            .ok_or_else(|| format!("no Total line in perf's output:\n{}", e.stdout))?;
        let aborted = e
            .stdout
            .lines()
            .find(|l| l.starts_with("Controller resets during the run aborted"))
            .ok_or_else(|| {
                format!(
                    "perf does not report I/O aborted by the resets:\n{}",
                    e.stdout
                )
            })?;
        if iops <= 0.0 {
            return Err(format!("perf reports no IOPS:\n{}", e.stdout));
        }
        let group_dir = self.dir.group_dir(TOOLS_GROUP);
        wait_until("the group directory is removed", WAIT, || {
            !group_dir.exists()
        })?;
        // A fresh attach of the controller, by a tool alone (no group).
        let e = self.run_tool("nvmectl", &["-r", &self.full_trid(), "id-ctrl"])?;
        tool_ok(&e, &[])?;
        if !e.stdout.lines().any(|l| l.starts_with("sn ")) {
            return Err(format!("nvmectl id-ctrl after the run:\n{}", e.stdout));
        }
        println!(
            "  perf: {iops:.0} IOPS total ({count} {key} counted by the controller); {aborted}"
        );
        println!("  group removed; a fresh nvmectl id-ctrl works");
        Ok(())
    }
}

impl Mp {
    /// nvmectl's subcommands, each a process of its own joining the group (`-i G`) beside a
    /// running `nvme-perf -i G` reading the scratch namespace: admin and log subcommands,
    /// features, and the data subcommands on the scratch namespace (null-co: writes are
    /// dropped, reads return zeros, so `compare` against zeros matches). Every one must
    /// exit 0, and perf must keep completing reads after them and exit 0 on SIGINT.
    pub fn tools_nvmectl_beside_perf(&mut self) -> R {
        let Some(nsid) = self.scratch_ns else {
            return Err("SKIP no --scratch-ns namespace".into());
        };
        let g = TOOLS_GROUP.to_string();
        let key = "host_read_commands";
        let trid = self.full_trid();
        let mut cmd = self.tool("nvme-perf")?;
        cmd.args([
            "-i", &g, "-q", "16", "-o", "4096", "-w", "randread", "-t", "120",
        ])
        .args(["-r", &format!("{trid} ns:{nsid}")]);
        let mut perf = Proc::spawn("nvme-perf", &mut cmd)?.with_wait(WAIT);
        perf.line("Initialization complete")?;
        let before = self.wait_host_commands(&g, key, 0, 0)?;
        let zeros = self.dir.path().join("zeros-4k");
        std::fs::write(&zeros, [0u8; 4096]).map_err(|e| format!("writing {zeros:?}: {e}"))?;
        let zeros = zeros.to_string_lossy().into_owned();
        let n = nsid.to_string();
        let runs: &[&[&str]] = &[
            &["id-ctrl"],
            &["id-ns", "-n", &n, "-o", "json"],
            &["list-ns"],
            &["ns-descs", "-n", &n],
            &["smart-log"],
            &["error-log"],
            &["fw-log"],
            &["get-log", "--log-id", "2", "-l", "512"],
            &["get-feature", "-f", "4"],
            &["set-feature", "-f", "4", "-v", "343"],
            crate::NVMECTL_IDENTIFY_PASSTHRU,
            &["flush", "-n", &n],
            &["write-zeroes", "-n", &n, "-s", "0", "-c", "7"],
            &["dsm", "-n", &n, "--ad", "-s", "8", "-b", "8"],
            &["compare", "-n", &n, "-s", "16", "-c", "0", "-d", &zeros],
            &["io-passthru", "-o", "2", "-n", &n, "-l", "4096", "--read"],
        ];
        // The status lines nvme-cli (and so nvmectl) prints on stderr for these.
        const STATUS_LINES: &[&str] = &["Admin Command ", "IO Command ", "compare: Success"];
        let start = Instant::now();
        let ran = runs.iter().try_for_each(|args| {
            let mut a = vec!["-i", g.as_str(), "-r", trid.as_str()];
            a.extend_from_slice(args);
            let e = self.run_tool("nvmectl", &a)?;
            tool_ok(&e, STATUS_LINES).map_err(|err| format!("nvmectl {}: {err}", args.join(" ")))
        });
        let took = start.elapsed().as_millis();
        let counted = ran.and_then(|()| {
            let now = self.host_commands(&g, key)?;
            self.wait_host_commands(&g, key, now, 1000)
        });
        // perf stops whatever happened above: later scenarios need the controller free.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(perf.pid() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .map_err(|e| format!("SIGINT to nvme-perf: {e}"))?;
        let e = perf.finish()?;
        let after = counted?;
        tool_ok(&e, &["nvme-perf: stopped by SIGINT"])?;
        println!(
            "  {} nvmectl subcommands as secondaries beside perf in {took} ms; {key} {before} -> {after}",
            runs.len()
        );
        Ok(())
    }

    /// Format NVM and Device Self-test with the real tools, on `--scratch-ns` only (the
    /// VM's null namespace, which no test keeps data in): `nvmectl -i G format` beside
    /// `nvme-perf -i G` is refused, naming perf and its queue; then, with the controller
    /// free, the driver's [`Controller::format`] to 512-byte blocks refreshes the attached
    /// controller's namespace (a write and read of its last block on the new geometry),
    /// `nvmectl format -b <old size>` (alone) puts the old format back, and a fresh attach
    /// sees it. Device Self-test runs when the controller offers it (QEMU 7.2's does not:
    /// then nvmectl says so and exits 1).
    pub fn tools_format_scratch(&mut self) -> R {
        let Some(nsid) = self.scratch_ns else {
            return Err("SKIP no --scratch-ns namespace to format".into());
        };
        let n = nsid.to_string();
        let trid = self.full_trid();
        // Beside perf (reading, so nothing of the namespace matters): refused.
        let g = (TOOLS_GROUP + 1).to_string();
        let perf_trid = format!("{trid} ns:{nsid}");
        let mut cmd = self.tool("nvme-perf")?;
        cmd.args(["-i", &g, "-q", "8", "-o", "4096", "-w", "randread"])
            .args(["-t", "60", "-r", &perf_trid]);
        let mut perf = Proc::spawn("nvme-perf", &mut cmd)?.with_wait(WAIT);
        perf.line("Initialization complete")?;
        let e = self.run_tool(
            "nvmectl",
            &[
                "-i", &g, "-r", &trid, "format", "-n", &n, "-b", "512", "--force",
            ],
        )?;
        let want = format!("pid {} (nvme-perf): I/O queue ids", perf.pid());
        if e.code != Some(1) || !e.stderr.contains("refused") || !e.stderr.contains(&want) {
            return Err(format!(
                "nvmectl format beside perf: exit {:?}, expected 1 naming perf ({want}):\n{}",
                e.code, e.stderr
            ));
        }
        println!("  format beside perf refused: {}", e.stderr.trim());
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(perf.pid() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .map_err(|e| format!("SIGINT to nvme-perf: {e}"))?;
        tool_ok(&perf.finish()?, &["nvme-perf: stopped by SIGINT"])?;
        let group_dir = self.dir.group_dir(TOOLS_GROUP + 1);
        wait_until("the group directory is removed", WAIT, || {
            !group_dir.exists()
        })?;

        // The driver's format: the attached controller's namespace changes with it.
        let ctrl = Controller::attach(&trid).map_err(|e| format!("attach {trid}: {e}"))?;
        let before = ctrl.namespace(nsid).map_err(|e| e.to_string())?.clone();
        let id = ctrl.identify_namespace(nsid).map_err(|e| e.to_string())?;
        let lbaf = (0..=id.nlbaf.min(15) as usize)
            .find(|&i| id.lbaf[i].data_size() == 512 && id.lbaf[i].ms == 0)
            .ok_or_else(|| {
                format!(
                    "namespace {nsid} offers no 512-byte LBA format: {:?}",
                    id.lbaf
                )
            })?;
        let start = Instant::now();
        let opts = nvme_host_linux::FormatOptions {
            lbaf: lbaf as u8,
            ..Default::default()
        };
        ctrl.format(nsid, opts)
            .map_err(|e| format!("format: {e}"))?;
        let after = ctrl.namespace(nsid).map_err(|e| e.to_string())?.clone();
        let bytes = before.size_bytes();
        if after.block_size() != 512 || after.size_bytes() != bytes {
            return Err(format!(
                "after the format namespace {nsid} has {} blocks of {} bytes; expected {} of 512",
                after.blocks(),
                after.block_size(),
                bytes / 512
            ));
        }
        println!(
            "  Format NVM to LBA format {lbaf} in {} ms: namespace {nsid} {} x {} B -> {} x 512 B",
            start.elapsed().as_millis(),
            before.blocks(),
            before.block_size(),
            after.blocks()
        );
        {
            let mut qp = ctrl
                .alloc_io_queue(QueueOptions::new(8))
                .map_err(|e| e.to_string())?;
            let mut buf = ctrl.alloc_dma(4096).map_err(|e| e.to_string())?;
            buf.as_mut_slice()[..512].fill(0xa7);
            let last = after.blocks() - 1;
            qp.write_sync(nsid, last, buf.slice(0..512).map_err(|e| e.to_string())?)
                .map_err(|e| format!("write of block {last} at 512 bytes: {e}"))?;
            qp.read_sync(nsid, last, buf.slice(512..1024).map_err(|e| e.to_string())?)
                .map_err(|e| format!("read of block {last} at 512 bytes: {e}"))?;
        }
        // Device Self-test, when the controller has it.
        let has_dst =
            nvme_host_linux::regs::identify::Oacs::from_bits_truncate(ctrl.identify().oacs)
                .contains(nvme_host_linux::regs::identify::Oacs::SELF_TEST);
        drop(ctrl);
        let e = self.run_tool(
            "nvmectl",
            &[
                "-r",
                &trid,
                "device-self-test",
                "-s",
                "1",
                "-n",
                &n,
                "--wait",
            ],
        )?;
        if has_dst {
            tool_ok(&e, &[])?;
            let log = self.run_tool("nvmectl", &["-r", &trid, "self-test-log"])?;
            tool_ok(&log, &[])?;
            println!(
                "  device self-test: {}",
                log.stdout.lines().take(6).collect::<Vec<_>>().join(" | ")
            );
        } else if e.code != Some(1) || !e.stderr.contains("OACS bit 4 is 0") {
            return Err(format!(
                "device-self-test on a controller without it: exit {:?}, expected 1 saying so:\n{}",
                e.code, e.stderr
            ));
        } else {
            println!("  device-self-test: not offered by this controller, nvmectl says so");
        }

        // The old format back, with nvmectl alone; a fresh attach sees it.
        let bs = before.block_size().to_string();
        let e = self.run_tool(
            "nvmectl",
            &["-r", &trid, "format", "-n", &n, "-b", &bs, "--force"],
        )?;
        tool_ok(&e, &[])?;
        if e.stdout.trim_end() != format!("Success formatting namespace:{nsid:x}") {
            return Err(format!("nvmectl format: {}", e.stdout));
        }
        let ctrl = Controller::attach(&trid).map_err(|e| format!("attach {trid}: {e}"))?;
        let again = ctrl.namespace(nsid).map_err(|e| e.to_string())?;
        if (again.block_size(), again.blocks()) != (before.block_size(), before.blocks()) {
            return Err(format!(
                "after nvmectl format -b {bs}: {} blocks of {} bytes, expected {} of {}",
                again.blocks(),
                again.block_size(),
                before.blocks(),
                before.block_size()
            ));
        }
        println!(
            "  nvmectl format -b {bs}: namespace {nsid} back to {} x {bs} B",
            again.blocks()
        );
        drop(ctrl);

        // Namespace Attachment: QEMU's controller attaches and detaches namespaces only
        // inside an nvme-subsys device (`cargo xtask test-hw` has one; a real device may
        // refuse). Either way the namespace list must say what happened, and the namespace
        // ends attached.
        let listed = |s: &Self| -> R2<bool> {
            let e = s.run_tool("nvmectl", &["-r", &trid, "list-ns"])?;
            tool_ok(&e, &[])?;
            Ok(e.stdout
                .lines()
                .any(|l| l.ends_with(&format!(":{nsid:#x}"))))
        };
        let e = self.run_tool("nvmectl", &["-r", &trid, "detach-ns", "-n", &n])?;
        if e.code == Some(0) {
            if listed(self)? {
                return Err(format!(
                    "detach-ns -n {nsid} succeeded, list-ns still lists it"
                ));
            }
            let a = self.run_tool("nvmectl", &["-r", &trid, "attach-ns", "-n", &n])?;
            tool_ok(&a, &[])?;
            println!("  detach-ns and attach-ns of namespace {nsid}: done");
        } else if self.ns_attachment {
            return Err(format!(
                "detach-ns -n {nsid} failed on a controller with Namespace Attachment \
                 (--ns-attachment): exit {:?}\n{}",
                e.code, e.stderr
            ));
        } else if e.code != Some(1)
            || !e
                .stderr
                .contains("Namespace Attachment (opcode 0x15) failed")
        {
            return Err(format!(
                "detach-ns: exit {:?}, expected 0 or 1 with the controller's status:\n{}",
                e.code, e.stderr
            ));
        } else {
            println!("  detach-ns refused by the controller: {}", e.stderr.trim());
        }
        if !listed(self)? {
            return Err(format!("namespace {nsid} is no longer attached"));
        }
        Ok(())
    }
}

impl Drop for Mp {
    fn drop(&mut self) {
        // Children first (the run directory goes after them, with the field).
        let _ = self.dir.stop();
        self.primary = None;
        self.secondary = None;
    }
}
