//! powerpc book3s64 with the hash MMU: changing a PTE that may have a
//! hash-page-table entry requires invalidating that entry. In lazy MMU mode
//! the invalidations are collected in a per-CPU batch of 192 and issued
//! together; the section runs with preemption disabled.
//!
//! Modelled on arch/powerpc/mm/book3s64/hash_tlb.c (`hpte_need_flush`,
//! `__flush_tlb_pending`, `hash__tlb_flush`) and
//! arch/powerpc/include/asm/book3s/64/tlbflush-hash.h
//! (`PPC64_TLB_BATCH_NR`, `arch_enter_lazy_mmu_mode`,
//! `arch_leave_lazy_mmu_mode`).

use core::cell::RefCell;

use super::machine::{entry_is_valid, BackendBug, CpuPrimitives, LazyFlag, PageBatch, PerCpu};
use super::{Backend, ContextSwitch, EntryUpdate, FlushScope, PteAccess, TlbFlush};
use crate::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use crate::mode::{ArchHooks, LazyState};

/// Invalidations per CPU batch: `#define PPC64_TLB_BATCH_NR 192`,
/// arch/powerpc/include/asm/book3s/64/tlbflush-hash.h.
pub const PPC64_TLB_BATCH_NR: usize = 192;

/// The hash-MMU operations of a powerpc CPU.
///
/// What to count and charge (see [`super::machine::Primitive`]):
///
/// | method | counts |
/// |---|---|
/// | [`write_pte`](PpcHashPrimitives::write_pte) | 1 `pte_write` |
/// | [`flush_hash_page`](PpcHashPrimitives::flush_hash_page) | 1 `hash_invalidate` |
/// | [`flush_hash_range`](PpcHashPrimitives::flush_hash_range) | 1 `hash_invalidate` per address |
///
/// Each call also carries a fixed cost the model should charge once per
/// call, whatever its length: taking the hash bucket locks and the
/// `eieio; tlbsync; ptesync` that completes the `tlbie`s (native), or the
/// `H_BULK_REMOVE` hypercall that takes four entries at a time (pSeries
/// LPAR). That fixed cost is what batching saves. `tlbie` is broadcast, so
/// an invalidation reaches every CPU's TLB.
pub trait PpcHashPrimitives: CpuPrimitives {
    /// Stores one entry (`pte_update`).
    fn write_pte(&self, entry: PhysAddr, value: u64);

    /// `flush_hash_page`: invalidates the hash entry and TLB entries of one
    /// page now.
    fn flush_hash_page(&self, space: SpaceId, va: VirtAddr, size: PageSize);

    /// `flush_hash_range`: invalidates a batch of pages of one address
    /// space and page size in one go.
    fn flush_hash_range(&self, space: SpaceId, size: PageSize, pages: &[VirtAddr]);
}

impl<P: PpcHashPrimitives + ?Sized> PpcHashPrimitives for &P {
    fn write_pte(&self, entry: PhysAddr, value: u64) {
        (**self).write_pte(entry, value)
    }
    fn flush_hash_page(&self, space: SpaceId, va: VirtAddr, size: PageSize) {
        (**self).flush_hash_page(space, va, size)
    }
    fn flush_hash_range(&self, space: SpaceId, size: PageSize, pages: &[VirtAddr]) {
        (**self).flush_hash_range(space, size, pages)
    }
}

#[derive(Debug, Default)]
struct PpcCpu {
    /// `batch->active`.
    lazy: LazyFlag,
    batch: RefCell<PageBatch<PPC64_TLB_BATCH_NR>>,
}

/// The powerpc hash-MMU backend (`ppc-hash`).
///
/// A write that replaces a valid entry needs its hash entry invalidated
/// (`hpte_need_flush`; Linux tracks whether a hash entry exists with
/// `_PAGE_HASHPTE`, which this model approximates by "the old entry was
/// valid"). Outside lazy MMU mode that is one `flush_hash_page` per write.
/// Inside it the address joins the CPU's batch, which is issued early when
/// a write for another address space or page size arrives and when a 193rd
/// address would not fit (Linux issues a batch the moment it fills; the
/// difference is only when a full batch goes, never what it holds), and
/// otherwise at flush, leave, and when the gather flushes the TLB.
#[derive(Debug)]
pub struct PpcHash<P> {
    primitives: P,
    cpus: PerCpu<PpcCpu>,
}

impl<P: PpcHashPrimitives> PpcHash<P> {
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

    fn cpu(&self) -> &PpcCpu {
        self.cpus.get(self.primitives.cpu_id())
    }

    fn batching(&self) -> bool {
        !self.primitives.in_interrupt() && self.cpu().lazy.get()
    }

