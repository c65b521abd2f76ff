//! Shared-memory groups: several processes driving one controller.
//!
//! Processes that attach with the same group id (`-i N`) share the controller. The group
//! lives in a directory (`/dev/shm/nvme-rs.N`, or under `$NVME_RUN_DIR`), owner-only:
//!
//! - `control`: the control segment (`GroupHeader`): build id, controller facts,
//!   the robust group lock, member records, the I/O queue id pool and the shared admin
//!   queue state. No pointers: every process maps it wherever it likes.
//! - `admin.mem`: the admin rings and their PRP list pages, then the shadow doorbell and
//!   EventIdx pages (Doorbell Buffer Config, used when the creator gave them to the
//!   controller), mapped by every member.
//!   It also holds the table of LBA range leases (`leases`, [`crate::Lease`]) and the
//!   record of the active namespaces that joining processes read (`nsrecord`).
//! - `members.lock`: one byte per member, locked (OFD lock) by that member for its lifetime.
//!   The kernel drops the lock when the process dies; that is how survivors know.
//! - `sim.sock`: the software controller's process, for `trtype:sim`.
//! - `member.<index>.sock`: for `trtype:PCIe`, each member hands the VFIO descriptors to
//!   joining processes there (`fdpass`).
//!
//! Joining is serialised by a lock byte; the first process finding no live member (re)creates
//! the group and becomes the primary. Every wait for that join lock is bounded (the attach
//! options' admin timeout; the monitor's cleanup tries briefly and again later): its holder
//! records its pid in the header, so a wait that runs out names it, says whether it is
//! stopped and what to do. A process that cannot get the join lock to detach leaves as if
//! it had died (`Group::abandon`). The group path must be a real directory of ours: a
//! symbolic link there, or in place of one of its files, is refused and never followed. A process joining after the primary died takes the
//! primary role. Survivors clean up after a dead member eagerly (a monitor thread checks
//! every 50 ms): its queues are deleted on the controller, its queue ids and admin mailbox
//! released. The last member to leave shuts the controller down and removes the group.
//!
//! Over VFIO (`trtype:PCIe`) the creator opens the device (and resets it: only the creator
//! does, and only the last member out resets it again), records its PCI address and the IOVA
//! partition (`vfio::share`) here, and maps the admin segment in slice 0. A joiner gets the
//! container, group and device descriptors from a live member (`fdpass`), refuses a group
//! that drives another controller, and maps its own memory in its own slice; a survivor
//! unmaps a dead member's whole slice after deleting its queues.
//!
//! Over NVMe/TCP (`trtype:TCP`) a group shares no controller: each member opens its own
//! association with the target (admin queue with Keep Alive, I/O queues, their queue ids).
//! The creator records the target's address and subsystem as the group's transport id
//! (`layout::FABRICS_TRID` starts it), which a joiner must match; there is no `admin.mem`,
//! no shared admin queue, queue id pool, namespace record, shadow doorbells, interrupt
//! lock or descriptor passing. What the group gives: the build check, the owner-only
//! directory, the join lock, roles, member records and liveness, cleanup after a dead
//! member (its record and leases go; the target ends its association when its connections
//! close), and the lease table. A reset is per association: it reaches no other member.

pub(crate) mod fdpass;
pub(crate) mod layout;
mod leases;
mod lockfile;
pub(crate) mod nsrecord;
mod robust;

use std::fs::{File, OpenOptions};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nvme_core::shared::{OwnerId, SharedAdminQueue, MAX_MEMBERS};

use crate::error::{Error, Result};
use crate::memory::SharedMemory;
use crate::mmio::Mmio;
use layout::{
    GroupHeader, GroupIdent, ACTIVE, FREE, INTERRUPT_BYTE, JOIN_BYTE, MAGIC, MAX_QID, PRIMARY_BYTE,
};
use robust::RobustMutex;

/// Where the shared admin queue's rings sit in the admin segment. A member copies it from
/// the header once ([`AdminAt::from_info`]), checks it ([`AdminAt::check`]) and uses only
/// its copy afterwards: a header changed later cannot move its rings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AdminAt {
    /// Device address of the admin segment.
    pub(crate) iova: u64,
    /// Length of the admin segment (`admin.mem`).
    pub(crate) len: u64,
    /// Ring entries.
    pub(crate) entries: u32,
    /// Offsets and length in the segment.
    pub(crate) sq_off: u64,
    pub(crate) cq_off: u64,
    pub(crate) prp_off: u64,
    pub(crate) prp_len: u64,
    /// The controller's memory page size: the length of each shadow page.
    pub(crate) page: u64,
    /// Offsets of the shadow doorbell and EventIdx pages (Doorbell Buffer Config).
    pub(crate) shadow_db_off: u64,
    pub(crate) shadow_ei_off: u64,
    /// The group's record of whether the controller was given the shadow pages: 0 (off), 1
    /// (on: the pages must be valid), anything else is damage. The creator copies its
    /// layout before it decides (its copy says off; it uses the pages it gave itself).
    pub(crate) shadow_on: u32,
}

impl AdminAt {
    /// Copies the admin segment's layout from the header, each value read once.
    fn from_header(h: &GroupHeader) -> AdminAt {
        let info = &h.info;
        AdminAt {
            iova: info.admin_iova,
            len: info.admin_len,
            entries: info.admin_entries,
            sq_off: info.sq_off,
            cq_off: info.cq_off,
            prp_off: info.prp_off,
            prp_len: info.prp_len,
            page: u64::from(info.page_size),
            shadow_db_off: h.shadow.db_off,
            shadow_ei_off: h.shadow.ei_off,
            shadow_on: h.shadow.on.load(Ordering::Acquire),
        }
    }

    /// Checks the layout with checked arithmetic: ring sizes in range, the rings and the
    /// PRP list pages 4 KiB aligned, the shadow doorbell and EventIdx pages (one controller
    /// page each, looked at when the group uses them) aligned to that page in the segment
    /// and on the device, all inside the segment and apart from each other, the segment's
    /// device addresses without overflow. Says what is wrong.
    pub(crate) fn check(&self) -> std::result::Result<(), String> {
        use nvme_core::shared::MAX_ADMIN_ENTRIES;
        if !(2..=MAX_ADMIN_ENTRIES).contains(&self.entries) {
            return Err(format!(
                "{} admin queue entries, not in 2..={MAX_ADMIN_ENTRIES}",
                self.entries
            ));
        }
        if self.len == 0 || usize::try_from(self.len).is_err() {
            return Err(format!("an admin segment of {} bytes", self.len));
        }
        if self.iova.checked_add(self.len).is_none() {
            return Err(format!(
                "an admin segment of {:#x} bytes at device address {:#x} wraps around",
                self.len, self.iova
            ));
        }
        let shadow = match self.shadow_on {
            0 => false,
            1 => true,
            v => {
                return Err(format!(
                    "shadow doorbells recorded as {v} (neither 0, off, nor 1, on)"
                ))
            }
        };
        // CAP.MPSMIN..=MPSMAX: 4 KiB << 0..=15.
        if shadow && (!self.page.is_power_of_two() || !(4096..=4096 << 15).contains(&self.page)) {
            return Err(format!(
                "a controller memory page of {:#x} bytes",
                self.page
            ));
        }
        let entries = u64::from(self.entries);
        let parts = [
            // (what, offset, length, on a controller page boundary on the device)
            ("submission ring", self.sq_off, entries * 64, false),
            ("completion ring", self.cq_off, entries * 16, false),
            ("PRP list pages", self.prp_off, self.prp_len, false),
            ("shadow doorbell page", self.shadow_db_off, self.page, true),
            ("EventIdx page", self.shadow_ei_off, self.page, true),
        ];
        let mut spans = Vec::with_capacity(parts.len());
        for (what, off, len, page_aligned) in parts {
            if page_aligned && !shadow {
                continue;
            }
            let end = off
                .checked_add(len)
                .filter(|&end| end <= self.len && len > 0)
                .ok_or_else(|| {
                    format!(
                        "the {what} at {off:#x}+{len:#x} is not inside the {:#x}-byte admin segment",
                        self.len
                    )
                })?;
            if !off.is_multiple_of(4096) {
                return Err(format!("the {what} at {off:#x} is not 4 KiB aligned"));
            }
            if page_aligned {
                // Doorbell Buffer Config takes page-aligned device addresses; `iova + len`
                // does not wrap (checked above) and `off < len`.
                let iova = self.iova + off;
                if !iova.is_multiple_of(self.page) {
                    return Err(format!(
                        "the {what} at device address {iova:#x} is not aligned to the {:#x}-byte controller page",
                        self.page
                    ));
                }
            }
            spans.push((what, off, end));
        }
        for (i, &(a, a_off, a_end)) in spans.iter().enumerate() {
            for &(b, b_off, b_end) in &spans[i + 1..] {
                if a_off < b_end && b_off < a_end {
                    return Err(format!("the {a} and the {b} overlap"));
                }
            }
        }
        Ok(())
    }
}

