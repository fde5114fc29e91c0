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
use core::sync::atomic::{AtomicU64, Ordering};

/// The largest number of CPUs a [`CpuMask`] names: CPU ids run from 0 to
/// `MAX_CPUS - 1` (Linux's `NR_CPUS`). Large enough for the 1,536 hardware
/// threads of a 16-socket SMT8 POWER8 and for 2,048-CPU machines; lazy TLB
/// (`mm::active_mm`) works up to it. Backends keep per-CPU batch state for
/// fewer ([`MAX_BACKEND_CPUS`](crate::backend::machine::MAX_BACKEND_CPUS)).
pub const MAX_CPUS: usize = 2048;

/// 64-bit words in a [`CpuMask`].
const MASK_WORDS: usize = MAX_CPUS / 64;

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

/// A set of CPUs (Linux's `struct cpumask`): who a TLB flush must reach,
/// which CPUs use an address space (`mm_cpumask`). A bitmap of
/// [`MAX_CPUS`] bits, one per CPU id; a value, so that a mask can be
/// copied out of shared state and iterated without holding anything.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CpuMask([u64; MASK_WORDS]);

impl CpuMask {
    /// No CPU.
    pub const EMPTY: CpuMask = CpuMask([0; MASK_WORDS]);

    /// The mask holding CPU `n` for every bit `n` set in `bits` (CPUs 0 to
    /// 63: what a kernel with a one-word mask of its own hands over).
    #[inline]
    pub const fn from_bits(bits: u64) -> CpuMask {
        let mut words = [0; MASK_WORDS];
        words[0] = bits;
        CpuMask(words)
    }

    /// The mask as one word, bit `n` for CPU `n`, when every CPU in it is
    /// below 64 (for a kernel whose own masks are one word); `None`
    /// otherwise.
    #[inline]
    pub fn to_bits(&self) -> Option<u64> {
        self.0[1..].iter().all(|&w| w == 0).then_some(self.0[0])
    }

    /// The mask's 64-bit words, CPU `64 * w + b` in bit `b` of word `w`.
    #[inline]
    pub const fn words(&self) -> &[u64; MASK_WORDS] {
        &self.0
    }

    /// The mask holding only `cpu`.
    ///
    /// # Panics
    /// If `cpu` is not below [`MAX_CPUS`].
    #[inline]
    pub const fn single(cpu: CpuId) -> CpuMask {
        CpuMask::EMPTY.with(cpu)
    }

    /// CPUs `0..n` (every CPU when `n >= MAX_CPUS`).
    #[inline]
    pub const fn first(n: usize) -> CpuMask {
        let n = if n > MAX_CPUS { MAX_CPUS } else { n };
        let mut words = [0; MASK_WORDS];
        let mut w = 0;
        while w < n / 64 {
            words[w] = u64::MAX;
            w += 1;
        }
        if n % 64 != 0 {
            words[n / 64] = (1u64 << (n % 64)) - 1;
        }
        CpuMask(words)
    }

    /// Whether `cpu` is in the set.
    #[inline]
    pub const fn contains(&self, cpu: CpuId) -> bool {
        let i = cpu.index();
        i < MAX_CPUS && self.0[i / 64] & (1 << (i % 64)) != 0
    }

    /// The set with `cpu` added.
    ///
    /// # Panics
    /// If `cpu` is not below [`MAX_CPUS`].
    #[inline]
    pub const fn with(mut self, cpu: CpuId) -> CpuMask {
        let i = cpu.index();
        assert!(i < MAX_CPUS, "CPU index beyond the mask");
        self.0[i / 64] |= 1 << (i % 64);
        self
    }

    /// Adds `cpu` in place.
    ///
    /// # Panics
    /// If `cpu` is not below [`MAX_CPUS`].
    #[inline]
    pub fn insert(&mut self, cpu: CpuId) {
        let i = cpu.index();
        assert!(i < MAX_CPUS, "CPU index beyond the mask");
        self.0[i / 64] |= 1 << (i % 64);
    }

    /// The set with `cpu` removed.
    #[inline]
    pub const fn without(mut self, cpu: CpuId) -> CpuMask {
        let i = cpu.index();
        if i < MAX_CPUS {
            self.0[i / 64] &= !(1 << (i % 64));
        }
        self
    }

    /// The CPUs in both sets.
    #[inline]
    pub const fn and(mut self, other: CpuMask) -> CpuMask {
        let mut w = 0;
        while w < MASK_WORDS {
            self.0[w] &= other.0[w];
            w += 1;
        }
        self
    }

    /// Whether the set is empty.
    #[inline]
    pub const fn is_empty(&self) -> bool {
        let mut w = 0;
        while w < MASK_WORDS {
            if self.0[w] != 0 {
                return false;
            }
            w += 1;
        }
        true
    }

    /// Number of CPUs in the set.
    #[inline]
    pub const fn count(&self) -> u32 {
        let mut n = 0;
        let mut w = 0;
        while w < MASK_WORDS {
            n += self.0[w].count_ones();
            w += 1;
        }
        n
    }

    /// The CPUs in the set, lowest first.
    pub fn iter(self) -> impl Iterator<Item = CpuId> {
        let mut word = 0;
        let mut bits = self.0[0];
        core::iter::from_fn(move || loop {
            if bits != 0 {
                let cpu = CpuId((word * 64) as u32 + bits.trailing_zeros());
                bits &= bits - 1;
                return Some(cpu);
            }
            word += 1;
            if word == MASK_WORDS {
                return None;
            }
            bits = self.0[word];
        })
    }
}

