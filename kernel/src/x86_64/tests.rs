//! The guest's tests: every range operation checked by real loads and
//! stores through QEMU's MMU and by the page faults expected, stale
//! translations, an interrupt handler changing a mapping inside a section,
//! nesting and pause, the PKS security property, and PKRS write counts.

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use lazymmu::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use lazymmu::backend::{EntryUpdate, FlushScope, PteAccess};
use lazymmu::mode::eager::Eager;
use lazymmu::mode::{LazyMode, LazyState};
use lazymmu::pgtable::allocator::FrameAllocator;
use lazymmu::pgtable::format::{Attributes, X86_64};
use lazymmu::pgtable::gather::Gather;
use lazymmu::pgtable::ops::{CopyKind, MapError};

use crate::check::{Message, Outcome, Report};
use crate::interrupts::{self, PageFault, PF_PRESENT, PF_PROTECTION_KEY, PF_WRITE};
use crate::memory::{DIRECT_MAP_BASE, FRAME};
use crate::page_tables::{self, kernel_root, PageTableFrames, TABLE_FRAMES};
use crate::paging::{
    self, backend, kernel_tables, kernel_tables_with, lazy, KernelBackend, KernelLazy, KernelTables,
};
use crate::pks::{self, DEFAULT_PKRS, OPEN_PKRS};
use crate::range_tests::{self, Guest};
use crate::{cpu, ensure, ensure_eq, message};

/// Kernel virtual addresses the tests map (Linux's vmalloc area); each test
/// gets its own 1 GiB so that their tables do not interfere.
pub const TEST_BASE: u64 = 0xffff_c900_0000_0000;

/// The test area number `n`.
pub fn area(n: u64) -> u64 {
    TEST_BASE + (n << 30)
}

use paging::USER_BASE;

pub use crate::testdata::{data_run, free_run, pattern};

/// A gather for the kernel's address space: its flushes reach every CPU,
/// since kernel mappings are shared (Linux's `flush_tlb_kernel_range`,
/// an `on_each_cpu` of the flush).
pub fn kernel_gather() -> Gather<'static, KernelBackend, PageTableFrames> {
    Gather::new(
        backend(),
        &TABLE_FRAMES,
        SpaceId::KERNEL,
        FlushScope::Cpus(lazymmu::cpu::CpuMask::from_bits(
            crate::percpu::online_mask(),
        )),
    )
}

/// A gather for a kernel page only the executing CPU uses (a per-CPU
/// mapping, as `kmap_local` has): its flush stays on this CPU, which is
/// what an interrupt handler may do.
pub fn cpu_local_gather() -> Gather<'static, KernelBackend, PageTableFrames> {
    Gather::new(backend(), &TABLE_FRAMES, SpaceId::KERNEL, FlushScope::Local)
}

/// Checks that reading `va` faults as not present.
fn expect_absent(va: u64) -> Outcome {
    match interrupts::read(va) {
        Ok(value) => Err(message!("read {va:#x} gave {value:#x}, expected a fault")),
        Err(PageFault {
            address,
            error_code,
        }) => {
            ensure_eq!(address, va, "fault address");
            ensure_eq!(
                error_code & PF_PRESENT,
                0,
                "error code {error_code:#x} present bit"
            );
            Ok(())
        }
    }
}

/// Checks that writing `va` faults with exactly `code`.
fn expect_write_fault(va: u64, code: u64) -> Outcome {
    let old = interrupts::read(va).unwrap_or(0);
    // SAFETY: if the write unexpectedly succeeds it stores the value the
    // page already held.
    match unsafe { interrupts::write(va, old) } {
        Ok(()) => Err(message!(
            "write {va:#x} succeeded, expected fault {code:#x}"
        )),
        Err(fault) => {
            ensure_eq!(fault.address, va, "fault address");
            ensure_eq!(fault.error_code, code, "error code at {va:#x}");
            Ok(())
        }
    }
}

fn write(va: u64, value: u64) -> Outcome {
    // SAFETY: the tests only write pages they mapped to their own frames.
    unsafe { interrupts::write(va, value) }.map_err(|fault| message!("write {va:#x}: {fault:?}"))
}

/// This kernel's MMU for the tests both kernels run
/// ([`crate::range_tests`]): kernel mappings through the PKS-protected
/// backend, flushed on every online CPU.
pub struct X86Guest;

impl Guest for X86Guest {
    type Backend = KernelBackend;
    type Lazy = KernelLazy;

