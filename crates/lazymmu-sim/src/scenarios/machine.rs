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
//! unmodified: each task owns a [`LazyMode`] built over a task environment
//! and arch hooks that forward to the machine.
//!
//! Choice points (DESIGN.md §6) come before every step of a task and right
//! after every store of a lazy state. At each, option 0 continues; the
//! others, each costing one preemption, are: take an interrupt (its handler
//! changes kernel mappings), let another CPU run, preempt and switch to a
//! task waiting on this CPU, and migrate the task to another CPU. The last
//! two are offered only when preemption is enabled.
//!
//! The arch side is the library's own backend ([`XenPv`] or [`Arm64`]),
//! driven through its [`ArchHooks`], [`PteAccess`] and [`ContextSwitch`]
//! traits over primitives this machine implements:
//!
//! - **Xen PV**: `mmu_update` and `multicall` store entries in the modelled
//!   memory when they are made, so a queued write is invisible until its
//!   batch is issued; a [`BackendBug`] report (double enter, leave outside
//!   the mode) is a violation of invariant 3, as the hypervisor's `BUG_ON`
//!   would be.
//! - **arm64**: a kernel-entry store reaches the walker only at the next
//!   `dsb` on the writing CPU; the pending-barrier flag lives in the task.
//!
//! Choice points are offered only by the environment (never inside a
//! backend primitive), so the backends run their per-CPU updates as they
//! would with interrupts masked around each small update.

use std::cell::RefCell;
use std::collections::hash_map::DefaultHasher;
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Condvar, Mutex};

use lazymmu::addr::{PhysAddr, SpaceId, VirtAddr};
use lazymmu::backend::arm64::{Arm64, Arm64Primitives, Dsb};
use lazymmu::backend::machine::{BackendBug, CpuPrimitives};
use lazymmu::backend::protected::{Arm64Poe, KeyFlavour, KeyRegister, KeySlot, Poe};
use lazymmu::backend::xen_pv::{MmuExtOp, MmuUpdate, MulticallEntry, XenPrimitives, XenPv};
use lazymmu::backend::{ContextSwitch, EntryUpdate, FlushScope, PteAccess, TlbFlush};
use lazymmu::mode::counters::Counters;
use lazymmu::mode::percpu::{PerCpu, PerCpuEnvironment};
use lazymmu::mode::stateful::{Stateful, StatefulArch};
use lazymmu::mode::{
    ArchHooks, Environment, Hook, LazyMode, LazyState, Misuse, MisusePolicy, Op, Step,
};
use lazymmu::pgtable::allocator::FrameAllocator;
use lazymmu::pgtable::gather::Gather;

use crate::explore::{ChoicePoint, Chooser, RunOutcome, System, Violation};

/// Entries of the modelled page-table memory; scenarios use a few.
pub const ENTRIES: usize = 16;

const KEY_ALLOWS: &str = "5: page-table writes happen only while the key register allows them";
const KEY_RESTORED: &str =
    "5: the key register is restored exactly after every section and exception";

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
    /// Unlinks PTE table `table` (covering 2 MiB at `table` × 2 MiB) and
    /// frees its frame through the library's TLB gather, as
    /// `free_pgtables` does after a zap.
    FreeTable {
        /// Which of the scenario's PTE tables.
        table: u8,
    },
}

/// The arch model a scenario runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    /// Xen PV guest: the library's [`XenPv`] backend.
    XenPv,
    /// arm64: the library's [`Arm64`] backend.
    Arm64,
    /// arm64 with page tables protected by POE: the library's
    /// [`Protected`](lazymmu::backend::protected::Protected) backend over
    /// [`Arm64`].
    Arm64Poe,
}

/// Which lazy-mode design the tasks run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Design {
    /// [`Counters`]: the state in the task.
    Counters,
    /// [`PerCpu`]: the state on the CPU, preemption off in the section.
    PerCpu,
    /// [`Stateful`]: each section's state on the caller's stack, including
    /// the key-register value it found ([`KeyedSections`]).
    Stateful,
    /// Known bad: [`Stateful`] sections that save the key register in one
    /// per-task slot, so a nested section overwrites the outer one's.
    StatefulSingleSlot,
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
    /// The gather frees page-table frames before the flush that covers
    /// them ([`Gather::new_free_before_flush`]).
    pub free_before_flush: bool,
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
    /// PTE tables every CPU's paging-structure cache holds at the start
    /// (as if each had walked them).
    pub cached_tables: Vec<u8>,
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
    Hook(usize, usize, &'static str),
    Store(usize, LazyState),
    Decide(usize, Decision),
    Apply(usize, u8, u64),
    Done(usize),
}

#[derive(Clone, Debug, Default, Hash)]
struct Cpu {
    current: Option<usize>,
    queue: VecDeque<usize>,
    irq_depth: u32,
    preempt: u32,
    /// Per-CPU lazy state (the per-CPU design).
    lazy_state: LazyState,
    /// Whether the backend is in lazy mode on this CPU, as its documented
    /// hooks imply (enter sets, leave and switch-out clear, switch-in sets
    /// for an active task). Used only in the state digest: the backend's
    /// own flag is private.
    entered: bool,
    /// arm64: kernel-entry stores not yet made visible by a `dsb`.
    store_buffer: Vec<(u8, u64)>,
    /// The protection-key register (POE's `POR_EL1`).
    key: u64,
    /// PTE tables this CPU's paging-structure cache still points to.
    walk_cache: Vec<u8>,
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
    /// The task's saved key-register copies ([`KeySlot::Live`],
    /// [`KeySlot::Section`]).
    key_live: Option<u64>,
    key_section: Option<u64>,
    /// Digest of the library calls made since the current step began:
    /// determines the rest of an interrupted call.
    call: u64,
}

