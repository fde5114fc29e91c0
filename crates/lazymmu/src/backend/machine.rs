//! What every backend's machine primitives have in common: on top of the
//! CPU itself ([`Cpu`]: its id, interrupt context, preemption), plain
//! page-table loads and a way to report a bug the policy detects.
//!
//! Backends are shared by all CPUs of a machine, so they keep per-CPU state
//! in a [`PerCpu`] array indexed by [`Cpu::cpu_id`]. The cells in
//! it are borrowed only for the duration of a small update and never across
//! a primitive call: a primitive may run an interrupt handler or a context
//! switch in the simulator, and those re-enter the backend.

use core::fmt;

use crate::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use crate::cpu::{Cpu, CpuId};
use crate::pgtable::memory::PageTableMemory;

/// The largest number of CPUs a backend keeps per-CPU state for
/// ([`PerCpu`]; CPU ids below it). The page-table paths a backend serves
/// run on at most this many CPUs; the CPU vocabulary itself
/// ([`CpuMask`](crate::cpu::CpuMask)) and lazy TLB reach
/// [`MAX_CPUS`](crate::cpu::MAX_CPUS), and a per-CPU batch of every
/// backend for every one of those would cost memory for CPUs no backend
/// runs on.
pub const MAX_BACKEND_CPUS: usize = 64;

/// The machine operations whose counts and costs a backend determines.
///
/// Each primitive trait documents which of these every method should be
/// counted and charged as; a cost model (the simulator's) prices them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Primitive {
    /// A trap into the hypervisor (Xen `mmu_update`, `mmuext_op`,
    /// `multicall`).
    Hypercall,
    /// One entry of a Xen multicall batch (an operation the hypervisor
    /// dispatches: an `mmu_update` with its requests, an `mmuext_op`).
    MulticallEntry,
    /// One `mmu_update` request the hypervisor validates and applies (a
    /// page-table entry write on a Xen PV guest's read-only tables), alone
    /// or among the requests of one call or multicall entry.
    MmuUpdate,
    /// A native write to a read-only page-table page that the hypervisor
    /// traps and emulates (Xen PV's writable page tables: an atomic
    /// exchange or bit clear the guest executes on a pinned table).
    EmulatedWrite,
    /// An arm64 `dsb` (`ishst` or `ish`).
    Dsb,
    /// An arm64 `isb`.
    Isb,
    /// One powerpc hash-page-table entry invalidation (`tlbie` of the HPTE).
    HashInvalidate,
    /// One s390 IPTE instruction (single or multi-entry) with global
    /// scope: a machine-wide quiesce.
    Ipte,
    /// One s390 IPTE instruction with local scope (the local-clearing
    /// control, `IPTE_LOCAL`): purges this CPU's TLB only, no quiesce.
    IpteLocal,
    /// One TLB invalidation by address or ASID broadcast by the hardware
    /// (arm64 `tlbi`, sparc64 demap).
    Tlbi,
    /// One x86 `invlpg` (or a Xen `MMUEXT_INVLPG_*` op's per-page work).
    Invlpg,
    /// A full TLB flush of an address space (CR3 reload, `tlbi aside1is`,
    /// `MMUEXT_TLB_FLUSH_*`).
    FullFlush,
    /// An inter-processor interrupt round trip: the sender interrupts
    /// its targets together and waits for them all (Linux's
    /// `smp_call_function_many_cond`, sparc64's cross-calls), so one send
    /// to any number of remote CPUs counts once.
    Ipi,
    /// A write of the protection-key register (`wrmsr IA32_PKRS`,
    /// `msr POR_EL1` + `isb`).
    KeyWrite,
    /// A store of one page-table entry to memory.
    PteWrite,
    /// Loading a page-table root (x86 `mov cr3`, arm64 `msr ttbr0_el1`):
    /// the register write, without the TLB flush that may go with it.
    RootLoad,
}

impl Primitive {
    /// Every primitive, in a fixed order (for tables and count arrays).
    pub const ALL: [Primitive; 16] = [
        Primitive::Hypercall,
        Primitive::MulticallEntry,
        Primitive::MmuUpdate,
        Primitive::EmulatedWrite,
        Primitive::Dsb,
        Primitive::Isb,
        Primitive::HashInvalidate,
        Primitive::Ipte,
        Primitive::IpteLocal,
        Primitive::Tlbi,
        Primitive::Invlpg,
        Primitive::FullFlush,
        Primitive::Ipi,
        Primitive::KeyWrite,
        Primitive::PteWrite,
        Primitive::RootLoad,
    ];

