//! Log pages: identifiers, SMART / Health Information, Error Information, Firmware Slot,
//! Device Self-test.

use bitflags::bitflags;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Log page identifiers (LID) of Get Log Page.
pub mod lid {
    /// Error Information.
    pub const ERROR: u8 = 0x01;
    /// SMART / Health Information.
    pub const SMART: u8 = 0x02;
    /// Firmware Slot Information.
    pub const FIRMWARE_SLOT: u8 = 0x03;
    /// Changed Namespace List.
    pub const CHANGED_NAMESPACES: u8 = 0x04;
    /// Commands Supported and Effects.
    pub const COMMANDS_EFFECTS: u8 = 0x05;
    /// Device Self-test.
    pub const SELF_TEST: u8 = 0x06;
}

bitflags! {
    /// SMART critical warning bits.
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    pub struct CriticalWarning: u8 {
        /// Available spare below threshold.
        const SPARE = 1 << 0;
        /// Temperature over or under a threshold.
        const TEMPERATURE = 1 << 1;
        /// NVM subsystem reliability degraded.
        const RELIABILITY = 1 << 2;
        /// Media in read only mode.
        const READ_ONLY = 1 << 3;
        /// Volatile memory backup device failed.
        const VOLATILE_BACKUP = 1 << 4;
        /// Persistent memory region read only or unreliable.
        const PMR_READ_ONLY = 1 << 5;
    }
}

/// SMART / Health Information log page (LID 02h, 512 bytes).
///
/// The 128-bit counters are little-endian byte arrays; use the accessor methods.
#[derive(Clone, Copy, PartialEq, Eq, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct SmartLog {
    /// Critical warning ([`CriticalWarning`]).
    pub critical_warning: u8,
    /// Composite temperature in kelvins (little endian).
    pub temperature: [u8; 2],
    /// Available spare (percent).
    pub available_spare: u8,
    /// Available spare threshold (percent).
    pub available_spare_threshold: u8,
    /// Percentage used.
    pub percentage_used: u8,
    /// Endurance group critical warning summary.
    pub endurance_group_critical_warning: u8,
    _rsvd7: [u8; 25],
    /// Data units read (thousands of 512-byte units).
    pub data_units_read: [u8; 16],
    /// Data units written (thousands of 512-byte units).
    pub data_units_written: [u8; 16],
    /// Host read commands.
    pub host_read_commands: [u8; 16],
    /// Host write commands.
    pub host_write_commands: [u8; 16],
    /// Controller busy time (minutes).
    pub controller_busy_time: [u8; 16],
    /// Power cycles.
    pub power_cycles: [u8; 16],
    /// Power on hours.
    pub power_on_hours: [u8; 16],
    /// Unsafe shutdowns.
    pub unsafe_shutdowns: [u8; 16],
    /// Media and data integrity errors.
    pub media_errors: [u8; 16],
    /// Number of error information log entries.
    pub num_error_log_entries: [u8; 16],
    /// Warning composite temperature time (minutes).
    pub warning_temp_time: u32,
    /// Critical composite temperature time (minutes).
    pub critical_temp_time: u32,
    /// Temperature sensors 1-8 (kelvins).
    pub temp_sensor: [u16; 8],
    /// Thermal management temperature 1 transition count.
    pub thm_temp1_transitions: u32,
    /// Thermal management temperature 2 transition count.
    pub thm_temp2_transitions: u32,
    /// Total time for thermal management temperature 1 (seconds).
    pub thm_temp1_total_time: u32,
    /// Total time for thermal management temperature 2 (seconds).
    pub thm_temp2_total_time: u32,
    _rsvd232: [u8; 280],
}

crate::assert_size!(SmartLog, 512);
crate::assert_offset!(SmartLog, temperature, 1);
crate::assert_offset!(SmartLog, data_units_read, 32);
crate::assert_offset!(SmartLog, host_read_commands, 64);
crate::assert_offset!(SmartLog, num_error_log_entries, 176);
crate::assert_offset!(SmartLog, warning_temp_time, 192);
crate::assert_offset!(SmartLog, temp_sensor, 200);
crate::assert_offset!(SmartLog, thm_temp1_transitions, 216);

