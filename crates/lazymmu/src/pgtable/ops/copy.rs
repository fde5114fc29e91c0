//! Copy a range for fork (`copy_page_range`, mm/memory.c).

use super::descend::{one_entry, pte_run, ptes, Invalidated, Slot, Visit};
use super::{check_range, covers_entry, size_slot, PageTables, RangeError, Stop};
use crate::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use crate::backend::runs;
use crate::backend::{Backend, TlbFlush};
use crate::mode::LazyMode;
use crate::pgtable::allocator::FrameAllocator;
use crate::pgtable::format::{Entry, Format};
use crate::pgtable::gather::{FreeOrder, Gather};
use crate::pgtable::memory::PageTableMemory;

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
    },
    /// The child already had an entry where the copy had to write one (a
    /// leaf, or a table where a block is to go). `[va, at)` is copied;
    /// nothing from `at` on changed.
    ChildOccupied {
        /// First address not copied.
        at: VirtAddr,
    },
}

struct Job {
    child: PhysAddr,
    child_space: SpaceId,
    kind: CopyKind,
    high: bool,
    summary: CopySummary,
}

impl<F, M, B, L, A> PageTables<'_, F, M, B, L, A>
where
    F: Format,
    M: PageTableMemory + ?Sized,
    B: Backend<Format = F> + ?Sized,
    L: LazyMode,
    A: FrameAllocator + ?Sized,
{
    /// Copies the leaves of `[va, va + len)` into the tree at `child`
    /// (address space `child_space`), allocating the child's tables. For a
    /// [`CopyKind::Private`] range every writable leaf is write-protected in
    /// the parent (get-and-clear, then write, as `ptep_set_wrprotect`
    /// must be atomic against hardware dirty-bit updates) and copied
    /// read-only; the parent's downgrades go into `gather`, which must be
    /// the parent's (the child's entries are new and need no flush). A huge
    /// leaf the range cuts is split in the parent first.
    ///
    /// # Errors
    /// - [`CopyError::Range`]: bad range, `gather` not the parent's, or the
    ///   child root is the parent's.
    /// - [`CopyError::OutOfFrames`], [`CopyError::ChildOccupied`]: see the
    ///   variants for what was done.
    ///
    /// # Safety
    /// `child` is a root as [`PageTables::new`] requires, over this tree's
    /// memory and allocator.
    pub unsafe fn copy_to<G, GA, O>(
        &self,
        child: PhysAddr,
        child_space: SpaceId,
        va: VirtAddr,
        len: u64,
        kind: CopyKind,
        gather: &mut Gather<'_, G, GA, O>,
    ) -> Result<CopySummary, CopyError>
    where
        G: TlbFlush + ?Sized,
        GA: FrameAllocator + ?Sized,
        O: FreeOrder,
    {
        let span = check_range::<F>(va, len).map_err(CopyError::Range)?;
        self.check_gather(gather).map_err(CopyError::Range)?;
        if child == self.root || child_space == self.space {
            return Err(CopyError::Range(RangeError::WrongSpace));
        }
        let mut job = Job {
            child,
            child_space,
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
                    let child_table = self.child_table(va, level, &mut job)?;
                    let child_entry = Self::entry(child_table, va, level);
                    if F::is_valid(self.read(child_entry)) {
                        return Err(Stop::Occupied(va));
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
            Err(Stop::OutOfFrames(at)) => Err(CopyError::OutOfFrames {
                at: Self::canonical(at, span.high),
            }),
            Err(Stop::Occupied(at) | Stop::Huge(at)) => Err(CopyError::ChildOccupied {
                at: Self::canonical(at, span.high),
            }),
        }
    }

    /// The child's table at `level` for `va`, created as needed.
    fn child_table(&self, va: u64, level: u8, job: &mut Job) -> Result<PhysAddr, Stop> {
        // SAFETY: `copy_to`'s caller vouched for the child root.
        let child = unsafe { self.with_root(job.child, job.child_space) };
        let table = child.ensure_table(job.child, va, job.high, level);
        job.summary.tables_allocated += child.tables_allocated.get();
        table
    }

    /// Copies one present parent leaf into an empty child entry
    /// ([`runs::copy_entry`]); returns whether the parent's was
    /// write-protected.
    #[allow(clippy::too_many_arguments)]
    fn copy_entry<G, GA, O>(
        &self,
        entry: PhysAddr,
        child_entry: PhysAddr,
        va: u64,
        level: u8,
        size: PageSize,
        job: &mut Job,
        gather: &mut Gather<'_, G, GA, O>,
    ) -> bool
    where
        G: TlbFlush + ?Sized,
        GA: FrameAllocator + ?Sized,
        O: FreeOrder,
    {
        let parent = one_entry::<F>(entry, va, job.high, level, self.space);
        let child = one_entry::<F>(child_entry, va, job.high, level, job.child_space);
        let (copied, downgraded) =
            runs::copy_entry::<F, _>(self.backend, &parent, &child, 0, job.kind);
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
    fn copy_ptes<G, GA, O>(
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
        // Allocate the child's table before any change, and only if the
        // parent's has something to copy.
        let any = ptes::<F>(table, start, end).any(|(_, _, entry)| F::is_valid(self.read(entry)));
        if !any {
            return Ok(());
        }
        let child_table = self.child_table(start, 1, job)?;
        let changes = {
            let _section = self.lazy.section();
            let parent = pte_run::<F>(table, start, end, job.high, self.space);
            let child = pte_run::<F>(child_table, start, end, job.high, job.child_space);
            self.backend.copy_ptes(parent, child, job.kind)
        };
        job.summary.copied[0] += changes.copied;
        job.summary.write_protected += changes.count();
        // The gather keeps one extent per page size, so the pages
        // write-protected add as the range from the first to the last.
        Invalidated::of_run(start, &changes).gather::<F, _, _, _>(job.high, gather);
        match changes.stopped {
            Some(i) => Err(Stop::Occupied(start + ((i as u64) << 12))),
            None => Ok(()),
        }
    }
}
