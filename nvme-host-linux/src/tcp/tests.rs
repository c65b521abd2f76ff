//! The host side against a scripted controller over a socket pair: framing with and
//! without digests and data alignment, C2HData and R2T/H2CData transfers, Connect
//! rejections, corrupt digests, terminations and keep-alive expiry.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use nvme_regs::entry::SubmissionEntry;
use nvme_regs::fabrics::{
    fctype_of, ConnectCommand, ConnectData, DiscoveryLogEntry, DiscoveryLogHeader,
    FabricsCommandType, InvalidParameter, PropertyCommand, DISCOVERY_NQN,
};
use nvme_regs::features::{fid, FeatureSelect};
use nvme_regs::identify::{fill_ascii, IdentifyController};
use nvme_regs::registers::{Cap, Cc, Vs};
use nvme_regs::sgl::SglDescriptor;
use nvme_regs::status::{GenericStatus, StatusCodeType};
use nvme_regs::tcp::{
    digest, CapsuleResp, CommonHeader, DataHeader, IcReq, IcResp, PduFlags, PduType, TermReq,
    SGL_ID_IN_CAPSULE, SGL_ID_TRANSPORT_DATA_BLOCK,
};
use nvme_regs::{CompletionEntry, Status};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

use super::scripted::Peer;
use super::*;
use crate::trid::TcpOptions;
use crate::Error;

const SUBNQN: &str = "nqn.2014-08.org.example:scripted";
const HOSTNQN: &str = "nqn.2014-08.org.example:host1";

/// What the scripted controller does with a command beyond its defaults.
enum Hook {
    /// The default handling.
    Default,
    /// The hook answered.
    Handled,
    /// Close the connection.
    Close,
}

/// The scripted controller's state and its record of what the host sent.
struct Target {
    cc: u32,
    kato: u32,
    genctr: Vec<u64>,
    entries: Vec<DiscoveryLogEntry>,
    connect: Option<(ConnectCommand, ConnectData)>,
    keep_alives: mpsc::Sender<()>,
}

fn identify_data() -> Vec<u8> {
    let mut id = IdentifyController::new_zeroed();
    fill_ascii(&mut id.mn, "SCRIPTED TCP CTRL");
    fill_ascii(&mut id.sn, "TCP0001");
    id.cntlid = 5;
    id.as_bytes().to_vec()
}

/// The default answers: Connect, properties (RDY follows EN, SHST follows SHN), Identify,
/// KATO, Keep Alive, Set Features, the Discovery Log Page.
fn default_answer(p: &mut Peer, t: &mut Target, sqe: &SubmissionEntry, data: &[u8]) {
    let ok = Status::generic(GenericStatus::Success);
    if sqe.opcode == 0x7f {
        match fctype_of(sqe) {
            x if x == FabricsCommandType::Connect as u8 => {
                let d = ConnectData::read_from_bytes(data).expect("1024 bytes of Connect data");
                t.connect = Some((ConnectCommand::from_entry(sqe), d));
                p.respond(sqe.cid, ok, 5, 0);
            }
            x if x == FabricsCommandType::PropertyGet as u8 => {
                let pc = PropertyCommand::from_entry(sqe);
                let v: u64 = match pc.offset {
                    0 => Cap::new(31, true, 1, 0, false, 1, 0, 0).0,
                    8 => Vs::new(1, 3, 0).0 as u64,
                    0x14 => t.cc as u64,
                    0x1c => {
                        let cc = Cc(t.cc);
                        (cc.en() as u64) | if cc.shn() != 0 { 2 << 2 } else { 0 }
                    }
                    o => panic!("property {o:#x}"),
                };
                p.respond(sqe.cid, ok, v as u32, (v >> 32) as u32);
            }
            x if x == FabricsCommandType::PropertySet as u8 => {
                t.cc = PropertyCommand::from_entry(sqe).value as u32;
                p.respond(sqe.cid, ok, 0, 0);
            }
            x => panic!("fabrics command {x:#x}"),
        }
        return;
    }
    match sqe.opcode {
        0x06 => p.c2h(sqe.cid, &identify_data(), 3000, false, false),
        0x0a if sqe.cdw10 & 0xff == fid::KEEP_ALIVE_TIMER as u32 => {
            p.respond(sqe.cid, ok, t.kato, 0)
        }
        0x0a => p.respond(sqe.cid, ok, 0x1234, 0),
        0x09 => p.respond(sqe.cid, ok, sqe.cdw11, 0),
        0x18 => {
            let _ = t.keep_alives.send(());
            p.respond(sqe.cid, ok, 0, 0)
        }
        0x02 if sqe.cdw10 & 0xff == 0x70 => {
            let off = (sqe.cdw12 as u64 | (sqe.cdw13 as u64) << 32) as usize;
            let len = (((sqe.cdw10 >> 16) | (sqe.cdw11 & 0xffff) << 16) as usize + 1) * 4;
            let genctr = if t.genctr.len() > 1 {
                t.genctr.remove(0)
            } else {
                t.genctr[0]
            };
            let mut log = DiscoveryLogHeader {
                genctr,
                numrec: t.entries.len() as u64,
                ..Default::default()
            }
            .as_bytes()
            .to_vec();
            for e in &t.entries {
                log.extend_from_slice(e.as_bytes());
            }
            log.resize(off + len, 0);
            // C2HData with SUCCESS: no response capsule.
            p.c2h(sqe.cid, &log[off..off + len], 4096, true, false);
        }
        o => panic!("admin opcode {o:#x}"),
    }
}

