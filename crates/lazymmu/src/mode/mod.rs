//! The generic lazy MMU mode: nestable, pausable sections that let an
//! architecture defer the side effects of page-table updates.
//!
//! Three designs are provided behind one caller-facing trait, [`LazyMode`]:
//!
//! - [`counters::Counters`]: two 8-bit counters in the task (what Linux 7.0
//!   adopted) — the default;
//! - [`stateful::Stateful`]: the arch hands back a state value at every
//!   enter, which the caller keeps on its stack;
//! - [`percpu::PerCpu`]: the state lives with the CPU and the section runs
//!   with preemption off.
//!
//! Code that batches page-table updates opens a section with
//! [`LazyMode::section`] and lets the guard close it:
//!
//! ```
//! use lazymmu::mode::{counters::Counters, testing::{TestArch, TestEnv}, LazyMode, MisusePolicy};
//! let mode = Counters::new(TestEnv::default(), TestArch::default(), MisusePolicy::Count);
//! {
//!     let _outer = mode.section();
//!     assert!(mode.is_active());
//!     {
//!         let _inner = mode.section(); // nested: its drop only flushes
//!     }
//!     assert!(mode.is_active());
//! }
//! assert!(!mode.is_active());
//! ```

pub mod counters;
pub mod eager;
pub mod percpu;
pub mod stateful;
#[cfg(feature = "testing")]
pub mod testing;

use core::fmt;
use core::marker::PhantomData;
use core::sync::atomic::{AtomicU32, Ordering};

use crate::cpu::Cpu;

/// Per-task lazy MMU state: exactly two bytes, as in Linux's
/// `struct lazy_mmu_state`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LazyState {
    /// Number of enables not yet matched by a disable.
    pub enable_count: u8,
    /// Number of pauses not yet matched by a resume.
    pub pause_count: u8,
}

const _: () = assert!(core::mem::size_of::<LazyState>() == 2);

impl LazyState {
    /// The state of a task that has never entered a section.
    pub const IDLE: LazyState = LazyState {
        enable_count: 0,
        pause_count: 0,
    };

    /// Whether a task with this state is in lazy MMU mode:
    /// `enable_count > 0 && pause_count == 0`.
    ///
    /// This is Linux's `is_lazy_mmu_mode_active(task)` for *another* task,
    /// used by context-switch code; it does not look at interrupt context.
    #[inline]
    pub const fn is_active(self) -> bool {
        self.enable_count > 0 && self.pause_count == 0
    }
}

/// The arch hook a lazy-mode operation called.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hook {
    /// `arch_enter_lazy_mmu_mode()`: start batching.
    Enter,
    /// `arch_leave_lazy_mmu_mode()`: apply everything batched and stop.
    Leave,
    /// `arch_flush_lazy_mmu_mode()`: apply everything batched, keep batching.
    Flush,
}

impl Hook {
    /// The hook's name as the trace format prints it.
    pub const fn name(self) -> &'static str {
        match self {
            Hook::Enter => "enter",
            Hook::Leave => "leave",
            Hook::Flush => "flush",
        }
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The lazy-mode operations, as named in the trace format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// `lazy_mmu_mode_enable()`.
    Enable,
    /// `lazy_mmu_mode_disable()`.
    Disable,
    /// `lazy_mmu_mode_pause()`.
    Pause,
    /// `lazy_mmu_mode_resume()`.
    Resume,
}

impl Op {
    /// The operation's name as the trace format spells it.
    pub const fn name(self) -> &'static str {
        match self {
            Op::Enable => "enable",
            Op::Disable => "disable",
            Op::Pause => "pause",
            Op::Resume => "resume",
        }
    }
}

/// Misuse of the raw lazy-mode API. The state is never changed by a misused
/// call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Misuse {
    /// The operation would have taken a counter past 255.
    Overflow(Op),
    /// The operation would have taken a counter below 0 (a `disable`
    /// without `enable`, a `resume` without `pause`).
    Underflow(Op),
    /// The design cannot carry out the operation in the current context
    /// (for example, the per-CPU design was asked to sleep inside a
    /// section).
    Forbidden(Op),
}

impl Misuse {
    /// `overflow`, `underflow` or `forbidden`, as the trace format prints it.
    pub const fn kind(self) -> &'static str {
        match self {
            Misuse::Overflow(_) => "overflow",
            Misuse::Underflow(_) => "underflow",
            Misuse::Forbidden(_) => "forbidden",
        }
    }

    /// The operation that was misused.
    pub const fn op(self) -> Op {
        match self {
            Misuse::Overflow(op) | Misuse::Underflow(op) | Misuse::Forbidden(op) => op,
        }
    }
}

impl fmt::Display for Misuse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "lazy MMU {} {}", self.op().name(), self.kind())
    }
}

impl core::error::Error for Misuse {}

