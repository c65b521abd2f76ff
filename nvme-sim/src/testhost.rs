//! The minimal test host: maps a controller's BAR, owns a DMA memfd, builds submission
//! entries by hand, rings doorbells and polls completion queues. Used by the in-process
//! tests (`tests.rs`) and the daemon tests (`daemon_tests.rs`).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use nvme_regs::opcode::{AdminOpcode as A, NvmOpcode as N};
use nvme_regs::registers::{cq_head_doorbell, offset, sq_tail_doorbell, Aqa, Cc, Csts};
use nvme_regs::{CompletionEntry, Status, SubmissionEntry};
use zerocopy::{FromZeros, IntoBytes};

use crate::bar::Bar;
use crate::mem::{create_memfd, Mapping};
use crate::{NamespaceConfig, SimConfig, SimError};

pub(crate) const DMA_IOVA: u64 = 0x7_0000_0000;
pub(crate) const DMA_LEN: usize = 16 << 20;
pub(crate) const PAGE: usize = 4096;
pub(crate) const WAIT: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct HostQueue {
    pub(crate) sq_off: usize,
    pub(crate) sq_size: u32,
    pub(crate) sq_tail: u32,
    pub(crate) cq_off: usize,
    pub(crate) cq_size: u32,
    pub(crate) cq_head: u32,
    pub(crate) phase: bool,
    /// Write the CQ head doorbell after each consumed entry.
    pub(crate) auto_ack: bool,
}

/// The test host: BAR and DMA mappings, queues, command helpers (no controller).
pub(crate) struct HostCore {
    /// BAR0, through the device's own accessor (atomic loads and stores).
    pub(crate) bar: Bar,
    pub(crate) _dma_fd: OwnedFd,
    pub(crate) dma: Mapping,
    pub(crate) next: usize,
    pub(crate) dstrd: u8,
    pub(crate) queues: Vec<Option<HostQueue>>,
    pub(crate) cid: u16,
}

pub(crate) fn small_config() -> SimConfig {
    SimConfig {
        namespaces: vec![
            NamespaceConfig {
                lba_size: 512,
                blocks: 16384, // 8 MiB
            },
            NamespaceConfig {
                lba_size: 4096,
                blocks: 2048, // 8 MiB
            },
        ],
        max_io_queues: 8,
        ..SimConfig::default()
    }
}

pub(crate) fn cmd(opcode: u8) -> SubmissionEntry {
    SubmissionEntry {
        opcode,
        ..Default::default()
    }
}

pub(crate) fn rw(
    opcode: N,
    nsid: u32,
    slba: u64,
    nlb: u32,
    prp1: u64,
    prp2: u64,
) -> SubmissionEntry {
    SubmissionEntry {
        opcode: opcode as u8,
        nsid,
        prp1,
        prp2,
        cdw10: slba as u32,
        cdw11: (slba >> 32) as u32,
        cdw12: nlb - 1,
        ..Default::default()
    }
}

pub(crate) fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

