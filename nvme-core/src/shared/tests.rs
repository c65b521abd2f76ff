use super::*;
use core::sync::atomic::{AtomicBool, AtomicU32};
use std::boxed::Box;
use std::sync::Arc;
use std::vec::Vec;

type SpinLock = spin::Mutex<()>;

const PAGE: usize = 4096;
const ENTRIES: u32 = 32;

/// Doorbells as atomics, so a device thread can watch them.
#[derive(Default)]
struct Bells {
    sq_tail: AtomicU32,
    cq_head: AtomicU32,
    writes: AtomicU32,
}

#[derive(Clone)]
struct Regs(Arc<Bells>);

impl RegisterAccess for Regs {
    fn read32(&self, _: usize) -> u32 {
        0
    }
    fn write32(&self, off: usize, v: u32) {
        self.0.writes.fetch_add(1, Ordering::Relaxed);
        match off {
            0x1000 => self.0.sq_tail.store(v, Ordering::Release),
            0x1004 => self.0.cq_head.store(v, Ordering::Release),
            _ => panic!("unexpected register write {off:#x}"),
        }
    }
}

/// Leaked, page-aligned memory standing in for a shared segment.
fn segment(pages: usize) -> DmaRegion {
    crate::dma::test_memory(pages, 0x100_0000)
}

struct Rig {
    state: &'static SharedAdminState,
    lock: &'static SpinLock,
    bells: Arc<Bells>,
    sq: DmaRegion,
    cq: DmaRegion,
    prp: DmaRegion,
    /// Asynchronous events the device may complete (it holds AERs until then).
    fire: Arc<AtomicU32>,
}

impl Rig {
    fn new() -> Rig {
        let state_mem = segment(core::mem::size_of::<SharedAdminState>().div_ceil(PAGE));
        let state_mem: &'static DmaRegion = Box::leak(Box::new(state_mem));
        let state: &'static SharedAdminState = state_mem.shared().unwrap();
        state.configure(ENTRIES, PAGE, 4 * PAGE, 0).unwrap();
        let prp_len = SharedAdminState::prp_len(ENTRIES, PAGE, 4 * PAGE);
        Rig {
            state,
            lock: Box::leak(Box::new(SpinLock::new(()))),
            bells: Arc::new(Bells::default()),
            sq: segment(1),
            cq: segment(1),
            prp: segment(prp_len.div_ceil(PAGE)),
            fire: Arc::new(AtomicU32::new(0)),
        }
    }
    fn member(&self, index: usize, epoch: u32) -> SharedAdminQueue<'static, Regs, SpinLock> {
        let q = SharedAdminQueue::new(
            self.state,
            self.lock,
            Regs(self.bells.clone()),
            self.sq,
            self.cq,
            self.prp,
            OwnerId::new(index, epoch),
        )
        .unwrap();
        q.join().unwrap();
        q
    }
    /// A controller on its own thread: completes every command with dw0 = cdw10, unless
    /// `hold` is set, and reports SQ head progress.
    fn device(&self, stop: Arc<AtomicBool>, hold: Arc<AtomicBool>) -> std::thread::JoinHandle<u32> {
        let (sq, cq, bells) = (self.sq, self.cq, self.bells.clone());
        let fire = self.fire.clone();
        std::thread::spawn(move || {
            let (mut head, mut tail, mut phase, mut done) = (0u32, 0u32, 1u16, 0u32);
            // Asynchronous Event Requests wait here until the test fires an event.
            let mut aers: Vec<u16> = Vec::new();
            let mut events = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let db = bells.sq_tail.load(Ordering::Acquire);
                let event = !aers.is_empty() && fire.load(Ordering::Relaxed) > 0;
                if (head == db && !event) || hold.load(Ordering::Relaxed) {
                    std::thread::yield_now();
                    continue;
                }
                // CQ full? (one slot kept empty)
                if (tail + 1) % ENTRIES == bells.cq_head.load(Ordering::Acquire) {
                    std::thread::yield_now();
                    continue;
                }
                let e: SubmissionEntry = if event {
                    fire.fetch_sub(1, Ordering::Relaxed);
                    events += 1;
                    SubmissionEntry {
                        cid: aers.remove(0),
                        cdw10: 0xae00 + events,
                        ..Default::default()
                    }
                } else {
                    let e: SubmissionEntry = sq.read_sqe(head).unwrap();
                    head = (head + 1) % ENTRIES;
                    if e.opcode == 0x0c {
                        aers.push(e.cid);
                        continue;
                    }
                    e
                };
                let done_entry = CompletionEntry {
                    dw0: e.cdw10,
                    dw1: 0,
                    sq_head: head as u16,
                    sq_id: 0,
                    cid: e.cid,
                    status: phase,
                };
                assert!(cq.post_cqe(tail, &done_entry));
                tail += 1;
                if tail == ENTRIES {
                    tail = 0;
                    phase ^= 1;
                }
                done += 1;
            }
            done
        })
    }
}

