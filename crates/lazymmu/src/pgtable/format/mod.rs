//! Page-table formats as zero-sized types, and the arch-neutral view of an
//! entry that lets walkers be written once.
//!
//! A format knows how many levels its tree has, how many index bits each
//! level's tables take, how many virtual-address bits it translates, and
//! how to encode and decode one 8-byte entry. Levels are numbered from the
//! bottom, as in [`EntryUpdate::level`]: level 1 holds 4 KiB leaves (PTE
//! table); on x86-64 and AArch64 (9 index bits a level) level 2 holds 2 MiB
//! blocks (PMD), level 3 holds 1 GiB blocks (PUD), level 4 is the top of a
//! 4-level tree and level 5 the top of a 5-level tree. s390's page tables
//! have 256 entries ([`S390`]), so there level 2 covers 1 MiB.
//!
//! ```
//! use lazymmu::addr::{PageSize, PhysAddr};
//! use lazymmu::pgtable::format::{Attributes, Entry, Format, X86_64};
//! let attrs = Attributes::kernel_data();
//! let raw = X86_64::encode_leaf(PhysAddr(0x20_0000), PageSize::Size2M, attrs);
//! assert_eq!(raw & (1 << 7), 1 << 7); // PS: a 2 MiB page
//! assert_eq!(
//!     X86_64::decode(raw, 2),
//!     Entry::Leaf { phys: PhysAddr(0x20_0000), size: PageSize::Size2M, attrs }
//! );
//! ```
//!
//! [`EntryUpdate::level`]: crate::backend::EntryUpdate::level

pub mod aarch64;
pub mod ppc_hash;
pub mod s390;
pub mod sparc64;
pub mod x86;

pub use aarch64::{Aarch64, AARCH64_MAIR};
pub use ppc_hash::PpcHash4K;
pub use s390::S390;
pub use sparc64::Sparc64Sun4v;
pub use x86::{X86_64_5Level, X86_64};

use crate::addr::{PageSize, PhysAddr};

/// Cacheability of a mapping, converted per format.
///
/// x86-64 encodes it in PWT/PCD (and PAT) and this crate assumes the
/// power-on PAT (Intel SDM Vol. 3A, chapter "Memory Cache Control",
/// "Programming the PAT": after reset entries 0–3 are WB, WT, UC-, UC).
/// AArch64 encodes an index into MAIR_EL1 and this crate defines the MAIR
/// layout it assumes, [`AARCH64_MAIR`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MemoryType {
    /// Normal write-back memory.
    #[default]
    WriteBack,
    /// Normal write-through memory.
    WriteThrough,
    /// Normal memory, not cached (x86 UC-, AArch64 Normal Non-cacheable).
    Uncached,
    /// Device memory: uncached, no speculation, no merging (x86 UC,
    /// AArch64 Device-nGnRnE).
    Device,
}

/// Arch-neutral attributes of a leaf entry.
///
/// [`Attributes::default()`] is [`Attributes::kernel_data()`]: what a
/// kernel maps most, and a leaf the hardware can use at once (the accessed
/// flag set, so that AArch64's first access does not fault for want of
/// AF, and dirty set, so that x86 does not write the entry back on the
/// first store).
///
/// ```
/// use lazymmu::addr::{PageSize, PhysAddr};
/// use lazymmu::pgtable::format::{aarch64, Aarch64, Attributes, Format};
/// let raw = Aarch64::encode_leaf(PhysAddr(0x4000_0000), PageSize::Size4K, Attributes::default());
/// assert_ne!(raw & aarch64::ACCESS_FLAG, 0);
/// assert_eq!(Attributes::default(), Attributes::kernel_data());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Attributes {
    /// Writes are allowed.
    pub writable: bool,
    /// User mode may access the page.
    pub user: bool,
    /// Instructions may be fetched (at the privilege the page belongs to).
    pub executable: bool,
    /// The translation is shared by every address space (x86 G, AArch64
    /// not-nG).
    pub global: bool,
    /// The page has been written (x86 D; AArch64 software dirty bit).
    pub dirty: bool,
    /// The page has been accessed (x86 A, AArch64 AF). On AArch64 a leaf
    /// without AF faults on its first access unless the CPU manages the
    /// flag in hardware (FEAT_HAFDBS with TCR_ELx.HA set); Linux maps with
    /// AF set (`PROT_DEFAULT` includes `PTE_AF`).
    pub accessed: bool,
    /// Protection key (x86 PKU/PKS, 0–15) or POE index (AArch64, 0–7).
    /// Encoders keep only the bits the format has.
    pub key: u8,
    /// Cacheability.
    pub memory: MemoryType,
}

