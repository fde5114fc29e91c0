//! A small machine on which the explorer runs contract scenarios: CPUs with
//! a current task, a run queue, interrupt depth, preemption count and the
//! arch's per-CPU state; tasks with their lazy state; page-table memory as
//! the walker sees it.
//!
//! Every simulated task is an OS thread, and exactly one of them runs at a
//! time: the one holding the *baton*. This is what lets a scheduling
//! decision suspend a task anywhere, including in the middle of a library
//! call (between the counter store and the arch hook, say), and resume it
//! later, exactly as a real preemption would. The library code runs
//! unmodified: each task owns a [`LazyMode`] built over a [`TaskEnv`] and a
//! [`TaskArch`] that forward to the machine.
//!
//! Choice points (DESIGN.md §6) come before every step of a task and right
//! after every store of a lazy state. At each, option 0 continues; the
//! others, each costing one preemption, are: take an interrupt (its handler
//! changes kernel mappings), let another CPU run, preempt and switch to a
//! task waiting on this CPU, and migrate the task to another CPU. The last
//! two are offered only when preemption is enabled.
//!
//! Two arch models are provided, each the hardware or hypervisor side of a
//! backend in DESIGN.md §3:
//!
//! - **Xen PV**: page tables are read-only to the guest, so a batched write
//!   is invisible until the multicall buffer (32 entries) is issued; switch
//!   out leaves lazy mode if the CPU is in it, switch in re-enters when the
//!   next task is active; the hypervisor treats a second enter as fatal.
//! - **arm64**: a kernel-entry store reaches the walker only after a
//!   `dsb ishst`; inside a section the barrier is deferred to the flush as a
//!   pending flag that travels with the task; `__switch_to` issues a `dsb`.

use std::collections::hash_map::DefaultHasher;
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Condvar, Mutex, MutexGuard};

use lazymmu::mode::counters::Counters;
use lazymmu::mode::percpu::{PerCpu, PerCpuEnvironment};
use lazymmu::mode::{ArchHooks, Environment, LazyMode, LazyState, MisusePolicy};

use crate::explore::{ChoicePoint, Chooser, RunOutcome, System, Violation};

/// Entries of the modelled page-table memory; scenarios use a few.
pub const ENTRIES: usize = 16;

/// Xen's multicall batch: `MC_BATCH` is 32 in `arch/x86/xen/multicalls.c`.
pub const XEN_MULTICALL_ENTRIES: usize = 32;

/// How many events a violation report keeps.
const EVENT_LOG: usize = 50;

/// One step of a task's script (or of the interrupt handler).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// `lazy_mmu_mode_enable()`.
    Enable,
    /// `lazy_mmu_mode_disable()`; afterwards every earlier write of the task
    /// must be visible (invariant 1).
    Disable,
    /// `lazy_mmu_mode_pause()`.
    Pause,
    /// `lazy_mmu_mode_resume()`.
    Resume,
    /// Writes page-table entry `entry` (a kernel entry when `kernel`).
    Write {
        /// Index into the modelled page-table memory.
        entry: u8,
        /// Whether it maps kernel memory (arm64 barriers apply).
        kernel: bool,
    },
    /// Reads back the entry the task last wrote there; a stale value is
    /// invariant 6.
    ReadBack {
        /// Index into the modelled page-table memory.
        entry: u8,
    },
}

/// The arch model a scenario runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    /// Xen PV guest: multicall batching.
    XenPv,
    /// arm64: deferred `dsb`/`isb` for kernel entries.
    Arm64,
}

/// Which lazy-mode design the tasks run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Design {
    /// [`Counters`]: the state in the task.
    Counters,
    /// [`PerCpu`]: the state on the CPU, preemption off in the section.
    PerCpu,
}

/// Known-bad configurations, applied as wrappers around the library's
/// environment and arch (the library code itself is unchanged).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Faults {
    /// `preempt_disable`/`preempt_enable` do nothing: the library's
    /// counter update and hook are no longer atomic with respect to the
    /// context-switch hooks (Linux 7.0's ordering).
    pub preemptible_transitions: bool,
    /// The arch's `flush` does nothing: a nested disable leaves its writes
    /// batched.
    pub flush_is_noop: bool,
    /// The environment tells the mode it is never in interrupt context, so
    /// interrupt handlers' updates are batched into the interrupted section.
    pub hide_interrupts: bool,
}

