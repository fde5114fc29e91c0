//! docs/design.md §2 row by row, for the three designs: the worked example with
//! its exact hook log, interrupt context, pause outside a section, enables
//! ignored while paused, misuse under each policy, and the guards.

mod mode_common;

use std::cell::RefCell;

use lazymmu::mode::counters::Counters;
use lazymmu::mode::percpu::{PerCpu, PerCpuEnvironment};
use lazymmu::mode::stateful::{FromHooks, HooksState, Stateful};
use lazymmu::mode::testing::{TestArch, TestEnv};
use lazymmu::mode::{
    Environment, Hook, LazyMode, LazyState, Misuse, MisusePolicy, Op, Pause, Section, Step,
};
use mode_common::{AnyCaller, Design, LogArch, Six, ALL_DESIGNS};

const fn state(enable_count: u8, pause_count: u8) -> LazyState {
    LazyState {
        enable_count,
        pause_count,
    }
}

/// docs/design.md §2's worked example: call, hook, counters after the call.
const WORKED_EXAMPLE: [(Six, Option<Hook>, LazyState); 7] = [
    (Six::Enable, Some(Hook::Enter), state(1, 0)),
    (Six::Enable, None, state(2, 0)),
    (Six::Pause, Some(Hook::Leave), state(2, 1)),
    (Six::Enable, None, state(2, 1)), // ignored while paused
    (Six::Resume, Some(Hook::Enter), state(2, 0)),
    (Six::Disable, Some(Hook::Flush), state(1, 0)),
    (Six::Disable, Some(Hook::Leave), state(0, 0)),
];

/// The stateful design keeps flags, not depths: what its state reads after
/// each row of the worked example.
const WORKED_EXAMPLE_STATEFUL_FLAGS: [LazyState; 7] = [
    state(1, 0),
    state(1, 0),
    state(1, 1),
    state(1, 1),
    state(1, 0),
    state(1, 0),
    state(0, 0),
];

#[test]
fn worked_example_row_by_row_with_its_hook_log() {
    for design in ALL_DESIGNS {
        let mut caller = AnyCaller::<LogArch>::new(design, MisusePolicy::Panic);
        let mut expected_log = Vec::new();
        for (row, &(op, hook, counters)) in WORKED_EXAMPLE.iter().enumerate() {
            let out = caller.apply(op);
            assert_eq!(out.hook, hook, "{design:?} row {row}");
            assert_eq!(out.misuse, None, "{design:?} row {row}");
            let expected_state = match design {
                Design::Stateful => WORKED_EXAMPLE_STATEFUL_FLAGS[row],
                Design::Counters | Design::PerCpu => counters,
            };
            assert_eq!(out.state, expected_state, "{design:?} row {row}");
            assert_eq!(out.active, counters.is_active(), "{design:?} row {row}");
            expected_log.extend(hook);
            assert_eq!(
                *caller.arch().log.borrow(),
                expected_log,
                "{design:?} row {row}"
            );
        }
        assert_eq!(
            *caller.arch().log.borrow(),
            [
                Hook::Enter,
                Hook::Leave,
                Hook::Enter,
                Hook::Flush,
                Hook::Leave
            ]
        );
        assert_eq!(caller.env().preempt_count(), 0, "{design:?}");
    }
}

#[test]
fn worked_example_with_guards() {
    let mode = Counters::new(TestEnv::default(), LogArch::default(), MisusePolicy::Panic);
    {
        let _outer = mode.section();
        {
            let _inner = mode.section();
            {
                let _pause = mode.pause();
                let ignored = mode.section();
                assert!(ignored.is_engaged()); // accepted, and ignored
                assert_eq!(mode.state(), state(2, 1));
            }
            assert_eq!(mode.state(), state(2, 0));
        }
        assert_eq!(mode.state(), state(1, 0));
    }
    assert_eq!(
        *mode.arch().log.borrow(),
        [
            Hook::Enter,
            Hook::Leave,
            Hook::Enter,
            Hook::Flush,
            Hook::Leave
        ]
    );
}

