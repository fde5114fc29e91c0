//! Small machines for unit tests and examples of the MM neighbours: plain
//! cells, fixed capacity, one host thread. The simulator has the full
//! model; these are just enough to run the policies and to observe what
//! the hardware would hold.

use core::cell::Cell;
use core::marker::PhantomData;

use super::active_mm::{
    check_space_free, check_tables_free, AddressSpace, CpuTlbState, FlushRange, HardwareView,
    LazyTlb, MmMachine, TaskMm, UseAfterFree,
};
use super::kernel_sync::{TopLevelTables, TOP_LEVEL_ENTRIES};
use super::pkey_window::{CpuKeyState, PkeyMachine, PkeyWindows, Pkrs, TaskKeyState, WindowError};
use super::{LineAccess, LineState, SharedLine};
use crate::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use crate::backend::{Backend, ContextSwitch, EntryUpdate, FlushScope, PteAccess, TlbFlush};
use crate::cpu::{Cpu, CpuId, CpuMask, KeyRegister};
use crate::mode::ArchHooks;
use crate::pgtable::format::{Format, X86_64};
use crate::pgtable::memory::PageTableMemory;

/// CPUs a test machine can have.
pub const TEST_CPUS: usize = 8;
/// Address spaces a test machine can hold (index 0 is the kernel's).
pub const TEST_SPACES: usize = 32;
/// Tasks a test machine can hold (the first [`TEST_CPUS`] are idle tasks).
pub const TEST_TASKS: usize = 32;
const TEST_LINES: usize = 64;

/// A machine for lazy-TLB tests: CPUs with a root register, per-space
/// invalidation counts, IPIs that can be deliberately lost, page-table
/// pages per space, and a cache-coherence model that counts transfers of
/// shared lines between CPUs. Every free is checked with
/// [`check_space_free`] / [`check_tables_free`].
pub struct TestMachine {
    cpus: usize,
    current: Cell<usize>,
    spaces: [AddressSpace; TEST_SPACES],
    next_space: Cell<u32>,
    cpu_states: [CpuTlbState; TEST_CPUS],
    tasks: [TaskMm; TEST_TASKS],
    next_task: Cell<usize>,
    running: [Cell<usize>; TEST_CPUS],
    roots: [Cell<SpaceId>; TEST_CPUS],
    invalidations: [[Cell<u64>; TEST_SPACES]; TEST_CPUS],
    tables: [Cell<usize>; TEST_SPACES],
    unlinked: [Cell<usize>; TEST_SPACES],
    unlink_snapshot: [[Cell<u64>; TEST_CPUS]; TEST_SPACES],
    lines: [Cell<Option<(SharedLine, LineState)>>; TEST_LINES],
    transfers: Cell<u64>,
    ipis: Cell<u64>,
    lose_ipis: Cell<bool>,
    spaces_freed: Cell<u32>,
    tables_freed: Cell<usize>,
    violations: Cell<u32>,
    last_violation: Cell<Option<UseAfterFree>>,
}

impl TestMachine {
    /// A machine with `cpus` CPUs, all on the kernel's address space, each
    /// running its idle task (task `cpu`). Call [`TestMachine::boot`] with
    /// the policy under test before switching.
    ///
    /// # Panics
    /// If `cpus` is 0 or above [`TEST_CPUS`].
    pub fn new(cpus: usize) -> Self {
        assert!(cpus > 0 && cpus <= TEST_CPUS, "1..=8 CPUs");
        Self {
            cpus,
            current: Cell::new(0),
            spaces: core::array::from_fn(|i| AddressSpace::new(SpaceId(i as u32))),
            next_space: Cell::new(1),
            cpu_states: core::array::from_fn(|_| CpuTlbState::new()),
            tasks: core::array::from_fn(|_| TaskMm::kernel_thread()),
            next_task: Cell::new(cpus),
            running: core::array::from_fn(Cell::new),
            roots: core::array::from_fn(|_| Cell::new(SpaceId::KERNEL)),
            invalidations: core::array::from_fn(|_| core::array::from_fn(|_| Cell::new(0))),
            tables: core::array::from_fn(|_| Cell::new(0)),
            unlinked: core::array::from_fn(|_| Cell::new(0)),
            unlink_snapshot: core::array::from_fn(|_| core::array::from_fn(|_| Cell::new(0))),
            lines: core::array::from_fn(|_| Cell::new(None)),
            transfers: Cell::new(0),
            ipis: Cell::new(0),
            lose_ipis: Cell::new(false),
            spaces_freed: Cell::new(0),
            tables_freed: Cell::new(0),
            violations: Cell::new(0),
            last_violation: Cell::new(None),
        }
    }

