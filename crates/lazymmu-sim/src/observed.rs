//! The contract checks, as thin wrappers around the library's own objects:
//! [`Observed`] wraps a backend and [`Checked`] wraps a lazy mode. Neither
//! changes what the library does; they watch what it asks of the machine
//! and check docs/design.md §6 after every step.
//!
//! - every entry write of a task is logged with the value the library
//!   meant; when the backend is not deferring (outside a section, in
//!   interrupt context) it must be visible to the walker as soon as the
//!   write returns, and inside a section as soon as `leave` or `flush`
//!   returns (§6.1, §6.2);
//! - every TLB invalidation the library requests is a promise: once due,
//!   no CPU may cache a translation of the range that differs from what
//!   the walker sees (§6.1);
//! - `enter`/`leave` alternate per CPU (§6.3);
//! - a read inside a section that returns something other than the task's
//!   last write to that entry is a stale read-back (§6.6);
//! - after every `disable` the key register holds exactly what it held
//!   before the matching `enable` (§6.5).

use core::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;

use lazymmu::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use lazymmu::backend::{Backend, ContextSwitch, EntryUpdate, FlushScope, PteAccess, TlbFlush};
use lazymmu::mode::{ArchHooks, Hook, LazyMode, LazyState, Misuse, Step};

use crate::invariant::Invariant;
use crate::machine::{KeyModel, Machine};

#[derive(Clone, Copy, Debug)]
struct LoggedWrite {
    value: u64,
    va: u64,
    space: SpaceId,
    kernel_valid: bool,
}

/// Bits of an entry a backend may keep from the old value when it
/// write-protects it, and that a hash fault sets on its own: powerpc's
/// `H_PAGE_HASHPTE`.
const KEPT_BITS: u64 = lazymmu::pgtable::format::ppc_hash::HASHPTE;

/// A multiplicative hash for entry addresses (8-byte aligned physical
/// addresses spread well under a Fibonacci multiplier); the checks do a
/// map operation per entry write, so SipHash would dominate the run.
#[derive(Clone, Copy, Debug, Default)]
struct EntryHasher(u64);

impl core::hash::Hasher for EntryHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(29);
    }
}

type EntryMap<V> = HashMap<PhysAddr, V, core::hash::BuildHasherDefault<EntryHasher>>;

#[derive(Default, Debug)]
struct TaskLog {
    writes: EntryMap<LoggedWrite>,
    promises: Vec<(SpaceId, u64, u64)>,
    /// Pages whose translation the task changed (leaf entries), which no
    /// CPU may still cache differently once the task is done. A set: a
    /// fork or an munmap changes thousands of pages in one task.
    changed: BTreeSet<(SpaceId, u64)>,
}

/// Bytes of the smallest page.
const PAGE_BYTES: u64 = 4096;

impl TaskLog {
    /// Notes the page a leaf-level update changes.
    fn changed_page(&mut self, update: &EntryUpdate) {
        if update.level != 1 && !update.leaf {
            return;
        }
        let page = (update.space, update.va.0 & !(PAGE_BYTES - 1));
        self.changed.insert(page);
    }
}

/// A backend with its contract checked against the machine.
#[derive(Debug)]
pub struct Observed<B> {
    inner: B,
    machine: Rc<Machine>,
    logs: RefCell<Vec<TaskLog>>,
    spare: RefCell<TaskLog>,
    entered: RefCell<Vec<bool>>,
    updates: Cell<u64>,
    /// Ranges whose entries were cleared and whose flush is deferred to a
    /// lazy purge ([`Checks::lazily_freed`]), not yet purged: the end of
    /// each range, keyed by its space and start. The ranges never overlap
    /// (overlapping frees are merged), so the range holding an address is
    /// the last one starting at or below it. Every leaf write looks here,
    /// and thousands of areas can wait for one purge.
    lazily_freed: RefCell<BTreeMap<(SpaceId, u64), u64>>,
    /// Address spaces torn down (`exit_mmap`) and not mapped again: see
    /// [`Observed::check_finished`].
    torn_down: RefCell<BTreeSet<SpaceId>>,
}

