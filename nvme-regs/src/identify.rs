//! Identify data structures (CNS 00h, 01h, 02h) and the values that describe them.

use bitflags::bitflags;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Controller or Namespace Structure (CNS) values of the Identify command.
pub mod cns {
    /// Identify Namespace data structure for the given NSID.
    pub const NAMESPACE: u8 = 0x00;
    /// Identify Controller data structure.
    pub const CONTROLLER: u8 = 0x01;
    /// Active namespace ID list (NSIDs greater than the given NSID).
    pub const ACTIVE_NAMESPACE_LIST: u8 = 0x02;
    /// Namespace identification descriptor list.
    pub const NS_ID_DESCRIPTORS: u8 = 0x03;
    /// Allocated namespace ID list (NSIDs greater than the given NSID), attached or not;
    /// controllers with Namespace Management (OACS bit 3).
    pub const ALLOCATED_NAMESPACE_LIST: u8 = 0x10;
    /// Identify Namespace data structure of an allocated NSID, attached or not (Namespace
    /// Management).
    pub const ALLOCATED_NAMESPACE: u8 = 0x11;
    /// Controller list of the controllers a namespace is attached to (Namespace Management).
    pub const NAMESPACE_CONTROLLER_LIST: u8 = 0x12;
    /// Controller list of the NVM subsystem (Namespace Management).
    pub const CONTROLLER_LIST: u8 = 0x13;
}

/// Namespace Identifier Types (NIDT) of the Namespace Identification Descriptor list
/// (Identify CNS 03h): each descriptor is NIDT, NIDL, two reserved bytes, then NIDL bytes.
pub mod nidt {
    /// IEEE Extended Unique Identifier, 8 bytes.
    pub const EUI64: u8 = 0x01;
    /// Namespace Globally Unique Identifier, 16 bytes.
    pub const NGUID: u8 = 0x02;
    /// Namespace UUID, 16 bytes.
    pub const UUID: u8 = 0x03;
    /// Command Set Identifier, 1 byte.
    pub const CSI: u8 = 0x04;
}

/// Size of every Identify data structure.
pub const IDENTIFY_DATA_SIZE: usize = 4096;

bitflags! {
    /// Optional Admin Command Support (OACS).
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    pub struct Oacs: u16 {
        /// Security Send / Receive.
        const SECURITY = 1 << 0;
        /// Format NVM.
        const FORMAT_NVM = 1 << 1;
        /// Firmware Commit / Image Download.
        const FIRMWARE = 1 << 2;
        /// Namespace Management.
        const NS_MANAGEMENT = 1 << 3;
        /// Device Self-test.
        const SELF_TEST = 1 << 4;
        /// Directives.
        const DIRECTIVES = 1 << 5;
        /// NVMe-MI Send / Receive.
        const NVME_MI = 1 << 6;
        /// Virtualization Management.
        const VIRTUALIZATION = 1 << 7;
        /// Doorbell Buffer Config.
        const DOORBELL_BUFFER_CONFIG = 1 << 8;
        /// Get LBA Status.
        const GET_LBA_STATUS = 1 << 9;
    }
}

bitflags! {
    /// Optional NVM Command Support (ONCS).
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    pub struct Oncs: u16 {
        /// Compare.
        const COMPARE = 1 << 0;
        /// Write Uncorrectable.
        const WRITE_UNCORRECTABLE = 1 << 1;
        /// Dataset Management.
        const DATASET_MANAGEMENT = 1 << 2;
        /// Write Zeroes.
        const WRITE_ZEROES = 1 << 3;
        /// Save field in Set / Get Features.
        const SAVE_SELECT = 1 << 4;
        /// Reservations.
        const RESERVATIONS = 1 << 5;
        /// Timestamp feature.
        const TIMESTAMP = 1 << 6;
        /// Verify.
        const VERIFY = 1 << 7;
    }
}

