//! One NVMe/TCP connection, host side: connection initialisation (ICReq/ICResp), PDU
//! framing with the negotiated digests and data alignment, and the checks on every PDU the
//! controller sends before any of its fields is used.
//!
//! The send buffer is kept and reused, received headers land in a fixed array: after the
//! first commands nothing is allocated per PDU.

use std::io::{self, Read, Write};
use std::time::Duration;

use nvme_regs::entry::{CompletionEntry, SubmissionEntry};
use nvme_regs::tcp::{
    digest, CapsuleCmd, CapsuleResp, CommonHeader, DataHeader, IcReq, IcResp, PduFlags, PduType,
    R2t, TermReq, DIGEST_LEN, MAX_TERM_PDU_LEN, MIN_MAXH2CDATA, PFV_1_0,
};
use zerocopy::{FromBytes, IntoBytes};

use super::crc32c::crc32c;
use super::{DigestKind, TcpError};

/// A byte stream to a controller: a TCP socket, or one end of a socket pair in tests.
pub trait Stream: Read + Write + Send {
    /// Bounds each read (`None`: wait forever).
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()>;
    /// Makes reads and writes return `WouldBlock` instead of waiting (an I/O queue's
    /// connection, polled). A stream that cannot (the default) carries an admin queue only.
    fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        let _ = on;
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this stream cannot be made non-blocking (an NVMe/TCP I/O queue needs it)",
        ))
    }
}

impl Stream for std::net::TcpStream {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        std::net::TcpStream::set_read_timeout(self, t)
    }
    fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        std::net::TcpStream::set_nonblocking(self, on)
    }
}

impl Stream for std::os::unix::net::UnixStream {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        std::os::unix::net::UnixStream::set_read_timeout(self, t)
    }
    fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        std::os::unix::net::UnixStream::set_nonblocking(self, on)
    }
}

/// What the host asks for in its ICReq.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkOptions {
    /// Header digests.
    pub header_digest: bool,
    /// Data digests.
    pub data_digest: bool,
}

/// What the controller granted in its ICResp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// Header digests on.
    pub header_digest: bool,
    /// Data digests on.
    pub data_digest: bool,
    /// Alignment of host-to-controller data, in bytes (`(CPDA + 1) * 4`).
    pub data_alignment: usize,
    /// MAXH2CDATA: the most data one H2CData PDU may carry.
    pub max_h2c_data: u32,
}

/// A PDU header received from the controller, checked.
#[derive(Clone, Copy, Debug)]
pub enum Inbound {
    /// A response capsule.
    Response(CompletionEntry),
    /// Controller-to-host data: `datal` bytes follow; read them with [`Link::recv_data`].
    Data(DataHeader),
    /// The controller asks for write data.
    R2t(R2t),
}

/// One connection.
pub struct Link {
    stream: Box<dyn Stream>,
    /// The controller's address, for messages.
    pub(crate) peer: String,
    neg: Negotiated,
    tx: Vec<u8>,
    hdr: [u8; 128],
    /// Bytes of the current C2HData PDU's padding and data still to read, and whether its
    /// data digest follows.
    pending_data: Option<(usize, usize, bool)>,
}

fn align_up(v: usize, a: usize) -> usize {
    v.div_ceil(a) * a
}

/// Frames one PDU into `out` (cleared first): the common header, `header_rest` (the
/// header's bytes after the common header), the header digest when `digests.0` and the type
/// carries one, padding up to a multiple of `alignment`, `data`, and its digest when
/// `digests.1`. The host frames what it sends with it, and so can a test's controller.
/// `Err(plen)` when the PDU would be longer than `plen` can say.
pub fn frame(
    out: &mut Vec<u8>,
    kind: PduType,
    flags: PduFlags,
    header_rest: &[u8],
    data: &[u8],
    digests: (bool, bool),
    alignment: usize,
) -> Result<(), usize> {
    out.clear();
    let fill = |dst: &mut [u8]| {
        dst.copy_from_slice(data);
        true
    };
    let framing = Framing { digests, alignment };
    framing
        .append(out, kind, flags, header_rest, data.len(), fill)
        .map(|_| ())
}

