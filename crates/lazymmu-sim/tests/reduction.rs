//! The two searches beyond plain enumeration: partial-order reduction
//! (sleep sets) finds every violation the full search finds, and PCT finds
//! a known bug in a configuration too big to enumerate, with a trace that
//! replays it.

use std::collections::BTreeSet;

use lazymmu_sim::explore::{Bounds, Completion, Explorer};
use lazymmu_sim::invariant::Invariant;
use lazymmu_sim::pct::RandomSearch;
use lazymmu_sim::scenarios::{self, find, replay_trace, Variant};

/// The invariants a search of `scenario` under `variant` breaks, and how
/// many schedules it ran and left asleep.
fn search(
    scenario: &str,
    variant: Variant,
    partial_order: bool,
) -> (BTreeSet<Invariant>, u64, u64) {
    let entry = find(scenario).expect("a scenario");
    let system = entry.system(variant).expect("the variant applies");
    let bounds = Bounds {
        preemptions: Some(2),
        partial_order,
        ..Bounds::default()
    };
    let report = Explorer::new(bounds).explore(scenario, &*system);
    // A variant whose default schedule fails stops there, with or
    // without sleep sets.
    assert!(
        report.complete() || report.completion == Completion::FirstViolation,
        "{scenario} under {variant}"
    );
    let found = report
        .violations
        .iter()
        .map(|f| f.violation.invariant)
        .collect();
    (found, report.schedules, report.slept)
}

#[test]
fn sleep_sets_find_what_the_full_search_finds() {
    // Small scenarios with two CPUs and several tasks, under every
    // known-bad variant of the lazy mode that applies to them, and under
    // the shipped designs (where both must find nothing).
    let scenarios = [
        "munmap",
        "fork",
        "mremap",
        "nested-pause",
        "irq-kernel-mapping",
        "xen-munmap",
    ];
    let variants = [
        Variant::Default,
        Variant::PerCpu,
        Variant::Linux70Xen,
        Variant::PercpuPreemptible,
        Variant::NestedNoFlush,
        Variant::IrqBatched,
        Variant::GatherFreeBeforeFlush,
    ];
    let mut slept = 0;
    let mut caught = 0;
    for scenario in scenarios {
        for variant in variants {
            let (full, full_schedules, none) = search(scenario, variant, false);
            let (reduced, schedules, asleep) = search(scenario, variant, true);
            assert_eq!(none, 0, "nothing sleeps without reduction");
            assert_eq!(
                full, reduced,
                "{scenario} under {variant}: the reduced search finds other invariants"
            );
            assert!(
                schedules <= full_schedules + full_schedules / 10,
                "{scenario} {variant}"
            );
            slept += asleep;
            caught += usize::from(!full.is_empty());
        }
    }
    assert!(
        slept > 0,
        "the reduction never slept: the comparison shows nothing"
    );
    assert!(
        caught > 0,
        "no known-bad variant was caught: the comparison shows nothing"
    );
}

fn pct(runs: u64, seed: u64) -> RandomSearch {
    RandomSearch {
        runs,
        seed,
        depth: 3,
    }
}

#[test]
fn pct_finds_a_double_enter_on_eight_cpus_and_its_trace_replays() {
    let big = find("big-sections").expect("the big scripted scenario");
    let report = scenarios::sample(
        std::slice::from_ref(&big),
        Variant::Linux70Xen,
        pct(40, 1),
        &mut |_| {},
    );
    let found: Vec<_> = report.violations().collect();
    assert!(
        found
            .iter()
            .any(|(_, f)| f.violation.invariant == Invariant::EnterLeave),
        "{found:?}"
    );
    for (_, f) in &found {
        let replayed = replay_trace(&big, Variant::Linux70Xen, &f.trace.picks).expect("applies");
        assert!(!replayed.diverged, "{}", f.trace);
        assert_eq!(
            replayed.violation.map(|v| v.invariant),
            Some(f.violation.invariant),
            "{}",
            f.trace
        );
    }
    // The same seed draws the same schedules.
    let again = scenarios::sample(&[big], Variant::Linux70Xen, pct(40, 1), &mut |_| {});
    let traces = |r: &scenarios::CheckReport| {
        r.violations()
            .map(|(_, f)| f.trace.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(traces(&report), traces(&again));
}

#[test]
fn the_shipped_design_holds_on_the_big_scenarios() {
    let report = scenarios::sample(
        &scenarios::random_scenarios(),
        Variant::Default,
        pct(4, 7),
        &mut |_| {},
    );
    assert_eq!(report.scenarios.len(), 3);
    for s in &report.scenarios {
        assert_eq!(s.report.schedules, 4);
        assert!(s.report.choice_points > 0);
    }
    let found: Vec<_> = report.violations().collect();
    assert!(found.is_empty(), "{found:?}");
}
