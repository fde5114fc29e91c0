//! The policy powerpc's hash MMU and sparc64 share: a write that replaces a
//! valid entry owes an invalidation of its page, and in lazy MMU mode the
//! page addresses are collected in a per-CPU batch of one address space
//! and page size, issued together; sections run with preemption disabled.
//!
//! [`FlushBatching`] is that policy; an [`AddressFlush`] says what differs
//! between the architectures: how one page and a batch are invalidated,
//! which updates are batched, and what a TLB flush does besides issuing the
//! batch. [`ppc_hash::PpcHash`](super::ppc_hash::PpcHash) and
//! [`sparc64::Sparc64`](super::sparc64::Sparc64) are this type over their
//! primitives.
//!
//! Modelled on arch/powerpc/mm/book3s64/hash_tlb.c (`hpte_need_flush`,
//! `__flush_tlb_pending`) and arch/sparc/mm/tlb.c (`tlb_batch_add_one`,
//! `flush_tlb_pending`), whose `arch_enter_lazy_mmu_mode` and
//! `arch_leave_lazy_mmu_mode` are the same code.

use core::cell::RefCell;
use core::marker::PhantomData;

use super::machine::{BackendBug, CpuPrimitives, LazyFlag, PageBatch, PerCpu};
use super::{Backend, ContextSwitch, EntryUpdate, FlushScope, PteAccess, TlbFlush};
use crate::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use crate::mode::{ArchHooks, LazyState};
use crate::pgtable::format::Format;

/// What an architecture that batches page invalidations supplies to
/// [`FlushBatching`]: its primitives `P` and how the policy maps onto them.
pub trait AddressFlush<P: CpuPrimitives> {
    /// The page-table format of the architecture ([`Backend::Format`]).
    type Format: crate::pgtable::format::Format;

    /// Stores one entry.
    fn write_pte(primitives: &P, entry: PhysAddr, value: u64);

    /// Invalidates one page now (outside lazy MMU mode, or in interrupt
    /// context).
    fn flush_page(primitives: &P, space: SpaceId, va: VirtAddr, size: PageSize);

    /// Issues a batch: `pages` (never empty) of one address space and page
    /// size.
    fn flush_pages(primitives: &P, space: SpaceId, size: PageSize, pages: &[VirtAddr]);

    /// Whether replacing the valid entry of `update` owes an invalidation
    /// here. The default: every entry.
    fn batches(update: &EntryUpdate) -> bool {
        let _ = update;
        true
    }

    /// Whether the old value `old` of an entry at `level` may be cached
    /// where an invalidation must reach it. The default: a leaf (a table
    /// pointer is not translated by the TLB or the TSB: `pmd_clear` queues
    /// nothing).
    fn cached(old: u64, level: u8) -> bool {
        matches!(
            <Self::Format as Format>::decode(old, level),
            crate::pgtable::format::Entry::Leaf { .. }
        )
    }

    /// Bits of the old value a write-protect keeps (`pte_update` changes
    /// only the bits it is told to). The default: none beyond the new
    /// value.
    fn kept_by_wrprotect(old: u64) -> u64 {
        let _ = old;
        0
    }

    /// Whether clearing an entry while the whole address space is torn
    /// down (`fullmm`) owes no invalidation. The default: it does.
    fn skips_full_mm() -> bool {
        false
    }

    /// The rest of [`TlbFlush::flush_range`] once the pending batch is
    /// issued. The default: nothing.
    fn flush_range(primitives: &P, space: SpaceId, start: VirtAddr, end: VirtAddr) {
        let _ = (primitives, space, start, end);
    }

    /// The rest of [`TlbFlush::flush_all`] once the pending batch is
    /// issued. The default: nothing.
    fn flush_all(primitives: &P, space: SpaceId) {
        let _ = (primitives, space);
    }
}

/// One CPU's state: the lazy flag (powerpc's `batch->active`, sparc64's
/// `tb->active`) and the batch.
#[derive(Debug, Default)]
struct BatchCpu<const N: usize> {
    lazy: LazyFlag,
    batch: RefCell<PageBatch<N>>,
}

/// A backend that batches page invalidations `N` to a CPU, as `A`
/// describes, over primitives `P`.
///
/// A write that replaces a valid entry `A` batches needs its page
/// invalidated. Outside lazy MMU mode (and in interrupt context) that is one
/// [`AddressFlush::flush_page`] per write. Inside it the address joins the
/// CPU's batch, which is issued early when a write for another address
/// space or page size arrives and when an address beyond `N` would not fit
/// (Linux issues a batch the moment it fills; the difference is only when a
/// full batch goes, never what it holds), and otherwise at flush, leave,
/// and when the gather flushes the TLB.
#[derive(Debug)]
pub struct FlushBatching<P, A, const N: usize> {
    primitives: P,
    cpus: PerCpu<BatchCpu<N>>,
    arch: PhantomData<A>,
}

impl<P: CpuPrimitives, A: AddressFlush<P>, const N: usize> FlushBatching<P, A, N> {
    /// The backend over a CPU's primitives.
    pub fn new(primitives: P) -> Self {
        Self {
            primitives,
            cpus: PerCpu::default(),
            arch: PhantomData,
        }
    }

    /// The primitives.
    pub fn primitives(&self) -> &P {
        &self.primitives
    }

    fn cpu(&self) -> &BatchCpu<N> {
        self.cpus.current(&self.primitives)
    }

    fn batching(&self) -> bool {
        !self.primitives.in_interrupt() && self.cpu().lazy.get()
    }

    /// Number of invalidations pending on the calling CPU.
    pub fn pending(&self) -> usize {
        self.cpu().batch.borrow().pages.len()
    }

