//! What every layer of the library asks of the CPU it runs on: which CPU it
//! is, whether it is in interrupt context, preemption control, and (where
//! the hardware has one) the protection-key register; and the set of CPUs,
//! [`CpuMask`].
//!
//! [`Cpu`] is the base of every machine trait the library declares: the
//! lazy mode's [`Environment`](crate::mode::Environment), every backend's
//! primitives ([`CpuPrimitives`](crate::backend::machine::CpuPrimitives),
//! [`X86Primitives`](crate::backend::x86::X86Primitives)), lazy TLB's
//! [`MmMachine`](crate::mm::active_mm::MmMachine) and the protection-key
//! windows' [`PkeyMachine`](crate::mm::pkey_window::PkeyMachine). A kernel
//! implements it once per CPU view; the simulator implements it over its
//! model.

use core::fmt;

/// The largest number of CPUs a [`CpuMask`] names and a backend keeps
/// per-CPU state for.
pub const MAX_CPUS: usize = 64;

/// Index of a CPU, below [`MAX_CPUS`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct CpuId(pub u32);

impl CpuId {
    /// The CPU with index `index`.
    #[inline]
    pub const fn new(index: usize) -> Self {
        CpuId(index as u32)
    }

    /// The index, for per-CPU arrays.
    #[inline]
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Debug for CpuId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cpu{}", self.0)
    }
}

impl fmt::Display for CpuId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cpu{}", self.0)
    }
}

/// A set of CPUs (Linux's `struct cpumask`, limited to [`MAX_CPUS`]): who a
/// TLB flush must reach, which CPUs use an address space (`mm_cpumask`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CpuMask(u64);

impl CpuMask {
    /// No CPU.
    pub const EMPTY: CpuMask = CpuMask(0);

    /// The mask with bit `n` set for CPU `n` in `bits`.
    #[inline]
    pub const fn from_bits(bits: u64) -> CpuMask {
        CpuMask(bits)
    }

    /// Bit `n` set for CPU `n`.
    #[inline]
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// The mask holding only `cpu`.
    ///
    /// # Panics
    /// If `cpu` is not below [`MAX_CPUS`].
    #[inline]
    pub const fn single(cpu: CpuId) -> CpuMask {
        assert!(cpu.index() < MAX_CPUS, "CPU index beyond the mask");
        CpuMask(1 << cpu.0)
    }

    /// CPUs `0..n`.
    #[inline]
    pub const fn first(n: usize) -> CpuMask {
        if n >= MAX_CPUS {
            CpuMask(u64::MAX)
        } else {
            CpuMask((1u64 << n) - 1)
        }
    }

    /// Whether `cpu` is in the set.
    #[inline]
    pub const fn contains(self, cpu: CpuId) -> bool {
        cpu.index() < MAX_CPUS && self.0 & (1 << cpu.0) != 0
    }

    /// The set with `cpu` added.
    #[inline]
    pub const fn with(self, cpu: CpuId) -> CpuMask {
        CpuMask(self.0 | CpuMask::single(cpu).0)
    }

    /// The set with `cpu` removed.
    #[inline]
    pub const fn without(self, cpu: CpuId) -> CpuMask {
        CpuMask(self.0 & !CpuMask::single(cpu).0)
    }

    /// The CPUs in both sets.
    #[inline]
    pub const fn and(self, other: CpuMask) -> CpuMask {
        CpuMask(self.0 & other.0)
    }

    /// Whether the set is empty.
    #[inline]
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Number of CPUs in the set.
    #[inline]
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
            let cpu = CpuId(bits.trailing_zeros());
            bits &= bits - 1;
            Some(cpu)
        })
    }
}

impl fmt::Debug for CpuMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter().map(|c| c.0)).finish()
    }
}

/// The CPU the calling code runs on.
///
/// All methods take `&self`: the CPU is ambient (per-CPU data), and
/// interrupt handlers re-enter it.
pub trait Cpu {
    /// The CPU this call runs on. Stable only while preemption is disabled
    /// (or in interrupt context): a preemptible task may migrate between two
    /// calls.
    fn cpu_id(&self) -> CpuId;

    /// Whether the CPU is in interrupt context (hard or soft irq, NMI).
    fn in_interrupt(&self) -> bool;

