//! Protected page tables: page-table pages carry a protection key that makes
//! them read-only to the kernel, so every write must first open the key
//! register and close it again. A lazy MMU section opens it once.
//!
//! [`Protected`] wraps another backend (x86-64 native with PKS, arm64 with
//! POE) and adds the key-register window around its writes. The register
//! flavours are zero-sized types, [`Pks`] and [`Poe`], so a wrapper over a
//! register it does not understand does not compile.
//!
//! Follows Kevin Brodsky's "pkeys-based page table hardening" series for
//! arm64 (kpkeys; `kpkeys_set_level`, `KPKEYS_PKEY_PGTABLES`, the saved
//! level kept in the task across a lazy MMU section) and the PKS page-table
//! protection proposal for x86 (Rick Edgecombe, "PKS write protected page
//! tables"), with the exception handling of x86 PKS (`irqentry_state`
//! saving PKRS and loading the default value; Ira Weiny, "PKS: Add
//! Protection Key Supervisor").

use core::fmt;
use core::marker::PhantomData;

use super::machine::{BackendBug, CpuPrimitives, LazyFlag, PerCpu};
use super::{Backend, ContextSwitch, EntryUpdate, FlushScope, PteAccess, TlbFlush};
use crate::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use crate::cpu::KeyRegister;
use crate::mode::stateful::{FromHooks, HooksState, StatefulArch};
use crate::mode::{ArchHooks, Environment, Hook, LazyState, Misuse, Step};

/// A protection-key register flavour: how the page-table key is opened and
/// what the kernel's default value is.
pub trait KeyFlavour {
    /// The register value the kernel runs with, and exceptions load: the
    /// page-table key is read-only.
    const DEFAULT: u64;
    /// `value` with the page-table key made writable and everything else
    /// unchanged.
    fn open(value: u64) -> u64;
    /// Whether a register holding `value` lets the kernel write page-table
    /// pages.
    fn allows_page_table_writes(value: u64) -> bool;
}

/// x86 PKS: the `IA32_PKRS` MSR (0x6E1), two bits per key — access-disable
/// at bit 2k, write-disable at bit 2k+1 (Intel SDM Vol. 3A §4.6.2
/// "Protection Keys"; MSR address in Vol. 4, Table 2-2). A `wrmsr` to
/// IA32_PKRS is not serialising (SDM Vol. 3A §4.6.2), so no fence follows.
#[derive(Clone, Copy, Debug, Default)]
pub struct Pks;

impl Pks {
    /// The MSR address of IA32_PKRS.
    pub const MSR: u32 = 0x6E1;
    /// The key page-table pages carry.
    pub const PAGE_TABLE_KEY: u32 = 1;
    const WD: u64 = 1 << (2 * Self::PAGE_TABLE_KEY + 1);
    const AD: u64 = 1 << (2 * Self::PAGE_TABLE_KEY);
}

impl KeyFlavour for Pks {
    const DEFAULT: u64 = Self::WD;
    fn open(value: u64) -> u64 {
        value & !(Self::WD | Self::AD)
    }
    fn allows_page_table_writes(value: u64) -> bool {
        value & (Self::WD | Self::AD) == 0
    }
}

/// arm64 POE: `POR_EL1`, four permission bits per overlay index (bit 0
/// read, bit 1 execute, bit 2 write; Arm ARM DDI 0487 K.a, D8.4.1.3
/// "Permission Overlay" and the POR_EL1 register description). A write to
/// POR_EL1 takes effect after an `isb`, which the register primitive
/// includes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Poe;

impl Poe {
    /// The overlay index page-table pages carry (`KPKEYS_PKEY_PGTABLES`).
    pub const PAGE_TABLE_INDEX: u32 = 1;
    const READ: u64 = 0b0001;
    const WRITE: u64 = 0b0100;
    const RWX: u64 = 0b0111;
    const SHIFT: u32 = 4 * Self::PAGE_TABLE_INDEX;
    const FIELD: u64 = 0b1111 << Self::SHIFT;
}

