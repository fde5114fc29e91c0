//! The x86-64 native backend: entries are written straight to memory, TLB
//! invalidations use `invlpg` or a CR3 reload, and remote CPUs are reached
//! by a shootdown the embedder provides.
//!
//! Native x86-64 has nothing to batch at the PTE level: a PTE store has no
//! side effect until the TLB is flushed, and the flushes are already
//! batched by the [gather](crate::pgtable::gather). The lazy-mode hooks are
//! therefore empty, which is exactly what Linux's native
//! `arch_enter_lazy_mmu_mode` does (paravirt ops default to no-ops).
//!
//! The machine operations sit behind [`X86Primitives`]:
//! `BareMetal` executes the real instructions (compiled only for
//! `x86_64-unknown-none`), and, with the `testing` feature,
//! `RecordingPrimitives` records the calls on the host for tests.

use crate::addr::{PageSize, SpaceId, VirtAddr};
use crate::backend::runs::{self, NewProtection, PteRun, RunChanges};
use crate::backend::{Backend, ContextSwitch, EntryUpdate, FlushScope, PteAccess, TlbFlush};
use crate::cpu::{Cpu, CpuMask};
use crate::mode::ArchHooks;
use crate::pgtable::format::X86_64;
use crate::pgtable::memory::PageTableMemory;
use crate::pgtable::ops::CopyKind;

/// IA32_PKRS, the supervisor protection-key rights register (Intel SDM
/// Vol. 4, Table 2-2, MSR 0x6E1; Vol. 3A §4.6.2). `wrmsr` to it is not
/// serialising (SDM Vol. 3A §4.6.2).
pub const IA32_PKRS: u32 = 0x6E1;

/// Linux's `tlb_single_page_flush_ceiling` (arch/x86/mm/tlb.c): above 33
/// pages a full flush is cheaper than `invlpg` page by page.
pub const SINGLE_PAGE_FLUSH_CEILING: usize = 33;

/// A TLB flush another CPU must perform (delivered by IPI).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoteFlush {
    /// Invalidate `[start, end)` of `space` page by page at `stride`.
    Range {
        /// Address space.
        space: SpaceId,
        /// First address.
        start: VirtAddr,
        /// End (exclusive).
        end: VirtAddr,
        /// Page size of the invalidations.
        stride: PageSize,
    },
    /// Invalidate everything of `space`.
    All {
        /// Address space.
        space: SpaceId,
    },
}

/// The machine operations the x86-64 backend needs, on top of the CPU
/// itself ([`Cpu`]: its id, interrupt context, preemption).
///
/// All take `&self`: an implementation may be re-entered from an interrupt
/// handler. The simulator implements them with its model; a kernel uses
/// `BareMetal` (bare metal only). The key register (IA32_PKRS) is
/// [`crate::cpu::KeyRegister`].
///
/// What to count and charge (see [`super::machine::Primitive`]): `invlpg`
/// 1 `invlpg`; `reload_cr3` and `flush_global` 1 `full_flush`; `shootdown`
/// 1 `ipi` per target plus the target's flush.
pub trait X86Primitives: Cpu {
    /// `invlpg va`: invalidates the TLB entries of the page holding `va`
    /// (any size, global included) in the current PCID, and all
    /// paging-structure cache entries (SDM Vol. 3A §4.10.4.1).
    fn invlpg(&self, va: VirtAddr);

    /// `mov cr3, cr3`: invalidates every non-global TLB entry of the
    /// current address space (SDM Vol. 3A §4.10.4.1).
    fn reload_cr3(&self);

    /// Toggles CR4.PGE off and on: invalidates every TLB entry, global ones
    /// included (SDM Vol. 3A §4.10.4.1).
    fn flush_global(&self);

    /// The address space whose root is in CR3 on this CPU. Without PCIDs a
    /// CR3 switch flushes all non-global entries, so a space that is not
    /// loaded has nothing of its own cached here.
    fn loaded_space(&self) -> SpaceId;

    /// Sends `request` to every CPU in `cpus` (never the current one) and
    /// waits for them to perform it (a TLB-shootdown IPI).
    fn shootdown(&self, cpus: CpuMask, request: RemoteFlush);

