//! Range operations on host memory, 1 GiB at a time with 4 KiB pages
//! forced (262,144 PTEs), each against its floor (the same entry values
//! written into a preallocated array, or the same read-modify-write loop
//! over one) and against the peers that have the operation.
//!
//! x86-64 4-level, against the `x86_64` crate page by page: `map_1gib`
//! {`lazymmu`, `x86_64_crate` (`map_to`), `floor`}, `protect_1gib`
//! {`lazymmu`, `x86_64_crate` (`update_flags`), `floor`}, `unmap_1gib`
//! {`lazymmu`, `x86_64_crate` (`unmap`), `floor`}, `copy_1gib` (fork: the
//! child written, the parent write-protected) {`lazymmu`, `floor`},
//! `move_1gib` (mremap 1 GiB up by 2 GiB) {`lazymmu`, `floor`}.
//!
//! AArch64 4K granule, 48-bit, against `aarch64-paging`'s `IdMap`:
//! `aarch64_map_1gib` {`lazymmu`, `aarch64_paging` (`map_range` without
//! block mappings), `floor`}, `aarch64_protect_1gib` {`lazymmu`,
//! `aarch64_paging` (`modify_range` setting read-only), `floor`}. lazymmu
//! runs its arm64 backend over a host CPU (`HostArm64`).
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use aarch64_paging::descriptor::El1Attributes;
use aarch64_paging::idmap::IdMap;
use aarch64_paging::paging::{Constraints, El1And0, MemoryRegion};
use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};
use lazymmu::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use lazymmu::backend::arm64::{Arm64, HostArm64};
use lazymmu::backend::runs::NewProtection;
use lazymmu::backend::x86::{RecordingPrimitives, X86Backend};
use lazymmu::backend::{Backend, FlushScope};
use lazymmu::mode::{counters::Counters, testing::TestEnv, MisusePolicy};
use lazymmu::pgtable::allocator::{FrameAllocator, HostFrameAllocator};
use lazymmu::pgtable::format::x86::{ACCESSED, DIRTY, WRITABLE};
use lazymmu::pgtable::format::{Aarch64, Attributes, Format, Protection, X86_64};
use lazymmu::pgtable::gather::Gather;
use lazymmu::pgtable::memory::{HostMemory, PageTableMemory};
use lazymmu::pgtable::ops::{CopyKind, Mmu, PageTables, VaRange};
use x86_64::structures::paging::{
    Mapper, OffsetPageTable, Page, PageTable, PageTableFlags, PhysFrame, Size4KiB,
};

const GIB: u64 = 1 << 30;
const PAGES: u64 = GIB >> 12;
/// Where the 1 GiB goes: 1 GiB-aligned, inside one top-level entry.
const VA: u64 = 8 * GIB;
/// Where a move puts it.
const MOVED: u64 = VA + 2 * GIB;
const PHYS: u64 = 64 * GIB;
const TABLE_BASE: u64 = 0x10_0000;
/// Enough frames for two trees of 1 GiB of 4 KiB pages (515 and 514) with
/// room to spare.
const FRAMES: usize = 1100;
const SPACE: SpaceId = SpaceId(1);
const CHILD: SpaceId = SpaceId(2);

struct Host {
    memory: HostMemory,
    frames: HostFrameAllocator,
}

impl Host {
    /// Fresh memory, every page already faulted in: a zeroed allocation
    /// may come from `calloc`/`mmap` untouched, and the kernel's page
    /// faults on first write would otherwise be timed as part of whichever
    /// implementation writes first.
    fn new() -> Self {
        let memory = HostMemory::new(PhysAddr(TABLE_BASE), FRAMES);
        for frame in 0..FRAMES as u64 {
            memory.write(PhysAddr(TABLE_BASE + frame * 4096), black_box(0));
        }
        Host {
            memory,
            frames: HostFrameAllocator::new(PhysAddr(TABLE_BASE), FRAMES),
        }
    }
}

