//! The MM neighbours on the simulator: a context-switch storm for lazy TLB
//! ([`ctxswitch`]), vmalloc growing across top-level slots ([`vmalloc_grow`])
//! and protection-key windows over device memory ([`pgmap`]).
//!
//! Each workload runs the library's policy code unmodified
//! (`lazymmu::mm`) on a machine model that implements the library's machine
//! traits, checks the neighbours' contracts after every step, counts what
//! each policy costs and turns the counts into modelled cycles
//! ([`cost`]). A run is a function of its configuration and seed; the
//! random decisions go through a [`Chooser`] so that an explorer can drive
//! them instead: [`Dfs`] and [`Replay`] here, and the simulator's explorer
//! through [`explore`], which also holds the known-bad configurations
//! (`pgmap-percpu-preemptible`, `ctxswitch-lost-ipi`).

pub mod cost;
pub mod ctxswitch;
pub mod explore;
pub mod pgmap;
pub mod vmalloc_grow;

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use serde::Serialize;

/// Where a workload's decisions come from.
pub trait Chooser {
    /// Picks one of `options` (at least 1) alternatives: `0..options`.
    fn choose(&mut self, options: usize) -> usize;

    /// Picks an index of `weights` with probability proportional to its
    /// weight. An explorer overrides this to branch once per index with a
    /// non-zero weight; the default draws from [`Chooser::choose`].
    fn choose_weighted(&mut self, weights: &[u32]) -> usize {
        let total: u32 = weights.iter().sum();
        let mut draw = self.choose(total.max(1) as usize) as u32;
        for (index, &weight) in weights.iter().enumerate() {
            if draw < weight {
                return index;
            }
            draw -= weight;
        }
        weights.len() - 1
    }
}

/// Depth-first enumeration of every decision sequence of a run: call
/// [`Dfs::next_schedule`] between runs until it returns false. Weighted
/// choices branch once per index with a non-zero weight, so a run's
/// schedules are its distinct behaviours, not its random draws.
#[derive(Clone, Debug, Default)]
pub struct Dfs {
    /// The picks of the current schedule and how many options each had.
    picks: Vec<(usize, usize)>,
    position: usize,
}

impl Dfs {
    /// An enumeration starting at the all-zero schedule.
    pub fn new() -> Self {
        Self::default()
    }

    /// The picks of the schedule just run (replayable with [`Replay`]).
    pub fn schedule(&self) -> Vec<usize> {
        self.picks[..self.position]
            .iter()
            .map(|&(pick, _)| pick)
            .collect()
    }

    /// Moves to the next schedule; false when every one has been run.
    pub fn next_schedule(&mut self) -> bool {
        self.picks.truncate(self.position);
        self.position = 0;
        while let Some((pick, options)) = self.picks.pop() {
            if pick + 1 < options {
                self.picks.push((pick + 1, options));
                return true;
            }
        }
        false
    }
}

impl Chooser for Dfs {
    fn choose(&mut self, options: usize) -> usize {
        assert!(options > 0, "a choice needs an option");
        let pick = match self.picks.get(self.position) {
            Some(&(pick, recorded)) if recorded == options => pick,
            _ => {
                self.picks.truncate(self.position);
                self.picks.push((0, options));
                0
            }
        };
        self.position += 1;
        pick
    }

    fn choose_weighted(&mut self, weights: &[u32]) -> usize {
        let live: Vec<usize> = (0..weights.len()).filter(|&i| weights[i] > 0).collect();
        live[self.choose(live.len())]
    }
}

/// Replays recorded picks (from [`Dfs::schedule`]); past the end, picks 0.
/// Weighted choices pick among the indices with a non-zero weight, as
/// [`Dfs`] does.
#[derive(Clone, Debug)]
pub struct Replay {
    picks: Vec<usize>,
    position: usize,
}

impl Replay {
    /// A replay of `picks`.
    pub fn new(picks: Vec<usize>) -> Self {
        Self { picks, position: 0 }
    }
}

