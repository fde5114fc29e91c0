//! The neighbour workloads as systems for the exhaustive explorer
//! ([`crate::explore`]): a tiny scenario per policy, and the known-bad
//! configurations the explorer must catch.
//!
//! Every decision a neighbour workload makes becomes a choice point. A
//! weighted decision offers one option per possible outcome (so schedules
//! are behaviours, not random draws). All options are free: the scenarios
//! are finite by their step count, not by a preemption bound. A run the
//! explorer stops continues with option 0, which is what a replay of the
//! shortened trace does too.

use crate::explore::{self, ChoicePoint, RunOutcome, System, Violation};

use super::ctxswitch::{self, CtxSwitchConfig};
use super::pgmap::{self, PgmapConfig};
use super::vmalloc_grow::{self, VmallocGrowConfig};
use super::{Chooser, NeighbourRow};
use lazymmu::mm::active_mm::LazyTlbPolicy;
use lazymmu::mm::kernel_sync::SyncPolicy;
use lazymmu::mm::pkey_window::WindowPolicy;

/// Steps of the tiny `ctxswitch` and `pgmap` scenarios.
const TINY_STEPS: u64 = 3;

#[derive(Clone, Debug)]
enum Config {
    Ctxswitch(CtxSwitchConfig),
    VmallocGrow(VmallocGrowConfig),
    Pgmap(PgmapConfig),
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

/// Adapts the explorer's chooser to the workloads' one.
struct Adapter<'a> {
    inner: &'a mut dyn explore::Chooser,
    stopped: bool,
}

impl Chooser for Adapter<'_> {
    fn choose(&mut self, options: usize) -> usize {
        if self.stopped {
            return 0;
        }
        let point = ChoicePoint {
            options,
            free: options,
            digest: None,
        };
        match self.inner.choose(&point) {
            Some(pick) => pick.min(options - 1),
            None => {
                self.stopped = true;
                0
            }
        }
    }

    fn choose_weighted(&mut self, weights: &[u32]) -> usize {
        let live: Vec<usize> = (0..weights.len()).filter(|&i| weights[i] > 0).collect();
        live[self.choose(live.len())]
    }
}

impl System for NeighbourSystem {
    fn run(&self, chooser: &mut dyn explore::Chooser) -> RunOutcome {
        let mut adapter = Adapter {
            inner: chooser,
            stopped: false,
        };
        let row = self.run_row(&mut adapter);
        RunOutcome {
            violation: row.first_violations.first().map(|v| Violation {
                invariant: v.invariant.name().to_string(),
                detail: v.to_string(),
                events: Vec::new(),
            }),
            stopped: adapter.stopped,
        }
    }
}

/// The tiny scenario of every neighbour policy, in table order.
pub fn scenarios() -> Vec<NeighbourSystem> {
    let mut all = Vec::new();
    for policy in LazyTlbPolicy::ALL {
        all.push(NeighbourSystem {
            name: format!("ctxswitch-{}", policy.name()),
            about: "lazy TLB: switches, unmaps, table frees and an exit on 2 CPUs",
            config: Config::Ctxswitch(CtxSwitchConfig::tiny(policy, TINY_STEPS)),
        });
    }
    for policy in SyncPolicy::ALL {
        all.push(NeighbourSystem {
            name: format!("vmalloc-grow-{}", policy.name()),
            about: "kernel top-level sync: vmalloc across 2 slots, switches, accesses",
            config: Config::VmallocGrow(VmallocGrowConfig::tiny(policy)),
        });
    }
    for policy in WindowPolicy::ALL {
        all.push(NeighbourSystem {
            name: format!("pgmap-{}", policy.name()),
            about: "protection-key windows: nesting, interrupts, preemption, migration",
            config: Config::Pgmap(PgmapConfig::tiny(policy, TINY_STEPS)),
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
            config: Config::Pgmap(PgmapConfig {
                preemptible_windows: true,
                ..PgmapConfig::tiny(WindowPolicy::PerCpu, TINY_STEPS)
            }),
        }),
        "ctxswitch-lost-ipi" => Some(NeighbourSystem {
            name: name.to_string(),
            about: "shootdown IPIs and flush IPIs that never arrive",
            config: Config::Ctxswitch(CtxSwitchConfig {
                lose_ipis: true,
                ..CtxSwitchConfig::tiny(LazyTlbPolicy::Shootdown, 4)
            }),
        }),
        _ => None,
    }
}

/// Names of the known-bad neighbour variants.
pub const KNOWN_BAD: [&str; 2] = ["pgmap-percpu-preemptible", "ctxswitch-lost-ipi"];
