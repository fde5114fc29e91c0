//! Randomised search for configurations too big to explore exhaustively:
//! probabilistic concurrency testing (PCT; Burckhardt, Kothari, Musuvathi
//! and Nagarakatte, "A Randomized Scheduler with Probabilistic Guarantees
//! of Finding Bugs", ASPLOS 2010; `shuttle`'s `scheduler/pct.rs` is an
//! implementation).
//!
//! PCT gives every thread a random priority and always runs the
//! highest-priority one that can run; at `d - 1` steps drawn uniformly from
//! the run's length it lowers the running thread's priority below every
//! other. A bug of *depth* `d` (one that needs `d` ordering constraints to
//! show) is found by one run with probability at least `1 / (n k^(d-1))`
//! for `n` threads and `k` steps, whatever the schedule space's size.
//!
//! On this machine the threads are CPUs: at a choice point the chooser
//! carries on ([`Choice::Continue`]) when the running CPU has the highest
//! priority, otherwise hands the turn to the CPU that has
//! ([`Choice::RunOther`]). The machine's other choices (an interrupt, a
//! preemption, a migration, a remote flush) disturb the running task: a
//! change point takes one of those offered there, or lowers the CPU's
//! priority, with equal chance. A workload's own decisions are drawn by
//! their weights.
//!
//! Every run is seeded from the search's seed and the run's number, so a
//! search is deterministic; every run's picks are its trace, which
//! [`crate::explore::replay`] replays exactly.

use std::time::Instant;

use crate::choice::{pick_weighted, Choice, ChoicePoint, Chooser};
use crate::explore::{record, Completion, Progress, Report, System};
use crate::rng::SplitMix64;

/// A randomised search's parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RandomSearch {
    /// Runs per scenario.
    pub runs: u64,
    /// The seed every run's seed is derived from.
    pub seed: u64,
    /// The bug depth `d` looked for: `d - 1` change points per run.
    pub depth: u32,
}

impl RandomSearch {
    /// The seed of run `run` (SplitMix64 of the search seed and the run
    /// number, so that neighbouring runs draw unrelated schedules).
    pub fn run_seed(&self, run: u64) -> u64 {
        SplitMix64::new(self.seed ^ run.wrapping_mul(0x9e37_79b9_7f4a_7c15)).next_u64()
    }
}

/// The PCT chooser of one run.
#[derive(Clone, Debug)]
pub struct Pct {
    rng: SplitMix64,
    /// Priority of each CPU seen so far (higher runs first).
    priorities: Vec<Option<u64>>,
    /// Scheduling steps (choice points other than a workload's decision)
    /// at which the running CPU's priority drops, in increasing order.
    change_points: Vec<u64>,
    /// Change points passed.
    changes: u32,
    /// Scheduling steps so far.
    steps: u64,
    /// The option taken at every point, in order (the run's trace).
    picks: Vec<u32>,
}

impl Pct {
    /// A chooser for one run of at most about `steps` scheduling steps
    /// looking for bugs of depth `depth`.
    pub fn new(seed: u64, depth: u32, steps: u64) -> Self {
        let mut rng = SplitMix64::new(seed);
        let mut change_points: Vec<u64> = (1..depth).map(|_| 1 + rng.below(steps.max(1))).collect();
        change_points.sort_unstable();
        Self {
            rng,
            priorities: Vec::new(),
            change_points,
            changes: 0,
            steps: 0,
            picks: Vec::new(),
        }
    }

    /// The picks made so far.
    pub fn picks(&self) -> &[u32] {
        &self.picks
    }

    /// Scheduling steps made so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The priority of `cpu`, drawn the first time it is seen: above every
    /// lowered priority (which are below the number of change points).
    fn priority(&mut self, cpu: usize) -> u64 {
        if self.priorities.len() <= cpu {
            self.priorities.resize(cpu + 1, None);
        }
        match self.priorities[cpu] {
            Some(p) => p,
            None => {
                let p = self.change_points.len() as u64 + 1 + (self.rng.next_u64() >> 8);
                self.priorities[cpu] = Some(p);
                p
            }
        }
    }

