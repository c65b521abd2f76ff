//! A scripted NVMe/TCP controller for tests: [`Peer`], the controller's end of a
//! connection speaking PDUs (framing, digests, data alignment), and [`start`], a target on
//! 127.0.0.1 with one namespace in memory ([`BLOCKS`] blocks of 512 bytes, subsystem
//! [`SUBNQN`]) that serves the admin queue (Connect, properties, Identify, features, logs,
//! Keep Alive) and I/O queues (read, write, compare, flush, write zeroes, dataset
//! management; data in the capsule, through R2T/H2CData and in C2HData), with failures on
//! demand ([`Config`]). Built for the crate's tests and, with the `testkit` feature, for the
//! tools' (`nvme-perf` and `nvmectl` over `trtype:TCP`); a real target (Linux's nvmet, the
//! software controller's) can take its place: the tests need only the transport id.
//!
//! Its threads end with their connections; the listener's thread lives as long as the
//! process.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::thread;

use nvme_regs::entry::SubmissionEntry;
use nvme_regs::fabrics::{fctype_of, ConnectCommand, FabricsCommandType, PropertyCommand};
use nvme_regs::features::fid;
use nvme_regs::identify::{fill_ascii, IdentifyController, IdentifyNamespace};
use nvme_regs::registers::{Cap, Cc, Vs};
use nvme_regs::sgl::SglDescriptor;
use nvme_regs::status::{GenericStatus, MediaErrorStatus};
use nvme_regs::tcp::{
    digest, CapsuleResp, CommonHeader, DataHeader, IcReq, IcResp, PduFlags, PduType, R2t,
};
use nvme_regs::{CompletionEntry, Status};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

use super::crc32c::crc32c;
use super::link::frame;

/// The subsystem NQN the target serves.
pub const SUBNQN: &str = "nqn.2014-08.org.example:e2e";
/// The namespace: 8 MiB of 512-byte blocks.
pub const BLOCKS: u64 = 16384;
/// MDTS 5 with 4 KiB pages: 128 KiB per command.
pub const MDTS: u8 = 5;
/// In-capsule data on I/O queues: IOCCSZ = (64 + 8192) / 16.
pub const IN_CAPSULE: u32 = 8192;

/// A byte stream a scripted controller speaks over (a socket pair's end, an accepted TCP
/// connection).
pub trait PeerStream: Read + Write + Send {}
impl<S: Read + Write + Send> PeerStream for S {}

/// The controller's end of a connection, speaking PDUs.
pub struct Peer {
    /// The connection.
    pub s: Box<dyn PeerStream>,
    /// Header digests on.
    pub hd: bool,
    /// Data digests on.
    pub dd: bool,
    /// Data alignment of the PDUs the host sends, checked (`(CPDA + 1) * 4`).
    pub align: usize,
}

/// One PDU as received: common header, the header's bytes, the data.
pub struct Pdu {
    /// The common header.
    pub ch: CommonHeader,
    /// The header's bytes (common header included, digest excluded).
    pub hdr: Vec<u8>,
    /// The data (empty when none).
    pub data: Vec<u8>,
}

impl Peer {
    /// Reads one PDU (`None` when the host closed the connection), checking the host's
    /// digests and data alignment (a mismatch panics: the host is under test).
    pub fn read_pdu(&mut self) -> Option<Pdu> {
        let mut b = [0u8; 8];
        self.s.read_exact(&mut b).ok()?;
        let ch = CommonHeader::read_from_bytes(&b).unwrap();
        let mut hdr = b.to_vec();
        hdr.resize(ch.hlen as usize, 0);
        self.s.read_exact(&mut hdr[8..]).ok()?;
        let mut at = ch.hlen as usize;
        let flags = ch.flags();
        if flags.contains(PduFlags::HDGSTF) {
            let mut d = [0u8; 4];
            self.s.read_exact(&mut d).ok()?;
            assert_eq!(u32::from_le_bytes(d), crc32c(&hdr), "host's header digest");
            at += 4;
        }
        let mut data = Vec::new();
        if ch.pdo != 0 {
            assert_eq!(ch.pdo as usize % self.align, 0, "host honours CPDA");
            let mut pad = vec![0u8; ch.pdo as usize - at];
            self.s.read_exact(&mut pad).ok()?;
            let dd = if flags.contains(PduFlags::DDGSTF) {
                4
            } else {
                0
            };
            data.resize(ch.plen as usize - ch.pdo as usize - dd, 0);
            self.s.read_exact(&mut data).ok()?;
            if dd != 0 {
                let mut d = [0u8; 4];
                self.s.read_exact(&mut d).ok()?;
                assert_eq!(u32::from_le_bytes(d), crc32c(&data), "host's data digest");
            }
        }
        Some(Pdu { ch, hdr, data })
    }

