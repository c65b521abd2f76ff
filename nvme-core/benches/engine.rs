//! The core engine alone: submit + complete of 4 KiB reads through a [`QueuePair`] against a
//! fake device that completes every command the moment its doorbell is written (same
//! thread, no simulator, no system call). What is measured is the driver's own per-I/O work:
//! CID allocation, PRP setup, the SQE write, the doorbell, the CQE read, the CID lookup and
//! the completion callback.
//!
//! `cargo xtask bench -- engine` (or `cargo bench -p nvme-core`). Criterion reports the time
//! per I/O; compare runs side by side on the same machine.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use nvme_core::Command;

mod support;
use support::PAGE;

fn engine(c: &mut Criterion) {
    let (mut qp, data) = support::rig();
    let read = Command::read(1, 0, 1);

    let mut group = c.benchmark_group("engine_read_4k");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(3));
    for batch in [1u64, 32] {
        group.bench_function(format!("batch{batch}"), |b| {
            b.iter_custom(|iters| {
                let mut done = 0u64;
                let start = std::time::Instant::now();
                let mut lba = 0u64;
                while done < iters {
                    let n = batch.min(iters - done);
                    for i in 0..n {
                        let buf = data.sub(i as usize * PAGE, PAGE).unwrap();
                        qp.submit_io(read, lba, 512, buf, i).unwrap();
                        lba = (lba + 8) % (1 << 20);
                    }
                    let mut got = 0;
                    while got < n {
                        got += qp.poll(64, |t, c| {
                            std::hint::black_box((t, c));
                        }) as u64;
                    }
                    done += n;
                }
                start.elapsed()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, engine);
criterion_main!(benches);
