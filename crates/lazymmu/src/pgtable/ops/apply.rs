//! Apply a callback to every PTE of a range (`apply_to_page_range`,
//! `apply_to_existing_page_range`, mm/memory.c), as vmalloc and KASAN's
//! shadow populate/depopulate use it.

use core::fmt;

use super::descend::{ptes, Slot, Visit};
use super::{PageTables, RangeError, Stop};
use crate::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use crate::backend::{Backend, EntryUpdate, PteAccess, TlbFlush};
use crate::mode::LazyMode;
use crate::pgtable::allocator::FrameAllocator;
use crate::pgtable::format::{Attributes, Entry, Format};
use crate::pgtable::gather::{FreeOrder, Gather};

/// Whether [`PageTables::apply`] creates missing tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyMode {
    /// Create missing tables; the callback sees every PTE of the range
    /// (`apply_to_page_range`).
    Create,
    /// Skip ranges without tables (`apply_to_existing_page_range`).
    Existing,
}

/// What an apply did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplySummary {
    /// PTEs the callback was called for.
    pub visited: u64,
    /// Page-table frames allocated.
    pub tables_allocated: u64,
    /// Present entries the callback changed or cleared (added to the
    /// gather).
    pub invalidated: u64,
}

/// Why an apply stopped. In every case the callback has run for every PTE
/// of `[va, at)` and for none after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyError<E> {
    /// The range was rejected; nothing was done.
    Range(RangeError),
    /// A table could not be allocated ([`ApplyMode::Create`]).
    OutOfFrames {
        /// First address not visited.
        at: VirtAddr,
        /// Level of the table that could not be allocated.
        level: u8,
    },
    /// A huge leaf covers `at`: there is no PTE to apply to (Linux warns and
    /// returns `-EINVAL`).
    HugeMapping {
        /// First address not visited.
        at: VirtAddr,
        /// Level of the huge leaf.
        level: u8,
    },
    /// The callback failed at `at` (its own PTE may have been changed by
    /// it; the invalidation is gathered).
    Callback {
        /// The address whose callback failed.
        at: VirtAddr,
        /// The callback's error.
        error: E,
    },
}

impl<E: fmt::Display> fmt::Display for ApplyError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApplyError::Range(error) => write!(f, "apply refused: {error}"),
            ApplyError::OutOfFrames { at, level } => write!(
                f,
                "apply stopped at {:#x}: no frame for a level-{level} table",
                at.0
            ),
            ApplyError::HugeMapping { at, level } => write!(
                f,
                "apply stopped at {:#x}: a level-{level} huge leaf has no PTEs",
                at.0
            ),
            ApplyError::Callback { at, error } => {
                write!(
                    f,
                    "apply stopped at {:#x}: the callback failed: {error}",
                    at.0
                )
            }
        }
    }
}

impl<E: core::error::Error + 'static> core::error::Error for ApplyError<E> {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            ApplyError::Range(error) => Some(error),
            ApplyError::Callback { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// One PTE handed to an [`PageTables::apply`] callback. Writes go through
/// the backend inside the PTE table's lazy section; overwriting or clearing
/// a present entry is recorded for the gather.
pub struct PteSlot<'s, F, B: ?Sized> {
    backend: &'s B,
    update: EntryUpdate,
    value: u64,
    invalidate: bool,
    _format: core::marker::PhantomData<F>,
}

impl<F: Format, B: PteAccess + ?Sized> PteSlot<'_, F, B> {
    /// The virtual address the PTE maps.
    pub fn va(&self) -> VirtAddr {
        self.update.va
    }

    /// The physical address of the PTE.
    pub fn entry_address(&self) -> PhysAddr {
        self.update.entry
    }

    /// The address space.
    pub fn space(&self) -> SpaceId {
        self.update.space
    }

    /// The entry's value as read before the callback (or as last set by
    /// it). Inside a lazy section the backend may not have applied a write
    /// yet; this is the value the callback asked for.
    pub fn raw(&self) -> u64 {
        self.value
    }

    /// The entry, decoded.
    pub fn get(&self) -> Entry {
        F::decode(self.value, 1)
    }

    /// Maps the PTE's page to `phys` with `attrs`.
    pub fn set(&mut self, phys: PhysAddr, attrs: Attributes) {
        self.set_raw(F::encode_leaf(phys, PageSize::Size4K, attrs));
    }

    /// Writes a raw entry value.
    pub fn set_raw(&mut self, value: u64) {
        if F::is_valid(self.value) && self.value != value {
            self.invalidate = true;
        }
        self.backend.write_entry(EntryUpdate {
            value,
            valid: F::is_valid(value),
            leaf: F::is_valid(value),
            ..self.update
        });
        self.value = value;
    }

    /// Clears the entry (get-and-clear) and returns what it held.
    pub fn clear(&mut self) -> u64 {
        let old = self.backend.get_and_clear(EntryUpdate {
            value: 0,
            valid: false,
            leaf: true,
            ..self.update
        });
        if F::is_valid(old) {
            self.invalidate = true;
        }
        self.value = 0;
        old
    }
}

