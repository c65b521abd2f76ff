//! The per-transport DMA pool: a few large segments, each mapped for the controller once,
//! carved into the buffers, rings and pages the driver asks for.
//!
//! Without it every buffer was its own memfd, `mmap` and device mapping
//! (`VFIO_IOMMU_MAP_DMA`), 2 MiB each with hugepages. A transport that owns a [`DmaPool`]
//! (VFIO and the software controller do) hands it out through
//! [`crate::Transport::dma_pool`]; `DmaMapping::new` then takes a
//! `Carve` of one of its regions, and only requests larger than a region get a segment
//! of their own.
//!
//! Regions are [`REGION`] bytes (one hugepage), mapped through the transport's `map_dma`,
//! so in a shared-memory group they sit inside this member's IOVA slice like any other
//! mapping. Inside a region a first-fit free list with coalescing (the IOVA allocator's)
//! hands out page-aligned, page-granular ranges. A range goes back to its region when its
//! `Carve` drops, which is when the last `Arc<DmaMapping>` holding it drops: a buffer
//! whose I/O is still in flight keeps its range, exactly as it kept its own segment before.
//! Regions stay mapped until the transport drops and calls [`DmaPool::release`].
//!
//! `unsafe` is allowed here for one thing: turning a carve's range into a byte slice. The
//! allocator gives each range to one carve at a time, which is what makes that sound.
#![allow(unsafe_code)]

use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{Error, Result};
use crate::iova::IovaAllocator;
use crate::memory::SharedMemory;
use crate::transport::Transport;

/// Size of one pool region: one 2 MiB hugepage.
pub const REGION: usize = crate::memory::HUGE_PAGE;
/// Granularity and alignment of carved ranges (a memory page: PRPs need page-aligned
/// buffers for whole pages).
pub const GRAIN: usize = 4096;
/// The free lists count offsets from here (the IOVA allocator never hands out 0).
const BASE: u64 = GRAIN as u64;

/// A pool of DMA memory for one transport. See the module documentation.
#[derive(Debug, Default)]
pub struct DmaPool {
    inner: Arc<PoolInner>,
}

#[derive(Debug, Default)]
struct PoolInner {
    regions: Mutex<Vec<Region>>,
}

#[derive(Debug)]
struct Region {
    mem: Arc<RegionMem>,
    /// Free ranges of the region, as offsets plus [`BASE`].
    free: IovaAllocator,
    /// Bytes from the start that have been handed out at least once; the rest is still
    /// the zeroes of a new memfd (and, unpopulated, not even faulted in).
    used: usize,
}

/// A region's memory and its device address.
#[derive(Debug)]
struct RegionMem {
    mem: SharedMemory,
    iova: u64,
}

/// Counts of a pool, for tests and measurements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Regions mapped (each one device mapping).
    pub regions: usize,
    /// Bytes free across them.
    pub free_bytes: u64,
}