impl Default for Attributes {
    /// [`Attributes::kernel_data()`] (see the type's documentation).
    fn default() -> Self {
        Attributes::kernel_data()
    }
}

impl Attributes {
    /// Kernel read-write data: writable, global, accessed, dirty, not
    /// executable, write-back.
    pub const fn kernel_data() -> Self {
        Attributes {
            writable: true,
            user: false,
            executable: false,
            global: true,
            dirty: true,
            accessed: true,
            key: 0,
            memory: MemoryType::WriteBack,
        }
    }

    /// User read-write data (anonymous memory): writable, user, not
    /// executable, not global, accessed, clean, write-back.
    pub const fn user_data() -> Self {
        Attributes {
            writable: true,
            user: true,
            executable: false,
            global: false,
            dirty: false,
            accessed: true,
            key: 0,
            memory: MemoryType::WriteBack,
        }
    }

    /// The same attributes with `writable` cleared.
    pub const fn read_only(self) -> Self {
        Attributes {
            writable: false,
            ..self
        }
    }
}

/// The permissions a protection change sets; `None` keeps what each leaf
/// has. What is not a permission (the physical address, cacheability,
/// global, accessed and dirty) a protection change never touches.
///
/// This is the change Linux's `mprotect` makes with `pte_modify`, which
/// keeps the bits of `_PAGE_CHG_MASK` (x86:
/// arch/x86/include/asm/pgtable_types.h: the frame, PCD/PWT/PAT, accessed,
/// dirty, soft-dirty) and takes the rest from the new protection; arm64's
/// `pte_modify` (arch/arm64/include/asm/pgtable.h) replaces only `PTE_USER
/// | PTE_PXN | PTE_UXN | PTE_RDONLY | PTE_WRITE` and, with POE,
/// `PTE_PO_IDX_MASK`. Linux's new protection is the VMA's complete one, so
/// it also rewrites x86's G (always clear for user memory); here only the
/// fields asked for change.
///
/// ```
/// use lazymmu::pgtable::format::{Attributes, Protection};
/// let read_only = Protection::read_only();
/// assert_eq!(read_only.apply(Attributes::kernel_data()), Attributes::kernel_data().read_only());
/// let user_rx = Protection::read_only().execute(true).user(true);
/// assert!(user_rx.apply(Attributes::kernel_data()).executable);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Protection {
    /// Writes allowed (`Some(true)`), refused (`Some(false)`), or kept.
    pub writable: Option<bool>,
    /// Instruction fetches allowed, refused, or kept.
    pub executable: Option<bool>,
    /// User access allowed, refused, or kept.
    pub user: Option<bool>,
    /// The protection key (x86 PKU/PKS) or POE index (AArch64) to set, or
    /// kept (`pkey_mprotect`).
    pub key: Option<u8>,
}

impl Protection {
    /// Changes nothing.
    pub const KEEP: Protection = Protection {
        writable: None,
        executable: None,
        user: None,
        key: None,
    };

    /// Refuses writes, keeps the rest.
    pub const fn read_only() -> Self {
        Protection::KEEP.write(false)
    }

    /// Allows writes, keeps the rest.
    pub const fn writable() -> Self {
        Protection::KEEP.write(true)
    }

    /// The same change, with writes allowed or refused.
    pub const fn write(self, writable: bool) -> Self {
        Protection {
            writable: Some(writable),
            ..self
        }
    }

    /// The same change, with instruction fetches allowed or refused.
    pub const fn execute(self, executable: bool) -> Self {
        Protection {
            executable: Some(executable),
            ..self
        }
    }

    /// The same change, with user access allowed or refused.
    pub const fn user(self, user: bool) -> Self {
        Protection {
            user: Some(user),
            ..self
        }
    }

    /// The same change, with protection key `key`.
    pub const fn key(self, key: u8) -> Self {
        Protection {
            key: Some(key),
            ..self
        }
    }

    /// `attrs` with the permissions this sets.
    pub const fn apply(self, attrs: Attributes) -> Attributes {
        Attributes {
            writable: match self.writable {
                Some(writable) => writable,
                None => attrs.writable,
            },
            executable: match self.executable {
                Some(executable) => executable,
                None => attrs.executable,
            },
            user: match self.user {
                Some(user) => user,
                None => attrs.user,
            },
            key: match self.key {
                Some(key) => key,
                None => attrs.key,
            },
            ..attrs
        }
    }
}

