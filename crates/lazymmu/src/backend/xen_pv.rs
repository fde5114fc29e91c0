//! x86-64 Xen PV guest: page tables are read-only to the guest, so every
//! entry write is a hypercall (or a native atomic the hypervisor traps and
//! emulates); in lazy MMU mode writes and TLB operations are queued in a
//! multicall buffer, consecutive writes merged into one `mmu_update`.
//!
//! Modelled on arch/x86/xen/mmu_pv.c (`xen_set_pte`, `xen_batched_set_pte`,
//! `xen_extend_mmu_update`, `xen_ptep_modify_prot_commit`,
//! `xen_flush_tlb_multi`, `xen_dup_mmap`, `xen_exit_mmap`,
//! `xen_pgd_pin`/`xen_pgd_unpin`), arch/x86/xen/multicalls.c (`MC_BATCH`,
//! `MC_ARGS`, `__xen_mc_entry`, `xen_mc_extend_args`, `xen_mc_flush`) and
//! arch/x86/xen/enlighten_pv.c (`xen_start_context_switch`,
//! `xen_end_context_switch`, `enter_lazy`/`leave_lazy`).

use core::cell::RefCell;

use super::machine::{Batch, CpuPrimitives, LazyFlag, PerCpu};
use super::{Backend, ContextSwitch, EntryUpdate, FlushScope, PteAccess, TlbFlush};
use crate::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use crate::cpu::{CpuId, CpuMask};
use crate::mode::{ArchHooks, LazyState};
use crate::pgtable::format::X86_64;

/// Entries in one per-CPU multicall buffer: `#define MC_BATCH 32` in
/// arch/x86/xen/multicalls.c.
pub const MC_BATCH: usize = 32;

/// Bytes of argument space in one per-CPU multicall buffer: `#define MC_ARGS
/// (MC_BATCH * 16)`, arch/x86/xen/multicalls.c. An entry's arguments must
/// leave the index strictly below it (`__xen_mc_entry` and
/// `xen_mc_extend_args` flush or refuse when `argidx + size >= MC_ARGS`).
pub const MC_ARGS: usize = MC_BATCH * 16;

/// Bytes one `mmu_update` request takes (`struct mmu_update`: two 64-bit
/// words, xen/include/public/xen.h).
pub const MMU_UPDATE_BYTES: usize = 16;

/// Bytes of one `mmuext_op` (`struct mmuext_op`: a command word and two
/// 64-bit arguments, xen/include/public/xen.h).
pub const MMUEXT_OP_BYTES: usize = 24;

/// Bytes of the arguments of a multi-CPU TLB operation
/// (`xen_flush_tlb_multi`: the `mmuext_op` and a CPU bitmap, here of
/// [`MAX_CPUS`](crate::cpu::MAX_CPUS) bits).
pub const MMUEXT_MULTI_BYTES: usize = MMUEXT_OP_BYTES + crate::cpu::MAX_CPUS / 8;

/// `mmu_update` requests one multicall entry holds at most: requests are
/// merged into the previous `mmu_update` entry (`xen_extend_mmu_update`)
/// while `argidx + 16 < MC_ARGS`, so 31 fit in an empty buffer.
pub const MMU_UPDATES_PER_ENTRY: usize = (MC_ARGS - 1) / MMU_UPDATE_BYTES;

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
        cpus: VcpuMask,
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
        cpus: VcpuMask,
    },
}

/// The vCPUs a multi-CPU MMUEXT op reaches: Xen's `vcpumask` bitmap, one
/// word, as the guest's vCPUs are below
/// [`MAX_BACKEND_CPUS`](super::machine::MAX_BACKEND_CPUS) (the backend's
/// per-CPU buffers stop there). A word keeps a multicall buffer of 32 ops
/// small.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuMask(u64);

