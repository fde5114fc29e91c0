//! s390: changing a valid PTE requires an IPTE (Invalidate Page Table
//! Entry) first, which may quiesce the whole machine. IPTE can invalidate
//! up to 256 consecutive entries of one page table at once ("additional
//! entries"), so in lazy MMU mode the new values of one PTE table are kept
//! in a per-CPU cache and applied with one multi-entry IPTE per run at
//! flush or leave, or when a write that needs an IPTE arrives for another
//! table. Reads are served from the cache.
//!
//! Follows Alexander Gordeev's "s390/mm: Batch PTE updates in lazy MMU
//! mode" (RFC March 2026, v3 June 2026, linux-s390/linux-mm), with the
//! IPTE semantics of the z/Architecture Principles of Operation
//! (SA22-7832, "INVALIDATE PAGE TABLE ENTRY", additional-entries field).

use core::cell::RefCell;

use super::machine::{CpuPrimitives, LazyFlag, PerCpu};
use super::{Backend, ContextSwitch, EntryUpdate, FlushScope, PteAccess, TlbFlush};
use crate::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use crate::mode::{ArchHooks, LazyState};
use crate::pgtable::format::{s390, Format, S390 as S390Format};

/// Entries one IPTE may invalidate: the instruction's range covers up to
/// 256 entries and must not cross a page table (an s390 page table has 256
/// entries, PoP SA22-7832 "INVALIDATE PAGE TABLE ENTRY").
pub const IPTE_RANGE_MAX: usize = 256;

/// Entries in one page table ([`s390::PAGE_ENTRIES`], `_PAGE_ENTRIES`);
/// the cache holds one table.
pub const ENTRIES_PER_TABLE: usize = s390::PAGE_ENTRIES;

const TABLE_BYTES: u64 = (ENTRIES_PER_TABLE * 8) as u64;

/// The IPTE operations of an s390 CPU.
///
/// What to count and charge (see [`super::machine::Primitive`]):
///
/// | method | counts |
/// |---|---|
/// | [`write_pte`](S390Primitives::write_pte) | 1 `pte_write` |
/// | [`ipte`](S390Primitives::ipte) | 1 `ipte` |
/// | [`ipte_range`](S390Primitives::ipte_range) | 1 `ipte` (whatever the count: the quiesce is per instruction) |
/// | [`flush_space`](S390Primitives::flush_space) | 1 `full_flush` |
///
/// Model: an IPTE sets the invalid bit ([`s390::INVALID`]) of each entry
/// it covers and purges the translations of those pages from every CPU's
/// TLB; the backend then stores the new values with `write_pte`.
pub trait S390Primitives: CpuPrimitives {
    /// Stores one entry.
    fn write_pte(&self, entry: PhysAddr, value: u64);

    /// IPTE of one entry mapping `va` in `space` (for an upper-level entry
    /// this stands for IDTE/CRDTE, charged the same).
    fn ipte(&self, entry: PhysAddr, space: SpaceId, va: VirtAddr);

    /// IPTE of `count` (1 to [`IPTE_RANGE_MAX`]) consecutive entries of one
    /// table, the first at `first` mapping `va`.
    fn ipte_range(&self, first: PhysAddr, count: usize, space: SpaceId, va: VirtAddr);

    /// IDTE of a whole address space: every translation of `space` purged
    /// from every TLB.
    fn flush_space(&self, space: SpaceId);
}

impl<P: S390Primitives + ?Sized> S390Primitives for &P {
    fn write_pte(&self, entry: PhysAddr, value: u64) {
        (**self).write_pte(entry, value)
    }
    fn ipte(&self, entry: PhysAddr, space: SpaceId, va: VirtAddr) {
        (**self).ipte(entry, space, va)
    }
    fn ipte_range(&self, first: PhysAddr, count: usize, space: SpaceId, va: VirtAddr) {
        (**self).ipte_range(first, count, space, va)
    }
    fn flush_space(&self, space: SpaceId) {
        (**self).flush_space(space)
    }
}

/// The cached PTE table of one CPU.
#[derive(Clone, Debug)]
struct PteCache {
    /// Physical address of the cached table.
    table: PhysAddr,
    /// Address space and first virtual address the table maps.
    space: SpaceId,
    base_va: VirtAddr,
    values: [u64; ENTRIES_PER_TABLE],
    /// Bit i set: `values[i]` is pending.
    pending: [u64; ENTRIES_PER_TABLE / 64],
    count: usize,
}

impl Default for PteCache {
    fn default() -> Self {
        Self {
            table: PhysAddr(0),
            space: SpaceId::KERNEL,
            base_va: VirtAddr(0),
            values: [0; ENTRIES_PER_TABLE],
            pending: [0; ENTRIES_PER_TABLE / 64],
            count: 0,
        }
    }
}

