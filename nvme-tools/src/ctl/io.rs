//! `read` / `write`: nvme-cli's options (`-s` start block, `-c` 0's based block count, `-z`
//! data size) checked into an [`IoPlan`], then run on a queue pair that lives only for the
//! call.
//!
//! The plan is checked before anything else happens: `write` opens and reads its input only
//! once the range fits the namespace, and then reads only the bytes the blocks take, one
//! DMA buffer (at most one maximum transfer) at a time, straight into that buffer: its
//! memory does not depend on the input (`-d /dev/zero` is fine).
//!
//! SIGINT / SIGTERM ([`crate::signals`]) abandon a transfer between two commands, or while
//! `write` waits for its input (read on a thread of its own, so that a terminal or a pipe
//! that says nothing cannot hold the process): the error says how far it got, and the
//! caller detaches.

use nvme_host_linux::{Controller, QueueOptions};

use super::{Error, Result};

/// Entries of the queue pair `read` / `write` create (one command in flight at a time).
const QUEUE_ENTRIES: u32 = 16;

/// A checked transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoPlan {
    /// Namespace.
    pub nsid: u32,
    /// First LBA.
    pub slba: u64,
    /// Blocks (`-c` + 1).
    pub blocks: u64,
    /// Block size of the namespace.
    pub block_size: u32,
}

impl IoPlan {
    /// Bytes transferred.
    pub fn bytes(&self) -> usize {
        (self.blocks * self.block_size as u64) as usize
    }
}

/// Checks `-s`, `-c` (0's based, as in nvme-cli) and `-z` against a namespace of
/// `capacity` blocks of `block_size` bytes. `-z` must be the size of the blocks
/// (`(c + 1) x block size`); without it, that size is used.
pub fn plan(
    nsid: u32,
    slba: u64,
    block_count: u16,
    data_size: Option<u64>,
    block_size: u32,
    capacity: u64,
) -> Result<IoPlan> {
    let p = IoPlan {
        nsid,
        slba,
        blocks: block_count as u64 + 1,
        block_size,
    };
    if let Some(z) = data_size {
        if z != p.bytes() as u64 {
            return Err(Error::Usage(format!(
                "-z {z} does not match -c {block_count}: -c is 0's based, so {} block(s) of {block_size} bytes = {} bytes",
                p.blocks,
                p.bytes()
            )));
        }
    }
    if slba.checked_add(p.blocks).is_none_or(|end| end > capacity) {
        let range = nvme_host_linux::Error::LbaOutOfRange {
            nsid,
            lba: slba,
            blocks: p.blocks,
            capacity,
        };
        return Err(Error::Failed(format!(
            "-s/--start-block {slba} -c/--block-count {block_count}: {range}"
        )));
    }
    Ok(p)
}

/// Largest transfer per command, in whole blocks.
fn chunk_bytes(ctrl: &Controller, block_size: u32) -> usize {
    let bs = block_size as usize;
    (ctrl.max_transfer() / bs).max(1) * bs
}

/// A queue pair for one subcommand (a few entries; one command in flight at a time).
pub fn queue(ctrl: &Controller) -> Result<nvme_host_linux::IoQueuePair> {
    let entries = QUEUE_ENTRIES.min(ctrl.info().cap.max_queue_entries());
    Ok(ctrl.alloc_io_queue(QueueOptions::new(entries))?)
}

/// The bytes of each command of the plan (the last may be shorter).
fn chunk_len(ctrl: &Controller, p: &IoPlan) -> usize {
    chunk_bytes(ctrl, p.block_size).min(p.bytes())
}

/// The error of a transfer abandoned on a signal after `done` bytes, if one came.
fn check_interrupt(p: &IoPlan, op: &str, done: usize) -> Result<()> {
    match crate::signals::requested() {
        None => Ok(()),
        Some(signal) => Err(Error::Interrupted {
            signal,
            what: format!(
                "{op} abandoned after {} of {} block(s)",
                done / p.block_size as usize,
                p.blocks
            ),
        }),
    }
}

