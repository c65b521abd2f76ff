//! The group's namespace record in the control segment (`layout::NamespaceRecord`): the
//! active namespaces and their Identify Namespace data, so that a joining process reads
//! them from memory instead of sending Identify (active namespace list) and one Identify
//! Namespace per namespace through the shared admin queue.
//!
//! Who writes it, always holding its robust lock: the group's creator at bring-up, a member
//! that changes namespaces (it holds the lock from before its command until it has
//! identified the result, and empties the record first: a member that dies in between
//! leaves it empty, never stale), a member that rescans, a joiner that found it unusable
//! and got the lock at once, and the group's monitor when a Namespace Attribute Changed
//! notice has arrived since the list was read (`groupattach`). A list is never written
//! while a member is dead and not yet cleaned up (a command of its that changes namespaces
//! may still be running): the record is emptied instead, and the monitor refreshes it once
//! the member is gone.
//!
//! A reader takes no lock (seqlock, see `NamespaceRecord`) and falls back to Identify
//! whenever the record is not a whole, current list: never written, empty, too many
//! namespaces, being written (by a live writer, for longer than a few short retries; by a
//! dead one, at once), changed while it was read, damaged, or older than a Namespace
//! Attribute Changed notice in the group's event record.

use std::sync::atomic::{fence, Ordering};
use std::time::Duration;

use nvme_core::{LockOutcome, RobustLock};
use nvme_regs::identify::IdentifyNamespace;
use nvme_regs::log::AsyncEvent;
use zerocopy::{FromZeros, IntoBytes};

use super::layout::{NamespaceRecord, MAX_RECORD_NAMESPACES, NS_NO_LIST, NS_TOO_MANY};
use super::robust::RobustGuard;
use super::Group;
use crate::error::{Error, Result};
use crate::mmio::Mmio;
use crate::namespace::Namespace;

/// How often a reader looks again at a record a live writer is writing.
const BUSY_RETRIES: u32 = 10;
/// How long it waits between two looks.
const BUSY_PAUSE: Duration = Duration::from_micros(50);

/// Why the record cannot be used (the reader sends Identify instead).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Unusable {
    /// Never written.
    Absent,
    /// Emptied: a member is changing namespaces, or the last refresh failed.
    NoList,
    /// The controller has more active namespaces than the record keeps.
    TooMany,
    /// A live writer was writing it each time the reader looked.
    Busy,
    /// A writer died while writing it.
    DeadWriter,
    /// A Namespace Attribute Changed notice arrived after the list was read (or events
    /// were lost since).
    Stale,
    /// Its contents make no sense (another process damaged the segment).
    Damaged(String),
}

/// Holding the namespace record's lock (a writer).
pub(crate) struct RecordLock<'a> {
    group: &'a Group,
    _guard: RobustGuard<'a>,
}

impl Group {
    fn ns_record(&self) -> &NamespaceRecord {
        &self.header().namespaces
    }

