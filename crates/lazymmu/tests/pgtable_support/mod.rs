//! Shared scaffolding for the page-table tests: host memory, a host
//! allocator, a native backend for any format (the x86 backend's plain
//! stores and recorded flushes, which suit every format on the host), and
//! helpers to read a tree back.
#![allow(dead_code)]

pub mod model;

use std::collections::BTreeMap;
use std::marker::PhantomData;

use lazymmu::backend::runs::{self, NewProtection, PteRun, RunChanges};
use lazymmu::backend::{Backend, ContextSwitch, EntryUpdate, FlushScope, PteAccess, TlbFlush};
use lazymmu::mode::ArchHooks;
use lazymmu::pgtable::memory::PageTableMemory;
use lazymmu::pgtable::ops::CopyKind;

use lazymmu::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use lazymmu::backend::x86::{RecordingPrimitives, X86Backend};
use lazymmu::pgtable::allocator::HostFrameAllocator;
use lazymmu::pgtable::format::{Attributes, Format};
use lazymmu::pgtable::memory::HostMemory;
use lazymmu::pgtable::walk::for_each_leaf;

/// Physical address of the first page-table frame.
pub const TABLE_BASE: u64 = 0x10_0000;

/// Host memory and its allocator, which fills every frame it hands out
/// with present-looking garbage: a range operation that reads a new table
/// before it clears or fills it finds mappings that are not there.
pub struct Host {
    pub memory: HostMemory,
    pub frames: HostFrameAllocator,
}

impl Host {
    pub fn new(frames: usize) -> Self {
        let memory = HostMemory::new(PhysAddr(TABLE_BASE), frames);
        let frames = HostFrameAllocator::poisoning(&memory);
        Host { memory, frames }
    }

    pub fn backend<F: Format>(&self, space: SpaceId) -> Native<'_, F> {
        Native {
            inner: X86Backend::new(&self.memory, RecordingPrimitives::new(0, space)),
            format: PhantomData,
        }
    }
}

/// Plain stores to host memory and recorded flushes, for tables of format
/// `F`: the x86 native backend's behaviour, which has nothing
/// format-specific, under another format's name.
pub struct Native<'m, F> {
    pub inner: X86Backend<&'m HostMemory, RecordingPrimitives>,
    format: PhantomData<F>,
}

impl<F> Native<'_, F> {
    pub fn primitives(&self) -> &RecordingPrimitives {
        self.inner.primitives()
    }
}

impl<F> ArchHooks for Native<'_, F> {
    fn enter(&self) {}
    fn leave(&self) {}
    fn flush(&self) {}
}

impl<F> PteAccess for Native<'_, F> {
    fn read_entry(&self, entry: PhysAddr) -> u64 {
        self.inner.read_entry(entry)
    }
    fn write_entry(&self, update: EntryUpdate) {
        self.inner.write_entry(update)
    }
    fn get_and_clear(&self, update: EntryUpdate) -> u64 {
        self.inner.get_and_clear(update)
    }
    fn write_entries(&self, first: EntryUpdate, count: usize, step: u64) {
        self.inner.write_entries(first, count, step)
    }
}

impl<F> TlbFlush for Native<'_, F> {
    fn flush_range(&self, s: SpaceId, a: VirtAddr, b: VirtAddr, p: PageSize, f: FlushScope) {
        self.inner.flush_range(s, a, b, p, f)
    }
    fn flush_all(&self, s: SpaceId, f: FlushScope) {
        self.inner.flush_all(s, f)
    }
    fn single_page_ceiling(&self) -> usize {
        self.inner.single_page_ceiling()
    }
}

impl<F> ContextSwitch for Native<'_, F> {}

/// Runs of entries are loops over the host memory's cells, as the x86
/// backend's are, in `F`'s format: the model tests check those loops for
/// every format.
impl<F: Format> Backend for Native<'_, F> {
    type Format = F;
    type Memory = HostMemory;
    fn memory(&self) -> &HostMemory {
        self.inner.memory()
    }

    fn clear_ptes(&self, run: PteRun, _full: bool) -> RunChanges {
        runs::cells::clear::<F>(self.cells(&run))
    }
    fn protect_ptes(&self, run: PteRun, protection: &NewProtection) -> RunChanges {
        runs::cells::protect::<F>(self.cells(&run), protection)
    }
    fn copy_ptes(&self, parent: PteRun, child: PteRun, kind: CopyKind) -> RunChanges {
        runs::cells::copy::<F>(self.cells(&parent), self.cells(&child), parent.level, kind)
    }
    fn move_ptes(&self, from: PteRun, to: PteRun) -> RunChanges {
        runs::cells::moves::<F>(self.cells(&from), self.cells(&to))
    }
}

