//! The consistency check of a tree: what every range operation promises to
//! leave behind, checked from the tables in memory.

use alloc::collections::BTreeSet;
use core::fmt;

use super::{PageTables, Span};
use crate::addr::{PhysAddr, VirtAddr};
use crate::backend::Backend;
use crate::mode::LazyMode;
use crate::pgtable::allocator::FrameAllocator;
use crate::pgtable::format::{entries, entry_shift, Entry, Format};
use crate::pgtable::memory::PageTableMemory;
use crate::pgtable::walk::canonical;

/// What [`PageTables::verify`] found in a consistent tree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeSummary {
    /// Tables, the root included, by level (index 0 unused; index
    /// `F::LEVELS` is the root's level).
    pub tables: [u64; 6],
    /// Leaves by size: 4K, 2M, 1G.
    pub leaves: [u64; 3],
}

impl TreeSummary {
    /// Tables of every level, the root included.
    pub fn table_count(&self) -> u64 {
        self.tables.iter().sum()
    }
}

/// The first inconsistency [`PageTables::verify`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerifyError {
    /// A table is linked from two entries, or from an entry and as the
    /// root: freeing one link would free a table the other still uses.
    SharedTable {
        /// The table frame.
        table: PhysAddr,
        /// The level of the entry that links it the second time.
        level: u8,
        /// The first address of that entry's span.
        va: VirtAddr,
    },
    /// A present entry that is neither a table nor a leaf the format has
    /// at its level (a table link at the PTE level, a leaf where the
    /// format has none, or a leaf whose frame is not aligned to its size).
    BadEntry {
        /// The entry's address.
        entry: PhysAddr,
        /// Its level.
        level: u8,
        /// Its value.
        raw: u64,
        /// The first address of its span.
        va: VirtAddr,
    },
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            VerifyError::SharedTable { table, level, va } => write!(
                f,
                "table {:#x} is linked twice: again from the level-{level} entry for {:#x}",
                table.0, va.0
            ),
            VerifyError::BadEntry {
                entry,
                level,
                raw,
                va,
            } => write!(
                f,
                "the level-{level} entry at {:#x} (for {:#x}) holds {raw:#x}, which does not decode",
                entry.0, va.0
            ),
        }
    }
}

impl core::error::Error for VerifyError {}

impl<B, L, A, F> PageTables<'_, B, L, A, F>
where
    B: Backend<Format = F> + ?Sized,
    L: LazyMode,
    A: FrameAllocator + ?Sized,
    F: Format,
{
    /// Checks the tree in memory: every table reachable from the root is
    /// reached once (no table linked twice, so none is shared and there
    /// is no cycle), and every present entry decodes as a table above the
    /// PTE level or as a leaf the format has at its level, its frame
    /// aligned to its size. Only the half (or halves) the tree translates
    /// is checked. For tests of embedders: what range operations promise
    /// to leave behind, after any sequence of them and of their failures.
    ///
    /// A write still batched in a lazy section is not seen.
    ///
    /// # Errors
    /// The first inconsistency, in address order ([`VerifyError`]).
    pub fn verify(&self) -> Result<TreeSummary, VerifyError> {
        let (span, _) = self.whole();
        let mut seen = BTreeSet::new();
        seen.insert(self.root.0);
        let mut summary = TreeSummary::default();
        summary.tables[usize::from(F::LEVELS)] = 1;
        self.verify_table(self.root, F::LEVELS, 0, span, &mut seen, &mut summary)?;
        Ok(summary)
    }

    fn verify_table(
        &self,
        table: PhysAddr,
        level: u8,
        base: u64,
        span: Span,
        seen: &mut BTreeSet<u64>,
        summary: &mut TreeSummary,
    ) -> Result<(), VerifyError> {
        let memory = self.mmu.backend.memory();
        let shift = entry_shift::<F>(level);
        for i in 0..entries::<F>(level) {
            let va = base | ((i as u64) << shift);
            if level == F::LEVELS && (va < span.start || va >= span.end) {
                continue;
            }
            let entry = table.add(8 * i as u64);
            let raw = memory.read(entry);
            let at = VirtAddr(canonical::<F>(va, span.high));
            let bad = VerifyError::BadEntry {
                entry,
                level,
                raw,
                va: at,
            };
            match F::decode(raw, level) {
                Entry::Absent if F::is_valid(raw) => return Err(bad),
                Entry::Absent => {}
                Entry::Table(below) if level > 1 => {
                    if !seen.insert(below.0) {
                        return Err(VerifyError::SharedTable {
                            table: below,
                            level,
                            va: at,
                        });
                    }
                    summary.tables[usize::from(level - 1)] += 1;
                    self.verify_table(below, level - 1, va, span, seen, summary)?;
                }
                Entry::Table(_) => return Err(bad),
                Entry::Leaf { phys, size, .. } => {
                    if F::leaf_size(level) != Some(size) || phys.0 % size.bytes() != 0 {
                        return Err(bad);
                    }
                    summary.leaves[super::size_slot(size)] += 1;
                }
            }
        }
        Ok(())
    }
}
