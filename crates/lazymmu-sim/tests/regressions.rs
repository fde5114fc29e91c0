//! Regression tests for bugs `lazymmu compare` found in the library, each
//! driven to the exact schedule that exposed it.

use std::cell::RefCell;
use std::rc::Rc;

use lazymmu::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use lazymmu::backend::arm64::Arm64;
use lazymmu::backend::ppc_hash::PpcHash;
use lazymmu::backend::protected::{Poe, Protected};
use lazymmu::backend::sparc64::Sparc64;
use lazymmu::backend::x86::X86Backend;
use lazymmu::backend::xen_pv::XenPv;
use lazymmu::backend::{Backend, ContextSwitch, EntryUpdate, FlushScope, PteAccess, TlbFlush};
use lazymmu::cpu::{CpuId, CpuMask};
use lazymmu::mode::counters::Counters;
use lazymmu::mode::{LazyMode, MisusePolicy};
use lazymmu::pgtable::allocator::FrameAllocator;
use lazymmu::pgtable::format::{Aarch64, Attributes, Entry, Format, X86_64};
use lazymmu::pgtable::memory::PageTableMemory;
use lazymmu::pgtable::ops::{Mmu, VaRange};
use lazymmu_sim::choice::{Choice, ChoicePoint, Chooser, Site};
use lazymmu_sim::cost::Platform;
use lazymmu_sim::machine::{
    walk, Access, Kernel, Machine, MachineConfig, SimCpu, SimEnv, SimFrames, SimMemory,
};
use lazymmu_sim::observed::Observed;
use lazymmu_sim::run::hardware;
use lazymmu_sim::scenario::BackendKind;
use lazymmu_sim::world::Shared;

/// The page the tests map and unmap.
const VA: u64 = 0x40_0000;

/// A unit of work of one task.
type Unit = Box<dyn FnOnce()>;

/// The kernel of these tests: the backend's context-switch hooks, no
/// interrupts, and for each task one unit of work (a closure run on the
/// task's coroutine, where the chooser can preempt or migrate it).
struct Units<B: Backend> {
    machine: Rc<Machine>,
    backend: Rc<Observed<B>>,
    units: RefCell<Vec<Option<Unit>>>,
}

impl<B: Backend> Kernel for Units<B> {
    fn switch_out(&self, _cpu: CpuId, prev: usize) {
        self.backend.switch_out(self.machine.task(prev).lazy)
    }
    fn switch_in(&self, _cpu: CpuId, next: usize) {
        self.backend.switch_in(self.machine.task(next).lazy)
    }
    fn run_unit(&self, task: usize) -> bool {
        let unit = self.units.borrow_mut().get_mut(task).and_then(Option::take);
        if let Some(unit) = unit {
            unit();
        }
        false
    }
}

/// Runs each task's unit on `m` (tasks in order, each on its CPU) under
/// `chooser`, with `backend`'s switch hooks.
fn run_units<B: Backend + 'static>(
    m: &Rc<Machine>,
    backend: &Rc<Observed<B>>,
    units: Vec<(usize, Unit)>,
    chooser: Box<dyn Chooser>,
) {
    let mut slots: Vec<Option<Unit>> = (0..m.task_count()).map(|_| None).collect();
    for (task, unit) in units {
        slots[task] = Some(unit);
    }
    m.set_kernel(Rc::new(Units {
        machine: m.clone(),
        backend: backend.clone(),
        units: RefCell::new(slots),
    }));
    m.set_chooser(chooser);
    m.run();
    m.shut_down();
}

fn no_violations(m: &Machine) {
    assert_eq!(
        m.violation_count(),
        0,
        "{:?}",
        m.violations().first().map(|v| v.to_string())
    );
}

/// Migrates the task to another CPU at the first point where that is
/// possible once the primitive `site` has run.
struct MigrateAfter {
    site: &'static str,
    armed: bool,
    done: bool,
}

impl MigrateAfter {
    fn new(site: &'static str) -> Self {
        MigrateAfter {
            site,
            armed: false,
            done: false,
        }
    }
}

impl Chooser for MigrateAfter {
    fn choose(&mut self, point: &ChoicePoint, options: &[Choice]) -> Option<usize> {
        if point.site == Site::Primitive(self.site) {
            self.armed = true;
        }
        if self.armed && !self.done {
            if let Some(i) = options
                .iter()
                .position(|c| matches!(c, Choice::Migrate { .. }))
            {
                self.done = true;
                return Some(i);
            }
        }
        Some(0)
    }
}

