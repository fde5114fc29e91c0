//! The guest's tests: every range operation checked by real loads and
//! stores through QEMU's MMU and by the page faults expected, stale
//! translations, an interrupt handler changing a mapping inside a section,
//! nesting and pause, the PKS security property, and PKRS write counts.

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use lazymmu::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use lazymmu::backend::{EntryUpdate, FlushScope, PteAccess};
use lazymmu::mode::{LazyMode, LazyState};
use lazymmu::pgtable::allocator::FrameAllocator;
use lazymmu::pgtable::format::{Attributes, X86_64};
use lazymmu::pgtable::gather::Gather;
use lazymmu::pgtable::ops::{ApplyMode, CopyKind, MapError};

use crate::check::{Outcome, Report};
use crate::interrupts::{self, PageFault, PF_PRESENT, PF_PROTECTION_KEY, PF_WRITE};
use crate::memory::{self, DIRECT_MAP_BASE, FRAME};
use crate::paging::{
    self, backend, kernel_root, kernel_tables, kernel_tables_with, lazy, KernelBackend, NoLazy,
    PageTableFrames, TABLE_FRAMES,
};
use crate::pks::{self, DEFAULT_PKRS, OPEN_PKRS};
use crate::{cpu, ensure, ensure_eq, message};

/// Kernel virtual addresses the tests map (Linux's vmalloc area); each test
/// gets its own 1 GiB so that their tables do not interfere.
pub const TEST_BASE: u64 = 0xffff_c900_0000_0000;

/// The test area number `n`.
pub fn area(n: u64) -> u64 {
    TEST_BASE + (n << 30)
}

use paging::USER_BASE;

/// The value the tests store in the first word of a data frame.
pub fn pattern(frame: PhysAddr) -> u64 {
    0x5a5a_0000_0000_0000 ^ frame.0
}

/// `n` physically contiguous data frames, each holding its [`pattern`].
pub fn data_run(n: usize) -> Result<PhysAddr, crate::check::Message> {
    let first = crate::memory::DATA_FRAMES
        .allocate_run(n)
        .ok_or(message!("no run of {n} free data frames"))?;
    for i in 0..n as u64 {
        let frame = first.add(i * FRAME);
        let page = memory::phys_to_virt(frame) as *mut u64;
        // SAFETY: the frames were just allocated and are direct-mapped with
        // key 0 (writable); nothing else uses them.
        unsafe {
            core::ptr::write_bytes(page, 0, 512);
            page.write_volatile(pattern(frame));
        }
    }
    Ok(first)
}

/// Returns a run from [`data_run`].
pub fn free_run(first: PhysAddr, n: usize) {
    for i in 0..n as u64 {
        paging::free_data_frame(first.add(i * FRAME));
    }
}

/// A gather for the kernel's address space: its flushes reach every CPU,
/// since kernel mappings are shared (Linux's `flush_tlb_kernel_range`,
/// an `on_each_cpu` of the flush).
pub fn kernel_gather() -> Gather<'static, KernelBackend, PageTableFrames> {
    Gather::new(
        backend(),
        &TABLE_FRAMES,
        SpaceId::KERNEL,
        FlushScope::Cpus(crate::percpu::online_mask()),
    )
}

/// A gather for a kernel page only the executing CPU uses (a per-CPU
/// mapping, as `kmap_local` has): its flush stays on this CPU, which is
/// what an interrupt handler may do.
pub fn cpu_local_gather() -> Gather<'static, KernelBackend, PageTableFrames> {
    Gather::new(backend(), &TABLE_FRAMES, SpaceId::KERNEL, FlushScope::Local)
}

