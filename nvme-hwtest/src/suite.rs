//! The tests, in order. Each prints one line; a failure does not stop the others (except
//! that nothing runs without an attached controller).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nvme_host_linux::nvme_core::Command;
use nvme_host_linux::regs::features::FeatureSelect;
use nvme_host_linux::regs::status::{GenericStatus, MediaErrorStatus};
use nvme_host_linux::vfio::VfioTransport;
use nvme_host_linux::{
    AttachOptions, Controller, DataPointer, DmaBuffer, Error, IoQueuePair, Namespace, QueueOptions,
    Transport, TransportId,
};

use crate::Config;
use nvme_host_linux::testkit::pattern;

type R = Result<(), String>;

/// Converts driver errors to messages with context.
trait Ctx<T> {
    fn ctx(self, what: &str) -> Result<T, String>;
}
impl<T> Ctx<T> for nvme_host_linux::Result<T> {
    fn ctx(self, what: &str) -> Result<T, String> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}

const T: Duration = Duration::from_secs(30);

struct Suite<'a> {
    cfg: &'a Config,
    ctrl: Option<Controller>,
    transport: Option<Arc<VfioTransport>>,
    passed: usize,
    failed: usize,
    skipped: usize,
    /// (nsid, lba, blocks, seed) written by the integrity test, re-read after re-attach.
    persisted: Vec<(u32, u64, u64, u64)>,
}

impl<'a> Suite<'a> {
    fn test(&mut self, name: &str, f: impl FnOnce(&mut Suite<'a>) -> R) {
        let start = Instant::now();
        let r = catch_unwind(AssertUnwindSafe(|| f(self))).unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            Err(format!("panicked: {msg}"))
        });
        let ms = start.elapsed().as_millis();
        match r {
            Ok(()) => {
                self.passed += 1;
                println!("PASS {name} ({ms} ms)");
            }
            Err(e) if e.starts_with("SKIP ") => {
                self.skipped += 1;
                println!("SKIP {name}: {}", &e[5..]);
            }
            Err(e) => {
                self.failed += 1;
                println!("FAIL {name}: {e}");
            }
        }
    }

    fn ctrl(&self) -> Result<&Controller, String> {
        self.ctrl
            .as_ref()
            .ok_or_else(|| "SKIP no controller attached".to_string())
    }

    /// Namespaces the writing tests may use.
    fn write_namespaces(&self) -> Result<Vec<Namespace>, String> {
        let ctrl = self.ctrl()?;
        self.cfg
            .write_ns
            .iter()
            .map(|&n| ctrl.namespace(n).cloned().ctx(&format!("--write-ns {n}")))
            .collect()
    }
}

fn skip_unless_write(cfg: &Config) -> R {
    if cfg.write_ns.is_empty() {
        return Err(
            "SKIP read-only run (pass --write-ns N to allow writing tests on namespace N)".into(),
        );
    }
    Ok(())
}

fn trid(addr: &nvme_host_linux::PciAddress) -> String {
    format!("trtype:PCIe traddr:{addr}")
}

/// Runs the suite; `true` when nothing failed.
pub fn run(cfg: &Config) -> bool {
    let mut s = Suite {
        cfg,
        ctrl: None,
        transport: None,
        passed: 0,
        failed: 0,
        skipped: 0,
        persisted: Vec::new(),
    };
    let start = Instant::now();
    s.test("attach", attach);
    s.test("identify", identify);
    s.test("iova-ranges", iova_ranges);
    s.test("admin-logs-and-features", admin_logs);
    s.test("read-consistency", read_consistency);
    s.test("io-integrity", io_integrity);
    s.test("write-zeroes", write_zeroes);
    s.test("deallocate", deallocate);
    s.test("flush", flush);
    s.test("compare", compare);
    s.test("multi-queue-threads", multi_queue);
    s.test("error-lba-out-of-range", error_lba_out_of_range);
    s.test("error-invalid-namespace", error_invalid_namespace);
    s.test("error-admin-status", error_admin);
    s.test("detach-reattach", detach_reattach);
    if cfg.manifest.is_some() {
        s.test("readback-prepare", readback_prepare);
    }
    // Detach before the summary: the caller may rebind the device right after.
    s.ctrl = None;
    s.transport = None;
    if cfg.multi_process {
        multi_process(&mut s);
    }
    println!(
        "HWTEST {}SUMMARY passed={} failed={} skipped={} time_ms={}",
        // A suite over another transport has a summary line of its own.
        if cfg.trid.is_some() { "TRID " } else { "" },
        s.passed,
        s.failed,
        s.skipped,
        start.elapsed().as_millis()
    );
    s.failed == 0
}

