//! arm64: after a valid kernel entry is written the table walker may not
//! see it until a `dsb ishst`, and the CPU may keep using a stale "invalid"
//! result until an `isb`. Outside lazy MMU mode both barriers follow every
//! such write; inside it they become a pending flag in the task, emitted
//! once at flush or leave.
//!
//! Modelled on arch/arm64/include/asm/pgtable.h (`__set_pte_complete`,
//! `queue_pte_barriers`, `emit_pte_barriers`, `arch_flush_lazy_mmu_mode`,
//! the `TIF_LAZY_MMU_PENDING` thread flag, Linux 6.16) and
//! arch/arm64/include/asm/tlbflush.h (`__flush_tlb_range_nosync`,
//! `flush_tlb_kernel_range`, `flush_tlb_mm`, `flush_tlb_all`,
//! `__flush_tlb_range_limit_excess`, `__flush_tlb_range_op` with the range
//! operations of FEAT_TLBIRANGE, `MAX_DVM_OPS`, `MAX_TLBI_RANGE_PAGES`,
//! Linux 6.13–6.16).

use core::cell::Cell;

use super::machine::{CpuPrimitives, LazyFlag, PerCpu};
use super::runs::{self, NewProtection, PteRun, RunChanges};
use super::{Backend, ContextSwitch, EntryUpdate, FlushScope, PteAccess, TlbFlush};
use crate::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use crate::mode::{ArchHooks, LazyState};
use crate::pgtable::format::Aarch64;
use crate::pgtable::ops::CopyKind;

/// The data synchronisation barriers the backend issues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dsb {
    /// `dsb ishst`: earlier stores (page-table writes) are visible to the
    /// inner-shareable domain, including table walkers.
    IshSt,
    /// `dsb ish`: earlier loads, stores and TLB maintenance are complete in
    /// the inner-shareable domain.
    Ish,
}

/// Pages (at the flush's stride) from which a CPU without range
/// operations flushes the whole address space instead of page by page:
/// `MAX_DVM_OPS` (called `MAX_TLBI_OPS` before Linux 6.10) =
/// `PTRS_PER_PTE`, 512 with 4K pages, arch/arm64/include/asm/tlbflush.h.
pub const MAX_DVM_OPS: usize = 512;

/// Pages one range operation covers: `(num + 1) << (5 * scale + 1)`
/// (`__TLBI_RANGE_PAGES`; Arm ARM, `TLBI RVAE1IS` and friends: the range
/// is `(NUM + 1) * 2^(5 * SCALE + 1)` pages).
pub const fn tlbi_range_pages(num: u8, scale: u8) -> u64 {
    (num as u64 + 1) << (5 * scale as u32 + 1)
}

/// The most pages range operations cover before a full flush is cheaper:
/// `MAX_TLBI_RANGE_PAGES` = `__TLBI_RANGE_PAGES(31, 3)`, 2,097,152.
pub const MAX_TLBI_RANGE_PAGES: u64 = tlbi_range_pages(31, 3);

/// One TLB invalidation instruction of a range flush.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlbiOp {
    /// `tlbi vale1is` (or `vae1is`, `vaale1is`, `vaae1is`) of the page at
    /// this address.
    Page(VirtAddr),
    /// `tlbi rvale1is` (or `rvae1is`, `rvaale1is`, `rvaae1is`): the
    /// [`tlbi_range_pages`]`(num, scale)` pages from this address.
    Range {
        /// First address.
        va: VirtAddr,
        /// SCALE, 0–3.
        scale: u8,
        /// NUM, 0–31.
        num: u8,
    },
}

