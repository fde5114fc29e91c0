//! Invalidation completeness: a checking backend remembers every
//! translation an operation makes stale (a present leaf changed or
//! cleared, a table unlinked) and crosses it off only when a flush covers
//! it. After every operation nothing may remain, no page-table frame may
//! be freed while a stale walk to it can still be cached, and every PTE
//! write must happen inside a lazy section. Negative controls show that
//! the checker does catch a forgotten flush and free-before-flush.

mod pgtable_support;

use std::cell::{Cell, RefCell};

use lazymmu::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use lazymmu::backend::x86::{PrimitiveCall, RecordingPrimitives, RemoteFlush, X86Backend};
use lazymmu::backend::{Backend, ContextSwitch, EntryUpdate, FlushScope, PteAccess, TlbFlush};
use lazymmu::mode::{counters::Counters, testing::TestEnv, ArchHooks, LazyMode, MisusePolicy};
use lazymmu::pgtable::allocator::{FrameAllocator, HostFrameAllocator};
use lazymmu::pgtable::format::Protection;
use lazymmu::pgtable::format::{Aarch64, Attributes, Entry, Format, X86_64};
use lazymmu::pgtable::gather::Gather;
use lazymmu::pgtable::memory::{HostMemory, PageTableMemory};
use lazymmu::pgtable::ops::{ApplyMode, CopyKind, Mmu, PageTables, VaRange};
use pgtable_support::TABLE_BASE;

const SPACE: SpaceId = SpaceId(1);
const CHILD: SpaceId = SpaceId(2);
const G: u64 = 1 << 30;
const M2: u64 = 1 << 21;
const K4: u64 = 1 << 12;

/// A translation that may still be cached somewhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stale {
    space: SpaceId,
    va: u64,
    size: u64,
    /// The table frame a walk may still reach, for unlinked tables.
    table: Option<PhysAddr>,
}

/// Wraps the x86 backend (which stores entries in host memory) and
/// checks what the operations do through it.
struct Checker<'m, F> {
    inner: X86Backend<&'m HostMemory, RecordingPrimitives>,
    memory: &'m HostMemory,
    stale: RefCell<Vec<Stale>>,
    /// Frames allocated and not yet linked into a tree: no walker can
    /// reach them, so nothing written there can be cached.
    unlinked: RefCell<std::collections::HashSet<u64>>,
    in_section: Cell<bool>,
    sections: Cell<u32>,
    pte_writes_outside: Cell<u32>,
    _format: core::marker::PhantomData<F>,
}

impl<'m, F: Format> Checker<'m, F> {
    fn new(memory: &'m HostMemory) -> Self {
        Checker {
            inner: X86Backend::new(memory, RecordingPrimitives::new(0, SPACE)),
            memory,
            stale: RefCell::new(Vec::new()),
            unlinked: RefCell::new(std::collections::HashSet::new()),
            in_section: Cell::new(false),
            sections: Cell::new(0),
            pte_writes_outside: Cell::new(0),
            _format: core::marker::PhantomData,
        }
    }

    fn observe(&self, update: &EntryUpdate) {
        if update.level == 1 && !self.in_section.get() {
            self.pte_writes_outside
                .set(self.pte_writes_outside.get() + 1);
        }
        if update.valid && !update.leaf {
            let next = update.value & F::TABLE_ADDRESS_MASK;
            self.unlinked.borrow_mut().remove(&next);
        }
        if self.unlinked.borrow().contains(&(update.entry.0 & !0xFFF)) {
            return;
        }
        let old = self.memory.read(update.entry);
        if old == update.value {
            return;
        }
        let stale = match F::decode(old, update.level) {
            Entry::Absent => return,
            Entry::Leaf { size, .. } => Stale {
                space: update.space,
                va: update.va.0,
                size: size.bytes(),
                table: None,
            },
            Entry::Table(table) => Stale {
                space: update.space,
                va: update.va.0,
                size: 1 << (12 + 9 * (update.level as u32 - 1)),
                table: Some(table),
            },
        };
        self.stale.borrow_mut().push(stale);
    }

    fn take_stale(&self) -> Vec<Stale> {
        std::mem::take(&mut *self.stale.borrow_mut())
    }

    /// Whether a flush invalidating `start, start + stride, ...` below
    /// `end` hits the translation.
    fn hits(stale: &Stale, start: u64, end: u64, stride: u64) -> bool {
        let lo = stale.va.max(start);
        let hi = stale.va.wrapping_add(stale.size).min(end);
        if lo >= hi {
            return false;
        }
        // First invalidated address at or after `lo`.
        let first = start + (lo - start).div_ceil(stride) * stride;
        first < hi
    }
}

