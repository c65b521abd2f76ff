//! Physical Region Page (PRP) construction (NVMe 1.4 section 4.3).
//!
//! PRP1 points at the first byte (any dword-aligned address); every further entry points at
//! the start of a memory page. Two pages fit in PRP1/PRP2; more need a PRP list whose address
//! goes in PRP2. A list page holds `page_size / 8` entries; when more are needed, its last
//! entry points at the next list page.

use crate::dma::DmaRegion;

/// Errors building PRPs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrpError {
    /// The data address is not dword aligned (PRP1 bits 1:0 must be zero).
    Misaligned(u64),
    /// A zero-length transfer.
    Empty,
    /// The transfer needs more PRP list pages than were provided.
    ListTooSmall {
        /// List pages the transfer needs.
        needed: usize,
        /// List pages available.
        available: usize,
    },
}

impl core::fmt::Display for PrpError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PrpError::Misaligned(a) => write!(f, "data buffer IOVA {a:#x} is not 4-byte aligned"),
            PrpError::Empty => write!(f, "zero-length data transfer"),
            PrpError::ListTooSmall { needed, available } => {
                write!(
                    f,
                    "transfer needs {needed} PRP list pages, {available} available"
                )
            }
        }
    }
}

impl core::error::Error for PrpError {}

/// Number of memory pages that `len` bytes starting at `iova` touch.
pub const fn pages_spanned(iova: u64, len: usize, page_size: usize) -> usize {
    if len == 0 {
        return 0;
    }
    let first = (iova as usize) & (page_size - 1);
    (first + len).div_ceil(page_size)
}

/// Number of PRP list pages needed for `entries` list entries.
pub const fn list_pages_for_entries(entries: usize, page_size: usize) -> usize {
    let per_page = page_size / 8;
    if entries <= 1 {
        // One or zero entries go in PRP2 directly; no list.
        return 0;
    }
    if entries <= per_page {
        return 1;
    }
    // Every page but the last gives up its final entry to the chain pointer.
    1 + (entries - per_page).div_ceil(per_page - 1)
}

/// PRP list pages one command of up to `max_transfer` bytes can need, at the worst buffer
/// offset (a dword-aligned address 4 bytes before a page boundary).
pub const fn list_pages_for_transfer(max_transfer: usize, page_size: usize) -> usize {
    let spanned = pages_spanned(page_size as u64 - 4, max_transfer, page_size);
    list_pages_for_entries(spanned.saturating_sub(1), page_size)
}

/// PRP1/PRP2 for `len` bytes at `iova` when they touch at most two pages (no list needed,
/// no division); `None` when they touch more, or when [`build`] would refuse them.
#[inline]
pub fn without_list(iova: u64, len: usize, page_size: usize) -> Option<(u64, u64)> {
    let ps = page_size as u64;
    let len = len as u64;
    // The bytes from `iova` to the end of its page (1..=ps): the data fits in one page, in
    // that page and the next, or needs a list. Neither subtraction can wrap.
    let room = ps - (iova & (ps - 1));
    if len == 0 || iova & 3 != 0 {
        None
    } else if len <= room {
        Some((iova, 0))
    } else if len - room <= ps {
        Some((iova, iova + room))
    } else {
        None
    }
}

