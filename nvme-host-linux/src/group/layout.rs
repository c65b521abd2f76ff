//! The control segment: one `#[repr(C)]` header per group, shared by every member. It holds
//! no pointers: memory is named by file (in the group directory) and offset, or by IOVA.
//!
//! The layout is fixed at compile time: the size and offset of every field are asserted
//! below, so a change to it (here or in `nvme-core`'s shared admin state) fails the build
//! until [`LAYOUT_VERSION`] and the assertions are updated together. At run time the magic,
//! the layout version and the build id still refuse a group made by another build.
//!
//! Processes reach the header through `memory::Mapping::view` (length and alignment checked,
//! `memory::SharedView`), never through pointer casts.

use std::mem::{align_of, offset_of, size_of};
use std::sync::atomic::{AtomicU32, AtomicU64};

use nvme_core::shared::{SharedAdminState, MAX_MEMBERS};

use super::robust::RobustMutex;

/// "NVMERSG1".
pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"NVMERSG1");
/// Changes whenever the layout below changes.
pub(crate) const LAYOUT_VERSION: u32 = 5;
/// How the recorded transport id (`GroupHeader::trid`) of a group over NVMe/TCP starts: such
/// a group has no admin segment (`admin.mem`), and its `SharedInfo` is zero (each member
/// has its own association's facts).
pub(crate) const FABRICS_TRID: &str = "trtype:TCP ";
/// Largest I/O queue id tracked.
pub(crate) const MAX_QID: usize = 1024;

/// Group states.
pub(crate) const INITIALIZING: u32 = 1;
pub(crate) const READY: u32 = 2;

/// Member record states.
pub(crate) const FREE: u32 = 0;
pub(crate) const ACTIVE: u32 = 1;

/// One member slot.
#[repr(C)]
pub(crate) struct Member {
    pub(crate) state: AtomicU32,
    pub(crate) epoch: AtomicU32,
    pub(crate) pid: AtomicU32,
    pub(crate) _pad: u32,
}

/// What the process that brought the controller up learned, for the others.
#[repr(C)]
pub(crate) struct SharedInfo {
    pub(crate) cap: u64,
    pub(crate) max_transfer: u64,
    pub(crate) vs: u32,
    pub(crate) page_size: u32,
    pub(crate) granted_sq: u16,
    pub(crate) granted_cq: u16,
    pub(crate) admin_entries: u32,
    /// Admin rings and PRP lists: offsets into `admin.mem` and its IOVA.
    pub(crate) admin_iova: u64,
    pub(crate) admin_len: u64,
    pub(crate) sq_off: u64,
    pub(crate) cq_off: u64,
    pub(crate) prp_off: u64,
    pub(crate) prp_len: u64,
    pub(crate) identify: [u8; 4096],
    pub(crate) namespaces: [u8; 4096],
}

/// The shadow doorbell and EventIdx pages (Doorbell Buffer Config) in `admin.mem`.
#[repr(C)]
pub(crate) struct ShadowInfo {
    /// Offset in `admin.mem` of the shadow doorbell page (one controller page,
    /// `SharedInfo::page_size`); written by the creator before it publishes the group.
    pub(crate) db_off: u64,
    /// Offset of the EventIdx page.
    pub(crate) ei_off: u64,
    /// 1 when the controller was given the pages: every member's I/O queues use them; 0:
    /// MMIO doorbells. Stored by the creator before any other process can join (join lock
    /// held); a member reads it once, when it joins.
    pub(crate) on: AtomicU32,
    pub(crate) _pad: u32,
}

/// Entries of the group's table of LBA range leases.
pub(crate) const MAX_LEASES: usize = 256;

/// Lease entry states (`LeaseEntry::state`); any other value counts as free.
pub(crate) const LEASE_FREE: u32 = 0;
pub(crate) const LEASE_HELD: u32 = 1;

/// One LBA range lease (`crate::Lease`). Written only under `LeaseTable::mutex`: every field
/// first, `state` last (release), so that a holder of the lock that dies half-way leaves
/// the entry free or whole. Freed by a store of `state` alone.
#[repr(C)]
pub(crate) struct LeaseEntry {
    pub(crate) state: AtomicU32,
    /// `OwnerId::raw` of the member holding it; the lease is free once that member is dead.
    pub(crate) owner: AtomicU32,
    /// The holder's pid (for messages only).
    pub(crate) pid: AtomicU32,
    pub(crate) nsid: AtomicU32,
    /// `crate::LeaseMode` as a number: 1 exclusive, 2 shared (anything else: exclusive).
    pub(crate) mode: AtomicU32,
    pub(crate) _pad: u32,
    /// First LBA and number of blocks.
    pub(crate) start: AtomicU64,
    pub(crate) count: AtomicU64,
    /// The holder's process name (`/proc/self/comm`, NUL-padded, 16 bytes little-endian).
    pub(crate) comm: [AtomicU64; 2],
}

