//! Range operations modelled on Linux's page-table walkers
//! (mm/memory.c `zap_pte_range`, `copy_pte_range`, `apply_to_pte_range`;
//! mm/mprotect.c `change_pte_range`; mm/mremap.c `move_ptes`;
//! mm/vmalloc.c `vmap_pte_range`).
//!
//! Every operation
//! - runs each PTE-level loop inside one lazy section ([`LazyMode::section`]),
//!   one section per PTE table as Linux does;
//! - reads and writes every entry through the backend's
//!   [`PteAccess`](crate::backend::PteAccess), never
//!   memory directly (new tables are zeroed in memory before they are
//!   linked, which no walker can observe);
//! - records every translation it invalidates, and every page-table frame it
//!   unlinks, in a [`Gather`];
//! - writes a new PTE table's link, and clears an emptied table's link,
//!   inside a section, so that every table change is applied before the
//!   gather may free a frame; other writes outside PTE loops (huge leaves,
//!   upper-level links made before a PTE loop) follow the caller's lazy
//!   state: inside a caller's section they take effect at its next flush;
//! - on allocation failure stops with the tables consistent (every table it
//!   allocated is linked in and reachable), nothing leaked, and an error
//!   saying how far it got.
//!
//! Ranges are `[va, va + len)` with `va` canonical and 4 KiB aligned, `len`
//! a multiple of 4 KiB, and the whole range in one canonical half. The
//! very last page of the upper half is refused (its end wraps to 0).
//!
//! ```
//! use lazymmu::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
//! use lazymmu::backend::{x86::{RecordingPrimitives, X86Backend}, FlushScope};
//! use lazymmu::mode::{counters::Counters, testing::TestEnv, MisusePolicy};
//! use lazymmu::pgtable::{
//!     allocator::HostFrameAllocator, format::{Attributes, X86_64}, gather::Gather,
//!     memory::HostMemory, ops::{allocate_root, PageTables}, walk::translate,
//! };
//! let memory = HostMemory::new(PhysAddr(0x100_0000), 64);
//! let frames = HostFrameAllocator::poisoning(&memory);
//! let backend = X86Backend::new(&memory, RecordingPrimitives::new(0, SpaceId(1)));
//! let lazy = Counters::new(TestEnv::default(), &backend, MisusePolicy::Panic);
//! // SAFETY: the allocator hands out the frames of `memory`, which holds
//! // nothing but page tables.
//! let root = unsafe { allocate_root(&memory, &frames) }.unwrap();
//! // SAFETY: as above; `root` was just allocated from it.
//! let tables = unsafe {
//!     PageTables::<X86_64, _, _, _, _>::new(root, SpaceId(1), &memory, &backend, &lazy, &frames)
//! };
//! tables.map(VirtAddr(0x40_0000), PhysAddr(0x8000_0000), 0x40_0000,
//!            Attributes::user_data(), PageSize::Size2M).unwrap();
//! let t = translate::<X86_64, _>(&memory, root, VirtAddr(0x40_1234)).unwrap();
//! assert_eq!((t.phys, t.size), (PhysAddr(0x8000_1234), PageSize::Size2M));
//! let mut gather = Gather::new(&backend, &frames, SpaceId(1), FlushScope::Local);
//! tables.zap(VirtAddr(0x40_1000), 0x1000, &mut gather).unwrap(); // splits the block
//! drop(gather);
//! assert!(translate::<X86_64, _>(&memory, root, VirtAddr(0x40_1000)).is_err());
//! assert!(translate::<X86_64, _>(&memory, root, VirtAddr(0x40_2000)).is_ok());
//! ```

mod apply;
mod copy;
mod descend;
mod map;
mod moves;
mod protect;
mod zap;

use descend::{Slot, Slots, Visit};

pub use apply::{ApplyError, ApplyMode, ApplySummary, PteSlot};
pub use copy::{CopyError, CopyKind, CopySummary};
pub use map::{MapError, MapSummary};
pub use moves::{MoveError, MoveSummary};
pub use protect::{ProtectError, ProtectSummary};
pub use zap::{ZapError, ZapSummary};

use core::cell::Cell;
use core::marker::PhantomData;

use crate::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use crate::backend::{Backend, EntryUpdate};
use crate::mode::LazyMode;
use crate::pgtable::allocator::FrameAllocator;
use crate::pgtable::format::{entries, entry_shift, index, Entry, Format};
use crate::pgtable::gather::{FreeOrder, Gather};
use crate::pgtable::memory::PageTableMemory;
use crate::pgtable::walk::canonical;

