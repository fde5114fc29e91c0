//! How to reach the contents of a page-table frame from its physical
//! address.
//!
//! The same range operations run on host memory in tests
//! ([`HostMemory`]), on the simulator's physical memory, and on a kernel's
//! direct map (the kernel implements [`PageTableMemory`] over it).

use core::cell::Cell;

use crate::addr::PhysAddr;

/// Bytes in a page-table frame.
pub const FRAME_SIZE: u64 = 4096;

/// Access to page-table entries by physical address.
///
/// Methods take `&self`: the memory is ambient, and the hardware (or the
/// simulated hardware) may set accessed and dirty bits at any time, which is
/// why [`PageTableMemory::swap`] must be atomic on real memory.
///
/// Range operations never call this directly for entry updates: they go
/// through the backend's [`PteAccess`](crate::backend::PteAccess), and only
/// zero new frames and walk (the hardware walker) here.
///
/// # Safety
///
/// An implementation promises that each method is sound for every address
/// the library passes it, given what the constructor of the page tables
/// promised ([`Mmu::new`](crate::pgtable::ops::Mmu::new)):
/// the library only passes addresses inside the root and the frames of the
/// allocator it was given, and the tables' entries. An implementation over
/// raw memory (a kernel's direct map) dereferences those addresses; one
/// that checks every address itself (host memory, a model) may panic on a
/// foreign one instead.
pub unsafe trait PageTableMemory {
    /// Reads the 8-byte entry at `entry` (8-byte aligned).
    ///
    /// # Panics
    /// An implementation may panic when `entry` is not page-table memory it
    /// knows.
    fn read(&self, entry: PhysAddr) -> u64;

    /// Writes the 8-byte entry at `entry`.
    ///
    /// # Panics
    /// As [`PageTableMemory::read`].
    fn write(&self, entry: PhysAddr, value: u64);

    /// Atomically replaces the entry and returns the old value (`xchg`).
    ///
    /// # Panics
    /// As [`PageTableMemory::read`].
    fn swap(&self, entry: PhysAddr, value: u64) -> u64;

    /// Fills the 4 KiB frame at `frame` with zeros.
    ///
    /// # Panics
    /// As [`PageTableMemory::read`].
    fn zero_frame(&self, frame: PhysAddr);

    /// Writes `count` consecutive entries from `first` (inside one frame),
    /// entry `i` getting `value + i * step`. The default writes them one
    /// by one.
    ///
    /// # Panics
    /// As [`PageTableMemory::read`], and an implementation may panic when
    /// the run leaves the frame.
    fn write_run(&self, first: PhysAddr, count: usize, value: u64, step: u64) {
        for i in 0..count as u64 {
            self.write(first.add(8 * i), value + i * step);
        }
    }

    /// Lends the `count` consecutive entries from `first` (inside one
    /// frame) as cells, for a backend to update a run in one loop of plain
    /// loads and stores. `None`, the default, when every entry must go
    /// through [`read`](PageTableMemory::read),
    /// [`write`](PageTableMemory::write) and
    /// [`swap`](PageTableMemory::swap): memory a hardware walker updates
    /// concurrently needs its swaps atomic, which a cell's are not. A run
    /// lent as cells may hold values that the loop over it takes back
    /// before it returns ([`runs::cells`](crate::backend::runs::cells)), so
    /// no walker may read it meanwhile either.
    ///
    /// # Panics
    /// As [`PageTableMemory::write_run`].
    fn run_cells(&self, first: PhysAddr, count: usize) -> Option<&[Cell<u64>]> {
        let _ = (first, count);
        None
    }
}

