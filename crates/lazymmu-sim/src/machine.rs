//! The machine: CPUs with TLBs, interrupt depth, preemption count and key
//! register; tasks with their lazy state; physical memory; and the
//! scheduler that resolves choice points.
//!
//! Library code runs on the host stack. Every call it makes into the
//! machine passes a choice point ([`Machine::choice_point`]) where the
//! [`Chooser`] may let an interrupt in, preempt the task (running another
//! task's next unit of work nested on the host stack, then switching back,
//! possibly on another CPU) or deliver a remote TLB flush. What the
//! interrupt handler and the context-switch hooks do is the library's
//! business, reached through the [`Kernel`] trait.

use core::cell::{Cell, RefCell};
use core::hash::Hasher;
use std::rc::Rc;

use lazymmu::addr::{PhysAddr, SpaceId, VirtAddr};
use lazymmu::mode::LazyState;

use crate::choice::{Choice, ChoicePoint, Chooser, Sequential, Site, Trace};
use crate::cost::{CostModel, Counts, Platform, Primitive};
use crate::events::{Event, EventKind, EventRing};
use crate::invariant::{Invariant, Violation};
use crate::memory::PhysMemory;
use crate::tlb::{Tlb, TlbEntry};

/// How the key register decides whether a page-table page may be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyModel {
    /// No protection keys: page tables are always writable.
    None,
    /// x86 PKS: IA32_PKRS holds an access-disable and a write-disable bit
    /// per key, bits `2k` and `2k+1` (Intel SDM Vol. 3A §4.6.2
    /// "Protection Keys").
    Pks,
    /// arm64 POE: POR_EL1 holds a 4-bit permission field per overlay
    /// index, `R = bit 0`, `X = bit 1`, `W = bit 2` (Arm ARM DDI 0487 K.a,
    /// D8.4.1.2 "Permission overlay encoding").
    Poe,
}

impl KeyModel {
    /// Whether register value `reg` lets the CPU write a page carrying
    /// `key`.
    #[inline]
    pub fn allows_write(self, reg: u64, key: u8) -> bool {
        match self {
            KeyModel::None => true,
            KeyModel::Pks => (reg >> (2 * key as u32)) & 0b11 == 0,
            KeyModel::Poe => (reg >> (4 * key as u32)) & 0b0100 != 0,
        }
    }
}

/// Features of the modelled hardware that change what a primitive does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HardwareModel {
    /// Page tables are read-only to the guest: a direct store is a fault
    /// (Xen PV; updates go through hypercalls).
    pub read_only_tables: bool,
    /// arm64 ordering: a store of a valid kernel entry is invisible to the
    /// walker until a `dsb`, and a walk that found it invalid may be reused
    /// until an `isb`.
    pub arm64_barriers: bool,
    /// How the key register guards page-table pages.
    pub keys: KeyModel,
    /// A context switch to another address space flushes the CPU's
    /// non-global translations (x86 CR3 write without PCID; Xen PV guests).
    pub flush_on_switch: bool,
    /// The key page-table pages carry when protected.
    pub table_key: u8,
    /// The key register value in force outside any window (closed), loaded
    /// on exception entry.
    pub default_key: u64,
}

impl HardwareModel {
    /// Plain hardware: writable tables, no barrier model, no keys.
    pub const PLAIN: HardwareModel = HardwareModel {
        read_only_tables: false,
        arm64_barriers: false,
        keys: KeyModel::None,
        flush_on_switch: false,
        table_key: 0,
        default_key: 0,
    };
}

/// The machine's configuration.
#[derive(Clone, Debug)]
pub struct MachineConfig {
    /// Number of CPUs.
    pub cpus: usize,
    /// Frames of physical memory for page tables.
    pub frames: u32,
    /// TLB entries per CPU.
    pub tlb_entries: usize,
    /// What the hardware does.
    pub hardware: HardwareModel,
    /// Cycle costs.
    pub cost: CostModel,
    /// How many task switches or interrupts may nest on the host stack.
    pub max_nesting: u32,
    /// Events kept for violation reports.
    pub event_ring: usize,
    /// Stop the run after the first violation: no more choices, no new
    /// unit of work (the unit in progress finishes).
    pub stop_on_violation: bool,
}

impl MachineConfig {
    /// A configuration for `cpus` CPUs on `platform` with plain hardware.
    pub fn new(cpus: usize, platform: Platform) -> Self {
        Self {
            cpus: cpus.max(1),
            frames: 4096,
            tlb_entries: 64,
            hardware: HardwareModel::PLAIN,
            cost: CostModel::new(platform),
            max_nesting: 2,
            event_ring: 50,
            stop_on_violation: true,
        }
    }
}

/// What the library (the "kernel" running on the machine) does when the
/// machine switches tasks, takes an interrupt or runs a task.
pub trait Kernel {
    /// Context-switch hook on the CPU leaving a task with `prev`.
    fn switch_out(&self, prev: LazyState);
    /// Context-switch hook on the CPU arriving at a task with `next`.
    fn switch_in(&self, next: LazyState);
    /// Exception entry (before the handler runs, in interrupt context).
    fn exception_entry(&self) {}
    /// Exception return (after the handler, still in interrupt context).
    fn exception_exit(&self) {}
    /// The interrupt handler: changes a kernel mapping through the library.
    fn interrupt(&self);
    /// Runs `task`'s next unit of work; false when it has none left.
    fn run_unit(&self, task: usize) -> bool;
    /// A digest of the kernel's own state (workload progress, what the
    /// library has deferred), folded into [`Machine::digest`].
    fn digest(&self) -> u64 {
        0
    }
}

