//! Every backend's run-level entry operations against the per-entry path
//! they stand for: the same run of one PTE table (present and absent,
//! writable and read-only, dirty and clean, accessed and old entries; a
//! destination with one entry already present) goes through the backend's
//! run method on one machine and through the per-entry functions of
//! `backend::runs` on another, eagerly and inside a lazy section, for a
//! zap's clear (with and without the full-mm flag of an exit), mprotect's
//! change, fork's copy (the parent write-protected with `set_wrprotect`)
//! and mremap's move. Both machines must end with the same tables, the
//! same primitive counts, the same number of recorded calls, and the same
//! report of what changed. A zap past the gather's page batch flushes
//! after the same page on both paths.

use lazymmu::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use lazymmu::backend::arm64::Arm64;
use lazymmu::backend::machine::Primitive;
use lazymmu::backend::ppc_hash::PpcHash;
use lazymmu::backend::protected::{Arm64Poe, KeyFlavour, Pks, Poe, X86Pks};
use lazymmu::backend::recording::Recording;
use lazymmu::backend::runs::{self, NewProtection, PteRun, RunChanges};
use lazymmu::backend::s390::S390;
use lazymmu::backend::sparc64::Sparc64;
use lazymmu::backend::x86::{RecordingPrimitives, X86Backend};
use lazymmu::backend::xen_pv::XenPv;
use lazymmu::backend::Backend;
use lazymmu::mode::counters::Counters;
use lazymmu::mode::{LazyMode, MisusePolicy};
use lazymmu::pgtable::format::{self, Attributes, Format};
use lazymmu::pgtable::memory::{HostMemory, PageTableMemory};
use lazymmu::pgtable::ops::CopyKind;

/// Entries per run: s390's PTE tables have 256, the others 512. Under
/// Miri, 128: two of the loops' chunks, [`BREAK`] in the second (the
/// recording machine searches its memory for every entry it reads or
/// writes, so a run there costs the square of its length).
const COUNT: usize = if cfg!(miri) { 128 } else { 256 };
/// The run's table, and the child's (copy) or the destination's (move).
const TABLE: u64 = 0x60_0000;
const OTHER: u64 = 0x61_0000;
/// The destination entry already present (copy and move stop there).
const OCCUPIED: usize = if cfg!(miri) { 117 } else { 201 };

#[derive(Clone, Copy, Debug)]
enum Op {
    /// Zap; `full` under a full-mm gather (exit, execve).
    Clear {
        full: bool,
    },
    Protect,
    Copy(CopyKind),
    Move {
        occupied: bool,
    },
}

const OPS: [Op; 7] = [
    Op::Clear { full: false },
    Op::Clear { full: true },
    Op::Protect,
    Op::Copy(CopyKind::Private),
    Op::Copy(CopyKind::Shared),
    Op::Move { occupied: false },
    Op::Move { occupied: true },
];

/// How the source run is filled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// Absent every fifth entry, otherwise leaves whose writability, dirty
    /// and accessed bits vary with the entry.
    Mixed,
    /// One mapping, as a map leaves it (the backends' loops without a test
    /// per entry): present and writable, dirty and accessed like entry 14
    /// of a mixed run.
    Uniform,
    /// One mapping but for entry [`BREAK`], which is entry 3 of a mixed
    /// run (read-only, clean, old): the loops go entry by entry from there.
    UniformBut,
}

const SHAPES: [Shape; 3] = [Shape::Mixed, Shape::Uniform, Shape::UniformBut];

/// The entry of a [`Shape::UniformBut`] run that is not like the others,
/// inside a block of the loops.
const BREAK: usize = 101;

/// Entry `i` of the source table, of shape `shape`.
fn source<F: Format>(i: usize, kernel: bool, shape: Shape) -> u64 {
    match shape {
        Shape::UniformBut if i == BREAK => return source::<F>(3, kernel, Shape::Mixed),
        Shape::Uniform | Shape::UniformBut => {
            let shared = source::<F>(14, kernel, Shape::Mixed);
            return shared + ((i as u64) << 12) - (14 << 12);
        }
        Shape::Mixed => {}
    }
    if i % 5 == 0 {
        return 0;
    }
    let base = if kernel {
        Attributes::kernel_data()
    } else {
        Attributes::user_data()
    };
    F::encode_leaf(
        PhysAddr(0x4000_0000 + ((i as u64) << 12)),
        PageSize::Size4K,
        Attributes {
            writable: i % 3 != 0,
            dirty: i % 7 == 0,
            accessed: i % 2 == 0,
            ..base
        },
    )
}

