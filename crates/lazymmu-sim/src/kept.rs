//! What a run leaves behind for the next one on the same thread.
//!
//! Exploration builds a machine for every schedule, hundreds of thousands
//! of them per scenario. Whatever costs the host kernel work to get
//! (memory the allocator maps and unmaps, coroutine stacks with guard
//! pages) is handed back here when a run is done with it, and the next
//! run takes it instead of a new one.

use core::cell::RefCell;
use std::thread::LocalKey;

/// A per-thread pool of at most `limit` things of type `T`.
pub(crate) struct Kept<T: 'static> {
    /// The thread's pool.
    pub(crate) pool: &'static LocalKey<RefCell<Vec<T>>>,
    /// How many it keeps; more are dropped.
    pub(crate) limit: usize,
}

impl<T> Kept<T> {
    /// One of the kept things that `fits`, taken out of the pool.
    pub(crate) fn take(&self, fits: impl Fn(&T) -> bool) -> Option<T> {
        self.pool
            .try_with(|pool| {
                let mut pool = pool.borrow_mut();
                let i = pool.iter().position(fits)?;
                Some(pool.swap_remove(i))
            })
            .ok()
            .flatten()
    }

    /// Keeps `thing` for a later [`Kept::take`] on this thread, unless the
    /// pool is full or the thread is being torn down (then it is dropped).
    pub(crate) fn keep(&self, thing: T) {
        let _ = self.pool.try_with(|pool| {
            let mut pool = pool.borrow_mut();
            if pool.len() < self.limit {
                pool.push(thing);
            }
        });
    }
}
