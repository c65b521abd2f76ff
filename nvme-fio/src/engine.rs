//! The engine: one attachment per controller per process, shared by the job threads; per
//! job thread an I/O queue pair and the DMA memory that fio uses as its I/O buffers.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nvme_host_linux::nvme_core::SubmitError;
use nvme_host_linux::{
    AttachOptions, Controller, DmaBuffer, Error, IoQueuePair, QueueOptions, TransportKind,
};

use crate::ffi::{ddir, log, IoU, Td};
use crate::target;

/// A controller this process attached, and how many job files use it.
struct Attached {
    kind: TransportKind,
    group: Option<u32>,
    ctrl: Controller,
    users: usize,
}

/// The process's attachments; a slot's index is stable while it is in use.
static ATTACHED: Mutex<Vec<Option<Attached>>> = Mutex::new(Vec::new());

fn attachments() -> std::sync::MutexGuard<'static, Vec<Option<Attached>>> {
    ATTACHED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where a job file's I/O goes, kept in the file's `engine_pos`: bit 63 set, the
/// attachment's slot in bits 40..63, log2 of the block size in bits 32..40, the NSID below.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileTarget {
    slot: usize,
    shift: u32,
    nsid: u32,
}

impl FileTarget {
    const TAG: u64 = 1 << 63;
    fn encode(self) -> u64 {
        Self::TAG | (self.slot as u64) << 40 | (self.shift as u64) << 32 | self.nsid as u64
    }
    fn decode(v: u64) -> Option<FileTarget> {
        (v & Self::TAG != 0).then_some(FileTarget {
            slot: ((v & !Self::TAG) >> 40) as usize,
            shift: ((v >> 32) & 0xff) as u32,
            nsid: v as u32,
        })
    }
}

/// Attaches the controller of `filename` (or finds this process's attachment) and returns
/// where the file's I/O goes and the namespace's size in bytes.
fn attach_file(filename: &str, group: Option<u32>) -> Result<(FileTarget, u64), String> {
    let t = target::parse(filename)?;
    let mut all = attachments();
    let found = all.iter().position(|a| {
        a.as_ref()
            .is_some_and(|a| a.kind == t.trid.kind && a.group == group)
    });
    let slot = match found {
        Some(i) => i,
        None => {
            let opts = AttachOptions {
                group,
                ..Default::default()
            };
            let ctrl = Controller::attach_with(&t.trid, &opts)
                .map_err(|e| format!("filename '{filename}': attaching {}: {e}", t.trid))?;
            let a = Attached {
                kind: t.trid.kind.clone(),
                group,
                ctrl,
                users: 0,
            };
            match all.iter().position(Option::is_none) {
                Some(i) => {
                    all[i] = Some(a);
                    i
                }
                None => {
                    all.push(Some(a));
                    all.len() - 1
                }
            }
        }
    };
    let a = all[slot].as_mut().expect("slot in use");
    let ns = match t.nsid {
        Some(n) => a
            .ctrl
            .namespace(n)
            .map_err(|e| format!("filename '{filename}': {e}"))?,
        None => a.ctrl.namespaces().first().ok_or_else(|| {
            format!("filename '{filename}': the controller has no active namespace")
        })?,
    };
    let target = FileTarget {
        slot,
        shift: ns.block_size().trailing_zeros(),
        nsid: ns.id(),
    };
    let size = ns.size_bytes();
    a.users += 1;
    Ok((target, size))
}

/// One use of slot `slot` ended; the last one detaches.
fn release(slot: usize) {
    let gone = {
        let mut all = attachments();
        match all.get_mut(slot).and_then(Option::as_mut) {
            Some(a) => {
                a.users -= 1;
                if a.users == 0 {
                    all[slot].take()
                } else {
                    None
                }
            }
            None => None,
        }
    };
    // Detached outside the lock (shutting a controller down takes a while).
    drop(gone);
}

/// fio's `setup`: attach each file's controller, size the files. On failure the job lets
/// go of what it attached.
pub(crate) fn setup(td: Td) -> Result<(), String> {
    let r = setup_files(td);
    if r.is_err() {
        release_files(td);
    }
    r
}

