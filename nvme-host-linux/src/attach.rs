//! Attaching to a controller: alone (a group of one) or as a member of a shared-memory
//! group, bring-up, namespaces, shadow doorbells.

use std::sync::Arc;
use std::time::Duration;

use nvme_core::{Command, ControllerInfo, ControllerInit};
use nvme_regs::identify::{cns, IdentifyNamespace, IDENTIFY_DATA_SIZE};

use crate::admin::{bring_up, init_options, Admin, Liveness, LocalAdmin, ADMIN_DATA};
use crate::controller::Controller;
use crate::error::{Error, Result};
use crate::group::Group;
use crate::namespace::Namespace;
use crate::shadow::ShadowPages;
use crate::transport::Transport;
use crate::trid::{TransportId, TransportKind};
use nvme_core::shared::OwnerId;

/// Options for [`Controller::attach_with`].
#[derive(Clone, Debug)]
pub struct AttachOptions {
    /// Admin queue entries.
    pub admin_entries: u32,
    /// I/O queues to ask the controller for.
    pub io_queues: u16,
    /// Bound on every synchronous admin command, and in a shared-memory group on each wait
    /// for the group's locks: the admin queue's lock and the join lock (attaching and
    /// detaching). A wait that runs out is an error naming the process that holds the lock;
    /// a detach that cannot get the join lock leaves as if the process had died.
    pub admin_timeout: Duration,
    /// Shared-memory group id (`-i`): processes with the same id share the controller.
    /// Over NVMe/TCP each process of the group opens its own association with the target
    /// (admin queue, Keep Alive, I/O queues and their ids); the group gives roles, the
    /// member table and cleanup after dead members, LBA range leases, and refuses a
    /// process of another build or one naming another target or subsystem.
    pub group: Option<u32>,
    /// When an admin command finds the controller in fatal status (CSTS.CFS), reset it
    /// (for the whole group) and fail the command with [`Error::AbortedByReset`] so that
    /// the caller retries; without it the command fails with [`Error::ControllerFatal`]
    /// and resetting is left to the caller ([`Controller::reset`]).
    pub reset_on_fatal: bool,
    /// What happens to an admin command that does not complete within `admin_timeout`
    /// once the controller is attached, and to an I/O request that outlives its queue
    /// pair's timeout ([`IoQueuePair::set_timeout`](crate::IoQueuePair::set_timeout)):
    /// see [`TimeoutAction`]. Default: [`TimeoutAction::Abort`]. Why not `None` (SPDK's
    /// default, where timeouts are off unless asked for): here the admin timeout is always
    /// on, and a command the controller lost would otherwise stay outstanding for good,
    /// holding its memory and one of the process's 16 admin mailbox entries; why not
    /// `Reset`: a reset aborts every process's I/O, an Abort costs nothing when the
    /// controller can still give the command back.
    pub timeout_action: TimeoutAction,
    /// Bound on the answer to an Abort sent by [`TimeoutAction::Abort`] (and on the aborted
    /// command's completion after it); past it the driver resets the controller. Default 1 s.
    pub abort_timeout: Duration,
    /// How this process's I/O queue pairs point to their data: SGLs where the controller
    /// supports them (default [`DataPointer::Auto`](crate::DataPointer::Auto)), or PRPs or
    /// SGLs by force.
    pub data_pointer: crate::DataPointer,
    /// Give the controller shadow doorbell buffers (Doorbell Buffer Config) when it offers
    /// the command, as emulated controllers do; in a shared-memory group the creator
    /// decides for every member. Default off: the driver writes the completion queue's head
    /// doorbell only about once per ring's worth of completions and one submission doorbell
    /// per batch, and on QEMU's controller (TCG) the shadow buffers cost more than the MMIO
    /// writes they save at depth (docs/performance.md). The environment variable
    /// `NVME_SHADOW_DOORBELLS` (`1` or `0`) overrides it.
    pub shadow_doorbells: bool,
    /// In a shared-memory group, run this process's monitor thread: every 50 ms it records
    /// asynchronous events when nobody sends admin commands, cleans up after members that
    /// died and refreshes the group's namespace record. Default on. A short-lived tool
    /// (attach, a few admin commands, detach: `nvmectl`) may do without: the other
    /// members' monitors and every joiner do the same work, and starting the thread is a
    /// large part of such a process's time in a TCG guest (docs/performance.md).
    pub group_monitor: bool,
}

/// What the driver does with a command that did not complete in time (SPDK bdev_nvme's
/// `action_on_timeout`). The admin path's outcome, as the caller sees it:
///
/// | action | the controller ... | the caller gets | afterwards |
/// |---|---|---|---|
/// | `None` | - | [`Error::Timeout`] | the command stays outstanding (its memory stays mapped until its completion comes or the controller is reset or detached) |
/// | `Abort` | aborts it | [`Error::TimeoutAborted`] | nothing outstanding; retry |
/// | `Abort` | says "not aborted" (QEMU always does), or does not answer the Abort within [`AttachOptions::abort_timeout`] | [`Error::AbortedByReset`] | the controller was reset for the whole group; retry |
/// | `Reset` | - | [`Error::AbortedByReset`] | as above, without an Abort first |
///
/// A command that completes meanwhile (even while the Abort is under way) returns its own
/// result. When the reset itself fails, the caller gets the reset's error and commands
/// fail with [`Error::NeedsReset`] until a reset works. When the Abort cannot be sent (the
/// group's lock is held by a stopped process, the queue is full, another process is
/// resetting) the caller gets [`Error::Timeout`] and nothing is reset: the controller is
/// not known to have lost the command. For I/O, see
/// [`IoQueuePair::set_timeout`](crate::IoQueuePair::set_timeout).
///
/// The driver has at most one Abort outstanding per process (they go through the admin
/// path one at a time), within any controller's Abort Command Limit (Identify ACL, at least
/// 1); a controller that answers Abort Command Limit Exceeded (several processes aborting
/// at once) is treated as "not aborted".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TimeoutAction {
    /// Report the timeout, do nothing else (the behaviour before timeouts had actions).
    None,
    /// Send an Abort for the command; when the controller does not abort it, reset the
    /// controller (group-wide).
    #[default]
    Abort,
    /// Reset the controller (group-wide) at once.
    Reset,
}

