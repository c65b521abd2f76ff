//! The target against a test client of its own: raw PDUs over a `TcpStream`, framed here
//! (not with the target's `pdu` module), digests checked on everything received.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use nvme_regs::fabrics::{
    ConnectCommand, ConnectData, DiscoveryLogEntry, DiscoveryLogHeader, FabricsAttributes,
    FabricsStatus, InvalidParameter, PropertyCommand, PropertySize, DISCOVERY_NQN,
};
use nvme_regs::features::fid;
use nvme_regs::identify::IdentifyController;
use nvme_regs::opcode::{AdminOpcode as A, NvmOpcode as N};
use nvme_regs::sgl::Sgls;
use nvme_regs::status::GenericStatus as G;
use nvme_regs::tcp::{
    digest, in_capsule, transport_data_block, CommonHeader, DataHeader, FatalErrorStatus, IcReq,
    IcResp, PduFlags, PduType, R2t, TermReq,
};
use nvme_regs::{CompletionEntry, StatusCodeType, SubmissionEntry};
use zerocopy::{FromBytes, IntoBytes};

use super::crc32c::crc32c;
use super::{DigestPolicy, TcpTarget, TcpTargetOptions, DEFAULT_SUBNQN};
use crate::testhost::{pattern, small_config};
use crate::AsyncEventType;

const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:test-host";
const WAIT: Duration = Duration::from_secs(5);

fn target(opts: TcpTargetOptions) -> TcpTarget {
    TcpTarget::start(small_config(), "127.0.0.1:0".parse().unwrap(), opts).expect("target")
}

