//! Host implementations of every backend's primitive trait (and of
//! [`PageTableMemory`], [`X86Primitives`] and the CPU vocabulary,
//! [`Cpu`] and [`KeyRegister`]) that apply the
//! writes to a small in-memory store and record every call, for tests.
//!
//! One [`Recording`] plays one machine: a current CPU, interrupt depth,
//! preemption count, a protection-key register, and a few tasks whose
//! per-task state (lazy counters, arm64 pending barriers, saved key values)
//! a test switches between with [`Recording::switch_task`]. It also
//! implements the generic mode's [`Environment`], so a test can drive a
//! backend through [`crate::mode::counters::Counters`] exactly as a kernel
//! would.
//!
//! Nothing here allocates: the store and the event log have fixed
//! capacities, so the module builds without `alloc`.
//!
//! ```
//! use lazymmu::backend::recording::{Call, Recording};
//! use lazymmu::backend::xen_pv::XenPv;
//! use lazymmu::backend::{EntryUpdate, PteAccess};
//! use lazymmu::addr::{PhysAddr, SpaceId, VirtAddr};
//!
//! let machine = Recording::new();
//! let xen = XenPv::new(&machine);
//! xen.write_entry(EntryUpdate {
//!     entry: PhysAddr(0x1000), va: VirtAddr(0), space: SpaceId(1), level: 1,
//!     value: 0x2003, kernel: false, valid: true, leaf: true,
//! });
//! assert_eq!(machine.calls(Call::MmuUpdate), 1);
//! assert_eq!(machine.read_memory(PhysAddr(0x1000)), 0x2003);
//! ```

use core::cell::{Cell, RefCell};

use super::arm64::{Arm64Primitives, Dsb};
use super::machine::{BackendBug, CpuPrimitives, Primitive};
use super::ppc_hash::PpcHashPrimitives;
use super::protected::{KeySlot, KeySlots};
use super::s390::S390Primitives;
use super::sparc64::Sparc64Primitives;
use super::x86::{RemoteFlush, X86Primitives};
use super::xen_pv::{MmuExtOp, MmuUpdate, MulticallEntry, XenPrimitives};
use crate::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use crate::cpu::{Cpu, CpuId, CpuMask, KeyRegister};
use crate::mode::{Environment, LazyState};
use crate::pgtable::format::{s390, Format, S390};
use crate::pgtable::memory::{PageTableMemory, FRAME_SIZE};

/// Entries the store can hold.
pub const MEMORY_ENTRIES: usize = 4096;
/// Events the log keeps (the most recent ones).
pub const LOG_EVENTS: usize = 1024;
/// Tasks a recording machine carries state for.
pub const TASKS: usize = 8;

/// A primitive method, as the recording counts calls to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Call {
    /// [`XenPrimitives::mmu_update`].
    MmuUpdate,
    /// [`XenPrimitives::mmuext_op`].
    MmuExtOp,
    /// [`XenPrimitives::multicall`].
    Multicall,
    /// `write_pte` of any native backend.
    WritePte,
    /// [`Arm64Primitives::dsb`] with [`Dsb::IshSt`].
    DsbIshSt,
    /// [`Arm64Primitives::dsb`] with [`Dsb::Ish`].
    DsbIsh,
    /// [`Arm64Primitives::isb`].
    Isb,
    /// [`Arm64Primitives::tlbi_va`].
    TlbiVa,
    /// [`Arm64Primitives::tlbi_asid`].
    TlbiAsid,
    /// [`PpcHashPrimitives::flush_hash_page`].
    FlushHashPage,
    /// [`PpcHashPrimitives::flush_hash_range`].
    FlushHashRange,
    /// [`Sparc64Primitives::flush_page`].
    FlushPage,
    /// [`Sparc64Primitives::flush_batch`].
    FlushBatch,
    /// [`Sparc64Primitives::flush_kernel_range`].
    FlushKernelRange,
    /// [`Sparc64Primitives::flush_kernel_all`].
    FlushKernelAll,
    /// [`S390Primitives::ipte`].
    Ipte,
    /// [`S390Primitives::ipte_range`].
    IpteRange,
    /// [`S390Primitives::flush_space`].
    FlushSpace,
    /// [`KeyRegister::write_key`].
    WriteKey,
    /// [`X86Primitives::invlpg`].
    Invlpg,
    /// [`X86Primitives::reload_cr3`].
    ReloadCr3,
    /// [`X86Primitives::flush_global`].
    FlushGlobal,
    /// [`X86Primitives::shootdown`] (items: CPUs reached).
    Shootdown,
    /// [`PageTableMemory::write`] or [`PageTableMemory::swap`].
    MemoryWrite,
    /// [`XenPrimitives::native_update`].
    NativeUpdate,
    /// [`XenPrimitives::pin_tables`].
    Pin,
    /// [`XenPrimitives::unpin_tables`].
    Unpin,
}

