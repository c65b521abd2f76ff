//! Reading structured values off the fuzzer's bytes: every read succeeds (zeros once the
//! input is used up), so any input is a valid program for a target.

/// A cursor over the input.
pub(crate) struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Input<'a> {
        Input { data }
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    pub(crate) fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }
    pub(crate) fn bool(&mut self) -> bool {
        self.u8() & 1 != 0
    }
    pub(crate) fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    pub(crate) fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    pub(crate) fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }
    /// Up to `n` bytes (fewer at the end of the input).
    pub(crate) fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }
    /// Exactly `N` bytes, zero-padded at the end of the input.
    pub(crate) fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        let b = self.bytes(N);
        a[..b.len()].copy_from_slice(b);
        a
    }
    /// The rest of the input.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// Page-aligned, zeroed memory as a DMA region with a made-up IOVA, never freed (the targets
/// allocate it once per thread and reuse it).
pub(crate) fn leaked_region(len: usize, iova: u64) -> nvme_core::DmaRegion {
    let layout = std::alloc::Layout::from_size_align(len, 4096).expect("layout");
    // SAFETY: a non-zero size layout (every caller asks for at least a page).
    let p = unsafe { std::alloc::alloc_zeroed(layout) };
    assert!(!p.is_null(), "allocation failed");
    // SAFETY: the allocation is never freed, so it is valid for reads and writes of `len`
    // bytes for the rest of the process; only the region (and copies of it, used by one
    // thread) reach it. No device is involved: the IOVA is never dereferenced.
    unsafe { nvme_core::DmaRegion::new(p, iova, len) }
}