/// The group's LBA range leases: claims and releases take `mutex`; nothing on the I/O path
/// reads the table (each process checks its writes against its private copy).
#[repr(C)]
pub(crate) struct LeaseTable {
    /// Robust, process-shared: a holder that dies is recovered from (`EOWNERDEAD`).
    pub(crate) mutex: RobustMutex,
    pub(crate) entries: [LeaseEntry; MAX_LEASES],
}

/// Namespaces the group's namespace record keeps (their Identify Namespace data, 4 KiB
/// each); a controller with more active namespaces is recorded as [`NS_TOO_MANY`] and its
/// joiners send Identify.
pub(crate) const MAX_RECORD_NAMESPACES: usize = 32;
/// Words (`u64`) of one namespace's Identify Namespace data in the record.
pub(crate) const NS_IDENTIFY_WORDS: usize = 4096 / 8;
/// `NamespaceRecord::count` when the record holds no list: a member is changing the
/// namespaces, or the last refresh failed (joiners send Identify; the group's monitor
/// refreshes it).
pub(crate) const NS_NO_LIST: u32 = u32::MAX;
/// `NamespaceRecord::count` when the controller has more active namespaces than the record
/// keeps: a valid state (joiners send Identify), refreshed only after a change.
pub(crate) const NS_TOO_MANY: u32 = u32::MAX - 1;

/// The group's list of active namespaces with their Identify Namespace data, so that a
/// joining process need not send 1 + N Identify commands (`group::nsrecord`).
///
/// A seqlock: a writer holds `mutex`, stores an odd `generation` (and itself as `writer`),
/// the list, then the next even generation; a reader takes no lock and uses what it read
/// only when the generation was the same even value before and after. Generation 0: never
/// written. A writer that dies mid-update leaves the generation odd: readers check that the
/// writer is alive and fall back to Identify; the next holder of `mutex` (it gets
/// `EOWNERDEAD`) rewrites it.
#[repr(C)]
pub(crate) struct NamespaceRecord {
    /// Robust, process-shared: held by a writer, and by a member across a command that
    /// changes namespaces (Format NVM, Namespace Management and Attachment).
    pub(crate) mutex: RobustMutex,
    pub(crate) generation: AtomicU64,
    /// `OwnerId::raw` of the member that last stored an odd generation.
    pub(crate) writer: AtomicU32,
    /// Its pid (for messages only).
    pub(crate) writer_pid: AtomicU32,
    /// Namespaces in the list (at most [`MAX_RECORD_NAMESPACES`]), or [`NS_NO_LIST`] or
    /// [`NS_TOO_MANY`].
    pub(crate) count: AtomicU32,
    pub(crate) _pad: u32,
    /// The group's asynchronous event count (`SharedAdminState::events_seq`) read before
    /// the list was identified: a Namespace Attribute Changed notice recorded at or after
    /// it makes the list stale.
    pub(crate) events_at: AtomicU64,
    /// Active NSIDs, ascending.
    pub(crate) nsids: [AtomicU32; MAX_RECORD_NAMESPACES],
    /// Identify Namespace data of each, in the order of `nsids` (little-endian words).
    pub(crate) identify: [[AtomicU64; NS_IDENTIFY_WORDS]; MAX_RECORD_NAMESPACES],
}

/// The identity at the start of the control segment: what a joining process checks before
/// it trusts anything else (or even the segment's size). Its layout never changes.
#[repr(C)]
pub(crate) struct GroupIdent {
    /// [`MAGIC`], stored last (release) when the group is ready.
    pub(crate) magic: AtomicU64,
    pub(crate) layout_version: AtomicU32,
    pub(crate) state: AtomicU32,
    /// NUL-padded build id of the creating process.
    pub(crate) build_id: [u8; 128],
}

