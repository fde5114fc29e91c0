//! Range operations on host memory, x86-64 4-level, 4 KiB pages forced,
//! 1 GiB at a time (262,144 PTEs), against the `x86_64` crate and against a
//! floor (the same entry values written into a preallocated array).
//!
//! Groups: `map_1gib` {`lazymmu`, `x86_64_crate`, `floor`}, `protect_1gib`
//! {`lazymmu`, `floor`}, `unmap_1gib` {`lazymmu`, `floor`}.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use lazymmu::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use lazymmu::backend::x86::{RecordingPrimitives, X86Backend};
use lazymmu::backend::FlushScope;
use lazymmu::mode::{counters::Counters, testing::TestEnv, MisusePolicy};
use lazymmu::pgtable::allocator::{FrameAllocator, HostFrameAllocator};
use lazymmu::pgtable::format::{Attributes, Format, Protection, X86_64};
use lazymmu::pgtable::gather::Gather;
use lazymmu::pgtable::memory::{HostMemory, PageTableMemory};
use lazymmu::pgtable::ops::{Mmu, PageTables, VaRange};
use x86_64::structures::paging::{
    Mapper, OffsetPageTable, Page, PageTable, PageTableFlags, PhysFrame, Size4KiB,
};

const GIB: u64 = 1 << 30;
const PAGES: u64 = GIB >> 12;
/// Where the 1 GiB goes: 1 GiB-aligned, inside one PML4 entry.
const VA: u64 = 8 * GIB;
const PHYS: u64 = 64 * GIB;
const TABLE_BASE: u64 = 0x10_0000;
/// Enough frames for 1 GiB of 4 KiB pages (515) with room to spare.
const FRAMES: usize = 600;
const SPACE: SpaceId = SpaceId(1);

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

/// Maps the 1 GiB with lazymmu and returns the root and page-table frames
/// allocated (root included).
fn lazymmu_map(host: &Host) -> (PhysAddr, usize) {
    let backend = X86Backend::new(&host.memory, RecordingPrimitives::new(0, SPACE));
    let lazy = Counters::new(TestEnv::default(), &backend, MisusePolicy::Count);
    // SAFETY: the host allocator hands out frames of the backend's host
    // memory, used by nothing else; `lazy` is over the backend.
    let mmu = unsafe { Mmu::new(&backend, &lazy, &host.frames, FlushScope::Local) };
    let tables = mmu.new_tables(SPACE, VaRange::Both).unwrap();
    tables
        .map(
            VirtAddr(VA),
            PhysAddr(PHYS),
            GIB,
            Attributes::user_data(),
            PageSize::Size4K,
        )
        .unwrap();
    // The caller keeps the tree: it outlives this backend.
    (tables.into_root(), host.frames.outstanding())
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

fn x86_64_crate_map(host: &Host) {
    let root = host.frames.allocate().unwrap();
    let offset = host.memory.physical_offset();
    // SAFETY: the root frame lives in `host.memory` at host address
    // root + offset, is zeroed (fresh memory), and nothing else accesses
    // the memory while the mapper is alive.
    let mut mapper = unsafe {
        let level_4 = &mut *((root.0.wrapping_add(offset)) as *mut PageTable);
        OffsetPageTable::new(level_4, x86_64::VirtAddr::new(offset))
    };
    let flags = PageTableFlags::PRESENT
        | PageTableFlags::WRITABLE
        | PageTableFlags::USER_ACCESSIBLE
        | PageTableFlags::ACCESSED
        | PageTableFlags::NO_EXECUTE;
    let mut frames = Frames(&host.frames);
    for i in 0..PAGES {
        let page = Page::<Size4KiB>::containing_address(x86_64::VirtAddr::new(VA + (i << 12)));
        let frame = PhysFrame::containing_address(x86_64::PhysAddr::new(PHYS + (i << 12)));
        // SAFETY: the frames mapped are not memory of this process; the
        // tables only live in host memory and are never loaded in CR3.
        unsafe { mapper.map_to(page, frame, flags, &mut frames) }
            .unwrap()
            .ignore();
    }
}

/// Times `routine` alone, `iters` times, each on a fresh `setup()` whose
/// creation and destruction are not timed.
fn timed<S, O>(
    iters: u64,
    mut setup: impl FnMut() -> S,
    mut routine: impl FnMut(&S) -> O,
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let state = setup();
        let start = Instant::now();
        black_box(routine(&state));
        total += start.elapsed();
        drop(state);
    }
    total
}