impl VcpuMask {
    /// The bitmap of `cpus`.
    ///
    /// # Panics
    /// If `cpus` names a CPU at or beyond `MAX_BACKEND_CPUS`: the
    /// primitives reported a CPU the backend was not built for.
    pub fn new(cpus: CpuMask) -> Self {
        VcpuMask(
            cpus.to_bits()
                .expect("a vCPU mask names CPUs below MAX_BACKEND_CPUS only"),
        )
    }

    /// The vCPUs.
    pub const fn cpus(self) -> CpuMask {
        CpuMask::from_bits(self.0)
    }
}

impl MmuExtOp {
    /// Bytes of argument space the operation takes in the buffer.
    pub const fn arg_bytes(&self) -> usize {
        match self {
            MmuExtOp::InvlpgLocal { .. } | MmuExtOp::TlbFlushLocal { .. } => MMUEXT_OP_BYTES,
            MmuExtOp::InvlpgMulti { .. } | MmuExtOp::TlbFlushMulti { .. } => MMUEXT_MULTI_BYTES,
        }
    }
}

/// One entry of a multicall batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MulticallEntry {
    /// `__HYPERVISOR_mmu_update` with `count` requests, the requests
    /// `first..first + count` of the batch.
    MmuUpdate {
        /// Index of its first request.
        first: u8,
        /// Number of requests.
        count: u8,
    },
    /// `__HYPERVISOR_mmuext_op` with one TLB operation.
    MmuExt(MmuExtOp),
}

impl Default for MulticallEntry {
    fn default() -> Self {
        MulticallEntry::MmuUpdate { first: 0, count: 0 }
    }
}

impl MulticallEntry {
    /// The requests of an `mmu_update` entry among `requests` (empty for
    /// an `mmuext_op`).
    pub fn requests<'r>(&self, requests: &'r [MmuUpdate]) -> &'r [MmuUpdate] {
        match *self {
            MulticallEntry::MmuUpdate { first, count } => {
                &requests[first as usize..first as usize + count as usize]
            }
            MulticallEntry::MmuExt(_) => &[],
        }
    }
}

/// The hypervisor interface of a Xen PV guest.
///
/// What to count and charge (see [`super::machine::Primitive`]):
///
/// | method | counts |
/// |---|---|
/// | [`mmu_update`](XenPrimitives::mmu_update) | 1 `hypercall` + 1 `mmu_update` and 1 `pte_write` per request |
/// | [`mmuext_op`](XenPrimitives::mmuext_op) | 1 `hypercall` + the op's work |
/// | [`multicall`](XenPrimitives::multicall) | 1 `hypercall` + 1 `multicall_entry` per entry + each entry's work |
/// | [`native_update`](XenPrimitives::native_update) | 1 `emulated_write` + 1 `mmu_update` + 1 `pte_write` on a pinned table, 1 `pte_write` on an unpinned one |
/// | [`pin_tables`](XenPrimitives::pin_tables), [`unpin_tables`](XenPrimitives::unpin_tables) | a multicall of one `update_va_mapping` per page-table page and the (un)pin op |
///
/// An op's work: INVLPG = 1 `invlpg` per target CPU, TLB_FLUSH = 1
/// `full_flush` per target CPU, plus 1 `ipi` when it reaches a remote CPU;
/// an `mmu_update` request = 1 `mmu_update` + 1 `pte_write`. A multicall
/// applies its entries in order, and each update becomes visible to
/// [`CpuPrimitives::read_pte`] only when the call is made.
pub trait XenPrimitives: CpuPrimitives {
    /// `HYPERVISOR_mmu_update` with `requests` (one or more): the entries
    /// are written now.
    fn mmu_update(&self, requests: &[MmuUpdate]);

    /// `HYPERVISOR_mmuext_op` with one operation, done now.
    fn mmuext_op(&self, op: MmuExtOp);