/// The multi-process scenarios (the single-process controller is detached by now).
fn multi_process(s: &mut Suite) {
    let mut mp = match crate::mp::Mp::new(s.cfg) {
        Ok(m) => m,
        Err(e) => return s.test("mp-setup", |_| Err(e)),
    };
    s.test("mp-primary-io", |_| mp.primary_io());
    s.test("mp-secondary-same-traddr-io-admin", |_| {
        mp.secondary_io_admin()
    });
    s.test("mp-refuse-other-controller", |_| mp.refuse_mismatch());
    s.test("mp-attach-detach-cycles", |_| mp.attach_detach_cycles());
    s.test("mp-kill-secondary", |_| mp.kill_secondary());
    s.test("mp-data-across-processes", |_| mp.data_across_processes());
    s.test("mp-interrupts-in-two-processes", |_| {
        mp.interrupts_in_two_processes()
    });
    s.test("mp-interrupt-wait-sleeps", |_| mp.interrupt_wait_sleeps());
    s.test("mp-leases", |_| mp.leases());
    s.test("mp-kill-primary", |_| mp.kill_primary());
    s.test("mp-last-member-out", |_| mp.last_member_out());
    s.test("mp-resets-under-io", |_| mp.resets_under_io());
    s.test("mp-function-resets-under-io", |_| {
        mp.function_resets_under_io()
    });
    if s.cfg.tools.is_some() {
        s.test("tools-nvmectl-beside-perf", |_| {
            mp.tools_nvmectl_beside_perf()
        });
        s.test("tools-nvmectl-reset-beside-perf", |_| {
            mp.tools_reset_beside_perf()
        });
        s.test("tools-nvmectl-format-scratch", |_| {
            mp.tools_format_scratch()
        });
    }
}

/// Attaches through the public path to the controller `--trid` names (not VFIO).
fn attach_trid(s: &mut Suite, trid: &str) -> R {
    let ctrl = Controller::attach(trid).ctx(&format!("attach {trid}"))?;
    let info = ctrl.info();
    println!(
        "  {}: NVMe {} MQES {}, max transfer {} B, I/O queues {}/{}",
        ctrl.name(),
        info.vs,
        info.cap.max_queue_entries(),
        ctrl.max_transfer(),
        info.io_queues.sq,
        info.io_queues.cq
    );
    s.ctrl = Some(ctrl);
    Ok(())
}

fn attach(s: &mut Suite) -> R {
    if let Some(trid) = &s.cfg.trid {
        return attach_trid(s, trid);
    }
    let addr = match s.cfg.device {
        Some(a) => a,
        None => {
            let found = nvme_host_linux::vfio::probe().ctx("probe")?;
            println!("  NVMe functions bound to vfio-pci: {found:?}");
            match found.first() {
                Some(a) => *a,
                // The driver's own message for this case says what to do.
                None => {
                    return Controller::attach("trtype:PCIe")
                        .map(|_| ())
                        .ctx("attach trtype:PCIe")
                }
            }
        }
    };
    let t = Arc::new(VfioTransport::open(&addr).ctx(&format!("open {addr}"))?);
    println!(
        "  VFIO: {addr} opened; function reset (on attach and detach) {}",
        if t.reset_supported() {
            "supported"
        } else {
            "not supported: CC.EN=0 reset only"
        }
    );
    let dynt: Arc<dyn Transport> = t.clone();
    let id = TransportId::parse(&trid(&addr)).map_err(|e| e.to_string())?;
    let ctrl = Controller::attach_transport(dynt, id, &AttachOptions::default())
        .ctx(&format!("attach {addr}"))?;
    let (v, d) = ctrl.pci_id();
    let info = ctrl.info();
    println!(
        "  {addr}: {v:04x}:{d:04x} NVMe {} MQES {} DSTRD {} CAP.TO {} ms, page {} B, max transfer {} B, I/O queues {}/{}",
        info.vs,
        info.cap.max_queue_entries(),
        info.cap.dstrd(),
        info.cap.timeout_ms(),
        info.page_size,
        ctrl.max_transfer(),
        info.io_queues.sq,
        info.io_queues.cq
    );
    if ctrl.status_register().cfs() || !ctrl.status_register().rdy() {
        return Err(format!(
            "controller not ready after attach: {:?}",
            ctrl.status_register()
        ));
    }
    s.ctrl = Some(ctrl);
    s.transport = Some(t);
    Ok(())
}

