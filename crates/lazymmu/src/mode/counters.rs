//! The counter design Linux adopted: `enable_count` and `pause_count` in the
//! task, two bytes in all.

use super::{
    ArchHooks, Environment, Hook, LazyMode, LazyState, Misuse, MisusePolicy, MisuseReporter, Op,
    Step,
};

/// Lazy MMU mode kept as two 8-bit counters in the current task.
///
/// Semantics (docs/design.md §2):
///
/// | operation | rule |
/// |---|---|
/// | `enable` | ignored while paused; at 255 misuse; else increment, `enter` on 0→1 |
/// | `disable` | ignored while paused; at 0 misuse; else decrement, `leave` at 0, `flush` otherwise |
/// | `pause` | at 255 misuse; increment, `leave` on 0→1 if enabled |
/// | `resume` | at 0 misuse; decrement, `enter` on 1→0 if enabled |
///
/// Every operation does nothing in interrupt context.
#[derive(Debug)]
pub struct Counters<E, A> {
    env: E,
    arch: A,
    misuse: MisuseReporter,
}

impl<E: Environment, A: ArchHooks> Counters<E, A> {
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

    /// Reads the state once, lets `rule` compute the new state and the hook,
    /// and stores them, calling the hook with preemption disabled.
    ///
    /// Preemption must stay off from the counter update to the end of the
    /// hook. Linux 7.0 did not do this and broke Xen PV guests: a task
    /// preempted right after `enable_count` went 0→1, before
    /// `arch_enter_lazy_mmu_mode()`, was re-entered by the context-switch
    /// hook (which saw it active) and then entered a second time by the
    /// interrupted enable, which the hypervisor code treats as a fatal
    /// double entry.
    ///
    /// A transition that calls no hook never changes whether the task is
    /// active (`is_active` flips exactly when `enter` or `leave` is called),
    /// so a context switch in the middle of it sees a consistent task; and
    /// only the task itself writes its state (interrupt handlers do
    /// nothing), so the value read before disabling preemption is still the
    /// task's when it is stored. Those transitions, the nested enable in
    /// particular, therefore skip the preemption toggle.
    #[inline]
    fn transition(
        &self,
        rule: impl FnOnce(LazyState) -> Result<Option<(LazyState, Option<Hook>)>, Misuse>,
    ) -> Result<Step<()>, Misuse> {
        if self.env.in_interrupt() {
            return Ok(Step {
                token: (),
                hook: None,
            });
        }
        match rule(self.env.lazy_state()) {
            Ok(Some((next, None))) => {
                self.env.set_lazy_state(next);
                Ok(Step {
                    token: (),
                    hook: None,
                })
            }
            Ok(Some((next, Some(hook)))) => {
                self.env.preempt_disable();
                self.env.set_lazy_state(next);
                match hook {
                    Hook::Enter => self.arch.enter(),
                    Hook::Leave => self.arch.leave(),
                    Hook::Flush => self.arch.flush(),
                }
                self.env.preempt_enable();
                Ok(Step {
                    token: (),
                    hook: Some(hook),
                })
            }
            Ok(None) => Ok(Step {
                token: (),
                hook: None,
            }),
            Err(misuse) => Err(self.misuse.report(misuse)),
        }
    }
}

/// The pure rules of the counter design: given the state before an
/// operation, the state after it and the hook it calls; `Ok(None)` when the
/// operation is ignored. Shared with reference models and checkers.
#[inline]
pub fn rule(op: Op, s: LazyState) -> Result<Option<(LazyState, Option<Hook>)>, Misuse> {
    match op {
        Op::Enable => {
            if s.pause_count > 0 {
                return Ok(None);
            }
            let Some(enable_count) = s.enable_count.checked_add(1) else {
                return Err(Misuse::Overflow(op));
            };
            let hook = (s.enable_count == 0).then_some(Hook::Enter);
            Ok(Some((LazyState { enable_count, ..s }, hook)))
        }
        Op::Disable => {
            if s.pause_count > 0 {
                return Ok(None);
            }
            let Some(enable_count) = s.enable_count.checked_sub(1) else {
                return Err(Misuse::Underflow(op));
            };
            let hook = if enable_count == 0 {
                Hook::Leave
            } else {
                Hook::Flush
            };
            Ok(Some((LazyState { enable_count, ..s }, Some(hook))))
        }
        Op::Pause => {
            let Some(pause_count) = s.pause_count.checked_add(1) else {
                return Err(Misuse::Overflow(op));
            };
            let hook = (s.pause_count == 0 && s.enable_count > 0).then_some(Hook::Leave);
            Ok(Some((LazyState { pause_count, ..s }, hook)))
        }
        Op::Resume => {
            let Some(pause_count) = s.pause_count.checked_sub(1) else {
                return Err(Misuse::Underflow(op));
            };
            let hook = (pause_count == 0 && s.enable_count > 0).then_some(Hook::Enter);
            Ok(Some((LazyState { pause_count, ..s }, hook)))
        }
    }
}

impl<E: Environment, A: ArchHooks> LazyMode for Counters<E, A> {
    type Token = ();

    #[inline]
    fn enable(&self) -> Result<Step<()>, Misuse> {
        self.transition(|s| rule(Op::Enable, s))
    }

    #[inline]
    fn disable(&self, _token: ()) -> Result<Step<()>, Misuse> {
        self.transition(|s| rule(Op::Disable, s))
    }

    #[inline]
    fn pause_raw(&self) -> Result<Step<()>, Misuse> {
        self.transition(|s| rule(Op::Pause, s))
    }

    #[inline]
    fn resume(&self, _token: ()) -> Result<Step<()>, Misuse> {
        self.transition(|s| rule(Op::Resume, s))
    }

    #[inline]
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
