//! Physical memory: page-table frames with contents, an owner (the address
//! space that allocated them) and a protection key each.

use core::cell::Cell;

use lazymmu::addr::{PhysAddr, SpaceId};
use lazymmu::pgtable::memory::poison;

use crate::footprint::{FootprintLog, Location};
use crate::kept::Kept;

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
    /// One past the highest word ever written: the words a memory handed
    /// on to the next run ([`Arrays`]) must clear.
    written: Cell<usize>,
    free: core::cell::RefCell<Vec<u32>>,
    next: Cell<u32>,
    allocated: Cell<u32>,
    frames: u32,
    /// Whether `digest_sum` is kept up to date (only while a chooser
    /// prunes by state).
    tracking: Cell<bool>,
    /// Per frame, the digest terms of its words when poisoned (0: not yet
    /// computed), so that poisoning a frame again costs no hashing. They
    /// depend on the frame's address alone, so they outlive the run.
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

/// The arrays of a dropped memory, all zero and free again, kept for the
/// next memory of the same size ([`crate::kept`]): a new memory of a few
/// MiB costs a `memset` of it all, and page faults and an `munmap` when the
/// allocator hands it back to the kernel; a kept one costs clearing what
/// the last run wrote.
struct Arrays {
    words: Box<[Cell<u64>]>,
    owner: Box<[Cell<u32>]>,
    key: Box<[Cell<u8>]>,
    poison_terms: Box<[Cell<u64>]>,
}

std::thread_local! {
    static ARRAYS: core::cell::RefCell<Vec<Arrays>> =
        const { core::cell::RefCell::new(Vec::new()) };
}

/// Memories kept per thread (a scenario's runs all have one size).
const KEPT: Kept<Arrays> = Kept {
    pool: &ARRAYS,
    limit: 2,
};