/// The instructions `__flush_tlb_range_op` issues for `pages` 4K pages
/// from `start` at `stride`: one per stride step without range
/// operations; with them, range operations from the largest scale down and
/// a single-page operation for a last odd page (no LPA2, so no 64K
/// alignment step). `pages` must not exceed [`MAX_TLBI_RANGE_PAGES`].
pub fn tlbi_ops(
    start: VirtAddr,
    pages: u64,
    stride: PageSize,
    range: bool,
    mut op: impl FnMut(TlbiOp),
) {
    let mut va = start.0;
    let mut left = pages;
    let mut scale: i32 = 3;
    while left > 0 {
        if !range || left == 1 {
            op(TlbiOp::Page(VirtAddr(va)));
            va = va.wrapping_add(stride.bytes());
            left = left.saturating_sub(stride.bytes() >> 12);
            continue;
        }
        // `__TLBI_RANGE_NUM`: -1 when this scale covers nothing.
        let scale_u = scale as u8;
        let num = (left.min(tlbi_range_pages(31, scale_u)) >> (5 * scale as u32 + 1)) as i64 - 1;
        if num >= 0 {
            let num = num as u8;
            op(TlbiOp::Range {
                va: VirtAddr(va),
                scale: scale_u,
                num,
            });
            let covered = tlbi_range_pages(num, scale_u);
            va = va.wrapping_add(covered << 12);
            left -= covered;
        }
        scale -= 1;
    }
}

/// The machine operations of an arm64 CPU.
///
/// What to count and charge (see [`super::machine::Primitive`]):
///
/// | method | counts |
/// |---|---|
/// | [`write_pte`](Arm64Primitives::write_pte) | 1 `pte_write` |
/// | [`dsb`](Arm64Primitives::dsb) | 1 `dsb` |
/// | [`isb`](Arm64Primitives::isb) | 1 `isb` |
/// | [`tlbi_va`](Arm64Primitives::tlbi_va) | 1 `tlbi` |
/// | [`tlbi_range`](Arm64Primitives::tlbi_range) | 1 `tlbi` |
/// | [`tlbi_asid`](Arm64Primitives::tlbi_asid) | 1 `full_flush` |
///
/// Model of visibility: a written entry reaches the walker of every CPU at
/// the next `dsb` on the writing CPU; until the writing CPU's next `isb` it
/// may still act on a translation fault it cached for that entry. The
/// `dsb ish` of a context switch (Linux's `__switch_to`) is one the backend
/// issues through [`Arm64Primitives::dsb`] in
/// [`ContextSwitch::switch_out`]; a model of the context switch should not
/// count another.
pub trait Arm64Primitives: CpuPrimitives {
    /// Stores one entry (`WRITE_ONCE(*ptep, pte)`).
    fn write_pte(&self, entry: PhysAddr, value: u64);

    /// A data synchronisation barrier.
    fn dsb(&self, kind: Dsb);

    /// An instruction synchronisation barrier.
    fn isb(&self);

    /// `tlbi vale1is` (`last_level`) or `tlbi vae1is` for a user page,
    /// `tlbi vaale1is` / `vaae1is` for a kernel page: broadcast
    /// invalidation of one page.
    fn tlbi_va(&self, space: SpaceId, va: VirtAddr, last_level: bool);

    /// `tlbi aside1is` for a user address space, `tlbi vmalle1is` for the
    /// kernel's: broadcast invalidation of a whole address space.
    fn tlbi_asid(&self, space: SpaceId);

    /// Whether the CPU has the range operations of FEAT_TLBIRANGE
    /// (`system_supports_tlb_range()`). The default is a CPU without them.
    fn tlb_range(&self) -> bool {
        false
    }

    /// `tlbi rvale1is` (`last_level`) or `rvae1is` for user pages,
    /// `rvaale1is` / `rvaae1is` for kernel pages: broadcast invalidation of
    /// [`tlbi_range_pages`]`(num, scale)` pages from `va`. Only called when
    /// [`tlb_range`](Arm64Primitives::tlb_range) is true; the default
    /// invalidates the same pages one by one.
    fn tlbi_range(&self, space: SpaceId, va: VirtAddr, scale: u8, num: u8, last_level: bool) {
        for page in 0..tlbi_range_pages(num, scale) {
            self.tlbi_va(space, va.add(page << 12), last_level);
        }
    }

    /// The current task's `TIF_LAZY_MMU_PENDING` flag: barriers are owed
    /// for entries it wrote in lazy MMU mode. Kept with the task, so it
    /// follows the task across context switches and migration.
    fn task_barriers_pending(&self) -> bool;

    /// Sets or clears the current task's pending flag.
    fn set_task_barriers_pending(&self, pending: bool);

