//! Keeping the kernel half of every process's top-level table in step with
//! the kernel's reference table.
//!
//! Each process's top-level table (PGD on x86-64) copies the kernel half
//! from the reference table (`init_mm.pgd`) when it is created
//! (`pgd_ctor()` in arch/x86/mm/pgtable.c). Later, when vmalloc needs a
//! top-level entry the reference did not have, the copies are stale. Kernel
//! top-level entries are only ever added, never changed or removed, so on
//! 4-level x86-64 at most 256 such additions happen per boot (the kernel
//! half has 256 slots). The four [`SyncPolicy`] values:
//!
//! - [`SyncPolicy::Fault`]: nothing is copied eagerly; a kernel access
//!   through a stale table faults and the handler copies the entry from the
//!   reference and retries (x86-64's `vmalloc_fault()` before Linux 5.8).
//! - [`SyncPolicy::Push`]: each addition is written into every process's
//!   table at once (`sync_global_pgds()` walking `pgd_list`, driven by
//!   `arch_sync_kernel_mappings()`).
//! - [`SyncPolicy::Generation`]: each addition bumps a generation and is
//!   written into the tables loaded on a CPU right now; any other table is
//!   brought up to date when it is next switched in, by copying the
//!   additions it missed. (Loaded tables must be updated at once: a CPU
//!   running on a stale table could otherwise use a new vmalloc area before
//!   its next switch.)
//! - [`SyncPolicy::Prealloc`]: at boot, every top-level slot of the vmalloc
//!   area gets its second-level table, so vmalloc never adds a top-level
//!   entry afterwards (x86-64 since Linux 5.9: `preallocate_vmalloc_pages()`
//!   in arch/x86/mm/init_64.c). Slots outside the preallocated range fall
//!   back to pushing.
//!
//! The check is [`KernelSync::kernel_access`]: a kernel access through a
//! process table whose slot is missing although the reference has it is a
//! violation, except under [`SyncPolicy::Fault`], where it is the expected
//! fault and gets fixed.

use core::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};

use crate::addr::{PhysAddr, SpaceId, VirtAddr};
use crate::backend::{Backend, EntryUpdate};
use crate::cpu::CpuId;
use crate::pgtable::format::{Format, X86_64};

/// Entries in a top-level table (4 KiB of 8-byte entries).
pub const TOP_LEVEL_ENTRIES: usize = 512;

/// The first kernel slot: the upper half of the top-level table.
pub const KERNEL_FIRST_SLOT: usize = 256;

/// Kernel slots in a top-level table, hence the most top-level additions a
/// boot can make.
pub const KERNEL_SLOTS: usize = TOP_LEVEL_ENTRIES - KERNEL_FIRST_SLOT;

/// The top-level entry pointing at a kernel second-level table, in the
/// x86-64 4-level format (PML4E: Intel SDM Vol. 3A §4.5, Table 4-15).
pub fn table_entry(table: PhysAddr) -> u64 {
    X86_64::encode_table(table, X86_64::LEVELS)
}

/// Whether an x86-64 top-level entry is present.
pub fn entry_present(entry: u64) -> bool {
    X86_64::is_valid(entry)
}

/// The second-level table a present x86-64 top-level entry points at.
pub fn entry_table(entry: u64) -> PhysAddr {
    PhysAddr(entry & X86_64::TABLE_ADDRESS_MASK)
}

/// The shape of the kernel half: how many levels the tree has and which top
/// slots hold the vmalloc area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelLayout {
    /// 4 or 5.
    pub levels: u8,
    /// First top-level slot of the vmalloc area.
    pub vmalloc_first_slot: usize,
    /// Number of top-level slots the vmalloc area spans.
    pub vmalloc_slots: usize,
}

impl KernelLayout {
    /// x86-64 4-level: vmalloc/ioremap space 0xffffc90000000000, 32 TiB
    /// (Documentation/arch/x86/x86_64/mm.rst), so slots 402..466, 512 GiB
    /// each.
    pub const X86_64_4LEVEL: KernelLayout = KernelLayout {
        levels: 4,
        vmalloc_first_slot: 402,
        vmalloc_slots: 64,
    };

