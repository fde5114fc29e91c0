//! The machine: CPUs with TLBs, interrupt depth, preemption count, key
//! register, lazy-TLB and key-window state and a root register; tasks with
//! their lazy state, `mm` and key state; the address spaces with their CPU
//! masks; physical memory; one cost table and one event log; and the one
//! scheduler that resolves choice points.
//!
//! Every task with work runs on a stackful coroutine of its own
//! ([`sched`]), so a preemption can suspend it at any choice point inside a
//! library call, and a plain run pays for a switch only when one happens.
//! What the kernel does at a context switch, an interrupt or a unit of work
//! is the library's business, reached through the [`Kernel`] trait; the
//! library reaches the machine through [`SimCpu`] and [`SimEnv`]
//! ([`primitives`]), which implement every machine trait it declares.
//!
//! Both `lazymmu compare` (seeded random choices) and `lazymmu check` (the
//! explorer) run this machine.

pub(crate) mod online;
pub mod primitives;
pub mod sched;
mod stacks;
pub mod timeline;
pub mod topology;

use core::cell::{Cell, RefCell};
use core::hash::{BuildHasherDefault, Hasher};
use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use lazymmu::addr::{PhysAddr, SpaceId, VirtAddr};
use lazymmu::cpu::{CpuId, CpuMask};
use lazymmu::mm::active_mm::{AddressSpace, CpuTlbState, TaskMm};
use lazymmu::mm::pkey_window::{CpuKeyState, TaskKeyState};
use lazymmu::mm::{LineAccess, LineState, SharedLine};
use lazymmu::mode::LazyState;

pub use primitives::{tables_under, walk, SimCpu, SimEnv, SimFrames, SimMemory};
pub use topology::{Distance, Topology};

use crate::choice::{Chooser, Sequential};
use crate::cost::{Cost, CostModel, Counts, Platform, Primitive};
use crate::events::{Event, EventKind, EventRing};
use crate::footprint::{FootprintLog, Location};
use crate::invariant::{Invariant, Violation};
use crate::memory::PhysMemory;
use crate::tlb::{Tlb, TlbEntry};
use online::OnlineCpus;

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
    /// Loading another root flushes the CPU's non-global translations (x86
    /// CR3 write without PCID; Xen PV guests).
    pub flush_on_switch: bool,
    /// The key page-table pages carry when protected.
    pub table_key: u8,
    /// The key register value each CPU starts with and exceptions load.
    pub default_key: u64,
    /// arm64 FEAT_TLBIRANGE: `tlbi rvae1is` and friends invalidate a range
    /// of pages in one instruction (`system_supports_tlb_range()`).
    pub tlb_range: bool,
    /// powerpc hash MMU: the first access to a page inserts a hash-table
    /// entry and sets `H_PAGE_HASHPTE` in its PTE (`__hash_page_4K`).
    pub hash_ptes: bool,
    /// The hardware walks the page tables and its walk caches depend on
    /// the table pages (x86, arm64, s390); sparc64's TLB is filled by
    /// software from the TSB and powerpc's from the hash table, so their
    /// cached translations do not keep table pages in use.
    pub walk_caches: bool,
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
        tlb_range: false,
        hash_ptes: false,
        walk_caches: true,
    };
}

/// Which disturbances the scheduler offers at a choice point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Offers {
    /// Interrupts per run at most (`None`: no limit).
    pub interrupts: Option<u32>,
    /// Preemption to another task with work.
    pub preempt: bool,
    /// Migration to another CPU.
    pub migrate: bool,
    /// Migration also to a CPU whose task has work (the task then waits
    /// there until that task's unit is done); otherwise only to idle CPUs.
    pub migrate_to_busy: bool,
    /// Letting another CPU's task run (the CPUs interleave inside units of
    /// work, not only between them).
    pub run_other: bool,
    /// A remote CPU's TLB shootdown arriving.
    pub remote_flush: bool,
}

impl Offers {
    /// Everything: what `lazymmu check` explores.
    pub const ALL: Offers = Offers {
        interrupts: None,
        preempt: true,
        migrate: true,
        migrate_to_busy: true,
        run_other: true,
        remote_flush: true,
    };

    /// Nothing: a workload that makes every decision itself.
    pub const NONE: Offers = Offers {
        interrupts: Some(0),
        preempt: false,
        migrate: false,
        migrate_to_busy: false,
        run_other: false,
        remote_flush: false,
    };

    /// What a `lazymmu compare` run is disturbed with: interrupts,
    /// preemption, migration to idle CPUs, remote flushes.
    pub const COMPARE: Offers = Offers {
        interrupts: None,
        preempt: true,
        migrate: true,
        migrate_to_busy: false,
        run_other: false,
        remote_flush: true,
    };
}

/// Known-bad machines and kernels, for showing that the checks catch them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Faults {
    /// The lazy mode's environment ignores `preempt_disable`: the counter
    /// update and the arch hook are no longer atomic with respect to
    /// context switches (Linux 7.0's ordering).
    pub preemptible_transitions: bool,
    /// The environment and the primitives tell the library it is never in
    /// interrupt context, so handlers' updates are batched.
    pub hide_interrupts: bool,
    /// IPIs to other CPUs vanish.
    pub lose_ipis: bool,
    /// Protection-key windows ignore `preempt_disable` (a per-CPU window
    /// that can be preempted).
    pub preemptible_windows: bool,
}

/// The machine's configuration.
#[derive(Clone, Debug)]
pub struct MachineConfig {
    /// Number of CPUs.
    pub cpus: usize,
    /// How the CPUs sit (threads, cores, sockets): what a cache-line
    /// transfer between two of them costs. Holds `cpus` CPUs.
    pub topology: Topology,
    /// Frames of physical memory for page tables.
    pub frames: u32,
    /// Address spaces the machine can hold (`SpaceId` 0 is the kernel's).
    pub spaces: usize,
    /// Tasks the machine can hold besides the idle task of each CPU.
    pub tasks: usize,
    /// TLB entries per CPU.
    pub tlb_entries: usize,
    /// What the hardware does.
    pub hardware: HardwareModel,
    /// Cycle costs.
    pub cost: CostModel,
    /// Events kept for violation reports.
    pub event_ring: usize,
    /// Stop the run after the first violation: no more choices, no new
    /// unit of work (the units in progress finish).
    pub stop_on_violation: bool,
    /// What the scheduler offers at a choice point.
    pub offers: Offers,
    /// Known-bad switches.
    pub faults: Faults,
    /// Bytes of each task's coroutine stack.
    pub stack_bytes: usize,
}

impl MachineConfig {
    /// A configuration for `cpus` CPUs on `platform` with plain hardware.
    pub fn new(cpus: usize, platform: Platform) -> Self {
        let cpus = cpus.clamp(1, lazymmu::cpu::MAX_CPUS);
        Self {
            cpus,
            topology: Topology::flat(cpus),
            frames: 4096,
            spaces: 16,
            tasks: 16,
            tlb_entries: 64,
            hardware: HardwareModel::PLAIN,
            cost: CostModel::new(platform),
            event_ring: 50,
            stop_on_violation: true,
            offers: Offers::COMPARE,
            faults: Faults::default(),
            stack_bytes: 1 << 20,
        }
    }

    /// A configuration for the CPUs of `topology` on `platform`.
    pub fn with_topology(topology: Topology, platform: Platform) -> Self {
        Self {
            topology,
            ..Self::new(topology.cpus(), platform)
        }
    }
}

