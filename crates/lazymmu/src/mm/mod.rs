//! The MM neighbours of lazy MMU mode (DESIGN.md §5): mechanisms that live
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
//! key register, account a shared cache-line access). The simulator
//! implements those traits with a model and counts what they cost; a kernel
//! implements them with real instructions. [`testing`] has a small machine
//! for unit tests and examples.

pub mod active_mm;
pub mod kernel_sync;
pub mod pkey_window;
pub mod testing;

use core::fmt;

/// Index of a CPU. The model supports up to [`MAX_CPUS`] CPUs, the width of
/// a [`CpuMask`].
pub type CpuId = usize;

/// The number of CPUs a [`CpuMask`] can name.
pub const MAX_CPUS: usize = 64;

/// A set of CPUs, bit `n` for CPU `n` (Linux's `struct cpumask`, limited to
/// 64 CPUs, the largest machine the simulator models).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CpuMask(pub u64);

impl CpuMask {
    /// No CPU.
    pub const EMPTY: CpuMask = CpuMask(0);

    /// The mask holding only `cpu`.
    ///
    /// # Panics
    /// If `cpu >= MAX_CPUS`.
    pub const fn single(cpu: CpuId) -> CpuMask {
        assert!(cpu < MAX_CPUS, "CPU index beyond the mask");
        CpuMask(1 << cpu)
    }

    /// CPUs `0..n`.
    pub const fn first(n: usize) -> CpuMask {
        if n >= MAX_CPUS {
            CpuMask(u64::MAX)
        } else {
            CpuMask((1u64 << n) - 1)
        }
    }

    /// Whether `cpu` is in the set.
    pub const fn contains(self, cpu: CpuId) -> bool {
        cpu < MAX_CPUS && self.0 & (1 << cpu) != 0
    }

    /// The set with `cpu` added.
    pub const fn with(self, cpu: CpuId) -> CpuMask {
        CpuMask(self.0 | CpuMask::single(cpu).0)
    }

    /// The set with `cpu` removed.
    pub const fn without(self, cpu: CpuId) -> CpuMask {
        CpuMask(self.0 & !CpuMask::single(cpu).0)
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Number of CPUs in the set.
    pub const fn count(self) -> u32 {
        self.0.count_ones()
    }

    /// The CPUs in the set, lowest first.
    pub fn iter(self) -> impl Iterator<Item = CpuId> {
        let mut bits = self.0;
        core::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let cpu = bits.trailing_zeros() as CpuId;
            bits &= bits - 1;
            Some(cpu)
        })
    }
}

impl fmt::Debug for CpuMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

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
    /// Store or atomic read-modify-write: needs the line exclusive.
    Write,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_name_their_cpus() {
        let mask = CpuMask::EMPTY.with(0).with(5).with(63);
        assert_eq!(mask.iter().collect::<Vec<_>>(), [0, 5, 63]);
        assert_eq!(mask.count(), 3);
        assert!(mask.contains(63) && !mask.contains(64) && !mask.contains(1));
        assert_eq!(mask.without(5).without(5), CpuMask::EMPTY.with(0).with(63));
        assert_eq!(CpuMask::first(3), CpuMask(0b111));
        assert_eq!(CpuMask::first(64), CpuMask(u64::MAX));
        assert!(CpuMask::first(0).is_empty());
    }
}
