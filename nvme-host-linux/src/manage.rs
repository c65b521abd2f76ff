//! Commands that change the namespaces or test the device: Format NVM, Device Self-test
//! (and its log), Namespace Management and Namespace Attachment, and the rescan that
//! brings the controller's namespace list up to date after them.
//!
//! What changes under a running group: a format changes a namespace's block size and
//! count, so it is refused while any process of the group (this one included) has I/O
//! queues, whose queue pairs keep the geometry they were created with; the check is made
//! once, before the command is sent (a queue created after it is not stopped). Namespace
//! Management and Attachment change which namespaces are active: this controller rescans
//! at once, the other processes of the group when they read the Namespace Attribute
//! Changed notice ([`Controller::async_events`]) or call
//! [`Controller::rescan_namespaces`]; their existing queue pairs keep the namespaces they
//! were created with, and commands to a namespace that went away fail with the
//! controller's Invalid Namespace status. Processes that join later read the namespaces
//! from the group's record (`group::nsrecord`), which each of these commands empties before
//! it is sent and fills again with its rescan.
//!
//! The bring-up asks for Namespace Attribute Notices (Asynchronous Event Configuration bit
//! 8) when the controller offers them (OAES bit 8; `nvme_core::init::async_event_config`);
//! the software controller sends the notice only then, as the spec says. A controller that
//! does not offer them sends none, and the other processes must call
//! [`Controller::rescan_namespaces`] themselves.

use std::time::Duration;

use nvme_core::{Command, Completion};
use nvme_regs::identify::{IdentifyNamespace, Oacs, IDENTIFY_DATA_SIZE};
use nvme_regs::log::{lid, AsyncEvent, SelfTestLog};
use nvme_regs::opcode::{controller_list, format_nvm_cdw10, ns_sel, AdminOpcode};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

use crate::controller::Controller;
use crate::error::{Error, Result};
use crate::group::nsrecord::RecordLock;

/// How long a Format NVM may take by default (nvme-cli's default too): formats of large
/// namespaces take minutes, far past the admin timeout.
pub const FORMAT_TIMEOUT: Duration = Duration::from_secs(600);

/// How long Namespace Management and Attachment may take by default (nvme-cli's).
pub const NS_MANAGEMENT_TIMEOUT: Duration = Duration::from_secs(120);

/// Bytes of the Device Self-test log page.
const SELF_TEST_LOG_LEN: usize = std::mem::size_of::<SelfTestLog>();

/// Options of Format NVM ([`Controller::format`]), as in the command's dword 10.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FormatOptions {
    /// LBA format index (Identify Namespace LBAF0-15).
    pub lbaf: u8,
    /// Secure erase settings: 0 none, 1 user data erase, 2 cryptographic erase.
    pub ses: u8,
    /// Protection information type (0: none).
    pub pi: u8,
    /// Protection information in the first bytes of metadata (else the last).
    pub pil: bool,
    /// Metadata transferred with the data (extended LBA).
    pub ms: bool,
    /// How long to wait for the format ([`FORMAT_TIMEOUT`] when `None`).
    pub timeout: Option<Duration>,
}

/// A namespace to create ([`Controller::create_namespace`]): the fields of the Identify
/// Namespace structure Namespace Management takes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NamespaceSpec {
    /// Size in logical blocks (NSZE).
    pub nsze: u64,
    /// Capacity in logical blocks (NCAP).
    pub ncap: u64,
    /// Formatted LBA size (FLBAS): the LBA format index.
    pub flbas: u8,
    /// End-to-end data protection settings (DPS).
    pub dps: u8,
    /// Multi-path I/O and sharing (NMIC; bit 0: may be attached to several controllers).
    pub nmic: u8,
    /// ANA group (ANAGRPID).
    pub anagrpid: u32,
    /// NVM set (NVMSETID).
    pub nvmsetid: u16,
    /// Command set (CSI, dword 11 bits 31:24; 0: NVM).
    pub csi: u8,
    /// How long to wait ([`NS_MANAGEMENT_TIMEOUT`] when `None`).
    pub timeout: Option<Duration>,
}

/// Is `e` a Namespace Attribute Changed notice (type Notice, information 00h)?
pub(crate) fn is_namespace_change(e: &AsyncEvent) -> bool {
    e.event_type == 2 && e.info == 0
}

/// `/proc/<pid>/comm`, or `?`.
fn process_name(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_else(|_| "?".into())
}

