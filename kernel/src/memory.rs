//! Physical memory: the PVH memory map, two frame pools (page-table frames,
//! which the direct map tags with the page-table protection key, and data
//! frames), and the direct map's physical-to-virtual translation.

use core::sync::atomic::{AtomicBool, Ordering};

use lazymmu::addr::PhysAddr;

use crate::boot::{MemmapEntry, StartInfo, MEMMAP_RAM, START_INFO_MAGIC};
use crate::sync::SpinLock;

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
/// bitmap under a spinlock (interrupt handlers may allocate too).
/// Arch-neutral: nothing here depends on x86.
pub struct FramePool<const WORDS: usize> {
    state: SpinLock<PoolState<WORDS>>,
}

struct PoolState<const WORDS: usize> {
    base: u64,
    frames: usize,
    used: usize,
    hint: usize,
    bitmap: [u64; WORDS],
}

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
            state: SpinLock::new(PoolState {
                base: 0,
                frames: 0,
                used: 0,
                hint: 0,
                bitmap: [0; WORDS],
            }),
        }
    }

    /// Manages `region` (clipped to the bitmap's capacity).
    pub fn init(&self, region: Region) {
        let mut state = self.state.lock();
        state.base = region.start;
        state.frames = region.frames().min(WORDS * 64);
        state.used = 0;
        state.hint = 0;
        state.bitmap = [0; WORDS];
    }

    /// The range managed.
    pub fn region(&self) -> Region {
        let state = self.state.lock();
        Region {
            start: state.base,
            end: state.base + state.frames as u64 * FRAME,
        }
    }

    /// Frames currently allocated.
    pub fn used(&self) -> usize {
        self.state.lock().used
    }

    /// A free frame, or `None` when the pool is exhausted.
    pub fn allocate(&self) -> Option<PhysAddr> {
        self.allocate_run(1)
    }

    /// `n` physically contiguous free frames (the first is returned), or
    /// `None` when no such run is free. One search under the lock, so runs
    /// allocated by several CPUs at once do not interleave.
    pub fn allocate_run(&self, n: usize) -> Option<PhysAddr> {
        let mut state = self.state.lock();
        let frames = state.frames;
        if n == 0 || n > frames {
            return None;
        }
        let is_free =
            |state: &PoolState<WORDS>, i: usize| state.bitmap[i / 64] & (1 << (i % 64)) == 0;
        let start = state.hint % frames;
        let mut step = 0;
        while step < frames {
            let first = (start + step) % frames;
            if first + n > frames {
                // A run does not wrap around the end of the pool.
                step += frames - first;
                continue;
            }
            match (first..first + n).find(|&i| !is_free(&state, i)) {
                Some(taken) => step += taken - first + 1,
                None => {
                    for i in first..first + n {
                        state.bitmap[i / 64] |= 1 << (i % 64);
                    }
                    state.hint = first + n;
                    state.used += n;
                    return Some(PhysAddr(state.base + first as u64 * FRAME));
                }
            }
        }
        None
    }

    /// Returns `frame` to the pool.
    ///
    /// # Errors
    /// [`FreeError`] for a frame outside the pool or one already free
    /// (nothing changes).
    pub fn free(&self, frame: PhysAddr) -> Result<(), FreeError> {
        let mut state = self.state.lock();
        let end = state.base + state.frames as u64 * FRAME;
        if !(state.base..end).contains(&frame.0) || !frame.0.is_multiple_of(FRAME) {
            return Err(FreeError::Foreign(frame));
        }
        let index = ((frame.0 - state.base) / FRAME) as usize;
        let (word, bit) = (index / 64, index % 64);
        if state.bitmap[word] & (1 << bit) == 0 {
            return Err(FreeError::DoubleFree(frame));
        }
        state.bitmap[word] &= !(1 << bit);
        state.used -= 1;
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