impl<F: Format> PteAccess for Checker<'_, F> {
    fn read_entry(&self, entry: PhysAddr) -> u64 {
        self.inner.read_entry(entry)
    }
    fn write_entry(&self, update: EntryUpdate) {
        self.observe(&update);
        self.inner.write_entry(update)
    }
    fn get_and_clear(&self, update: EntryUpdate) -> u64 {
        self.observe(&update);
        self.inner.get_and_clear(update)
    }
}

impl<F: Format> TlbFlush for Checker<'_, F> {
    fn flush_range(
        &self,
        space: SpaceId,
        start: VirtAddr,
        end: VirtAddr,
        stride: PageSize,
        scope: FlushScope,
    ) {
        self.stale
            .borrow_mut()
            .retain(|s| !(s.space == space && Self::hits(s, start.0, end.0, stride.bytes())));
        self.inner.flush_range(space, start, end, stride, scope)
    }
    fn flush_all(&self, space: SpaceId, scope: FlushScope) {
        self.stale.borrow_mut().retain(|s| s.space != space);
        self.inner.flush_all(space, scope)
    }
    fn single_page_ceiling(&self) -> usize {
        self.inner.single_page_ceiling()
    }
}

impl<F: Format> ArchHooks for Checker<'_, F> {
    fn enter(&self) {
        assert!(!self.in_section.get(), "entered twice");
        self.in_section.set(true);
        self.sections.set(self.sections.get() + 1);
    }
    fn leave(&self) {
        assert!(self.in_section.get(), "left without entering");
        self.in_section.set(false);
    }
    fn flush(&self) {}
}

impl<F: Format> ContextSwitch for Checker<'_, F> {}

impl<F: Format> Backend for Checker<'_, F> {
    type Format = F;
    type Memory = HostMemory;
    fn memory(&self) -> &HostMemory {
        self.memory
    }
}

/// Frees are checked against the stale walks still possible.
struct CheckedFrames<'c, 'm, F> {
    inner: HostFrameAllocator,
    checker: &'c Checker<'m, F>,
    early_frees: Cell<u32>,
}

impl<F: Format> CheckedFrames<'_, '_, F> {
    /// A new tree, its root reachable as soon as it exists (it is what
    /// CR3/TTBR will hold).
    fn tree<'a, B: Backend<Format = F>, L: LazyMode>(
        &self,
        mmu: &Mmu<'a, B, L, Self>,
        space: SpaceId,
    ) -> PageTables<'a, B, L, Self> {
        let tables = mmu
            .new_tables(space, VaRange::for_format::<F>(false))
            .unwrap();
        self.checker.unlinked.borrow_mut().remove(&tables.root().0);
        tables
    }
}

impl<F: Format> FrameAllocator for CheckedFrames<'_, '_, F> {
    fn allocate(&self) -> Option<PhysAddr> {
        let frame = self.inner.allocate()?;
        self.checker.unlinked.borrow_mut().insert(frame.0);
        Some(frame)
    }
    fn free(&self, frame: PhysAddr) {
        if self
            .checker
            .stale
            .borrow()
            .iter()
            .any(|s| s.table == Some(frame))
        {
            self.early_frees.set(self.early_frees.get() + 1);
        }
        self.inner.free(frame)
    }
}

type CheckedGather<'g, F> = Gather<'g, Checker<'g, F>, CheckedFrames<'g, 'g, F>>;

fn user() -> Attributes {
    Attributes::user_data()
}