/// The control segment.
#[repr(C)]
pub(crate) struct GroupHeader {
    /// Magic, layout version, state and build id.
    pub(crate) ident: GroupIdent,
    /// NUL-padded transport id the group was created with.
    pub(crate) trid: [u8; 256],
    pub(crate) epochs: AtomicU32,
    /// Pid of the process holding the join lock (0: none recorded). Written by the holder
    /// right after it takes the lock and cleared before it lets go, so a process that
    /// times out waiting for the lock can name the holder (an OFD lock has no owner pid).
    pub(crate) join_holder: AtomicU32,
    pub(crate) info: SharedInfo,
    /// The group lock (robust, process-shared): guards the admin queue.
    pub(crate) mutex: RobustMutex,
    pub(crate) members: [Member; MAX_MEMBERS],
    /// Owner id of each I/O queue id (0 = free).
    pub(crate) qids: [AtomicU32; MAX_QID + 1],
    pub(crate) admin: SharedAdminState,
    /// NUL-padded PCI address of the controller (`trtype:PCIe`; empty for `trtype:sim`).
    pub(crate) pci_addr: [u8; 32],
    /// `trtype:PCIe`: the IOVA slices `[start, len]` of the shared VFIO container: slice 0
    /// holds the admin segment, slice `i + 1` belongs to member `i`. Zero for `trtype:sim`.
    pub(crate) iova_slices: [[u64; 2]; MAX_MEMBERS + 1],
    /// Shadow doorbells: where their pages are, and whether the group uses them.
    pub(crate) shadow: ShadowInfo,
    /// LBA range leases (`crate::Lease`).
    pub(crate) leases: LeaseTable,
    /// The active namespaces, for joining processes.
    pub(crate) namespaces: NamespaceRecord,
}

/// Sizes and offsets of the layout (version [`LAYOUT_VERSION`]), in bytes.
const SHARED_INFO_SIZE: usize = 8272;
const ADMIN_STATE_SIZE: usize = 31872;
const MEMBERS_OFFSET: usize = 8744;
const ADMIN_OFFSET: usize = 13872;
const SHADOW_OFFSET: usize = 46816;
const LEASES_OFFSET: usize = SHADOW_OFFSET + 24;
const LEASE_ENTRY_SIZE: usize = 56;
const NS_RECORD_OFFSET: usize = LEASES_OFFSET + 64 + LEASE_ENTRY_SIZE * MAX_LEASES;
const NS_RECORD_SIZE: usize = 96 + 4 * MAX_RECORD_NAMESPACES + 4096 * MAX_RECORD_NAMESPACES;
const HEADER_SIZE: usize = NS_RECORD_OFFSET + NS_RECORD_SIZE;

