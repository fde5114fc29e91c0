//! Change protection (`change_protection`, mm/mprotect.c).

use core::fmt;

use super::descend::{one_entry, pte_run, Invalidated, Slot, Visit};
use super::{covers_entry, size_slot, PageTables, RangeError, Stop};
use crate::addr::{PageSize, PhysAddr, VirtAddr};
use crate::backend::runs::{self, NewProtection};
use crate::backend::{Backend, TlbFlush};
use crate::mode::LazyMode;
use crate::pgtable::allocator::FrameAllocator;
use crate::pgtable::format::{Entry, Format, Protection};
use crate::pgtable::gather::{FreeOrder, Gather};

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
        /// Level of the table the split needed.
        level: u8,
    },
}

impl fmt::Display for ProtectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtectError::Range(error) => write!(f, "protect refused: {error}"),
            ProtectError::OutOfFrames { at, level } => write!(
                f,
                "protect stopped at {:#x}: no frame for the level-{level} table of a split",
                at.0
            ),
        }
    }
}

impl core::error::Error for ProtectError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            ProtectError::Range(error) => Some(error),
            ProtectError::OutOfFrames { .. } => None,
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
    /// Changes the permissions of every present leaf in `[va, va + len)`
    /// as `protection` says, keeping everything else (the frame,
    /// cacheability, global, accessed and dirty bits, and every permission
    /// `protection` leaves as [`None`]), as Linux's `change_protection`
    /// (mm/mprotect.c) rewrites each entry with `pte_modify`. Unlike
    /// [`PageTables::map`], which writes complete [`Attributes`], a
    /// protection change never makes a kernel page a user page unless
    /// asked to ([`Protection::user`]).
    ///
    /// Only leaves whose entry changes are touched: a huge leaf the range
    /// cuts is split only if its permissions change, so a protection that
    /// changes nothing writes nothing, splits nothing, needs no frame and
    /// adds nothing to `gather`. The entries of a PTE table the range
    /// covers go to the backend as one run
    /// ([`Backend::protect_ptes`]); per entry (its default, and a huge
    /// leaf) each changed entry is rewritten with the backend's
    /// [`modify_prot_start`](crate::backend::PteAccess::modify_prot_start)
    /// and [`modify_prot_commit`](crate::backend::PteAccess::modify_prot_commit),
    /// as `change_pte_range` does, so a dirty bit set by hardware meanwhile
    /// is not lost; every changed entry is added to `gather`.
    ///
    /// [`Attributes`]: crate::pgtable::format::Attributes
    ///
    /// # Errors
    /// - [`ProtectError::Range`]: bad range, or `gather` for another space.
    /// - [`ProtectError::OutOfFrames`]: a split needed a frame.
    pub fn protect<G, GA, O>(
        &self,
        va: VirtAddr,
        len: u64,
        protection: Protection,
        gather: &mut Gather<'_, G, GA, O>,
    ) -> Result<ProtectSummary, ProtectError>
    where
        G: TlbFlush + ?Sized,
        GA: FrameAllocator + ?Sized,
        O: FreeOrder,
    {
        let span = self.span(va, len).map_err(ProtectError::Range)?;
        self.check_gather(gather).map_err(ProtectError::Range)?;
        let mut summary = ProtectSummary::default();
        let mut job = Job {
            protection,
            pte_protection: NewProtection::new::<F>(1, protection),
            high: span.high,
            summary: &mut summary,
        };
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
                    let raw = self.read(entry);
                    if F::protect_leaf(raw, level, job.protection) == raw {
                        // Nothing to change in the part the range cuts.
                        Ok(None)
                    } else {
                        self.split_into(entry, va, high, level, gather, &mut job.summary.splits)
                    }
                }
                Entry::Table(below) => Ok(Some(below)),
            },
            Visit::Ascend(..) => Ok(None),
        });
        match result {
            Ok(()) => Ok(summary),
            Err(Stop::OutOfFrames { at, level }) => Err(ProtectError::OutOfFrames {
                at: Self::canonical(at, span.high),
                level,
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
        let protection = NewProtection::new::<F>(level, job.protection);
        let changed = runs::protect_entry::<F, _>(self.mmu.backend, &run, 0, &protection);
        job.summary.changed[size_slot(size)] += u64::from(changed);
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
        let _section = self.mmu.lazy.section();
        let run = pte_run::<F>(table, start, end, job.high, self.space);
        let changes = self.mmu.backend.protect_ptes(run, &job.pte_protection);
        job.summary.changed[0] += changes.count();
        Invalidated::of_run(start, &changes).gather::<F, _, _, _>(job.high, gather);
    }
}

struct Job<'s> {
    protection: Protection,
    /// The protection of 4 KiB leaves, as PTE runs take it.
    pte_protection: NewProtection,
    high: bool,
    summary: &'s mut ProtectSummary,
}
