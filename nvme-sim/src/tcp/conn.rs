//! One TCP connection: one fabrics queue (the admin queue of an association, or one of its
//! I/O queues). A reader thread takes PDUs off the socket, moves command data into the
//! connection's DMA memory and hands commands on (to the controller's I/O queue pair of
//! the connection, to the admin thread, or answers them itself); a writer thread sends
//! everything that goes back: R2Ts, C2HData and responses, for completions of the
//! controller's I/O queue (it waits on an eventfd the controller signals) and for those
//! the other threads hand it.
//!
//! Every command holds a *slot* from its capsule to its response: slot `i` owns
//! `max_transfer` bytes of bounce memory (with a PRP list page describing them) and is the
//! command's CID towards the controller and its R2T transfer tag towards the host.

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::eventfd::EventFd;
use nvme_regs::fabrics::{
    fctype_of, ConnectCommand, ConnectData, FabricsAttributes, FabricsCommandType as Fc,
    FabricsStatus, InvalidParameter, PropertyCommand, DISCOVERY_LOG_PAGE, DISCOVERY_NQN,
    FABRICS_OPCODE,
};
use nvme_regs::features::fid;
use nvme_regs::identify::{fill_ascii, IdentifyController, Oacs};
use nvme_regs::opcode::AdminOpcode as A;
use nvme_regs::registers::{offset, Cap, Cc, CAP_CSS_NVM};
use nvme_regs::sgl::{SglDescriptor, SglDescriptorType, Sgls, SGL_SUBTYPE_OFFSET};
use nvme_regs::status::{CommandSpecificStatus, GenericStatus as G};
use nvme_regs::tcp::{
    digest, DataHeader, FatalErrorStatus as Fes, IcReq, IcResp, PduFlags, PduType, R2t,
    ADMIN_IN_CAPSULE_DATA, SGL_SUBTYPE_TRANSPORT_A,
};
use nvme_regs::{CompletionEntry, Status, StatusCodeType, SubmissionEntry};
use zerocopy::{FromBytes, IntoBytes};

use super::backend::{lock, CqRing, Reply, SqRing};
use super::pdu::{put_pdu, put_pdu_with, read_pdu, term_req, Fatal, Framing, RecvError};
use super::{Assoc, DigestPolicy, Inner, NewAssoc, Out, Outbox, AER_LIMIT};
use crate::mem::{create_memfd, Mapping};
use crate::THREAD_STACK;

/// Where connection `n`'s memory sits in the controller's IOVA space (4 GiB apart).
fn conn_iova(id: u64) -> u64 {
    0x10_0000_0000u64.wrapping_add(id.wrapping_mul(1 << 32))
}

/// How long a closing connection waits for its commands in flight.
const DRAIN: Duration = Duration::from_secs(2);
/// Queue id "not connected yet".
const NO_QID: u32 = u32::MAX;

#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
enum Dir {
    #[default]
    None,
    ToHost,
    FromHost,
}

#[derive(Clone, Copy, Default)]
struct Slot {
    busy: bool,
    /// The host's CID.
    cid: u16,
    sqe: SubmissionEntry,
    dir: Dir,
    /// Bytes of the command's data (its SGL's length).
    len: u32,
    /// Bytes received so far by H2CData.
    got: u32,
    /// An R2T is out for the data.
    awaiting_data: bool,
    /// An H2CData PDU of the command failed its data digest.
    bad_digest: bool,
    /// Identify Controller data that needs its fabrics fields before it goes out.
    patch_identify: bool,
}

/// The controller's I/O queue pair behind an I/O connection.
struct SimQueue {
    qid: u16,
    vector: Option<u16>,
}

/// What the reader and the writer of a connection share.
struct Conn {
    inner: Arc<Inner>,
    f: Framing,
    maxh2cdata: u32,
    stream: TcpStream,
    mem: Mapping,
    _memfd: OwnedFd,
    iova: u64,
    mem_len: usize,
    stride: usize,
    sq_off: usize,
    cq_off: usize,
    /// Entries of the controller's queue pair (one more than the slots).
    ring_entries: u32,
    slots: Mutex<Vec<Slot>>,
    /// Capsules received (SQHD is this modulo the queue size).
    received: AtomicU32,
    /// The host's queue size (SQSIZE + 1), 1 before Connect.
    sq_entries: AtomicU32,
    qid: AtomicU32,
    assoc: OnceLock<Arc<Assoc>>,
    simq: OnceLock<SimQueue>,
    /// Nothing more may be written to the socket.
    broken: AtomicBool,
    /// The host disabled SQ flow control (Connect CATTR bit 2): SQHD is 0xffff.
    sqhd_off: AtomicBool,
}

impl Conn {
    fn bounce(&self, slot: u16) -> usize {
        slot as usize * self.stride
    }

    /// The data pointer of `len` bytes of slot `slot`'s bounce memory.
    fn prps(&self, slot: u16, len: u32) -> (u64, u64) {
        let page = self.inner.backend.page;
        let base = self.iova + self.bounce(slot) as u64;
        match len as usize {
            0 => (0, 0),
            n if n <= page => (base, 0),
            n if n <= 2 * page => (base, base + page as u64),
            _ => (base, base + self.inner.max_xfer as u64),
        }
    }

    fn qid(&self) -> Option<u16> {
        let q = self.qid.load(Ordering::Acquire);
        (q != NO_QID).then_some(q as u16)
    }

