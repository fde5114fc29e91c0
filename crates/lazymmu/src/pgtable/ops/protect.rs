//! Change protection (`change_protection`, mm/mprotect.c).

use super::descend::{ptes, Invalidated, Slot, Visit};
use super::{check_range, covers_entry, size_slot, PageTables, RangeError, Stop};
use crate::addr::{PageSize, PhysAddr, VirtAddr};
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
        let current = self.read(entry);
        if !F::is_valid(current) || job.target(size, current) == current {
            return false;
        }
        let old = self
            .backend
            .modify_prot_start(self.update(entry, va, job.high, level, 0, true));
        if !F::is_valid(old) {
            return false;
        }
        let new = job.target(size, old);
        self.backend
            .modify_prot_commit(self.update(entry, va, job.high, level, new, true));
        job.summary.changed[size_slot(size)] += 1;
        true
    }

    /// The PTE loop: one lazy section for the table.
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
        let mut range = Invalidated::default();
        for (_, va, entry) in ptes::<F>(table, start, end) {
            if self.protect_entry(entry, va, 1, PageSize::Size4K, job) {
                range.add(va);
            }
        }
        range.gather::<F, _, _, _>(job.high, gather);
    }
}

struct Job<'s> {
    /// Leaf templates by size (4K, 2M, 1G) and by the old entry's dirty
    /// and accessed bits (index `dirty * 2 + accessed`), computed once.
    templates: [[u64; 4]; 3],
    /// Address bits by size.
    address: [u64; 3],
    dirty_bit: u64,
    accessed_bit: u64,
    high: bool,
    summary: &'s mut ProtectSummary,
}

impl Job<'_> {
    fn new<F: Format>(attrs: Attributes, high: bool, summary: &mut ProtectSummary) -> Job<'_> {
        let sizes = [PageSize::Size4K, PageSize::Size2M, PageSize::Size1G];
        let templates = sizes.map(|size| {
            [(false, false), (false, true), (true, false), (true, true)].map(|(dirty, accessed)| {
                F::leaf_template(
                    size,
                    Attributes {
                        dirty,
                        accessed,
                        ..attrs
                    },
                )
            })
        });
        Job {
            templates,
            address: sizes.map(F::leaf_address_mask),
            dirty_bit: F::DIRTY_BIT,
            accessed_bit: F::ACCESSED_BIT,
            high,
            summary,
        }
    }

    /// The leaf `old` with the new attributes and its own dirty and
    /// accessed bits.
    #[inline]
    fn target(&self, size: PageSize, old: u64) -> u64 {
        let slot = size_slot(size);
        let status =
            usize::from(old & self.dirty_bit != 0) * 2 + usize::from(old & self.accessed_bit != 0);
        self.templates[slot][status] | (old & self.address[slot])
    }
}
