//! Scripted contract scenarios on the machine: a few tasks on two CPUs,
//! each running a short script of lazy-mode operations, entry writes,
//! read-backs and table frees through the library; optionally an interrupt
//! handler with a script of its own. Every step is a choice point, and so is
//! every call the library makes into the machine inside a step, so the
//! explorer can put a preemption, an interrupt or the other CPU between
//! any two of them.
//!
//! The library code runs unmodified: the tasks share one lazy mode of the
//! scenario's design over the library's backend for the scenario's arch
//! ([`XenPv`], [`Arm64`], or [`Protected`] over [`Arm64`] with POE), and
//! the checks are the simulator's ([`Observed`], [`Checked`]). A known-bad
//! variant breaks the environment or the arch through the machine's
//! [`Faults`](crate::machine::Faults), a wrapper inside the checks
//! ([`Faults::flush_is_noop`]), or the library's own known-bad variants
//! (the gather that frees before it flushes, single-slot stateful
//! sections).

use core::cell::RefCell;
use std::collections::hash_map::DefaultHasher;
use std::rc::Rc;

use lazymmu::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use lazymmu::backend::arm64::Arm64;
use lazymmu::backend::ppc_hash::PpcHash;
use lazymmu::backend::protected::{KeyFlavour, KeyFrame, Pks, Poe, Protected, StatefulProtected};
use lazymmu::backend::s390::S390;
use lazymmu::backend::sparc64::Sparc64;
use lazymmu::backend::x86::X86Backend;
use lazymmu::backend::xen_pv::XenPv;
use lazymmu::backend::{Backend, ContextSwitch, EntryUpdate, FlushScope, PteAccess, TlbFlush};
use lazymmu::cpu::CpuId;
use lazymmu::cpu::KeyRegister;
use lazymmu::mm::active_mm::{LazyTlb, LazyTlbPolicy};
use lazymmu::mode::counters::Counters;
use lazymmu::mode::percpu::PerCpu;
use lazymmu::mode::stateful::{FromHooks, Stateful, StatefulArch};
use lazymmu::mode::{ArchHooks, LazyMode, LazyState, Misuse, MisusePolicy};
use lazymmu::pgtable::format::{
    Aarch64, Attributes, Format, PpcHash4K, Protection, Sparc64Sun4v, S390 as S390Format, X86_64,
};
use lazymmu::pgtable::gather::{Gather, FRAME_BATCH};
use lazymmu::pgtable::ops::{Mmu, VaRange};

use crate::choice::Chooser;
use crate::events::EventKind;
use crate::explore::{catching, RunOutcome, System};
use crate::footprint::Location;
use crate::invariant::Invariant;
use crate::machine::{
    walk, Kernel, KeyModel, Machine, MachineConfig, Offers, SimCpu, SimEnv, SimFrames, SimMemory,
};
use crate::observed::{Checked, Checks, Observed};
use crate::run::hardware;
use crate::scenario::BackendKind;
use crate::world::{Exceptions, Shared};

/// Entries of each modelled page table; scenarios use a few.
pub const ENTRIES: usize = 16;

/// Kernel entries mapped at boot; the others start empty (a write there
/// maps a new page, which a CPU that looked first saw absent).
const KERNEL_MAPPED: u64 = 8;

/// Where the user entries map (one PTE table).
const USER_VA: u64 = 0x40_0000;
/// Where the kernel entries map (one PTE table).
const KERNEL_VA: u64 = 0xffff_8000_0040_0000;
/// Where the extra PTE tables that scripts free map, one per 2 MiB.
const TABLES_VA: u64 = 0x8000_0000;
/// Physical pages the scripts' entries map.
const DATA: u64 = 0x1_0000_0000;
/// The address space every scripted task runs in.
const SPACE: SpaceId = SpaceId(1);

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
    /// Writes page-table entry `entry` (of the kernel's table when
    /// `kernel`).
    Write {
        /// Index into the modelled page table.
        entry: u8,
        /// Whether it maps kernel memory (arm64 barriers apply).
        kernel: bool,
    },
    /// Reads back the entry the task last wrote there; a stale value
    /// inside a section is invariant 6.
    ReadBack {
        /// Index into the modelled page table.
        entry: u8,
    },
    /// Unlinks extra PTE table `table` (2 MiB at `TABLES_VA` + `table` ×
    /// 2 MiB) and frees its frame through the library's TLB gather, as
    /// `free_pgtables` does after a zap.
    FreeTable {
        /// Which of the scenario's extra PTE tables.
        table: u8,
    },
    /// Accesses `count` pages from entry `first` (of the kernel's table
    /// when `kernel`) on the running CPU: its TLB caches what the walker
    /// finds, and on arm64 a walk that finds nothing may be reused until
    /// an `isb`. A page a CPU caches is one a later change must
    /// invalidate.
    Touch {
        /// First entry.
        first: u8,
        /// Pages.
        count: u8,
        /// Whether they are kernel pages.
        kernel: bool,
    },
    /// munmap of user entries `[first, first + count)`: the library's zap
    /// with a TLB gather over every CPU.
    Zap {
        /// First entry.
        first: u8,
        /// Pages.
        count: u8,
    },
    /// mprotect of user entries `[first, first + count)` to read-only: the
    /// library's protect with a TLB gather over every CPU.
    Protect {
        /// First entry.
        first: u8,
        /// Pages.
        count: u8,
    },
    /// Zaps the whole span of extra PTE tables `[first, first + count)`
    /// through one gather whose frame batch holds one frame
    /// ([`Gather::with_frame_batch`]): each emptied table goes through the
    /// gather, and every table after the first finds the batch full.
    ZapTables {
        /// First extra table.
        first: u8,
        /// Tables.
        count: u8,
    },
    /// Asks the lazy mode whether it is active
    /// (`is_lazy_mmu_mode_active()`); in interrupt context the answer must
    /// be false (DESIGN.md §2), or arch code would batch the handler's
    /// updates (§6.2).
    Query,
    /// Toggles the write-disable bit of another protection key (a
    /// device-memory window of the task, DESIGN.md §5) in the key
    /// register: a section opened inside finds the register at a value
    /// that is not the default, and must restore exactly that value.
    DeviceWindow,
}