/// What the kernel running on the machine does at a context switch, an
/// interrupt, or a unit of a task's work. Every method runs on the
/// machine's current CPU.
pub trait Kernel {
    /// `arch_start_context_switch(prev)` and what goes before the switch:
    /// `prev` is still current on `cpu`.
    fn switch_out(&self, cpu: CpuId, prev: usize) {
        let _ = (cpu, prev);
    }
    /// `switch_mm_irqs_off()`: the address-space part of the switch, with
    /// `prev` still current. Returns false when the kernel leaves it to
    /// the machine, which then loads `next`'s root itself (a kernel thread
    /// keeps what is loaded).
    fn switch_mm(&self, cpu: CpuId, prev: usize, next: usize) -> bool {
        let _ = (cpu, prev, next);
        false
    }
    /// `arch_end_context_switch(next)` and what follows the switch: `next`
    /// is current on `cpu`.
    fn switch_in(&self, cpu: CpuId, next: usize) {
        let _ = (cpu, next);
    }
    /// Exception entry (before the handler runs, in interrupt context).
    fn exception_entry(&self) {}
    /// Exception return (after the handler, still in interrupt context).
    fn exception_exit(&self) {}
    /// The interrupt handler.
    fn interrupt(&self) {}
    /// A page-table page was just allocated (`allocated`) or is about to
    /// be freed (`pagetable_alloc`, `pagetable_free`).
    fn page_table_page(&self, frame: PhysAddr, allocated: bool) {
        let _ = (frame, allocated);
    }
    /// Runs `task`'s next unit of work; false when it has none left.
    fn run_unit(&self, task: usize) -> bool;
    /// `task` has done all its work (checks that nothing it deferred was
    /// lost).
    fn task_done(&self, task: usize) {
        let _ = task;
    }
    /// Feeds the kernel's own state (workload progress, what the library
    /// has deferred) to `h`, for [`Machine::digest`].
    fn digest(&self, h: &mut DefaultHasher) {
        let _ = h;
    }
}

/// Where a task is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TaskState {
    /// Has work, between units.
    Ready,
    /// In the middle of a unit of work (running, or suspended).
    Busy,
    /// No more work.
    Done,
    /// Runs no work of its own (an idle task, a kernel thread or a task a
    /// workload drives directly).
    Idle,
}

/// A task.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Task {
    /// Its name in reports.
    pub name: String,
    /// Its lazy MMU state.
    pub lazy: LazyState,
    /// Its address space ([`SpaceId::KERNEL`] for a kernel thread).
    pub space: SpaceId,
    /// The CPU it last ran on.
    pub cpu: CpuId,
    /// The task's copies of the key register: the value while switched out
    /// and the value its outermost section found.
    pub keys: [Option<u64>; 2],
    /// Another address space whose page tables this task may write (a
    /// fork child under construction).
    pub writes_to: Option<SpaceId>,
    /// Arch state a backend keeps per task (arm64's pending-barrier flag).
    pub arch: u64,
    /// Where it is.
    pub state: TaskState,
    /// Whether it took a step since it was last given the CPU (a
    /// preemption or a switch of CPUs is offered only then, so that two
    /// tasks cannot hand the CPU back and forth without doing anything).
    pub progressed: bool,
    /// A hash of the choice points the task passed since its current unit
    /// began: where inside the unit (and inside the library) it is.
    pub position: u64,
}

/// One CPU's hardware and kernel state.
#[derive(Debug)]
pub(crate) struct CpuState {
    pub(crate) current: Cell<usize>,
    /// Tasks preempted here (or waiting to migrate here) in the middle of
    /// a unit, resumed when the running one finishes its unit.
    pub(crate) preempted: RefCell<Vec<usize>>,
    /// The address space whose root is loaded.
    pub(crate) loaded: Cell<SpaceId>,
    pub(crate) lazy: Cell<LazyState>,
    pub(crate) irq_depth: Cell<u32>,
    pub(crate) preempt: Cell<u32>,
    pub(crate) key: Cell<u64>,
    pub(crate) tlb: RefCell<Tlb>,
    /// arm64: stores of valid kernel entries not yet made visible by a
    /// `dsb`, with the value the walker still sees.
    pub(crate) pending: RefCell<Vec<(PhysAddr, u64)>>,
    /// arm64: (space, page) walks that found an invalid entry, reusable
    /// until an `isb`.
    pub(crate) stale_invalid: RefCell<Vec<(SpaceId, u64)>>,
    /// Invalidations this CPU made per address space (what a paging-
    /// structure cache could still hold), indexed by space id.
    pub(crate) invalidations: RefCell<Vec<u64>>,
    /// Cycles of work done on this CPU.
    pub(crate) work: Cell<u64>,
    /// This CPU's time: its work, plus the cycles it waited for a cache
    /// line or for another CPU to wake it.
    pub(crate) clock: Cell<u64>,
    /// The lazy-TLB state of the CPU (`cpu_tlbstate`).
    pub(crate) lazy_tlb: CpuTlbState,
    /// The protection-key window state of the CPU.
    pub(crate) keys: CpuKeyState,
}

impl CpuState {
    /// CPU `cpu` as it boots: its idle task (task `cpu`) current, the
    /// kernel's space loaded, an empty TLB of `tlb_entries`, the key
    /// register at `default_key`.
    pub(crate) fn boot(cpu: usize, tlb_entries: usize, default_key: u64) -> Self {
        Self {
            current: Cell::new(cpu),
            preempted: RefCell::new(Vec::new()),
            loaded: Cell::new(SpaceId::KERNEL),
            lazy: Cell::new(LazyState::IDLE),
            irq_depth: Cell::new(0),
            preempt: Cell::new(0),
            key: Cell::new(default_key),
            tlb: RefCell::new(Tlb::new(tlb_entries)),
            pending: RefCell::new(Vec::new()),
            stale_invalid: RefCell::new(Vec::new()),
            invalidations: RefCell::new(Vec::new()),
            work: Cell::new(0),
            clock: Cell::new(0),
            lazy_tlb: CpuTlbState::new(),
            keys: CpuKeyState::new(),
        }
    }
}

/// A translation the walker found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Leaf {
    /// The leaf entry.
    pub entry: u64,
    /// Where the leaf entry is.
    pub at: PhysAddr,
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
    cpus: OnlineCpus,
    tasks: RefCell<Vec<Task>>,
    task_mm: Box<[TaskMm]>,
    task_keys: Box<[TaskKeyState]>,
    spaces: Box<[AddressSpace]>,
    space_roots: Box<[Cell<PhysAddr>]>,
    top_level_tables: RefCell<HashSet<u64>>,
    current: Cell<CpuId>,
    counts: Counts,
    disturbance_counts: Counts,
    disturbing: Cell<u32>,
    /// Per task: nesting depth of work that is not charged at all (a
    /// workload's preparation between measured calls). Per task, since a
    /// task preempted in the middle of it must not take it to another.
    uncounted: Box<[Cell<u32>]>,
    events: RefCell<EventRing>,
    violations: RefCell<Vec<Violation>>,
    violation_count: Cell<u64>,
    kernel: RefCell<Option<Rc<dyn Kernel>>>,
    walker: Cell<Option<WalkFn>>,
    kernel_root: Cell<PhysAddr>,
    is_kernel_va: Cell<fn(u64) -> bool>,
    pending_stores: Cell<usize>,
    lines: RefCell<HashMap<SharedLine, Line, BuildHasherDefault<LineHasher>>>,
    line_waits: Cell<u64>,
    stcx_failures: Cell<u64>,
    /// PTEs a hash fault marked (`H_PAGE_HASHPTE`) since the library last
    /// stored to them, with the value the fault found:
    /// [`Machine::hash_marked`].
    hash_marked: RefCell<HashMap<PhysAddr, u64>>,
    timeline: timeline::Timeline,
    table_finder: Cell<Option<TableFinder>>,
    unlinked: RefCell<HashMap<SpaceId, Unlinked>>,
    /// Per space: s390's `mm->context.flush_mm`.
    flush_mm: Box<[Cell<bool>]>,
    /// Per space: Xen PV page tables unpinned (writable to the guest).
    unpinned: Box<[Cell<bool>]>,
    /// The disturbance depth saved by each open `deferred_begin`.
    deferred: RefCell<Vec<u32>>,
    sched: sched::Scheduler,
}

