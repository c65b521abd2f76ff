//! A software NVMe controller: the device side of NVMe 1.4 over PCIe, in a thread.
//!
//! The driver's tests, fault-injection tests, benchmarks and no-hardware demo run against it.
//! It is an independent implementation of the specification (it shares no logic with the
//! driver crates) and depends on `nvme-regs` for the spec's types only.
//!
//! # How a host talks to it
//! - **BAR0** is a memfd ([`SimController::bar_fd`], [`SimController::bar_len`] bytes). The
//!   host maps it `MAP_SHARED` and does volatile 32/64-bit reads and writes at the register
//!   offsets, and writes doorbells at `0x1000 + (2 * qid + is_cq) * (4 << CAP.DSTRD)`.
//!   The controller's thread polls that memory: it sees CC changes and doorbell writes
//!   within microseconds while busy, and within ~100 us when idle.
//! - **DMA**: the host gives the controller access to its memory like an IOMMU mapping
//!   ([`SimController::dma_map`]: an IOVA range backed by a file descriptor range, which the
//!   controller maps itself). Every address in a command, queue base or PRP is an IOVA.
//! - **Namespaces** are sparse memfds (a 1 GiB namespace costs nothing until written); tests
//!   read and write them directly with [`SimController::namespace_data`].
//!
//! Because all shared state is in memfd-backed memory and DMA mappings take a file
//! descriptor, the controller can live in another process than the host:
//! [`spawn_daemon`] starts one in its own process, serving a Unix socket, and
//! [`SimClient`] connects to it (BAR, DMA mapping, namespaces and fault injection over the
//! socket). Driver processes that share it can then come, go and be killed while it lives
//! on, like hardware.
//!
//! # Over NVMe/TCP
//! [`SimController::serve_tcp`] (or [`TcpTarget::start`]) puts an NVMe/TCP target in front
//! of a controller (module `tcp`): the target is the controller's host, like the PCIe
//! driver would be (it maps the BAR, maps its own DMA memory, enables the controller once
//! and rings its doorbells), and a fabrics subsystem towards the network: hosts connect
//! with `trtype:TCP` to [`TcpTarget::local_addr`] and the subsystem NQN
//! [`TcpTarget::subnqn`] ([`DEFAULT_SUBNQN`], `nqn.2014-08.org.nvmexpress:nvme-sim`, unless
//! [`TcpTargetOptions::subnqn`] says otherwise); [`TcpTarget::transport_id`] is the whole
//! transport ID string. Each association (a Connect of the admin queue) gets its own
//! CNTLID, CC/CSTS, Keep Alive timer and Asynchronous Event Requests; its admin commands go
//! to the controller's one admin queue (the target multiplexes them), but for those a
//! fabrics controller answers itself; each I/O queue is bridged to a controller I/O queue
//! pair of its own, command data bounced through the target's memory (in-capsule, R2T and
//! H2CData, C2HData). The discovery NQN answers the Discovery Log Page with this subsystem.
//! The `nvme-sim-target` binary serves one from the command line
//! (`nvme-sim-target --listen 127.0.0.1:4420 --size 1G`).
//!
//! # What it implements
//! Controller registers (CAP, VS, CC, CSTS, AQA, ASQ, ACQ, doorbells), enable/reset/shutdown,
//! the admin commands Identify (CNS 0-3, 10h-13h), Get Log Page (error, SMART / health,
//! firmware slot, changed namespaces, device self-test), Get/Set Features, Create/Delete I/O SQ/CQ, Abort, Asynchronous Event Request,
//! Keep Alive, Format NVM (LBA formats of 512 and 4096 bytes), Device Self-test (log page
//! 06h), Namespace Management and Attachment (each NSID keeps the storage it was configured
//! with; a change of the active namespaces sends a Namespace Attribute Changed notice and
//! fills the Changed Namespace List log page; see `mgmt.rs`) and Doorbell Buffer Config (shadow doorbells for the I/O queues, read the way
//! QEMU's controller reads them: an I/O submission queue is looked at when its MMIO doorbell
//! is written, its tail then comes from the shadow doorbell, and once caught up the
//! controller writes its head to the EventIdx entry and reads the shadow once more), and the
//! NVM commands Read, Write, Flush, Write Zeroes, Dataset Management,
//! Compare, Write Uncorrectable and Verify, with PRP data pointers (PRP lists, chained list
//! pages) or SGLs (Data Block, Segment and Last Segment descriptors; its own walk in
//! `dma.rs`, not the driver's) and the specification's error statuses. [`Faults`] injects errors.
//!
//! # Unsafe code
//! Two modules may contain `unsafe`, each block with a `// SAFETY:` comment: `mem` (the
//! shared memory mappings and the only accessors of their bytes) and `sys` (fork, `_exit`,
//! `close_range`, signal dispositions and owning received descriptors, which `nix` offers
//! no safe call for). The rest of the crate, the device model and the tests included, is
//! safe code on top of them.

