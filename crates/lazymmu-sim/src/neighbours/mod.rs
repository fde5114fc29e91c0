//! The MM neighbours on the machine: a context-switch storm for lazy TLB
//! ([`ctxswitch`]), vmalloc growing across top-level slots
//! ([`vmalloc_grow`]) and protection-key windows over device memory
//! ([`pgmap`]).
//!
//! Each workload runs the library's policy code unmodified
//! (`lazymmu::mm`) on the one [`Machine`](crate::machine::Machine), through
//! the same machine traits and with the same cost table as the page-table
//! workloads; the workload's own decisions (which CPU acts, what it does)
//! are weighted choice points, so the same run is drawn at random by
//! `compare` and enumerated by `check`. The known-bad configurations
//! (`pgmap-percpu-preemptible`, `ctxswitch-lost-ipi`) are the machine's
//! fault switches.

pub mod ctxswitch;
pub mod pgmap;
pub mod vmalloc_grow;

use std::collections::BTreeMap;

use lazymmu::mm::active_mm::LazyTlbPolicy;
use lazymmu::mm::kernel_sync::SyncPolicy;
use lazymmu::mm::pkey_window::WindowPolicy;

use crate::choice::{Chooser, RandomChooser, Rates};
use crate::cost::{Cost, Platform};
use crate::explore::{catching, RunOutcome, System};
use crate::invariant::Violation;
use crate::machine::Topology;

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

/// The command-line name of a lazy-TLB policy.
pub const fn lazy_tlb_name(policy: LazyTlbPolicy) -> &'static str {
    match policy {
        LazyTlbPolicy::Refcount => "refcount",
        LazyTlbPolicy::Shootdown => "shootdown",
        LazyTlbPolicy::X86 => "x86",
    }
}

/// The lazy-TLB policy named `name`.
pub fn parse_lazy_tlb(name: &str) -> Option<LazyTlbPolicy> {
    LazyTlbPolicy::ALL
        .into_iter()
        .find(|&p| lazy_tlb_name(p) == name)
}

/// The command-line name of a kernel top-level sync policy.
pub const fn sync_name(policy: SyncPolicy) -> &'static str {
    match policy {
        SyncPolicy::Fault => "fault",
        SyncPolicy::Push => "push",
        SyncPolicy::Generation => "generation",
        SyncPolicy::Prealloc => "prealloc",
    }
}

/// The sync policy named `name`.
pub fn parse_sync(name: &str) -> Option<SyncPolicy> {
    SyncPolicy::ALL.into_iter().find(|&p| sync_name(p) == name)
}

/// The command-line name of a protection-key window policy.
pub const fn window_name(policy: WindowPolicy) -> &'static str {
    match policy {
        WindowPolicy::Task => "task",
        WindowPolicy::PerCpu => "percpu",
    }
}

/// The window policy named `name`.
pub fn parse_window(name: &str) -> Option<WindowPolicy> {
    WindowPolicy::ALL
        .into_iter()
        .find(|&p| window_name(p) == name)
}

/// One row of a comparison: a workload under one policy.
#[derive(Clone, Debug)]
pub struct NeighbourRow {
    /// Workload name.
    pub workload: &'static str,
    /// Policy name.
    pub policy: &'static str,
    /// The machine it ran on as the caller named it (`--topology
    /// power8-e880`), or `None` for `cpus` CPUs of one socket. The
    /// workloads leave it `None`; the caller names the machine it chose.
    pub machine: Option<String>,
    /// Simulated CPUs.
    pub cpus: usize,
    /// Processes (vmalloc-grow) or tasks (ctxswitch, pgmap).
    pub processes: usize,
    /// What happened, by name: the machine's counts and the policy's own
    /// statistics.
    pub counts: BTreeMap<&'static str, u64>,
    /// Modelled cycles (the machine's one cost table).
    pub cycles: u64,
    /// Invariant violations.
    pub violations: u64,
    /// The first violations in full.
    pub first_violations: Vec<Violation>,
}

/// The machine's non-zero counts, under the names the neighbour tables
/// have always used for them (`ipis`, `root_loads`, …) where they had one,
/// else under their cost-table names.
pub(crate) fn machine_counts(
    machine: &crate::machine::Machine,
    counts: &mut BTreeMap<&'static str, u64>,
) {
    for (row, n) in machine.counts().nonzero() {
        counts.insert(count_name(row), n);
    }
}

fn count_name(row: Cost) -> &'static str {
    use crate::cost::{Primitive as P, Software as S};
    match row {
        Cost::Primitive(P::Ipi) => "ipis",
        Cost::Primitive(P::FullFlush) => "full_flushes",
        Cost::Primitive(P::RootLoad) => "root_loads",
        Cost::Primitive(P::KeyWrite) => "key_writes",
        Cost::Software(S::ContextSwitch) => "switches",
        Cost::Software(S::Fault) => "faults",
        Cost::Software(S::EntryCopy) => "entries_copied",
        Cost::Software(S::GenerationCheck) => "generation_checks",
        Cost::Software(S::TableAlloc) => "boot_tables",
        other => Cost::name(other),
    }
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

