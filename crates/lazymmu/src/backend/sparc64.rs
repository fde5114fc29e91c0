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

use super::flush_batch::{AddressFlush, FlushBatching};
use super::machine::CpuPrimitives;
use super::EntryUpdate;
use crate::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};

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
///
/// The policy is [`FlushBatching`]'s; [`TsbFlush`] maps it onto
/// [`Sparc64Primitives`].
pub type Sparc64<P> = FlushBatching<P, TsbFlush, TLB_BATCH_NR>;

/// How [`Sparc64`] invalidates: TSB and TLB demaps of user pages, a batch at
/// a time, and kernel ranges when the gather flushes them.
#[derive(Clone, Copy, Debug, Default)]
pub struct TsbFlush;

impl<P: Sparc64Primitives> AddressFlush<P> for TsbFlush {
    type Format = crate::pgtable::format::Sparc64Sun4v;

    fn write_pte(primitives: &P, entry: PhysAddr, value: u64) {
        primitives.write_pte(entry, value);
    }

    fn flush_page(primitives: &P, space: SpaceId, va: VirtAddr, size: PageSize) {
        primitives.flush_page(space, va, size);
    }

    /// `flush_tlb_pending`.
    fn flush_pages(primitives: &P, space: SpaceId, size: PageSize, pages: &[VirtAddr]) {
        primitives.flush_batch(space, size, pages);
    }

    /// Only user entries (`__set_pte_at` calls `tlb_batch_add` for user
    /// mappings only).
    fn batches(update: &EntryUpdate) -> bool {
        !update.kernel
    }

    /// `tlb_batch_add` does nothing for a full-mm teardown (`if (!fullmm)
    /// tlb_batch_add_one(...)`, arch/sparc/mm/tlb.c): the address space's
    /// TSB and context go with it.
    fn skips_full_mm() -> bool {
        true
    }

    /// `tlb_flush`: user pages were batched by the writes
    /// (`flush_tlb_range` is empty on sparc64); kernel ranges are flushed
    /// here (`flush_tlb_kernel_range`).
    fn flush_range(primitives: &P, space: SpaceId, start: VirtAddr, end: VirtAddr) {
        if space == SpaceId::KERNEL && start < end {
            primitives.flush_kernel_range(start, end);
        }
    }

    /// For the kernel, flushes every kernel translation
    /// ([`Sparc64Primitives::flush_kernel_all`]).
    fn flush_all(primitives: &P, space: SpaceId) {
        if space == SpaceId::KERNEL {
            primitives.flush_kernel_all();
        }
    }
}

/// First address of the kernel's half of the address space (sparc64's
/// `VMALLOC_START` region and above, as the library lays kernels out: the
/// top half of a 64-bit space).
const KERNEL_START: u64 = 1 << 63;