/// Checks that the `n` pages at `va` read the patterns of the run at
/// `first`.
fn expect_run(va: u64, first: PhysAddr, n: usize) -> Outcome {
    for i in 0..n as u64 {
        let address = va + i * FRAME;
        match interrupts::read(address) {
            Ok(value) => ensure_eq!(value, pattern(first.add(i * FRAME)), "page {address:#x}"),
            Err(fault) => return Err(message!("read {address:#x}: {fault:?}")),
        }
    }
    Ok(())
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

const PAGES: usize = 8;

fn map_test() -> Outcome {
    let tables = kernel_tables();
    let va = area(0);
    let run = data_run(PAGES)?;
    let len = (PAGES as u64) * FRAME;
    tables
        .map(
            VirtAddr(va),
            run,
            len,
            Attributes::kernel_data(),
            PageSize::Size4K,
        )
        .map_err(|e| message!("map: {e:?}"))?;
    expect_run(va, run, PAGES)?;
    // A store through the new mapping lands in the frame.
    write(va + 8, 0x1234)?;
    // SAFETY: reading our own frame through the direct map.
    let stored = unsafe { ((memory::phys_to_virt(run) + 8) as *const u64).read_volatile() };
    ensure_eq!(stored, 0x1234, "store through the mapping");
    expect_absent(va + len)?;
    ensure_eq!(
        tables.map(
            VirtAddr(va),
            run,
            FRAME,
            Attributes::kernel_data(),
            PageSize::Size4K
        ),
        Err(MapError::AlreadyMapped { at: VirtAddr(va) }),
        "mapping over a present entry"
    );
    // A read-only mapping: loads work, stores fault with P|W.
    let ro = va + (1 << 21);
    tables
        .map(
            VirtAddr(ro),
            run,
            len,
            Attributes::kernel_data().read_only(),
            PageSize::Size4K,
        )
        .map_err(|e| message!("map ro: {e:?}"))?;
    ensure_eq!(
        interrupts::read(ro).ok(),
        Some(pattern(run)),
        "read-only alias"
    );
    expect_write_fault(ro, PF_PRESENT | PF_WRITE)?;
    let mut gather = kernel_gather();
    tables
        .zap(VirtAddr(va), len, &mut gather)
        .map_err(|e| message!("{e:?}"))?;
    tables
        .zap(VirtAddr(ro), len, &mut gather)
        .map_err(|e| message!("{e:?}"))?;
    drop(gather);
    free_run(run, PAGES);
    Ok(())
}

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
    expect_run(va, run, 64)?;
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
    expect_run(
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

fn protect_test() -> Outcome {
    let tables = kernel_tables();
    let va = area(2);
    let len = PAGES as u64 * FRAME;
    let run = data_run(PAGES)?;
    tables
        .map(
            VirtAddr(va),
            run,
            len,
            Attributes::kernel_data(),
            PageSize::Size4K,
        )
        .map_err(|e| message!("map: {e:?}"))?;
    // Writable and cached as writable in the TLB.
    for i in 0..PAGES as u64 {
        write(va + i * FRAME + 16, i)?;
    }
    let mut gather = kernel_gather();
    tables
        .protect(
            VirtAddr(va),
            len,
            Attributes::kernel_data().read_only(),
            &mut gather,
        )
        .map_err(|e| message!("protect: {e:?}"))?;
    drop(gather);
    for i in 0..PAGES as u64 {
        expect_write_fault(va + i * FRAME, PF_PRESENT | PF_WRITE)?;
    }
    expect_run(va, run, PAGES)?;
    let mut gather = kernel_gather();
    tables
        .protect(VirtAddr(va), len, Attributes::kernel_data(), &mut gather)
        .map_err(|e| message!("protect: {e:?}"))?;
    drop(gather);
    write(va + 16, 77)?;
    let mut gather = kernel_gather();
    tables
        .zap(VirtAddr(va), len, &mut gather)
        .map_err(|e| message!("{e:?}"))?;
    drop(gather);
    free_run(run, PAGES);
    Ok(())
}

fn move_test() -> Outcome {
    let tables = kernel_tables();
    let from = area(3);
    let to = area(3) + (4 << 21);
    let len = PAGES as u64 * FRAME;
    let run = data_run(PAGES)?;
    tables
        .map(
            VirtAddr(from),
            run,
            len,
            Attributes::kernel_data(),
            PageSize::Size4K,
        )
        .map_err(|e| message!("map: {e:?}"))?;
    expect_run(from, run, PAGES)?;
    let mut gather = kernel_gather();
    let summary = tables
        .move_range(VirtAddr(from), VirtAddr(to), len, &mut gather)
        .map_err(|e| message!("move: {e:?}"))?;
    drop(gather);
    ensure_eq!(summary.moved[0], PAGES as u64, "leaves moved");
    for i in 0..PAGES as u64 {
        expect_absent(from + i * FRAME)?;
    }
    expect_run(to, run, PAGES)?;
    let mut gather = kernel_gather();
    tables
        .zap(VirtAddr(to), len, &mut gather)
        .map_err(|e| message!("{e:?}"))?;
    drop(gather);
    free_run(run, PAGES);
    Ok(())
}

fn apply_test() -> Outcome {
    let tables = kernel_tables();
    let va = area(4);
    let len = PAGES as u64 * FRAME;
    let run = data_run(PAGES)?;
    // vmalloc-style: create the tables and fill each PTE from the callback.
    let mut gather = kernel_gather();
    let summary = tables
        .apply::<(), _, _, _, _>(VirtAddr(va), len, ApplyMode::Create, &mut gather, |slot| {
            let page = (slot.va().0 - va) / FRAME;
            slot.set(run.add(page * FRAME), Attributes::kernel_data());
            Ok(())
        })
        .map_err(|e| message!("apply create: {e:?}"))?;
    drop(gather);
    ensure_eq!(summary.visited, PAGES as u64, "PTEs visited");
    expect_run(va, run, PAGES)?;
    // Clear every PTE from the callback: the invalidations are gathered.
    let mut gather = kernel_gather();
    tables
        .apply::<(), _, _, _, _>(
            VirtAddr(va),
            len,
            ApplyMode::Existing,
            &mut gather,
            |slot| {
                slot.clear();
                Ok(())
            },
        )
        .map_err(|e| message!("apply clear: {e:?}"))?;
    drop(gather);
    for i in 0..PAGES as u64 {
        expect_absent(va + i * FRAME)?;
    }
    free_run(run, PAGES);
    Ok(())
}

fn copy_test() -> Outcome {
    let kernel = kernel_tables();
    let parent_root = paging::new_user_root().ok_or(message!("no root"))?;
    let child_root = paging::new_user_root().ok_or(message!("no root"))?;
    let parent = kernel.with_root(parent_root, SpaceId(1));
    let child = kernel.with_root(child_root, SpaceId(2));
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
                child_root,
                SpaceId(2),
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
        expect_run(USER_BASE, run, PAGES)?;
        paging::switch_to(child_root, SpaceId(2));
        expect_run(USER_BASE, run, PAGES)?;
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

/// Remaps one page inside a section (zap, then map another frame), closes
/// the section and reads through the mapping: after the disable no stale
/// translation may remain. Nested: the inner disable alone must suffice.
fn stale_translation_test() -> Outcome {
    let tables = kernel_tables();
    let va = area(5);
    let run = data_run(3)?;
    let remap = |frame: PhysAddr| -> Outcome {
        let mut gather = kernel_gather();
        tables
            .zap(VirtAddr(va), FRAME, &mut gather)
            .map_err(|e| message!("zap: {e:?}"))?;
        drop(gather);
        tables
            .map(
                VirtAddr(va),
                frame,
                FRAME,
                Attributes::kernel_data(),
                PageSize::Size4K,
            )
            .map_err(|e| message!("map: {e:?}"))?;
        Ok(())
    };
    tables
        .map(
            VirtAddr(va),
            run,
            FRAME,
            Attributes::kernel_data(),
            PageSize::Size4K,
        )
        .map_err(|e| message!("map: {e:?}"))?;
    expect_run(va, run, 1)?;
    {
        let _section = lazy().section();
        remap(run.add(FRAME))?;
    }
    expect_run(va, run.add(FRAME), 1)?;
    {
        let _outer = lazy().section();
        {
            let _inner = lazy().section();
            remap(run.add(2 * FRAME))?;
        }
        // Only the inner section has closed.
        expect_run(va, run.add(2 * FRAME), 1)?;
        {
            let _inner = lazy().section();
            let mut gather = kernel_gather();
            tables
                .protect(
                    VirtAddr(va),
                    FRAME,
                    Attributes::kernel_data().read_only(),
                    &mut gather,
                )
                .map_err(|e| message!("protect: {e:?}"))?;
        }
        expect_write_fault(va, PF_PRESENT | PF_WRITE)?;
    }
    let mut gather = kernel_gather();
    tables
        .zap(VirtAddr(va), FRAME, &mut gather)
        .map_err(|e| message!("{e:?}"))?;
    drop(gather);
    expect_absent(va)?;
    free_run(run, 3);
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
    expect_run(va, run, 1)?;
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
        expect_run(va, run.add(FRAME), 1)?;
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

// State of the hook that remaps a page on every tick.
static REMAP_RUNS: AtomicU64 = AtomicU64::new(0);
static REMAP_IN_SECTION: AtomicU64 = AtomicU64::new(0);
static REMAP_FAILURES: AtomicU64 = AtomicU64::new(0);

/// Runs on every tick while the task is rewriting its own range inside a
/// section: flips a kernel page between two frames and reads it at once.
fn timer_flip() {
    let va = TIMER_VA.load(Relaxed);
    let frames = [
        PhysAddr(TIMER_FRAME.load(Relaxed)),
        PhysAddr(TIMER_FRAME.load(Relaxed)).add(FRAME),
    ];
    let runs = REMAP_RUNS.load(Relaxed);
    let (old, new) = (
        frames[(runs % 2) as usize],
        frames[(runs % 2 + 1) as usize % 2],
    );
    // The task's state says whether this interrupt landed in its section.
    if lazy().state().enable_count > 0 {
        REMAP_IN_SECTION.fetch_add(1, Relaxed);
    }
    let tables = kernel_tables();
    let mut gather = cpu_local_gather();
    let zapped = tables.zap(VirtAddr(va), FRAME, &mut gather).is_ok();
    drop(gather);
    let mapped = tables
        .map(
            VirtAddr(va),
            new,
            FRAME,
            Attributes::kernel_data(),
            PageSize::Size4K,
        )
        .is_ok();
    if !zapped || !mapped || interrupts::read(va) != Ok(pattern(new)) || old == new {
        REMAP_FAILURES.fetch_add(1, Relaxed);
    }
    REMAP_RUNS.fetch_add(1, Relaxed);
}

/// Timer interrupts land while the task is in the middle of writing its
/// own entries inside a section: the handler's changes take effect at once,
/// and the task's window is back when it resumes (else its next entry
/// write would fault with PK).
fn timer_during_operations_test() -> Outcome {
    const TASK_PAGES: usize = 512;
    let tables = kernel_tables();
    let flip_va = area(11);
    let task_va = area(12);
    let flip = data_run(2)?;
    let run = data_run(TASK_PAGES)?;
    tables
        .map(
            VirtAddr(flip_va),
            flip,
            FRAME,
            Attributes::kernel_data(),
            PageSize::Size4K,
        )
        .map_err(|e| message!("map: {e:?}"))?;
    TIMER_VA.store(flip_va, Relaxed);
    TIMER_FRAME.store(flip.0, Relaxed);
    REMAP_RUNS.store(0, Relaxed);
    REMAP_IN_SECTION.store(0, Relaxed);
    REMAP_FAILURES.store(0, Relaxed);
    let len = TASK_PAGES as u64 * FRAME;
    let start = interrupts::ticks();
    let mut rounds = 0u64;
    interrupts::set_timer_hook(Some(timer_flip));
    let outcome = (|| -> Outcome {
        while interrupts::ticks() < start + 50 {
            let _section = lazy().section();
            tables
                .map(
                    VirtAddr(task_va),
                    run,
                    len,
                    Attributes::kernel_data(),
                    PageSize::Size4K,
                )
                .map_err(|e| message!("task map: {e:?}"))?;
            expect_run(task_va, run, TASK_PAGES)?;
            let mut gather = kernel_gather();
            tables
                .zap(VirtAddr(task_va), len, &mut gather)
                .map_err(|e| message!("task zap: {e:?}"))?;
            rounds += 1;
        }
        Ok(())
    })();
    interrupts::set_timer_hook(None);
    outcome?;
    ensure_eq!(
        REMAP_FAILURES.load(Relaxed),
        0,
        "handler remaps that did not read back"
    );
    ensure!(
        REMAP_IN_SECTION.load(Relaxed) >= 10,
        "only {} of {} ticks landed in the task's section ({rounds} rounds)",
        REMAP_IN_SECTION.load(Relaxed),
        REMAP_RUNS.load(Relaxed)
    );
    ensure_eq!(pks::read(), DEFAULT_PKRS, "PKRS after the sections");
    crate::println!(
        "  ({} of {} ticks landed in the task's section; {rounds} rounds of {TASK_PAGES} pages)",
        REMAP_IN_SECTION.load(Relaxed),
        REMAP_RUNS.load(Relaxed)
    );
    let expected = flip.add((REMAP_RUNS.load(Relaxed) % 2) * FRAME);
    expect_run(flip_va, expected, 1)?;
    let mut gather = kernel_gather();
    tables
        .zap(VirtAddr(flip_va), FRAME, &mut gather)
        .map_err(|e| message!("{e:?}"))?;
    drop(gather);
    free_run(flip, 2);
    free_run(run, TASK_PAGES);
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
        expect_run(va + FRAME, run.add(FRAME), 1)?;
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
    let pte = lazymmu::pgtable::walk::translate::<X86_64, _>(&paging::MEMORY, root, VirtAddr(va))
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
    expect_run(va, run, N as usize)?;
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

    let plain = kernel_tables_with(&NoLazy);
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
    expect_run(va, run, N as usize)?;
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
        &paging::MEMORY,
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
        expect_run(va, run, 1)?;
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
    expect_run(va, run.add(FRAME), 1)?;
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
    report.run("map", in_section(map_test));
    report.run("zap", in_section(zap_test));
    report.run("protect", in_section(protect_test));
    report.run("move", in_section(move_test));
    report.run("copy (fork, copy-on-write)", in_section(copy_test));
    report.run("apply", in_section(apply_test));
    report.run("map, zap, protect outside any section", || {
        map_test()?;
        zap_test()?;
        protect_test()
    });
    report.run(
        "no stale translation after disable",
        interrupts_off(stale_translation_test),
    );
    report.run(
        "timer interrupt remaps inside a section",
        timer_in_section_test,
    );
    report.run(
        "timer remaps while the task writes entries in a section",
        timer_during_operations_test,
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
