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
