//! The I/O timeout of a queue pair ([`IoQueuePair::set_timeout`]): a watchdog that runs
//! only when a timeout is set, on the completion path, and costs a disabled queue pair one
//! branch in `process_completions` (nothing at submission).
//!
//! Instead of stamping every submission, the watchdog scans the request slots now and then
//! (every quarter of the timeout) and notes when it first saw each request (its command
//! identifier, which changes with every use of a slot). A request is therefore declared
//! late between 1x and 1.5x the timeout after its submission. Then, as the controller's
//! [`TimeoutAction`] says: nothing; or an Abort naming the request's command (through the
//! controller's admin path, as reconnecting does), escalated to a controller reset when
//! the controller does not abort it or the aborted command's completion does not follow
//! within another timeout; or a reset at once. An aborted request completes through the
//! completion queue with [`Error::TimeoutAborted`]; after a reset every outstanding
//! request completes once with [`Error::AbortedByReset`] (reconnecting, after the
//! controller was disabled: no memory is let go while it may still be used).

use std::time::{Duration, Instant};

use nvme_core::Completion;

use super::{with_qp, Engine, IoCtx, IoQueuePair, Slots};
use crate::admin::{AbortOutcome, ABORT_REQUESTED};
use crate::attach::TimeoutAction;
use crate::error::{Error, Result};

/// A request the watchdog saw outstanding.
#[derive(Clone, Copy)]
struct Seen {
    /// Its command identifier (this use of the slot).
    cid: u16,
    /// When the watchdog first saw it.
    since: Instant,
    /// When an Abort for it was answered "aborted" (or could not be sent).
    abort_sent: Option<Instant>,
    /// Late, and the action is `None`: not reported again.
    ignored: bool,
}

/// What a scan found.
#[derive(Clone, Copy)]
enum Late {
    /// The oldest request past the timeout, not yet handled: its head slot.
    Request(usize),
    /// A request whose Abort did not bring its completion within another timeout.
    AbortLost,
}

/// The watchdog's state (boxed: a queue pair without a timeout carries one pointer).
pub(super) struct IoTimeout {
    limit: Duration,
    every: Duration,
    next_scan: Instant,
    /// Per request slot.
    seen: Box<[Option<Seen>]>,
}

impl IoTimeout {
    pub(super) fn new(limit: Duration, slots: usize) -> IoTimeout {
        IoTimeout {
            limit,
            every: (limit / 4).max(Duration::from_micros(100)),
            next_scan: Instant::now(),
            seen: vec![None; slots].into_boxed_slice(),
        }
    }

    pub(super) fn limit(&self) -> Duration {
        self.limit
    }

    /// Notes new requests and forgets finished ones; returns a late one, if any.
    fn scan<Q: nvme_core::Rings>(
        &mut self,
        qp: &mut nvme_core::QueuePair<Q, IoCtx, Slots>,
        now: Instant,
    ) -> Option<Late> {
        self.next_scan = now + self.every;
        let mut oldest: Option<(usize, Instant)> = None;
        let mut lost = false;
        for (slot, seen) in self.seen.iter_mut().enumerate() {
            let Some(cid) = qp.request_cid(slot) else {
                *seen = None;
                continue;
            };
            match seen {
                Some(s) if s.cid == cid => {
                    if let Some(at) = s.abort_sent {
                        lost |= now.duration_since(at) > self.limit;
                    } else if !s.ignored
                        && now.duration_since(s.since) > self.limit
                        && oldest.is_none_or(|(_, t)| s.since < t)
                    {
                        oldest = Some((slot, s.since));
                    }
                }
                _ => {
                    *seen = Some(Seen {
                        cid,
                        since: now,
                        abort_sent: None,
                        ignored: false,
                    })
                }
            }
        }
        if lost {
            return Some(Late::AbortLost);
        }
        oldest.map(|(slot, _)| Late::Request(slot))
    }
}

