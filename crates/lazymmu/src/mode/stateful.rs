//! The stateful design: `enter` returns an arch-defined state value that the
//! caller keeps on its stack and hands back to `leave`.
//!
//! This is the shape first proposed for nesting (`lazy_mmu_state_t state =
//! arch_enter_lazy_mmu_mode(); ... arch_leave_lazy_mmu_mode(state);`): the
//! nesting depth is not stored anywhere in the task, it is the chain of
//! states on the callers' stacks. Each nested section carries its own state,
//! so an arch can save something per level (for example the protection-key
//! register value it overwrote, so that the inner section restores exactly
//! what the outer one had). Pausing is a separate "fully exit" request that
//! also returns a state, handed back to resume.
//!
//! What it costs compared with [`super::counters::Counters`]:
//!
//! - **bytes per task**: whatever the arch keeps; the [`FromHooks`] adapter
//!   needs two flags (a section is open, the task is paused): one byte, or
//!   two bits a kernel would fold into its thread-flag word (here they sit
//!   in the environment's existing task slot). Each open section costs
//!   `size_of::<State>()` bytes of the caller's stack instead (one byte for
//!   [`HooksState`]).
//! - **misuse detection**: there is no depth to overflow, and a `disable`
//!   without a state cannot even be written; a state handed back in the wrong
//!   context (closing the outermost section when none is open) is detected
//!   by the adapter and reported as an underflow.
//! - **raw callers** must thread the state through, which is what made the
//!   design unpopular for the many open-coded enable/disable pairs in mm/.
//!
//! An arch with protected page tables shows what the per-level state is
//! for: each section saves the key-register value it found and restores
//! exactly that, so nested sections and pauses need no depth anywhere.
//!
//! ```
//! use core::cell::Cell;
//! use lazymmu::mode::stateful::{Stateful, StatefulArch};
//! use lazymmu::mode::testing::TestEnv;
//! use lazymmu::mode::{Environment, Hook, LazyMode, LazyState, Misuse, MisusePolicy, Step};
//!
//! const LOCKED: u32 = 0b01; // page tables read-only
//! const OPEN: u32 = 0b00; // page tables writable
//!
//! /// A key register (x86 IA32_PKRS, arm64 POR_EL1) as a cell.
//! struct KeyRegister(Cell<u32>);
//!
//! impl StatefulArch for KeyRegister {
//!     type State = Option<u32>; // the value to restore; None: nothing to do
//!     fn ignored(&self) -> Option<u32> { None }
//!     fn enter<E: Environment>(&self, _: &E) -> Step<Option<u32>> {
//!         let saved = self.0.replace(OPEN);
//!         Step { token: Some(saved), hook: (saved != OPEN).then_some(Hook::Enter) }
//!     }
//!     fn leave<E: Environment>(&self, _: &E, saved: Option<u32>) -> Result<Option<Hook>, Misuse> {
//!         let Some(saved) = saved else { return Ok(None) };
//!         self.0.set(saved);
//!         Ok(Some(if saved == OPEN { Hook::Flush } else { Hook::Leave }))
//!     }
//!     fn pause<E: Environment>(&self, _: &E) -> Step<Option<u32>> {
//!         let saved = self.0.replace(LOCKED);
//!         Step { token: Some(saved), hook: (saved == OPEN).then_some(Hook::Leave) }
//!     }
//!     fn resume<E: Environment>(&self, env: &E, saved: Option<u32>) -> Result<Option<Hook>, Misuse> {
//!         self.leave(env, saved).map(|hook| hook.map(|_| Hook::Enter))
//!     }
//!     fn is_active<E: Environment>(&self, _: &E) -> bool { self.0.get() == OPEN }
//!     fn lazy_state<E: Environment>(&self, _: &E) -> LazyState {
//!         LazyState { enable_count: (self.0.get() == OPEN) as u8, pause_count: 0 }
//!     }
//!     fn bytes_per_task(&self) -> usize { 4 } // the register, saved at context switch
//! }
//!
//! let mode = Stateful::new(TestEnv::default(), KeyRegister(Cell::new(LOCKED)), MisusePolicy::Panic);
//! let outer = mode.enable().unwrap().token; // opens the key
//! let inner = mode.enable().unwrap().token; // finds it open: saves OPEN
//! let pause = mode.pause_raw().unwrap().token; // read-back: locks it
//! assert_eq!(mode.arch().0.get(), LOCKED);
//! mode.resume(pause).unwrap();
//! mode.disable(inner).unwrap(); // restores OPEN
//! assert_eq!(mode.arch().0.get(), OPEN);
//! mode.disable(outer).unwrap(); // restores LOCKED
//! assert_eq!(mode.arch().0.get(), LOCKED);
//! ```