/// How PDUs are framed on one connection: the digests and the data alignment in force.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Framing {
    /// Header and data digests on.
    pub(crate) digests: (bool, bool),
    /// Alignment of the data in a PDU (`(CPDA + 1) * 4`; 1 for none).
    pub(crate) alignment: usize,
}

impl Framing {
    /// Appends one PDU to `out` (see [`frame`]) whose `data_len` bytes of data `fill`
    /// writes in place (it returns `false` when it could not; then nothing is appended
    /// and the result is `Ok(false)`). `Err(plen)`: too long for the PDU length field.
    pub(crate) fn append(
        &self,
        out: &mut Vec<u8>,
        kind: PduType,
        mut flags: PduFlags,
        header_rest: &[u8],
        data_len: usize,
        fill: impl FnOnce(&mut [u8]) -> bool,
    ) -> Result<bool, usize> {
        let hlen = kind.header_len();
        debug_assert_eq!(header_rest.len() + 8, hlen);
        let hd = if self.digests.0 && kind.has_header_digest() {
            flags |= PduFlags::HDGSTF;
            DIGEST_LEN
        } else {
            0
        };
        let dd = if self.digests.1 && data_len != 0 {
            flags |= PduFlags::DDGSTF;
            DIGEST_LEN
        } else {
            0
        };
        let pdo = if data_len == 0 {
            0
        } else {
            align_up(hlen + hd, self.alignment.max(1))
        };
        let plen = if data_len == 0 {
            hlen + hd
        } else {
            pdo + data_len + dd
        };
        let (Ok(plen32), Ok(pdo8)) = (u32::try_from(plen), u8::try_from(pdo)) else {
            return Err(plen);
        };
        let ch = CommonHeader {
            pdu_type: kind as u8,
            flags: flags.bits(),
            hlen: hlen as u8,
            pdo: pdo8,
            plen: plen32,
        };
        let start = out.len();
        out.extend_from_slice(ch.as_bytes());
        out.extend_from_slice(header_rest);
        if hd != 0 {
            let d = crc32c(&out[start..start + hlen]);
            out.extend_from_slice(&d.to_le_bytes());
        }
        if data_len != 0 {
            out.resize(start + pdo + data_len, 0);
            if !fill(&mut out[start + pdo..]) {
                out.truncate(start);
                return Ok(false);
            }
            if dd != 0 {
                let d = crc32c(&out[start + pdo..]);
                out.extend_from_slice(&d.to_le_bytes());
            }
        }
        Ok(true)
    }
}

/// A failed read or write on a connection as what it means: the controller closed it
/// ([`TcpError::Closed`], the host waiting for `waiting_for`), or another OS error while
/// doing `what`.
pub(crate) fn io_failure(
    peer: &str,
    e: io::Error,
    waiting_for: &'static str,
    what: impl FnOnce() -> String,
) -> TcpError {
    match e.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionAborted => TcpError::Closed {
            peer: peer.to_string(),
            waiting_for,
        },
        _ => TcpError::Io {
            peer: peer.to_string(),
            what: what(),
            source: e,
        },
    }
}

/// Where a C2HData PDU's data lies after its header (and header digest).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DataLayout {
    /// Padding bytes before the data.
    pub(crate) pad: usize,
    /// Data bytes.
    pub(crate) len: usize,
    /// A data digest follows the data.
    pub(crate) digest: bool,
}

