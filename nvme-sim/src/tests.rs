//! Tests through the minimal host of `testhost.rs`: it maps the BAR, owns a DMA memfd,
//! builds submission entries by hand, rings doorbells and polls completion queues.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nvme_regs::features::fid;
use nvme_regs::identify::{IdentifyController, IdentifyNamespace, NamespaceList};
use nvme_regs::log::{lid, CriticalWarning, ErrorLogEntry, FirmwareSlotLog, SmartLog};
use nvme_regs::opcode::{AdminOpcode as A, NvmOpcode as N};
use nvme_regs::registers::{cq_head_doorbell, offset, Cap, Cc, ShutdownStatus, Vs};
use nvme_regs::sgl::{SglDescriptor, SglSupport};
use nvme_regs::status::{CommandSpecificStatus as Cs, GenericStatus as G, MediaErrorStatus as M};
use nvme_regs::{CompletionEntry, Status, SubmissionEntry};
use zerocopy::{FromBytes, IntoBytes};

use crate::mem::create_memfd;
use crate::testhost::*;
use crate::*;

/// The in-process test host: a controller and the host driving it.
struct Host {
    sim: SimController,
    core: HostCore,
}

impl std::ops::Deref for Host {
    type Target = HostCore;
    fn deref(&self) -> &HostCore {
        &self.core
    }
}

impl std::ops::DerefMut for Host {
    fn deref_mut(&mut self) -> &mut HostCore {
        &mut self.core
    }
}

impl Host {
    fn new(cfg: SimConfig) -> Host {
        let dstrd = cfg.dstrd;
        let sim = SimController::start(cfg).expect("start");
        let core = HostCore::new(sim.bar_fd(), sim.bar_len(), dstrd, |i, fd, o, l| {
            sim.dma_map(i, fd, o, l)
        });
        Host { sim, core }
    }

    fn iova(off: usize) -> u64 {
        HostCore::iova(off)
    }

    fn cc_default() -> Cc {
        HostCore::cc_default()
    }

    fn create_cq_cmd(qid: u16, entries: u32, iova: u64) -> SubmissionEntry {
        HostCore::create_cq_cmd(qid, entries, iova)
    }

    fn create_sq_cmd(qid: u16, entries: u32, iova: u64, cqid: u16) -> SubmissionEntry {
        HostCore::create_sq_cmd(qid, entries, iova, cqid)
    }

    fn ready_with_io() -> Host {
        let mut h = Host::new(small_config());
        h.enable();
        h.create_io(1, 64, 64);
        h
    }
}

fn st(e: &CompletionEntry) -> Status {
    e.status()
}

fn assert_generic(e: &CompletionEntry, g: G) {
    assert!(
        e.status().is_generic(g),
        "expected {}, got {}",
        Status::generic(g),
        e.status()
    );
    assert!(e.status().dnr(), "{} should have DNR", e.status());
}

fn assert_cs(e: &CompletionEntry, s: Cs) {
    assert!(
        e.status().is_command_specific(s),
        "expected {}, got {}",
        Status::command_specific(s),
        e.status()
    );
}

// ---------------------------------------------------------------------------------------
// Registers and controller state

#[test]
fn registers_after_start_and_read_only_rewrite() {
    let h = Host::new(SimConfig {
        dstrd: 2,
        mqes: 255,
        timeout_500ms: 7,
        ..small_config()
    });
    let cap = Cap(h.r64(offset::CAP));
    assert_eq!(cap.mqes(), 255);
    assert!(cap.cqr());
    assert_eq!(cap.to(), 7);
    assert_eq!(cap.dstrd(), 2);
    assert_eq!(cap.css() & 1, 1);
    assert_eq!((cap.mpsmin(), cap.mpsmax()), (0, 4));
    assert_eq!(Vs(h.r32(offset::VS)), Vs::V1_4);
    assert_eq!(h.csts().0, 0);
    // Doorbells of every queue fit in the BAR.
    assert!(h.sim.bar_len() >= cq_head_doorbell(8, 2) + 4);
    assert!(h.sim.bar_len() >= 64 * 1024);
    // Writes to read-only registers do not stick.
    h.w64(offset::CAP, 0);
    h.w32(offset::VS, 0xdead);
    h.w32(offset::CSTS, 0xffff);
    let t = Instant::now();
    while h.r64(offset::CAP) != cap.0 || h.r32(offset::VS) != Vs::V1_4.0 || h.r32(offset::CSTS) != 0
    {
        assert!(t.elapsed() < WAIT, "read-only registers not restored");
        std::thread::sleep(Duration::from_micros(100));
    }
}

#[test]
fn enable_disable_follow_ready_delay() {
    let delay = Duration::from_millis(30);
    let mut h = Host::new(SimConfig {
        ready_delay: delay,
        ..small_config()
    });
    // Timed from before the enable: a sleep that overruns (a loaded machine) must not
    // make RDY look early.
    let enabled = Instant::now();
    h.start_enable(Host::cc_default(), 8);
    std::thread::sleep(Duration::from_millis(5));
    assert!(!h.csts().rdy(), "RDY before ready_delay");
    h.wait_csts("RDY", |c| c.rdy());
    assert!(enabled.elapsed() >= delay - Duration::from_millis(1));
    // The controller works once ready.
    let e = h.admin(cmd(A::KeepAlive as u8));
    assert!(st(&e).is_success());
    // Disable: RDY follows after the delay.
    let start = Instant::now();
    h.w32(offset::CC, Host::cc_default().with_en(false).0);
    std::thread::sleep(Duration::from_millis(5));
    assert!(h.csts().rdy(), "RDY cleared before ready_delay");
    h.wait_csts("RDY clear", |c| !c.rdy());
    assert!(start.elapsed() >= delay - Duration::from_millis(1));
    // Re-enable from scratch.
    h.enable();
    let s = h.sim.stats();
    assert_eq!((s.enables, s.resets), (2, 1));
}

#[test]
fn invalid_enable_sets_cfs_until_reset() {
    let mut h = Host::new(small_config());
    type Setup = Box<dyn Fn(&mut Host)>;
    let cases: Vec<(&str, Setup)> = vec![
        (
            "MPS",
            Box::new(|h: &mut Host| h.start_enable(Host::cc_default().with_mps(5), 8)),
        ),
        (
            "IOSQES",
            Box::new(|h: &mut Host| h.start_enable(Host::cc_default().with_iosqes(7), 8)),
        ),
        (
            "AQA",
            Box::new(|h: &mut Host| h.start_enable(Host::cc_default(), 1)),
        ),
        (
            "aligned",
            Box::new(|h: &mut Host| {
                h.start_enable(Host::cc_default().with_en(false), 8);
                h.w64(offset::ASQ, DMA_IOVA + 0x80);
                h.w32(offset::CC, Host::cc_default().0);
            }),
        ),
        (
            "DMA-mapped",
            Box::new(|h: &mut Host| {
                h.start_enable(Host::cc_default().with_en(false), 8);
                h.w64(offset::ACQ, 0x1000);
                h.w32(offset::CC, Host::cc_default().0);
            }),
        ),
    ];
    for (what, setup) in cases {
        setup(&mut h);
        h.wait_csts("CFS", |c| c.cfs());
        assert!(!h.csts().rdy());
        let reason = h.sim.fatal_reason().unwrap();
        assert!(reason.contains(what), "{what}: {reason}");
        h.w32(offset::CC, 0);
        h.wait_csts("CFS clear", |c| !c.cfs() && !c.rdy());
    }
    h.enable();
}

#[test]
fn shutdown_completes() {
    let mut h = Host::new(small_config());
    h.enable();
    let cc = Host::cc_default().with_shn(nvme_regs::registers::ShutdownNotification::Normal);
    h.w32(offset::CC, cc.0);
    h.wait_csts("SHST", |c| c.shst() == ShutdownStatus::Complete);
    // Reset and enable again: SHST returns to normal.
    h.w32(offset::CC, 0);
    h.wait_csts("RDY clear", |c| !c.rdy());
    h.enable();
    assert_eq!(h.csts().shst(), ShutdownStatus::Normal);
}

#[test]
fn reset_drops_io_queues() {
    let mut h = Host::ready_with_io();
    h.disable();
    h.enable();
    let sq = h.alloc(4096);
    let e = h.admin(Host::create_sq_cmd(1, 16, Host::iova(sq), 1));
    assert_cs(&e, Cs::CompletionQueueInvalid);
    h.create_io(1, 16, 16);
    let e = h.exec(1, cmd(N::Flush as u8).with_nsid(1));
    assert!(st(&e).is_success());
}

