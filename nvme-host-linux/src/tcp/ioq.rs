//! An I/O queue over NVMe/TCP: [`TcpRings`], the [`Rings`] of nvme-core's queue pair over
//! one non-blocking connection, and [`MemoryTable`], the host memory its commands' data
//! pointers are resolved in.
//!
//! The queue pair (command identifiers, slots, splitting, results) is nvme-core's, the same
//! engine as PCIe's; it hands `push` a command whose data pointer is an SGL Data Block
//! descriptor at the buffer's IOVA. `push` resolves that address in the memory table
//! (bounds checked: an address outside every mapping fails the command here, without
//! touching memory or sending it), records the command's data region and direction by its
//! slot, rewrites the descriptor (in-capsule data up to the queue's IOCCSZ for writes, a
//! Transport Data Block otherwise) and frames the capsule into the send buffer;
//! [`ring_sq`](Rings::ring_sq) writes the buffer (one write per batch; what the socket does
//! not take now goes with the next call). `pop` reads what has arrived into a receive
//! buffer and handles whole PDUs: C2HData is copied into the command's region after its
//! offset and length are checked against it, an R2T is answered with H2CData PDUs of at
//! most MAXH2CDATA bytes from the region, a CapsuleResp gives its completion entry and a
//! C2HData with SUCCESS a synthesised one. After the first transport failure (the
//! connection closed, a digest mismatch, a protocol error) nothing more is sent or
//! parsed: [`TcpRings::failure`] names it, and the queue pair's owner fails what is
//! outstanding.
//!
//! Per I/O nothing is allocated (the buffers and tables are sized at creation) and no lock
//! is taken: the memory table is copied into the queue when it changes (one atomic load
//! per command to notice).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use nvme_core::{DmaRegion, Rings};
use nvme_regs::entry::{CompletionEntry, SubmissionEntry, PSDT_SGL};
use nvme_regs::sgl::{SglDescriptor, SglDescriptorType};
use nvme_regs::status::GenericStatus;
use nvme_regs::tcp::{
    in_capsule, transport_data_block, CapsuleCmd, CommonHeader, DataHeader, FatalErrorStatus,
    PduFlags, PduType, TermReq, DIGEST_LEN, MAX_TERM_PDU_LEN,
};
use nvme_regs::Status;
use zerocopy::{FromBytes, IntoBytes};

use super::link::{
    check_common, check_data_digest, check_header, check_header_digest, io_failure, Framing,
    Inbound, Negotiated, Stream,
};
use super::TcpError;

/// The host memory a transport without an IOMMU exposes to its controller: every region
/// mapped with [`Transport::map_dma`](crate::Transport::map_dma), by IOVA. Queues keep a
/// copy ([`MemoryView`]) and refresh it when the generation moves.
#[derive(Debug, Default)]
pub(crate) struct MemoryTable {
    /// The regions, sorted by IOVA, not overlapping.
    regions: RwLock<Vec<DmaRegion>>,
    /// Bumped on every change.
    generation: AtomicU64,
}

impl MemoryTable {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<DmaRegion>> {
        self.regions.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `region` (it must not overlap one already there: `false`, nothing added).
    pub(crate) fn insert(&self, region: DmaRegion) -> bool {
        let mut r = self.write();
        let at = r.partition_point(|x| x.iova() < region.iova());
        let end = |x: &DmaRegion| x.iova() + x.len() as u64;
        let overlaps_prev = at > 0 && end(&r[at - 1]) > region.iova();
        let overlaps_next = r.get(at).is_some_and(|x| x.iova() < end(&region));
        if overlaps_prev || overlaps_next || region.is_empty() {
            return false;
        }
        r.insert(at, region);
        self.generation.fetch_add(1, Ordering::Release);
        true
    }