/// A cache line other CPUs share, as the coherence fabric sees it.
#[derive(Clone, Copy, Debug)]
struct Line {
    /// Who holds it (`None`: no cache yet).
    state: Option<LineState>,
    /// When the last exclusive transfer of the line completes: a later
    /// read or write waits for it (the line's queue).
    busy_until: u64,
    /// Stores to the line so far: a store-conditional fails when this moved
    /// since its load-reserve.
    version: u64,
    /// Transfers of the line so far.
    transfers: u64,
}

/// A fast hash for the few shared lines a run touches (the multiply-rotate
/// of rustc's FxHasher): every line access looks one up.
#[derive(Default)]
struct LineHasher(u64);

impl Hasher for LineHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn write_isize(&mut self, n: isize) {
        self.write_u64(n as u64);
    }
}

/// Page-table frames detached from a space and not yet freed, and each
/// CPU's invalidation count of the space when they were detached.
#[derive(Debug, Default)]
struct Unlinked {
    frames: Vec<PhysAddr>,
    invalidations: Vec<u64>,
}

/// Finds the page-table frames of a tree that an unmap of a range detaches
/// (see [`primitives::tables_under`]): the entries linking them and the
/// frames.
pub type TableFinder =
    fn(&PhysMemory, PhysAddr, lazymmu::mm::active_mm::FlushRange) -> Vec<(PhysAddr, PhysAddr)>;

impl Machine {
    /// A machine with every CPU running its idle task and no other task.
    pub fn new(config: MachineConfig) -> Self {
        let cpus = config.cpus;
        let cpu_states = OnlineCpus::new(cpus, config.tlb_entries, config.hardware.default_key);
        let task_slots = cpus + config.tasks;
        let idle = (0..cpus)
            .map(|cpu| Task {
                name: format!("idle{cpu}"),
                lazy: LazyState::IDLE,
                space: SpaceId::KERNEL,
                cpu: CpuId::new(cpu),
                keys: [None, None],
                writes_to: None,
                arch: 0,
                state: TaskState::Idle,
                progressed: true,
                position: 0,
            })
            .collect();
        let spaces = config.spaces.max(1);
        Self {
            memory: PhysMemory::new(config.frames),
            cpus: cpu_states,
            tasks: RefCell::new(idle),
            task_mm: (0..task_slots).map(|_| TaskMm::kernel_thread()).collect(),
            task_keys: (0..task_slots).map(|_| TaskKeyState::new()).collect(),
            spaces: (0..spaces)
                .map(|i| {
                    if i == 0 {
                        AddressSpace::kernel()
                    } else {
                        AddressSpace::new(SpaceId(i as u32))
                    }
                })
                .collect(),
            space_roots: (0..spaces).map(|_| Cell::new(PhysAddr(0))).collect(),
            top_level_tables: RefCell::new(HashSet::new()),
            current: Cell::new(CpuId(0)),
            counts: Counts::default(),
            disturbance_counts: Counts::default(),
            disturbing: Cell::new(0),
            uncounted: (0..task_slots).map(|_| Cell::new(0)).collect(),
            events: RefCell::new(EventRing::new(config.event_ring)),
            violations: RefCell::new(Vec::new()),
            violation_count: Cell::new(0),
            kernel: RefCell::new(None),
            walker: Cell::new(None),
            kernel_root: Cell::new(PhysAddr(0)),
            is_kernel_va: Cell::new(|va| va >> 63 != 0),
            pending_stores: Cell::new(0),
            lines: RefCell::new(HashMap::default()),
            line_waits: Cell::new(0),
            stcx_failures: Cell::new(0),
            hash_marked: RefCell::new(HashMap::new()),
            timeline: timeline::Timeline::new(),
            table_finder: Cell::new(None),
            unlinked: RefCell::new(HashMap::new()),
            flush_mm: (0..spaces).map(|_| Cell::new(false)).collect(),
            unpinned: (0..spaces).map(|_| Cell::new(false)).collect(),
            deferred: RefCell::new(Vec::new()),
            sched: sched::Scheduler::new(task_slots),
            config,
        }
    }

    // ----- configuration -------------------------------------------------

    /// The configuration.
    pub fn config(&self) -> &MachineConfig {
        &self.config
    }

    /// What the running stretch of execution touches
    /// ([`crate::footprint`]); kernels record their own shared objects in
    /// it.
    #[inline]
    pub fn footprints(&self) -> &FootprintLog {
        self.memory.footprints()
    }

    /// Installs the chooser that resolves choice points.
    pub fn set_chooser(&self, chooser: Box<dyn Chooser>) {
        if chooser.wants_digest() {
            self.memory.track_digest();
        }
        self.footprints().set_recording(chooser.wants_footprints());
        self.sched.set_chooser(chooser);
    }

    /// Takes the chooser back (a [`Sequential`] one takes its place).
    pub fn take_chooser(&self) -> Box<dyn Chooser> {
        self.footprints().set_recording(false);
        self.sched.take_chooser(Box::new(Sequential))
    }

    /// Installs the kernel (the library side of switches, interrupts and
    /// units of work).
    pub fn set_kernel(&self, kernel: Rc<dyn Kernel>) {
        *self.kernel.borrow_mut() = Some(kernel);
    }

    /// Drops the kernel and the tasks' coroutines (breaking the reference
    /// cycles at the end of a run).
    pub fn shut_down(&self) {
        self.sched.drop_coroutines();
        self.kernel.borrow_mut().take();
    }

    pub(crate) fn kernel(&self) -> Option<Rc<dyn Kernel>> {
        self.kernel.borrow().clone()
    }

    /// Installs the hardware walker, the kernel's root and the test for
    /// kernel addresses (which translate through the kernel root).
    pub fn set_walker(&self, walker: WalkFn, kernel_root: PhysAddr, is_kernel: fn(u64) -> bool) {
        self.walker.set(Some(walker));
        self.kernel_root.set(kernel_root);
        self.space_roots[0].set(kernel_root);
        self.is_kernel_va.set(is_kernel);
    }

    /// Installs how lazy TLB's table frees find a tree's page-table frames
    /// (the tree's format: [`primitives::tables_under`]).
    pub fn set_table_finder(&self, finder: TableFinder) {
        self.table_finder.set(Some(finder));
    }

    /// Makes `cpu` the running CPU (the driver's own code between units).
    pub fn set_cpu(&self, cpu: CpuId) {
        self.current
            .set(CpuId::new(cpu.index() % self.cpus.possible()));
    }

    /// Physical memory.
    pub fn memory(&self) -> &PhysMemory {
        &self.memory
    }

    /// Counts of the running kernel's own work so far: the disturbances
    /// the scheduler injects are counted apart
    /// ([`disturbance_counts`](Self::disturbance_counts)).
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// Counts of the disturbances the scheduler injects: the interrupts
    /// and remote flushes the chooser picks, and the context switches of
    /// its own scheduling ([`Machine::schedule`]) except the kernel's
    /// switch-out and switch-in work.
    pub fn disturbance_counts(&self) -> &Counts {
        &self.disturbance_counts
    }

    /// Runs `f` as a disturbance the scheduler injects: what it charges
    /// goes to [`disturbance_counts`](Self::disturbance_counts).
    pub(crate) fn disturbing<R>(&self, f: impl FnOnce() -> R) -> R {
        let d = &self.disturbing;
        d.set(d.get() + 1);
        let r = f();
        d.set(d.get() - 1);
        r
    }