trait WithNsid {
    fn with_nsid(self, nsid: u32) -> Self;
}
impl WithNsid for SubmissionEntry {
    fn with_nsid(mut self, nsid: u32) -> Self {
        self.nsid = nsid;
        self
    }
}

// ---------------------------------------------------------------------------------------
// Admin commands

#[test]
fn identify_controller_and_namespaces() {
    let mut h = Host::new(SimConfig {
        serial: "SN-1234".into(),
        model: "Test Model".into(),
        firmware: "FW9".into(),
        mdts: 6,
        ..small_config()
    });
    h.enable();
    let (s, d) = h.identify(1, 0);
    assert!(s.is_success());
    let id = IdentifyController::read_from_bytes(&d).unwrap();
    assert_eq!(id.serial(), "SN-1234");
    assert_eq!(id.model(), "Test Model");
    assert_eq!(id.firmware(), "FW9");
    assert_eq!(id.mdts, 6);
    assert_eq!(id.ver, Vs::V1_4.0);
    assert_eq!((id.sqes, id.cqes), (0x66, 0x44));
    assert_eq!(id.nn, 2);
    assert_eq!(id.aerl, 3);
    assert!(id.has_volatile_write_cache());
    assert_eq!(id.total_capacity(), 16 << 20);
    assert_eq!(id.elpe, 63);

    let (s, d) = h.identify(0, 1);
    assert!(s.is_success());
    let ns = IdentifyNamespace::read_from_bytes(&d).unwrap();
    assert_eq!((ns.nsze, ns.ncap, ns.block_size()), (16384, 16384, 512));
    let (_, d) = h.identify(0, 2);
    let ns2 = IdentifyNamespace::read_from_bytes(&d).unwrap();
    assert_eq!((ns2.nsze, ns2.block_size()), (2048, 4096));
    assert_ne!(ns.nguid, ns2.nguid);

    let (s, d) = h.identify(2, 0);
    assert!(s.is_success());
    let list = NamespaceList::read_from_bytes(&d).unwrap();
    assert_eq!(list.iter().collect::<Vec<_>>(), vec![1, 2]);
    let (_, d) = h.identify(2, 1);
    let list = NamespaceList::read_from_bytes(&d).unwrap();
    assert_eq!(list.iter().collect::<Vec<_>>(), vec![2]);

    let (s, d) = h.identify(3, 1);
    assert!(s.is_success());
    assert_eq!((d[0], d[1]), (1, 8));
    assert_eq!(&d[4..12], &ns.eui64);
    assert_eq!((d[12], d[13]), (2, 16));
    assert_eq!(&d[16..32], &ns.nguid);

    // NSID FFFFFFFFh: what all namespaces share, the LBA formats.
    let (s, d) = h.identify(0, 0xffff_ffff);
    assert!(s.is_success(), "{s}");
    let common = IdentifyNamespace::read_from_bytes(&d).unwrap();
    assert_eq!(common.nlbaf, 1);
    assert_eq!(
        (common.lbaf[0].data_size(), common.lbaf[1].data_size()),
        (512, 4096)
    );
    assert_eq!(ns2.flbas, 1, "namespace 2 uses the 4096-byte format");
    for nsid in [0, 3] {
        let (s, _) = h.identify(0, nsid);
        assert!(
            s.is_generic(G::InvalidNamespaceOrFormat) && s.dnr(),
            "nsid {nsid}: {s}"
        );
    }
    let (s, _) = h.identify(0x55, 0);
    assert!(s.is_generic(G::InvalidField), "{s}");
    let e = h.admin(cmd(0xc7));
    assert_generic(&e, G::InvalidOpcode);
}

#[test]
fn queue_create_delete_errors() {
    let mut h = Host::new(small_config());
    h.enable();
    let mem = h.alloc(64 * 1024);
    let iova = Host::iova(mem);
    // Queue ids.
    assert_cs(
        &h.admin(Host::create_cq_cmd(0, 16, iova)),
        Cs::InvalidQueueId,
    );
    assert_cs(
        &h.admin(Host::create_cq_cmd(9, 16, iova)),
        Cs::InvalidQueueId,
    );
    // Sizes.
    assert_cs(
        &h.admin(Host::create_cq_cmd(1, 1, iova)),
        Cs::InvalidQueueSize,
    );
    assert_cs(
        &h.admin(Host::create_cq_cmd(1, 1025, iova)),
        Cs::InvalidQueueSize,
    );
    // PC = 0 with CAP.CQR.
    let mut c = Host::create_cq_cmd(1, 16, iova);
    c.cdw11 = 0;
    assert_generic(&h.admin(c), G::InvalidField);
    // Unaligned and unmapped bases.
    assert_generic(
        &h.admin(Host::create_cq_cmd(1, 16, iova + 64)),
        G::PrpOffsetInvalid,
    );
    assert_generic(
        &h.admin(Host::create_cq_cmd(1, 16, 0x1000)),
        G::DataTransferError,
    );
    // SQ needs an existing CQ.
    assert_cs(
        &h.admin(Host::create_sq_cmd(1, 16, iova, 1)),
        Cs::CompletionQueueInvalid,
    );
    assert_cs(
        &h.admin(Host::create_sq_cmd(1, 16, iova, 0)),
        Cs::CompletionQueueInvalid,
    );
    assert!(st(&h.admin(Host::create_cq_cmd(1, 16, iova))).is_success());
    assert_cs(
        &h.admin(Host::create_cq_cmd(1, 16, iova + 4096)),
        Cs::InvalidQueueId,
    );
    assert_cs(
        &h.admin(Host::create_sq_cmd(9, 16, iova + 4096, 1)),
        Cs::InvalidQueueId,
    );
    assert_cs(
        &h.admin(Host::create_sq_cmd(1, 1, iova + 4096, 1)),
        Cs::InvalidQueueSize,
    );
    assert!(st(&h.admin(Host::create_sq_cmd(1, 16, iova + 4096, 1))).is_success());
    assert_cs(
        &h.admin(Host::create_sq_cmd(1, 16, iova + 8192, 1)),
        Cs::InvalidQueueId,
    );
    // Delete: CQ still used by an SQ; unknown ids.
    let del = |op: A, qid: u32| {
        let mut c = cmd(op as u8);
        c.cdw10 = qid;
        c
    };
    assert_cs(&h.admin(del(A::DeleteIoCq, 1)), Cs::InvalidQueueDeletion);
    assert_cs(&h.admin(del(A::DeleteIoSq, 2)), Cs::InvalidQueueId);
    assert_cs(&h.admin(del(A::DeleteIoSq, 0)), Cs::InvalidQueueId);
    assert_cs(&h.admin(del(A::DeleteIoCq, 0)), Cs::InvalidQueueId);
    assert!(st(&h.admin(del(A::DeleteIoSq, 1))).is_success());
    assert!(st(&h.admin(del(A::DeleteIoCq, 1))).is_success());
    assert_cs(&h.admin(del(A::DeleteIoCq, 1)), Cs::InvalidQueueId);
}

