//! The guest's tests: every range operation checked by real loads and
//! stores through QEMU's MMU and by the exact data aborts expected
//! (translation, permission, access flag, EL0 access to kernel pages),
//! 2 MiB blocks split by a partial zap and made again, break-before-make,
//! stale translations, a timer interrupt changing a kernel mapping inside a
//! section, nesting and pause, and the exact `dsb`, `isb` and `tlbi` counts
//! of the arm64 backend.

use core::arch::asm;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use lazymmu::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use lazymmu::backend::{EntryUpdate, PteAccess};
use lazymmu::mode::eager::Eager;
use lazymmu::mode::{LazyMode, LazyState};
use lazymmu::pgtable::format::aarch64::{ACCESS_FLAG, ADDRESS_4K};
use lazymmu::pgtable::format::{Aarch64, Attributes};
use lazymmu::pgtable::memory::PageTableMemory;
use lazymmu::pgtable::ops::{ApplyMode, CopyKind};
use lazymmu::pgtable::walk::translate;

use crate::check::{Message, Outcome, Report};
use crate::env::{self, KernelEnv};
use crate::exceptions::{self, Fault, FaultKind};
use crate::memory::{FRAME, VMALLOC_BASE};
use crate::page_tables::{self, kernel_root, PageTableFrames, MEMORY};
use crate::paging::{
    self, backend, counts, kernel_tables, lazy, Counts, KernelBackend, KernelLazy, KernelTables,
};
use crate::range_tests::{self, Guest};
use crate::testdata::{aligned_run, data_run, free_run, pattern};
use crate::{ensure, ensure_eq, irq, message};
use lazymmu::pgtable::gather::Gather;

/// Test area `n`: its own gigabyte of the kernel half, so that the tests'
/// tables do not interfere.
pub fn area(n: u64) -> u64 {
    VMALLOC_BASE + (n << 30)
}

/// Where the user-like address spaces map their pages (TTBR0).
pub const USER_BASE: u64 = 0x40_0000_0000;

const PAGES: usize = 8;

fn map_kernel(va: u64, phys: PhysAddr, pages: usize, attrs: Attributes) -> Outcome {
    range_tests::map_checked::<Arm64Guest>(va, phys, pages as u64, attrs)
}

fn zap_kernel(va: u64, pages: usize) -> Outcome {
    range_tests::zap::<Arm64Guest>(va, pages as u64)
}

/// Checks that `access` at `va` aborted with `kind`, on a write or not.
fn expect_fault(access: Result<u64, Fault>, va: u64, kind: FaultKind, write: bool) -> Outcome {
    match access {
        Ok(value) => Err(message!(
            "{} {va:#x} gave {value:#x}, expected {kind:?}",
            if write { "write" } else { "read" }
        )),
        Err(fault) => {
            ensure_eq!(fault.address, va, "fault address");
            ensure_eq!(fault.kind, kind, "fault at {va:#x} (ESR {:#x})", fault.esr);
            ensure_eq!(fault.write, write, "WnR at {va:#x}");
            Ok(())
        }
    }
}

/// A load of `va` gets a translation fault at lookup level 3.
fn expect_absent(va: u64) -> Outcome {
    expect_fault(exceptions::read(va), va, FaultKind::Translation(3), false)
}

fn store(va: u64, value: u64) -> Result<u64, Fault> {
    // SAFETY: the tests store only into pages they mapped to their own
    // frames (the value a page already holds where the store is expected
    // to fault).
    unsafe { exceptions::write(va, value) }.map(|()| 0)
}

fn store_as_user(va: u64, value: u64) -> Result<u64, Fault> {
    // SAFETY: as `store`.
    unsafe { exceptions::write_as_user(va, value) }.map(|()| 0)
}

/// A store to `va` gets a permission fault at level 3.
fn expect_read_only(va: u64) -> Outcome {
    let old = exceptions::read(va).unwrap_or(0);
    expect_fault(store(va, old), va, FaultKind::Permission(3), true)
}

