//! Admin commands that change the namespaces or test the device: Format NVM, Device
//! Self-test (and its log page), Namespace Management and Namespace Attachment.
//!
//! The model: every NSID from 1 to NN (the configured namespaces) has the storage it was
//! configured with. Format NVM picks one of the two LBA formats (512 or 4096 bytes, no
//! metadata or protection information) and erases the namespace; Namespace Management
//! deletes a namespace (its storage is freed, the NSID unallocated) and creates one in the
//! first unallocated NSID whose storage holds it; Namespace Attachment attaches it to this
//! controller (the only one, CNTLID 1) or detaches it, and reports the change with a
//! Namespace Attribute Changed notice and the Changed Namespace List log page. A device
//! self-test runs in the background: a short one for [`SHORT_SELF_TEST`], an extended one
//! for [`EXTENDED_SELF_TEST`]; Abort (code Fh), Format NVM, deleting its namespace or a
//! controller reset end it early with the matching result.

use std::time::{Duration, Instant};

use nvme_regs::log::{self_test, SelfTestLog, SelfTestResult};
use nvme_regs::opcode::{controller_list_ids, format_nvm_fields, ns_sel};
use nvme_regs::status::CommandSpecificStatus as Cs;
use nvme_regs::SubmissionEntry;

use crate::admin::{cs, invalid_field, invalid_ns, CNTLID, LBA_FORMATS};
use crate::ctrl::{Controller, Outcome};
use crate::dma::{read_host, resolve_prps};
use crate::faults::{AsyncEvent, AsyncEventType};

/// How long a short device self-test runs.
pub(crate) const SHORT_SELF_TEST: Duration = Duration::from_millis(300);
/// How long an extended device self-test runs.
pub(crate) const EXTENDED_SELF_TEST: Duration = Duration::from_secs(3);
/// Identify EDSTT: the extended test's time, rounded up to minutes.
pub(crate) const EXTENDED_SELF_TEST_MINUTES: u16 = 1;

/// Namespace Attribute Changed (notice information 00h of event type Notice).
const NOTICE_NS_ATTRIBUTE_CHANGED: u8 = 0x00;

/// A running device self-test.
pub(crate) struct SelfTest {
    code: u8,
    nsid: u32,
    started: Instant,
    runs: Duration,
}

impl Controller {
    /// Data of an admin command (host to controller) into `out`.
    fn receive(&mut self, cmd: &SubmissionEntry, out: &mut [u8]) -> Result<(), Outcome> {
        resolve_prps(
            &mut self.dma,
            &mut self.segs,
            cmd.prp1,
            cmd.prp2,
            out.len(),
            self.page_size,
        )
        .map_err(Outcome::from)?;
        read_host(&self.segs, out);
        Ok(())
    }

    fn power_on_hours(&self) -> u64 {
        self.started.elapsed().as_secs() / 3600
    }

    // ---- Device Self-test ----

    pub(crate) fn device_self_test(&mut self, cmd: &SubmissionEntry) -> Outcome {
        let code = (cmd.cdw10 & 0xf) as u8;
        if cmd.nsid != 0 && cmd.nsid != u32::MAX && self.ns_index(cmd.nsid).is_none() {
            return invalid_ns().into();
        }
        match code {
            self_test::SHORT | self_test::EXTENDED => {
                if self.self_test.is_some() {
                    return cs(Cs::SelfTestInProgress).into();
                }
                self.self_test = Some(SelfTest {
                    code,
                    nsid: cmd.nsid,
                    started: Instant::now(),
                    runs: if code == self_test::SHORT {
                        SHORT_SELF_TEST
                    } else {
                        EXTENDED_SELF_TEST
                    },
                });
                Outcome::ok()
            }
            self_test::ABORT => {
                self.end_self_test(self_test::RESULT_ABORTED_BY_COMMAND);
                Outcome::ok()
            }
            _ => invalid_field().into(),
        }
    }