/// Runs `op` on the tables of format `F` at `root` in host memory, with
/// `backend`, a lazy mode over it and a gather (flushed inside the timing:
/// it is part of the operation).
fn with_tables<F, B, R>(
    host: &Host,
    backend: &B,
    root: PhysAddr,
    op: impl FnOnce(
        &PageTables<'_, B, Counters<TestEnv, &B>, HostFrameAllocator>,
        &mut Gather<'_, B, HostFrameAllocator>,
    ) -> R,
) -> R
where
    F: Format,
    B: Backend<Format = F>,
{
    let lazy = Counters::new(TestEnv::default(), backend, MisusePolicy::Count);
    // SAFETY: the host allocator hands out frames of the backend's host
    // memory, used by nothing else; `lazy` is over the backend.
    let mmu = unsafe { Mmu::new(backend, &lazy, &host.frames, FlushScope::Local) };
    // SAFETY: `root` is a root `lazymmu_map` built in this memory with
    // this allocator; the caller keeps it while this borrows it.
    let tables = unsafe { mmu.tables_at(root, SPACE, VaRange::Lower) };
    let mut gather = Gather::new(backend, &host.frames, SPACE, FlushScope::Local);
    let result = op(&tables, &mut gather);
    drop(gather);
    result
}

fn x86_backend(host: &Host) -> X86Backend<&HostMemory, RecordingPrimitives> {
    X86Backend::new(&host.memory, RecordingPrimitives::new(0, SPACE))
}

fn arm64_backend(host: &Host) -> Arm64<HostArm64<&HostMemory>> {
    Arm64::new(HostArm64::new(&host.memory))
}

/// Maps the 1 GiB at `va` with `backend` in a new tree (of the lower half,
/// where the 1 GiB is) and returns its root.
fn lazymmu_map<F, B>(host: &Host, backend: &B, va: u64) -> PhysAddr
where
    F: Format,
    B: Backend<Format = F>,
{
    let lazy = Counters::new(TestEnv::default(), backend, MisusePolicy::Count);
    // SAFETY: the host allocator hands out frames of the backend's host
    // memory, used by nothing else; `lazy` is over the backend.
    let mmu = unsafe { Mmu::new(backend, &lazy, &host.frames, FlushScope::Local) };
    let tables = mmu.new_tables(SPACE, VaRange::Lower).unwrap();
    tables
        .map(
            VirtAddr(va),
            PhysAddr(PHYS),
            GIB,
            Attributes::user_data(),
            PageSize::Size4K,
        )
        .unwrap();
    // The caller keeps the tree: it outlives this backend.
    tables.into_root()
}

/// A host with the 1 GiB mapped by lazymmu, x86-64.
struct Mapped {
    host: Host,
    root: PhysAddr,
}

fn mapped() -> Mapped {
    let host = Host::new();
    let root = lazymmu_map::<X86_64, _>(&host, &x86_backend(&host), VA);
    Mapped { host, root }
}

/// Runs `op` on the mapped x86-64 tables.
fn on_mapped<R>(
    m: &Mapped,
    op: impl FnOnce(
        &PageTables<
            '_,
            X86Backend<&HostMemory, RecordingPrimitives>,
            Counters<TestEnv, &X86Backend<&HostMemory, RecordingPrimitives>>,
            HostFrameAllocator,
        >,
        &mut Gather<'_, X86Backend<&HostMemory, RecordingPrimitives>, HostFrameAllocator>,
    ) -> R,
) -> R {
    with_tables(&m.host, &x86_backend(&m.host), m.root, op)
}

struct Frames<'a>(&'a HostFrameAllocator);

// SAFETY: every frame handed out is a distinct, unused frame of the host
// memory the page table lives in.
unsafe impl x86_64::structures::paging::FrameAllocator<Size4KiB> for Frames<'_> {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        self.0
            .allocate()
            .map(|p| PhysFrame::containing_address(x86_64::PhysAddr::new(p.0)))
    }
}

