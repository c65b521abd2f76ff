//! `read` / `write`: nvme-cli's options (`-s` start block, `-c` 0's based block count, `-z`
//! data size) checked into an [`IoPlan`], then run on a queue pair that lives only for the
//! call.
//!
//! The plan is checked before anything else happens: `write` opens and reads its input only
//! once the range fits the namespace, and then reads only the bytes the blocks take, one
//! DMA buffer (at most one maximum transfer) at a time, straight into that buffer: its
//! memory does not depend on the input (`-d /dev/zero` is fine).

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

fn queue(ctrl: &Controller) -> Result<nvme_host_linux::IoQueuePair> {
    let entries = QUEUE_ENTRIES.min(ctrl.info().cap.max_queue_entries());
    Ok(ctrl.alloc_io_queue(QueueOptions { entries })?)
}

/// Runs the plan's blocks through one DMA buffer of at most one maximum transfer: `each`
/// gets the buffer, the LBA and the byte range of the whole transfer for each command.
fn transfer(
    ctrl: &Controller,
    p: &IoPlan,
    mut each: impl FnMut(
        &mut nvme_host_linux::IoQueuePair,
        &mut nvme_host_linux::DmaBuffer,
        u64,
        std::ops::Range<usize>,
    ) -> Result<()>,
) -> Result<()> {
    let chunk = chunk_bytes(ctrl, p.block_size).min(p.bytes());
    let mut qp = queue(ctrl)?;
    let mut buf = ctrl.alloc_dma(chunk)?;
    let mut done = 0;
    while done < p.bytes() {
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
    transfer(ctrl, p, |qp, buf, lba, range| {
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
    write_from(ctrl, p, &mut &data[..], "the data")
}

/// Writes the plan's blocks with data read from `input`: exactly the plan's bytes, read
/// one DMA buffer at a time into that buffer (the rest of the input is never read). An
/// input that ends early is an error that says how much was read and which blocks were
/// written before it ended.
pub fn write_from(
    ctrl: &Controller,
    p: &IoPlan,
    input: &mut dyn std::io::Read,
    what: &str,
) -> Result<()> {
    transfer(ctrl, p, |qp, buf, lba, range| {
        let n = range.len();
        let got = fill(input, &mut buf.as_mut_slice()[..n])
            .map_err(|e| Error::Failed(format!("reading {what}: {e}")))?;
        if got < n {
            return Err(short_input(p, range.start + got, what, lba));
        }
        qp.write_sync(p.nsid, lba, buf.slice(0..n)?)?;
        Ok(())
    })
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
