//! The TLB gather (Linux's `mmu_gather`, mm/mmu_gather.c and
//! include/asm-generic/tlb.h).
//!
//! Range operations add every translation they invalidate and every
//! page-table frame they unlink. The gather flushes page by page when the
//! number of pages is at most the backend's
//! [`single_page_ceiling`](crate::backend::TlbFlush::single_page_ceiling)
//! and the whole address space above it, then frees the frames: a frame is
//! never reused while a TLB or paging-structure cache may still walk it.
//! It flushes on drop, so a flush cannot be forgotten.
//!
//! ```
//! use lazymmu::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
//! use lazymmu::backend::FlushScope;
//! use lazymmu::backend::x86::{RecordingPrimitives, X86Backend, PrimitiveCall};
//! use lazymmu::pgtable::{allocator::HostFrameAllocator, memory::HostMemory, gather::Gather};
//! let memory = HostMemory::new(PhysAddr(0), 4);
//! let frames = HostFrameAllocator::poisoning(&memory);
//! let backend = X86Backend::new(&memory, RecordingPrimitives::new(0, SpaceId(1)));
//! {
//!     let mut gather = Gather::new(&backend, &frames, SpaceId(1), FlushScope::Local);
//!     gather.add_page(VirtAddr(0x1000), PageSize::Size4K);
//! } // flushed here
//! assert_eq!(backend.primitives().calls(), vec![PrimitiveCall::Invlpg(VirtAddr(0x1000))]);
//! ```

use core::marker::PhantomData;

use crate::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use crate::backend::{FlushScope, TlbFlush};
use crate::pgtable::allocator::FrameAllocator;

/// Page-table frames a gather holds before it must flush to free them
/// (Linux keeps a page of pointers per batch; 128 is plenty per flush and
/// keeps the gather on the stack).
pub const FRAME_BATCH: usize = 128;

/// Pages a gather queues for freeing before the zap that queues them must
/// flush (`__tlb_remove_page_size` returning true: `force_flush` in
/// `zap_pte_range`): the on-stack bundle of `MMU_GATHER_BUNDLE` (8) pages
/// plus `MAX_GATHER_BATCH_COUNT` batches of `MAX_GATHER_BATCH` pages each,
/// where a batch is a 4 KiB page of 8-byte pointers after a 16-byte header
/// (`MAX_GATHER_BATCH` = (4096 − 16) / 8 = 510) and
/// `MAX_GATHER_BATCH_COUNT` = 10000 / 510 = 19 (include/asm-generic/tlb.h,
/// mm/mmu_gather.c `tlb_next_batch`): 8 + 19 × 510 = 9,698.
pub const PAGE_BATCH: usize = 8 + (10_000 / 510) * 510;

/// When the gather frees page-table frames relative to its TLB flush.
pub trait FreeOrder: sealed::Sealed {
    /// Whether frames are freed before the flush that covers them.
    const FREE_BEFORE_FLUSH: bool;
}

/// The correct order: flush, then free. The default.
#[derive(Debug)]
pub enum FlushThenFree {}

/// **Known-bad ordering, for checkers only** (the `testing` feature). Frees page-table frames
/// *before* the flush that covers them, so another CPU's walker (or a
/// paging-structure cache) can still use a frame that has been reused: the
/// use-after-free Linux's `tlb_remove_table` exists to prevent. The
/// simulator selects it to show that its checker catches the bug.
#[cfg(feature = "testing")]
#[derive(Debug)]
pub enum FreeBeforeFlush {}

impl FreeOrder for FlushThenFree {
    const FREE_BEFORE_FLUSH: bool = false;
}
#[cfg(feature = "testing")]
impl FreeOrder for FreeBeforeFlush {
    const FREE_BEFORE_FLUSH: bool = true;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::FlushThenFree {}
    #[cfg(feature = "testing")]
    impl Sealed for super::FreeBeforeFlush {}
}

#[derive(Clone, Copy, Debug, Default)]
struct Pending {
    start: u64,
    end: u64,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.start >= self.end
    }
    fn add(&mut self, start: u64, end: u64) {
        if self.is_empty() {
            *self = Pending { start, end };
        } else {
            self.start = self.start.min(start);
            self.end = self.end.max(end);
        }
    }
}

