//! The kernel's page tables, built and changed only by the library: the
//! memory they live in, the frame allocator they come from, the x86-64
//! backend over the library's real instructions ([`BareMetal`]), wrapped so
//! that entries are written only through a PKS window (and, for several
//! CPUs, in [`SmpBackend`]), and the lazy mode (the counter design) on top.

use core::sync::atomic::{AtomicU64, Ordering};

use lazymmu::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use lazymmu::backend::machine::{BackendBug, CpuPrimitives};
use lazymmu::backend::protected::{KeySlot, KeySlots, X86Pks};
use lazymmu::backend::x86::{
    flush_locally, BareMetal, BareMetalCounters, BareMetalCounts, RemoteFlush, X86Backend,
};
use lazymmu::backend::{Backend, EntryUpdate, PteAccess};
use lazymmu::cpu::{Cpu, CpuId, CpuMask, KeyRegister};
use lazymmu::mode::counters::Counters;
use lazymmu::mode::{LazyMode, MisusePolicy};
use lazymmu::pgtable::allocator::FrameAllocator;
use lazymmu::pgtable::format::{Attributes, X86_64};
use lazymmu::pgtable::memory::PageTableMemory;
use lazymmu::pgtable::ops::{allocate_root, PageTables};

use crate::cpu;
use crate::env::KernelEnv;
use crate::memory::{self, MemoryMap, Region, DATA_FRAMES, PAGE_TABLE_FRAMES};
use crate::percpu;
use crate::pks::{self, PAGE_TABLE_KEY};
use crate::smp_backend::{self, SmpBackend};
use crate::sync::Global;

/// Page-table memory: entries are reached through the direct map (the boot
/// identity map before it exists).
#[derive(Debug)]
pub struct KernelMemory;

impl KernelMemory {
    fn pointer(entry: PhysAddr) -> *mut u64 {
        memory::phys_to_virt(entry) as *mut u64
    }
}

// SAFETY: every address the library passes is an entry of a table it
// allocated from the page-table pool (`PageTableFrames`), which the direct
// map (the boot identity map before it) covers, 8-byte aligned; the
// library alone changes those tables, and the hardware walker only sets
// accessed and dirty bits, which `swap` exchanges atomically.
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
        // may set A/D bits concurrently, hence the atomic exchange.
        unsafe { AtomicU64::from_ptr(Self::pointer(entry)).swap(value, Ordering::SeqCst) }
    }

    fn zero_frame(&self, frame: PhysAddr) {
        // A new table is zeroed before it is linked; it is a page-table
        // page, so this too needs the window (already open inside a
        // section, opened and closed here otherwise).
        pks::with_page_table_window(|| {
            // SAFETY: `frame` was just allocated from the page-table pool and
            // is not linked anywhere, so nothing else uses it.
            unsafe { core::ptr::write_bytes(Self::pointer(frame), 0, 512) }
        });
    }
}

/// Page-table frames, from the pool the direct map tags with the
/// page-table key.
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

/// The executing CPU (the library's name for it).
fn cpu_id() -> CpuId {
    CpuId::new(percpu::cpu_index())
}

fn loaded_space() -> SpaceId {
    SpaceId(percpu::this_cpu().loaded_space.load(Ordering::Acquire))
}

/// `native_flush_tlb_multi`: a cross-call running the flush on every CPU of
/// the mask, waiting for all.
fn shootdown(cpus: CpuMask, request: RemoteFlush) {
    let flush = move |_cpu: usize| flush_locally(&BARE_METAL, request);
    crate::mm::tlb_cross_call(crate::mm::one_word(cpus), &flush, || {});
}

/// The library's x86 instructions (`invlpg`, CR3 reload, CR4.PGE toggle,
/// IA32_PKRS), counted per CPU, with this kernel's CPU numbering,
/// interrupt context, loaded address space, shootdown cross-call and
/// preemption control.
pub static BARE_METAL: BareMetal = BareMetal {
    cpu_id,
    in_interrupt: crate::interrupts::in_interrupt,
    loaded_space,
    shootdown,
    preempt_disable: percpu::preempt_disable,
    preempt_enable: percpu::preempt_enable,
    counts: BareMetalCounters::new(),
};