struct Inner<'c> {
    spec: &'c Spec,
    cpus: Vec<Cpu>,
    tasks: Vec<Task>,
    /// The CPU whose code runs now (the baton holder's, or the CPU a
    /// context switch is working on).
    running_cpu: usize,
    memory: [u64; ENTRIES],
    /// Last value written to each entry and by whom.
    expected: [Option<(u64, usize)>; ENTRIES],
    /// Whether the entry being written maps kernel memory (arm64 keeps
    /// such stores in the store buffer until a `dsb`).
    writing_kernel: bool,
    next_value: u64,
    interrupts: u32,
    violation: Option<Violation>,
    stopped: bool,
    events: VecDeque<Event>,
    chooser: &'c mut dyn Chooser,
}

#[derive(Debug, Default)]
struct Baton {
    holder: Option<usize>,
    abort: bool,
}

/// Unwinds a task thread when the run is over early; not an error.
struct Aborted;

/// The machine: its state, and the baton that says which task thread runs.
struct Machine<'c> {
    state: RefCell<Inner<'c>>,
    baton: Mutex<Baton>,
    turn: Condvar,
}

// SAFETY: the `RefCell` state (and the backend, see `Kernel`) is touched
// only by the thread holding the baton. The baton moves between threads
// through `baton`'s mutex, whose release by the old holder and
// acquisition by the new one order every access of the old holder before
// every access of the new one. A thread that is not the holder only waits
// on the condition variable or unwinds without touching the state.
unsafe impl Sync for Machine<'_> {}

impl<'c> Machine<'c> {
    fn with<R>(&self, f: impl FnOnce(&mut Inner<'c>) -> R) -> R {
        f(&mut self.state.borrow_mut())
    }

    fn aborted(&self) -> bool {
        self.baton.lock().unwrap_or_else(|e| e.into_inner()).abort
    }

    fn abort(&self) {
        self.baton.lock().unwrap_or_else(|e| e.into_inner()).abort = true;
        self.turn.notify_all();
    }

    /// Hands the baton to `next` (or to nobody: the run is over).
    fn hand_to(&self, next: Option<usize>) {
        self.baton.lock().unwrap_or_else(|e| e.into_inner()).holder = next;
        self.turn.notify_all();
    }

    /// Blocks until `task` holds the baton; unwinds if the run was aborted.
    fn wait_turn(&self, task: usize) {
        let mut b = self.baton.lock().unwrap_or_else(|e| e.into_inner());
        while b.holder != Some(task) && !b.abort {
            b = self.turn.wait(b).unwrap_or_else(|e| e.into_inner());
        }
        let abort = b.abort;
        drop(b);
        if abort {
            panic::resume_unwind(Box::new(Aborted));
        }
        self.with(|s| s.running_cpu = s.tasks[task].cpu);
    }

    /// Records a violation, ends the run and unwinds the calling task.
    fn fail(&self, invariant: &str, detail: String) -> ! {
        if !self.aborted() {
            self.with(|s| {
                if s.violation.is_none() {
                    let events = s.events.iter().map(|e| s.describe(*e)).collect();
                    s.violation = Some(Violation {
                        invariant: invariant.to_owned(),
                        detail,
                        events,
                    });
                }
            });
        }
        self.abort();
        panic::resume_unwind(Box::new(Aborted));
    }
}

/// The library's backend for the scenario's arch, over this machine.
enum Backend<'m, 'c> {
    // Boxed: the per-CPU multicall buffers make it large.
    XenPv(Box<XenPv<Prims<'m, 'c>>>),
    Arm64(Box<Arm64<Prims<'m, 'c>>>),
    Arm64Poe(Box<Arm64Poe<Prims<'m, 'c>>>),
}

impl Backend<'_, '_> {
    fn hooks(&self) -> &dyn ArchHooks {
        match self {
            Backend::XenPv(b) => &**b,
            Backend::Arm64(b) => &**b,
            Backend::Arm64Poe(b) => &**b,
        }
    }
    fn pte(&self) -> &dyn PteAccess {
        match self {
            Backend::XenPv(b) => &**b,
            Backend::Arm64(b) => &**b,
            Backend::Arm64Poe(b) => &**b,
        }
    }
    fn tlb(&self) -> &dyn TlbFlush {
        match self {
            Backend::XenPv(b) => &**b,
            Backend::Arm64(b) => &**b,
            Backend::Arm64Poe(b) => &**b,
        }
    }
    fn switch(&self) -> &dyn ContextSwitch {
        match self {
            Backend::XenPv(b) => &**b,
            Backend::Arm64(b) => &**b,
            Backend::Arm64Poe(b) => &**b,
        }
    }
}

/// Everything a task thread uses: the machine and the backend.
struct Kernel<'m, 'c> {
    m: &'m Machine<'c>,
    backend: Backend<'m, 'c>,
}

// SAFETY: the backend's cells are used only by the baton holder, exactly
// like the machine's state (see `Machine`'s `Sync`).
unsafe impl Sync for Kernel<'_, '_> {}

impl<'m, 'c> Kernel<'m, 'c> {
    /// A choice point for `task`, the baton holder. Returns with the baton
    /// held again; `true` asks the caller to run the interrupt handler.
    fn choice_point(&self, task: usize) -> bool {
        let m = self.m;
        let choice = m.with(|s| {
            let options = s.options(task);
            let point = ChoicePoint {
                options: options.len(),
                free: 1,
                digest: Some(s.digest(task)),
            };
            s.chooser
                .choose(&point)
                .map(|c| options[c.min(options.len() - 1)])
        });
        let Some(decision) = choice else {
            m.with(|s| s.stopped = true);
            m.abort();
            panic::resume_unwind(Box::new(Aborted));
        };
        let cpu = m.with(|s| {
            if decision != Decision::Continue {
                s.log(Event::Decide(task, decision));
            }
            s.tasks[task].cpu
        });
        match decision {
            Decision::Continue => {
                m.with(|s| s.tasks[task].progress = true);
                false
            }
            Decision::Interrupt => {
                m.with(|s| {
                    s.interrupts += 1;
                    s.tasks[task].progress = true;
                });
                true
            }
            Decision::RunOther(other) => {
                m.with(|s| s.tasks[other].progress = false);
                self.yield_to(task, Some(other));
                false
            }
            Decision::SwitchTo(next) => {
                m.with(|s| {
                    s.cpus[cpu].queue.retain(|&t| t != next);
                    s.cpus[cpu].queue.push_back(task);
                    s.tasks[next].progress = false;
                });
                self.context_switch(cpu, task, Some(next));
                self.yield_to(task, Some(next));
                false
            }
            Decision::Migrate(to) => {
                let next = m.with(|s| s.cpus[cpu].queue.pop_front());
                self.context_switch(cpu, task, next);
                let idle = m.with(|s| {
                    s.tasks[task].cpu = to;
                    s.cpus[to].current.is_none()
                });
                if idle {
                    m.with(|s| {
                        s.cpus[to].current = Some(task);
                        s.tasks[task].progress = false;
                    });
                    self.switch_in(to, task);
                    m.with(|s| s.running_cpu = to);
                } else {
                    let other = m.with(|s| {
                        s.cpus[to].queue.push_back(task);
                        let other = next.or(s.cpus[to].current).expect("busy target CPU");
                        s.tasks[other].progress = false;
                        other
                    });
                    self.yield_to(task, Some(other));
                }
                false
            }
        }
    }

