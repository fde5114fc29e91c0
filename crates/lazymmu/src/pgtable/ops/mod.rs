//! Range operations modelled on Linux's page-table walkers
//! (mm/memory.c `zap_pte_range`, `copy_pte_range`, `apply_to_pte_range`;
//! mm/mprotect.c `change_pte_range`; mm/mremap.c `move_ptes`;
//! mm/vmalloc.c `vmap_pte_range`).
//!
//! Every operation
//! - runs each PTE-level loop inside one lazy section ([`LazyMode::section`]),
//!   one section per PTE table as Linux does;
//! - reads and writes every entry through the backend's
//!   [`PteAccess`](crate::backend::PteAccess), and hands the run of a PTE
//!   table to the backend's run methods ([`crate::backend::runs`]), never
//!   touching memory directly (new tables are zeroed in memory before they
//!   are linked, which no walker can observe);
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
//! A tree is made from an [`Mmu`] (the backend, whose memory holds the
//! tables, the lazy mode and the frame allocator of one machine): a kernel
//! makes one with [`Mmu::new`] over its own backend, a hosted program takes
//! [`Host::mmu`](crate::host::Host::mmu).
//!
//! ```
//! use lazymmu::prelude::*;
//! let host = Host::<X86_64>::new(PhysAddr(0x100_0000), 64);
//! let tables = host.new_tables(SpaceId(1), VaRange::Both).unwrap();
//! tables.map(VirtAddr(0x40_0000), PhysAddr(0x8000_0000), 0x40_0000,
//!            Attributes::user_data(), PageSize::Size2M).unwrap();
//! let t = tables.translate(VirtAddr(0x40_1234)).unwrap();
//! assert_eq!((t.phys, t.size), (PhysAddr(0x8000_1234), PageSize::Size2M));
//! let mut gather = tables.gather();
//! tables.zap(VirtAddr(0x40_1000), 0x1000, &mut gather).unwrap(); // splits the block
//! drop(gather); // flushes, then frees what the zap unlinked
//! assert!(tables.translate(VirtAddr(0x40_1000)).is_err());
//! assert!(tables.translate(VirtAddr(0x40_2000)).is_ok());
//! ```

mod apply;
mod copy;
mod descend;
mod map;
mod moves;
mod protect;
#[cfg(feature = "alloc")]
mod verify;
mod zap;

use descend::{Slot, Slots, Visit};

pub use apply::{ApplyError, ApplyMode, ApplySummary, PteSlot};
pub use copy::{CopyError, CopyKind, CopySummary};
pub use map::{MapError, MapSummary};
pub use moves::{MoveError, MoveSummary};
pub use protect::{ProtectError, ProtectSummary};
#[cfg(feature = "alloc")]
pub use verify::{TreeSummary, VerifyError};
pub use zap::{ZapError, ZapSummary};

use core::fmt;
use core::marker::PhantomData;

use crate::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use crate::backend::{Backend, EntryUpdate, FlushScope};
use crate::mode::LazyMode;
use crate::pgtable::allocator::FrameAllocator;
use crate::pgtable::format::{entries, entry_shift, index, Entry, Format};
use crate::pgtable::gather::{FreeOrder, Gather};
use crate::pgtable::memory::PageTableMemory;
use crate::pgtable::walk::{
    canonical, for_each_leaf_in, translate, Leaf, TranslateError, Translation,
};

/// Which virtual addresses a tree translates.
///
/// x86-64 translates both canonical halves through one root (the upper
/// half is the top half of the same tree): its trees may serve
/// [`VaRange::Both`] or be restricted to one half. AArch64 has one root per
/// half: a tree loaded in TTBR0_EL1 serves [`VaRange::Lower`] and one in
/// TTBR1_EL1 [`VaRange::Upper`]. The TTBR1 tree is the kernel's and takes
/// [`SpaceId::KERNEL`]: the arm64 backend then flushes it with the
/// all-ASID forms (`tlbi vaale1is`, `vmalle1is`, then `isb`), as Linux's
/// `flush_tlb_kernel_range` and `flush_tlb_all`, and its leaves should be global
/// ([`Attributes::kernel_data`](crate::pgtable::format::Attributes::kernel_data)).
/// An address of a half the tree does not serve is refused with
/// [`RangeError::WrongHalf`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VaRange {
    /// The lower canonical half: user space (AArch64 TTBR0_EL1).
    Lower,
    /// The upper canonical half: the kernel (AArch64 TTBR1_EL1).
    Upper,
    /// Both halves, through one root: only for formats whose root
    /// translates both ([`Format::SHARED_ROOT`], x86-64).
    Both,
}