    /// x86-64 5-level: vmalloc space 0xffa0000000000000, 12.5 PiB (same
    /// document), so slots 416..466, 256 TiB each.
    pub const X86_64_5LEVEL: KernelLayout = KernelLayout {
        levels: 5,
        vmalloc_first_slot: 416,
        vmalloc_slots: 50,
    };

    /// The shift of the address bits that index the top level.
    pub const fn top_shift(self) -> u32 {
        12 + 9 * (self.levels as u32 - 1)
    }

    /// The top-level slot that translates `va`.
    pub const fn slot(self, va: VirtAddr) -> usize {
        ((va.0 >> self.top_shift()) & (TOP_LEVEL_ENTRIES as u64 - 1)) as usize
    }

    /// The canonical address of the first byte `slot` translates.
    pub const fn slot_base(self, slot: usize) -> VirtAddr {
        let raw = (slot as u64) << self.top_shift();
        let sign_bit = 1u64 << (self.top_shift() + 8);
        if raw & sign_bit != 0 {
            VirtAddr(raw | !((sign_bit << 1) - 1))
        } else {
            VirtAddr(raw)
        }
    }

    /// The vmalloc slots.
    pub fn vmalloc_range(self) -> core::ops::Range<usize> {
        self.vmalloc_first_slot..self.vmalloc_first_slot + self.vmalloc_slots
    }
}

/// How process tables learn about new kernel top-level entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SyncPolicy {
    /// Filled in by the fault handler on first use.
    Fault,
    /// Written into every process table when added.
    Push,
    /// Written into loaded tables when added; others catch up at switch.
    Generation,
    /// All vmalloc second-level tables allocated at boot.
    Prealloc,
}

impl SyncPolicy {
    /// Every policy.
    pub const ALL: [SyncPolicy; 4] = [
        SyncPolicy::Fault,
        SyncPolicy::Push,
        SyncPolicy::Generation,
        SyncPolicy::Prealloc,
    ];
}

/// What kernel top-level sync needs to know about the process tables
/// besides their entries (which it reads and writes through the backend,
/// like every page-table access). Tables are named by their physical
/// address.
///
/// Process tables are enumerated by index rather than by callback so that
/// the library can write a table while enumerating without re-entering the
/// embedder's iteration.
pub trait TopLevelTables {
    /// Allocates a zeroed second-level table; `None` when out of memory.
    fn alloc_table(&self) -> Option<PhysAddr>;
    /// Number of live process top-level tables (`pgd_list`).
    fn process_count(&self) -> usize;
    /// The `index`th live process table.
    fn process_table(&self, index: usize) -> PhysAddr;
    /// Number of CPUs.
    fn cpu_count(&self) -> usize;
    /// The top-level table `cpu` has loaded.
    fn loaded_table(&self, cpu: CpuId) -> PhysAddr;
    /// The generation recorded for a process table (page metadata).
    fn table_generation(&self, table: PhysAddr) -> u32;
    /// Records the generation of a process table.
    fn set_table_generation(&self, table: PhysAddr, generation: u32);
}

impl<T: TopLevelTables + ?Sized> TopLevelTables for &T {
    fn alloc_table(&self) -> Option<PhysAddr> {
        (**self).alloc_table()
    }
    fn process_count(&self) -> usize {
        (**self).process_count()
    }
    fn process_table(&self, index: usize) -> PhysAddr {
        (**self).process_table(index)
    }
    fn cpu_count(&self) -> usize {
        (**self).cpu_count()
    }
    fn loaded_table(&self, cpu: CpuId) -> PhysAddr {
        (**self).loaded_table(cpu)
    }
    fn table_generation(&self, table: PhysAddr) -> u32 {
        (**self).table_generation(table)
    }
    fn set_table_generation(&self, table: PhysAddr, generation: u32) {
        (**self).set_table_generation(table, generation)
    }
}

/// Why a sync operation was refused. Nothing is changed by a refused call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncError {
    /// The address is in the user half: not a kernel top-level slot.
    NotKernel(VirtAddr),
    /// A second-level table could not be allocated. At boot, the slots
    /// preallocated before the failure stay valid.
    OutOfMemory {
        /// Top-level entries added before the failure (at boot).
        added: usize,
    },
}

impl core::fmt::Display for SyncError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            SyncError::NotKernel(va) => write!(f, "{:#x} is not a kernel address", va.0),
            SyncError::OutOfMemory { added } => write!(
                f,
                "no frame for a second-level table ({added} top-level entries added before)"
            ),
        }
    }
}