    /// Completes the running self-test when its time is up.
    pub(crate) fn check_self_test(&mut self) {
        if self
            .self_test
            .as_ref()
            .is_some_and(|t| t.started.elapsed() >= t.runs)
        {
            self.end_self_test(self_test::RESULT_OK);
        }
    }

    /// Ends the running self-test (if any) with `result` and logs it.
    pub(crate) fn end_self_test(&mut self, result: u8) {
        let Some(t) = self.self_test.take() else {
            return;
        };
        if self.self_test_results.len() == self_test::RESULTS {
            self.self_test_results.pop_back();
        }
        let e = SelfTestResult::new(t.code, result, self.power_on_hours(), t.nsid);
        self.self_test_results.push_front(e);
    }

    /// The Device Self-test log page.
    pub(crate) fn self_test_log(&self) -> SelfTestLog {
        let (op, done) = match &self.self_test {
            Some(t) => {
                let pct = t.started.elapsed().as_millis() * 100 / t.runs.as_millis().max(1);
                (t.code, pct.min(99) as u8)
            }
            None => (self_test::NONE, 0),
        };
        let results: Vec<SelfTestResult> = self.self_test_results.iter().copied().collect();
        SelfTestLog::new(op, done, &results)
    }

    // ---- Format NVM ----

    pub(crate) fn format_nvm(&mut self, cmd: &SubmissionEntry) -> Outcome {
        let (lbaf, _mset, pi, _pil, ses) = format_nvm_fields(cmd.cdw10);
        let targets: Vec<usize> = if cmd.nsid == u32::MAX {
            (0..self.namespaces.len())
                .filter(|&i| self.namespaces[i].active())
                .collect()
        } else {
            match self.ns_index(cmd.nsid) {
                Some(i) => vec![i],
                None => return invalid_ns().into(),
            }
        };
        // User data erase (1) is what every format does here; no cryptographic erase.
        if ses > 1 {
            return invalid_field().into();
        }
        let Some(&lba_size) = LBA_FORMATS.get(lbaf as usize) else {
            return cs(Cs::InvalidFormat).into();
        };
        if pi != 0 {
            return cs(Cs::InvalidFormat).into();
        }
        // Every target must hold at least one block of the new size before any changes.
        if targets
            .iter()
            .any(|&i| self.namespaces[i].capacity() / lba_size as u64 == 0)
        {
            return cs(Cs::InvalidFormat).into();
        }
        if self.self_test.is_some() {
            self.end_self_test(self_test::RESULT_ABORTED_BY_FORMAT);
        }
        for i in targets {
            let n = &self.namespaces[i];
            n.set_format(lba_size, n.capacity() / lba_size as u64);
            let nsid = i as u32 + 1;
            self.uncorrectable.retain(|&(id, _)| id != nsid);
        }
        Outcome::ok()
    }

    // ---- Namespace Management and Attachment ----

    /// Records that `nsid`'s attributes changed and sends the notice, when the host asked for
    /// Namespace Attribute Notices (Asynchronous Event Configuration bit 8: a controller
    /// sends none by default).
    fn namespace_changed(&mut self, nsid: u32) {
        let first = self.changed_ns.is_empty();
        self.changed_ns.insert(nsid);
        if first && self.features.async_event_config & 1 << 8 != 0 {
            // One notice until the host reads the log page (which clears the list).
            self.shared.faults.push_event(AsyncEvent {
                event_type: AsyncEventType::Notice,
                info: NOTICE_NS_ATTRIBUTE_CHANGED,
                log_page: nvme_regs::log::lid::CHANGED_NAMESPACES,
            });
        }
    }

    pub(crate) fn namespace_management(&mut self, cmd: &SubmissionEntry) -> Outcome {
        match cmd.cdw10 & 0xf {
            ns_sel::CREATE => self.create_namespace(cmd),
            ns_sel::DELETE => self.delete_namespaces(cmd.nsid),
            _ => invalid_field().into(),
        }
    }

