//! Namespaces: what Identify Namespace said at attach.

use nvme_regs::identify::IdentifyNamespace;

/// An active namespace.
#[derive(Clone, Debug)]
pub struct Namespace {
    id: u32,
    block_size: u32,
    blocks: u64,
    identify: Box<IdentifyNamespace>,
}

impl Namespace {
    /// Namespace id.
    pub fn id(&self) -> u32 {
        self.id
    }
    /// Logical block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }
    /// Size in logical blocks (NSZE).
    pub fn blocks(&self) -> u64 {
        self.blocks
    }
    /// Size in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.blocks * self.block_size as u64
    }
    /// The Identify Namespace data read at attach or by the latest rescan (in a
    /// shared-memory group, possibly read by another process, which recorded it for the
    /// group): fields that change with use, such as NUSE, are as of that read;
    /// [`Controller::identify_namespace`](crate::Controller::identify_namespace) reads
    /// them now.
    pub fn identify(&self) -> &IdentifyNamespace {
        &self.identify
    }
}

impl Namespace {
    /// A namespace from its Identify data; `None` when it has no blocks or no block size
    /// (inactive or unusable).
    pub(crate) fn from_identify(id: u32, identify: IdentifyNamespace) -> Option<Namespace> {
        let block_size = identify.block_size();
        if identify.nsze == 0 || block_size == 0 {
            return None;
        }
        Some(Namespace {
            id,
            block_size,
            blocks: identify.nsze,
            identify: Box::new(identify),
        })
    }
}

/// The active NSIDs (Identify CNS 02h, page after page of 1024) and their Identify
/// Namespace data, read with `read` (an admin command reading 4096 bytes). Namespaces
/// without blocks or block size are left out.
pub(crate) fn identify_active(
    mut read: impl FnMut(nvme_core::Command) -> crate::Result<Vec<u8>>,
) -> crate::Result<Vec<Namespace>> {
    use nvme_regs::identify::{cns, NamespaceList, NAMESPACE_LIST_LEN};
    use zerocopy::FromBytes;
    let mut ids = Vec::new();
    let mut from = 0u32;
    loop {
        let b = read(nvme_core::Command::identify(
            cns::ACTIVE_NAMESPACE_LIST,
            from,
            0,
        ))?;
        let list = NamespaceList::read_from_bytes(&b).expect("4096 bytes");
        let page: Vec<u32> = list.iter().collect();
        // Ascending and above `from`, or the controller misbehaves: stop there.
        let valid = page.windows(2).all(|w| w[0] < w[1]) && page.first().is_none_or(|&f| f > from);
        if !valid {
            return Err(crate::Error::Invalid(format!(
                "the controller's active namespace list after NSID {from} is not ascending: {page:?}"
            )));
        }
        ids.extend_from_slice(&page);
        match page.last() {
            Some(&last) if page.len() == NAMESPACE_LIST_LEN && last < 0xffff_fffe => from = last,
            _ => break,
        }
    }
    let mut out = Vec::with_capacity(ids.len());
    for nsid in ids {
        let b = read(nvme_core::Command::identify(cns::NAMESPACE, nsid, 0))?;
        let id = IdentifyNamespace::read_from_bytes(&b).expect("4096 bytes");
        out.extend(Namespace::from_identify(nsid, id));
    }
    Ok(out)
}

/// A group member's namespaces at attach: the group's record when it is usable
/// (`group::nsrecord`), otherwise [`identify_active`] with `read` (an admin command reading
/// 4096 bytes), whose result is recorded for the next joiners when the record's lock is
/// free.
pub(crate) fn for_member(
    group: &crate::group::Group,
    regs: &crate::mmio::Mmio,
    mut read: impl FnMut(nvme_core::Command) -> crate::Result<Vec<u8>>,
) -> crate::Result<Vec<Namespace>> {
    let why = match group.read_namespace_record(regs) {
        Ok(list) => return Ok(list),
        Err(why) => why,
    };
    let lock = group.try_lock_namespace_record();
    if lock.is_some() && why == crate::group::nsrecord::Unusable::Stale {
        // Replacing a list a notice made stale: read the Changed Namespace List, which
        // lets the controller send the next notice.
        let _ = read(changed_namespace_list());
    }
    identify_recorded(group, lock.as_ref(), read)
}