impl<B: Backend> Observed<B> {
    /// Watches `inner` running on `machine`.
    pub fn new(inner: B, machine: Rc<Machine>) -> Self {
        let cpus = machine.cpu_count();
        Self {
            inner,
            machine,
            logs: RefCell::new(Vec::new()),
            spare: RefCell::new(TaskLog::default()),
            entered: RefCell::new(vec![false; cpus]),
            updates: Cell::new(0),
            lazily_freed: RefCell::new(BTreeMap::new()),
            torn_down: RefCell::new(BTreeSet::new()),
        }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// Entry updates the library made through this backend.
    pub fn updates(&self) -> u64 {
        self.updates.get()
    }

    /// A digest of what the checks track: which CPUs are in lazy mode and
    /// every task's writes and flushes not yet due.
    pub fn digest(&self, h: &mut impl core::hash::Hasher) {
        for &e in self.entered.borrow().iter() {
            h.write_u8(e as u8);
        }
        for space in self.torn_down.borrow().iter() {
            h.write_u32(space.0);
        }
        for (&(space, start), &end) in self.lazily_freed.borrow().iter() {
            h.write_u32(space.0);
            h.write_u64(start);
            h.write_u64(end);
        }
        for (t, log) in self.logs.borrow().iter().enumerate() {
            let mut writes: Vec<(u64, u64)> =
                log.writes.iter().map(|(pa, w)| (pa.0, w.value)).collect();
            writes.sort_unstable();
            h.write_usize(t);
            for (pa, v) in writes {
                h.write_u64(pa);
                h.write_u64(v);
            }
            for &(space, start, end) in &log.promises {
                h.write_u32(space.0);
                h.write_u64(start);
                h.write_u64(end);
            }
            for &(space, page) in &log.changed {
                h.write_u32(space.0);
                h.write_u64(page);
            }
        }
    }

    /// Checks that task `task`, which has done all its work, left nothing
    /// deferred that never took effect (§6.4: batched state is never lost),
    /// and that no CPU still caches a translation of a page whose entry
    /// it changed other than what the walker sees (§6.1: an operation that
    /// invalidated too little, or nothing, leaves a CPU using the old
    /// page). Pages of an address space the task tore down (`exit_mmap`)
    /// are exempt: sparc64 invalidates nothing for a full-mm teardown
    /// (`tlb_batch_add` skips `tlb_batch_add_one` when `fullmm`,
    /// arch/sparc/mm/tlb.c), because the space's context number goes with
    /// it (`destroy_context`) and no CPU loads it again before
    /// `get_new_mmu_context` flushes every TLB on its wrap; a space that
    /// could be used again has its tables freed, which the check of
    /// freed tables (§6.7) covers.
    pub fn check_finished(&self, task: usize) {
        let changed = {
            let mut logs = self.logs.borrow_mut();
            logs.get_mut(task)
                .map(|log| core::mem::take(&mut log.changed))
                .unwrap_or_default()
        };
        let why = format!("t{task} finished");
        for (space, page) in changed {
            if self.lazily_freed_at(space, page).is_none()
                && !self.torn_down.borrow().contains(&space)
            {
                self.machine
                    .check_no_stale(space, page, page + PAGE_BYTES, &why);
            }
        }
        let pending = {
            let logs = self.logs.borrow();
            logs.get(task).and_then(|log| {
                log.writes
                    .iter()
                    .find(|(&entry, w)| !self.in_effect(entry, self.machine.walker_read(entry), w))
                    .map(|(&entry, w)| (entry, w.value))
            })
        };
        if let Some((entry, value)) = pending {
            self.machine.violation(
                Invariant::BatchOwnership,
                format!(
                    "t{task} finished with its write of {value:#x} to {:#x} never applied (the walker sees {:#x})",
                    entry.0,
                    self.machine.walker_read(entry)
                ),
            );
        }
    }

    /// See [`Checks::lazily_freed`].
    pub fn lazily_freed(&self, space: SpaceId, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let mut freed = self.lazily_freed.borrow_mut();
        let (mut start, mut end) = (start, end);
        // Merge with every range it touches, so that the ranges stay
        // disjoint and the lookup below stays one step.
        let touching: Vec<(u64, u64)> = freed
            .range((space, 0)..=(space, end))
            .rev()
            .take_while(|(_, &e)| e >= start)
            .map(|(&(_, s), &e)| (s, e))
            .collect();
        for (s, e) in touching {
            freed.remove(&(space, s));
            start = start.min(s);
            end = end.max(e);
        }
        freed.insert((space, start), end);
    }

    /// See [`Checks::purged`].
    pub fn purged(&self) {
        self.lazily_freed.borrow_mut().clear();
    }

    /// The lazily freed range, not yet purged, holding `va` in `space`.
    fn lazily_freed_at(&self, space: SpaceId, va: u64) -> Option<(u64, u64)> {
        self.lazily_freed
            .borrow()
            .range((space, 0)..=(space, va))
            .next_back()
            .filter(|(_, &end)| va < end)
            .map(|(&(_, start), &end)| (start, end))
    }

    /// Whether the backend is deferring on the running CPU (between
    /// `enter` and `leave`, not in interrupt context).
    fn deferring(&self) -> bool {
        !self.machine.in_interrupt() && self.entered.borrow()[self.machine.cpu().index()]
    }

    fn with_log<R>(&self, f: impl FnOnce(&mut TaskLog) -> R) -> R {
        let t = self.machine.current_task();
        let mut logs = self.logs.borrow_mut();
        if logs.len() <= t {
            logs.resize_with(t + 1, TaskLog::default);
        }
        f(&mut logs[t])
    }

    fn check_write(&self, entry: PhysAddr, w: LoggedWrite, invariant: Invariant, why: &str) {
        let m = &self.machine;
        let seen = m.walker_read(entry);
        if !self.in_effect(entry, seen, &w) {
            m.violation(
                invariant,
                format!(
                    "{why}: the walker sees {seen:#x} at {:#x} (va {:#x}, space {}), the task wrote {:#x}",
                    entry.0, w.va, w.space.0, w.value
                ),
            );
        } else if w.kernel_valid && m.stale_invalid(w.space, w.va) {
            m.violation(
                invariant,
                format!(
                    "{why}: {} may still use a stale invalid translation of {:#x} (no isb)",
                    m.cpu(),
                    w.va
                ),
            );
        }
    }

    /// Whether the walker's `seen` at `entry` is the write `w`: its value,
    /// or its value with `H_PAGE_HASHPTE` that a hash fault set after the
    /// library stored exactly that value (`__hash_page_4K` updates the PTE
    /// itself).
    fn in_effect(&self, entry: PhysAddr, seen: u64, w: &LoggedWrite) -> bool {
        seen == w.value
            || (seen == w.value | KEPT_BITS && self.machine.hash_marked(entry) == Some(w.value))
    }

    /// Everything the current task logged must be in effect now.
    fn settle(&self, why: &str) {
        // Swap the task's log with an empty one that keeps its capacity, so
        // that no borrow is held while checking.
        let mut pending = self.spare.take();
        self.with_log(|log| {
            core::mem::swap(log, &mut pending);
            // What the task changed stays with it until it is done.
            core::mem::swap(&mut log.changed, &mut pending.changed);
        });
        self.machine.atomically(|| {
            for (&entry, &w) in &pending.writes {
                self.check_write(entry, w, Invariant::WritesVisible, why);
            }
            for &(space, start, end) in &pending.promises {
                self.machine.check_no_stale(space, start, end, why);
            }
        });
        pending.writes.clear();
        pending.promises.clear();
        *self.spare.borrow_mut() = pending;
    }

    fn after_write(&self, update: &EntryUpdate) {
        self.updates.set(self.updates.get() + 1);
        if update.valid && update.leaf {
            // A mapping in a torn-down space's id: a new address space.
            self.torn_down.borrow_mut().remove(&update.space);
            if let Some((start, end)) = self.lazily_freed_at(update.space, update.va.0) {
                self.machine.violation(
                    Invariant::StaleTranslation,
                    format!(
                        "{:#x} in space {} mapped again while [{start:#x}, {end:#x}) is lazily \
                         freed and not yet purged: CPUs may still cache its old translations",
                        update.va.0, update.space.0
                    ),
                );
            }
        }
        let w = LoggedWrite {
            value: update.value,
            va: update.va.0,
            space: update.space,
            kernel_valid: update.kernel && update.valid,
        };
        if self.machine.in_interrupt() {
            self.machine.atomically(|| {
                self.check_write(
                    update.entry,
                    w,
                    Invariant::IrqImmediate,
                    "update in interrupt context",
                )
            });
        } else if self.deferring() {
            self.with_log(|log| {
                log.writes.insert(update.entry, w);
                log.changed_page(update);
            });
        } else {
            self.with_log(|log| log.changed_page(update));
            self.machine.atomically(|| {
                self.check_write(
                    update.entry,
                    w,
                    Invariant::WritesVisible,
                    "write outside a section",
                )
            });
        }
    }

    fn after_flush_request(&self, space: SpaceId, start: u64, end: u64) {
        self.machine
            .log(crate::events::EventKind::FlushRequest { space, start, end });
        if self.deferring() {
            self.with_log(|log| log.promises.push((space, start, end)));
        } else {
            let why = if self.machine.in_interrupt() {
                "flush in interrupt context"
            } else {
                "flush outside a section"
            };
            self.machine
                .atomically(|| self.machine.check_no_stale(space, start, end, why));
        }
    }
}

impl<B: Backend> ArchHooks for Observed<B> {
    fn enter(&self) {
        let cpu = self.machine.cpu();
        if self.entered.borrow()[cpu.index()] {
            self.machine.violation(
                Invariant::EnterLeave,
                format!("double-enter: enter on {cpu}, which is already in lazy mode"),
            );
        }
        self.entered.borrow_mut()[cpu.index()] = true;
        self.machine
            .log(crate::events::EventKind::Hook(Hook::Enter));
        self.inner.enter();
    }

