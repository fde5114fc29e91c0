//! sparc64 on sun4v (the hypervisor platform): Linux PTEs are TTEs, the
//! format the TLB-miss handler copies into the TSB and the hypervisor loads
//! into the TLB.
//!
//! Source: arch/sparc/include/asm/pgtable_64.h: `_PAGE_VALID` `1 << 63`;
//! the sun4v software bits `_PAGE_MODIFIED_4V` `1 << 61`,
//! `_PAGE_ACCESSED_4V` `1 << 60`, `_PAGE_READ_4V` `1 << 59`,
//! `_PAGE_WRITE_4V` `1 << 58`; `_PAGE_PADDR_4V` (paddr\[55:13\]); the
//! hardware bits `_PAGE_E_4V` 0x800 (side effect), `_PAGE_CP_4V` 0x400 and
//! `_PAGE_CV_4V` 0x200 (cacheable), `_PAGE_P_4V` 0x100 (privileged),
//! `_PAGE_EXEC_4V` 0x80, `_PAGE_W_4V` 0x40 (hardware writable, set only
//! with the software write and modified bits, `__pte_mkhwwrite`),
//! `_PAGE_PRESENT_4V` 0x10 and the page-size field (`_PAGE_SZ8K_4V` 0);
//! `pmd_set`, `pud_set` and `p4d_set` store the next table's physical
//! address and nothing else.
//!
//! Where the model differs: Linux on sparc64 uses 8 KiB pages and tables
//! of 1024 entries; the library's 4 KiB pages and 512-entry tables stay, so
//! bit 12 (`_PAGE_IE_4V`, which the model never sets) holds the low bit of
//! a 4 KiB frame's address. A table entry also carries `_PAGE_VALID`,
//! because the library tells valid entries by one bit at every level where
//! Linux reads a non-zero table entry as present. Only 4 KiB leaves (the
//! 4 MiB and larger TTE sizes match none of the library's page sizes).

use super::{Attributes, Entry, Format, MemoryType};
use crate::addr::{PageSize, PhysAddr};

/// `_PAGE_VALID`: the TTE is valid.
pub const VALID: u64 = 1 << 63;
/// `_PAGE_MODIFIED_4V` (software dirty).
pub const MODIFIED: u64 = 1 << 61;
/// `_PAGE_ACCESSED_4V` (software).
pub const ACCESSED: u64 = 1 << 60;
/// `_PAGE_READ_4V` (software readable).
pub const READ: u64 = 1 << 59;
/// `_PAGE_WRITE_4V` (software writable).
pub const WRITE: u64 = 1 << 58;
/// `_PAGE_PADDR_4V` with bit 12 for 4 KiB frames (see the module
/// documentation): paddr\[55:12\].
pub const PADDR: u64 = 0x00FF_FFFF_FFFF_F000;
/// `_PAGE_E_4V`: side effect (device memory).
pub const SIDE_EFFECT: u64 = 0x800;
/// `_PAGE_CP_4V`: cacheable in the physically indexed cache.
pub const CACHEABLE_P: u64 = 0x400;
/// `_PAGE_CV_4V`: cacheable in the virtually indexed cache.
pub const CACHEABLE_V: u64 = 0x200;
/// `_PAGE_P_4V`: privileged.
pub const PRIVILEGED: u64 = 0x100;
/// `_PAGE_EXEC_4V`.
pub const EXEC: u64 = 0x80;
/// `_PAGE_W_4V`: writable in hardware.
pub const HW_WRITE: u64 = 0x40;
/// `_PAGE_PRESENT_4V`.
pub const PRESENT: u64 = 0x10;

/// sun4v TTEs (see the module documentation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sparc64Sun4v;

impl Format for Sparc64Sun4v {
    const NAME: &'static str = "sparc64-sun4v";
    const LEVELS: u8 = 4;
    const VA_BITS: u32 = 48;
    const TABLE_ADDRESS_MASK: u64 = PADDR;
    const SHARED_ROOT: bool = true;
    const LARGE_LEAVES: bool = false;
    const DIRTY_BIT: u64 = MODIFIED;
    /// Write, its hardware bit (set only once written), execute and
    /// privileged: the permission bits of the sun4v TTE this model encodes.
    const PERMISSION_BITS: u64 = WRITE | HW_WRITE | EXEC | PRIVILEGED;
    const ACCESSED_BIT: u64 = ACCESSED;

