//! The range-operation tests both kernels run, written once over
//! [`Guest`]: what a kernel's MMU looks like to them (its kernel tables and
//! gathers, its faults, its lazy sections, its timer). Each test maps its own data
//! frames ([`crate::testdata`]) in its own test area and checks the result
//! by real loads and stores; the faults each kernel expects (an x86 error
//! code, an arm64 fault status) stay behind [`Guest::expect_absent`] and
//! [`Guest::expect_read_only`].

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use lazymmu::addr::{PageSize, PhysAddr, VirtAddr};
use lazymmu::backend::Backend;
use lazymmu::mode::LazyMode;
use lazymmu::pgtable::format::{Attributes, Protection};
use lazymmu::pgtable::gather::Gather;
use lazymmu::pgtable::ops::{ApplyMode, MapError, PageTables};

use crate::check::{Message, Outcome};
use crate::frames::FRAME;
use crate::memory::phys_to_virt;
use crate::page_tables::PageTableFrames;
use crate::testdata::{data_run, free_run, pattern};
use crate::{ensure, ensure_eq, message, println};

/// The kernel tables of guest `G`, over the memory and frames both
/// kernels share.
pub type Tables<G> =
    PageTables<'static, <G as Guest>::Backend, <G as Guest>::Lazy, PageTableFrames>;

/// A kernel's MMU as the tests see it: its kernel tables (with its lazy
/// mode) and gathers, from which this module makes the operations, and
/// what differs between kernels.
pub trait Guest {
    /// The backend every entry goes through (its format is the tables').
    type Backend: Backend + 'static;
    /// The lazy mode.
    type Lazy: LazyMode + 'static;

    /// The first address of test area `n` (a gigabyte of kernel space).
    fn area(n: u64) -> u64;

    /// The kernel's tables with the kernel's lazy mode.
    fn tables() -> Tables<Self>;

    /// A gather for kernel mappings, flushing every CPU that may hold them.
    fn gather() -> Gather<'static, Self::Backend, PageTableFrames>;

    /// A gather an interrupt handler uses for a page only its CPU maps.
    fn gather_here() -> Gather<'static, Self::Backend, PageTableFrames>;

    /// Loads the 8 bytes at `va`.
    ///
    /// # Errors
    /// A message with the fault.
    fn read(va: u64) -> Result<u64, Message>;

    /// Stores `value` at `va`, a page the test mapped to its own frame.
    ///
    /// # Errors
    /// A message with the fault.
    fn write(va: u64, value: u64) -> Outcome;

    /// Checks that a load of `va` faults as not mapped.
    ///
    /// # Errors
    /// A message when it does not.
    fn expect_absent(va: u64) -> Outcome;

    /// Checks that a store to `va` faults as a write to a read-only page.
    ///
    /// # Errors
    /// A message when it does not.
    fn expect_read_only(va: u64) -> Outcome;

    /// Timer interrupts so far.
    fn ticks() -> u64;

    /// Runs `hook` from every timer interrupt (`None` stops it).
    fn set_timer_hook(hook: Option<fn()>);

    /// What must hold after the task's sections are over (the key
    /// register closed, no barriers owed).
    ///
    /// # Errors
    /// A message saying what does not.
    fn after_sections() -> Outcome;
}

/// Maps `pages` pages from `va` to the frames from `phys`, 4 KiB each.
///
/// # Errors
/// What the library's `map` returned.
pub fn map<G: Guest>(
    va: u64,
    phys: PhysAddr,
    pages: u64,
    attrs: Attributes,
) -> Result<(), MapError> {
    G::tables()
        .map(VirtAddr(va), phys, pages * FRAME, attrs, PageSize::Size4K)
        .map(|_| ())
}

