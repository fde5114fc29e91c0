//! Physical memory: page-table frames with contents, an owner (the address
//! space that allocated them) and a protection key each.

use core::cell::Cell;

use lazymmu::addr::{PhysAddr, SpaceId};
use lazymmu::pgtable::memory::poison;

use crate::footprint::{FootprintLog, Location};

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
    /// Whether `digest_sum` is kept up to date (only while a chooser
    /// prunes by state).
    tracking: Cell<bool>,
    /// Per frame, the digest terms of its words when poisoned (0: not yet
    /// computed), so that poisoning a frame again costs no hashing.
    poison_terms: Box<[Cell<u64>]>,
    /// The sum of a hash of every non-zero word and every allocated
    /// frame's owner and key: updated at each change, so that a digest of
    /// the memory costs nothing however much of it is in use.
    digest_sum: Cell<u64>,
    /// What the running stretch of execution touches (the machine's whole
    /// footprint log lives here, next to what most of it is about).
    footprints: FootprintLog,
}

/// A 64-bit mixer (the SplitMix64 finaliser).
#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[inline]
fn word_term(index: usize, value: u64) -> u64 {
    if value == 0 {
        0
    } else {
        mix(mix(value) ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }
}

#[inline]
fn frame_term(frame: usize, owner: u32, key: u8) -> u64 {
    if owner == FREE {
        0
    } else {
        mix((frame as u64) << 40 ^ u64::from(owner) << 8 ^ u64::from(key) ^ 1 << 63)
    }
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
            tracking: Cell::new(false),
            poison_terms: (0..n).map(|_| Cell::new(0)).collect(),
            digest_sum: Cell::new(0),
            footprints: FootprintLog::default(),
        }
    }

    /// The footprint log of the machine.
    #[inline]
    pub fn footprints(&self) -> &FootprintLog {
        &self.footprints
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
        self.footprints.read(Location::Entry(pa));
        self.word(pa).get()
    }

    /// Writes the 8-byte word at `pa`.
    ///
    /// # Panics
    /// When `pa` is not memory.
    #[inline]
    pub fn write(&self, pa: PhysAddr, value: u64) {
        self.footprints.write(Location::Entry(pa));
        let cell = self.word(pa);
        if self.tracking.get() {
            let index = ((pa.0 - MEMORY_BASE) / 8) as usize;
            let sum = self.digest_sum.get();
            self.digest_sum.set(
                sum.wrapping_sub(word_term(index, cell.get()))
                    .wrapping_add(word_term(index, value)),
            );
        }
        cell.set(value)
    }

    fn set_frame(&self, frame: usize, owner: u32, key: u8) {
        if self.tracking.get() {
            let sum = self.digest_sum.get().wrapping_sub(frame_term(
                frame,
                self.owner[frame].get(),
                self.key[frame].get(),
            ));
            self.digest_sum
                .set(sum.wrapping_add(frame_term(frame, owner, key)));
        }
        self.owner[frame].set(owner);
        self.key[frame].set(key);
    }

    /// Zeroes the frame holding `pa`.
    pub fn zero_frame(&self, pa: PhysAddr) {
        let base = pa.0 & !(FRAME_BYTES - 1);
        for i in 0..WORDS as u64 {
            self.write(PhysAddr(base + i * 8), 0);
        }
    }

    /// Allocates a frame for `owner` carrying protection key `key`, full
    /// of garbage that every format reads as present entries
    /// ([`lazymmu::pgtable::memory::poison`]), as a real allocator may
    /// hand out a frame last used for anything: whoever links it as a
    /// table must clear or fill it first.
    pub fn allocate(&self, owner: SpaceId, key: u8) -> Option<PhysAddr> {
        self.footprints.write(Location::Allocator);
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
        self.set_frame(frame as usize, owner.0, key);
        self.allocated.set(self.allocated.get() + 1);
        self.poison(frame as usize);
        Some(PhysAddr(MEMORY_BASE + frame as u64 * FRAME_BYTES))
    }

    /// Fills frame `frame` with [`poison`], keeping the digest.
    fn poison(&self, frame: usize) {
        let first = frame * WORDS;
        let words = &self.words[first..first + WORDS];
        let base = MEMORY_BASE + frame as u64 * FRAME_BYTES;
        let poisoned = |i: usize| poison(PhysAddr(base + 8 * i as u64));
        if self.tracking.get() {
            let old = words.iter().enumerate().fold(0u64, |sum, (i, w)| {
                sum.wrapping_add(word_term(first + i, w.get()))
            });
            let cached = &self.poison_terms[frame];
            if cached.get() == 0 {
                cached.set((0..WORDS).fold(0u64, |sum, i| {
                    sum.wrapping_add(word_term(first + i, poisoned(i)))
                }));
            }
            self.digest_sum.set(
                self.digest_sum
                    .get()
                    .wrapping_sub(old)
                    .wrapping_add(cached.get()),
            );
        }
        for (i, word) in words.iter().enumerate() {
            word.set(poisoned(i));
        }
    }

    /// A frame for `owner` with key `key` holding an empty table (zeroed),
    /// for the machine's own tables; the library's go through
    /// [`PhysMemory::allocate`] and clear or fill them itself.
    pub fn allocate_table(&self, owner: SpaceId, key: u8) -> Option<PhysAddr> {
        let frame = self.allocate(owner, key)?;
        self.zero_frame(frame);
        Some(frame)
    }

    /// Frees a frame. Returns false (and changes nothing) when it was not
    /// allocated.
    pub fn free(&self, pa: PhysAddr) -> bool {
        self.footprints.write(Location::Allocator);
        let Some(frame) = self.frame_of(pa) else {
            return false;
        };
        if self.owner[frame].get() == FREE {
            return false;
        }
        self.set_frame(frame, FREE, 0);
        self.free.borrow_mut().push(frame as u32);
        self.allocated.set(self.allocated.get() - 1);
        true
    }

    /// The address space that allocated the frame holding `pa`, `None`
    /// when free or not memory.
    #[inline]
    pub fn owner(&self, pa: PhysAddr) -> Option<SpaceId> {
        self.footprints.read(Location::Allocator);
        let o = self.owner.get(self.frame_of(pa)?)?.get();
        (o != FREE).then_some(SpaceId(o))
    }

    /// How many frames `owner` has allocated.
    pub fn frames_owned_by(&self, owner: SpaceId) -> u64 {
        self.owner.iter().filter(|o| o.get() == owner.0).count() as u64
    }

    /// The protection key of the frame holding `pa` (0 when not memory).
    #[inline]
    pub fn key(&self, pa: PhysAddr) -> u8 {
        self.footprints.read(Location::Allocator);
        self.frame_of(pa).map_or(0, |f| self.key[f].get())
    }

    /// Keeps a digest of the memory from now on (the first call sums what
    /// is there; later writes update the sum).
    pub fn track_digest(&self) {
        if self.tracking.get() {
            return;
        }
        // Frames never handed out are zero and free: they add nothing.
        let used = self.next.get() as usize;
        let mut sum = 0u64;
        for (i, w) in self.words[..used * WORDS].iter().enumerate() {
            sum = sum.wrapping_add(word_term(i, w.get()));
        }
        for f in 0..used {
            sum = sum.wrapping_add(frame_term(f, self.owner[f].get(), self.key[f].get()));
        }
        self.digest_sum.set(sum);
        self.tracking.set(true);
    }

    /// Feeds a digest of the memory to `h`: every frame's owner and key,
    /// every word's contents (free frames' too, although a frame handed
    /// out again is poisoned first), and the allocator's state.
    pub fn digest(&self, h: &mut impl core::hash::Hasher) {
        self.track_digest();
        h.write_u64(self.digest_sum.get());
        h.write_u32(self.next.get());
        for &f in self.free.borrow().iter() {
            h.write_u32(f);
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
        assert_eq!(m.read(a.add(8)), poison(a.add(8)), "handed out poisoned");
        m.write(a.add(8), 42);
        assert_eq!(m.read(a.add(8)), 42);
        assert!(m.free(a));
        assert!(!m.free(a), "double free is refused");
        assert_eq!(m.owner(a), None);
        assert_eq!(m.allocate(SpaceId(2), 0), Some(a));
        assert_eq!(m.read(a.add(8)), poison(a.add(8)), "poisoned again");
        assert_eq!(m.allocated(), 2);
    }
}