    /// Runs `f` without charging anything it does: a workload's
    /// preparation between the calls it measures (mapping the pages a
    /// call will unmap, tearing a fork's child down).
    pub fn uncounted<R>(&self, f: impl FnOnce() -> R) -> R {
        let task = self.current_task();
        let u = &self.uncounted[task];
        u.set(u.get() + 1);
        let r = f();
        let u = &self.uncounted[task];
        u.set(u.get() - 1);
        r
    }

    /// Modelled cycles so far.
    pub fn cycles(&self) -> u64 {
        self.config.cost.total(&self.counts)
    }

    /// Modelled cycles of the disturbances the scheduler injected.
    pub fn disturbance_cycles(&self) -> u64 {
        self.config.cost.total(&self.disturbance_counts)
    }

    /// Cycles of work each CPU did (interrupt work included).
    pub fn cpu_work(&self) -> Vec<u64> {
        (0..self.cpus.possible())
            .map(|i| self.cpus.peek(i).map_or(0, |c| c.work.get()))
            .collect()
    }

    /// The time of `cpu`: its work plus its waits for lines and wake-ups.
    pub fn clock_of(&self, cpu: CpuId) -> u64 {
        self.cpus.peek(cpu.index()).map_or(0, |c| c.clock.get())
    }

    /// The time the machine has run: the latest CPU clock.
    pub fn elapsed(&self) -> u64 {
        self.cpus
            .iter()
            .map(|(_, c)| c.clock.get())
            .max()
            .unwrap_or(0)
    }

    /// Cycles CPUs spent waiting for a line another CPU's transfer held.
    pub fn line_wait_cycles(&self) -> u64 {
        self.line_waits.get()
    }

    /// Store-conditionals that failed because another CPU stored to the
    /// line after the load-reserve (platforms whose atomics retry).
    pub fn stcx_failures(&self) -> u64 {
        self.stcx_failures.get()
    }

    /// The most transfers any one shared line made.
    pub fn hottest_line_transfers(&self) -> u64 {
        self.lines
            .borrow()
            .values()
            .map(|l| l.transfers)
            .max()
            .unwrap_or(0)
    }

    /// Transfers of lines of one kind: address-space counts, CPU masks,
    /// lazy flags.
    pub fn line_transfers_by_kind(&self) -> [u64; 3] {
        let mut kinds = [0; 3];
        for (line, l) in self.lines.borrow().iter() {
            kinds[match line {
                SharedLine::SpaceCount(_) => 0,
                SharedLine::SpaceCpumask(_) => 1,
                SharedLine::CpuLazy(_) => 2,
            }] += l.transfers;
        }
        kinds
    }

    /// Resets the counts and the clocks (after a setup stage); where the
    /// lines are stays.
    pub fn clear_counts(&self) {
        self.counts.clear();
        self.disturbance_counts.clear();
        for (_, c) in self.cpus.iter() {
            c.work.set(0);
            c.clock.set(0);
        }
        for line in self.lines.borrow_mut().values_mut() {
            line.transfers = 0;
            line.busy_until = 0;
        }
        self.line_waits.set(0);
        self.stcx_failures.set(0);
    }

    // ----- tasks, spaces and CPUs -----------------------------------------

    /// The idle task of `cpu`.
    pub fn idle_task(&self, cpu: CpuId) -> usize {
        cpu.index()
    }

    /// Adds a task named `name` in `space`, homed on `cpu`. With `work` it
    /// runs units of work ([`Kernel::run_unit`]) from [`Machine::run`];
    /// otherwise it runs only when a workload switches to it. It is not
    /// running anywhere until switched in ([`Machine::switch`], or the
    /// scheduler for a task with work whose CPU is idle). Returns its id.
    ///
    /// # Panics
    /// When the machine's task slots are used up.
    pub fn add_task(&self, name: &str, space: SpaceId, cpu: CpuId, work: bool) -> usize {
        let cpu = CpuId::new(cpu.index() % self.cpus.possible());
        let mut tasks = self.tasks.borrow_mut();
        let id = tasks.len();
        assert!(
            id < self.task_mm.len(),
            "the machine's task slots are used up"
        );
        tasks.push(Task {
            name: name.to_owned(),
            lazy: LazyState::IDLE,
            space,
            cpu,
            keys: [None, None],
            writes_to: None,
            arch: 0,
            state: if work {
                TaskState::Ready
            } else {
                TaskState::Idle
            },
            progressed: true,
            position: 0,
        });
        id
    }

    /// Number of tasks, idle tasks included.
    pub fn task_count(&self) -> usize {
        self.tasks.borrow().len()
    }

    /// A copy of a task.
    pub fn task(&self, id: usize) -> Task {
        self.footprints().read(Location::Task(id));
        self.tasks.borrow()[id].clone()
    }

    /// Changes a task's address space (exec, or a task structure reused).
    pub fn set_task_space(&self, id: usize, space: SpaceId) {
        self.tasks.borrow_mut()[id].space = space;
    }

    /// Lets task `id` write the page tables of `space` too (a fork child).
    pub fn set_task_writes_to(&self, id: usize, space: Option<SpaceId>) {
        self.tasks.borrow_mut()[id].writes_to = space;
    }

    /// Makes every finished task ready again (for the next stage of a
    /// run).
    pub fn restart_tasks(&self) {
        for t in self.tasks.borrow_mut().iter_mut() {
            if t.state == TaskState::Done {
                t.state = TaskState::Ready;
            }
        }
    }

    pub(crate) fn set_task_state(&self, id: usize, state: TaskState) {
        self.tasks.borrow_mut()[id].state = state;
    }

    /// The task's `mm` and `active_mm` (lazy TLB).
    pub fn task_mm(&self, id: usize) -> &TaskMm {
        self.footprints().write(Location::Task(id));
        &self.task_mm[id]
    }

    /// The task's protection-key window state.
    pub fn task_key_state(&self, id: usize) -> &TaskKeyState {
        self.footprints().write(Location::Task(id));
        &self.task_keys[id]
    }

    /// The address space `id` (its counts and CPU mask).
    ///
    /// # Panics
    /// When `id` is beyond the machine's spaces.
    pub fn space(&self, id: SpaceId) -> &AddressSpace {
        self.footprints().write(Location::Space(id));
        &self.spaces[id.0 as usize]
    }

    /// Number of address spaces the machine holds.
    pub fn space_count(&self) -> usize {
        self.spaces.len()
    }

    /// Sets the page-table root of `space` (the walker starts there for
    /// user addresses) and marks it a top-level table.
    pub fn set_space_root(&self, space: SpaceId, root: PhysAddr) {
        self.space_roots[space.0 as usize].set(root);
        self.mark_top_level(root);
    }

    /// The page-table root of `space`.
    pub fn space_root(&self, space: SpaceId) -> PhysAddr {
        self.space_roots[space.0 as usize].get()
    }

    /// Marks `table` a top-level table: its kernel half is the kernel's,
    /// whoever's table it is (kernel top-level sync writes it from any
    /// context).
    pub fn mark_top_level(&self, table: PhysAddr) {
        self.top_level_tables.borrow_mut().insert(table.0);
    }

    /// The CPU running now.
    #[inline]
    pub fn cpu(&self) -> CpuId {
        self.current.get()
    }

    #[inline]
    pub(crate) fn cpu_state(&self, cpu: CpuId) -> &CpuState {
        self.cpus.get(cpu.index())
    }

    #[inline]
    fn here(&self) -> &CpuState {
        self.cpus.get(self.current.get().index())
    }

    /// Number of CPUs (the possible CPUs: the topology's).
    pub fn cpu_count(&self) -> usize {
        self.cpus.possible()
    }

