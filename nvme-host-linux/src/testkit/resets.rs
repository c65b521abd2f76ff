//! Checked I/O through controller resets by other processes ([`io_through_resets`]): the
//! child role of the reset scenarios, against the software controller and in the VM.

use std::time::{Duration, Instant};

use super::{complete_all, pattern, say, stop_requested};
use crate::{Controller, DmaBuffer, Error, IoQueuePair, QueueOptions};

/// Bytes per I/O, and I/Os per direction and round.
const IO: usize = 4096;
const PER_ROUND: usize = 8;

/// Where [`io_through_resets`] does its I/O: `8 * 4096` bytes from `lba` of namespace
/// `nsid`, whose blocks are `block_size` bytes (at most 4096, dividing it).
#[derive(Debug, Clone, Copy)]
pub struct ResetIo {
    /// The namespace.
    pub nsid: u32,
    /// The first block of the region.
    pub lba: u64,
    /// The namespace's block size in bytes.
    pub block_size: usize,
}

/// The last write that was acknowledged, read back and checked (and flushed), as a line of
/// the kernel read-back manifest: `nsid lba blocks block_size seed fnv`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acked {
    /// The namespace.
    pub nsid: u32,
    /// The first block written.
    pub lba: u64,
    /// How many blocks.
    pub blocks: u64,
    /// Their size in bytes.
    pub block_size: u64,
    /// The [`pattern`] seed of the data.
    pub seed: u64,
    /// [`pattern::checksum`] of the data.
    pub fnv: u64,
}

impl Acked {
    /// The manifest line (no newline).
    pub fn manifest_line(&self) -> String {
        format!(
            "{} {} {} {} {} {:016x}",
            self.nsid, self.lba, self.blocks, self.block_size, self.seed, self.fnv
        )
    }
}

