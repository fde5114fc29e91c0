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
/// | [`ipte_range`](S390Primitives::ipte_range) | 1 `ipte`, or 1 `ipte_local` with `local` (whatever the count: the quiesce is per instruction) |
/// | [`flush_space`](S390Primitives::flush_space) | 1 `full_flush` |
///
/// Model: an IPTE sets the invalid bit ([`s390::INVALID`]) of each entry
/// it covers and purges the translations of those pages from every CPU's
/// TLB (from this CPU's only with `local`); the backend then stores the new
/// values with `write_pte`. The address space's `flush_mm` flag
/// (`mm->context.flush_mm`) is machine state kept per space.
pub trait S390Primitives: CpuPrimitives {
    /// Stores one entry.
    fn write_pte(&self, entry: PhysAddr, value: u64);

    /// IPTE of one entry mapping `va` in `space`, global scope (for an
    /// upper-level entry this stands for IDTE/CRDTE, charged the same).
    fn ipte(&self, entry: PhysAddr, space: SpaceId, va: VirtAddr);

    /// IPTE of `count` (1 to [`IPTE_RANGE_MAX`]) consecutive entries of one
    /// table, the first at `first` mapping `va`: global scope, or local
    /// (`IPTE_LOCAL`, this CPU's TLB only) with `local`.
    fn ipte_range(&self, first: PhysAddr, count: usize, space: SpaceId, va: VirtAddr, local: bool);

    /// IDTE of a whole address space: every translation of `space` purged
    /// from every TLB (`__tlb_flush_mm`; `__tlb_flush_kernel` for the
    /// kernel's).
    fn flush_space(&self, space: SpaceId);

    /// Sets `space`'s `flush_mm` flag: an entry was invalidated without an
    /// IPTE, so the next `__tlb_flush_mm_lazy` must flush the space.
    fn set_flush_mm(&self, space: SpaceId);

    /// Clears `space`'s `flush_mm` flag; returns whether it was set.
    fn take_flush_mm(&self, space: SpaceId) -> bool;
}