impl fmt::Debug for CpuMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter().map(|c| c.0)).finish()
    }
}

/// A [`CpuMask`] that CPUs update concurrently (`mm_cpumask`): one atomic
/// word per 64 CPUs, so that setting or clearing a CPU touches only its
/// own word.
#[derive(Debug, Default)]
pub struct AtomicCpuMask([AtomicU64; MASK_WORDS]);

impl AtomicCpuMask {
    /// No CPU.
    pub const fn new() -> Self {
        AtomicCpuMask([const { AtomicU64::new(0) }; MASK_WORDS])
    }

    /// A snapshot of the set (each word loaded with `order`).
    pub fn load(&self, order: Ordering) -> CpuMask {
        let mut words = [0; MASK_WORDS];
        for (word, atomic) in words.iter_mut().zip(&self.0) {
            *word = atomic.load(order);
        }
        CpuMask(words)
    }

    /// Whether `cpu` is in the set (one word loaded).
    pub fn contains(&self, cpu: CpuId, order: Ordering) -> bool {
        let i = cpu.index();
        i < MAX_CPUS && self.0[i / 64].load(order) & (1 << (i % 64)) != 0
    }

    /// Adds `cpu` (`cpumask_set_cpu()`: an atomic OR of its word).
    ///
    /// # Panics
    /// If `cpu` is not below [`MAX_CPUS`].
    pub fn insert(&self, cpu: CpuId, order: Ordering) {
        let i = cpu.index();
        assert!(i < MAX_CPUS, "CPU index beyond the mask");
        self.0[i / 64].fetch_or(1 << (i % 64), order);
    }

    /// Replaces the mask with `mask` word by word (`cpumask_copy()`: not
    /// one atomic step, as in Linux).
    pub fn store(&self, mask: CpuMask, order: Ordering) {
        for (word, value) in self.0.iter().zip(mask.words()) {
            word.store(*value, order);
        }
    }

    /// Removes `cpu` (`cpumask_clear_cpu()`: an atomic AND of its word).
    pub fn remove(&self, cpu: CpuId, order: Ordering) {
        let i = cpu.index();
        if i < MAX_CPUS {
            self.0[i / 64].fetch_and(!(1 << (i % 64)), order);
        }
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
        assert!(!mask.contains(CpuId::new(MAX_CPUS)));
        assert_eq!(
            mask.without(CpuId(5)).without(CpuId(5)),
            CpuMask::EMPTY.with(CpuId(0)).with(CpuId(63))
        );
        assert_eq!(CpuMask::first(3), CpuMask::from_bits(0b111));
        assert_eq!(CpuMask::first(64), CpuMask::from_bits(u64::MAX));
        assert!(CpuMask::first(0).is_empty());
        assert_eq!(mask.and(CpuMask::first(6)), CpuMask::from_bits(0b10_0001));
    }

    #[test]
    fn masks_reach_every_cpu_id() {
        let last = CpuId::new(MAX_CPUS - 1);
        let mask = CpuMask::single(CpuId(64))
            .with(CpuId(1000))
            .with(last)
            .with(CpuId(3));
        assert_eq!(
            mask.iter().collect::<Vec<_>>(),
            [CpuId(3), CpuId(64), CpuId(1000), last]
        );
        assert_eq!(mask.count(), 4);
        assert_eq!(mask.words()[1], 1);
        assert_eq!(mask.to_bits(), None);
        assert_eq!(CpuMask::from_bits(0b1010).to_bits(), Some(0b1010));
        assert_eq!(CpuMask::first(MAX_CPUS).count(), MAX_CPUS as u32);
        assert_eq!(CpuMask::first(MAX_CPUS + 5), CpuMask::first(MAX_CPUS));
        assert_eq!(CpuMask::first(130).count(), 130);
        assert!(
            CpuMask::first(130).contains(CpuId(129)) && !CpuMask::first(130).contains(CpuId(130))
        );
        assert_eq!(mask.and(CpuMask::first(1001)).count(), 3);
        assert_eq!(mask.without(last).without(CpuId::new(MAX_CPUS)).count(), 3);
    }

    #[test]
    #[should_panic(expected = "CPU index beyond the mask")]
    fn a_mask_refuses_a_cpu_beyond_it() {
        let _ = CpuMask::single(CpuId::new(MAX_CPUS));
    }

    #[test]
    fn the_atomic_mask_sets_and_clears_single_cpus() {
        let mask = AtomicCpuMask::new();
        mask.insert(CpuId(2), Ordering::Relaxed);
        mask.insert(CpuId(1535), Ordering::Relaxed);
        assert!(mask.contains(CpuId(1535), Ordering::Relaxed));
        assert!(!mask.contains(CpuId(1534), Ordering::Relaxed));
        assert_eq!(
            mask.load(Ordering::Relaxed),
            CpuMask::single(CpuId(2)).with(CpuId(1535))
        );
        mask.remove(CpuId(2), Ordering::Relaxed);
        mask.remove(CpuId::new(MAX_CPUS), Ordering::Relaxed);
        assert_eq!(mask.load(Ordering::Relaxed), CpuMask::single(CpuId(1535)));
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