#[test]
fn number_of_queues_and_features() {
    let mut h = Host::new(small_config());
    h.enable();
    // Requested 4 SQs and 16 CQs (0's based 3 and 15): granted min(req, 8).
    let e = h.set_feature(fid::NUMBER_OF_QUEUES, 3 | 15 << 16);
    assert!(st(&e).is_success());
    assert_eq!(e.dw0, 3 | 7 << 16);
    let e = h.get_feature(fid::NUMBER_OF_QUEUES, 0, 0);
    assert_eq!(e.dw0, 3 | 7 << 16);
    let e = h.get_feature(fid::NUMBER_OF_QUEUES, 1, 0);
    assert_eq!(e.dw0, 7 | 7 << 16, "default");
    let e = h.get_feature(fid::NUMBER_OF_QUEUES, 3, 0);
    assert_eq!(e.dw0 & 0x7, 0x4, "changeable, not saveable");
    assert_generic(
        &h.set_feature(fid::NUMBER_OF_QUEUES, 0xffff),
        G::InvalidField,
    );
    // Only 4 SQs granted now.
    h.create_io(4, 16, 16);
    let mem = h.alloc(4096);
    assert_cs(
        &h.admin(Host::create_sq_cmd(5, 16, Host::iova(mem), 4)),
        Cs::InvalidQueueId,
    );
    // Changing the count with queues in place is a sequence error.
    assert_generic(
        &h.set_feature(fid::NUMBER_OF_QUEUES, 0),
        G::CommandSequenceError,
    );

    // Volatile write cache.
    assert_eq!(h.get_feature(fid::VOLATILE_WRITE_CACHE, 0, 0).dw0, 1);
    assert!(st(&h.set_feature(fid::VOLATILE_WRITE_CACHE, 0)).is_success());
    assert_eq!(h.get_feature(fid::VOLATILE_WRITE_CACHE, 0, 0).dw0, 0);
    assert_eq!(h.get_feature(fid::VOLATILE_WRITE_CACHE, 1, 0).dw0, 1);
    // Arbitration and async event config round trip.
    assert!(st(&h.set_feature(fid::ARBITRATION, 0x0302_0103)).is_success());
    assert_eq!(h.get_feature(fid::ARBITRATION, 0, 0).dw0, 0x0302_0103);
    assert!(st(&h.set_feature(fid::ASYNC_EVENT_CONFIG, 0x2ff)).is_success());
    assert_eq!(h.get_feature(fid::ASYNC_EVENT_CONFIG, 0, 0).dw0, 0x2ff);
    // Temperature thresholds per sensor and kind.
    assert_eq!(h.get_feature(fid::TEMPERATURE_THRESHOLD, 0, 0).dw0, 343);
    assert!(st(&h.set_feature(fid::TEMPERATURE_THRESHOLD, 350 | 1 << 16)).is_success());
    assert_eq!(
        h.get_feature(fid::TEMPERATURE_THRESHOLD, 0, 1 << 16).dw0,
        350
    );
    assert!(st(&h.set_feature(fid::TEMPERATURE_THRESHOLD, 270 | 1 << 20)).is_success());
    assert_eq!(
        h.get_feature(fid::TEMPERATURE_THRESHOLD, 0, 1 << 20).dw0,
        270
    );
    assert_generic(
        &h.set_feature(fid::TEMPERATURE_THRESHOLD, 300 | 5 << 16),
        G::InvalidField,
    );
    // Unknown features, saving.
    assert_generic(&h.set_feature(0x7e, 0), G::InvalidField);
    assert_generic(&h.get_feature(0x7e, 0, 0), G::InvalidField);
    let mut c = cmd(A::SetFeatures as u8);
    c.cdw10 = fid::ARBITRATION as u32 | 1 << 31;
    assert_cs(&h.admin(c), Cs::FeatureNotSaveable);
    // Abort of a command the controller does not hold: not aborted; keep alive succeeds.
    let mut c = cmd(A::Abort as u8);
    c.cdw10 = 1 << 16;
    let e = h.admin(c);
    assert!(st(&e).is_success());
    assert_eq!(e.dw0 & 1, 1);
    assert!(st(&h.admin(cmd(A::KeepAlive as u8))).is_success());
}

#[test]
fn log_pages() {
    let mut h = Host::ready_with_io();
    // Some I/O: 3 writes of 8 blocks (4 KiB), 2 reads of 8 blocks.
    let buf = h.alloc(4096);
    for i in 0..3 {
        assert!(st(&h.exec(1, rw(N::Write, 1, i * 8, 8, Host::iova(buf), 0))).is_success());
    }
    for i in 0..2 {
        assert!(st(&h.exec(1, rw(N::Read, 1, i * 8, 8, Host::iova(buf), 0))).is_success());
    }
    // Two failures: LBA out of range on queue 1, invalid namespace.
    let e = h.exec(1, rw(N::Read, 1, 16384, 1, Host::iova(buf), 0));
    assert_generic(&e, G::LbaOutOfRange);
    let bad_cid = e.cid;
    assert_generic(
        &h.exec(1, rw(N::Read, 7, 0, 1, Host::iova(buf), 0)),
        G::InvalidNamespaceOrFormat,
    );

    let (s, d) = h.get_log(lid::SMART, 128, 0);
    assert!(s.is_success());
    let smart = SmartLog::read_from_bytes(&d).unwrap();
    assert_eq!(smart.temperature_kelvin(), 313);
    assert_eq!(smart.available_spare, 100);
    assert_eq!(smart.host_write_commands(), 3);
    assert_eq!(smart.host_read_commands(), 2);
    assert_eq!(
        smart.data_units_written(),
        1,
        "24 units of 512 bytes, rounded up to thousands"
    );
    assert_eq!(smart.data_units_read(), 1);
    assert_eq!(smart.power_cycles(), 1);
    assert_eq!(smart.num_error_log_entries(), 2);
    assert!(smart.critical_warning().is_empty());

    let (s, d) = h.get_log(lid::ERROR, 32, 0);
    assert!(s.is_success());
    let newest = ErrorLogEntry::read_from_bytes(&d[..64]).unwrap();
    let older = ErrorLogEntry::read_from_bytes(&d[64..128]).unwrap();
    assert_eq!(newest.error_count, 2);
    assert_eq!(newest.nsid, 7);
    assert!(newest.status().is_generic(G::InvalidNamespaceOrFormat));
    assert_eq!(
        (older.error_count, older.sqid, older.cmdid),
        (1, 1, bad_cid)
    );
    assert_eq!(older.lba, 16384);
    assert!(older.status().is_generic(G::LbaOutOfRange));
    // Offset: the second entry alone.
    let (s, d) = h.get_log(lid::ERROR, 16, 64);
    assert!(s.is_success());
    assert_eq!(ErrorLogEntry::read_from_bytes(&d).unwrap().error_count, 1);

    let (s, d) = h.get_log(lid::FIRMWARE_SLOT, 128, 0);
    assert!(s.is_success());
    let fw = FirmwareSlotLog::read_from_bytes(&d).unwrap();
    assert_eq!(fw.active_slot(), 1);
    assert_eq!(fw.revision(1), Some("0.1.0"));
    // Partial read with offset: bytes 8..16 of the firmware log.
    let (_, d) = h.get_log(lid::FIRMWARE_SLOT, 2, 8);
    assert_eq!(&d[..5], b"0.1.0");

    let (s, _) = h.get_log(0x7f, 16, 0);
    assert!(s.is_command_specific(Cs::InvalidLogPage), "{s}");
    let (s, _) = h.get_log(lid::SMART, 16, 512);
    assert!(s.is_generic(G::InvalidField), "offset past the end: {s}");
    let (s, _) = h.get_log(lid::SMART, 16, 2);
    assert!(s.is_generic(G::InvalidField), "unaligned offset: {s}");
}

#[test]
fn async_events_and_limit() {
    let mut h = Host::new(small_config());
    h.enable();
    let mut cids = Vec::new();
    for _ in 0..4 {
        cids.push(h.submit(0, cmd(A::AsyncEventRequest as u8)));
    }
    let e = h.admin(cmd(A::AsyncEventRequest as u8));
    assert_cs(&e, Cs::AerLimitExceeded);
    h.expect_none(0, Duration::from_millis(5));

    h.sim
        .faults()
        .raise_async_event(AsyncEventType::Notice, 0x02, 0x04);
    let e = h.wait(0);
    assert_eq!(e.cid, cids[0]);
    assert!(st(&e).is_success());
    assert_eq!(e.dw0, 2 | 0x02 << 8 | 0x04 << 16);

    // Over threshold below the current temperature: SMART / health temperature event.
    assert!(st(&h.set_feature(fid::TEMPERATURE_THRESHOLD, 300)).is_success());
    let e = h.wait(0);
    assert_eq!(e.cid, cids[1]);
    assert_eq!(
        e.dw0,
        1 | (AER_INFO_SMART_TEMPERATURE as u32) << 8 | (lid::SMART as u32) << 16
    );
    let (_, d) = h.get_log(lid::SMART, 128, 0);
    let smart = SmartLog::read_from_bytes(&d).unwrap();
    assert!(smart
        .critical_warning()
        .contains(CriticalWarning::TEMPERATURE));
    assert_eq!(h.sim.faults().counters().async_events_raised, 1);
}

// ---------------------------------------------------------------------------------------
// I/O

