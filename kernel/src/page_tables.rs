//! What both kernels give the library to build page tables with, and the
//! tables over it: the memory entries live in ([`KernelMemory`], reached
//! through `memory::phys_to_virt`: the direct map, or the boot mapping
//! before it exists), the frames tables come from ([`PageTableFrames`],
//! the pool `memory::PAGE_TABLE_FRAMES`), the kernel's top-level table,
//! its image mapped with W^X, and page tables at any root over any backend
//! and lazy mode.
//!
//! One thing differs between the kernels: the x86-64 kernel write-protects
//! page-table pages with PKS, so the zeroing of a new table, which the
//! library does on memory directly, runs inside
//! `paging::with_page_table_window`.

use core::sync::atomic::{AtomicU64, Ordering};

use lazymmu::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use lazymmu::backend::{Backend, FlushScope};
use lazymmu::mode::LazyMode;
use lazymmu::pgtable::allocator::FrameAllocator;
use lazymmu::pgtable::format::Attributes;
use lazymmu::pgtable::memory::PageTableMemory;
use lazymmu::pgtable::ops::{Mmu, PageTables, VaRange};

use crate::memory::{phys_to_virt, PAGE_TABLE_FRAMES};
use crate::paging::with_page_table_window;

/// Page-table memory: entries are reached through `phys_to_virt`.
#[derive(Debug)]
pub struct KernelMemory;

impl KernelMemory {
    fn pointer(entry: PhysAddr) -> *mut u64 {
        phys_to_virt(entry) as *mut u64
    }
}

// SAFETY: every address the library passes is an entry of a table it
// allocated from the page-table pool (`PageTableFrames`), 8-byte aligned,
// which `phys_to_virt` reaches (the direct map covers all RAM, the boot
// mapping before it the RAM the pool is in); the library alone changes
// those tables, and the hardware walker at most sets accessed and dirty
// bits (x86-64; the arm64 kernel leaves hardware updates off), which
// `swap` exchanges atomically.
unsafe impl PageTableMemory for KernelMemory {
    fn read(&self, entry: PhysAddr) -> u64 {
        // SAFETY: the library only passes addresses of entries in tables it
        // allocated from the page-table pool, which is mapped (read access
        // is never key-restricted).
        unsafe { Self::pointer(entry).read_volatile() }
    }

    fn write(&self, entry: PhysAddr, value: u64) {
        // SAFETY: as `read`. Under PKS this faults unless a window is open:
        // the backend wrapper opens it; anything else is the bug PKS exists
        // to catch.
        unsafe { Self::pointer(entry).write_volatile(value) }
    }

    fn swap(&self, entry: PhysAddr, value: u64) -> u64 {
        // SAFETY: as `write`; the entry is 8-byte aligned, and the hardware
        // may set accessed and dirty bits concurrently, hence the atomic
        // exchange.
        unsafe { AtomicU64::from_ptr(Self::pointer(entry)).swap(value, Ordering::SeqCst) }
    }

    fn zero_frame(&self, frame: PhysAddr) {
        // A new table is zeroed before it is linked; it is a page-table
        // page, so this too needs the window where tables are protected.
        with_page_table_window(|| {
            // SAFETY: `frame` was just allocated from the page-table pool and
            // is not linked anywhere, so nothing else uses it.
            unsafe { core::ptr::write_bytes(Self::pointer(frame), 0, 512) }
        });
    }
}

/// Page-table frames, from the page-table pool.
#[derive(Debug)]
pub struct PageTableFrames;

impl FrameAllocator for PageTableFrames {
    fn allocate(&self) -> Option<PhysAddr> {
        PAGE_TABLE_FRAMES.allocate()
    }

    fn free(&self, frame: PhysAddr) {
        if let Err(error) = PAGE_TABLE_FRAMES.free(frame) {
            panic!("page-table frame free: {error:?}");
        }
    }
}

/// Page-table memory.
pub static MEMORY: KernelMemory = KernelMemory;
/// Page-table frames.
pub static TABLE_FRAMES: PageTableFrames = PageTableFrames;

/// A new, empty top-level table; `None` when the pool is exhausted.
pub fn new_root() -> Option<PhysAddr> {
    let root = TABLE_FRAMES.allocate()?;
    MEMORY.zero_frame(root);
    Some(root)
}

static KERNEL_ROOT: AtomicU64 = AtomicU64::new(0);

/// Allocates the kernel's top-level table, from then on [`kernel_root`].
///
/// # Errors
/// A message when the pool has no frame.
pub fn new_kernel_root() -> Result<PhysAddr, &'static str> {
    let root = new_root().ok_or("no frame for the root table")?;
    KERNEL_ROOT.store(root.0, Ordering::Release);
    Ok(root)
}

/// The kernel's top-level table.
pub fn kernel_root() -> PhysAddr {
    PhysAddr(KERNEL_ROOT.load(Ordering::Acquire))
}

/// The tables at `root` (address space `space`) over any backend (whose
/// memory is [`KernelMemory`]) and lazy mode, borrowed: the kernel keeps
/// its roots. The backend's format is the tables'; the kernel's space
/// ([`SpaceId::KERNEL`]) is the upper half's tree (TTBR1 on arm64, the
/// whole root on x86-64), every other space the lower half's.
pub fn tables_on<'a, B: Backend<Memory = KernelMemory>, L: LazyMode>(
    backend: &'a B,
    lazy: &'a L,
    root: PhysAddr,
    space: SpaceId,
) -> PageTables<'a, B, L, PageTableFrames> {
    let range = VaRange::for_format::<B::Format>(space == SpaceId::KERNEL);
    // SAFETY: every root the kernel hands out was allocated from the
    // page-table pool ([`new_root`]), whose frames `TABLE_FRAMES` hands out
    // and the backend's `KernelMemory` reaches; the library alone changes
    // these tables, and the roots stay allocated while the kernel runs.
    unsafe {
        Mmu::new(backend, lazy, &TABLE_FRAMES, FlushScope::Local).tables_at(root, space, range)
    }
}

extern "C" {
    static __text_start: u8;
    static __text_end: u8;
    static __rodata_start: u8;
    static __rodata_end: u8;
    static __data_start: u8;
    static __kernel_end: u8;
}

/// Maps the kernel image where it is linked, with W^X: text read-only and
/// executable, rodata read-only, data and stack read-write, each to the
/// physical address `image_phys` gives for its linked address (the linker
/// scripts' section symbols).
///
/// # Errors
/// A message when a mapping cannot be made.
pub fn map_image<B: Backend<Memory = KernelMemory>, L: LazyMode>(
    tables: &PageTables<'_, B, L, PageTableFrames>,
    image_phys: fn(u64) -> u64,
) -> Result<(), &'static str> {
    let text = Attributes {
        writable: false,
        executable: true,
        ..Attributes::kernel_data()
    };
    let rodata = Attributes::kernel_data().read_only();
    let data = Attributes::kernel_data();
    let image = [
        (&raw const __text_start, &raw const __text_end, text),
        (&raw const __rodata_start, &raw const __rodata_end, rodata),
        (&raw const __data_start, &raw const __kernel_end, data),
    ];
    for (start, end, attrs) in image {
        let (start, end) = (start as u64, end as u64);
        tables
            .map(
                VirtAddr(start),
                PhysAddr(image_phys(start)),
                end - start,
                attrs,
                PageSize::Size4K,
            )
            .map_err(|_| "mapping the kernel image failed")?;
    }
    Ok(())
}