/// Two CPUs running `kind`'s hardware model; task 0 (space 1) current on
/// CPU 0 with `pages` pages mapped from `VA` through one 4-level tree of
/// format `F`, all cached in CPU 0's TLB. Returns the machine, the task and
/// the first PTE's address.
fn tree<F: Format>(
    kind: BackendKind,
    platform: Platform,
    pages: u64,
) -> (Rc<Machine>, usize, PhysAddr) {
    let hw = hardware(kind);
    let mut cfg = MachineConfig::new(2, platform);
    cfg.hardware = hw;
    cfg.frames = 64;
    let m = Rc::new(Machine::new(cfg));
    let mem = m.memory();
    let frames: Vec<PhysAddr> = (0..4)
        .map(|_| mem.allocate_table(SpaceId(1), hw.table_key).unwrap())
        .collect();
    for (i, pair) in frames.windows(2).enumerate() {
        let level = 4 - i as u8;
        let index = lazymmu::pgtable::format::index::<F>(VA, level) as u64;
        mem.write(pair[0].add(index * 8), F::encode_table(pair[1], level));
    }
    let pte = frames[3].add(lazymmu::pgtable::format::index::<F>(VA, 1) as u64 * 8);
    for page in 0..pages {
        mem.write(
            pte.add(page * 8),
            F::encode_leaf(
                PhysAddr(0x8000_0000 + page * 4096),
                PageSize::Size4K,
                Attributes::user_data(),
            ),
        );
    }
    let kernel_root = mem.allocate_table(SpaceId::KERNEL, hw.table_key).unwrap();
    m.set_walker(walk::<F>, kernel_root, |va| va >> 63 != 0);
    m.set_space_root(SpaceId(1), frames[0]);
    let task = m.add_task("t0", SpaceId(1), CpuId(0), true);
    m.switch(CpuId(0), task);
    for page in 0..pages {
        assert!(
            matches!(m.access(VirtAddr(VA + page * 4096)), Access::Hit(_)),
            "CPU 0 caches page {page}"
        );
    }
    (m, task, pte)
}

/// The entry update clearing page `page` of the tree.
fn clear(pte: PhysAddr, page: u64) -> EntryUpdate {
    EntryUpdate {
        entry: pte.add(page * 8),
        va: VirtAddr(VA + page * 4096),
        space: SpaceId(1),
        level: 1,
        value: 0,
        kernel: false,
        valid: false,
        leaf: true,
    }
}

/// x86 TLB flush dispatch: the shootdown went to the other CPUs and the
/// local flush ran wherever the task was afterwards. A migration in between
/// left the CPU the task came from with the stale translation (seen as
/// `stale-translation` by `lazymmu compare --seed 5 --backend x86-pks
/// --workload debug-pagealloc`). Preemption now stays off from choosing the
/// CPUs until both flushes are done, as in Linux's `flush_tlb_mm_range`.
#[test]
fn x86_flush_cannot_migrate_between_shootdown_and_local_flush() {
    let (m, task, pte) = tree::<X86_64>(BackendKind::X86, Platform::X86, 1);
    let x86 = Rc::new(Observed::new(
        X86Backend::new(SimMemory::new(m.clone()), SimCpu::new(m.clone())),
        m.clone(),
    ));
    let backend = x86.clone();
    let unit: Unit = Box::new(move || {
        backend.write_entry(clear(pte, 0));
        backend.flush_range(
            SpaceId(1),
            VirtAddr(VA),
            VirtAddr(VA + 4096),
            PageSize::Size4K,
            FlushScope::Cpus(CpuMask::from_bits(0b11)),
        );
    });
    run_units(
        &m,
        &x86,
        vec![(task, unit)],
        Box::new(MigrateAfter::new("shootdown")),
    );
    assert_eq!(m.preemptions(), 1, "the task migrated during the flush");
    assert_eq!(m.task(task).cpu, CpuId(1), "and now runs on CPU 1");
    no_violations(&m);
    for cpu in [CpuId(0), CpuId(1)] {
        assert!(
            m.tlb_entries(cpu).iter().all(|e| e.base != VA),
            "{cpu} still caches VA"
        );
    }
}