    /// Disables preemption (nests): until the matching
    /// [`preempt_enable`](Cpu::preempt_enable) the task stays on this CPU.
    /// Linux's `preempt_disable()` (`get_cpu()`).
    fn preempt_disable(&self);

    /// Re-enables preemption; the point where a pending reschedule happens.
    fn preempt_enable(&self);

    /// Disables preemption until the guard is dropped.
    #[inline]
    fn preempt_guard(&self) -> PreemptGuard<'_, Self> {
        self.preempt_disable();
        PreemptGuard { cpu: self }
    }
}

impl<C: Cpu + ?Sized> Cpu for &C {
    #[inline]
    fn cpu_id(&self) -> CpuId {
        (**self).cpu_id()
    }
    #[inline]
    fn in_interrupt(&self) -> bool {
        (**self).in_interrupt()
    }
    #[inline]
    fn preempt_disable(&self) {
        (**self).preempt_disable()
    }
    #[inline]
    fn preempt_enable(&self) {
        (**self).preempt_enable()
    }
}

/// Preemption held off for the guard's life ([`Cpu::preempt_guard`]).
#[must_use = "dropping the guard at once re-enables preemption"]
pub struct PreemptGuard<'a, C: Cpu + ?Sized> {
    cpu: &'a C,
}

impl<C: Cpu + ?Sized> PreemptGuard<'_, C> {
    /// The CPU, which cannot change while the guard lives.
    #[inline]
    pub fn cpu_id(&self) -> CpuId {
        self.cpu.cpu_id()
    }
}

impl<C: Cpu + ?Sized> Drop for PreemptGuard<'_, C> {
    #[inline]
    fn drop(&mut self) {
        self.cpu.preempt_enable();
    }
}

/// The supervisor protection-key register of the CPU (x86 `IA32_PKRS`,
/// arm64 `POR_EL1`), as a raw value; what each bit means is the user's
/// business ([`crate::backend::protected::KeyFlavour`],
/// [`crate::mm::pkey_window::Pkrs`]).
pub trait KeyRegister: Cpu {
    /// Reads the register.
    fn read_key(&self) -> u64;
    /// Writes the register. On arm64 the write takes effect after the
    /// context synchronisation an implementation issues with it.
    fn write_key(&self, value: u64);
}

impl<K: KeyRegister + ?Sized> KeyRegister for &K {
    #[inline]
    fn read_key(&self) -> u64 {
        (**self).read_key()
    }
    #[inline]
    fn write_key(&self, value: u64) {
        (**self).write_key(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_name_their_cpus() {
        let mask = CpuMask::EMPTY.with(CpuId(0)).with(CpuId(5)).with(CpuId(63));
        assert_eq!(
            mask.iter().collect::<Vec<_>>(),
            [CpuId(0), CpuId(5), CpuId(63)]
        );
        assert_eq!(mask.count(), 3);
        assert!(mask.contains(CpuId(63)) && !mask.contains(CpuId(64)) && !mask.contains(CpuId(1)));
        assert_eq!(
            mask.without(CpuId(5)).without(CpuId(5)),
            CpuMask::EMPTY.with(CpuId(0)).with(CpuId(63))
        );
        assert_eq!(CpuMask::first(3), CpuMask::from_bits(0b111));
        assert_eq!(CpuMask::first(64), CpuMask::from_bits(u64::MAX));
        assert!(CpuMask::first(0).is_empty());
        assert_eq!(mask.and(CpuMask::first(6)).bits(), 0b10_0001);
    }

    struct Counter(core::cell::Cell<u32>);
    impl Cpu for Counter {
        fn cpu_id(&self) -> CpuId {
            CpuId(2)
        }
        fn in_interrupt(&self) -> bool {
            false
        }
        fn preempt_disable(&self) {
            self.0.set(self.0.get() + 1)
        }
        fn preempt_enable(&self) {
            self.0.set(self.0.get() - 1)
        }
    }

    #[test]
    fn the_guard_holds_preemption_off_for_its_life() {
        let cpu = Counter(core::cell::Cell::new(0));
        {
            let guard = cpu.preempt_guard();
            assert_eq!(guard.cpu_id(), CpuId(2));
            assert_eq!(cpu.0.get(), 1);
            let _inner = cpu.preempt_guard();
            assert_eq!(cpu.0.get(), 2);
        }
        assert_eq!(cpu.0.get(), 0);
    }
}