impl core::error::Error for SyncError {}

/// Why a kernel access failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelAccessError {
    /// The process table lacks an entry the reference has: a sync was
    /// missed (the violation this module exists to prevent).
    MissingSync {
        /// The table accessed through.
        table: PhysAddr,
        /// The slot it lacks.
        slot: usize,
    },
    /// Neither table maps the slot: a genuinely bad kernel access.
    Unmapped(VirtAddr),
    /// The address is in the user half.
    NotKernel(VirtAddr),
}

impl core::fmt::Display for KernelAccessError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            KernelAccessError::MissingSync { table, slot } => write!(
                f,
                "top-level slot {slot} is missing from table {:#x}: a sync was missed",
                table.0
            ),
            KernelAccessError::Unmapped(va) => write!(f, "{:#x} is not mapped", va.0),
            KernelAccessError::NotKernel(va) => write!(f, "{:#x} is not a kernel address", va.0),
        }
    }
}

impl core::error::Error for KernelAccessError {}

/// How a successful kernel access went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessOutcome {
    /// The entry was there.
    Hit,
    /// The entry was missing and the fault handler copied it in.
    FaultFixed,
}

/// The work each policy does, for comparison.
#[derive(Debug, Default)]
pub struct SyncStats {
    /// Top-level entries added to the reference ("syncs"): at most
    /// [`KERNEL_SLOTS`] per boot.
    pub top_level_adds: AtomicU32,
    /// Second-level tables allocated at boot.
    pub preallocated: AtomicU32,
    /// Top-level entries written into process tables, any policy.
    pub entries_copied: AtomicU64,
    /// Process tables visited by pushes.
    pub tables_walked: AtomicU64,
    /// Faults fixed by the handler.
    pub faults_fixed: AtomicU64,
    /// Generation comparisons at switch.
    pub generation_checks: AtomicU64,
    /// Switches that found a stale table and brought it up to date.
    pub generation_syncs: AtomicU64,
    /// Kernel accesses that failed for lack of a synced entry.
    pub missing_syncs: AtomicU64,
}

impl SyncStats {
    /// Reads a 64-bit counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Kernel top-level sync under one [`SyncPolicy`], reading and writing
/// top-level entries through the backend `B` (so that on Xen PV they are
/// hypercalls, under protected page tables they open the key register),
/// in `B`'s format.
///
/// ```
/// use lazymmu::addr::VirtAddr;
/// use lazymmu::mm::kernel_sync::{KernelLayout, KernelSync, SyncPolicy, AccessOutcome};
/// use lazymmu::mm::testing::TestTables;
/// let tables: TestTables = TestTables::new(1);
/// let sync = KernelSync::new(&tables, &tables, tables.reference(), SyncPolicy::Fault, KernelLayout::X86_64_4LEVEL);
/// sync.boot().unwrap();
/// let pgd = tables.new_process();
/// sync.init_process_table(pgd);
/// let va = KernelLayout::X86_64_4LEVEL.slot_base(402);
/// sync.ensure_slot(va).unwrap();
/// assert_eq!(sync.kernel_access(pgd, va), Ok(AccessOutcome::FaultFixed));
/// assert_eq!(sync.kernel_access(pgd, va), Ok(AccessOutcome::Hit));
/// ```
pub struct KernelSync<T, B> {
    tables: T,
    backend: B,
    reference: PhysAddr,
    policy: SyncPolicy,
    layout: KernelLayout,
    /// Slots in the order they were added; `generation` of them are valid.
    /// At most [`KERNEL_SLOTS`], by construction.
    log: [AtomicU16; KERNEL_SLOTS],
    generation: AtomicU32,
    stats: SyncStats,
}

impl<T: TopLevelTables, B: Backend> KernelSync<T, B> {
    /// Sync over the process tables `tables`, whose entries `backend`
    /// reads and writes in its format, with `reference` the kernel's own
    /// top-level table.
    ///
    /// # Panics
    /// If `layout.levels` differs from the format's levels.
    pub fn new(
        tables: T,
        backend: B,
        reference: PhysAddr,
        policy: SyncPolicy,
        layout: KernelLayout,
    ) -> Self {
        assert_eq!(
            layout.levels,
            B::Format::LEVELS,
            "layout and format disagree on levels"
        );
        Self {
            tables,
            backend,
            reference,
            policy,
            layout,
            log: [const { AtomicU16::new(0) }; KERNEL_SLOTS],
            generation: AtomicU32::new(0),
            stats: SyncStats::default(),
        }
    }

