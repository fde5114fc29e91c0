//! The one scheduler: tasks on stackful coroutines, choice points, context
//! switches, interrupts, migration.
//!
//! A task with work runs its units ([`Kernel::run_unit`](super::Kernel::run_unit)) on a coroutine of
//! its own. At a choice point inside a unit — anywhere the library calls the
//! machine — the chooser may pick a disturbance. An interrupt or a remote
//! flush runs at once on the task's stack, as on hardware; a preemption, a
//! switch to another CPU's task, or a migration to a busy CPU suspends the
//! task's coroutine and hands the CPU (or the turn) to another task. A
//! task preempted on a CPU is back on that CPU's run queue: a later
//! preemption there may pick it, and it resumes at the latest when the
//! task that preempted it finishes its unit; a task that gave its turn to
//! another CPU resumes when that CPU's unit is done. Plain runs (no disturbance) never switch
//! coroutines inside a unit.
//!
//! Exactly one task executes at a time, so a run is a deterministic
//! function of the choices: the [`Trace`] of picks
//! replays it.

use core::cell::{Cell, RefCell};
use core::hash::Hasher;
use std::collections::hash_map::DefaultHasher;
use std::rc::Rc;

use corosensei::stack::DefaultStack;
use corosensei::{Coroutine, CoroutineResult, Yielder};
use lazymmu::cpu::CpuId;

use super::{KeyModel, Machine, TaskState};
use crate::choice::{Choice, ChoicePoint, Chooser, Sequential, Site, Trace};
use crate::events::EventKind;
use crate::invariant::Invariant;

/// Why a task's coroutine gave the CPU back to the scheduler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Yield {
    /// A unit of work is done; the task has more.
    UnitDone,
    /// Preempted in favour of this task, on the same CPU.
    Preempt(usize),
    /// Gave the turn to the task current on this CPU.
    RunOther(CpuId),
    /// Migrated to this CPU, whose task has work: waits for its unit.
    Wait(CpuId),
}

type TaskCoroutine = Coroutine<(), Yield, (), DefaultStack>;

/// The scheduler's state, kept in the [`Machine`].
pub(crate) struct Scheduler {
    chooser: RefCell<Box<dyn Chooser>>,
    passive: Cell<bool>,
    wants_digest: Cell<bool>,
    wants_footprints: Cell<bool>,
    step: Cell<u64>,
    preemptions: Cell<u32>,
    preempted_in_section: Cell<u64>,
    interrupts: Cell<u32>,
    atomic: Cell<u32>,
    trace: RefCell<Vec<u32>>,
    options: RefCell<Vec<Choice>>,
    coroutines: RefCell<Vec<Option<TaskCoroutine>>>,
    yielders: Box<[Cell<*const Yielder<(), Yield>>]>,
    executing: Cell<Option<usize>>,
    /// Tasks that gave their turn to another CPU, most recent last.
    waiters: RefCell<Vec<usize>>,
    stopping: Cell<bool>,
}

impl Scheduler {
    pub(crate) fn new(tasks: usize) -> Self {
        Self {
            chooser: RefCell::new(Box::new(Sequential)),
            passive: Cell::new(true),
            wants_digest: Cell::new(false),
            wants_footprints: Cell::new(false),
            step: Cell::new(0),
            preemptions: Cell::new(0),
            preempted_in_section: Cell::new(0),
            interrupts: Cell::new(0),
            atomic: Cell::new(0),
            trace: RefCell::new(Vec::new()),
            options: RefCell::new(Vec::with_capacity(16)),
            coroutines: RefCell::new((0..tasks).map(|_| None).collect()),
            yielders: (0..tasks).map(|_| Cell::new(core::ptr::null())).collect(),
            executing: Cell::new(None),
            waiters: RefCell::new(Vec::new()),
            stopping: Cell::new(false),
        }
    }

    pub(crate) fn set_chooser(&self, chooser: Box<dyn Chooser>) {
        self.passive.set(chooser.is_passive());
        self.wants_digest.set(chooser.wants_digest());
        self.wants_footprints.set(chooser.wants_footprints());
        *self.chooser.borrow_mut() = chooser;
    }