#[test]
fn each_member_receives_exactly_its_own_completions() {
    let rig = Rig::new();
    let stop = Arc::new(AtomicBool::new(false));
    let dev = rig.device(stop.clone(), Arc::new(AtomicBool::new(false)));
    let members: Vec<_> = (0..4).map(|i| rig.member(i, 1)).collect();
    std::thread::scope(|s| {
        for (i, q) in members.iter().enumerate() {
            s.spawn(move || {
                let mut pending: Vec<u64> = Vec::new();
                let mut received = 0u32;
                let mut next = 0u32;
                while received < 300 {
                    if next < 300 && pending.len() < 4 {
                        let cdw10 = (i as u32) << 16 | next;
                        match q.submit(Command::identify(2, 0, 0).cdw10(cdw10), None, cdw10 as u64)
                        {
                            Ok(()) => {
                                pending.push(cdw10 as u64);
                                next += 1;
                            }
                            Err(AdminSubmitError::Submit(SubmitError::QueueFull)) => {}
                            Err(e) => panic!("{e}"),
                        }
                    }
                    q.poll(false, |tag, c| {
                        let pos = pending
                            .iter()
                            .position(|&t| t == tag)
                            .expect("a completion for a command this member submitted");
                        pending.swap_remove(pos);
                        assert_eq!(c.dw0 as u64, tag, "completion content matches the command");
                        assert_eq!(c.dw0 >> 16, i as u32);
                        received += 1;
                    });
                }
                assert!(pending.is_empty());
            });
        }
    });
    stop.store(true, Ordering::Relaxed);
    assert_eq!(dev.join().unwrap(), 1200);
    assert_eq!(rig.state.stale_completions(), 0);
    assert_eq!(rig.state.dropped_for_dead(), 0);
}

#[test]
fn completions_for_a_departed_member_are_dropped() {
    let rig = Rig::new();
    let stop = Arc::new(AtomicBool::new(false));
    let hold = Arc::new(AtomicBool::new(true));
    let dev = rig.device(stop.clone(), hold.clone());
    let a = rig.member(0, 1);
    let b = rig.member(1, 1);
    a.submit(Command::identify(1, 0, 0).cdw10(0xa), None, 1)
        .unwrap();
    b.submit(Command::identify(1, 0, 0).cdw10(0xb), None, 2)
        .unwrap();
    // A dies; a new process takes its member index with the next epoch.
    b.release_member(a.owner());
    assert_eq!(
        b.in_flight_of(a.owner()),
        1,
        "the departed member's command is still out"
    );
    let a2 = rig.member(0, 2);
    hold.store(false, Ordering::Relaxed);
    let mut got = Vec::new();
    while got.is_empty() {
        b.poll(true, |t, c| got.push((t, c.dw0)));
    }
    assert_eq!(got, [(2, 0xb)]);
    let mut leaked = 0;
    a2.poll(true, |_, _| leaked += 1);
    assert_eq!(
        leaked, 0,
        "the new member must not see the old member's completion"
    );
    assert_eq!(rig.state.dropped_for_dead(), 1);
    assert_eq!(b.in_flight_of(a.owner()), 0);
    stop.store(true, Ordering::Relaxed);
    dev.join().unwrap();
}