impl Call {
    const COUNT: usize = 27;
}

/// One recorded call: which method, and how many items it carried (entries
/// of a multicall, addresses of a batch, entries of an IPTE range; 1
/// otherwise).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// The method.
    pub call: Call,
    /// Items it carried.
    pub items: usize,
    /// The CPU it ran on.
    pub cpu: usize,
}

/// Whether a key register value allows page-table writes.
type KeyCheck = fn(u64) -> bool;

#[derive(Clone, Copy, Debug, Default)]
struct TaskState {
    lazy: LazyState,
    barriers_pending: bool,
    live_key: Option<u64>,
    section_key: Option<u64>,
}

/// A recording machine (see the module documentation).
#[derive(Debug)]
pub struct Recording {
    /// The entries written, `(address, value)`, the first `memory_len`
    /// sorted by address: every page-table access looks its entry up.
    memory: RefCell<[(u64, u64); MEMORY_ENTRIES]>,
    memory_len: Cell<usize>,
    counts: [Cell<u64>; Primitive::ALL.len()],
    calls: [Cell<u64>; Call::COUNT],
    log: RefCell<[Option<Event>; LOG_EVENTS]>,
    logged: Cell<usize>,
    cpu: Cell<usize>,
    cpus: Cell<usize>,
    irq_depth: Cell<u32>,
    preempt_count: Cell<u32>,
    tasks: RefCell<[TaskState; TASKS]>,
    task: Cell<usize>,
    loaded_space: Cell<SpaceId>,
    key: Cell<u64>,
    key_check: Cell<Option<KeyCheck>>,
    faults: Cell<u64>,
    key_write_isb: Cell<bool>,
    bugs: [Cell<u32>; 4],
    unpinned: Cell<bool>,
    flush_mm: Cell<bool>,
    mm_cpumask: Cell<Option<CpuMask>>,
}

impl Default for Recording {
    fn default() -> Self {
        Self::new()
    }
}

impl Recording {
    /// A machine with 4 CPUs, running task 0 on CPU 0, empty memory, no
    /// key protection.
    pub fn new() -> Self {
        Self {
            memory: RefCell::new([(0, 0); MEMORY_ENTRIES]),
            memory_len: Cell::new(0),
            counts: Default::default(),
            calls: Default::default(),
            log: RefCell::new([None; LOG_EVENTS]),
            logged: Cell::new(0),
            cpu: Cell::new(0),
            cpus: Cell::new(4),
            irq_depth: Cell::new(0),
            preempt_count: Cell::new(0),
            tasks: RefCell::new([TaskState::default(); TASKS]),
            task: Cell::new(0),
            loaded_space: Cell::new(SpaceId(1)),
            key: Cell::new(0),
            key_check: Cell::new(None),
            faults: Cell::new(0),
            key_write_isb: Cell::new(false),
            bugs: Default::default(),
            unpinned: Cell::new(false),
            flush_mm: Cell::new(false),
            mm_cpumask: Cell::new(None),
        }
    }