bitflags! {
    /// Log Page Attributes (LPA).
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    pub struct Lpa: u8 {
        /// SMART / Health log page per namespace.
        const SMART_PER_NAMESPACE = 1 << 0;
        /// Commands Supported and Effects log page.
        const COMMANDS_EFFECTS = 1 << 1;
        /// Extended data for Get Log Page (NUMDU, offsets).
        const EXTENDED_DATA = 1 << 2;
        /// Telemetry logs.
        const TELEMETRY = 1 << 3;
        /// Persistent Event log.
        const PERSISTENT_EVENT = 1 << 4;
    }
}

/// A power state descriptor (32 bytes) of Identify Controller.
#[derive(Clone, Copy, PartialEq, Eq, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct PowerStateDescriptor {
    /// Maximum power in 0.01 W (or 0.0001 W when MXPS is set).
    pub mp: u16,
    _rsvd2: u8,
    /// MXPS (bit 0) and NOPS (bit 1).
    pub flags: u8,
    /// Entry latency in microseconds.
    pub enlat: u32,
    /// Exit latency in microseconds.
    pub exlat: u32,
    /// Relative read throughput.
    pub rrt: u8,
    /// Relative read latency.
    pub rrl: u8,
    /// Relative write throughput.
    pub rwt: u8,
    /// Relative write latency.
    pub rwl: u8,
    /// Idle power.
    pub idlp: u16,
    /// Idle power scale.
    pub ips: u8,
    _rsvd19: u8,
    /// Active power.
    pub actp: u16,
    /// Active power workload and scale.
    pub apw_aps: u8,
    _rsvd23: [u8; 9],
}
crate::assert_size!(PowerStateDescriptor, 32);

