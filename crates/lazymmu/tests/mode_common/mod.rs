//! Shared harness for the lazy-mode tests: a caller that drives any design
//! through the six trace operations, and independent reference models.

#![allow(dead_code)]

use std::cell::RefCell;

use lazymmu::mode::counters::Counters;
use lazymmu::mode::percpu::PerCpu;
use lazymmu::mode::stateful::{FromHooks, HooksState, Stateful};
use lazymmu::mode::testing::{TestArch, TestEnv};
use lazymmu::mode::{ArchHooks, Hook, LazyMode, LazyState, Misuse, MisusePolicy, Op};

/// The six operations of the trace format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Six {
    Enable,
    Disable,
    Pause,
    Resume,
    IrqEnter,
    IrqExit,
}

pub const ALL_SIX: [Six; 6] = [
    Six::Enable,
    Six::Disable,
    Six::Pause,
    Six::Resume,
    Six::IrqEnter,
    Six::IrqExit,
];

/// How the harness reports `irq_exit` outside an interrupt: as an underflow
/// that changes nothing (the lazy-mode operation named in it is only a
/// placeholder: there is no lazy-mode call involved).
pub const IRQ_EXIT_UNDERFLOW: Misuse = Misuse::Underflow(Op::Resume);

/// What one operation did, as seen from outside.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub hook: Option<Hook>,
    pub misuse: Option<Misuse>,
    /// The design's state after the operation.
    pub state: LazyState,
    /// `is_active()` after the operation (false in interrupt context).
    pub active: bool,
    /// Whether the misuse came from the design (through its policy) rather
    /// than from the caller (an empty token stack, an `irq_exit` outside an
    /// interrupt).
    pub by_design: bool,
}

/// An arch that records every hook in order, on top of [`TestArch`]'s
/// alternation check.
#[derive(Debug, Default)]
pub struct LogArch {
    pub check: TestArch,
    pub log: RefCell<Vec<Hook>>,
}

impl ArchHooks for LogArch {
    fn enter(&self) {
        self.log.borrow_mut().push(Hook::Enter);
        self.check.enter();
    }
    fn leave(&self) {
        self.log.borrow_mut().push(Hook::Leave);
        self.check.leave();
    }
    fn flush(&self) {
        self.log.borrow_mut().push(Hook::Flush);
        self.check.flush();
    }
}

/// The three designs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Design {
    Counters,
    Stateful,
    PerCpu,
}

pub const ALL_DESIGNS: [Design; 3] = [Design::Counters, Design::Stateful, Design::PerCpu];

/// A caller of one design, as raw code would be written: it keeps the
/// token of every `enable` and `pause` the design accepted and hands the
/// most recent one back to the next `disable` or `resume`.
///
/// An operation the design ignored (one made while paused, or any in
/// interrupt context) gives a token that is not kept: nothing is open to be
/// closed. A `disable` while paused is ignored by every design, so the
/// caller passes its newest token but keeps it (or the ignored token when
/// it has none). In interrupt context the handler does not touch the
/// interrupted task's tokens; its closes get the design's ignored token.
pub struct Caller<M: LazyMode> {
    pub mode: M,
    sections: Vec<M::Token>,
    pauses: Vec<M::Token>,
    /// For designs whose token carries nothing, the token to pass when the
    /// caller has none: the design itself then decides about underflow.
    spare: Option<M::Token>,
    /// The token an ignored operation returns.
    ignored: M::Token,
    is_ignored: fn(&M::Token) -> bool,
    irq_depth: u32,
}

pub type CountersMode<A> = Counters<TestEnv, A>;
pub type StatefulMode<A> = Stateful<TestEnv, FromHooks<A>>;
pub type PerCpuMode<A> = PerCpu<TestEnv, A>;

impl<A: ArchHooks + Default> Caller<CountersMode<A>> {
    pub fn counters(policy: MisusePolicy) -> Self {
        let mode = Counters::new(TestEnv::default(), A::default(), policy);
        Caller::new(mode, Some(()), (), |_| false)
    }
}