impl Action {
    fn name(self) -> (&'static str, u8) {
        match self {
            Action::Enable => ("enable", 0),
            Action::Disable => ("disable", 0),
            Action::Pause => ("pause", 0),
            Action::Resume => ("resume", 0),
            Action::Write {
                entry,
                kernel: false,
            } => ("write", entry),
            Action::Write {
                entry,
                kernel: true,
            } => ("write kernel", entry),
            Action::ReadBack { entry } => ("read back", entry),
            Action::FreeTable { table } => ("free table", table),
            Action::Touch { first, .. } => ("touch", first),
            Action::Zap { first, .. } => ("zap", first),
            Action::Protect { first, .. } => ("protect", first),
            Action::ZapTables { first, .. } => ("zap tables", first),
            Action::Query => ("is_active", 0),
            Action::DeviceWindow => ("device window", 0),
        }
    }
}

/// The arch a scenario runs on: one per backend of the library.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    /// x86-64 native: the library's [`X86Backend`].
    X86,
    /// x86-64 with page tables protected by PKS: the library's
    /// [`Protected`] backend over [`X86Backend`].
    X86Pks,
    /// Xen PV guest: the library's [`XenPv`] backend.
    XenPv,
    /// arm64: the library's [`Arm64`] backend.
    Arm64,
    /// arm64 with page tables protected by POE: the library's
    /// [`Protected`] backend over [`Arm64`].
    Arm64Poe,
    /// powerpc with the hash MMU: the library's [`PpcHash`] backend.
    PpcHash,
    /// sparc64: the library's [`Sparc64`] backend.
    Sparc64,
    /// s390: the library's [`S390`] backend.
    S390,
}

impl Arch {
    fn backend_kind(self) -> BackendKind {
        match self {
            Arch::X86 => BackendKind::X86,
            Arch::X86Pks => BackendKind::X86Pks,
            Arch::XenPv => BackendKind::XenPv,
            Arch::Arm64 => BackendKind::Arm64,
            Arch::Arm64Poe => BackendKind::Arm64Poe,
            Arch::PpcHash => BackendKind::PpcHash,
            Arch::Sparc64 => BackendKind::Sparc64,
            Arch::S390 => BackendKind::S390,
        }
    }
}

/// Which lazy-mode design the tasks run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Design {
    /// [`Counters`]: the state in the task.
    Counters,
    /// [`PerCpu`]: the state on the CPU, preemption off in the section.
    PerCpu,
    /// [`Stateful`]: each section's state on the caller's stack; over
    /// protected page tables the library's [`StatefulProtected`], each
    /// section restoring the key-register value it found.
    Stateful,
    /// Known bad: [`StatefulProtected::single_slot`], nested sections
    /// saving the key register in one per-task slot.
    StatefulSingleSlot,
}

/// Known-bad configurations of a scenario.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Faults {
    /// The environment ignores `preempt_disable`: the library's counter
    /// update and hook are no longer atomic with respect to the
    /// context-switch hooks (Linux 7.0's ordering).
    pub preemptible_transitions: bool,
    /// The arch's `flush` does nothing: a nested disable leaves its writes
    /// batched.
    pub flush_is_noop: bool,
    /// The library is told it is never in interrupt context, so interrupt
    /// handlers' updates are batched into the interrupted section.
    pub hide_interrupts: bool,
    /// The gather frees page-table frames before the flush that covers
    /// them (the library's known-bad `Gather::new_free_before_flush`).
    pub free_before_flush: bool,
}

/// A task: where it starts and what it does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskSpec {
    /// Short name for traces.
    pub name: &'static str,
    /// CPU it starts on; the first task of each CPU runs there, the others
    /// wait.
    pub cpu: usize,
    /// Its steps.
    pub actions: Vec<Action>,
}

/// A complete scenario.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    /// The arch.
    pub arch: Arch,
    /// The lazy-mode design.
    pub design: Design,
    /// Known-bad switches.
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
    /// Extra PTE tables every CPU's paging-structure caches hold at the
    /// start (as if each had walked them).
    pub cached_tables: Vec<u8>,
}

/// What a scenario's backend stack must do, as one object.
pub trait ScriptBackend: PteAccess + TlbFlush + ContextSwitch + Exceptions + Checks {}

