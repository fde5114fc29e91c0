//! Copy a range for fork (`copy_page_range`, mm/memory.c).

use core::fmt;

use super::descend::{one_entry, pte_run, ptes, Invalidated, Slot, Visit};
use super::{covers_entry, size_slot, PageTables, RangeError, Stop};
use crate::addr::{PageSize, PhysAddr, VirtAddr};
use crate::backend::runs::{self, PteRun, RunChanges};
use crate::backend::{Backend, TlbFlush};
use crate::mode::LazyMode;
use crate::pgtable::allocator::FrameAllocator;
use crate::pgtable::format::{Entry, Format};
use crate::pgtable::gather::{FreeOrder, Gather};

/// How the range being copied is shared (Linux decides per VMA with
/// `is_cow_mapping`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyKind {
    /// Private writable memory: copy-on-write. Writable leaves become
    /// read-only in parent and child; the parent's downgrade is flushed.
    Private,
    /// Shared memory: entries are copied as they are (marked clean and old
    /// in the child, as `copy_present_pte` does for shared mappings).
    Shared,
}

/// What a copy did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CopySummary {
    /// Leaves copied into the child, by size: 4K, 2M, 1G.
    pub copied: [u64; 3],
    /// Parent leaves write-protected for copy-on-write.
    pub write_protected: u64,
    /// Huge parent leaves split because the range cut them.
    pub splits: u64,
    /// Page-table frames allocated for the child.
    pub tables_allocated: u64,
}

/// Why a copy stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyError {
    /// The range was rejected, or the child is the parent; nothing was done.
    Range(RangeError),
    /// A frame could not be allocated (for a child table or a split).
    /// `[va, at)` is copied (parent downgrades in the gather); from `at`
    /// on neither tree changed, except that child tables allocated stay
    /// linked.
    OutOfFrames {
        /// First address not copied.
        at: VirtAddr,
        /// Level of the table that could not be allocated.
        level: u8,
    },
    /// The child already had an entry where the copy had to write one (a
    /// leaf, or a table where a block is to go). `[va, at)` is copied;
    /// nothing from `at` on changed.
    ChildOccupied {
        /// First address not copied.
        at: VirtAddr,
        /// Level of the child's entry in the way.
        level: u8,
    },
}

impl fmt::Display for CopyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CopyError::Range(error) => write!(f, "copy refused: {error}"),
            CopyError::OutOfFrames { at, level } => write!(
                f,
                "copy stopped at {:#x}: no frame for a level-{level} table",
                at.0
            ),
            CopyError::ChildOccupied { at, level } => write!(
                f,
                "copy stopped at {:#x}: the child's level-{level} entry is in the way",
                at.0
            ),
        }
    }
}

impl core::error::Error for CopyError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            CopyError::Range(error) => Some(error),
            _ => None,
        }
    }
}

struct Job<'c, C> {
    child: &'c C,
    kind: CopyKind,
    high: bool,
    summary: CopySummary,
}

