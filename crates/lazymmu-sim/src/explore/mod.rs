//! Exhaustive, preemption-bounded exploration of a system's choice points.
//!
//! A *system* is anything that can run once from its initial state while
//! asking a [`Chooser`] at every scheduling decision (continue, take an
//! interrupt, preempt and switch, migrate, ...) which of the offered options
//! to take, and that reports the [`Violation`] that stopped it, if any.
//!
//! The [`Explorer`] enumerates the runs depth first, as CHESS does
//! (Musuvathi et al., "Finding and Reproducing Heisenbugs in Concurrent
//! Programs", OSDI 2008): a run is identified by the sequence of option
//! indices chosen at its choice points; after each run the deepest choice
//! point with an untried option is advanced and the system is run again from
//! its initial state with that prefix. Option 0 is always "carry on as
//! before" and costs nothing; the options from [`ChoicePoint::free`] onward
//! are *preemptive* and each costs one unit of the preemption bound, so that
//! bound `k` covers every schedule with at most `k` preemptions.
//!
//! When a choice point carries a digest of the whole system state, states
//! already reached with at least as much preemption budget left are pruned:
//! everything reachable from them has been (or is being) explored.
//!
//! A schedule is printed as a [`Trace`] (`scenario:0.0.2.0.1`, trailing
//! zeros dropped since missing choices default to 0) and replayed with
//! [`replay`].

pub mod sim;

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// One scheduling decision offered to the chooser.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChoicePoint {
    /// Number of options; at least 1. Option 0 continues as before.
    pub options: usize,
    /// Options `0..free` cost nothing; options `free..options` are
    /// preemptive and cost one unit of the preemption bound each.
    pub free: usize,
    /// A digest of the complete state of the system at this point (including
    /// everything that determines the rest of the run), or `None` when the
    /// system cannot tell; only points with a digest are pruned.
    pub digest: Option<u64>,
}

impl ChoicePoint {
    /// Whether choosing `option` costs a preemption.
    pub fn is_preemptive(&self, option: usize) -> bool {
        option >= self.free
    }
}

/// What a system asks at every choice point. `Send`, because a system may
/// run its simulated tasks on threads of their own (one at a time).
pub trait Chooser: Send {
    /// The option to take at `point`, or `None` to stop the run here (the
    /// rest of it has already been explored).
    fn choose(&mut self, point: &ChoicePoint) -> Option<usize>;

    /// The options this chooser is going to take, in order (0 after the
    /// end), when they do not depend on the points it is shown; `None`
    /// when they do (pruning). A system may then run ahead with them and
    /// show the points afterwards.
    fn plan(&self) -> Option<&[usize]> {
        None
    }
}

/// A broken contract, as the system reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Which invariant, e.g. `3: arch enter/leave alternate per CPU`.
    pub invariant: String,
    /// What happened, with the CPU, task and step.
    pub detail: String,
    /// The last events before the violation, oldest first.
    pub events: Vec<String>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invariant {}: {}", self.invariant, self.detail)
    }
}

/// How a run ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunOutcome {
    /// The violation that stopped the run, if any.
    pub violation: Option<Violation>,
    /// Whether the chooser stopped the run early (a pruned state).
    pub stopped: bool,
}

/// Something the explorer can run: from the initial state, asking `chooser`
/// at every choice point. Runs must be deterministic: the same choices give
/// the same run.
pub trait System {
    /// Runs once from the initial state.
    fn run(&self, chooser: &mut dyn Chooser) -> RunOutcome;
}

/// A schedule: the scenario it belongs to and the option chosen at each
/// choice point. Missing trailing choices are 0.
///
/// Printed and parsed as `NAME:C0.C1.C2...` (`NAME:` alone for the schedule
/// that always continues), for example `xen-switch-windows:0.0.2.0.1`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Trace {
    /// The scenario's name.
    pub scenario: String,
    /// Option index at each choice point, trailing zeros dropped.
    pub choices: Vec<usize>,
}

