//! The library's [`Environment`] for this kernel: the lazy state lives in
//! the running task, interrupt context and preemption are the executing
//! CPU's.

use lazymmu::mode::{Environment, LazyState};

use crate::{interrupts, percpu, sched};

/// The running task on the executing CPU.
#[derive(Debug, Default)]
pub struct KernelEnv;

impl KernelEnv {
    /// The executing CPU's preemption-disable depth (0 outside the mode's
    /// transitions).
    pub fn preempt_count(&self) -> u32 {
        percpu::preempt_count()
    }
}

impl Environment for KernelEnv {
    fn lazy_state(&self) -> LazyState {
        sched::current().lazy_state()
    }
    fn set_lazy_state(&self, state: LazyState) {
        sched::current().set_lazy_state(state);
    }
    fn in_interrupt(&self) -> bool {
        interrupts::in_interrupt()
    }
    fn preempt_disable(&self) {
        percpu::preempt_disable();
    }
    fn preempt_enable(&self) {
        percpu::preempt_enable();
    }
    /// Linux's `might_sleep()` check: sleeping with preemption off or in an
    /// interrupt ("sleeping function called from invalid context") is
    /// counted against the running task.
    fn might_sleep(&self) {
        if percpu::preempt_count() != 0 || interrupts::in_interrupt() {
            sched::current()
                .atomic_sleeps
                .fetch_add(1, core::sync::atomic::Ordering::Relaxed);
        }
    }
}