/// A task: where it starts and what it does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskSpec {
    /// Short name for traces.
    pub name: &'static str,
    /// CPU it starts on; the first task of each CPU runs, the others wait.
    pub cpu: usize,
    /// Its steps.
    pub actions: Vec<Action>,
}

/// A complete machine configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    /// The arch model.
    pub arch: Arch,
    /// The lazy-mode design.
    pub design: Design,
    /// Known-bad wrappers.
    pub faults: Faults,
    /// Number of CPUs.
    pub cpus: usize,
    /// The tasks.
    pub tasks: Vec<TaskSpec>,
    /// What the interrupt handler does (in interrupt context on the CPU it
    /// interrupts); empty for a scenario without interrupts.
    pub handler: Vec<Action>,
    /// At most this many interrupts per run.
    pub max_interrupts: u32,
    /// Whether tasks may be migrated at preemption points.
    pub migrate: bool,
}

/// One scheduling decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Decision {
    Continue,
    Interrupt,
    RunOther(usize),
    SwitchTo(usize),
    Migrate(usize),
}

/// What the machine logs, formatted only when a violation is reported.
#[derive(Clone, Copy, Debug)]
enum Event {
    Step(usize, usize, Action),
    Irq(usize, usize, Action),
    Hook(usize, &'static str),
    Store(usize, LazyState),
    Decide(usize, Decision),
    Apply(usize, u8, u64),
    Done(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Pending {
    entry: u8,
    value: u64,
    task: usize,
}

#[derive(Clone, Debug, Default, Hash)]
struct Cpu {
    current: Option<usize>,
    queue: VecDeque<usize>,
    irq_depth: u32,
    preempt: u32,
    /// Per-CPU lazy state (the per-CPU design).
    lazy_state: LazyState,
    /// Xen: the CPU is in the hypervisor's lazy MMU mode.
    xen_lazy: bool,
    /// Xen: the multicall buffer; arm64: stores not yet made visible by a
    /// `dsb`.
    pending: Vec<Pending>,
}

#[derive(Clone, Debug, Default, Hash)]
struct Task {
    cpu: usize,
    state: LazyState,
    pc: usize,
    done: bool,
    progress: bool,
    /// Sections the script has open (independent of the library).
    sections: u32,
    /// Pauses the script has open.
    pauses: u32,
    /// arm64 `TIF_LAZY_MMU_PENDING`.
    barrier_pending: bool,
    /// Digest of the library calls made since the current step began:
    /// determines the rest of an interrupted call.
    call: u64,
}

struct Inner<'c> {
    spec: &'c Spec,
    cpus: Vec<Cpu>,
    tasks: Vec<Task>,
    memory: [u64; ENTRIES],
    /// Last value written to each entry and by whom.
    expected: [Option<(u64, usize)>; ENTRIES],
    next_value: u64,
    interrupts: u32,
    baton: Option<usize>,
    abort: bool,
    violation: Option<Violation>,
    stopped: bool,
    events: VecDeque<Event>,
    chooser: &'c mut dyn Chooser,
}

/// Unwinds a task thread when the run is over early; not an error.
struct Aborted;

struct Shared<'c> {
    inner: Mutex<Inner<'c>>,
    turn: Condvar,
}

type Guard<'a, 'c> = MutexGuard<'a, Inner<'c>>;

impl<'c> Shared<'c> {
    fn lock(&self) -> Guard<'_, 'c> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Blocks until `task` holds the baton; unwinds if the run was aborted.
    fn wait_turn<'a>(&'a self, mut g: Guard<'a, 'c>, task: usize) -> Guard<'a, 'c> {
        while g.baton != Some(task) && !g.abort {
            g = self.turn.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        if g.abort {
            drop(g);
            panic::resume_unwind(Box::new(Aborted));
        }
        g
    }

    /// Like [`Shared::wait_turn`] for a task that was preempted at a choice
    /// point: it resumes by completing the step it was about to take, so
    /// its next choice point may preempt it again.
    fn resume_turn<'a>(&'a self, g: Guard<'a, 'c>, task: usize) -> Guard<'a, 'c> {
        let mut g = self.wait_turn(g, task);
        g.tasks[task].progress = true;
        g
    }

