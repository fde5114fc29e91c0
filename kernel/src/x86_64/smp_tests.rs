//! The guest's tests on several CPUs: concurrent range operations in one
//! shared address space with no stale translation left on any CPU, tasks
//! migrated inside nested sections, timer interrupts remapping kernel pages
//! inside every CPU's sections, the Linux 7.0 ordering caught by the
//! double-enter check, the per-CPU design refusing to sleep, `active_mm`
//! under the three lazy-TLB policies with address spaces freed under
//! real CPUs, and a stress run with random preemption and migration.
//!
//! Multi-task tests spawn one task per CPU (or more) and join them; the
//! first failure any task reports is the test's. Tasks meet at barriers
//! that spin, running the cross-calls addressed to their CPU meanwhile, so
//! a test may keep interrupts masked — which the stale-translation checks
//! need: under QEMU every IA32_PKRS write flushes the CPU's whole TLB, and
//! an interrupt taken inside a section writes it twice.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use lazymmu::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use lazymmu::backend::machine::BackendBug;
use lazymmu::backend::FlushScope;
use lazymmu::mm::active_mm::LazyTlbStats;
use lazymmu::mode::percpu::{PerCpu as PerCpuMode, PerCpuEnvironment};
use lazymmu::mode::{Environment, LazyMode, LazyState, Misuse, MisusePolicy, Op};
use lazymmu::pgtable::format::{Attributes, Protection};
use lazymmu::pgtable::gather::Gather;

use crate::check::{Message, Outcome, Report};
use crate::interrupts::{self, PF_PRESENT, PF_WRITE};
use crate::linux70::Linux70;
use crate::memory::FRAME;
use crate::page_tables::{self, TABLE_FRAMES};
use crate::paging::{self, backend, lazy, USER_BASE};
use crate::percpu::{self, MAX_CPUS};
use crate::pks::{self, DEFAULT_PKRS, OPEN_PKRS};
use crate::sched::{self, Task};
use crate::smp_backend::{self, bug_bit};
use crate::sync::SpinLock;
use crate::tests::{area, data_run, free_run, kernel_gather, pattern};
use crate::{cpu, ensure, ensure_eq, message, mm, print, println, xcall};

// ---- harness ----------------------------------------------------------

/// "1 CPU", "4 CPUs".
pub struct Cpus(pub usize);

impl core::fmt::Display for Cpus {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let s = if self.0 == 1 { "" } else { "s" };
        write!(f, "{} CPU{s}", self.0)
    }
}

/// The first failure a task of the running test reported.
static FAILURE: SpinLock<Option<Message>> = SpinLock::new(None);

/// Records `outcome` if it is the first failure of the test.
fn record(outcome: Outcome) {
    if let Err(message) = outcome {
        let mut failure = FAILURE.lock();
        if failure.is_none() {
            *failure = Some(message);
        }
    }
}

/// The test's outcome: the first failure recorded, if any (and clears it).
fn take_failure() -> Outcome {
    match FAILURE.lock().take() {
        Some(message) => Err(message),
        None => Ok(()),
    }
}

/// Tasks meet here; the last to arrive releases the others. Waiting runs
/// this CPU's cross-calls, so it works with interrupts masked.
struct Barrier {
    parties: AtomicUsize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
}

impl Barrier {
    const fn new() -> Self {
        Barrier {
            parties: AtomicUsize::new(0),
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
        }
    }

    fn reset(&self, parties: usize) {
        self.arrived.store(0, Ordering::Release);
        self.parties.store(parties, Ordering::Release);
    }

    fn wait(&self) {
        let generation = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.parties.load(Ordering::Acquire) {
            self.arrived.store(0, Ordering::Release);
            self.generation.fetch_add(1, Ordering::AcqRel);
            return;
        }
        xcall::wait_for(
            || self.generation.load(Ordering::Acquire) != generation,
            || {
                panic!(
                    "barrier: {} of {} tasks arrived within {} ms",
                    self.arrived.load(Ordering::Acquire),
                    self.parties.load(Ordering::Acquire),
                    xcall::ACK_TIMEOUT_MS
                )
            },
        );
    }
}

static BARRIER: Barrier = Barrier::new();

/// Runs `entry(cpu)` in one task per CPU `0..cpus`, each pinned to its
/// CPU (user tasks of `space`, or kernel threads), and waits for all.
fn on_each_cpu_task(name: &'static str, cpus: usize, space: Option<SpaceId>, entry: fn(usize)) {
    BARRIER.reset(cpus);
    let mut tasks: [Option<&'static Task>; MAX_CPUS] = [None; MAX_CPUS];
    for (cpu, slot) in tasks.iter_mut().enumerate().take(cpus) {
        *slot = Some(match space {
            Some(space) => mm::spawn_user(space, name, entry, cpu, 1 << cpu),
            None => sched::spawn(name, entry, cpu, 1 << cpu),
        });
    }
    for task in tasks.into_iter().flatten() {
        sched::join(task);
    }
}

fn others(cpus: usize, me: usize) -> impl Iterator<Item = usize> + Clone {
    (0..cpus).filter(move |&c| c != me)
}

/// Pre-creates the page tables over `[va, va + len)` of `space` (map, then
/// zap one page of each 2 MiB), so that tasks working on disjoint 2 MiB
/// pieces never race to create a shared table.
fn precreate_tables(root: PhysAddr, space: SpaceId, va: u64, len: u64, user: bool) -> Outcome {
    let tables = page_tables::tables_on(backend(), lazy(), root, space);
    let frame = paging::data_frame();
    let attrs = if user {
        Attributes::user_data()
    } else {
        Attributes::kernel_data()
    };
    let mut piece = va;
    while piece < va + len {
        tables
            .map(VirtAddr(piece), frame, FRAME, attrs, PageSize::Size4K)
            .map_err(|e| message!("precreate map: {e:?}"))?;
        piece += 2 << 20;
    }
    let mut gather = if space == SpaceId::KERNEL {
        kernel_gather()
    } else {
        Gather::new(backend(), &TABLE_FRAMES, space, FlushScope::Local)
    };
    let mut piece = va;
    while piece < va + len {
        tables
            .zap(VirtAddr(piece), FRAME, &mut gather)
            .map_err(|e| message!("precreate zap: {e:?}"))?;
        piece += 2 << 20;
    }
    drop(gather);
    paging::free_data_frame(frame);
    Ok(())
}

fn read_expect(va: u64, expected: u64, what: What) -> Outcome {
    match interrupts::read(va) {
        Ok(value) if value == expected => Ok(()),
        Ok(value) => Err(message!(
            "{what}: {va:#x} reads {value:#x}, expected {expected:#x}"
        )),
        Err(fault) => Err(message!("{what}: {va:#x} faulted {:#x}", fault.error_code)),
    }
}

/// Where a check is, for its message.
#[derive(Clone, Copy, Debug)]
struct What {
    round: usize,
    checker: usize,
    owner: usize,
}

impl core::fmt::Display for What {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "round {}, CPU {} reading region {}",
            self.round, self.checker, self.owner
        )
    }
}