/// A process's role in its group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Not in a group: the process owns the controller alone.
    Single,
    /// Created the group, or took the role after the primary left.
    Primary,
    /// Joined a group another process created.
    Secondary,
}

/// The directory of group `id`.
pub fn group_dir(id: u32) -> PathBuf {
    let base = std::env::var_os("NVME_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/dev/shm"));
    group_dir_in(&base, id)
}

/// The directory of group `id` when the run directory is `base`.
pub(crate) fn group_dir_in(base: &Path, id: u32) -> PathBuf {
    base.join(format!("nvme-rs.{id}"))
}

fn os(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |e| Error::os(what, e)
}

/// Creates the group directory or checks that an existing one is ours: a real directory
/// (a symbolic link there is refused, never followed), owned by us, owner-only.
fn ensure_dir(id: u32, dir: &Path) -> Result<()> {
    // The last member of the group may remove the directory between our mkdir and our
    // look at it: then we make it again (a few times; every round means the group was
    // created and torn down again in between).
    for _ in 0..100 {
        // mkdir with mode 0700 in one step: a process racing us must never see the
        // directory with wider permissions (the umask can only narrow them). mkdir never
        // follows a symbolic link at `dir` (EEXIST).
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(Error::os(
                    format!("creating the group directory {}", dir.display()),
                    e,
                ))
            }
        }
        // What is there, without following a link (lstat semantics): O_NOFOLLOW refuses a
        // symbolic link (ELOOP), O_DIRECTORY anything else that is not a directory
        // (ENOTDIR), and the owner and mode are those of what we opened.
        let opened = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(dir);
        let md = match opened.and_then(|d| d.metadata()) {
            Ok(md) => md,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)) => {
                return Err(not_a_directory(id, dir));
            }
            Err(e) => return Err(Error::os(format!("opening {}", dir.display()), e)),
        };
        let me = nix::unistd::geteuid().as_raw();
        if md.uid() != me {
            return Err(Error::Group(format!(
                "shared-memory group {id} ({}) belongs to user {} (you are {me}); use another group id (-i) or run as that user",
                dir.display(),
                md.uid()
            )));
        }
        if md.mode() & 0o077 != 0 {
            return Err(Error::Group(format!(
                "the group directory {} is accessible to other users (mode {:o}); remove it or chmod 700 it",
                dir.display(),
                md.mode() & 0o777
            )));
        }
        return Ok(());
    }
    Err(Error::Group(format!(
        "the group directory {} keeps disappearing as soon as it is made",
        dir.display()
    )))
}

/// The error for something at the group's path that is not a directory: says what it is
/// (from lstat: a symbolic link is not followed) and what to do.
fn not_a_directory(id: u32, dir: &Path) -> Error {
    let what = match std::fs::symlink_metadata(dir) {
        Ok(md) if md.file_type().is_symlink() => {
            let to = std::fs::read_link(dir)
                .map(|t| format!(" to {}", t.display()))
                .unwrap_or_default();
            return Error::Group(format!(
                "shared-memory group {id}: {} is a symbolic link{to}, not a directory; the driver does not follow it: remove it (rm {}) or use another group id (-i)",
                dir.display(),
                dir.display()
            ));
        }
        Ok(md) if md.file_type().is_file() => "a regular file",
        Ok(md) if md.file_type().is_fifo() => "a FIFO",
        Ok(md) if md.file_type().is_socket() => "a socket",
        Ok(md) if md.file_type().is_char_device() || md.file_type().is_block_device() => {
            "a device node"
        }
        _ => "not a directory",
    };
    Error::Group(format!(
        "shared-memory group {id}: {} is {what}, not a directory: remove it (rm {}) or use another group id (-i)",
        dir.display(),
        dir.display()
    ))
}

/// Opens a file of the group directory, never through a symbolic link.
fn open_rw(path: &Path, create: bool) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                return Error::Group(format!(
                    "{} is a symbolic link; the driver does not follow links in a group directory: remove it",
                    path.display()
                ));
            }
            Error::os(format!("opening {}", path.display()), e)
        })
}