/// Where a task is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TaskState {
    /// Between units of work.
    Ready,
    /// In the middle of a unit of work (running, or preempted below on the
    /// host stack).
    Busy,
    /// No more work.
    Done,
}

/// A task.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Task {
    /// Its lazy MMU state.
    pub lazy: LazyState,
    /// Its address space.
    pub space: SpaceId,
    /// Root of its page tables (user half).
    pub root: PhysAddr,
    /// The CPU it last ran on.
    pub cpu: usize,
    /// The task's copies of the key register: the value while switched out
    /// and the value its outermost section found.
    pub keys: [Option<u64>; 2],
    /// Other address spaces whose page tables this task may write (a fork
    /// child under construction).
    pub writes_to: Option<SpaceId>,
    /// Arch state a backend keeps per task (e.g. arm64's pending-barrier
    /// flag), saved and restored by the context-switch hooks.
    pub arch: u64,
    /// Where it is.
    pub state: TaskState,
}

struct Cpu {
    task: Cell<Option<usize>>,
    loaded: Cell<SpaceId>,
    lazy: Cell<LazyState>,
    irq_depth: Cell<u32>,
    preempt: Cell<u32>,
    key: Cell<u64>,
    irq_keys: RefCell<Vec<u64>>,
    tlb: RefCell<Tlb>,
    /// arm64: stores of valid kernel entries not yet made visible by a
    /// `dsb`, with the value the walker still sees.
    pending: RefCell<Vec<(PhysAddr, u64)>>,
    /// arm64: (space, page) walks that found an invalid entry, reusable
    /// until an `isb`.
    stale_invalid: RefCell<Vec<(SpaceId, u64)>>,
}

/// A translation the walker found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Leaf {
    /// The leaf entry.
    pub entry: u64,
    /// log2 of the page size.
    pub shift: u32,
    /// Global (not tagged with an address space).
    pub global: bool,
}

/// The hardware page walker: given a way to read table memory as the
/// walker sees it, a root and an address, the leaf or `None`.
pub type WalkFn = fn(read: &dyn Fn(PhysAddr) -> u64, root: PhysAddr, va: u64) -> Option<Leaf>;

/// What an access found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Translated (from the TLB or by a walk).
    Hit(Leaf),
    /// No valid translation: a page fault.
    Fault,
}

/// The simulated machine.
pub struct Machine {
    config: MachineConfig,
    memory: PhysMemory,
    cpus: Box<[Cpu]>,
    tasks: RefCell<Vec<Task>>,
    current: Cell<usize>,
    counts: Counts,
    irq_counts: Counts,
    events: RefCell<EventRing>,
    violations: RefCell<Vec<Violation>>,
    chooser: RefCell<Box<dyn Chooser>>,
    passive: Cell<bool>,
    kernel: RefCell<Option<Rc<dyn Kernel>>>,
    walker: Cell<Option<WalkFn>>,
    kernel_root: Cell<PhysAddr>,
    is_kernel_va: Cell<fn(u64) -> bool>,
    step: Cell<u64>,
    preemptions: Cell<u32>,
    nesting: Cell<u32>,
    atomic: Cell<u32>,
    trace: RefCell<Vec<u32>>,
    options: RefCell<Vec<Choice>>,
    pending_stores: Cell<usize>,
    violation_count: Cell<u64>,
    preempted_in_section: Cell<u64>,
}

impl Machine {
    /// A machine with every CPU idle and no tasks.
    pub fn new(config: MachineConfig) -> Self {
        let cpus = (0..config.cpus)
            .map(|_| Cpu {
                task: Cell::new(None),
                loaded: Cell::new(SpaceId::KERNEL),
                lazy: Cell::new(LazyState::IDLE),
                irq_depth: Cell::new(0),
                preempt: Cell::new(0),
                key: Cell::new(config.hardware.default_key),
                irq_keys: RefCell::new(Vec::new()),
                tlb: RefCell::new(Tlb::new(config.tlb_entries)),
                pending: RefCell::new(Vec::new()),
                stale_invalid: RefCell::new(Vec::new()),
            })
            .collect();
        Self {
            memory: PhysMemory::new(config.frames),
            events: RefCell::new(EventRing::new(config.event_ring)),
            cpus,
            tasks: RefCell::new(Vec::new()),
            current: Cell::new(0),
            counts: Counts::default(),
            irq_counts: Counts::default(),
            violations: RefCell::new(Vec::new()),
            chooser: RefCell::new(Box::new(Sequential)),
            passive: Cell::new(true),
            kernel: RefCell::new(None),
            walker: Cell::new(None),
            kernel_root: Cell::new(PhysAddr(0)),
            is_kernel_va: Cell::new(|va| va >> 63 != 0),
            step: Cell::new(0),
            preemptions: Cell::new(0),
            nesting: Cell::new(0),
            atomic: Cell::new(0),
            trace: RefCell::new(Vec::new()),
            options: RefCell::new(Vec::with_capacity(16)),
            pending_stores: Cell::new(0),
            violation_count: Cell::new(0),
            preempted_in_section: Cell::new(0),
            config,
        }
    }

    // ----- configuration -------------------------------------------------