    fn leave(&self) {
        let cpu = self.machine.cpu();
        if !self.entered.borrow()[cpu.index()] {
            self.machine.violation(
                Invariant::EnterLeave,
                format!("leave-outside: leave on {cpu}, which is not in lazy mode"),
            );
        }
        self.machine
            .log(crate::events::EventKind::Hook(Hook::Leave));
        self.inner.leave();
        let cpu = self.machine.cpu();
        self.entered.borrow_mut()[cpu.index()] = false;
        self.settle("after leave");
    }

    fn flush(&self) {
        let cpu = self.machine.cpu();
        if !self.entered.borrow()[cpu.index()] {
            self.machine.violation(
                Invariant::EnterLeave,
                format!("flush on {cpu}, which is not in lazy mode"),
            );
        }
        self.machine
            .log(crate::events::EventKind::Hook(Hook::Flush));
        self.inner.flush();
        self.settle("after flush");
    }
}

impl<B: Backend> PteAccess for Observed<B> {
    fn read_entry(&self, entry: PhysAddr) -> u64 {
        let value = self.inner.read_entry(entry);
        if self.deferring() {
            let meant = self.with_log(|log| log.writes.get(&entry).map(|w| w.value));
            if let Some(meant) = meant {
                if meant != value {
                    self.machine.violation(
                        Invariant::StaleReadBack,
                        format!(
                            "read-back of {:#x} inside a section returned {value:#x}; the task wrote {meant:#x}",
                            entry.0
                        ),
                    );
                }
            }
        }
        value
    }