impl<B: PteAccess + TlbFlush + ContextSwitch + Exceptions + Checks> ScriptBackend for B {}

/// The library objects of a scenario: its backend and its lazy mode, which
/// carries out the script's lazy-mode actions for each task.
trait Library {
    fn backend(&self) -> &dyn ScriptBackend;
    fn act(&self, task: usize, action: Action) -> Result<(), Misuse>;
    /// The stateful design's open states, per task (for the digest).
    fn open_states(&self) -> usize {
        0
    }
    /// `is_lazy_mmu_mode_active()`.
    fn is_active(&self) -> bool;
    /// A range operation of the library on the scenario's user tables.
    fn range(&self, target: &Target, op: RangeOp) -> Result<(), String>;
}

/// The tables range operations work on.
struct Target {
    machine: Rc<Machine>,
    root: PhysAddr,
    free_before_flush: bool,
}

/// A range operation of the library.
#[derive(Clone, Copy, Debug)]
enum RangeOp {
    Zap(VirtAddr, u64),
    Protect(VirtAddr, u64),
    /// A zap through a gather whose frame batch holds one frame.
    ZapTables(VirtAddr, u64),
}

/// Runs `op` with the library's range operations over `backend` and
/// `lazy`, gathering over every CPU.
fn range_op<B, L>(target: &Target, backend: &B, lazy: &L, op: RangeOp) -> Result<(), String>
where
    B: Backend,
    L: LazyMode,
{
    let machine = &target.machine;
    let frames = SimFrames::new(machine.clone(), SPACE);
    let scope = FlushScope::Cpus(machine.all_cpus());
    // SAFETY: the root and every frame the allocator hands out are the
    // machine's page-table memory (the backend's: its CPU primitives store
    // to the machine), built in the backend's format, which only the
    // library changes; `lazy` drives the backend's hooks. The root is the
    // target's and outlives the borrow.
    let tables = unsafe {
        Mmu::new(backend, lazy, &frames, scope).tables_at(
            target.root,
            SPACE,
            VaRange::for_format::<B::Format>(false),
        )
    };
    macro_rules! with_gather {
        ($gather:expr, $batch:expr) => {{
            let mut gather = $gather.with_frame_batch($batch);
            let result = match op {
                RangeOp::Zap(va, len) | RangeOp::ZapTables(va, len) => tables
                    .zap(va, len, &mut gather)
                    .map(|_| ())
                    .map_err(|e| format!("zap: {e:?}")),
                RangeOp::Protect(va, len) => tables
                    .protect(va, len, Protection::read_only(), &mut gather)
                    .map(|_| ())
                    .map_err(|e| format!("protect: {e:?}")),
            };
            gather.finish();
            result
        }};
    }
    let batch = match op {
        RangeOp::ZapTables(..) => 1,
        _ => FRAME_BATCH,
    };
    if target.free_before_flush {
        with_gather!(
            Gather::new_free_before_flush(backend, &frames, SPACE, scope),
            batch
        )
    } else {
        with_gather!(Gather::new(backend, &frames, SPACE, scope), batch)
    }
}

/// The arch's `flush` made a no-op on demand (known-bad
/// [`Faults::flush_is_noop`]), otherwise the backend itself.
pub struct FlushFault<B> {
    inner: B,
    noop: bool,
}

impl<B: ArchHooks> ArchHooks for FlushFault<B> {
    fn enter(&self) {
        self.inner.enter()
    }
    fn leave(&self) {
        self.inner.leave()
    }
    fn flush(&self) {
        if !self.noop {
            self.inner.flush()
        }
    }
}

impl<B: PteAccess> PteAccess for FlushFault<B> {
    fn read_entry(&self, entry: PhysAddr) -> u64 {
        self.inner.read_entry(entry)
    }
    fn write_entry(&self, update: EntryUpdate) {
        self.inner.write_entry(update)
    }
    fn get_and_clear(&self, update: EntryUpdate) -> u64 {
        self.inner.get_and_clear(update)
    }
    fn write_entries(&self, first: EntryUpdate, count: usize, step: u64) {
        self.inner.write_entries(first, count, step)
    }
    fn modify_prot_start(&self, update: EntryUpdate) -> u64 {
        self.inner.modify_prot_start(update)
    }
    fn modify_prot_commit(&self, update: EntryUpdate) {
        self.inner.modify_prot_commit(update)
    }
}

impl<B: TlbFlush> TlbFlush for FlushFault<B> {
    fn flush_range(
        &self,
        space: SpaceId,
        start: VirtAddr,
        end: VirtAddr,
        stride: PageSize,
        scope: FlushScope,
    ) {
        self.inner.flush_range(space, start, end, stride, scope)
    }
    fn flush_all(&self, space: SpaceId, scope: FlushScope) {
        self.inner.flush_all(space, scope)
    }
    fn single_page_ceiling(&self) -> usize {
        self.inner.single_page_ceiling()
    }
}

impl<B: ContextSwitch> ContextSwitch for FlushFault<B> {
    fn switch_out(&self, prev: LazyState) {
        self.inner.switch_out(prev)
    }
    fn switch_in(&self, next: LazyState) {
        self.inner.switch_in(next)
    }
}

