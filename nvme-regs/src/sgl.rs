//! Scatter Gather Lists (NVMe 1.4 section 4.4): the 16-byte SGL descriptor and the SGL
//! Support field (SGLS) of Identify Controller.
//!
//! A command whose PSDT is [`PSDT_SGL`](crate::entry::PSDT_SGL) carries one descriptor in its
//! data pointer (the PRP1/PRP2 bytes): a Data Block for one contiguous buffer, or a Segment /
//! Last Segment pointing to a list of descriptors in host memory. A segment's last
//! descriptor may be a Segment or Last Segment pointing to the next list; a Last Segment's
//! list holds data descriptors only.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// SGL descriptor types (the SGL Identifier's bits 7:4, NVMe 1.4 figure 114).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SglDescriptorType {
    /// A contiguous data buffer.
    DataBlock = 0x0,
    /// Data to discard (reads) or to skip.
    BitBucket = 0x1,
    /// A list of descriptors that is not the last one.
    Segment = 0x2,
    /// The last list of descriptors (data descriptors only).
    LastSegment = 0x3,
    /// A data block with a key (NVMe over Fabrics).
    KeyedDataBlock = 0x4,
    /// A transport-specific data block (NVMe over Fabrics).
    TransportDataBlock = 0x5,
}

impl SglDescriptorType {
    /// The type of an SGL Identifier's bits 7:4; `None` for reserved and vendor types.
    pub const fn from_u8(v: u8) -> Option<SglDescriptorType> {
        Some(match v {
            0x0 => SglDescriptorType::DataBlock,
            0x1 => SglDescriptorType::BitBucket,
            0x2 => SglDescriptorType::Segment,
            0x3 => SglDescriptorType::LastSegment,
            0x4 => SglDescriptorType::KeyedDataBlock,
            0x5 => SglDescriptorType::TransportDataBlock,
            _ => return None,
        })
    }
}

/// SGL descriptor sub type (the SGL Identifier's bits 3:0): the Address field is a memory
/// address (the only sub type NVMe over PCIe uses).
pub const SGL_SUBTYPE_ADDRESS: u8 = 0x0;
/// SGL descriptor sub type: the Address field is an offset (NVMe over Fabrics).
pub const SGL_SUBTYPE_OFFSET: u8 = 0x1;

/// A 16-byte SGL descriptor (NVMe 1.4 figures 115-119, as used by NVMe over PCIe).
#[derive(
    Clone, Copy, Default, PartialEq, Eq, Debug, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct SglDescriptor {
    /// Address of the data block or of the segment.
    pub address: u64,
    /// Length in bytes of the data block, or of the segment (a multiple of 16).
    pub length: u32,
    /// Reserved (type specific in the Keyed Data Block of NVMe over Fabrics).
    pub reserved: [u8; 3],
    /// SGL Identifier: descriptor type in bits 7:4, sub type in bits 3:0.
    pub id: u8,
}
crate::assert_size!(SglDescriptor, 16);
crate::assert_offset!(SglDescriptor, length, 8);
crate::assert_offset!(SglDescriptor, id, 15);

impl SglDescriptor {
    /// Bytes of one descriptor.
    pub const SIZE: usize = 16;

