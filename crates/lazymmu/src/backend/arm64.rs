//! arm64: after a valid kernel entry is written the table walker may not
//! see it until a `dsb ishst`, and the CPU may keep using a stale "invalid"
//! result until an `isb`. Outside lazy MMU mode both barriers follow every
//! such write; inside it they become a pending flag in the task, emitted
//! once at flush or leave.
//!
//! Modelled on arch/arm64/include/asm/pgtable.h (`__set_pte_complete`,
//! `queue_pte_barriers`, `emit_pte_barriers`, `arch_flush_lazy_mmu_mode`,
//! the `TIF_LAZY_MMU_PENDING` thread flag, Linux 6.16) and
//! arch/arm64/include/asm/tlbflush.h (`__flush_tlb_range`, `MAX_DVM_OPS`).

use super::machine::{CpuPrimitives, LazyFlag, PerCpu};
use super::{Backend, ContextSwitch, EntryUpdate, FlushScope, PteAccess, TlbFlush};
use crate::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use crate::mode::{ArchHooks, LazyState};
use crate::pgtable::format::Aarch64;

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

/// Number of single-page `tlbi` above which a range is flushed by ASID:
/// `MAX_DVM_OPS` = `PTRS_PER_PTE` (512 with 4K pages),
/// arch/arm64/include/asm/tlbflush.h.
pub const MAX_DVM_OPS: usize = 512;

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

    /// The current task's `TIF_LAZY_MMU_PENDING` flag: barriers are owed
    /// for entries it wrote in lazy MMU mode. Kept with the task, so it
    /// follows the task across context switches and migration.
    fn task_barriers_pending(&self) -> bool;

    /// Sets or clears the current task's pending flag.
    fn set_task_barriers_pending(&self, pending: bool);
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
    fn task_barriers_pending(&self) -> bool {
        (**self).task_barriers_pending()
    }
    fn set_task_barriers_pending(&self, pending: bool) {
        (**self).set_task_barriers_pending(pending)
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

    /// `queue_pte_barriers`.
    fn queue_barriers(&self) {
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

    /// `__ptep_get_and_clear`: an atomic exchange with an invalid value;
    /// clearing never needs the barriers (the TLB flush that follows has
    /// its own).
    fn get_and_clear(&self, update: EntryUpdate) -> u64 {
        let old = self.primitives.read_pte(update.entry);
        self.primitives.write_pte(update.entry, 0);
        old
    }
}

impl<P: Arm64Primitives> TlbFlush for Arm64<P> {
    /// `__flush_tlb_range`: `dsb ishst` so the walker sees the cleared
    /// entries, one `tlbi` per page (or one by ASID above
    /// [`MAX_DVM_OPS`]), then `dsb ish`. The `is` forms broadcast, so the
    /// scope does not change the instructions.
    fn flush_range(
        &self,
        space: SpaceId,
        start: VirtAddr,
        end: VirtAddr,
        stride: PageSize,
        _scope: FlushScope,
    ) {
        let pages = end.0.saturating_sub(start.0).div_ceil(stride.bytes());
        if pages == 0 {
            return;
        }
        self.primitives.dsb(Dsb::IshSt);
        if pages as usize > self.single_page_ceiling() {
            self.primitives.tlbi_asid(space);
        } else {
            let last_level = stride == PageSize::Size4K;
            for page in 0..pages {
                self.primitives
                    .tlbi_va(space, start.add(page * stride.bytes()), last_level);
            }
        }
        self.primitives.dsb(Dsb::Ish);
    }

    fn flush_all(&self, space: SpaceId, _scope: FlushScope) {
        self.primitives.dsb(Dsb::IshSt);
        self.primitives.tlbi_asid(space);
        self.primitives.dsb(Dsb::Ish);
    }

    fn single_page_ceiling(&self) -> usize {
        MAX_DVM_OPS
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

impl<P: Arm64Primitives> Backend for Arm64<P> {
    type Format = Aarch64;
}