fn identify(s: &mut Suite) -> R {
    let ctrl = s.ctrl()?;
    let id = ctrl.identify();
    println!(
        "  serial '{}' model '{}' firmware '{}' vid {:04x} ssvid {:04x} mdts {} nn {}",
        id.serial(),
        id.model(),
        id.firmware(),
        id.vid,
        id.ssvid,
        id.mdts,
        id.nn
    );
    for ns in ctrl.namespaces() {
        println!(
            "  namespace {}: {} blocks of {} B ({} MiB)",
            ns.id(),
            ns.blocks(),
            ns.block_size(),
            ns.size_bytes() >> 20
        );
    }
    if let Some(want) = &s.cfg.expect_serial {
        if id.serial() != want {
            return Err(format!("serial is '{}', expected '{want}'", id.serial()));
        }
    }
    for &(nsid, bs, blocks) in &s.cfg.expect_ns {
        let ns = ctrl.namespace(nsid).ctx("expected namespace")?;
        if ns.block_size() != bs || ns.blocks() != blocks {
            return Err(format!(
                "namespace {nsid}: {} blocks of {} B, expected {blocks} blocks of {bs} B",
                ns.blocks(),
                ns.block_size()
            ));
        }
    }
    // A fresh Identify agrees with the one read at attach.
    let fresh = ctrl.identify_controller().ctx("Identify Controller")?;
    if fresh.serial() != id.serial() || fresh.nn != id.nn {
        return Err("a fresh Identify Controller differs from the one read at attach".into());
    }
    for ns in ctrl.namespaces() {
        let n = ctrl.identify_namespace(ns.id()).ctx("Identify Namespace")?;
        if n.nsze != ns.blocks() {
            return Err(format!(
                "namespace {}: fresh NSZE {} != {}",
                ns.id(),
                n.nsze,
                ns.blocks()
            ));
        }
    }
    if ctrl.namespaces().is_empty() {
        return Err("the controller reports no active namespace".into());
    }
    Ok(())
}