    /// Lends the `count` consecutive entries from `first` (inside one
    /// table) as cells, so that a run inside a lazy section is one loop of
    /// plain loads and stores. `None`, the default, when every store must
    /// go through [`write_pte`](Arm64Primitives::write_pte): to be counted
    /// (a model, a recording), or because a hardware walker updates the
    /// memory concurrently.
    fn run_cells(&self, first: PhysAddr, count: usize) -> Option<&[Cell<u64>]> {
        let _ = (first, count);
        None
    }
}

impl<P: Arm64Primitives + ?Sized> Arm64Primitives for &P {
    fn write_pte(&self, entry: PhysAddr, value: u64) {
        (**self).write_pte(entry, value)
    }
    fn dsb(&self, kind: Dsb) {
        (**self).dsb(kind)
    }
    fn isb(&self) {
        (**self).isb()
    }
    fn tlbi_va(&self, space: SpaceId, va: VirtAddr, last_level: bool) {
        (**self).tlbi_va(space, va, last_level)
    }
    fn tlbi_asid(&self, space: SpaceId) {
        (**self).tlbi_asid(space)
    }
    fn tlb_range(&self) -> bool {
        (**self).tlb_range()
    }
    fn tlbi_range(&self, space: SpaceId, va: VirtAddr, scale: u8, num: u8, last_level: bool) {
        (**self).tlbi_range(space, va, scale, num, last_level)
    }
    fn task_barriers_pending(&self) -> bool {
        (**self).task_barriers_pending()
    }
    fn set_task_barriers_pending(&self, pending: bool) {
        (**self).set_task_barriers_pending(pending)
    }
    fn run_cells(&self, first: PhysAddr, count: usize) -> Option<&[Cell<u64>]> {
        (**self).run_cells(first, count)
    }
}

#[derive(Debug, Default)]
struct Arm64Cpu {
    lazy: LazyFlag,
}

/// The arm64 backend (`arm64`).
///
/// A valid kernel PTE, or any valid PMD/PUD entry, needs `dsb ishst; isb`
/// after it is written (`__set_pte_complete`, `set_pmd`, `set_pud`); user
/// PTEs do not, since their TLB maintenance or `update_mmu_cache` carries
/// the barriers. In lazy MMU mode the pair is owed once per section.
///
/// ```
/// use lazymmu::addr::{PhysAddr, SpaceId, VirtAddr};
/// use lazymmu::backend::arm64::Arm64;
/// use lazymmu::backend::machine::Primitive;
/// use lazymmu::backend::recording::Recording;
/// use lazymmu::backend::{EntryUpdate, PteAccess};
/// use lazymmu::mode::{counters::Counters, LazyMode, MisusePolicy};
///
/// let machine = Recording::new();
/// let arm = Arm64::new(&machine);
/// let mode = Counters::new(&machine, &arm, MisusePolicy::Panic);
/// {
///     let _section = mode.section();
///     for i in 0..8 {
///         arm.write_entry(EntryUpdate {
///             entry: PhysAddr(0x1000 + i * 8),
///             va: VirtAddr(0xffff_8000_0000_0000 + (i << 12)),
///             space: SpaceId::KERNEL,
///             level: 1,
///             value: 0x4000_0003 + (i << 12),
///             kernel: true,
///             valid: true,
///             leaf: true,
///         });
///     }
/// }
/// assert_eq!(machine.count(Primitive::Dsb), 1);
/// assert_eq!(machine.count(Primitive::Isb), 1);
/// ```
#[derive(Debug)]
pub struct Arm64<P> {
    primitives: P,
    cpus: PerCpu<Arm64Cpu>,
}

impl<P: Arm64Primitives> Arm64<P> {
    /// The backend over a CPU's primitives.
    pub fn new(primitives: P) -> Self {
        Self {
            primitives,
            cpus: PerCpu::default(),
        }
    }

    /// The primitives.
    pub fn primitives(&self) -> &P {
        &self.primitives
    }

    fn cpu(&self) -> &Arm64Cpu {
        self.cpus.current(&self.primitives)
    }

    /// Whether barriers are queued rather than emitted: lazy MMU mode on
    /// this CPU and not in interrupt context (`is_lazy_mmu_mode_active()`).
    fn batching(&self) -> bool {
        !self.primitives.in_interrupt() && self.cpu().lazy.get()
    }