/// Runs every operation through the checker and asserts completeness.
fn every_operation_flushes_what_it_changes<F: Format>() {
    let memory = HostMemory::new(PhysAddr(TABLE_BASE), 1024);
    let checker = Checker::<F>::new(&memory);
    let frames = CheckedFrames {
        inner: HostFrameAllocator::poisoning(&memory),
        checker: &checker,
        early_frees: Cell::new(0),
    };
    let lazy = Counters::new(TestEnv::default(), &checker, MisusePolicy::Panic);
    // SAFETY: the allocator hands out frames of the checker's host memory,
    // used by nothing else; `lazy` is over the checker.
    let mmu = unsafe { Mmu::new(&checker, &lazy, &frames, FlushScope::Local) };
    let tables = frames.tree(&mmu, SPACE);
    let base = 4 * G;

    let gather = || {
        Gather::new(
            &checker,
            &frames,
            SPACE,
            FlushScope::Cpus(lazymmu::cpu::CpuMask::from_bits(0b11)),
        )
    };
    let checked = |name: &str| {
        assert_eq!(
            checker.take_stale(),
            vec![],
            "{name}: stale translations left"
        );
        assert_eq!(
            frames.early_frees.get(),
            0,
            "{name}: table freed before its flush"
        );
        assert_eq!(
            checker.pte_writes_outside.get(),
            0,
            "{name}: PTE written outside a lazy section"
        );
    };
    let step = |name: &str, f: &dyn Fn(&mut CheckedGather<'_, F>)| {
        let mut gather = gather();
        f(&mut gather);
        drop(gather);
        checked(name);
    };

    step("map", &|_| {
        tables
            .map(
                VirtAddr(base),
                PhysAddr(64 * G),
                G,
                user(),
                PageSize::Size1G,
            )
            .unwrap();
        tables
            .map(
                VirtAddr(base + G),
                PhysAddr(70 * G),
                8 * M2,
                user(),
                PageSize::Size2M,
            )
            .unwrap();
        tables
            .map(
                VirtAddr(base + G + 8 * M2),
                PhysAddr(80 * G),
                1500 * K4,
                user(),
                PageSize::Size4K,
            )
            .unwrap();
    });
    step("protect (few pages: page by page)", &|g| {
        tables
            .protect(
                VirtAddr(base + G + 8 * M2 + 3 * K4),
                5 * K4,
                Protection::read_only(),
                g,
            )
            .unwrap();
    });
    step("protect (splits, many pages: full flush)", &|g| {
        tables
            .protect(
                VirtAddr(base + 3 * M2 + 7 * K4),
                G,
                Protection::read_only(),
                g,
            )
            .unwrap();
    });
    step("copy-on-write fork", &|g| {
        let child = frames.tree(&mmu, CHILD);
        // Writable again first, so the copy has something to downgrade.
        tables
            .protect(
                VirtAddr(base + G + 8 * M2),
                20 * K4,
                Protection::writable(),
                g,
            )
            .unwrap();
        g.flush();
        let summary = tables
            .copy_to(
                &child,
                VirtAddr(base + G + 8 * M2),
                20 * K4,
                CopyKind::Private,
                g,
            )
            .unwrap();
        assert_eq!(summary.write_protected, 20);
        g.flush();
        // The child's own entries were new: nothing stale in its space.
        assert!(checker.stale.borrow().iter().all(|s| s.space == SPACE));
        let mut child_gather = Gather::new(&checker, &frames, CHILD, FlushScope::Local);
        child.destroy(&mut child_gather).unwrap();
    });
    step("move", &|g| {
        tables
            .move_range(
                VirtAddr(base + G),
                VirtAddr(base + 7 * G + K4),
                8 * M2 + 100 * K4,
                g,
            )
            .unwrap();
    });
    step("apply (clear)", &|g| {
        tables
            .apply(
                VirtAddr(base + 7 * G),
                4 * M2,
                ApplyMode::Existing,
                g,
                |slot| {
                    slot.clear();
                    Ok::<(), ()>(())
                },
            )
            .unwrap();
    });
    step("zap (splits a block, frees tables)", &|g| {
        tables
            .zap(VirtAddr(base + 5 * M2 + 3 * K4), 4 * G, g)
            .unwrap();
    });
    let mut g = gather();
    tables.destroy(&mut g).unwrap();
    drop(g);
    checked("destroy");
    assert_eq!(frames.inner.outstanding(), 0);
    assert!(checker.sections.get() > 0);
}

#[test]
fn x86_64_operations_flush_everything_they_change() {
    every_operation_flushes_what_it_changes::<X86_64>();
}

#[test]
fn aarch64_operations_flush_everything_they_change() {
    every_operation_flushes_what_it_changes::<Aarch64>();
}

#[test]
fn the_checker_catches_a_forgotten_flush_and_free_before_flush() {
    let memory = HostMemory::new(PhysAddr(TABLE_BASE), 64);
    let checker = Checker::<X86_64>::new(&memory);
    let frames = CheckedFrames {
        inner: HostFrameAllocator::poisoning(&memory),
        checker: &checker,
        early_frees: Cell::new(0),
    };
    let lazy = Counters::new(TestEnv::default(), &checker, MisusePolicy::Panic);
    // SAFETY: the allocator hands out frames of the checker's host memory,
    // used by nothing else; `lazy` is over the checker.
    let mmu = unsafe { Mmu::new(&checker, &lazy, &frames, FlushScope::Local) };
    let tables = frames.tree(&mmu, SPACE);
    tables
        .map(VirtAddr(G), PhysAddr(G), 4 * K4, user(), PageSize::Size4K)
        .unwrap();

    // A gather that is leaked never flushes: the checker sees the stale
    // translation.
    let mut gather = Gather::new(&checker, &frames, SPACE, FlushScope::Local);
    tables
        .protect(VirtAddr(G), K4, Protection::read_only(), &mut gather)
        .unwrap();
    std::mem::forget(gather);
    assert_eq!(checker.take_stale().len(), 1);

    // The known-bad order frees the unlinked tables before flushing them.
    let mut bad = Gather::new_free_before_flush(&checker, &frames, SPACE, FlushScope::Local);
    tables.zap(VirtAddr(0), 512 * G, &mut bad).unwrap();
    drop(bad);
    assert!(
        frames.early_frees.get() > 0,
        "free-before-flush went unnoticed"
    );
}

