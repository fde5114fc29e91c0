//! powerpc hash and sparc64: 192-address per-CPU batches, early flush on a
//! change of address space or page size, preemption off in the mode.

use lazymmu::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use lazymmu::backend::machine::{BackendBug, Primitive};
use lazymmu::backend::ppc_hash::{PpcHash, PPC64_TLB_BATCH_NR};
use lazymmu::backend::recording::{Call, Recording};
use lazymmu::backend::sparc64::{Sparc64, TLB_BATCH_NR};
use lazymmu::backend::{ContextSwitch, EntryUpdate, FlushScope, PteAccess, TlbFlush};
use lazymmu::mode::counters::Counters;
use lazymmu::mode::{LazyMode, MisusePolicy};
use lazymmu::pgtable::format::ppc_hash::HASHPTE;

fn pte(space: u32, index: u64, value: u64) -> EntryUpdate {
    EntryUpdate {
        entry: PhysAddr(0x100_0000 * u64::from(space) + index * 8),
        va: VirtAddr(index << 12),
        space: SpaceId(space),
        level: 1,
        value,
        kernel: false,
        valid: value & 1 != 0,
        leaf: true,
    }
}

/// A valid entry mapping page `index`: bit 63 is `_PAGE_PRESENT` of the
/// book3s64 hash PTE and `_PAGE_VALID` of the sparc64 TTE.
fn page(index: u64) -> u64 {
    (0x4000_0000 + (index << 12)) | 0x3 | 1 << 63
}

/// Maps `count` pages of `space` (memory set up directly), so that
/// rewriting them replaces valid entries, each touched: on powerpc the
/// hash-fault handler gave it a hash-table entry (`H_PAGE_HASHPTE`, a
/// software bit sparc64's TTE does not use here).
fn populate(machine: &Recording, space: u32, count: u64) {
    for i in 0..count {
        machine.set_memory(pte(space, i, 0).entry, page(i) | HASHPTE);
    }
}

#[test]
fn ppc_the_193rd_entry_forces_a_flush() {
    assert_eq!(PPC64_TLB_BATCH_NR, 192);
    let machine = Recording::new();
    populate(&machine, 1, 200);
    let ppc = PpcHash::new(&machine);
    let mode = Counters::new(&machine, &ppc, MisusePolicy::Panic);
    let section = mode.section();
    for i in 0..192 {
        ppc.write_entry(pte(1, i, 0));
    }
    assert_eq!(ppc.pending(), 192);
    assert_eq!(machine.count(Primitive::HashInvalidate), 0);
    ppc.write_entry(pte(1, 192, 0));
    assert_eq!(machine.calls(Call::FlushHashRange), 1);
    assert_eq!(machine.last_event().map(|e| e.items), Some(192));
    assert_eq!(ppc.pending(), 1);
    drop(section);
    // One left: a single-page flush.
    assert_eq!(machine.calls(Call::FlushHashPage), 1);
    assert_eq!(machine.count(Primitive::HashInvalidate), 193);
    assert_eq!(ppc.pending(), 0);
}

#[test]
fn ppc_eager_writes_invalidate_one_by_one_and_only_valid_entries() {
    let machine = Recording::new();
    populate(&machine, 1, 10);
    let ppc = PpcHash::new(&machine);
    for i in 0..20 {
        ppc.write_entry(pte(1, i, page(i + 100)));
    }
    // Entries 10..20 were empty: no hash entry to invalidate.
    assert_eq!(machine.calls(Call::FlushHashPage), 10);
    assert_eq!(machine.calls(Call::FlushHashRange), 0);
}

#[test]
fn ppc_a_change_of_address_space_or_page_size_flushes() {
    let machine = Recording::new();
    populate(&machine, 1, 10);
    populate(&machine, 2, 10);
    let ppc = PpcHash::new(&machine);
    let mode = Counters::new(&machine, &ppc, MisusePolicy::Panic);
    let section = mode.section();
    for i in 0..5 {
        ppc.write_entry(pte(1, i, 0));
    }
    ppc.write_entry(pte(2, 0, 0));
    assert_eq!(machine.calls(Call::FlushHashRange), 1);
    assert_eq!(machine.last_event().map(|e| e.items), Some(5));
    assert_eq!(ppc.pending(), 1);
    // A 2M entry in the same space: another early flush.
    machine.set_memory(PhysAddr(0x900_0000), page(0) | 0x80 | HASHPTE);
    ppc.write_entry(EntryUpdate {
        entry: PhysAddr(0x900_0000),
        level: 2,
        ..pte(2, 1, 0)
    });
    assert_eq!(machine.calls(Call::FlushHashPage), 1);
    assert_eq!(ppc.pending(), 1);
    drop(section);
    assert_eq!(machine.count(Primitive::HashInvalidate), 7);
}

#[test]
fn ppc_section_runs_with_preemption_off_and_the_gather_flushes_the_batch() {
    let machine = Recording::new();
    populate(&machine, 1, 4);
    let ppc = PpcHash::new(&machine);
    let mode = Counters::new(&machine, &ppc, MisusePolicy::Panic);
    {
        let _section = mode.section();
        assert_eq!(machine.preempt_count(), 1);
        {
            let _pause = mode.pause();
            assert_eq!(machine.preempt_count(), 0);
        }
        assert_eq!(machine.preempt_count(), 1);
        for i in 0..4 {
            ppc.write_entry(pte(1, i, 0));
        }
        ppc.flush_range(
            SpaceId(1),
            VirtAddr(0),
            VirtAddr(4 << 12),
            PageSize::Size4K,
            FlushScope::Local,
        );
        assert_eq!(ppc.pending(), 0, "the TLB flush issued the batch");
        assert_eq!(machine.count(Primitive::HashInvalidate), 4);
    }
    assert_eq!(machine.preempt_count(), 0);
}

