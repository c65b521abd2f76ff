//! Identify data and log pages from arbitrary bytes, through `nvme-regs` and `nvmectl`'s
//! printers.
//!
//! The input is cut into: CAP and VS register values, a 4096-byte Identify Controller, a
//! 4096-byte Identify Namespace, a 512-byte SMART / Health log, a 512-byte Firmware Slot log,
//! a feature id, value and data, then 64-byte Error Information log entries from the rest
//! (a short input is zero-padded). Everything a controller returns goes through the real
//! decoders and every output format: `nvmectl id-ctrl` / `id-ns` / `smart-log` /
//! `error-log` / `get-feature` in text (with and without `-H`) and JSON, and the
//! `identify` summary (SPDK's layout) with the raw dumps. Nothing may panic.

use nvme_host_linux::regs::features::FeatureSelect;
use nvme_host_linux::regs::identify::{IdentifyController, IdentifyNamespace, NamespaceList};
use nvme_host_linux::regs::log::{ErrorLogEntry, FirmwareSlotLog, SmartLog};
use nvme_host_linux::regs::registers::{Cap, Vs};
use nvme_tools::ctl::identify::{Features, NamespaceInfo, Summary};
use nvme_tools::ctl::{features, idctrl, idns, logs};
use zerocopy::FromBytes;

use crate::input::Input;

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let cap = Cap(input.u64());
    let vs = Vs(input.u32());
    let human = input.bool();
    let id_bytes = input.array::<4096>();
    let ns_bytes = input.array::<4096>();
    let smart_bytes = input.array::<512>();
    let fw_bytes = input.array::<512>();
    let fid = input.u8();
    let sel_byte = input.u8();
    // Which printers this input goes through (the select byte's unused high bits): one
    // group per execution, so that an execution costs one printer's time, not all of them
    // (the fuzzer varies the byte like any other; every group stays reachable).
    let printers = (sel_byte >> 2) % 6;
    let sel = match sel_byte % 4 {
        0 => FeatureSelect::Current,
        1 => FeatureSelect::Default,
        2 => FeatureSelect::Saved,
        _ => FeatureSelect::SupportedCapabilities,
    };
    let value = input.u32();
    let cdw11 = input.u32();
    let feature_data = input.bytes(features::data_len(fid, cdw11).min(4096));
    let errors: Vec<ErrorLogEntry> = input
        .rest()
        .chunks_exact(64)
        .take(256)
        .map(|c| ErrorLogEntry::read_from_bytes(c).expect("64 bytes"))
        .collect();

    let id = IdentifyController::read_from_bytes(&id_bytes[..]).expect("4096 bytes");
    let ns = IdentifyNamespace::read_from_bytes(&ns_bytes[..]).expect("4096 bytes");
    let smart = SmartLog::read_from_bytes(&smart_bytes[..]).expect("512 bytes");
    let fw = FirmwareSlotLog::read_from_bytes(&fw_bytes[..]).expect("512 bytes");
    // The same bytes as a namespace list (Identify CNS 02h).
    let list = NamespaceList::read_from_bytes(&ns_bytes[..]).expect("4096 bytes");
    let nsids: Vec<u32> = list.iter().collect();

    // The decoders the driver itself uses.
    let _ = (id.serial(), id.model(), id.firmware(), id.oacs(), id.oncs());
    let _ = (id.lpa(), id.has_volatile_write_cache(), id.total_capacity());
    let _ = id.max_transfer_bytes(cap.min_page_size());
    let _ = (smart.critical_warning(), smart.temperature_kelvin());
    let _ = (
        smart.data_units_read(),
        smart.power_on_hours(),
        smart.media_errors(),
    );
    for slot in 0..9 {
        let _ = fw.revision(slot);
    }
    let _ = fw.active_slot();
    for e in &errors {
        let _ = e.status();
    }

    // nvmectl's printers.
    let nsid = nsids.first().copied().unwrap_or(1);
    match printers {
        0 => {
            let _ = idctrl::format_text(&id, human);
            let _ = idctrl::format_json(&id);
        }
        1 => {
            let _ = idns::format_text(nsid, &ns, human);
            let _ = idns::format_json(&ns);
        }
        2 => {
            let _ = logs::smart_text(&smart, "fuzz", u32::MAX, human);
            let _ = logs::smart_json(&smart, human);
        }
        3 => {
            let _ = logs::error_text(&errors, "fuzz");
            let _ = logs::error_json(&errors);
        }
        4 => {
            let _ = features::format_text(fid, sel, value, feature_data, human);
        }
        _ => {}
    }
    if printers != 5 {
        return;
    }

    // The `identify` summary. The raw dumps (`-x`) print the first 1 to 256 bytes, not all 4096: a hex dump's code
    // is the same for every row (full and partial rows are both reached), and five 4 KiB
    // dumps per input (the controller and four namespaces) were most of an execution's time
    // (~2 ms); a longer dump only repeats the same rows.
    let dump_len = 1 + (cdw11 >> 24) as usize;
    let summary = Summary {
        name: "fuzz".into(),
        pci_id: (id.vid, id.ssvid),
        cap,
        vs,
        io_queues: (value as u16, (value >> 16) as u16),
        id,
        raw: human.then(|| id_bytes[..dump_len].to_vec()),
        smart: if fid & 1 == 0 {
            Ok(smart)
        } else {
            Err("refused".into())
        },
        firmware: if fid & 2 == 0 {
            Ok(fw)
        } else {
            Err("refused".into())
        },
        errors: if fid & 4 == 0 {
            Ok(errors)
        } else {
            Err("refused".into())
        },
        features: Features {
            arbitration: Ok(value),
            power: Ok(cdw11),
            temp_threshold: if fid & 8 == 0 {
                Ok(value.rotate_left(8))
            } else {
                Err("refused".into())
            },
            queues: Ok(value.rotate_left(16)),
        },
        // Every entry has the same Identify Namespace bytes, so two namespaces (none, one or
        // several) cover the printer; only the first has the raw dump.
        namespaces: nsids
            .iter()
            .take(2)
            .enumerate()
            .map(|(i, &nsid)| NamespaceInfo {
                nsid,
                id: ns,
                raw: (human && i == 0).then(|| ns_bytes[..dump_len].to_vec()),
            })
            .collect(),
    };
    let _ = nvme_tools::ctl::identify::format(&summary);
}
