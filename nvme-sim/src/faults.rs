//! Fault injection: failed, delayed and lost completions, controller fatal status, a
//! controller that never becomes ready, and asynchronous events; and a record of the Abort
//! commands the controller received ([`Faults::aborts`]).
//!
//! [`Faults`] is shared with the processing thread and may be used from any thread while the
//! controller runs. When no command rule is installed, the I/O path pays one relaxed atomic
//! load per command.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use nvme_regs::Status;

/// Which queues a [`CommandMatch`] applies to.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum QueueMatch {
    /// Any queue, admin or I/O.
    #[default]
    Any,
    /// The admin submission queue (queue id 0) only.
    Admin,
    /// Any I/O submission queue (queue id 1 or above).
    Io,
    /// The submission queue with this id.
    Queue(u16),
}

/// Selects the commands a fault rule applies to. Fields left at `None` match anything.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct CommandMatch {
    /// Queues the command may come from.
    pub queue: QueueMatch,
    /// The command's opcode (admin or NVM, depending on the queue).
    pub opcode: Option<u8>,
    /// The command's namespace identifier.
    pub nsid: Option<u32>,
}

impl CommandMatch {
    /// Matches every command.
    pub const fn any() -> CommandMatch {
        CommandMatch {
            queue: QueueMatch::Any,
            opcode: None,
            nsid: None,
        }
    }
    /// Matches the admin command with this opcode.
    pub const fn admin(opcode: u8) -> CommandMatch {
        CommandMatch {
            queue: QueueMatch::Admin,
            opcode: Some(opcode),
            nsid: None,
        }
    }
    /// Matches the I/O command with this opcode, on any I/O queue.
    pub const fn io(opcode: u8) -> CommandMatch {
        CommandMatch {
            queue: QueueMatch::Io,
            opcode: Some(opcode),
            nsid: None,
        }
    }
    /// Restricts the match to submission queue `qid`.
    pub const fn on_queue(mut self, qid: u16) -> CommandMatch {
        self.queue = QueueMatch::Queue(qid);
        self
    }
    /// Restricts the match to an opcode.
    pub const fn with_opcode(mut self, opcode: u8) -> CommandMatch {
        self.opcode = Some(opcode);
        self
    }
    /// Restricts the match to a namespace.
    pub const fn with_nsid(mut self, nsid: u32) -> CommandMatch {
        self.nsid = Some(nsid);
        self
    }
    /// Does a command from submission queue `qid` with this opcode and NSID match?
    pub fn matches(&self, qid: u16, opcode: u8, nsid: u32) -> bool {
        let q = match self.queue {
            QueueMatch::Any => true,
            QueueMatch::Admin => qid == 0,
            QueueMatch::Io => qid != 0,
            QueueMatch::Queue(q) => q == qid,
        };
        q && self.opcode.is_none_or(|o| o == opcode) && self.nsid.is_none_or(|n| n == nsid)
    }
}

/// What happens to a command selected by a fault rule.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FaultAction {
    /// The command is not executed and completes with this status (use
    /// [`Status::with_dnr`] for a non-retryable error).
    Fail(Status),
    /// The command executes; its completion is posted this long after it would have been.
    /// (Its data is transferred when it is fetched, as without the rule.)
    Delay(Duration),
    /// The command is fetched now but executes this long later: its data transfer (to or
    /// from host memory) and its completion both happen after the delay, as with a slow
    /// device. Deleting its submission queue or resetting the controller first aborts it
    /// without a transfer.
    DelayExecution(Duration),
    /// The command executes but its completion is never posted (a lost completion).
    Drop,
}

/// How many matching commands a rule affects.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Repeat {
    /// Only the `nth` matching command; the rule is then spent.
    Once,
    /// The `nth` matching command and every matching command after it.
    Always,
}

/// A command fault: the `nth` (1-based) command matching `matcher` gets `action`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FaultRule {
    /// The commands that count.
    pub matcher: CommandMatch,
    /// Which matching command fires the rule first (1 = the next one).
    pub nth: u64,
    /// Once, or from the `nth` on.
    pub repeat: Repeat,
    /// What to do.
    pub action: FaultAction,
}