#![deny(unsafe_code)]

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

mod admin;
mod bar;
mod client;
mod ctrl;
mod daemon;
mod dma;
mod faults;
mod io;
mod irq;
#[allow(unsafe_code)]
mod mem;
mod mgmt;
mod proto;
mod stats;
#[allow(unsafe_code)]
mod sys;
mod tcp;

#[cfg(test)]
mod daemon_tests;
#[cfg(test)]
mod testhost;
#[cfg(test)]
mod tests;

pub use client::SimClient;
pub use daemon::{spawn_daemon, spawn_daemon_with, DaemonOptions, DaemonStatus};
pub use faults::{
    AbortSeen, AsyncEvent, AsyncEventType, CommandMatch, FaultAction, FaultCounters, FaultId,
    FaultRule, Faults, QueueMatch, Repeat, AER_INFO_SMART_TEMPERATURE,
};
pub use stats::SimStats;
pub use tcp::{DigestPolicy, TcpTarget, TcpTargetOptions, DEFAULT_SUBNQN};

/// Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`; not for other uses).
#[cfg(feature = "fuzzing")]
pub use daemon::fuzzing;

use mem::Mapping;

/// Stack size of every thread the crate starts.
pub(crate) const THREAD_STACK: usize = 2 << 20;

/// One namespace of the simulated controller.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct NamespaceConfig {
    /// Logical block size in bytes: 512 or 4096.
    pub lba_size: u32,
    /// Size in logical blocks.
    pub blocks: u64,
}

impl Default for NamespaceConfig {
    /// 512-byte blocks, 1 GiB.
    fn default() -> Self {
        NamespaceConfig {
            lba_size: 512,
            blocks: (1 << 30) / 512,
        }
    }
}

/// Configuration of a [`SimController`].
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Namespaces, NSID 1 first. Default: one namespace of 1 GiB with 512-byte blocks.
    pub namespaces: Vec<NamespaceConfig>,
    /// CAP.MQES: maximum queue entries, 0's based (default 1023).
    pub mqes: u16,
    /// Identify Controller MDTS: maximum transfer as a power of two of the minimum memory
    /// page size (default 5: 128 KiB with 4 KiB pages); 0 = unlimited.
    pub mdts: u8,
    /// CAP.DSTRD: doorbells are `4 << dstrd` bytes apart (default 0).
    pub dstrd: u8,
    /// CAP.TO in 500 ms units (default 2: 1 s).
    pub timeout_500ms: u8,
    /// I/O queues granted at most by Set Features Number of Queues (default 64).
    pub max_io_queues: u16,
    /// CAP.MPSMIN (default 0: 4 KiB).
    pub mpsmin: u8,
    /// CAP.MPSMAX (default 4: 64 KiB).
    pub mpsmax: u8,
    /// Serial number (at most 20 ASCII characters are reported).
    pub serial: String,
    /// Model number (at most 40 ASCII characters are reported).
    pub model: String,
    /// Firmware revision (at most 8 ASCII characters are reported).
    pub firmware: String,
    /// Time CSTS.RDY takes to follow CC.EN (default 0).
    pub ready_delay: Duration,
    /// Offer Doorbell Buffer Config (Identify OACS bit 8: shadow doorbells and EventIdx, as
    /// QEMU's controller does; default true).
    pub shadow_doorbells: bool,
    /// Report SGL support for NVM commands (Identify SGLS 01b, as QEMU's controller does)
    /// and accept SGL data pointers (PSDT 01b) on I/O queues (default true).
    pub sgl: bool,
    /// MSI-X interrupt vectors (default 65, like QEMU's controller). A completion queue
    /// created with interrupts on a vector at or past this count is refused with Invalid
    /// Interrupt Vector; [`SimController::set_interrupt`] gives a vector its eventfd.
    pub interrupt_vectors: u16,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            namespaces: vec![NamespaceConfig::default()],
            mqes: 1023,
            mdts: 5,
            dstrd: 0,
            timeout_500ms: 2,
            max_io_queues: 64,
            mpsmin: 0,
            mpsmax: 4,
            serial: "SIM0001".into(),
            model: "nvme-sim software controller".into(),
            firmware: "0.1.0".into(),
            ready_delay: Duration::ZERO,
            shadow_doorbells: true,
            sgl: true,
            interrupt_vectors: 65,
        }
    }
}