impl IoQueuePair {
    /// Sets (or with `None` removes) a timeout for each I/O request of this queue pair:
    /// a request outstanding longer gets the controller's
    /// [`AttachOptions::timeout_action`](crate::AttachOptions::timeout_action):
    ///
    /// - `Abort` (the default): an Abort command names it; when the controller aborts it,
    ///   it completes (once) with [`Error::TimeoutAborted`]; when the controller does not
    ///   (QEMU never does), does not answer within the abort timeout, or the completion
    ///   does not follow within another timeout, the controller is reset (for the whole
    ///   group), and this queue pair's outstanding requests, the late one among them,
    ///   complete once each with [`Error::AbortedByReset`] (every other queue pair's
    ///   requests too, when their threads process completions);
    ///   (When the Abort cannot be sent at all, e.g. the group's admin lock is held by a
    ///   stopped process, the reset is tried once the request is another timeout late.)
    /// - `Reset`: the controller is reset at once, with the same outcome;
    /// - `None`: nothing happens (the request stays outstanding).
    ///
    /// A request is found late between 1x and 1.5x `timeout` after its submission (the
    /// watchdog looks every `timeout / 4`), and only while the thread calls
    /// [`process_completions`](Self::process_completions) (or [`drain`](Self::drain) and
    /// the synchronous calls, which call it). The Abort and the reset run on this thread,
    /// through the controller's admin path (bounded by the abort and admin timeouts).
    /// Off by default; when off, the only cost is one branch per `process_completions`.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        let capacity = self.capacity();
        self.timeout = timeout.map(|t| Box::new(IoTimeout::new(t, capacity)));
    }

    /// The I/O timeout set by [`set_timeout`](Self::set_timeout).
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout.as_ref().map(|t| t.limit())
    }

    /// `process_completions` with the watchdog: polls, then scans when it is time.
    #[inline(never)]
    pub(super) fn process_completions_watched<F: FnMut(u64, Result<()>)>(
        &mut self,
        max: usize,
        f: &mut F,
    ) -> usize {
        let Some(t) = self.timeout.as_mut() else {
            return 0;
        };
        let waited_ms = t.limit.as_millis() as u64;
        let g = &mut *f;
        let n = with_qp!(&mut self.qp, |q| q
            .poll(max, |ctx: IoCtx, c: Completion| {
                g(ctx.token, result(c, waited_ms))
            }));
        if let Engine::Tcp(q) = &mut self.qp {
            if q.rings().needs_reconnect() {
                return n + Self::recover_connection(q, &self.ctrl, self.qid, f);
            }
        }
        let now = Instant::now();
        if now < t.next_scan {
            return n;
        }
        match with_qp!(&mut self.qp, |q| t.scan(q, now)) {
            None => n,
            Some(late) => n + self.late(late, now, f),
        }
    }

    /// A request is late: abort it, or reset the controller, as the action says. Returns
    /// the requests finished (after a reset).
    #[cold]
    fn late<F: FnMut(u64, Result<()>)>(&mut self, late: Late, now: Instant, f: &mut F) -> usize {
        if self.live.generation() != self.generation {
            // A reset is under way or done: reconnecting completes everything.
            return 0;
        }
        let ctrl = self.ctrl.clone();
        let inner = ctrl.state();
        let reset = match (inner.timeout_action(), late) {
            (TimeoutAction::None, Late::Request(slot)) => {
                self.mark(slot, |s| s.ignored = true);
                false
            }
            (TimeoutAction::None, Late::AbortLost) => false,
            (TimeoutAction::Reset, _) | (TimeoutAction::Abort, Late::AbortLost) => true,
            (TimeoutAction::Abort, Late::Request(slot)) => {
                let Some(cid) = with_qp!(&mut self.qp, |q| q.abortable_cid(slot)) else {
                    return 0; // completed meanwhile
                };
                let outcome = inner.abort_io(self.qid, cid);
                // Aborted: its completion is on its way (a reset follows if it does not
                // come within another timeout). Not sent: nothing is known; a reset
                // follows on the same terms.
                self.mark(slot, |s| s.abort_sent = Some(now));
                outcome == AbortOutcome::NotAborted
            }
        };
        if !reset {
            return 0;
        }
        // Errors are the reset's own to report (a failed reset leaves commands failing
        // with NeedsReset, and this pair waiting for a reset that works).
        let _ = inner.reset(None);
        let now = self.live.generation();
        if now != self.generation && now & 1 == 0 {
            return self.reconnect(now, f);
        }
        0
    }

    fn mark(&mut self, slot: usize, f: impl FnOnce(&mut Seen)) {
        if let Some(Some(s)) = self.timeout.as_mut().and_then(|t| t.seen.get_mut(slot)) {
            f(s);
        }
    }
}

/// A completion's result, with a request aborted by the watchdog's Abort reported as such.
#[inline]
fn result(c: Completion, waited_ms: u64) -> Result<()> {
    if c.status.is_success() {
        Ok(())
    } else if c.status == ABORT_REQUESTED {
        Err(Error::TimeoutAborted {
            opcode: c.opcode,
            admin: false,
            waited_ms,
        })
    } else {
        Err(Error::Nvme {
            opcode: c.opcode,
            admin: false,
            status: c.status,
        })
    }
}