/// Runs a scripted controller on `s` until the host closes; returns what it recorded.
fn spawn_target(
    s: UnixStream,
    icresp: IcResp,
    mut t: Target,
    mut hook: impl FnMut(&mut Peer, &mut Target, &SubmissionEntry, &[u8]) -> Hook + Send + 'static,
) -> thread::JoinHandle<Target> {
    thread::spawn(move || {
        let mut p = Peer {
            s: Box::new(s),
            hd: false,
            dd: false,
            align: icresp.data_alignment(),
        };
        let Some(req) = p.read_pdu() else { return t };
        assert_eq!(req.ch.kind(), Some(PduType::IcReq));
        let req = IcReq::read_from_bytes(&req.hdr).unwrap();
        assert_eq!((req.pfv, req.hpda), (0, 0));
        let _ = p.s.write_all(icresp.as_bytes());
        p.hd = icresp.digest & digest::HEADER != 0;
        p.dd = icresp.digest & digest::DATA != 0;
        while let Some(pdu) = p.read_pdu() {
            if pdu.ch.kind() == Some(PduType::H2cTermReq) {
                break;
            }
            assert_eq!(pdu.ch.kind(), Some(PduType::CapsuleCmd));
            let sqe = SubmissionEntry::read_from_bytes(&pdu.hdr[8..72]).unwrap();
            assert_eq!(sqe.flags & 0xc0, 0x40, "PSDT: SGL");
            let sgl = SglDescriptor::from_dptr(sqe.prp1, sqe.prp2);
            let (id, len) = (sgl.id, sgl.length);
            if !pdu.data.is_empty() {
                assert_eq!((id, len as usize), (SGL_ID_IN_CAPSULE, pdu.data.len()));
            } else if len != 0 {
                assert_eq!(id, SGL_ID_TRANSPORT_DATA_BLOCK);
            }
            match hook(&mut p, &mut t, &sqe, &pdu.data) {
                Hook::Default => default_answer(&mut p, &mut t, &sqe, &pdu.data),
                Hook::Handled => {}
                Hook::Close => break,
            }
        }
        t
    })
}

fn target() -> (Target, mpsc::Receiver<()>) {
    let (tx, rx) = mpsc::channel();
    (
        Target {
            cc: 0,
            kato: 0,
            genctr: vec![1],
            entries: Vec::new(),
            connect: None,
            keep_alives: tx,
        },
        rx,
    )
}