    /// Starts every CPU's idle task under `tlb`'s policy.
    pub fn boot<M: MmMachine>(&self, tlb: &LazyTlb<M>) {
        for cpu in 0..self.cpus {
            self.run_on(cpu, |m| tlb.boot_cpu(m.idle(cpu)));
        }
    }

    /// Runs `f` as if on CPU `cpu`.
    pub fn run_on<R>(&self, cpu: usize, f: impl FnOnce(&Self) -> R) -> R {
        let saved = self.current.replace(cpu);
        let result = f(self);
        self.current.set(saved);
        result
    }

    /// A new user address space with one user and `tables` page-table
    /// pages under its top level.
    ///
    /// # Panics
    /// When all [`TEST_SPACES`] are used.
    pub fn new_space_with_tables(&self, tables: usize) -> SpaceId {
        let id = self.next_space.get();
        assert!((id as usize) < TEST_SPACES, "test machine out of spaces");
        self.next_space.set(id + 1);
        self.tables[id as usize].set(tables);
        SpaceId(id)
    }

    /// A new user address space with one user and four page-table pages.
    pub fn new_space(&self) -> SpaceId {
        self.new_space_with_tables(4)
    }

    /// A new user task owning `space` (the caller accounts the user: the
    /// first task of a space is its initial user; others need `mmget`).
    pub fn spawn_user(&self, space: SpaceId) -> usize {
        let index = self.alloc_task();
        self.tasks[index].set_mm(Some(space));
        self.tasks[index].set_active_mm(Some(space));
        index
    }

    /// A new kernel thread.
    pub fn spawn_kernel_thread(&self) -> usize {
        self.alloc_task()
    }

    fn alloc_task(&self) -> usize {
        let index = self.next_task.get();
        assert!(index < TEST_TASKS, "test machine out of tasks");
        self.next_task.set(index + 1);
        index
    }

    /// Task `index`.
    pub fn task(&self, index: usize) -> &TaskMm {
        &self.tasks[index]
    }

    /// The idle task of CPU `cpu`.
    pub fn idle(&self, cpu: usize) -> &TaskMm {
        &self.tasks[cpu]
    }

    /// The index of the task running on CPU `cpu`.
    pub fn running(&self, cpu: usize) -> usize {
        self.running[cpu].get()
    }

    /// Switches `cpu` to task `next` under `tlb`.
    ///
    /// # Errors
    /// What [`LazyTlb::context_switch`] returns.
    pub fn switch_to<M: MmMachine>(
        &self,
        tlb: &LazyTlb<M>,
        cpu: usize,
        next: usize,
    ) -> Result<(), super::active_mm::MmError> {
        self.run_on(cpu, |m| {
            let prev = m.running(cpu);
            m.running[cpu].set(next);
            let result = tlb.context_switch(m.task(prev), m.task(next));
            if result.is_err() {
                m.running[cpu].set(prev);
            }
            result
        })
    }

    /// Makes every later IPI to another CPU vanish (a deliberately broken
    /// machine, for testing the use-after-free check).
    pub fn lose_ipis(&self, lose: bool) {
        self.lose_ipis.set(lose);
    }

    /// The lazy-TLB state of CPU `cpu`.
    pub fn cpu_state_of(&self, cpu: usize) -> &CpuTlbState {
        &self.cpu_states[cpu]
    }

