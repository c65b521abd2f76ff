//! NVMe over Fabrics (NVMe-oF 1.1): the Fabrics command set (Connect, Property Get/Set,
//! Disconnect), the Connect data and response, the Fabrics status codes and the Discovery
//! Log Page with its entry fields.
//!
//! A Fabrics command is a 64-byte submission entry with opcode [`FABRICS_OPCODE`] and its
//! command type in byte 4; the command structures here are that entry's layout and convert
//! to a [`SubmissionEntry`] with [`ConnectCommand::to_entry`] and the like.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::entry::SubmissionEntry;

/// The opcode of every Fabrics command.
pub const FABRICS_OPCODE: u8 = 0x7f;

/// The well-known NQN of a discovery service (NVMe base spec, section 7.9).
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";

/// Bytes of an NQN field (NUL-padded; an NQN has at most 223 bytes).
pub const NQN_FIELD: usize = 256;

/// The longest NQN the specification allows, in bytes.
pub const NQN_MAX: usize = 223;

/// Controller ID in Connect data asking for any controller (the dynamic controller model).
pub const CNTLID_DYNAMIC: u16 = 0xffff;

/// Fabrics command types (FCTYPE, byte 4 of the command).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FabricsCommandType {
    /// Property Set.
    PropertySet = 0x00,
    /// Connect.
    Connect = 0x01,
    /// Property Get.
    PropertyGet = 0x04,
    /// Authentication Send.
    AuthenticationSend = 0x05,
    /// Authentication Receive.
    AuthenticationReceive = 0x06,
    /// Disconnect.
    Disconnect = 0x08,
}

/// The Connect command (NVMe-oF 1.1 figure 19), as its 64-byte submission entry.
#[derive(
    Clone, Copy, Default, PartialEq, Eq, Debug, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct ConnectCommand {
    /// [`FABRICS_OPCODE`].
    pub opcode: u8,
    /// PSDT in bits 7:6 (SGLs: 01b).
    pub flags: u8,
    /// Command identifier.
    pub cid: u16,
    /// [`FabricsCommandType::Connect`].
    pub fctype: u8,
    /// Reserved.
    pub reserved1: [u8; 19],
    /// SGL descriptor 1: where the 1024 bytes of [`ConnectData`] are.
    pub sgl1: [u8; 16],
    /// Record format (0).
    pub recfmt: u16,
    /// Queue id: 0 for the admin queue.
    pub qid: u16,
    /// Submission queue size, 0's based.
    pub sqsize: u16,
    /// Connect attributes ([`ConnectCommand::CATTR_DISABLE_SQ_FLOW_CONTROL`], priority).
    pub cattr: u8,
    /// Reserved.
    pub reserved2: u8,
    /// Keep Alive Timeout in milliseconds (admin queue only; 0: none).
    pub kato: u32,
    /// Reserved.
    pub reserved3: [u8; 12],
}
crate::assert_size!(ConnectCommand, 64);
crate::assert_offset!(ConnectCommand, fctype, 4);
crate::assert_offset!(ConnectCommand, sgl1, 24);
crate::assert_offset!(ConnectCommand, recfmt, 40);
crate::assert_offset!(ConnectCommand, qid, 42);
crate::assert_offset!(ConnectCommand, sqsize, 44);
crate::assert_offset!(ConnectCommand, cattr, 46);
crate::assert_offset!(ConnectCommand, kato, 48);

impl ConnectCommand {
    /// CATTR bit 2: the host asks to disable submission queue flow control (SQHD).
    pub const CATTR_DISABLE_SQ_FLOW_CONTROL: u8 = 1 << 2;

    /// A Connect of queue `qid` with `sqsize` (0's based) and `kato_ms` (admin queue).
    pub fn new(qid: u16, sqsize: u16, kato_ms: u32) -> ConnectCommand {
        ConnectCommand {
            opcode: FABRICS_OPCODE,
            fctype: FabricsCommandType::Connect as u8,
            qid,
            sqsize,
            kato: kato_ms,
            ..Default::default()
        }
    }
    /// The command as a submission entry.
    pub fn to_entry(&self) -> SubmissionEntry {
        zerocopy::transmute!(*self)
    }
}