/// The `x86_64` crate's mapper over the tree at `root` in `host`.
///
/// # Safety
/// `root` is a page-table frame of `host.memory`, and nothing else uses
/// the memory while the mapper is alive.
unsafe fn x86_64_mapper(host: &Host, root: PhysAddr) -> OffsetPageTable<'_> {
    let offset = host.memory.physical_offset();
    // SAFETY: the root frame lives in `host.memory` at host address
    // root + offset; the caller vouches that nothing else accesses it.
    unsafe {
        let level_4 = &mut *((root.0.wrapping_add(offset)) as *mut PageTable);
        OffsetPageTable::new(level_4, x86_64::VirtAddr::new(offset))
    }
}

fn x86_64_page(i: u64) -> Page<Size4KiB> {
    Page::containing_address(x86_64::VirtAddr::new(VA + (i << 12)))
}

const X86_64_READ_ONLY: PageTableFlags = PageTableFlags::PRESENT
    .union(PageTableFlags::USER_ACCESSIBLE)
    .union(PageTableFlags::ACCESSED)
    .union(PageTableFlags::NO_EXECUTE);

fn x86_64_crate_map(host: &Host) {
    let root = host.frames.allocate().unwrap();
    // SAFETY: the root is a fresh (zeroed) frame of `host.memory`, which
    // nothing else uses meanwhile.
    let mut mapper = unsafe { x86_64_mapper(host, root) };
    let flags = X86_64_READ_ONLY | PageTableFlags::WRITABLE;
    let mut frames = Frames(&host.frames);
    for i in 0..PAGES {
        let frame = PhysFrame::containing_address(x86_64::PhysAddr::new(PHYS + (i << 12)));
        // SAFETY: the frames mapped are not memory of this process; the
        // tables only live in host memory and are never loaded in CR3.
        unsafe { mapper.map_to(x86_64_page(i), frame, flags, &mut frames) }
            .unwrap()
            .ignore();
    }
}

/// Times `routine` alone, `iters` times, each on a fresh `setup()` whose
/// creation and destruction are not timed.
fn timed<S, O>(
    iters: u64,
    mut setup: impl FnMut() -> S,
    mut routine: impl FnMut(&mut S) -> O,
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let mut state = setup();
        let start = Instant::now();
        black_box(routine(&mut state));
        total += start.elapsed();
        drop(state);
    }
    total
}

/// A group of 1 GiB operations: 20 samples in 3 s, each a few runs on
/// fresh tables (whose setup is not timed).
fn group<'c>(c: &'c mut Criterion, name: &str) -> BenchmarkGroup<'c, WallTime> {
    let mut group = c.benchmark_group(name);
    group.sample_size(20);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));
    group
}

/// An array of the 1 GiB's entries in the state lazymmu's tables are in
/// when its timing starts: freshly allocated, every page faulted in (as
/// [`Host::new`] leaves host memory), entry `i` holding `value(i)`.
fn fresh_entries(value: impl Fn(u64) -> u64) -> Vec<u64> {
    (0..PAGES).map(|i| black_box(value(i))).collect()
}

/// The entry lazymmu's map writes for page `i` of the 1 GiB.
fn mapped_entry<F: Format>(i: u64) -> u64 {
    F::leaf_template(PageSize::Size4K, Attributes::user_data()) | (PHYS + (i << 12))
}

/// The floor of a run of stores: `value(i)` into a preallocated array.
fn floor_stores(group: &mut BenchmarkGroup<'_, WallTime>, value: impl Fn(u64) -> u64) {
    group.bench_function("floor", |b| {
        b.iter_custom(|iters| {
            timed(
                iters,
                || fresh_entries(|_| 0),
                |entries| {
                    for (i, entry) in entries.iter_mut().enumerate() {
                        *entry = value(i as u64);
                    }
                    black_box(entries);
                },
            )
        })
    });
}

