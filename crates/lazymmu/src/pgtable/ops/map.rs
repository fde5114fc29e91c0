//! Map a physical range (`vmap_range`, `remap_pfn_range`).

use core::fmt;

use super::descend::{ptes, Slot, Slots};
use super::{covers_entry, size_slot, PageTables, RangeError, Span, Stop};
use crate::addr::{PageSize, PhysAddr, VirtAddr};
use crate::backend::Backend;
use crate::mode::LazyMode;
use crate::pgtable::allocator::FrameAllocator;
use crate::pgtable::format::{entry_shift, index, Attributes, Entry, Format};

/// What a map did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapSummary {
    /// Leaves written, by size: 4K, 2M, 1G.
    pub leaves: [u64; 3],
    /// Page-table frames allocated.
    pub tables_allocated: u64,
}

/// Why a map stopped. In every case `[va, at)` of the requested range is
/// mapped as asked and nothing after it was touched, except that page
/// tables allocated for it stay linked (they are reachable, so a zap frees
/// them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// The range or physical address was rejected; nothing was done.
    Range(RangeError),
    /// A page-table frame could not be allocated.
    OutOfFrames {
        /// First address not mapped.
        at: VirtAddr,
        /// Level of the table that could not be allocated.
        level: u8,
    },
    /// An entry in the range was already present.
    AlreadyMapped {
        /// First address not mapped: the occupied one.
        at: VirtAddr,
        /// Level of the entry in the way.
        level: u8,
    },
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapError::Range(error) => write!(f, "map refused: {error}"),
            MapError::OutOfFrames { at, level } => write!(
                f,
                "map stopped at {:#x}: no frame for a level-{level} table",
                at.0
            ),
            MapError::AlreadyMapped { at, level } => write!(
                f,
                "map stopped at {:#x}: the level-{level} entry is already present",
                at.0
            ),
        }
    }
}

impl core::error::Error for MapError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            MapError::Range(error) => Some(error),
            _ => None,
        }
    }
}

struct MapRun {
    /// `phys - va` for the (masked) virtual addresses of the run.
    delta: u64,
    /// Leaf templates per size.
    templates: [u64; 3],
    /// Largest leaf level allowed.
    largest: u8,
    high: bool,
    summary: MapSummary,
}