// ---- shared address space, stale translations --------------------------

const SHARED_PAGES: u64 = 16;
const SHARED_ROUNDS: usize = 12;

static SHARED_SPACE: AtomicU32 = AtomicU32::new(0);
static SHARED_CPUS: AtomicUsize = AtomicUsize::new(0);
/// Per CPU: its two runs of frames.
static SHARED_RUNS: [[AtomicU64; 2]; MAX_CPUS] =
    [const { [const { AtomicU64::new(0) }; 2] }; MAX_CPUS];

/// What a region holds after a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Holds {
    /// Run 0 or 1 of the owner's frames, writable or not.
    Run(usize, bool),
    /// Nothing.
    Absent,
}

/// The four operations in turn: remap to the other run, write-protect,
/// zap the whole 2 MiB (freeing its PTE table), map again.
fn holds_after(round: usize) -> Holds {
    match round % 4 {
        0 => Holds::Run(1, true),
        1 => Holds::Run(1, false),
        2 => Holds::Absent,
        _ => Holds::Run(0, true),
    }
}

fn holds_before(round: usize) -> Holds {
    match round {
        0 => Holds::Run(0, true),
        r => holds_after(r - 1),
    }
}

/// The 2 MiB (one PTE table) CPU `cpu` changes.
fn shared_table(cpu: usize) -> u64 {
    USER_BASE + (cpu as u64) * (2 << 20)
}

/// Where in its 2 MiB CPU `cpu` maps its pages: each CPU's pages start at
/// a different page offset so that, in QEMU's direct-mapped software TLB
/// (indexed by the page number modulo its size, a power of two of at
/// least 64 entries), no two CPUs' pages compete for a slot and evict each
/// other's translations — which would hide a stale one.
fn shared_region(cpu: usize) -> u64 {
    shared_table(cpu) + (cpu as u64) * SHARED_PAGES * FRAME
}

fn shared_page(owner: usize, run: usize, page: u64) -> u64 {
    pattern(PhysAddr(SHARED_RUNS[owner][run].load(Ordering::Acquire)).add(page * FRAME))
}

/// Touches every page of `owner`'s region as it holds `holds`, without
/// any access that faults (a fault writes IA32_PKRS twice, and each write
/// flushes QEMU's TLB): loads every present page, and stores its own value
/// back into every writable one, so that the TLB holds the translations.
fn cache_region(owner: usize, holds: Holds, what: What) -> Outcome {
    let Holds::Run(run, writable) = holds else {
        return Ok(());
    };
    for page in 0..SHARED_PAGES {
        let va = shared_region(owner) + page * FRAME;
        let value = shared_page(owner, run, page);
        read_expect(va, value, what)?;
        if writable {
            // SAFETY: the page maps the owner's frame, which holds `value`.
            unsafe { interrupts::write(va, value) }
                .map_err(|f| message!("{what}: store to {va:#x} faulted {f:?}"))?;
        }
    }
    Ok(())
}

/// Checks `owner`'s region against `holds`, page `first` first: only the
/// first access that is meant to fault can see a stale translation (its
/// fault flushes the TLB), so the page checked first rotates.
fn check_region(owner: usize, holds: Holds, first: u64, what: What) -> Outcome {
    for step in 0..SHARED_PAGES {
        let page = (first + step) % SHARED_PAGES;
        let va = shared_region(owner) + page * FRAME;
        match holds {
            Holds::Run(run, writable) => {
                let old = shared_page(owner, 1 - run, page);
                if interrupts::read(va) == Ok(old) {
                    return Err(message!(
                        "{what}: {va:#x} still reads the frame it was remapped from (stale translation)"
                    ));
                }
                read_expect(va, shared_page(owner, run, page), what)?;
                if !writable {
                    // SAFETY: if the store succeeds (a stale writable
                    // translation), it writes the value the page holds.
                    let stored = unsafe { interrupts::write(va, shared_page(owner, run, page)) };
                    match stored {
                        Ok(()) => {
                            return Err(message!(
                                "{what}: store to write-protected {va:#x} succeeded (stale writable translation)"
                            ))
                        }
                        Err(fault) => ensure_eq!(
                            fault.error_code,
                            PF_PRESENT | PF_WRITE,
                            "{what}: fault at {va:#x}"
                        ),
                    }
                }
            }
            Holds::Absent => match interrupts::read(va) {
                Ok(value) => {
                    return Err(message!(
                        "{what}: zapped {va:#x} still reads {value:#x} (stale translation)"
                    ))
                }
                Err(fault) => {
                    ensure_eq!(fault.error_code & PF_PRESENT, 0, "{what}: fault at {va:#x}")
                }
            },
        }
    }
    Ok(())
}

/// This CPU's operation of `round` on its own region.
fn shared_operation(cpu: usize, round: usize) -> Outcome {
    let space = SpaceId(SHARED_SPACE.load(Ordering::Acquire));
    let tables = page_tables::tables_on(backend(), lazy(), mm::root_of(space), space);
    let va = VirtAddr(shared_region(cpu));
    let len = SHARED_PAGES * FRAME;
    let run = |i: usize| PhysAddr(SHARED_RUNS[cpu][i].load(Ordering::Acquire));
    // The scope is ignored for a registered space: the lazy-TLB policy
    // picks the CPUs.
    let mut gather = Gather::new(backend(), &TABLE_FRAMES, space, FlushScope::Local);
    match round % 4 {
        0 => {
            tables
                .zap(va, len, &mut gather)
                .map_err(|e| message!("zap: {e:?}"))?;
            gather.flush();
            tables
                .map(va, run(1), len, Attributes::user_data(), PageSize::Size4K)
                .map_err(|e| message!("map: {e:?}"))?;
        }
        1 => {
            tables
                .protect(va, len, Protection::read_only(), &mut gather)
                .map_err(|e| message!("protect: {e:?}"))?;
        }
        2 => {
            let summary = tables
                .zap(VirtAddr(shared_table(cpu)), 2 << 20, &mut gather)
                .map_err(|e| message!("zap: {e:?}"))?;
            ensure_eq!(summary.tables_freed, 1, "PTE tables freed by the zap");
        }
        _ => {
            tables
                .map(va, run(0), len, Attributes::user_data(), PageSize::Size4K)
                .map_err(|e| message!("map: {e:?}"))?;
        }
    }
    drop(gather);
    Ok(())
}