impl<B: Backend> Backend for FlushFault<B> {
    type Format = B::Format;
    type Memory = B::Memory;
    fn memory(&self) -> &B::Memory {
        self.inner.memory()
    }
}

impl<B> Exceptions for FlushFault<B> {}

/// Counters or per-CPU: one mode over the shared backend.
struct UnitLibrary<B: Backend + ScriptBackend, M> {
    backend: Rc<B>,
    mode: Checked<M>,
}

impl<B, M> Library for UnitLibrary<B, M>
where
    B: Backend + ScriptBackend,
    M: LazyMode<Token = ()>,
{
    fn backend(&self) -> &dyn ScriptBackend {
        &*self.backend
    }
    fn act(&self, _task: usize, action: Action) -> Result<(), Misuse> {
        let m = &self.mode;
        match action {
            Action::Enable => m.enable().map(|_| ()),
            Action::Disable => m.disable(()).map(|_| ()),
            Action::Pause => m.pause_raw().map(|_| ()),
            Action::Resume => m.resume(()).map(|_| ()),
            _ => Ok(()),
        }
    }
    fn is_active(&self) -> bool {
        self.mode.is_active()
    }
    fn range(&self, target: &Target, op: RangeOp) -> Result<(), String> {
        range_op(target, &*self.backend, &self.mode, op)
    }
}

/// The stateful design: the states of each task's open sections and
/// pauses, innermost last, stand for its stack frames.
struct StatefulLibrary<A: StatefulArch, R> {
    mode: Checked<Stateful<SimEnv, A>>,
    tokens: RefCell<Vec<Vec<A::State>>>,
    backend: R,
}

impl<A, R> StatefulLibrary<A, R>
where
    A: StatefulArch,
{
    fn act_with(&self, task: usize, action: Action) -> Result<(), Misuse> {
        let m = &self.mode;
        let mut tokens = self.tokens.borrow_mut();
        if tokens.len() <= task {
            tokens.resize_with(task + 1, Vec::new);
        }
        // No borrow is held across the library call: it may switch tasks.
        let pop = |tokens: &mut Vec<Vec<A::State>>| tokens[task].pop();
        match action {
            Action::Enable | Action::Pause => {
                drop(tokens);
                let step = if action == Action::Enable {
                    m.enable()
                } else {
                    m.pause_raw()
                }?;
                self.tokens.borrow_mut()[task].push(step.token);
                Ok(())
            }
            Action::Disable | Action::Resume => {
                let token = pop(&mut tokens).unwrap_or_else(|| m.inner().arch().ignored());
                drop(tokens);
                if action == Action::Disable {
                    m.disable(token).map(|_| ())
                } else {
                    m.resume(token).map(|_| ())
                }
            }
            _ => Ok(()),
        }
    }
}

impl<B> Library for StatefulLibrary<FromHooks<Shared<B>>, Rc<B>>
where
    B: Backend + ScriptBackend,
{
    fn backend(&self) -> &dyn ScriptBackend {
        &*self.backend
    }
    fn act(&self, task: usize, action: Action) -> Result<(), Misuse> {
        self.act_with(task, action)
    }
    fn open_states(&self) -> usize {
        self.tokens.borrow().iter().map(Vec::len).sum()
    }
    fn is_active(&self) -> bool {
        self.mode.is_active()
    }
    fn range(&self, target: &Target, op: RangeOp) -> Result<(), String> {
        range_op(target, &*self.backend, &self.mode, op)
    }
}

impl<B, F> Library for StatefulLibrary<StatefulProtected<B, SimCpu, F>, ()>
where
    B: Backend + ScriptBackend,
    F: KeyFlavour,
{
    fn backend(&self) -> &dyn ScriptBackend {
        self.mode.inner().arch().protected()
    }
    fn act(&self, task: usize, action: Action) -> Result<(), Misuse> {
        self.act_with(task, action)
    }
    fn open_states(&self) -> usize {
        self.tokens.borrow().iter().map(Vec::len).sum()
    }
    fn is_active(&self) -> bool {
        self.mode.is_active()
    }
    fn range(&self, target: &Target, op: RangeOp) -> Result<(), String> {
        range_op(target, self.mode.inner().arch().protected(), &self.mode, op)
    }
}

fn unit_or_stateful<B>(machine: &Rc<Machine>, design: Design, backend: B) -> Box<dyn Library>
where
    B: Backend + ScriptBackend + 'static,
{
    let backend = Rc::new(backend);
    let env = SimEnv::new(machine.clone());
    let hooks = Shared(backend.clone());
    match design {
        Design::Counters => Box::new(UnitLibrary {
            backend,
            mode: Checked::new(
                Counters::new(env, hooks, MisusePolicy::Count),
                machine.clone(),
            ),
        }),
        Design::PerCpu => Box::new(UnitLibrary {
            backend,
            mode: Checked::new(
                PerCpu::new(env, hooks, MisusePolicy::Count),
                machine.clone(),
            ),
        }),
        Design::Stateful | Design::StatefulSingleSlot => Box::new(StatefulLibrary {
            mode: Checked::new(
                Stateful::new(env, FromHooks::new(hooks), MisusePolicy::Count),
                machine.clone(),
            ),
            tokens: RefCell::new(Vec::new()),
            backend,
        }),
    }
}

