//! The library's [`Environment`] for this kernel, and its one task: the
//! kernel runs a single task on a single CPU, whose lazy state (the counter
//! design's two bytes) and `TIF_LAZY_MMU_PENDING` flag live here. Interrupt
//! context is the GIC handler's ([`crate::irq`]); there is no preemption,
//! so the preemption count only checks that every disable is undone.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};

use lazymmu::cpu::{Cpu, CpuId};
use lazymmu::mode::{Environment, LazyState};

use crate::irq;

/// The task's state.
struct Task {
    enable_count: AtomicU8,
    pause_count: AtomicU8,
    barriers_pending: AtomicBool,
}

static TASK: Task = Task {
    enable_count: AtomicU8::new(0),
    pause_count: AtomicU8::new(0),
    barriers_pending: AtomicBool::new(false),
};

static PREEMPT_COUNT: AtomicU32 = AtomicU32::new(0);

/// The running task's `TIF_LAZY_MMU_PENDING`.
pub fn barriers_pending() -> bool {
    TASK.barriers_pending.load(Ordering::Relaxed)
}

/// Sets or clears the running task's `TIF_LAZY_MMU_PENDING`.
pub fn set_barriers_pending(pending: bool) {
    TASK.barriers_pending.store(pending, Ordering::Relaxed);
}

/// The running task on the one CPU.
#[derive(Debug, Default)]
pub struct KernelEnv;

impl KernelEnv {
    /// The preemption-disable depth (0 outside the mode's transitions).
    pub fn preempt_count(&self) -> u32 {
        PREEMPT_COUNT.load(Ordering::Relaxed)
    }
}

/// The one CPU, CPU 0.
impl Cpu for KernelEnv {
    fn cpu_id(&self) -> CpuId {
        CpuId::new(0)
    }
    fn in_interrupt(&self) -> bool {
        irq::in_interrupt()
    }
    fn preempt_disable(&self) {
        PREEMPT_COUNT.fetch_add(1, Ordering::Relaxed);
    }
    fn preempt_enable(&self) {
        PREEMPT_COUNT.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Environment for KernelEnv {
    fn lazy_state(&self) -> LazyState {
        LazyState {
            enable_count: TASK.enable_count.load(Ordering::Relaxed),
            pause_count: TASK.pause_count.load(Ordering::Relaxed),
        }
    }
    fn set_lazy_state(&self, state: LazyState) {
        TASK.enable_count
            .store(state.enable_count, Ordering::Relaxed);
        TASK.pause_count.store(state.pause_count, Ordering::Relaxed);
    }
}