    const fn with(kind: SglDescriptorType, address: u64, length: u32) -> SglDescriptor {
        SglDescriptor {
            address,
            length,
            reserved: [0; 3],
            id: (kind as u8) << 4 | SGL_SUBTYPE_ADDRESS,
        }
    }
    /// A Data Block descriptor: `length` bytes at `address`.
    pub const fn data_block(address: u64, length: u32) -> SglDescriptor {
        Self::with(SglDescriptorType::DataBlock, address, length)
    }
    /// A Segment descriptor: `descriptors` descriptors at `address`, more lists follow.
    pub const fn segment(address: u64, descriptors: u32) -> SglDescriptor {
        Self::with(
            SglDescriptorType::Segment,
            address,
            descriptors * Self::SIZE as u32,
        )
    }
    /// A Last Segment descriptor: `descriptors` data descriptors at `address`.
    pub const fn last_segment(address: u64, descriptors: u32) -> SglDescriptor {
        Self::with(
            SglDescriptorType::LastSegment,
            address,
            descriptors * Self::SIZE as u32,
        )
    }
    /// The descriptor type (`None` for reserved or vendor specific types).
    pub const fn kind(&self) -> Option<SglDescriptorType> {
        SglDescriptorType::from_u8(self.id >> 4)
    }
    /// The descriptor sub type.
    pub const fn subtype(&self) -> u8 {
        self.id & 0xf
    }
    /// The descriptor as the two data pointer words of a submission entry (PRP1, PRP2).
    pub const fn to_dptr(&self) -> (u64, u64) {
        (self.address, self.length as u64 | (self.id as u64) << 56)
    }
    /// The descriptor in a submission entry's data pointer words (PRP1, PRP2).
    pub const fn from_dptr(dptr1: u64, dptr2: u64) -> SglDescriptor {
        let b = dptr2.to_le_bytes();
        SglDescriptor {
            address: dptr1,
            length: dptr2 as u32,
            reserved: [b[4], b[5], b[6]],
            id: b[7],
        }
    }
}

/// Identify Controller SGLS bits 1:0: how (and whether) the NVM command set supports SGLs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SglSupport {
    /// SGLs are not supported (00b).
    None,
    /// Supported, no alignment or granularity requirement for Data Blocks (01b).
    Unaligned,
    /// Supported, Data Blocks dword aligned with a dword granularity (10b).
    DwordAligned,
    /// The reserved value 11b.
    Reserved,
}

/// The SGL Support field (SGLS) of Identify Controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sgls(pub u32);

impl Sgls {
    /// Bit 16: the SGL Bit Bucket descriptor is supported.
    pub const BIT_BUCKET: u32 = 1 << 16;
    /// Bit 18: an SGL whose data blocks are longer than the transfer is accepted.
    pub const LONGER_THAN_TRANSFER: u32 = 1 << 18;
    /// Bit 20: the Address field of a data block may be an offset (NVMe over Fabrics:
    /// in-capsule data).
    pub const OFFSET: u32 = 1 << 20;
    /// Bit 21: the Transport SGL Data Block descriptor is supported (NVMe over Fabrics).
    pub const TRANSPORT_DATA_BLOCK: u32 = 1 << 21;

    /// Bits 1:0.
    pub const fn support(self) -> SglSupport {
        match self.0 & 3 {
            0 => SglSupport::None,
            1 => SglSupport::Unaligned,
            2 => SglSupport::DwordAligned,
            _ => SglSupport::Reserved,
        }
    }
    /// Does the controller take SGLs for NVM commands (bits 1:0 are 01b or 10b)?
    pub const fn supported(self) -> bool {
        matches!(
            self.support(),
            SglSupport::Unaligned | SglSupport::DwordAligned
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_encode_type_and_length() {
        let d = SglDescriptor::data_block(0x1234_5678_9000, 4096);
        assert_eq!(d.kind(), Some(SglDescriptorType::DataBlock));
        assert_eq!(d.id, 0x00);
        let (a, b) = d.to_dptr();
        assert_eq!(a, 0x1234_5678_9000);
        assert_eq!(b, 4096);
        assert_eq!(SglDescriptor::from_dptr(a, b), d);
        let l = SglDescriptor::last_segment(0x2000, 3);
        assert_eq!(l.id, 0x30);
        assert_eq!(l.length, 48);
        assert_eq!(l.to_dptr().1 >> 56, 0x30);
        assert_eq!(SglDescriptor::segment(0x2000, 2).id, 0x20);
        assert_eq!(l.as_bytes()[15], 0x30);
        assert_eq!(&l.as_bytes()[8..12], &48u32.to_le_bytes());
        assert_eq!(SglDescriptorType::from_u8(0x6), None);
        assert_eq!(SglDescriptorType::from_u8(0xf), None);
    }

    #[test]
    fn sgls_support_field() {
        assert!(!Sgls(0).supported());
        assert!(Sgls(1).supported());
        assert_eq!(
            Sgls(2 | Sgls::BIT_BUCKET).support(),
            SglSupport::DwordAligned
        );
        assert!(!Sgls(3).supported());
        assert!(!Sgls(Sgls::BIT_BUCKET).supported());
    }
}