impl Trace {
    /// A trace with trailing zeros dropped.
    pub fn new(scenario: impl Into<String>, mut choices: Vec<usize>) -> Self {
        while choices.last() == Some(&0) {
            choices.pop();
        }
        Self {
            scenario: scenario.into(),
            choices,
        }
    }

    /// Number of non-zero choices: an upper bound on the preemptions the
    /// schedule takes.
    pub fn departures(&self) -> usize {
        self.choices.iter().filter(|&&c| c != 0).count()
    }

    /// Whether `self` is a shorter counterexample than `other`: fewer
    /// departures from the default, then fewer choice points.
    pub fn is_shorter_than(&self, other: &Trace) -> bool {
        (self.departures(), self.choices.len(), &self.choices)
            < (other.departures(), other.choices.len(), &other.choices)
    }
}

impl fmt::Display for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.scenario)?;
        for (i, c) in self.choices.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

/// Why a trace string could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TraceError {
    /// No `:` separates the scenario name from the choices.
    MissingColon,
    /// The scenario name is empty.
    EmptyScenario,
    /// A choice is not a non-negative integer.
    BadChoice(String),
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TraceError::MissingColon => f.write_str("a trace is SCENARIO:C0.C1... (no ':' found)"),
            TraceError::EmptyScenario => f.write_str("the trace names no scenario"),
            TraceError::BadChoice(c) => write!(f, "choice {c:?} is not a number"),
        }
    }
}

impl std::error::Error for TraceError {}

impl FromStr for Trace {
    type Err = TraceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (scenario, rest) = s.split_once(':').ok_or(TraceError::MissingColon)?;
        if scenario.is_empty() {
            return Err(TraceError::EmptyScenario);
        }
        let choices = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('.')
                .map(|c| {
                    c.parse::<usize>()
                        .map_err(|_| TraceError::BadChoice(c.to_owned()))
                })
                .collect::<Result<_, _>>()?
        };
        Ok(Trace::new(scenario, choices))
    }
}

/// Plays a fixed sequence of choices, then 0 at every further point;
/// records every point it was asked.
#[derive(Debug, Default)]
pub struct ReplayChooser {
    choices: Vec<usize>,
    /// Every point asked, with the option taken.
    pub taken: Vec<(ChoicePoint, usize)>,
    /// Whether a recorded choice was out of range (and 0 was taken instead).
    pub diverged: bool,
}

impl ReplayChooser {
    /// A chooser that plays `choices`.
    pub fn new(choices: Vec<usize>) -> Self {
        Self {
            choices,
            taken: Vec::new(),
            diverged: false,
        }
    }
}

impl Chooser for ReplayChooser {
    fn choose(&mut self, point: &ChoicePoint) -> Option<usize> {
        let k = self.taken.len();
        let mut choice = self.choices.get(k).copied().unwrap_or(0);
        if choice >= point.options {
            self.diverged = true;
            choice = 0;
        }
        self.taken.push((point.clone(), choice));
        Some(choice)
    }

    fn plan(&self) -> Option<&[usize]> {
        self.taken.is_empty().then_some(&self.choices[..])
    }
}

/// Runs `system` with the choices of `trace`.
///
/// The outcome is `diverged` when the trace asks for an option a choice
/// point does not offer (the trace was made for another scenario or
/// variant).
pub fn replay(system: &dyn System, choices: &[usize]) -> ReplayOutcome {
    let mut chooser = ReplayChooser::new(choices.to_vec());
    let outcome = system.run(&mut chooser);
    ReplayOutcome {
        violation: outcome.violation,
        choice_points: chooser.taken.len(),
        diverged: chooser.diverged,
    }
}

/// The result of [`replay`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayOutcome {
    /// The violation the schedule ends in, if any.
    pub violation: Option<Violation>,
    /// How many choice points the run passed.
    pub choice_points: usize,
    /// Whether the trace named an option a point did not offer.
    pub diverged: bool,
}

