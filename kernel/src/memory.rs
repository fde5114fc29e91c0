//! Physical memory: the PVH memory map, two frame pools (page-table frames,
//! which the direct map tags with the page-table protection key, and data
//! frames), and the direct map's physical-to-virtual translation.

use core::cell::UnsafeCell;

use lazymmu::addr::PhysAddr;

use crate::boot::{MemmapEntry, StartInfo, MEMMAP_RAM, START_INFO_MAGIC};
use crate::cpu;
use crate::local::Local;

/// Bytes in a frame.
pub const FRAME: u64 = 4096;

/// Where the direct map of physical memory starts (Linux's
/// `page_offset_base` without KASLR, Documentation/arch/x86/x86_64/mm.rst).
pub const DIRECT_MAP_BASE: u64 = 0xffff_8880_0000_0000;

/// Frames set aside for page tables: every page-table page comes from this
/// pool, and the pool is exactly what the direct map tags with the
/// page-table key.
pub const PAGE_TABLE_POOL_FRAMES: usize = 2048;

/// The most data frames the kernel manages (bitmap capacity: 512 MiB).
const MAX_DATA_FRAMES: usize = 128 * 1024;

static DIRECT_MAP_ON: Local<bool> = Local::new(false);

/// The virtual address through which the kernel reaches `phys`: the boot
/// identity map until the library's tables are loaded, the direct map after.
#[inline]
pub fn phys_to_virt(phys: PhysAddr) -> u64 {
    if DIRECT_MAP_ON.get() {
        DIRECT_MAP_BASE + phys.0
    } else {
        phys.0
    }
}

/// Switches [`phys_to_virt`] to the direct map (after CR3 is loaded with
/// tables that have one).
pub fn use_direct_map() {
    DIRECT_MAP_ON.set(true);
}

/// A usable physical range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// First byte (frame aligned).
    pub start: u64,
    /// End (exclusive, frame aligned).
    pub end: u64,
}

impl Region {
    /// Number of frames.
    pub fn frames(&self) -> usize {
        ((self.end - self.start) / FRAME) as usize
    }
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

/// A pool of frames over one contiguous physical range, tracked by a
/// bitmap. Interrupts are disabled while it is updated, since interrupt
/// handlers may allocate.
pub struct FramePool<const WORDS: usize> {
    base: Local<u64>,
    frames: Local<usize>,
    used: Local<usize>,
    hint: Local<usize>,
    bitmap: UnsafeCell<[u64; WORDS]>,
}

// SAFETY: one CPU, and every access to the bitmap runs with interrupts
// disabled, so no two accesses overlap.
unsafe impl<const WORDS: usize> Sync for FramePool<WORDS> {}

/// Why a frame cannot be freed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreeError {
    /// Not a frame of this pool.
    Foreign(PhysAddr),
    /// Already free.
    DoubleFree(PhysAddr),
}

impl<const WORDS: usize> FramePool<WORDS> {
    /// An empty pool; [`FramePool::init`] gives it its range.
    pub const fn new() -> Self {
        Self {
            base: Local::new(0),
            frames: Local::new(0),
            used: Local::new(0),
            hint: Local::new(0),
            bitmap: UnsafeCell::new([0; WORDS]),
        }
    }

    /// Manages `region` (clipped to the bitmap's capacity).
    pub fn init(&self, region: Region) {
        self.base.set(region.start);
        self.frames.set(region.frames().min(WORDS * 64));
        self.used.set(0);
        self.hint.set(0);
    }

    /// The range managed.
    pub fn region(&self) -> Region {
        Region {
            start: self.base.get(),
            end: self.base.get() + self.frames.get() as u64 * FRAME,
        }
    }

    /// Whether `frame` lies in the pool.
    pub fn contains(&self, frame: PhysAddr) -> bool {
        let region = self.region();
        (region.start..region.end).contains(&frame.0)
    }

    /// Frames currently allocated.
    pub fn used(&self) -> usize {
        self.used.get()
    }

    fn with_bitmap<R>(&self, f: impl FnOnce(&mut [u64; WORDS]) -> R) -> R {
        let were_enabled = cpu::disable_interrupts();
        // SAFETY: interrupts are off and `f` does not call back into the
        // pool, so this is the only reference to the bitmap.
        let result = f(unsafe { &mut *self.bitmap.get() });
        if were_enabled {
            cpu::enable_interrupts();
        }
        result
    }

    /// A free frame, or `None` when the pool is exhausted.
    pub fn allocate(&self) -> Option<PhysAddr> {
        let frames = self.frames.get();
        let start = self.hint.get();
        let found = self.with_bitmap(|bitmap| {
            for step in 0..frames {
                let index = (start + step) % frames;
                let (word, bit) = (index / 64, index % 64);
                if bitmap[word] & (1 << bit) == 0 {
                    bitmap[word] |= 1 << bit;
                    return Some(index);
                }
            }
            None
        })?;
        self.hint.set(found + 1);
        self.used.set(self.used.get() + 1);
        Some(PhysAddr(self.base.get() + found as u64 * FRAME))
    }

    /// Returns `frame` to the pool.
    ///
    /// # Errors
    /// [`FreeError`] for a frame outside the pool or one already free
    /// (nothing changes).
    pub fn free(&self, frame: PhysAddr) -> Result<(), FreeError> {
        if !self.contains(frame) || !frame.0.is_multiple_of(FRAME) {
            return Err(FreeError::Foreign(frame));
        }
        let index = ((frame.0 - self.base.get()) / FRAME) as usize;
        let (word, bit) = (index / 64, index % 64);
        let was_used = self.with_bitmap(|bitmap| {
            let was_used = bitmap[word] & (1 << bit) != 0;
            bitmap[word] &= !(1 << bit);
            was_used
        });
        if !was_used {
            return Err(FreeError::DoubleFree(frame));
        }
        self.used.set(self.used.get() - 1);
        Ok(())
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
    let largest = map.largest();
    if largest.frames() < PAGE_TABLE_POOL_FRAMES * 2 {
        return Err("not enough RAM for the frame pools");
    }
    let split = largest.start + PAGE_TABLE_POOL_FRAMES as u64 * FRAME;
    PAGE_TABLE_FRAMES.init(Region {
        start: largest.start,
        end: split,
    });
    DATA_FRAMES.init(Region {
        start: split,
        end: largest.end,
    });
    Ok(())
}