fn write(va: u64, value: u64) -> Outcome {
    store(va, value)
        .map(|_| ())
        .map_err(|fault| message!("write {va:#x}: {fault:?}"))
}

/// This kernel's MMU for the tests both kernels run
/// ([`crate::range_tests`]).
pub struct Arm64Guest;

impl Guest for Arm64Guest {
    type Backend = KernelBackend;
    type Lazy = KernelLazy;

    fn area(n: u64) -> u64 {
        area(n)
    }

    fn tables() -> KernelTables<'static, KernelLazy> {
        kernel_tables()
    }

    fn gather() -> Gather<'static, KernelBackend, PageTableFrames> {
        paging::gather(SpaceId::KERNEL)
    }

    /// TLB maintenance is broadcast: the same gather.
    fn gather_here() -> Gather<'static, KernelBackend, PageTableFrames> {
        paging::gather(SpaceId::KERNEL)
    }

    fn read(va: u64) -> Result<u64, Message> {
        exceptions::read(va).map_err(|fault| message!("read {va:#x}: {fault:?}"))
    }

    fn write(va: u64, value: u64) -> Outcome {
        write(va, value)
    }

    fn expect_absent(va: u64) -> Outcome {
        expect_absent(va)
    }

    fn expect_read_only(va: u64) -> Outcome {
        expect_read_only(va)
    }

    fn ticks() -> u64 {
        irq::ticks()
    }

    fn set_timer_hook(hook: Option<fn()>) {
        irq::set_timer_hook(hook);
    }

    fn after_sections() -> Outcome {
        ensure!(
            !env::barriers_pending(),
            "barriers pending after the sections"
        );
        Ok(())
    }
}

/// The update of the kernel PTE at `entry` (mapping `va`) to `value`.
fn kernel_pte(entry: PhysAddr, va: u64, value: u64) -> EntryUpdate {
    EntryUpdate {
        entry,
        va: VirtAddr(va),
        space: SpaceId::KERNEL,
        level: 1,
        value,
        kernel: true,
        valid: value & 1 != 0,
        leaf: true,
    }
}

/// The leaf entry of `va` in the tables at `root`.
fn leaf(root: PhysAddr, va: u64) -> Result<lazymmu::pgtable::walk::Translation, Message> {
    translate::<Aarch64, _>(&MEMORY, root, VirtAddr(va))
        .map_err(|e| message!("translate {va:#x}: {e:?}"))
}

/// `tlbi vaale1is` of one kernel page with its barriers, issued here
/// rather than through the primitives (so the debug switch leaves it).
fn invalidate_kernel_page(va: u64) {
    // SAFETY: invalidating a translation never breaks memory safety.
    unsafe {
        asm!(
            "dsb ishst",
            "tlbi vaale1is, {}",
            "dsb ish",
            "isb",
            in(reg) (va >> 12) & ((1 << 44) - 1),
            options(nostack, preserves_flags)
        )
    };
}

/// The facts the other tests rest on: QEMU keeps a translation it cached
/// until a TLB invalidation covers it, so a missing `tlbi` is observable.
fn stale_translation_is_observable_test() -> Outcome {
    let va = area(10);
    let run = data_run(2)?;
    map_kernel(va, run, 1, Attributes::kernel_data())?;
    range_tests::expect_run::<Arm64Guest>(va, run, 1)?;
    let pte = leaf(kernel_root(), va)?;
    let retarget = |frame: PhysAddr| {
        // Straight to memory: neither the backend nor its checker sees it.
        MEMORY.write(pte.entry, (pte.raw & !ADDRESS_4K) | frame.0);
        // SAFETY: a barrier only orders memory accesses.
        unsafe { asm!("dsb ishst", options(nostack, preserves_flags)) };
    };
    retarget(run.add(FRAME));
    ensure_eq!(
        exceptions::read(va).ok(),
        Some(pattern(run)),
        "stale read before tlbi"
    );
    invalidate_kernel_page(va);
    ensure_eq!(
        exceptions::read(va).ok(),
        Some(pattern(run.add(FRAME))),
        "read after tlbi"
    );
    retarget(run);
    invalidate_kernel_page(va);
    zap_kernel(va, 1)?;
    free_run(run, 2);
    Ok(())
}