/// The floor of a read-modify-write run: `update` over an array holding
/// the mapped entries of format `F`, with a tally it may add to (kept in a
/// register: a tally behind a captured reference could alias the array,
/// and the loop would load and store it for every entry).
fn floor_update<F: Format>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    update: impl Fn(u64, &mut u64) -> u64,
) {
    group.bench_function("floor", |b| {
        b.iter_custom(|iters| {
            timed(
                iters,
                || fresh_entries(mapped_entry::<F>),
                |entries| {
                    let mut tally = 0;
                    for entry in entries.iter_mut() {
                        *entry = update(*entry, &mut tally);
                    }
                    black_box((entries, tally));
                },
            )
        })
    });
}

/// The floor of a run from one array into another: `update(from, to)`
/// over the mapped entries of x86-64 and an empty array.
fn floor_pairs(group: &mut BenchmarkGroup<'_, WallTime>, update: impl Fn(&mut u64, &mut u64)) {
    group.bench_function("floor", |b| {
        b.iter_custom(|iters| {
            timed(
                iters,
                || (fresh_entries(mapped_entry::<X86_64>), fresh_entries(|_| 0)),
                |(from, to)| {
                    for (from, to) in from.iter_mut().zip(to.iter_mut()) {
                        update(from, to);
                    }
                    black_box((from, to));
                },
            )
        })
    });
}

/// The plainest read-modify-write of a protection change for format `F`:
/// each entry keeps its address, dirty and accessed bits and gets the
/// others of `attrs` (on x86-64 and AArch64 the dirty and accessed
/// attributes are one bit each).
fn plain_protect<F: Format>(attrs: Attributes) -> impl Fn(u64) -> u64 {
    let keep = F::leaf_address_mask(PageSize::Size4K) | F::DIRTY_BIT | F::ACCESSED_BIT;
    let set = F::leaf_template(
        PageSize::Size4K,
        Attributes {
            dirty: false,
            accessed: false,
            ..attrs
        },
    );
    move |old| (old & keep) | set
}

fn bench_map(c: &mut Criterion) {
    let template = X86_64::leaf_template(PageSize::Size4K, Attributes::user_data());
    let mut group = group(c, "map_1gib");
    group.bench_function("lazymmu", |b| {
        b.iter_custom(|iters| {
            timed(iters, Host::new, |host| {
                lazymmu_map::<X86_64, _>(host, &x86_backend(host), VA)
            })
        })
    });
    group.bench_function("x86_64_crate", |b| {
        b.iter_custom(|iters| timed(iters, Host::new, |host| x86_64_crate_map(host)))
    });
    floor_stores(&mut group, |i| template | (PHYS + (i << 12)));
    group.finish();
}

fn bench_protect(c: &mut Criterion) {
    let read_only = Attributes::user_data().read_only();
    let mut group = group(c, "protect_1gib");
    group.bench_function("lazymmu", |b| {
        b.iter_custom(|iters| {
            timed(iters, mapped, |m| {
                on_mapped(m, |tables, gather| {
                    tables
                        .protect(VirtAddr(VA), GIB, Protection::read_only(), gather)
                        .unwrap()
                })
            })
        })
    });
    group.bench_function("x86_64_crate", |b| {
        b.iter_custom(|iters| {
            timed(iters, mapped, |m| {
                // SAFETY: the mapped tree is in `m.host.memory`, used by
                // nothing else while the mapper is alive.
                let mut mapper = unsafe { x86_64_mapper(&m.host, m.root) };
                for i in 0..PAGES {
                    // SAFETY: the tables are never loaded in CR3.
                    unsafe { mapper.update_flags(x86_64_page(i), X86_64_READ_ONLY) }
                        .unwrap()
                        .ignore();
                }
            })
        })
    });
    let protect = plain_protect::<X86_64>(read_only);
    floor_update::<X86_64>(&mut group, |old, _| protect(old));
    group.finish();
}