    /// The configuration.
    pub fn config(&self) -> &MachineConfig {
        &self.config
    }

    /// Installs the chooser that resolves choice points.
    pub fn set_chooser(&self, chooser: Box<dyn Chooser>) {
        self.passive.set(chooser.is_passive());
        *self.chooser.borrow_mut() = chooser;
    }

    /// Installs the kernel (the library side of switches and interrupts).
    pub fn set_kernel(&self, kernel: Rc<dyn Kernel>) {
        *self.kernel.borrow_mut() = Some(kernel);
    }

    /// Drops the kernel (breaking the reference cycle at the end of a run).
    pub fn clear_kernel(&self) {
        self.kernel.borrow_mut().take();
    }

    /// Installs the hardware walker, the kernel's root and the test for
    /// kernel addresses (which translate through the kernel root).
    pub fn set_walker(&self, walker: WalkFn, kernel_root: PhysAddr, is_kernel: fn(u64) -> bool) {
        self.walker.set(Some(walker));
        self.kernel_root.set(kernel_root);
        self.is_kernel_va.set(is_kernel);
    }

    /// Makes `cpu` the running CPU (the driver's own code between units).
    pub fn set_cpu(&self, cpu: usize) {
        self.current.set(cpu % self.cpus.len());
    }

    /// Physical memory.
    pub fn memory(&self) -> &PhysMemory {
        &self.memory
    }

    /// Primitive counts so far.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// Modelled cycles so far.
    pub fn cycles(&self) -> u64 {
        self.config.cost.total(&self.counts)
    }

    /// The picks made so far at choice points with more than one option.
    pub fn trace(&self) -> Trace {
        Trace {
            picks: self.trace.borrow().clone(),
        }
    }

    /// Preemptions and migrations taken so far.
    pub fn preemptions(&self) -> u32 {
        self.preemptions.get()
    }

    /// Preemptions and migrations that hit a task inside a lazy section.
    pub fn preempted_in_section(&self) -> u64 {
        self.preempted_in_section.get()
    }

    /// Choice points passed so far.
    pub fn steps(&self) -> u64 {
        self.step.get()
    }

    // ----- tasks and CPUs ------------------------------------------------

    /// Adds a task in `space` with page-table root `root`, placed on `cpu`
    /// (switched in there if the CPU is idle). Returns its id.
    pub fn add_task(&self, space: SpaceId, root: PhysAddr, cpu: usize) -> usize {
        let cpu = cpu % self.cpus.len();
        let mut tasks = self.tasks.borrow_mut();
        let id = tasks.len();
        tasks.push(Task {
            lazy: LazyState::IDLE,
            space,
            root,
            cpu,
            keys: [None, None],
            writes_to: None,
            arch: 0,
            state: TaskState::Ready,
        });
        if self.cpus[cpu].task.get().is_none() {
            self.cpus[cpu].task.set(Some(id));
            self.cpus[cpu].loaded.set(space);
        }
        id
    }

    /// Number of tasks.
    pub fn task_count(&self) -> usize {
        self.tasks.borrow().len()
    }

    /// A copy of a task.
    pub fn task(&self, id: usize) -> Task {
        self.tasks.borrow()[id].clone()
    }

    /// Sets a task's page-table root.
    pub fn set_task_root(&self, id: usize, root: PhysAddr) {
        self.tasks.borrow_mut()[id].root = root;
    }

    /// Makes every finished task ready again (for the next stage of a
    /// run).
    pub fn restart_tasks(&self) {
        for t in self.tasks.borrow_mut().iter_mut() {
            t.state = TaskState::Ready;
        }
    }

    /// Resets the primitive counts (after a setup stage).
    pub fn clear_counts(&self) {
        self.counts.clear();
        self.irq_counts.clear();
    }

    /// Marks a task finished.
    pub fn finish_task(&self, id: usize) {
        self.tasks.borrow_mut()[id].state = TaskState::Done;
    }

    /// The CPU running now.
    #[inline]
    pub fn cpu(&self) -> usize {
        self.current.get()
    }

    /// Number of CPUs.
    pub fn cpu_count(&self) -> usize {
        self.cpus.len()
    }

    /// The task on the running CPU (task 0 when the CPU is idle, which only
    /// happens before any task exists).
    #[inline]
    pub fn current_task(&self) -> usize {
        self.cpus[self.current.get()].task.get().unwrap_or(0)
    }

    /// The current task's address space (the kernel's when idle).
    pub fn current_space(&self) -> SpaceId {
        let t = self.current_task();
        self.tasks
            .borrow()
            .get(t)
            .map_or(SpaceId::KERNEL, |t| t.space)
    }

    /// The current task's lazy state.
    #[inline]
    pub fn lazy_state(&self) -> LazyState {
        let t = self.current_task();
        self.tasks
            .borrow()
            .get(t)
            .map_or(LazyState::IDLE, |t| t.lazy)
    }

    /// Stores the current task's lazy state.
    #[inline]
    pub fn set_lazy_state(&self, state: LazyState) {
        let t = self.current_task();
        if let Some(task) = self.tasks.borrow_mut().get_mut(t) {
            task.lazy = state;
        }
    }

    /// The running CPU's lazy state (the per-CPU design).
    #[inline]
    pub fn cpu_lazy_state(&self) -> LazyState {
        self.cpus[self.current.get()].lazy.get()
    }

