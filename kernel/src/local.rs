//! CPU-local globals for a kernel with one CPU and no threads.

use core::cell::Cell;

/// A `Cell` that may live in a `static`: the kernel runs on one CPU, and an
/// interrupt handler only runs between two instructions of the code it
/// interrupts, so a `get` or `set` of a `Copy` value is never torn and no
/// reference into the cell ever escapes.
pub struct Local<T: Copy>(Cell<T>);

// SAFETY: one CPU, and `Cell` of a `Copy` value hands out no references; see
// the type's documentation.
unsafe impl<T: Copy> Sync for Local<T> {}

impl<T: Copy> Local<T> {
    /// A cell holding `value`.
    pub const fn new(value: T) -> Self {
        Self(Cell::new(value))
    }

    /// The value. A volatile read: an interrupt handler may have changed
    /// it since the compiler last looked.
    #[inline]
    pub fn get(&self) -> T {
        // SAFETY: the pointer comes from a live `Cell`, is aligned, and no
        // reference into the cell exists (see the type's documentation).
        unsafe { self.0.as_ptr().read_volatile() }
    }

    /// Replaces the value (a volatile write, for the same reason).
    #[inline]
    pub fn set(&self, value: T) {
        // SAFETY: as in `get`.
        unsafe { self.0.as_ptr().write_volatile(value) }
    }
}

impl Local<u64> {
    /// Adds one.
    #[inline]
    pub fn increment(&self) {
        self.set(self.get() + 1)
    }
}

impl<T: Copy + core::fmt::Debug> core::fmt::Debug for Local<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.get().fmt(f)
    }
}

/// A value built once at boot and then shared for the rest of the run
/// (the backend and the lazy mode, whose constructors are not `const`).
pub struct Global<T> {
    value: core::cell::UnsafeCell<core::mem::MaybeUninit<T>>,
    ready: Local<bool>,
}

// SAFETY: one CPU. The value is written once, before `ready` is set, and only
// shared references are handed out after that; the library types stored here
// use `Cell`s designed for re-entry from interrupt handlers on one CPU.
unsafe impl<T> Sync for Global<T> {}

impl<T> Global<T> {
    /// Not yet built.
    pub const fn new() -> Self {
        Self {
            value: core::cell::UnsafeCell::new(core::mem::MaybeUninit::uninit()),
            ready: Local::new(false),
        }
    }

    /// Builds the value.
    ///
    /// # Panics
    /// If it was built already.
    pub fn init(&self, value: T) {
        assert!(!self.ready.get(), "global initialised twice");
        // SAFETY: not ready, so no reference to the value exists yet.
        unsafe { (*self.value.get()).write(value) };
        self.ready.set(true);
    }

    /// Whether the value has been built.
    pub fn is_ready(&self) -> bool {
        self.ready.get()
    }

    /// The value.
    ///
    /// # Panics
    /// If it has not been built.
    pub fn get(&self) -> &T {
        assert!(self.ready.get(), "global used before initialisation");
        // SAFETY: ready, so the value was written and is never written again.
        unsafe { (*self.value.get()).assume_init_ref() }
    }
}