impl SimConfig {
    fn validate(&self) -> Result<(), SimError> {
        let bad = |m: String| Err(SimError::InvalidConfig(m));
        for (i, ns) in self.namespaces.iter().enumerate() {
            if ns.lba_size != 512 && ns.lba_size != 4096 {
                return bad(format!(
                    "namespace {}: lba_size {} (must be 512 or 4096)",
                    i + 1,
                    ns.lba_size
                ));
            }
            if ns.blocks == 0
                || ns
                    .blocks
                    .checked_mul(ns.lba_size as u64)
                    .is_none_or(|b| b > 1 << 46)
            {
                return bad(format!(
                    "namespace {}: {} blocks is not a usable size",
                    i + 1,
                    ns.blocks
                ));
            }
        }
        if self.namespaces.len() > 1024 {
            return bad(format!(
                "{} namespaces (at most 1024)",
                self.namespaces.len()
            ));
        }
        if self.mqes == 0 {
            return bad("mqes 0: queues need at least 2 entries (MQES is 0's based)".into());
        }
        if self.dstrd > 15 {
            return bad(format!("dstrd {} (CAP.DSTRD is 4 bits)", self.dstrd));
        }
        if self.mpsmin > self.mpsmax || self.mpsmax > 15 {
            return bad(format!("mpsmin {} / mpsmax {}", self.mpsmin, self.mpsmax));
        }
        if self.max_io_queues == 0 || self.max_io_queues == u16::MAX {
            return bad(format!("max_io_queues {} (1..=65534)", self.max_io_queues));
        }
        if self.interrupt_vectors > 2048 {
            return bad(format!(
                "interrupt_vectors {} (MSI-X has at most 2048)",
                self.interrupt_vectors
            ));
        }
        let min_page = 4096u64 << self.mpsmin;
        if self.mdts != 0 && (self.mdts > 20 || (min_page << self.mdts) > 1 << 30) {
            return bad(format!("mdts {} too large", self.mdts));
        }
        Ok(())
    }

    /// The CAP register this configuration reports.
    pub fn cap(&self) -> nvme_regs::registers::Cap {
        nvme_regs::registers::Cap::new(
            self.mqes,
            true,
            self.timeout_500ms,
            self.dstrd,
            false,
            nvme_regs::registers::CAP_CSS_NVM,
            self.mpsmin,
            self.mpsmax,
        )
    }

    /// BAR0 size: registers plus every doorbell pair (admin and `max_io_queues` I/O queues)
    /// at the configured stride, rounded up to pages, at least 64 KiB.
    pub fn bar_len(&self) -> usize {
        let end = nvme_regs::registers::cq_head_doorbell(self.max_io_queues, self.dstrd) + 4;
        let page = mem::page_size();
        (end.div_ceil(page) * page).max(64 * 1024)
    }
}