    /// Stores the running CPU's lazy state (the per-CPU design).
    #[inline]
    pub fn set_cpu_lazy_state(&self, state: LazyState) {
        self.cpus[self.current.get()].lazy.set(state)
    }

    /// The current task's copy `slot` of the key register.
    pub fn task_key(&self, slot: usize) -> Option<u64> {
        let t = self.current_task();
        self.tasks.borrow().get(t).and_then(|t| t.keys[slot])
    }

    /// Stores the current task's copy `slot` of the key register.
    pub fn set_task_key(&self, slot: usize, value: u64) {
        let t = self.current_task();
        if let Some(task) = self.tasks.borrow_mut().get_mut(t) {
            task.keys[slot] = Some(value);
        }
    }

    /// Lets task `id` write the page tables of `space` too (a fork child).
    pub fn set_task_writes_to(&self, id: usize, space: Option<SpaceId>) {
        self.tasks.borrow_mut()[id].writes_to = space;
    }

    /// Checks that applying a write to `entry` now belongs to the current
    /// context: the table is the kernel's, the current task's, or one it is
    /// building; otherwise batched state is being applied in another task's
    /// context (§6.4).
    #[inline]
    pub fn check_owner(&self, entry: PhysAddr) {
        let Some(owner) = self.memory.owner(entry) else {
            self.violation(
                Invariant::BatchOwnership,
                format!(
                    "write to {:#x}, which is not an allocated page-table frame",
                    entry.0
                ),
            );
            return;
        };
        if owner == SpaceId::KERNEL || self.in_interrupt() {
            return;
        }
        let t = self.current_task();
        let ok = self
            .tasks
            .borrow()
            .get(t)
            .is_some_and(|t| t.space == owner || t.writes_to == Some(owner));
        if !ok {
            self.violation(
                Invariant::BatchOwnership,
                format!(
                    "write to a page table of space {} applied while task t{t} (space {}) runs",
                    owner.0,
                    self.current_space().0
                ),
            );
        }
    }

    /// CPUs that may cache translations of `space`: those running a task
    /// of it and those whose TLB holds one of its entries (every CPU for
    /// the kernel's space).
    pub fn cpus_using(&self, space: SpaceId) -> u64 {
        let mut mask = 0u64;
        let tasks = self.tasks.borrow();
        for (i, c) in self.cpus.iter().enumerate() {
            let runs = c.task.get().is_some_and(|t| tasks[t].space == space);
            let caches = c
                .tlb
                .borrow()
                .entries()
                .iter()
                .any(|e| e.space == space || e.global);
            if space == SpaceId::KERNEL || runs || caches {
                mask |= 1 << i;
            }
        }
        mask
    }

    /// The current task's arch slot.
    pub fn task_arch(&self) -> u64 {
        let t = self.current_task();
        self.tasks.borrow().get(t).map_or(0, |t| t.arch)
    }

    /// Sets the current task's arch slot.
    pub fn set_task_arch(&self, value: u64) {
        let t = self.current_task();
        if let Some(task) = self.tasks.borrow_mut().get_mut(t) {
            task.arch = value;
        }
    }

    /// Whether the running CPU is in interrupt context.
    #[inline]
    pub fn in_interrupt(&self) -> bool {
        self.cpus[self.current.get()].irq_depth.get() > 0
    }

    /// The running CPU's preemption count.
    #[inline]
    pub fn preempt_count(&self) -> u32 {
        self.cpus[self.current.get()].preempt.get()
    }

    /// Disables preemption on the running CPU.
    #[inline]
    pub fn preempt_disable(&self) {
        let c = &self.cpus[self.current.get()].preempt;
        c.set(c.get() + 1);
    }

    /// Re-enables preemption on the running CPU. An unbalanced enable is
    /// ignored and reported as misuse.
    #[inline]
    pub fn preempt_enable(&self) {
        let c = &self.cpus[self.current.get()].preempt;
        match c.get().checked_sub(1) {
            Some(n) => c.set(n),
            None => self.violation(
                Invariant::Misuse,
                "preempt_enable without preempt_disable".into(),
            ),
        }
    }

    /// The running CPU's key register.
    #[inline]
    pub fn key(&self) -> u64 {
        self.cpus[self.current.get()].key.get()
    }

    /// Writes the running CPU's key register (costed).
    pub fn key_write(&self, value: u64) {
        self.cpus[self.current.get()].key.set(value);
        self.primitive(Primitive::KeyWrite, 1);
    }

    // ----- accounting, events, violations --------------------------------

    /// Counts `n` of `primitive` and logs it. Work done in interrupt
    /// context (the disturbances the scheduler injects) is counted apart,
    /// so that eager and lazy runs are charged for their own work only.
    #[inline]
    pub fn primitive(&self, primitive: Primitive, n: u64) {
        if self.in_interrupt() {
            self.irq_counts.add(primitive, n);
        } else {
            self.counts.add(primitive, n);
        }
        self.log(EventKind::Primitive(primitive.name()));
    }

    /// Primitive counts of interrupt handlers and remote flushes.
    pub fn interrupt_counts(&self) -> &Counts {
        &self.irq_counts
    }

    /// Logs an event.
    #[inline]
    pub fn log(&self, kind: EventKind) {
        let event = Event {
            step: self.step.get(),
            cpu: self.current.get(),
            task: self.current_task(),
            kind,
        };
        self.events.borrow_mut().push(event);
    }

