//! The explorer on the machine: enumeration complete on a hand-counted
//! scenario, the shipped designs pass every scenario at preemption bound 2,
//! every known-bad variant is caught with a replayable trace.

use lazymmu_sim::explore::{Bounds, Explorer, Trace};
use lazymmu_sim::scenarios::{
    self, check, find, replay_trace, tiny, Entry, Variant, SIM_PREEMPTIONS,
};

fn bounds(preemptions: Option<u32>, prune: bool) -> Bounds {
    Bounds {
        preemptions,
        prune,
        ..Bounds::default()
    }
}

#[test]
fn tiny_scenario_has_the_hand_computed_number_of_schedules() {
    // One CPU, tasks a = [w, w] and b = [w, w], a running first. A task may
    // be preempted before any step once it has run a step since it was
    // switched in (before its first step for a at the start). The
    // interleavings and the preemptions they take:
    //   aabb 0 | bbaa 1 | abba 1 | abab 2 | baab 2 | baba 3
    let scenario = tiny();
    for (bound, expected) in [(Some(0), 1), (Some(1), 3), (Some(2), 5), (None, 6)] {
        let report = Explorer::new(bounds(bound, false)).explore("tiny", &scenario.spec);
        assert!(report.complete);
        assert_eq!(report.schedules, expected, "bound {bound:?}");
        assert!(report.violations.is_empty());
    }
    // Pruning never loses a schedule here: every state differs.
    let pruned = Explorer::new(bounds(None, true)).explore("tiny", &scenario.spec);
    assert_eq!(pruned.schedules, 6);
}

#[test]
fn shipped_designs_pass_every_machine_scenario_at_bound_two() {
    let machine: Vec<_> = scenarios::machine_scenarios()
        .into_iter()
        .map(Entry::Machine)
        .collect();
    for variant in Variant::SHIPPED {
        let report = check(&machine, variant, bounds(Some(2), true), SIM_PREEMPTIONS);
        assert_eq!(report.scenarios.len(), machine.len());
        for s in &report.scenarios {
            assert_eq!(s.bound, Some(2));
            assert!(s.report.complete, "{} incomplete", s.scenario);
            assert!(s.report.schedules > 1, "{} explored nothing", s.scenario);
        }
        let violations: Vec<_> = report
            .violations()
            .map(|(s, f)| format!("{s}: {} at {}", f.violation, f.trace))
            .collect();
        assert!(violations.is_empty(), "{variant}: {violations:#?}");
    }
}

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
        SIM_PREEMPTIONS,
    );
    assert_eq!(report.scenarios.len(), sim.len());
    for s in &report.scenarios {
        assert_eq!(s.bound, Some(SIM_PREEMPTIONS));
        assert!(s.report.complete, "{} incomplete", s.scenario);
        assert!(s.report.schedules > 10, "{} explored nothing", s.scenario);
    }
    let violations: Vec<_> = report
        .violations()
        .map(|(s, f)| format!("{s}: {} at {}", f.violation, f.trace))
        .collect();
    assert!(violations.is_empty(), "{violations:#?}");
    // Known-bad wrappers exist on the scenario machine only.
    assert!(check(&sim, Variant::Linux70Xen, Bounds::default(), 1)
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
    let report = check(&neighbours, Variant::Default, Bounds::default(), 1);
    assert_eq!(report.scenarios.len(), neighbours.len());
    assert!(report.holds());
    for variant in [Variant::PgmapPercpuPreemptible, Variant::CtxswitchLostIpi] {
        let report = check(&neighbours, variant, Bounds::default(), 1);
        assert_eq!(report.scenarios.len(), 1, "{variant}");
        assert!(!report.holds(), "{variant} not caught");
    }
}