/// The faults the shared map test does not cover: EL0 may not touch a
/// kernel page (permission faults for `ldtr` and `sttr`), and a leaf with
/// the access flag clear (TCR_EL1.HA = 0) takes an access flag fault.
fn el0_and_old_pages_test() -> Outcome {
    let va = area(14);
    let run = data_run(1)?;
    map_kernel(va, run, 1, Attributes::kernel_data())?;
    expect_fault(
        exceptions::read_as_user(va),
        va,
        FaultKind::Permission(3),
        false,
    )?;
    expect_fault(store_as_user(va, 0), va, FaultKind::Permission(3), true)?;
    let old = va + (1 << 21);
    map_kernel(
        old,
        run,
        1,
        Attributes {
            accessed: false,
            ..Attributes::kernel_data()
        },
    )?;
    expect_fault(exceptions::read(old), old, FaultKind::AccessFlag(3), false)?;
    zap_kernel(va, 1)?;
    zap_kernel(old, 1)?;
    expect_absent(va)?;
    free_run(run, 1);
    Ok(())
}

/// The instructions a flush of `pages` kernel pages issues: page by page
/// without range operations (from 512 on, one `vmalle1is`), else range
/// operations and at most one single page.
fn expected_flush(pages: u64) -> Counts {
    let (tlbi_page, tlbi_range, tlbi_all) =
        if paging::tlb_range() {
            let mut ops = (0, 0);
            lazymmu::backend::arm64::tlbi_ops(VirtAddr(0), pages, PageSize::Size4K, true, |op| {
                match op {
                    lazymmu::backend::arm64::TlbiOp::Page(_) => ops.0 += 1,
                    lazymmu::backend::arm64::TlbiOp::Range { .. } => ops.1 += 1,
                }
            });
            (ops.0, ops.1, 0)
        } else if pages >= 512 {
            (0, 0, 1)
        } else {
            (pages, 0, 0)
        };
    Counts {
        pte_writes: 0,
        dsb_ishst: 1,
        dsb_ish: 1,
        isb: 1,
        tlbi_page,
        tlbi_range,
        tlbi_all,
    }
}

fn zap_test() -> Outcome {
    let va = area(1);
    let run = data_run(64)?;
    map_kernel(va, run, 64, Attributes::kernel_data())?;
    // Warm the TLB so that a missing invalidation would be visible.
    range_tests::expect_run::<Arm64Guest>(va, run, 64)?;
    let mut done = 0u64;
    // 8 pages (even), 7 (odd: a range and a page), the remaining 49.
    for pages in [8u64, 7, 49] {
        let at = va + done * FRAME;
        let before = counts();
        let mut gather = paging::gather(SpaceId::KERNEL);
        let summary = kernel_tables()
            .zap(VirtAddr(at), pages * FRAME, &mut gather)
            .map_err(|e| message!("zap: {e:?}"))?;
        drop(gather);
        let spent = counts() - before;
        ensure_eq!(summary.leaves[0], pages, "leaves zapped");
        // Clearing entries needs no barrier; the flush is dsb ishst, the
        // tlbis, dsb ish, isb.
        let mut expected = expected_flush(pages);
        expected.pte_writes = pages;
        ensure_eq!(spent, expected, "instructions of a zap of {pages} pages");
        for i in 0..pages {
            expect_absent(at + i * FRAME)?;
        }
        done += pages;
        range_tests::expect_run::<Arm64Guest>(
            va + done * FRAME,
            run.add(done * FRAME),
            64 - done as usize,
        )?;
    }
    free_run(run, 64);
    Ok(())
}

