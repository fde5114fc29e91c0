//! The `vmalloc-grow` and `pgmap` workloads: every policy runs clean, the
//! 256-sync bound holds, the policies' work differs as it should, and the
//! known-bad per-CPU variant is caught.

use lazymmu::mm::kernel_sync::SyncPolicy;
use lazymmu::mm::pkey_window::WindowPolicy;
use lazymmu_sim::invariant::Invariant;
use lazymmu_sim::neighbours::pgmap::{self, PgmapConfig};
use lazymmu_sim::neighbours::vmalloc_grow::{self, VmallocGrowConfig};
use lazymmu_sim::neighbours::NeighbourRow;

fn count(row: &NeighbourRow, name: &str) -> u64 {
    row.counts[name]
}

fn grow(policy: SyncPolicy, processes: usize) -> NeighbourRow {
    let mut config = VmallocGrowConfig::new(policy, processes);
    config.allocations = 256;
    vmalloc_grow::run(&config)
}

#[test]
fn every_sync_policy_runs_clean_within_256_syncs() {
    for processes in [10, 200] {
        for policy in SyncPolicy::ALL {
            let row = grow(policy, processes);
            assert_eq!(row.violations, 0, "{policy:?}: {:#?}", row.first_violations);
            assert!(count(&row, "top_level_syncs") <= 256);
            assert_eq!(
                count(&row, "top_level_syncs"),
                64,
                "{policy:?}: the whole vmalloc area"
            );
            assert!(count(&row, "accesses") > 500);
        }
    }
}

#[test]
fn every_kernel_slot_can_be_synced_once_and_no_more() {
    for policy in SyncPolicy::ALL {
        let mut config = VmallocGrowConfig::new(policy, 10);
        config.slots = 400; // more than the kernel half: clamped to 256
        config.allocations = 1_024;
        let row = vmalloc_grow::run(&config);
        assert_eq!(row.violations, 0, "{policy:?}");
        assert_eq!(count(&row, "top_level_syncs"), 256, "{policy:?}");
    }
}

#[test]
fn sync_policies_do_the_work_they_should() {
    let fault = grow(SyncPolicy::Fault, 200);
    let push = grow(SyncPolicy::Push, 200);
    let generation = grow(SyncPolicy::Generation, 200);
    let prealloc = grow(SyncPolicy::Prealloc, 200);
    // Push writes every table for every new slot.
    assert_eq!(count(&push, "entries_copied"), 64 * 200);
    assert_eq!(count(&push, "faults"), 0);
    // Fault copies only on use, each copy a fault.
    assert!(count(&fault, "faults") > 0);
    assert_eq!(count(&fault, "faults"), count(&fault, "entries_copied"));
    assert!(count(&fault, "entries_copied") < count(&push, "entries_copied"));
    // Generation checks at every switch and copies only what was missed.
    assert!(count(&generation, "generation_checks") > 0);
    assert!(count(&generation, "entries_copied") < count(&push, "entries_copied"));
    // Prealloc does its work at boot and nothing after.
    assert_eq!(count(&prealloc, "boot_tables"), 64);
    assert_eq!(count(&prealloc, "entries_copied"), 0);
    assert!(prealloc.cycles < push.cycles);
}

#[test]
fn pgmap_policies_run_clean() {
    for policy in WindowPolicy::ALL {
        let mut config = PgmapConfig::new(policy);
        config.steps = 5_000;
        let row = pgmap::run(&config);
        assert_eq!(row.violations, 0, "{policy:?}: {:#?}", row.first_violations);
        assert!(count(&row, "opens") > 500);
        assert!(count(&row, "exceptions") > 300);
        assert!(count(&row, "switches") > 100);
        if policy == WindowPolicy::Task {
            assert!(count(&row, "migrations") > 0);
            assert_eq!(count(&row, "preemptions_deferred"), 0);
        } else {
            assert!(count(&row, "preemptions_deferred") > 0);
        }
    }
}

#[test]
fn pgmap_percpu_preemptible_is_caught() {
    let mut config = PgmapConfig::variant("pgmap-percpu-preemptible").unwrap();
    config.steps = 5_000;
    let row = pgmap::run(&config);
    assert_eq!(row.policy, "percpu-preemptible");
    assert!(row.violations > 0);
    let kinds: Vec<_> = row.first_violations.iter().map(|v| v.invariant).collect();
    assert!(kinds.contains(&Invariant::PreemptedInWindow), "{kinds:?}");
    assert!(PgmapConfig::variant("pgmap-nonsense").is_none());
}

#[test]
fn many_seeds_run_clean() {
    for seed in 1..=12 {
        for policy in SyncPolicy::ALL {
            let mut config = VmallocGrowConfig::new(policy, 1 + seed as usize * 7);
            config.allocations = 128;
            config.cpus = 1 + seed as usize % 5;
            config.seed = seed;
            let row = vmalloc_grow::run(&config);
            assert_eq!(
                row.violations, 0,
                "{policy:?} seed {seed}: {:#?}",
                row.first_violations
            );
        }
        for policy in WindowPolicy::ALL {
            let mut config = PgmapConfig::new(policy);
            config.steps = 2_000;
            config.cpus = 1 + seed as usize % 4;
            config.tasks = config.cpus + 1 + seed as usize % 3;
            config.seed = seed;
            let row = pgmap::run(&config);
            assert_eq!(
                row.violations, 0,
                "{policy:?} seed {seed}: {:#?}",
                row.first_violations
            );
        }
    }
}