/// Checks a received common header (not a C2HTermReq, which the caller handles): a PDU
/// type a controller sends once connected, its header length, the header digest flag.
pub(crate) fn check_common(ch: &CommonHeader, neg: &Negotiated) -> Result<PduType, String> {
    let Some(kind) = ch.kind() else {
        return Err(format!("unknown PDU type {:#04x}", ch.pdu_type));
    };
    if !matches!(kind, PduType::CapsuleResp | PduType::C2hData | PduType::R2t) {
        return Err(format!(
            "{} PDU from the controller (a controller sends CapsuleResp, C2HData, R2T and C2HTermReq once connected)",
            kind.name()
        ));
    }
    let hlen = kind.header_len();
    if ch.hlen as usize != hlen {
        return Err(format!(
            "{} with hlen {} (must be {hlen})",
            kind.name(),
            ch.hlen
        ));
    }
    let set = |on: bool| if on { "set" } else { "clear" };
    let on = |on: bool| if on { "on" } else { "off" };
    let flags = ch.flags();
    if flags.contains(PduFlags::HDGSTF) != neg.header_digest {
        return Err(format!(
            "{} with the header digest flag {} although header digests are {}",
            kind.name(),
            set(flags.contains(PduFlags::HDGSTF)),
            on(neg.header_digest)
        ));
    }
    if kind == PduType::C2hData && flags.contains(PduFlags::DDGSTF) != neg.data_digest {
        return Err(format!(
            "C2HData with the data digest flag {} although data digests are {}",
            set(flags.contains(PduFlags::DDGSTF)),
            on(neg.data_digest)
        ));
    }
    Ok(kind)
}

/// Checks a received header digest `got` against the header's bytes `hdr`.
pub(crate) fn check_header_digest(
    peer: &str,
    kind: PduType,
    hdr: &[u8],
    got: [u8; 4],
) -> Result<(), TcpError> {
    let (got, want) = (u32::from_le_bytes(got), crc32c(hdr));
    if got != want {
        return Err(TcpError::DigestMismatch {
            peer: peer.to_string(),
            kind: DigestKind::Header,
            pdu: kind.name(),
            expected: want,
            received: got,
        });
    }
    Ok(())
}

/// Checks the lengths of a received PDU whose common header passed [`check_common`]
/// (`hdr`: its `hlen` header bytes) and decodes it; for C2HData, where its data lies.
pub(crate) fn check_header(
    kind: PduType,
    ch: &CommonHeader,
    hdr: &[u8],
    neg: &Negotiated,
) -> Result<(Inbound, Option<DataLayout>), String> {
    let hd = if neg.header_digest { DIGEST_LEN } else { 0 };
    let plen = ch.plen as usize;
    let fixed = kind.header_len() + hd;
    match kind {
        PduType::CapsuleResp | PduType::R2t => {
            if plen != fixed || ch.pdo != 0 {
                return Err(format!(
                    "{} with plen {plen} and pdo {} (must be {fixed} and 0)",
                    kind.name(),
                    ch.pdo
                ));
            }
            if kind == PduType::R2t {
                let r = R2t::read_from_bytes(&hdr[..24]).expect("24 bytes");
                Ok((Inbound::R2t(r), None))
            } else {
                let r = CapsuleResp::read_from_bytes(&hdr[..24]).expect("24 bytes");
                Ok((Inbound::Response(r.cqe), None))
            }
        }
        _ => {
            let d = DataHeader::read_from_bytes(&hdr[..24]).expect("24 bytes");
            let dd = if neg.data_digest { DIGEST_LEN } else { 0 };
            let pdo = ch.pdo as usize;
            let datal = d.datal as usize;
            if pdo < fixed || datal == 0 || plen != pdo + datal + dd {
                return Err(format!(
                    "C2HData with pdo {pdo}, plen {plen} and {datal} bytes of data (header {fixed} bytes)"
                ));
            }
            let flags = ch.flags();
            if flags.contains(PduFlags::SUCCESS) && !flags.contains(PduFlags::LAST_PDU) {
                return Err("C2HData with SUCCESS but not LAST_PDU".into());
            }
            let layout = DataLayout {
                pad: pdo - fixed,
                len: datal,
                digest: dd != 0,
            };
            Ok((Inbound::Data(d), Some(layout)))
        }
    }
}