#[test]
fn interrupt_context_makes_every_operation_a_no_op() {
    for design in ALL_DESIGNS {
        let mut caller = AnyCaller::<LogArch>::new(design, MisusePolicy::Panic);
        caller.apply(Six::Enable);
        caller.apply(Six::Enable);
        let log_before = caller.arch().log.borrow().clone();
        let state_before = caller.apply(Six::IrqEnter).state;
        let preempt_before = caller.env().preempt_count();
        for op in [
            Six::Disable,
            Six::Disable,
            Six::Disable,
            Six::Pause,
            Six::Enable,
            Six::Resume,
            Six::Resume,
            Six::IrqEnter, // nested interrupt
            Six::Pause,
            Six::Disable,
            Six::IrqExit,
        ] {
            let out = caller.apply(op);
            assert_eq!(out.hook, None, "{design:?} {op:?}");
            assert_eq!(out.misuse, None, "{design:?} {op:?}");
            assert_eq!(out.state, state_before, "{design:?} {op:?}");
            assert!(
                !out.active,
                "{design:?} {op:?}: is_active() in an interrupt"
            );
            // The interrupted task is still in lazy mode.
            assert!(out.state.is_active(), "{design:?} {op:?}");
            assert_eq!(caller.env().preempt_count(), preempt_before);
        }
        assert_eq!(*caller.arch().log.borrow(), log_before);
        let out = caller.apply(Six::IrqExit);
        assert!(out.active, "{design:?}: active again after the interrupt");
        assert_eq!(caller.apply(Six::Disable).hook, Some(Hook::Flush));
        assert_eq!(caller.apply(Six::Disable).hook, Some(Hook::Leave));
    }
}

#[test]
fn pause_and_resume_outside_a_section_call_no_hook() {
    for design in ALL_DESIGNS {
        let mut caller = AnyCaller::<LogArch>::new(design, MisusePolicy::Panic);
        let paused = caller.apply(Six::Pause);
        assert_eq!((paused.hook, paused.misuse), (None, None), "{design:?}");
        assert_eq!(paused.state, state(0, 1), "{design:?}");
        let nested = caller.apply(Six::Pause);
        assert_eq!((nested.hook, nested.misuse), (None, None), "{design:?}");
        caller.apply(Six::Resume);
        let resumed = caller.apply(Six::Resume);
        assert_eq!((resumed.hook, resumed.misuse), (None, None), "{design:?}");
        assert_eq!(resumed.state, LazyState::IDLE, "{design:?}");
        assert!(caller.arch().log.borrow().is_empty(), "{design:?}");
        assert_eq!(caller.env().preempt_count(), 0, "{design:?}");
    }
}

#[test]
fn enable_and_disable_are_ignored_while_paused() {
    for design in ALL_DESIGNS {
        let mut caller = AnyCaller::<LogArch>::new(design, MisusePolicy::Panic);
        caller.apply(Six::Enable);
        caller.apply(Six::Pause);
        let before = caller.apply(Six::Enable).state;
        let log_before = caller.arch().log.borrow().clone();
        for op in [Six::Enable, Six::Disable, Six::Disable, Six::Enable] {
            let out = caller.apply(op);
            assert_eq!((out.hook, out.misuse), (None, None), "{design:?} {op:?}");
            assert_eq!(out.state, before, "{design:?} {op:?}");
            assert!(!out.active);
        }
        assert_eq!(*caller.arch().log.borrow(), log_before);
        assert_eq!(caller.apply(Six::Resume).hook, Some(Hook::Enter));
    }
}

// Misuse: overflow at 255, underflow at 0, under each policy, with the
// state unchanged.

fn counters(policy: MisusePolicy) -> Counters<TestEnv, TestArch> {
    Counters::new(TestEnv::default(), TestArch::default(), policy)
}

fn percpu(policy: MisusePolicy) -> PerCpu<TestEnv, TestArch> {
    PerCpu::new(TestEnv::default(), TestArch::default(), policy)
}

fn stateful(policy: MisusePolicy) -> Stateful<TestEnv, FromHooks<TestArch>> {
    Stateful::new(
        TestEnv::default(),
        FromHooks::new(TestArch::default()),
        policy,
    )
}

/// Every misuse the counter designs can see, from a state at the limit.
fn counter_misuses() -> [(LazyState, Op, Misuse); 4] {
    [
        (state(255, 0), Op::Enable, Misuse::Overflow(Op::Enable)),
        (state(3, 255), Op::Pause, Misuse::Overflow(Op::Pause)),
        (state(0, 0), Op::Disable, Misuse::Underflow(Op::Disable)),
        (state(7, 0), Op::Resume, Misuse::Underflow(Op::Resume)),
    ]
}

fn raw<M: LazyMode<Token = ()>>(mode: &M, op: Op) -> Result<Step<()>, Misuse> {
    match op {
        Op::Enable => mode.enable(),
        Op::Disable => mode.disable(()),
        Op::Pause => mode.pause_raw(),
        Op::Resume => mode.resume(()),
    }
}

thread_local! {
    static LOGGED: RefCell<Vec<Misuse>> = const { RefCell::new(Vec::new()) };
}

fn log_misuse(misuse: Misuse) {
    LOGGED.with(|logged| logged.borrow_mut().push(misuse));
}

fn take_logged() -> Vec<Misuse> {
    LOGGED.with(|logged| std::mem::take(&mut *logged.borrow_mut()))
}

