//! LBA range leases: an opt-in way for the processes of a group to own or share ranges of
//! blocks of a namespace ([`Controller::lease`]).
//!
//! NVMe itself coordinates nothing between the processes sharing a controller: any of them
//! may write any block. A lease says which blocks a process works on:
//! [`LeaseMode::Exclusive`] (no other lease may overlap it) or [`LeaseMode::Shared`] (any
//! number of shared leases may overlap; no exclusive one). Leases live in the group's
//! control segment; claims and releases take the lease table's robust lock, and a lease
//! whose holder died (the kernel dropped its liveness lock) is free. A claim that would
//! overlap another process's lease fails with [`Error::LeaseConflict`], which names the
//! holder.
//!
//! Enforcement is per process and per namespace: once a process holds a lease on a
//! namespace, or called [`Controller::enforce_leases`], its writes to that namespace (Write,
//! Write Zeroes, Write Uncorrectable, Dataset Management with Deallocate, and the same
//! commands sent through [`IoQueuePair::submit`] or
//! [`IoQueuePair::passthru_sync`]) outside the ranges it holds are refused with
//! [`Error::OutsideLease`] before anything is submitted; once on, it stays on for the
//! controller's lifetime. Other I/O commands a process cannot check (vendor-specific ones,
//! Copy, ...) are refused on such a namespace. Reads, Compare, Verify and Flush are never
//! checked: a process may read blocks another one owns (it sees old or new data, as with
//! any concurrent write; hold a shared lease beside the writers' shared leases to keep an
//! exclusive writer out).
//!
//! The I/O path takes no lock and reads no shared memory for this: each queue pair keeps a
//! copy of the ranges its process holds and refreshes it when the process's lease set
//! changes (one load of a process-private counter per write; a process that never opted in
//! pays that load and one branch). A process's own leases never conflict with each other
//! (another attach in the same process is another member and does conflict). Outside a
//! group (a process alone on its controller) leases are kept in the process only: claims
//! always succeed and writes are checked the same way.
//!
//! [`Controller::lease`]: crate::Controller::lease
//! [`Controller::enforce_leases`]: crate::Controller::enforce_leases
//! [`IoQueuePair::submit`]: crate::IoQueuePair::submit
//! [`IoQueuePair::passthru_sync`]: crate::IoQueuePair::passthru_sync

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use nvme_core::cmd::DsmRange;
use nvme_core::Command;
use nvme_regs::opcode::NvmOpcode;

use crate::controller::{lock, Controller};
use crate::dma::IoBuf;
use crate::error::{Error, Result};

/// How a lease shares its blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LeaseMode {
    /// One holder: no other lease may overlap it.
    Exclusive,
    /// Any number of shared holders; no exclusive lease may overlap it.
    Shared,
}

impl LeaseMode {
    /// The number kept in the control segment.
    pub(crate) fn code(self) -> u32 {
        match self {
            LeaseMode::Exclusive => 1,
            LeaseMode::Shared => 2,
        }
    }
    /// From the control segment: 2 is shared, anything else counts as exclusive (the
    /// cautious reading of a damaged entry).
    pub(crate) fn from_code(code: u32) -> LeaseMode {
        if code == 2 {
            LeaseMode::Shared
        } else {
            LeaseMode::Exclusive
        }
    }
}

impl fmt::Display for LeaseMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LeaseMode::Exclusive => "exclusive",
            LeaseMode::Shared => "shared",
        })
    }
}

impl std::str::FromStr for LeaseMode {
    type Err = String;
    /// `exclusive` or `shared`.
    fn from_str(s: &str) -> std::result::Result<LeaseMode, String> {
        match s {
            "exclusive" => Ok(LeaseMode::Exclusive),
            "shared" => Ok(LeaseMode::Shared),
            _ => Err(format!(
                "lease mode '{s}': give exclusive (one owner) or shared (any number of sharers)"
            )),
        }
    }
}

/// Blocks of a namespace and how they are leased.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseRange {
    /// Namespace id.
    pub nsid: u32,
    /// First LBA.
    pub start: u64,
    /// Number of blocks (at least 1).
    pub count: u64,
    /// Exclusive or shared.
    pub mode: LeaseMode,
}

impl LeaseRange {
    /// One past the last LBA (saturating).
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.count)
    }
    /// Do the two leases overlap in a way their modes forbid (same namespace, common
    /// blocks, not both shared)?
    pub fn conflicts_with(&self, other: &LeaseRange) -> bool {
        self.nsid == other.nsid
            && self.start < other.end()
            && other.start < self.end()
            && !(self.mode == LeaseMode::Shared && other.mode == LeaseMode::Shared)
    }
}

