//! powerpc book3s64 with the hash MMU and 4 KiB pages: the Linux page
//! table the hash-fault handler reads to fill the hashed page table (HPT),
//! whose entries the backend invalidates.
//!
//! Sources: arch/powerpc/include/asm/book3s/64/pgtable.h (`_PAGE_EXEC`
//! 0x1, `_PAGE_WRITE` 0x2, `_PAGE_READ` 0x4, `_PAGE_PRIVILEGED` 0x8,
//! `_PAGE_NON_IDEMPOTENT` 0x20, `_PAGE_TOLERANT` 0x30, `_PAGE_DIRTY` 0x80,
//! `_PAGE_ACCESSED` 0x100, `_RPAGE_PKEY_BIT4` `1 << 60`, `_PAGE_PTE`
//! `1 << 62`, `_PAGE_PRESENT` `1 << 63`, `_PAGE_PA_MAX` 53 and
//! `PTE_RPN_MASK`, `PMD_MASKED_BITS` 0xc0000000000000ff),
//! arch/powerpc/include/asm/book3s/64/hash-4k.h (`H_PAGE_HASHPTE` is
//! `_RPAGE_PKEY_BIT4` since "powerpc/book3s64/pkeys: Move pkey related bits
//! in the linux page table", v5.9; `_RPAGE_RSV2`, `1 << 59`, before; the
//! index sizes 9/7/9/9) and arch/powerpc/include/asm/book3s/64/hash.h
//! (`HASH_PMD_VAL_BITS` = `HASH_PUD_VAL_BITS` = `HASH_PGD_VAL_BITS` =
//! `1 << 63`, set in a table entry beside the next table's address;
//! `hash__pte_update` invalidates the HPT entry only when the old PTE has
//! `H_PAGE_HASHPTE`).
//!
//! Where the model differs: Linux's hash-4k PMD has 128 entries
//! (`H_PMD_INDEX_SIZE` 7) and each context translates 46 bits with the
//! kernel in region 0xc; this format keeps 512-entry tables and x86-64's
//! 48-bit layout (the kernel in the sign-extended upper half), so that the
//! simulator's workloads use the same addresses on every format. Only 4 KiB
//! leaves: hash-4k has no PMD-level pages (its huge pages are hugepd
//! directories). No protection keys and no write-through: the format has
//! neither, so the encoder drops them.

use super::{Attributes, Entry, Format, MemoryType};
use crate::addr::{PageSize, PhysAddr};

/// `_PAGE_EXEC`: instructions may be fetched.
pub const EXEC: u64 = 0x1;
/// `_PAGE_WRITE`: writes allowed.
pub const WRITE: u64 = 0x2;
/// `_PAGE_READ`: reads allowed.
pub const READ: u64 = 0x4;
/// `_PAGE_PRIVILEGED`: kernel access only.
pub const PRIVILEGED: u64 = 0x8;
/// `_PAGE_NON_IDEMPOTENT`: guarded, cache-inhibited (device) memory.
pub const NON_IDEMPOTENT: u64 = 0x20;
/// `_PAGE_TOLERANT`: cache-inhibited memory.
pub const TOLERANT: u64 = 0x30;
/// `_PAGE_DIRTY` (the HPTE's C bit).
pub const DIRTY: u64 = 0x80;
/// `_PAGE_ACCESSED` (the HPTE's R bit).
pub const ACCESSED: u64 = 0x100;
/// `H_PAGE_HASHPTE` (`_RPAGE_PKEY_BIT4`): software, set when the hash-fault
/// handler inserted an HPT entry for this PTE, so a change of the PTE owes
/// that entry's invalidation.
pub const HASHPTE: u64 = 1 << 60;
/// `_PAGE_PTE`: the entry is a PTE, not a pointer to a table.
pub const PTE: u64 = 1 << 62;
/// `_PAGE_PRESENT`: the PTE holds a translation (and, as `HASH_*_VAL_BITS`,
/// a table entry points to a table).
pub const PRESENT: u64 = 1 << 63;
/// `PTE_RPN_MASK` for 4 KiB pages: bits 12 to 52 (`_PAGE_PA_MAX` 53).
pub const RPN_MASK: u64 = ((1 << 53) - 1) & !0xFFF;
/// The address bits of a table entry: all but `PMD_MASKED_BITS`.
pub const TABLE_MASK: u64 = !0xc000_0000_0000_00ff;

/// book3s64 hash, 4 KiB pages (see the module documentation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PpcHash4K;

