//! `pgmap`: tasks opening nested protection-key windows over device memory
//! while the scheduler preempts and migrates them and interrupts arrive,
//! under one window policy (`task` or `percpu`), on the machine.
//!
//! Each step one CPU's task opens or closes a window, writes device memory,
//! takes an interrupt whose handler uses its own window (sometimes with a
//! nested exception inside), or is preempted — possibly resuming later on
//! another CPU. The key register is the machine CPU's (written through the
//! library's `KeyRegister`, charged from the one cost table), the context
//! switches the machine's. Checked after every step: a device-memory
//! access inside a window succeeds and one outside faults, the register
//! agrees with the windows the running context has open, the register is
//! restored exactly after every exception, and a per-CPU window is never
//! preempted.
//!
//! The known-bad variant `pgmap-percpu-preemptible`
//! ([`PgmapConfig::percpu_preemptible`]) is the per-CPU policy on a machine
//! whose preemption control does nothing: the checks must catch it.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

use lazymmu::addr::SpaceId;
use lazymmu::cpu::CpuId;
use lazymmu::mm::pkey_window::{PkeyWindows, Pkrs, WindowPolicy, WindowStats, WindowViolation};

use super::{machine_counts, seeded, window_name, NeighbourRow};
use crate::choice::{Chooser, Site};
use crate::cost::{Cost, Platform, Primitive};
use crate::invariant::Invariant;
use crate::machine::{HardwareModel, Kernel, Machine, MachineConfig, Offers, SimCpu};

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
    /// Cost overrides.
    pub costs: Vec<(Cost, u64)>,
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
            costs: Vec::new(),
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
            (WindowPolicy::PerCpu, true) => "percpu-preemptible",
            (policy, _) => window_name(policy),
        }
    }
}

/// The kernel: context switches save and load the register through the
/// windows; the interrupt handler opens a window of its own.
struct WindowKernel {
    machine: Rc<Machine>,
    windows: PkeyWindows<SimCpu>,
    /// The windows each task believes it has open.
    expected: RefCell<Vec<u8>>,
    exceptions: Cell<u64>,
    /// The task a switch in progress takes off its CPU.
    outgoing: Cell<usize>,
}

impl WindowKernel {
    fn fail(&self, invariant: Invariant, detail: String) {
        self.machine.violation(invariant, detail);
    }

    fn register(&self) -> Pkrs {
        Pkrs(self.machine.key() as u32)
    }

    /// A write to device memory, expected to succeed iff `inside`.
    fn access(&self, inside: bool, what: &str) {
        let cpu = self.machine.cpu();
        match (self.windows.access(true), inside) {
            (Ok(()), true) | (Err(_), false) => {}
            (Err(fault), true) => self.fail(
                Invariant::KeyFault,
                format!(
                    "{what} on {cpu}: write faulted inside a window (register {:#x})",
                    fault.register.0
                ),
            ),
            (Ok(()), false) => self.fail(
                Invariant::KeyFault,
                format!("{what} on {cpu}: write outside any window reached device memory"),
            ),
        }
    }

    fn agree(&self, what: &str) {
        match self.windows.check() {
            Ok(()) => {}
            Err(WindowViolation::ClosedInsideWindow { depth, register }) => self.fail(
                Invariant::KeyFault,
                format!(
                    "{what}: {depth} windows open, register {:#x} closed",
                    register.0
                ),
            ),
            Err(WindowViolation::OpenOutsideWindow { register }) => self.fail(
                Invariant::KeyFault,
                format!(
                    "{what}: no window open, register {:#x} grants the key",
                    register.0
                ),
            ),
        }
    }
}

impl Kernel for WindowKernel {
    fn switch_out(&self, _cpu: CpuId, prev: usize) {
        self.outgoing.set(prev);
    }

    /// The register is switched in `__switch_to()`, the architecture's part
    /// of the switch (PKRS travels with the task), not with the address
    /// space.
    fn switch_in(&self, cpu: CpuId, next: usize) {
        let prev = self.outgoing.get();
        let m = &self.machine;
        if let Err(e) = self
            .windows
            .context_switch(m.task_key_state(prev), m.task_key_state(next))
        {
            self.fail(
                Invariant::PreemptedInWindow,
                format!(
                    "t{prev} preempted on {cpu} with {} windows open: {e:?}",
                    self.expected.borrow()[prev]
                ),
            );
        }
    }

    /// A handler that opens its own window, sometimes with a nested
    /// exception inside, between exception entry and return.
    fn interrupt(&self) {
        let m = &self.machine;
        self.exceptions.set(self.exceptions.get() + 1);
        let before = self.register();
        let frame = self.windows.exception_entry();
        self.access(false, "handler before its window");
        match self.windows.open_raw() {
            Ok(()) => {
                self.access(true, "handler in its window");
                if m.pick_one_of(Site::Decision("nested exception"), 2) == 0 {
                    self.exceptions.set(self.exceptions.get() + 1);
                    let inner_before = self.register();
                    let inner = self.windows.exception_entry();
                    self.access(false, "nested exception");
                    self.windows.exception_exit(inner);
                    if self.register() != inner_before {
                        self.fail(
                            Invariant::KeyRestore,
                            "nested exception did not restore the register".into(),
                        );
                    }
                    self.access(true, "handler after nested exception");
                }
                if let Err(e) = self.windows.close_raw() {
                    self.fail(Invariant::KeyRestore, format!("handler close: {e:?}"));
                }
            }
            Err(e) => self.fail(Invariant::OperationFailed, format!("handler open: {e:?}")),
        }
        self.windows.exception_exit(frame);
        let after = self.register();
        if after != before {
            self.fail(
                Invariant::KeyRestore,
                format!(
                    "exception return left {:#x}, interrupted {:#x}",
                    after.0, before.0
                ),
            );
        }
    }

