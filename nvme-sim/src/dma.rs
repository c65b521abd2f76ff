//! Device DMA: the IOVA table (like an IOMMU's), its lock-free per-thread view, PRP
//! walking (NVMe 1.4 section 4.3) and SGL walking (section 4.4).
//!
//! The table is changed under a mutex by `dma_map`/`dma_unmap`, which then bump a generation
//! counter. The processing thread keeps its own copy ([`DmaView`]) and only takes the mutex
//! when the generation moved, so translating an IOVA on the I/O path is a couple of
//! comparisons. Mappings are reference counted: memory that a queue or an in-progress command
//! still points into stays mapped in this process until they let go of it.

use std::collections::VecDeque;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use nvme_regs::status::GenericStatus;
use nvme_regs::Status;

use crate::mem::Mapping;
use crate::SimError;

/// One IOVA range and the device's mapping of the memory behind it.
#[derive(Clone)]
struct DmaEntry {
    iova: u64,
    end: u64,
    map: Arc<Mapping>,
}

/// The IOVA table shared between the API and the processing thread.
pub(crate) struct DmaShared {
    table: Mutex<Vec<DmaEntry>>,
    generation: AtomicU64,
    /// Last generation the processing thread has switched to.
    ack: AtomicU64,
    /// Device accesses to IOVAs that were not mapped (an IOMMU fault on real hardware).
    errors: AtomicU64,
    /// Descriptions of the latest of them.
    error_log: Mutex<VecDeque<String>>,
}

/// DMA errors described in [`DmaShared::error_log`] (older ones only count).
const ERROR_LOG_LEN: usize = 32;

impl DmaShared {
    pub(crate) fn new() -> DmaShared {
        DmaShared {
            table: Mutex::new(Vec::new()),
            generation: AtomicU64::new(0),
            ack: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            error_log: Mutex::new(VecDeque::new()),
        }
    }

    /// Records a device access to memory that is not mapped.
    #[cold]
    pub(crate) fn record_error(&self, what: String) {
        let mut log = self.error_log.lock().unwrap_or_else(|e| e.into_inner());
        if log.len() == ERROR_LOG_LEN {
            log.pop_front();
        }
        log.push_back(what);
        self.errors.fetch_add(1, Ordering::Release);
    }

    /// Device accesses to unmapped IOVAs so far.
    pub(crate) fn errors(&self) -> u64 {
        self.errors.load(Ordering::Acquire)
    }