    /// Gives the baton to `next` and waits for it to come back.
    fn yield_to(&self, task: usize, next: Option<usize>) {
        self.m.hand_to(next);
        self.m.wait_turn(task);
        // It resumes by completing the step it was about to take, so its
        // next choice point may preempt it again.
        self.m.with(|s| s.tasks[task].progress = true);
    }

    /// Switches `cpu` from `prev` to `next` (or to idle) through the
    /// backend's context-switch hooks.
    fn context_switch(&self, cpu: usize, prev: usize, next: Option<usize>) {
        let state = self.m.with(|s| {
            s.running_cpu = cpu;
            s.log(Event::Hook(prev, cpu, "switch-out"));
            s.tasks[prev].state
        });
        self.backend.switch().switch_out(state);
        self.m.with(|s| {
            s.cpus[cpu].entered = false;
            s.cpus[cpu].current = next;
        });
        if let Some(next) = next {
            self.switch_in(cpu, next);
        }
    }

    fn switch_in(&self, cpu: usize, next: usize) {
        let state = self.m.with(|s| {
            s.running_cpu = cpu;
            s.log(Event::Hook(next, cpu, "switch-in"));
            s.tasks[next].state
        });
        self.backend.switch().switch_in(state);
        if state.is_active() {
            self.m.with(|s| s.cpus[cpu].entered = true);
        }
    }

    /// A task finished its script: check it lost nothing, then hand the CPU
    /// to the next waiting task or the baton to another CPU.
    fn finish(&self, task: usize) {
        let lost = self.m.with(|s| {
            s.log(Event::Done(task));
            s.tasks[task].done = true;
            s.lost_writes(task)
        });
        if let Some(detail) = lost {
            self.m.fail("4: batched state is never lost", detail);
        }
        let (cpu, next) = self.m.with(|s| {
            let cpu = s.tasks[task].cpu;
            (cpu, s.cpus[cpu].queue.pop_front())
        });
        self.context_switch(cpu, task, next);
        let holder = self.m.with(|s| {
            if let Some(next) = next {
                s.tasks[next].progress = true;
            }
            next.or_else(|| s.cpus.iter().find_map(|c| c.current))
        });
        self.m.hand_to(holder);
    }

    /// Writes an entry through the backend and checks what the walker sees.
    fn write(&self, task: usize, entry: u8, kernel: bool, in_irq: bool) {
        let (value, cpu, outside) = self.m.with(|s| {
            s.next_value += 1;
            let value = (task as u64 + 1) << 32 | s.next_value;
            s.expected[usize::from(entry)] = Some((value, task));
            s.writing_kernel = kernel;
            let t = &s.tasks[task];
            (value, t.cpu, t.sections == 0 || t.pauses > 0)
        });
        self.backend.pte().write_entry(EntryUpdate {
            entry: entry_address(entry),
            va: VirtAddr(u64::from(entry) << 12),
            space: if kernel { SpaceId::KERNEL } else { SpaceId(1) },
            level: 1,
            value,
            kernel,
            valid: true,
            leaf: true,
        });
        let seen = self.m.with(|s| s.memory[usize::from(entry)]);
        if seen == value {
            return;
        }
        let name = self.m.with(|s| s.spec.tasks[task].name);
        if in_irq {
            self.m.fail(
                "2: interrupt-context updates take effect immediately",
                format!(
                    "the interrupt handler on cpu{cpu} wrote entry {entry} = {value:#x} \
                     and the walker still sees {seen:#x}"
                ),
            );
        }
        if outside {
            self.m.fail(
                "4: batched state belongs to the task that opened the section",
                format!(
                    "task {name}, outside any section, wrote entry {entry} = {value:#x} on \
                     cpu{cpu} and the write was deferred (walker sees {seen:#x})"
                ),
            );
        }
    }

    /// Unlinks a PTE table and frees it through a gather that flushes every
    /// CPU using the address space.
    fn free_table(&self, table: u8) {
        let (cpus, bad_order) = self
            .m
            .with(|s| (s.cpus.len(), s.spec.faults.free_before_flush));
        let allocator = Prims { m: self.m };
        let tlb = self.backend.tlb();
        let scope = FlushScope::Cpus((1u64 << cpus) - 1);
        let (frame, va) = (table_frame(table), VirtAddr(u64::from(table) << 21));
        if bad_order {
            let mut gather = Gather::new_free_before_flush(tlb, &allocator, SpaceId(1), scope);
            gather.remove_table(frame, va, 2);
            gather.finish();
        } else {
            let mut gather = Gather::new(tlb, &allocator, SpaceId(1), scope);
            gather.remove_table(frame, va, 2);
            gather.finish();
        }
    }