    /// Removes the region mapped at `iova` (and `len` bytes long).
    pub(crate) fn remove(&self, iova: u64, len: usize) {
        let mut r = self.write();
        r.retain(|x| !(x.iova() == iova && x.len() == len));
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Removes every region inside `[iova, iova + len)`.
    pub(crate) fn remove_range(&self, iova: u64, len: u64) {
        let mut r = self.write();
        r.retain(|x| x.iova() < iova || x.iova() + x.len() as u64 > iova + len);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Regions in the table.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.regions.read().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// A queue's copy of the [`MemoryTable`].
#[derive(Debug)]
pub(crate) struct MemoryView {
    table: Arc<MemoryTable>,
    regions: Vec<DmaRegion>,
    generation: u64,
}

impl MemoryView {
    /// A view of `table`.
    pub(crate) fn new(table: Arc<MemoryTable>) -> MemoryView {
        MemoryView {
            table,
            regions: Vec::new(),
            generation: u64::MAX,
        }
    }

    /// The `len` bytes at `addr`, when they lie inside one mapped region.
    #[inline]
    pub(crate) fn resolve(&mut self, addr: u64, len: usize) -> Option<DmaRegion> {
        let now = self.table.generation.load(Ordering::Acquire);
        if now != self.generation {
            self.refresh();
        }
        let at = self.regions.partition_point(|r| r.iova() <= addr);
        let r = self.regions.get(at.checked_sub(1)?)?;
        let off = usize::try_from(addr - r.iova()).ok()?;
        r.sub(off, len)
    }

    #[cold]
    fn refresh(&mut self) {
        let r = self.table.regions.read().unwrap_or_else(|p| p.into_inner());
        self.generation = self.table.generation.load(Ordering::Acquire);
        self.regions.clear();
        self.regions.extend_from_slice(&r);
    }
}

/// Which way a command's data goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    /// No data.
    None,
    /// Host to controller (opcode bits 1:0 = 01b): in the capsule or in H2CData PDUs.
    ToController,
    /// Controller to host (10b): in C2HData PDUs.
    ToHost,
}

/// What the queue knows of an outstanding command (by slot: `cid & mask`).
#[derive(Clone, Copy, Debug)]
struct Outstanding {
    /// Its command identifier (`None`: the slot has no command at the controller).
    cid: Option<u16>,
    direction: Direction,
    /// Its data (an empty region when it has none).
    region: DmaRegion,
    /// The data went in the capsule.
    in_capsule: bool,
    /// Bytes received so far (C2HData arrives in order).
    received: usize,
}

impl Outstanding {
    const NONE: Outstanding = Outstanding {
        cid: None,
        direction: Direction::None,
        region: DmaRegion::EMPTY,
        in_capsule: false,
        received: 0,
    };
}

/// What `push` did with a command, for `unpush`.
#[derive(Clone, Copy, Debug)]
enum Pushed {
    /// Framed into the send buffer, which was this long before.
    Framed { tx_len: usize, slot: usize },
    /// Failed here (a completion waits in `local`).
    Local,
}

/// The parameters of an I/O queue's connection.
#[derive(Clone, Copy, Debug)]
pub(crate) struct QueueParams {
    /// The queue id.
    pub(crate) qid: u16,
    /// Submission queue entries (as in Connect's SQSIZE + 1).
    pub(crate) entries: u32,
    /// In-capsule data the controller accepts on I/O queues ((IOCCSZ * 16) - 64 bytes).
    pub(crate) in_capsule: usize,
    /// Largest transfer of one command (bounds a C2HData PDU).
    pub(crate) max_transfer: usize,
}

/// One I/O queue over a non-blocking NVMe/TCP connection (see the module documentation).
pub struct TcpRings {
    stream: Box<dyn Stream>,
    peer: String,
    neg: Negotiated,
    framing: Framing,
    params: QueueParams,
    /// Commands sent or framed and not completed: the submission queue entries that may
    /// be in use at the controller (it frees an entry when it fetches the command, before
    /// completing it; SQHD is not needed, and is 0xffff when the controller disabled SQ
    /// flow control).
    in_flight: u32,
    /// Framed PDUs, `tx[sent..]` not written yet.
    tx: Vec<u8>,
    sent: usize,
    /// Commands pushed since the last `ring_sq`, in order.
    pushed: Vec<Pushed>,
    /// Received bytes, `rx[start..end]` not parsed yet.
    rx: Box<[u8]>,
    start: usize,
    end: usize,
    /// Per slot: the command there.
    cmds: Box<[Outstanding]>,
    mask: u16,
    /// Completions of commands failed here without being sent.
    local: VecDeque<CompletionEntry>,
    mem: MemoryView,
    failure: Option<String>,
    /// The transport's association count, and the association this connection belongs to:
    /// when they differ (the controller was reset: a new association) the queue reconnects.
    association: Option<(Arc<AtomicU64>, u64)>,
    /// Reconnect attempts since the connection failed, and when the last one was made.
    pub(crate) attempts: (u32, Option<std::time::Instant>),
}

impl std::fmt::Debug for TcpRings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpRings")
            .field("peer", &self.peer)
            .field("qid", &self.params.qid)
            .field("failure", &self.failure)
            .finish()
    }
}

/// How one step of parsing went.
enum Parsed {
    /// A completion entry.
    Completion(CompletionEntry),
    /// A PDU was handled; more may follow.
    Handled,
    /// No whole PDU in the receive buffer.
    NeedMore,
}

/// SQHD of a completion that reports no submission queue head (SQ flow control disabled;
/// a completion synthesised here).
const SQHD_NONE: u16 = 0xffff;

/// Bytes before the data in a PDU at most (header, digest, padding up to 128-byte CPDA).
const MAX_PDU_OVERHEAD: usize = 256;

impl TcpRings {
    /// The rings over `stream`, a connection whose ICReq/ICResp and Fabrics Connect for
    /// queue `params.qid` are done; made non-blocking here.
    pub(crate) fn new(
        stream: Box<dyn Stream>,
        peer: String,
        neg: Negotiated,
        params: QueueParams,
        memory: Arc<MemoryTable>,
    ) -> Result<TcpRings, TcpError> {
        stream.set_nonblocking(true).map_err(|e| TcpError::Io {
            peer: peer.clone(),
            what: "making the I/O queue's socket non-blocking".into(),
            source: e,
        })?;
        let entries = params.entries.max(2);
        let rx_len = params.max_transfer.max(4096) + MAX_PDU_OVERHEAD + DIGEST_LEN;
        Ok(TcpRings {
            stream,
            peer,
            framing: neg.framing(),
            neg,
            params: QueueParams { entries, ..params },
            in_flight: 0,
            tx: Vec::with_capacity(64 * 1024),
            sent: 0,
            pushed: Vec::with_capacity(entries as usize),
            rx: vec![0; rx_len].into_boxed_slice(),
            start: 0,
            end: 0,
            cmds: vec![Outstanding::NONE; entries as usize].into_boxed_slice(),
            mask: u16::MAX,
            local: VecDeque::with_capacity(entries as usize),
            mem: MemoryView::new(memory),
            failure: None,
            association: None,
            attempts: (0, None),
        })
    }

