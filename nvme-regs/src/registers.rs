//! Controller registers (NVMe 1.4 section 3.1): offsets, field accessors and a `#[repr(C)]`
//! register block for volatile access through a BAR mapping.

use volatile_register::{RO, RW, WO};

/// Byte offsets of the controller registers in BAR0.
pub mod offset {
    /// Controller Capabilities (64-bit).
    pub const CAP: usize = 0x00;
    /// Version.
    pub const VS: usize = 0x08;
    /// Interrupt Mask Set.
    pub const INTMS: usize = 0x0c;
    /// Interrupt Mask Clear.
    pub const INTMC: usize = 0x10;
    /// Controller Configuration.
    pub const CC: usize = 0x14;
    /// Controller Status.
    pub const CSTS: usize = 0x1c;
    /// NVM Subsystem Reset.
    pub const NSSR: usize = 0x20;
    /// Admin Queue Attributes.
    pub const AQA: usize = 0x24;
    /// Admin Submission Queue Base Address (64-bit).
    pub const ASQ: usize = 0x28;
    /// Admin Completion Queue Base Address (64-bit).
    pub const ACQ: usize = 0x30;
    /// Controller Memory Buffer Location.
    pub const CMBLOC: usize = 0x38;
    /// Controller Memory Buffer Size.
    pub const CMBSZ: usize = 0x3c;
    /// First doorbell register (admin submission queue tail).
    pub const DOORBELLS: usize = 0x1000;
}

/// Byte offset of the submission queue `qid` tail doorbell for a doorbell stride of
/// `dstrd` (CAP.DSTRD, the stride is `4 << dstrd` bytes).
pub const fn sq_tail_doorbell(qid: u16, dstrd: u8) -> usize {
    offset::DOORBELLS + (2 * qid as usize) * (4usize << dstrd)
}

/// Byte offset of the completion queue `qid` head doorbell for a doorbell stride of `dstrd`.
pub const fn cq_head_doorbell(qid: u16, dstrd: u8) -> usize {
    offset::DOORBELLS + (2 * qid as usize + 1) * (4usize << dstrd)
}

/// Extracts `width` bits of `v` starting at bit `lo`.
const fn bits64(v: u64, lo: u32, width: u32) -> u64 {
    (v >> lo) & ((1u64 << width) - 1)
}

/// Controller Capabilities (CAP, offset 0x00).
#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
pub struct Cap(pub u64);

impl Cap {
    /// Maximum Queue Entries Supported, 0's based (MQES).
    pub const fn mqes(self) -> u16 {
        bits64(self.0, 0, 16) as u16
    }
    /// Maximum number of entries of any queue (MQES + 1).
    pub const fn max_queue_entries(self) -> u32 {
        self.mqes() as u32 + 1
    }
    /// Contiguous Queues Required (CQR).
    pub const fn cqr(self) -> bool {
        bits64(self.0, 16, 1) != 0
    }
    /// Arbitration Mechanism Supported (AMS): bit 0 weighted round robin, bit 1 vendor.
    pub const fn ams(self) -> u8 {
        bits64(self.0, 17, 2) as u8
    }
    /// Timeout (TO) in 500 ms units: worst-case time for CSTS.RDY to change.
    pub const fn to(self) -> u8 {
        bits64(self.0, 24, 8) as u8
    }
    /// CAP.TO in milliseconds.
    pub const fn timeout_ms(self) -> u32 {
        self.to() as u32 * 500
    }
    /// Doorbell Stride (DSTRD): doorbells are `4 << dstrd` bytes apart.
    pub const fn dstrd(self) -> u8 {
        bits64(self.0, 32, 4) as u8
    }
    /// NVM Subsystem Reset Supported (NSSRS).
    pub const fn nssrs(self) -> bool {
        bits64(self.0, 36, 1) != 0
    }
    /// Command Sets Supported (CSS): bit 0 NVM command set, bit 7 admin only.
    pub const fn css(self) -> u8 {
        bits64(self.0, 37, 8) as u8
    }
    /// Boot Partition Support (BPS).
    pub const fn bps(self) -> bool {
        bits64(self.0, 45, 1) != 0
    }
    /// Memory Page Size Minimum (MPSMIN): `2 ^ (12 + mpsmin)` bytes.
    pub const fn mpsmin(self) -> u8 {
        bits64(self.0, 48, 4) as u8
    }
    /// Memory Page Size Maximum (MPSMAX): `2 ^ (12 + mpsmax)` bytes.
    pub const fn mpsmax(self) -> u8 {
        bits64(self.0, 52, 4) as u8
    }
    /// Persistent Memory Region Supported (PMRS).
    pub const fn pmrs(self) -> bool {
        bits64(self.0, 56, 1) != 0
    }
    /// Controller Memory Buffer Supported (CMBS).
    pub const fn cmbs(self) -> bool {
        bits64(self.0, 57, 1) != 0
    }
    /// Smallest memory page size in bytes.
    pub const fn min_page_size(self) -> usize {
        1 << (12 + self.mpsmin() as u32)
    }
    /// Largest memory page size in bytes.
    pub const fn max_page_size(self) -> usize {
        1 << (12 + self.mpsmax() as u32)
    }