impl VaRange {
    /// The range of a tree of format `F` for the upper half (`upper`, the
    /// kernel's) or the lower: [`VaRange::Both`] where one root translates
    /// both halves (x86-64), the half itself where each has its own root
    /// (AArch64).
    pub const fn for_format<F: Format>(upper: bool) -> VaRange {
        match (F::SHARED_ROOT, upper) {
            (true, _) => VaRange::Both,
            (false, true) => VaRange::Upper,
            (false, false) => VaRange::Lower,
        }
    }

    /// Whether a tree serving this range takes addresses of the upper
    /// (`true`) or lower half.
    pub const fn serves(self, upper: bool) -> bool {
        match self {
            VaRange::Lower => !upper,
            VaRange::Upper => upper,
            VaRange::Both => true,
        }
    }

    /// The name used in messages.
    pub const fn name(self) -> &'static str {
        match self {
            VaRange::Lower => "lower half",
            VaRange::Upper => "upper half",
            VaRange::Both => "both halves",
        }
    }
}

impl fmt::Display for VaRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A range a caller passed that no operation accepts. Nothing was done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeError {
    /// The virtual address or the length is not a multiple of 4 KiB.
    Misaligned {
        /// The start asked for.
        va: VirtAddr,
        /// The length asked for.
        len: u64,
    },
    /// A map's physical address is not a multiple of 4 KiB, or its range
    /// does not fit the physical addresses the format can hold.
    BadPhysical {
        /// The physical start asked for.
        phys: PhysAddr,
        /// The length asked for.
        len: u64,
    },
    /// The start is not canonical for the format, or the range wraps or
    /// leaves the canonical half it starts in.
    OutOfRange {
        /// The start asked for.
        va: VirtAddr,
        /// The length asked for.
        len: u64,
    },
    /// The address is in a half the tree does not translate (see
    /// [`VaRange`]).
    WrongHalf {
        /// The address asked for.
        va: VirtAddr,
        /// What the tree translates.
        range: VaRange,
    },
    /// The gather flushes another address space than the tree's.
    WrongSpace {
        /// The tree's address space.
        tables: SpaceId,
        /// The gather's.
        gather: SpaceId,
    },
    /// A copy's child has the parent's root or address space.
    ChildIsParent {
        /// The child's address space.
        space: SpaceId,
    },
}

impl fmt::Display for RangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RangeError::Misaligned { va, len } => {
                write!(f, "range {:#x} + {len:#x} is not 4 KiB aligned", va.0)
            }
            RangeError::BadPhysical { phys, len } => write!(
                f,
                "physical range {:#x} + {len:#x} is not 4 KiB aligned or not addressable",
                phys.0
            ),
            RangeError::OutOfRange { va, len } => write!(
                f,
                "range {:#x} + {len:#x} is not canonical or leaves its half",
                va.0
            ),
            RangeError::WrongHalf { va, range } => {
                write!(f, "{:#x} is outside the {range} the tree translates", va.0)
            }
            RangeError::WrongSpace { tables, gather } => write!(
                f,
                "the gather flushes address space {} but the tree is address space {}",
                gather.0, tables.0
            ),
            RangeError::ChildIsParent { space } => write!(
                f,
                "the child (address space {}) has the parent's root or address space",
                space.0
            ),
        }
    }
}

impl core::error::Error for RangeError {}

/// A frame allocator that could not give a root table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutOfFrames;

impl fmt::Display for OutOfFrames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no page-table frame for a root table")
    }
}