fn iova_ranges(s: &mut Suite) -> R {
    let ctrl = s.ctrl()?;
    let t = s
        .transport
        .as_ref()
        .ok_or("SKIP not a VFIO transport: no IOVA ranges")?;
    let (ranges, from_kernel) = t.iova_ranges();
    println!(
        "  IOVA ranges ({}): {}",
        if from_kernel {
            "reported by VFIO_IOMMU_GET_INFO"
        } else {
            "fallback: kernel reported none"
        },
        ranges
            .iter()
            .map(|(a, b)| format!("{a:#x}-{b:#x}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    // Buffers land inside the reported ranges (with a 39-bit IOMMU, far below the process's
    // own addresses).
    let bufs: Vec<DmaBuffer> = (0..4)
        .map(|i| ctrl.alloc_dma(4096 << i))
        .collect::<Result<_, _>>()
        .ctx("alloc_dma")?;
    for b in &bufs {
        let (start, end) = (b.iova(), b.iova() + b.len() as u64 - 1);
        if !ranges.iter().any(|&(a, z)| a <= start && end <= z) {
            return Err(format!(
                "buffer at IOVA {start:#x}-{end:#x} is outside the usable ranges"
            ));
        }
    }
    println!(
        "  buffer IOVAs: {}",
        bufs.iter()
            .map(|b| format!("{:#x}", b.iova()))
            .collect::<Vec<_>>()
            .join(" ")
    );
    if !from_kernel {
        println!("  note: the kernel did not report IOVA ranges; using the 39-bit fallback");
    }
    Ok(())
}

fn admin_logs(s: &mut Suite) -> R {
    let ctrl = s.ctrl()?;
    let smart = ctrl.smart_log().ctx("SMART log")?;
    println!(
        "  SMART: temperature {} K, host read commands {}",
        smart.temperature_kelvin(),
        smart.host_read_commands()
    );
    ctrl.error_log(4).ctx("error log")?;
    ctrl.firmware_log().ctx("firmware slot log")?;
    let nq = ctrl
        .get_features(
            nvme_host_linux::regs::features::fid::NUMBER_OF_QUEUES,
            FeatureSelect::Current,
            0,
            0,
        )
        .ctx("Get Features")?;
    println!(
        "  Number of Queues: {} SQ / {} CQ (0's based {nq:#x})",
        (nq & 0xffff) + 1,
        (nq >> 16) + 1
    );
    Ok(())
}

fn qp(ctrl: &Controller, entries: u32) -> Result<IoQueuePair, String> {
    ctrl.alloc_io_queue(QueueOptions::new(entries))
        .ctx("create I/O queue pair")
}

/// Reading one range in one command and in pieces (misaligned buffers, split transfers)
/// gives the same data. Read-only: runs on every namespace.
fn read_consistency(s: &mut Suite) -> R {
    let ctrl = s.ctrl()?.clone();
    let mut q = qp(&ctrl, 256)?;
    let len = (ctrl.max_transfer() * 2 + 8192).min(4 << 20);
    let mut big = ctrl.alloc_dma(len + 8192).ctx("alloc")?;
    let mut small = ctrl.alloc_dma(len + 8192).ctx("alloc")?;
    for ns in ctrl.namespaces().to_vec() {
        let bs = ns.block_size() as usize;
        let n = (len / bs).min(ns.blocks() as usize) * bs;
        q.read_sync(ns.id(), 0, big.slice(4..4 + n).ctx("slice")?)
            .ctx("read whole")?;
        let mut off = 0;
        let mut piece = bs;
        while off < n {
            let p = piece.min(n - off);
            q.read_sync(
                ns.id(),
                (off / bs) as u64,
                small.slice(512 + off..512 + off + p).ctx("slice")?,
            )
            .ctx("read piece")?;
            off += p;
            piece = (piece * 3).min(ctrl.max_transfer() + bs);
        }
        if big.as_slice()[4..4 + n] != small.as_slice()[512..512 + n] {
            return Err(format!(
                "namespace {}: one large read and several small reads of {n} bytes differ",
                ns.id()
            ));
        }
    }
    Ok(())
}

fn io_integrity(s: &mut Suite) -> R {
    skip_unless_write(s.cfg)?;
    let ctrl = s.ctrl()?.clone();
    let mut q = qp(&ctrl, 256)?;
    // The same cases with PRPs and with SGLs (QEMU's controller reports SGL support; a
    // controller that does not gets the PRP pass only, and says so).
    for dp in [DataPointer::Prp, DataPointer::Sgl] {
        if let Err(e) = q.set_data_pointer(dp) {
            println!("  {dp:?}: not run: {e}");
            continue;
        }
        io_integrity_with(s, &ctrl, &mut q, dp)?;
    }
    Ok(())
}

/// The write/read/verify cases of [`io_integrity`] through `q`, whose commands point to
/// their data with `dp`.
fn io_integrity_with(s: &mut Suite, ctrl: &Controller, q: &mut IoQueuePair, dp: DataPointer) -> R {
    let mdts = ctrl.max_transfer();
    const MAX: usize = 3 << 20;
    let mut w = ctrl.alloc_dma(MAX + 16384).ctx("alloc")?;
    let mut r = ctrl.alloc_dma(MAX + 16384).ctx("alloc")?;
    let offsets = [0usize, 4, 512, 4096 - 4, 4096 + 2048];
    let mut cases = 0;
    for ns in s.write_namespaces()? {
        let bs = ns.block_size() as usize;
        let mut sizes: Vec<usize> = [
            bs,
            2 * bs,
            4096,
            8192 + bs,
            64 << 10,
            mdts - bs,
            mdts,
            mdts + bs,
            2 * mdts + 4096,
            MAX,
        ]
        .iter()
        .map(|&x| x.max(bs).next_multiple_of(bs))
        .filter(|&x| x <= MAX)
        .collect();
        sizes.sort_unstable();
        sizes.dedup();
        let limit = ns.blocks() / 2;
        let mut lba = 0u64;
        for (i, &size) in sizes.iter().enumerate() {
            for (j, &off) in offsets.iter().enumerate() {
                let blocks = (size / bs) as u64;
                if lba + blocks > limit {
                    lba = 0;
                }
                let seed = (ns.id() as u64) << 32 | (i * 16 + j) as u64;
                pattern::fill(seed, lba, bs, &mut w.as_mut_slice()[off..off + size]);
                q.write_sync(ns.id(), lba, w.slice(off..off + size).ctx("slice")?)
                    .ctx(&format!(
                        "{dp:?}: write ns {} lba {lba} size {size} offset {off}",
                        ns.id()
                    ))?;
                let roff = offsets[(j + 2) % offsets.len()];
                r.as_mut_slice()[roff..roff + size].fill(0xee);
                q.read_sync(ns.id(), lba, r.slice(roff..roff + size).ctx("slice")?)
                    .ctx(&format!(
                        "{dp:?}: read ns {} lba {lba} size {size} offset {roff}",
                        ns.id()
                    ))?;
                pattern::check(seed, lba, bs, &r.as_slice()[roff..roff + size]).map_err(|e| {
                    format!(
                        "{dp:?}: ns {} size {size} write offset {off} read offset {roff}: {e}",
                        ns.id()
                    )
                })?;
                // The same data in either pass: the first one records it.
                if i == 0 && j == 0 && dp == DataPointer::Prp {
                    s.persisted.push((ns.id(), lba, blocks, seed));
                }
                lba += blocks;
                cases += 1;
            }
        }
        println!(
            "  {dp:?}: namespace {}: sizes {sizes:?} (MDTS {mdts} B) at buffer offsets {offsets:?}",
            ns.id()
        );
    }
    println!("  {dp:?}: {cases} write/read/verify cases");
    Ok(())
}

fn sync_op(
    q: &mut IoQueuePair,
    submit: impl FnOnce(&mut IoQueuePair) -> nvme_host_linux::Result<()>,
) -> nvme_host_linux::Result<()> {
    submit(q)?;
    let mut res = Ok(());
    q.drain(T, |_, r| {
        if res.is_ok() {
            res = r
        }
    })?;
    res
}

fn write_zeroes(s: &mut Suite) -> R {
    skip_unless_write(s.cfg)?;
    let ctrl = s.ctrl()?.clone();
    let mut q = qp(&ctrl, 64)?;
    for ns in s.write_namespaces()? {
        let bs = ns.block_size() as usize;
        let lba = ns.blocks() / 2;
        let n = 64usize;
        let mut b = ctrl.alloc_dma(n * bs).ctx("alloc")?;
        pattern::fill(9, lba, bs, b.as_mut_slice());
        q.write_sync(ns.id(), lba, &mut b).ctx("write")?;
        sync_op(&mut q, |q| q.write_zeroes(ns.id(), lba + 8, 16, 1)).ctx("Write Zeroes")?;
        // A large one too (no data transfer, so MDTS does not limit it).
        let big = (ns.blocks() / 16).min(65536) as u32;
        sync_op(&mut q, |q| q.write_zeroes(ns.id(), lba + n as u64, big, 2))
            .ctx("large Write Zeroes")?;
        b.as_mut_slice().fill(0xee);
        q.read_sync(ns.id(), lba, &mut b).ctx("read")?;
        let d = b.as_slice();
        pattern::check(9, lba, bs, &d[..8 * bs])?;
        if let Some(i) = d[8 * bs..24 * bs].iter().position(|&x| x != 0) {
            return Err(format!(
                "ns {}: byte {i} of the zeroed range is {:#x}",
                ns.id(),
                d[8 * bs + i]
            ));
        }
        pattern::check(9, lba + 24, bs, &d[24 * bs..])?;
        println!(
            "  namespace {}: 16 blocks zeroed between patterns; {big} blocks in one command",
            ns.id()
        );
    }
    Ok(())
}

fn deallocate(s: &mut Suite) -> R {
    skip_unless_write(s.cfg)?;
    let ctrl = s.ctrl()?.clone();
    let mut q = qp(&ctrl, 64)?;
    for ns in s.write_namespaces()? {
        let bs = ns.block_size() as usize;
        let lba = ns.blocks() / 8 * 5;
        let mut b = ctrl.alloc_dma(32 * bs).ctx("alloc")?;
        pattern::fill(11, lba, bs, b.as_mut_slice());
        q.write_sync(ns.id(), lba, &mut b).ctx("write")?;
        sync_op(&mut q, |q| q.deallocate(ns.id(), lba, 32, 1))
            .ctx("Dataset Management (deallocate)")?;
        b.as_mut_slice().fill(0xee);
        q.read_sync(ns.id(), lba, &mut b)
            .ctx("read after deallocate")?;
        let dlfeat = ns.identify().dlfeat;
        let zeroes = b.as_slice().iter().all(|&x| x == 0);
        println!(
            "  namespace {}: DLFEAT {dlfeat:#x}; deallocated blocks read as {}",
            ns.id(),
            if zeroes { "zeroes" } else { "data" }
        );
        if dlfeat & 0x7 == 1 && !zeroes {
            return Err(format!(
                "ns {}: DLFEAT says deallocated blocks read as zeroes, but they do not",
                ns.id()
            ));
        }
    }
    Ok(())
}

fn flush(s: &mut Suite) -> R {
    let ctrl = s.ctrl()?.clone();
    let mut q = qp(&ctrl, 16)?;
    for ns in ctrl.namespaces().to_vec() {
        sync_op(&mut q, |q| q.flush(ns.id(), 1)).ctx(&format!("Flush ns {}", ns.id()))?;
    }
    let vwc = ctrl.identify().vwc;
    println!("  VWC {vwc:#x}");
    Ok(())
}

/// Compare is non-destructive: read blocks, compare them with what was read (match), then
/// with one byte changed (Compare Failure).
fn compare(s: &mut Suite) -> R {
    let ctrl = s.ctrl()?.clone();
    let oncs = ctrl.identify().oncs();
    if !oncs.contains(nvme_host_linux::regs::identify::Oncs::COMPARE) {
        return Err(format!(
            "SKIP the controller does not support Compare (ONCS {:#x}, bit 0 clear)",
            oncs.bits()
        ));
    }
    let mut q = qp(&ctrl, 64)?;
    let ns_list: Vec<Namespace> = match s.write_namespaces()? {
        v if v.is_empty() => ctrl.namespaces().to_vec(),
        v => v,
    };
    for ns in ns_list {
        let bs = ns.block_size() as usize;
        let len = ((ctrl.max_transfer() + bs) / bs).min(ns.blocks() as usize) * bs;
        let lba = ns.blocks() / 3;
        let lba = lba.min(ns.blocks() - (len / bs) as u64);
        let mut b = ctrl.alloc_dma(len).ctx("alloc")?;
        q.read_sync(ns.id(), lba, &mut b).ctx("read")?;
        q.compare_sync(ns.id(), lba, &mut b).ctx(&format!(
            "Compare of {len} bytes (split at MDTS) with matching data"
        ))?;
        let last = len - 1;
        b.as_mut_slice()[last] ^= 0x5a;
        match q.compare_sync(ns.id(), lba, &mut b) {
            Err(Error::Nvme { status, .. })
                if status.is_media(MediaErrorStatus::CompareFailure) =>
            {
                println!("  namespace {}: miscompare reported as: {status}", ns.id())
            }
            Err(e) => return Err(format!("miscompare: expected Compare Failure, got: {e}")),
            Ok(()) => {
                return Err("miscompare: the controller reported success for different data".into())
            }
        }
    }
    Ok(())
}

fn multi_queue(s: &mut Suite) -> R {
    let ctrl = s.ctrl()?.clone();
    let threads = s.cfg.threads.min(ctrl.info().io_queues.sq as usize).max(1);
    let write = s.write_namespaces()?.into_iter().next();
    let ns = match &write {
        Some(n) => n.clone(),
        None => ctrl.namespaces()[0].clone(),
    };
    let bs = ns.block_size() as u64;
    let nsid = ns.id();
    let region = ns.blocks() / 8; // 6/8..7/8 of the namespace
    let per_thread = region / threads as u64;
    let io_blocks = (16384 / bs).max(1);
    let start = Instant::now();
    let results: Vec<Result<(u64, u64), String>> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let ctrl = ctrl.clone();
                let writing = write.is_some();
                sc.spawn(move || -> Result<(u64, u64), String> {
                    let mut q = qp(&ctrl, 64)?;
                    let base = region * 6 + per_thread * t as u64;
                    let depth = 16usize;
                    let mut bufs: Vec<DmaBuffer> = (0..depth)
                        .map(|_| ctrl.alloc_dma((io_blocks * bs) as usize))
                        .collect::<Result<_, _>>()
                        .ctx("alloc")?;
                    let ios = (per_thread / io_blocks).min(256);
                    let mut sum = 0u64;
                    for round in 0..2u64 {
                        let write_round = writing && round == 0;
                        let mut next = 0u64;
                        let mut done = 0u64;
                        // A buffer is reused only after its own I/O completed (completions
                        // come in any order): the token is the buffer's index.
                        let mut free: Vec<usize> = (0..depth).collect();
                        let mut lba_of = vec![0u64; depth];
                        let mut completed: Vec<(usize, nvme_host_linux::Result<()>)> =
                            Vec::with_capacity(depth);
                        while done < ios {
                            while next < ios {
                                let Some(bi) = free.pop() else { break };
                                let lba = base + next * io_blocks;
                                lba_of[bi] = lba;
                                let b = &mut bufs[bi];
                                let r = if write_round {
                                    pattern::fill(t as u64, lba, bs as usize, b.as_mut_slice());
                                    q.write(nsid, lba, &mut *b, bi as u64)
                                } else {
                                    q.read(nsid, lba, &mut *b, bi as u64)
                                };
                                r.ctx("submit")?;
                                next += 1;
                            }
                            q.process_completions(usize::MAX, |tok, r| {
                                completed.push((tok as usize, r))
                            });
                            for (bi, r) in completed.drain(..) {
                                done += 1;
                                r.ctx(&format!("I/O at LBA {}", lba_of[bi]))?;
                                if !write_round {
                                    let data = bufs[bi].as_slice();
                                    if writing {
                                        pattern::check(t as u64, lba_of[bi], bs as usize, data)
                                            .map_err(|e| {
                                                format!("thread {t} (queue {}): {e}", q.qid())
                                            })?;
                                    }
                                    sum = sum.wrapping_add(pattern::checksum(data));
                                }
                                free.push(bi);
                            }
                        }
                    }
                    Ok((ios * 2, sum))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|p| {
                    let msg = p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
                    Err(format!("thread panicked: {}", msg.unwrap_or_default()))
                })
            })
            .collect()
    });
    let mut total = 0;
    for (t, r) in results.into_iter().enumerate() {
        let (n, _) = r.map_err(|e| format!("thread {t}: {e}"))?;
        total += n;
    }
    println!(
        "  {threads} threads, one queue pair each, {total} I/Os of {} B at depth 16 on namespace {} ({}) in {} ms",
        io_blocks * bs,
        ns.id(),
        if write.is_some() { "write, read, verify" } else { "read-only" },
        start.elapsed().as_millis()
    );
    Ok(())
}

