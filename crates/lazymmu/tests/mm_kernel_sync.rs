//! Kernel top-level sync under the four policies: the 256-addition bound,
//! what each policy writes, the missing-sync check, allocation failure.

use lazymmu::addr::VirtAddr;
use lazymmu::mm::kernel_sync::{
    entry_present, AccessOutcome, KernelAccessError, KernelLayout, KernelSync, SyncError,
    SyncPolicy, SyncStats, TopLevelTables, KERNEL_FIRST_SLOT, KERNEL_SLOTS, TOP_LEVEL_ENTRIES,
};
use lazymmu::mm::testing::TestTables;
use proptest::prelude::*;
use std::sync::atomic::Ordering;

const LAYOUT: KernelLayout = KernelLayout::X86_64_4LEVEL;

fn sync(tables: &TestTables, policy: SyncPolicy) -> KernelSync<&TestTables, &TestTables> {
    let sync = KernelSync::new(tables, tables, tables.reference(), policy, LAYOUT);
    sync.boot().unwrap();
    sync
}

fn va(slot: usize) -> VirtAddr {
    LAYOUT.slot_base(slot).add(0x1234_5000)
}

#[test]
fn layout_matches_the_x86_64_memory_map() {
    assert_eq!(LAYOUT.slot(VirtAddr(0xffff_c900_0000_0000)), 402);
    assert_eq!(LAYOUT.slot(VirtAddr(0xffff_e8ff_ffff_ffff)), 465);
    assert_eq!(LAYOUT.vmalloc_range(), 402..466);
    let five = KernelLayout::X86_64_5LEVEL;
    assert_eq!(five.slot(VirtAddr(0xffa0_0000_0000_0000)), 416);
    assert_eq!(LAYOUT.slot_base(402), VirtAddr(0xffff_c900_0000_0000));
    assert_eq!(LAYOUT.slot_base(1), VirtAddr(0x80_0000_0000));
    for slot in 0..TOP_LEVEL_ENTRIES {
        assert_eq!(LAYOUT.slot(LAYOUT.slot_base(slot)), slot);
    }
}

#[test]
fn at_most_256_top_level_additions_per_boot_under_every_policy() {
    for policy in SyncPolicy::ALL {
        let tables: TestTables = TestTables::new(1);
        let sync = sync(&tables, policy);
        for _pass in 0..2 {
            for slot in KERNEL_FIRST_SLOT..TOP_LEVEL_ENTRIES {
                sync.ensure_slot(va(slot)).unwrap();
            }
        }
        assert_eq!(
            sync.stats().top_level_adds.load(Ordering::Relaxed) as usize,
            KERNEL_SLOTS,
            "{policy:?}"
        );
        assert_eq!(sync.generation() as usize, KERNEL_SLOTS);
        assert_eq!(tables.allocated() as usize, KERNEL_SLOTS);
        assert_eq!(
            sync.ensure_slot(VirtAddr(0x7fff_0000_0000)),
            Err(SyncError::NotKernel(VirtAddr(0x7fff_0000_0000)))
        );
    }
}

#[test]
fn push_writes_every_process_table_at_once() {
    let tables: TestTables = TestTables::new(2);
    let sync = sync(&tables, SyncPolicy::Push);
    let pgds: Vec<_> = (0..5).map(|_| tables.new_process()).collect();
    for &pgd in &pgds {
        sync.init_process_table(pgd);
    }
    sync.ensure_slot(va(410)).unwrap();
    assert_eq!(SyncStats::get(&sync.stats().tables_walked), 5);
    for &pgd in &pgds {
        assert_eq!(sync.kernel_access(pgd, va(410)), Ok(AccessOutcome::Hit));
    }
}

#[test]
fn fault_fills_the_entry_on_first_access() {
    let tables: TestTables = TestTables::new(1);
    let sync = sync(&tables, SyncPolicy::Fault);
    let pgd = tables.new_process();
    sync.init_process_table(pgd);
    sync.ensure_slot(va(420)).unwrap();
    assert!(!entry_present(tables.read_slot(pgd, 420)));
    assert_eq!(
        sync.kernel_access(pgd, va(420)),
        Ok(AccessOutcome::FaultFixed)
    );
    assert_eq!(sync.kernel_access(pgd, va(420)), Ok(AccessOutcome::Hit));
    assert_eq!(SyncStats::get(&sync.stats().faults_fixed), 1);
    assert_eq!(
        sync.kernel_access(pgd, va(421)),
        Err(KernelAccessError::Unmapped(va(421)))
    );
}