    /// The primitive's position in [`Primitive::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// A bug a backend's policy detects in how it is being driven. The backend
/// reports it through [`CpuPrimitives::report`] and carries on as safely as
/// it can; the simulator counts each report as an invariant violation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendBug {
    /// `enter` while this CPU is already in lazy MMU mode (invariant 3;
    /// Xen's `enter_lazy()` has `BUG_ON(this_cpu_read(xen_lazy_mode) !=
    /// XEN_LAZY_NONE)`, arch/x86/xen/enlighten_pv.c).
    DoubleEnter,
    /// `leave` while this CPU is not in lazy MMU mode (Xen's `leave_lazy()`
    /// `BUG_ON`).
    LeaveOutside,
    /// A context switch away from a task inside a section of a backend whose
    /// sections run with preemption disabled (powerpc, sparc64): the task
    /// slept in a section. The batch is flushed so nothing is lost.
    SwitchInSection,
    /// `exception_exit` with a frame from another exception, or with the key
    /// register open where the exception must have closed it.
    KeyFrameMismatch,
}

impl BackendBug {
    /// A short name for reports.
    pub const fn name(self) -> &'static str {
        match self {
            BackendBug::DoubleEnter => "double-enter",
            BackendBug::LeaveOutside => "leave-outside",
            BackendBug::SwitchInSection => "switch-in-section",
            BackendBug::KeyFrameMismatch => "key-frame-mismatch",
        }
    }
}

impl fmt::Display for BackendBug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The machine state every backend consults, on top of the CPU itself.
/// Implemented by the simulator (per modelled CPU) and by a kernel (per
/// real CPU).
///
/// None of these methods is a costed primitive except [`read_pte`], which a
/// model may charge as a plain memory load (it is not one of the
/// [`Primitive`]s).
///
/// [`read_pte`]: CpuPrimitives::read_pte
pub trait CpuPrimitives: Cpu {
    /// The page-table memory the CPU's entry stores go to.
    type Memory: PageTableMemory + ?Sized;

    /// The memory the CPU's entry loads and stores reach: what a backend
    /// over these primitives reports as [`Backend::memory`], so that page
    /// tables zero new tables, and walk, where the primitives write.
    ///
    /// [`Backend::memory`]: crate::backend::Backend::memory
    fn memory(&self) -> &Self::Memory;

    /// Loads the 8-byte entry at `entry` from memory, as the walker would
    /// see it. The default reads [`CpuPrimitives::memory`].
    fn read_pte(&self, entry: PhysAddr) -> u64 {
        self.memory().read(entry)
    }

    /// Reports a bug in how the backend is driven (see [`BackendBug`]).
    fn report(&self, bug: BackendBug);

    /// `mm_cpumask(mm)`: the CPUs that may hold translations of `space`,
    /// as the kernel tracks them (set when a CPU loads the space, kept
    /// while it only borrows it). Backends whose flushes or invalidations
    /// depend on it ask here (s390's single-CPU path, sparc64's
    /// cross-calls, Xen's flush targets). The default is every CPU.
    fn mm_cpumask(&self, space: SpaceId) -> crate::cpu::CpuMask {
        let _ = space;
        crate::cpu::CpuMask::first(crate::cpu::MAX_CPUS)
    }

    /// The backend is about to issue work it deferred earlier: a batch the
    /// task running then queued (Xen's multicall buffer, a powerpc or
    /// sparc64 invalidation batch, s390's cached entries). Issued from an
    /// interrupt handler, that work is still the interrupted task's, and a
    /// model charges it to the task. Paired with
    /// [`deferred_end`](CpuPrimitives::deferred_end); the default does
    /// nothing.
    fn deferred_begin(&self) {}

    /// The deferred work announced by
    /// [`deferred_begin`](CpuPrimitives::deferred_begin) is issued.
    fn deferred_end(&self) {}
}

impl<P: CpuPrimitives + ?Sized> CpuPrimitives for &P {
    type Memory = P::Memory;
    fn memory(&self) -> &Self::Memory {
        (**self).memory()
    }
    fn read_pte(&self, entry: PhysAddr) -> u64 {
        (**self).read_pte(entry)
    }
    fn report(&self, bug: BackendBug) {
        (**self).report(bug)
    }
    fn mm_cpumask(&self, space: SpaceId) -> crate::cpu::CpuMask {
        (**self).mm_cpumask(space)
    }
    fn deferred_begin(&self) {
        (**self).deferred_begin()
    }
    fn deferred_end(&self) {
        (**self).deferred_end()
    }
}

/// Per-CPU state of a backend: one `T` per CPU, indexed by
/// [`Cpu::cpu_id`].
///
/// `T` is normally built from `Cell`s and `RefCell`s; the whole backend is
/// then `!Sync`, which matches how the simulator (one host thread) and a
/// kernel with interrupts as the only re-entry use it.
pub struct PerCpu<T> {
    slots: [T; MAX_BACKEND_CPUS],
}