    fn sqhd(&self) -> u16 {
        if self.sqhd_off.load(Ordering::Acquire) {
            return 0xffff;
        }
        (self.received.load(Ordering::Acquire) % self.sq_entries.load(Ordering::Acquire)) as u16
    }

    /// Appends the response of a command with CID `cid` to `out`.
    fn put_resp(&self, out: &mut Vec<u8>, cid: u16, cqe: &CompletionEntry) {
        let c = CompletionEntry {
            dw0: cqe.dw0,
            dw1: cqe.dw1,
            sq_head: self.sqhd(),
            sq_id: self.qid().unwrap_or(0),
            cid,
            status: cqe.status & !1,
        };
        put_pdu(
            out,
            &self.f,
            PduType::CapsuleResp,
            PduFlags::empty(),
            c.as_bytes(),
            &[],
        );
    }

    /// Sends slot `slot`'s data (if it completed well and moves data to the host) and its
    /// response, and frees the slot.
    fn finish(&self, slot: u16, cqe: &CompletionEntry, out: &mut Vec<u8>) {
        let s = match lock(&self.slots).get(slot as usize) {
            Some(s) if s.busy => *s,
            _ => return,
        };
        if s.dir == Dir::ToHost && s.len > 0 && cqe.status().is_success() {
            let base = self.bounce(slot);
            if s.patch_identify {
                self.patch_identify(base);
            }
            let total = s.len as usize;
            let max = self.inner.opts.max_c2h_data as usize;
            let mut off = 0;
            while off < total {
                let n = max.min(total - off);
                let h = DataHeader {
                    cccid: s.cid,
                    datao: off as u32,
                    datal: n as u32,
                    ..Default::default()
                };
                let last = off + n == total;
                put_pdu_with(
                    out,
                    &self.f,
                    PduType::C2hData,
                    if last {
                        PduFlags::LAST_PDU
                    } else {
                        PduFlags::empty()
                    },
                    &h.as_bytes()[8..],
                    n,
                    |d| self.mem.read(base + off, d),
                );
                off += n;
            }
        }
        self.put_resp(out, s.cid, cqe);
        lock(&self.slots)[slot as usize] = Slot::default();
    }

    /// Gives the controller's Identify Controller data in slot memory at `base` the
    /// fields of this fabrics controller.
    fn patch_identify(&self, base: usize) {
        let Some(a) = self.assoc.get() else { return };
        let mut raw = vec![0u8; size_of::<IdentifyController>()];
        self.mem.read(base, &mut raw);
        let mut id = IdentifyController::read_from_bytes(&raw).expect("4096 bytes");
        let inner = &self.inner;
        id.cntlid = a.cntlid;
        id.cntrltype = 1;
        let pages = inner.max_xfer / inner.backend.page;
        let ours = (usize::BITS - 1 - pages.leading_zeros()) as u8;
        id.mdts = if id.mdts == 0 {
            ours
        } else {
            id.mdts.min(ours)
        };
        id.sgls = 1 | Sgls::OFFSET | Sgls::TRANSPORT_DATA_BLOCK;
        id.oacs &= !Oacs::DOORBELL_BUFFER_CONFIG.bits();
        id.kas = 1;
        id.maxcmd = inner.nslots as u16;
        id.aerl = id.aerl.min(AER_LIMIT as u8 - 1);
        id.subnqn = [0; 256];
        id.subnqn[..inner.opts.subnqn.len()].copy_from_slice(inner.opts.subnqn.as_bytes());
        let attrs = FabricsAttributes {
            ioccsz: (64 + inner.opts.in_capsule_data) / 16,
            iorcsz: 1,
            msdbd: 1,
            ofcs: FabricsAttributes::OFCS_DISCONNECT,
            ..Default::default()
        };
        id.nvmeof[..16].copy_from_slice(attrs.as_bytes());
        self.mem.write(base, id.as_bytes());
    }
}

/// Serves one accepted connection until it closes.
pub(crate) fn serve(inner: Arc<Inner>, stream: TcpStream, id: u64) {
    let _ = stream.set_nodelay(true);
    run(&inner, &stream, id);
    let _ = stream.shutdown(Shutdown::Both);
    lock(&inner.conns).remove(&id);
}

fn fatal_now(mut stream: &TcpStream, f: Fatal) {
    let _ = stream.write_all(&term_req(&f));
}