    /// The first transport failure, if the connection failed: every later push is refused
    /// and nothing more completes.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// Records the association this connection belongs to (see `association`).
    pub(crate) fn set_association(&mut self, count: Arc<AtomicU64>, this: u64) {
        self.association = Some((count, this));
    }

    /// Does the queue need a new connection: its connection failed, or the controller was
    /// reset since it connected (an association made anew)?
    #[inline]
    pub(crate) fn needs_reconnect(&self) -> bool {
        self.failure.is_some() || self.superseded()
    }

    /// Was a new association made since this connection's?
    #[inline]
    pub(crate) fn superseded(&self) -> bool {
        self.association
            .as_ref()
            .is_some_and(|(count, this)| count.load(Ordering::Acquire) != *this)
    }

    /// Replaces the failure's message (what reconnecting found, added to it).
    pub(crate) fn set_failure(&mut self, why: String) {
        self.failure = Some(why);
    }

    /// The CID bits that index the per-command table (given by the queue pair).
    pub(crate) fn cid_mask(&self) -> u16 {
        self.mask
    }

    /// The controller's address.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// What ICResp granted on this connection.
    pub fn negotiated(&self) -> Negotiated {
        self.neg
    }

    /// Records `e` as the connection's failure (the first one stays); a protocol error
    /// tells the controller with an H2CTermReq first.
    #[cold]
    fn fail(&mut self, e: TcpError, fes: Option<FatalErrorStatus>) {
        if let Some(fes) = fes {
            let t = TermReq {
                ch: CommonHeader::new(PduType::H2cTermReq, PduFlags::empty(), 0, 24),
                fes: fes as u16,
                ..Default::default()
            };
            let _ = self.stream.write(t.as_bytes());
        }
        if self.failure.is_none() {
            self.failure = Some(e.to_string());
        }
    }

