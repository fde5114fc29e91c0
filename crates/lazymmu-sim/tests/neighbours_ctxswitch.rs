//! The `ctxswitch` workload: every policy runs clean, the broken machine is
//! caught, and the policies differ the way they should.

use lazymmu::mm::active_mm::LazyTlbPolicy;
use lazymmu_sim::cost::Platform;
use lazymmu_sim::invariant::Invariant;
use lazymmu_sim::machine::topology::{POWER8_E880, XEON_8176};
use lazymmu_sim::machine::Topology;
use lazymmu_sim::neighbours::ctxswitch::{run, CtxSwitchConfig};
use lazymmu_sim::neighbours::NeighbourRow;

fn small(policy: LazyTlbPolicy, cpus: usize) -> CtxSwitchConfig {
    let mut config = CtxSwitchConfig::new(policy, cpus);
    config.steps = 4_000;
    config
}

fn count(row: &NeighbourRow, name: &str) -> u64 {
    row.counts[name]
}

#[test]
fn every_policy_runs_without_violations() {
    for cpus in [1, 4, 16] {
        for policy in LazyTlbPolicy::ALL {
            let row = run(&small(policy, cpus));
            assert_eq!(
                row.violations, 0,
                "{policy:?}/{cpus}: {:#?}",
                row.first_violations
            );
            assert!(count(&row, "switches") > 1_000);
            assert!(count(&row, "borrows") > 100);
            assert!(
                count(&row, "spaces_freed") > 10,
                "exits happened and were freed"
            );
        }
    }
}

#[test]
fn runs_are_reproducible() {
    let a = run(&small(LazyTlbPolicy::X86, 4));
    let b = run(&small(LazyTlbPolicy::X86, 4));
    assert_eq!(a.counts, b.counts);
    assert_eq!(a.cycles, b.cycles);
}

#[test]
fn lost_ipis_are_caught_as_use_after_free_or_stale_translations() {
    for policy in LazyTlbPolicy::ALL {
        let mut config = small(policy, 4);
        config.lose_ipis = true;
        let row = run(&config);
        assert!(row.violations > 0, "{policy:?}");
        let kinds: Vec<_> = row.first_violations.iter().map(|v| v.invariant).collect();
        assert!(
            kinds.contains(&Invariant::FreedInUse) || kinds.contains(&Invariant::StaleTranslation),
            "{policy:?}: {kinds:?}"
        );
    }
    let mut config = small(LazyTlbPolicy::Shootdown, 4);
    config.lose_ipis = true;
    let row = run(&config);
    assert!(row
        .first_violations
        .iter()
        .any(|v| v.invariant == Invariant::FreedInUse));
}

#[test]
fn policies_trade_line_transfers_for_ipis() {
    let refcount = run(&small(LazyTlbPolicy::Refcount, 16));
    let shootdown = run(&small(LazyTlbPolicy::Shootdown, 16));
    let x86 = run(&small(LazyTlbPolicy::X86, 16));
    assert_eq!(count(&shootdown, "borrow_refs"), 0);
    assert!(count(&refcount, "borrow_refs") > 1_000);
    assert!(count(&shootdown, "line_transfers") < count(&refcount, "line_transfers"));
    assert!(count(&shootdown, "shootdown_ipis") > 0);
    assert_eq!(count(&refcount, "shootdown_ipis"), 0);
    assert!(count(&x86, "flush_skipped_lazy") > 0);
    assert!(count(&x86, "ipis") < count(&refcount, "ipis"));
    assert!(count(&x86, "catchup_flushes") > 0);
}

#[test]
fn many_seeds_and_sizes_run_clean() {
    for seed in 1..=12 {
        for cpus in [2, 3, 8] {
            for policy in LazyTlbPolicy::ALL {
                let mut config = CtxSwitchConfig::new(policy, cpus);
                config.steps = 1_500;
                config.seed = seed;
                config.processes = 1 + (seed as usize % 4);
                config.threads = 1 + (seed as usize % 3);
                let row = run(&config);
                assert_eq!(
                    row.violations, 0,
                    "{policy:?} cpus {cpus} seed {seed}: {:#?}",
                    row.first_violations
                );
            }
        }
    }
}

#[test]
fn the_switch_benchmark_is_bound_by_the_reference_count_line_on_many_cpus() {
    let elapsed = |policy, cpus| {
        let mut config = CtxSwitchConfig::switch_benchmark(policy, cpus);
        config.steps = 10_000;
        let row = run(&config);
        assert_eq!(row.violations, 0);
        assert_eq!(row.workload, "ctxswitch-bench");
        (
            row.counts["elapsed_cycles"],
            row.counts["hottest_line_transfers"],
        )
    };
    let (refcount_4, _) = elapsed(LazyTlbPolicy::Refcount, 4);
    let (shootdown_4, _) = elapsed(LazyTlbPolicy::Shootdown, 4);
    let (refcount_64, hot_refcount) = elapsed(LazyTlbPolicy::Refcount, 64);
    let (shootdown_64, hot_shootdown) = elapsed(LazyTlbPolicy::Shootdown, 64);
    // On 4 CPUs the switches themselves dominate: the policies are close.
    assert!(
        refcount_4 * 10 < shootdown_4 * 11,
        "{refcount_4} vs {shootdown_4}"
    );
    // On 64 the shared count serialises refcount; shootdown keeps scaling.
    assert!(hot_refcount > 10 * hot_shootdown);
    assert!(
        refcount_64 > 2 * shootdown_64,
        "{refcount_64} vs {shootdown_64}"
    );
}

/// Switches per million cycles of `policy` running will-it-scale's
/// `context_switch1_threads` on `topology`, `rounds` rounds per CPU.
fn bench_rate(policy: LazyTlbPolicy, topology: Topology, platform: Platform, rounds: u64) -> u64 {
    let mut config = CtxSwitchConfig::ping_pong(policy, topology, platform);
    config.steps = 2 * rounds * topology.cpus() as u64;
    let row = run(&config);
    assert_eq!(
        row.violations, 0,
        "{policy:?} on {topology}: {:#?}",
        row.first_violations
    );
    assert_eq!(row.counts["switches"], config.steps);
    assert_eq!(row.counts["spaces_freed"], 1);
    row.counts["switches_per_mcycle"]
}

#[test]
fn the_policies_keep_their_order_from_four_cpus_to_the_power8() {
    use LazyTlbPolicy::{Refcount, Shootdown, X86};
    // The x86 policy takes the same references as refcount; this benchmark
    // never flushes, so the two are the same run.
    for (topology, platform, rounds) in [
        (Topology::flat(4), Platform::X86, 50),
        (Topology::flat(64), Platform::X86, 20),
        (XEON_8176.topology, XEON_8176.platform, 4),
        (Topology::new(2, 12, 8).unwrap(), Platform::PpcHash, 2),
        (POWER8_E880.topology, POWER8_E880.platform, 1),
    ] {
        let refcount = bench_rate(Refcount, topology, platform, rounds);
        let shootdown = bench_rate(Shootdown, topology, platform, rounds);
        if topology.cpus() < 1_000 {
            let x86 = bench_rate(X86, topology, platform, rounds);
            assert_eq!(x86, refcount, "{topology}");
        }
        assert!(
            shootdown >= refcount,
            "{topology}: {shootdown} < {refcount}"
        );
        if topology.cpus() >= 64 {
            // The shared count serialises refcount; shootdown does not
            // touch it.
            assert!(
                shootdown > 2 * refcount,
                "{topology}: {shootdown} vs {refcount}"
            );
        }
    }
}