/// A lock whose previous holder "died": the next lock() reports it once.
struct DeadOwnerLock {
    inner: SpinLock,
    dead: AtomicBool,
    consistent: AtomicBool,
}

impl DeadOwnerLock {
    fn outcome(&self) -> LockOutcome {
        if self.dead.swap(false, Ordering::Relaxed) {
            LockOutcome::PreviousOwnerDied
        } else {
            LockOutcome::Acquired
        }
    }
}

impl RobustLock for DeadOwnerLock {
    type Guard<'a> = spin::MutexGuard<'a, ()>;
    fn lock(&self, _: Option<Duration>) -> Option<(Self::Guard<'_>, LockOutcome)> {
        Some((self.inner.lock(), self.outcome()))
    }
    fn try_lock(&self) -> Option<(Self::Guard<'_>, LockOutcome)> {
        Some((self.inner.try_lock()?, self.outcome()))
    }
    fn mark_consistent(&self, _: &Self::Guard<'_>) {
        self.consistent.store(true, Ordering::Relaxed);
    }
}

#[test]
fn a_holder_dying_mid_submit_is_recovered() {
    let rig = Rig::new();
    let lock: &'static DeadOwnerLock = Box::leak(Box::new(DeadOwnerLock {
        inner: SpinLock::new(()),
        dead: AtomicBool::new(false),
        consistent: AtomicBool::new(false),
    }));
    let q = SharedAdminQueue::new(
        rig.state,
        lock,
        Regs(rig.bells.clone()),
        rig.sq,
        rig.cq,
        rig.prp,
        OwnerId::new(3, 1),
    )
    .unwrap();
    q.join().unwrap();
    // Member 5 died after claiming every slot but before publishing any of them.
    for s in &rig.state.slots[..(ENTRIES - 1) as usize] {
        s.state.store(CLAIMED, Ordering::Relaxed);
        s.owner.store(OwnerId::new(5, 1).raw(), Ordering::Relaxed);
    }
    assert_eq!(
        q.submit(Command::flush(1), None, 9),
        Err(AdminSubmitError::Submit(SubmitError::QueueFull))
    );
    lock.dead.store(true, Ordering::Relaxed);
    let writes_before = rig.bells.writes.load(Ordering::Relaxed);
    q.submit(Command::flush(1), None, 9).unwrap();
    assert!(
        lock.consistent.load(Ordering::Relaxed),
        "the lock was marked consistent"
    );
    // Recovery rewrote both doorbells, then the submit rang the tail.
    assert_eq!(rig.bells.writes.load(Ordering::Relaxed) - writes_before, 3);
    let claimed = rig
        .state
        .slots
        .iter()
        .filter(|s| s.state.load(Ordering::Relaxed) == CLAIMED)
        .count();
    assert_eq!(claimed, 0);
}

#[test]
fn stale_and_out_of_range_identifiers_are_dropped() {
    let rig = Rig::new();
    let q = rig.member(0, 1);
    q.submit(Command::flush(1), None, 1).unwrap();
    // Post completions by hand: a wrong generation, an index past the slots, then the right one.
    let post = |idx: u32, cid: u16| {
        let e = CompletionEntry {
            cid,
            status: 1,
            ..Default::default()
        };
        assert!(rig.cq.post_cqe(idx, &e));
    };
    post(0, 2 << 8); // slot 0, generation 2
    post(1, 200);
    post(2, 1 << 8); // slot 0, generation 1
    let mut got = Vec::new();
    q.poll(true, |t, _| got.push(t));
    assert_eq!(got, [1]);
    assert_eq!(rig.state.stale_completions(), 2);
    assert_eq!(
        rig.bells.cq_head.load(Ordering::Relaxed),
        3,
        "one head doorbell for the batch"
    );
}