#[test]
fn every_known_bad_variant_is_caught_and_its_trace_replays() {
    for variant in Variant::KNOWN_BAD {
        let report = check(
            &scenarios::all(),
            variant,
            Bounds::default(),
            SIM_PREEMPTIONS,
        );
        let (scenario, found) = report
            .violations()
            .min_by_key(|(_, f)| (f.trace.departures(), f.trace.choices.len()))
            .unwrap_or_else(|| panic!("{variant} not caught"));
        assert!(
            found.trace.departures() <= 3,
            "{variant}: trace {} is not short",
            found.trace
        );
        let printed = found.trace.to_string();
        let trace: Trace = printed.parse().unwrap();
        assert_eq!(trace.scenario, scenario);
        let again = replay_trace(&find(scenario).unwrap(), variant, &trace.choices).unwrap();
        assert!(!again.diverged);
        assert_eq!(
            again.violation.as_ref(),
            Some(&found.violation),
            "{printed}"
        );
        // The same schedule is fine on the default design.
        let fixed =
            replay_trace(&find(scenario).unwrap(), Variant::Default, &trace.choices).unwrap();
        assert_eq!(
            fixed.violation, None,
            "{printed} fails on the default design"
        );
    }
}

#[test]
fn linux70_ordering_double_enters_on_xen() {
    let report = check(
        &[find("switch-windows").unwrap()],
        Variant::Linux70Xen,
        Bounds::default(),
        SIM_PREEMPTIONS,
    );
    let (_, found) = report.violations().next().expect("caught");
    assert!(found.violation.invariant.starts_with("3:"), "{found:?}");
    assert!(found.violation.detail.contains("double-enter"), "{found:?}");
}

#[test]
fn single_slot_stateful_sections_leave_the_key_register_open() {
    let scenario = find("pkeys-nested").unwrap();
    let report = check(
        std::slice::from_ref(&scenario),
        Variant::StatefulSingleSlot,
        Bounds::default(),
        SIM_PREEMPTIONS,
    );
    let (_, found) = report.violations().next().expect("caught");
    assert!(found.violation.invariant.starts_with("5:"), "{found:?}");
    // Nested sections alone show it: no preemption needed.
    assert_eq!(found.trace.departures(), 0, "{}", found.trace);
    // Each section carrying its own saved value restores it exactly.
    let fixed = check(&[scenario], Variant::Stateful, Bounds::default(), 1);
    assert!(fixed.holds());
}

#[test]
fn freeing_page_tables_before_the_flush_is_a_use_after_free() {
    let scenario = find("exit-free-tables").unwrap();
    let report = check(
        std::slice::from_ref(&scenario),
        Variant::GatherFreeBeforeFlush,
        Bounds::default(),
        SIM_PREEMPTIONS,
    );
    let (_, found) = report.violations().next().expect("caught");
    assert!(found.violation.invariant.starts_with("7:"), "{found:?}");
    assert!(
        found.violation.detail.contains("paging-structure cache"),
        "{}",
        found.violation.detail
    );
    assert!(check(&[scenario], Variant::Default, Bounds::default(), 1).holds());
}

#[test]
fn a_broken_simulator_run_is_reported_with_a_replayable_trace() {
    use lazymmu_sim::explore::replay;
    use lazymmu_sim::explore::sim::SimWorkload;
    use lazymmu_sim::scenarios::simulator_scenarios;

    // KASAN reading back without pausing sees the stale batched value
    // (invariant 6): the relay must carry the simulator's violations out.
    let mut config = simulator_scenarios()
        .into_iter()
        .find(|s| s.name == "sim-kasan")
        .unwrap()
        .config;
    config.read_back_without_pause = true;
    let system = SimWorkload { config };
    let report = Explorer::new(bounds(Some(1), false)).explore("sim-kasan", &system);
    let found = report.violations.first().expect("stale read-back caught");
    assert!(found.violation.invariant.starts_with("6 "), "{found:?}");
    let again = replay(&system, &found.trace.choices);
    assert_eq!(again.violation.as_ref(), Some(&found.violation));
}