    /// The address space `id`.
    pub fn space_of(&self, id: SpaceId) -> &AddressSpace {
        &self.spaces[id.0 as usize]
    }

    /// IPIs sent to other CPUs.
    pub fn ipis(&self) -> u64 {
        self.ipis.get()
    }

    /// Cache-line transfers between CPUs.
    pub fn transfers(&self) -> u64 {
        self.transfers.get()
    }

    /// Address spaces freed.
    pub fn spaces_freed(&self) -> u32 {
        self.spaces_freed.get()
    }

    /// Page-table pages freed.
    pub fn tables_freed(&self) -> usize {
        self.tables_freed.get()
    }

    /// Use-after-free violations seen, and the last one.
    pub fn violations(&self) -> (u32, Option<UseAfterFree>) {
        (self.violations.get(), self.last_violation.get())
    }

    fn record(&self, result: Result<(), UseAfterFree>) {
        if let Err(violation) = result {
            self.violations.set(self.violations.get() + 1);
            self.last_violation.set(Some(violation));
        }
    }

    fn line_slot(&self, line: SharedLine) -> usize {
        let mut free = None;
        for (index, slot) in self.lines.iter().enumerate() {
            match slot.get() {
                Some((held, _)) if held == line => return index,
                None if free.is_none() => free = Some(index),
                _ => {}
            }
        }
        free.expect("test machine out of cache lines")
    }
}

impl Cpu for TestMachine {
    fn cpu_id(&self) -> CpuId {
        CpuId::new(self.current.get())
    }
    fn in_interrupt(&self) -> bool {
        false
    }
    // Lazy TLB runs its switches with interrupts off; nothing preempts it.
    fn preempt_disable(&self) {}
    fn preempt_enable(&self) {}
}

impl MmMachine for TestMachine {
    fn space(&self, id: SpaceId) -> &AddressSpace {
        &self.spaces[id.0 as usize]
    }
    fn cpu_state(&self, cpu: CpuId) -> &CpuTlbState {
        &self.cpu_states[cpu.index()]
    }
    fn current_task(&self) -> &TaskMm {
        &self.tasks[self.running[self.current.get()].get()]
    }
    fn load_root(&self, space: SpaceId) {
        self.roots[self.current.get()].set(space);
    }
    fn flush_local(&self, space: SpaceId, _range: FlushRange) {
        let cell = &self.invalidations[self.current.get()][space.0 as usize];
        cell.set(cell.get() + 1);
    }
    fn on_each_cpu(&self, targets: CpuMask, func: &dyn Fn(CpuId)) {
        let here = self.current.get();
        for cpu in targets.iter().filter(|cpu| cpu.index() < self.cpus) {
            if cpu.index() != here {
                self.ipis.set(self.ipis.get() + 1);
                if self.lose_ipis.get() {
                    continue;
                }
            }
            self.run_on(cpu.index(), |_| func(cpu));
        }
    }
    fn unlink_tables(&self, space: SpaceId, range: FlushRange) -> usize {
        let index = space.0 as usize;
        let available = self.tables[index].get();
        let taken = match range {
            FlushRange::All => available,
            FlushRange::Range { .. } => available.min(1),
        };
        self.tables[index].set(available - taken);
        self.unlinked[index].set(self.unlinked[index].get() + taken);
        for cpu in 0..self.cpus {
            self.unlink_snapshot[index][cpu].set(self.invalidations[cpu][index].get());
        }
        taken
    }
    fn free_unlinked_tables(&self, space: SpaceId) {
        let index = space.0 as usize;
        let snapshot: [u64; TEST_CPUS] =
            core::array::from_fn(|cpu| self.unlink_snapshot[index][cpu].get());
        self.record(check_tables_free(self, space, &snapshot[..self.cpus]));
        self.tables_freed
            .set(self.tables_freed.get() + self.unlinked[index].replace(0));
    }
    fn free_space(&self, space: SpaceId) {
        self.record(check_space_free(self, space));
        self.spaces_freed.set(self.spaces_freed.get() + 1);
    }
    fn line_access(&self, line: SharedLine, access: LineAccess) {
        let cpu = self.cpu_id();
        let slot = &self.lines[self.line_slot(line)];
        let state = slot.get().map(|(_, state)| state);
        let (transfer, next) = LineState::after(state, cpu, access);
        if transfer {
            self.transfers.set(self.transfers.get() + 1);
        }
        slot.set(Some((line, next)));
    }
}