/// Identifies an installed fault rule.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct FaultId(u64);

impl FaultId {
    /// The id as a number (what [`crate::SimClient`] sends over the daemon socket).
    pub const fn raw(self) -> u64 {
        self.0
    }
    /// The id with number `raw` (as returned by [`FaultId::raw`]).
    pub const fn from_raw(raw: u64) -> FaultId {
        FaultId(raw)
    }
}

/// Asynchronous event types (NVMe 1.4 figure 146, completion dword 0 bits 2:0).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum AsyncEventType {
    /// Error status.
    Error = 0,
    /// SMART / Health status.
    SmartHealth = 1,
    /// Notice.
    Notice = 2,
    /// I/O command specific status.
    IoCommandSet = 6,
    /// Vendor specific.
    Vendor = 7,
}

/// Asynchronous event information for SMART / Health events: temperature threshold.
pub const AER_INFO_SMART_TEMPERATURE: u8 = 0x01;

/// An asynchronous event waiting for an Asynchronous Event Request command.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct AsyncEvent {
    /// Event type.
    pub event_type: AsyncEventType,
    /// Event information (dword 0 bits 15:8).
    pub info: u8,
    /// Log page to read to clear the event (dword 0 bits 23:16).
    pub log_page: u8,
}

impl AsyncEvent {
    /// Dword 0 of the Asynchronous Event Request completion.
    pub const fn to_dword(self) -> u32 {
        self.event_type as u32 | (self.info as u32) << 8 | (self.log_page as u32) << 16
    }
}

/// How often each kind of fault fired.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct FaultCounters {
    /// Commands failed by a rule.
    pub failed: u64,
    /// Completions delayed by a rule.
    pub delayed: u64,
    /// Commands whose execution (data transfer and completion) a rule delayed.
    pub executions_delayed: u64,
    /// Commands delayed by [`FaultAction::DelayExecution`] that have since executed (or
    /// were aborted by a queue deletion or reset): a test waits for this to see a late
    /// transfer happen.
    pub delayed_executed: u64,
    /// Completions dropped by a rule.
    pub dropped: u64,
    /// Controller fatal status raised through [`Faults::raise_cfs`].
    pub cfs_raised: u64,
    /// Enables whose CSTS.RDY was withheld by [`Faults::set_never_ready`].
    pub ready_withheld: u64,
    /// Events queued through [`Faults::raise_async_event`].
    pub async_events_raised: u64,
    /// Abort commands received (see [`Faults::aborts`]).
    pub aborts_received: u64,
    /// Abort commands that aborted their command (completion dword 0 bit 0 cleared).
    pub aborts_done: u64,
}

/// An Abort command the controller received, and what it did (see [`Faults::aborts`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct AbortSeen {
    /// The submission queue named by the Abort (CDW10 bits 15:0).
    pub sqid: u16,
    /// The command identifier named by the Abort (CDW10 bits 31:16).
    pub cid: u16,
    /// Whether the command was aborted: it was still held by the controller (postponed by
    /// [`FaultAction::DelayExecution`], its completion delayed by [`FaultAction::Delay`], or
    /// an outstanding Asynchronous Event Request) and completed with Command Abort
    /// Requested. `false`: not found (it already completed, or its completion was dropped
    /// by [`FaultAction::Drop`]: it executed), reported with completion dword 0 bit 0 set.
    pub aborted: bool,
}

/// Commands a rule fired on, kept per rule (the most recent ones).
const FIRED_ON_KEPT: usize = 16;
/// (SQ id, CID) of the commands a rule fired on, the most recent last.
type FiredOn = VecDeque<(u16, u16)>;
/// Abort commands kept by [`Faults::aborts`] (the most recent ones).
const ABORTS_KEPT: usize = 64;

struct RuleState {
    id: FaultId,
    rule: FaultRule,
    matched: u64,
    fired: u64,
    /// The commands it fired on.
    fired_on: FiredOn,
}

