//! Attaching as a member of a shared-memory group: create the group (primary) or join it
//! (secondary), clean up after dead members, and keep watching for more.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nvme_core::shared::{OwnerId, MAX_ADMIN_ENTRIES};
use nvme_core::{Command, ControllerInfo, ControllerInit};
use nvme_regs::features::NumberOfQueues;
use nvme_regs::identify::{IdentifyController, NamespaceList};
use nvme_regs::registers::{Cap, Vs};
use zerocopy::{FromBytes, IntoBytes};

use crate::admin::{bring_up, init_options, Admin, AdminLayout, Liveness, StateRef, ADMIN_DATA};
use crate::attach::AttachOptions;
use crate::controller::{Controller, Inner};
use crate::dma::DmaBuffer;
use crate::error::{Error, Result};
use crate::group::layout::GroupHeader;
use crate::group::nsrecord::Unusable;
use crate::group::{AdminAt, Creating, Group, Joined};
use crate::memory::SharedMemory;
#[cfg(feature = "sim")]
use crate::simtransport::SimTransport;
use crate::transport::{member_iova_range, Transport};
#[cfg(feature = "sim")]
use crate::trid::SimOptions;
use crate::trid::{PciAddress, TcpOptions, TransportId, TransportKind};
use crate::vfio::VfioTransport;

/// Device address of the group's admin segment over `trtype:sim` (below every member's IOVA
/// range; over VFIO it is the start of IOVA slice 0).
#[cfg(feature = "sim")]
const ADMIN_IOVA: u64 = 1 << 30;

/// How often survivors look for dead members.
const MONITOR_PERIOD: Duration = Duration::from_millis(50);
/// How long the monitor waits for the join lock before trying again next round.
const MONITOR_JOIN_WAIT: Duration = Duration::from_millis(200);

/// Attaches to `trid` as a member of group `id`.
pub(crate) fn attach(trid: &TransportId, opts: &AttachOptions, id: u32) -> Result<Controller> {
    // Refused before the group is touched.
    #[cfg(not(feature = "sim"))]
    if let TransportKind::Sim(_) = trid.kind {
        return Err(crate::no_sim());
    }
    crate::steps::step("attach: opening the group");
    let ctrl = match (&trid.kind, Group::open(id, opts.admin_timeout)?) {
        (TransportKind::Tcp(o), Joined::Create(creating)) => create_tcp(creating, o, trid, opts)?,
        (TransportKind::Tcp(o), Joined::Join(group)) => join_tcp(group, o, trid, opts)?,
        (_, Joined::Join(group)) if group.fabrics() => {
            return Err(Error::Group(format!(
                "shared-memory group {} reaches its controller over NVMe/TCP ({}), not {}: attach with that transport id to join it, or use another group id (-i)",
                group.id(),
                group.recorded_trid(),
                trid
            )))
        }
        #[cfg(feature = "sim")]
        (TransportKind::Sim(sim_opts), Joined::Create(creating)) => {
            create_sim(creating, sim_opts, trid, opts)?
        }
        #[cfg(feature = "sim")]
        (TransportKind::Sim(_), Joined::Join(group)) => join_sim(group, trid, opts)?,
        #[cfg(not(feature = "sim"))]
        (TransportKind::Sim(_), _) => unreachable!("refused above"),
        (TransportKind::Pcie { traddr }, Joined::Create(creating)) => {
            create_pcie(creating, traddr.as_ref(), trid, opts)?
        }
        (TransportKind::Pcie { traddr }, Joined::Join(group)) => {
            join_pcie(group, traddr.as_ref(), trid, opts)?
        }
    };
    let group = ctrl.group().expect("group member");
    crate::steps::step("attach: controller ready, cleaning up after dead members");
    cleanup_dead(ctrl.state());
    group.unlock_join();
    if opts.group_monitor {
        start_monitor(&ctrl);
    }
    crate::steps::step("attach: done");
    Ok(ctrl)
}

