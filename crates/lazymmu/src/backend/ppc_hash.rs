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

use super::flush_batch::{AddressFlush, FlushBatching};
use super::machine::CpuPrimitives;
use crate::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};

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

/// The powerpc hash-MMU backend (`ppc-hash`).
///
/// A write that replaces an entry with a hash-table entry needs that entry
/// invalidated: `hash__pte_update` calls `hpte_need_flush` only when the old
/// PTE has `H_PAGE_HASHPTE` ([`HASHPTE`](crate::pgtable::format::ppc_hash::HASHPTE)),
/// which the hash-fault handler sets when it inserts one, so only pages
/// that were touched owe an invalidation. Outside lazy MMU mode that is one
/// `flush_hash_page` per write.
/// Inside it the address joins the CPU's batch, which is issued early when
/// a write for another address space or page size arrives and when a 193rd
/// address would not fit (Linux issues a batch the moment it fills; the
/// difference is only when a full batch goes, never what it holds), and
/// otherwise at flush, leave, and when the gather flushes the TLB.
///
/// The policy is [`FlushBatching`]'s; [`HashFlush`] maps it onto
/// [`PpcHashPrimitives`].
pub type PpcHash<P> = FlushBatching<P, HashFlush, PPC64_TLB_BATCH_NR>;

/// How [`PpcHash`] invalidates: hash entries, a batch at a time.
///
/// `hash__tlb_flush` only issues the pending batch: the hash invalidations
/// already cover the TLB (`hash__flush_tlb_range` is empty), so the TLB
/// flush hooks keep their defaults.
#[derive(Clone, Copy, Debug, Default)]
pub struct HashFlush;

impl<P: PpcHashPrimitives> AddressFlush<P> for HashFlush {
    type Format = crate::pgtable::format::PpcHash4K;

    fn write_pte(primitives: &P, entry: PhysAddr, value: u64) {
        primitives.write_pte(entry, value);
    }

    fn flush_page(primitives: &P, space: SpaceId, va: VirtAddr, size: PageSize) {
        primitives.flush_hash_page(space, va, size);
    }

    /// `H_PAGE_HASHPTE`: the hash-fault handler inserted a hash entry
    /// (`hash__pte_update`).
    fn cached(old: u64, _level: u8) -> bool {
        old & crate::pgtable::format::ppc_hash::HASHPTE != 0
    }

    /// `ptep_set_wrprotect` is `pte_update(mm, addr, ptep, _PAGE_WRITE, 0,
    /// 0)`: the hash-entry bit stays.
    fn kept_by_wrprotect(old: u64) -> u64 {
        old & crate::pgtable::format::ppc_hash::HASHPTE
    }

    /// `__flush_tlb_pending`: one page goes by `flush_hash_page`, more by
    /// `flush_hash_range`.
    fn flush_pages(primitives: &P, space: SpaceId, size: PageSize, pages: &[VirtAddr]) {
        match pages {
            [va] => primitives.flush_hash_page(space, *va, size),
            pages => primitives.flush_hash_range(space, size, pages),
        }
    }
}
