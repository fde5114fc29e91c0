//! Measurements in the guest: vmap-like mapping of 1, 16, 64, 512 and
//! 4,096 kernel pages and their unmapping (vunmap: zap and flush), without
//! lazy MMU mode (`Eager`: every valid kernel entry is followed by `dsb
//! ishst; isb`, `__set_pte`) and with it (the library's section per PTE
//! table, as `vmap_pte_range` has): counter ticks (CNTVCT_EL0) and the
//! exact numbers of `dsb`, `isb` and `tlbi` the primitives executed.
//!
//! The counts are the point. The ticks are QEMU TCG's host time, which
//! charges a barrier like any other instruction (nothing waits for other
//! observers), so they do not show what silicon would save. Interrupts are
//! off while an operation runs, so its counts are exactly its own; each
//! measurement runs [`REPEATS`] times and must count the same every time.
//! The operations go through the backend without the break-before-make
//! checker, whose bookkeeping is not the library's work.

use lazymmu::addr::{PageSize, SpaceId, VirtAddr};
use lazymmu::mode::eager::Eager;
use lazymmu::mode::LazyMode;
use lazymmu::pgtable::format::Attributes;

use crate::check::{Message, Outcome, Report};
use crate::memory::FRAME;
use crate::paging::{self, counts, lazy, Counts};
use crate::table::{Column, Table};
use crate::testdata::{data_run, free_run};
use crate::tests::area;
use crate::{cpu, ensure, ensure_eq, message, println};

/// Sizes measured, in pages.
pub const SIZES: [u64; 5] = [1, 16, 64, 512, 4096];
/// Runs per measurement; the fastest is shown.
const REPEATS: usize = 3;

/// With or without lazy sections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Eager,
    Lazy,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Eager => "eager",
            Mode::Lazy => "lazy",
        }
    }
}

/// What one map and one unmap cost.
#[derive(Clone, Copy, Debug)]
struct Row {
    map_ticks: u64,
    map: Counts,
    unmap_ticks: u64,
    unmap: Counts,
}

/// Maps and unmaps `pages` pages from `va` with lazy mode `L`, once.
fn map_unmap<L: LazyMode>(lazy: &L, va: u64, pages: u64) -> Result<Row, Message> {
    let tables = paging::unchecked_kernel_tables(lazy);
    let run = data_run(pages as usize)?;
    let were_enabled = cpu::disable_interrupts();
    let before = (cpu::counter(), counts());
    let mapped = tables.map(
        VirtAddr(va),
        run,
        pages * FRAME,
        Attributes::kernel_data(),
        PageSize::Size4K,
    );
    let after_map = (cpu::counter(), counts());
    let mut gather = paging::unchecked_gather(SpaceId::KERNEL);
    let zapped = tables.zap(VirtAddr(va), pages * FRAME, &mut gather);
    drop(gather);
    let after_unmap = (cpu::counter(), counts());
    if were_enabled {
        cpu::enable_interrupts();
    }
    free_run(run, pages as usize);
    mapped.map_err(|e| message!("map of {pages} pages: {e:?}"))?;
    zapped.map_err(|e| message!("unmap of {pages} pages: {e:?}"))?;
    Ok(Row {
        map_ticks: after_map.0 - before.0,
        map: after_map.1 - before.1,
        unmap_ticks: after_unmap.0 - after_map.0,
        unmap: after_unmap.1 - after_map.1,
    })
}

/// The fastest of [`REPEATS`] runs, checking that every run counted the
/// same. The first run may allocate upper tables the others find.
fn measure(mode: Mode, va: u64, pages: u64) -> Result<Row, Message> {
    let once = || match mode {
        Mode::Eager => map_unmap(&Eager, va, pages),
        Mode::Lazy => map_unmap(lazy(), va, pages),
    };
    once()?;
    let mut best = once()?;
    for _ in 1..REPEATS {
        let row = once()?;
        ensure_eq!(
            (row.map, row.unmap),
            (best.map, best.unmap),
            "{} pages, {}: counts of two runs",
            pages,
            mode.name()
        );
        best.map_ticks = best.map_ticks.min(row.map_ticks);
        best.unmap_ticks = best.unmap_ticks.min(row.unmap_ticks);
    }
    Ok(best)
}

/// PTE tables `pages` pages from a 2 MiB-aligned address touch.
fn tables_touched(pages: u64) -> u64 {
    pages.div_ceil(512)
}