/// The executing CPU's instruction counts so far (the caller stays on it).
pub fn counts() -> BareMetalCounts {
    BARE_METAL.counts.on(cpu_id())
}

/// Every CPU's instruction counts so far, summed.
pub fn all_counts() -> BareMetalCounts {
    BARE_METAL.counts.total()
}

/// The key register and the machine state the protected wrapper consults.
#[derive(Debug)]
pub struct KernelKeys;

/// Misuse the backend reported (double enter, key-frame mismatch) that no
/// test provoked on purpose.
pub fn backend_bugs() -> u64 {
    smp_backend::UNEXPECTED_BUGS.load(Ordering::Relaxed)
}

impl Cpu for KernelKeys {
    fn cpu_id(&self) -> CpuId {
        BARE_METAL.cpu_id()
    }
    fn in_interrupt(&self) -> bool {
        BARE_METAL.in_interrupt()
    }
    fn preempt_disable(&self) {
        BARE_METAL.preempt_disable();
    }
    fn preempt_enable(&self) {
        BARE_METAL.preempt_enable();
    }
}

impl CpuPrimitives for KernelKeys {
    fn read_pte(&self, entry: PhysAddr) -> u64 {
        MEMORY.read(entry)
    }
    fn report(&self, bug: BackendBug) {
        smp_backend::report(bug);
    }
}

/// IA32_PKRS through [`pks`], which leaves it alone until PKS is on.
impl KeyRegister for KernelKeys {
    fn read_key(&self) -> u64 {
        pks::read()
    }
    fn write_key(&self, value: u64) {
        pks::write_window(value);
    }
}

/// The running task's saved copies of the register.
impl KeySlots for KernelKeys {
    fn task_key(&self, slot: KeySlot) -> Option<u64> {
        crate::sched::current().key(slot == KeySlot::Live)
    }
    fn set_task_key(&self, slot: KeySlot, value: u64) {
        crate::sched::current().set_key(slot == KeySlot::Live, value);
    }
}

/// The native backend with page tables protected by PKS (`x86-pks`), for
/// several CPUs.
pub type KernelBackend = SmpBackend<X86Pks<KernelMemory, &'static BareMetal, KernelKeys>>;
/// The lazy mode (counters in the task) over the kernel backend.
pub type KernelLazy = Counters<KernelEnv, &'static KernelBackend>;
/// The kernel's page tables with lazy mode `L`.
pub type KernelTables<'a, L> =
    PageTables<'a, X86_64, KernelMemory, KernelBackend, L, PageTableFrames>;

/// Page-table memory.
pub static MEMORY: KernelMemory = KernelMemory;
/// Page-table frames.
pub static TABLE_FRAMES: PageTableFrames = PageTableFrames;
static BACKEND: Global<KernelBackend> = Global::new();
static LAZY: Global<KernelLazy> = Global::new();

/// The backend every page-table change goes through.
pub fn backend() -> &'static KernelBackend {
    BACKEND.get()
}

/// The lazy mode.
pub fn lazy() -> &'static KernelLazy {
    LAZY.get()
}

/// Builds the backend and the lazy mode. Before interrupts are enabled.
pub fn init_backend() {
    BACKEND.init(SmpBackend::new(X86Pks::x86_pks(
        KernelMemory,
        &BARE_METAL,
        KernelKeys,
    )));
    LAZY.init(Counters::new(KernelEnv, BACKEND.get(), MisusePolicy::Count));
    NATIVE.init(X86Backend::new(KernelMemory, &BARE_METAL));
}

/// Exception entry: the default key register value (see
/// [`lazymmu::backend::protected::Protected::exception_enter`]); `None`
/// before the backend exists.
pub fn exception_enter() -> Option<lazymmu::backend::protected::KeyFrame> {
    BACKEND
        .is_ready()
        .then(|| BACKEND.get().inner().exception_enter())
}

