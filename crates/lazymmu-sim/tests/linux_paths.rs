//! Counts derived by hand from Linux's code paths, one system call at a
//! time on a task that never migrated (one task, no disturbances): what the
//! model must do because Linux does it.

use lazymmu_sim::cost::Primitive;
use lazymmu_sim::run::run;
use lazymmu_sim::scenario::{BackendKind, ModeKind, RunConfig, RunResult, WorkloadKind};

/// One call of `workload` over `pages` pages by one task on CPU 0 of 4,
/// nothing injected.
fn one_call(backend: BackendKind, workload: WorkloadKind, mode: ModeKind, pages: u64) -> RunResult {
    let mut cfg = RunConfig::new(backend, workload, mode);
    cfg.pages = pages;
    cfg.calls = 1;
    cfg.tasks = 1;
    cfg.rates = None;
    let result = run(&cfg);
    assert_eq!(result.violation_count, 0, "{:?}", result.violations.first());
    result
}

#[test]
fn x86_fork_of_a_task_that_never_migrated_flushes_locally_once() {
    // kernel/fork.c `dup_mmap`: `copy_page_range` write-protects the
    // parent's entries without flushing, then `flush_tlb_mm(oldmm)` →
    // arch/x86/mm/tlb.c `flush_tlb_mm_range(mm, 0, TLB_FLUSH_ALL, ...)`:
    // the mm is loaded here, so one local full flush; `mm_cpumask` holds
    // this CPU only, so no `flush_tlb_multi` and no IPI.
    for mode in ModeKind::ALL {
        let r = one_call(BackendKind::X86, WorkloadKind::Fork, *mode, 4096);
        assert_eq!(r.count(Primitive::Ipi), 0, "{mode}");
        assert_eq!(r.count(Primitive::FullFlush), 1, "{mode}");
        assert_eq!(r.count(Primitive::Invlpg), 0, "{mode}");
    }
}

#[test]
fn arm64_mprotect_flushes_by_asid_or_by_range() {
    // mm/mprotect.c: one mmu_gather; `tlb_finish_mmu` → arm64 `tlb_flush`
    // → `__flush_tlb_range` over 4,096 pages. Without FEAT_TLBIRANGE that
    // is at least `MAX_DVM_OPS` (512) pages, so
    // `__flush_tlb_range_limit_excess` sends it to `flush_tlb_mm`: `dsb
    // ishst; tlbi aside1is; dsb ish`. With it, `__flush_tlb_range_op`
    // covers 4,096 pages with one `tlbi rvale1is` (scale 2, num 1: 2 ×
    // 2^11 pages) between the same two barriers. User entries need no
    // barriers of their own, so each flush is these two DSBs and nothing
    // else.
    for mode in ModeKind::ALL {
        let mut cfg = RunConfig::new(BackendKind::Arm64, WorkloadKind::Mprotect, *mode);
        cfg.pages = 4096;
        cfg.calls = 1;
        cfg.tasks = 1;
        cfg.rates = None;
        cfg.tlb_range = false;
        let without = run(&cfg);
        assert_eq!(without.violation_count, 0);
        assert_eq!(without.count(Primitive::FullFlush), 1, "{mode}");
        assert_eq!(without.count(Primitive::Tlbi), 0, "{mode}");
        assert_eq!(without.count(Primitive::Dsb), 2, "{mode}");
        assert_eq!(without.count(Primitive::Isb), 0, "{mode}");
        cfg.tlb_range = true;
        let with = run(&cfg);
        assert_eq!(with.violation_count, 0);
        assert_eq!(with.count(Primitive::FullFlush), 0, "{mode}");
        assert_eq!(with.count(Primitive::Tlbi), 1, "{mode}");
        assert_eq!(with.count(Primitive::Dsb), 2, "{mode}");
    }
}