impl HardwareView for TestMachine {
    fn cpu_count(&self) -> usize {
        self.cpus
    }
    fn root(&self, cpu: CpuId) -> SpaceId {
        self.roots[cpu.index()].get()
    }
    fn invalidations(&self, cpu: CpuId, space: SpaceId) -> u64 {
        self.invalidations[cpu.index()][space.0 as usize].get()
    }
}

/// Process top-level tables a [`TestTables`] can hold.
pub const TEST_TABLES: usize = 16;

/// Top-level table memory for kernel-sync tests: a reference table, up to
/// [`TEST_TABLES`] process tables, per-CPU loaded tables, and a budget of
/// second-level tables to make allocation fail on purpose. It is also the
/// backend their entries go through, in format `F` (plain stores, nothing
/// batched, no TLB), counting the writes.
pub struct TestTables<F = X86_64> {
    cpus: usize,
    entries: [[Cell<u64>; TOP_LEVEL_ENTRIES]; TEST_TABLES + 1],
    generations: [Cell<u32>; TEST_TABLES + 1],
    processes: Cell<usize>,
    loaded: [Cell<PhysAddr>; TEST_CPUS],
    next_frame: Cell<u64>,
    budget: Cell<Option<u32>>,
    writes: Cell<u64>,
    format: PhantomData<F>,
}

/// Physical address of the first second-level table a [`TestTables`]
/// hands out.
const SECOND_LEVEL_BASE: u64 = 0x100_0000;

impl<F: Format> TestTables<F> {
    /// Table memory for `cpus` CPUs, each with the reference table loaded.
    ///
    /// # Panics
    /// If `cpus` is 0 or above [`TEST_CPUS`].
    pub fn new(cpus: usize) -> Self {
        assert!(cpus > 0 && cpus <= TEST_CPUS, "1..=8 CPUs");
        Self {
            cpus,
            entries: core::array::from_fn(|_| core::array::from_fn(|_| Cell::new(0))),
            generations: core::array::from_fn(|_| Cell::new(0)),
            processes: Cell::new(0),
            loaded: core::array::from_fn(|_| Cell::new(Self::address(0))),
            next_frame: Cell::new(SECOND_LEVEL_BASE),
            budget: Cell::new(None),
            writes: Cell::new(0),
            format: PhantomData,
        }
    }

    /// Entry writes made through the backend.
    pub fn writes(&self) -> u64 {
        self.writes.get()
    }

    /// Reads entry `slot` of table `table` directly (what the walker sees).
    pub fn read_slot(&self, table: PhysAddr, slot: usize) -> u64 {
        self.entries[Self::index(table)][slot].get()
    }

    fn cell(&self, entry: PhysAddr) -> &Cell<u64> {
        let table = PhysAddr(entry.0 & !0xfff);
        &self.entries[Self::index(table)][((entry.0 & 0xfff) / 8) as usize]
    }

    const fn address(index: usize) -> PhysAddr {
        PhysAddr(((index as u64) + 1) << 12)
    }

    fn index(table: PhysAddr) -> usize {
        (table.0 >> 12) as usize - 1
    }

    /// The kernel's reference table.
    pub fn reference(&self) -> PhysAddr {
        Self::address(0)
    }

    /// A new, empty process table (the caller runs `init_process_table`).
    ///
    /// # Panics
    /// When all [`TEST_TABLES`] are used.
    pub fn new_process(&self) -> PhysAddr {
        let count = self.processes.get();
        assert!(count < TEST_TABLES, "test tables exhausted");
        self.processes.set(count + 1);
        Self::address(count + 1)
    }