    fn schedule(&mut self, point: &ChoicePoint, options: &[Choice]) -> usize {
        self.steps += 1;
        let mut disturb = None;
        while self
            .change_points
            .get(self.changes as usize)
            .is_some_and(|&at| at <= self.steps)
        {
            // Lower the running CPU below every priority given so far.
            let low = u64::from(self.change_points.len() as u32 - 1 - self.changes);
            self.changes += 1;
            let _ = self.priority(point.cpu.index());
            self.priorities[point.cpu.index()] = Some(low);
            let disturbances: Vec<usize> = (0..options.len())
                .filter(|&i| {
                    !matches!(
                        options[i],
                        Choice::Continue | Choice::RunOther { .. } | Choice::Pick { .. }
                    )
                })
                .collect();
            let draw = self.rng.below(disturbances.len() as u64 + 1) as usize;
            disturb = disturbances.get(draw).copied();
        }
        if let Some(i) = disturb {
            return i;
        }
        let mut best = (0, self.priority(point.cpu.index()));
        for (i, option) in options.iter().enumerate() {
            if let Choice::RunOther { cpu } = option {
                let p = self.priority(cpu.index());
                if p > best.1 {
                    best = (i, p);
                }
            }
        }
        best.0
    }
}

impl Chooser for Pct {
    fn choose(&mut self, point: &ChoicePoint, options: &[Choice]) -> Option<usize> {
        let picked = if matches!(options.first(), Some(Choice::Pick { .. })) {
            pick_weighted(&mut self.rng, options)
        } else {
            self.schedule(point, options)
        };
        self.picks.push(picked as u32);
        Some(picked)
    }
}

/// Runs `system` `search.runs` times under PCT; violations are keyed by
/// invariant and carry the shortest trace found, named after `scenario`.
/// The first run has no change point (it measures the run's length, which
/// the change points of the next are drawn over); each run's length raises
/// the estimate for the next.
pub fn sample(
    scenario: &str,
    system: &dyn System,
    search: RandomSearch,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Report {
    let start = Instant::now();
    let mut report = Report::default();
    let mut steps = 0;
    for run in 0..search.runs {
        let depth = if run == 0 { 1 } else { search.depth };
        let mut chooser = Pct::new(search.run_seed(run), depth, steps);
        let outcome = system.run(&mut chooser);
        steps = steps.max(chooser.steps());
        report.schedules += 1;
        report.choice_points += chooser.picks().len() as u64;
        progress(Progress {
            scenario,
            schedules: report.schedules,
        });
        if let Some(violation) = outcome.violation {
            let trace = crate::choice::Trace::new(scenario, chooser.picks().to_vec());
            record(&mut report.violations, violation, trace);
        }
    }
    report.completion = Completion::Sampled;
    report.elapsed = start.elapsed();
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::choice::Site;
    use lazymmu::cpu::CpuId;

    fn point(cpu: u32) -> ChoicePoint {
        ChoicePoint {
            step: 0,
            cpu: CpuId(cpu),
            task: 0,
            site: Site::Step,
            preemptible: true,
            preemptions: 0,
            free: 1,
            digest: None,
        }
    }

    #[test]
    fn without_change_points_the_highest_priority_cpu_runs_on() {
        let options = [
            Choice::Continue,
            Choice::RunOther { cpu: CpuId(1) },
            Choice::RunOther { cpu: CpuId(2) },
        ];
        let mut pct = Pct::new(7, 1, 100);
        let first = pct.choose(&point(0), &options).unwrap();
        // Whoever won keeps winning while nothing changes.
        for _ in 0..20 {
            assert_eq!(pct.choose(&point(0), &options), Some(first));
        }
        assert_eq!(pct.picks().len(), 21);
    }

    #[test]
    fn a_change_point_hands_the_turn_away_or_disturbs() {
        let options = [Choice::Continue, Choice::RunOther { cpu: CpuId(1) }];
        // Over many seeds, a run of depth 2 whose single change point
        // falls within ten steps leaves CPU 0 at some point whenever CPU 0
        // started with the higher priority.
        let mut left = 0;
        for seed in 0..64 {
            let mut pct = Pct::new(seed, 2, 10);
            let picks: Vec<usize> = (0..10)
                .map(|_| pct.choose(&point(0), &options).unwrap())
                .collect();
            if picks[0] == 0 && picks.contains(&1) {
                left += 1;
            }
            assert!(
                picks.windows(2).filter(|w| w[0] != w[1]).count() <= 1,
                "one change point changes the schedule once: {picks:?}"
            );
        }
        assert!(left > 0);
    }

    #[test]
    fn runs_are_deterministic_in_their_seed() {
        let search = RandomSearch {
            runs: 4,
            seed: 11,
            depth: 3,
        };
        assert_eq!(search.run_seed(2), search.run_seed(2));
        assert_ne!(search.run_seed(1), search.run_seed(2));
    }
}