impl KeyFlavour for Poe {
    /// Index 0 (ordinary kernel memory) RWX, index 1 read-only.
    const DEFAULT: u64 = Self::RWX | (Self::READ << Self::SHIFT);
    fn open(value: u64) -> u64 {
        (value & !Self::FIELD) | ((Self::READ | Self::WRITE) << Self::SHIFT)
    }
    fn allows_page_table_writes(value: u64) -> bool {
        value & (Self::WRITE << Self::SHIFT) != 0
    }
}

/// Which per-task copy of the key register is meant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeySlot {
    /// The register's value while the task is switched out (the thread
    /// struct's saved PKRS / POR_EL1).
    Live,
    /// The value `enter` found, which `leave` restores (kept in the task,
    /// as the counter design keeps it: one per task, not per nesting).
    Section,
}

/// The task's saved copies of the protection-key register ([`KeySlot`]),
/// on top of the register itself ([`KeyRegister`]) and the backend's
/// machine state ([`CpuPrimitives`]).
///
/// What to count and charge (see [`super::machine::Primitive`]):
///
/// | method | counts |
/// |---|---|
/// | [`write_key`](KeyRegister::write_key) | 1 `key_write` (POE: plus 1 `isb`) |
///
/// Reads of the register and of the task slots are free. The model's page
/// table stores must fault (be reported as an invariant 5 violation) when
/// the register does not allow page-table writes. The wrapper saves and
/// restores the register itself at context switch (through
/// [`KeySlot::Live`]); the model's context switch must not.
pub trait KeySlots: KeyRegister + CpuPrimitives {
    /// The current task's copy, `None` if never stored.
    fn task_key(&self, slot: KeySlot) -> Option<u64>;
    /// Stores the current task's copy.
    fn set_task_key(&self, slot: KeySlot, value: u64);
}

impl<P: KeySlots + ?Sized> KeySlots for &P {
    fn task_key(&self, slot: KeySlot) -> Option<u64> {
        (**self).task_key(slot)
    }
    fn set_task_key(&self, slot: KeySlot, value: u64) {
        (**self).set_task_key(slot, value)
    }
}

/// The key-register value an exception interrupted, to be restored when it
/// returns (kept in the exception frame, like x86 PKS's `pt_regs`
/// extension).
#[must_use = "the interrupted key register value must be handed to exception_exit"]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyFrame {
    interrupted: u64,
}

impl KeyFrame {
    /// The value the exception interrupted.
    pub fn interrupted(&self) -> u64 {
        self.interrupted
    }
}

/// Protected page tables over `B`, with the key register `K` of flavour
/// `F` (`x86-pks`, `arm64-poe`).
///
/// - Outside a section (and in interrupt context) each entry write opens
///   the register and closes it again: 2 register writes.
/// - `enter` opens it once, saving the value found in the task;
///   `leave` restores that value exactly.
/// - A double entry is reported by this wrapper (and by an inner
///   backend that keeps a lazy flag of its own, such as arm64's).
/// - [`Protected::exception_enter`] loads the default value and
///   [`Protected::exception_exit`] restores the interrupted one.
///
/// ```
/// use lazymmu::addr::{PhysAddr, SpaceId, VirtAddr};
/// use lazymmu::backend::machine::Primitive;
/// use lazymmu::backend::protected::{Arm64Poe, KeyFlavour, Poe};
/// use lazymmu::backend::recording::Recording;
/// use lazymmu::backend::{EntryUpdate, PteAccess};
/// use lazymmu::mode::{counters::Counters, LazyMode, MisusePolicy};
///
/// let machine = Recording::new();
/// machine.protect(Poe::DEFAULT, Poe::allows_page_table_writes);
/// let poe = Arm64Poe::arm64_poe(&machine);
/// let mode = Counters::new(&machine, &poe, MisusePolicy::Panic);
/// let update = |i: u64| EntryUpdate {
///     entry: PhysAddr(0x3000 + i * 8),
///     va: VirtAddr(0xffff_8000_0000_0000 + (i << 12)),
///     space: SpaceId::KERNEL,
///     level: 1,
///     value: 0x4000_0003 + (i << 12),
///     kernel: true,
///     valid: true,
///     leaf: true,
/// };
/// poe.write_entry(update(0)); // open, write, close
/// assert_eq!(machine.count(Primitive::KeyWrite), 2);
/// {
///     let _section = mode.section(); // open once
///     for i in 1..100 {
///         poe.write_entry(update(i));
///     }
/// } // restore
/// assert_eq!(machine.count(Primitive::KeyWrite), 4);
/// assert_eq!(machine.key(), Poe::DEFAULT);
/// assert_eq!(machine.faults(), 0);
/// ```
pub struct Protected<B, K, F> {
    inner: B,
    keys: K,
    cpus: PerCpu<LazyFlag>,
    /// Whether a lazy MMU section opens the register once (kpkeys with its
    /// batching patch); without it every write opens and closes it.
    batch_key: bool,
    _flavour: PhantomData<F>,
}

