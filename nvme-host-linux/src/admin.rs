//! The admin queue: one path for every controller.
//!
//! A controller has one admin queue, and every process reaches it through nvme-core's shared
//! admin queue protocol ([`SharedAdminQueue`]): per-process mailboxes, owner tags, one
//! Asynchronous Event Request kept outstanding for everyone. A process that attached alone
//! is a group of one: its queue state lives in its own memory and the lock is the in-process
//! `spin::Mutex`. In a shared-memory group the state lives in the group's files and the lock
//! is the robust process-shared mutex. Bring-up, synchronous commands, events and the memory
//! of timed-out commands are handled the same way in both.

use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use nvme_core::hal::InProcessLock;
use nvme_core::init::AdminQueue;
use nvme_core::shared::{AdminSubmitError, OwnerId, SharedAdminQueue, SharedAdminState};
use nvme_core::{
    Command, Completion, ControllerInfo, ControllerInit, DmaRegion, QueueConfig, RobustLock,
    SharedRef, SubmitError,
};
use nvme_regs::opcode::DataDirection;
use nvme_regs::registers::{ShutdownNotification, ShutdownStatus};
use zerocopy::FromBytes;

use crate::attach::TimeoutAction;
use crate::dma::{DmaBuffer, DmaMapping, IoBuf};
use crate::error::{Error, Result};
use crate::group::Group;
use crate::mmio::Mmio;
use crate::transport::Transport;

/// Bytes of the admin queue's own data buffer (identify, log pages, features), and the
/// largest admin transfer.
pub(crate) const ADMIN_DATA: usize = 64 << 10;

/// Where the admin rings and PRP lists sit in their segment; in a group's admin segment,
/// the shadow doorbell and EventIdx pages (Doorbell Buffer Config) follow them.
pub(crate) struct AdminLayout {
    pub(crate) sq_len: usize,
    pub(crate) cq_len: usize,
    pub(crate) prp_len: usize,
    /// The controller's memory page size: the length of each shadow page.
    pub(crate) page_size: usize,
    pub(crate) len: usize,
}

impl AdminLayout {
    pub(crate) fn new(entries: u32, page_size: usize) -> AdminLayout {
        let sq_len = (entries as usize * 64).next_multiple_of(page_size);
        let cq_len = (entries as usize * 16).next_multiple_of(page_size);
        let prp_len = QueueConfig::prp_len(entries, page_size, ADMIN_DATA).max(page_size);
        AdminLayout {
            sq_len,
            cq_len,
            prp_len,
            page_size,
            len: sq_len + cq_len + prp_len,
        }
    }
    /// The same with the two shadow pages after the rest (a group's admin segment).
    pub(crate) fn with_shadow_pages(mut self) -> AdminLayout {
        self.len += 2 * self.page_size;
        self
    }
    /// The shadow doorbell page (see [`with_shadow_pages`](Self::with_shadow_pages)).
    pub(crate) fn shadow_db_off(&self) -> usize {
        self.prp_off() + self.prp_len
    }
    /// The EventIdx page.
    pub(crate) fn shadow_ei_off(&self) -> usize {
        self.shadow_db_off() + self.page_size
    }
    pub(crate) fn sq_off(&self) -> usize {
        0
    }
    pub(crate) fn cq_off(&self) -> usize {
        self.sq_len
    }
    pub(crate) fn prp_off(&self) -> usize {
        self.sq_len + self.cq_len
    }
}

/// What the driver does with a handle on the shared admin queue, whatever its lock.
pub(crate) trait AdminOps {
    fn submit(
        &self,
        cmd: Command,
        data: Option<DmaRegion>,
        tag: u64,
    ) -> std::result::Result<(), AdminSubmitError>;
    fn poll(&self, wait: bool, f: &mut dyn FnMut(u64, Completion)) -> usize;
    fn reap(&self);
    fn events_since(&self, cursor: &mut u64, f: &mut dyn FnMut(u32)) -> u64;
    fn enable_events(&self, count: u32) -> std::result::Result<(), AdminSubmitError>;
    fn begin_reset(&self, dead: Option<OwnerId>) -> std::result::Result<(), AdminSubmitError>;
    fn end_reset(&self, ok: bool) -> std::result::Result<(), AdminSubmitError>;
    fn reset_after_disable(&self) -> std::result::Result<(), AdminSubmitError>;
    fn cid_of(&self, tag: u64) -> std::result::Result<Option<u16>, AdminSubmitError>;
}

