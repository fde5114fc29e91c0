//! A break-before-make checker around the backend: QEMU uses whatever a
//! table says, so it never shows the failures the architecture allows when
//! a live entry is changed the wrong way (TLB conflict aborts, a mix of the
//! old and new translations). This wrapper sees every entry the library
//! writes and every TLB invalidation it asks for, and reports each change
//! the architecture requires break-before-make for but did not get it:
//!
//! - a valid entry replaced by another valid one that
//!   `pgattr_change_is_safe` (Linux, arch/arm64/mm/mmu.c) refuses: another
//!   output address, a block becoming a table or the other way round, a
//!   global entry becoming non-global, any attribute outside the
//!   permission bits;
//! - a valid entry cleared (the break) and then made valid again in a way
//!   that check refuses, before a TLB invalidation covering it: by VA at
//!   the leaf level for a page or block, and with walk caches (a
//!   non-last-level `tlbi`, or by ASID, or all) for a table entry.
//!
//! Source: Arm ARM (DDI 0487), "Using break-before-make when updating
//! translation table entries"; Linux's `pgattr_change_is_safe`.

use lazymmu::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use lazymmu::backend::{Backend, ContextSwitch, EntryUpdate, FlushScope, PteAccess, TlbFlush};
use lazymmu::mode::{ArchHooks, LazyState};
use lazymmu::pgtable::format::aarch64::{
    ACCESS_FLAG, ADDRESS_4K, AP_READ_ONLY, CONTIGUOUS, DIRTY_BIT_MODIFIER, NOT_GLOBAL, PXN, VALID,
};
use lazymmu::pgtable::format::{entry_shift, Aarch64};

use crate::sync::SpinLock;

/// Bits 58:55, which the walker ignores (Linux's `PTE_SWBITS_MASK`).
const SOFTWARE_BITS: u64 = 0b1111 << 55;

/// `pgattr_change_is_safe(old, new)`: whether a live entry may go from
/// `old` to `new` without break-before-make. Only the permission bits
/// (PXN, `AP[2]`, DBM as Linux's `PTE_WRITE`), nG one way and the software
/// bits may change — and the access flag, which Linux's function need not
/// allow (kernel mappings always have it set) but Linux changes on live
/// user entries in place: `__ptep_set_access_flags` (arch/arm64/mm/fault.c)
/// makes an old entry young, `__ptep_test_and_clear_young` makes it old.
pub fn change_is_safe(old: u64, new: u64) -> bool {
    if old & VALID == 0 || new & VALID == 0 {
        return true;
    }
    if old & ADDRESS_4K != new & ADDRESS_4K {
        return false;
    }
    if (old | new) & CONTIGUOUS != 0 {
        return false;
    }
    // Non-global to global.
    if old & !new & NOT_GLOBAL != 0 {
        return false;
    }
    let mask = PXN | AP_READ_ONLY | DIRTY_BIT_MODIFIER | NOT_GLOBAL | SOFTWARE_BITS | ACCESS_FLAG;
    (old ^ new) & !mask == 0
}

/// A cleared entry still waiting for its invalidation.
#[derive(Clone, Copy, Debug)]
struct Break {
    entry: u64,
    va: u64,
    /// The value before the break.
    old: u64,
    space: u32,
    level: u8,
}

impl Break {
    /// Whether the broken entry pointed to a table, whose walk-cache
    /// entries a last-level invalidation leaves.
    fn table(&self) -> bool {
        self.level > 1 && self.old & 0b11 == 0b11
    }

    fn end(&self) -> u64 {
        self.va
            .wrapping_add(1 << entry_shift::<Aarch64>(self.level))
    }
}

/// Entries that may be broken at once: a zap of 4,096 pages breaks 4,096
/// PTEs (plus the tables it frees) before its one flush.
const CAPACITY: usize = 8192;

/// What went wrong, for the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The entry's physical address.
    pub entry: PhysAddr,
    /// The first address it translates.
    pub va: VirtAddr,
    /// The live (or broken, not yet invalidated) value.
    pub old: u64,
    /// The value written over it.
    pub new: u64,
}

