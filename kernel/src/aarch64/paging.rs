//! The kernel's page tables, built and changed only by the library over
//! the memory and frames of [`crate::page_tables`]: the arm64 backend over
//! primitives that execute the real barrier and TLB maintenance
//! instructions (and count them), a break-before-make checker around it,
//! and the lazy mode (the counter design) on top.
//!
//! The kernel half (TTBR1) holds the image with W^X, the direct map in
//! 2 MiB blocks, the devices and whatever the tests map; the lower half
//! (TTBR0) holds one user-like address space at a time, its ASID its
//! `SpaceId`.

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};

use lazymmu::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use lazymmu::backend::arm64::{Arm64, Arm64Primitives, Dsb};
use lazymmu::backend::machine::{BackendBug, CpuPrimitives};
use lazymmu::backend::FlushScope;
use lazymmu::cpu::{Cpu, CpuId};
use lazymmu::mode::counters::Counters;
use lazymmu::mode::{LazyMode, MisusePolicy};
use lazymmu::pgtable::format::{Attributes, MemoryType};
use lazymmu::pgtable::gather::Gather;
use lazymmu::pgtable::memory::PageTableMemory;
use lazymmu::pgtable::ops::PageTables;

use crate::bbm::{self, BreakBeforeMake};
use crate::env::{self, KernelEnv};
use crate::fdt::Range;
use crate::memory::{self, Region, DIRECT_MAP_BASE};
use crate::page_tables::{
    kernel_root, map_image, new_kernel_root, new_root, tables_on, KernelMemory, PageTableFrames,
    MEMORY, TABLE_FRAMES,
};
use crate::sync::{Global, SpinLock};
use crate::{cpu, serial};

/// Counts of the instructions the primitives executed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Page-table entries stored.
    pub pte_writes: u64,
    /// `dsb ishst`.
    pub dsb_ishst: u64,
    /// `dsb ish`.
    pub dsb_ish: u64,
    /// `isb`.
    pub isb: u64,
    /// TLB invalidations of one page (`tlbi vale1is` and friends).
    pub tlbi_page: u64,
    /// Range invalidations (`tlbi rvale1is` and friends).
    pub tlbi_range: u64,
    /// Invalidations of a whole address space (`tlbi aside1is`,
    /// `vmalle1is`).
    pub tlbi_all: u64,
}

impl Counts {
    /// Every `dsb`.
    pub fn dsb(&self) -> u64 {
        self.dsb_ishst + self.dsb_ish
    }

    /// Every `tlbi`.
    pub fn tlbi(&self) -> u64 {
        self.tlbi_page + self.tlbi_range + self.tlbi_all
    }
}

impl core::ops::Sub for Counts {
    type Output = Counts;
    fn sub(self, before: Counts) -> Counts {
        Counts {
            pte_writes: self.pte_writes - before.pte_writes,
            dsb_ishst: self.dsb_ishst - before.dsb_ishst,
            dsb_ish: self.dsb_ish - before.dsb_ish,
            isb: self.isb - before.isb,
            tlbi_page: self.tlbi_page - before.tlbi_page,
            tlbi_range: self.tlbi_range - before.tlbi_range,
            tlbi_all: self.tlbi_all - before.tlbi_all,
        }
    }
}

static PTE_WRITES: AtomicU64 = AtomicU64::new(0);
static DSB_ISHST: AtomicU64 = AtomicU64::new(0);
static DSB_ISH: AtomicU64 = AtomicU64::new(0);
static ISB: AtomicU64 = AtomicU64::new(0);
static TLBI_PAGE: AtomicU64 = AtomicU64::new(0);
static TLBI_RANGE: AtomicU64 = AtomicU64::new(0);
static TLBI_ALL: AtomicU64 = AtomicU64::new(0);
static BUGS: AtomicU64 = AtomicU64::new(0);

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The counts so far.
pub fn counts() -> Counts {
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    Counts {
        pte_writes: get(&PTE_WRITES),
        dsb_ishst: get(&DSB_ISHST),
        dsb_ish: get(&DSB_ISH),
        isb: get(&ISB),
        tlbi_page: get(&TLBI_PAGE),
        tlbi_range: get(&TLBI_RANGE),
        tlbi_all: get(&TLBI_ALL),
    }
}