    fn create_namespace(&mut self, cmd: &SubmissionEntry) -> Outcome {
        // Command set (CDW11 bits 31:24): NVM only.
        if cmd.cdw11 >> 24 != 0 {
            return invalid_field().into();
        }
        let mut data = [0u8; 4096];
        if let Err(o) = self.receive(cmd, &mut data) {
            return o;
        }
        let le64 = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().expect("8 bytes"));
        let (nsze, ncap, flbas, dps) = (le64(0), le64(8), data[26], data[29]);
        let Some(&lba_size) = LBA_FORMATS.get((flbas & 0xf) as usize) else {
            return cs(Cs::InvalidFormat).into();
        };
        // No protection information, no thin provisioning.
        if dps != 0 {
            return cs(Cs::InvalidFormat).into();
        }
        if nsze == 0 || ncap != nsze {
            return invalid_field().into();
        }
        let Some(bytes) = nsze.checked_mul(lba_size as u64) else {
            return cs(Cs::NamespaceInsufficientCapacity).into();
        };
        let free: Vec<usize> = (0..self.namespaces.len())
            .filter(|&i| !self.namespaces[i].allocated())
            .collect();
        if free.is_empty() {
            return cs(Cs::NamespaceIdUnavailable).into();
        }
        let Some(i) = free
            .into_iter()
            .find(|&i| self.namespaces[i].capacity() >= bytes)
        else {
            return cs(Cs::NamespaceInsufficientCapacity).into();
        };
        let n = &self.namespaces[i];
        n.set_format(lba_size, nsze);
        n.set_attached(false);
        n.set_allocated(true);
        Outcome::Done(nvme_regs::Status::SUCCESS, i as u32 + 1)
    }

    fn delete_namespaces(&mut self, nsid: u32) -> Outcome {
        let targets: Vec<usize> = if nsid == u32::MAX {
            (0..self.namespaces.len())
                .filter(|&i| self.namespaces[i].allocated())
                .collect()
        } else {
            match self.nsid_index(nsid) {
                Some(i) if self.namespaces[i].allocated() => vec![i],
                _ => return invalid_ns().into(),
            }
        };
        for i in targets {
            let id = i as u32 + 1;
            if self
                .self_test
                .as_ref()
                .is_some_and(|t| t.nsid == id || t.nsid == u32::MAX)
            {
                self.end_self_test(self_test::RESULT_ABORTED_NS_REMOVED);
            }
            let was_active = self.namespaces[i].active();
            self.namespaces[i].set_attached(false);
            self.namespaces[i].set_allocated(false);
            self.uncorrectable.retain(|&(n, _)| n != id);
            if was_active {
                self.namespace_changed(id);
            }
        }
        Outcome::ok()
    }

    pub(crate) fn namespace_attachment(&mut self, cmd: &SubmissionEntry) -> Outcome {
        let attach = match cmd.cdw10 & 0xf {
            ns_sel::ATTACH => true,
            ns_sel::DETACH => false,
            _ => return invalid_field().into(),
        };
        let Some(i) = self.nsid_index(cmd.nsid) else {
            return invalid_ns().into();
        };
        if !self.namespaces[i].allocated() {
            return invalid_ns().into();
        }
        let mut data = [0u8; 4096];
        if let Err(o) = self.receive(cmd, &mut data) {
            return o;
        }
        let ids: Vec<u16> = controller_list_ids(&data).collect();
        if ids.iter().any(|&c| c != CNTLID) {
            return cs(Cs::ControllerListInvalid).into();
        }
        if ids.is_empty() {
            // Nothing to attach or detach.
            return Outcome::ok();
        }
        let n = &self.namespaces[i];
        match (attach, n.active()) {
            (true, true) => return cs(Cs::NamespaceAlreadyAttached).into(),
            (false, false) => return cs(Cs::NamespaceNotAttached).into(),
            _ => {}
        }
        n.set_attached(attach);
        self.namespace_changed(cmd.nsid);
        Outcome::ok()
    }
}
