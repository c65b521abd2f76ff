//! LBA range leases between the processes of a group (`Controller::lease`): conflicting
//! claims name the holder, shared leases coexist, a holder killed with SIGKILL loses its
//! leases at once, and a process that holds leases has its writes outside them refused.
//!
//! `harness = false`: this binary is both the test runner and the child processes it
//! starts (the test kit's role variable selects a child's part).

use std::process::ExitCode;
use std::time::Duration;

use nvme_host_linux::nvme_core::Command;
use nvme_host_linux::regs::opcode::NvmOpcode;
use nvme_host_linux::testkit::{self, env, env_u64, say, Outcome, Proc, RunDir};
use nvme_host_linux::{
    AttachOptions, Controller, DsmAttributes, Error, LeaseMode, QueueOptions, TransportId,
    WriteZeroesOptions,
};

const TRID: &str = "trtype:sim nscount:2 size:8M lbasize:512";

// ---------------------------------------------------------------------------------------
// Children

fn attach() -> Result<Controller, String> {
    let trid = TransportId::parse(TRID).map_err(|e| e.to_string())?;
    let mut opts = AttachOptions {
        group: Some(env_u64("NVME_LEASE_GROUP")? as u32),
        ..Default::default()
    };
    if let Ok(ms) = env_u64("NVME_LEASE_LOCK_TIMEOUT_MS") {
        opts.admin_timeout = Duration::from_millis(ms);
    }
    Controller::attach_with(&trid, &opts).map_err(|e| e.to_string())
}

/// Claims the leases of `NVME_LEASES` (see [`testkit::claim_leases`]), with
/// `NVME_LEASE_HOLD_LOCK` taking the lease table's lock for good afterwards.
fn child_claims(ctrl: &Controller) -> Outcome {
    let hold_lock = std::env::var_os("NVME_LEASE_HOLD_LOCK").is_some();
    testkit::claim_leases(ctrl, &env("NVME_LEASES")?, || {
        if hold_lock {
            ctrl.__test_hold_lease_lock();
        }
    })
}

/// Expects `r` to be a refusal of a write at `lba` of namespace 1.
fn refused(what: &str, lba: u64, r: Result<(), Error>) -> Outcome {
    match r {
        Err(Error::OutsideLease {
            nsid: 1, lba: l, ..
        }) if l == lba => Ok(()),
        other => Err(format!(
            "{what} at LBA {lba}: expected OutsideLease, got {other:?}"
        )),
    }
}