/// Checks the counts against what the backend promises: eagerly, one
/// `dsb ishst; isb` per valid kernel entry written (leaves and the links of
/// new tables); lazily, one per PTE table's section; unmapping the same
/// either way (clearing needs no barrier; the flush is one `dsb ishst`, the
/// `tlbi`s, one `dsb ish` and one `isb` per page size flushed).
fn check(pages: u64, eager: &Row, lazy: &Row) -> Outcome {
    // A run that fills PTE tables frees them on unmap and links new ones
    // on the next map.
    let new_tables = if pages.is_multiple_of(512) {
        pages / 512
    } else {
        0
    };
    ensure_eq!(
        (eager.map.pte_writes, eager.map.dsb_ishst, eager.map.isb),
        (pages + new_tables, pages + new_tables, pages + new_tables),
        "eager map of {pages} pages: writes, dsb ishst, isb"
    );
    ensure_eq!(
        (lazy.map.pte_writes, lazy.map.dsb_ishst, lazy.map.isb),
        (
            pages + new_tables,
            tables_touched(pages),
            tables_touched(pages)
        ),
        "lazy map of {pages} pages: writes, dsb ishst, isb"
    );
    ensure_eq!(
        eager.map.tlbi() + lazy.map.tlbi() + eager.map.dsb_ish + lazy.map.dsb_ish,
        0,
        "TLB maintenance for a map of {pages} pages"
    );
    ensure_eq!(
        eager.unmap,
        lazy.unmap,
        "unmap of {pages} pages, eager against lazy"
    );
    ensure!(
        eager.unmap.tlbi() > 0 && eager.unmap.dsb_ish == eager.unmap.isb,
        "unmap of {pages} pages: {:?}",
        eager.unmap
    );
    Ok(())
}

/// Runs the measurements, prints the table and adds the checks to `report`.
pub fn run(report: &mut Report) {
    let rows: [(Result<Row, Message>, Result<Row, Message>); SIZES.len()] =
        core::array::from_fn(|i| {
            let va = area(20 + i as u64);
            (
                measure(Mode::Eager, va, SIZES[i]),
                measure(Mode::Lazy, va, SIZES[i]),
            )
        });
    let columns = [
        Column::number("pages", 5),
        Column::label("op", 5),
        Column::label("mode", 5),
        Column::number("CNTVCT ticks", 12),
        Column::number("lazy/eager", 10),
        Column::number("dsb", 6),
        Column::number("isb", 6),
        Column::number("tlbi", 5),
        Column::number("PTE writes", 10),
    ];
    let table = Table::start(
        format_args!(
            "In-guest measurements (arm64): vmap-like map and unmap of kernel pages, {}",
            if paging::tlb_range() {
                "range TLBI"
            } else {
                "no range TLBI"
            }
        ),
        &columns,
    );
    for (&pages, pair) in SIZES.iter().zip(&rows) {
        let (Ok(eager), Ok(lazy)) = pair else {
            continue;
        };
        for op in ["map", "unmap"] {
            let pick = |row: &Row| {
                if op == "map" {
                    (row.map_ticks, row.map)
                } else {
                    (row.unmap_ticks, row.unmap)
                }
            };
            for (mode, row) in [(Mode::Eager, eager), (Mode::Lazy, lazy)] {
                let (ticks, counted) = pick(row);
                let ratio = if mode == Mode::Lazy {
                    Message::new(format_args!(
                        "{:.3}",
                        ticks as f64 / pick(eager).0.max(1) as f64
                    ))
                } else {
                    Message::new(format_args!("-"))
                };
                table.row(&[
                    &pages,
                    &op,
                    &mode.name(),
                    &ticks,
                    &ratio.as_str(),
                    &counted.dsb(),
                    &counted.isb,
                    &counted.tlbi(),
                    &counted.pte_writes,
                ]);
            }
        }
    }
    println!(
        "CNTVCT at {:.1} MHz under QEMU TCG, which charges a barrier like any other instruction:",
        cpu::counter_frequency() as f64 / 1e6
    );
    println!("the counts are exact, the ticks show this emulator's work only. Fastest of {REPEATS} runs.");
    for (&pages, pair) in SIZES.iter().zip(&rows) {
        report.run(
            format_args!("measured: {pages} pages, barriers eager against lazy"),
            || match pair {
                (Ok(eager), Ok(lazy)) => check(pages, eager, lazy),
                (Err(error), _) | (_, Err(error)) => Err(message!("{error:?}")),
            },
        );
    }
}
