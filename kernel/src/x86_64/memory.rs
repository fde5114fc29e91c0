//! Physical memory: the PVH memory map, two frame pools (page-table frames,
//! which the direct map tags with the page-table protection key, and data
//! frames, both [`FramePool`]s), and the direct map's physical-to-virtual
//! translation.

use core::sync::atomic::{AtomicBool, Ordering};

use lazymmu::addr::PhysAddr;

use crate::boot::{MemmapEntry, StartInfo, MEMMAP_RAM, START_INFO_MAGIC};
pub use crate::frames::{FramePool, Region, FRAME};

/// Where the direct map of physical memory starts (Linux's
/// `page_offset_base` without KASLR, Documentation/arch/x86/x86_64/mm.rst).
pub const DIRECT_MAP_BASE: u64 = 0xffff_8880_0000_0000;

/// Frames set aside for page tables: every page-table page comes from this
/// pool, and the pool is exactly what the direct map tags with the
/// page-table key.
pub const PAGE_TABLE_POOL_FRAMES: usize = 2048;

/// The most data frames the kernel manages (bitmap capacity: 512 MiB).
const MAX_DATA_FRAMES: usize = 128 * 1024;

static DIRECT_MAP_ON: AtomicBool = AtomicBool::new(false);

/// The virtual address through which the kernel reaches `phys`: the boot
/// identity map until the library's tables are loaded, the direct map after.
#[inline]
pub fn phys_to_virt(phys: PhysAddr) -> u64 {
    if DIRECT_MAP_ON.load(Ordering::Relaxed) {
        DIRECT_MAP_BASE + phys.0
    } else {
        phys.0
    }
}

/// Switches [`phys_to_virt`] to the direct map (after CR3 is loaded with
/// tables that have one).
pub fn use_direct_map() {
    DIRECT_MAP_ON.store(true, Ordering::Release);
}

/// The usable RAM the PVH memory map reports.
#[derive(Debug)]
pub struct MemoryMap {
    regions: [Region; 32],
    count: usize,
}

impl MemoryMap {
    /// Reads the memory map from `hvm_start_info` at `start_info` (identity
    /// mapped), keeping RAM above `reserved_end` (the kernel image) and below
    /// 4 GiB (what the boot tables map).
    ///
    /// # Errors
    /// A message when the structure is missing or has no memory map.
    pub fn from_start_info(start_info: u64, reserved_end: u64) -> Result<Self, &'static str> {
        // SAFETY: QEMU's PVH loader passes the physical address of a
        // `hvm_start_info` in RAM, which the boot tables identity-map; it is
        // only read.
        let info = unsafe { &*(start_info as *const StartInfo) };
        if info.magic != START_INFO_MAGIC {
            return Err("bad hvm_start_info magic");
        }
        if info.version < 1 || info.memmap_paddr == 0 {
            return Err("hvm_start_info has no memory map (version 0)");
        }
        let mut map = MemoryMap {
            regions: [Region { start: 0, end: 0 }; 32],
            count: 0,
        };
        for i in 0..info.memmap_entries as usize {
            // SAFETY: the loader promises `memmap_entries` entries at
            // `memmap_paddr`, identity-mapped like the structure itself.
            let entry = unsafe {
                (info.memmap_paddr as *const MemmapEntry)
                    .add(i)
                    .read_unaligned()
            };
            if entry.kind != MEMMAP_RAM {
                continue;
            }
            let start = entry.addr.max(reserved_end).next_multiple_of(FRAME);
            let end = (entry.addr + entry.size).min(1 << 32) & !(FRAME - 1);
            if start < end && map.count < map.regions.len() {
                map.regions[map.count] = Region { start, end };
                map.count += 1;
            }
        }
        if map.count == 0 {
            return Err("no usable RAM above the kernel");
        }
        Ok(map)
    }

    /// The usable regions.
    pub fn regions(&self) -> &[Region] {
        &self.regions[..self.count]
    }

    /// The largest region.
    pub fn largest(&self) -> Region {
        *self
            .regions()
            .iter()
            .max_by_key(|r| r.end - r.start)
            .expect("a memory map has a region")
    }
}

/// Frames for page tables (tagged with the page-table key in the direct map).
pub static PAGE_TABLE_FRAMES: FramePool<{ PAGE_TABLE_POOL_FRAMES / 64 }> = FramePool::new();

/// Frames for everything else.
pub static DATA_FRAMES: FramePool<{ MAX_DATA_FRAMES / 64 }> = FramePool::new();

/// Splits the largest RAM region into the page-table pool (first) and the
/// data pool (the rest).
///
/// # Errors
/// A message when the region is too small.
pub fn init_pools(map: &MemoryMap) -> Result<(), &'static str> {
    crate::frames::split_pools(map.largest(), &PAGE_TABLE_FRAMES, &DATA_FRAMES)
}
