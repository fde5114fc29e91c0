//! x86-64 4-level (48-bit) and 5-level (57-bit, LA57) paging.
//!
//! Source: Intel SDM Vol. 3A §4.5 "4-Level Paging and 5-Level Paging", the
//! tables giving the formats of a PML5E, PML4E, PDPTE, PDE and PTE, and
//! §4.6.2 "Protection Keys" (bits 62:59 select the PKRU key for user pages
//! and the IA32_PKRS key for supervisor pages).

use super::{Attributes, Entry, Format, MemoryType};
use crate::addr::{PageSize, PhysAddr};

/// Bit 0, P: the entry is present.
pub const PRESENT: u64 = 1 << 0;
/// Bit 1, R/W: writes allowed.
pub const WRITABLE: u64 = 1 << 1;
/// Bit 2, U/S: user-mode accesses allowed.
pub const USER: u64 = 1 << 2;
/// Bit 3, PWT: page-level write-through (PAT index bit 0).
pub const WRITE_THROUGH: u64 = 1 << 3;
/// Bit 4, PCD: page-level cache disable (PAT index bit 1).
pub const CACHE_DISABLE: u64 = 1 << 4;
/// Bit 5, A: accessed.
pub const ACCESSED: u64 = 1 << 5;
/// Bit 6, D: dirty (leaves only).
pub const DIRTY: u64 = 1 << 6;
/// Bit 7, PS: the PDE/PDPTE maps a 2 MiB/1 GiB page.
pub const HUGE_PAGE: u64 = 1 << 7;
/// Bit 7 of a 4 KiB PTE: PAT index bit 2.
pub const PAT_4K: u64 = 1 << 7;
/// Bit 8, G: global translation (leaves, CR4.PGE).
pub const GLOBAL: u64 = 1 << 8;
/// Bit 12 of a 2 MiB/1 GiB leaf: PAT index bit 2.
pub const PAT_HUGE: u64 = 1 << 12;
/// Bits 62:59: protection key.
pub const PROTECTION_KEY_SHIFT: u32 = 59;
/// Mask of the protection-key field.
pub const PROTECTION_KEY_MASK: u64 = 0xF << PROTECTION_KEY_SHIFT;
/// Bit 63, XD: execute disable (EFER.NXE).
pub const NO_EXECUTE: u64 = 1 << 63;
/// Bits 51:12: physical address of a 4 KiB page or of the next table
/// (MAXPHYADDR 52).
pub const ADDRESS_4K: u64 = 0x000F_FFFF_FFFF_F000;
/// Bits 51:21: physical address of a 2 MiB page.
pub const ADDRESS_2M: u64 = 0x000F_FFFF_FFE0_0000;
/// Bits 51:30: physical address of a 1 GiB page.
pub const ADDRESS_1G: u64 = 0x000F_FFFF_C000_0000;

/// Intermediate entries grant everything (present, writable, user,
/// accessed), as Linux's `_PAGE_TABLE`, so leaves alone decide.
const TABLE_BITS: u64 = PRESENT | WRITABLE | USER | ACCESSED;

fn leaf_template(size: PageSize, attrs: Attributes) -> u64 {
    let mut bits = PRESENT;
    if attrs.writable {
        bits |= WRITABLE;
    }
    if attrs.user {
        bits |= USER;
    }
    if attrs.accessed {
        bits |= ACCESSED;
    }
    if attrs.dirty {
        bits |= DIRTY;
    }
    if attrs.global {
        bits |= GLOBAL;
    }
    if !attrs.executable {
        bits |= NO_EXECUTE;
    }
    bits |= ((attrs.key & 0xF) as u64) << PROTECTION_KEY_SHIFT;
    // Power-on PAT: index 0 WB, 1 WT, 2 UC-, 3 UC (SDM Vol. 3A, "Programming
    // the PAT", PAT values after power-up or reset).
    bits |= match attrs.memory {
        MemoryType::WriteBack => 0,
        MemoryType::WriteThrough => WRITE_THROUGH,
        MemoryType::Uncached => CACHE_DISABLE,
        MemoryType::Device => CACHE_DISABLE | WRITE_THROUGH,
    };
    if size != PageSize::Size4K {
        bits |= HUGE_PAGE;
    }
    bits
}

fn address_mask(size: PageSize) -> u64 {
    match size {
        PageSize::Size4K => ADDRESS_4K,
        PageSize::Size2M => ADDRESS_2M,
        PageSize::Size1G => ADDRESS_1G,
    }
}