impl<L: RobustLock> AdminOps for SharedAdminQueue<'_, Mmio, L> {
    fn submit(
        &self,
        cmd: Command,
        data: Option<DmaRegion>,
        tag: u64,
    ) -> std::result::Result<(), AdminSubmitError> {
        SharedAdminQueue::submit(self, cmd, data, tag)
    }
    fn poll(&self, wait: bool, f: &mut dyn FnMut(u64, Completion)) -> usize {
        SharedAdminQueue::poll(self, wait, f)
    }
    fn reap(&self) {
        SharedAdminQueue::reap(self)
    }
    fn events_since(&self, cursor: &mut u64, f: &mut dyn FnMut(u32)) -> u64 {
        SharedAdminQueue::events_since(self, cursor, f)
    }
    fn enable_events(&self, count: u32) -> std::result::Result<(), AdminSubmitError> {
        SharedAdminQueue::enable_events(self, count)
    }
    fn begin_reset(&self, dead: Option<OwnerId>) -> std::result::Result<(), AdminSubmitError> {
        SharedAdminQueue::begin_reset(self, dead)
    }
    fn end_reset(&self, ok: bool) -> std::result::Result<(), AdminSubmitError> {
        SharedAdminQueue::end_reset(self, ok)
    }
    fn reset_after_disable(&self) -> std::result::Result<(), AdminSubmitError> {
        SharedAdminQueue::reset_after_disable(self)
    }
    fn cid_of(&self, tag: u64) -> std::result::Result<Option<u16>, AdminSubmitError> {
        SharedAdminQueue::cid_of(self, tag)
    }
}

/// The admin queue of a process that attached alone: rings, PRP lists and the queue state
/// in one DMA segment of its own, guarded by the in-process lock.
pub(crate) struct LocalAdmin {
    /// Keeps the segment mapped for the CPU and the device.
    mem: Arc<DmaMapping>,
    rings: DmaRegion,
    state: DmaRegion,
    layout: AdminLayout,
    lock: InProcessLock,
}

impl LocalAdmin {
    /// Allocates and configures the queue (entries clamped to what the shared protocol
    /// supports).
    pub(crate) fn new(
        transport: &Arc<dyn Transport>,
        entries: u32,
        page_size: usize,
        dstrd: u8,
    ) -> Result<LocalAdmin> {
        let entries = entries.min(nvme_core::shared::MAX_ADMIN_ENTRIES);
        let layout = AdminLayout::new(entries, page_size);
        let state_len = std::mem::size_of::<SharedAdminState>().next_multiple_of(page_size);
        let mem = Arc::new(DmaMapping::new(
            transport,
            "nvme-admin",
            layout.len + state_len,
        )?);
        let region = mem.region();
        let rings = region.sub(0, layout.len).expect("rings inside the segment");
        let state = region
            .sub(layout.len, state_len)
            .expect("state inside the segment");
        let local = LocalAdmin {
            mem,
            rings,
            state,
            layout,
            lock: InProcessLock::new(()),
        };
        local
            .state()
            .configure(entries, page_size, ADMIN_DATA, dstrd)
            .map_err(|e| Error::Invalid(format!("admin queue: {e}")))?;
        Ok(local)
    }

    fn state(&self) -> &SharedAdminState {
        self.state
            .shared()
            .expect("page-aligned state area sized for it")
    }

    /// This process's handle (it is member 0 of its group of one).
    pub(crate) fn queue(&self, regs: Mmio) -> SharedAdminQueue<'_, Mmio, InProcessLock> {
        let part = |off: usize, len: usize| self.rings.sub(off, len).expect("admin layout");
        let l = &self.layout;
        SharedAdminQueue::new(
            self.state(),
            &self.lock,
            regs,
            part(l.sq_off(), l.sq_len),
            part(l.cq_off(), l.cq_len),
            part(l.prp_off(), l.prp_len),
            OwnerId::new(0, 1),
        )
        .expect("configured in LocalAdmin::new")
    }

    /// Where liveness and the reset generation are read from.
    pub(crate) fn state_ref(&self) -> StateRef {
        StateRef::Local {
            _keep: self.mem.clone(),
            state: self.state,
        }
    }

    /// Lowers the largest admin transfer once MDTS is known.
    pub(crate) fn lower_max_transfer(&self, max_transfer: usize) {
        self.state().lower_max_transfer(max_transfer);
    }
}

/// The admin queue state a controller's liveness and reset generation are read from: this
/// process's own (a group of one) or its group's.
pub(crate) enum StateRef {
    /// A process alone: the state in its admin segment.
    Local {
        /// Keeps the segment mapped.
        _keep: Arc<DmaMapping>,
        /// Where the state is.
        state: DmaRegion,
    },
    /// A shared-memory group: the state in the group's control file.
    Group(Arc<Group>),
}

impl StateRef {
    /// The state, checked once. Valid while this `StateRef` (which keeps its memory
    /// mapped) lives.
    fn shared_ref(&self) -> SharedRef<SharedAdminState> {
        let region = match self {
            StateRef::Local { state, .. } => *state,
            StateRef::Group(g) => g.admin_state_region(),
        };
        region
            .shared_ref()
            .expect("page-aligned state area sized for it")
    }
}