impl<P: S390Primitives + ?Sized> S390Primitives for &P {
    fn write_pte(&self, entry: PhysAddr, value: u64) {
        (**self).write_pte(entry, value)
    }
    fn ipte(&self, entry: PhysAddr, space: SpaceId, va: VirtAddr) {
        (**self).ipte(entry, space, va)
    }
    fn ipte_range(&self, first: PhysAddr, count: usize, space: SpaceId, va: VirtAddr, local: bool) {
        (**self).ipte_range(first, count, space, va, local)
    }
    fn flush_space(&self, space: SpaceId) {
        (**self).flush_space(space)
    }
    fn set_flush_mm(&self, space: SpaceId) {
        (**self).set_flush_mm(space)
    }
    fn take_flush_mm(&self, space: SpaceId) -> bool {
        (**self).take_flush_mm(space)
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

    /// Whether the cache holds entries of the table `entry` is in.
    fn holds_table_of(&self, entry: PhysAddr) -> bool {
        self.count > 0 && entry.0 & !(TABLE_BYTES - 1) == self.table.0
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
/// Outside lazy MMU mode a change of a valid entry follows Linux's
/// `ptep_xchg_lazy` (arch/s390/mm/pgtable.c `ptep_flush_lazy`): when the
/// address space is attached to this CPU only, the entry is marked invalid
/// and stored without an IPTE and the space's `flush_mm` flag set, so the
/// next `__tlb_flush_mm_lazy` (the gather's flush, `flush_tlb_mm`,
/// `flush_tlb_range`) flushes the space with one IDTE; otherwise each such
/// change is a global IPTE. A teardown (`full`) clears without either
/// (`ptep_get_and_clear_full`).
///
/// Inside a section, as Alexander Gordeev's "s390/mm: Batch PTE updates in
/// lazy MMU mode" (v5, arch/s390/mm/lazy_mmu.c) does, writes to a PTE
/// table (level 1) go to the CPU's cache and reads of cached entries
/// return the cached value; the cache is applied at flush, leave (pause
/// too), before a write at another level, before a write over a valid
/// entry of another table (which then becomes the cached one), and when
/// the gather flushes: each run of consecutive cached entries is cut where
/// the entries in memory change between valid and invalid
/// (`count_contiguous`), every valid run gets one IPTE with the
/// additional-entries field (`__ptep_ipte_range`) — local when the space's
/// `mm_cpumask` is this CPU alone, global otherwise — and the cached values
/// are stored. A write to an invalid entry of another table needs no IPTE:
/// it is stored at once and the cache stays, so a section that fills one
/// table while it changes another (mremap's destination, fork's child)
/// keeps batching the changes.
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

    /// Applies the calling CPU's cache (`leave_ipte_range` →
    /// `set_pte_range`). What it applies was queued before, by the task
    /// that ran then.
    fn apply(&self) {
        let _on_this_cpu = self.primitives.preempt_guard();
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
        self.primitives.deferred_begin();
        // `__invalidate_pte_range`: local when this CPU alone uses the
        // space.
        let me = self.primitives.cpu_id();
        let local = self.primitives.mm_cpumask(cache.space) == crate::cpu::CpuMask::single(me);
        let mut index = 0;
        while index < ENTRIES_PER_TABLE {
            if !cache.is_pending(index) {
                index += 1;
                continue;
            }
            // A run of cached entries, cut where the entries in memory
            // change between valid and invalid (`count_contiguous`).
            let start = index;
            let entry = |i: usize| cache.table.add(i as u64 * 8);
            let valid = S390Format::is_valid(self.primitives.read_pte(entry(start)));
            index += 1;
            while index < ENTRIES_PER_TABLE
                && cache.is_pending(index)
                && index - start < IPTE_RANGE_MAX
                && S390Format::is_valid(self.primitives.read_pte(entry(index))) == valid
            {
                index += 1;
            }
            if valid {
                let va = cache.base_va.add(start as u64 * 4096);
                self.primitives
                    .ipte_range(entry(start), index - start, cache.space, va, local);
            }
            for i in start..index {
                self.primitives.write_pte(entry(i), cache.values[i]);
            }
        }
        self.primitives.deferred_end();
    }

    /// The write done now (`ptep_xchg_lazy`, `ptep_flush_lazy`): a valid
    /// entry of an address space attached to this CPU only is marked
    /// invalid and the space's `flush_mm` set; any other valid entry gets
    /// a global IPTE first. With `full` (a teardown) neither.
    fn write_now(&self, update: &EntryUpdate, value: u64, full: bool) {
        let old = self.primitives.read_pte(update.entry);
        if S390Format::is_valid(old) && !full {
            let me = self.primitives.cpu_id();
            let alone = update.space != SpaceId::KERNEL
                && self.primitives.mm_cpumask(update.space) == crate::cpu::CpuMask::single(me);
            if alone {
                self.primitives.write_pte(update.entry, old | s390::INVALID);
                self.primitives.set_flush_mm(update.space);
            } else {
                self.primitives.ipte(update.entry, update.space, update.va);
            }
        }
        self.primitives.write_pte(update.entry, value);
    }

    /// The CPU's mode and cache are used with preemption disabled: a task
    /// that migrated between looking up its CPU and using it would read
    /// another CPU's mode and cache its write where nobody applies it.
    fn update(&self, update: &EntryUpdate, value: u64, full: bool) {
        let _on_this_cpu = self.primitives.preempt_guard();
        if !update.leaf && update.level > 1 {
            // A table entry (`pmd_clear`, `pmd_populate`): a plain store
            // once what is cached is applied; unlinking a table sets
            // `flush_mm` (`pte_free_tlb`), and the gather's flush does the
            // IDTE.
            self.apply();
            let old = self.primitives.read_pte(update.entry);
            self.primitives.write_pte(update.entry, value);
            if S390Format::is_valid(old) {
                self.primitives.set_flush_mm(update.space);
            }
            return;
        }
        loop {
            if !self.batching() || update.level != 1 {
                // What is cached for this entry's table was written before
                // this: apply it first. An interrupt handler's write to
                // another table leaves the interrupted task's cache alone
                // (`this_ipte_range` finds it outside the cached range and
                // the write goes straight to the table).
                if update.level != 1 || self.cpu().cache.borrow().holds_table_of(update.entry) {
                    self.apply();
                }
                self.write_now(update, value, full);
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

    /// `__tlb_flush_mm_lazy`: one IDTE of `space` when an entry was
    /// invalidated without an IPTE or page tables are freed (`pte_free_tlb`
    /// sets `flush_mm`).
    fn flush_mm_lazy(&self, space: SpaceId, freed_tables: bool) {
        if self.primitives.take_flush_mm(space) || freed_tables {
            self.primitives.flush_space(space);
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
        let _on_this_cpu = self.primitives.preempt_guard();
        let cached = self.cpu().cache.borrow().get(entry);
        match cached {
            Some(value) => value,
            None => self.primitives.read_pte(entry),
        }
    }

    fn write_entry(&self, update: EntryUpdate) {
        self.update(&update, update.value, false);
    }

    /// The old value comes from the cache when cached; the clear is cached
    /// like any write.
    fn get_and_clear(&self, update: EntryUpdate) -> u64 {
        self.get_and_clear_full(update, false)
    }

    /// `ptep_get_and_clear_full`: in a section the clear is cached like any
    /// write (`lazy_mmu_ptep_get_and_clear` comes first); outside one a
    /// teardown clears without IPTE or `flush_mm`.
    fn get_and_clear_full(&self, update: EntryUpdate, full: bool) -> u64 {
        let old = self.read_entry(update.entry);
        self.update(&update, 0, full);
        old
    }
}

fn is_kernel(space: SpaceId) -> bool {
    space == SpaceId::KERNEL
}

impl<P: S390Primitives> TlbFlush for S390<P> {
    /// Applies the cache, then `flush_tlb_range`: `__tlb_flush_mm_lazy` for
    /// a user space (IPTEs purged the TLBs as they invalidated, so only
    /// entries changed without one need the IDTE), `__tlb_flush_kernel`
    /// for the kernel's (`flush_tlb_kernel_range`).
    fn flush_range(
        &self,
        space: SpaceId,
        _start: VirtAddr,
        _end: VirtAddr,
        _stride: PageSize,
        scope: FlushScope,
    ) {
        self.apply();
        if is_kernel(space) {
            self.primitives.flush_space(space);
        } else {
            let freed = matches!(scope, FlushScope::Mm { freed_tables: true });
            self.flush_mm_lazy(space, freed);
        }
    }

    /// Applies the cache, then `flush_tlb_mm` (`__tlb_flush_mm_lazy`; for
    /// the kernel's space, `__tlb_flush_kernel`).
    fn flush_all(&self, space: SpaceId, scope: FlushScope) {
        self.flush_range(space, VirtAddr(0), VirtAddr(0), PageSize::Size4K, scope);
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