impl<B: fmt::Debug, K: fmt::Debug, F> fmt::Debug for Protected<B, K, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Protected")
            .field("inner", &self.inner)
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl<B: Backend, K: KeySlots, F: KeyFlavour> Protected<B, K, F> {
    /// Wraps `inner`, using `keys` for the register.
    pub fn new(inner: B, keys: K) -> Self {
        Self {
            inner,
            keys,
            cpus: PerCpu::default(),
            batch_key: true,
            _flavour: PhantomData,
        }
    }

    /// Wraps `inner` without batching the register: lazy MMU sections
    /// reach the inner backend only, and every write opens and closes the
    /// register (kpkeys_hardened_pgtables without "Batch
    /// KPKEYS_LVL_PGTABLES switches", the last patch of Kevin Brodsky's
    /// series). For inner backends that write no entry when a section
    /// closes (arm64): a deferred write would find the register closed.
    pub fn unbatched(inner: B, keys: K) -> Self {
        Self {
            batch_key: false,
            ..Self::new(inner, keys)
        }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// The key register.
    pub fn keys(&self) -> &K {
        &self.keys
    }

    fn lazy(&self) -> &LazyFlag {
        self.cpus.current(&self.keys)
    }

    /// Whether the register is open for the whole section on this CPU.
    /// The flag is read with preemption disabled: a task that migrated
    /// between looking up its CPU and reading the flag would read the flag
    /// of the CPU it left, which may be in another task's section, and
    /// write with its own register closed.
    fn in_window(&self) -> bool {
        let _on_this_cpu = self.keys.preempt_guard();
        !self.keys.in_interrupt() && self.lazy().get()
    }

    /// Runs `write` with the register open: as is inside a section, else
    /// between an open and a close.
    fn with_window<R>(&self, write: impl FnOnce() -> R) -> R {
        if self.in_window() {
            return write();
        }
        let closed = self.keys.read_key();
        let open = F::open(closed);
        if open == closed {
            return write();
        }
        self.keys.write_key(open);
        let result = write();
        self.keys.write_key(closed);
        result
    }

    /// Exception entry: remember the interrupted value and load the
    /// default, so a handler writes page tables only through its own
    /// windows. Call it from the interrupt path before the handler runs.
    pub fn exception_enter(&self) -> KeyFrame {
        let interrupted = self.keys.read_key();
        if interrupted != F::DEFAULT {
            self.keys.write_key(F::DEFAULT);
        }
        KeyFrame { interrupted }
    }

    /// Exception return: restore the interrupted value. A handler that
    /// left the register other than at the default is reported
    /// ([`BackendBug::KeyFrameMismatch`]); the interrupted value is
    /// restored regardless.
    pub fn exception_exit(&self, frame: KeyFrame) {
        let current = self.keys.read_key();
        if current != F::DEFAULT {
            self.keys.report(BackendBug::KeyFrameMismatch);
        }
        if current != frame.interrupted {
            self.keys.write_key(frame.interrupted);
        }
    }
}

impl<B: Backend, K: KeySlots, F: KeyFlavour> ArchHooks for Protected<B, K, F> {
    /// Opens the register, then lets the inner backend enter. A second
    /// `enter` is reported ([`BackendBug::DoubleEnter`], invariant 3: the
    /// inner backend may have no lazy state of its own to tell, as x86's
    /// has none) and keeps the value the first one saved, so `leave` still
    /// restores what the section found; it only makes sure the register
    /// is open.
    fn enter(&self) {
        if !self.batch_key {
            self.inner.enter();
            return;
        }
        let first = self.lazy().set();
        let found = self.keys.read_key();
        if first {
            self.keys.set_task_key(KeySlot::Section, found);
        } else {
            self.keys.report(BackendBug::DoubleEnter);
        }
        let open = F::open(found);
        if open != found {
            self.keys.write_key(open);
        }
        self.inner.enter();
    }

    /// The inner backend applies what it deferred (s390 stores, Xen
    /// multicalls) while the register is still open; then the value
    /// `enter` found is restored.
    fn leave(&self) {
        self.inner.leave();
        if !self.batch_key {
            return;
        }
        let saved = self.keys.task_key(KeySlot::Section).unwrap_or(F::DEFAULT);
        if self.keys.read_key() != saved {
            self.keys.write_key(saved);
        }
        self.lazy().clear();
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

impl<B: Backend, K: KeySlots, F: KeyFlavour> PteAccess for Protected<B, K, F> {
    fn read_entry(&self, entry: PhysAddr) -> u64 {
        self.inner.read_entry(entry)
    }

    fn write_entry(&self, update: EntryUpdate) {
        self.with_window(|| self.inner.write_entry(update));
    }

    fn get_and_clear(&self, update: EntryUpdate) -> u64 {
        self.with_window(|| self.inner.get_and_clear(update))
    }

    fn get_and_clear_full(&self, update: EntryUpdate, full: bool) -> u64 {
        self.with_window(|| self.inner.get_and_clear_full(update, full))
    }

    /// One guarded atomic (kpkeys wraps `___ptep_set_wrprotect` in one
    /// `guard(kpkeys_hardened_pgtables)`).
    fn set_wrprotect(&self, update: EntryUpdate) -> u64 {
        self.with_window(|| self.inner.set_wrprotect(update))
    }

    fn modify_prot_start(&self, update: EntryUpdate) -> u64 {
        self.with_window(|| self.inner.modify_prot_start(update))
    }

    fn modify_prot_commit(&self, update: EntryUpdate) {
        self.with_window(|| self.inner.modify_prot_commit(update))
    }
}

impl<B: Backend, K: KeySlots, F: KeyFlavour> TlbFlush for Protected<B, K, F> {
    /// Forwarded. A flush writes no entries except where a backend applies
    /// deferred writes (s390, Xen), which happens inside the section's
    /// window, or in interrupt context, where the flush gets a window of its
    /// own.
    fn flush_range(
        &self,
        space: SpaceId,
        start: VirtAddr,
        end: VirtAddr,
        stride: PageSize,
        scope: FlushScope,
    ) {
        if self.keys.in_interrupt() {
            self.with_window(|| self.inner.flush_range(space, start, end, stride, scope));
        } else {
            self.inner.flush_range(space, start, end, stride, scope);
        }
    }

    fn flush_all(&self, space: SpaceId, scope: FlushScope) {
        if self.keys.in_interrupt() {
            self.with_window(|| self.inner.flush_all(space, scope));
        } else {
            self.inner.flush_all(space, scope);
        }
    }

    fn flush_full_mm(&self, space: SpaceId, scope: FlushScope) {
        if self.keys.in_interrupt() {
            self.with_window(|| self.inner.flush_full_mm(space, scope));
        } else {
            self.inner.flush_full_mm(space, scope);
        }
    }

    fn single_page_ceiling(&self) -> usize {
        self.inner.single_page_ceiling()
    }
}

impl<B: Backend, K: KeySlots, F: KeyFlavour> ContextSwitch for Protected<B, K, F> {
    /// The inner backend first (it may still write with the register
    /// open), then the outgoing task's register value is saved with it.
    fn switch_out(&self, prev: LazyState) {
        self.inner.switch_out(prev);
        let live = self.keys.read_key();
        self.keys.set_task_key(KeySlot::Live, live);
        self.lazy().clear();
    }

    /// The incoming task's register value is loaded (the default for a
    /// task that never ran), then the inner backend switches in.
    fn switch_in(&self, next: LazyState) {
        let live = self.keys.task_key(KeySlot::Live).unwrap_or(F::DEFAULT);
        if self.keys.read_key() != live {
            self.keys.write_key(live);
        }
        if next.is_active() && self.batch_key {
            self.lazy().set();
        }
        self.inner.switch_in(next);
    }
}

impl<B: Backend, K: KeySlots, F: KeyFlavour> Backend for Protected<B, K, F> {
    type Format = B::Format;
    type Memory = B::Memory;
    fn memory(&self) -> &B::Memory {
        self.inner.memory()
    }
    fn dup_mmap(&self, child: SpaceId) {
        self.inner.dup_mmap(child)
    }
    fn exit_mmap(&self, space: SpaceId) {
        self.inner.exit_mmap(space)
    }
}

/// `arm64-poe`: arm64 with page tables protected by POE.
pub type Arm64Poe<P> = Protected<super::arm64::Arm64<P>, P, Poe>;

impl<P> Arm64Poe<P>
where
    P: super::arm64::Arm64Primitives + KeySlots + Clone,
{
    /// The `arm64-poe` backend over one set of primitives.
    pub fn arm64_poe(primitives: P) -> Self {
        Protected::new(super::arm64::Arm64::new(primitives.clone()), primitives)
    }
}

/// What a section or pause of the stateful design hands back over protected
/// page tables: the adapter's state and the key-register value the
/// operation found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyedState {
    /// The adapter's state (outermost, nested, pause, ...).
    pub hooks: HooksState,
    /// The register value found when the section opened.
    pub found: u64,
}

/// Protected page tables driven through the stateful design
/// ([`crate::mode::stateful::Stateful`]): every section, nested or not,
/// carries the register value it found and restores exactly that value
/// when it closes, where the counter design keeps one saved value per task
/// and restores it only when the outermost section closes.
pub struct StatefulProtected<B, K, F> {
    adapter: FromHooks<Protected<B, K, F>>,
    /// Known-bad: every section saves the value it found in the task's one
    /// [`KeySlot::Section`] slot instead of its own state.
    single_slot: bool,
}

impl<B: fmt::Debug, K: fmt::Debug, F> fmt::Debug for StatefulProtected<B, K, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatefulProtected")
            .field("adapter", &self.adapter)
            .finish()
    }
}