    /// Records a violation, ends the run and unwinds the calling task.
    fn fail<'a>(&'a self, mut g: Guard<'a, 'c>, invariant: &str, detail: String) -> ! {
        if g.violation.is_none() && !g.abort {
            let events = g.events.iter().map(|e| g.describe(*e)).collect();
            g.violation = Some(Violation {
                invariant: invariant.to_owned(),
                detail,
                events,
            });
        }
        g.abort = true;
        drop(g);
        self.turn.notify_all();
        panic::resume_unwind(Box::new(Aborted));
    }

    /// A choice point for `task`, the baton holder. Returns with the baton
    /// held again; `Interrupt` asks the caller to run the handler.
    fn choice_point<'a>(&'a self, mut g: Guard<'a, 'c>, task: usize) -> (Guard<'a, 'c>, bool) {
        let options = g.options(task);
        let digest = g.digest(task);
        let point = ChoicePoint {
            options: options.len(),
            free: 1,
            digest: Some(digest),
        };
        let Some(choice) = g.chooser.choose(&point) else {
            g.stopped = true;
            g.abort = true;
            drop(g);
            self.turn.notify_all();
            panic::resume_unwind(Box::new(Aborted));
        };
        let decision = options[choice.min(options.len() - 1)];
        if decision != Decision::Continue {
            g.log(Event::Decide(task, decision));
        }
        let cpu = g.tasks[task].cpu;
        match decision {
            Decision::Continue => {
                g.tasks[task].progress = true;
                (g, false)
            }
            Decision::Interrupt => {
                g.interrupts += 1;
                g.tasks[task].progress = true;
                (g, true)
            }
            Decision::RunOther(other) => {
                g.tasks[other].progress = false;
                g.baton = Some(other);
                self.turn.notify_all();
                (self.resume_turn(g, task), false)
            }
            Decision::SwitchTo(next) => {
                g.cpus[cpu].queue.retain(|&t| t != next);
                g.cpus[cpu].queue.push_back(task);
                g = self.context_switch(g, cpu, task, Some(next));
                g.tasks[next].progress = false;
                g.baton = Some(next);
                self.turn.notify_all();
                (self.resume_turn(g, task), false)
            }
            Decision::Migrate(to) => {
                let next = g.cpus[cpu].queue.pop_front();
                g = self.context_switch(g, cpu, task, next);
                g.tasks[task].cpu = to;
                let baton = if g.cpus[to].current.is_none() {
                    g.cpus[to].current = Some(task);
                    g = self.switch_in(g, to, task);
                    g.tasks[task].progress = false;
                    task
                } else {
                    g.cpus[to].queue.push_back(task);
                    let other = next.or(g.cpus[to].current).expect("busy target CPU");
                    g.tasks[other].progress = false;
                    other
                };
                g.baton = Some(baton);
                self.turn.notify_all();
                (self.resume_turn(g, task), false)
            }
        }
    }

    /// Switches `cpu` from `prev` to `next` (or to idle), calling the arch's
    /// context-switch hooks.
    fn context_switch<'a>(
        &'a self,
        mut g: Guard<'a, 'c>,
        cpu: usize,
        prev: usize,
        next: Option<usize>,
    ) -> Guard<'a, 'c> {
        g = self.switch_out(g, cpu, prev);
        g.cpus[cpu].current = next;
        match next {
            Some(next) => self.switch_in(g, cpu, next),
            None => g,
        }
    }

    fn switch_out<'a>(&'a self, mut g: Guard<'a, 'c>, cpu: usize, prev: usize) -> Guard<'a, 'c> {
        g.log(Event::Hook(prev, "switch-out"));
        match g.spec.arch {
            // `xen_start_context_switch`: leave lazy mode if this CPU is in
            // it (arch/x86/xen/enlighten_pv.c).
            Arch::XenPv => {
                if g.cpus[cpu].xen_lazy {
                    g.xen_issue(cpu, prev);
                    g.cpus[cpu].xen_lazy = false;
                }
            }
            // `__switch_to` issues `dsb(ish)` (arch/arm64/kernel/process.c),
            // which completes this CPU's page-table stores.
            Arch::Arm64 => g.dsb(cpu),
        }
        g
    }

    fn switch_in<'a>(&'a self, mut g: Guard<'a, 'c>, cpu: usize, next: usize) -> Guard<'a, 'c> {
        g.log(Event::Hook(next, "switch-in"));
        if g.spec.arch == Arch::XenPv && g.tasks[next].state.is_active() {
            // `xen_end_context_switch`: re-enter if the next task is in
            // lazy mode.
            g = self.xen_enter(g, cpu, next);
        }
        g
    }

    fn xen_enter<'a>(&'a self, mut g: Guard<'a, 'c>, cpu: usize, task: usize) -> Guard<'a, 'c> {
        if g.cpus[cpu].xen_lazy {
            let name = g.spec.tasks[task].name;
            self.fail(
                g,
                "3: arch enter/leave alternate per CPU",
                format!("cpu{cpu} entered Xen lazy MMU mode twice (task {name})"),
            );
        }
        g.cpus[cpu].xen_lazy = true;
        g
    }

    /// A task finished its script: check it lost nothing, then hand the CPU
    /// to the next waiting task or the baton to another CPU.
    fn finish<'a>(&'a self, mut g: Guard<'a, 'c>, task: usize) {
        g.log(Event::Done(task));
        g.tasks[task].done = true;
        if let Some(detail) = g.lost_writes(task) {
            self.fail(g, "4: batched state is never lost", detail);
        }
        let cpu = g.tasks[task].cpu;
        let next = g.cpus[cpu].queue.pop_front();
        g = self.context_switch(g, cpu, task, next);
        if let Some(next) = next {
            g.tasks[next].progress = true;
        }
        let baton = next.or_else(|| g.cpus.iter().find_map(|c| c.current));
        g.baton = baton;
        drop(g);
        self.turn.notify_all();
    }
}