/// Maps two pages at `va` into an empty tree of `space` (so every table
/// down to a new PTE table is allocated) from inside a caller's section,
/// and checks that the hardware walker translates them as soon as `map`
/// returns, with the caller's section still open.
fn map_in_outer_section<F: Format, B: Backend<Format = F>>(
    kind: BackendKind,
    platform: Platform,
    space: SpaceId,
    va: u64,
    backend: impl FnOnce(SimCpu) -> B,
) {
    let hw = hardware(kind);
    let mut cfg = MachineConfig::new(1, platform);
    cfg.hardware = hw;
    cfg.frames = 64;
    let m = Rc::new(Machine::new(cfg));
    let memory = SimMemory::new(m.clone());
    let frames = SimFrames::new(m.clone(), space);
    let root = frames.allocate().unwrap();
    memory.zero_frame(root);
    let kernel_root = if space == SpaceId::KERNEL {
        root
    } else {
        m.memory()
            .allocate_table(SpaceId::KERNEL, hw.table_key)
            .unwrap()
    };
    m.set_walker(walk::<F>, kernel_root, |va| va >> 63 != 0);
    let task_root = if space == SpaceId::KERNEL {
        m.memory().allocate_table(SpaceId(1), hw.table_key).unwrap()
    } else {
        root
    };
    let task_space = if space == SpaceId::KERNEL {
        SpaceId(1)
    } else {
        space
    };
    m.set_space_root(task_space, task_root);
    let task = m.add_task("t0", task_space, CpuId(0), false);
    m.switch(CpuId(0), task);
    let observed = Rc::new(Observed::new(backend(SimCpu::new(m.clone())), m.clone()));
    let mode = Counters::new(
        SimEnv::new(m.clone()),
        Shared(observed.clone()),
        MisusePolicy::Count,
    );
    // SAFETY: the frames are the machine's page-table memory, which is the
    // backend's and which the library alone changes; `root` is a zeroed
    // frame of them; `mode` drives the backend's hooks.
    let tables = unsafe {
        Mmu::new(&*observed, &mode, &frames, FlushScope::Local).tables_at(
            root,
            space,
            VaRange::for_format::<F>(space == SpaceId::KERNEL),
        )
    };
    let phys = 0x4000_0000;
    {
        let _outer = mode.section();
        let summary = tables
            .map(
                VirtAddr(va),
                PhysAddr(phys),
                2 * 4096,
                Attributes::kernel_data(),
                PageSize::Size4K,
            )
            .unwrap();
        assert_eq!(summary.leaves[0], 2);
        assert_eq!(summary.tables_allocated, F::LEVELS as u64 - 1);
        for page in 0..2 {
            match m.access_in(space, VirtAddr(va + page * 4096)) {
                Access::Hit(leaf) => assert!(
                    matches!(
                        F::decode(leaf.entry, 1),
                        Entry::Leaf { phys: p, .. } if p.0 == phys + page * 4096
                    ),
                    "{}: page {page} maps {:#x}",
                    kind.name(),
                    leaf.entry
                ),
                Access::Fault => panic!(
                    "{}: page {page} is not mapped when map returns inside a section",
                    kind.name()
                ),
            }
        }
    }
    no_violations(&m);
}

/// A new PTE table used to be linked after its section closed: nested in a
/// caller's section that close is only a flush, so on a backend that
/// defers writes (Xen PV's multicall batch, arm64's barriers) the PMD
/// write stayed queued when `map` returned and the pages were not mapped
/// yet. The link is now written inside the table's section.
#[test]
fn map_links_its_pte_table_before_returning_inside_a_section() {
    map_in_outer_section::<X86_64, _>(
        BackendKind::XenPv,
        Platform::XenPv,
        SpaceId(1),
        0x1000_0000_0000,
        XenPv::new,
    );
    map_in_outer_section::<Aarch64, _>(
        BackendKind::Arm64,
        Platform::Arm64,
        SpaceId::KERNEL,
        0xffff_8000_1000_0000,
        Arm64::new,
    );
    map_in_outer_section::<Aarch64, _>(
        BackendKind::Arm64Poe,
        Platform::Arm64,
        SpaceId::KERNEL,
        0xffff_8000_1000_0000,
        |cpu| Protected::<_, _, Poe>::new(Arm64::new(cpu.clone()), cpu),
    );
}