    pub(crate) fn take_chooser(&self, replacement: Box<dyn Chooser>) -> Box<dyn Chooser> {
        self.passive.set(replacement.is_passive());
        self.wants_digest.set(replacement.wants_digest());
        self.wants_footprints.set(replacement.wants_footprints());
        core::mem::replace(&mut *self.chooser.borrow_mut(), replacement)
    }

    pub(crate) fn step(&self) -> u64 {
        self.step.get()
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stopping.get()
    }

    pub(crate) fn drop_coroutines(&self) {
        let all = core::mem::take(&mut *self.coroutines.borrow_mut());
        for coroutine in all.into_iter().flatten() {
            super::stacks::give(coroutine);
        }
    }

    /// Feeds the scheduler's state to `h`; the interrupts taken only when
    /// they are `limited` (otherwise how many were taken changes nothing
    /// that follows).
    pub(crate) fn digest(&self, h: &mut DefaultHasher, limited: bool) {
        for &w in self.waiters.borrow().iter() {
            h.write_usize(w);
        }
        h.write_usize(self.executing.get().map_or(usize::MAX, |t| t));
        if limited {
            h.write_u32(self.interrupts.get());
        }
    }
}

fn site_code(site: Site) -> u64 {
    let (kind, name): (u64, &str) = match site {
        Site::Environment(n) => (1, n),
        Site::Primitive(n) => (2, n),
        Site::Unit => (3, ""),
        Site::Step => (4, ""),
        Site::Decision(n) => (5, n),
    };
    name.bytes().fold(kind, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

impl Machine {
    // ----- what a run observes -------------------------------------------

    /// The picks made so far at choice points with more than one option.
    pub fn trace(&self) -> Trace {
        Trace::new(String::new(), self.sched.trace.borrow().clone())
    }

    /// Preemptions and migrations taken so far.
    pub fn preemptions(&self) -> u32 {
        self.sched.preemptions.get()
    }

    /// Preemptions and migrations that hit a task inside a lazy section.
    pub fn preempted_in_section(&self) -> u64 {
        self.sched.preempted_in_section.get()
    }

    /// Choice points passed so far.
    pub fn steps(&self) -> u64 {
        self.sched.step.get()
    }

    /// Whether the run is winding down: no more choices, no new unit of
    /// work (after a violation, or when the chooser stopped it).
    pub fn stopping(&self) -> bool {
        self.sched.stopping.get()
    }

    /// Runs `f` with choice points suppressed (the machine's own code:
    /// switch hooks, checks).
    pub fn atomically<R>(&self, f: impl FnOnce() -> R) -> R {
        let a = &self.sched.atomic;
        a.set(a.get() + 1);
        let r = f();
        a.set(a.get() - 1);
        r
    }

    // ----- choice points --------------------------------------------------

    /// A choice point. Cheap when the chooser is passive.
    #[inline]
    pub fn choice_point(&self, site: Site) {
        let s = &self.sched;
        s.step.set(s.step.get() + 1);
        if s.passive.get() || s.atomic.get() > 0 {
            return;
        }
        self.choose(site);
    }

    /// The start of a scripted task's step: a choice point.
    pub fn step_point(&self) {
        self.choice_point(Site::Step);
    }

    /// A decision of the workload among alternatives with `weights` (zero
    /// weights are never taken): the chooser picks one; a random chooser
    /// draws by weight, an explorer tries each. Returns the index into
    /// `weights`.
    ///
    /// # Panics
    /// When every weight is zero.
    pub fn pick(&self, site: Site, weights: &[u32]) -> usize {
        let s = &self.sched;
        s.step.set(s.step.get() + 1);
        let live: Vec<usize> = (0..weights.len()).filter(|&i| weights[i] > 0).collect();
        assert!(!live.is_empty(), "a decision needs an alternative");
        if live.len() == 1 || s.stopping.get() {
            return live[0];
        }
        let quiet = self.footprints().quiet();
        self.mix_position(site);
        let options: Vec<Choice> = live
            .iter()
            .map(|&i| Choice::Pick {
                index: i as u32,
                weight: weights[i],
            })
            .collect();
        let point = self.point(site, options.len());
        let chosen = self.ask(&point, &options);
        drop(quiet);
        match chosen {
            Some(i) if i < live.len() => {
                s.trace.borrow_mut().push(i as u32);
                live[i]
            }
            Some(_) => {
                s.trace.borrow_mut().push(0);
                live[0]
            }
            None => {
                s.stopping.set(true);
                live[0]
            }
        }
    }

    /// A uniform decision among `n` alternatives.
    pub fn pick_one_of(&self, site: Site, n: usize) -> usize {
        self.pick(site, &vec![1; n])
    }

    /// Asks the chooser at `point` to pick one of `options`, handing it the
    /// footprint of the stretch since the previous choice point first (when
    /// it wants footprints); what the asking itself touches (the digest)
    /// belongs to no stretch.
    fn ask(&self, point: &ChoicePoint, options: &[Choice]) -> Option<usize> {
        let s = &self.sched;
        let mut chooser = s.chooser.borrow_mut();
        if s.wants_footprints.get() {
            chooser.segment(self.footprints().take());
        }
        let picked = chooser.choose(point, options);
        if s.wants_footprints.get() {
            drop(self.footprints().take());
        }
        picked
    }

    fn mix_position(&self, site: Site) {
        let t = self.current_task();
        let mut tasks = self.tasks.borrow_mut();
        let p = &mut tasks[t].position;
        *p = (p.rotate_left(7) ^ site_code(site)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn point(&self, site: Site, free: usize) -> ChoicePoint {
        let cpu = self.cpu();
        let c = self.cpu_state(cpu);
        ChoicePoint {
            step: self.sched.step.get(),
            cpu,
            task: self.current_task(),
            site,
            preemptible: c.preempt.get() == 0 && c.irq_depth.get() == 0,
            preemptions: self.sched.preemptions.get(),
            free,
            digest: (self.sched.wants_digest.get()
                && self.sched.chooser.borrow().wants_digest_next())
            .then(|| self.digest()),
        }
    }

    /// Whether `task` has work to run or resume (the target of a switch of
    /// turns).
    fn has_work(&self, task: usize) -> bool {
        match self.tasks.borrow()[task].state {
            TaskState::Ready => true,
            TaskState::Busy => self.sched.waiters.borrow().contains(&task),
            _ => false,
        }
    }

    #[inline(never)]
    fn choose(&self, site: Site) {
        let s = &self.sched;
        // The options offered and the digest are the machine's own reading,
        // part of no stretch; what the chosen option does is recorded.
        let quiet = self.footprints().quiet();
        self.mix_position(site);
        if s.stopping.get() {
            return;
        }
        if self.config.stop_on_violation && self.violation_count() > 0 {
            s.stopping.set(true);
            return;
        }
        let cpu = self.cpu();
        let c = self.cpu_state(cpu);
        let task = self.current_task();
        let offers = self.config.offers;
        let in_irq = c.irq_depth.get() > 0;
        let preemptible = c.preempt.get() == 0 && !in_irq;
        let progressed = self.tasks.borrow()[task].progressed;
        let in_coroutine = s.executing.get() == Some(task);
        // Points that exist for the scheduler (a `preempt_enable()`, where
        // a pending preemption takes effect, and a read of the CPU id,
        // which goes stale when the task leaves the CPU) offer it the CPU;
        // interrupts and remote flushes land at the machine's own points,
        // so that their injected rates do not depend on how many
        // preemption guards a backend takes.
        let for_scheduler = matches!(
            site,
            Site::Environment("cpu_id" | "preempt_enable") | Site::Primitive("preempt_enable")
        );
        let mut options = core::mem::take(&mut *s.options.borrow_mut());
        options.clear();
        options.push(Choice::Continue);
        if !in_irq && !for_scheduler && offers.interrupts.is_none_or(|max| s.interrupts.get() < max)
        {
            options.push(Choice::Interrupt);
        }
        if in_coroutine && progressed {
            if offers.run_other {
                for other in (0..self.cpu_count()).map(CpuId::new) {
                    if other != cpu && self.has_work(self.task_on(other)) {
                        options.push(Choice::RunOther { cpu: other });
                    }
                }
            }
            if preemptible && offers.preempt {
                // Any task with work may take the CPU: one that has not
                // started its unit, or one preempted here earlier (it is
                // back on the run queue, as in Linux).
                let tasks = self.tasks.borrow();
                let preempted = c.preempted.borrow();
                for (id, t) in tasks.iter().enumerate() {
                    if id != task && (t.state == TaskState::Ready || preempted.contains(&id)) {
                        options.push(Choice::Preempt { task: id });
                    }
                }
            }
            if preemptible && offers.migrate {
                for other in (0..self.cpu_count()).map(CpuId::new) {
                    if other == cpu {
                        continue;
                    }
                    let there = self.task_on(other);
                    let idle = !matches!(
                        self.tasks.borrow()[there].state,
                        TaskState::Ready | TaskState::Busy
                    );
                    if idle || (offers.migrate_to_busy && self.has_work(there)) {
                        options.push(Choice::Migrate { cpu: other });
                    }
                }
            }
        }
        if !in_irq && !for_scheduler && offers.remote_flush && self.cpu_count() > 1 {
            options.push(Choice::RemoteFlush);
        }
        if options.len() == 1 {
            *s.options.borrow_mut() = options;
            self.tasks.borrow_mut()[task].progressed = true;
            return;
        }
        let point = self.point(site, 1);
        let picked = self.ask(&point, &options);
        drop(quiet);
        let choice = match picked {
            Some(i) if i < options.len() => {
                s.trace.borrow_mut().push(i as u32);
                options[i]
            }
            Some(_) => {
                s.trace.borrow_mut().push(0);
                Choice::Continue
            }
            None => {
                s.stopping.set(true);
                Choice::Continue
            }
        };
        *s.options.borrow_mut() = options;
        if choice != Choice::Continue {
            self.log(EventKind::Choice(choice));
        }
        match choice {
            Choice::Continue | Choice::Pick { .. } => {
                self.tasks.borrow_mut()[task].progressed = true;
            }
            Choice::Interrupt => {
                self.tasks.borrow_mut()[task].progressed = true;
                self.disturbing(|| self.interrupt());
            }
            Choice::RemoteFlush => self.disturbing(|| self.remote_flush()),
            Choice::RunOther { cpu: other } => {
                self.suspend(Yield::RunOther(other));
            }
            Choice::Preempt { task: next } => {
                self.count_preemption(task);
                self.suspend(Yield::Preempt(next));
            }
            Choice::Migrate { cpu: to } => {
                self.count_preemption(task);
                let there = self.task_on(to);
                let idle = !matches!(
                    self.tasks.borrow()[there].state,
                    TaskState::Ready | TaskState::Busy
                );
                self.leave_cpu(cpu);
                if idle {
                    self.schedule(to, task);
                    self.current.set(to);
                } else {
                    self.cpu_state(to).preempted.borrow_mut().push(task);
                    self.suspend(Yield::Wait(to));
                }
            }
        }
    }

    /// The running task leaves `cpu` (it migrates): the CPU switches to a
    /// task preempted there, which waits for its turn as Linux's
    /// `schedule()` would pick the next runnable task, or else to its idle
    /// task.
    fn leave_cpu(&self, cpu: CpuId) {
        let waiting = self.cpu_state(cpu).preempted.borrow_mut().pop();
        match waiting {
            Some(next) => {
                self.schedule(cpu, next);
                self.sched.waiters.borrow_mut().push(next);
            }
            None => self.schedule(cpu, self.idle_task(cpu)),
        }
    }

    fn count_preemption(&self, task: usize) {
        let s = &self.sched;
        s.preemptions.set(s.preemptions.get() + 1);
        let in_section =
            self.tasks.borrow()[task].lazy.is_active() || self.cpu_lazy_state().is_active();
        if in_section {
            s.preempted_in_section.set(s.preempted_in_section.get() + 1);
        }
    }

    /// Suspends the executing task's coroutine, handing `why` to the
    /// scheduler; returns when the scheduler resumes it.
    fn suspend(&self, why: Yield) {
        let task = self
            .sched
            .executing
            .get()
            .expect("only a task's coroutine suspends");
        let yielder = self.sched.yielders[task].get();
        // SAFETY: `executing` is `Some(task)` only while the scheduler is
        // inside `resume` of `task`'s coroutine, on this thread, and we are
        // running on that coroutine's stack (choice points outside a
        // coroutine never get here: `choose` offers suspending choices only
        // when `executing` is the current task, and interrupt handlers,
        // which run on the interrupted task's stack, offer none). The
        // pointer was stored by that coroutine from the `Yielder` it was
        // given, which lives as long as the coroutine. No `RefCell` borrow
        // is held across the suspension.
        unsafe { (*yielder).suspend(why) };
        // Resumed: it completes the step it was about to take.
        let t = self.current_task();
        self.tasks.borrow_mut()[t].progressed = true;
    }

    // ----- interrupts -----------------------------------------------------

    /// Takes an interrupt on the running CPU now: exception entry, the
    /// kernel's handler, exception return; checks the key register is
    /// restored exactly.
    pub fn interrupt(&self) {
        let Some(kernel) = self.kernel() else { return };
        self.footprints().opaque();
        let s = &self.sched;
        s.interrupts.set(s.interrupts.get() + 1);
        let cpu = self.cpu();
        let c = self.cpu_state(cpu);
        c.irq_depth.set(c.irq_depth.get() + 1);
        self.log(EventKind::IrqEnter);
        let interrupted_key = c.key.get();
        let task = self.current_task();
        let position = self.tasks.borrow()[task].position;
        kernel.exception_entry();
        kernel.interrupt();
        kernel.exception_exit();
        // The task resumes where the interrupt found it: the choice points
        // of the handler (which it runs on the task's stack, and which tell
        // the handler's own points apart) are no part of where it is.
        self.tasks.borrow_mut()[task].position = position;
        let key_now = self.key();
        if self.config.hardware.keys != KeyModel::None && key_now != interrupted_key {
            self.violation(
                Invariant::KeyRestore,
                format!("exception return left key register {key_now:#x}, interrupted value was {interrupted_key:#x}"),
            );
        }
        self.log(EventKind::IrqExit);
        c.irq_depth.set(c.irq_depth.get() - 1);
    }

    fn remote_flush(&self) {
        self.footprints().opaque();
        let cpu = self.cpu();
        let c = self.cpu_state(cpu);
        c.irq_depth.set(c.irq_depth.get() + 1);
        self.log(EventKind::IrqEnter);
        self.tlb_invalidate_all(cpu);
        self.log(EventKind::IrqExit);
        c.irq_depth.set(c.irq_depth.get() - 1);
    }

    // ----- context switches ----------------------------------------------

    /// Switches `cpu` from its task to `next` (taking `next` off the CPU it
    /// is current on first): the kernel's switch-out, address-space and
    /// switch-in work, with choice points suppressed. The switch itself is
    /// charged as [`Software::ContextSwitch`](crate::cost::Software). A
    /// switch the kernel asks for is its own work.
    pub fn switch(&self, cpu: CpuId, next: usize) {
        self.switch_as(cpu, next, false);
    }

    /// A switch the scheduler decides on its own account (round robin,
    /// preemption, migration). What the switch does for the running kernel
    /// ([`Kernel::switch_out`](super::Kernel::switch_out) and
    /// [`Kernel::switch_in`](super::Kernel::switch_in): draining a batch
    /// the task queued, restoring its key) is still the kernel's work; the
    /// switch itself and the address-space switch
    /// ([`Kernel::switch_mm`](super::Kernel::switch_mm), lazy TLB) are
    /// charged as a disturbance, as injected interrupts are.
    pub fn schedule(&self, cpu: CpuId, next: usize) {
        self.switch_as(cpu, next, true);
    }

    fn switch_as(&self, cpu: CpuId, next: usize, scheduler: bool) {
        let prev = self.task_on(cpu);
        if prev == next {
            return;
        }
        self.footprints().opaque();
        let saved = self.cpu();
        let last = self.tasks.borrow()[next].cpu;
        if last != cpu && self.task_on(last) == next {
            self.switch_as(last, self.idle_task(last), scheduler);
        }
        self.current.set(cpu);
        let kernel = self.kernel();
        let switch_mm = || {
            let handled = kernel
                .as_ref()
                .is_some_and(|k| k.switch_mm(cpu, prev, next));
            if !handled {
                let space = self.tasks.borrow()[next].space;
                // A kernel thread runs on whatever is loaded.
                if space != lazymmu::addr::SpaceId::KERNEL {
                    let c = self.cpu_state(cpu);
                    let before = c.loaded.replace(space);
                    if self.config.hardware.flush_on_switch && before != space {
                        self.tlb_invalidate_space(cpu, before);
                    }
                }
            }
            self.charge(crate::cost::Software::ContextSwitch, 1);
        };
        self.atomically(|| {
            self.log(EventKind::SwitchOut(prev));
            if let Some(k) = &kernel {
                k.switch_out(cpu, prev);
            }
            if self.config.hardware.arm64_barriers {
                // arm64 __switch_to() always issues `dsb ish` (to complete
                // TLB and cache maintenance before the task can run
                // elsewhere), so the outgoing CPU's stores are visible
                // after a switch whatever the lazy MMU code did; the
                // backend's switch-out hook is the one that counts it.
                self.drain_stores(cpu);
            }
            if scheduler {
                self.disturbing(switch_mm);
            } else {
                switch_mm();
            }
            self.cpu_state(cpu).current.set(next);
            {
                let mut tasks = self.tasks.borrow_mut();
                tasks[next].cpu = cpu;
                tasks[next].progressed = false;
            }
            self.log(EventKind::SwitchIn(next));
            if let Some(k) = &kernel {
                k.switch_in(cpu, next);
            }
        });
        self.current.set(saved);
    }

    /// A voluntary sleep of the running task (a blocking allocation, a
    /// mutex): the task is switched out and straight back in on the same
    /// CPU. Sleeping with preemption disabled is reported.
    pub fn sleep(&self) {
        if self.preempt_count() > 0 || self.in_interrupt() {
            self.violation(
                Invariant::SleepInSection,
                format!(
                    "sleep with preempt count {} in a section that cannot sleep",
                    self.preempt_count()
                ),
            );
            return;
        }
        let cpu = self.cpu();
        let task = self.current_task();
        self.switch(cpu, self.idle_task(cpu));
        self.switch(cpu, task);
        self.current.set(cpu);
    }

    // ----- running tasks --------------------------------------------------

    /// Runs every task with work to completion, one unit of work at a time
    /// in round robin, each on the CPU it last ran on (switched in there).
    /// Choice points inside may interleave them further.
    pub fn run(self: &Rc<Self>) {
        self.run_all();
        let lost: Vec<usize> = (0..self.task_count())
            .filter(|&t| self.tasks.borrow()[t].state == TaskState::Busy)
            .collect();
        assert!(
            lost.is_empty(),
            "the scheduler left tasks {lost:?} in the middle of a unit"
        );
    }

    fn run_all(self: &Rc<Self>) {
        loop {
            let mut progressed = false;
            for id in 0..self.task_count() {
                if self.config.stop_on_violation && self.violation_count() > 0 {
                    self.sched.stopping.set(true);
                }
                if self.sched.stopping.get() {
                    return;
                }
                if self.tasks.borrow()[id].state != TaskState::Ready {
                    continue;
                }
                let cpu = self.tasks.borrow()[id].cpu;
                self.schedule(cpu, id);
                self.drive(id);
                progressed = true;
            }
            if !progressed {
                break;
            }
        }
    }

    /// Runs one unit of `first` (and whatever the choices interleave with
    /// it) until no task is in the middle of a unit.
    fn drive(self: &Rc<Self>, first: usize) {
        let mut run = first;
        self.set_task_state(run, TaskState::Busy);
        loop {
            let cpu = self.tasks.borrow()[run].cpu;
            self.current.set(cpu);
            let outcome = self.resume(run);
            match outcome {
                Some(Yield::UnitDone) | None => {
                    let finished = outcome.is_none();
                    self.set_task_state(
                        run,
                        if finished {
                            TaskState::Done
                        } else {
                            TaskState::Ready
                        },
                    );
                    if finished {
                        self.log(EventKind::Done(run));
                        if let Some(k) = self.kernel() {
                            k.task_done(run);
                        }
                    }
                    let cpu = self.tasks.borrow()[run].cpu;
                    match self.next_to_resume(cpu) {
                        Some(next) => run = next,
                        None => return,
                    }
                }
                Some(Yield::Preempt(next)) => {
                    let cpu = self.tasks.borrow()[run].cpu;
                    {
                        let mut preempted = self.cpu_state(cpu).preempted.borrow_mut();
                        preempted.retain(|&t| t != next);
                        preempted.push(run);
                    }
                    self.schedule(cpu, next);
                    if self.tasks.borrow()[next].state == TaskState::Ready {
                        self.set_task_state(next, TaskState::Busy);
                    }
                    run = next;
                }
                Some(Yield::RunOther(cpu)) => {
                    self.sched.waiters.borrow_mut().push(run);
                    run = self.take_turn(cpu);
                }
                Some(Yield::Wait(cpu)) => {
                    run = self.take_turn(cpu);
                }
            }
        }
    }

    /// Who resumes when a unit on `cpu` is done: a task preempted there,
    /// else the task that gave its turn away last, else a task preempted on
    /// a CPU whose running task has since moved away (migrated) in the
    /// middle of its unit.
    fn next_to_resume(&self, cpu: CpuId) -> Option<usize> {
        let preempted = self.cpu_state(cpu).preempted.borrow_mut().pop();
        if let Some(p) = preempted {
            self.schedule(cpu, p);
            return Some(p);
        }
        let waiter = self.sched.waiters.borrow_mut().pop();
        if waiter.is_some() {
            return waiter;
        }
        for other in (0..self.cpu_count()).map(CpuId::new) {
            let busy = self.tasks.borrow()[self.task_on(other)].state == TaskState::Busy;
            if busy {
                continue;
            }
            let preempted = self.cpu_state(other).preempted.borrow_mut().pop();
            if let Some(p) = preempted {
                self.schedule(other, p);
                return Some(p);
            }
        }
        None
    }

    /// The task current on `cpu` takes the turn: a waiter resumes, a ready
    /// task starts a unit.
    fn take_turn(&self, cpu: CpuId) -> usize {
        let next = self.task_on(cpu);
        self.sched.waiters.borrow_mut().retain(|&w| w != next);
        if self.tasks.borrow()[next].state == TaskState::Ready {
            self.set_task_state(next, TaskState::Busy);
        }
        self.tasks.borrow_mut()[next].progressed = false;
        next
    }

    /// Resumes `task`'s coroutine (creating it on its first unit) until it
    /// yields; `None` when it has finished all its work.
    fn resume(self: &Rc<Self>, task: usize) -> Option<Yield> {
        let coroutine = self.sched.coroutines.borrow_mut()[task].take();
        let mut coroutine = match coroutine {
            Some(c) => c,
            None => self.new_coroutine(task),
        };
        self.sched.executing.set(Some(task));
        let result = coroutine.resume(());
        self.sched.executing.set(None);
        match result {
            CoroutineResult::Yield(why) => {
                self.sched.coroutines.borrow_mut()[task] = Some(coroutine);
                Some(why)
            }
            CoroutineResult::Return(()) => {
                super::stacks::give(coroutine);
                None
            }
        }
    }

    fn new_coroutine(self: &Rc<Self>, task: usize) -> TaskCoroutine {
        let machine = self.clone();
        let stack = super::stacks::take(self.config.stack_bytes);
        Coroutine::with_stack(stack, move |yielder: &Yielder<(), Yield>, ()| {
            machine.sched.yielders[task].set(yielder as *const _);
            loop {
                machine.tasks.borrow_mut()[task].position = 0;
                machine.choice_point(Site::Unit);
                let Some(kernel) = machine.kernel() else {
                    return;
                };
                let more = kernel.run_unit(task);
                drop(kernel);
                if !more {
                    return;
                }
                yielder.suspend(Yield::UnitDone);
            }
        })
    }
}