/// The protected backend over `inner` with the scenario's design: the
/// counter and per-CPU designs drive it through its hooks, the stateful
/// design through [`StatefulProtected`].
fn protected<B, F>(machine: &Rc<Machine>, design: Design, inner: B) -> Box<dyn Library>
where
    B: Backend + ScriptBackend + 'static,
    F: KeyFlavour + 'static,
{
    let protected = Protected::<_, _, F>::new(inner, SimCpu::new(machine.clone()));
    let arch = match design {
        Design::Counters | Design::PerCpu => return unit_or_stateful(machine, design, protected),
        Design::Stateful => StatefulProtected::new(protected),
        Design::StatefulSingleSlot => StatefulProtected::single_slot(protected),
    };
    Box::new(StatefulLibrary {
        mode: Checked::new(
            Stateful::new(SimEnv::new(machine.clone()), arch, MisusePolicy::Count),
            machine.clone(),
        ),
        tokens: RefCell::new(Vec::new()),
        backend: (),
    })
}

fn library(machine: &Rc<Machine>, spec: &Spec) -> Box<dyn Library> {
    let cpu = SimCpu::new(machine.clone());
    let noop = spec.faults.flush_is_noop;
    macro_rules! observed {
        ($inner:expr) => {
            Observed::new(
                FlushFault {
                    inner: $inner,
                    noop,
                },
                machine.clone(),
            )
        };
    }
    let design = spec.design;
    let x86 = || X86Backend::new(SimMemory::new(machine.clone()), cpu.clone());
    match spec.arch {
        Arch::X86 => unit_or_stateful(machine, design, observed!(x86())),
        Arch::X86Pks => protected::<_, Pks>(machine, design, observed!(x86())),
        Arch::XenPv => unit_or_stateful(machine, design, observed!(XenPv::new(cpu))),
        Arch::Arm64 => unit_or_stateful(machine, design, observed!(Arm64::new(cpu))),
        Arch::Arm64Poe => protected::<_, Poe>(machine, design, observed!(Arm64::new(cpu))),
        Arch::PpcHash => unit_or_stateful(machine, design, observed!(PpcHash::new(cpu))),
        Arch::Sparc64 => unit_or_stateful(machine, design, observed!(Sparc64::new(cpu))),
        Arch::S390 => unit_or_stateful(machine, design, observed!(S390::new(cpu))),
    }
}

/// A scenario running on the machine.
struct ScriptWorld {
    machine: Rc<Machine>,
    spec: Spec,
    library: Box<dyn Library>,
    /// The first task's id (tasks are added in the spec's order).
    first_task: usize,
    /// The user and kernel PTE tables the entries live in.
    user_table: PhysAddr,
    kernel_table: PhysAddr,
    /// The extra PTE tables and the PMD entries linking them.
    extra_tables: Vec<(PhysAddr, PhysAddr)>,
    /// Which table each entry index was last written in (for read-backs).
    last_kernel: RefCell<[bool; ENTRIES]>,
    /// Writes each task made so far.
    writes: RefCell<Vec<u64>>,
    frames: RefCell<Vec<Option<KeyFrame>>>,
    format: ScriptFormat,
    /// The user tables' root, for range operations.
    user_root: PhysAddr,
    /// Each task's key-register values saved by its open device windows.
    windows: RefCell<Vec<Vec<u64>>>,
}

#[derive(Clone, Copy)]
struct ScriptFormat {
    leaf: fn(PhysAddr, Attributes) -> u64,
    /// Bytes one PTE table maps (2 MiB; 1 MiB on s390).
    table_span: u64,
    /// Distance between the extra tables ([`table_stride`]).
    table_stride: u64,
}

/// Distance between two extra PTE tables: 2 MiB, or one table's span where
/// that is larger.
fn table_stride<F: Format>() -> u64 {
    (1u64 << lazymmu::pgtable::format::entry_shift::<F>(2)).max(1 << 21)
}

impl ScriptFormat {
    fn of<F: Format>() -> Self {
        Self {
            leaf: |phys, attrs| F::encode_leaf(phys, PageSize::Size4K, attrs),
            table_span: 1 << lazymmu::pgtable::format::entry_shift::<F>(2),
            table_stride: table_stride::<F>(),
        }
    }
}

/// The key-register bits a device window toggles: the write-disable bit of
/// key 2 (PKS: bit 2k+1; POE: the W bit of overlay index 2).
fn device_window_bits(keys: KeyModel) -> u64 {
    match keys {
        KeyModel::None => 0,
        KeyModel::Pks => 1 << 5,
        KeyModel::Poe => 0b0100 << 8,
    }
}

impl ScriptWorld {
    fn entry_address(&self, entry: u8, kernel: bool) -> (PhysAddr, VirtAddr) {
        let table = if kernel {
            self.kernel_table
        } else {
            self.user_table
        };
        let base = if kernel { KERNEL_VA } else { USER_VA };
        (
            table.add(8 * u64::from(entry)),
            VirtAddr(base + (u64::from(entry) << 12)),
        )
    }