    /// `HYPERVISOR_multicall` of two or more `entries`, in order, in one
    /// trap; an `mmu_update` entry names its requests in `requests`.
    fn multicall(&self, entries: &[MulticallEntry], requests: &[MmuUpdate]);

    /// A native atomic update of the entry at `entry` to `value`
    /// (`native_ptep_get_and_clear`'s `xchg`, `ptep_set_wrprotect`'s `lock
    /// btr`): on a pinned (read-only) table the hypervisor traps it and
    /// emulates it; on an unpinned one it is a plain store. Returns the old
    /// value.
    fn native_update(&self, entry: PhysAddr, value: u64) -> u64;

    /// Whether the page-table page holding `entry` is pinned
    /// (`xen_page_pinned`): read-only to the guest.
    fn table_pinned(&self, entry: PhysAddr) -> bool;

    /// `xen_pgd_pin`: makes every page-table page of `space` read-only
    /// (`update_va_mapping` per page) and pins the tree
    /// (`MMUEXT_PIN_L4_TABLE`), in multicalls.
    fn pin_tables(&self, space: SpaceId);

    /// `xen_pgd_unpin`: unpins the tree (`MMUEXT_UNPIN_TABLE`) and makes
    /// every page-table page writable again, in multicalls; the guest's
    /// stores to them are then plain stores.
    fn unpin_tables(&self, space: SpaceId);
}

impl<P: XenPrimitives + ?Sized> XenPrimitives for &P {
    fn mmu_update(&self, requests: &[MmuUpdate]) {
        (**self).mmu_update(requests)
    }
    fn mmuext_op(&self, op: MmuExtOp) {
        (**self).mmuext_op(op)
    }
    fn multicall(&self, entries: &[MulticallEntry], requests: &[MmuUpdate]) {
        (**self).multicall(entries, requests)
    }
    fn native_update(&self, entry: PhysAddr, value: u64) -> u64 {
        (**self).native_update(entry, value)
    }
    fn table_pinned(&self, entry: PhysAddr) -> bool {
        (**self).table_pinned(entry)
    }
    fn pin_tables(&self, space: SpaceId) {
        (**self).pin_tables(space)
    }
    fn unpin_tables(&self, space: SpaceId) {
        (**self).unpin_tables(space)
    }
}

/// The per-CPU multicall buffer (`struct mc_buffer`): entries, the
/// `mmu_update` requests they carry, and the argument bytes used.
#[derive(Clone, Copy, Debug, Default)]
struct McBuffer {
    entries: Batch<MulticallEntry, MC_BATCH>,
    requests: Batch<MmuUpdate, MMU_UPDATES_PER_ENTRY>,
    argidx: usize,
}

impl McBuffer {
    /// Requests and operations queued.
    fn items(&self) -> usize {
        self.requests.len()
            + self
                .entries
                .as_slice()
                .iter()
                .filter(|e| matches!(e, MulticallEntry::MmuExt(_)))
                .count()
    }

    /// `xen_extend_mmu_update`: merges `update` into the last entry when it
    /// is an `mmu_update` and the arguments fit (`xen_mc_extend_args`),
    /// else opens a new entry (`__xen_mc_entry`). Gives the request back
    /// when the buffer must be flushed first.
    fn extend_mmu_update(&mut self, update: MmuUpdate) -> Result<(), MmuUpdate> {
        let fits = self.argidx + MMU_UPDATE_BYTES < MC_ARGS;
        if let Some(MulticallEntry::MmuUpdate { count, .. }) =
            self.entries.as_mut_slice().last_mut()
        {
            if fits && self.requests.push(update).is_ok() {
                *count += 1;
                self.argidx += MMU_UPDATE_BYTES;
                return Ok(());
            }
        }
        if self.entries.is_full() || !fits {
            return Err(update);
        }
        let first = self.requests.len() as u8;
        self.requests.push(update)?;
        self.entries
            .push(MulticallEntry::MmuUpdate { first, count: 1 })
            .map_err(|_| update)?;
        self.argidx += MMU_UPDATE_BYTES;
        Ok(())
    }