    fn write_entry(&self, update: EntryUpdate) {
        self.inner.write_entry(update);
        self.after_write(&update);
    }

    fn get_and_clear(&self, update: EntryUpdate) -> u64 {
        let old = self.inner.get_and_clear(update);
        self.after_write(&update);
        old
    }

    fn get_and_clear_full(&self, update: EntryUpdate, full: bool) -> u64 {
        let old = self.inner.get_and_clear_full(update, full);
        self.after_write(&update);
        old
    }

    fn set_wrprotect(&self, update: EntryUpdate) -> u64 {
        let old = self.inner.set_wrprotect(update);
        // The backend may keep bits of the old value (powerpc's hash-entry
        // bit); what must be in effect is what the entry now holds.
        let now = self.inner.read_entry(update.entry);
        let meant = if self.deferring() { update.value } else { now };
        self.after_write(&EntryUpdate {
            value: meant | (now & !update.value & KEPT_BITS),
            ..update
        });
        old
    }

    fn write_entries(&self, first: EntryUpdate, count: usize, step: u64) {
        self.inner.write_entries(first, count, step);
        let page = first.page_size().bytes();
        for i in 0..count as u64 {
            self.after_write(&EntryUpdate {
                entry: first.entry.add(8 * i),
                va: VirtAddr(first.va.0.wrapping_add(i * page)),
                value: first.value + i * step,
                ..first
            });
        }
    }

