//! PDU framing of one connection: reading a PDU with its digests and padding checked, and
//! building the PDUs the target sends (header digest, data aligned to the host's HPDA,
//! data digest).

use std::io::{self, Read};

use nvme_regs::tcp::{CommonHeader, FatalErrorStatus, PduFlags, PduType, TermReq, DIGEST_LEN};
use zerocopy::{FromBytes, IntoBytes};

use super::crc32c::crc32c;

/// What ICReq/ICResp settled for a connection.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Framing {
    /// Header digests on.
    pub(crate) hd: bool,
    /// Data digests on.
    pub(crate) dd: bool,
    /// Bytes C2H data is aligned to (`(HPDA + 1) * 4`).
    pub(crate) c2h_align: usize,
}

/// A PDU received from the host.
pub(crate) struct Pdu {
    /// Its type.
    pub(crate) kind: PduType,
    /// The whole header (`hlen` bytes, the common header included).
    pub(crate) hdr: Vec<u8>,
    /// Its data (without padding and digest).
    pub(crate) data: Vec<u8>,
    /// False when the data digest did not match.
    pub(crate) data_digest_ok: bool,
}

/// A protocol violation that ends the connection with a C2HTermReq.
#[derive(Debug)]
pub(crate) struct Fatal {
    pub(crate) fes: FatalErrorStatus,
    /// FEI: the offset of the offending field, where the status has one.
    pub(crate) fei: u32,
    /// The offending PDU's header (what the C2HTermReq carries back).
    pub(crate) hdr: Vec<u8>,
}

impl Fatal {
    pub(crate) fn new(fes: FatalErrorStatus, fei: u32, hdr: &[u8]) -> Fatal {
        Fatal {
            fes,
            fei,
            hdr: hdr.to_vec(),
        }
    }
}

/// Why reading a PDU stopped.
pub(crate) enum RecvError {
    /// The host closed the connection (or it was shut down).
    Closed,
    /// The host broke the protocol.
    Fatal(Fatal),
}

impl From<io::Error> for RecvError {
    fn from(_: io::Error) -> Self {
        RecvError::Closed
    }
}

/// Reads one PDU. `max_data` bounds the data a PDU may carry (a bigger one is a Data
/// Transfer Limit Exceeded).
pub(crate) fn read_pdu(r: &mut impl Read, f: &Framing, max_data: usize) -> Result<Pdu, RecvError> {
    let mut ch = [0u8; 8];
    r.read_exact(&mut ch)?;
    let head = CommonHeader::read_from_bytes(&ch).expect("8 bytes");
    let bad = |fes, fei: u32| RecvError::Fatal(Fatal::new(fes, fei, &ch));
    let kind = head
        .kind()
        .ok_or_else(|| bad(FatalErrorStatus::InvalidHeaderField, 0))?;
    let hlen = kind.header_len();
    if head.hlen as usize != hlen {
        return Err(bad(FatalErrorStatus::InvalidHeaderField, 2));
    }
    let mut hdr = vec![0u8; hlen];
    hdr[..8].copy_from_slice(&ch);
    r.read_exact(&mut hdr[8..])?;
    let plen = head.plen as usize;
    let badh = |fes, fei: u32, hdr: &[u8]| RecvError::Fatal(Fatal::new(fes, fei, hdr));
    if matches!(kind, PduType::H2cTermReq) {
        // The offending PDU's header follows; nothing else to check.
        if !(hlen..=nvme_regs::tcp::MAX_TERM_PDU_LEN).contains(&plen) {
            return Err(badh(FatalErrorStatus::InvalidHeaderField, 4, &hdr));
        }
        let mut data = vec![0u8; plen - hlen];
        r.read_exact(&mut data)?;
        return Ok(Pdu {
            kind,
            hdr,
            data,
            data_digest_ok: true,
        });
    }
    let hd = if f.hd && kind.has_header_digest() {
        DIGEST_LEN
    } else {
        0
    };
    if hd != 0 {
        let mut d = [0u8; DIGEST_LEN];
        r.read_exact(&mut d)?;
        if u32::from_le_bytes(d) != crc32c(&hdr) {
            return Err(badh(FatalErrorStatus::HeaderDigestError, 0, &hdr));
        }
    }
    let fixed = hlen + hd;
    if plen < fixed {
        return Err(badh(FatalErrorStatus::InvalidHeaderField, 4, &hdr));
    }
    if plen == fixed {
        return Ok(Pdu {
            kind,
            hdr,
            data: Vec::new(),
            data_digest_ok: true,
        });
    }
    let pdo = head.pdo as usize;
    let dd = if f.dd && kind.has_data_digest() {
        DIGEST_LEN
    } else {
        0
    };
    if !kind.has_data_digest() || pdo < fixed || pdo + dd >= plen {
        return Err(badh(FatalErrorStatus::InvalidHeaderField, 3, &hdr));
    }
    let len = plen - pdo - dd;
    if len > max_data {
        return Err(badh(FatalErrorStatus::DataTransferLimitExceeded, 0, &hdr));
    }
    let mut pad = vec![0u8; pdo - fixed];
    r.read_exact(&mut pad)?;
    let mut data = vec![0u8; len];
    r.read_exact(&mut data)?;
    let mut ok = true;
    if dd != 0 {
        let mut d = [0u8; DIGEST_LEN];
        r.read_exact(&mut d)?;
        ok = u32::from_le_bytes(d) == crc32c(&data);
    }
    Ok(Pdu {
        kind,
        hdr,
        data,
        data_digest_ok: ok,
    })
}