impl<T> PerCpu<T> {
    /// One slot per CPU, each built by `init(cpu)`.
    pub fn new(mut init: impl FnMut(CpuId) -> T) -> Self {
        Self {
            slots: core::array::from_fn(|i| init(CpuId::new(i))),
        }
    }

    /// The slot of CPU `cpu`.
    ///
    /// # Panics
    /// If `cpu >= MAX_BACKEND_CPUS`: the primitives reported a CPU the backend was
    /// not built for.
    #[inline]
    #[track_caller]
    pub fn get(&self, cpu: CpuId) -> &T {
        match self.slots.get(cpu.index()) {
            Some(slot) => slot,
            None => panic!(
                "CPU id {} is not below MAX_BACKEND_CPUS ({MAX_BACKEND_CPUS})",
                cpu.0
            ),
        }
    }

    /// The slot of the CPU `primitives` runs on. Call it with preemption
    /// disabled (in a lazy-mode hook or a context-switch hook, which run
    /// so, or under [`Cpu::preempt_guard`]) for as long as the slot is
    /// used: a task that migrates after the lookup would go on using the
    /// slot of the CPU it left.
    ///
    /// # Panics
    /// As [`PerCpu::get`].
    #[inline]
    #[track_caller]
    pub fn current(&self, primitives: &impl Cpu) -> &T {
        self.get(primitives.cpu_id())
    }

    /// Every slot, CPU 0 first.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.slots.iter()
    }
}

impl<T: Default> Default for PerCpu<T> {
    fn default() -> Self {
        Self::new(|_| T::default())
    }
}

impl<T: fmt::Debug> fmt::Debug for PerCpu<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.slots.iter()).finish()
    }
}

/// A fixed-capacity list of pending operations (a multicall buffer, a
/// powerpc or sparc64 flush batch): no allocation, `Copy` so that a
/// backend can take the whole batch out of its `RefCell` before handing it
/// to a primitive.
#[derive(Clone, Copy, Debug)]
pub struct Batch<T: Copy, const N: usize> {
    items: [T; N],
    len: usize,
}

impl<T: Copy + Default, const N: usize> Default for Batch<T, N> {
    fn default() -> Self {
        Self {
            items: [T::default(); N],
            len: 0,
        }
    }
}

impl<T: Copy, const N: usize> Batch<T, N> {
    /// The capacity.
    pub const CAPACITY: usize = N;

    /// The pending items, oldest first.
    pub fn as_slice(&self) -> &[T] {
        &self.items[..self.len]
    }

    /// The pending items, oldest first, to change in place.
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        &mut self.items[..self.len]
    }

    /// Number of pending items.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether another item would not fit.
    pub fn is_full(&self) -> bool {
        self.len == N
    }

    /// Appends `item`; gives it back when the batch is full.
    ///
    /// # Errors
    /// `Err(item)` when the batch already holds `N` items.
    pub fn push(&mut self, item: T) -> Result<(), T> {
        match self.items.get_mut(self.len) {
            Some(slot) => {
                *slot = item;
                self.len += 1;
                Ok(())
            }
            None => Err(item),
        }
    }

    /// Empties the batch and returns what it held.
    pub fn take(&mut self) -> Self {
        let taken = *self;
        self.len = 0;
        taken
    }
}

/// The per-CPU "this CPU is in lazy MMU mode" flag every backend keeps
/// (Xen's `xen_lazy_mode`, powerpc's `batch->active`), with the checks of
/// invariant 3.
#[derive(Debug, Default)]
pub struct LazyFlag {
    on: core::cell::Cell<bool>,
}

impl LazyFlag {
    /// Sets the flag; returns false (and reports nothing itself) when it
    /// was already set.
    pub fn set(&self) -> bool {
        !self.on.replace(true)
    }

    /// Clears the flag; returns false when it was already clear.
    pub fn clear(&self) -> bool {
        self.on.replace(false)
    }

    /// Whether the flag is set.
    pub fn get(&self) -> bool {
        self.on.get()
    }

    /// `enter`'s half of invariant 3: sets the flag, reporting
    /// [`BackendBug::DoubleEnter`] through `primitives` when it was set.
    pub fn enter(&self, primitives: &impl CpuPrimitives) {
        if !self.set() {
            primitives.report(BackendBug::DoubleEnter);
        }
    }

    /// `leave`'s half of invariant 3: clears the flag, reporting
    /// [`BackendBug::LeaveOutside`] through `primitives` when it was clear.
    pub fn leave(&self, primitives: &impl CpuPrimitives) {
        if !self.clear() {
            primitives.report(BackendBug::LeaveOutside);
        }
    }
}