/// Writes and reads back its region, 8 I/Os in flight, until told to stop, through
/// controller resets by other processes: a round that a reset aborts (or whose submission
/// it refuses) is waited out (processing completions reconnects the queue pair) and done
/// again; every round that completes is read back and checked.
///
/// Says `QID q`, `PROGRESS round` (every 100 ms), `ABORTED round` (once per reset seen),
/// and at the end `DONE rounds aborted n` and `ACKED <manifest line>`. It stops only after a
/// round that completed (an aborted round may have left the region half rewritten), and
/// flushes, so the acknowledged data is what the region holds.
pub fn io_through_resets(ctrl: &Controller, at: ResetIo) -> Result<Acked, String> {
    let bs = at.block_size;
    if bs == 0 || bs > IO || !IO.is_multiple_of(bs) {
        return Err(format!("block size {bs}: expected a divisor of {IO}"));
    }
    let per = (IO / bs) as u64;
    let mut qp = ctrl
        .alloc_io_queue(QueueOptions::new(32))
        .map_err(|e| e.to_string())?;
    say(format!("QID {}", qp.qid()));
    let mut buf = ctrl
        .alloc_dma(2 * PER_ROUND * IO)
        .map_err(|e| e.to_string())?;
    let (mut round, mut aborted) = (0u64, 0u64);
    // The seed of the last round that completed, unless a later round was aborted.
    let mut acked: Option<u64> = None;
    let mut last_report = Instant::now();
    // Submits 8 I/Os of one direction and waits for them; Err(true) when a reset aborted
    // any of them (or refused the submission).
    let run = |qp: &mut IoQueuePair, buf: &mut DmaBuffer, write: bool| -> Result<(), bool> {
        let mut reset = false;
        for i in 0..PER_ROUND {
            let off = if write { i } else { PER_ROUND + i };
            let r = buf.slice(off * IO..(off + 1) * IO).map_err(|_| false)?;
            let lba = at.lba + i as u64 * per;
            let s = if write {
                qp.write(at.nsid, lba, r, i as u64)
            } else {
                qp.read(at.nsid, lba, r, i as u64)
            };
            match s {
                Ok(()) => {}
                Err(Error::AbortedByReset) => reset = true,
                Err(_) => return Err(false),
            }
        }
        let start = Instant::now();
        while qp.outstanding() > 0 {
            let mut bad = false;
            qp.process_completions(usize::MAX, |_, r| match r {
                Ok(()) => {}
                Err(Error::AbortedByReset) => reset = true,
                Err(_) => bad = true,
            });
            if bad || start.elapsed() > Duration::from_secs(20) {
                return Err(false);
            }
        }
        if reset {
            Err(true)
        } else {
            Ok(())
        }
    };
    while !(stop_requested() && acked.is_some()) {
        round += 1;
        let seed = round.wrapping_mul(100) + at.lba;
        pattern::fill(seed, at.lba, bs, &mut buf.as_mut_slice()[..PER_ROUND * IO]);
        let done = run(&mut qp, &mut buf, true).and_then(|_| run(&mut qp, &mut buf, false));
        match done {
            Ok(()) => {}
            Err(true) => {
                aborted += 1;
                acked = None;
                say(format!("ABORTED {round}"));
                // Wait until the queue pair has reconnected (a reset is under way, or done).
                // (Processing completions is what reconnects it.)
                let start = Instant::now();
                loop {
                    qp.process_completions(usize::MAX, |_, _| {});
                    if qp.outstanding() == 0 && qp.flush(at.nsid, 0).is_ok() {
                        break;
                    }
                    if start.elapsed() > Duration::from_secs(20) {
                        return Err("the controller did not come back from a reset".into());
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                // The flush is in flight now: wait for it.
                let _ = complete_all(&mut qp, Duration::from_secs(10));
                continue;
            }
            Err(false) => return Err(format!("round {round}: an I/O failed")),
        }
        let d = buf.as_slice();
        pattern::check(seed, at.lba, bs, &d[PER_ROUND * IO..])
            .map_err(|e| format!("round {round}: {e}"))?;
        acked = Some(seed);
        if last_report.elapsed() > Duration::from_millis(100) {
            say(format!("PROGRESS {round}"));
            last_report = Instant::now();
        }
    }
    let seed = acked.expect("the loop ends after a completed round");
    // A reset may still land between the last round and the flush (the other process is
    // told to stop at the same time): the completed writes stay acknowledged (a controller
    // reset does not undo them), and the flush is sent again once the queue pair has
    // reconnected.
    let start = Instant::now();
    loop {
        let mut reset = false;
        let mut failed = None;
        match qp.flush(at.nsid, 0) {
            Ok(()) => {
                let drained = qp.drain(Duration::from_secs(20), |_, r| match r {
                    Ok(()) => {}
                    Err(Error::AbortedByReset) => reset = true,
                    Err(e) => failed = Some(e.to_string()),
                });
                if let Err(e) = drained {
                    failed.get_or_insert(e.to_string());
                }
            }
            Err(Error::AbortedByReset) => reset = true,
            Err(e) => failed = Some(e.to_string()),
        }
        if let Some(e) = failed {
            return Err(format!("the final flush: {e}"));
        }
        if !reset {
            break;
        }
        if start.elapsed() > Duration::from_secs(20) {
            return Err("the final flush: aborted by controller resets for 20 s".into());
        }
        say("FINAL-FLUSH-ABORTED");
        // Processing completions is what reconnects the queue pair.
        qp.process_completions(usize::MAX, |_, _| {});
        std::thread::sleep(Duration::from_millis(1));
    }
    let written = &buf.as_slice()[..PER_ROUND * IO];
    let a = Acked {
        nsid: at.nsid,
        lba: at.lba,
        blocks: (PER_ROUND * IO / bs) as u64,
        block_size: bs as u64,
        seed,
        fnv: pattern::checksum(written),
    };
    say(format!("DONE {round} aborted {aborted}"));
    say(format!("ACKED {}", a.manifest_line()));
    Ok(a)
}
