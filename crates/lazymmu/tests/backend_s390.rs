//! s390 IPTE batching: a per-CPU cache of one page table (256 entries),
//! applied with one multi-entry IPTE per run; reads served from the cache.

use lazymmu::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use lazymmu::backend::machine::Primitive;
use lazymmu::backend::recording::{Call, Recording};
use lazymmu::backend::s390::S390;
use lazymmu::backend::{ContextSwitch, EntryUpdate, FlushScope, PteAccess, TlbFlush};
use lazymmu::mode::counters::Counters;
use lazymmu::mode::{LazyMode, MisusePolicy};

const TABLE: u64 = 0x20_0000;

fn pte(index: u64, value: u64) -> EntryUpdate {
    EntryUpdate {
        entry: PhysAddr(TABLE + index * 8),
        va: VirtAddr(0x4000_0000 + (index << 12)),
        space: SpaceId(1),
        level: 1,
        value,
        kernel: false,
        valid: value & 1 != 0,
        leaf: true,
    }
}

fn page(index: u64) -> u64 {
    (0x8000_0000 + (index << 12)) | 0x3
}

fn populate(machine: &Recording, count: u64) {
    for i in 0..count {
        machine.set_memory(pte(i, 0).entry, page(i));
    }
}

#[test]
fn eager_writes_over_valid_entries_are_one_ipte_each() {
    let machine = Recording::new();
    populate(&machine, 8);
    let s390 = S390::new(&machine);
    for i in 0..16 {
        s390.write_entry(pte(i, page(i) & !2));
    }
    assert_eq!(machine.calls(Call::Ipte), 8, "only the 8 valid entries");
    assert_eq!(machine.count(Primitive::PteWrite), 16);
}

#[test]
fn reads_are_served_from_the_cache() {
    let machine = Recording::new();
    populate(&machine, 4);
    let s390 = S390::new(&machine);
    let mode = Counters::new(&machine, &s390, MisusePolicy::Panic);
    {
        let _section = mode.section();
        s390.write_entry(pte(1, page(41)));
        assert_eq!(s390.read_entry(pte(1, 0).entry), page(41), "from the cache");
        assert_eq!(
            machine.read_memory(pte(1, 0).entry),
            page(1),
            "memory untouched"
        );
        assert_eq!(
            s390.read_entry(pte(2, 0).entry),
            page(2),
            "uncached: memory"
        );
        assert_eq!(s390.get_and_clear(pte(1, 0)), page(41));
        assert_eq!(s390.read_entry(pte(1, 0).entry), 0);
        assert_eq!(machine.count(Primitive::Ipte), 0);
    }
    assert_eq!(machine.read_memory(pte(1, 0).entry), 0);
    // Linux applies even a run of one with the range form
    // (`__ptep_ipte_range`).
    assert_eq!(machine.calls(Call::IpteRange), 1);
}

#[test]
fn a_section_over_a_table_is_one_ipte_per_256_entries() {
    let machine = Recording::new();
    populate(&machine, 512);
    let s390 = S390::new(&machine);
    let mode = Counters::new(&machine, &s390, MisusePolicy::Panic);
    {
        let _section = mode.section();
        // mprotect of two whole page tables: clear a bit. The first table
        // is applied when a write for the second arrives.
        for i in 0..512 {
            s390.write_entry(pte(i, page(i) & !2));
        }
        assert_eq!(machine.calls(Call::IpteRange), 1);
        assert_eq!(s390.cached(), 256);
    }
    assert_eq!(machine.calls(Call::IpteRange), 2);
    assert_eq!(machine.count(Primitive::Ipte), 2);
    assert_eq!(machine.count(Primitive::PteWrite), 512);
    for i in [0, 255, 256, 511] {
        assert_eq!(machine.read_memory(pte(i, 0).entry), page(i) & !2);
    }
}

#[test]
fn runs_skip_untouched_entries_and_empty_runs_need_no_ipte() {
    let machine = Recording::new();
    populate(&machine, 32);
    let s390 = S390::new(&machine);
    let mode = Counters::new(&machine, &s390, MisusePolicy::Panic);
    {
        let _section = mode.section();
        for i in (0..10).chain(20..30) {
            s390.write_entry(pte(i, 0));
        }
        // Entries 100..110 were never valid: storing them needs no IPTE.
        for i in 100..110 {
            s390.write_entry(pte(i, page(i)));
        }
    }
    assert_eq!(machine.calls(Call::IpteRange), 2);
    assert_eq!(
        machine.read_memory(pte(15, 0).entry),
        page(15),
        "an entry between two runs keeps its mapping"
    );
    assert_eq!(machine.read_memory(pte(105, 0).entry), page(105));
}