    /// Sets what [`CpuPrimitives::mm_cpumask`] answers for every address
    /// space (every CPU of the machine until set).
    pub fn set_mm_cpumask(&self, mask: CpuMask) {
        self.mm_cpumask.set(Some(mask));
    }

    /// Whether an s390 `flush_mm` flag is set
    /// ([`S390Primitives::set_flush_mm`]).
    pub fn flush_mm_pending(&self) -> bool {
        self.flush_mm.get()
    }

    /// Protects page-table pages: from now on a page-table store faults
    /// (is counted by [`Recording::faults`] and not applied) unless
    /// `allows(key register)`; the register is set to `initial`.
    pub fn protect(&self, initial: u64, allows: fn(u64) -> bool) {
        self.key.set(initial);
        self.key_check.set(Some(allows));
    }

    /// Makes every key-register write also count an `isb`, as a write of
    /// arm64's POR_EL1 needs one to take effect (Arm ARM DDI 0487 K.a,
    /// D8.4.1.3).
    pub fn key_write_needs_isb(&self) {
        self.key_write_isb.set(true);
    }

    /// Moves execution to CPU `cpu` (the test's model of migration).
    pub fn set_cpu(&self, cpu: usize) {
        self.cpu.set(cpu);
    }

    /// Makes task `task` (below [`TASKS`]) current. The test calls the
    /// backend's `switch_out` before and `switch_in` after, as a scheduler
    /// would.
    ///
    /// # Panics
    /// If `task >= TASKS`.
    pub fn switch_task(&self, task: usize) {
        assert!(task < TASKS, "task {task} is not below {TASKS}");
        self.task.set(task);
    }

    /// Loads address space `space` in CR3 (x86: what
    /// [`X86Primitives::loaded_space`] reports; `SpaceId(1)` at first).
    pub fn load_space(&self, space: SpaceId) {
        self.loaded_space.set(space);
    }

    /// Task `task`'s lazy state.
    pub fn task_lazy_state(&self, task: usize) -> LazyState {
        self.tasks.borrow()[task].lazy
    }

    /// Enters interrupt context (nests).
    pub fn irq_enter(&self) {
        self.irq_depth.set(self.irq_depth.get() + 1);
    }

    /// Leaves interrupt context.
    ///
    /// # Panics
    /// If not in interrupt context.
    pub fn irq_exit(&self) {
        let depth = self.irq_depth.get();
        assert!(depth > 0, "irq_exit outside interrupt context");
        self.irq_depth.set(depth - 1);
    }

    /// The preemption-disable depth.
    pub fn preempt_count(&self) -> u32 {
        self.preempt_count.get()
    }

    /// How often primitive `primitive` was counted.
    pub fn count(&self, primitive: Primitive) -> u64 {
        self.counts[primitive.index()].get()
    }

    /// How often method `call` was called.
    pub fn calls(&self, call: Call) -> u64 {
        self.calls[call as usize].get()
    }

    /// How many primitive calls were made in all (every [`Call`]).
    pub fn total_calls(&self) -> u64 {
        self.calls.iter().map(Cell::get).sum()
    }

    /// The most recent events, oldest first (at most [`LOG_EVENTS`]),
    /// passed to `visit`.
    pub fn events(&self, mut visit: impl FnMut(Event)) {
        let log = *self.log.borrow();
        let total = self.logged.get();
        let kept = total.min(LOG_EVENTS);
        for n in total - kept..total {
            if let Some(event) = log[n % LOG_EVENTS] {
                visit(event);
            }
        }
    }

    /// The most recent event, if any.
    pub fn last_event(&self) -> Option<Event> {
        let total = self.logged.get();
        if total == 0 {
            return None;
        }
        self.log.borrow()[(total - 1) % LOG_EVENTS]
    }

    /// Page-table stores refused because the key register was closed.
    pub fn faults(&self) -> u64 {
        self.faults.get()
    }

    /// How many times `bug` was reported.
    pub fn bugs(&self, bug: BackendBug) -> u32 {
        self.bugs[bug_index(bug)].get()
    }