/// Writes `data` with a PRP list, reads it back with a chained PRP list, and checks the
/// backing store.
fn round_trip(h: &mut Host, nsid: u32, lba_size: usize) {
    let len = 64 * 1024;
    let nlb = (len / lba_size) as u32;
    let data = pattern(nsid as u8, len);

    // Write buffer starts 0x200 into its first page: 17 pages touched.
    let wbuf = h.alloc(len + PAGE);
    h.write_mem(wbuf + 0x200, &data);
    let list = h.alloc(PAGE);
    for i in 1..17 {
        h.write_u64(list + (i - 1) * 8, Host::iova(wbuf + i * PAGE));
    }
    let e = h.exec(
        1,
        rw(
            N::Write,
            nsid,
            3,
            nlb,
            Host::iova(wbuf) + 0x200,
            Host::iova(list),
        ),
    );
    assert!(st(&e).is_success(), "write: {}", st(&e));
    let mut back = vec![0u8; len];
    h.sim
        .read_backing(nsid, 3 * lba_size as u64, &mut back)
        .unwrap();
    assert!(back == data, "backing store differs");

    // Read into scattered pages (every other page) with a list that starts 16 bytes before
    // the end of its page: one entry there, then a chain pointer to the next list page.
    let rbuf = h.alloc(32 * PAGE);
    let lists = h.alloc(2 * PAGE);
    let first_list = lists + PAGE - 16;
    let next_list = lists + PAGE;
    let page_of = |i: usize| rbuf + 2 * i * PAGE;
    h.write_u64(first_list, Host::iova(page_of(1)));
    h.write_u64(first_list + 8, Host::iova(next_list));
    for i in 2..16 {
        h.write_u64(next_list + (i - 2) * 8, Host::iova(page_of(i)));
    }
    let e = h.exec(
        1,
        rw(
            N::Read,
            nsid,
            3,
            nlb,
            Host::iova(page_of(0)),
            Host::iova(first_list),
        ),
    );
    assert!(st(&e).is_success(), "read: {}", st(&e));
    let mut got = Vec::new();
    for i in 0..16 {
        got.extend(h.read_mem(page_of(i), PAGE));
    }
    assert!(got == data, "read data differs");

    // Two pages: PRP2 is a page pointer; compare succeeds on equal data.
    let two = h.alloc(2 * PAGE);
    h.write_mem(two, &data[..2 * PAGE]);
    let n2 = (2 * PAGE / lba_size) as u32;
    let e = h.exec(
        1,
        rw(
            N::Compare,
            nsid,
            3,
            n2,
            Host::iova(two),
            Host::iova(two + PAGE),
        ),
    );
    assert!(st(&e).is_success(), "compare: {}", st(&e));
}

#[test]
fn read_write_round_trip_prp_lists() {
    let mut h = Host::ready_with_io();
    round_trip(&mut h, 1, 512);
    round_trip(&mut h, 2, 4096);
    let s = h.sim.stats();
    assert_eq!((s.writes, s.reads, s.compares), (2, 2, 2));
    assert_eq!((s.bytes_written, s.bytes_read), (128 * 1024, 128 * 1024));
}

#[test]
fn io_error_statuses() {
    let mut h = Host::ready_with_io();
    let buf = h.alloc(3 * PAGE);
    let b = Host::iova(buf);
    let list = h.alloc(PAGE);
    let ex = |h: &mut Host, c: SubmissionEntry| h.exec(1, c);

    assert_generic(
        &ex(&mut h, rw(N::Read, 0, 0, 1, b, 0)),
        G::InvalidNamespaceOrFormat,
    );
    assert_generic(
        &ex(&mut h, rw(N::Write, 3, 0, 1, b, 0)),
        G::InvalidNamespaceOrFormat,
    );
    assert_generic(
        &ex(&mut h, rw(N::Read, 1, 16383, 2, b, 0)),
        G::LbaOutOfRange,
    );
    assert_generic(
        &ex(&mut h, rw(N::Read, 1, u64::MAX, 1, b, 0)),
        G::LbaOutOfRange,
    );
    // MDTS 5 with 4 KiB pages: 128 KiB.
    assert_generic(
        &ex(&mut h, rw(N::Read, 2, 0, 33, b, Host::iova(list))),
        G::InvalidField,
    );
    // PRP1 not dword aligned.
    assert_generic(
        &ex(&mut h, rw(N::Read, 1, 0, 1, b + 2, 0)),
        G::PrpOffsetInvalid,
    );
    // PRP2 as a second page pointer with an offset.
    assert_generic(
        &ex(&mut h, rw(N::Read, 1, 0, 16, b, b + PAGE as u64 + 8)),
        G::PrpOffsetInvalid,
    );
    // PRP list entry with an offset.
    h.write_u64(list, b + PAGE as u64);
    h.write_u64(list + 8, b + 2 * PAGE as u64 + 0x100);
    assert_generic(
        &ex(&mut h, rw(N::Read, 1, 0, 24, b, Host::iova(list))),
        G::PrpOffsetInvalid,
    );
    // SGL metadata (PSDT 10b) and the reserved PSDT 11b.
    for psdt in [2u8, 3] {
        let mut c = rw(N::Read, 1, 0, 1, b, 0);
        c.set_psdt(psdt);
        assert_generic(&ex(&mut h, c), G::InvalidField);
    }
    // IOVA outside every DMA mapping.
    assert_generic(
        &ex(&mut h, rw(N::Read, 1, 0, 1, 0x4000, 0)),
        G::DataTransferError,
    );
    h.write_u64(list + 8, 0x8000);
    assert_generic(
        &ex(&mut h, rw(N::Write, 1, 0, 24, b, Host::iova(list))),
        G::DataTransferError,
    );
    // Unknown I/O opcode; admin-only opcode on an I/O queue.
    assert_generic(&ex(&mut h, cmd(0x7f).with_nsid(1)), G::InvalidOpcode);
    assert_generic(&ex(&mut h, cmd(0x06).with_nsid(1)), G::InvalidOpcode);
    // Compare mismatch.
    h.sim.write_backing(1, 0, &[0xaa; 512]).unwrap();
    h.write_mem(buf, &[0xab; 512]);
    let e = ex(&mut h, rw(N::Compare, 1, 0, 1, b, 0));
    assert!(st(&e).is_media(M::CompareFailure), "{}", st(&e));
    h.write_mem(buf, &[0xaa; 512]);
    assert!(st(&ex(&mut h, rw(N::Compare, 1, 0, 1, b, 0))).is_success());
    // Write Uncorrectable: reads fail until the block is written again.
    assert!(st(&ex(&mut h, rw(N::WriteUncorrectable, 1, 10, 2, 0, 0))).is_success());
    let e = ex(&mut h, rw(N::Read, 1, 8, 4, b, 0));
    assert!(st(&e).is_media(M::UnrecoveredReadError), "{}", st(&e));
    assert!(st(&ex(&mut h, rw(N::Write, 1, 10, 2, b, 0))).is_success());
    assert!(st(&ex(&mut h, rw(N::Read, 1, 8, 4, b, 0))).is_success());
    // Flush: any namespace or all.
    assert!(st(&ex(&mut h, cmd(N::Flush as u8).with_nsid(0xffff_ffff))).is_success());
    assert_generic(
        &ex(&mut h, cmd(N::Flush as u8).with_nsid(9)),
        G::InvalidNamespaceOrFormat,
    );
}

#[test]
fn write_zeroes_and_deallocate() {
    let mut h = Host::ready_with_io();
    let ones = vec![0x5au8; 4 << 20];
    h.sim.write_backing(1, 0, &ones).unwrap();
    // Write Zeroes of blocks 1..8000 (about 4 MiB, whole pages are released).
    let e = h.exec(1, rw(N::WriteZeroes, 1, 1, 7999, 0, 0));
    assert!(st(&e).is_success());
    let mut back = vec![0u8; 4 << 20];
    h.sim.read_backing(1, 0, &mut back).unwrap();
    assert!(back[..512].iter().all(|&b| b == 0x5a));
    assert!(back[512..8000 * 512].iter().all(|&b| b == 0));
    assert!(back[8000 * 512..].iter().all(|&b| b == 0x5a));
    // Dataset Management deallocate: two ranges (NR = 1).
    let ranges = h.alloc(PAGE);
    let mut r = [0u8; 32];
    r[4..8].copy_from_slice(&4u32.to_le_bytes());
    r[8..16].copy_from_slice(&8100u64.to_le_bytes());
    r[20..24].copy_from_slice(&1u32.to_le_bytes());
    r[24..32].copy_from_slice(&8191u64.to_le_bytes());
    h.write_mem(ranges, &r);
    let mut c = cmd(N::DatasetManagement as u8).with_nsid(1);
    c.prp1 = Host::iova(ranges);
    c.cdw10 = 1;
    c.cdw11 = 1 << 2;
    assert!(st(&h.exec(1, c)).is_success());
    h.sim.read_backing(1, 0, &mut back).unwrap();
    assert!(back[8100 * 512..8104 * 512].iter().all(|&b| b == 0));
    assert!(back[8104 * 512..8191 * 512].iter().all(|&b| b == 0x5a));
    assert!(back[8191 * 512..8192 * 512].iter().all(|&b| b == 0));
    // A range past the end fails and changes nothing.
    r[24..32].copy_from_slice(&16384u64.to_le_bytes());
    h.write_mem(ranges, &r);
    h.sim.write_backing(1, 8100 * 512, &[1u8; 512]).unwrap();
    assert_generic(&h.exec(1, c), G::LbaOutOfRange);
    let mut one = [0u8; 512];
    h.sim.read_backing(1, 8100 * 512, &mut one).unwrap();
    assert_eq!(one, [1u8; 512]);
    assert!(h.sim.read_backing(1, (8 << 20) - 4, &mut [0u8; 8]).is_err());
}