fn zap_with<G: Guest>(
    va: u64,
    pages: u64,
    mut gather: Gather<'static, G::Backend, PageTableFrames>,
) -> Outcome {
    G::tables()
        .zap(VirtAddr(va), pages * FRAME, &mut gather)
        .map(|_| ())
        .map_err(|e| message!("zap {va:#x}: {e:?}"))
}

/// Zaps `pages` pages from `va`, flushing every CPU that may hold them.
///
/// # Errors
/// A message with what the library's `zap` returned.
pub fn zap<G: Guest>(va: u64, pages: u64) -> Outcome {
    zap_with::<G>(va, pages, G::gather())
}

/// Changes the permissions of `pages` pages from `va`.
///
/// # Errors
/// A message with what the library's `protect` returned.
pub fn protect<G: Guest>(va: u64, pages: u64, protection: Protection) -> Outcome {
    G::tables()
        .protect(VirtAddr(va), pages * FRAME, protection, &mut G::gather())
        .map(|_| ())
        .map_err(|e| message!("protect {va:#x}: {e:?}"))
}

/// Runs `body` inside a lazy section of the kernel's lazy mode.
fn section<G: Guest>(body: &mut dyn FnMut() -> Outcome) -> Outcome {
    let tables = G::tables();
    let _section = tables.lazy().section();
    body()
}

/// Checks that the `n` pages at `va` read the patterns of the run at
/// `first`.
///
/// # Errors
/// A message naming the first page that does not.
pub fn expect_run<G: Guest>(va: u64, first: PhysAddr, n: usize) -> Outcome {
    for i in 0..n as u64 {
        let address = va + i * FRAME;
        ensure_eq!(
            G::read(address)?,
            pattern(first.add(i * FRAME)),
            "page {address:#x}"
        );
    }
    Ok(())
}

const PAGES: u64 = 8;

/// [`map`], failing with a message.
///
/// # Errors
/// A message with what the library's `map` returned.
pub fn map_checked<G: Guest>(va: u64, phys: PhysAddr, pages: u64, attrs: Attributes) -> Outcome {
    map::<G>(va, phys, pages, attrs).map_err(|e| message!("map {va:#x}: {e:?}"))
}

/// Map: loads read the frames, a store lands in its frame, the page after
/// the range is absent, a second map of a present page is refused, and a
/// read-only alias of the same frames reads them and refuses stores.
pub fn map_test<G: Guest>() -> Outcome {
    let va = G::area(0);
    let run = data_run(PAGES as usize)?;
    map_checked::<G>(va, run, PAGES, Attributes::kernel_data())?;
    expect_run::<G>(va, run, PAGES as usize)?;
    G::write(va + 8, 0x1234)?;
    // SAFETY: reading our own frame through the direct map.
    let stored = unsafe { ((phys_to_virt(run) + 8) as *const u64).read_volatile() };
    ensure_eq!(stored, 0x1234, "store through the mapping");
    G::expect_absent(va + PAGES * FRAME)?;
    ensure_eq!(
        map::<G>(va, run, 1, Attributes::kernel_data()),
        Err(MapError::AlreadyMapped {
            at: lazymmu::addr::VirtAddr(va),
            level: 1,
        }),
        "mapping over a present entry"
    );
    let ro = va + (1 << 21);
    map_checked::<G>(ro, run, PAGES, Attributes::kernel_data().read_only())?;
    expect_run::<G>(ro, run, PAGES as usize)?;
    G::expect_read_only(ro)?;
    zap::<G>(va, PAGES)?;
    zap::<G>(ro, PAGES)?;
    free_run(run, PAGES as usize);
    Ok(())
}

/// Protect: pages written (and cached writable) become read-only, then
/// writable again.
pub fn protect_test<G: Guest>() -> Outcome {
    let va = G::area(2);
    let run = data_run(PAGES as usize)?;
    map_checked::<G>(va, run, PAGES, Attributes::kernel_data())?;
    for i in 0..PAGES {
        G::write(va + i * FRAME + 16, i)?;
    }
    protect::<G>(va, PAGES, Protection::read_only())?;
    for i in 0..PAGES {
        G::expect_read_only(va + i * FRAME)?;
    }
    expect_run::<G>(va, run, PAGES as usize)?;
    protect::<G>(va, PAGES, Protection::writable())?;
    G::write(va + 16, 77)?;
    zap::<G>(va, PAGES)?;
    free_run(run, PAGES as usize);
    Ok(())
}

