//! The backend the kernel's page tables go through once several CPUs run
//! preemptible tasks: the library's backend (`x86-pks`) inside a wrapper
//! that adds what a multi-CPU kernel around it provides.
//!
//! - **Preemption off around every call into the backend.** The library
//!   keeps per-CPU state (which CPU is in lazy MMU mode) in cells indexed
//!   by the CPU id; a task that migrated between reading its CPU id and
//!   touching the cell would use another CPU's. Linux's hooks run with
//!   preemption off for the same reason (`arch_enter_lazy_mmu_mode` is
//!   called under `preempt_disable()` since 7.0's fix).
//! - **The per-CPU lazy MMU flag and its check.** Entering lazy MMU mode on
//!   a CPU that is already in it is reported as
//!   [`BackendBug::DoubleEnter`], leaving it when not in it as
//!   [`BackendBug::LeaveOutside`] — Xen PV's `BUG_ON`s in `enter_lazy()`
//!   and `leave_lazy()` (arch/x86/xen/enlighten_pv.c). The context-switch
//!   hooks follow Xen's: switching out, a CPU in lazy mode leaves it
//!   (`xen_start_context_switch`); switching in a task whose state says it
//!   is in a section, the CPU enters it again (`xen_end_context_switch`).
//!   With Linux 7.0's ordering (counter stored, preemption possible, then
//!   the hook), a task preempted between the two is entered by the
//!   switch-in and then again by its own hook: the check reports it.
//! - **Remote flushes of user address spaces follow the lazy-TLB policy.**
//!   A flush of a registered address space goes through
//!   [`crate::mm::flush_tlb_mm_range`] (Linux's `flush_tlb_mm_range` →
//!   `native_flush_tlb_multi`): the CPUs in the space's mask, lazy ones
//!   skipped under the x86 policy unless the task unlinked page tables
//!   since its last flush (`mmu_gather.freed_tables`, noted here when an
//!   entry that pointed to a table is cleared). Other flushes — the
//!   kernel's address space, whose mappings every CPU shares, and the bare
//!   roots of the one-CPU tests — go to the backend with the caller's
//!   scope.

use lazymmu::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use lazymmu::backend::machine::{BackendBug, LazyFlag, PerCpu};
use lazymmu::backend::{Backend, ContextSwitch, EntryUpdate, FlushScope, PteAccess, TlbFlush};
use lazymmu::mm::active_mm::FlushRange;
use lazymmu::mode::{ArchHooks, LazyState};
use lazymmu::pgtable::format::{Entry, Format, X86_64};

use core::sync::atomic::{AtomicU64, Ordering};

use crate::paging::KernelKeys;
use crate::percpu;
use crate::sched::{self, Task};
use crate::{interrupts, mm, println};

/// The wrapper (see the module documentation).
#[derive(Debug)]
pub struct SmpBackend<B> {
    inner: B,
    lazy: PerCpu<LazyFlag>,
}

impl<B: Backend> SmpBackend<B> {
    /// Wraps `inner`.
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            lazy: PerCpu::default(),
        }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// Whether the executing CPU is in lazy MMU mode (preemption off).
    pub fn cpu_in_lazy_mode(&self) -> bool {
        held(|| self.flag().get())
    }

    fn flag(&self) -> &LazyFlag {
        self.lazy.get(lazymmu::cpu::CpuId::new(percpu::cpu_index()))
    }

    /// Notes a table unlink in the running task (see the module
    /// documentation): a cleared entry above the PTE level that pointed to
    /// a table.
    fn note_unlink(&self, update: &EntryUpdate) {
        if update.valid || update.level < 2 {
            return;
        }
        if let Entry::Table(_) = X86_64::decode(self.inner.read_entry(update.entry), update.level) {
            if let Some(task) = sched::try_current() {
                task.note_freed_tables();
            }
        }
    }

    fn policy_flush(&self, space: SpaceId, range: FlushRange) -> bool {
        if interrupts::in_interrupt() || !mm::is_registered(space) {
            return false;
        }
        let freed_tables = sched::current().take_freed_tables();
        mm::flush_tlb_mm_range(space, range, freed_tables);
        true
    }
}

/// Runs `f` with preemption off.
fn held<R>(f: impl FnOnce() -> R) -> R {
    percpu::preempt_disable();
    let result = f();
    percpu::preempt_enable();
    result
}