    /// Sends a PDU (with the data aligned to 8 bytes); `bad` corrupts the header and data
    /// digests.
    pub fn send(
        &mut self,
        t: PduType,
        flags: PduFlags,
        header: &[u8],
        data: &[u8],
        bad: (bool, bool),
    ) {
        let mut out = Vec::new();
        frame(
            &mut out,
            t,
            flags,
            &header[8..t.header_len()],
            data,
            (self.hd, self.dd),
            8,
        )
        .unwrap();
        if bad.0 {
            out[t.header_len()] ^= 1;
        }
        if bad.1 {
            *out.last_mut().unwrap() ^= 1;
        }
        let _ = self.s.write_all(&out);
    }

    /// Sends a response capsule for command `cid` (SQHD 0).
    pub fn respond(&mut self, cid: u16, status: Status, dw0: u32, dw1: u32) {
        self.respond_sqhd(cid, status, dw0, dw1, 0)
    }

    /// [`respond`](Self::respond) reporting submission queue head `sqhd`.
    pub fn respond_sqhd(&mut self, cid: u16, status: Status, dw0: u32, dw1: u32, sqhd: u16) {
        let r = CapsuleResp {
            cqe: CompletionEntry {
                dw0,
                dw1,
                cid,
                sq_head: sqhd,
                status: status.to_completion_word(false),
                ..Default::default()
            },
            ..Default::default()
        };
        self.send(
            PduType::CapsuleResp,
            PduFlags::empty(),
            r.as_bytes(),
            &[],
            (false, false),
        );
    }

    /// Sends an R2T for `len` bytes at `off` of command `cid`.
    pub fn r2t(&mut self, cid: u16, ttag: u16, off: u32, len: u32) {
        let r = R2t {
            cccid: cid,
            ttag,
            r2to: off,
            r2tl: len,
            ..Default::default()
        };
        let flags = PduFlags::empty();
        self.send(PduType::R2t, flags, r.as_bytes(), &[], (false, false));
    }

    /// Sends `data` in C2HData PDUs of `chunk` bytes; `success`: the last one carries
    /// SUCCESS and no response follows.
    pub fn c2h(&mut self, cid: u16, data: &[u8], chunk: usize, success: bool, bad_dd: bool) {
        self.c2h_pdus(cid, data, chunk, success, bad_dd);
        if !success {
            self.respond(cid, Status::generic(GenericStatus::Success), 0, 0);
        }
    }

    /// The C2HData PDUs of [`c2h`](Self::c2h) alone.
    pub fn c2h_pdus(&mut self, cid: u16, data: &[u8], chunk: usize, success: bool, bad_dd: bool) {
        let mut off = 0;
        while off < data.len() {
            let n = chunk.min(data.len() - off);
            let last = off + n == data.len();
            let mut flags = PduFlags::empty();
            if last {
                flags |= PduFlags::LAST_PDU;
                if success {
                    flags |= PduFlags::SUCCESS;
                }
            }
            let h = DataHeader {
                cccid: cid,
                datao: off as u32,
                datal: n as u32,
                ..Default::default()
            };
            self.send(
                PduType::C2hData,
                flags,
                h.as_bytes(),
                &data[off..off + n],
                (false, bad_dd),
            );
            off += n;
        }
    }
}

