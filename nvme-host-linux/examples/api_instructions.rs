//! The instruction counter's host-API workload (`cargo xtask bench --instructions`):
//! `api_instructions MODE BATCH IOS` reads 4 KiB `IOS` times through an
//! [`IoQueuePair`](nvme_host_linux::IoQueuePair), `BATCH` (1 or 32) at a time, from the
//! in-process software controller (`trtype:sim`, which runs on a thread of its own). As in
//! `nvme-core/examples/engine_instructions.rs`, two ways of calling the driver:
//!
//! - `loop`: an application's loop ([`app_loop`]) with the driver's calls inlined into it;
//!   its own bookkeeping counts as the driver's.
//! - `calls`: each range-and-read, each doorbell and each completion pass through a
//!   never-inlined function ([`driver_submit`], [`driver_ring`], [`driver_poll`]).
//!
//! Under callgrind, collection is toggled on by the loop or those functions; waiting for
//! the controller ([`wait_for_controller`]) toggles it off again, and the controller's
//! thread never enters them. The completions are processed once the controller has posted
//! every completion of the batch (its completion counter says so), so no empty pass is
//! counted:
//!
//! ```sh
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*app_loop*' \
//!   --toggle-collect='*wait_for_controller*' \
//!   target/release/examples/api_instructions loop 32 20000
//! ```

use nvme_host_linux::sim::SimController;
use nvme_host_linux::{Controller, DmaBuffer, IoQueuePair, QueueOptions};

/// The LBAs read wrap within the 64 MiB namespace (of 512-byte blocks).
const LBA_MASK: u64 = (64 << 11) - 1;

/// A failed I/O: out of the counted path.
#[cold]
#[inline(never)]
fn failed(what: &str, token: u64) -> ! {
    panic!("{what} {token} failed")
}

/// Waits until the controller has posted `posted` completions in all (not counted).
#[inline(never)]
fn wait_for_controller(sim: &SimController, posted: u64) {
    while sim.stats().completions < posted {
        std::thread::yield_now();
    }
}

/// An application's loop: `batch` reads into slots 0.. of the buffer (the token counts the
/// reads), one doorbell, then their completions. Returns the sum of the tokens completed.
#[inline(never)]
fn app_loop(
    qp: &mut IoQueuePair,
    buf: &mut DmaBuffer,
    sim: &SimController,
    nsid: u32,
    batch: usize,
    ios: u64,
) -> u64 {
    let mut posted = sim.stats().completions;
    let mut lba = 0u64;
    let mut sum = 0u64;
    let mut token = 0u64;
    for _ in 0..ios / batch as u64 {
        for slot in 0..batch {
            let Ok(range) = buf.slice(slot * 4096..(slot + 1) * 4096) else {
                failed("range", token);
            };
            if qp.read(nsid, lba, range, token).is_err() {
                failed("read", token);
            }
            token += 1;
            lba = (lba + 8) & LBA_MASK;
        }
        qp.ring();
        posted += batch as u64;
        wait_for_controller(sim, posted);
        let mut got = 0;
        while got < batch {
            got += qp.process_completions(usize::MAX, |token, r| {
                if r.is_err() {
                    failed("read", token);
                }
                sum = sum.wrapping_add(token);
            });
        }
    }
    sum
}

/// One 4 KiB read into slot `slot` of the buffer, as a call of its own.
#[inline(never)]
fn driver_submit(
    qp: &mut IoQueuePair,
    buf: &mut DmaBuffer,
    nsid: u32,
    lba: u64,
    slot: usize,
    token: u64,
) {
    let Ok(range) = buf.slice(slot * 4096..(slot + 1) * 4096) else {
        failed("range", token);
    };
    if qp.read(nsid, lba, range, token).is_err() {
        failed("read", token);
    }
}

/// The doorbell for the batch.
#[inline(never)]
fn driver_ring(qp: &mut IoQueuePair) {
    qp.ring();
}

/// Completion processing. Returns the requests finished.
#[inline(never)]
fn driver_poll(qp: &mut IoQueuePair, sum: &mut u64) -> usize {
    qp.process_completions(usize::MAX, |token, r| {
        if r.is_err() {
            failed("read", token);
        }
        *sum = sum.wrapping_add(token);
    })
}

/// The same reads through [`driver_submit`], [`driver_ring`] and [`driver_poll`].
fn calls(
    qp: &mut IoQueuePair,
    buf: &mut DmaBuffer,
    sim: &SimController,
    nsid: u32,
    batch: usize,
    ios: u64,
) -> u64 {
    let mut posted = sim.stats().completions;
    let mut lba = 0u64;
    let mut sum = 0u64;
    let mut token = 0u64;
    for _ in 0..ios / batch as u64 {
        for slot in 0..batch {
            driver_submit(qp, buf, nsid, lba, slot, token);
            token += 1;
            lba = (lba + 8) & LBA_MASK;
        }
        driver_ring(qp);
        posted += batch as u64;
        wait_for_controller(sim, posted);
        let mut got = 0;
        while got < batch {
            got += driver_poll(qp, &mut sum);
        }
    }
    sum
}

fn main() -> Result<(), nvme_host_linux::Error> {
    let usage = "usage: api_instructions loop|calls 1|32 IOS";
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, batch, ios] = args.as_slice() else {
        panic!("{usage}");
    };
    let batch: usize = batch.parse().expect(usage);
    let ios: u64 = ios.parse().expect(usage);
    assert!(batch == 1 || batch == 32, "{usage}");
    let ios = ios / batch as u64 * batch as u64;
    let ctrl = Controller::attach("trtype:sim lbasize:512 size:64M")?;
    let nsid = ctrl.namespaces()[0].id();
    let sim = ctrl.sim().expect("an in-process software controller");
    let mut qp = ctrl.alloc_io_queue(QueueOptions::new(256))?;
    let mut buf = ctrl.alloc_dma(32 * 4096)?;
    let sum = match mode.as_str() {
        "loop" => app_loop(&mut qp, &mut buf, sim, nsid, batch, ios),
        "calls" => calls(&mut qp, &mut buf, sim, nsid, batch, ios),
        _ => panic!("{usage}"),
    };
    // Every read's token came back once.
    assert_eq!(sum, ios * (ios - 1) / 2, "completions lost or repeated");
    println!("{ios} reads of 4 KiB at batch {batch} ({mode})");
    Ok(())
}