fn shared_task(cpu: usize) {
    let cpus = SHARED_CPUS.load(Ordering::Acquire);
    // Barriers met so far: a task that fails still meets every barrier
    // the others will wait at.
    let mut met = 0;
    let meet = |met: &mut usize| {
        BARRIER.wait();
        *met += 1;
    };
    for round in 0..SHARED_ROUNDS {
        meet(&mut met);
        let were_enabled = cpu::disable_interrupts();
        let outcome = (|| -> Outcome {
            let _outer = lazy().section();
            for owner in others(cpus, cpu) {
                let what = What {
                    round,
                    checker: cpu,
                    owner,
                };
                cache_region(owner, holds_before(round), what)?;
            }
            meet(&mut met);
            {
                let _inner = lazy().section();
                shared_operation(cpu, round)?;
            }
            // The inner section is closed: every CPU's change is flushed
            // everywhere once all are here.
            meet(&mut met);
            let mut owners = others(cpus, cpu).cycle().skip(round);
            for _ in 1..cpus {
                let owner = owners.next().unwrap_or(cpu);
                let what = What {
                    round,
                    checker: cpu,
                    owner,
                };
                check_region(owner, holds_after(round), (round + cpu) as u64, what)?;
            }
            check_region(
                cpu,
                holds_after(round),
                0,
                What {
                    round,
                    checker: cpu,
                    owner: cpu,
                },
            )
        })();
        if were_enabled {
            cpu::enable_interrupts();
        }
        if outcome.is_err() {
            record(outcome);
            // Keep meeting the others so that nobody waits for this task.
            while met < 3 * SHARED_ROUNDS {
                meet(&mut met);
            }
            return;
        }
    }
}

/// Every CPU runs a user task of one address space; in each round all of
/// them cache each other's pages, change their own 2 MiB inside a nested
/// section (remap, write-protect, zap with the PTE table freed, map),
/// and, once every inner section is closed, check every other CPU's pages
/// with real loads and stores: a translation left stale by a missing
/// shootdown reads the old frame, or stores where it must fault.
fn shared_space_test(cpus: usize) -> Outcome {
    let space = mm::create_space().map_err(|e| message!("{e}"))?;
    SHARED_SPACE.store(space.0, Ordering::Release);
    SHARED_CPUS.store(cpus, Ordering::Release);
    let root = mm::root_of(space);
    precreate_tables(root, space, USER_BASE, (cpus as u64) * (2 << 20), true)?;
    let tables = page_tables::tables_on(backend(), lazy(), root, space);
    for (cpu, runs) in SHARED_RUNS.iter().enumerate().take(cpus) {
        for (i, run) in runs.iter().enumerate() {
            let frames = data_run(SHARED_PAGES as usize)?;
            run.store(frames.0, Ordering::Release);
            if i == 0 {
                tables
                    .map(
                        VirtAddr(shared_region(cpu)),
                        frames,
                        SHARED_PAGES * FRAME,
                        Attributes::user_data(),
                        PageSize::Size4K,
                    )
                    .map_err(|e| message!("initial map: {e:?}"))?;
            }
        }
    }
    let ipis = xcall::IPIS_SENT.total();
    on_each_cpu_task("shared", cpus, Some(space), shared_task);
    let ipis = xcall::IPIS_SENT.total() - ipis;
    mm::release_space(space);
    for runs in SHARED_RUNS.iter().take(cpus) {
        for run in runs {
            free_run(PhysAddr(run.load(Ordering::Acquire)), SHARED_PAGES as usize);
        }
    }
    take_failure()?;
    if cpus > 1 {
        ensure!(ipis > 0, "no cross-call IPI was sent");
    }
    println!(
        "  ({SHARED_ROUNDS} rounds on {}, {SHARED_PAGES} pages each, {ipis} IPIs)",
        Cpus(cpus)
    );
    Ok(())
}

// ---- migration inside a nested section ----------------------------------

const MIGRATION_PAGES: u64 = 8;

fn migration_checks(task_area: u64, run: PhysAddr) -> Outcome {
    let tables = paging::kernel_tables();
    let len = MIGRATION_PAGES * FRAME;
    let from = percpu::cpu_index();
    let to = (from + 1) % percpu::online_count();
    let outer = lazy().section();
    let inner = lazy().section();
    tables
        .map(
            VirtAddr(task_area),
            run,
            len / 2,
            Attributes::kernel_data(),
            PageSize::Size4K,
        )
        .map_err(|e| message!("map before: {e:?}"))?;
    sched::migrate_to(to);
    let here = percpu::cpu_index();
    // The switch restored the open register; from here on the batch needs
    // no window of its own.
    let writes = pks::writes();
    ensure_eq!(here, to, "CPU after the migration");
    ensure_eq!(
        lazy().state(),
        LazyState {
            enable_count: 2,
            pause_count: 0
        },
        "lazy state on the new CPU"
    );
    ensure_eq!(pks::read(), OPEN_PKRS, "PKRS on the new CPU");
    ensure!(
        backend().cpu_in_lazy_mode(),
        "the new CPU is not in lazy MMU mode"
    );
    let old_in_lazy = AtomicBool::new(true);
    xcall::call_many(
        1 << from,
        &|_| old_in_lazy.store(backend().cpu_in_lazy_mode(), Ordering::Release),
        || {},
    );
    ensure!(
        !old_in_lazy.load(Ordering::Acquire),
        "CPU {from} is still in lazy MMU mode after the task left"
    );
    // The batch goes on where it left off, with the section's window.
    tables
        .map(
            VirtAddr(task_area + len / 2),
            run.add(len / 2),
            len / 2,
            Attributes::kernel_data(),
            PageSize::Size4K,
        )
        .map_err(|e| message!("map after: {e:?}"))?;
    ensure_eq!(
        pks::writes() - writes,
        0,
        "PKRS writes on the new CPU while the batch goes on"
    );
    drop(inner);
    // Every CPU sees the whole run once the nested section is closed.
    let seen = AtomicU64::new(0);
    xcall::call_many(
        percpu::online_mask(),
        &|cpu| {
            let ok = (0..MIGRATION_PAGES).all(|i| {
                interrupts::read(task_area + i * FRAME) == Ok(pattern(run.add(i * FRAME)))
            });
            if ok {
                seen.fetch_or(1 << cpu, Ordering::AcqRel);
            }
        },
        || {},
    );
    ensure_eq!(
        seen.load(Ordering::Acquire) | (1 << here),
        percpu::online_mask(),
        "CPUs that read the run through the new mappings"
    );
    drop(outer);
    ensure_eq!(pks::read(), DEFAULT_PKRS, "PKRS after the section");
    ensure_eq!(lazy().state(), LazyState::IDLE, "lazy state after");
    // Preempted and moved by the timer inside a nested section this time.
    let start = sched::current().migrations.load(Ordering::Relaxed);
    sched::set_random_migration(500);
    let mut rounds = 0u64;
    {
        let _outer = lazy().section();
        let _inner = lazy().section();
        while sched::current().migrations.load(Ordering::Relaxed) < start + 3 {
            rounds += 1;
            ensure!(rounds < 10_000_000, "the timer never migrated the task");
            ensure_eq!(pks::read(), OPEN_PKRS, "PKRS after a preemption");
        }
    }
    sched::set_random_migration(0);
    ensure_eq!(lazy().state(), LazyState::IDLE, "lazy state after");
    let mut gather = kernel_gather();
    tables
        .zap(VirtAddr(task_area), len, &mut gather)
        .map_err(|e| message!("zap: {e:?}"))?;
    Ok(())
}