/// What a command moves.
enum Data<'a> {
    None,
    /// Written in the capsule.
    InCapsule(&'a [u8]),
    /// Written in H2CData PDUs answering the R2T.
    R2t(&'a [u8]),
    /// Read: this many bytes in C2HData PDUs.
    Read(u32),
}

enum Rx {
    Resp(CompletionEntry),
    C2h(DataHeader, Vec<u8>),
    R2t(R2t),
    Term(TermReq),
}

struct Client {
    s: TcpStream,
    hd: bool,
    dd: bool,
    maxh2cdata: usize,
    cid: u16,
    /// Write data waiting for R2Ts, by CID.
    writes: HashMap<u16, Vec<u8>>,
    /// Read data arrived, by CID.
    reads: HashMap<u16, Vec<u8>>,
    /// Break the data digest of the next H2CData PDU.
    corrupt_next_h2c: bool,
}

impl Client {
    fn ic(addr: SocketAddr, digests: u8) -> (Client, IcResp) {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.write_all(IcReq::new(0, digests, 0).as_bytes()).unwrap();
        let mut b = [0u8; 128];
        s.read_exact(&mut b).expect("ICResp");
        let r = IcResp::read_from_bytes(&b).unwrap();
        assert_eq!(r.ch.pdu_type, PduType::IcResp as u8);
        assert_eq!((r.ch.hlen, r.ch.plen), (128, 128));
        let c = Client {
            s,
            hd: r.digest & digest::HEADER != 0,
            dd: r.digest & digest::DATA != 0,
            maxh2cdata: r.maxh2cdata as usize,
            cid: 0,
            writes: HashMap::new(),
            reads: HashMap::new(),
            corrupt_next_h2c: false,
        };
        (c, r)
    }

    /// Sends a PDU: header, header digest, data right after (CPDA 0), data digest.
    fn send(&mut self, t: PduType, rest: &[u8], data: &[u8], corrupt_dd: bool) {
        let hlen = t.header_len();
        let hd = if self.hd { 4 } else { 0 };
        let dd = if self.dd && !data.is_empty() { 4 } else { 0 };
        let mut flags = PduFlags::empty();
        if hd != 0 {
            flags |= PduFlags::HDGSTF;
        }
        if dd != 0 {
            flags |= PduFlags::DDGSTF;
        }
        if t == PduType::H2cData {
            flags |= PduFlags::LAST_PDU;
        }
        let pdo = if data.is_empty() { 0 } else { hlen + hd };
        let plen = hlen + hd + data.len() + dd;
        let mut v = CommonHeader::new(t, flags, pdo as u8, plen as u32)
            .as_bytes()
            .to_vec();
        v.extend_from_slice(rest);
        if hd != 0 {
            let c = crc32c(&v);
            v.extend_from_slice(&c.to_le_bytes());
        }
        v.extend_from_slice(data);
        if dd != 0 {
            let c = crc32c(data) ^ corrupt_dd as u32;
            v.extend_from_slice(&c.to_le_bytes());
        }
        self.s.write_all(&v).expect("send");
    }

    /// Receives one PDU, checking its framing and digests.
    fn recv(&mut self) -> Rx {
        let mut ch = [0u8; 8];
        self.s.read_exact(&mut ch).expect("a PDU from the target");
        let h = CommonHeader::read_from_bytes(&ch).unwrap();
        let t = h.kind().expect("a known PDU type");
        assert_eq!(h.hlen as usize, t.header_len());
        let mut hdr = vec![0u8; t.header_len()];
        hdr[..8].copy_from_slice(&ch);
        self.s.read_exact(&mut hdr[8..]).unwrap();
        if t == PduType::C2hTermReq {
            let mut rest = vec![0u8; h.plen as usize - 24];
            self.s.read_exact(&mut rest).unwrap();
            return Rx::Term(TermReq::read_from_bytes(&hdr).unwrap());
        }
        let hd = self.hd && t.has_header_digest();
        assert_eq!(h.flags().contains(PduFlags::HDGSTF), hd);
        let mut fixed = hdr.len();
        if hd {
            let mut d = [0u8; 4];
            self.s.read_exact(&mut d).unwrap();
            assert_eq!(u32::from_le_bytes(d), crc32c(&hdr), "header digest");
            fixed += 4;
        }
        let mut data = Vec::new();
        if h.plen as usize > fixed {
            let pdo = h.pdo as usize;
            assert!(pdo >= fixed);
            let dd = if self.dd { 4 } else { 0 };
            assert_eq!(h.flags().contains(PduFlags::DDGSTF), dd != 0);
            let mut pad = vec![0u8; pdo - fixed];
            self.s.read_exact(&mut pad).unwrap();
            data = vec![0u8; h.plen as usize - pdo - dd];
            self.s.read_exact(&mut data).unwrap();
            if dd != 0 {
                let mut d = [0u8; 4];
                self.s.read_exact(&mut d).unwrap();
                assert_eq!(u32::from_le_bytes(d), crc32c(&data), "data digest");
            }
        } else {
            assert_eq!(h.pdo, 0);
        }
        match t {
            PduType::CapsuleResp => Rx::Resp(CompletionEntry::read_from_bytes(&hdr[8..]).unwrap()),
            PduType::C2hData => {
                let d = DataHeader::read_from_bytes(&hdr).unwrap();
                assert_eq!(d.datal as usize, data.len());
                Rx::C2h(d, data)
            }
            PduType::R2t => Rx::R2t(R2t::read_from_bytes(&hdr).unwrap()),
            other => panic!("{} from the target", other.name()),
        }
    }

    /// Sends a command (without waiting); returns its CID.
    fn submit(&mut self, mut e: SubmissionEntry, data: Data<'_>) -> u16 {
        self.cid = self.cid.wrapping_add(1);
        e.cid = self.cid;
        e.set_psdt(nvme_regs::entry::PSDT_SGL);
        let (desc, body) = match data {
            Data::None => (transport_data_block(0), &[][..]),
            Data::InCapsule(b) => (in_capsule(0, b.len() as u32), b),
            Data::R2t(b) => {
                self.writes.insert(e.cid, b.to_vec());
                (transport_data_block(b.len() as u32), &[][..])
            }
            Data::Read(n) => {
                self.reads.insert(e.cid, vec![0xee; n as usize]);
                (transport_data_block(n), &[][..])
            }
        };
        (e.prp1, e.prp2) = desc.to_dptr();
        self.send(PduType::CapsuleCmd, e.as_bytes(), body, false);
        e.cid
    }

    /// Handles PDUs until a response arrives; returns it.
    fn next_resp(&mut self) -> CompletionEntry {
        loop {
            match self.recv() {
                Rx::Resp(c) => return c,
                Rx::C2h(h, d) => {
                    let buf = self.reads.get_mut(&h.cccid).expect("C2HData for a read");
                    buf[h.datao as usize..h.datao as usize + d.len()].copy_from_slice(&d);
                }
                Rx::R2t(r) => {
                    let data = self.writes.get(&r.cccid).expect("R2T for a write").clone();
                    let (o, l) = (r.r2to as usize, r.r2tl as usize);
                    let mut off = o;
                    while off < o + l {
                        let n = self.maxh2cdata.min(o + l - off);
                        let h = DataHeader {
                            cccid: r.cccid,
                            ttag: r.ttag,
                            datao: off as u32,
                            datal: n as u32,
                            ..Default::default()
                        };
                        let bad = std::mem::take(&mut self.corrupt_next_h2c);
                        self.send(
                            PduType::H2cData,
                            &h.as_bytes()[8..],
                            &data[off..off + n],
                            bad,
                        );
                        off += n;
                    }
                }
                Rx::Term(t) => panic!("C2HTermReq, FES {:#x}", t.fes),
            }
        }
    }

    fn exec(&mut self, e: SubmissionEntry, data: Data<'_>) -> (CompletionEntry, Vec<u8>) {
        let cid = self.submit(e, data);
        let c = self.next_resp();
        assert_eq!(c.cid, cid);
        (c, self.reads.remove(&cid).unwrap_or_default())
    }

    fn connect(
        &mut self,
        qid: u16,
        sqsize: u16,
        kato: u32,
        cntlid: u16,
        subnqn: &str,
    ) -> CompletionEntry {
        let mut d = ConnectData {
            cntlid,
            ..Default::default()
        };
        d.subnqn[..subnqn.len()].copy_from_slice(subnqn.as_bytes());
        d.hostnqn[..HOST.len()].copy_from_slice(HOST.as_bytes());
        let e = ConnectCommand::new(qid, sqsize, kato).to_entry();
        self.exec(e, Data::InCapsule(d.as_bytes())).0
    }

    fn prop_get(&mut self, off: u32, size: PropertySize) -> u64 {
        let (c, _) = self.exec(PropertyCommand::get(off, size).to_entry(), Data::None);
        assert!(
            c.status().is_success(),
            "property get {off:#x}: {}",
            c.status()
        );
        c.dw0 as u64 | (c.dw1 as u64) << 32
    }

    fn prop_set(&mut self, off: u32, v: u32) {
        let (c, _) = self.exec(
            PropertyCommand::set(off, PropertySize::Four, v as u64).to_entry(),
            Data::None,
        );
        assert!(c.status().is_success(), "property set: {}", c.status());
    }

    /// Connects an admin queue to `subnqn` and enables the association; returns CNTLID.
    fn admin_up(&mut self, subnqn: &str, kato: u32) -> u16 {
        let c = self.connect(0, 31, kato, 0xffff, subnqn);
        assert!(c.status().is_success(), "admin connect: {}", c.status());
        let cntlid = c.dw0 as u16;
        assert_eq!(
            self.prop_get(0x1c, PropertySize::Four) & 1,
            0,
            "RDY before enable"
        );
        self.prop_set(0x14, 0x46_0001);
        assert_eq!(
            self.prop_get(0x1c, PropertySize::Four) & 1,
            1,
            "RDY after enable"
        );
        cntlid
    }

    fn identify(&mut self) -> IdentifyController {
        let e = SubmissionEntry {
            opcode: A::Identify as u8,
            cdw10: 1,
            ..Default::default()
        };
        let (c, d) = self.exec(e, Data::Read(4096));
        assert!(c.status().is_success(), "identify: {}", c.status());
        IdentifyController::read_from_bytes(&d).unwrap()
    }
}

fn rw(op: N, nsid: u32, slba: u64, blocks: u32) -> SubmissionEntry {
    SubmissionEntry {
        opcode: op as u8,
        nsid,
        cdw10: slba as u32,
        cdw11: (slba >> 32) as u32,
        cdw12: blocks - 1,
        ..Default::default()
    }
}

fn fabrics_sc(c: &CompletionEntry) -> (StatusCodeType, u8) {
    c.status().code()
}

/// An association with one I/O queue (qid 1): (admin client, I/O client, CNTLID).
fn io_pair(t: &TcpTarget, digests: u8) -> (Client, Client, u16) {
    let (mut a, _) = Client::ic(t.local_addr(), digests);
    let cntlid = a.admin_up(t.subnqn(), 0);
    let (mut q, _) = Client::ic(t.local_addr(), digests);
    let c = q.connect(1, 31, 0, cntlid, t.subnqn());
    assert!(c.status().is_success(), "I/O connect: {}", c.status());
    assert_eq!(c.sq_id, 1);
    (a, q, cntlid)
}

#[test]
fn connect_properties_enable_and_identify() {
    let t = target(TcpTargetOptions::default());
    assert_eq!(t.subnqn(), DEFAULT_SUBNQN);
    assert!(t
        .transport_id()
        .contains(&format!("trsvcid:{}", t.local_addr().port())));
    let (mut a, r) = Client::ic(t.local_addr(), 0);
    assert_eq!(r.digest, 0);
    let c = a.connect(0, 31, 0, 0xffff, DEFAULT_SUBNQN);
    assert!(c.status().is_success());
    let cntlid = c.dw0 as u16;
    assert!(cntlid != 0 && cntlid < 0xfff0);
    assert_eq!(c.sq_head, 1, "SQHD after the first capsule");
    let cap = nvme_regs::registers::Cap(a.prop_get(0, PropertySize::Eight));
    assert_eq!(cap.mqes(), 127);
    assert_eq!(cap.dstrd(), 0);
    assert_eq!(cap.css() & 1, 1);
    assert_eq!(a.prop_get(8, PropertySize::Four) as u32, 0x0001_0400);
    // Admin commands need an enabled controller.
    let e = SubmissionEntry {
        opcode: A::Identify as u8,
        cdw10: 1,
        ..Default::default()
    };
    let (c, _) = a.exec(e, Data::Read(4096));
    assert!(
        c.status().is_generic(G::CommandSequenceError),
        "{}",
        c.status()
    );
    a.prop_set(0x14, 0x46_0001);
    assert_eq!(a.prop_get(0x1c, PropertySize::Four) & 1, 1);
    let id = a.identify();
    assert_eq!(id.cntlid, cntlid);
    assert_eq!(id.cntrltype, 1);
    assert_eq!(id.serial(), "SIM0001");
    assert_eq!(nvme_regs::identify::trim_ascii(&id.subnqn), DEFAULT_SUBNQN);
    assert!(Sgls(id.sgls).supported());
    assert_ne!(id.sgls & Sgls::TRANSPORT_DATA_BLOCK, 0);
    assert_ne!(id.sgls & Sgls::OFFSET, 0);
    let f = FabricsAttributes::read_from_bytes(&id.nvmeof[..16]).unwrap();
    assert_eq!((f.ioccsz, f.iorcsz, f.msdbd), ((64 + 8192) / 16, 1, 1));
    assert_eq!(id.mdts, 5);
    assert_eq!(
        id.oacs & (1 << 8),
        0,
        "no Doorbell Buffer Config over fabrics"
    );
    // Queues are the transport's business.
    let (c, _) = a.exec(
        SubmissionEntry {
            opcode: A::CreateIoCq as u8,
            ..Default::default()
        },
        Data::None,
    );
    assert!(c.status().is_generic(G::InvalidOpcode));
    // Forwarded: Identify Namespace 1 comes from the controller.
    let e = SubmissionEntry {
        opcode: A::Identify as u8,
        nsid: 1,
        ..Default::default()
    };
    let (c, d) = a.exec(e, Data::Read(4096));
    assert!(c.status().is_success());
    assert_eq!(u64::from_le_bytes(d[..8].try_into().unwrap()), 16384);
    // An I/O queue without SQ flow control gets SQHD 0xffff.
    let (mut q, _) = Client::ic(t.local_addr(), 0);
    let mut d = ConnectData {
        cntlid,
        ..Default::default()
    };
    d.subnqn[..DEFAULT_SUBNQN.len()].copy_from_slice(DEFAULT_SUBNQN.as_bytes());
    d.hostnqn[..HOST.len()].copy_from_slice(HOST.as_bytes());
    let mut cc = ConnectCommand::new(1, 15, 0);
    cc.cattr = ConnectCommand::CATTR_DISABLE_SQ_FLOW_CONTROL;
    let (c, _) = q.exec(cc.to_entry(), Data::InCapsule(d.as_bytes()));
    assert!(c.status().is_success(), "{}", c.status());
    assert_eq!(c.sq_head, 0xffff);
    // Shutdown completes at once.
    a.prop_set(0x14, 0x46_4001);
    assert_eq!((a.prop_get(0x1c, PropertySize::Four) >> 2) & 3, 2);
}

#[test]
fn writes_and_reads_with_digests() {
    let t = target(TcpTargetOptions {
        maxh2cdata: 16 << 10,
        max_c2h_data: 24 << 10,
        ..Default::default()
    });
    let (a, mut q, _) = io_pair(&t, digest::HEADER | digest::DATA);
    assert!(a.hd && a.dd && q.hd && q.dd);
    assert_eq!(q.maxh2cdata, 16 << 10);
    let ns = t.controller().namespace_data(1).unwrap();
    // In-capsule write.
    let small = pattern(1, 4096);
    let (c, _) = q.exec(rw(N::Write, 1, 8, 8), Data::InCapsule(&small));
    assert!(c.status().is_success(), "{}", c.status());
    assert_eq!(c.sq_id, 1);
    let mut got = vec![0u8; 4096];
    ns.read(8 * 512, &mut got).unwrap();
    assert_eq!(got, small);
    // A write past the in-capsule size: R2T, then 4 H2CData PDUs.
    let big = pattern(2, 64 << 10);
    let (c, _) = q.exec(rw(N::Write, 1, 100, 128), Data::R2t(&big));
    assert!(c.status().is_success(), "{}", c.status());
    let mut got = vec![0u8; 64 << 10];
    ns.read(100 * 512, &mut got).unwrap();
    assert_eq!(got, big);
    // Reads in several C2HData PDUs, of data the backing store holds.
    let direct = pattern(3, 128 << 10);
    ns.write(1000 * 512, &direct).unwrap();
    let (c, d) = q.exec(rw(N::Read, 1, 1000, 256), Data::Read(128 << 10));
    assert!(c.status().is_success(), "{}", c.status());
    assert_eq!(d, direct);
    let (c, d) = q.exec(rw(N::Read, 1, 100, 128), Data::Read(64 << 10));
    assert!(c.status().is_success());
    assert_eq!(d, big);
    // The 4 KiB namespace too.
    let (c, _) = q.exec(rw(N::Write, 2, 3, 2), Data::R2t(&direct[..8192]));
    assert!(c.status().is_success());
    let (c, d) = q.exec(rw(N::Read, 2, 3, 2), Data::Read(8192));
    assert!(c.status().is_success());
    assert_eq!(d, &direct[..8192]);
    // Errors of the controller come back as they are.
    let (c, _) = q.exec(rw(N::Read, 1, 16384, 1), Data::Read(512));
    assert!(c.status().is_generic(G::LbaOutOfRange), "{}", c.status());
    // More than the largest transfer.
    let (c, _) = q.exec(rw(N::Read, 1, 0, 512), Data::Read(256 << 10));
    assert!(
        c.status().is_generic(G::DataSglLengthInvalid),
        "{}",
        c.status()
    );
    assert_eq!(
        t.controller().dma_errors(),
        0,
        "{:?}",
        t.controller().dma_error_log()
    );
    drop(a);
}

#[test]
fn pipelined_commands_on_one_queue() {
    let t = target(TcpTargetOptions::default());
    let (_a, mut q, _) = io_pair(&t, 0);
    let ns = t.controller().namespace_data(1).unwrap();
    let data: Vec<Vec<u8>> = (0..24).map(|i| pattern(i as u8, 16 << 10)).collect();
    let mut cids = HashMap::new();
    for (i, d) in data.iter().enumerate() {
        let cid = q.submit(rw(N::Write, 1, i as u64 * 32, 32), Data::R2t(d));
        cids.insert(cid, i);
    }
    let mut heads = Vec::new();
    for _ in 0..data.len() {
        let c = q.next_resp();
        assert!(c.status().is_success(), "{}", c.status());
        assert!(cids.remove(&c.cid).is_some());
        heads.push(c.sq_head);
    }
    assert!(heads.iter().all(|&h| h <= 31));
    for (i, d) in data.iter().enumerate() {
        let mut got = vec![0u8; d.len()];
        ns.read(i as u64 * 32 * 512, &mut got).unwrap();
        assert_eq!(&got, d, "write {i}");
    }
    let mut reads = HashMap::new();
    for i in 0..data.len() {
        reads.insert(
            q.submit(rw(N::Read, 1, i as u64 * 32, 32), Data::Read(16 << 10)),
            i,
        );
    }
    for _ in 0..data.len() {
        let c = q.next_resp();
        assert!(c.status().is_success());
        let i = reads.remove(&c.cid).expect("a read of ours");
        assert_eq!(q.reads.remove(&c.cid).unwrap(), data[i]);
    }
}

#[test]
fn connect_refusals() {
    let t = target(TcpTargetOptions {
        allowed_hosts: vec![HOST.into()],
        ..Default::default()
    });
    let (mut a, _) = Client::ic(t.local_addr(), 0);
    let c = a.connect(0, 31, 0, 0xffff, "nqn.2014-08.org.example:other");
    assert_eq!(
        fabrics_sc(&c),
        (
            StatusCodeType::CommandSpecific,
            FabricsStatus::ConnectInvalidParameters as u8
        )
    );
    let p = InvalidParameter::from_dword(c.dw0);
    assert_eq!((p.offset, p.in_data), (ConnectData::SUBNQN_OFFSET, true));
    // The queue is still unconnected: a good Connect works now.
    let cntlid = a.admin_up(DEFAULT_SUBNQN, 0);
    // An I/O queue of an unknown controller, and one beyond the granted queues.
    let (mut q, _) = Client::ic(t.local_addr(), 0);
    let c = q.connect(1, 31, 0, cntlid.wrapping_add(7), DEFAULT_SUBNQN);
    let p = InvalidParameter::from_dword(c.dw0);
    assert_eq!(
        fabrics_sc(&c).1,
        FabricsStatus::ConnectInvalidParameters as u8
    );
    assert_eq!((p.offset, p.in_data), (ConnectData::CNTLID_OFFSET, true));
    let set = SubmissionEntry {
        opcode: A::SetFeatures as u8,
        cdw10: fid::NUMBER_OF_QUEUES as u32,
        cdw11: 1 | 1 << 16,
        ..Default::default()
    };
    let (c, _) = a.exec(set, Data::None);
    assert!(c.status().is_success());
    assert_eq!(c.dw0, 1 | 1 << 16);
    let c = q.connect(3, 31, 0, cntlid, DEFAULT_SUBNQN);
    let p = InvalidParameter::from_dword(c.dw0);
    assert_eq!((fabrics_sc(&c).1, p.offset, p.in_data), (0x82, 42, false));
    // SQSIZE beyond MQES.
    let c = q.connect(1, 500, 0, cntlid, DEFAULT_SUBNQN);
    assert_eq!(InvalidParameter::from_dword(c.dw0).offset, 44);
    // The same queue twice.
    let c = q.connect(2, 31, 0, cntlid, DEFAULT_SUBNQN);
    assert!(c.status().is_success());
    let (mut q2, _) = Client::ic(t.local_addr(), 0);
    let c = q2.connect(2, 31, 0, cntlid, DEFAULT_SUBNQN);
    assert_eq!(fabrics_sc(&c).1, FabricsStatus::ControllerBusy as u8);
    // A host that is not allowed.
    let (mut other, _) = Client::ic(t.local_addr(), 0);
    let mut d = ConnectData {
        cntlid: 0xffff,
        ..Default::default()
    };
    d.subnqn[..DEFAULT_SUBNQN.len()].copy_from_slice(DEFAULT_SUBNQN.as_bytes());
    d.hostnqn[..9].copy_from_slice(b"nqn.other");
    let (c, _) = other.exec(
        ConnectCommand::new(0, 31, 0).to_entry(),
        Data::InCapsule(d.as_bytes()),
    );
    assert_eq!(fabrics_sc(&c).1, FabricsStatus::ConnectInvalidHost as u8);
    // Commands before Connect.
    let (mut fresh, _) = Client::ic(t.local_addr(), 0);
    let (c, _) = fresh.exec(
        PropertyCommand::get(0, PropertySize::Eight).to_entry(),
        Data::None,
    );
    assert!(c.status().is_generic(G::CommandSequenceError));
}

#[test]
fn two_associations_share_the_namespaces() {
    let t = target(TcpTargetOptions::default());
    let (mut a1, mut q1, c1) = io_pair(&t, 0);
    let (mut a2, mut q2, c2) = io_pair(&t, digest::DATA);
    assert_ne!(c1, c2);
    assert_eq!(t.associations(), 2);
    assert_eq!(a1.identify().cntlid, c1);
    assert_eq!(a2.identify().cntlid, c2);
    // Disabling one association leaves the other enabled.
    a1.prop_set(0x14, 0x46_0000);
    assert_eq!(a1.prop_get(0x1c, PropertySize::Four) & 1, 0);
    assert_eq!(a2.prop_get(0x1c, PropertySize::Four) & 1, 1);
    // ... but its I/O queues are gone (a reset deletes them).
    let mut b = [0u8; 1];
    assert_eq!(
        q1.s.read(&mut b).unwrap_or(0),
        0,
        "I/O queue closed by the reset"
    );
    a1.prop_set(0x14, 0x46_0001);
    let (mut q1, _) = Client::ic(t.local_addr(), 0);
    let t0 = Instant::now();
    while !q1
        .connect(1, 31, 0, c1, DEFAULT_SUBNQN)
        .status()
        .is_success()
    {
        assert!(
            t0.elapsed() < WAIT,
            "queue 1 of the first association never freed"
        );
        q1 = Client::ic(t.local_addr(), 0).0;
    }
    let sim_q1 = t
        .controller_queue(c1, 1)
        .expect("a controller queue behind it");
    let sim_q2 = t
        .controller_queue(c2, 1)
        .expect("a controller queue behind it");
    assert_ne!(sim_q1, sim_q2);
    assert_eq!(t.controller_queue(c2, 5), None);
    let d = pattern(9, 8192);
    let (c, _) = q1.exec(rw(N::Write, 1, 40, 16), Data::InCapsule(&d));
    assert!(c.status().is_success());
    let (c, got) = q2.exec(rw(N::Read, 1, 40, 16), Data::Read(8192));
    assert!(c.status().is_success());
    assert_eq!(got, d);
    // The end of an association's admin queue ends its I/O queues.
    drop(a1);
    assert_eq!(q1.s.read(&mut b).unwrap_or(0), 0, "I/O queue closed");
    let t0 = Instant::now();
    while t.associations() != 1 {
        assert!(t0.elapsed() < WAIT, "association not removed");
        std::thread::sleep(Duration::from_millis(5));
    }
    let (c, _) = q2.exec(rw(N::Read, 1, 40, 16), Data::Read(8192));
    assert!(c.status().is_success());
}

#[test]
fn discovery() {
    let t = target(TcpTargetOptions::default());
    let (mut a, _) = Client::ic(t.local_addr(), 0);
    let cntlid = a.admin_up(DISCOVERY_NQN, 0);
    let id = a.identify();
    assert_eq!(id.cntrltype, 2);
    assert_eq!(nvme_regs::identify::trim_ascii(&id.subnqn), DISCOVERY_NQN);
    let e = SubmissionEntry {
        opcode: A::GetLogPage as u8,
        cdw10: 0x70 | (2048 / 4 - 1) << 16,
        ..Default::default()
    };
    let (c, d) = a.exec(e, Data::Read(2048));
    assert!(c.status().is_success(), "{}", c.status());
    let h = DiscoveryLogHeader::read_from_bytes(&d[..1024]).unwrap();
    assert_eq!(h.numrec, 1);
    let en = DiscoveryLogEntry::read_from_bytes(&d[1024..]).unwrap();
    assert_eq!(en.trtype, 3);
    assert_eq!(en.adrfam, 1);
    assert_eq!(en.subtype, 2);
    assert_eq!(en.subnqn(), DEFAULT_SUBNQN);
    assert_eq!(en.traddr(), "127.0.0.1");
    assert_eq!(en.trsvcid(), t.local_addr().port().to_string());
    // An offset into the page.
    let e = SubmissionEntry {
        opcode: A::GetLogPage as u8,
        cdw10: 0x70 | (16 / 4 - 1) << 16,
        cdw12: 8,
        ..Default::default()
    };
    let (_, d) = a.exec(e, Data::Read(16));
    assert_eq!(u64::from_le_bytes(d[..8].try_into().unwrap()), 1);
    // No I/O queues on a discovery controller, no NVM admin commands.
    let (mut q, _) = Client::ic(t.local_addr(), 0);
    let c = q.connect(1, 31, 0, cntlid, DISCOVERY_NQN);
    assert_eq!(fabrics_sc(&c).1, FabricsStatus::InvalidQueueType as u8);
    let e = SubmissionEntry {
        opcode: A::Identify as u8,
        nsid: 1,
        ..Default::default()
    };
    let (c, _) = a.exec(e, Data::Read(4096));
    assert!(c.status().is_generic(G::InvalidOpcode));
}

#[test]
fn digest_errors() {
    let t = target(TcpTargetOptions::default());
    let (_a, mut q, _) = io_pair(&t, digest::HEADER | digest::DATA);
    let ns = t.controller().namespace_data(1).unwrap();
    // A bad data digest in H2CData: the command fails with Transient Transport Error and
    // writes nothing; the connection goes on.
    let d = pattern(4, 16 << 10);
    q.corrupt_next_h2c = true;
    let (c, _) = q.exec(rw(N::Write, 1, 200, 32), Data::R2t(&d));
    assert!(
        c.status().is_generic(G::TransientTransportError),
        "{}",
        c.status()
    );
    let mut got = vec![0u8; d.len()];
    ns.read(200 * 512, &mut got).unwrap();
    assert!(got.iter().all(|&b| b == 0));
    // In a capsule too.
    let mut e = rw(N::Write, 1, 200, 1);
    e.cid = 77;
    e.set_psdt(1);
    (e.prp1, e.prp2) = in_capsule(0, 512).to_dptr();
    q.send(PduType::CapsuleCmd, e.as_bytes(), &d[..512], true);
    let c = q.next_resp();
    assert!(c.status().is_generic(G::TransientTransportError));
    let (c, _) = q.exec(rw(N::Write, 1, 200, 32), Data::R2t(&d));
    assert!(c.status().is_success());
    // A bad header digest ends the connection with a C2HTermReq.
    let mut e = rw(N::Read, 1, 0, 1);
    (e.prp1, e.prp2) = transport_data_block(512).to_dptr();
    let mut v = CommonHeader::new(PduType::CapsuleCmd, PduFlags::HDGSTF, 0, 76)
        .as_bytes()
        .to_vec();
    v.extend_from_slice(e.as_bytes());
    let bad = crc32c(&v) ^ 1;
    v.extend_from_slice(&bad.to_le_bytes());
    q.s.write_all(&v).unwrap();
    match q.recv() {
        Rx::Term(t) => assert_eq!(t.fes, FatalErrorStatus::HeaderDigestError as u16),
        _ => panic!("expected a C2HTermReq"),
    }
}

#[test]
fn digest_policies_and_bad_icreq() {
    let t = target(TcpTargetOptions {
        digests: DigestPolicy::Refuse,
        ..Default::default()
    });
    let (_, r) = Client::ic(t.local_addr(), digest::HEADER | digest::DATA);
    assert_eq!(r.digest, 0);
    let t = target(TcpTargetOptions {
        digests: DigestPolicy::Force,
        ..Default::default()
    });
    let (mut a, r) = Client::ic(t.local_addr(), 0);
    assert_eq!(r.digest, digest::HEADER | digest::DATA);
    a.admin_up(DEFAULT_SUBNQN, 0);
    // PDU format version 1 is not one the target knows.
    let mut s = TcpStream::connect(t.local_addr()).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut req = IcReq::new(0, 0, 0);
    req.pfv = 1;
    s.write_all(req.as_bytes()).unwrap();
    let mut b = [0u8; 24];
    s.read_exact(&mut b).unwrap();
    let term = TermReq::read_from_bytes(&b).unwrap();
    assert_eq!(term.ch.pdu_type, PduType::C2hTermReq as u8);
    assert_eq!(term.fes, FatalErrorStatus::UnsupportedParameter as u16);
    assert_eq!(u32::from_le_bytes(term.fei), 8);
}

#[test]
fn keep_alive_timeout_ends_the_association() {
    let t = target(TcpTargetOptions::default());
    let (mut a, _) = Client::ic(t.local_addr(), 0);
    a.admin_up(DEFAULT_SUBNQN, 150);
    let get = SubmissionEntry {
        opcode: A::GetFeatures as u8,
        cdw10: fid::KEEP_ALIVE_TIMER as u32,
        ..Default::default()
    };
    assert_eq!(a.exec(get, Data::None).0.dw0, 150);
    // No command for longer than KATO: the target closes the connection.
    let mut b = [0u8; 1];
    assert_eq!(a.s.read(&mut b).unwrap_or(0), 0);
    let t0 = Instant::now();
    while t.associations() != 0 || t.connections() != 0 {
        assert!(t0.elapsed() < WAIT, "association still there");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn async_events_reach_held_requests() {
    let t = target(TcpTargetOptions::default());
    let (mut a, _) = Client::ic(t.local_addr(), 0);
    a.admin_up(DEFAULT_SUBNQN, 0);
    let aer = SubmissionEntry {
        opcode: A::AsyncEventRequest as u8,
        ..Default::default()
    };
    let cid = a.submit(aer, Data::None);
    // Held: a Keep Alive overtakes it.
    let (c, _) = a.exec(
        SubmissionEntry {
            opcode: A::KeepAlive as u8,
            ..Default::default()
        },
        Data::None,
    );
    assert!(c.status().is_success());
    t.controller()
        .faults()
        .raise_async_event(AsyncEventType::SmartHealth, 1, 2);
    let c = a.next_resp();
    assert_eq!(c.cid, cid);
    assert!(c.status().is_success());
    assert_eq!(c.dw0 & 7, AsyncEventType::SmartHealth as u32);
    assert_eq!((c.dw0 >> 16) & 0xff, 2);
}

#[test]
fn queues_come_and_go() {
    let t = target(TcpTargetOptions::default());
    let (_a, mut q, cntlid) = io_pair(&t, 0);
    let d = pattern(5, 4096);
    let (c, _) = q.exec(rw(N::Write, 1, 0, 8), Data::InCapsule(&d));
    assert!(c.status().is_success());
    // Disconnect: answered, then the connection closes.
    let (c, _) = q.exec(
        SubmissionEntry {
            opcode: nvme_regs::fabrics::FABRICS_OPCODE,
            nsid: nvme_regs::fabrics::FabricsCommandType::Disconnect as u32,
            ..Default::default()
        },
        Data::None,
    );
    assert!(c.status().is_success());
    let mut b = [0u8; 1];
    assert_eq!(q.s.read(&mut b).unwrap_or(0), 0, "closed after Disconnect");
    // The queue id is free again once the target has deleted the controller's queues.
    let t0 = Instant::now();
    let mut q = loop {
        let (mut q, _) = Client::ic(t.local_addr(), 0);
        let c = q.connect(1, 15, 0, cntlid, DEFAULT_SUBNQN);
        if c.status().is_success() {
            break q;
        }
        assert_eq!(fabrics_sc(&c).1, FabricsStatus::ControllerBusy as u8);
        assert!(t0.elapsed() < WAIT, "queue 1 never freed");
        std::thread::sleep(Duration::from_millis(5));
    };
    let (c, got) = q.exec(rw(N::Read, 1, 0, 8), Data::Read(4096));
    assert!(c.status().is_success());
    assert_eq!(got, d);
    // A host dropping the connection in the middle of a write (R2T out, no data sent).
    let e = rw(N::Write, 1, 0, 32);
    let mut e2 = e;
    e2.cid = 9;
    e2.set_psdt(1);
    (e2.prp1, e2.prp2) = transport_data_block(16 << 10).to_dptr();
    q.send(PduType::CapsuleCmd, e2.as_bytes(), &[], false);
    assert!(matches!(q.recv(), Rx::R2t(r) if r.cccid == 9 && r.r2tl == 16 << 10));
    drop(q);
    let t0 = Instant::now();
    while t.connections() != 1 {
        assert!(t0.elapsed() < WAIT, "connection not cleaned up");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut got = vec![0u8; 4096];
    t.controller().read_backing(1, 0, &mut got).unwrap();
    assert_eq!(got, d, "the abandoned write changed nothing");
    assert_eq!(
        t.controller().dma_errors(),
        0,
        "{:?}",
        t.controller().dma_error_log()
    );
}

#[test]
fn data_beyond_the_r2t_ends_the_connection() {
    let t = target(TcpTargetOptions::default());
    let (_a, mut q, _) = io_pair(&t, 0);
    let mut e = rw(N::Write, 1, 0, 8);
    e.cid = 3;
    e.set_psdt(1);
    (e.prp1, e.prp2) = transport_data_block(4096).to_dptr();
    q.send(PduType::CapsuleCmd, e.as_bytes(), &[], false);
    let Rx::R2t(r) = q.recv() else {
        panic!("expected an R2T")
    };
    let h = DataHeader {
        cccid: 3,
        ttag: r.ttag,
        datao: 2048,
        datal: 4096,
        ..Default::default()
    };
    q.send(PduType::H2cData, &h.as_bytes()[8..], &[7u8; 4096], false);
    match q.recv() {
        Rx::Term(t) => assert_eq!(t.fes, FatalErrorStatus::DataTransferOutOfRange as u16),
        _ => panic!("expected a C2HTermReq"),
    }
}

#[test]
fn malformed_pdus_end_only_their_connection() {
    let t = target(TcpTargetOptions::default());
    let (mut good, mut q, _) = io_pair(&t, 0);
    let bad_headers: [(&[u8], FatalErrorStatus, u32); 3] = [
        // A reserved PDU type.
        (
            &[0x08, 0, 24, 0, 24, 0, 0, 0],
            FatalErrorStatus::InvalidHeaderField,
            0,
        ),
        // A CapsuleCmd with the wrong HLEN.
        (
            &[0x04, 0, 24, 0, 24, 0, 0, 0],
            FatalErrorStatus::InvalidHeaderField,
            2,
        ),
        // A second ICReq.
        (
            &[0x00, 0, 128, 0, 128, 0, 0, 0],
            FatalErrorStatus::InvalidHeaderField,
            0,
        ),
    ];
    for (hdr, fes, fei) in bad_headers {
        let (mut c, _) = Client::ic(t.local_addr(), 0);
        let mut v = hdr.to_vec();
        v.resize(hdr[2] as usize, 0);
        c.s.write_all(&v).unwrap();
        match c.recv() {
            Rx::Term(term) => {
                assert_eq!((term.fes, u32::from_le_bytes(term.fei)), (fes as u16, fei))
            }
            _ => panic!("expected a C2HTermReq for {hdr:?}"),
        }
    }
    // An H2CData nobody asked for.
    let h = DataHeader {
        cccid: 1,
        ttag: 5,
        datal: 4,
        ..Default::default()
    };
    q.send(PduType::H2cData, &h.as_bytes()[8..], &[1, 2, 3, 4], false);
    assert!(
        matches!(q.recv(), Rx::Term(term) if term.fes == FatalErrorStatus::InvalidHeaderField as u16)
    );
    // The others go on.
    assert_eq!(good.identify().cntrltype, 1);
}