/// Holds an exclusive lease on blocks 100..200 of namespace 1 and checks which of its
/// writes go through.
fn child_writes(ctrl: &Controller) -> Outcome {
    let e = |e: Error| e.to_string();
    let mut qp = ctrl.alloc_io_queue(QueueOptions::new(8)).map_err(e)?;
    let mut buf = ctrl.alloc_dma(4096).map_err(e)?;
    buf.as_mut_slice().fill(0xa5);
    let data = buf.slice(0..4096).map_err(e)?;
    // Before any lease: nothing is checked.
    qp.write_sync(1, 0, data).map_err(e)?;
    let lease = ctrl.lease(1, 100..200, LeaseMode::Exclusive).map_err(e)?;
    // Inside, up to the last block.
    qp.write_sync(1, 100, data).map_err(e)?;
    qp.write_sync(1, 192, data).map_err(e)?;
    qp.write_zeroes_sync(1, 150, 50, WriteZeroesOptions::default())
        .map_err(e)?;
    // Across the end, before the start, elsewhere: refused before submission.
    refused("write", 196, qp.write_sync(1, 196, data))?;
    refused("write", 96, qp.write_sync(1, 96, data))?;
    refused("write", 0, qp.write_sync(1, 0, data))?;
    refused(
        "write zeroes",
        199,
        qp.write_zeroes_sync(1, 199, 2, WriteZeroesOptions::default()),
    )?;
    let range = |slba, blocks| nvme_host_linux::nvme_core::cmd::DsmRange {
        attributes: 0,
        blocks,
        slba,
    };
    let dealloc = DsmAttributes {
        deallocate: true,
        ..Default::default()
    };
    qp.dataset_management_sync(1, &[range(120, 8)], dealloc)
        .map_err(e)?;
    refused(
        "deallocate",
        300,
        qp.dataset_management_sync(1, &[range(120, 8), range(300, 8)], dealloc),
    )?;
    // Passthru: a Write is checked from its command dwords.
    let passthru_write = |slba: u64| {
        Command::new(NvmOpcode::Write as u8, 1)
            .cdw10(slba as u32)
            .cdw11((slba >> 32) as u32)
            .cdw12(7)
    };
    qp.passthru_sync(passthru_write(104), Some(data), Duration::from_secs(5))
        .map_err(e)?;
    refused(
        "passthru write",
        500,
        qp.passthru_sync(passthru_write(500), Some(data), Duration::from_secs(5))
            .map(|_| ()),
    )?;
    // An opcode the check cannot understand is refused on the enforced namespace only.
    let vendor = Command::new(0x81, 1);
    match qp.passthru_sync(vendor, None, Duration::from_secs(5)) {
        Err(Error::Invalid(m)) if m.contains("opcode 0x81") => {}
        other => return Err(format!("vendor command: {other:?}")),
    }
    // Dataset Management with Deallocate through passthru: its ranges are read from the
    // range list in its buffer.
    let mut list = ctrl.alloc_dma(4096).map_err(e)?;
    let dsm = Command::new(NvmOpcode::DatasetManagement as u8, 1).cdw11(4);
    for (slba, ok) in [(104u64, true), (400, false)] {
        let r = range(slba, 4);
        list.as_mut_slice()[..16].copy_from_slice(zerocopy::IntoBytes::as_bytes(&r));
        let sent = qp.passthru_sync(
            dsm,
            Some(list.slice(0..16).map_err(e)?),
            Duration::from_secs(5),
        );
        match (ok, sent) {
            (true, Ok(_)) => {}
            (false, r) => refused("passthru deallocate", 400, r.map(|_| ()))?,
            (true, Err(x)) => return Err(format!("passthru deallocate inside: {x}")),
        }
    }
    // Reads are not checked; the other namespace is not enforced until asked.
    qp.read_sync(1, 0, data).map_err(e)?;
    qp.write_sync(2, 0, data).map_err(e)?;
    ctrl.enforce_leases(2).map_err(e)?;
    match qp.write_sync(2, 0, data) {
        Err(Error::OutsideLease { nsid: 2, .. }) => {}
        other => {
            return Err(format!(
                "write to namespace 2 after enforce_leases: {other:?}"
            ))
        }
    }
    match ctrl.enforce_leases(9) {
        Err(Error::NoSuchNamespace(9)) => {}
        other => return Err(format!("enforce_leases(9): {other:?}")),
    }
    // After the release the namespace stays enforced.
    lease.release().map_err(e)?;
    refused("write after release", 100, qp.write_sync(1, 100, data))?;
    // A queue pair created now sees the same.
    let mut qp2 = ctrl.alloc_io_queue(QueueOptions::new(8)).map_err(e)?;
    refused("write on a new pair", 100, qp2.write_sync(1, 100, data))?;
    // Two adjacent leases cover a write across their border.
    let _a = ctrl.lease(1, 0..8, LeaseMode::Shared).map_err(e)?;
    let _b = ctrl.lease(1, 8..16, LeaseMode::Exclusive).map_err(e)?;
    qp2.write_sync(1, 4, data).map_err(e)?;
    say("WRITES-CHECKED");
    Ok(())
}

fn child(role: &str) -> i32 {
    let ctrl = match attach() {
        Ok(c) => c,
        Err(e) => {
            say(format!("ATTACH-ERROR {e}"));
            return 3;
        }
    };
    say(format!("READY {}", std::process::id()));
    let r = match role {
        "claims" => child_claims(&ctrl),
        "writes" => child_writes(&ctrl),
        other => Err(format!("unknown role {other}")),
    };
    i32::from(testkit::exit_code(r))
}