    /// The latest DMA errors, oldest first.
    pub(crate) fn error_log(&self) -> Vec<String> {
        let log = self.error_log.lock().unwrap_or_else(|e| e.into_inner());
        log.iter().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<DmaEntry>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `[iova, iova + len)` backed by `fd` at `offset`.
    pub(crate) fn map(
        &self,
        iova: u64,
        fd: BorrowedFd<'_>,
        offset: u64,
        len: usize,
    ) -> Result<(), SimError> {
        if len == 0 {
            return Err(SimError::InvalidArgument("dma_map of zero bytes".into()));
        }
        let end = iova.checked_add(len as u64).ok_or_else(|| {
            SimError::InvalidArgument(format!("IOVA range {iova:#x}+{len:#x} wraps"))
        })?;
        // Touching a mapping past the end of its file would kill the process with SIGBUS.
        if let Some(size) = crate::mem::file_size(fd) {
            if offset.checked_add(len as u64).is_none_or(|e| e > size) {
                return Err(SimError::InvalidArgument(format!(
                    "dma_map: file range [{offset:#x}, +{len:#x}) is beyond the file's {size:#x} bytes"
                )));
            }
        }
        let mut t = self.lock();
        if let Some(e) = t.iter().find(|e| e.iova < end && iova < e.end) {
            return Err(SimError::DmaOverlap {
                iova,
                len: len as u64,
                existing_iova: e.iova,
                existing_len: e.end - e.iova,
            });
        }
        let map = Arc::new(Mapping::map(fd, offset, len, false)?);
        let pos = t.partition_point(|e| e.iova < iova);
        t.insert(pos, DmaEntry { iova, end, map });
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Removes every mapping inside `[iova, iova + len)`; returns the new generation, which
    /// the caller waits for the processing thread to acknowledge.
    pub(crate) fn unmap(&self, iova: u64, len: usize) -> Result<u64, SimError> {
        let end = iova.saturating_add(len as u64);
        let mut t = self.lock();
        if let Some(e) = t
            .iter()
            .find(|e| e.iova < end && iova < e.end && (e.iova < iova || e.end > end))
        {
            return Err(SimError::DmaPartialUnmap {
                iova,
                len: len as u64,
                existing_iova: e.iova,
                existing_len: e.end - e.iova,
            });
        }
        let before = t.len();
        t.retain(|e| !(e.iova >= iova && e.end <= end));
        if t.len() == before {
            return Err(SimError::DmaNotMapped {
                iova,
                len: len as u64,
            });
        }
        Ok(self.generation.fetch_add(1, Ordering::AcqRel) + 1)
    }

    /// Has the processing thread switched to generation `g` (or later)?
    pub(crate) fn acknowledged(&self, g: u64) -> bool {
        self.ack.load(Ordering::Acquire) >= g
    }
}

/// The processing thread's copy of the IOVA table.
pub(crate) struct DmaView {
    shared: Arc<DmaShared>,
    generation: u64,
    entries: Vec<DmaEntry>,
    last: usize,
    /// The table changed since [`take_changed`](Self::take_changed) was last called.
    changed: bool,
}

impl DmaView {
    pub(crate) fn new(shared: Arc<DmaShared>) -> DmaView {
        DmaView {
            shared,
            generation: u64::MAX,
            entries: Vec::new(),
            last: 0,
            changed: false,
        }
    }

    /// Switches to the current table if it changed; returns true when it did.
    pub(crate) fn sync(&mut self) -> bool {
        let g = self.shared.generation.load(Ordering::Acquire);
        if g == self.generation {
            return false;
        }
        {
            let t = self.shared.lock();
            self.entries.clone_from(&t);
            self.generation = self.shared.generation.load(Ordering::Acquire);
        }
        self.last = 0;
        self.changed = true;
        self.shared.ack.store(self.generation, Ordering::Release);
        true
    }

    /// Did the table change since the last call?
    pub(crate) fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// Is `[iova, iova + len)` inside one mapping of the current copy? Records nothing.
    pub(crate) fn is_mapped(&mut self, iova: u64, len: usize) -> bool {
        self.find(iova, len).is_some()
    }

    fn find(&mut self, iova: u64, len: usize) -> Option<usize> {
        let end = iova.checked_add(len as u64)?;
        if let Some(e) = self.entries.get(self.last) {
            if e.iova <= iova && end <= e.end {
                return Some(self.last);
            }
        }
        let i = self.entries.partition_point(|e| e.end <= iova);
        let e = self.entries.get(i)?;
        if e.iova <= iova && end <= e.end {
            self.last = i;
            Some(i)
        } else {
            None
        }
    }

    /// The mapping holding `[iova, iova + len)`, which must lie in one mapping, and the
    /// offset of `iova` in it.
    #[inline]
    pub(crate) fn translate(&mut self, iova: u64, len: usize) -> Option<(&Arc<Mapping>, usize)> {
        let i = match self.find(iova, len) {
            Some(i) => i,
            // A mapping added just before the host rang a doorbell may be newer than our copy.
            None if self.sync() => match self.find(iova, len) {
                Some(i) => i,
                None => return self.fault(iova, len),
            },
            None => return self.fault(iova, len),
        };
        let e = &self.entries[i];
        Some((&e.map, (iova - e.iova) as usize))
    }

    #[cold]
    fn fault<T>(&self, iova: u64, len: usize) -> Option<T> {
        self.shared.record_error(format!(
            "access to IOVA {iova:#x}+{len:#x}, which is not mapped"
        ));
        None
    }

    /// Like [`translate`](Self::translate), with a reference to the mapping that the caller
    /// (a queue) keeps, so that the memory stays mapped as long as it needs it.
    pub(crate) fn translate_owned(&mut self, iova: u64, len: usize) -> Option<HostMem> {
        let (map, off) = self.translate(iova, len)?;
        Some(HostMem {
            map: map.clone(),
            off,
        })
    }
}

/// Host memory reached through a DMA mapping: the device's mapping (kept alive by this
/// reference even if the host unmaps the IOVA range meanwhile) and an offset in it.
#[derive(Clone)]
pub(crate) struct HostMem {
    pub(crate) map: Arc<Mapping>,
    pub(crate) off: usize,
}

/// A contiguous piece of host memory that a command transfers: `len` bytes at `off` in
/// `map`.
#[derive(Clone)]
pub(crate) struct Seg {
    pub(crate) map: Arc<Mapping>,
    pub(crate) off: usize,
    pub(crate) len: usize,
}

fn prp_offset_invalid() -> Status {
    Status::generic(GenericStatus::PrpOffsetInvalid).with_dnr()
}

fn data_transfer_error() -> Status {
    Status::generic(GenericStatus::DataTransferError).with_dnr()
}

#[inline]
fn push(view: &mut DmaView, segs: &mut Vec<Seg>, iova: u64, len: usize) -> Result<(), Status> {
    let (map, off) = view.translate(iova, len).ok_or_else(data_transfer_error)?;
    if let Some(last) = segs.last_mut() {
        if Arc::ptr_eq(&last.map, map) && last.off + last.len == off {
            last.len += len;
            return Ok(());
        }
    }
    segs.push(Seg {
        map: map.clone(),
        off,
        len,
    });
    Ok(())
}

/// Resolves the data pointer `prp1`/`prp2` of a `len`-byte transfer into device address
/// segments in `segs` (cleared first), for memory pages of `page` bytes (CC.MPS).
///
/// Errors: PRP Offset Invalid for a misaligned PRP1 (not dword aligned), PRP2 page pointer,
/// PRP list entry or list pointer; Data Transfer Error for an IOVA that is not mapped.
pub(crate) fn resolve_prps(
    view: &mut DmaView,
    segs: &mut Vec<Seg>,
    prp1: u64,
    prp2: u64,
    len: usize,
    page: usize,
) -> Result<(), Status> {
    segs.clear();
    if len == 0 {
        return Ok(());
    }
    let mask = page as u64 - 1;
    if prp1 & 3 != 0 {
        return Err(prp_offset_invalid());
    }
    let first = len.min(page - (prp1 & mask) as usize);
    push(view, segs, prp1, first)?;
    let mut remaining = len - first;
    if remaining == 0 {
        return Ok(());
    }
    if remaining <= page {
        if prp2 & mask != 0 {
            return Err(prp_offset_invalid());
        }
        return push(view, segs, prp2, remaining);
    }
    // PRP2 points to a PRP list (which may start inside a page).
    let mut list = prp2;
    let mut hops = 0usize;
    let max_hops = remaining / page + 2;
    loop {
        if list & 7 != 0 {
            return Err(prp_offset_invalid());
        }
        hops += 1;
        if hops > max_hops {
            return Err(prp_offset_invalid());
        }
        let slots = (page - (list & mask) as usize) / 8;
        let pages_needed = remaining.div_ceil(page);
        let (n, chain) = if pages_needed <= slots {
            (pages_needed, false)
        } else {
            (slots - 1, true)
        };
        let bytes = (n + chain as usize) * 8;
        let (map, base) = view
            .translate(list, bytes)
            .map(|(m, o)| (m.clone(), o))
            .ok_or_else(data_transfer_error)?;
        // The host may write an entry concurrently only if it violates the protocol; a torn
        // value is then merely a wrong PRP.
        let entry = |i: usize| map.load_u64_le_volatile(base + i * 8);
        for i in 0..n {
            let e = entry(i);
            if e & mask != 0 {
                return Err(prp_offset_invalid());
            }
            let l = remaining.min(page);
            push(view, segs, e, l)?;
            remaining -= l;
        }
        if !chain {
            return Ok(());
        }
        list = entry(n);
    }
}

/// Copies `[src_off, src_off + total)` of `src` (device memory, e.g. namespace storage)
/// into the host segments, `total` being their total length.
pub(crate) fn copy_to_host(segs: &[Seg], src: &Mapping, mut src_off: usize) {
    for s in segs {
        src.copy_to(src_off, &s.map, s.off, s.len);
        src_off += s.len;
    }
}

/// Copies the host segments into `dst` (device memory) from `dst_off` on.
pub(crate) fn copy_from_host(segs: &[Seg], dst: &Mapping, mut dst_off: usize) {
    for s in segs {
        s.map.copy_to(s.off, dst, dst_off, s.len);
        dst_off += s.len;
    }
}

/// Copies a byte slice into the host segments (at most the segments' total length).
pub(crate) fn write_host(segs: &[Seg], mut data: &[u8]) {
    for s in segs {
        let n = s.len.min(data.len());
        s.map.write(s.off, &data[..n]);
        data = &data[n..];
        if data.is_empty() {
            break;
        }
    }
}

/// Copies the host segments into a byte slice (at most its length).
pub(crate) fn read_host(segs: &[Seg], mut out: &mut [u8]) {
    for s in segs {
        let n = s.len.min(out.len());
        s.map.read(s.off, &mut out[..n]);
        out = &mut out[n..];
        if out.is_empty() {
            break;
        }
    }
}

/// Most SGL descriptors one command may use (lists included): bounds the walk of a chain of
/// segments that points back at itself.
pub(crate) const MAX_SGL_DESCRIPTORS: usize = 4096;

fn sgl_error(s: GenericStatus) -> Status {
    Status::generic(s).with_dnr()
}

/// A list of SGL descriptors being walked: its memory, how many it holds, the next one to
/// read, and whether a Last Segment descriptor pointed to it.
struct SglList {
    map: Arc<Mapping>,
    base: usize,
    count: usize,
    next: usize,
    last: bool,
}

/// Resolves the SGL in a command's data pointer (`dptr1`, `dptr2`: the PRP1/PRP2 bytes,
/// PSDT 01b) of a `len`-byte transfer into device address segments in `segs` (cleared
/// first). Our own reading of NVMe 1.4 section 4.4, for a controller that reports SGLS
/// 01b (no alignment requirement), no Bit Bucket and no SGL longer than the transfer:
///
/// - SGL Descriptor Type Invalid: a type other than Data Block, Segment and Last Segment,
///   or a sub type other than Address;
/// - Invalid SGL Segment Descriptor: a Segment or Last Segment descriptor that is not the
///   last of its list, that sits in a Last Segment's list, or whose length is zero or not a
///   multiple of 16; a Segment's list whose last descriptor points to no further list;
/// - Data SGL Length Invalid: Data Blocks adding up to more or less than the transfer;
/// - Invalid Number of SGL Descriptors: more than [`MAX_SGL_DESCRIPTORS`];
/// - Data Transfer Error: a data block or list at an IOVA that is not mapped.
pub(crate) fn resolve_sgl(
    view: &mut DmaView,
    segs: &mut Vec<Seg>,
    dptr1: u64,
    dptr2: u64,
    len: usize,
) -> Result<(), Status> {
    use nvme_regs::sgl::{SglDescriptor, SglDescriptorType as D, SGL_SUBTYPE_ADDRESS};
    segs.clear();
    let mut desc = SglDescriptor::from_dptr(dptr1, dptr2);
    let mut remaining = len;
    let mut list: Option<SglList> = None;
    let mut used = 0usize;
    loop {
        used += 1;
        if used > MAX_SGL_DESCRIPTORS {
            return Err(sgl_error(GenericStatus::InvalidSglCount));
        }
        let kind = match desc.kind() {
            Some(k) if desc.subtype() == SGL_SUBTYPE_ADDRESS => k,
            _ => return Err(sgl_error(GenericStatus::SglDescriptorTypeInvalid)),
        };
        match kind {
            D::DataBlock => {
                let n = desc.length as usize;
                if n > remaining {
                    return Err(sgl_error(GenericStatus::DataSglLengthInvalid));
                }
                if n > 0 {
                    push(view, segs, desc.address, n)?;
                }
                remaining -= n;
            }
            D::Segment | D::LastSegment => {
                let misplaced = list.as_ref().is_some_and(|l| l.last || l.next != l.count);
                let n = desc.length as usize;
                if misplaced || n == 0 || !n.is_multiple_of(SglDescriptor::SIZE) {
                    return Err(sgl_error(GenericStatus::InvalidSglSegmentDescriptor));
                }
                let (map, base) = view
                    .translate(desc.address, n)
                    .map(|(m, o)| (m.clone(), o))
                    .ok_or_else(data_transfer_error)?;
                list = Some(SglList {
                    map,
                    base,
                    count: n / SglDescriptor::SIZE,
                    next: 0,
                    last: kind == D::LastSegment,
                });
            }
            _ => return Err(sgl_error(GenericStatus::SglDescriptorTypeInvalid)),
        }
        match list.as_mut() {
            Some(l) if l.next < l.count => {
                let mut raw = [0u8; SglDescriptor::SIZE];
                // The host may change the list concurrently only if it breaks the protocol;
                // a torn descriptor is then merely a wrong one.
                l.map.read(l.base + l.next * SglDescriptor::SIZE, &mut raw);
                l.next += 1;
                let word = |i: usize| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&raw[i..i + 8]);
                    u64::from_le_bytes(b)
                };
                desc = SglDescriptor::from_dptr(word(0), word(8));
            }
            Some(l) if !l.last => {
                // A Segment's list must end with a pointer to the next list.
                return Err(sgl_error(GenericStatus::InvalidSglSegmentDescriptor));
            }
            _ => break,
        }
    }
    if remaining != 0 {
        return Err(sgl_error(GenericStatus::DataSglLengthInvalid));
    }
    Ok(())
}