/// How misuse of the raw API is reported. The embedder picks one.
#[derive(Clone, Copy, Debug)]
pub enum MisusePolicy {
    /// Count it; read the count with [`MisuseReporter::count`].
    Count,
    /// Count it and pass it to a logging function (a kernel's `printk`).
    Log(fn(Misuse)),
    /// Panic: for test kernels and debug builds.
    Panic,
}

/// Applies a [`MisusePolicy`] and keeps the count of misuses seen.
#[derive(Debug)]
pub struct MisuseReporter {
    policy: MisusePolicy,
    count: AtomicU32,
}

impl MisuseReporter {
    /// A reporter that applies `policy`.
    pub const fn new(policy: MisusePolicy) -> Self {
        Self {
            policy,
            count: AtomicU32::new(0),
        }
    }

    /// Reports one misuse according to the policy and returns it, so that a
    /// caller can write `return Err(reporter.report(m))`.
    #[cold]
    pub fn report(&self, misuse: Misuse) -> Misuse {
        self.count.fetch_add(1, Ordering::Relaxed);
        match self.policy {
            MisusePolicy::Count => {}
            MisusePolicy::Log(log) => log(misuse),
            MisusePolicy::Panic => panic!("{misuse}"),
        }
        misuse
    }

    /// How many misuses have been reported.
    pub fn count(&self) -> u32 {
        self.count.load(Ordering::Relaxed)
    }

    /// The policy in force.
    pub fn policy(&self) -> MisusePolicy {
        self.policy
    }
}

/// The arch side of the mode: what to do when the current task enters,
/// leaves or flushes lazy MMU mode. Implemented by every backend.
///
/// The hooks are called with preemption disabled by the generic code, so an
/// implementation may use per-CPU state.
pub trait ArchHooks {
    /// Start deferring side effects (`arch_enter_lazy_mmu_mode`).
    fn enter(&self);
    /// Apply every deferred side effect and stop deferring
    /// (`arch_leave_lazy_mmu_mode`).
    fn leave(&self);
    /// Apply every deferred side effect and keep deferring
    /// (`arch_flush_lazy_mmu_mode`).
    fn flush(&self);
}

impl<A: ArchHooks + ?Sized> ArchHooks for &A {
    #[inline]
    fn enter(&self) {
        (**self).enter()
    }
    #[inline]
    fn leave(&self) {
        (**self).leave()
    }
    #[inline]
    fn flush(&self) {
        (**self).flush()
    }
}

/// What the generic mode needs from the kernel it runs in: the current
/// task's state, on top of what every layer asks of the CPU ([`Cpu`]:
/// interrupt context and preemption control).
///
/// All methods take `&self`: the environment is ambient (per-CPU and
/// per-task data), and interrupt handlers re-enter it.
pub trait Environment: Cpu {
    /// The current task's lazy state.
    fn lazy_state(&self) -> LazyState;
    /// Stores the current task's lazy state.
    fn set_lazy_state(&self, state: LazyState);
    /// Declares that the caller may sleep here. The per-CPU design checks
    /// that no section is open; an environment that tracks atomic context
    /// reports a violation. The default does nothing.
    fn might_sleep(&self) {}
}

impl<E: Environment + ?Sized> Environment for &E {
    #[inline]
    fn lazy_state(&self) -> LazyState {
        (**self).lazy_state()
    }
    #[inline]
    fn set_lazy_state(&self, state: LazyState) {
        (**self).set_lazy_state(state)
    }
    #[inline]
    fn might_sleep(&self) {
        (**self).might_sleep()
    }
}

/// The result of one raw lazy-mode operation: the hook it called, if any,
/// and what the caller must hand back to close it (a [`LazyMode::Token`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step<T> {
    /// Value to hand back to the matching `disable` or `resume`.
    pub token: T,
    /// The arch hook that was called, `None` when the operation only
    /// counted or was ignored.
    pub hook: Option<Hook>,
}

impl Step<()> {
    /// An operation that called no hook and hands nothing back.
    pub const NONE: Step<()> = Step {
        token: (),
        hook: None,
    };
}

/// The caller-facing shape shared by the three designs.
///
/// Raw operations return a [`Step`]; the guard methods [`LazyMode::section`]
/// and [`LazyMode::pause`] are what ordinary code uses.
pub trait LazyMode {
    /// What an `enable` or `pause` hands back for the matching `disable` or
    /// `resume`: `()` for the counter designs, the arch's saved state for
    /// the stateful one.
    type Token: Copy + fmt::Debug;

    /// `lazy_mmu_mode_enable()`.
    ///
    /// # Errors
    /// [`Misuse::Overflow`] at 255 nested enables (state unchanged), or
    /// [`Misuse::Forbidden`] where the design cannot enter.
    fn enable(&self) -> Result<Step<Self::Token>, Misuse>;