/// Fork with copy-on-write between two user-like address spaces in TTBR0,
/// each with its ASID, accessed as EL0 (`ldtr`/`sttr`): the parent loses
/// write access at once; the child's entries are old (as Linux's
/// `copy_present_pte` makes them), so its first access is an access flag
/// fault until the entry is made young.
fn copy_test() -> Outcome {
    let (parent_space, child_space) = (SpaceId(1), SpaceId(2));
    let parent_root = page_tables::new_root().ok_or(message!("no root"))?;
    let child_root = page_tables::new_root().ok_or(message!("no root"))?;
    let parent = paging::tables_with(lazy(), parent_root, parent_space);
    let child = paging::tables_with(lazy(), child_root, child_space);
    let len = PAGES as u64 * FRAME;
    let run = data_run(PAGES)?;
    parent
        .map(
            VirtAddr(USER_BASE),
            run,
            len,
            Attributes::user_data(),
            PageSize::Size4K,
        )
        .map_err(|e| message!("map: {e:?}"))?;
    paging::switch_user(Some((parent_root, parent_space)));
    let outcome = (|| {
        // Writable by EL0 in the parent, and cached so.
        store_as_user(USER_BASE + 16, 1).map_err(|f| message!("user store: {f:?}"))?;
        let mut gather = paging::gather(parent_space);
        let summary = parent
            .copy_to(
                &child,
                VirtAddr(USER_BASE),
                len,
                CopyKind::Private,
                &mut gather,
            )
            .map_err(|e| message!("copy: {e:?}"))?;
        drop(gather);
        ensure_eq!(summary.copied[0], PAGES as u64, "leaves copied");
        expect_fault(
            store_as_user(USER_BASE, 0),
            USER_BASE,
            FaultKind::Permission(3),
            true,
        )?;
        ensure_eq!(
            exceptions::read_as_user(USER_BASE).ok(),
            Some(pattern(run)),
            "parent reads its page"
        );
        paging::switch_user(Some((child_root, child_space)));
        expect_fault(
            exceptions::read_as_user(USER_BASE),
            USER_BASE,
            FaultKind::AccessFlag(3),
            false,
        )?;
        // Make the child's entries young (`__ptep_set_access_flags`), then
        // it reads the parent's frames and cannot write them.
        let mut gather = paging::gather(child_space);
        child
            .apply::<(), _, _, _, _>(
                VirtAddr(USER_BASE),
                len,
                ApplyMode::Existing,
                &mut gather,
                |slot| {
                    let raw = slot.raw();
                    slot.set_raw(raw | ACCESS_FLAG);
                    Ok(())
                },
            )
            .map_err(|e| message!("young: {e:?}"))?;
        drop(gather);
        for i in 0..PAGES as u64 {
            let va = USER_BASE + i * FRAME;
            ensure_eq!(
                exceptions::read_as_user(va).ok(),
                Some(pattern(run.add(i * FRAME))),
                "child reads {va:#x}"
            );
        }
        expect_fault(
            store_as_user(USER_BASE, 0),
            USER_BASE,
            FaultKind::Permission(3),
            true,
        )?;
        Ok(())
    })();
    paging::switch_user(None);
    outcome?;
    // Tear both spaces down, roots included.
    for (tables, space) in [(parent, parent_space), (child, child_space)] {
        let mut gather = paging::gather(space);
        tables
            .destroy(&mut gather)
            .map_err(|e| message!("destroy: {e:?}"))?;
    }
    free_run(run, PAGES);
    Ok(())
}

