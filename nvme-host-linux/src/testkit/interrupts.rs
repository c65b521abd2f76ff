//! Checked I/O through an interrupt-driven queue pair ([`interrupt_io`]): the child role of
//! the interrupt scenarios, against the software controller and in the VM.

use std::time::Duration;

use super::{pattern, say};
use crate::{Controller, QueueOptions};

/// Creates a queue pair with interrupts, reports `VECTOR <qid> <vector>`, then writes and
/// reads back `rounds` times `4096` bytes at `lba` of namespace `nsid` (blocks of
/// `block_size` bytes, dividing 4096), waiting on the interrupt for each completion, and
/// reports `IRQS <interrupts consumed>`. An error when the queue got no vector, an I/O fails
/// or the data read back differs.
pub fn interrupt_io(
    ctrl: &Controller,
    nsid: u32,
    lba: u64,
    block_size: usize,
    rounds: u64,
) -> Result<(), String> {
    let mut qp = ctrl
        .alloc_io_queue(QueueOptions::new(16).with_interrupts(true))
        .map_err(|e| e.to_string())?;
    let vector = qp
        .interrupt_vector()
        .ok_or_else(|| format!("no interrupt: {:?}", qp.interrupt_fallback()))?;
    say(format!("VECTOR {} {vector}", qp.qid()));
    let mut buf = ctrl.alloc_dma(4096).map_err(|e| e.to_string())?;
    let wait = Some(Duration::from_secs(10));
    for round in 0..rounds {
        let seed = lba ^ round << 32;
        pattern::fill(seed, lba, block_size, buf.as_mut_slice());
        qp.write(nsid, lba, &mut buf, round)
            .map_err(|e| e.to_string())?;
        let mut result = None;
        while result.is_none() {
            qp.wait(wait, 1, |_, r| result = Some(r))
                .map_err(|e| e.to_string())?;
        }
        result.expect("set").map_err(|e| format!("write: {e}"))?;
        buf.as_mut_slice().fill(0);
        qp.read(nsid, lba, &mut buf, round)
            .map_err(|e| e.to_string())?;
        let mut result = None;
        while result.is_none() {
            qp.wait(wait, 1, |_, r| result = Some(r))
                .map_err(|e| e.to_string())?;
        }
        result.expect("set").map_err(|e| format!("read: {e}"))?;
        pattern::check(seed, lba, block_size, buf.as_slice())?;
    }
    say(format!("IRQS {}", qp.interrupts_seen()));
    Ok(())
}
