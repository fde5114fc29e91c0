//! AArch64 VMSAv8-64 stage 1, 4 KiB granule, 48-bit input addresses: lookup
//! levels 0–3 (this crate's levels 4–1).
//!
//! Source: Arm ARM (DDI 0487) §D8.3 "Translation table descriptor formats"
//! (table, block and page descriptors; AttrIndx in bits 4:2, AP 7:6, SH
//! 9:8, AF 10, nG 11, DBM 51, Contiguous 52, PXN 53, UXN 54, software bits
//! 58:55) and FEAT_S1POE, where POIndex occupies bits 62:60 of stage 1
//! block and page descriptors. The software dirty bit is bit 55, as Linux's
//! `PTE_DIRTY` (arch/arm64/include/asm/pgtable-hwdef.h/pgtable-prot.h).

use super::{Attributes, Entry, Format, MemoryType};
use crate::addr::{PageSize, PhysAddr};

/// Bit 0: the descriptor is valid.
pub const VALID: u64 = 1 << 0;
/// Bit 1: table (levels 0–2) or page (level 3) descriptor; clear for a
/// block.
pub const TABLE_OR_PAGE: u64 = 1 << 1;
/// Bits 4:2: AttrIndx, an index into MAIR_EL1.
pub const ATTR_INDEX_SHIFT: u32 = 2;
/// Mask of AttrIndx.
pub const ATTR_INDEX_MASK: u64 = 0b111 << ATTR_INDEX_SHIFT;
/// Bit 5: NS (non-secure output address).
pub const NON_SECURE: u64 = 1 << 5;
/// Bit 6: `AP[1]`, EL0 access allowed.
pub const AP_USER: u64 = 1 << 6;
/// Bit 7: `AP[2]`, read-only.
pub const AP_READ_ONLY: u64 = 1 << 7;
/// Bits 9:8: SH, shareability.
pub const SHAREABILITY_SHIFT: u32 = 8;
/// SH = 0b11: inner shareable.
pub const INNER_SHAREABLE: u64 = 0b11 << SHAREABILITY_SHIFT;
/// Bit 10: AF, access flag.
pub const ACCESS_FLAG: u64 = 1 << 10;
/// Bit 11: nG, not global (tagged with the ASID).
pub const NOT_GLOBAL: u64 = 1 << 11;
/// Bit 51: DBM, dirty bit modifier (hardware dirty state, FEAT_HAFDBS).
pub const DIRTY_BIT_MODIFIER: u64 = 1 << 51;
/// Bit 52: contiguous hint.
pub const CONTIGUOUS: u64 = 1 << 52;
/// Bit 53: PXN, privileged execute-never.
pub const PXN: u64 = 1 << 53;
/// Bit 54: UXN, unprivileged execute-never.
pub const UXN: u64 = 1 << 54;
/// Bit 55: software dirty bit (Linux `PTE_DIRTY`); ignored by the walker.
pub const SOFTWARE_DIRTY: u64 = 1 << 55;
/// Bits 62:60: POIndex (FEAT_S1POE), an index into POR_EL0/POR_EL1.
pub const POE_INDEX_SHIFT: u32 = 60;
/// Mask of POIndex.
pub const POE_INDEX_MASK: u64 = 0b111 << POE_INDEX_SHIFT;
/// Table descriptor bit 59: PXNTable.
pub const PXN_TABLE: u64 = 1 << 59;
/// Table descriptor bit 60: UXNTable.
pub const UXN_TABLE: u64 = 1 << 60;
/// Table descriptor bits 62:61: APTable.
pub const AP_TABLE_MASK: u64 = 0b11 << 61;
/// Table descriptor bit 63: NSTable.
pub const NS_TABLE: u64 = 1 << 63;
/// Bits 47:12: output address of a page or next table.
pub const ADDRESS_4K: u64 = 0x0000_FFFF_FFFF_F000;
/// Bits 47:21: output address of a level-2 block (2 MiB).
pub const ADDRESS_2M: u64 = 0x0000_FFFF_FFE0_0000;
/// Bits 47:30: output address of a level-1 block (1 GiB).
pub const ADDRESS_1G: u64 = 0x0000_FFFF_C000_0000;

/// MAIR_EL1 value the AttrIndx encoding assumes: index 0 Normal write-back
/// read/write-allocate (0xff), 1 Normal write-through (0xbb), 2 Normal
/// non-cacheable (0x44), 3 Device-nGnRnE (0x00). Arm ARM DDI 0487,
/// register description of MAIR_EL1 (`Attr<n>` encodings).
pub const AARCH64_MAIR: u64 = 0x00_44_bb_ff;

const MAIR_WRITE_BACK: u64 = 0;
const MAIR_WRITE_THROUGH: u64 = 1;
const MAIR_UNCACHED: u64 = 2;
const MAIR_DEVICE: u64 = 3;

/// AArch64 stage 1, 4 KiB granule, 48-bit virtual addresses (one root per
/// TTBR).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Aarch64;

fn address_mask(size: PageSize) -> u64 {
    match size {
        PageSize::Size4K => ADDRESS_4K,
        PageSize::Size2M => ADDRESS_2M,
        PageSize::Size1G => ADDRESS_1G,
    }
}

impl Format for Aarch64 {
    const NAME: &'static str = "aarch64";
    const LEVELS: u8 = 4;
    const VA_BITS: u32 = 48;
    const TABLE_ADDRESS_MASK: u64 = ADDRESS_4K;
    const SHARED_ROOT: bool = false;
    const DIRTY_BIT: u64 = SOFTWARE_DIRTY;
    const ACCESSED_BIT: u64 = ACCESS_FLAG;
    const PERMISSION_BITS: u64 = AP_USER | AP_READ_ONLY | PXN | UXN | POE_INDEX_MASK;