/// The seeded chooser a `compare` row draws its decisions from.
pub(crate) fn seeded(seed: u64) -> RandomChooser {
    RandomChooser::new(seed, Rates::default())
}

/// Runs `workload` under the policy named `policy` at `size` (CPUs for
/// `ctxswitch`, `ctxswitch-bench` and `pgmap`, processes for
/// `vmalloc-grow`), with the cost overrides `costs`. `pgmap` also accepts
/// the known-bad `percpu-preemptible`.
///
/// # Errors
/// A message naming the accepted policies when `policy` is unknown, or the
/// size is out of range (1 to 2,048 CPUs for `ctxswitch-bench`, 1 to 64
/// for the others; 1 to 100,000 processes).
pub fn run_named(
    workload: NeighbourWorkload,
    policy: &str,
    size: usize,
    seed: u64,
    costs: &[(Cost, u64)],
) -> Result<NeighbourRow, String> {
    let unknown = || unknown_policy(workload, policy);
    let backend_cpus = lazymmu::backend::machine::MAX_BACKEND_CPUS;
    match workload {
        NeighbourWorkload::CtxswitchBench => {
            if !(1..=lazymmu::cpu::MAX_CPUS).contains(&size) {
                return Err(format!(
                    "ctxswitch-bench needs 1..={} CPUs, not {size}",
                    lazymmu::cpu::MAX_CPUS
                ));
            }
            run_switch_benchmark(policy, Topology::flat(size), Platform::X86, seed, costs)
        }
        NeighbourWorkload::Ctxswitch => {
            if !(1..=backend_cpus).contains(&size) {
                return Err(format!(
                    "ctxswitch needs 1..={backend_cpus} CPUs, not {size}"
                ));
            }
            let policy = parse_lazy_tlb(policy).ok_or_else(unknown)?;
            let mut config = ctxswitch::CtxSwitchConfig::new(policy, size);
            config.seed = seed;
            config.costs = costs.to_vec();
            Ok(ctxswitch::run(&config))
        }
        NeighbourWorkload::VmallocGrow => {
            if !(1..=100_000).contains(&size) {
                return Err(format!(
                    "vmalloc-grow needs 1..=100000 processes, not {size}"
                ));
            }
            let policy = parse_sync(policy).ok_or_else(unknown)?;
            let mut config = vmalloc_grow::VmallocGrowConfig::new(policy, size);
            config.seed = seed;
            config.costs = costs.to_vec();
            Ok(vmalloc_grow::run(&config))
        }
        NeighbourWorkload::Pgmap => {
            if !(1..=backend_cpus).contains(&size) {
                return Err(format!("pgmap needs 1..={backend_cpus} CPUs, not {size}"));
            }
            let mut config =
                pgmap::PgmapConfig::variant(&format!("pgmap-{policy}")).ok_or_else(unknown)?;
            config.cpus = size;
            config.tasks = config.tasks.max(2 * size);
            config.seed = seed;
            config.costs = costs.to_vec();
            Ok(pgmap::run(&config))
        }
    }
}

/// Runs `ctxswitch-bench` (will-it-scale's `context_switch1_threads`,
/// [`ctxswitch::CtxSwitchConfig::ping_pong`]) under the lazy-TLB policy
/// named `policy` on `topology` with `platform`'s cost table, with the cost
/// overrides `costs`. [`crate::machine::topology::POWER8_E880`] is the
/// machine of Linux 6.4's published figures.
///
/// # Errors
/// A message naming the accepted policies when `policy` is unknown.
pub fn run_switch_benchmark(
    policy: &str,
    topology: Topology,
    platform: Platform,
    seed: u64,
    costs: &[(Cost, u64)],
) -> Result<NeighbourRow, String> {
    let workload = NeighbourWorkload::CtxswitchBench;
    let policy = parse_lazy_tlb(policy).ok_or_else(|| unknown_policy(workload, policy))?;
    let mut config = ctxswitch::CtxSwitchConfig::ping_pong(policy, topology, platform);
    config.seed = seed;
    config.costs = costs.to_vec();
    Ok(ctxswitch::run(&config))
}

fn unknown_policy(workload: NeighbourWorkload, policy: &str) -> String {
    let mut names = workload.policies().to_vec();
    if workload == NeighbourWorkload::Pgmap {
        names.push("percpu-preemptible");
    }
    format!(
        "unknown policy `{policy}` for {} (expected one of {})",
        workload.name(),
        names.join(", ")
    )
}