/// Statistics of a gather's flushes, for tests and cost accounting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GatherStats {
    /// Page-by-page range flushes issued (one per page size per flush).
    pub range_flushes: u32,
    /// Full flushes of the address space issued.
    pub full_flushes: u32,
    /// Page-table frames freed.
    pub frames_freed: u32,
}

/// Collects TLB invalidations and page-table frames to free; flushes on
/// drop. Generic over [`FreeOrder`] only so that a checker can select the
/// known-bad `FreeBeforeFlush` (the `testing` feature); ordinary code uses
/// [`Gather::new`] and gets [`FlushThenFree`].
#[must_use = "a gather flushes when dropped; dropping it at once flushes nothing useful"]
pub struct Gather<
    'a,
    B: TlbFlush + ?Sized,
    A: FrameAllocator + ?Sized,
    O: FreeOrder = FlushThenFree,
> {
    backend: &'a B,
    allocator: &'a A,
    space: SpaceId,
    scope: FlushScope,
    /// Pending ranges per page size (index by `PageSize as usize` order:
    /// 4K, 2M, 1G), as canonical addresses.
    ranges: [Pending; 3],
    frames: [PhysAddr; FRAME_BATCH],
    frame_count: usize,
    /// Frames the batch holds before a flush ([`FRAME_BATCH`] unless
    /// limited with [`Gather::with_frame_batch`]).
    batch: usize,
    /// Pages queued for freeing since the last flush.
    pages_queued: usize,
    /// Tearing the whole address space down (`tlb->fullmm`).
    full_mm: bool,
    stats: GatherStats,
    _order: PhantomData<O>,
}

fn size_index(size: PageSize) -> usize {
    match size {
        PageSize::Size4K => 0,
        PageSize::Size2M => 1,
        PageSize::Size1G => 2,
    }
}

const SIZES: [PageSize; 3] = [PageSize::Size4K, PageSize::Size2M, PageSize::Size1G];

impl<'a, B: TlbFlush + ?Sized, A: FrameAllocator + ?Sized> Gather<'a, B, A, FlushThenFree> {
    /// A gather for address space `space` that flushes `scope` (the local
    /// CPU, or the CPUs that use the space) through `backend` and frees
    /// page-table frames to `allocator` after flushing.
    pub fn new(backend: &'a B, allocator: &'a A, space: SpaceId, scope: FlushScope) -> Self {
        Self::with_order(backend, allocator, space, scope)
    }

    /// A gather that tears the whole address space down
    /// (`tlb_gather_mmu_fullmm`, as exit and execve take it): its flush is
    /// [`TlbFlush::flush_full_mm`], and the zaps it drives clear entries
    /// with `full` set ([`PteAccess::get_and_clear_full`]).
    ///
    /// [`PteAccess::get_and_clear_full`]: crate::backend::PteAccess::get_and_clear_full
    pub fn full_mm(backend: &'a B, allocator: &'a A, space: SpaceId, scope: FlushScope) -> Self {
        let mut gather = Self::with_order(backend, allocator, space, scope);
        gather.full_mm = true;
        gather
    }
}

#[cfg(feature = "testing")]
impl<'a, B: TlbFlush + ?Sized, A: FrameAllocator + ?Sized> Gather<'a, B, A, FreeBeforeFlush> {
    /// **Known-bad**: a gather that frees page-table frames before the
    /// flush that covers them. Only for checkers demonstrating the bug.
    pub fn new_free_before_flush(
        backend: &'a B,
        allocator: &'a A,
        space: SpaceId,
        scope: FlushScope,
    ) -> Self {
        Self::with_order(backend, allocator, space, scope)
    }
}

impl<'a, B: TlbFlush + ?Sized, A: FrameAllocator + ?Sized, O: FreeOrder> Gather<'a, B, A, O> {
    fn with_order(backend: &'a B, allocator: &'a A, space: SpaceId, scope: FlushScope) -> Self {
        Gather {
            backend,
            allocator,
            space,
            scope,
            ranges: [Pending::default(); 3],
            frames: [PhysAddr(0); FRAME_BATCH],
            frame_count: 0,
            batch: FRAME_BATCH,
            pages_queued: 0,
            full_mm: false,
            stats: GatherStats::default(),
            _order: PhantomData,
        }
    }

