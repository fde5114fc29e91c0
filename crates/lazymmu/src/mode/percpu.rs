//! The per-CPU design: the state lives with the CPU, so a section runs with
//! preemption off and cannot sleep.
//!
//! This is how powerpc, sparc64 and Xen PV kept lazy MMU state before it
//! moved into the task (`ppc64_tlb_batch`, `tlb_batch` and `xen_lazy_mode`
//! are per-CPU variables in `arch/powerpc/include/asm/book3s/64/tlbflush-hash.h`,
//! `arch/sparc/include/asm/tlbflush_64.h` and `arch/x86/xen/enlighten_pv.c`). The
//! counters and their rules are those of [`super::counters`]; what changes is
//! where they live and what that forces:
//!
//! - **bytes per task**: none; two bytes per CPU.
//! - **preemption**: the state must not follow another task onto this CPU or
//!   stay behind when this task migrates, so preemption is disabled from the
//!   moment the CPU's state leaves idle (the outermost enable, or a pause
//!   outside any section) until it returns to idle (the outermost disable,
//!   or the matching resume).
//! - **sleeping**: a section therefore cannot sleep. [`PerCpu::might_sleep`]
//!   reports a sleep inside a section as [`Misuse::Forbidden`] through the
//!   embedder's policy, and also calls [`Environment::might_sleep`], whose
//!   atomic-context check (Linux's "sleeping function called from invalid
//!   context") sees preemption disabled and reports it the environment's way.

use super::{
    counters, ArchHooks, Environment, Hook, LazyMode, LazyState, Misuse, MisusePolicy,
    MisuseReporter, Op, Step,
};

/// An environment that also gives the current CPU's lazy state.
pub trait PerCpuEnvironment: Environment {
    /// The current CPU's lazy state.
    fn cpu_lazy_state(&self) -> LazyState;
    /// Stores the current CPU's lazy state.
    fn set_cpu_lazy_state(&self, state: LazyState);
}

impl<E: PerCpuEnvironment + ?Sized> PerCpuEnvironment for &E {
    #[inline]
    fn cpu_lazy_state(&self) -> LazyState {
        (**self).cpu_lazy_state()
    }
    #[inline]
    fn set_cpu_lazy_state(&self, state: LazyState) {
        (**self).set_cpu_lazy_state(state)
    }
}

/// Lazy MMU mode kept with the CPU.
///
/// ```
/// use lazymmu::mode::percpu::PerCpu;
/// use lazymmu::mode::testing::{TestArch, TestEnv};
/// use lazymmu::mode::{LazyMode, MisusePolicy};
///
/// let mode = PerCpu::new(TestEnv::default(), TestArch::default(), MisusePolicy::Count);
/// {
///     let _section = mode.section();
///     assert_eq!(mode.env().preempt_count(), 1); // held for the section
///     assert!(mode.might_sleep().is_err());
/// }
/// assert_eq!(mode.env().preempt_count(), 0);
/// assert!(mode.might_sleep().is_ok());
/// ```
#[derive(Debug)]
pub struct PerCpu<E, A> {
    env: E,
    arch: A,
    misuse: MisuseReporter,
}

impl<E: PerCpuEnvironment, A: ArchHooks> PerCpu<E, A> {
    /// The mode for an environment and an arch backend, reporting misuse
    /// with `policy`.
    pub const fn new(env: E, arch: A, policy: MisusePolicy) -> Self {
        Self {
            env,
            arch,
            misuse: MisuseReporter::new(policy),
        }
    }

    /// The environment.
    pub fn env(&self) -> &E {
        &self.env
    }

    /// The arch backend.
    pub fn arch(&self) -> &A {
        &self.arch
    }

    /// The misuse reporter (its count).
    pub fn misuse(&self) -> &MisuseReporter {
        &self.misuse
    }

    /// Declares that the caller is about to sleep.
    ///
    /// # Errors
    /// [`Misuse::Forbidden`] when this CPU has a section open
    /// (`Forbidden(Op::Enable)`) or is paused outside one
    /// (`Forbidden(Op::Pause)`): either way preemption is off and the state
    /// would be left on the CPU for whichever task runs next. Nothing is
    /// changed; the caller must not sleep.
    pub fn might_sleep(&self) -> Result<(), Misuse> {
        self.env.might_sleep();
        let state = self.env.cpu_lazy_state();
        if state.enable_count > 0 {
            Err(self.misuse.report(Misuse::Forbidden(Op::Enable)))
        } else if state.pause_count > 0 {
            Err(self.misuse.report(Misuse::Forbidden(Op::Pause)))
        } else {
            Ok(())
        }
    }

