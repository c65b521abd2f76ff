//! The control segment: one `#[repr(C)]` header per group, shared by every member. It holds
//! no pointers: memory is named by file (in the group directory) and offset, or by IOVA.

use std::sync::atomic::{AtomicU32, AtomicU64};

use nvme_core::shared::{SharedAdminState, MAX_MEMBERS};

use super::robust::MutexStorage;

/// "NVMERSG1".
pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"NVMERSG1");
/// Changes whenever the layout below changes.
pub(crate) const LAYOUT_VERSION: u32 = 1;
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

/// The control segment.
#[repr(C)]
pub(crate) struct GroupHeader {
    /// [`MAGIC`], stored last (release) when the group is ready.
    pub(crate) magic: AtomicU64,
    pub(crate) layout_version: AtomicU32,
    pub(crate) state: AtomicU32,
    /// NUL-padded build id of the creating process.
    pub(crate) build_id: [u8; 128],
    /// NUL-padded transport id the group was created with.
    pub(crate) trid: [u8; 256],
    pub(crate) epochs: AtomicU32,
    pub(crate) _pad: u32,
    pub(crate) info: SharedInfo,
    /// The group lock (robust, process-shared): guards the admin queue.
    pub(crate) mutex: MutexStorage,
    pub(crate) members: [Member; MAX_MEMBERS],
    /// Owner id of each I/O queue id (0 = free).
    pub(crate) qids: [AtomicU32; MAX_QID + 1],
    pub(crate) admin: SharedAdminState,
    /// NUL-padded PCI address of the controller (`trtype:PCIe`; empty for `trtype:sim`).
    pub(crate) pci_addr: [u8; 32],
    /// `trtype:PCIe`: the IOVA slices `[start, len]` of the shared VFIO container: slice 0
    /// holds the admin segment, slice `i + 1` belongs to member `i`. Zero for `trtype:sim`.
    pub(crate) iova_slices: [[u64; 2]; MAX_MEMBERS + 1],
}

/// Byte offsets in `members.lock`: one per member, then the role locks.
pub(crate) const JOIN_BYTE: u64 = 1000;
pub(crate) const PRIMARY_BYTE: u64 = 1001;

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