/// Runs the plan's blocks through one DMA buffer of at most one maximum transfer: `each`
/// gets the buffer, the LBA and the byte range of the whole transfer for each command.
/// A signal stops it between two commands.
fn transfer(
    ctrl: &Controller,
    p: &IoPlan,
    op: &str,
    mut each: impl FnMut(
        &mut nvme_host_linux::IoQueuePair,
        &mut nvme_host_linux::DmaBuffer,
        u64,
        std::ops::Range<usize>,
    ) -> Result<()>,
) -> Result<()> {
    let chunk = chunk_len(ctrl, p);
    let mut qp = queue(ctrl)?;
    let mut buf = ctrl.alloc_dma(chunk)?;
    let mut done = 0;
    while done < p.bytes() {
        check_interrupt(p, op, done)?;
        let n = chunk.min(p.bytes() - done);
        let lba = p.slba + (done / p.block_size as usize) as u64;
        each(&mut qp, &mut buf, lba, done..done + n)?;
        done += n;
    }
    Ok(())
}

/// Reads the plan's blocks.
pub fn read_blocks(ctrl: &Controller, p: &IoPlan) -> Result<Vec<u8>> {
    let mut data = vec![0u8; p.bytes()];
    transfer(ctrl, p, "read", |qp, buf, lba, range| {
        let n = range.len();
        qp.read_sync(p.nsid, lba, buf.slice(0..n)?)?;
        data[range].copy_from_slice(&buf.as_slice()[..n]);
        Ok(())
    })?;
    Ok(data)
}

/// Writes `data` (exactly the plan's bytes) to the plan's blocks.
pub fn write_blocks(ctrl: &Controller, p: &IoPlan, data: &[u8]) -> Result<()> {
    if data.len() != p.bytes() {
        return Err(Error::Failed(format!(
            "{} bytes of data for {} bytes of blocks",
            data.len(),
            p.bytes()
        )));
    }
    write_from(
        ctrl,
        p,
        Box::new(std::io::Cursor::new(data.to_vec())),
        "the data",
    )
}

/// Writes the plan's blocks with data read from `input`: exactly the plan's bytes (the
/// rest of the input is never read), one command's worth at a time. A thread reads ahead
/// by at most two commands' worth, so a signal is seen while the input is silent. An input
/// that ends early is an error that says how much was read and which blocks were written.
pub fn write_from(
    ctrl: &Controller,
    p: &IoPlan,
    input: Box<dyn std::io::Read + Send>,
    what: &str,
) -> Result<()> {
    let rx = read_ahead(input, p.bytes(), chunk_len(ctrl, p))
        .map_err(|e| Error::Failed(format!("reading {what}: {e}")))?;
    transfer(ctrl, p, "write", |qp, buf, lba, range| {
        let n = range.len();
        let piece = next_read_piece(&rx, p, "write", range.start, what)?;
        if piece.len() < n {
            return Err(short_input(p, range.start + piece.len(), what, lba));
        }
        buf.as_mut_slice()[..n].copy_from_slice(&piece);
        qp.write_sync(p.nsid, lba, buf.slice(0..n)?)?;
        Ok(())
    })
}

/// The next piece `read_ahead` sent (an empty one when the reader is gone); a signal while
/// waiting abandons `op` after `done` bytes.
fn next_piece(
    rx: &std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    p: &IoPlan,
    op: &str,
    done: usize,
) -> Result<std::io::Result<Vec<u8>>> {
    loop {
        match rx.recv_timeout(std::time::Duration::from_millis(20)) {
            Ok(piece) => return Ok(piece),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => check_interrupt(p, op, done)?,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Ok(Ok(Vec::new())),
        }
    }
}

/// [`next_piece`], with a read error of the input `what` as the error.
fn next_read_piece(
    rx: &std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    p: &IoPlan,
    op: &str,
    done: usize,
    what: &str,
) -> Result<Vec<u8>> {
    next_piece(rx, p, op, done)?.map_err(|e| Error::Failed(format!("reading {what}: {e}")))
}

/// nvme-cli's text of an NVMe status: `NVMe status: Compare Failure(0x4285)` style, with
/// libnvme's sentence for Compare Failure.
pub fn nvme_status_text(status: nvme_host_linux::regs::Status) -> String {
    use nvme_host_linux::regs::status::MediaErrorStatus;
    let name = if status.is_media(MediaErrorStatus::CompareFailure) {
        "Compare Failure: The command failed due to a miscompare during a Compare command"
            .to_string()
    } else {
        status.to_string()
    };
    format!("NVMe status: {name}({:#x})", status.0)
}