/// Move (mremap): the old addresses are absent, the new ones read the
/// frames.
pub fn move_test<G: Guest>() -> Outcome {
    let from = G::area(3);
    let to = from + (4 << 21);
    let run = data_run(PAGES as usize)?;
    map_checked::<G>(from, run, PAGES, Attributes::kernel_data())?;
    expect_run::<G>(from, run, PAGES as usize)?;
    let summary = G::tables()
        .move_range(
            VirtAddr(from),
            VirtAddr(to),
            PAGES * FRAME,
            &mut G::gather(),
        )
        .map_err(|e| message!("move: {e:?}"))?;
    ensure_eq!(summary.moved[0], PAGES, "leaves moved");
    for i in 0..PAGES {
        G::expect_absent(from + i * FRAME)?;
    }
    expect_run::<G>(to, run, PAGES as usize)?;
    zap::<G>(to, PAGES)?;
    free_run(run, PAGES as usize);
    Ok(())
}

/// Apply, vmalloc-style: tables created and every PTE filled from the
/// callback; then every PTE cleared from the callback, the invalidations
/// gathered.
pub fn apply_test<G: Guest>() -> Outcome {
    let va = G::area(4);
    let run = data_run(PAGES as usize)?;
    let summary = G::tables()
        .apply::<(), _, _, _, _>(
            VirtAddr(va),
            PAGES * FRAME,
            ApplyMode::Create,
            &mut G::gather(),
            |slot| {
                let page = (slot.va().0 - va) / FRAME;
                slot.set(run.add(page * FRAME), Attributes::kernel_data());
                Ok(())
            },
        )
        .map_err(|e| message!("apply create: {e:?}"))?;
    ensure_eq!(summary.visited, PAGES, "PTEs visited");
    expect_run::<G>(va, run, PAGES as usize)?;
    G::tables()
        .apply::<(), _, _, _, _>(
            VirtAddr(va),
            PAGES * FRAME,
            ApplyMode::Existing,
            &mut G::gather(),
            |slot| {
                slot.clear();
                Ok(())
            },
        )
        .map_err(|e| message!("apply clear: {e:?}"))?;
    for i in 0..PAGES {
        G::expect_absent(va + i * FRAME)?;
    }
    free_run(run, PAGES as usize);
    Ok(())
}

/// Remaps one page inside a section (zap, then map another frame), closes
/// the section and reads through the mapping: after the disable no stale
/// translation may remain. Nested: the inner disable alone must suffice.
pub fn stale_translation_test<G: Guest>() -> Outcome {
    let va = G::area(5);
    let run = data_run(3)?;
    let remap = |frame: PhysAddr| -> Outcome {
        zap::<G>(va, 1)?;
        map_checked::<G>(va, frame, 1, Attributes::kernel_data())
    };
    map_checked::<G>(va, run, 1, Attributes::kernel_data())?;
    expect_run::<G>(va, run, 1)?;
    section::<G>(&mut || remap(run.add(FRAME)))?;
    expect_run::<G>(va, run.add(FRAME), 1)?;
    section::<G>(&mut || {
        section::<G>(&mut || remap(run.add(2 * FRAME)))?;
        // Only the inner section has closed.
        expect_run::<G>(va, run.add(2 * FRAME), 1)?;
        section::<G>(&mut || protect::<G>(va, 1, Protection::read_only()))?;
        G::expect_read_only(va)
    })?;
    zap::<G>(va, 1)?;
    G::expect_absent(va)?;
    free_run(run, 3);
    Ok(())
}