#[test]
fn counter_misuse_is_counted_and_changes_nothing() {
    for (start, op, misuse) in counter_misuses() {
        let mode = counters(MisusePolicy::Count);
        mode.env().set_lazy_state(start);
        assert_eq!(raw(&mode, op), Err(misuse));
        assert_eq!(mode.state(), start);
        assert_eq!(mode.misuse().count(), 1);
        assert_eq!(
            mode.arch().enters() + mode.arch().leaves() + mode.arch().flushes(),
            0
        );
        assert_eq!(mode.env().preempt_count(), 0);

        let mode = percpu(MisusePolicy::Count);
        mode.env().set_cpu_lazy_state(start);
        assert_eq!(raw(&mode, op), Err(misuse));
        assert_eq!(mode.state(), start);
        assert_eq!(mode.misuse().count(), 1);
        assert_eq!(mode.env().preempt_count(), 0);
    }
}

#[test]
fn counter_misuse_is_logged_and_changes_nothing() {
    take_logged();
    for (start, op, misuse) in counter_misuses() {
        let mode = counters(MisusePolicy::Log(log_misuse));
        mode.env().set_lazy_state(start);
        assert_eq!(raw(&mode, op), Err(misuse));
        assert_eq!(mode.state(), start);
        assert_eq!(take_logged(), [misuse]);

        let mode = percpu(MisusePolicy::Log(log_misuse));
        mode.env().set_cpu_lazy_state(start);
        assert_eq!(raw(&mode, op), Err(misuse));
        assert_eq!(mode.state(), start);
        assert_eq!(take_logged(), [misuse]);
    }
}

#[test]
fn counter_misuse_panics_with_the_state_unchanged() {
    for (start, op, misuse) in counter_misuses() {
        let mode = counters(MisusePolicy::Panic);
        mode.env().set_lazy_state(start);
        let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| raw(&mode, op)))
            .expect_err("the Panic policy panics");
        assert_eq!(panic.downcast_ref::<String>(), Some(&misuse.to_string()));
        assert_eq!(mode.state(), start);
        assert_eq!(mode.env().preempt_count(), 0);
    }
}

#[test]
#[should_panic(expected = "lazy MMU enable overflow")]
fn counters_panic_on_enable_overflow() {
    let mode = counters(MisusePolicy::Panic);
    mode.env().set_lazy_state(state(255, 0));
    let _ = mode.enable();
}

#[test]
#[should_panic(expected = "lazy MMU pause overflow")]
fn counters_panic_on_pause_overflow() {
    let mode = counters(MisusePolicy::Panic);
    mode.env().set_lazy_state(state(0, 255));
    let _ = mode.pause_raw();
}

#[test]
#[should_panic(expected = "lazy MMU disable underflow")]
fn counters_panic_on_disable_underflow() {
    let _ = counters(MisusePolicy::Panic).disable(());
}

#[test]
#[should_panic(expected = "lazy MMU resume underflow")]
fn counters_panic_on_resume_underflow() {
    let _ = counters(MisusePolicy::Panic).resume(());
}

#[test]
#[should_panic(expected = "lazy MMU enable overflow")]
fn percpu_panics_on_enable_overflow() {
    let mode = percpu(MisusePolicy::Panic);
    mode.env().set_cpu_lazy_state(state(255, 0));
    let _ = mode.enable();
}

#[test]
#[should_panic(expected = "lazy MMU disable underflow")]
fn percpu_panics_on_disable_underflow() {
    let _ = percpu(MisusePolicy::Panic).disable(());
}

#[test]
#[should_panic(expected = "lazy MMU resume underflow")]
fn percpu_panics_on_resume_underflow() {
    let _ = percpu(MisusePolicy::Panic).resume(());
}

#[test]
#[should_panic(expected = "lazy MMU enable forbidden")]
fn percpu_panics_on_sleep_inside_a_section() {
    let mode = percpu(MisusePolicy::Panic);
    let _section = mode.section();
    let _ = mode.might_sleep();
}

/// The stateful design has no depth to overflow; a state handed back where
/// it does not fit is an underflow.
#[test]
fn stateful_misuse_is_reported_under_each_policy_and_changes_nothing() {
    take_logged();
    for policy in [MisusePolicy::Count, MisusePolicy::Log(log_misuse)] {
        let mode = stateful(policy);
        assert_eq!(
            mode.disable(HooksState::Outermost),
            Err(Misuse::Underflow(Op::Disable))
        );
        assert_eq!(
            mode.disable(HooksState::Nested),
            Err(Misuse::Underflow(Op::Disable))
        );
        assert_eq!(
            mode.resume(HooksState::FirstPause),
            Err(Misuse::Underflow(Op::Resume))
        );
        let open = mode.enable().unwrap().token;
        assert_eq!(mode.resume(open), Err(Misuse::Underflow(Op::Resume)));
        assert_eq!(mode.state(), state(1, 0));
        assert_eq!(mode.misuse().count(), 4);
        assert_eq!(mode.arch().hooks().enters(), 1);
        assert_eq!(mode.arch().hooks().broken(), 0);
        assert_eq!(mode.env().preempt_count(), 0);
    }
    assert_eq!(take_logged().len(), 4);
}

