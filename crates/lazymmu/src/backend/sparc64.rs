//! sparc64: changing a user PTE that a TLB or the TSB (the software
//! translation cache the TLB-miss handler reads) may hold requires removing
//! the page from the TSB and demapping it from every TLB using the address
//! space. In lazy MMU mode the addresses are collected in a per-CPU batch
//! of 192 and flushed with one cross-call; the section runs with preemption
//! disabled.
//!
//! Modelled on arch/sparc/mm/tlb.c (`tlb_batch_add_one`,
//! `flush_tlb_pending`, `arch_enter_lazy_mmu_mode`,
//! `arch_leave_lazy_mmu_mode`), arch/sparc/include/asm/tlbflush_64.h
//! (`TLB_BATCH_NR`, empty `flush_tlb_range`, `flush_tlb_kernel_range`) and
//! arch/sparc/mm/init_64.c (`__set_pte_at` batches only user mappings).

use core::cell::RefCell;

use super::machine::{entry_is_valid, BackendBug, CpuPrimitives, LazyFlag, PageBatch, PerCpu};
use super::{Backend, ContextSwitch, EntryUpdate, FlushScope, PteAccess, TlbFlush};
use crate::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use crate::mode::{ArchHooks, LazyState};

/// Addresses per CPU batch: `#define TLB_BATCH_NR 192`,
/// arch/sparc/include/asm/tlbflush_64.h.
pub const TLB_BATCH_NR: usize = 192;

/// The TSB and TLB operations of a sparc64 CPU.
///
/// What to count and charge (see [`super::machine::Primitive`]):
///
/// | method | counts |
/// |---|---|
/// | [`write_pte`](Sparc64Primitives::write_pte) | 1 `pte_write` |
/// | [`flush_page`](Sparc64Primitives::flush_page) | 1 `tlbi` per CPU using the space, 1 `ipi` per remote one |
/// | [`flush_batch`](Sparc64Primitives::flush_batch) | 1 `tlbi` per address per CPU using the space, 1 `ipi` per remote one |
/// | [`flush_kernel_range`](Sparc64Primitives::flush_kernel_range) | 1 `tlbi` per page per CPU, 1 `ipi` per remote CPU |
/// | [`flush_kernel_all`](Sparc64Primitives::flush_kernel_all) | 1 `full_flush` per CPU, 1 `ipi` per remote CPU |
///
/// The TSB update that goes with each address is part of its `tlbi`. The
/// saving of a batch is the cross-calls: one per remote CPU per batch
/// (`smp_flush_tlb_pending`) instead of one per remote CPU per page
/// (`smp_flush_tlb_page`). The CPUs that use an address space are the
/// machine's business (`mm_cpumask`).
pub trait Sparc64Primitives: CpuPrimitives {
    /// Stores one entry.
    fn write_pte(&self, entry: PhysAddr, value: u64);

    /// `flush_tsb_user_page` + `global_flush_tlb_page`: one page, now.
    fn flush_page(&self, space: SpaceId, va: VirtAddr, size: PageSize);

    /// `flush_tsb_user` + `smp_flush_tlb_pending`: a batch of pages of one
    /// address space and page size.
    fn flush_batch(&self, space: SpaceId, size: PageSize, pages: &[VirtAddr]);

    /// `flush_tlb_kernel_range`: kernel mappings are not batched; the
    /// caller flushes them explicitly.
    fn flush_kernel_range(&self, start: VirtAddr, end: VirtAddr);

    /// `flush_tlb_all` cross-called to every CPU: demaps every kernel
    /// translation (the gather's answer to a kernel range above the
    /// single-page ceiling). Counts: 1 `full_flush` per CPU, 1 `ipi` per
    /// remote CPU.
    ///
    /// The default flushes the kernel half page by page through
    /// [`flush_kernel_range`](Sparc64Primitives::flush_kernel_range), which
    /// is correct but costs as many pages as the half holds: an
    /// implementation with a cost model should override it.
    fn flush_kernel_all(&self) {
        self.flush_kernel_range(VirtAddr(KERNEL_START), VirtAddr(u64::MAX));
    }
}

impl<P: Sparc64Primitives + ?Sized> Sparc64Primitives for &P {
    fn write_pte(&self, entry: PhysAddr, value: u64) {
        (**self).write_pte(entry, value)
    }
    fn flush_page(&self, space: SpaceId, va: VirtAddr, size: PageSize) {
        (**self).flush_page(space, va, size)
    }
    fn flush_batch(&self, space: SpaceId, size: PageSize, pages: &[VirtAddr]) {
        (**self).flush_batch(space, size, pages)
    }
    fn flush_kernel_range(&self, start: VirtAddr, end: VirtAddr) {
        (**self).flush_kernel_range(start, end)
    }
    fn flush_kernel_all(&self) {
        (**self).flush_kernel_all()
    }
}