    fn run_unit(&self, _task: usize) -> bool {
        false
    }
}

/// Runs `pgmap` with decisions from `chooser`.
///
/// # Panics
/// Without CPUs or with fewer tasks than CPUs.
pub fn run_with(config: &PgmapConfig, chooser: &mut dyn Chooser) -> NeighbourRow {
    assert!(config.cpus > 0 && config.tasks >= config.cpus);
    let mut mc = MachineConfig::new(config.cpus, Platform::X86);
    mc.hardware = HardwareModel {
        default_key: u64::from(Pkrs::INIT.0),
        ..HardwareModel::PLAIN
    };
    mc.spaces = 1;
    mc.tasks = config.tasks;
    mc.frames = 8;
    mc.offers = Offers::NONE;
    mc.faults.preemptible_windows = config.preemptible_windows;
    for &(row, cycles) in &config.costs {
        mc.cost.set(row, cycles);
    }
    let machine = Rc::new(Machine::new(mc));
    let kernel = Rc::new(WindowKernel {
        machine: machine.clone(),
        windows: PkeyWindows::new(SimCpu::new(machine.clone()), config.policy, PGMAP_KEY),
        expected: RefCell::new(vec![0; machine.cpu_count() + config.tasks]),
        exceptions: Cell::new(0),
        outgoing: Cell::new(0),
    });
    machine.set_kernel(kernel.clone());
    let first = machine.task_count();
    for t in 0..config.tasks {
        let cpu = CpuId::new(t.min(config.cpus - 1));
        let id = machine.add_task(&format!("t{t}"), SpaceId::KERNEL, cpu, false);
        if t < config.cpus {
            machine.switch(cpu, id);
        }
    }
    machine.clear_counts();
    let tasks: Vec<usize> = (first..first + config.tasks).collect();
    let mut last_cpu: Vec<CpuId> = (0..machine.task_count())
        .map(|t| machine.task(t).cpu)
        .collect();
    let (mut switches, mut migrations, mut deferred) = (0u64, 0u64, 0u64);
    let windows = &kernel.windows;
    crate::run::lend_to(&machine, chooser, || {
        for _ in 0..config.steps {
            if machine.stopping() {
                break;
            }
            let cpu = CpuId::new(machine.pick_one_of(Site::Decision("cpu"), config.cpus));
            machine.set_cpu(cpu);
            let task = machine.task_on(cpu);
            // Open, close, access, interrupt, preempt.
            match machine.pick(Site::Decision("action"), &[25, 20, 25, 10, 20]) {
                0 => {
                    if kernel.expected.borrow()[task] < MAX_NESTING {
                        match windows.open_raw() {
                            Ok(()) => kernel.expected.borrow_mut()[task] += 1,
                            Err(e) => kernel
                                .fail(Invariant::OperationFailed, format!("t{task} open: {e:?}")),
                        }
                    }
                }
                1 => {
                    if kernel.expected.borrow()[task] > 0 {
                        kernel.expected.borrow_mut()[task] -= 1;
                        if let Err(e) = windows.close_raw() {
                            kernel.fail(
                                Invariant::KeyRestore,
                                format!("t{task} close: {e:?} (the window's count is gone)"),
                            );
                        }
                    }
                }
                2 => kernel.access(kernel.expected.borrow()[task] > 0, "task"),
                3 => machine.interrupt(),
                _ => {
                    if machine.preempt_count_of(cpu) > 0 {
                        deferred += 1;
                    } else {
                        let idle: Vec<usize> = tasks
                            .iter()
                            .copied()
                            .filter(|&t| {
                                (0..config.cpus).all(|c| machine.task_on(CpuId::new(c)) != t)
                            })
                            .collect();
                        if !idle.is_empty() {
                            let next =
                                idle[machine.pick_one_of(Site::Decision("task"), idle.len())];
                            // A preemption: the scheduler's decision, so
                            // the switch itself is not the policy's work;
                            // the register's save and load are.
                            machine.schedule(cpu, next);
                            switches += 1;
                            if last_cpu[next] != cpu {
                                migrations += 1;
                            }
                            last_cpu[next] = cpu;
                        }
                    }
                }
            }
            // The running context's windows and the register must agree,
            // and the design's count must be the running task's.
            machine.set_cpu(cpu);
            let task = machine.task_on(cpu);
            kernel.agree(&format!("after step on {cpu}"));
            let expected = kernel.expected.borrow()[task];
            if windows.depth() != expected {
                kernel.fail(
                    Invariant::KeyRestore,
                    format!(
                        "t{task} has {expected} windows open, the {} count says {}",
                        window_name(config.policy),
                        windows.depth()
                    ),
                );
            }
        }
    });

    let stats = windows.stats();
    let get = WindowStats::get;
    let mut counts = BTreeMap::new();
    machine_counts(&machine, &mut counts);
    counts.extend([
        ("opens", get(&stats.opens)),
        ("closes", get(&stats.closes)),
        ("key_writes", machine.counts().get(Primitive::KeyWrite)),
        ("switches", switches),
        ("migrations", migrations),
        ("exceptions", kernel.exceptions.get()),
        ("preemptions_deferred", deferred),
    ]);
    let row = NeighbourRow {
        workload: "pgmap",
        machine: None,
        policy: config.policy_name(),
        cpus: config.cpus,
        processes: config.tasks,
        counts,
        cycles: machine.cycles(),
        violations: machine.violation_count(),
        first_violations: machine.violations(),
    };
    machine.shut_down();
    row
}

/// Runs `pgmap` with the configuration's seed.
pub fn run(config: &PgmapConfig) -> NeighbourRow {
    run_with(config, &mut seeded(config.seed))
}