    /// Whether writing `update` must be followed by `dsb ishst; isb`.
    pub fn needs_barriers(update: &EntryUpdate) -> bool {
        match update.level {
            1 => update.valid && update.kernel,
            _ => update.valid,
        }
    }

    /// `emit_pte_barriers`.
    fn emit_barriers(&self) {
        self.primitives.dsb(Dsb::IshSt);
        self.primitives.isb();
    }

    /// `queue_pte_barriers`, with preemption disabled while the CPU's mode
    /// is read (`is_lazy_mmu_mode_active()` reads the task's state in
    /// Linux; here the mode is per CPU, and a task that migrated between
    /// looking up its CPU and reading the flag would read another CPU's).
    fn queue_barriers(&self) {
        let _on_this_cpu = self.primitives.preempt_guard();
        if self.batching() {
            if !self.primitives.task_barriers_pending() {
                self.primitives.set_task_barriers_pending(true);
            }
        } else {
            self.emit_barriers();
        }
    }

    /// `arch_flush_lazy_mmu_mode`: emit what the task owes.
    fn emit_pending(&self) {
        if self.primitives.task_barriers_pending() {
            self.primitives.set_task_barriers_pending(false);
            self.emit_barriers();
        }
    }
}

impl<P: Arm64Primitives> ArchHooks for Arm64<P> {
    fn enter(&self) {
        self.cpu().lazy.enter(&self.primitives);
    }

    fn leave(&self) {
        self.emit_pending();
        self.cpu().lazy.leave(&self.primitives);
    }

    fn flush(&self) {
        self.emit_pending();
    }
}

impl<P: Arm64Primitives> PteAccess for Arm64<P> {
    fn read_entry(&self, entry: PhysAddr) -> u64 {
        self.primitives.read_pte(entry)
    }

    fn write_entry(&self, update: EntryUpdate) {
        self.primitives.write_pte(update.entry, update.value);
        if Self::needs_barriers(&update) {
            self.queue_barriers();
        }
    }

    /// `__set_ptes_anysz` (arch/arm64/include/asm/pgtable.h): inside a lazy
    /// section the run is stored and its barriers decided once;
    /// elsewhere entry by entry.
    fn write_entries(&self, first: EntryUpdate, count: usize, step: u64) {
        let stores = self.run_of_stores(
            |stores| {
                match stores.0.run_cells(first.entry, count) {
                    Some(cells) => runs::cells::fill(cells, first.value, step),
                    None => runs::write_entries_each(stores, first, count, step),
                }
                RunChanges::default()
            },
            |_| count > 0 && Self::needs_barriers(&first),
        );
        if stores.is_none() {
            runs::write_entries_each(self, first, count, step);
        }
    }

    /// `__ptep_get_and_clear`: an atomic exchange with an invalid value;
    /// clearing never needs the barriers (the TLB flush that follows has
    /// its own).
    fn get_and_clear(&self, update: EntryUpdate) -> u64 {
        let old = self.primitives.read_pte(update.entry);
        self.primitives.write_pte(update.entry, 0);
        old
    }
}

impl<P: Arm64Primitives> Arm64<P> {
    /// `__flush_tlb_range_limit_excess`: whether a flush of `pages` 4K
    /// pages at `stride` is rather done for the whole address space: from
    /// [`MAX_DVM_OPS`] stride steps without range operations, above
    /// [`MAX_TLBI_RANGE_PAGES`] with them.
    fn limit_excess(&self, pages: u64, stride: PageSize) -> bool {
        if self.primitives.tlb_range() {
            pages > MAX_TLBI_RANGE_PAGES
        } else {
            pages * 4096 >= MAX_DVM_OPS as u64 * stride.bytes()
        }
    }
}

