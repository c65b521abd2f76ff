//! Sharing one VFIO container between the processes of a group: the IOVA space partition.
//!
//! Every process maps its own memory (`VFIO_IOMMU_MAP_DMA` pins the caller's pages), so two
//! processes must never pick the same IOVA. The usable space the kernel reports is split into
//! [`SLICES`] equal, aligned, contiguous slices: slice 0 holds the group's admin segment,
//! slice `i + 1` belongs to member `i`. A member allocates only inside its slice, and a
//! survivor cleaning up after a dead member unmaps that member's whole slice (a range that
//! covers whole mappings, as type1v2 requires).
//!
//! The slice size is the largest power of two (at least [`MIN_SLICE`]) for which enough
//! aligned blocks fit entirely inside the usable ranges; blocks that straddle a hole (the x86
//! MSI window at 0xfee00000) or touch IOVA 0 are skipped. With the 39-bit default of
//! QEMU's virtual VT-d that gives 4 GiB slices starting at 4 GiB; with 48 bits, 2 TiB.

use nvme_core::shared::MAX_MEMBERS;

/// Slices: one for the admin segment, one per possible member.
pub(crate) const SLICES: usize = MAX_MEMBERS + 1;

/// Smallest useful slice: a few hugepage-backed buffers and queues.
pub(crate) const MIN_SLICE: u64 = 64 << 20;

/// Splits the usable inclusive ranges `(start, last)` into `count` disjoint, equal,
/// naturally aligned slices `(start, len)` in address order, none containing IOVA 0. `None`
/// when not even [`MIN_SLICE`]-sized slices fit.
pub(crate) fn partition(ranges: &[(u64, u64)], count: usize) -> Option<Vec<(u64, u64)>> {
    let mut sorted: Vec<(u128, u128)> = ranges
        .iter()
        .filter(|(s, l)| s <= l)
        .map(|&(s, l)| (s as u128, l as u128 + 1))
        .collect();
    sorted.sort_unstable();
    for shift in (MIN_SLICE.trailing_zeros()..63).rev() {
        let size = 1u128 << shift;
        let mut out = Vec::with_capacity(count);
        'ranges: for &(start, end) in &sorted {
            // Never IOVA 0: a block starting there is skipped.
            let mut b = start.max(1).next_multiple_of(size);
            while b + size <= end {
                if out.len() == count {
                    break 'ranges;
                }
                out.push((b as u64, size as u64));
                b += size;
            }
        }
        if out.len() == count {
            return Some(out);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a 6.1 kernel reports for QEMU's virtual VT-d: 39 bits, the MSI window carved out.
    const VTD39: [(u64, u64); 2] = [(0, 0xfedf_ffff), (0xfef0_0000, (1 << 39) - 1)];

    fn check(ranges: &[(u64, u64)], slices: &[(u64, u64)]) {
        assert_eq!(slices.len(), SLICES);
        for (i, &(s, len)) in slices.iter().enumerate() {
            assert!(s > 0 && len >= MIN_SLICE);
            assert_eq!(s % len, 0, "aligned");
            assert!(
                ranges.iter().any(|&(a, z)| a <= s && s + len - 1 <= z),
                "slice {i} {s:#x}+{len:#x} inside one usable range"
            );
            if i > 0 {
                let (ps, plen) = slices[i - 1];
                assert!(ps + plen <= s, "disjoint and ordered");
            }
        }
    }

    #[test]
    fn splits_a_39_bit_space_around_the_msi_window() {
        let s = partition(&VTD39, SLICES).unwrap();
        check(&VTD39, &s);
        // 4 GiB slices; the first 4 GiB (IOVA 0 and the MSI window) are skipped.
        assert_eq!(s[0], (4 << 30, 4 << 30), "admin slice");
        assert_eq!(s[1], (8 << 30, 4 << 30), "member 0");
        assert_eq!(
            s[SLICES - 1].0 + s[SLICES - 1].1,
            (SLICES as u64 + 1) * (4 << 30)
        );
        assert!(!s
            .iter()
            .any(|&(a, l)| a <= 0xfee0_0000 && 0xfee0_0000 < a + l));
    }

    #[test]
    fn uses_the_space_of_wider_iommus_and_odd_ranges() {
        let r48 = [(0, 0xfedf_ffff), (0xfef0_0000, (1 << 48) - 1)];
        let s = partition(&r48, SLICES).unwrap();
        check(&r48, &s);
        assert_eq!(s[0].1, 2 << 40);
        // Unsorted, fragmented ranges: every slice inside one of them.
        let odd = [
            (0x1_0000_0000, 0x1_ffff_ffff),
            (0x1000, 0xfedf_ffff),
            (0x10_0000_0000, 0x13_ffff_ffff),
        ];
        let s = partition(&odd, SLICES).unwrap();
        check(&odd, &s);
        // A whole 64-bit space does not overflow.
        let s = partition(&[(0, u64::MAX)], SLICES).unwrap();
        check(&[(0, u64::MAX)], &s);
        // Too small to share.
        assert_eq!(partition(&[(0x1000, 1 << 30)], SLICES), None);
        assert_eq!(partition(&[], SLICES), None);
    }
}
