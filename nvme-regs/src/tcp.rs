//! NVMe/TCP (NVMe-oF 1.1 chapter 7, TP 8000): the PDU headers, their types and flags, the
//! fatal error statuses of a Terminate Connection Request, and the SGL descriptor forms an
//! NVMe/TCP command carries (the descriptor itself is [`crate::sgl`]'s).
//!
//! A PDU is a header of `hlen` bytes beginning with the 8-byte [`CommonHeader`], an
//! optional 4-byte header digest (CRC32C of the header), padding up to the data offset
//! `pdo`, the data, and an optional 4-byte data digest; `plen` counts all of it. Every field
//! is little-endian.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::entry::{CompletionEntry, SubmissionEntry};
use crate::sgl::{SglDescriptor, SglDescriptorType, SGL_SUBTYPE_OFFSET};

/// The IANA port of NVMe/TCP I/O controllers (and of discovery on many targets).
pub const DEFAULT_PORT: u16 = 4420;
/// The IANA port of the NVMe/TCP discovery service.
pub const DISCOVERY_PORT: u16 = 8009;
/// Bytes of a header or data digest (CRC32C).
pub const DIGEST_LEN: usize = 4;
/// PDU format version 1.0 (PFV).
pub const PFV_1_0: u16 = 0;
/// The smallest MAXH2CDATA a controller may grant.
pub const MIN_MAXH2CDATA: u32 = 4096;
/// In-capsule data the admin queue accepts (8 KiB, the transport's fixed value).
pub const ADMIN_IN_CAPSULE_DATA: usize = 8192;
/// The largest C2HTermReq/H2CTermReq PDU: its header and the offending PDU header.
pub const MAX_TERM_PDU_LEN: usize = 152;

/// PDU types (the common header's byte 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PduType {
    /// Initialize Connection Request (host to controller).
    IcReq = 0x00,
    /// Initialize Connection Response.
    IcResp = 0x01,
    /// Host to Controller Terminate Connection Request.
    H2cTermReq = 0x02,
    /// Controller to Host Terminate Connection Request.
    C2hTermReq = 0x03,
    /// Command capsule.
    CapsuleCmd = 0x04,
    /// Response capsule.
    CapsuleResp = 0x05,
    /// Host to Controller data.
    H2cData = 0x06,
    /// Controller to Host data.
    C2hData = 0x07,
    /// Ready to Transfer (the controller asks for write data).
    R2t = 0x09,
}

impl PduType {
    /// Decodes byte 0; `None` for reserved types.
    pub const fn from_u8(v: u8) -> Option<PduType> {
        Some(match v {
            0x00 => PduType::IcReq,
            0x01 => PduType::IcResp,
            0x02 => PduType::H2cTermReq,
            0x03 => PduType::C2hTermReq,
            0x04 => PduType::CapsuleCmd,
            0x05 => PduType::CapsuleResp,
            0x06 => PduType::H2cData,
            0x07 => PduType::C2hData,
            0x09 => PduType::R2t,
            _ => return None,
        })
    }
    /// The header length (`hlen`) a PDU of this type has.
    pub const fn header_len(self) -> usize {
        match self {
            PduType::IcReq | PduType::IcResp => 128,
            PduType::CapsuleCmd => 72,
            PduType::CapsuleResp
            | PduType::H2cData
            | PduType::C2hData
            | PduType::R2t
            | PduType::H2cTermReq
            | PduType::C2hTermReq => 24,
        }
    }
    /// Whether a header digest follows this type's header when header digests are on
    /// (every type but the connection set-up and termination PDUs).
    pub const fn has_header_digest(self) -> bool {
        !matches!(
            self,
            PduType::IcReq | PduType::IcResp | PduType::H2cTermReq | PduType::C2hTermReq
        )
    }
    /// Whether this type may carry data covered by a data digest.
    pub const fn has_data_digest(self) -> bool {
        matches!(
            self,
            PduType::CapsuleCmd | PduType::H2cData | PduType::C2hData
        )
    }
    /// The name the specification gives the PDU.
    pub const fn name(self) -> &'static str {
        match self {
            PduType::IcReq => "ICReq",
            PduType::IcResp => "ICResp",
            PduType::H2cTermReq => "H2CTermReq",
            PduType::C2hTermReq => "C2HTermReq",
            PduType::CapsuleCmd => "CapsuleCmd",
            PduType::CapsuleResp => "CapsuleResp",
            PduType::H2cData => "H2CData",
            PduType::C2hData => "C2HData",
            PduType::R2t => "R2T",
        }
    }
}

