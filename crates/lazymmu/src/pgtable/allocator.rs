//! Page-table frame allocation.

use crate::addr::PhysAddr;

/// Allocates and frees 4 KiB frames for page tables.
///
/// `&self` with interior mutability: allocation happens from inside range
/// operations, which may be re-entered from interrupt handlers in a kernel.
pub trait FrameAllocator {
    /// A free frame, or `None` when memory is exhausted. The contents are
    /// unspecified: range operations zero new tables themselves.
    fn allocate(&self) -> Option<PhysAddr>;

    /// Returns `frame` (obtained from [`FrameAllocator::allocate`]).
    fn free(&self, frame: PhysAddr);
}

impl<T: FrameAllocator + ?Sized> FrameAllocator for &T {
    #[inline]
    fn allocate(&self) -> Option<PhysAddr> {
        (**self).allocate()
    }
    #[inline]
    fn free(&self, frame: PhysAddr) {
        (**self).free(frame)
    }
}

#[cfg(feature = "alloc")]
pub use host::HostFrameAllocator;

#[cfg(feature = "alloc")]
mod host {
    use alloc::vec::Vec;
    use core::cell::{Cell, RefCell};

    use super::FrameAllocator;
    use crate::addr::PhysAddr;
    use crate::pgtable::memory::{HostMemory, FRAME_SIZE};

    /// A host allocator over a contiguous range of frames, for tests and
    /// benchmarks. It counts what it hands out, detects double frees, and
    /// can be told to fail the Nth allocation. Over a [`HostMemory`]
    /// ([`HostFrameAllocator::poisoning`]) it fills every frame it hands
    /// out with present-looking garbage, as a real allocator may hand out
    /// a frame last used for anything: code that reads a new table before
    /// clearing it then sees mappings that are not there.
    ///
    /// ```
    /// use lazymmu::addr::PhysAddr;
    /// use lazymmu::pgtable::allocator::{FrameAllocator, HostFrameAllocator};
    /// use lazymmu::pgtable::memory::{poison, HostMemory, PageTableMemory};
    /// let memory = HostMemory::new(PhysAddr(0x10_0000), 8);
    /// let frames = HostFrameAllocator::poisoning(&memory);
    /// frames.fail_at(2);
    /// let a = frames.allocate().unwrap();
    /// assert_eq!(memory.read(a.add(8)), poison(a.add(8)));
    /// assert_eq!(frames.allocate(), None); // the injected failure
    /// frames.free(a);
    /// assert_eq!(frames.outstanding(), 0);
    /// ```
    #[derive(Debug)]
    pub struct HostFrameAllocator {
        base: u64,
        frames: usize,
        next_unused: Cell<usize>,
        free_list: RefCell<Vec<usize>>,
        in_use: RefCell<Vec<bool>>,
        outstanding: Cell<usize>,
        allocations: Cell<u64>,
        fail_at: Cell<Option<u64>>,
        /// The memory whose frames are poisoned when handed out.
        poisoned: Option<HostMemory>,
    }

    impl HostFrameAllocator {
        /// An allocator of the `frames` frames starting at `base`, handing
        /// out addresses only: the frames keep whatever they hold (what a
        /// benchmark wants; tests want [`HostFrameAllocator::poisoning`]).
        pub fn new(base: PhysAddr, frames: usize) -> Self {
            HostFrameAllocator {
                base: base.0,
                frames,
                next_unused: Cell::new(0),
                free_list: RefCell::new(Vec::new()),
                in_use: RefCell::new(alloc::vec![false; frames]),
                outstanding: Cell::new(0),
                allocations: Cell::new(0),
                fail_at: Cell::new(None),
                poisoned: None,
            }
        }

        /// An allocator of every frame of `memory` that fills each frame
        /// it hands out with [`poison`](crate::pgtable::memory::poison):
        /// entries every format reads as present.
        pub fn poisoning(memory: &HostMemory) -> Self {
            HostFrameAllocator {
                poisoned: Some(memory.share()),
                ..Self::new(memory.base(), memory.frames())
            }
        }

        /// Makes the `n`th allocation from now (1-based) fail, and only
        /// that one. `fail_at(0)` cancels.
        pub fn fail_at(&self, n: u64) {
            self.fail_at
                .set((n != 0).then(|| self.allocations.get() + n));
        }

        /// Frames allocated and not yet freed.
        pub fn outstanding(&self) -> usize {
            self.outstanding.get()
        }

        /// Successful and failed allocation requests so far.
        pub fn allocations(&self) -> u64 {
            self.allocations.get()
        }

        /// Whether `frame` is currently allocated.
        pub fn is_allocated(&self, frame: PhysAddr) -> bool {
            self.index(frame)
                .map(|i| self.in_use.borrow()[i])
                .unwrap_or(false)
        }