#[test]
fn ppc_switching_out_of_a_section_is_reported_and_loses_nothing() {
    let machine = Recording::new();
    populate(&machine, 1, 4);
    let ppc = PpcHash::new(&machine);
    let mode = Counters::new(&machine, &ppc, MisusePolicy::Panic);
    let _section = mode.section();
    ppc.write_entry(pte(1, 0, 0));
    ppc.switch_out(machine.task_lazy_state(0));
    assert_eq!(machine.bugs(BackendBug::SwitchInSection), 1);
    assert_eq!(machine.count(Primitive::HashInvalidate), 1);
}

#[test]
fn sparc_the_193rd_entry_forces_a_flush() {
    assert_eq!(TLB_BATCH_NR, 192);
    let machine = Recording::new();
    populate(&machine, 1, 200);
    let sparc = Sparc64::new(&machine);
    let mode = Counters::new(&machine, &sparc, MisusePolicy::Panic);
    let section = mode.section();
    for i in 0..192 {
        sparc.write_entry(pte(1, i, 0));
    }
    assert_eq!(sparc.pending(), 192);
    assert_eq!(machine.count(Primitive::Ipi), 0);
    sparc.write_entry(pte(1, 192, 0));
    assert_eq!(machine.calls(Call::FlushBatch), 1);
    assert_eq!(machine.last_event().map(|e| e.items), Some(192));
    drop(section);
    assert_eq!(machine.calls(Call::FlushBatch), 2);
    assert_eq!(machine.last_event().map(|e| e.items), Some(1));
    // Two cross-calls (each reaching the 3 other CPUs), instead of 193.
    assert_eq!(machine.count(Primitive::Ipi), 2);
}

#[test]
fn sparc_a_change_of_address_space_flushes() {
    let machine = Recording::new();
    populate(&machine, 1, 10);
    populate(&machine, 2, 10);
    let sparc = Sparc64::new(&machine);
    let mode = Counters::new(&machine, &sparc, MisusePolicy::Panic);
    let section = mode.section();
    for i in 0..3 {
        sparc.write_entry(pte(1, i, 0));
    }
    sparc.write_entry(pte(2, 0, 0));
    assert_eq!(machine.calls(Call::FlushBatch), 1);
    assert_eq!(machine.last_event().map(|e| e.items), Some(3));
    drop(section);
    assert_eq!(machine.calls(Call::FlushBatch), 2);
}

#[test]
fn sparc_eager_and_kernel_writes_flush_per_page_or_through_the_gather() {
    let machine = Recording::new();
    populate(&machine, 1, 4);
    let sparc = Sparc64::new(&machine);
    for i in 0..4 {
        sparc.write_entry(pte(1, i, 0));
    }
    assert_eq!(machine.calls(Call::FlushPage), 4);
    assert_eq!(machine.count(Primitive::Ipi), 4);
    // Kernel entries are never batched by writes...
    machine.set_memory(PhysAddr(0x50), page(1));
    sparc.write_entry(EntryUpdate {
        entry: PhysAddr(0x50),
        space: SpaceId::KERNEL,
        kernel: true,
        ..pte(1, 10, 0)
    });
    assert_eq!(machine.calls(Call::FlushPage), 4);
    // ... the gather flushes them.
    sparc.flush_range(
        SpaceId::KERNEL,
        VirtAddr(10 << 12),
        VirtAddr(11 << 12),
        PageSize::Size4K,
        FlushScope::Cpus(lazymmu::cpu::CpuMask::from_bits(0b1111)),
    );
    assert_eq!(machine.calls(Call::FlushKernelRange), 1);
}

#[test]
fn interrupt_context_writes_are_immediate_on_ppc_and_sparc() {
    let machine = Recording::new();
    populate(&machine, 1, 4);
    let ppc = PpcHash::new(&machine);
    let sparc = Sparc64::new(&machine);
    let ppc_mode = Counters::new(&machine, &ppc, MisusePolicy::Panic);
    {
        let _section = ppc_mode.section();
        ppc.write_entry(pte(1, 0, page(50)));
        machine.irq_enter();
        ppc.write_entry(pte(1, 1, page(51)));
        assert_eq!(machine.calls(Call::FlushHashPage), 1);
        assert_eq!(ppc.pending(), 1, "the section's batch is untouched");
        machine.irq_exit();
    }
    let sparc_mode = Counters::new(&machine, &sparc, MisusePolicy::Panic);
    {
        let _section = sparc_mode.section();
        sparc.write_entry(pte(1, 2, page(52)));
        machine.irq_enter();
        sparc.write_entry(pte(1, 3, page(53)));
        assert_eq!(machine.calls(Call::FlushPage), 1);
        assert_eq!(sparc.pending(), 1);
        machine.irq_exit();
    }
    assert_eq!(machine.calls(Call::FlushBatch), 1);
}

#[test]
fn sparc_a_full_kernel_flush_is_one_cross_call() {
    let machine = Recording::new();
    let sparc = Sparc64::new(&machine);
    sparc.flush_all(
        SpaceId::KERNEL,
        FlushScope::Cpus(lazymmu::cpu::CpuMask::from_bits(0b1111)),
    );
    assert_eq!(machine.calls(Call::FlushKernelAll), 1);
    assert_eq!(machine.count(Primitive::FullFlush), 4);
    assert_eq!(machine.count(Primitive::Ipi), 1);
    assert_eq!(machine.count(Primitive::Tlbi), 0);
}
