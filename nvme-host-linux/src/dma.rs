//! DMA buffers: shared memory mapped for the controller, kept alive while any I/O uses it.

use std::marker::PhantomData;
use std::ops::Range;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use nvme_core::DmaRegion;

use crate::dmapool::Carve;
use crate::error::{Error, Result};
use crate::memory::{Backing, SharedMemory};
use crate::transport::Transport;

/// DMA memory mapped for one controller: a range of the transport's pool, or (larger than
/// a pool region, or a transport without a pool) a segment of its own.
#[derive(Debug)]
pub(crate) struct DmaMapping {
    mem: Memory,
    iova: u64,
    /// The whole mapping (made once: `region` is on the I/O path).
    region: DmaRegion,
    transport: Arc<dyn Transport>,
}

#[derive(Debug)]
enum Memory {
    /// A range of the transport's pool; it goes back to the pool when this drops.
    Pooled(Carve),
    /// A segment mapped for this mapping alone; unmapped when this drops.
    Own(SharedMemory),
}

impl DmaMapping {
    /// `len` zeroed bytes mapped for the controller behind `transport`, from its pool when
    /// it has one and `len` fits a region (`name` names a segment of its own otherwise).
    pub(crate) fn new(
        transport: &Arc<dyn Transport>,
        name: &str,
        len: usize,
    ) -> Result<DmaMapping> {
        if let Some(pool) = transport.dma_pool() {
            if let Some(carve) = pool.alloc(transport.as_ref(), len)? {
                let (iova, region) = (carve.iova(), carve.region());
                let region = region.ok_or_else(|| wraps(len, iova))?;
                return Ok(DmaMapping {
                    mem: Memory::Pooled(carve),
                    iova,
                    region,
                    transport: transport.clone(),
                });
            }
        }
        Self::own(transport, name, len)
    }

    /// A segment of its own (not from the pool).
    fn own(transport: &Arc<dyn Transport>, name: &str, len: usize) -> Result<DmaMapping> {
        let mem = SharedMemory::new(name, len).map_err(|e| {
            Error::os(
                format!("allocating {len} bytes of DMA memory (hugepages or shared memory)"),
                e,
            )
        })?;
        Self::map_own(transport, mem, len)
    }

    /// A segment of its own in ordinary 4 KiB pages, never a hugepage: for a small buffer
    /// that a process may be all it needs (a group joiner's admin data), where making the
    /// pool's first 2 MiB region would cost the kernel's zeroing of a whole hugepage.
    fn small(transport: &Arc<dyn Transport>, name: &str, len: usize) -> Result<DmaMapping> {
        let mem = SharedMemory::with_backing(name, len, Backing::Shared).map_err(|e| {
            Error::os(
                format!("allocating {len} bytes of DMA memory (shared memory)"),
                e,
            )
        })?;
        Self::map_own(transport, mem, len)
    }

    fn map_own(
        transport: &Arc<dyn Transport>,
        mem: SharedMemory,
        len: usize,
    ) -> Result<DmaMapping> {
        let iova = transport.map_dma(&mem)?;
        let region = match mem.region(0, mem.len(), iova) {
            Some(r) => r,
            None => {
                transport.unmap_dma(iova, mem.len());
                return Err(wraps(len, iova));
            }
        };
        Ok(DmaMapping {
            mem: Memory::Own(mem),
            iova,
            region,
            transport: transport.clone(),
        })
    }
    /// The whole mapping, mapped for the CPU and the device until this mapping drops;
    /// users of the region hold the mapping alive.
    #[inline]
    pub(crate) fn region(&self) -> DmaRegion {
        self.region
    }
    fn bytes(&self) -> &[u8] {
        match &self.mem {
            Memory::Pooled(c) => c.bytes(),
            Memory::Own(m) => m.bytes(),
        }
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        match &mut self.mem {
            Memory::Pooled(c) => c.bytes_mut(),
            Memory::Own(m) => m.bytes_mut(),
        }
    }
}

fn wraps(len: usize, iova: u64) -> Error {
    Error::Transport(format!(
        "DMA segment of {len} bytes at IOVA {iova:#x} wraps the device address space"
    ))
}

impl Drop for DmaMapping {
    fn drop(&mut self) {
        if let Memory::Own(m) = &self.mem {
            self.transport.unmap_dma(self.iova, m.len());
        }
    }
}

