//! The instruction counter's core-engine workload (`cargo xtask bench --instructions`):
//! `engine_instructions BATCH IOS` submits and completes `IOS` 4 KiB reads through a
//! [`QueuePair`](nvme_core::QueuePair), `BATCH` at a time, against the same-thread fake device
//! of `benches/engine.rs`.
//!
//! Run natively it only does the I/O. Under callgrind, with collection toggled on by
//! [`driver_submit`] and [`driver_poll`] and off again by the fake device's
//! `fake_device_work`, the instructions counted are the driver's alone:
//!
//! ```sh
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*driver_submit*' \
//!   --toggle-collect='*driver_poll*' --toggle-collect='*fake_device_work*' \
//!   target/release/examples/engine_instructions 32 100000
//! ```

use nvme_core::{Command, DmaRegion};

#[path = "../benches/support/mod.rs"]
mod support;
use support::{Qp, PAGE};

/// The driver's submission of one 4 KiB read (512-byte blocks). Never inlined: callgrind
/// toggles collection on its entry and exit.
#[inline(never)]
fn driver_submit(qp: &mut Qp<'_>, buf: DmaRegion, lba: u64, token: u64) {
    if let Err(e) = qp.submit_io(Command::read(1, 0, 1), lba, 512, buf, token) {
        panic!("submit: {e}");
    }
}

/// The driver's doorbell write and completion processing (the fake device's work inside it
/// toggles collection off). Returns the requests finished.
#[inline(never)]
fn driver_poll(qp: &mut Qp<'_>) -> usize {
    qp.poll(64, |token, c| {
        std::hint::black_box((token, c));
    })
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut arg = |default: u64| {
        args.next()
            .map_or(default, |a| a.parse().expect("BATCH and IOS are numbers"))
    };
    let batch = arg(1).clamp(1, 32);
    let ios = arg(100_000);
    let (mut qp, data) = support::rig();
    let bufs: Vec<DmaRegion> = (0..32).map(|i| data.sub(i * PAGE, PAGE).unwrap()).collect();
    let mut done = 0u64;
    let mut lba = 0u64;
    while done < ios {
        let n = batch.min(ios - done);
        for i in 0..n {
            driver_submit(&mut qp, bufs[i as usize], lba, i);
            lba = (lba + 8) % (1 << 20);
        }
        let mut got = 0;
        while got < n {
            got += driver_poll(&mut qp) as u64;
        }
        done += n;
    }
    println!("{ios} reads of 4 KiB at batch {batch}");
}
