//! Builders for admin and NVM commands.
//!
//! A [`Command`] is a submission entry without its command identifier and data pointer; the
//! queue pair fills those in when it submits the command with its data buffer.

use nvme_regs::features::{FeatureSelect, NumberOfQueues};
use nvme_regs::opcode::{AdminOpcode, DataDirection, NvmOpcode};
use nvme_regs::SubmissionEntry;

/// A command ready to submit: everything but the CID and the PRPs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Command(pub SubmissionEntry);

impl Command {
    /// A command with `opcode` and `nsid`, all other fields zero.
    pub const fn new(opcode: u8, nsid: u32) -> Command {
        Command(SubmissionEntry {
            opcode,
            flags: 0,
            cid: 0,
            nsid,
            cdw2: 0,
            cdw3: 0,
            mptr: 0,
            prp1: 0,
            prp2: 0,
            cdw10: 0,
            cdw11: 0,
            cdw12: 0,
            cdw13: 0,
            cdw14: 0,
            cdw15: 0,
        })
    }
    /// The opcode.
    pub const fn opcode(&self) -> u8 {
        self.0.opcode
    }
    /// The direction of the data transfer its opcode implies.
    pub const fn direction(&self) -> DataDirection {
        DataDirection::of_opcode(self.0.opcode)
    }
    /// Sets CDW10.
    pub const fn cdw10(mut self, v: u32) -> Command {
        self.0.cdw10 = v;
        self
    }
    /// Sets CDW11.
    pub const fn cdw11(mut self, v: u32) -> Command {
        self.0.cdw11 = v;
        self
    }
    /// Sets CDW12.
    pub const fn cdw12(mut self, v: u32) -> Command {
        self.0.cdw12 = v;
        self
    }
    /// Sets CDW13.
    pub const fn cdw13(mut self, v: u32) -> Command {
        self.0.cdw13 = v;
        self
    }
    /// Sets CDW14.
    pub const fn cdw14(mut self, v: u32) -> Command {
        self.0.cdw14 = v;
        self
    }
    /// Sets CDW15.
    pub const fn cdw15(mut self, v: u32) -> Command {
        self.0.cdw15 = v;
        self
    }

    // ----- admin commands -----

