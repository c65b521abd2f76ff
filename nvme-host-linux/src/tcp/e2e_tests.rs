//! End to end over TCP on 127.0.0.1: `Controller::attach("trtype:TCP ...")`, the admin
//! helpers and I/O queue pairs against a scripted NVMe/TCP target with one namespace in
//! memory. The tests need only what [`start`] returns (a transport id string and the
//! namespace's bytes), so a real target (the software controller's, Linux's nvmet) can
//! take the scripted one's place.

use std::io::Write;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use nvme_regs::entry::SubmissionEntry;
use nvme_regs::fabrics::{fctype_of, ConnectCommand, FabricsCommandType, PropertyCommand};
use nvme_regs::features::{fid, FeatureSelect};
use nvme_regs::identify::{fill_ascii, IdentifyController, IdentifyNamespace};
use nvme_regs::registers::{Cap, Cc, Vs};
use nvme_regs::sgl::SglDescriptor;
use nvme_regs::status::{GenericStatus, MediaErrorStatus};
use nvme_regs::tcp::{digest, DataHeader, IcReq, IcResp, PduFlags, PduType};
use nvme_regs::Status;
use zerocopy::{FromBytes, FromZeros, IntoBytes};

use super::tests::Peer;
use crate::{AttachOptions, Controller, Error, QueueOptions, TransportId};

const SUBNQN: &str = "nqn.2014-08.org.example:e2e";
/// The namespace: 8 MiB of 512-byte blocks.
const BLOCKS: u64 = 16384;
/// MDTS 5 with 4 KiB pages: 128 KiB per command.
const MDTS: u8 = 5;
/// In-capsule data on I/O queues: IOCCSZ = (64 + 8192) / 16.
const IN_CAPSULE: u32 = 8192;

/// How the scripted target behaves.
#[derive(Clone, Debug)]
struct Config {
    /// Digests it grants when asked (`digest::HEADER | digest::DATA`).
    digests: u8,
    /// CPDA (data alignment (CPDA + 1) * 4).
    cpda: u8,
    /// MAXH2CDATA.
    max_h2c: u32,
    /// Reads end with a C2HData carrying SUCCESS instead of a response capsule.
    success_flag: bool,
    /// Each I/O connection is closed after this many commands (the last unanswered).
    close_io_after: Option<usize>,
    /// Reads get a C2HData PDU past the end of their data.
    c2h_out_of_range: bool,
    /// Reads are answered in pairs, the second first.
    swap_reads: bool,
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
        }
    }
}

/// The target's state, shared by its connections.
struct Target {
    cfg: Config,
    disk: Mutex<Vec<u8>>,
    cc: Mutex<u32>,
    /// Connects seen: (qid, sqsize, cntlid asked for).
    connects: Mutex<Vec<(u16, u16, u16)>>,
}