/// Identify Controller data structure (CNS 01h, 4096 bytes, NVMe 1.4 figure 251).
#[derive(Clone, Copy, PartialEq, Eq, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct IdentifyController {
    /// PCI Vendor ID.
    pub vid: u16,
    /// PCI Subsystem Vendor ID.
    pub ssvid: u16,
    /// Serial number (ASCII, space padded).
    pub sn: [u8; 20],
    /// Model number (ASCII, space padded).
    pub mn: [u8; 40],
    /// Firmware revision (ASCII, space padded).
    pub fr: [u8; 8],
    /// Recommended arbitration burst.
    pub rab: u8,
    /// IEEE OUI identifier.
    pub ieee: [u8; 3],
    /// Controller multi-path I/O and namespace sharing capabilities.
    pub cmic: u8,
    /// Maximum data transfer size as a power of two of the minimum memory page size; 0 = none.
    pub mdts: u8,
    /// Controller ID.
    pub cntlid: u16,
    /// Version (same encoding as the VS register).
    pub ver: u32,
    /// RTD3 resume latency (us).
    pub rtd3r: u32,
    /// RTD3 entry latency (us).
    pub rtd3e: u32,
    /// Optional asynchronous events supported.
    pub oaes: u32,
    /// Controller attributes.
    pub ctratt: u32,
    /// Read recovery levels supported.
    pub rrls: u16,
    _rsvd102: [u8; 9],
    /// Controller type (1 I/O, 2 discovery, 3 administrative).
    pub cntrltype: u8,
    /// FRU globally unique identifier.
    pub fguid: [u8; 16],
    /// Command retry delay times 1-3 (100 ms units).
    pub crdt: [u16; 3],
    _rsvd134: [u8; 119],
    /// NVM subsystem report (NVMe 2.0: bit 0 NVMe storage device, bit 1 enclosure).
    pub nvmsr: u8,
    /// VPD write cycle information (NVMe 2.0: bit 7 valid, bits 6:0 cycles remaining).
    pub vwci: u8,
    /// Management endpoint capabilities (NVMe 2.0: bit 0 SMBus/I2C port, bit 1 PCIe port).
    pub mec: u8,
    /// Optional admin command support ([`Oacs`]).
    pub oacs: u16,
    /// Abort command limit (0's based).
    pub acl: u8,
    /// Asynchronous event request limit (0's based).
    pub aerl: u8,
    /// Firmware updates.
    pub frmw: u8,
    /// Log page attributes ([`Lpa`]).
    pub lpa: u8,
    /// Error log page entries (0's based).
    pub elpe: u8,
    /// Number of power states support (0's based).
    pub npss: u8,
    /// Admin vendor specific command configuration.
    pub avscc: u8,
    /// Autonomous power state transition attributes.
    pub apsta: u8,
    /// Warning composite temperature threshold (K).
    pub wctemp: u16,
    /// Critical composite temperature threshold (K).
    pub cctemp: u16,
    /// Maximum time for firmware activation (100 ms units).
    pub mtfa: u16,
    /// Host memory buffer preferred size (4 KiB units).
    pub hmpre: u32,
    /// Host memory buffer minimum size (4 KiB units).
    pub hmmin: u32,
    /// Total NVM capacity in bytes (128-bit little endian).
    pub tnvmcap: [u8; 16],
    /// Unallocated NVM capacity in bytes (128-bit little endian).
    pub unvmcap: [u8; 16],
    /// Replay protected memory block support.
    pub rpmbs: u32,
    /// Extended device self-test time (minutes).
    pub edstt: u16,
    /// Device self-test options.
    pub dsto: u8,
    /// Firmware update granularity (4 KiB units).
    pub fwug: u8,
    /// Keep alive support (100 ms units).
    pub kas: u16,
    /// Host controlled thermal management attributes.
    pub hctma: u16,
    /// Minimum thermal management temperature (K).
    pub mntmt: u16,
    /// Maximum thermal management temperature (K).
    pub mxtmt: u16,
    /// Sanitize capabilities.
    pub sanicap: u32,
    /// Host memory buffer minimum descriptor entry size.
    pub hmminds: u32,
    /// Host memory maximum descriptors entries.
    pub hmmaxd: u16,
    /// NVM set identifier maximum.
    pub nsetidmax: u16,
    /// Endurance group identifier maximum.
    pub endgidmax: u16,
    /// ANA transition time.
    pub anatt: u8,
    /// Asymmetric namespace access capabilities.
    pub anacap: u8,
    /// ANA group identifier maximum.
    pub anagrpmax: u32,
    /// Number of ANA group identifiers.
    pub nanagrpid: u32,
    /// Persistent event log size (64 KiB units).
    pub pels: u32,
    /// Domain identifier (NVMe 2.0).
    pub domainid: u16,
    _rsvd358: [u8; 10],
    /// Max endurance group capacity in bytes (NVMe 2.0, 128-bit little endian).
    pub megcap: [u8; 16],
    _rsvd384: [u8; 128],
    /// Submission queue entry size: required (bits 3:0) and maximum (bits 7:4), powers of two.
    pub sqes: u8,
    /// Completion queue entry size: required (bits 3:0) and maximum (bits 7:4), powers of two.
    pub cqes: u8,
    /// Maximum outstanding commands.
    pub maxcmd: u16,
    /// Number of namespaces (largest valid NSID).
    pub nn: u32,
    /// Optional NVM command support ([`Oncs`]).
    pub oncs: u16,
    /// Fused operation support.
    pub fuses: u16,
    /// Format NVM attributes.
    pub fna: u8,
    /// Volatile write cache (bit 0: present).
    pub vwc: u8,
    /// Atomic write unit normal (0's based, blocks).
    pub awun: u16,
    /// Atomic write unit power fail (0's based, blocks).
    pub awupf: u16,
    /// I/O command set vendor specific command configuration (NVSCC before NVMe 2.0).
    pub icsvscc: u8,
    /// Namespace write protection capabilities.
    pub nwpc: u8,
    /// Atomic compare and write unit.
    pub acwu: u16,
    /// Optimized copy formats supported (NVMe 2.0, bit N: format N).
    pub ocfs: u16,
    /// SGL support.
    pub sgls: u32,
    /// Maximum number of allowed namespaces.
    pub mnan: u32,
    /// Maximum domain namespace attachments (NVMe 2.0, 128-bit little endian).
    pub maxdna: [u8; 16],
    /// Maximum I/O controller namespace attachments (NVMe 2.0).
    pub maxcna: u32,
    _rsvd564: [u8; 204],
    /// NVM subsystem NVMe qualified name (NUL terminated UTF-8).
    pub subnqn: [u8; 256],
    _rsvd1024: [u8; 768],
    /// NVMe over Fabrics attributes.
    pub nvmeof: [u8; 256],
    /// Power state descriptors 0-31.
    pub psd: [PowerStateDescriptor; 32],
    /// Vendor specific.
    pub vs: [u8; 1024],
}