/// How the scripted target behaves.
#[derive(Clone, Debug)]
pub struct Config {
    /// Digests it grants when asked (`digest::HEADER | digest::DATA`).
    pub digests: u8,
    /// CPDA (data alignment (CPDA + 1) * 4).
    pub cpda: u8,
    /// MAXH2CDATA.
    pub max_h2c: u32,
    /// Reads end with a C2HData carrying SUCCESS instead of a response capsule.
    pub success_flag: bool,
    /// Each I/O connection is closed after this many commands (the last unanswered).
    pub close_io_after: Option<usize>,
    /// Reads get a C2HData PDU past the end of their data.
    pub c2h_out_of_range: bool,
    /// Reads are answered in pairs, the second first.
    pub swap_reads: bool,
    /// The first this many I/O queue Connects are answered Command Sequence Error, as
    /// Linux's nvmet answers one for a queue id whose earlier connection it is still
    /// tearing down.
    pub busy_io_connects: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            digests: 0,
            cpda: 0,
            max_h2c: 128 * 1024,
            success_flag: false,
            close_io_after: None,
            c2h_out_of_range: false,
            swap_reads: false,
            busy_io_connects: 0,
        }
    }
}

/// The target's state, shared by its connections.
pub struct Target {
    /// How it behaves.
    pub cfg: Config,
    /// The namespace's bytes.
    pub disk: Mutex<Vec<u8>>,
    /// The CC property.
    pub cc: Mutex<u32>,
    /// Connects seen: (qid, sqsize, cntlid asked for).
    pub connects: Mutex<Vec<(u16, u16, u16)>>,
    /// I/O commands answered: reads, writes.
    pub io: Mutex<(u64, u64)>,
    /// The controller ID the next admin Connect gets; I/O Connects naming another are
    /// refused (Connect Invalid Parameters: CNTLID).
    pub cntlid: Mutex<u16>,
    /// Every connection accepted, to end them ([`Target::restart`]).
    streams: Mutex<Vec<std::net::TcpStream>>,
    /// I/O Connects still to refuse ([`Config::busy_io_connects`]).
    busy_left: Mutex<usize>,
    /// Every Connect is answered "no such subsystem" while set (a subsystem taken off the
    /// target's port).
    pub refuse_connects: std::sync::atomic::AtomicBool,
}

impl Target {
    /// What a target restart looks like to hosts: every connection is closed, and the
    /// controller IDs given before are no longer known.
    pub fn restart(&self) {
        *self.cntlid.lock().unwrap() += 1;
        for s in self.streams.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Starts a target on 127.0.0.1 (an ephemeral port); returns its transport id.
pub fn start(cfg: Config) -> (String, Arc<Target>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let t = Arc::new(Target {
        disk: Mutex::new(vec![0; (BLOCKS * 512) as usize]),
        cc: Mutex::new(0),
        connects: Mutex::new(Vec::new()),
        io: Mutex::new((0, 0)),
        cntlid: Mutex::new(5),
        streams: Mutex::new(Vec::new()),
        busy_left: Mutex::new(cfg.busy_io_connects),
        refuse_connects: std::sync::atomic::AtomicBool::new(false),
        cfg,
    });
    let t2 = t.clone();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            let t = t2.clone();
            thread::spawn(move || serve(s, &t));
        }
    });
    let trid = format!("trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{port} subnqn:{SUBNQN}");
    (trid, t)
}

fn ok() -> Status {
    Status::generic(GenericStatus::Success)
}

/// One connection: ICReq/ICResp, Connect, then the admin or an I/O queue's commands.
fn serve(s: std::net::TcpStream, t: &Target) {
    s.set_nodelay(true).unwrap();
    let Ok(own) = s.try_clone() else { return };
    if let Ok(c) = s.try_clone() {
        t.streams.lock().unwrap().push(c);
    }
    serve_connection(s, t);
    // Closed here whoever else holds the socket (the clone kept for `restart`).
    let _ = own.shutdown(std::net::Shutdown::Both);
}