    fn area(n: u64) -> u64 {
        area(n)
    }

    fn tables() -> KernelTables<'static, KernelLazy> {
        kernel_tables()
    }

    fn gather() -> Gather<'static, KernelBackend, PageTableFrames> {
        kernel_gather()
    }

    fn gather_here() -> Gather<'static, KernelBackend, PageTableFrames> {
        cpu_local_gather()
    }

    fn read(va: u64) -> Result<u64, Message> {
        interrupts::read(va).map_err(|fault| message!("read {va:#x}: {fault:?}"))
    }

    fn write(va: u64, value: u64) -> Outcome {
        write(va, value)
    }

    fn expect_absent(va: u64) -> Outcome {
        expect_absent(va)
    }

    fn expect_read_only(va: u64) -> Outcome {
        expect_write_fault(va, PF_PRESENT | PF_WRITE)
    }

    fn ticks() -> u64 {
        interrupts::ticks()
    }

    fn set_timer_hook(hook: Option<fn()>) {
        interrupts::set_timer_hook(hook);
    }

    fn after_sections() -> Outcome {
        ensure_eq!(pks::read(), DEFAULT_PKRS, "PKRS after the sections");
        Ok(())
    }
}

const PAGES: usize = 8;

fn zap_test() -> Outcome {
    let tables = kernel_tables();
    let va = area(1);
    let run = data_run(64)?;
    tables
        .map(
            VirtAddr(va),
            run,
            64 * FRAME,
            Attributes::kernel_data(),
            PageSize::Size4K,
        )
        .map_err(|e| message!("map: {e:?}"))?;
    // Warm the TLB so that a missing invalidation would be visible.
    range_tests::expect_run::<X86Guest>(va, run, 64)?;
    // Few pages: one invlpg each.
    let before = paging::counts();
    let mut gather = kernel_gather();
    let summary = tables
        .zap(VirtAddr(va), PAGES as u64 * FRAME, &mut gather)
        .map_err(|e| message!("zap: {e:?}"))?;
    drop(gather);
    let spent = paging::counts() - before;
    ensure_eq!(summary.leaves[0], PAGES as u64, "leaves zapped");
    ensure_eq!(spent.invlpg, PAGES as u64, "invlpg for {PAGES} pages");
    for i in 0..PAGES as u64 {
        expect_absent(va + i * FRAME)?;
    }
    range_tests::expect_run::<X86Guest>(
        va + PAGES as u64 * FRAME,
        run.add(PAGES as u64 * FRAME),
        64 - PAGES,
    )?;
    // More pages than the ceiling (33): one full flush instead.
    let rest = va + PAGES as u64 * FRAME;
    let before = paging::counts();
    let mut gather = kernel_gather();
    tables
        .zap(VirtAddr(rest), (64 - PAGES) as u64 * FRAME, &mut gather)
        .map_err(|e| message!("zap: {e:?}"))?;
    drop(gather);
    let spent = paging::counts() - before;
    ensure_eq!(spent.invlpg, 0, "invlpg above the ceiling");
    ensure_eq!(spent.global_flushes, 1, "full flushes above the ceiling");
    for i in 0..(64 - PAGES) as u64 {
        expect_absent(rest + i * FRAME)?;
    }
    free_run(run, 64);
    Ok(())
}

fn copy_test() -> Outcome {
    let parent_root = paging::new_user_root().ok_or(message!("no root"))?;
    let child_root = paging::new_user_root().ok_or(message!("no root"))?;
    let parent = page_tables::tables_on(backend(), lazy(), parent_root, SpaceId(1));
    let child = page_tables::tables_on(backend(), lazy(), child_root, SpaceId(2));
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
    paging::switch_to(parent_root, SpaceId(1));
    let outcome = (|| {
        // Writable in the parent, and cached so.
        write(USER_BASE + 16, 1)?;
        let mut gather = Gather::new(backend(), &TABLE_FRAMES, SpaceId(1), FlushScope::Local);
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
        // Copy-on-write: the parent lost write access at once.
        expect_write_fault(USER_BASE, PF_PRESENT | PF_WRITE)?;
        range_tests::expect_run::<X86Guest>(USER_BASE, run, PAGES)?;
        paging::switch_to(child_root, SpaceId(2));
        range_tests::expect_run::<X86Guest>(USER_BASE, run, PAGES)?;
        expect_write_fault(USER_BASE, PF_PRESENT | PF_WRITE)?;
        Ok(())
    })();
    paging::switch_to(kernel_root(), SpaceId::KERNEL);
    outcome?;
    // Tear down the user halves (slot 1 wholly), then the roots.
    for (tables, space) in [(&parent, SpaceId(1)), (&child, SpaceId(2))] {
        let mut gather = Gather::new(backend(), &TABLE_FRAMES, space, FlushScope::Local);
        tables
            .zap(VirtAddr(USER_BASE), 1 << 39, &mut gather)
            .map_err(|e| message!("zap: {e:?}"))?;
    }
    TABLE_FRAMES.free(parent_root);
    TABLE_FRAMES.free(child_root);
    free_run(run, PAGES);
    Ok(())
}