/// Errors of the controller's API (not NVMe statuses: those go to completion entries).
#[derive(Debug)]
pub enum SimError {
    /// The configuration cannot be simulated.
    InvalidConfig(String),
    /// An argument is out of range.
    InvalidArgument(String),
    /// A system call failed.
    Io {
        /// What the controller was doing.
        op: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// `dma_map` of a range that overlaps an existing mapping.
    DmaOverlap {
        /// Requested IOVA.
        iova: u64,
        /// Requested length.
        len: u64,
        /// IOVA of the mapping in the way.
        existing_iova: u64,
        /// Length of the mapping in the way.
        existing_len: u64,
    },
    /// `dma_unmap` of a range that contains no mapping.
    DmaNotMapped {
        /// Requested IOVA.
        iova: u64,
        /// Requested length.
        len: u64,
    },
    /// `dma_unmap` of a range that cuts a mapping in two.
    DmaPartialUnmap {
        /// Requested IOVA.
        iova: u64,
        /// Requested length.
        len: u64,
        /// IOVA of the mapping that would be split.
        existing_iova: u64,
        /// Length of the mapping that would be split.
        existing_len: u64,
    },
    /// No namespace with this NSID.
    NoSuchNamespace(u32),
    /// A backing store access beyond the end of the namespace.
    OutOfRange {
        /// Namespace.
        nsid: u32,
        /// Byte offset requested.
        offset: u64,
        /// Length requested.
        len: u64,
        /// Namespace size in bytes.
        size: u64,
    },
    /// The processing thread could not be started.
    Thread(std::io::Error),
    /// A message from the other end of a daemon connection is malformed or unexpected
    /// (including a protocol version mismatch between builds).
    Protocol(String),
    /// The controller process reported an error of its own (a system call failed there).
    Daemon(String),
    /// The controller process closed the connection (it exited or was killed).
    Disconnected,
    /// The other end of a daemon connection runs as another user.
    PeerCredentials {
        /// The peer's pid as the kernel reported it (`SO_PEERCRED`).
        peer_pid: u32,
        /// The peer's uid.
        peer_uid: u32,
        /// The uid this end requires.
        expected_uid: u32,
    },
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SimError::InvalidConfig(m) => {
                write!(f, "invalid simulated controller configuration: {m}")
            }
            SimError::InvalidArgument(m) => write!(f, "invalid argument: {m}"),
            SimError::Io { op, source } => write!(f, "{op} failed: {source}"),
            SimError::DmaOverlap {
                iova,
                len,
                existing_iova,
                existing_len,
            } => write!(
                f,
                "DMA mapping [{iova:#x}, +{len:#x}) overlaps the existing mapping \
                 [{existing_iova:#x}, +{existing_len:#x})"
            ),
            SimError::DmaNotMapped { iova, len } => {
                write!(f, "no DMA mapping inside [{iova:#x}, +{len:#x}) to unmap")
            }
            SimError::DmaPartialUnmap {
                iova,
                len,
                existing_iova,
                existing_len,
            } => write!(
                f,
                "DMA unmap of [{iova:#x}, +{len:#x}) would split the mapping \
                 [{existing_iova:#x}, +{existing_len:#x}); unmap whole mappings"
            ),
            SimError::NoSuchNamespace(n) => write!(f, "no namespace with NSID {n}"),
            SimError::OutOfRange {
                nsid,
                offset,
                len,
                size,
            } => write!(
                f,
                "namespace {nsid}: bytes [{offset:#x}, +{len:#x}) are beyond its {size:#x} bytes"
            ),
            SimError::Thread(e) => write!(f, "cannot start the controller thread: {e}"),
            SimError::Protocol(m) => {
                write!(f, "software controller process protocol error: {m}")
            }
            SimError::Daemon(m) => write!(f, "software controller process: {m}"),
            SimError::Disconnected => write!(
                f,
                "the software controller process closed the connection (it exited or was killed)"
            ),
            SimError::PeerCredentials {
                peer_pid,
                peer_uid,
                expected_uid,
            } => write!(
                f,
                "refusing peer process {peer_pid} running as uid {peer_uid}: the software \
                 controller process and its clients must all run as uid {expected_uid}"
            ),
        }
    }
}

impl std::error::Error for SimError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SimError::Io { source, .. } | SimError::Thread(source) => Some(source),
            _ => None,
        }
    }
}

/// A namespace's storage: a sparse memfd mapped shared, of the capacity configured for its
/// NSID, and the namespace's state on it. Format NVM changes its LBA format (the block
/// count follows from the capacity), Namespace Management allocates and deletes it,
/// Namespace Attachment attaches and detaches it; the processing thread is the only writer
/// of these fields, the API's readers load them.
pub(crate) struct Namespace {
    fd: OwnedFd,
    map: Mapping,
    /// Bytes of storage behind the NSID (what it was configured with).
    capacity: u64,
    lba_size: AtomicU32,
    blocks: AtomicU64,
    /// Allocated (Namespace Management) ...
    allocated: AtomicBool,
    /// ... and attached to the controller (Namespace Attachment): active when both.
    attached: AtomicBool,
}