fn tcp_options(hd: bool, dd: bool) -> TcpOptions {
    TcpOptions {
        addr: "192.0.2.1:4420".parse().unwrap(),
        subnqn: Some(SUBNQN.into()),
        hostnqn: Some(HOSTNQN.into()),
        header_digest: hd,
        data_digest: dd,
    }
}

fn options() -> TcpControllerOptions {
    TcpControllerOptions {
        kato_ms: 5000,
        timeout: Duration::from_secs(20),
        host: Some(HostIdentity {
            hostnqn: "ignored: the trid's hostnqn wins".into(),
            hostid: [7; 16],
        }),
        keep_alive_thread: false,
    }
}

fn connect(
    hd: bool,
    dd: bool,
    icresp: IcResp,
    t: Target,
    hook: impl FnMut(&mut Peer, &mut Target, &SubmissionEntry, &[u8]) -> Hook + Send + 'static,
) -> (crate::Result<TcpController>, thread::JoinHandle<Target>) {
    let (a, b) = UnixStream::pair().unwrap();
    let h = spawn_target(b, icresp, t, hook);
    let o = tcp_options(hd, dd);
    let c = TcpController::over_stream(Box::new(a), &o, SUBNQN, &options());
    (c, h)
}

#[test]
fn connect_enable_identify_and_features_with_digests_and_alignment() {
    let (t, _ka) = target();
    let icresp = IcResp::new(1, digest::HEADER | digest::DATA, 8192);
    let (c, h) = connect(true, true, icresp, t, |_, _, _, _| Hook::Default);
    let c = c.unwrap();
    assert_eq!(c.cntlid(), 5);
    let n = c.negotiated();
    assert!(n.header_digest && n.data_digest);
    assert_eq!((n.data_alignment, n.max_h2c_data), (8, 8192));
    assert_eq!(c.identify().model(), "SCRIPTED TCP CTRL");
    assert_eq!(c.version(), Vs::new(1, 3, 0));
    assert_eq!(c.cap().mqes(), 31);
    assert!(c.csts().unwrap().rdy());
    assert_eq!(
        c.get_features(0x07, FeatureSelect::Current, 0, 0).unwrap(),
        0x1234
    );
    assert_eq!(
        c.set_features(0x07, 0, 0x0003_0003, false).unwrap(),
        0x0003_0003
    );
    c.keep_alive().unwrap();
    assert_eq!(c.hostnqn(), HOSTNQN);
    drop(c);
    let t = h.join().unwrap();
    let (cmd, data) = t.connect.expect("Connect seen");
    assert_eq!((cmd.qid, cmd.sqsize, cmd.kato), (0, 31, 5000));
    assert_eq!(data.cntlid, 0xffff);
    assert_eq!(data.hostid, [7; 16]);
    assert_eq!(nvme_regs::identify::trim_ascii(&data.subnqn), SUBNQN);
    assert_eq!(nvme_regs::identify::trim_ascii(&data.hostnqn), HOSTNQN);
    let cc = Cc(t.cc);
    assert!(cc.en());
    assert_eq!((cc.iosqes(), cc.iocqes(), cc.css()), (6, 4, 0));
    assert_eq!(cc.shn(), 1, "dropping shuts the controller down");
}

fn entry(subtype: u8, subnqn: &str) -> DiscoveryLogEntry {
    let mut e = DiscoveryLogEntry {
        trtype: 3,
        adrfam: 1,
        subtype,
        portid: 1,
        cntlid: 0xffff,
        ..Default::default()
    };
    fill_ascii(&mut e.trsvcid, "4420");
    fill_ascii(&mut e.traddr, "127.0.0.1");
    e.subnqn[..subnqn.len()].copy_from_slice(subnqn.as_bytes());
    e
}

