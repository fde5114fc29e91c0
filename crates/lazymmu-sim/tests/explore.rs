//! The explorer on the machine: enumeration complete on a hand-counted
//! scenario, the shipped designs pass every scenario at preemption bound 2,
//! every known-bad variant is caught with a replayable trace.

use lazymmu_sim::choice::Trace;
use lazymmu_sim::explore::{Bounds, Completion, Explorer};
use lazymmu_sim::invariant::Invariant;
use lazymmu_sim::scenarios::{self, check, find, replay_trace, tiny, Entry, Variant};

fn bounds(preemptions: Option<u32>, prune: bool) -> Bounds {
    Bounds {
        preemptions,
        prune,
        ..Bounds::default()
    }
}

#[test]
fn tiny_scenario_has_the_hand_computed_number_of_schedules() {
    // One CPU, tasks a = [w, w] and b = [w, w], a running first, each
    // task's script one unit of work. A running task offers a preemption
    // at four points: before each write and once inside it (where the
    // write reaches the machine), never before it has done anything since
    // it got the CPU. So each task runs as five segments, and a schedule
    // is an interleaving of a1..a5 and b1..b5 starting with a. With r runs
    // of segments, a's five segments fall into ceil(r/2) runs and b's into
    // floor(r/2): C(4, ceil(r/2) - 1) × C(4, floor(r/2) - 1) schedules.
    // Every switch is a preemption but the one after the first task to
    // finish, so r runs cost r - 2 preemptions (aaaaabbbbb costs none):
    //   r            2  3   4   5   6   7   8  9  10
    //   schedules    1  4  16  24  36  24  16  4   1   (126 = C(9, 4))
    //   preemptions  0  1   2   3   4   5   6  7   8
    let scenario = tiny();
    for (bound, expected) in [
        (Some(0), 1),
        (Some(1), 5),
        (Some(2), 21),
        (Some(3), 45),
        (None, 126),
    ] {
        let report = Explorer::new(bounds(bound, false)).explore("tiny", &scenario.spec);
        assert!(report.complete());
        assert_eq!(report.completion, Completion::Complete);
        assert_eq!(report.schedules, expected, "bound {bound:?}");
        assert!(report.violations.is_empty());
    }
    // Pruning never loses a schedule within two preemptions: no two
    // prefixes reach the same state with the same budget left.
    let pruned = Explorer::new(bounds(Some(2), true)).explore("tiny", &scenario.spec);
    assert_eq!(pruned.schedules, 21);
    // Unbounded, segments that commute reach states already visited.
    let pruned = Explorer::new(bounds(None, true)).explore("tiny", &scenario.spec);
    assert!(pruned.pruned > 0 && pruned.schedules < 126, "{pruned:?}");
    assert!(pruned.complete());
}

#[test]
fn shipped_designs_pass_every_machine_scenario_at_bound_two() {
    let machine: Vec<_> = scenarios::machine_scenarios()
        .into_iter()
        .map(Entry::Machine)
        .collect();
    for variant in Variant::SHIPPED {
        let report = check(&machine, variant, bounds(Some(2), true), None);
        assert_eq!(report.scenarios.len(), machine.len());
        for s in &report.scenarios {
            assert_eq!(s.bound, Some(2));
            assert!(s.report.complete(), "{} incomplete", s.scenario);
            assert!(s.report.schedules > 1, "{} explored nothing", s.scenario);
        }
        let violations: Vec<_> = report
            .violations()
            .map(|(s, f)| format!("{s}: {} at {}", f.violation, f.trace))
            .collect();
        assert!(violations.is_empty(), "{variant}: {violations:#?}");
    }
}

/// The simulator workloads' bound in these (unoptimised) tests: bound 1.
/// The release `lazymmu check` of CI explores them at bound 2, as every
/// other scenario.
const TEST_SIM_PREEMPTIONS: Option<u32> = Some(1);

#[test]
fn default_design_passes_every_simulator_workload() {
    let sim: Vec<_> = scenarios::simulator_scenarios()
        .into_iter()
        .map(Entry::Simulator)
        .collect();
    let report = check(
        &sim,
        Variant::Default,
        bounds(Some(2), true),
        TEST_SIM_PREEMPTIONS,
    );
    assert_eq!(report.scenarios.len(), sim.len());
    for s in &report.scenarios {
        assert_eq!(s.bound, TEST_SIM_PREEMPTIONS);
        assert!(s.report.complete(), "{} incomplete", s.scenario);
        assert!(s.report.schedules > 10, "{} explored nothing", s.scenario);
    }
    let violations: Vec<_> = report
        .violations()
        .map(|(s, f)| format!("{s}: {} at {}", f.violation, f.trace))
        .collect();
    assert!(violations.is_empty(), "{violations:#?}");
    // Known-bad wrappers exist on the scenario machine only.
    assert!(check(&sim, Variant::Linux70Xen, Bounds::default(), Some(1))
        .scenarios
        .is_empty());
}

#[test]
fn every_neighbour_policy_holds_and_its_known_bad_variants_do_not() {
    let neighbours: Vec<_> = scenarios::all()
        .into_iter()
        .filter(|s| matches!(s, Entry::Neighbour(_)))
        .collect();
    assert!(neighbours.len() >= 9);
    let report = check(&neighbours, Variant::Default, Bounds::default(), None);
    assert_eq!(report.scenarios.len(), neighbours.len());
    assert!(report.holds());
    for variant in [Variant::PgmapPercpuPreemptible, Variant::CtxswitchLostIpi] {
        let report = check(&neighbours, variant, Bounds::default(), None);
        assert_eq!(report.scenarios.len(), 1, "{variant}");
        assert!(!report.holds(), "{variant} not caught");
    }
}