bitflags::bitflags! {
    /// The common header's flags (byte 1).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct PduFlags: u8 {
        /// A header digest follows the header.
        const HDGSTF = 1 << 0;
        /// A data digest follows the data.
        const DDGSTF = 1 << 1;
        /// H2CData/C2HData: the last data PDU of the command (or of the R2T).
        const LAST_PDU = 1 << 2;
        /// C2HData: the command completed successfully and no response capsule follows.
        const SUCCESS = 1 << 3;
    }
}

/// ICReq/ICResp digest bits (byte 11).
pub mod digest {
    /// Header digests on.
    pub const HEADER: u8 = 1 << 0;
    /// Data digests on.
    pub const DATA: u8 = 1 << 1;
}

/// The common header of every PDU (8 bytes).
#[derive(
    Clone, Copy, Default, PartialEq, Eq, Debug, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct CommonHeader {
    /// [`PduType`].
    pub pdu_type: u8,
    /// [`PduFlags`].
    pub flags: u8,
    /// Header length in bytes (without the header digest).
    pub hlen: u8,
    /// Data offset: where the data begins, from the start of the PDU (0: no data).
    pub pdo: u8,
    /// The whole PDU's length in bytes: header, digests, padding and data.
    pub plen: u32,
}
crate::assert_size!(CommonHeader, 8);
crate::assert_offset!(CommonHeader, plen, 4);

impl CommonHeader {
    /// A header of type `t` with its fixed `hlen`.
    pub const fn new(t: PduType, flags: PduFlags, pdo: u8, plen: u32) -> CommonHeader {
        CommonHeader {
            pdu_type: t as u8,
            flags: flags.bits(),
            hlen: t.header_len() as u8,
            pdo,
            plen,
        }
    }
    /// The flags.
    pub const fn flags(&self) -> PduFlags {
        PduFlags::from_bits_retain(self.flags)
    }
    /// The type, `None` for reserved ones.
    pub const fn kind(&self) -> Option<PduType> {
        PduType::from_u8(self.pdu_type)
    }
}

/// Initialize Connection Request (128 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct IcReq {
    /// Common header (ICReq, hlen 128, plen 128).
    pub ch: CommonHeader,
    /// PDU format version ([`PFV_1_0`]).
    pub pfv: u16,
    /// Host PDU data alignment, 0's based in dwords: C2H data starts at a multiple of
    /// `(hpda + 1) * 4` bytes.
    pub hpda: u8,
    /// [`digest`] bits the host asks for.
    pub digest: u8,
    /// Maximum outstanding R2Ts per command, 0's based.
    pub maxr2t: u32,
    /// Reserved.
    pub reserved: [u8; 112],
}
crate::assert_size!(IcReq, 128);
crate::assert_offset!(IcReq, hpda, 10);
crate::assert_offset!(IcReq, maxr2t, 12);

/// Initialize Connection Response (128 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct IcResp {
    /// Common header (ICResp, hlen 128, plen 128).
    pub ch: CommonHeader,
    /// PDU format version ([`PFV_1_0`]).
    pub pfv: u16,
    /// Controller PDU data alignment, 0's based in dwords: H2C data (in capsules and
    /// H2CData PDUs) starts at a multiple of `(cpda + 1) * 4` bytes.
    pub cpda: u8,
    /// [`digest`] bits the controller turned on.
    pub digest: u8,
    /// MAXH2CDATA: the most data one H2CData PDU may carry.
    pub maxh2cdata: u32,
    /// Reserved.
    pub reserved: [u8; 112],
}
crate::assert_size!(IcResp, 128);
crate::assert_offset!(IcResp, cpda, 10);
crate::assert_offset!(IcResp, maxh2cdata, 12);

impl IcReq {
    /// An ICReq asking for the `digest` bits, with `hpda` and `maxr2t` (both 0's based).
    pub fn new(hpda: u8, digest: u8, maxr2t: u32) -> IcReq {
        IcReq {
            ch: CommonHeader::new(PduType::IcReq, PduFlags::empty(), 0, 128),
            pfv: PFV_1_0,
            hpda,
            digest,
            maxr2t,
            reserved: [0; 112],
        }
    }
}

impl IcResp {
    /// An ICResp (what a controller sends).
    pub fn new(cpda: u8, digest: u8, maxh2cdata: u32) -> IcResp {
        IcResp {
            ch: CommonHeader::new(PduType::IcResp, PduFlags::empty(), 0, 128),
            pfv: PFV_1_0,
            cpda,
            digest,
            maxh2cdata,
            reserved: [0; 112],
        }
    }
    /// The data alignment `cpda` asks for, in bytes.
    pub const fn data_alignment(&self) -> usize {
        (self.cpda as usize + 1) * 4
    }
}