/// Limits of one exploration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// At most this many preemptive choices per schedule; `None` for no
    /// bound (the system must then be finite by itself).
    pub preemptions: Option<u32>,
    /// Whether to prune states already visited with as much budget left.
    pub prune: bool,
    /// Give up after this many schedules (the report says it is
    /// incomplete).
    pub max_schedules: Option<u64>,
    /// Stop at the first violation rather than keep looking for shorter
    /// ones.
    pub stop_at_first: bool,
}

impl Default for Bounds {
    fn default() -> Self {
        Self {
            preemptions: Some(2),
            prune: true,
            max_schedules: None,
            stop_at_first: false,
        }
    }
}

/// A violation found by the explorer, with the shortest schedule found that
/// reaches it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// The violation as the shortest schedule reports it.
    pub violation: Violation,
    /// The shortest schedule found.
    pub trace: Trace,
    /// How many schedules ended in this invariant.
    pub schedules: u64,
}

/// What one exploration covered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Runs made (each a distinct schedule prefix).
    pub schedules: u64,
    /// Runs stopped at a state visited before.
    pub pruned: u64,
    /// Choice points passed, over all runs.
    pub choice_points: u64,
    /// Whether every schedule within the bound was covered.
    pub complete: bool,
    /// One entry per invariant broken, with its shortest trace.
    pub violations: Vec<Found>,
    /// Wall time of the exploration.
    pub elapsed: Duration,
}

impl Report {
    /// Schedules explored per second of wall time.
    pub fn schedules_per_second(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.schedules as f64 / secs
        } else {
            0.0
        }
    }
}

/// One choice point of the current run, as the search stack keeps it.
#[derive(Clone, Copy, Debug)]
struct Frame {
    options: usize,
    free: usize,
    chosen: usize,
    /// Preemptions spent before this point.
    spent: u32,
}

/// The chooser the explorer hands to the system: follows the prefix, then
/// takes 0 and prunes visited states.
struct SearchChooser<'a> {
    prefix: &'a [usize],
    frames: Vec<Frame>,
    bound: Option<u32>,
    prune: bool,
    visited: &'a mut HashMap<u64, u32>,
    pruned: bool,
}

impl Chooser for SearchChooser<'_> {
    fn choose(&mut self, point: &ChoicePoint) -> Option<usize> {
        let k = self.frames.len();
        let spent = self.frames.last().map_or(0, |f| {
            f.spent + u32::from(f.chosen >= f.free && f.chosen > 0)
        });
        let chosen = if k < self.prefix.len() {
            self.prefix[k].min(point.options.saturating_sub(1))
        } else {
            if self.prune {
                if let Some(digest) = point.digest {
                    // Remaining budget, `u32::MAX` when unbounded.
                    let left = self.bound.map_or(u32::MAX, |b| b.saturating_sub(spent));
                    match self.visited.get(&digest) {
                        Some(&seen) if seen >= left => {
                            self.pruned = true;
                            return None;
                        }
                        _ => {
                            self.visited.insert(digest, left);
                        }
                    }
                }
            }
            0
        };
        self.frames.push(Frame {
            options: point.options.max(1),
            free: point.free.max(1),
            chosen,
            spent,
        });
        Some(chosen)
    }

    fn plan(&self) -> Option<&[usize]> {
        (!self.prune && self.frames.is_empty()).then_some(self.prefix)
    }
}

/// Depth-first, preemption-bounded explorer.
#[derive(Clone, Copy, Debug, Default)]
pub struct Explorer {
    /// The limits.
    pub bounds: Bounds,
}

impl Explorer {
    /// An explorer with these limits.
    pub fn new(bounds: Bounds) -> Self {
        Self { bounds }
    }

