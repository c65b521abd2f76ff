//! The target as a host of its software controller: the BAR mapping, the admin queue (one
//! thread owns it and multiplexes every association's admin commands on it, each with a
//! CID of its own), the rings of the I/O queue pairs the connections use, and the pools of
//! controller queue ids and interrupt vectors they take theirs from.

use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nvme_regs::features::fid;
use nvme_regs::identify::IdentifyController;
use nvme_regs::opcode::AdminOpcode as A;
use nvme_regs::registers::{cq_head_doorbell, offset, sq_tail_doorbell, Aqa, Cap, Cc, Csts};
use nvme_regs::{CompletionEntry, SubmissionEntry};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

use super::{Out, Outbox, Registry};
use crate::bar::Bar;
use crate::mem::{create_memfd, Mapping};
use crate::{SimController, SimError, THREAD_STACK};

/// Where the target's admin memory sits in the controller's IOVA space.
const ADMIN_IOVA: u64 = 0x1000_0000;
/// Admin queue entries (several associations share it).
const ADMIN_ENTRIES: u32 = 64;
/// How long a command of the target's own (queue creation, deletion) may take.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A submission ring in a mapping.
pub(crate) struct SqRing {
    pub(crate) off: usize,
    pub(crate) entries: u32,
    pub(crate) tail: u32,
}

impl SqRing {
    /// Writes `e` at the tail (the doorbell is [`ring`](Self::ring)).
    pub(crate) fn push(&mut self, mem: &Mapping, e: &SubmissionEntry) {
        mem.write_volatile(self.off + self.tail as usize * 64, e.as_bytes());
        self.tail = (self.tail + 1) % self.entries;
    }
    /// Publishes the tail (the store is a release: the entries are visible first).
    pub(crate) fn ring(&self, bar: &Bar, qid: u16, dstrd: u8) {
        bar.store32(sq_tail_doorbell(qid, dstrd), self.tail);
    }
}

/// A completion ring in a mapping.
pub(crate) struct CqRing {
    pub(crate) off: usize,
    pub(crate) entries: u32,
    pub(crate) head: u32,
    pub(crate) phase: bool,
}

impl CqRing {
    /// Takes the next posted entry, if any (its phase tag read with acquire first).
    pub(crate) fn poll(&mut self, mem: &Mapping) -> Option<CompletionEntry> {
        let off = self.off + self.head as usize * 16;
        let dw3 = mem.atomic_u32(off + 12).load(Ordering::Acquire);
        if ((dw3 >> 16) & 1 != 0) != self.phase {
            return None;
        }
        let mut e = CompletionEntry::new_zeroed();
        mem.read_volatile(off, e.as_mut_bytes());
        self.head += 1;
        if self.head == self.entries {
            self.head = 0;
            self.phase = !self.phase;
        }
        Some(e)
    }
    /// Tells the controller how far the ring was consumed.
    pub(crate) fn ack(&self, bar: &Bar, qid: u16, dstrd: u8) {
        bar.store32(cq_head_doorbell(qid, dstrd), self.head);
    }
}

/// Where a completion of the admin queue goes.
pub(crate) enum Reply {
    /// To a thread waiting for it.
    Sync(mpsc::Sender<CompletionEntry>),
    /// To a connection's writer, as the completion of its command slot.
    Conn { out: Outbox, slot: u16 },
    /// The target's own Asynchronous Event Request.
    Aer,
}

pub(crate) enum AdminReq {
    Cmd(SubmissionEntry, Reply),
    Stop,
}

/// What the controller behind the target is like, and the shared handles to it.
pub(crate) struct Backend {
    pub(crate) sim: SimController,
    pub(crate) bar: Bar,
    pub(crate) cap: Cap,
    /// The controller's memory page size (CC.MPS = CAP.MPSMIN).
    pub(crate) page: usize,
    /// The controller's Identify Controller data.
    pub(crate) ident: IdentifyController,
    /// I/O queues the controller granted the target.
    pub(crate) io_queues: u16,
    tx: Mutex<mpsc::Sender<AdminReq>>,
    free_qids: Mutex<Vec<u16>>,
    free_vectors: Mutex<Vec<u16>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// The admin queue while the target brings the controller up (before its thread runs).
struct AdminQueue {
    mem: Mapping,
    sq: SqRing,
    cq: CqRing,
    dstrd: u8,
}

impl AdminQueue {
    /// [`exec`](Self::exec), an unsuccessful status being an error about `what`.
    fn exec_ok(
        &mut self,
        bar: &Bar,
        e: SubmissionEntry,
        what: &str,
    ) -> Result<CompletionEntry, SimError> {
        let c = self.exec(bar, e)?;
        if !c.status().is_success() {
            return Err(SimError::Protocol(format!(
                "{what} failed on the controller: {}",
                c.status()
            )));
        }
        Ok(c)
    }

