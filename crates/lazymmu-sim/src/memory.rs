//! Physical memory: page-table frames with contents, an owner (the address
//! space that allocated them) and a protection key each.

use core::cell::Cell;

use lazymmu::addr::{PhysAddr, SpaceId};

/// Bytes per frame.
pub const FRAME_BYTES: u64 = 4096;
const WORDS: usize = 512;

/// Physical address of the first frame. Frame 0 is kept away from address
/// zero so that a zero entry never looks like a table pointer.
pub const MEMORY_BASE: u64 = 0x10_0000;

/// Owner of a free frame.
const FREE: u32 = u32::MAX;

/// The machine's physical memory of page-table frames.
#[derive(Debug)]
pub struct PhysMemory {
    words: Box<[Cell<u64>]>,
    owner: Box<[Cell<u32>]>,
    key: Box<[Cell<u8>]>,
    free: core::cell::RefCell<Vec<u32>>,
    next: Cell<u32>,
    allocated: Cell<u32>,
    frames: u32,
}

impl PhysMemory {
    /// Memory of `frames` 4 KiB frames, all free.
    pub fn new(frames: u32) -> Self {
        let n = frames as usize;
        Self {
            words: (0..n * WORDS).map(|_| Cell::new(0)).collect(),
            owner: (0..n).map(|_| Cell::new(FREE)).collect(),
            key: (0..n).map(|_| Cell::new(0)).collect(),
            free: core::cell::RefCell::new(Vec::new()),
            next: Cell::new(0),
            allocated: Cell::new(0),
            frames,
        }
    }

    /// Number of frames.
    pub fn frames(&self) -> u32 {
        self.frames
    }

    /// Frames currently allocated.
    pub fn allocated(&self) -> u32 {
        self.allocated.get()
    }

    /// Index of the frame holding `pa`, if it is memory.
    #[inline]
    pub fn frame_of(&self, pa: PhysAddr) -> Option<usize> {
        let off = pa.0.checked_sub(MEMORY_BASE)?;
        let frame = (off / FRAME_BYTES) as usize;
        (frame < self.frames as usize).then_some(frame)
    }

    #[inline]
    fn word(&self, pa: PhysAddr) -> &Cell<u64> {
        let off =
            pa.0.checked_sub(MEMORY_BASE)
                .unwrap_or_else(|| panic!("{pa:?} is below physical memory"));
        match self.words.get((off / 8) as usize) {
            Some(cell) => cell,
            None => panic!("{pa:?} is beyond physical memory"),
        }
    }

    /// Reads the 8-byte word at `pa`.
    ///
    /// # Panics
    /// When `pa` is not memory.
    #[inline]
    pub fn read(&self, pa: PhysAddr) -> u64 {
        self.word(pa).get()
    }

    /// Writes the 8-byte word at `pa`.
    ///
    /// # Panics
    /// When `pa` is not memory.
    #[inline]
    pub fn write(&self, pa: PhysAddr, value: u64) {
        self.word(pa).set(value)
    }

    /// Zeroes the frame holding `pa`.
    pub fn zero_frame(&self, pa: PhysAddr) {
        let base = pa.0 & !(FRAME_BYTES - 1);
        for i in 0..WORDS as u64 {
            self.write(PhysAddr(base + i * 8), 0);
        }
    }

    /// Allocates a frame for `owner` carrying protection key `key`.
    pub fn allocate(&self, owner: SpaceId, key: u8) -> Option<PhysAddr> {
        let frame = match self.free.borrow_mut().pop() {
            Some(f) => f,
            None => {
                let f = self.next.get();
                if f >= self.frames {
                    return None;
                }
                self.next.set(f + 1);
                f
            }
        };
        self.owner[frame as usize].set(owner.0);
        self.key[frame as usize].set(key);
        self.allocated.set(self.allocated.get() + 1);
        Some(PhysAddr(MEMORY_BASE + frame as u64 * FRAME_BYTES))
    }

    /// Frees a frame. Returns false (and changes nothing) when it was not
    /// allocated.
    pub fn free(&self, pa: PhysAddr) -> bool {
        let Some(frame) = self.frame_of(pa) else {
            return false;
        };
        if self.owner[frame].get() == FREE {
            return false;
        }
        self.owner[frame].set(FREE);
        self.key[frame].set(0);
        self.free.borrow_mut().push(frame as u32);
        self.allocated.set(self.allocated.get() - 1);
        true
    }

    /// The address space that allocated the frame holding `pa`, `None`
    /// when free or not memory.
    #[inline]
    pub fn owner(&self, pa: PhysAddr) -> Option<SpaceId> {
        let o = self.owner.get(self.frame_of(pa)?)?.get();
        (o != FREE).then_some(SpaceId(o))
    }

    /// The protection key of the frame holding `pa` (0 when not memory).
    #[inline]
    pub fn key(&self, pa: PhysAddr) -> u8 {
        self.frame_of(pa).map_or(0, |f| self.key[f].get())
    }

    /// Feeds every allocated frame's owner, key and contents to `h`.
    pub fn digest(&self, h: &mut impl core::hash::Hasher) {
        for (f, owner) in self.owner.iter().enumerate() {
            let o = owner.get();
            if o == FREE {
                continue;
            }
            h.write_usize(f);
            h.write_u32(o);
            h.write_u8(self.key[f].get());
            for w in &self.words[f * WORDS..(f + 1) * WORDS] {
                h.write_u64(w.get());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_free_and_reuse() {
        let m = PhysMemory::new(2);
        let a = m.allocate(SpaceId(1), 0).unwrap();
        let b = m.allocate(SpaceId::KERNEL, 1).unwrap();
        assert_eq!(m.allocate(SpaceId(1), 0), None);
        assert_eq!(m.owner(a), Some(SpaceId(1)));
        assert_eq!(m.key(b), 1);
        m.write(a.add(8), 42);
        assert_eq!(m.read(a.add(8)), 42);
        assert!(m.free(a));
        assert!(!m.free(a), "double free is refused");
        assert_eq!(m.owner(a), None);
        assert_eq!(m.allocate(SpaceId(2), 0), Some(a));
        assert_eq!(m.allocated(), 2);
    }
}
