//! The queue engine against the software controller: 4 KiB random reads at QD1 and QD32 on
//! one queue pair. Criterion reports the time per I/O; IOPS = 1 / that time (it also prints
//! the throughput in elements, i.e. I/Os, per second).
//!
//! The controller runs on its own thread, so on a 2-core machine the benchmark and the
//! controller each get a core; numbers depend on the machine and are for side-by-side
//! comparison within one run.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use nvme_host_linux::{Controller, QueueOptions};

fn random_reads(c: &mut Criterion) {
    let ctrl = Controller::attach("trtype:sim size:256M").expect("attach sim");
    let ns = ctrl.namespaces()[0].clone();
    let blocks_per_io = 4096 / ns.block_size() as u64;
    let ios = ns.blocks() / blocks_per_io;
    let mut group = c.benchmark_group("sim_randread_4k");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(5));
    for qd in [1usize, 32] {
        let mut qp = ctrl.alloc_io_queue(QueueOptions::new(256)).unwrap();
        let mut buf = ctrl.alloc_dma(qd * 4096).unwrap();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next_lba = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % ios) * blocks_per_io
        };
        group.bench_function(format!("qd{qd}"), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                let mut submitted = 0u64;
                let mut completed = 0u64;
                for slot in 0..qd.min(iters as usize) {
                    qp.read(
                        ns.id(),
                        next_lba(),
                        buf.slice(slot * 4096..(slot + 1) * 4096).unwrap(),
                        slot as u64,
                    )
                    .unwrap();
                    submitted += 1;
                }
                let mut free = Vec::with_capacity(qd);
                while completed < iters {
                    qp.process_completions(usize::MAX, |slot, r| {
                        r.expect("read");
                        free.push(slot as usize);
                    });
                    for slot in free.drain(..) {
                        completed += 1;
                        if submitted < iters {
                            qp.read(
                                ns.id(),
                                next_lba(),
                                buf.slice(slot * 4096..(slot + 1) * 4096).unwrap(),
                                slot as u64,
                            )
                            .unwrap();
                            submitted += 1;
                        }
                    }
                }
                start.elapsed()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, random_reads);
criterion_main!(benches);