    /// The start of a protection change is a read (Xen's
    /// `ptep_modify_prot_start` does not even clear the entry); what the
    /// library means the entry to hold is the value it commits.
    fn modify_prot_start(&self, update: EntryUpdate) -> u64 {
        self.inner.modify_prot_start(update)
    }

    fn modify_prot_commit(&self, update: EntryUpdate) {
        self.inner.modify_prot_commit(update);
        self.after_write(&update);
    }
}

impl<B: Backend> TlbFlush for Observed<B> {
    fn flush_range(
        &self,
        space: SpaceId,
        start: VirtAddr,
        end: VirtAddr,
        stride: PageSize,
        scope: FlushScope,
    ) {
        self.inner.flush_range(space, start, end, stride, scope);
        self.after_flush_request(space, start.0, end.0);
    }

    fn flush_all(&self, space: SpaceId, scope: FlushScope) {
        self.inner.flush_all(space, scope);
        self.after_flush_request(space, 0, u64::MAX);
    }

    /// A teardown's flush promises only that the address space is never
    /// used again (its ASID or context is not handed out again without a
    /// flush, which the world does when it reuses a space id); arches may
    /// skip it (arm64 without freed tables, sparc64), so no CPU's TLB is
    /// checked here. Tables it frees are checked as they are freed.
    fn flush_full_mm(&self, space: SpaceId, scope: FlushScope) {
        self.inner.flush_full_mm(space, scope);
        self.machine.log(crate::events::EventKind::FlushRequest {
            space,
            start: 0,
            end: u64::MAX,
        });
    }

    fn single_page_ceiling(&self) -> usize {
        self.inner.single_page_ceiling()
    }
}

impl<B: Backend> ContextSwitch for Observed<B> {
    fn switch_out(&self, prev: LazyState) {
        self.inner.switch_out(prev);
        let cpu = self.machine.cpu();
        self.entered.borrow_mut()[cpu.index()] = false;
    }

    fn switch_in(&self, next: LazyState) {
        let cpu = self.machine.cpu();
        // The backend re-enters for a task in a section; our view of the CPU
        // follows it.
        self.entered.borrow_mut()[cpu.index()] = next.is_active();
        self.inner.switch_in(next);
    }
}

impl<B: Backend> Backend for Observed<B> {
    type Format = B::Format;
    type Memory = B::Memory;
    fn memory(&self) -> &B::Memory {
        self.inner.memory()
    }
    fn dup_mmap(&self, child: SpaceId) {
        self.inner.dup_mmap(child)
    }
    fn exit_mmap(&self, space: SpaceId) {
        self.torn_down.borrow_mut().insert(space);
        self.inner.exit_mmap(space)
    }
}

/// A lazy mode with the caller-side contract checked: misuse is a
/// violation, and after every `disable` the key register holds what it held
/// before the matching `enable`.
#[derive(Debug)]
pub struct Checked<M> {
    inner: M,
    machine: Rc<Machine>,
    keys: RefCell<Vec<Vec<u64>>>,
}

impl<M: LazyMode> Checked<M> {
    /// Checks `inner` on `machine`.
    pub fn new(inner: M, machine: Rc<Machine>) -> Self {
        Self {
            inner,
            machine,
            keys: RefCell::new(Vec::new()),
        }
    }

    /// The wrapped mode.
    pub fn inner(&self) -> &M {
        &self.inner
    }

    fn misuse<T>(&self, r: Result<T, Misuse>) -> Result<T, Misuse> {
        if let Err(m) = &r {
            self.machine.violation(Invariant::Misuse, format!("{m}"));
        }
        r
    }

    fn key_stack<R>(&self, f: impl FnOnce(&mut Vec<u64>) -> R) -> R {
        let t = self.machine.current_task();
        let mut keys = self.keys.borrow_mut();
        if keys.len() <= t {
            keys.resize_with(t + 1, Vec::new);
        }
        f(&mut keys[t])
    }
}

impl<M: LazyMode> LazyMode for Checked<M> {
    type Token = M::Token;