/// A range a caller passed that no operation accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeError {
    /// The address or length is not a multiple of 4 KiB (or the physical
    /// address of a map is not).
    Misaligned,
    /// The start is not canonical for the format, the range wraps, or it
    /// leaves the canonical half it starts in.
    OutOfRange,
    /// The gather belongs to another address space, or a copy's child is
    /// the parent itself.
    WrongSpace,
}

/// The page tables of one address space, with everything range operations
/// need: the root and [`SpaceId`] that identify the space, the memory
/// holding the tables (for zeroing new ones), the backend every entry goes
/// through, the lazy mode that brackets PTE loops, and the frame
/// allocator.
///
/// The backend names the format it writes ([`Backend::Format`]), and the
/// tables must be in that format: an x86-64 backend over AArch64 tables
/// does not compile.
///
/// ```compile_fail
/// use lazymmu::addr::{PhysAddr, SpaceId};
/// use lazymmu::backend::Backend;
/// use lazymmu::mode::LazyMode;
/// use lazymmu::pgtable::allocator::FrameAllocator;
/// use lazymmu::pgtable::format::{Aarch64, X86_64};
/// use lazymmu::pgtable::memory::PageTableMemory;
/// use lazymmu::pgtable::ops::PageTables;
///
/// fn aarch64_tables<'a, M, B, L, A>(m: &'a M, b: &'a B, l: &'a L, a: &'a A)
///     -> PageTables<'a, Aarch64, M, B, L, A>
/// where
///     M: PageTableMemory,
///     B: Backend<Format = X86_64>,
///     L: LazyMode,
///     A: FrameAllocator,
/// {
///     // SAFETY: not reached; the pairing is refused at compile time.
///     unsafe { PageTables::new(PhysAddr(0x1000), SpaceId(1), m, b, l, a) }
/// }
/// ```
///
/// With `Aarch64` replaced by `X86_64` the same function compiles.
pub struct PageTables<'a, F, M: ?Sized, B: ?Sized, L, A: ?Sized> {
    root: PhysAddr,
    space: SpaceId,
    memory: &'a M,
    backend: &'a B,
    lazy: &'a L,
    allocator: &'a A,
    /// Tables this value has allocated (for operation summaries).
    tables_allocated: Cell<u64>,
    _format: PhantomData<F>,
}

impl<F, M: ?Sized, B: ?Sized, L, A: ?Sized> core::fmt::Debug for PageTables<'_, F, M, B, L, A>
where
    F: Format,
{
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PageTables")
            .field("format", &F::NAME)
            .field("root", &self.root)
            .field("space", &self.space)
            .finish()
    }
}

/// Allocates and zeroes a root table for a new tree; `None` when the
/// allocator is exhausted.
///
/// # Safety
/// Every frame `allocator` hands out is a page-table frame of `memory`
/// that nothing else uses (the zeroing writes it).
pub unsafe fn allocate_root<M, A>(memory: &M, allocator: &A) -> Option<PhysAddr>
where
    M: PageTableMemory + ?Sized,
    A: FrameAllocator + ?Sized,
{
    let root = allocator.allocate()?;
    memory.zero_frame(root);
    Some(root)
}

/// A range checked and reduced to the bits the root translates.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Span {
    pub start: u64,
    pub end: u64,
    pub high: bool,
}

pub(crate) fn check_range<F: Format>(va: VirtAddr, len: u64) -> Result<Span, RangeError> {
    if va.0 % 4096 != 0 || len % 4096 != 0 {
        return Err(RangeError::Misaligned);
    }
    if !F::is_canonical(va.0) {
        return Err(RangeError::OutOfRange);
    }
    let high = va.0 >> 63 != 0;
    let start = va.0 & F::va_mask();
    let end = start.checked_add(len).ok_or(RangeError::OutOfRange)?;
    // The range must stay inside the half it starts in.
    let limit = if F::SHARED_ROOT {
        if high {
            1u64 << F::VA_BITS
        } else {
            1u64 << (F::VA_BITS - 1)
        }
    } else {
        1u64 << F::VA_BITS
    };
    // The last page of the upper half is refused: its end would wrap to 0
    // in canonical form, which no flush range can express.
    let limit = if high { limit - 4096 } else { limit };
    if end > limit {
        return Err(RangeError::OutOfRange);
    }
    Ok(Span { start, end, high })
}

/// Why an internal walk stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// A frame could not be allocated while working at this (masked) VA.
    OutOfFrames(u64),
    /// An entry that had to be empty was not, at this (masked) VA.
    Occupied(u64),
    /// A huge mapping where a table was needed, at this (masked) VA.
    Huge(u64),
}

