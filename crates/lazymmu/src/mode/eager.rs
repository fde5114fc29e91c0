//! A lazy mode that never enters: every update and its side effects happen
//! at once. The baseline that measurements compare batching against, and
//! what a kernel built without lazy MMU support runs.

use super::{LazyMode, LazyState, Misuse, Step};

/// The eager baseline: sections open and close without calling the arch,
/// and the mode is never active, so backends apply every write at once.
///
/// ```
/// use lazymmu::mode::{eager::Eager, LazyMode};
/// let _section = Eager.section();
/// assert!(!Eager.is_active());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Eager;

impl LazyMode for Eager {
    type Token = ();

    fn enable(&self) -> Result<Step<()>, Misuse> {
        Ok(Step::NONE)
    }

    fn disable(&self, _token: ()) -> Result<Step<()>, Misuse> {
        Ok(Step::NONE)
    }

    fn pause_raw(&self) -> Result<Step<()>, Misuse> {
        Ok(Step::NONE)
    }

    fn resume(&self, _token: ()) -> Result<Step<()>, Misuse> {
        Ok(Step::NONE)
    }

    fn is_active(&self) -> bool {
        false
    }

    fn state(&self) -> LazyState {
        LazyState::IDLE
    }

    fn bytes_per_task(&self) -> usize {
        0
    }
}