fn expect_status(r: nvme_host_linux::Result<()>, want: GenericStatus, what: &str) -> R {
    match r {
        Err(Error::Nvme { status, opcode, .. }) if status.is_generic(want) => {
            println!("  {what}: opcode {opcode:#04x} completed with {status}");
            Ok(())
        }
        Err(e) => Err(format!("{what}: expected {}, got: {e}", want.name())),
        Ok(()) => Err(format!("{what}: expected {}, got success", want.name())),
    }
}

fn error_lba_out_of_range(s: &mut Suite) -> R {
    let ctrl = s.ctrl()?.clone();
    let mut q = qp(&ctrl, 16)?;
    let ns = ctrl.namespaces()[0].clone();
    let bs = ns.block_size() as usize;
    let mut b = ctrl.alloc_dma(2 * bs).ctx("alloc")?;
    // The driver refuses before the device sees it.
    match q.read_sync(ns.id(), ns.blocks() - 1, &mut b) {
        Err(Error::LbaOutOfRange { .. }) => {}
        other => {
            return Err(format!(
                "driver check: expected LbaOutOfRange, got {other:?}"
            ))
        }
    }
    // The device's own answer, with a raw command that bypasses the driver's check.
    let cmd = Command::read(ns.id(), ns.blocks(), 1);
    let r = sync_op(&mut q, |q| q.submit(cmd, Some(b.slice(0..bs)?), 7));
    let what = format!("Read of LBA {} on ns {}", ns.blocks(), ns.id());
    match r {
        // Linux's NVMe target does not check the range itself: a read past the end of a
        // file-backed namespace ends in Capacity Exceeded (-ENOSPC), of a block device in
        // Internal Error (the block layer's I/O error), not LBA Out of Range.
        Err(Error::Nvme { status, opcode, .. })
            if s.cfg.trid.is_some()
                && (status.is_generic(GenericStatus::CapacityExceeded)
                    || status.is_generic(GenericStatus::InternalError)) =>
        {
            println!("  {what}: opcode {opcode:#04x} completed with {status} (the target's answer past the end)");
        }
        r => expect_status(r, GenericStatus::LbaOutOfRange, &what)?,
    }
    // The queue pair still works.
    q.read_sync(ns.id(), 0, b.slice(0..bs).ctx("slice")?)
        .ctx("read after the error")
}