    /// Loads `table` on `cpu` (the caller runs `switch_to` first when the
    /// policy wants it).
    pub fn load(&self, cpu: usize, table: PhysAddr) {
        self.loaded[cpu].set(table);
    }

    /// Lets only `tables` more second-level allocations succeed; `None`
    /// removes the limit.
    pub fn set_budget(&self, tables: Option<u32>) {
        self.budget.set(tables);
    }

    /// Second-level tables allocated.
    pub fn allocated(&self) -> u64 {
        (self.next_frame.get() - SECOND_LEVEL_BASE) >> 12
    }
}

impl<F: Format> TopLevelTables for TestTables<F> {
    fn alloc_table(&self) -> Option<PhysAddr> {
        match self.budget.get() {
            Some(0) => return None,
            Some(left) => self.budget.set(Some(left - 1)),
            None => {}
        }
        let frame = self.next_frame.get();
        self.next_frame.set(frame + 0x1000);
        Some(PhysAddr(frame))
    }
    fn process_count(&self) -> usize {
        self.processes.get()
    }
    fn process_table(&self, index: usize) -> PhysAddr {
        Self::address(index + 1)
    }
    fn cpu_count(&self) -> usize {
        self.cpus
    }
    fn loaded_table(&self, cpu: CpuId) -> PhysAddr {
        self.loaded[cpu.index()].get()
    }
    fn table_generation(&self, table: PhysAddr) -> u32 {
        self.generations[Self::index(table)].get()
    }
    fn set_table_generation(&self, table: PhysAddr, generation: u32) {
        self.generations[Self::index(table)].set(generation);
    }
}

impl<F> ArchHooks for TestTables<F> {
    fn enter(&self) {}
    fn leave(&self) {}
    fn flush(&self) {}
}

impl<F: Format> PteAccess for TestTables<F> {
    fn read_entry(&self, entry: PhysAddr) -> u64 {
        self.cell(entry).get()
    }
    fn write_entry(&self, update: EntryUpdate) {
        self.writes.set(self.writes.get() + 1);
        self.cell(update.entry).set(update.value);
    }
    fn get_and_clear(&self, update: EntryUpdate) -> u64 {
        self.writes.set(self.writes.get() + 1);
        self.cell(update.entry).replace(0)
    }
}

/// Top-level tables hold no translations of their own: nothing to flush.
impl<F> TlbFlush for TestTables<F> {
    fn flush_range(&self, _: SpaceId, _: VirtAddr, _: VirtAddr, _: PageSize, _: FlushScope) {}
    fn flush_all(&self, _: SpaceId, _: FlushScope) {}
}

impl<F> ContextSwitch for TestTables<F> {}

// SAFETY: every address is an index into `self.entries` (a foreign one
// panics), none is dereferenced.
unsafe impl<F: Format> PageTableMemory for TestTables<F> {
    fn read(&self, entry: PhysAddr) -> u64 {
        self.cell(entry).get()
    }
    fn write(&self, entry: PhysAddr, value: u64) {
        self.cell(entry).set(value);
    }
    fn swap(&self, entry: PhysAddr, value: u64) -> u64 {
        self.cell(entry).replace(value)
    }
    fn zero_frame(&self, frame: PhysAddr) {
        for entry in &self.entries[Self::index(frame)] {
            entry.set(0);
        }
    }
}

impl<F: Format> Backend for TestTables<F> {
    type Format = F;
    type Memory = Self;
    /// The tables are their own memory.
    fn memory(&self) -> &Self {
        self
    }
}

/// A machine for protection-key window tests: per-CPU key registers and
/// preemption counts, tasks with their window state, and a scheduler the
/// test drives (it can switch even where preemption is disabled, to model
/// a broken kernel).
pub struct TestKeys {
    current: Cell<usize>,
    registers: [Cell<Pkrs>; TEST_CPUS],
    register_writes: Cell<u64>,
    cpu_keys: [CpuKeyState; TEST_CPUS],
    preempt: [Cell<u32>; TEST_CPUS],
    tasks: [TaskKeyState; TEST_TASKS],
    running: [Cell<usize>; TEST_CPUS],
    tasks_used: usize,
}