    /// Explores every schedule of `system` within the bounds; violations
    /// are keyed by invariant and carry the shortest trace found, named
    /// after `scenario`.
    pub fn explore(&self, scenario: &str, system: &dyn System) -> Report {
        let start = Instant::now();
        let mut report = Report::default();
        let mut visited = HashMap::new();
        let mut prefix: Vec<usize> = Vec::new();
        loop {
            if self
                .bounds
                .max_schedules
                .is_some_and(|max| report.schedules >= max)
            {
                report.complete = false;
                break;
            }
            let mut chooser = SearchChooser {
                prefix: &prefix,
                frames: Vec::new(),
                bound: self.bounds.preemptions,
                prune: self.bounds.prune,
                visited: &mut visited,
                pruned: false,
            };
            let outcome = system.run(&mut chooser);
            let frames = chooser.frames;
            report.schedules += 1;
            report.choice_points += frames.len() as u64;
            if chooser.pruned {
                report.pruned += 1;
            }
            if let Some(violation) = outcome.violation {
                let trace = Trace::new(scenario, frames.iter().map(|f| f.chosen).collect());
                record(&mut report.violations, violation, trace);
                if self.bounds.stop_at_first {
                    report.complete = false;
                    break;
                }
            }
            match self.next_prefix(&frames) {
                Some(next) => prefix = next,
                None => {
                    report.complete = true;
                    break;
                }
            }
        }
        report.elapsed = start.elapsed();
        report
    }

    /// The prefix of the next schedule in depth-first order: the deepest
    /// point with an untried option the budget allows.
    fn next_prefix(&self, frames: &[Frame]) -> Option<Vec<usize>> {
        for k in (0..frames.len()).rev() {
            let f = frames[k];
            let next = f.chosen + 1;
            if next >= f.options {
                continue;
            }
            let cost = u32::from(next >= f.free);
            if self
                .bounds
                .preemptions
                .is_some_and(|bound| f.spent + cost > bound)
            {
                continue;
            }
            let mut prefix: Vec<usize> = frames[..k].iter().map(|f| f.chosen).collect();
            prefix.push(next);
            return Some(prefix);
        }
        None
    }
}