    /// Reads back an entry the task wrote, through the backend.
    fn read_back(&self, task: usize, entry: u8) {
        let seen = self.backend.pte().read_entry(entry_address(entry));
        let expected = self.m.with(|s| s.expected[usize::from(entry)]);
        if let Some((value, writer)) = expected {
            if writer == task && seen != value {
                let name = self.m.with(|s| s.spec.tasks[task].name);
                self.m.fail(
                    "6: a read-back inside a section sees a stale batched value",
                    format!("task {name} read entry {entry} as {seen:#x} after writing {value:#x}"),
                );
            }
        }
    }

    /// Runs one action of `task` (or of the handler, `in_irq`).
    fn perform(&self, mode: &Mode<'_, 'm, 'c>, task: usize, action: Action, in_irq: bool) {
        let result = match action {
            Action::Enable | Action::Disable | Action::Pause | Action::Resume => mode.act(action),
            Action::Write { entry, kernel } => {
                self.write(task, entry, kernel, in_irq);
                Ok(())
            }
            Action::ReadBack { entry } => {
                self.read_back(task, entry);
                Ok(())
            }
            Action::FreeTable { table } => {
                self.free_table(table);
                Ok(())
            }
        };
        if let Err(misuse) = result {
            let name = self.m.with(|s| s.spec.tasks[task].name);
            self.m.fail(
                "misuse: the library refused a correctly nested call",
                format!("task {name}: {misuse}"),
            );
        }
        if in_irq {
            return;
        }
        let unseen = self.m.with(|s| {
            let t = &mut s.tasks[task];
            match action {
                Action::Enable => t.sections += 1,
                Action::Pause => t.pauses += 1,
                Action::Resume => t.pauses = t.pauses.saturating_sub(1),
                Action::Disable => {
                    t.sections = t.sections.saturating_sub(1);
                    return s.unseen_write(task);
                }
                _ => {}
            }
            None
        });
        self.check_key_closed(task, action);
        if let Some((e, value, seen)) = unseen {
            let name = self.m.with(|s| s.spec.tasks[task].name);
            self.m.fail(
                "1: after disable the walker sees every earlier write",
                format!(
                    "task {name} returned from disable with entry {e} = {value:#x} \
                     not visible (walker sees {seen:#x})"
                ),
            );
        }
    }

    /// Invariant 5: once the script has closed every section and pause,
    /// the key register is back at its default exactly.
    fn check_key_closed(&self, task: usize, action: Action) {
        let open = self.m.with(|s| {
            let t = &s.tasks[task];
            let closing = matches!(action, Action::Disable | Action::Resume);
            (s.spec.arch == Arch::Arm64Poe
                && closing
                && t.sections == 0
                && t.pauses == 0
                && s.cpus[t.cpu].key != Poe::DEFAULT)
                .then(|| (t.cpu, s.cpus[t.cpu].key, s.spec.tasks[task].name))
        });
        if let Some((cpu, key, name)) = open {
            self.m.fail(
                KEY_RESTORED,
                format!(
                    "task {name} closed its last section on cpu{cpu} and the key register \
                     is {key:#x}, not the default {:#x}",
                    Poe::DEFAULT
                ),
            );
        }
    }

    /// Runs the interrupt handler on `task`'s CPU, in interrupt context.
    fn run_handler(&self, task: usize) {
        let (design, handler) = self.m.with(|s| {
            let cpu = s.tasks[task].cpu;
            s.cpus[cpu].irq_depth += 1;
            (s.spec.design, s.spec.handler.clone())
        });
        // The handler's library calls go through the mode of the
        // interrupted task, as a kernel's would: the current task.
        let mode = Mode::new(self, task, design);
        let (frame, interrupted) = match &self.backend {
            Backend::Arm64Poe(b) => {
                let interrupted = self.m.with(|s| {
                    s.running_cpu = s.tasks[task].cpu;
                    s.cpus[s.running_cpu].key
                });
                (Some(b.exception_enter()), interrupted)
            }
            _ => (None, 0),
        };
        for action in handler {
            self.m.with(|s| {
                let cpu = s.tasks[task].cpu;
                s.log(Event::Irq(task, cpu, action));
            });
            self.perform(&mode, task, action, true);
        }
        if let (Backend::Arm64Poe(b), Some(frame)) = (&self.backend, frame) {
            b.exception_exit(frame);
            let (cpu, key) = self.m.with(|s| (s.running_cpu, s.cpus[s.running_cpu].key));
            if key != interrupted {
                self.m.fail(
                    KEY_RESTORED,
                    format!(
                        "exception return on cpu{cpu} left the key register at {key:#x}, \
                         the interrupted value was {interrupted:#x}"
                    ),
                );
            }
        }
        self.m.with(|s| {
            let cpu = s.tasks[task].cpu;
            s.cpus[cpu].irq_depth -= 1;
        });
    }