impl<B: Backend, K: KeySlots, F: KeyFlavour> StatefulProtected<B, K, F> {
    /// Drives `protected` through the stateful design.
    pub fn new(protected: Protected<B, K, F>) -> Self {
        Self {
            adapter: FromHooks::new(protected),
            single_slot: false,
        }
    }

    /// **Known-bad, for checkers only** (the `testing` feature): nested
    /// sections that save the key register in one per-task slot, so an
    /// inner section overwrites what the outer one saved and the outer
    /// close leaves the register open.
    #[cfg(feature = "testing")]
    pub fn single_slot(protected: Protected<B, K, F>) -> Self {
        Self {
            adapter: FromHooks::new(protected),
            single_slot: true,
        }
    }

    /// The protected backend (for page-table accesses and context
    /// switches).
    pub fn protected(&self) -> &Protected<B, K, F> {
        self.adapter.hooks()
    }

    fn keys(&self) -> &K {
        &self.adapter.hooks().keys
    }
}

impl<B: Backend, K: KeySlots, F: KeyFlavour> StatefulArch for StatefulProtected<B, K, F> {
    type State = KeyedState;

    fn ignored(&self) -> KeyedState {
        KeyedState {
            hooks: HooksState::Ignored,
            found: F::DEFAULT,
        }
    }

