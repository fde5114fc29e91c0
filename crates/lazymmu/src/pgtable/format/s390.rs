//! s390 (z/Architecture) DAT tables as Linux writes them: page tables of
//! 256 entries (the table an IPTE with additional entries works within),
//! under a segment table and region-third, -second and -first tables.
//!
//! Sources: arch/s390/include/asm/pgtable.h (`_PAGE_NOEXEC` 0x100,
//! `_PAGE_PROTECT` 0x200, `_PAGE_INVALID` 0x400 in hardware; `_PAGE_PRESENT`
//! 0x001, `_PAGE_YOUNG` 0x004, `_PAGE_DIRTY` 0x008, `_PAGE_READ` 0x010,
//! `_PAGE_WRITE` 0x020 in software; `_PAGE_ENTRIES` 256, `_CRST_ENTRIES`
//! 2048, `_SEGMENT_SHIFT` 20; `_SEGMENT_ENTRY_ORIGIN` `~0x7ff`,
//! `_SEGMENT_ENTRY_INVALID` 0x20, `_SEGMENT_ENTRY_PRESENT` 0x001;
//! `_REGION_ENTRY_ORIGIN` `~0xfff`, `_REGION_ENTRY_INVALID` 0x20, the
//! region types R1 0x0c, R2 0x08, R3 0x04 and `_REGION_ENTRY_LENGTH` 0x03)
//! and the z/Architecture Principles of Operation (SA22-7832, "Translation
//! Tables" and "INVALIDATE PAGE TABLE ENTRY": the range of an IPTE ends
//! within one page table).
//!
//! Where the model differs: s390's region and segment tables have 2048
//! entries in 16 KiB; the library allocates 4 KiB frames, so they keep 512
//! entries here (9 index bits), and five levels translate 56 bits rather
//! than 64. Kernel and user run in separate address spaces on s390 (their
//! own ASCEs); the model keeps one tree with the kernel in the
//! sign-extended upper half, as the other formats do. An empty PTE is 0 in
//! the model, which the software present bit says is absent, where Linux
//! stores `_PAGE_INVALID` (0x400): the library writes 0 for an empty entry
//! on every format. Linux also keeps an old (not young) PTE invalid in
//! hardware, so that the first access faults and sets the young bit; the
//! model keeps young in software only, so a PTE is valid to the walker
//! exactly when it is present and no IPTE has invalidated it. Only 4 KiB
//! leaves (the 1 MiB and 2 GiB large pages match none of the library's page
//! sizes).

use super::{Attributes, Entry, Format, MemoryType};
use crate::addr::{PageSize, PhysAddr};

/// `_PAGE_PRESENT` (software): the PTE maps a page.
pub const PRESENT: u64 = 0x001;
/// `_PAGE_YOUNG` (software): accessed.
pub const YOUNG: u64 = 0x004;
/// `_PAGE_DIRTY` (software): written.
pub const DIRTY: u64 = 0x008;
/// `_PAGE_READ` (software).
pub const READ: u64 = 0x010;
/// `_PAGE_WRITE` (software).
pub const WRITE: u64 = 0x020;
/// `_PAGE_NOEXEC` (hardware): no instruction fetch.
pub const NOEXEC: u64 = 0x100;
/// `_PAGE_PROTECT` (hardware): stores fault.
pub const PROTECT: u64 = 0x200;
/// `_PAGE_INVALID` (hardware): the page is not available for translation.
/// IPTE sets it.
pub const INVALID: u64 = 0x400;
/// Entries in a page table (`_PAGE_ENTRIES`).
pub const PAGE_ENTRIES: usize = 256;
/// The page frame address of a 4 KiB PTE.
pub const PAGE_ORIGIN: u64 = !0xFFF;
/// `_SEGMENT_ENTRY_ORIGIN`: the page table's address in a segment entry.
pub const SEGMENT_ORIGIN: u64 = !0x7FF;
/// `_REGION_ENTRY_ORIGIN`: the next table's address in a region entry.
pub const REGION_ORIGIN: u64 = !0xFFF;
/// `_SEGMENT_ENTRY_PRESENT`, and bit 63 of `_REGION_ENTRY_LENGTH`: the
/// bit the model reads as "valid" at every level.
pub const ENTRY_PRESENT: u64 = 0x001;
/// `_SEGMENT_ENTRY_INVALID` / `_REGION_ENTRY_INVALID`.
pub const TABLE_INVALID: u64 = 0x20;
/// `_REGION_ENTRY_TYPE_R1`, `_R2`, `_R3` (levels 5, 4, 3).
pub const REGION_TYPE: [u64; 3] = [0x04, 0x08, 0x0c];
/// `_REGION_ENTRY_LENGTH`: the next table is full length.
pub const REGION_LENGTH: u64 = 0x03;

/// s390 DAT tables (see the module documentation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct S390;