    /// The body of one task thread.
    fn task_main(&self, task: usize) {
        self.m.wait_turn(task);
        let (design, actions) = self
            .m
            .with(|s| (s.spec.design, s.spec.tasks[task].actions.clone()));
        let mode = Mode::new(self, task, design);
        for (pc, action) in actions.into_iter().enumerate() {
            self.m.with(|s| {
                s.tasks[task].pc = pc;
                s.tasks[task].call = 0;
            });
            if self.choice_point(task) {
                self.run_handler(task);
            }
            self.m.with(|s| {
                let cpu = s.tasks[task].cpu;
                s.log(Event::Step(task, cpu, action));
            });
            self.perform(&mode, task, action, false);
        }
        self.finish(task);
    }
}

fn entry_address(entry: u8) -> PhysAddr {
    PhysAddr(0x1000 + 8 * u64::from(entry))
}

/// The frame of PTE table `table`.
fn table_frame(table: u8) -> PhysAddr {
    PhysAddr(0x10_0000 + 0x1000 * u64::from(table))
}

fn entry_index(address: PhysAddr) -> usize {
    let index = (address.0.wrapping_sub(0x1000) / 8) as usize;
    assert!(
        index < ENTRIES,
        "entry {address:?} outside the modelled table"
    );
    index
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
            Event::Hook(t, cpu, h) => format!("cpu{cpu} {}: {h}", name(t)),
            Event::Store(t, s) => format!(
                "{}: lazy state stored (enable {}, pause {})",
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
            Event::Apply(cpu, e, v) => format!("cpu{cpu}: entry {e} = {v:#x} visible"),
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
    fn apply(&mut self, entry: usize, value: u64) {
        self.memory[entry] = value;
        let cpu = self.running_cpu;
        self.log(Event::Apply(cpu, entry as u8, value));
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

/// The machine primitives the library's backend runs on.
#[derive(Clone, Copy)]
struct Prims<'m, 'c> {
    m: &'m Machine<'c>,
}

impl CpuPrimitives for Prims<'_, '_> {
    fn cpu_id(&self) -> usize {
        self.m.with(|s| s.running_cpu)
    }
    fn in_interrupt(&self) -> bool {
        self.m
            .with(|s| s.cpus[s.running_cpu].irq_depth > 0 && !s.spec.faults.hide_interrupts)
    }
    fn preempt_disable(&self) {
        self.m.with(|s| {
            let cpu = s.running_cpu;
            s.cpus[cpu].preempt += 1;
        });
    }
    fn preempt_enable(&self) {
        self.m.with(|s| {
            let cpu = s.running_cpu;
            s.cpus[cpu].preempt = s.cpus[cpu].preempt.saturating_sub(1);
        });
    }
    fn read_pte(&self, entry: PhysAddr) -> u64 {
        self.m.with(|s| s.memory[entry_index(entry)])
    }
    fn report(&self, bug: BackendBug) {
        let cpu = self.m.with(|s| s.running_cpu);
        let invariant = match bug {
            BackendBug::KeyFrameMismatch => KEY_RESTORED,
            _ => "3: arch enter/leave alternate per CPU",
        };
        self.m
            .fail(invariant, format!("the backend on cpu{cpu} reported {bug}"));
    }
}

impl Prims<'_, '_> {
    /// Invariant 5: a page-table store faults unless the key register
    /// allows it.
    fn check_key(&self, entry: PhysAddr) {
        let denied = self.m.with(|s| {
            s.spec.arch == Arch::Arm64Poe
                && !Poe::allows_page_table_writes(s.cpus[s.running_cpu].key)
        });
        if denied {
            let (cpu, key) = self.m.with(|s| (s.running_cpu, s.cpus[s.running_cpu].key));
            self.m.fail(
                KEY_ALLOWS,
                format!(
                    "cpu{cpu} stored entry {} with the key register at {key:#x}, which \
                     denies page-table writes",
                    entry_index(entry)
                ),
            );
        }
    }

    /// Drops the cached walks of the CPUs in `cpus` through the table
    /// covering `va` (all of them for `None`).
    fn invalidate_walks(&self, cpus: u64, va: Option<VirtAddr>) {
        self.m.with(|s| {
            for (i, cpu) in s.cpus.iter_mut().enumerate() {
                if i < 64 && cpus & (1 << i) != 0 {
                    match va {
                        Some(va) => cpu.walk_cache.retain(|&t| u64::from(t) != va.0 >> 21),
                        None => cpu.walk_cache.clear(),
                    }
                }
            }
        });
    }

    fn current_task(s: &Inner<'_>) -> usize {
        s.cpus[s.running_cpu].current.expect("a task runs")
    }
}

/// Page-table frames return here; freeing one that a CPU's walk cache
/// still points to is invariant 7.
impl FrameAllocator for Prims<'_, '_> {
    fn allocate(&self) -> Option<PhysAddr> {
        None
    }

    fn free(&self, frame: PhysAddr) {
        // A gather dropped while its task unwinds out of an ended run
        // frees again; the run is over and nothing may unwind twice.
        if std::thread::panicking() {
            return;
        }
        let table = ((frame.0 - table_frame(0).0) / 0x1000) as u8;
        let user = self
            .m
            .with(|s| s.cpus.iter().position(|c| c.walk_cache.contains(&table)));
        if let Some(cpu) = user {
            self.m.fail(
                "7: no page-table page is freed while a CPU may still use it",
                format!(
                    "PTE table {table} (frame {:#x}) was freed while cpu{cpu}'s \
                     paging-structure cache still points to it",
                    frame.0
                ),
            );
        }
    }
}

impl KeyRegister for Prims<'_, '_> {
    fn read_key(&self) -> u64 {
        self.m.with(|s| s.cpus[s.running_cpu].key)
    }
    fn write_key(&self, value: u64) {
        self.m.with(|s| {
            let cpu = s.running_cpu;
            s.cpus[cpu].key = value;
        });
    }
    fn task_key(&self, slot: KeySlot) -> Option<u64> {
        self.m.with(|s| {
            let t = &s.tasks[Self::current_task(s)];
            match slot {
                KeySlot::Live => t.key_live,
                KeySlot::Section => t.key_section,
            }
        })
    }
    fn set_task_key(&self, slot: KeySlot, value: u64) {
        self.m.with(|s| {
            let task = Self::current_task(s);
            let t = &mut s.tasks[task];
            match slot {
                KeySlot::Live => t.key_live = Some(value),
                KeySlot::Section => t.key_section = Some(value),
            }
        });
    }
}

impl XenPrimitives for Prims<'_, '_> {
    fn mmu_update(&self, update: MmuUpdate) {
        self.m
            .with(|s| s.apply(entry_index(update.entry), update.value));
    }
    /// TLB operations drop the paging-structure cache entries of the
    /// tables they cover on the CPUs they reach (an `invlpg` invalidates
    /// all paging-structure caches for its address, Intel SDM Vol. 3A
    /// §4.10.4.1).
    fn mmuext_op(&self, op: MmuExtOp) {
        let me = self.m.with(|s| 1u64 << s.running_cpu);
        match op {
            MmuExtOp::InvlpgLocal { va, .. } => self.invalidate_walks(me, Some(va)),
            MmuExtOp::InvlpgMulti { va, cpus, .. } => self.invalidate_walks(cpus, Some(va)),
            MmuExtOp::TlbFlushLocal { .. } => self.invalidate_walks(me, None),
            MmuExtOp::TlbFlushMulti { cpus, .. } => self.invalidate_walks(cpus, None),
        }
    }
    fn multicall(&self, entries: &[MulticallEntry]) {
        self.m.with(|s| {
            for e in entries {
                if let MulticallEntry::MmuUpdate(update) = e {
                    s.apply(entry_index(update.entry), update.value);
                }
            }
        });
    }
}

impl Arm64Primitives for Prims<'_, '_> {
    fn write_pte(&self, entry: PhysAddr, value: u64) {
        self.check_key(entry);
        self.m.with(|s| {
            let index = entry_index(entry);
            if s.writing_kernel {
                let cpu = s.running_cpu;
                s.cpus[cpu].store_buffer.push((index as u8, value));
            } else {
                s.apply(index, value);
            }
        });
    }
    fn dsb(&self, _kind: Dsb) {
        self.m.with(|s| {
            let cpu = s.running_cpu;
            for (e, v) in std::mem::take(&mut s.cpus[cpu].store_buffer) {
                s.apply(usize::from(e), v);
            }
        });
    }
    fn isb(&self) {}
    /// Broadcast: `tlbi vae1is` drops walk-cache entries for the address on
    /// every CPU of the inner-shareable domain (Arm ARM D8.13).
    fn tlbi_va(&self, _space: SpaceId, va: VirtAddr, _last_level: bool) {
        self.invalidate_walks(u64::MAX, Some(va));
    }
    fn tlbi_asid(&self, _space: SpaceId) {
        self.invalidate_walks(u64::MAX, None);
    }
    fn task_barriers_pending(&self) -> bool {
        self.m.with(|s| {
            let task = s.cpus[s.running_cpu].current.expect("a task runs");
            s.tasks[task].barrier_pending
        })
    }
    fn set_task_barriers_pending(&self, pending: bool) {
        self.m.with(|s| {
            let task = s.cpus[s.running_cpu].current.expect("a task runs");
            s.tasks[task].barrier_pending = pending;
        });
    }
}

/// The library's view of the current task: forwards to the machine.
struct TaskEnv<'k, 'm, 'c> {
    k: &'k Kernel<'m, 'c>,
    task: usize,
}

impl TaskEnv<'_, '_, '_> {
    fn mix(&self, what: u64) {
        self.k.m.with(|s| {
            let t = &mut s.tasks[self.task];
            t.call = t.call.rotate_left(7) ^ what.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        });
    }

    fn store(&self, state: LazyState, on_cpu: bool) {
        let m = self.k.m;
        if m.aborted() {
            return;
        }
        let in_irq = m.with(|s| {
            let cpu = s.tasks[self.task].cpu;
            if on_cpu {
                s.cpus[cpu].lazy_state = state;
            } else {
                s.tasks[self.task].state = state;
            }
            s.log(Event::Store(self.task, state));
            s.cpus[cpu].irq_depth > 0
        });
        self.mix(0x100 | u64::from(state.enable_count) << 8 | u64::from(state.pause_count));
        // The window between the counter store and the arch hook.
        if !in_irq && self.k.choice_point(self.task) {
            self.k.run_handler(self.task);
        }
    }
}

impl Environment for TaskEnv<'_, '_, '_> {
    fn lazy_state(&self) -> LazyState {
        let state = self.k.m.with(|s| s.tasks[self.task].state);
        self.mix(1);
        state
    }
    fn set_lazy_state(&self, state: LazyState) {
        self.store(state, false);
    }
    fn in_interrupt(&self) -> bool {
        let irq = self.k.m.with(|s| {
            let cpu = s.tasks[self.task].cpu;
            s.cpus[cpu].irq_depth > 0 && !s.spec.faults.hide_interrupts
        });
        self.mix(2 | u64::from(irq) << 4);
        irq
    }
    fn preempt_disable(&self) {
        let skip = self.k.m.with(|s| {
            let skip = s.spec.faults.preemptible_transitions;
            if !skip {
                let cpu = s.tasks[self.task].cpu;
                s.cpus[cpu].preempt += 1;
            }
            skip
        });
        if !skip {
            self.mix(3);
        }
    }
    fn preempt_enable(&self) {
        let skip = self.k.m.with(|s| {
            let skip = s.spec.faults.preemptible_transitions;
            if !skip {
                let cpu = s.tasks[self.task].cpu;
                s.cpus[cpu].preempt = s.cpus[cpu].preempt.saturating_sub(1);
            }
            skip
        });
        if !skip {
            self.mix(4);
        }
    }
}

impl PerCpuEnvironment for TaskEnv<'_, '_, '_> {
    fn cpu_lazy_state(&self) -> LazyState {
        let state = self.k.m.with(|s| {
            let cpu = s.tasks[self.task].cpu;
            s.cpus[cpu].lazy_state
        });
        self.mix(5);
        state
    }
    fn set_cpu_lazy_state(&self, state: LazyState) {
        self.store(state, true);
    }
}

