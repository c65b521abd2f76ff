//! Interrupt-driven completions ([`QueueOptions::interrupts`](crate::QueueOptions)): the
//! queue's completion queue is created with interrupts enabled on the MSI-X vector whose
//! number is the queue's id, and that vector signals an eventfd this process owns.
//!
//! Vector numbers come from the group's pool through the queue ids: a qid belongs to one
//! live queue of one process at a time, so its vector does too, and no process can take
//! another's. The first queue with interrupts enables MSI-X on the function (every vector
//! the driver uses, only its own signalling); later ones, in any process, change only
//! their own vector. A process that dies leaves its eventfd on its vector until the next
//! owner of the qid replaces it: signalling a dead process's eventfd harms nobody.
//!
//! [`IoQueuePair::wait`] processes completions and sleeps on the eventfd (`poll(2)`) only
//! when none came: it first clears the eventfd and reports the completion queue's head,
//! then looks at the ring once more, so an entry posted before the sleep is never missed
//! and one posted after it wakes the sleeper.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::IoQueuePair;
use crate::controller::Controller;
use crate::error::{Error, Result};

/// A queue pair's interrupt: its vector and the eventfd the vector signals.
pub(crate) struct Interrupt {
    vector: u16,
    efd: EventFd,
    /// Signals consumed so far.
    seen: u64,
}

/// What asking for an interrupt gave.
pub(crate) enum Outcome {
    /// The vector signals our eventfd; create the CQ with interrupts on it.
    On(Interrupt),
    /// No vector for this queue: it is polled, for this reason.
    Polled(String),
}

impl Interrupt {
    /// Gives vector `qid` an eventfd of this process, or says why the queue must be polled.
    pub(crate) fn enable(ctrl: &Controller, qid: u16) -> Result<Outcome> {
        let vectors = ctrl.transport().interrupt_vectors();
        if vectors == 0 {
            return Ok(Outcome::Polled(format!(
                "{} offers no interrupt vectors (no MSI-X, or a transport without interrupts); the queue is polled",
                ctrl.transport().name()
            )));
        }
        if qid >= vectors {
            return Ok(Outcome::Polled(format!(
                "{} has {vectors} MSI-X vectors (0..={}), and queue {qid} would need vector {qid}; the queue is polled",
                ctrl.transport().name(),
                vectors - 1
            )));
        }
        let efd = EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
            .map_err(|e| Error::os("eventfd for an interrupt", e.into()))?;
        ctrl.set_interrupt(qid, Some(efd.as_fd()))?;
        Ok(Outcome::On(Interrupt {
            vector: qid,
            efd,
            seen: 0,
        }))
    }

    /// The MSI-X vector.
    pub(crate) fn vector(&self) -> u16 {
        self.vector
    }

    /// Takes the vector back from the function (after the queue was deleted).
    pub(crate) fn disable(&self, ctrl: &Controller) {
        let _ = ctrl.set_interrupt(self.vector, None);
    }

    /// Consumes the signals so far.
    fn clear(&mut self) {
        // Non-blocking: EAGAIN when there were none.
        if let Ok(n) = self.efd.read() {
            self.seen += n;
        }
    }

    /// Sleeps until the vector signals or `timeout` passes.
    fn sleep(&self, timeout: Duration) -> Result<()> {
        // Rounded up so that a sub-millisecond remainder still sleeps.
        let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        let t = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(self.efd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, t) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
            Err(e) => Err(Error::os("poll on an interrupt eventfd", e.into())),
        }
    }
}

impl IoQueuePair {
    /// Waits for completions: processes up to `max` of them as
    /// [`process_completions`](Self::process_completions) does, and when none has come,
    /// sleeps until one does or `timeout` passes (`None`: no bound). Returns how many
    /// requests finished (0 after the timeout, or at once when nothing is outstanding).
    ///
    /// A queue created with [`QueueOptions::interrupts`](crate::QueueOptions) sleeps on its
    /// interrupt: the thread uses no CPU while it waits. A polled queue polls: it spins for
    /// 50 us, then sleeps 20 us between polls.
    pub fn wait<F: FnMut(u64, Result<()>)>(
        &mut self,
        timeout: Option<Duration>,
        max: usize,
        mut f: F,
    ) -> Result<usize> {
        let start = Instant::now();
        // The controller's status (a CSTS read) now and then while nothing completes.
        let mut next_check = Duration::from_millis(1);
        loop {
            let n = self.process_completions(max, &mut f);
            if n > 0 || self.outstanding() == 0 {
                return Ok(n);
            }
            let waited = start.elapsed();
            let left = match timeout {
                Some(t) if waited >= t => return Ok(0),
                Some(t) => Some(t - waited),
                None => None,
            };
            if waited >= next_check {
                self.ctrl.state().check_alive()?;
                next_check = waited + Duration::from_millis(100);
            }
            let Some(irq) = &mut self.irq else {
                // Polled: spin at first, then sleep briefly between polls, so as not to
                // starve what shares the CPU (as `drain` does).
                crate::admin::wait_a_little(start);
                continue;
            };
            // Clear, report the head, look again, then sleep: an entry posted after the last
            // look raises a signal the sleep sees.
            irq.clear();
            if let super::Engine::Pci(q) = &mut self.qp {
                q.report_cq_head();
            }
            let n = self.process_completions(max, &mut f);
            if n > 0 {
                return Ok(n);
            }
            // Short steps: a reset under way (the queue is created anew) signals nothing.
            let step = Duration::from_millis(100);
            if let Some(irq) = &mut self.irq {
                irq.sleep(left.map_or(step, |l| l.min(step)))?;
                irq.clear();
            }
        }
    }

    /// Is this queue pair's completion queue interrupt-driven (and on which MSI-X vector)?
    pub fn interrupt_vector(&self) -> Option<u16> {
        self.irq.as_ref().map(Interrupt::vector)
    }

    /// Interrupts this queue pair's [`wait`](Self::wait) has consumed (eventfd signals: the
    /// controller may coalesce several completions into one). 0 for a polled queue pair.
    pub fn interrupts_seen(&self) -> u64 {
        self.irq.as_ref().map_or(0, |i| i.seen)
    }

    /// Why a queue pair created with interrupts is polled (the controller had no vector for
    /// it); `None` when it has its interrupt or none was asked for.
    pub fn interrupt_fallback(&self) -> Option<&str> {
        self.irq_fallback.as_deref()
    }
}