#[test]
fn every_known_bad_variant_is_caught_and_its_trace_replays() {
    for variant in Variant::KNOWN_BAD {
        let report = check(&scenarios::all(), variant, Bounds::default(), None);
        let (scenario, found) = report
            .violations()
            .min_by_key(|(_, f)| (f.trace.departures(), f.trace.picks.len()))
            .unwrap_or_else(|| panic!("{variant} not caught"));
        assert!(
            found.trace.departures() <= 3,
            "{variant}: trace {} is not short",
            found.trace
        );
        let printed = found.trace.to_string();
        let trace: Trace = printed.parse().unwrap();
        assert_eq!(trace.scenario, scenario);
        let again = replay_trace(&find(scenario).unwrap(), variant, &trace.picks).unwrap();
        assert!(!again.diverged);
        assert_eq!(
            again.violation.as_ref(),
            Some(&found.violation),
            "{printed}"
        );
        // The same schedule is fine on the default design.
        let fixed = replay_trace(&find(scenario).unwrap(), Variant::Default, &trace.picks).unwrap();
        assert_eq!(
            fixed.violation, None,
            "{printed} fails on the default design"
        );
    }
}

/// The scripted scenarios' tasks are threads of one process that has run
/// on both CPUs: `mm_users` counts every thread and `mm_cpumask` holds
/// every CPU, so sparc64's batched flush cross-calls the other CPU
/// (`smp_flush_tlb_pending`, arch/sparc/kernel/smp_64.c). With one user
/// and an empty mask the flush stayed local, and this schedule — the other
/// thread caching a page while the zap's batch is pending — left it stale
/// there.
#[test]
fn sparc64_flushes_reach_the_other_thread_of_the_process() {
    let scenario = find("sparc64-munmap").unwrap();
    let trace: Trace = "sparc64-munmap:0*10.2".parse().unwrap();
    let replayed = replay_trace(&scenario, Variant::Default, &trace.picks).unwrap();
    assert!(!replayed.diverged);
    assert_eq!(replayed.violation, None);
    let report = check(&[scenario], Variant::Default, bounds(Some(2), true), None);
    assert!(report.scenarios[0].report.complete());
    assert!(report.holds());
}

#[test]
fn linux70_ordering_double_enters_on_xen() {
    let report = check(
        &[find("switch-windows").unwrap()],
        Variant::Linux70Xen,
        Bounds::default(),
        None,
    );
    let (_, found) = report.violations().next().expect("caught");
    assert_eq!(
        found.violation.invariant,
        Invariant::EnterLeave,
        "{found:?}"
    );
    assert!(found.violation.invariant.to_string().starts_with("3:"));
    assert!(found.violation.detail.contains("double-enter"), "{found:?}");
}

#[test]
fn single_slot_stateful_sections_leave_the_key_register_open() {
    let scenario = find("pkeys-nested").unwrap();
    let report = check(
        std::slice::from_ref(&scenario),
        Variant::StatefulSingleSlot,
        Bounds::default(),
        None,
    );
    let (_, found) = report.violations().next().expect("caught");
    assert_eq!(
        found.violation.invariant,
        Invariant::KeyRestore,
        "{found:?}"
    );
    assert!(found.violation.invariant.to_string().starts_with("5:"));
    // Nested sections alone show it: no preemption needed.
    assert_eq!(found.trace.departures(), 0, "{}", found.trace);
    // Each section carrying its own saved value restores it exactly.
    let fixed = check(&[scenario], Variant::Stateful, Bounds::default(), Some(1));
    assert!(fixed.holds());
}

#[test]
fn freeing_page_tables_before_the_flush_is_a_use_after_free() {
    let scenario = find("exit-free-tables").unwrap();
    let report = check(
        std::slice::from_ref(&scenario),
        Variant::GatherFreeBeforeFlush,
        Bounds::default(),
        None,
    );
    let (_, found) = report.violations().next().expect("caught");
    assert_eq!(
        found.violation.invariant,
        Invariant::FreedInUse,
        "{found:?}"
    );
    assert!(found.violation.invariant.to_string().starts_with("7:"));
    assert!(
        found.violation.detail.contains("paging-structure cache"),
        "{}",
        found.violation.detail
    );
    assert!(check(&[scenario], Variant::Default, Bounds::default(), None).holds());
}

#[test]
fn a_broken_simulator_run_is_reported_with_a_replayable_trace() {
    use lazymmu_sim::explore::replay;
    use lazymmu_sim::scenarios::simulator_scenarios;

    // KASAN reading back without pausing sees the stale batched value
    // (invariant 6): the simulator's violations come out of the explorer
    // like any other.
    let mut scenario = simulator_scenarios()
        .into_iter()
        .find(|s| s.name == "sim-kasan")
        .unwrap();
    scenario.config.read_back_without_pause = true;
    let report = Explorer::new(bounds(Some(1), false)).explore("sim-kasan", &scenario);
    let found = report.violations.first().expect("stale read-back caught");
    assert_eq!(
        found.violation.invariant,
        Invariant::StaleReadBack,
        "{found:?}"
    );
    assert!(found.violation.invariant.to_string().starts_with("6:"));
    let again = replay(&scenario, &found.trace.picks);
    assert_eq!(again.violation.as_ref(), Some(&found.violation));
}