fn error_invalid_namespace(s: &mut Suite) -> R {
    let ctrl = s.ctrl()?.clone();
    let mut q = qp(&ctrl, 16)?;
    let mut b = ctrl.alloc_dma(4096).ctx("alloc")?;
    let nn = ctrl.identify().nn;
    let bad = nn.saturating_add(1).min(0xffff_fffe);
    match q.read_sync(bad, 0, &mut b) {
        Err(Error::NoSuchNamespace(n)) if n == bad => {}
        other => {
            return Err(format!(
                "driver check: expected NoSuchNamespace, got {other:?}"
            ))
        }
    }
    let r = sync_op(&mut q, |q| {
        q.submit(Command::read(bad, 0, 1), Some(b.slice(0..512)?), 7)
    });
    expect_status(
        r,
        GenericStatus::InvalidNamespaceOrFormat,
        &format!("Read on namespace {bad} (NN is {nn})"),
    )?;
    q.read_sync(
        ctrl.namespaces()[0].id(),
        0,
        b.slice(0..ctrl.namespaces()[0].block_size() as usize)
            .ctx("slice")?,
    )
    .ctx("read after the error")
}

fn error_admin(s: &mut Suite) -> R {
    let ctrl = s.ctrl()?.clone();
    // Identify with a CNS value no controller implements.
    let r = ctrl
        .admin_read(Command::identify(0xfe, 0, 0), 4096)
        .map(|_| ());
    expect_status(r, GenericStatus::InvalidField, "Identify CNS 0xfe")?;
    // The admin queue still works.
    ctrl.identify_controller()
        .ctx("Identify after the error")
        .map(|_| ())
}