impl<F> Native<'_, F> {
    fn cells(&self, run: &PteRun) -> &[std::cell::Cell<u64>] {
        self.inner
            .memory()
            .run_cells(run.entry, run.count)
            .expect("host memory lends every run")
    }
}

/// One 4 KiB page of a mapping, as a model stores it.
pub type Pages = BTreeMap<u64, (u64, Attributes)>;

/// Every mapped 4 KiB page of the tree at `root`, leaves expanded.
pub fn pages_of<F: Format>(memory: &HostMemory, root: PhysAddr, high: bool) -> Pages {
    let mut pages = Pages::new();
    for_each_leaf::<F, _>(memory, root, high, |leaf| {
        for i in 0..leaf.size.bytes() / 4096 {
            pages.insert(leaf.va.0 + i * 4096, (leaf.phys.0 + i * 4096, leaf.attrs));
        }
    });
    pages
}

/// Page-table frames reachable from `root` (root included).
pub fn tables_of<F: Format>(memory: &HostMemory, root: PhysAddr) -> Vec<PhysAddr> {
    use lazymmu::pgtable::format::Entry;
    use lazymmu::pgtable::memory::PageTableMemory;
    fn visit<F: Format>(memory: &HostMemory, table: PhysAddr, level: u8, out: &mut Vec<PhysAddr>) {
        out.push(table);
        if level == 1 {
            return;
        }
        for i in 0..512u64 {
            if let Entry::Table(next) = F::decode(memory.read(table.add(8 * i)), level) {
                visit::<F>(memory, next, level - 1, out);
            }
        }
    }
    let mut out = Vec::new();
    visit::<F>(memory, root, F::LEVELS, &mut out);
    out
}

/// Checks that the frames reachable from `roots` are exactly the frames
/// the allocator has outstanding, each allocated and reachable once.
pub fn assert_no_leak<F: Format>(host: &Host, roots: &[PhysAddr]) {
    let mut all: Vec<PhysAddr> = roots
        .iter()
        .flat_map(|&root| tables_of::<F>(&host.memory, root))
        .collect();
    for frame in &all {
        assert!(
            host.frames.is_allocated(*frame),
            "{frame:?} reachable but free"
        );
    }
    let reachable = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), reachable, "a table is linked twice");
    assert_eq!(
        host.frames.outstanding(),
        reachable,
        "frames allocated but unreachable (leaked)"
    );
}

/// The page of `size` holding `va`.
pub fn align_down(va: u64, size: PageSize) -> u64 {
    va & !(size.bytes() - 1)
}

/// `va` as a `VirtAddr`.
pub fn va(addr: u64) -> VirtAddr {
    VirtAddr(addr)
}

/// A run of pages mapped contiguously with the same attributes: `(va, len,
/// phys, attrs)`. A tree read as runs does not depend on how its leaves
/// are sized, which is what a state comparison across splits needs.
pub type Run = (u64, u64, u64, Attributes);

/// Merges adjacent runs that continue each other.
pub fn normalize(mut runs: Vec<Run>) -> Vec<Run> {
    runs.sort_by_key(|r| r.0);
    let mut out: Vec<Run> = Vec::new();
    for run in runs {
        if run.1 == 0 {
            continue;
        }
        match out.last_mut() {
            Some(last)
                if last.0 + last.1 == run.0 && last.2 + last.1 == run.2 && last.3 == run.3 =>
            {
                last.1 += run.1
            }
            _ => out.push(run),
        }
    }
    out
}

/// The tree at `root` as normalized runs.
pub fn runs_of<F: Format>(memory: &HostMemory, root: PhysAddr, high: bool) -> Vec<Run> {
    let mut runs = Vec::new();
    for_each_leaf::<F, _>(memory, root, high, |leaf| {
        runs.push((leaf.va.0, leaf.size.bytes(), leaf.phys.0, leaf.attrs));
    });
    normalize(runs)
}

/// The parts of `runs` inside `[lo, hi)`.
pub fn clip_runs(runs: &[Run], lo: u64, hi: u64) -> Vec<Run> {
    runs.iter()
        .filter_map(|&(va, len, phys, attrs)| {
            let start = va.max(lo);
            let end = (va + len).min(hi);
            (start < end).then(|| (start, end - start, phys + (start - va), attrs))
        })
        .collect()
}
