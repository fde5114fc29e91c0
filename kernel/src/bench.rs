//! Measurements in the guest: TSC cycles and exact counts of IA32_PKRS
//! writes, `invlpg`, CR3 reloads and global flushes for map, protect and
//! zap of 4,096 pages, with and without lazy sections.
//!
//! Interrupts are off while an operation runs, so the counts are exactly
//! the operation's. Cycles are QEMU TCG's virtual TSC: they show the ratio
//! between the modes on this emulator, where a PKRS write flushes QEMU's
//! whole software TLB, not what silicon would take.

use lazymmu::addr::{PageSize, VirtAddr};
use lazymmu::mode::LazyMode;
use lazymmu::pgtable::format::Attributes;

use crate::check::{Message, Outcome, Report};
use crate::paging::{self, kernel_tables_with, lazy, KernelLazy, NoLazy, PrimitiveCounts};
use crate::tests::{area, data_run, free_run, kernel_gather};
use crate::{cpu, ensure_eq, message, pks, println};

/// Pages per operation.
pub const PAGES: u64 = 4096;
/// Runs per measurement.
const REPEATS: usize = 5;
const FRAME: u64 = 4096;

/// How the operation is bracketed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// The caller wraps the whole operation in one section (like
    /// `apply_to_page_range` callers and fork in Linux).
    OneSection,
    /// Only the library's own sections, one per PTE table.
    PerTable,
    /// No lazy MMU mode at all: every entry write opens its own window.
    NoLazy,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::OneSection => "lazy, one section",
            Mode::PerTable => "lazy, per PTE table",
            Mode::NoLazy => "no lazy mode",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Operation {
    Map,
    Protect,
    Zap,
}