impl Namespace {
    fn new(nsid: u32, cfg: &NamespaceConfig) -> Result<Namespace, SimError> {
        let bytes = cfg.blocks * cfg.lba_size as u64;
        let len = usize::try_from(bytes)
            .map_err(|_| SimError::InvalidConfig(format!("namespace {nsid} too large")))?;
        let fd = mem::create_memfd(&format!("nvme-sim-ns{nsid}"), bytes)?;
        let map = Mapping::map(fd.as_fd(), 0, len, true)?;
        Ok(Namespace {
            fd,
            map,
            capacity: bytes,
            lba_size: AtomicU32::new(cfg.lba_size),
            blocks: AtomicU64::new(cfg.blocks),
            allocated: AtomicBool::new(true),
            attached: AtomicBool::new(true),
        })
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.blocks() * self.lba_size() as u64
    }

    pub(crate) fn lba_size(&self) -> u32 {
        self.lba_size.load(Ordering::Acquire)
    }

    pub(crate) fn blocks(&self) -> u64 {
        self.blocks.load(Ordering::Acquire)
    }

    /// Bytes of storage behind the NSID.
    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Allocated by Namespace Management (configured namespaces start allocated).
    pub(crate) fn allocated(&self) -> bool {
        self.allocated.load(Ordering::Acquire)
    }

    /// Allocated and attached: commands may address it.
    #[inline]
    pub(crate) fn active(&self) -> bool {
        self.attached.load(Ordering::Acquire) && self.allocated()
    }

    /// Gives the namespace `blocks` blocks of `lba_size` bytes (the caller checked they fit
    /// the capacity) and zeroes its storage: a new format, or a new allocation.
    pub(crate) fn set_format(&self, lba_size: u32, blocks: u64) {
        self.zero(0, self.capacity);
        self.lba_size.store(lba_size, Ordering::Release);
        self.blocks.store(blocks, Ordering::Release);
    }

    /// Marks the namespace allocated or not (deleted: its storage is zeroed too).
    pub(crate) fn set_allocated(&self, on: bool) {
        if !on {
            self.zero(0, self.capacity);
        }
        self.allocated.store(on, Ordering::Release);
    }

    /// Attaches or detaches the namespace.
    pub(crate) fn set_attached(&self, on: bool) {
        self.attached.store(on, Ordering::Release);
    }

    /// The storage's mapping in this process (byte `i` of the namespace at offset `i`).
    pub(crate) fn map(&self) -> &Mapping {
        &self.map
    }

    /// Zeroes `[offset, offset + len)` (caller checked the range), releasing whole pages.
    pub(crate) fn zero(&self, offset: u64, len: u64) {
        let page = mem::page_size() as u64;
        let start = offset.next_multiple_of(page);
        let end = (offset + len) & !(page - 1);
        // [o, o + l) lies inside the mapping (the caller checked the range).
        let memset = |o: u64, l: u64| self.map.fill(o as usize, l as usize, 0);
        if len >= 16 * page && start < end && mem::punch_hole(self.fd.as_fd(), start, end - start) {
            memset(offset, start - offset);
            memset(end, offset + len - end);
        } else {
            memset(offset, len);
        }
    }

    fn check(&self, nsid: u32, offset: u64, len: usize) -> Result<(), SimError> {
        if offset
            .checked_add(len as u64)
            .is_none_or(|e| e > self.bytes())
        {
            return Err(SimError::OutOfRange {
                nsid,
                offset,
                len: len as u64,
                size: self.bytes(),
            });
        }
        Ok(())
    }
}

/// Direct access to one namespace's backing bytes (see [`SimController::namespace_data`]).
pub struct NamespaceData<'a> {
    nsid: u32,
    ns: &'a Namespace,
}