fn setup_files(td: Td) -> Result<(), String> {
    if !td.use_thread() {
        return Err(format!(
            "job '{}': this engine needs thread=1 (one attachment per process, shared by \
             the job threads; fio's default forks a process per job)",
            td.name()
        ));
    }
    let group = u32::try_from(td.options().shm_id).ok();
    let files = td.files();
    // fio divides size= among the files and quietly shortens a range that runs past the end
    // of a device: refused here instead, so that a job meant for a larger namespace says so.
    let (offset, size) = td.offset_and_size();
    let per_file = size / files.len().max(1) as u64;
    for f in files {
        if FileTarget::decode(f.engine_pos()).is_some() {
            continue; // set up already
        }
        let (target, ns_size) = attach_file(&f.name(), group)?;
        f.set_engine_pos(target.encode());
        f.set_block_device_size(ns_size);
        if offset >= ns_size || offset.saturating_add(per_file) > ns_size {
            return Err(format!(
                "job '{}': offset={offset} size={per_file} reaches past the end of namespace {} \
                 of '{}' ({ns_size} bytes): lower offset= or size=",
                td.name(),
                target.nsid,
                f.name()
            ));
        }
    }
    Ok(())
}

/// A write or read that goes through a bounce buffer (fio's buffer is not DMA memory).
struct Bounce {
    io: IoU,
    buf: DmaBuffer,
    read: bool,
}

/// A job thread's state (`td->io_ops_data`).
pub(crate) struct ThreadState {
    name: String,
    ctrl: Controller,
    qp: IoQueuePair,
    /// fio's I/O buffers (`iomem_alloc`), and their address as fio sees it.
    dma: Option<DmaBuffer>,
    dma_base: usize,
    /// Completed I/Os of the last `getevents`, for `event`.
    events: Vec<IoU>,
    bounces: Vec<Bounce>,
    warned_bounce: bool,
    /// I/Os queued since the last commit.
    queued: usize,
    /// The tokens of the I/Os the controller has (to give them back if it dies).
    in_flight: HashSet<u64>,
    /// Completed I/Os beyond what fio asked for; handed out first by the next `getevents`.
    backlog: Vec<IoU>,
    /// The controller died (gone or fatal): every I/O fails at once.
    dead: bool,
    /// The driver's completions of one poll (kept: no allocation per `getevents`).
    done: Vec<(u64, nvme_host_linux::Result<()>)>,
}

/// After this long without a completion while I/O is outstanding, `getevents` checks that
/// the controller is still there (and again each time as long again passes).
const LIVENESS_CHECK: Duration = Duration::from_millis(10);

/// What `queue` did with an I/O.
pub(crate) enum QueueResult {
    /// Submitted; it completes through `getevents`.
    Submitted,
    /// No room now: fio should commit and reap first.
    Busy,
    /// Finished at once (with its error set).
    Completed,
}

/// fio's `init`: the job thread's queue pair on its files' controller.
pub(crate) fn init(td: Td) -> Result<(), String> {
    let name = format!("{}, thread {}", td.name(), td.thread_number());
    let mut slots: Vec<usize> = td
        .files()
        .iter()
        .filter_map(|f| FileTarget::decode(f.engine_pos()))
        .map(|t| t.slot)
        .collect();
    slots.sort_unstable();
    slots.dedup();
    let slot = match slots.as_slice() {
        [s] => *s,
        [] => return Err(format!("job '{name}': no file was set up")),
        _ => {
            return Err(format!(
                "job '{name}': its files are on {} controllers; one job uses one controller \
                 (give each controller a job of its own)",
                slots.len()
            ))
        }
    };
    let ctrl = attachments()[slot]
        .as_ref()
        .map(|a| a.ctrl.clone())
        .ok_or_else(|| format!("job '{name}': its controller was detached"))?;
    let max = ctrl.info().cap.max_queue_entries();
    let entries = match td.options().io_queue_size {
        0 => max.min(1024),
        n => n,
    };
    if entries <= td.iodepth() {
        return Err(format!(
            "job '{name}': io_queue_size={entries} holds fewer commands than iodepth={} \
             (a queue of N entries holds N-1); raise io_queue_size (at most {max} here)",
            td.iodepth()
        ));
    }
    let qp = ctrl
        .alloc_io_queue(QueueOptions::new(entries))
        .map_err(|e| format!("job '{name}': creating its I/O queue pair: {e}"))?;
    td.set_state(Box::new(ThreadState::new(name, ctrl, qp)));
    Ok(())
}

