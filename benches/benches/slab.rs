//! Frame slab costs: taking and returning frames on the per-packet path.
//!
//! Run: `cargo bench -p shadowmesh-benches --bench slab`. The figure the README quotes is
//! `slab/take_give_1` (one frame out and back, the cost per packet).
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use shadowmesh_platform::slab::{FrameId, Slab};

/// 64 KiB super-packet plus 256 bytes of headroom, as the offload path uses.
const FRAME: usize = 65536 + 256;
const FRAMES: usize = 1024;

fn take_give(c: &mut Criterion) {
    let mut g = c.benchmark_group("slab");
    let mut slab = Slab::new(FRAME, FRAMES).expect("slab");

    g.throughput(Throughput::Elements(1));
    g.bench_function("take_give_1", |b| {
        b.iter(|| {
            let id = slab.take().expect("free frame");
            slab.give(black_box(id));
        })
    });

    // A batch of 32 (one io_uring completion batch): all out, then all back.
    g.throughput(Throughput::Elements(32));
    let mut held: Vec<FrameId> = Vec::with_capacity(32);
    g.bench_function("take_give_batch_32", |b| {
        b.iter(|| {
            for _ in 0..32 {
                held.push(slab.take().expect("free frame"));
            }
            for id in held.drain(..) {
                slab.give(black_box(id));
            }
        })
    });

    // Touching the frame: take, write a 1420-byte packet's first cache lines, give back.
    g.throughput(Throughput::Elements(1));
    g.bench_function("take_write64_give", |b| {
        b.iter(|| {
            let id = slab.take().expect("free frame");
            slab.frame_mut(id)[..64].fill(black_box(0xa5));
            slab.give(id);
        })
    });

    g.bench_function("new_1024x64k", |b| {
        b.iter_batched(
            || (),
            |()| Slab::new(FRAME, FRAMES).expect("slab"),
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, take_give);
criterion_main!(benches);