/// The arch-neutral view of one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Entry {
    /// Not present: the walk stops with a translation fault.
    Absent,
    /// Points to the next-level table.
    Table(PhysAddr),
    /// Maps a page or block.
    Leaf {
        /// First physical address of the page.
        phys: PhysAddr,
        /// Page size (the level it sits at).
        size: PageSize,
        /// Its attributes.
        attrs: Attributes,
    },
}

/// log2 of the bytes one entry at `level` covers in format `F`: 12 plus
/// the index bits of the levels below.
#[inline]
pub fn entry_shift<F: Format>(level: u8) -> u32 {
    F::ENTRY_SHIFTS[level as usize]
}

/// Index of `va`'s entry in the table at `level` of format `F`.
#[inline]
pub fn index<F: Format>(va: u64, level: u8) -> usize {
    ((va >> entry_shift::<F>(level)) & ((1u64 << F::INDEX_BITS[level as usize - 1]) - 1)) as usize
}

/// Entries in a table at `level` of format `F`.
#[inline]
pub fn entries<F: Format>(level: u8) -> usize {
    1 << F::INDEX_BITS[level as usize - 1]
}

/// The level whose entries are leaves of `size` in format `F`, if it has
/// leaves of that size.
#[inline]
pub fn level_of<F: Format>(size: PageSize) -> Option<u8> {
    (1..=F::LEVELS).find(|&level| F::leaf_size(level) == Some(size))
}

/// The shift of an entry at each level for tables of `index_bits` (index 0
/// unused; level `n` at index `n`; one past the top: the bits a root
/// translates).
pub const fn entry_shifts(index_bits: [u32; 5]) -> [u32; 7] {
    let mut shifts = [0; 7];
    let mut level = 1;
    shifts[1] = 12;
    while level < 6 {
        shifts[level + 1] = shifts[level] + index_bits[level - 1];
        level += 1;
    }
    shifts
}