/// [`serve`]'s work on one connection, until it ends.
fn serve_connection(s: std::net::TcpStream, t: &Target) {
    let mut p = Peer {
        s: Box::new(s),
        hd: false,
        dd: false,
        align: (t.cfg.cpda as usize + 1) * 4,
    };
    let Some(req) = p.read_pdu() else { return };
    let req = IcReq::read_from_bytes(&req.hdr).unwrap();
    let granted = req.digest & t.cfg.digests;
    let resp = IcResp::new(t.cfg.cpda, granted, t.cfg.max_h2c);
    p.s.write_all(resp.as_bytes()).unwrap();
    p.hd = granted & digest::HEADER != 0;
    p.dd = granted & digest::DATA != 0;
    let Some(first) = p.read_pdu() else { return };
    let sqe = SubmissionEntry::read_from_bytes(&first.hdr[8..72]).unwrap();
    assert_eq!(fctype_of(&sqe), FabricsCommandType::Connect as u8);
    let cmd = ConnectCommand::from_entry(&sqe);
    let data = nvme_regs::fabrics::ConnectData::read_from_bytes(&first.data).unwrap();
    t.connects
        .lock()
        .unwrap()
        .push((cmd.qid, cmd.sqsize, data.cntlid));
    let entries = cmd.sqsize as u32 + 1;
    let mut q = Queue {
        head: 1 % entries,
        entries,
        commands: 0,
        held: None,
        backlog: std::collections::VecDeque::new(),
    };
    let cntlid = *t.cntlid.lock().unwrap();
    if t.refuse_connects.load(std::sync::atomic::Ordering::SeqCst) {
        // Connect Invalid Parameters (command specific 82h), in the data at SUBNQN.
        let status = Status::new(nvme_regs::StatusCodeType::CommandSpecific, 0x82);
        let dw0 = nvme_regs::fabrics::InvalidParameter {
            offset: nvme_regs::fabrics::ConnectData::SUBNQN_OFFSET,
            in_data: true,
        }
        .to_dword();
        p.respond_sqhd(sqe.cid, status, dw0, 0, q.head as u16);
        return;
    }
    if cmd.qid != 0 && data.cntlid != cntlid {
        // Connect Invalid Parameters (command specific 82h), in the data at CNTLID.
        let status = Status::new(nvme_regs::StatusCodeType::CommandSpecific, 0x82);
        let dw0 = nvme_regs::fabrics::InvalidParameter {
            offset: nvme_regs::fabrics::ConnectData::CNTLID_OFFSET,
            in_data: true,
        }
        .to_dword();
        p.respond_sqhd(sqe.cid, status, dw0, 0, q.head as u16);
        return;
    }
    if cmd.qid != 0 {
        let mut busy = t.busy_left.lock().unwrap();
        if *busy > 0 {
            *busy -= 1;
            let status = Status::generic(GenericStatus::CommandSequenceError).with_dnr();
            p.respond_sqhd(sqe.cid, status, 0, 0, q.head as u16);
            return;
        }
    }
    p.respond_sqhd(sqe.cid, ok(), cntlid as u32, 0, q.head as u16);
    while let Some(pdu) = q.backlog.pop_front().or_else(|| p.read_pdu()) {
        if pdu.ch.kind() == Some(PduType::H2cTermReq) {
            return;
        }
        assert_eq!(pdu.ch.kind(), Some(PduType::CapsuleCmd));
        let sqe = SubmissionEntry::read_from_bytes(&pdu.hdr[8..72]).unwrap();
        q.head = (q.head + 1) % q.entries;
        q.commands += 1;
        if cmd.qid == 0 {
            admin(&mut p, t, &q, &sqe);
        } else {
            if t.cfg.close_io_after == Some(q.commands) {
                return;
            }
            io(&mut p, t, &mut q, &sqe, &pdu.data);
        }
    }
}

/// A queue's state at the target.
struct Queue {
    head: u32,
    entries: u32,
    commands: usize,
    /// A read held back to be answered after the next command (`Config::swap_reads`).
    held: Option<SubmissionEntry>,
    /// Command capsules that arrived while a write's data was awaited (handled next).
    backlog: std::collections::VecDeque<Pdu>,
}