    /// `xen_mc_entry` for one `mmuext_op`. Gives it back when the buffer
    /// must be flushed first.
    fn push_op(&mut self, op: MmuExtOp) -> Result<(), MmuExtOp> {
        let size = op.arg_bytes();
        if self.entries.is_full() || self.argidx + size >= MC_ARGS {
            return Err(op);
        }
        self.entries
            .push(MulticallEntry::MmuExt(op))
            .map_err(|_| op)?;
        self.argidx += size;
        Ok(())
    }

    fn take(&mut self) -> McBuffer {
        core::mem::take(self)
    }
}

#[derive(Debug, Default)]
struct XenCpu {
    /// `xen_lazy_mode == XEN_LAZY_MMU` on this CPU.
    lazy: LazyFlag,
    /// The multicall buffer (`struct mc_buffer`).
    buffer: RefCell<McBuffer>,
}

/// What one submission queues.
#[derive(Clone, Copy, Debug)]
enum Submission {
    Update(MmuUpdate),
    Op(MmuExtOp),
}

/// The Xen PV backend (`xen-pv`).
///
/// Outside lazy MMU mode every write is one `mmu_update` hypercall and every
/// TLB operation one `mmuext_op`. Inside it both are queued in the CPU's
/// multicall buffer, consecutive writes merged into one `mmu_update` entry
/// (`xen_extend_mmu_update`) while the arguments fit; the buffer is issued
/// when an entry would not fit (32 entries or [`MC_ARGS`] bytes), on
/// `flush` and on `leave`, a buffer of one entry as that call alone
/// (`xen_mc_flush`'s singleton case). A queued write is invisible to
/// [`PteAccess::read_entry`] (reads come from memory) until then: code
/// that must read back pauses. Clears and write-protects are the native
/// atomics Linux executes (`native_ptep_get_and_clear`,
/// `ptep_set_wrprotect`), trapped and emulated by the hypervisor on a
/// pinned table, plain stores on an unpinned one (after
/// [`Backend::exit_mmap`]).
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

    /// Requests and operations queued on the calling CPU.
    pub fn queued(&self) -> usize {
        self.cpu().buffer.borrow().items()
    }

    /// Multicall entries queued on the calling CPU.
    pub fn queued_entries(&self) -> usize {
        self.cpu().buffer.borrow().entries.len()
    }

    /// Issues the calling CPU's multicall buffer (`xen_mc_flush`): one
    /// entry as that hypercall alone, more as one multicall. What it
    /// issues was queued before, by the task that ran then.
    fn issue(&self) {
        let buffer = self.cpu().buffer.borrow_mut().take();
        let entries = buffer.entries.as_slice();
        if entries.is_empty() {
            return;
        }
        self.primitives.deferred_begin();
        let requests = buffer.requests.as_slice();
        match entries {
            [single] => match *single {
                MulticallEntry::MmuUpdate { .. } => {
                    self.primitives.mmu_update(single.requests(requests))
                }
                MulticallEntry::MmuExt(op) => self.primitives.mmuext_op(op),
            },
            _ => self.primitives.multicall(entries, requests),
        }
        self.primitives.deferred_end();
    }

    /// Submits one request or operation (`xen_mc_batch` … `xen_mc_issue`):
    /// queued while batching, where a buffer it does not fit in is issued
    /// first; otherwise issued now.
    ///
    /// The CPU's mode and buffer are used with preemption disabled, as
    /// `xen_mc_batch` does with interrupts off: a task that migrated
    /// between looking up its CPU and using it would read another CPU's
    /// mode and queue on a CPU that never issues its buffer.
    fn submit(&self, item: Submission) {
        let _on_this_cpu = self.primitives.preempt_guard();
        loop {
            if !self.batching() {
                match item {
                    // `__xen_set_pte` outside lazy MMU mode (an interrupt
                    // handler's, or with no section open): one
                    // `HYPERVISOR_mmu_update` of its own, past whatever
                    // the interrupted section queued — unless that holds a
                    // write to the same entry, which must go first.
                    Submission::Update(update) => {
                        if self.has_queued_write(update.entry) {
                            self.issue();
                        }
                        self.primitives.mmu_update(&[update]);
                        return;
                    }
                    // A TLB operation (`xen_mc_entry` … `xen_mc_issue`)
                    // joins the buffer, and outside lazy MMU mode the
                    // whole buffer is issued with it; alone in it, it is
                    // that hypercall (`xen_mc_flush`'s singleton case) and
                    // the caller's own work.
                    Submission::Op(op) => {
                        if self.cpu().buffer.borrow().entries.is_empty() {
                            self.primitives.mmuext_op(op);
                            return;
                        }
                        let queued = self.cpu().buffer.borrow_mut().push_op(op).is_ok();
                        if !queued {
                            self.issue();
                            let _ = self.cpu().buffer.borrow_mut().push_op(op);
                        }
                        self.issue();
                        return;
                    }
                }
            }
            let queued = {
                let mut buffer = self.cpu().buffer.borrow_mut();
                match item {
                    Submission::Update(update) => buffer.extend_mmu_update(update).is_ok(),
                    Submission::Op(op) => buffer.push_op(op).is_ok(),
                }
            };
            if queued {
                return;
            }
            self.issue();
        }
    }

    /// Whether the calling CPU's buffer holds a write to `entry`.
    fn has_queued_write(&self, entry: PhysAddr) -> bool {
        self.queued_value(entry).is_some()
    }

    fn tlb_op(&self, op: MmuExtOp) {
        self.submit(Submission::Op(op));
    }

    /// A native atomic update of `update`'s entry (see
    /// [`XenPrimitives::native_update`]). A write to the same entry still
    /// queued is issued first so the two stay in order.
    fn native(&self, update: &EntryUpdate, value: u64) -> u64 {
        let _on_this_cpu = self.primitives.preempt_guard();
        if self.has_queued_write(update.entry) {
            self.issue();
        }
        self.primitives.native_update(update.entry, value)
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

    /// `xen_set_pte`: an `mmu_update` request, queued in lazy MMU mode
    /// (`xen_batched_set_pte`). An upper-level entry of an unpinned table
    /// is stored directly (`xen_set_pmd`, `xen_set_pud`: "If page is not
    /// pinned, we can just update the entry directly").
    fn write_entry(&self, update: EntryUpdate) {
        if update.level > 1 && !self.primitives.table_pinned(update.entry) {
            self.native(&update, update.value);
            return;
        }
        self.submit(Submission::Update(MmuUpdate {
            entry: update.entry,
            value: update.value,
        }));
    }

    /// `xen_ptep_modify_prot_start`: a plain read, nothing written. The
    /// guest's own queued write to the entry, if any, is the value to
    /// start from.
    fn modify_prot_start(&self, update: EntryUpdate) -> u64 {
        let _on_this_cpu = self.primitives.preempt_guard();
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

    /// `native_ptep_get_and_clear`: the `xchg` on the entry, never queued
    /// (see [`XenPrimitives::native_update`]).
    fn get_and_clear(&self, update: EntryUpdate) -> u64 {
        self.native(&update, 0)
    }

    /// `ptep_set_wrprotect`: `clear_bit(_PAGE_BIT_RW)` on the entry, a
    /// native atomic, never queued.
    fn set_wrprotect(&self, update: EntryUpdate) -> u64 {
        self.native(&update, update.value)
    }
}

impl<P: XenPrimitives> XenPv<P> {
    /// The last write to `entry` queued on the calling CPU and not yet
    /// issued, if any: a read of `entry` now returns a stale value (the
    /// KASAN read-back hazard, docs/design.md §6 item 6).
    pub fn queued_value(&self, entry: PhysAddr) -> Option<u64> {
        self.cpu()
            .buffer
            .borrow()
            .requests
            .as_slice()
            .iter()
            .rev()
            .find_map(|update| (update.entry == entry).then_some(update.value))
    }
}

impl<P: XenPrimitives> TlbFlush for XenPv<P> {
    /// As arch/x86/mm/tlb.c's `flush_tlb_mm_range` over Xen's
    /// `pv_ops.mmu`: the local CPU gets one `MMUEXT_INVLPG_LOCAL` per page
    /// up to the ceiling, else one `MMUEXT_TLB_FLUSH_LOCAL`
    /// (`xen_flush_tlb_one_user`, `xen_flush_tlb`); the other CPUs of the
    /// scope get one `MMUEXT_INVLPG_MULTI` for a single page and one
    /// `MMUEXT_TLB_FLUSH_MULTI` for anything larger (`xen_flush_tlb_multi`,
    /// arch/x86/xen/mmu_pv.c). [`FlushScope::Mm`] reaches the space's
    /// `mm_cpumask`.
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
        // The ops act on whichever CPU issues them: the task stays on one
        // CPU from reading the mask to the last op (Linux's
        // flush_tlb_mm_range runs between get_cpu() and put_cpu()).
        let on_this_cpu = self.primitives.preempt_guard();
        let me = on_this_cpu.cpu_id();
        let (local, others) = self.split_scope(space, scope, me);
        if local {
            if pages as usize > self.single_page_ceiling() {
                self.tlb_op(MmuExtOp::TlbFlushLocal { space });
            } else {
                for page in 0..pages {
                    let va = start.add(page * stride.bytes());
                    self.tlb_op(MmuExtOp::InvlpgLocal { space, va });
                }
            }
        }
        if !others.is_empty() {
            if pages == 1 {
                self.tlb_op(MmuExtOp::InvlpgMulti {
                    space,
                    va: start,
                    cpus: VcpuMask::new(others),
                });
            } else {
                self.tlb_op(MmuExtOp::TlbFlushMulti {
                    space,
                    cpus: VcpuMask::new(others),
                });
            }
        }
    }

    fn flush_all(&self, space: SpaceId, scope: FlushScope) {
        let on_this_cpu = self.primitives.preempt_guard();
        let me = on_this_cpu.cpu_id();
        let (local, others) = self.split_scope(space, scope, me);
        if local {
            self.tlb_op(MmuExtOp::TlbFlushLocal { space });
        }
        if !others.is_empty() {
            self.tlb_op(MmuExtOp::TlbFlushMulti {
                space,
                cpus: VcpuMask::new(others),
            });
        }
    }
}

impl<P: XenPrimitives> XenPv<P> {
    /// Whether a flush in `scope` flushes this CPU (`me`), and which other
    /// CPUs it reaches.
    fn split_scope(&self, space: SpaceId, scope: FlushScope, me: CpuId) -> (bool, CpuMask) {
        match scope {
            FlushScope::Local => (true, CpuMask::EMPTY),
            FlushScope::Cpus(cpus) => (cpus.contains(me), cpus.without(me)),
            FlushScope::Mm { .. } => {
                let cpus = self.primitives.mm_cpumask(space);
                (
                    space == SpaceId::KERNEL || cpus.contains(me),
                    cpus.without(me),
                )
            }
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

    /// `xen_dup_mmap` → `xen_pgd_pin`: the child's tables become read-only
    /// to the guest.
    fn dup_mmap(&self, child: SpaceId) {
        self.primitives.pin_tables(child);
    }

    /// `xen_exit_mmap` → `xen_pgd_unpin`: the tables become writable, so
    /// the teardown's clears are plain stores.
    fn exit_mmap(&self, space: SpaceId) {
        self.primitives.unpin_tables(space);
    }
}
