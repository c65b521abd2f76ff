//! The instruction counter's core-engine workload (`cargo xtask bench --instructions`):
//! `engine_instructions MODE BATCH IOS` submits and completes `IOS` 4 KiB reads through a
//! [`QueuePair`](nvme_core::QueuePair), `BATCH` (1 or 32) at a time, against the same-thread
//! fake device of `benches/engine.rs`. Two ways of calling the driver, two counts:
//!
//! - `loop`: an application's I/O loop ([`app_loop_depth1`], [`app_loop_batch32`]), the
//!   driver's calls inlined into it as into any caller. Everything in the loop counts but
//!   the fake device's work: the application's own bookkeeping (its loop, the next LBA, the
//!   status check in its completion callback) is counted as the driver's.
//! - `calls`: every submission and every poll through a never-inlined function
//!   ([`driver_submit`], [`driver_poll`]), so each also pays a function's entry and exit
//!   (saving and restoring the registers the driver's code uses).
//!
//! Run natively it only does the I/O. Under callgrind, with collection toggled on by the
//! loop or the two functions and off again by the fake device's `fake_device_work`:
//!
//! ```sh
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*app_loop*' \
//!   --toggle-collect='*fake_device_work*' \
//!   target/release/examples/engine_instructions loop 32 100000
//! ```

use nvme_core::{Command, DmaRegion};

#[path = "../benches/support/mod.rs"]
mod support;
use support::{Qp, PAGE};

/// The LBAs read wrap within the first 512 MiB (of 512-byte blocks).
const LBA_MASK: u64 = (1 << 20) - 1;

/// A failed I/O: out of the counted path.
#[cold]
#[inline(never)]
fn failed(what: &str, token: u64) -> ! {
    panic!("{what} {token} failed")
}

/// An application's loop at depth 1: submit a read, poll until it completes, the next.
/// Each read's token is its number; returns the sum of the tokens completed.
#[inline(never)]
fn app_loop_depth1(qp: &mut Qp<'_>, buf: DmaRegion, ios: u64) -> u64 {
    let mut lba = 0u64;
    let mut sum = 0u64;
    for token in 0..ios {
        if qp
            .submit_io(Command::read(1, 0, 1), lba, 512, buf, token)
            .is_err()
        {
            failed("submit", token);
        }
        lba = (lba + 8) & LBA_MASK;
        while qp.poll(64, |token, c| {
            if !c.status.is_success() {
                failed("read", token);
            }
            sum = sum.wrapping_add(token);
        }) == 0
        {}
    }
    sum
}

/// An application's loop at depth 32: submit 32 reads, poll until all 32 complete, again.
/// Returns the sum of the tokens completed.
#[inline(never)]
fn app_loop_batch32(qp: &mut Qp<'_>, bufs: &[DmaRegion; 32], ios: u64) -> u64 {
    let mut lba = 0u64;
    let mut sum = 0u64;
    let mut token = 0u64;
    for _ in 0..ios / 32 {
        for buf in bufs {
            if qp
                .submit_io(Command::read(1, 0, 1), lba, 512, *buf, token)
                .is_err()
            {
                failed("submit", token);
            }
            token += 1;
            lba = (lba + 8) & LBA_MASK;
        }
        let mut got = 0;
        while got < 32 {
            got += qp.poll(64, |token, c| {
                if !c.status.is_success() {
                    failed("read", token);
                }
                sum = sum.wrapping_add(token);
            });
        }
    }
    sum
}

/// The driver's submission of one 4 KiB read (512-byte blocks), as a call of its own.
#[inline(never)]
fn driver_submit(qp: &mut Qp<'_>, buf: DmaRegion, lba: u64, token: u64) {
    if qp
        .submit_io(Command::read(1, 0, 1), lba, 512, buf, token)
        .is_err()
    {
        failed("submit", token);
    }
}

/// The driver's doorbell write and completion processing, as a call of its own (the fake
/// device's work inside it toggles collection off). Returns the requests finished.
#[inline(never)]
fn driver_poll(qp: &mut Qp<'_>, sum: &mut u64) -> usize {
    qp.poll(64, |token, c| {
        if !c.status.is_success() {
            failed("read", token);
        }
        *sum = sum.wrapping_add(token);
    })
}

/// The same reads through [`driver_submit`] and [`driver_poll`].
fn calls(qp: &mut Qp<'_>, bufs: &[DmaRegion; 32], batch: u64, ios: u64) -> u64 {
    let mut sum = 0;
    let mut lba = 0u64;
    let mut token = 0u64;
    for _ in 0..ios / batch {
        for buf in &bufs[..batch as usize] {
            driver_submit(qp, *buf, lba, token);
            token += 1;
            lba = (lba + 8) & LBA_MASK;
        }
        let mut got = 0;
        while got < batch {
            got += driver_poll(qp, &mut sum) as u64;
        }
    }
    sum
}

fn main() {
    let usage = "usage: engine_instructions loop|calls 1|32 IOS";
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, batch, ios] = args.as_slice() else {
        panic!("{usage}");
    };
    let batch: u64 = batch.parse().expect(usage);
    let ios: u64 = ios.parse().expect(usage);
    assert!(batch == 1 || batch == 32, "{usage}");
    let ios = ios / batch * batch;
    let (mut qp, data) = support::rig();
    let bufs: [DmaRegion; 32] =
        std::array::from_fn(|i| data.sub(i * PAGE, PAGE).expect("32 pages of data"));
    let sum = match (mode.as_str(), batch) {
        ("loop", 1) => app_loop_depth1(&mut qp, bufs[0], ios),
        ("loop", _) => app_loop_batch32(&mut qp, &bufs, ios),
        ("calls", _) => calls(&mut qp, &bufs, batch, ios),
        _ => panic!("{usage}"),
    };
    // Every read's token (its number) came back once.
    assert_eq!(sum, ios * (ios - 1) / 2, "completions lost or repeated");
    println!("{ios} reads of 4 KiB at batch {batch} ({mode})");
}
