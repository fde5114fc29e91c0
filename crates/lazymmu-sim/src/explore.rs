//! Exhaustive, preemption-bounded exploration of a system's choice points.
//!
//! A *system* is anything that can run once from its initial state while
//! asking the [`Chooser`] at every choice point which option to take, and
//! that reports the [`Violation`] that stopped it, if any: the machine
//! running a workload, a scripted scenario or a neighbour workload.
//!
//! The [`Explorer`] enumerates the runs depth first, as CHESS does
//! (Musuvathi et al., "Finding and Reproducing Heisenbugs in Concurrent
//! Programs", OSDI 2008): a run is identified by the options chosen at its
//! choice points; after each run the deepest point with an untried option
//! is advanced and the system is run again from its initial state with that
//! prefix. Options below [`ChoicePoint::free`] cost nothing (carrying on, a
//! workload's own decision); the others depart from the schedule and each
//! costs one unit of the preemption bound, so that bound `k` covers every
//! schedule with at most `k` departures.
//!
//! States already reached with at least as much preemption budget left are
//! pruned, by the digest the machine gives each point: everything reachable
//! from them has been (or is being) explored. Each choice point records
//! the options it offered (they say which CPU and task a choice concerns),
//! which a partial-order reduction can use to tell commuting choices apart.
//!
//! A schedule is printed as a [`Trace`] (`scenario:0.0.2.0.1`) and replayed
//! with [`replay`].

use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use lazymmu::cpu::CpuId;

use crate::choice::{Choice, ChoicePoint, Chooser, Replay, Trace};
use crate::footprint::Footprint;
use crate::invariant::{Invariant, Violation};

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

    /// Whether the footprints the machine records for this system are
    /// complete ([`crate::footprint`]): every piece of state two CPUs can
    /// both touch is a location the log sees. Only then may the explorer
    /// reduce by partial order.
    fn partial_order(&self) -> bool {
        false
    }
}

/// Runs `f`, turning a panic into a [`Invariant::Panic`] violation.
pub fn catching(f: impl FnOnce() -> RunOutcome) -> RunOutcome {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(outcome) => outcome,
        Err(panic) => RunOutcome {
            violation: Some(Violation {
                invariant: Invariant::Panic,
                step: 0,
                cpu: lazymmu::cpu::CpuId(0),
                task: 0,
                detail: panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "the run panicked".into()),
                events: Vec::new(),
            }),
            stopped: false,
        },
    }
}