    fn protocol(&self, message: String) -> TcpError {
        TcpError::Protocol {
            peer: self.peer.clone(),
            message,
        }
    }

    /// An I/O error as what it means (the controller closed the connection, or another OS
    /// error).
    fn io_error(&self, e: io::Error, doing: &'static str) -> TcpError {
        let qid = self.params.qid;
        io_failure(&self.peer, e, "I/O completions", || {
            format!("{doing} on I/O queue {qid}")
        })
    }

    /// A completion for a command failed here with `status`, never sent.
    fn fail_locally(&mut self, cid: u16, status: GenericStatus) -> bool {
        self.local.push_back(CompletionEntry {
            cid,
            sq_head: SQHD_NONE,
            status: Status::generic(status).to_completion_word(false),
            ..Default::default()
        });
        self.pushed.push(Pushed::Local);
        true
    }

    /// Writes what the socket takes now of the send buffer.
    fn flush(&mut self) {
        while self.sent < self.tx.len() {
            match self.stream.write(&self.tx[self.sent..]) {
                Ok(0) => {
                    let e = self.io_error(io::ErrorKind::BrokenPipe.into(), "sending");
                    return self.fail(e, None);
                }
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let e = self.io_error(e, "sending");
                    return self.fail(e, None);
                }
            }
        }
        if self.pushed.is_empty() {
            self.tx.clear();
            self.sent = 0;
        }
    }