    /// Identify with the given CNS, NSID and controller id (4096 bytes of data).
    pub const fn identify(cns: u8, nsid: u32, cntid: u16) -> Command {
        Command::new(AdminOpcode::Identify as u8, nsid).cdw10(cns as u32 | (cntid as u32) << 16)
    }
    /// Get Log Page of `len_bytes` (a multiple of 4) from byte `offset` of log `lid`.
    pub const fn get_log_page(lid: u8, nsid: u32, len_bytes: u32, offset: u64) -> Command {
        let numd = (len_bytes / 4).saturating_sub(1);
        Command::new(AdminOpcode::GetLogPage as u8, nsid)
            .cdw10(lid as u32 | (numd & 0xffff) << 16)
            .cdw11(numd >> 16)
            .cdw12(offset as u32)
            .cdw13((offset >> 32) as u32)
    }
    /// Get Features.
    pub const fn get_features(fid: u8, sel: FeatureSelect, nsid: u32, cdw11: u32) -> Command {
        Command::new(AdminOpcode::GetFeatures as u8, nsid)
            .cdw10(fid as u32 | (sel as u32) << 8)
            .cdw11(cdw11)
    }
    /// Set Features; `save` asks the controller to keep the value across resets.
    pub const fn set_features(fid: u8, nsid: u32, cdw11: u32, save: bool) -> Command {
        Command::new(AdminOpcode::SetFeatures as u8, nsid)
            .cdw10(fid as u32 | (save as u32) << 31)
            .cdw11(cdw11)
    }
    /// Set Features / Number of Queues.
    pub const fn set_number_of_queues(q: NumberOfQueues) -> Command {
        Command::set_features(
            nvme_regs::features::fid::NUMBER_OF_QUEUES,
            0,
            q.to_dword(),
            false,
        )
    }
    /// Create I/O Completion Queue `qid` of `entries` at `iova`, physically contiguous,
    /// interrupts disabled (the driver polls).
    pub const fn create_io_cq(qid: u16, entries: u32, iova: u64) -> Command {
        let mut c = Command::new(AdminOpcode::CreateIoCq as u8, 0)
            .cdw10(qid as u32 | ((entries - 1) & 0xffff) << 16)
            .cdw11(1); // PC=1, IEN=0, IV=0
        c.0.prp1 = iova;
        c
    }
    /// Create I/O Completion Queue `qid` as [`create_io_cq`](Self::create_io_cq) does, but
    /// with interrupts enabled (IEN) on interrupt vector `vector` (IV: the MSI-X table
    /// entry the controller signals when it posts to this queue).
    pub const fn create_io_cq_with_interrupt(
        qid: u16,
        entries: u32,
        iova: u64,
        vector: u16,
    ) -> Command {
        Command::create_io_cq(qid, entries, iova).cdw11(1 | 1 << 1 | (vector as u32) << 16)
    }
    /// Create I/O Submission Queue `qid` of `entries` at `iova`, bound to completion queue
    /// `cqid`, physically contiguous, medium priority.
    pub const fn create_io_sq(qid: u16, entries: u32, iova: u64, cqid: u16) -> Command {
        let mut c = Command::new(AdminOpcode::CreateIoSq as u8, 0)
            .cdw10(qid as u32 | ((entries - 1) & 0xffff) << 16)
            .cdw11(1 | (cqid as u32) << 16);
        c.0.prp1 = iova;
        c
    }
    /// Delete I/O Submission Queue.
    pub const fn delete_io_sq(qid: u16) -> Command {
        Command::new(AdminOpcode::DeleteIoSq as u8, 0).cdw10(qid as u32)
    }
    /// Delete I/O Completion Queue.
    pub const fn delete_io_cq(qid: u16) -> Command {
        Command::new(AdminOpcode::DeleteIoCq as u8, 0).cdw10(qid as u32)
    }
    /// Abort the command `cid` of submission queue `sqid`.
    pub const fn abort(sqid: u16, cid: u16) -> Command {
        Command::new(AdminOpcode::Abort as u8, 0).cdw10(sqid as u32 | (cid as u32) << 16)
    }
    /// Doorbell Buffer Config: the shadow doorbell buffer at `shadow_iova` and the EventIdx
    /// buffer at `eventidx_iova` (one memory page each, page aligned).
    pub const fn doorbell_buffer_config(shadow_iova: u64, eventidx_iova: u64) -> Command {
        let mut c = Command::new(AdminOpcode::DoorbellBufferConfig as u8, 0);
        c.0.prp1 = shadow_iova;
        c.0.prp2 = eventidx_iova;
        c
    }
    /// Asynchronous Event Request.
    pub const fn async_event_request() -> Command {
        Command::new(AdminOpcode::AsyncEventRequest as u8, 0)
    }

    // ----- NVM commands -----

    const fn rw(op: NvmOpcode, nsid: u32, slba: u64, blocks: u32) -> Command {
        Command::new(op as u8, nsid)
            .cdw10(slba as u32)
            .cdw11((slba >> 32) as u32)
            .cdw12((blocks - 1) & 0xffff)
    }
    /// Read `blocks` (1..=65536) logical blocks from `slba`.
    pub const fn read(nsid: u32, slba: u64, blocks: u32) -> Command {
        Command::rw(NvmOpcode::Read, nsid, slba, blocks)
    }
    /// Write `blocks` (1..=65536) logical blocks at `slba`.
    pub const fn write(nsid: u32, slba: u64, blocks: u32) -> Command {
        Command::rw(NvmOpcode::Write, nsid, slba, blocks)
    }
    /// Compare `blocks` (1..=65536) logical blocks at `slba` with the data buffer.
    pub const fn compare(nsid: u32, slba: u64, blocks: u32) -> Command {
        Command::rw(NvmOpcode::Compare, nsid, slba, blocks)
    }
    /// Write Zeroes to `blocks` (1..=65536) logical blocks at `slba`.
    pub const fn write_zeroes(nsid: u32, slba: u64, blocks: u32) -> Command {
        Command::rw(NvmOpcode::WriteZeroes, nsid, slba, blocks)
    }
    /// Flush the volatile write cache of namespace `nsid`.
    pub const fn flush(nsid: u32) -> Command {
        Command::new(NvmOpcode::Flush as u8, nsid)
    }
    /// Dataset Management with `ranges` (1..=256) range descriptors in the data buffer and
    /// the Deallocate attribute.
    pub const fn deallocate(nsid: u32, ranges: u32) -> Command {
        Command::new(NvmOpcode::DatasetManagement as u8, nsid)
            .cdw10((ranges - 1) & 0xff)
            .cdw11(1 << 2)
    }
    /// Sets the starting LBA and block count of a read/write-like command (used when a
    /// transfer is split).
    pub const fn with_lba_range(mut self, slba: u64, blocks: u32) -> Command {
        self.0.cdw10 = slba as u32;
        self.0.cdw11 = (slba >> 32) as u32;
        self.0.cdw12 = (self.0.cdw12 & !0xffff) | ((blocks - 1) & 0xffff);
        self
    }
    /// Does this command carry an LBA range in CDW10-12 that may be split?
    pub const fn is_splittable(&self) -> bool {
        matches!(
            NvmOpcode::from_u8(self.0.opcode),
            Some(NvmOpcode::Read | NvmOpcode::Write | NvmOpcode::Compare)
        )
    }
}