impl core::error::Error for OutOfFrames {}

/// The MMU of one machine as page tables drive it: the backend every entry
/// goes through (and, through it, the page-table memory:
/// [`Backend::memory`]), the lazy mode that brackets PTE loops, the frame
/// allocator tables come from, and which CPUs a tree's own flushes reach.
/// Every tree made from it shares them by construction.
///
/// `Copy`: it is four references' worth.
pub struct Mmu<'a, B: ?Sized, L, A: ?Sized> {
    backend: &'a B,
    lazy: &'a L,
    allocator: &'a A,
    scope: FlushScope,
}

impl<B: ?Sized, L, A: ?Sized> Clone for Mmu<'_, B, L, A> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B: ?Sized, L, A: ?Sized> Copy for Mmu<'_, B, L, A> {}

impl<B: ?Sized, L, A: ?Sized> fmt::Debug for Mmu<'_, B, L, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mmu").field("scope", &self.scope).finish()
    }
}

impl<'a, B, L, A> Mmu<'a, B, L, A>
where
    B: Backend + ?Sized,
    L: LazyMode,
    A: FrameAllocator + ?Sized,
{
    /// The MMU over `backend`, `lazy` and `allocator`; the gathers of its
    /// trees ([`PageTables::gather`], and the teardown when an owning tree
    /// is dropped) flush `scope`.
    ///
    /// # Safety
    /// Every frame `allocator` hands out is a page-table frame of the
    /// backend's memory ([`Backend::memory`]) that nothing else uses while
    /// it is allocated, and nothing but the library changes the tables in
    /// those frames (the hardware's accessed and dirty bits excepted). The
    /// range operations then write only entries of those frames, which is
    /// what the [`PageTableMemory`] implementation relies on. `lazy` is
    /// the lazy mode whose arch hooks are `backend`'s.
    pub const unsafe fn new(
        backend: &'a B,
        lazy: &'a L,
        allocator: &'a A,
        scope: FlushScope,
    ) -> Self {
        Mmu {
            backend,
            lazy,
            allocator,
            scope,
        }
    }

    /// The backend.
    pub fn backend(&self) -> &'a B {
        self.backend
    }

    /// The lazy mode.
    pub fn lazy(&self) -> &'a L {
        self.lazy
    }

    /// The frame allocator.
    pub fn allocator(&self) -> &'a A {
        self.allocator
    }

    /// Which CPUs the trees' own gathers flush.
    pub fn scope(&self) -> FlushScope {
        self.scope
    }

    /// A new, empty tree for address space `space` translating `range`,
    /// which owns its root: dropping it (or [`PageTables::destroy`]) frees
    /// every table, after the flush that covers them.
    ///
    /// # Errors
    /// [`OutOfFrames`] when the allocator has no frame for the root.
    ///
    /// # Panics
    /// If `range` is [`VaRange::Both`] and the format has one root per
    /// half (AArch64): such a tree cannot exist.
    pub fn new_tables(
        &self,
        space: SpaceId,
        range: VaRange,
    ) -> Result<PageTables<'a, B, L, A>, OutOfFrames> {
        check_va_range::<B::Format>(range);
        let root = self.allocator.allocate().ok_or(OutOfFrames)?;
        self.backend.memory().zero_frame(root);
        Ok(PageTables {
            mmu: *self,
            root,
            space,
            range,
            owned: true,
            _format: PhantomData,
        })
    }

    /// The tree at `root`, borrowed: dropping the value frees nothing
    /// (the root's owner does that, with [`PageTables::destroy`] or by
    /// adopting it).
    ///
    /// # Safety
    /// `root` is a page-table frame of the backend's memory in the
    /// backend's format, either zeroed or a consistent tree whose tables
    /// are all frames of this allocator (as [`Mmu::new`] requires), and it
    /// stays so (nothing frees or destroys it) while the value lives. If
    /// the borrowed tree is destroyed ([`PageTables::destroy`] frees the
    /// root too), nothing uses or frees that root afterwards: the borrow
    /// stood for its owner.
    ///
    /// # Panics
    /// As [`Mmu::new_tables`] for `range`.
    pub unsafe fn tables_at(
        &self,
        root: PhysAddr,
        space: SpaceId,
        range: VaRange,
    ) -> PageTables<'a, B, L, A> {
        check_va_range::<B::Format>(range);
        PageTables {
            mmu: *self,
            root,
            space,
            range,
            owned: false,
            _format: PhantomData,
        }
    }

    /// The tree at `root`, owned (the inverse of
    /// [`PageTables::into_root`]): dropping it frees every table.
    ///
    /// # Safety
    /// As [`Mmu::tables_at`], and nothing else owns `root`: no other value
    /// will free or destroy it.
    ///
    /// # Panics
    /// As [`Mmu::new_tables`] for `range`.
    pub unsafe fn adopt(
        &self,
        root: PhysAddr,
        space: SpaceId,
        range: VaRange,
    ) -> PageTables<'a, B, L, A> {
        // SAFETY: the caller's promise covers `tables_at`'s.
        let mut tables = unsafe { self.tables_at(root, space, range) };
        tables.owned = true;
        tables
    }
}