impl Chooser for Replay {
    fn choose(&mut self, options: usize) -> usize {
        let pick = self.picks.get(self.position).copied().unwrap_or(0);
        self.position += 1;
        pick.min(options - 1)
    }

    fn choose_weighted(&mut self, weights: &[u32]) -> usize {
        let live: Vec<usize> = (0..weights.len()).filter(|&i| weights[i] > 0).collect();
        live[self.choose(live.len())]
    }
}

/// Decisions from a seeded SplitMix64 stream (Steele, Lea and Flood, "Fast
/// splittable pseudorandom number generators", OOPSLA 2014).
#[derive(Clone, Debug)]
pub struct Seeded(u64);

impl Seeded {
    /// A stream from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl Chooser for Seeded {
    fn choose(&mut self, options: usize) -> usize {
        assert!(options > 0, "a choice needs an option");
        (self.next() % options as u64) as usize
    }
}

/// One of the neighbours' workloads, as named on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NeighbourWorkload {
    /// Context-switch storm between user tasks and kernel threads.
    Ctxswitch,
    /// Pure context-switch benchmark: one process's threads switching
    /// through kernel threads on every CPU.
    CtxswitchBench,
    /// vmalloc growing across top-level slots with many processes.
    VmallocGrow,
    /// Nested protection-key windows over device memory.
    Pgmap,
}

impl NeighbourWorkload {
    /// Every workload.
    pub const ALL: [NeighbourWorkload; 4] = [
        NeighbourWorkload::Ctxswitch,
        NeighbourWorkload::CtxswitchBench,
        NeighbourWorkload::VmallocGrow,
        NeighbourWorkload::Pgmap,
    ];

    /// The name on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            NeighbourWorkload::Ctxswitch => "ctxswitch",
            NeighbourWorkload::CtxswitchBench => "ctxswitch-bench",
            NeighbourWorkload::VmallocGrow => "vmalloc-grow",
            NeighbourWorkload::Pgmap => "pgmap",
        }
    }

    /// Parses a command-line name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|w| w.name() == name)
    }

    /// The policies `--policy` accepts for this workload.
    pub fn policies(self) -> &'static [&'static str] {
        match self {
            NeighbourWorkload::Ctxswitch | NeighbourWorkload::CtxswitchBench => {
                &["refcount", "shootdown", "x86"]
            }
            NeighbourWorkload::VmallocGrow => &["fault", "push", "generation", "prealloc"],
            NeighbourWorkload::Pgmap => &["task", "percpu"],
        }
    }
}

/// A contract a neighbour workload checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NeighbourInvariant {
    /// DESIGN.md §6.7: an address space or page-table page freed while a
    /// CPU may still use it.
    UseAfterFree,
    /// §6.1: a CPU used a translation a flush promised to remove.
    StaleTranslation,
    /// A kernel access failed for lack of a synced top-level entry.
    MissingSync,
    /// §6.5: an access to device memory inside a window faulted.
    FaultInsideWindow,
    /// §6.5: an access to device memory outside any window succeeded.
    AccessOutsideWindow,
    /// §6.5: the key register disagrees with the windows open, or was not
    /// restored exactly after an exception or a window.
    KeyRestore,
    /// A per-CPU window was preempted or migrated.
    PreemptedInWindow,
    /// A library call refused an operation the workload expected to work.
    OperationFailed,
}

impl NeighbourInvariant {
    /// The simulator's contract this one is an instance of, where the
    /// simulator names it (§6.1 stale translations, §6.5 key faults and
    /// restores, failed operations); `None` for the contracts only the
    /// neighbours check (§6.7 use-after-free, missing kernel syncs,
    /// preemption inside a per-CPU window).
    pub const fn sim_invariant(self) -> Option<crate::invariant::Invariant> {
        use crate::invariant::Invariant;
        match self {
            NeighbourInvariant::StaleTranslation => Some(Invariant::StaleTranslation),
            NeighbourInvariant::FaultInsideWindow | NeighbourInvariant::AccessOutsideWindow => {
                Some(Invariant::KeyFault)
            }
            NeighbourInvariant::KeyRestore => Some(Invariant::KeyRestore),
            NeighbourInvariant::OperationFailed => Some(Invariant::OperationFailed),
            NeighbourInvariant::UseAfterFree
            | NeighbourInvariant::MissingSync
            | NeighbourInvariant::PreemptedInWindow => None,
        }
    }