    fn write(&self, entry: u8, kernel: bool) {
        // Each task numbers its own writes, so that the values two tasks
        // write do not depend on the order they run in; a script writes
        // far fewer than 256 entries per task, and the frames stay within
        // the few megabytes every format (and Xen's physical-to-machine
        // map) can name.
        let task = self.machine.current_task();
        let n = {
            let mut writes = self.writes.borrow_mut();
            if writes.len() <= task {
                writes.resize(task + 1, 0);
            }
            writes[task] += 1;
            assert!(
                writes[task] < 256,
                "a task of a script writes at most 255 entries"
            );
            (task as u64) << 8 | writes[task]
        };
        self.machine
            .footprints()
            .write(Location::Object(u64::from(entry)));
        let attrs = if kernel {
            Attributes::kernel_data()
        } else {
            Attributes::user_data()
        };
        let value = (self.format.leaf)(PhysAddr(DATA + (n << 12)), attrs);
        let (address, va) = self.entry_address(entry, kernel);
        self.last_kernel.borrow_mut()[usize::from(entry) % ENTRIES] = kernel;
        self.library.backend().write_entry(EntryUpdate {
            entry: address,
            va,
            space: if kernel { SpaceId::KERNEL } else { SPACE },
            level: 1,
            value,
            kernel,
            valid: true,
            leaf: true,
        });
    }

    fn read_back(&self, entry: u8) {
        self.machine
            .footprints()
            .read(Location::Object(u64::from(entry)));
        let kernel = self.last_kernel.borrow()[usize::from(entry) % ENTRIES];
        let (address, _) = self.entry_address(entry, kernel);
        let _ = self.library.backend().read_entry(address);
    }

    fn table_va(&self, table: u8) -> VirtAddr {
        VirtAddr(TABLES_VA + u64::from(table) * self.format.table_stride)
    }

    fn touch(&self, first: u8, count: u8, kernel: bool) {
        let space = if kernel { SpaceId::KERNEL } else { SPACE };
        for entry in first..first.saturating_add(count) {
            let (_, va) = self.entry_address(entry, kernel);
            let _ = self.machine.access_in(space, va);
        }
    }

    fn range(&self, op: RangeOp) {
        let target = Target {
            machine: self.machine.clone(),
            root: self.user_root,
            free_before_flush: self.spec.faults.free_before_flush,
        };
        if let Err(e) = self.library.range(&target, op) {
            self.machine.violation(Invariant::OperationFailed, e);
        }
    }

    fn user_range(&self, first: u8, count: u8) -> (VirtAddr, u64) {
        let (_, va) = self.entry_address(first, false);
        (va, u64::from(count) << 12)
    }

    /// `is_lazy_mmu_mode_active()` must answer false in interrupt context.
    fn query(&self) {
        let active = self.library.is_active();
        if active && self.machine.in_interrupt() {
            self.machine.violation(
                Invariant::IrqImmediate,
                "is_active() answered true in interrupt context: arch code would batch the handler's updates".into(),
            );
        }
    }

    /// Opens a device window of `task` (toggling another key's bits), or
    /// closes the one it has open.
    fn device_window(&self, task: usize) {
        let bits = device_window_bits(self.machine.config().hardware.keys);
        if bits == 0 {
            return;
        }
        let cpu = SimCpu::new(self.machine.clone());
        let saved = {
            let mut windows = self.windows.borrow_mut();
            if windows.len() <= task {
                windows.resize_with(task + 1, Vec::new);
            }
            windows[task].pop()
        };
        match saved {
            Some(value) => cpu.write_key(value),
            None => {
                let value = cpu.read_key();
                self.windows.borrow_mut()[task].push(value);
                cpu.write_key(value ^ bits);
            }
        }
    }

    fn free_table(&self, table: u8) {
        let Some(&(link, frame)) = self.extra_tables.get(usize::from(table)) else {
            return;
        };
        let va = self.table_va(table);
        let backend = self.library.backend();
        backend.write_entry(EntryUpdate {
            entry: link,
            va,
            space: SPACE,
            level: 2,
            value: 0,
            kernel: false,
            valid: false,
            leaf: false,
        });
        let frames = SimFrames::new(self.machine.clone(), SPACE);
        let scope = FlushScope::Cpus(self.machine.all_cpus());
        if self.spec.faults.free_before_flush {
            let mut gather = Gather::new_free_before_flush(backend, &frames, SPACE, scope);
            gather.remove_table(frame, va, 2);
            gather.finish();
        } else {
            let mut gather = Gather::new(backend, &frames, SPACE, scope);
            gather.remove_table(frame, va, 2);
            gather.finish();
        }
    }