#[track_caller]
fn check_va_range<F: Format>(range: VaRange) {
    assert!(
        F::SHARED_ROOT || range != VaRange::Both,
        "a {} root translates one half: a tree of both halves cannot exist",
        F::NAME
    );
}

/// The page tables of one address space: a root, the [`SpaceId`] that
/// identifies the space, the half (or halves) it translates ([`VaRange`]),
/// and the [`Mmu`] every operation goes through.
///
/// A tree made by [`Mmu::new_tables`] (or [`Mmu::adopt`]) owns its root:
/// dropping it tears the tree down (every leaf and table, invalidations
/// flushed to the [`Mmu`]'s scope, frames freed after the flush), or
/// [`PageTables::destroy`] does that with a gather of the caller's. A
/// second owner of the same root cannot be made without `unsafe`
/// ([`Mmu::adopt`]); [`Mmu::tables_at`] borrows a root someone else owns.
///
/// The backend names the format it writes ([`Backend::Format`]), and that
/// is the tree's format: x86-64 operations cannot reach AArch64 tables.
///
/// ```
/// use lazymmu::prelude::*;
/// let host = Host::<Aarch64>::new(PhysAddr(0x10_0000), 16);
/// let user = host.new_tables(SpaceId(1), VaRange::Lower).unwrap();
/// // An AArch64 TTBR0 tree refuses kernel addresses.
/// let err = user
///     .map(VirtAddr(0xffff_0000_4000_0000), PhysAddr(0x8000_0000), 0x1000,
///          Attributes::default(), PageSize::Size4K)
///     .unwrap_err();
/// assert!(matches!(err, MapError::Range(RangeError::WrongHalf { .. })));
/// drop(user); // frees its root
/// assert_eq!(host.frames().outstanding(), 0);
/// ```
///
/// A destroyed tree is gone: it cannot be destroyed (or used) again.
///
/// ```compile_fail
/// use lazymmu::prelude::*;
/// let host = Host::<X86_64>::new(PhysAddr(0x10_0000), 8);
/// let tables = host.new_tables(SpaceId(1), VaRange::Both).unwrap();
/// let mut gather = tables.gather();
/// tables.destroy(&mut gather).unwrap();
/// tables.destroy(&mut gather).unwrap(); // error: use of moved `tables`
/// ```
#[must_use = "dropping a tree that owns its root tears it down at once"]
pub struct PageTables<'a, B, L, A, F = <B as Backend>::Format>
where
    B: Backend<Format = F> + ?Sized,
    L: LazyMode,
    A: FrameAllocator + ?Sized,
    F: Format,
{
    mmu: Mmu<'a, B, L, A>,
    root: PhysAddr,
    space: SpaceId,
    range: VaRange,
    /// Whether dropping the value tears the tree down.
    owned: bool,
    _format: PhantomData<F>,
}