#[test]
fn cq_full_back_pressure() {
    let mut h = Host::new(small_config());
    h.enable();
    h.create_io(1, 16, 4); // 4 entries: at most 3 outstanding completions
    h.queues[1].as_mut().unwrap().auto_ack = false;
    let mut cids = Vec::new();
    for _ in 0..8 {
        h.cid += 1;
        let mut c = cmd(N::Flush as u8).with_nsid(1);
        c.cid = h.cid;
        cids.push(h.cid);
        h.push(1, c);
    }
    h.ring(1);
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(h.wait(1).cid);
    }
    // The host has not advanced the head: the fourth entry must not be written (and the
    // first three must not be overwritten).
    std::thread::sleep(Duration::from_millis(20));
    assert!(h.poll(1).is_none(), "CQ overrun");
    let off = h.queues[1].as_ref().unwrap().cq_off;
    let first = CompletionEntry::read_from_bytes(&h.read_mem(off, 16)).unwrap();
    assert_eq!(first.cid, cids[0]);
    assert!(h.sim.stats().cq_full_waits > 0);
    // Consuming releases the rest, in order.
    while got.len() < 8 {
        h.ack(1);
        let e = h.wait(1);
        assert!(st(&e).is_success());
        got.push(e.cid);
    }
    assert_eq!(got, cids);
    let last = h.queues[1].as_ref().unwrap().cq_head;
    assert_eq!(last, 0, "8 entries in a 4-entry queue wrap twice");
}

#[test]
fn phase_and_sq_head_across_wraps() {
    let mut h = Host::new(small_config());
    h.enable();
    h.create_io(1, 4, 8);
    for i in 0..20u32 {
        let e = h.exec(1, cmd(N::Flush as u8).with_nsid(1));
        assert!(st(&e).is_success());
        assert_eq!(e.sq_head as u32, (i + 1) % 4);
    }
}

#[test]
fn delete_sq_aborts_held_commands() {
    let mut h = Host::ready_with_io();
    let id = h.sim.faults().delay_nth(
        CommandMatch::io(N::Flush as u8),
        1,
        Duration::from_secs(30),
        false,
    );
    let cid = h.submit(1, cmd(N::Flush as u8).with_nsid(1));
    h.expect_none(1, Duration::from_millis(5));
    let mut c = cmd(A::DeleteIoSq as u8);
    c.cdw10 = 1;
    assert!(st(&h.admin(c)).is_success());
    let e = h.wait(1);
    assert_eq!(e.cid, cid);
    assert!(st(&e).is_generic(G::AbortedSqDeletion), "{}", st(&e));
    assert_eq!(h.sim.faults().fired(id), 1);
}

fn abort_cmd(sqid: u16, cid: u16) -> SubmissionEntry {
    let mut c = cmd(A::Abort as u8);
    c.cdw10 = sqid as u32 | (cid as u32) << 16;
    c
}

#[test]
fn abort_aborts_held_commands_and_reports_dropped_ones_as_not_aborted() {
    let mut h = Host::ready_with_io();
    // Held before execution: aborted, never executed.
    h.sim.faults().delay_execution_nth(
        CommandMatch::io(N::Flush as u8),
        1,
        Duration::from_secs(30),
        false,
    );
    let held = h.submit(1, cmd(N::Flush as u8).with_nsid(1));
    h.expect_none(1, Duration::from_millis(5));
    let e = h.admin(abort_cmd(1, held));
    assert!(st(&e).is_success());
    assert_eq!(e.dw0 & 1, 0, "aborted");
    let e = h.wait(1);
    assert_eq!(e.cid, held);
    assert!(st(&e).is_generic(G::AbortRequested), "{}", st(&e));
    // Its completion delayed: aborted too.
    h.sim.faults().delay_nth(
        CommandMatch::io(N::Flush as u8),
        1,
        Duration::from_secs(30),
        false,
    );
    let late = h.submit(1, cmd(N::Flush as u8).with_nsid(1));
    h.expect_none(1, Duration::from_millis(5));
    assert_eq!(h.admin(abort_cmd(1, late)).dw0 & 1, 0);
    let e = h.wait(1);
    assert_eq!(e.cid, late);
    assert!(st(&e).is_generic(G::AbortRequested), "{}", st(&e));
    // Its completion dropped: it executed, so it is not aborted, and nothing is posted.
    let id = h
        .sim
        .faults()
        .drop_nth(CommandMatch::io(N::Flush as u8), 1, false);
    let lost = h.submit(1, cmd(N::Flush as u8).with_nsid(1));
    h.expect_none(1, Duration::from_millis(5));
    assert_eq!(h.sim.faults().fired_on(id), vec![(1, lost)]);
    assert_eq!(h.admin(abort_cmd(1, lost)).dw0 & 1, 1, "not aborted");
    h.expect_none(1, Duration::from_millis(5));
    let seen: Vec<_> = h
        .sim
        .faults()
        .aborts()
        .iter()
        .map(|a| (a.sqid, a.cid, a.aborted))
        .collect();
    assert_eq!(
        seen,
        vec![(1, held, true), (1, late, true), (1, lost, false)]
    );
    let c = h.sim.faults().counters();
    assert_eq!((c.aborts_received, c.aborts_done), (3, 2));
}

#[test]
fn delete_sq_aborts_unfetched_commands() {
    let mut h = Host::new(small_config());
    h.enable();
    h.create_io(1, 16, 2); // one usable CQ entry: later commands stay in the SQ
    h.queues[1].as_mut().unwrap().auto_ack = false;
    let mut cids = Vec::new();
    for _ in 0..4 {
        h.cid += 1;
        let mut c = cmd(N::Flush as u8).with_nsid(1);
        c.cid = h.cid;
        cids.push(h.cid);
        h.push(1, c);
    }
    h.ring(1);
    let e = h.wait(1);
    assert_eq!(e.cid, cids[0]);
    assert!(st(&e).is_success());
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(
        h.sim.stats().commands,
        3,
        "create CQ, create SQ, one flush fetched"
    );
    let mut c = cmd(A::DeleteIoSq as u8);
    c.cdw10 = 1;
    assert!(st(&h.admin(c)).is_success());
    for &cid in &cids[1..] {
        h.ack(1);
        let e = h.wait(1);
        assert_eq!(e.cid, cid);
        assert!(st(&e).is_generic(G::AbortedSqDeletion), "{}", st(&e));
    }
    let mut c = cmd(A::DeleteIoCq as u8);
    c.cdw10 = 1;
    assert!(st(&h.admin(c)).is_success());
}

#[test]
fn dma_map_rules() {
    let mut h = Host::ready_with_io();
    let fd = create_memfd("extra", 1 << 20).unwrap();
    let err = h
        .sim
        .dma_map(DMA_IOVA + 4096, fd.as_fd(), 0, 4096)
        .unwrap_err();
    assert!(matches!(err, SimError::DmaOverlap { .. }), "{err}");
    assert!(err.to_string().contains("overlaps"));
    h.sim
        .dma_map(0x1_0000_0000, fd.as_fd(), 0, 1 << 20)
        .unwrap();
    // The new range works for I/O right away.
    let e = h.exec(1, rw(N::Read, 1, 0, 8, 0x1_0000_0000 + 8192, 0));
    assert!(st(&e).is_success(), "{}", st(&e));
    assert!(matches!(
        h.sim.dma_unmap(0x1_0000_0000, 4096),
        Err(SimError::DmaPartialUnmap { .. })
    ));
    assert!(matches!(
        h.sim.dma_unmap(0x2_0000_0000, 4096),
        Err(SimError::DmaNotMapped { .. })
    ));
    h.sim.dma_unmap(0x1_0000_0000, 1 << 20).unwrap();
    let e = h.exec(1, rw(N::Read, 1, 0, 8, 0x1_0000_0000 + 8192, 0));
    assert_generic(&e, G::DataTransferError);
    let _ = h.alloc(0);
}

#[test]
fn config_validation() {
    let bad = |c: SimConfig| SimController::start(c).unwrap_err().to_string();
    assert!(bad(SimConfig {
        namespaces: vec![NamespaceConfig {
            lba_size: 1000,
            blocks: 1
        }],
        ..SimConfig::default()
    })
    .contains("lba_size"));
    assert!(bad(SimConfig {
        mpsmin: 5,
        mpsmax: 4,
        ..SimConfig::default()
    })
    .contains("mpsmin"));
    assert!(bad(SimConfig {
        mqes: 0,
        ..SimConfig::default()
    })
    .contains("mqes"));
}

