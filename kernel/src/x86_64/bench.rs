//! Measurements in the guest: TSC cycles and exact counts of IA32_PKRS
//! writes, `invlpg`, CR3 reloads and global flushes for map, protect and
//! zap of 4,096 pages, with and without lazy sections, in the kernel's
//! address space (global pages: a full flush toggles CR4.PGE) and in a user
//! address space loaded in CR3 (a full flush reloads CR3).
//!
//! Interrupts are off while an operation runs, so the counts are exactly
//! the operation's (summed over every CPU: the other CPUs are idle here,
//! and only the shootdowns an operation sends make them count anything).
//! Cycles are QEMU TCG's TSC (host time): they show the ratio between the
//! modes on this emulator, where a PKRS write flushes QEMU's whole software
//! TLB, not what silicon would take. The same measurement runs the SMP
//! tables ([`crate::smp_bench`]).

use lazymmu::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use lazymmu::backend::x86::BareMetalCounts;
use lazymmu::backend::{Backend, FlushScope};
use lazymmu::mode::eager::Eager;
use lazymmu::mode::LazyMode;
use lazymmu::pgtable::allocator::FrameAllocator;
use lazymmu::pgtable::format::X86_64;
use lazymmu::pgtable::format::{Attributes, Protection};
use lazymmu::pgtable::gather::Gather;

use crate::check::{Message, Outcome, Report};
use crate::page_tables::{self, kernel_root, KernelMemory, TABLE_FRAMES};
use crate::paging::{self, backend, lazy, native_backend, KernelLazy, USER_BASE};
use crate::pks::{DEFAULT_PKRS, OPEN_PKRS};
use crate::table::{Column, Table};
use crate::tests::{area, data_run, free_run};
use crate::{cpu, ensure_eq, message, pks, println, xcall};

/// Pages per operation.
pub const PAGES: u64 = 4096;
/// Runs per measurement.
const REPEATS: usize = 5;
const FRAME: u64 = 4096;

/// How the operation is bracketed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The baseline: the native backend without the PKS wrapper, with
    /// IA32_PKRS opened once outside the measurement (what an unprotected
    /// kernel pays), and no lazy mode.
    Unprotected,
    /// The caller wraps the whole operation in one section (as Linux's
    /// fork and `apply_to_page_range` users do).
    OneSection,
    /// Only the library's own sections, one per PTE table.
    PerTable,
    /// No lazy MMU mode at all: every entry write opens its own window.
    NoLazy,
}

impl Mode {
    /// Every mode, in table order.
    pub const ALL: [Mode; 4] = [
        Mode::Unprotected,
        Mode::OneSection,
        Mode::PerTable,
        Mode::NoLazy,
    ];

    /// The mode's name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Unprotected => "unprotected",
            Mode::OneSection => "lazy, one section",
            Mode::PerTable => "lazy, per PTE table",
            Mode::NoLazy => "no lazy mode",
        }
    }
}

/// A range operation over [`PAGES`] pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// `map` of a run of frames.
    Map,
    /// `protect` to read-only.
    Protect,
    /// `zap`.
    Zap,
}

impl Operation {
    /// Every operation, in the order they run.
    pub const ALL: [Operation; 3] = [Operation::Map, Operation::Protect, Operation::Zap];

    /// The operation's name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Operation::Map => "map",
            Operation::Protect => "protect",
            Operation::Zap => "zap",
        }
    }
}

/// The address space an operation works on.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    /// Its name in tables.
    pub name: &'static str,
    /// Its root.
    pub root: PhysAddr,
    /// Its id.
    pub space: SpaceId,
    /// Where the pages go.
    pub base: u64,
    /// The mapping's attributes.
    pub attrs: Attributes,
    /// The gathers' scope (ignored for a registered address space, whose
    /// lazy-TLB policy picks the CPUs).
    pub scope: FlushScope,
}

