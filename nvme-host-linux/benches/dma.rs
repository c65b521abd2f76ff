//! DMA buffer allocation: `Controller::alloc_dma` and the buffer's drop, against the
//! software controller (`trtype:sim`, in this process). Each iteration allocates a buffer
//! and frees it; a few buffers stay allocated meanwhile, as in an application.
//!
//! With the transport's DMA pool an allocation is a first-fit search in an already mapped
//! region (and zeroing the range); without it, each buffer was its own memfd, `mmap` and
//! device mapping. Numbers depend on the machine: compare side by side within one session.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use nvme_host_linux::Controller;

fn alloc_free(c: &mut Criterion) {
    let ctrl = Controller::attach("trtype:sim size:16M").expect("attach sim");
    // Long-lived buffers beside the ones the loop allocates.
    let _kept: Vec<_> = (0..4).map(|_| ctrl.alloc_dma(4096).unwrap()).collect();
    let mut group = c.benchmark_group("dma_alloc_free");
    group.measurement_time(Duration::from_secs(3));
    for len in [4096usize, 128 << 10] {
        group.bench_function(format!("{}k", len >> 10), |b| {
            b.iter(|| {
                let buf = ctrl.alloc_dma(len).unwrap();
                std::hint::black_box(buf.iova());
            })
        });
    }
    group.finish();
}

criterion_group!(benches, alloc_free);
criterion_main!(benches);