#[test]
fn discovery_log_is_read_until_its_generation_holds() {
    let (mut t, _ka) = target();
    t.entries = vec![
        entry(3, DISCOVERY_NQN),
        entry(2, SUBNQN),
        entry(2, "nqn.x:two"),
    ];
    // The first header says 4, the re-read 5 (changed meanwhile), then 5 holds.
    t.genctr = vec![4, 5, 5];
    let (a, b) = UnixStream::pair().unwrap();
    let h = spawn_target(b, IcResp::new(0, 0, 4096), t, |_, _, _, _| Hook::Default);
    let mut o = tcp_options(false, false);
    o.subnqn = None;
    let c = TcpController::over_stream(Box::new(a), &o, DISCOVERY_NQN, &options()).unwrap();
    let log = c.discovery_log().unwrap();
    assert_eq!(log.genctr, 5);
    assert_eq!(log.entries.len(), 3);
    assert_eq!(log.entries[1].subnqn(), SUBNQN);
    assert_eq!(log.entries[2].subnqn(), "nqn.x:two");
    assert_eq!(log.entries[0].trsvcid(), "4420");
    drop(c);
    let t = h.join().unwrap();
    let (_, data) = t.connect.unwrap();
    assert_eq!(nvme_regs::identify::trim_ascii(&data.subnqn), DISCOVERY_NQN);
}

fn connect_fails_with(status: Status, dw0: u32) -> String {
    let (t, _ka) = target();
    let (c, h) = connect(
        false,
        false,
        IcResp::new(0, 0, 4096),
        t,
        move |p, _, sqe, _| {
            if sqe.opcode == 0x7f && fctype_of(sqe) == 1 {
                p.respond(sqe.cid, status, dw0, 0);
                return Hook::Handled;
            }
            Hook::Default
        },
    );
    let e = c.unwrap_err();
    h.join().unwrap();
    e.to_string()
}

#[test]
fn connect_rejections_name_the_reason() {
    let fab = |sc| Status::new(StatusCodeType::CommandSpecific, sc).with_dnr();
    let subnqn_bad = InvalidParameter {
        offset: 256,
        in_data: true,
    }
    .to_dword();
    let e = connect_fails_with(fab(0x82), subnqn_bad);
    assert!(e.contains("no such subsystem") && e.contains(SUBNQN), "{e}");
    let host_bad = InvalidParameter {
        offset: 512,
        in_data: true,
    }
    .to_dword();
    let e = connect_fails_with(fab(0x84), host_bad);
    assert!(
        e.contains("host") && e.contains(HOSTNQN) && e.contains("not allowed"),
        "{e}"
    );
    let e = connect_fails_with(
        fab(0x82),
        InvalidParameter {
            offset: 44,
            in_data: false,
        }
        .to_dword(),
    );
    assert!(e.contains("queue size (SQSIZE)"), "{e}");
    let e = connect_fails_with(fab(0x81), 0);
    assert!(e.contains("Connect rejected: Controller Busy"), "{e}");
    let e = connect_fails_with(Status::generic(GenericStatus::InvalidField), 0);
    assert!(
        e.contains("Connect rejected") && e.contains("Invalid Field"),
        "{e}"
    );
}

#[test]
fn bad_header_digest_is_reported() {
    let (t, _ka) = target();
    let icresp = IcResp::new(0, digest::HEADER, 4096);
    let (c, h) = connect(true, false, icresp, t, |p, _, sqe, _| {
        if sqe.opcode == 0x18 {
            let r = CapsuleResp {
                cqe: CompletionEntry {
                    cid: sqe.cid,
                    ..Default::default()
                },
                ..Default::default()
            };
            p.send(
                PduType::CapsuleResp,
                PduFlags::empty(),
                r.as_bytes(),
                &[],
                (true, false),
            );
            return Hook::Handled;
        }
        Hook::Default
    });
    let c = c.unwrap();
    let e = c.keep_alive().unwrap_err();
    assert!(
        matches!(
            e,
            Error::Tcp(TcpError::DigestMismatch {
                kind: DigestKind::Header,
                pdu: "CapsuleResp",
                ..
            })
        ),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .contains("header digest mismatch on a CapsuleResp PDU"),
        "{e}"
    );
    drop(c);
    h.join().unwrap();
}