impl HostCore {
    /// A host for the controller whose BAR0 is `bar_fd`; `dma_map` gives the controller
    /// access to the host's DMA memfd at [`DMA_IOVA`].
    pub(crate) fn new(
        bar_fd: BorrowedFd<'_>,
        bar_len: usize,
        dstrd: u8,
        dma_map: impl FnOnce(u64, BorrowedFd<'_>, u64, usize) -> Result<(), SimError>,
    ) -> HostCore {
        let dma_fd = create_memfd("test-dma", DMA_LEN as u64).expect("memfd");
        let h = HostCore::with_memory(bar_fd, bar_len, dstrd, dma_fd);
        dma_map(DMA_IOVA, h._dma_fd.as_fd(), 0, DMA_LEN).expect("dma_map");
        h
    }

    /// A host whose DMA memory is the first [`DMA_LEN`] bytes of `dma_fd`, which the caller
    /// maps (or has mapped) at [`DMA_IOVA`] for the controller.
    pub(crate) fn with_memory(
        bar_fd: BorrowedFd<'_>,
        bar_len: usize,
        dstrd: u8,
        dma_fd: OwnedFd,
    ) -> HostCore {
        let bar = Bar::new(Mapping::map(bar_fd, 0, bar_len, false).expect("map BAR"));
        let dma = Mapping::map(dma_fd.as_fd(), 0, DMA_LEN, false).expect("map DMA");
        HostCore {
            bar,
            _dma_fd: dma_fd,
            dma,
            next: 0,
            dstrd,
            queues: (0..=64).map(|_| None).collect(),
            cid: 0,
        }
    }

    pub(crate) fn r32(&self, off: usize) -> u32 {
        self.bar.load32(off)
    }
    pub(crate) fn w32(&self, off: usize, v: u32) {
        self.bar.store32(off, v)
    }
    pub(crate) fn r64(&self, off: usize) -> u64 {
        self.bar.load64(off)
    }
    pub(crate) fn w64(&self, off: usize, v: u64) {
        self.bar.store64(off, v)
    }
    pub(crate) fn csts(&self) -> Csts {
        Csts(self.r32(offset::CSTS))
    }

    /// Allocates zeroed, page-aligned DMA memory; returns its offset in the DMA memfd.
    pub(crate) fn alloc(&mut self, bytes: usize) -> usize {
        let off = self.next;
        self.next += bytes.div_ceil(PAGE) * PAGE;
        assert!(self.next <= DMA_LEN, "test DMA memory exhausted");
        off
    }
    pub(crate) fn iova(off: usize) -> u64 {
        DMA_IOVA + off as u64
    }
    pub(crate) fn write_mem(&self, off: usize, data: &[u8]) {
        assert!(off + data.len() <= DMA_LEN);
        self.dma.write(off, data);
    }
    pub(crate) fn read_mem(&self, off: usize, len: usize) -> Vec<u8> {
        assert!(off + len <= DMA_LEN);
        let mut v = vec![0u8; len];
        self.dma.read(off, &mut v);
        v
    }
    pub(crate) fn write_u64(&self, off: usize, v: u64) {
        self.write_mem(off, &v.to_le_bytes());
    }

    pub(crate) fn wait_csts(&self, what: &str, pred: impl Fn(Csts) -> bool) -> Duration {
        let t = Instant::now();
        while !pred(self.csts()) {
            assert!(
                t.elapsed() < WAIT,
                "timed out waiting for {what}: CSTS {:#x}",
                self.csts().0
            );
            std::thread::sleep(Duration::from_micros(50));
        }
        t.elapsed()
    }

    pub(crate) fn cc_default() -> Cc {
        Cc(0)
            .with_iosqes(6)
            .with_iocqes(4)
            .with_mps(0)
            .with_en(true)
    }

    /// Programs admin queues of `entries` entries and sets CC (without waiting).
    pub(crate) fn start_enable(&mut self, cc: Cc, entries: u16) {
        let sq = self.alloc(entries as usize * 64);
        let cq = self.alloc(entries as usize * 16);
        self.w32(offset::AQA, Aqa::new(entries, entries).0);
        self.w64(offset::ASQ, Self::iova(sq));
        self.w64(offset::ACQ, Self::iova(cq));
        self.queues[0] = Some(HostQueue {
            sq_off: sq,
            sq_size: entries as u32,
            sq_tail: 0,
            cq_off: cq,
            cq_size: entries as u32,
            cq_head: 0,
            phase: true,
            auto_ack: true,
        });
        self.w32(offset::CC, cc.0);
    }

    pub(crate) fn enable(&mut self) {
        self.start_enable(Self::cc_default(), 32);
        self.wait_csts("RDY", |c| c.rdy());
        assert!(!self.csts().cfs());
    }

    pub(crate) fn disable(&mut self) {
        let cc = Cc(self.r32(offset::CC)).with_en(false);
        self.w32(offset::CC, cc.0);
        self.wait_csts("RDY clear", |c| !c.rdy());
        self.queues.iter_mut().for_each(|q| *q = None);
    }

    /// Writes a command at the SQ tail and rings the doorbell; returns the CID.
    pub(crate) fn submit(&mut self, qid: u16, mut c: SubmissionEntry) -> u16 {
        self.cid = self.cid.wrapping_add(1);
        c.cid = self.cid;
        self.push(qid, c);
        self.ring(qid);
        c.cid
    }

    /// Writes a command (keeping its CID) without ringing the doorbell.
    pub(crate) fn push(&mut self, qid: u16, c: SubmissionEntry) {
        let q = self.queues[qid as usize].as_mut().expect("queue");
        let off = q.sq_off + q.sq_tail as usize * 64;
        q.sq_tail = (q.sq_tail + 1) % q.sq_size;
        // The ring is read by the controller's thread: volatile stores, published by the
        // release fence before the doorbell write.
        self.dma.write_volatile(off, c.as_bytes());
    }

    pub(crate) fn ring(&mut self, qid: u16) {
        let tail = self.queues[qid as usize].as_ref().expect("queue").sq_tail;
        fence(Ordering::Release);
        self.w32(sq_tail_doorbell(qid, self.dstrd), tail);
    }

    /// Takes the next completion of `qid` if one is posted.
    pub(crate) fn poll(&mut self, qid: u16) -> Option<CompletionEntry> {
        let q = self.queues[qid as usize].as_mut().expect("queue");
        let off = q.cq_off + q.cq_head as usize * 16;
        let dw3 = self.dma.atomic_u32(off + 12).load(Ordering::Acquire);
        if (dw3 >> 16) & 1 != q.phase as u32 {
            return None;
        }
        // The entry is complete once its phase is seen with acquire.
        let mut e = CompletionEntry::new_zeroed();
        self.dma.read_volatile(off, e.as_mut_bytes());
        q.cq_head += 1;
        if q.cq_head == q.cq_size {
            q.cq_head = 0;
            q.phase = !q.phase;
        }
        if q.auto_ack {
            let head = q.cq_head;
            self.w32(cq_head_doorbell(qid, self.dstrd), head);
        }
        Some(e)
    }

    pub(crate) fn ack(&mut self, qid: u16) {
        let head = self.queues[qid as usize].as_ref().expect("queue").cq_head;
        self.w32(cq_head_doorbell(qid, self.dstrd), head);
    }

    pub(crate) fn wait(&mut self, qid: u16) -> CompletionEntry {
        let t = Instant::now();
        loop {
            if let Some(e) = self.poll(qid) {
                return e;
            }
            assert!(t.elapsed() < WAIT, "no completion on queue {qid}");
            std::thread::yield_now();
        }
    }

    /// Asserts that no completion arrives on `qid` within `d`.
    pub(crate) fn expect_none(&mut self, qid: u16, d: Duration) {
        let t = Instant::now();
        while t.elapsed() < d {
            assert!(
                self.poll(qid).is_none(),
                "unexpected completion on queue {qid}"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    pub(crate) fn exec(&mut self, qid: u16, c: SubmissionEntry) -> CompletionEntry {
        let cid = self.submit(qid, c);
        let e = self.wait(qid);
        assert_eq!(e.cid, cid, "completion for another command");
        assert_eq!(e.sq_id, qid);
        e
    }

    pub(crate) fn admin(&mut self, c: SubmissionEntry) -> CompletionEntry {
        self.exec(0, c)
    }

    /// Runs an admin command that returns `len` bytes; returns (status, data).
    pub(crate) fn admin_read(&mut self, mut c: SubmissionEntry, len: usize) -> (Status, Vec<u8>) {
        let buf = self.alloc(len);
        c.prp1 = Self::iova(buf);
        if len > PAGE {
            assert!(len <= 2 * PAGE);
            c.prp2 = Self::iova(buf + PAGE);
        }
        let e = self.admin(c);
        (e.status(), self.read_mem(buf, len))
    }

    pub(crate) fn identify(&mut self, cns: u8, nsid: u32) -> (Status, Vec<u8>) {
        let mut c = cmd(A::Identify as u8);
        c.cdw10 = cns as u32;
        c.nsid = nsid;
        self.admin_read(c, 4096)
    }

    pub(crate) fn get_log(&mut self, log: u8, dwords: u32, offset: u64) -> (Status, Vec<u8>) {
        let mut c = cmd(A::GetLogPage as u8);
        c.nsid = 0xffff_ffff;
        c.cdw10 = log as u32 | ((dwords - 1) & 0xffff) << 16;
        c.cdw11 = (dwords - 1) >> 16;
        c.cdw12 = offset as u32;
        c.cdw13 = (offset >> 32) as u32;
        self.admin_read(c, dwords as usize * 4)
    }

    pub(crate) fn set_feature(&mut self, f: u8, v: u32) -> CompletionEntry {
        let mut c = cmd(A::SetFeatures as u8);
        c.cdw10 = f as u32;
        c.cdw11 = v;
        self.admin(c)
    }

    pub(crate) fn get_feature(&mut self, f: u8, sel: u32, cdw11: u32) -> CompletionEntry {
        let mut c = cmd(A::GetFeatures as u8);
        c.cdw10 = f as u32 | sel << 8;
        c.cdw11 = cdw11;
        self.admin(c)
    }

    pub(crate) fn create_cq_cmd(qid: u16, entries: u32, iova: u64) -> SubmissionEntry {
        let mut c = cmd(A::CreateIoCq as u8);
        c.prp1 = iova;
        c.cdw10 = qid as u32 | (entries - 1) << 16;
        c.cdw11 = 1; // physically contiguous, no interrupts
        c
    }

    pub(crate) fn create_sq_cmd(qid: u16, entries: u32, iova: u64, cqid: u16) -> SubmissionEntry {
        let mut c = cmd(A::CreateIoSq as u8);
        c.prp1 = iova;
        c.cdw10 = qid as u32 | (entries - 1) << 16;
        c.cdw11 = 1 | (cqid as u32) << 16;
        c
    }

    /// Creates I/O CQ and SQ `qid` (paired) of the given sizes.
    pub(crate) fn create_io(&mut self, qid: u16, sq_entries: u32, cq_entries: u32) {
        self.create_io_on(qid, sq_entries, cq_entries, None)
    }

    /// [`create_io`](Self::create_io) with the CQ's interrupts enabled on `vector`, if any.
    pub(crate) fn create_io_on(
        &mut self,
        qid: u16,
        sq_entries: u32,
        cq_entries: u32,
        vector: Option<u16>,
    ) {
        let cq = self.alloc(cq_entries as usize * 16);
        let sq = self.alloc(sq_entries as usize * 64);
        let mut c = Self::create_cq_cmd(qid, cq_entries, Self::iova(cq));
        if let Some(v) = vector {
            c.cdw11 |= 2 | u32::from(v) << 16;
        }
        let e = self.admin(c);
        assert!(e.status().is_success(), "create cq: {}", e.status());
        let e = self.admin(Self::create_sq_cmd(qid, sq_entries, Self::iova(sq), qid));
        assert!(e.status().is_success(), "create sq: {}", e.status());
        self.queues[qid as usize] = Some(HostQueue {
            sq_off: sq,
            sq_size: sq_entries,
            sq_tail: 0,
            cq_off: cq,
            cq_size: cq_entries,
            cq_head: 0,
            phase: true,
            auto_ack: true,
        });
    }
}