/// Appends a PDU of type `kind` to `out`: `rest` is its header after the common header,
/// `data` its data (placed at the host's alignment, with a data digest when they are on).
pub(crate) fn put_pdu(
    out: &mut Vec<u8>,
    f: &Framing,
    kind: PduType,
    flags: PduFlags,
    rest: &[u8],
    data: &[u8],
) {
    put_pdu_with(out, f, kind, flags, rest, data.len(), |d| {
        d.copy_from_slice(data)
    });
}

/// [`put_pdu`] with `len` bytes of data that `fill` writes in place.
pub(crate) fn put_pdu_with(
    out: &mut Vec<u8>,
    f: &Framing,
    kind: PduType,
    mut flags: PduFlags,
    rest: &[u8],
    len: usize,
    fill: impl FnOnce(&mut [u8]),
) {
    let hlen = kind.header_len();
    debug_assert_eq!(rest.len() + 8, hlen);
    let hd = f.hd && kind.has_header_digest();
    let dd = f.dd && kind.has_data_digest() && len > 0;
    if hd {
        flags |= PduFlags::HDGSTF;
    }
    if dd {
        flags |= PduFlags::DDGSTF;
    }
    let fixed = hlen + if hd { DIGEST_LEN } else { 0 };
    let (pdo, plen) = if len == 0 {
        (0, fixed)
    } else {
        let pdo = fixed.next_multiple_of(f.c2h_align.max(1));
        (pdo, pdo + len + if dd { DIGEST_LEN } else { 0 })
    };
    let ch = CommonHeader::new(kind, flags, pdo as u8, plen as u32);
    let start = out.len();
    out.extend_from_slice(ch.as_bytes());
    out.extend_from_slice(rest);
    if hd {
        let d = crc32c(&out[start..]);
        out.extend_from_slice(&d.to_le_bytes());
    }
    if len > 0 {
        let at = start + pdo;
        out.resize(at + len, 0);
        fill(&mut out[at..]);
        if dd {
            let d = crc32c(&out[at..]);
            out.extend_from_slice(&d.to_le_bytes());
        }
    }
}

/// A C2HTermReq reporting `fatal`.
pub(crate) fn term_req(fatal: &Fatal) -> Vec<u8> {
    let n = fatal
        .hdr
        .len()
        .min(nvme_regs::tcp::MAX_TERM_PDU_LEN - size_of::<TermReq>());
    let t = TermReq {
        ch: CommonHeader::new(
            PduType::C2hTermReq,
            PduFlags::empty(),
            0,
            (size_of::<TermReq>() + n) as u32,
        ),
        fes: fatal.fes as u16,
        fei: fatal.fei.to_le_bytes(),
        reserved: [0; 10],
    };
    let mut v = t.as_bytes().to_vec();
    v.extend_from_slice(&fatal.hdr[..n]);
    v
}