/// The Connect command's data (NVMe-oF 1.1 figure 20): 1024 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct ConnectData {
    /// The host identifier (a UUID; the same for every association of one host).
    pub hostid: [u8; 16],
    /// Controller ID: [`CNTLID_DYNAMIC`] for the admin queue, the granted one for I/O queues.
    pub cntlid: u16,
    /// Reserved.
    pub reserved1: [u8; 238],
    /// The subsystem's NQN, NUL-padded.
    pub subnqn: [u8; NQN_FIELD],
    /// The host's NQN, NUL-padded.
    pub hostnqn: [u8; NQN_FIELD],
    /// Reserved.
    pub reserved2: [u8; 256],
}
crate::assert_size!(ConnectData, 1024);
crate::assert_offset!(ConnectData, cntlid, 16);
crate::assert_offset!(ConnectData, subnqn, 256);
crate::assert_offset!(ConnectData, hostnqn, 512);

impl Default for ConnectData {
    fn default() -> Self {
        zerocopy::FromZeros::new_zeroed()
    }
}

impl ConnectData {
    /// Byte offset of `subnqn` (what an Invalid Parameter response points at).
    pub const SUBNQN_OFFSET: u16 = 256;
    /// Byte offset of `hostnqn`.
    pub const HOSTNQN_OFFSET: u16 = 512;
    /// Byte offset of `cntlid`.
    pub const CNTLID_OFFSET: u16 = 16;
    /// Byte offset of `hostid`.
    pub const HOSTID_OFFSET: u16 = 0;
}

/// The NVMe over Fabrics attributes of Identify Controller (its bytes 1792-1807, the start
/// of [`IdentifyController::nvmeof`](crate::identify::IdentifyController::nvmeof)).
#[derive(
    Clone, Copy, Default, PartialEq, Eq, Debug, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct FabricsAttributes {
    /// I/O queue command capsule supported size, in 16-byte units (64-byte command plus
    /// in-capsule data).
    pub ioccsz: u32,
    /// I/O queue response capsule supported size, in 16-byte units (1: the completion only).
    pub iorcsz: u32,
    /// In-capsule data offset, in 16-byte units from the end of the command.
    pub icdoff: u16,
    /// Fabrics controller attributes (bit 0: static controller model).
    pub fcatt: u8,
    /// Maximum SGL data block descriptors in a command.
    pub msdbd: u8,
    /// Optional fabrics commands supported (bit 0: Disconnect).
    pub ofcs: u16,
    /// Reserved.
    pub reserved: [u8; 2],
}
crate::assert_size!(FabricsAttributes, 16);
crate::assert_offset!(FabricsAttributes, icdoff, 8);
crate::assert_offset!(FabricsAttributes, msdbd, 11);
crate::assert_offset!(FabricsAttributes, ofcs, 12);

impl FabricsAttributes {
    /// Byte offset of these attributes in Identify Controller.
    pub const OFFSET: usize = 1792;
    /// OFCS bit 0: the Disconnect command is supported.
    pub const OFCS_DISCONNECT: u16 = 1 << 0;
}

/// What dword 0 of a successful Connect's completion holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectResponse {
    /// The controller ID granted (admin queue).
    pub cntlid: u16,
    /// Authentication requirements (bits 17:16): nonzero when the host must authenticate.
    pub authreq: u8,
}

impl ConnectResponse {
    /// Decodes dword 0.
    pub const fn from_dword(dw0: u32) -> ConnectResponse {
        ConnectResponse {
            cntlid: dw0 as u16,
            authreq: ((dw0 >> 16) & 3) as u8,
        }
    }
    /// Encodes dword 0.
    pub const fn to_dword(self) -> u32 {
        self.cntlid as u32 | ((self.authreq as u32 & 3) << 16)
    }
}

/// What dword 0 of a Connect completed with Connect Invalid Parameters (or Invalid Host)
/// holds: where the offending parameter is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidParameter {
    /// Byte offset of the parameter (IPO): in the command, or in the Connect data.
    pub offset: u16,
    /// IATTR bit 0: the parameter is in the Connect data (else in the command).
    pub in_data: bool,
}