impl<A: ArchHooks + Default> Caller<StatefulMode<A>> {
    pub fn stateful(policy: MisusePolicy) -> Self {
        let mode = Stateful::new(TestEnv::default(), FromHooks::new(A::default()), policy);
        let ignored = mode.ignored_token();
        Caller::new(mode, None, ignored, |t| *t == HooksState::Ignored)
    }
}

impl<A: ArchHooks + Default> Caller<PerCpuMode<A>> {
    pub fn percpu(policy: MisusePolicy) -> Self {
        let mode = PerCpu::new(TestEnv::default(), A::default(), policy);
        Caller::new(mode, Some(()), (), |_| false)
    }
}

/// Access to the environment the designs share.
pub trait HasEnv {
    fn test_env(&self) -> &TestEnv;
}

impl<A: ArchHooks> HasEnv for CountersMode<A> {
    fn test_env(&self) -> &TestEnv {
        self.env()
    }
}
impl<A: ArchHooks> HasEnv for StatefulMode<A> {
    fn test_env(&self) -> &TestEnv {
        self.env()
    }
}
impl<A: ArchHooks> HasEnv for PerCpuMode<A> {
    fn test_env(&self) -> &TestEnv {
        self.env()
    }
}

impl<M: LazyMode + HasEnv> Caller<M> {
    pub fn new(
        mode: M,
        spare: Option<M::Token>,
        ignored: M::Token,
        is_ignored: fn(&M::Token) -> bool,
    ) -> Self {
        Caller {
            mode,
            sections: Vec::new(),
            pauses: Vec::new(),
            spare,
            ignored,
            is_ignored,
            irq_depth: 0,
        }
    }

    pub fn env(&self) -> &TestEnv {
        self.mode.test_env()
    }

    fn close_token(&mut self, pause: bool) -> Option<M::Token> {
        if self.irq_depth > 0 {
            return Some(self.ignored);
        }
        if !pause && self.mode.state().pause_count > 0 {
            return Some(self.sections.last().copied().unwrap_or(self.ignored));
        }
        let stack = if pause {
            &mut self.pauses
        } else {
            &mut self.sections
        };
        stack.pop().or(self.spare)
    }

    pub fn apply(&mut self, op: Six) -> Outcome {
        let mut hook = None;
        let mut misuse = None;
        let mut by_design = false;
        match op {
            Six::Enable | Six::Pause => {
                let result = if op == Six::Enable {
                    self.mode.enable()
                } else {
                    self.mode.pause_raw()
                };
                match result {
                    Ok(step) => {
                        hook = step.hook;
                        if self.irq_depth == 0 && !(self.is_ignored)(&step.token) {
                            if op == Six::Enable {
                                self.sections.push(step.token);
                            } else {
                                self.pauses.push(step.token);
                            }
                        }
                    }
                    Err(m) => {
                        misuse = Some(m);
                        by_design = true;
                    }
                }
            }
            Six::Disable | Six::Resume => {
                let is_pause = op == Six::Resume;
                let which = if is_pause { Op::Resume } else { Op::Disable };
                match self.close_token(is_pause) {
                    None => misuse = Some(Misuse::Underflow(which)),
                    Some(token) => {
                        let result = if is_pause {
                            self.mode.resume(token)
                        } else {
                            self.mode.disable(token)
                        };
                        match result {
                            Ok(step) => hook = step.hook,
                            Err(m) => {
                                misuse = Some(m);
                                by_design = true;
                            }
                        }
                    }
                }
            }
            Six::IrqEnter => {
                self.env().irq_enter();
                self.irq_depth += 1;
            }
            Six::IrqExit => {
                if self.env().irq_exit() {
                    self.irq_depth -= 1;
                } else {
                    misuse = Some(IRQ_EXIT_UNDERFLOW);
                }
            }
        }
        Outcome {
            hook,
            misuse,
            state: self.mode.state(),
            active: self.mode.is_active(),
            by_design,
        }
    }
}