    fn decode(raw: u64, level: u8) -> Entry {
        if raw & VALID == 0 {
            return Entry::Absent;
        }
        let size = match (level, raw & TABLE_OR_PAGE != 0) {
            (1, true) => PageSize::Size4K,
            // A level-3 descriptor with bit 1 clear is reserved and
            // faults like an invalid one.
            (1, false) => return Entry::Absent,
            (2, false) => PageSize::Size2M,
            (3, false) => PageSize::Size1G,
            // Level 0 (our 4) has no blocks with a 4K granule and 48 bits.
            (_, false) => return Entry::Absent,
            (_, true) => return Entry::Table(PhysAddr(raw & ADDRESS_4K)),
        };
        let user = raw & AP_USER != 0;
        let executable = if user { raw & UXN == 0 } else { raw & PXN == 0 };
        let memory = match (raw & ATTR_INDEX_MASK) >> ATTR_INDEX_SHIFT {
            MAIR_WRITE_BACK => MemoryType::WriteBack,
            MAIR_WRITE_THROUGH => MemoryType::WriteThrough,
            MAIR_UNCACHED => MemoryType::Uncached,
            // Indices this crate does not define are treated as the most
            // restrictive type.
            _ => MemoryType::Device,
        };
        Entry::Leaf {
            phys: PhysAddr(raw & address_mask(size)),
            size,
            attrs: Attributes {
                writable: raw & AP_READ_ONLY == 0,
                user,
                executable,
                global: raw & NOT_GLOBAL == 0,
                dirty: raw & SOFTWARE_DIRTY != 0,
                accessed: raw & ACCESS_FLAG != 0,
                key: ((raw & POE_INDEX_MASK) >> POE_INDEX_SHIFT) as u8,
                memory,
            },
        }
    }

    fn leaf_template(size: PageSize, attrs: Attributes) -> u64 {
        let mut bits = VALID | INNER_SHAREABLE;
        if size == PageSize::Size4K {
            bits |= TABLE_OR_PAGE;
        }
        if !attrs.writable {
            bits |= AP_READ_ONLY;
        }
        if attrs.user {
            bits |= AP_USER;
        }
        // Execute permission applies at the page's own privilege; the
        // other privilege never executes it (as Linux's PAGE_* values).
        bits |= match (attrs.executable, attrs.user) {
            (true, true) => PXN,
            (true, false) => UXN,
            (false, _) => PXN | UXN,
        };
        if attrs.accessed {
            bits |= ACCESS_FLAG;
        }
        if !attrs.global {
            bits |= NOT_GLOBAL;
        }
        if attrs.dirty {
            bits |= SOFTWARE_DIRTY;
        }
        bits |= ((attrs.key & 0b111) as u64) << POE_INDEX_SHIFT;
        let index = match attrs.memory {
            MemoryType::WriteBack => MAIR_WRITE_BACK,
            MemoryType::WriteThrough => MAIR_WRITE_THROUGH,
            MemoryType::Uncached => MAIR_UNCACHED,
            MemoryType::Device => MAIR_DEVICE,
        };
        bits | (index << ATTR_INDEX_SHIFT)
    }

    #[inline]
    fn leaf_address_mask(size: PageSize) -> u64 {
        address_mask(size)
    }

    #[inline]
    fn encode_table(table: PhysAddr, _level: u8) -> u64 {
        VALID | TABLE_OR_PAGE | (table.0 & ADDRESS_4K)
    }

    #[inline]
    fn is_valid(raw: u64) -> bool {
        raw & VALID != 0
    }

    #[inline]
    fn is_kernel(va: u64) -> bool {
        (va >> 63) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_descriptor_bits() {
        let attrs = Attributes {
            writable: false,
            user: true,
            executable: true,
            global: false,
            dirty: true,
            accessed: true,
            key: 5,
            memory: MemoryType::Uncached,
        };
        let raw = Aarch64::encode_leaf(PhysAddr(0x8000_1000), PageSize::Size4K, attrs);
        assert_eq!(
            raw,
            0x8000_1000
                | 0b11
                | (2 << 2)
                | (1 << 6)
                | (1 << 7)
                | (0b11 << 8)
                | (1 << 10)
                | (1 << 11)
                | (1 << 53)
                | (1 << 55)
                | (5 << 60)
        );
        assert_eq!(
            Aarch64::decode(raw, 1),
            Entry::Leaf {
                phys: PhysAddr(0x8000_1000),
                size: PageSize::Size4K,
                attrs
            }
        );
    }

    #[test]
    fn blocks_have_bit_one_clear() {
        let raw = Aarch64::encode_leaf(
            PhysAddr(0x4000_0000),
            PageSize::Size1G,
            Attributes::kernel_data(),
        );
        assert_eq!(raw & 0b11, 0b01);
        assert_eq!(raw & (UXN | PXN), UXN | PXN);
        assert!(matches!(
            Aarch64::decode(raw, 3),
            Entry::Leaf {
                size: PageSize::Size1G,
                ..
            }
        ));
        // No blocks at lookup level 0.
        assert_eq!(Aarch64::decode(raw, 4), Entry::Absent);
        let table = Aarch64::encode_table(PhysAddr(0x5000), 4);
        assert_eq!(Aarch64::decode(table, 4), Entry::Table(PhysAddr(0x5000)));
    }
}
