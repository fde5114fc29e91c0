//! The Linux 7.0 Xen PV bug (docs/design.md §2): with the counter updated and
//! the arch hook called with preemption allowed in between, a task
//! preempted right after `enable_count` went 0→1 is re-entered by the
//! context-switch hook and then entered a second time by the interrupted
//! enable. The simulator shows the bug with that naive ordering and its
//! absence with the library's counter design.

use std::cell::RefCell;
use std::rc::Rc;

use lazymmu::addr::SpaceId;
use lazymmu::backend::xen_pv::XenPv;
use lazymmu::backend::ContextSwitch;
use lazymmu::cpu::CpuId;
use lazymmu::mode::counters::Counters;
use lazymmu::mode::{ArchHooks, Environment, LazyMode, LazyState, MisusePolicy};
use lazymmu_sim::choice::{Choice, ChoicePoint, Chooser, Site};
use lazymmu_sim::cost::Platform;
use lazymmu_sim::invariant::Invariant;
use lazymmu_sim::machine::{Kernel, Machine, MachineConfig, SimCpu, SimEnv};
use lazymmu_sim::observed::Observed;
use lazymmu_sim::run::hardware;
use lazymmu_sim::scenario::BackendKind;
use lazymmu_sim::world::Shared;

type Xen = Observed<XenPv<SimCpu>>;

/// The backend's context-switch hooks, and task 0's one unit of work
/// (run on its coroutine, where the chooser can preempt it); the other
/// task has an empty unit.
struct SwitchHooks {
    machine: Rc<Machine>,
    xen: Rc<Xen>,
    unit: RefCell<Option<Box<dyn FnOnce()>>>,
    first: usize,
}

impl Kernel for SwitchHooks {
    fn switch_out(&self, _cpu: CpuId, prev: usize) {
        self.xen.switch_out(self.machine.task(prev).lazy)
    }
    fn switch_in(&self, _cpu: CpuId, next: usize) {
        self.xen.switch_in(self.machine.task(next).lazy)
    }
    fn run_unit(&self, task: usize) -> bool {
        if task == self.first {
            if let Some(unit) = self.unit.borrow_mut().take() {
                unit();
            }
        }
        false
    }
}

/// Preempts (to the other task) at the first preemptible point after the
/// lazy state is stored: right there with the naive ordering, at the
/// `preempt_enable` after the hook with the counter design.
#[derive(Default)]
struct PreemptAfterStore {
    stored: bool,
    done: bool,
}

impl Chooser for PreemptAfterStore {
    fn choose(&mut self, point: &ChoicePoint, options: &[Choice]) -> Option<usize> {
        if point.site == Site::Environment("set_lazy_state") {
            self.stored = true;
        }
        if self.stored && !self.done {
            if let Some(i) = options
                .iter()
                .position(|c| matches!(c, Choice::Preempt { .. }))
            {
                self.done = true;
                return Some(i);
            }
        }
        Some(0)
    }
}

/// One CPU, task 0 (space 1) current on it and task 1 (space 2) ready;
/// runs `unit` as task 0's work under [`PreemptAfterStore`].
fn run(unit: impl FnOnce(&Rc<Machine>, &Rc<Xen>) + 'static) -> Rc<Machine> {
    let mut cfg = MachineConfig::new(1, Platform::XenPv);
    cfg.hardware = hardware(BackendKind::XenPv);
    cfg.frames = 8;
    let m = Rc::new(Machine::new(cfg));
    let mut tasks = Vec::new();
    for space in [1, 2] {
        let root = m.memory().allocate_table(SpaceId(space), 0).unwrap();
        m.set_space_root(SpaceId(space), root);
        tasks.push(m.add_task(&format!("t{space}"), SpaceId(space), CpuId(0), true));
    }
    m.switch(CpuId(0), tasks[0]);
    let xen = Rc::new(Observed::new(XenPv::new(SimCpu::new(m.clone())), m.clone()));
    let (machine, backend) = (m.clone(), xen.clone());
    m.set_kernel(Rc::new(SwitchHooks {
        machine: m.clone(),
        xen,
        unit: RefCell::new(Some(Box::new(move || unit(&machine, &backend)))),
        first: tasks[0],
    }));
    m.set_chooser(Box::<PreemptAfterStore>::default());
    m.run();
    m.shut_down();
    m
}

/// Linux 7.0's `lazy_mmu_mode_enable()`: counter first, hook after, no
/// preemption control in between.
fn naive_enable(env: &SimEnv, arch: &impl ArchHooks) {
    let s = env.lazy_state();
    env.set_lazy_state(LazyState {
        enable_count: s.enable_count + 1,
        ..s
    });
    if s.enable_count == 0 {
        arch.enter();
    }
}

#[test]
fn the_naive_ordering_double_enters_on_xen() {
    let m = run(|m, xen| naive_enable(&SimEnv::new(m.clone()), &**xen));
    assert!(
        m.preemptions() > 0,
        "the task was preempted between counter and hook"
    );
    let v = m.violations();
    assert!(!v.is_empty());
    assert_eq!(v[0].invariant, Invariant::EnterLeave, "{}", v[0]);
}

#[test]
fn the_counter_design_is_atomic_with_respect_to_switches() {
    let m = run(|m, xen| {
        let mode = Counters::new(
            SimEnv::new(m.clone()),
            Shared(xen.clone()),
            MisusePolicy::Count,
        );
        let _section = mode.section();
        assert!(mode.is_active());
    });
    // The switch could only happen after the hook, at preempt_enable: the
    // hooks saw an entered CPU, left it and re-entered it, once each.
    assert_eq!(m.preemptions(), 1);
    assert_eq!(
        m.violation_count(),
        0,
        "{:?}",
        m.violations().first().map(|v| v.to_string())
    );
}