    /// The CPUs a flush of `space` must reach ([`FlushScope::Mm`]): the
    /// CPUs in its `mm_cpumask`, without those that only borrow it lazily
    /// unless page tables are freed (`freed_tables`; Linux's
    /// `flush_tlb_mm_range` and `should_flush_tlb`, arch/x86/mm/tlb.c);
    /// every CPU for the kernel's space (`flush_tlb_kernel_range`). The
    /// default is every CPU. An implementation that keeps lazy-TLB state
    /// ([`crate::mm::active_mm`]) answers for a user space with
    /// [`flush_targets`](crate::mm::active_mm::flush_targets)`(self, space,
    /// !freed_tables)`, which moves the space's flush generation on before
    /// it leaves lazy CPUs out: without that, a CPU it skipped keeps the
    /// stale translations when it returns to the space.
    fn flush_targets(&self, space: SpaceId, freed_tables: bool) -> CpuMask {
        let _ = (space, freed_tables);
        CpuMask::first(crate::cpu::MAX_CPUS)
    }
}

impl<P: X86Primitives + ?Sized> X86Primitives for &P {
    fn invlpg(&self, va: VirtAddr) {
        (**self).invlpg(va)
    }
    fn reload_cr3(&self) {
        (**self).reload_cr3()
    }
    fn flush_global(&self) {
        (**self).flush_global()
    }
    fn loaded_space(&self) -> SpaceId {
        (**self).loaded_space()
    }
    fn shootdown(&self, cpus: CpuMask, request: RemoteFlush) {
        (**self).shootdown(cpus, request)
    }
    fn flush_targets(&self, space: SpaceId, freed_tables: bool) -> CpuMask {
        (**self).flush_targets(space, freed_tables)
    }
}

/// Performs a flush on the executing CPU (also what a shootdown handler
/// runs on the receiving CPU).
///
/// The caller keeps the task on this CPU throughout (preemption disabled,
/// or interrupt context): a task that migrates half-way would invalidate
/// the rest of the range on a CPU that did not cache it and leave the one
/// it left with stale translations.
pub fn flush_locally<P: X86Primitives + ?Sized>(primitives: &P, request: RemoteFlush) {
    match request {
        RemoteFlush::Range {
            space,
            start,
            end,
            stride,
        } => {
            if space != SpaceId::KERNEL && space != primitives.loaded_space() {
                return;
            }
            let mut va = start.0;
            while va < end.0 {
                primitives.invlpg(VirtAddr(va));
                va += stride.bytes();
            }
        }
        RemoteFlush::All { space } => {
            if space == SpaceId::KERNEL {
                primitives.flush_global();
            } else if space == primitives.loaded_space() {
                primitives.reload_cr3();
            }
        }
    }
}

/// The x86-64 native backend over page-table memory `M` and machine
/// primitives `P`.
#[derive(Debug)]
pub struct X86Backend<M, P> {
    memory: M,
    primitives: P,
}

impl<M: PageTableMemory, P: X86Primitives> X86Backend<M, P> {
    /// A backend writing entries to `memory` and flushing with
    /// `primitives`.
    pub const fn new(memory: M, primitives: P) -> Self {
        X86Backend { memory, primitives }
    }

    /// The machine primitives.
    pub fn primitives(&self) -> &P {
        &self.primitives
    }

    /// The page-table memory.
    pub fn memory(&self) -> &M {
        &self.memory
    }

    /// Decides which CPUs flush, flushes locally and shoots the others
    /// down, all on one CPU: preemption stays disabled from reading the
    /// current CPU until both the local flush and the shootdown are done
    /// (Linux's `flush_tlb_mm_range` between `get_cpu()` and `put_cpu()`,
    /// arch/x86/mm/tlb.c). A task migrating in between would skip the CPU
    /// it arrives on in the shootdown mask, flush that CPU locally instead
    /// of the one it left, and leave stale translations behind.
    fn dispatch(&self, scope: FlushScope, request: RemoteFlush) {
        let on_this_cpu = self.primitives.preempt_guard();
        let space = match request {
            RemoteFlush::Range { space, .. } | RemoteFlush::All { space } => space,
        };
        let scope = match scope {
            FlushScope::Mm { freed_tables } => {
                FlushScope::Cpus(self.primitives.flush_targets(space, freed_tables))
            }
            other => other,
        };
        match scope {
            FlushScope::Local | FlushScope::Mm { .. } => flush_locally(&self.primitives, request),
            FlushScope::Cpus(mask) => {
                let me = on_this_cpu.cpu_id();
                let others = mask.without(me);
                // Issue the remote requests first so the other CPUs work
                // while this one flushes (Linux's native_flush_tlb_multi
                // then flush_tlb_func local).
                if !others.is_empty() {
                    self.primitives.shootdown(others, request);
                }
                if mask.contains(me) {
                    flush_locally(&self.primitives, request);
                }
            }
        }
    }
}