fn bench_map(c: &mut Criterion) {
    let template = X86_64::leaf_template(PageSize::Size4K, Attributes::user_data());
    let mut group = c.benchmark_group("map_1gib");
    group.sample_size(20);
    group.bench_function("lazymmu", |b| {
        b.iter_custom(|iters| timed(iters, Host::new, lazymmu_map))
    });
    group.bench_function("x86_64_crate", |b| {
        b.iter_custom(|iters| timed(iters, Host::new, x86_64_crate_map))
    });
    let mut entries = vec![0u64; PAGES as usize];
    group.bench_function("floor", |b| {
        b.iter(|| {
            for (i, entry) in entries.iter_mut().enumerate() {
                *entry = template | (PHYS + ((i as u64) << 12));
            }
            black_box(&mut entries);
        })
    });
    group.finish();
}

/// A mapped 1 GiB and what operating on it needs.
struct Mapped {
    host: Host,
    root: PhysAddr,
}

fn mapped() -> Mapped {
    let host = Host::new();
    let (root, _) = lazymmu_map(&host);
    Mapped { host, root }
}

/// Runs `op` on the mapped tables with a gather (flushed inside the
/// timing: it is part of the operation).
fn with_tables<R>(
    mapped: &Mapped,
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
    let host = &mapped.host;
    let backend = X86Backend::new(&host.memory, RecordingPrimitives::new(0, SPACE));
    let lazy = Counters::new(TestEnv::default(), &backend, MisusePolicy::Count);
    // SAFETY: the host allocator hands out frames of the backend's host
    // memory, used by nothing else; `lazy` is over the backend.
    let mmu = unsafe { Mmu::new(&backend, &lazy, &host.frames, FlushScope::Local) };
    // SAFETY: `mapped.root` is the root `lazymmu_map` built in this
    // memory with this allocator; `mapped` keeps it while this borrows it.
    let tables = unsafe { mmu.tables_at(mapped.root, SPACE, VaRange::Both) };
    let mut gather = Gather::new(&backend, &host.frames, SPACE, FlushScope::Local);
    let result = op(&tables, &mut gather);
    drop(gather);
    result
}

fn bench_protect(c: &mut Criterion) {
    let read_only = X86_64::leaf_template(PageSize::Size4K, Attributes::user_data().read_only());
    let mut group = c.benchmark_group("protect_1gib");
    group.sample_size(20);
    group.bench_function("lazymmu", |b| {
        b.iter_custom(|iters| {
            timed(iters, mapped, |m| {
                with_tables(m, |tables, gather| {
                    tables
                        .protect(VirtAddr(VA), GIB, Protection::read_only(), gather)
                        .unwrap()
                })
            })
        })
    });
    let mut entries = vec![0u64; PAGES as usize];
    group.bench_function("floor", |b| {
        b.iter(|| {
            for (i, entry) in entries.iter_mut().enumerate() {
                *entry = read_only | (PHYS + ((i as u64) << 12));
            }
            black_box(&mut entries);
        })
    });
    group.finish();
}

fn bench_unmap(c: &mut Criterion) {
    let mut group = c.benchmark_group("unmap_1gib");
    group.sample_size(20);
    group.bench_function("lazymmu", |b| {
        b.iter_custom(|iters| {
            timed(iters, mapped, |m| {
                with_tables(m, |tables, gather| {
                    tables.zap(VirtAddr(VA), GIB, gather).unwrap()
                })
            })
        })
    });
    let mut entries = vec![1u64; PAGES as usize];
    group.bench_function("floor", |b| {
        b.iter(|| {
            for entry in entries.iter_mut() {
                *entry = black_box(0);
            }
            black_box(&mut entries);
        })
    });
    group.finish();
}

fn report_tables(_: &mut Criterion) {
    let host = Host::new();
    let (_, frames) = lazymmu_map(&host);
    eprintln!("map_1gib: lazymmu allocated {frames} page-table pages (root included; minimum 515)");
}

criterion_group!(
    benches,
    report_tables,
    bench_map,
    bench_protect,
    bench_unmap
);
criterion_main!(benches);