/// Brings the controller up for a new group and publishes it: the admin segment is
/// created, mapped for the device at `admin_iova` by `map_admin`, the controller brought up
/// with a local queue pair whose state then moves to the shared admin queue. `before_publish`
/// records transport facts in the control segment.
fn create_group(
    mut creating: Creating,
    transport: Arc<dyn Transport>,
    map_admin: impl FnOnce(&SharedMemory, u64) -> Result<()>,
    admin_iova: u64,
    trid: &TransportId,
    opts: &AttachOptions,
    before_publish: impl FnOnce(&mut Creating),
) -> Result<Controller> {
    let regs = crate::transport::registers(transport.as_ref())?;
    let mut init = ControllerInit::new(&regs, init_options(opts))?;
    let entries = opts.admin_entries.min(MAX_ADMIN_ENTRIES);
    // The shadow doorbell pages are reserved in every group; the controller gets them if it
    // offers Doorbell Buffer Config (`shadow::setup_group`).
    let layout = AdminLayout::new(entries, init.page_size()).with_shadow_pages();
    let mem = creating.create_admin_mem(layout.len)?;
    map_admin(mem, admin_iova)?;
    let at = AdminAt {
        iova: admin_iova,
        len: layout.len as u64,
        entries,
        sq_off: layout.sq_off() as u64,
        cq_off: layout.cq_off() as u64,
        prp_off: layout.prp_off() as u64,
        prp_len: layout.prp_len as u64,
        page: init.page_size() as u64,
        shadow_db_off: layout.shadow_db_off() as u64,
        shadow_ei_off: layout.shadow_ei_off() as u64,
        shadow_on: 0,
    };
    let hdr = creating.group().header();
    hdr.admin
        .configure(entries, init.page_size(), ADMIN_DATA, init.cap().dstrd())
        .map_err(|e| Error::Group(e.to_string()))?;
    // The controller comes up over the group's shared admin queue itself: nothing to hand
    // over afterwards.
    let (info, data) = {
        let mut queue = creating.group().admin_at(regs.clone(), &at)?;
        queue.join()?;
        bring_up(&transport, &mut init, &mut queue)?
    };
    hdr.admin
        .lower_max_transfer(info.max_transfer.min(ADMIN_DATA));
    before_publish(&mut creating);
    creating.set_shadow_pages(at.shadow_db_off, at.shadow_ei_off);
    let trid_text = trid.to_string();
    let mut group = creating.publish(&trid_text, |si| {
        si.cap = info.cap.0;
        si.vs = info.vs.0;
        si.page_size = info.page_size as u32;
        si.max_transfer = info.max_transfer as u64;
        si.granted_sq = info.io_queues.sq;
        si.granted_cq = info.io_queues.cq;
        si.admin_entries = entries;
        si.admin_iova = at.iova;
        si.admin_len = layout.len as u64;
        si.sq_off = at.sq_off;
        si.cq_off = at.cq_off;
        si.prp_off = at.prp_off;
        si.prp_len = at.prp_len;
        si.identify.copy_from_slice(info.identify.as_bytes());
        si.namespaces.copy_from_slice(info.namespaces.as_bytes());
    })?;
    group.set_lock_timeout(opts.admin_timeout);
    // One Asynchronous Event Request for the whole group; whoever reaps re-arms it.
    let _ = group.admin(regs.clone())?.enable_events(1);
    let group = Arc::new(group);
    let live = Liveness::new(&transport, StateRef::Group(group.clone()), group.me());
    let mut admin = Admin::shared(live, data);
    // Before anyone else can join (the join lock is held): every member follows.
    let shadow = crate::shadow::setup_group(&group, &info, &mut admin, opts)?;
    Controller::finish(
        transport,
        trid.clone(),
        opts,
        info,
        admin,
        Some((group, shadow)),
    )
}

/// Joins a live group through `transport` (this process's own view of the controller).
fn join_group(
    mut group: Group,
    transport: Arc<dyn Transport>,
    trid: TransportId,
    opts: &AttachOptions,
) -> Result<Controller> {
    group.set_lock_timeout(opts.admin_timeout);
    let regs = crate::transport::registers(transport.as_ref())?;
    group.admin(regs.clone())?.join()?;
    crate::steps::step("join: admin queue joined");
    let info = info_from_header(group.header());
    // Ordinary pages: a joiner that only sends admin commands (a management tool) then
    // never makes a 2 MiB pool region (its zeroing is most of a joiner's attach in a TCG
    // guest); one that does I/O makes it when it allocates its queues.
    let data = DmaBuffer::new_small(&transport, ADMIN_DATA)?;
    crate::steps::step("join: admin data buffer mapped");
    let group = Arc::new(group);
    // What the creator decided, read once.
    let shadow = group.shadow_pages()?;
    let live = Liveness::new(&transport, StateRef::Group(group.clone()), group.me());
    let admin = Admin::shared(live, data);
    Controller::finish(transport, trid, opts, info, admin, Some((group, shadow)))
}