/// Preempts the running task (for the other thread) at the first point
/// where that is possible once the entry has been stored.
#[derive(Default)]
struct PreemptAfterStore {
    armed: bool,
    done: bool,
}

impl Chooser for PreemptAfterStore {
    fn choose(&mut self, point: &ChoicePoint, options: &[Choice]) -> Option<usize> {
        if point.site == Site::Primitive("write_pte") {
            self.armed = true;
        }
        if self.armed && !self.done {
            if let Some(i) = options
                .iter()
                .position(|c| matches!(c, Choice::Preempt { .. }))
            {
                self.done = true;
                return Some(i);
            }
        }
        Some(0)
    }
}

/// Thread 0 on CPU 0 clears its cached entry outside any section while the
/// chooser preempts it for thread 1, which flushes the whole address
/// space's TLB (what a gather does when it frees a table or passes the
/// single-page ceiling).
fn clear_while_a_thread_flushes<B: Backend + 'static>(
    kind: BackendKind,
    platform: Platform,
    backend: impl FnOnce(SimCpu) -> B,
) {
    let (m, thread0, pte) = tree::<B::Format>(kind, platform, 1);
    let thread1 = m.add_task("t1", SpaceId(1), CpuId(1), true);
    let observed = Rc::new(Observed::new(backend(SimCpu::new(m.clone())), m.clone()));
    let (b0, b1) = (observed.clone(), observed.clone());
    let clear_unit: Unit = Box::new(move || {
        b0.get_and_clear(clear(pte, 0));
    });
    let flush_unit: Unit = Box::new(move || {
        b1.flush_all(SpaceId(1), FlushScope::Cpus(CpuMask::from_bits(0b11)));
    });
    run_units(
        &m,
        &observed,
        vec![(thread0, clear_unit), (thread1, flush_unit)],
        Box::<PreemptAfterStore>::default(),
    );
    assert_eq!(m.preemptions(), 1, "{}: thread 1 ran", kind.name());
    no_violations(&m);
}

/// powerpc hash and sparc64 store an entry, then invalidate it (or batch
/// the invalidation) in a second step; their TLB flushes only issue the
/// calling CPU's batch. A task preempted between the two steps (outside a
/// section, where nothing disabled preemption) left the entry's stale
/// translation in every TLB while the other thread's flush of the whole
/// address space returned (`stale-translation` in `lazymmu compare --seed
/// 94 --backend ppc-hash --workload vmalloc`, eager). The two steps now
/// run with preemption off, as under Linux's PTE lock.
#[test]
fn a_hash_or_sparc_update_is_not_preempted_before_its_invalidation() {
    clear_while_a_thread_flushes(BackendKind::PpcHash, Platform::PpcHash, PpcHash::new);
    clear_while_a_thread_flushes(BackendKind::Sparc64, Platform::Sparc64, Sparc64::new);
}

/// Xen PV's local flush of a range is one `MMUEXT_INVLPG_LOCAL` per page.
/// A task migrating between two of them invalidated the rest of the range
/// on the CPU it arrived on and left the one it came from with stale
/// translations. The per-page loop now runs with preemption off, as
/// Linux's local flushes do (`flush_tlb_func` runs under `get_cpu()` or
/// with interrupts off, arch/x86/mm/tlb.c).
#[test]
fn xen_local_flush_cannot_migrate_half_way() {
    let (m, task, pte) = tree::<X86_64>(BackendKind::XenPv, Platform::XenPv, 2);
    let xen = Rc::new(Observed::new(XenPv::new(SimCpu::new(m.clone())), m.clone()));
    let backend = xen.clone();
    let unit: Unit = Box::new(move || {
        backend.write_entry(clear(pte, 0));
        backend.write_entry(clear(pte, 1));
        backend.flush_range(
            SpaceId(1),
            VirtAddr(VA),
            VirtAddr(VA + 2 * 4096),
            PageSize::Size4K,
            FlushScope::Local,
        );
    });
    run_units(
        &m,
        &xen,
        vec![(task, unit)],
        Box::new(MigrateAfter::new("mmuext_op")),
    );
    assert_eq!(m.preemptions(), 1, "the task migrated during the flush");
    no_violations(&m);
}