/// Opens `members.lock` and takes the join lock, retrying if the last member of an earlier
/// group removed the file (or the whole directory) in between: joining a group that is being
/// torn down joins or creates the next one, it never fails for that.
///
/// Waits at most `bound` for the join lock in all; then the error names the holder.
fn open_and_lock_join(id: u32, dir: &Path, bound: Duration) -> Result<File> {
    let path = dir.join("members.lock");
    let deadline = Instant::now() + bound;
    loop {
        let f = match open_rw(&path, true) {
            Ok(f) => f,
            Err(Error::Os { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                // The last member removed the directory after we found it: make it again.
                ensure_dir(id, dir)?;
                continue;
            }
            Err(e) => return Err(e),
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if !lockfile::lock_within(&f, JOIN_BYTE, left).map_err(os("taking the group join lock"))? {
            return Err(join_timeout(id, bound, &holder_in(dir)));
        }
        let ours = f.metadata().map_err(os("stat members.lock"))?;
        match std::fs::metadata(&path) {
            Ok(now) if now.ino() == ours.ino() && now.dev() == ours.dev() => return Ok(f),
            _ => continue, // unlinked while we waited: the group was torn down; start over
        }
    }
}

/// What a joining process found.
pub(crate) enum Joined {
    /// No live member: this process must (re)create the group. The join lock is held.
    Create(Creating),
    /// A live group: this process joins it. The join lock is held.
    Join(Group),
}

/// A group being created: the control segment is zeroed and mapped.
pub(crate) struct Creating {
    group: Group,
}

/// This process's membership of a group.
pub(crate) struct Group {
    id: u32,
    dir: PathBuf,
    lockf: File,
    /// The control segment (`GroupHeader`), group lock included.
    control: SharedMemory,
    admin_mem: Option<SharedMemory>,
    /// The admin segment's layout: copied from the header once and checked (joining), or
    /// the one this process published (creating).
    admin_at: Option<AdminAt>,
    me: Option<OwnerId>,
    /// A group over NVMe/TCP: each member has an association of its own with the target
    /// (admin queue, I/O queues and their ids); the group has no shared admin queue, no
    /// admin segment, no queue id pool, no shadow doorbells and no interrupts.
    fabrics: bool,
    primary: AtomicBool,
    join_held: AtomicBool,
    /// Bound on waiting for the group lock in admin commands (a stopped holder).
    lock_timeout: std::time::Duration,
    /// `trtype:PCIe`: this member's VFIO descriptor server.
    server: Mutex<Option<fdpass::Server>>,
}

/// How long admin commands wait for the group lock unless the attach options say otherwise.
const DEFAULT_LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Length of the control segment.
fn control_len() -> usize {
    std::mem::size_of::<GroupHeader>().next_multiple_of(4096)
}

impl Group {
    /// Takes the join lock of group `id` (waiting at most `join_timeout`) and finds out
    /// whether the group is alive.
    pub(crate) fn open(id: u32, join_timeout: Duration) -> Result<Joined> {
        let dir = group_dir(id);
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent)
                .map_err(os(format!("creating {}", parent.display())))?;
        }
        ensure_dir(id, &dir)?;
        let lockf = open_and_lock_join(id, &dir, join_timeout)?;
        let mut alive = false;
        for i in 0..MAX_MEMBERS as u64 {
            if lockfile::held_by_other(&lockf, i).map_err(os("checking group members"))? {
                alive = true;
                break;
            }
        }
        let control_path = dir.join("control");
        let len = control_len();
        if !alive {
            // (Re)create: stale files of a group whose members all died go first.
            for stale in ["control", "admin.mem", "sim.sock"] {
                let _ = std::fs::remove_file(dir.join(stale));
            }
            remove_member_sockets(&dir);
            let f = open_rw(&control_path, true)?;
            f.set_len(len as u64)
                .map_err(os("sizing the control segment"))?;
            let mut control =
                SharedMemory::from_file(f, len).map_err(os("mapping the control segment"))?;
            // Nobody else maps the segment before we publish the magic.
            let h: &mut GroupHeader = control
                .view_mut()
                .expect("the control segment is sized for the header");
            h.mutex.init().map_err(os("initialising the group lock"))?;
            h.leases
                .mutex
                .init()
                .map_err(os("initialising the lease table lock"))?;
            h.namespaces
                .mutex
                .init()
                .map_err(os("initialising the namespace record lock"))?;
            h.ident
                .layout_version
                .store(layout::LAYOUT_VERSION, Ordering::Relaxed);
            h.ident.state.store(layout::INITIALIZING, Ordering::Relaxed);
            layout::write_str(&mut h.ident.build_id, &layout::build_id());
            let group = Group::new(id, dir, lockf, control);
            return Ok(Joined::Create(Creating { group }));
        }
        let control = map_control(id, &control_path, len)?;
        let mut group = Group::new(id, dir, lockf, control);
        if layout::read_str(&group.header().trid).starts_with(layout::FABRICS_TRID) {
            // Over NVMe/TCP: no shared admin queue, no admin segment.
            group.fabrics = true;
            return Ok(Joined::Join(group));
        }
        let (at, admin_mem) = map_admin(id, &group.dir, group.header())?;
        group.admin_at = Some(at);
        group.admin_mem = Some(admin_mem);
        Ok(Joined::Join(group))
    }

    /// A membership in the making: the join lock is held, no member record claimed yet.
    /// `control` holds a whole header (checked by the caller).
    fn new(id: u32, dir: PathBuf, lockf: File, control: SharedMemory) -> Group {
        let group = Group {
            id,
            dir,
            lockf,
            control,
            admin_mem: None,
            admin_at: None,
            me: None,
            fabrics: false,
            primary: AtomicBool::new(false),
            join_held: AtomicBool::new(true),
            server: Mutex::new(None),
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
        };
        group.record_join_holder();
        group
    }

    /// The control segment, writable: only while creating the group, before it is
    /// published (see `memory::SharedView`).
    fn header_mut(&mut self) -> &mut GroupHeader {
        self.control
            .view_mut()
            .expect("the control segment holds a header (checked at open)")
    }

    /// The shared admin queue's state (and the controller's reset generation).
    pub(crate) fn admin_state(&self) -> &nvme_core::shared::SharedAdminState {
        &self.header().admin
    }

    /// The admin queue state's bytes in the control segment, valid as long as this group.
    pub(crate) fn admin_state_region(&self) -> nvme_core::DmaRegion {
        self.control
            .region(
                std::mem::offset_of!(GroupHeader, admin),
                std::mem::size_of::<nvme_core::shared::SharedAdminState>(),
                0,
            )
            .expect("the control segment holds a header (checked at open)")
    }

    /// The control segment.
    pub(crate) fn header(&self) -> &GroupHeader {
        self.control
            .view()
            .expect("the control segment holds a header (checked at open)")
    }

    /// The group id.
    pub(crate) fn id(&self) -> u32 {
        self.id
    }
    /// The group directory.
    #[cfg_attr(not(feature = "sim"), allow(dead_code))]
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
    /// This process's member id.
    pub(crate) fn me(&self) -> OwnerId {
        self.me.expect("joined")
    }
    /// Does this process hold the primary role?
    pub(crate) fn role(&self) -> Role {
        if self.primary.load(Ordering::Relaxed) {
            Role::Primary
        } else {
            Role::Secondary
        }
    }

    /// The admin segment mapping (rings and PRP lists).
    pub(crate) fn admin_mem(&self) -> &SharedMemory {
        self.admin_mem.as_ref().expect("admin segment mapped")
    }

    /// The shadow doorbell and EventIdx pages in the admin segment (checked at attach, with
    /// the rest of its layout).
    pub(crate) fn shadow_regions(&self) -> Result<(nvme_core::DmaRegion, nvme_core::DmaRegion)> {
        let at = self.admin_at.expect("admin layout checked at attach");
        let mem = self.admin_mem();
        let region = |off: u64| {
            usize::try_from(off)
                .ok()
                .zip(usize::try_from(at.page).ok())
                .and_then(|(off, len)| mem.region(off, len, at.iova))
        };
        match (region(at.shadow_db_off), region(at.shadow_ei_off)) {
            (Some(db), Some(ei)) => Ok((db, ei)),
            _ => Err(Error::Group(format!(
                "group {}: the shadow doorbell pages at {:#x} and {:#x} are not inside the {}-byte admin segment",
                self.id,
                at.shadow_db_off,
                at.shadow_ei_off,
                mem.len()
            ))),
        }
    }

    /// Records that the controller was given the group's shadow doorbell pages (the
    /// creator, join lock held, before anyone else joins).
    pub(crate) fn set_shadow_on(&self) {
        self.header().shadow.on.store(1, Ordering::Release);
    }

    /// The group's shadow doorbell pages when its creator gave them to the controller
    /// (every member's I/O queues must then use them), as this member read it when it
    /// joined.
    pub(crate) fn shadow_pages(
        self: &std::sync::Arc<Self>,
    ) -> Result<Option<crate::shadow::ShadowPages>> {
        // Checked with the rest of the layout when this process joined.
        if self.admin_at.is_some_and(|at| at.shadow_on == 1) {
            let (db, ei) = self.shadow_regions()?;
            return Ok(Some(crate::shadow::ShadowPages::of_group(self, db, ei)));
        }
        Ok(None)
    }

    /// Bounds how long this process's admin commands wait for the group lock.
    pub(crate) fn set_lock_timeout(&mut self, timeout: std::time::Duration) {
        self.lock_timeout = timeout;
    }

    /// This process's handle on the shared admin queue; an error when another process
    /// damaged the queue's shared state (this process keeps working otherwise, and says so).
    pub(crate) fn admin(&self, regs: Mmio) -> Result<SharedAdminQueue<'_, Mmio, RobustMutex>> {
        let Some(at) = self.admin_at else {
            return Err(Error::Group(format!(
                "group {} is over NVMe/TCP: it has no shared admin queue (each member has an association of its own)",
                self.id
            )));
        };
        self.admin_at(regs, &at)
    }

    /// Is this a group over NVMe/TCP (see `fabrics`)?
    pub(crate) fn fabrics(&self) -> bool {
        self.fabrics
    }

    /// The transport id the group's creator recorded (over NVMe/TCP: the target's
    /// address and subsystem, what every member must attach to).
    pub(crate) fn recorded_trid(&self) -> String {
        layout::read_str(&self.header().trid)
    }

    /// The pids of the members whose records are active (a member that died stays until
    /// it is cleaned up), in member order.
    pub(crate) fn member_pids(&self) -> Vec<u32> {
        self.header()
            .members
            .iter()
            .filter(|m| m.state.load(Ordering::Acquire) == ACTIVE)
            .map(|m| m.pid.load(Ordering::Relaxed))
            .collect()
    }

    /// A handle on the shared admin queue whose rings sit at `at` in the admin segment (the
    /// creator's, before the layout is published in the header).
    pub(crate) fn admin_at(
        &self,
        regs: Mmio,
        at: &AdminAt,
    ) -> Result<SharedAdminQueue<'_, Mmio, RobustMutex>> {
        self.check_mappings()?;
        let h = self.header();
        let q = admin_queue(self.admin_mem(), &h.admin, &h.mutex, regs, at, self.me())?;
        Ok(q.with_lock_timeout(self.lock_timeout))
    }

    /// An error once another process truncated one of the group's files under this one's
    /// mappings: they were replaced by zeros (`memory::sigbus`), the shared state is lost.
    pub(crate) fn check_mappings(&self) -> Result<()> {
        let damaged = [
            ("control", Some(&self.control)),
            ("admin.mem", self.admin_mem.as_ref()),
        ]
        .into_iter()
        .filter(|(_, m)| m.is_some_and(|m| m.damaged()))
        .map(|(name, _)| name)
        .collect::<Vec<_>>();
        if damaged.is_empty() {
            return Ok(());
        }
        Err(Error::Group(format!(
            "group {}: another process truncated {} in {} under this one; the group's shared state is lost: detach every process of the group so that it is created anew",
            self.id,
            damaged.join(" and "),
            self.dir.display()
        )))
    }

    /// Claims a member record and this process's liveness byte, and the primary role if it
    /// is free. The join lock must be held.
    fn claim_member(&mut self) -> Result<OwnerId> {
        let h = self.header();
        let index = (0..MAX_MEMBERS)
            .find(|&i| h.members[i].state.load(Ordering::Relaxed) == FREE)
            .ok_or_else(|| {
                Error::Group(format!(
                    "group {} is full ({MAX_MEMBERS} processes)",
                    self.id
                ))
            })?;
        if !lockfile::try_lock(&self.lockf, index as u64).map_err(os("taking the member lock"))? {
            return Err(Error::Group(format!(
                "group {}: member slot {index} is locked by another process",
                self.id
            )));
        }
        let epoch = h.epochs.fetch_add(1, Ordering::Relaxed).wrapping_add(1) & 0x00ff_ffff;
        let m = &h.members[index];
        m.epoch.store(epoch, Ordering::Relaxed);
        m.pid.store(std::process::id(), Ordering::Relaxed);
        m.state.store(ACTIVE, Ordering::Release);
        let me = OwnerId::new(index, epoch);
        self.me = Some(me);
        let primary =
            lockfile::try_lock(&self.lockf, PRIMARY_BYTE).map_err(os("taking the primary role"))?;
        self.primary.store(primary, Ordering::Relaxed);
        Ok(me)
    }

    /// Members whose record says active but whose process is gone.
    pub(crate) fn dead_members(&self) -> Vec<OwnerId> {
        let h = self.header();
        let me = self.me.map(|m| m.index());
        (0..MAX_MEMBERS)
            .filter(|&i| Some(i) != me && h.members[i].state.load(Ordering::Acquire) == ACTIVE)
            .filter(|&i| !lockfile::held_by_other(&self.lockf, i as u64).unwrap_or(true))
            .map(|i| OwnerId::new(i, h.members[i].epoch.load(Ordering::Relaxed)))
            .collect()
    }

    /// The number of asynchronous events recorded so far (a new reader starts here).
    pub(crate) fn events_seq(&self) -> u64 {
        self.header().admin.events_seq()
    }

    /// Queue ids owned by `who`.
    pub(crate) fn qids_of(&self, who: OwnerId) -> Vec<u16> {
        let h = self.header();
        (1..=MAX_QID)
            .filter(|&q| h.qids[q].load(Ordering::Relaxed) == who.raw())
            .map(|q| q as u16)
            .collect()
    }

    /// Marks a dead member's record free (after its queues were deleted).
    pub(crate) fn forget_member(&self, who: OwnerId) {
        let m = &self.header().members[who.index()];
        if m.epoch.load(Ordering::Relaxed) == who.raw() >> 8 {
            let _ = std::fs::remove_file(self.member_socket(who.index()));
            m.pid.store(0, Ordering::Relaxed);
            m.state.store(FREE, Ordering::Release);
        }
    }

    /// Takes a free I/O queue id in `1..=granted` for this process.
    pub(crate) fn alloc_qid(&self, granted: u16) -> Result<u16> {
        let h = self.header();
        let me = self.me().raw();
        for q in 1..=(granted as usize).min(MAX_QID) {
            if h.qids[q]
                .compare_exchange(0, me, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                return Ok(q as u16);
            }
        }
        Err(Error::NoQueuesLeft { granted })
    }

    /// Returns a queue id (ours, or a dead member's after cleanup).
    pub(crate) fn free_qid(&self, qid: u16) {
        if let Some(q) = self.header().qids.get(qid as usize) {
            q.store(0, Ordering::Release);
        }
    }

    /// The I/O queue ids in use with the pid of the member holding each (0 when its record
    /// no longer names it), in queue id order.
    pub(crate) fn qid_holders(&self) -> Vec<(u16, u32)> {
        let h = self.header();
        h.qids
            .iter()
            .enumerate()
            .filter_map(|(q, o)| {
                let raw = o.load(Ordering::Acquire);
                if raw == 0 {
                    return None;
                }
                let index = ((raw & 0xff) as usize).checked_sub(1);
                let pid = index
                    .and_then(|i| Some((i, h.members.get(i)?)))
                    .filter(|(i, m)| OwnerId::new(*i, m.epoch.load(Ordering::Relaxed)).raw() == raw)
                    .map_or(0, |(_, m)| m.pid.load(Ordering::Relaxed));
                Some((q as u16, pid))
            })
            .collect()
    }

    /// Queue ids in use by any member.
    pub(crate) fn qids_in_use(&self) -> usize {
        self.header()
            .qids
            .iter()
            .filter(|q| q.load(Ordering::Relaxed) != 0)
            .count()
    }

    /// Takes the group lock and never releases it (tests: a process killed while holding it).
    #[cfg(feature = "test-hooks")]
    pub(crate) fn hold_lock_forever(&self) {
        use nvme_core::RobustLock;
        std::mem::forget(self.header().mutex.lock(None));
    }

    /// Takes the join lock (for cleanup and leaving), waiting at most `bound`; the error
    /// then names the holder and says what to do.
    pub(crate) fn lock_join(&self, bound: Duration) -> Result<()> {
        if !lockfile::lock_within(&self.lockf, JOIN_BYTE, bound)
            .map_err(os("taking the group join lock"))?
        {
            return Err(join_timeout(self.id, bound, &holder(self.header())));
        }
        self.join_held.store(true, Ordering::Relaxed);
        self.record_join_holder();
        Ok(())
    }
    /// Runs `f` holding the group's interrupt lock (a byte of `members.lock` of its own, so
    /// a holder that dies releases it), waiting at most `bound` for it. It serialises the
    /// members' changes to the function's MSI-X set-up; the caller serialises the threads
    /// of this process (the lock is an OFD lock, which threads of one process share).
    pub(crate) fn with_interrupt_lock<T>(
        &self,
        bound: Duration,
        f: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        if !lockfile::lock_within(&self.lockf, INTERRUPT_BYTE, bound)
            .map_err(os("taking the group's interrupt lock"))?
        {
            return Err(Error::Group(format!(
                "group {}: waited {} ms for the interrupt lock (byte {INTERRUPT_BYTE} of members.lock), held by a member that is stopped or stuck",
                self.id,
                bound.as_millis()
            )));
        }
        let r = f();
        let _ = lockfile::unlock(&self.lockf, INTERRUPT_BYTE);
        r
    }
    /// Does this process hold the join lock through this membership?
    pub(crate) fn join_held(&self) -> bool {
        self.join_held.load(Ordering::Relaxed)
    }
    /// Releases the join lock.
    pub(crate) fn unlock_join(&self) {
        if self.join_held.swap(false, Ordering::Relaxed) {
            self.clear_join_holder();
            let _ = lockfile::unlock(&self.lockf, JOIN_BYTE);
        }
    }
    /// Records this process as the join lock's holder (join lock held).
    fn record_join_holder(&self) {
        self.header()
            .join_holder
            .store(std::process::id(), Ordering::Release);
    }
    /// Clears our record as the join lock's holder (before letting go of the lock).
    fn clear_join_holder(&self) {
        let _ = self.header().join_holder.compare_exchange(
            std::process::id(),
            0,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }

    /// Leaves the group without the join lock (its holder is stopped or stuck): as if this
    /// process had died. Only what the kernel would do at our death is done: the VFIO
    /// descriptor server stops, and our liveness and primary-role locks go, so that the
    /// other members (their monitors) or the next process to join clean up after us under
    /// the join lock. Skipped, because each needs the join lock: freeing our member record,
    /// and, when we were the last member, the controller's shutdown notification (CC.SHN)
    /// and the removal of the group's files (the next process to attach finds no live
    /// member and creates the group anew; over VFIO, that creator resets the controller).
    pub(crate) fn abandon(&self) {
        drop(self.server.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(me) = self.me {
            let _ = lockfile::unlock(&self.lockf, me.index() as u64);
        }
        if self.primary.swap(false, Ordering::Relaxed) {
            let _ = lockfile::unlock(&self.lockf, PRIMARY_BYTE);
        }
    }

    /// Leaves the group (join lock held by the caller). Returns true when this was the last
    /// live member: the caller then shuts the controller down and calls [`remove_files`].
    pub(crate) fn leave(&self) -> bool {
        // No joiner can be talking to our server: joiners hold the join lock.
        drop(self.server.lock().unwrap_or_else(|p| p.into_inner()).take());
        let me = self.me();
        let m = &self.header().members[me.index()];
        m.pid.store(0, Ordering::Relaxed);
        m.state.store(FREE, Ordering::Release);
        let _ = lockfile::unlock(&self.lockf, me.index() as u64);
        if self.primary.swap(false, Ordering::Relaxed) {
            let _ = lockfile::unlock(&self.lockf, PRIMARY_BYTE);
        }
        !(0..MAX_MEMBERS as u64).any(|i| lockfile::held_by_other(&self.lockf, i).unwrap_or(true))
    }

    /// Removes the group's files (last member, join lock held).
    ///
    /// `members.lock` goes last: until it is unlinked, a joining process waits for our join
    /// lock on it (and finds it unlinked once it gets it: it starts over). A process that
    /// arrives after it is unlinked creates a new one and a new group beside us, so by then
    /// every other file of ours must be gone already: we must not remove the newcomer's.
    /// The directory goes only if it is empty (a newcomer may be using it already).
    pub(crate) fn remove_files(&self) {
        for f in ["control", "admin.mem", "sim.sock"] {
            let _ = std::fs::remove_file(self.dir.join(f));
        }
        remove_member_sockets(&self.dir);
        let _ = std::fs::remove_file(self.dir.join("members.lock"));
        let _ = std::fs::remove_dir(&self.dir);
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // A membership dropped with the join lock (a failed attach): the lock goes with
        // our descriptor of members.lock; our record as its holder goes first.
        if self.join_held.load(Ordering::Relaxed) {
            self.clear_join_holder();
        }
    }
}

impl Creating {
    /// The group being created.
    pub(crate) fn group(&self) -> &Group {
        &self.group
    }
    /// Creates and maps `admin.mem` of `len` bytes.
    pub(crate) fn create_admin_mem(&mut self, len: usize) -> Result<&SharedMemory> {
        let path = self.group.dir.join("admin.mem");
        let f = open_rw(&path, true)?;
        f.set_len(len as u64).map_err(os("sizing admin.mem"))?;
        self.group.admin_mem =
            Some(SharedMemory::from_file(f, len).map_err(os("mapping admin.mem"))?);
        Ok(self.group.admin_mem())
    }
    /// Fills in the controller facts and publishes the group (state READY, then the magic).
    pub(crate) fn publish(
        mut self,
        trid: &str,
        fill: impl FnOnce(&mut layout::SharedInfo),
    ) -> Result<Group> {
        // Nobody else maps the segment until the magic is stored below.
        let h = self.group.header_mut();
        layout::write_str(&mut h.trid, trid);
        fill(&mut h.info);
        // What joiners will check, checked here too; then this process uses the same copy.
        let at = AdminAt::from_header(h);
        let mapped = self.group.admin_mem().len() as u64;
        at.check()
            .and_then(|()| {
                (at.len == mapped)
                    .then_some(())
                    .ok_or_else(|| format!("the admin segment is {mapped} bytes, not {}", at.len))
            })
            .map_err(|why| Error::Group(format!("creating the group's admin layout: {why}")))?;
        self.group.admin_at = Some(at);
        let h = self.group.header_mut();
        h.ident.state.store(layout::READY, Ordering::Relaxed);
        h.ident.magic.store(MAGIC, Ordering::Release);
        Ok(self.group)
    }
    /// Publishes a group over NVMe/TCP (state READY, then the magic): `trid` (which starts
    /// with [`layout::FABRICS_TRID`]) names the target and subsystem every member must
    /// attach to. The controller facts (`info`) stay zero: each member has its own
    /// association's; no admin segment.
    pub(crate) fn publish_fabrics(mut self, trid: &str) -> Group {
        debug_assert!(trid.starts_with(layout::FABRICS_TRID));
        // Nobody else maps the segment until the magic is stored below.
        let h = self.group.header_mut();
        layout::write_str(&mut h.trid, trid);
        h.ident.state.store(layout::READY, Ordering::Relaxed);
        h.ident.magic.store(MAGIC, Ordering::Release);
        self.group.fabrics = true;
        self.group
    }
    /// Records where the shadow doorbell and EventIdx pages sit in `admin.mem` (before
    /// publishing; whether the group uses them is recorded later, [`Group::set_shadow_on`]).
    pub(crate) fn set_shadow_pages(&mut self, db_off: u64, ei_off: u64) {
        // Nobody else maps the segment until the magic is published.
        let h = self.group.header_mut();
        h.shadow.db_off = db_off;
        h.shadow.ei_off = ei_off;
    }
    /// Records the controller's PCI address and the IOVA slices of a `trtype:PCIe` group
    /// (before publishing).
    pub(crate) fn set_pcie(&mut self, addr: &str, slices: &[(u64, u64)]) {
        // Nobody else maps the segment until the magic is published.
        let h = self.group.header_mut();
        layout::write_str(&mut h.pci_addr, addr);
        for (dst, &(start, len)) in h.iova_slices.iter_mut().zip(slices) {
            *dst = [start, len];
        }
    }
    /// Claims this process's member record (before publishing: nobody else can look yet).
    pub(crate) fn claim(&mut self) -> Result<OwnerId> {
        self.group.claim_member()
    }
}

impl Group {
    /// Claims a member record in a live group (join lock held).
    pub(crate) fn join(&mut self) -> Result<OwnerId> {
        self.claim_member()
    }

    /// The socket on which member `index` serves the VFIO descriptors.
    pub(crate) fn member_socket(&self, index: usize) -> PathBuf {
        self.dir.join(format!("member.{index}.sock"))
    }

    /// The PCI address of the group's controller (`None`: a `trtype:sim` group).
    pub(crate) fn pci_addr(&self) -> Option<String> {
        Some(layout::read_str(&self.header().pci_addr)).filter(|s| !s.is_empty())
    }

    /// The IOVA slice `(start, len)` of member `index` in a `trtype:PCIe` group.
    pub(crate) fn member_slice(&self, index: usize) -> Option<(u64, u64)> {
        let [start, len] = *self.header().iova_slices.get(index + 1)?;
        (len != 0).then_some((start, len))
    }

    /// Starts this member's descriptor server: it hands `fds` to joining processes of our
    /// user until this process leaves the group.
    pub(crate) fn serve_fds(&self, fds: Vec<OwnedFd>) -> Result<()> {
        let path = self.member_socket(self.me().index());
        let server = fdpass::Server::start(&path, fds).map_err(os(format!(
            "serving the VFIO descriptors on {}",
            path.display()
        )))?;
        *self.server.lock().unwrap_or_else(|p| p.into_inner()) = Some(server);
        Ok(())
    }

    /// Gets `want` descriptors from a live member, trying each in turn (join lock held).
    pub(crate) fn fetch_fds(&self, want: usize) -> Result<Vec<OwnedFd>> {
        let h = self.header();
        let me = self.me.map(|m| m.index());
        let mut tried = Vec::new();
        for i in (0..MAX_MEMBERS).filter(|&i| Some(i) != me) {
            let m = &h.members[i];
            if m.state.load(Ordering::Acquire) != ACTIVE
                || !lockfile::held_by_other(&self.lockf, i as u64).unwrap_or(false)
            {
                continue;
            }
            let pid = m.pid.load(Ordering::Relaxed);
            match fdpass::fetch(&self.member_socket(i), pid, want) {
                Ok(fds) => return Ok(fds),
                Err(e) => tried.push(format!("member {i} (pid {pid}): {e}")),
            }
        }
        Err(Error::Group(format!(
            "group {}: no live member handed over the VFIO descriptors ({}); a process can join a trtype:PCIe group only while another member runs",
            self.id,
            if tried.is_empty() {
                "no live member found".to_string()
            } else {
                tried.join("; ")
            }
        )))
    }
}

/// Maps the control segment of a live group at `path` (the whole file) and checks it
/// ([`check_control`]).
fn map_control(id: u32, path: &Path, len: usize) -> Result<SharedMemory> {
    let f = open_rw(path, false)?;
    let flen = f.metadata().map_err(os("stat control"))?.len() as usize;
    if flen < std::mem::size_of::<GroupIdent>() {
        // Not even worth mapping (and mmap refuses an empty file).
        return Err(truncated(id));
    }
    let control = SharedMemory::from_file(f, flen).map_err(os("mapping the control segment"))?;
    check_control(id, &control, flen, len, path)?;
    Ok(control)
}

fn truncated(id: u32) -> Error {
    Error::Group(format!(
        "group {id}: the control segment is truncated; it was not made by this driver"
    ))
}

/// Checks a live group's control segment, a file of `flen` bytes mapped (at least
/// `min(flen, len)` bytes) in `control`, in this order: the file holds at least the identity,
/// the identity is this build's (magic, layout version, build id), and the file is exactly
/// `len` bytes, the size of this build's header. Nothing past the identity is looked at
/// before the last check passes.
fn check_control(
    id: u32,
    control: &SharedMemory,
    flen: usize,
    len: usize,
    path: &Path,
) -> Result<()> {
    if flen < std::mem::size_of::<GroupIdent>() {
        return Err(truncated(id));
    }
    let ident: &GroupIdent = control.view().ok_or_else(|| truncated(id))?;
    let magic = ident.magic.load(Ordering::Acquire);
    let version = ident.layout_version.load(Ordering::Relaxed);
    let theirs = layout::read_str(&ident.build_id);
    let ours = layout::build_id();
    if magic != MAGIC {
        return Err(Error::Group(format!(
            "group {id} is not a group of this driver, or its creator died while initialising it (magic {magic:#x})"
        )));
    }
    if version != layout::LAYOUT_VERSION || theirs != ours {
        return Err(Error::Group(format!(
            "group {id} was created by a different build of the driver and cannot be shared: it runs '{theirs}', this program is '{ours}'; rebuild both from the same source or use another group id"
        )));
    }
    if flen != len {
        return Err(Error::Group(format!(
            "group {id}: the control segment is {flen} bytes, not the {len} of this build's header although its build id matches; it was damaged (truncated?): remove {}",
            path.display()
        )));
    }
    if control.view::<GroupHeader>().is_none() {
        return Err(truncated(id));
    }
    Ok(())
}

/// The admin segment's layout from the header of group `id`: copied once, checked
/// ([`AdminAt::check`]) and compared with the length of `admin.mem`, `admin_file_len` (a
/// shorter file would fault on access; `dir` is named in the errors).
fn admin_layout(id: u32, h: &GroupHeader, admin_file_len: u64, dir: &Path) -> Result<AdminAt> {
    let at = AdminAt::from_header(h);
    at.check().map_err(|why| {
        Error::Group(format!(
            "group {id}: the admin queue layout in the control segment is invalid ({why}); it was damaged: detach every process of the group (or remove {}) so that it is created anew",
            dir.display()
        ))
    })?;
    if admin_file_len != at.len {
        return Err(Error::Group(format!(
            "group {id}: {} is {admin_file_len} bytes, not the {} the control segment says; it was damaged (truncated?): detach every process of the group (or remove {}) so that it is created anew",
            dir.join("admin.mem").display(),
            at.len,
            dir.display()
        )));
    }
    Ok(at)
}

/// A handle on the shared admin queue whose state is `state` and whose rings sit at `at` in
/// the admin segment mapping `mem`.
fn admin_queue<'a, R: nvme_core::RegisterAccess, L: nvme_core::RobustLock>(
    mem: &SharedMemory,
    state: &'a nvme_core::shared::SharedAdminState,
    lock: &'a L,
    regs: R,
    at: &AdminAt,
    me: OwnerId,
) -> Result<SharedAdminQueue<'a, R, L>> {
    // Inside the admin segment mapping, which lives as long as the group (every caller
    // holds it next to the queue); the device sees it at `at.iova` (mapped by the creator).
    let region = |off: u64, len: usize| -> Result<nvme_core::DmaRegion> {
        usize::try_from(off)
            .ok()
            .and_then(|off| mem.region(off, len, at.iova))
            .ok_or_else(|| {
                Error::Group(format!(
                    "the group's admin segment is {} bytes, too small for its layout (a part at {off:#x}+{len:#x}); detach every process of the group so that it is created anew",
                    mem.len()
                ))
            })
    };
    let entries = at.entries as usize;
    let prp_len = usize::try_from(at.prp_len).unwrap_or(usize::MAX);
    SharedAdminQueue::new(
        state,
        lock,
        regs,
        region(at.sq_off, entries * 64)?,
        region(at.cq_off, entries * 16)?,
        region(at.prp_off, prp_len)?,
        me,
    )
    .map_err(|e| Error::Group(format!("the group's shared admin queue: {e}")))
}