    /// Issues the calling CPU's batch (`__flush_tlb_pending`,
    /// `flush_tlb_pending`).
    fn flush_pending(&self) {
        let batch = self.cpu().batch.borrow_mut().take();
        if !batch.pages.is_empty() {
            self.primitives.deferred_begin();
            A::flush_pages(
                &self.primitives,
                batch.space,
                batch.size,
                batch.pages.as_slice(),
            );
            self.primitives.deferred_end();
        }
    }

    /// Issues the calling CPU's batch when it holds addresses of `space`:
    /// a flush of one space owes nothing of another's batch (an interrupt
    /// handler's kernel flush leaves the interrupted task's batch alone,
    /// as `flush_tlb_kernel_range` does on both architectures).
    fn flush_pending_of(&self, space: SpaceId) {
        let pending = {
            let batch = self.cpu().batch.borrow();
            !batch.pages.is_empty() && batch.space == space
        };
        if pending {
            self.flush_pending();
        }
    }

    /// `hpte_need_flush`, `tlb_batch_add_one`.
    fn need_flush(&self, space: SpaceId, va: VirtAddr, size: PageSize) {
        loop {
            if !self.batching() {
                A::flush_page(&self.primitives, space, va, size);
                return;
            }
            if self.cpu().batch.borrow_mut().push(space, size, va).is_ok() {
                return;
            }
            // Another address space or page size pending, or full.
            self.flush_pending();
        }
    }

    /// `pte_update` with `hpte_need_flush` (powerpc), `set_pte_at` with
    /// `tlb_batch_add` (sparc64): the store and its invalidation (or its
    /// place in this CPU's batch) are one step that cannot be preempted, as
    /// Linux has them under the PTE lock or inside the preemption-free lazy
    /// section (`hpte_need_flush` "must be called from within some kind of
    /// spinlock/non-preempt region", arch/powerpc/mm/book3s64/hash_tlb.c).
    /// Preempted in between, the task would leave a cleared entry that
    /// every CPU still caches while other tasks run, and their TLB flushes
    /// (which only issue their own CPU's batch, the invalidations being
    /// made at update time) would not cover it.
    fn update(&self, update: &EntryUpdate, value: u64) -> u64 {
        self.update_owing(update, value, true)
    }

    /// [`Self::update`], where `owes` false skips the invalidation (a
    /// full-mm teardown on an architecture that needs none then).
    fn update_owing(&self, update: &EntryUpdate, value: u64, owes: bool) -> u64 {
        let _not_preemptible = self.primitives.preempt_guard();
        let old = self.primitives.read_pte(update.entry);
        A::write_pte(&self.primitives, update.entry, value);
        if owes && A::batches(update) && A::cached(old, update.level) && old != value {
            self.need_flush(update.space, update.va, update.page_size());
        }
        old
    }
}

impl<P: CpuPrimitives, A: AddressFlush<P>, const N: usize> ArchHooks for FlushBatching<P, A, N> {
    /// Preemption off, then batching on.
    fn enter(&self) {
        self.primitives.preempt_disable();
        self.cpu().lazy.enter(&self.primitives);
    }

    /// Issue the batch, batching off, preemption back on.
    fn leave(&self) {
        self.flush_pending();
        self.cpu().lazy.leave(&self.primitives);
        self.primitives.preempt_enable();
    }

    fn flush(&self) {
        self.flush_pending();
    }
}

impl<P: CpuPrimitives, A: AddressFlush<P>, const N: usize> PteAccess for FlushBatching<P, A, N> {
    fn read_entry(&self, entry: PhysAddr) -> u64 {
        self.primitives.read_pte(entry)
    }

    fn write_entry(&self, update: EntryUpdate) {
        self.update(&update, update.value);
    }

    fn get_and_clear(&self, update: EntryUpdate) -> u64 {
        self.update(&update, 0)
    }

    fn get_and_clear_full(&self, update: EntryUpdate, full: bool) -> u64 {
        self.update_owing(&update, 0, !(full && A::skips_full_mm()))
    }

    /// One update of the entry (`pte_update` on powerpc, `set_pte_at` on
    /// sparc64), keeping what the architecture keeps of the old value.
    fn set_wrprotect(&self, update: EntryUpdate) -> u64 {
        let old = self.primitives.read_pte(update.entry);
        self.update(&update, update.value | A::kept_by_wrprotect(old))
    }
}

impl<P: CpuPrimitives, A: AddressFlush<P>, const N: usize> TlbFlush for FlushBatching<P, A, N> {
    /// The writes batched the invalidations, so the range itself needs
    /// nothing more (`flush_tlb_range` is empty on both architectures):
    /// issue the CPU's pending batch, so the promise holds when this
    /// returns, then [`AddressFlush::flush_range`].
    fn flush_range(
        &self,
        space: SpaceId,
        start: VirtAddr,
        end: VirtAddr,
        _stride: PageSize,
        _scope: FlushScope,
    ) {
        self.flush_pending_of(space);
        A::flush_range(&self.primitives, space, start, end);
    }

    /// Issues the pending batch, then [`AddressFlush::flush_all`].
    fn flush_all(&self, space: SpaceId, _scope: FlushScope) {
        self.flush_pending_of(space);
        A::flush_all(&self.primitives, space);
    }
}

impl<P: CpuPrimitives, A: AddressFlush<P>, const N: usize> ContextSwitch
    for FlushBatching<P, A, N>
{
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

impl<P: CpuPrimitives, A: AddressFlush<P>, const N: usize> Backend for FlushBatching<P, A, N> {
    type Format = A::Format;
    type Memory = P::Memory;
    fn memory(&self) -> &P::Memory {
        self.primitives.memory()
    }
}