    /// Reads what has arrived into the receive buffer. `false`: nothing (or a failure).
    fn fill(&mut self) -> bool {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.end == self.rx.len() {
            self.rx.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        loop {
            match self.stream.read(&mut self.rx[self.end..]) {
                Ok(0) => {
                    let e = self.io_error(io::ErrorKind::UnexpectedEof.into(), "receiving");
                    self.fail(e, None);
                    return false;
                }
                Ok(n) => {
                    self.end += n;
                    return true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let e = self.io_error(e, "receiving");
                    self.fail(e, None);
                    return false;
                }
            }
        }
    }

    /// Parses the next PDU of the receive buffer, if it is whole.
    fn parse(&mut self) -> Result<Parsed, (TcpError, Option<FatalErrorStatus>)> {
        let avail = self.end - self.start;
        if avail < 8 {
            return Ok(Parsed::NeedMore);
        }
        let at = self.start;
        let ch = CommonHeader::read_from_bytes(&self.rx[at..at + 8]).expect("8 bytes");
        let plen = ch.plen as usize;
        let sequence = Some(FatalErrorStatus::PduSequenceError);
        let invalid = Some(FatalErrorStatus::InvalidHeaderField);
        if ch.kind() == Some(PduType::C2hTermReq) {
            if !(24..=MAX_TERM_PDU_LEN).contains(&plen) || ch.hlen != 24 {
                let m = format!("C2HTermReq with hlen {} and plen {plen}", ch.hlen);
                return Err((self.protocol(m), None));
            }
            if avail < 24 {
                return Ok(Parsed::NeedMore);
            }
            let t = TermReq::read_from_bytes(&self.rx[at..at + 24]).expect("24 bytes");
            let e = TcpError::Terminated {
                peer: self.peer.clone(),
                fes: t.fes,
                fei: u32::from_le_bytes(t.fei),
            };
            return Err((e, None));
        }
        let kind = check_common(&ch, &self.neg).map_err(|m| (self.protocol(m), invalid))?;
        if plen > self.rx.len() {
            let m = format!(
                "{} of {plen} bytes: longer than this queue's largest transfer ({} bytes) allows",
                kind.name(),
                self.params.max_transfer
            );
            return Err((
                self.protocol(m),
                Some(FatalErrorStatus::DataTransferLimitExceeded),
            ));
        }
        if avail < plen {
            return Ok(Parsed::NeedMore);
        }
        self.start += plen;
        let hlen = kind.header_len();
        let pdu = at..at + plen;
        if self.neg.header_digest {
            let hdr = &self.rx[at..at + hlen];
            let d = self.rx[at + hlen..at + hlen + DIGEST_LEN]
                .try_into()
                .expect("4 bytes");
            check_header_digest(&self.peer, kind, hdr, d)
                .map_err(|e| (e, Some(FatalErrorStatus::HeaderDigestError)))?;
        }
        let (inbound, layout) = check_header(kind, &ch, &self.rx[at..at + hlen], &self.neg)
            .map_err(|m| (self.protocol(m), invalid))?;
        match inbound {
            Inbound::Response(cqe) => {
                let slot = (cqe.cid & self.mask) as usize;
                if let Some(c) = self.cmds.get_mut(slot) {
                    if c.cid == Some(cqe.cid) {
                        *c = Outstanding::NONE;
                        self.in_flight -= 1;
                    }
                }
                Ok(Parsed::Completion(cqe))
            }
            Inbound::Data(d) => {
                let layout = layout.expect("C2HData has a data layout");
                let data_at = pdu.end - layout.len - if layout.digest { DIGEST_LEN } else { 0 };
                let data = data_at..data_at + layout.len;
                let slot = (d.cccid & self.mask) as usize;
                let c = self.cmds.get(slot).copied().unwrap_or(Outstanding::NONE);
                let (off, n) = (d.datao as usize, layout.len);
                if c.cid != Some(d.cccid) || c.direction != Direction::ToHost {
                    let m = format!(
                        "C2HData for command id {:#x}, which is not an outstanding read",
                        d.cccid
                    );
                    return Err((self.protocol(m), sequence));
                }
                if off != c.received || off + n > c.region.len() {
                    let m = format!(
                        "C2HData for command id {:#x} at offset {off} with {n} bytes: expected offset {} within the command's {} bytes",
                        d.cccid,
                        c.received,
                        c.region.len()
                    );
                    return Err((
                        self.protocol(m),
                        Some(FatalErrorStatus::DataTransferOutOfRange),
                    ));
                }
                if layout.digest {
                    let got = self.rx[data.end..data.end + DIGEST_LEN]
                        .try_into()
                        .expect("4 bytes");
                    check_data_digest(&self.peer, "C2HData", &self.rx[data.clone()], got)
                        .map_err(|e| (e, None))?;
                }
                let ok = c.region.write_bytes(off, &self.rx[data]);
                debug_assert!(ok, "checked against the region above");
                let received = off + n;
                self.cmds[slot].received = received;
                let flags = PduFlags::from_bits_retain(ch.flags);
                if !flags.contains(PduFlags::SUCCESS) {
                    return Ok(Parsed::Handled);
                }
                if received != c.region.len() {
                    let m = format!(
                        "C2HData with SUCCESS after {received} of the command's {} bytes",
                        c.region.len()
                    );
                    return Err((self.protocol(m), sequence));
                }
                self.cmds[slot] = Outstanding::NONE;
                self.in_flight -= 1;
                // No response capsule follows: the command succeeded.
                Ok(Parsed::Completion(CompletionEntry {
                    cid: d.cccid,
                    sq_head: SQHD_NONE,
                    ..Default::default()
                }))
            }
            Inbound::R2t(r) => {
                let slot = (r.cccid & self.mask) as usize;
                let c = self.cmds.get(slot).copied().unwrap_or(Outstanding::NONE);
                let (off, n) = (r.r2to as usize, r.r2tl as usize);
                if c.cid != Some(r.cccid) || c.direction != Direction::ToController || c.in_capsule
                {
                    let m = format!(
                        "R2T for command id {:#x}, which is not an outstanding write with data to send",
                        r.cccid
                    );
                    return Err((self.protocol(m), sequence));
                }
                if n == 0 || off + n > c.region.len() {
                    let m = format!(
                        "R2T for command id {:#x} asking for {n} bytes at offset {off} (the command writes {} bytes)",
                        r.cccid,
                        c.region.len()
                    );
                    return Err((
                        self.protocol(m),
                        Some(FatalErrorStatus::DataTransferOutOfRange),
                    ));
                }
                self.send_h2c(r.cccid, r.ttag, c.region, off, n)?;
                Ok(Parsed::Handled)
            }
        }
    }

    /// Frames the H2CData PDUs answering an R2T for `n` bytes at `off` of `region` (at most
    /// MAXH2CDATA each) and sends them.
    fn send_h2c(
        &mut self,
        cccid: u16,
        ttag: u16,
        region: DmaRegion,
        off: usize,
        n: usize,
    ) -> Result<(), (TcpError, Option<FatalErrorStatus>)> {
        let max = self.neg.max_h2c_data as usize;
        // Whatever was pushed goes out with these PDUs (the queue pair rings before it
        // polls, so nothing is pushed and unannounced here).
        self.pushed.clear();
        let mut at = off;
        while at < off + n {
            let chunk = (off + n - at).min(max);
            let last = at + chunk == off + n;
            let h = DataHeader {
                cccid,
                ttag,
                datao: at as u32,
                datal: chunk as u32,
                ..Default::default()
            };
            let flags = if last {
                PduFlags::LAST_PDU
            } else {
                PduFlags::empty()
            };
            let rest: [u8; 16] = h.as_bytes()[8..].try_into().expect("16 bytes");
            let fill = |dst: &mut [u8]| region.read_bytes(at, dst);
            match self
                .framing
                .append(&mut self.tx, PduType::H2cData, flags, &rest, chunk, fill)
            {
                Ok(true) => {}
                _ => {
                    let m = format!("H2CData of {chunk} bytes at offset {at} could not be framed");
                    return Err((self.protocol(m), None));
                }
            }
            at += chunk;
        }
        self.flush();
        Ok(())
    }
}

impl Rings for TcpRings {
    fn size(&self) -> u32 {
        self.params.entries
    }