/// The lazy mode's arch hooks: the backend's, on the task's CPU, with the
/// known-bad flush when the spec asks for it.
struct TaskArch<'k, 'm, 'c> {
    k: &'k Kernel<'m, 'c>,
    task: usize,
}

impl TaskArch<'_, '_, '_> {
    fn before(&self, name: &'static str) -> bool {
        let m = self.k.m;
        if m.aborted() {
            return false;
        }
        m.with(|s| {
            let cpu = s.tasks[self.task].cpu;
            s.running_cpu = cpu;
            s.log(Event::Hook(self.task, cpu, name));
            let t = &mut s.tasks[self.task];
            t.call = t.call.rotate_left(7) ^ name.len() as u64;
        });
        true
    }

    fn set_entered(&self, entered: bool) {
        self.k.m.with(|s| {
            let cpu = s.tasks[self.task].cpu;
            s.cpus[cpu].entered = entered;
        });
    }
}

impl ArchHooks for TaskArch<'_, '_, '_> {
    fn enter(&self) {
        if self.before("enter") {
            self.k.backend.hooks().enter();
            self.set_entered(true);
        }
    }

    fn leave(&self) {
        if self.before("leave") {
            self.k.backend.hooks().leave();
            self.set_entered(false);
        }
    }

    fn flush(&self) {
        if self.before("flush") && !self.k.m.with(|s| s.spec.faults.flush_is_noop) {
            self.k.backend.hooks().flush();
        }
    }
}