/// Compares the plan's blocks with data read from `input` (read as `write_from` reads it),
/// one command's worth at a time. A mismatch is an error that names the blocks of the
/// command that found it (nvme-cli's `NVMe status: Compare Failure...` text); an input
/// that ends early is an error that says how much was read.
pub fn compare_from(
    ctrl: &Controller,
    p: &IoPlan,
    input: Box<dyn std::io::Read + Send>,
    what: &str,
) -> Result<()> {
    use nvme_host_linux::regs::status::MediaErrorStatus;
    let rx = read_ahead(input, p.bytes(), chunk_len(ctrl, p))
        .map_err(|e| Error::Failed(format!("reading {what}: {e}")))?;
    transfer(ctrl, p, "compare", |qp, buf, lba, range| {
        let n = range.len();
        let piece = next_read_piece(&rx, p, "compare", range.start, what)?;
        if piece.len() < n {
            return Err(Error::Failed(format!(
                "{what} has {} bytes, fewer than the {} bytes to compare ({} block(s) of {} bytes)",
                range.start + piece.len(),
                p.bytes(),
                p.blocks,
                p.block_size
            )));
        }
        buf.as_mut_slice()[..n].copy_from_slice(&piece);
        match qp.compare_sync(p.nsid, lba, buf.slice(0..n)?) {
            Err(e)
                if e.status()
                    .is_some_and(|s| s.is_media(MediaErrorStatus::CompareFailure)) =>
            {
                let end = lba + (n / p.block_size as usize) as u64;
                Err(Error::Failed(format!(
                    "COMPARE: blocks {lba}..{end} of namespace {} differ from {what}: {}",
                    p.nsid,
                    nvme_status_text(e.status().expect("checked"))
                )))
            }
            r => Ok(r?),
        }
    })
}

/// Reads `total` bytes of `input` on a thread, in pieces of `chunk` bytes (the last may be
/// shorter), at most one piece queued: a piece shorter than asked (the input ended) or an
/// error is the last one sent. The thread ends when it is done or the receiver is gone;
/// one blocked in a read that never returns ends with the process.
fn read_ahead(
    mut input: Box<dyn std::io::Read + Send>,
    total: usize,
    chunk: usize,
) -> std::io::Result<std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("nvmectl-input".into())
        .spawn(move || {
            let mut left = total;
            while left > 0 {
                let want = chunk.min(left);
                let mut piece = vec![0u8; want];
                let r = fill(&mut *input, &mut piece).map(|got| {
                    piece.truncate(got);
                    piece
                });
                let last = !matches!(&r, Ok(v) if v.len() == want);
                left -= want;
                if tx.send(r).is_err() || last {
                    break;
                }
            }
        })?;
    Ok(rx)
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn fill(input: &mut dyn std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(k) => filled += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// `what` ended after `got` bytes; the blocks before `lba` were written.
fn short_input(p: &IoPlan, got: usize, what: &str, lba: u64) -> Error {
    let written = if lba > p.slba {
        format!("; blocks {}..{lba} were written", p.slba)
    } else {
        "; nothing was written".into()
    };
    Error::Failed(format!(
        "{what} has {got} bytes, fewer than the {} bytes to write ({} block(s) of {} bytes){written}",
        p.bytes(),
        p.blocks,
        p.block_size
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_count_is_zeros_based() {
        let p = plan(1, 0, 0, None, 512, 100).unwrap();
        assert_eq!((p.blocks, p.bytes()), (1, 512));
        let p = plan(1, 10, 7, Some(4096), 512, 100).unwrap();
        assert_eq!((p.slba, p.blocks, p.bytes()), (10, 8, 4096));
        let p = plan(1, 0, u16::MAX, None, 4096, 1 << 20).unwrap();
        assert_eq!(p.blocks, 65536);
    }

    #[test]
    fn data_size_must_match() {
        let e = plan(1, 0, 7, Some(512), 512, 100).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let m = e.to_string();
        assert!(
            m.contains("-z 512 does not match -c 7")
                && m.contains("0's based")
                && m.contains("4096 bytes"),
            "{m}"
        );
    }

    #[test]
    fn range_beyond_capacity_names_it() {
        let e = plan(2, 99, 1, None, 512, 100).unwrap_err();
        assert_eq!(e.exit_code(), 1);
        assert_eq!(
            e.to_string(),
            "-s/--start-block 99 -c/--block-count 1: LBA range 99..101 is out of range for namespace 2 (100 blocks)"
        );
        assert!(plan(1, u64::MAX, 0, None, 512, 100).is_err());
        assert!(plan(1, 99, 0, None, 512, 100).is_ok());
    }
}