impl<P: Arm64Primitives> TlbFlush for Arm64<P> {
    /// `__flush_tlb_range_nosync` + `dsb ish` for a user address space,
    /// `flush_tlb_kernel_range` for the kernel's: `dsb ishst` so the walker
    /// sees the cleared entries, the instructions of `__flush_tlb_range_op`
    /// (page by page, or range operations where the CPU has them), `dsb
    /// ish`, and for kernel mappings an `isb`. Past the limit
    /// (`__flush_tlb_range_limit_excess`) the whole space goes instead
    /// ([`TlbFlush::flush_all`]). The `is` forms broadcast, so the scope
    /// does not change the instructions.
    fn flush_range(
        &self,
        space: SpaceId,
        start: VirtAddr,
        end: VirtAddr,
        stride: PageSize,
        scope: FlushScope,
    ) {
        let pages = end.0.saturating_sub(start.0).div_ceil(stride.bytes()) * (stride.bytes() >> 12);
        if pages == 0 {
            return;
        }
        if self.limit_excess(pages, stride) {
            self.flush_all(space, scope);
            return;
        }
        let kernel = space == SpaceId::KERNEL;
        let last_level = stride == PageSize::Size4K;
        self.primitives.dsb(Dsb::IshSt);
        tlbi_ops(
            start,
            pages,
            stride,
            self.primitives.tlb_range(),
            |op| match op {
                TlbiOp::Page(va) => self.primitives.tlbi_va(space, va, last_level),
                TlbiOp::Range { va, scale, num } => self
                    .primitives
                    .tlbi_range(space, va, scale, num, last_level),
            },
        );
        self.primitives.dsb(Dsb::Ish);
        if kernel {
            self.primitives.isb();
        }
    }

    /// `flush_tlb_mm` for a user address space (`dsb ishst; tlbi aside1is;
    /// dsb ish`), `flush_tlb_all` for the kernel's (`dsb ishst; tlbi
    /// vmalle1is; dsb ish; isb`).
    fn flush_all(&self, space: SpaceId, _scope: FlushScope) {
        self.primitives.dsb(Dsb::IshSt);
        self.primitives.tlbi_asid(space);
        self.primitives.dsb(Dsb::Ish);
        if space == SpaceId::KERNEL {
            self.primitives.isb();
        }
    }

    /// `tlb_flush` with `tlb->fullmm` (arch/arm64/include/asm/tlb.h): the
    /// ASID allocator never hands the ASID out again without invalidating
    /// it, so a teardown flushes (`flush_tlb_mm`) only when page tables
    /// were freed, for the walk caches.
    fn flush_full_mm(&self, space: SpaceId, scope: FlushScope) {
        if matches!(scope, FlushScope::Mm { freed_tables: true }) || space == SpaceId::KERNEL {
            self.flush_all(space, scope);
        }
    }

    /// Linux decides in `__flush_tlb_range` itself; the gather asks for
    /// ranges up to the limit above which that would flush everything.
    fn single_page_ceiling(&self) -> usize {
        if self.primitives.tlb_range() {
            MAX_TLBI_RANGE_PAGES as usize
        } else {
            MAX_DVM_OPS
        }
    }
}

impl<P: Arm64Primitives> ContextSwitch for Arm64<P> {
    /// The CPU stops batching for the outgoing task (still `current` here),
    /// then issues the `dsb ish` of Linux's `__switch_to`, unconditionally
    /// as Linux does: every store of the outgoing task (including one made
    /// just before it was preempted, before any barrier was queued for it)
    /// is visible to every walker before the task can run on another CPU.
    /// The pending flag stays in the task, and the `isb` it still owes is
    /// emitted by its next flush or leave, on whichever CPU that runs.
    fn switch_out(&self, _prev: LazyState) {
        self.cpu().lazy.clear();
        self.primitives.dsb(Dsb::Ish);
    }

    /// The CPU batches again if the incoming task is in a section.
    fn switch_in(&self, next: LazyState) {
        if next.is_active() {
            self.enter();
        }
    }
}

/// The entry stores of an arm64 CPU with no barrier decision after each:
/// what a run writes before its one decision.
struct Stores<'a, P>(&'a P);

impl<P: Arm64Primitives> Stores<'_, P> {
    #[inline]
    fn cells(&self, run: &PteRun) -> Option<&[Cell<u64>]> {
        self.0.run_cells(run.entry, run.count)
    }
}