#[test]
#[should_panic(expected = "lazy MMU disable underflow")]
fn stateful_panics_on_disable_underflow() {
    let _ = stateful(MisusePolicy::Panic).disable(HooksState::Outermost);
}

#[test]
#[should_panic(expected = "lazy MMU resume underflow")]
fn stateful_panics_on_resume_underflow() {
    let _ = stateful(MisusePolicy::Panic).resume(HooksState::FirstPause);
}

#[test]
fn a_refused_section_guard_does_nothing_when_dropped() {
    let mode = counters(MisusePolicy::Count);
    mode.env().set_lazy_state(state(255, 0));
    {
        let section = mode.section();
        assert!(!section.is_engaged());
    }
    assert_eq!(mode.state(), state(255, 0));
    assert_eq!(mode.misuse().count(), 1);
}

#[test]
fn bytes_per_task() {
    assert_eq!(counters(MisusePolicy::Count).bytes_per_task(), 2);
    assert_eq!(stateful(MisusePolicy::Count).bytes_per_task(), 1);
    assert_eq!(percpu(MisusePolicy::Count).bytes_per_task(), 0);
    assert_eq!(std::mem::size_of::<HooksState>(), 1);
}

// Guards are `!Send`. A mode that is itself `Send + Sync`, so that only the
// guard's own marker can make it `!Send`.

use lazymmu::mode::eager::Eager as SendMode;

/// Resolves for every type; a second impl for `Send` types makes the call
/// below ambiguous (a compile error) if the type is `Send`.
trait AmbiguousIfSend<Marker> {
    fn check() {}
}
impl<T: ?Sized> AmbiguousIfSend<()> for T {}
struct IsSend;
impl<T: ?Sized + Send> AmbiguousIfSend<IsSend> for T {}

#[test]
fn guards_are_not_send() {
    fn assert_send<T: Send + Sync>() {}
    assert_send::<SendMode>();
    assert_send::<&SendMode>();
    <Section<'static, SendMode> as AmbiguousIfSend<_>>::check();
    <Pause<'static, SendMode> as AmbiguousIfSend<_>>::check();
}

/// An arch that records the preemption depth at every hook.
struct PreemptionProbe<'a> {
    env: &'a TestEnv,
    depths: RefCell<Vec<u32>>,
}

impl lazymmu::mode::ArchHooks for PreemptionProbe<'_> {
    fn enter(&self) {
        self.depths.borrow_mut().push(self.env.preempt_count());
    }
    fn leave(&self) {
        self.depths.borrow_mut().push(self.env.preempt_count());
    }
    fn flush(&self) {
        self.depths.borrow_mut().push(self.env.preempt_count());
    }
}

/// Drives the worked example with raw calls on a design whose tokens are
/// `()`.
fn worked_example_depths<M: LazyMode<Token = ()>>(mode: &M) {
    for op in [
        Op::Enable,
        Op::Enable,
        Op::Pause,
        Op::Enable,
        Op::Resume,
        Op::Disable,
        Op::Disable,
    ] {
        raw(mode, op).expect("no misuse in the worked example");
    }
}

#[test]
fn hooks_run_with_preemption_disabled() {
    let env = TestEnv::default();
    let probe = PreemptionProbe {
        env: &env,
        depths: RefCell::new(Vec::new()),
    };
    worked_example_depths(&Counters::new(&env, &probe, MisusePolicy::Panic));
    assert_eq!(*probe.depths.borrow(), [1, 1, 1, 1, 1]);
    assert_eq!(env.preempt_count(), 0);

    probe.depths.borrow_mut().clear();
    worked_example_depths(&PerCpu::new(&env, &probe, MisusePolicy::Panic));
    // The per-CPU design holds one level for the whole section.
    assert_eq!(*probe.depths.borrow(), [1, 1, 1, 1, 1]);
    assert_eq!(env.preempt_count(), 0);

    probe.depths.borrow_mut().clear();
    let mode = Stateful::new(&env, FromHooks::new(&probe), MisusePolicy::Panic);
    let outer = mode.enable().unwrap().token;
    let inner = mode.enable().unwrap().token;
    let pause = mode.pause_raw().unwrap().token;
    mode.resume(pause).unwrap();
    mode.disable(inner).unwrap();
    mode.disable(outer).unwrap();
    assert_eq!(*probe.depths.borrow(), [1, 1, 1, 1, 1]);
    assert_eq!(env.preempt_count(), 0);
}
