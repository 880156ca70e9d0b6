//! Criterion micro-benchmarks of the scheduler's hot paths: the virtual queue (push into a lane,
//! `pop_ready` out of it) and the dispatch limiter (`ShardBudget::try_acquire`).
//!
//! `cargo bench -p nexus-bench --bench micro`. Pure structures only: no I/O, no runtime.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use nexus_model::run::RunId;
use nexus_scheduler::limiter::ShardBudget;
use nexus_scheduler::{BudgetConfig, Queued, VirtualQueue};
use tokio::time::Instant;

fn queue(c: &mut Criterion) {
    let mut g = c.benchmark_group("queue");
    // A lane holding 10,000 runs (a steady depth): one push and one pop per iteration.
    let vq = VirtualQueue::new(usize::MAX);
    let lane = vq.lane("local");
    for _ in 0..10_000 {
        vq.push(Queued {
            id: RunId::new(),
            shard: "local".into(),
            attempt: 0,
        });
    }
    let id = RunId::new();
    let now = Instant::now();
    g.bench_function("push + pop_ready (depth 10k)", |b| {
        b.iter(|| {
            vq.push(Queued {
                id: black_box(id),
                shard: "local".into(),
                attempt: 0,
            });
            black_box(lane.pop_ready(now))
        });
    });
    g.bench_function("pop_ready on an empty lane", |b| {
        let empty = vq.lane("empty");
        b.iter(|| black_box(empty.pop_ready(now)));
    });
    g.finish();
}

fn limiter(c: &mut Criterion) {
    let mut g = c.benchmark_group("limiter");
    let now = Instant::now();
    let config = BudgetConfig {
        rate: 1_000.0,
        burst: 1_000,
    };
    // A token is available (the refund keeps it so): the dispatcher's common path.
    let mut full = ShardBudget::new(config, Duration::from_secs(20), now);
    g.bench_function("try_acquire granted (+ refund)", |b| {
        b.iter(|| {
            let r = full.try_acquire(black_box(now));
            full.refund();
            black_box(r)
        });
    });
    // An empty bucket: the answer is how long to wait.
    let mut empty = ShardBudget::new(config, Duration::from_secs(20), now);
    while empty.try_acquire(now).is_ok() {}
    g.bench_function("try_acquire refused (wait computed)", |b| {
        b.iter(|| black_box(empty.try_acquire(black_box(now))));
    });
    g.finish();
}

criterion_group!(benches, queue, limiter);
criterion_main!(benches);