impl<M: PageTableMemory, P: X86Primitives> PteAccess for X86Backend<M, P> {
    #[inline]
    fn read_entry(&self, entry: crate::addr::PhysAddr) -> u64 {
        self.memory.read(entry)
    }
    #[inline]
    fn write_entry(&self, update: EntryUpdate) {
        self.memory.write(update.entry, update.value)
    }
    #[inline]
    fn get_and_clear(&self, update: EntryUpdate) -> u64 {
        self.memory.swap(update.entry, update.value)
    }
    /// Native stores have no side effect: a run is one memory loop.
    #[inline]
    fn write_entries(&self, first: EntryUpdate, count: usize, step: u64) {
        self.memory.write_run(first.entry, count, first.value, step)
    }
}

impl<M: PageTableMemory, P: X86Primitives> TlbFlush for X86Backend<M, P> {
    fn flush_range(
        &self,
        space: SpaceId,
        start: VirtAddr,
        end: VirtAddr,
        stride: PageSize,
        scope: FlushScope,
    ) {
        self.dispatch(
            scope,
            RemoteFlush::Range {
                space,
                start,
                end,
                stride,
            },
        );
    }

    fn flush_all(&self, space: SpaceId, scope: FlushScope) {
        self.dispatch(scope, RemoteFlush::All { space });
    }

    fn single_page_ceiling(&self) -> usize {
        SINGLE_PAGE_FLUSH_CEILING
    }
}

/// Nothing to batch beyond the gather: the hooks do nothing.
impl<M: PageTableMemory, P: X86Primitives> ArchHooks for X86Backend<M, P> {
    fn enter(&self) {}
    fn leave(&self) {}
    fn flush(&self) {}
}

/// Nothing is pending across a context switch.
impl<M: PageTableMemory, P: X86Primitives> ContextSwitch for X86Backend<M, P> {}

/// Native stores have no side effect: where the memory lends a run of
/// entries, each run operation is one loop over them
/// ([`runs::cells`]); elsewhere (a kernel's direct map, whose swaps must be
/// atomic) the per-entry path.
impl<M: PageTableMemory, P: X86Primitives> Backend for X86Backend<M, P> {
    type Memory = M;
    fn memory(&self) -> &M {
        &self.memory
    }
    type Format = X86_64;

    #[inline]
    fn clear_ptes(&self, run: PteRun, full: bool) -> RunChanges {
        match self.memory.run_cells(run.entry, run.count) {
            Some(cells) => runs::cells::clear::<X86_64>(cells),
            None => runs::clear_ptes_each::<X86_64, _>(self, run, full),
        }
    }

    #[inline]
    fn protect_ptes(&self, run: PteRun, protection: &NewProtection) -> RunChanges {
        match self.memory.run_cells(run.entry, run.count) {
            Some(cells) => runs::cells::protect::<X86_64>(cells, protection),
            None => runs::protect_ptes_each::<X86_64, _>(self, run, protection),
        }
    }

    #[inline]
    fn copy_ptes(&self, parent: PteRun, child: PteRun, kind: CopyKind) -> RunChanges {
        let from = self.memory.run_cells(parent.entry, parent.count);
        match (from, self.memory.run_cells(child.entry, child.count)) {
            (Some(from), Some(to)) => runs::cells::copy::<X86_64>(from, to, parent.level, kind),
            _ => runs::copy_ptes_each::<X86_64, _>(self, parent, child, kind),
        }
    }

