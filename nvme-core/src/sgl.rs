//! Scatter Gather List (SGL) construction (NVMe 1.4 section 4.4), the alternative to PRPs
//! for controllers whose Identify SGLS field says so.
//!
//! One contiguous buffer is one Data Block descriptor in the command's data pointer, with
//! no list. Several buffers go as Data Block descriptors in a list, and the data pointer
//! holds a Last Segment descriptor pointing to it.

use nvme_regs::sgl::SglDescriptor;

use crate::dma::DmaRegion;

/// Errors building an SGL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SglError {
    /// A zero-length transfer (or a zero-length segment).
    Empty,
    /// A data address that is not dword aligned (this driver keeps the PRP rule, so that a
    /// buffer works with either kind of data pointer).
    Misaligned(u64),
    /// A segment longer than a Data Block descriptor's 32-bit length.
    SegmentTooLong(usize),
    /// The descriptor list does not fit the list memory provided.
    ListTooSmall {
        /// Bytes of list the transfer needs.
        needed: usize,
        /// Bytes of list available.
        available: usize,
    },
}

impl core::fmt::Display for SglError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SglError::Empty => write!(f, "zero-length data transfer"),
            SglError::Misaligned(a) => write!(f, "data buffer IOVA {a:#x} is not 4-byte aligned"),
            SglError::SegmentTooLong(n) => write!(
                f,
                "a data segment of {n} bytes exceeds an SGL data block's 4 GiB - 1; split the transfer"
            ),
            SglError::ListTooSmall { needed, available } => write!(
                f,
                "SGL needs {needed} bytes of descriptor list, {available} available; use fewer segments"
            ),
        }
    }
}

impl core::error::Error for SglError {}

/// The Data Block descriptor for `len` bytes at `iova`, as the data pointer words.
#[inline]
pub fn single(iova: u64, len: usize) -> Result<(u64, u64), SglError> {
    if len == 0 {
        return Err(SglError::Empty);
    }
    if iova & 3 != 0 {
        return Err(SglError::Misaligned(iova));
    }
    let Ok(len32) = u32::try_from(len) else {
        return Err(SglError::SegmentTooLong(len));
    };
    Ok(SglDescriptor::data_block(iova, len32).to_dptr())
}

/// The data pointer for the segments `(iova, len)` in transfer order: one Data Block
/// descriptor for one segment; otherwise a Last Segment descriptor pointing to the Data
/// Block descriptors written into `list` (16 bytes each, from its start).
pub fn build(segments: &[(u64, usize)], list: Option<&DmaRegion>) -> Result<(u64, u64), SglError> {
    match segments {
        [] => Err(SglError::Empty),
        [(iova, len)] => single(*iova, *len),
        _ => {
            let needed = segments.len() * SglDescriptor::SIZE;
            let available = list.map_or(0, |l| l.len());
            let too_small = SglError::ListTooSmall { needed, available };
            let list = match list {
                Some(l) if available >= needed => l,
                _ => return Err(too_small),
            };
            let Ok(count) = u32::try_from(segments.len()) else {
                return Err(too_small);
            };
            for (i, &(iova, len)) in segments.iter().enumerate() {
                let (a, b) = single(iova, len)?;
                // In bounds (checked above); a list not 8-byte aligned is refused as too
                // small rather than written partly.
                let at = i * SglDescriptor::SIZE;
                if !(list.write_u64(at, a) && list.write_u64(at + 8, b)) {
                    return Err(too_small);
                }
            }
            Ok(SglDescriptor::last_segment(list.iova(), count).to_dptr())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dma::test_memory;
    use nvme_regs::sgl::SglDescriptorType;

    #[test]
    fn one_segment_is_one_data_block() {
        let (a, b) = single(0x1_0000_0204, 8192).unwrap();
        let d = SglDescriptor::from_dptr(a, b);
        assert_eq!(d.kind(), Some(SglDescriptorType::DataBlock));
        assert_eq!((d.address, d.length), (0x1_0000_0204, 8192));
        assert_eq!(build(&[(0x2000, 512)], None), single(0x2000, 512));
        assert_eq!(single(0x2002, 512), Err(SglError::Misaligned(0x2002)));
        assert_eq!(single(0x2000, 0), Err(SglError::Empty));
        assert_eq!(build(&[], None), Err(SglError::Empty));
        #[cfg(target_pointer_width = "64")]
        assert_eq!(
            single(0x2000, 1 << 32),
            Err(SglError::SegmentTooLong(1 << 32))
        );
    }

    #[test]
    fn several_segments_go_in_a_last_segment_list() {
        let list = test_memory(1, 0x40_0000);
        let segs = [(0x1000u64, 4096usize), (0x9004, 512), (0x20000, 12288)];
        let (a, b) = build(&segs, Some(&list)).unwrap();
        let d = SglDescriptor::from_dptr(a, b);
        assert_eq!(d.kind(), Some(SglDescriptorType::LastSegment));
        assert_eq!((d.address, d.length), (0x40_0000, 48));
        for (i, &(iova, len)) in segs.iter().enumerate() {
            let e: SglDescriptor = list.read_obj(i * 16).unwrap();
            assert_eq!(e, SglDescriptor::data_block(iova, len as u32), "entry {i}");
        }
        let small = list.sub(0, 32).unwrap();
        assert_eq!(
            build(&segs, Some(&small)),
            Err(SglError::ListTooSmall {
                needed: 48,
                available: 32
            })
        );
        assert_eq!(
            build(&segs, None),
            Err(SglError::ListTooSmall {
                needed: 48,
                available: 0
            })
        );
        assert_eq!(
            build(&[(0x1000, 512), (0x2001, 512)], Some(&list)),
            Err(SglError::Misaligned(0x2001))
        );
    }
}
