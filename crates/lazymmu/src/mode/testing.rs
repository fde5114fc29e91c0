//! A self-contained environment and arch for unit tests, examples and the
//! trace replayer: plain cells, one task, one CPU.

use core::cell::Cell;

use super::percpu::PerCpuEnvironment;
use super::{ArchHooks, Environment, Hook, LazyState};
use crate::cpu::{Cpu, CpuId};

/// One task on one CPU. Interrupt context and preemption are plain flags
/// the test sets.
#[derive(Debug, Default)]
pub struct TestEnv {
    state: Cell<LazyState>,
    cpu_state: Cell<LazyState>,
    irq_depth: Cell<u32>,
    preempt_count: Cell<u32>,
    sleeps_in_atomic: Cell<u32>,
}

impl TestEnv {
    /// Enters interrupt context (nests).
    pub fn irq_enter(&self) {
        self.irq_depth.set(self.irq_depth.get() + 1);
    }

    /// Leaves interrupt context. Returns false (and does nothing) when not
    /// in one.
    pub fn irq_exit(&self) -> bool {
        match self.irq_depth.get().checked_sub(1) {
            Some(depth) => {
                self.irq_depth.set(depth);
                true
            }
            None => false,
        }
    }

    /// The current preemption-disable depth.
    pub fn preempt_count(&self) -> u32 {
        self.preempt_count.get()
    }

    /// How many times [`Environment::might_sleep`] was called with
    /// preemption disabled.
    pub fn sleeps_in_atomic(&self) -> u32 {
        self.sleeps_in_atomic.get()
    }
}

impl Cpu for TestEnv {
    fn cpu_id(&self) -> CpuId {
        CpuId(0)
    }
    fn in_interrupt(&self) -> bool {
        self.irq_depth.get() > 0
    }
    fn preempt_disable(&self) {
        self.preempt_count.set(self.preempt_count.get() + 1);
    }
    fn preempt_enable(&self) {
        let count = self.preempt_count.get();
        assert!(count > 0, "preempt_enable without preempt_disable");
        self.preempt_count.set(count - 1);
    }
}

impl Environment for TestEnv {
    fn lazy_state(&self) -> LazyState {
        self.state.get()
    }
    fn set_lazy_state(&self, state: LazyState) {
        self.state.set(state);
    }
    fn might_sleep(&self) {
        if self.preempt_count.get() > 0 {
            self.sleeps_in_atomic.set(self.sleeps_in_atomic.get() + 1);
        }
    }
}

impl PerCpuEnvironment for TestEnv {
    fn cpu_lazy_state(&self) -> LazyState {
        self.cpu_state.get()
    }
    fn set_cpu_lazy_state(&self, state: LazyState) {
        self.cpu_state.set(state);
    }
}

/// An arch that records its hooks: counts, the last one, and whether the
/// enter/leave alternation was ever broken (two enters in a row, a leave
/// or flush outside the mode).
#[derive(Debug, Default)]
pub struct TestArch {
    entered: Cell<bool>,
    enters: Cell<u32>,
    leaves: Cell<u32>,
    flushes: Cell<u32>,
    last: Cell<Option<Hook>>,
    broken: Cell<u32>,
}

impl TestArch {
    /// Whether the arch is between an `enter` and a `leave`.
    pub fn entered(&self) -> bool {
        self.entered.get()
    }
    /// Number of `enter` calls.
    pub fn enters(&self) -> u32 {
        self.enters.get()
    }
    /// Number of `leave` calls.
    pub fn leaves(&self) -> u32 {
        self.leaves.get()
    }
    /// Number of `flush` calls.
    pub fn flushes(&self) -> u32 {
        self.flushes.get()
    }
    /// The last hook called.
    pub fn last(&self) -> Option<Hook> {
        self.last.get()
    }
    /// How many hooks broke the alternation: `enter` while entered, `leave`
    /// or `flush` while not.
    pub fn broken(&self) -> u32 {
        self.broken.get()
    }

    fn record(&self, hook: Hook, valid: bool) {
        self.last.set(Some(hook));
        if !valid {
            self.broken.set(self.broken.get() + 1);
        }
    }
}

impl ArchHooks for TestArch {
    fn enter(&self) {
        self.enters.set(self.enters.get() + 1);
        self.record(Hook::Enter, !self.entered.get());
        self.entered.set(true);
    }
    fn leave(&self) {
        self.leaves.set(self.leaves.get() + 1);
        self.record(Hook::Leave, self.entered.get());
        self.entered.set(false);
    }
    fn flush(&self) {
        self.flushes.set(self.flushes.get() + 1);
        self.record(Hook::Flush, self.entered.get());
    }
}
