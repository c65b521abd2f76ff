//! The group's table of LBA range leases in the control segment (`layout::LeaseTable`,
//! [`crate::Lease`]): claiming against the other members' leases and releasing. Only claims
//! and releases look at it, under its robust lock. A lease whose holder is no longer a live
//! member (its record freed or reused, or its liveness byte in `members.lock` not held: the
//! kernel dropped it at its death) is free; a claim frees such entries as it meets them,
//! so nothing has to reap them when a member dies.

use std::sync::atomic::Ordering;

use nvme_core::shared::MAX_MEMBERS;
use nvme_core::{LockOutcome, RobustLock};

use super::layout::{LeaseEntry, ACTIVE, LEASE_FREE, LEASE_HELD, MAX_LEASES};
use super::{lockfile, Group};
use crate::error::{Error, Result};
use crate::lease::{LeaseConflict, LeaseMode, LeaseRange};

impl Group {
    /// Runs `f` on the lease table's entries with its lock held (waiting at most the
    /// group's lock timeout).
    fn with_lease_table<T>(
        &self,
        f: impl FnOnce(&[LeaseEntry; MAX_LEASES]) -> Result<T>,
    ) -> Result<T> {
        self.check_mappings()?;
        let table = &self.header().leases;
        let Some((guard, outcome)) = table.mutex.lock(Some(self.lock_timeout)) else {
            return Err(Error::Group(format!(
                "group {}: waited {} ms for the lease table's lock; another process of the group holds it and is stopped or stuck: resume or kill it",
                self.id,
                self.lock_timeout.as_millis()
            )));
        };
        if outcome == LockOutcome::PreviousOwnerDied {
            // Every update leaves an entry free or whole (see `LeaseEntry`): nothing to
            // repair.
            table.mutex.mark_consistent(&guard);
        }
        let r = f(&table.entries);
        drop(guard);
        r
    }

    /// Is `raw` (an `OwnerId::raw` read from shared memory, validated here) a live member?
    pub(super) fn owner_alive(&self, raw: u32) -> bool {
        let index = (raw & 0xff) as usize;
        if index == 0 || index > MAX_MEMBERS {
            return false;
        }
        let index = index - 1;
        let m = &self.header().members[index];
        if m.state.load(Ordering::Acquire) != ACTIVE || m.epoch.load(Ordering::Relaxed) != raw >> 8
        {
            return false;
        }
        if let Some(me) = self.me {
            if me.index() == index {
                return me.raw() == raw;
            }
        }
        lockfile::held_by_other(&self.lockf, index as u64).unwrap_or(true)
    }

    /// Claims `range` for this member (its process named `comm`) and returns its entry:
    /// refused with [`Error::LeaseConflict`] when a live member's lease conflicts with it
    /// (this member's own leases never do).
    pub(crate) fn claim_lease(&self, range: &LeaseRange, comm: [u8; 16]) -> Result<usize> {
        let me = self.me();
        self.with_lease_table(|entries| {
            let mut free = None;
            for (i, e) in entries.iter().enumerate() {
                if e.state.load(Ordering::Acquire) != LEASE_HELD {
                    free.get_or_insert(i);
                    continue;
                }
                let owner = e.owner.load(Ordering::Relaxed);
                if owner == me.raw() {
                    continue;
                }
                if !self.owner_alive(owner) {
                    e.state.store(LEASE_FREE, Ordering::Release);
                    free.get_or_insert(i);
                    continue;
                }
                let held = entry_range(e);
                if held.conflicts_with(range) {
                    return Err(Error::LeaseConflict(Box::new(LeaseConflict {
                        wanted: *range,
                        held,
                        pid: e.pid.load(Ordering::Relaxed),
                        process: entry_comm(e),
                        member: (owner & 0xff) as usize - 1,
                    })));
                }
            }
            let i = free.ok_or_else(|| {
                Error::Group(format!(
                    "group {}: the lease table is full ({MAX_LEASES} leases held); release some leases first",
                    self.id
                ))
            })?;
            let e = &entries[i];
            e.owner.store(me.raw(), Ordering::Relaxed);
            e.pid.store(std::process::id(), Ordering::Relaxed);
            e.nsid.store(range.nsid, Ordering::Relaxed);
            e.mode.store(range.mode.code(), Ordering::Relaxed);
            e.start.store(range.start, Ordering::Relaxed);
            e.count.store(range.count, Ordering::Relaxed);
            e.comm[0].store(
                u64::from_le_bytes(comm[..8].try_into().expect("8 bytes")),
                Ordering::Relaxed,
            );
            e.comm[1].store(
                u64::from_le_bytes(comm[8..].try_into().expect("8 bytes")),
                Ordering::Relaxed,
            );
            e.state.store(LEASE_HELD, Ordering::Release);
            Ok(i)
        })
    }

    /// Takes the lease table's lock and never releases it (tests: a process killed while
    /// holding it).
    #[cfg(feature = "test-hooks")]
    pub(crate) fn hold_lease_lock_forever(&self) {
        std::mem::forget(self.header().leases.mutex.lock(None));
    }

    /// Frees entry `slot` if it still holds this member's `range`.
    pub(crate) fn release_lease(&self, slot: usize, range: &LeaseRange) -> Result<()> {
        let me = self.me();
        self.with_lease_table(|entries| {
            if let Some(e) = entries.get(slot) {
                if e.state.load(Ordering::Acquire) == LEASE_HELD
                    && e.owner.load(Ordering::Relaxed) == me.raw()
                    && entry_range(e) == *range
                {
                    e.state.store(LEASE_FREE, Ordering::Release);
                }
            }
            Ok(())
        })
    }
}

/// The range an entry holds.
fn entry_range(e: &LeaseEntry) -> LeaseRange {
    LeaseRange {
        nsid: e.nsid.load(Ordering::Relaxed),
        start: e.start.load(Ordering::Relaxed),
        count: e.count.load(Ordering::Relaxed),
        mode: LeaseMode::from_code(e.mode.load(Ordering::Relaxed)),
    }
}

/// The process name an entry records.
fn entry_comm(e: &LeaseEntry) -> String {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&e.comm[0].load(Ordering::Relaxed).to_le_bytes());
    b[8..].copy_from_slice(&e.comm[1].load(Ordering::Relaxed).to_le_bytes());
    let name = super::layout::read_str(&b);
    if name.is_empty() {
        "process name unknown".into()
    } else {
        name
    }
}