    /// Records a violation of `invariant`.
    #[cold]
    pub fn violation(&self, invariant: Invariant, detail: String) {
        self.violation_count.set(self.violation_count.get() + 1);
        let v = Violation {
            invariant,
            step: self.step.get(),
            cpu: self.current.get(),
            task: self.current_task(),
            detail,
            events: self.events.borrow().to_vec(),
        };
        let mut all = self.violations.borrow_mut();
        // Keep the first few in full; count the rest.
        if all.len() < 16 {
            all.push(v);
        }
    }

    /// The violations recorded (the first 16 in full).
    pub fn violations(&self) -> Vec<Violation> {
        self.violations.borrow().clone()
    }

    /// How many violations were recorded in all.
    pub fn violation_count(&self) -> u64 {
        self.violation_count.get()
    }

    // ----- memory and the walker -----------------------------------------

    /// Reads a page-table entry as the CPU sees it (its own stores
    /// included).
    #[inline]
    pub fn read_entry(&self, entry: PhysAddr) -> u64 {
        self.memory.read(entry)
    }

    /// Reads an entry as the hardware walker sees it: an arm64 store not
    /// yet made visible by a `dsb` still shows its old value.
    #[inline]
    pub fn walker_read(&self, entry: PhysAddr) -> u64 {
        if self.pending_stores.get() > 0 {
            for cpu in self.cpus.iter() {
                // The oldest pending store's "before" value is what the
                // walker still sees.
                if let Some(&(_, old)) = cpu.pending.borrow().iter().find(|(pa, _)| *pa == entry) {
                    return old;
                }
            }
        }
        self.memory.read(entry)
    }

    /// Stores a page-table entry with a plain CPU store (costed as
    /// `pte_write`), applying the hardware's rules: read-only tables fault,
    /// the key register must allow the write, and on arm64 a valid kernel
    /// entry stays invisible to the walker until a `dsb`.
    pub fn store_entry(&self, entry: PhysAddr, value: u64) {
        let hw = self.config.hardware;
        if hw.read_only_tables {
            self.violation(
                Invariant::ForbiddenStore,
                format!("direct store to read-only page table at {:#x}", entry.0),
            );
            return;
        }
        self.check_owner(entry);
        self.check_key_allows(entry);
        self.apply_store(entry, value);
        self.primitive(Primitive::PteWrite, 1);
    }

    /// Fails when the key register denies writes to `entry`'s page.
    #[inline]
    pub fn check_key_allows(&self, entry: PhysAddr) {
        let hw = self.config.hardware;
        if hw.keys != KeyModel::None {
            let key = self.memory.key(entry);
            let reg = self.key();
            if !hw.keys.allows_write(reg, key) {
                self.violation(
                    Invariant::KeyFault,
                    format!(
                        "write to page-table entry {:#x} (key {key}) with key register {reg:#x}",
                        entry.0
                    ),
                );
            }
        }
    }

    /// Applies a store to memory with the arm64 visibility rule, without
    /// counting it (hypervisor-applied updates are counted by the caller).
    #[inline]
    pub fn apply_store(&self, entry: PhysAddr, value: u64) {
        self.log(EventKind::Store { entry, value });
        let hw = self.config.hardware;
        if hw.arm64_barriers && value & 1 != 0 && self.memory.owner(entry) == Some(SpaceId::KERNEL)
        {
            let old = self.memory.read(entry);
            self.cpus[self.current.get()]
                .pending
                .borrow_mut()
                .push((entry, old));
            self.pending_stores.set(self.pending_stores.get() + 1);
        }
        self.memory.write(entry, value);
    }

    /// `dsb`: the running CPU's stores become visible to every walker.
    pub fn dsb(&self) {
        let drained = core::mem::take(&mut *self.cpus[self.current.get()].pending.borrow_mut());
        self.pending_stores
            .set(self.pending_stores.get() - drained.len());
        self.primitive(Primitive::Dsb, 1);
    }

    /// `isb`: the running CPU stops reusing stale "invalid" walks.
    pub fn isb(&self) {
        self.cpus[self.current.get()]
            .stale_invalid
            .borrow_mut()
            .clear();
        self.primitive(Primitive::Isb, 1);
    }

    /// Stores of the running CPU not yet made visible by a `dsb`.
    pub fn pending_stores(&self) -> usize {
        self.cpus[self.current.get()].pending.borrow().len()
    }

    /// The root a walk of `va` in `space` starts from.
    pub fn root_for(&self, space: SpaceId, va: u64) -> Option<PhysAddr> {
        if (self.is_kernel_va.get())(va) || space == SpaceId::KERNEL {
            return Some(self.kernel_root.get());
        }
        self.tasks
            .borrow()
            .iter()
            .find(|t| t.space == space)
            .map(|t| t.root)
    }

    /// Walks `va` in `space` as the hardware would now (no TLB).
    pub fn walk(&self, space: SpaceId, va: u64) -> Option<Leaf> {
        self.walk_tables(space, va).map(|(leaf, _)| leaf)
    }