    /// CPUs that have run (come online): the ones whose state the machine
    /// holds. A possible CPU that never ran costs an empty slot.
    pub fn online_cpus(&self) -> usize {
        self.cpus.online()
    }

    /// Every CPU.
    pub fn all_cpus(&self) -> CpuMask {
        CpuMask::first(self.cpus.possible())
    }

    /// The lazy-TLB state of `cpu` (bringing it online).
    pub fn cpu_tlb_state(&self, cpu: CpuId) -> &CpuTlbState {
        self.footprints().write(Location::Cpu(cpu));
        &self.cpus.get(cpu.index()).lazy_tlb
    }

    /// The protection-key window state of `cpu` (bringing it online).
    pub fn cpu_key_state(&self, cpu: CpuId) -> &CpuKeyState {
        self.footprints().write(Location::Cpu(cpu));
        &self.cpus.get(cpu.index()).keys
    }

    /// The task running on the current CPU.
    #[inline]
    pub fn current_task(&self) -> usize {
        self.here().current.get()
    }

    /// The task running on `cpu`.
    pub fn task_on(&self, cpu: CpuId) -> usize {
        self.footprints().read(Location::Cpu(cpu));
        self.cpus
            .peek(cpu.index())
            .map_or(cpu.index(), |c| c.current.get())
    }

    /// The current task's address space (the kernel's for a kernel
    /// thread).
    pub fn current_space(&self) -> SpaceId {
        let t = self.current_task();
        self.tasks.borrow()[t].space
    }

    /// The address space whose root `cpu` has loaded.
    pub fn loaded_space(&self, cpu: CpuId) -> SpaceId {
        self.footprints().read(Location::Cpu(cpu));
        self.cpus
            .peek(cpu.index())
            .map_or(SpaceId::KERNEL, |c| c.loaded.get())
    }

    /// The current task's lazy state.
    #[inline]
    pub fn lazy_state(&self) -> LazyState {
        let t = self.current_task();
        self.footprints().read(Location::Task(t));
        self.tasks.borrow()[t].lazy
    }

    /// Stores the current task's lazy state.
    #[inline]
    pub fn set_lazy_state(&self, state: LazyState) {
        let t = self.current_task();
        self.footprints().write(Location::Task(t));
        self.tasks.borrow_mut()[t].lazy = state;
        self.log(EventKind::LazyState(state));
    }

    /// The running CPU's lazy state (the per-CPU design).
    #[inline]
    pub fn cpu_lazy_state(&self) -> LazyState {
        self.footprints().read(Location::Cpu(self.cpu()));
        self.here().lazy.get()
    }

    /// Stores the running CPU's lazy state (the per-CPU design).
    #[inline]
    pub fn set_cpu_lazy_state(&self, state: LazyState) {
        self.footprints().write(Location::Cpu(self.cpu()));
        self.here().lazy.set(state);
        self.log(EventKind::LazyState(state));
    }

    /// The current task's copy `slot` of the key register.
    pub fn task_key(&self, slot: usize) -> Option<u64> {
        let t = self.current_task();
        self.footprints().read(Location::Task(t));
        self.tasks.borrow()[t].keys[slot]
    }

    /// Stores the current task's copy `slot` of the key register.
    pub fn set_task_key(&self, slot: usize, value: u64) {
        let t = self.current_task();
        self.footprints().write(Location::Task(t));
        self.tasks.borrow_mut()[t].keys[slot] = Some(value);
    }

    /// The current task's arch slot.
    pub fn task_arch(&self) -> u64 {
        let t = self.current_task();
        self.footprints().read(Location::Task(t));
        self.tasks.borrow()[t].arch
    }

    /// Sets the current task's arch slot.
    pub fn set_task_arch(&self, value: u64) {
        let t = self.current_task();
        self.footprints().write(Location::Task(t));
        self.tasks.borrow_mut()[t].arch = value;
    }

    /// Whether the running CPU is in interrupt context.
    #[inline]
    pub fn in_interrupt(&self) -> bool {
        self.here().irq_depth.get() > 0
    }

    /// The running CPU's preemption count.
    #[inline]
    pub fn preempt_count(&self) -> u32 {
        self.here().preempt.get()
    }

    /// The preemption count of `cpu`.
    pub fn preempt_count_of(&self, cpu: CpuId) -> u32 {
        self.cpus.peek(cpu.index()).map_or(0, |c| c.preempt.get())
    }

    /// Disables preemption on the running CPU.
    #[inline]
    pub fn preempt_disable(&self) {
        let c = &self.here().preempt;
        c.set(c.get() + 1);
    }

    /// Re-enables preemption on the running CPU. An unbalanced enable is
    /// ignored and reported as misuse.
    #[inline]
    pub fn preempt_enable(&self) {
        let c = &self.here().preempt;
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
        self.footprints().read(Location::Cpu(self.cpu()));
        self.here().key.get()
    }

    /// The key register of `cpu`.
    pub fn key_of(&self, cpu: CpuId) -> u64 {
        self.footprints().read(Location::Cpu(cpu));
        self.cpus
            .peek(cpu.index())
            .map_or(self.config.hardware.default_key, |c| c.key.get())
    }

    /// Writes the running CPU's key register (costed).
    pub fn key_write(&self, value: u64) {
        self.footprints().write(Location::Cpu(self.cpu()));
        self.here().key.set(value);
        self.charge(Primitive::KeyWrite, 1);
    }

