//! Move a range within an address space (`move_page_tables`,
//! mm/mremap.c).

use core::fmt;

use super::descend::{pte_run, ptes, Invalidated, Slot, Visit};
use super::{covers_entry, entry_end, size_slot, PageTables, RangeError, Stop};
use crate::addr::{PhysAddr, VirtAddr};
use crate::backend::{Backend, TlbFlush};
use crate::mode::LazyMode;
use crate::pgtable::allocator::FrameAllocator;
use crate::pgtable::format::{entry_shift, Entry, Format};
use crate::pgtable::gather::{FreeOrder, Gather};

/// What a move did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MoveSummary {
    /// Leaves moved, by size: 4K, 2M, 1G.
    pub moved: [u64; 3],
    /// Huge source leaves split (cut by the range, or the destination not
    /// aligned for them).
    pub splits: u64,
    /// Page-table frames allocated for the destination.
    pub tables_allocated: u64,
}

/// Why a move stopped. In the last two cases `[from, at)` has moved to
/// `[to, to + (at - from))` (the invalidations of the old addresses are in
/// the gather) and nothing from `at` on changed, except that destination
/// tables allocated stay linked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoveError {
    /// A range was rejected; nothing was done.
    Range(RangeError),
    /// The source and destination ranges overlap; nothing was done.
    Overlap,
    /// A frame could not be allocated (a destination table or a split).
    OutOfFrames {
        /// First source address not moved.
        at: VirtAddr,
        /// Level of the table that could not be allocated.
        level: u8,
    },
    /// The destination of the source address `at` was already mapped.
    DestinationOccupied {
        /// First source address not moved.
        at: VirtAddr,
        /// Level of the destination entry in the way.
        level: u8,
    },
}

impl fmt::Display for MoveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MoveError::Range(error) => write!(f, "move refused: {error}"),
            MoveError::Overlap => f.write_str("move refused: the source and destination overlap"),
            MoveError::OutOfFrames { at, level } => write!(
                f,
                "move stopped at {:#x}: no frame for a level-{level} table",
                at.0
            ),
            MoveError::DestinationOccupied { at, level } => write!(
                f,
                "move stopped at {:#x}: the destination's level-{level} entry is in the way",
                at.0
            ),
        }
    }
}

impl core::error::Error for MoveError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            MoveError::Range(error) => Some(error),
            _ => None,
        }
    }
}

struct Job {
    /// `to - from`, on masked addresses.
    delta: u64,
    high: bool,
    summary: MoveSummary,
}