// ---------------------------------------------------------------------------------------
// Parent side

/// A child in `role` in group `group`, claiming `leases` (see [`child_claims`]); its pid
/// once it is attached.
fn spawn(
    dir: &RunDir,
    group: u32,
    role: &str,
    name: &str,
    leases: &str,
    extra_env: &[(&str, &str)],
) -> Result<(Proc, u32), String> {
    let mut cmd = dir.rerun(role)?;
    cmd.env("NVME_LEASE_GROUP", group.to_string())
        .env("NVME_LEASES", leases)
        .envs(extra_env.iter().copied());
    let mut p = Proc::spawn(name, &mut cmd)?;
    let pid = p.line("READY")?;
    let pid = pid["READY ".len()..].parse().map_err(|e| format!("{e}"))?;
    Ok((p, pid))
}

/// A child of group `group` that claims the one lease `spec` and holds it until stopped.
fn holder(dir: &RunDir, group: u32, name: &str, spec: &str) -> Result<(Proc, u32), String> {
    let (mut p, pid) = spawn(dir, group, "claims", name, spec, &[])?;
    expect_leased(&mut p, spec)?;
    p.line("DONE")?;
    Ok((p, pid))
}

/// Kills `victim`, which holds a lease on `spec`: a new process gets it at once. Then stops
/// and ends the scenario's other children `rest`.
fn killed_holder_is_succeeded(
    dir: &RunDir,
    group: u32,
    victim: &mut Proc,
    spec: &str,
    rest: Vec<Proc>,
) -> Outcome {
    victim.kill();
    let (successor, _) = holder(dir, group, "successor", spec)?;
    dir.stop()?;
    for p in rest.into_iter().chain([successor]) {
        p.finish()?.clean()?;
    }
    Ok(())
}

/// The name the kernel gives process `pid` (what the driver records with a lease).
fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim_end()
        .to_string()
}

fn expect_leased(p: &mut Proc, spec: &str) -> Outcome {
    let l = p.line(&format!("LEASED {spec}"))?;
    assert_eq!(l, format!("LEASED {spec}"));
    Ok(())
}

/// Waits for the `CONFLICT` line of `spec` and checks that it names the holder `pid` and
/// its lease `held`.
fn expect_conflict(p: &mut Proc, spec: &str, pid: u32, held: &str) -> Outcome {
    let l = p.line(&format!("CONFLICT {spec} "))?;
    let want = format!("pid {pid} ({}, member ", comm(pid));
    if !l.contains(&want) || !l.contains(held) {
        return Err(format!("{l}: expected it to name {want}... and {held}"));
    }
    Ok(())
}

fn a_conflicting_claim_names_the_holder_and_a_killed_holder_loses_its_lease() -> Outcome {
    let (dir, g) = (RunDir::new("lease-31")?, 31);
    let (mut a, a_pid) = holder(&dir, g, "holder", "1:0:1000:exclusive")?;
    let (mut b, _) = spawn(
        &dir,
        g,
        "claims",
        "claimer",
        "1:500:100:exclusive 1:999:5:shared 1:1000:1000:exclusive 2:0:1000:exclusive",
        &[],
    )?;
    let held = "holds an exclusive lease on LBAs 0..1000 of namespace 1";
    expect_conflict(&mut b, "1:500:100:exclusive", a_pid, held)?;
    expect_conflict(&mut b, "1:999:5:shared", a_pid, held)?;
    // Next to it, and on the other namespace: free.
    expect_leased(&mut b, "1:1000:1000:exclusive")?;
    expect_leased(&mut b, "2:0:1000:exclusive")?;
    b.line("DONE")?;
    // The holder dies with its lease: the range is free for the next claim at once.
    killed_holder_is_succeeded(&dir, g, &mut a, "1:0:1000:exclusive", vec![b])
}