impl<B, L, A, F> PageTables<'_, B, L, A, F>
where
    B: Backend<Format = F> + ?Sized,
    L: LazyMode,
    A: FrameAllocator + ?Sized,
    F: Format,
{
    /// Copies the leaves of `[va, va + len)` into `child` (another tree,
    /// of another address space), allocating the child's tables from its
    /// own [`Mmu`](super::Mmu) and writing its entries through its
    /// backend. For a
    /// [`CopyKind::Private`] range every writable leaf is write-protected in
    /// the parent (one [`set_wrprotect`](crate::backend::PteAccess::set_wrprotect),
    /// Linux's atomic `ptep_set_wrprotect`) and copied
    /// read-only; the parent's downgrades go into `gather`, which must be
    /// the parent's (the child's entries are new and need no flush). A huge
    /// leaf the range cuts is split in the parent first.
    ///
    /// # Errors
    /// - [`CopyError::Range`]: bad range (for the parent or, by its half,
    ///   for the child), `gather` not the parent's, or the child of the
    ///   parent's root or address space.
    /// - [`CopyError::OutOfFrames`], [`CopyError::ChildOccupied`]: see the
    ///   variants for what was done.
    pub fn copy_to<CA, G, GA, O>(
        &self,
        child: &PageTables<'_, B, L, CA, F>,
        va: VirtAddr,
        len: u64,
        kind: CopyKind,
        gather: &mut Gather<'_, G, GA, O>,
    ) -> Result<CopySummary, CopyError>
    where
        CA: FrameAllocator + ?Sized,
        G: TlbFlush + ?Sized,
        GA: FrameAllocator + ?Sized,
        O: FreeOrder,
    {
        let span = self.span(va, len).map_err(CopyError::Range)?;
        child.span(va, len).map_err(CopyError::Range)?;
        self.check_gather(gather).map_err(CopyError::Range)?;
        if child.root == self.root || child.space == self.space {
            return Err(CopyError::Range(RangeError::ChildIsParent {
                space: child.space,
            }));
        }
        let mut job = Job {
            child,
            kind,
            high: span.high,
            summary: CopySummary::default(),
        };
        let high = span.high;
        let result = self.walk(span.start, span.end, &mut |visit| match visit {
            Visit::Ptes(table, start, end) => {
                self.copy_ptes(table, start, end, &mut job, gather)?;
                Ok(None)
            }
            Visit::Entry(level, Slot { va, next, entry }, current) => match current {
                Entry::Absent => Ok(None),
                Entry::Leaf { size, .. } if covers_entry::<F>(va, next, level) => {
                    let child_table = Self::child_table(va, level, &mut job)?;
                    let child_entry = Self::entry(child_table, va, level);
                    if F::is_valid(job.child.read(child_entry)) {
                        return Err(Stop::Occupied { at: va, level });
                    }
                    self.copy_entry(entry, child_entry, va, level, size, &mut job, gather);
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
            Ok(()) => Ok(job.summary),
            Err(Stop::OutOfFrames { at, level }) => Err(CopyError::OutOfFrames {
                at: Self::canonical(at, span.high),
                level,
            }),
            Err(Stop::Occupied { at, level } | Stop::Huge { at, level }) => {
                Err(CopyError::ChildOccupied {
                    at: Self::canonical(at, span.high),
                    level,
                })
            }
        }
    }

    /// The child's table at `level` for `va`, created as needed.
    fn child_table<CA: FrameAllocator + ?Sized>(
        va: u64,
        level: u8,
        job: &mut Job<'_, PageTables<'_, B, L, CA, F>>,
    ) -> Result<PhysAddr, Stop> {
        job.child
            .ensure_table(va, job.high, level, &mut job.summary.tables_allocated)
    }

    /// Copies one present parent leaf into an empty child entry
    /// ([`runs::copy_entry`]); returns whether the parent's was
    /// write-protected.
    #[allow(clippy::too_many_arguments)]
    fn copy_entry<CA, G, GA, O>(
        &self,
        entry: PhysAddr,
        child_entry: PhysAddr,
        va: u64,
        level: u8,
        size: PageSize,
        job: &mut Job<'_, PageTables<'_, B, L, CA, F>>,
        gather: &mut Gather<'_, G, GA, O>,
    ) -> bool
    where
        CA: FrameAllocator + ?Sized,
        G: TlbFlush + ?Sized,
        GA: FrameAllocator + ?Sized,
        O: FreeOrder,
    {
        let parent = one_entry::<F>(entry, va, job.high, level, self.space);
        let child = one_entry::<F>(child_entry, va, job.high, level, job.child.space);
        let (copied, downgraded) = runs::copy_entry::<F, _, _>(
            self.mmu.backend,
            job.child.mmu.backend,
            &parent,
            &child,
            0,
            job.kind,
        );
        job.summary.copied[size_slot(size)] += u64::from(copied);
        if downgraded {
            job.summary.write_protected += 1;
            gather.add_page(Self::canonical(va, job.high), size);
        }
        downgraded
    }

    /// The PTE loop: one lazy section for the parent's table and the
    /// child's, the run handed to the backend whole
    /// ([`Backend::copy_ptes`]).
    fn copy_ptes<CA, G, GA, O>(
        &self,
        table: PhysAddr,
        start: u64,
        end: u64,
        job: &mut Job<'_, PageTables<'_, B, L, CA, F>>,
        gather: &mut Gather<'_, G, GA, O>,
    ) -> Result<(), Stop>
    where
        CA: FrameAllocator + ?Sized,
        G: TlbFlush + ?Sized,
        GA: FrameAllocator + ?Sized,
        O: FreeOrder,
    {
        // Allocate the child's table before any change, and only if the
        // parent's has something to copy.
        let any = ptes::<F>(table, start, end).any(|(_, _, entry)| F::is_valid(self.read(entry)));
        if !any {
            return Ok(());
        }
        let child_table = Self::child_table(start, 1, job)?;
        let changes = {
            let _section = self.mmu.lazy.section();
            let parent = pte_run::<F>(table, start, end, job.high, self.space);
            let child = pte_run::<F>(child_table, start, end, job.high, job.child.space);
            self.copy_run(parent, child, job)
        };
        job.summary.copied[0] += changes.copied;
        job.summary.write_protected += changes.count();
        // The gather keeps one extent per page size, so the pages
        // write-protected add as the range from the first to the last.
        Invalidated::of_run(start, &changes).gather::<F, _, _, _>(job.high, gather);
        match changes.stopped {
            Some(i) => Err(Stop::Occupied {
                at: start + ((i as u64) << 12),
                level: 1,
            }),
            None => Ok(()),
        }
    }

    /// Copies the run `parent` into `child` through the backend's run
    /// path ([`Backend::copy_ptes`]) when both trees are on one backend,
    /// as Linux's fork is on one machine; otherwise entry by entry, the
    /// child's entries through the child's backend
    /// ([`runs::copy_ptes_across`]).
    fn copy_run<CA: FrameAllocator + ?Sized>(
        &self,
        parent: PteRun,
        child: PteRun,
        job: &Job<'_, PageTables<'_, B, L, CA, F>>,
    ) -> RunChanges {
        let child_backend = job.child.mmu.backend;
        if core::ptr::addr_eq(self.mmu.backend, child_backend) {
            self.mmu.backend.copy_ptes(parent, child, job.kind)
        } else {
            runs::copy_ptes_across::<F, _, _>(
                self.mmu.backend,
                child_backend,
                parent,
                child,
                job.kind,
            )
        }
    }
}
