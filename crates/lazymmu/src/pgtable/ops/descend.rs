//! The descent every range operation shares: from a table at some level,
//! the entries a range `[start, end)` touches, in address order, each read
//! and decoded when the walk reaches it; descent into the table below an
//! entry over the entry's part of the range; the PTE level handed to the
//! operation's own loop (which opens the lazy section); and the run of
//! 4 KiB entries of a PTE table. Each operation says only what differs
//! (what it does with a leaf, a table, an absent entry, a PTE table), so
//! the walk itself is written once: the types and iterators here, the walk
//! ([`PageTables::descend`](super::PageTables::descend)) in the parent
//! module.

use crate::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use crate::backend::runs::{PteRun, RunChanges};
use crate::backend::TlbFlush;
use crate::pgtable::allocator::FrameAllocator;
use crate::pgtable::format::{entry_shift, index, Entry, Format};
use crate::pgtable::gather::{FreeOrder, Gather};
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

/// What [`PageTables::descend`](super::PageTables::descend) meets.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Visit {
    /// `Ptes(table, start, end)`: the part `[start, end)` of the PTE table
    /// `table`.
    Ptes(PhysAddr, u64, u64),
    /// `Entry(level, slot, current)`: an entry of a table at `level` above
    /// the PTE level, as read when the walk reached it.
    Entry(u8, Slot, Entry),
    /// `Ascend(level, slot, below)`: the walk is back from `below`, the
    /// table under the entry at `slot`.
    Ascend(u8, Slot, PhysAddr),
}

/// The entries of `table` (at `level`) that `[start, end)` touches, in
/// address order. Reads nothing: see [`PageTables::entries`](super::PageTables::entries) for the
/// decoded walk.
#[derive(Clone, Debug)]
pub(crate) struct Slots {
    table: PhysAddr,
    /// log2 of an entry's span at this level.
    shift: u32,
    /// Index bits of a table at this level.
    bits: u32,
    va: u64,
    end: u64,
}

impl Slots {
    pub(crate) fn new<F: Format>(table: PhysAddr, level: u8, start: u64, end: u64) -> Self {
        let shift = entry_shift::<F>(level);
        Slots {
            table,
            shift,
            bits: entry_shift::<F>(level + 1) - shift,
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
        let span = 1u64 << self.shift;
        let next = ((va | (span - 1)) + 1).min(self.end);
        self.va = next;
        let slot = (va >> self.shift) & ((1u64 << self.bits) - 1);
        Some(Slot {
            va,
            next,
            entry: self.table.add(8 * slot),
        })
    }
}

/// The 4 KiB entries of the PTE table `table` that `[start, end)` covers,
/// as `(position in the run, va, entry address)`.
#[inline]
pub(crate) fn ptes<F: Format>(
    table: PhysAddr,
    start: u64,
    end: u64,
) -> impl Iterator<Item = (usize, u64, PhysAddr)> {
    let first = index::<F>(start, 1);
    let count = ((end - start) >> 12) as usize;
    (0..count).map(move |i| {
        (
            i,
            start + ((i as u64) << 12),
            table.add(8 * (first + i) as u64),
        )
    })
}

/// The run of entries of the PTE table `table` that `[start, end)` covers,
/// in address space `space` (`high` says which canonical half).
#[inline]
pub(crate) fn pte_run<F: Format>(
    table: PhysAddr,
    start: u64,
    end: u64,
    high: bool,
    space: SpaceId,
) -> PteRun {
    one_entry::<F>(
        table.add(8 * index::<F>(start, 1) as u64),
        start,
        high,
        1,
        space,
    )
    .with_count(((end - start) >> 12) as usize)
}

/// The single entry at `entry` (level `level`) covering `va`, as a run.
#[inline]
pub(crate) fn one_entry<F: Format>(
    entry: PhysAddr,
    va: u64,
    high: bool,
    level: u8,
    space: SpaceId,
) -> PteRun {
    let va = canonical::<F>(va & !((1u64 << entry_shift::<F>(level)) - 1), high);
    PteRun {
        entry,
        va: VirtAddr(va),
        space,
        level,
        kernel: F::is_kernel(va),
        count: 1,
    }
}

/// The contiguous 4 KiB range a PTE loop invalidated, flushed into the
/// gather as one range once the loop is done.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Invalidated(Option<(u64, u64)>);

impl Invalidated {
    /// The range of the entries `changes` marks in a run from `start`.
    #[inline]
    pub(crate) fn of_run(start: u64, changes: &RunChanges) -> Self {
        Invalidated(changes.bounds().map(|(first, last)| {
            (
                start + ((first as u64) << 12),
                start + ((last as u64 + 1) << 12),
            )
        }))
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