static MIGRATION_AREA: AtomicU64 = AtomicU64::new(0);
static MIGRATION_RUN: AtomicU64 = AtomicU64::new(0);

fn migration_task(_: usize) {
    record(migration_checks(
        MIGRATION_AREA.load(Ordering::Acquire),
        PhysAddr(MIGRATION_RUN.load(Ordering::Acquire)),
    ));
}

/// A task opens a nested section, maps half a run, moves to another CPU,
/// maps the other half with the same window, and closes: the lazy state,
/// the open PKRS and the CPU's lazy MMU mode travel with it, the old CPU
/// leaves lazy mode, and after the inner close every CPU reads the run.
/// Then the timer moves it three times inside a nested section.
fn migration_test() -> Outcome {
    let task_area = area(20);
    precreate_tables(
        page_tables::kernel_root(),
        SpaceId::KERNEL,
        task_area,
        2 << 20,
        false,
    )?;
    let run = data_run(MIGRATION_PAGES as usize)?;
    MIGRATION_AREA.store(task_area, Ordering::Release);
    MIGRATION_RUN.store(run.0, Ordering::Release);
    let task = sched::spawn("migrate", migration_task, 0, u64::MAX);
    sched::join(task);
    free_run(run, MIGRATION_PAGES as usize);
    take_failure()?;
    println!(
        "  (migrated {} times, {} of them by the timer)",
        task.migrations.load(Ordering::Relaxed),
        task.migrations.load(Ordering::Relaxed).saturating_sub(1)
    );
    Ok(())
}

// ---- timer remaps in every CPU's section --------------------------------

const FLIP_PAGES: u64 = 64;
static FLIP_RUNS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static FLIP_COUNT: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static FLIP_IN_SECTION: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static FLIP_FAILURES: AtomicU64 = AtomicU64::new(0);
static FLIP_PKRS_WRONG: AtomicU64 = AtomicU64::new(0);

fn flip_page(cpu: usize) -> u64 {
    area(24) + (cpu as u64) * (2 << 20)
}

fn work_area(cpu: usize) -> u64 {
    area(25) + (cpu as u64) * (2 << 20)
}

/// The timer hook of every CPU: flips the CPU's own kernel page between
/// two frames (zap, map, a local flush: only this CPU uses the page, as
/// with `kmap_local`) and reads it back at once.
fn flip_hook() {
    let cpu = percpu::cpu_index();
    if pks::read() != DEFAULT_PKRS {
        FLIP_PKRS_WRONG.fetch_add(1, Ordering::Relaxed);
    }
    let runs = FLIP_COUNT[cpu].fetch_add(1, Ordering::Relaxed);
    let frames = PhysAddr(FLIP_RUNS[cpu].load(Ordering::Acquire));
    let new = frames.add(((runs + 1) % 2) * FRAME);
    if sched::current().lazy_state().enable_count > 0 {
        FLIP_IN_SECTION[cpu].fetch_add(1, Ordering::Relaxed);
    }
    let tables = paging::kernel_tables();
    let mut gather = crate::tests::cpu_local_gather();
    let zapped = tables
        .zap(VirtAddr(flip_page(cpu)), FRAME, &mut gather)
        .is_ok();
    drop(gather);
    let mapped = tables
        .map(
            VirtAddr(flip_page(cpu)),
            new,
            FRAME,
            Attributes::kernel_data(),
            PageSize::Size4K,
        )
        .is_ok();
    if !zapped || !mapped || interrupts::read(flip_page(cpu)) != Ok(pattern(new)) {
        FLIP_FAILURES.fetch_add(1, Ordering::Relaxed);
    }
}

fn flip_task(cpu: usize) {
    record((|| -> Outcome {
        let tables = paging::kernel_tables();
        let run = data_run(FLIP_PAGES as usize)?;
        let len = FLIP_PAGES * FRAME;
        let va = VirtAddr(work_area(cpu));
        interrupts::set_timer_hook(Some(flip_hook));
        let mut rounds = 0u64;
        let outcome = (|| -> Outcome {
            while FLIP_IN_SECTION[cpu].load(Ordering::Relaxed) < 10 {
                rounds += 1;
                ensure!(rounds < 1_000_000, "no tick landed in a section");
                let _section = lazy().section();
                tables
                    .map(va, run, len, Attributes::kernel_data(), PageSize::Size4K)
                    .map_err(|e| message!("map: {e:?}"))?;
                for i in 0..FLIP_PAGES {
                    read_expect(
                        va.0 + i * FRAME,
                        pattern(run.add(i * FRAME)),
                        What {
                            round: rounds as usize,
                            checker: cpu,
                            owner: cpu,
                        },
                    )?;
                }
                let mut gather = kernel_gather();
                tables
                    .zap(va, len, &mut gather)
                    .map_err(|e| message!("zap: {e:?}"))?;
            }
            Ok(())
        })();
        interrupts::set_timer_hook(None);
        free_run(run, FLIP_PAGES as usize);
        ensure_eq!(pks::read(), DEFAULT_PKRS, "PKRS after the sections");
        outcome
    })());
}

/// Every CPU runs a task that maps, reads and zaps 64 kernel pages in a
/// section, round after round, while every CPU's timer remaps a kernel
/// page of its own and reads it at once: the handler sees the default
/// PKRS, its change takes effect immediately, and the task's window is
/// back when it resumes (else its next entry write faults).
fn timer_remap_test(cpus: usize) -> Outcome {
    precreate_tables(
        page_tables::kernel_root(),
        SpaceId::KERNEL,
        area(24),
        (cpus as u64) * (2 << 20),
        false,
    )?;
    precreate_tables(
        page_tables::kernel_root(),
        SpaceId::KERNEL,
        area(25),
        (cpus as u64) * (2 << 20),
        false,
    )?;
    let tables = paging::kernel_tables();
    for cpu in 0..cpus {
        let frames = data_run(2)?;
        FLIP_RUNS[cpu].store(frames.0, Ordering::Release);
        FLIP_COUNT[cpu].store(0, Ordering::Release);
        FLIP_IN_SECTION[cpu].store(0, Ordering::Release);
        tables
            .map(
                VirtAddr(flip_page(cpu)),
                frames,
                FRAME,
                Attributes::kernel_data(),
                PageSize::Size4K,
            )
            .map_err(|e| message!("map: {e:?}"))?;
    }
    FLIP_FAILURES.store(0, Ordering::Release);
    FLIP_PKRS_WRONG.store(0, Ordering::Release);
    on_each_cpu_task("flip", cpus, None, flip_task);
    let mut gather = kernel_gather();
    for cpu in 0..cpus {
        tables
            .zap(VirtAddr(flip_page(cpu)), FRAME, &mut gather)
            .map_err(|e| message!("zap: {e:?}"))?;
    }
    drop(gather);
    for run in FLIP_RUNS.iter().take(cpus) {
        free_run(PhysAddr(run.load(Ordering::Acquire)), 2);
    }
    take_failure()?;
    ensure_eq!(
        FLIP_FAILURES.load(Ordering::Acquire),
        0,
        "handler remaps that did not read back"
    );
    ensure_eq!(
        FLIP_PKRS_WRONG.load(Ordering::Acquire),
        0,
        "handlers that did not start with the default PKRS"
    );
    print!("  (ticks in a section / remaps:");
    for cpu in 0..cpus {
        print!(
            " CPU {cpu} {}/{}",
            FLIP_IN_SECTION[cpu].load(Ordering::Relaxed),
            FLIP_COUNT[cpu].load(Ordering::Relaxed)
        );
    }
    println!(")");
    Ok(())
}