// ---------------------------------------------------------------------------------------
// Fault injection

#[test]
fn fault_fail_nth_once_and_always() {
    let mut h = Host::ready_with_io();
    let buf = Host::iova(h.alloc(PAGE));
    let status = Status::media(M::UnrecoveredReadError);
    let id = h.sim.faults().fail_nth(
        CommandMatch::io(N::Read as u8).with_nsid(1),
        3,
        status,
        false,
    );
    let mut results = Vec::new();
    for _ in 0..5 {
        results.push(st(&h.exec(1, rw(N::Read, 1, 0, 1, buf, 0))).is_success());
    }
    assert_eq!(results, [true, true, false, true, true]);
    assert_eq!(h.sim.faults().fired(id), 1);
    assert!(!h.sim.faults().is_active(id));
    // Other namespaces and opcodes are unaffected; "always" fires from the 2nd on.
    let id = h.sim.faults().fail_nth(
        CommandMatch::any().on_queue(1).with_nsid(2),
        2,
        status.with_dnr(),
        true,
    );
    assert!(st(&h.exec(1, rw(N::Read, 2, 0, 1, buf, 0))).is_success());
    assert!(st(&h.exec(1, rw(N::Read, 1, 0, 1, buf, 0))).is_success());
    for _ in 0..3 {
        let e = h.exec(1, rw(N::Write, 2, 0, 1, buf, 0));
        assert!(st(&e).is_media(M::UnrecoveredReadError) && st(&e).dnr());
    }
    assert!(h.sim.faults().remove(id));
    assert!(st(&h.exec(1, rw(N::Write, 2, 0, 1, buf, 0))).is_success());
    assert_eq!(h.sim.faults().fired(id), 3);
    assert_eq!(h.sim.faults().counters().failed, 4);
    // Admin commands can fail too.
    h.sim.faults().fail_nth(
        CommandMatch::admin(A::Identify as u8),
        1,
        Status::generic(G::InternalError),
        false,
    );
    let (s, _) = h.identify(1, 0);
    assert!(s.is_generic(G::InternalError));
}

#[test]
fn fault_drop_and_delay() {
    let mut h = Host::ready_with_io();
    let f = h.sim.faults();
    f.drop_nth(CommandMatch::io(N::Flush as u8), 1, false);
    let lost = h.submit(1, cmd(N::Flush as u8).with_nsid(1));
    h.expect_none(1, Duration::from_millis(10));
    let e = h.exec(1, cmd(N::Flush as u8).with_nsid(1));
    assert_ne!(e.cid, lost);

    h.sim.faults().delay_nth(
        CommandMatch::io(N::Flush as u8),
        1,
        Duration::from_millis(40),
        false,
    );
    let t = Instant::now();
    let slow = h.submit(1, cmd(N::Flush as u8).with_nsid(1));
    let fast = h.submit(1, cmd(N::Flush as u8).with_nsid(1));
    assert_eq!(h.wait(1).cid, fast, "the delayed completion comes last");
    let e = h.wait(1);
    assert_eq!(e.cid, slow);
    assert!(t.elapsed() >= Duration::from_millis(40));
    let c = h.sim.faults().counters();
    assert_eq!((c.dropped, c.delayed), (1, 1));
}

#[test]
fn fault_never_ready_and_cfs() {
    let mut h = Host::new(small_config());
    h.sim.faults().set_never_ready(true);
    h.start_enable(Host::cc_default(), 8);
    std::thread::sleep(Duration::from_millis(20));
    assert!(!h.csts().rdy());
    assert_eq!(h.sim.faults().counters().ready_withheld, 1);
    let resets = h.sim.stats().resets;
    h.w32(offset::CC, 0);
    // The controller must see EN=0 before EN=1 again: a 1 -> 0 -> 1 faster than it looks
    // would keep the old enable (and its admin queues). Wait for its reset.
    let start = std::time::Instant::now();
    while h.sim.stats().resets == resets {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "disable not seen"
        );
        std::thread::yield_now();
    }
    h.sim.faults().set_never_ready(false);
    h.enable();

    h.create_io(1, 16, 16);
    h.sim.faults().raise_cfs();
    h.wait_csts("CFS", |c| c.cfs());
    // Nothing is processed while fatal.
    h.submit(1, cmd(N::Flush as u8).with_nsid(1));
    h.expect_none(1, Duration::from_millis(10));
    assert!(h.sim.fatal_reason().unwrap().contains("raise_cfs"));
    assert_eq!(h.sim.faults().counters().cfs_raised, 1);
    // Reset recovers.
    h.disable();
    assert!(!h.csts().cfs());
    h.enable();
    assert!(st(&h.admin(cmd(A::KeepAlive as u8))).is_success());
}

// ---------------------------------------------------------------------------------------
// SGLs

/// A command with an SGL data pointer (PSDT 01b) holding `d`.
fn rw_sgl(opcode: N, nsid: u32, slba: u64, nlb: u32, d: SglDescriptor) -> SubmissionEntry {
    let (a, b) = d.to_dptr();
    let mut c = rw(opcode, nsid, slba, nlb, a, b);
    c.set_psdt(nvme_regs::entry::PSDT_SGL);
    c
}

/// Writes the descriptors `ds` at `at` in the host's memory.
fn put_descriptors(h: &Host, at: usize, ds: &[SglDescriptor]) {
    for (i, d) in ds.iter().enumerate() {
        h.write_mem(at + i * 16, d.as_bytes());
    }
}

#[test]
fn identify_reports_sgl_support_unless_configured_off() {
    let mut h = Host::new(small_config());
    h.enable();
    let (s, id) = h.identify(1, 0);
    assert!(s.is_success());
    let id = IdentifyController::read_from_bytes(&id).unwrap();
    assert_eq!(id.sgl_support().support(), SglSupport::Unaligned);

    let mut h = Host::new(SimConfig {
        sgl: false,
        ..small_config()
    });
    h.enable();
    let (_, id) = h.identify(1, 0);
    let id = IdentifyController::read_from_bytes(&id).unwrap();
    assert!(!id.sgl_support().supported());
    // Without SGL support a PSDT of 01b is an invalid field.
    h.create_io(1, 16, 16);
    let buf = h.alloc(PAGE);
    let d = SglDescriptor::data_block(Host::iova(buf), 512);
    assert_generic(&h.exec(1, rw_sgl(N::Read, 1, 0, 1, d)), G::InvalidField);
}

#[test]
fn data_round_trips_through_sgl_data_blocks_segments_and_last_segments() {
    let mut h = Host::ready_with_io();
    let len = 24 * 1024;
    let data = pattern(9, len);
    // Write from one Data Block at an odd dword offset.
    let wbuf = h.alloc(len + PAGE);
    h.write_mem(wbuf + 0x104, &data);
    let d = SglDescriptor::data_block(Host::iova(wbuf + 0x104), len as u32);
    let e = h.exec(1, rw_sgl(N::Write, 1, 10, (len / 512) as u32, d));
    assert!(st(&e).is_success(), "write: {}", st(&e));
    let mut back = vec![0u8; len];
    h.sim.read_backing(1, 10 * 512, &mut back).unwrap();
    assert!(back == data, "backing store differs");

    // Read into three scattered pieces: a Segment of two descriptors (a data block and a
    // Last Segment), whose list holds the other two data blocks.
    let pieces = [(0usize, 4096usize), (8192, 512), (16384, len - 4608)];
    let rbuf = h.alloc(64 * 1024);
    let lists = h.alloc(PAGE);
    let at = |p: usize| Host::iova(rbuf + p);
    put_descriptors(
        &h,
        lists,
        &[
            SglDescriptor::data_block(at(pieces[0].0), pieces[0].1 as u32),
            SglDescriptor::last_segment(Host::iova(lists + 256), 2),
        ],
    );
    put_descriptors(
        &h,
        lists + 256,
        &[
            SglDescriptor::data_block(at(pieces[1].0), pieces[1].1 as u32),
            SglDescriptor::data_block(at(pieces[2].0), pieces[2].1 as u32),
        ],
    );
    let seg = SglDescriptor::segment(Host::iova(lists), 2);
    let e = h.exec(1, rw_sgl(N::Read, 1, 10, (len / 512) as u32, seg));
    assert!(st(&e).is_success(), "read: {}", st(&e));
    let mut got = Vec::new();
    for (off, n) in pieces {
        got.extend(h.read_mem(rbuf + off, n));
    }
    assert!(got == data, "read data differs");

    // Compare through a Last Segment in the command.
    put_descriptors(
        &h,
        lists + 512,
        &[
            SglDescriptor::data_block(Host::iova(wbuf + 0x104), 4096),
            SglDescriptor::data_block(Host::iova(wbuf + 0x104 + 4096), (len - 4096) as u32),
        ],
    );
    let last = SglDescriptor::last_segment(Host::iova(lists + 512), 2);
    let e = h.exec(1, rw_sgl(N::Compare, 1, 10, (len / 512) as u32, last));
    assert!(st(&e).is_success(), "compare: {}", st(&e));
    let s = h.sim.stats();
    assert_eq!((s.writes, s.reads, s.compares), (1, 1, 1));
}