    /// Applies `op` to the CPU's state: the counter rules, plus preemption
    /// held off while the state is not idle.
    ///
    /// When the CPU's state is not idle, the task running on it is the one
    /// that holds it, with preemption already off: a preemptible task reads
    /// an idle state, because any CPU with state is pinned to the task
    /// holding it. So a non-idle read needs no further protection, and only
    /// an operation that starts from idle disables preemption itself (and
    /// keeps that level as the hold if the state leaves idle). Hooks
    /// therefore always run with preemption off, for the reason given in
    /// `Counters::transition`.
    #[inline]
    fn transition(&self, op: Op) -> Result<Step<()>, Misuse> {
        if self.env.in_interrupt() {
            return Ok(Step {
                token: (),
                hook: None,
            });
        }
        let mut before = self.env.cpu_lazy_state();
        let from_idle = before == LazyState::IDLE;
        if from_idle {
            self.env.preempt_disable();
            // The task may have migrated before the disable: read this
            // CPU's state (idle too, as it is not pinned to anyone else).
            before = self.env.cpu_lazy_state();
        }
        let (result, holding) = match counters::rule(op, before) {
            Ok(Some((after, hook))) => {
                self.env.set_cpu_lazy_state(after);
                match hook {
                    Some(Hook::Enter) => self.arch.enter(),
                    Some(Hook::Leave) => self.arch.leave(),
                    Some(Hook::Flush) => self.arch.flush(),
                    None => {}
                }
                (Ok(hook), after != LazyState::IDLE)
            }
            Ok(None) => (Ok(None), before != LazyState::IDLE),
            Err(misuse) => (Err(misuse), before != LazyState::IDLE),
        };
        // Before: one level held if the state was not idle, or taken above.
        // After: one level held if the state is not idle.
        if !holding {
            self.env.preempt_enable();
        }
        match result {
            Ok(hook) => Ok(Step { token: (), hook }),
            Err(misuse) => Err(self.misuse.report(misuse)),
        }
    }
}

impl<E: PerCpuEnvironment, A: ArchHooks> LazyMode for PerCpu<E, A> {
    type Token = ();

    #[inline]
    fn enable(&self) -> Result<Step<()>, Misuse> {
        self.transition(Op::Enable)
    }

    #[inline]
    fn disable(&self, _token: ()) -> Result<Step<()>, Misuse> {
        self.transition(Op::Disable)
    }

    #[inline]
    fn pause_raw(&self) -> Result<Step<()>, Misuse> {
        self.transition(Op::Pause)
    }

    #[inline]
    fn resume(&self, _token: ()) -> Result<Step<()>, Misuse> {
        self.transition(Op::Resume)
    }

    #[inline]
    fn is_active(&self) -> bool {
        !self.env.in_interrupt() && self.env.cpu_lazy_state().is_active()
    }

    fn state(&self) -> LazyState {
        self.env.cpu_lazy_state()
    }

    fn bytes_per_task(&self) -> usize {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mode::testing::{TestArch, TestEnv};

    fn mode() -> PerCpu<TestEnv, TestArch> {
        PerCpu::new(TestEnv::default(), TestArch::default(), MisusePolicy::Count)
    }

    #[test]
    fn preemption_is_off_exactly_while_the_cpu_holds_state() {
        let mode = mode();
        mode.enable().unwrap();
        assert_eq!(mode.env().preempt_count(), 1);
        mode.enable().unwrap();
        mode.pause_raw().unwrap();
        assert_eq!(mode.env().preempt_count(), 1);
        mode.resume(()).unwrap();
        mode.disable(()).unwrap();
        assert_eq!(mode.env().preempt_count(), 1);
        mode.disable(()).unwrap();
        assert_eq!(mode.env().preempt_count(), 0);
        // A pause outside any section also pins the CPU.
        mode.pause_raw().unwrap();
        assert_eq!(mode.env().preempt_count(), 1);
        mode.resume(()).unwrap();
        assert_eq!(mode.env().preempt_count(), 0);
    }

    #[test]
    fn sleeping_inside_a_section_is_reported_both_ways() {
        let mode = mode();
        assert_eq!(mode.might_sleep(), Ok(()));
        assert_eq!(mode.env().sleeps_in_atomic(), 0);
        let section = mode.section();
        assert_eq!(mode.might_sleep(), Err(Misuse::Forbidden(Op::Enable)));
        assert_eq!(mode.env().sleeps_in_atomic(), 1);
        assert_eq!(mode.misuse().count(), 1);
        drop(section);
        let pause = mode.pause();
        assert_eq!(mode.might_sleep(), Err(Misuse::Forbidden(Op::Pause)));
        drop(pause);
        assert_eq!(mode.might_sleep(), Ok(()));
    }

    #[test]
    fn the_task_carries_nothing() {
        let mode = mode();
        let _section = mode.section();
        assert_eq!(mode.env().lazy_state(), LazyState::IDLE);
        assert_eq!(mode.state().enable_count, 1);
        assert_eq!(mode.bytes_per_task(), 0);
    }
}