/// The broken entries, an open-addressing table keyed by the entry's
/// physical address, and what was found.
pub struct State {
    breaks: [Option<Break>; CAPACITY],
    count: usize,
    violations: u64,
    first: Option<Violation>,
    overflows: u64,
}

impl State {
    /// Nothing broken, nothing found.
    pub const fn new() -> Self {
        State {
            breaks: [None; CAPACITY],
            count: 0,
            violations: 0,
            first: None,
            overflows: 0,
        }
    }

    fn home(entry: u64) -> usize {
        (entry >> 3) as usize % CAPACITY
    }

    fn insert(&mut self, item: Break) {
        let mut i = Self::home(item.entry);
        while let Some(present) = self.breaks[i] {
            if present.entry == item.entry {
                self.breaks[i] = Some(item);
                return;
            }
            i = (i + 1) % CAPACITY;
        }
        if self.count == CAPACITY - 1 {
            // Keep one slot empty so that every probe ends.
            self.overflows += 1;
            return;
        }
        self.breaks[i] = Some(item);
        self.count += 1;
    }

    /// Empties slot `i`, shifting later members of its probe chain back
    /// so that no lookup stops early (deletion in linear probing).
    fn delete_at(&mut self, mut i: usize) {
        self.breaks[i] = None;
        self.count -= 1;
        let mut j = i;
        loop {
            j = (j + 1) % CAPACITY;
            let Some(item) = self.breaks[j] else { break };
            let home = Self::home(item.entry);
            // The item may stay if its home lies cyclically in (i, j].
            let stays = if i <= j {
                i < home && home <= j
            } else {
                i < home || home <= j
            };
            if !stays {
                self.breaks[i] = Some(item);
                self.breaks[j] = None;
                i = j;
            }
        }
    }

    /// Removes every break `covered` accepts. A flush usually covers all
    /// or nearly all: the few that stay are set aside, the table cleared
    /// and they go back in; only when many stay are they deleted one by
    /// one.
    fn remove_where(&mut self, covered: impl Fn(&Break) -> bool) {
        if self.count == 0 {
            return;
        }
        let mut kept = [None; 64];
        let mut survivors = 0;
        for item in self.breaks.iter().flatten() {
            if !covered(item) {
                if let Some(slot) = kept.get_mut(survivors) {
                    *slot = Some(*item);
                }
                survivors += 1;
            }
        }
        if survivors <= kept.len() {
            self.breaks.iter_mut().for_each(|slot| *slot = None);
            self.count = 0;
            kept.into_iter()
                .flatten()
                .for_each(|item| self.insert(item));
            return;
        }
        let mut i = 0;
        while i < CAPACITY && self.count > 0 {
            if self.breaks[i].as_ref().is_some_and(&covered) {
                // Something may shift into slot `i`: look at it again.
                self.delete_at(i);
            } else {
                i += 1;
            }
        }
    }

    fn take(&mut self, entry: u64) -> Option<Break> {
        let mut i = Self::home(entry);
        while let Some(present) = self.breaks[i] {
            if present.entry == entry {
                self.delete_at(i);
                return Some(present);
            }
            i = (i + 1) % CAPACITY;
        }
        None
    }

    fn violation(&mut self, violation: Violation) {
        self.violations += 1;
        self.first.get_or_insert(violation);
    }
}

/// The checker around backend `B`, keeping its findings in `state`.
pub struct BreakBeforeMake<B: 'static> {
    inner: B,
    state: &'static SpinLock<State>,
}

impl<B: Backend<Format = Aarch64>> BreakBeforeMake<B> {
    /// Checks what goes through `inner`, keeping the broken entries in
    /// `state` (a static: the table is too large for the stack).
    pub fn new(inner: B, state: &'static SpinLock<State>) -> Self {
        Self { inner, state }
    }

    /// The backend checked.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// Violations so far, and the first one.
    pub fn violations(&self) -> (u64, Option<Violation>) {
        let state = self.state.lock();
        (state.violations, state.first)
    }

