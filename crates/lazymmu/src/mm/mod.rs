//! The MM neighbours of lazy MMU mode (docs/design.md §5): mechanisms that live
//! next to page-table batching and share its constraints.
//!
//! - [`active_mm`]: address spaces with user and reference counts and a CPU
//!   mask; kernel threads borrow the previous address space (lazy TLB), under
//!   three lifetime and flush policies, with a use-after-free check.
//! - [`kernel_sync`]: the kernel half of every process's top-level table kept
//!   in step with a reference table, under four policies.
//! - [`pkey_window`]: nestable protection-key windows for device memory (PKS
//!   for persistent memory), with the nesting count per task or per CPU.
//!
//! Each mechanism is portable policy over a small trait of machine
//! operations (send an IPI, load a page-table root, free memory, write the
//! key register, account a shared cache-line access), each built on the
//! CPU vocabulary of [`crate::cpu`]. The simulator implements those traits
//! with a model and counts what they cost; a kernel implements them with
//! real instructions. With the `testing` feature, `testing` has a small
//! machine for unit tests and examples.

pub mod active_mm;
pub mod kernel_sync;
pub mod pkey_window;
#[cfg(feature = "testing")]
pub mod testing;

use crate::cpu::{CpuId, CpuMask};

/// A cache line that several CPUs write, named by what it holds. The
/// simulator keeps an owner per line and counts a transfer whenever a CPU
/// touches a line another CPU has modified (or writes one others share).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SharedLine {
    /// An address space's reference counts (`mm_users`, `mm_count`), which
    /// share a line in `struct mm_struct`.
    SpaceCount(crate::addr::SpaceId),
    /// An address space's CPU mask and flush generation (`mm_cpumask`,
    /// `context.tlb_gen`).
    SpaceCpumask(crate::addr::SpaceId),
    /// A CPU's lazy flag, which remote flushers read (x86 moved it to
    /// `cpu_tlbstate_shared` for exactly that reason).
    CpuLazy(CpuId),
}

/// A read or a write of a [`SharedLine`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LineAccess {
    /// Load: needs the line in shared state.
    Read,
    /// Plain store: needs the line exclusive.
    Write,
    /// Atomic read-modify-write (`atomic_inc()`, `set_bit()`): needs the
    /// line exclusive, and how the hardware gets it differs: x86 holds the
    /// line for a `lock`-prefixed instruction; powerpc loads it with
    /// `lwarx` and stores with `stwcx.`, which fails and retries when
    /// another CPU stored to the line in between (Power ISA Book II,
    /// "Atomic Update").
    Atomic,
}

/// Where a [`SharedLine`] is, for an embedder that counts its transfers
/// between CPUs (a MESI-style protocol reduced to what a transfer needs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(
    clippy::large_enum_variant,
    reason = "the sharers of a line are any of MAX_CPUS CPUs; an embedder updates the state in place"
)]
pub enum LineState {
    /// One CPU holds it exclusive (modified or about to be).
    Modified(CpuId),
    /// These CPUs hold it shared.
    Shared(CpuMask),
}

impl LineState {
    /// The state after `cpu` makes `access` to a line in `state` (`None`:
    /// no cache holds it), and whether the line had to come from another
    /// CPU's cache (a read of a line another CPU modified, or a write to a
    /// line another CPU holds).
    pub fn after(state: Option<LineState>, cpu: CpuId, access: LineAccess) -> (bool, LineState) {
        let mut state = state;
        let transfer = Self::access(&mut state, cpu, access);
        match state {
            Some(next) => (transfer, next),
            None => unreachable!("an access leaves the line in a cache"),
        }
    }

    /// [`LineState::after`] in place: updates `state` and returns whether
    /// the line had to come from another CPU's cache.
    pub fn access(state: &mut Option<LineState>, cpu: CpuId, access: LineAccess) -> bool {
        let exclusive = access != LineAccess::Read;
        match state {
            None => {
                *state = Some(if exclusive {
                    LineState::Modified(cpu)
                } else {
                    LineState::Shared(CpuMask::single(cpu))
                });
                false
            }
            Some(LineState::Modified(owner)) if *owner == cpu => false,
            Some(LineState::Modified(owner)) => {
                if !exclusive {
                    *state = Some(LineState::Shared(CpuMask::single(*owner).with(cpu)));
                } else {
                    *owner = cpu;
                }
                true
            }
            Some(LineState::Shared(holders)) => {
                if exclusive {
                    let others = holders.count() - u32::from(holders.contains(cpu)) > 0;
                    *state = Some(LineState::Modified(cpu));
                    others
                } else {
                    let transfer = !holders.contains(cpu);
                    holders.insert(cpu);
                    transfer
                }
            }
        }
    }
}
