//! The instruction counter's host-API workload (`cargo xtask bench --instructions`):
//! `api_instructions BATCH IOS` reads 4 KiB `IOS` times through an
//! [`IoQueuePair`](nvme_host_linux::IoQueuePair), `BATCH` at a time, from the in-process
//! software controller (`trtype:sim`, which runs on a thread of its own).
//!
//! Under callgrind, collection is toggled on and off by [`driver_submit`] (a range of the
//! buffer and `read`), [`driver_ring`] and [`driver_poll`] (`process_completions`), so only
//! those count; the controller's thread never enters them. `driver_poll` is called once
//! the controller has posted every completion of the batch (its completion counter says
//! so), so no empty poll is counted:
//!
//! ```sh
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*driver_submit*' \
//!   --toggle-collect='*driver_ring*' --toggle-collect='*driver_poll*' \
//!   target/release/examples/api_instructions 32 20000
//! ```

use nvme_host_linux::{Controller, DmaBuffer, IoQueuePair, QueueOptions};

/// One 4 KiB read of slot `slot` of the buffer. Never inlined: callgrind toggles collection
/// on its entry and exit.
#[inline(never)]
fn driver_submit(qp: &mut IoQueuePair, buf: &mut DmaBuffer, nsid: u32, lba: u64, slot: usize) {
    let range = buf.slice(slot * 4096..(slot + 1) * 4096).expect("range");
    if let Err(e) = qp.read(nsid, lba, range, slot as u64) {
        panic!("read: {e}");
    }
}

/// The doorbell for the batch.
#[inline(never)]
fn driver_ring(qp: &mut IoQueuePair) {
    qp.ring();
}

/// Completion processing. Returns the requests finished.
#[inline(never)]
fn driver_poll(qp: &mut IoQueuePair) -> usize {
    qp.process_completions(usize::MAX, |token, r| {
        if let Err(e) = r {
            panic!("read {token}: {e}");
        }
    })
}

fn main() -> Result<(), nvme_host_linux::Error> {
    let mut args = std::env::args().skip(1);
    let mut arg = |default: u64| {
        args.next()
            .map_or(default, |a| a.parse().expect("BATCH and IOS are numbers"))
    };
    let batch = arg(1).clamp(1, 32) as usize;
    let ios = arg(20_000);
    let ctrl = Controller::attach("trtype:sim lbasize:512 size:64M")?;
    let nsid = ctrl.namespaces()[0].id();
    let sim = ctrl.sim().expect("an in-process software controller");
    let mut qp = ctrl.alloc_io_queue(QueueOptions::new(256))?;
    let mut buf = ctrl.alloc_dma(32 * 4096)?;
    let mut posted = sim.stats().completions;
    let mut done = 0u64;
    let mut lba = 0u64;
    while done < ios {
        let n = (batch as u64).min(ios - done) as usize;
        for slot in 0..n {
            driver_submit(&mut qp, &mut buf, nsid, lba, slot);
            lba = (lba + 8) % (64 << 11);
        }
        driver_ring(&mut qp);
        posted += n as u64;
        while sim.stats().completions < posted {
            std::thread::yield_now();
        }
        let mut got = 0;
        while got < n {
            got += driver_poll(&mut qp);
        }
        done += n as u64;
    }
    println!("{ios} reads of 4 KiB at batch {batch}");
    Ok(())
}
