//! The NVMe/TCP host fed arbitrary bytes as everything the controller sends.
//!
//! The first byte chooses header and data digests and the data alignment (CPDA 0-3) the
//! host asks for and the controller grants; with the second byte odd, a well-formed
//! connection set-up comes first (ICResp, Connect, CAP, VS, CC, CSTS ready, Identify
//! Controller in C2HData, KATO), framed with those digests, so that the input's own bytes
//! reach the admin commands that follow: the Discovery Log Page read, Identify Namespace,
//! a SMART log, a 20000-byte write that goes through R2T/H2CData, Keep Alive, and the
//! shutdown on drop. With the second byte even the input's bytes are the whole stream from
//! ICResp on. What the host sends is discarded. Nothing may panic; every failure must be an
//! error.

use std::io::{Read, Write};
use std::time::Duration;

use nvme_host_linux::regs::entry::CompletionEntry;
use nvme_host_linux::regs::fabrics::DISCOVERY_NQN;
use nvme_host_linux::regs::identify::IdentifyController;
use nvme_host_linux::regs::tcp::{digest, CapsuleResp, DataHeader, IcResp, PduFlags, PduType};
use nvme_host_linux::tcp::{
    frame, Data, HostIdentity, Stream, TcpController, TcpControllerOptions,
};
use nvme_host_linux::TcpOptions;
use zerocopy::{FromZeros, IntoBytes};

use crate::input::Input;

/// The controller's side: reads come from the script, writes vanish.
struct Scripted {
    rx: std::io::Cursor<Vec<u8>>,
}

impl Read for Scripted {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.rx.read(buf)
    }
}

impl Write for Scripted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Stream for Scripted {
    fn set_read_timeout(&self, _: Option<Duration>) -> std::io::Result<()> {
        Ok(())
    }
}

/// Appends one PDU framed as a controller with these digests and alignment sends it.
fn push(
    out: &mut Vec<u8>,
    kind: PduType,
    flags: PduFlags,
    header: &[u8],
    data: &[u8],
    d: (bool, bool),
    align: usize,
) {
    let mut pdu = Vec::new();
    frame(
        &mut pdu,
        kind,
        flags,
        &header[8..kind.header_len()],
        data,
        d,
        align,
    )
    .expect("short PDUs");
    out.extend_from_slice(&pdu);
}

fn response(out: &mut Vec<u8>, cid: u16, dw0: u32, dw1: u32, d: (bool, bool)) {
    let r = CapsuleResp {
        cqe: CompletionEntry {
            dw0,
            dw1,
            cid,
            ..Default::default()
        },
        ..Default::default()
    };
    push(
        out,
        PduType::CapsuleResp,
        PduFlags::empty(),
        r.as_bytes(),
        &[],
        d,
        4,
    );
}

/// A well-formed set-up: what a controller answers to ICReq and the first seven commands.
fn setup(d: (bool, bool), cpda: u8) -> Vec<u8> {
    let mut bits = 0;
    if d.0 {
        bits |= digest::HEADER;
    }
    if d.1 {
        bits |= digest::DATA;
    }
    let mut out = IcResp::new(cpda, bits, 4096).as_bytes().to_vec();
    response(&mut out, 0, 1, 0, d); // Connect: controller 1
    response(&mut out, 1, 0x0f01_003f, 0x20, d); // CAP: MQES 63, CQR, TO 15, NVM
    response(&mut out, 2, 0x0001_0300, 0, d); // VS 1.3
    response(&mut out, 3, 0, 0, d); // Property Set CC
    response(&mut out, 4, 1, 0, d); // CSTS: ready
    let id = IdentifyController::new_zeroed();
    let h = DataHeader {
        cccid: 5,
        datal: 4096,
        ..Default::default()
    };
    let flags = PduFlags::LAST_PDU | PduFlags::SUCCESS;
    let align = (cpda as usize + 1) * 4;
    push(
        &mut out,
        PduType::C2hData,
        flags,
        h.as_bytes(),
        id.as_bytes(),
        d,
        align,
    );
    response(&mut out, 6, 0, 0, d); // Get Features KATO: none
    out
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.u8();
    let d = (mode & 1 != 0, mode & 2 != 0);
    let cpda = (mode >> 2) & 3;
    let mut script = if input.bool() {
        setup(d, cpda)
    } else {
        Vec::new()
    };
    script.extend_from_slice(input.rest());
    let o = TcpOptions {
        addr: "192.0.2.1:4420".parse().expect("an address"),
        subnqn: None,
        hostnqn: None,
        header_digest: d.0,
        data_digest: d.1,
    };
    let opts = TcpControllerOptions {
        kato_ms: 0,
        timeout: Duration::from_secs(1),
        host: Some(HostIdentity {
            hostnqn: "nqn.2014-08.org.example:fuzz".into(),
            hostid: [1; 16],
        }),
        keep_alive_thread: false,
    };
    let stream = Scripted {
        rx: std::io::Cursor::new(script),
    };
    let Ok(c) = TcpController::over_stream(Box::new(stream), &o, DISCOVERY_NQN, &opts) else {
        return;
    };
    if let Ok(log) = c.discovery_log() {
        for e in &log.entries {
            let _ = (e.subnqn(), e.traddr(), e.trsvcid(), e.subsystem_type());
        }
    }
    let _ = c.identify_namespace(1);
    let mut smart = [0u8; 512];
    let _ = c.get_log_page(0x02, u32::MAX, 0, &mut smart);
    let big = vec![0x5au8; 20000];
    let set = nvme_host_linux::nvme_core::Command::set_features(0x80, 0, 0, false);
    let _ = c.admin(set.0, Data::FromHost(&big));
    let _ = c.keep_alive();
}