impl Controller {
    /// Reads the active namespace list and each namespace's Identify data again and makes
    /// them what [`namespaces`](Self::namespaces) returns; returns whether anything
    /// changed. Queue pairs created before keep the namespaces they were created with.
    /// (Earlier lists are kept until detach so that references to them stay valid: a few
    /// KiB per namespace per change.)
    ///
    /// In a shared-memory group the list is also recorded in the group for the processes
    /// that join after (when no other process is updating that record right now).
    pub fn rescan_namespaces(&self) -> Result<bool> {
        let lock = self
            .shared_group()
            .and_then(|g| g.try_lock_namespace_record());
        self.rescan_holding(lock.as_ref())
    }

    /// [`rescan_namespaces`](Self::rescan_namespaces), holding the group's namespace record
    /// lock or not (`lock`).
    fn rescan_holding(&self, lock: Option<&RecordLock<'_>>) -> Result<bool> {
        let read = |cmd| self.admin_read(cmd, IDENTIFY_DATA_SIZE);
        let list = match self.shared_group() {
            Some(g) => crate::namespace::identify_recorded(g, lock, read)?,
            None => crate::namespace::identify_active(read)?,
        };
        Ok(self.namespace_table().update(list))
    }

    /// Runs `command`, which changes namespaces, then rescans. In a group it holds the
    /// namespace record's lock throughout (waiting at most the admin timeout for it) and
    /// empties the record first, so that processes joining meanwhile, or after this one
    /// died half-way, send Identify instead of reading a list the command made stale.
    fn changing_namespaces(&self, command: impl FnOnce() -> Result<Completion>) -> Result<()> {
        let lock = match self.shared_group() {
            Some(g) => Some(g.lock_namespace_record(self.options().admin_timeout)?),
            None => None,
        };
        if let Some(l) = &lock {
            l.invalidate();
        }
        command()?;
        self.rescan_holding(lock.as_ref())?;
        Ok(())
    }

    /// Who has I/O queues: one description per process (pid, name, queue ids), or empty.
    /// In a group over NVMe/TCP the other members' queues are their associations' and
    /// invisible here: every other member counts as having some.
    fn io_queue_holders(&self) -> Vec<String> {
        let mut holders: Vec<(u16, u32)> = match self.shared_group() {
            Some(g) => g.qid_holders(),
            None => self
                .local_qids()
                .into_iter()
                .map(|q| (q, std::process::id()))
                .collect(),
        };
        if let Some(g) = self.group().filter(|g| g.fabrics()) {
            let others = g.member_pids().into_iter();
            holders.extend(others.filter(|&p| p != std::process::id()).map(|p| (0, p)));
        }
        let mut pids: Vec<u32> = holders.iter().map(|&(_, p)| p).collect();
        pids.sort_unstable();
        pids.dedup();
        pids.into_iter()
            .map(|pid| {
                let qids: Vec<String> = holders
                    .iter()
                    .filter(|&&(q, p)| p == pid && q != 0)
                    .map(|(q, _)| q.to_string())
                    .collect();
                let who = match pid {
                    0 => "a process that left the group".to_string(),
                    p if p == std::process::id() => format!("pid {p} (this process)"),
                    p => format!("pid {p} ({})", process_name(p)),
                };
                if qids.is_empty() {
                    format!("{who}: I/O queues")
                } else {
                    format!("{who}: I/O queue ids {}", qids.join(", "))
                }
            })
            .collect()
    }

    /// Checks that the controller offers `bit` of OACS (`what` names the commands).
    fn require_oacs(&self, bit: Oacs, what: &str) -> Result<()> {
        if Oacs::from_bits_truncate(self.identify().oacs).contains(bit) {
            return Ok(());
        }
        Err(Error::Invalid(format!(
            "{}: the controller does not support {what} (Identify Controller OACS bit {} is 0)",
            self.name(),
            bit.bits().trailing_zeros()
        )))
    }