    #[inline]
    fn free(&self) -> u32 {
        if self.failure.is_some() {
            return 0;
        }
        self.params.entries - 1 - self.in_flight
    }

    fn push(&mut self, entry: &SubmissionEntry) -> bool {
        if self.free() == 0 {
            return false;
        }
        let mut e = *entry;
        let direction = match e.opcode & 3 {
            0b01 => Direction::ToController,
            0b10 => Direction::ToHost,
            _ => Direction::None,
        };
        let sgl = SglDescriptor::from_dptr(e.prp1, e.prp2);
        let len = if e.psdt() == PSDT_SGL {
            sgl.length as usize
        } else {
            0
        };
        let slot = (e.cid & self.mask) as usize;
        if slot >= self.cmds.len() {
            return false;
        }
        if len != 0 && sgl.id >> 4 != SglDescriptorType::DataBlock as u8 {
            return self.fail_locally(e.cid, GenericStatus::SglDescriptorTypeInvalid);
        }
        let region = match len {
            0 => DmaRegion::EMPTY,
            _ if e.opcode & 3 == 0b11 || direction == Direction::None => {
                // Bidirectional data, or data for a command that moves none.
                return self.fail_locally(e.cid, GenericStatus::InvalidField);
            }
            _ => match self.mem.resolve(sgl.address, len) {
                Some(r) => r,
                None => return self.fail_locally(e.cid, GenericStatus::DataTransferError),
            },
        };
        let inline = direction == Direction::ToController && len <= self.params.in_capsule;
        let len32 = len as u32;
        (e.prp1, e.prp2) = match (len, inline) {
            (0, _) => (0, 0),
            (_, true) => in_capsule(0, len32).to_dptr(),
            (_, false) => transport_data_block(len32).to_dptr(),
        };
        e.set_psdt(PSDT_SGL);
        let c = CapsuleCmd {
            ch: CommonHeader::default(),
            sqe: e,
        };
        let rest: [u8; 64] = c.as_bytes()[8..].try_into().expect("64 bytes");
        let tx_len = self.tx.len();
        let data_len = if inline { len } else { 0 };
        let fill = |dst: &mut [u8]| region.read_bytes(0, dst);
        let framing = self.framing;
        match framing.append(
            &mut self.tx,
            PduType::CapsuleCmd,
            PduFlags::empty(),
            &rest,
            data_len,
            fill,
        ) {
            Ok(true) => {}
            _ => return self.fail_locally(e.cid, GenericStatus::DataTransferError),
        }
        self.cmds[slot] = Outstanding {
            cid: Some(e.cid),
            direction,
            region,
            in_capsule: inline,
            received: 0,
        };
        self.in_flight += 1;
        self.pushed.push(Pushed::Framed { tx_len, slot });
        true
    }