/// Runs `system` with the picks of a trace.
///
/// The outcome is `diverged` when the trace asks for an option a choice
/// point does not offer (the trace was made for another scenario or
/// variant).
pub fn replay(system: &dyn System, picks: &[u32]) -> ReplayOutcome {
    let mut chooser = Replay::new(picks.to_vec());
    let outcome = system.run(&mut chooser);
    ReplayOutcome {
        violation: outcome.violation,
        choice_points: chooser.points(),
        diverged: chooser.mismatches() > 0,
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
    /// At most this many departures per schedule; `None` for no bound (the
    /// system must then be finite by itself).
    pub preemptions: Option<u32>,
    /// Whether to prune states already visited with as much budget left.
    pub prune: bool,
    /// Give up after this many schedules.
    pub max_schedules: Option<u64>,
    /// Stop at the first violation rather than keep looking for shorter
    /// ones.
    pub stop_at_first: bool,
    /// Whether to skip, by sleep sets, the orders of commuting stretches of
    /// different CPUs already explored (for systems whose footprints are
    /// complete, [`System::partial_order`]).
    pub partial_order: bool,
}

impl Default for Bounds {
    fn default() -> Self {
        Self {
            preemptions: Some(2),
            prune: true,
            max_schedules: None,
            stop_at_first: false,
            partial_order: true,
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

/// Whether an exploration covered everything within its bounds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Completion {
    /// Every schedule within the bounds was covered.
    #[default]
    Complete,
    /// Stopped at [`Bounds::max_schedules`].
    ScheduleLimit,
    /// Stopped at the first violation ([`Bounds::stop_at_first`]), or at
    /// a violation of the default schedule, which no interleaving is
    /// needed for.
    FirstViolation,
    /// No schedule was explored at all (a limit of zero).
    NothingExplored,
    /// A random sample of the schedules was run
    /// ([`crate::pct::sample`]): as many runs as asked, no claim of
    /// coverage.
    Sampled,
}

/// What one exploration covered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Runs made (each a distinct schedule prefix).
    pub schedules: u64,
    /// Runs stopped at a state visited before.
    pub pruned: u64,
    /// Options never tried because the CPU they run was asleep there: its
    /// next stretch commutes with everything run since a sibling schedule
    /// ran it first (sleep sets).
    pub slept: u64,
    /// Choice points passed, over all runs.
    pub choice_points: u64,
    /// Whether, and why not, every schedule within the bounds was covered.
    pub completion: Completion,
    /// One entry per invariant broken, with its shortest trace.
    pub violations: Vec<Found>,
    /// Wall time of the exploration.
    pub elapsed: Duration,
}

impl Report {
    /// Whether every schedule within the bounds was covered.
    pub fn complete(&self) -> bool {
        self.completion == Completion::Complete
    }

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

/// Where an exploration is, for a progress display.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress<'a> {
    /// The scenario being explored.
    pub scenario: &'a str,
    /// Schedules explored so far in it.
    pub schedules: u64,
}

/// One choice point of the current run, as the search stack keeps it.
#[derive(Clone, Debug)]
struct Frame {
    options: usize,
    free: usize,
    chosen: usize,
    /// Departures spent before this point.
    spent: u32,
    /// The CPU whose task each option runs next, for the options that only
    /// pick which CPU runs (carrying on, another CPU's turn); `None` for
    /// the others (interrupts, switches, workload decisions).
    actors: Vec<Option<CpuId>>,
    /// The task running where the point is.
    task: usize,
    /// CPUs asleep here, with the stretch each has pending.
    asleep: Vec<Sleeper>,
    /// What the chosen option ran until the next point, and whether that
    /// stretch stayed its actor's (ending at a point of the same CPU and
    /// task, with nothing opaque in between).
    ran: Option<Rc<Footprint>>,
    continued: bool,
    /// The CPU the point is on.
    cpu: CpuId,
}

impl Frame {
    fn asleep_mask(&self) -> u64 {
        self.asleep.iter().fold(0, |m, s| m | 1 << s.cpu.index())
    }

    fn is_asleep(&self, option: usize) -> bool {
        self.actors[option].is_some_and(|cpu| self.asleep.iter().any(|s| s.cpu == cpu))
    }
}

/// A CPU whose pending stretch need not run first: an earlier schedule
/// ran it first, and everything run since commutes with it.
#[derive(Clone, Debug)]
struct Sleeper {
    cpu: CpuId,
    footprint: Rc<Footprint>,
}

/// The actor of `option` at a point on `cpu`.
fn actor(cpu: CpuId, option: &Choice) -> Option<CpuId> {
    match option {
        Choice::Continue => Some(cpu),
        Choice::RunOther { cpu } => Some(*cpu),
        _ => None,
    }
}

/// The chooser the explorer hands to the system: follows the prefix, then
/// takes 0; prunes visited states and keeps sleep sets.
struct SearchChooser<'a> {
    prefix: &'a [usize],
    frames: Vec<Frame>,
    bound: Option<u32>,
    prune: bool,
    partial_order: bool,
    /// Per depth, the options of that point explored in earlier schedules
    /// with the current prefix, as sleepers (their actor and first
    /// stretch).
    explored: &'a [Vec<Sleeper>],
    /// Per state digest, the budgets and sleep sets it was explored with.
    visited: &'a mut HashMap<u64, Vec<(u32, u64)>>,
    /// The stretch since the previous point.
    segment: Option<Footprint>,
    pruned: bool,
}

impl SearchChooser<'_> {
    /// The sleep set of the point being entered, after the previous
    /// frame's chosen option ran `ran`: the sleepers of the previous point
    /// and the siblings explored before its choice, less those `ran` does
    /// not commute with. Empty unless the previous option only picked a
    /// CPU and its stretch stayed that CPU's.
    fn sleep_set(&self, ran: &Footprint) -> Vec<Sleeper> {
        let Some(prev) = self.frames.last() else {
            return Vec::new();
        };
        if !self.partial_order || !prev.continued {
            return Vec::new();
        }
        let depth = self.frames.len() - 1;
        let siblings = self.explored.get(depth).map_or(&[][..], |v| &v[..]);
        prev.asleep
            .iter()
            .chain(siblings)
            .filter(|s| s.footprint.independent(ran))
            .cloned()
            .collect()
    }
}

