//! x86-64 Xen PV guest: page tables are read-only to the guest, so every
//! entry write is a hypercall; in lazy MMU mode writes and TLB operations
//! are queued as multicall entries and issued 32 at a time.
//!
//! Modelled on arch/x86/xen/mmu_pv.c (`xen_set_pte`, `xen_flush_tlb_multi`),
//! arch/x86/xen/multicalls.c (`MC_BATCH`, `xen_mc_flush`) and
//! arch/x86/xen/enlighten_pv.c (`xen_start_context_switch`,
//! `xen_end_context_switch`, `enter_lazy`/`leave_lazy`).

use core::cell::RefCell;

use super::machine::{Batch, CpuPrimitives, LazyFlag, PerCpu};
use super::{Backend, ContextSwitch, EntryUpdate, FlushScope, PteAccess, TlbFlush};
use crate::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use crate::cpu::CpuMask;
use crate::mode::{ArchHooks, LazyState};
use crate::pgtable::format::X86_64;

/// Entries in one per-CPU multicall buffer: `#define MC_BATCH 32` in
/// arch/x86/xen/multicalls.c. (Linux also bounds the argument space at
/// `MC_ARGS = MC_BATCH * 16` bytes, i.e. 32 16-byte `mmu_update` requests,
/// so the bound on queued writes is 32 either way.)
pub const MC_BATCH: usize = 32;

/// One `mmu_update` request: store `value` at the machine address `entry`
/// (`MMU_NORMAL_PT_UPDATE`), validated by the hypervisor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MmuUpdate {
    /// Machine address of the entry.
    pub entry: PhysAddr,
    /// New value.
    pub value: u64,
}

/// One `mmuext_op` TLB operation (xen/include/public/xen.h `MMUEXT_*`).
///
/// The hypervisor applies INVLPG and TLB_FLUSH to the address space loaded
/// on the target CPUs; `space` names it for the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmuExtOp {
    /// `MMUEXT_INVLPG_LOCAL`: one page on this CPU.
    InvlpgLocal {
        /// Address space.
        space: SpaceId,
        /// The page.
        va: VirtAddr,
    },
    /// `MMUEXT_INVLPG_MULTI`: one page on every CPU of the mask.
    InvlpgMulti {
        /// Address space.
        space: SpaceId,
        /// The page.
        va: VirtAddr,
        /// The CPUs.
        cpus: CpuMask,
    },
    /// `MMUEXT_TLB_FLUSH_LOCAL`: every non-global translation on this CPU.
    TlbFlushLocal {
        /// Address space.
        space: SpaceId,
    },
    /// `MMUEXT_TLB_FLUSH_MULTI`: every non-global translation on every CPU
    /// of the mask.
    TlbFlushMulti {
        /// Address space.
        space: SpaceId,
        /// The CPUs.
        cpus: CpuMask,
    },
}

/// One entry of a multicall batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MulticallEntry {
    /// `__HYPERVISOR_mmu_update` with one request.
    MmuUpdate(MmuUpdate),
    /// `__HYPERVISOR_mmuext_op` with one TLB operation.
    MmuExt(MmuExtOp),
}

impl Default for MulticallEntry {
    fn default() -> Self {
        MulticallEntry::MmuUpdate(MmuUpdate::default())
    }
}

/// The hypervisor interface of a Xen PV guest.
///
/// What to count and charge (see [`super::machine::Primitive`]):
///
/// | method | counts |
/// |---|---|
/// | [`mmu_update`](XenPrimitives::mmu_update) | 1 `hypercall` + 1 `pte_write` |
/// | [`mmuext_op`](XenPrimitives::mmuext_op) | 1 `hypercall` + the op's work |
/// | [`multicall`](XenPrimitives::multicall) | 1 `hypercall` + 1 `multicall_entry` per entry + each entry's work |
///
/// An op's work: INVLPG = 1 `invlpg` per target CPU, TLB_FLUSH = 1
/// `full_flush` per target CPU, plus 1 `ipi` per remote target CPU; an
/// `mmu_update` entry = 1 `pte_write`. A multicall applies its entries in
/// order, and each update becomes visible to [`CpuPrimitives::read_pte`]
/// only when the call is made.
pub trait XenPrimitives: CpuPrimitives {
    /// `HYPERVISOR_mmu_update` with one request: the entry is written now.
    fn mmu_update(&self, update: MmuUpdate);

    /// `HYPERVISOR_mmuext_op` with one operation, done now.
    fn mmuext_op(&self, op: MmuExtOp);

    /// `HYPERVISOR_multicall`: every entry, in order, in one trap.
    fn multicall(&self, entries: &[MulticallEntry]);
}

