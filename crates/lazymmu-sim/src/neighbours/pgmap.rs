//! `pgmap`: tasks opening nested protection-key windows over device memory
//! while the scheduler preempts and migrates them and interrupts arrive,
//! under one window policy (`task` or `percpu`).
//!
//! Each step one CPU's task opens or closes a window, writes device memory,
//! takes an interrupt whose handler uses its own window (sometimes with a
//! nested exception inside), or is preempted — possibly resuming later on
//! another CPU. Checked after every step: a device-memory access inside a
//! window succeeds and one outside faults, the register agrees with the
//! windows the running context has open, the register is restored exactly
//! after every exception, and a per-CPU window is never preempted.
//!
//! The known-bad variant `pgmap-percpu-preemptible`
//! ([`PgmapConfig::percpu_preemptible`]) is the per-CPU policy on a kernel
//! whose windows do not disable preemption: the checks must catch it.

use std::cell::Cell;
use std::collections::BTreeMap;

use lazymmu::mm::pkey_window::{
    CpuKeyState, PkeyMachine, PkeyWindows, Pkrs, TaskKeyState, WindowPolicy, WindowStats,
    WindowViolation,
};

use super::cost::NeighbourCosts;
use super::{Chooser, NeighbourInvariant, NeighbourRow, NeighbourViolation, Seeded, Violations};

/// The protection key device memory is tagged with.
pub const PGMAP_KEY: u8 = 1;

/// Deepest nesting the workload opens.
const MAX_NESTING: u8 = 4;

/// Parameters of a `pgmap` run.
#[derive(Clone, Debug)]
pub struct PgmapConfig {
    /// Where the nesting count lives.
    pub policy: WindowPolicy,
    /// CPUs.
    pub cpus: usize,
    /// Tasks (at least one per CPU).
    pub tasks: usize,
    /// Steps.
    pub steps: u64,
    /// Seed of the decisions.
    pub seed: u64,
    /// Known-bad: windows do not disable preemption (meaningful with the
    /// per-CPU policy; the variant `pgmap-percpu-preemptible`).
    pub preemptible_windows: bool,
    /// Cycle costs.
    pub costs: NeighbourCosts,
}

impl PgmapConfig {
    /// The defaults: 4 CPUs, 8 tasks, 20,000 steps.
    pub fn new(policy: WindowPolicy) -> Self {
        Self {
            policy,
            cpus: 4,
            tasks: 8,
            steps: 20_000,
            seed: 1,
            preemptible_windows: false,
            costs: NeighbourCosts::default(),
        }
    }

    /// A scenario small enough to explore exhaustively: 2 CPUs, 3 tasks,
    /// `steps` steps.
    pub fn tiny(policy: WindowPolicy, steps: u64) -> Self {
        Self {
            cpus: 2,
            tasks: 3,
            steps,
            ..Self::new(policy)
        }
    }

    /// The known-bad variant `pgmap-percpu-preemptible`: per-CPU counts
    /// with preemption left on inside windows.
    pub fn percpu_preemptible() -> Self {
        Self {
            preemptible_windows: true,
            ..Self::new(WindowPolicy::PerCpu)
        }
    }

    /// The configuration a variant name selects: `pgmap-task`,
    /// `pgmap-percpu` or the known-bad `pgmap-percpu-preemptible`.
    pub fn variant(name: &str) -> Option<Self> {
        match name {
            "pgmap-task" => Some(Self::new(WindowPolicy::Task)),
            "pgmap-percpu" => Some(Self::new(WindowPolicy::PerCpu)),
            "pgmap-percpu-preemptible" => Some(Self::percpu_preemptible()),
            _ => None,
        }
    }

    /// The name of this configuration as a policy column.
    pub fn policy_name(&self) -> &'static str {
        match (self.policy, self.preemptible_windows) {
            (WindowPolicy::Task, _) => "task",
            (WindowPolicy::PerCpu, false) => "percpu",
            (WindowPolicy::PerCpu, true) => "percpu-preemptible",
        }
    }
}

/// CPUs with key registers and preemption counts; tasks with their saved
/// register and count.
struct Model {
    current: Cell<usize>,
    registers: Vec<Cell<Pkrs>>,
    cpu_keys: Vec<CpuKeyState>,
    preempt: Vec<Cell<u32>>,
    tasks: Vec<TaskKeyState>,
    running: Vec<Cell<usize>>,
    honour_preempt_disable: bool,
    key_writes: Cell<u64>,
}