/// What one operation cost.
#[derive(Clone, Copy, Debug)]
pub struct Row {
    /// TSC cycles on the measuring CPU.
    pub cycles: u64,
    /// Primitives executed, summed over every CPU.
    pub counts: BareMetalCounts,
    /// Cross-call IPIs sent.
    pub ipis: u64,
}

/// Rows by mode and operation (as in [`Mode::ALL`], [`Operation::ALL`]);
/// `None` for a mode not measured.
pub type Rows = [[Option<Row>; 3]; 4];

fn perform<B: Backend<Format = X86_64, Memory = KernelMemory>, L: LazyMode>(
    backend: &B,
    lazy_mode: &L,
    target: &Target,
    operation: Operation,
    run: PhysAddr,
) -> Result<(), Message> {
    let tables = page_tables::tables_on(backend, lazy_mode, target.root, target.space);
    let va = VirtAddr(target.base);
    let len = PAGES * FRAME;
    let mut gather = Gather::new(backend, &TABLE_FRAMES, target.space, target.scope);
    match operation {
        Operation::Map => tables
            .map(va, run, len, target.attrs, PageSize::Size4K)
            .map(|_| ())
            .map_err(|e| message!("map: {e:?}")),
        Operation::Protect => tables
            .protect(va, len, Protection::read_only(), &mut gather)
            .map(|_| ())
            .map_err(|e| message!("protect: {e:?}")),
        Operation::Zap => tables
            .zap(va, len, &mut gather)
            .map(|_| ())
            .map_err(|e| message!("zap: {e:?}")),
    }
}

fn measure(
    mode: Mode,
    target: &Target,
    operation: Operation,
    run: PhysAddr,
) -> Result<Row, Message> {
    let were_enabled = cpu::disable_interrupts();
    if mode == Mode::Unprotected {
        pks::write_window(OPEN_PKRS);
    }
    let before = paging::all_counts();
    let ipis = xcall::IPIS_SENT.total();
    let start = cpu::rdtsc();
    let result = match mode {
        Mode::Unprotected => perform(native_backend(), &Eager, target, operation, run),
        Mode::OneSection => {
            let _section = lazy().section();
            perform::<_, KernelLazy>(backend(), lazy(), target, operation, run)
        }
        Mode::PerTable => perform::<_, KernelLazy>(backend(), lazy(), target, operation, run),
        Mode::NoLazy => perform(backend(), &Eager, target, operation, run),
    };
    let cycles = cpu::rdtsc() - start;
    let counts = paging::all_counts() - before;
    let ipis = xcall::IPIS_SENT.total() - ipis;
    if mode == Mode::Unprotected {
        pks::write_window(DEFAULT_PKRS);
    }
    if were_enabled {
        cpu::enable_interrupts();
    }
    result?;
    Ok(Row {
        cycles,
        counts,
        ipis,
    })
}

/// Every mode of `modes` × operation on `target`, `repeats` rounds; the
/// cycles are the minimum over the rounds (the TCG TSC follows host time,
/// so the host's other work only ever adds), and the counts must not vary.
pub fn measure_all(
    target: &Target,
    run: PhysAddr,
    modes: &[Mode],
    repeats: usize,
    report: &mut Report,
) -> Rows {
    let mut rows: Rows = [[None; 3]; 4];
    let mut unstable = None;
    let mut failure = None;
    // Repeats outermost: QEMU sizes its software TLB by recent use, so each
    // mode should see the others' aftermath alike.
    for _ in 0..repeats {
        for &mode in modes {
            let m = mode as usize;
            for (o, &operation) in Operation::ALL.iter().enumerate() {
                let row = match measure(mode, target, operation, run) {
                    Ok(row) => row,
                    Err(message) => {
                        failure = Some((operation, mode, message));
                        continue;
                    }
                };
                rows[m][o] = Some(match rows[m][o] {
                    None => row,
                    Some(best) => {
                        if best.counts != row.counts || best.ipis != row.ipis {
                            unstable = Some((operation, mode));
                        }
                        Row {
                            cycles: best.cycles.min(row.cycles),
                            ..best
                        }
                    }
                });
            }
        }
    }
    report.run(
        format_args!("{} space: every measured operation succeeds", target.name),
        || match failure {
            Some((operation, mode, message)) => Err(message!(
                "{} {}: {}",
                operation.name(),
                mode.name(),
                message.as_str()
            )),
            None => Ok(()),
        },
    );
    report.run(
        format_args!("{} space: counts are the same in every run", target.name),
        || match unstable {
            Some((operation, mode)) => Err(message!("{} {} varied", operation.name(), mode.name())),
            None => Ok(()),
        },
    );
    rows
}