    /// Walks `va` in `space` and also returns the page-table frames the
    /// walk went through (root first; zero past the last level), which a
    /// TLB entry depends on.
    pub fn walk_tables(&self, space: SpaceId, va: u64) -> Option<(Leaf, [u64; 5])> {
        let walker = self.walker.get()?;
        let root = self.root_for(space, va)?;
        let tables = Cell::new([0u64; 5]);
        let level = Cell::new(0usize);
        let read = |pa: PhysAddr| {
            let mut t = tables.get();
            if let Some(slot) = t.get_mut(level.get()) {
                *slot = pa.0 & !(crate::memory::FRAME_BYTES - 1);
            }
            tables.set(t);
            level.set(level.get() + 1);
            self.walker_read(pa)
        };
        walker(&read, root, va).map(|leaf| (leaf, tables.get()))
    }

    /// Checks that no CPU may still use the page-table frame `frame`, which
    /// is being freed: no cached translation was walked through it (§6.7).
    pub fn check_table_free(&self, frame: PhysAddr) {
        let frame = frame.0 & !(crate::memory::FRAME_BYTES - 1);
        for (i, c) in self.cpus.iter().enumerate() {
            let hit = c
                .tlb
                .borrow()
                .entries()
                .iter()
                .find(|e| e.tables.contains(&frame))
                .copied();
            if let Some(e) = hit {
                self.violation(
                    Invariant::FreedInUse,
                    format!(
                        "page-table frame {frame:#x} freed while cpu{i} still caches {:#x} (space {}) walked through it",
                        e.base, e.space.0
                    ),
                );
                return;
            }
        }
    }

    /// A memory access by the running CPU in the current task's space:
    /// TLB first, then a walk that fills it.
    pub fn access(&self, va: VirtAddr) -> Access {
        let space = self.current_space();
        self.access_in(space, va)
    }

    /// A memory access by the running CPU in `space`.
    pub fn access_in(&self, space: SpaceId, va: VirtAddr) -> Access {
        let cpu = &self.cpus[self.current.get()];
        if let Some(e) = cpu.tlb.borrow().lookup(space, va) {
            return Access::Hit(Leaf {
                entry: e.leaf,
                shift: e.shift,
                global: e.global,
            });
        }
        let page = va.0 >> 12;
        if self.config.hardware.arm64_barriers
            && cpu
                .stale_invalid
                .borrow()
                .iter()
                .any(|&(s, p)| (s == space || s == SpaceId::KERNEL) && p == page)
        {
            return Access::Fault;
        }
        match self.walk_tables(space, va.0) {
            Some((leaf, tables)) => {
                let base = va.0 & !((1u64 << leaf.shift) - 1);
                cpu.tlb.borrow_mut().fill(TlbEntry {
                    space,
                    base,
                    shift: leaf.shift,
                    leaf: leaf.entry,
                    global: leaf.global,
                    tables,
                });
                Access::Hit(leaf)
            }
            None => {
                if self.config.hardware.arm64_barriers {
                    cpu.stale_invalid.borrow_mut().push((space, page));
                }
                Access::Fault
            }
        }
    }

    /// Whether the running CPU would fault on `va` because of a stale
    /// invalid walk it may still reuse (arm64, until `isb`).
    pub fn stale_invalid(&self, space: SpaceId, va: u64) -> bool {
        let page = va >> 12;
        self.cpus[self.current.get()]
            .stale_invalid
            .borrow()
            .iter()
            .any(|&(s, p)| (s == space || s == SpaceId::KERNEL) && p == page)
    }

    // ----- TLB maintenance ------------------------------------------------

    /// Invalidates `[start, end)` of `space` in CPU `cpu`'s TLB.
    pub fn tlb_invalidate_range(&self, cpu: usize, space: SpaceId, start: u64, end: u64) {
        self.cpus[cpu]
            .tlb
            .borrow_mut()
            .invalidate_range(space, start, end);
    }

    /// Invalidates the non-global entries of `space` in CPU `cpu`'s TLB.
    pub fn tlb_invalidate_space(&self, cpu: usize, space: SpaceId) {
        self.cpus[cpu].tlb.borrow_mut().invalidate_space(space);
    }

    /// Invalidates all of CPU `cpu`'s TLB.
    pub fn tlb_invalidate_all(&self, cpu: usize) {
        self.cpus[cpu].tlb.borrow_mut().invalidate_all();
    }

    /// The cached translations of CPU `cpu`.
    pub fn tlb_entries(&self, cpu: usize) -> Vec<TlbEntry> {
        self.cpus[cpu].tlb.borrow().entries().to_vec()
    }

    /// Checks that no CPU caches a translation of `[start, end)` in `space`
    /// that differs from what the walker sees now.
    pub fn check_no_stale(&self, space: SpaceId, start: u64, end: u64, why: &str) {
        for cpu in 0..self.cpus.len() {
            let stale: Vec<TlbEntry> = self.cpus[cpu]
                .tlb
                .borrow()
                .entries()
                .iter()
                // A flush of a user space promises nothing about global
                // (kernel) translations; a flush of the kernel's space
                // covers them.
                .filter(|e| {
                    let covered = if space == SpaceId::KERNEL {
                        e.global || e.space == space
                    } else {
                        !e.global && e.space == space
                    };
                    covered && e.overlaps(start, end)
                })
                .copied()
                .collect();
            for e in stale {
                let now = self.walk(e.space, e.base.max(start));
                if now.map(|l| l.entry) != Some(e.leaf) {
                    self.violation(
                        Invariant::StaleTranslation,
                        format!(
                            "{why}: cpu{cpu} still caches {:#x} -> {:#x} in space {}; the walker sees {:?}",
                            e.base, e.leaf, e.space.0, now.map(|l| l.entry)
                        ),
                    );
                }
            }
        }
    }