#[cfg(feature = "sim")]
fn create_sim(
    mut creating: Creating,
    sim_opts: &SimOptions,
    trid: &TransportId,
    opts: &AttachOptions,
) -> Result<Controller> {
    let me = creating.claim()?;
    let sock = creating.group().dir().join("sim.sock");
    nvme_sim::spawn_daemon(SimTransport::config(sim_opts), &sock)
        .map_err(|e| Error::Transport(format!("starting the software controller process: {e}")))?;
    let client = Arc::new(SimTransport::connect(&sock, me.index())?);
    let transport: Arc<dyn Transport> = client.clone();
    create_group(
        creating,
        transport,
        |mem, iova| client.map_fixed(mem, iova),
        ADMIN_IOVA,
        trid,
        opts,
        |_| {},
    )
}

#[cfg(feature = "sim")]
fn join_sim(mut group: Group, trid: &TransportId, opts: &AttachOptions) -> Result<Controller> {
    if let Some(addr) = group.pci_addr() {
        return Err(Error::Group(format!(
            "shared-memory group {} drives the PCIe controller {addr}, not a software controller: attach with `trtype:PCIe traddr:{addr}`, or use another group id (-i) for trtype:sim",
            group.id()
        )));
    }
    let me = group.join()?;
    let sock = group.dir().join("sim.sock");
    let transport: Arc<dyn Transport> = Arc::new(SimTransport::connect(&sock, me.index())?);
    join_group(group, transport, trid.clone(), opts)
}

/// The group's slice `i` as `(start, len)`, checked.
fn slice(slices: &[(u64, u64)], i: usize) -> (u64, u64) {
    *slices
        .get(i)
        .expect("one slice per member plus the admin slice")
}

fn create_pcie(
    mut creating: Creating,
    traddr: Option<&PciAddress>,
    trid: &TransportId,
    opts: &AttachOptions,
) -> Result<Controller> {
    let addr = match traddr {
        Some(a) => *a,
        None => match crate::vfio::probe()?.first() {
            Some(a) => *a,
            // Says which NVMe functions exist and how to bind one.
            None => {
                return Err(crate::vfio::open_first().err().unwrap_or_else(|| {
                    Error::Transport("no NVMe controller is bound to vfio-pci".into())
                }))
            }
        },
    };
    let me = creating.claim()?;
    // Reset on attach happens here, when the group is created, and never when joining.
    let vfio = Arc::new(VfioTransport::open_group_creator(&addr)?);
    let slices = vfio.group_slices()?;
    vfio.use_slice(slice(&slices, me.index() + 1));
    creating.group().serve_fds(vfio.shared_fds()?)?;
    let transport: Arc<dyn Transport> = vfio.clone();
    let trid = TransportId {
        kind: TransportKind::Pcie { traddr: Some(addr) },
        nsid: trid.nsid,
    };
    create_group(
        creating,
        transport,
        |mem, iova| vfio.map_fixed(mem, iova),
        slice(&slices, 0).0,
        &trid,
        opts,
        |c| c.set_pcie(&addr.to_string(), &slices),
    )
}

fn join_pcie(
    mut group: Group,
    traddr: Option<&PciAddress>,
    trid: &TransportId,
    opts: &AttachOptions,
) -> Result<Controller> {
    let id = group.id();
    let Some(theirs) = group.pci_addr() else {
        return Err(Error::Group(format!(
            "shared-memory group {id} drives a software controller (trtype:sim), not a PCIe controller: attach with trtype:sim, or use another group id (-i)"
        )));
    };
    let addr: PciAddress = theirs.parse().map_err(|e| {
        Error::Group(format!(
            "shared-memory group {id}: bad PCI address '{theirs}' in the control segment: {e}"
        ))
    })?;
    if let Some(want) = traddr {
        if *want != addr {
            return Err(Error::Group(format!(
                "shared-memory group {id} drives the controller at {addr}, not {want}: a group shares one controller; attach with traddr:{addr} (or without traddr) to join it, or use another group id (-i) for {want}"
            )));
        }
    }
    let me = group.join()?;
    crate::steps::step("join: member record taken");
    let mine = group.member_slice(me.index()).ok_or_else(|| {
        Error::Group(format!(
            "shared-memory group {id}: the control segment has no IOVA slice for member {}",
            me.index()
        ))
    })?;
    let fds = group.fetch_fds(3)?;
    crate::steps::step("join: VFIO descriptors received");
    let vfio = Arc::new(VfioTransport::from_shared_fds(&addr, fds)?);
    vfio.use_slice(mine);
    crate::steps::step("join: VFIO transport ready");
    group.serve_fds(vfio.shared_fds()?)?;
    crate::steps::step("join: serving descriptors to later joiners");
    let trid = TransportId {
        kind: TransportKind::Pcie { traddr: Some(addr) },
        nsid: trid.nsid,
    };
    join_group(group, vfio, trid, opts)
}