use core::fmt;

use super::{
    ArchHooks, Environment, Hook, LazyMode, LazyState, Misuse, MisusePolicy, MisuseReporter, Op,
    Step,
};

/// An arch whose lazy mode hands back a state at every entry.
///
/// The generic [`Stateful`] layer calls these methods with preemption
/// disabled and never in interrupt context; it reports the [`Misuse`] they
/// return through the embedder's policy.
///
/// The methods receive the environment so that an arch which keeps per-task
/// flags (like [`FromHooks`]) can store them with the task.
pub trait StatefulArch {
    /// What a section or pause hands back: at least whether the mode was
    /// already active, and anything the arch saved on entry.
    type State: Copy + fmt::Debug;

    /// The state returned by an operation that did nothing (interrupt
    /// context); handing it back also does nothing.
    fn ignored(&self) -> Self::State;

    /// Enters lazy mode or nests into it.
    fn enter<E: Environment>(&self, env: &E) -> Step<Self::State>;

    /// Closes the section `enter` returned `state` for: leaves lazy mode if
    /// it was the outermost, flushes otherwise. Returns the hook it called.
    /// An arch may ignore a close while paused (as [`FromHooks`] does, like
    /// the counter design); the caller then keeps `state` for a later close.
    ///
    /// # Errors
    /// [`Misuse::Underflow`] when `state` does not match the task's current
    /// state; nothing is changed.
    fn leave<E: Environment>(&self, env: &E, state: Self::State) -> Result<Option<Hook>, Misuse>;

    /// Fully exits lazy mode, whatever the nesting depth.
    fn pause<E: Environment>(&self, env: &E) -> Step<Self::State>;

    /// Undoes the pause that returned `state`.
    ///
    /// # Errors
    /// [`Misuse::Underflow`] when the task is not paused; nothing is
    /// changed.
    fn resume<E: Environment>(&self, env: &E, state: Self::State) -> Result<Option<Hook>, Misuse>;

    /// Whether the current task is in lazy mode (not paused).
    fn is_active<E: Environment>(&self, env: &E) -> bool;

    /// The task's state in counter form, as far as the arch has it (for
    /// traces and tests).
    fn lazy_state<E: Environment>(&self, env: &E) -> LazyState;

    /// Bytes of lazy state the arch keeps per task.
    fn bytes_per_task(&self) -> usize;
}

/// The state [`FromHooks`] hands out: what the operation found, so that the
/// matching close knows which hook to call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HooksState {
    /// The operation did nothing (interrupt context, or an enable while
    /// paused); its close does nothing either.
    Ignored,
    /// The section entered lazy mode; its close leaves.
    Outermost,
    /// The mode was already active; the section's close flushes.
    Nested,
    /// The pause was the first one; its resume re-enters if a section is
    /// still open.
    FirstPause,
    /// The task was already paused; the resume does nothing.
    NestedPause,
}

/// Drives any [`ArchHooks`] backend through the stateful design.
///
/// Per task it keeps two flags (a section is open; the task is paused) in
/// the environment's task slot, encoded as `enable_count` and `pause_count`
/// of 0 or 1. The nesting depth lives only in the [`HooksState`] values on
/// the callers' stacks. Its hooks match the counter design's for any
/// sequence of operations short of 255 levels (it has no depth to
/// overflow): enables and disables are ignored while paused (an ignored
/// enable returns [`HooksState::Ignored`]; an ignored disable leaves its
/// section open, so the caller keeps the state for a later disable), pause
/// and resume outside a section call no hook.
#[derive(Debug, Default)]
pub struct FromHooks<A> {
    hooks: A,
}

impl<A: ArchHooks> FromHooks<A> {
    /// Adapts `hooks`.
    pub const fn new(hooks: A) -> Self {
        Self { hooks }
    }

    /// The adapted backend.
    pub fn hooks(&self) -> &A {
        &self.hooks
    }
}

/// The adapter's per-task flags, read from the environment's task slot.
#[derive(Clone, Copy)]
struct Flags {
    open: bool,
    paused: bool,
}

impl Flags {
    #[inline]
    fn load<E: Environment>(env: &E) -> Self {
        let s = env.lazy_state();
        Flags {
            open: s.enable_count != 0,
            paused: s.pause_count != 0,
        }
    }

    #[inline]
    fn store<E: Environment>(self, env: &E) {
        env.set_lazy_state(LazyState {
            enable_count: self.open as u8,
            pause_count: self.paused as u8,
        });
    }
}

impl<A: ArchHooks> StatefulArch for FromHooks<A> {
    type State = HooksState;

