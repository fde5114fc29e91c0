//! Measurements on several CPUs.
//!
//! 1. Map, protect and zap of 4,096 pages in one user address space loaded
//!    on 1, 2 and 4 CPUs (a user task of the space on each, the measuring
//!    one on CPU 0, the others halted in it), with the lazy section
//!    around the whole operation, one per PTE table, or none: TSC cycles
//!    on the measuring CPU, cross-call IPIs sent, IA32_PKRS writes, full
//!    flushes and `invlpg`, summed over every CPU.
//! 2. Context switches per second on every CPU under each `active_mm`
//!    policy: on each CPU a user task of one shared address space (the
//!    threads of one process) and a kernel thread yield to each other, so
//!    every other switch borrows the space lazily and the next gives it
//!    back — a reference taken and dropped on a line all CPUs share under
//!    the refcount and x86 policies, nothing under the shootdown policy.
//!
//! Cycles are QEMU TCG's TSC, which follows host time: four vCPUs share
//! two host cores here, so the figures are ratios on this emulator, not
//! silicon.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use lazymmu::addr::{PhysAddr, SpaceId};
use lazymmu::backend::FlushScope;
use lazymmu::mm::active_mm::LazyTlbStats;
use lazymmu::pgtable::format::Attributes;

use crate::bench::{measure_all, Mode, Operation, Rows, Target, PAGES};
use crate::check::{Outcome, Report};
use crate::percpu::{self, MAX_CPUS};
use crate::sched::{self, Task};
use crate::smp_tests::Cpus;
use crate::sync::SpinLock;
use crate::table::{Column, Table};
use crate::tests::{data_run, free_run};
use crate::{apic, cpu, ensure, ensure_eq, message, mm, paging, println};

/// Runs per range-operation measurement.
const REPEATS: usize = 3;
/// The modes measured on several CPUs.
const MODES: [Mode; 3] = [Mode::OneSection, Mode::PerTable, Mode::NoLazy];

/// The CPU counts measured: 1, 2, 4 (and 8) up to the CPUs online, and
/// the number online.
fn cpu_counts() -> impl Iterator<Item = usize> {
    let online = percpu::online_count();
    [1, 2, 4, 8]
        .into_iter()
        .filter(move |&n| n < online)
        .chain(core::iter::once(online))
}

static SPINNERS_GO_HOME: AtomicBool = AtomicBool::new(false);
static SPINNERS_READY: AtomicUsize = AtomicUsize::new(0);
static MEASURED_SPACE: AtomicU32 = AtomicU32::new(0);
static MEASURED_RUN: AtomicU64 = AtomicU64::new(0);
static MEASURED: SpinLock<Option<(Rows, Report)>> = SpinLock::new(None);

/// "N-CPU shared", for the names of the checks.
fn cpus_name(cpus: usize) -> &'static str {
    const NAMES: [&str; MAX_CPUS] = [
        "1-CPU shared",
        "2-CPU shared",
        "3-CPU shared",
        "4-CPU shared",
        "5-CPU shared",
        "6-CPU shared",
        "7-CPU shared",
        "8-CPU shared",
    ];
    NAMES[cpus.clamp(1, MAX_CPUS) - 1]
}

/// A user task of the measured space that keeps it loaded, non-lazy, on
/// its CPU, halted until the measurement ends.
fn spinner(_: usize) {
    SPINNERS_READY.fetch_add(1, Ordering::AcqRel);
    sched::wait_until(|| SPINNERS_GO_HOME.load(Ordering::Acquire));
}

fn measurer(_: usize) {
    let space = SpaceId(MEASURED_SPACE.load(Ordering::Acquire));
    let target = Target {
        name: cpus_name(SPINNERS_READY.load(Ordering::Acquire) + 1),
        root: mm::root_of(space),
        space,
        base: paging::USER_BASE,
        attrs: Attributes::user_data(),
        scope: FlushScope::Local,
    };
    let mut report = Report::default();
    let run = PhysAddr(MEASURED_RUN.load(Ordering::Acquire));
    let rows = measure_all(&target, run, &MODES, REPEATS, &mut report);
    *MEASURED.lock() = Some((rows, report));
}