/// Whether the controller is still there, and its reset generation. Once it is found gone
/// it stays gone: later commands fail at once instead of each waiting out its timeout.
pub(crate) struct Liveness {
    transport: Arc<dyn Transport>,
    /// The registers (`None` over NVMe/TCP: the transport tells whether it is gone).
    regs: Option<Mmio>,
    gone: std::sync::atomic::AtomicBool,
    /// Keeps the memory of `shared` mapped.
    _state: StateRef,
    /// The admin queue state (reset generation and owner), checked once.
    shared: SharedRef<SharedAdminState>,
    me: OwnerId,
}

impl Liveness {
    pub(crate) fn new(
        transport: &Arc<dyn Transport>,
        state: StateRef,
        me: OwnerId,
    ) -> Arc<Liveness> {
        Arc::new(Liveness {
            transport: transport.clone(),
            regs: transport.regs(),
            gone: std::sync::atomic::AtomicBool::new(false),
            shared: state.shared_ref(),
            _state: state,
            me,
        })
    }
    /// The register handle (`None` over NVMe/TCP).
    pub(crate) fn regs(&self) -> Option<&Mmio> {
        self.regs.as_ref()
    }
    /// The reset generation (odd: a reset is under way, or the last one failed). I/O queue
    /// pairs compare it with the one their queues were created in.
    #[inline]
    pub(crate) fn generation(&self) -> u64 {
        self.shared.get().reset_generation()
    }
    /// The admin queue state the generation is read from, for a queue pair to read it
    /// without going through this `Liveness` (valid while this `Liveness` lives).
    pub(crate) fn shared_state(&self) -> SharedRef<SharedAdminState> {
        self.shared
    }
    /// The transport.
    pub(crate) fn transport(&self) -> &Arc<dyn Transport> {
        &self.transport
    }
    /// What is already known, without touching the controller: gone, being reset by
    /// another process ([`Error::AbortedByReset`]: retry), or waiting for a reset after a
    /// failed one.
    #[inline]
    pub(crate) fn precheck(&self) -> Result<()> {
        if self.is_gone() {
            return Err(Error::ControllerGone);
        }
        let state = self.shared.get();
        if state.reset_generation() & 1 == 1 {
            return match state.reset_owner() {
                None => Err(Error::NeedsReset),
                Some(o) if o == self.me => Ok(()),
                Some(_) => Err(Error::AbortedByReset),
            };
        }
        Ok(())
    }
    /// Was the controller already found gone?
    pub(crate) fn is_gone(&self) -> bool {
        self.gone.load(std::sync::atomic::Ordering::Relaxed)
    }
    /// Checks now: `ControllerGone` (and remembered) when the registers read as all ones or
    /// the transport says so, `ControllerFatal` on CSTS.CFS, and what
    /// [`precheck`](Self::precheck) knows.
    pub(crate) fn check(&self) -> Result<()> {
        self.precheck()?;
        let csts = self.regs.as_ref().map(|r| r.csts());
        if csts.is_some_and(|c| c.is_all_ones()) || self.transport.gone() {
            self.gone.store(true, std::sync::atomic::Ordering::Relaxed);
            return Err(Error::ControllerGone);
        }
        if csts.is_some_and(|c| c.cfs()) {
            return Err(Error::ControllerFatal);
        }
        Ok(())
    }
}

/// Runs `f` with this process's handle on the admin queue: its own, or its group's (an
/// error when another process damaged the group's queue state).
fn with_queue<T>(
    local: &Option<LocalAdmin>,
    regs: &Option<Mmio>,
    group: Option<&Group>,
    f: impl FnOnce(&dyn AdminOps) -> T,
) -> Result<T> {
    let Some(regs) = regs else {
        return Err(no_admin_queue());
    };
    match (local, group) {
        (Some(l), _) => Ok(f(&l.queue(regs.clone()))),
        (None, Some(g)) => Ok(f(&g.admin(regs.clone())?)),
        (None, None) => unreachable!("the admin queue is this process's or its group's"),
    }
}

/// What an operation on the shared admin queue protocol gives over NVMe/TCP, whose admin
/// queue is a connection (and whose registers are properties) instead.
fn no_admin_queue() -> Error {
    Error::Transport(
        "NVMe/TCP: this needs a controller's registers and admin queue in memory, which a controller over TCP does not have".into(),
    )
}

/// The bring-up's options from the attach options.
pub(crate) fn init_options(opts: &crate::attach::AttachOptions) -> nvme_core::InitOptions {
    nvme_core::InitOptions {
        admin_entries: opts.admin_entries,
        io_queues: opts.io_queues,
        page_size: None,
        admin_timeout_ms: opts.admin_timeout.as_millis().min(u32::MAX as u128) as u32,
    }
}