    /// The key register's value.
    pub fn key(&self) -> u64 {
        self.key.get()
    }

    /// Sets the key register without counting (test setup, or what a
    /// hardware exception entry would find).
    pub fn set_key(&self, value: u64) {
        self.key.set(value);
    }

    /// The value in memory at `entry` (0 if never written).
    pub fn read_memory(&self, entry: PhysAddr) -> u64 {
        let memory = self.memory.borrow();
        let stored = &memory[..self.memory_len.get()];
        stored
            .binary_search_by_key(&entry.0, |&(address, _)| address)
            .map_or(0, |slot| stored[slot].1)
    }

    /// Stores `value` at `entry` without counting or key checks (test
    /// setup).
    ///
    /// # Panics
    /// When more than [`MEMORY_ENTRIES`] distinct entries are stored.
    pub fn set_memory(&self, entry: PhysAddr, value: u64) {
        let mut memory = self.memory.borrow_mut();
        let len = self.memory_len.get();
        match memory[..len].binary_search_by_key(&entry.0, |&(address, _)| address) {
            Ok(slot) => memory[slot].1 = value,
            Err(slot) => {
                assert!(len < MEMORY_ENTRIES, "recording memory full");
                memory.copy_within(slot..len, slot + 1);
                memory[slot] = (entry.0, value);
                self.memory_len.set(len + 1);
            }
        }
    }

    fn charge(&self, primitive: Primitive, times: u64) {
        let count = &self.counts[primitive.index()];
        count.set(count.get() + times);
    }

    fn record(&self, call: Call, items: usize) {
        let calls = &self.calls[call as usize];
        calls.set(calls.get() + 1);
        let total = self.logged.get();
        self.log.borrow_mut()[total % LOG_EVENTS] = Some(Event {
            call,
            items,
            cpu: self.cpu.get(),
        });
        self.logged.set(total + 1);
    }

    /// A page-table store: refused (a fault) when the key register does
    /// not allow it.
    fn store(&self, entry: PhysAddr, value: u64) {
        if let Some(allows) = self.key_check.get() {
            if !allows(self.key.get()) {
                self.faults.set(self.faults.get() + 1);
                return;
            }
        }
        self.charge(Primitive::PteWrite, 1);
        self.set_memory(entry, value);
    }

    /// CPUs of `mask` that exist on this machine, and how many are remote.
    fn targets(&self, mask: CpuMask) -> (u64, u64) {
        let mask = mask.and(CpuMask::first(self.cpus.get()));
        let local = mask.contains(CpuId::new(self.cpu.get()));
        let targets = u64::from(mask.count());
        (targets, targets - u64::from(local))
    }

    /// One IPI round trip when there are CPUs other than this one.
    fn remote_cpus(&self) -> u64 {
        u64::from(self.cpus.get() > 1)
    }

    fn mmuext_work(&self, op: MmuExtOp) {
        match op {
            MmuExtOp::InvlpgLocal { .. } => self.charge(Primitive::Invlpg, 1),
            MmuExtOp::TlbFlushLocal { .. } => self.charge(Primitive::FullFlush, 1),
            MmuExtOp::InvlpgMulti { cpus, .. } => {
                let (targets, remote) = self.targets(cpus.cpus());
                self.charge(Primitive::Invlpg, targets);
                self.charge(Primitive::Ipi, u64::from(remote > 0));
            }
            MmuExtOp::TlbFlushMulti { cpus, .. } => {
                let (targets, remote) = self.targets(cpus.cpus());
                self.charge(Primitive::FullFlush, targets);
                self.charge(Primitive::Ipi, u64::from(remote > 0));
            }
        }
    }
}

fn bug_index(bug: BackendBug) -> usize {
    match bug {
        BackendBug::DoubleEnter => 0,
        BackendBug::LeaveOutside => 1,
        BackendBug::SwitchInSection => 2,
        BackendBug::KeyFrameMismatch => 3,
    }
}