    #[inline]
    fn move_ptes(&self, from: PteRun, to: PteRun) -> RunChanges {
        let source = self.memory.run_cells(from.entry, from.count);
        match (source, self.memory.run_cells(to.entry, to.count)) {
            (Some(source), Some(target)) => runs::cells::moves::<X86_64>(source, target),
            _ => runs::move_ptes_each::<X86_64, _>(self, from, to),
        }
    }
}

#[cfg(all(feature = "testing", feature = "alloc"))]
pub use recording::{PrimitiveCall, RecordingPrimitives};

#[cfg(all(feature = "testing", feature = "alloc"))]
mod recording {
    use alloc::vec::Vec;
    use core::cell::{Cell, RefCell};

    use super::{RemoteFlush, X86Primitives};
    use crate::addr::{SpaceId, VirtAddr};
    use crate::cpu::{Cpu, CpuId, CpuMask, KeyRegister};

    /// One recorded primitive call.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    #[allow(
        clippy::large_enum_variant,
        reason = "a CPU mask is MAX_CPUS bits by design; a recording double keeps calls as values"
    )]
    pub enum PrimitiveCall {
        /// `invlpg`.
        Invlpg(VirtAddr),
        /// CR3 reload.
        ReloadCr3,
        /// CR4.PGE toggle.
        FlushGlobal,
        /// `rdmsr IA32_PKRS`.
        ReadPkrs,
        /// `wrmsr IA32_PKRS`.
        WritePkrs(u32),
        /// A shootdown IPI to a CPU mask.
        Shootdown(CpuMask, RemoteFlush),
    }

    /// Host primitives that record every call, keep IA32_PKRS in a cell,
    /// and report a fixed CPU and loaded address space. Preemption control
    /// is a depth counter; flushes issued while preemption is enabled are
    /// counted (see [`RecordingPrimitives::preemptible_flushes`]).
    #[derive(Debug)]
    pub struct RecordingPrimitives {
        cpu: u32,
        loaded: Cell<SpaceId>,
        pkrs: Cell<u32>,
        preempt: Cell<u32>,
        preemptible_flushes: Cell<usize>,
        calls: RefCell<Vec<PrimitiveCall>>,
    }

    impl RecordingPrimitives {
        /// Primitives for CPU `cpu` with `loaded` in CR3.
        pub fn new(cpu: u32, loaded: SpaceId) -> Self {
            RecordingPrimitives {
                cpu,
                loaded: Cell::new(loaded),
                pkrs: Cell::new(0),
                preempt: Cell::new(0),
                preemptible_flushes: Cell::new(0),
                calls: RefCell::new(Vec::new()),
            }
        }

        /// Loads another address space (a context switch).
        pub fn load_space(&self, space: SpaceId) {
            self.loaded.set(space);
        }

        /// The calls so far.
        pub fn calls(&self) -> Vec<PrimitiveCall> {
            self.calls.borrow().clone()
        }

        /// Forgets the recorded calls.
        pub fn clear(&self) {
            self.calls.borrow_mut().clear();
        }

        /// The preemption-disable depth.
        pub fn preempt_count(&self) -> u32 {
            self.preempt.get()
        }

        /// How many TLB invalidations and shootdowns were issued while
        /// preemption was enabled (the task could have moved to another CPU
        /// half-way through a flush).
        pub fn preemptible_flushes(&self) -> usize {
            self.preemptible_flushes.get()
        }

        fn record(&self, call: PrimitiveCall) {
            let flush = !matches!(call, PrimitiveCall::ReadPkrs | PrimitiveCall::WritePkrs(_));
            if flush && self.preempt.get() == 0 {
                self.preemptible_flushes
                    .set(self.preemptible_flushes.get() + 1);
            }
            self.calls.borrow_mut().push(call);
        }
    }

    impl Cpu for RecordingPrimitives {
        fn cpu_id(&self) -> CpuId {
            CpuId(self.cpu)
        }
        fn in_interrupt(&self) -> bool {
            false
        }
        fn preempt_disable(&self) {
            self.preempt.set(self.preempt.get() + 1);
        }
        fn preempt_enable(&self) {
            let depth = self.preempt.get();
            assert!(depth > 0, "preempt_enable without preempt_disable");
            self.preempt.set(depth - 1);
        }
    }

    impl KeyRegister for RecordingPrimitives {
        fn read_key(&self) -> u64 {
            self.record(PrimitiveCall::ReadPkrs);
            u64::from(self.pkrs.get())
        }
        fn write_key(&self, value: u64) {
            self.record(PrimitiveCall::WritePkrs(value as u32));
            self.pkrs.set(value as u32);
        }
    }

    impl X86Primitives for RecordingPrimitives {
        fn invlpg(&self, va: VirtAddr) {
            self.record(PrimitiveCall::Invlpg(va));
        }
        fn reload_cr3(&self) {
            self.record(PrimitiveCall::ReloadCr3);
        }
        fn flush_global(&self) {
            self.record(PrimitiveCall::FlushGlobal);
        }
        fn loaded_space(&self) -> SpaceId {
            self.loaded.get()
        }
        fn shootdown(&self, cpus: CpuMask, request: RemoteFlush) {
            self.record(PrimitiveCall::Shootdown(cpus, request));
        }
    }
}