    /// Checks that applying a write to `entry` now belongs to the current
    /// context: the table is the kernel's, the current task's, one it is
    /// building, or the kernel half of a top-level table (the kernel's in
    /// every table); otherwise batched state is being applied in another
    /// task's context (§6.4).
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
        let ok = {
            let tasks = self.tasks.borrow();
            tasks[t].space == owner || tasks[t].writes_to == Some(owner)
        };
        if ok {
            return;
        }
        let frame = entry.0 & !(crate::memory::FRAME_BYTES - 1);
        let kernel_slot = (entry.0 - frame) / 8 >= 256;
        if kernel_slot && self.top_level_tables.borrow().contains(&frame) {
            return;
        }
        self.violation(
            Invariant::BatchOwnership,
            format!(
                "write to a page table of space {} applied while task t{t} (space {}) runs",
                owner.0,
                self.current_space().0
            ),
        );
    }

    /// `mm_cpumask(space)`: the CPUs lazy TLB keeps in the space's mask
    /// (those that loaded it and have not loaded another since, borrowers
    /// included); every CPU for the kernel's space.
    pub fn mm_cpumask(&self, space: SpaceId) -> CpuMask {
        if space == SpaceId::KERNEL {
            return self.all_cpus();
        }
        self.space(space).cpumask().and(self.all_cpus())
    }

    /// An IPI round trip from the running CPU to the remote CPUs of
    /// `targets`: the sender interrupts them together and waits for all
    /// (`smp_call_function_many_cond`), charged once when there is any.
    /// Returns how many remote CPUs it reaches.
    pub fn ipi(&self, targets: CpuMask) -> u32 {
        let remote = targets.and(self.all_cpus()).without(self.cpu()).count();
        if remote > 0 {
            self.charge(Primitive::Ipi, 1);
        }
        remote
    }

    /// Sets s390's `flush_mm` flag of `space`.
    pub fn set_flush_mm(&self, space: SpaceId) {
        self.footprints().write(Location::Space(space));
        if let Some(flag) = self.flush_mm.get(space.0 as usize) {
            flag.set(true);
        }
    }

    /// Clears s390's `flush_mm` flag of `space`; returns whether it was set.
    pub fn take_flush_mm(&self, space: SpaceId) -> bool {
        self.footprints().write(Location::Space(space));
        self.flush_mm
            .get(space.0 as usize)
            .is_some_and(|flag| flag.replace(false))
    }

    /// Pins (`true`) or unpins `space`'s page tables on a Xen PV guest: an
    /// unpinned table is writable to the guest.
    pub fn set_pinned(&self, space: SpaceId, pinned: bool) {
        self.footprints().write(Location::Space(space));
        if let Some(flag) = self.unpinned.get(space.0 as usize) {
            flag.set(!pinned);
        }
    }

    /// Whether the page-table frame holding `entry` belongs to a space
    /// whose tables are pinned (read-only to a Xen PV guest).
    pub fn pinned(&self, entry: PhysAddr) -> bool {
        self.footprints().read(Location::Allocator);
        match self.memory.owner(entry) {
            Some(owner) => {
                self.footprints().read(Location::Space(owner));
                !self.unpinned.get(owner.0 as usize).is_some_and(Cell::get)
            }
            None => true,
        }
    }

    /// Page-table frames `space` owns.
    pub fn table_frames(&self, space: SpaceId) -> u64 {
        self.memory.frames_owned_by(space)
    }

    /// Work the backend deferred earlier starts being issued
    /// (`CpuPrimitives::deferred_begin`): until the matching
    /// [`deferred_end`](Self::deferred_end) it is charged to the task that
    /// queued it, even from an injected interrupt.
    pub fn deferred_begin(&self) {
        let saved = self.disturbing.replace(0);
        self.deferred.borrow_mut().push(saved);
    }

    /// The deferred work is issued: charging goes back to what it was.
    pub fn deferred_end(&self) {
        if let Some(saved) = self.deferred.borrow_mut().pop() {
            self.disturbing.set(saved);
        }
    }

    // ----- accounting, events, violations --------------------------------

    /// Counts `n` of a row of the cost table and charges it to the running
    /// CPU. Work done for the disturbances the scheduler injects
    /// (interrupts and remote flushes the chooser picks, the scheduler's
    /// own context switches) is counted apart, so that eager and lazy
    /// runs, which offer the scheduler different numbers of choice points,
    /// are charged for their own work only. An interrupt a workload raises
    /// itself ([`Machine::interrupt`]) is its own work.
    #[inline]
    pub fn charge(&self, row: impl Into<Cost>, n: u64) {
        let row = row.into();
        if self.uncounted[self.here().current.get()].get() > 0 {
            return;
        }
        if self.disturbing.get() > 0 {
            self.disturbance_counts.add(row, n);
        } else {
            self.counts.add(row, n);
        }
        let cycles = self.config.cost.cycles(row).saturating_mul(n);
        let here = self.here();
        here.work.set(here.work.get().saturating_add(cycles));
        here.clock.set(here.clock.get().saturating_add(cycles));
        if let Cost::Primitive(p) = row {
            self.log(EventKind::Primitive(crate::cost::primitive_name(p)));
        }
    }

    /// Logs an event.
    #[inline(always)]
    pub fn log(&self, kind: EventKind) {
        let event = Event {
            step: self.sched.step(),
            cpu: self.current.get(),
            task: self.current_task(),
            kind,
        };
        self.events.borrow_mut().push(event);
    }

    /// Records a violation of `invariant` (the first 16 in full; the rest
    /// are counted). While the run is stopping, nothing more is recorded.
    #[cold]
    pub fn violation(&self, invariant: Invariant, detail: String) {
        if self.sched.stopping() {
            return;
        }
        self.violation_count.set(self.violation_count.get() + 1);
        let v = Violation {
            invariant,
            step: self.sched.step(),
            cpu: self.current.get(),
            task: self.current_task(),
            detail,
            events: self.events.borrow().to_vec(),
        };
        let mut all = self.violations.borrow_mut();
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

    /// Accounts an access by the running CPU to a line other CPUs share:
    /// the transfer it needs (if another CPU modified the line, or holds it
    /// when this is a write), costed by the distance in the topology the
    /// line travels, after waiting for the transfer before it (the line's
    /// queue). An atomic read-modify-write on a platform whose atomics
    /// retry ([`Platform::atomics_retry`]) is a load-reserve (a read) and a
    /// store-conditional (a write) that fails, and starts over, when
    /// another CPU stored to the line in between.
    ///
    /// Under [`Machine::run_timed`] every access happens in time order:
    /// the CPU waits until no other CPU is behind it. Elsewhere accesses
    /// happen in the order the run makes them, each CPU on its own clock.
    pub fn line_access(&self, line: SharedLine, access: LineAccess) {
        match access {
            LineAccess::Read => {
                self.line_read(line);
            }
            LineAccess::Write => self.line_write(line),
            LineAccess::Atomic if self.config.cost.platform().atomics_retry() => loop {
                let reserved = self.line_read(line);
                if self.line_store_conditional(line, reserved) {
                    break;
                }
                self.stcx_failures.set(self.stcx_failures.get() + 1);
                // The retry's load-reserve waits for the winner's transfer
                // in any case: wait for it before queueing.
                let busy = self.lines.borrow().get(&line).map_or(0, |l| l.busy_until);
                self.wait_for_line(busy);
            },
            LineAccess::Atomic => self.line_write(line),
        }
    }

    /// A load of `line` (or a load-reserve); returns the line's version.
    fn line_read(&self, line: SharedLine) -> u64 {
        self.timeline.wait_turn(self);
        self.line_move(line, false)
    }

    /// A store (or a `lock`-prefixed read-modify-write) to `line`.
    fn line_write(&self, line: SharedLine) {
        self.timeline.wait_turn(self);
        self.line_move(line, true);
    }

    /// A store-conditional to `line` after a load-reserve that saw
    /// `reserved`: whether it stored. It fails without a transfer when
    /// another CPU stored since (the reservation was lost when that store
    /// invalidated the line here).
    fn line_store_conditional(&self, line: SharedLine, reserved: u64) -> bool {
        let version = || self.lines.borrow().get(&line).map_or(0, |l| l.version);
        // A store already seen fails it whenever it runs.
        if version() != reserved {
            return false;
        }
        self.timeline.wait_turn(self);
        if version() != reserved {
            return false;
        }
        self.line_move(line, true);
        true
    }

    /// Brings `line` to the running CPU, shared, or `exclusive` for a
    /// store; returns its version after. A read that needs a transfer gets
    /// the data from the CPU that modified the line or the nearest that
    /// shares it; a store takes it from the one that modified it or
    /// invalidates every other copy (costed by the farthest). Either waits
    /// for the exclusive transfer in flight; reads do not queue behind one
    /// another (each gets a shared copy), stores do.
    fn line_move(&self, line: SharedLine, exclusive: bool) -> u64 {
        let cpu = self.current.get();
        let access = if exclusive {
            LineAccess::Write
        } else {
            LineAccess::Read
        };
        let topology = &self.config.topology;
        let clock = self.here().clock.get();
        let (distance, wait_until, version) = {
            let mut lines = self.lines.borrow_mut();
            let l = lines.entry(line).or_insert(Line {
                state: None,
                busy_until: 0,
                version: 0,
                transfers: 0,
            });
            // Where the line comes from, before the state moves on.
            let distance = match &l.state {
                None => None,
                Some(LineState::Modified(owner)) => topology.distance(*owner, cpu),
                Some(LineState::Shared(holders)) if exclusive => topology.farthest(holders, cpu),
                Some(LineState::Shared(holders)) if holders.contains(cpu) => None,
                Some(LineState::Shared(holders)) => topology.nearest(holders, cpu),
            };
            let transfer = LineState::access(&mut l.state, cpu, access);
            let distance = distance.filter(|_| transfer);
            let wait_until = l.busy_until;
            if let Some(d) = distance {
                l.transfers += 1;
                if exclusive {
                    l.busy_until = clock.max(wait_until) + self.config.cost.cycles(Cost::Line(d));
                }
            }
            if exclusive {
                l.version += 1;
            }
            (distance, wait_until, l.version)
        };
        if let Some(d) = distance {
            self.wait_for_line(wait_until);
            self.charge(Cost::Line(d), 1);
        }
        version
    }

    /// The running CPU waits until `until` for a line another transfer
    /// holds.
    fn wait_for_line(&self, until: u64) {
        let clock = &self.here().clock;
        if until > clock.get() {
            self.line_waits
                .set(self.line_waits.get() + (until - clock.get()));
            clock.set(until);
        }
    }

    // ----- memory and the walker -----------------------------------------

    /// Reads a page-table entry as the CPU sees it (its own stores
    /// included). A read that observes another CPU's store not yet made
    /// visible by a `dsb` makes it visible to every walker: arm64 is
    /// other-multi-copy atomic (Arm ARM B2.3), so a store one other
    /// observer has seen is seen by all, table walks included.
    #[inline]
    pub fn read_entry(&self, entry: PhysAddr) -> u64 {
        if self.pending_stores.get() > 0 {
            self.publish_remote_store(entry);
        }
        self.memory.read(entry)
    }

    #[cold]
    fn publish_remote_store(&self, entry: PhysAddr) {
        self.footprints().write(Location::Entry(entry));
        let here = self.current.get().index();
        for (i, cpu) in self.cpus.iter() {
            if i == here {
                continue;
            }
            let mut pending = cpu.pending.borrow_mut();
            let before = pending.len();
            pending.retain(|(pa, _)| *pa != entry);
            let published = before - pending.len();
            self.pending_stores
                .set(self.pending_stores.get() - published);
        }
    }

    /// The value a hash fault found in the entry at `entry` when it set
    /// `H_PAGE_HASHPTE` there (`__hash_page_4K` updates the PTE itself),
    /// if it did so since the library last stored to the entry.
    pub fn hash_marked(&self, entry: PhysAddr) -> Option<u64> {
        self.hash_marked.borrow().get(&entry).copied()
    }

    /// Reads an entry as the hardware walker sees it: an arm64 store not
    /// yet made visible by a `dsb` still shows its old value.
    #[inline]
    pub fn walker_read(&self, entry: PhysAddr) -> u64 {
        if self.pending_stores.get() > 0 {
            self.footprints().read(Location::Entry(entry));
            for (_, cpu) in self.cpus.iter() {
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
        if hw.read_only_tables && self.pinned(entry) {
            self.violation(
                Invariant::ForbiddenStore,
                format!("direct store to read-only page table at {:#x}", entry.0),
            );
            return;
        }
        self.check_owner(entry);
        self.check_key_allows(entry);
        self.apply_store(entry, value);
        self.charge(Primitive::PteWrite, 1);
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
        if hw.hash_ptes {
            self.hash_marked.borrow_mut().remove(&entry);
        }
        if hw.arm64_barriers && value & 1 != 0 && self.memory.owner(entry) == Some(SpaceId::KERNEL)
        {
            let old = self.memory.read(entry);
            self.here().pending.borrow_mut().push((entry, old));
            self.pending_stores.set(self.pending_stores.get() + 1);
        }
        self.memory.write(entry, value);
    }

    /// `dsb`: the running CPU's stores become visible to every walker.
    pub fn dsb(&self) {
        self.drain_stores(self.current.get());
        self.charge(Primitive::Dsb, 1);
    }

    fn drain_stores(&self, cpu: CpuId) {
        let drained = core::mem::take(&mut *self.cpu_state(cpu).pending.borrow_mut());
        for (entry, _) in &drained {
            self.footprints().write(Location::Entry(*entry));
        }
        self.pending_stores
            .set(self.pending_stores.get() - drained.len());
    }

    /// `isb`: the running CPU stops reusing stale "invalid" walks.
    pub fn isb(&self) {
        self.footprints().write(Location::Cpu(self.cpu()));
        self.here().stale_invalid.borrow_mut().clear();
        self.charge(Primitive::Isb, 1);
    }

    /// Stores of the running CPU not yet made visible by a `dsb`.
    pub fn pending_stores(&self) -> usize {
        self.here().pending.borrow().len()
    }

    /// The root a walk of `va` in `space` starts from.
    pub fn root_for(&self, space: SpaceId, va: u64) -> Option<PhysAddr> {
        if (self.is_kernel_va.get())(va) || space == SpaceId::KERNEL {
            return Some(self.kernel_root.get());
        }
        let root = self.space_roots.get(space.0 as usize)?.get();
        (root.0 != 0).then_some(root)
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
        self.read_every_tlb();
        let frame = frame.0 & !(crate::memory::FRAME_BYTES - 1);
        for (i, c) in self.cpus.iter() {
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
                        "page-table frame {frame:#x} freed while cpu{i}'s paging-structure cache still holds the walk of {:#x} (space {}) through it",
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
        self.footprints().write(Location::Tlb(self.cpu()));
        self.footprints().write(Location::Cpu(self.cpu()));
        let cpu = self.here();
        if let Some(e) = cpu.tlb.borrow().lookup(space, va) {
            return Access::Hit(Leaf {
                entry: e.leaf,
                at: PhysAddr(0),
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
            Some((mut leaf, mut tables)) => {
                let hw = self.config.hardware;
                if hw.hash_ptes {
                    // The hash fault inserts a hash-table entry and marks
                    // the PTE (`__hash_page_4K` sets `H_PAGE_HASHPTE`).
                    let marked = leaf.entry | lazymmu::pgtable::format::ppc_hash::HASHPTE;
                    if marked != leaf.entry {
                        self.memory.write(leaf.at, marked);
                        self.hash_marked.borrow_mut().insert(leaf.at, leaf.entry);
                        leaf.entry = marked;
                    }
                }
                if !hw.walk_caches {
                    tables = [0; 5];
                }
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

    /// A use of `va` in `space` by the running CPU, checked: a translation
    /// it still caches must be what the walker sees now (§6.1).
    pub fn use_page(&self, space: SpaceId, va: VirtAddr) -> Access {
        let got = self.access_in(space, va);
        if let Access::Hit(leaf) = got {
            let now = self.walk(space, va.0);
            if now.map(|l| l.entry) != Some(leaf.entry) {
                self.violation(
                    Invariant::StaleTranslation,
                    format!(
                        "{} used a stale translation of {:#x} in space {}: cached {:#x}, the walker sees {:?}",
                        self.cpu(),
                        va.0,
                        space.0,
                        leaf.entry,
                        now.map(|l| l.entry)
                    ),
                );
            }
        }
        got
    }

    /// Whether the running CPU would fault on `va` because of a stale
    /// invalid walk it may still reuse (arm64, until `isb`).
    pub fn stale_invalid(&self, space: SpaceId, va: u64) -> bool {
        self.footprints().read(Location::Cpu(self.cpu()));
        let page = va >> 12;
        self.here()
            .stale_invalid
            .borrow()
            .iter()
            .any(|&(s, p)| (s == space || s == SpaceId::KERNEL) && p == page)
    }

    // ----- TLB maintenance ------------------------------------------------

    fn invalidated(&self, cpu: CpuId, space: SpaceId) {
        self.footprints().write(Location::Tlb(cpu));
        let mut counts = self.cpu_state(cpu).invalidations.borrow_mut();
        let i = space.0 as usize;
        if counts.len() <= i {
            counts.resize(i + 1, 0);
        }
        counts[i] += 1;
    }

    /// Invalidates `[start, end)` of `space` in CPU `cpu`'s TLB.
    pub fn tlb_invalidate_range(&self, cpu: CpuId, space: SpaceId, start: u64, end: u64) {
        self.cpu_state(cpu)
            .tlb
            .borrow_mut()
            .invalidate_range(space, start, end);
        self.invalidated(cpu, space);
    }

    /// Invalidates the non-global entries of `space` in CPU `cpu`'s TLB.
    pub fn tlb_invalidate_space(&self, cpu: CpuId, space: SpaceId) {
        self.cpu_state(cpu).tlb.borrow_mut().invalidate_space(space);
        self.invalidated(cpu, space);
    }

    /// Invalidates all of CPU `cpu`'s TLB.
    pub fn tlb_invalidate_all(&self, cpu: CpuId) {
        self.cpu_state(cpu).tlb.borrow_mut().invalidate_all();
        let spaces: Vec<SpaceId> = (0..self.spaces.len()).map(|i| SpaceId(i as u32)).collect();
        for space in spaces {
            self.invalidated(cpu, space);
        }
    }

    /// How many invalidations of `space`'s translations `cpu` has made.
    pub fn invalidations(&self, cpu: CpuId, space: SpaceId) -> u64 {
        self.footprints().read(Location::Tlb(cpu));
        self.cpus.peek(cpu.index()).map_or(0, |c| {
            c.invalidations
                .borrow()
                .get(space.0 as usize)
                .copied()
                .unwrap_or(0)
        })
    }

    /// The cached translations of CPU `cpu`.
    pub fn tlb_entries(&self, cpu: CpuId) -> Vec<TlbEntry> {
        self.footprints().read(Location::Tlb(cpu));
        self.cpus
            .peek(cpu.index())
            .map_or_else(Vec::new, |c| c.tlb.borrow().entries().to_vec())
    }

    /// Loads `space`'s root on the running CPU (costed), flushing the
    /// CPU's non-global translations where the hardware does so on a root
    /// change.
    pub fn load_root(&self, space: SpaceId) {
        let cpu = self.current.get();
        self.footprints().write(Location::Cpu(cpu));
        let before = self.here().loaded.replace(space);
        self.charge(Primitive::RootLoad, 1);
        if self.config.hardware.flush_on_switch && before != space {
            self.tlb_invalidate_space(cpu, before);
        }
    }

    /// Checks that no CPU caches a translation of `[start, end)` in `space`
    /// that differs from what the walker sees now.
    ///
    /// For a user space only the CPUs running a task of it count: a CPU
    /// that loaded another space, or only borrows this one (lazy TLB),
    /// uses none of its translations until it loads it again, which starts
    /// it clean or catches up with the flushes it missed
    /// (`switch_mm_irqs_off`).
    pub fn check_no_stale(&self, space: SpaceId, start: u64, end: u64, why: &str) {
        self.read_every_tlb();
        for (cpu, c) in self.cpus.iter() {
            if space != SpaceId::KERNEL {
                self.footprints().read(Location::Cpu(CpuId::new(cpu)));
                self.footprints().read(Location::Task(c.current.get()));
                let running = self.tasks.borrow()[c.current.get()].space == space;
                if !running || self.cpu_tlb_state(CpuId::new(cpu)).is_lazy() {
                    continue;
                }
            }
            let stale: Vec<TlbEntry> = c
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

    fn read_every_tlb(&self) {
        if !self.footprints().recording() {
            return;
        }
        for cpu in (0..self.cpus.possible()).map(CpuId::new) {
            self.footprints().read(Location::Tlb(cpu));
        }
    }

    // ----- the digest -----------------------------------------------------

    /// A digest of the machine state (CPUs, tasks, spaces, memory, TLBs,
    /// lazy TLB and protection-key windows, and the kernel's own digest):
    /// two points with the same digest have the same future. Clocks, cache
    /// lines and counters are left out: they decide costs, never what is
    /// checked.
    pub fn digest(&self) -> u64 {
        let mut h = DefaultHasher::new();
        for (i, c) in self.cpus.iter() {
            h.write_usize(i);
            h.write_usize(c.current.get());
            for &t in c.preempted.borrow().iter() {
                h.write_usize(t);
            }
            h.write_u32(c.irq_depth.get());
            h.write_u32(c.preempt.get());
            h.write_u64(c.key.get());
            h.write_u32(c.loaded.get().0);
            core::hash::Hash::hash(&c.lazy.get(), &mut h);
            for e in c.tlb.borrow().entries() {
                core::hash::Hash::hash(e, &mut h);
            }
            for (pa, v) in c.pending.borrow().iter() {
                h.write_u64(pa.0);
                h.write_u64(*v);
            }
            for (s, p) in c.stale_invalid.borrow().iter() {
                h.write_u32(s.0);
                h.write_u64(*p);
            }
            // Lazy TLB: which space the CPU uses, lazily or not, and the
            // flush generation it has caught up with.
            h.write_u32(c.lazy_tlb.loaded().0);
            h.write_u8(u8::from(c.lazy_tlb.is_lazy()));
            h.write_u64(c.lazy_tlb.loaded_gen());
            h.write_u8(c.keys.depth());
            h.write_u32(c.keys.before_open().0);
        }
        for t in self.tasks.borrow().iter() {
            core::hash::Hash::hash(t, &mut h);
        }
        for (mm, keys) in self.task_mm.iter().zip(self.task_keys.iter()) {
            core::hash::Hash::hash(&(mm.mm(), mm.active_mm()), &mut h);
            h.write_u8(keys.depth());
            h.write_u32(keys.saved().0);
            h.write_u32(keys.before_open().0);
        }
        // Address spaces: references, the CPUs in the mask, the flush
        // generation, the root, and the arch flags (s390's `flush_mm`, a
        // Xen space unpinned), and the tables detached and not yet freed.
        for (i, space) in self.spaces.iter().enumerate() {
            let root = self.space_roots[i].get().0;
            let (users, count, gen) = (space.users(), space.count(), space.tlb_gen());
            if root == 0 && users == 0 && count == 0 && gen == 0 && !space.is_freed() {
                // Never created: its mask is empty too. Reading the mask's
                // words is what a digest would otherwise spend most on.
                continue;
            }
            h.write_usize(i);
            h.write_u32(users);
            h.write_u32(count);
            let mask = space.cpumask();
            h.write_u32(mask.count());
            for cpu in mask.iter() {
                h.write_usize(cpu.index());
            }
            h.write_u64(gen);
            h.write_u8(u8::from(space.is_freed()));
            h.write_u64(root);
        }
        for flag in self.flush_mm.iter().chain(self.unpinned.iter()) {
            h.write_u8(u8::from(flag.get()));
        }
        // Unordered sets: each summed over its members' own hashes, so
        // that the hash maps' iteration order does not matter.
        let unlinked = self.unlinked.borrow();
        h.write_u64(unordered(
            unlinked.iter().map(|(space, u)| (space.0, &u.frames)),
        ));
        drop(unlinked);
        h.write_u64(unordered(self.top_level_tables.borrow().iter()));
        self.memory.digest(&mut h);
        h.write_u64(unordered(self.hash_marked.borrow().iter()));
        self.sched
            .digest(&mut h, self.config.offers.interrupts.is_some());
        if let Some(kernel) = self.kernel() {
            kernel.digest(&mut h);
        }
        h.finish()
    }
}

/// The hash of an unordered collection: the sum of its members' hashes.
fn unordered<T: core::hash::Hash>(members: impl Iterator<Item = T>) -> u64 {
    members.fold(0u64, |sum, member| {
        let mut h = DefaultHasher::new();
        member.hash(&mut h);
        sum.wrapping_add(h.finish())
    })
}

impl core::fmt::Debug for Machine {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Machine")
            .field("cpus", &self.cpus.possible())
            .field("tasks", &self.tasks.borrow().len())
            .field("step", &self.sched.step())
            .field("violations", &self.violation_count.get())
            .finish()
    }
}