impl<'a, F, M, B, L, A> PageTables<'a, F, M, B, L, A>
where
    F: Format,
    M: PageTableMemory + ?Sized,
    B: Backend<Format = F> + ?Sized,
    L: LazyMode,
    A: FrameAllocator + ?Sized,
{
    /// The tables rooted at `root` for address space `space`.
    ///
    /// # Safety
    /// `root` is a page-table frame of `memory` in format `F` (zeroed, or a
    /// consistent tree whose tables are all frames of `memory`), every frame
    /// `allocator` hands out is a page-table frame of `memory`, and while
    /// these tables are used nothing but the library changes those frames
    /// (the walker and the hardware's accessed and dirty bits excepted).
    /// `backend` writes the same memory. The range operations then write
    /// only entries of those frames, which is what the
    /// [`PageTableMemory`] implementation relies on.
    pub unsafe fn new(
        root: PhysAddr,
        space: SpaceId,
        memory: &'a M,
        backend: &'a B,
        lazy: &'a L,
        allocator: &'a A,
    ) -> Self {
        PageTables {
            root,
            space,
            memory,
            backend,
            lazy,
            allocator,
            tables_allocated: Cell::new(0),
            _format: PhantomData,
        }
    }

    /// The root table.
    pub fn root(&self) -> PhysAddr {
        self.root
    }

    /// The address space.
    pub fn space(&self) -> SpaceId {
        self.space
    }

    /// The backend.
    pub fn backend(&self) -> &'a B {
        self.backend
    }

    /// The lazy mode.
    pub fn lazy(&self) -> &'a L {
        self.lazy
    }

    /// The same memory, backend, lazy mode and allocator over another root
    /// and space (a child for [`PageTables::copy_to`]).
    ///
    /// # Safety
    /// As [`PageTables::new`] for `root`.
    pub unsafe fn with_root(&self, root: PhysAddr, space: SpaceId) -> Self {
        // SAFETY: the memory and allocator are this tree's, which its
        // constructor vouched for; the caller vouches for `root`.
        unsafe {
            PageTables::new(
                root,
                space,
                self.memory,
                self.backend,
                self.lazy,
                self.allocator,
            )
        }
    }

    /// Tears the tree down: zaps everything it translates (every leaf and
    /// table) with `gather` and queues the root itself, so every frame of
    /// the tree is returned after the flush. `upper` says, for formats with
    /// one root per half (AArch64 TTBR0/TTBR1), whether this is the upper
    /// half's root, so that invalidations name the right addresses; x86
    /// ignores it (its root translates both halves).
    ///
    /// # Errors
    /// [`ZapError::Range`] if `gather` belongs to another space; nothing
    /// is done then. (Nothing is split when everything goes, so no frame is
    /// needed.)
    pub fn destroy<G, GA, O>(
        self,
        upper: bool,
        gather: &mut Gather<'_, G, GA, O>,
    ) -> Result<ZapSummary, ZapError>
    where
        G: crate::backend::TlbFlush + ?Sized,
        GA: FrameAllocator + ?Sized,
        O: FreeOrder,
    {
        self.check_gather(gather).map_err(ZapError::Range)?;
        let whole = Span {
            start: 0,
            end: 1u64 << F::VA_BITS,
            high: upper && !F::SHARED_ROOT,
        };
        let summary = self.zap_span(whole, gather)?;
        gather.remove_table(self.root, Self::canonical(0, whole.high), F::LEVELS);
        Ok(summary)
    }

    // ---- helpers shared by the operations ----

    #[inline]
    pub(crate) fn entry(table: PhysAddr, va: u64, level: u8) -> PhysAddr {
        table.add(8 * index::<F>(va, level) as u64)
    }

    #[inline]
    pub(crate) fn update(
        &self,
        entry: PhysAddr,
        va: u64,
        high: bool,
        level: u8,
        value: u64,
        leaf: bool,
    ) -> EntryUpdate {
        let va = canonical::<F>(va & !((1u64 << entry_shift::<F>(level)) - 1), high);
        let valid = F::is_valid(value);
        EntryUpdate {
            entry,
            va: VirtAddr(va),
            space: self.space,
            level,
            value,
            kernel: F::is_kernel(va),
            valid,
            leaf: valid && leaf,
        }
    }

    #[inline]
    pub(crate) fn read(&self, entry: PhysAddr) -> u64 {
        self.backend.read_entry(entry)
    }

    /// Writes a leaf (or an empty entry) through the backend.
    #[inline]
    pub(crate) fn write_leaf(&self, entry: PhysAddr, va: u64, high: bool, level: u8, value: u64) {
        self.backend
            .write_entry(self.update(entry, va, high, level, value, true));
    }

    /// Links `table` below the entry at `entry` through the backend.
    #[inline]
    pub(crate) fn write_table(
        &self,
        entry: PhysAddr,
        va: u64,
        high: bool,
        level: u8,
        table: PhysAddr,
    ) {
        let value = F::encode_table(table, level);
        self.backend
            .write_entry(self.update(entry, va, high, level, value, false));
    }

    /// Unlinks a table entry through the backend.
    #[inline]
    pub(crate) fn clear_table(&self, entry: PhysAddr, va: u64, high: bool, level: u8) {
        self.backend
            .write_entry(self.update(entry, va, high, level, 0, false));
    }

    /// `ptep_get_and_clear` through the backend.
    #[inline]
    pub(crate) fn clear(&self, entry: PhysAddr, va: u64, high: bool, level: u8) -> u64 {
        self.backend
            .get_and_clear(self.update(entry, va, high, level, 0, true))
    }

    /// A zeroed frame for a new table, not linked anywhere yet.
    pub(crate) fn new_table(&self) -> Option<PhysAddr> {
        let frame = self.new_frame_to_fill()?;
        self.memory.zero_frame(frame);
        Some(frame)
    }

    /// A frame for a new table that the caller fills completely before
    /// linking it, so it needs no zeroing.
    pub(crate) fn new_frame_to_fill(&self) -> Option<PhysAddr> {
        let frame = self.allocator.allocate()?;
        self.tables_allocated.set(self.tables_allocated.get() + 1);
        Some(frame)
    }

    /// The table below the entry at `entry` (level `level`), allocating
    /// and linking it when absent. Returns the table and whether it is
    /// new (and so known empty).
    pub(crate) fn table_below(
        &self,
        entry: PhysAddr,
        va: u64,
        high: bool,
        level: u8,
    ) -> Result<(PhysAddr, bool), Stop> {
        match F::decode(self.read(entry), level) {
            Entry::Table(next) => Ok((next, false)),
            Entry::Leaf { .. } => Err(Stop::Huge(va)),
            Entry::Absent => {
                let next = self.new_table().ok_or(Stop::OutOfFrames(va))?;
                self.write_table(entry, va, high, level, next);
                Ok((next, true))
            }
        }
    }

    /// Walks from `root` to the table at `level` covering `va`, creating
    /// missing tables.
    pub(crate) fn ensure_table(
        &self,
        root: PhysAddr,
        va: u64,
        high: bool,
        level: u8,
    ) -> Result<PhysAddr, Stop> {
        let mut table = root;
        let mut at = F::LEVELS;
        while at > level {
            let entry = Self::entry(table, va, at);
            table = self.table_below(entry, va, high, at)?.0;
            at -= 1;
        }
        Ok(table)
    }

    /// Replaces the huge leaf at `entry` (level `level`, span at `va`) by
    /// a table of the next smaller leaves with the same attributes. The
    /// frame is allocated first, so failure changes nothing. Then break
    /// before make, as the architecture requires for a block-size change
    /// (Arm ARM DDI 0487, "Using break-before-make when updating translation
    /// table entries"; Linux's `pmdp_invalidate` in
    /// `__split_huge_pmd_locked`): clear the block, invalidate it at once,
    /// fill the table from the cleared value (which carries any dirty bit
    /// the hardware set meanwhile), link the table.
    pub(crate) fn split<G, GA, O>(
        &self,
        entry: PhysAddr,
        va: u64,
        high: bool,
        level: u8,
        gather: &mut Gather<'_, G, GA, O>,
    ) -> Result<PhysAddr, Stop>
    where
        G: crate::backend::TlbFlush + ?Sized,
        GA: FrameAllocator + ?Sized,
        O: FreeOrder,
    {
        // Every entry of the new table is written below: no zeroing.
        let table = self.new_frame_to_fill().ok_or(Stop::OutOfFrames(va))?;
        let old = self.clear(entry, va, high, level);
        let Entry::Leaf { phys, size, attrs } = F::decode(old, level) else {
            unreachable!("split of a non-leaf entry");
        };
        gather.flush_page_now(Self::canonical(va, high), size);
        let small = F::leaf_size(level - 1).expect("split below 4 KiB");
        // The link goes inside the PTE table's section, so that its close
        // applies it with the entries (a flush when nested).
        let _section = (level - 1 == 1).then(|| self.lazy.section());
        let value = F::leaf_template(small, attrs) | phys.0;
        self.backend.write_entries(
            self.update(table, va, high, level - 1, value, true),
            entries::<F>(level - 1),
            small.bytes(),
        );
        self.write_table(entry, va, high, level, table);
        Ok(table)
    }

    #[inline]
    pub(crate) fn canonical(va: u64, high: bool) -> VirtAddr {
        VirtAddr(canonical::<F>(va, high))
    }

    pub(crate) fn check_gather<G, GA, O>(
        &self,
        gather: &Gather<'_, G, GA, O>,
    ) -> Result<(), RangeError>
    where
        G: crate::backend::TlbFlush + ?Sized,
        GA: FrameAllocator + ?Sized,
        O: FreeOrder,
    {
        if gather.space() == self.space {
            Ok(())
        } else {
            Err(RangeError::WrongSpace)
        }
    }

    // ---- the descent shared by the operations (see `descend`) ----

    /// Walks `[start, end)` down from `table` at `level`, telling `visit`
    /// what it meets, in address order:
    /// - at level 1, [`Visit::Ptes`] for the PTE table's part of the range
    ///   (the operation's PTE loop);
    /// - above, [`Visit::Entry`] for each entry, read and decoded when the
    ///   walk reaches it; `visit` returns the table to descend into over
    ///   the entry's part of the range (`Some`), or `None` when it has done
    ///   all there is to do for the entry; after a descent,
    ///   [`Visit::Ascend`] for the same entry.
    ///
    /// The first error `visit` returns stops the walk and is returned.
    pub(crate) fn descend<E, V>(
        &self,
        table: PhysAddr,
        level: u8,
        start: u64,
        end: u64,
        visit: &mut V,
    ) -> Result<(), E>
    where
        V: FnMut(Visit) -> Result<Option<PhysAddr>, E>,
    {
        if level == 1 {
            visit(Visit::Ptes(table, start, end))?;
            return Ok(());
        }
        for (slot, current) in self.entries(table, level, start, end) {
            if let Some(below) = visit(Visit::Entry(level, slot, current))? {
                self.descend(below, level - 1, slot.va, slot.next, visit)?;
                visit(Visit::Ascend(level, slot, below))?;
            }
        }
        Ok(())
    }

    /// [`descend`](Self::descend) over `[start, end)` from the root.
    pub(crate) fn walk<E, V>(&self, start: u64, end: u64, visit: &mut V) -> Result<(), E>
    where
        V: FnMut(Visit) -> Result<Option<PhysAddr>, E>,
    {
        self.descend(self.root, F::LEVELS, start, end, visit)
    }

    /// Splits the huge leaf at `entry` that the range cuts (see
    /// [`split`](Self::split)), counts it in `splits`, and returns the new
    /// table for the walk to descend into.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn split_into<G, GA, O>(
        &self,
        entry: PhysAddr,
        va: u64,
        high: bool,
        level: u8,
        gather: &mut Gather<'_, G, GA, O>,
        splits: &mut u64,
    ) -> Result<Option<PhysAddr>, Stop>
    where
        G: crate::backend::TlbFlush + ?Sized,
        GA: FrameAllocator + ?Sized,
        O: FreeOrder,
    {
        let below = self.split(entry, va, high, level, gather)?;
        *splits += 1;
        Ok(Some(below))
    }

    /// The entries of `table` (at `level`) that `[start, end)` touches, in
    /// address order, each read through the backend and decoded when the
    /// walk reaches it (after the previous entry's work is done).
    pub(crate) fn entries(
        &self,
        table: PhysAddr,
        level: u8,
        start: u64,
        end: u64,
    ) -> impl Iterator<Item = (Slot, Entry)> + '_ {
        Slots::new::<F>(table, level, start, end)
            .map(move |slot| (slot, F::decode(self.read(slot.entry), level)))
    }
}

/// The end of the entry at `level` that holds `va`, clipped to `end`.
#[inline]
pub(crate) fn entry_end<F: Format>(va: u64, level: u8, end: u64) -> u64 {
    let span = 1u64 << entry_shift::<F>(level);
    ((va | (span - 1)) + 1).min(end)
}

/// Whether `[va, next)` is the whole span of the entry at `level`.
#[inline]
pub(crate) fn covers_entry<F: Format>(va: u64, next: u64, level: u8) -> bool {
    let span = 1u64 << entry_shift::<F>(level);
    va % span == 0 && next - va == span
}

/// Leaves per page size, indexed 4K, 2M, 1G.
pub(crate) fn size_slot(size: PageSize) -> usize {
    match size {
        PageSize::Size4K => 0,
        PageSize::Size2M => 1,
        PageSize::Size1G => 2,
    }
}