    /// Number of invalidations pending on the calling CPU.
    pub fn pending(&self) -> usize {
        self.cpu().batch.borrow().pages.len()
    }

    /// `__flush_tlb_pending`: one page goes by `flush_hash_page`, more by
    /// `flush_hash_range`.
    fn flush_pending(&self) {
        let batch = self.cpu().batch.borrow_mut().take();
        match batch.pages.as_slice() {
            [] => {}
            [va] => self
                .primitives
                .flush_hash_page(batch.space, *va, batch.size),
            pages => self
                .primitives
                .flush_hash_range(batch.space, batch.size, pages),
        }
    }

    /// `hpte_need_flush`.
    fn need_flush(&self, space: SpaceId, va: VirtAddr, size: PageSize) {
        loop {
            if !self.batching() {
                self.primitives.flush_hash_page(space, va, size);
                return;
            }
            if self.cpu().batch.borrow_mut().push(space, size, va).is_ok() {
                return;
            }
            // Another address space or page size pending, or full.
            self.flush_pending();
        }
    }

    /// `pte_update`: the store and its hash invalidation (or its place in
    /// the batch) are one step that cannot be preempted, as Linux has them
    /// under the PTE lock or inside the lazy section, both preemption-free
    /// (`hpte_need_flush` "must be called from within some kind of
    /// spinlock/non-preempt region", arch/powerpc/mm/book3s64/hash_tlb.c).
    /// Preempted in between, the task would leave a cleared entry whose
    /// translation every CPU still holds while other tasks run, and their
    /// TLB flushes (which only issue their own CPU's batch, the hash
    /// invalidations being done at update time) would not cover it.
    fn update(&self, update: &EntryUpdate, value: u64) -> u64 {
        self.primitives.preempt_disable();
        let old = self.primitives.read_pte(update.entry);
        self.primitives.write_pte(update.entry, value);
        if entry_is_valid(old) && old != value {
            self.need_flush(update.space, update.va, update.page_size());
        }
        self.primitives.preempt_enable();
        old
    }
}

impl<P: PpcHashPrimitives> ArchHooks for PpcHash<P> {
    /// Preemption off, then batching on.
    fn enter(&self) {
        self.primitives.preempt_disable();
        if !self.cpu().lazy.set() {
            self.primitives.report(BackendBug::DoubleEnter);
        }
    }

    /// Issue the batch, batching off, preemption back on.
    fn leave(&self) {
        self.flush_pending();
        if !self.cpu().lazy.clear() {
            self.primitives.report(BackendBug::LeaveOutside);
        }
        self.primitives.preempt_enable();
    }

    fn flush(&self) {
        self.flush_pending();
    }
}

impl<P: PpcHashPrimitives> PteAccess for PpcHash<P> {
    fn read_entry(&self, entry: PhysAddr) -> u64 {
        self.primitives.read_pte(entry)
    }

    fn write_entry(&self, update: EntryUpdate) {
        self.update(&update, update.value);
    }

    fn get_and_clear(&self, update: EntryUpdate) -> u64 {
        self.update(&update, 0)
    }
}

impl<P: PpcHashPrimitives> TlbFlush for PpcHash<P> {
    /// `hash__tlb_flush`: the hash invalidations already cover the TLB
    /// (`hash__flush_tlb_range` is empty); what is left is to issue the
    /// CPU's pending batch, so the promise holds when this returns.
    fn flush_range(
        &self,
        _space: SpaceId,
        _start: VirtAddr,
        _end: VirtAddr,
        _stride: PageSize,
        _scope: FlushScope,
    ) {
        self.flush_pending();
    }

    fn flush_all(&self, _space: SpaceId, _scope: FlushScope) {
        self.flush_pending();
    }
}

impl<P: PpcHashPrimitives> ContextSwitch for PpcHash<P> {
    /// Sections run with preemption off, so a switch away from one means
    /// the task slept in it: reported. As powerpc's `__switch_to` does, the
    /// batch is issued and batching stops so nothing is lost or applied to
    /// the next task's address space.
    fn switch_out(&self, _prev: LazyState) {
        if self.cpu().lazy.get() {
            self.primitives.report(BackendBug::SwitchInSection);
            self.flush_pending();
            self.cpu().lazy.clear();
        }
    }

    /// Batching resumes if the incoming task is in a section.
    fn switch_in(&self, next: LazyState) {
        if next.is_active() {
            self.cpu().lazy.set();
        }
    }
}

impl<P: PpcHashPrimitives> Backend for PpcHash<P> {
    fn name(&self) -> &'static str {
        "ppc-hash"
    }
}