// State of the hook that remaps a page on every tick.
static FLIP_VA: AtomicU64 = AtomicU64::new(0);
static FLIP_FRAMES: AtomicU64 = AtomicU64::new(0);
static FLIP_RUNS: AtomicU64 = AtomicU64::new(0);
static FLIP_IN_SECTION: AtomicU64 = AtomicU64::new(0);
static FLIP_FAILURES: AtomicU64 = AtomicU64::new(0);

/// Runs on every tick while the task is rewriting its own range inside a
/// section: flips a kernel page between two frames and reads it at once.
fn timer_flip<G: Guest>() {
    let va = FLIP_VA.load(Relaxed);
    let first = PhysAddr(FLIP_FRAMES.load(Relaxed));
    let runs = FLIP_RUNS.load(Relaxed);
    let new = first.add(((runs + 1) % 2) * FRAME);
    if G::tables().lazy().state().enable_count > 0 {
        FLIP_IN_SECTION.fetch_add(1, Relaxed);
    }
    let zapped = zap_with::<G>(va, 1, G::gather_here()).is_ok();
    let mapped = map::<G>(va, new, 1, Attributes::kernel_data()).is_ok();
    if !zapped || !mapped || G::read(va).ok() != Some(pattern(new)) {
        FLIP_FAILURES.fetch_add(1, Relaxed);
    }
    FLIP_RUNS.fetch_add(1, Relaxed);
}

/// Timer interrupts land while the task is in the middle of writing its
/// own entries inside a section: the handler's changes take effect at
/// once, and the task's batch is intact when it resumes.
pub fn timer_during_operations_test<G: Guest>() -> Outcome {
    const TASK_PAGES: u64 = 512;
    let flip_va = G::area(11);
    let task_va = G::area(12);
    let flip = data_run(2)?;
    let run = data_run(TASK_PAGES as usize)?;
    map_checked::<G>(flip_va, flip, 1, Attributes::kernel_data())?;
    FLIP_VA.store(flip_va, Relaxed);
    FLIP_FRAMES.store(flip.0, Relaxed);
    FLIP_RUNS.store(0, Relaxed);
    FLIP_IN_SECTION.store(0, Relaxed);
    FLIP_FAILURES.store(0, Relaxed);
    let start = G::ticks();
    let mut rounds = 0u64;
    G::set_timer_hook(Some(timer_flip::<G>));
    let outcome = (|| -> Outcome {
        while G::ticks() < start + 50 {
            section::<G>(&mut || {
                map_checked::<G>(task_va, run, TASK_PAGES, Attributes::kernel_data())?;
                expect_run::<G>(task_va, run, TASK_PAGES as usize)?;
                zap::<G>(task_va, TASK_PAGES)
            })?;
            rounds += 1;
        }
        Ok(())
    })();
    G::set_timer_hook(None);
    outcome?;
    ensure_eq!(
        FLIP_FAILURES.load(Relaxed),
        0,
        "handler remaps that did not read back"
    );
    ensure!(
        FLIP_IN_SECTION.load(Relaxed) >= 10,
        "only {} of {} ticks landed in the task's section ({rounds} rounds)",
        FLIP_IN_SECTION.load(Relaxed),
        FLIP_RUNS.load(Relaxed)
    );
    G::after_sections()?;
    println!(
        "  ({} of {} ticks landed in the task's section; {rounds} rounds of {TASK_PAGES} pages)",
        FLIP_IN_SECTION.load(Relaxed),
        FLIP_RUNS.load(Relaxed)
    );
    let expected = flip.add((FLIP_RUNS.load(Relaxed) % 2) * FRAME);
    expect_run::<G>(flip_va, expected, 1)?;
    zap::<G>(flip_va, 1)?;
    free_run(flip, 2);
    free_run(run, TASK_PAGES as usize);
    Ok(())
}