impl<F, B: ?Sized> core::fmt::Debug for PteSlot<'_, F, B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PteSlot")
            .field("va", &self.update.va)
            .field("value", &self.value)
            .finish()
    }
}

enum ApplyStop<E> {
    Walk(Stop),
    Callback(u64, E),
}

impl<E> From<Stop> for ApplyStop<E> {
    fn from(stop: Stop) -> Self {
        ApplyStop::Walk(stop)
    }
}

struct Job<'f, Fun> {
    mode: ApplyMode,
    high: bool,
    callback: &'f mut Fun,
    summary: ApplySummary,
}

impl<B, L, A, F> PageTables<'_, B, L, A, F>
where
    B: Backend<Format = F> + ?Sized,
    L: LazyMode,
    A: FrameAllocator + ?Sized,
    F: Format,
{
    /// Calls `callback` for every PTE of `[va, va + len)`, in order, each
    /// PTE table's run inside one lazy section; with [`ApplyMode::Create`]
    /// missing tables are created first. Present entries the callback
    /// changes or clears are added to `gather`.
    ///
    /// # Errors
    /// - [`ApplyError::Range`]: bad range, or `gather` for another space.
    /// - [`ApplyError::OutOfFrames`], [`ApplyError::HugeMapping`],
    ///   [`ApplyError::Callback`]: see [`ApplyError`].
    pub fn apply<E, G, GA, O, Fun>(
        &self,
        va: VirtAddr,
        len: u64,
        mode: ApplyMode,
        gather: &mut Gather<'_, G, GA, O>,
        mut callback: Fun,
    ) -> Result<ApplySummary, ApplyError<E>>
    where
        G: TlbFlush + ?Sized,
        GA: FrameAllocator + ?Sized,
        O: FreeOrder,
        Fun: FnMut(&mut PteSlot<'_, F, B>) -> Result<(), E>,
    {
        let span = self.span(va, len).map_err(ApplyError::Range)?;
        self.check_gather(gather).map_err(ApplyError::Range)?;
        let mut job = Job {
            mode,
            high: span.high,
            callback: &mut callback,
            summary: ApplySummary::default(),
        };
        let canonical = |at| Self::canonical(at, span.high);
        let high = span.high;
        let result = self.walk(span.start, span.end, &mut |visit| match visit {
            Visit::Ptes(table, start, end) => {
                self.apply_ptes(table, start, end, &mut job, gather)?;
                Ok(None)
            }
            Visit::Entry(level, Slot { va, entry, .. }, current) => match current {
                Entry::Absent if job.mode == ApplyMode::Existing => Ok(None),
                Entry::Leaf { .. } => Err(Stop::Huge { at: va, level }.into()),
                _ => {
                    let (below, new) = self.table_below(entry, va, high, level)?;
                    job.summary.tables_allocated += u64::from(new);
                    Ok(Some(below))
                }
            },
            Visit::Ascend(..) => Ok(None),
        });
        match result {
            Ok(()) => Ok(job.summary),
            Err(ApplyStop::Walk(Stop::OutOfFrames { at, level })) => Err(ApplyError::OutOfFrames {
                at: canonical(at),
                level,
            }),
            Err(ApplyStop::Walk(Stop::Huge { at, level } | Stop::Occupied { at, level })) => {
                Err(ApplyError::HugeMapping {
                    at: canonical(at),
                    level,
                })
            }
            Err(ApplyStop::Callback(at, error)) => Err(ApplyError::Callback {
                at: canonical(at),
                error,
            }),
        }
    }

    /// The PTE loop: one lazy section for the table.
    fn apply_ptes<E, G, GA, O, Fun>(
        &self,
        table: PhysAddr,
        start: u64,
        end: u64,
        job: &mut Job<'_, Fun>,
        gather: &mut Gather<'_, G, GA, O>,
    ) -> Result<(), ApplyStop<E>>
    where
        G: TlbFlush + ?Sized,
        GA: FrameAllocator + ?Sized,
        O: FreeOrder,
        Fun: FnMut(&mut PteSlot<'_, F, B>) -> Result<(), E>,
    {
        let _section = self.mmu.lazy.section();
        for (_, va, entry) in ptes::<F>(table, start, end) {
            let mut slot = PteSlot::<F, B> {
                backend: self.mmu.backend,
                update: self.update(entry, va, job.high, 1, 0, true),
                value: self.read(entry),
                invalidate: false,
                _format: core::marker::PhantomData,
            };
            let result = (job.callback)(&mut slot);
            job.summary.visited += 1;
            if slot.invalidate {
                gather.add_page(slot.update.va, PageSize::Size4K);
                job.summary.invalidated += 1;
            }
            if let Err(error) = result {
                return Err(ApplyStop::Callback(va, error));
            }
        }
        Ok(())
    }
}