#[test]
fn bad_data_digest_is_reported() {
    let (t, _ka) = target();
    let icresp = IcResp::new(0, digest::DATA, 4096);
    let (c, h) = connect(false, true, icresp, t, |p, _, sqe, _| {
        if sqe.opcode == 0x06 && sqe.cdw10 == 0 {
            p.c2h(sqe.cid, &[0u8; 4096], 4096, false, true);
            return Hook::Handled;
        }
        Hook::Default
    });
    let c = c.unwrap();
    let e = c.identify_namespace(1).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Tcp(TcpError::DigestMismatch {
                kind: DigestKind::Data,
                pdu: "C2HData",
                ..
            })
        ),
        "{e:?}"
    );
    drop(c);
    h.join().unwrap();
}

#[test]
fn declined_digest_and_bad_icresp() {
    let (t, _ka) = target();
    let (c, h) = connect(true, false, IcResp::new(0, 0, 4096), t, |_, _, _, _| {
        Hook::Default
    });
    let e = c.unwrap_err();
    assert!(
        e.to_string().contains("does not support header digests"),
        "{e}"
    );
    h.join().unwrap();
    let (t, _ka) = target();
    let (c, h) = connect(false, false, IcResp::new(0, 0, 1000), t, |_, _, _, _| {
        Hook::Default
    });
    let e = c.unwrap_err();
    assert!(e.to_string().contains("MAXH2CDATA 1000"), "{e}");
    h.join().unwrap();
}

#[test]
fn large_writes_answer_r2ts_and_small_ones_go_in_the_capsule() {
    let (t, _ka) = target();
    let (tx, rx) = mpsc::channel::<(Vec<u8>, Vec<(u16, u32, u8)>)>();
    let icresp = IcResp::new(0, digest::DATA, 4096);
    let (c, h) = connect(false, true, icresp, t, move |p, _, sqe, data| {
        if sqe.opcode != 0x09 {
            return Hook::Default;
        }
        let sgl = SglDescriptor::from_dptr(sqe.prp1, sqe.prp2);
        let (id, len) = (sgl.id, sgl.length);
        if id == SGL_ID_IN_CAPSULE {
            tx.send((data.to_vec(), Vec::new())).unwrap();
        } else {
            // Ask in two R2Ts: 10000 bytes, then the rest.
            let mut got = vec![0u8; len as usize];
            let mut pdus = Vec::new();
            for (ttag, off, n) in [(3u16, 0u32, 10000u32), (4, 10000, len - 10000)] {
                p.r2t(sqe.cid, ttag, off, n);
                loop {
                    let pdu = p.read_pdu().unwrap();
                    assert_eq!(pdu.ch.kind(), Some(PduType::H2cData));
                    let d = DataHeader::read_from_bytes(&pdu.hdr).unwrap();
                    assert_eq!((d.cccid, d.ttag), (sqe.cid, ttag));
                    assert!(d.datal <= 4096, "MAXH2CDATA honoured");
                    got[d.datao as usize..(d.datao + d.datal) as usize].copy_from_slice(&pdu.data);
                    pdus.push((d.ttag, d.datal, pdu.ch.flags));
                    if pdu.ch.flags().contains(PduFlags::LAST_PDU) {
                        break;
                    }
                }
            }
            tx.send((got, pdus)).unwrap();
        }
        p.respond(sqe.cid, Status::generic(GenericStatus::Success), 0, 0);
        Hook::Handled
    });
    let c = c.unwrap();
    let big: Vec<u8> = (0..20000u32).map(|i| (i % 251) as u8).collect();
    let sqe = nvme_core::Command::set_features(0x80, 0, 0, false).0;
    c.admin(sqe, Data::FromHost(&big)).unwrap();
    let (got, pdus) = rx.recv().unwrap();
    assert_eq!(got, big);
    // 10000 = 4096 + 4096 + 1808, then 10000 again; LAST on the end of each R2T.
    let lens: Vec<u32> = pdus.iter().map(|p| p.1).collect();
    assert_eq!(lens, [4096, 4096, 1808, 4096, 4096, 1808]);
    let lasts: Vec<bool> = pdus
        .iter()
        .map(|p| p.2 & PduFlags::LAST_PDU.bits() != 0)
        .collect();
    assert_eq!(lasts, [false, false, true, false, false, true]);
    assert!(pdus.iter().all(|p| p.2 & PduFlags::DDGSTF.bits() != 0));
    let small = [0xa5u8; 512];
    c.admin(sqe, Data::FromHost(&small)).unwrap();
    let (got, pdus) = rx.recv().unwrap();
    assert_eq!((got.as_slice(), pdus.len()), (&small[..], 0));
    drop(c);
    h.join().unwrap();
}

