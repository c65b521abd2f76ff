//! Admin commands (NVMe 1.4 section 5).

use nvme_regs::features::fid;
use nvme_regs::identify::{
    cns, fill_ascii, IdentifyController, IdentifyNamespace, LbaFormat, Lpa, Oacs, Oncs,
    IDENTIFY_DATA_SIZE,
};
use nvme_regs::log::{lid, CriticalWarning, FirmwareSlotLog, SmartLog};
use nvme_regs::opcode::AdminOpcode;
use nvme_regs::status::{CommandSpecificStatus as Cs, GenericStatus as G};
use nvme_regs::{Status, SubmissionEntry};
use zerocopy::{FromZeros, IntoBytes};

use crate::ctrl::{Controller, Outcome, AER_LIMIT, ERROR_LOG_ENTRIES};
use crate::dma::{resolve_prps, write_host};
use crate::faults::{AsyncEvent, AsyncEventType, AER_INFO_SMART_TEMPERATURE};

/// Warning composite temperature threshold (K), Identify WCTEMP and the default over
/// threshold of the composite temperature.
pub(crate) const WCTEMP: u16 = 343;
/// Critical composite temperature threshold (K).
const CCTEMP: u16 = 373;
/// The temperature the controller always reports (K): 40 degrees Celsius.
pub(crate) const TEMPERATURE: u16 = 313;
/// PCI vendor id reported by Identify (not an assigned id).
const VENDOR_ID: u16 = 0xfffe;
/// Largest admin data transfer accepted when MDTS is unlimited.
const ADMIN_MAX_TRANSFER: usize = 1 << 22;

pub(crate) fn invalid_field() -> Status {
    Status::generic(G::InvalidField).with_dnr()
}

pub(crate) fn invalid_ns() -> Status {
    Status::generic(G::InvalidNamespaceOrFormat).with_dnr()
}

pub(crate) fn cs(s: Cs) -> Status {
    Status::command_specific(s).with_dnr()
}

/// The controller's id (CNTLID): it is the only controller of its subsystem.
pub(crate) const CNTLID: u16 = 1;

/// The LBA formats the controller offers: 512 and 4096 bytes, no metadata.
pub(crate) const LBA_FORMATS: [u32; 2] = [512, 4096];

/// Reports [`LBA_FORMATS`] in `id`, with the one of `lba_size` in use.
fn set_lba_formats(id: &mut IdentifyNamespace, lba_size: u32) {
    id.nlbaf = (LBA_FORMATS.len() - 1) as u8;
    for (i, size) in LBA_FORMATS.iter().enumerate() {
        id.lbaf[i] = LbaFormat {
            ms: 0,
            lbads: size.trailing_zeros() as u8,
            rp: 0,
        };
    }
    id.flbas = LBA_FORMATS.iter().position(|&s| s == lba_size).unwrap_or(0) as u8;
}

/// Completion dword 0 layout of Get Features SEL = supported capabilities: changeable.
const CAP_CHANGEABLE: u32 = 1 << 2;