impl Cpu for Recording {
    fn cpu_id(&self) -> CpuId {
        CpuId::new(self.cpu.get())
    }
    fn in_interrupt(&self) -> bool {
        self.irq_depth.get() > 0
    }
    fn preempt_disable(&self) {
        self.preempt_count.set(self.preempt_count.get() + 1);
    }
    fn preempt_enable(&self) {
        let count = self.preempt_count.get();
        assert!(count > 0, "preempt_enable without preempt_disable");
        self.preempt_count.set(count - 1);
    }
}

impl CpuPrimitives for Recording {
    type Memory = Recording;
    /// The recording's own store: page tables over a backend on these
    /// primitives live in it.
    fn memory(&self) -> &Recording {
        self
    }
    fn report(&self, bug: BackendBug) {
        let count = &self.bugs[bug_index(bug)];
        count.set(count.get() + 1);
    }
    fn mm_cpumask(&self, _space: SpaceId) -> CpuMask {
        self.mm_cpumask
            .get()
            .unwrap_or(CpuMask::first(self.cpus.get()))
    }
}

impl Environment for Recording {
    fn lazy_state(&self) -> LazyState {
        self.tasks.borrow()[self.task.get()].lazy
    }
    fn set_lazy_state(&self, state: LazyState) {
        self.tasks.borrow_mut()[self.task.get()].lazy = state;
    }
}

impl XenPrimitives for Recording {
    fn mmu_update(&self, requests: &[MmuUpdate]) {
        self.record(Call::MmuUpdate, requests.len());
        self.charge(Primitive::Hypercall, 1);
        self.charge(Primitive::MmuUpdate, requests.len() as u64);
        for update in requests {
            self.store(update.entry, update.value);
        }
    }

    fn mmuext_op(&self, op: MmuExtOp) {
        self.record(Call::MmuExtOp, 1);
        self.charge(Primitive::Hypercall, 1);
        self.mmuext_work(op);
    }

    fn multicall(&self, entries: &[MulticallEntry], requests: &[MmuUpdate]) {
        self.record(Call::Multicall, entries.len());
        self.charge(Primitive::Hypercall, 1);
        self.charge(Primitive::MulticallEntry, entries.len() as u64);
        for entry in entries {
            match *entry {
                MulticallEntry::MmuUpdate { .. } => {
                    let requests = entry.requests(requests);
                    self.charge(Primitive::MmuUpdate, requests.len() as u64);
                    for update in requests {
                        self.store(update.entry, update.value);
                    }
                }
                MulticallEntry::MmuExt(op) => self.mmuext_work(op),
            }
        }
    }

    /// The recording machine's tables are pinned unless unpinned.
    fn native_update(&self, entry: PhysAddr, value: u64) -> u64 {
        let old = self.read_memory(entry);
        self.record(Call::NativeUpdate, 1);
        if !self.unpinned.get() {
            self.charge(Primitive::EmulatedWrite, 1);
            self.charge(Primitive::MmuUpdate, 1);
        }
        self.store(entry, value);
        old
    }

    fn table_pinned(&self, _entry: PhysAddr) -> bool {
        !self.unpinned.get()
    }

    fn pin_tables(&self, _space: SpaceId) {
        self.record(Call::Pin, 1);
        self.unpinned.set(false);
    }

    fn unpin_tables(&self, _space: SpaceId) {
        self.record(Call::Unpin, 1);
        self.unpinned.set(true);
    }
}