    fn enable(&self) -> Result<Step<M::Token>, Misuse> {
        let task_context = !self.machine.in_interrupt();
        let key = self.machine.key();
        let r = self.misuse(self.inner.enable());
        if task_context && r.is_ok() {
            self.key_stack(|s| s.push(key));
        }
        r
    }

    fn disable(&self, token: M::Token) -> Result<Step<()>, Misuse> {
        let r = self.misuse(self.inner.disable(token));
        if !self.machine.in_interrupt() && r.is_ok() {
            let expected = self.key_stack(|s| s.pop());
            let now = self.machine.key();
            if let Some(expected) = expected {
                if self.machine.config().hardware.keys != KeyModel::None && now != expected {
                    self.machine.violation(
                        Invariant::KeyRestore,
                        format!("after disable the key register is {now:#x}; before the matching enable it was {expected:#x}"),
                    );
                }
            }
        }
        r
    }

    fn pause_raw(&self) -> Result<Step<M::Token>, Misuse> {
        self.misuse(self.inner.pause_raw())
    }

    fn resume(&self, token: M::Token) -> Result<Step<()>, Misuse> {
        self.misuse(self.inner.resume(token))
    }

    fn is_active(&self) -> bool {
        self.inner.is_active()
    }

    fn state(&self) -> LazyState {
        self.inner.state()
    }

    fn bytes_per_task(&self) -> usize {
        self.inner.bytes_per_task()
    }
}

/// What the world asks of the checks inside a backend stack, wherever the
/// [`Observed`] layer sits in it (under a protected backend's key window,
/// for instance).
pub trait Checks {
    /// Entry updates the library made.
    fn updates(&self) -> u64;
    /// Feeds what the checks track to `h`.
    fn digest(&self, h: &mut std::collections::hash_map::DefaultHasher);
    /// See [`Observed::check_finished`].
    fn check_finished(&self, task: usize);
    /// The caller cleared the entries of `[start, end)` in `space` and
    /// deferred their flush to a lazy purge: vmalloc's lazily freed areas
    /// (`free_vmap_area_noflush`, mm/vmalloc.c). Linux lets every CPU keep
    /// caching their old translations until `__purge_vmap_area_lazy`
    /// flushes the union of the areas (`flush_tlb_kernel_range`), because
    /// nobody uses a freed area and its addresses return to the free tree
    /// only after that flush. So a task that finishes with such a page
    /// still cached is no violation (§6.1 holds them to the purge's
    /// flush instead, checked like any flush); a leaf mapped inside the
    /// range before [`Checks::purged`] is one (the address reused while
    /// CPUs may still cache the old page), and so is any use of a stale
    /// translation ([`Machine::use_page`](crate::machine::Machine::use_page)).
    fn lazily_freed(&self, space: SpaceId, start: u64, end: u64);
    /// The lazy purge flushed every lazily freed range
    /// (`__purge_vmap_area_lazy`): their addresses may be mapped again.
    fn purged(&self);
}

impl<B: Backend> Checks for Observed<B> {
    fn updates(&self) -> u64 {
        Observed::updates(self)
    }
    fn digest(&self, h: &mut std::collections::hash_map::DefaultHasher) {
        Observed::digest(self, h)
    }
    fn check_finished(&self, task: usize) {
        Observed::check_finished(self, task)
    }
    fn lazily_freed(&self, space: SpaceId, start: u64, end: u64) {
        Observed::lazily_freed(self, space, start, end)
    }
    fn purged(&self) {
        Observed::purged(self)
    }
}

/// A protected backend's checks are its inner backend's.
impl<B, K, F> Checks for lazymmu::backend::protected::Protected<B, K, F>
where
    B: Backend + Checks,
    K: lazymmu::backend::protected::KeySlots,
    F: lazymmu::backend::protected::KeyFlavour,
{
    fn updates(&self) -> u64 {
        self.inner().updates()
    }
    fn digest(&self, h: &mut std::collections::hash_map::DefaultHasher) {
        self.inner().digest(h)
    }
    fn check_finished(&self, task: usize) {
        self.inner().check_finished(task)
    }
    fn lazily_freed(&self, space: SpaceId, start: u64, end: u64) {
        self.inner().lazily_freed(space, start, end)
    }
    fn purged(&self) {
        self.inner().purged()
    }
}