/// What a group over NVMe/TCP records as its transport id: the target's address and the
/// subsystem (what every member must attach to; host NQN and digests are each
/// connection's own). An identity longer than the header's field ends in a hash of the
/// whole, so that two long NQNs sharing a prefix still differ.
fn tcp_identity(o: &TcpOptions) -> Result<String> {
    let subnqn = o.subsystem().map_err(Error::BadTransport)?;
    let fam = if o.addr.is_ipv4() { "IPv4" } else { "IPv6" };
    let full = format!(
        "{}adrfam:{fam} traddr:{} trsvcid:{} subnqn:{subnqn}",
        crate::group::layout::FABRICS_TRID,
        o.addr.ip(),
        o.addr.port()
    );
    // The header's field keeps 255 bytes (`layout::write_str`).
    const ROOM: usize = 255;
    if full.len() <= ROOM {
        return Ok(full);
    }
    // FNV-1a, 64 bits: a fingerprint, not a defence (the group is owner-only).
    let hash = full.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let tail = format!("... #{hash:016x}");
    // NQNs are ASCII (checked when parsed): any byte index is a character boundary.
    Ok(format!("{}{tail}", &full[..ROOM - tail.len()]))
}

/// Creates a group over NVMe/TCP: records the target's address and subsystem for the
/// members to come, then opens this process's association (its own admin queue with Keep
/// Alive). Nothing of the association is shared: no admin segment, no queue id pool.
fn create_tcp(
    mut creating: Creating,
    o: &TcpOptions,
    trid: &TransportId,
    opts: &AttachOptions,
) -> Result<Controller> {
    let identity = tcp_identity(o)?;
    creating.claim()?;
    // Nobody joins before this process lets go of the join lock (after attaching); if the
    // connection fails, the group is left without a live member and made anew next time.
    let group = creating.publish_fabrics(&identity);
    member_over_tcp(group, o, trid, opts)
}

/// Joins a group over NVMe/TCP: refused when the group reaches another target or
/// subsystem; otherwise this process opens its own association.
fn join_tcp(
    mut group: Group,
    o: &TcpOptions,
    trid: &TransportId,
    opts: &AttachOptions,
) -> Result<Controller> {
    let id = group.id();
    if !group.fabrics() {
        let theirs = match group.pci_addr() {
            Some(addr) => format!("the PCIe controller {addr} (trtype:PCIe traddr:{addr})"),
            None => "a software controller (trtype:sim)".to_string(),
        };
        return Err(Error::Group(format!(
            "shared-memory group {id} drives {theirs}, not a controller over NVMe/TCP: attach with its transport id, or use another group id (-i) for {trid}"
        )));
    }
    let ours = tcp_identity(o)?;
    let theirs = group.recorded_trid();
    if ours != theirs {
        return Err(Error::Group(format!(
            "shared-memory group {id} reaches '{theirs}', not '{ours}': a group shares one subsystem of one target; attach with that address and subnqn to join it, or use another group id (-i)"
        )));
    }
    group.join()?;
    member_over_tcp(group, o, trid, opts)
}

/// This member's association with the target, and the controller over it in `group`.
fn member_over_tcp(
    mut group: Group,
    o: &TcpOptions,
    trid: &TransportId,
    opts: &AttachOptions,
) -> Result<Controller> {
    group.set_lock_timeout(opts.admin_timeout);
    let (transport, info, admin) = crate::tcp::connect(o, opts)?;
    let group = Arc::new(group);
    Controller::finish(
        transport,
        trid.clone(),
        opts,
        info,
        admin,
        Some((group, None)),
    )
}