    /// The name in reports.
    pub const fn name(self) -> &'static str {
        match self {
            NeighbourInvariant::UseAfterFree => "use-after-free",
            NeighbourInvariant::StaleTranslation => "stale-translation",
            NeighbourInvariant::MissingSync => "missing-sync",
            NeighbourInvariant::FaultInsideWindow => "fault-inside-window",
            NeighbourInvariant::AccessOutsideWindow => "access-outside-window",
            NeighbourInvariant::KeyRestore => "key-restore",
            NeighbourInvariant::PreemptedInWindow => "preempted-in-window",
            NeighbourInvariant::OperationFailed => "operation-failed",
        }
    }
}

/// A violated contract and where.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NeighbourViolation {
    /// Which contract.
    pub invariant: NeighbourInvariant,
    /// Step of the run.
    pub step: u64,
    /// CPU.
    pub cpu: usize,
    /// What went wrong.
    pub detail: String,
}

impl fmt::Display for NeighbourViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invariant violated: {} at step {} on cpu{}: {}",
            self.invariant.name(),
            self.step,
            self.cpu,
            self.detail
        )
    }
}

/// Collects violations: the count and the first few in full.
#[derive(Clone, Debug, Default)]
pub struct Violations {
    count: u64,
    first: Vec<NeighbourViolation>,
}

impl Violations {
    /// How many are kept in full.
    pub const KEPT: usize = 8;

    /// Records one.
    pub fn push(&mut self, violation: NeighbourViolation) {
        self.count += 1;
        if self.first.len() < Self::KEPT {
            self.first.push(violation);
        }
    }

    /// The total.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The first ones.
    pub fn first(&self) -> &[NeighbourViolation] {
        &self.first
    }
}

/// One row of a comparison: a workload under one policy.
#[derive(Clone, Debug, Serialize)]
pub struct NeighbourRow {
    /// Workload name.
    pub workload: &'static str,
    /// Policy name.
    pub policy: &'static str,
    /// Simulated CPUs.
    pub cpus: usize,
    /// Processes (vmalloc-grow) or tasks (ctxswitch, pgmap).
    pub processes: usize,
    /// What happened, by name.
    pub counts: BTreeMap<&'static str, u64>,
    /// Modelled cycles.
    pub cycles: u64,
    /// Invariant violations.
    pub violations: u64,
    /// The first violations in full.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub first_violations: Vec<NeighbourViolation>,
}