// State shared with the timer hook.
static TIMER_VA: AtomicU64 = AtomicU64::new(0);
static TIMER_FRAME: AtomicU64 = AtomicU64::new(0);
/// 0: not run; 1: passed; 2+: which check failed.
static TIMER_RESULT: AtomicU64 = AtomicU64::new(0);
static TIMER_PKRS_SEEN: AtomicU64 = AtomicU64::new(0);
static TIMER_READ: AtomicU64 = AtomicU64::new(0);

/// Runs in the timer interrupt, in the middle of the task's section: remaps
/// a kernel page and uses it at once.
fn timer_remap() {
    if TIMER_RESULT.load(Relaxed) != 0 {
        return;
    }
    let va = TIMER_VA.load(Relaxed);
    let frame = PhysAddr(TIMER_FRAME.load(Relaxed));
    // The exception entry closed the section's window.
    TIMER_PKRS_SEEN.store(pks::read(), Relaxed);
    let tables = kernel_tables();
    let mut gather = cpu_local_gather();
    let zapped = tables.zap(VirtAddr(va), FRAME, &mut gather).is_ok();
    drop(gather);
    let mapped = tables
        .map(
            VirtAddr(va),
            frame,
            FRAME,
            Attributes::kernel_data(),
            PageSize::Size4K,
        )
        .is_ok();
    let read = interrupts::read(va).unwrap_or(0);
    TIMER_READ.store(read, Relaxed);
    let result = match (zapped, mapped, read == pattern(frame)) {
        (true, true, true) => 1,
        (false, _, _) => 2,
        (_, false, _) => 3,
        _ => 4,
    };
    TIMER_RESULT.store(result, Relaxed);
}

fn timer_in_section_test() -> Outcome {
    let tables = kernel_tables();
    let va = area(6);
    let run = data_run(2)?;
    tables
        .map(
            VirtAddr(va),
            run,
            FRAME,
            Attributes::kernel_data(),
            PageSize::Size4K,
        )
        .map_err(|e| message!("map: {e:?}"))?;
    range_tests::expect_run::<X86Guest>(va, run, 1)?;
    TIMER_VA.store(va, Relaxed);
    TIMER_FRAME.store(run.add(FRAME).0, Relaxed);
    TIMER_RESULT.store(0, Relaxed);
    {
        let _section = lazy().section();
        ensure_eq!(pks::read(), OPEN_PKRS, "PKRS inside the section");
        interrupts::set_timer_hook(Some(timer_remap));
        let start = interrupts::ticks();
        while TIMER_RESULT.load(Relaxed) == 0 && interrupts::ticks() < start + 100 {
            cpu::halt();
        }
        interrupts::set_timer_hook(None);
        ensure!(TIMER_RESULT.load(Relaxed) != 0, "the timer hook never ran");
        ensure_eq!(
            TIMER_RESULT.load(Relaxed),
            1,
            "timer hook outcome (read {:#x})",
            TIMER_READ.load(Relaxed)
        );
        ensure_eq!(
            TIMER_PKRS_SEEN.load(Relaxed),
            DEFAULT_PKRS,
            "PKRS in the handler"
        );
        // The exception return restored the section's window.
        ensure_eq!(pks::read(), OPEN_PKRS, "PKRS after the interrupt");
        // The task sees the handler's mapping at once, still in its section.
        range_tests::expect_run::<X86Guest>(va, run.add(FRAME), 1)?;
    }
    ensure_eq!(pks::read(), DEFAULT_PKRS, "PKRS after the section");
    let mut gather = kernel_gather();
    tables
        .zap(VirtAddr(va), FRAME, &mut gather)
        .map_err(|e| message!("{e:?}"))?;
    drop(gather);
    free_run(run, 2);
    Ok(())
}

