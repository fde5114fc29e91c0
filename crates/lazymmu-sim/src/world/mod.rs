//! A run of a page-table workload: the library's objects (backend, lazy
//! mode, page tables, lazy TLB) on the machine, the workloads' programs,
//! the interrupt handler and the context-switch path.
//!
//! A workload is a number of calls of one Linux system call
//! ([`syscalls`]) per task, each over `pages` pages. What a call needs
//! that the call itself does not do — mapping the pages a `munmap` will
//! unmap, tearing down the child of the previous `fork` — is prepared
//! between calls without being charged ([`Machine::uncounted`]). Before
//! each call the task touches 8 pages of every 512, so that TLBs (and
//! powerpc's hash table) hold translations the call must invalidate.
//!
//! Context switches go the way Linux's `context_switch()` goes: the
//! backend's switch-out hook (`arch_start_context_switch`), lazy TLB's
//! `switch_mm` through the library's [`LazyTlb`] (a CPU left to its idle
//! task borrows the address space it had), the backend's switch-in hook.

use core::cell::{Cell, RefCell};
use core::marker::PhantomData;
use std::rc::Rc;

use std::collections::hash_map::DefaultHasher;

use lazymmu::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use lazymmu::backend::{Backend, FlushScope};
use lazymmu::cpu::CpuId;
use lazymmu::mm::active_mm::{LazyTlb, LazyTlbPolicy};
use lazymmu::mode::{ArchHooks, LazyMode};
use lazymmu::pgtable::format::{level_of, Attributes, Entry, Format, Protection};
use lazymmu::pgtable::gather::Gather;
use lazymmu::pgtable::ops::{ApplyMode, CopyKind, Mmu, PageTables, VaRange};

pub mod syscalls;

use syscalls::LazyPurge;
pub use syscalls::{lazy_max_pages, Mm};

use crate::events::EventKind;
use crate::invariant::Invariant;
use crate::machine::{tables_under, walk, Access, Kernel, Machine, SimCpu, SimFrames};
use crate::observed::{Checks, Observed};
use crate::scenario::{BackendKind, RunConfig, WorkloadKind};
use lazymmu::backend::protected::{KeyFlavour, KeyFrame, KeySlots, Protected};

/// Pages of one PTE table: Linux's walkers take one lazy section per PTE
/// table, and the workloads touch 8 pages of every 512 before a call.
pub const TABLE_PAGES: u64 = 512;
/// Pages touched per [`TABLE_PAGES`] before each call.
pub const TOUCHED_PER_TABLE: u64 = 8;
const PAGE: u64 = 4096;

/// Where each task's user range starts.
pub const USER_BASE: u64 = 0x0000_1000_0000_0000;
/// Distance between two tasks' ranges.
pub const TASK_STRIDE: u64 = 1 << 34;
/// mremap's destination offset.
pub const MREMAP_OFFSET: u64 = 1 << 33;
/// vmalloc area.
pub const VMALLOC_BASE: u64 = 0xffff_c900_0000_0000;
/// KASAN shadow area.
pub const KASAN_BASE: u64 = 0xffff_ec00_0000_0000;
/// Direct-map pages DEBUG_PAGEALLOC maps and unmaps.
pub const DIRECT_MAP_BASE: u64 = 0xffff_8880_0000_0000;
/// The page the interrupt handler maps and unmaps (a KFENCE-style guard
/// page).
pub const IRQ_VA: u64 = 0xffff_c880_0000_0000;
/// Physical pages the workloads map (outside page-table memory).
pub const DATA_BASE: u64 = 0x0000_0100_0000_0000;
/// The linear map of page-table pages whose key kpkeys changes
/// (`set_memory_pkey`).
pub const LINEAR_BASE: u64 = 0xffff_a000_0000_0000;

/// Exception entry and return of a backend: protected backends load the
/// default key value and hand back the interrupted one for the return;
/// others do nothing.
pub trait Exceptions {
    /// Exception entry: the frame to hand to the return.
    fn exception_enter(&self) -> Option<KeyFrame> {
        None
    }
    /// Exception return.
    fn exception_exit(&self, frame: Option<KeyFrame>) {
        let _ = frame;
    }
}

impl<B: Backend, K: KeySlots, F: KeyFlavour> Exceptions for Protected<B, K, F> {
    fn exception_enter(&self) -> Option<KeyFrame> {
        Some(Protected::exception_enter(self))
    }
    fn exception_exit(&self, frame: Option<KeyFrame>) {
        if let Some(frame) = frame {
            Protected::exception_exit(self, frame);
        }
    }
}

impl<B: Backend + Exceptions> Exceptions for Observed<B> {
    fn exception_enter(&self) -> Option<KeyFrame> {
        self.inner().exception_enter()
    }
    fn exception_exit(&self, frame: Option<KeyFrame>) {
        self.inner().exception_exit(frame)
    }
}