/// A small deterministic hash for identifiers derived from the serial number.
fn fnv1a(data: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl Controller {
    pub(crate) fn admin(&mut self, cmd: &SubmissionEntry) -> Outcome {
        if cmd.fuse() != 0 || cmd.psdt() != 0 {
            // No fused operations; admin commands use PRPs only.
            return invalid_field().into();
        }
        let Some(op) = AdminOpcode::from_u8(cmd.opcode) else {
            return Status::generic(G::InvalidOpcode).with_dnr().into();
        };
        match op {
            AdminOpcode::Identify => self.identify(cmd),
            AdminOpcode::GetLogPage => self.get_log_page(cmd),
            AdminOpcode::SetFeatures => self.set_features(cmd),
            AdminOpcode::GetFeatures => self.get_features(cmd),
            AdminOpcode::CreateIoCq => self.create_cq(cmd).into(),
            AdminOpcode::CreateIoSq => self.create_sq(cmd).into(),
            AdminOpcode::DeleteIoSq => self.delete_sq(cmd).into(),
            AdminOpcode::DeleteIoCq => self.delete_cq(cmd).into(),
            AdminOpcode::Abort => self.abort(cmd),
            AdminOpcode::AsyncEventRequest => {
                if self.aer_outstanding.len() >= AER_LIMIT {
                    cs(Cs::AerLimitExceeded).into()
                } else {
                    self.aer_outstanding.push_back(cmd.cid);
                    Outcome::Deferred
                }
            }
            AdminOpcode::KeepAlive => Outcome::ok(),
            AdminOpcode::FormatNvm => self.format_nvm(cmd),
            AdminOpcode::DeviceSelfTest => self.device_self_test(cmd),
            AdminOpcode::NamespaceManagement => self.namespace_management(cmd),
            AdminOpcode::NamespaceAttachment => self.namespace_attachment(cmd),
            AdminOpcode::DoorbellBufferConfig if self.cfg.shadow_doorbells => {
                self.doorbell_buffer_config(cmd.prp1, cmd.prp2).into()
            }
            _ => Status::generic(G::InvalidOpcode).with_dnr().into(),
        }
    }

    /// Transfers `data` to the host buffer of an admin command (PRP1/PRP2).
    pub(crate) fn send(&mut self, cmd: &SubmissionEntry, data: &[u8]) -> Outcome {
        let limit = self.max_transfer.min(ADMIN_MAX_TRANSFER);
        if data.len() > limit {
            return invalid_field().into();
        }
        if let Err(s) = resolve_prps(
            &mut self.dma,
            &mut self.segs,
            cmd.prp1,
            cmd.prp2,
            data.len(),
            self.page_size,
        ) {
            return s.into();
        }
        write_host(&self.segs, data);
        Outcome::ok()
    }

    /// The index of active namespace `nsid`.
    pub(crate) fn ns_index(&self, nsid: u32) -> Option<usize> {
        let i = nsid.checked_sub(1)? as usize;
        self.namespaces.get(i)?.active().then_some(i)
    }

    /// The index of `nsid` when it is a valid NSID of the controller (1..=NN), active or not.
    pub(crate) fn nsid_index(&self, nsid: u32) -> Option<usize> {
        let i = nsid.checked_sub(1)? as usize;
        (i < self.namespaces.len()).then_some(i)
    }

    // ---- Identify ----

    fn identify(&mut self, cmd: &SubmissionEntry) -> Outcome {
        let cns = cmd.cdw10 as u8;
        let mut buf = [0u8; IDENTIFY_DATA_SIZE];
        match cns {
            cns::CONTROLLER => {
                let id = self.identify_controller();
                buf.copy_from_slice(id.as_bytes());
            }
            cns::NAMESPACE | cns::ALLOCATED_NAMESPACE => {
                if cmd.nsid == u32::MAX {
                    // The capabilities common to all namespaces: the LBA formats.
                    let mut id = IdentifyNamespace::new_zeroed();
                    set_lba_formats(&mut id, 512);
                    id.flbas = 0;
                    buf.copy_from_slice(id.as_bytes());
                } else {
                    let Some(i) = self.nsid_index(cmd.nsid) else {
                        return invalid_ns().into();
                    };
                    // An inactive NSID (or, for CNS 11h, an unallocated one) reads as zeroes.
                    let n = &self.namespaces[i];
                    let shown = if cns == cns::NAMESPACE {
                        n.active()
                    } else {
                        n.allocated()
                    };
                    if shown {
                        buf.copy_from_slice(self.identify_namespace(i).as_bytes());
                    }
                }
            }
            cns::ACTIVE_NAMESPACE_LIST | cns::ALLOCATED_NAMESPACE_LIST => {
                if cmd.nsid >= 0xffff_fffe {
                    return invalid_ns().into();
                }
                let allocated = cns == cns::ALLOCATED_NAMESPACE_LIST;
                let ids = (cmd.nsid.saturating_add(1)..=self.namespaces.len() as u32)
                    .filter(|&id| {
                        let n = &self.namespaces[id as usize - 1];
                        if allocated {
                            n.allocated()
                        } else {
                            n.active()
                        }
                    })
                    .take(1024);
                for (k, id) in ids.enumerate() {
                    buf[k * 4..k * 4 + 4].copy_from_slice(&id.to_le_bytes());
                }
            }
            cns::NAMESPACE_CONTROLLER_LIST | cns::CONTROLLER_LIST => {
                // One controller, id 1 (CDW10 bits 31:16: the first id to list).
                let first = (cmd.cdw10 >> 16) as u16;
                let attached = cns == cns::CONTROLLER_LIST
                    || self
                        .nsid_index(cmd.nsid)
                        .is_some_and(|i| self.namespaces[i].active());
                let ids: &[u16] = if attached && first <= CNTLID {
                    &[CNTLID]
                } else {
                    &[]
                };
                buf.copy_from_slice(&nvme_regs::opcode::controller_list(ids));
            }
            cns::NS_ID_DESCRIPTORS => {
                let Some(i) = self.ns_index(cmd.nsid) else {
                    return invalid_ns().into();
                };
                let (eui, nguid) = self.ns_ids(i);
                // Descriptor: NIDT, NIDL, reserved (2), NID.
                buf[0] = 1;
                buf[1] = 8;
                buf[4..12].copy_from_slice(&eui);
                buf[12] = 2;
                buf[13] = 16;
                buf[16..32].copy_from_slice(&nguid);
            }
            _ => return invalid_field().into(),
        }
        self.send(cmd, &buf)
    }

    fn ns_ids(&self, i: usize) -> ([u8; 8], [u8; 16]) {
        let sn = self.cfg.serial.as_bytes();
        let a = fnv1a(sn, i as u64 + 1);
        let b = fnv1a(sn, (i as u64 + 1) << 32);
        let mut nguid = [0u8; 16];
        nguid[..8].copy_from_slice(&a.to_be_bytes());
        nguid[8..].copy_from_slice(&b.to_be_bytes());
        (a.to_be_bytes(), nguid)
    }

    fn identify_controller(&self) -> IdentifyController {
        let mut id = IdentifyController::new_zeroed();
        id.vid = VENDOR_ID;
        id.ssvid = VENDOR_ID;
        fill_ascii(&mut id.sn, &self.cfg.serial);
        fill_ascii(&mut id.mn, &self.cfg.model);
        fill_ascii(&mut id.fr, &self.cfg.firmware);
        id.rab = 0;
        id.mdts = self.cfg.mdts;
        id.cntlid = CNTLID;
        id.ver = nvme_regs::registers::Vs::V1_4.0;
        id.cntrltype = 1; // I/O controller
        let mut oacs = Oacs::FORMAT_NVM | Oacs::NS_MANAGEMENT | Oacs::SELF_TEST;
        if self.cfg.shadow_doorbells {
            oacs |= Oacs::DOORBELL_BUFFER_CONFIG;
        }
        id.oacs = oacs.bits();
        // Namespace Attribute Notices (sent when Asynchronous Event Configuration asks).
        id.oaes = 1 << 8;
        // Formats apply to one namespace (FNA 0); no cryptographic erase.
        id.fna = 0;
        id.edstt = crate::mgmt::EXTENDED_SELF_TEST_MINUTES;
        // One device self-test at a time in the subsystem.
        id.dsto = 1;
        id.acl = 3;
        id.aerl = (AER_LIMIT - 1) as u8;
        id.frmw = 1 | 1 << 1; // slot 1 read only, one slot
        id.lpa = Lpa::EXTENDED_DATA.bits();
        id.elpe = (ERROR_LOG_ENTRIES - 1) as u8;
        id.npss = 0;
        id.wctemp = WCTEMP;
        id.cctemp = CCTEMP;
        let total: u128 = self.namespaces.iter().map(|n| n.capacity() as u128).sum();
        let free: u128 = self
            .namespaces
            .iter()
            .filter(|n| !n.allocated())
            .map(|n| n.capacity() as u128)
            .sum();
        id.tnvmcap = total.to_le_bytes();
        id.unvmcap = free.to_le_bytes();
        id.kas = 0;
        id.sqes = 0x66;
        id.cqes = 0x44;
        id.maxcmd = 0;
        id.nn = self.namespaces.len() as u32;
        id.oncs = (Oncs::COMPARE
            | Oncs::WRITE_UNCORRECTABLE
            | Oncs::DATASET_MANAGEMENT
            | Oncs::WRITE_ZEROES
            | Oncs::VERIFY)
            .bits();
        id.vwc = 1;
        // SGLs for NVM commands, no alignment requirement (01b); no Bit Bucket, no SGL
        // longer than the transfer.
        id.sgls = if self.cfg.sgl { 1 } else { 0 };
        let nqn = format!("nqn.2024-01.io.nvme-sim:{}", self.cfg.serial);
        let n = nqn.len().min(255);
        id.subnqn[..n].copy_from_slice(&nqn.as_bytes()[..n]);
        id.psd[0].mp = 2500; // 25 W
        id.psd[0].enlat = 0;
        id.psd[0].exlat = 0;
        id
    }

    fn identify_namespace(&self, i: usize) -> IdentifyNamespace {
        let ns = &self.namespaces[i];
        let mut id = IdentifyNamespace::new_zeroed();
        id.nsze = ns.blocks();
        id.ncap = ns.blocks();
        id.nuse = ns.blocks();
        id.nsfeat = 0;
        set_lba_formats(&mut id, ns.lba_size());
        // Deallocated blocks read as zeroes (bits 2:0 = 1); Write Zeroes may deallocate.
        id.dlfeat = 1 | 1 << 3;
        id.nvmcap = (ns.bytes() as u128).to_le_bytes();
        let (eui, nguid) = self.ns_ids(i);
        id.eui64 = eui;
        id.nguid = nguid;
        id
    }

    // ---- Get Log Page ----

    fn get_log_page(&mut self, cmd: &SubmissionEntry) -> Outcome {
        let log_id = cmd.cdw10 as u8;
        let numd = ((cmd.cdw10 >> 16) as u64 | ((cmd.cdw11 & 0xffff) as u64) << 16) + 1;
        let offset = cmd.cdw12 as u64 | (cmd.cdw13 as u64) << 32;
        let len = numd * 4;
        if offset & 3 != 0 || len > ADMIN_MAX_TRANSFER as u64 {
            return invalid_field().into();
        }
        let page: Vec<u8> = match log_id {
            lid::ERROR => {
                let mut v = vec![0u8; ERROR_LOG_ENTRIES * 64];
                for (k, e) in self.error_log.iter().enumerate() {
                    v[k * 64..k * 64 + 64].copy_from_slice(e.as_bytes());
                }
                v
            }
            lid::SMART => self.smart_log().as_bytes().to_vec(),
            lid::SELF_TEST => self.self_test_log().as_bytes().to_vec(),
            lid::CHANGED_NAMESPACES => {
                // Read: the list is cleared (and the notice may be sent again).
                let mut v = vec![0u8; 4096];
                if self.changed_ns.len() > 1024 {
                    v[..4].copy_from_slice(&u32::MAX.to_le_bytes());
                } else {
                    for (k, id) in self.changed_ns.iter().enumerate() {
                        v[k * 4..k * 4 + 4].copy_from_slice(&id.to_le_bytes());
                    }
                }
                if cmd.cdw10 & (1 << 15) == 0 {
                    self.changed_ns.clear();
                }
                v
            }
            lid::FIRMWARE_SLOT => {
                let mut f = FirmwareSlotLog::new_zeroed();
                f.afi = 1;
                fill_ascii(&mut f.frs[0], &self.cfg.firmware);
                f.as_bytes().to_vec()
            }
            _ => return cs(Cs::InvalidLogPage).into(),
        };
        if offset >= page.len() as u64 {
            return invalid_field().into();
        }
        let mut out = vec![0u8; len as usize];
        let avail = &page[offset as usize..];
        let n = avail.len().min(out.len());
        out[..n].copy_from_slice(&avail[..n]);
        self.send(cmd, &out)
    }

    fn smart_log(&self) -> SmartLog {
        let st = self.shared.stats.snapshot();
        let mut s = SmartLog::new_zeroed();
        let mut cw = CriticalWarning::empty();
        if self.temperature_warning {
            cw |= CriticalWarning::TEMPERATURE;
        }
        s.critical_warning = cw.bits();
        s.temperature = TEMPERATURE.to_le_bytes();
        s.available_spare = 100;
        s.available_spare_threshold = 10;
        s.percentage_used = 0;
        let units = |bytes: u64| (bytes.div_ceil(512) as u128).div_ceil(1000);
        s.data_units_read = units(st.bytes_read).to_le_bytes();
        s.data_units_written = units(st.bytes_written).to_le_bytes();
        s.host_read_commands = ((st.reads + st.compares) as u128).to_le_bytes();
        s.host_write_commands = (st.writes as u128).to_le_bytes();
        s.power_cycles = 1u128.to_le_bytes();
        s.power_on_hours = ((self.started.elapsed().as_secs() / 3600) as u128).to_le_bytes();
        s.media_errors = (self.media_errors as u128).to_le_bytes();
        s.num_error_log_entries = (self.error_count as u128).to_le_bytes();
        s.temp_sensor[0] = TEMPERATURE;
        s
    }

    // ---- Features ----

    fn set_features(&mut self, cmd: &SubmissionEntry) -> Outcome {
        let id = cmd.cdw10 as u8;
        if cmd.cdw10 & (1 << 31) != 0 {
            return cs(Cs::FeatureNotSaveable).into();
        }
        let v = cmd.cdw11;
        let f = &mut self.features;
        match id {
            fid::ARBITRATION => f.arbitration = v & 0xffff_ff07,
            fid::POWER_MANAGEMENT => {
                if v & 0x1f != 0 {
                    return invalid_field().into(); // only power state 0 exists
                }
                f.power_management = v & 0xff;
            }
            fid::TEMPERATURE_THRESHOLD => return self.set_temperature_threshold(v).into(),
            fid::ERROR_RECOVERY => f.error_recovery = v & 0x1_ffff,
            fid::VOLATILE_WRITE_CACHE => f.volatile_write_cache = v & 1 != 0,
            fid::NUMBER_OF_QUEUES => {
                if self.active_sqs.len() > 1 || self.cqs.iter().skip(1).any(|c| c.is_some()) {
                    return Status::generic(G::CommandSequenceError).with_dnr().into();
                }
                let (nsqr, ncqr) = (v & 0xffff, v >> 16);
                if nsqr == 0xffff || ncqr == 0xffff {
                    return invalid_field().into();
                }
                let max = self.cfg.max_io_queues as u32;
                let sq = (nsqr + 1).min(max) as u16;
                let cq = (ncqr + 1).min(max) as u16;
                self.features.queues = (sq, cq);
                return Outcome::Done(Status::SUCCESS, queues_dword(sq, cq));
            }
            fid::INTERRUPT_COALESCING => f.interrupt_coalescing = v & 0xffff,
            fid::INTERRUPT_VECTOR_CONFIG => {}
            fid::WRITE_ATOMICITY => f.write_atomicity = v & 1,
            fid::ASYNC_EVENT_CONFIG => f.async_event_config = v,
            fid::KEEP_ALIVE_TIMER => f.keep_alive = v,
            _ => return invalid_field().into(),
        }
        Outcome::ok()
    }

    fn set_temperature_threshold(&mut self, v: u32) -> Status {
        let kelvin = v as u16;
        let sel = (v >> 16) & 0xf;
        let under = match (v >> 20) & 0x3 {
            0 => false,
            1 => true,
            _ => return invalid_field(),
        };
        let sensors: &[usize] = match sel {
            0 => &[0],
            1 => &[1],
            0xf => &[0, 1],
            _ => return invalid_field(),
        };
        for &s in sensors {
            if under {
                self.features.temp_under[s] = kelvin;
            } else {
                self.features.temp_over[s] = kelvin;
            }
        }
        self.check_temperature();
        Status::SUCCESS
    }

    /// Recomputes the temperature warning; raises a SMART / health event when it appears.
    fn check_temperature(&mut self) {
        let f = &self.features;
        let warn = (0..2).any(|s| TEMPERATURE > f.temp_over[s] || TEMPERATURE < f.temp_under[s]);
        if warn && !self.temperature_warning {
            self.shared.faults.push_event(AsyncEvent {
                event_type: AsyncEventType::SmartHealth,
                info: AER_INFO_SMART_TEMPERATURE,
                log_page: lid::SMART,
            });
        }
        self.temperature_warning = warn;
    }

    fn get_features(&mut self, cmd: &SubmissionEntry) -> Outcome {
        let id = cmd.cdw10 as u8;
        let sel = (cmd.cdw10 >> 8) & 0x7;
        let defaults = crate::ctrl::default_features(&self.cfg);
        let f = match sel {
            0 => self.features.clone(),
            // Nothing is saveable: the saved value is the default.
            1 | 2 => defaults,
            3 => {
                return match feature_supported(id) {
                    true => Outcome::Done(Status::SUCCESS, CAP_CHANGEABLE),
                    false => invalid_field().into(),
                }
            }
            _ => return invalid_field().into(),
        };
        let dw0 = match id {
            fid::ARBITRATION => f.arbitration,
            fid::POWER_MANAGEMENT => f.power_management,
            fid::TEMPERATURE_THRESHOLD => {
                let s = match (cmd.cdw11 >> 16) & 0xf {
                    0 => 0,
                    1 => 1,
                    _ => return invalid_field().into(),
                };
                match (cmd.cdw11 >> 20) & 0x3 {
                    0 => f.temp_over[s] as u32,
                    1 => f.temp_under[s] as u32,
                    _ => return invalid_field().into(),
                }
            }
            fid::ERROR_RECOVERY => f.error_recovery,
            fid::VOLATILE_WRITE_CACHE => f.volatile_write_cache as u32,
            fid::NUMBER_OF_QUEUES => queues_dword(f.queues.0, f.queues.1),
            fid::INTERRUPT_COALESCING => f.interrupt_coalescing,
            fid::INTERRUPT_VECTOR_CONFIG => cmd.cdw11 & 0xffff,
            fid::WRITE_ATOMICITY => f.write_atomicity,
            fid::ASYNC_EVENT_CONFIG => f.async_event_config,
            fid::KEEP_ALIVE_TIMER => f.keep_alive,
            _ => return invalid_field().into(),
        };
        Outcome::Done(Status::SUCCESS, dw0)
    }

    // ---- Queue management ----

    fn create_cq(&mut self, cmd: &SubmissionEntry) -> Status {
        let qid = cmd.cdw10 as u16;
        let qsize = (cmd.cdw10 >> 16) as u16;
        let pc = cmd.cdw11 & 1 != 0;
        let ien = cmd.cdw11 & 2 != 0;
        let iv = (cmd.cdw11 >> 16) as u16;
        if qid == 0 || qid > self.features.queues.1 || self.cqs[qid as usize].is_some() {
            return cs(Cs::InvalidQueueId);
        }
        if ien && iv >= self.shared.irqs.count() {
            return cs(Cs::InvalidInterruptVector);
        }
        if qsize == 0 || qsize > self.cfg.mqes {
            return cs(Cs::InvalidQueueSize);
        }
        if !pc {
            return invalid_field(); // CAP.CQR: queues must be physically contiguous
        }
        if cc_entry_sizes(self) != (6, 4) {
            return invalid_field();
        }
        if cmd.prp1 & (self.page_size as u64 - 1) != 0 {
            return Status::generic(G::PrpOffsetInvalid).with_dnr();
        }
        match self.make_cq(cmd.prp1, qsize as u32 + 1, qid) {
            Ok(mut cq) => {
                cq.vector = ien.then_some(iv);
                self.cqs[qid as usize] = Some(cq);
                Status::SUCCESS
            }
            Err(s) => s,
        }
    }

    fn create_sq(&mut self, cmd: &SubmissionEntry) -> Status {
        let qid = cmd.cdw10 as u16;
        let qsize = (cmd.cdw10 >> 16) as u16;
        let pc = cmd.cdw11 & 1 != 0;
        let cqid = (cmd.cdw11 >> 16) as u16;
        if qid == 0 || qid > self.features.queues.0 || self.sqs[qid as usize].is_some() {
            return cs(Cs::InvalidQueueId);
        }
        if cqid == 0 || self.cqs.get(cqid as usize).is_none_or(|c| c.is_none()) {
            return cs(Cs::CompletionQueueInvalid);
        }
        if qsize == 0 || qsize > self.cfg.mqes {
            return cs(Cs::InvalidQueueSize);
        }
        if !pc {
            return invalid_field();
        }
        if cc_entry_sizes(self) != (6, 4) {
            return invalid_field();
        }
        if cmd.prp1 & (self.page_size as u64 - 1) != 0 {
            return Status::generic(G::PrpOffsetInvalid).with_dnr();
        }
        match self.make_sq(cmd.prp1, qsize as u32 + 1, qid, cqid) {
            Ok(sq) => {
                self.sqs[qid as usize] = Some(sq);
                self.active_sqs.push(qid);
                if let Some(cq) = self.cqs[cqid as usize].as_mut() {
                    cq.sq_refs += 1;
                }
                Status::SUCCESS
            }
            Err(s) => s,
        }
    }

    fn delete_sq(&mut self, cmd: &SubmissionEntry) -> Status {
        let qid = cmd.cdw10 as u16;
        if qid == 0 || self.sqs.get(qid as usize).is_none_or(|s| s.is_none()) {
            return cs(Cs::InvalidQueueId);
        }
        // Commands submitted but not fetched yet are aborted.
        if let Some(sq) = self.sqs[qid as usize].as_ref() {
            let tail = self.sq_tail(sq);
            if tail < sq.size {
                let mut i = sq.head;
                let cqid = sq.cqid;
                let mut aborted = Vec::new();
                while i != tail {
                    aborted.push(Controller::sq_entry(sq, i));
                    i = (i + 1) % sq.size;
                }
                if let Some(sq) = self.sqs[qid as usize].as_mut() {
                    sq.head = tail;
                }
                for c in aborted {
                    let e = self.completion(qid, &c, Status::generic(G::AbortedSqDeletion), 0);
                    self.post(cqid, e);
                }
            }
        }
        self.abort_delayed_of(qid);
        let Some(sq) = self.sqs[qid as usize].take() else {
            return cs(Cs::InvalidQueueId);
        };
        self.active_sqs.retain(|&q| q != qid);
        if let Some(cq) = self.cqs[sq.cqid as usize].as_mut() {
            cq.sq_refs -= 1;
        }
        Status::SUCCESS
    }

    fn delete_cq(&mut self, cmd: &SubmissionEntry) -> Status {
        let qid = cmd.cdw10 as u16;
        if qid == 0 || self.cqs.get(qid as usize).is_none_or(|c| c.is_none()) {
            return cs(Cs::InvalidQueueId);
        }
        if self.cqs[qid as usize]
            .as_ref()
            .is_some_and(|c| c.sq_refs > 0)
        {
            return cs(Cs::InvalidQueueDeletion);
        }
        if let Some(cq) = self.cqs[qid as usize].take() {
            self.forget_cq(&cq);
        }
        Status::SUCCESS
    }
}

fn cc_entry_sizes(c: &Controller) -> (u8, u8) {
    let cc = nvme_regs::registers::Cc(c.bar.load32(nvme_regs::registers::offset::CC));
    (cc.iosqes(), cc.iocqes())
}

fn queues_dword(sq: u16, cq: u16) -> u32 {
    (sq as u32 - 1) | (cq as u32 - 1) << 16
}

fn feature_supported(id: u8) -> bool {
    matches!(
        id,
        fid::ARBITRATION
            | fid::POWER_MANAGEMENT
            | fid::TEMPERATURE_THRESHOLD
            | fid::ERROR_RECOVERY
            | fid::VOLATILE_WRITE_CACHE
            | fid::NUMBER_OF_QUEUES
            | fid::INTERRUPT_COALESCING
            | fid::INTERRUPT_VECTOR_CONFIG
            | fid::WRITE_ATOMICITY
            | fid::ASYNC_EVENT_CONFIG
            | fid::KEEP_ALIVE_TIMER
    )
}