/// Steps of the tiny `ctxswitch` and `pgmap` scenarios.
const TINY_STEPS: u64 = 3;

#[derive(Clone, Debug)]
enum Config {
    Ctxswitch(ctxswitch::CtxSwitchConfig),
    VmallocGrow(vmalloc_grow::VmallocGrowConfig),
    Pgmap(pgmap::PgmapConfig),
}

/// A neighbour workload in a configuration small enough to explore.
#[derive(Clone, Debug)]
pub struct NeighbourSystem {
    /// Scenario name (`ctxswitch-shootdown`, `pgmap-percpu`, ...).
    pub name: String,
    /// What it exercises.
    pub about: &'static str,
    config: Config,
}

impl NeighbourSystem {
    /// Runs once with `chooser`, returning the workload's row.
    pub fn run_row(&self, chooser: &mut dyn Chooser) -> NeighbourRow {
        match &self.config {
            Config::Ctxswitch(config) => ctxswitch::run_with(config, chooser),
            Config::VmallocGrow(config) => vmalloc_grow::run_with(config, chooser),
            Config::Pgmap(config) => pgmap::run_with(config, chooser),
        }
    }
}

impl System for NeighbourSystem {
    fn run(&self, chooser: &mut dyn Chooser) -> RunOutcome {
        catching(|| {
            let row = self.run_row(chooser);
            RunOutcome {
                violation: row.first_violations.into_iter().next(),
                stopped: false,
            }
        })
    }
}

/// The tiny scenario of every neighbour policy, in table order.
pub fn scenarios() -> Vec<NeighbourSystem> {
    let mut all = Vec::new();
    for policy in LazyTlbPolicy::ALL {
        all.push(NeighbourSystem {
            name: format!("ctxswitch-{}", lazy_tlb_name(policy)),
            about: "lazy TLB: switches, unmaps, table frees and an exit on 2 CPUs",
            config: Config::Ctxswitch(ctxswitch::CtxSwitchConfig::tiny(policy, TINY_STEPS)),
        });
    }
    for policy in SyncPolicy::ALL {
        all.push(NeighbourSystem {
            name: format!("vmalloc-grow-{}", sync_name(policy)),
            about: "kernel top-level sync: vmalloc across 2 slots, switches, accesses",
            config: Config::VmallocGrow(vmalloc_grow::VmallocGrowConfig::tiny(policy)),
        });
    }
    for policy in WindowPolicy::ALL {
        all.push(NeighbourSystem {
            name: format!("pgmap-{}", window_name(policy)),
            about: "protection-key windows: nesting, interrupts, preemption, migration",
            config: Config::Pgmap(pgmap::PgmapConfig::tiny(policy, TINY_STEPS)),
        });
    }
    all
}

/// The known-bad neighbour configurations, by variant name:
/// `pgmap-percpu-preemptible` (per-CPU windows that leave preemption on)
/// and `ctxswitch-lost-ipi` (a machine whose IPIs to other CPUs vanish,
/// under the shootdown policy).
pub fn variant(name: &str) -> Option<NeighbourSystem> {
    match name {
        "pgmap-percpu-preemptible" => Some(NeighbourSystem {
            name: name.to_string(),
            about: "per-CPU window count with preemption left on inside windows",
            config: Config::Pgmap(pgmap::PgmapConfig {
                preemptible_windows: true,
                ..pgmap::PgmapConfig::tiny(WindowPolicy::PerCpu, TINY_STEPS)
            }),
        }),
        "ctxswitch-lost-ipi" => Some(NeighbourSystem {
            name: name.to_string(),
            about: "shootdown IPIs and flush IPIs that never arrive",
            config: Config::Ctxswitch(ctxswitch::CtxSwitchConfig {
                lose_ipis: true,
                ..ctxswitch::CtxSwitchConfig::tiny(LazyTlbPolicy::Shootdown, 4)
            }),
        }),
        _ => None,
    }
}

/// Names of the known-bad neighbour variants.
pub const KNOWN_BAD: [&str; 2] = ["pgmap-percpu-preemptible", "ctxswitch-lost-ipi"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_names_round_trip() {
        for policy in LazyTlbPolicy::ALL {
            assert_eq!(parse_lazy_tlb(lazy_tlb_name(policy)), Some(policy));
        }
        assert_eq!(parse_lazy_tlb("lazy"), None);
        for policy in SyncPolicy::ALL {
            assert_eq!(parse_sync(sync_name(policy)), Some(policy));
        }
        assert_eq!(parse_sync("eager"), None);
        for policy in WindowPolicy::ALL {
            assert_eq!(parse_window(window_name(policy)), Some(policy));
        }
        assert_eq!(parse_window("global"), None);
    }
}