const COLUMNS: [Column; 8] = [
    Column::label("space", 7),
    Column::label("op", 8),
    Column::label("mode", 20),
    Column::number("TSC cycles", 11),
    Column::number("PKRS writes", 11),
    Column::number("invlpg", 7),
    Column::number("CR3", 5),
    Column::number("CR4.PGE", 7),
];

fn print_rows(table: &Table<'_>, target: &Target, rows: &Rows) {
    for (o, &operation) in Operation::ALL.iter().enumerate() {
        for (m, &mode) in Mode::ALL.iter().enumerate() {
            if let Some(row) = rows[m][o] {
                table.row(&[
                    &target.name,
                    &operation.name(),
                    &mode.name(),
                    &row.cycles,
                    &row.counts.pkrs_writes,
                    &row.counts.invlpg,
                    &row.counts.cr3_reloads,
                    &row.counts.global_flushes,
                ]);
            }
        }
    }
}

/// The PKRS writes the design implies, checked against what was counted
/// (for the modes measured).
pub fn check_pkrs(rows: &Rows) -> Outcome {
    let pte_tables = PAGES / 512;
    let pkrs = |mode: Mode, operation: Operation| {
        rows[mode as usize][operation as usize].map(|r| r.counts.pkrs_writes)
    };
    // A mode not measured has no row at all.
    let measured = |mode: Mode| rows[mode as usize].iter().any(Option::is_some);
    let expect = |mode: Mode, value: u64| measured(mode).then_some(value);
    use Operation::{Map, Protect, Zap};
    for operation in Operation::ALL {
        ensure_eq!(
            pkrs(Mode::Unprotected, operation),
            expect(Mode::Unprotected, 0),
            "{} unprotected",
            operation.name()
        );
        ensure_eq!(
            pkrs(Mode::OneSection, operation),
            expect(Mode::OneSection, 2),
            "{} in one section",
            operation.name()
        );
    }
    // One section per PTE table, 2 writes each: the map links each new PTE
    // table and the zap unlinks each emptied one inside that table's
    // section.
    for operation in Operation::ALL {
        ensure_eq!(
            pkrs(Mode::PerTable, operation),
            expect(Mode::PerTable, 2 * pte_tables),
            "{}, a section per PTE table",
            operation.name()
        );
    }
    // Without lazy mode: 2 per entry written (PTEs, and the map's table
    // links).
    ensure_eq!(
        pkrs(Mode::NoLazy, Map),
        expect(Mode::NoLazy, 2 * (PAGES + pte_tables)),
        "map without lazy mode"
    );
    ensure_eq!(
        pkrs(Mode::NoLazy, Protect),
        expect(Mode::NoLazy, 2 * 2 * PAGES),
        "protect without lazy mode (get-and-clear, then write)"
    );
    ensure_eq!(
        pkrs(Mode::NoLazy, Zap),
        expect(Mode::NoLazy, 2 * (PAGES + pte_tables)),
        "zap without lazy mode (PTEs, table unlinks)"
    );
    Ok(())
}