crate::assert_size!(IdentifyController, IDENTIFY_DATA_SIZE);
crate::assert_offset!(IdentifyController, sn, 4);
crate::assert_offset!(IdentifyController, mn, 24);
crate::assert_offset!(IdentifyController, fr, 64);
crate::assert_offset!(IdentifyController, mdts, 77);
crate::assert_offset!(IdentifyController, cntlid, 78);
crate::assert_offset!(IdentifyController, ver, 80);
crate::assert_offset!(IdentifyController, cntrltype, 111);
crate::assert_offset!(IdentifyController, crdt, 128);
crate::assert_offset!(IdentifyController, oacs, 256);
crate::assert_offset!(IdentifyController, wctemp, 266);
crate::assert_offset!(IdentifyController, tnvmcap, 280);
crate::assert_offset!(IdentifyController, pels, 352);
crate::assert_offset!(IdentifyController, nvmsr, 253);
crate::assert_offset!(IdentifyController, mec, 255);
crate::assert_offset!(IdentifyController, domainid, 356);
crate::assert_offset!(IdentifyController, megcap, 368);
crate::assert_offset!(IdentifyController, icsvscc, 530);
crate::assert_offset!(IdentifyController, ocfs, 534);
crate::assert_offset!(IdentifyController, maxdna, 544);
crate::assert_offset!(IdentifyController, maxcna, 560);
crate::assert_offset!(IdentifyController, sqes, 512);
crate::assert_offset!(IdentifyController, nn, 516);
crate::assert_offset!(IdentifyController, oncs, 520);
crate::assert_offset!(IdentifyController, vwc, 525);
crate::assert_offset!(IdentifyController, sgls, 536);
crate::assert_offset!(IdentifyController, subnqn, 768);
crate::assert_offset!(IdentifyController, nvmeof, 1792);
crate::assert_offset!(IdentifyController, psd, 2048);
crate::assert_offset!(IdentifyController, vs, 3072);

/// Trims the space (and NUL) padding of an ASCII identify string.
pub fn trim_ascii(field: &[u8]) -> &str {
    let end = field
        .iter()
        .rposition(|&b| b != b' ' && b != 0)
        .map_or(0, |i| i + 1);
    core::str::from_utf8(&field[..end]).unwrap_or("<non-ascii>")
}