impl<B, L, A, F> fmt::Debug for PageTables<'_, B, L, A, F>
where
    B: Backend<Format = F> + ?Sized,
    L: LazyMode,
    A: FrameAllocator + ?Sized,
    F: Format,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PageTables")
            .field("format", &F::NAME)
            .field("root", &self.root)
            .field("space", &self.space)
            .field("range", &self.range)
            .field("owned", &self.owned)
            .finish()
    }
}

impl<B, L, A, F> Drop for PageTables<'_, B, L, A, F>
where
    B: Backend<Format = F> + ?Sized,
    L: LazyMode,
    A: FrameAllocator + ?Sized,
    F: Format,
{
    /// An owning tree tears itself down as [`PageTables::destroy`] would,
    /// with a gather over the [`Mmu`]'s scope.
    fn drop(&mut self) {
        if self.owned {
            let mut gather = self.gather();
            self.teardown(&mut gather);
        }
    }
}

/// A range checked and reduced to the bits the root translates.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Span {
    pub start: u64,
    pub end: u64,
    pub high: bool,
}

pub(crate) fn check_range<F: Format>(
    va: VirtAddr,
    len: u64,
    range: VaRange,
) -> Result<Span, RangeError> {
    if va.0 % 4096 != 0 || len % 4096 != 0 {
        return Err(RangeError::Misaligned { va, len });
    }
    let out_of_range = RangeError::OutOfRange { va, len };
    if !F::is_canonical(va.0) {
        return Err(out_of_range);
    }
    let high = va.0 >> 63 != 0;
    if !range.serves(high) {
        return Err(RangeError::WrongHalf { va, range });
    }
    let start = va.0 & F::va_mask();
    let end = start.checked_add(len).ok_or(out_of_range)?;
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
        return Err(out_of_range);
    }
    Ok(Span { start, end, high })
}

/// Why an internal walk stopped. Addresses are masked; levels are those of
/// the table that could not be allocated or of the entry in the way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// No frame for a table at `level`, needed while working at `at`.
    OutOfFrames { at: u64, level: u8 },
    /// The entry at `level` covering `at` had to be empty and was not.
    Occupied { at: u64, level: u8 },
    /// A huge leaf at `level` where a table was needed.
    Huge { at: u64, level: u8 },
}

impl Stop {
    /// The same stop, reported at `at` (a source address for a walk of a
    /// destination).
    pub(crate) fn at(self, at: u64) -> Stop {
        match self {
            Stop::OutOfFrames { level, .. } => Stop::OutOfFrames { at, level },
            Stop::Occupied { level, .. } => Stop::Occupied { at, level },
            Stop::Huge { level, .. } => Stop::Huge { at, level },
        }
    }
}