impl PoolInner {
    fn lock(&self) -> MutexGuard<'_, Vec<Region>> {
        self.regions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl DmaPool {
    /// An empty pool: the first allocation maps its first region.
    pub fn new() -> DmaPool {
        DmaPool::default()
    }

    /// A zeroed, page-aligned range of at least `len` bytes (rounded up to [`GRAIN`]),
    /// from a region of this pool mapped for `transport` (a new region when none has room).
    /// `Ok(None)` when `len` is zero or larger than a region: the caller maps a segment of
    /// its own.
    pub(crate) fn alloc(&self, transport: &dyn Transport, len: usize) -> Result<Option<Carve>> {
        if len == 0 || len > REGION {
            return Ok(None);
        }
        let len = len.next_multiple_of(GRAIN);
        let mut regions = self.inner.lock();
        let found = regions
            .iter_mut()
            .enumerate()
            .find_map(|(i, r)| r.free.alloc(len as u64).map(|at| (i, at)));
        let (index, at) = match found {
            Some(f) => f,
            None => {
                // Not populated: a page is faulted in when first used (VFIO's map pins them
                // all anyway; the software controller touches only what commands use).
                let mem = SharedMemory::new_lazy("nvme-dma-pool", REGION).map_err(|e| {
                    Error::os(
                        format!("allocating a {REGION}-byte DMA pool region (hugepages or shared memory)"),
                        e,
                    )
                })?;
                let iova = transport.map_dma(&mem)?;
                let mut free =
                    IovaAllocator::new(&[(BASE, BASE + REGION as u64 - 1)], GRAIN as u64);
                let at = free
                    .alloc(len as u64)
                    .expect("a new region fits any pooled request");
                regions.push(Region {
                    mem: Arc::new(RegionMem { mem, iova }),
                    free,
                    used: 0,
                });
                (regions.len() - 1, at)
            }
        };
        let offset = (at - BASE) as usize;
        let region = &mut regions[index];
        // A range used before holds its last user's data; the API promises zeroed buffers.
        // Beyond `used` the memory was never handed out: zero already.
        let dirty = region.used.saturating_sub(offset).min(len);
        region.used = region.used.max(offset + len);
        let mut carve = Carve {
            pool: self.inner.clone(),
            region: region.mem.clone(),
            index,
            offset,
            len,
        };
        drop(regions);
        carve.bytes_mut()[..dirty].fill(0);
        Ok(Some(carve))
    }

    /// Regions mapped and bytes free.
    pub fn stats(&self) -> PoolStats {
        let regions = self.inner.lock();
        PoolStats {
            regions: regions.len(),
            free_bytes: regions.iter().map(|r| r.free.free_bytes()).sum(),
        }
    }

    /// Unmaps every region through `unmap(iova, len)` and forgets them: for the transport's
    /// drop, when no carve can be alive any more (each holds the transport). A region
    /// with a carve still out (which that rule rules out) is left mapped.
    pub fn release(&self, mut unmap: impl FnMut(u64, usize)) {
        let mut regions = self.inner.lock();
        for r in regions.drain(..) {
            if r.free.free_bytes() == REGION as u64 {
                unmap(r.mem.iova, r.mem.mem.len());
            } else {
                // Leaked on purpose: the device may still use it.
                std::mem::forget(r.mem);
            }
        }
    }
}

/// A range of a pool region, owned alone: it goes back to the pool when dropped.
#[derive(Debug)]
pub(crate) struct Carve {
    pool: Arc<PoolInner>,
    region: Arc<RegionMem>,
    index: usize,
    offset: usize,
    len: usize,
}

impl Carve {
    /// Length in bytes (a multiple of [`GRAIN`]).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }
    /// The device address of the first byte.
    pub(crate) fn iova(&self) -> u64 {
        self.region.iova + self.offset as u64
    }
    /// The range as a region for the core engine. Whoever keeps it keeps this carve alive
    /// (see `Mapping::region`).
    pub(crate) fn region(&self) -> Option<nvme_core::DmaRegion> {
        self.region
            .mem
            .region(self.offset, self.len, self.region.iova)
    }
    /// The range's bytes. Same contract as `Mapping::bytes`: no device access in flight
    /// (the DMA buffer checks that before it calls).
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `[offset, offset + len)` lies inside the region's mapping (the allocator
        // hands out ranges of the region only), which lives as long as `self.region`; the
        // allocator gives the range to this carve alone until it drops, so no other carve
        // makes a reference into it; device writes are excluded by the contract above.
        unsafe { std::slice::from_raw_parts(self.region.mem.as_ptr().add(self.offset), self.len) }
    }
    /// The range's bytes, writable. As [`Carve::bytes`]; `&mut self` makes the borrow
    /// exclusive in this process.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`; the range belongs to this carve alone and `&mut self`
        // excludes every other reference through it.
        unsafe {
            std::slice::from_raw_parts_mut(self.region.mem.as_ptr().add(self.offset), self.len)
        }
    }
}