fn identify_controller() -> Vec<u8> {
    let mut id = IdentifyController::new_zeroed();
    fill_ascii(&mut id.mn, "E2E TCP TARGET");
    fill_ascii(&mut id.sn, "E2E0001");
    id.cntlid = 5;
    id.mdts = MDTS;
    id.nn = 1;
    id.sgls = 1;
    let ioccsz = (64 + IN_CAPSULE) / 16;
    id.nvmeof[..4].copy_from_slice(&ioccsz.to_le_bytes());
    id.as_bytes().to_vec()
}

fn identify_namespace() -> Vec<u8> {
    let mut ns = IdentifyNamespace::new_zeroed();
    (ns.nsze, ns.ncap, ns.nuse) = (BLOCKS, BLOCKS, BLOCKS);
    ns.lbaf[0].lbads = 9;
    ns.as_bytes().to_vec()
}

fn admin(p: &mut Peer, t: &Target, q: &Queue, sqe: &SubmissionEntry) {
    let sqhd = q.head as u16;
    let reply = |p: &mut Peer, data: &[u8]| {
        p.c2h_pdus(sqe.cid, data, 4096, false, false);
        p.respond_sqhd(sqe.cid, ok(), 0, 0, sqhd);
    };
    match sqe.opcode {
        0x7f => {
            let pc = PropertyCommand::from_entry(sqe);
            if fctype_of(sqe) == FabricsCommandType::PropertySet as u8 {
                *t.cc.lock().unwrap() = pc.value as u32;
                return p.respond_sqhd(sqe.cid, ok(), 0, 0, sqhd);
            }
            let cc = Cc(*t.cc.lock().unwrap());
            let v: u64 = match pc.offset {
                0 => Cap::new(255, true, 1, 0, false, 1, 0, 0).0,
                8 => Vs::new(1, 4, 0).0 as u64,
                0x14 => cc.0 as u64,
                0x1c => (cc.en() as u64) | if cc.shn() != 0 { 2 << 2 } else { 0 },
                o => panic!("property {o:#x}"),
            };
            p.respond_sqhd(sqe.cid, ok(), v as u32, (v >> 32) as u32, sqhd);
        }
        0x06 => match sqe.cdw10 & 0xff {
            1 => reply(p, &identify_controller()),
            0 if sqe.nsid == 1 => reply(p, &identify_namespace()),
            2 => {
                let mut list = vec![0u8; 4096];
                if sqe.nsid < 1 {
                    list[..4].copy_from_slice(&1u32.to_le_bytes());
                }
                reply(p, &list);
            }
            _ => reply(p, &[0u8; 4096]),
        },
        0x09 if sqe.cdw10 & 0xff == fid::NUMBER_OF_QUEUES as u32 => {
            p.respond_sqhd(sqe.cid, ok(), 0x0003_0003, 0, sqhd)
        }
        0x0a if sqe.cdw10 & 0xff == fid::KEEP_ALIVE_TIMER as u32 => {
            p.respond_sqhd(sqe.cid, ok(), 5000, 0, sqhd)
        }
        0x0a | 0x09 | 0x18 => p.respond_sqhd(sqe.cid, ok(), 0x11, 0, sqhd),
        0x02 => {
            let len = (((sqe.cdw10 >> 16) | (sqe.cdw11 & 0xffff) << 16) as usize + 1) * 4;
            let log: Vec<u8> = (0..len).map(|i| (i % 7) as u8 + 1).collect();
            reply(p, &log);
        }
        _ => p.respond_sqhd(
            sqe.cid,
            Status::generic(GenericStatus::InvalidOpcode),
            0,
            0,
            sqhd,
        ),
    }
}