// The layout, asserted. Sizes and offsets in bytes (x86_64 and every other 64-bit Linux
// target: u64 and the atomics are 8-aligned).
const _: () = {
    assert!(size_of::<GroupIdent>() == 144 && align_of::<GroupIdent>() == 8);
    assert!(offset_of!(GroupIdent, magic) == 0);
    assert!(offset_of!(GroupIdent, layout_version) == 8);
    assert!(offset_of!(GroupIdent, state) == 12);
    assert!(offset_of!(GroupIdent, build_id) == 16);

    assert!(size_of::<Member>() == 16);
    assert!(offset_of!(Member, state) == 0);
    assert!(offset_of!(Member, epoch) == 4);
    assert!(offset_of!(Member, pid) == 8);

    assert!(size_of::<SharedInfo>() == SHARED_INFO_SIZE);
    assert!(offset_of!(SharedInfo, cap) == 0);
    assert!(offset_of!(SharedInfo, max_transfer) == 8);
    assert!(offset_of!(SharedInfo, vs) == 16);
    assert!(offset_of!(SharedInfo, page_size) == 20);
    assert!(offset_of!(SharedInfo, granted_sq) == 24);
    assert!(offset_of!(SharedInfo, granted_cq) == 26);
    assert!(offset_of!(SharedInfo, admin_entries) == 28);
    assert!(offset_of!(SharedInfo, admin_iova) == 32);
    assert!(offset_of!(SharedInfo, admin_len) == 40);
    assert!(offset_of!(SharedInfo, sq_off) == 48);
    assert!(offset_of!(SharedInfo, cq_off) == 56);
    assert!(offset_of!(SharedInfo, prp_off) == 64);
    assert!(offset_of!(SharedInfo, prp_len) == 72);
    assert!(offset_of!(SharedInfo, identify) == 80);
    assert!(offset_of!(SharedInfo, namespaces) == 80 + 4096);

    assert!(size_of::<ShadowInfo>() == 24 && align_of::<ShadowInfo>() == 8);
    assert!(offset_of!(ShadowInfo, db_off) == 0);
    assert!(offset_of!(ShadowInfo, ei_off) == 8);
    assert!(offset_of!(ShadowInfo, on) == 16);

    assert!(size_of::<RobustMutex>() == 64 && align_of::<RobustMutex>() == 8);
    assert!(size_of::<SharedAdminState>() == ADMIN_STATE_SIZE);

    assert!(align_of::<GroupHeader>() == 8);
    assert!(offset_of!(GroupHeader, ident) == 0);
    assert!(offset_of!(GroupHeader, trid) == 144);
    assert!(offset_of!(GroupHeader, epochs) == 400);
    assert!(offset_of!(GroupHeader, join_holder) == 404);
    assert!(offset_of!(GroupHeader, info) == 408);
    assert!(offset_of!(GroupHeader, mutex) == 408 + SHARED_INFO_SIZE);
    assert!(offset_of!(GroupHeader, members) == MEMBERS_OFFSET);
    assert!(offset_of!(GroupHeader, qids) == MEMBERS_OFFSET + 16 * MAX_MEMBERS);
    assert!(offset_of!(GroupHeader, admin) == ADMIN_OFFSET);
    assert!(offset_of!(GroupHeader, pci_addr) == ADMIN_OFFSET + ADMIN_STATE_SIZE);
    assert!(offset_of!(GroupHeader, iova_slices) == ADMIN_OFFSET + ADMIN_STATE_SIZE + 32);
    assert!(offset_of!(GroupHeader, shadow) == SHADOW_OFFSET);
    assert!(SHADOW_OFFSET == ADMIN_OFFSET + ADMIN_STATE_SIZE + 32 + 16 * (MAX_MEMBERS + 1));
    assert!(size_of::<LeaseEntry>() == LEASE_ENTRY_SIZE && align_of::<LeaseEntry>() == 8);
    assert!(offset_of!(LeaseEntry, state) == 0);
    assert!(offset_of!(LeaseEntry, owner) == 4);
    assert!(offset_of!(LeaseEntry, pid) == 8);
    assert!(offset_of!(LeaseEntry, nsid) == 12);
    assert!(offset_of!(LeaseEntry, mode) == 16);
    assert!(offset_of!(LeaseEntry, start) == 24);
    assert!(offset_of!(LeaseEntry, count) == 32);
    assert!(offset_of!(LeaseEntry, comm) == 40);
    assert!(offset_of!(LeaseTable, mutex) == 0);
    assert!(offset_of!(LeaseTable, entries) == 64);
    assert!(offset_of!(GroupHeader, leases) == LEASES_OFFSET);
    assert!(size_of::<NamespaceRecord>() == NS_RECORD_SIZE);
    assert!(align_of::<NamespaceRecord>() == 8);
    assert!(offset_of!(NamespaceRecord, mutex) == 0);
    assert!(offset_of!(NamespaceRecord, generation) == 64);
    assert!(offset_of!(NamespaceRecord, writer) == 72);
    assert!(offset_of!(NamespaceRecord, writer_pid) == 76);
    assert!(offset_of!(NamespaceRecord, count) == 80);
    assert!(offset_of!(NamespaceRecord, events_at) == 88);
    assert!(offset_of!(NamespaceRecord, nsids) == 96);
    assert!(offset_of!(NamespaceRecord, identify) == 96 + 4 * MAX_RECORD_NAMESPACES);
    assert!(offset_of!(GroupHeader, namespaces) == NS_RECORD_OFFSET);
    assert!(NS_RECORD_OFFSET == 61240);
    assert!(size_of::<GroupHeader>() == HEADER_SIZE);
};

/// Byte offsets in `members.lock`: one per member, then the role locks.
pub(crate) const JOIN_BYTE: u64 = 1000;
pub(crate) const PRIMARY_BYTE: u64 = 1001;
/// Serialises changes to the function's interrupt (MSI-X) set-up across members.
pub(crate) const INTERRUPT_BYTE: u64 = 1002;

/// The build id: a process whose id differs is refused.
pub(crate) fn build_id() -> String {
    if let Ok(forced) = std::env::var("NVME_TEST_BUILD_ID") {
        // Test hook: lets the test suite start a process that looks like another build.
        return forced;
    }
    format!(
        "nvme-host-linux {} ({}) layout {} header {}",
        env!("CARGO_PKG_VERSION"),
        env!("NVME_BUILD_GIT"),
        LAYOUT_VERSION,
        std::mem::size_of::<GroupHeader>()
    )
}

/// Reads a NUL-padded string field.
pub(crate) fn read_str(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Writes a NUL-padded string field (truncating).
pub(crate) fn write_str(b: &mut [u8], s: &str) {
    b.fill(0);
    let n = s.len().min(b.len() - 1);
    b[..n].copy_from_slice(&s.as_bytes()[..n]);
}