fn run(table: u64, kernel: bool) -> PteRun {
    PteRun {
        entry: PhysAddr(table),
        va: VirtAddr(if kernel {
            0xffff_9000_0000_0000
        } else {
            0x7000_0000
        }),
        space: if kernel { SpaceId::KERNEL } else { SpaceId(1) },
        level: 1,
        kernel,
        count: COUNT,
    }
}

/// Fills the source table, and the destination's one present entry
/// (none for a run wholly of one mapping, or a move that is not to stop).
fn fill<F: Format>(memory: &dyn Fn(PhysAddr, u64), op: Op, kernel: bool, shape: Shape) {
    for i in 0..COUNT {
        memory(
            PhysAddr(TABLE + 8 * i as u64),
            source::<F>(i, kernel, shape),
        );
    }
    let occupied = match op {
        Op::Copy(_) => shape != Shape::Uniform,
        Op::Move { occupied } => occupied,
        _ => false,
    };
    if occupied {
        memory(
            PhysAddr(OTHER + 8 * OCCUPIED as u64),
            source::<F>(OCCUPIED + 1, kernel, Shape::Mixed),
        );
    }
}

/// [`fill`] in the format of `backend` on `machine`.
fn fill_for<B: Backend>(_: &B, machine: &Recording, op: Op, kernel: bool) {
    fill::<B::Format>(
        &|entry, value| machine.set_memory(entry, value),
        op,
        kernel,
        Shape::Mixed,
    );
}

/// `op` on the run through the backend's run method (`run_path`) or the
/// per-entry functions.
fn apply<B: Backend>(backend: &B, op: Op, kernel: bool, run_path: bool) -> RunChanges {
    let from = run(TABLE, kernel);
    // The other table covers other addresses in a move, the same ones in a
    // copy (another address space).
    let to = match op {
        Op::Copy(_) => PteRun {
            entry: PhysAddr(OTHER),
            space: SpaceId(2),
            ..from
        },
        _ => PteRun {
            entry: PhysAddr(OTHER),
            va: from.va.add(2 << 20),
            ..from
        },
    };
    // Read-only user data, never executable: what `user_data().read_only()`
    // maps, as a change of permissions.
    let protection = NewProtection::new::<B::Format>(
        1,
        format::Protection::read_only().user(true).execute(false),
    );
    match (op, run_path) {
        (Op::Clear { full }, true) => backend.clear_ptes(from, full),
        (Op::Clear { full }, false) => runs::clear_ptes_each::<B::Format, _>(backend, from, full),
        (Op::Protect, true) => backend.protect_ptes(from, &protection),
        (Op::Protect, false) => runs::protect_ptes_each::<B::Format, _>(backend, from, &protection),
        (Op::Copy(kind), true) => backend.copy_ptes(from, to, kind),
        (Op::Copy(kind), false) => runs::copy_ptes_each::<B::Format, _>(backend, from, to, kind),
        (Op::Move { .. }, true) => backend.move_ptes(from, to),
        (Op::Move { .. }, false) => runs::move_ptes_each::<B::Format, _>(backend, from, to),
    }
}

/// What a machine ended with: both tables, every primitive's count and the
/// number of recorded calls, and the run's report.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    tables: Vec<u64>,
    counts: Vec<u64>,
    changes: RunChanges,
}

fn tables(read: &dyn Fn(PhysAddr) -> u64) -> Vec<u64> {
    (0..COUNT as u64)
        .flat_map(|i| [read(PhysAddr(TABLE + 8 * i)), read(PhysAddr(OTHER + 8 * i))])
        .collect()
}

type Protection = Option<(u64, fn(u64) -> bool)>;

