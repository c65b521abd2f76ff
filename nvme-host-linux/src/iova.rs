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

#[cfg(test)]
mod tests {
    use super::*;

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