    /// The address space this gather flushes.
    pub fn space(&self) -> SpaceId {
        self.space
    }

    /// The same gather with a frame batch of `frames` (at least 1, at most
    /// [`FRAME_BATCH`]): what Linux's gather is left with when it cannot
    /// allocate another batch page (`tlb_next_batch` fails under
    /// `GFP_NOWAIT` and the gather flushes with its small on-stack batch
    /// full, mm/mmu_gather.c). A checker uses it to reach the full-batch
    /// path with a few tables.
    pub fn with_frame_batch(mut self, frames: usize) -> Self {
        self.batch = frames.clamp(1, FRAME_BATCH);
        self
    }

    /// Which CPUs the flush reaches.
    pub fn scope(&self) -> FlushScope {
        self.scope
    }

    /// The backend flushes go to.
    pub fn backend(&self) -> &'a B {
        self.backend
    }

    /// Whether the gather tears the whole address space down
    /// ([`Gather::full_mm`]).
    pub fn is_full_mm(&self) -> bool {
        self.full_mm
    }

    /// How many pages can still be queued ([`Gather::remove_pages`])
    /// before the batch is full: at least one.
    #[inline]
    pub fn page_room(&self) -> usize {
        PAGE_BATCH.saturating_sub(self.pages_queued).max(1)
    }

    /// Queues `count` pages, just unmapped, to be freed after the flush
    /// (`__tlb_remove_page` for each), at most [`Gather::page_room`] of
    /// them. Returns true when the batch is full ([`PAGE_BATCH`]): the
    /// caller must flush before it queues more, as `zap_pte_range` does
    /// when `force_flush` is set.
    #[inline]
    pub fn remove_pages(&mut self, count: usize) -> bool {
        self.pages_queued += count;
        self.pages_queued >= PAGE_BATCH
    }

    /// Records that the translation of the page of `size` at `va`
    /// (canonical, aligned to `size`) must be invalidated.
    #[inline]
    pub fn add_page(&mut self, va: VirtAddr, size: PageSize) {
        self.ranges[size_index(size)].add(va.0, va.0.wrapping_add(size.bytes()));
    }

    /// Records that `[start, end)` must be invalidated at `stride`.
    pub fn add_range(&mut self, start: VirtAddr, end: VirtAddr, stride: PageSize) {
        if start.0 < end.0 {
            self.ranges[size_index(stride)].add(start.0, end.0);
        }
    }

    /// Queues the page-table frame `frame`, just unlinked from the entry at
    /// `level` whose span starts at `va`, to be freed after the flush. One
    /// address of the span is invalidated (at most a 1 GiB stride): that
    /// drops the walk-cache entries that point to the frame (Intel SDM
    /// Vol. 3A §4.10.4.1: `invlpg` invalidates all paging-structure caches;
    /// Arm ARM `TLBI VAE1` invalidates walk-cache entries for the address).
    /// The leaves below were gathered when they were cleared.
    pub fn remove_table(&mut self, frame: PhysAddr, va: VirtAddr, level: u8) {
        if self.frame_count >= self.batch {
            self.flush();
        }
        // An entry at level 2 covers at most 2 MiB, at level 3 at most
        // 1 GiB, on every format of this crate.
        let covered = match level {
            0 | 1 => PageSize::Size4K,
            2 => PageSize::Size2M,
            _ => PageSize::Size1G,
        };
        self.add_page(va, covered);
        self.frames[self.frame_count] = frame;
        self.frame_count += 1;
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.frame_count == 0 && self.ranges.iter().all(Pending::is_empty)
    }

    /// Flushes every pending invalidation now and frees the queued frames.
    /// Returns nothing pending afterwards.
    pub fn flush(&mut self) {
        if O::FREE_BEFORE_FLUSH {
            self.free_frames();
        }
        self.flush_tlb();
        if !O::FREE_BEFORE_FLUSH {
            self.free_frames();
        }
    }

    /// Invalidates the page of `size` at `va` immediately, bypassing the
    /// batch (break-before-make when a block is split: the old block must
    /// be gone from every TLB before the table replacing it is written).
    pub fn flush_page_now(&mut self, va: VirtAddr, size: PageSize) {
        let end = VirtAddr(va.0.wrapping_add(size.bytes()));
        self.backend
            .flush_range(self.space, va, end, size, self.scope);
        self.stats.range_flushes += 1;
    }

    /// Invalidates the whole address space now and forgets the pending
    /// ranges: fork's `flush_tlb_mm(oldmm)` at the end of `dup_mmap`, which
    /// covers every entry the copy write-protected whatever their number.
    pub fn flush_all_now(&mut self) {
        self.ranges = [Pending::default(); 3];
        let scope = self.scope.freeing_tables(self.frame_count > 0);
        self.backend.flush_all(self.space, scope);
        self.stats.full_flushes += 1;
        self.free_frames();
    }

    /// Takes the pending 4 KiB range out of the gather without flushing it,
    /// for a caller that flushes it itself later: vmalloc's lazy purge
    /// (`vunmap_range_noflush` clears the entries; `purge_vmap_area_lazy`
    /// flushes the union of the freed areas once `lazy_max_pages` worth
    /// have accumulated). The caller must not let the range be mapped
    /// again before that flush. Ranges of other page sizes stay pending.
    pub fn defer_range(&mut self) -> Option<(VirtAddr, VirtAddr)> {
        let range = core::mem::take(&mut self.ranges[0]);
        (!range.is_empty()).then_some((VirtAddr(range.start), VirtAddr(range.end)))
    }

    /// Flushes, frees and returns the statistics.
    pub fn finish(mut self) -> GatherStats {
        self.flush();
        self.stats
    }

    /// Statistics so far.
    pub fn stats(&self) -> GatherStats {
        self.stats
    }

    fn flush_tlb(&mut self) {
        let pages: u64 = SIZES
            .iter()
            .zip(self.ranges.iter())
            .filter(|(_, r)| !r.is_empty())
            .map(|(size, r)| (r.end.wrapping_sub(r.start)) >> size.shift())
            .sum();
        if pages == 0 {
            return;
        }
        let scope = self.scope.freeing_tables(self.frame_count > 0);
        if self.full_mm {
            self.backend.flush_full_mm(self.space, scope);
            self.stats.full_flushes += 1;
        } else if pages > self.backend.single_page_ceiling() as u64 {
            self.backend.flush_all(self.space, scope);
            self.stats.full_flushes += 1;
        } else {
            for (size, range) in SIZES.iter().zip(self.ranges.iter()) {
                if !range.is_empty() {
                    self.backend.flush_range(
                        self.space,
                        VirtAddr(range.start),
                        VirtAddr(range.end),
                        *size,
                        scope,
                    );
                    self.stats.range_flushes += 1;
                }
            }
        }
        self.ranges = [Pending::default(); 3];
    }

    fn free_frames(&mut self) {
        for &frame in &self.frames[..self.frame_count] {
            self.allocator.free(frame);
        }
        self.stats.frames_freed += self.frame_count as u32;
        self.frame_count = 0;
        self.pages_queued = 0;
    }
}

