//! Every path that makes a new page table, on frames that arrive full of
//! present-looking garbage (the poisoning host allocator): map runs that
//! start, end, cover or cross a PTE table's boundaries (a run that merely
//! ends at the boundary does not fill the table, so the rest of it must be
//! cleared); apply, fork and mremap creating tables; and the split of a
//! huge leaf by zap, protect, fork and mremap. In every format the trees
//! must read back exactly as a model of the mappings says, and hold no
//! table the allocator does not count.

mod pgtable_support;

use lazymmu::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use lazymmu::backend::FlushScope;
use lazymmu::mode::{counters::Counters, testing::TestEnv, MisusePolicy};
use lazymmu::pgtable::allocator::{FrameAllocator, HostFrameAllocator};
use lazymmu::pgtable::format::{
    entries, entry_shift, Aarch64, Attributes, Entry, Format, PpcHash4K, Protection, Sparc64Sun4v,
    X86_64_5Level, S390, X86_64,
};
use lazymmu::pgtable::memory::{poison, PageTableMemory};
use lazymmu::pgtable::ops::{ApplyMode, CopyKind, Mmu, PageTables, VaRange};
use pgtable_support::{assert_no_leak, clip_runs, normalize, runs_of, Host, Native, Run};

type Lazy<'a, F> = Counters<TestEnv, &'a Native<'a, F>>;
type Tables<'a, F> = PageTables<'a, Native<'a, F>, Lazy<'a, F>, HostFrameAllocator>;

const SPACE: SpaceId = SpaceId(1);
const CHILD: SpaceId = SpaceId(2);
/// Where every page maps: `PHYS + va % 2 GiB`, so 2 MiB and 1 GiB blocks
/// are possible wherever the range allows.
const PHYS: u64 = 0x40_0000_0000;
/// 1 GiB into the address space: every level's table is new there.
const BASE: u64 = 1 << 30;

fn attrs() -> Attributes {
    Attributes::user_data()
}

fn phys(va: u64) -> u64 {
    PHYS + va % (1 << 31)
}

/// The model: the parent's and the fork child's mappings as runs (a
/// 1 GiB block is one run, not 262,144 pages).
#[derive(Default)]
struct Model {
    parent: Vec<Run>,
    child: Vec<Run>,
}

/// `attrs` as format `F` stores them (s390 has no user bit, for one).
fn stored<F: Format>(attrs: Attributes) -> Attributes {
    match F::decode(F::encode_leaf(PhysAddr(0), PageSize::Size4K, attrs), 1) {
        Entry::Leaf { attrs, .. } => attrs,
        other => panic!("{}: a leaf decodes as {other:?}", F::NAME),
    }
}

impl Model {
    fn map<F: Format>(&mut self, va: u64, pages: u64) {
        self.parent
            .push((va, pages * 4096, phys(va), stored::<F>(attrs())));
        self.parent = normalize(self.parent.clone());
    }

    /// The parent's runs inside `[va, va + len)`, and the rest.
    fn cut(&self, va: u64, len: u64) -> (Vec<Run>, Vec<Run>) {
        let mut rest = clip_runs(&self.parent, 0, va);
        rest.extend(clip_runs(&self.parent, va + len, u64::MAX));
        (clip_runs(&self.parent, va, va + len), rest)
    }

    fn zap(&mut self, va: u64, len: u64) {
        self.parent = normalize(self.cut(va, len).1);
    }

    fn protect<F: Format>(&mut self, va: u64, len: u64, protection: Protection) {
        let (inside, mut rest) = self.cut(va, len);
        rest.extend(
            inside
                .into_iter()
                .map(|(v, l, p, a)| (v, l, p, stored::<F>(protection.apply(a)))),
        );
        self.parent = normalize(rest);
    }

    fn mremap(&mut self, from: u64, len: u64, to: u64) {
        let (inside, mut rest) = self.cut(from, len);
        rest.extend(
            inside
                .into_iter()
                .map(|(v, l, p, a)| (v - from + to, l, p, a)),
        );
        self.parent = normalize(rest);
    }