/// A command capsule's header: the common header and the submission entry (72 bytes).
#[derive(
    Clone, Copy, Default, PartialEq, Eq, Debug, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct CapsuleCmd {
    /// Common header (CapsuleCmd, hlen 72).
    pub ch: CommonHeader,
    /// The command.
    pub sqe: SubmissionEntry,
}
crate::assert_size!(CapsuleCmd, 72);

/// A response capsule: the common header and the completion entry (24 bytes).
#[derive(
    Clone, Copy, Default, PartialEq, Eq, Debug, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct CapsuleResp {
    /// Common header (CapsuleResp, hlen 24).
    pub ch: CommonHeader,
    /// The completion.
    pub cqe: CompletionEntry,
}
crate::assert_size!(CapsuleResp, 24);

/// The header of H2CData and C2HData PDUs (24 bytes).
#[derive(
    Clone, Copy, Default, PartialEq, Eq, Debug, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct DataHeader {
    /// Common header (H2CData or C2HData, hlen 24).
    pub ch: CommonHeader,
    /// The command's identifier (CCCID).
    pub cccid: u16,
    /// H2CData: the transfer tag of the R2T answered; C2HData: reserved.
    pub ttag: u16,
    /// Offset of this PDU's data in the command's data.
    pub datao: u32,
    /// Bytes of data in this PDU.
    pub datal: u32,
    /// Reserved.
    pub reserved: [u8; 4],
}
crate::assert_size!(DataHeader, 24);
crate::assert_offset!(DataHeader, cccid, 8);
crate::assert_offset!(DataHeader, ttag, 10);
crate::assert_offset!(DataHeader, datao, 12);
crate::assert_offset!(DataHeader, datal, 16);

/// Ready to Transfer (24 bytes): the controller asks for `r2tl` bytes at `r2to`.
#[derive(
    Clone, Copy, Default, PartialEq, Eq, Debug, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct R2t {
    /// Common header (R2T, hlen 24).
    pub ch: CommonHeader,
    /// The command's identifier (CCCID).
    pub cccid: u16,
    /// Transfer tag, echoed in the H2CData PDUs that answer.
    pub ttag: u16,
    /// Offset of the requested data in the command's data.
    pub r2to: u32,
    /// Bytes requested.
    pub r2tl: u32,
    /// Reserved.
    pub reserved: [u8; 4],
}
crate::assert_size!(R2t, 24);
crate::assert_offset!(R2t, r2to, 12);
crate::assert_offset!(R2t, r2tl, 16);

/// The header of H2CTermReq and C2HTermReq (24 bytes); the offending PDU's header follows
/// as data (`plen` - 24 bytes, at most [`MAX_TERM_PDU_LEN`] in all).
#[derive(
    Clone, Copy, Default, PartialEq, Eq, Debug, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct TermReq {
    /// Common header (a TermReq type, hlen 24).
    pub ch: CommonHeader,
    /// Fatal error status ([`FatalErrorStatus`]).
    pub fes: u16,
    /// Fatal error information: the offset of the bad field (invalid header field) or
    /// reserved.
    pub fei: [u8; 4],
    /// Reserved.
    pub reserved: [u8; 10],
}
crate::assert_size!(TermReq, 24);
crate::assert_offset!(TermReq, fes, 8);
crate::assert_offset!(TermReq, fei, 10);

/// Fatal error statuses of a Terminate Connection Request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum FatalErrorStatus {
    /// A header field is invalid (FEI: its byte offset).
    InvalidHeaderField = 0x01,
    /// A PDU arrived out of sequence.
    PduSequenceError = 0x02,
    /// A header digest did not match.
    HeaderDigestError = 0x03,
    /// Data beyond the command's transfer.
    DataTransferOutOfRange = 0x04,
    /// More data (or R2Ts) than allowed.
    DataTransferLimitExceeded = 0x05,
    /// An unsupported parameter (FEI: its byte offset), e.g. a PDU format version.
    UnsupportedParameter = 0x06,
}