/// Brings the controller up over `queue` (this process's own or its new group's). Returns
/// what it learned and the admin data buffer.
pub(crate) fn bring_up(
    transport: &Arc<dyn Transport>,
    init: &mut ControllerInit,
    queue: &mut impl AdminQueue,
) -> Result<(ControllerInfo, DmaBuffer)> {
    let regs = crate::transport::registers(transport.as_ref())?;
    let mut data = DmaBuffer::new(transport, ADMIN_DATA)?;
    let data_region = IoBuf::from(&mut data).region();
    let start = Instant::now();
    let info = loop {
        let now = start.elapsed().as_nanos() as u64;
        match init.poll(&regs, queue, &data_region, now) {
            Poll::Ready(r) => break r?,
            Poll::Pending => std::thread::sleep(Duration::from_micros(20)),
        }
    };
    Ok((info, data))
}

/// A process's admin path: synchronous commands, asynchronous events, and the memory of
/// commands that timed out.
pub(crate) struct Admin {
    /// The queue of a process that attached alone; `None` in a group.
    local: Option<LocalAdmin>,
    /// The registers (`None` over NVMe/TCP).
    regs: Option<Mmio>,
    /// A controller over NVMe/TCP: commands go through its transport's association
    /// (neither `local` nor a group's queue).
    tcp: bool,
    live: Arc<Liveness>,
    next_tag: u64,
    data: DmaBuffer,
    /// Data memory of commands that timed out (or met a fatal controller) while the
    /// controller still owned it: (tag, the mapping). An entry goes when the command's late
    /// completion is reaped, or after the controller was disabled (see `Inner`'s drop).
    /// The admin data buffer is among them when such a command used it; the next command
    /// gets a fresh one.
    parked: Vec<(u64, Arc<DmaMapping>)>,
    /// What a command that times out gets (see [`TimeoutAction`]); `None` until the
    /// controller is attached (the attach's own commands time out as before).
    action: TimeoutAction,
    /// Bound on an Abort command's answer (and on the aborted command's completion after it).
    abort_timeout: Duration,
    /// A command timed out and its Abort failed (or the action is `Reset`): the caller,
    /// which can take the controller's reset path without holding this admin path, resets
    /// the controller (see `Inner::recovering`).
    reset_wanted: bool,
}

/// What an Abort command achieved (see [`Admin::abort`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AbortOutcome {
    /// The controller aborted the command (completion dword 0 bit 0 cleared): the command
    /// completes with Command Abort Requested.
    Aborted,
    /// The controller did not abort it (dword 0 bit 0 set, or the Abort failed with an error
    /// status such as Abort Command Limit Exceeded), or the Abort itself did not complete
    /// within its bound: only a reset gets the command back.
    NotAborted,
    /// No Abort was sent (the admin queue refused it: full, its lock held, a reset under
    /// way) or the controller is gone: nothing is known.
    NotSent,
}

impl Admin {
    /// The admin path of a process that attached alone, over its brought-up queue.
    pub(crate) fn local(local: LocalAdmin, live: Arc<Liveness>, data: DmaBuffer) -> Admin {
        Admin::with(Some(local), false, live, data)
    }

    /// The admin path through the group's shared admin queue (the process already joined).
    pub(crate) fn shared(live: Arc<Liveness>, data: DmaBuffer) -> Admin {
        Admin::with(None, false, live, data)
    }

    fn with(local: Option<LocalAdmin>, tcp: bool, live: Arc<Liveness>, data: DmaBuffer) -> Admin {
        Admin {
            local,
            regs: live.regs().cloned(),
            tcp,
            live,
            next_tag: 1,
            data,
            parked: Vec::new(),
            action: TimeoutAction::None,
            abort_timeout: Duration::from_secs(1),
            reset_wanted: false,
        }
    }

    /// The admin path of a controller over NVMe/TCP: commands go through its admin queue's
    /// connection (`data`, the admin data buffer, is in memory the transport resolves).
    pub(crate) fn tcp(live: Arc<Liveness>, data: DmaBuffer) -> Admin {
        Admin::with(None, true, live, data)
    }

    /// Sets what a command that times out gets from now on (once the controller is
    /// attached: only then is there a reset path to escalate to).
    pub(crate) fn set_timeout_action(&mut self, action: TimeoutAction, abort_timeout: Duration) {
        self.action = action;
        self.abort_timeout = abort_timeout;
    }

    /// Did a timed-out command ask for a controller reset since the last call? (The caller
    /// resets once it has let go of this admin path.)
    pub(crate) fn take_reset_request(&mut self) -> bool {
        std::mem::take(&mut self.reset_wanted)
    }

    /// Whether the controller is still there.
    pub(crate) fn liveness(&self) -> &Arc<Liveness> {
        &self.live
    }