impl Default for AttachOptions {
    fn default() -> Self {
        AttachOptions {
            admin_entries: 64,
            io_queues: 64,
            admin_timeout: Duration::from_secs(10),
            group: None,
            reset_on_fatal: true,
            timeout_action: TimeoutAction::default(),
            abort_timeout: Duration::from_secs(1),
            data_pointer: crate::DataPointer::Auto,
            shadow_doorbells: false,
            group_monitor: true,
        }
    }
}

impl Controller {
    /// Attaches to the controller named by a transport id string, e.g. `trtype:sim` or
    /// `trtype:PCIe traddr:0000:04:00.0`.
    pub fn attach(trid: &str) -> Result<Controller> {
        let trid = TransportId::parse(trid).map_err(Error::BadTransport)?;
        Controller::attach_with(&trid, &AttachOptions::default())
    }

    /// Attaches with explicit options.
    pub fn attach_with(trid: &TransportId, opts: &AttachOptions) -> Result<Controller> {
        if let Some(id) = opts.group {
            return crate::groupattach::attach(trid, opts, id);
        }
        let transport: Arc<dyn Transport> = match &trid.kind {
            TransportKind::Sim(o) => crate::open_sim(o)?,
            TransportKind::Pcie { traddr } => crate::open_pcie(traddr.as_ref())?,
            TransportKind::Tcp(o) => return crate::tcp::attach(o, trid.clone(), opts),
        };
        Controller::attach_transport(transport, trid.clone(), opts)
    }

    /// Attaches through a transport the caller opened (a software controller with a custom
    /// configuration, or a transport of the embedder's own).
    pub fn attach_transport(
        transport: Arc<dyn Transport>,
        trid: TransportId,
        opts: &AttachOptions,
    ) -> Result<Controller> {
        let regs = crate::transport::registers(transport.as_ref())?;
        let mut init = ControllerInit::new(&regs, init_options(opts))?;
        // A process alone is a group of one: the same admin queue protocol over its own
        // memory, with the in-process lock.
        let local = LocalAdmin::new(
            &transport,
            opts.admin_entries,
            init.page_size(),
            init.cap().dstrd(),
        )?;
        let (info, data) = {
            let mut queue = local.queue(regs.clone());
            queue.join()?;
            bring_up(&transport, &mut init, &mut queue)?
        };
        local.lower_max_transfer(info.max_transfer.min(ADMIN_DATA));
        let live = Liveness::new(&transport, local.state_ref(), OwnerId::new(0, 1));
        let admin = Admin::local(local, live, data);
        admin.enable_events(None, 1)?;
        Controller::finish(transport, trid, opts, info, admin, None)
    }

    /// Identifies the namespaces and builds the controller (every attach path ends here).
    /// `group`: the group, and its shadow doorbell pages when it uses them; a process alone
    /// sets up shadow doorbells of its own here.
    pub(crate) fn finish(
        transport: Arc<dyn Transport>,
        trid: TransportId,
        opts: &AttachOptions,
        info: ControllerInfo,
        mut admin: Admin,
        group: Option<(Arc<Group>, Option<ShadowPages>)>,
    ) -> Result<Controller> {
        let (group, group_shadow) = group.unzip();
        // Over NVMe/TCP a group has no namespace record: each member has an association
        // of its own to send Identify on.
        let namespaces = if let Some(g) = group.as_deref().filter(|g| !g.fabrics()) {
            // The group's record of the namespaces, kept current by its members; Identify
            // when it is unusable (`group::nsrecord`).
            let regs = crate::transport::registers(transport.as_ref())?;
            crate::namespace::for_member(g, &regs, |cmd| {
                admin.read_bytes(Some(g), cmd, IDENTIFY_DATA_SIZE, opts.admin_timeout)
            })?
        } else {
            let mut namespaces = Vec::new();
            for nsid in info.namespaces.iter() {
                let id: IdentifyNamespace = admin.read_struct(
                    group.as_deref(),
                    Command::identify(cns::NAMESPACE, nsid, 0),
                    opts.admin_timeout,
                )?;
                namespaces.extend(Namespace::from_identify(nsid, id));
            }
            namespaces
        };
        let shadow = match group_shadow {
            Some(shadow) => shadow,
            // Shadow doorbells are a PCIe controller's (NVMe/TCP has no doorbells).
            None if transport.regs().is_none() => None,
            None => crate::shadow::setup_own(&transport, &info, &mut admin, opts),
        };
        Ok(Controller::new(
            transport, trid, opts, info, namespaces, admin, group, shadow,
        ))
    }
}