impl<P: Arm64Primitives> PteAccess for Stores<'_, P> {
    #[inline]
    fn read_entry(&self, entry: PhysAddr) -> u64 {
        self.0.read_pte(entry)
    }
    #[inline]
    fn write_entry(&self, update: EntryUpdate) {
        self.0.write_pte(update.entry, update.value);
    }
    #[inline]
    fn get_and_clear(&self, update: EntryUpdate) -> u64 {
        let old = self.0.read_pte(update.entry);
        self.0.write_pte(update.entry, 0);
        old
    }
}

impl<P: Arm64Primitives> Arm64<P> {
    /// A run as `__set_ptes_anysz` (arch/arm64/include/asm/pgtable.h)
    /// writes one: every entry stored, then one `__set_pte_complete` for
    /// the run. While barriers are queued (lazy MMU mode), `op` runs over
    /// plain stores and the barriers are queued once if `needs` says a
    /// store wanted them, which leaves the same stores, flags and
    /// barriers as deciding after each store. Outside lazy mode, where
    /// each store is followed by its own barriers, `None`: the caller takes
    /// the per-entry path.
    #[inline]
    fn run_of_stores(
        &self,
        op: impl FnOnce(&Stores<'_, P>) -> RunChanges,
        needs: impl FnOnce(&RunChanges) -> bool,
    ) -> Option<RunChanges> {
        if !self.batching() {
            return None;
        }
        let changes = op(&Stores(&self.primitives));
        if needs(&changes) {
            self.queue_barriers();
        }
        Some(changes)
    }

    /// Whether a valid leaf stored in `run` needs the barriers
    /// ([`Arm64::needs_barriers`] for the run's entries).
    fn run_needs_barriers(run: &PteRun) -> bool {
        run.level != 1 || run.kernel
    }
}

/// Runs of entries inside a lazy section are plain stores with one barrier
/// decision (`__set_ptes_anysz`'s one `__set_pte_complete`): one loop over
/// the entries where the primitives lend them
/// ([`Arm64Primitives::run_cells`], [`runs::cells`]), the per-entry
/// functions over plain stores otherwise.
impl<P: Arm64Primitives> Backend for Arm64<P> {
    type Format = Aarch64;
    type Memory = P::Memory;
    fn memory(&self) -> &P::Memory {
        self.primitives.memory()
    }

    fn clear_ptes(&self, run: PteRun, full: bool) -> RunChanges {
        // Clearing never needs the barriers.
        self.run_of_stores(
            |stores| match stores.cells(&run) {
                Some(cells) => runs::cells::clear::<Aarch64>(cells),
                None => runs::clear_ptes_each::<Aarch64, _>(stores, run, full),
            },
            |_| false,
        )
        .unwrap_or_else(|| runs::clear_ptes_each::<Aarch64, _>(self, run, full))
    }

    fn protect_ptes(&self, run: PteRun, protection: &NewProtection) -> RunChanges {
        self.run_of_stores(
            |stores| match stores.cells(&run) {
                Some(cells) => runs::cells::protect::<Aarch64>(cells, protection),
                None => runs::protect_ptes_each::<Aarch64, _>(stores, run, protection),
            },
            |changes| changes.count() > 0 && Self::run_needs_barriers(&run),
        )
        .unwrap_or_else(|| runs::protect_ptes_each::<Aarch64, _>(self, run, protection))
    }

    fn copy_ptes(&self, parent: PteRun, child: PteRun, kind: CopyKind) -> RunChanges {
        self.run_of_stores(
            |stores| match (stores.cells(&parent), stores.cells(&child)) {
                (Some(from), Some(to)) => {
                    runs::cells::copy::<Aarch64>(from, to, parent.level, kind)
                }
                _ => runs::copy_ptes_each::<Aarch64, _>(stores, parent, child, kind),
            },
            |changes| {
                (changes.count() > 0 && Self::run_needs_barriers(&parent))
                    || (changes.copied > 0 && Self::run_needs_barriers(&child))
            },
        )
        .unwrap_or_else(|| runs::copy_ptes_each::<Aarch64, _>(self, parent, child, kind))
    }