#[test]
fn a_change_of_table_or_level_applies_the_cache() {
    let machine = Recording::new();
    populate(&machine, 8);
    let s390 = S390::new(&machine);
    let mode = Counters::new(&machine, &s390, MisusePolicy::Panic);
    let section = mode.section();
    for i in 0..4 {
        s390.write_entry(pte(i, 0));
    }
    // An empty entry of the next table: stored at once, cache kept.
    s390.write_entry(pte(513, page(513)));
    assert_eq!(machine.read_memory(pte(513, 0).entry), page(513));
    assert_eq!(s390.cached(), 4);
    assert_eq!(machine.count(Primitive::Ipte), 0);
    // A valid entry of the next table: the cache is applied and the next
    // table becomes the cached one.
    machine.set_memory(pte(512, 0).entry, page(512));
    s390.write_entry(pte(512, page(512) & !2));
    assert_eq!(machine.calls(Call::IpteRange), 1);
    assert_eq!(s390.cached(), 1);
    // A PMD entry: the cache is applied before it.
    s390.write_entry(EntryUpdate {
        entry: PhysAddr(0x30_0000),
        level: 2,
        leaf: false,
        ..pte(0, 0x1234_5001)
    });
    assert_eq!(s390.cached(), 0);
    assert_eq!(machine.read_memory(pte(512, 0).entry), page(512) & !2);
    drop(section);
}

#[test]
fn pause_applies_and_resume_caches_again() {
    let machine = Recording::new();
    populate(&machine, 8);
    let s390 = S390::new(&machine);
    let mode = Counters::new(&machine, &s390, MisusePolicy::Panic);
    let _section = mode.section();
    s390.write_entry(pte(0, 0));
    {
        let _pause = mode.pause();
        assert_eq!(s390.cached(), 0);
        assert_eq!(machine.read_memory(pte(0, 0).entry), 0);
        s390.write_entry(pte(1, 0));
        assert_eq!(machine.read_memory(pte(1, 0).entry), 0, "paused: direct");
    }
    s390.write_entry(pte(2, 0));
    assert_eq!(s390.cached(), 1);
}

#[test]
fn gather_flush_and_context_switch_apply_the_cache() {
    let machine = Recording::new();
    populate(&machine, 8);
    let s390 = S390::new(&machine);
    let mode = Counters::new(&machine, &s390, MisusePolicy::Panic);
    let section = mode.section();
    s390.write_entry(pte(0, 0));
    s390.flush_range(
        SpaceId(1),
        VirtAddr(0x4000_0000),
        VirtAddr(0x4000_1000),
        PageSize::Size4K,
        FlushScope::Local,
    );
    assert_eq!(s390.cached(), 0);
    s390.write_entry(pte(1, 0));
    s390.switch_out(machine.task_lazy_state(0));
    assert_eq!(machine.read_memory(pte(1, 0).entry), 0);
    s390.switch_in(machine.task_lazy_state(0));
    s390.write_entry(pte(2, 0));
    assert_eq!(s390.cached(), 1);
    drop(section);
    assert_eq!(machine.read_memory(pte(2, 0).entry), 0);
}

#[test]
fn interrupt_context_writes_are_immediate() {
    let machine = Recording::new();
    populate(&machine, 8);
    let s390 = S390::new(&machine);
    let mode = Counters::new(&machine, &s390, MisusePolicy::Panic);
    let section = mode.section();
    s390.write_entry(pte(0, 0));
    machine.irq_enter();
    s390.write_entry(pte(5, page(55)));
    assert_eq!(machine.read_memory(pte(5, 0).entry), page(55));
    // The interrupted section's pending entry went first.
    assert_eq!(machine.read_memory(pte(0, 0).entry), 0);
    machine.irq_exit();
    s390.write_entry(pte(6, 0));
    assert_eq!(s390.cached(), 1);
    drop(section);
}

#[test]
fn moving_entries_to_an_empty_table_stays_batched() {
    // mremap: clear in the source table, store in the (empty) destination.
    let machine = Recording::new();
    populate(&machine, 512);
    let s390 = S390::new(&machine);
    let mode = Counters::new(&machine, &s390, MisusePolicy::Panic);
    {
        let _section = mode.section();
        for i in 0..512 {
            let old = s390.get_and_clear(pte(i, 0));
            s390.write_entry(pte(1024 + i, old));
        }
        // The second source table's clears; the first was applied when
        // the source moved on.
        assert_eq!(s390.cached(), 256);
    }
    assert_eq!(machine.count(Primitive::Ipte), 2);
    assert_eq!(machine.read_memory(pte(0, 0).entry), 0);
    assert_eq!(machine.read_memory(pte(1024 + 511, 0).entry), page(511));
}
