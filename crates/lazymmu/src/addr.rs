//! Addresses, page sizes and address-space identities shared by every part
//! of the library.

use core::fmt;

/// A physical address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct PhysAddr(pub u64);

/// A virtual address (canonical form is the caller's business; walkers use
/// the bits their format translates).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct VirtAddr(pub u64);

impl fmt::Debug for PhysAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PhysAddr({:#x})", self.0)
    }
}

impl fmt::Debug for VirtAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VirtAddr({:#x})", self.0)
    }
}

impl PhysAddr {
    /// The address plus `offset` bytes.
    #[inline]
    pub const fn add(self, offset: u64) -> Self {
        PhysAddr(self.0 + offset)
    }
}

impl VirtAddr {
    /// The address plus `offset` bytes.
    #[inline]
    pub const fn add(self, offset: u64) -> Self {
        VirtAddr(self.0 + offset)
    }
}

/// Size of the page a leaf entry maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PageSize {
    /// 4 KiB page (PTE level).
    Size4K,
    /// 2 MiB block (PMD level).
    Size2M,
    /// 1 GiB block (PUD level).
    Size1G,
}

impl PageSize {
    /// The size in bytes.
    #[inline]
    pub const fn bytes(self) -> u64 {
        match self {
            PageSize::Size4K => 1 << 12,
            PageSize::Size2M => 1 << 21,
            PageSize::Size1G => 1 << 30,
        }
    }

    /// log2 of the size.
    #[inline]
    pub const fn shift(self) -> u32 {
        match self {
            PageSize::Size4K => 12,
            PageSize::Size2M => 21,
            PageSize::Size1G => 30,
        }
    }
}

/// Identity of an address space for TLB tagging (an ASID or PCID). The
/// kernel's own address space is [`SpaceId::KERNEL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SpaceId(pub u32);

impl SpaceId {
    /// The kernel's address space (init_mm).
    pub const KERNEL: SpaceId = SpaceId(0);
}
