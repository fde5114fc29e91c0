//! Page tables: formats, the memory that holds them, frame allocation, the
//! hardware walker, range operations and the TLB gather.
//!
//! - [`format`](mod@format): x86-64 4- and 5-level and AArch64 4K stage 1, as
//!   zero-sized types, and the arch-neutral [`format::Entry`] view.
//! - [`memory`]: [`memory::PageTableMemory`], reaching entries by physical
//!   address, with a host implementation.
//! - [`allocator`]: [`allocator::FrameAllocator`], with a host allocator
//!   that injects failures, counts frames and can poison what it hands out.
//! - [`walk`]: the hardware walker ([`walk::translate`]).
//! - [`ops`]: map, zap, protect, copy (fork), move (mremap), apply, on
//!   [`ops::PageTables`].
//! - [`gather`]: the TLB gather.

pub mod allocator;
pub mod format;
pub mod gather;
pub mod memory;
pub mod ops;
pub mod walk;