impl Chooser for SearchChooser<'_> {
    fn wants_digest(&self) -> bool {
        self.prune
    }

    fn wants_digest_next(&self) -> bool {
        // Pruning looks only beyond the prefix.
        self.prune && self.frames.len() >= self.prefix.len()
    }

    fn wants_footprints(&self) -> bool {
        self.partial_order
    }

    fn segment(&mut self, footprint: Footprint) {
        self.segment = Some(footprint);
    }

    fn choose(&mut self, point: &ChoicePoint, options: &[Choice]) -> Option<usize> {
        let k = self.frames.len();
        let ran = self.segment.take().map(Rc::new);
        let asleep = match (self.frames.last_mut(), &ran) {
            (Some(prev), Some(ran)) => {
                let stayed = prev.actors[prev.chosen].is_some_and(|a| {
                    a == point.cpu
                        && (prev.chosen != 0 || prev.task == point.task)
                        && !ran.is_opaque()
                });
                prev.ran = Some(ran.clone());
                prev.continued = stayed;
                self.sleep_set(ran)
            }
            _ => Vec::new(),
        };
        let spent = self
            .frames
            .last()
            .map_or(0, |f| f.spent + u32::from(f.chosen >= f.free));
        let mut frame = Frame {
            options: options.len().max(1),
            free: point.free.max(1),
            chosen: 0,
            spent,
            actors: options.iter().map(|o| actor(point.cpu, o)).collect(),
            task: point.task,
            asleep,
            ran: None,
            continued: false,
            cpu: point.cpu,
        };
        frame.chosen = if k < self.prefix.len() {
            self.prefix[k].min(options.len().saturating_sub(1))
        } else {
            if self.prune {
                if let Some(digest) = point.digest {
                    // Remaining budget, `u32::MAX` when unbounded.
                    let left = self.bound.map_or(u32::MAX, |b| b.saturating_sub(spent));
                    let mask = frame.asleep_mask();
                    let seen = self.visited.entry(digest).or_default();
                    // Explored before with as much budget and no more
                    // CPUs asleep: everything from here was covered.
                    if seen.iter().any(|&(b, m)| b >= left && m & !mask == 0) {
                        self.pruned = true;
                        return None;
                    }
                    seen.retain(|&(b, m)| !(left >= b && mask & !m == 0));
                    seen.push((left, mask));
                }
            }
            0
        };
        let chosen = frame.chosen;
        self.frames.push(frame);
        Some(chosen)
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
        self.explore_with(scenario, system, &mut |_| {})
    }

    /// As [`Explorer::explore`], telling `progress` after every schedule.
    pub fn explore_with(
        &self,
        scenario: &str,
        system: &dyn System,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Report {
        let start = Instant::now();
        let mut report = Report::default();
        let mut visited = HashMap::new();
        let mut explored: Vec<Vec<Sleeper>> = Vec::new();
        let partial_order = self.bounds.partial_order && system.partial_order();
        let mut prefix: Vec<usize> = Vec::new();
        loop {
            if self
                .bounds
                .max_schedules
                .is_some_and(|max| report.schedules >= max)
            {
                report.completion = if report.schedules == 0 {
                    Completion::NothingExplored
                } else {
                    Completion::ScheduleLimit
                };
                break;
            }
            let mut chooser = SearchChooser {
                prefix: &prefix,
                frames: Vec::new(),
                bound: self.bounds.preemptions,
                prune: self.bounds.prune,
                partial_order,
                explored: &explored,
                visited: &mut visited,
                segment: None,
                pruned: false,
            };
            let outcome = system.run(&mut chooser);
            let mut frames = chooser.frames;
            if let (Some(last), Some(ran)) = (frames.last_mut(), chooser.segment.take()) {
                // The stretch after the last point ran to the end of the
                // run: known, but it reached no point of its actor.
                last.ran = Some(Rc::new(ran));
            }
            report.schedules += 1;
            report.choice_points += frames.len() as u64;
            if chooser.pruned {
                report.pruned += 1;
            }
            progress(Progress {
                scenario,
                schedules: report.schedules,
            });
            if let Some(violation) = outcome.violation {
                let trace = Trace::new(scenario, frames.iter().map(|f| f.chosen as u32).collect());
                // A violation of the default schedule needs no interleaving
                // to show and has no shorter trace: the exploration stops
                // there, as a sequential test would.
                let sequential = trace.departures() == 0;
                record(&mut report.violations, violation, trace);
                if self.bounds.stop_at_first || sequential {
                    report.completion = Completion::FirstViolation;
                    break;
                }
            }
            match self.next_prefix(&frames, &mut explored, &mut report.slept) {
                Some(next) => prefix = next,
                None => {
                    report.completion = Completion::Complete;
                    break;
                }
            }
        }
        report.elapsed = start.elapsed();
        report
    }

    /// The prefix of the next schedule in depth-first order: the deepest
    /// point with an untried option the budget allows and whose CPU is not
    /// asleep there. The option left behind joins that depth's explored
    /// siblings (when it only picked a CPU and its stretch stayed that
    /// CPU's), and deeper depths forget theirs.
    ///
    /// Under a preemption bound only the point's own CPU carrying on
    /// joins. A sibling sleeps in the orders that run another CPU first
    /// because the order running it first was explored; but that order
    /// may cost more departures: when CPU `q`'s stretch `t` was explored
    /// at a point of CPU `c` and then `r`'s stretch `u`, the schedule `u t
    /// w` with `w` continuing on `q` costs two departures (`c` to `r`, `r`
    /// to `q`) and its equivalent `t u w` three (`c` to `q`, `q` to `r`,
    /// back to `q`), so within the bound it may not exist. With `q = c`,
    /// `t u w` never costs more than `u t w`: one departure to leave `c`
    /// fewer, at most one more to come back.
    fn next_prefix(
        &self,
        frames: &[Frame],
        explored: &mut Vec<Vec<Sleeper>>,
        slept: &mut u64,
    ) -> Option<Vec<usize>> {
        for k in (0..frames.len()).rev() {
            let f = &frames[k];
            let mut next = f.chosen + 1;
            while next < f.options && f.is_asleep(next) {
                *slept += 1;
                next += 1;
            }
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
            explored.resize_with(k + 1, Vec::new);
            let carried_on = f.actors[f.chosen] == Some(f.cpu);
            let sound = self.bounds.preemptions.is_none() || carried_on;
            if let (Some(cpu), Some(ran), true, true) =
                (f.actors[f.chosen], &f.ran, f.continued, sound)
            {
                explored[k].push(Sleeper {
                    cpu,
                    footprint: ran.clone(),
                });
            }
            let mut prefix: Vec<usize> = frames[..k].iter().map(|f| f.chosen).collect();
            prefix.push(next);
            return Some(prefix);
        }
        None
    }
}