impl<'a, B, L, A, F> PageTables<'a, B, L, A, F>
where
    B: Backend<Format = F> + ?Sized,
    L: LazyMode,
    A: FrameAllocator + ?Sized,
    F: Format,
{
    /// The root table.
    pub fn root(&self) -> PhysAddr {
        self.root
    }

    /// The address space.
    pub fn space(&self) -> SpaceId {
        self.space
    }

    /// The half (or halves) the tree translates.
    pub fn range(&self) -> VaRange {
        self.range
    }

    /// Whether dropping the value tears the tree down (it owns its root).
    pub fn owns_root(&self) -> bool {
        self.owned
    }

    /// The MMU the tree's operations go through.
    pub fn mmu(&self) -> Mmu<'a, B, L, A> {
        self.mmu
    }

    /// The backend.
    pub fn backend(&self) -> &'a B {
        self.mmu.backend
    }

    /// The lazy mode.
    pub fn lazy(&self) -> &'a L {
        self.mmu.lazy
    }

    /// A gather for this tree's address space over the [`Mmu`]'s backend,
    /// allocator and scope: what [`PageTables::zap`],
    /// [`PageTables::protect`] and the others take.
    pub fn gather(&self) -> Gather<'a, B, A> {
        Gather::new(
            self.mmu.backend,
            self.mmu.allocator,
            self.space,
            self.mmu.scope,
        )
    }

    /// Gives up ownership of the root without freeing anything and returns
    /// it ([`Mmu::adopt`] takes it back). On a borrowed tree this only
    /// returns the root.
    pub fn into_root(mut self) -> PhysAddr {
        self.owned = false;
        self.root
    }

    /// Translates `va` as the hardware walker would, reading the tables in
    /// memory (a write still batched in a lazy section is not seen).
    ///
    /// # Errors
    /// [`TranslateError::NotCanonical`] for an address the format cannot
    /// translate, [`TranslateError::WrongHalf`] for one of a half the tree
    /// does not translate, [`TranslateError::NotMapped`] when the walk
    /// meets an absent entry.
    pub fn translate(&self, va: VirtAddr) -> Result<Translation, TranslateError> {
        if F::is_canonical(va.0) && !self.range.serves(va.0 >> 63 != 0) {
            return Err(TranslateError::WrongHalf {
                va,
                range: self.range,
            });
        }
        translate::<F, _>(self.mmu.backend.memory(), self.root, va)
    }

    /// Calls `f` for every leaf the tree maps in its range, in address
    /// order, with canonical addresses.
    pub fn for_each_leaf(&self, f: impl FnMut(Leaf)) {
        let (span, _) = self.whole();
        for_each_leaf_in::<F, _>(
            self.mmu.backend.memory(),
            self.root,
            span.high,
            span.start,
            span.end,
            f,
        );
    }

    /// Tears the tree down: zaps everything it translates (every leaf and
    /// table) with `gather` and queues the root itself, so every frame of
    /// the tree is returned after the flush. An owning tree does the same
    /// when dropped, with [`PageTables::gather`]; `destroy` is for a gather
    /// of the caller's (another scope, or one shared with other work) and
    /// for a borrowed tree whose root's owner is done with it.
    ///
    /// A tree restricted to one half of an x86-64 root
    /// ([`VaRange::Lower`], [`VaRange::Upper`]) leaves the other half's
    /// tables alone (they belong to another tree, as the kernel's half of
    /// a process's root does).
    ///
    /// # Errors
    /// [`ZapError::Range`] if `gather` belongs to another space; nothing
    /// is done then (and an owning tree, dropped, tears itself down with
    /// its own gather). Nothing is split when everything goes, so no frame
    /// is needed.
    pub fn destroy<G, GA, O>(
        mut self,
        gather: &mut Gather<'_, G, GA, O>,
    ) -> Result<ZapSummary, ZapError>
    where
        G: crate::backend::TlbFlush + ?Sized,
        GA: FrameAllocator + ?Sized,
        O: FreeOrder,
    {
        self.check_gather(gather).map_err(ZapError::Range)?;
        let summary = self.teardown(gather);
        self.owned = false;
        Ok(summary)
    }

    /// The whole range the tree translates, and the canonical address its
    /// root's span starts at.
    fn whole(&self) -> (Span, VirtAddr) {
        let all = 1u64 << F::VA_BITS;
        let span = match (F::SHARED_ROOT, self.range) {
            (true, VaRange::Lower) => Span {
                start: 0,
                end: all / 2,
                high: false,
            },
            (true, VaRange::Upper) => Span {
                start: all / 2,
                end: all,
                high: true,
            },
            (true, VaRange::Both) => Span {
                start: 0,
                end: all,
                high: false,
            },
            (false, range) => Span {
                start: 0,
                end: all,
                high: range == VaRange::Upper,
            },
        };
        (span, Self::canonical(0, span.high))
    }

    fn teardown<G, GA, O>(&self, gather: &mut Gather<'_, G, GA, O>) -> ZapSummary
    where
        G: crate::backend::TlbFlush + ?Sized,
        GA: FrameAllocator + ?Sized,
        O: FreeOrder,
    {
        let (whole, root_va) = self.whole();
        match self.zap_span(whole, gather) {
            Ok(summary) => {
                gather.remove_table(self.root, root_va, F::LEVELS);
                summary
            }
            // Unreachable: a zap of the whole range cuts no leaf, so it
            // splits nothing and needs no frame. Were it to happen, the
            // root stays allocated rather than freed with tables linked.
            Err(_) => ZapSummary::default(),
        }
    }

    // ---- helpers shared by the operations ----

    /// `[va, va + len)` checked for this tree (see [`check_range`]).
    #[inline]
    pub(crate) fn span(&self, va: VirtAddr, len: u64) -> Result<Span, RangeError> {
        check_range::<F>(va, len, self.range)
    }

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
        self.mmu.backend.read_entry(entry)
    }

    /// Writes a leaf (or an empty entry) through the backend.
    #[inline]
    pub(crate) fn write_leaf(&self, entry: PhysAddr, va: u64, high: bool, level: u8, value: u64) {
        self.mmu
            .backend
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
        self.mmu
            .backend
            .write_entry(self.update(entry, va, high, level, value, false));
    }

    /// Unlinks a table entry through the backend.
    #[inline]
    pub(crate) fn clear_table(&self, entry: PhysAddr, va: u64, high: bool, level: u8) {
        self.mmu
            .backend
            .write_entry(self.update(entry, va, high, level, 0, false));
    }

    /// `ptep_get_and_clear` through the backend.
    #[inline]
    pub(crate) fn clear(&self, entry: PhysAddr, va: u64, high: bool, level: u8) -> u64 {
        self.mmu
            .backend
            .get_and_clear(self.update(entry, va, high, level, 0, true))
    }

    /// `ptep_get_and_clear_full` through the backend: `full` when the whole
    /// address space is being torn down.
    #[inline]
    pub(crate) fn clear_full(
        &self,
        entry: PhysAddr,
        va: u64,
        high: bool,
        level: u8,
        full: bool,
    ) -> u64 {
        self.mmu
            .backend
            .get_and_clear_full(self.update(entry, va, high, level, 0, true), full)
    }

    /// A zeroed frame for a new table, not linked anywhere yet.
    pub(crate) fn new_table(&self) -> Option<PhysAddr> {
        let frame = self.new_frame_to_fill()?;
        self.mmu.backend.memory().zero_frame(frame);
        Some(frame)
    }

    /// A frame for a new table that the caller fills completely before
    /// linking it, so it needs no zeroing.
    pub(crate) fn new_frame_to_fill(&self) -> Option<PhysAddr> {
        self.mmu.allocator.allocate()
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
            Entry::Leaf { .. } => Err(Stop::Huge { at: va, level }),
            Entry::Absent => {
                let next = self.new_table().ok_or(Stop::OutOfFrames {
                    at: va,
                    level: level - 1,
                })?;
                self.write_table(entry, va, high, level, next);
                Ok((next, true))
            }
        }
    }

    /// Walks from the root to the table at `level` covering `va`, creating
    /// missing tables; counts the tables it allocated in `allocated`.
    pub(crate) fn ensure_table(
        &self,
        va: u64,
        high: bool,
        level: u8,
        allocated: &mut u64,
    ) -> Result<PhysAddr, Stop> {
        let mut table = self.root;
        let mut at = F::LEVELS;
        while at > level {
            let entry = Self::entry(table, va, at);
            let (below, new) = self.table_below(entry, va, high, at)?;
            *allocated += u64::from(new);
            table = below;
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
        let table = self.new_frame_to_fill().ok_or(Stop::OutOfFrames {
            at: va,
            level: level - 1,
        })?;
        let old = self.clear(entry, va, high, level);
        let Entry::Leaf { phys, size, attrs } = F::decode(old, level) else {
            unreachable!("split of a non-leaf entry");
        };
        gather.flush_page_now(Self::canonical(va, high), size);
        let small = F::leaf_size(level - 1).expect("split below 4 KiB");
        // The link goes inside the PTE table's section, so that its close
        // applies it with the entries (a flush when nested).
        let _section = (level - 1 == 1).then(|| self.mmu.lazy.section());
        let value = F::leaf_template(small, attrs) | phys.0;
        self.mmu.backend.write_entries(
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
            Err(RangeError::WrongSpace {
                tables: self.space,
                gather: gather.space(),
            })
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