/// A 2 MiB block, split into a table by a zap of one page inside it (the
/// block cleared and invalidated before the table is linked), then, once
/// the rest is zapped and the table freed, a block again.
fn block_test() -> Outcome {
    let tables = kernel_tables();
    let va = area(9);
    let run = aligned_run(512, 2 << 20)?;
    let violations = backend().violations().0;
    let map_block = || -> Outcome {
        let summary = tables
            .map(
                VirtAddr(va),
                run,
                2 << 20,
                Attributes::kernel_data(),
                PageSize::Size2M,
            )
            .map_err(|e| message!("map block: {e:?}"))?;
        ensure_eq!(summary.leaves, [0, 1, 0], "leaves mapped");
        ensure_eq!(leaf(kernel_root(), va)?.size, PageSize::Size2M, "leaf size");
        range_tests::expect_run::<Arm64Guest>(va, run, 512)
    };
    map_block()?;
    let hole = va + 100 * FRAME;
    // Cached right before the zap (QEMU's TLB is direct-mapped: reading
    // 512 pages evicts some of them again).
    range_tests::expect_run::<Arm64Guest>(hole, run.add(100 * FRAME), 1)?;
    let mut gather = paging::gather(SpaceId::KERNEL);
    let summary = tables
        .zap(VirtAddr(hole), FRAME, &mut gather)
        .map_err(|e| message!("zap in the block: {e:?}"))?;
    drop(gather);
    ensure_eq!(
        (summary.splits, summary.leaves[0]),
        (1, 1),
        "splits and pages zapped"
    );
    ensure_eq!(leaf(kernel_root(), va)?.size, PageSize::Size4K, "leaf size");
    expect_absent(hole)?;
    range_tests::expect_run::<Arm64Guest>(va, run, 100)?;
    range_tests::expect_run::<Arm64Guest>(hole + FRAME, run.add(101 * FRAME), 411)?;
    // The whole 2 MiB: the table goes (invalidated with walk caches) and
    // a block can take its place. The page checked is not the first: in
    // QEMU's direct-mapped TLB every 1 MiB-aligned page (the image's first,
    // the other test areas') shares a slot with it.
    let probe = va + 77 * FRAME;
    range_tests::expect_run::<Arm64Guest>(probe, run.add(77 * FRAME), 1)?;
    let mut gather = paging::gather(SpaceId::KERNEL);
    let summary = tables
        .zap(VirtAddr(va), 2 << 20, &mut gather)
        .map_err(|e| message!("zap all: {e:?}"))?;
    drop(gather);
    ensure_eq!(summary.tables_freed, 1, "tables freed");
    // No table below the level-2 entry any more.
    expect_fault(
        exceptions::read(probe),
        probe,
        FaultKind::Translation(2),
        false,
    )?;
    map_block()?;
    ensure_eq!(
        backend().violations().0 - violations,
        0,
        "break-before-make violations (first: {:?})",
        backend().violations().1
    );
    zap_kernel(va, 512)?;
    free_run(run, 512);
    Ok(())
}

/// The break-before-make check can fail: a live entry given another
/// output address, and a broken entry made again before its invalidation,
/// are both reported; the same changes with the invalidation in between
/// are not.
fn break_before_make_check_test() -> Outcome {
    let va = area(8);
    let run = data_run(2)?;
    map_kernel(va, run, 1, Attributes::kernel_data())?;
    let pte = leaf(kernel_root(), va)?;
    let update = |value: u64| kernel_pte(pte.entry, va, value);
    let other = (pte.raw & !ADDRESS_4K) | run.add(FRAME).0;
    let start = backend().violations().0;
    // Valid to valid, another frame: no break at all.
    backend().write_entry(update(other));
    ensure_eq!(backend().violations().0 - start, 1, "live retarget");
    // Break, then make before the invalidation.
    backend().get_and_clear(update(0));
    backend().write_entry(update(pte.raw));
    ensure_eq!(backend().violations().0 - start, 2, "make before tlbi");
    // Break, invalidate, make: allowed.
    backend().get_and_clear(update(0));
    let mut gather = paging::gather(SpaceId::KERNEL);
    gather.add_page(VirtAddr(va), PageSize::Size4K);
    drop(gather);
    backend().write_entry(update(other));
    ensure_eq!(backend().violations().0 - start, 2, "break, tlbi, make");
    backend().forget_violations(2);
    invalidate_kernel_page(va);
    zap_kernel(va, 1)?;
    free_run(run, 2);
    Ok(())
}

