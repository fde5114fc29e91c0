//! The kernel's page tables, built and changed only by the library over
//! the memory and frames of [`crate::page_tables`]: the x86-64 backend over
//! the library's real instructions ([`BareMetal`]), wrapped so that entries
//! are written only through a PKS window (and, for several CPUs, in
//! [`SmpBackend`]), the lazy mode (the counter design) on top, and the
//! kernel's tables: the image, the direct map with the page-table pool
//! tagged with the page-table key, the user roots.

use core::sync::atomic::Ordering;

use lazymmu::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use lazymmu::backend::machine::{BackendBug, CpuPrimitives};
use lazymmu::backend::protected::{KeySlot, KeySlots, X86Pks};
use lazymmu::backend::x86::{
    flush_locally, BareMetal, BareMetalCounters, BareMetalCounts, RemoteFlush, X86Backend,
};
use lazymmu::backend::{EntryUpdate, PteAccess};
use lazymmu::cpu::{Cpu, CpuId, CpuMask, KeyRegister};
use lazymmu::mode::counters::Counters;
use lazymmu::mode::{LazyMode, MisusePolicy};
use lazymmu::pgtable::format::Attributes;
use lazymmu::pgtable::memory::PageTableMemory;
use lazymmu::pgtable::ops::PageTables;

use crate::cpu;
use crate::env::KernelEnv;
use crate::memory::{self, MemoryMap, Region, DATA_FRAMES, PAGE_TABLE_FRAMES};
use crate::page_tables::{
    kernel_root, map_image, new_kernel_root, new_root, tables_on, KernelMemory, PageTableFrames,
    MEMORY,
};
use crate::percpu;
use crate::pks::{self, PAGE_TABLE_KEY};
use crate::smp_backend::{self, SmpBackend};
use crate::sync::Global;

/// Page-table pages are writable only inside a PKS window.
pub use crate::pks::with_page_table_window;

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
    type Memory = KernelMemory;
    fn memory(&self) -> &KernelMemory {
        &MEMORY
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
pub type KernelTables<'a, L> = PageTables<'a, KernelBackend, L, PageTableFrames>;

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

/// The kernel's tables with any lazy mode (for
/// [`Eager`](lazymmu::mode::eager::Eager), a kernel without batching).
pub fn kernel_tables_with<L: LazyMode>(lazy: &L) -> KernelTables<'_, L> {
    tables_on(backend(), lazy, kernel_root(), SpaceId::KERNEL)
}

/// Builds the kernel's tables with the library (the kernel image identity
/// mapped with W^X, every usable RAM region in the direct map, page-table
/// frames tagged with [`PAGE_TABLE_KEY`]), loads them and turns on global
/// pages.
///
/// # Errors
/// A message when a frame or a mapping cannot be had.
pub fn init(map: &MemoryMap) -> Result<(), &'static str> {
    let root = new_kernel_root()?;
    let tables = kernel_tables();
    // The image is linked at its physical addresses.
    map_image(&tables, |va| va)?;

    let pool = PAGE_TABLE_FRAMES.region();
    let data = Attributes::kernel_data();
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
    let root = new_root()?;
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