/// Misuse the backend reported (double enter, leave outside).
pub fn backend_bugs() -> u64 {
    BUGS.load(Ordering::Relaxed)
}

/// ID_AA64ISAR0_EL1.TLB (bits 59:56): 0b0010 is FEAT_TLBIOS and
/// FEAT_TLBIRANGE (Arm ARM, the register's description).
fn cpu_has_tlb_range() -> bool {
    (cpu::read_sysreg!("id_aa64isar0_el1") >> 56) & 0xf >= 0b0010
}

/// Whether the CPU has the range TLB operations (read once at boot).
pub fn tlb_range() -> bool {
    PRIMITIVES.get().range
}

/// The TLBI operand of a page: VA[55:12] in bits 43:0 and the ASID in
/// bits 63:48 (`__TLBI_VADDR`; global kernel pages take ASID 0).
fn page_operand(space: SpaceId, va: VirtAddr) -> u64 {
    ((va.0 >> 12) & ((1 << 44) - 1)) | asid_bits(space)
}

fn asid_bits(space: SpaceId) -> u64 {
    if space == SpaceId::KERNEL {
        0
    } else {
        u64::from(space.0 & 0xff) << 48
    }
}

/// TLBI range operand with a 4K granule (TG = 1): BADDR = VA >> 12 in
/// bits 36:0, TTL 0 (no level hint), NUM 43:39, SCALE 45:44, ASID 63:48
/// (`__TLBI_VADDR_RANGE`).
fn range_operand(space: SpaceId, va: VirtAddr, scale: u8, num: u8) -> u64 {
    ((va.0 >> 12) & ((1 << 37) - 1))
        | (u64::from(num) << 39)
        | (u64::from(scale) << 44)
        | (1 << 46)
        | asid_bits(space)
}

/// The arm64 primitives with real instructions, counted.
#[derive(Debug)]
pub struct KernelPrimitives {
    range: bool,
}

/// The one CPU, as the environment sees it.
impl Cpu for KernelPrimitives {
    fn cpu_id(&self) -> CpuId {
        KernelEnv.cpu_id()
    }
    fn in_interrupt(&self) -> bool {
        KernelEnv.in_interrupt()
    }
    fn preempt_disable(&self) {
        KernelEnv.preempt_disable();
    }
    fn preempt_enable(&self) {
        KernelEnv.preempt_enable();
    }
}

impl CpuPrimitives for KernelPrimitives {
    type Memory = KernelMemory;
    fn memory(&self) -> &KernelMemory {
        &MEMORY
    }
    fn report(&self, bug: BackendBug) {
        bump(&BUGS);
        crate::println!("backend bug reported: {bug}");
    }
}

impl Arm64Primitives for KernelPrimitives {
    fn write_pte(&self, entry: PhysAddr, value: u64) {
        bump(&PTE_WRITES);
        KernelMemory.write(entry, value);
    }

    fn dsb(&self, kind: Dsb) {
        // SAFETY: barriers only order memory accesses.
        unsafe {
            match kind {
                Dsb::IshSt => {
                    bump(&DSB_ISHST);
                    asm!("dsb ishst", options(nostack, preserves_flags));
                }
                Dsb::Ish => {
                    bump(&DSB_ISH);
                    asm!("dsb ish", options(nostack, preserves_flags));
                }
            }
        }
    }

    fn isb(&self) {
        bump(&ISB);
        // SAFETY: an instruction barrier has no effect on memory.
        unsafe { asm!("isb", options(nostack, preserves_flags)) };
    }

    fn tlbi_va(&self, space: SpaceId, va: VirtAddr, last_level: bool) {
        bump(&TLBI_PAGE);
        if cfg!(feature = "debug-skip-tlbi") {
            return;
        }
        let operand = page_operand(space, va);
        // SAFETY: invalidating translations never breaks memory safety; the
        // tables in memory are what the walk finds next.
        unsafe {
            match (space == SpaceId::KERNEL, last_level) {
                (true, true) => {
                    asm!("tlbi vaale1is, {}", in(reg) operand, options(nostack, preserves_flags))
                }
                (true, false) => {
                    asm!("tlbi vaae1is, {}", in(reg) operand, options(nostack, preserves_flags))
                }
                (false, true) => {
                    asm!("tlbi vale1is, {}", in(reg) operand, options(nostack, preserves_flags))
                }
                (false, false) => {
                    asm!("tlbi vae1is, {}", in(reg) operand, options(nostack, preserves_flags))
                }
            }
        }
    }