#[test]
fn one_lazy_section_per_pte_table() {
    let memory = HostMemory::new(PhysAddr(TABLE_BASE), 1024);
    let checker = Checker::<X86_64>::new(&memory);
    let frames = HostFrameAllocator::poisoning(&memory);
    let lazy = Counters::new(TestEnv::default(), &checker, MisusePolicy::Panic);
    // SAFETY: the allocator hands out frames of the checker's host memory,
    // used by nothing else; `lazy` is over the checker.
    let mmu = unsafe { Mmu::new(&checker, &lazy, &frames, FlushScope::Local) };
    let tables = mmu.new_tables(SPACE, VaRange::Both).unwrap();
    // From 4 KiB below 4 MiB to 4 KiB past 7 MiB: PTE tables for three
    // 2 MiB regions, one section each.
    tables
        .map(
            VirtAddr(2 * M2 - K4),
            PhysAddr(G),
            3 * M2 / 2 + 2 * K4,
            user(),
            PageSize::Size4K,
        )
        .unwrap();
    assert_eq!(checker.sections.get(), 3);
    assert_eq!(checker.pte_writes_outside.get(), 0);
    let mut gather = Gather::new(&checker, &frames, SPACE, FlushScope::Local);
    tables.zap(VirtAddr(0), G, &mut gather).unwrap();
    drop(gather);
    // One per PTE table, plus the short one that unlinks the PMD table
    // (the zap covers its whole 1 GiB).
    assert_eq!(checker.sections.get(), 3 + 3 + 1);
}

#[test]
fn gather_flushes_page_by_page_up_to_the_ceiling_then_fully() {
    let memory = HostMemory::new(PhysAddr(TABLE_BASE), 64);
    let frames = HostFrameAllocator::poisoning(&memory);
    let backend = X86Backend::new(&memory, RecordingPrimitives::new(1, SPACE));

    // 33 pages: 33 invlpg on the local CPU, one shootdown to CPU 0 and 2.
    let mut gather = Gather::new(
        &backend,
        &frames,
        SPACE,
        FlushScope::Cpus(lazymmu::cpu::CpuMask::from_bits(0b111)),
    );
    for i in 0..33 {
        gather.add_page(VirtAddr(G + i * K4), PageSize::Size4K);
    }
    drop(gather);
    let calls = backend.primitives().calls();
    assert_eq!(
        calls[0],
        PrimitiveCall::Shootdown(
            lazymmu::cpu::CpuMask::from_bits(0b101),
            RemoteFlush::Range {
                space: SPACE,
                start: VirtAddr(G),
                end: VirtAddr(G + 33 * K4),
                stride: PageSize::Size4K
            }
        )
    );
    assert_eq!(calls.len(), 34);
    assert!(calls[1..]
        .iter()
        .all(|c| matches!(c, PrimitiveCall::Invlpg(_))));
    backend.primitives().clear();

    // 34 pages: one CR3 reload.
    let mut gather = Gather::new(&backend, &frames, SPACE, FlushScope::Local);
    gather.add_range(VirtAddr(G), VirtAddr(G + 34 * K4), PageSize::Size4K);
    drop(gather);
    assert_eq!(backend.primitives().calls(), vec![PrimitiveCall::ReloadCr3]);
    backend.primitives().clear();

    // Kernel space: a full flush must drop global entries too.
    let mut gather = Gather::new(&backend, &frames, SpaceId::KERNEL, FlushScope::Local);
    gather.add_range(VirtAddr(G), VirtAddr(G + 2 * G), PageSize::Size2M);
    drop(gather);
    assert_eq!(
        backend.primitives().calls(),
        vec![PrimitiveCall::FlushGlobal]
    );
    backend.primitives().clear();

    // A space not loaded on this CPU has nothing cached locally.
    let mut gather = Gather::new(&backend, &frames, SpaceId(7), FlushScope::Local);
    gather.add_page(VirtAddr(G), PageSize::Size4K);
    drop(gather);
    assert_eq!(backend.primitives().calls(), vec![]);

    // Frames are freed after the flush, and only then.
    let frame = frames.allocate().unwrap();
    let mut gather = Gather::new(&backend, &frames, SPACE, FlushScope::Local);
    gather.remove_table(frame, VirtAddr(G), 2);
    assert!(frames.is_allocated(frame));
    let stats = gather.finish();
    assert!(!frames.is_allocated(frame));
    assert_eq!((stats.range_flushes, stats.frames_freed), (1, 1));
    assert_eq!(
        backend.primitives().calls(),
        vec![PrimitiveCall::Invlpg(VirtAddr(G))]
    );
}