pub(crate) fn record(found: &mut Vec<Found>, violation: Violation, trace: Trace) {
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
    use crate::choice::Site;
    use lazymmu::cpu::CpuId;
    use std::cell::RefCell;

    /// Two threads on one processor, `a` and `b` steps long. Before every
    /// step the running thread may be preempted in favour of the other
    /// (option 1, a departure); a finished thread hands over for free. The
    /// first thread to run is a free choice. Records the step order.
    struct TwoThreads {
        a: usize,
        b: usize,
        runs: RefCell<Vec<String>>,
    }

    fn point(free: usize, digest: Option<u64>) -> ChoicePoint {
        ChoicePoint {
            step: 0,
            cpu: CpuId(0),
            task: 0,
            site: Site::Step,
            preemptible: true,
            preemptions: 0,
            free,
            digest,
        }
    }

    const TWO: [Choice; 2] = [Choice::Continue, Choice::Preempt { task: 1 }];

    impl System for TwoThreads {
        fn run(&self, chooser: &mut dyn Chooser) -> RunOutcome {
            let mut left = [self.a, self.b];
            let mut order = String::new();
            let Some(mut current) = chooser.choose(&point(2, None), &TWO) else {
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
                    let digest =
                        Some((left[0] as u64) << 32 | (left[1] as u64) << 1 | current as u64);
                    match chooser.choose(&point(1, digest), &TWO) {
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
            assert!(report.complete());
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
    fn limits_say_why_the_exploration_stopped() {
        let system = TwoThreads {
            a: 2,
            b: 2,
            runs: RefCell::new(Vec::new()),
        };
        let limited = |max| {
            Explorer::new(Bounds {
                max_schedules: Some(max),
                prune: false,
                ..Bounds::default()
            })
            .explore("two", &system)
        };
        assert_eq!(limited(0).completion, Completion::NothingExplored);
        assert_eq!(limited(0).schedules, 0);
        let three = limited(3);
        assert_eq!(three.completion, Completion::ScheduleLimit);
        assert_eq!(three.schedules, 3);
        assert!(!three.complete());
        let mut seen = Vec::new();
        let report = Explorer::default().explore_with("two", &system, &mut |p| {
            seen.push((p.scenario.to_owned(), p.schedules));
        });
        assert!(report.complete());
        assert_eq!(seen.len() as u64, report.schedules);
        assert_eq!(seen.last(), Some(&("two".to_owned(), report.schedules)));
    }

    /// Fails when the order of two threads of two steps starts with its
    /// prefix.
    struct FailsOn(&'static str);
    impl System for FailsOn {
        fn run(&self, chooser: &mut dyn Chooser) -> RunOutcome {
            let inner = TwoThreads {
                a: 2,
                b: 2,
                runs: RefCell::new(Vec::new()),
            };
            let outcome = inner.run(chooser);
            let order = inner.runs.into_inner().pop().unwrap_or_default();
            if order.starts_with(self.0) {
                return RunOutcome {
                    violation: Some(Violation {
                        invariant: Invariant::BatchOwnership,
                        step: 0,
                        cpu: CpuId(0),
                        task: 0,
                        detail: order,
                        events: Vec::new(),
                    }),
                    stopped: false,
                };
            }
            outcome
        }
    }

    /// Fails when B's first step runs between A's two steps.
    const RACY: FailsOn = FailsOn("AB");

    #[test]
    fn a_failing_default_schedule_ends_the_exploration() {
        // Every order starts with the empty prefix: the default schedule
        // (AABB) fails, and nothing departing from it is run.
        let report = Explorer::new(Bounds {
            prune: false,
            ..Bounds::default()
        })
        .explore("always", &FailsOn(""));
        assert_eq!(report.schedules, 1);
        assert_eq!(report.completion, Completion::FirstViolation);
        assert_eq!(report.violations.len(), 1);
        assert_eq!(report.violations[0].trace.departures(), 0);
        assert_eq!(report.violations[0].violation.detail, "AABB");
    }

    #[test]
    fn violations_keep_the_shortest_trace_and_replay() {
        let report = Explorer::new(Bounds {
            prune: false,
            ..Bounds::default()
        })
        .explore("racy", &RACY);
        assert_eq!(report.violations.len(), 1);
        let found = &report.violations[0];
        // ABAB and ABBA both break it; ABBA needs one preemption.
        assert_eq!(found.schedules, 2);
        assert_eq!(found.violation.detail, "ABBA");
        let again = replay(&RACY, &found.trace.picks);
        assert_eq!(again.violation.unwrap().detail, "ABBA");
        assert!(!again.diverged);
        assert!(replay(&RACY, &[7]).diverged);
    }

    /// Threads, one per CPU, each a list of accesses to shared cells
    /// (`(cell, write)`), one access per step. Before every step the
    /// running CPU may carry on or give another CPU with steps left its
    /// turn (a departure); a finished CPU hands over to the first thread
    /// with steps left. Footprints are exact and the digest is the whole
    /// state. Records every read as (thread, step, value seen) and, per
    /// complete run, all of them.
    struct Threads {
        programs: Vec<Vec<(u64, bool)>>,
        reads: RefCell<std::collections::BTreeSet<(usize, usize, u64)>>,
        outcomes: RefCell<std::collections::BTreeSet<Vec<(usize, usize, u64)>>>,
    }

    impl Threads {
        fn new(programs: Vec<Vec<(u64, bool)>>) -> Self {
            Self {
                programs,
                reads: RefCell::default(),
                outcomes: RefCell::default(),
            }
        }

        /// Random programs: 2 or 3 threads of 1 to 3 accesses to 2 cells.
        fn random(seed: u64) -> Self {
            let mut rng = crate::rng::SplitMix64::new(seed);
            let threads = 2 + rng.below(2) as usize;
            Self::new(
                (0..threads)
                    .map(|_| {
                        (0..1 + rng.below(3))
                            .map(|_| (rng.below(2), rng.chance(1, 2)))
                            .collect()
                    })
                    .collect(),
            )
        }
    }

    impl System for Threads {
        fn run(&self, chooser: &mut dyn Chooser) -> RunOutcome {
            use crate::footprint::{FootprintLog, Location};
            use std::hash::{Hash, Hasher};
            let n = self.programs.len();
            let mut pc = vec![0; n];
            let mut cells = [0u64; 2];
            let mut seen = Vec::new();
            let log = FootprintLog::default();
            log.set_recording(true);
            let mut cpu = 0;
            loop {
                let left: Vec<usize> = (0..n).filter(|&t| pc[t] < self.programs[t].len()).collect();
                if left.is_empty() {
                    break;
                }
                if pc[cpu] == self.programs[cpu].len() {
                    cpu = left[0];
                }
                let mut options = vec![Choice::Continue];
                options.extend(
                    left.iter()
                        .filter(|&&t| t != cpu)
                        .map(|&t| Choice::RunOther { cpu: CpuId::new(t) }),
                );
                if options.len() > 1 {
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    (&pc, cells, cpu).hash(&mut h);
                    let point = ChoicePoint {
                        cpu: CpuId::new(cpu),
                        task: cpu,
                        free: 1,
                        ..point(1, Some(h.finish()))
                    };
                    chooser.segment(log.take());
                    match chooser.choose(&point, &options) {
                        Some(i) => {
                            if let Choice::RunOther { cpu: other } = options[i] {
                                cpu = other.index();
                            }
                        }
                        None => {
                            return RunOutcome {
                                violation: None,
                                stopped: true,
                            }
                        }
                    }
                }
                let (cell, write) = self.programs[cpu][pc[cpu]];
                if write {
                    cells[cell as usize] = (cpu * 10 + pc[cpu] + 1) as u64;
                    log.write(Location::Object(cell));
                } else {
                    log.read(Location::Object(cell));
                    let read = (cpu, pc[cpu], cells[cell as usize]);
                    self.reads.borrow_mut().insert(read);
                    seen.push(read);
                }
                pc[cpu] += 1;
            }
            seen.sort_unstable();
            self.outcomes.borrow_mut().insert(seen);
            RunOutcome::default()
        }

        fn partial_order(&self) -> bool {
            true
        }
    }

    fn search(system: &Threads, preemptions: Option<u32>, prune: bool, sleep: bool) -> Report {
        system.reads.borrow_mut().clear();
        system.outcomes.borrow_mut().clear();
        Explorer::new(Bounds {
            preemptions,
            prune,
            partial_order: sleep,
            ..Bounds::default()
        })
        .explore("threads", system)
    }

    #[test]
    fn sleep_sets_keep_every_outcome_and_every_read() {
        let mut saved = 0;
        for seed in 0..400 {
            let system = Threads::random(seed);
            for bound in [None, Some(1), Some(2)] {
                // Stateless: every distinct outcome (the values all
                // reads saw) of the full search is reached.
                let full = search(&system, bound, false, false);
                let outcomes = system.outcomes.borrow().clone();
                let reduced = search(&system, bound, false, true);
                assert_eq!(
                    *system.outcomes.borrow(),
                    outcomes,
                    "seed {seed} bound {bound:?}: {:?}",
                    system.programs
                );
                assert!(reduced.schedules <= full.schedules);
                saved += full.schedules - reduced.schedules;
                // Stateful: every read a state reaches is still made.
                search(&system, bound, true, false);
                let reads = system.reads.borrow().clone();
                search(&system, bound, true, true);
                assert_eq!(
                    *system.reads.borrow(),
                    reads,
                    "seed {seed} bound {bound:?} pruning: {:?}",
                    system.programs
                );
            }
        }
        assert!(saved > 0, "sleep sets never saved a schedule");
    }

    #[test]
    fn sleep_sets_under_a_bound_keep_orders_that_need_the_budget() {
        // T2 reads cell 0 before T1 writes it and reads cell 1 after T0
        // writes it, while T1 reads cell 1 before: T2, T1 to its end, T0,
        // T2 again; two departures. T1 running first was explored, and its
        // first read commutes with T2's; but the order that puts it first
        // needs a third departure to come back to T1.
        let system = Threads::new(vec![
            vec![(1, true)],
            vec![(0, false), (0, true), (1, false)],
            vec![(0, false), (1, false)],
        ]);
        let wanted = vec![(1, 0, 0), (1, 2, 0), (2, 0, 0), (2, 1, 1)];
        for sleep in [false, true] {
            search(&system, Some(2), false, sleep);
            assert!(
                system.outcomes.borrow().contains(&wanted),
                "sleep sets {sleep}"
            );
        }
    }

    #[test]
    fn a_panicking_run_is_a_violation() {
        let outcome = catching(|| panic!("boom"));
        let v = outcome.violation.unwrap();
        assert_eq!(v.invariant, Invariant::Panic);
        assert_eq!(v.detail, "boom");
    }
}