fn nesting_and_pause_test() -> Outcome {
    let tables = kernel_tables();
    let va = area(7);
    let run = data_run(2)?;
    // Create the tables first so the counts below are entry writes only.
    tables
        .map(
            VirtAddr(va),
            run,
            FRAME,
            Attributes::kernel_data(),
            PageSize::Size4K,
        )
        .map_err(|e| message!("map: {e:?}"))?;
    let state = |enable_count, pause_count| LazyState {
        enable_count,
        pause_count,
    };
    let writes = pks::writes;
    let start = writes();
    let outer = lazy().section();
    ensure_eq!(lazy().state(), state(1, 0), "after enable");
    ensure_eq!(writes() - start, 1, "PKRS writes after the outer enable");
    ensure_eq!(pks::read(), OPEN_PKRS, "PKRS in the section");
    let inner = lazy().section();
    ensure_eq!(lazy().state(), state(2, 0), "after nested enable");
    ensure_eq!(writes() - start, 1, "PKRS writes after the nested enable");
    {
        let _pause = lazy().pause();
        ensure_eq!(lazy().state(), state(2, 1), "paused");
        ensure!(!lazy().is_active(), "paused mode reports active");
        ensure_eq!(pks::read(), DEFAULT_PKRS, "PKRS while paused");
        ensure_eq!(writes() - start, 2, "PKRS writes after pause");
        // An enable while paused is ignored.
        let ignored = lazy().section();
        ensure_eq!(lazy().state(), state(2, 1), "enable while paused");
        drop(ignored);
        // A write while paused opens and closes its own window, and takes
        // effect at once.
        tables
            .map(
                VirtAddr(va + FRAME),
                run.add(FRAME),
                FRAME,
                Attributes::kernel_data(),
                PageSize::Size4K,
            )
            .map_err(|e| message!("map: {e:?}"))?;
        ensure_eq!(
            writes() - start,
            4,
            "PKRS writes after a write while paused"
        );
        range_tests::expect_run::<X86Guest>(va + FRAME, run.add(FRAME), 1)?;
    }
    ensure_eq!(lazy().state(), state(2, 0), "resumed");
    ensure_eq!(pks::read(), OPEN_PKRS, "PKRS after resume");
    ensure_eq!(writes() - start, 5, "PKRS writes after resume");
    drop(inner);
    ensure_eq!(lazy().state(), state(1, 0), "after nested disable");
    ensure_eq!(writes() - start, 5, "PKRS writes after the nested disable");
    drop(outer);
    ensure_eq!(lazy().state(), state(0, 0), "after disable");
    ensure_eq!(writes() - start, 6, "PKRS writes after the outer disable");
    ensure_eq!(pks::read(), DEFAULT_PKRS, "PKRS after the section");
    let mut gather = kernel_gather();
    tables
        .zap(VirtAddr(va), 2 * FRAME, &mut gather)
        .map_err(|e| message!("{e:?}"))?;
    drop(gather);
    free_run(run, 2);
    Ok(())
}

/// The security property: a store to a page-table page outside a window
/// faults with P|W|PK, whoever makes it.
fn protection_key_test() -> Outcome {
    let root = kernel_root();
    // The root's last entry maps the top of the upper half: present.
    let entry = DIRECT_MAP_BASE + root.0 + 8 * 256;
    let value = interrupts::read(entry).map_err(|f| message!("reading a page table: {f:?}"))?;
    ensure_eq!(pks::read(), DEFAULT_PKRS, "PKRS outside any section");
    expect_write_fault(entry, PF_PRESENT | PF_WRITE | PF_PROTECTION_KEY)?;
    // A PTE page of a live mapping too.
    let tables = kernel_tables();
    let va = area(8);
    let run = data_run(1)?;
    tables
        .map(
            VirtAddr(va),
            run,
            FRAME,
            Attributes::kernel_data(),
            PageSize::Size4K,
        )
        .map_err(|e| message!("map: {e:?}"))?;
    let pte =
        lazymmu::pgtable::walk::translate::<X86_64, _>(&page_tables::MEMORY, root, VirtAddr(va))
            .map_err(|e| message!("translate: {e:?}"))?
            .entry;
    expect_write_fault(
        DIRECT_MAP_BASE + pte.0,
        PF_PRESENT | PF_WRITE | PF_PROTECTION_KEY,
    )?;
    // Inside a section the window is open: the same store is allowed.
    {
        let _section = lazy().section();
        let current = interrupts::read(entry).unwrap_or(0);
        ensure_eq!(current, value, "entry unchanged");
        // SAFETY: stores the value the entry already holds.
        unsafe { interrupts::write(entry, value) }
            .map_err(|f| message!("store inside the window faulted: {f:?}"))?;
    }
    let mut gather = kernel_gather();
    tables
        .zap(VirtAddr(va), FRAME, &mut gather)
        .map_err(|e| message!("{e:?}"))?;
    drop(gather);
    free_run(run, 1);
    Ok(())
}