/// A DMA buffer: memory the controller reads or writes.
///
/// Submitting an I/O takes a reference to the buffer's mapping, so the memory stays mapped
/// until the I/O completes even if the buffer is dropped. While an I/O is in flight the CPU
/// must not look at the data: [`as_slice`](Self::as_slice) and
/// [`as_mut_slice`](Self::as_mut_slice) panic then (use the `try_` forms to check).
///
/// I/Os take the buffer (or a range of it, [`slice`](Self::slice)) by mutable borrow for the
/// duration of the submission call only, so several I/Os may use one buffer at once.
/// Buffers up to a pool region (2 MiB) are carved from the transport's DMA pool, mapped for
/// the device once; larger ones are a segment of their own (2 MiB granularity with
/// hugepages). A range of the pool is reused only after every I/O that used it completed.
#[derive(Debug)]
pub struct DmaBuffer {
    map: Arc<DmaMapping>,
    len: usize,
    // Not Sync: the in-flight check and the slice accessors must run on the owning thread.
    _not_sync: PhantomData<std::cell::Cell<()>>,
}

/// A range of a [`DmaBuffer`] to transfer.
#[derive(Clone, Copy, Debug)]
pub struct IoBuf<'a> {
    pub(crate) map: &'a Arc<DmaMapping>,
    pub(crate) offset: usize,
    pub(crate) len: usize,
}

impl IoBuf<'_> {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Is the range empty?
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    #[inline]
    pub(crate) fn region(&self) -> DmaRegion {
        self.map
            .region()
            .sub(self.offset, self.len)
            .expect("IoBuf range checked at creation")
    }
}

impl<'a> From<&'a mut DmaBuffer> for IoBuf<'a> {
    fn from(b: &'a mut DmaBuffer) -> IoBuf<'a> {
        IoBuf {
            map: &b.map,
            offset: 0,
            len: b.len,
        }
    }
}

impl DmaBuffer {
    pub(crate) fn new(transport: &Arc<dyn Transport>, len: usize) -> Result<DmaBuffer> {
        if len == 0 {
            return Err(Error::Invalid(
                "a DMA buffer needs a length above zero".into(),
            ));
        }
        let map = DmaMapping::new(transport, "nvme-dma", len)?;
        Ok(DmaBuffer {
            map: Arc::new(map),
            len,
            _not_sync: PhantomData,
        })
    }
    /// A buffer of ordinary pages outside the pool (see `DmaMapping::small`).
    pub(crate) fn new_small(transport: &Arc<dyn Transport>, len: usize) -> Result<DmaBuffer> {
        let map = DmaMapping::small(transport, "nvme-admin-data", len)?;
        Ok(DmaBuffer {
            map: Arc::new(map),
            len,
            _not_sync: PhantomData,
        })
    }
    /// A new zeroed buffer of the same length for the same controller.
    pub(crate) fn new_like(&self) -> Result<DmaBuffer> {
        DmaBuffer::new(&self.map.transport, self.len)
    }
    /// Length in bytes (as requested; the segment behind it may be larger).
    pub fn len(&self) -> usize {
        self.len
    }
    /// Is the buffer empty? (Never: zero-length buffers are refused.)
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The device address of the first byte.
    pub fn iova(&self) -> u64 {
        self.map.iova
    }
    /// Is the buffer in use by an I/O that has not completed?
    pub fn in_flight(&self) -> bool {
        let busy = Arc::strong_count(&self.map) > 1;
        // Pairs with the release decrement when a completed I/O drops its reference: seeing
        // the count drop means the device's writes are visible.
        fence(Ordering::Acquire);
        busy
    }
    /// The range `range` for an I/O; errors name the bounds.
    ///
    /// It borrows the buffer mutably so that no slice of the data can be alive when an I/O
    /// starts; the borrow ends when the I/O is submitted.
    #[inline]
    pub fn slice(&mut self, range: Range<usize>) -> Result<IoBuf<'_>> {
        if range.start > range.end || range.end > self.len {
            return Err(Error::OutOfBounds {
                offset: range.start,
                len: range.end.saturating_sub(range.start),
                buffer: self.len,
            });
        }
        Ok(IoBuf {
            map: &self.map,
            offset: range.start,
            len: range.end - range.start,
        })
    }
    /// The data, or `None` while an I/O uses the buffer.
    pub fn try_as_slice(&self) -> Option<&[u8]> {
        if self.in_flight() {
            return None;
        }
        // No I/O is in flight (checked above), and none can start while this shared borrow
        // lives: submission needs `&mut DmaBuffer`.
        Some(&self.map.bytes()[..self.len])
    }
    /// The data, writable, or `None` while an I/O uses the buffer.
    pub fn try_as_mut_slice(&mut self) -> Option<&mut [u8]> {
        // The only reference to the mapping: no I/O in flight, and none can start while
        // `self` is mutably borrowed.
        let map = Arc::get_mut(&mut self.map)?;
        Some(&mut map.bytes_mut()[..self.len])
    }
    /// The data. Panics while an I/O uses the buffer.
    pub fn as_slice(&self) -> &[u8] {
        self.try_as_slice()
            .expect("DMA buffer read while an I/O is in flight; process its completion first")
    }
    /// The data, writable. Panics while an I/O uses the buffer.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        self.try_as_mut_slice()
            .expect("DMA buffer written while an I/O is in flight; process its completion first")
    }
}