impl InvalidParameter {
    /// Decodes dword 0 (IPO bits 15:0, IATTR bits 23:16).
    pub const fn from_dword(dw0: u32) -> InvalidParameter {
        InvalidParameter {
            offset: dw0 as u16,
            in_data: (dw0 >> 16) & 1 != 0,
        }
    }
    /// Encodes dword 0.
    pub const fn to_dword(self) -> u32 {
        self.offset as u32 | (self.in_data as u32) << 16
    }
}

/// Property Get / Property Set attribute (size of the property).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PropertySize {
    /// A 4-byte property (VS, CC, CSTS, NSSR).
    Four = 0,
    /// An 8-byte property (CAP).
    Eight = 1,
}

/// Property Get and Property Set (NVMe-oF 1.1 figures 25 and 27), as one 64-byte layout.
#[derive(Clone, Copy, PartialEq, Eq, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct PropertyCommand {
    /// [`FABRICS_OPCODE`].
    pub opcode: u8,
    /// PSDT in bits 7:6.
    pub flags: u8,
    /// Command identifier.
    pub cid: u16,
    /// [`FabricsCommandType::PropertyGet`] or [`FabricsCommandType::PropertySet`].
    pub fctype: u8,
    /// Reserved.
    pub reserved1: [u8; 35],
    /// Bits 2:0: [`PropertySize`].
    pub attrib: u8,
    /// Reserved.
    pub reserved2: [u8; 3],
    /// The property's offset (the PCIe register offsets: CAP 0, VS 8, CC 14h, CSTS 1Ch).
    pub offset: u32,
    /// The value to set (Property Set; reserved in Property Get).
    pub value: u64,
    /// Reserved.
    pub reserved3: [u8; 8],
}
crate::assert_size!(PropertyCommand, 64);
crate::assert_offset!(PropertyCommand, attrib, 40);
crate::assert_offset!(PropertyCommand, offset, 44);
crate::assert_offset!(PropertyCommand, value, 48);

impl Default for PropertyCommand {
    fn default() -> Self {
        zerocopy::FromZeros::new_zeroed()
    }
}

impl PropertyCommand {
    /// Property Get of `size` bytes at `offset`; the value comes back in completion dwords
    /// 0 and 1.
    pub fn get(offset: u32, size: PropertySize) -> PropertyCommand {
        PropertyCommand {
            opcode: FABRICS_OPCODE,
            fctype: FabricsCommandType::PropertyGet as u8,
            attrib: size as u8,
            offset,
            ..Default::default()
        }
    }
    /// Property Set of `value` (`size` bytes) at `offset`.
    pub fn set(offset: u32, size: PropertySize, value: u64) -> PropertyCommand {
        PropertyCommand {
            opcode: FABRICS_OPCODE,
            fctype: FabricsCommandType::PropertySet as u8,
            attrib: size as u8,
            offset,
            value,
            ..Default::default()
        }
    }
    /// The command as a submission entry.
    pub fn to_entry(&self) -> SubmissionEntry {
        zerocopy::transmute!(*self)
    }
    /// Reads the command out of a submission entry.
    pub fn from_entry(e: &SubmissionEntry) -> PropertyCommand {
        zerocopy::transmute!(*e)
    }
}

impl ConnectCommand {
    /// Reads the command out of a submission entry.
    pub fn from_entry(e: &SubmissionEntry) -> ConnectCommand {
        zerocopy::transmute!(*e)
    }
}

/// The command type of a Fabrics submission entry (byte 4).
pub const fn fctype_of(e: &SubmissionEntry) -> u8 {
    e.nsid as u8
}