#[test]
fn generation_syncs_loaded_tables_now_and_others_at_switch() {
    let tables: TestTables = TestTables::new(2);
    let sync = sync(&tables, SyncPolicy::Generation);
    let running = tables.new_process();
    let sleeping = tables.new_process();
    sync.init_process_table(running);
    sync.init_process_table(sleeping);
    sync.switch_to(running);
    tables.load(0, running);
    sync.ensure_slot(va(403)).unwrap();
    sync.ensure_slot(va(404)).unwrap();
    assert_eq!(sync.kernel_access(running, va(403)), Ok(AccessOutcome::Hit));
    // The check fires on the stale table: only a switch may make it current.
    assert_eq!(
        sync.kernel_access(sleeping, va(404)),
        Err(KernelAccessError::MissingSync {
            table: sleeping,
            slot: 404
        })
    );
    sync.switch_to(sleeping);
    tables.load(1, sleeping);
    assert_eq!(
        sync.kernel_access(sleeping, va(403)),
        Ok(AccessOutcome::Hit)
    );
    assert_eq!(
        sync.kernel_access(sleeping, va(404)),
        Ok(AccessOutcome::Hit)
    );
    assert_eq!(SyncStats::get(&sync.stats().generation_syncs), 1);
    sync.switch_to(sleeping);
    assert_eq!(
        SyncStats::get(&sync.stats().generation_syncs),
        1,
        "current: no copy"
    );
    assert_eq!(SyncStats::get(&sync.stats().generation_checks), 3);
}

#[test]
fn prealloc_never_adds_a_vmalloc_entry_after_boot() {
    let tables: TestTables = TestTables::new(1);
    let sync = sync(&tables, SyncPolicy::Prealloc);
    assert_eq!(sync.stats().preallocated.load(Ordering::Relaxed), 64);
    let pgd = tables.new_process();
    sync.init_process_table(pgd);
    for slot in LAYOUT.vmalloc_range() {
        sync.ensure_slot(va(slot)).unwrap();
        assert_eq!(sync.kernel_access(pgd, va(slot)), Ok(AccessOutcome::Hit));
    }
    assert_eq!(sync.stats().top_level_adds.load(Ordering::Relaxed), 64);
    assert_eq!(SyncStats::get(&sync.stats().tables_walked), 0);
    // Outside the vmalloc area a new slot is pushed.
    sync.ensure_slot(va(300)).unwrap();
    assert_eq!(sync.kernel_access(pgd, va(300)), Ok(AccessOutcome::Hit));
    assert_eq!(SyncStats::get(&sync.stats().tables_walked), 1);
}

#[test]
fn the_check_fires_on_a_table_that_skipped_its_constructor() {
    let tables: TestTables = TestTables::new(1);
    let sync = sync(&tables, SyncPolicy::Prealloc);
    let forgotten = tables.new_process();
    assert_eq!(
        sync.kernel_access(forgotten, va(402)),
        Err(KernelAccessError::MissingSync {
            table: forgotten,
            slot: 402
        })
    );
    assert_eq!(SyncStats::get(&sync.stats().missing_syncs), 1);
}

#[test]
fn allocation_failure_changes_nothing_and_boot_can_resume() {
    let tables: TestTables = TestTables::new(1);
    let push = KernelSync::new(
        &tables,
        &tables,
        tables.reference(),
        SyncPolicy::Push,
        LAYOUT,
    );
    tables.set_budget(Some(0));
    assert_eq!(
        push.ensure_slot(va(402)),
        Err(SyncError::OutOfMemory { added: 0 })
    );
    assert_eq!(push.generation(), 0);
    assert!(!entry_present(tables.read_slot(tables.reference(), 402)));

    let tables: TestTables = TestTables::new(1);
    let prealloc = KernelSync::new(
        &tables,
        &tables,
        tables.reference(),
        SyncPolicy::Prealloc,
        LAYOUT,
    );
    tables.set_budget(Some(10));
    assert_eq!(prealloc.boot(), Err(SyncError::OutOfMemory { added: 10 }));
    assert_eq!(prealloc.generation(), 10);
    assert_eq!(tables.allocated(), 10);
    tables.set_budget(None);
    prealloc.boot().unwrap();
    assert_eq!(prealloc.stats().preallocated.load(Ordering::Relaxed), 64);
    assert_eq!(
        tables.allocated(),
        64,
        "nothing leaked, nothing allocated twice"
    );
}