/// Populates, at boot, the kernel's top-level entries over the vmalloc and
/// KASAN shadow areas of `tasks` tasks, as x86-64 has since Linux 5.9
/// (`preallocate_vmalloc_pages()`, arch/x86/mm/init_64.c): tasks mapping
/// there on different CPUs then never race to populate a top-level entry
/// they share (below it each task's range has entries of its own; Linux
/// serialises populating the lower levels with `init_mm.page_table_lock`).
/// Memory is written directly: this is the boot state, before any check.
fn preallocate_kernel_areas<F: Format>(machine: &Machine, root: PhysAddr, tasks: usize) {
    use lazymmu::pgtable::format::{entry_shift, index, Entry};

    let memory = machine.memory();
    let key = machine.config().hardware.table_key;
    let top = F::LEVELS;
    let span = 1u64 << entry_shift::<F>(top);
    for base in [VMALLOC_BASE, KASAN_BASE] {
        let end = base + tasks as u64 * TASK_STRIDE;
        let mut va = base & !(span - 1);
        while va < end {
            let entry = root.add(8 * index::<F>(va, top) as u64);
            if F::decode(memory.read(entry), top) == Entry::Absent {
                let table = memory
                    .allocate(SpaceId::KERNEL, key)
                    .expect("physical memory holds the kernel's top-level tables");
                memory.zero_frame(table);
                memory.write(entry, F::encode_table(table, top));
            }
            // The last top-level entry of the address space ends at 2^64.
            let Some(next) = va.checked_add(span) else {
                break;
            };
            va = next;
        }
    }
}

/// An `Rc`'d backend as the lazy mode's arch hooks.
#[derive(Debug)]
pub struct Shared<T>(pub Rc<T>);

