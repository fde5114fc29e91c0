//! The scenarios `lazymmu check` explores, the known-bad variants it must
//! catch, and the check itself.
//!
//! Each scenario is a small [`machine::Spec`]: two CPUs, two or three tasks,
//! a few page-table entries, optionally an interrupt handler that changes
//! kernel mappings. Workload scenarios give each simulator workload's
//! lazy-section shape in small size; contract scenarios aim at one clause of
//! DESIGN.md §2 and §6 each.
//!
//! A [`Variant`] changes the configuration to a known-bad one by wrapping
//! the library's environment or arch (see [`machine::Faults`]) or by
//! picking another design; the library code is the same.

pub mod machine;

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::explore::{replay, Bounds, Explorer, Found, ReplayOutcome, Report};
use machine::{Action, Arch, Design, Faults, Spec, TaskSpec};

/// A named scenario.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Name used in traces and on the command line.
    pub name: &'static str,
    /// What it exercises.
    pub about: &'static str,
    /// The machine it runs (default design, no faults).
    pub spec: Spec,
}

const fn w(entry: u8) -> Action {
    Action::Write {
        entry,
        kernel: false,
    }
}

const fn k(entry: u8) -> Action {
    Action::Write {
        entry,
        kernel: true,
    }
}

const fn rb(entry: u8) -> Action {
    Action::ReadBack { entry }
}

const fn ft(table: u8) -> Action {
    Action::FreeTable { table }
}

use Action::{Disable as D, Enable as E, Pause as P, Resume as R};

fn task(name: &'static str, cpu: usize, actions: &[Action]) -> TaskSpec {
    TaskSpec {
        name,
        cpu,
        actions: actions.to_vec(),
    }
}

fn spec(arch: Arch, tasks: Vec<TaskSpec>, handler: &[Action], migrate: bool) -> Spec {
    Spec {
        arch,
        design: Design::Counters,
        faults: Faults::default(),
        cpus: 2,
        tasks,
        handler: handler.to_vec(),
        max_interrupts: if handler.is_empty() { 0 } else { 1 },
        migrate,
        cached_tables: Vec::new(),
    }
}