impl PteCache {
    fn index_of(&self, entry: PhysAddr) -> Option<usize> {
        if self.count == 0 || entry.0 & !(TABLE_BYTES - 1) != self.table.0 {
            return None;
        }
        Some(((entry.0 & (TABLE_BYTES - 1)) / 8) as usize)
    }

    fn is_pending(&self, index: usize) -> bool {
        self.pending[index / 64] & (1 << (index % 64)) != 0
    }

    fn get(&self, entry: PhysAddr) -> Option<u64> {
        let index = self.index_of(entry)?;
        self.is_pending(index).then(|| self.values[index])
    }

    /// Stores a pending value; false when the entry belongs to another
    /// table than the one cached.
    fn put(&mut self, update: &EntryUpdate, value: u64) -> bool {
        let table = PhysAddr(update.entry.0 & !(TABLE_BYTES - 1));
        let index = ((update.entry.0 & (TABLE_BYTES - 1)) / 8) as usize;
        if self.count == 0 {
            self.table = table;
            self.space = update.space;
            self.base_va = VirtAddr(update.va.0.wrapping_sub(index as u64 * 4096));
        } else if table != self.table {
            return false;
        }
        if !self.is_pending(index) {
            self.pending[index / 64] |= 1 << (index % 64);
            self.count += 1;
        }
        self.values[index] = value;
        true
    }
}

#[derive(Debug, Default)]
struct S390Cpu {
    lazy: LazyFlag,
    cache: RefCell<PteCache>,
}

/// The s390 IPTE-batching backend (`s390`).
///
/// Outside lazy MMU mode a write over a valid entry is one IPTE and a
/// store. Inside it, writes to a PTE table (level 1) go to the CPU's cache
/// and reads of cached entries return the cached value; the cache is
/// applied — one IPTE per run of consecutive cached entries (at most 256)
/// of which at least one was valid, then the stores — at flush, leave
/// (pause too), before a write at another level, before a write over a
/// valid entry of another table (which then becomes the cached one), and
/// when the gather flushes. A write to an invalid entry of another table
/// needs no IPTE: it is stored at once and the cache stays, so a section
/// that fills one table while it changes another (mremap's destination,
/// fork's child) keeps batching the changes.
///
/// ```
/// use lazymmu::addr::{PhysAddr, SpaceId, VirtAddr};
/// use lazymmu::backend::machine::Primitive;
/// use lazymmu::backend::recording::Recording;
/// use lazymmu::backend::s390::S390;
/// use lazymmu::backend::{EntryUpdate, PteAccess};
/// use lazymmu::mode::{counters::Counters, LazyMode, MisusePolicy};
///
/// let machine = Recording::new();
/// let update = |i: u64, value: u64| EntryUpdate {
///     entry: PhysAddr(0x2000 + i * 8),
///     va: VirtAddr(i << 12),
///     space: SpaceId(1),
///     level: 1,
///     value,
///     kernel: false,
///     valid: value & 1 != 0,
///     leaf: true,
/// };
/// for i in 0..16 {
///     machine.set_memory(update(i, 0).entry, 0x8000_0003 + (i << 12));
/// }
/// let s390 = S390::new(&machine);
/// let mode = Counters::new(&machine, &s390, MisusePolicy::Panic);
/// {
///     let _section = mode.section();
///     for i in 0..16 {
///         s390.write_entry(update(i, 0x8000_0001 + (i << 12))); // write-protect
///     }
///     // Served from the cache; memory still has the old value.
///     assert_eq!(s390.read_entry(update(3, 0).entry), 0x8000_3001);
/// }
/// assert_eq!(machine.count(Primitive::Ipte), 1); // one IPTE for 16 entries
/// ```
#[derive(Debug)]
pub struct S390<P> {
    primitives: P,
    cpus: PerCpu<S390Cpu>,
}

impl<P: S390Primitives> S390<P> {
    /// The backend over a CPU's primitives.
    pub fn new(primitives: P) -> Self {
        Self {
            primitives,
            cpus: PerCpu::default(),
        }
    }

    /// The primitives.
    pub fn primitives(&self) -> &P {
        &self.primitives
    }

    fn cpu(&self) -> &S390Cpu {
        self.cpus.current(&self.primitives)
    }

    fn batching(&self) -> bool {
        !self.primitives.in_interrupt() && self.cpu().lazy.get()
    }

    /// Number of entries cached on the calling CPU.
    pub fn cached(&self) -> usize {
        self.cpu().cache.borrow().count
    }

