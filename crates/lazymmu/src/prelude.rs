//! What a first program needs, in one `use`:
//!
//! ```
//! use lazymmu::prelude::*;
//! let host = Host::<Aarch64>::new(PhysAddr(0x4000_0000), 32);
//! let user = host.new_tables(SpaceId(1), VaRange::Lower).unwrap();
//! user.map(VirtAddr(0x1000), PhysAddr(0x8000_0000), 0x1000,
//!          Attributes::user_data(), PageSize::Size4K).unwrap();
//! let mut gather = user.gather();
//! user.protect(VirtAddr(0x1000), 0x1000, Protection::read_only(), &mut gather).unwrap();
//! drop(gather); // flushes
//! assert!(!user.translate(VirtAddr(0x1000)).unwrap().attrs.writable);
//! ```

pub use crate::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
pub use crate::backend::{Backend, FlushScope};
#[cfg(feature = "alloc")]
pub use crate::host::{Host, HostTables};
pub use crate::mode::LazyMode;
pub use crate::pgtable::allocator::FrameAllocator;
pub use crate::pgtable::format::{
    Aarch64, Attributes, Format, MemoryType, Protection, X86_64_5Level, X86_64,
};
pub use crate::pgtable::gather::Gather;
pub use crate::pgtable::memory::PageTableMemory;
pub use crate::pgtable::ops::{
    ApplyError, ApplyMode, CopyError, CopyKind, MapError, Mmu, MoveError, OutOfFrames, PageTables,
    ProtectError, RangeError, VaRange, ZapError,
};
#[cfg(feature = "alloc")]
pub use crate::pgtable::ops::{TreeSummary, VerifyError};
pub use crate::pgtable::walk::{TranslateError, Translation};