fn detach_reattach(s: &mut Suite) -> R {
    let ctrl = s.ctrl()?.clone();
    let name = ctrl.name();
    let serial = ctrl.identify().serial().to_string();
    let nss: Vec<(u32, u32, u64)> = ctrl
        .namespaces()
        .iter()
        .map(|n| (n.id(), n.block_size(), n.blocks()))
        .collect();
    drop(ctrl);
    s.ctrl = None;
    s.transport = None; // the last reference: shutdown, device reset, VFIO closed
    let again = match &s.cfg.trid {
        Some(t) => t.clone(),
        None => trid(&name.parse()?),
    };
    for round in 0..2 {
        let start = Instant::now();
        // The public path, as an application uses it.
        let c = Controller::attach(&again).ctx(&format!("re-attach {round}"))?;
        if c.identify().serial() != serial {
            return Err("serial changed across re-attach".into());
        }
        let now: Vec<(u32, u32, u64)> = c
            .namespaces()
            .iter()
            .map(|n| (n.id(), n.block_size(), n.blocks()))
            .collect();
        if now != nss {
            return Err(format!(
                "namespaces changed across re-attach: {nss:?} -> {now:?}"
            ));
        }
        let mut q = qp(&c, 32)?;
        for &(nsid, lba, blocks, seed) in &s.persisted {
            let bs = c.namespace(nsid).ctx("ns")?.block_size() as usize;
            let mut b = c.alloc_dma(blocks as usize * bs).ctx("alloc")?;
            q.read_sync(nsid, lba, &mut b).ctx("read")?;
            pattern::check(seed, lba, bs, b.as_slice())
                .map_err(|e| format!("data written before detach: {e}"))?;
        }
        println!(
            "  re-attach {round} in {} ms; data written before detach reads back",
            start.elapsed().as_millis()
        );
        drop(q);
        if round == 1 {
            s.ctrl = Some(c);
        }
    }
    Ok(())
}