impl fmt::Display for LeaseRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} lease on LBAs {}..{} of namespace {}",
            self.mode,
            self.start,
            self.end(),
            self.nsid
        )
    }
}

/// A claim refused because another process of the group holds an overlapping lease
/// ([`Error::LeaseConflict`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseConflict {
    /// What was asked for.
    pub wanted: LeaseRange,
    /// The lease in the way.
    pub held: LeaseRange,
    /// Its holder's pid.
    pub pid: u32,
    /// Its holder's process name (`/proc/<pid>/comm` when it claimed the lease).
    pub process: String,
    /// Its holder's member index in the group.
    pub member: usize,
}

impl fmt::Display for LeaseConflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot claim {} {}: pid {} ({}, member {} of the group) holds {} {} that overlaps it; wait for that process to release it or exit, or claim another range",
            article(self.wanted.mode),
            self.wanted,
            self.pid,
            self.process,
            self.member,
            article(self.held.mode),
            self.held
        )
    }
}

fn article(mode: LeaseMode) -> &'static str {
    match mode {
        LeaseMode::Exclusive => "an",
        LeaseMode::Shared => "a",
    }
}

/// A lease this process holds ([`Controller::lease`](crate::Controller::lease)). Dropping
/// it releases the range (or call [`release`](Self::release) to see an error); a process
/// that dies loses its leases with its group membership. It keeps the controller attached.
#[derive(Debug)]
pub struct Lease {
    ctrl: Controller,
    id: u64,
    range: LeaseRange,
    released: bool,
}

impl Lease {
    /// The leased blocks and mode.
    pub fn range(&self) -> LeaseRange {
        self.range
    }
    /// Releases the range now: this process's writes to it are refused from now on (its
    /// namespace stays enforced), and other processes may claim it.
    pub fn release(mut self) -> Result<()> {
        self.released = true;
        self.ctrl.state().leases().release(&self.ctrl, self.id)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.released {
            // An error (the lease table's lock held by a stopped process) leaves the entry
            // to be freed when this process leaves the group or dies.
            let _ = self.ctrl.state().leases().release(&self.ctrl, self.id);
        }
    }
}

/// A lease in a process's private set.
#[derive(Clone, Copy, Debug)]
struct Held {
    id: u64,
    range: LeaseRange,
    /// Its entry in the group's table (`None` outside a group).
    slot: Option<usize>,
}

#[derive(Debug, Default)]
struct LocalState {
    next_id: u64,
    held: Vec<Held>,
    /// Namespaces whose writes are checked.
    enforced: Vec<u32>,
}

/// One controller attach's leases, private to the process: what its queue pairs check
/// writes against.
#[derive(Debug, Default)]
pub(crate) struct LocalLeases {
    /// Bumped (release) after every change of `state`; 0 while the process never opted in.
    version: AtomicU64,
    state: Mutex<LocalState>,
}

impl LocalLeases {
    /// Claims `range` (checked against the namespace by the caller): in the group's table
    /// first, then in the private set.
    pub(crate) fn claim(&self, ctrl: &Controller, range: LeaseRange) -> Result<Lease> {
        let slot = match ctrl.group() {
            Some(g) => Some(g.claim_lease(&range, process_name())?),
            None => None,
        };
        let mut st = lock(&self.state);
        st.next_id += 1;
        let id = st.next_id;
        st.held.push(Held { id, range, slot });
        if !st.enforced.contains(&range.nsid) {
            st.enforced.push(range.nsid);
        }
        self.version.fetch_add(1, Ordering::Release);
        Ok(Lease {
            ctrl: ctrl.clone(),
            id,
            range,
            released: false,
        })
    }

    /// Turns the write check on for `nsid`.
    pub(crate) fn enforce(&self, nsid: u32) {
        let mut st = lock(&self.state);
        if !st.enforced.contains(&nsid) {
            st.enforced.push(nsid);
            self.version.fetch_add(1, Ordering::Release);
        }
    }

    /// Releases lease `id`: out of the private set first (this process stops writing
    /// there), then out of the group's table.
    fn release(&self, ctrl: &Controller, id: u64) -> Result<()> {
        let held = {
            let mut st = lock(&self.state);
            let Some(i) = st.held.iter().position(|h| h.id == id) else {
                return Ok(());
            };
            let h = st.held.swap_remove(i);
            self.version.fetch_add(1, Ordering::Release);
            h
        };
        match (ctrl.group(), held.slot) {
            (Some(g), Some(slot)) => g.release_lease(slot, &held.range),
            _ => Ok(()),
        }
    }

    /// A copy for a queue pair.
    pub(crate) fn view(self: &Arc<Self>) -> LeaseView {
        LeaseView {
            local: self.clone(),
            seen: 0,
            enforced: Box::new([]),
            covered: Box::new([]),
        }
    }
}