/// The task's library instance, whichever design the spec asks for.
enum Mode<'k, 'm, 'c> {
    Counters(Counters<TaskEnv<'k, 'm, 'c>, TaskArch<'k, 'm, 'c>>),
    PerCpu(PerCpu<TaskEnv<'k, 'm, 'c>, TaskArch<'k, 'm, 'c>>),
    /// With the tokens of the open sections and pauses, innermost last: the
    /// caller's stack frames.
    Stateful(
        Stateful<TaskEnv<'k, 'm, 'c>, KeyedSections<'k, 'm, 'c>>,
        RefCell<Vec<KeySection>>,
    ),
}

impl<'k, 'm, 'c> Mode<'k, 'm, 'c> {
    fn new(k: &'k Kernel<'m, 'c>, task: usize, design: Design) -> Self {
        let env = TaskEnv { k, task };
        let arch = TaskArch { k, task };
        match design {
            Design::Counters => Mode::Counters(Counters::new(env, arch, MisusePolicy::Count)),
            Design::PerCpu => Mode::PerCpu(PerCpu::new(env, arch, MisusePolicy::Count)),
            Design::Stateful | Design::StatefulSingleSlot => Mode::Stateful(
                Stateful::new(
                    env,
                    KeyedSections {
                        arch,
                        single_slot: design == Design::StatefulSingleSlot,
                    },
                    MisusePolicy::Count,
                ),
                RefCell::new(Vec::new()),
            ),
        }
    }

    /// Carries out a lazy-mode action.
    fn act(&self, action: Action) -> Result<(), Misuse> {
        match self {
            Mode::Counters(m) => unit_act(m, action),
            Mode::PerCpu(m) => unit_act(m, action),
            Mode::Stateful(m, tokens) => match action {
                Action::Enable => m.enable().map(|step| tokens.borrow_mut().push(step.token)),
                Action::Pause => m
                    .pause_raw()
                    .map(|step| tokens.borrow_mut().push(step.token)),
                Action::Disable => {
                    let token = tokens.borrow_mut().pop().unwrap_or(KeySection::IGNORED);
                    m.disable(token).map(|_| ())
                }
                Action::Resume => {
                    let token = tokens.borrow_mut().pop().unwrap_or(KeySection::IGNORED);
                    m.resume(token).map(|_| ())
                }
                _ => Ok(()),
            },
        }
    }
}

fn unit_act(mode: &dyn LazyMode<Token = ()>, action: Action) -> Result<(), Misuse> {
    match action {
        Action::Enable => mode.enable().map(|_| ()),
        Action::Disable => mode.disable(()).map(|_| ()),
        Action::Pause => mode.pause_raw().map(|_| ()),
        Action::Resume => mode.resume(()).map(|_| ()),
        _ => Ok(()),
    }
}

/// What a stateful section or pause hands back: what it did, and the
/// key-register value it found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeySection {
    kind: SectionKind,
    found: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum SectionKind {
    Ignored,
    Outermost,
    Nested,
    FirstPause,
    NestedPause,
}

impl KeySection {
    const IGNORED: KeySection = KeySection {
        kind: SectionKind::Ignored,
        found: 0,
    };
}

/// The stateful design over the backend's hooks, with protection-key
/// windows per section: every section, nested or not, opens the key
/// register and its close restores exactly the value that section found,
/// which the section carries in its state (the reason the stateful shape
/// was proposed for kpkeys). With `single_slot` it keeps that value in
/// the task's one [`KeySlot::Section`] slot instead, so a nested section
/// overwrites the outer one's and the outer close restores the open value:
/// the known-bad variant `stateful-single-slot`.
///
/// Batching is the backend's: the outermost section enters, nested closes
/// flush, the outermost close leaves. Per task it keeps whether a section
/// is open and whether the task is paused, in the environment's task slot,
/// so the context-switch hooks see it.
pub struct KeyedSections<'k, 'm, 'c> {
    arch: TaskArch<'k, 'm, 'c>,
    single_slot: bool,
}

impl<'m, 'c> KeyedSections<'_, 'm, 'c> {
    fn keys(&self) -> Option<Prims<'m, 'c>> {
        match &self.arch.k.backend {
            Backend::Arm64Poe(b) => Some(*b.keys()),
            _ => None,
        }
    }

    /// Opens the key register; returns the value found.
    fn open_keys(&self) -> u64 {
        let Some(keys) = self.keys() else { return 0 };
        let found = keys.read_key();
        let open = Poe::open(found);
        if open != found {
            keys.write_key(open);
        }
        if self.single_slot {
            keys.set_task_key(KeySlot::Section, found);
        }
        found
    }

    /// Restores the value the closing section found.
    fn restore_keys(&self, found: u64) {
        let Some(keys) = self.keys() else { return };
        let value = if self.single_slot {
            keys.task_key(KeySlot::Section).unwrap_or(Poe::DEFAULT)
        } else {
            found
        };
        if keys.read_key() != value {
            keys.write_key(value);
        }
    }
}