impl NamespaceData<'_> {
    /// The namespace's NSID.
    pub fn nsid(&self) -> u32 {
        self.nsid
    }
    /// Logical block size in bytes (of its current LBA format).
    pub fn lba_size(&self) -> u32 {
        self.ns.lba_size()
    }
    /// Size in logical blocks.
    pub fn blocks(&self) -> u64 {
        self.ns.blocks()
    }
    /// Whether the namespace is active: allocated and attached to the controller
    /// (Namespace Management and Attachment change it; configured ones start active).
    pub fn active(&self) -> bool {
        self.ns.active()
    }
    /// Size in bytes.
    pub fn len_bytes(&self) -> u64 {
        self.ns.bytes()
    }
    /// The memfd holding the namespace (byte `i` of the namespace at file offset `i`).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.ns.fd.as_fd()
    }
    /// Copies bytes of the namespace starting at `byte_offset` into `buf`.
    pub fn read(&self, byte_offset: u64, buf: &mut [u8]) -> Result<(), SimError> {
        self.ns.check(self.nsid, byte_offset, buf.len())?;
        self.ns.map.read(byte_offset as usize, buf);
        Ok(())
    }
    /// Copies `data` into the namespace at `byte_offset`.
    pub fn write(&self, byte_offset: u64, data: &[u8]) -> Result<(), SimError> {
        self.ns.check(self.nsid, byte_offset, data.len())?;
        self.ns.map.write(byte_offset as usize, data);
        Ok(())
    }
}

/// State shared between the API and the processing thread.
pub(crate) struct Shared {
    pub(crate) stop: AtomicBool,
    pub(crate) faults: Faults,
    pub(crate) stats: stats::Counters,
    pub(crate) dma: Arc<dma::DmaShared>,
    pub(crate) fatal_reason: Mutex<Option<String>>,
    pub(crate) irqs: irq::Vectors,
}

/// A running software NVMe controller. Dropping it stops and joins its thread.
pub struct SimController {
    shared: Arc<Shared>,
    bar_fd: OwnedFd,
    bar_len: usize,
    namespaces: Arc<[Namespace]>,
    thread: Option<JoinHandle<()>>,
}