#[cfg(all(target_arch = "x86_64", any(target_os = "none", doc)))]
pub use bare_metal::{BareMetal, BareMetalCounters, BareMetalCounts};

#[cfg(all(target_arch = "x86_64", any(target_os = "none", doc)))]
mod bare_metal {
    use core::arch::asm;
    use core::sync::atomic::{AtomicU64, Ordering};

    use super::{RemoteFlush, X86Primitives, IA32_PKRS};
    use crate::addr::{SpaceId, VirtAddr};
    use crate::backend::machine::MAX_BACKEND_CPUS;
    use crate::cpu::{Cpu, CpuId, CpuMask, KeyRegister};

    /// How many of each instruction [`BareMetal`] has executed.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct BareMetalCounts {
        /// `invlpg` instructions.
        pub invlpg: u64,
        /// CR3 reloads.
        pub cr3_reloads: u64,
        /// CR4.PGE toggles (full flushes including global entries).
        pub global_flushes: u64,
        /// IA32_PKRS writes in task context.
        pub pkrs_writes: u64,
        /// IA32_PKRS writes in interrupt context (exception entry and
        /// return, handlers' own windows).
        pub irq_pkrs_writes: u64,
    }

    impl core::ops::Sub for BareMetalCounts {
        type Output = BareMetalCounts;
        fn sub(self, before: BareMetalCounts) -> BareMetalCounts {
            BareMetalCounts {
                invlpg: self.invlpg - before.invlpg,
                cr3_reloads: self.cr3_reloads - before.cr3_reloads,
                global_flushes: self.global_flushes - before.global_flushes,
                pkrs_writes: self.pkrs_writes - before.pkrs_writes,
                irq_pkrs_writes: self.irq_pkrs_writes - before.irq_pkrs_writes,
            }
        }
    }

    /// The real instructions, for a kernel running at CPL 0, counted per
    /// CPU. The kernel supplies what the instructions cannot know: the
    /// executing CPU, interrupt context, the loaded address space, the
    /// shootdown IPI and preemption control (which belongs to its
    /// scheduler).
    #[derive(Debug)]
    pub struct BareMetal {
        /// Returns the executing CPU.
        pub cpu_id: fn() -> CpuId,
        /// Whether the CPU is in interrupt context.
        pub in_interrupt: fn() -> bool,
        /// Returns the address space loaded in CR3.
        pub loaded_space: fn() -> SpaceId,
        /// Sends a flush IPI to the CPUs of a mask and waits for them.
        pub shootdown: fn(CpuMask, RemoteFlush),
        /// Disables preemption (nests; `get_cpu()`). A kernel that runs on
        /// one CPU without a preemptive scheduler has nothing to disable
        /// and passes a function that does nothing: no task can move
        /// between the local flush and the shootdown.
        pub preempt_disable: fn(),
        /// Re-enables preemption (`put_cpu()`); does nothing wherever
        /// `preempt_disable` does nothing.
        pub preempt_enable: fn(),
        /// Instructions executed so far, per CPU.
        pub counts: BareMetalCounters,
    }

    /// One count per CPU.
    struct PerCpuCount([AtomicU64; MAX_BACKEND_CPUS]);

    impl PerCpuCount {
        const fn new() -> Self {
            PerCpuCount([const { AtomicU64::new(0) }; MAX_BACKEND_CPUS])
        }

        /// Relaxed: a reader wants a count, not an ordering; a task that
        /// migrates between reading its CPU and adding still adds once.
        fn bump(&self, cpu: CpuId) {
            self.0[cpu.index()].fetch_add(1, Ordering::Relaxed);
        }

        fn on(&self, cpu: CpuId) -> u64 {
            self.0[cpu.index()].load(Ordering::Relaxed)
        }

        fn total(&self) -> u64 {
            self.0.iter().map(|c| c.load(Ordering::Relaxed)).sum()
        }
    }

    impl core::fmt::Debug for PerCpuCount {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            write!(f, "{}", self.total())
        }
    }

    /// The counters of a [`BareMetal`], one per CPU (atomics, so it can
    /// live in a `static`).
    #[derive(Debug)]
    pub struct BareMetalCounters {
        invlpg: PerCpuCount,
        cr3_reloads: PerCpuCount,
        global_flushes: PerCpuCount,
        pkrs_writes: PerCpuCount,
        irq_pkrs_writes: PerCpuCount,
    }

    impl Default for BareMetalCounters {
        fn default() -> Self {
            Self::new()
        }
    }

    impl BareMetalCounters {
        /// All zero.
        pub const fn new() -> Self {
            BareMetalCounters {
                invlpg: PerCpuCount::new(),
                cr3_reloads: PerCpuCount::new(),
                global_flushes: PerCpuCount::new(),
                pkrs_writes: PerCpuCount::new(),
                irq_pkrs_writes: PerCpuCount::new(),
            }
        }

        /// The counts of `cpu` so far.
        ///
        /// # Panics
        /// When `cpu` is not below [`MAX_BACKEND_CPUS`].
        pub fn on(&self, cpu: CpuId) -> BareMetalCounts {
            BareMetalCounts {
                invlpg: self.invlpg.on(cpu),
                cr3_reloads: self.cr3_reloads.on(cpu),
                global_flushes: self.global_flushes.on(cpu),
                pkrs_writes: self.pkrs_writes.on(cpu),
                irq_pkrs_writes: self.irq_pkrs_writes.on(cpu),
            }
        }

        /// Every CPU's counts so far, summed.
        pub fn total(&self) -> BareMetalCounts {
            BareMetalCounts {
                invlpg: self.invlpg.total(),
                cr3_reloads: self.cr3_reloads.total(),
                global_flushes: self.global_flushes.total(),
                pkrs_writes: self.pkrs_writes.total(),
                irq_pkrs_writes: self.irq_pkrs_writes.total(),
            }
        }
    }

    impl Cpu for BareMetal {
        fn cpu_id(&self) -> CpuId {
            (self.cpu_id)()
        }
        fn in_interrupt(&self) -> bool {
            (self.in_interrupt)()
        }
        fn preempt_disable(&self) {
            (self.preempt_disable)()
        }
        fn preempt_enable(&self) {
            (self.preempt_enable)()
        }
    }

    impl KeyRegister for BareMetal {
        fn read_key(&self) -> u64 {
            let (low, _high): (u32, u32);
            // SAFETY: reading IA32_PKRS has no side effect; the CPU supports
            // PKS (the embedder checked CPUID.(EAX=7,ECX=0):ECX[31]).
            unsafe {
                asm!("rdmsr", in("ecx") IA32_PKRS, out("eax") low, out("edx") _high,
                     options(nostack, nomem, preserves_flags))
            };
            u64::from(low)
        }

        fn write_key(&self, value: u64) {
            let cpu = (self.cpu_id)();
            if (self.in_interrupt)() {
                self.counts.irq_pkrs_writes.bump(cpu);
            } else {
                self.counts.pkrs_writes.bump(cpu);
            }
            // SAFETY: IA32_PKRS only restricts supervisor data accesses to
            // pages with a key; a wrong value causes page faults, never
            // memory unsafety. PKS support is the embedder's contract.
            // No `nomem`: accesses to key-protected memory must stay on the
            // side of the write where the program put them.
            unsafe {
                asm!("wrmsr", in("ecx") IA32_PKRS, in("eax") value as u32, in("edx") 0u32,
                     options(nostack, preserves_flags))
            };
        }
    }

    impl X86Primitives for BareMetal {
        fn invlpg(&self, va: VirtAddr) {
            self.counts.invlpg.bump((self.cpu_id)());
            // SAFETY: invlpg only drops cached translations; the page tables
            // in memory stay authoritative. Requires CPL 0, which is this
            // type's contract.
            unsafe { asm!("invlpg [{}]", in(reg) va.0, options(nostack, preserves_flags)) };
        }

        fn reload_cr3(&self) {
            self.counts.cr3_reloads.bump((self.cpu_id)());
            // SAFETY: writing CR3 back with its own value keeps the same
            // address space and only flushes non-global translations.
            unsafe {
                asm!(
                    "mov {tmp}, cr3",
                    "mov cr3, {tmp}",
                    tmp = out(reg) _,
                    options(nostack, preserves_flags)
                )
            };
        }

        fn flush_global(&self) {
            self.counts.global_flushes.bump((self.cpu_id)());
            // SAFETY: clearing and restoring CR4.PGE (bit 7) flushes every
            // translation and leaves CR4 as it was; interrupts in between
            // only see a TLB without global entries, which is always valid.
            unsafe {
                asm!(
                    "mov {cr4}, cr4",
                    "mov {tmp}, {cr4}",
                    "xor {tmp}, 0x80",
                    "mov cr4, {tmp}",
                    "mov cr4, {cr4}",
                    cr4 = out(reg) _,
                    tmp = out(reg) _,
                    // `xor` changes the flags; no `nomem`: page-table
                    // stores must not move across the flush.
                    options(nostack)
                )
            };
        }

        fn loaded_space(&self) -> SpaceId {
            (self.loaded_space)()
        }

        fn shootdown(&self, cpus: CpuMask, request: RemoteFlush) {
            (self.shootdown)(cpus, request)
        }
    }
}