fn shared_leases_coexist_and_keep_exclusive_ones_out() -> Outcome {
    let (dir, g) = (RunDir::new("lease-32")?, 32);
    let (a, a_pid) = holder(&dir, g, "sharer a", "1:0:100:shared")?;
    let (b, b_pid) = holder(&dir, g, "sharer b", "1:50:100:shared")?;
    let (mut c, _) = spawn(
        &dir,
        g,
        "claims",
        "exclusive",
        "1:120:10:exclusive 1:10:1:exclusive 1:150:10:exclusive",
        &[],
    )?;
    // Only b's lease covers 120..130; a's covers 10.
    expect_conflict(
        &mut c,
        "1:120:10:exclusive",
        b_pid,
        "holds a shared lease on LBAs 50..150 of namespace 1",
    )?;
    expect_conflict(
        &mut c,
        "1:10:1:exclusive",
        a_pid,
        "holds a shared lease on LBAs 0..100 of namespace 1",
    )?;
    expect_leased(&mut c, "1:150:10:exclusive")?;
    c.line("DONE")?;
    dir.stop()?;
    for p in [a, b, c] {
        p.finish()?.clean()?;
    }
    Ok(())
}

fn a_lease_lock_holder_is_waited_for_boundedly_and_recovered_from_when_killed() -> Outcome {
    let (dir, g) = (RunDir::new("lease-34")?, 34);
    let (mut a, _) = spawn(
        &dir,
        g,
        "claims",
        "lock holder",
        "1:0:100:exclusive",
        &[("NVME_LEASE_HOLD_LOCK", "1")],
    )?;
    expect_leased(&mut a, "1:0:100:exclusive")?;
    a.line("DONE")?;
    // The holder is alive and keeps the lock: a claim gives up after its bound, and says so.
    let (mut b, _) = spawn(
        &dir,
        g,
        "claims",
        "waiter",
        "1:200:10:exclusive",
        &[("NVME_LEASE_LOCK_TIMEOUT_MS", "300")],
    )?;
    let l = b.line("FAILED 1:200:10:exclusive")?;
    if !l.contains("waited 300 ms for the lease table's lock") {
        return Err(format!("{l}: expected the bounded wait to be named"));
    }
    b.line("DONE")?;
    // Killed with the lock and its lease: the next claim of its blocks gets both.
    killed_holder_is_succeeded(&dir, g, &mut a, "1:0:100:exclusive", vec![b])
}

fn writes_outside_held_ranges_are_refused() -> Outcome {
    let (dir, g) = (RunDir::new("lease-33")?, 33);
    // Another member holding a lease elsewhere does not change this process's checks.
    let (other, _) = holder(&dir, g, "other", "1:1000:10:exclusive")?;
    let (mut w, _) = spawn(&dir, g, "writes", "writer", "", &[])?;
    w.line("WRITES-CHECKED")?;
    w.finish()?.clean()?;
    dir.stop()?;
    other.finish()?.clean()?;
    Ok(())
}

fn main() -> ExitCode {
    if let Some(role) = testkit::role() {
        std::process::exit(child(&role));
    }
    let scenarios: &[testkit::Scenario] = &[
        (
            "a_conflicting_claim_names_the_holder_and_a_killed_holder_loses_its_lease",
            a_conflicting_claim_names_the_holder_and_a_killed_holder_loses_its_lease,
        ),
        (
            "shared_leases_coexist_and_keep_exclusive_ones_out",
            shared_leases_coexist_and_keep_exclusive_ones_out,
        ),
        (
            "a_lease_lock_holder_is_waited_for_boundedly_and_recovered_from_when_killed",
            a_lease_lock_holder_is_waited_for_boundedly_and_recovered_from_when_killed,
        ),
        (
            "writes_outside_held_ranges_are_refused",
            writes_outside_held_ranges_are_refused,
        ),
    ];
    testkit::run_scenarios("leases", scenarios)
}