/// Exception return: restores the interrupted key register value.
pub fn exception_exit(frame: Option<lazymmu::backend::protected::KeyFrame>) {
    if let Some(frame) = frame {
        BACKEND.get().inner().exception_exit(frame);
    }
}

static KERNEL_ROOT: AtomicU64 = AtomicU64::new(0);

/// The kernel's top-level table.
pub fn kernel_root() -> PhysAddr {
    PhysAddr(KERNEL_ROOT.load(Ordering::Acquire))
}

/// The kernel's tables with lazy sections.
pub fn kernel_tables() -> KernelTables<'static, KernelLazy> {
    kernel_tables_with(lazy())
}

/// The native x86-64 backend without the PKS wrapper: for measuring what
/// the protection costs. Its entry writes fault unless the caller has
/// opened IA32_PKRS itself.
pub type NativeBackend = X86Backend<KernelMemory, &'static BareMetal>;

static NATIVE: Global<NativeBackend> = Global::new();

/// The unwrapped native backend (see [`NativeBackend`]).
pub fn native_backend() -> &'static NativeBackend {
    NATIVE.get()
}

/// The tables at `root` (address space `space`) over any backend and lazy
/// mode.
pub fn tables_on<'a, B: Backend<Format = X86_64>, L: LazyMode>(
    backend: &'a B,
    lazy: &'a L,
    root: PhysAddr,
    space: SpaceId,
) -> PageTables<'a, X86_64, KernelMemory, B, L, PageTableFrames> {
    // SAFETY: every root the kernel hands out was allocated from the
    // page-table pool and is reached through `MEMORY`; the library alone
    // changes these tables.
    unsafe { PageTables::new(root, space, &MEMORY, backend, lazy, &TABLE_FRAMES) }
}

/// The kernel's tables with any lazy mode (for
/// [`Eager`](lazymmu::mode::eager::Eager), a kernel without batching).
pub fn kernel_tables_with<L: LazyMode>(lazy: &L) -> KernelTables<'_, L> {
    tables_on(backend(), lazy, kernel_root(), SpaceId::KERNEL)
}

extern "C" {
    static __text_start: u8;
    static __text_end: u8;
    static __rodata_start: u8;
    static __rodata_end: u8;
    static __data_start: u8;
    static __kernel_end: u8;
}

fn symbol(s: *const u8) -> u64 {
    s as u64
}

/// Builds the kernel's tables with the library (the kernel image identity
/// mapped with W^X, every usable RAM region in the direct map, page-table
/// frames tagged with [`PAGE_TABLE_KEY`]), loads them and turns on global
/// pages.
///
/// # Errors
/// A message when a frame or a mapping cannot be had.
pub fn init(map: &MemoryMap) -> Result<(), &'static str> {
    // SAFETY: `TABLE_FRAMES` hands out frames of the page-table pool, which
    // `MEMORY` reaches.
    let root =
        unsafe { allocate_root(&MEMORY, &TABLE_FRAMES) }.ok_or("no frame for the root table")?;
    KERNEL_ROOT.store(root.0, Ordering::Release);
    let tables = kernel_tables();

    let text = Attributes {
        writable: false,
        executable: true,
        ..Attributes::kernel_data()
    };
    let rodata = Attributes::kernel_data().read_only();
    let data = Attributes::kernel_data();
    let image = [
        (
            symbol(&raw const __text_start),
            symbol(&raw const __text_end),
            text,
        ),
        (
            symbol(&raw const __rodata_start),
            symbol(&raw const __rodata_end),
            rodata,
        ),
        (
            symbol(&raw const __data_start),
            symbol(&raw const __kernel_end),
            data,
        ),
    ];
    for (start, end, attrs) in image {
        tables
            .map(
                VirtAddr(start),
                PhysAddr(start),
                end - start,
                attrs,
                PageSize::Size4K,
            )
            .map_err(|_| "mapping the kernel image failed")?;
    }

    let pool = PAGE_TABLE_FRAMES.region();
    let table_attrs = Attributes {
        key: PAGE_TABLE_KEY,
        ..Attributes::kernel_data()
    };
    for region in map.regions() {
        // The page-table pool gets the key; the rest of the region not.
        let pieces = [
            (region.start, region.end.min(pool.start), data),
            (
                region.start.max(pool.start),
                region.end.min(pool.end),
                table_attrs,
            ),
            (region.start.max(pool.end), region.end, data),
        ];
        for (start, end, attrs) in pieces {
            if start < end {
                tables
                    .map(
                        direct(start),
                        PhysAddr(start),
                        end - start,
                        attrs,
                        PageSize::Size2M,
                    )
                    .map_err(|_| "building the direct map failed")?;
            }
        }
    }

    // SAFETY: the new tables map the kernel image at the same addresses
    // (code, stack, data) and the direct map; switching to them changes
    // nothing the running code relies on except how page-table memory is
    // reached, which `use_direct_map` switches right after.
    unsafe {
        cpu::write_cr3(root.0);
        memory::use_direct_map();
        cpu::write_cr4(cpu::read_cr4() | cpu::CR4_PGE);
    }
    percpu::record_cr3(root.0, SpaceId::KERNEL.0);
    Ok(())
}