/// The data of a write-like command: in the capsule, or asked for with one R2T.
fn receive(
    p: &mut Peer,
    backlog: &mut std::collections::VecDeque<Pdu>,
    sqe: &SubmissionEntry,
    inline: &[u8],
    len: usize,
) -> Vec<u8> {
    if !inline.is_empty() {
        assert!(inline.len() <= IN_CAPSULE as usize);
        return inline.to_vec();
    }
    p.r2t(sqe.cid, 0x77, 0, len as u32);
    let mut got = vec![0u8; len];
    loop {
        let pdu = p.read_pdu().expect("H2CData");
        if pdu.ch.kind() == Some(PduType::CapsuleCmd) {
            // The host pipelines: later commands may come before this one's data.
            backlog.push_back(pdu);
            continue;
        }
        assert_eq!(pdu.ch.kind(), Some(PduType::H2cData));
        let d = DataHeader::read_from_bytes(&pdu.hdr).unwrap();
        assert_eq!((d.cccid, d.ttag), (sqe.cid, 0x77));
        let (off, n) = (d.datao as usize, d.datal as usize);
        got[off..off + n].copy_from_slice(&pdu.data);
        if pdu.ch.flags().contains(PduFlags::LAST_PDU) {
            return got;
        }
    }
}

fn io(p: &mut Peer, t: &Target, q: &mut Queue, sqe: &SubmissionEntry, inline: &[u8]) {
    let sqhd = q.head as u16;
    if sqe.opcode == 0x02 && t.cfg.swap_reads && q.held.is_none() {
        q.held = Some(*sqe);
        return;
    }
    let held = q.held.take();
    io_one(p, t, q, sqhd, sqe, inline);
    if let Some(h) = held {
        io_one(p, t, q, sqhd, &h, &[]);
    }
}

fn io_one(
    p: &mut Peer,
    t: &Target,
    q: &mut Queue,
    sqhd: u16,
    sqe: &SubmissionEntry,
    inline: &[u8],
) {
    let slba = sqe.cdw10 as u64 | (sqe.cdw11 as u64) << 32;
    let nlb = (sqe.cdw12 & 0xffff) as usize + 1;
    let range = slba as usize * 512..(slba as usize + nlb) * 512;
    let sgl = SglDescriptor::from_dptr(sqe.prp1, sqe.prp2);
    let respond = |p: &mut Peer, s: Status| p.respond_sqhd(sqe.cid, s, 0, 0, sqhd);
    match sqe.opcode {
        0x02 => t.io.lock().unwrap().0 += 1,
        0x01 => t.io.lock().unwrap().1 += 1,
        _ => {}
    }
    match sqe.opcode {
        0x02 => {
            assert_eq!(sgl.length as usize, range.len(), "read's data length");
            let data = t.disk.lock().unwrap()[range].to_vec();
            if t.cfg.c2h_out_of_range {
                let h = DataHeader {
                    cccid: sqe.cid,
                    datao: data.len() as u32,
                    datal: 512,
                    ..Default::default()
                };
                p.send(
                    PduType::C2hData,
                    PduFlags::LAST_PDU,
                    h.as_bytes(),
                    &[0xee; 512],
                    (false, false),
                );
                return;
            }
            p.c2h_pdus(sqe.cid, &data, 16384, t.cfg.success_flag, false);
            if !t.cfg.success_flag {
                respond(p, ok());
            }
        }
        0x01 | 0x05 => {
            let data = receive(p, &mut q.backlog, sqe, inline, range.len());
            let mut disk = t.disk.lock().unwrap();
            if sqe.opcode == 0x01 {
                disk[range].copy_from_slice(&data);
                drop(disk);
                respond(p, ok());
            } else if disk[range] == data[..] {
                drop(disk);
                respond(p, ok());
            } else {
                drop(disk);
                respond(p, Status::media(MediaErrorStatus::CompareFailure));
            }
        }
        0x00 => respond(p, ok()),
        0x08 => {
            t.disk.lock().unwrap()[range].fill(0);
            respond(p, ok());
        }
        0x09 => {
            let ranges = (sqe.cdw10 & 0xff) as usize + 1;
            let data = receive(p, &mut q.backlog, sqe, inline, ranges * 16);
            let mut disk = t.disk.lock().unwrap();
            for r in data.chunks_exact(16) {
                let len = u32::from_le_bytes(r[4..8].try_into().unwrap()) as usize;
                let lba = u64::from_le_bytes(r[8..16].try_into().unwrap()) as usize;
                disk[lba * 512..(lba + len) * 512].fill(0);
            }
            drop(disk);
            respond(p, ok());
        }
        _ => respond(p, Status::generic(GenericStatus::InvalidOpcode)),
    }
}
