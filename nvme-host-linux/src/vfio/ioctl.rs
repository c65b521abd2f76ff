//! VFIO ioctl numbers (the kernel defines them as macros, which bindgen does not carry over),
//! argument buffers, and the parsing of VFIO capability chains. The calls themselves are in
//! [`crate::sys`].

use vfio_bindings::bindings::vfio::{VFIO_BASE, VFIO_TYPE};
use zerocopy::IntoBytes;

/// `_IO(VFIO_TYPE, VFIO_BASE + nr)`: VFIO ioctls carry no size or direction in their number.
const fn io(nr: u32) -> libc::c_ulong {
    (((VFIO_TYPE as u32) << 8) | (VFIO_BASE + nr)) as libc::c_ulong
}

pub(crate) const GET_API_VERSION: libc::c_ulong = io(0);
pub(crate) const CHECK_EXTENSION: libc::c_ulong = io(1);
pub(crate) const SET_IOMMU: libc::c_ulong = io(2);
pub(crate) const GROUP_GET_STATUS: libc::c_ulong = io(3);
pub(crate) const GROUP_SET_CONTAINER: libc::c_ulong = io(4);
pub(crate) const GROUP_GET_DEVICE_FD: libc::c_ulong = io(6);
pub(crate) const DEVICE_GET_INFO: libc::c_ulong = io(7);
pub(crate) const DEVICE_GET_REGION_INFO: libc::c_ulong = io(8);
pub(crate) const DEVICE_GET_IRQ_INFO: libc::c_ulong = io(9);
pub(crate) const DEVICE_SET_IRQS: libc::c_ulong = io(10);
pub(crate) const DEVICE_RESET: libc::c_ulong = io(11);
pub(crate) const IOMMU_GET_INFO: libc::c_ulong = io(12);
pub(crate) const IOMMU_MAP_DMA: libc::c_ulong = io(13);
pub(crate) const IOMMU_UNMAP_DMA: libc::c_ulong = io(14);

/// An 8-byte aligned zeroed buffer of at least `len` bytes, for variable-size ioctl
/// arguments (`*_info` structures followed by capability chains).
pub(crate) struct AlignedBuf(Vec<u64>, usize);

impl AlignedBuf {
    pub(crate) fn new(len: usize) -> AlignedBuf {
        AlignedBuf(vec![0u64; len.div_ceil(8)], len)
    }
    pub(crate) fn bytes(&mut self) -> &mut [u8] {
        &mut self.0.as_mut_bytes()[..self.1]
    }
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(off..off + 2)?.try_into().ok()?))
}
pub(crate) fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(off..off + 4)?.try_into().ok()?))
}
pub(crate) fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// Finds capability `id` in a VFIO capability chain starting at byte `first` of `buf`
/// (`struct vfio_info_cap_header { u16 id; u16 version; u32 next; }`, offsets from the start
/// of the info structure). Returns the capability's bytes, header included. Offsets are
/// validated: a bad chain ends the search instead of reading outside the buffer.
pub(crate) fn find_cap(buf: &[u8], first: u32, id: u16) -> Option<&[u8]> {
    let mut off = first as usize;
    // A chain longer than the buffer has 8-byte headers for is corrupt (or cyclic).
    for _ in 0..buf.len() / 8 + 1 {
        if off == 0 || off + 8 > buf.len() {
            return None;
        }
        let cap_id = u16_at(buf, off)?;
        let next = u32_at(buf, off + 4)? as usize;
        if cap_id == id {
            return Some(&buf[off..]);
        }
        off = next;
    }
    None
}

/// Parses `VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE` out of a `vfio_iommu_type1_info` buffer:
/// the IOVA ranges (inclusive `(start, last)`) the IOMMU accepts. `None` when the kernel did
/// not report the capability (kernels before 5.4).
pub(crate) fn parse_iova_ranges(info: &[u8]) -> Option<Vec<(u64, u64)>> {
    use vfio_bindings::bindings::vfio::{
        VFIO_IOMMU_INFO_CAPS, VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE,
    };
    // struct vfio_iommu_type1_info { u32 argsz; u32 flags; u64 iova_pgsizes; u32 cap_offset; u32 pad; }
    let flags = u32_at(info, 4)?;
    if flags & VFIO_IOMMU_INFO_CAPS == 0 {
        return None;
    }
    let cap = find_cap(
        info,
        u32_at(info, 16)?,
        VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE as u16,
    )?;
    // header (8), u32 nr_iovas, u32 reserved, then { u64 start; u64 end; }[nr_iovas].
    let n = u32_at(cap, 8)? as usize;
    let mut v = Vec::with_capacity(n.min(64));
    for i in 0..n {
        let start = u64_at(cap, 16 + i * 16)?;
        let end = u64_at(cap, 24 + i * 16)?;
        if start <= end {
            v.push((start, end));
        }
    }
    Some(v)
}