// ---- the Linux 7.0 ordering -------------------------------------------

static NAIVE_RESULT: SpinLock<[u32; 6]> = SpinLock::new([0; 6]);

fn ordering_task(_: usize) {
    record((|| -> Outcome {
        let task = sched::current();
        // The counter design: the points fall with preemption disabled.
        sched::force_preemptions(2);
        let cpu = percpu::cpu_index();
        {
            let _section = lazy().section();
            ensure_eq!(percpu::cpu_index(), cpu, "CPU inside the guarded section");
        }
        sched::force_preemptions(0);
        let guarded_skipped = task.forced_skipped.load(Ordering::Relaxed);
        let guarded_double = task.bugs_met[0].load(Ordering::Relaxed);
        // Linux 7.0's ordering: the same points fall between the store and
        // the hook.
        task.expected_bugs.store(
            bug_bit(BackendBug::DoubleEnter) | bug_bit(BackendBug::LeaveOutside),
            Ordering::Relaxed,
        );
        let naive = Linux70::new(crate::env::KernelEnv, backend());
        let before = task.migrations.load(Ordering::Relaxed);
        sched::force_preemptions(2);
        {
            let _section = naive.section();
        }
        sched::force_preemptions(0);
        let moved = task.migrations.load(Ordering::Relaxed) - before;
        let double = task.bugs_met[0].load(Ordering::Relaxed);
        let leave_outside = task.bugs_met[1].load(Ordering::Relaxed);
        // And with only the timer to preempt it, for a while.
        sched::set_random_migration(300);
        for _ in 0..20_000 {
            let _section = naive.section();
        }
        sched::set_random_migration(0);
        let natural = task.bugs_met[0].load(Ordering::Relaxed) - double;
        task.expected_bugs.store(0, Ordering::Relaxed);
        *NAIVE_RESULT.lock() = [
            guarded_skipped,
            guarded_double,
            moved as u32,
            double,
            leave_outside,
            natural,
        ];
        ensure_eq!(pks::read(), DEFAULT_PKRS, "PKRS after the sections");
        ensure!(
            !backend().cpu_in_lazy_mode(),
            "the CPU is left in lazy MMU mode"
        );
        Ok(())
    })());
}

/// A task is forced off its CPU right after each lazy-state store. With
/// the counter design the store and the hook run with preemption off, so
/// the forced points are not taken and nothing is entered twice; with
/// Linux 7.0's ordering the task is moved between the store and the hook,
/// the new CPU's context switch enters lazy mode for it, and its own hook
/// enters again: the per-CPU check reports a double enter. The naive
/// ordering then runs 20,000 sections with only the timer moving the task,
/// and the double enters it caught that way are reported.
fn ordering_test() -> Outcome {
    let task = sched::spawn("ordering", ordering_task, 0, u64::MAX);
    sched::join(task);
    take_failure()?;
    let [skipped, guarded_double, moved, double, leave_outside, natural] = *NAIVE_RESULT.lock();
    ensure_eq!(
        skipped,
        2,
        "forced points skipped inside the guarded ordering"
    );
    ensure_eq!(guarded_double, 0, "double enters with the guarded ordering");
    ensure_eq!(
        moved,
        2,
        "migrations at the forced points (Linux 7.0 ordering)"
    );
    ensure!(
        double >= 1,
        "the Linux 7.0 ordering was not caught entering twice"
    );
    println!(
        "  (Linux 7.0 ordering at forced points: {double} double enter(s), {leave_outside} leave(s) outside"
    );
    println!(
        "   lazy mode; preempted by the timer only: {natural} double enter(s) in 20000 sections)"
    );
    Ok(())
}

// ---- the per-CPU design and sleeping ------------------------------------

/// The per-CPU design's environment: the counters live with the CPU.
#[derive(Debug)]
struct CpuStateEnv;

static CPU_LAZY: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];

impl lazymmu::cpu::Cpu for CpuStateEnv {
    fn cpu_id(&self) -> lazymmu::cpu::CpuId {
        crate::env::KernelEnv.cpu_id()
    }
    fn in_interrupt(&self) -> bool {
        crate::env::KernelEnv.in_interrupt()
    }
    fn preempt_disable(&self) {
        percpu::preempt_disable()
    }
    fn preempt_enable(&self) {
        percpu::preempt_enable()
    }
}

impl Environment for CpuStateEnv {
    fn lazy_state(&self) -> LazyState {
        self.cpu_lazy_state()
    }
    fn set_lazy_state(&self, state: LazyState) {
        self.set_cpu_lazy_state(state)
    }
    fn might_sleep(&self) {
        crate::env::KernelEnv.might_sleep()
    }
}

impl PerCpuEnvironment for CpuStateEnv {
    fn cpu_lazy_state(&self) -> LazyState {
        let raw = CPU_LAZY[percpu::cpu_index()].load(Ordering::Relaxed);
        LazyState {
            enable_count: raw as u8,
            pause_count: (raw >> 8) as u8,
        }
    }
    fn set_cpu_lazy_state(&self, state: LazyState) {
        let raw = u32::from(state.enable_count) | (u32::from(state.pause_count) << 8);
        CPU_LAZY[percpu::cpu_index()].store(raw, Ordering::Relaxed);
    }
}

/// Schedules refused because preemption was off, that a test provoked.
static EXPECTED_ATOMIC_SCHEDULES: AtomicU64 = AtomicU64::new(0);