/// Reads a 128-bit little-endian counter.
pub fn u128_le(b: &[u8; 16]) -> u128 {
    u128::from_le_bytes(*b)
}

impl SmartLog {
    /// Critical warning flags.
    pub fn critical_warning(&self) -> CriticalWarning {
        CriticalWarning::from_bits_retain(self.critical_warning)
    }
    /// Composite temperature in kelvins.
    pub fn temperature_kelvin(&self) -> u16 {
        u16::from_le_bytes(self.temperature)
    }
    /// Data units read.
    pub fn data_units_read(&self) -> u128 {
        u128_le(&self.data_units_read)
    }
    /// Data units written.
    pub fn data_units_written(&self) -> u128 {
        u128_le(&self.data_units_written)
    }
    /// Host read commands.
    pub fn host_read_commands(&self) -> u128 {
        u128_le(&self.host_read_commands)
    }
    /// Host write commands.
    pub fn host_write_commands(&self) -> u128 {
        u128_le(&self.host_write_commands)
    }
    /// Power cycles.
    pub fn power_cycles(&self) -> u128 {
        u128_le(&self.power_cycles)
    }
    /// Power on hours.
    pub fn power_on_hours(&self) -> u128 {
        u128_le(&self.power_on_hours)
    }
    /// Unsafe shutdowns.
    pub fn unsafe_shutdowns(&self) -> u128 {
        u128_le(&self.unsafe_shutdowns)
    }
    /// Media and data integrity errors.
    pub fn media_errors(&self) -> u128 {
        u128_le(&self.media_errors)
    }
    /// Number of error log entries.
    pub fn num_error_log_entries(&self) -> u128 {
        u128_le(&self.num_error_log_entries)
    }
}

/// One Error Information log entry (LID 01h, 64 bytes each).
#[derive(
    Clone, Copy, PartialEq, Eq, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct ErrorLogEntry {
    /// Error count (unique, incrementing; 0 = empty entry).
    pub error_count: u64,
    /// Submission queue ID.
    pub sqid: u16,
    /// Command ID.
    pub cmdid: u16,
    /// Status field (phase tag in bit 0).
    pub status_field: u16,
    /// Parameter error location.
    pub parm_error_location: u16,
    /// LBA of the first failing block.
    pub lba: u64,
    /// Namespace.
    pub nsid: u32,
    /// Vendor specific information available.
    pub vs: u8,
    /// Transport type.
    pub trtype: u8,
    _rsvd30: [u8; 2],
    /// Command specific information.
    pub cs: u64,
    /// Transport type specific information.
    pub trtype_spec_info: u16,
    _rsvd42: [u8; 22],
}

crate::assert_size!(ErrorLogEntry, 64);
crate::assert_offset!(ErrorLogEntry, status_field, 12);
crate::assert_offset!(ErrorLogEntry, lba, 16);
crate::assert_offset!(ErrorLogEntry, nsid, 24);
crate::assert_offset!(ErrorLogEntry, cs, 32);
crate::assert_offset!(ErrorLogEntry, trtype_spec_info, 40);

impl ErrorLogEntry {
    /// The decoded status of the failed command.
    pub fn status(&self) -> crate::Status {
        crate::Status::from_completion_word(self.status_field)
    }
}

/// Firmware Slot Information log page (LID 03h, 512 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct FirmwareSlotLog {
    /// Active firmware info: active slot (bits 2:0), slot activated at next reset (bits 6:4).
    pub afi: u8,
    _rsvd1: [u8; 7],
    /// Firmware revision of slots 1-7 (ASCII; all zero when empty).
    pub frs: [[u8; 8]; 7],
    _rsvd64: [u8; 448],
}

crate::assert_size!(FirmwareSlotLog, 512);
crate::assert_offset!(FirmwareSlotLog, frs, 8);

impl FirmwareSlotLog {
    /// The slot (1-7) of the running firmware.
    pub fn active_slot(&self) -> u8 {
        self.afi & 0x7
    }
    /// The revision in `slot` (1-7), `None` for an empty or invalid slot.
    pub fn revision(&self, slot: usize) -> Option<&str> {
        let frs = self.frs.get(slot.checked_sub(1)?)?;
        if frs.iter().all(|&b| b == 0) {
            None
        } else {
            Some(crate::identify::trim_ascii(frs))
        }
    }
}