/// Every scenario, in the order `lazymmu check` runs them.
pub fn all() -> Vec<Scenario> {
    use Arch::{Arm64, Arm64Poe, XenPv};
    vec![
        // Workload shapes, small size.
        Scenario {
            name: "fork",
            about: "copy_page_range: child entries written and parent entries write-protected in one section, a second process forking on the other CPU",
            spec: spec(
                XenPv,
                vec![
                    task("parent", 0, &[E, w(0), w(1), w(2), w(3), D]),
                    task("other", 1, &[E, w(4), w(5), D]),
                ],
                &[],
                true,
            ),
        },
        Scenario {
            name: "munmap",
            about: "zap of a range while a second task zaps on the same CPU and a third on the other",
            spec: spec(
                XenPv,
                vec![
                    task("zap", 0, &[E, w(0), w(1), w(2), D]),
                    task("zap2", 0, &[E, w(4), D]),
                    task("zap3", 1, &[E, w(6), D]),
                ],
                &[],
                false,
            ),
        },
        Scenario {
            name: "exit",
            about: "exit_mmap: zap, then free the tables, with a kernel-mapping interrupt",
            spec: spec(
                XenPv,
                vec![
                    task("exit", 0, &[E, w(0), w(1), D, E, w(2), D]),
                    task("other", 1, &[E, w(4), D]),
                ],
                &[k(10)],
                false,
            ),
        },
        Scenario {
            name: "exit-free-tables",
            about: "exit_mmap: zap a PTE table in a section, then free it through the TLB gather while the other CPU's walk cache points to it",
            spec: Spec {
                cached_tables: vec![0],
                ..spec(
                    XenPv,
                    vec![
                        task("exit", 0, &[E, w(0), w(1), D, ft(0)]),
                        task("other", 1, &[E, w(8), D]),
                    ],
                    &[],
                    true,
                )
            },
        },
        Scenario {
            name: "mprotect",
            about: "change_protection over two PTE tables, one section per table",
            spec: spec(
                XenPv,
                vec![
                    task("mprotect", 0, &[E, w(0), w(1), D, E, w(2), w(3), D]),
                    task("other", 0, &[E, w(5), D]),
                ],
                &[],
                true,
            ),
        },
        Scenario {
            name: "mremap",
            about: "move_ptes: clear at the source and write at the destination in one section",
            spec: spec(
                XenPv,
                vec![
                    task("mremap", 0, &[E, w(0), w(8), w(1), w(9), D]),
                    task("other", 1, &[E, w(4), D]),
                ],
                &[],
                true,
            ),
        },
        Scenario {
            name: "vmalloc",
            about: "vmap/vunmap of kernel ranges on arm64 (deferred barriers), with migration",
            spec: spec(
                Arm64,
                vec![
                    task("vmap", 0, &[E, k(0), k(1), k(2), D]),
                    task("vunmap", 1, &[E, k(4), D]),
                    task("waiter", 0, &[E, k(6), D]),
                ],
                &[],
                true,
            ),
        },
        Scenario {
            name: "kasan",
            about: "KASAN shadow populate: each entry written and read back under pause/resume inside a section",
            spec: spec(
                XenPv,
                vec![
                    task("kasan", 0, &[E, w(0), P, k(8), rb(8), R, w(1), D]),
                    task("other", 0, &[E, w(4), D]),
                    task("cpu1", 1, &[w(6)]),
                ],
                &[],
                false,
            ),
        },
        Scenario {
            name: "debug-pagealloc",
            about: "a zap that mid-section allocates a page whose kernel mapping changes in a nested section, plus an interrupt doing the same",
            spec: spec(
                XenPv,
                vec![
                    task("zap", 0, &[E, w(0), E, k(8), D, w(1), D]),
                    task("other", 1, &[E, w(4), D]),
                ],
                &[E, k(10), D],
                false,
            ),
        },
        // Contract scenarios.
        Scenario {
            name: "nested-pause",
            about: "nested sections with a pause inside and read-backs while paused",
            spec: spec(
                XenPv,
                vec![
                    task(
                        "nested",
                        0,
                        &[E, w(0), E, w(1), P, rb(1), w(2), rb(2), R, w(3), D, D],
                    ),
                    task("waiter", 0, &[E, w(5), D]),
                ],
                &[],
                false,
            ),
        },
        Scenario {
            name: "irq-kernel-mapping",
            about: "an interrupt handler updates a kernel mapping in the middle of a section",
            spec: spec(
                XenPv,
                vec![
                    task("section", 0, &[E, w(0), E, w(1), D, w(2), D]),
                    task("cpu1", 1, &[E, w(4), D]),
                ],
                &[k(10)],
                false,
            ),
        },
        Scenario {
            name: "switch-windows",
            about: "a context switch in every window of enable, disable, pause and resume, on both CPUs and with migration",
            spec: spec(
                XenPv,
                vec![
                    task("a", 0, &[E, w(0), P, w(1), R, w(2), D]),
                    task("b", 0, &[E, w(4), D]),
                    task("c", 1, &[E, w(6), D]),
                ],
                &[],
                true,
            ),
        },
        Scenario {
            name: "arm64-migrate",
            about: "a task migrating with arm64 barriers pending, an interrupt mapping kernel memory",
            spec: spec(
                Arm64,
                vec![
                    task("a", 0, &[E, k(0), k(1), D, rb(1)]),
                    task("b", 0, &[E, k(3), D]),
                    task("c", 1, &[E, k(5), D]),
                ],
                &[k(10)],
                true,
            ),
        },
        Scenario {
            name: "pkeys-nested",
            about: "arm64 with POE-protected page tables: nested sections, a kernel-mapping interrupt (exception entry and return), preemption and migration",
            spec: spec(
                Arm64Poe,
                vec![
                    task("a", 0, &[E, k(0), E, k(1), D, k(2), D]),
                    task("b", 0, &[E, k(4), D, k(5)]),
                    task("c", 1, &[E, k(6), P, k(7), R, D]),
                ],
                &[k(10)],
                true,
            ),
        },
        Scenario {
            name: "xen-multicall-switch",
            about: "a Xen PV context switch with a partly filled multicall buffer",
            spec: spec(
                XenPv,
                vec![
                    task("a", 0, &[E, w(0), w(1), w(2), D]),
                    task("b", 0, &[E, w(3), w(4), D]),
                    task("c", 1, &[w(6)]),
                ],
                &[],
                true,
            ),
        },
    ]
}