    /// `lazy_mmu_mode_disable()`; `token` is what the matching `enable`
    /// returned.
    ///
    /// # Errors
    /// [`Misuse::Underflow`] without a matching enable (state unchanged).
    fn disable(&self, token: Self::Token) -> Result<Step<()>, Misuse>;

    /// `lazy_mmu_mode_pause()`: leave lazy mode temporarily, whatever the
    /// nesting depth. Legal outside any section.
    ///
    /// # Errors
    /// [`Misuse::Overflow`] at 255 nested pauses (state unchanged).
    fn pause_raw(&self) -> Result<Step<Self::Token>, Misuse>;

    /// `lazy_mmu_mode_resume()`; `token` is what the matching pause
    /// returned.
    ///
    /// # Errors
    /// [`Misuse::Underflow`] without a matching pause (state unchanged).
    fn resume(&self, token: Self::Token) -> Result<Step<()>, Misuse>;

    /// `is_lazy_mmu_mode_active()`: false in interrupt context. For arch
    /// code deciding whether to batch.
    fn is_active(&self) -> bool;

    /// The counters, as far as the design has them (for traces and tests).
    fn state(&self) -> LazyState;

    /// Bytes of lazy state the design keeps per task.
    fn bytes_per_task(&self) -> usize;

    /// Opens a section; its drop disables. Sections nest.
    fn section(&self) -> Section<'_, Self>
    where
        Self: Sized,
    {
        let token = self.enable().ok().map(|step| step.token);
        Section {
            mode: self,
            token,
            _task_bound: PhantomData,
        }
    }

    /// Pauses lazy mode; the guard's drop resumes it.
    fn pause(&self) -> Pause<'_, Self>
    where
        Self: Sized,
    {
        let token = self.pause_raw().ok().map(|step| step.token);
        Pause {
            mode: self,
            token,
            _task_bound: PhantomData,
        }
    }
}

/// A lazy MMU section. Dropping it disables (flushing if nested, leaving if
/// outermost). Bound to the task that opened it: not `Send`, so it cannot be
/// moved to another thread and closed there.
///
/// ```compile_fail
/// use lazymmu::mode::{eager::Eager, Section};
/// fn assert_send<T: Send>() {}
/// assert_send::<&Eager>(); // the mode itself may cross threads
/// assert_send::<Section<'static, Eager>>(); // error: not `Send`
/// ```
#[must_use = "dropping the section at once closes it"]
pub struct Section<'a, M: LazyMode> {
    mode: &'a M,
    /// `None` when the enable was refused (misuse); then drop does nothing.
    token: Option<M::Token>,
    _task_bound: PhantomData<*const ()>,
}

impl<M: LazyMode> Section<'_, M> {
    /// Whether the enable that opened this section was accepted.
    pub fn is_engaged(&self) -> bool {
        self.token.is_some()
    }
}

impl<M: LazyMode> Drop for Section<'_, M> {
    fn drop(&mut self) {
        if let Some(token) = self.token.take() {
            // A refused disable has already been reported by the policy.
            let _ = self.mode.disable(token);
        }
    }
}

/// A pause of lazy MMU mode. Dropping it resumes. Not `Send`.
///
/// ```compile_fail
/// use lazymmu::mode::{eager::Eager, Pause};
/// fn assert_send<T: Send>() {}
/// assert_send::<&Eager>(); // the mode itself may cross threads
/// assert_send::<Pause<'static, Eager>>(); // error: not `Send`
/// ```
#[must_use = "dropping the pause at once resumes"]
pub struct Pause<'a, M: LazyMode> {
    mode: &'a M,
    token: Option<M::Token>,
    _task_bound: PhantomData<*const ()>,
}

impl<M: LazyMode> Drop for Pause<'_, M> {
    fn drop(&mut self) {
        if let Some(token) = self.token.take() {
            let _ = self.mode.resume(token);
        }
    }
}

impl<M: LazyMode> LazyMode for &M {
    type Token = M::Token;
    #[inline]
    fn enable(&self) -> Result<Step<Self::Token>, Misuse> {
        (**self).enable()
    }
    #[inline]
    fn disable(&self, token: Self::Token) -> Result<Step<()>, Misuse> {
        (**self).disable(token)
    }
    #[inline]
    fn pause_raw(&self) -> Result<Step<Self::Token>, Misuse> {
        (**self).pause_raw()
    }
    #[inline]
    fn resume(&self, token: Self::Token) -> Result<Step<()>, Misuse> {
        (**self).resume(token)
    }
    #[inline]
    fn is_active(&self) -> bool {
        (**self).is_active()
    }
    #[inline]
    fn state(&self) -> LazyState {
        (**self).state()
    }
    #[inline]
    fn bytes_per_task(&self) -> usize {
        (**self).bytes_per_task()
    }
}