/// A Dataset Management range descriptor (16 bytes).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    zerocopy::IntoBytes,
    zerocopy::FromBytes,
    zerocopy::Immutable,
)]
#[repr(C)]
pub struct DsmRange {
    /// Context attributes.
    pub attributes: u32,
    /// Length in logical blocks.
    pub blocks: u32,
    /// Starting LBA.
    pub slba: u64,
}
nvme_regs::assert_size!(DsmRange, 16);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings() {
        let c = Command::read(1, 0x1_0000_0002, 8);
        assert_eq!(
            (c.0.opcode, c.0.nsid, c.0.cdw10, c.0.cdw11, c.0.cdw12),
            (2, 1, 2, 1, 7)
        );
        let c = c.with_lba_range(5, 65536);
        assert_eq!((c.0.cdw10, c.0.cdw11, c.0.cdw12), (5, 0, 0xffff));
        let c = Command::identify(2, 0, 0);
        assert_eq!((c.0.opcode, c.0.cdw10), (6, 2));
        let c = Command::get_log_page(2, 0xffff_ffff, 512, 0);
        assert_eq!(c.0.cdw10, 0x007f_0002);
        let c = Command::create_io_cq(3, 256, 0x8000);
        assert_eq!(
            (c.0.opcode, c.0.cdw10, c.0.cdw11, c.0.prp1),
            (5, 0x00ff_0003, 1, 0x8000)
        );
        let c = Command::create_io_sq(3, 256, 0x9000, 3);
        assert_eq!(
            (c.0.opcode, c.0.cdw10, c.0.cdw11),
            (1, 0x00ff_0003, 0x0003_0001)
        );
        let c = Command::set_number_of_queues(NumberOfQueues { sq: 4, cq: 4 });
        assert_eq!((c.0.opcode, c.0.cdw10, c.0.cdw11), (9, 7, 0x0003_0003));
        let c = Command::deallocate(1, 2);
        assert_eq!((c.0.opcode, c.0.cdw10, c.0.cdw11), (9, 1, 4));
        assert!(Command::write(1, 0, 1).is_splittable());
        assert!(!Command::write_zeroes(1, 0, 1).is_splittable());
        let c = Command::get_features(4, FeatureSelect::Default, 0, 0);
        assert_eq!(c.0.cdw10, 0x104);
        assert_eq!(Command::abort(1, 0x42).0.cdw10, 0x0042_0001);
    }

    #[test]
    fn create_io_cq_with_interrupt_sets_ien_and_iv() {
        let c = Command::create_io_cq_with_interrupt(3, 256, 0x8000, 17);
        assert_eq!(c.0.cdw10, 3 | 255 << 16);
        assert_eq!(c.0.cdw11, 1 | 2 | 17 << 16);
        assert_eq!(c.0.prp1, 0x8000);
        assert_eq!(Command::create_io_cq(3, 256, 0x8000).0.cdw11 & 2, 0);
    }
}
