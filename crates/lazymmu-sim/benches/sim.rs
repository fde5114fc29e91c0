//! Simulator speed: simulated PTE updates per second for `fork` on one
//! CPU, against a baseline of the same number of plain stores into a
//! vector in the same run; and what the random chooser costs: a run of
//! `lazymmu compare` (its rates of interrupts, preemptions and
//! migrations) against the same run in sequence (no chooser).
#![allow(missing_docs)] // criterion_group! generates undocumented items

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lazymmu_sim::run::run_here;
use lazymmu_sim::scenario::{BackendKind, ModeKind, RunConfig, WorkloadKind};

fn fork_config(backend: BackendKind, mode: ModeKind) -> RunConfig {
    let mut cfg = RunConfig::new(backend, WorkloadKind::Fork, mode);
    cfg.cpus = 1;
    cfg.tasks = 1;
    cfg.pages = 16_384;
    cfg.rates = None;
    cfg
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("fork");
    group.sample_size(20);
    for (backend, mode) in [
        (BackendKind::X86, ModeKind::Lazy),
        (BackendKind::XenPv, ModeKind::Lazy),
        (BackendKind::Arm64Poe, ModeKind::Eager),
    ] {
        let cfg = fork_config(backend, mode);
        // Every update of the run (setup mapping included) is simulated.
        let updates = run_here(&cfg).pte_updates_total;
        group.throughput(Throughput::Elements(updates));
        group.bench_with_input(
            BenchmarkId::new("sim", format!("{backend}-{mode}")),
            &cfg,
            |b, cfg| b.iter(|| black_box(run_here(cfg))),
        );
        // Baseline: the same number of 8-byte stores into host memory.
        group.bench_with_input(
            BenchmarkId::new("baseline-stores", format!("{backend}-{mode}")),
            &updates,
            |b, &n| {
                let mut table = vec![0u64; 512 * 64];
                b.iter(|| {
                    let len = table.len();
                    for i in 0..n as usize {
                        table[(i * 8) % len] = black_box(i as u64) | 1;
                    }
                    black_box(&table);
                })
            },
        );
    }
    group.finish();
}

fn chooser(c: &mut Criterion) {
    let mut group = c.benchmark_group("chooser");
    group.sample_size(10);
    for (backend, workload) in [
        (BackendKind::X86, WorkloadKind::Fork),
        (BackendKind::XenPv, WorkloadKind::Mprotect),
    ] {
        let compare = RunConfig::new(backend, workload, ModeKind::Lazy);
        let sequential = RunConfig {
            rates: None,
            ..compare.clone()
        };
        for (name, cfg) in [("compare-rates", compare), ("sequential", sequential)] {
            group.bench_with_input(
                BenchmarkId::new(name, format!("{backend}-{workload}")),
                &cfg,
                |b, cfg| b.iter(|| black_box(run_here(cfg))),
            );
        }
    }
    group.finish();
}

criterion_group!(benches, bench, chooser);
criterion_main!(benches);