impl Operation {
    fn name(self) -> &'static str {
        match self {
            Operation::Map => "map",
            Operation::Protect => "protect",
            Operation::Zap => "zap",
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Row {
    cycles: u64,
    counts: PrimitiveCounts,
}

fn perform<L: LazyMode>(
    lazy_mode: &L,
    operation: Operation,
    run: lazymmu::addr::PhysAddr,
) -> Result<(), Message> {
    let tables = kernel_tables_with(lazy_mode);
    let va = VirtAddr(area(16));
    let len = PAGES * FRAME;
    match operation {
        Operation::Map => tables
            .map(va, run, len, Attributes::kernel_data(), PageSize::Size4K)
            .map(|_| ())
            .map_err(|e| message!("map: {e:?}")),
        Operation::Protect => {
            let mut gather = kernel_gather();
            tables
                .protect(va, len, Attributes::kernel_data().read_only(), &mut gather)
                .map(|_| ())
                .map_err(|e| message!("protect: {e:?}"))
        }
        Operation::Zap => {
            let mut gather = kernel_gather();
            tables
                .zap(va, len, &mut gather)
                .map(|_| ())
                .map_err(|e| message!("zap: {e:?}"))
        }
    }
}

fn measure(mode: Mode, operation: Operation, run: lazymmu::addr::PhysAddr) -> Result<Row, Message> {
    let were_enabled = cpu::disable_interrupts();
    let before = paging::counts();
    let start = cpu::rdtsc();
    let result = match mode {
        Mode::OneSection => {
            let _section = lazy().section();
            perform::<KernelLazy>(lazy(), operation, run)
        }
        Mode::PerTable => perform::<KernelLazy>(lazy(), operation, run),
        Mode::NoLazy => perform(&NoLazy, operation, run),
    };
    let cycles = cpu::rdtsc() - start;
    let counts = paging::counts() - before;
    if were_enabled {
        cpu::enable_interrupts();
    }
    result?;
    Ok(Row { cycles, counts })
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
    println!();
    println!("In-guest measurements: {PAGES} pages of 4 KiB, QEMU TCG, PKS-protected page tables");
    println!(
        "{:<8} {:<20} {:>12} {:>12} {:>8} {:>8} {:>8}",
        "op", "mode", "TSC cycles", "PKRS writes", "invlpg", "CR3", "global"
    );
    let irq_writes_before = pks::irq_writes();
    let modes = [Mode::OneSection, Mode::PerTable, Mode::NoLazy];
    let operations = [Operation::Map, Operation::Protect, Operation::Zap];
    // Each mode runs map, protect, zap in turn, REPEATS times; the cycles
    // are the minimum over the repeats (the TCG TSC follows host time, so
    // the host's other work only ever adds), the counts must not vary.
    let mut rows: [[Option<Row>; 3]; 3] = [[None; 3]; 3];
    let mut unstable = None;
    for (m, &mode) in modes.iter().enumerate() {
        for _ in 0..REPEATS {
            for (o, &operation) in operations.iter().enumerate() {
                match measure(mode, operation, run) {
                    Ok(row) => {
                        rows[m][o] = Some(match rows[m][o] {
                            None => row,
                            Some(best) => {
                                if best.counts != row.counts {
                                    unstable = Some((operation.name(), mode.name()));
                                }
                                Row {
                                    cycles: best.cycles.min(row.cycles),
                                    counts: best.counts,
                                }
                            }
                        });
                    }
                    Err(message) => {
                        println!(
                            "FAIL measuring {} {}: {}",
                            operation.name(),
                            mode.name(),
                            message.as_str()
                        );
                    }
                }
            }
        }
    }
    for (o, &operation) in operations.iter().enumerate() {
        for (m, &mode) in modes.iter().enumerate() {
            if let Some(row) = rows[m][o] {
                println!(
                    "{:<8} {:<20} {:>12} {:>12} {:>8} {:>8} {:>8}",
                    operation.name(),
                    mode.name(),
                    row.cycles,
                    row.counts.pkrs_writes,
                    row.counts.invlpg,
                    row.counts.cr3_reloads,
                    row.counts.global_flushes
                );
            }
        }
    }
    for (m, &mode) in modes.iter().enumerate() {
        for (o, &operation) in operations.iter().enumerate() {
            if let Some(row) = rows[m][o] {
                let cycles = rows[0][o].map(|one| one.cycles).unwrap_or(0);
                if mode != Mode::OneSection && cycles > 0 {
                    println!(
                        "{} {}: {}.{:02}x the cycles of one section",
                        operation.name(),
                        mode.name(),
                        row.cycles / cycles,
                        (row.cycles % cycles) * 100 / cycles
                    );
                }
            }
        }
    }
    println!(
        "(cycles: minimum of {REPEATS} runs; counts exact and identical in every run; \
         interrupts off while measuring; {} PKRS writes by interrupt entry/exit meanwhile)",
        pks::irq_writes() - irq_writes_before
    );
    println!();
    let pte_tables = PAGES / 512;
    report.run(
        "measured counts are the same in every run",
        || -> Outcome {
            match unstable {
                Some((operation, mode)) => Err(message!("{operation} {mode} varied")),
                None => Ok(()),
            }
        },
    );
    report.run("measured PKRS writes follow the design", || -> Outcome {
        let pkrs = |m: usize, o: usize| rows[m][o].map(|r| r.counts.pkrs_writes);
        for (o, operation) in operations.iter().enumerate() {
            ensure_eq!(pkrs(0, o), Some(2), "{} in one section", operation.name());
        }
        // One section per PTE table (2 writes each); what happens above the
        // PTE level runs outside them and opens its own windows: the map
        // zeroes and links each new PTE table (2 + 2), the zap unlinks each
        // emptied one (2).
        ensure_eq!(
            pkrs(1, 0),
            Some(2 * pte_tables + 4 * pte_tables),
            "map, a section per PTE table"
        );
        ensure_eq!(
            pkrs(1, 1),
            Some(2 * pte_tables),
            "protect, a section per PTE table"
        );
        ensure_eq!(
            pkrs(1, 2),
            Some(2 * pte_tables + 2 * pte_tables),
            "zap, a section per PTE table"
        );
        // Without lazy mode: 2 per entry written (PTEs, plus for the map
        // the new PTE tables' links and their zeroing).
        ensure_eq!(
            pkrs(2, 0),
            Some(2 * (PAGES + 2 * pte_tables)),
            "map without lazy mode"
        );
        ensure_eq!(
            pkrs(2, 1),
            Some(2 * 2 * PAGES),
            "protect without lazy mode (get-and-clear, write)"
        );
        ensure_eq!(
            pkrs(2, 2),
            Some(2 * (PAGES + pte_tables)),
            "zap without lazy mode (PTEs, table unlinks)"
        );
        Ok(())
    });
    free_run(run, PAGES as usize);
}