/// A page-table format: a zero-sized type with its constants and its
/// entry encoding.
///
/// Implementations must match the hardware bit for bit; the encodings are
/// cross-checked against the `x86_64` crate and the Linux headers named in
/// each format's module in the tests.
pub trait Format: Copy + Default + core::fmt::Debug + 'static {
    /// Short name (`x86-64`, `x86-64-la57`, `aarch64`, `ppc64-hash-4k`,
    /// `s390`, `sparc64-sun4v`).
    const NAME: &'static str;
    /// Levels in the tree (4 or 5).
    const LEVELS: u8;
    /// Index bits of the tables at each level, level 1 (the PTE table)
    /// first; entries past [`Format::LEVELS`] are unused. 9 everywhere
    /// with 4 KiB tables of 8-byte entries.
    const INDEX_BITS: [u32; 5] = [9; 5];
    /// What [`entry_shift`] returns, computed from
    /// [`Format::INDEX_BITS`] (not to be overridden).
    const ENTRY_SHIFTS: [u32; 7] = entry_shifts(Self::INDEX_BITS);
    /// Virtual-address bits one root translates (48 or 57). On x86-64 the
    /// two canonical halves share the root; on AArch64 each of TTBR0 and
    /// TTBR1 has its own root translating `VA_BITS` bits.
    const VA_BITS: u32;
    /// Bits of an entry that hold the next table's physical address.
    const TABLE_ADDRESS_MASK: u64;
    /// Whether both canonical halves translate through one root (x86-64:
    /// the upper half is the top half of the same tree, addresses
    /// sign-extended) rather than one root per half (AArch64 TTBR0/TTBR1).
    const SHARED_ROOT: bool;

    /// The bit that says a leaf was written (x86 D; AArch64 software dirty).
    const DIRTY_BIT: u64;
    /// The bit that says a leaf was accessed (x86 A; AArch64 AF).
    const ACCESSED_BIT: u64;

    /// Decodes the entry `raw` found in a table at `level`.
    fn decode(raw: u64, level: u8) -> Entry;

    /// The bits of a leaf of `size` with `attrs`, without its address:
    /// `leaf_template(size, attrs) | phys` is the entry. Range operations
    /// compute it once per run and OR addresses in.
    fn leaf_template(size: PageSize, attrs: Attributes) -> u64;

    /// Encodes a leaf mapping `phys` (aligned to `size`).
    #[inline]
    fn encode_leaf(phys: PhysAddr, size: PageSize, attrs: Attributes) -> u64 {
        Self::leaf_template(size, attrs) | (phys.0 & Self::leaf_address_mask(size))
    }

    /// Bits of a leaf of `size` that hold its physical address.
    fn leaf_address_mask(size: PageSize) -> u64;

    /// Encodes a pointer to the next-level table at `table`, placed at
    /// `level`. Table entries grant everything; leaves decide permissions.
    fn encode_table(table: PhysAddr, level: u8) -> u64;

    /// Whether `raw` is a valid (present) entry, at any level: the library
    /// tells valid entries from the value alone.
    fn is_valid(raw: u64) -> bool;

    /// The bits of a leaf that carry its permissions (write, execute, user,
    /// protection key): what [`Format::protect_leaf`] may change, the
    /// complement of Linux's `_PAGE_CHG_MASK` restricted to permissions.
    const PERMISSION_BITS: u64;

    /// The leaf `raw` found at `level`, with the permissions `protection`
    /// sets and every other bit as it was (Linux's `pte_modify`, see
    /// [`Protection`]); `raw` unchanged when it is not a leaf.
    #[inline]
    fn protect_leaf(raw: u64, level: u8, protection: Protection) -> u64 {
        let Entry::Leaf { size, attrs, .. } = Self::decode(raw, level) else {
            return raw;
        };
        let bits = Self::leaf_template(size, protection.apply(attrs));
        (raw & !Self::PERMISSION_BITS) | (bits & Self::PERMISSION_BITS)
    }

    /// Whether entries above the PTE level may be leaves (2 MiB and 1 GiB
    /// pages where an entry covers that much).
    const LARGE_LEAVES: bool = true;

    /// The page size a leaf at `level` maps, `None` where the format has no
    /// leaves: 4 KiB at level 1, and with [`Format::LARGE_LEAVES`] 2 MiB
    /// and 1 GiB at the levels whose entries cover those sizes.
    #[inline]
    fn leaf_size(level: u8) -> Option<PageSize> {
        match (level, entry_shift::<Self>(level)) {
            (1, _) => Some(PageSize::Size4K),
            (2 | 3, 21) if Self::LARGE_LEAVES => Some(PageSize::Size2M),
            (2 | 3, 30) if Self::LARGE_LEAVES => Some(PageSize::Size1G),
            _ => None,
        }
    }

    /// Whether `va` (canonical) lies in the upper, kernel half.
    #[inline]
    fn is_kernel(va: u64) -> bool {
        (va >> 63) != 0
    }

    /// Mask of the bits a root translates.
    #[inline]
    fn va_mask() -> u64 {
        (1u64 << Self::VA_BITS) - 1
    }

    /// Whether `va` is a canonical address this format can translate: with
    /// a shared root, sign-extended from the top translated bit (x86-64);
    /// with one root per half, the bits above [`Format::VA_BITS`] all clear
    /// or all set (AArch64 TTBR0/TTBR1 without tagging, TCR_ELx.TnSZ =
    /// 64 - `VA_BITS`).
    #[inline]
    fn is_canonical(va: u64) -> bool {
        let shift = 64 - Self::VA_BITS;
        if Self::SHARED_ROOT {
            (((va << shift) as i64) >> shift) as u64 == va
        } else {
            let top = va >> Self::VA_BITS;
            top == 0 || top == u64::MAX >> Self::VA_BITS
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry<F: Format>() {
        assert_eq!(
            entry_shift::<F>(F::LEVELS + 1),
            F::VA_BITS,
            "{}: the root translates VA_BITS",
            F::NAME
        );
        assert_eq!(entry_shift::<F>(1), 12, "{}: 4 KiB pages", F::NAME);
        assert_eq!(level_of::<F>(PageSize::Size4K), Some(1), "{}", F::NAME);
        for level in 1..=F::LEVELS {
            assert!(
                entries::<F>(level) * 8 <= 4096,
                "{}: tables fit a frame",
                F::NAME
            );
        }
    }

    #[test]
    fn every_format_translates_what_its_levels_index() {
        geometry::<X86_64>();
        geometry::<X86_64_5Level>();
        geometry::<Aarch64>();
        geometry::<PpcHash4K>();
        geometry::<S390>();
        geometry::<Sparc64Sun4v>();
        assert_eq!(level_of::<X86_64>(PageSize::Size1G), Some(3));
        assert_eq!(level_of::<S390>(PageSize::Size2M), None);
        assert_eq!(index::<X86_64>(0x0000_7fff_ffff_f000, 4), 255);
    }
}