fn run(inner: &Arc<Inner>, stream: &TcpStream, id: u64) {
    // ICReq / ICResp.
    let p = match read_pdu(&mut &*stream, &Framing::default(), 0) {
        Ok(p) => p,
        Err(RecvError::Closed) => return,
        Err(RecvError::Fatal(f)) => return fatal_now(stream, f),
    };
    if p.kind != PduType::IcReq {
        return fatal_now(stream, Fatal::new(Fes::PduSequenceError, 0, &p.hdr));
    }
    let req = IcReq::read_from_bytes(&p.hdr).expect("128 bytes");
    if req.pfv != nvme_regs::tcp::PFV_1_0 {
        return fatal_now(stream, Fatal::new(Fes::UnsupportedParameter, 8, &p.hdr));
    }
    if req.hpda > 31 {
        return fatal_now(stream, Fatal::new(Fes::UnsupportedParameter, 10, &p.hdr));
    }
    let asked = req.digest & (digest::HEADER | digest::DATA);
    let granted = match inner.opts.digests {
        DigestPolicy::Grant => asked,
        DigestPolicy::Refuse => 0,
        DigestPolicy::Force => digest::HEADER | digest::DATA,
    };
    let f = Framing {
        hd: granted & digest::HEADER != 0,
        dd: granted & digest::DATA != 0,
        c2h_align: (req.hpda as usize + 1) * 4,
    };
    let resp = IcResp::new(0, granted, inner.opts.maxh2cdata);
    if (&*stream).write_all(resp.as_bytes()).is_err() {
        return;
    }
    let Some(conn) = Conn::new(inner, f, stream, id) else {
        return;
    };
    let conn = Arc::new(conn);
    if inner
        .backend
        .sim
        .dma_map(conn.iova, conn._memfd.as_fd(), 0, conn.mem_len)
        .is_err()
    {
        return;
    }
    let Ok((out, rx)) = Outbox::new() else {
        let _ = inner.backend.sim.dma_unmap(conn.iova, conn.mem_len);
        return;
    };
    let (c, wake) = (conn.clone(), out.wake.clone());
    let Ok(wstream) = stream.try_clone() else {
        let _ = inner.backend.sim.dma_unmap(conn.iova, conn.mem_len);
        return;
    };
    let writer = match std::thread::Builder::new()
        .name(format!("nvme-sim-tcp-{id}w"))
        .stack_size(THREAD_STACK)
        .spawn(move || writer(&c, &rx, &wake, wstream))
    {
        Ok(t) => t,
        Err(_) => {
            let _ = inner.backend.sim.dma_unmap(conn.iova, conn.mem_len);
            return;
        }
    };
    let mut r = Reader {
        conn: conn.clone(),
        out,
        sq: None,
    };
    r.read_loop(stream);
    r.teardown();
    let _ = writer.join();
    let _ = stream.shutdown(Shutdown::Both);
    let _ = inner.backend.sim.dma_unmap(conn.iova, conn.mem_len);
}

impl Conn {
    fn new(inner: &Arc<Inner>, f: Framing, stream: &TcpStream, id: u64) -> Option<Conn> {
        let page = inner.backend.page;
        let stride = inner.max_xfer + page;
        let ring_entries = inner.nslots as u32 + 1;
        let sq_off = inner.nslots * stride;
        let cq_off = sq_off + (ring_entries as usize * 64).next_multiple_of(page);
        let mem_len = cq_off + (ring_entries as usize * 16).next_multiple_of(page);
        let memfd = create_memfd("nvme-sim-tcp-conn", mem_len as u64).ok()?;
        let mem = Mapping::map(memfd.as_fd(), 0, mem_len, true).ok()?;
        let iova = conn_iova(id);
        // Each slot's PRP list: the pages of its bounce memory after the first.
        let pages = inner.max_xfer / page;
        if pages > 2 {
            let mut list = Vec::with_capacity((pages - 1) * 8);
            for i in 0..inner.nslots {
                list.clear();
                for k in 1..pages {
                    let a = iova + (i * stride + k * page) as u64;
                    list.extend_from_slice(&a.to_le_bytes());
                }
                mem.write(i * stride + inner.max_xfer, &list);
            }
        }
        Some(Conn {
            inner: inner.clone(),
            f,
            maxh2cdata: inner.opts.maxh2cdata,
            stream: stream.try_clone().ok()?,
            mem,
            _memfd: memfd,
            iova,
            mem_len,
            stride,
            sq_off,
            cq_off,
            ring_entries,
            slots: Mutex::new(vec![Slot::default(); inner.nslots]),
            received: AtomicU32::new(0),
            sq_entries: AtomicU32::new(1),
            qid: AtomicU32::new(NO_QID),
            assoc: OnceLock::new(),
            simq: OnceLock::new(),
            broken: AtomicBool::new(false),
            sqhd_off: AtomicBool::new(false),
        })
    }
}

fn writer(conn: &Conn, rx: &mpsc::Receiver<Out>, wake: &EventFd, mut stream: TcpStream) {
    let backend = &conn.inner.backend;
    let dstrd = backend.cap.dstrd();
    let mut cq: Option<CqRing> = None;
    let mut buf = Vec::new();
    loop {
        let mut did = false;
        let mut close = false;
        let mut term = false;
        while let Ok(m) = rx.try_recv() {
            did = true;
            match m {
                Out::R2t { slot, cid, len } => {
                    let r = R2t {
                        cccid: cid,
                        ttag: slot,
                        r2to: 0,
                        r2tl: len,
                        ..Default::default()
                    };
                    put_pdu(
                        &mut buf,
                        &conn.f,
                        PduType::R2t,
                        PduFlags::empty(),
                        &r.as_bytes()[8..],
                        &[],
                    );
                }
                Out::Done { slot, cqe } => conn.finish(slot, &cqe, &mut buf),
                Out::Resp(cqe) => conn.put_resp(&mut buf, cqe.cid, &cqe),
                Out::Term(t) => {
                    buf.extend_from_slice(&t);
                    term = true;
                }
                Out::Close => close = true,
            }
        }
        if let Some(q) = conn.simq.get() {
            let c = cq.get_or_insert(CqRing {
                off: conn.cq_off,
                entries: conn.ring_entries,
                head: 0,
                phase: true,
            });
            let mut any = false;
            while let Some(e) = c.poll(&conn.mem) {
                any = true;
                conn.finish(e.cid, &e, &mut buf);
            }
            if any {
                did = true;
                c.ack(&backend.bar, q.qid, dstrd);
            }
        }
        if !buf.is_empty() {
            if !conn.broken.load(Ordering::Acquire) && stream.write_all(&buf).is_err() {
                conn.broken.store(true, Ordering::Release);
                let _ = stream.shutdown(Shutdown::Both);
            }
            buf.clear();
        }
        if term {
            // The C2HTermReq is the last PDU: the host closes the connection.
            conn.broken.store(true, Ordering::Release);
        }
        if close {
            return;
        }
        if !did {
            match conn.simq.get() {
                // Without an interrupt vector: poll the completion queue.
                Some(q) if q.vector.is_none() => std::thread::sleep(Duration::from_micros(50)),
                _ => {
                    let mut fds = [nix::poll::PollFd::new(
                        wake.as_fd(),
                        nix::poll::PollFlags::POLLIN,
                    )];
                    let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u16));
                }
            }
            // Nonblocking: resets the counter (EAGAIN when it was 0).
            let _ = wake.read();
        }
    }
}