#[test]
fn ppc_hash_fork_invalidates_only_touched_pages() {
    // arch/powerpc/include/asm/book3s/64/hash.h `hash__pte_update` calls
    // `hpte_need_flush` only when the old PTE has `H_PAGE_HASHPTE`, which
    // the hash fault sets for a page that was touched. The task touched
    // 8 pages of every 512: fork's write-protect of 4,096 pages owes 64
    // invalidations, batched or not (the child's new entries owe none).
    for mode in ModeKind::ALL {
        let r = one_call(BackendKind::PpcHash, WorkloadKind::Fork, *mode, 4096);
        assert_eq!(r.count(Primitive::HashInvalidate), 64, "{mode}");
    }
    // Eager: one `flush_hash_page`, and its tlbsync, per page; lazy: one
    // `flush_hash_range` per PTE table's section (8 addresses each).
    let eager = one_call(
        BackendKind::PpcHash,
        WorkloadKind::Fork,
        ModeKind::Eager,
        4096,
    );
    let lazy = one_call(
        BackendKind::PpcHash,
        WorkloadKind::Fork,
        ModeKind::Lazy,
        4096,
    );
    assert_eq!(eager.count(Primitive::Dsb), 64);
    assert_eq!(lazy.count(Primitive::Dsb), 8);
}

#[test]
fn s390_eager_fork_on_one_cpu_is_no_ipte_and_one_idte() {
    // arch/s390: `ptep_set_wrprotect` → `ptep_xchg_lazy` →
    // `ptep_flush_lazy`: the mm is attached to this CPU only, so each
    // entry gets the invalid bit and `mm->context.flush_mm = 1` instead of
    // an IPTE; `dup_mmap`'s `flush_tlb_mm` → `__tlb_flush_mm_lazy` then
    // flushes the mm with one IDTE.
    let r = one_call(BackendKind::S390, WorkloadKind::Fork, ModeKind::Eager, 4096);
    assert_eq!(r.count(Primitive::Ipte), 0);
    assert_eq!(r.count(Primitive::IpteLocal), 0);
    assert_eq!(r.count(Primitive::FullFlush), 1);
    // The batching patch (v5, arch/s390/mm/lazy_mmu.c) takes no such
    // shortcut: every PTE table's section ends in a range IPTE per run of
    // valid entries — local, the mm being on this CPU only — and nothing
    // is left for `flush_tlb_mm`. s390 tables hold 256 entries: 16 tables.
    let r = one_call(BackendKind::S390, WorkloadKind::Fork, ModeKind::Lazy, 4096);
    assert_eq!(r.count(Primitive::IpteLocal), 16);
    assert_eq!(r.count(Primitive::Ipte), 0);
    assert_eq!(r.count(Primitive::FullFlush), 0);
}

#[test]
fn xen_pv_exit_clears_unpinned_tables_without_hypercalls() {
    // arch/x86/xen/mmu_pv.c `xen_exit_mmap` unpins the tables
    // (`xen_pgd_unpin`: one `update_va_mapping` per table page and the
    // unpin, in multicalls); the teardown's `ptep_get_and_clear_full` and
    // `pmd_clear` (`xen_set_pmd` on an unpinned page) are then plain
    // stores: no `mmu_update` and no emulated write.
    for mode in ModeKind::ALL {
        let r = one_call(BackendKind::XenPv, WorkloadKind::Exit, *mode, 4096);
        assert_eq!(r.count(Primitive::MmuUpdate), 0, "{mode}");
        assert_eq!(r.count(Primitive::EmulatedWrite), 0, "{mode}");
        assert!(r.count(Primitive::PteWrite) >= 4096, "{mode}");
        // The unpin: 8 PTE tables, a PMD table, a PUD table and the root,
        // and the unpin operation, in one multicall.
        assert_eq!(r.count(Primitive::MulticallEntry), 12, "{mode}");
    }
}