/// Copies the admin segment's layout from the header of group `id` once, checks it, and
/// maps `admin.mem` in `dir` after checking that the file has the size the layout says (a
/// shorter file would fault on access).
fn map_admin(id: u32, dir: &Path, h: &GroupHeader) -> Result<(AdminAt, SharedMemory)> {
    let path = dir.join("admin.mem");
    let f = open_rw(&path, false)?;
    let flen = f.metadata().map_err(os("stat admin.mem"))?.len();
    let at = admin_layout(id, h, flen, dir)?;
    // `check` made sure the length fits a usize.
    let len = usize::try_from(at.len).expect("checked");
    let mem = SharedMemory::from_file(f, len).map_err(os("mapping admin.mem"))?;
    Ok((at, mem))
}

/// The error of a wait for the join lock of group `id` that lasted `bound`.
fn join_timeout(id: u32, bound: Duration, holder: &str) -> Error {
    Error::Group(format!(
        "group {id}: waited {} ms for the group's join lock (byte {JOIN_BYTE} of members.lock, which every process joining or leaving the group takes); it is held by {holder}",
        bound.as_millis()
    ))
}

/// The state letter of process `pid` (`/proc/<pid>/stat`), `None` if it is gone.
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.trim_start()
        .chars()
        .next()
        .filter(|&c| c != 'Z' && c != 'X')
}