    fn perform(&self, task: usize, action: Action) {
        let (name, entry) = action.name();
        self.machine.log(EventKind::Step(name, entry));
        let result = match action {
            Action::Enable | Action::Disable | Action::Pause | Action::Resume => {
                self.library.act(task, action)
            }
            Action::Write { entry, kernel } => {
                self.write(entry, kernel);
                Ok(())
            }
            Action::ReadBack { entry } => {
                self.read_back(entry);
                Ok(())
            }
            Action::FreeTable { table } => {
                self.free_table(table);
                Ok(())
            }
            Action::Touch {
                first,
                count,
                kernel,
            } => {
                self.touch(first, count, kernel);
                Ok(())
            }
            Action::Zap { first, count } => {
                let (va, len) = self.user_range(first, count);
                self.range(RangeOp::Zap(va, len));
                Ok(())
            }
            Action::Protect { first, count } => {
                let (va, len) = self.user_range(first, count);
                self.range(RangeOp::Protect(va, len));
                Ok(())
            }
            Action::ZapTables { first, count } => {
                let va = self.table_va(first);
                let len = u64::from(count) * self.format.table_span;
                self.range(RangeOp::ZapTables(va, len));
                Ok(())
            }
            Action::Query => {
                self.query();
                Ok(())
            }
            Action::DeviceWindow => {
                self.device_window(task);
                Ok(())
            }
        };
        if let Err(misuse) = result {
            self.machine.violation(
                Invariant::Misuse,
                format!(
                    "the library refused a correctly nested call of {}: {misuse}",
                    self.machine.task(task).name
                ),
            );
        }
    }
}

impl Kernel for ScriptWorld {
    fn switch_out(&self, _cpu: CpuId, prev: usize) {
        self.library
            .backend()
            .switch_out(self.machine.task(prev).lazy);
    }

    fn switch_in(&self, _cpu: CpuId, next: usize) {
        self.library
            .backend()
            .switch_in(self.machine.task(next).lazy);
    }

    fn exception_entry(&self) {
        let frame = self.library.backend().exception_enter();
        self.frames.borrow_mut().push(frame);
    }

    fn exception_exit(&self) {
        let frame = self.frames.borrow_mut().pop().flatten();
        self.library.backend().exception_exit(frame);
    }

    /// The handler's script, in interrupt context, through the interrupted
    /// task's library (as a kernel's handler would).
    fn interrupt(&self) {
        let task = self.machine.current_task();
        for &action in &self.spec.handler {
            self.perform(task, action);
        }
    }

    fn run_unit(&self, task: usize) -> bool {
        let Some(spec) = self.spec.tasks.get(task - self.first_task) else {
            return false;
        };
        for &action in &spec.actions {
            self.machine.step_point();
            self.perform(task, action);
        }
        false
    }

    fn task_done(&self, task: usize) {
        self.library.backend().check_finished(task);
    }

    fn digest(&self, h: &mut DefaultHasher) {
        use core::hash::Hasher;
        for &n in self.writes.borrow().iter() {
            h.write_u64(n);
        }
        h.write_usize(self.library.open_states());
        for &k in self.last_kernel.borrow().iter() {
            h.write_u8(k as u8);
        }
        for (t, saved) in self.windows.borrow().iter().enumerate() {
            h.write_usize(t);
            for &v in saved {
                h.write_u64(v);
            }
        }
        self.library.backend().digest(h);
    }
}

/// Builds the path of tables from `root` down to the PTE table covering
/// `va`, writing memory directly (the scenario's boot state, before any
/// check runs), and maps `pages` pages there. Returns the PTE table and
/// the entry linking it.
fn build<F: Format>(
    machine: &Machine,
    root: PhysAddr,
    owner: SpaceId,
    va: u64,
    pages: u64,
    attrs: Attributes,
) -> (PhysAddr, PhysAddr) {
    let memory = machine.memory();
    let key = machine.config().hardware.table_key;
    let mut table = root;
    let mut link = root;
    for level in (2..=F::LEVELS).rev() {
        let entry = table.add(8 * lazymmu::pgtable::format::index::<F>(va, level) as u64);
        let next = match F::decode(memory.read(entry), level) {
            lazymmu::pgtable::format::Entry::Table(next) => next,
            _ => {
                let next = memory
                    .allocate_table(owner, key)
                    .expect("the scenario's machine has frames to spare");
                memory.write(entry, F::encode_table(next, level));
                next
            }
        };
        link = entry;
        table = next;
    }
    for page in 0..pages {
        let pva = va + (page << 12);
        let entry = table.add(8 * lazymmu::pgtable::format::index::<F>(pva, 1) as u64);
        memory.write(
            entry,
            F::encode_leaf(PhysAddr(DATA - ((page + 1) << 12)), PageSize::Size4K, attrs),
        );
    }
    (table, link)
}

impl Spec {
    fn machine(&self) -> MachineConfig {
        let kind = self.arch.backend_kind();
        let mut config = MachineConfig::new(self.cpus, kind.platform());
        config.hardware = hardware(kind);
        config.spaces = 2;
        config.tasks = self.tasks.len();
        config.frames = 64;
        config.stack_bytes = 256 << 10;
        config.offers = Offers {
            interrupts: Some(if self.handler.is_empty() {
                0
            } else {
                self.max_interrupts
            }),
            preempt: true,
            migrate: self.migrate,
            migrate_to_busy: true,
            run_other: true,
            remote_flush: false,
        };
        config.faults.preemptible_transitions = self.faults.preemptible_transitions;
        config.faults.hide_interrupts = self.faults.hide_interrupts;
        config
    }