    fn unpush(&mut self, n: u32) {
        for _ in 0..n {
            match self.pushed.pop() {
                Some(Pushed::Framed { tx_len, slot }) => {
                    self.tx.truncate(tx_len);
                    self.cmds[slot] = Outstanding::NONE;
                    self.in_flight -= 1;
                }
                Some(Pushed::Local) => {
                    self.local.pop_back();
                }
                None => return,
            }
        }
    }

    #[inline]
    fn ring_sq(&mut self) -> bool {
        if self.pushed.is_empty() && self.sent == self.tx.len() {
            return false;
        }
        self.pushed.clear();
        if self.failure.is_none() {
            self.flush();
        }
        true
    }

    fn pop(&mut self) -> Option<CompletionEntry> {
        if let Some(c) = self.local.pop_front() {
            return Some(c);
        }
        if self.failure.is_some() {
            return None;
        }
        if self.sent < self.tx.len() && self.pushed.is_empty() {
            self.flush();
        }
        loop {
            match self.parse() {
                Ok(Parsed::Completion(c)) => return Some(c),
                Ok(Parsed::Handled) => {}
                Ok(Parsed::NeedMore) => {
                    if !self.fill() {
                        return None;
                    }
                }
                Err((e, fes)) => {
                    self.fail(e, fes);
                    return None;
                }
            }
            if self.failure.is_some() {
                return None;
            }
        }
    }

    /// Checks SQHD (inside the queue, or 0xffff: SQ flow control disabled); the queue's
    /// occupancy is kept from the completions themselves (see `in_flight`).
    fn update_sq_head(&mut self, head: u16) -> bool {
        head == SQHD_NONE || (head as u32) < self.params.entries
    }

    fn reset(&mut self) {
        self.cmds.fill(Outstanding::NONE);
        self.local.clear();
        self.pushed.clear();
        self.tx.clear();
        self.sent = 0;
        self.in_flight = 0;
    }