/// `/proc/self/comm`, NUL-padded (empty if unreadable).
fn process_name() -> [u8; 16] {
    let mut out = [0u8; 16];
    if let Ok(s) = std::fs::read_to_string("/proc/self/comm") {
        let s = s.trim_end_matches('\n').as_bytes();
        let n = s.len().min(15);
        out[..n].copy_from_slice(&s[..n]);
    }
    out
}

/// A queue pair's copy of its process's leases: the enforced namespaces and the blocks
/// covered by held leases (adjacent and overlapping leases merged).
#[derive(Debug)]
pub(crate) struct LeaseView {
    local: Arc<LocalLeases>,
    /// The version copied.
    seen: u64,
    enforced: Box<[u32]>,
    /// `(nsid, start, end)`, sorted, disjoint, not touching.
    covered: Box<[(u32, u64, u64)]>,
}

impl LeaseView {
    /// Refuses a write of `blocks` blocks at `lba` of `nsid` outside the leases held, once
    /// the process opted in. The I/O path's one branch: a process that never did pays one
    /// load of a process-private counter.
    #[inline]
    pub(crate) fn check_write(&mut self, nsid: u32, lba: u64, blocks: u64) -> Result<()> {
        let now = self.local.version.load(Ordering::Acquire);
        if now == 0 {
            return Ok(());
        }
        self.check_enforced(now, nsid, lba, blocks)
    }

    #[inline(never)]
    fn check_enforced(&mut self, now: u64, nsid: u32, lba: u64, blocks: u64) -> Result<()> {
        if now != self.seen {
            self.refresh();
        }
        if !self.enforced.contains(&nsid) {
            return Ok(());
        }
        let end = lba.saturating_add(blocks);
        let inside = self
            .covered
            .iter()
            .any(|&(n, s, e)| n == nsid && s <= lba && end <= e);
        if inside {
            Ok(())
        } else {
            Err(Error::OutsideLease { nsid, lba, blocks })
        }
    }

    /// Copies the process's lease set (under its mutex: not the I/O path's usual case).
    fn refresh(&mut self) {
        let st = lock(&self.local.state);
        self.seen = self.local.version.load(Ordering::Acquire);
        self.enforced = st.enforced.clone().into_boxed_slice();
        let mut spans: Vec<(u32, u64, u64)> = st
            .held
            .iter()
            .map(|h| (h.range.nsid, h.range.start, h.range.end()))
            .collect();
        drop(st);
        spans.sort_unstable();
        let mut merged: Vec<(u32, u64, u64)> = Vec::with_capacity(spans.len());
        for (n, s, e) in spans {
            match merged.last_mut() {
                Some(last) if last.0 == n && s <= last.2 => last.2 = last.2.max(e),
                _ => merged.push((n, s, e)),
            }
        }
        self.covered = merged.into_boxed_slice();
    }

    /// [`check_write`](Self::check_write) for a command as built (I/O passthru): the
    /// blocks a write-like command changes are checked; Read, Compare, Verify, Flush and
    /// Dataset Management without Deallocate pass; any other command is refused on an
    /// enforced namespace (its effect on blocks is not known here).
    #[inline]
    pub(crate) fn check_command(&mut self, cmd: &Command, data: Option<&IoBuf<'_>>) -> Result<()> {
        if self.local.version.load(Ordering::Acquire) == 0 {
            return Ok(());
        }
        self.check_command_enforced(cmd, data)
    }