/// fio's `iomem_alloc`: the job's I/O buffers are DMA memory of its controller.
pub(crate) fn iomem_alloc(td: Td, len: usize) -> Result<(), String> {
    let r = td.with_state(|st| -> Result<*mut u8, String> {
        let mut buf = st.ctrl.alloc_dma(len).map_err(|e| {
            format!(
                "job '{}': allocating {len} bytes of I/O buffers: {e}",
                st.name
            )
        })?;
        let base = buf
            .try_as_mut_slice()
            .expect("a new buffer has no I/O in flight")
            .as_mut_ptr();
        st.dma_base = base as usize;
        st.dma = Some(buf);
        Ok(base)
    });
    match r {
        Some(Ok(base)) => {
            td.set_orig_buffer(base);
            Ok(())
        }
        Some(Err(e)) => Err(e),
        None => Err(format!(
            "job '{}': buffers asked for before init",
            td.name()
        )),
    }
}

/// fio's `iomem_free`.
pub(crate) fn iomem_free(td: Td) {
    td.with_state(|st| {
        st.dma = None;
        st.dma_base = 0;
    });
}

/// The errno fio gets for a failed I/O.
fn errno_of(e: &Error) -> u32 {
    match e {
        Error::LbaOutOfRange { .. } | Error::BadLength { .. } | Error::Invalid(_) => {
            libc::EINVAL as u32
        }
        _ => libc::EIO as u32,
    }
}

fn op_name(d: i32) -> &'static str {
    match d {
        ddir::READ => "read",
        ddir::WRITE => "write",
        ddir::TRIM => "trim",
        ddir::SYNC | ddir::DATASYNC => "flush",
        _ => "I/O",
    }
}

/// Completes `io` of job `job` with the error `e`, and says so on fio's error output.
fn fail(job: &str, io: IoU, e: &Error) {
    let (_, len) = io.xfer();
    log(&format!(
        "job '{job}': {} of {len} bytes at offset {} failed: {e}",
        op_name(io.ddir()),
        io.offset()
    ));
    io.complete(errno_of(e));
}

impl ThreadState {
    fn new(name: String, ctrl: Controller, qp: IoQueuePair) -> ThreadState {
        let slots = qp.capacity();
        ThreadState {
            name,
            ctrl,
            qp,
            dma: None,
            dma_base: 0,
            events: Vec::new(),
            bounces: Vec::new(),
            warned_bounce: false,
            queued: 0,
            in_flight: HashSet::with_capacity(slots),
            backlog: Vec::new(),
            dead: false,
            done: Vec::new(),
        }
    }

    /// The offset of `[p, p + len)` in the DMA buffer, if it lies inside it.
    fn dma_offset(&self, p: *mut u8, len: usize) -> Option<usize> {
        let buf = self.dma.as_ref()?;
        let off = (p as usize).checked_sub(self.dma_base)?;
        (off.checked_add(len)? <= buf.len()).then_some(off)
    }

    fn submit(&mut self, io: IoU) -> Result<(), Error> {
        let file = io
            .file()
            .ok_or(Error::Invalid("an I/O without a file".into()))?;
        let t = FileTarget::decode(file.engine_pos()).ok_or(Error::Invalid(format!(
            "file '{}' was not set up by this engine",
            file.name()
        )))?;
        let d = io.ddir();
        let off = io.offset();
        let (p, len) = io.xfer();
        let lba = off >> t.shift;
        if (off | len as u64) & ((1u64 << t.shift) - 1) != 0
            && d != ddir::SYNC
            && d != ddir::DATASYNC
        {
            return Err(Error::Invalid(format!(
                "offset {off} and length {len} must be multiples of the {}-byte block size \
                 (set bs= and offset= accordingly)",
                1u64 << t.shift
            )));
        }
        let token = io.token();
        match d {
            ddir::READ | ddir::WRITE => {
                let read = d == ddir::READ;
                if let Some(start) = self.dma_offset(p, len) {
                    let dma = self.dma.as_mut().expect("checked by dma_offset");
                    let buf = dma.slice(start..start + len)?;
                    return if read {
                        self.qp.read(t.nsid, lba, buf, token)
                    } else {
                        self.qp.write(t.nsid, lba, buf, token)
                    };
                }
                self.submit_bounced(io, t, lba, read)
            }
            ddir::TRIM => {
                let blocks = u32::try_from(len as u64 >> t.shift).map_err(|_| {
                    Error::Invalid(format!(
                        "a trim of {len} bytes is more than one command covers"
                    ))
                })?;
                self.qp.deallocate(t.nsid, lba, blocks, token)
            }
            ddir::SYNC | ddir::DATASYNC => self.qp.flush(t.nsid, token),
            other => Err(Error::Invalid(format!(
                "fio data direction {other} is not supported by this engine"
            ))),
        }
    }