    /// Keeps `count` Asynchronous Event Requests outstanding (a group's creator does it
    /// for the whole group).
    pub(crate) fn enable_events(&self, group: Option<&Group>, count: u32) -> Result<()> {
        if self.tcp {
            // Over NVMe/TCP the admin queue runs one command at a time: no Asynchronous
            // Event Request is kept outstanding (events are not reported there yet).
            return Ok(());
        }
        with_queue(&self.local, &self.regs, group, |q| q.enable_events(count))??;
        Ok(())
    }

    /// Moves new completions to their owners and calls `f` with every asynchronous event
    /// since `cursor`; returns how many were lost to overflow.
    pub(crate) fn events_since(
        &mut self,
        group: Option<&Group>,
        cursor: &mut u64,
        f: &mut dyn FnMut(u32),
    ) -> u64 {
        self.reap_parked(group);
        with_queue(&self.local, &self.regs, group, |q| {
            q.reap();
            q.events_since(cursor, f)
        })
        .unwrap_or(0)
    }

    /// Reaps late completions of this process's timed-out commands (letting their memory
    /// go) without waiting for anything.
    pub(crate) fn reap_parked(&mut self, group: Option<&Group>) {
        if self.parked.is_empty() {
            return;
        }
        let parked = &mut self.parked;
        let _ = with_queue(&self.local, &self.regs, group, |q| {
            q.poll(false, &mut |t, _| unpark(parked, t))
        });
    }

    /// Is memory of timed-out commands still waiting for the controller?
    pub(crate) fn has_parked(&self) -> bool {
        !self.parked.is_empty()
    }

    /// Lets go of the memory of timed-out commands: only once the controller can no longer
    /// use it (disabled), or leaked (`forget`) when that cannot be known.
    pub(crate) fn release_parked(&mut self, forget: bool) {
        for (_, m) in self.parked.drain(..) {
            if forget {
                std::mem::forget(m);
            }
        }
    }

    /// Resets the controller, alone or for the whole group: takes the reset on (the other
    /// processes' admin commands wait and their I/O queue pairs stop; `dead_owner` is a
    /// member that died resetting, whose reset this one finishes), disables the controller
    /// (from then on it touches no host memory), completes every admin command it held as
    /// aborted, lets go of this process's memory of timed-out commands, brings it up again
    /// over the same admin queue and re-arms the asynchronous event request. On success the
    /// generation moves on and every process's I/O queue pairs reconnect themselves; on
    /// failure commands fail with [`Error::NeedsReset`] until a reset works. `disabled`
    /// runs once the controller is disabled, before it is brought up again (a function
    /// reset); `extra` runs last, while the reset is still under way (shadow doorbells).
    pub(crate) fn reset(
        &mut self,
        group: Option<&Group>,
        opts: &crate::attach::AttachOptions,
        cap_timeout: Duration,
        dead_owner: Option<OwnerId>,
        disabled: impl FnOnce() -> Result<()>,
        extra: impl FnOnce(&mut Admin) -> Result<()>,
    ) -> Result<ControllerInfo> {
        if self.live.is_gone() {
            return Err(Error::ControllerGone);
        }
        if self.tcp {
            // Over NVMe/TCP a reset is a new association (`Inner::reset_with`).
            return Err(no_admin_queue());
        }
        with_queue(&self.local, &self.regs, group, |q| {
            q.begin_reset(dead_owner)
        })??;
        let r = self
            .reset_steps(group, opts, cap_timeout, disabled)
            .and_then(|info| extra(self).map(|_| info));
        let ended = with_queue(&self.local, &self.regs, group, |q| q.end_reset(r.is_ok()));
        // A command that timed out during the reset asked for one: this is it.
        self.reset_wanted = false;
        let info = r?;
        ended??;
        Ok(info)
    }

    /// Test hook: takes a reset on and disables the controller, and goes no further (the
    /// caller is then killed, to test that the survivors finish the reset).
    #[cfg(feature = "test-hooks")]
    pub(crate) fn begin_reset_only(&mut self, group: Option<&Group>) -> Result<()> {
        with_queue(&self.local, &self.regs, group, |q| q.begin_reset(None))??;
        if let Some(regs) = &self.regs {
            disable(regs, Duration::from_secs(10));
        }
        Ok(())
    }