// State shared with the timer hook.
static TIMER_VA: AtomicU64 = AtomicU64::new(0);
static TIMER_FRAME: AtomicU64 = AtomicU64::new(0);
/// 0: not run; 1: passed; 2+: which check failed.
static TIMER_RESULT: AtomicU64 = AtomicU64::new(0);
static TIMER_READ: AtomicU64 = AtomicU64::new(0);
static TIMER_SAW_ACTIVE: AtomicBool = AtomicBool::new(false);
static TIMER_SAW_PENDING: AtomicBool = AtomicBool::new(false);
static TIMER_SPENT: crate::sync::SpinLock<Counts> = crate::sync::SpinLock::new(Counts {
    pte_writes: 0,
    dsb_ishst: 0,
    dsb_ish: 0,
    isb: 0,
    tlbi_page: 0,
    tlbi_range: 0,
    tlbi_all: 0,
});

/// Runs in the timer interrupt, in the middle of the task's section: remaps
/// a kernel page and uses it at once.
fn timer_remap() {
    if TIMER_RESULT.load(Relaxed) != 0 {
        return;
    }
    let va = TIMER_VA.load(Relaxed);
    let frame = PhysAddr(TIMER_FRAME.load(Relaxed));
    TIMER_SAW_ACTIVE.store(lazy().is_active(), Relaxed);
    TIMER_SAW_PENDING.store(env::barriers_pending(), Relaxed);
    let before = counts();
    let zapped = zap_kernel(va, 1).is_ok();
    let mapped = map_kernel(va, frame, 1, Attributes::kernel_data()).is_ok();
    let read = exceptions::read(va).unwrap_or(0);
    *TIMER_SPENT.lock() = counts() - before;
    TIMER_READ.store(read, Relaxed);
    let result = match (zapped, mapped, read == pattern(frame)) {
        (true, true, true) => 1,
        (false, _, _) => 2,
        (_, false, _) => 3,
        _ => 4,
    };
    TIMER_RESULT.store(result, Relaxed);
}

/// A timer interrupt lands while the task's section owes barriers for a
/// kernel entry it wrote: the handler, in interrupt context, is not in the
/// section, so its remap gets its barriers (and its invalidation) at once
/// and it reads the new frame; the task's pending flag is left for the
/// section's end, which emits exactly one `dsb ishst; isb`.
fn timer_in_section_test() -> Outcome {
    let va = area(6);
    let other = va + FRAME;
    let run = data_run(3)?;
    map_kernel(va, run, 1, Attributes::kernel_data())?;
    map_kernel(other, run.add(2 * FRAME), 1, Attributes::kernel_data())?;
    range_tests::expect_run::<Arm64Guest>(va, run, 1)?;
    let other_pte = leaf(kernel_root(), other)?;
    TIMER_VA.store(va, Relaxed);
    TIMER_FRAME.store(run.add(FRAME).0, Relaxed);
    TIMER_RESULT.store(0, Relaxed);
    {
        let section = lazy().section();
        let before = counts();
        // A valid kernel entry written in the section: its barriers are
        // owed, not emitted.
        backend().write_entry(kernel_pte(other_pte.entry, other, other_pte.raw));
        ensure_eq!(
            counts() - before,
            Counts {
                pte_writes: 1,
                ..Counts::default()
            },
            "a write in the section"
        );
        ensure!(
            env::barriers_pending(),
            "no barriers pending in the section"
        );
        irq::set_timer_hook(Some(timer_remap));
        let start = irq::ticks();
        while TIMER_RESULT.load(Relaxed) == 0 && irq::ticks() < start + 100 {
            crate::cpu::wait_for_interrupt();
        }
        irq::set_timer_hook(None);
        ensure!(TIMER_RESULT.load(Relaxed) != 0, "the timer hook never ran");
        ensure_eq!(
            TIMER_RESULT.load(Relaxed),
            1,
            "timer hook outcome (read {:#x})",
            TIMER_READ.load(Relaxed)
        );
        ensure!(
            !TIMER_SAW_ACTIVE.load(Relaxed),
            "the handler saw the mode active"
        );
        ensure!(
            TIMER_SAW_PENDING.load(Relaxed),
            "the handler did not see the task's pending flag"
        );
        // Zap: clear, then dsb ishst, one tlbi, dsb ish, isb. Map: the
        // store, then dsb ishst; isb at once.
        ensure_eq!(
            *TIMER_SPENT.lock(),
            Counts {
                pte_writes: 2,
                dsb_ishst: 2,
                dsb_ish: 1,
                isb: 2,
                tlbi_page: 1,
                tlbi_range: 0,
                tlbi_all: 0,
            },
            "instructions of the handler's remap"
        );
        ensure!(
            env::barriers_pending(),
            "the handler consumed the task's pending barriers"
        );
        // The task sees the handler's mapping at once, still in its section.
        range_tests::expect_run::<Arm64Guest>(va, run.add(FRAME), 1)?;
        let before = counts();
        drop(section);
        ensure_eq!(
            counts() - before,
            Counts {
                dsb_ishst: 1,
                isb: 1,
                ..Counts::default()
            },
            "what the section's end emits"
        );
        ensure!(!env::barriers_pending(), "barriers still pending");
    }
    zap_kernel(va, 2)?;
    free_run(run, 3);
    Ok(())
}