    #[inline]
    fn ignored(&self) -> HooksState {
        HooksState::Ignored
    }

    #[inline]
    fn enter<E: Environment>(&self, env: &E) -> Step<HooksState> {
        let flags = Flags::load(env);
        if flags.paused {
            return Step {
                token: HooksState::Ignored,
                hook: None,
            };
        }
        if flags.open {
            return Step {
                token: HooksState::Nested,
                hook: None,
            };
        }
        Flags {
            open: true,
            ..flags
        }
        .store(env);
        self.hooks.enter();
        Step {
            token: HooksState::Outermost,
            hook: Some(Hook::Enter),
        }
    }

    #[inline]
    fn leave<E: Environment>(&self, env: &E, state: HooksState) -> Result<Option<Hook>, Misuse> {
        let flags = Flags::load(env);
        match state {
            HooksState::Ignored => Ok(None),
            // Ignored while paused, as in the counter design: the section
            // stays open and is closed by a later disable.
            _ if flags.paused => Ok(None),
            HooksState::Nested | HooksState::Outermost if !flags.open => {
                Err(Misuse::Underflow(Op::Disable))
            }
            HooksState::Nested => {
                self.hooks.flush();
                Ok(Some(Hook::Flush))
            }
            HooksState::Outermost => {
                Flags {
                    open: false,
                    ..flags
                }
                .store(env);
                self.hooks.leave();
                Ok(Some(Hook::Leave))
            }
            HooksState::FirstPause | HooksState::NestedPause => Err(Misuse::Underflow(Op::Disable)),
        }
    }

    #[inline]
    fn pause<E: Environment>(&self, env: &E) -> Step<HooksState> {
        let flags = Flags::load(env);
        if flags.paused {
            return Step {
                token: HooksState::NestedPause,
                hook: None,
            };
        }
        Flags {
            paused: true,
            ..flags
        }
        .store(env);
        let hook = if flags.open {
            self.hooks.leave();
            Some(Hook::Leave)
        } else {
            None
        };
        Step {
            token: HooksState::FirstPause,
            hook,
        }
    }

    #[inline]
    fn resume<E: Environment>(&self, env: &E, state: HooksState) -> Result<Option<Hook>, Misuse> {
        let flags = Flags::load(env);
        match state {
            HooksState::Ignored => Ok(None),
            HooksState::FirstPause | HooksState::NestedPause if !flags.paused => {
                Err(Misuse::Underflow(Op::Resume))
            }
            HooksState::NestedPause => Ok(None),
            HooksState::FirstPause => {
                Flags {
                    paused: false,
                    ..flags
                }
                .store(env);
                if flags.open {
                    self.hooks.enter();
                    Ok(Some(Hook::Enter))
                } else {
                    Ok(None)
                }
            }
            HooksState::Outermost | HooksState::Nested => Err(Misuse::Underflow(Op::Resume)),
        }
    }

    #[inline]
    fn is_active<E: Environment>(&self, env: &E) -> bool {
        env.lazy_state().is_active()
    }

    fn lazy_state<E: Environment>(&self, env: &E) -> LazyState {
        env.lazy_state()
    }

    fn bytes_per_task(&self) -> usize {
        1
    }
}

/// Lazy MMU mode in the stateful design, over a [`StatefulArch`].
///
/// It adds what every arch needs: nothing happens in interrupt context, the
/// arch runs with preemption disabled (the same Xen PV reason as
/// [`super::counters::Counters`]: a context switch between the flag update
/// and the hook would see a half-entered mode), and misuse is reported
/// through the policy.
///
/// ```
/// use lazymmu::mode::stateful::{FromHooks, Stateful};
/// use lazymmu::mode::testing::{TestArch, TestEnv};
/// use lazymmu::mode::{LazyMode, MisusePolicy};
///
/// let mode = Stateful::new(TestEnv::default(), FromHooks::new(TestArch::default()), MisusePolicy::Count);
/// let outer = mode.enable().unwrap().token; // enters
/// let inner = mode.enable().unwrap().token; // nested: no hook
/// mode.disable(inner).unwrap(); // flushes
/// mode.disable(outer).unwrap(); // leaves
/// assert_eq!(mode.arch().hooks().enters(), 1);
/// assert_eq!(mode.arch().hooks().flushes(), 1);
/// assert_eq!(mode.arch().hooks().leaves(), 1);
/// ```
#[derive(Debug)]
pub struct Stateful<E, S> {
    env: E,
    arch: S,
    misuse: MisuseReporter,
}

