//! The kernel's address-space layout, its physical memory (the RAM the
//! device tree reports, split into a page-table pool and a data pool) and
//! the translation from physical addresses to the addresses the kernel
//! reaches them at.
//!
//! Layout of the upper half (TTBR1, 48 bits), each region in its own
//! level-0 slot:
//!
//! | base | slot | what |
//! |---|---|---|
//! | [`DIRECT_MAP_BASE`] | 0 | every RAM frame at base + physical (Linux's linear map at `PAGE_OFFSET` for 48-bit VAs, Documentation/arch/arm64/memory.rst) |
//! | [`IO_BASE`] | 252 | device registers (GIC, PL011) at base + physical |
//! | [`KERNEL_BASE`] | 256 | the kernel image at base + physical, where it is linked |
//! | [`VMALLOC_BASE`] | 272 | what the tests and measurements map, vmalloc-style |
//!
//! The lower half (TTBR0) holds the user-like address spaces, tagged with
//! ASIDs.

use core::sync::atomic::{AtomicBool, Ordering};

use lazymmu::addr::PhysAddr;

pub use crate::frames::{FramePool, Region, FRAME};

/// The linear map of RAM.
pub const DIRECT_MAP_BASE: u64 = 0xffff_0000_0000_0000;
/// Device registers.
pub const IO_BASE: u64 = 0xffff_7e00_0000_0000;
/// The kernel image (the boot tables map the first gigabyte of RAM here
/// too, for the time before the library's tables are loaded).
pub const KERNEL_BASE: u64 = 0xffff_8000_0000_0000;
/// The area the tests and measurements map kernel pages in.
pub const VMALLOC_BASE: u64 = 0xffff_8800_0000_0000;

/// Frames set aside for page tables.
pub const PAGE_TABLE_POOL_FRAMES: usize = 2048;

/// The most data frames the kernel manages (bitmap capacity: 512 MiB).
const MAX_DATA_FRAMES: usize = 128 * 1024;

static DIRECT_MAP_ON: AtomicBool = AtomicBool::new(false);

/// The address of device register `phys` in the I/O window.
#[inline]
pub const fn io(phys: u64) -> u64 {
    IO_BASE + phys
}

/// The virtual address through which the kernel reaches RAM at `phys`:
/// the boot tables' alias at [`KERNEL_BASE`] until the library's tables
/// are loaded, the direct map after.
#[inline]
pub fn phys_to_virt(phys: PhysAddr) -> u64 {
    if DIRECT_MAP_ON.load(Ordering::Relaxed) {
        DIRECT_MAP_BASE + phys.0
    } else {
        KERNEL_BASE + phys.0
    }
}

/// The physical address of the image's `va` (linked at [`KERNEL_BASE`]).
#[inline]
pub fn image_phys(va: u64) -> u64 {
    va - KERNEL_BASE
}

/// Switches [`phys_to_virt`] to the direct map (after TTBR1 is loaded with
/// tables that have one).
pub fn use_direct_map() {
    DIRECT_MAP_ON.store(true, Ordering::Release);
}

/// Frames for page tables.
pub static PAGE_TABLE_FRAMES: FramePool<{ PAGE_TABLE_POOL_FRAMES / 64 }> = FramePool::new();

/// Frames for everything else.
pub static DATA_FRAMES: FramePool<{ MAX_DATA_FRAMES / 64 }> = FramePool::new();

/// Gives the RAM above the kernel image to the two pools (page tables
/// first), keeping below it the device tree and the image.
///
/// # Errors
/// A message when the RAM above the image is too small, or the image is
/// not in it.
pub fn init_pools(ram: Region, kernel_end_phys: u64) -> Result<Region, &'static str> {
    if !(ram.start..ram.end).contains(&kernel_end_phys) {
        return Err("the kernel image is not in the RAM the device tree reports");
    }
    let usable = Region {
        start: kernel_end_phys.next_multiple_of(FRAME),
        end: ram.end & !(FRAME - 1),
    };
    crate::frames::split_pools(usable, &PAGE_TABLE_FRAMES, &DATA_FRAMES)?;
    Ok(usable)
}
