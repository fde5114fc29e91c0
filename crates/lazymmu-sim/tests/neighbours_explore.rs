//! The neighbour workloads under an exhaustive chooser: the enumeration is
//! complete on a tiny scenario (hand-counted), correct policies pass every
//! schedule, and the known-bad configurations are found and replayable.

use lazymmu::mm::active_mm::LazyTlbPolicy;
use lazymmu::mm::kernel_sync::SyncPolicy;
use lazymmu::mm::pkey_window::WindowPolicy;
use lazymmu_sim::choice::{Chooser, Replay};
use lazymmu_sim::explore::{catching, Bounds, Explorer, RunOutcome, System};
use lazymmu_sim::invariant::Invariant;
use lazymmu_sim::neighbours::ctxswitch::{self, CtxSwitchConfig};
use lazymmu_sim::neighbours::pgmap::{self, PgmapConfig};
use lazymmu_sim::neighbours::vmalloc_grow::{self, VmallocGrowConfig};
use lazymmu_sim::neighbours::NeighbourRow;

/// A workload run as a system the explorer drives.
struct Workload<F>(F);

impl<F: Fn(&mut dyn Chooser) -> NeighbourRow> System for Workload<F> {
    fn run(&self, chooser: &mut dyn Chooser) -> RunOutcome {
        catching(|| RunOutcome {
            violation: (self.0)(chooser).first_violations.into_iter().next(),
            stopped: false,
        })
    }
}

/// Runs every schedule (unbounded, no pruning) until the first violation;
/// returns (schedules, the first failing schedule's picks and row).
fn explore(
    run: impl Fn(&mut dyn Chooser) -> NeighbourRow,
) -> (u64, Option<(Vec<u32>, NeighbourRow)>) {
    let explorer = Explorer::new(Bounds {
        preemptions: None,
        prune: false,
        max_schedules: None,
        stop_at_first: true,
        partial_order: false,
    });
    let system = Workload(run);
    let report = explorer.explore("neighbour", &system);
    assert!(report.complete() || !report.violations.is_empty());
    let failure = report.violations.first().map(|found| {
        let picks = found.trace.picks.clone();
        let row = (system.0)(&mut Replay::new(picks.clone()));
        (picks, row)
    });
    (report.schedules, failure)
}

#[test]
fn one_pgmap_step_has_the_hand_counted_schedules() {
    // Per CPU (2): open 1, close 1 (nothing open), access 1, interrupt 2
    // (nested exception or not), preempt 1 (one idle task) = 6; 12 in all.
    let config = PgmapConfig::tiny(WindowPolicy::Task, 1);
    let (schedules, failure) = explore(|chooser| pgmap::run_with(&config, chooser));
    assert_eq!(schedules, 12);
    assert!(failure.is_none());
}

#[test]
fn correct_pgmap_policies_pass_every_schedule_of_three_steps() {
    for policy in WindowPolicy::ALL {
        let config = PgmapConfig::tiny(policy, 3);
        let (schedules, failure) = explore(|chooser| pgmap::run_with(&config, chooser));
        assert!(failure.is_none(), "{policy:?}: {failure:?}");
        assert!(schedules > 1_000, "{schedules}");
    }
}

#[test]
fn pgmap_percpu_preemptible_is_found_and_replays() {
    let config = PgmapConfig {
        preemptible_windows: true,
        ..PgmapConfig::tiny(WindowPolicy::PerCpu, 3)
    };
    let (_, failure) = explore(|chooser| pgmap::run_with(&config, chooser));
    let (schedule, row) = failure.expect("the variant must be caught");
    assert!(schedule.len() <= 9, "three steps at most: {schedule:?}");
    assert!(row
        .first_violations
        .iter()
        .any(|v| v.invariant == Invariant::PreemptedInWindow));
    let replayed = pgmap::run_with(&config, &mut Replay::new(schedule));
    assert_eq!(replayed.first_violations, row.first_violations);
}

#[test]
fn vmalloc_grow_policies_pass_every_schedule() {
    for policy in SyncPolicy::ALL {
        let config = VmallocGrowConfig::tiny(policy);
        let (schedules, failure) = explore(|chooser| vmalloc_grow::run_with(&config, chooser));
        assert!(failure.is_none(), "{policy:?}: {failure:?}");
        assert!(schedules > 100, "{schedules}");
    }
}

#[test]
fn ctxswitch_lost_ipi_counterexample_replays_for_every_policy() {
    // cpu1 runs the task, then the kernel thread (lazy on its space); the
    // task moves to cpu0 and exits: the flush or shootdown that must reach
    // cpu1 is lost.
    // The picks, one per decision with more than one alternative: step 1
    // cpu 1, switch, to a user task (the only one); step 2 cpu 1, switch,
    // to the kernel thread (of it and the idle task); step 3 cpu 0, switch
    // (the task is the only candidate); step 4 cpu 0, exit.
    let schedule: Vec<u32> = vec![1, 0, 1, 1, 0, 0, 0, 0, 0, 4];
    for policy in LazyTlbPolicy::ALL {
        let good = CtxSwitchConfig::tiny(policy, 4);
        let row = ctxswitch::run_with(&good, &mut Replay::new(schedule.clone()));
        assert_eq!(row.violations, 0, "{policy:?}: {:#?}", row.first_violations);
        assert_eq!(
            row.counts["spaces_freed"], 2,
            "{policy:?}: exited and final process"
        );
        let bad = CtxSwitchConfig {
            lose_ipis: true,
            ..good
        };
        let row = ctxswitch::run_with(&bad, &mut Replay::new(schedule.clone()));
        assert!(
            row.first_violations
                .iter()
                .any(|v| v.invariant == Invariant::FreedInUse),
            "{policy:?}: {:#?}",
            row.first_violations
        );
    }
}

#[test]
fn ctxswitch_tiny_passes_every_schedule_of_two_steps() {
    for policy in LazyTlbPolicy::ALL {
        let config = CtxSwitchConfig::tiny(policy, 2);
        let (schedules, failure) = explore(|chooser| ctxswitch::run_with(&config, chooser));
        assert!(failure.is_none(), "{policy:?}: {failure:?}");
        assert!(schedules > 50, "{schedules}");
    }
}

mod with_the_explorer {
    use lazymmu_sim::explore::{replay, Bounds, Explorer};
    use lazymmu_sim::neighbours::{scenarios, variant, KNOWN_BAD};

    #[test]
    fn every_policy_scenario_passes_exhaustively() {
        let explorer = Explorer::new(Bounds::default());
        let all = scenarios();
        assert_eq!(all.len(), 3 + 4 + 2, "a scenario per policy");
        for system in &all {
            let report = explorer.explore(&system.name, system);
            assert!(report.complete(), "{}", system.name);
            assert!(
                report.violations.is_empty(),
                "{}: {:?}",
                system.name,
                report.violations
            );
            assert!(
                report.schedules > 10,
                "{}: {}",
                system.name,
                report.schedules
            );
        }
    }

    #[test]
    fn known_bad_variants_are_caught_with_replayable_traces() {
        let explorer = Explorer::new(Bounds::default());
        for name in KNOWN_BAD {
            let system = variant(name).unwrap();
            let report = explorer.explore(name, &system);
            let found = report
                .violations
                .first()
                .unwrap_or_else(|| panic!("{name} not caught"));
            let outcome = replay(&system, &found.trace.picks);
            assert_eq!(outcome.violation.as_ref(), Some(&found.violation), "{name}");
        }
        assert!(variant("pgmap-nonsense").is_none());
    }
}