/// The tiny scenario whose schedule count is computed by hand: one CPU,
/// two tasks of two writes each, no lazy sections, no interrupts. Its
/// schedules are the C(4, 2) = 6 interleavings of the writes.
pub fn tiny() -> Scenario {
    Scenario {
        name: "tiny",
        about: "two tasks of two writes on one CPU",
        spec: Spec {
            cpus: 1,
            ..spec(
                Arch::XenPv,
                vec![task("a", 0, &[w(0), w(1)]), task("b", 0, &[w(2), w(3)])],
                &[],
                false,
            )
        },
    }
}

/// Finds a scenario by name (including `tiny`).
pub fn find(name: &str) -> Option<Scenario> {
    all()
        .into_iter()
        .chain(std::iter::once(tiny()))
        .find(|s| s.name == name)
}

/// A configuration to check: the default design or a known-bad variant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Variant {
    /// The library as shipped: counters in the task, transitions atomic
    /// with respect to context switches.
    #[default]
    Default,
    /// The per-CPU design as shipped (preemption off in the section).
    PerCpu,
    /// Linux 7.0's ordering: counter updated, then hook called, with
    /// preemption allowed in between, on Xen PV.
    Linux70Xen,
    /// A per-CPU design that allows preemption inside the section.
    PercpuPreemptible,
    /// A nested disable that does not flush.
    NestedNoFlush,
    /// Updates made in interrupt context are batched.
    IrqBatched,
    /// The stateful design, each section carrying the key-register value
    /// it found.
    Stateful,
    /// Nested stateful sections that save the key register in one per-task
    /// slot.
    StatefulSingleSlot,
    /// A TLB gather that frees page-table pages before the flush.
    GatherFreeBeforeFlush,
}

impl Variant {
    /// Every variant, the correct ones first.
    pub const ALL: [Variant; 9] = [
        Variant::Default,
        Variant::PerCpu,
        Variant::Stateful,
        Variant::Linux70Xen,
        Variant::PercpuPreemptible,
        Variant::NestedNoFlush,
        Variant::IrqBatched,
        Variant::StatefulSingleSlot,
        Variant::GatherFreeBeforeFlush,
    ];

    /// The known-bad variants, which the check must catch.
    pub const KNOWN_BAD: [Variant; 6] = [
        Variant::Linux70Xen,
        Variant::PercpuPreemptible,
        Variant::NestedNoFlush,
        Variant::IrqBatched,
        Variant::StatefulSingleSlot,
        Variant::GatherFreeBeforeFlush,
    ];

    /// The shipped designs, which must pass every scenario.
    pub const SHIPPED: [Variant; 3] = [Variant::Default, Variant::PerCpu, Variant::Stateful];