impl PhysMemory {
    /// Memory of `frames` 4 KiB frames, all free.
    pub fn new(frames: u32) -> Self {
        let n = frames as usize;
        let kept = KEPT.take(|m| m.owner.len() == n).unwrap_or_else(|| Arrays {
            words: (0..n * WORDS).map(|_| Cell::new(0)).collect(),
            owner: (0..n).map(|_| Cell::new(FREE)).collect(),
            key: (0..n).map(|_| Cell::new(0)).collect(),
            poison_terms: (0..n).map(|_| Cell::new(0)).collect(),
        });
        Self {
            words: kept.words,
            owner: kept.owner,
            key: kept.key,
            written: Cell::new(0),
            free: core::cell::RefCell::new(Vec::new()),
            next: Cell::new(0),
            allocated: Cell::new(0),
            frames,
            tracking: Cell::new(false),
            poison_terms: kept.poison_terms,
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
        let index = ((pa.0 - MEMORY_BASE) / 8) as usize;
        self.written.set(self.written.get().max(index + 1));
        if self.tracking.get() {
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

    /// Zeroes the frame holding `pa` (every word a write, as
    /// [`PhysMemory::write`] of each).
    ///
    /// # Panics
    /// When `pa` is not memory.
    pub fn zero_frame(&self, pa: PhysAddr) {
        let frame = self
            .frame_of(pa)
            .unwrap_or_else(|| panic!("{pa:?} is not memory"));
        let base = MEMORY_BASE + frame as u64 * FRAME_BYTES;
        self.footprints
            .write_all((0..WORDS as u64).map(|i| Location::Entry(PhysAddr(base + 8 * i))));
        self.fill_frame(frame, |_| 0, 0);
    }

    /// The digest terms of frame `frame`'s words, summed: the poisoned
    /// frame's cached sum when the frame holds its poison untouched.
    fn frame_terms(&self, frame: usize) -> u64 {
        let first = frame * WORDS;
        let words = &self.words[first..first + WORDS];
        let base = MEMORY_BASE + frame as u64 * FRAME_BYTES;
        let cached = self.poison_terms[frame].get();
        if cached != 0
            && words
                .iter()
                .enumerate()
                .all(|(i, w)| w.get() == poison(PhysAddr(base + 8 * i as u64)))
        {
            return cached;
        }
        words.iter().enumerate().fold(0u64, |sum, (i, w)| {
            sum.wrapping_add(word_term(first + i, w.get()))
        })
    }

    /// Sets every word `i` of frame `frame` to `value(i)`, whose digest
    /// terms sum to `terms`, keeping the digest.
    fn fill_frame(&self, frame: usize, value: impl Fn(usize) -> u64, terms: u64) {
        let first = frame * WORDS;
        if self.tracking.get() {
            let old = self.frame_terms(frame);
            self.digest_sum
                .set(self.digest_sum.get().wrapping_sub(old).wrapping_add(terms));
        }
        for (i, word) in self.words[first..first + WORDS].iter().enumerate() {
            word.set(value(i));
        }
        self.written.set(self.written.get().max(first + WORDS));
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
        let base = MEMORY_BASE + frame as u64 * FRAME_BYTES;
        let poisoned = |i: usize| poison(PhysAddr(base + 8 * i as u64));
        let cached = &self.poison_terms[frame];
        if self.tracking.get() && cached.get() == 0 {
            cached.set((0..WORDS).fold(0u64, |sum, i| {
                sum.wrapping_add(word_term(first + i, poisoned(i)))
            }));
        }
        self.fill_frame(frame, poisoned, cached.get());
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
        for f in 0..used {
            sum = sum
                .wrapping_add(self.frame_terms(f))
                .wrapping_add(frame_term(f, self.owner[f].get(), self.key[f].get()));
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

impl Drop for PhysMemory {
    /// Clears what this memory's run wrote and keeps its arrays for the
    /// next memory of the same size on this thread.
    fn drop(&mut self) {
        let used = self.next.get() as usize;
        let mut words = core::mem::take(&mut self.words);
        let mut owner = core::mem::take(&mut self.owner);
        let mut key = core::mem::take(&mut self.key);
        let written = self.written.get().min(words.len());
        for w in &mut words[..written] {
            *w.get_mut() = 0;
        }
        for o in &mut owner[..used] {
            *o.get_mut() = FREE;
        }
        for k in &mut key[..used] {
            *k.get_mut() = 0;
        }
        KEPT.keep(Arrays {
            words,
            owner,
            key,
            poison_terms: core::mem::take(&mut self.poison_terms),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::hash::Hasher;
    use std::collections::hash_map::DefaultHasher;

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

    #[test]
    fn a_memory_after_a_dropped_one_starts_zero_and_free() {
        let words_of = |m: &PhysMemory| m.words.as_ptr();
        let m = PhysMemory::new(3);
        let a = m.allocate(SpaceId(1), 4).unwrap();
        let b = m.allocate(SpaceId(2), 0).unwrap();
        m.write(a.add(16), 7);
        assert!(m.free(b));
        m.write(b, 9);
        m.write(PhysAddr(MEMORY_BASE + 2 * FRAME_BYTES + 8), 5);
        let first = words_of(&m);
        drop(m);

        let m = PhysMemory::new(3);
        assert_eq!(words_of(&m), first, "the arrays are kept");
        let zero = PhysMemory::new(3);
        assert_ne!(words_of(&zero), first);
        for f in 0..3 {
            let base = PhysAddr(MEMORY_BASE + f * FRAME_BYTES);
            assert_eq!(m.owner(base), None, "frame {f} is free");
            assert_eq!(m.key(base), 0);
            for w in 0..WORDS as u64 {
                assert_eq!(m.read(base.add(8 * w)), 0, "frame {f} word {w}");
            }
        }
        let (mut h1, mut h2) = (DefaultHasher::new(), DefaultHasher::new());
        m.digest(&mut h1);
        zero.digest(&mut h2);
        assert_eq!(h1.finish(), h2.finish(), "same digest as a new memory");
        assert_eq!(m.allocate(SpaceId(3), 1), Some(a), "allocation starts over");
        assert_eq!(m.read(a.add(16)), poison(a.add(16)));
    }
}