impl<T: ArchHooks> ArchHooks for Shared<T> {
    fn enter(&self) {
        self.0.enter()
    }
    fn leave(&self) {
        self.0.leave()
    }
    fn flush(&self) {
        self.0.flush()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Setup,
    Measure,
}

/// One task's workload: its address space and what it has done so far.
#[derive(Debug)]
struct Program {
    task: usize,
    index: u64,
    mm: Mm,
    /// A fork's child.
    child: Option<Mm>,
    /// Calls done in the measured stage.
    calls: u64,
    /// Where this task's next vmalloc area starts, in pages from its base.
    vmap_next: u64,
}

/// The run's world: machine, library objects and programs.
pub struct World<F, B, L> {
    machine: Rc<Machine>,
    backend: Rc<B>,
    lazy: L,
    lazy_tlb: LazyTlb<SimCpu>,
    frames: RefCell<Vec<Option<KeyFrame>>>,
    kernel_frames: SimFrames,
    kernel_root: PhysAddr,
    programs: RefCell<Vec<Option<Program>>>,
    /// Each program's calls done, also while the program runs (for the
    /// digest).
    progress: RefCell<Vec<u64>>,
    config: RunConfig,
    stage: Cell<Stage>,
    irq_mapped: Cell<bool>,
    irqs: Cell<u64>,
    base_updates: Cell<u64>,
    purge: RefCell<LazyPurge>,
    /// Page-table pages change their linear-map key when allocated and
    /// freed (kpkeys_hardened_pgtables).
    keyed_tables: Cell<bool>,
    _format: PhantomData<F>,
}

impl<F, B, L> World<F, B, L>
where
    F: Format,
    B: Backend<Format = F> + Exceptions + Checks + 'static,
    L: LazyMode + 'static,
{
    /// Builds the world: kernel root, one task per `config.tasks` with its
    /// address space (homed on CPU `i`), the interrupt page; every CPU
    /// boots on its idle task under the lazy-TLB policy `policy`.
    pub fn new(
        config: &RunConfig,
        machine: Rc<Machine>,
        backend: Rc<B>,
        lazy: L,
        policy: LazyTlbPolicy,
    ) -> Rc<Self> {
        let kernel_frames = SimFrames::new(machine.clone(), SpaceId::KERNEL);
        let kernel_root = Self::new_root(&backend, &lazy, &kernel_frames, SpaceId::KERNEL, true)
            .expect("physical memory holds at least the kernel root");
        machine.set_walker(walk::<F>, kernel_root, F::is_kernel);
        machine.set_table_finder(tables_under::<F>);
        preallocate_kernel_areas::<F>(&machine, kernel_root, config.tasks.max(1));
        let lazy_tlb = LazyTlb::new(SimCpu::new(machine.clone()), policy);
        let world = Rc::new(Self {
            machine: machine.clone(),
            backend,
            lazy,
            lazy_tlb,
            frames: RefCell::new(Vec::new()),
            kernel_frames,
            kernel_root,
            programs: RefCell::new(Vec::new()),
            progress: RefCell::new(Vec::new()),
            config: config.clone(),
            stage: Cell::new(Stage::Setup),
            irq_mapped: Cell::new(false),
            irqs: Cell::new(0),
            base_updates: Cell::new(0),
            purge: RefCell::new(LazyPurge::default()),
            keyed_tables: Cell::new(false),
            _format: PhantomData,
        });
        let tasks = config.tasks.max(1);
        for i in 0..tasks {
            let space = SpaceId(i as u32 + 1);
            let mm = world.new_mm(space);
            let task = machine.add_task(&format!("t{i}"), space, CpuId::new(i), true);
            let _ = machine.task_mm(task).reuse_as_user(space);
            let child = (config.workload == WorkloadKind::Fork).then(|| {
                let child = world.new_mm(SpaceId((tasks + i) as u32 + 1));
                machine.set_task_writes_to(task, Some(child.space));
                child
            });
            world.progress.borrow_mut().push(0);
            world.programs.borrow_mut().push(Some(Program {
                task,
                index: i as u64,
                mm,
                child,
                calls: 0,
                vmap_next: 0,
            }));
        }
        machine.set_kernel(world.clone());
        // Every CPU comes up on its idle task, then each task is switched
        // in on its CPU.
        for cpu in (0..machine.cpu_count()).map(CpuId::new) {
            machine.set_cpu(cpu);
            world
                .lazy_tlb
                .boot_cpu(machine.task_mm(machine.idle_task(cpu)));
        }
        for p in world.programs.borrow().iter().flatten() {
            let cpu = machine.task(p.task).cpu;
            machine.switch(cpu, p.task);
        }
        world
    }

    /// A new address space `space` with an empty root; a space id used
    /// before gets a clean TLB (a new ASID or context, as Linux's
    /// allocators give a new address space).
    pub(crate) fn new_mm(&self, space: SpaceId) -> Mm {
        let m = &self.machine;
        let frames = SimFrames::new(m.clone(), space);
        let root = Self::new_root(&self.backend, &self.lazy, &frames, space, false)
            .expect("physical memory holds every address space's root");
        m.set_space_root(space, root);
        m.set_pinned(space, true);
        for cpu in (0..m.cpu_count()).map(CpuId::new) {
            m.tlb_invalidate_space(cpu, space);
        }
        Mm {
            space,
            root,
            frames,
        }
    }

    /// Lazy TLB.
    pub fn lazy_tlb(&self) -> &LazyTlb<SimCpu> {
        &self.lazy_tlb
    }

    /// The machine.
    pub fn machine(&self) -> &Rc<Machine> {
        &self.machine
    }

    /// The backend (with its checks inside).
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The lazy mode.
    pub fn lazy(&self) -> &L {
        &self.lazy
    }

    /// Interrupts handled.
    pub fn interrupts(&self) -> u64 {
        self.irqs.get()
    }

    /// Runs the setup stage sequentially, then clears the counts for the
    /// measured stage.
    pub fn setup(&self) {
        // The interrupt page's tables exist from boot, so the handler never
        // allocates.
        self.machine.set_cpu(CpuId(0));
        let ok = self.kernel_tables().map(
            VirtAddr(IRQ_VA),
            PhysAddr(DATA_BASE - PAGE),
            PAGE,
            Attributes::kernel_data(),
            PageSize::Size4K,
        );
        self.check(ok.map(|_| ()), "map the interrupt page");
        self.irq_mapped.set(true);
        let keyed = self.config.backend == BackendKind::Arm64Poe && !self.config.forget_key_open;
        if keyed {
            self.map_linear();
        }
        self.stage.set(Stage::Setup);
        self.machine.run();
        if self.config.spread {
            // Every task has run on the next CPU too: its space is in two
            // CPUs' masks (the one it left borrows it lazily).
            let cpus = self.machine.cpu_count();
            for p in self.programs.borrow().iter().flatten() {
                let home = self.machine.task(p.task).cpu;
                let other = CpuId::new((home.index() + 1) % cpus);
                self.machine.switch(other, p.task);
            }
        }
        self.machine.restart_tasks();
        self.machine.clear_counts();
        self.backend_updates_reset();
        self.keyed_tables.set(keyed);
        self.stage.set(Stage::Measure);
    }

    /// The linear map of every page-table frame, 4 KiB pages, so that
    /// `set_memory_pkey` can rewrite a frame's entry.
    fn map_linear(&self) {
        let frames = u64::from(self.machine.memory().frames());
        let r = self.kernel_tables().map(
            VirtAddr(LINEAR_BASE),
            PhysAddr(crate::memory::MEMORY_BASE),
            frames * PAGE,
            Attributes::kernel_data(),
            PageSize::Size4K,
        );
        self.check(r.map(|_| ()), "map the linear map of page-table pages");
    }

    fn backend_updates_reset(&self) {
        self.base_updates.set(self.backend.updates());
    }

    /// Entry updates made in the measured stage.
    pub fn measured_updates(&self) -> u64 {
        self.backend.updates() - self.base_updates.get()
    }

    /// The MMU whose tables come from `frames`.
    fn mmu<'a>(backend: &'a B, lazy: &'a L, frames: &'a SimFrames) -> Mmu<'a, B, L, SimFrames> {
        // SAFETY: the frames are the machine's page-table memory, which is
        // the backend's (its CPU primitives store to the machine), and
        // which the library alone changes; `lazy` drives the backend's
        // hooks.
        unsafe { Mmu::new(backend, lazy, frames, FlushScope::Local) }
    }

    /// A new, empty root for `space` from `frames`, for the upper half's
    /// tree (`upper`) or the lower's; the world keeps it (programs and the
    /// kernel borrow it per step).
    fn new_root(
        backend: &B,
        lazy: &L,
        frames: &SimFrames,
        space: SpaceId,
        upper: bool,
    ) -> Option<PhysAddr> {
        let tables = Self::mmu(backend, lazy, frames)
            .new_tables(space, VaRange::for_format::<F>(upper))
            .ok()?;
        Some(tables.into_root())
    }

    /// The tree at `root`, borrowed: the world owns every root.
    pub(crate) fn tables_at<'a>(
        &'a self,
        root: PhysAddr,
        space: SpaceId,
        frames: &'a SimFrames,
        upper: bool,
    ) -> PageTables<'a, B, L, SimFrames> {
        // SAFETY: `root` is one of the world's roots, made by `new_root`
        // from these frames, and stays allocated while the world lives
        // (only an exit destroys an address space's, and it never uses it
        // again).
        unsafe {
            Self::mmu(&self.backend, &self.lazy, frames).tables_at(
                root,
                space,
                VaRange::for_format::<F>(upper),
            )
        }
    }

    /// The kernel's tree (the upper half).
    pub(crate) fn kernel_tables(&self) -> PageTables<'_, B, L, SimFrames> {
        self.tables_at(self.kernel_root, SpaceId::KERNEL, &self.kernel_frames, true)
    }

    pub(crate) fn kernel_gather(&self) -> Gather<'_, B, SimFrames> {
        Gather::new(
            &*self.backend,
            &self.kernel_frames,
            SpaceId::KERNEL,
            FlushScope::MM,
        )
    }

    pub(crate) fn check<E: core::fmt::Debug>(&self, r: Result<(), E>, what: &str) {
        if let Err(e) = r {
            self.machine
                .violation(Invariant::OperationFailed, format!("{what}: {e:?}"));
        }
    }

    /// Touches 8 pages of every 512 of `[va, va + pages)` on the running
    /// CPU, so that TLBs hold translations the call will have to
    /// invalidate.
    fn touch(&self, space: SpaceId, va: u64, pages: u64) {
        for table in 0..pages.div_ceil(TABLE_PAGES) {
            let first = table * TABLE_PAGES;
            for i in first..(first + TOUCHED_PER_TABLE).min(pages) {
                let _ = self.machine.access_in(space, VirtAddr(va + i * PAGE));
            }
        }
    }

    fn user_base(&self, p: &Program) -> u64 {
        USER_BASE + p.index * TASK_STRIDE + self.config.first_page * PAGE
    }

    fn len(&self) -> u64 {
        self.config.pages * PAGE
    }

    /// Maps the task's range (all pages present) with leaves of the
    /// configured size.
    fn populate(&self, p: &Program, va: u64) {
        let phys = DATA_BASE + p.index * TASK_STRIDE;
        let r = self.tables(&p.mm).map(
            VirtAddr(va),
            PhysAddr(phys),
            self.len(),
            Attributes::user_data(),
            self.config.page_size,
        );
        self.check(r.map(|_| ()), "populate");
    }

    /// The setup stage of a program: what every call starts from.
    fn setup_program(&self, p: &mut Program) {
        let base = self.user_base(p);
        match self.config.workload {
            WorkloadKind::Fork
            | WorkloadKind::Munmap
            | WorkloadKind::Exit
            | WorkloadKind::Mprotect
            | WorkloadKind::Mremap
            | WorkloadKind::DebugPagealloc => self.populate(p, base),
            WorkloadKind::Vmalloc => {
                // The vmalloc area's page tables exist (Linux never frees
                // them): build this task's ring of areas.
                let mut gather = self.kernel_gather();
                let r = self.kernel_tables().apply(
                    VirtAddr(self.vmalloc_base(p)),
                    self.vmalloc_ring_pages() * PAGE,
                    ApplyMode::Create,
                    &mut gather,
                    |_| Ok::<(), ()>(()),
                );
                self.check(r.map(|_| ()), "setup vmalloc tables");
            }
            WorkloadKind::Kasan => {}
        }
        if self.config.workload == WorkloadKind::DebugPagealloc {
            // The direct map's page tables exist from boot (Linux maps the
            // direct map at 4K granularity under DEBUG_PAGEALLOC): build
            // them, and leave every page but the first unmapped (a zap of
            // a whole table's range would free the table).
            let kernel = self.kernel_tables();
            let direct = VirtAddr(self.direct_map_base(p));
            let r = kernel.map(
                direct,
                PhysAddr(self.direct_map_phys(p)),
                512 * PAGE,
                Attributes::kernel_data(),
                PageSize::Size4K,
            );
            self.check(r.map(|_| ()), "setup direct map");
            let mut gather = self.kernel_gather();
            let r = kernel.zap(direct.add(PAGE), 511 * PAGE, &mut gather);
            self.check(r.map(|_| ()), "setup direct map (unmap)");
        }
    }

    /// Puts back what the previous call took away, uncharged.
    fn rearm(&self, p: &mut Program) {
        let base = self.user_base(p);
        self.machine.uncounted(|| match self.config.workload {
            WorkloadKind::Fork => {
                // The previous child exits: its tables go; a new child.
                // The parent writes its pages again, and with the child
                // gone each write fault makes its page writable
                // (`wp_page_reuse`).
                let mut gather =
                    Gather::new(&*self.backend, &p.mm.frames, p.mm.space, FlushScope::MM);
                let r = self.tables(&p.mm).protect(
                    VirtAddr(base),
                    self.len(),
                    Protection::writable(),
                    &mut gather,
                );
                drop(gather);
                self.check(r.map(|_| ()), "make the parent's pages writable again");
                if let Some(child) = p.child.take() {
                    let mut gather =
                        Gather::full_mm(&*self.backend, &child.frames, child.space, FlushScope::MM);
                    let r = self.tables(&child).destroy(&mut gather);
                    drop(gather);
                    self.check(r.map(|_| ()), "tear down the previous child");
                    let child = self.new_mm(child.space);
                    self.machine.set_task_writes_to(p.task, Some(child.space));
                    p.child = Some(child);
                }
            }
            WorkloadKind::Munmap | WorkloadKind::DebugPagealloc => self.populate(p, base),
            WorkloadKind::Exit => {
                p.mm = self.new_mm(p.mm.space);
                self.populate(p, base);
            }
            _ => {}
        });
    }

    /// Runs one unit of a program; false when its stage is done.
    fn step(&self, p: &mut Program) -> bool {
        if self.stage.get() == Stage::Setup {
            self.setup_program(p);
            return false;
        }
        if p.calls >= self.config.calls {
            return false;
        }
        if p.calls > 0 {
            self.rearm(p);
        }
        self.machine
            .log(EventKind::Unit(self.config.workload.name()));
        self.call(p);
        self.expect_result(p);
        p.calls += 1;
        self.progress.borrow_mut()[p.index as usize] = p.calls;
        p.calls < self.config.calls
    }

    /// One measured call of the workload.
    fn call(&self, p: &mut Program) {
        let base = self.user_base(p);
        let len = self.len();
        let pages = self.config.pages;
        match self.config.workload {
            WorkloadKind::Fork => {
                self.touch(p.mm.space, base, pages);
                if let Some(child) = &p.child {
                    // One VMA: the task's range, private and writable.
                    let vma = (base..base + len, CopyKind::Private);
                    self.fork(&p.mm, child, core::slice::from_ref(&vma));
                }
            }
            WorkloadKind::Munmap => {
                self.touch(p.mm.space, base, pages);
                self.munmap(&p.mm, base..base + len);
            }
            WorkloadKind::Exit => {
                self.touch(p.mm.space, base, pages);
                self.exit_mmap(&p.mm);
            }
            WorkloadKind::Mprotect => {
                // Read-only, then writable again.
                let protection = if p.calls % 2 == 0 {
                    Protection::read_only()
                } else {
                    Protection::writable()
                };
                self.touch(p.mm.space, base, pages);
                self.mprotect(&p.mm, base..base + len, protection);
            }
            WorkloadKind::Mremap => {
                // There, then back.
                let (from, to) = if p.calls % 2 == 0 {
                    (base, base + MREMAP_OFFSET)
                } else {
                    (base + MREMAP_OFFSET, base)
                };
                self.touch(p.mm.space, from, pages);
                self.mremap(&p.mm, from, to, len);
            }
            WorkloadKind::Vmalloc => self.vmalloc_call(p),
            WorkloadKind::Kasan => self.kasan_call(p),
            WorkloadKind::DebugPagealloc => {
                self.touch(p.mm.space, base, pages);
                self.debug_pagealloc_call(p, base, len);
            }
        }
    }

    /// What the call just made left in the task's range, read through the
    /// hardware walker once every section of it has ended: `munmap` and
    /// debug-pagealloc's zap leave nothing mapped, `mprotect` leaves every
    /// page mapped where it was with the new protection, `mremap` leaves
    /// the old range empty and the new one mapping the same pages, `fork`
    /// leaves parent and child mapping the same pages read-only
    /// (copy-on-write). An operation that returned without doing its work
    /// is an `operation-failed`: the lazy-mode contracts (§6) judge only
    /// the writes that were made, and would not see the ones that were
    /// not. The kernel-side workloads check their mappings as they go
    /// ([`Self::expect_mapped`]).
    fn expect_result(&self, p: &Program) {
        let base = self.user_base(p);
        let phys = DATA_BASE + p.index * TASK_STRIDE;
        let space = p.mm.space;
        match self.config.workload {
            WorkloadKind::Fork => {
                self.expect_range(space, base, Some((phys, false)), "fork (parent)");
                if let Some(child) = &p.child {
                    self.expect_range(child.space, base, Some((phys, false)), "fork (child)");
                }
            }
            WorkloadKind::Munmap => self.expect_range(space, base, None, "munmap"),
            WorkloadKind::DebugPagealloc => {
                self.expect_range(space, base, None, "debug-pagealloc zap")
            }
            WorkloadKind::Mprotect => {
                // `call` made even calls read-only, odd ones writable.
                let writable = p.calls % 2 == 1;
                self.expect_range(space, base, Some((phys, writable)), "mprotect");
            }
            WorkloadKind::Mremap => {
                let (from, to) = if p.calls % 2 == 0 {
                    (base, base + MREMAP_OFFSET)
                } else {
                    (base + MREMAP_OFFSET, base)
                };
                self.expect_range(space, from, None, "mremap (old range)");
                self.expect_range(space, to, Some((phys, true)), "mremap (new range)");
            }
            WorkloadKind::Exit | WorkloadKind::Vmalloc | WorkloadKind::Kasan => {}
        }
    }

    /// Checks that each of the workload's pages from `va` in `space` is
    /// absent (`None`), or maps `phys` onwards with the given writability
    /// through a leaf of the size the range was populated with (an
    /// operation that keeps the range mapped keeps its huge leaves whole);
    /// reports the first page that is not.
    fn expect_range(&self, space: SpaceId, va: u64, expected: Option<(u64, bool)>, what: &str) {
        let size = self.config.page_size;
        let level = level_of::<F>(size).expect("the format has leaves of the workload's size");
        // One page per leaf: a leaf of the right size maps the rest of its
        // pages in line with its first.
        for i in (0..self.config.pages).step_by((size.bytes() / PAGE) as usize) {
            let page = va + i * PAGE;
            let got = self.machine.walk(space, page).map(|leaf| {
                if leaf.shift != size.shift() {
                    return Err(leaf.shift);
                }
                match F::decode(leaf.entry, level) {
                    Entry::Leaf { phys, attrs, .. } => {
                        Ok((phys.0 + (page & (size.bytes() - 1)), attrs.writable))
                    }
                    _ => Err(leaf.shift),
                }
            });
            let want = expected.map(|(phys, writable)| Ok((phys + i * PAGE, writable)));
            if got != want {
                self.machine.violation(
                    Invariant::OperationFailed,
                    format!(
                        "{what}: {page:#x} {}, expected {}",
                        describe(got),
                        describe(want)
                    ),
                );
                return;
            }
        }
    }

    /// Where a task's vmalloc areas are.
    fn vmalloc_base(&self, p: &Program) -> u64 {
        VMALLOC_BASE + p.index * TASK_STRIDE
    }

    /// Pages of a task's ring of vmalloc areas: enough that an area is
    /// handed out again only after the lazy purge flushed it (Linux never
    /// reuses a lazily freed area before).
    fn vmalloc_ring_pages(&self) -> u64 {
        lazy_max_pages(self.machine.cpu_count()) + 2 * (self.config.pages + 1)
    }

    /// `vmalloc` of `pages` pages (the area has a guard page after it),
    /// the caller's use of the new mapping, and `vfree`.
    fn vmalloc_call(&self, p: &mut Program) {
        let pages = self.config.pages;
        let area = pages + 1;
        if p.vmap_next + area > self.vmalloc_ring_pages() {
            p.vmap_next = 0;
        }
        let va = self.vmalloc_base(p) + p.vmap_next * PAGE;
        p.vmap_next += area;
        let phys = DATA_BASE + (p.index + 64) * TASK_STRIDE;
        self.vmalloc(va, phys, pages);
        self.expect_mapped(va, true, "vmalloc'd page after map");
        self.touch(SpaceId::KERNEL, va, pages);
        self.vfree(va, pages);
    }

    /// KASAN's shadow populate and depopulate of `pages` pages
    /// (`kasan_populate_vmalloc_pte`, `kasan_depopulate_vmalloc_pte`
    /// through `apply_to_page_range`), pausing lazy MMU mode around each
    /// entry, which is read back right after it is written.
    fn kasan_call(&self, p: &Program) {
        let kernel = self.kernel_tables();
        let va = KASAN_BASE + p.index * TASK_STRIDE;
        let len = self.len();
        let pause = !self.config.read_back_without_pause;
        let backend = &*self.backend;
        let lazy = &self.lazy;
        let shadow = DATA_BASE + (p.index + 128) * TASK_STRIDE;
        for populate in [true, false] {
            let mut gather = self.kernel_gather();
            let mode = if populate {
                ApplyMode::Create
            } else {
                ApplyMode::Existing
            };
            let r = kernel.apply(VirtAddr(va), len, mode, &mut gather, |slot| {
                let guard = pause.then(|| lazy.pause());
                let entry = slot.entry_address();
                if populate {
                    if backend.read_entry(entry) == 0 {
                        let page = shadow + (slot.va().0 - va);
                        slot.set(PhysAddr(page), Attributes::kernel_data());
                    }
                } else {
                    slot.clear();
                }
                // The read-back.
                let _ = backend.read_entry(entry);
                drop(guard);
                Ok::<(), ()>(())
            });
            self.check(r.map(|_| ()), "kasan apply");
        }
    }

    /// A zap that, mid-section, allocates a page whose kernel mapping is
    /// made valid by a nested section (DEBUG_PAGEALLOC's
    /// `__kernel_map_pages`), uses the page, and unmaps it again.
    fn debug_pagealloc_call(&self, p: &Program, va: u64, len: u64) {
        let tables = self.tables(&p.mm);
        let section = self.lazy.section();
        let half = (len / 2) & !(PAGE - 1);
        let mut gather = Gather::new(&*self.backend, &p.mm.frames, p.mm.space, FlushScope::MM);
        let r = tables.zap(VirtAddr(va), half, &mut gather);
        self.check(r.map(|_| ()), "debug-pagealloc zap (first half)");
        // The allocation: map the page in the direct map (a nested section
        // inside the range operation), use it, free it (unmap).
        let page = 1 + p.calls % 511;
        let page_va = self.direct_map_base(p) + page * PAGE;
        let kernel = self.kernel_tables();
        let r = kernel.map(
            VirtAddr(page_va),
            PhysAddr(self.direct_map_phys(p) + page * PAGE),
            PAGE,
            Attributes::kernel_data(),
            PageSize::Size4K,
        );
        self.check(r.map(|_| ()), "debug-pagealloc map page");
        self.expect_mapped(page_va, true, "page mapped by a nested section");
        if self.config.sleep_in_section {
            // A GFP_KERNEL allocation may sleep: the task is switched out
            // and back in with its section open.
            self.machine.sleep();
        }
        let mut kgather = self.kernel_gather();
        let r = kernel.zap(VirtAddr(page_va), PAGE, &mut kgather);
        self.check(r.map(|_| ()), "debug-pagealloc unmap page");
        drop(kgather);
        let r = tables.zap(VirtAddr(va + half), len - half, &mut gather);
        self.check(r.map(|_| ()), "debug-pagealloc zap (second half)");
        drop(section);
        drop(gather);
    }

    /// The 2 MiB of the direct map a task's debug-pagealloc allocations
    /// come from.
    fn direct_map_base(&self, p: &Program) -> u64 {
        DIRECT_MAP_BASE + p.index * (1 << 21)
    }

    fn direct_map_phys(&self, p: &Program) -> u64 {
        DATA_BASE + (p.index + 192) * TASK_STRIDE
    }

    /// Checks that the running CPU can (or cannot) use `va` now.
    fn expect_mapped(&self, va: u64, mapped: bool, what: &str) {
        let got = self.machine.access_in(SpaceId::KERNEL, VirtAddr(va));
        let ok = matches!(got, Access::Hit(_)) == mapped;
        if !ok {
            let invariant = if self.machine.in_interrupt() {
                Invariant::IrqImmediate
            } else {
                Invariant::WritesVisible
            };
            self.machine.violation(
                invariant,
                format!(
                    "{what}: access to {va:#x} gave {got:?}, expected it {}mapped",
                    if mapped { "" } else { "un" }
                ),
            );
        }
    }
}