/// The lazy state and the barriers owed and emitted after each step of
/// nested sections with a pause: a nested close emits what is owed (the
/// flush), a pause leaves (emits), a write while paused gets its barriers
/// at once, and the outermost close emits the rest.
fn nesting_and_pause_test() -> Outcome {
    let va = area(7);
    let run = data_run(1)?;
    map_kernel(va, run, 1, Attributes::kernel_data())?;
    let pte = leaf(kernel_root(), va)?;
    // Rewrites the (valid, kernel) entry with its own value.
    let touch = || backend().write_entry(kernel_pte(pte.entry, va, pte.raw));
    let state = |enable_count, pause_count| LazyState {
        enable_count,
        pause_count,
    };
    let start = counts();
    // (dsb ishst, isb) emitted since `start`.
    let pairs = || {
        let spent = counts() - start;
        (spent.dsb_ishst, spent.isb)
    };
    let outer = lazy().section();
    ensure_eq!(lazy().state(), state(1, 0), "after enable");
    touch();
    ensure_eq!(pairs(), (0, 0), "a write in the section");
    let inner = lazy().section();
    ensure_eq!(lazy().state(), state(2, 0), "after nested enable");
    touch();
    drop(inner);
    ensure_eq!(lazy().state(), state(1, 0), "after nested disable");
    ensure_eq!(pairs(), (1, 1), "the nested close flushes");
    touch();
    {
        let _pause = lazy().pause();
        ensure_eq!(lazy().state(), state(1, 1), "paused");
        ensure!(!lazy().is_active(), "paused mode reports active");
        ensure_eq!(pairs(), (2, 2), "the pause leaves");
        // An enable while paused is ignored.
        let ignored = lazy().section();
        ensure_eq!(lazy().state(), state(1, 1), "enable while paused");
        drop(ignored);
        touch();
        ensure_eq!(pairs(), (3, 3), "a write while paused");
    }
    ensure_eq!(lazy().state(), state(1, 0), "resumed");
    ensure_eq!(pairs(), (3, 3), "the resume");
    touch();
    touch();
    drop(outer);
    ensure_eq!(lazy().state(), state(0, 0), "after disable");
    ensure_eq!(pairs(), (4, 4), "the outermost close");
    zap_kernel(va, 1)?;
    free_run(run, 1);
    Ok(())
}