/// Starts a target on 127.0.0.1 (an ephemeral port); returns its transport id.
fn start(cfg: Config) -> (String, Arc<Target>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let t = Arc::new(Target {
        cfg,
        disk: Mutex::new(vec![0; (BLOCKS * 512) as usize]),
        cc: Mutex::new(0),
        connects: Mutex::new(Vec::new()),
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
    };
    p.respond_sqhd(sqe.cid, ok(), 5, 0, q.head as u16);
    while let Some(pdu) = p.read_pdu() {
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
fn receive(p: &mut Peer, sqe: &SubmissionEntry, inline: &[u8], len: usize) -> Vec<u8> {
    if !inline.is_empty() {
        assert!(inline.len() <= IN_CAPSULE as usize);
        return inline.to_vec();
    }
    p.r2t(sqe.cid, 0x77, 0, len as u32);
    let mut got = vec![0u8; len];
    loop {
        let pdu = p.read_pdu().expect("H2CData");
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
    io_one(p, t, sqhd, sqe, inline);
    if let Some(h) = held {
        io_one(p, t, sqhd, &h, &[]);
    }
}

fn io_one(p: &mut Peer, t: &Target, sqhd: u16, sqe: &SubmissionEntry, inline: &[u8]) {
    let slba = sqe.cdw10 as u64 | (sqe.cdw11 as u64) << 32;
    let nlb = (sqe.cdw12 & 0xffff) as usize + 1;
    let range = slba as usize * 512..(slba as usize + nlb) * 512;
    let sgl = SglDescriptor::from_dptr(sqe.prp1, sqe.prp2);
    let respond = |p: &mut Peer, s: Status| p.respond_sqhd(sqe.cid, s, 0, 0, sqhd);
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
            let data = receive(p, sqe, inline, range.len());
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
            let data = receive(p, sqe, inline, ranges * 16);
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

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// The same program as over PCIe: attach, identify, logs, features, an I/O queue pair
/// with reads, writes (in the capsule and through R2T), compare, write zeroes, deallocate,
/// flush, split transfers and a batch in flight.
fn exercise(trid: &str, t: &Target) {
    let ctrl = Controller::attach(trid).unwrap();
    assert_eq!(ctrl.identify().model(), "E2E TCP TARGET");
    assert_eq!(ctrl.name(), format!("tcp:{}", trid_addr(trid)));
    assert_eq!(ctrl.max_transfer(), 128 * 1024);
    let ns = ctrl.namespace(1).unwrap();
    assert_eq!((ns.blocks(), ns.block_size()), (BLOCKS, 512));
    assert_eq!(ctrl.identify_controller().unwrap().cntlid, 5);
    assert_eq!(
        ctrl.get_features(fid::KEEP_ALIVE_TIMER, FeatureSelect::Current, 0, 0)
            .unwrap(),
        5000
    );
    let log = ctrl.get_log_page(0x02, u32::MAX, 512, 0).unwrap();
    assert_eq!(&log[..4], &[1, 2, 3, 4]);
    assert!(ctrl.status_register().rdy());
    let mut qp = ctrl.alloc_io_queue(QueueOptions::new(64)).unwrap();
    assert_eq!(qp.qid(), 1);
    assert_eq!(qp.data_pointer(), crate::DataPointer::Sgl);

    let mut buf = ctrl.alloc_dma(1 << 20).unwrap();
    // 4 KiB: in the capsule. 64 KiB: R2T and H2CData.
    for (lba, len, seed) in [(8u64, 4096usize, 1u8), (100, 65536, 2)] {
        buf.as_mut_slice()[..len].copy_from_slice(&pattern(seed, len));
        qp.write_sync(1, lba, buf.slice(0..len).unwrap()).unwrap();
        let disk = t.disk.lock().unwrap();
        assert_eq!(disk[lba as usize * 512..][..len], pattern(seed, len)[..]);
    }
    buf.as_mut_slice().fill(0);
    qp.read_sync(1, 100, buf.slice(0..65536).unwrap()).unwrap();
    assert_eq!(buf.as_slice()[..65536], pattern(2, 65536)[..]);
    // Compare: equal, then not.
    qp.compare_sync(1, 100, buf.slice(0..65536).unwrap())
        .unwrap();
    buf.as_mut_slice()[7] ^= 1;
    let e = qp
        .compare_sync(1, 100, buf.slice(0..65536).unwrap())
        .unwrap_err();
    assert!(
        matches!(e, Error::Nvme { status, .. } if status.is_media(MediaErrorStatus::CompareFailure)),
        "{e}"
    );
    // 1 MiB: eight commands of MDTS each, one request.
    {
        let mut disk = t.disk.lock().unwrap();
        disk[..1 << 20].copy_from_slice(&pattern(3, 1 << 20));
    }
    buf.as_mut_slice().fill(0);
    qp.read_sync(1, 0, buf.slice(0..1 << 20).unwrap()).unwrap();
    assert!(buf.as_slice() == pattern(3, 1 << 20), "1 MiB split read");
    // Write zeroes, deallocate, flush.
    qp.write_zeroes_sync(1, 0, 16, Default::default()).unwrap();
    qp.deallocate(1, 16, 8, 9).unwrap();
    let mut results = Vec::new();
    qp.drain(Duration::from_secs(10), |tok, r| {
        results.push((tok, r.is_ok()))
    })
    .unwrap();
    assert_eq!(results, [(9, true)]);
    qp.flush_sync(1).unwrap();
    {
        let disk = t.disk.lock().unwrap();
        assert!(
            disk[..24 * 512].iter().all(|&b| b == 0),
            "zeroed blocks 0..24"
        );
        assert_ne!(disk[24 * 512], 0, "block 24 left as it was");
    }
    // A batch in flight: 32 reads of 4 KiB, completions matched by token.
    let mut done = [false; 32];
    for i in 0..32u64 {
        let r = buf
            .slice(i as usize * 4096..(i as usize + 1) * 4096)
            .unwrap();
        qp.read(1, 256 + i * 8, r, i).unwrap();
    }
    qp.drain(Duration::from_secs(10), |tok, r| {
        r.unwrap();
        done[tok as usize] = true;
    })
    .unwrap();
    assert!(done.iter().all(|&d| d));
    let disk = t.disk.lock().unwrap().clone();
    assert!(buf.as_slice()[..128 * 1024] == disk[256 * 512..256 * 512 + 128 * 1024]);
    assert_eq!(qp.stats().bad_sq_heads, 0, "SQHD followed");
    drop(qp);
    drop(ctrl);
    let connects = t.connects.lock().unwrap().clone();
    assert_eq!(
        connects[0],
        (0, 31, 0xffff),
        "admin queue: dynamic controller"
    );
    assert_eq!(
        connects[1],
        (1, 63, 5),
        "I/O queue 1: the admin's controller"
    );
    assert!(Cc(*t.cc.lock().unwrap()).shn() != 0, "shut down at detach");
}

fn trid_addr(trid: &str) -> String {
    match TransportId::parse(trid).unwrap().kind {
        crate::TransportKind::Tcp(o) => o.addr.to_string(),
        k => panic!("{k:?}"),
    }
}

#[test]
fn a_pcie_program_runs_unchanged_over_tcp() {
    let (trid, t) = start(Config::default());
    exercise(&trid, &t);
}

#[test]
fn with_digests_alignment_small_h2c_pdus_and_success_flags() {
    let (trid, t) = start(Config {
        digests: digest::HEADER | digest::DATA,
        cpda: 1,
        max_h2c: 4096,
        success_flag: true,
        ..Default::default()
    });
    exercise(&format!("{trid} hdgst:1 ddgst:1"), &t);
}

#[test]
fn completions_out_of_order_finish_their_own_requests() {
    let (trid, t) = start(Config {
        swap_reads: true,
        ..Default::default()
    });
    {
        let mut disk = t.disk.lock().unwrap();
        disk[..65536].copy_from_slice(&pattern(5, 65536));
    }
    let ctrl = Controller::attach(&trid).unwrap();
    let mut qp = ctrl.alloc_io_queue(QueueOptions::new(16)).unwrap();
    let mut buf = ctrl.alloc_dma(65536).unwrap();
    for round in 0..4u64 {
        for i in 0..2u64 {
            let at = (round * 2 + i) as usize * 8192;
            qp.read(
                1,
                at as u64 / 512,
                buf.slice(at..at + 8192).unwrap(),
                at as u64,
            )
            .unwrap();
        }
        let mut order = Vec::new();
        qp.drain(Duration::from_secs(10), |tok, r| {
            r.unwrap();
            order.push(tok);
        })
        .unwrap();
        let first = round * 2 * 8192;
        assert_eq!(
            order,
            [first + 8192, first],
            "the second read completes first"
        );
    }
    assert!(buf.as_slice() == pattern(5, 65536));
}

#[test]
fn a_dropped_connection_fails_outstanding_io_naming_it() {
    let (trid, _t) = start(Config {
        close_io_after: Some(3),
        ..Default::default()
    });
    let ctrl = Controller::attach(&trid).unwrap();
    let mut qp = ctrl.alloc_io_queue(QueueOptions::new(16)).unwrap();
    let mut buf = ctrl.alloc_dma(4096).unwrap();
    qp.flush_sync(1).unwrap();
    qp.flush_sync(1).unwrap();
    // The third command is taken and the connection closed: both outstanding fail.
    qp.read(1, 0, buf.slice(0..512).unwrap(), 1).unwrap();
    qp.read(1, 1, buf.slice(512..1024).unwrap(), 2).unwrap();
    let mut failed = Vec::new();
    qp.drain(Duration::from_secs(10), |tok, r| {
        failed.push((tok, r.unwrap_err().to_string()))
    })
    .unwrap();
    failed.sort();
    assert_eq!(failed.len(), 2, "{failed:?}");
    for (tok, e) in &failed {
        assert!([1, 2].contains(tok));
        assert!(e.contains("closed the connection"), "{e}");
    }
    let e = qp.flush_sync(1).unwrap_err().to_string();
    assert!(e.contains("closed the connection"), "{e}");
    assert_eq!(qp.outstanding(), 0);
}

#[test]
fn c2h_data_outside_the_command_fails_the_queue() {
    let (trid, _t) = start(Config {
        c2h_out_of_range: true,
        ..Default::default()
    });
    let ctrl = Controller::attach(&trid).unwrap();
    let mut qp = ctrl.alloc_io_queue(QueueOptions::new(16)).unwrap();
    let mut buf = ctrl.alloc_dma(4096).unwrap();
    buf.as_mut_slice().fill(0x5a);
    let e = qp.read_sync(1, 0, buf.slice(0..1024).unwrap()).unwrap_err();
    let m = e.to_string();
    assert!(m.contains("C2HData") && m.contains("offset 1024"), "{m}");
    assert!(buf.as_slice().iter().all(|&b| b == 0x5a), "nothing written");
}

#[test]
fn what_tcp_does_not_do_is_refused_clearly() {
    let (trid, _t) = start(Config::default());
    let parsed = TransportId::parse(&trid).unwrap();
    let opts = AttachOptions {
        group: Some(4_000_000_011),
        ..Default::default()
    };
    let e = Controller::attach_with(&parsed, &opts).unwrap_err();
    assert!(
        e.to_string()
            .contains("groups (-i) are not supported over NVMe/TCP"),
        "{e}"
    );
    let ctrl = Controller::attach(&trid).unwrap();
    let e = ctrl.reset().unwrap_err().to_string();
    assert!(e.contains("not supported over TCP"), "{e}");
    assert!(ctrl.reset_function().is_err());
    let mut qp = ctrl
        .alloc_io_queue(QueueOptions::new(8).with_interrupts(true))
        .unwrap();
    assert!(qp.interrupt_fallback().unwrap().contains("polled"));
    let e = qp.set_data_pointer(crate::DataPointer::Prp).unwrap_err();
    assert!(e.to_string().contains("SGLs"), "{e}");
    // The same attach options with PRPs are refused when the queue is made.
    let opts = AttachOptions {
        data_pointer: crate::DataPointer::Prp,
        ..Default::default()
    };
    let ctrl = Controller::attach_with(&parsed, &opts).unwrap();
    let e = ctrl.alloc_io_queue(QueueOptions::new(8)).unwrap_err();
    assert!(e.to_string().contains("SGLs"), "{e}");
}