    /// Format NVM of namespace `nsid` (or every namespace with `u32::MAX`), waiting up to
    /// `opts.timeout` ([`FORMAT_TIMEOUT`]); the namespaces are rescanned after it
    /// ([`rescan_namespaces`](Self::rescan_namespaces)), so that
    /// [`namespace`](Self::namespace) reports the new block size and count.
    ///
    /// Refused before anything is sent: a controller without Format NVM (OACS bit 1), a
    /// namespace that is not active, and a group in which any process has I/O queues (the
    /// error names the processes and their queue ids: their queue pairs would keep using
    /// the old block size; in a group over NVMe/TCP, whose members' queues are their own
    /// associations', any other member). A format that outlasts its timeout gets
    /// [`AttachOptions::timeout_action`](crate::AttachOptions::timeout_action).
    pub fn format(&self, nsid: u32, opts: FormatOptions) -> Result<()> {
        self.require_oacs(Oacs::FORMAT_NVM, "Format NVM")?;
        if nsid != u32::MAX {
            self.namespace(nsid)?;
        }
        let holders = self.io_queue_holders();
        if !holders.is_empty() {
            return Err(Error::Invalid(format!(
                "format of namespace {nsid:#x} refused: I/O queues are in use, and their queue pairs would keep the old block size ({}); stop those processes (or drop this process's queue pairs) and format again",
                holders.join("; ")
            )));
        }
        if opts.lbaf > 15 || opts.ses > 7 || opts.pi > 7 {
            return Err(Error::Invalid(format!(
                "format: LBA format {} (0-15), secure erase {} (0-7) or protection information {} (0-7) does not fit its field",
                opts.lbaf, opts.ses, opts.pi
            )));
        }
        let cmd = Command::new(AdminOpcode::FormatNvm as u8, nsid).cdw10(format_nvm_cdw10(
            opts.lbaf, opts.ms, opts.pi, opts.pil, opts.ses,
        ));
        self.changing_namespaces(|| {
            self.admin_command_timeout(cmd, None, opts.timeout.unwrap_or(FORMAT_TIMEOUT))
        })
    }

    /// Device Self-test: starts test `code` (1 short, 2 extended, Eh vendor specific) on
    /// namespace `nsid` (0: the controller alone, `u32::MAX`: every namespace), or aborts
    /// the running one (code Fh). The test runs in the background; its progress and
    /// result are in [`self_test_log`](Self::self_test_log).
    pub fn device_self_test(&self, nsid: u32, code: u8) -> Result<()> {
        self.require_oacs(Oacs::SELF_TEST, "Device Self-test")?;
        if code > 0xf {
            return Err(Error::Invalid(format!(
                "self-test code {code:#x} does not fit its 4 bits: 1 short, 2 extended, 0xe vendor specific, 0xf abort"
            )));
        }
        let cmd = Command::new(AdminOpcode::DeviceSelfTest as u8, nsid).cdw10(code as u32);
        self.admin_command(cmd, None)?;
        Ok(())
    }

    /// The Device Self-test log page (LID 06h): the running test and the last 20 results.
    pub fn self_test_log(&self) -> Result<SelfTestLog> {
        let b = self.get_log_page(lid::SELF_TEST, u32::MAX, SELF_TEST_LOG_LEN, 0)?;
        Ok(SelfTestLog::read_from_bytes(&b).expect("564 bytes"))
    }

    /// Namespace Management create: returns the new NSID. The namespace is not attached
    /// (see [`attach_namespace`](Self::attach_namespace)).
    pub fn create_namespace(&self, spec: &NamespaceSpec) -> Result<u32> {
        self.require_oacs(Oacs::NS_MANAGEMENT, "Namespace Management")?;
        let mut id = IdentifyNamespace::new_zeroed();
        id.nsze = spec.nsze;
        id.ncap = spec.ncap;
        id.flbas = spec.flbas;
        id.dps = spec.dps;
        id.nmic = spec.nmic;
        id.anagrpid = spec.anagrpid;
        id.nvmsetid = spec.nvmsetid;
        let mut buf = self.alloc_dma(IDENTIFY_DATA_SIZE)?;
        buf.as_mut_slice()[..IDENTIFY_DATA_SIZE].copy_from_slice(id.as_bytes());
        let cmd = Command::new(AdminOpcode::NamespaceManagement as u8, 0)
            .cdw10(ns_sel::CREATE)
            .cdw11((spec.csi as u32) << 24);
        let timeout = spec.timeout.unwrap_or(NS_MANAGEMENT_TIMEOUT);
        let c =
            self.admin_command_timeout(cmd, Some(buf.slice(0..IDENTIFY_DATA_SIZE)?), timeout)?;
        Ok(c.dw0)
    }

    /// Namespace Management delete of `nsid` (`u32::MAX`: every namespace), then a rescan.
    pub fn delete_namespace(&self, nsid: u32, timeout: Option<Duration>) -> Result<()> {
        self.require_oacs(Oacs::NS_MANAGEMENT, "Namespace Management")?;
        let cmd = Command::new(AdminOpcode::NamespaceManagement as u8, nsid).cdw10(ns_sel::DELETE);
        self.changing_namespaces(|| {
            self.admin_command_timeout(cmd, None, timeout.unwrap_or(NS_MANAGEMENT_TIMEOUT))
        })
    }