impl SimController {
    /// Creates the BAR and namespace storage and starts the processing thread. The
    /// controller starts disabled (CC.EN = 0, CSTS.RDY = 0), CAP and VS already set.
    pub fn start(config: SimConfig) -> Result<SimController, SimError> {
        config.validate()?;
        let bar_len = config.bar_len();
        let bar_fd = mem::create_memfd("nvme-sim-bar0", bar_len as u64)?;
        let bar = bar::Bar::new(Mapping::map(bar_fd.as_fd(), 0, bar_len, false)?);
        let namespaces = config
            .namespaces
            .iter()
            .enumerate()
            .map(|(i, ns)| Namespace::new(i as u32 + 1, ns))
            .collect::<Result<Vec<_>, _>>()?;
        let namespaces: Arc<[Namespace]> = namespaces.into();
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            faults: Faults::new(),
            stats: stats::Counters::default(),
            dma: Arc::new(dma::DmaShared::new()),
            fatal_reason: Mutex::new(None),
            irqs: irq::Vectors::new(config.interrupt_vectors),
        });
        // CAP and VS are valid before `start` returns.
        bar.store64(nvme_regs::registers::offset::CAP, config.cap().0);
        bar.store32(
            nvme_regs::registers::offset::VS,
            nvme_regs::registers::Vs::V1_4.0,
        );
        let (sh, ns) = (shared.clone(), namespaces.clone());
        let thread = std::thread::Builder::new()
            .name("nvme-sim".into())
            // An explicit size: the default makes std read RUST_MIN_STACK under the
            // environment lock, which may be held forever in a forked daemon (`spawn_daemon`).
            .stack_size(THREAD_STACK)
            .spawn(move || ctrl::Controller::new(config, bar, sh, ns).run())
            .map_err(SimError::Thread)?;
        Ok(SimController {
            shared,
            bar_fd,
            bar_len,
            namespaces,
            thread: Some(thread),
        })
    }

    /// The memfd holding BAR0 (registers at offset 0, doorbells from 0x1000). Map it
    /// `MAP_SHARED` for [`bar_len`](Self::bar_len) bytes.
    pub fn bar_fd(&self) -> BorrowedFd<'_> {
        self.bar_fd.as_fd()
    }

    /// Size of BAR0 in bytes (a multiple of the page size, at least 64 KiB).
    pub fn bar_len(&self) -> usize {
        self.bar_len
    }

    /// Lets the controller access `len` bytes of `fd` from `offset` at device addresses
    /// `[iova, iova + len)`, like `VFIO_IOMMU_MAP_DMA`. The controller maps the range
    /// itself (`MAP_SHARED`), so `fd` may be closed afterwards.
    pub fn dma_map(
        &self,
        iova: u64,
        fd: BorrowedFd<'_>,
        offset: u64,
        len: usize,
    ) -> Result<(), SimError> {
        self.shared.dma.map(iova, fd, offset, len)
    }

    /// Makes the controller signal `eventfd` (an `eventfd(2)`, written with 1) whenever it
    /// posts to a completion queue created with interrupts on `vector`; `None` stops the
    /// vector signalling. Like `VFIO_DEVICE_SET_IRQS` for one MSI-X vector.
    pub fn set_interrupt(
        &self,
        vector: u16,
        eventfd: Option<BorrowedFd<'_>>,
    ) -> Result<(), SimError> {
        self.shared.irqs.set(vector, eventfd)
    }

    /// The controller's MSI-X interrupt vectors ([`SimConfig::interrupt_vectors`]).
    pub fn interrupt_vectors(&self) -> u16 {
        self.shared.irqs.count()
    }

    /// Interrupts signalled so far (posts to an interrupt-enabled completion queue whose
    /// vector has an eventfd).
    pub fn interrupts_signalled(&self) -> u64 {
        self.shared.irqs.signalled()
    }

    /// Removes every DMA mapping inside `[iova, iova + len)` (a mapping may not be split).
    /// When this returns, commands that start from now on no longer see the range. Queues
    /// created earlier on that memory keep their own reference to it until deleted.
    pub fn dma_unmap(&self, iova: u64, len: usize) -> Result<(), SimError> {
        let g = self.shared.dma.unmap(iova, len)?;
        while !self.shared.dma.acknowledged(g)
            && self.thread.as_ref().is_some_and(|t| !t.is_finished())
        {
            std::thread::sleep(Duration::from_micros(20));
        }
        Ok(())
    }

    /// How many times the controller accessed (or was about to access) host memory through
    /// an IOVA that was not mapped: a command's data or PRP list, or a queue ring unmapped
    /// while the queue exists. An IOMMU would fault these; the controller fails the
    /// transfer (Data Transfer Error) or stops using the ring, and counts it here.
    pub fn dma_errors(&self) -> u64 {
        self.shared.dma.errors()
    }

    /// Descriptions of the latest DMA errors (see [`dma_errors`](Self::dma_errors)), oldest
    /// first.
    pub fn dma_error_log(&self) -> Vec<String> {
        self.shared.dma.error_log()
    }

    /// Fault injection controls.
    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// Number of namespaces (NSIDs are `1..=count`).
    pub fn namespace_count(&self) -> u32 {
        self.namespaces.len() as u32
    }

    /// Direct access to the backing bytes of namespace `nsid`.
    pub fn namespace_data(&self, nsid: u32) -> Result<NamespaceData<'_>, SimError> {
        let ns = nsid
            .checked_sub(1)
            .and_then(|i| self.namespaces.get(i as usize))
            .ok_or(SimError::NoSuchNamespace(nsid))?;
        Ok(NamespaceData { nsid, ns })
    }

    /// Copies namespace `nsid`'s bytes from `byte_offset` into `buf`.
    pub fn read_backing(
        &self,
        nsid: u32,
        byte_offset: u64,
        buf: &mut [u8],
    ) -> Result<(), SimError> {
        self.namespace_data(nsid)?.read(byte_offset, buf)
    }

    /// Writes `data` into namespace `nsid` at `byte_offset`, bypassing the command path.
    pub fn write_backing(&self, nsid: u32, byte_offset: u64, data: &[u8]) -> Result<(), SimError> {
        self.namespace_data(nsid)?.write(byte_offset, data)
    }

    /// A snapshot of the command counters.
    pub fn stats(&self) -> SimStats {
        self.shared.stats.snapshot()
    }

    /// Why the controller last set CSTS.CFS (invalid enable, injected fault), if it did.
    pub fn fatal_reason(&self) -> Option<String> {
        self.shared
            .fatal_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for SimController {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl fmt::Debug for SimController {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimController")
            .field("bar_len", &self.bar_len)
            .field("namespaces", &self.namespaces.len())
            .finish_non_exhaustive()
    }
}