    /// A shared fork of `[va, va + len)`: the child's entries old and clean.
    fn fork<F: Format>(&mut self, va: u64, len: u64) {
        let (inside, _) = self.cut(va, len);
        self.child.extend(inside.into_iter().map(|(v, l, p, a)| {
            let child = Attributes {
                accessed: false,
                dirty: false,
                ..a
            };
            (v, l, p, stored::<F>(child))
        }));
        self.child = normalize(self.child.clone());
    }
}

/// Runs `body` on fresh tables (the parent's and a fork child's) over
/// poisoned memory, then checks both trees against the model and the
/// allocator, and tears them down.
fn check<F: Format>(
    name: &str,
    body: impl for<'a> FnOnce(&Tables<'a, F>, &Tables<'a, F>, &mut Model),
) {
    let host = Host::new(256);
    let backend = host.backend::<F>(SPACE);
    let lazy = Counters::new(TestEnv::default(), &backend, MisusePolicy::Panic);
    // SAFETY: the poisoning host allocator hands out frames of the
    // backend's host memory, used by nothing else; `lazy` is over the
    // backend.
    let mmu = unsafe { Mmu::new(&backend, &lazy, &host.frames, FlushScope::Local) };
    let low = VaRange::for_format::<F>(false);
    let tables: Tables<'_, F> = mmu.new_tables(SPACE, low).unwrap();
    let child_tables: Tables<'_, F> = mmu.new_tables(CHILD, low).unwrap();
    let (root, child) = (tables.root(), child_tables.root());
    let mut model = Model::default();
    body(&tables, &child_tables, &mut model);
    let context = format!("{}: {name}", F::NAME);
    assert_eq!(
        runs_of::<F>(&host.memory, root, false),
        model.parent,
        "{context}: parent"
    );
    assert_eq!(
        runs_of::<F>(&host.memory, child, false),
        model.child,
        "{context}: child"
    );
    assert_no_leak::<F>(&host, &[root, child]);
    for tree in [tables, child_tables] {
        let mut gather = tree.gather();
        tree.destroy(&mut gather).unwrap();
    }
    assert_eq!(host.frames.outstanding(), 0, "{context}: frames leaked");
}

/// Pages per PTE table (512, or 256 for s390).
fn pte_pages<F: Format>() -> u64 {
    entries::<F>(1) as u64
}

fn map<F: Format>(t: &Tables<'_, F>, model: &mut Model, va: u64, pages: u64, largest: PageSize) {
    t.map(
        VirtAddr(va),
        PhysAddr(phys(va)),
        pages * 4096,
        attrs(),
        largest,
    )
    .unwrap();
    model.map::<F>(va, pages);
}

/// Map runs against the PTE tables' boundaries, 4 KiB pages only.
fn map_runs<F: Format>() {
    let n = pte_pages::<F>();
    // (first page, pages) relative to a table boundary.
    let runs = [
        (3, n - 3, "ends at the boundary"),
        (0, n - 5, "starts at the boundary"),
        (0, n, "covers the table"),
        (5, 7, "inside the table"),
        (7, 2 * n + 9, "crosses two boundaries"),
        (n - 1, 2, "one page either side"),
    ];
    for (first, pages, name) in runs {
        check::<F>(name, |t, _, model| {
            map(t, model, BASE + first * 4096, pages, PageSize::Size4K)
        });
    }
    // Two runs into the same new table, the second ending at its end.
    check::<F>("a second run ends at the boundary", |t, _, model| {
        map(t, model, BASE, 4, PageSize::Size4K);
        map(t, model, BASE + 10 * 4096, n - 10, PageSize::Size4K);
    });
}