/// What the creator learned, as a joining process sees it.
fn info_from_header(h: &GroupHeader) -> ControllerInfo {
    let i = &h.info;
    ControllerInfo {
        cap: Cap(i.cap),
        vs: Vs(i.vs),
        page_size: i.page_size as usize,
        max_transfer: i.max_transfer as usize,
        io_queues: NumberOfQueues {
            sq: i.granted_sq,
            cq: i.granted_cq,
        },
        identify: IdentifyController::read_from_bytes(&i.identify[..]).expect("4096 bytes"),
        namespaces: NamespaceList::read_from_bytes(&i.namespaces[..]).expect("4096 bytes"),
    }
}

/// Deletes the queues of every dead member, returns their queue ids and admin mailboxes,
/// and frees their records. The join lock must be held. Returns how many members it
/// cleaned up.
pub(crate) fn cleanup_dead(ctrl: &Inner) -> usize {
    let Some(group) = ctrl.group() else {
        return 0;
    };
    let dead = group.dead_members();
    for &who in &dead {
        cleanup_member(ctrl, group, who);
    }
    dead.len()
}

fn cleanup_member(ctrl: &Inner, group: &Group, who: OwnerId) {
    if group.fabrics() {
        // Over NVMe/TCP the dead member's queues and memory were its association's: the
        // target ended it when the process's connections closed (or ends it when its
        // keep-alive timeout passes). Its record goes, and with it its leases.
        group.forget_member(who);
        return;
    }
    let Some(Ok(q)) = ctrl.regs().map(|r| group.admin(r.clone())) else {
        return;
    };
    q.release_member(who);
    // It died resetting the controller: finish the reset for the group (the controller
    // then has none of the dead member's queues any more).
    let state = group.admin_state();
    if state.reset_generation() & 1 == 1 && state.reset_owner() == Some(who) {
        if let Err(e) = ctrl.reset(Some(who)) {
            eprintln!("nvme: finishing the reset of a member that died: {e}");
        }
    }
    let mut all_deleted = true;
    for qid in group.qids_of(who) {
        // Deleting the SQ aborts what the dead process left in flight; a queue that was
        // never created (the process died in between) fails with Invalid Queue Identifier.
        let sq = queue_gone(ctrl.admin_command(Command::delete_io_sq(qid), None), false);
        let cq = queue_gone(ctrl.admin_command(Command::delete_io_cq(qid), None), true);
        if sq && cq {
            group.free_qid(qid);
        } else {
            // The controller may still use the queue and the dead process's memory: the
            // id stays reserved (it keeps the dead owner's tag) and the memory mapped.
            all_deleted = false;
        }
    }
    // An admin command of the dead process may still be writing into its memory: let the
    // controller finish it (bounded) before the memory goes.
    let Some(Ok(q)) = ctrl.regs().map(|r| group.admin(r.clone())) else {
        return;
    };
    let start = std::time::Instant::now();
    while q.in_flight_of(who) > 0 && start.elapsed() < Duration::from_secs(2) {
        q.reap();
        std::thread::sleep(Duration::from_micros(200));
    }
    if all_deleted && q.in_flight_of(who) == 0 {
        // The controller no longer uses the dead process's memory: drop its DMA mappings
        // (for VFIO this also releases the pages the dead process had pinned).
        let (iova, len) = group
            .member_slice(who.index())
            .unwrap_or_else(|| member_iova_range(who.index()));
        ctrl.transport().unmap_range(iova, len);
    }
    group.forget_member(who);
}

/// Did a queue deletion leave the queue gone (deleted, or it never existed)? NVMe 1.4
/// (5.5, 5.6) reports a queue that does not exist as Invalid Queue Identifier; QEMU's
/// controller (7.2) answers a Delete I/O Completion Queue (`cq`) of a missing queue with
/// Completion Queue Invalid instead, which says the same. (Without it, a member killed
/// between taking a queue id and creating its completion queue left the id reserved for
/// good: found by the torture run in the VM.)
fn queue_gone(r: Result<nvme_core::Completion>, cq: bool) -> bool {
    use nvme_regs::status::CommandSpecificStatus;
    match r {
        Ok(_) => true,
        Err(Error::Nvme { status, .. }) => {
            status.is_command_specific(CommandSpecificStatus::InvalidQueueId)
                || (cq && status.is_command_specific(CommandSpecificStatus::CompletionQueueInvalid))
        }
        Err(_) => false,
    }
}

