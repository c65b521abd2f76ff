//! The worker processes of a torture round, one role each (the test kit's role variable):
//! `writer`, `admin`, `attacher`, `tool`, `keeper` and `verify`. Each reports on its
//! standard output, one line per event: `READY role pid` once attached, `PROGRESS ...`
//! now and then, `ERROR why` or `ATTACH-ERROR why` when something fails, `DONE ...` when it
//! stops because the stop file appeared.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nvme_host_linux::regs::features::{fid, FeatureSelect};
use nvme_host_linux::testkit::{env, env_u64, say, stop_requested, Proc};
use nvme_host_linux::{AttachOptions, Controller, QueueOptions, Role, TransportId};

use crate::ledger;
use crate::rng::Rng;

/// Blocks per slot: a writer's range is cut into slots, a write stays inside one slot, and
/// no two writes in flight share a slot.
pub const SLOT: u64 = 8;
/// Most writes a writer has in flight.
const MAX_QD: usize = 8;
/// Bound on waiting for one batch of completions.
const IO_BOUND: Duration = Duration::from_secs(20);
/// Bound on one nvmectl run.
const TOOL_BOUND: Duration = Duration::from_secs(30);

type R = Result<(), String>;

/// Runs role `role`; returns the exit status.
pub fn run(role: &str) -> u8 {
    let r = match role {
        "writer" => with_ctrl(role, writer),
        "admin" => with_ctrl(role, admin),
        "keeper" => with_ctrl(role, |_| keeper()),
        "attacher" => attacher(),
        "tool" => tool(),
        "verify" => verify(),
        other => Err(format!("unknown role {other}")),
    };
    match r {
        Ok(()) => 0,
        Err(e) => {
            say(format!("ERROR {e}"));
            1
        }
    }
}