#[derive(Debug, Default)]
struct SparcCpu {
    /// `tb->active`.
    lazy: LazyFlag,
    batch: RefCell<PageBatch<TLB_BATCH_NR>>,
}

/// The sparc64 backend (`sparc64`).
///
/// A write that replaces a valid user entry needs the page flushed from the
/// TSB and the TLBs (`tlb_batch_add`). Outside lazy MMU mode that is one
/// `flush_page` per write. Inside it the address joins the CPU's batch,
/// which is issued early when a write for another address space or page
/// size arrives and when a 193rd address would not fit (Linux issues a
/// batch the moment it fills; the difference is only when a full batch
/// goes, never what it holds), and otherwise at flush, leave, and when the
/// gather flushes the TLB. Kernel entries are not batched: the gather
/// flushes them with `flush_kernel_range`.
#[derive(Debug)]
pub struct Sparc64<P> {
    primitives: P,
    cpus: PerCpu<SparcCpu>,
}

impl<P: Sparc64Primitives> Sparc64<P> {
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

    fn cpu(&self) -> &SparcCpu {
        self.cpus.get(self.primitives.cpu_id())
    }

    fn batching(&self) -> bool {
        !self.primitives.in_interrupt() && self.cpu().lazy.get()
    }

    /// Number of invalidations pending on the calling CPU.
    pub fn pending(&self) -> usize {
        self.cpu().batch.borrow().pages.len()
    }

    /// `flush_tlb_pending`.
    fn flush_pending(&self) {
        let batch = self.cpu().batch.borrow_mut().take();
        if !batch.pages.is_empty() {
            self.primitives
                .flush_batch(batch.space, batch.size, batch.pages.as_slice());
        }
    }

    /// `tlb_batch_add_one`.
    fn need_flush(&self, space: SpaceId, va: VirtAddr, size: PageSize) {
        loop {
            if !self.batching() {
                self.primitives.flush_page(space, va, size);
                return;
            }
            if self.cpu().batch.borrow_mut().push(space, size, va).is_ok() {
                return;
            }
            // Another address space or page size pending, or full.
            self.flush_pending();
        }
    }

    /// `set_pte_at` with `tlb_batch_add`: the store and its TLB demap (or
    /// its place in the batch) are one step that cannot be preempted, as
    /// Linux has them under the PTE lock or inside the preemption-free
    /// lazy section (arch/sparc/mm/tlb.c, `tlb_batch_add_one` works on
    /// this CPU's batch). Preempted in between, the task would leave a
    /// cleared user entry that every CPU still caches while other threads
    /// of the address space run, and their TLB flushes (which only issue
    /// their own CPU's batch) would not cover it.
    fn update(&self, update: &EntryUpdate, value: u64) -> u64 {
        self.primitives.preempt_disable();
        let old = self.primitives.read_pte(update.entry);
        self.primitives.write_pte(update.entry, value);
        if !update.kernel && entry_is_valid(old) && old != value {
            self.need_flush(update.space, update.va, update.page_size());
        }
        self.primitives.preempt_enable();
        old
    }
}

impl<P: Sparc64Primitives> ArchHooks for Sparc64<P> {
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

impl<P: Sparc64Primitives> PteAccess for Sparc64<P> {
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

impl<P: Sparc64Primitives> TlbFlush for Sparc64<P> {
    /// `tlb_flush`: user pages were batched by the writes
    /// (`flush_tlb_range` is empty on sparc64), so what is left is to issue
    /// the CPU's pending batch; kernel ranges are flushed here
    /// (`flush_tlb_kernel_range`).
    fn flush_range(
        &self,
        space: SpaceId,
        start: VirtAddr,
        end: VirtAddr,
        _stride: PageSize,
        _scope: FlushScope,
    ) {
        self.flush_pending();
        if space == SpaceId::KERNEL && start < end {
            self.primitives.flush_kernel_range(start, end);
        }
    }

    /// Issues the pending batch; for the kernel, flushes every kernel
    /// translation ([`Sparc64Primitives::flush_kernel_all`]).
    fn flush_all(&self, space: SpaceId, _scope: FlushScope) {
        self.flush_pending();
        if space == SpaceId::KERNEL {
            self.primitives.flush_kernel_all();
        }
    }
}

/// First address of the kernel's half of the address space (sparc64's
/// `VMALLOC_START` region and above, as the library lays kernels out: the
/// top half of a 64-bit space).
const KERNEL_START: u64 = 1 << 63;

impl<P: Sparc64Primitives> ContextSwitch for Sparc64<P> {
    /// Sections run with preemption off, so a switch away from one means
    /// the task slept in it: reported. The batch is issued and batching
    /// stops so nothing is lost or applied to the next task's address
    /// space.
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

impl<P: Sparc64Primitives> Backend for Sparc64<P> {
    fn name(&self) -> &'static str {
        "sparc64"
    }
}
