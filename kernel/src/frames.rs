//! Physical frames: a usable physical range, and a pool of frames over one
//! such range, tracked by a bitmap under a spinlock. Nothing here depends
//! on the architecture; each kernel fills its pools from what its firmware
//! reports (the PVH memory map, the device tree).

use lazymmu::addr::PhysAddr;

use crate::sync::SpinLock;

/// Bytes in a frame.
pub const FRAME: u64 = 4096;

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

/// A pool of frames over one contiguous physical range, tracked by a
/// bitmap under a spinlock (interrupt handlers may allocate too).
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

/// Gives the first frames of `region` to `tables` (as many as its bitmap
/// holds) and the rest to `data`: page-table frames and data frames come
/// from disjoint ranges, so that a kernel can map the two differently (the
/// x86-64 kernel tags the page-table range with a protection key).
///
/// # Errors
/// A message when `region` does not hold twice the page-table pool.
pub fn split_pools<const TABLES: usize, const DATA: usize>(
    region: Region,
    tables: &FramePool<TABLES>,
    data: &FramePool<DATA>,
) -> Result<(), &'static str> {
    let table_frames = TABLES * 64;
    if region.frames() < table_frames * 2 {
        return Err("not enough RAM for the frame pools");
    }
    let split = region.start + table_frames as u64 * FRAME;
    tables.init(Region {
        start: region.start,
        end: split,
    });
    data.init(Region {
        start: split,
        end: region.end,
    });
    Ok(())
}