impl Arm64Primitives for Recording {
    fn write_pte(&self, entry: PhysAddr, value: u64) {
        self.record(Call::WritePte, 1);
        self.store(entry, value);
    }
    fn dsb(&self, kind: Dsb) {
        self.record(
            match kind {
                Dsb::IshSt => Call::DsbIshSt,
                Dsb::Ish => Call::DsbIsh,
            },
            1,
        );
        self.charge(Primitive::Dsb, 1);
    }
    fn isb(&self) {
        self.record(Call::Isb, 1);
        self.charge(Primitive::Isb, 1);
    }
    fn tlbi_va(&self, _space: SpaceId, _va: VirtAddr, _last_level: bool) {
        self.record(Call::TlbiVa, 1);
        self.charge(Primitive::Tlbi, 1);
    }
    fn tlbi_asid(&self, _space: SpaceId) {
        self.record(Call::TlbiAsid, 1);
        self.charge(Primitive::FullFlush, 1);
    }
    fn task_barriers_pending(&self) -> bool {
        self.tasks.borrow()[self.task.get()].barriers_pending
    }
    fn set_task_barriers_pending(&self, pending: bool) {
        self.tasks.borrow_mut()[self.task.get()].barriers_pending = pending;
    }
}

impl PpcHashPrimitives for Recording {
    fn write_pte(&self, entry: PhysAddr, value: u64) {
        self.record(Call::WritePte, 1);
        self.store(entry, value);
    }
    fn flush_hash_page(&self, _space: SpaceId, _va: VirtAddr, _size: PageSize) {
        self.record(Call::FlushHashPage, 1);
        self.charge(Primitive::HashInvalidate, 1);
    }
    fn flush_hash_range(&self, _space: SpaceId, _size: PageSize, pages: &[VirtAddr]) {
        self.record(Call::FlushHashRange, pages.len());
        self.charge(Primitive::HashInvalidate, pages.len() as u64);
    }
}

impl Sparc64Primitives for Recording {
    fn write_pte(&self, entry: PhysAddr, value: u64) {
        self.record(Call::WritePte, 1);
        self.store(entry, value);
    }
    fn flush_page(&self, _space: SpaceId, _va: VirtAddr, _size: PageSize) {
        self.record(Call::FlushPage, 1);
        // The recording machine assumes every CPU uses every address space.
        self.charge(Primitive::Tlbi, self.cpus.get() as u64);
        self.charge(Primitive::Ipi, self.remote_cpus());
    }
    fn flush_batch(&self, _space: SpaceId, _size: PageSize, pages: &[VirtAddr]) {
        self.record(Call::FlushBatch, pages.len());
        self.charge(Primitive::Tlbi, pages.len() as u64 * self.cpus.get() as u64);
        self.charge(Primitive::Ipi, self.remote_cpus());
    }
    fn flush_kernel_range(&self, start: VirtAddr, end: VirtAddr) {
        let pages = end.0.saturating_sub(start.0).div_ceil(4096);
        self.record(Call::FlushKernelRange, pages as usize);
        self.charge(Primitive::Tlbi, pages * self.cpus.get() as u64);
        self.charge(Primitive::Ipi, self.remote_cpus());
    }
    fn flush_kernel_all(&self) {
        self.record(Call::FlushKernelAll, 1);
        self.charge(Primitive::FullFlush, self.cpus.get() as u64);
        self.charge(Primitive::Ipi, self.remote_cpus());
    }
}

impl S390Primitives for Recording {
    fn write_pte(&self, entry: PhysAddr, value: u64) {
        self.record(Call::WritePte, 1);
        self.store(entry, value);
    }
    fn ipte(&self, entry: PhysAddr, _space: SpaceId, _va: VirtAddr) {
        self.record(Call::Ipte, 1);
        self.charge(Primitive::Ipte, 1);
        let old = self.read_memory(entry);
        if S390::is_valid(old) {
            self.set_memory(entry, old | s390::INVALID);
        }
    }
    fn ipte_range(
        &self,
        first: PhysAddr,
        count: usize,
        _space: SpaceId,
        _va: VirtAddr,
        local: bool,
    ) {
        self.record(Call::IpteRange, count);
        self.charge(
            if local {
                Primitive::IpteLocal
            } else {
                Primitive::Ipte
            },
            1,
        );
        for n in 0..count as u64 {
            let entry = first.add(n * 8);
            let old = self.read_memory(entry);
            if S390::is_valid(old) {
                self.set_memory(entry, old | s390::INVALID);
            }
        }
    }
    fn flush_space(&self, _space: SpaceId) {
        self.record(Call::FlushSpace, 1);
        self.charge(Primitive::FullFlush, 1);
    }
    fn set_flush_mm(&self, _space: SpaceId) {
        self.flush_mm.set(true);
    }
    fn take_flush_mm(&self, _space: SpaceId) -> bool {
        self.flush_mm.replace(false)
    }
}