/// A per-CPU batch of page addresses to invalidate, all in one address space
/// and of one page size (powerpc's `struct ppc64_tlb_batch`, sparc64's
/// `struct tlb_batch`).
#[derive(Clone, Copy, Debug)]
pub struct PageBatch<const N: usize> {
    /// The address space every pending address belongs to.
    pub space: SpaceId,
    /// The page size every pending address maps.
    pub size: PageSize,
    /// The pending addresses, oldest first.
    pub pages: Batch<VirtAddr, N>,
}

impl<const N: usize> Default for PageBatch<N> {
    fn default() -> Self {
        Self {
            space: SpaceId::KERNEL,
            size: PageSize::Size4K,
            pages: Batch::default(),
        }
    }
}

impl<const N: usize> PageBatch<N> {
    /// Whether `(space, size)` can join the pending addresses: the batch is
    /// empty, or holds addresses of the same space and size and has room.
    pub fn accepts(&self, space: SpaceId, size: PageSize) -> bool {
        self.pages.is_empty() || (self.space == space && self.size == size && !self.pages.is_full())
    }

    /// Adds one address; the caller checked [`PageBatch::accepts`].
    ///
    /// # Errors
    /// `Err(va)` when the batch cannot take it (full, or another space or
    /// page size pending).
    pub fn push(&mut self, space: SpaceId, size: PageSize, va: VirtAddr) -> Result<(), VirtAddr> {
        if !self.accepts(space, size) {
            return Err(va);
        }
        if self.pages.is_empty() {
            self.space = space;
            self.size = size;
        }
        self.pages.push(va)
    }

    /// Empties the batch and returns what it held.
    pub fn take(&mut self) -> Self {
        let taken = *self;
        self.pages = Batch::default();
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primitives_are_numbered_in_table_order() {
        for (n, p) in Primitive::ALL.into_iter().enumerate() {
            assert_eq!(p.index(), n);
        }
    }

    #[test]
    fn batch_refuses_past_capacity_and_take_empties() {
        let mut batch: Batch<u32, 3> = Batch::default();
        for n in 0..3 {
            assert_eq!(batch.push(n), Ok(()));
        }
        assert!(batch.is_full());
        assert_eq!(batch.push(9), Err(9));
        let taken = batch.take();
        assert_eq!(taken.as_slice(), &[0, 1, 2]);
        assert!(batch.is_empty());
    }

    #[test]
    fn page_batch_keeps_one_space_and_size() {
        let mut batch: PageBatch<2> = PageBatch::default();
        assert!(batch
            .push(SpaceId(1), PageSize::Size4K, VirtAddr(0))
            .is_ok());
        assert_eq!(
            batch.push(SpaceId(2), PageSize::Size4K, VirtAddr(0x1000)),
            Err(VirtAddr(0x1000))
        );
        assert!(!batch.accepts(SpaceId(1), PageSize::Size2M));
        assert!(batch
            .push(SpaceId(1), PageSize::Size4K, VirtAddr(0x1000))
            .is_ok());
        assert!(!batch.accepts(SpaceId(1), PageSize::Size4K), "full");
        let taken = batch.take();
        assert_eq!(taken.pages.len(), 2);
        assert!(batch.accepts(SpaceId(2), PageSize::Size2M));
    }

    #[test]
    fn lazy_flag_reports_double_set_and_clear() {
        let flag = LazyFlag::default();
        assert!(flag.set());
        assert!(!flag.set());
        assert!(flag.clear());
        assert!(!flag.clear());
    }

    #[test]
    #[cfg(feature = "testing")]
    fn lazy_flag_enter_and_leave_report_through_the_primitives() {
        let machine = crate::backend::recording::Recording::new();
        let flag = LazyFlag::default();
        flag.enter(&machine);
        assert_eq!(machine.bugs(BackendBug::DoubleEnter), 0);
        flag.enter(&machine);
        assert_eq!(machine.bugs(BackendBug::DoubleEnter), 1);
        assert!(flag.get(), "a double enter leaves the flag set");
        flag.leave(&machine);
        assert_eq!(machine.bugs(BackendBug::LeaveOutside), 0);
        flag.leave(&machine);
        assert_eq!(machine.bugs(BackendBug::LeaveOutside), 1);
        assert!(!flag.get());
    }

    #[test]
    #[should_panic(expected = "not below MAX_BACKEND_CPUS")]
    fn per_cpu_rejects_an_unknown_cpu() {
        let cpus: PerCpu<u8> = PerCpu::default();
        let _ = cpus.get(CpuId::new(MAX_BACKEND_CPUS));
    }
}