/// Device self-test codes (Device Self-test command dword 10 bits 3:0, and bits 7:4 of a
/// result's status).
pub mod self_test {
    /// No operation (the log's current operation when no test runs).
    pub const NONE: u8 = 0x0;
    /// Short device self-test.
    pub const SHORT: u8 = 0x1;
    /// Extended device self-test.
    pub const EXTENDED: u8 = 0x2;
    /// Vendor specific self-test.
    pub const VENDOR: u8 = 0xe;
    /// Abort the running device self-test.
    pub const ABORT: u8 = 0xf;

    /// Result (status bits 3:0): completed without error.
    pub const RESULT_OK: u8 = 0x0;
    /// Result: aborted by a Device Self-test command.
    pub const RESULT_ABORTED_BY_COMMAND: u8 = 0x1;
    /// Result: aborted by a Controller Level Reset.
    pub const RESULT_ABORTED_BY_RESET: u8 = 0x2;
    /// Result: aborted by the removal of a namespace.
    pub const RESULT_ABORTED_NS_REMOVED: u8 = 0x3;
    /// Result: aborted by a Format NVM command.
    pub const RESULT_ABORTED_BY_FORMAT: u8 = 0x4;
    /// Result: the entry is not used.
    pub const RESULT_NOT_USED: u8 = 0xf;

    /// Valid diagnostic information bits: the NSID field is valid.
    pub const VDI_NSID: u8 = 1 << 0;
    /// The failing LBA field is valid.
    pub const VDI_FLBA: u8 = 1 << 1;
    /// The status code type field is valid.
    pub const VDI_SCT: u8 = 1 << 2;
    /// The status code field is valid.
    pub const VDI_SC: u8 = 1 << 3;

    /// Result entries in the log.
    pub const RESULTS: usize = 20;
}

/// One result of the Device Self-test log (28 bytes; its multi-byte fields are unaligned
/// in the log, so they are kept as little-endian bytes).
#[derive(Clone, Copy, PartialEq, Eq, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct SelfTestResult {
    /// Self-test code (bits 7:4) and result (bits 3:0; 0xf: entry not used).
    pub dsts: u8,
    /// Number of the segment that failed.
    pub seg: u8,
    /// Valid diagnostic information ([`self_test::VDI_NSID`], ...).
    pub vdi: u8,
    _rsvd3: u8,
    /// Power on hours when the operation completed or was aborted.
    pub poh: [u8; 8],
    /// The namespace the failure was found on.
    pub nsid: [u8; 4],
    /// The first failing LBA.
    pub flba: [u8; 8],
    /// Status code type of the failure.
    pub sct: u8,
    /// Status code of the failure.
    pub sc: u8,
    /// Vendor specific.
    pub vs: [u8; 2],
}

crate::assert_size!(SelfTestResult, 28);
crate::assert_offset!(SelfTestResult, poh, 4);
crate::assert_offset!(SelfTestResult, flba, 16);

impl SelfTestResult {
    /// An entry with no result (result 0xf, the rest zero).
    pub const UNUSED: SelfTestResult = SelfTestResult {
        dsts: self_test::RESULT_NOT_USED,
        seg: 0,
        vdi: 0,
        _rsvd3: 0,
        poh: [0; 8],
        nsid: [0; 4],
        flba: [0; 8],
        sct: 0,
        sc: 0,
        vs: [0; 2],
    };
    /// A result of test `code` with `result`, at `power_on_hours`, for `nsid` (marked valid
    /// when not 0 or all namespaces).
    pub fn new(code: u8, result: u8, power_on_hours: u64, nsid: u32) -> SelfTestResult {
        let valid_nsid = nsid != 0 && nsid != u32::MAX;
        SelfTestResult {
            dsts: (code & 0xf) << 4 | (result & 0xf),
            vdi: if valid_nsid { self_test::VDI_NSID } else { 0 },
            poh: power_on_hours.to_le_bytes(),
            nsid: nsid.to_le_bytes(),
            ..SelfTestResult::UNUSED
        }
    }
    /// The result (status bits 3:0).
    pub const fn result(&self) -> u8 {
        self.dsts & 0xf
    }
    /// The self-test code (status bits 7:4).
    pub const fn code(&self) -> u8 {
        self.dsts >> 4
    }
    /// Power on hours.
    pub fn power_on_hours(&self) -> u64 {
        u64::from_le_bytes(self.poh)
    }
    /// The namespace (valid when `vdi` has [`self_test::VDI_NSID`]).
    pub fn nsid(&self) -> u32 {
        u32::from_le_bytes(self.nsid)
    }
    /// The failing LBA (valid when `vdi` has [`self_test::VDI_FLBA`]).
    pub fn failing_lba(&self) -> u64 {
        u64::from_le_bytes(self.flba)
    }
}