impl<B: TlbFlush + ?Sized, A: FrameAllocator + ?Sized, O: FreeOrder> Drop for Gather<'_, B, A, O> {
    fn drop(&mut self) {
        self.flush();
    }
}

impl<B: TlbFlush + ?Sized, A: FrameAllocator + ?Sized, O: FreeOrder> core::fmt::Debug
    for Gather<'_, B, A, O>
{
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Gather")
            .field("space", &self.space)
            .field("scope", &self.scope)
            .field("frames", &self.frame_count)
            .field("stats", &self.stats)
            .finish()
    }
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    use alloc::vec::Vec;
    use core::cell::RefCell;

    use super::*;

    #[derive(Debug, PartialEq, Eq)]
    enum Event {
        Range(u64, u64, PageSize),
        All,
        Free(u64),
    }

    /// Records flushes and frees in one log, to check their order.
    #[derive(Default)]
    struct Log {
        events: RefCell<Vec<Event>>,
        ceiling: usize,
    }

    impl TlbFlush for Log {
        fn flush_range(
            &self,
            _: SpaceId,
            start: VirtAddr,
            end: VirtAddr,
            stride: PageSize,
            _: FlushScope,
        ) {
            self.events
                .borrow_mut()
                .push(Event::Range(start.0, end.0, stride));
        }
        fn flush_all(&self, _: SpaceId, _: FlushScope) {
            self.events.borrow_mut().push(Event::All);
        }
        fn single_page_ceiling(&self) -> usize {
            self.ceiling
        }
    }

    impl FrameAllocator for Log {
        fn allocate(&self) -> Option<PhysAddr> {
            None
        }
        fn free(&self, frame: PhysAddr) {
            self.events.borrow_mut().push(Event::Free(frame.0));
        }
    }

    fn log(ceiling: usize) -> Log {
        Log {
            ceiling,
            ..Log::default()
        }
    }

    #[test]
    fn frames_are_freed_after_the_flush_that_covers_them() {
        let log = log(33);
        let mut gather = Gather::new(&log, &log, SpaceId(1), FlushScope::Local);
        gather.remove_table(PhysAddr(0x5000), VirtAddr(0x20_0000), 2);
        assert!(log.events.borrow().is_empty(), "nothing before the flush");
        drop(gather);
        assert_eq!(
            *log.events.borrow(),
            [
                Event::Range(0x20_0000, 0x40_0000, PageSize::Size2M),
                Event::Free(0x5000)
            ]
        );
    }

    #[test]
    fn a_full_batch_flushes_before_it_frees() {
        let log = log(33);
        let mut gather = Gather::new(&log, &log, SpaceId(1), FlushScope::Local).with_frame_batch(1);
        gather.remove_table(PhysAddr(0x5000), VirtAddr(0x20_0000), 2);
        gather.remove_table(PhysAddr(0x6000), VirtAddr(0x40_0000), 2);
        assert_eq!(
            *log.events.borrow(),
            [
                Event::Range(0x20_0000, 0x40_0000, PageSize::Size2M),
                Event::Free(0x5000)
            ],
            "the second table found the batch full"
        );
        drop(gather);
        assert_eq!(log.events.borrow().len(), 4);
        assert_eq!(log.events.borrow()[3], Event::Free(0x6000));
    }

    #[test]
    fn the_known_bad_order_frees_first() {
        let log = log(33);
        let mut gather = Gather::new_free_before_flush(&log, &log, SpaceId(1), FlushScope::Local);
        gather.remove_table(PhysAddr(0x5000), VirtAddr(0x20_0000), 2);
        drop(gather);
        assert_eq!(log.events.borrow()[0], Event::Free(0x5000));
    }

    #[test]
    fn ceiling_counts_pages_of_every_size() {
        let log = log(3);
        let mut gather = Gather::new(&log, &log, SpaceId(1), FlushScope::Local);
        gather.add_page(VirtAddr(0x1000), PageSize::Size4K);
        gather.add_page(VirtAddr(0x2000), PageSize::Size4K);
        gather.add_page(VirtAddr(0x4000_0000), PageSize::Size2M);
        gather.flush();
        assert_eq!(
            *log.events.borrow(),
            [
                Event::Range(0x1000, 0x3000, PageSize::Size4K),
                Event::Range(0x4000_0000, 0x4020_0000, PageSize::Size2M)
            ]
        );
        log.events.borrow_mut().clear();
        gather.add_range(VirtAddr(0), VirtAddr(0x4000), PageSize::Size4K);
        let stats = gather.finish();
        assert_eq!(*log.events.borrow(), [Event::All]);
        assert_eq!((stats.range_flushes, stats.full_flushes), (2, 1));
    }

    #[test]
    fn a_full_batch_of_frames_flushes_before_taking_more() {
        let log = log(1000);
        let mut gather = Gather::new(&log, &log, SpaceId(1), FlushScope::Local);
        for i in 0..=FRAME_BATCH as u64 {
            gather.remove_table(PhysAddr(i << 12), VirtAddr(i << 21), 2);
        }
        // The first batch was flushed and freed when the next frame came.
        let events = log.events.borrow();
        assert_eq!(events.len(), 1 + FRAME_BATCH);
        assert!(matches!(events[0], Event::Range(0, _, PageSize::Size2M)));
        drop(events);
        assert!(!gather.is_empty());
        drop(gather);
        assert_eq!(
            *log.events.borrow().last().unwrap(),
            Event::Free((FRAME_BATCH as u64) << 12)
        );
    }
}
