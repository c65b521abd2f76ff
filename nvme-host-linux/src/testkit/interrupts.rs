//! Checked I/O through interrupt-driven queue pairs ([`interrupt_io`]): the child role of
//! the interrupt scenarios, against the software controller and in the VM.

use std::time::Duration;

use super::{pattern, say};
use crate::{Controller, DmaBuffer, IoQueuePair, QueueOptions};

/// Creates two queue pairs with interrupts, one after the other (so the second one's set-up
/// happens on a function whose MSI-X the first one enabled, and must leave the first one's
/// vector alone), reports `VECTOR <qid> <vector> <qid> <vector>`, then, `rounds` times and
/// through each queue pair in turn, writes and reads back `4096` bytes at `lba` of
/// namespace `nsid` (blocks of `block_size` bytes, dividing 4096), waiting on the interrupt
/// for each completion. Reports `IRQS <consumed by the first> <by the second>`. An error
/// when a queue got no vector, an I/O fails or the data read back differs.
pub fn interrupt_io(
    ctrl: &Controller,
    nsid: u32,
    lba: u64,
    block_size: usize,
    rounds: u64,
) -> Result<(), String> {
    let opts = QueueOptions::new(16).with_interrupts(true);
    let mut qps = Vec::new();
    let mut line = String::from("VECTOR");
    for _ in 0..2 {
        let qp = ctrl.alloc_io_queue(opts).map_err(|e| e.to_string())?;
        let vector = qp
            .interrupt_vector()
            .ok_or_else(|| format!("no interrupt: {:?}", qp.interrupt_fallback()))?;
        line += &format!(" {} {vector}", qp.qid());
        qps.push(qp);
    }
    say(line);
    let mut buf = ctrl.alloc_dma(4096).map_err(|e| e.to_string())?;
    for round in 0..rounds {
        for qp in &mut qps {
            let seed = lba ^ round << 32 ^ u64::from(qp.qid()) << 48;
            pattern::fill(seed, lba, block_size, buf.as_mut_slice());
            io(qp, &mut buf, |qp, b| qp.write(nsid, lba, b, 0))?;
            buf.as_mut_slice().fill(0);
            io(qp, &mut buf, |qp, b| qp.read(nsid, lba, b, 0))?;
            pattern::check(seed, lba, block_size, buf.as_slice())?;
        }
    }
    say(format!(
        "IRQS {} {}",
        qps[0].interrupts_seen(),
        qps[1].interrupts_seen()
    ));
    Ok(())
}

/// Submits one command with `submit` and waits on the interrupt for its completion.
fn io(
    qp: &mut IoQueuePair,
    buf: &mut DmaBuffer,
    submit: impl FnOnce(&mut IoQueuePair, &mut DmaBuffer) -> crate::Result<()>,
) -> Result<(), String> {
    submit(qp, buf).map_err(|e| e.to_string())?;
    let mut result = None;
    while result.is_none() {
        qp.wait(Some(Duration::from_secs(10)), 1, |_, r| result = Some(r))
            .map_err(|e| e.to_string())?;
    }
    result.expect("set").map_err(|e| e.to_string())
}

/// The calling thread's CPU time.
fn thread_cpu() -> Duration {
    use nix::time::{clock_gettime, ClockId};
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).map_or(Duration::ZERO, |t| {
        Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32)
    })
}

/// What waiting for `ios` reads of one block at QD1 from namespace `nsid` cost this thread:
/// (CPU time, wall time), through a queue pair with interrupts (`interrupts`) or a polled
/// one, each completion awaited with [`IoQueuePair::wait`].
pub fn wait_cost(
    ctrl: &Controller,
    nsid: u32,
    ios: u64,
    interrupts: bool,
) -> Result<(Duration, Duration), String> {
    let bs = ctrl
        .namespace(nsid)
        .map_err(|e| e.to_string())?
        .block_size() as usize;
    let mut qp = ctrl
        .alloc_io_queue(QueueOptions::new(4).with_interrupts(interrupts))
        .map_err(|e| e.to_string())?;
    if interrupts && qp.interrupt_vector().is_none() {
        return Err(format!("no interrupt: {:?}", qp.interrupt_fallback()));
    }
    let mut buf = ctrl.alloc_dma(bs).map_err(|e| e.to_string())?;
    let (cpu, wall) = (thread_cpu(), std::time::Instant::now());
    for i in 0..ios {
        io(&mut qp, &mut buf, |qp, b| qp.read(nsid, i, b, i))?;
    }
    Ok((thread_cpu() - cpu, wall.elapsed()))
}

/// Checks what one [`interrupt_io`] child reported (its `VECTOR` and `IRQS` lines): each
/// queue's vector is its queue id and each queue consumed interrupts. Returns the vectors.
pub fn check_interrupt_report(vector_line: &str, irqs_line: &str) -> Result<Vec<u16>, String> {
    let numbers = |line: &str, prefix: &str| -> Result<Vec<u64>, String> {
        line.strip_prefix(prefix)
            .ok_or_else(|| format!("not a {prefix} line: {line}"))?
            .split_whitespace()
            .map(|w| {
                w.parse()
                    .map_err(|_| format!("{line}: {w} is not a number"))
            })
            .collect()
    };
    let v = numbers(vector_line, "VECTOR")?;
    if v.len() != 4 || v[0] != v[1] || v[2] != v[3] {
        return Err(format!(
            "each queue's vector should be its queue id: {vector_line}"
        ));
    }
    let irqs = numbers(irqs_line, "IRQS")?;
    if irqs.len() != 2 || irqs.contains(&0) {
        return Err(format!(
            "a queue whose waits consumed no interrupt (was its vector taken over?): {irqs_line}"
        ));
    }
    Ok(vec![v[1] as u16, v[3] as u16])
}

/// Checks the reports of several [`interrupt_io`] children ([`check_interrupt_report`] for
/// each, `(VECTOR line, IRQS line)`) and that no two queues share a vector. Returns them.
pub fn check_interrupt_reports(reports: &[(String, String)]) -> Result<Vec<u16>, String> {
    let mut all = Vec::new();
    for (v, i) in reports {
        all.extend(check_interrupt_report(v, i)?);
    }
    let mut sorted = all.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != all.len() {
        return Err(format!("two queues on one vector: {all:?}"));
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_checked() {
        let ok = |v: &str, i: &str| (v.to_string(), i.to_string());
        assert_eq!(
            check_interrupt_reports(&[
                ok("VECTOR 1 1 2 2", "IRQS 5 6"),
                ok("VECTOR 3 3 4 4", "IRQS 1 1")
            ]),
            Ok(vec![1, 2, 3, 4])
        );
        assert!(check_interrupt_report("VECTOR 1 2 2 2", "IRQS 5 6").is_err());
        assert!(check_interrupt_report("VECTOR 1 1 2 2", "IRQS 5 0")
            .unwrap_err()
            .contains("taken over"));
        assert!(check_interrupt_reports(&[
            ok("VECTOR 1 1 2 2", "IRQS 1 1"),
            ok("VECTOR 2 2 3 3", "IRQS 1 1")
        ])
        .unwrap_err()
        .contains("one vector"));
        assert!(check_interrupt_report("IRQS 1 1", "IRQS 1 1").is_err());
    }
}