    #[cold]
    fn submit_bounced(
        &mut self,
        io: IoU,
        t: FileTarget,
        lba: u64,
        read: bool,
    ) -> Result<(), Error> {
        if !self.warned_bounce {
            self.warned_bounce = true;
            log(&format!(
                "job '{}': fio handed a buffer outside the engine's DMA memory; such I/Os are \
                 copied through bounce buffers (slower)",
                self.name
            ));
        }
        let (_, len) = io.xfer();
        let mut buf = self.ctrl.alloc_dma(len)?;
        if !read {
            io.copy_data_to(buf.as_mut_slice());
        }
        let token = io.token();
        if read {
            self.qp.read(t.nsid, lba, &mut buf, token)?;
        } else {
            self.qp.write(t.nsid, lba, &mut buf, token)?;
        }
        self.bounces.push(Bounce { io, buf, read });
        Ok(())
    }

    fn queue(&mut self, io: IoU) -> QueueResult {
        if self.dead {
            io.complete(libc::EIO as u32);
            return QueueResult::Completed;
        }
        match self.submit(io) {
            Ok(()) => {
                self.queued += 1;
                self.in_flight.insert(io.token());
                QueueResult::Submitted
            }
            Err(Error::Submit(SubmitError::QueueFull)) if self.qp.outstanding() > 0 => {
                QueueResult::Busy
            }
            Err(e) => {
                fail(&self.name, io, &e);
                QueueResult::Completed
            }
        }
    }

    /// Completes the driver's finished request `token` with `r`: into `events` while it
    /// has room for `max`, else into the backlog.
    fn complete(&mut self, token: u64, r: nvme_host_linux::Result<()>, max: usize) {
        let io = IoU::from_token(token);
        self.in_flight.remove(&token);
        match r {
            Ok(()) => io.complete(0),
            Err(e) => fail(&self.name, io, &e),
        }
        if self.events.len() < max {
            self.events.push(io);
        } else {
            self.backlog.push(io);
        }
    }

    fn getevents(&mut self, min: usize, max: usize, timeout: Option<Duration>) -> usize {
        self.events.clear();
        let max = max.max(1);
        let take = self.backlog.len().min(max);
        self.events.extend(self.backlog.drain(..take));
        let start = Instant::now();
        let mut idle_since: Option<Instant> = None;
        let mut done = std::mem::take(&mut self.done);
        loop {
            if !self.dead {
                self.qp
                    .process_completions(max - self.events.len(), |t, r| done.push((t, r)));
            }
            let progress = !done.is_empty();
            for (t, r) in done.drain(..) {
                self.complete(t, r, max);
            }
            if !self.bounces.is_empty() {
                self.finish_bounces();
            }
            if self.events.len() >= min.min(max) || self.events.len() >= max || self.dead {
                break;
            }
            if timeout.is_some_and(|t| start.elapsed() >= t) {
                break;
            }
            if progress {
                idle_since = None;
            } else {
                let now = Instant::now();
                if now - *idle_since.get_or_insert(now) >= LIVENESS_CHECK {
                    idle_since = Some(now);
                    self.check_controller(max);
                }
            }
            std::hint::spin_loop();
        }
        self.done = done;
        self.events.len()
    }

    /// Nothing completed for a while: is the controller still there? (The driver's `drain`
    /// checks, polling briefly.) If it is gone or fatal, the I/Os it had fail with EIO.
    #[cold]
    fn check_controller(&mut self, max: usize) {
        let mut done = Vec::new();
        let r = self
            .qp
            .drain(Duration::from_millis(2), |t, r| done.push((t, r)));
        for (t, r) in done {
            self.complete(t, r, max);
        }
        let e = match r {
            Ok(()) | Err(Error::DrainTimeout { .. }) => return,
            Err(e) => e,
        };
        log(&format!(
            "job '{}': the controller is lost ({e}); the {} I/Os it had fail with EIO, and \
             every later one",
            self.name,
            self.in_flight.len()
        ));
        self.dead = true;
        for t in std::mem::take(&mut self.in_flight) {
            let io = IoU::from_token(t);
            io.complete(libc::EIO as u32);
            if self.events.len() < max {
                self.events.push(io);
            } else {
                self.backlog.push(io);
            }
        }
    }

    /// Copies completed bounced reads back into fio's buffers and frees their bounce buffers.
    #[cold]
    fn finish_bounces(&mut self) {
        let events = &self.events;
        self.bounces.retain(|b| {
            if !events.contains(&b.io) {
                return true;
            }
            if b.read {
                b.io.copy_data_from(b.buf.as_slice());
            }
            false
        });
    }
}