impl TestKeys {
    /// `cpus` CPUs and `tasks` tasks; task `i < cpus` starts on CPU `i`.
    ///
    /// # Panics
    /// If `cpus` is 0 or above [`TEST_CPUS`], or `tasks` is above
    /// [`TEST_TASKS`] or below `cpus`.
    pub fn new(cpus: usize, tasks: usize) -> Self {
        assert!(cpus > 0 && cpus <= TEST_CPUS, "1..=8 CPUs");
        assert!(
            tasks >= cpus && tasks <= TEST_TASKS,
            "a task per CPU at least"
        );
        Self {
            current: Cell::new(0),
            registers: core::array::from_fn(|_| Cell::new(Pkrs::INIT)),
            register_writes: Cell::new(0),
            cpu_keys: core::array::from_fn(|_| CpuKeyState::new()),
            preempt: core::array::from_fn(|_| Cell::new(0)),
            tasks: core::array::from_fn(|_| TaskKeyState::new()),
            running: core::array::from_fn(Cell::new),
            tasks_used: tasks,
        }
    }

    /// Runs `f` as if on CPU `cpu`.
    pub fn run_on<R>(&self, cpu: usize, f: impl FnOnce(&Self) -> R) -> R {
        let saved = self.current.replace(cpu);
        let result = f(self);
        self.current.set(saved);
        result
    }

    /// Switches `cpu` to task `next` (which must not be running elsewhere)
    /// under `windows`, whether or not preemption is disabled there.
    ///
    /// # Errors
    /// What [`PkeyWindows::context_switch`] reports.
    pub fn switch_to<M: PkeyMachine>(
        &self,
        windows: &PkeyWindows<M>,
        cpu: usize,
        next: usize,
    ) -> Result<(), WindowError> {
        assert!(next < self.tasks_used, "no such task");
        self.run_on(cpu, |m| {
            let prev = m.running[cpu].replace(next);
            windows.context_switch(&m.tasks[prev], &m.tasks[next])
        })
    }

    /// Whether `cpu` could be preempted now.
    pub fn preemptible(&self, cpu: usize) -> bool {
        self.preempt[cpu].get() == 0
    }

    /// The register of `cpu`.
    pub fn register(&self, cpu: usize) -> Pkrs {
        self.registers[cpu].get()
    }

    /// Key-register writes so far.
    pub fn register_writes(&self) -> u64 {
        self.register_writes.get()
    }

    /// Task `index`'s window state.
    pub fn task(&self, index: usize) -> &TaskKeyState {
        &self.tasks[index]
    }
}

impl PkeyMachine for TestKeys {
    fn task_keys(&self) -> &TaskKeyState {
        &self.tasks[self.running[self.current.get()].get()]
    }
    fn cpu_keys(&self) -> &CpuKeyState {
        &self.cpu_keys[self.current.get()]
    }
}

impl KeyRegister for TestKeys {
    fn read_key(&self) -> u64 {
        u64::from(self.registers[self.current.get()].get().0)
    }
    fn write_key(&self, value: u64) {
        self.register_writes.set(self.register_writes.get() + 1);
        self.registers[self.current.get()].set(Pkrs(value as u32));
    }
}

impl Cpu for TestKeys {
    fn cpu_id(&self) -> CpuId {
        CpuId::new(self.current.get())
    }
    fn in_interrupt(&self) -> bool {
        false
    }
    fn preempt_disable(&self) {
        let count = &self.preempt[self.current.get()];
        count.set(count.get() + 1);
    }
    fn preempt_enable(&self) {
        let count = &self.preempt[self.current.get()];
        assert!(count.get() > 0, "preempt_enable without preempt_disable");
        count.set(count.get() - 1);
    }
}