    /// Forgets the last `n` violations (after a test that made them on
    /// purpose); the first one is forgotten when none is left.
    pub fn forget_violations(&self, n: u64) {
        let mut state = self.state.lock();
        state.violations = state.violations.saturating_sub(n);
        if state.violations == 0 {
            state.first = None;
        }
    }

    /// Breaks that did not fit (the check was incomplete if non-zero).
    pub fn overflows(&self) -> u64 {
        self.state.lock().overflows
    }

    /// Entries broken and not yet invalidated.
    pub fn pending(&self) -> usize {
        self.state.lock().count
    }

    /// Checks the write of `new` over `old` at `update`'s entry and
    /// records a break.
    fn check(&self, update: &EntryUpdate, old: u64, new: u64) {
        let mut state = self.state.lock();
        let violation = |old| Violation {
            entry: update.entry,
            va: update.va,
            old,
            new,
        };
        if old & VALID != 0 {
            if new & VALID == 0 {
                state.insert(Break {
                    entry: update.entry.0,
                    va: update.va.0,
                    old,
                    space: update.space.0,
                    level: update.level,
                });
            } else if !change_is_safe(old, new) {
                state.violation(violation(old));
            }
        } else if new & VALID != 0 {
            if let Some(broken) = state.take(update.entry.0) {
                if !change_is_safe(broken.old, new) {
                    state.violation(violation(broken.old));
                }
            }
        }
    }
}

impl<B: Backend<Format = Aarch64>> ArchHooks for BreakBeforeMake<B> {
    fn enter(&self) {
        self.inner.enter();
    }
    fn leave(&self) {
        self.inner.leave();
    }
    fn flush(&self) {
        self.inner.flush();
    }
}

impl<B: Backend<Format = Aarch64>> PteAccess for BreakBeforeMake<B> {
    fn read_entry(&self, entry: PhysAddr) -> u64 {
        self.inner.read_entry(entry)
    }

    fn write_entry(&self, update: EntryUpdate) {
        let old = self.inner.read_entry(update.entry);
        self.check(&update, old, update.value);
        self.inner.write_entry(update);
    }

    fn get_and_clear(&self, update: EntryUpdate) -> u64 {
        let old = self.inner.get_and_clear(update);
        self.check(&update, old, 0);
        old
    }
}

impl<B: Backend<Format = Aarch64>> TlbFlush for BreakBeforeMake<B> {
    fn flush_range(
        &self,
        space: SpaceId,
        start: VirtAddr,
        end: VirtAddr,
        stride: PageSize,
        scope: FlushScope,
    ) {
        self.inner.flush_range(space, start, end, stride, scope);
        // A 4K stride is a last-level invalidation (`vale1is`): it leaves
        // walk caches, so table entries stay broken.
        let walk_caches = stride != PageSize::Size4K;
        self.state.lock().remove_where(|b| {
            b.space == space.0 && b.va < end.0 && start.0 < b.end() && (walk_caches || !b.table())
        });
    }

    fn flush_all(&self, space: SpaceId, scope: FlushScope) {
        self.inner.flush_all(space, scope);
        // `vmalle1is` (the kernel's) drops every space's translations;
        // `aside1is` one space's.
        self.state
            .lock()
            .remove_where(|b| space == SpaceId::KERNEL || b.space == space.0);
    }

    fn single_page_ceiling(&self) -> usize {
        self.inner.single_page_ceiling()
    }
}

impl<B: Backend<Format = Aarch64>> ContextSwitch for BreakBeforeMake<B> {
    fn switch_out(&self, prev: LazyState) {
        self.inner.switch_out(prev);
    }
    fn switch_in(&self, next: LazyState) {
        self.inner.switch_in(next);
    }
}

impl<B: Backend<Format = Aarch64>> Backend for BreakBeforeMake<B> {
    type Format = Aarch64;
    type Memory = B::Memory;
    fn memory(&self) -> &B::Memory {
        self.inner.memory()
    }
}