fn sleep_task(_: usize) {
    record((|| -> Outcome {
        let task = sched::current();
        let online = percpu::online_count();
        let design = PerCpuMode::new(CpuStateEnv, backend(), MisusePolicy::Count);
        let cpu = percpu::cpu_index();
        let sleeps = task.atomic_sleeps.load(Ordering::Relaxed);
        {
            let _section = design.section();
            ensure_eq!(
                percpu::preempt_count(),
                1,
                "preemption depth in the section"
            );
            ensure_eq!(
                design.might_sleep(),
                Err(Misuse::Forbidden(Op::Enable)),
                "might_sleep in a per-CPU section"
            );
            EXPECTED_ATOMIC_SCHEDULES.fetch_add(1, Ordering::Relaxed);
            sched::migrate_to((cpu + 1) % online);
            ensure_eq!(percpu::cpu_index(), cpu, "CPU after a refused sleep");
        }
        ensure_eq!(
            design.misuse().count(),
            1,
            "misuse reports of the per-CPU design"
        );
        ensure_eq!(
            task.atomic_sleeps.load(Ordering::Relaxed) - sleeps,
            2,
            "sleeps in atomic context (might_sleep, then the refused switch)"
        );
        // The counter design: the same sleep is fine and the section moves.
        let sleeps = task.atomic_sleeps.load(Ordering::Relaxed);
        let from = percpu::cpu_index();
        {
            let _section = lazy().section();
            crate::env::KernelEnv.might_sleep();
            sched::migrate_to((from + 1) % online);
            ensure!(percpu::cpu_index() != from, "the task did not move");
            ensure_eq!(lazy().state().enable_count, 1, "the section after sleeping");
            ensure_eq!(pks::read(), OPEN_PKRS, "PKRS after sleeping");
        }
        ensure_eq!(
            task.atomic_sleeps.load(Ordering::Relaxed) - sleeps,
            0,
            "sleeps in atomic context with the counter design"
        );
        Ok(())
    })());
}

/// The per-CPU design holds preemption off for the whole section, so a
/// sleep inside it is reported twice (by the design's `might_sleep` and
/// by the scheduler, which refuses to switch); the counter design sleeps
/// and moves CPUs inside the same section without complaint.
fn sleep_test() -> Outcome {
    let task = sched::spawn("sleep", sleep_task, 0, u64::MAX);
    sched::join(task);
    take_failure()
}

// ---- active_mm ------------------------------------------------------------

static LAZY_GO: AtomicBool = AtomicBool::new(false);
static LAZY_SPACE: AtomicU32 = AtomicU32::new(0);

fn lazy_kthread(_: usize) {
    sched::wait_until(|| LAZY_GO.load(Ordering::Acquire));
}

fn lazy_user(cpu: usize) {
    record((|| -> Outcome {
        let space = SpaceId(LAZY_SPACE.load(Ordering::Acquire));
        let tables = page_tables::tables_on(backend(), lazy(), mm::root_of(space), space);
        let frame = paging::data_frame();
        let va = VirtAddr(shared_region(cpu));
        tables
            .map(va, frame, FRAME, Attributes::user_data(), PageSize::Size4K)
            .map_err(|e| message!("map: {e:?}"))?;
        read_expect(
            va.0,
            0,
            What {
                round: 0,
                checker: cpu,
                owner: cpu,
            },
        )?;
        let mut gather = Gather::new(backend(), &TABLE_FRAMES, space, FlushScope::Local);
        tables
            .zap(va, FRAME, &mut gather)
            .map_err(|e| message!("zap: {e:?}"))?;
        drop(gather);
        paging::free_data_frame(frame);
        Ok(())
    })());
}

fn noop_user(_: usize) {}

fn stat(counter: &AtomicU64) -> u64 {
    LazyTlbStats::get(counter)
}