impl PkeyMachine for Model {
    fn task_keys(&self) -> &TaskKeyState {
        &self.tasks[self.running[self.current.get()].get()]
    }
    fn cpu_keys(&self) -> &CpuKeyState {
        &self.cpu_keys[self.current.get()]
    }
    fn read_key_register(&self) -> Pkrs {
        self.registers[self.current.get()].get()
    }
    fn write_key_register(&self, value: Pkrs) {
        self.key_writes.set(self.key_writes.get() + 1);
        self.registers[self.current.get()].set(value);
    }
    fn preempt_disable(&self) {
        if self.honour_preempt_disable {
            let count = &self.preempt[self.current.get()];
            count.set(count.get() + 1);
        }
    }
    fn preempt_enable(&self) {
        if self.honour_preempt_disable {
            let count = &self.preempt[self.current.get()];
            count.set(count.get().saturating_sub(1));
        }
    }
}

struct Checker {
    violations: Violations,
    step: u64,
}

impl Checker {
    fn fail(&mut self, invariant: NeighbourInvariant, cpu: usize, detail: String) {
        self.violations.push(NeighbourViolation {
            invariant,
            step: self.step,
            cpu,
            detail,
        });
    }

    /// A write to device memory, expected to succeed iff `inside`.
    fn access<M: PkeyMachine>(
        &mut self,
        windows: &PkeyWindows<M>,
        cpu: usize,
        inside: bool,
        what: &str,
    ) {
        match (windows.access(true), inside) {
            (Ok(()), true) | (Err(_), false) => {}
            (Err(fault), true) => self.fail(
                NeighbourInvariant::FaultInsideWindow,
                cpu,
                format!(
                    "{what}: write faulted inside a window (register {:#x})",
                    fault.register.0
                ),
            ),
            (Ok(()), false) => self.fail(
                NeighbourInvariant::AccessOutsideWindow,
                cpu,
                format!("{what}: write outside any window reached device memory"),
            ),
        }
    }

    fn agree<M: PkeyMachine>(&mut self, windows: &PkeyWindows<M>, cpu: usize, what: &str) {
        match windows.check() {
            Ok(()) => {}
            Err(WindowViolation::ClosedInsideWindow { depth, register }) => self.fail(
                NeighbourInvariant::FaultInsideWindow,
                cpu,
                format!(
                    "{what}: {depth} windows open, register {:#x} closed",
                    register.0
                ),
            ),
            Err(WindowViolation::OpenOutsideWindow { register }) => self.fail(
                NeighbourInvariant::AccessOutsideWindow,
                cpu,
                format!(
                    "{what}: no window open, register {:#x} grants the key",
                    register.0
                ),
            ),
        }
    }
}

