//! Change protection (`change_protection`, mm/mprotect.c).

use super::descend::{one_entry, pte_run, Invalidated, Slot, Visit};
use super::{check_range, covers_entry, size_slot, PageTables, RangeError, Stop};
use crate::addr::{PageSize, PhysAddr, VirtAddr};
use crate::backend::runs::{self, NewProtection};
use crate::backend::{Backend, TlbFlush};
use crate::mode::LazyMode;
use crate::pgtable::allocator::FrameAllocator;
use crate::pgtable::format::{Attributes, Entry, Format};
use crate::pgtable::gather::{FreeOrder, Gather};
use crate::pgtable::memory::PageTableMemory;

/// What a protection change did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProtectSummary {
    /// Leaves rewritten, by size: 4K, 2M, 1G.
    pub changed: [u64; 3],
    /// Huge leaves split because the range cut them.
    pub splits: u64,
}

/// Why a protection change stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtectError {
    /// The range was rejected; nothing was done.
    Range(RangeError),
    /// A huge leaf the range cuts could not be split for want of a frame.
    /// `[va, at)` has the new protection (its invalidations are in the
    /// gather); from `at` on nothing changed.
    OutOfFrames {
        /// First address not changed.
        at: VirtAddr,
    },
}

impl<F, M, B, L, A> PageTables<'_, F, M, B, L, A>
where
    F: Format,
    M: PageTableMemory + ?Sized,
    B: Backend<Format = F> + ?Sized,
    L: LazyMode,
    A: FrameAllocator + ?Sized,
{
    /// Gives every present leaf in `[va, va + len)` the attributes `attrs`
    /// (keeping its own dirty and accessed bits), splitting a huge leaf the
    /// range cuts. Each entry is rewritten with the backend's
    /// [`modify_prot_start`](crate::backend::PteAccess::modify_prot_start)
    /// and [`modify_prot_commit`](crate::backend::PteAccess::modify_prot_commit),
    /// as Linux's `change_pte_range` does, so a dirty bit set by hardware
    /// meanwhile is not lost; every changed entry is added to `gather`.
    ///
    /// # Errors
    /// - [`ProtectError::Range`]: bad range, or `gather` for another space.
    /// - [`ProtectError::OutOfFrames`]: a split needed a frame.
    pub fn protect<G, GA, O>(
        &self,
        va: VirtAddr,
        len: u64,
        attrs: Attributes,
        gather: &mut Gather<'_, G, GA, O>,
    ) -> Result<ProtectSummary, ProtectError>
    where
        G: TlbFlush + ?Sized,
        GA: FrameAllocator + ?Sized,
        O: FreeOrder,
    {
        let span = check_range::<F>(va, len).map_err(ProtectError::Range)?;
        self.check_gather(gather).map_err(ProtectError::Range)?;
        let mut summary = ProtectSummary::default();
        let mut job = Job::new::<F>(attrs, span.high, &mut summary);
        let high = span.high;
        let result = self.walk(span.start, span.end, &mut |visit| match visit {
            Visit::Ptes(table, start, end) => {
                self.protect_ptes(table, start, end, &mut job, gather);
                Ok(None)
            }
            Visit::Entry(level, Slot { va, next, entry }, current) => match current {
                Entry::Absent => Ok(None),
                Entry::Leaf { size, .. } if covers_entry::<F>(va, next, level) => {
                    if self.protect_entry(entry, va, level, size, &mut job) {
                        gather.add_page(Self::canonical(va, high), size);
                    }
                    Ok(None)
                }
                Entry::Leaf { .. } => {
                    self.split_into(entry, va, high, level, gather, &mut job.summary.splits)
                }
                Entry::Table(below) => Ok(Some(below)),
            },
            Visit::Ascend(..) => Ok(None),
        });
        match result {
            Ok(()) => Ok(summary),
            Err(Stop::OutOfFrames(at)) => Err(ProtectError::OutOfFrames {
                at: Self::canonical(at, span.high),
            }),
            Err(other) => unreachable!("protect stopped with {other:?}"),
        }
    }

    /// Rewrites one present leaf; returns whether it changed.
    fn protect_entry(
        &self,
        entry: PhysAddr,
        va: u64,
        level: u8,
        size: PageSize,
        job: &mut Job<'_>,
    ) -> bool {
        let run = one_entry::<F>(entry, va, job.high, level, self.space);
        let slot = size_slot(size);
        let changed = runs::protect_entry::<F, _>(self.backend, &run, 0, &job.protections[slot]);
        job.summary.changed[slot] += u64::from(changed);
        changed
    }

    /// The PTE loop: one lazy section for the table, the run handed to the
    /// backend whole ([`Backend::protect_ptes`]).
    fn protect_ptes<G, GA, O>(
        &self,
        table: PhysAddr,
        start: u64,
        end: u64,
        job: &mut Job<'_>,
        gather: &mut Gather<'_, G, GA, O>,
    ) where
        G: TlbFlush + ?Sized,
        GA: FrameAllocator + ?Sized,
        O: FreeOrder,
    {
        let _section = self.lazy.section();
        let run = pte_run::<F>(table, start, end, job.high, self.space);
        let changes = self.backend.protect_ptes(run, &job.protections[0]);
        job.summary.changed[0] += changes.count();
        Invalidated::of_run(start, &changes).gather::<F, _, _, _>(job.high, gather);
    }
}

struct Job<'s> {
    /// The new leaf values by size (4K, 2M, 1G), computed once.
    protections: [NewProtection; 3],
    high: bool,
    summary: &'s mut ProtectSummary,
}

impl Job<'_> {
    fn new<F: Format>(attrs: Attributes, high: bool, summary: &mut ProtectSummary) -> Job<'_> {
        Job {
            protections: [PageSize::Size4K, PageSize::Size2M, PageSize::Size1G]
                .map(|size| NewProtection::new::<F>(size, attrs)),
            high,
            summary,
        }
    }
}