    /// Namespace Attachment: attaches namespace `nsid` to the controllers `controllers`
    /// (controller ids; this controller's is Identify CNTLID), then a rescan.
    pub fn attach_namespace(&self, nsid: u32, controllers: &[u16]) -> Result<()> {
        self.namespace_attachment(nsid, controllers, ns_sel::ATTACH)
    }

    /// Namespace Attachment: detaches namespace `nsid` from `controllers`, then a rescan.
    pub fn detach_namespace(&self, nsid: u32, controllers: &[u16]) -> Result<()> {
        self.namespace_attachment(nsid, controllers, ns_sel::DETACH)
    }

    fn namespace_attachment(&self, nsid: u32, controllers: &[u16], sel: u32) -> Result<()> {
        self.require_oacs(Oacs::NS_MANAGEMENT, "Namespace Attachment")?;
        if controllers.len() > 2047 {
            return Err(Error::Invalid(format!(
                "{} controller ids: a controller list holds at most 2047",
                controllers.len()
            )));
        }
        let mut buf = self.alloc_dma(IDENTIFY_DATA_SIZE)?;
        buf.as_mut_slice()[..IDENTIFY_DATA_SIZE].copy_from_slice(&controller_list(controllers));
        let cmd = Command::new(AdminOpcode::NamespaceAttachment as u8, nsid).cdw10(sel);
        let data = buf.slice(0..IDENTIFY_DATA_SIZE)?;
        self.changing_namespaces(|| {
            self.admin_command_timeout(cmd, Some(data), NS_MANAGEMENT_TIMEOUT)
        })
    }
}

#[cfg(all(test, feature = "sim"))]
mod tests {
    use super::*;
    use crate::QueueOptions;

    #[test]
    fn format_refreshes_the_namespace_and_is_refused_beside_queues() {
        let c = Controller::attach("trtype:sim size:1M lbasize:512").unwrap();
        assert_eq!(c.namespace(1).unwrap().block_size(), 512);
        let qp = c.alloc_io_queue(QueueOptions::new(4)).unwrap();
        let e = c
            .format(1, FormatOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("refused") && e.contains("(this process): I/O queue ids 1"),
            "{e}"
        );
        drop(qp);
        let opts = FormatOptions {
            lbaf: 1,
            ..Default::default()
        };
        c.format(1, opts).unwrap();
        let ns = c.namespace(1).unwrap();
        assert_eq!((ns.block_size(), ns.blocks()), (4096, 256));
        // A queue pair created now uses the new geometry.
        let mut qp = c.alloc_io_queue(QueueOptions::new(4)).unwrap();
        let mut buf = c.alloc_dma(4096).unwrap();
        qp.read_sync(1, 255, buf.slice(0..4096).unwrap()).unwrap();
        assert!(qp.read_sync(1, 256, buf.slice(0..4096).unwrap()).is_err());
        let e = c.format(7, opts).unwrap_err();
        assert!(matches!(e, Error::NoSuchNamespace(7)), "{e}");
    }

    #[test]
    fn namespace_management_rescans() {
        let c = Controller::attach("trtype:sim nscount:2 size:1M").unwrap();
        let cntlid = c.identify().cntlid;
        c.detach_namespace(2, &[cntlid]).unwrap();
        assert_eq!(c.namespaces().len(), 1);
        c.delete_namespace(2, None).unwrap();
        let spec = NamespaceSpec {
            nsze: 128,
            ncap: 128,
            flbas: 1,
            ..Default::default()
        };
        let nsid = c.create_namespace(&spec).unwrap();
        assert_eq!(nsid, 2);
        assert!(c.namespace(2).is_err(), "created, not attached");
        c.attach_namespace(2, &[cntlid]).unwrap();
        let ns = c.namespace(2).unwrap();
        assert_eq!((ns.blocks(), ns.block_size()), (128, 4096));
        // The notice the controller sent is read; nothing changed since this rescan.
        let start = std::time::Instant::now();
        while !c.async_events().iter().any(is_namespace_change) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no Namespace Attribute Changed notice"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!c.rescan_namespaces().unwrap());
    }

    #[test]
    fn self_test_starts_and_logs() {
        let c = Controller::attach("trtype:sim size:1M").unwrap();
        c.device_self_test(1, 1).unwrap();
        let e = c.device_self_test(1, 1).unwrap_err();
        assert!(e.to_string().contains("Self-test in Progress"), "{e}");
        c.device_self_test(0, 0xf).unwrap();
        let log = c.self_test_log().unwrap();
        assert_eq!(log.current_operation, 0);
        assert_eq!((log.results[0].code(), log.results[0].result()), (1, 1));
        assert!(c.device_self_test(0, 0x10).is_err());
    }
}