enum Flow {
    Go,
    Close,
}

struct Reader {
    conn: Arc<Conn>,
    out: Outbox,
    sq: Option<SqRing>,
}

fn st(g: G) -> Status {
    Status::generic(g)
}

fn fabrics_st(s: FabricsStatus) -> Status {
    Status::new(StatusCodeType::CommandSpecific, s as u8)
}

fn nqn(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

impl Reader {
    fn read_loop(&mut self, stream: &TcpStream) {
        let inner = &self.conn.inner;
        let max = (inner.opts.in_capsule_data as usize)
            .max(ADMIN_IN_CAPSULE_DATA)
            .max(self.conn.maxh2cdata as usize);
        loop {
            let r = match read_pdu(&mut &*stream, &self.conn.f, max) {
                Ok(p) => match p.kind {
                    PduType::CapsuleCmd => self.on_capsule(&p),
                    PduType::H2cData => self.on_h2c(&p),
                    PduType::H2cTermReq => Ok(Flow::Close),
                    _ => Err(Fatal::new(Fes::InvalidHeaderField, 0, &p.hdr)),
                },
                Err(RecvError::Closed) => Ok(Flow::Close),
                Err(RecvError::Fatal(f)) => Err(f),
            };
            match r {
                Ok(Flow::Go) => {}
                Ok(Flow::Close) => return,
                Err(f) => {
                    self.out.send(Out::Term(term_req(&f)));
                    return;
                }
            }
        }
    }

    fn complete_dw(&self, slot: u16, s: Status, dw0: u32, dw1: u32) {
        self.out.send(Out::Done {
            slot,
            cqe: CompletionEntry {
                dw0,
                dw1,
                status: s.to_completion_word(false),
                ..Default::default()
            },
        });
    }

    fn complete(&self, slot: u16, s: Status) -> Flow {
        self.complete_dw(slot, s, 0, 0);
        Flow::Go
    }

    fn on_capsule(&mut self, p: &super::pdu::Pdu) -> Result<Flow, Fatal> {
        let sqe = SubmissionEntry::read_from_bytes(&p.hdr[8..72]).expect("64 bytes");
        let conn = self.conn.clone();
        conn.received.fetch_add(1, Ordering::AcqRel);
        if let Some(a) = conn.assoc.get() {
            a.touch();
        }
        let fabrics = sqe.opcode == FABRICS_OPCODE;
        let dir = if fabrics {
            if fctype_of(&sqe) == Fc::Connect as u8 {
                Dir::FromHost
            } else {
                Dir::None
            }
        } else {
            match sqe.opcode & 3 {
                1 => Dir::FromHost,
                2 => Dir::ToHost,
                _ => Dir::None,
            }
        };
        let d = SglDescriptor::from_dptr(sqe.prp1, sqe.prp2);
        let len = if dir == Dir::None { 0 } else { d.length };
        let slot = {
            let mut slots = lock(&conn.slots);
            match slots.iter().position(|s| !s.busy) {
                Some(i) => {
                    slots[i] = Slot {
                        busy: true,
                        cid: sqe.cid,
                        sqe,
                        dir,
                        len,
                        ..Default::default()
                    };
                    Some(i as u16)
                }
                None => None,
            }
        };
        let Some(slot) = slot else {
            // More commands than the queue has entries: the host ignored SQHD.
            self.out.send(Out::Resp(CompletionEntry {
                cid: sqe.cid,
                status: st(G::CommandSequenceError).to_completion_word(false),
                ..Default::default()
            }));
            return Ok(Flow::Go);
        };
        if len as usize > conn.inner.max_xfer {
            return Ok(self.complete(slot, st(G::DataSglLengthInvalid)));
        }
        if !p.data_digest_ok {
            return Ok(self.complete(slot, st(G::TransientTransportError)));
        }
        if len == 0 {
            return Ok(self.execute(slot));
        }
        match (d.kind(), d.subtype()) {
            (Some(SglDescriptorType::DataBlock), SGL_SUBTYPE_OFFSET) => {
                let limit = match conn.qid() {
                    Some(q) if q > 0 => conn.inner.opts.in_capsule_data as usize,
                    _ => ADMIN_IN_CAPSULE_DATA,
                };
                let end = d.address.checked_add(len as u64);
                if dir != Dir::FromHost
                    || len as usize > limit
                    || end.is_none_or(|e| e > p.data.len() as u64)
                {
                    return Ok(self.complete(slot, st(G::DataSglLengthInvalid)));
                }
                let o = d.address as usize;
                conn.mem
                    .write(conn.bounce(slot), &p.data[o..o + len as usize]);
                Ok(self.execute(slot))
            }
            (Some(SglDescriptorType::TransportDataBlock), SGL_SUBTYPE_TRANSPORT_A) => {
                if dir == Dir::FromHost {
                    lock(&conn.slots)[slot as usize].awaiting_data = true;
                    self.out.send(Out::R2t {
                        slot,
                        cid: sqe.cid,
                        len,
                    });
                    Ok(Flow::Go)
                } else {
                    Ok(self.execute(slot))
                }
            }
            _ => Ok(self.complete(slot, st(G::SglDescriptorTypeInvalid))),
        }
    }

    fn on_h2c(&mut self, p: &super::pdu::Pdu) -> Result<Flow, Fatal> {
        let h = DataHeader::read_from_bytes(&p.hdr).expect("24 bytes");
        let conn = self.conn.clone();
        let bad = |fes, fei| Err(Fatal::new(fes, fei, &p.hdr));
        let (done, bad_digest) = {
            let mut slots = lock(&conn.slots);
            let Some(s) = slots
                .get_mut(h.ttag as usize)
                .filter(|s| s.busy && s.awaiting_data)
            else {
                return bad(Fes::InvalidHeaderField, 10);
            };
            if s.cid != h.cccid {
                return bad(Fes::InvalidHeaderField, 8);
            }
            if h.datal as usize != p.data.len() {
                return bad(Fes::InvalidHeaderField, 16);
            }
            if h.datal > conn.maxh2cdata {
                return bad(Fes::DataTransferLimitExceeded, 0);
            }
            if h.datao != s.got || h.datao as u64 + h.datal as u64 > s.len as u64 {
                return bad(Fes::DataTransferOutOfRange, 0);
            }
            conn.mem
                .write(conn.bounce(h.ttag) + h.datao as usize, &p.data);
            s.got += h.datal;
            s.bad_digest |= !p.data_digest_ok;
            let done = s.got == s.len;
            if done {
                s.awaiting_data = false;
            }
            (done, s.bad_digest)
        };
        if !done {
            return Ok(Flow::Go);
        }
        if bad_digest {
            return Ok(self.complete(h.ttag, st(G::TransientTransportError)));
        }
        Ok(self.execute(h.ttag))
    }

    fn execute(&mut self, slot: u16) -> Flow {
        let s = lock(&self.conn.slots)[slot as usize];
        if s.sqe.opcode == FABRICS_OPCODE {
            return self.fabrics(slot, &s);
        }
        let Some(a) = self.conn.assoc.get().cloned() else {
            return self.complete(slot, st(G::CommandSequenceError));
        };
        match self.conn.qid() {
            Some(0) => self.admin(slot, &a, &s),
            _ => self.io(slot, &s),
        }
    }

    fn fabrics(&mut self, slot: u16, s: &Slot) -> Flow {
        let t = fctype_of(&s.sqe);
        if t == Fc::Connect as u8 {
            return self.connect(slot, s);
        }
        let Some(a) = self.conn.assoc.get().cloned() else {
            return self.complete(slot, st(G::CommandSequenceError));
        };
        if t == Fc::PropertyGet as u8 || t == Fc::PropertySet as u8 {
            if self.conn.qid() != Some(0) {
                return self.complete(slot, st(G::InvalidField));
            }
            return self.property(slot, &a, s);
        }
        if t == Fc::Disconnect as u8 {
            self.complete(slot, Status::SUCCESS);
            return Flow::Close;
        }
        self.complete(slot, st(G::InvalidOpcode))
    }

    fn connect(&mut self, slot: u16, s: &Slot) -> Flow {
        let conn = self.conn.clone();
        let inner = conn.inner.clone();
        if conn.qid().is_some() {
            return self.complete(slot, st(G::CommandSequenceError));
        }
        let invalid = |r: &Reader, offset: u16, in_data: bool| {
            r.complete_dw(
                slot,
                fabrics_st(FabricsStatus::ConnectInvalidParameters),
                InvalidParameter { offset, in_data }.to_dword(),
                0,
            );
            Flow::Go
        };
        let cmd = ConnectCommand::from_entry(&s.sqe);
        if s.len < size_of::<ConnectData>() as u32 {
            return self.complete(slot, st(G::DataSglLengthInvalid));
        }
        let mut raw = vec![0u8; size_of::<ConnectData>()];
        conn.mem.read(conn.bounce(slot), &mut raw);
        let data = ConnectData::read_from_bytes(&raw).expect("1024 bytes");
        if cmd.recfmt != 0 {
            return self.complete(slot, fabrics_st(FabricsStatus::IncompatibleFormat));
        }
        let subnqn = nqn(&data.subnqn);
        let hostnqn = nqn(&data.hostnqn);
        let discovery = subnqn == DISCOVERY_NQN;
        if !discovery && subnqn != inner.opts.subnqn {
            return invalid(self, ConnectData::SUBNQN_OFFSET, true);
        }
        if hostnqn.is_empty() {
            return invalid(self, ConnectData::HOSTNQN_OFFSET, true);
        }
        if !inner.opts.allowed_hosts.is_empty() && !inner.opts.allowed_hosts.contains(&hostnqn) {
            self.complete_dw(
                slot,
                fabrics_st(FabricsStatus::ConnectInvalidHost),
                InvalidParameter {
                    offset: ConnectData::HOSTNQN_OFFSET,
                    in_data: true,
                }
                .to_dword(),
                0,
            );
            return Flow::Go;
        }
        let sqsize = cmd.sqsize as usize;
        if sqsize == 0 || sqsize >= inner.nslots {
            return invalid(self, 44, false);
        }
        let assoc = if cmd.qid == 0 {
            if data.cntlid != nvme_regs::fabrics::CNTLID_DYNAMIC {
                return invalid(self, ConnectData::CNTLID_OFFSET, true);
            }
            let Ok(admin) = conn.stream.try_clone() else {
                return self.complete(slot, st(G::InternalError));
            };
            let Some(a) = inner.registry.create(NewAssoc {
                discovery,
                hostnqn,
                subnqn,
                kato_ms: cmd.kato,
                io_queues: inner.backend.io_queues,
                admin,
            }) else {
                return self.complete(slot, fabrics_st(FabricsStatus::ControllerBusy));
            };
            a
        } else {
            let Some(a) = inner
                .registry
                .get(data.cntlid)
                .filter(|a| a.hostnqn == hostnqn && a.subnqn == subnqn)
            else {
                return invalid(self, ConnectData::CNTLID_OFFSET, true);
            };
            if a.discovery {
                return self.complete(slot, fabrics_st(FabricsStatus::InvalidQueueType));
            }
            if !a.enabled() {
                return self.complete(slot, st(G::CommandSequenceError));
            }
            if cmd.qid > a.io_queues.load(Ordering::Acquire) {
                return invalid(self, 42, false);
            }
            {
                let mut qs = lock(&a.queues);
                if qs.contains_key(&cmd.qid) {
                    return self.complete(slot, fabrics_st(FabricsStatus::ControllerBusy));
                }
                let Ok(sock) = conn.stream.try_clone() else {
                    return self.complete(slot, st(G::InternalError));
                };
                qs.insert(
                    cmd.qid,
                    super::IoQueue {
                        sock,
                        sim_qid: None,
                    },
                );
            }
            match self.create_sim_queue() {
                Ok(sim_qid) => {
                    if let Some(q) = lock(&a.queues).get_mut(&cmd.qid) {
                        q.sim_qid = Some(sim_qid);
                    }
                }
                Err(status) => {
                    lock(&a.queues).remove(&cmd.qid);
                    return self.complete(slot, status);
                }
            }
            a.touch();
            a
        };
        let cntlid = assoc.cntlid;
        let _ = conn.assoc.set(assoc);
        conn.sq_entries.store(sqsize as u32 + 1, Ordering::Release);
        conn.sqhd_off.store(
            cmd.cattr & ConnectCommand::CATTR_DISABLE_SQ_FLOW_CONTROL != 0,
            Ordering::Release,
        );
        conn.qid.store(cmd.qid as u32, Ordering::Release);
        self.complete_dw(slot, Status::SUCCESS, cntlid as u32, 0);
        Flow::Go
    }

    /// Creates the controller I/O queue pair of this connection; returns its queue id.
    fn create_sim_queue(&mut self) -> Result<u16, Status> {
        let conn = &self.conn;
        let b = &conn.inner.backend;
        let Some((qid, vector)) = b.take_queue() else {
            return Err(fabrics_st(FabricsStatus::ControllerBusy));
        };
        let vector =
            vector.filter(|&v| b.sim.set_interrupt(v, Some(self.out.wake.as_fd())).is_ok());
        let n = conn.ring_entries;
        let ok = |r: Result<CompletionEntry, String>| r.is_ok_and(|c| c.status().is_success());
        let cq = SubmissionEntry {
            opcode: A::CreateIoCq as u8,
            prp1: conn.iova + conn.cq_off as u64,
            cdw10: qid as u32 | (n - 1) << 16,
            cdw11: 1 | vector.map_or(0, |v| 2 | (v as u32) << 16),
            ..Default::default()
        };
        if !ok(b.call(cq)) {
            b.give_back(qid, vector);
            return Err(st(G::InternalError));
        }
        let sq = SubmissionEntry {
            opcode: A::CreateIoSq as u8,
            prp1: conn.iova + conn.sq_off as u64,
            cdw10: qid as u32 | (n - 1) << 16,
            cdw11: 1 | (qid as u32) << 16,
            ..Default::default()
        };
        if !ok(b.call(sq)) {
            let _ = b.call(delete(A::DeleteIoCq, qid));
            b.give_back(qid, vector);
            return Err(st(G::InternalError));
        }
        let _ = conn.simq.set(SimQueue { qid, vector });
        self.sq = Some(SqRing {
            off: conn.sq_off,
            entries: n,
            tail: 0,
        });
        Ok(qid)
    }

    fn property(&mut self, slot: u16, a: &Assoc, s: &Slot) -> Flow {
        let pc = PropertyCommand::from_entry(&s.sqe);
        let eight = pc.attrib & 7 == 1;
        let get = fctype_of(&s.sqe) == Fc::PropertyGet as u8;
        let inner = &self.conn.inner;
        let cap = inner.backend.cap;
        let host_cap = Cap::new(
            (inner.nslots - 1) as u16,
            true,
            cap.to(),
            0,
            false,
            CAP_CSS_NVM,
            cap.mpsmin(),
            cap.mpsmax(),
        )
        .0;
        let mut regs = lock(&a.regs);
        let value = match (get, pc.offset as usize, eight) {
            (true, offset::CAP, true) => host_cap,
            (true, offset::CAP, false) => host_cap & 0xffff_ffff,
            (true, 4, false) => host_cap >> 32,
            (true, offset::VS, false) => nvme_regs::registers::Vs::V1_4.0 as u64,
            (true, offset::CC, false) => regs.0 as u64,
            (true, offset::CSTS, false) => regs.1 as u64,
            (false, offset::CC, false) => {
                let (old, new) = (Cc(regs.0), Cc(pc.value as u32));
                regs.0 = new.0;
                if new.en() && !old.en() {
                    regs.1 = 1;
                } else if !new.en() {
                    regs.1 = 0;
                    if old.en() {
                        // A controller reset deletes the I/O queues: end their connections.
                        a.end_io_queues();
                    }
                }
                if new.shn() != 0 {
                    // Shutdown complete at once (SHST 10b).
                    regs.1 = (regs.1 & !0xc) | 2 << 2;
                }
                0
            }
            _ => {
                drop(regs);
                return self.complete(slot, st(G::InvalidField));
            }
        };
        drop(regs);
        self.complete_dw(slot, Status::SUCCESS, value as u32, (value >> 32) as u32);
        Flow::Go
    }

    fn admin(&mut self, slot: u16, a: &Arc<Assoc>, s: &Slot) -> Flow {
        if !a.enabled() {
            return self.complete(slot, st(G::CommandSequenceError));
        }
        let op = s.sqe.opcode;
        let is = |o: A| op == o as u8;
        let feature = (s.sqe.cdw10 & 0xff) as u8;
        let features = is(A::GetFeatures) || is(A::SetFeatures);
        if is(A::KeepAlive) {
            return self.complete(slot, Status::SUCCESS);
        }
        if is(A::AsyncEventRequest) {
            return self.hold_aer(slot, a);
        }
        if features && feature == fid::KEEP_ALIVE_TIMER {
            if is(A::SetFeatures) {
                a.kato_ms.store(s.sqe.cdw11, Ordering::Relaxed);
                return self.complete(slot, Status::SUCCESS);
            }
            let kato = a.kato_ms.load(Ordering::Relaxed);
            self.complete_dw(slot, Status::SUCCESS, kato, 0);
            return Flow::Go;
        }
        let identify_ctrl =
            is(A::Identify) && (s.sqe.cdw10 & 0xff) as u8 == nvme_regs::identify::cns::CONTROLLER;
        if a.discovery {
            if identify_ctrl {
                return self.discovery_identify(slot, a, s);
            }
            if is(A::GetLogPage) && (s.sqe.cdw10 & 0xff) as u8 == DISCOVERY_LOG_PAGE {
                return self.discovery_log(slot, s);
            }
            return self.complete(slot, st(G::InvalidOpcode));
        }
        if is(A::CreateIoSq)
            || is(A::CreateIoCq)
            || is(A::DeleteIoSq)
            || is(A::DeleteIoCq)
            || is(A::DoorbellBufferConfig)
        {
            return self.complete(slot, st(G::InvalidOpcode));
        }
        if is(A::Abort) {
            // Dword 0 bit 0: the command was not aborted.
            self.complete_dw(slot, Status::SUCCESS, 1, 0);
            return Flow::Go;
        }
        if features && feature == fid::NUMBER_OF_QUEUES {
            let max = self.conn.inner.backend.io_queues;
            let n = if is(A::SetFeatures) {
                let (nsq, ncq) = (s.sqe.cdw11 & 0xffff, s.sqe.cdw11 >> 16);
                if nsq == 0xffff || ncq == 0xffff {
                    return self.complete(slot, st(G::InvalidField));
                }
                let n = (nsq.min(ncq) + 1).min(max as u32) as u16;
                a.io_queues.store(n, Ordering::Release);
                n
            } else {
                a.io_queues.load(Ordering::Acquire)
            };
            let v = (n as u32 - 1) * 0x1_0001;
            self.complete_dw(slot, Status::SUCCESS, v, 0);
            return Flow::Go;
        }
        // Everything else is the controller's.
        lock(&self.conn.slots)[slot as usize].patch_identify = identify_ctrl;
        let mut e = s.sqe;
        e.set_psdt(nvme_regs::entry::PSDT_PRP);
        e.mptr = 0;
        (e.prp1, e.prp2) = self.conn.prps(slot, s.len);
        self.conn.inner.backend.submit(
            e,
            Reply::Conn {
                out: self.out.clone(),
                slot,
            },
        );
        Flow::Go
    }

    fn hold_aer(&mut self, slot: u16, a: &Assoc) -> Flow {
        let mut st_ = lock(&a.aers);
        if let Some(ev) = st_.events.pop_front() {
            drop(st_);
            self.complete_dw(slot, Status::SUCCESS, ev, 0);
        } else if st_.held.len() >= AER_LIMIT {
            drop(st_);
            self.complete(
                slot,
                Status::command_specific(CommandSpecificStatus::AerLimitExceeded),
            );
        } else {
            st_.held.push((self.out.clone(), slot));
        }
        Flow::Go
    }

    /// Writes `data` (then zeros up to the command's length) into slot memory and completes
    /// the command.
    fn reply_data(&mut self, slot: u16, s: &Slot, data: &[u8]) -> Flow {
        let mut v = vec![0u8; s.len as usize];
        let n = v.len().min(data.len());
        v[..n].copy_from_slice(&data[..n]);
        self.conn.mem.write(self.conn.bounce(slot), &v);
        self.complete(slot, Status::SUCCESS)
    }

    fn discovery_identify(&mut self, slot: u16, a: &Assoc, s: &Slot) -> Flow {
        let inner = &self.conn.inner;
        let sim_id = &inner.backend.ident;
        let mut id = IdentifyController::read_from_bytes(&[0u8; 4096][..]).expect("4096 bytes");
        id.sn = sim_id.sn;
        fill_ascii(&mut id.mn, "nvme-sim discovery controller");
        id.fr = sim_id.fr;
        id.cntlid = a.cntlid;
        id.ver = nvme_regs::registers::Vs::V1_4.0;
        id.cntrltype = 2;
        id.lpa = nvme_regs::identify::Lpa::EXTENDED_DATA.bits();
        id.aerl = AER_LIMIT as u8 - 1;
        id.kas = 1;
        id.maxcmd = inner.nslots as u16;
        id.sgls = 1 | Sgls::OFFSET | Sgls::TRANSPORT_DATA_BLOCK;
        id.subnqn[..DISCOVERY_NQN.len()].copy_from_slice(DISCOVERY_NQN.as_bytes());
        let attrs = FabricsAttributes {
            ioccsz: 4,
            iorcsz: 1,
            msdbd: 1,
            ofcs: FabricsAttributes::OFCS_DISCONNECT,
            ..Default::default()
        };
        id.nvmeof[..16].copy_from_slice(attrs.as_bytes());
        self.reply_data(slot, s, id.as_bytes())
    }

    fn discovery_log(&mut self, slot: u16, s: &Slot) -> Flow {
        use nvme_regs::fabrics::{
            AddressFamily, DiscoveryLogEntry, DiscoveryLogHeader, SubsystemType, TransportType,
        };
        let inner = &self.conn.inner;
        let local = inner.local;
        let mut e = DiscoveryLogEntry {
            trtype: TransportType::Tcp as u8,
            adrfam: if local.is_ipv4() {
                AddressFamily::Ipv4
            } else {
                AddressFamily::Ipv6
            } as u8,
            subtype: SubsystemType::Nvme as u8,
            // Secure channel not required; SQ flow control may be disabled.
            treq: 2 | nvme_regs::fabrics::Treq::SQ_FLOW_CONTROL_DISABLE,
            portid: 1,
            cntlid: nvme_regs::fabrics::CNTLID_DYNAMIC,
            asqsz: 32,
            ..Default::default()
        };
        e.trsvcid.fill(b' ');
        let port = local.port().to_string();
        e.trsvcid[..port.len()].copy_from_slice(port.as_bytes());
        e.traddr.fill(b' ');
        let ip = local.ip().to_string();
        e.traddr[..ip.len()].copy_from_slice(ip.as_bytes());
        e.subnqn[..inner.opts.subnqn.len()].copy_from_slice(inner.opts.subnqn.as_bytes());
        let h = DiscoveryLogHeader {
            genctr: 1,
            numrec: 1,
            ..Default::default()
        };
        let mut page = h.as_bytes().to_vec();
        page.extend_from_slice(e.as_bytes());
        let off = s.sqe.cdw12 as u64 | (s.sqe.cdw13 as u64) << 32;
        if !off.is_multiple_of(4) {
            return self.complete(slot, st(G::InvalidField));
        }
        let from = (off as usize).min(page.len());
        let data = page[from..].to_vec();
        self.reply_data(slot, s, &data)
    }

    fn io(&mut self, slot: u16, s: &Slot) -> Flow {
        let conn = self.conn.clone();
        let (Some(sq), Some(q)) = (self.sq.as_mut(), conn.simq.get()) else {
            return self.complete(slot, st(G::CommandSequenceError));
        };
        let mut e = s.sqe;
        e.cid = slot;
        e.set_psdt(nvme_regs::entry::PSDT_PRP);
        e.mptr = 0;
        (e.prp1, e.prp2) = conn.prps(slot, s.len);
        sq.push(&conn.mem, &e);
        sq.ring(
            &conn.inner.backend.bar,
            q.qid,
            conn.inner.backend.cap.dstrd(),
        );
        Flow::Go
    }

    /// After the socket closed: ends the association (admin queue) or gives the
    /// controller's queue pair back (I/O queue), waiting for commands in flight.
    fn teardown(&mut self) {
        let conn = self.conn.clone();
        let b = &conn.inner.backend;
        if let Some(a) = conn.assoc.get() {
            match conn.qid() {
                Some(0) => {
                    a.kill();
                    conn.inner.registry.remove(a.cntlid);
                    let held = std::mem::take(&mut lock(&a.aers).held);
                    let mut slots = lock(&conn.slots);
                    for (_, s) in held {
                        slots[s as usize] = Slot::default();
                    }
                }
                Some(q) => {
                    lock(&a.queues).remove(&q);
                }
                None => {}
            }
        }
        // Commands still waiting for their data never run.
        for s in lock(&conn.slots).iter_mut().filter(|s| s.awaiting_data) {
            *s = Slot::default();
        }
        let simq = conn.simq.get();
        if let Some(q) = simq {
            let _ = b.call(delete(A::DeleteIoSq, q.qid));
        }
        let t = Instant::now();
        while lock(&conn.slots).iter().any(|s| s.busy) && t.elapsed() < DRAIN {
            std::thread::sleep(Duration::from_millis(1));
        }
        if let Some(q) = simq {
            let _ = b.call(delete(A::DeleteIoCq, q.qid));
            b.give_back(q.qid, q.vector);
        }
        self.out.send(Out::Close);
    }
}

fn delete(op: A, qid: u16) -> SubmissionEntry {
    SubmissionEntry {
        opcode: op as u8,
        cdw10: qid as u32,
        ..Default::default()
    }
}