/// Runs the measurements, prints the table and checks the counts that
/// follow from the design.
pub fn run(report: &mut Report) {
    let run = match data_run(PAGES as usize) {
        Ok(run) => run,
        Err(message) => {
            report.run("measurements", || Err(message));
            return;
        }
    };
    let Some(user_root) = paging::new_user_root() else {
        report.run("measurements", || Err(message!("no frame for a user root")));
        return;
    };
    let kernel = Target {
        name: "kernel",
        root: kernel_root(),
        space: SpaceId::KERNEL,
        base: area(16),
        attrs: Attributes::kernel_data(),
        // The other CPUs are idle and never touch these pages.
        scope: FlushScope::Local,
    };
    let user = Target {
        name: "user",
        root: user_root,
        space: SpaceId(1),
        base: USER_BASE,
        attrs: Attributes::user_data(),
        scope: FlushScope::Local,
    };

    let irq_writes_before = pks::irq_writes();
    let kernel_rows = measure_all(&kernel, run, &Mode::ALL, REPEATS, report);
    paging::switch_to(user_root, SpaceId(1));
    let user_rows = measure_all(&user, run, &Mode::ALL, REPEATS, report);
    paging::switch_to(kernel_root(), SpaceId::KERNEL);
    let irq_writes = pks::irq_writes() - irq_writes_before;

    let table = Table::start(
        format_args!(
            "In-guest measurements, one CPU (others idle): {PAGES} pages of 4 KiB, QEMU TCG, PKS"
        ),
        &COLUMNS,
    );
    print_rows(&table, &kernel, &kernel_rows);
    print_rows(&table, &user, &user_rows);
    println!("cycles: minimum of {REPEATS} runs; counts: exact, identical in every run;");
    println!(
        "interrupts off while measuring ({irq_writes} PKRS writes by interrupt entry/exit meanwhile)"
    );
    for (target, rows) in [(&kernel, &kernel_rows), (&user, &user_rows)] {
        for (o, &operation) in Operation::ALL.iter().enumerate() {
            let Some(base) = rows[Mode::Unprotected as usize][o] else {
                continue;
            };
            for (m, mode_rows) in rows.iter().enumerate().skip(1) {
                if let Some(row) = mode_rows[o] {
                    let ratio = row.cycles * 100 / base.cycles.max(1);
                    println!(
                        "{} {}, {}: {}.{:02}x the cycles of unprotected",
                        target.name,
                        operation.name(),
                        Mode::ALL[m].name(),
                        ratio / 100,
                        ratio % 100
                    );
                }
            }
        }
    }
    println!();
    report.run("kernel space: PKRS writes follow the design", || {
        check_pkrs(&kernel_rows)
    });
    report.run("user space: PKRS writes follow the design", || {
        check_pkrs(&user_rows)
    });
    report.run(
        "full flushes: CR4.PGE for the kernel, CR3 for a user space",
        || {
            for m in 0..3 {
                for o in 1..3 {
                    let (k, u) = (kernel_rows[m][o], user_rows[m][o]);
                    let (Some(k), Some(u)) = (k, u) else {
                        return Err(message!("missing rows"));
                    };
                    ensure_eq!(
                        (
                            k.counts.global_flushes,
                            k.counts.cr3_reloads,
                            k.counts.invlpg
                        ),
                        (1, 0, 0),
                        "kernel {} {}: {PAGES} pages are above the 33-page ceiling",
                        Operation::ALL[o].name(),
                        Mode::ALL[m].name()
                    );
                    ensure_eq!(
                        (
                            u.counts.global_flushes,
                            u.counts.cr3_reloads,
                            u.counts.invlpg
                        ),
                        (0, 1, 0),
                        "user {} {}",
                        Operation::ALL[o].name(),
                        Mode::ALL[m].name()
                    );
                }
            }
            Ok(())
        },
    );

    // The user space's tables: its slot wholly, then the root.
    let user_tables = page_tables::tables_on(backend(), &Eager, user_root, SpaceId(1));
    let mut gather = Gather::new(backend(), &TABLE_FRAMES, SpaceId(1), FlushScope::Local);
    let _ = user_tables.zap(VirtAddr(USER_BASE), 1 << 39, &mut gather);
    drop(gather);
    TABLE_FRAMES.free(user_root);
    free_run(run, PAGES as usize);
}