#[test]
fn out_of_range_c2h_data_is_a_protocol_error_and_terminates() {
    let (t, _ka) = target();
    let (c, h) = connect(false, false, IcResp::new(0, 0, 4096), t, |p, _, sqe, _| {
        if sqe.opcode == 0x02 {
            let hd = DataHeader {
                cccid: sqe.cid,
                datao: 4096,
                datal: 512,
                ..Default::default()
            };
            p.send(
                PduType::C2hData,
                PduFlags::LAST_PDU,
                hd.as_bytes(),
                &[0; 512],
                (false, false),
            );
            // The host answers with an H2CTermReq (PDU Sequence Error).
            let pdu = p.read_pdu().unwrap();
            assert_eq!(pdu.ch.kind(), Some(PduType::H2cTermReq));
            assert_eq!(TermReq::read_from_bytes(&pdu.hdr).unwrap().fes, 2);
            return Hook::Close;
        }
        Hook::Default
    });
    let c = c.unwrap();
    let mut buf = [0u8; 512];
    let e = c.get_log_page(2, u32::MAX, 0, &mut buf).unwrap_err();
    assert!(
        e.to_string()
            .contains("C2HData at offset 4096 with 512 bytes"),
        "{e}"
    );
    drop(c);
    h.join().unwrap();
}

#[test]
fn controller_termination_is_reported() {
    let (t, _ka) = target();
    let (c, h) = connect(false, false, IcResp::new(0, 0, 4096), t, |p, _, sqe, _| {
        if sqe.opcode == 0x18 {
            let t = TermReq {
                ch: CommonHeader::new(PduType::C2hTermReq, PduFlags::empty(), 0, 24 + 72),
                fes: 1,
                fei: 4u32.to_le_bytes(),
                ..Default::default()
            };
            let mut b = t.as_bytes().to_vec();
            b.extend_from_slice(&[0u8; 72]);
            p.s.write_all(&b).unwrap();
            return Hook::Close;
        }
        Hook::Default
    });
    let c = c.unwrap();
    let e = c.keep_alive().unwrap_err().to_string();
    assert!(
        e.contains("terminated the connection: Invalid PDU Header Field (FES 0x1, FEI 0x4)"),
        "{e}"
    );
    drop(c);
    h.join().unwrap();
}

