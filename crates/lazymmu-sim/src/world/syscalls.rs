//! Linux's memory-management system calls over an address space of the
//! world, each as one function with the call's own structure: where lazy
//! sections open and close (one per PTE table, inside the library's range
//! operations), which gather or flush the call makes and how large it is,
//! and the kernel's own work around the MMU, charged at the costs
//! `lazymmu calibrate` measured ([`crate::kernel_work::KernelWork`]).
//!
//! The workloads of `lazymmu compare` call these once per measured call;
//! a replay of a recorded program can call them for its operations.

use core::ops::Range;

use lazymmu::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use lazymmu::backend::{Backend, FlushScope};
use lazymmu::mode::LazyMode;
use lazymmu::pgtable::format::{Attributes, Entry, Format, Protection};
use lazymmu::pgtable::gather::Gather;
use lazymmu::pgtable::ops::{ApplyMode, CopyKind, PageTables};

use super::{Exceptions, World, PAGE};
use crate::cost::Software;
use crate::machine::SimFrames;
use crate::observed::Checks;

/// An address space the system calls act on: its id, page-table root and
/// frame allocator.
#[derive(Clone, Debug)]
pub struct Mm {
    /// The space.
    pub space: SpaceId,
    /// Its top-level table.
    pub root: PhysAddr,
    /// The frames its tables come from.
    pub frames: SimFrames,
}

/// vmalloc's lazily freed areas: freed (their entries cleared) but not yet
/// flushed from the TLBs, and how many pages they hold
/// (`vmap_lazy_nr`).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LazyPurge {
    pub(crate) pages: u64,
    pub(crate) range: Option<(u64, u64)>,
}

/// `lazy_max_pages()` (mm/vmalloc.c): `fls(num_online_cpus())` times 32 MiB
/// of pages.
pub fn lazy_max_pages(cpus: usize) -> u64 {
    let fls = usize::BITS - cpus.leading_zeros();
    u64::from(fls) * (32 << 20) / PAGE
}