/// Whether operation `op` runs under the `pair`-th of the four (user or
/// kernel, eager or lazy) settings. Every pair, except under Miri, where
/// each operation runs under one pair and the pairs take turns (7 cases a
/// backend instead of 28): the recording machines cost Miri minutes a
/// case.
fn covered(pair: usize, op: usize) -> bool {
    !cfg!(miri) || op % 4 == pair
}

/// Runs `op` through both paths on fresh machines with the backend `$build`
/// makes, eagerly and in a section, and compares the outcomes.
macro_rules! same_on_both_paths {
    ($name:literal, $protect:expr, $build:expr) => {{
        #[inline(never)]
        fn one_backend() -> usize {
            let mut checked = 0;
            let pairs = [(false, false), (false, true), (true, false), (true, true)];
            for (pair, (kernel, lazy)) in pairs.into_iter().enumerate() {
                for (i, op) in OPS.into_iter().enumerate() {
                    if !covered(pair, i) {
                        continue;
                    }
                    let outcomes = [true, false].map(|run_path| {
                        let machine = Recording::new();
                        let protect: Protection = $protect;
                        if let Some((initial, allows)) = protect {
                            machine.protect(initial, allows);
                        }
                        let backend = $build(&machine);
                        fill_for(&backend, &machine, op, kernel);
                        let mode = Counters::new(&machine, &backend, MisusePolicy::Panic);
                        let changes = {
                            let _section = lazy.then(|| mode.section());
                            apply(&backend, op, kernel, run_path)
                        };
                        assert_eq!(machine.faults(), 0, "{}", $name);
                        let mut counts: Vec<u64> =
                            Primitive::ALL.iter().map(|&p| machine.count(p)).collect();
                        counts.push(machine.total_calls());
                        Outcome {
                            tables: tables(&|entry| machine.read_memory(entry)),
                            counts,
                            changes,
                        }
                    });
                    assert_eq!(
                        outcomes[0], outcomes[1],
                        "{}: {op:?}, kernel {kernel}, lazy {lazy}: run path, then per-entry path",
                        $name
                    );
                    checked += 1;
                }
            }
            checked
        }
        one_backend()
    }};
}

#[test]
fn every_backend_runs_as_it_writes_entry_by_entry() {
    let checked = [
        same_on_both_paths!("x86 over recorded memory", None, |m| X86Backend::new(m, m)),
        same_on_both_paths!("xen-pv", None, XenPv::new),
        same_on_both_paths!("arm64", None, Arm64::new),
        same_on_both_paths!("ppc-hash", None, PpcHash::new),
        same_on_both_paths!("sparc64", None, Sparc64::new),
        same_on_both_paths!("s390", None, S390::new),
        same_on_both_paths!(
            "x86-pks",
            Some((
                Pks::DEFAULT,
                Pks::allows_page_table_writes as fn(u64) -> bool
            )),
            |m| X86Pks::x86_pks(m, m, m)
        ),
        same_on_both_paths!(
            "arm64-poe",
            Some((
                Poe::DEFAULT,
                Poe::allows_page_table_writes as fn(u64) -> bool
            )),
            |m| {
                Recording::key_write_needs_isb(m);
                Arm64Poe::arm64_poe(m)
            }
        ),
    ];
    let cases = (0..4)
        .flat_map(|pair| (0..OPS.len()).map(move |op| (pair, op)))
        .filter(|&(pair, op)| covered(pair, op))
        .count();
    assert_eq!(checked, [cases; 8]);
}