/// Reference model of the counter rules (docs/design.md §2), written from the
/// table and independent of the library; also the per-CPU design's model.
#[derive(Clone, Debug, Default)]
pub struct CounterModel {
    pub enable: u32,
    pub pause: u32,
    pub irq: u32,
}

impl CounterModel {
    pub fn apply(&mut self, op: Six) -> (Option<Hook>, Option<Misuse>) {
        if self.irq > 0 && !matches!(op, Six::IrqEnter | Six::IrqExit) {
            return (None, None);
        }
        match op {
            Six::Enable if self.pause > 0 => (None, None),
            Six::Enable if self.enable == 255 => (None, Some(Misuse::Overflow(Op::Enable))),
            Six::Enable => {
                self.enable += 1;
                ((self.enable == 1).then_some(Hook::Enter), None)
            }
            Six::Disable if self.pause > 0 => (None, None),
            Six::Disable if self.enable == 0 => (None, Some(Misuse::Underflow(Op::Disable))),
            Six::Disable => {
                self.enable -= 1;
                let hook = if self.enable == 0 {
                    Hook::Leave
                } else {
                    Hook::Flush
                };
                (Some(hook), None)
            }
            Six::Pause if self.pause == 255 => (None, Some(Misuse::Overflow(Op::Pause))),
            Six::Pause => {
                self.pause += 1;
                (
                    (self.pause == 1 && self.enable > 0).then_some(Hook::Leave),
                    None,
                )
            }
            Six::Resume if self.pause == 0 => (None, Some(Misuse::Underflow(Op::Resume))),
            Six::Resume => {
                self.pause -= 1;
                (
                    (self.pause == 0 && self.enable > 0).then_some(Hook::Enter),
                    None,
                )
            }
            Six::IrqEnter => {
                self.irq += 1;
                (None, None)
            }
            Six::IrqExit if self.irq == 0 => (None, Some(IRQ_EXIT_UNDERFLOW)),
            Six::IrqExit => {
                self.irq -= 1;
                (None, None)
            }
        }
    }

    pub fn state(&self) -> LazyState {
        LazyState {
            enable_count: self.enable as u8,
            pause_count: self.pause as u8,
        }
    }

    pub fn active(&self) -> bool {
        self.irq == 0 && self.enable > 0 && self.pause == 0
    }
}

/// What the stateful model's caller holds for each open section or pause.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Held {
    Outer,
    Inner,
    FirstPause,
    InnerPause,
}

/// Reference model of the stateful design over an `ArchHooks` backend: two
/// task flags, and the caller's stacks of held states (ignored operations
/// hold nothing).
#[derive(Clone, Debug, Default)]
pub struct StatefulModel {
    open: bool,
    paused: bool,
    irq: u32,
    sections: Vec<Held>,
    pauses: Vec<Held>,
}

impl StatefulModel {
    pub fn apply(&mut self, op: Six) -> (Option<Hook>, Option<Misuse>) {
        match op {
            Six::IrqEnter => {
                self.irq += 1;
                (None, None)
            }
            Six::IrqExit if self.irq == 0 => (None, Some(IRQ_EXIT_UNDERFLOW)),
            Six::IrqExit => {
                self.irq -= 1;
                (None, None)
            }
            _ if self.irq > 0 => (None, None),
            Six::Enable if self.paused => (None, None),
            Six::Enable if self.open => {
                self.sections.push(Held::Inner);
                (None, None)
            }
            Six::Enable => {
                self.open = true;
                self.sections.push(Held::Outer);
                (Some(Hook::Enter), None)
            }
            Six::Pause if self.paused => {
                self.pauses.push(Held::InnerPause);
                (None, None)
            }
            Six::Pause => {
                self.paused = true;
                self.pauses.push(Held::FirstPause);
                (self.open.then_some(Hook::Leave), None)
            }
            Six::Disable if self.paused => (None, None),
            Six::Disable => match self.sections.pop() {
                None => (None, Some(Misuse::Underflow(Op::Disable))),
                Some(Held::Inner) => (Some(Hook::Flush), None),
                Some(Held::Outer) => {
                    self.open = false;
                    (Some(Hook::Leave), None)
                }
                Some(other) => panic!("pause state {other:?} on the section stack"),
            },
            Six::Resume => match self.pauses.pop() {
                None => (None, Some(Misuse::Underflow(Op::Resume))),
                Some(Held::InnerPause) => (None, None),
                Some(Held::FirstPause) => {
                    self.paused = false;
                    (self.open.then_some(Hook::Enter), None)
                }
                Some(other) => panic!("section state {other:?} on the pause stack"),
            },
        }
    }

