//! A run of a page-table workload: the library's objects (backend, lazy
//! mode, page tables, lazy TLB) on the machine, the workloads' programs,
//! the interrupt handler and the context-switch path.
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
use lazymmu::pgtable::format::{Attributes, Format, Protection};
use lazymmu::pgtable::gather::Gather;
use lazymmu::pgtable::ops::{ApplyMode, CopyKind, Mmu, PageTables, VaRange};

use crate::events::EventKind;
use crate::invariant::Invariant;
use crate::machine::{tables_under, walk, Access, Kernel, Machine, SimCpu, SimFrames};
use crate::observed::{Checks, Observed};
use crate::scenario::{RunConfig, WorkloadKind};
use lazymmu::backend::protected::{KeyFlavour, KeyFrame, KeySlots, Protected};

/// Pages per unit of work: one PTE table's worth, as Linux's walkers take
/// one lazy section per PTE table.
pub const CHUNK_PAGES: u64 = 512;
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

/// One task's workload: what it has done so far.
#[derive(Debug)]
struct Program {
    task: usize,
    index: u64,
    space: SpaceId,
    root: PhysAddr,
    frames: SimFrames,
    child: Option<(SpaceId, PhysAddr, SimFrames)>,
    unit: u64,
    destroyed: bool,
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
    /// Each program's unit and whether it destroyed its tables, also while
    /// the program runs (for the digest).
    progress: RefCell<Vec<(u64, bool)>>,
    config: RunConfig,
    stage: Cell<Stage>,
    irq_mapped: Cell<bool>,
    irqs: Cell<u64>,
    base_updates: Cell<u64>,
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
            _format: PhantomData,
        });
        let tasks = config.tasks.max(1);
        for i in 0..tasks {
            let space = SpaceId(i as u32 + 1);
            let frames = SimFrames::new(machine.clone(), space);
            let root = Self::new_root(&world.backend, &world.lazy, &frames, space, false)
                .expect("physical memory holds every task's root");
            machine.set_space_root(space, root);
            let task = machine.add_task(&format!("t{i}"), space, CpuId::new(i), true);
            let _ = machine.task_mm(task).reuse_as_user(space);
            let child = (config.workload == WorkloadKind::Fork).then(|| {
                let child_space = SpaceId((tasks + i) as u32 + 1);
                let child_frames = SimFrames::new(machine.clone(), child_space);
                let child_root = Self::new_root(
                    &world.backend,
                    &world.lazy,
                    &child_frames,
                    child_space,
                    false,
                )
                .expect("physical memory holds every child's root");
                machine.set_space_root(child_space, child_root);
                machine.set_task_writes_to(task, Some(child_space));
                (child_space, child_root, child_frames)
            });
            world.progress.borrow_mut().push((0, false));
            world.programs.borrow_mut().push(Some(Program {
                task,
                index: i as u64,
                space,
                root,
                frames,
                child,
                unit: 0,
                destroyed: false,
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
        self.stage.set(Stage::Setup);
        self.machine.run();
        for p in self.programs.borrow_mut().iter_mut().flatten() {
            p.unit = 0;
        }
        for progress in self.progress.borrow_mut().iter_mut() {
            progress.0 = 0;
        }
        self.machine.restart_tasks();
        self.machine.clear_counts();
        self.backend_updates_reset();
        self.stage.set(Stage::Measure);
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
    fn tables<'a>(
        &'a self,
        root: PhysAddr,
        space: SpaceId,
        frames: &'a SimFrames,
        upper: bool,
    ) -> PageTables<'a, B, L, SimFrames> {
        // SAFETY: `root` is one of the world's roots, made by `new_root`
        // from these frames, and stays allocated while the world lives
        // (only an exit destroys a program's, and it never uses it again).
        unsafe {
            Self::mmu(&self.backend, &self.lazy, frames).tables_at(
                root,
                space,
                VaRange::for_format::<F>(upper),
            )
        }
    }

    fn kernel_tables(&self) -> PageTables<'_, B, L, SimFrames> {
        self.tables(self.kernel_root, SpaceId::KERNEL, &self.kernel_frames, true)
    }

    fn all_cpus(&self) -> FlushScope {
        FlushScope::Cpus(self.machine.all_cpus())
    }

    fn check<E: core::fmt::Debug>(&self, r: Result<(), E>, what: &str) {
        if let Err(e) = r {
            self.machine
                .violation(Invariant::OperationFailed, format!("{what}: {e:?}"));
        }
    }

    /// Touches `pages` pages from `va` on the running CPU, so that TLBs
    /// hold translations the workload will have to invalidate.
    fn touch(&self, space: SpaceId, va: u64, pages: u64) {
        for i in 0..pages {
            let _ = self.machine.access_in(space, VirtAddr(va + i * PAGE));
        }
    }

    fn user_base(&self, p: &Program) -> u64 {
        USER_BASE + p.index * TASK_STRIDE
    }

    fn units(&self) -> u64 {
        self.config.pages.div_ceil(CHUNK_PAGES)
    }

    fn chunk_len(&self, unit: u64) -> u64 {
        let pages = (self.config.pages - unit * CHUNK_PAGES).min(CHUNK_PAGES);
        pages * PAGE
    }

    /// Runs one unit of a program; false when its stage is done.
    fn step(&self, p: &mut Program) -> bool {
        let stage = self.stage.get();
        let units = self.units();
        let unit = p.unit;
        p.unit += 1;
        self.progress.borrow_mut()[p.index as usize] = (p.unit, p.destroyed);
        let frames = p.frames.clone();
        let tables = self.tables(p.root, p.space, &frames, false);
        let base = self.user_base(p);
        let user = matches!(
            self.config.workload,
            WorkloadKind::Fork
                | WorkloadKind::Munmap
                | WorkloadKind::Exit
                | WorkloadKind::Mprotect
                | WorkloadKind::Mremap
                | WorkloadKind::DebugPagealloc
        );
        if stage == Stage::Setup {
            if !user || unit >= units {
                return false;
            }
            let va = base + unit * CHUNK_PAGES * PAGE;
            let len = self.chunk_len(unit);
            let phys = DATA_BASE + p.index * TASK_STRIDE + unit * CHUNK_PAGES * PAGE;
            let r = tables.map(
                VirtAddr(va),
                PhysAddr(phys),
                len,
                Attributes::user_data(),
                PageSize::Size4K,
            );
            self.check(r.map(|_| ()), "setup map");
            self.touch(p.space, va, 8);
            if unit == 0 && self.config.workload == WorkloadKind::DebugPagealloc {
                // The direct map's page tables exist from boot (Linux maps
                // the direct map at 4K granularity under DEBUG_PAGEALLOC):
                // build them, and leave every page but the first unmapped
                // (a zap of a whole table's range would free the table).
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
                let mut gather = Gather::new(
                    &*self.backend,
                    &self.kernel_frames,
                    SpaceId::KERNEL,
                    self.all_cpus(),
                );
                let r = kernel.zap(direct.add(PAGE), 511 * PAGE, &mut gather);
                self.check(r.map(|_| ()), "setup direct map (unmap)");
                drop(gather);
            }
            return unit + 1 < units;
        }

        let va = base + (unit % units.max(1)) * CHUNK_PAGES * PAGE;
        let len = if units == 0 {
            0
        } else {
            self.chunk_len(unit % units)
        };
        self.machine
            .log(EventKind::Unit(self.config.workload.name()));
        match self.config.workload {
            WorkloadKind::Fork => {
                let Some((child_space, child_root, child_frames)) = &p.child else {
                    return false;
                };
                let child = self.tables(*child_root, *child_space, child_frames, false);
                self.touch(p.space, va, 8);
                let mut gather = Gather::new(&*self.backend, &frames, p.space, self.all_cpus());
                let r = tables.copy_to(&child, VirtAddr(va), len, CopyKind::Private, &mut gather);
                self.check(r.map(|_| ()), "fork copy");
                drop(gather);
                unit + 1 < units
            }
            WorkloadKind::Munmap => {
                self.touch(p.space, va, 8);
                let mut gather = Gather::new(&*self.backend, &frames, p.space, self.all_cpus());
                let r = tables.zap(VirtAddr(va), len, &mut gather);
                self.check(r.map(|_| ()), "munmap zap");
                drop(gather);
                unit + 1 < units
            }
            WorkloadKind::Exit => {
                if unit < units {
                    self.touch(p.space, va, 8);
                    let mut gather = Gather::new(&*self.backend, &frames, p.space, self.all_cpus());
                    let r = tables.zap(VirtAddr(va), len, &mut gather);
                    self.check(r.map(|_| ()), "exit zap");
                    drop(gather);
                    true
                } else {
                    if !p.destroyed {
                        p.destroyed = true;
                        self.progress.borrow_mut()[p.index as usize].1 = true;
                        let mut gather =
                            Gather::new(&*self.backend, &frames, p.space, self.all_cpus());
                        let r = tables.destroy(&mut gather);
                        self.check(r.map(|_| ()), "exit free tables");
                        drop(gather);
                    }
                    false
                }
            }
            WorkloadKind::Mprotect => {
                // Two passes: read-only, then writable again.
                let protection = if unit < units {
                    Protection::read_only()
                } else {
                    Protection::writable()
                };
                self.touch(p.space, va, 8);
                let mut gather = Gather::new(&*self.backend, &frames, p.space, self.all_cpus());
                let r = tables.protect(VirtAddr(va), len, protection, &mut gather);
                self.check(r.map(|_| ()), "mprotect");
                drop(gather);
                unit + 1 < 2 * units
            }
            WorkloadKind::Mremap => {
                self.touch(p.space, va, 8);
                let mut gather = Gather::new(&*self.backend, &frames, p.space, self.all_cpus());
                let r =
                    tables.move_range(VirtAddr(va), VirtAddr(va + MREMAP_OFFSET), len, &mut gather);
                self.check(r.map(|_| ()), "mremap move");
                drop(gather);
                unit + 1 < units
            }
            WorkloadKind::Vmalloc => self.vmalloc_unit(p, unit, units),
            WorkloadKind::Kasan => self.kasan_unit(p, unit, units),
            WorkloadKind::DebugPagealloc => {
                self.debug_pagealloc_unit(&tables, &frames, p, va, len);
                unit + 1 < units
            }
        }
    }

    fn vmalloc_unit(&self, p: &Program, unit: u64, units: u64) -> bool {
        let kernel = self.kernel_tables();
        let base = VMALLOC_BASE + p.index * TASK_STRIDE;
        let u = unit % units;
        let va = base + u * CHUNK_PAGES * PAGE;
        let len = self.chunk_len(u);
        if unit < units {
            // vmap: map, then the caller touches the new mapping at once.
            let phys = DATA_BASE + (p.index + 64) * TASK_STRIDE + u * CHUNK_PAGES * PAGE;
            let r = kernel.map(
                VirtAddr(va),
                PhysAddr(phys),
                len,
                Attributes::kernel_data(),
                PageSize::Size4K,
            );
            self.check(r.map(|_| ()), "vmalloc map");
            self.expect_mapped(va, true, "vmalloc'd page after map");
        } else {
            // vfree: unmap and flush the range on every CPU.
            self.touch(SpaceId::KERNEL, va, 8);
            let mut gather = Gather::new(
                &*self.backend,
                &self.kernel_frames,
                SpaceId::KERNEL,
                self.all_cpus(),
            );
            let r = kernel.zap(VirtAddr(va), len, &mut gather);
            self.check(r.map(|_| ()), "vfree zap");
            drop(gather);
        }
        unit + 1 < 2 * units
    }

    fn kasan_unit(&self, p: &Program, unit: u64, units: u64) -> bool {
        let kernel = self.kernel_tables();
        let base = KASAN_BASE + p.index * TASK_STRIDE;
        let u = unit % units;
        let va = base + u * CHUNK_PAGES * PAGE;
        let len = self.chunk_len(u);
        let populate = unit < units;
        let pause = !self.config.read_back_without_pause;
        let backend = &*self.backend;
        let lazy = &self.lazy;
        let shadow = DATA_BASE + (p.index + 128) * TASK_STRIDE + u * CHUNK_PAGES * PAGE;
        let mut gather = Gather::new(
            backend,
            &self.kernel_frames,
            SpaceId::KERNEL,
            self.all_cpus(),
        );
        let mode = if populate {
            ApplyMode::Create
        } else {
            ApplyMode::Existing
        };
        let r = kernel.apply(VirtAddr(va), len, mode, &mut gather, |slot| {
            // kasan_populate_vmalloc_pte / kasan_depopulate_vmalloc_pte:
            // pause lazy MMU mode around each entry, because the entry is
            // read back (pte_none) right after it is written.
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
        drop(gather);
        unit + 1 < 2 * units
    }

    /// A zap that, mid-section, allocates a page whose kernel mapping is
    /// made valid by a nested section (DEBUG_PAGEALLOC's
    /// `__kernel_map_pages`), uses the page, and unmaps it again.
    fn debug_pagealloc_unit(
        &self,
        tables: &PageTables<'_, B, L, SimFrames>,
        frames: &SimFrames,
        p: &Program,
        va: u64,
        len: u64,
    ) {
        self.touch(p.space, va, 8);
        let section = self.lazy.section();
        let half = (len / 2) & !(PAGE - 1);
        let mut gather = Gather::new(&*self.backend, frames, p.space, self.all_cpus());
        let r = tables.zap(VirtAddr(va), half, &mut gather);
        self.check(r.map(|_| ()), "debug-pagealloc zap (first half)");
        // The allocation: map the page in the direct map (a nested section
        // inside the range operation), use it, free it (unmap).
        let page = 1 + p.unit % 511;
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
        let mut kgather = Gather::new(
            &*self.backend,
            &self.kernel_frames,
            SpaceId::KERNEL,
            self.all_cpus(),
        );
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
            let mut gather = Gather::new(
                &*self.backend,
                &self.kernel_frames,
                SpaceId::KERNEL,
                self.all_cpus(),
            );
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
        for &(unit, destroyed) in self.progress.borrow().iter() {
            h.write_u64(unit);
            h.write_u8(destroyed as u8);
        }
        h.write_u8(self.irq_mapped.get() as u8);
        h.write_u8(self.stage.get() as u8);
        self.backend.digest(h);
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
