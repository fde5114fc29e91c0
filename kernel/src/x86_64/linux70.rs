//! **Known bad, for a test.** The counter design with Linux 7.0's ordering:
//! the task's counter is stored and the arch hook is called afterwards,
//! with preemption possible in between (include/linux/pgtable.h,
//! `lazy_mmu_mode_enable()` before the fix that brackets both with
//! `preempt_disable()`). On Xen PV that double-entered: a task preempted
//! right after `enable_count` went 0→1 was entered by the context-switch
//! hook (its state said it was in a section) and then entered again by
//! the interrupted enable.
//!
//! The rules are the library's ([`counters::rule`]); only the ordering
//! differs from [`lazymmu::mode::counters::Counters`], whose transition
//! keeps preemption off from the store to the end of the hook.

use lazymmu::mode::counters;
use lazymmu::mode::{ArchHooks, Environment, Hook, LazyMode, LazyState, Misuse, Op, Step};

/// The Linux 7.0 ordering over an environment and an arch.
#[derive(Debug)]
pub struct Linux70<E, A> {
    env: E,
    arch: A,
}

impl<E: Environment, A: ArchHooks> Linux70<E, A> {
    /// The mode over `env` and `arch`.
    pub const fn new(env: E, arch: A) -> Self {
        Self { env, arch }
    }

    fn transition(&self, op: Op) -> Result<Step<()>, Misuse> {
        if self.env.in_interrupt() {
            return Ok(Step::NONE);
        }
        match counters::rule(op, self.env.lazy_state())? {
            None => Ok(Step::NONE),
            Some((next, hook)) => {
                // The store, then — preemptible — the hook.
                self.env.set_lazy_state(next);
                match hook {
                    Some(Hook::Enter) => self.arch.enter(),
                    Some(Hook::Leave) => self.arch.leave(),
                    Some(Hook::Flush) => self.arch.flush(),
                    None => {}
                }
                Ok(Step { token: (), hook })
            }
        }
    }
}

impl<E: Environment, A: ArchHooks> LazyMode for Linux70<E, A> {
    type Token = ();

    fn enable(&self) -> Result<Step<()>, Misuse> {
        self.transition(Op::Enable)
    }

    fn disable(&self, _token: ()) -> Result<Step<()>, Misuse> {
        self.transition(Op::Disable)
    }

    fn pause_raw(&self) -> Result<Step<()>, Misuse> {
        self.transition(Op::Pause)
    }

    fn resume(&self, _token: ()) -> Result<Step<()>, Misuse> {
        self.transition(Op::Resume)
    }

    fn is_active(&self) -> bool {
        !self.env.in_interrupt() && self.env.lazy_state().is_active()
    }

    fn state(&self) -> LazyState {
        self.env.lazy_state()
    }

    fn bytes_per_task(&self) -> usize {
        core::mem::size_of::<LazyState>()
    }
}