/// Command specific status codes of Fabrics commands (SCT 1; NVMe-oF 1.1 figure 11).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FabricsStatus {
    /// The record format (or the transport's format) is not supported.
    IncompatibleFormat = 0x80,
    /// The controller is busy (for example: the queue is already connected).
    ControllerBusy = 0x81,
    /// A parameter of the Connect command or data is invalid (see [`InvalidParameter`]).
    ConnectInvalidParameters = 0x82,
    /// The discovery information changed: rediscover.
    ConnectRestartDiscovery = 0x83,
    /// The host is not allowed to connect to the subsystem.
    ConnectInvalidHost = 0x84,
    /// The queue type is not supported (an I/O queue on a discovery controller).
    InvalidQueueType = 0x85,
    /// The discovery log page changed while it was read.
    DiscoverRestart = 0x90,
    /// The host must authenticate (NVMe in-band authentication).
    AuthenticationRequired = 0x91,
}

impl FabricsStatus {
    /// Decodes a command specific status code of a Fabrics command.
    pub const fn from_code(sc: u8) -> Option<FabricsStatus> {
        Some(match sc {
            0x80 => FabricsStatus::IncompatibleFormat,
            0x81 => FabricsStatus::ControllerBusy,
            0x82 => FabricsStatus::ConnectInvalidParameters,
            0x83 => FabricsStatus::ConnectRestartDiscovery,
            0x84 => FabricsStatus::ConnectInvalidHost,
            0x85 => FabricsStatus::InvalidQueueType,
            0x90 => FabricsStatus::DiscoverRestart,
            0x91 => FabricsStatus::AuthenticationRequired,
            _ => return None,
        })
    }
    /// The specification's name.
    pub const fn name(self) -> &'static str {
        match self {
            FabricsStatus::IncompatibleFormat => "Incompatible Format",
            FabricsStatus::ControllerBusy => "Controller Busy",
            FabricsStatus::ConnectInvalidParameters => "Connect Invalid Parameters",
            FabricsStatus::ConnectRestartDiscovery => "Connect Restart Discovery",
            FabricsStatus::ConnectInvalidHost => "Connect Invalid Host",
            FabricsStatus::InvalidQueueType => "Invalid Queue Type",
            FabricsStatus::DiscoverRestart => "Discover Restart",
            FabricsStatus::AuthenticationRequired => "Authentication Required",
        }
    }
}

/// The Discovery Log Page's log identifier.
pub const DISCOVERY_LOG_PAGE: u8 = 0x70;

/// The Discovery Log Page header (NVMe-oF 1.1 figure 37, bytes 0-1023); the entries follow.
#[derive(Clone, Copy, PartialEq, Eq, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct DiscoveryLogHeader {
    /// Generation counter: changes whenever the log changes.
    pub genctr: u64,
    /// Number of records (entries).
    pub numrec: u64,
    /// Record format (0).
    pub recfmt: u16,
    /// Reserved.
    pub reserved: [u8; 1006],
}
crate::assert_size!(DiscoveryLogHeader, 1024);
crate::assert_offset!(DiscoveryLogHeader, numrec, 8);
crate::assert_offset!(DiscoveryLogHeader, recfmt, 16);

/// One Discovery Log Page entry (NVMe-oF 1.1 figure 38): 1024 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct DiscoveryLogEntry {
    /// Transport type ([`TransportType`]).
    pub trtype: u8,
    /// Address family ([`AddressFamily`]).
    pub adrfam: u8,
    /// Subsystem type ([`SubsystemType`]).
    pub subtype: u8,
    /// Transport requirements ([`Treq`]).
    pub treq: u8,
    /// Port id.
    pub portid: u16,
    /// Controller id (0xffff: dynamic).
    pub cntlid: u16,
    /// Admin max submission queue size.
    pub asqsz: u16,
    /// Entry flags ([`DiscoveryLogEntry::EFLAGS_EPCSD`] ...).
    pub eflags: u16,
    /// Reserved.
    pub reserved1: [u8; 20],
    /// Transport service id (the TCP port as ASCII), space-padded.
    pub trsvcid: [u8; 32],
    /// Reserved.
    pub reserved2: [u8; 192],
    /// Subsystem NQN, NUL-padded.
    pub subnqn: [u8; NQN_FIELD],
    /// Transport address (an IP address as ASCII), space-padded.
    pub traddr: [u8; 256],
    /// Transport specific address subtype (TCP: [`TcpSecurityType`] in byte 0).
    pub tsas: [u8; 256],
}
crate::assert_size!(DiscoveryLogEntry, 1024);
crate::assert_offset!(DiscoveryLogEntry, portid, 4);
crate::assert_offset!(DiscoveryLogEntry, eflags, 10);
crate::assert_offset!(DiscoveryLogEntry, trsvcid, 32);
crate::assert_offset!(DiscoveryLogEntry, subnqn, 256);
crate::assert_offset!(DiscoveryLogEntry, traddr, 512);
crate::assert_offset!(DiscoveryLogEntry, tsas, 768);