impl Format for PpcHash4K {
    const NAME: &'static str = "ppc64-hash-4k";
    const LEVELS: u8 = 4;
    const VA_BITS: u32 = 48;
    const TABLE_ADDRESS_MASK: u64 = TABLE_MASK;
    const SHARED_ROOT: bool = true;
    const LARGE_LEAVES: bool = false;
    const DIRTY_BIT: u64 = DIRTY;
    const ACCESSED_BIT: u64 = ACCESSED;
    /// What `pte_modify` takes from the new protection, outside
    /// `_PAGE_CHG_MASK` (book3s/64/pgtable.h), that this model encodes:
    /// `_PAGE_READ` is always set, so write, execute and privileged.
    const PERMISSION_BITS: u64 = WRITE | EXEC | PRIVILEGED;

    fn decode(raw: u64, level: u8) -> Entry {
        if raw & PRESENT == 0 {
            return Entry::Absent;
        }
        if level > 1 || raw & PTE == 0 {
            return Entry::Table(PhysAddr(raw & TABLE_MASK));
        }
        let memory = match raw & TOLERANT {
            0 => MemoryType::WriteBack,
            NON_IDEMPOTENT => MemoryType::Device,
            _ => MemoryType::Uncached,
        };
        Entry::Leaf {
            phys: PhysAddr(raw & RPN_MASK),
            size: PageSize::Size4K,
            attrs: Attributes {
                writable: raw & WRITE != 0,
                user: raw & PRIVILEGED == 0,
                executable: raw & EXEC != 0,
                global: false,
                dirty: raw & DIRTY != 0,
                accessed: raw & ACCESSED != 0,
                key: 0,
                memory,
            },
        }
    }

    fn leaf_template(_size: PageSize, attrs: Attributes) -> u64 {
        let mut bits = PRESENT | PTE | READ;
        if attrs.writable {
            bits |= WRITE;
        }
        if attrs.executable {
            bits |= EXEC;
        }
        if !attrs.user {
            bits |= PRIVILEGED;
        }
        if attrs.dirty {
            bits |= DIRTY;
        }
        if attrs.accessed {
            bits |= ACCESSED;
        }
        bits | match attrs.memory {
            MemoryType::WriteBack | MemoryType::WriteThrough => 0,
            MemoryType::Uncached => TOLERANT,
            MemoryType::Device => NON_IDEMPOTENT,
        }
    }

    fn leaf_address_mask(_size: PageSize) -> u64 {
        RPN_MASK
    }

    /// `pmd_populate` and friends: the table's address and
    /// `HASH_PMD_VAL_BITS`.
    fn encode_table(table: PhysAddr, _level: u8) -> u64 {
        PRESENT | (table.0 & TABLE_MASK)
    }

    fn is_valid(raw: u64) -> bool {
        raw & PRESENT != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_are_where_the_linux_headers_put_them() {
        // pgtable.h and hash-4k.h, as cited in the module documentation.
        assert_eq!(PRESENT, 0x8000_0000_0000_0000);
        assert_eq!(PTE, 0x4000_0000_0000_0000);
        assert_eq!(HASHPTE, 0x1000_0000_0000_0000);
        assert_eq!(RPN_MASK, 0x001F_FFFF_FFFF_F000);
        let kernel = PpcHash4K::encode_leaf(
            PhysAddr(0x1234_5000),
            PageSize::Size4K,
            Attributes::kernel_data(),
        );
        // PAGE_KERNEL: _PAGE_BASE (present, accessed) | _PAGE_KERNEL_RW
        // (privileged, read, write, dirty), plus _PAGE_PTE (set_pte_at).
        assert_eq!(
            kernel,
            PRESENT | PTE | ACCESSED | PRIVILEGED | READ | WRITE | DIRTY | 0x1234_5000
        );
        assert_eq!(kernel & HASHPTE, 0, "no HPT entry until a fault hashes it");
    }

    #[test]
    fn leaves_and_tables_round_trip() {
        let attrs = Attributes {
            global: false,
            key: 0,
            ..Attributes::user_data()
        };
        let raw = PpcHash4K::encode_leaf(PhysAddr(0x8000), PageSize::Size4K, attrs);
        assert_eq!(
            PpcHash4K::decode(raw, 1),
            Entry::Leaf {
                phys: PhysAddr(0x8000),
                size: PageSize::Size4K,
                attrs
            }
        );
        let table = PpcHash4K::encode_table(PhysAddr(0x10_0000), 2);
        assert_eq!(
            PpcHash4K::decode(table, 2),
            Entry::Table(PhysAddr(0x10_0000))
        );
        assert!(PpcHash4K::is_valid(table));
        assert_eq!(PpcHash4K::decode(0, 1), Entry::Absent);
        assert_eq!(PpcHash4K::leaf_size(2), None);
    }
}
