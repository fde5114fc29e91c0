//! Locks and one-time initialisation shared by the kernel's CPUs.
//!
//! Both kernels use this module; how interrupts are masked is the
//! architecture's (`cpu::disable_interrupts` and `cpu::enable_interrupts`).

use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use crate::cpu;

/// A spinlock that also masks interrupts on the CPU holding it
/// (`spin_lock_irqsave`), so that an interrupt handler taking the same lock
/// on the same CPU cannot deadlock.
///
/// Rule: never wait for another CPU (a cross-call, a barrier) while holding
/// one; the other CPU may be spinning on it with interrupts masked.
pub struct SpinLock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the lock hands out at most one reference to the value at a time.
unsafe impl<T: Send> Sync for SpinLock<T> {}
// SAFETY: moving the lock moves the value.
unsafe impl<T: Send> Send for SpinLock<T> {}

impl<T> SpinLock<T> {
    /// An unlocked lock around `value`.
    pub const fn new(value: T) -> Self {
        Self {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// Masks interrupts and takes the lock.
    pub fn lock(&self) -> SpinGuard<'_, T> {
        let were_enabled = cpu::disable_interrupts();
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            while self.locked.load(Ordering::Relaxed) {
                core::hint::spin_loop();
            }
        }
        SpinGuard {
            lock: self,
            were_enabled,
        }
    }

    /// Tries `attempts` times to take the lock; for the panic path, which
    /// must print even if the CPU that died held the console.
    pub fn try_lock_for(&self, attempts: u32) -> Option<SpinGuard<'_, T>> {
        let were_enabled = cpu::disable_interrupts();
        for _ in 0..attempts {
            if self
                .locked
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return Some(SpinGuard {
                    lock: self,
                    were_enabled,
                });
            }
            core::hint::spin_loop();
        }
        if were_enabled {
            cpu::enable_interrupts();
        }
        None
    }
}

/// Holds a [`SpinLock`]; dropping it unlocks and restores the interrupt
/// flag.
pub struct SpinGuard<'a, T> {
    lock: &'a SpinLock<T>,
    were_enabled: bool,
}

impl<T> Deref for SpinGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard holds the lock, so no other reference exists.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for SpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.locked.store(false, Ordering::Release);
        if self.were_enabled {
            cpu::enable_interrupts();
        }
    }
}

const UNINIT: u8 = 0;
const BUSY: u8 = 1;
const READY: u8 = 2;

/// A value built once at boot and shared for the rest of the run (the
/// backend and the lazy mode, whose constructors are not `const`).
pub struct Global<T> {
    value: UnsafeCell<MaybeUninit<T>>,
    state: AtomicU8,
}

// SAFETY: the value is written once, before `state` turns READY with
// Release ordering, and only shared references are handed out after that
// (Acquire). `T: Sync` is not required of the value because the kernel's
// globals are the library's backend and lazy mode, whose only `Cell`s are
// per-CPU slots (`backend::machine::PerCpu`) that the library touches for
// the executing CPU only, and the kernel calls into them with preemption
// disabled (see `smp_backend`), so no two CPUs ever touch the same cell.
unsafe impl<T> Sync for Global<T> {}

impl<T> Global<T> {
    /// Not yet built.
    pub const fn new() -> Self {
        Self {
            value: UnsafeCell::new(MaybeUninit::uninit()),
            state: AtomicU8::new(UNINIT),
        }
    }

    /// Builds the value.
    ///
    /// # Panics
    /// If it was built already.
    pub fn init(&self, value: T) {
        assert!(
            self.state
                .compare_exchange(UNINIT, BUSY, Ordering::Acquire, Ordering::Relaxed)
                .is_ok(),
            "global initialised twice"
        );
        // SAFETY: BUSY, so no reference to the value exists and no one else
        // writes it.
        unsafe { (*self.value.get()).write(value) };
        self.state.store(READY, Ordering::Release);
    }

    /// Whether the value has been built.
    pub fn is_ready(&self) -> bool {
        self.state.load(Ordering::Acquire) == READY
    }

    /// The value.
    ///
    /// # Panics
    /// If it has not been built.
    pub fn get(&self) -> &T {
        assert!(self.is_ready(), "global used before initialisation");
        // SAFETY: READY, so the value was written and is never written again.
        unsafe { (*self.value.get()).assume_init_ref() }
    }
}