/// Get Log Page of the Changed Namespace List (4096 bytes), which also re-enables the
/// Namespace Attribute Changed notice on the controller.
pub(crate) fn changed_namespace_list() -> nvme_core::Command {
    use nvme_regs::log::lid;
    nvme_core::Command::get_log_page(lid::CHANGED_NAMESPACES, u32::MAX, 4096, 0)
}

/// [`identify_active`]; holding the group's namespace record lock (`lock`), also records
/// the result in the group (or empties the record when it failed).
pub(crate) fn identify_recorded(
    group: &crate::group::Group,
    lock: Option<&crate::group::nsrecord::RecordLock<'_>>,
    read: impl FnMut(nvme_core::Command) -> crate::Result<Vec<u8>>,
) -> crate::Result<Vec<Namespace>> {
    // Read first: a notice recorded from now on may be about a change the list misses.
    let events_at = group.events_seq();
    let r = identify_active(read);
    match (lock, &r) {
        (Some(lock), Ok(list)) => lock.publish(events_at, list),
        (Some(lock), Err(_)) => lock.invalidate(),
        (None, _) => {}
    }
    r
}

/// A controller's namespaces as last identified, and every earlier list.
///
/// Format NVM, Namespace Management and Attachment change the namespaces under an attached
/// controller; a rescan ([`crate::Controller::rescan_namespaces`]) appends the new list.
/// Lists are never dropped while the controller is attached, so that the `&[Namespace]`
/// and `&Namespace` the controller hands out stay valid: each rescan that finds a change
/// keeps one more list (a few KiB per namespace) until the controller detaches.
pub(crate) struct NamespaceTable {
    first: Snapshot,
    /// Serialises the appenders.
    update: std::sync::Mutex<()>,
}

struct Snapshot {
    list: std::sync::Arc<[Namespace]>,
    next: std::sync::OnceLock<Box<Snapshot>>,
}

impl NamespaceTable {
    /// The table with its first list.
    pub(crate) fn new(list: Vec<Namespace>) -> NamespaceTable {
        NamespaceTable {
            first: Snapshot {
                list: list.into(),
                next: std::sync::OnceLock::new(),
            },
            update: std::sync::Mutex::new(()),
        }
    }

    fn last(&self) -> &Snapshot {
        let mut s = &self.first;
        while let Some(n) = s.next.get() {
            s = n;
        }
        s
    }

    /// The newest list.
    pub(crate) fn current(&self) -> &std::sync::Arc<[Namespace]> {
        &self.last().list
    }

    /// Makes `list` the newest unless it equals it (same NSIDs and Identify data); returns
    /// whether it changed.
    pub(crate) fn update(&self, list: Vec<Namespace>) -> bool {
        let _serial = crate::controller::lock(&self.update);
        let last = self.last();
        let same = last.list.len() == list.len()
            && last
                .list
                .iter()
                .zip(&list)
                .all(|(a, b)| a.id == b.id && a.identify == b.identify);
        if same {
            return false;
        }
        let next = Box::new(Snapshot {
            list: list.into(),
            next: std::sync::OnceLock::new(),
        });
        // The last snapshot has no successor: appenders are serialised.
        last.next.set(next).is_ok()
    }
}

/// A namespace of `nsze` blocks of `1 << lbads` bytes, for tests; the last vendor-specific
/// byte of its Identify data is the NSID's low byte.
#[cfg(test)]
pub(crate) fn test_namespace(id: u32, lbads: u8, nsze: u64) -> Namespace {
    use zerocopy::FromZeros;
    let mut i = IdentifyNamespace::new_zeroed();
    i.nsze = nsze;
    i.lbaf[0].lbads = lbads;
    i.vs[3711] = id as u8;
    Namespace::from_identify(id, i).expect("blocks and a block size")
}

#[cfg(test)]
mod tests {
    use super::test_namespace as ns;
    use super::*;

    #[test]
    fn table_keeps_old_lists_and_skips_equal_ones() {
        let t = NamespaceTable::new(vec![ns(1, 9, 100)]);
        let old: &[Namespace] = t.current();
        assert!(!t.update(vec![ns(1, 9, 100)]), "nothing changed");
        assert!(t.update(vec![ns(1, 12, 12)]));
        assert!(t.update(vec![ns(1, 12, 12), ns(2, 9, 8)]));
        assert_eq!(old[0].block_size(), 512, "an earlier list stays valid");
        let now = t.current();
        assert_eq!(now.len(), 2);
        assert_eq!((now[0].block_size(), now[0].blocks()), (4096, 12));
    }
}