impl Default for DiscoveryLogEntry {
    fn default() -> Self {
        zerocopy::FromZeros::new_zeroed()
    }
}

impl Default for DiscoveryLogHeader {
    fn default() -> Self {
        zerocopy::FromZeros::new_zeroed()
    }
}

impl DiscoveryLogEntry {
    /// EFLAGS bit 0: Explicit Persistent Connection Support for Discovery.
    pub const EFLAGS_EPCSD: u16 = 1 << 0;
    /// EFLAGS bit 1: Duplicate Returned Information.
    pub const EFLAGS_DUPRETINFO: u16 = 1 << 1;
    /// EFLAGS bit 2: No CDC Connectivity.
    pub const EFLAGS_NCC: u16 = 1 << 2;

    /// The transport service id without padding.
    pub fn trsvcid(&self) -> &str {
        crate::identify::trim_ascii(&self.trsvcid)
    }
    /// The transport address without padding.
    pub fn traddr(&self) -> &str {
        crate::identify::trim_ascii(&self.traddr)
    }
    /// The subsystem NQN without padding.
    pub fn subnqn(&self) -> &str {
        crate::identify::trim_ascii(&self.subnqn)
    }
    /// The transport type, `None` for values without a name here.
    pub const fn transport(&self) -> Option<TransportType> {
        TransportType::from_u8(self.trtype)
    }
    /// The address family, `None` for values without a name here.
    pub const fn address_family(&self) -> Option<AddressFamily> {
        AddressFamily::from_u8(self.adrfam)
    }
    /// The subsystem type, `None` for reserved values.
    pub const fn subsystem_type(&self) -> Option<SubsystemType> {
        SubsystemType::from_u8(self.subtype)
    }
}

macro_rules! u8_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $n:expr,)* }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(u8)]
        pub enum $name {
            $($(#[$vm])* $v = $n,)*
        }
        impl $name {
            /// Decodes the byte; `None` for values without a name here.
            pub const fn from_u8(v: u8) -> Option<$name> {
                match v {
                    $($n => Some($name::$v),)*
                    _ => None,
                }
            }
        }
    };
}

u8_enum! {
    /// Transport types (TRTYPE).
    TransportType {
        /// RDMA.
        Rdma = 1,
        /// Fibre Channel.
        FibreChannel = 2,
        /// TCP.
        Tcp = 3,
        /// Intra-host (loop).
        Loop = 254,
    }
}

u8_enum! {
    /// Address families (ADRFAM).
    AddressFamily {
        /// IPv4.
        Ipv4 = 1,
        /// IPv6.
        Ipv6 = 2,
        /// InfiniBand.
        InfiniBand = 3,
        /// Fibre Channel.
        FibreChannel = 4,
        /// Intra-host (loop).
        Loop = 254,
    }
}

u8_enum! {
    /// Subsystem types (SUBTYPE).
    SubsystemType {
        /// A referral to another discovery service.
        Referral = 1,
        /// An NVM subsystem.
        Nvme = 2,
        /// The discovery subsystem that returned the log.
        CurrentDiscovery = 3,
    }
}

u8_enum! {
    /// TCP security types (SECTYPE, byte 0 of TSAS for TCP).
    TcpSecurityType {
        /// No security.
        None = 0,
        /// TLS 1.2.
        Tls12 = 1,
        /// TLS 1.3.
        Tls13 = 2,
    }
}

/// Transport requirements (TREQ).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Treq(pub u8);

/// TREQ bits 1:0: secure channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecureChannel {
    /// Not specified (00b).
    NotSpecified,
    /// Required (01b).
    Required,
    /// Not required (10b).
    NotRequired,
    /// Reserved (11b).
    Reserved,
}