/// Loads the tables at `root` (address space `space`) into CR3.
///
/// Every root the kernel builds links the kernel's image and upper-half
/// entries, so the running code stays mapped.
pub fn switch_to(root: PhysAddr, space: SpaceId) {
    // SAFETY: see above; the caller passes a root with the kernel's
    // entries linked.
    unsafe { cpu::write_cr3(root.0) };
    percpu::record_cr3(root.0, space.0);
}

/// Where user address spaces map their memory: top-level slot 1, which
/// the kernel's tables leave empty (slot 0 holds the kernel image).
pub const USER_BASE: u64 = 0x80_0000_0000;

/// A new top-level table for a user address space, with the kernel's
/// entries (slot 0: the image; 256–511: the upper half) linked in through
/// the backend, so that it can be loaded while the kernel runs.
pub fn new_user_root() -> Option<PhysAddr> {
    // SAFETY: as in `init`.
    let root = unsafe { allocate_root(&MEMORY, &TABLE_FRAMES) }?;
    let kernel = kernel_root();
    for slot in (0..1).chain(256..512u64) {
        let value = MEMORY.read(kernel.add(8 * slot));
        if value == 0 {
            continue;
        }
        let va = if slot >= 256 {
            0xffff_0000_0000_0000 | (slot << 39)
        } else {
            slot << 39
        };
        backend().write_entry(EntryUpdate {
            entry: root.add(8 * slot),
            va: VirtAddr(va),
            space: SpaceId::KERNEL,
            level: 4,
            value,
            kernel: slot >= 256,
            valid: true,
            leaf: false,
        });
    }
    Some(root)
}

/// The direct-map address of physical `phys`.
pub fn direct(phys: u64) -> VirtAddr {
    VirtAddr(memory::DIRECT_MAP_BASE + phys)
}

/// A data frame (zeroed through the direct map), or panics: the tests size
/// their needs far below the pool.
pub fn data_frame() -> PhysAddr {
    let frame = DATA_FRAMES.allocate().expect("data frames exhausted");
    // SAFETY: the frame was just allocated and is mapped in the direct map.
    unsafe { core::ptr::write_bytes(memory::phys_to_virt(frame) as *mut u8, 0, 4096) };
    frame
}

/// Returns a data frame.
pub fn free_data_frame(frame: PhysAddr) {
    if let Err(error) = DATA_FRAMES.free(frame) {
        panic!("data frame free: {error:?}");
    }
}

/// The data-frame pool's range.
pub fn data_region() -> Region {
    DATA_FRAMES.region()
}