    /// The backend entries go through.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The policy in force.
    pub fn policy(&self) -> SyncPolicy {
        self.policy
    }

    /// The layout.
    pub fn layout(&self) -> KernelLayout {
        self.layout
    }

    /// The work done so far.
    pub fn stats(&self) -> &SyncStats {
        &self.stats
    }

    /// The table memory.
    pub fn tables(&self) -> &T {
        &self.tables
    }

    /// Number of top-level entries added to the reference this boot.
    pub fn generation(&self) -> u32 {
        self.generation.load(Ordering::Acquire)
    }

    /// Boot-time setup: under [`SyncPolicy::Prealloc`], gives every vmalloc
    /// slot its second-level table. Other policies do nothing.
    ///
    /// # Errors
    /// [`SyncError::OutOfMemory`] with the number of slots filled before the
    /// failure; those stay valid and nothing is leaked.
    pub fn boot(&self) -> Result<(), SyncError> {
        if self.policy != SyncPolicy::Prealloc {
            return Ok(());
        }
        let mut added = 0;
        for slot in self.layout.vmalloc_range() {
            if B::Format::is_valid(self.read_slot(self.reference, slot)) {
                continue;
            }
            let table = self
                .tables
                .alloc_table()
                .ok_or(SyncError::OutOfMemory { added })?;
            self.add_to_reference(slot, table);
            self.stats.preallocated.fetch_add(1, Ordering::Relaxed);
            added += 1;
        }
        Ok(())
    }