    fn world<F: Format>(&self, machine: &Rc<Machine>) -> Rc<ScriptWorld> {
        let kernel_root = machine
            .memory()
            .allocate_table(SpaceId::KERNEL, machine.config().hardware.table_key)
            .expect("a frame for the kernel root");
        let user_root = machine
            .memory()
            .allocate_table(SPACE, machine.config().hardware.table_key)
            .expect("a frame for the user root");
        machine.set_walker(walk::<F>, kernel_root, F::is_kernel);
        machine.set_space_root(SPACE, user_root);
        let (user_table, _) = build::<F>(
            machine,
            user_root,
            SPACE,
            USER_VA,
            ENTRIES as u64,
            Attributes::user_data(),
        );
        let (kernel_table, _) = build::<F>(
            machine,
            kernel_root,
            SpaceId::KERNEL,
            KERNEL_VA,
            KERNEL_MAPPED,
            Attributes::kernel_data(),
        );
        let tables = self
            .tasks
            .iter()
            .flat_map(|t| t.actions.iter())
            .chain(&self.handler)
            .filter_map(|a| match a {
                Action::FreeTable { table } => Some(*table),
                _ => None,
            })
            .chain(self.cached_tables.iter().copied())
            .max()
            .map_or(0, |t| usize::from(t) + 1);
        let extra_tables = (0..tables)
            .map(|t| {
                build::<F>(
                    machine,
                    user_root,
                    SPACE,
                    TABLES_VA + (t as u64) * table_stride::<F>(),
                    1,
                    Attributes::user_data(),
                )
            })
            .collect();
        let first_task = machine.task_count();
        for t in &self.tasks {
            machine.add_task(t.name, SPACE, CpuId::new(t.cpu), true);
        }
        // The tasks are threads of one process that has run on every CPU
        // (each CPU's TLB and walk caches may hold its translations). Each
        // thread after the first took a user reference when it was cloned
        // (`copy_mm` with `CLONE_VM` calls `mmget`, kernel/fork.c) and none
        // gives it up, so `mm_users` counts them all; every CPU is in the
        // space's `mm_cpumask` (`switch_mm` put it there). sparc64's
        // flushes read both: `smp_flush_tlb_pending` cross-calls the mask,
        // or nobody when the space has one user running here
        // (arch/sparc/kernel/smp_64.c).
        let threads = LazyTlb::new(SimCpu::new(machine.clone()), LazyTlbPolicy::Refcount);
        for _ in self.tasks.iter().skip(1) {
            threads
                .mmget(SPACE)
                .expect("the scenario's space is live while it is set up");
        }
        for cpu in machine.all_cpus().iter() {
            machine.space(SPACE).join_cpumask(cpu);
        }
        let world = Rc::new(ScriptWorld {
            machine: machine.clone(),
            spec: self.clone(),
            library: library(machine, self),
            first_task,
            user_table,
            kernel_table,
            extra_tables,
            last_kernel: RefCell::new([false; ENTRIES]),
            writes: RefCell::new(Vec::new()),
            frames: RefCell::new(Vec::new()),
            format: ScriptFormat::of::<F>(),
            user_root,
            windows: RefCell::new(Vec::new()),
        });
        machine.set_kernel(world.clone());
        // Every CPU's paging-structure caches hold the cached tables: each
        // CPU has walked a page through them.
        for cpu in (0..machine.cpu_count()).map(CpuId::new) {
            machine.set_cpu(cpu);
            for &t in &self.cached_tables {
                let va = VirtAddr(TABLES_VA + u64::from(t) * table_stride::<F>());
                let _ = machine.access_in(SPACE, va);
            }
        }
        // The first task of each CPU runs there; the others wait.
        let mut placed = vec![false; machine.cpu_count()];
        for (i, t) in self.tasks.iter().enumerate() {
            let cpu = t.cpu % machine.cpu_count();
            if !placed[cpu] {
                placed[cpu] = true;
                machine.switch(CpuId::new(cpu), first_task + i);
            }
        }
        world
    }

    /// Runs the scenario once, asking `chooser` at every choice point.
    pub fn run_once(&self, chooser: &mut dyn Chooser) -> RunOutcome {
        catching(|| {
            let machine = Rc::new(Machine::new(self.machine()));
            match self.arch {
                Arch::X86 | Arch::X86Pks | Arch::XenPv => drop(self.world::<X86_64>(&machine)),
                Arch::Arm64 | Arch::Arm64Poe => drop(self.world::<Aarch64>(&machine)),
                Arch::PpcHash => drop(self.world::<PpcHash4K>(&machine)),
                Arch::Sparc64 => drop(self.world::<Sparc64Sun4v>(&machine)),
                Arch::S390 => drop(self.world::<S390Format>(&machine)),
            }
            crate::run::lend_to(&machine, chooser, || machine.run());
            let violation = machine.violations().into_iter().next();
            let stopped = machine.stopping() && violation.is_none();
            machine.shut_down();
            RunOutcome { violation, stopped }
        })
    }
}

impl System for Spec {
    fn run(&self, chooser: &mut dyn Chooser) -> RunOutcome {
        self.run_once(chooser)
    }

    /// What the scripts share across CPUs is the machine's, or recorded
    /// (which entry each index was last written in); the library's lazy
    /// modes and backends keep their state per task or per CPU.
    fn partial_order(&self) -> bool {
        true
    }
}