/// The x86 backend over host memory, which lends runs of entries: its run
/// methods are loops over the cells (`runs::cells`), and must leave the
/// tables, the report and the recorded primitive calls (none: entry
/// operations flush nothing) as the per-entry path does.
#[test]
fn x86_over_host_memory_runs_as_it_writes_entry_by_entry() {
    for (kernel, shape) in [false, true]
        .into_iter()
        .flat_map(|k| SHAPES.map(|s| (k, s)))
    {
        for op in OPS {
            let outcomes = [true, false].map(|run_path| {
                let memory = HostMemory::new(PhysAddr(TABLE), 17);
                let backend = X86Backend::new(&memory, RecordingPrimitives::new(0, SpaceId(1)));
                fill::<lazymmu::pgtable::format::X86_64>(
                    &|entry, value| memory.write(entry, value),
                    op,
                    kernel,
                    shape,
                );
                let changes = apply(&backend, op, kernel, run_path);
                assert!(backend.primitives().calls().is_empty());
                Outcome {
                    tables: tables(&|entry| memory.read(entry)),
                    counts: Vec::new(),
                    changes,
                }
            });
            assert_eq!(
                outcomes[0], outcomes[1],
                "{op:?}, kernel {kernel}, {shape:?}"
            );
            // The run did something worth comparing.
            assert!(outcomes[0].changes.count() > 0 || outcomes[0].changes.copied > 0);
        }
    }
}

/// What the runs report, on the x86 backend: the entries changed, the
/// dirty ones cleared, where a copy or move stopped.
#[test]
fn runs_report_what_they_changed() {
    let memory = HostMemory::new(PhysAddr(TABLE), 17);
    let backend = X86Backend::new(&memory, RecordingPrimitives::new(0, SpaceId(1)));
    let present = (0..COUNT).filter(|i| i % 5 != 0).count() as u64;
    let fill_for = |op| {
        fill::<lazymmu::pgtable::format::X86_64>(
            &|e, v| memory.write(e, v),
            op,
            false,
            Shape::Mixed,
        );
    };

    fill_for(Op::Clear { full: false });
    let cleared = apply(&backend, Op::Clear { full: false }, false, true);
    assert_eq!(cleared.count(), present);
    let dirty = (0..COUNT).filter(|i| i % 5 != 0 && i % 7 == 0).count() as u64;
    assert_eq!(cleared.dirty, dirty);
    let last = (0..COUNT).rev().find(|i| i % 5 != 0).unwrap();
    assert_eq!(cleared.bounds(), Some((1, last)));

    memory.zero_frame(PhysAddr(OTHER));
    fill_for(Op::Copy(CopyKind::Private));
    let copied = apply(&backend, Op::Copy(CopyKind::Private), false, true);
    let before = |pred: fn(usize) -> bool| (0..OCCUPIED).filter(|&i| pred(i)).count() as u64;
    assert_eq!(copied.stopped, Some(OCCUPIED));
    assert_eq!(copied.copied, before(|i| i % 5 != 0));
    assert_eq!(copied.count(), before(|i| i % 5 != 0 && i % 3 != 0));
    assert!(copied.marked().all(|i| i < OCCUPIED && i % 3 != 0));
}

/// The arm64 backend over host memory, which its CPU lends: inside a lazy
/// section its run methods are loops over the cells with one barrier
/// decision, and must leave the tables, the barriers owed and issued and
/// the report as the per-entry path does; outside one they are the
/// per-entry path.
#[test]
fn arm64_over_host_memory_runs_as_it_writes_entry_by_entry() {
    use lazymmu::backend::arm64::HostArm64;
    use lazymmu::mode::testing::TestEnv;
    for (kernel, shape) in [false, true]
        .into_iter()
        .flat_map(|k| SHAPES.map(|s| (k, s)))
    {
        for lazy in [false, true] {
            for op in OPS {
                let outcomes = [true, false].map(|run_path| {
                    let memory = HostMemory::new(PhysAddr(TABLE), 17);
                    let backend = Arm64::new(HostArm64::new(&memory));
                    fill::<lazymmu::pgtable::format::Aarch64>(
                        &|entry, value| memory.write(entry, value),
                        op,
                        kernel,
                        shape,
                    );
                    let mode = Counters::new(TestEnv::default(), &backend, MisusePolicy::Panic);
                    let (changes, pending) = {
                        let _section = lazy.then(|| mode.section());
                        let changes = apply(&backend, op, kernel, run_path);
                        let cpu = backend.primitives();
                        (
                            changes,
                            lazymmu::backend::arm64::Arm64Primitives::task_barriers_pending(cpu),
                        )
                    };
                    let cpu = backend.primitives();
                    assert_eq!(cpu.bugs(), 0);
                    Outcome {
                        tables: tables(&|entry| memory.read(entry)),
                        counts: vec![cpu.barriers(), cpu.invalidations(), u64::from(pending)],
                        changes,
                    }
                });
                assert_eq!(
                    outcomes[0], outcomes[1],
                    "{op:?}, kernel {kernel}, lazy {lazy}"
                );
            }
        }
    }
}

