//! Unmap a range (`zap_page_range`, `unmap_page_range` and, for tables
//! wholly inside the range, `free_pgd_range`).

use core::fmt;

use super::descend::{pte_run, Invalidated, Slot, Visit};
use super::{covers_entry, size_slot, PageTables, RangeError, Span, Stop};
use crate::addr::{PhysAddr, VirtAddr};
use crate::backend::{Backend, TlbFlush};
use crate::mode::LazyMode;
use crate::pgtable::allocator::FrameAllocator;
use crate::pgtable::format::{Entry, Format};
use crate::pgtable::gather::{FreeOrder, Gather};

/// What a zap did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ZapSummary {
    /// Leaves cleared, by size: 4K, 2M, 1G.
    pub leaves: [u64; 3],
    /// Leaves cleared that were dirty (the caller would mark the pages
    /// dirty, as `zap_present_ptes` does).
    pub dirty: u64,
    /// Huge leaves split because the range cut them.
    pub splits: u64,
    /// Page-table frames unlinked and queued in the gather.
    pub tables_freed: u64,
}

/// Why a zap stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZapError {
    /// The range was rejected; nothing was done.
    Range(RangeError),
    /// A huge leaf that the range cuts could not be split for want of a
    /// frame. `[va, at)` is unmapped (its invalidations are in the gather);
    /// the leaf holding `at` and everything after it are untouched.
    OutOfFrames {
        /// First address not unmapped.
        at: VirtAddr,
        /// Level of the table the split needed.
        level: u8,
    },
}

impl fmt::Display for ZapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ZapError::Range(error) => write!(f, "zap refused: {error}"),
            ZapError::OutOfFrames { at, level } => write!(
                f,
                "zap stopped at {:#x}: no frame for the level-{level} table of a split",
                at.0
            ),
        }
    }
}

impl core::error::Error for ZapError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            ZapError::Range(error) => Some(error),
            ZapError::OutOfFrames { .. } => None,
        }
    }
}