/// How long the monitor waits before it tries again to refresh the group's namespace
/// record after a refresh failed.
const NS_REFRESH_RETRY: Duration = Duration::from_secs(1);

/// Refreshes the group's namespace record (`group::nsrecord`) when it needs it and no other
/// process is at it: after a Namespace Attribute Changed notice (first reading the Changed
/// Namespace List log page, which lets the controller send the next notice), a writer that
/// died, a change or refresh that failed. Returns false when the refresh failed.
fn refresh_namespace_record(ctrl: &Inner, group: &Group) -> bool {
    use nvme_regs::identify::IDENTIFY_DATA_SIZE;
    // Over NVMe/TCP there is no record: each member identifies over its association.
    if group.fabrics() {
        return true;
    }
    let Some(regs) = ctrl.regs() else {
        return false;
    };
    if group.namespace_record_needs_refresh(regs).is_none() {
        return true;
    }
    let Some(lock) = group.try_lock_namespace_record() else {
        return true;
    };
    // Looked at again with the lock: another process may have refreshed it meanwhile.
    let Some(why) = group.namespace_record_needs_refresh(regs) else {
        return true;
    };
    let read = |cmd| ctrl.admin_read(cmd, IDENTIFY_DATA_SIZE);
    if why == Unusable::Stale {
        let _ = read(crate::namespace::changed_namespace_list());
    }
    crate::namespace::identify_recorded(group, Some(&lock), read).is_ok()
}

/// Starts the thread that cleans up after members that die while this process runs. It
/// holds the controller only while it cleans up, so the application's last reference always
/// runs the detach itself.
fn start_monitor(ctrl: &Controller) {
    let started = ctrl.start_monitor(|ctrl, stop| {
        let group = ctrl.group().cloned().expect("group member");
        let mut next_refresh = Instant::now();
        loop {
            // Woken early (unparked) when the controller detaches.
            std::thread::park_timeout(MONITOR_PERIOD);
            if stop.load(Ordering::Acquire) {
                return;
            }
            // Record asynchronous events even when nobody sends admin commands.
            if let Some(Ok(q)) = ctrl.regs().map(|r| group.admin(r.clone())) {
                q.reap();
            }
            // (A test hook may hold the join lock in this process: not ours to release.)
            if !group.dead_members().is_empty() && !group.join_held() {
                // A short wait: a busy (or stopped) join lock is tried again next round,
                // and joining processes clean up too; the monitor must stay quick to stop.
                if group.lock_join(MONITOR_JOIN_WAIT).is_ok() {
                    cleanup_dead(&ctrl);
                    group.unlock_join();
                }
            }
            if Instant::now() >= next_refresh && !refresh_namespace_record(&ctrl, &group) {
                next_refresh = Instant::now() + NS_REFRESH_RETRY;
            }
        }
    });
    if let Err(e) = started {
        // Without the monitor, dead members are still cleaned up when processes join.
        eprintln!("nvme: could not start the group monitor thread: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nvme_regs::status::{CommandSpecificStatus as Sc, GenericStatus, Status};

    fn failed(status: Status) -> Result<nvme_core::Completion> {
        Err(Error::Nvme {
            opcode: 0x04,
            admin: true,
            status,
        })
    }

    #[test]
    fn a_missing_queue_counts_as_deleted() {
        let invalid_qid = Status::command_specific(Sc::InvalidQueueId).with_dnr();
        let cq_invalid = Status::command_specific(Sc::CompletionQueueInvalid).with_dnr();
        assert!(queue_gone(failed(invalid_qid), false));
        assert!(queue_gone(failed(invalid_qid), true));
        // QEMU's answer to deleting a completion queue that was never created.
        assert!(queue_gone(failed(cq_invalid), true));
        assert!(!queue_gone(failed(cq_invalid), false));
        // A queue still there (its SQ not deleted), or any other failure: not gone.
        let not_empty = Status::command_specific(Sc::InvalidQueueDeletion);
        assert!(!queue_gone(failed(not_empty), true));
        let internal = Status::generic(GenericStatus::InternalError);
        assert!(!queue_gone(failed(internal), true));
        assert!(!queue_gone(Err(Error::ControllerGone), true));
    }
}
