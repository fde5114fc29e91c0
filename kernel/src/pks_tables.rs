//! Page tables protected by PKS: a backend wrapper that only writes entries
//! through a key-register window.
//!
//! - Inside an outermost lazy section the window is opened once by
//!   `enter` and closed by `leave` (restoring the value `enter` found):
//!   2 IA32_PKRS writes per section, however many entries it writes.
//! - Outside a section, and in interrupt context (where the exception entry
//!   loaded the default value and the mode is never active), every entry
//!   write opens and closes the window: 2 writes per entry.
//!
//! This is the design of arm64's "kpkeys" page-table protection with lazy
//! MMU batching (DESIGN.md §3) on x86 PKS.

use lazymmu::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use lazymmu::backend::{Backend, ContextSwitch, EntryUpdate, FlushScope, PteAccess, TlbFlush};
use lazymmu::mode::{ArchHooks, Environment, LazyState};

use crate::local::Local;
use crate::pks::{self, DEFAULT_PKRS, OPEN_PKRS};

/// Wraps a backend so that its entry writes happen only with the
/// page-table key writable.
#[derive(Debug)]
pub struct PksTables<B, E> {
    inner: B,
    env: E,
    /// The PKRS value `enter` replaced, restored by `leave`.
    saved: Local<u64>,
    /// Whether `enter` opened the window and `leave` has not closed it.
    open: Local<bool>,
}

/// Runs `f` with page-table pages writable, opening and closing the window
/// unless it is already open (an outer window, or `enter` earlier).
pub fn with_window<R>(f: impl FnOnce() -> R) -> R {
    let before = pks::read();
    if before == OPEN_PKRS || !pks::enabled() {
        return f();
    }
    pks::write_window(OPEN_PKRS);
    let result = f();
    pks::write_window(before);
    result
}

impl<B: Backend, E: Environment> PksTables<B, E> {
    /// Protects `inner`'s entry writes; `env` tells whether the current
    /// context is inside an active section.
    pub const fn new(inner: B, env: E) -> Self {
        Self {
            inner,
            env,
            saved: Local::new(DEFAULT_PKRS),
            open: Local::new(false),
        }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// Whether an entry write may go straight to memory: the section's
    /// window is open and we are not in an interrupt handler (whose entry
    /// closed it).
    fn window_open(&self) -> bool {
        self.open.get() && !self.env.in_interrupt()
    }
}

impl<B: Backend, E: Environment> ArchHooks for PksTables<B, E> {
    fn enter(&self) {
        self.saved.set(pks::read());
        pks::write_window(OPEN_PKRS);
        self.open.set(true);
        self.inner.enter();
    }

    fn leave(&self) {
        // The inner backend may still write batched entries.
        self.inner.leave();
        self.open.set(false);
        pks::write_window(self.saved.get());
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

impl<B: Backend, E: Environment> PteAccess for PksTables<B, E> {
    fn read_entry(&self, entry: PhysAddr) -> u64 {
        self.inner.read_entry(entry)
    }

    fn write_entry(&self, update: EntryUpdate) {
        if self.window_open() {
            self.inner.write_entry(update)
        } else {
            with_window(|| self.inner.write_entry(update))
        }
    }

    fn get_and_clear(&self, update: EntryUpdate) -> u64 {
        if self.window_open() {
            self.inner.get_and_clear(update)
        } else {
            with_window(|| self.inner.get_and_clear(update))
        }
    }
}

impl<B: Backend, E: Environment> TlbFlush for PksTables<B, E> {
    fn flush_range(
        &self,
        space: SpaceId,
        start: VirtAddr,
        end: VirtAddr,
        stride: PageSize,
        scope: FlushScope,
    ) {
        self.inner.flush_range(space, start, end, stride, scope)
    }

    fn flush_all(&self, space: SpaceId, scope: FlushScope) {
        self.inner.flush_all(space, scope)
    }

    fn single_page_ceiling(&self) -> usize {
        self.inner.single_page_ceiling()
    }
}

/// The key register is per task: a task switched out of an active section
/// leaves the default value behind, and one switched into an active section
/// gets its window back.
impl<B: Backend, E: Environment> ContextSwitch for PksTables<B, E> {
    fn switch_out(&self, prev: LazyState) {
        self.inner.switch_out(prev);
        if prev.is_active() {
            pks::write_window(DEFAULT_PKRS);
        }
    }

    fn switch_in(&self, next: LazyState) {
        if next.is_active() {
            pks::write_window(OPEN_PKRS);
        }
        self.inner.switch_in(next);
    }
}

impl<B: Backend, E: Environment> Backend for PksTables<B, E> {
    fn name(&self) -> &'static str {
        "x86+pks"
    }
}