impl Inner<'_> {
    fn log(&mut self, event: Event) {
        if self.events.len() == EVENT_LOG {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    fn describe(&self, event: Event) -> String {
        let name = |t: usize| self.spec.tasks[t].name;
        match event {
            Event::Step(t, cpu, a) => format!("cpu{cpu} {}: {a:?}", name(t)),
            Event::Irq(t, cpu, a) => format!("cpu{cpu} irq (over {}): {a:?}", name(t)),
            Event::Hook(t, h) => format!("{}: {h}", name(t)),
            Event::Store(t, s) => format!(
                "{}: store enable={} pause={}",
                name(t),
                s.enable_count,
                s.pause_count
            ),
            Event::Decide(t, d) => match d {
                Decision::Continue => format!("{}: continue", name(t)),
                Decision::Interrupt => format!("{}: interrupt", name(t)),
                Decision::RunOther(o) => format!("{}: other CPU runs {}", name(t), name(o)),
                Decision::SwitchTo(o) => format!("{}: preempted, switch to {}", name(t), name(o)),
                Decision::Migrate(c) => format!("{}: migrate to cpu{c}", name(t)),
            },
            Event::Apply(t, e, v) => format!("{}: entry {e} = {v:#x} visible", name(t)),
            Event::Done(t) => format!("{}: done", name(t)),
        }
    }

    /// The options at a choice point of `task`; `Continue` first.
    fn options(&self, task: usize) -> Vec<Decision> {
        let t = &self.tasks[task];
        let cpu = &self.cpus[t.cpu];
        let mut options = vec![Decision::Continue];
        if !self.spec.handler.is_empty()
            && cpu.irq_depth == 0
            && self.interrupts < self.spec.max_interrupts
        {
            options.push(Decision::Interrupt);
        }
        if !t.progress {
            return options;
        }
        for (i, other) in self.cpus.iter().enumerate() {
            if i != t.cpu {
                if let Some(o) = other.current {
                    options.push(Decision::RunOther(o));
                }
            }
        }
        if cpu.preempt == 0 && cpu.irq_depth == 0 {
            options.extend(cpu.queue.iter().map(|&w| Decision::SwitchTo(w)));
            if self.spec.migrate {
                options.extend(
                    (0..self.cpus.len())
                        .filter(|&c| c != t.cpu)
                        .map(Decision::Migrate),
                );
            }
        }
        options
    }

    /// Everything that determines the rest of the run.
    fn digest(&self, task: usize) -> u64 {
        let mut h = DefaultHasher::new();
        task.hash(&mut h);
        self.cpus.hash(&mut h);
        self.tasks.hash(&mut h);
        self.memory.hash(&mut h);
        self.expected.hash(&mut h);
        self.interrupts.hash(&mut h);
        h.finish()
    }

    /// Makes a write visible to the walker.
    fn apply(&mut self, p: Pending) {
        self.memory[usize::from(p.entry)] = p.value;
        self.log(Event::Apply(p.task, p.entry, p.value));
    }

    /// Xen: issue the multicall buffer.
    fn xen_issue(&mut self, cpu: usize, _by: usize) {
        for p in std::mem::take(&mut self.cpus[cpu].pending) {
            self.apply(p);
        }
    }

    /// arm64: `dsb ishst` on `cpu`.
    fn dsb(&mut self, cpu: usize) {
        for p in std::mem::take(&mut self.cpus[cpu].pending) {
            self.apply(p);
        }
    }

    /// The first write of `task` the walker does not see, if any.
    fn unseen_write(&self, task: usize) -> Option<(u8, u64, u64)> {
        self.expected
            .iter()
            .enumerate()
            .find_map(|(e, x)| match *x {
                Some((value, writer)) if writer == task && self.memory[e] != value => {
                    Some((e as u8, value, self.memory[e]))
                }
                _ => None,
            })
    }

    fn lost_writes(&self, task: usize) -> Option<String> {
        let (e, value, seen) = self.unseen_write(task)?;
        Some(format!(
            "task {} finished with entry {e} = {value:#x} never applied (walker sees {seen:#x})",
            self.spec.tasks[task].name
        ))
    }
}

/// The library's view of the current task: forwards to the machine.
pub struct TaskEnv<'s, 'c> {
    shared: &'s Shared<'c>,
    task: usize,
}

impl TaskEnv<'_, '_> {
    fn mix(&self, g: &mut Guard<'_, '_>, what: u64) {
        let t = &mut g.tasks[self.task];
        t.call = t.call.rotate_left(7) ^ what.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn store(&self, state: LazyState, on_cpu: bool) {
        let mut g = self.shared.lock();
        if g.abort {
            return;
        }
        let cpu = g.tasks[self.task].cpu;
        if on_cpu {
            g.cpus[cpu].lazy_state = state;
        } else {
            g.tasks[self.task].state = state;
        }
        g.log(Event::Store(self.task, state));
        self.mix(
            &mut g,
            0x100 | u64::from(state.enable_count) << 8 | u64::from(state.pause_count),
        );
        // The window between the counter store and the arch hook.
        if g.cpus[cpu].irq_depth == 0 {
            let (g, irq) = self.shared.choice_point(g, self.task);
            drop(g);
            if irq {
                run_handler(self.shared, self.task);
            }
        }
    }
}

impl Environment for TaskEnv<'_, '_> {
    fn lazy_state(&self) -> LazyState {
        let mut g = self.shared.lock();
        let state = g.tasks[self.task].state;
        self.mix(&mut g, 1);
        state
    }
    fn set_lazy_state(&self, state: LazyState) {
        self.store(state, false);
    }
    fn in_interrupt(&self) -> bool {
        let mut g = self.shared.lock();
        let cpu = g.tasks[self.task].cpu;
        let irq = g.cpus[cpu].irq_depth > 0 && !g.spec.faults.hide_interrupts;
        self.mix(&mut g, 2 | u64::from(irq) << 4);
        irq
    }
    fn preempt_disable(&self) {
        let mut g = self.shared.lock();
        if g.spec.faults.preemptible_transitions || g.abort {
            return;
        }
        let cpu = g.tasks[self.task].cpu;
        g.cpus[cpu].preempt += 1;
        self.mix(&mut g, 3);
    }
    fn preempt_enable(&self) {
        let mut g = self.shared.lock();
        if g.spec.faults.preemptible_transitions || g.abort {
            return;
        }
        let cpu = g.tasks[self.task].cpu;
        g.cpus[cpu].preempt = g.cpus[cpu].preempt.saturating_sub(1);
        self.mix(&mut g, 4);
    }
}

impl PerCpuEnvironment for TaskEnv<'_, '_> {
    fn cpu_lazy_state(&self) -> LazyState {
        let mut g = self.shared.lock();
        let cpu = g.tasks[self.task].cpu;
        let state = g.cpus[cpu].lazy_state;
        self.mix(&mut g, 5);
        state
    }
    fn set_cpu_lazy_state(&self, state: LazyState) {
        self.store(state, true);
    }
}

/// The arch hooks of the current task's CPU.
pub struct TaskArch<'s, 'c> {
    shared: &'s Shared<'c>,
    task: usize,
}

impl<'s, 'c> TaskArch<'s, 'c> {
    fn hook(&self, name: &'static str) -> Option<(Guard<'s, 'c>, usize)> {
        let mut g = self.shared.lock();
        if g.abort {
            return None;
        }
        let cpu = g.tasks[self.task].cpu;
        g.log(Event::Hook(self.task, name));
        let t = &mut g.tasks[self.task];
        t.call = t.call.rotate_left(7) ^ name.len() as u64;
        Some((g, cpu))
    }
}

impl ArchHooks for TaskArch<'_, '_> {
    fn enter(&self) {
        let Some((g, cpu)) = self.hook("enter") else {
            return;
        };
        if g.spec.arch == Arch::XenPv {
            drop(self.shared.xen_enter(g, cpu, self.task));
        }
    }

    fn leave(&self) {
        let Some((mut g, cpu)) = self.hook("leave") else {
            return;
        };
        match g.spec.arch {
            Arch::XenPv => {
                if !g.cpus[cpu].xen_lazy {
                    let name = g.spec.tasks[self.task].name;
                    self.shared.fail(
                        g,
                        "3: arch enter/leave alternate per CPU",
                        format!("cpu{cpu} left Xen lazy MMU mode it was not in (task {name})"),
                    );
                }
                g.xen_issue(cpu, self.task);
                g.cpus[cpu].xen_lazy = false;
            }
            Arch::Arm64 => arm64_flush(&mut g, cpu, self.task),
        }
    }

    fn flush(&self) {
        let Some((mut g, cpu)) = self.hook("flush") else {
            return;
        };
        if g.spec.faults.flush_is_noop {
            return;
        }
        match g.spec.arch {
            Arch::XenPv => {
                if g.cpus[cpu].xen_lazy {
                    g.xen_issue(cpu, self.task);
                }
            }
            Arch::Arm64 => arm64_flush(&mut g, cpu, self.task),
        }
    }
}

/// arm64 `arch_flush_lazy_mmu_mode`: if the task has barriers pending,
/// `dsb ishst; isb` (arch/arm64/include/asm/pgtable.h, `emit_pte_barriers`).
fn arm64_flush(g: &mut Guard<'_, '_>, cpu: usize, task: usize) {
    if std::mem::take(&mut g.tasks[task].barrier_pending) {
        g.dsb(cpu);
    }
}

/// Writes an entry through the arch model. `batch` is the library's
/// `is_active()` answer, asked by the caller before taking the lock.
fn write_entry(shared: &Shared<'_>, task: usize, entry: u8, kernel: bool, batch: bool) {
    let mut g = shared.lock();
    let cpu = g.tasks[task].cpu;
    g.next_value += 1;
    let value = (task as u64 + 1) << 32 | g.next_value;
    g.expected[usize::from(entry)] = Some((value, task));
    let in_irq = g.cpus[cpu].irq_depth > 0;
    let p = Pending { entry, value, task };
    match g.spec.arch {
        Arch::XenPv => {
            if batch && g.cpus[cpu].xen_lazy {
                if !in_irq && g.tasks[task].sections == 0 {
                    let name = g.spec.tasks[task].name;
                    shared.fail(
                        g,
                        "4: batched state belongs to the task that opened the section",
                        format!(
                            "task {name} outside any section had its write to entry {entry} \
                             batched on cpu{cpu}"
                        ),
                    );
                }
                g.cpus[cpu].pending.push(p);
                if g.cpus[cpu].pending.len() == XEN_MULTICALL_ENTRIES {
                    g.xen_issue(cpu, task);
                }
            } else {
                g.apply(p);
            }
        }
        Arch::Arm64 => {
            g.cpus[cpu].pending.push(p);
            if kernel && batch {
                g.tasks[task].barrier_pending = true;
            } else {
                // Outside a section every kernel write is followed by its
                // own `dsb ishst; isb`; user entries are not affected by
                // the deferred barriers and complete at once in this model.
                g.dsb(cpu);
            }
        }
    }
    if in_irq && g.memory[usize::from(entry)] != value {
        shared.fail(
            g,
            "2: interrupt-context updates take effect immediately",
            format!("the interrupt handler on cpu{cpu} wrote entry {entry} and the walker does not see it"),
        );
    }
}

/// The walker's view of an entry, for a read-back.
fn read_entry(shared: &Shared<'_>, task: usize, entry: u8) {
    let g = shared.lock();
    let seen = g.memory[usize::from(entry)];
    if let Some((value, writer)) = g.expected[usize::from(entry)] {
        if writer == task && seen != value {
            let name = g.spec.tasks[task].name;
            shared.fail(
                g,
                "6: a read-back inside a section sees a stale batched value",
                format!("task {name} read entry {entry} as {seen:#x} after writing {value:#x}"),
            );
        }
    }
}

/// The task's library instance, whichever design the spec asks for.
enum Mode<'s, 'c> {
    Counters(Counters<TaskEnv<'s, 'c>, TaskArch<'s, 'c>>),
    PerCpu(PerCpu<TaskEnv<'s, 'c>, TaskArch<'s, 'c>>),
}

impl<'s, 'c> Mode<'s, 'c> {
    fn new(shared: &'s Shared<'c>, task: usize, design: Design) -> Self {
        let env = TaskEnv { shared, task };
        let arch = TaskArch { shared, task };
        match design {
            Design::Counters => Mode::Counters(Counters::new(env, arch, MisusePolicy::Count)),
            Design::PerCpu => Mode::PerCpu(PerCpu::new(env, arch, MisusePolicy::Count)),
        }
    }

    fn lazy(&self) -> &dyn LazyMode<Token = ()> {
        match self {
            Mode::Counters(m) => m,
            Mode::PerCpu(m) => m,
        }
    }
}

/// Runs one action of `task` (or of the handler, `in_irq`).
fn perform(shared: &Shared<'_>, mode: &Mode<'_, '_>, task: usize, action: Action, in_irq: bool) {
    let lazy = mode.lazy();
    let result = match action {
        Action::Enable => lazy.enable().map(|_| ()),
        Action::Disable => lazy.disable(()).map(|_| ()),
        Action::Pause => lazy.pause_raw().map(|_| ()),
        Action::Resume => lazy.resume(()).map(|_| ()),
        Action::Write { entry, kernel } => {
            let batch = lazy.is_active();
            write_entry(shared, task, entry, kernel, batch);
            Ok(())
        }
        Action::ReadBack { entry } => {
            read_entry(shared, task, entry);
            Ok(())
        }
    };
    let mut g = shared.lock();
    if let Err(misuse) = result {
        let name = g.spec.tasks[task].name;
        shared.fail(
            g,
            "2-byte state consistent: no misuse",
            format!("task {name}: {misuse} (the library refused a correctly nested call)"),
        );
    }
    if in_irq {
        return;
    }
    let t = &mut g.tasks[task];
    match action {
        Action::Enable => t.sections += 1,
        Action::Pause => t.pauses += 1,
        Action::Resume => t.pauses = t.pauses.saturating_sub(1),
        Action::Disable => {
            t.sections = t.sections.saturating_sub(1);
            if let Some((e, value, seen)) = g.unseen_write(task) {
                let name = g.spec.tasks[task].name;
                shared.fail(
                    g,
                    "1: after disable the walker sees every earlier write",
                    format!(
                        "task {name} returned from disable with entry {e} = {value:#x} \
                         not visible (walker sees {seen:#x})"
                    ),
                );
            }
        }
        _ => {}
    }
}

/// Runs the interrupt handler on `task`'s CPU, in interrupt context.
fn run_handler(shared: &Shared<'_>, task: usize) {
    let design = {
        let mut g = shared.lock();
        let cpu = g.tasks[task].cpu;
        g.cpus[cpu].irq_depth += 1;
        g.spec.design
    };
    // The handler's library calls go through the same per-task mode
    // object a kernel would use: the ambient current task.
    let mode = Mode::new(shared, task, design);
    let handler = shared.lock().spec.handler.clone();
    for action in handler {
        {
            let mut g = shared.lock();
            let cpu = g.tasks[task].cpu;
            g.log(Event::Irq(task, cpu, action));
        }
        perform(shared, &mode, task, action, true);
    }
    let mut g = shared.lock();
    let cpu = g.tasks[task].cpu;
    g.cpus[cpu].irq_depth -= 1;
}

/// The body of one task thread.
fn task_main(shared: &Shared<'_>, task: usize) {
    let g = shared.lock();
    let g = shared.wait_turn(g, task);
    let design = g.spec.design;
    let actions = g.spec.tasks[task].actions.clone();
    drop(g);
    let mode = Mode::new(shared, task, design);
    for (pc, action) in actions.into_iter().enumerate() {
        let mut g = shared.lock();
        g.tasks[task].pc = pc;
        g.tasks[task].call = 0;
        let (mut g, irq) = shared.choice_point(g, task);
        if irq {
            drop(g);
            run_handler(shared, task);
            g = shared.lock();
        }
        let cpu = g.tasks[task].cpu;
        g.log(Event::Step(task, cpu, action));
        drop(g);
        perform(shared, &mode, task, action, false);
    }
    let g = shared.lock();
    shared.finish(g, task);
}

impl Spec {
    /// Runs the machine once, asking `chooser` at every choice point.
    pub fn run_once(&self, chooser: &mut dyn Chooser) -> RunOutcome {
        let mut cpus = vec![Cpu::default(); self.cpus];
        let mut tasks = vec![Task::default(); self.tasks.len()];
        for (i, spec) in self.tasks.iter().enumerate() {
            tasks[i].cpu = spec.cpu;
            tasks[i].progress = true;
            let cpu = &mut cpus[spec.cpu];
            if cpu.current.is_none() {
                cpu.current = Some(i);
            } else {
                cpu.queue.push_back(i);
            }
        }
        let baton = cpus.iter().find_map(|c| c.current);
        let shared = Shared {
            inner: Mutex::new(Inner {
                spec: self,
                cpus,
                tasks,
                memory: [0; ENTRIES],
                expected: [None; ENTRIES],
                next_value: 0,
                interrupts: 0,
                baton,
                abort: false,
                violation: None,
                stopped: false,
                events: VecDeque::with_capacity(EVENT_LOG),
                chooser,
            }),
            turn: Condvar::new(),
        };
        let mut crash = None;
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..self.tasks.len())
                .map(|task| {
                    let shared = &shared;
                    scope.spawn(move || {
                        panic::catch_unwind(AssertUnwindSafe(|| task_main(shared, task)))
                    })
                })
                .collect();
            for handle in handles {
                if let Ok(Err(payload)) = handle.join() {
                    if !payload.is::<Aborted>() && crash.is_none() {
                        crash = Some(panic_message(&payload));
                        let mut g = shared.lock();
                        g.abort = true;
                        drop(g);
                        shared.turn.notify_all();
                    }
                }
            }
        });
        let inner = shared.inner.into_inner().unwrap_or_else(|e| e.into_inner());
        let violation = inner.violation.or_else(|| {
            crash.map(|message| Violation {
                invariant: "no panic".into(),
                detail: message,
                events: Vec::new(),
            })
        });
        RunOutcome {
            violation,
            stopped: inner.stopped,
        }
    }
}

fn panic_message(payload: &Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_owned())
}

impl System for Spec {
    fn run(&self, chooser: &mut dyn Chooser) -> RunOutcome {
        self.run_once(chooser)
    }
}