    fn cid_index_mask(&mut self, mask: u16) {
        self.mask = mask;
        let n = mask as usize + 1;
        if self.cmds.len() < n {
            self.cmds = vec![Outstanding::NONE; n].into_boxed_slice();
        }
    }
}

/// The in-capsule data an I/O queue's commands may carry, from Identify Controller's
/// NVMe over Fabrics fields: IOCCSZ (bytes 1792..1796, in 16-byte units, the 64-byte
/// command included) and ICDOFF (1800..1802, which this host needs to be 0).
pub(crate) fn io_in_capsule(id: &nvme_regs::identify::IdentifyController) -> usize {
    let f = &id.nvmeof;
    let ioccsz = u32::from_le_bytes([f[0], f[1], f[2], f[3]]) as usize;
    let icdoff = u16::from_le_bytes([f[8], f[9]]);
    if icdoff != 0 {
        return 0;
    }
    (ioccsz * 16).saturating_sub(64)
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    use nvme_regs::tcp::SGL_ID_IN_CAPSULE;

    use super::*;
    use crate::memory::SharedMemory;

    fn write_cmd(cid: u16, addr: u64, len: u32) -> SubmissionEntry {
        let mut e = SubmissionEntry {
            opcode: 0x01,
            cid,
            ..Default::default()
        };
        (e.prp1, e.prp2) = SglDescriptor::data_block(addr, len).to_dptr();
        e.set_psdt(PSDT_SGL);
        e
    }

    fn nothing_sent(b: &mut UnixStream) -> bool {
        b.set_nonblocking(true).unwrap();
        let r = b.read(&mut [0u8; 16]);
        b.set_nonblocking(false).unwrap();
        matches!(r, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    #[test]
    fn data_pointers_resolve_in_the_memory_table_or_fail_unsent() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let table = Arc::new(MemoryTable::default());
        let mem = SharedMemory::new("nvme-tcp-ioq-test", 8192).unwrap();
        let iova = mem.as_ptr() as u64;
        let region = mem.region(0, 8192, iova).unwrap();
        assert!(table.insert(region));
        let half = mem.region(4096, 4096, iova).unwrap();
        assert!(!table.insert(half), "an overlapping region is refused");
        assert_eq!(table.len(), 1);
        let neg = Negotiated {
            header_digest: false,
            data_digest: false,
            data_alignment: 4,
            max_h2c_data: 4096,
        };
        let params = QueueParams {
            qid: 1,
            entries: 8,
            in_capsule: 4096,
            max_transfer: 65536,
        };
        let mut r = TcpRings::new(Box::new(a), "test".into(), neg, params, table.clone()).unwrap();
        r.cid_index_mask(7);
        // Past the end of the mapping, and straddling it: failed here, nothing sent.
        assert!(r.push(&write_cmd(1, iova + 8192, 512)));
        assert!(r.push(&write_cmd(2, iova + 8000, 512)));
        r.ring_sq();
        assert!(nothing_sent(&mut b));
        for cid in [1, 2] {
            let c = r.pop().unwrap();
            assert_eq!(c.cid, cid);
            assert!(c.status().is_generic(GenericStatus::DataTransferError));
        }
        assert!(r.pop().is_none());
        assert_eq!(r.free(), 7, "failed commands take no queue entry");
        // Inside: framed with its data in the capsule; unpush takes it back unsent.
        let data: Vec<u8> = (0..512u32).map(|i| i as u8 ^ 0x3c).collect();
        assert!(region.write_bytes(100, &data));
        assert!(r.push(&write_cmd(3, iova + 100, 512)));
        r.unpush(1);
        assert!(!r.ring_sq(), "nothing left to send");
        assert!(nothing_sent(&mut b));
        assert!(r.push(&write_cmd(4, iova + 100, 512)));
        assert!(r.ring_sq());
        let mut pdu = vec![0u8; 72 + 512];
        b.read_exact(&mut pdu).unwrap();
        let ch = CommonHeader::read_from_bytes(&pdu[..8]).unwrap();
        assert_eq!(
            (ch.pdu_type, ch.pdo, ch.plen),
            (PduType::CapsuleCmd as u8, 72, 584)
        );
        let sqe = SubmissionEntry::read_from_bytes(&pdu[8..72]).unwrap();
        let sgl = SglDescriptor::from_dptr(sqe.prp1, sqe.prp2);
        assert_eq!((sqe.cid, sgl.id, sgl.length), (4, SGL_ID_IN_CAPSULE, 512));
        assert_eq!(&pdu[72..], &data[..]);
        // Unmapped: the same address now fails.
        table.remove(iova, 8192);
        assert!(r.push(&write_cmd(5, iova + 100, 512)));
        r.ring_sq();
        assert!(nothing_sent(&mut b));
        let c = r.pop().unwrap();
        assert_eq!(c.cid, 5);
        assert!(c.status().is_generic(GenericStatus::DataTransferError));
        // The peer closing the connection is the queue's failure.
        drop(b);
        assert!(r.pop().is_none());
        let f = r.failure().expect("a failure");
        assert!(f.contains("closed the connection"), "{f}");
        assert_eq!(r.free(), 0, "nothing more is pushed");
    }
}