impl StatefulArch for KeyedSections<'_, '_, '_> {
    type State = KeySection;

    fn ignored(&self) -> KeySection {
        KeySection::IGNORED
    }

    fn enter<E: Environment>(&self, env: &E) -> Step<KeySection> {
        let s = env.lazy_state();
        if s.pause_count > 0 {
            return Step {
                token: KeySection::IGNORED,
                hook: None,
            };
        }
        let found = self.open_keys();
        if s.enable_count == 0 {
            env.set_lazy_state(LazyState {
                enable_count: 1,
                ..s
            });
            self.arch.enter();
            Step {
                token: KeySection {
                    kind: SectionKind::Outermost,
                    found,
                },
                hook: Some(Hook::Enter),
            }
        } else {
            Step {
                token: KeySection {
                    kind: SectionKind::Nested,
                    found,
                },
                hook: None,
            }
        }
    }

    fn leave<E: Environment>(&self, env: &E, state: KeySection) -> Result<Option<Hook>, Misuse> {
        let s = env.lazy_state();
        let hook = match state.kind {
            SectionKind::Ignored => return Ok(None),
            SectionKind::Outermost if s.enable_count == 1 && s.pause_count == 0 => {
                env.set_lazy_state(LazyState::IDLE);
                self.arch.leave();
                Hook::Leave
            }
            SectionKind::Nested if s.enable_count == 1 && s.pause_count == 0 => {
                self.arch.flush();
                Hook::Flush
            }
            _ => return Err(Misuse::Underflow(Op::Disable)),
        };
        self.restore_keys(state.found);
        Ok(Some(hook))
    }

    fn pause<E: Environment>(&self, env: &E) -> Step<KeySection> {
        let s = env.lazy_state();
        let found = self.keys().map_or(0, |k| k.read_key());
        if s.pause_count > 0 {
            return Step {
                token: KeySection {
                    kind: SectionKind::NestedPause,
                    found,
                },
                hook: None,
            };
        }
        env.set_lazy_state(LazyState {
            pause_count: 1,
            ..s
        });
        let hook = (s.enable_count > 0).then(|| {
            self.arch.leave();
            // Fully out: the register goes back to the kernel's default
            // until the resume.
            if let Some(keys) = self.keys() {
                if keys.read_key() != Poe::DEFAULT {
                    keys.write_key(Poe::DEFAULT);
                }
            }
            Hook::Leave
        });
        Step {
            token: KeySection {
                kind: SectionKind::FirstPause,
                found,
            },
            hook,
        }
    }

    fn resume<E: Environment>(&self, env: &E, state: KeySection) -> Result<Option<Hook>, Misuse> {
        let s = env.lazy_state();
        match state.kind {
            SectionKind::NestedPause => Ok(None),
            SectionKind::FirstPause if s.pause_count == 1 => {
                env.set_lazy_state(LazyState {
                    pause_count: 0,
                    ..s
                });
                if s.enable_count == 0 {
                    return Ok(None);
                }
                if let Some(keys) = self.keys() {
                    if keys.read_key() != state.found {
                        keys.write_key(state.found);
                    }
                }
                self.arch.enter();
                Ok(Some(Hook::Enter))
            }
            _ => Err(Misuse::Underflow(Op::Resume)),
        }
    }

    fn is_active<E: Environment>(&self, env: &E) -> bool {
        env.lazy_state().is_active()
    }

    fn lazy_state<E: Environment>(&self, env: &E) -> LazyState {
        env.lazy_state()
    }

    fn bytes_per_task(&self) -> usize {
        // The two flags, folded into a flags word.
        1
    }
}

impl Spec {
    /// Runs the machine once, asking `chooser` at every choice point.
    pub fn run_once(&self, chooser: &mut dyn Chooser) -> RunOutcome {
        let key = if self.arch == Arch::Arm64Poe {
            Poe::DEFAULT
        } else {
            0
        };
        let mut cpus = vec![
            Cpu {
                key,
                walk_cache: self.cached_tables.clone(),
                ..Cpu::default()
            };
            self.cpus
        ];
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
        let holder = cpus.iter().find_map(|c| c.current);
        let machine = Machine {
            state: RefCell::new(Inner {
                spec: self,
                cpus,
                tasks,
                running_cpu: 0,
                memory: [0; ENTRIES],
                expected: [None; ENTRIES],
                writing_kernel: false,
                next_value: 0,
                interrupts: 0,
                violation: None,
                stopped: false,
                events: VecDeque::with_capacity(EVENT_LOG),
                chooser,
            }),
            baton: Mutex::new(Baton {
                holder,
                abort: false,
            }),
            turn: Condvar::new(),
        };
        let prims = Prims { m: &machine };
        let kernel = Kernel {
            m: &machine,
            backend: match self.arch {
                Arch::XenPv => Backend::XenPv(Box::new(XenPv::new(prims))),
                Arch::Arm64 => Backend::Arm64(Box::new(Arm64::new(prims))),
                Arch::Arm64Poe => Backend::Arm64Poe(Box::new(Arm64Poe::arm64_poe(prims))),
            },
        };
        let mut crash = None;
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..self.tasks.len())
                .map(|task| {
                    let kernel = &kernel;
                    scope.spawn(move || {
                        panic::catch_unwind(AssertUnwindSafe(|| kernel.task_main(task)))
                    })
                })
                .collect();
            for handle in handles {
                if let Ok(Err(payload)) = handle.join() {
                    if !payload.is::<Aborted>() && crash.is_none() {
                        crash = Some(panic_message(&*payload));
                        machine.abort();
                    }
                }
            }
        });
        let inner = machine.state.into_inner();
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

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
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