impl Drop for Carve {
    fn drop(&mut self) {
        let mut regions = self.pool.lock();
        // After `release` the region is gone from the list (and left mapped): nothing to do.
        if let Some(r) = regions.get_mut(self.index) {
            if Arc::ptr_eq(&r.mem, &self.region) {
                r.free.free(BASE + self.offset as u64, self.len as u64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mmio::Mmio;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A transport that maps nothing but hands out addresses and counts maps and unmaps.
    #[derive(Debug, Default)]
    struct Counting {
        next: AtomicU64,
        maps: AtomicU64,
        unmaps: AtomicU64,
    }

    impl Transport for Counting {
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
        fn regs(&self) -> Option<Mmio> {
            None
        }
        fn map_dma(&self, mem: &SharedMemory) -> Result<u64> {
            self.maps.fetch_add(1, Ordering::Relaxed);
            Ok((1 << 30) + self.next.fetch_add(mem.len() as u64, Ordering::Relaxed))
        }
        fn unmap_dma(&self, _iova: u64, _len: usize) {
            self.unmaps.fetch_add(1, Ordering::Relaxed);
        }
        fn pci_id(&self) -> Option<(u16, u16)> {
            None
        }
        fn name(&self) -> String {
            "counting".into()
        }
    }

    #[test]
    fn small_requests_share_one_mapped_region_and_are_page_aligned() {
        let t = Counting::default();
        let pool = DmaPool::new();
        let carves: Vec<Carve> = [1, 4096, 4097, 512, 65536]
            .iter()
            .map(|&n| pool.alloc(&t, n).unwrap().unwrap())
            .collect();
        assert_eq!(t.maps.load(Ordering::Relaxed), 1);
        let lens: Vec<usize> = carves.iter().map(Carve::len).collect();
        assert_eq!(lens, [4096, 4096, 8192, 4096, 65536]);
        for c in &carves {
            assert_eq!(c.iova() % GRAIN as u64, 0);
            assert_eq!(c.region().unwrap().iova(), c.iova());
            assert_eq!(c.region().unwrap().vaddr() as usize % GRAIN, 0);
        }
        // Disjoint ranges.
        let mut spans: Vec<(u64, u64)> = carves
            .iter()
            .map(|c| (c.iova(), c.iova() + c.len() as u64))
            .collect();
        spans.sort_unstable();
        assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0));
        assert_eq!(pool.stats().free_bytes, (REGION - 86016) as u64);
        drop(carves);
        assert_eq!(
            pool.stats(),
            PoolStats {
                regions: 1,
                free_bytes: REGION as u64
            },
            "every range back, coalesced"
        );
        // Coalesced: the whole region fits in one request again, without a new map.
        let whole = pool.alloc(&t, REGION).unwrap().unwrap();
        assert_eq!(t.maps.load(Ordering::Relaxed), 1);
        drop(whole);
        assert!(
            pool.alloc(&t, REGION + 1).unwrap().is_none(),
            "too large: not pooled"
        );
        assert!(pool.alloc(&t, 0).unwrap().is_none());
    }

    #[test]
    fn a_full_pool_grows_and_ranges_in_use_are_never_handed_out_again() {
        let t = Counting::default();
        let pool = DmaPool::new();
        let half = REGION / 2;
        let a = pool.alloc(&t, half).unwrap().unwrap();
        let b = pool.alloc(&t, half).unwrap().unwrap();
        assert_eq!(t.maps.load(Ordering::Relaxed), 1);
        let c = pool.alloc(&t, 4096).unwrap().unwrap();
        assert_eq!(t.maps.load(Ordering::Relaxed), 2, "full: a second region");
        assert_eq!(pool.stats().regions, 2);
        let a_iova = a.iova();
        drop(a);
        // The freed half comes back; the one still held does not.
        let d = pool.alloc(&t, half).unwrap().unwrap();
        assert_eq!(d.iova(), a_iova);
        assert_ne!(d.iova(), b.iova());
        assert_eq!(t.maps.load(Ordering::Relaxed), 2);
        drop((b, c, d));
        pool.release(|iova, len| t.unmap_dma(iova, len));
        assert_eq!(t.unmaps.load(Ordering::Relaxed), 2);
        assert_eq!(pool.stats().regions, 0);
    }

    #[test]
    fn a_reused_range_is_zeroed() {
        let t = Counting::default();
        let pool = DmaPool::new();
        let mut a = pool.alloc(&t, 8192).unwrap().unwrap();
        a.bytes_mut().fill(0xa5);
        let at = a.iova();
        drop(a);
        let b = pool.alloc(&t, 8192).unwrap().unwrap();
        assert_eq!(b.iova(), at, "first fit: the same range");
        assert!(b.bytes().iter().all(|&x| x == 0));
    }

    #[test]
    fn release_leaves_a_region_in_use_mapped() {
        let t = Counting::default();
        let pool = DmaPool::new();
        let a = pool.alloc(&t, 4096).unwrap().unwrap();
        pool.release(|iova, len| t.unmap_dma(iova, len));
        assert_eq!(t.unmaps.load(Ordering::Relaxed), 0);
        // Dropping the carve afterwards is harmless.
        drop(a);
        assert_eq!(pool.stats().regions, 0);
    }
}