    /// Applies the calling CPU's cache.
    fn apply(&self) {
        let cache = {
            let mut cache = self.cpu().cache.borrow_mut();
            if cache.count == 0 {
                return;
            }
            let taken = cache.clone();
            cache.count = 0;
            cache.pending = [0; ENTRIES_PER_TABLE / 64];
            taken
        };
        // Invalidate: one IPTE per run of consecutive pending entries, cut
        // at IPTE_RANGE_MAX, when any entry of the run is valid now.
        let mut index = 0;
        while index < ENTRIES_PER_TABLE {
            if !cache.is_pending(index) {
                index += 1;
                continue;
            }
            let start = index;
            let mut any_valid = false;
            while index < ENTRIES_PER_TABLE
                && cache.is_pending(index)
                && index - start < IPTE_RANGE_MAX
            {
                let entry = cache.table.add(index as u64 * 8);
                any_valid |= S390Format::is_valid(self.primitives.read_pte(entry));
                index += 1;
            }
            if any_valid {
                let first = cache.table.add(start as u64 * 8);
                let va = cache.base_va.add(start as u64 * 4096);
                let count = index - start;
                if count == 1 {
                    self.primitives.ipte(first, cache.space, va);
                } else {
                    self.primitives.ipte_range(first, count, cache.space, va);
                }
            }
        }
        // Store the new values.
        for (index, value) in cache.values.iter().enumerate() {
            if cache.is_pending(index) {
                self.primitives
                    .write_pte(cache.table.add(index as u64 * 8), *value);
            }
        }
    }

    /// The write done now: IPTE first when the entry is valid.
    fn write_now(&self, update: &EntryUpdate, value: u64) {
        if S390Format::is_valid(self.primitives.read_pte(update.entry)) {
            self.primitives.ipte(update.entry, update.space, update.va);
        }
        self.primitives.write_pte(update.entry, value);
    }

    fn update(&self, update: &EntryUpdate, value: u64) {
        loop {
            if !self.batching() || update.level != 1 {
                // Whatever is cached was written before this: apply it
                // first (it may be a table this write is about to free).
                self.apply();
                self.write_now(update, value);
                return;
            }
            if self.cpu().cache.borrow_mut().put(update, value) {
                return;
            }
            // Another table. An entry that is invalid now needs no IPTE:
            // a plain store, and the cached table stays cached (the
            // destination of mremap, the child of fork).
            if !S390Format::is_valid(self.primitives.read_pte(update.entry)) {
                self.primitives.write_pte(update.entry, value);
                return;
            }
            self.apply();
        }
    }
}

impl<P: S390Primitives> ArchHooks for S390<P> {
    fn enter(&self) {
        self.cpu().lazy.enter(&self.primitives);
    }

    fn leave(&self) {
        self.apply();
        self.cpu().lazy.leave(&self.primitives);
    }

    fn flush(&self) {
        self.apply();
    }
}

impl<P: S390Primitives> PteAccess for S390<P> {
    /// The cached value when the entry is cached on this CPU, memory
    /// otherwise.
    fn read_entry(&self, entry: PhysAddr) -> u64 {
        let cached = self.cpu().cache.borrow().get(entry);
        match cached {
            Some(value) => value,
            None => self.primitives.read_pte(entry),
        }
    }

    fn write_entry(&self, update: EntryUpdate) {
        self.update(&update, update.value);
    }

    /// The old value comes from the cache when cached; the clear is cached
    /// like any write.
    fn get_and_clear(&self, update: EntryUpdate) -> u64 {
        let old = self.read_entry(update.entry);
        self.update(&update, 0);
        old
    }
}

impl<P: S390Primitives> TlbFlush for S390<P> {
    /// IPTE purges the TLBs as it invalidates, so a range flush only has
    /// to apply the cache (`flush_tlb_range` on s390 flushes the mm only
    /// when a lazy `ptep_xchg` left it marked, which this backend never
    /// does).
    fn flush_range(
        &self,
        _space: SpaceId,
        _start: VirtAddr,
        _end: VirtAddr,
        _stride: PageSize,
        _scope: FlushScope,
    ) {
        self.apply();
    }

    /// Applies the cache, then IDTE of the space (`__tlb_flush_mm`).
    fn flush_all(&self, space: SpaceId, _scope: FlushScope) {
        self.apply();
        self.primitives.flush_space(space);
    }
}

impl<P: S390Primitives> ContextSwitch for S390<P> {
    /// The cache is per CPU: apply it before another task runs here, so it
    /// is neither lost nor applied under another address space.
    fn switch_out(&self, _prev: LazyState) {
        if self.cpu().lazy.get() {
            self.apply();
            self.cpu().lazy.clear();
        }
    }

    /// Caching resumes if the incoming task is in a section.
    fn switch_in(&self, next: LazyState) {
        if next.is_active() {
            self.enter();
        }
    }
}

impl<P: S390Primitives> Backend for S390<P> {
    type Format = S390Format;
    type Memory = P::Memory;
    fn memory(&self) -> &P::Memory {
        self.primitives.memory()
    }
}