impl<B: Backend> ArchHooks for SmpBackend<B> {
    fn enter(&self) {
        held(|| {
            self.flag().enter(&KernelKeys);
            self.inner.enter();
        })
    }

    fn leave(&self) {
        held(|| {
            self.inner.leave();
            self.flag().leave(&KernelKeys);
        })
    }

    fn flush(&self) {
        held(|| self.inner.flush())
    }
}

impl<B: Backend> PteAccess for SmpBackend<B> {
    fn read_entry(&self, entry: PhysAddr) -> u64 {
        self.inner.read_entry(entry)
    }

    fn write_entry(&self, update: EntryUpdate) {
        held(|| {
            self.note_unlink(&update);
            self.inner.write_entry(update);
        })
    }

    fn get_and_clear(&self, update: EntryUpdate) -> u64 {
        held(|| {
            self.note_unlink(&update);
            self.inner.get_and_clear(update)
        })
    }

    fn write_entries(&self, first: EntryUpdate, count: usize, step: u64) {
        held(|| self.inner.write_entries(first, count, step))
    }

    fn modify_prot_start(&self, update: EntryUpdate) -> u64 {
        held(|| self.inner.modify_prot_start(update))
    }

    fn modify_prot_commit(&self, update: EntryUpdate) {
        held(|| self.inner.modify_prot_commit(update))
    }
}

impl<B: Backend> TlbFlush for SmpBackend<B> {
    fn flush_range(
        &self,
        space: SpaceId,
        start: VirtAddr,
        end: VirtAddr,
        stride: PageSize,
        scope: FlushScope,
    ) {
        held(|| {
            if !self.policy_flush(space, FlushRange::Range { start, end, stride }) {
                self.inner.flush_range(space, start, end, stride, scope);
            }
        })
    }

    fn flush_all(&self, space: SpaceId, scope: FlushScope) {
        held(|| {
            if !self.policy_flush(space, FlushRange::All) {
                self.inner.flush_all(space, scope);
            }
        })
    }

    fn single_page_ceiling(&self) -> usize {
        self.inner.single_page_ceiling()
    }
}

impl<B: Backend> ContextSwitch for SmpBackend<B> {
    /// `xen_start_context_switch`: a CPU in lazy MMU mode leaves it; then
    /// the backend saves what travels with the task (the key register).
    fn switch_out(&self, prev: LazyState) {
        if self.flag().get() {
            self.flag().leave(&KernelKeys);
        }
        self.inner.switch_out(prev);
    }

    /// The backend restores the task's key register; then
    /// `xen_end_context_switch`: a task in a section enters lazy MMU mode
    /// again.
    fn switch_in(&self, next: LazyState) {
        self.inner.switch_in(next);
        if next.is_active() {
            self.flag().enter(&KernelKeys);
        }
    }
}

impl<B: Backend> Backend for SmpBackend<B> {
    type Format = B::Format;
    type Memory = B::Memory;
    fn memory(&self) -> &B::Memory {
        self.inner.memory()
    }
}

/// `arch_start_context_switch(prev)` (interrupts off).
pub fn switch_out(prev: &Task) {
    crate::paging::backend().switch_out(prev.lazy_state());
}

/// `arch_end_context_switch(next)`, in the task that now runs (interrupts
/// off).
pub fn switch_in(next: &Task) {
    crate::paging::backend().switch_in(next.lazy_state());
}

/// Backend bugs nobody expected.
pub static UNEXPECTED_BUGS: AtomicU64 = AtomicU64::new(0);

/// The bit of `bug` in [`Task::expected_bugs`].
pub const fn bug_bit(bug: BackendBug) -> u32 {
    match bug {
        BackendBug::DoubleEnter => 1,
        BackendBug::LeaveOutside => 2,
        BackendBug::SwitchInSection => 4,
        BackendBug::KeyFrameMismatch => 8,
    }
}

/// A bug the backend reported: counted for the running task if its test
/// provokes that bug on purpose, else a failure.
pub fn report(bug: BackendBug) {
    if let Some(task) = sched::try_current() {
        if task.expected_bugs.load(Ordering::Relaxed) & bug_bit(bug) != 0 {
            task.bugs_met[bug_bit(bug).trailing_zeros() as usize].fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
    UNEXPECTED_BUGS.fetch_add(1, Ordering::Relaxed);
    println!("FAIL backend bug on CPU {}: {bug}", percpu::cpu_index());
}