#[test]
fn keep_alive_expiry_and_the_keep_alive_thread() {
    // A controller that closes the association once set up: the host had been idle for
    // longer than the KATO, so the error says keep-alive expired.
    let (mut t, _ka) = target();
    t.kato = 50;
    let (c, h) = connect(
        false,
        false,
        IcResp::new(0, 0, 4096),
        t,
        |p, t, sqe, data| {
            if sqe.opcode == 0x0a && sqe.cdw10 & 0xff == fid::KEEP_ALIVE_TIMER as u32 {
                default_answer(p, t, sqe, data);
                return Hook::Close;
            }
            Hook::Default
        },
    );
    let c = c.unwrap();
    assert_eq!(c.kato_ms(), 50);
    h.join().unwrap();
    thread::sleep(Duration::from_millis(120));
    let e = c.keep_alive().unwrap_err();
    assert!(
        matches!(
            e,
            Error::Tcp(TcpError::KeepAliveExpired { kato_ms: 50, .. })
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("keep-alive expired"), "{e}");
    drop(c);

    // With the thread, Keep Alive commands arrive without the caller sending any.
    let (mut t, ka) = target();
    t.kato = 40;
    let (a, b) = UnixStream::pair().unwrap();
    let h = spawn_target(b, IcResp::new(0, 0, 4096), t, |_, _, _, _| Hook::Default);
    let opts = TcpControllerOptions {
        keep_alive_thread: true,
        ..options()
    };
    let c =
        TcpController::over_stream(Box::new(a), &tcp_options(false, false), SUBNQN, &opts).unwrap();
    ka.recv_timeout(Duration::from_secs(30))
        .expect("a Keep Alive from the thread");
    drop(c);
    h.join().unwrap();
}

#[test]
fn host_identity_is_an_nqn_with_its_uuid() {
    let id = controller::parse_uuid("0123456789abcdef0123456789ABCDEF").unwrap();
    assert_eq!(id[0], 0x01);
    assert_eq!(id[15], 0xef);
    assert_eq!(
        controller::parse_uuid("01234567-89ab-cdef-0123-456789abcdef"),
        Some(id)
    );
    assert_eq!(controller::parse_uuid("0123"), None);
    assert_eq!(
        controller::parse_uuid("g123456789abcdef0123456789abcdef"),
        None
    );
    // nvme-cli's files win (they need not agree with each other: Debian's package writes
    // both at random); then /etc/machine-id; then the random identifier.
    let nqn = "nqn.2014-08.org.nvmexpress:uuid:13f2a6f7-5a31-4ad7-9233-82b8a15d5494\n";
    let h = HostIdentity::from_files(
        Some(nqn),
        Some("77a76e60-4a2a-4fb8-b88f-d0813270e3bc\n"),
        Some("0123456789abcdef0123456789abcdef"),
        [9; 16],
    );
    assert_eq!(h.hostnqn, nqn.trim());
    assert_eq!(h.hostid[0], 0x77);
    let h = HostIdentity::from_files(
        None,
        None,
        Some("0123456789abcdef0123456789abcdef\n"),
        [9; 16],
    );
    assert_eq!(h.hostid, id);
    assert_eq!(
        h.hostnqn,
        "nqn.2014-08.org.nvmexpress:uuid:01234567-89ab-cdef-0123-456789abcdef"
    );
    let h = HostIdentity::from_files(Some(""), Some("junk"), None, [9; 16]);
    assert_eq!(h.hostid, [9; 16]);
    assert!(
        h.hostnqn
            .ends_with(":uuid:09090909-0909-0909-0909-090909090909"),
        "{}",
        h.hostnqn
    );
    assert!(HostIdentity::of_this_host().hostnqn.starts_with("nqn."));
}

#[test]
fn a_failed_keep_alive_is_reported_by_the_next_command() {
    let (mut t, ka) = target();
    t.kato = 40;
    let (a, b) = UnixStream::pair().unwrap();
    let h = spawn_target(b, IcResp::new(0, 0, 4096), t, |_, t, sqe, _| {
        if sqe.opcode == 0x18 {
            // The controller goes away instead of answering the thread's Keep Alive.
            let _ = t.keep_alives.send(());
            return Hook::Close;
        }
        Hook::Default
    });
    let opts = TcpControllerOptions {
        keep_alive_thread: true,
        ..options()
    };
    let c =
        TcpController::over_stream(Box::new(a), &tcp_options(false, false), SUBNQN, &opts).unwrap();
    ka.recv_timeout(Duration::from_secs(30))
        .expect("a Keep Alive from the thread");
    h.join().unwrap();
    // The thread's Keep Alive may still be waiting for its answer: the queue's lock orders
    // it before this command, which then names it as the first failure.
    let e = c.identify_controller().unwrap_err().to_string();
    assert!(
        e.contains("failed earlier")
            && e.contains("Keep Alive (from the keep-alive thread)")
            && e.contains("closed the connection"),
        "{e}"
    );
}