impl<B, L, A, F> PageTables<'_, B, L, A, F>
where
    B: Backend<Format = F> + ?Sized,
    L: LazyMode,
    A: FrameAllocator + ?Sized,
    F: Format,
{
    /// Maps `[va, va + len)` to `[phys, phys + len)` with `attrs`, using
    /// leaves up to `largest` wherever the virtual and physical addresses
    /// are aligned to it and the range covers it (`PageSize::Size4K`
    /// forces 4 KiB pages). Every entry in the range must be absent.
    ///
    /// Mapping needs no TLB invalidation (nothing was cached for absent
    /// entries), so it takes no gather.
    ///
    /// # Errors
    /// - [`MapError::Range`]: `va`, `phys` or `len` not 4 KiB aligned, or
    ///   the range not within one canonical half; nothing done.
    /// - [`MapError::OutOfFrames`]: a table could not be allocated.
    /// - [`MapError::AlreadyMapped`]: an entry in the range was present.
    ///
    /// In the last two cases `[va, at)` is mapped (see [`MapError`]).
    pub fn map(
        &self,
        va: VirtAddr,
        phys: PhysAddr,
        len: u64,
        attrs: Attributes,
        largest: PageSize,
    ) -> Result<MapSummary, MapError> {
        let span = self.span(va, len).map_err(MapError::Range)?;
        let phys_mask = F::leaf_address_mask(PageSize::Size4K) | 0xFFF;
        match phys.0.checked_add(len) {
            Some(phys_end)
                if phys.0 % 4096 == 0 && (len == 0 || (phys_end - 1) & !phys_mask == 0) => {}
            _ => return Err(MapError::Range(RangeError::BadPhysical { phys, len })),
        }
        let mut run = MapRun {
            delta: phys.0.wrapping_sub(span.start),
            templates: [
                F::leaf_template(PageSize::Size4K, attrs),
                F::leaf_template(PageSize::Size2M, attrs),
                F::leaf_template(PageSize::Size1G, attrs),
            ],
            // The largest leaf the format has that is not above `largest`.
            largest: (1..=F::LEVELS)
                .filter(|&level| F::leaf_size(level).is_some_and(|s| s.bytes() <= largest.bytes()))
                .max()
                .unwrap_or(1),
            high: span.high,
            summary: MapSummary::default(),
        };
        let Span { start, end, .. } = span;
        match self.map_level(self.root, F::LEVELS, start, end, false, &mut run) {
            Ok(()) => Ok(run.summary),
            Err(Stop::OutOfFrames { at, level }) => Err(MapError::OutOfFrames {
                at: Self::canonical(at, span.high),
                level,
            }),
            Err(Stop::Occupied { at, level } | Stop::Huge { at, level }) => {
                Err(MapError::AlreadyMapped {
                    at: Self::canonical(at, span.high),
                    level,
                })
            }
        }
    }

    fn map_level(
        &self,
        table: PhysAddr,
        level: u8,
        start: u64,
        end: u64,
        fresh: bool,
        run: &mut MapRun,
    ) -> Result<(), Stop> {
        if level == 1 {
            return self.map_ptes(table, start, end, fresh, None, run);
        }
        let span = 1u64 << entry_shift::<F>(level);
        for Slot { va, next, entry } in Slots::new::<F>(table, level, start, end) {
            let pa = va.wrapping_add(run.delta);
            // Where a table already exists (perhaps emptied by a zap), map
            // into it rather than replace it.
            let current = if fresh { 0 } else { self.read(entry) };
            if level <= run.largest
                && F::leaf_size(level).is_some()
                && covers_entry::<F>(va, next, level)
                && pa % span == 0
                && !matches!(F::decode(current, level), Entry::Table(_))
            {
                if F::is_valid(current) {
                    return Err(Stop::Occupied { at: va, level });
                }
                let size = F::leaf_size(level).expect("leaf level");
                self.write_leaf(
                    entry,
                    va,
                    run.high,
                    level,
                    run.templates[size_slot(size)] | pa,
                );
                run.summary.leaves[size_slot(size)] += 1;
            } else {
                match F::decode(current, level) {
                    Entry::Leaf { .. } => return Err(Stop::Occupied { at: va, level }),
                    Entry::Table(below) => {
                        self.map_level(below, level - 1, va, next, false, run)?
                    }
                    Entry::Absent if level == 2 => {
                        // A new PTE table is filled before it is linked:
                        // the fill cannot fail, no walker ever sees it
                        // half-built, and a table the run covers entirely
                        // needs no zeroing. The link is written inside the
                        // table's section, so that the section's close
                        // applies it with the entries (nested in a
                        // caller's section, that close is a flush).
                        let below = if covers_entry::<F>(va, next, level) {
                            self.new_frame_to_fill()
                        } else {
                            self.new_table()
                        }
                        .ok_or(Stop::OutOfFrames { at: va, level: 1 })?;
                        run.summary.tables_allocated += 1;
                        self.map_ptes(below, va, next, true, Some(entry), run)?;
                    }
                    Entry::Absent => {
                        // Upper tables are linked first, so that what is
                        // mapped below them stays reachable if a later
                        // allocation fails.
                        let below = self.new_table().ok_or(Stop::OutOfFrames {
                            at: va,
                            level: level - 1,
                        })?;
                        run.summary.tables_allocated += 1;
                        self.write_table(entry, va, run.high, level, below);
                        self.map_level(below, level - 1, va, next, true, run)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The PTE loop: one lazy section for the table. `link` is the PMD
    /// entry to point at a new table once it is filled.
    fn map_ptes(
        &self,
        table: PhysAddr,
        start: u64,
        end: u64,
        fresh: bool,
        link: Option<PhysAddr>,
        run: &mut MapRun,
    ) -> Result<(), Stop> {
        let _section = self.mmu.lazy.section();
        let template = run.templates[0];
        let first = index::<F>(start, 1);
        let count = ((end - start) >> 12) as usize;
        if fresh {
            // Known empty: one run (Linux's `set_ptes`).
            let first_entry = table.add(8 * first as u64);
            let value = template | start.wrapping_add(run.delta);
            self.mmu.backend.write_entries(
                self.update(first_entry, start, run.high, 1, value, true),
                count,
                4096,
            );
            run.summary.leaves[0] += count as u64;
            if let Some(entry) = link {
                self.write_table(entry, start, run.high, 2, table);
            }
            return Ok(());
        }
        for (i, va, entry) in ptes::<F>(table, start, end) {
            if !fresh && F::is_valid(self.read(entry)) {
                run.summary.leaves[0] += i as u64;
                return Err(Stop::Occupied { at: va, level: 1 });
            }
            self.write_leaf(
                entry,
                va,
                run.high,
                1,
                template | va.wrapping_add(run.delta),
            );
        }
        run.summary.leaves[0] += count as u64;
        Ok(())
    }
}