/// 2 PKRS writes per outermost section against 2 per entry without lazy
/// sections.
fn pkrs_count_test() -> Outcome {
    const N: u64 = 64;
    let tables = kernel_tables();
    let va = area(9);
    let run = data_run(N as usize)?;
    let map =
        |tables: &dyn Fn() -> Result<(), MapError>| tables().map_err(|e| message!("map: {e:?}"));
    let zap = || -> Outcome {
        let mut gather = kernel_gather();
        tables
            .zap(VirtAddr(va), N * FRAME, &mut gather)
            .map_err(|e| message!("zap: {e:?}"))?;
        Ok(())
    };
    let kernel_data = Attributes::kernel_data();
    // Create the tables (64 pages do not cover a PTE table, so the zap
    // keeps it).
    map(&|| {
        tables
            .map(VirtAddr(va), run, N * FRAME, kernel_data, PageSize::Size4K)
            .map(|_| ())
    })?;
    zap()?;

    let start = pks::writes();
    {
        let _section = lazy().section();
        map(&|| {
            tables
                .map(VirtAddr(va), run, N * FRAME, kernel_data, PageSize::Size4K)
                .map(|_| ())
        })?;
    }
    ensure_eq!(
        pks::writes() - start,
        2,
        "PKRS writes for {N} entries in one section"
    );
    range_tests::expect_run::<X86Guest>(va, run, N as usize)?;
    let start = pks::writes();
    {
        let _section = lazy().section();
        zap()?;
    }
    ensure_eq!(
        pks::writes() - start,
        2,
        "PKRS writes for a zap of {N} in one section"
    );

    let plain = kernel_tables_with(&Eager);
    let start = pks::writes();
    map(&|| {
        plain
            .map(VirtAddr(va), run, N * FRAME, kernel_data, PageSize::Size4K)
            .map(|_| ())
    })?;
    ensure_eq!(
        pks::writes() - start,
        2 * N,
        "PKRS writes for {N} entries without lazy mode"
    );
    range_tests::expect_run::<X86Guest>(va, run, N as usize)?;
    let start = pks::writes();
    let mut gather = kernel_gather();
    plain
        .zap(VirtAddr(va), N * FRAME, &mut gather)
        .map_err(|e| message!("zap: {e:?}"))?;
    drop(gather);
    ensure_eq!(
        pks::writes() - start,
        2 * N,
        "PKRS writes for a zap of {N} without lazy mode"
    );
    free_run(run, N as usize);
    Ok(())
}

fn accounting_test() -> Outcome {
    ensure_eq!(lazy().misuse().count(), 0, "lazy-mode misuse reports");
    ensure_eq!(paging::backend_bugs(), 0, "backend bug reports");
    ensure_eq!(lazy().state(), LazyState::IDLE, "lazy state at the end");
    ensure_eq!(pks::read(), DEFAULT_PKRS, "PKRS at the end");
    ensure_eq!(
        crate::env::KernelEnv.preempt_count(),
        0,
        "preemption count at the end"
    );
    Ok(())
}

/// Runs `test` inside an outer lazy section with interrupts off.
///
/// Under QEMU every IA32_PKRS write flushes the whole software TLB, so a
/// window opened and closed around each entry write would hide a missing
/// invalidation, and so would a timer interrupt (its entry closes the
/// section's window). Inside an outer section with interrupts off the
/// register stays open, nothing flushes behind the library's back, and the
/// first access after an operation sees exactly what its invalidations left
/// in the TLB. (With `invlpg` made a no-op, every range-operation test
/// fails this way.)
fn in_section(test: fn() -> Outcome) -> impl FnOnce() -> Outcome {
    move || {
        let were_enabled = cpu::disable_interrupts();
        let result = {
            let _section = lazy().section();
            test()
        };
        if were_enabled {
            cpu::enable_interrupts();
        }
        result
    }
}

