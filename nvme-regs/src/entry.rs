//! Submission (64-byte) and completion (16-byte) queue entries.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::status::Status;

/// Data pointer transfer selector in CDW0 bits 15:14 (PSDT): PRPs are used.
pub const PSDT_PRP: u8 = 0;
/// PSDT: SGLs are used for the data (MPTR, if used, is a contiguous metadata buffer).
pub const PSDT_SGL: u8 = 1;

/// A 64-byte submission queue entry (NVMe 1.4 figure 105).
#[derive(
    Clone, Copy, Default, PartialEq, Eq, Debug, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct SubmissionEntry {
    /// Opcode (CDW0 bits 7:0).
    pub opcode: u8,
    /// Fused operation (bits 1:0) and PSDT (bits 7:6) (CDW0 bits 15:8).
    pub flags: u8,
    /// Command identifier (CDW0 bits 31:16).
    pub cid: u16,
    /// Namespace identifier.
    pub nsid: u32,
    /// Command dword 2.
    pub cdw2: u32,
    /// Command dword 3.
    pub cdw3: u32,
    /// Metadata pointer.
    pub mptr: u64,
    /// PRP entry 1 (data pointer, first half).
    pub prp1: u64,
    /// PRP entry 2 (data pointer, second half).
    pub prp2: u64,
    /// Command dword 10.
    pub cdw10: u32,
    /// Command dword 11.
    pub cdw11: u32,
    /// Command dword 12.
    pub cdw12: u32,
    /// Command dword 13.
    pub cdw13: u32,
    /// Command dword 14.
    pub cdw14: u32,
    /// Command dword 15.
    pub cdw15: u32,
}

crate::assert_size!(SubmissionEntry, 64);
crate::assert_offset!(SubmissionEntry, nsid, 4);
crate::assert_offset!(SubmissionEntry, mptr, 16);
crate::assert_offset!(SubmissionEntry, prp1, 24);
crate::assert_offset!(SubmissionEntry, prp2, 32);
crate::assert_offset!(SubmissionEntry, cdw10, 40);
crate::assert_offset!(SubmissionEntry, cdw15, 60);

impl SubmissionEntry {
    /// Starting LBA of an NVM command (CDW10-11).
    pub const fn slba(&self) -> u64 {
        self.cdw10 as u64 | (self.cdw11 as u64) << 32
    }
    /// Number of logical blocks of an NVM read/write/compare/write zeroes (CDW12 bits 15:0, 0's
    /// based), as a count.
    pub const fn nlb(&self) -> u32 {
        (self.cdw12 & 0xffff) + 1
    }
    /// Data pointer selector (PSDT).
    pub const fn psdt(&self) -> u8 {
        self.flags >> 6
    }
    /// Sets the data pointer selector (PSDT, [`PSDT_PRP`] or [`PSDT_SGL`]).
    pub const fn set_psdt(&mut self, psdt: u8) {
        self.flags = (self.flags & 0x3f) | (psdt & 3) << 6;
    }
    /// Fused operation bits.
    pub const fn fuse(&self) -> u8 {
        self.flags & 0x3
    }
}

/// A 16-byte completion queue entry (NVMe 1.4 figure 121).
#[derive(
    Clone, Copy, Default, PartialEq, Eq, Debug, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct CompletionEntry {
    /// Command specific dword 0.
    pub dw0: u32,
    /// Command specific dword 1 (reserved for most commands).
    pub dw1: u32,
    /// Submission queue head pointer.
    pub sq_head: u16,
    /// Submission queue identifier.
    pub sq_id: u16,
    /// Command identifier.
    pub cid: u16,
    /// Phase tag (bit 0) and status field (bits 15:1).
    pub status: u16,
}

crate::assert_size!(CompletionEntry, 16);
crate::assert_offset!(CompletionEntry, sq_head, 8);
crate::assert_offset!(CompletionEntry, cid, 12);
crate::assert_offset!(CompletionEntry, status, 14);

impl CompletionEntry {
    /// The phase tag.
    pub const fn phase(&self) -> bool {
        self.status & 1 != 0
    }
    /// The decoded status field.
    pub const fn status(&self) -> Status {
        Status::from_completion_word(self.status)
    }
    /// Dword 3 (CID in bits 15:0, phase + status in bits 31:16), as the device writes it.
    pub const fn dw3(&self) -> u32 {
        self.cid as u32 | (self.status as u32) << 16
    }
    /// Splits dword 3 into (cid, status word).
    pub const fn split_dw3(dw3: u32) -> (u16, u16) {
        (dw3 as u16, (dw3 >> 16) as u16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{GenericStatus, StatusCodeType};

    #[test]
    fn submission_entry_decodes_from_bytes() {
        let mut b = [0u8; 64];
        b[0] = 0x02; // read
        b[2..4].copy_from_slice(&0x1234u16.to_le_bytes());
        b[4..8].copy_from_slice(&7u32.to_le_bytes());
        b[24..32].copy_from_slice(&0xdead_b000u64.to_le_bytes());
        b[32..40].copy_from_slice(&0xbeef_0000u64.to_le_bytes());
        b[40..44].copy_from_slice(&0x8000_0001u32.to_le_bytes());
        b[44..48].copy_from_slice(&0x2u32.to_le_bytes());
        b[48..52].copy_from_slice(&7u32.to_le_bytes());
        let e = SubmissionEntry::read_from_bytes(&b[..]).unwrap();
        assert_eq!(e.opcode, 0x02);
        assert_eq!(e.cid, 0x1234);
        assert_eq!(e.nsid, 7);
        assert_eq!(e.prp1, 0xdead_b000);
        assert_eq!(e.prp2, 0xbeef_0000);
        assert_eq!(e.slba(), 0x2_8000_0001);
        assert_eq!(e.nlb(), 8);
        assert_eq!(e.as_bytes(), &b[..]);
    }

    #[test]
    fn completion_entry_decodes_from_bytes() {
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&0x0003_0003u32.to_le_bytes());
        b[8..10].copy_from_slice(&17u16.to_le_bytes());
        b[10..12].copy_from_slice(&1u16.to_le_bytes());
        b[12..14].copy_from_slice(&0x4242u16.to_le_bytes());
        // phase 1, SCT 0, SC 0x0b (invalid namespace), DNR.
        let status: u16 = 1 | (0x0b << 1) | (1 << 15);
        b[14..16].copy_from_slice(&status.to_le_bytes());
        let c = CompletionEntry::read_from_bytes(&b[..]).unwrap();
        assert_eq!(c.dw0, 0x0003_0003);
        assert_eq!(c.sq_head, 17);
        assert_eq!(c.sq_id, 1);
        assert_eq!(c.cid, 0x4242);
        assert!(c.phase());
        let s = c.status();
        assert_eq!(s.sct(), StatusCodeType::Generic);
        assert_eq!(s.sc(), GenericStatus::InvalidNamespaceOrFormat as u8);
        assert!(s.dnr());
        assert!(!s.more());
        assert_eq!(CompletionEntry::split_dw3(c.dw3()), (0x4242, status));
    }
}