fn bench_unmap(c: &mut Criterion) {
    let mut group = group(c, "unmap_1gib");
    group.bench_function("lazymmu", |b| {
        b.iter_custom(|iters| {
            timed(iters, mapped, |m| {
                on_mapped(m, |tables, gather| {
                    tables.zap(VirtAddr(VA), GIB, gather).unwrap()
                })
            })
        })
    });
    group.bench_function("x86_64_crate", |b| {
        b.iter_custom(|iters| {
            timed(iters, mapped, |m| {
                // SAFETY: as for protect.
                let mut mapper = unsafe { x86_64_mapper(&m.host, m.root) };
                for i in 0..PAGES {
                    mapper.unmap(x86_64_page(i)).unwrap().1.ignore();
                }
            })
        })
    });
    // Read each entry (its dirty bit counted), store zero.
    floor_update::<X86_64>(&mut group, |old, dirty| {
        *dirty += old & DIRTY;
        0
    });
    group.finish();
}

fn bench_copy(c: &mut Criterion) {
    let mut group = group(c, "copy_1gib");
    group.bench_function("lazymmu", |b| {
        b.iter_custom(|iters| {
            timed(iters, mapped, |m| {
                on_mapped(m, |tables, gather| {
                    let child = tables.mmu().new_tables(CHILD, VaRange::Lower).unwrap();
                    let summary = tables
                        .copy_to(&child, VirtAddr(VA), GIB, CopyKind::Private, gather)
                        .unwrap();
                    // The child stays in the host memory, freed with it
                    // after the timing.
                    black_box(child.into_root());
                    summary
                })
            })
        })
    });
    // The parent's entry made read-only, the child's also old.
    floor_pairs(&mut group, |parent, child| {
        let read_only = *parent & !WRITABLE;
        *parent = read_only;
        *child = read_only & !ACCESSED;
    });
    group.finish();
}

fn bench_move(c: &mut Criterion) {
    let mut group = group(c, "move_1gib");
    group.bench_function("lazymmu", |b| {
        b.iter_custom(|iters| {
            timed(iters, mapped, |m| {
                on_mapped(m, |tables, gather| {
                    tables
                        .move_range(VirtAddr(VA), VirtAddr(MOVED), GIB, gather)
                        .unwrap()
                })
            })
        })
    });
    floor_pairs(&mut group, |source, target| {
        *target = *source;
        *source = 0;
    });
    group.finish();
}

/// `aarch64-paging`'s attributes for what lazymmu's
/// `Attributes::user_data()` encodes: normal memory (MAIR index 0 in
/// lazymmu's `AARCH64_MAIR`), inner shareable, accessed, not global,
/// user, never executable.
fn aarch64_paging_user_data() -> El1Attributes {
    El1Attributes::VALID
        | El1Attributes::ATTRIBUTE_INDEX_0
        | El1Attributes::INNER_SHAREABLE
        | El1Attributes::ACCESSED
        | El1Attributes::NON_GLOBAL
        | El1Attributes::USER
        | El1Attributes::UXN
        | El1Attributes::PXN
}

fn aarch64_paging_map() -> IdMap<El1And0> {
    let mut idmap = IdMap::with_asid(1, 0, El1And0);
    idmap
        .map_range_with_constraints(
            &MemoryRegion::new(PHYS as usize, (PHYS + GIB) as usize),
            aarch64_paging_user_data(),
            Constraints::NO_BLOCK_MAPPINGS,
        )
        .unwrap();
    idmap
}

fn bench_aarch64_map(c: &mut Criterion) {
    let template = Aarch64::leaf_template(PageSize::Size4K, Attributes::user_data());
    let mut group = group(c, "aarch64_map_1gib");
    group.bench_function("lazymmu", |b| {
        b.iter_custom(|iters| {
            timed(iters, Host::new, |host| {
                lazymmu_map::<Aarch64, _>(host, &arm64_backend(host), PHYS)
            })
        })
    });
    group.bench_function("aarch64_paging", |b| {
        b.iter_custom(|iters| timed(iters, || (), |_| aarch64_paging_map()))
    });
    floor_stores(&mut group, |i| template | (PHYS + (i << 12)));
    group.finish();
}