#[derive(Clone, Copy, Debug)]
enum Step {
    Vmalloc(usize),
    Fork,
    Switch { cpu: usize, pick: usize },
    Access { cpu: usize, slot: usize },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (KERNEL_FIRST_SLOT..TOP_LEVEL_ENTRIES).prop_map(Step::Vmalloc),
        Just(Step::Fork),
        (0..4usize, 0..16usize).prop_map(|(cpu, pick)| Step::Switch { cpu, pick }),
        (0..4usize, KERNEL_FIRST_SLOT..TOP_LEVEL_ENTRIES)
            .prop_map(|(cpu, slot)| Step::Access { cpu, slot }),
    ]
}

/// Steps of one interleaving: fewer under Miri, where 80 steps over the
/// three policies ran past 25 minutes.
const STEPS: usize = if cfg!(miri) { 12 } else { 80 };

proptest! {
    #![proptest_config(ProptestConfig::with_cases(if cfg!(miri) { 2 } else { 64 }))]
    /// Whatever the interleaving, a kernel access through a loaded table
    /// never fails for lack of a sync (under `fault` it may fault and be
    /// fixed), and no policy adds more than 256 entries.
    #[test]
    fn loaded_tables_never_miss_a_sync(steps in prop::collection::vec(step(), 0..STEPS)) {
        for policy in SyncPolicy::ALL {
            let tables: TestTables = TestTables::new(4);
            let sync = sync(&tables, policy);
            let mut pgds = Vec::new();
            for step in &steps {
                match *step {
                    Step::Vmalloc(slot) => { sync.ensure_slot(va(slot)).unwrap(); }
                    Step::Fork => {
                        if pgds.len() < 16 {
                            let pgd = tables.new_process();
                            sync.init_process_table(pgd);
                            pgds.push(pgd);
                        }
                    }
                    Step::Switch { cpu, pick } => {
                        if !pgds.is_empty() {
                            let pgd = pgds[pick % pgds.len()];
                            sync.switch_to(pgd);
                            tables.load(cpu, pgd);
                        }
                    }
                    Step::Access { cpu, slot } => {
                        let table = tables.loaded_table(lazymmu::cpu::CpuId::new(cpu));
                        let mapped = entry_present(tables.read_slot(tables.reference(), slot));
                        match sync.kernel_access(table, va(slot)) {
                            Ok(AccessOutcome::FaultFixed) => prop_assert_eq!(policy, SyncPolicy::Fault),
                            Ok(AccessOutcome::Hit) => prop_assert!(mapped),
                            Err(KernelAccessError::Unmapped(_)) => prop_assert!(!mapped),
                            Err(other) => prop_assert!(false, "{:?}: {:?}", policy, other),
                        }
                    }
                }
            }
            prop_assert!(sync.generation() as usize <= KERNEL_SLOTS);
            prop_assert_eq!(SyncStats::get(&sync.stats().missing_syncs), 0);
        }
    }
}

#[test]
fn five_level_paging_uses_its_own_format_and_layout() {
    use lazymmu::pgtable::format::{Entry, Format, X86_64_5Level};
    let tables: TestTables<X86_64_5Level> = TestTables::new(1);
    let five = KernelLayout::X86_64_5LEVEL;
    let sync = KernelSync::new(
        &tables,
        &tables,
        tables.reference(),
        SyncPolicy::Prealloc,
        five,
    );
    sync.boot().unwrap();
    assert_eq!(sync.stats().preallocated.load(Ordering::Relaxed), 50);
    for slot in five.vmalloc_range() {
        let raw = tables.read_slot(tables.reference(), slot);
        assert!(
            matches!(X86_64_5Level::decode(raw, 5), Entry::Table(_)),
            "slot {slot}"
        );
    }
    let pgd = tables.new_process();
    sync.init_process_table(pgd);
    let va = five.slot_base(430).add(0x1000);
    assert_eq!(sync.kernel_access(pgd, va), Ok(AccessOutcome::Hit));
}

#[test]
#[should_panic(expected = "layout and format disagree")]
fn a_layout_of_the_wrong_depth_is_refused() {
    let tables: TestTables = TestTables::new(1);
    let _ = KernelSync::new(
        &tables,
        &tables,
        tables.reference(),
        SyncPolicy::Push,
        KernelLayout::X86_64_5LEVEL,
    );
}