    /// Builds a CAP value from its fields (used by controller models and tests).
    #[allow(clippy::too_many_arguments)]
    pub const fn new(
        mqes: u16,
        cqr: bool,
        to: u8,
        dstrd: u8,
        nssrs: bool,
        css: u8,
        mpsmin: u8,
        mpsmax: u8,
    ) -> Cap {
        Cap(mqes as u64
            | (cqr as u64) << 16
            | (to as u64) << 24
            | ((dstrd & 0xf) as u64) << 32
            | (nssrs as u64) << 36
            | (css as u64) << 37
            | ((mpsmin & 0xf) as u64) << 48
            | ((mpsmax & 0xf) as u64) << 52)
    }
}

/// CAP.CSS bit: the NVM command set is supported.
pub const CAP_CSS_NVM: u8 = 1 << 0;

/// Version (VS, offset 0x08).
#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
pub struct Vs(pub u32);

impl Vs {
    /// NVMe 1.4.0.
    pub const V1_4: Vs = Vs::new(1, 4, 0);
    /// Builds a version value.
    pub const fn new(major: u16, minor: u8, tertiary: u8) -> Vs {
        Vs((major as u32) << 16 | (minor as u32) << 8 | tertiary as u32)
    }
    /// Major version number.
    pub const fn major(self) -> u16 {
        (self.0 >> 16) as u16
    }
    /// Minor version number.
    pub const fn minor(self) -> u8 {
        (self.0 >> 8) as u8
    }
    /// Tertiary version number.
    pub const fn tertiary(self) -> u8 {
        self.0 as u8
    }
}

impl core::fmt::Display for Vs {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}.{}", self.major(), self.minor())?;
        if self.tertiary() != 0 {
            write!(f, ".{}", self.tertiary())?;
        }
        Ok(())
    }
}

/// Shutdown notification values for CC.SHN.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum ShutdownNotification {
    /// No notification.
    None = 0,
    /// Normal shutdown.
    Normal = 1,
    /// Abrupt shutdown.
    Abrupt = 2,
}

/// Controller Configuration (CC, offset 0x14).
#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
pub struct Cc(pub u32);

