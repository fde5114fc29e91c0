//! The library's [`Environment`] for this kernel: one CPU, one task, no
//! preemption. The lazy state lives in the (only) task; interrupt context is
//! what the interrupt dispatcher says it is.

use lazymmu::mode::{Environment, LazyState};

use crate::interrupts;
use crate::local::Local;

/// The kernel's only task and CPU.
#[derive(Debug, Default)]
pub struct KernelEnv;

static TASK_LAZY_STATE: Local<LazyState> = Local::new(LazyState::IDLE);
static PREEMPT_COUNT: Local<u32> = Local::new(0);

impl KernelEnv {
    /// The preemption-disable depth (0 outside the mode's transitions).
    pub fn preempt_count(&self) -> u32 {
        PREEMPT_COUNT.get()
    }
}

impl Environment for KernelEnv {
    fn lazy_state(&self) -> LazyState {
        TASK_LAZY_STATE.get()
    }
    fn set_lazy_state(&self, state: LazyState) {
        TASK_LAZY_STATE.set(state);
    }
    fn in_interrupt(&self) -> bool {
        interrupts::in_interrupt()
    }
    // There is no scheduler, so nothing can preempt; the count only checks
    // that the mode pairs its calls.
    fn preempt_disable(&self) {
        PREEMPT_COUNT.set(PREEMPT_COUNT.get() + 1);
    }
    fn preempt_enable(&self) {
        PREEMPT_COUNT.set(PREEMPT_COUNT.get() - 1);
    }
}