/// Builds PRP1/PRP2 for `len` bytes at device address `iova`, writing a PRP list into `list`
/// (whole pages, page aligned) when the transfer touches more than two pages.
pub fn build(
    iova: u64,
    len: usize,
    page_size: usize,
    list: Option<&DmaRegion>,
) -> Result<(u64, u64), PrpError> {
    if len == 0 {
        return Err(PrpError::Empty);
    }
    if iova & 3 != 0 {
        return Err(PrpError::Misaligned(iova));
    }
    let pages = pages_spanned(iova, len, page_size);
    let page_mask = !(page_size as u64 - 1);
    let second = (iova & page_mask) + page_size as u64;
    match pages {
        1 => return Ok((iova, 0)),
        2 => return Ok((iova, second)),
        _ => {}
    }
    let entries = pages - 1;
    let needed = list_pages_for_entries(entries, page_size);
    let available = list.map_or(0, |l| l.len() / page_size);
    let list = match list {
        Some(l) if available >= needed => l,
        _ => return Err(PrpError::ListTooSmall { needed, available }),
    };
    let per_page = page_size / 8;
    let mut list_page = 0usize;
    let mut pos = 0usize;
    // (list_page, pos) stays inside the `needed` pages checked above; the device reads the
    // list only after the doorbell. A write outside the list (a list not 8-byte aligned)
    // is reported as a list too small rather than skipped.
    let put = |list_page: usize, pos: usize, value: u64| {
        list.write_u64((list_page * per_page + pos) * 8, value)
    };
    for i in 0..entries {
        let remaining = entries - i;
        if pos == per_page - 1 && remaining > 1 {
            let next = list.iova() + ((list_page + 1) * page_size) as u64;
            if !put(list_page, pos, next) {
                return Err(PrpError::ListTooSmall { needed, available });
            }
            list_page += 1;
            pos = 0;
        }
        if !put(list_page, pos, second + (i * page_size) as u64) {
            return Err(PrpError::ListTooSmall { needed, available });
        }
        pos += 1;
    }
    Ok((iova, list.iova()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dma::test_memory;
    use std::vec::Vec;

    const PS: usize = 4096;

    /// List pages, and a reader of their entries.
    fn list_mem(pages: usize) -> (impl Fn(usize) -> u64, DmaRegion) {
        let r = test_memory(pages, 0x100_0000);
        (move |i| r.read_obj::<u64>(i * 8).unwrap(), r)
    }

    #[test]
    fn one_and_two_pages_need_no_list() {
        assert_eq!(build(0x1000, 4096, PS, None), Ok((0x1000, 0)));
        assert_eq!(build(0x1200, 512, PS, None), Ok((0x1200, 0)));
        assert_eq!(build(0x1200, 4096, PS, None), Ok((0x1200, 0x2000)));
        assert_eq!(build(0x1000, 8192, PS, None), Ok((0x1000, 0x2000)));
        assert_eq!(
            build(0x1002, 8, PS, None),
            Err(PrpError::Misaligned(0x1002))
        );
        assert_eq!(build(0x1000, 0, PS, None), Err(PrpError::Empty));
    }

    #[test]
    fn list_with_offset() {
        let (v, r) = list_mem(1);
        // 16 KiB at offset 0x204: touches 5 pages -> 4 list entries.
        assert_eq!(
            build(0x10204, 16384, PS, Some(&r)),
            Ok((0x10204, 0x100_0000))
        );
        assert_eq!(
            (0..5).map(&v).collect::<Vec<_>>(),
            [0x11000, 0x12000, 0x13000, 0x14000, 0]
        );
    }

    #[test]
    fn chained_lists() {
        // 514 pages of data aligned: 513 list entries; one page holds 511 + chain.
        let entries = 513;
        assert_eq!(list_pages_for_entries(entries, PS), 2);
        let (v, r) = list_mem(2);
        let len = (entries + 1) * PS;
        build(0x4000_0000, len, PS, Some(&r)).unwrap();
        for i in 0..511 {
            assert_eq!(v(i), 0x4000_1000 + (i * PS) as u64);
        }
        assert_eq!(
            v(511),
            0x100_0000 + PS as u64,
            "chain pointer to the second list page"
        );
        assert_eq!(v(512), 0x4000_1000 + (511 * PS) as u64);
        assert_eq!(v(513), 0x4000_1000 + (512 * PS) as u64);
        assert_eq!(v(514), 0);
        let (_v, small) = list_mem(1);
        assert_eq!(
            build(0x4000_0000, len, PS, Some(&small)),
            Err(PrpError::ListTooSmall {
                needed: 2,
                available: 1
            })
        );
        // Exactly 512 entries still fit one page without a chain.
        let (v, r) = list_mem(1);
        build(0x4000_0000, 512 * PS + 4, PS, Some(&r)).unwrap();
        assert_eq!(v(511), 0x4000_0000 + (512 * PS) as u64);
    }

    #[test]
    fn short_transfers_agree_with_build() {
        for iova in [0x1000u64, 0x1004, 0x1ffc, 0x1800, 0x1002] {
            for len in [0usize, 4, 512, 4092, 4096, 4100, 8188, 8192, 8196, 3 * 4096] {
                let short = without_list(iova, len, PS);
                let full = build(iova, len, PS, None);
                match short {
                    Some(p) => assert_eq!(Ok(p), full, "{iova:#x} + {len}"),
                    None => assert!(
                        full.is_err(),
                        "{iova:#x} + {len}: no list needed, yet without_list refused"
                    ),
                }
            }
        }
    }

    #[test]
    fn absurd_lengths_need_a_list() {
        // The end of the data is computed saturating: a length near the top of the address
        // space must not wrap around to "one page".
        for len in [usize::MAX, usize::MAX - 2, usize::MAX / 2] {
            assert_eq!(without_list(0x1ffc, len, PS), None, "{len}");
            assert_eq!(without_list(0x1000, len, PS), None, "{len}");
        }
    }

    #[test]
    fn sizing_for_mdts() {
        assert_eq!(pages_spanned(0xffc, 8, PS), 2);
        assert_eq!(
            list_pages_for_transfer(8192, PS),
            1,
            "8 KiB at worst offset spans 3 pages"
        );
        assert_eq!(list_pages_for_transfer(4096, PS), 0);
        assert_eq!(list_pages_for_transfer(2 << 20, PS), 1);
        assert_eq!(list_pages_for_transfer((2 << 20) + PS, PS), 2);
        assert_eq!(list_pages_for_transfer(128 << 10, PS), 1);
    }
}