impl FatalErrorStatus {
    /// Decodes FES; `None` for reserved values.
    pub const fn from_u16(v: u16) -> Option<FatalErrorStatus> {
        Some(match v {
            0x01 => FatalErrorStatus::InvalidHeaderField,
            0x02 => FatalErrorStatus::PduSequenceError,
            0x03 => FatalErrorStatus::HeaderDigestError,
            0x04 => FatalErrorStatus::DataTransferOutOfRange,
            0x05 => FatalErrorStatus::DataTransferLimitExceeded,
            0x06 => FatalErrorStatus::UnsupportedParameter,
            _ => return None,
        })
    }
    /// The specification's name.
    pub const fn name(self) -> &'static str {
        match self {
            FatalErrorStatus::InvalidHeaderField => "Invalid PDU Header Field",
            FatalErrorStatus::PduSequenceError => "PDU Sequence Error",
            FatalErrorStatus::HeaderDigestError => "Header Digest Error",
            FatalErrorStatus::DataTransferOutOfRange => "Data Transfer Out of Range",
            FatalErrorStatus::DataTransferLimitExceeded => "Data Transfer Limit Exceeded",
            FatalErrorStatus::UnsupportedParameter => "Unsupported Parameter",
        }
    }
}

/// SGL descriptor sub type Ah, transport specific: NVMe/TCP's Transport SGL Data Block
/// (its data moves in C2HData PDUs, or in H2CData PDUs answering R2Ts).
pub const SGL_SUBTYPE_TRANSPORT_A: u8 = 0xa;

/// SGL identifier of in-capsule data: a Data Block with the Offset sub type.
pub const SGL_ID_IN_CAPSULE: u8 = (SglDescriptorType::DataBlock as u8) << 4 | SGL_SUBTYPE_OFFSET;
/// SGL identifier of data moved by data PDUs: a Transport SGL Data Block, sub type Ah.
pub const SGL_ID_TRANSPORT_DATA_BLOCK: u8 =
    (SglDescriptorType::TransportDataBlock as u8) << 4 | SGL_SUBTYPE_TRANSPORT_A;

/// The descriptor of `len` bytes of in-capsule data at `offset` in the capsule's data
/// (NVMe/TCP commands carry SGLs: PSDT [`PSDT_SGL`](crate::entry::PSDT_SGL)).
pub const fn in_capsule(offset: u64, len: u32) -> SglDescriptor {
    SglDescriptor {
        address: offset,
        length: len,
        reserved: [0; 3],
        id: SGL_ID_IN_CAPSULE,
    }
}

/// The descriptor of `len` bytes moved by data PDUs (a Transport SGL Data Block).
pub const fn transport_data_block(len: u32) -> SglDescriptor {
    SglDescriptor {
        address: 0,
        length: len,
        reserved: [0; 3],
        id: SGL_ID_TRANSPORT_DATA_BLOCK,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_encode_as_the_spec_lays_them_out() {
        let r = IcReq::new(0, digest::HEADER | digest::DATA, 0);
        let b = r.as_bytes();
        assert_eq!(&b[..8], &[0, 0, 128, 0, 128, 0, 0, 0]);
        assert_eq!(b[11], 3);
        let resp = IcResp::new(1, digest::DATA, 131072);
        assert_eq!(resp.data_alignment(), 8);
        assert_eq!(&resp.as_bytes()[12..16], &131072u32.to_le_bytes());
        let ch = CommonHeader::new(
            PduType::C2hData,
            PduFlags::LAST_PDU | PduFlags::SUCCESS,
            24,
            4120,
        );
        assert_eq!(ch.as_bytes(), &[7, 0x0c, 24, 24, 0x18, 0x10, 0, 0]);
        assert_eq!(ch.kind(), Some(PduType::C2hData));
        assert_eq!(PduType::from_u8(8), None);
        assert!(PduType::CapsuleResp.has_header_digest());
        assert!(!PduType::CapsuleResp.has_data_digest());
        assert!(!PduType::C2hTermReq.has_header_digest());
        assert_eq!(PduType::CapsuleCmd.header_len(), 72);
        let d = DataHeader {
            cccid: 5,
            ttag: 9,
            datao: 4096,
            datal: 512,
            ..Default::default()
        };
        assert_eq!(&d.as_bytes()[8..20], &[5, 0, 9, 0, 0, 16, 0, 0, 0, 2, 0, 0]);
        assert_eq!(
            FatalErrorStatus::from_u16(3),
            Some(FatalErrorStatus::HeaderDigestError)
        );
        assert_eq!(FatalErrorStatus::from_u16(7), None);
    }

    #[test]
    fn data_pointers() {
        let d = in_capsule(0, 1024);
        assert_eq!(d.to_dptr(), (0, 0x0100_0000_0000_0400));
        assert_eq!(d.kind(), Some(SglDescriptorType::DataBlock));
        assert_eq!(d.subtype(), SGL_SUBTYPE_OFFSET);
        let t = transport_data_block(4096);
        assert_eq!(t.id, 0x5a);
        assert_eq!(t.kind(), Some(SglDescriptorType::TransportDataBlock));
        let (a, b) = t.to_dptr();
        assert_eq!(SglDescriptor::from_dptr(a, b), t);
    }
}