/// A 16-byte UUID (namespace UUIDs, host identifiers), displayed as
/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` in lowercase hex.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Uuid(pub [u8; 16]);

impl core::fmt::Display for Uuid {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Writes `s` into a space-padded ASCII identify field (truncating).
pub fn fill_ascii(field: &mut [u8], s: &str) {
    field.fill(b' ');
    let n = s.len().min(field.len());
    field[..n].copy_from_slice(&s.as_bytes()[..n]);
}

impl IdentifyController {
    /// Serial number without padding.
    pub fn serial(&self) -> &str {
        trim_ascii(&self.sn)
    }
    /// Model number without padding.
    pub fn model(&self) -> &str {
        trim_ascii(&self.mn)
    }
    /// Firmware revision without padding.
    pub fn firmware(&self) -> &str {
        trim_ascii(&self.fr)
    }
    /// Optional admin commands.
    pub fn oacs(&self) -> Oacs {
        Oacs::from_bits_retain(self.oacs)
    }
    /// Optional NVM commands.
    pub fn oncs(&self) -> Oncs {
        Oncs::from_bits_retain(self.oncs)
    }
    /// SGL support (SGLS).
    pub fn sgl_support(&self) -> crate::sgl::Sgls {
        crate::sgl::Sgls(self.sgls)
    }
    /// Log page attributes.
    pub fn lpa(&self) -> Lpa {
        Lpa::from_bits_retain(self.lpa)
    }
    /// Is a volatile write cache present?
    pub fn has_volatile_write_cache(&self) -> bool {
        self.vwc & 1 != 0
    }
    /// Maximum data transfer size in bytes for a minimum memory page size of `min_page_size`
    /// bytes; `None` when the controller reports no limit, or a limit too large for a
    /// `usize` (an MDTS of 64 or more, say: no transfer this host can describe exceeds it).
    pub fn max_transfer_bytes(&self, min_page_size: usize) -> Option<usize> {
        if self.mdts == 0 {
            None
        } else {
            1usize
                .checked_shl(u32::from(self.mdts))
                .and_then(|pages| pages.checked_mul(min_page_size))
        }
    }
    /// Total NVM capacity in bytes.
    pub fn total_capacity(&self) -> u128 {
        u128::from_le_bytes(self.tnvmcap)
    }
}

/// An LBA format descriptor (4 bytes) of Identify Namespace.
#[derive(
    Clone, Copy, PartialEq, Eq, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct LbaFormat {
    /// Metadata size in bytes.
    pub ms: u16,
    /// LBA data size as a power of two (9 = 512 bytes, 12 = 4096 bytes).
    pub lbads: u8,
    /// Relative performance (bits 1:0).
    pub rp: u8,
}
crate::assert_size!(LbaFormat, 4);

impl LbaFormat {
    /// LBA data size in bytes (0 when the format is unused).
    pub const fn data_size(&self) -> u32 {
        if self.lbads == 0 || self.lbads > 31 {
            0
        } else {
            1 << self.lbads
        }
    }
}

/// Identify Namespace data structure for the NVM command set (CNS 00h, 4096 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct IdentifyNamespace {
    /// Namespace size in logical blocks.
    pub nsze: u64,
    /// Namespace capacity in logical blocks.
    pub ncap: u64,
    /// Namespace utilization in logical blocks.
    pub nuse: u64,
    /// Namespace features.
    pub nsfeat: u8,
    /// Number of LBA formats (0's based).
    pub nlbaf: u8,
    /// Formatted LBA size: format index in bits 3:0.
    pub flbas: u8,
    /// Metadata capabilities.
    pub mc: u8,
    /// End-to-end data protection capabilities.
    pub dpc: u8,
    /// End-to-end data protection type settings.
    pub dps: u8,
    /// Namespace multi-path I/O and sharing capabilities.
    pub nmic: u8,
    /// Reservation capabilities.
    pub rescap: u8,
    /// Format progress indicator.
    pub fpi: u8,
    /// Deallocate logical block features.
    pub dlfeat: u8,
    /// Namespace atomic write unit normal.
    pub nawun: u16,
    /// Namespace atomic write unit power fail.
    pub nawupf: u16,
    /// Namespace atomic compare and write unit.
    pub nacwu: u16,
    /// Namespace atomic boundary size normal.
    pub nabsn: u16,
    /// Namespace atomic boundary offset.
    pub nabo: u16,
    /// Namespace atomic boundary size power fail.
    pub nabspf: u16,
    /// Namespace optimal I/O boundary.
    pub noiob: u16,
    /// NVM capacity in bytes (128-bit little endian).
    pub nvmcap: [u8; 16],
    /// Namespace preferred write granularity.
    pub npwg: u16,
    /// Namespace preferred write alignment.
    pub npwa: u16,
    /// Namespace preferred deallocate granularity.
    pub npdg: u16,
    /// Namespace preferred deallocate alignment.
    pub npda: u16,
    /// Namespace optimal write size.
    pub nows: u16,
    /// Maximum single source range length (NVMe 2.0, Copy).
    pub mssrl: u16,
    /// Maximum copy length (NVMe 2.0).
    pub mcl: u32,
    /// Maximum source range count (NVMe 2.0, 0's based).
    pub msrc: u8,
    _rsvd81: u8,
    /// Number of unique capability LBA formats beyond NLBAF (NVMe 2.0).
    pub nulbaf: u8,
    _rsvd83: [u8; 9],
    /// ANA group identifier.
    pub anagrpid: u32,
    _rsvd96: [u8; 3],
    /// Namespace attributes (bit 0: write protected).
    pub nsattr: u8,
    /// NVM set identifier.
    pub nvmsetid: u16,
    /// Endurance group identifier.
    pub endgid: u16,
    /// Namespace globally unique identifier.
    pub nguid: [u8; 16],
    /// IEEE extended unique identifier.
    pub eui64: [u8; 8],
    /// LBA format descriptors 0-15.
    pub lbaf: [LbaFormat; 16],
    _rsvd192: [u8; 192],
    /// Vendor specific.
    pub vs: [u8; 3712],
}

crate::assert_size!(IdentifyNamespace, IDENTIFY_DATA_SIZE);
crate::assert_offset!(IdentifyNamespace, nsfeat, 24);
crate::assert_offset!(IdentifyNamespace, flbas, 26);
crate::assert_offset!(IdentifyNamespace, dlfeat, 33);
crate::assert_offset!(IdentifyNamespace, nvmcap, 48);
crate::assert_offset!(IdentifyNamespace, nows, 72);
crate::assert_offset!(IdentifyNamespace, anagrpid, 92);
crate::assert_offset!(IdentifyNamespace, mssrl, 74);
crate::assert_offset!(IdentifyNamespace, mcl, 76);
crate::assert_offset!(IdentifyNamespace, nulbaf, 82);
crate::assert_offset!(IdentifyNamespace, nsattr, 99);
crate::assert_offset!(IdentifyNamespace, nguid, 104);
crate::assert_offset!(IdentifyNamespace, eui64, 120);
crate::assert_offset!(IdentifyNamespace, lbaf, 128);
crate::assert_offset!(IdentifyNamespace, vs, 384);

impl IdentifyNamespace {
    /// Index of the LBA format in use (FLBAS bits 3:0).
    pub const fn format_index(&self) -> usize {
        (self.flbas & 0xf) as usize
    }
    /// The LBA format in use.
    pub const fn current_format(&self) -> LbaFormat {
        self.lbaf[self.format_index()]
    }
    /// Logical block size in bytes of the format in use.
    pub const fn block_size(&self) -> u32 {
        self.current_format().data_size()
    }
    /// Does the namespace support thin provisioning (NSFEAT bit 0)?
    pub const fn thin_provisioned(&self) -> bool {
        self.nsfeat & 1 != 0
    }
}

/// Number of NSIDs in an active namespace ID list (CNS 02h).
pub const NAMESPACE_LIST_LEN: usize = 1024;

/// Active namespace ID list (CNS 02h): ascending NSIDs, terminated by zero.
#[derive(Clone, Copy, PartialEq, Eq, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct NamespaceList {
    /// NSIDs; the first zero ends the list.
    pub ids: [u32; NAMESPACE_LIST_LEN],
}
crate::assert_size!(NamespaceList, IDENTIFY_DATA_SIZE);

impl NamespaceList {
    /// The NSIDs in the list, up to the first zero.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.ids.iter().copied().take_while(|&id| id != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identify_controller_decodes_hand_built_image() {
        let mut b = [0u8; 4096];
        b[0..2].copy_from_slice(&0x1b36u16.to_le_bytes());
        b[2..4].copy_from_slice(&0x1af4u16.to_le_bytes());
        b[4..24].copy_from_slice(b"deadbeef            ");
        b[24..64].fill(b' ');
        b[24..38].copy_from_slice(b"QEMU NVMe Ctrl");
        b[64..72].copy_from_slice(b"7.2.22  ");
        b[77] = 7;
        b[78..80].copy_from_slice(&3u16.to_le_bytes());
        b[80..84].copy_from_slice(&0x0001_0400u32.to_le_bytes());
        b[256..258].copy_from_slice(&0x010au16.to_le_bytes());
        b[266..268].copy_from_slice(&0x0157u16.to_le_bytes());
        b[280] = 0x40;
        b[512] = 0x66;
        b[513] = 0x44;
        b[516..520].copy_from_slice(&256u32.to_le_bytes());
        b[520..522].copy_from_slice(&0x000du16.to_le_bytes());
        b[525] = 1;
        b[2048..2050].copy_from_slice(&2500u16.to_le_bytes());
        b[3072] = 0xaa;
        let id = IdentifyController::read_from_bytes(&b[..]).unwrap();
        assert_eq!(id.vid, 0x1b36);
        assert_eq!(id.ssvid, 0x1af4);
        assert_eq!(id.serial(), "deadbeef");
        assert_eq!(id.model(), "QEMU NVMe Ctrl");
        assert_eq!(id.firmware(), "7.2.22");
        assert_eq!(id.mdts, 7);
        assert_eq!(id.max_transfer_bytes(4096), Some(524288));
        // Found by the `identify` fuzz target: an MDTS past the address space overflowed
        // the shift (a panic in debug builds, a wrong limit in release builds).
        let mut big = id;
        for (mdts, want) in [(51, Some(4096 << 51)), (52, None), (64, None), (255, None)] {
            big.mdts = mdts;
            assert_eq!(big.max_transfer_bytes(4096), want, "mdts {mdts}");
        }
        big.mdts = 37;
        assert_eq!(big.max_transfer_bytes(1 << 27), None);
        assert_eq!(id.cntlid, 3);
        assert_eq!(id.ver, 0x0001_0400);
        assert!(id
            .oacs()
            .contains(Oacs::FORMAT_NVM | Oacs::NS_MANAGEMENT | Oacs::DOORBELL_BUFFER_CONFIG));
        assert!(!id.oacs().contains(Oacs::FIRMWARE));
        assert_eq!(id.wctemp, 0x157);
        assert_eq!(id.total_capacity(), 0x40);
        assert_eq!(id.sqes, 0x66);
        assert_eq!(id.cqes, 0x44);
        assert_eq!(id.nn, 256);
        assert!(id
            .oncs()
            .contains(Oncs::COMPARE | Oncs::DATASET_MANAGEMENT | Oncs::WRITE_ZEROES));
        assert!(id.has_volatile_write_cache());
        assert_eq!(id.psd[0].mp, 2500);
        assert_eq!(id.vs[0], 0xaa);
        assert_eq!(id.as_bytes(), &b[..]);
    }

    #[test]
    fn identify_namespace_decodes_hand_built_image() {
        let mut b = [0u8; 4096];
        b[0..8].copy_from_slice(&2_097_152u64.to_le_bytes());
        b[8..16].copy_from_slice(&2_097_152u64.to_le_bytes());
        b[16..24].copy_from_slice(&1024u64.to_le_bytes());
        b[24] = 1; // thin provisioning
        b[25] = 1; // two formats
        b[26] = 1; // format 1 in use
        b[128..132].copy_from_slice(&[0, 0, 9, 0]);
        b[132..136].copy_from_slice(&[8, 0, 12, 2]);
        b[104] = 0x11;
        b[120] = 0x22;
        let ns = IdentifyNamespace::read_from_bytes(&b[..]).unwrap();
        assert_eq!(ns.nsze, 2_097_152);
        assert_eq!(ns.ncap, 2_097_152);
        assert_eq!(ns.nuse, 1024);
        assert!(ns.thin_provisioned());
        assert_eq!(ns.nlbaf, 1);
        assert_eq!(ns.lbaf[0].data_size(), 512);
        assert_eq!(ns.format_index(), 1);
        assert_eq!(ns.block_size(), 4096);
        assert_eq!(ns.current_format().ms, 8);
        assert_eq!(ns.current_format().rp, 2);
        assert_eq!(ns.nguid[0], 0x11);
        assert_eq!(ns.eui64[0], 0x22);
    }

    #[test]
    fn namespace_list_stops_at_zero_and_ascii_helpers() {
        let mut b = [0u8; 4096];
        b[0..4].copy_from_slice(&1u32.to_le_bytes());
        b[4..8].copy_from_slice(&2u32.to_le_bytes());
        b[12..16].copy_from_slice(&9u32.to_le_bytes());
        let list = NamespaceList::read_from_bytes(&b[..]).unwrap();
        let mut it = list.iter();
        assert_eq!((it.next(), it.next(), it.next()), (Some(1), Some(2), None));
        let mut f = [0u8; 8];
        fill_ascii(&mut f, "abc");
        assert_eq!(&f, b"abc     ");
        assert_eq!(trim_ascii(&f), "abc");
        assert_eq!(trim_ascii(b"        "), "");
    }
}