    // ----- choice points and scheduling ----------------------------------

    /// Runs `f` with choice points suppressed (the machine's own code: switch
    /// hooks, checks).
    pub fn atomically<R>(&self, f: impl FnOnce() -> R) -> R {
        self.atomic.set(self.atomic.get() + 1);
        let r = f();
        self.atomic.set(self.atomic.get() - 1);
        r
    }

    /// A choice point. Cheap when the chooser is passive.
    #[inline]
    pub fn choice_point(&self, site: Site) {
        self.step.set(self.step.get() + 1);
        if self.passive.get() || self.atomic.get() > 0 {
            return;
        }
        self.choose(site);
    }

    #[inline(never)]
    fn choose(&self, site: Site) {
        if self.config.stop_on_violation && self.violation_count.get() > 0 {
            return;
        }
        let cpu = self.current.get();
        let c = &self.cpus[cpu];
        let task = self.current_task();
        let preemptible = c.preempt.get() == 0 && c.irq_depth.get() == 0;
        let nest_ok = self.nesting.get() < self.config.max_nesting;
        let mut options = core::mem::take(&mut *self.options.borrow_mut());
        options.clear();
        options.push(Choice::Continue);
        if nest_ok && c.irq_depth.get() == 0 {
            options.push(Choice::Interrupt);
        }
        if nest_ok && preemptible {
            let tasks = self.tasks.borrow();
            for (id, t) in tasks.iter().enumerate() {
                if id != task && t.state == TaskState::Ready {
                    options.push(Choice::Preempt { task: id });
                }
            }
            drop(tasks);
            for other in 0..self.cpus.len() {
                if other != cpu && self.cpus[other].task.get().is_none() {
                    options.push(Choice::Migrate { cpu: other });
                }
            }
        }
        if c.irq_depth.get() == 0 && self.cpus.len() > 1 {
            options.push(Choice::RemoteFlush);
        }
        let point = ChoicePoint {
            step: self.step.get(),
            cpu,
            task,
            site,
            preemptible,
            preemptions: self.preemptions.get(),
        };
        let pick = if options.len() == 1 {
            0
        } else {
            let pick = self.chooser.borrow_mut().choose(&point, &options);
            let pick = if pick < options.len() { pick } else { 0 };
            self.trace.borrow_mut().push(pick as u32);
            pick
        };
        let choice = options[pick];
        *self.options.borrow_mut() = options;
        match choice {
            Choice::Continue => {}
            Choice::Interrupt => {
                self.log(EventKind::Choice(choice));
                self.interrupt();
            }
            Choice::Preempt { task: next } => {
                self.log(EventKind::Choice(choice));
                self.preempt(next, None);
            }
            Choice::Migrate { cpu: to } => {
                self.log(EventKind::Choice(choice));
                self.preempt(usize::MAX, Some(to));
            }
            Choice::RemoteFlush => {
                self.log(EventKind::Choice(choice));
                self.remote_flush();
            }
        }
    }

    fn kernel(&self) -> Option<Rc<dyn Kernel>> {
        self.kernel.borrow().clone()
    }

    /// Takes an interrupt on the running CPU now: exception entry (key
    /// register to its default), the kernel's handler, exception return;
    /// checks the key register is restored exactly.
    pub fn interrupt(&self) {
        let Some(kernel) = self.kernel() else { return };
        let cpu = self.current.get();
        let c = &self.cpus[cpu];
        self.nesting.set(self.nesting.get() + 1);
        c.irq_depth.set(c.irq_depth.get() + 1);
        self.log(EventKind::IrqEnter);
        let interrupted_key = c.key.get();
        c.irq_keys.borrow_mut().push(interrupted_key);
        kernel.exception_entry();
        kernel.interrupt();
        kernel.exception_exit();
        c.irq_keys.borrow_mut().pop();
        let key_now = self.cpus[self.current.get()].key.get();
        if self.config.hardware.keys != KeyModel::None && key_now != interrupted_key {
            self.violation(
                Invariant::KeyRestore,
                format!("exception return left key register {key_now:#x}, interrupted value was {interrupted_key:#x}"),
            );
        }
        self.log(EventKind::IrqExit);
        c.irq_depth.set(c.irq_depth.get() - 1);
        self.nesting.set(self.nesting.get() - 1);
    }

    fn remote_flush(&self) {
        let cpu = self.current.get();
        let c = &self.cpus[cpu];
        c.irq_depth.set(c.irq_depth.get() + 1);
        self.log(EventKind::IrqEnter);
        self.tlb_invalidate_all(cpu);
        self.log(EventKind::IrqExit);
        c.irq_depth.set(c.irq_depth.get() - 1);
    }