#[cfg(all(test, feature = "testing", feature = "alloc"))]
mod tests {
    use super::*;
    use crate::addr::PhysAddr;
    use crate::pgtable::memory::PageTableMemory;

    /// Page-table memory that is never touched by a flush.
    struct NoMemory;

    // SAFETY: it touches no memory at all.
    unsafe impl PageTableMemory for NoMemory {
        fn read(&self, _entry: PhysAddr) -> u64 {
            0
        }
        fn write(&self, _entry: PhysAddr, _value: u64) {}
        fn swap(&self, _entry: PhysAddr, _value: u64) -> u64 {
            0
        }
        fn zero_frame(&self, _frame: PhysAddr) {}
    }

    #[test]
    fn every_flush_runs_with_preemption_disabled() {
        let backend = X86Backend::new(NoMemory, RecordingPrimitives::new(1, SpaceId(1)));
        let (start, end) = (VirtAddr(0x40_0000), VirtAddr(0x40_2000));
        backend.flush_range(
            SpaceId(1),
            start,
            end,
            PageSize::Size4K,
            FlushScope::Cpus(CpuMask::first(3)),
        );
        backend.flush_range(SpaceId(1), start, end, PageSize::Size4K, FlushScope::Local);
        backend.flush_all(SpaceId(1), FlushScope::Cpus(CpuMask::first(2)));
        backend.flush_all(SpaceId::KERNEL, FlushScope::Local);
        let p = backend.primitives();
        assert_eq!(
            p.calls(),
            [
                PrimitiveCall::Shootdown(
                    CpuMask::from_bits(0b101),
                    RemoteFlush::Range {
                        space: SpaceId(1),
                        start,
                        end,
                        stride: PageSize::Size4K
                    }
                ),
                PrimitiveCall::Invlpg(start),
                PrimitiveCall::Invlpg(VirtAddr(0x40_1000)),
                PrimitiveCall::Invlpg(start),
                PrimitiveCall::Invlpg(VirtAddr(0x40_1000)),
                PrimitiveCall::Shootdown(
                    CpuMask::from_bits(0b01),
                    RemoteFlush::All { space: SpaceId(1) }
                ),
                PrimitiveCall::ReloadCr3,
                PrimitiveCall::FlushGlobal,
            ]
        );
        assert_eq!(p.preemptible_flushes(), 0, "no flush could migrate");
        assert_eq!(p.preempt_count(), 0, "preemption is back on");
    }
}