/// Parses `VFIO_REGION_INFO_CAP_SPARSE_MMAP` out of a `vfio_region_info` buffer: the
/// `(offset, size)` areas of the region that may be mmapped.
pub(crate) fn parse_sparse_mmap(info: &[u8]) -> Option<Vec<(u64, u64)>> {
    use vfio_bindings::bindings::vfio::{
        VFIO_REGION_INFO_CAP_SPARSE_MMAP, VFIO_REGION_INFO_FLAG_CAPS,
    };
    // struct vfio_region_info { u32 argsz; u32 flags; u32 index; u32 cap_offset; u64 size; u64 offset; }
    if u32_at(info, 4)? & VFIO_REGION_INFO_FLAG_CAPS == 0 {
        return None;
    }
    let cap = find_cap(
        info,
        u32_at(info, 12)?,
        VFIO_REGION_INFO_CAP_SPARSE_MMAP as u16,
    )?;
    let n = u32_at(cap, 8)? as usize;
    (0..n)
        .map(|i| Some((u64_at(cap, 16 + i * 16)?, u64_at(cap, 24 + i * 16)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel() {
        // From <linux/vfio.h> on x86_64: _IO(';', 100 + n).
        assert_eq!(GET_API_VERSION, 0x3b64);
        assert_eq!(SET_IOMMU, 0x3b66);
        assert_eq!(GROUP_GET_DEVICE_FD, 0x3b6a);
        assert_eq!(DEVICE_RESET, 0x3b6f);
        assert_eq!(IOMMU_MAP_DMA, 0x3b71);
        assert_eq!(IOMMU_UNMAP_DMA, 0x3b72);
    }

    fn push32(b: &mut Vec<u8>, v: u32) {
        b.extend_from_slice(&v.to_ne_bytes());
    }
    fn push64(b: &mut Vec<u8>, v: u64) {
        b.extend_from_slice(&v.to_ne_bytes());
    }

    /// What a 6.1 kernel returns for a 39-bit virtual VT-d: the MSI window carved out, and
    /// a migration capability first in the chain.
    fn type1_info(ranges: &[(u64, u64)]) -> Vec<u8> {
        let mut b = Vec::new();
        push32(&mut b, 0); // argsz (filled below)
        push32(&mut b, 3); // flags: PGSIZES | CAPS
        push64(&mut b, 0x4020_1000); // pgsizes
        push32(&mut b, 24); // cap_offset
        push32(&mut b, 0);
        // Migration cap (id 2, 32 bytes) at 24, next = 56.
        b.extend_from_slice(&2u16.to_ne_bytes());
        b.extend_from_slice(&1u16.to_ne_bytes());
        push32(&mut b, 56);
        push32(&mut b, 0);
        push32(&mut b, 0);
        push64(&mut b, 0);
        push64(&mut b, 0);
        assert_eq!(b.len(), 56);
        // IOVA range cap (id 1) at 56, last.
        b.extend_from_slice(&1u16.to_ne_bytes());
        b.extend_from_slice(&1u16.to_ne_bytes());
        push32(&mut b, 0);
        push32(&mut b, ranges.len() as u32);
        push32(&mut b, 0);
        for &(s, e) in ranges {
            push64(&mut b, s);
            push64(&mut b, e);
        }
        let len = b.len() as u32;
        b[..4].copy_from_slice(&len.to_ne_bytes());
        b
    }

    #[test]
    fn parses_iova_ranges_through_the_chain() {
        let r = [(0, 0xfedf_ffff), (0xfef0_0000, (1 << 39) - 1)];
        let b = type1_info(&r);
        assert_eq!(parse_iova_ranges(&b), Some(r.to_vec()));
        // Truncated: the ranges that fit are not invented.
        assert_eq!(parse_iova_ranges(&b[..b.len() - 8]), None);
        // No CAPS flag: nothing reported.
        let mut no_caps = b.clone();
        no_caps[4] = 1;
        assert_eq!(parse_iova_ranges(&no_caps), None);
        // A cyclic chain ends.
        let mut cyc = b.clone();
        cyc[28..32].copy_from_slice(&24u32.to_ne_bytes());
        assert_eq!(parse_iova_ranges(&cyc), None);
        // An offset beyond the buffer ends.
        let mut far = b;
        far[16..20].copy_from_slice(&4096u32.to_ne_bytes());
        assert_eq!(parse_iova_ranges(&far), None);
    }

    #[test]
    fn parses_sparse_mmap_areas() {
        let mut b = Vec::new();
        push32(&mut b, 0);
        push32(&mut b, 0xf); // READ | WRITE | MMAP | CAPS
        push32(&mut b, 0); // index
        push32(&mut b, 32); // cap_offset
        push64(&mut b, 0x4000); // size
        push64(&mut b, 0); // offset
        b.extend_from_slice(&1u16.to_ne_bytes());
        b.extend_from_slice(&1u16.to_ne_bytes());
        push32(&mut b, 0);
        push32(&mut b, 2);
        push32(&mut b, 0);
        push64(&mut b, 0);
        push64(&mut b, 0x2000);
        push64(&mut b, 0x3000);
        push64(&mut b, 0x1000);
        assert_eq!(
            parse_sparse_mmap(&b),
            Some(vec![(0, 0x2000), (0x3000, 0x1000)])
        );
        b[4] = 7;
        assert_eq!(parse_sparse_mmap(&b), None);
    }
}