/// apply, fork and mremap creating tables, with runs that end at a
/// table boundary.
fn create_tables<F: Format>() {
    let n = pte_pages::<F>();
    check::<F>("apply creates", |t, _, model| {
        let mut g = t.gather();
        t.apply(
            VirtAddr(BASE + 3 * 4096),
            (n - 3) * 4096,
            ApplyMode::Create,
            &mut g,
            |slot| {
                assert_eq!(slot.get(), Entry::Absent, "{:?} is new", slot.va());
                slot.set(PhysAddr(phys(slot.va().0)), attrs());
                Ok::<(), ()>(())
            },
        )
        .unwrap();
        model.map::<F>(BASE + 3 * 4096, n - 3);
    });
    check::<F>("fork creates the child's tables", |t, child, model| {
        map(t, model, BASE + 3 * 4096, n + 1, PageSize::Size4K);
        let mut g = t.gather();
        t.copy_to(
            child,
            VirtAddr(BASE),
            2 * n * 4096,
            CopyKind::Shared,
            &mut g,
        )
        .unwrap();
        model.fork::<F>(BASE, 2 * n * 4096);
    });
    check::<F>("mremap creates the destination's tables", |t, _, model| {
        map(t, model, BASE + 3 * 4096, n - 3, PageSize::Size4K);
        let to = 4 * BASE + 5 * 4096;
        let mut g = t.gather();
        t.move_range(
            VirtAddr(BASE + 3 * 4096),
            VirtAddr(to),
            (n - 3) * 4096,
            &mut g,
        )
        .unwrap();
        model.mremap(BASE + 3 * 4096, (n - 3) * 4096, to);
    });
}

/// Splits of a 2 MiB and a 1 GiB block by every operation that cuts one.
fn splits<F: Format>() {
    if !F::LARGE_LEAVES {
        return;
    }
    let block = 1u64 << entry_shift::<F>(2);
    let giant = 1u64 << entry_shift::<F>(3);
    let blocks = |t: &Tables<'_, F>, model: &mut Model| {
        // A 1 GiB block at 1 GiB and a 2 MiB block just above 2 GiB.
        map(t, model, BASE, giant / 4096, PageSize::Size1G);
        map(t, model, 2 * BASE, block / 4096, PageSize::Size2M);
    };
    check::<F>("zap splits", |t, _, model| {
        blocks(t, model);
        let mut g = t.gather();
        for (va, pages) in [(BASE + block + 3 * 4096, 5), (2 * BASE + 4096, 1)] {
            t.zap(VirtAddr(va), pages * 4096, &mut g).unwrap();
            model.zap(va, pages * 4096);
        }
    });
    check::<F>("protect splits", |t, _, model| {
        blocks(t, model);
        let mut g = t.gather();
        let ro = Protection::read_only();
        let (va, pages) = (BASE + 7 * 4096, 2 * block / 4096);
        t.protect(VirtAddr(va), pages * 4096, ro, &mut g).unwrap();
        model.protect::<F>(va, pages * 4096, ro);
    });
    check::<F>("fork splits", |t, child, model| {
        blocks(t, model);
        let mut g = t.gather();
        let (va, pages) = (2 * BASE + 9 * 4096, 3);
        t.copy_to(child, VirtAddr(va), pages * 4096, CopyKind::Shared, &mut g)
            .unwrap();
        model.fork::<F>(va, pages * 4096);
    });
    check::<F>("mremap splits", |t, _, model| {
        blocks(t, model);
        let mut g = t.gather();
        let (from, to, pages) = (2 * BASE, 4 * BASE + 4096, block / 4096);
        t.move_range(VirtAddr(from), VirtAddr(to), pages * 4096, &mut g)
            .unwrap();
        model.mremap(from, pages * 4096, to);
    });
}

fn every_path<F: Format>() {
    map_runs::<F>();
    create_tables::<F>();
    splits::<F>();
}

#[test]
fn x86_64_new_tables_on_poisoned_frames() {
    every_path::<X86_64>();
}

#[test]
fn x86_64_5_level_new_tables_on_poisoned_frames() {
    every_path::<X86_64_5Level>();
}

#[test]
fn aarch64_new_tables_on_poisoned_frames() {
    every_path::<Aarch64>();
}

#[test]
fn ppc64_hash_new_tables_on_poisoned_frames() {
    every_path::<PpcHash4K>();
}

#[test]
fn s390_new_tables_on_poisoned_frames() {
    every_path::<S390>();
}

#[test]
fn sparc64_new_tables_on_poisoned_frames() {
    every_path::<Sparc64Sun4v>();
}

/// The test's own premise: the frames the tables get are poisoned.
#[test]
fn the_host_allocator_poisons() {
    let host = Host::new(4);
    let frame = host.frames.allocate().unwrap();
    for i in 0..512 {
        let entry = frame.add(8 * i);
        assert_eq!(host.memory.read(entry), poison(entry));
    }
    host.frames.free(frame);
}