fn attach() -> Result<Controller, String> {
    let trid = TransportId::parse(&env("NVME_TORTURE_TRID")?)?;
    let opts = AttachOptions {
        group: Some(env_u64("NVME_TORTURE_GROUP")? as u32),
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

fn nsid() -> u32 {
    env_u64("NVME_TORTURE_NSID").unwrap_or(1) as u32
}

/// Attaches (an attach error is reported as `ATTACH-ERROR`), says `READY`, runs `f`.
fn with_ctrl(role: &str, f: impl FnOnce(&Controller) -> R) -> R {
    let ctrl = match attach() {
        Ok(c) => c,
        Err(e) => {
            say(format!("ATTACH-ERROR {e}"));
            std::process::exit(3);
        }
    };
    say(format!(
        "READY {role} {} {}",
        role_name(&ctrl),
        std::process::id()
    ));
    f(&ctrl)
}

/// Writes random runs of blocks in its own range, up to 8 writes in flight, never two to
/// one slot at once. Before submitting it appends `S seq lba blocks` to its log, after each
/// completion `A seq` (or `E seq`); the log is opened with `O_DSYNC`, so each line is on
/// stable storage when `write` returns.
fn writer(ctrl: &Controller) -> R {
    let nsid = nsid();
    let base = env_u64("NVME_TORTURE_LBA")?;
    let slots = env_u64("NVME_TORTURE_BLOCKS")? / SLOT;
    let epoch = env_u64("NVME_TORTURE_EPOCH")?;
    let mut rng = Rng::new(env_u64("NVME_TORTURE_SEED")?);
    let path = env("NVME_TORTURE_LOG")?;
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(nix::libc::O_DSYNC)
        .open(&path)
        .map_err(|e| format!("{path}: {e}"))?;
    let bs = ctrl
        .namespace(nsid)
        .map_err(|e| e.to_string())?
        .block_size() as usize;
    let slot_bytes = SLOT as usize * bs;
    let mut buf = ctrl
        .alloc_dma(MAX_QD * slot_bytes)
        .map_err(|e| e.to_string())?;
    let mut qp = ctrl
        .alloc_io_queue(QueueOptions::new(32))
        .map_err(|e| e.to_string())?;
    say(format!("QID {}", qp.qid()));
    let (mut seq, mut acked, mut last) = (0u64, 0u64, Instant::now());
    while !stop_requested() {
        let qd = 1 + rng.below(MAX_QD as u64) as usize;
        let mut picked: Vec<u64> = Vec::with_capacity(qd);
        while picked.len() < qd.min(slots as usize) {
            let s = rng.below(slots);
            if !picked.contains(&s) {
                picked.push(s);
            }
        }
        let mut plan = Vec::with_capacity(qd);
        let mut lines = String::new();
        let data = buf.as_mut_slice();
        for (i, &slot) in picked.iter().enumerate() {
            seq += 1;
            let off = rng.below(SLOT);
            let n = 1 + rng.below(SLOT - off);
            let lba = base + slot * SLOT + off;
            for j in 0..n as usize {
                let at = i * slot_bytes + j * bs;
                ledger::fill(epoch, lba + j as u64, seq, &mut data[at..at + bs]);
            }
            lines.push_str(&ledger::submitted_line(seq, lba, n as u32));
            plan.push((i, seq, lba, n as usize));
        }
        log.write_all(lines.as_bytes())
            .map_err(|e| format!("{path}: {e}"))?;
        for &(i, seq, lba, n) in &plan {
            let r = buf
                .slice(i * slot_bytes..i * slot_bytes + n * bs)
                .map_err(|e| e.to_string())?;
            qp.write(nsid, lba, r, seq).map_err(|e| e.to_string())?;
        }
        let start = Instant::now();
        let mut failed = None;
        while qp.outstanding() > 0 {
            let mut lines = String::new();
            qp.process_completions(MAX_QD, |seq, r| match r {
                Ok(()) => {
                    acked += 1;
                    lines.push_str(&ledger::acked_line(seq));
                }
                Err(e) => {
                    failed.get_or_insert(format!("write {seq}: {e}"));
                    lines.push_str(&ledger::failed_line(seq));
                }
            });
            if !lines.is_empty() {
                log.write_all(lines.as_bytes())
                    .map_err(|e| format!("{path}: {e}"))?;
            }
            if start.elapsed() > IO_BOUND {
                return Err(format!(
                    "{} writes not completed after {} s",
                    qp.outstanding(),
                    IO_BOUND.as_secs()
                ));
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        if last.elapsed() > Duration::from_millis(100) {
            say(format!("PROGRESS writes {seq} acked {acked}"));
            last = Instant::now();
        }
    }
    say(format!("DONE writes {seq} acked {acked}"));
    Ok(())
}

/// Identify, SMART log and Get Features in a loop, checking what it can.
fn admin(ctrl: &Controller) -> R {
    let serial = ctrl.identify().serial().to_string();
    let nsid = nsid();
    let blocks = ctrl.namespace(nsid).map_err(|e| e.to_string())?.blocks();
    let queues = ctrl
        .get_features(fid::NUMBER_OF_QUEUES, FeatureSelect::Current, 0, 0)
        .map_err(|e| e.to_string())?;
    let (mut n, mut last) = (0u64, Instant::now());
    while !stop_requested() {
        n += 1;
        let id = ctrl
            .identify_controller()
            .map_err(|e| format!("identify: {e}"))?;
        if id.serial() != serial {
            return Err(format!("identify controller: serial '{}'", id.serial()));
        }
        let ns = ctrl
            .identify_namespace(nsid)
            .map_err(|e| format!("identify namespace: {e}"))?;
        if ns.nsze != blocks {
            return Err(format!(
                "identify namespace: nsze {} (someone else's data?)",
                ns.nsze
            ));
        }
        ctrl.smart_log().map_err(|e| format!("smart log: {e}"))?;
        let q = ctrl
            .get_features(fid::NUMBER_OF_QUEUES, FeatureSelect::Current, 0, 0)
            .map_err(|e| format!("get features: {e}"))?;
        if q != queues {
            return Err(format!("number of queues {q:#x}, expected {queues:#x}"));
        }
        if last.elapsed() > Duration::from_millis(100) {
            say(format!("PROGRESS admin {n}"));
            last = Instant::now();
        }
    }
    say(format!("DONE admin {n}"));
    Ok(())
}

/// Stays attached until its stop file appears: the controller (and the data, which the
/// software controller keeps in its own process) outlives every other member.
fn keeper() -> R {
    while !stop_requested() {
        std::thread::sleep(Duration::from_millis(10));
    }
    say("DONE keeper");
    Ok(())
}

/// Attach, sometimes a queue and a read, detach; again and again.
fn attacher() -> R {
    let mut rng = Rng::new(env_u64("NVME_TORTURE_SEED")?);
    let nsid = nsid();
    let mut n = 0u64;
    while !stop_requested() {
        let ctrl = match attach() {
            Ok(c) => c,
            Err(e) => {
                say(format!("ATTACH-ERROR cycle {n}: {e}"));
                std::process::exit(3);
            }
        };
        if n == 0 {
            say(format!(
                "READY attacher {} {}",
                role_name(&ctrl),
                std::process::id()
            ));
        }
        if rng.below(2) == 0 {
            let mut qp = ctrl
                .alloc_io_queue(QueueOptions::new(8))
                .map_err(|e| e.to_string())?;
            let bs = ctrl
                .namespace(nsid)
                .map_err(|e| e.to_string())?
                .block_size() as usize;
            let mut b = ctrl.alloc_dma(bs).map_err(|e| e.to_string())?;
            qp.read_sync(nsid, 0, &mut b)
                .map_err(|e| format!("read: {e}"))?;
        }
        drop(ctrl);
        n += 1;
        say(format!("PROGRESS cycle {n}"));
    }
    say(format!("DONE cycles {n}"));
    Ok(())
}

/// nvmectl subcommands against the group, one after another, each bounded. Started in a
/// process group of its own by the orchestrator, so that a signal reaches the nvmectl that
/// runs at that moment too.
fn tool() -> R {
    let mut rng = Rng::new(env_u64("NVME_TORTURE_SEED")?);
    let exe = env("NVME_TORTURE_NVMECTL")?;
    let group = env("NVME_TORTURE_GROUP")?;
    let trid = env("NVME_TORTURE_TRID")?;
    let ns = nsid().to_string();
    let subs: [&[&str]; 6] = [
        &["id-ctrl"],
        &["smart-log"],
        &["id-ns", "-n", &ns],
        &["get-feature", "-f", "7"],
        &["identify"],
        &[
            "read",
            "-n",
            &ns,
            "-s",
            "0",
            "-c",
            "0",
            "-z",
            "512",
            "-d",
            "/dev/null",
        ],
    ];
    say(format!("READY tool - {}", std::process::id()));
    let mut n = 0u64;
    while !stop_requested() {
        let sub = subs[rng.below(subs.len() as u64) as usize];
        let mut cmd = Command::new(&exe);
        cmd.args(["-i", &group, "-r", &trid])
            .args(sub)
            .stdin(Stdio::null())
            .stderr(Stdio::piped());
        let p = Proc::spawn("nvmectl", &mut cmd)?;
        let what = format!("nvmectl {}", sub.join(" "));
        match p.finish_by(Instant::now() + TOOL_BOUND) {
            Ok(exit) if exit.code == Some(0) => {}
            Ok(exit) => {
                return Err(format!(
                    "{what}: exit status {:?}: {}",
                    exit.code,
                    exit.stderr.trim()
                ))
            }
            Err(e) => {
                say(format!("HANG {what}: {e}"));
                return Err(format!("{what} hung"));
            }
        }
        n += 1;
        say(format!("PROGRESS tool {n}"));
    }
    say(format!("DONE tools {n}"));
    Ok(())
}

/// The check after a round: attaches (timed), reports the queue ids in use before taking
/// one itself, then reads every writer's range and checks it against the writer's log.
/// `NVME_TORTURE_WRITERS` is `log:lba:blocks;...`.
fn verify() -> R {
    let start = Instant::now();
    let ctrl = match attach() {
        Ok(c) => c,
        Err(e) => {
            say(format!("ATTACH-ERROR {e}"));
            std::process::exit(3);
        }
    };
    say(format!(
        "ATTACHED {} ms {}",
        start.elapsed().as_millis(),
        role_name(&ctrl)
    ));
    say(format!("QIDS {}", ctrl.io_queues_in_use()));
    if let Some(pid) = ctrl.sim_process() {
        say(format!("SIM {pid}"));
    }
    let nsid = nsid();
    let epoch = env_u64("NVME_TORTURE_EPOCH")?;
    let bs = ctrl
        .namespace(nsid)
        .map_err(|e| e.to_string())?
        .block_size() as usize;
    let chunk = (ctrl.max_transfer() / bs).clamp(1, 64);
    let mut buf = ctrl.alloc_dma(chunk * bs).map_err(|e| e.to_string())?;
    let mut qp = ctrl
        .alloc_io_queue(QueueOptions::new(8))
        .map_err(|e| e.to_string())?;
    let writers = env("NVME_TORTURE_WRITERS")?;
    let (mut lost, mut bad, mut acked_total) = (0u64, 0u64, 0usize);
    for (w, spec) in writers.split(';').filter(|s| !s.is_empty()).enumerate() {
        let f: Vec<&str> = spec.rsplitn(3, ':').collect();
        let [blocks, lba, path] = f[..] else {
            return Err(format!("bad writer spec '{spec}'"));
        };
        let (lba, blocks): (u64, u64) = (
            lba.parse().map_err(|_| format!("bad LBA in '{spec}'"))?,
            blocks
                .parse()
                .map_err(|_| format!("bad count in '{spec}'"))?,
        );
        // A writer killed before it opened its log wrote nothing.
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let log = ledger::Log::parse(&text).map_err(|e| format!("{path}: {e}"))?;
        let (submitted, acked) = log.counts();
        acked_total += acked;
        let (mut w_lost, mut w_bad) = (0, 0);
        let mut at = lba;
        while at < lba + blocks {
            let n = (chunk as u64).min(lba + blocks - at) as usize;
            qp.read_sync(nsid, at, buf.slice(0..n * bs).map_err(|e| e.to_string())?)
                .map_err(|e| format!("read {at}+{n}: {e}"))?;
            let data = buf.as_slice();
            for i in 0..n {
                let b = at + i as u64;
                if let Err(e) = ledger::check_block(&log, epoch, b, &data[i * bs..(i + 1) * bs]) {
                    if e.lost() {
                        w_lost += 1;
                    } else {
                        w_bad += 1;
                    }
                    if w_lost + w_bad <= 5 {
                        say(format!("BAD writer {w}: {e}"));
                    }
                }
            }
            at += n as u64;
        }
        say(format!(
            "WRITER {w} submitted {submitted} acked {acked} lost-blocks {w_lost} bad-blocks {w_bad}"
        ));
        lost += w_lost;
        bad += w_bad;
    }
    say(format!(
        "VERIFIED acked {acked_total} lost-blocks {lost} bad-blocks {bad}"
    ));
    Ok(())
}