    /// The name on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Variant::Default => "default",
            Variant::PerCpu => "percpu",
            Variant::Linux70Xen => "linux70-xen",
            Variant::PercpuPreemptible => "percpu-preemptible",
            Variant::NestedNoFlush => "nested-no-flush",
            Variant::IrqBatched => "irq-batched",
            Variant::Stateful => "stateful",
            Variant::StatefulSingleSlot => "stateful-single-slot",
            Variant::GatherFreeBeforeFlush => "gather-free-before-flush",
        }
    }

    /// What it is.
    pub const fn about(self) -> &'static str {
        match self {
            Variant::Default => {
                "counters in the task; update and hook atomic w.r.t. context switch"
            }
            Variant::PerCpu => "state on the CPU; preemption off for the whole section",
            Variant::Linux70Xen => {
                "Linux 7.0 ordering: counter store, preemption possible, then the hook"
            }
            Variant::PercpuPreemptible => {
                "per-CPU state with preemption allowed inside the section"
            }
            Variant::NestedNoFlush => "a nested disable does not flush",
            Variant::IrqBatched => "updates made in interrupt context are batched",
            Variant::Stateful => {
                "state on the callers' stacks; each section restores the key register it found"
            }
            Variant::StatefulSingleSlot => {
                "nested stateful sections save the key register in one per-task slot"
            }
            Variant::GatherFreeBeforeFlush => {
                "the TLB gather frees page-table pages before the flush that covers them"
            }
        }
    }

    /// Whether the check must find a violation.
    pub const fn is_known_bad(self) -> bool {
        !matches!(self, Variant::Default | Variant::PerCpu | Variant::Stateful)
    }

    /// The scenario's machine under this variant.
    pub fn apply(self, spec: &Spec) -> Spec {
        let mut spec = spec.clone();
        match self {
            Variant::Default => {}
            Variant::PerCpu => spec.design = Design::PerCpu,
            Variant::Linux70Xen => spec.faults.preemptible_transitions = true,
            Variant::PercpuPreemptible => {
                spec.design = Design::PerCpu;
                spec.faults.preemptible_transitions = true;
            }
            Variant::NestedNoFlush => spec.faults.flush_is_noop = true,
            Variant::IrqBatched => spec.faults.hide_interrupts = true,
            Variant::Stateful => spec.design = Design::Stateful,
            Variant::StatefulSingleSlot => spec.design = Design::StatefulSingleSlot,
            Variant::GatherFreeBeforeFlush => spec.faults.free_before_flush = true,
        }
        spec
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown variant name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownVariant(pub String);

impl fmt::Display for UnknownVariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown variant {:?}; known: ", self.0)?;
        for (i, v) in Variant::ALL.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(v.name())?;
        }
        Ok(())
    }
}

impl std::error::Error for UnknownVariant {}

impl FromStr for Variant {
    type Err = UnknownVariant;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Variant::ALL
            .into_iter()
            .find(|v| v.name() == s)
            .ok_or_else(|| UnknownVariant(s.to_owned()))
    }
}

/// The outcome of exploring one scenario.
#[derive(Clone, Debug)]
pub struct ScenarioReport {
    /// The scenario's name.
    pub scenario: &'static str,
    /// What the explorer covered and found.
    pub report: Report,
}

/// The outcome of a whole check.
#[derive(Clone, Debug)]
pub struct CheckReport {
    /// The variant checked.
    pub variant: Variant,
    /// The limits used.
    pub bounds: Bounds,
    /// One entry per scenario.
    pub scenarios: Vec<ScenarioReport>,
    /// Wall time of the whole check.
    pub elapsed: Duration,
}

impl CheckReport {
    /// Schedules explored over all scenarios.
    pub fn schedules(&self) -> u64 {
        self.scenarios.iter().map(|s| s.report.schedules).sum()
    }

    /// Runs cut short at a visited state.
    pub fn pruned(&self) -> u64 {
        self.scenarios.iter().map(|s| s.report.pruned).sum()
    }

    /// Schedules per second of wall time.
    pub fn schedules_per_second(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.schedules() as f64 / secs
        } else {
            0.0
        }
    }

    /// Every violation found, with the scenario it was found in.
    pub fn violations(&self) -> impl Iterator<Item = (&'static str, &Found)> {
        self.scenarios
            .iter()
            .flat_map(|s| s.report.violations.iter().map(move |f| (s.scenario, f)))
    }

    /// Whether every scenario held.
    pub fn holds(&self) -> bool {
        self.violations().next().is_none()
    }
}

/// Explores `scenarios` under `variant`.
pub fn check(scenarios: &[Scenario], variant: Variant, bounds: Bounds) -> CheckReport {
    let start = Instant::now();
    let reports = scenarios
        .iter()
        .map(|s| ScenarioReport {
            scenario: s.name,
            report: Explorer::new(bounds).explore(s.name, &variant.apply(&s.spec)),
        })
        .collect();
    CheckReport {
        variant,
        bounds,
        scenarios: reports,
        elapsed: start.elapsed(),
    }
}

/// Replays `choices` on `scenario` under `variant`.
pub fn replay_trace(scenario: &Scenario, variant: Variant, choices: &[usize]) -> ReplayOutcome {
    replay(&variant.apply(&scenario.spec), choices)
}