/// What a poisoning allocator leaves in the entry at `entry` of a frame
/// it hands out (see [`HostFrameAllocator::poisoning`]): garbage that
/// every format reads as present at every level — x86-64's P bit,
/// AArch64's valid-table/page bits `0b11`, book3s64's and sparc64's bit
/// 63, s390's present bit with both of its invalid bits (0x20, 0x400)
/// clear — with the other bits a multiplicative hash of the entry's
/// address (cheap enough to fill every frame handed out), so that a table
/// or leaf read from it points somewhere arbitrary. A range
/// operation that reads an entry of a new table it did not clear sees a
/// mapping that is not there.
///
/// [`HostFrameAllocator::poisoning`]: crate::pgtable::allocator::HostFrameAllocator::poisoning
///
/// ```
/// use lazymmu::addr::PhysAddr;
/// use lazymmu::pgtable::format::{Aarch64, Entry, Format, S390, X86_64};
/// use lazymmu::pgtable::memory::poison;
/// let garbage = poison(PhysAddr(0x10_0008));
/// assert_ne!(X86_64::decode(garbage, 1), Entry::Absent);
/// assert_ne!(Aarch64::decode(garbage, 2), Entry::Absent);
/// assert_ne!(S390::decode(garbage, 1), Entry::Absent);
/// ```
pub const fn poison(entry: PhysAddr) -> u64 {
    /// x86 P and RW; AArch64 valid and table/page; ppc64 hash `_PAGE_PRESENT`
    /// and sparc64 `_PAGE_VALID` (bit 63); s390 `_PAGE_PRESENT`.
    const SET: u64 = 1 << 63 | 0b11;
    /// s390 `_PAGE_INVALID` (0x400) and `_SEGMENT_ENTRY_INVALID` /
    /// `_REGION_ENTRY_INVALID` (0x20).
    const CLEAR: u64 = 0x400 | 0x20;
    // Fibonacci hashing: an odd multiplier, so distinct addresses give
    // distinct products.
    (entry.0.wrapping_mul(0x9e37_79b9_7f4a_7c15) | SET) & !CLEAR
}

// SAFETY: forwards to `T`, which made the promise.
unsafe impl<T: PageTableMemory + ?Sized> PageTableMemory for &T {
    #[inline]
    fn read(&self, entry: PhysAddr) -> u64 {
        (**self).read(entry)
    }
    #[inline]
    fn write(&self, entry: PhysAddr, value: u64) {
        (**self).write(entry, value)
    }
    #[inline]
    fn swap(&self, entry: PhysAddr, value: u64) -> u64 {
        (**self).swap(entry, value)
    }
    #[inline]
    fn zero_frame(&self, frame: PhysAddr) {
        (**self).zero_frame(frame)
    }
    #[inline]
    fn write_run(&self, first: PhysAddr, count: usize, value: u64, step: u64) {
        (**self).write_run(first, count, value, step)
    }
    #[inline]
    fn run_cells(&self, first: PhysAddr, count: usize) -> Option<&[Cell<u64>]> {
        (**self).run_cells(first, count)
    }
}

#[cfg(feature = "alloc")]
pub use host::{HostFrame, HostMemory};

#[cfg(feature = "alloc")]
mod host {
    use alloc::rc::Rc;
    use core::cell::Cell;

    use super::{poison, PageTableMemory, FRAME_SIZE};
    use crate::addr::PhysAddr;

    /// One 4 KiB frame of host memory, aligned like a real frame so that a
    /// host pointer to it can stand for its physical address plus an offset
    /// (what the `x86_64` crate's `OffsetPageTable` expects).
    #[derive(Clone)]
    #[repr(C, align(4096))]
    pub struct HostFrame(pub [Cell<u64>; ENTRIES_PER_FRAME]);

    /// Entries of one frame.
    const ENTRIES_PER_FRAME: usize = 512;

    impl HostFrame {
        fn zeroed() -> Self {
            HostFrame([const { Cell::new(0) }; ENTRIES_PER_FRAME])
        }
    }

