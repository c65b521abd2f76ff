//! IOVA allocation inside the ranges a transport allows (for VFIO: the ranges the kernel
//! reports in `VFIO_IOMMU_GET_INFO`).

/// A first-fit allocator of device address ranges.
#[derive(Debug, Clone)]
pub struct IovaAllocator {
    /// Free ranges `[start, end)`, sorted and non-adjacent.
    free: Vec<(u64, u64)>,
    align: u64,
}

impl IovaAllocator {
    /// An allocator over the given usable ranges (inclusive `(start, last)` pairs, as VFIO
    /// reports them), handing out `align`-aligned blocks. Address 0 is never handed out.
    pub fn new(ranges: &[(u64, u64)], align: u64) -> IovaAllocator {
        let mut free: Vec<(u64, u64)> = ranges
            .iter()
            .filter_map(|&(s, last)| {
                let start = s.max(align).next_multiple_of(align);
                let end = last.saturating_add(1) / align * align;
                (start < end).then_some((start, end))
            })
            .collect();
        free.sort_unstable();
        IovaAllocator { free, align }
    }

    /// Allocates `len` bytes; `None` when no free range is big enough.
    pub fn alloc(&mut self, len: u64) -> Option<u64> {
        let len = len.max(1).next_multiple_of(self.align);
        let i = self.free.iter().position(|&(s, e)| e - s >= len)?;
        let (s, e) = self.free[i];
        if e - s == len {
            self.free.remove(i);
        } else {
            self.free[i].0 = s + len;
        }
        Some(s)
    }

    /// Returns a block handed out by [`alloc`](Self::alloc).
    pub fn free(&mut self, iova: u64, len: u64) {
        let len = len.max(1).next_multiple_of(self.align);
        let end = iova + len;
        let i = self.free.partition_point(|&(s, _)| s < iova);
        self.free.insert(i, (iova, end));
        // Merge with the neighbours.
        if i + 1 < self.free.len() && self.free[i].1 == self.free[i + 1].0 {
            self.free[i].1 = self.free[i + 1].1;
            self.free.remove(i + 1);
        }
        if i > 0 && self.free[i - 1].1 == self.free[i].0 {
            self.free[i - 1].1 = self.free[i].1;
            self.free.remove(i);
        }
    }

    /// Total free bytes.
    pub fn free_bytes(&self) -> u64 {
        self.free.iter().map(|(s, e)| e - s).sum()
    }
}

/// What one attempt to map a range found.
pub(crate) enum Attempt<E> {
    /// Mapped.
    Mapped,
    /// The range is still mapped for a process that had this member slot before (it
    /// left, or died, with memory the controller may still use).
    Stale,
    /// Another error: given up.
    Failed(E),
}

/// Why [`map_skipping_stale`] gave up.
pub(crate) enum MapError<E> {
    /// No free range is large enough.
    OutOfSpace,
    /// `tries` ranges in a row were [`Attempt::Stale`].
    Stale,
    /// An attempt failed otherwise.
    Failed(E),
}

/// Bytes the search moves on by, at least, after a stale range: a pool region's size, so
/// that a small mapping gets past an earlier member's regions in a few attempts.
const STALE_SKIP: u64 = 2 << 20;

/// Allocates `len` bytes of IOVA space from `iovas` and maps them with `map`. A range
/// still mapped for an earlier member ([`Attempt::Stale`]) stays allocated, so that it is
/// never handed out while the controller may use it; the following attempts take blocks
/// of at least [`STALE_SKIP`] bytes and give back what the mapping does not use. At most
/// `tries` stale ranges in a row.
pub(crate) fn map_skipping_stale<E>(
    iovas: &std::sync::Mutex<IovaAllocator>,
    len: u64,
    tries: u32,
    mut map: impl FnMut(u64) -> Attempt<E>,
) -> Result<u64, MapError<E>> {
    let lock = || iovas.lock().unwrap_or_else(|p| p.into_inner());
    let mut block = len;
    for _ in 0..=tries {
        let iova = lock().alloc(block).ok_or(MapError::OutOfSpace)?;
        match map(iova) {
            Attempt::Mapped => {
                if block > len {
                    let mut a = lock();
                    let used = len.next_multiple_of(a.align);
                    a.free(iova + used, block - used);
                }
                return Ok(iova);
            }
            Attempt::Stale => block = len.max(STALE_SKIP),
            Attempt::Failed(e) => {
                lock().free(iova, block);
                return Err(MapError::Failed(e));
            }
        }
    }
    Err(MapError::Stale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_mapping_gets_past_an_earlier_members_regions() {
        // An earlier member's two 2 MiB regions are still mapped at the slice's start.
        let iovas = std::sync::Mutex::new(IovaAllocator::new(&[(0, (1 << 32) - 1)], 4096));
        let stale = |iova: u64| (4096..4096 + (4 << 20)).contains(&iova);
        let mut tried = Vec::new();
        let got = map_skipping_stale::<()>(&iovas, 64 << 10, 16, |iova| {
            tried.push(iova);
            if stale(iova) {
                Attempt::Stale
            } else {
                Attempt::Mapped
            }
        });
        let iova = got.ok().expect("mapped past the stale ranges");
        assert!(!stale(iova) && tried.len() <= 4, "{tried:x?}");
        // The stale ranges stay allocated; the tail of the last block came back.
        let mut a = iovas.lock().unwrap();
        assert_eq!(a.alloc(4096), Some(iova + (64 << 10)));
        drop(a);
        // Nothing but stale ranges: an error after `tries`, not a loop.
        let e = map_skipping_stale::<()>(&iovas, 4096, 3, |_| Attempt::Stale);
        assert!(matches!(e, Err(MapError::Stale)));
        let e = map_skipping_stale(&iovas, 4096, 3, |_| Attempt::Failed(7));
        assert!(matches!(e, Err(MapError::Failed(7))));
    }

    #[test]
    fn allocates_inside_reported_ranges_and_merges_on_free() {
        // A 39-bit IOMMU with the x86 MSI window carved out, as VFIO reports it.
        let mut a = IovaAllocator::new(&[(0, 0xfedf_ffff), (0xfef0_0000, (1 << 39) - 1)], 4096);
        let x = a.alloc(8192).unwrap();
        assert_eq!(x, 4096, "never address 0");
        let y = a.alloc(0xfedf_0000).unwrap();
        assert!(y + 0xfedf_0000 <= 0xfee0_0000);
        let z = a.alloc(1 << 30).unwrap();
        assert!(
            z >= 0xfef0_0000 && z + (1 << 30) <= 1 << 39,
            "skips the hole"
        );
        let before = a.free_bytes();
        a.free(x, 8192);
        a.free(y, 0xfedf_0000);
        assert_eq!(a.free_bytes(), before + 8192 + 0xfedf_0000);
        assert_eq!(
            a.alloc(0xfedf_0000 + 8192),
            Some(4096),
            "freed neighbours merged"
        );
        assert_eq!(a.alloc(1 << 40), None);
    }
}