/// Who holds the join lock, as the header records it, and what to do about it.
fn holder(h: &GroupHeader) -> String {
    let pid = h.join_holder.load(Ordering::Acquire);
    let member = |pid: u32| {
        (0..MAX_MEMBERS)
            .find(|&i| {
                h.members[i].state.load(Ordering::Acquire) == ACTIVE
                    && h.members[i].pid.load(Ordering::Relaxed) == pid
            })
            .map(|i| format!(" (member {i})"))
            .unwrap_or_else(|| " (not a member yet: it is attaching)".into())
    };
    match (pid, process_state(pid)) {
        (0, _) | (_, None) => {
            // Not recorded (it is between taking the lock and recording itself) or gone:
            // list the members that are stopped, the likely culprits.
            let stopped: Vec<String> = (0..MAX_MEMBERS)
                .filter(|&i| h.members[i].state.load(Ordering::Acquire) == ACTIVE)
                .map(|i| h.members[i].pid.load(Ordering::Relaxed))
                .filter(|&p| matches!(process_state(p), Some('T') | Some('t')))
                .map(|p| format!("pid {p}"))
                .collect();
            if stopped.is_empty() {
                "a process the group has no record of (one in the middle of attaching or leaving); if this persists, find it with `fuser` on members.lock".into()
            } else {
                format!(
                    "a process the group has no record of; these members are stopped: {}; resume them (kill -CONT <pid>) or kill them",
                    stopped.join(", ")
                )
            }
        }
        (pid, Some(state @ ('T' | 't'))) => format!(
            "pid {pid}{}, which is stopped (state {state}: SIGSTOP, job control or a debugger): resume it (kill -CONT {pid}) or kill it (kill {pid})",
            member(pid)
        ),
        (pid, Some(state)) => format!(
            "pid {pid}{}, which is not stopped (state {state}) but has not let go: it is stuck; kill it (kill {pid}) if it does not recover",
            member(pid)
        ),
    }
}