#[test]
fn configuration_is_checked() {
    let rig = Rig::new();
    assert_eq!(
        rig.state.configure(1, PAGE, PAGE, 0),
        Err(SharedAdminError::BadSize(1))
    );
    assert_eq!(
        rig.state.configure(257, PAGE, PAGE, 0),
        Err(SharedAdminError::BadSize(257))
    );
    let small = rig.sq.sub(0, 64).unwrap();
    assert!(matches!(
        SharedAdminQueue::new(
            rig.state,
            rig.lock,
            Regs(rig.bells.clone()),
            small,
            rig.cq,
            rig.prp,
            OwnerId::new(0, 1)
        ),
        Err(SharedAdminError::RegionTooSmall)
    ));
    assert_eq!(OwnerId::new(63, 7).index(), 63);
}

/// A member that rewrites the doorbell stride would make the others ring other queues'
/// doorbells: the stride must be the controller's (CAP.DSTRD, 0 for this register block).
#[test]
fn a_damaged_doorbell_stride_is_refused() {
    let rig = Rig::new();
    let q = rig.member(0, 1);
    rig.state.dstrd.store(3, Ordering::Relaxed);
    assert_eq!(
        q.submit(Command::identify(1, 0, 0), None, 1),
        Err(AdminSubmitError::Corrupt(
            SharedAdminError::WrongDoorbellStride {
                shared: 3,
                controller: 0
            }
        ))
    );
    assert!(matches!(
        SharedAdminQueue::new(
            rig.state,
            rig.lock,
            Regs(rig.bells.clone()),
            rig.sq,
            rig.cq,
            rig.prp,
            OwnerId::new(1, 1)
        ),
        Err(SharedAdminError::WrongDoorbellStride { .. })
    ));
    // Nothing reached the device's registers.
    assert_eq!(rig.bells.writes.load(Ordering::Relaxed), 0);
}

#[test]
fn asynchronous_events_reach_every_member() {
    let rig = Rig::new();
    let stop = Arc::new(AtomicBool::new(false));
    let dev = rig.device(stop.clone(), Arc::new(AtomicBool::new(false)));
    let a = rig.member(0, 1);
    let b = rig.member(1, 1);
    a.enable_events(1).unwrap();
    let (mut ca, mut cb) = (0u64, 0u64);
    assert_eq!(b.events_since(&mut cb, |_| panic!("no event yet")), 0);
    // Two events, one after the other: each completion re-arms a request.
    for n in 1..=2u32 {
        rig.fire.fetch_add(1, Ordering::Relaxed);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut got = Vec::new();
        while got.is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "event {n} never recorded"
            );
            b.reap();
            b.events_since(&mut cb, |dw0| got.push(dw0));
        }
        assert_eq!(got, [0xae00 + n]);
        let mut seen_by_a = Vec::new();
        a.events_since(&mut ca, |dw0| seen_by_a.push(dw0));
        assert_eq!(seen_by_a, [0xae00 + n], "every member sees every event");
    }
    // Normal commands still route to their submitter alongside outstanding event requests.
    a.submit(Command::flush(1).cdw10(7), None, 70).unwrap();
    let mut done = Vec::new();
    while done.is_empty() {
        a.poll(true, |t, c| done.push((t, c.dw0)));
    }
    assert_eq!(done, [(70, 7)]);
    assert_eq!(rig.state.aer_outstanding.load(Ordering::Relaxed), 1);
    // A reader that fell far behind is told how many it missed.
    let mut stale = 0u64;
    rig.state.events_seq.store(40, Ordering::Relaxed);
    assert_eq!(a.events_since(&mut stale, |_| {}), 24);
    assert_eq!(stale, 40);
    stop.store(true, Ordering::Relaxed);
    dev.join().unwrap();
}

/// A lock held by a process that is alive but stopped: never free.
struct StuckLock;

