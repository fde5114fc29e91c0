//! The descent every range operation shares: from a table at some level,
//! the entries a range `[start, end)` touches, in address order, each read
//! and decoded when the walk reaches it; descent into the table below an
//! entry over the entry's part of the range; the PTE level handed to the
//! operation's own loop (which opens the lazy section); and the run of
//! 4 KiB entries of a PTE table. Each operation says only what differs
//! (what it does with a leaf, a table, an absent entry, a PTE table), so
//! the walk itself is written once.

use super::{entry_end, PageTables, Stop};
use crate::addr::{PageSize, PhysAddr, VirtAddr};
use crate::backend::{Backend, TlbFlush};
use crate::mode::LazyMode;
use crate::pgtable::allocator::FrameAllocator;
use crate::pgtable::format::{index, Entry, Format};
use crate::pgtable::gather::{FreeOrder, Gather};
use crate::pgtable::memory::PageTableMemory;
use crate::pgtable::walk::canonical;

/// One entry of a table above the PTE level, as the walk meets it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Slot {
    /// The first (masked) address of the range inside this entry.
    pub va: u64,
    /// The end of the range inside this entry (the entry's end clipped to
    /// the range's).
    pub next: u64,
    /// The address of the entry.
    pub entry: PhysAddr,
}

/// What [`PageTables::descend`] meets.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Visit {
    /// The part `[start, end)` of the PTE table `table`.
    Ptes {
        /// The PTE table.
        table: PhysAddr,
        /// The first (masked) address.
        start: u64,
        /// The end of the part.
        end: u64,
    },
    /// An entry above the PTE level.
    Entry {
        /// The level of the entry's table.
        level: u8,
        /// The first (masked) address of the range inside the entry.
        va: u64,
        /// The end of the range inside the entry.
        next: u64,
        /// The address of the entry.
        entry: PhysAddr,
        /// The entry, as read when the walk reached it.
        current: Entry,
    },
    /// The walk is back from `below`, the table under the entry at `entry`
    /// (same fields as [`Visit::Entry`]).
    Ascend {
        /// The level of the entry's table.
        level: u8,
        /// The first (masked) address of the range inside the entry.
        va: u64,
        /// The end of the range inside the entry.
        next: u64,
        /// The address of the entry.
        entry: PhysAddr,
        /// The table the walk descended into.
        below: PhysAddr,
    },
}

/// The entries of `table` (at `level`) that `[start, end)` touches, in
/// address order. Reads nothing: see [`PageTables::entries`] for the
/// decoded walk.
#[derive(Clone, Debug)]
pub(crate) struct Slots {
    table: PhysAddr,
    level: u8,
    va: u64,
    end: u64,
}

impl Slots {
    pub(crate) fn new(table: PhysAddr, level: u8, start: u64, end: u64) -> Self {
        Slots {
            table,
            level,
            va: start,
            end,
        }
    }
}

impl Iterator for Slots {
    type Item = Slot;

    #[inline]
    fn next(&mut self) -> Option<Slot> {
        if self.va >= self.end {
            return None;
        }
        let va = self.va;
        let next = entry_end(va, self.level, self.end);
        self.va = next;
        Some(Slot {
            va,
            next,
            entry: self.table.add(8 * index(va, self.level) as u64),
        })
    }
}

/// The 4 KiB entries of the PTE table `table` that `[start, end)` covers,
/// as `(position in the run, va, entry address)`.
#[inline]
pub(crate) fn ptes(
    table: PhysAddr,
    start: u64,
    end: u64,
) -> impl Iterator<Item = (usize, u64, PhysAddr)> {
    let first = index(start, 1);
    let count = ((end - start) >> 12) as usize;
    (0..count).map(move |i| {
        (
            i,
            start + ((i as u64) << 12),
            table.add(8 * (first + i) as u64),
        )
    })
}

/// The contiguous 4 KiB range a PTE loop invalidated, flushed into the
/// gather as one range once the loop is done.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Invalidated(Option<(u64, u64)>);

impl Invalidated {
    /// Extends the range to the page at `va` (pages come in address order).
    #[inline]
    pub(crate) fn add(&mut self, va: u64) {
        self.0 = Some(match self.0 {
            None => (va, va + 4096),
            Some((s, _)) => (s, va + 4096),
        });
    }

    /// Adds the range, if any, to `gather` (canonical addresses in the
    /// half `high` says).
    pub(crate) fn gather<F, G, GA, O>(self, high: bool, gather: &mut Gather<'_, G, GA, O>)
    where
        F: Format,
        G: TlbFlush + ?Sized,
        GA: FrameAllocator + ?Sized,
        O: FreeOrder,
    {
        if let Some((s, e)) = self.0 {
            // The end's canonical form is taken in the half of the page
            // before it.
            gather.add_range(
                VirtAddr(canonical::<F>(s, high)),
                VirtAddr(canonical::<F>(e - 1, high) + 1),
                PageSize::Size4K,
            );
        }
    }
}

impl<F, M, B, L, A> PageTables<'_, F, M, B, L, A>
where
    F: Format,
    M: PageTableMemory + ?Sized,
    B: Backend + ?Sized,
    L: LazyMode,
    A: FrameAllocator + ?Sized,
{
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
            visit(Visit::Ptes { table, start, end })?;
            return Ok(());
        }
        for (Slot { va, next, entry }, current) in self.entries(table, level, start, end) {
            let step = visit(Visit::Entry {
                level,
                va,
                next,
                entry,
                current,
            })?;
            if let Some(below) = step {
                self.descend(below, level - 1, va, next, visit)?;
                visit(Visit::Ascend {
                    level,
                    va,
                    next,
                    entry,
                    below,
                })?;
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
        G: TlbFlush + ?Sized,
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
        Slots::new(table, level, start, end)
            .map(move |slot| (slot, F::decode(self.read(slot.entry), level)))
    }
}