impl<P: XenPrimitives + ?Sized> XenPrimitives for &P {
    fn mmu_update(&self, update: MmuUpdate) {
        (**self).mmu_update(update)
    }
    fn mmuext_op(&self, op: MmuExtOp) {
        (**self).mmuext_op(op)
    }
    fn multicall(&self, entries: &[MulticallEntry]) {
        (**self).multicall(entries)
    }
}

#[derive(Debug, Default)]
struct XenCpu {
    /// `xen_lazy_mode == XEN_LAZY_MMU` on this CPU.
    lazy: LazyFlag,
    /// The multicall buffer (`struct mc_buffer`).
    buffer: RefCell<Batch<MulticallEntry, MC_BATCH>>,
}

/// The Xen PV backend (`xen-pv`).
///
/// Outside lazy MMU mode every write is one `mmu_update` hypercall and every
/// TLB operation one `mmuext_op`. Inside it both are queued in the CPU's
/// multicall buffer, which is issued when a 33rd entry arrives, on `flush`
/// and on `leave`. A queued write is invisible to [`PteAccess::read_entry`]
/// (reads come from memory) until then: code that must read back pauses.
#[derive(Debug)]
pub struct XenPv<P> {
    primitives: P,
    cpus: PerCpu<XenCpu>,
}

impl<P: XenPrimitives> XenPv<P> {
    /// The backend over a hypervisor interface.
    pub fn new(primitives: P) -> Self {
        Self {
            primitives,
            cpus: PerCpu::default(),
        }
    }

    /// The hypervisor interface.
    pub fn primitives(&self) -> &P {
        &self.primitives
    }

    fn cpu(&self) -> &XenCpu {
        self.cpus.current(&self.primitives)
    }

    /// Whether this CPU batches right now: in lazy MMU mode and not in
    /// interrupt context (`xen_get_lazy_mode()` answers `XEN_LAZY_NONE` in
    /// interrupt context).
    fn batching(&self) -> bool {
        !self.primitives.in_interrupt() && self.cpu().lazy.get()
    }

    /// Number of entries queued on the calling CPU.
    pub fn queued(&self) -> usize {
        self.cpu().buffer.borrow().len()
    }

    /// Issues the calling CPU's multicall buffer (`xen_mc_flush`).
    fn issue(&self) {
        let batch = self.cpu().buffer.borrow_mut().take();
        if !batch.is_empty() {
            self.primitives.multicall(batch.as_slice());
        }
    }

    /// Submits one entry (`xen_mc_entry` + `xen_mc_issue`): queued while
    /// batching, where a full buffer is issued first (so the 33rd entry
    /// forces a flush of the 32 before it); otherwise issued now.
    ///
    /// Every primitive call may run an interrupt handler or a context
    /// switch (even a migration), so the CPU and its mode are looked up
    /// again after each one.
    fn submit(&self, entry: MulticallEntry) {
        loop {
            if !self.batching() {
                // An interrupt handler's update must not overtake what the
                // interrupted section queued: Linux's `xen_mc_issue` outside
                // lazy mode issues the whole buffer.
                self.issue();
                match entry {
                    MulticallEntry::MmuUpdate(update) => self.primitives.mmu_update(update),
                    MulticallEntry::MmuExt(op) => self.primitives.mmuext_op(op),
                }
                return;
            }
            if self.cpu().buffer.borrow_mut().push(entry).is_ok() {
                return;
            }
            self.issue();
        }
    }

    /// Whether the calling CPU's buffer holds a write to `entry`.
    fn has_queued_write(&self, entry: PhysAddr) -> bool {
        self.cpu()
            .buffer
            .borrow()
            .as_slice()
            .iter()
            .any(|e| matches!(e, MulticallEntry::MmuUpdate(update) if update.entry == entry))
    }

    fn tlb_op(&self, op: MmuExtOp) {
        self.submit(MulticallEntry::MmuExt(op));
    }
}

impl<P: XenPrimitives> ArchHooks for XenPv<P> {
    fn enter(&self) {
        self.cpu().lazy.enter(&self.primitives);
    }

    fn leave(&self) {
        self.issue();
        self.cpu().lazy.leave(&self.primitives);
    }

    fn flush(&self) {
        if self.cpu().lazy.get() {
            self.issue();
        }
    }
}

impl<P: XenPrimitives> PteAccess for XenPv<P> {
    fn read_entry(&self, entry: PhysAddr) -> u64 {
        self.primitives.read_pte(entry)
    }

    fn write_entry(&self, update: EntryUpdate) {
        self.submit(MulticallEntry::MmuUpdate(MmuUpdate {
            entry: update.entry,
            value: update.value,
        }));
    }

    /// `xen_ptep_modify_prot_start`: a plain read, nothing written. The
    /// guest's own queued write to the entry, if any, is the value to
    /// start from.
    fn modify_prot_start(&self, update: EntryUpdate) -> u64 {
        match self.queued_value(update.entry) {
            Some(value) => value,
            None => self.primitives.read_pte(update.entry),
        }
    }