fn bench_aarch64_protect(c: &mut Criterion) {
    let read_only = Attributes::user_data().read_only();
    let mut group = group(c, "aarch64_protect_1gib");
    group.bench_function("lazymmu", |b| {
        b.iter_custom(|iters| {
            timed(
                iters,
                || {
                    let host = Host::new();
                    let root = lazymmu_map::<Aarch64, _>(&host, &arm64_backend(&host), PHYS);
                    (host, root)
                },
                |(host, root)| {
                    with_tables(host, &arm64_backend(host), *root, |tables, gather| {
                        tables
                            .protect(VirtAddr(PHYS), GIB, Protection::read_only(), gather)
                            .unwrap()
                    })
                },
            )
        })
    });
    group.bench_function("aarch64_paging", |b| {
        b.iter_custom(|iters| {
            timed(iters, aarch64_paging_map, |idmap| {
                idmap
                    .modify_range(
                        &MemoryRegion::new(PHYS as usize, (PHYS + GIB) as usize),
                        &|_, entry| {
                            entry.modify_flags(El1Attributes::READ_ONLY, El1Attributes::empty())
                        },
                    )
                    .unwrap()
            })
        })
    });
    let protect = plain_protect::<Aarch64>(read_only);
    floor_update::<Aarch64>(&mut group, |old, _| protect(old));
    group.finish();
}

/// What each implementation builds, checked once before timing: the same
/// number of page-table pages, and leaves with the same bits where the
/// formats agree.
fn report_tables(_: &mut Criterion) {
    let host = Host::new();
    lazymmu_map::<X86_64, _>(&host, &x86_backend(&host), VA);
    let lazymmu_frames = host.frames.outstanding();
    let host = Host::new();
    x86_64_crate_map(&host);
    eprintln!(
        "map_1gib: page-table pages (root included; minimum 515): lazymmu {lazymmu_frames}, x86_64 crate {}",
        host.frames.outstanding()
    );
    // The leaf lazymmu writes for `user_data` on AArch64 is the one
    // aarch64-paging writes for the flags above.
    let idmap = aarch64_paging_map();
    let mut theirs = 0;
    idmap
        .walk_range(
            &MemoryRegion::new(PHYS as usize, PHYS as usize + 4096),
            &mut |_, d, _| {
                theirs = d.flags().bits() as u64 | d.output_address().0 as u64;
                Ok(())
            },
        )
        .unwrap();
    let ours = Aarch64::encode_leaf(PhysAddr(PHYS), PageSize::Size4K, Attributes::user_data());
    eprintln!("aarch64 leaf: lazymmu {ours:#x}, aarch64-paging {theirs:#x}");
    // The protect floors compute what lazymmu's protection change
    // (`Protection::read_only()` of the mapped `user_data` leaves) does.
    let read_only = Attributes::user_data().read_only();
    let (x86, aarch64) = (
        NewProtection::new::<X86_64>(1, Protection::read_only()),
        NewProtection::new::<Aarch64>(1, Protection::read_only()),
    );
    for i in [0, PAGES - 1] {
        let old = mapped_entry::<X86_64>(i);
        assert_eq!(
            plain_protect::<X86_64>(read_only)(old),
            x86.apply::<X86_64>(old)
        );
        let old = mapped_entry::<Aarch64>(i);
        assert_eq!(
            plain_protect::<Aarch64>(read_only)(old),
            aarch64.apply::<Aarch64>(old)
        );
    }
}

criterion_group!(
    benches,
    report_tables,
    bench_map,
    bench_protect,
    bench_unmap,
    bench_copy,
    bench_move,
    bench_aarch64_map,
    bench_aarch64_protect
);
criterion_main!(benches);