/// A fork onto a tree of another backend (over other memory) takes the
/// per-entry path with the child's entries read and written through the
/// child's backend, the parent's through the parent's: the run method of
/// one backend would write the child's tables in the wrong memory.
#[test]
fn a_copy_to_a_tree_of_another_backend_writes_the_child_there() {
    use lazymmu::host::Host;
    use lazymmu::pgtable::format::X86_64;
    use lazymmu::pgtable::ops::VaRange;
    let parent_host = Host::<X86_64>::new(PhysAddr(0x10_0000), 8);
    let child_host = Host::<X86_64>::new(PhysAddr(0x100_0000), 8);
    let parent = parent_host.new_tables(SpaceId(1), VaRange::Lower).unwrap();
    let child = child_host.new_tables(SpaceId(2), VaRange::Lower).unwrap();
    let (pages, block) = (VirtAddr(0x40_0000), VirtAddr(0x60_0000));
    let attrs = Attributes::user_data();
    parent
        .map(
            pages,
            PhysAddr(0x8000_0000),
            16 << 12,
            attrs,
            PageSize::Size4K,
        )
        .unwrap();
    parent
        .map(
            block,
            PhysAddr(0x8020_0000),
            2 << 20,
            attrs,
            PageSize::Size2M,
        )
        .unwrap();
    let parent_frames = parent_host.frames().outstanding();
    let mut gather = parent.gather();
    let summary = parent
        .copy_to(&child, pages, 4 << 20, CopyKind::Private, &mut gather)
        .unwrap();
    drop(gather);
    assert_eq!(summary.copied, [16, 1, 0]);
    assert_eq!(summary.write_protected, 17);
    assert_eq!(parent_host.frames().outstanding(), parent_frames);
    for (va, phys, size) in [
        (pages, 0x8000_0000, PageSize::Size4K),
        (pages.add(15 << 12), 0x8000_f000, PageSize::Size4K),
        (block, 0x8020_0000, PageSize::Size2M),
    ] {
        for tree in [&parent, &child] {
            let t = tree.translate(va).unwrap();
            assert_eq!((t.phys, t.size), (PhysAddr(phys), size));
            assert!(!t.attrs.writable);
        }
    }
    assert_eq!(child.verify().unwrap().leaves, [16, 1, 0]);
    assert_eq!(parent.verify().unwrap().leaves, [16, 1, 0]);
}

/// The x86 backend over host memory, its zaps through its run method
/// (`runs`) or entry by entry, counting the entries cleared and noting
/// that count at every TLB flush.
struct CountedClears<'m> {
    inner: X86Backend<&'m HostMemory, RecordingPrimitives>,
    runs: bool,
    cleared: std::cell::Cell<u64>,
    flushed_at: std::cell::RefCell<Vec<u64>>,
}

impl CountedClears<'_> {
    fn flushed(&self) {
        self.flushed_at.borrow_mut().push(self.cleared.get());
    }
}

impl lazymmu::backend::PteAccess for CountedClears<'_> {
    fn read_entry(&self, entry: PhysAddr) -> u64 {
        self.inner.read_entry(entry)
    }
    fn write_entry(&self, update: lazymmu::backend::EntryUpdate) {
        self.inner.write_entry(update)
    }
    fn get_and_clear(&self, update: lazymmu::backend::EntryUpdate) -> u64 {
        let old = self.inner.get_and_clear(update);
        if update.level == 1 && old != 0 {
            self.cleared.set(self.cleared.get() + 1);
        }
        old
    }
}