    /// The outermost section opens the register through
    /// [`Protected`]'s `enter`; a nested one opens it again if something
    /// closed it in between.
    fn enter<E: Environment>(&self, env: &E) -> Step<KeyedState> {
        let found = self.keys().read_key();
        let step = self.adapter.enter(env);
        if step.token == HooksState::Nested {
            let open = F::open(found);
            if open != found {
                self.keys().write_key(open);
            }
        }
        if self.single_slot && step.token != HooksState::Ignored {
            self.keys().set_task_key(KeySlot::Section, found);
        }
        Step {
            token: KeyedState {
                hooks: step.token,
                found,
            },
            hook: step.hook,
        }
    }

    fn leave<E: Environment>(&self, env: &E, state: KeyedState) -> Result<Option<Hook>, Misuse> {
        let hook = self.adapter.leave(env, state.hooks)?;
        let restore = if self.single_slot {
            self.keys().task_key(KeySlot::Section).unwrap_or(F::DEFAULT)
        } else {
            state.found
        };
        if hook.is_some() && self.keys().read_key() != restore {
            self.keys().write_key(restore);
        }
        Ok(hook)
    }

    fn pause<E: Environment>(&self, env: &E) -> Step<KeyedState> {
        let found = self.keys().read_key();
        let step = self.adapter.pause(env);
        Step {
            token: KeyedState {
                hooks: step.token,
                found,
            },
            hook: step.hook,
        }
    }

