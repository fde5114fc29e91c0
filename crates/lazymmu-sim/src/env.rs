//! The library's [`Environment`] over the machine: the current task's lazy
//! state, interrupt context and preemption of the running CPU. Every call
//! is a choice point.

use std::rc::Rc;

use lazymmu::mode::percpu::PerCpuEnvironment;
use lazymmu::mode::{Environment, LazyState};

use crate::choice::Site;
use crate::invariant::Invariant;
use crate::machine::Machine;

/// The environment of the task running on the machine's current CPU.
#[derive(Clone, Debug)]
pub struct SimEnv {
    machine: Rc<Machine>,
}

impl SimEnv {
    /// The environment over `machine`.
    pub fn new(machine: Rc<Machine>) -> Self {
        Self { machine }
    }

    /// The machine.
    pub fn machine(&self) -> &Machine {
        &self.machine
    }
}

impl Environment for SimEnv {
    #[inline]
    fn lazy_state(&self) -> LazyState {
        let s = self.machine.lazy_state();
        self.machine.choice_point(Site::Environment("lazy_state"));
        s
    }

    #[inline]
    fn set_lazy_state(&self, state: LazyState) {
        self.machine.set_lazy_state(state);
        self.machine
            .choice_point(Site::Environment("set_lazy_state"));
    }

    #[inline]
    fn in_interrupt(&self) -> bool {
        self.machine.in_interrupt()
    }

    #[inline]
    fn preempt_disable(&self) {
        self.machine.preempt_disable();
    }

    #[inline]
    fn preempt_enable(&self) {
        self.machine.preempt_enable();
        self.machine
            .choice_point(Site::Environment("preempt_enable"));
    }

    fn might_sleep(&self) {
        let m = &self.machine;
        if m.preempt_count() > 0 || m.in_interrupt() {
            m.violation(
                Invariant::SleepInSection,
                format!(
                    "sleeping function called from invalid context (preempt count {})",
                    m.preempt_count()
                ),
            );
        }
    }
}

impl PerCpuEnvironment for SimEnv {
    #[inline]
    fn cpu_lazy_state(&self) -> LazyState {
        let s = self.machine.cpu_lazy_state();
        self.machine
            .choice_point(Site::Environment("cpu_lazy_state"));
        s
    }

    #[inline]
    fn set_cpu_lazy_state(&self, state: LazyState) {
        self.machine.set_cpu_lazy_state(state);
        self.machine
            .choice_point(Site::Environment("set_cpu_lazy_state"));
    }
}