    fn exec(&mut self, bar: &Bar, mut e: SubmissionEntry) -> Result<CompletionEntry, SimError> {
        e.cid = 0xfffe;
        self.sq.push(&self.mem, &e);
        self.sq.ring(bar, 0, self.dstrd);
        let t = Instant::now();
        loop {
            if let Some(c) = self.cq.poll(&self.mem) {
                self.cq.ack(bar, 0, self.dstrd);
                return Ok(c);
            }
            if t.elapsed() > CALL_TIMEOUT {
                return Err(SimError::Protocol(format!(
                    "the controller did not complete admin opcode {:#x} within {CALL_TIMEOUT:?}",
                    e.opcode
                )));
            }
            std::thread::sleep(Duration::from_micros(20));
        }
    }
}

impl Backend {
    /// Enables `sim` with the target's admin queue, reads its Identify Controller, asks
    /// for its I/O queues and starts the admin thread.
    pub(crate) fn start(
        sim: SimController,
        registry: Arc<Registry>,
    ) -> Result<Arc<Backend>, SimError> {
        let bar = Bar::new(Mapping::map(sim.bar_fd(), 0, sim.bar_len(), false)?);
        let cap = Cap(bar.load64(offset::CAP));
        let page = cap.min_page_size();
        let dstrd = cap.dstrd();
        if Cc(bar.load32(offset::CC)).en() {
            return Err(SimError::InvalidArgument(
                "the controller is already enabled: serve_tcp needs a controller no host uses"
                    .into(),
            ));
        }
        let entries = ADMIN_ENTRIES.min(cap.max_queue_entries());
        let len = 3 * page;
        let fd = create_memfd("nvme-sim-tcp-admin", len as u64)?;
        let mem = Mapping::map(fd.as_fd(), 0, len, false)?;
        sim.dma_map(ADMIN_IOVA, fd.as_fd(), 0, len)?;
        let mut q = AdminQueue {
            mem,
            sq: SqRing {
                off: 0,
                entries,
                tail: 0,
            },
            cq: CqRing {
                off: page,
                entries,
                head: 0,
                phase: true,
            },
            dstrd,
        };
        bar.store32(offset::AQA, Aqa::new(entries as u16, entries as u16).0);
        bar.store64(offset::ASQ, ADMIN_IOVA);
        bar.store64(offset::ACQ, ADMIN_IOVA + page as u64);
        let cc = Cc(0)
            .with_iosqes(6)
            .with_iocqes(4)
            .with_mps(cap.mpsmin())
            .with_en(true);
        bar.store32(offset::CC, cc.0);
        let t = Instant::now();
        let limit = Duration::from_millis(cap.timeout_ms().max(500) as u64);
        loop {
            let csts = Csts(bar.load32(offset::CSTS));
            if csts.cfs() {
                return Err(SimError::Protocol(format!(
                    "the controller failed to enable: {}",
                    sim.fatal_reason().unwrap_or_default()
                )));
            }
            if csts.rdy() {
                break;
            }
            if t.elapsed() > limit {
                return Err(SimError::Protocol(format!(
                    "the controller did not become ready within {limit:?}"
                )));
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        let id = SubmissionEntry {
            opcode: A::Identify as u8,
            cdw10: nvme_regs::identify::cns::CONTROLLER as u32,
            prp1: ADMIN_IOVA + 2 * page as u64,
            ..Default::default()
        };
        q.exec_ok(&bar, id, "Identify Controller")?;
        let mut raw = vec![0u8; size_of::<IdentifyController>()];
        q.mem.read(2 * page, &mut raw);
        let ident = IdentifyController::read_from_bytes(&raw).expect("4096 bytes");
        let nq = SubmissionEntry {
            opcode: A::SetFeatures as u8,
            cdw10: fid::NUMBER_OF_QUEUES as u32,
            cdw11: 0xfffe | 0xfffe << 16,
            ..Default::default()
        };
        let c = q.exec_ok(&bar, nq, "Set Features Number of Queues")?;
        let io_queues = ((c.dw0 & 0xffff).min(c.dw0 >> 16) + 1) as u16;
        let vectors = sim.interrupt_vectors();
        let (tx, rx) = mpsc::channel();
        let backend = Arc::new(Backend {
            sim,
            bar,
            cap,
            page,
            ident,
            io_queues,
            tx: Mutex::new(tx),
            free_qids: Mutex::new((1..=io_queues).rev().collect()),
            free_vectors: Mutex::new((1..vectors).rev().collect()),
            thread: Mutex::new(None),
        });
        let b = backend.clone();
        let thread = std::thread::Builder::new()
            .name("nvme-sim-tcp-admin".into())
            .stack_size(THREAD_STACK)
            .spawn(move || {
                let _fd = fd;
                admin_thread(&b, q, rx, &registry)
            })
            .map_err(SimError::Thread)?;
        *lock(&backend.thread) = Some(thread);
        backend.submit(
            SubmissionEntry {
                opcode: A::AsyncEventRequest as u8,
                ..Default::default()
            },
            Reply::Aer,
        );
        Ok(backend)
    }

    /// Queues an admin command for the controller; its completion goes to `reply`.
    pub(crate) fn submit(&self, e: SubmissionEntry, reply: Reply) {
        // A send fails only when the admin thread is gone (the target is stopping): the
        // reply's receiver then sees its sender dropped.
        let _ = lock(&self.tx).send(AdminReq::Cmd(e, reply));
    }

    /// Runs an admin command of the target's own and waits for its completion.
    pub(crate) fn call(&self, e: SubmissionEntry) -> Result<CompletionEntry, String> {
        let (tx, rx) = mpsc::channel();
        self.submit(e, Reply::Sync(tx));
        rx.recv_timeout(CALL_TIMEOUT).map_err(|_| {
            format!(
                "admin opcode {:#x} got no completion from the controller",
                e.opcode
            )
        })
    }

    /// Takes a free controller I/O queue id and, if one is left, an interrupt vector.
    pub(crate) fn take_queue(&self) -> Option<(u16, Option<u16>)> {
        let qid = lock(&self.free_qids).pop()?;
        Some((qid, lock(&self.free_vectors).pop()))
    }

    /// Gives back what [`take_queue`](Self::take_queue) handed out.
    pub(crate) fn give_back(&self, qid: u16, vector: Option<u16>) {
        lock(&self.free_qids).push(qid);
        if let Some(v) = vector {
            // Stop signalling the connection's eventfd before anyone else gets the vector.
            let _ = self.sim.set_interrupt(v, None);
            lock(&self.free_vectors).push(v);
        }
    }

    /// Stops the admin thread (the target is going away).
    pub(crate) fn stop(&self) {
        let _ = lock(&self.tx).send(AdminReq::Stop);
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }
}

/// Locks `m`, going on after a panic of another holder (the data stays consistent: every
/// critical section is a few field updates).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn admin_thread(b: &Backend, mut q: AdminQueue, rx: mpsc::Receiver<AdminReq>, registry: &Registry) {
    let entries = q.sq.entries as usize;
    // In flight by CID (the slot index); the ring holds at most entries - 1 commands.
    let mut inflight: Vec<Option<Reply>> = (0..entries - 1).map(|_| None).collect();
    let mut pending: std::collections::VecDeque<(SubmissionEntry, Reply)> = Default::default();
    let mut busy = 0usize;
    let mut last_check = Instant::now();
    loop {
        let wait = if busy > 0 {
            Duration::from_micros(50)
        } else {
            Duration::from_millis(20)
        };
        let mut stop = false;
        match rx.recv_timeout(wait) {
            Ok(AdminReq::Cmd(e, r)) => pending.push_back((e, r)),
            Ok(AdminReq::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => stop = true,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        while let Ok(m) = rx.try_recv() {
            match m {
                AdminReq::Cmd(e, r) => pending.push_back((e, r)),
                AdminReq::Stop => stop = true,
            }
        }
        if stop {
            return;
        }
        let mut rang = false;
        while let Some(free) = inflight.iter().position(Option::is_none) {
            let Some((mut e, r)) = pending.pop_front() else {
                break;
            };
            e.cid = free as u16;
            q.sq.push(&q.mem, &e);
            inflight[free] = Some(r);
            busy += 1;
            rang = true;
        }
        if rang {
            q.sq.ring(&b.bar, 0, q.dstrd);
        }
        let mut acked = false;
        while let Some(c) = q.cq.poll(&q.mem) {
            acked = true;
            let Some(r) = inflight.get_mut(c.cid as usize).and_then(Option::take) else {
                continue;
            };
            busy -= 1;
            match r {
                Reply::Sync(tx) => {
                    let _ = tx.send(c);
                }
                Reply::Conn { out, slot } => out.send(Out::Done { slot, cqe: c }),
                Reply::Aer => {
                    if c.status().is_success() {
                        registry.async_event(c.dw0);
                        pending.push_back((
                            SubmissionEntry {
                                opcode: A::AsyncEventRequest as u8,
                                ..Default::default()
                            },
                            Reply::Aer,
                        ));
                    }
                }
            }
        }
        if acked {
            q.cq.ack(&b.bar, 0, q.dstrd);
        }
        if last_check.elapsed() >= Duration::from_millis(20) {
            last_check = Instant::now();
            registry.expire_keep_alive();
        }
    }
}