/// One policy: every CPU but the boot CPU runs a user task of a new
/// address space X and then a kernel thread, which borrows X lazily; the
/// creator drops the last user of X. The policy decides what happens to
/// the lazy CPUs (a flush that frees tables reaches them; the last
/// reference shoots them down; or their references keep X alive until
/// each CPU runs a user task again), and X must end freed, with no CPU
/// able to walk it: the library's checks, and every CPU walking through
/// its root right after each free, find nothing.
fn active_mm_test(cpus: usize) -> Outcome {
    let policy = mm::policy();
    let uaf = mm::USE_AFTER_FREE.load(Ordering::Acquire);
    let errors = mm::MM_ERRORS.load(Ordering::Acquire);
    let stats = mm::tlb().stats();
    let before = [
        stat(&stats.borrow_refs),
        stat(&stats.shootdown_ipis),
        stat(&stats.lazy_switched_away),
        stat(&stats.spaces_freed),
        stat(&stats.flush_skipped_lazy),
    ];
    let x = mm::create_space().map_err(|e| message!("{e}"))?;
    LAZY_SPACE.store(x.0, Ordering::Release);
    LAZY_GO.store(false, Ordering::Release);
    precreate_tables(
        mm::root_of(x),
        x,
        USER_BASE,
        (cpus as u64) * (2 << 20),
        true,
    )?;
    let mut kthreads: [Option<&'static Task>; MAX_CPUS] = [None; MAX_CPUS];
    for (cpu, slot) in kthreads.iter_mut().enumerate().take(cpus).skip(1) {
        *slot = Some(sched::spawn("lazy-kthread", lazy_kthread, cpu, 1 << cpu));
    }
    for cpu in 1..cpus {
        let user = mm::spawn_user(x, "lazy-user", lazy_user, cpu, 1 << cpu);
        sched::join(user);
    }
    take_failure()?;
    let world = mm::tlb();
    let lazy_on_x = (1..cpus)
        .filter(|&c| {
            let state = lazymmu::mm::active_mm::MmMachine::cpu_state(
                world.machine(),
                lazymmu::cpu::CpuId::new(c),
            );
            state.is_lazy() && state.loaded() == x
        })
        .count();
    ensure_eq!(lazy_on_x, cpus - 1, "CPUs lazily borrowing X");
    mm::release_space(x);
    let freed_at_release = mm::space(x).is_freed();
    let shootdowns_at_release = stat(&stats.shootdown_ipis) - before[1];
    let switched_at_release = stat(&stats.lazy_switched_away) - before[2];
    let skipped_at_release = stat(&stats.flush_skipped_lazy) - before[4];
    LAZY_GO.store(true, Ordering::Release);
    for task in kthreads.into_iter().flatten() {
        sched::join(task);
    }
    // Under the reference-taking policies each borrowing CPU drops X when
    // it next runs a user task.
    let y = mm::create_space().map_err(|e| message!("{e}"))?;
    on_each_cpu_task("lazy-drop", cpus, Some(y), noop_user);
    mm::release_space(y);
    ensure!(mm::space(x).is_freed(), "X was never freed");
    ensure_eq!(
        mm::USE_AFTER_FREE.load(Ordering::Acquire) - uaf,
        0,
        "use-after-free reports"
    );
    ensure_eq!(
        mm::MM_ERRORS.load(Ordering::Acquire) - errors,
        0,
        "lazy-TLB errors"
    );
    let after = [
        stat(&stats.borrow_refs),
        stat(&stats.shootdown_ipis),
        stat(&stats.lazy_switched_away),
        stat(&stats.spaces_freed),
        stat(&stats.flush_skipped_lazy),
    ];
    let [refs, shootdowns, switched_away, freed, skipped] =
        core::array::from_fn(|i| after[i] - before[i]);
    let lazy = cpus as u64 - 1;
    // User task c zaps a page without freeing a table while the c - 1
    // CPUs before it borrow X lazily.
    let lazy_at_zaps = lazy * lazy.saturating_sub(1) / 2;
    use lazymmu::mm::active_mm::LazyTlbPolicy::{Refcount, Shootdown, X86};
    match policy {
        Shootdown => {
            ensure!(freed_at_release, "X outlived its last reference");
            ensure_eq!(refs, 0, "borrow references (shootdown policy)");
            ensure_eq!(
                shootdowns_at_release,
                lazy,
                "lazy-TLB shootdown IPIs when X was freed"
            );
            ensure_eq!(skipped, 0, "lazy CPUs skipped by flushes (shootdown)");
        }
        Refcount => {
            ensure!(
                cpus == 1 || !freed_at_release,
                "X freed while CPUs held lazy references"
            );
            ensure!(refs >= 2 * lazy, "borrow references {refs}");
            ensure_eq!(shootdowns, 0, "lazy-TLB shootdown IPIs (refcount)");
            ensure_eq!(skipped, 0, "lazy CPUs skipped by flushes (refcount)");
        }
        X86 => {
            ensure!(
                cpus == 1 || !freed_at_release,
                "X freed while CPUs held lazy references"
            );
            ensure!(refs >= 2 * lazy, "borrow references {refs}");
            ensure_eq!(
                switched_at_release,
                lazy,
                "lazy CPUs switched to the kernel's space by the table-freeing flush"
            );
            ensure_eq!(
                skipped_at_release,
                lazy_at_zaps,
                "lazy CPUs skipped by X's flushes that free no table"
            );
        }
    }
    println!(
        "  ({}: {freed} freed, {refs} ref updates, {shootdowns} shootdowns, {skipped} lazy CPUs \
         skipped, {switched_away} switched away, {} walks)",
        mm::policy_name(policy),
        mm::CANARY_WALKS.load(Ordering::Relaxed)
    );
    Ok(())
}

/// The check itself: a CPU that walks a poisoned root takes the
/// reserved-bit fault the use-after-free check looks for.
fn poison_is_observable_test() -> Outcome {
    let fault = mm::walk_poisoned_root().map_err(|e| message!("{e}"))?;
    ensure!(
        fault & (1 << 3) != 0,
        "walking a poisoned root faulted with {fault:#x}, not with the reserved bit"
    );
    Ok(())
}

// ---- stress ---------------------------------------------------------------

const STRESS_TASKS: usize = 8;
const STRESS_ITERATIONS: usize = 200;
const STRESS_PAGES: u64 = 8;
static STRESS_SECTIONS: AtomicU64 = AtomicU64::new(0);
static STRESS_CHECKS: AtomicU64 = AtomicU64::new(0);

fn stress_area(task: usize) -> u64 {
    area(28) + (task as u64) * (2 << 20)
}

fn stress_expect(va: u64, run: PhysAddr, what: What) -> Outcome {
    for i in 0..STRESS_PAGES {
        read_expect(va + i * FRAME, pattern(run.add(i * FRAME)), what)?;
    }
    STRESS_CHECKS.fetch_add(STRESS_PAGES, Ordering::Relaxed);
    Ok(())
}

fn stress_invariants(what: &str) -> Outcome {
    ensure_eq!(lazy().state(), LazyState::IDLE, "{what}: lazy state");
    ensure_eq!(pks::read(), DEFAULT_PKRS, "{what}: PKRS");
    ensure!(
        !backend().cpu_in_lazy_mode(),
        "{what}: the CPU is in lazy MMU mode outside any section"
    );
    ensure_eq!(percpu::preempt_count(), 0, "{what}: preemption depth");
    Ok(())
}

fn stress_task(index: usize) {
    record((|| -> Outcome {
        let tables = paging::kernel_tables();
        let va = VirtAddr(stress_area(index));
        let runs = [
            data_run(STRESS_PAGES as usize)?,
            data_run(STRESS_PAGES as usize)?,
        ];
        let len = STRESS_PAGES * FRAME;
        let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ (index as u64 + 1);
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let what = |it: usize| What {
            round: it,
            checker: percpu::cpu_index(),
            owner: index,
        };
        let sections = |n: u64| STRESS_SECTIONS.fetch_add(n, Ordering::Relaxed);
        let map = |run: PhysAddr| {
            tables
                .map(va, run, len, Attributes::kernel_data(), PageSize::Size4K)
                .map(|_| ())
                .map_err(|e| message!("map: {e:?}"))
        };
        let zap = || -> Outcome {
            let mut gather = kernel_gather();
            tables
                .zap(va, len, &mut gather)
                .map(|_| ())
                .map_err(|e| message!("zap: {e:?}"))
        };
        for it in 0..STRESS_ITERATIONS {
            let run = runs[it % 2];
            match next() % 5 {
                0 => {
                    let _outer = lazy().section();
                    map(run)?;
                    {
                        let _inner = lazy().section();
                        let mut gather = kernel_gather();
                        tables
                            .protect(va, len, Protection::read_only(), &mut gather)
                            .map_err(|e| message!("protect: {e:?}"))?;
                    }
                    stress_expect(va.0, run, what(it))?;
                    sections(2);
                }
                1 => {
                    let _section = lazy().section();
                    map(run)?;
                    {
                        let _pause = lazy().pause();
                        ensure!(!lazy().is_active(), "paused section reports active");
                        ensure_eq!(pks::read(), DEFAULT_PKRS, "PKRS while paused");
                        stress_expect(va.0, run, what(it))?;
                    }
                    ensure_eq!(pks::read(), OPEN_PKRS, "PKRS after resume");
                    sections(1);
                }
                2 => {
                    let _section = lazy().section();
                    map(run)?;
                    sched::yield_now();
                    ensure_eq!(lazy().state().enable_count, 1, "state after a yield");
                    ensure_eq!(pks::read(), OPEN_PKRS, "PKRS after a yield");
                    stress_expect(va.0, run, what(it))?;
                    sections(1);
                }
                3 => {
                    let _outer = lazy().section();
                    let _inner = lazy().section();
                    map(run)?;
                    let target = (next() % percpu::online_count() as u64) as usize;
                    sched::migrate_to(target);
                    ensure_eq!(lazy().state().enable_count, 2, "state after a migration");
                    ensure_eq!(pks::read(), OPEN_PKRS, "PKRS after a migration");
                    stress_expect(va.0, run, what(it))?;
                    sections(2);
                }
                _ => {
                    // No section: every entry write opens its own window.
                    map(run)?;
                    stress_expect(va.0, run, what(it))?;
                }
            }
            zap()?;
            stress_invariants("after an iteration")?;
        }
        free_run(runs[0], STRESS_PAGES as usize);
        free_run(runs[1], STRESS_PAGES as usize);
        Ok(())
    })());
}

/// Eight kernel threads on every CPU, each 200 iterations of random
/// section shapes (nested with a protect inside, paused, yielding,
/// migrating on purpose, none), with the timer preempting anywhere and
/// moving the running task to a random CPU on 10% of the ticks. After
/// every iteration the task checks the lazy state, PKRS, the CPU's lazy
/// mode and the preemption depth; at the end, every count.
fn stress_test() -> Outcome {
    precreate_tables(
        page_tables::kernel_root(),
        SpaceId::KERNEL,
        area(28),
        (STRESS_TASKS as u64) * (2 << 20),
        false,
    )?;
    let tables_before = crate::memory::PAGE_TABLE_FRAMES.used();
    let data_before = crate::memory::DATA_FRAMES.used();
    let misuse = lazy().misuse().count();
    let bugs = smp_backend::UNEXPECTED_BUGS.load(Ordering::Acquire);
    STRESS_SECTIONS.store(0, Ordering::Release);
    STRESS_CHECKS.store(0, Ordering::Release);
    sched::set_random_migration(100);
    let mut tasks: [Option<&'static Task>; STRESS_TASKS] = [None; STRESS_TASKS];
    for (index, slot) in tasks.iter_mut().enumerate() {
        *slot = Some(sched::spawn("stress", stress_task, index, u64::MAX));
    }
    let mut migrations = 0;
    let mut switches = 0;
    for task in tasks.into_iter().flatten() {
        sched::join(task);
        migrations += task.migrations.load(Ordering::Relaxed);
        switches += task.switches.load(Ordering::Relaxed);
    }
    sched::set_random_migration(0);
    take_failure()?;
    ensure_eq!(lazy().misuse().count() - misuse, 0, "lazy-mode misuse");
    ensure_eq!(
        smp_backend::UNEXPECTED_BUGS.load(Ordering::Acquire) - bugs,
        0,
        "backend bugs"
    );
    ensure_eq!(
        crate::memory::PAGE_TABLE_FRAMES.used(),
        tables_before,
        "page-table frames in use"
    );
    ensure_eq!(
        crate::memory::DATA_FRAMES.used(),
        data_before,
        "data frames in use"
    );
    let sections = STRESS_SECTIONS.load(Ordering::Relaxed);
    ensure!(sections >= 1000, "only {sections} sections");
    ensure!(
        migrations > 0 || percpu::online_count() == 1,
        "no task migrated"
    );
    println!(
        "  ({sections} sections, {} page reads checked, {switches} switches, {migrations} migrations)",
        STRESS_CHECKS.load(Ordering::Relaxed)
    );
    Ok(())
}

// ---- final accounting ------------------------------------------------------

/// Every CPU's lazy MMU flag is clear and its preemption depth zero (read
/// by each CPU in a cross-call), and nothing was misused, reported or
/// leaked that a test did not provoke.
fn accounting_test() -> Outcome {
    let in_lazy = AtomicU64::new(0);
    let preempted = AtomicU64::new(0);
    xcall::call_many(
        percpu::online_mask(),
        &|cpu| {
            if backend().cpu_in_lazy_mode() {
                in_lazy.fetch_or(1 << cpu, Ordering::AcqRel);
            }
            if percpu::preempt_count() != 0 {
                preempted.fetch_or(1 << cpu, Ordering::AcqRel);
            }
        },
        || {},
    );
    ensure_eq!(
        in_lazy.load(Ordering::Acquire),
        0,
        "CPUs left in lazy MMU mode"
    );
    ensure_eq!(
        preempted.load(Ordering::Acquire),
        0,
        "CPUs left with preemption disabled"
    );
    ensure_eq!(lazy().misuse().count(), 0, "lazy-mode misuse reports");
    ensure_eq!(paging::backend_bugs(), 0, "unexpected backend bugs");
    ensure_eq!(
        mm::USE_AFTER_FREE.load(Ordering::Acquire),
        0,
        "use-after-free reports"
    );
    ensure_eq!(mm::MM_ERRORS.load(Ordering::Acquire), 0, "lazy-TLB errors");
    ensure_eq!(
        sched::ATOMIC_SCHEDULES.load(Ordering::Acquire),
        EXPECTED_ATOMIC_SCHEDULES.load(Ordering::Acquire),
        "schedules refused with preemption off"
    );
    for task in sched::tasks() {
        ensure_eq!(
            task.lazy_state(),
            LazyState::IDLE,
            "lazy state of task {}",
            task.name()
        );
    }
    ensure_eq!(pks::read(), DEFAULT_PKRS, "PKRS of the boot task");
    Ok(())
}

/// Runs the tests that need the policy active now (the first world).
pub fn run_all(report: &mut Report) {
    let cpus = percpu::online_count();
    let multi = |report: &mut Report, name: &str, test: &dyn Fn() -> Outcome| {
        if cpus < 2 {
            report.skip(name, "needs 2 CPUs");
        } else {
            report.run(name, test);
        }
    };
    report.run(
        format_args!(
            "shared address space on {}: no stale translation after any section",
            Cpus(cpus)
        ),
        || shared_space_test(cpus),
    );
    multi(report, "migration inside a nested section", &migration_test);
    report.run(
        format_args!(
            "timer remaps a kernel page inside every CPU's section ({})",
            Cpus(cpus)
        ),
        || timer_remap_test(cpus),
    );
    multi(
        report,
        "Linux 7.0 ordering trips the double-enter check, the guarded one does not",
        &ordering_test,
    );
    multi(
        report,
        "the per-CPU design reports sleeping in a section",
        &sleep_test,
    );
    report.run(
        "a poisoned root faults on every walk",
        poison_is_observable_test,
    );
    report.run(
        format_args!(
            "stress: random sections, preemption and migration on {}",
            Cpus(cpus)
        ),
        stress_test,
    );
}

/// Runs the `active_mm` test under the active policy.
pub fn run_active_mm(report: &mut Report) {
    let cpus = percpu::online_count();
    report.run(
        format_args!(
            "active_mm, {} policy: lazy borrowers and a freed address space",
            mm::policy_name(mm::policy())
        ),
        || active_mm_test(cpus),
    );
}

/// The checks that close the run.
pub fn run_accounting(report: &mut Report) {
    report.run("no misuse, no leak, every CPU out of lazy mode", || {
        mm::drain_quarantine();
        accounting_test()
    });
}