    /// Takes the record's lock if it is free now.
    pub(crate) fn try_lock_namespace_record(&self) -> Option<RecordLock<'_>> {
        let (guard, outcome) = self.ns_record().mutex.try_lock()?;
        Some(self.locked_record(guard, outcome))
    }

    /// Takes the record's lock, waiting at most `bound`; the error names the member
    /// holding it.
    pub(crate) fn lock_namespace_record(&self, bound: Duration) -> Result<RecordLock<'_>> {
        let r = self.ns_record();
        match r.mutex.lock(Some(bound)) {
            Some((guard, outcome)) => Ok(self.locked_record(guard, outcome)),
            None => Err(Error::Group(format!(
                "group {}: waited {} ms for the namespace record's lock; pid {} holds it (it is changing namespaces: a format may take minutes; or it is stopped): wait for it, or resume or kill it",
                self.id,
                bound.as_millis(),
                r.writer_pid.load(Ordering::Relaxed)
            ))),
        }
    }

    fn locked_record<'a>(&'a self, guard: RobustGuard<'a>, outcome: LockOutcome) -> RecordLock<'a> {
        let r = self.ns_record();
        if outcome == LockOutcome::PreviousOwnerDied {
            r.mutex.mark_consistent(&guard);
        }
        r.writer.store(self.me().raw(), Ordering::Relaxed);
        r.writer_pid.store(std::process::id(), Ordering::Relaxed);
        let lock = RecordLock {
            group: self,
            _guard: guard,
        };
        if outcome == LockOutcome::PreviousOwnerDied {
            // The holder died, maybe in the middle of writing or of a change: nothing it
            // left is trusted.
            lock.write(0, None);
        }
        lock
    }

    /// The record's list when it is usable: a whole list, written after the last
    /// Namespace Attribute Changed notice the group recorded (`regs`: this process's
    /// register handle, for the group's admin queue; completions waiting there are
    /// reaped first, so that a notice the controller posted is seen).
    pub(crate) fn read_namespace_record(
        &self,
        regs: &Mmio,
    ) -> std::result::Result<Vec<Namespace>, Unusable> {
        if let Ok(q) = self.admin(regs.clone()) {
            q.reap();
        }
        let list = read_record(
            self.ns_record(),
            |raw| self.owner_alive(raw),
            |at| self.namespace_notice_since(regs, at),
        )?;
        let mut out = Vec::with_capacity(list.len());
        for (nsid, id) in list {
            out.push(Namespace::from_identify(nsid, id).ok_or_else(|| {
                Unusable::Damaged(format!("namespace {nsid} has no blocks or block size"))
            })?);
        }
        Ok(out)
    }

    /// Why the record needs refreshing, if it does (the monitor asks, without the lock;
    /// `None` also while a live writer is at it).
    pub(crate) fn namespace_record_needs_refresh(&self, regs: &Mmio) -> Option<Unusable> {
        needs_refresh(
            self.ns_record(),
            |raw| self.owner_alive(raw),
            |at| self.namespace_notice_since(regs, at),
        )
    }

    /// Is there a Namespace Attribute Changed notice at or after event `at` in the group's
    /// event record (or were events lost since, or is `at` in the future)?
    fn namespace_notice_since(&self, regs: &Mmio, at: u64) -> bool {
        let Ok(q) = self.admin(regs.clone()) else {
            return true;
        };
        if at > self.events_seq() {
            return true;
        }
        let mut cursor = at;
        let mut seen = false;
        let lost = q.events_since(&mut cursor, |dw0| {
            seen |= crate::manage::is_namespace_change(&AsyncEvent::from_dword(dw0));
        });
        seen || lost > 0
    }

    /// Takes the record's lock, leaves it mid-write (odd generation) and never lets go
    /// (tests: a writer stopped or killed in the middle of an update).
    #[cfg(feature = "test-hooks")]
    pub(crate) fn hold_namespace_record_mid_write(&self) -> Result<()> {
        let lock = self.lock_namespace_record(Duration::from_secs(10))?;
        let r = self.ns_record();
        let g = r.generation.load(Ordering::Relaxed);
        r.generation.store(g | 1, Ordering::Relaxed);
        std::mem::forget(lock);
        Ok(())
    }
}

impl RecordLock<'_> {
    /// Empties the record (before a command that changes namespaces).
    pub(crate) fn invalidate(&self) {
        self.write(0, None);
    }

    /// Stores `list`, identified after the group's event count was `events_at`, as the
    /// record's next generation. While a member is dead and not yet cleaned up the record
    /// is emptied instead (a command of its may still be changing namespaces).
    pub(crate) fn publish(&self, events_at: u64, list: &[Namespace]) {
        if self.group.dead_members().is_empty() {
            self.write(events_at, Some(list));
        } else {
            self.write(0, None);
        }
    }

    fn write(&self, events_at: u64, list: Option<&[Namespace]>) {
        write_record(self.group.ns_record(), events_at, list);
    }
}