    pub fn state(&self) -> LazyState {
        LazyState {
            enable_count: self.open as u8,
            pause_count: self.paused as u8,
        }
    }

    pub fn active(&self) -> bool {
        self.irq == 0 && self.open && !self.paused
    }
}

/// A model of any design.
#[derive(Clone, Debug)]
pub enum Model {
    Counters(CounterModel),
    Stateful(StatefulModel),
}

impl Model {
    pub fn for_design(design: Design) -> Model {
        match design {
            Design::Counters | Design::PerCpu => Model::Counters(CounterModel::default()),
            Design::Stateful => Model::Stateful(StatefulModel::default()),
        }
    }
    pub fn apply(&mut self, op: Six) -> (Option<Hook>, Option<Misuse>) {
        match self {
            Model::Counters(m) => m.apply(op),
            Model::Stateful(m) => m.apply(op),
        }
    }
    pub fn state(&self) -> LazyState {
        match self {
            Model::Counters(m) => m.state(),
            Model::Stateful(m) => m.state(),
        }
    }
    pub fn active(&self) -> bool {
        match self {
            Model::Counters(m) => m.active(),
            Model::Stateful(m) => m.active(),
        }
    }
}

/// Any design behind one object, for tests that loop over all three.
pub enum AnyCaller<A: ArchHooks> {
    Counters(Caller<CountersMode<A>>),
    Stateful(Caller<StatefulMode<A>>),
    PerCpu(Caller<PerCpuMode<A>>),
}

impl<A: ArchHooks + Default> AnyCaller<A> {
    pub fn new(design: Design, policy: MisusePolicy) -> Self {
        match design {
            Design::Counters => AnyCaller::Counters(Caller::counters(policy)),
            Design::Stateful => AnyCaller::Stateful(Caller::stateful(policy)),
            Design::PerCpu => AnyCaller::PerCpu(Caller::percpu(policy)),
        }
    }

    pub fn apply(&mut self, op: Six) -> Outcome {
        match self {
            AnyCaller::Counters(c) => c.apply(op),
            AnyCaller::Stateful(c) => c.apply(op),
            AnyCaller::PerCpu(c) => c.apply(op),
        }
    }

    pub fn arch(&self) -> &A {
        match self {
            AnyCaller::Counters(c) => c.mode.arch(),
            AnyCaller::Stateful(c) => c.mode.arch().hooks(),
            AnyCaller::PerCpu(c) => c.mode.arch(),
        }
    }

    pub fn env(&self) -> &TestEnv {
        match self {
            AnyCaller::Counters(c) => c.env(),
            AnyCaller::Stateful(c) => c.env(),
            AnyCaller::PerCpu(c) => c.env(),
        }
    }

    pub fn misuse_count(&self) -> u32 {
        match self {
            AnyCaller::Counters(c) => c.mode.misuse().count(),
            AnyCaller::Stateful(c) => c.mode.misuse().count(),
            AnyCaller::PerCpu(c) => c.mode.misuse().count(),
        }
    }

    /// Preemption-disable depth the design holds between operations: one
    /// for a per-CPU design whose CPU has state, none otherwise.
    pub fn held_preemption(&self, state: LazyState) -> u32 {
        match self {
            AnyCaller::PerCpu(_) => (state != LazyState::IDLE) as u32,
            _ => 0,
        }
    }
}