/// Checks a received data digest `got` against the data.
pub(crate) fn check_data_digest(
    peer: &str,
    pdu: &'static str,
    data: &[u8],
    got: [u8; 4],
) -> Result<(), TcpError> {
    let (got, want) = (u32::from_le_bytes(got), crc32c(data));
    if got != want {
        return Err(TcpError::DigestMismatch {
            peer: peer.to_string(),
            kind: DigestKind::Data,
            pdu,
            expected: want,
            received: got,
        });
    }
    Ok(())
}

impl Negotiated {
    /// How PDUs are framed under these terms.
    pub(crate) fn framing(&self) -> Framing {
        Framing {
            digests: (self.header_digest, self.data_digest),
            alignment: self.data_alignment,
        }
    }
}

impl Link {
    /// Exchanges ICReq and ICResp on a fresh stream.
    pub fn establish(
        stream: Box<dyn Stream>,
        peer: String,
        opts: LinkOptions,
        timeout: Duration,
    ) -> Result<Link, TcpError> {
        let mut link = Link {
            stream,
            peer,
            neg: Negotiated {
                header_digest: false,
                data_digest: false,
                data_alignment: 4,
                max_h2c_data: MIN_MAXH2CDATA,
            },
            tx: Vec::with_capacity(4096),
            hdr: [0; 128],
            pending_data: None,
        };
        link.stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| link.io("setting the socket's read timeout", e))?;
        let mut want = 0;
        if opts.header_digest {
            want |= digest::HEADER;
        }
        if opts.data_digest {
            want |= digest::DATA;
        }
        let req = IcReq::new(0, want, 0);
        link.send_raw(req.as_bytes(), "ICReq")?;
        let ch = link.read_common("ICResp")?;
        match ch.kind() {
            Some(PduType::IcResp) => {}
            Some(PduType::C2hTermReq) => return Err(link.read_term(ch)),
            _ => {
                return Err(link.protocol(format!(
                    "expected ICResp, got PDU type {:#04x}",
                    ch.pdu_type
                )))
            }
        }
        if ch.hlen != 128 || ch.plen != 128 {
            return Err(link.protocol(format!(
                "ICResp with hlen {} and plen {} (both must be 128)",
                ch.hlen, ch.plen
            )));
        }
        link.read_exact_into_hdr(8, 128, "ICResp")?;
        let resp = IcResp::read_from_bytes(&link.hdr[..128]).expect("128 bytes");
        if resp.pfv != PFV_1_0 {
            return Err(link.protocol(format!(
                "ICResp PDU format version {} (this host speaks version 0)",
                resp.pfv
            )));
        }
        if resp.cpda > 31 {
            return Err(link.protocol(format!("ICResp CPDA {} exceeds 31", resp.cpda)));
        }
        if resp.maxh2cdata < MIN_MAXH2CDATA || !resp.maxh2cdata.is_multiple_of(4) {
            return Err(link.protocol(format!(
                "ICResp MAXH2CDATA {} is below 4096 or not a multiple of 4",
                resp.maxh2cdata
            )));
        }
        let extra = resp.digest & !want;
        if extra & (digest::HEADER | digest::DATA) != 0 {
            return Err(link.protocol(format!(
                "the controller turned on digests the host did not ask for (ICResp digest {:#x}, asked {want:#x})",
                resp.digest
            )));
        }
        for (bit, kind) in [
            (digest::HEADER, DigestKind::Header),
            (digest::DATA, DigestKind::Data),
        ] {
            if want & bit != 0 && resp.digest & bit == 0 {
                return Err(TcpError::DigestDeclined {
                    peer: link.peer.clone(),
                    kind,
                });
            }
        }
        link.neg = Negotiated {
            header_digest: resp.digest & digest::HEADER != 0,
            data_digest: resp.digest & digest::DATA != 0,
            data_alignment: resp.data_alignment(),
            max_h2c_data: resp.maxh2cdata,
        };
        Ok(link)
    }

    /// The stream, the controller's address and what ICResp granted, for a queue that
    /// frames and parses PDUs itself (an I/O queue, non-blocking).
    pub(crate) fn into_parts(self) -> (Box<dyn Stream>, String, Negotiated) {
        (self.stream, self.peer, self.neg)
    }

    /// What ICResp granted.
    pub fn negotiated(&self) -> Negotiated {
        self.neg
    }

    /// Changes the bound on each read.
    pub fn set_timeout(&mut self, t: Duration) -> Result<(), TcpError> {
        self.stream
            .set_read_timeout(Some(t))
            .map_err(|e| self.io("setting the socket's read timeout", e))
    }

    fn io(&self, what: &str, e: io::Error) -> TcpError {
        TcpError::Io {
            peer: self.peer.clone(),
            what: what.to_string(),
            source: e,
        }
    }

    fn protocol(&self, m: String) -> TcpError {
        TcpError::Protocol {
            peer: self.peer.clone(),
            message: m,
        }
    }

    fn send_raw(&mut self, b: &[u8], what: &'static str) -> Result<(), TcpError> {
        let r = self.stream.write_all(b).and_then(|_| self.stream.flush());
        r.map_err(|e| self.map_io(e, what, "sending"))
    }

    /// An I/O error as what it means: the controller closed the connection, or a timeout.
    fn map_io(&self, e: io::Error, pdu: &'static str, doing: &'static str) -> TcpError {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => TcpError::NoResponse {
                peer: self.peer.clone(),
                waiting_for: pdu,
            },
            _ => io_failure(&self.peer, e, pdu, || format!("{doing} {pdu}")),
        }
    }

    fn read_exact(&mut self, buf: &mut [u8], what: &'static str) -> Result<(), TcpError> {
        match self.stream.read_exact(buf) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.map_io(e, what, "receiving")),
        }
    }

    fn read_exact_into_hdr(
        &mut self,
        from: usize,
        to: usize,
        what: &'static str,
    ) -> Result<(), TcpError> {
        let mut tmp = [0u8; 128];
        self.read_exact(&mut tmp[from..to], what)?;
        self.hdr[from..to].copy_from_slice(&tmp[from..to]);
        Ok(())
    }

    fn read_common(&mut self, what: &'static str) -> Result<CommonHeader, TcpError> {
        let mut b = [0u8; 8];
        self.read_exact(&mut b, what)?;
        self.hdr[..8].copy_from_slice(&b);
        Ok(CommonHeader::read_from_bytes(&b).expect("8 bytes"))
    }

    /// Reads the rest of a C2HTermReq and turns it into the error it reports.
    fn read_term(&mut self, ch: CommonHeader) -> TcpError {
        if ch.hlen != 24 || (ch.plen as usize) < 24 || ch.plen as usize > MAX_TERM_PDU_LEN {
            return self.protocol(format!(
                "C2HTermReq with hlen {} and plen {}",
                ch.hlen, ch.plen
            ));
        }
        if let Err(e) = self.read_exact_into_hdr(8, 24, "C2HTermReq") {
            return e;
        }
        let t = TermReq::read_from_bytes(&self.hdr[..24]).expect("24 bytes");
        let mut rest = [0u8; MAX_TERM_PDU_LEN];
        let n = ch.plen as usize - 24;
        // The offending header follows; best effort (the connection is going away).
        let _ = self.read_exact(&mut rest[..n], "C2HTermReq");
        TcpError::Terminated {
            peer: self.peer.clone(),
            fes: t.fes,
            fei: u32::from_le_bytes(t.fei),
        }
    }

    /// Reads one PDU header from the controller and checks it: type, lengths, flags, header
    /// digest. A C2HTermReq becomes [`TcpError::Terminated`].
    pub fn recv(&mut self, waiting_for: &'static str) -> Result<Inbound, TcpError> {
        if self.pending_data.is_some() {
            return Err(self.protocol("C2HData payload not consumed".into()));
        }
        let ch = self.read_common(waiting_for)?;
        if ch.kind() == Some(PduType::C2hTermReq) {
            return Err(self.read_term(ch));
        }
        let kind = check_common(&ch, &self.neg).map_err(|m| self.protocol(m))?;
        let hlen = kind.header_len();
        self.read_exact_into_hdr(8, hlen, kind.name())?;
        if self.neg.header_digest {
            let mut d = [0u8; 4];
            self.read_exact(&mut d, kind.name())?;
            check_header_digest(&self.peer, kind, &self.hdr[..hlen], d)?;
        }
        let (inbound, data) =
            check_header(kind, &ch, &self.hdr[..hlen], &self.neg).map_err(|m| self.protocol(m))?;
        if let Some(d) = data {
            self.pending_data = Some((d.pad, d.len, d.digest));
        }
        Ok(inbound)
    }

    /// Reads the data of the C2HData PDU [`Link::recv`] returned into `dst` (its length
    /// is the PDU's `datal`), and checks the data digest.
    pub fn recv_data(&mut self, dst: &mut [u8]) -> Result<(), TcpError> {
        let Some((pad, len, digest)) = self.pending_data.take() else {
            return Err(self.protocol("no C2HData payload pending".into()));
        };
        assert_eq!(dst.len(), len, "recv_data: destination length");
        let mut skip = [0u8; 256];
        self.read_exact(&mut skip[..pad], "C2HData")?;
        self.read_exact(dst, "C2HData")?;
        if digest {
            let mut d = [0u8; 4];
            self.read_exact(&mut d, "C2HData")?;
            check_data_digest(&self.peer, "C2HData", dst, d)?;
        }
        Ok(())
    }

    /// Frames one PDU into the send buffer (see [`frame`]) and sends it in one write.
    fn send_pdu(
        &mut self,
        kind: PduType,
        flags: PduFlags,
        header_rest: &[u8],
        data: &[u8],
    ) -> Result<(), TcpError> {
        let f = self.neg.framing();
        let mut tx = std::mem::take(&mut self.tx);
        let r = frame(
            &mut tx,
            kind,
            flags,
            header_rest,
            data,
            f.digests,
            f.alignment,
        );
        let r = match r {
            Ok(()) => self
                .stream
                .write_all(&tx)
                .and_then(|_| self.stream.flush())
                .map_err(|e| self.map_io(e, kind.name(), "sending")),
            Err(plen) => Err(self.protocol(format!("a PDU of {plen} bytes is too long"))),
        };
        self.tx = tx;
        r
    }

    /// Sends a command capsule with `data` in it (empty: none).
    pub fn send_command(&mut self, sqe: &SubmissionEntry, data: &[u8]) -> Result<(), TcpError> {
        let c = CapsuleCmd {
            ch: CommonHeader::default(),
            sqe: *sqe,
        };
        // The header is copied to a stack array so that send_pdu can borrow self mutably.
        let mut rest = [0u8; 64];
        rest.copy_from_slice(&c.as_bytes()[8..]);
        self.send_pdu(PduType::CapsuleCmd, PduFlags::empty(), &rest, data)
    }

    /// Sends one H2CData PDU answering R2T `ttag` of command `cccid`.
    pub fn send_h2c(
        &mut self,
        cccid: u16,
        ttag: u16,
        datao: u32,
        data: &[u8],
        last: bool,
    ) -> Result<(), TcpError> {
        let h = DataHeader {
            cccid,
            ttag,
            datao,
            datal: data.len() as u32,
            ..Default::default()
        };
        let mut rest = [0u8; 16];
        rest.copy_from_slice(&h.as_bytes()[8..]);
        let flags = if last {
            PduFlags::LAST_PDU
        } else {
            PduFlags::empty()
        };
        self.send_pdu(PduType::H2cData, flags, &rest, data)
    }

    /// Sends an H2CTermReq (best effort: the connection is closed after it).
    pub fn send_term(&mut self, fes: u16) {
        let t = TermReq {
            ch: CommonHeader::new(PduType::H2cTermReq, PduFlags::empty(), 0, 24),
            fes,
            ..Default::default()
        };
        let _ = self.stream.write_all(t.as_bytes());
    }
}