/// A page's translation as [`World::expect_range`] reports it.
fn describe(page: Option<Result<(u64, bool), u32>>) -> String {
    match page {
        None => "unmapped".to_owned(),
        Some(Ok((phys, true))) => format!("mapped writable to {phys:#x}"),
        Some(Ok((phys, false))) => format!("mapped read-only to {phys:#x}"),
        Some(Err(shift)) => format!("mapped by a leaf of 2^{shift} bytes"),
    }
}

impl<F, B, L> Kernel for World<F, B, L>
where
    F: Format,
    B: Backend<Format = F> + Exceptions + Checks + 'static,
    L: LazyMode + 'static,
{
    fn switch_out(&self, _cpu: CpuId, prev: usize) {
        self.backend.switch_out(self.machine.task(prev).lazy);
    }

    /// `switch_mm_irqs_off()` through lazy TLB: a kernel thread borrows
    /// what is loaded, a user task gets its own root.
    fn switch_mm(&self, _cpu: CpuId, prev: usize, next: usize) -> bool {
        let m = &self.machine;
        if let Err(e) = self
            .lazy_tlb
            .context_switch(m.task_mm(prev), m.task_mm(next))
        {
            m.violation(
                Invariant::OperationFailed,
                format!("context switch t{prev} -> t{next}: {e:?}"),
            );
        }
        true
    }

    fn switch_in(&self, _cpu: CpuId, next: usize) {
        self.backend.switch_in(self.machine.task(next).lazy);
    }

    fn task_done(&self, task: usize) {
        self.backend.check_finished(task);
    }

    fn exception_entry(&self) {
        let frame = self.backend.exception_enter();
        self.frames.borrow_mut().push(frame);
    }

    fn exception_exit(&self) {
        let frame = self.frames.borrow_mut().pop().flatten();
        self.backend.exception_exit(frame);
    }

    /// KFENCE-style: toggle the guard page's kernel mapping through the
    /// library, with the same backend and lazy mode (a no-op in interrupt
    /// context), and check the change is in effect at once.
    fn interrupt(&self) {
        self.irqs.set(self.irqs.get() + 1);
        let kernel = self.kernel_tables();
        if self.irq_mapped.get() {
            let _section = self.lazy.section();
            let mut gather = self.kernel_gather();
            let r = kernel.zap(VirtAddr(IRQ_VA), PAGE, &mut gather);
            self.check(r.map(|_| ()), "interrupt unmap");
            drop(gather);
            drop(_section);
            self.irq_mapped.set(false);
            self.expect_mapped(IRQ_VA, false, "guard page unmapped in interrupt context");
        } else {
            let _section = self.lazy.section();
            let r = kernel.map(
                VirtAddr(IRQ_VA),
                PhysAddr(DATA_BASE - PAGE),
                PAGE,
                Attributes::kernel_data(),
                PageSize::Size4K,
            );
            self.check(r.map(|_| ()), "interrupt map");
            drop(_section);
            self.irq_mapped.set(true);
            self.expect_mapped(IRQ_VA, true, "guard page mapped in interrupt context");
        }
    }

    fn digest(&self, h: &mut DefaultHasher) {
        use core::hash::Hasher;
        for &calls in self.progress.borrow().iter() {
            h.write_u64(calls);
        }
        h.write_u8(self.irq_mapped.get() as u8);
        h.write_u8(self.stage.get() as u8);
        self.backend.digest(h);
    }

    /// kpkeys_hardened_pgtables: a page-table page takes the page-table
    /// key when allocated and the default key back when freed
    /// (`set_memory_pkey` from `pagetable_alloc` and `pagetable_free`).
    fn page_table_page(&self, frame: PhysAddr, allocated: bool) {
        if !self.keyed_tables.get() {
            return;
        }
        let Some(index) = self.machine.memory().frame_of(frame) else {
            return;
        };
        let key = if allocated {
            self.machine.config().hardware.table_key
        } else {
            0
        };
        self.set_memory_pkey(LINEAR_BASE + index as u64 * PAGE, frame, key);
    }

    fn run_unit(&self, task: usize) -> bool {
        let index = self
            .programs
            .borrow()
            .iter()
            .position(|p| p.as_ref().is_some_and(|p| p.task == task));
        let Some(index) = index else {
            return false;
        };
        let Some(mut program) = self.programs.borrow_mut()[index].take() else {
            return false;
        };
        let more = self.step(&mut program);
        self.programs.borrow_mut()[index] = Some(program);
        more
    }
}
