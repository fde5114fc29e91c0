//! Coroutine stacks kept for the next run ([`crate::kept`]).
//!
//! Every task of a run, and every CPU of a timed run, executes on a
//! stackful coroutine. A fresh stack each time costs an `mmap`, a
//! guard-page `mprotect`, page faults on every stack page the run touches,
//! and an `munmap` whose TLB shootdown stops the other explorer thread's
//! core. A stack whose coroutine has finished (or been unwound) is kept
//! instead, and the next coroutine of the same stack size takes it.

use core::cell::RefCell;

use corosensei::stack::{DefaultStack, Stack};
use corosensei::Coroutine;

use crate::kept::Kept;

std::thread_local! {
    static STACKS: RefCell<Vec<DefaultStack>> = const { RefCell::new(Vec::new()) };
}

/// Stacks kept per thread: enough for every task and CPU of the largest
/// scenario, few enough that an idle explorer thread holds little memory.
const KEPT: Kept<DefaultStack> = Kept {
    pool: &STACKS,
    limit: 32,
};

fn size(stack: &DefaultStack) -> usize {
    stack.base().get() - stack.limit().get()
}

/// A stack of at least `bytes`: a kept one of that size, or a new one.
///
/// # Panics
/// When a new stack cannot be mapped.
pub(crate) fn take(bytes: usize) -> DefaultStack {
    KEPT.take(|s| size(s) >= bytes && size(s) < bytes.saturating_mul(2))
        .unwrap_or_else(|| DefaultStack::new(bytes).expect("mapping a coroutine stack"))
}

/// Unwinds `coroutine` if it has not finished and keeps its stack for
/// [`take`].
pub(crate) fn give<I, Y, R>(mut coroutine: Coroutine<I, Y, R, DefaultStack>) {
    coroutine.force_unwind();
    KEPT.keep(coroutine.into_stack());
}

#[cfg(test)]
mod tests {
    use super::*;
    use corosensei::{CoroutineResult, Yielder};

    #[test]
    fn a_stack_is_used_again_after_its_coroutine_ends_or_is_unwound() {
        let stack = take(64 << 10);
        let base = stack.base();
        let mut finished = Coroutine::with_stack(stack, |_: &Yielder<(), ()>, ()| 7);
        assert!(matches!(finished.resume(()), CoroutineResult::Return(7)));
        give(finished);
        let again = take(64 << 10);
        assert_eq!(again.base(), base, "the kept stack is handed out again");

        let mut suspended = Coroutine::with_stack(again, |y: &Yielder<(), ()>, ()| {
            let held = String::from("dropped by the unwind");
            y.suspend(());
            held.len()
        });
        assert!(matches!(suspended.resume(()), CoroutineResult::Yield(())));
        give(suspended);
        let kept = take(64 << 10);
        assert_eq!(kept.base(), base, "an unwound one is kept too");
        assert_ne!(take(64 << 10).base(), base, "each is handed out once");
    }
}