    fn reset_steps(
        &mut self,
        group: Option<&Group>,
        opts: &crate::attach::AttachOptions,
        cap_timeout: Duration,
        disabled: impl FnOnce() -> Result<()>,
    ) -> Result<ControllerInfo> {
        let regs = self.regs.clone().ok_or_else(no_admin_queue)?;
        if !disable(&regs, cap_timeout) {
            return Err(Error::Init(nvme_core::InitError::ReadyTimeout {
                ready: false,
                timeout_ms: cap_timeout.as_millis() as u32,
            }));
        }
        with_queue(&self.local, &self.regs, group, |q| q.reset_after_disable())??;
        // The controller is disabled: nothing it was given can be touched any more.
        self.parked.clear();
        disabled()?;
        let mut init = ControllerInit::new(&regs, init_options(opts))?;
        let transport = self.live.transport().clone();
        let (info, data) = match (&self.local, group) {
            (Some(l), _) => {
                let mut queue = l.queue(regs.clone());
                let r = bring_up(&transport, &mut init, &mut queue)?;
                l.lower_max_transfer(r.0.max_transfer.min(ADMIN_DATA));
                r
            }
            (None, Some(g)) => {
                let mut queue = g.admin(regs.clone())?;
                let r = bring_up(&transport, &mut init, &mut queue)?;
                g.admin_state()
                    .lower_max_transfer(r.0.max_transfer.min(ADMIN_DATA));
                r
            }
            (None, None) => unreachable!("the admin queue is this process's or its group's"),
        };
        self.data = data;
        self.enable_events(group, 1)?;
        Ok(info)
    }

    /// Submits and waits. `region` is the data pointer's region; `keep` keeps the memory
    /// the command points to mapped: until the completion arrives, and past a timeout until
    /// the late completion is reaped (see `parked`).
    pub(crate) fn execute(
        &mut self,
        group: Option<&Group>,
        cmd: Command,
        region: Option<DmaRegion>,
        keep: Option<Arc<DmaMapping>>,
        timeout: Duration,
    ) -> Result<Completion> {
        if self.tcp {
            self.live.precheck()?;
            return crate::tcp::admin_command(self.live.transport().as_ref(), cmd, region, timeout);
        }
        let tag = self.next_tag;
        self.next_tag += 1;
        let generation = self.live.generation();
        let r = match self.execute_inner(group, cmd, region, tag, timeout) {
            Err(e @ Error::Timeout { .. }) => self.timed_out(group, cmd, tag, generation, e),
            r => r,
        };
        if let (Err(Error::Timeout { .. } | Error::ControllerFatal), Some(k)) = (&r, keep) {
            // Submitted and not completed: the controller may still transfer.
            self.parked.push((tag, k));
        }
        r
    }