/// Runs `test` with interrupts off: a timer interrupt's entry and return
/// write PKRS, and every PKRS write flushes QEMU's TLB, which would hide
/// the stale translation a test looks for.
fn interrupts_off(test: fn() -> Outcome) -> impl FnOnce() -> Outcome {
    move || {
        let were_enabled = cpu::disable_interrupts();
        let result = test();
        if were_enabled {
            cpu::enable_interrupts();
        }
        result
    }
}

/// The facts the other tests rest on: inside a section (register open)
/// QEMU keeps a stale translation until `invlpg`, so a missing
/// invalidation is observable; a PKRS write flushes QEMU's whole TLB.
fn stale_translation_is_observable_test() -> Outcome {
    let tables = kernel_tables();
    let va = area(10);
    let run = data_run(2)?;
    tables
        .map(
            VirtAddr(va),
            run,
            FRAME,
            Attributes::kernel_data(),
            PageSize::Size4K,
        )
        .map_err(|e| message!("map: {e:?}"))?;
    let pte = lazymmu::pgtable::walk::translate::<X86_64, _>(
        &page_tables::MEMORY,
        kernel_root(),
        VirtAddr(va),
    )
    .map_err(|e| message!("translate: {e:?}"))?;
    let update = |frame: PhysAddr| EntryUpdate {
        entry: pte.entry,
        va: VirtAddr(va),
        space: SpaceId::KERNEL,
        level: 1,
        value: (pte.raw & !lazymmu::pgtable::format::x86::ADDRESS_4K) | frame.0,
        kernel: true,
        valid: true,
        leaf: true,
    };
    {
        let _section = lazy().section();
        range_tests::expect_run::<X86Guest>(va, run, 1)?;
        // Retarget the PTE without invalidating: the TLB still has the old
        // frame.
        backend().write_entry(update(run.add(FRAME)));
        ensure_eq!(
            interrupts::read(va).ok(),
            Some(pattern(run)),
            "stale read before invlpg"
        );
        cpu::invlpg(va);
        ensure_eq!(
            interrupts::read(va).ok(),
            Some(pattern(run.add(FRAME))),
            "read after invlpg"
        );
    }
    // Outside a section the write opens and closes the register, and each
    // PKRS write flushes QEMU's TLB: no stale read even without invlpg.
    range_tests::expect_run::<X86Guest>(va, run.add(FRAME), 1)?;
    backend().write_entry(update(run));
    ensure_eq!(
        interrupts::read(va).ok(),
        Some(pattern(run)),
        "read after a PKRS write"
    );
    let mut gather = kernel_gather();
    tables
        .zap(VirtAddr(va), FRAME, &mut gather)
        .map_err(|e| message!("{e:?}"))?;
    drop(gather);
    free_run(run, 2);
    Ok(())
}

/// Runs every test and returns the tally.
pub fn run_all() -> Report {
    let mut report = Report::default();
    report.run(
        "QEMU keeps a stale translation until invlpg",
        interrupts_off(stale_translation_is_observable_test),
    );
    report.run("map", in_section(range_tests::map_test::<X86Guest>));
    report.run("zap", in_section(zap_test));
    report.run("protect", in_section(range_tests::protect_test::<X86Guest>));
    report.run("move", in_section(range_tests::move_test::<X86Guest>));
    report.run("copy (fork, copy-on-write)", in_section(copy_test));
    report.run("apply", in_section(range_tests::apply_test::<X86Guest>));
    report.run("map, zap, protect outside any section", || {
        range_tests::map_test::<X86Guest>()?;
        zap_test()?;
        range_tests::protect_test::<X86Guest>()
    });
    report.run(
        "no stale translation after disable",
        interrupts_off(range_tests::stale_translation_test::<X86Guest>),
    );
    report.run(
        "timer interrupt remaps inside a section",
        timer_in_section_test,
    );
    report.run(
        "timer remaps while the task writes entries in a section",
        range_tests::timer_during_operations_test::<X86Guest>,
    );
    report.run("nested sections and pause/resume", nesting_and_pause_test);
    report.run(
        "page-table store outside a window faults with PK",
        protection_key_test,
    );
    report.run("PKRS writes: 2 per section vs 2 per entry", pkrs_count_test);
    report.run("no misuse, register restored", accounting_test);
    report
}