impl RobustLock for StuckLock {
    type Guard<'a> = ();
    fn lock(&self, bound: Option<Duration>) -> Option<(Self::Guard<'_>, LockOutcome)> {
        assert!(
            bound.is_some(),
            "an unbounded wait on a stuck lock would hang the test"
        );
        None
    }
    fn try_lock(&self) -> Option<(Self::Guard<'_>, LockOutcome)> {
        None
    }
    fn mark_consistent(&self, _: &Self::Guard<'_>) {}
}

#[test]
fn a_stuck_lock_holder_times_out_instead_of_hanging() {
    let rig = Rig::new();
    let q = SharedAdminQueue::new(
        rig.state,
        &StuckLock,
        Regs(rig.bells.clone()),
        rig.sq,
        rig.cq,
        rig.prp,
        OwnerId::new(2, 1),
    )
    .unwrap()
    .with_lock_timeout(Duration::from_millis(10));
    assert_eq!(q.join(), Err(AdminSubmitError::LockTimeout));
    assert_eq!(
        q.submit(Command::flush(1), None, 1),
        Err(AdminSubmitError::LockTimeout)
    );
    assert_eq!(q.enable_events(1), Err(AdminSubmitError::LockTimeout));
    assert_eq!(q.poll(true, |_, _| panic!("nothing to deliver")), 0);
    q.release_member(OwnerId::new(3, 1)); // gives up quietly
    assert!(std::format!("{}", AdminSubmitError::LockTimeout).contains("stopped or stuck"));
}

#[test]
fn a_reset_completes_what_the_controller_held_and_starts_over() {
    let rig = Rig::new();
    // No device thread: the "controller" is disabled and completes nothing.
    let a = rig.member(0, 1);
    let b = rig.member(1, 1);
    a.enable_events(1).unwrap();
    a.submit(Command::identify(1, 0, 0), None, 10).unwrap();
    b.submit(Command::identify(1, 0, 0), None, 20).unwrap();
    assert_eq!(rig.state.aer_outstanding.load(Ordering::Relaxed), 1);
    assert_eq!(rig.state.sq_tail.load(Ordering::Relaxed), 3);
    a.reset_after_disable().unwrap();
    let aborted = Status::generic(nvme_regs::status::GenericStatus::AbortedSqDeletion);
    let mut got = Vec::new();
    a.poll(false, |t, c| got.push((t, c.status)));
    assert_eq!(got, [(10, aborted)], "each owner gets its own, once");
    let mut got = Vec::new();
    b.poll(false, |t, c| got.push((t, c.status)));
    assert_eq!(got, [(20, aborted)]);
    assert_eq!(a.poll(false, |_, _| panic!("delivered twice")), 0);
    assert_eq!(rig.state.aer_outstanding.load(Ordering::Relaxed), 0);
    assert_eq!(rig.state.sq_tail.load(Ordering::Relaxed), 0);
    assert_eq!(rig.state.cq_head_phase.load(Ordering::Relaxed), 1 << 31);
    assert_eq!(b.in_flight_of(a.owner()) + b.in_flight_of(b.owner()), 0);
    // The queue works again from position 0 (a device now runs).
    let stop = Arc::new(AtomicBool::new(false));
    let dev = rig.device(stop.clone(), Arc::new(AtomicBool::new(false)));
    a.submit(Command::flush(1).cdw10(5), None, 11).unwrap();
    let mut got = Vec::new();
    while got.is_empty() {
        a.poll(true, |t, c| got.push((t, c.dw0)));
    }
    assert_eq!(got, [(11, 5)]);
    stop.store(true, Ordering::Relaxed);
    dev.join().unwrap();
}

#[test]
fn a_reset_has_one_owner_and_holds_the_others_back() {
    let rig = Rig::new();
    let a = rig.member(0, 1);
    let b = rig.member(1, 1);
    assert_eq!(rig.state.reset_generation(), 0);
    a.begin_reset(None).unwrap();
    assert_eq!(rig.state.reset_generation(), 1);
    assert_eq!(rig.state.reset_owner(), Some(a.owner()));
    // The others wait; a second resetter is refused unless the owner is known dead.
    assert_eq!(
        b.submit(Command::flush(1), None, 1),
        Err(AdminSubmitError::Resetting)
    );
    assert_eq!(b.begin_reset(None), Err(AdminSubmitError::Resetting));
    // The owner's own commands go through (its bring-up).
    a.submit(Command::flush(1), None, 2).unwrap();
    a.end_reset(true).unwrap();
    assert_eq!(rig.state.reset_generation(), 2);
    assert_eq!(rig.state.reset_owner(), None);
    b.submit(Command::flush(1), None, 3).unwrap();
    // A failed reset leaves the controller needing another; anyone may do it.
    b.begin_reset(None).unwrap();
    b.end_reset(false).unwrap();
    assert_eq!(rig.state.reset_generation(), 3);
    assert_eq!(
        a.submit(Command::flush(1), None, 4),
        Err(AdminSubmitError::NeedsReset)
    );
    a.begin_reset(None).unwrap();
    // The owner dies mid-reset: a survivor that knows it is dead takes over.
    assert_eq!(b.begin_reset(None), Err(AdminSubmitError::Resetting));
    b.begin_reset(Some(a.owner())).unwrap();
    assert_eq!(rig.state.reset_owner(), Some(b.owner()));
    b.end_reset(true).unwrap();
    assert_eq!(rig.state.reset_generation(), 4);
}

#[test]
fn counters_a_corrupt_member_maxed_out_wrap_instead_of_panicking() {
    // Found by the `completions` fuzz target: a slot generation (and the event sequence)
    // that a corrupt member set to the maximum overflowed in the next submitter (a panic
    // in debug builds).
    let rig = Rig::new();
    let q = rig.member(0, 1);
    for s in &rig.state.slots {
        s.generation.store(u32::MAX, Ordering::Relaxed);
    }
    rig.state.events_seq.store(u64::MAX, Ordering::Relaxed);
    q.submit(Command::flush(1), None, 1).unwrap();
    assert_eq!(rig.state.slots[0].generation.load(Ordering::Relaxed), 0);
    q.enable_events(1).unwrap();
    // Complete the event request (slot 1, generation 0) as a successful event.
    let e = CompletionEntry {
        cid: 1,
        status: 1,
        dw0: 0xabc,
        ..Default::default()
    };
    assert!(rig.cq.post_cqe(0, &e));
    q.reap();
    assert_eq!(rig.state.events_seq(), 0, "wrapped");
}

#[test]
fn an_outstanding_command_is_named_by_its_cid_for_its_owner_only() {
    let rig = Rig::new();
    // No device thread: nothing completes.
    let a = rig.member(0, 1);
    let b = rig.member(1, 1);
    assert_eq!(a.cid_of(10).unwrap(), None, "not submitted");
    a.submit(Command::identify(1, 0, 0), None, 10).unwrap();
    b.submit(Command::identify(1, 0, 0), None, 10).unwrap();
    let (ca, cb) = (
        a.cid_of(10).unwrap().unwrap(),
        b.cid_of(10).unwrap().unwrap(),
    );
    assert_ne!(ca, cb, "the same tag of two members is two commands");
    let sqe = |cid: u16| {
        (0..ENTRIES)
            .map(|i| rig.sq.read_sqe(i).unwrap())
            .any(|e| e.cid == cid && e.opcode == 0x06)
    };
    assert!(sqe(ca) && sqe(cb), "the identifiers are those in the ring");
    assert_eq!(a.cid_of(11).unwrap(), None);
    // Completed (here by a reset): no longer outstanding.
    a.reset_after_disable().unwrap();
    assert_eq!(a.cid_of(10).unwrap(), None);
    assert_eq!(b.cid_of(10).unwrap(), None);
}