impl<B, L, A, F> PageTables<'_, B, L, A, F>
where
    B: Backend<Format = F> + ?Sized,
    L: LazyMode,
    A: FrameAllocator + ?Sized,
    F: Format,
{
    /// Unmaps `[va, va + len)`: clears every leaf (splitting a huge leaf
    /// the range cuts), adds its invalidation to `gather`, and unlinks every
    /// page table whose whole span lies in the range, queuing its frame in
    /// `gather` to be freed after the flush.
    ///
    /// # Errors
    /// - [`ZapError::Range`]: bad range, or `gather` for another space.
    /// - [`ZapError::OutOfFrames`]: a split needed a frame (see the
    ///   variant for what was done).
    pub fn zap<G, GA, O>(
        &self,
        va: VirtAddr,
        len: u64,
        gather: &mut Gather<'_, G, GA, O>,
    ) -> Result<ZapSummary, ZapError>
    where
        G: TlbFlush + ?Sized,
        GA: FrameAllocator + ?Sized,
        O: FreeOrder,
    {
        let span = self.span(va, len).map_err(ZapError::Range)?;
        self.check_gather(gather).map_err(ZapError::Range)?;
        self.zap_span(span, gather)
    }

    pub(crate) fn zap_span<G, GA, O>(
        &self,
        span: Span,
        gather: &mut Gather<'_, G, GA, O>,
    ) -> Result<ZapSummary, ZapError>
    where
        G: TlbFlush + ?Sized,
        GA: FrameAllocator + ?Sized,
        O: FreeOrder,
    {
        let mut summary = ZapSummary::default();
        let high = span.high;
        let result = self.walk(span.start, span.end, &mut |visit| match visit {
            Visit::Ptes(table, start, end) => {
                self.zap_ptes(table, start, end, high, None, gather, &mut summary);
                Ok(None)
            }
            Visit::Entry(level, Slot { va, next, entry }, current) => match current {
                Entry::Absent => Ok(None),
                Entry::Leaf { size, .. } if covers_entry::<F>(va, next, level) => {
                    let old = self.clear_full(entry, va, high, level, gather.is_full_mm());
                    if let Entry::Leaf { attrs, .. } = F::decode(old, level) {
                        summary.dirty += u64::from(attrs.dirty);
                    }
                    gather.add_page(Self::canonical(va, high), size);
                    summary.leaves[size_slot(size)] += 1;
                    Ok(None)
                }
                Entry::Leaf { .. } => {
                    self.split_into(entry, va, high, level, gather, &mut summary.splits)
                }
                Entry::Table(below) if level == 2 => {
                    // The PMD entry is cleared inside the PTE table's
                    // section, so the section's close applies it too.
                    let whole = covers_entry::<F>(va, next, level);
                    let unlink = whole.then_some(entry);
                    self.zap_ptes(below, va, next, high, unlink, gather, &mut summary);
                    if whole {
                        gather.remove_table(below, Self::canonical(va, high), level);
                        summary.tables_freed += 1;
                    }
                    Ok(None)
                }
                Entry::Table(below) => Ok(Some(below)),
            },
            // A split leaf never covers its entry, so only a table the
            // range wholly covers is unlinked here.
            Visit::Ascend(level, Slot { va, next, entry }, below) => {
                if covers_entry::<F>(va, next, level) {
                    // Its own short section: the close applies the
                    // unlink before the gather can free the table,
                    // even when a caller's section is open.
                    {
                        let _section = self.mmu.lazy.section();
                        self.clear_table(entry, va, high, level);
                    }
                    gather.remove_table(below, Self::canonical(va, high), level);
                    summary.tables_freed += 1;
                }
                Ok(None)
            }
        });
        match result {
            Ok(()) => Ok(summary),
            Err(Stop::OutOfFrames { at, level }) => Err(ZapError::OutOfFrames {
                at: Self::canonical(at, span.high),
                level,
            }),
            Err(other) => unreachable!("zap stopped with {other:?}"),
        }
    }

    /// The PTE loop (`zap_pte_range`): one lazy section for the table, the
    /// run handed to the backend whole ([`Backend::clear_ptes`]), with
    /// `full` set under a full-mm gather (`ptep_get_and_clear_full(mm,
    /// addr, pte, tlb->fullmm)`). Every page it unmaps is queued in the
    /// gather ([`Gather::remove_pages`]); when the gather's batch is full
    /// the loop does what Linux's `force_flush` does: it leaves the
    /// section, flushes the gather (TLB, then the pages) and goes on in a
    /// new section. So that the flush comes right after the page that
    /// fills the batch, a run is never longer than the room left in it
    /// ([`Gather::page_room`]). `unlink` is the PMD entry to clear once the
    /// table is empty.
    #[allow(clippy::too_many_arguments)]
    fn zap_ptes<G, GA, O>(
        &self,
        table: PhysAddr,
        start: u64,
        end: u64,
        high: bool,
        unlink: Option<PhysAddr>,
        gather: &mut Gather<'_, G, GA, O>,
        summary: &mut ZapSummary,
    ) where
        G: TlbFlush + ?Sized,
        GA: FrameAllocator + ?Sized,
        O: FreeOrder,
    {
        let full = gather.is_full_mm();
        let mut section = Some(self.mmu.lazy.section());
        let mut run = pte_run::<F>(table, start, end, high, self.space);
        let mut first = start;
        while run.count > 0 {
            let part = run.with_count(run.count.min(gather.page_room()));
            let changes = self.mmu.backend.clear_ptes(part, full);
            summary.dirty += changes.dirty;
            summary.leaves[0] += changes.count();
            Invalidated::of_run(first, &changes).gather::<F, _, _, _>(high, gather);
            if gather.remove_pages(changes.count() as usize) {
                drop(section.take());
                gather.flush();
                section = Some(self.mmu.lazy.section());
            }
            run = run.tail(part.count);
            first += (part.count as u64) << 12;
        }
        if let Some(entry) = unlink {
            self.clear_table(entry, start, high, 2);
        }
        drop(section);
    }
}
