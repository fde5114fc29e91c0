//! Running the CPUs in time order: each CPU's work on a stackful coroutine
//! of its own, resumed earliest clock first, so that the CPUs reach a
//! shared cache line in the order they would on hardware and queue for it
//! ([`Machine::run_timed`]).
//!
//! This is a discrete-event simulation in the classic process style: a CPU
//! runs until it is about to touch a shared line, then yields while any
//! other CPU is behind it in time; a CPU waiting for another to wake it
//! (a blocked reader of a pipe) yields until it is woken. The machine's
//! scheduler ([`super::sched`]) interleaves *tasks* at choice points for
//! the checker; this interleaves *CPUs* by their clocks for measurement.

use core::cell::{Cell, RefCell};
use core::cmp::Reverse;
use std::collections::BinaryHeap;
use std::rc::Rc;

use corosensei::stack::DefaultStack;
use corosensei::{Coroutine, CoroutineResult, Yielder};
use lazymmu::cpu::CpuId;

use super::Machine;
use crate::invariant::Invariant;

/// Why a CPU's coroutine gave up the host thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Turn {
    /// Another CPU is behind this one in time.
    Behind,
    /// Waiting for a wake-up.
    Blocked,
}

/// The state of [`Machine::run_timed`], kept in the machine so that a line
/// access deep inside a library call can yield.
#[derive(Default)]
pub(crate) struct Timeline {
    /// CPUs ready to run, by (clock, id), while a timed run drives them.
    ready: RefCell<BinaryHeap<Reverse<(u64, usize)>>>,
    /// The CPU whose coroutine runs now.
    executing: Cell<Option<usize>>,
    /// Each CPU's yielder, while its coroutine lives.
    yielders: RefCell<Vec<*const Yielder<(), Turn>>>,
    /// Wake-ups not yet consumed, and the latest time one was sent.
    pending: RefCell<Vec<(u32, u64)>>,
    /// CPUs waiting for a wake-up.
    blocked: RefCell<Vec<bool>>,
}

impl Timeline {
    /// An idle timeline (no timed run).
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Yields the running CPU's coroutine while another CPU is behind it in
    /// time. Does nothing outside a timed run, or for work the running
    /// coroutine does on another CPU's behalf (an IPI's function).
    pub(crate) fn wait_turn(&self, machine: &Machine) {
        let Some(cpu) = self.executing.get() else {
            return;
        };
        if machine.cpu().index() != cpu {
            return;
        }
        let me = (machine.clock_of(CpuId::new(cpu)), cpu);
        let behind = self
            .ready
            .borrow()
            .peek()
            .is_some_and(|Reverse(other)| *other < me);
        if behind {
            self.suspend(cpu, Turn::Behind);
        }
    }

    fn suspend(&self, cpu: usize, why: Turn) {
        let yielder = self.yielders.borrow()[cpu];
        // SAFETY: `executing` is `Some(cpu)` only while `run_timed` is
        // inside `resume` of `cpu`'s coroutine, on this thread, and the
        // caller runs on that coroutine's stack (`wait_turn` and `block`
        // check `executing` against the running CPU). The pointer was
        // stored by that coroutine from the `Yielder` it was given, which
        // lives as long as the coroutine. No `RefCell` borrow is held across
        // the suspension (the `yielders` borrow ends above).
        unsafe { (*yielder).suspend(why) };
    }
}