impl KeyRegister for Recording {
    fn read_key(&self) -> u64 {
        self.key.get()
    }
    fn write_key(&self, value: u64) {
        self.record(Call::WriteKey, 1);
        self.charge(Primitive::KeyWrite, 1);
        if self.key_write_isb.get() {
            self.charge(Primitive::Isb, 1);
        }
        self.key.set(value);
    }
}

impl KeySlots for Recording {
    fn task_key(&self, slot: KeySlot) -> Option<u64> {
        let task = self.tasks.borrow()[self.task.get()];
        match slot {
            KeySlot::Live => task.live_key,
            KeySlot::Section => task.section_key,
        }
    }
    fn set_task_key(&self, slot: KeySlot, value: u64) {
        let mut tasks = self.tasks.borrow_mut();
        let task = &mut tasks[self.task.get()];
        match slot {
            KeySlot::Live => task.live_key = Some(value),
            KeySlot::Section => task.section_key = Some(value),
        }
    }
}

// SAFETY: the store is an array owned by `self`; every address maps to a
// slot of it (or panics when the store is full), none is dereferenced.
unsafe impl PageTableMemory for Recording {
    fn read(&self, entry: PhysAddr) -> u64 {
        self.read_memory(entry)
    }
    fn write(&self, entry: PhysAddr, value: u64) {
        self.record(Call::MemoryWrite, 1);
        self.store(entry, value);
    }
    fn swap(&self, entry: PhysAddr, value: u64) -> u64 {
        let old = self.read_memory(entry);
        self.record(Call::MemoryWrite, 1);
        self.store(entry, value);
        old
    }
    /// Forgets the frame's entries (absent entries read as zero), keeping
    /// the others in order.
    fn zero_frame(&self, frame: PhysAddr) {
        let mut memory = self.memory.borrow_mut();
        let len = self.memory_len.get();
        let mut kept = 0;
        for n in 0..len {
            let (address, value) = memory[n];
            if address & !(FRAME_SIZE - 1) != frame.0 {
                memory[kept] = (address, value);
                kept += 1;
            }
        }
        self.memory_len.set(kept);
    }
}

impl X86Primitives for Recording {
    fn invlpg(&self, _va: VirtAddr) {
        self.record(Call::Invlpg, 1);
        self.charge(Primitive::Invlpg, 1);
    }
    fn reload_cr3(&self) {
        self.record(Call::ReloadCr3, 1);
        self.charge(Primitive::FullFlush, 1);
    }
    fn flush_global(&self) {
        self.record(Call::FlushGlobal, 1);
        self.charge(Primitive::FullFlush, 1);
    }
    fn loaded_space(&self) -> SpaceId {
        self.loaded_space.get()
    }
    /// One IPI round trip to the CPUs reached, and the flush each
    /// performs (the recording machine assumes every remote CPU has
    /// `space` loaded).
    fn shootdown(&self, cpus: CpuMask, request: RemoteFlush) {
        let (targets, _) = self.targets(cpus.without(CpuId::new(self.cpu.get())));
        self.record(Call::Shootdown, targets as usize);
        self.charge(Primitive::Ipi, u64::from(targets > 0));
        match request {
            RemoteFlush::Range {
                start, end, stride, ..
            } => {
                let pages = end.0.saturating_sub(start.0).div_ceil(stride.bytes());
                self.charge(Primitive::Invlpg, pages * targets);
            }
            RemoteFlush::All { .. } => self.charge(Primitive::FullFlush, targets),
        }
    }
}