    /// `xen_ptep_modify_prot_commit`: an `mmu_update` request
    /// (`MMU_PT_UPDATE_PRESERVE_AD`, so accessed and dirty bits the
    /// hardware set since the start survive), queued in lazy MMU mode.
    fn modify_prot_commit(&self, update: EntryUpdate) {
        self.write_entry(update);
    }

    /// The guest's atomic exchange on a read-only page traps and is
    /// emulated by the hypervisor: one hypercall, never queued. A write to
    /// the same entry still queued is issued first so the two stay in
    /// order.
    fn get_and_clear(&self, update: EntryUpdate) -> u64 {
        if self.has_queued_write(update.entry) {
            self.issue();
        }
        let old = self.primitives.read_pte(update.entry);
        self.primitives.mmu_update(MmuUpdate {
            entry: update.entry,
            value: 0,
        });
        old
    }
}

impl<P: XenPrimitives> XenPv<P> {
    /// The last write to `entry` queued on the calling CPU and not yet
    /// issued, if any: a read of `entry` now returns a stale value (the
    /// KASAN read-back hazard, DESIGN.md §6 item 6).
    pub fn queued_value(&self, entry: PhysAddr) -> Option<u64> {
        self.cpu()
            .buffer
            .borrow()
            .as_slice()
            .iter()
            .rev()
            .find_map(|e| match e {
                MulticallEntry::MmuUpdate(update) if update.entry == entry => Some(update.value),
                _ => None,
            })
    }
}

impl<P: XenPrimitives> TlbFlush for XenPv<P> {
    /// As arch/x86/mm/tlb.c over Xen's `pv_ops.mmu`: the local CPU gets one
    /// `MMUEXT_INVLPG_LOCAL` per page up to the ceiling, else one
    /// `MMUEXT_TLB_FLUSH_LOCAL`; other CPUs get one `MMUEXT_INVLPG_MULTI`
    /// for a single page and one `MMUEXT_TLB_FLUSH_MULTI` for anything
    /// larger (`xen_flush_tlb_multi`, arch/x86/xen/mmu_pv.c).
    fn flush_range(
        &self,
        space: SpaceId,
        start: VirtAddr,
        end: VirtAddr,
        stride: PageSize,
        scope: FlushScope,
    ) {
        let pages = end.0.saturating_sub(start.0).div_ceil(stride.bytes());
        if pages == 0 {
            return;
        }
        match scope {
            FlushScope::Local => {
                // The ops act on whichever CPU issues them: the task stays
                // on one CPU for the whole range, or a migration half-way
                // would invalidate the rest where nothing was cached and
                // leave it in the CPU it came from (Linux's local flushes
                // run under get_cpu() or with interrupts off,
                // arch/x86/mm/tlb.c).
                let _on_this_cpu = self.primitives.preempt_guard();
                if pages as usize > self.single_page_ceiling() {
                    self.tlb_op(MmuExtOp::TlbFlushLocal { space });
                } else {
                    for page in 0..pages {
                        let va = start.add(page * stride.bytes());
                        self.tlb_op(MmuExtOp::InvlpgLocal { space, va });
                    }
                }
            }
            FlushScope::Cpus(cpus) => {
                if pages == 1 {
                    self.tlb_op(MmuExtOp::InvlpgMulti {
                        space,
                        va: start,
                        cpus,
                    });
                } else {
                    self.tlb_op(MmuExtOp::TlbFlushMulti { space, cpus });
                }
            }
        }
    }

    fn flush_all(&self, space: SpaceId, scope: FlushScope) {
        match scope {
            FlushScope::Local => self.tlb_op(MmuExtOp::TlbFlushLocal { space }),
            FlushScope::Cpus(cpus) => self.tlb_op(MmuExtOp::TlbFlushMulti { space, cpus }),
        }
    }
}

impl<P: XenPrimitives> ContextSwitch for XenPv<P> {
    /// `xen_start_context_switch`: a CPU in lazy MMU mode issues its buffer
    /// and leaves, so nothing queued by `prev` is applied under the next
    /// task or lost.
    fn switch_out(&self, _prev: LazyState) {
        if self.cpu().lazy.get() {
            self.leave();
        }
    }

    /// `xen_end_context_switch`: re-enter when the next task is in a
    /// section.
    fn switch_in(&self, next: LazyState) {
        if next.is_active() {
            self.enter();
        }
    }
}

/// Xen PV guests run on x86-64 4-level tables (PV does not support LA57).
impl<P: XenPrimitives> Backend for XenPv<P> {
    type Format = X86_64;
    type Memory = P::Memory;
    fn memory(&self) -> &P::Memory {
        self.primitives.memory()
    }
}