impl Cc {
    /// Enable (EN).
    pub const fn en(self) -> bool {
        self.0 & 1 != 0
    }
    /// I/O Command Set Selected (CSS), 0 = NVM command set.
    pub const fn css(self) -> u8 {
        ((self.0 >> 4) & 0x7) as u8
    }
    /// Memory Page Size (MPS): `2 ^ (12 + mps)` bytes.
    pub const fn mps(self) -> u8 {
        ((self.0 >> 7) & 0xf) as u8
    }
    /// Arbitration Mechanism Selected (AMS).
    pub const fn ams(self) -> u8 {
        ((self.0 >> 11) & 0x7) as u8
    }
    /// Shutdown Notification (SHN).
    pub const fn shn(self) -> u8 {
        ((self.0 >> 14) & 0x3) as u8
    }
    /// I/O Submission Queue Entry Size (IOSQES) as a power of two.
    pub const fn iosqes(self) -> u8 {
        ((self.0 >> 16) & 0xf) as u8
    }
    /// I/O Completion Queue Entry Size (IOCQES) as a power of two.
    pub const fn iocqes(self) -> u8 {
        ((self.0 >> 20) & 0xf) as u8
    }
    /// Returns CC with EN set to `en`.
    pub const fn with_en(self, en: bool) -> Cc {
        Cc((self.0 & !1) | en as u32)
    }
    /// Returns CC with CSS set.
    pub const fn with_css(self, css: u8) -> Cc {
        Cc((self.0 & !(0x7 << 4)) | ((css as u32 & 0x7) << 4))
    }
    /// Returns CC with MPS set.
    pub const fn with_mps(self, mps: u8) -> Cc {
        Cc((self.0 & !(0xf << 7)) | ((mps as u32 & 0xf) << 7))
    }
    /// Returns CC with AMS set.
    pub const fn with_ams(self, ams: u8) -> Cc {
        Cc((self.0 & !(0x7 << 11)) | ((ams as u32 & 0x7) << 11))
    }
    /// Returns CC with SHN set.
    pub const fn with_shn(self, shn: ShutdownNotification) -> Cc {
        Cc((self.0 & !(0x3 << 14)) | ((shn as u32) << 14))
    }
    /// Returns CC with IOSQES set.
    pub const fn with_iosqes(self, v: u8) -> Cc {
        Cc((self.0 & !(0xf << 16)) | ((v as u32 & 0xf) << 16))
    }
    /// Returns CC with IOCQES set.
    pub const fn with_iocqes(self, v: u8) -> Cc {
        Cc((self.0 & !(0xf << 20)) | ((v as u32 & 0xf) << 20))
    }
}

/// Shutdown status values of CSTS.SHST.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ShutdownStatus {
    /// Normal operation.
    Normal,
    /// Shutdown processing occurring.
    Occurring,
    /// Shutdown processing complete.
    Complete,
    /// Reserved value 3.
    Reserved,
}

/// Controller Status (CSTS, offset 0x1c).
#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
pub struct Csts(pub u32);

impl Csts {
    /// Ready bit mask.
    pub const RDY: u32 = 1 << 0;
    /// Controller Fatal Status bit mask.
    pub const CFS: u32 = 1 << 1;
    /// NVM Subsystem Reset Occurred bit mask.
    pub const NSSRO: u32 = 1 << 4;
    /// Processing Paused bit mask.
    pub const PP: u32 = 1 << 5;

    /// Ready (RDY).
    pub const fn rdy(self) -> bool {
        self.0 & Self::RDY != 0
    }
    /// Controller Fatal Status (CFS).
    pub const fn cfs(self) -> bool {
        self.0 & Self::CFS != 0
    }
    /// Shutdown Status (SHST).
    pub const fn shst(self) -> ShutdownStatus {
        match (self.0 >> 2) & 0x3 {
            0 => ShutdownStatus::Normal,
            1 => ShutdownStatus::Occurring,
            2 => ShutdownStatus::Complete,
            _ => ShutdownStatus::Reserved,
        }
    }
    /// Builds CSTS with the given SHST value (0..=3) and other bits from `self`.
    pub const fn with_shst(self, shst: u32) -> Csts {
        Csts((self.0 & !(0x3 << 2)) | ((shst & 0x3) << 2))
    }
    /// Is an all-ones read (a surprise-removed PCIe device reads as 0xffff_ffff)?
    pub const fn is_all_ones(self) -> bool {
        self.0 == u32::MAX
    }
}

/// Admin Queue Attributes (AQA, offset 0x24): 0's based queue sizes.
#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
pub struct Aqa(pub u32);

impl Aqa {
    /// Builds AQA from queue sizes in entries (not 0's based).
    pub const fn new(sq_entries: u16, cq_entries: u16) -> Aqa {
        Aqa(((sq_entries as u32 - 1) & 0xfff) | (((cq_entries as u32 - 1) & 0xfff) << 16))
    }
    /// Admin submission queue size in entries.
    pub const fn asqs(self) -> u32 {
        (self.0 & 0xfff) + 1
    }
    /// Admin completion queue size in entries.
    pub const fn acqs(self) -> u32 {
        ((self.0 >> 16) & 0xfff) + 1
    }
}

/// Largest admin queue size allowed by AQA (4096 entries).
pub const MAX_ADMIN_QUEUE_ENTRIES: u16 = 4096;