/// Writes the next generation of `r` (its lock held): the odd generation, then the list
/// (`None`: empty), then the even one.
fn write_record(r: &NamespaceRecord, events_at: u64, list: Option<&[Namespace]>) {
    let g = r.generation.load(Ordering::Relaxed);
    // A writer that died left it odd: go past it.
    let odd = (g | 1).wrapping_add(if g & 1 == 1 { 2 } else { 0 });
    r.generation.store(odd, Ordering::Relaxed);
    fence(Ordering::Release);
    let count = match list {
        None => NS_NO_LIST,
        Some(l) if l.len() > MAX_RECORD_NAMESPACES => NS_TOO_MANY,
        Some(l) => {
            for (i, ns) in l.iter().enumerate() {
                r.nsids[i].store(ns.id(), Ordering::Relaxed);
                let bytes = ns.identify().as_bytes();
                for (w, chunk) in r.identify[i].iter().zip(bytes.chunks_exact(8)) {
                    w.store(
                        u64::from_le_bytes(chunk.try_into().expect("8 bytes")),
                        Ordering::Relaxed,
                    );
                }
            }
            l.len() as u32
        }
    };
    r.count.store(count, Ordering::Relaxed);
    r.events_at.store(events_at, Ordering::Relaxed);
    r.generation.store(odd.wrapping_add(1), Ordering::Release);
}

/// Reads `r` without its lock. `alive`: is this member (`OwnerId::raw`) alive;
/// `notice_since`: is there a Namespace Attribute Changed notice at or after this event
/// count.
pub(super) fn read_record(
    r: &NamespaceRecord,
    alive: impl Fn(u32) -> bool,
    notice_since: impl Fn(u64) -> bool,
) -> std::result::Result<Vec<(u32, IdentifyNamespace)>, Unusable> {
    for _ in 0..BUSY_RETRIES {
        let g = r.generation.load(Ordering::Acquire);
        if g == 0 {
            return Err(Unusable::Absent);
        }
        if g & 1 == 1 {
            if !alive(r.writer.load(Ordering::Relaxed)) {
                return Err(Unusable::DeadWriter);
            }
            std::thread::sleep(BUSY_PAUSE);
            continue;
        }
        let count = r.count.load(Ordering::Relaxed);
        let events_at = r.events_at.load(Ordering::Relaxed);
        let mut list = Vec::new();
        let mut damaged = None;
        if count as usize <= MAX_RECORD_NAMESPACES {
            list.reserve(count as usize);
            for i in 0..count as usize {
                let nsid = r.nsids[i].load(Ordering::Relaxed);
                let mut id = IdentifyNamespace::new_zeroed();
                for (chunk, w) in id.as_mut_bytes().chunks_exact_mut(8).zip(&r.identify[i]) {
                    chunk.copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
                }
                list.push((nsid, id));
            }
        }
        fence(Ordering::Acquire);
        if r.generation.load(Ordering::Relaxed) != g {
            // Written meanwhile: look again.
            continue;
        }
        match count {
            NS_NO_LIST => return Err(Unusable::NoList),
            NS_TOO_MANY => return Err(Unusable::TooMany),
            c if c as usize > MAX_RECORD_NAMESPACES => {
                damaged = Some(format!("{c} namespaces"));
            }
            _ => {}
        }
        let ascending = list.windows(2).all(|w| w[0].0 < w[1].0);
        if damaged.is_none() && (!ascending || list.iter().any(|&(n, _)| n == 0 || n == u32::MAX)) {
            let ids: Vec<u32> = list.iter().map(|&(n, _)| n).collect();
            damaged = Some(format!("namespace ids {ids:?}"));
        }
        if let Some(d) = damaged {
            return Err(Unusable::Damaged(d));
        }
        if notice_since(events_at) {
            return Err(Unusable::Stale);
        }
        return Ok(list);
    }
    Err(Unusable::Busy)
}