impl Format for S390 {
    const NAME: &'static str = "s390";
    const LEVELS: u8 = 5;
    const INDEX_BITS: [u32; 5] = [8, 9, 9, 9, 9];
    const VA_BITS: u32 = 56;
    const TABLE_ADDRESS_MASK: u64 = REGION_ORIGIN;
    const SHARED_ROOT: bool = true;
    const LARGE_LEAVES: bool = false;
    const DIRTY_BIT: u64 = DIRTY;
    const ACCESSED_BIT: u64 = YOUNG;
    /// Write, its hardware protection (which also depends on dirty, see
    /// [`Format::leaf_template`]) and no-execute: what s390's `pte_modify`
    /// (arch/s390/include/asm/pgtable.h) recomputes from the new protection.
    const PERMISSION_BITS: u64 = WRITE | PROTECT | NOEXEC;

    fn decode(raw: u64, level: u8) -> Entry {
        if level > 1 {
            if raw & ENTRY_PRESENT == 0 || raw & TABLE_INVALID != 0 {
                return Entry::Absent;
            }
            let origin = if level == 2 {
                SEGMENT_ORIGIN
            } else {
                REGION_ORIGIN
            };
            return Entry::Table(PhysAddr(raw & origin));
        }
        if !Self::is_valid(raw) {
            return Entry::Absent;
        }
        Entry::Leaf {
            phys: PhysAddr(raw & PAGE_ORIGIN),
            size: PageSize::Size4K,
            attrs: Attributes {
                writable: raw & WRITE != 0,
                // s390 has no user/supervisor bit: the address space says.
                user: false,
                executable: raw & NOEXEC == 0,
                global: false,
                dirty: raw & DIRTY != 0,
                accessed: raw & YOUNG != 0,
                key: 0,
                memory: MemoryType::WriteBack,
            },
        }
    }

    /// `mk_pte()` of a present page: software present and read, write when
    /// writable; `_PAGE_PROTECT` unless writable and dirty (Linux keeps a
    /// clean writable page protected to catch the first store).
    fn leaf_template(_size: PageSize, attrs: Attributes) -> u64 {
        let mut bits = PRESENT | READ;
        if attrs.writable {
            bits |= WRITE;
        }
        if !(attrs.writable && attrs.dirty) {
            bits |= PROTECT;
        }
        if attrs.dirty {
            bits |= DIRTY;
        }
        if attrs.accessed {
            bits |= YOUNG;
        }
        if !attrs.executable {
            bits |= NOEXEC;
        }
        bits
    }

    fn leaf_address_mask(_size: PageSize) -> u64 {
        PAGE_ORIGIN
    }

    /// `pmd_populate` (`_SEGMENT_ENTRY` = present, and the page table's
    /// origin), `pud_populate`/`p4d_populate`/`pgd_populate` (the region
    /// type of the table the entry sits in, full length, the origin).
    fn encode_table(table: PhysAddr, level: u8) -> u64 {
        match level {
            2 => ENTRY_PRESENT | (table.0 & SEGMENT_ORIGIN),
            _ => {
                let kind = REGION_TYPE[usize::from(level.clamp(3, 5) - 3)];
                kind | REGION_LENGTH | ENTRY_PRESENT | (table.0 & REGION_ORIGIN)
            }
        }
    }

    /// Present in software and not invalid in hardware (a PTE); present
    /// and not invalid (a table entry, whose 0x400 bit the model never
    /// sets).
    fn is_valid(raw: u64) -> bool {
        raw & PRESENT != 0 && raw & INVALID == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgtable::format::{entries, entry_shift, index};

    #[test]
    fn page_tables_are_the_ones_ipte_works_within() {
        assert_eq!(entries::<S390>(1), PAGE_ENTRIES);
        assert_eq!(
            entry_shift::<S390>(2),
            20,
            "_SEGMENT_SHIFT: 1 MiB a segment"
        );
        assert_eq!(index::<S390>(0x000F_F000, 1), 255);
        assert_eq!(index::<S390>(0x0010_0000, 1), 0);
        assert_eq!(index::<S390>(0x0010_0000, 2), 1);
        assert_eq!(
            entry_shift::<S390>(S390::LEVELS + 1),
            S390::VA_BITS,
            "the root translates VA_BITS"
        );
    }

    #[test]
    fn ipte_makes_a_present_pte_invalid() {
        let raw = S390::encode_leaf(PhysAddr(0x7000), PageSize::Size4K, Attributes::user_data());
        assert!(S390::is_valid(raw));
        assert_eq!(raw & PROTECT, PROTECT, "clean: protected until written");
        assert!(!S390::is_valid(raw | INVALID));
        assert_eq!(S390::decode(raw | INVALID, 1), Entry::Absent);
    }

    #[test]
    fn table_entries_carry_their_region_type() {
        let segment = S390::encode_table(PhysAddr(0x4000), 2);
        assert_eq!(segment, 0x4001);
        assert_eq!(S390::decode(segment, 2), Entry::Table(PhysAddr(0x4000)));
        assert_eq!(
            S390::encode_table(PhysAddr(0x4000), 3) & 0x0f,
            0x04 | 0x03 | 0x01
        );
        assert_eq!(S390::encode_table(PhysAddr(0x4000), 5) & 0x0f, 0x0c | 0x03);
        assert_eq!(S390::decode(TABLE_INVALID | 0x4001, 2), Entry::Absent);
    }
}