/// Formats rows as a text table: one line per row, the counts as columns
/// (the union of every row's counts), then cycles, cycles relative to the
/// first row of the same workload and size, and violations.
pub fn format_table(rows: &[NeighbourRow]) -> String {
    let mut columns: Vec<&'static str> = Vec::new();
    for row in rows {
        for &name in row.counts.keys() {
            if !columns.contains(&name) {
                columns.push(name);
            }
        }
    }
    let mut header = vec![
        "workload".to_string(),
        "policy".to_string(),
        "cpus".to_string(),
        "procs".to_string(),
    ];
    header.extend(columns.iter().map(|c| c.to_string()));
    header.extend(["cycles".into(), "vs first".into(), "violations".into()]);
    let mut lines = vec![header];
    for row in rows {
        let baseline = rows
            .iter()
            .find(|r| {
                r.workload == row.workload && r.cpus == row.cpus && r.processes == row.processes
            })
            .map_or(row.cycles, |r| r.cycles);
        let mut line = vec![
            row.workload.to_string(),
            row.policy.to_string(),
            row.cpus.to_string(),
            row.processes.to_string(),
        ];
        line.extend(
            columns
                .iter()
                .map(|c| row.counts.get(c).copied().unwrap_or(0).to_string()),
        );
        line.push(row.cycles.to_string());
        line.push(if baseline == 0 {
            "-".into()
        } else {
            format!("{:.3}", row.cycles as f64 / baseline as f64)
        });
        line.push(row.violations.to_string());
        lines.push(line);
    }
    let widths: Vec<usize> = (0..lines[0].len())
        .map(|i| lines.iter().map(|l| l[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for line in &lines {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (cell, &w))| {
                if i < 2 {
                    format!("{cell:<w$}")
                } else {
                    format!("{cell:>w$}")
                }
            })
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    out
}

/// The default sizes of a comparison: CPUs for `ctxswitch` and `pgmap`,
/// processes for `vmalloc-grow`.
pub fn default_sizes(workload: NeighbourWorkload) -> &'static [usize] {
    match workload {
        NeighbourWorkload::Ctxswitch | NeighbourWorkload::CtxswitchBench => &[4, 16, 64],
        NeighbourWorkload::VmallocGrow => &[10, 1_000, 10_000],
        NeighbourWorkload::Pgmap => &[4],
    }
}

/// Runs `workload` under the policy named `policy` at `size` (CPUs for
/// `ctxswitch` and `pgmap`, processes for `vmalloc-grow`). `pgmap` also
/// accepts the known-bad `percpu-preemptible`.
///
/// # Errors
/// A message naming the accepted policies when `policy` is unknown, or the
/// size is out of range (1..=64 CPUs; 1..=100,000 processes).
pub fn run_named(
    workload: NeighbourWorkload,
    policy: &str,
    size: usize,
    seed: u64,
    costs: &cost::NeighbourCosts,
) -> Result<NeighbourRow, String> {
    let unknown = || {
        let mut names = workload.policies().to_vec();
        if workload == NeighbourWorkload::Pgmap {
            names.push("percpu-preemptible");
        }
        format!(
            "unknown policy `{policy}` for {} (expected one of {})",
            workload.name(),
            names.join(", ")
        )
    };
    match workload {
        NeighbourWorkload::Ctxswitch | NeighbourWorkload::CtxswitchBench => {
            if !(1..=lazymmu::mm::MAX_CPUS).contains(&size) {
                return Err(format!("{} needs 1..=64 CPUs, not {size}", workload.name()));
            }
            let policy =
                lazymmu::mm::active_mm::LazyTlbPolicy::from_name(policy).ok_or_else(unknown)?;
            let mut config = if workload == NeighbourWorkload::Ctxswitch {
                ctxswitch::CtxSwitchConfig::new(policy, size)
            } else {
                ctxswitch::CtxSwitchConfig::switch_benchmark(policy, size)
            };
            config.seed = seed;
            config.costs = costs.clone();
            Ok(ctxswitch::run(&config))
        }
        NeighbourWorkload::VmallocGrow => {
            if !(1..=100_000).contains(&size) {
                return Err(format!(
                    "vmalloc-grow needs 1..=100000 processes, not {size}"
                ));
            }
            let policy =
                lazymmu::mm::kernel_sync::SyncPolicy::from_name(policy).ok_or_else(unknown)?;
            let mut config = vmalloc_grow::VmallocGrowConfig::new(policy, size);
            config.seed = seed;
            config.costs = costs.clone();
            Ok(vmalloc_grow::run(&config))
        }
        NeighbourWorkload::Pgmap => {
            if !(1..=lazymmu::mm::MAX_CPUS).contains(&size) {
                return Err(format!("pgmap needs 1..=64 CPUs, not {size}"));
            }
            let mut config =
                pgmap::PgmapConfig::variant(&format!("pgmap-{policy}")).ok_or_else(unknown)?;
            config.cpus = size;
            config.tasks = config.tasks.max(2 * size);
            config.seed = seed;
            config.costs = costs.clone();
            Ok(pgmap::run(&config))
        }
    }
}