/// Writes the read-back pattern and its manifest; the kernel driver checks it later.
fn readback_prepare(s: &mut Suite) -> R {
    let ctrl = s.ctrl()?.clone();
    let path = s.cfg.manifest.clone().expect("only run with --manifest");
    let mut q = qp(&ctrl, 32)?;
    let mut lines = String::new();
    for ns in s.write_namespaces()? {
        let bs = ns.block_size() as usize;
        let cap = ns.blocks();
        // The first block, a range straddling MDTS in the middle, the last blocks.
        let mid_blocks = (ctrl.max_transfer() / bs + 3) as u64;
        for (lba, blocks) in [
            (0u64, 1u64),
            (cap / 3 + 1, mid_blocks.min(cap / 4)),
            (cap - 8, 8),
        ] {
            let seed = 0xbac0_0000 | ((ns.id() as u64) << 8) | (lba & 0xff);
            let mut b = ctrl.alloc_dma(blocks as usize * bs).ctx("alloc")?;
            pattern::fill(seed, lba, bs, b.as_mut_slice());
            q.write_sync(ns.id(), lba, &mut b).ctx("write")?;
            let sum = pattern::checksum(b.as_slice());
            lines.push_str(&format!(
                "{} {lba} {blocks} {bs} {seed} {sum:016x}\n",
                ns.id()
            ));
            // xtask checks the READBACK lines in QEMU's disk images too: a controller
            // reached another way (--trid) has other disks.
            println!(
                "  HWTEST {} ns={} lba={lba} blocks={blocks} bs={bs} fnv={sum:016x}",
                if s.cfg.trid.is_some() {
                    "TRID-READBACK"
                } else {
                    "READBACK"
                },
                ns.id()
            );
        }
        sync_op(&mut q, |q| q.flush(ns.id(), 1)).ctx("flush")?;
    }
    std::fs::write(&path, lines).map_err(|e| format!("writing {path}: {e}"))?;
    Ok(())
}