impl<E: Environment, S: StatefulArch> Stateful<E, S> {
    /// The mode for an environment and a stateful arch, reporting misuse
    /// with `policy`.
    pub const fn new(env: E, arch: S, policy: MisusePolicy) -> Self {
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

    /// The stateful arch.
    pub fn arch(&self) -> &S {
        &self.arch
    }

    /// The misuse reporter (its count).
    pub fn misuse(&self) -> &MisuseReporter {
        &self.misuse
    }

    /// The state an ignored operation returns; handing it back does nothing.
    pub fn ignored_token(&self) -> S::State {
        self.arch.ignored()
    }

    /// Runs `f` with preemption off, unless in interrupt context where the
    /// operation does nothing.
    #[inline]
    fn opening(&self, f: impl FnOnce(&S, &E) -> Step<S::State>) -> Step<S::State> {
        if self.env.in_interrupt() {
            return Step {
                token: self.arch.ignored(),
                hook: None,
            };
        }
        self.env.preempt_disable();
        let step = f(&self.arch, &self.env);
        self.env.preempt_enable();
        step
    }

    #[inline]
    fn closing(
        &self,
        f: impl FnOnce(&S, &E) -> Result<Option<Hook>, Misuse>,
    ) -> Result<Step<()>, Misuse> {
        if self.env.in_interrupt() {
            return Ok(Step {
                token: (),
                hook: None,
            });
        }
        self.env.preempt_disable();
        let result = f(&self.arch, &self.env);
        self.env.preempt_enable();
        match result {
            Ok(hook) => Ok(Step { token: (), hook }),
            Err(misuse) => Err(self.misuse.report(misuse)),
        }
    }
}

impl<E: Environment, S: StatefulArch> LazyMode for Stateful<E, S> {
    type Token = S::State;

    #[inline]
    fn enable(&self) -> Result<Step<S::State>, Misuse> {
        Ok(self.opening(|arch, env| arch.enter(env)))
    }

    #[inline]
    fn disable(&self, token: S::State) -> Result<Step<()>, Misuse> {
        self.closing(|arch, env| arch.leave(env, token))
    }

    #[inline]
    fn pause_raw(&self) -> Result<Step<S::State>, Misuse> {
        Ok(self.opening(|arch, env| arch.pause(env)))
    }

    #[inline]
    fn resume(&self, token: S::State) -> Result<Step<()>, Misuse> {
        self.closing(|arch, env| arch.resume(env, token))
    }

    #[inline]
    fn is_active(&self) -> bool {
        !self.env.in_interrupt() && self.arch.is_active(&self.env)
    }

    fn state(&self) -> LazyState {
        self.arch.lazy_state(&self.env)
    }

    fn bytes_per_task(&self) -> usize {
        self.arch.bytes_per_task()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mode::testing::{TestArch, TestEnv};

    fn mode() -> Stateful<TestEnv, FromHooks<TestArch>> {
        Stateful::new(
            TestEnv::default(),
            FromHooks::new(TestArch::default()),
            MisusePolicy::Count,
        )
    }

    #[test]
    fn each_nested_section_carries_its_own_state() {
        let mode = mode();
        let outer = mode.enable().unwrap();
        let inner = mode.enable().unwrap();
        assert_eq!(outer.token, HooksState::Outermost);
        assert_eq!(outer.hook, Some(Hook::Enter));
        assert_eq!(inner.token, HooksState::Nested);
        assert_eq!(inner.hook, None);
        assert_eq!(mode.disable(inner.token).unwrap().hook, Some(Hook::Flush));
        assert_eq!(mode.disable(outer.token).unwrap().hook, Some(Hook::Leave));
        assert_eq!(mode.state(), LazyState::IDLE);
    }

    #[test]
    fn closing_a_section_that_is_not_open_is_an_underflow() {
        let mode = mode();
        let before = mode.state();
        assert_eq!(
            mode.disable(HooksState::Outermost),
            Err(Misuse::Underflow(Op::Disable))
        );
        assert_eq!(mode.state(), before);
        assert_eq!(mode.misuse().count(), 1);
        assert_eq!(mode.arch().hooks().broken(), 0);
    }

    #[test]
    fn closing_a_section_while_paused_is_ignored() {
        let mode = mode();
        let outer = mode.enable().unwrap().token;
        let pause = mode.pause_raw().unwrap();
        assert_eq!(pause.hook, Some(Hook::Leave));
        assert_eq!(mode.disable(outer).unwrap().hook, None);
        assert_eq!(mode.resume(pause.token).unwrap().hook, Some(Hook::Enter));
        assert_eq!(mode.disable(outer).unwrap().hook, Some(Hook::Leave));
        assert_eq!(mode.arch().hooks().broken(), 0);
    }
}