    fn decode(raw: u64, level: u8) -> Entry {
        if raw & VALID == 0 {
            return Entry::Absent;
        }
        if level > 1 {
            return Entry::Table(PhysAddr(raw & PADDR));
        }
        let memory = match (raw & SIDE_EFFECT != 0, raw & (CACHEABLE_P | CACHEABLE_V)) {
            (true, _) => MemoryType::Device,
            (false, 0) => MemoryType::Uncached,
            (false, CACHEABLE_P) => MemoryType::WriteThrough,
            (false, _) => MemoryType::WriteBack,
        };
        Entry::Leaf {
            phys: PhysAddr(raw & PADDR),
            size: PageSize::Size4K,
            attrs: Attributes {
                writable: raw & WRITE != 0,
                user: raw & PRIVILEGED == 0,
                executable: raw & EXEC != 0,
                global: false,
                dirty: raw & MODIFIED != 0,
                accessed: raw & ACCESSED != 0,
                key: 0,
                memory,
            },
        }
    }

    /// `PAGE_KERNEL` / `PAGE_SHARED` of sun4v (`sun4v_pgprot_init`, mm
    /// init_64.c): valid, present, readable, the size field for the base
    /// page, cacheability; hardware-writable only once written.
    fn leaf_template(_size: PageSize, attrs: Attributes) -> u64 {
        let mut bits = VALID | PRESENT | READ;
        if attrs.writable {
            bits |= WRITE;
            if attrs.dirty {
                bits |= HW_WRITE;
            }
        }
        if attrs.dirty {
            bits |= MODIFIED;
        }
        if attrs.accessed {
            bits |= ACCESSED;
        }
        if attrs.executable {
            bits |= EXEC;
        }
        if !attrs.user {
            bits |= PRIVILEGED;
        }
        bits | match attrs.memory {
            MemoryType::WriteBack => CACHEABLE_P | CACHEABLE_V,
            MemoryType::WriteThrough => CACHEABLE_P,
            MemoryType::Uncached => 0,
            MemoryType::Device => SIDE_EFFECT,
        }
    }

    fn leaf_address_mask(_size: PageSize) -> u64 {
        PADDR
    }

    fn encode_table(table: PhysAddr, _level: u8) -> u64 {
        VALID | (table.0 & PADDR)
    }

    fn is_valid(raw: u64) -> bool {
        raw & VALID != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tte_fields_are_where_pgtable_64_h_puts_them() {
        assert_eq!(VALID, 0x8000_0000_0000_0000);
        assert_eq!(MODIFIED, 0x2000_0000_0000_0000);
        assert_eq!(ACCESSED, 0x1000_0000_0000_0000);
        assert_eq!(READ, 0x0800_0000_0000_0000);
        assert_eq!(WRITE, 0x0400_0000_0000_0000);
        let raw = Sparc64Sun4v::encode_leaf(
            PhysAddr(0x4_2000),
            PageSize::Size4K,
            Attributes::kernel_data(),
        );
        assert_eq!(
            raw,
            VALID
                | MODIFIED
                | ACCESSED
                | READ
                | WRITE
                | PRESENT
                | PRIVILEGED
                | HW_WRITE
                | CACHEABLE_P
                | CACHEABLE_V
                | 0x4_2000
        );
        assert_eq!(raw & 0x7, 0, "_PAGE_SZ8K_4V: the base page size code");
    }

    #[test]
    fn a_clean_writable_page_is_not_writable_in_hardware() {
        let raw =
            Sparc64Sun4v::encode_leaf(PhysAddr(0x1000), PageSize::Size4K, Attributes::user_data());
        assert_eq!(raw & (WRITE | HW_WRITE), WRITE);
        let Entry::Leaf { phys, attrs, .. } = Sparc64Sun4v::decode(raw, 1) else {
            panic!("a leaf");
        };
        assert_eq!(phys, PhysAddr(0x1000), "bit 12 kept for 4 KiB frames");
        assert!(attrs.writable && attrs.user && !attrs.dirty);
        let table = Sparc64Sun4v::encode_table(PhysAddr(0x20_0000), 3);
        assert_eq!(
            Sparc64Sun4v::decode(table, 3),
            Entry::Table(PhysAddr(0x20_0000))
        );
    }
}