#[test]
fn malformed_sgls_get_the_specifications_statuses() {
    let mut h = Host::ready_with_io();
    let buf = h.alloc(4 * PAGE);
    let b = Host::iova(buf);
    let list = h.alloc(PAGE);
    let l = Host::iova(list);
    let read = |h: &mut Host, d: SglDescriptor| h.exec(1, rw_sgl(N::Read, 1, 0, 8, d));
    let block = |off: u64, n: u32| SglDescriptor::data_block(b + off, n);

    // Unknown type, Bit Bucket (not offered), Keyed Data Block, an Offset sub type.
    let mut odd = block(0, 4096);
    odd.id = 0x70;
    assert_generic(&read(&mut h, odd), G::SglDescriptorTypeInvalid);
    odd.id = 0x10;
    assert_generic(&read(&mut h, odd), G::SglDescriptorTypeInvalid);
    odd.id = 0x40;
    assert_generic(&read(&mut h, odd), G::SglDescriptorTypeInvalid);
    odd.id = 0x01;
    assert_generic(&read(&mut h, odd), G::SglDescriptorTypeInvalid);
    // A bad type inside a list.
    let mut bad = block(0, 4096);
    bad.id = 0xe0;
    put_descriptors(&h, list, &[bad]);
    assert_generic(
        &read(&mut h, SglDescriptor::last_segment(l, 1)),
        G::SglDescriptorTypeInvalid,
    );

    // Data blocks shorter and longer than the 4 KiB transfer.
    assert_generic(&read(&mut h, block(0, 4095)), G::DataSglLengthInvalid);
    assert_generic(&read(&mut h, block(0, 4097)), G::DataSglLengthInvalid);
    put_descriptors(&h, list, &[block(0, 2048), block(4096, 1024)]);
    assert_generic(
        &read(&mut h, SglDescriptor::last_segment(l, 2)),
        G::DataSglLengthInvalid,
    );

    // Segment descriptors: length not a multiple of 16, zero, not last in its list, inside a
    // Last Segment's list, and a Segment's list that ends without a pointer onwards.
    let mut ragged = SglDescriptor::last_segment(l, 1);
    ragged.length = 24;
    assert_generic(&read(&mut h, ragged), G::InvalidSglSegmentDescriptor);
    assert_generic(
        &read(&mut h, SglDescriptor::last_segment(l, 0)),
        G::InvalidSglSegmentDescriptor,
    );
    put_descriptors(
        &h,
        list,
        &[SglDescriptor::last_segment(l + 256, 1), block(0, 4096)],
    );
    assert_generic(
        &read(&mut h, SglDescriptor::segment(l, 2)),
        G::InvalidSglSegmentDescriptor,
    );
    put_descriptors(
        &h,
        list,
        &[block(0, 2048), SglDescriptor::last_segment(l + 256, 1)],
    );
    put_descriptors(&h, list + 256, &[block(2048, 2048)]);
    assert!(st(&read(&mut h, SglDescriptor::segment(l, 2))).is_success());
    assert_generic(
        &read(&mut h, SglDescriptor::last_segment(l, 2)),
        G::InvalidSglSegmentDescriptor,
    );
    put_descriptors(&h, list, &[block(0, 4096)]);
    assert_generic(
        &read(&mut h, SglDescriptor::segment(l, 1)),
        G::InvalidSglSegmentDescriptor,
    );

    // A Segment that points to itself forever: too many descriptors.
    put_descriptors(&h, list, &[SglDescriptor::segment(l, 1)]);
    assert_generic(
        &read(&mut h, SglDescriptor::segment(l, 1)),
        G::InvalidSglCount,
    );

    // A data block or a list at an IOVA that is not mapped.
    assert_generic(
        &read(&mut h, SglDescriptor::data_block(0x4000, 4096)),
        G::DataTransferError,
    );
    assert_generic(
        &read(&mut h, SglDescriptor::last_segment(0x4000, 1)),
        G::DataTransferError,
    );
    // Nothing reached the namespace: the queue still works.
    assert!(st(&read(&mut h, block(0, 4096))).is_success());
}

#[test]
fn an_interrupt_enabled_cq_signals_its_vector_s_eventfd() {
    use nix::sys::eventfd::{EfdFlags, EventFd};
    let mut h = Host::new(small_config());
    h.enable();
    let efd = EventFd::from_flags(EfdFlags::EFD_NONBLOCK).unwrap();
    h.sim.set_interrupt(3, Some(efd.as_fd())).unwrap();
    h.create_io_on(1, 16, 16, Some(3));
    h.create_io(2, 16, 16);
    let buf = h.alloc(4096);
    let e = h.exec(2, rw(N::Read, 1, 0, 8, Host::iova(buf), 0));
    assert!(st(&e).is_success());
    assert!(
        efd.read().is_err(),
        "a queue without interrupts signalled the eventfd"
    );
    for _ in 0..3 {
        let e = h.exec(1, rw(N::Read, 1, 0, 8, Host::iova(buf), 0));
        assert!(st(&e).is_success());
    }
    assert_eq!(efd.read().unwrap(), 3, "one signal per posted completion");
    assert_eq!(h.sim.interrupts_signalled(), 3);
    h.sim.set_interrupt(3, None).unwrap();
    let e = h.exec(1, rw(N::Read, 1, 0, 8, Host::iova(buf), 0));
    assert!(st(&e).is_success());
    assert!(efd.read().is_err(), "a cleared vector still signalled");
}

#[test]
fn a_cq_on_a_vector_the_controller_lacks_is_refused() {
    let mut h = Host::new(SimConfig {
        interrupt_vectors: 4,
        ..small_config()
    });
    h.enable();
    let cq = h.alloc(4096);
    let mut c = Host::create_cq_cmd(1, 16, Host::iova(cq));
    c.cdw11 |= 2 | 4 << 16;
    let e = h.admin(c);
    assert_eq!(
        st(&e),
        Status::command_specific(Cs::InvalidInterruptVector).with_dnr()
    );
    c.cdw11 = 1 | 2 | 3 << 16;
    assert!(st(&h.admin(c)).is_success(), "vector 3 of 4 exists");
    assert!(h.sim.set_interrupt(4, None).is_err());
    assert!(SimConfig {
        interrupt_vectors: 2049,
        ..SimConfig::default()
    }
    .validate()
    .is_err());
}

// ---------------------------------------------------------------------------------------
// Format NVM, Device Self-test, Namespace Management and Attachment

/// Runs an admin command whose 4096 bytes of data come from the host.
fn admin_write(h: &mut Host, mut c: SubmissionEntry, data: &[u8; 4096]) -> CompletionEntry {
    let buf = h.alloc(4096);
    h.write_mem(buf, data);
    c.prp1 = Host::iova(buf);
    h.admin(c)
}

fn self_test_log(h: &mut Host) -> nvme_regs::log::SelfTestLog {
    let (s, d) = h.get_log(lid::SELF_TEST, 564 / 4, 0);
    assert!(s.is_success(), "{s}");
    nvme_regs::log::SelfTestLog::read_from_bytes(&d).unwrap()
}