impl<F, B, L> World<F, B, L>
where
    F: Format,
    B: Backend<Format = F> + Exceptions + Checks + 'static,
    L: LazyMode + 'static,
{
    /// The page tables of `mm`.
    pub(crate) fn tables<'w>(&'w self, mm: &'w Mm) -> PageTables<'w, B, L, SimFrames> {
        self.tables_at(mm.root, mm.space, &mm.frames, false)
    }

    fn gather<'g>(&'g self, mm: &'g Mm) -> Gather<'g, B, SimFrames> {
        Gather::new(&*self.backend, &mm.frames, mm.space, FlushScope::MM)
    }

    /// `fork` (kernel/fork.c `dup_mmap`): every range is copied with
    /// `copy_page_range` — one lazy section per PTE table
    /// (`copy_pte_range`), each writable entry write-protected in the
    /// parent (`copy_present_ptes` → `ptep_set_wrprotect`) and nothing
    /// flushed meanwhile — then `arch_dup_mmap` and one `flush_tlb_mm` of
    /// the parent. Each range is copied as its VMA asks: private writable
    /// memory copy-on-write, shared memory as it is (`copy_present_pte`).
    /// Returns the pages copied.
    pub fn fork(&self, parent: &Mm, child: &Mm, ranges: &[(Range<u64>, CopyKind)]) -> u64 {
        // The parent's tables, allocating from the child's frames: every
        // table the copy allocates is the child's (`pte_alloc` on
        // `dst_mm`), and the parent's side only changes entries.
        let with_child_frames = Mm {
            frames: child.frames.clone(),
            ..parent.clone()
        };
        let tables = self.tables(&with_child_frames);
        let child_tables = self.tables(child);
        let mut gather = self.gather(parent);
        let mut copied = [0; 3];
        for (range, kind) in ranges {
            let r = tables.copy_to(
                &child_tables,
                VirtAddr(range.start),
                range.end - range.start,
                *kind,
                &mut gather,
            );
            match r {
                Ok(summary) => {
                    for (all, leaves) in copied.iter_mut().zip(summary.copied) {
                        *all += leaves;
                    }
                }
                Err(e) => self.check(Err::<(), _>(e), "fork copy"),
            }
        }
        self.backend.dup_mmap(child.space);
        gather.flush_all_now();
        drop(gather);
        self.charge_call(Software::ForkCall, Software::ForkPage, copied)
    }

    /// `munmap` (`do_vmi_munmap` → `unmap_region`): one gather
    /// (`tlb_gather_mmu`), the entries zapped one lazy section per PTE
    /// table (`zap_pte_range`, flushing early only when the gather's page
    /// batch fills) and the tables wholly inside freed (`free_pgtables`),
    /// one flush at `tlb_finish_mmu`. Returns the pages unmapped.
    pub fn munmap(&self, mm: &Mm, range: Range<u64>) -> u64 {
        let mut gather = self.gather(mm);
        let r = self
            .tables(mm)
            .zap(VirtAddr(range.start), range.end - range.start, &mut gather);
        drop(gather);
        let leaves = self.check_leaves(r, "munmap zap", |summary| summary.leaves);
        self.charge_call(Software::MunmapCall, Software::MunmapPage, leaves)
    }

    /// `exit` (`exit_mmap`): `arch_exit_mmap` (Xen unpins the tables), then
    /// one full-mm gather (`tlb_gather_mmu_fullmm`) over the teardown of
    /// every entry and table (`unmap_vmas`, `free_pgtables`), entries
    /// cleared with `ptep_get_and_clear_full`, and the flush of
    /// `tlb_finish_mmu`. The root goes with the tables. Returns the pages
    /// unmapped.
    pub fn exit_mmap(&self, mm: &Mm) -> u64 {
        self.backend.exit_mmap(mm.space);
        let mut gather = Gather::full_mm(&*self.backend, &mm.frames, mm.space, FlushScope::MM);
        let r = self.tables(mm).destroy(&mut gather);
        drop(gather);
        let leaves = self.check_leaves(r, "exit teardown", |summary| summary.leaves);
        self.charge_call(Software::ExitCall, Software::ExitPage, leaves)
    }

    /// `mprotect` (`do_mprotect_pkey` → `mprotect_fixup` →
    /// `change_protection`): one gather, one lazy section per PTE table
    /// (`change_pte_range`, `ptep_modify_prot_start`/`commit`), one flush
    /// at `tlb_finish_mmu`. Returns the pages changed.
    pub fn mprotect(&self, mm: &Mm, range: Range<u64>, protection: Protection) -> u64 {
        let mut gather = self.gather(mm);
        let r = self.tables(mm).protect(
            VirtAddr(range.start),
            range.end - range.start,
            protection,
            &mut gather,
        );
        drop(gather);
        let leaves = self.check_leaves(r, "mprotect", |summary| summary.changed);
        self.charge_call(Software::MprotectCall, Software::MprotectPage, leaves)
    }

    /// `mremap` moving PTEs (`move_page_tables`): per source extent
    /// (`move_ptes`) one lazy section and one `flush_tlb_range` of the old
    /// addresses. Returns the pages moved.
    pub fn mremap(&self, mm: &Mm, from: u64, to: u64, len: u64) -> u64 {
        let mut gather = self.gather(mm);
        let r = self
            .tables(mm)
            .move_range(VirtAddr(from), VirtAddr(to), len, &mut gather);
        drop(gather);
        let leaves = self.check_leaves(r, "mremap move", |summary| summary.moved);
        self.charge_call(Software::MremapCall, Software::MremapPage, leaves)
    }

    /// `madvise(MADV_DONTNEED)` over one VMA's part
    /// (`madvise_dontneed_single_vma` → `zap_page_range_single`): one
    /// gather, the entries cleared one lazy section per PTE table
    /// (`zap_pte_range`), the page tables kept, one flush at
    /// `tlb_finish_mmu`. `lazymmu calibrate` measures no madvise, so no
    /// kernel work is charged around it. Returns the pages cleared.
    pub fn madvise_dontneed(&self, mm: &Mm, range: Range<u64>) -> u64 {
        let mut gather = self.gather(mm);
        let mut cleared = 0;
        let r = self.tables(mm).apply(
            VirtAddr(range.start),
            range.end - range.start,
            ApplyMode::Existing,
            &mut gather,
            |slot| {
                if slot.clear() != 0 {
                    cleared += 1;
                }
                Ok::<(), ()>(())
            },
        );
        drop(gather);
        self.check(r.map(|_| ()), "madvise dontneed");
        cleared
    }

    /// `madvise(MADV_FREE)` over one VMA's part (`madvise_free_single_vma`
    /// → `madvise_free_pte_range`): one gather, each present entry
    /// rewritten old and clean inside one lazy section per PTE table, one
    /// flush at `tlb_finish_mmu`. No kernel work is charged, as for
    /// [`Self::madvise_dontneed`]. Returns the pages rewritten.
    pub fn madvise_free(&self, mm: &Mm, range: Range<u64>) -> u64 {
        let mut gather = self.gather(mm);
        let mut cleaned = 0;
        let r = self.tables(mm).apply(
            VirtAddr(range.start),
            range.end - range.start,
            ApplyMode::Existing,
            &mut gather,
            |slot| {
                if let Entry::Leaf { phys, attrs, .. } = slot.get() {
                    slot.clear();
                    slot.set(
                        phys,
                        Attributes {
                            dirty: false,
                            accessed: false,
                            ..attrs
                        },
                    );
                    cleaned += 1;
                }
                Ok::<(), ()>(())
            },
        );
        drop(gather);
        self.check(r.map(|_| ()), "madvise free");
        cleaned
    }

    /// `vmalloc` (`__vmalloc_node_range` → `vmap_pages_range` →
    /// `vmap_pte_range`): the pages mapped at `va`, one lazy section per PTE
    /// table; no TLB flush (the entries were empty).
    pub fn vmalloc(&self, va: u64, phys: u64, pages: u64) {
        let r = self.kernel_tables().map(
            VirtAddr(va),
            PhysAddr(phys),
            pages * PAGE,
            Attributes::kernel_data(),
            PageSize::Size4K,
        );
        self.check(r.map(|_| ()), "vmalloc map");
        self.charge_call(Software::VmallocCall, Software::VmallocPage, [pages, 0, 0]);
    }

    /// `vfree` (`remove_vm_area` → `vunmap_range_noflush` →
    /// `vunmap_pte_range`, one lazy section per PTE table, the tables
    /// kept): the entries are cleared without a flush, and the area joins
    /// the lazily freed ones (`free_vmap_area_noflush`, which counts the
    /// area's size, its guard page included, in `vmap_lazy_nr`); once they
    /// hold more than [`lazy_max_pages`] pages, `purge_vmap_area_lazy`
    /// flushes their union (`flush_tlb_kernel_range`) at once. Until then
    /// CPUs may still cache the area's old translations, which the checks
    /// allow ([`Checks::lazily_freed`]) as long as nobody maps the
    /// addresses again.
    pub fn vfree(&self, va: u64, pages: u64) {
        let kernel = self.kernel_tables();
        let mut gather = Gather::new(
            &*self.backend,
            &self.kernel_frames,
            SpaceId::KERNEL,
            FlushScope::MM,
        );
        let r = kernel.apply(
            VirtAddr(va),
            pages * PAGE,
            ApplyMode::Existing,
            &mut gather,
            |slot| {
                slot.clear();
                Ok::<(), ()>(())
            },
        );
        self.check(r.map(|_| ()), "vfree unmap");
        let freed = gather.defer_range();
        drop(gather);
        if let Some((start, end)) = freed {
            self.backend.lazily_freed(SpaceId::KERNEL, start.0, end.0);
        }
        self.charge_call(Software::VfreeCall, Software::VfreePage, [pages, 0, 0]);
        let due = {
            let mut purge = self.purge.borrow_mut();
            purge.pages += pages + 1;
            if let Some((start, end)) = freed {
                purge.range = Some(match purge.range {
                    Some((s, e)) => (s.min(start.0), e.max(end.0)),
                    None => (start.0, end.0),
                });
            }
            (purge.pages > lazy_max_pages(self.machine.cpu_count()))
                .then(|| core::mem::take(&mut *purge))
        };
        if let Some(LazyPurge {
            range: Some((start, end)),
            ..
        }) = due
        {
            // `flush_tlb_kernel_range` of the union, with the same choice
            // between page by page and everything as a gather's.
            let mut purge = self.kernel_gather();
            purge.add_range(VirtAddr(start), VirtAddr(end), PageSize::Size4K);
            drop(purge);
            self.backend.purged();
        }
    }

    /// `set_memory_pkey` of one page-table page (kpkeys_hardened_pgtables,
    /// `kpkeys_protect_pgtable_memory` / `kpkeys_unprotect_pgtable_memory`
    /// from `pagetable_alloc` and `pagetable_free`): its linear-map entry
    /// is rewritten with the page-table key or the default one
    /// (`__change_memory_common` → `apply_to_page_range`, one lazy
    /// section), then `flush_tlb_kernel_range` of the page.
    pub(crate) fn set_memory_pkey(&self, linear_va: u64, phys: PhysAddr, key: u8) {
        let kernel = self.kernel_tables();
        let mut gather = Gather::new(
            &*self.backend,
            &self.kernel_frames,
            SpaceId::KERNEL,
            FlushScope::MM,
        );
        let attrs = Attributes {
            key,
            ..Attributes::kernel_data()
        };
        let r = kernel.apply(
            VirtAddr(linear_va),
            PAGE,
            ApplyMode::Existing,
            &mut gather,
            |slot| {
                slot.set(phys, attrs);
                Ok::<(), ()>(())
            },
        );
        self.check(r.map(|_| ()), "set_memory_pkey");
        drop(gather);
    }

    /// The leaves an operation's summary counts (4 KiB, 2 MiB, 1 GiB), or
    /// none with a violation naming `what` when it failed.
    fn check_leaves<S, E: core::fmt::Debug>(
        &self,
        r: Result<S, E>,
        what: &str,
        leaves: impl FnOnce(&S) -> [u64; 3],
    ) -> [u64; 3] {
        match r {
            Ok(summary) => leaves(&summary),
            Err(e) => {
                self.check(Err::<(), _>(e), what);
                [0; 3]
            }
        }
    }

    /// Charges a call's own work — one `per_call`, and `per_page` for each
    /// 4 KiB leaf (`lazymmu calibrate` measures 4 KiB pages only, so huge
    /// leaves are charged nothing per page) — and returns the 4 KiB pages
    /// the leaves cover.
    fn charge_call(&self, per_call: Software, per_page: Software, leaves: [u64; 3]) -> u64 {
        self.machine.charge(per_call, 1);
        if leaves[0] > 0 {
            self.machine.charge(per_page, leaves[0]);
        }
        [PageSize::Size4K, PageSize::Size2M, PageSize::Size1G]
            .iter()
            .zip(leaves)
            .map(|(size, n)| n * (size.bytes() / PAGE))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lazy_max_pages_follows_the_cpu_count() {
        // fls(1) = 1, fls(4) = 3, fls(64) = 7 times 8,192 pages.
        assert_eq!(lazy_max_pages(1), 8_192);
        assert_eq!(lazy_max_pages(4), 24_576);
        assert_eq!(lazy_max_pages(64), 57_344);
    }
}