/// One `dsb ishst; isb` per valid kernel entry without lazy mode, one per
/// PTE table with it (the table's section), and nothing else.
fn barrier_count_test() -> Outcome {
    const N: usize = 64;
    let va = area(13);
    let run = data_run(N)?;
    // Create the PTE table first (64 pages do not cover it, so the zap
    // keeps it): the counts below are entry writes only.
    map_kernel(va, run, N, Attributes::kernel_data())?;
    zap_kernel(va, N)?;
    let eager = paging::tables_with(&Eager, kernel_root(), SpaceId::KERNEL);
    let before = counts();
    eager
        .map(
            VirtAddr(va),
            run,
            N as u64 * FRAME,
            Attributes::kernel_data(),
            PageSize::Size4K,
        )
        .map_err(|e| message!("map: {e:?}"))?;
    let spent = counts() - before;
    ensure_eq!(
        (spent.pte_writes, spent.dsb_ishst, spent.isb, spent.dsb_ish),
        (N as u64, N as u64, N as u64, 0),
        "{N} entries without lazy mode"
    );
    range_tests::expect_run::<Arm64Guest>(va, run, N)?;
    zap_kernel(va, N)?;
    let before = counts();
    map_kernel(va, run, N, Attributes::kernel_data())?;
    let spent = counts() - before;
    ensure_eq!(
        (spent.pte_writes, spent.dsb_ishst, spent.isb, spent.dsb_ish),
        (N as u64, 1, 1, 0),
        "{N} entries in one section"
    );
    range_tests::expect_run::<Arm64Guest>(va, run, N)?;
    zap_kernel(va, N)?;
    free_run(run, N);
    Ok(())
}

/// Nothing reported, nothing left pending.
pub fn accounting_test() -> Outcome {
    ensure_eq!(lazy().misuse().count(), 0, "lazy-mode misuse reports");
    ensure_eq!(paging::backend_bugs(), 0, "backend bug reports");
    ensure_eq!(lazy().state(), LazyState::IDLE, "lazy state at the end");
    ensure!(!env::barriers_pending(), "barriers pending at the end");
    ensure_eq!(KernelEnv.preempt_count(), 0, "preemption count at the end");
    let (violations, first) = backend().violations();
    ensure_eq!(
        violations,
        0,
        "break-before-make violations (first: {first:?})"
    );
    ensure_eq!(
        backend().overflows(),
        0,
        "breaks the checker could not hold"
    );
    ensure_eq!(backend().pending(), 0, "breaks never invalidated");
    Ok(())
}

/// Runs every test and returns the tally.
pub fn run_all() -> Report {
    let mut report = Report::default();
    report.run(
        "QEMU keeps a stale translation until tlbi",
        stale_translation_is_observable_test,
    );
    report.run("map", range_tests::map_test::<Arm64Guest>);
    report.run(
        "EL0 access to a kernel page, and an old page, fault",
        el0_and_old_pages_test,
    );
    report.run("zap: exact tlbi and barriers", zap_test);
    report.run("protect", range_tests::protect_test::<Arm64Guest>);
    report.run("move", range_tests::move_test::<Arm64Guest>);
    report.run("apply", range_tests::apply_test::<Arm64Guest>);
    report.run("copy (fork, copy-on-write) in TTBR0 with ASIDs", copy_test);
    report.run(
        "2 MiB block split by a partial zap, and made again",
        block_test,
    );
    report.run(
        "break-before-make violations are reported",
        break_before_make_check_test,
    );
    report.run(
        "no stale translation after disable",
        range_tests::stale_translation_test::<Arm64Guest>,
    );
    report.run(
        "timer interrupt remaps inside a section",
        timer_in_section_test,
    );
    report.run(
        "timer remaps while the task writes entries in a section",
        range_tests::timer_during_operations_test::<Arm64Guest>,
    );
    report.run("nested sections and pause/resume", nesting_and_pause_test);
    report.run(
        "barriers: 1 pair per entry eagerly, 1 per section lazily",
        barrier_count_test,
    );
    report.run("no misuse, no break-before-make violation", accounting_test);
    report
}