#[test]
fn xen_pv_mprotect_of_64_ptes_is_three_merged_mmu_updates() {
    // mm/mprotect.c `change_pte_range`: `ptep_modify_prot_start` is a
    // read on Xen and `xen_ptep_modify_prot_commit` queues a request,
    // merged into the last `mmu_update` entry by `xen_extend_mmu_update`
    // while `xen_mc_extend_args` finds room: `argidx + 16 < MC_ARGS`
    // (512), so 31 requests per entry. The 32nd and the 63rd open a new
    // entry, for which `__xen_mc_entry` flushes the buffer; leaving the
    // section flushes the last. Each flush holds one entry, which
    // `xen_mc_flush` issues as that hypercall alone: three `mmu_update`
    // hypercalls of 31, 31 and 2 requests, no multicall. The gather's flush
    // after the section is one `MMUEXT_TLB_FLUSH_LOCAL` (64 pages are
    // above the ceiling of 33; no other CPU has the mm).
    let r = one_call(
        BackendKind::XenPv,
        WorkloadKind::Mprotect,
        ModeKind::Lazy,
        64,
    );
    assert_eq!(r.count(Primitive::MmuUpdate), 64);
    assert_eq!(r.count(Primitive::MulticallEntry), 0);
    assert_eq!(r.count(Primitive::Hypercall), 3 + 1);
    assert_eq!(r.count(Primitive::FullFlush), 1);
    // Without lazy MMU mode, one hypercall per entry.
    let r = one_call(
        BackendKind::XenPv,
        WorkloadKind::Mprotect,
        ModeKind::Eager,
        64,
    );
    assert_eq!(r.count(Primitive::Hypercall), 64 + 1);
}

#[test]
fn sparc64_exit_queues_no_flush_per_page() {
    // arch/sparc/mm/tlb.c `tlb_batch_add`: `if (!fullmm)
    // tlb_batch_add_one(...)`: tearing the whole mm down flushes nothing
    // per page; munmap of the same pages demaps every one (locally: the
    // space has one user and runs here, `smp_flush_tlb_pending`).
    for mode in ModeKind::ALL {
        let exit = one_call(BackendKind::Sparc64, WorkloadKind::Exit, *mode, 4096);
        assert_eq!(exit.count(Primitive::Tlbi), 0, "{mode}");
        let munmap = one_call(BackendKind::Sparc64, WorkloadKind::Munmap, *mode, 4096);
        assert_eq!(munmap.count(Primitive::Tlbi), 4096, "{mode}");
        assert_eq!(munmap.count(Primitive::Ipi), 0, "{mode}");
    }
}

#[test]
fn x86_munmap_is_one_gather_and_one_flush() {
    // mm/vma.c `unmap_region`: one `tlb_gather_mmu`, the zap and
    // `free_pgtables` under it, one flush at `tlb_finish_mmu`: 4,096 pages
    // are above the ceiling of 33, so one full flush; no other CPU has
    // the mm.
    let r = one_call(BackendKind::X86, WorkloadKind::Munmap, ModeKind::Lazy, 4096);
    assert_eq!(r.count(Primitive::FullFlush), 1);
    assert_eq!(r.count(Primitive::Invlpg), 0);
    assert_eq!(r.count(Primitive::Ipi), 0);
}

#[test]
fn mremap_flushes_once_per_move_ptes_extent() {
    // mm/mremap.c `move_ptes`: `flush_tlb_range(vma, old_end - len,
    // old_end)` after each extent that moved a present entry: 4,096 pages
    // are 8 PTE tables, 8 extents, each flush above x86's ceiling.
    let r = one_call(BackendKind::X86, WorkloadKind::Mremap, ModeKind::Lazy, 4096);
    assert_eq!(r.count(Primitive::FullFlush), 8);
}

#[test]
fn vfree_flushes_only_when_the_lazy_purge_is_due() {
    // mm/vmalloc.c: `vunmap_range_noflush` clears without flushing; the
    // area joins the lazily freed ones, and only when they hold more than
    // `lazy_max_pages()` (fls(4) × 8,192 = 24,576 pages with 4 CPUs) does
    // `purge_vmap_area_lazy` flush their union. `free_vmap_area_noflush`
    // counts the whole area, its guard page included: five calls of 4,096
    // pages (4,097 with the guard) stay below; the sixth is above.
    let mut cfg = RunConfig::new(BackendKind::X86, WorkloadKind::Vmalloc, ModeKind::Lazy);
    cfg.pages = 4096;
    cfg.tasks = 1;
    cfg.rates = None;
    cfg.calls = 5;
    let below = run(&cfg);
    assert_eq!(below.count(Primitive::FullFlush), 0);
    cfg.calls = 6;
    let above = run(&cfg);
    assert_eq!(above.violation_count, 0);
    // flush_tlb_kernel_range above the ceiling: a full flush on each CPU
    // (on_each_cpu), one IPI round trip.
    assert_eq!(above.count(Primitive::FullFlush), 4);
    assert_eq!(above.count(Primitive::Ipi), 1);
}