    fn resume<E: Environment>(&self, env: &E, state: KeyedState) -> Result<Option<Hook>, Misuse> {
        self.adapter.resume(env, state.hooks)
    }

    fn is_active<E: Environment>(&self, env: &E) -> bool {
        self.adapter.is_active(env)
    }

    fn lazy_state<E: Environment>(&self, env: &E) -> LazyState {
        self.adapter.lazy_state(env)
    }

    fn bytes_per_task(&self) -> usize {
        self.adapter.bytes_per_task()
    }
}

/// `x86-pks`: x86-64 native with page tables protected by PKS.
pub type X86Pks<M, P, K> = Protected<super::x86::X86Backend<M, P>, K, Pks>;

impl<M, P, K> X86Pks<M, P, K>
where
    M: crate::pgtable::memory::PageTableMemory,
    P: super::x86::X86Primitives,
    K: KeySlots,
{
    /// The `x86-pks` backend: entries in `memory`, TLB flushes through
    /// `primitives`, IA32_PKRS through `keys`.
    pub fn x86_pks(memory: M, primitives: P, keys: K) -> Self {
        Protected::new(super::x86::X86Backend::new(memory, primitives), keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pks_default_write_disables_the_page_table_key_only() {
        assert_eq!(Pks::DEFAULT, 0b1000);
        assert!(!Pks::allows_page_table_writes(Pks::DEFAULT));
        let other = Pks::DEFAULT | 0b11 << 10;
        assert_eq!(Pks::open(other), 0b11 << 10, "other keys untouched");
        assert!(Pks::allows_page_table_writes(Pks::open(other)));
        // Access-disable also forbids writes.
        assert!(!Pks::allows_page_table_writes(0b0100));
    }

    #[test]
    fn poe_default_is_read_only_at_index_one() {
        assert_eq!(Poe::DEFAULT, 0x17);
        assert!(!Poe::allows_page_table_writes(Poe::DEFAULT));
        assert_eq!(Poe::open(Poe::DEFAULT), 0x57);
        assert!(Poe::allows_page_table_writes(0x57));
        assert_eq!(Poe::open(0x7717) & !0xf0, 0x7707, "other indices untouched");
    }
}