/// Runs `pgmap` with decisions from `chooser`.
pub fn run_with(config: &PgmapConfig, chooser: &mut dyn Chooser) -> NeighbourRow {
    assert!(config.cpus > 0 && config.tasks >= config.cpus);
    let model = Model {
        current: Cell::new(0),
        registers: (0..config.cpus).map(|_| Cell::new(Pkrs::INIT)).collect(),
        cpu_keys: (0..config.cpus).map(|_| CpuKeyState::new()).collect(),
        preempt: (0..config.cpus).map(|_| Cell::new(0)).collect(),
        tasks: (0..config.tasks).map(|_| TaskKeyState::new()).collect(),
        running: (0..config.cpus).map(Cell::new).collect(),
        honour_preempt_disable: !config.preemptible_windows,
        key_writes: Cell::new(0),
    };
    let windows = PkeyWindows::new(&model, config.policy, PGMAP_KEY);
    // The windows each task believes it has open.
    let mut expected = vec![0u8; config.tasks];
    let mut last_cpu: Vec<usize> = (0..config.tasks).map(|t| t.min(config.cpus - 1)).collect();
    let mut checker = Checker {
        violations: Violations::default(),
        step: 0,
    };
    let (mut switches, mut migrations, mut deferred, mut exceptions) = (0u64, 0u64, 0u64, 0u64);

    for step in 0..config.steps {
        checker.step = step;
        let cpu = chooser.choose(config.cpus);
        model.current.set(cpu);
        let task = model.running[cpu].get();
        // Open, close, access, interrupt, preempt.
        match chooser.choose_weighted(&[25, 20, 25, 10, 20]) {
            0 => {
                if expected[task] < MAX_NESTING {
                    match windows.open_raw() {
                        Ok(()) => expected[task] += 1,
                        Err(e) => checker.fail(
                            NeighbourInvariant::OperationFailed,
                            cpu,
                            format!("t{task} open: {e:?}"),
                        ),
                    }
                }
            }
            1 => {
                if expected[task] > 0 {
                    expected[task] -= 1;
                    if let Err(e) = windows.close_raw() {
                        checker.fail(
                            NeighbourInvariant::KeyRestore,
                            cpu,
                            format!("t{task} close: {e:?} (the window's count is gone)"),
                        );
                    }
                }
            }
            2 => checker.access(&windows, cpu, expected[task] > 0, "task"),
            3 => {
                exceptions += 1;
                let before = model.read_key_register();
                let frame = windows.exception_entry();
                checker.access(&windows, cpu, false, "handler before its window");
                match windows.open_raw() {
                    Ok(()) => {
                        checker.access(&windows, cpu, true, "handler in its window");
                        if chooser.choose(2) == 0 {
                            exceptions += 1;
                            let inner_before = model.read_key_register();
                            let inner = windows.exception_entry();
                            checker.access(&windows, cpu, false, "nested exception");
                            windows.exception_exit(inner);
                            if model.read_key_register() != inner_before {
                                checker.fail(
                                    NeighbourInvariant::KeyRestore,
                                    cpu,
                                    "nested exception did not restore the register".into(),
                                );
                            }
                            checker.access(&windows, cpu, true, "handler after nested exception");
                        }
                        if let Err(e) = windows.close_raw() {
                            checker.fail(
                                NeighbourInvariant::KeyRestore,
                                cpu,
                                format!("handler close: {e:?}"),
                            );
                        }
                    }
                    Err(e) => checker.fail(
                        NeighbourInvariant::OperationFailed,
                        cpu,
                        format!("handler open: {e:?}"),
                    ),
                }
                windows.exception_exit(frame);
                let after = model.read_key_register();
                if after != before {
                    checker.fail(
                        NeighbourInvariant::KeyRestore,
                        cpu,
                        format!(
                            "exception return left {:#x}, interrupted {:#x}",
                            after.0, before.0
                        ),
                    );
                }
            }
            _ => {
                if model.preempt[cpu].get() > 0 {
                    deferred += 1;
                } else {
                    let idle: Vec<usize> = (0..config.tasks)
                        .filter(|&t| (0..config.cpus).all(|c| model.running[c].get() != t))
                        .collect();
                    if !idle.is_empty() {
                        let next = idle[chooser.choose(idle.len())];
                        model.running[cpu].set(next);
                        if let Err(e) =
                            windows.context_switch(&model.tasks[task], &model.tasks[next])
                        {
                            checker.fail(
                                NeighbourInvariant::PreemptedInWindow,
                                cpu,
                                format!(
                                    "t{task} preempted with {} windows open: {e:?}",
                                    expected[task]
                                ),
                            );
                        }
                        switches += 1;
                        if last_cpu[next] != cpu {
                            migrations += 1;
                        }
                        last_cpu[next] = cpu;
                    }
                }
            }
        }
        // The running context's windows and the register must agree, and
        // the design's count must be the running task's.
        let task = model.running[cpu].get();
        checker.agree(&windows, cpu, "after step");
        if windows.depth() != expected[task] {
            checker.fail(
                NeighbourInvariant::KeyRestore,
                cpu,
                format!(
                    "t{task} has {} windows open, the {} count says {}",
                    expected[task],
                    config.policy.name(),
                    windows.depth()
                ),
            );
        }
    }

    let stats = windows.stats();
    let get = WindowStats::get;
    let cycles = model.key_writes.get() * config.costs.key_write;
    let counts: BTreeMap<&'static str, u64> = [
        ("opens", get(&stats.opens)),
        ("closes", get(&stats.closes)),
        ("key_writes", model.key_writes.get()),
        ("switches", switches),
        ("migrations", migrations),
        ("exceptions", exceptions),
        ("preemptions_deferred", deferred),
    ]
    .into_iter()
    .collect();
    NeighbourRow {
        workload: "pgmap",
        policy: config.policy_name(),
        cpus: config.cpus,
        processes: config.tasks,
        counts,
        cycles,
        violations: checker.violations.count(),
        first_violations: checker.violations.first().to_vec(),
    }
}

/// Runs `pgmap` with the configuration's seed.
pub fn run(config: &PgmapConfig) -> NeighbourRow {
    run_with(config, &mut Seeded::new(config.seed))
}
