//! Page tables in host memory: one region of frames that is both the
//! tables' memory and their allocator, and the backend that writes it.
//!
//! [`Host`] is for programs that build or inspect page tables outside the
//! machine that will use them (a boot loader preparing a kernel's tables,
//! a tool checking a layout, an embedder's tests). Nothing on the host
//! walks these tables, so there is no TLB to invalidate: a flush has
//! nothing to do, and [`Host::flushes`] counts them so that a program can
//! see what a kernel would have flushed. Entries are written at once (the
//! lazy mode is [`Eager`]).
//!
//! ```
//! use lazymmu::prelude::*;
//! let host = Host::<X86_64>::new(PhysAddr(0x10_0000), 64);
//! let tables = host.new_tables(SpaceId(1), VaRange::Both).unwrap();
//! tables.map(VirtAddr(0x40_0000), PhysAddr(0x8000_0000), 0x20_0000,
//!            Attributes::user_data(), PageSize::Size2M).unwrap();
//! let t = tables.translate(VirtAddr(0x40_1234)).unwrap();
//! assert_eq!((t.phys, t.size), (PhysAddr(0x8000_1234), PageSize::Size2M));
//! assert_eq!(tables.verify().unwrap().leaves, [0, 1, 0]);
//! ```

use core::cell::Cell;
use core::fmt;
use core::marker::PhantomData;

use crate::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use crate::backend::{Backend, ContextSwitch, EntryUpdate, FlushScope, PteAccess, TlbFlush};
use crate::mode::eager::Eager;
use crate::mode::ArchHooks;
use crate::pgtable::allocator::HostFrameAllocator;
use crate::pgtable::format::Format;
use crate::pgtable::memory::{HostMemory, PageTableMemory};
use crate::pgtable::ops::{Mmu, OutOfFrames, PageTables, VaRange};

/// A tree of page tables in a [`Host`]'s memory.
pub type HostTables<'a, F> = PageTables<'a, Host<F>, Eager, HostFrameAllocator>;

/// A region of host memory holding page tables of format `F`: the memory,
/// the allocator of its frames (made from the same description, so neither
/// can name a frame the other does not have), and the backend over it.
pub struct Host<F> {
    memory: HostMemory,
    frames: HostFrameAllocator,
    flushes: Cell<u64>,
    _format: PhantomData<F>,
}

impl<F> fmt::Debug for Host<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Host")
            .field("memory", &self.memory)
            .field("outstanding", &self.frames.outstanding())
            .field("flushes", &self.flushes.get())
            .finish()
    }
}

impl<F: Format> Host<F> {
    /// `frames` zeroed frames from physical address `base`, every one of
    /// them free for page tables.
    ///
    /// # Panics
    /// If `base` is not 4 KiB aligned.
    pub fn new(base: PhysAddr, frames: usize) -> Self {
        Host {
            memory: HostMemory::new(base, frames),
            frames: HostFrameAllocator::new(base, frames),
            flushes: Cell::new(0),
            _format: PhantomData,
        }
    }

    /// The memory.
    pub fn memory(&self) -> &HostMemory {
        &self.memory
    }

    /// The allocator of the memory's frames (for its counts, and to inject
    /// a failure with [`HostFrameAllocator::fail_at`]).
    pub fn frames(&self) -> &HostFrameAllocator {
        &self.frames
    }

    /// TLB flushes asked for so far (ranges and whole spaces).
    pub fn flushes(&self) -> u64 {
        self.flushes.get()
    }

    /// The MMU over this memory: what [`Mmu::new_tables`] and the other
    /// constructors of trees take.
    pub fn mmu(&self) -> Mmu<'_, Self, Eager, HostFrameAllocator> {
        // SAFETY: the allocator hands out exactly the frames of
        // `self.memory` (made from the same base and count), which holds
        // nothing but page tables and which only the library writes;
        // `Eager` calls no arch hooks.
        unsafe { Mmu::new(self, &Eager, &self.frames, FlushScope::Local) }
    }

    /// A new, empty tree for address space `space` translating `range`,
    /// owning its root (see [`Mmu::new_tables`]).
    ///
    /// # Errors
    /// [`OutOfFrames`] when every frame is in use.
    ///
    /// # Panics
    /// If `range` is [`VaRange::Both`] for a format with one root per
    /// half (AArch64).
    pub fn new_tables(
        &self,
        space: SpaceId,
        range: VaRange,
    ) -> Result<HostTables<'_, F>, OutOfFrames> {
        self.mmu().new_tables(space, range)
    }
}

impl<F> PteAccess for Host<F> {
    #[inline]
    fn read_entry(&self, entry: PhysAddr) -> u64 {
        self.memory.read(entry)
    }
    #[inline]
    fn write_entry(&self, update: EntryUpdate) {
        self.memory.write(update.entry, update.value)
    }
    #[inline]
    fn get_and_clear(&self, update: EntryUpdate) -> u64 {
        self.memory.swap(update.entry, update.value)
    }
    #[inline]
    fn write_entries(&self, first: EntryUpdate, count: usize, step: u64) {
        self.memory.write_run(first.entry, count, first.value, step)
    }
}

/// Nothing on the host caches these translations: flushes are counted.
impl<F> TlbFlush for Host<F> {
    fn flush_range(&self, _: SpaceId, _: VirtAddr, _: VirtAddr, _: PageSize, _: FlushScope) {
        self.flushes.set(self.flushes.get() + 1);
    }
    fn flush_all(&self, _: SpaceId, _: FlushScope) {
        self.flushes.set(self.flushes.get() + 1);
    }
}

/// Entries are written at once: a section has nothing to defer.
impl<F> ArchHooks for Host<F> {
    fn enter(&self) {}
    fn leave(&self) {}
    fn flush(&self) {}
}

impl<F> ContextSwitch for Host<F> {}

impl<F: Format> Backend for Host<F> {
    type Format = F;
    type Memory = HostMemory;
    fn memory(&self) -> &HostMemory {
        &self.memory
    }
}