/// The controller register block at the start of BAR0, for volatile access through a mapping.
///
/// Doorbells follow at [`offset::DOORBELLS`]; their positions depend on CAP.DSTRD, so they are
/// not fields of this struct (see [`sq_tail_doorbell`] and [`cq_head_doorbell`]).
#[repr(C)]
pub struct RegisterBlock {
    /// CAP.
    pub cap: RO<u64>,
    /// VS.
    pub vs: RO<u32>,
    /// INTMS.
    pub intms: WO<u32>,
    /// INTMC.
    pub intmc: WO<u32>,
    /// CC.
    pub cc: RW<u32>,
    _rsvd18: u32,
    /// CSTS.
    pub csts: RO<u32>,
    /// NSSR.
    pub nssr: RW<u32>,
    /// AQA.
    pub aqa: RW<u32>,
    /// ASQ.
    pub asq: RW<u64>,
    /// ACQ.
    pub acq: RW<u64>,
    /// CMBLOC.
    pub cmbloc: RO<u32>,
    /// CMBSZ.
    pub cmbsz: RO<u32>,
}

crate::assert_offset!(RegisterBlock, vs, offset::VS);
crate::assert_offset!(RegisterBlock, intms, offset::INTMS);
crate::assert_offset!(RegisterBlock, intmc, offset::INTMC);
crate::assert_offset!(RegisterBlock, cc, offset::CC);
crate::assert_offset!(RegisterBlock, csts, offset::CSTS);
crate::assert_offset!(RegisterBlock, nssr, offset::NSSR);
crate::assert_offset!(RegisterBlock, aqa, offset::AQA);
crate::assert_offset!(RegisterBlock, asq, offset::ASQ);
crate::assert_offset!(RegisterBlock, acq, offset::ACQ);
crate::assert_offset!(RegisterBlock, cmbloc, offset::CMBLOC);
crate::assert_offset!(RegisterBlock, cmbsz, offset::CMBSZ);
crate::assert_size!(RegisterBlock, 0x40);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_fields_decode() {
        // QEMU's controller: MQES 2047, CQR, TO 15, DSTRD 0, CSS NVM, MPSMIN 0, MPSMAX 4.
        let cap = Cap(0x0040_0020_0f01_07ff);
        assert_eq!(cap.mqes(), 2047);
        assert_eq!(cap.max_queue_entries(), 2048);
        assert!(cap.cqr());
        assert_eq!(cap.to(), 15);
        assert_eq!(cap.timeout_ms(), 7500);
        assert_eq!(cap.dstrd(), 0);
        assert!(!cap.nssrs());
        assert_eq!(cap.css(), CAP_CSS_NVM);
        assert_eq!(cap.mpsmin(), 0);
        assert_eq!(cap.mpsmax(), 4);
        assert_eq!(cap.max_page_size(), 65536);
        assert_eq!(Cap::new(2047, true, 15, 0, false, 1, 0, 4), cap);
    }

    #[test]
    fn cc_round_trips() {
        let cc = Cc(0)
            .with_en(true)
            .with_css(0)
            .with_mps(0)
            .with_iosqes(6)
            .with_iocqes(4)
            .with_shn(ShutdownNotification::Normal);
        assert_eq!(cc.0, 0x0046_4001);
        assert!(cc.en());
        assert_eq!(cc.iosqes(), 6);
        assert_eq!(cc.iocqes(), 4);
        assert_eq!(cc.shn(), 1);
        assert!(!cc.with_en(false).en());
    }

    #[test]
    fn csts_and_doorbells() {
        let csts = Csts(0b1011);
        assert!(csts.rdy());
        assert!(csts.cfs());
        assert_eq!(csts.shst(), ShutdownStatus::Complete);
        assert_eq!(sq_tail_doorbell(0, 0), 0x1000);
        assert_eq!(cq_head_doorbell(0, 0), 0x1004);
        assert_eq!(sq_tail_doorbell(3, 0), 0x1018);
        assert_eq!(cq_head_doorbell(1, 2), 0x1000 + 3 * 16);
        assert_eq!(Aqa::new(32, 32).0, 0x001f_001f);
        assert_eq!(Vs(0x0001_0400), Vs::V1_4);
    }
}