/// Device Self-test log page (LID 06h, 564 bytes): the running operation and the last 20
/// results, newest first.
#[derive(Clone, Copy, PartialEq, Eq, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct SelfTestLog {
    /// The running self-test's code (bits 3:0), 0 when none runs.
    pub current_operation: u8,
    /// Percent complete of the running test (bits 6:0).
    pub completion: u8,
    _rsvd2: [u8; 2],
    /// Results, newest first.
    pub results: [SelfTestResult; self_test::RESULTS],
}

crate::assert_size!(SelfTestLog, 564);
crate::assert_offset!(SelfTestLog, results, 4);

impl SelfTestLog {
    /// A log with the given current operation, completion and results (newest first; at
    /// most 20 are kept, the other entries are unused).
    pub fn new(current_operation: u8, completion: u8, results: &[SelfTestResult]) -> SelfTestLog {
        let mut r = [SelfTestResult::UNUSED; self_test::RESULTS];
        for (slot, e) in r.iter_mut().zip(results) {
            *slot = *e;
        }
        SelfTestLog {
            current_operation,
            completion,
            _rsvd2: [0; 2],
            results: r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_log_decodes_hand_built_image() {
        let mut b = [0u8; 512];
        b[0] = 0x02;
        b[1..3].copy_from_slice(&323u16.to_le_bytes());
        b[3] = 100;
        b[4] = 10;
        b[5] = 3;
        b[32..48].copy_from_slice(&0x1_0000_0000_0000_0001u128.to_le_bytes());
        b[64..80].copy_from_slice(&12345u128.to_le_bytes());
        b[80..96].copy_from_slice(&678u128.to_le_bytes());
        b[112..128].copy_from_slice(&9u128.to_le_bytes());
        b[144..160].copy_from_slice(&2u128.to_le_bytes());
        b[176..192].copy_from_slice(&5u128.to_le_bytes());
        b[192..196].copy_from_slice(&7u32.to_le_bytes());
        b[200..202].copy_from_slice(&300u16.to_le_bytes());
        let s = SmartLog::read_from_bytes(&b[..]).unwrap();
        assert_eq!(s.critical_warning(), CriticalWarning::TEMPERATURE);
        assert_eq!(s.temperature_kelvin(), 323);
        assert_eq!(s.available_spare, 100);
        assert_eq!(s.available_spare_threshold, 10);
        assert_eq!(s.percentage_used, 3);
        assert_eq!(s.data_units_read(), 0x1_0000_0000_0000_0001);
        assert_eq!(s.host_read_commands(), 12345);
        assert_eq!(s.host_write_commands(), 678);
        assert_eq!(s.power_cycles(), 9);
        assert_eq!(s.unsafe_shutdowns(), 2);
        assert_eq!(s.num_error_log_entries(), 5);
        assert_eq!(s.warning_temp_time, 7);
        assert_eq!(s.temp_sensor[0], 300);
    }

    #[test]
    fn error_and_firmware_logs_decode() {
        let mut b = [0u8; 64];
        b[0..8].copy_from_slice(&42u64.to_le_bytes());
        b[8..10].copy_from_slice(&1u16.to_le_bytes());
        b[10..12].copy_from_slice(&0x77u16.to_le_bytes());
        b[12..14].copy_from_slice(&((0x80u16 << 1) | 1).to_le_bytes());
        b[16..24].copy_from_slice(&0x1000u64.to_le_bytes());
        b[24..28].copy_from_slice(&1u32.to_le_bytes());
        let e = ErrorLogEntry::read_from_bytes(&b[..]).unwrap();
        assert_eq!(e.error_count, 42);
        assert_eq!((e.sqid, e.cmdid), (1, 0x77));
        assert!(e
            .status()
            .is_generic(crate::status::GenericStatus::LbaOutOfRange));
        assert_eq!(e.lba, 0x1000);
        assert_eq!(e.nsid, 1);

        let mut f = [0u8; 512];
        f[0] = 0x11;
        f[8..16].copy_from_slice(b"1.0     ");
        f[16..24].copy_from_slice(b"2.0-rc1 ");
        let fw = FirmwareSlotLog::read_from_bytes(&f[..]).unwrap();
        assert_eq!(fw.active_slot(), 1);
        assert_eq!(fw.revision(1), Some("1.0"));
        assert_eq!(fw.revision(2), Some("2.0-rc1"));
        assert_eq!(fw.revision(3), None);
        assert_eq!(fw.revision(0), None);
        assert_eq!(fw.revision(8), None);
    }

    #[test]
    fn self_test_log_layout() {
        let e = SelfTestResult::new(self_test::SHORT, self_test::RESULT_OK, 0x1c, 1);
        let log = SelfTestLog::new(self_test::EXTENDED, 42, &[e]);
        let b = log.as_bytes();
        assert_eq!((b[0], b[1]), (2, 42));
        assert_eq!(b[4], 0x10);
        assert_eq!(b[6], self_test::VDI_NSID);
        assert_eq!(b[8], 0x1c);
        assert_eq!(&b[16..20], &1u32.to_le_bytes());
        assert_eq!(b[4 + 28], 0x0f, "the second entry is unused");
        let back = SelfTestLog::read_from_bytes(b).unwrap();
        assert_eq!(back.results[0].code(), self_test::SHORT);
        assert_eq!(back.results[0].power_on_hours(), 0x1c);
        assert_eq!(back.results[0].nsid(), 1);
        assert_eq!(back.results[1].result(), self_test::RESULT_NOT_USED);
        // Outside a namespace the NSID is not marked valid.
        assert_eq!(SelfTestResult::new(1, 0, 0, u32::MAX).vdi, 0);
    }
}

/// An asynchronous event, decoded from completion dword 0 of an Asynchronous Event Request
/// (NVMe 1.4 figure 146).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AsyncEvent {
    /// Event type (bits 2:0): 0 error, 1 SMART / health, 2 notice, 6 I/O command set,
    /// 7 vendor specific.
    pub event_type: u8,
    /// Event information (bits 15:8), meaning depends on the type.
    pub info: u8,
    /// The log page to read for details (bits 23:16); reading it re-enables the event.
    pub log_page: u8,
}

impl AsyncEvent {
    /// Decodes completion dword 0.
    pub const fn from_dword(dw0: u32) -> AsyncEvent {
        AsyncEvent {
            event_type: (dw0 & 0x7) as u8,
            info: (dw0 >> 8) as u8,
            log_page: (dw0 >> 16) as u8,
        }
    }
    /// The name of the event type.
    pub const fn type_name(&self) -> &'static str {
        match self.event_type {
            0 => "Error status",
            1 => "SMART / Health status",
            2 => "Notice",
            6 => "I/O command specific status",
            7 => "Vendor specific",
            _ => "Reserved",
        }
    }
}

#[cfg(test)]
mod event_tests {
    use super::*;

    #[test]
    fn async_event_decodes() {
        // SMART/health, temperature threshold (info 1), log page 02h.
        let e = AsyncEvent::from_dword(0x0002_0101);
        assert_eq!((e.event_type, e.info, e.log_page), (1, 1, lid::SMART));
        assert_eq!(e.type_name(), "SMART / Health status");
        assert_eq!(AsyncEvent::from_dword(0x0004_0002).type_name(), "Notice");
    }
}