/// Runs the range operations with the space loaded on `cpus` CPUs.
fn measure_on(cpus: usize, run: PhysAddr) -> Result<(Rows, Report), crate::check::Message> {
    let space = mm::create_space().map_err(|e| message!("{e}"))?;
    MEASURED_SPACE.store(space.0, Ordering::Release);
    MEASURED_RUN.store(run.0, Ordering::Release);
    SPINNERS_GO_HOME.store(false, Ordering::Release);
    SPINNERS_READY.store(0, Ordering::Release);
    let mut spinners: [Option<&'static Task>; MAX_CPUS] = [None; MAX_CPUS];
    for (cpu, slot) in spinners.iter_mut().enumerate().take(cpus).skip(1) {
        *slot = Some(mm::spawn_user(space, "spinner", spinner, 0, 1 << cpu));
    }
    sched::wait_until(|| SPINNERS_READY.load(Ordering::Acquire) == cpus - 1);
    let task = mm::spawn_user(space, "measure", measurer, 0, 1);
    sched::join(task);
    SPINNERS_GO_HOME.store(true, Ordering::Release);
    for task in spinners.into_iter().flatten() {
        sched::join(task);
    }
    mm::release_space(space);
    MEASURED
        .lock()
        .take()
        .ok_or(message!("the measuring task reported nothing"))
}

const RANGE_COLUMNS: [Column; 8] = [
    Column::number("CPUs", 4),
    Column::label("op", 7),
    Column::label("mode", 19),
    Column::number("TSC cycles", 11),
    Column::number("IPIs", 4),
    Column::number("PKRS writes", 11),
    Column::number("full flushes", 12),
    Column::number("invlpg", 6),
];

/// What the x86 flush policy implies for `cpus` CPUs with the space
/// loaded: the 4,096-page protect and zap are above the 33-page ceiling,
/// so each is one full flush on every CPU (a CR3 reload) and one IPI to
/// each other CPU; a map of absent entries flushes nothing.
fn check_flushes(cpus: usize, rows: &Rows) -> Outcome {
    for &mode in &MODES {
        for (o, &operation) in Operation::ALL.iter().enumerate() {
            let Some(row) = rows[mode as usize][o] else {
                return Err(message!("no {} {} row", operation.name(), mode.name()));
            };
            let (ipis, full) = match operation {
                Operation::Map => (0, 0),
                _ => (cpus as u64 - 1, cpus as u64),
            };
            let what = |what: &str| {
                message!(
                    "{what} for {} {} on {}",
                    operation.name(),
                    mode.name(),
                    Cpus(cpus)
                )
            };
            ensure_eq!(row.ipis, ipis, "{}", what("IPIs").as_str());
            ensure_eq!(
                row.counts.cr3_reloads + row.counts.global_flushes,
                full,
                "{}",
                what("full flushes").as_str()
            );
            ensure_eq!(row.counts.invlpg, 0, "{}", what("invlpg").as_str());
        }
    }
    Ok(())
}

/// The range-operation table (in the active world, the x86 policy).
pub fn run_range_operations(report: &mut Report) {
    let run = match data_run(PAGES as usize) {
        Ok(run) => run,
        Err(message) => {
            report.run("SMP measurements", || Err(message));
            return;
        }
    };
    let mut results: [Option<Rows>; 4] = [None; 4];
    for (slot, cpus) in results.iter_mut().zip(cpu_counts()) {
        match measure_on(cpus, run) {
            Ok((rows, measured)) => {
                report.passed += measured.passed;
                report.failed += measured.failed;
                *slot = Some(rows);
            }
            Err(message) => report.run(format_args!("SMP measurements on {}", Cpus(cpus)), || {
                Err(message)
            }),
        }
    }
    free_run(run, PAGES as usize);
    let table = Table::start(
        format_args!(
            "In-guest SMP measurements: {PAGES} pages of 4 KiB in one address space loaded on N CPUs, {} policy",
            mm::policy().name()
        ),
        &RANGE_COLUMNS,
    );
    for (rows, cpus) in results.iter().zip(cpu_counts()) {
        let Some(rows) = rows else { continue };
        for (o, &operation) in Operation::ALL.iter().enumerate() {
            for &mode in &MODES {
                if let Some(row) = rows[mode as usize][o] {
                    table.row(&[
                        &cpus,
                        &operation.name(),
                        &mode.name(),
                        &row.cycles,
                        &row.ipis,
                        &row.counts.pkrs_writes,
                        &(row.counts.cr3_reloads + row.counts.global_flushes),
                        &row.counts.invlpg,
                    ]);
                }
            }
        }
    }
    println!(
        "cycles: minimum of {REPEATS} runs, on the measuring CPU; counts: all CPUs, the same every run"
    );
    for (rows, cpus) in results.iter().zip(cpu_counts()) {
        let Some(rows) = rows else { continue };
        report.run(
            format_args!(
                "SMP measurements on {}: PKRS writes follow the design",
                Cpus(cpus)
            ),
            || crate::bench::check_pkrs(rows),
        );
        report.run(
            format_args!(
                "SMP measurements on {}: one IPI per other CPU and one full flush per CPU",
                Cpus(cpus)
            ),
            || check_flushes(cpus, rows),
        );
    }
}

// ---- context switches ----------------------------------------------------

/// Yields per task.
const YIELDS: u64 = 5000;

static SWITCH_READY: AtomicUsize = AtomicUsize::new(0);
static SWITCH_GO: AtomicBool = AtomicBool::new(false);
static SWITCH_END: AtomicU64 = AtomicU64::new(0);
/// Switches into the yielding tasks between the start signal and their
/// last yield.
static SWITCH_COUNT: AtomicU64 = AtomicU64::new(0);

fn yield_loop() {
    let me = sched::current();
    let before = me.switches.load(Ordering::Relaxed);
    for _ in 0..YIELDS {
        sched::yield_now();
    }
    SWITCH_END.fetch_max(cpu::rdtsc(), Ordering::AcqRel);
    SWITCH_COUNT.fetch_add(
        me.switches.load(Ordering::Relaxed) - before,
        Ordering::AcqRel,
    );
}

fn switcher(_: usize) {
    SWITCH_READY.fetch_add(1, Ordering::AcqRel);
    sched::wait_until(|| SWITCH_GO.load(Ordering::Acquire));
    yield_loop();
}

/// One row of the context-switch table.
#[derive(Clone, Copy, Debug)]
struct SwitchRow {
    policy: &'static str,
    cpus: usize,
    switches: u64,
    cycles: u64,
    borrow_refs: u64,
    borrows: u64,
}

static SWITCH_ROWS: SpinLock<[Option<SwitchRow>; mm::WORLDS]> = SpinLock::new([None; mm::WORLDS]);

/// Runs of the context-switch measurement per policy; the fastest counts
/// (the host's other work only ever slows a run down).
const SWITCH_REPEATS: usize = 3;

/// Context switches per second on every CPU under the active policy, the
/// fastest of [`SWITCH_REPEATS`] runs; the table is printed once every
/// policy has run ([`print_context_switches`]).
pub fn run_context_switches(report: &mut Report, world: usize) {
    let cpus = percpu::online_count();
    let policy = mm::policy().name();
    let outcome = (|| -> Outcome {
        for _ in 0..SWITCH_REPEATS {
            switch_run(world, cpus, policy)?;
        }
        Ok(())
    })();
    report.run(
        format_args!("context switches on {}, {policy} policy", Cpus(cpus)),
        || outcome,
    );
}

fn switch_run(world: usize, cpus: usize, policy: &'static str) -> Outcome {
    {
        let space = mm::create_space().map_err(|e| message!("{e}"))?;
        SWITCH_READY.store(0, Ordering::Release);
        SWITCH_GO.store(false, Ordering::Release);
        SWITCH_END.store(0, Ordering::Release);
        SWITCH_COUNT.store(0, Ordering::Release);
        let mut tasks: [Option<&'static Task>; 2 * MAX_CPUS] = [None; 2 * MAX_CPUS];
        for cpu in 0..cpus {
            tasks[2 * cpu] = Some(mm::spawn_user(
                space,
                "switch-user",
                switcher,
                cpu,
                1 << cpu,
            ));
            if cpu > 0 {
                tasks[2 * cpu + 1] = Some(sched::spawn("switch-kthread", switcher, cpu, 1 << cpu));
            }
        }
        // The boot task is CPU 0's kernel thread.
        sched::wait_until(|| SWITCH_READY.load(Ordering::Acquire) == 2 * cpus - 1);
        let stats = mm::tlb().stats();
        let refs = LazyTlbStats::get(&stats.borrow_refs);
        let borrows = LazyTlbStats::get(&stats.borrows);
        let start = cpu::rdtsc();
        SWITCH_GO.store(true, Ordering::Release);
        yield_loop();
        for task in tasks.iter().flatten() {
            sched::join(task);
        }
        let switches = SWITCH_COUNT.load(Ordering::Acquire);
        let cycles = SWITCH_END.load(Ordering::Acquire) - start;
        mm::release_space(space);
        // A task whose partner has finished yields to nobody.
        ensure!(
            switches >= YIELDS * cpus as u64,
            "{switches} switches, fewer than one per yield of one task per CPU"
        );
        let row = SwitchRow {
            policy,
            cpus,
            switches,
            cycles,
            borrow_refs: LazyTlbStats::get(&stats.borrow_refs) - refs,
            borrows: LazyTlbStats::get(&stats.borrows) - borrows,
        };
        let mut rows = SWITCH_ROWS.lock();
        let faster =
            |old: &SwitchRow| row.switches * old.cycles.max(1) > old.switches * row.cycles.max(1);
        if rows[world].as_ref().is_none_or(faster) {
            rows[world] = Some(row);
        }
        Ok(())
    }
}

const SWITCH_COLUMNS: [Column; 7] = [
    Column::label("policy", 9),
    Column::number("CPUs", 4),
    Column::number("switches", 8),
    Column::number("switches/s", 10),
    Column::number("cycles/switch", 13),
    Column::number("lazy borrows", 12),
    Column::number("ref updates", 11),
];

/// Prints the context-switch table.
pub fn print_context_switches() {
    let table = Table::start(
        format_args!(
            "In-guest context switches: on each CPU a user task of one shared space and a kernel thread"
        ),
        &SWITCH_COLUMNS,
    );
    for row in SWITCH_ROWS.lock().iter().flatten() {
        // Switches per second: switches / (cycles / TSC Hz).
        let per_second = row.switches * apic::tsc_per_ms() * 1000 / row.cycles.max(1);
        let per_switch = row.cycles * row.cpus as u64 / row.switches.max(1);
        table.row(&[
            &row.policy,
            &row.cpus,
            &row.switches,
            &per_second,
            &per_switch,
            &row.borrows,
            &row.borrow_refs,
        ]);
    }
    println!("yield to each other; switches/s: all CPUs, start signal to the last CPU's end,");
    println!(
        "fastest of {SWITCH_REPEATS} runs; cycles/switch: per CPU; ref updates: mm_count changes"
    );
    println!("for lazy borrows, on a line every CPU shares");
}