#[test]
fn format_changes_the_lba_format_and_erases() {
    use nvme_regs::opcode::format_nvm_cdw10;
    let mut h = Host::new(small_config());
    h.enable();
    let (_, d) = h.identify(1, 0);
    let id = IdentifyController::read_from_bytes(&d).unwrap();
    assert!(id.oacs().contains(nvme_regs::identify::Oacs::FORMAT_NVM));
    h.sim.write_backing(1, 4096, &[0xa5; 512]).unwrap();
    let mut c = cmd(A::FormatNvm as u8);
    c.nsid = 1;
    c.cdw10 = format_nvm_cdw10(1, false, 0, false, 1);
    assert!(st(&h.admin(c)).is_success());
    let (_, d) = h.identify(0, 1);
    let ns = IdentifyNamespace::read_from_bytes(&d).unwrap();
    assert_eq!((ns.block_size(), ns.nsze, ns.flbas), (4096, 2048, 1));
    assert_eq!(h.sim.namespace_data(1).unwrap().lba_size(), 4096);
    let mut b = [0xffu8; 512];
    h.sim.read_backing(1, 4096, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 0), "format erased the data");
    // Unknown format, protection information, crypto erase, inactive namespace.
    for (lbaf, pi, ses, nsid) in [(2, 0, 0, 1), (0, 1, 0, 1), (0, 0, 2, 1), (0, 0, 0, 3)] {
        let mut c = cmd(A::FormatNvm as u8);
        c.nsid = nsid;
        c.cdw10 = format_nvm_cdw10(lbaf, false, pi, false, ses);
        assert!(
            !st(&h.admin(c)).is_success(),
            "lbaf {lbaf} pi {pi} ses {ses} nsid {nsid}"
        );
    }
    let mut c = cmd(A::FormatNvm as u8);
    c.nsid = 1;
    c.cdw10 = 2;
    assert_cs(&h.admin(c), Cs::InvalidFormat);
}

#[test]
fn device_self_test_runs_logs_and_aborts() {
    use nvme_regs::log::self_test;
    let mut h = Host::new(small_config());
    h.enable();
    let log = self_test_log(&mut h);
    assert_eq!(log.current_operation, 0);
    assert!(log
        .results
        .iter()
        .all(|r| r.result() == self_test::RESULT_NOT_USED));
    let start = |h: &mut Host, code: u32, nsid: u32| {
        let mut c = cmd(A::DeviceSelfTest as u8);
        c.nsid = nsid;
        c.cdw10 = code;
        h.admin(c)
    };
    assert!(st(&start(&mut h, 1, 1)).is_success());
    assert_eq!(self_test_log(&mut h).current_operation, 1);
    assert_cs(&start(&mut h, 2, 0), Cs::SelfTestInProgress);
    // The short test completes on its own.
    let log = loop {
        let log = self_test_log(&mut h);
        if log.current_operation == 0 {
            break log;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(log.results[0].code(), self_test::SHORT);
    assert_eq!(log.results[0].result(), self_test::RESULT_OK);
    assert_eq!(log.results[0].nsid(), 1);
    // An extended test aborted by code Fh.
    assert!(st(&start(&mut h, 2, 0xffff_ffff)).is_success());
    assert!(st(&start(&mut h, 0xf, 0)).is_success());
    let log = self_test_log(&mut h);
    assert_eq!(log.current_operation, 0);
    assert_eq!(log.results[0].code(), self_test::EXTENDED);
    assert_eq!(
        log.results[0].result(),
        self_test::RESULT_ABORTED_BY_COMMAND
    );
    assert_eq!(
        log.results[1].code(),
        self_test::SHORT,
        "older results move down"
    );
    assert_generic(&start(&mut h, 3, 0), G::InvalidField);
    assert_generic(&start(&mut h, 1, 7), G::InvalidNamespaceOrFormat);
}

#[test]
fn namespace_management_and_attachment() {
    use nvme_regs::opcode::{controller_list, ns_sel};
    let mut h = Host::new(small_config());
    h.enable();
    let aer = h.submit(0, cmd(A::AsyncEventRequest as u8));
    let mgmt = |sel: u32, nsid: u32| {
        let mut c = cmd(A::NamespaceManagement as u8);
        c.cdw10 = sel;
        c.nsid = nsid;
        c
    };
    let attach = |sel: u32, nsid: u32| {
        let mut c = cmd(A::NamespaceAttachment as u8);
        c.cdw10 = sel;
        c.nsid = nsid;
        c
    };
    let mine = controller_list(&[1]);
    // Without Namespace Attribute Notices asked for (AEC bit 8), a change sends none.
    assert!(st(&admin_write(&mut h, attach(ns_sel::DETACH, 2), &mine)).is_success());
    h.expect_none(0, std::time::Duration::from_millis(50));
    let (_, d) = h.get_log(lid::CHANGED_NAMESPACES, 1024, 0);
    assert_eq!(
        &d[..8],
        &[2, 0, 0, 0, 0, 0, 0, 0],
        "the list is kept all the same"
    );
    assert!(st(&admin_write(&mut h, attach(ns_sel::ATTACH, 2), &mine)).is_success());
    let (_, d) = h.get_log(lid::CHANGED_NAMESPACES, 1024, 0);
    assert_eq!(&d[..8], &[2, 0, 0, 0, 0, 0, 0, 0]);
    let (_, id) = h.identify(1, 0);
    let oaes = IdentifyController::read_from_bytes(&id).unwrap().oaes;
    assert_eq!(
        oaes & 1 << 8,
        1 << 8,
        "OAES reports Namespace Attribute Notices"
    );
    assert!(st(&h.set_feature(fid::ASYNC_EVENT_CONFIG, 0x1ff)).is_success());
    // Detach namespace 2: no longer active, still allocated; a notice names it.
    assert!(st(&admin_write(&mut h, attach(ns_sel::DETACH, 2), &mine)).is_success());
    let e = h.wait(0);
    assert_eq!(e.cid, aer);
    assert_eq!(
        e.dw0 & 0xff_00ff,
        0x04_0002,
        "notice, Changed Namespace List"
    );
    let (_, d) = h.get_log(lid::CHANGED_NAMESPACES, 1024, 0);
    assert_eq!(&d[..8], &[2, 0, 0, 0, 0, 0, 0, 0]);
    let (_, d) = h.get_log(lid::CHANGED_NAMESPACES, 1024, 0);
    assert!(d.iter().all(|&b| b == 0), "reading the log cleared it");
    let (_, d) = h.identify(2, 0);
    assert_eq!(
        NamespaceList::read_from_bytes(&d)
            .unwrap()
            .iter()
            .collect::<Vec<_>>(),
        vec![1]
    );
    let (_, d) = h.identify(0x10, 0);
    assert_eq!(
        NamespaceList::read_from_bytes(&d)
            .unwrap()
            .iter()
            .collect::<Vec<_>>(),
        vec![1, 2]
    );
    let (_, d) = h.identify(0, 2);
    assert!(
        d.iter().all(|&b| b == 0),
        "an inactive namespace identifies as zeroes"
    );
    assert_cs(
        &admin_write(&mut h, attach(ns_sel::DETACH, 2), &mine),
        Cs::NamespaceNotAttached,
    );
    assert_cs(
        &admin_write(&mut h, attach(ns_sel::ATTACH, 2), &controller_list(&[5])),
        Cs::ControllerListInvalid,
    );
    let e = h.admin(mgmt(ns_sel::DELETE, 2));
    assert!(st(&e).is_success());
    // No NSID left free but 2: a namespace larger than its 8 MiB does not fit.
    let mut idns = [0u8; 4096];
    idns[..8].copy_from_slice(&4096u64.to_le_bytes());
    idns[8..16].copy_from_slice(&4096u64.to_le_bytes());
    idns[26] = 1;
    assert_cs(
        &admin_write(&mut h, mgmt(ns_sel::CREATE, 0), &idns),
        Cs::NamespaceInsufficientCapacity,
    );
    idns[..8].copy_from_slice(&1024u64.to_le_bytes());
    idns[8..16].copy_from_slice(&1024u64.to_le_bytes());
    let e = admin_write(&mut h, mgmt(ns_sel::CREATE, 0), &idns);
    assert!(st(&e).is_success(), "{}", st(&e));
    assert_eq!(e.dw0, 2, "created in the free NSID");
    assert_cs(
        &admin_write(&mut h, mgmt(ns_sel::CREATE, 0), &idns),
        Cs::NamespaceIdUnavailable,
    );
    assert!(st(&admin_write(&mut h, attach(ns_sel::ATTACH, 2), &mine)).is_success());
    let (_, d) = h.identify(0, 2);
    let ns = IdentifyNamespace::read_from_bytes(&d).unwrap();
    assert_eq!((ns.nsze, ns.block_size()), (1024, 4096));
    let (_, d) = h.identify(0x12, 2);
    assert_eq!(&d[..4], &[1, 0, 1, 0], "attached to controller 1");
    assert_cs(
        &admin_write(&mut h, attach(ns_sel::ATTACH, 2), &mine),
        Cs::NamespaceAlreadyAttached,
    );
    let (_, d) = h.identify(1, 0);
    let id = IdentifyController::read_from_bytes(&d).unwrap();
    assert_eq!(u128::from_le_bytes(id.unvmcap), 0);
    assert_eq!(id.total_capacity(), 16 << 20);
}