impl Treq {
    /// Bit 2: the controller can disable submission queue flow control.
    pub const SQ_FLOW_CONTROL_DISABLE: u8 = 1 << 2;

    /// Bits 1:0.
    pub const fn secure_channel(self) -> SecureChannel {
        match self.0 & 3 {
            0 => SecureChannel::NotSpecified,
            1 => SecureChannel::Required,
            2 => SecureChannel::NotRequired,
            _ => SecureChannel::Reserved,
        }
    }
    /// Bit 2.
    pub const fn sq_flow_control_disable(self) -> bool {
        self.0 & Self::SQ_FLOW_CONTROL_DISABLE != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_command_layout() {
        let c = ConnectCommand::new(0, 31, 5000);
        let e = c.to_entry();
        let b = e.as_bytes();
        assert_eq!(b[0], 0x7f);
        assert_eq!(b[4], 0x01);
        assert_eq!(&b[42..44], &0u16.to_le_bytes());
        assert_eq!(&b[44..46], &31u16.to_le_bytes());
        assert_eq!(&b[48..52], &5000u32.to_le_bytes());
        assert_eq!(fctype_of(&e), FabricsCommandType::Connect as u8);
        assert_eq!(ConnectCommand::from_entry(&e), c);
    }

    #[test]
    fn property_commands() {
        let e = PropertyCommand::set(0x14, PropertySize::Four, 0x46_0001).to_entry();
        let b = e.as_bytes();
        assert_eq!((b[0], b[4], b[40]), (0x7f, 0x00, 0));
        assert_eq!(&b[44..48], &0x14u32.to_le_bytes());
        assert_eq!(&b[48..56], &0x46_0001u64.to_le_bytes());
        let g = PropertyCommand::get(0, PropertySize::Eight);
        assert_eq!((g.to_entry().as_bytes()[4], g.attrib), (0x04, 1));
        assert_eq!(PropertyCommand::from_entry(&g.to_entry()), g);
    }

    #[test]
    fn connect_response_and_invalid_parameter() {
        let r = ConnectResponse::from_dword(0x0002_0007);
        assert_eq!((r.cntlid, r.authreq), (7, 2));
        assert_eq!(r.to_dword(), 0x0002_0007);
        let p = InvalidParameter::from_dword(0x0001_0100);
        assert_eq!(p.offset, ConnectData::SUBNQN_OFFSET);
        assert!(p.in_data);
        assert_eq!(p.to_dword(), 0x0001_0100);
        assert_eq!(
            FabricsStatus::from_code(0x84),
            Some(FabricsStatus::ConnectInvalidHost)
        );
        assert_eq!(FabricsStatus::from_code(0x86), None);
        assert_eq!(FabricsStatus::DiscoverRestart.name(), "Discover Restart");
    }

    #[test]
    fn discovery_entry_fields() {
        let mut e = DiscoveryLogEntry {
            trtype: 3,
            adrfam: 1,
            subtype: 3,
            treq: 0x06,
            ..Default::default()
        };
        e.trsvcid[..4].copy_from_slice(b"4420");
        e.trsvcid[4..].fill(b' ');
        e.traddr[..9].copy_from_slice(b"127.0.0.1");
        e.subnqn[..DISCOVERY_NQN.len()].copy_from_slice(DISCOVERY_NQN.as_bytes());
        assert_eq!(e.trsvcid(), "4420");
        assert_eq!(e.traddr(), "127.0.0.1");
        assert_eq!(e.subnqn(), DISCOVERY_NQN);
        assert_eq!(e.transport(), Some(TransportType::Tcp));
        assert_eq!(e.address_family(), Some(AddressFamily::Ipv4));
        assert_eq!(e.subsystem_type(), Some(SubsystemType::CurrentDiscovery));
        let t = Treq(e.treq);
        assert_eq!(t.secure_channel(), SecureChannel::NotRequired);
        assert!(t.sq_flow_control_disable());
        assert_eq!(e.as_bytes()[512..521], *b"127.0.0.1");
        assert_eq!(TransportType::from_u8(9), None);
    }
}