/// What the rules decided for one command.
#[derive(Default)]
pub(crate) struct Decision {
    pub(crate) fail: Option<Status>,
    pub(crate) delay: Option<Duration>,
    pub(crate) delay_execution: Option<Duration>,
    pub(crate) drop: bool,
}

/// Fault injection controls of a running controller (see [`crate::SimController::faults`]).
pub struct Faults {
    rules: Mutex<Vec<RuleState>>,
    /// Fired counts and commands of removed (spent or cleared) rules, for
    /// [`Faults::fired`] and [`Faults::fired_on`].
    spent: Mutex<Vec<(FaultId, u64, FiredOn)>>,
    aborts: Mutex<VecDeque<AbortSeen>>,
    aborts_received: AtomicU64,
    aborts_done: AtomicU64,
    any_rules: AtomicBool,
    next_id: AtomicU64,
    cfs_request: AtomicBool,
    never_ready: AtomicBool,
    events: Mutex<VecDeque<AsyncEvent>>,
    events_pending: AtomicBool,
    failed: AtomicU64,
    delayed: AtomicU64,
    executions_delayed: AtomicU64,
    delayed_executed: AtomicU64,
    dropped: AtomicU64,
    cfs_raised: AtomicU64,
    ready_withheld: AtomicU64,
    events_raised: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Faults {
    pub(crate) fn new() -> Faults {
        Faults {
            rules: Mutex::new(Vec::new()),
            spent: Mutex::new(Vec::new()),
            aborts: Mutex::new(VecDeque::new()),
            aborts_received: AtomicU64::new(0),
            aborts_done: AtomicU64::new(0),
            any_rules: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            cfs_request: AtomicBool::new(false),
            never_ready: AtomicBool::new(false),
            events: Mutex::new(VecDeque::new()),
            events_pending: AtomicBool::new(false),
            failed: AtomicU64::new(0),
            delayed: AtomicU64::new(0),
            executions_delayed: AtomicU64::new(0),
            delayed_executed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            cfs_raised: AtomicU64::new(0),
            ready_withheld: AtomicU64::new(0),
            events_raised: AtomicU64::new(0),
        }
    }

    /// Installs a command fault rule and returns its id.
    pub fn inject(&self, rule: FaultRule) -> FaultId {
        let id = FaultId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let mut r = lock(&self.rules);
        r.push(RuleState {
            id,
            rule,
            matched: 0,
            fired: 0,
            fired_on: VecDeque::new(),
        });
        self.any_rules.store(true, Ordering::Release);
        id
    }

    /// Fails the `nth` (1-based) command matching `matcher` with `status`; with
    /// `every`, also every later matching command.
    pub fn fail_nth(
        &self,
        matcher: CommandMatch,
        nth: u64,
        status: Status,
        every: bool,
    ) -> FaultId {
        self.inject(FaultRule {
            matcher,
            nth,
            repeat: if every { Repeat::Always } else { Repeat::Once },
            action: FaultAction::Fail(status),
        })
    }

    /// Delays the completion of the `nth` matching command (and later ones with `every`).
    pub fn delay_nth(
        &self,
        matcher: CommandMatch,
        nth: u64,
        delay: Duration,
        every: bool,
    ) -> FaultId {
        self.inject(FaultRule {
            matcher,
            nth,
            repeat: if every { Repeat::Always } else { Repeat::Once },
            action: FaultAction::Delay(delay),
        })
    }

    /// Delays the execution of the `nth` matching command (and later ones with `every`):
    /// its data transfer and its completion both happen `delay` after it was fetched.
    pub fn delay_execution_nth(
        &self,
        matcher: CommandMatch,
        nth: u64,
        delay: Duration,
        every: bool,
    ) -> FaultId {
        self.inject(FaultRule {
            matcher,
            nth,
            repeat: if every { Repeat::Always } else { Repeat::Once },
            action: FaultAction::DelayExecution(delay),
        })
    }

    /// Never posts the completion of the `nth` matching command (and later ones with `every`).
    pub fn drop_nth(&self, matcher: CommandMatch, nth: u64, every: bool) -> FaultId {
        self.inject(FaultRule {
            matcher,
            nth,
            repeat: if every { Repeat::Always } else { Repeat::Once },
            action: FaultAction::Drop,
        })
    }

    /// Removes a rule; returns false when it was already spent or removed.
    pub fn remove(&self, id: FaultId) -> bool {
        let mut r = lock(&self.rules);
        let Some(i) = r.iter().position(|s| s.id == id) else {
            return false;
        };
        let s = r.remove(i);
        lock(&self.spent).push((s.id, s.fired, s.fired_on));
        self.any_rules.store(!r.is_empty(), Ordering::Release);
        true
    }

    /// Removes every command rule and clears the never-ready flag.
    pub fn clear(&self) {
        let mut r = lock(&self.rules);
        let mut spent = lock(&self.spent);
        spent.extend(r.drain(..).map(|s| (s.id, s.fired, s.fired_on)));
        self.any_rules.store(false, Ordering::Release);
        self.never_ready.store(false, Ordering::Release);
    }

    /// How many times the rule `id` fired (also after it was spent or removed).
    pub fn fired(&self, id: FaultId) -> u64 {
        if let Some(s) = lock(&self.rules).iter().find(|s| s.id == id) {
            return s.fired;
        }
        lock(&self.spent)
            .iter()
            .find(|(i, _, _)| *i == id)
            .map_or(0, |(_, n, _)| *n)
    }

    /// The (submission queue id, command identifier) of the commands the rule `id` fired
    /// on, oldest first (the last 16; also after it was spent or removed). A test names
    /// with it the command that an Abort should name (see [`Faults::aborts`]).
    pub fn fired_on(&self, id: FaultId) -> Vec<(u16, u16)> {
        if let Some(s) = lock(&self.rules).iter().find(|s| s.id == id) {
            return s.fired_on.iter().copied().collect();
        }
        lock(&self.spent)
            .iter()
            .find(|(i, _, _)| *i == id)
            .map_or(Vec::new(), |(_, _, c)| c.iter().copied().collect())
    }

    /// The Abort commands received, oldest first (the last 64), with what each did.
    pub fn aborts(&self) -> Vec<AbortSeen> {
        lock(&self.aborts).iter().copied().collect()
    }

    /// Is the rule `id` still installed (not spent, not removed)?
    pub fn is_active(&self, id: FaultId) -> bool {
        lock(&self.rules).iter().any(|s| s.id == id)
    }

    /// Sets CSTS.CFS as soon as the processing thread sees it (within microseconds). The
    /// controller stops processing commands until the host resets it (CC.EN 1 -> 0).
    pub fn raise_cfs(&self) {
        self.cfs_request.store(true, Ordering::Release);
    }

    /// While set, enabling the controller never sets CSTS.RDY (a bring-up timeout). Clearing
    /// it lets a pending enable complete.
    pub fn set_never_ready(&self, on: bool) {
        self.never_ready.store(on, Ordering::Release);
    }

    /// Queues an asynchronous event; it completes an outstanding Asynchronous Event Request
    /// (now, or when the host submits one).
    pub fn raise_async_event(&self, event_type: AsyncEventType, info: u8, log_page: u8) {
        self.push_event(AsyncEvent {
            event_type,
            info,
            log_page,
        });
        self.events_raised.fetch_add(1, Ordering::Relaxed);
    }

    /// Counters of fired faults.
    pub fn counters(&self) -> FaultCounters {
        FaultCounters {
            failed: self.failed.load(Ordering::Relaxed),
            delayed: self.delayed.load(Ordering::Relaxed),
            executions_delayed: self.executions_delayed.load(Ordering::Relaxed),
            delayed_executed: self.delayed_executed.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            cfs_raised: self.cfs_raised.load(Ordering::Relaxed),
            ready_withheld: self.ready_withheld.load(Ordering::Relaxed),
            async_events_raised: self.events_raised.load(Ordering::Relaxed),
            aborts_received: self.aborts_received.load(Ordering::Relaxed),
            aborts_done: self.aborts_done.load(Ordering::Relaxed),
        }
    }

    // ---- used by the processing thread ----

    pub(crate) fn push_event(&self, ev: AsyncEvent) {
        lock(&self.events).push_back(ev);
        self.events_pending.store(true, Ordering::Release);
    }

    pub(crate) fn events_pending(&self) -> bool {
        self.events_pending.load(Ordering::Acquire)
    }

    pub(crate) fn pop_event(&self) -> Option<AsyncEvent> {
        let mut q = lock(&self.events);
        let ev = q.pop_front();
        self.events_pending.store(!q.is_empty(), Ordering::Release);
        ev
    }

    pub(crate) fn take_cfs_request(&self) -> bool {
        self.cfs_request.load(Ordering::Relaxed) && {
            let t = self.cfs_request.swap(false, Ordering::AcqRel);
            if t {
                self.cfs_raised.fetch_add(1, Ordering::Relaxed);
            }
            t
        }
    }

    pub(crate) fn never_ready(&self) -> bool {
        self.never_ready.load(Ordering::Acquire)
    }

    pub(crate) fn note_delayed_executed(&self) {
        self.delayed_executed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn note_abort(&self, seen: AbortSeen) {
        self.aborts_received.fetch_add(1, Ordering::Relaxed);
        if seen.aborted {
            self.aborts_done.fetch_add(1, Ordering::Relaxed);
        }
        let mut a = lock(&self.aborts);
        if a.len() == ABORTS_KEPT {
            a.pop_front();
        }
        a.push_back(seen);
    }

    pub(crate) fn note_ready_withheld(&self) {
        self.ready_withheld.fetch_add(1, Ordering::Relaxed);
    }

    /// The rules' decision for one command; `None` (the fast path) when no rule applies.
    #[inline]
    pub(crate) fn check(&self, qid: u16, cid: u16, opcode: u8, nsid: u32) -> Option<Decision> {
        if !self.any_rules.load(Ordering::Relaxed) {
            return None;
        }
        self.check_slow(qid, cid, opcode, nsid)
    }

    #[cold]
    fn check_slow(&self, qid: u16, cid: u16, opcode: u8, nsid: u32) -> Option<Decision> {
        let mut rules = lock(&self.rules);
        let mut d = Decision::default();
        let mut any = false;
        let mut spent_any = false;
        for s in rules.iter_mut() {
            if !s.rule.matcher.matches(qid, opcode, nsid) {
                continue;
            }
            s.matched += 1;
            let fire = match s.rule.repeat {
                Repeat::Once => s.matched == s.rule.nth.max(1),
                Repeat::Always => s.matched >= s.rule.nth.max(1),
            };
            if !fire {
                continue;
            }
            s.fired += 1;
            if s.fired_on.len() == FIRED_ON_KEPT {
                s.fired_on.pop_front();
            }
            s.fired_on.push_back((qid, cid));
            any = true;
            if s.rule.repeat == Repeat::Once {
                spent_any = true;
            }
            match s.rule.action {
                FaultAction::Fail(st) => {
                    if d.fail.is_none() {
                        d.fail = Some(st);
                        self.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                FaultAction::Delay(t) => {
                    d.delay = Some(d.delay.map_or(t, |o| o.max(t)));
                    self.delayed.fetch_add(1, Ordering::Relaxed);
                }
                FaultAction::DelayExecution(t) => {
                    d.delay_execution = Some(d.delay_execution.map_or(t, |o| o.max(t)));
                    self.executions_delayed.fetch_add(1, Ordering::Relaxed);
                }
                FaultAction::Drop => {
                    d.drop = true;
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if spent_any {
            let mut spent = lock(&self.spent);
            rules.retain_mut(|s| {
                let done = s.rule.repeat == Repeat::Once && s.matched >= s.rule.nth.max(1);
                if done {
                    spent.push((s.id, s.fired, std::mem::take(&mut s.fired_on)));
                }
                !done
            });
            self.any_rules.store(!rules.is_empty(), Ordering::Release);
        }
        any.then_some(d)
    }
}