    fn execute_inner(
        &mut self,
        group: Option<&Group>,
        cmd: Command,
        region: Option<DmaRegion>,
        tag: u64,
        timeout: Duration,
    ) -> Result<Completion> {
        self.live.precheck()?;
        let generation = self.live.generation();
        let start = Instant::now();
        let mut result = None;
        let mut submitted = false;
        loop {
            let parked = &mut self.parked;
            with_queue(&self.local, &self.regs, group, |q| -> Result<()> {
                if !submitted {
                    match q.submit(cmd, region, tag) {
                        Ok(()) => submitted = true,
                        // Other processes fill the queue: poll and retry until the timeout.
                        Err(AdminSubmitError::Submit(SubmitError::QueueFull)) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                q.poll(false, &mut |t, c| {
                    if t == tag {
                        result = Some(c);
                    } else {
                        unpark(parked, t);
                    }
                });
                Ok(())
            })??;
            if let Some(c) = result {
                if c.status == ABORTED && self.live.generation() != generation {
                    return Err(Error::AbortedByReset);
                }
                if !c.status.is_success() {
                    return Err(Error::Nvme {
                        opcode: cmd.opcode(),
                        admin: true,
                        status: c.status,
                    });
                }
                return Ok(c);
            }
            if start.elapsed() > Duration::from_millis(1) {
                match self.live.check() {
                    // Another process resets the controller: the command stays ours until
                    // the reset completes it as aborted (after the controller was disabled,
                    // so that its memory is safe to let go then).
                    Err(Error::AbortedByReset) => {}
                    r => r?,
                }
            }
            if start.elapsed() > timeout {
                // The command stays outstanding; its slot (and PRP list) is reclaimed if it
                // ever completes, its data memory is parked by `execute` until then.
                return Err(Error::Timeout {
                    opcode: cmd.opcode(),
                    admin: true,
                    waited_ms: timeout.as_millis() as u64,
                });
            }
            wait_a_little(start);
        }
    }

    /// After command `tag` timed out (`timeout`), what [`TimeoutAction`] says: nothing; or
    /// ask for a reset; or abort it and ask for a reset when the Abort did not get it back.
    /// Returns the command's result: its late completion, [`Error::TimeoutAborted`] when
    /// the Abort got it back, or `timeout` (it is still outstanding; with a reset asked for,
    /// the reset completes it).
    fn timed_out(
        &mut self,
        group: Option<&Group>,
        cmd: Command,
        tag: u64,
        generation: u64,
        timeout: Error,
    ) -> Result<Completion> {
        match self.action {
            TimeoutAction::None => return Err(timeout),
            TimeoutAction::Reset => {
                self.reset_wanted = true;
                return Err(timeout);
            }
            TimeoutAction::Abort => {}
        }
        // Still outstanding? (Not when it was never submitted, or completed just now: its
        // completion then waits in this process's mailbox and is reaped later.)
        let Ok(Ok(Some(cid))) = with_queue(&self.local, &self.regs, group, |q| q.cid_of(tag))
        else {
            return Err(timeout);
        };
        let (outcome, late) = self.abort(group, 0, cid, Some(tag));
        match late {
            Some(c) if c.status == ABORT_REQUESTED => {
                let Error::Timeout { waited_ms, .. } = timeout else {
                    unreachable!("called with a timeout")
                };
                Err(Error::TimeoutAborted {
                    opcode: cmd.opcode(),
                    admin: true,
                    waited_ms,
                })
            }
            Some(c) if c.status == ABORTED && self.live.generation() != generation => {
                Err(Error::AbortedByReset)
            }
            Some(c) if !c.status.is_success() => Err(Error::Nvme {
                opcode: cmd.opcode(),
                admin: true,
                status: c.status,
            }),
            // It completed after all, before or despite the Abort.
            Some(c) => Ok(c),
            None => {
                // Aborted but its completion did not come, or not aborted, or the Abort got
                // no answer: only a reset gets the command (and its memory) back.
                if outcome != AbortOutcome::NotSent {
                    self.reset_wanted = true;
                }
                Err(timeout)
            }
        }
    }

    /// Sends an Abort for command `cid` of submission queue `sqid` and waits for its answer,
    /// bounded by the abort timeout. With `watch` (the tag of this process's admin command
    /// being aborted) it also waits for that command's completion when the Abort reports it
    /// aborted, and returns it (as soon as it arrives, whatever the Abort says).
    pub(crate) fn abort(
        &mut self,
        group: Option<&Group>,
        sqid: u16,
        cid: u16,
        watch: Option<u64>,
    ) -> (AbortOutcome, Option<Completion>) {
        if self.tcp {
            // Over NVMe/TCP admin commands are synchronous: only I/O commands are aborted.
            let abort = Command::abort(sqid, cid);
            let t = self.live.transport().as_ref();
            let outcome = match crate::tcp::admin_command(t, abort, None, self.abort_timeout) {
                Ok(c) if c.dw0 & 1 == 0 => AbortOutcome::Aborted,
                Ok(_) | Err(Error::Nvme { .. }) => AbortOutcome::NotAborted,
                Err(_) => AbortOutcome::NotSent,
            };
            return (outcome, None);
        }
        let tag = self.next_tag;
        self.next_tag += 1;
        let submitted = with_queue(&self.local, &self.regs, group, |q| {
            q.submit(Command::abort(sqid, cid), None, tag)
        });
        if !matches!(submitted, Ok(Ok(()))) {
            return (AbortOutcome::NotSent, None);
        }
        let start = Instant::now();
        let (mut answer, mut watched) = (None::<Completion>, None);
        loop {
            let parked = &mut self.parked;
            let _ = with_queue(&self.local, &self.regs, group, |q| {
                q.poll(false, &mut |t, c| {
                    if t == tag {
                        answer = Some(c);
                    } else if Some(t) == watch {
                        watched = Some(c);
                    } else {
                        unpark(parked, t);
                    }
                })
            });
            let outcome = answer.map(|c| {
                if c.status.is_success() && c.dw0 & 1 == 0 {
                    AbortOutcome::Aborted
                } else {
                    AbortOutcome::NotAborted
                }
            });
            match (outcome, watched) {
                (Some(o), w @ Some(_)) => return (o, w),
                (Some(AbortOutcome::Aborted), None) if watch.is_some() => {}
                (Some(o), None) => return (o, None),
                (None, Some(w)) => return (AbortOutcome::NotSent, Some(w)),
                (None, None) => {}
            }
            if start.elapsed() > Duration::from_millis(1) {
                match self.live.check() {
                    Ok(()) | Err(Error::AbortedByReset) => {}
                    Err(_) => return (AbortOutcome::NotSent, None),
                }
            }
            if start.elapsed() > self.abort_timeout {
                // The Abort (if unanswered) stays outstanding like any timed-out command:
                // it has no memory to park, and a reset completes it.
                return (outcome.unwrap_or(AbortOutcome::NotAborted), None);
            }
            wait_a_little(start);
        }
    }

    /// Runs a command that reads `len` bytes into the admin data buffer; returns a copy.
    pub(crate) fn read_bytes(
        &mut self,
        group: Option<&Group>,
        cmd: Command,
        len: usize,
        timeout: Duration,
    ) -> Result<Vec<u8>> {
        debug_assert_eq!(cmd.direction(), DataDirection::ControllerToHost);
        if self.data.in_flight() {
            // A command that timed out still owns the buffer (it is parked): use a new one.
            self.data = self.data.new_like()?;
        }
        self.data.as_mut_slice()[..len].fill(0);
        let io = self.data.slice(0..len)?;
        let region = io.region();
        let keep = io.map.clone();
        self.execute(group, cmd, Some(region), Some(keep), timeout)?;
        Ok(self.data.as_slice()[..len].to_vec())
    }

    /// Runs a command that reads one structure.
    pub(crate) fn read_struct<T: FromBytes>(
        &mut self,
        group: Option<&Group>,
        cmd: Command,
        timeout: Duration,
    ) -> Result<T> {
        let b = self.read_bytes(group, cmd, std::mem::size_of::<T>(), timeout)?;
        Ok(T::read_from_bytes(&b).expect("exact size"))
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        // Reached with parked memory only when attaching failed after a timeout (a running
        // controller's `Inner` releases it after shutdown first). A process-local controller
        // is ours: disable it, then let go; a shared one may still run: keep the memory.
        // (The local queue's own segment drops after this, so the controller is disabled
        // before its rings are unmapped too.)
        if self.has_parked() || self.local.is_some() {
            let disabled = self.local.is_some()
                && !self.live.is_gone()
                && self
                    .regs
                    .as_ref()
                    .is_some_and(|r| disable(r, Duration::from_secs(10)));
            self.release_parked(!disabled);
        }
    }
}

/// One pause of a blocking wait that began at `start` (an admin command's, and on the I/O
/// side `drain`, a polled queue's `wait` and a synchronous I/O command's): a spin for the
/// first 50 us (a quick command is answered within them), then a short sleep. Not `yield_now`: beside busy
/// pollers (an application's I/O threads, the software controller) a yielding waiter gets
/// the CPU back only when their time slice ends, milliseconds later, while a sleeper is
/// woken ahead of them as soon as its sleep is over.
pub(crate) fn wait_a_little(start: Instant) {
    if start.elapsed() < Duration::from_micros(50) {
        std::hint::spin_loop();
    } else {
        std::thread::sleep(Duration::from_micros(20));
    }
}

/// How the controller's reset completes the commands it held.
const ABORTED: nvme_regs::Status =
    nvme_regs::Status::generic(nvme_regs::status::GenericStatus::AbortedSqDeletion);

/// How a command aborted by an Abort command completes.
pub(crate) const ABORT_REQUESTED: nvme_regs::Status =
    nvme_regs::Status::generic(nvme_regs::status::GenericStatus::AbortRequested);

/// Lets go of the parked memory of the timed-out command `tag`, whose completion arrived.
fn unpark(parked: &mut Vec<(u64, Arc<DmaMapping>)>, tag: u64) {
    parked.retain(|(t, _)| *t != tag);
}

/// Disables the controller (CC.EN = 0) and waits for CSTS.RDY = 0, bounded by `timeout`:
/// after a reset the controller touches no host memory. Returns whether it got there.
pub(crate) fn disable(regs: &Mmio, timeout: Duration) -> bool {
    let start = Instant::now();
    let wait = |done: &dyn Fn(nvme_regs::registers::Csts) -> bool| loop {
        let csts = regs.csts();
        if csts.is_all_ones() {
            return false;
        }
        if done(csts) {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_micros(100));
    };
    if regs.csts().is_all_ones() {
        return false;
    }
    if regs.cc().en() && !regs.csts().rdy() {
        // Still enabling: let that finish before disabling (NVMe 1.4 3.5.1), within the
        // bound; a controller that never gets ready is disabled all the same.
        wait(&|c| c.rdy() || c.cfs());
    }
    let cc = regs.cc();
    if !cc.en() && !regs.csts().rdy() {
        return true;
    }
    regs.set_cc(cc.with_en(false));
    wait(&|c| !c.rdy())
}

/// Sends the normal shutdown notification and waits for it, bounded by RTD3E or 10 s (NVMe
/// 1.4 7.6.2).
pub(crate) fn shutdown(regs: &Mmio, rtd3e_us: u32) {
    let cc = regs.cc();
    if !cc.en() || regs.csts().is_all_ones() {
        return;
    }
    regs.set_cc(cc.with_shn(ShutdownNotification::Normal));
    let rtd3e = Duration::from_micros(rtd3e_us as u64);
    let bound = if rtd3e.is_zero() {
        Duration::from_secs(10)
    } else {
        rtd3e.min(Duration::from_secs(60))
    };
    let start = Instant::now();
    while start.elapsed() < bound {
        let csts = regs.csts();
        if csts.shst() == ShutdownStatus::Complete || csts.cfs() || csts.is_all_ones() {
            break;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}