    #[inline(never)]
    fn check_command_enforced(&mut self, cmd: &Command, data: Option<&IoBuf<'_>>) -> Result<()> {
        let e = &cmd.0;
        let nsid = e.nsid;
        if self.local.version.load(Ordering::Acquire) != self.seen {
            self.refresh();
        }
        if !self.enforced.contains(&nsid) {
            return Ok(());
        }
        let slba = u64::from(e.cdw10) | u64::from(e.cdw11) << 32;
        let nlb = u64::from(e.cdw12 & 0xffff) + 1;
        match NvmOpcode::from_u8(e.opcode) {
            Some(NvmOpcode::Read | NvmOpcode::Compare | NvmOpcode::Verify | NvmOpcode::Flush) => {
                Ok(())
            }
            Some(NvmOpcode::Write | NvmOpcode::WriteZeroes | NvmOpcode::WriteUncorrectable) => {
                self.check_write(nsid, slba, nlb)
            }
            Some(NvmOpcode::DatasetManagement) if e.cdw11 & 4 == 0 => Ok(()),
            Some(NvmOpcode::DatasetManagement) => {
                let ranges = (e.cdw10 & 0xff) as usize + 1;
                let region = data.map(|d| d.region());
                for i in 0..ranges {
                    let r = region
                        .as_ref()
                        .and_then(|r| r.read_obj::<DsmRange>(i * 16))
                        .ok_or_else(|| {
                            Error::Invalid(format!(
                                "Dataset Management (deallocate) of {ranges} ranges without a {}-byte range list: its ranges cannot be checked against this process's leases",
                                ranges * 16
                            ))
                        })?;
                    self.check_write(nsid, r.slba, u64::from(r.blocks))?;
                }
                Ok(())
            }
            None => Err(Error::Invalid(format!(
                    "I/O command with opcode {:#04x} on namespace {nsid}: this process enforces LBA range leases there and cannot tell which blocks the command changes; send it from a process that does not enforce leases",
                    e.opcode
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(nsid: u32, start: u64, count: u64, mode: LeaseMode) -> LeaseRange {
        LeaseRange {
            nsid,
            start,
            count,
            mode,
        }
    }

    #[test]
    fn conflicts_need_the_same_namespace_common_blocks_and_an_exclusive_side() {
        use LeaseMode::{Exclusive as X, Shared as S};
        let a = range(1, 100, 100, X);
        assert!(a.conflicts_with(&range(1, 199, 1, S)));
        assert!(a.conflicts_with(&range(1, 0, 101, X)));
        assert!(
            !a.conflicts_with(&range(1, 200, 10, X)),
            "touching is not overlapping"
        );
        assert!(!a.conflicts_with(&range(1, 0, 100, X)));
        assert!(
            !a.conflicts_with(&range(2, 100, 100, X)),
            "another namespace"
        );
        let s = range(1, 100, 100, S);
        assert!(!s.conflicts_with(&range(1, 150, 100, S)));
        assert!(s.conflicts_with(&range(1, 150, 100, X)));
        // Ends saturate instead of wrapping.
        let top = range(1, u64::MAX - 1, 10, X);
        assert_eq!(top.end(), u64::MAX);
        assert!(top.conflicts_with(&range(1, u64::MAX - 1, 1, S)));
        assert_eq!(LeaseMode::from_code(LeaseMode::Shared.code()), S);
        assert_eq!(
            LeaseMode::from_code(7),
            X,
            "a damaged mode reads as exclusive"
        );
        assert_eq!("shared".parse::<LeaseMode>(), Ok(S));
        assert!("both"
            .parse::<LeaseMode>()
            .unwrap_err()
            .contains("lease mode 'both'"));
        assert_eq!(
            range(3, 8, 8, X).to_string(),
            "exclusive lease on LBAs 8..16 of namespace 3"
        );
    }

    /// `local` with `held` leases and `enforced` namespaces, as claims would leave it.
    fn with(local: &LocalLeases, held: &[LeaseRange], enforced: &[u32]) {
        let mut st = lock(&local.state);
        st.held = held
            .iter()
            .enumerate()
            .map(|(i, &range)| Held {
                id: i as u64,
                range,
                slot: None,
            })
            .collect();
        st.enforced = enforced.to_vec();
        local.version.fetch_add(1, Ordering::Release);
    }

    #[test]
    fn a_view_checks_writes_against_the_merged_ranges_and_follows_changes() {
        let local = Arc::new(LocalLeases::default());
        let mut view = local.view();
        // Never opted in: nothing is refused.
        view.check_write(1, 0, 1 << 40).unwrap();
        use LeaseMode::{Exclusive as X, Shared as S};
        with(
            &local,
            &[
                range(1, 16, 8, S),
                range(1, 0, 8, X),
                range(1, 8, 8, X),
                range(2, 0, 4, X),
            ],
            &[1],
        );
        // 0..24 merged from three leases; namespace 2 is not enforced.
        view.check_write(1, 0, 24).unwrap();
        view.check_write(1, 7, 2).unwrap();
        view.check_write(2, 100, 1).unwrap();
        for (lba, blocks) in [(0, 25), (24, 1), (u64::MAX, 1)] {
            match view.check_write(1, lba, blocks) {
                Err(Error::OutsideLease {
                    nsid: 1,
                    lba: l,
                    blocks: b,
                }) => {
                    assert_eq!((l, b), (lba, blocks))
                }
                other => panic!("{lba}+{blocks}: {other:?}"),
            }
        }
        // A lease released elsewhere in the process: the view sees it at its next check.
        with(&local, &[range(1, 0, 8, X)], &[1, 2]);
        view.check_write(1, 0, 8).unwrap();
        assert!(view.check_write(1, 8, 8).is_err());
        assert!(view.check_write(2, 0, 1).is_err());
    }
}