    /// Switches the running CPU from its task to `next`, running the
    /// switch hooks and moving the key register.
    fn switch(&self, cpu: usize, next: Option<usize>) {
        let Some(kernel) = self.kernel() else { return };
        let saved = self.current.get();
        self.current.set(cpu);
        let c = &self.cpus[cpu];
        if let Some(prev) = c.task.get() {
            let lazy = self.tasks.borrow()[prev].lazy;
            self.log(EventKind::SwitchOut(prev));
            self.atomically(|| kernel.switch_out(lazy));
            if self.config.hardware.arm64_barriers {
                // arm64 __switch_to() always issues `dsb ish` (to complete
                // TLB and cache maintenance before the task can run
                // elsewhere), so the outgoing CPU's stores are visible
                // after a switch whatever the lazy MMU code did. Part of
                // every context switch, not charged to the workload.
                let drained = core::mem::take(&mut *c.pending.borrow_mut());
                self.pending_stores
                    .set(self.pending_stores.get() - drained.len());
            }
            c.task.set(None);
        }
        if let Some(next) = next {
            // Take the task off the CPU it last ran on, if it is still there.
            let last = self.tasks.borrow()[next].cpu;
            if last != cpu && self.cpus[last].task.get() == Some(next) {
                self.switch(last, None);
                self.current.set(cpu);
            }
            let (lazy, space) = {
                let mut tasks = self.tasks.borrow_mut();
                tasks[next].cpu = cpu;
                (tasks[next].lazy, tasks[next].space)
            };
            let loaded = c.loaded.replace(space);
            if self.config.hardware.flush_on_switch && loaded != space {
                c.tlb.borrow_mut().invalidate_space(loaded);
            }
            c.task.set(Some(next));
            self.log(EventKind::SwitchIn(next));
            self.atomically(|| kernel.switch_in(lazy));
        }
        self.current.set(saved);
    }

    /// Preempts the running task: either `next` runs a unit of work on
    /// this CPU and the preempted task resumes here, or (`migrate_to`) the
    /// preempted task resumes on another CPU.
    fn preempt(&self, next: usize, migrate_to: Option<usize>) {
        let Some(kernel) = self.kernel() else { return };
        let cpu = self.current.get();
        let Some(prev) = self.cpus[cpu].task.get() else {
            return;
        };
        self.preemptions.set(self.preemptions.get() + 1);
        let in_section =
            self.tasks.borrow()[prev].lazy.is_active() || self.cpus[cpu].lazy.get().is_active();
        if in_section {
            self.preempted_in_section
                .set(self.preempted_in_section.get() + 1);
        }
        self.nesting.set(self.nesting.get() + 1);
        match migrate_to {
            None => {
                self.switch(cpu, Some(next));
                self.current.set(cpu);
                self.run_unit_of(&*kernel, next);
                self.current.set(cpu);
                self.switch(cpu, Some(prev));
                self.current.set(cpu);
            }
            Some(to) => {
                self.switch(cpu, None);
                self.switch(to, Some(prev));
                self.current.set(to);
            }
        }
        self.nesting.set(self.nesting.get() - 1);
    }

    fn run_unit_of(&self, kernel: &dyn Kernel, task: usize) {
        self.tasks.borrow_mut()[task].state = TaskState::Busy;
        let more = kernel.run_unit(task);
        self.tasks.borrow_mut()[task].state = if more {
            TaskState::Ready
        } else {
            TaskState::Done
        };
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
        let cpu = self.current.get();
        let task = self.cpus[cpu].task.get();
        self.switch(cpu, None);
        self.switch(cpu, task);
        self.current.set(cpu);
    }

    /// Runs every task to completion, one unit of work at a time in round
    /// robin, each on its own CPU (with a context switch where tasks share
    /// a CPU). Choice points inside may interleave them further.
    pub fn run(&self) {
        let Some(kernel) = self.kernel() else { return };
        loop {
            let mut progressed = false;
            for id in 0..self.task_count() {
                if self.config.stop_on_violation && self.violation_count.get() > 0 {
                    // A violation stops the run: no task starts another
                    // unit of work.
                    return;
                }
                if self.tasks.borrow()[id].state != TaskState::Ready {
                    continue;
                }
                let cpu = self.tasks.borrow()[id].cpu;
                if self.cpus[cpu].task.get() != Some(id) {
                    self.switch(cpu, Some(id));
                }
                self.current.set(cpu);
                self.choice_point(Site::Unit);
                if self.tasks.borrow()[id].state != TaskState::Ready {
                    continue;
                }
                let cpu = self.tasks.borrow()[id].cpu;
                self.current.set(cpu);
                self.run_unit_of(&*kernel, id);
                progressed = true;
            }
            if !progressed {
                break;
            }
        }
    }

    /// A digest of the machine state (CPUs, tasks, memory, TLBs, and the
    /// kernel's own digest) for pruning visited states.
    pub fn digest(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for (i, c) in self.cpus.iter().enumerate() {
            h.write_usize(i);
            h.write_usize(c.task.get().map_or(usize::MAX, |t| t));
            h.write_u32(c.irq_depth.get());
            h.write_u32(c.preempt.get());
            h.write_u64(c.key.get());
            core::hash::Hash::hash(&c.lazy.get(), &mut h);
            for e in c.tlb.borrow().entries() {
                core::hash::Hash::hash(e, &mut h);
            }
            for (pa, v) in c.pending.borrow().iter() {
                h.write_u64(pa.0);
                h.write_u64(*v);
            }
        }
        for t in self.tasks.borrow().iter() {
            core::hash::Hash::hash(t, &mut h);
        }
        self.memory.digest(&mut h);
        if let Some(kernel) = self.kernel() {
            h.write_u64(kernel.digest());
        }
        h.finish()
    }
}

impl core::fmt::Debug for Machine {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Machine")
            .field("cpus", &self.cpus.len())
            .field("tasks", &self.tasks.borrow().len())
            .field("step", &self.step.get())
            .field("violations", &self.violation_count.get())
            .finish()
    }
}