    fn move_ptes(&self, from: PteRun, to: PteRun) -> RunChanges {
        self.run_of_stores(
            |stores| match (stores.cells(&from), stores.cells(&to)) {
                (Some(source), Some(target)) => runs::cells::moves::<Aarch64>(source, target),
                _ => runs::move_ptes_each::<Aarch64, _>(stores, from, to),
            },
            |changes| changes.count() > 0 && Self::run_needs_barriers(&to),
        )
        .unwrap_or_else(|| runs::move_ptes_each::<Aarch64, _>(self, from, to))
    }
}

#[cfg(all(feature = "testing", feature = "alloc"))]
pub use host::HostArm64;

#[cfg(all(feature = "testing", feature = "alloc"))]
mod host {
    use core::cell::Cell;

    use super::{Arm64Primitives, Dsb};
    use crate::addr::{PhysAddr, SpaceId, VirtAddr};
    use crate::backend::machine::{BackendBug, CpuPrimitives};
    use crate::cpu::{Cpu, CpuId};
    use crate::mode::testing::TestEnv;
    use crate::pgtable::memory::PageTableMemory;

    /// One arm64 CPU over host page-table memory `M`, for host tests and
    /// benchmarks of the AArch64 format: entries are stored to `M` (and
    /// runs of them lent from it), barriers and TLB invalidations only
    /// counted, one task's pending-barrier flag kept, backend bugs
    /// counted.
    #[derive(Debug)]
    pub struct HostArm64<M> {
        memory: M,
        pending: Cell<bool>,
        /// The CPU's number, interrupt flag and preemption count.
        cpu: TestEnv,
        barriers: Cell<u64>,
        invalidations: Cell<u64>,
        bugs: Cell<u64>,
    }

    impl<M: PageTableMemory> HostArm64<M> {
        /// A CPU storing entries to `memory`.
        pub fn new(memory: M) -> Self {
            HostArm64 {
                memory,
                pending: Cell::new(false),
                cpu: TestEnv::default(),
                barriers: Cell::new(0),
                invalidations: Cell::new(0),
                bugs: Cell::new(0),
            }
        }

        /// `dsb` and `isb` issued so far.
        pub fn barriers(&self) -> u64 {
            self.barriers.get()
        }

        /// `tlbi` operations issued so far.
        pub fn invalidations(&self) -> u64 {
            self.invalidations.get()
        }

        /// Backend bugs reported so far.
        pub fn bugs(&self) -> u64 {
            self.bugs.get()
        }
    }

    /// CPU 0, never in interrupt context, its preemption count checked:
    /// the test environment's.
    impl<M: PageTableMemory> Cpu for HostArm64<M> {
        fn cpu_id(&self) -> CpuId {
            self.cpu.cpu_id()
        }
        fn in_interrupt(&self) -> bool {
            self.cpu.in_interrupt()
        }
        fn preempt_disable(&self) {
            self.cpu.preempt_disable()
        }
        fn preempt_enable(&self) {
            self.cpu.preempt_enable()
        }
    }

    impl<M: PageTableMemory> CpuPrimitives for HostArm64<M> {
        type Memory = M;
        #[inline]
        fn memory(&self) -> &M {
            &self.memory
        }
        #[inline]
        fn read_pte(&self, entry: PhysAddr) -> u64 {
            self.memory.read(entry)
        }
        fn report(&self, _: BackendBug) {
            self.bugs.set(self.bugs.get() + 1);
        }
    }

    impl<M: PageTableMemory> Arm64Primitives for HostArm64<M> {
        #[inline]
        fn write_pte(&self, entry: PhysAddr, value: u64) {
            self.memory.write(entry, value);
        }
        fn dsb(&self, _: Dsb) {
            self.barriers.set(self.barriers.get() + 1);
        }
        fn isb(&self) {
            self.barriers.set(self.barriers.get() + 1);
        }
        fn tlbi_va(&self, _: SpaceId, _: VirtAddr, _: bool) {
            self.invalidations.set(self.invalidations.get() + 1);
        }
        fn tlbi_asid(&self, _: SpaceId) {
            self.invalidations.set(self.invalidations.get() + 1);
        }
        fn task_barriers_pending(&self) -> bool {
            self.pending.get()
        }
        fn set_task_barriers_pending(&self, pending: bool) {
            self.pending.set(pending);
        }
        #[inline]
        fn run_cells(&self, first: PhysAddr, count: usize) -> Option<&[Cell<u64>]> {
            self.memory.run_cells(first, count)
        }
    }
}
