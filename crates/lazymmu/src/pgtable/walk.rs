//! The hardware walker: translates a virtual address by reading
//! page-table memory directly, as the MMU does (not through a backend, so
//! it sees exactly what is in memory, batched writes excluded).
//!
//! The simulator fills its TLBs with it, and tests compare range operations
//! against a model with it.

use core::fmt;

use crate::addr::{PageSize, PhysAddr, VirtAddr};
use crate::pgtable::format::{entries, entry_shift, index, Attributes, Entry, Format};
use crate::pgtable::memory::PageTableMemory;
use crate::pgtable::ops::VaRange;

/// A successful translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// The physical address `va` translates to.
    pub phys: PhysAddr,
    /// Size of the page holding it.
    pub size: PageSize,
    /// First physical address of that page.
    pub page: PhysAddr,
    /// The leaf's attributes.
    pub attrs: Attributes,
    /// The raw leaf entry.
    pub raw: u64,
    /// Physical address of the leaf entry.
    pub entry: PhysAddr,
}

/// Why a translation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TranslateError {
    /// `va` is not canonical for the format.
    NotCanonical {
        /// The address.
        va: VirtAddr,
    },
    /// `va` is in a half the tree does not translate
    /// ([`PageTables::translate`](crate::pgtable::ops::PageTables::translate)).
    WrongHalf {
        /// The address.
        va: VirtAddr,
        /// What the tree translates.
        range: VaRange,
    },
    /// The walk found an absent entry at `level`.
    NotMapped {
        /// The address.
        va: VirtAddr,
        /// Level of the absent entry.
        level: u8,
    },
}

impl fmt::Display for TranslateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            TranslateError::NotCanonical { va } => {
                write!(f, "{:#x} is not a canonical address", va.0)
            }
            TranslateError::WrongHalf { va, range } => {
                write!(f, "{:#x} is outside the {range} the tree translates", va.0)
            }
            TranslateError::NotMapped { va, level } => write!(
                f,
                "{:#x} is not mapped: the level-{level} entry is absent",
                va.0
            ),
        }
    }
}

impl core::error::Error for TranslateError {}

/// Translates `va` through the tree at `root`.
///
/// # Errors
/// [`TranslateError::NotCanonical`] for an address the format cannot
/// translate, [`TranslateError::NotMapped`] when the walk meets an absent
/// entry.
pub fn translate<F: Format, M: PageTableMemory + ?Sized>(
    memory: &M,
    root: PhysAddr,
    va: VirtAddr,
) -> Result<Translation, TranslateError> {
    if !F::is_canonical(va.0) {
        return Err(TranslateError::NotCanonical { va });
    }
    let mut table = root;
    let mut level = F::LEVELS;
    loop {
        let entry = table.add(8 * index::<F>(va.0, level) as u64);
        let raw = memory.read(entry);
        match F::decode(raw, level) {
            Entry::Absent => return Err(TranslateError::NotMapped { va, level }),
            Entry::Table(next) if level > 1 => {
                table = next;
                level -= 1;
            }
            Entry::Table(_) => return Err(TranslateError::NotMapped { va, level }),
            Entry::Leaf { phys, size, attrs } => {
                let offset = va.0 & (size.bytes() - 1);
                return Ok(Translation {
                    phys: phys.add(offset),
                    size,
                    page: phys,
                    attrs,
                    raw,
                    entry,
                });
            }
        }
    }
}

/// One leaf found by [`for_each_leaf`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// Canonical virtual address of the page.
    pub va: VirtAddr,
    /// First physical address.
    pub phys: PhysAddr,
    /// Page size.
    pub size: PageSize,
    /// Attributes.
    pub attrs: Attributes,
}

/// Calls `f` for every leaf of the tree at `root`, in address order.
/// `high` selects how addresses are made canonical: the upper half (x86
/// kernel half, AArch64 TTBR1) when true. On x86 the upper half lives in
/// the top half of the same tree and comes out with its canonical
/// sign-extended addresses whatever `high` says.
pub fn for_each_leaf<F: Format, M: PageTableMemory + ?Sized>(
    memory: &M,
    root: PhysAddr,
    high: bool,
    f: impl FnMut(Leaf),
) {
    for_each_leaf_in::<F, M>(memory, root, high, 0, 1u64 << F::VA_BITS, f);
}

/// [`for_each_leaf`] for the leaves whose entries start in `[start, end)`
/// of the addresses the root translates (masked to the format's bits;
/// `start` and `end` aligned to a top-level entry).
pub(crate) fn for_each_leaf_in<F: Format, M: PageTableMemory + ?Sized>(
    memory: &M,
    root: PhysAddr,
    high: bool,
    start: u64,
    end: u64,
    mut f: impl FnMut(Leaf),
) {
    fn visit<F: Format, M: PageTableMemory + ?Sized>(
        memory: &M,
        table: PhysAddr,
        level: u8,
        base: u64,
        (start, end): (u64, u64),
        high: bool,
        f: &mut dyn FnMut(Leaf),
    ) {
        for i in 0..entries::<F>(level) {
            let va = base | ((i as u64) << entry_shift::<F>(level));
            if level == F::LEVELS && (va < start || va >= end) {
                continue;
            }
            match F::decode(memory.read(table.add(8 * i as u64)), level) {
                Entry::Absent => {}
                Entry::Table(next) if level > 1 => {
                    visit::<F, M>(memory, next, level - 1, va, (start, end), high, f)
                }
                Entry::Table(_) => {}
                Entry::Leaf { phys, size, attrs } => f(Leaf {
                    va: VirtAddr(canonical::<F>(va, high)),
                    phys,
                    size,
                    attrs,
                }),
            }
        }
    }
    visit::<F, M>(memory, root, F::LEVELS, 0, (start, end), high, &mut f);
}

/// The canonical form of `va`, an address masked to the format's bits.
#[inline]
pub(crate) fn canonical<F: Format>(va: u64, high: bool) -> u64 {
    let mask = F::va_mask();
    let sign = va >> (F::VA_BITS - 1) & 1;
    // x86: sign-extend the top translated bit. AArch64 (whose roots each
    // translate all 48 bits): extend by which root this is.
    if (F::SHARED_ROOT && sign == 1) || (!F::SHARED_ROOT && high) {
        va | !mask
    } else {
        va
    }
}