    fn tlbi_asid(&self, space: SpaceId) {
        bump(&TLBI_ALL);
        // SAFETY: as `tlbi_va`.
        unsafe {
            if space == SpaceId::KERNEL {
                asm!("tlbi vmalle1is", options(nostack, preserves_flags));
            } else {
                asm!("tlbi aside1is, {}", in(reg) asid_bits(space), options(nostack, preserves_flags));
            }
        }
    }

    fn tlb_range(&self) -> bool {
        self.range
    }

    /// `tlbi rvaale1is` / `rvaae1is` / `rvale1is` / `rvae1is`, written as
    /// their `sys` encodings (op1 0, CRn 8, CRm 2, op2 7/3/5/1; Arm ARM,
    /// the TLBI RVA* descriptions) so that no assembler extension is
    /// needed.
    fn tlbi_range(&self, space: SpaceId, va: VirtAddr, scale: u8, num: u8, last_level: bool) {
        bump(&TLBI_RANGE);
        if cfg!(feature = "debug-skip-tlbi") {
            return;
        }
        let operand = range_operand(space, va, scale, num);
        // SAFETY: as `tlbi_va`.
        unsafe {
            match (space == SpaceId::KERNEL, last_level) {
                (true, true) => {
                    asm!("sys #0, c8, c2, #7, {}", in(reg) operand, options(nostack, preserves_flags))
                }
                (true, false) => {
                    asm!("sys #0, c8, c2, #3, {}", in(reg) operand, options(nostack, preserves_flags))
                }
                (false, true) => {
                    asm!("sys #0, c8, c2, #5, {}", in(reg) operand, options(nostack, preserves_flags))
                }
                (false, false) => {
                    asm!("sys #0, c8, c2, #1, {}", in(reg) operand, options(nostack, preserves_flags))
                }
            }
        }
    }

    fn task_barriers_pending(&self) -> bool {
        env::barriers_pending()
    }

    fn set_task_barriers_pending(&self, pending: bool) {
        env::set_barriers_pending(pending);
    }
}

/// The arm64 backend over the kernel's primitives.
pub type Arm64Backend = Arm64<&'static KernelPrimitives>;
/// The arm64 backend, checked for break-before-make.
pub type KernelBackend = BreakBeforeMake<Arm64Backend>;
/// The lazy mode (counters in the task) over the kernel backend.
pub type KernelLazy = Counters<KernelEnv, &'static KernelBackend>;
/// The kernel's page tables with lazy mode `L`.
pub type KernelTables<'a, L> = PageTables<'a, KernelBackend, L, PageTableFrames>;

static PRIMITIVES: Global<KernelPrimitives> = Global::new();
static BBM_STATE: SpinLock<bbm::State> = SpinLock::new(bbm::State::new());
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

/// Builds the primitives, the backend and the lazy mode.
pub fn init_backend() {
    PRIMITIVES.init(KernelPrimitives {
        range: cpu_has_tlb_range(),
    });
    BACKEND.init(BreakBeforeMake::new(
        Arm64::new(PRIMITIVES.get()),
        &BBM_STATE,
    ));
    LAZY.init(Counters::new(KernelEnv, BACKEND.get(), MisusePolicy::Count));
}

static EMPTY_USER_ROOT: AtomicU64 = AtomicU64::new(0);

/// The kernel's tables with lazy sections.
pub fn kernel_tables() -> KernelTables<'static, KernelLazy> {
    tables_with(lazy(), kernel_root(), SpaceId::KERNEL)
}

/// The tables at `root` (address space `space`) with any lazy mode.
pub fn tables_with<L: LazyMode>(lazy: &L, root: PhysAddr, space: SpaceId) -> KernelTables<'_, L> {
    tables_on(backend(), lazy, root, space)
}

