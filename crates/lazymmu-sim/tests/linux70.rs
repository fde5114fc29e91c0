//! The Linux 7.0 Xen PV bug (DESIGN.md §2): with the counter updated and
//! the arch hook called with preemption allowed in between, a task
//! preempted right after `enable_count` went 0→1 is re-entered by the
//! context-switch hook and then entered a second time by the interrupted
//! enable. The simulator shows the bug with that naive ordering and its
//! absence with the library's counter design.

use std::rc::Rc;

use lazymmu::addr::SpaceId;
use lazymmu::backend::xen_pv::XenPv;
use lazymmu::backend::ContextSwitch;
use lazymmu::mode::counters::Counters;
use lazymmu::mode::{ArchHooks, Environment, LazyMode, LazyState, MisusePolicy};
use lazymmu_sim::choice::{Choice, ChoicePoint, Chooser, Site};
use lazymmu_sim::cost::Platform;
use lazymmu_sim::env::SimEnv;
use lazymmu_sim::invariant::Invariant;
use lazymmu_sim::machine::{Kernel, Machine, MachineConfig};
use lazymmu_sim::observed::Observed;
use lazymmu_sim::platform::SimCpu;
use lazymmu_sim::run::hardware;
use lazymmu_sim::scenario::BackendKind;
use lazymmu_sim::world::Shared;

type Xen = Observed<XenPv<SimCpu>>;

struct SwitchHooks(Rc<Xen>);

impl Kernel for SwitchHooks {
    fn switch_out(&self, prev: LazyState) {
        self.0.switch_out(prev)
    }
    fn switch_in(&self, next: LazyState) {
        self.0.switch_in(next)
    }
    fn interrupt(&self) {}
    fn run_unit(&self, _task: usize) -> bool {
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
    fn choose(&mut self, point: &ChoicePoint, options: &[Choice]) -> usize {
        if point.site == Site::Environment("set_lazy_state") {
            self.stored = true;
        }
        if self.stored && !self.done {
            if let Some(i) = options
                .iter()
                .position(|c| matches!(c, Choice::Preempt { .. }))
            {
                self.done = true;
                return i;
            }
        }
        0
    }
}

fn setup() -> (Rc<Machine>, Rc<Xen>) {
    let mut cfg = MachineConfig::new(1, Platform::XenPv);
    cfg.hardware = hardware(BackendKind::XenPv);
    cfg.frames = 8;
    let m = Rc::new(Machine::new(cfg));
    for space in [1, 2] {
        let root = m.memory().allocate(SpaceId(space), 0).unwrap();
        m.add_task(SpaceId(space), root, 0);
    }
    let xen = Rc::new(Observed::new(XenPv::new(SimCpu::new(m.clone())), m.clone()));
    m.set_kernel(Rc::new(SwitchHooks(xen.clone())));
    m.set_chooser(Box::<PreemptAfterStore>::default());
    (m, xen)
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
    let (m, xen) = setup();
    naive_enable(&SimEnv::new(m.clone()), &*xen);
    assert!(
        m.preemptions() > 0,
        "the task was preempted between counter and hook"
    );
    let v = m.violations();
    assert!(!v.is_empty());
    assert_eq!(v[0].invariant, Invariant::EnterLeave, "{}", v[0]);
    m.clear_kernel();
}

#[test]
fn the_counter_design_is_atomic_with_respect_to_switches() {
    let (m, xen) = setup();
    let mode = Counters::new(
        SimEnv::new(m.clone()),
        Shared(xen.clone()),
        MisusePolicy::Count,
    );
    {
        let _section = mode.section();
        assert!(mode.is_active());
    }
    // The switch could only happen after the hook, at preempt_enable: the
    // hooks saw an entered CPU, left it and re-entered it, once each.
    assert_eq!(m.preemptions(), 1);
    assert_eq!(
        m.violation_count(),
        0,
        "{:?}",
        m.violations().first().map(|v| v.to_string())
    );
    m.clear_kernel();
}