fn record(found: &mut Vec<Found>, violation: Violation, trace: Trace) {
    match found
        .iter_mut()
        .find(|f| f.violation.invariant == violation.invariant)
    {
        Some(f) => {
            f.schedules += 1;
            if trace.is_shorter_than(&f.trace) {
                f.trace = trace;
                f.violation = violation;
            }
        }
        None => found.push(Found {
            violation,
            trace,
            schedules: 1,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Two threads on one processor, `a` and `b` steps long. Before every
    /// step the running thread may be preempted in favour of the other
    /// (option 1, preemptive); a finished thread hands over for free. The
    /// first thread to run is a free choice. Records the step order.
    struct TwoThreads {
        a: usize,
        b: usize,
        runs: RefCell<Vec<String>>,
    }

    impl System for TwoThreads {
        fn run(&self, chooser: &mut dyn Chooser) -> RunOutcome {
            let mut left = [self.a, self.b];
            let mut order = String::new();
            let first = ChoicePoint {
                options: 2,
                free: 2,
                digest: None,
            };
            let Some(mut current) = chooser.choose(&first) else {
                return RunOutcome {
                    violation: None,
                    stopped: true,
                };
            };
            while left[0] + left[1] > 0 {
                let started = !order.is_empty();
                if left[current] == 0 {
                    current = 1 - current;
                } else if started && left[1 - current] > 0 {
                    let point = ChoicePoint {
                        options: 2,
                        free: 1,
                        digest: Some(
                            (left[0] as u64) << 32 | (left[1] as u64) << 1 | current as u64,
                        ),
                    };
                    match chooser.choose(&point) {
                        Some(0) => {}
                        Some(_) => current = 1 - current,
                        None => {
                            return RunOutcome {
                                violation: None,
                                stopped: true,
                            }
                        }
                    }
                }
                left[current] -= 1;
                order.push(if current == 0 { 'A' } else { 'B' });
            }
            self.runs.borrow_mut().push(order);
            RunOutcome::default()
        }
    }

    fn explore(a: usize, b: usize, preemptions: Option<u32>, prune: bool) -> (Report, Vec<String>) {
        let system = TwoThreads {
            a,
            b,
            runs: RefCell::new(Vec::new()),
        };
        let report = Explorer::new(Bounds {
            preemptions,
            prune,
            ..Bounds::default()
        })
        .explore("two", &system);
        (report, system.runs.into_inner())
    }

    #[test]
    fn interleavings_of_two_by_two_are_counted_by_preemptions() {
        // AABB and BBAA take no preemption; ABBA and BAAB one; ABAB and
        // BABA two. C(4, 2) = 6 in all.
        for (bound, expected) in [(0, 2), (1, 4), (2, 6), (3, 6)] {
            let (report, mut runs) = explore(2, 2, Some(bound), false);
            assert_eq!(report.schedules, expected, "bound {bound}");
            assert!(report.complete);
            runs.sort();
            runs.dedup();
            assert_eq!(runs.len() as u64, expected, "distinct orders at {bound}");
        }
        let (report, runs) = explore(2, 2, Some(0), false);
        assert_eq!(runs, ["AABB", "BBAA"]);
        assert_eq!(report.pruned, 0);
    }

    #[test]
    fn unbounded_exploration_enumerates_every_interleaving() {
        // C(3 + 2, 2) = 10 orders of AAA and BB.
        let (report, mut runs) = explore(3, 2, None, false);
        assert_eq!(report.schedules, 10);
        runs.sort();
        runs.dedup();
        assert_eq!(runs.len(), 10);
    }

    #[test]
    fn pruning_skips_states_reached_before_and_keeps_every_final_state() {
        let (full, _) = explore(3, 3, None, false);
        let (pruned, runs) = explore(3, 3, None, true);
        assert_eq!(full.schedules, 20);
        assert!(pruned.pruned > 0);
        assert!(pruned.schedules < full.schedules + pruned.pruned);
        assert!(runs.len() < 20);
    }

    #[test]
    fn traces_print_and_parse() {
        let t = Trace::new("xen", vec![0, 2, 0, 1, 0, 0]);
        assert_eq!(t.to_string(), "xen:0.2.0.1");
        assert_eq!("xen:0.2.0.1".parse::<Trace>().unwrap(), t);
        assert_eq!(
            "xen:".parse::<Trace>().unwrap().choices,
            Vec::<usize>::new()
        );
        assert_eq!("xen".parse::<Trace>(), Err(TraceError::MissingColon));
        assert_eq!(":1".parse::<Trace>(), Err(TraceError::EmptyScenario));
        assert_eq!(
            "x:1.y".parse::<Trace>(),
            Err(TraceError::BadChoice("y".into()))
        );
    }

    /// Fails when B's first step runs between A's two steps.
    struct Racy;
    impl System for Racy {
        fn run(&self, chooser: &mut dyn Chooser) -> RunOutcome {
            let inner = TwoThreads {
                a: 2,
                b: 2,
                runs: RefCell::new(Vec::new()),
            };
            let outcome = inner.run(chooser);
            let order = inner.runs.into_inner().pop().unwrap_or_default();
            if order.starts_with("AB") {
                return RunOutcome {
                    violation: Some(Violation {
                        invariant: "race".into(),
                        detail: order,
                        events: Vec::new(),
                    }),
                    stopped: false,
                };
            }
            outcome
        }
    }

    #[test]
    fn violations_keep_the_shortest_trace_and_replay() {
        let report = Explorer::new(Bounds {
            prune: false,
            ..Bounds::default()
        })
        .explore("racy", &Racy);
        assert_eq!(report.violations.len(), 1);
        let found = &report.violations[0];
        // ABAB and ABBA both break it; ABBA needs one preemption.
        assert_eq!(found.schedules, 2);
        assert_eq!(found.violation.detail, "ABBA");
        let again = replay(&Racy, &found.trace.choices);
        assert_eq!(again.violation.unwrap().detail, "ABBA");
        assert!(!again.diverged);
        assert!(replay(&Racy, &[7]).diverged);
    }
}