/// fio's `queue`.
pub(crate) fn queue(td: Td, io: IoU) -> QueueResult {
    td.with_state(|st| st.queue(io)).unwrap_or_else(|| {
        log(&format!("job '{}': I/O before init", td.name()));
        io.complete(libc::EINVAL as u32);
        QueueResult::Completed
    })
}

/// fio's `commit`: one doorbell write for everything queued since the last. Returns how
/// many I/Os that submitted.
pub(crate) fn commit(td: Td) -> usize {
    td.with_state(|st| {
        st.qp.ring();
        std::mem::take(&mut st.queued)
    })
    .unwrap_or(0)
}

/// fio's `getevents`: polls until `min` I/Os completed (at most `max`) or `timeout` passed.
pub(crate) fn getevents(td: Td, min: usize, max: usize, timeout: Option<Duration>) -> usize {
    td.with_state(|st| st.getevents(min, max, timeout))
        .unwrap_or(0)
}

/// fio's `event`: the `i`th I/O the last `getevents` completed.
pub(crate) fn event(td: Td, i: usize) -> Option<IoU> {
    td.with_state(|st| st.events.get(i).copied()).flatten()
}

/// fio's `cleanup`: the queue pair goes (after its I/O), and the job's uses of attachments.
pub(crate) fn cleanup(td: Td) {
    if let Some(mut st) = td.take_state() {
        if let Err(e) = st.qp.drain(Duration::from_secs(10), |_, _| {}) {
            log(&format!("job '{}': waiting for its last I/O: {e}", st.name));
        }
        drop(st);
    }
    release_files(td);
}

/// The job's files stop using their attachments.
fn release_files(td: Td) {
    for f in td.files() {
        if let Some(t) = FileTarget::decode(f.engine_pos()) {
            f.set_engine_pos(0);
            release(t.slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::fake::{FakeFile, FakeIoU};

    /// One I/O through the queue pair: queued, committed, completed; its errno.
    fn run_one(st: &mut ThreadState, io: &FakeIoU) -> u32 {
        assert!(matches!(st.queue(io.io()), QueueResult::Submitted));
        st.qp.ring();
        let mut got = 0;
        while got == 0 {
            got = st.getevents(1, 1, None);
        }
        assert_eq!(st.events, [io.io()]);
        io.error()
    }

    #[test]
    fn buffers_outside_dma_memory_go_through_bounce_buffers() {
        let ctrl = Controller::attach("trtype:sim size:16M").expect("software controller");
        let qp = ctrl
            .alloc_io_queue(QueueOptions::new(16))
            .expect("queue pair");
        // No iomem_alloc: every buffer is fio's own memory.
        let mut st = ThreadState::new("bounce".into(), ctrl, qp);
        let file = FakeFile::new(
            FileTarget {
                slot: 0,
                shift: 9,
                nsid: 1,
            }
            .encode(),
        );
        let mut data: Vec<u8> = (0..8192u32).map(|i| (i * 7 % 251) as u8).collect();
        let write = FakeIoU::new(&file, ddir::WRITE, 4096, &mut data);
        assert_eq!(run_one(&mut st, &write), 0);
        assert!(st.warned_bounce, "the bounce was reported");
        let mut back = vec![0u8; 8192];
        let read = FakeIoU::new(&file, ddir::READ, 4096, &mut back);
        assert_eq!(run_one(&mut st, &read), 0);
        assert!(st.bounces.is_empty(), "bounce buffers freed");
        assert_eq!(back, data, "read back through a bounce buffer");
        // A misaligned offset fails at once with EINVAL, nothing submitted.
        let bad = FakeIoU::new(&file, ddir::READ, 100, &mut back);
        assert!(matches!(st.queue(bad.io()), QueueResult::Completed));
        assert_eq!(bad.error(), libc::EINVAL as u32);
        assert_eq!(st.qp.outstanding(), 0);
    }

    #[test]
    fn file_target_round_trips() {
        for t in [
            FileTarget {
                slot: 0,
                shift: 9,
                nsid: 1,
            },
            FileTarget {
                slot: 4000,
                shift: 12,
                nsid: u32::MAX - 1,
            },
        ] {
            assert_eq!(FileTarget::decode(t.encode()), Some(t));
        }
        assert_eq!(
            FileTarget::decode(0),
            None,
            "fio's zeroed engine_pos is not a target"
        );
    }
}