/// [`holder`] for the group in `dir` when this process has no mapping of its control
/// segment (it is waiting to join): read from the control file if it is whole and of this
/// build (the magic is not required: its creator may be the holder, stopped before
/// publishing the group).
fn holder_in(dir: &Path) -> String {
    let unknown =
        || "a process this one cannot name (the group has no readable control segment)".to_string();
    let path = dir.join("control");
    let Ok(f) = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(&path)
    else {
        return unknown();
    };
    let len = control_len();
    if f.metadata().map(|m| m.len()).ok() != Some(len as u64) {
        return unknown();
    }
    let Ok(control) = SharedMemory::from_file(f, len) else {
        return unknown();
    };
    let Some(h) = control.view::<GroupHeader>() else {
        return unknown();
    };
    if h.ident.layout_version.load(Ordering::Relaxed) != layout::LAYOUT_VERSION
        || layout::read_str(&h.ident.build_id) != layout::build_id()
    {
        return unknown();
    }
    holder(h)
}

/// Removes the descriptor sockets of earlier members (join lock held).
fn remove_member_sockets(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("member.") && name.ends_with(".sock") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Entry points for the fuzz targets (`fuzz/`, feature `fuzzing`): the checks a joining
/// process does on a group's files, run on bytes instead of files.
#[cfg(feature = "fuzzing")]
pub mod fuzzing {
    use super::*;
    use crate::memory::Backing;
    use std::cell::RefCell;

    /// Largest admin segment the fuzz entry lays out (a larger one is only checked).
    const MAX_ADMIN: usize = 1 << 20;

    /// A device that ignores doorbells.
    struct NoDevice;
    impl nvme_core::RegisterAccess for NoDevice {
        fn read32(&self, _: usize) -> u32 {
            0
        }
        fn write32(&self, _: usize, _: u32) {}
    }

    /// What a process joining a group does with its files, on bytes: `control` is the
    /// control file (its length is the file's); with `stamp`, its identity (magic, layout
    /// version, build id) is first overwritten with this build's, so that the checks behind
    /// it are reached. If [`check_control`] accepts it, [`admin_layout`] checks the admin
    /// segment it describes against an `admin.mem` of `admin_file_len` bytes holding `admin`
    /// (zero-padded), and if that passes too (and the segment is at most 1 MiB), the shared
    /// admin queue is built over the header's shared state and the segment, as
    /// [`Group::admin_at`] does (with the in-process lock instead of the header's robust
    /// mutex, which holds arbitrary bytes here), joined, polled and reaped; the namespace
    /// record is read as a joiner reads it. Returns the error a joining process would
    /// report.
    pub fn join_checks(
        control: &[u8],
        stamp: bool,
        admin: &[u8],
        admin_file_len: u64,
    ) -> Result<()> {
        thread_local! {
            static MEM: RefCell<Option<(SharedMemory, SharedMemory)>> = const { RefCell::new(None) };
        }
        MEM.with(|m| {
            let mut m = m.borrow_mut();
            let (cmem, amem) = m.get_or_insert_with(|| {
                (
                    SharedMemory::with_backing("fuzz-control", control_len(), Backing::Shared)
                        .expect("memfd"),
                    SharedMemory::with_backing("fuzz-admin", MAX_ADMIN, Backing::Shared)
                        .expect("memfd"),
                )
            });
            let bytes = cmem.bytes_mut();
            bytes.fill(0);
            let n = control.len().min(bytes.len());
            bytes[..n].copy_from_slice(&control[..n]);
            if stamp {
                if let Some(h) = cmem.view_mut::<GroupIdent>() {
                    h.magic.store(MAGIC, Ordering::Relaxed);
                    h.layout_version
                        .store(layout::LAYOUT_VERSION, Ordering::Relaxed);
                    layout::write_str(&mut h.build_id, &layout::build_id());
                }
            }
            let path = Path::new("/fuzz/control");
            check_control(1, cmem, control.len(), control_len(), path)?;
            let h: &GroupHeader = cmem.view().expect("checked");
            // The namespace record, as a joiner and the monitor read it (its writer dead:
            // no waiting for it).
            let dead = |_| false;
            let _ = nsrecord::needs_refresh(&h.namespaces, dead, |at| at > 7);
            if let Ok(list) = nsrecord::read_record(&h.namespaces, dead, |at| at > 7) {
                for (nsid, id) in list {
                    let _ = crate::namespace::Namespace::from_identify(nsid, id);
                }
            }
            let at = admin_layout(1, h, admin_file_len, path)?;
            if at.len > MAX_ADMIN as u64 {
                return Ok(());
            }
            // The segment is `at.len` bytes (every part lies inside them, checked).
            let abytes = &mut amem.bytes_mut()[..at.len as usize];
            abytes.fill(0);
            let n = admin.len().min(abytes.len());
            abytes[..n].copy_from_slice(&admin[..n]);
            let lock = nvme_core::hal::InProcessLock::new(());
            let q = admin_queue(amem, &h.admin, &lock, NoDevice, &at, OwnerId::new(0, 1))?;
            let _ = q.join();
            let _ = q.submit(nvme_core::Command::identify(1, 0, 0), None, 7);
            q.poll(true, |_, _| {});
            q.reap();
            let _ = q.recover();
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("nvme-group-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A control file of `flen` bytes whose identity is this build's (magic included).
    fn control_file(path: &Path, flen: usize) {
        let f = open_rw(path, true).unwrap();
        f.set_len(flen.max(control_len()) as u64).unwrap();
        let mut m = SharedMemory::from_file(f, control_len()).unwrap();
        let h: &mut GroupHeader = m.view_mut().unwrap();
        h.ident
            .layout_version
            .store(layout::LAYOUT_VERSION, Ordering::Relaxed);
        layout::write_str(&mut h.ident.build_id, &layout::build_id());
        h.ident.magic.store(MAGIC, Ordering::Release);
        drop(m);
        open_rw(path, false).unwrap().set_len(flen as u64).unwrap();
    }

    #[test]
    fn the_control_file_is_checked_before_it_is_trusted() {
        let d = tmp("control");
        let path = d.join("control");
        let len = control_len();
        control_file(&path, len);
        let m = map_control(7, &path, len).unwrap();
        let h: &GroupHeader = m.view().unwrap();
        assert_eq!(layout::read_str(&h.ident.build_id), layout::build_id());

        // Shorter than the identity: refused before mapping.
        open_rw(&path, false).unwrap().set_len(100).unwrap();
        let e = map_control(7, &path, len).unwrap_err().to_string();
        assert!(e.contains("the control segment is truncated"), "{e}");

        // The identity, but not the whole header: refused, and said so.
        control_file(&path, 4096);
        let e = map_control(7, &path, len).unwrap_err().to_string();
        assert!(e.contains("is 4096 bytes, not the"), "{e}");

        // Another build.
        control_file(&path, len);
        let mut m = SharedMemory::from_file(open_rw(&path, false).unwrap(), len).unwrap();
        let h: &mut GroupHeader = m.view_mut().unwrap();
        layout::write_str(&mut h.ident.build_id, "another build");
        drop(m);
        let e = map_control(7, &path, len).unwrap_err().to_string();
        assert!(e.contains("created by a different build"), "{e}");
        assert!(e.contains("it runs 'another build'"), "{e}");

        // No magic.
        std::fs::remove_file(&path).unwrap();
        open_rw(&path, true).unwrap().set_len(len as u64).unwrap();
        let e = map_control(7, &path, len).unwrap_err().to_string();
        assert!(e.contains("is not a group of this driver"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_admin_layout_is_checked_with_checked_arithmetic() {
        let good = AdminAt {
            iova: 1 << 30,
            len: 3 * 4096,
            entries: 64,
            sq_off: 0,
            cq_off: 4096,
            prp_off: 8192,
            prp_len: 4096,
            page: 4096,
            shadow_db_off: 3 * 4096,
            shadow_ei_off: 4 * 4096,
            shadow_on: 1,
        };
        let good = AdminAt {
            len: 5 * 4096,
            ..good
        };
        good.check().unwrap();
        let bad = |f: fn(&mut AdminAt), want: &str| {
            let mut at = good;
            f(&mut at);
            let e = at.check().unwrap_err();
            assert!(e.contains(want), "{e}");
        };
        bad(|a| a.entries = 0, "0 admin queue entries");
        bad(|a| a.entries = 100_000, "not in 2..=");
        bad(|a| a.len = 0, "an admin segment of 0 bytes");
        bad(|a| a.iova = u64::MAX - 4095, "wraps around");
        bad(|a| a.sq_off = !0xfffu64, "the submission ring at");
        bad(
            |a| a.cq_off = 5 * 4096,
            "the completion ring at 0x5000+0x400 is not inside",
        );
        bad(
            |a| a.shadow_ei_off = u64::MAX - 4095,
            "the EventIdx page at 0xfffffffffffff000+0x1000 is not inside",
        );
        bad(
            |a| a.shadow_db_off = 5 * 4096,
            "the shadow doorbell page at 0x5000+0x1000 is not inside",
        );
        bad(|a| a.shadow_db_off = 100, "not 4 KiB aligned");
        bad(|a| a.page = 0, "a controller memory page of 0x0 bytes");
        bad(|a| a.page = 3 * 4096, "a controller memory page of 0x3000");
        bad(
            |a| {
                a.page = 8192;
                a.len = 8 * 4096;
                a.shadow_db_off = 5 * 4096;
                a.shadow_ei_off = 6 * 4096;
            },
            "the shadow doorbell page at device address 0x40005000 is not aligned",
        );
        bad(
            |a| a.shadow_ei_off = 2 * 4096,
            "the PRP list pages and the EventIdx page overlap",
        );
        bad(
            |a| a.shadow_ei_off = 3 * 4096,
            "the shadow doorbell page and the EventIdx page overlap",
        );
        bad(|a| a.shadow_on = 2, "shadow doorbells recorded as 2");
        // Off: the pages are not looked at.
        AdminAt {
            shadow_on: 0,
            page: 0,
            shadow_db_off: u64::MAX,
            ..good
        }
        .check()
        .unwrap();
        bad(|a| a.prp_len = u64::MAX, "the PRP list pages at");
        bad(|a| a.prp_len = 0, "the PRP list pages at");
        bad(|a| a.cq_off = 100, "not 4 KiB aligned");
        bad(
            |a| a.cq_off = 0,
            "the submission ring and the completion ring overlap",
        );
        bad(
            |a| a.prp_off = 4096,
            "the completion ring and the PRP list pages overlap",
        );
    }

    #[test]
    fn a_short_mapping_has_no_header_view() {
        let m =
            SharedMemory::with_backing("control", 4096, crate::memory::Backing::Shared).unwrap();
        assert!(m.view::<GroupHeader>().is_none());
        assert!(m.view::<GroupIdent>().is_some());
    }
}