fn decode(raw: u64, level: u8) -> Entry {
    if raw & PRESENT == 0 {
        return Entry::Absent;
    }
    let size = match level {
        1 => PageSize::Size4K,
        2 if raw & HUGE_PAGE != 0 => PageSize::Size2M,
        3 if raw & HUGE_PAGE != 0 => PageSize::Size1G,
        _ => return Entry::Table(PhysAddr(raw & ADDRESS_4K)),
    };
    // The PAT bit selects entries 4–7, which the power-on PAT makes equal
    // to 0–3, so the type is read from PWT/PCD alone.
    let memory = match (raw & CACHE_DISABLE != 0, raw & WRITE_THROUGH != 0) {
        (false, false) => MemoryType::WriteBack,
        (false, true) => MemoryType::WriteThrough,
        (true, false) => MemoryType::Uncached,
        (true, true) => MemoryType::Device,
    };
    Entry::Leaf {
        phys: PhysAddr(raw & address_mask(size)),
        size,
        attrs: Attributes {
            writable: raw & WRITABLE != 0,
            user: raw & USER != 0,
            executable: raw & NO_EXECUTE == 0,
            global: raw & GLOBAL != 0,
            dirty: raw & DIRTY != 0,
            accessed: raw & ACCESSED != 0,
            key: ((raw & PROTECTION_KEY_MASK) >> PROTECTION_KEY_SHIFT) as u8,
            memory,
        },
    }
}

/// x86-64 4-level paging: PML4 → PDPT → PD → PT, 48-bit virtual addresses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct X86_64;

/// x86-64 5-level paging (CR4.LA57): PML5 → PML4 → PDPT → PD → PT, 57-bit
/// virtual addresses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct X86_64_5Level;

macro_rules! x86_format {
    ($ty:ty, $name:literal, $levels:literal, $bits:literal) => {
        impl Format for $ty {
            const NAME: &'static str = $name;
            const LEVELS: u8 = $levels;
            const VA_BITS: u32 = $bits;
            const TABLE_ADDRESS_MASK: u64 = ADDRESS_4K;
            const SHARED_ROOT: bool = true;
            const DIRTY_BIT: u64 = DIRTY;
            const ACCESSED_BIT: u64 = ACCESSED;
            const PERMISSION_BITS: u64 = WRITABLE | USER | NO_EXECUTE | PROTECTION_KEY_MASK;

            #[inline]
            fn decode(raw: u64, level: u8) -> Entry {
                decode(raw, level)
            }
            #[inline]
            fn leaf_template(size: PageSize, attrs: Attributes) -> u64 {
                leaf_template(size, attrs)
            }
            #[inline]
            fn leaf_address_mask(size: PageSize) -> u64 {
                address_mask(size)
            }
            #[inline]
            fn encode_table(table: PhysAddr, _level: u8) -> u64 {
                TABLE_BITS | (table.0 & ADDRESS_4K)
            }
            #[inline]
            fn is_valid(raw: u64) -> bool {
                raw & PRESENT != 0
            }
        }
    };
}

x86_format!(X86_64, "x86-64", 4, 48);
x86_format!(X86_64_5Level, "x86-64-la57", 5, 57);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_bits_are_where_the_manual_puts_them() {
        let attrs = Attributes {
            writable: true,
            user: true,
            executable: false,
            global: true,
            dirty: true,
            accessed: true,
            key: 0xA,
            memory: MemoryType::Device,
        };
        let raw = X86_64::encode_leaf(PhysAddr(0x1234_5000), PageSize::Size4K, attrs);
        assert_eq!(
            raw,
            0x1234_5000 | 1 | 2 | 4 | 8 | 16 | 32 | 64 | 256 | (0xA << 59) | (1 << 63)
        );
        assert_eq!(
            X86_64::decode(raw, 1),
            Entry::Leaf {
                phys: PhysAddr(0x1234_5000),
                size: PageSize::Size4K,
                attrs
            }
        );
    }

    #[test]
    fn huge_pages_set_ps_and_align_the_address() {
        let raw = X86_64::encode_leaf(
            PhysAddr(0x4000_0000),
            PageSize::Size1G,
            Attributes::kernel_data(),
        );
        assert_ne!(raw & HUGE_PAGE, 0);
        assert!(matches!(
            X86_64::decode(raw, 3),
            Entry::Leaf {
                size: PageSize::Size1G,
                ..
            }
        ));
        // The same bits at the top level are a table pointer (PS is reserved
        // there; this crate never writes it).
        assert!(matches!(X86_64::decode(raw, 4), Entry::Table(_)));
    }

    #[test]
    fn canonical_halves() {
        assert!(X86_64::is_canonical(0x0000_7fff_ffff_f000));
        assert!(!X86_64::is_canonical(0x0000_8000_0000_0000));
        assert!(X86_64::is_canonical(0xffff_8000_0000_0000));
        assert!(X86_64_5Level::is_canonical(0x00ff_ffff_ffff_f000));
        assert!(!X86_64_5Level::is_canonical(0x0100_0000_0000_0000));
    }
}