impl lazymmu::backend::TlbFlush for CountedClears<'_> {
    fn flush_range(
        &self,
        space: SpaceId,
        start: VirtAddr,
        end: VirtAddr,
        stride: PageSize,
        scope: lazymmu::backend::FlushScope,
    ) {
        self.flushed();
        self.inner.flush_range(space, start, end, stride, scope)
    }
    fn flush_all(&self, space: SpaceId, scope: lazymmu::backend::FlushScope) {
        self.flushed();
        self.inner.flush_all(space, scope)
    }
    fn flush_full_mm(&self, space: SpaceId, scope: lazymmu::backend::FlushScope) {
        self.flushed();
        self.inner.flush_full_mm(space, scope)
    }
    fn single_page_ceiling(&self) -> usize {
        self.inner.single_page_ceiling()
    }
}

impl lazymmu::mode::ArchHooks for CountedClears<'_> {
    fn enter(&self) {}
    fn leave(&self) {}
    fn flush(&self) {}
}

impl lazymmu::backend::ContextSwitch for CountedClears<'_> {}

impl Backend for CountedClears<'_> {
    type Format = format::X86_64;
    type Memory = HostMemory;
    fn memory(&self) -> &HostMemory {
        self.inner.memory()
    }
    fn clear_ptes(&self, run: PteRun, full: bool) -> RunChanges {
        if !self.runs {
            return runs::clear_ptes_each::<format::X86_64, _>(self, run, full);
        }
        let changes = self.inner.clear_ptes(run, full);
        self.cleared.set(self.cleared.get() + changes.count());
        changes
    }
}

/// A zap of more pages than the gather's batch holds flushes right after
/// the page that fills it (`zap_pte_range`'s `force_flush`), in the middle
/// of a PTE table, whether its runs are cleared by the backend's loop or
/// entry by entry, and under a full-mm gather as under an ordinary one.
#[test]
fn a_zap_flushes_right_after_the_page_that_fills_the_batch() {
    use lazymmu::backend::FlushScope;
    use lazymmu::pgtable::allocator::HostFrameAllocator;
    use lazymmu::pgtable::gather::{Gather, PAGE_BATCH};
    use lazymmu::pgtable::ops::{Mmu, VaRange};
    const PAGES: u64 = 20 * 512 + 100;
    // A start that is not the first entry of its table.
    let start = VirtAddr(0x4000_0000 + (37 << 12));
    let mut outcomes = Vec::new();
    for full in [false, true] {
        for runs in [true, false] {
            let memory = HostMemory::new(PhysAddr(TABLE), 64);
            let frames = HostFrameAllocator::new(PhysAddr(TABLE), 64);
            let backend = CountedClears {
                inner: X86Backend::new(&memory, RecordingPrimitives::new(0, SpaceId(1))),
                runs,
                cleared: std::cell::Cell::new(0),
                flushed_at: std::cell::RefCell::new(Vec::new()),
            };
            let lazy = Counters::new(
                lazymmu::mode::testing::TestEnv::default(),
                &backend,
                MisusePolicy::Panic,
            );
            // SAFETY: the allocator hands out frames of the backend's host
            // memory, used by nothing else; `lazy` is over the backend.
            let mmu = unsafe { Mmu::new(&backend, &lazy, &frames, FlushScope::Local) };
            let tables = mmu.new_tables(SpaceId(1), VaRange::Lower).unwrap();
            tables
                .map(
                    start,
                    PhysAddr(0x1_0000_0000),
                    PAGES << 12,
                    Attributes::user_data(),
                    PageSize::Size4K,
                )
                .unwrap();
            let mut gather = if full {
                Gather::full_mm(&backend, &frames, SpaceId(1), FlushScope::Local)
            } else {
                Gather::new(&backend, &frames, SpaceId(1), FlushScope::Local)
            };
            let summary = tables.zap(start, PAGES << 12, &mut gather).unwrap();
            let stats = gather.finish();
            assert_eq!(summary.leaves, [PAGES, 0, 0]);
            let flushed_at = backend.flushed_at.take();
            assert_eq!(
                flushed_at,
                [PAGE_BATCH as u64, PAGES],
                "full {full}, runs {runs}"
            );
            outcomes.push((full, summary, stats.full_flushes, stats.range_flushes));
        }
    }
    assert_eq!(outcomes[0], outcomes[1]);
    assert_eq!(outcomes[2], outcomes[3]);
}