/// The kernel's tables over the arm64 backend without the
/// break-before-make checker, with any lazy mode: what the measurements
/// run, so that the checker's bookkeeping is not counted as the library's
/// work. The lazy mode's hooks reach the same backend either way.
pub fn unchecked_kernel_tables<L: LazyMode>(
    lazy: &L,
) -> PageTables<'_, Arm64Backend, L, PageTableFrames> {
    tables_on(backend().inner(), lazy, kernel_root(), SpaceId::KERNEL)
}

/// A gather for `space` over the unchecked backend (see
/// [`unchecked_kernel_tables`]).
pub fn unchecked_gather(space: SpaceId) -> Gather<'static, Arm64Backend, PageTableFrames> {
    Gather::new(backend().inner(), &TABLE_FRAMES, space, FlushScope::Local)
}

/// A gather for `space` (broadcast TLB maintenance: one CPU or many, the
/// instructions are the same).
pub fn gather(space: SpaceId) -> Gather<'static, KernelBackend, PageTableFrames> {
    Gather::new(backend(), &TABLE_FRAMES, space, FlushScope::Local)
}

/// The device registers the kernel maps: the PL011's page and the GIC's
/// ranges.
fn devices(gic: [Range; 2]) -> [(u64, u64); 3] {
    [
        (serial::UART_PHYS, 0x1000),
        (gic[0].base, gic[0].size),
        (gic[1].base, gic[1].size),
    ]
}

/// Builds the kernel half with the library — the image with W^X at
/// [`KERNEL_BASE`], all of `ram` in the direct map, the devices in the I/O
/// window — and an empty lower half, loads both and drops the boot
/// tables' translations.
///
/// # Errors
/// A message when a frame or a mapping cannot be had.
pub fn init(ram: Region, gic: [Range; 2]) -> Result<(), &'static str> {
    let root = new_kernel_root()?;
    let tables = kernel_tables();
    map_image(&tables, memory::image_phys)?;
    let data = Attributes::kernel_data();
    tables
        .map(
            VirtAddr(DIRECT_MAP_BASE + ram.start),
            PhysAddr(ram.start),
            ram.end - ram.start,
            data,
            PageSize::Size2M,
        )
        .map_err(|_| "building the direct map failed")?;
    let device = Attributes {
        memory: MemoryType::Device,
        ..data
    };
    for (base, size) in devices(gic) {
        tables
            .map(
                VirtAddr(memory::io(base)),
                PhysAddr(base),
                size,
                device,
                PageSize::Size4K,
            )
            .map_err(|_| "mapping the devices failed")?;
    }
    let empty = new_root().ok_or("no frame for the user root")?;
    EMPTY_USER_ROOT.store(empty.0, Ordering::Release);

    // SAFETY: the new tables map the image (code, stack, data), the UART
    // and the GIC at the addresses the boot tables did; the boot tables'
    // RAM alias is gone after the switch, which is why `use_direct_map`
    // follows at once, before any table is touched. The lower half stops
    // mapping the identity gigabyte, which nothing uses after the jump to
    // the linked addresses. The local flush drops what the boot tables
    // left in the TLB (1 GiB blocks where the new tables have pages).
    unsafe {
        cpu::write_ttbr1(root.0);
        cpu::write_ttbr0(empty.0);
        cpu::local_flush_all();
    }
    memory::use_direct_map();
    Ok(())
}

/// Loads the lower half with the tables at `root` for address space
/// `space` (its ASID); `None` loads the empty lower half.
pub fn switch_user(user: Option<(PhysAddr, SpaceId)>) {
    let value = match user {
        Some((root, space)) => root.0 | asid_bits(space),
        None => EMPTY_USER_ROOT.load(Ordering::Acquire),
    };
    // SAFETY: the kernel runs in the upper half; the lower half holds
    // only the test spaces' pages.
    unsafe { cpu::write_ttbr0(value) };
}

/// Page-table pages are plain memory here: no FEAT_S1POE under QEMU, so
/// nothing protects them and there is no window to open.
pub fn with_page_table_window<R>(f: impl FnOnce() -> R) -> R {
    f()
}
