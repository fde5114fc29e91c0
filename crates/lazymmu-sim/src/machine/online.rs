//! The machine's CPUs as Linux has them: every CPU of the topology is
//! possible, and a CPU's state exists from the moment it first runs
//! (comes online) on. A possible CPU that never runs costs one empty slot,
//! so a 2,048-CPU machine on which 4 CPUs run holds the state of 4.
//!
//! Until a CPU comes online it is in its boot state ([`CpuState::boot`]):
//! its idle task current, the kernel's space loaded, an empty TLB, its
//! clock at 0. Queries about such a CPU answer from that state without
//! bringing it online; anything that changes a CPU brings it online.

use core::cell::OnceCell;

use super::CpuState;

/// The state of each possible CPU, allocated when the CPU first runs.
pub(crate) struct OnlineCpus {
    slots: Box<[OnceCell<Box<CpuState>>]>,
    /// Entries of a CPU's TLB, for the state of a CPU coming online.
    tlb_entries: usize,
    /// The key register's reset value, likewise.
    default_key: u64,
}

impl OnlineCpus {
    /// `possible` CPUs, none online.
    pub(crate) fn new(possible: usize, tlb_entries: usize, default_key: u64) -> Self {
        Self {
            slots: (0..possible).map(|_| OnceCell::new()).collect(),
            tlb_entries,
            default_key,
        }
    }

    /// Possible CPUs.
    pub(crate) fn possible(&self) -> usize {
        self.slots.len()
    }

    /// CPUs that came online.
    pub(crate) fn online(&self) -> usize {
        self.slots.iter().filter(|s| s.get().is_some()).count()
    }

    /// CPU `index`, brought online if it was not.
    #[inline]
    pub(crate) fn get(&self, index: usize) -> &CpuState {
        self.slots[index]
            .get_or_init(|| Box::new(CpuState::boot(index, self.tlb_entries, self.default_key)))
    }

    /// CPU `index` if it is online; `None` while it is in its boot state.
    #[inline]
    pub(crate) fn peek(&self, index: usize) -> Option<&CpuState> {
        self.slots[index].get().map(|b| &**b)
    }

    /// The online CPUs with their indices, in index order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (usize, &CpuState)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.get().map(|c| (i, &**c)))
    }
}