    /// A new process table copies the kernel half (`pgd_ctor()`), and is
    /// current with the generation.
    pub fn init_process_table(&self, table: PhysAddr) {
        for slot in KERNEL_FIRST_SLOT..TOP_LEVEL_ENTRIES {
            let entry = self.read_slot(self.reference, slot);
            if B::Format::is_valid(entry) {
                self.write_slot(table, slot, entry);
                self.stats.entries_copied.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.tables
            .set_table_generation(table, self.generation.load(Ordering::Acquire));
    }

    /// Makes sure the reference has a top-level entry for `va` and returns
    /// the second-level table it points at; a new entry is propagated as the
    /// policy says. This is what vmalloc calls when it populates a range.
    ///
    /// # Errors
    /// [`SyncError::NotKernel`] for a user-half address,
    /// [`SyncError::OutOfMemory`] when the second-level table cannot be
    /// allocated (nothing changed).
    pub fn ensure_slot(&self, va: VirtAddr) -> Result<PhysAddr, SyncError> {
        let slot = self.kernel_slot(va).ok_or(SyncError::NotKernel(va))?;
        let entry = self.read_slot(self.reference, slot);
        if B::Format::is_valid(entry) {
            return Ok(PhysAddr(entry & B::Format::TABLE_ADDRESS_MASK));
        }
        let table = self
            .tables
            .alloc_table()
            .ok_or(SyncError::OutOfMemory { added: 0 })?;
        self.add_to_reference(slot, table);
        match self.policy {
            SyncPolicy::Fault => {}
            SyncPolicy::Push | SyncPolicy::Prealloc => self.push(slot),
            SyncPolicy::Generation => self.sync_loaded(),
        }
        Ok(table)
    }

    /// Called when `table` is about to be loaded on a CPU (`switch_mm()`):
    /// under [`SyncPolicy::Generation`], copies the additions it missed.
    pub fn switch_to(&self, table: PhysAddr) {
        if self.policy != SyncPolicy::Generation {
            return;
        }
        self.stats.generation_checks.fetch_add(1, Ordering::Relaxed);
        let current = self.generation.load(Ordering::Acquire);
        let seen = self.tables.table_generation(table);
        if seen >= current {
            return;
        }
        self.stats.generation_syncs.fetch_add(1, Ordering::Relaxed);
        self.catch_up(table, seen, current);
    }

    /// A kernel access to `va` through process table `table`: the check.
    /// Under [`SyncPolicy::Fault`] a missing entry the reference has is the
    /// vmalloc fault, fixed here.
    ///
    /// # Errors
    /// [`KernelAccessError::MissingSync`] when another policy left the
    /// table stale, [`KernelAccessError::Unmapped`] when the reference lacks
    /// the slot too, [`KernelAccessError::NotKernel`] for a user address.
    pub fn kernel_access(
        &self,
        table: PhysAddr,
        va: VirtAddr,
    ) -> Result<AccessOutcome, KernelAccessError> {
        let slot = self
            .kernel_slot(va)
            .ok_or(KernelAccessError::NotKernel(va))?;
        if B::Format::is_valid(self.read_slot(table, slot)) {
            return Ok(AccessOutcome::Hit);
        }
        let reference = self.read_slot(self.reference, slot);
        if !B::Format::is_valid(reference) {
            return Err(KernelAccessError::Unmapped(va));
        }
        if self.policy == SyncPolicy::Fault {
            self.copy_slot(table, slot);
            self.stats.faults_fixed.fetch_add(1, Ordering::Relaxed);
            return Ok(AccessOutcome::FaultFixed);
        }
        self.stats.missing_syncs.fetch_add(1, Ordering::Relaxed);
        Err(KernelAccessError::MissingSync { table, slot })
    }

    // ---- internals -------------------------------------------------------

    fn read_slot(&self, table: PhysAddr, slot: usize) -> u64 {
        self.backend.read_entry(table.add(8 * slot as u64))
    }

    /// A kernel top-level entry, written like every other page-table entry.
    fn write_slot(&self, table: PhysAddr, slot: usize, value: u64) {
        self.backend.write_entry(EntryUpdate {
            entry: table.add(8 * slot as u64),
            va: self.layout.slot_base(slot),
            space: SpaceId::KERNEL,
            level: B::Format::LEVELS,
            value,
            kernel: true,
            valid: B::Format::is_valid(value),
            leaf: false,
        });
    }

    fn kernel_slot(&self, va: VirtAddr) -> Option<usize> {
        let slot = self.layout.slot(va);
        (slot >= KERNEL_FIRST_SLOT).then_some(slot)
    }

    fn add_to_reference(&self, slot: usize, table: PhysAddr) {
        let entry = B::Format::encode_table(table, B::Format::LEVELS);
        self.write_slot(self.reference, slot, entry);
        let index = self.generation.load(Ordering::Acquire);
        // Entries are only added and each slot once: the log cannot
        // overflow.
        self.log[index as usize].store(slot as u16, Ordering::Release);
        self.generation.store(index + 1, Ordering::Release);
        self.stats.top_level_adds.fetch_add(1, Ordering::Relaxed);
    }

    fn copy_slot(&self, table: PhysAddr, slot: usize) {
        let entry = self.read_slot(self.reference, slot);
        self.write_slot(table, slot, entry);
        self.stats.entries_copied.fetch_add(1, Ordering::Relaxed);
    }

    fn push(&self, slot: usize) {
        let generation = self.generation.load(Ordering::Acquire);
        for index in 0..self.tables.process_count() {
            let table = self.tables.process_table(index);
            self.stats.tables_walked.fetch_add(1, Ordering::Relaxed);
            self.copy_slot(table, slot);
            self.tables.set_table_generation(table, generation);
        }
    }

    /// Copies additions `seen..current` of the log into `table`.
    fn catch_up(&self, table: PhysAddr, seen: u32, current: u32) {
        for index in seen..current {
            let slot = usize::from(self.log[index as usize].load(Ordering::Acquire));
            self.copy_slot(table, slot);
        }
        self.tables.set_table_generation(table, current);
    }

    /// Brings every table loaded on a CPU up to date (the new slot and, for
    /// a table some embedder loaded without [`Self::switch_to`], anything
    /// else it missed).
    fn sync_loaded(&self) {
        let current = self.generation.load(Ordering::Acquire);
        for cpu in (0..self.tables.cpu_count()).map(CpuId::new) {
            let table = self.tables.loaded_table(cpu);
            if table == self.reference {
                continue;
            }
            let seen = self.tables.table_generation(table);
            if seen >= current {
                continue;
            }
            self.stats.tables_walked.fetch_add(1, Ordering::Relaxed);
            self.catch_up(table, seen, current);
        }
    }
}