impl<B, L, A, F> PageTables<'_, B, L, A, F>
where
    B: Backend<Format = F> + ?Sized,
    L: LazyMode,
    A: FrameAllocator + ?Sized,
    F: Format,
{
    /// Moves the leaves of `[from, from + len)` to `[to, to + len)` in the
    /// same tree: each source leaf is cleared (get-and-clear, keeping the
    /// dirty bit the hardware set) and written at the destination, which
    /// must be empty; the old addresses are invalidated through `gather`.
    /// A huge leaf moves whole when the range covers it and the destination
    /// is aligned for it, its old address flushed at once
    /// (`move_huge_pmd`, mm/huge_memory.c), and is split otherwise.
    ///
    /// # Errors
    /// - [`MoveError::Range`]: a bad range, the two ranges in different
    ///   halves, or `gather` for another space.
    /// - [`MoveError::Overlap`]: the ranges overlap.
    /// - [`MoveError::OutOfFrames`], [`MoveError::DestinationOccupied`]: see
    ///   [`MoveError`] for what was done.
    pub fn move_range<G, GA, O>(
        &self,
        from: VirtAddr,
        to: VirtAddr,
        len: u64,
        gather: &mut Gather<'_, G, GA, O>,
    ) -> Result<MoveSummary, MoveError>
    where
        G: TlbFlush + ?Sized,
        GA: FrameAllocator + ?Sized,
        O: FreeOrder,
    {
        let source = self.span(from, len).map_err(MoveError::Range)?;
        let target = self.span(to, len).map_err(MoveError::Range)?;
        self.check_gather(gather).map_err(MoveError::Range)?;
        if source.high != target.high {
            return Err(MoveError::Range(RangeError::OutOfRange { va: to, len }));
        }
        if source.start < target.end && target.start < source.end {
            return Err(MoveError::Overlap);
        }
        let mut job = Job {
            delta: target.start.wrapping_sub(source.start),
            high: source.high,
            summary: MoveSummary::default(),
        };
        let high = source.high;
        let result = self.walk(source.start, source.end, &mut |visit| match visit {
            Visit::Ptes(table, start, end) => {
                self.move_ptes(table, start, end, &mut job, gather)?;
                Ok(None)
            }
            Visit::Entry(level, Slot { va, next, entry }, current) => match current {
                Entry::Absent => Ok(None),
                Entry::Leaf { size, .. }
                    if covers_entry::<F>(va, next, level)
                        && va.wrapping_add(job.delta) % (1u64 << entry_shift::<F>(level)) == 0 =>
                {
                    if let Some(target) = self.destination(va, level, &mut job)? {
                        let old = self.clear(entry, va, high, level);
                        self.write_leaf(target, va.wrapping_add(job.delta), high, level, old);
                        // `move_huge_pmd` flushes the old address at once
                        // (`flush_pmd_tlb_range`), as `move_ptes` flushes
                        // each extent.
                        gather.flush_page_now(Self::canonical(va, high), size);
                        job.summary.moved[size_slot(size)] += 1;
                        Ok(None)
                    } else {
                        self.split_into(entry, va, high, level, gather, &mut job.summary.splits)
                    }
                }
                Entry::Leaf { .. } => {
                    self.split_into(entry, va, high, level, gather, &mut job.summary.splits)
                }
                Entry::Table(below) => Ok(Some(below)),
            },
            Visit::Ascend(..) => Ok(None),
        });
        match result {
            Ok(()) => Ok(job.summary),
            Err(Stop::OutOfFrames { at, level }) => Err(MoveError::OutOfFrames {
                at: Self::canonical(at, source.high),
                level,
            }),
            Err(Stop::Occupied { at, level } | Stop::Huge { at, level }) => {
                Err(MoveError::DestinationOccupied {
                    at: Self::canonical(at, source.high),
                    level,
                })
            }
        }
    }

    /// The destination entry for source `va` at `level`: its table is
    /// created as needed. `Ok(None)` when the destination holds a table at
    /// that level (the source leaf must then be split); a present leaf (or
    /// a huge leaf above) stops the move at `va`.
    fn destination(&self, va: u64, level: u8, job: &mut Job) -> Result<Option<PhysAddr>, Stop> {
        let dst = va.wrapping_add(job.delta);
        let table = self
            .ensure_table(dst, job.high, level, &mut job.summary.tables_allocated)
            .map_err(|stop| stop.at(va))?;
        let entry = Self::entry(table, dst, level);
        match F::decode(self.read(entry), level) {
            Entry::Absent => Ok(Some(entry)),
            Entry::Table(_) if level > 1 => Ok(None),
            _ => Err(Stop::Occupied { at: va, level }),
        }
    }

    /// The PTE loop, per extent (the source PTE table cut at the
    /// destination's PTE-table boundary, as Linux's `move_page_tables`):
    /// the destination table is made to exist first, outside the section
    /// (a backend that batches writes may not show a just-linked table to a
    /// read inside it), then one lazy section moves the extent, and the
    /// old addresses are flushed before the next extent, as `move_ptes`
    /// does (`flush_tlb_range(vma, old_end - len, old_end)` when it moved a
    /// present entry, mm/mremap.c).
    fn move_ptes<G, GA, O>(
        &self,
        table: PhysAddr,
        start: u64,
        end: u64,
        job: &mut Job,
        gather: &mut Gather<'_, G, GA, O>,
    ) -> Result<(), Stop>
    where
        G: TlbFlush + ?Sized,
        GA: FrameAllocator + ?Sized,
        O: FreeOrder,
    {
        let mut extent = start;
        while extent < end {
            let dst = extent.wrapping_add(job.delta);
            let extent_end = (extent + (entry_end::<F>(dst, 2, u64::MAX) - dst)).min(end);
            self.move_extent(table, extent, extent_end, job, gather)?;
            extent = extent_end;
        }
        Ok(())
    }

    fn move_extent<G, GA, O>(
        &self,
        table: PhysAddr,
        start: u64,
        end: u64,
        job: &mut Job,
        gather: &mut Gather<'_, G, GA, O>,
    ) -> Result<(), Stop>
    where
        G: TlbFlush + ?Sized,
        GA: FrameAllocator + ?Sized,
        O: FreeOrder,
    {
        let Some((_, first_va, _)) =
            ptes::<F>(table, start, end).find(|&(_, _, entry)| F::is_valid(self.read(entry)))
        else {
            return Ok(());
        };
        let dst_table = self
            .ensure_table(
                first_va.wrapping_add(job.delta),
                job.high,
                1,
                &mut job.summary.tables_allocated,
            )
            .map_err(|stop| stop.at(first_va))?;
        let changes = {
            let _section = self.mmu.lazy.section();
            let from = pte_run::<F>(table, first_va, end, job.high, self.space);
            let dst = first_va.wrapping_add(job.delta);
            let to = pte_run::<F>(dst_table, dst, dst + (end - first_va), job.high, self.space);
            self.mmu.backend.move_ptes(from, to)
        };
        job.summary.moved[0] += changes.count();
        Invalidated::of_run(first_va, &changes).gather::<F, _, _, _>(job.high, gather);
        gather.flush();
        match changes.stopped {
            Some(i) => Err(Stop::Occupied {
                at: first_va + ((i as u64) << 12),
                level: 1,
            }),
            None => Ok(()),
        }
    }
}
