//! Cost of a lazy-mode enable/disable pair in each design, against one call
//! of a no-op arch hook through the same [`ArchHooks`] trait.
//!
//! The environment is what a kernel has: the current task reached through a
//! per-CPU pointer, and one preemption counter whose upper bits say whether
//! we are in interrupt context (Linux's `preempt_count()` layout,
//! `include/linux/preempt.h`). The hooks do nothing and are called through a
//! `dyn ArchHooks` the optimiser cannot see through, so every hook call costs
//! what the baseline measures and the ratios show the mode's own overhead.
//!
//! Run with `cargo bench -p lazymmu --bench mode`.

use std::cell::Cell;
use std::hint::black_box;
use std::time::Duration;

use criterion::Criterion;
use lazymmu::mode::counters::Counters;
use lazymmu::mode::percpu::{PerCpu, PerCpuEnvironment};
use lazymmu::mode::stateful::{FromHooks, Stateful};
use lazymmu::mode::{ArchHooks, Environment, LazyMode, LazyState, MisusePolicy};

/// Hard-irq, soft-irq and NMI bits of Linux's preempt count
/// (`include/linux/preempt.h`: preemption in bits 0-7, softirq 8-15,
/// hardirq 16-19, NMI 20-23).
const INTERRUPT_MASK: u32 = 0x00ff_ff00;

/// A task: the only lazy state it holds is the counter design's two bytes.
struct Task {
    lazy: Cell<LazyState>,
}

/// One CPU: the current-task pointer, the preempt count and the per-CPU
/// design's slot.
struct Cpu {
    current: Cell<&'static Task>,
    preempt_count: Cell<u32>,
    lazy: Cell<LazyState>,
}

impl Cpu {
    fn new() -> Self {
        let task: &'static Task = Box::leak(Box::new(Task {
            lazy: Cell::new(LazyState::IDLE),
        }));
        Cpu {
            current: Cell::new(task),
            preempt_count: Cell::new(0),
            lazy: Cell::new(LazyState::IDLE),
        }
    }
}

impl lazymmu::cpu::Cpu for Cpu {
    #[inline]
    fn cpu_id(&self) -> lazymmu::cpu::CpuId {
        lazymmu::cpu::CpuId(0)
    }
    #[inline]
    fn in_interrupt(&self) -> bool {
        self.preempt_count.get() & INTERRUPT_MASK != 0
    }
    #[inline]
    fn preempt_disable(&self) {
        self.preempt_count.set(self.preempt_count.get() + 1);
    }
    #[inline]
    fn preempt_enable(&self) {
        self.preempt_count.set(self.preempt_count.get() - 1);
    }
}

impl Environment for Cpu {
    #[inline]
    fn lazy_state(&self) -> LazyState {
        self.current.get().lazy.get()
    }
    #[inline]
    fn set_lazy_state(&self, state: LazyState) {
        self.current.get().lazy.set(state);
    }
}

impl PerCpuEnvironment for Cpu {
    #[inline]
    fn cpu_lazy_state(&self) -> LazyState {
        self.lazy.get()
    }
    #[inline]
    fn set_cpu_lazy_state(&self, state: LazyState) {
        self.lazy.set(state);
    }
}

/// Hooks that do nothing: an arch with nothing to batch.
struct NopHooks;

impl ArchHooks for NopHooks {
    fn enter(&self) {}
    fn leave(&self) {}
    fn flush(&self) {}
}

static NOP_HOOKS: NopHooks = NopHooks;

/// The hooks as the designs and the baseline see them: behind a pointer the
/// optimiser cannot resolve.
fn hooks() -> &'static dyn ArchHooks {
    black_box(&NOP_HOOKS as &dyn ArchHooks)
}

/// The three pairs for one design; `raw` opens and closes with the raw
/// operations so that the stateful design's tokens are threaded as a
/// caller would.
fn pairs<M: LazyMode>(
    c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    mode: &M,
) {
    c.bench_function(format!("{name}/outer_pair"), |b| {
        b.iter(|| {
            let mode = black_box(mode);
            let open = mode.enable().expect("enable");
            black_box(mode.disable(open.token).expect("disable"));
        })
    });
    let outer = mode.enable().expect("outer enable").token;
    c.bench_function(format!("{name}/nested_pair"), |b| {
        b.iter(|| {
            let mode = black_box(mode);
            let open = mode.enable().expect("enable");
            black_box(mode.disable(open.token).expect("disable"));
        })
    });
    // Pausing inside a section: the arch leaves and re-enters.
    c.bench_function(format!("{name}/pause_pair"), |b| {
        b.iter(|| {
            let mode = black_box(mode);
            let paused = mode.pause_raw().expect("pause");
            black_box(mode.resume(paused.token).expect("resume"));
        })
    });
    mode.disable(outer).expect("outer disable");
    assert_eq!(mode.state(), LazyState::IDLE);
}

fn bench_mode(c: &mut Criterion) {
    let mut group = c.benchmark_group("mode");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));

    let arch = hooks();
    group.bench_function("baseline/empty_hook", |b| {
        b.iter(|| black_box(arch).flush())
    });

    let cpu = Cpu::new();
    pairs(
        &mut group,
        "counters",
        &Counters::new(&cpu, hooks(), MisusePolicy::Count),
    );
    pairs(
        &mut group,
        "stateful",
        &Stateful::new(&cpu, FromHooks::new(hooks()), MisusePolicy::Count),
    );
    pairs(
        &mut group,
        "percpu",
        &PerCpu::new(&cpu, hooks(), MisusePolicy::Count),
    );
    assert_eq!(cpu.preempt_count.get(), 0);
    group.finish();
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    bench_mode(&mut criterion);
    criterion.final_summary();
}