        fn index(&self, frame: PhysAddr) -> Option<usize> {
            let offset = frame.0.checked_sub(self.base)?;
            let index = (offset / FRAME_SIZE) as usize;
            (offset % FRAME_SIZE == 0 && index < self.frames).then_some(index)
        }
    }

    impl FrameAllocator for HostFrameAllocator {
        fn allocate(&self) -> Option<PhysAddr> {
            let request = self.allocations.get() + 1;
            self.allocations.set(request);
            if self.fail_at.get() == Some(request) {
                self.fail_at.set(None);
                return None;
            }
            let popped = self.free_list.borrow_mut().pop();
            let index = match popped {
                Some(index) => index,
                None => {
                    let index = self.next_unused.get();
                    if index == self.frames {
                        return None;
                    }
                    self.next_unused.set(index + 1);
                    index
                }
            };
            self.in_use.borrow_mut()[index] = true;
            self.outstanding.set(self.outstanding.get() + 1);
            let frame = PhysAddr(self.base + index as u64 * FRAME_SIZE);
            if let Some(memory) = &self.poisoned {
                memory.poison_frame(frame);
            }
            Some(frame)
        }

        /// # Panics
        /// On a frame this allocator does not own or did not hand out
        /// (double free): both are bugs in the caller.
        fn free(&self, frame: PhysAddr) {
            let index = self
                .index(frame)
                .unwrap_or_else(|| panic!("{frame:?} was not allocated here"));
            let mut in_use = self.in_use.borrow_mut();
            assert!(in_use[index], "double free of {frame:?}");
            in_use[index] = false;
            drop(in_use);
            self.free_list.borrow_mut().push(index);
            self.outstanding.set(self.outstanding.get() - 1);
        }
    }
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    use super::*;

    #[test]
    fn injected_failure_hits_exactly_the_nth_request() {
        let frames = HostFrameAllocator::new(PhysAddr(0), 8);
        frames.fail_at(3);
        assert!(frames.allocate().is_some());
        assert!(frames.allocate().is_some());
        assert_eq!(frames.allocate(), None);
        assert!(frames.allocate().is_some());
        assert_eq!(frames.outstanding(), 3);
        assert_eq!(frames.allocations(), 4);
    }

    #[test]
    fn exhaustion_is_none_and_freed_frames_come_back() {
        let frames = HostFrameAllocator::new(PhysAddr(0x1000), 2);
        let a = frames.allocate().unwrap();
        let _b = frames.allocate().unwrap();
        assert_eq!(frames.allocate(), None);
        frames.free(a);
        assert_eq!(frames.allocate(), Some(a));
    }

    /// Every entry of every frame a poisoning allocator hands out, the
    /// first time and again after the frame was zeroed and freed, reads as
    /// present in every format at every level.
    #[test]
    fn poisoned_frames_look_present_to_every_format() {
        use crate::pgtable::format::{
            Aarch64, Entry, Format, PpcHash4K, Sparc64Sun4v, X86_64_5Level, S390, X86_64,
        };
        use crate::pgtable::memory::{poison, HostMemory, PageTableMemory};

        fn present<F: Format>(raw: u64) {
            assert!(F::is_valid(raw), "{}: {raw:#x} is not valid", F::NAME);
            for level in 1..=F::LEVELS {
                assert_ne!(
                    F::decode(raw, level),
                    Entry::Absent,
                    "{} level {level}",
                    F::NAME
                );
            }
        }

        let memory = HostMemory::new(PhysAddr(0x10_0000), 2);
        let frames = HostFrameAllocator::poisoning(&memory);
        let first = frames.allocate().unwrap();
        memory.zero_frame(first);
        frames.free(first);
        for _ in 0..2 {
            let frame = frames.allocate().unwrap();
            let mut distinct = std::collections::BTreeSet::new();
            for i in 0..512 {
                let raw = memory.read(frame.add(8 * i));
                assert_eq!(raw, poison(frame.add(8 * i)));
                distinct.insert(raw);
                present::<X86_64>(raw);
                present::<X86_64_5Level>(raw);
                present::<Aarch64>(raw);
                present::<PpcHash4K>(raw);
                present::<S390>(raw);
                present::<Sparc64Sun4v>(raw);
            }
            assert_eq!(distinct.len(), 512, "every entry its own garbage");
        }
    }

    #[test]
    #[should_panic(expected = "double free")]
    fn double_free_is_caught() {
        let frames = HostFrameAllocator::new(PhysAddr(0), 2);
        let a = frames.allocate().unwrap();
        frames.free(a);
        frames.free(a);
    }
}