impl Machine {
    /// Runs `body(cpu)` for each of `cpus` on a coroutine of its own, in
    /// time order: the CPU with the earliest clock runs until it touches a
    /// shared line while another CPU is behind it, or blocks
    /// ([`Machine::block`]). Returns when every body has returned; bodies
    /// still blocked when no CPU can run are a violation (a lost wake-up).
    ///
    /// # Panics
    /// If called from inside a timed run.
    pub fn run_timed(self: &Rc<Self>, cpus: &[CpuId], body: impl Fn(CpuId) + 'static) {
        let t = &self.timeline;
        assert!(t.executing.get().is_none(), "timed runs do not nest");
        let n = self.cpu_count();
        *t.yielders.borrow_mut() = vec![core::ptr::null(); n];
        *t.pending.borrow_mut() = vec![(0, 0); n];
        *t.blocked.borrow_mut() = vec![false; n];
        let body = Rc::new(body);
        let mut coroutines: Vec<Option<Coroutine<(), Turn, (), DefaultStack>>> =
            (0..n).map(|_| None).collect();
        for &cpu in cpus {
            let machine = self.clone();
            let body = body.clone();
            let stack = super::stacks::take(self.config.stack_bytes);
            coroutines[cpu.index()] = Some(Coroutine::with_stack(
                stack,
                move |yielder: &Yielder<(), Turn>, ()| {
                    machine.timeline.yielders.borrow_mut()[cpu.index()] = yielder as *const _;
                    body(cpu);
                },
            ));
            t.ready
                .borrow_mut()
                .push(Reverse((self.clock_of(cpu), cpu.index())));
        }
        loop {
            let next = t.ready.borrow_mut().pop();
            let Some(Reverse((_, cpu))) = next else { break };
            let Some(coroutine) = coroutines[cpu].as_mut() else {
                continue;
            };
            self.set_cpu(CpuId::new(cpu));
            t.executing.set(Some(cpu));
            let result = coroutine.resume(());
            t.executing.set(None);
            match result {
                CoroutineResult::Yield(Turn::Behind) => t
                    .ready
                    .borrow_mut()
                    .push(Reverse((self.clock_of(CpuId::new(cpu)), cpu))),
                CoroutineResult::Yield(Turn::Blocked) => {}
                CoroutineResult::Return(()) => {
                    if let Some(done) = coroutines[cpu].take() {
                        super::stacks::give(done);
                    }
                }
            }
        }
        let stuck: Vec<usize> = (0..n).filter(|&c| coroutines[c].is_some()).collect();
        if !stuck.is_empty() {
            self.violation(
                Invariant::OperationFailed,
                format!(
                    "{} CPUs wait for a wake-up that never comes (cpu{} first)",
                    stuck.len(),
                    stuck[0]
                ),
            );
        }
        // Giving back a suspended coroutine unwinds its stack.
        for coroutine in coroutines.into_iter().flatten() {
            super::stacks::give(coroutine);
        }
        t.yielders.borrow_mut().clear();
        t.pending.borrow_mut().clear();
        t.blocked.borrow_mut().clear();
    }

    /// The running CPU waits for a wake-up ([`Machine::wake`]); one sent
    /// before it waits is not lost. Its clock moves to the wake-up's time
    /// if that is later (the CPU was idle meanwhile). Returns at once
    /// outside a timed run.
    pub fn block(&self) {
        let t = &self.timeline;
        let Some(cpu) = t.executing.get() else {
            return;
        };
        let consumed = {
            let mut pending = t.pending.borrow_mut();
            let slot = &mut pending[cpu];
            if slot.0 > 0 {
                slot.0 -= 1;
                Some(slot.1)
            } else {
                None
            }
        };
        match consumed {
            Some(at) => self.idle_until(CpuId::new(cpu), at),
            None => {
                t.blocked.borrow_mut()[cpu] = true;
                t.suspend(cpu, Turn::Blocked);
            }
        }
    }

    /// Wakes `cpu` at time `at` (the running CPU's clock, normally): if it
    /// is blocked it becomes ready, its clock moved to `at` if behind;
    /// otherwise its next [`Machine::block`] returns at once.
    pub fn wake(&self, cpu: CpuId, at: u64) {
        let t = &self.timeline;
        let i = cpu.index();
        let was_blocked = t
            .blocked
            .borrow_mut()
            .get_mut(i)
            .is_some_and(|b| core::mem::replace(b, false));
        if was_blocked {
            self.idle_until(cpu, at);
            t.ready.borrow_mut().push(Reverse((self.clock_of(cpu), i)));
        } else if let Some(slot) = t.pending.borrow_mut().get_mut(i) {
            slot.0 += 1;
            slot.1 = slot.1.max(at);
        }
    }

    fn idle_until(&self, cpu: CpuId, at: u64) {
        let clock = &self.cpu_state(cpu).clock;
        clock.set(clock.get().max(at));
    }
}