/// See [`Group::namespace_record_needs_refresh`].
pub(super) fn needs_refresh(
    r: &NamespaceRecord,
    alive: impl Fn(u32) -> bool,
    notice_since: impl Fn(u64) -> bool,
) -> Option<Unusable> {
    let g = r.generation.load(Ordering::Acquire);
    if g == 0 {
        return Some(Unusable::Absent);
    }
    if g & 1 == 1 {
        return (!alive(r.writer.load(Ordering::Relaxed))).then_some(Unusable::DeadWriter);
    }
    match r.count.load(Ordering::Relaxed) {
        NS_NO_LIST => return Some(Unusable::NoList),
        c if c as usize > MAX_RECORD_NAMESPACES && c != NS_TOO_MANY => {
            return Some(Unusable::Damaged(format!("{c} namespaces")))
        }
        _ => {}
    }
    notice_since(r.events_at.load(Ordering::Relaxed)).then_some(Unusable::Stale)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::layout::GroupHeader;
    use crate::memory::{Backing, SharedMemory};
    // Its Identify data ends with a vendor-specific byte: the whole structure is kept.
    use crate::namespace::test_namespace as ns;

    fn header() -> SharedMemory {
        let len = std::mem::size_of::<GroupHeader>();
        SharedMemory::with_backing("nsrecord-test", len, Backing::Shared).unwrap()
    }

    fn record(m: &SharedMemory) -> &NamespaceRecord {
        &m.view::<GroupHeader>().unwrap().namespaces
    }

    const ALIVE: fn(u32) -> bool = |_| true;
    const FRESH: fn(u64) -> bool = |_| false;

    #[test]
    fn a_written_list_reads_back_whole() {
        let m = header();
        let r = record(&m);
        assert_eq!(read_record(r, ALIVE, FRESH), Err(Unusable::Absent));
        assert_eq!(needs_refresh(r, ALIVE, FRESH), Some(Unusable::Absent));
        let list = [ns(1, 9, 100), ns(3, 12, 7)];
        write_record(r, 5, Some(&list));
        assert_eq!(r.generation.load(Ordering::Relaxed), 2);
        let got = read_record(r, ALIVE, FRESH).unwrap();
        assert_eq!(got.len(), 2);
        for ((nsid, id), want) in got.iter().zip(&list) {
            assert_eq!(*nsid, want.id());
            assert!(
                id == want.identify(),
                "namespace {nsid}: Identify data differs"
            );
        }
        assert_eq!(needs_refresh(r, ALIVE, FRESH), None);
        // The list is as old as the event count it was read at.
        let seen = std::cell::Cell::new(0);
        let since = |at| {
            seen.set(at);
            true
        };
        assert_eq!(read_record(r, ALIVE, since), Err(Unusable::Stale));
        assert_eq!(seen.get(), 5);
        assert_eq!(needs_refresh(r, ALIVE, since), Some(Unusable::Stale));
    }

    #[test]
    fn an_empty_or_overlong_record_is_not_used() {
        let m = header();
        let r = record(&m);
        write_record(r, 0, None);
        assert_eq!(read_record(r, ALIVE, FRESH), Err(Unusable::NoList));
        assert_eq!(needs_refresh(r, ALIVE, FRESH), Some(Unusable::NoList));
        let many: Vec<Namespace> = (1..=MAX_RECORD_NAMESPACES as u32 + 1)
            .map(|i| ns(i, 9, 8))
            .collect();
        write_record(r, 0, Some(&many));
        assert_eq!(read_record(r, ALIVE, FRESH), Err(Unusable::TooMany));
        // A valid state: refreshed only after a change.
        assert_eq!(needs_refresh(r, ALIVE, FRESH), None);
        write_record(r, 0, Some(&many[..MAX_RECORD_NAMESPACES]));
        assert_eq!(
            read_record(r, ALIVE, FRESH).unwrap().len(),
            MAX_RECORD_NAMESPACES
        );
        assert_eq!(r.generation.load(Ordering::Relaxed), 6);
    }

    #[test]
    fn a_half_written_record_is_never_used() {
        let m = header();
        let r = record(&m);
        write_record(r, 0, Some(&[ns(1, 9, 100)]));
        // A writer in the middle of an update (odd generation).
        r.writer.store(0x0101, Ordering::Relaxed);
        r.generation.store(3, Ordering::Relaxed);
        r.nsids[0].store(9, Ordering::Relaxed);
        let dead = |raw| raw != 0x0101;
        assert_eq!(read_record(r, dead, FRESH), Err(Unusable::DeadWriter));
        assert_eq!(needs_refresh(r, dead, FRESH), Some(Unusable::DeadWriter));
        // A live writer: the reader looks a few times, then gives up.
        assert_eq!(read_record(r, ALIVE, FRESH), Err(Unusable::Busy));
        assert_eq!(needs_refresh(r, ALIVE, FRESH), None, "the writer finishes");
        // The next writer goes past the odd generation.
        write_record(r, 0, Some(&[ns(2, 9, 100)]));
        assert_eq!(r.generation.load(Ordering::Relaxed), 6);
        assert_eq!(read_record(r, dead, FRESH).unwrap()[0].0, 2);
        // Damage: a count past the record, NSIDs out of order.
        r.count
            .store(MAX_RECORD_NAMESPACES as u32 + 5, Ordering::Relaxed);
        assert!(matches!(
            read_record(r, ALIVE, FRESH),
            Err(Unusable::Damaged(_))
        ));
        r.count.store(2, Ordering::Relaxed);
        r.nsids[1].store(1, Ordering::Relaxed);
        assert!(matches!(
            read_record(r, ALIVE, FRESH),
            Err(Unusable::Damaged(d)) if d.contains("[2, 1]")
        ));
    }

    #[test]
    fn readers_racing_a_writer_see_whole_lists_only() {
        let m = header();
        let r = record(&m);
        let lists: Vec<Vec<Namespace>> = (1..=4u32)
            .map(|n| {
                (1..=n)
                    .map(|i| ns(i, 9 + (n % 2) as u8 * 3, n as u64 * 10))
                    .collect()
            })
            .collect();
        write_record(r, 0, Some(&lists[0]));
        let stop = std::sync::atomic::AtomicBool::new(false);
        let enough = std::sync::atomic::AtomicBool::new(false);
        let check = |l: &[(u32, IdentifyNamespace)]| {
            // Every namespace of one list has that list's size and block size.
            let n = l.len();
            assert!((1..=4).contains(&n));
            for (i, (nsid, id)) in l.iter().enumerate() {
                assert_eq!(*nsid, i as u32 + 1);
                assert_eq!(id.nsze, n as u64 * 10, "a mixed list");
                assert_eq!(id.lbaf[0].lbads, 9 + (n % 2) as u8 * 3, "a mixed list");
            }
        };
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut k = 0;
                while !enough.load(Ordering::Relaxed) && k < 1_000_000 {
                    write_record(r, 0, Some(&lists[k % lists.len()]));
                    k += 1;
                    // Room for whole reads between the writes.
                    for _ in 0..200 {
                        std::hint::spin_loop();
                    }
                }
                stop.store(true, Ordering::Relaxed);
            });
            let mut whole = 0u64;
            while !stop.load(Ordering::Relaxed) && whole < 200 {
                if let Ok(l) = read_record(r, ALIVE, FRESH) {
                    check(&l);
                    whole += 1;
                }
            }
            enough.store(true, Ordering::Relaxed);
            if whole == 0 {
                // The writer ran out first (a loaded machine): it has stopped now.
                while !stop.load(Ordering::Relaxed) {
                    std::thread::yield_now();
                }
                check(&read_record(r, ALIVE, FRESH).unwrap());
                whole += 1;
            }
            assert!(whole > 0, "no read ever completed");
        });
    }
}