    /// Page-table memory on the host: a contiguous array of frames whose
    /// physical addresses start at `base`. Its allocator,
    /// [`HostFrameAllocator::poisoning`], shares the frames and fills each
    /// one it hands out with [`poison`].
    ///
    /// [`HostFrameAllocator::poisoning`]: crate::pgtable::allocator::HostFrameAllocator::poisoning
    ///
    /// ```
    /// use lazymmu::addr::PhysAddr;
    /// use lazymmu::pgtable::memory::{HostMemory, PageTableMemory};
    /// let memory = HostMemory::new(PhysAddr(0x10_0000), 4);
    /// memory.write(PhysAddr(0x10_1008), 42);
    /// assert_eq!(memory.read(PhysAddr(0x10_1008)), 42);
    /// ```
    pub struct HostMemory {
        base: u64,
        /// How many frames `frames` holds, kept apart so that no access
        /// borrows the whole slice.
        len: usize,
        frames: Rc<[HostFrame]>,
    }

    impl core::fmt::Debug for HostMemory {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.debug_struct("HostMemory")
                .field("base", &PhysAddr(self.base))
                .field("frames", &self.len)
                .finish()
        }
    }

    impl HostMemory {
        /// `frames` zeroed frames, the first at physical address `base`
        /// (4 KiB aligned).
        ///
        /// # Panics
        /// If `base` is not 4 KiB aligned.
        pub fn new(base: PhysAddr, frames: usize) -> Self {
            assert_eq!(
                base.0 % FRAME_SIZE,
                0,
                "host memory base must be 4 KiB aligned"
            );
            HostMemory {
                base: base.0,
                len: frames,
                frames: (0..frames).map(|_| HostFrame::zeroed()).collect(),
            }
        }

        /// The same frames, for an allocator that poisons them.
        pub(crate) fn share(&self) -> Self {
            HostMemory {
                base: self.base,
                len: self.len,
                frames: Rc::clone(&self.frames),
            }
        }

        /// Fills the frame at `frame` with [`poison`], as a poisoning
        /// allocator hands it out.
        ///
        /// # Panics
        /// If `frame` is not a frame of this memory.
        pub fn poison_frame(&self, frame: PhysAddr) {
            let cells = &self.frame(frame).0;
            for (i, cell) in cells.iter().enumerate() {
                cell.set(poison(frame.add(8 * i as u64)));
            }
        }

        fn frame(&self, frame: PhysAddr) -> &HostFrame {
            assert_eq!(frame.0 % FRAME_SIZE, 0, "{frame:?} is not a frame");
            // `cell` checks that the frame is ours.
            let _ = self.cell(frame);
            self.frame_at(((frame.0 - self.base) / FRAME_SIZE) as usize)
        }

        /// The frame at `index`, borrowed alone. Indexing the slice would
        /// borrow all of it, every frame's cells, on every access; under
        /// Miri's Stacked Borrows that is a retag of the whole memory per
        /// entry read, which made a test of a 64-frame tree run for minutes.
        ///
        /// # Panics
        /// If `index` is not below the number of frames.
        #[inline]
        fn frame_at(&self, index: usize) -> &HostFrame {
            assert!(index < self.len, "frame {index} beyond the host memory");
            // SAFETY: `Rc::as_ptr` points at the slice's first frame
            // without borrowing the slice, `index` is below its length
            // (checked above), and the frames live as long as `self`'s
            // `Rc`; they are only ever borrowed shared (`Cell`s).
            unsafe { &*Rc::as_ptr(&self.frames).cast::<HostFrame>().add(index) }
        }

        /// Physical address of the first frame.
        pub fn base(&self) -> PhysAddr {
            PhysAddr(self.base)
        }

        /// Number of frames.
        pub fn frames(&self) -> usize {
            self.len
        }

        /// Whether `phys` lies in this memory.
        pub fn contains(&self, phys: PhysAddr) -> bool {
            phys.0 >= self.base && phys.0 - self.base < self.len as u64 * FRAME_SIZE
        }

        /// The host address that corresponds to physical address 0: the
        /// host pointer to `phys` is `phys + physical_offset()` (wrapping).
        /// This is the offset the `x86_64` crate's `OffsetPageTable` takes.
        pub fn physical_offset(&self) -> u64 {
            (Rc::as_ptr(&self.frames).cast::<HostFrame>() as u64).wrapping_sub(self.base)
        }

        #[inline]
        fn cell(&self, entry: PhysAddr) -> &Cell<u64> {
            let offset = entry.0.wrapping_sub(self.base);
            let frame = (offset / FRAME_SIZE) as usize;
            if frame >= self.len || entry.0 % 8 != 0 {
                panic!("{entry:?} is not an aligned entry of host page-table memory");
            }
            let index = frame * ENTRIES_PER_FRAME + ((offset % FRAME_SIZE) / 8) as usize;
            // SAFETY: the frames are `repr(C)` arrays of `ENTRIES_PER_FRAME`
            // cells, laid out one after another in the `Rc`'s slice, so the
            // cell `index` lies inside frame `frame`, which is below
            // `self.len` (checked above). Only that cell is borrowed (see
            // `frame_at`), shared, for as long as `self`.
            unsafe { &*Rc::as_ptr(&self.frames).cast::<Cell<u64>>().add(index) }
        }
    }

    // SAFETY: every access goes through `cell`, which checks that the
    // address is an aligned entry of this memory and panics otherwise; the
    // cells are owned by `self`.
    unsafe impl PageTableMemory for HostMemory {
        #[inline]
        fn read(&self, entry: PhysAddr) -> u64 {
            self.cell(entry).get()
        }
        #[inline]
        fn write(&self, entry: PhysAddr, value: u64) {
            self.cell(entry).set(value)
        }
        #[inline]
        fn swap(&self, entry: PhysAddr, value: u64) -> u64 {
            self.cell(entry).replace(value)
        }
        fn write_run(&self, first: PhysAddr, count: usize, value: u64, step: u64) {
            if let Some(run) = self.run_cells(first, count) {
                crate::backend::runs::cells::fill(run, value, step);
            }
        }

        /// Host memory is not walked by hardware: a run is a slice of its
        /// cells. `None` only for an empty run.
        #[inline]
        fn run_cells(&self, first: PhysAddr, count: usize) -> Option<&[Cell<u64>]> {
            if count == 0 {
                return None;
            }
            let _ = self.cell(first);
            let offset = first.0 - self.base;
            let index = ((offset % FRAME_SIZE) / 8) as usize;
            let frame = &self.frame_at((offset / FRAME_SIZE) as usize).0;
            let run = frame.get(index..index + count).unwrap_or_else(|| {
                panic!("run of {count} entries from {first:?} leaves its frame")
            });
            Some(run)
        }

        fn zero_frame(&self, frame: PhysAddr) {
            for cell in &self.frame(frame).0 {
                cell.set(0);
            }
        }
    }
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    use super::*;

    #[test]
    fn runs_and_swaps() {
        let memory = HostMemory::new(PhysAddr(0x2000), 2);
        memory.write_run(PhysAddr(0x2ff0), 2, 0x1003, 0x1000);
        assert_eq!(memory.read(PhysAddr(0x2ff0)), 0x1003);
        assert_eq!(memory.read(PhysAddr(0x2ff8)), 0x2003);
        assert_eq!(memory.swap(PhysAddr(0x2ff8), 7), 0x2003);
        memory.zero_frame(PhysAddr(0x2000));
        assert_eq!(memory.read(PhysAddr(0x2ff0)), 0);
        assert_eq!(memory.read(PhysAddr(0x2ff8)), 0);
    }

    #[test]
    #[should_panic(expected = "leaves its frame")]
    fn a_run_may_not_leave_its_frame() {
        let memory = HostMemory::new(PhysAddr(0), 2);
        memory.write_run(PhysAddr(0xff8), 2, 0, 0);
    }

    #[test]
    #[should_panic(expected = "not an aligned entry")]
    fn foreign_addresses_are_refused() {
        let memory = HostMemory::new(PhysAddr(0x1000), 1);
        memory.read(PhysAddr(0x2000));
    }
}
