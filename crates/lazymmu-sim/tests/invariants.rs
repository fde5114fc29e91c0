//! Every check fires on a deliberately broken input (a check that cannot
//! fail is a defect), and runs are reproducible from their seed.

use std::rc::Rc;

use lazymmu::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use lazymmu::backend::x86::X86Backend;
use lazymmu::backend::xen_pv::{MmuUpdate, XenPrimitives};
use lazymmu::backend::{Backend, ContextSwitch, EntryUpdate, FlushScope, PteAccess, TlbFlush};
use lazymmu::cpu::CpuId;
use lazymmu::mode::counters::Counters;
use lazymmu::mode::percpu::PerCpu;
use lazymmu::mode::{ArchHooks, LazyMode, MisusePolicy};
use lazymmu_sim::choice::Rates;
use lazymmu_sim::cost::Platform;
use lazymmu_sim::invariant::Invariant;
use lazymmu_sim::machine::{
    Access, HardwareModel, KeyModel, Machine, MachineConfig, SimCpu, SimEnv, SimMemory,
};
use lazymmu_sim::observed::{Checked, Observed};
use lazymmu_sim::run::{hardware, run};
use lazymmu_sim::scenario::{BackendKind, DesignKind, ModeKind, RunConfig, WorkloadKind};
use lazymmu_sim::world::Shared;

/// A user leaf mapping `va` to `phys` (x86 present | writable | user).
const LEAF: u64 = 0b111;

/// A machine with task 0 (space 1) on CPU 0 whose tree maps one page at
/// `VA` through a 4-level x86 walk, and the PTE's address.
const VA: u64 = 0x40_0000;

fn machine(hw: HardwareModel) -> (Rc<Machine>, PhysAddr) {
    let mut cfg = MachineConfig::new(2, Platform::X86);
    cfg.hardware = hw;
    cfg.frames = 64;
    let m = Rc::new(Machine::new(cfg));
    let mem = m.memory();
    let frames: Vec<PhysAddr> = (0..4)
        .map(|_| mem.allocate_table(SpaceId(1), hw.table_key).unwrap())
        .collect();
    for (level, pair) in frames.windows(2).enumerate() {
        let shift = 39 - 9 * level as u32;
        let index = (VA >> shift) & 511;
        mem.write(pair[0].add(index * 8), pair[1].0 | LEAF);
    }
    let pte = frames[3].add(((VA >> 12) & 511) * 8);
    mem.write(pte, 0x8000_0000 | LEAF);
    let kernel_root = mem.allocate_table(SpaceId::KERNEL, hw.table_key).unwrap();
    m.set_walker(
        lazymmu_sim::machine::walk::<lazymmu::pgtable::format::X86_64>,
        kernel_root,
        |va| va >> 63 != 0,
    );
    m.set_space_root(SpaceId(1), frames[0]);
    let task = m.add_task("t0", SpaceId(1), CpuId(0), false);
    m.switch(CpuId(0), task);
    (m, pte)
}

fn update(pte: PhysAddr, value: u64) -> EntryUpdate {
    EntryUpdate {
        entry: pte,
        va: VirtAddr(VA),
        space: SpaceId(1),
        level: 1,
        value,
        kernel: false,
        valid: value & 1 != 0,
        leaf: true,
    }
}

/// An x86 backend that "forgets" TLB flushes.
struct NoFlush<B>(B);

impl<B: Backend> ArchHooks for NoFlush<B> {
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
impl<B: Backend> PteAccess for NoFlush<B> {
    fn read_entry(&self, entry: PhysAddr) -> u64 {
        self.0.read_entry(entry)
    }
    fn write_entry(&self, update: EntryUpdate) {
        self.0.write_entry(update)
    }
    fn get_and_clear(&self, update: EntryUpdate) -> u64 {
        self.0.get_and_clear(update)
    }
}
impl<B: Backend> TlbFlush for NoFlush<B> {
    fn flush_range(&self, _: SpaceId, _: VirtAddr, _: VirtAddr, _: PageSize, _: FlushScope) {}
    fn flush_all(&self, _: SpaceId, _: FlushScope) {}
}
impl<B: Backend> ContextSwitch for NoFlush<B> {}
impl<B: Backend> Backend for NoFlush<B> {
    type Format = B::Format;
    type Memory = B::Memory;
    fn memory(&self) -> &B::Memory {
        self.0.memory()
    }
}

/// A backend that drops every write.
struct DropsWrites<B>(B);

impl<B: Backend> ArchHooks for DropsWrites<B> {
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
impl<B: Backend> PteAccess for DropsWrites<B> {
    fn read_entry(&self, entry: PhysAddr) -> u64 {
        self.0.read_entry(entry)
    }
    fn write_entry(&self, _update: EntryUpdate) {}
    fn get_and_clear(&self, update: EntryUpdate) -> u64 {
        self.0.read_entry(update.entry)
    }
}
impl<B: Backend> TlbFlush for DropsWrites<B> {
    fn flush_range(&self, s: SpaceId, a: VirtAddr, b: VirtAddr, p: PageSize, f: FlushScope) {
        self.0.flush_range(s, a, b, p, f)
    }
    fn flush_all(&self, s: SpaceId, f: FlushScope) {
        self.0.flush_all(s, f)
    }
}
impl<B: Backend> ContextSwitch for DropsWrites<B> {}
impl<B: Backend> Backend for DropsWrites<B> {
    type Format = B::Format;
    type Memory = B::Memory;
    fn memory(&self) -> &B::Memory {
        self.0.memory()
    }
}

fn x86(m: &Rc<Machine>) -> X86Backend<SimMemory, SimCpu> {
    X86Backend::new(SimMemory::new(m.clone()), SimCpu::new(m.clone()))
}

#[test]
fn a_forgotten_flush_leaves_a_stale_translation() {
    let (m, pte) = machine(hardware(BackendKind::X86));
    assert!(
        matches!(m.access(VirtAddr(VA)), Access::Hit(_)),
        "the TLB now caches VA"
    );
    // The honest backend: no violation.
    let good = Observed::new(x86(&m), m.clone());
    good.write_entry(update(pte, 0));
    good.flush_range(
        SpaceId(1),
        VirtAddr(VA),
        VirtAddr(VA + 4096),
        PageSize::Size4K,
        FlushScope::Local,
    );
    assert_eq!(m.violation_count(), 0);
    // The broken one.
    assert!(matches!(m.access(VirtAddr(VA)), Access::Fault));
    m.memory().write(pte, 0x8000_0000 | LEAF);
    assert!(matches!(m.access(VirtAddr(VA)), Access::Hit(_)));
    let bad = Observed::new(NoFlush(x86(&m)), m.clone());
    bad.write_entry(update(pte, 0));
    bad.flush_range(
        SpaceId(1),
        VirtAddr(VA),
        VirtAddr(VA + 4096),
        PageSize::Size4K,
        FlushScope::Local,
    );
    let v = m.violations();
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].invariant, Invariant::StaleTranslation);
    assert!(
        !v[0].events.is_empty(),
        "the report carries the last events"
    );
}

#[test]
fn a_lost_write_is_caught_when_the_section_closes() {
    let (m, pte) = machine(hardware(BackendKind::X86));
    let backend = Rc::new(Observed::new(DropsWrites(x86(&m)), m.clone()));
    let mode = Counters::new(
        SimEnv::new(m.clone()),
        Shared(backend.clone()),
        MisusePolicy::Count,
    );
    {
        let _s = mode.section();
        backend.write_entry(update(pte, 0));
        assert_eq!(
            m.violation_count(),
            0,
            "inside the section the write may be deferred"
        );
    }
    assert_eq!(m.violations()[0].invariant, Invariant::WritesVisible);
}

#[test]
fn double_enter_is_caught() {
    let (m, _) = machine(hardware(BackendKind::X86));
    let backend = Observed::new(x86(&m), m.clone());
    backend.enter();
    assert_eq!(m.violation_count(), 0);
    backend.enter();
    assert_eq!(m.violations()[0].invariant, Invariant::EnterLeave);
}

#[test]
fn a_key_register_left_open_after_a_section_is_caught() {
    let mut hw = hardware(BackendKind::X86Pks);
    hw.keys = KeyModel::Pks;
    let (m, _) = machine(hw);
    let backend = Rc::new(Observed::new(x86(&m), m.clone()));
    let mode = Checked::new(
        Counters::new(
            SimEnv::new(m.clone()),
            Shared(backend.clone()),
            MisusePolicy::Count,
        ),
        m.clone(),
    );
    {
        let _s = mode.section();
        m.key_write(0); // opened and never closed
    }
    assert_eq!(m.violations()[0].invariant, Invariant::KeyRestore);
}

#[test]
fn a_write_with_the_register_closed_faults() {
    let mut hw = hardware(BackendKind::X86Pks);
    hw.table_key = 1;
    let (m, pte) = machine(hw);
    m.store_entry(pte, 0);
    assert_eq!(m.violations()[0].invariant, Invariant::KeyFault);
}

#[test]
fn a_read_back_of_a_queued_write_is_reported() {
    let (m, pte) = machine(hardware(BackendKind::XenPv));
    let xen = Rc::new(Observed::new(
        lazymmu::backend::xen_pv::XenPv::new(SimCpu::new(m.clone())),
        m.clone(),
    ));
    let mode = Counters::new(
        SimEnv::new(m.clone()),
        Shared(xen.clone()),
        MisusePolicy::Count,
    );
    let s = mode.section();
    xen.write_entry(update(pte, 0));
    let _ = xen.read_entry(pte);
    assert_eq!(m.violations()[0].invariant, Invariant::StaleReadBack);
    drop(s);
    assert_eq!(m.violation_count(), 1, "the write itself lands at leave");
}

#[test]
fn a_batch_applied_in_another_tasks_context_is_caught() {
    let (m, pte) = machine(hardware(BackendKind::XenPv));
    // Task 1 (space 2) takes CPU 0's place... by running on CPU 1 and
    // applying space 1's queued update there.
    let other = m.memory().allocate_table(SpaceId(2), 0).unwrap();
    m.set_space_root(SpaceId(2), other);
    let t1 = m.add_task("t1", SpaceId(2), CpuId(1), false);
    assert_eq!(t1, m.cpu_count() + 1, "after the idle tasks and task 0");
    m.switch(CpuId(1), t1);
    m.set_cpu(CpuId(1));
    SimCpu::new(m.clone()).mmu_update(&[MmuUpdate {
        entry: pte,
        value: 0,
    }]);
    assert_eq!(m.violations()[0].invariant, Invariant::BatchOwnership);
}

#[test]
fn direct_stores_to_xen_page_tables_are_refused() {
    let (m, pte) = machine(hardware(BackendKind::XenPv));
    let native = Observed::new(x86(&m), m.clone());
    native.write_entry(update(pte, 0));
    assert_eq!(m.violations()[0].invariant, Invariant::ForbiddenStore);
}

#[test]
fn sleeping_in_a_per_cpu_section_is_reported() {
    let (m, _) = machine(hardware(BackendKind::XenPv));
    let backend = Rc::new(Observed::new(x86(&m), m.clone()));
    let mode = PerCpu::new(
        SimEnv::new(m.clone()),
        Shared(backend.clone()),
        MisusePolicy::Count,
    );
    {
        let _s = mode.section();
        m.sleep();
    }
    assert_eq!(m.violations()[0].invariant, Invariant::SleepInSection);
    // The counter design may sleep.
    let (m, _) = machine(hardware(BackendKind::XenPv));
    let backend = Rc::new(Observed::new(x86(&m), m.clone()));
    let mode = Counters::new(
        SimEnv::new(m.clone()),
        Shared(backend.clone()),
        MisusePolicy::Count,
    );
    {
        let _s = mode.section();
        m.sleep();
    }
    assert_eq!(m.violation_count(), 0);
}

#[test]
fn misuse_of_the_raw_api_is_a_violation() {
    let (m, _) = machine(hardware(BackendKind::X86));
    let backend = Rc::new(Observed::new(x86(&m), m.clone()));
    let mode = Checked::new(
        Counters::new(SimEnv::new(m.clone()), Shared(backend), MisusePolicy::Count),
        m.clone(),
    );
    assert!(mode.disable(()).is_err());
    assert_eq!(m.violations()[0].invariant, Invariant::Misuse);
}

#[test]
fn runs_are_reproducible_from_the_seed() {
    let mut cfg = RunConfig::new(BackendKind::XenPv, WorkloadKind::Fork, ModeKind::Lazy);
    cfg.pages = 1024;
    cfg.tasks = 3;
    cfg.rates = Some(Rates {
        interrupt: 10,
        preempt: 20,
        migrate: 10,
        remote_flush: 5,
        run_other: 0,
    });
    let a = run(&cfg);
    let b = run(&cfg);
    assert!(
        a.preemptions > 0 && a.interrupts > 0,
        "the seed disturbs the run"
    );
    assert_eq!(a.counts, b.counts);
    assert_eq!(a.cycles, b.cycles);
    assert_eq!(a.steps, b.steps);
    assert_eq!(a.trace, b.trace);
    assert_eq!(a.digest, b.digest, "equal runs end in equal states");
    cfg.seed = 2;
    let c = run(&cfg);
    assert_ne!(a.trace, c.trace, "another seed, another schedule");
    cfg.pages = 1000;
    assert_ne!(run(&cfg).digest, c.digest, "another state, another digest");
    assert_eq!(a.violation_count + c.violation_count, 0);
}

#[test]
fn every_design_keeps_the_contracts_under_preemption_and_interrupts() {
    for &design in DesignKind::ALL {
        for backend in [
            BackendKind::XenPv,
            BackendKind::Arm64,
            BackendKind::X86Pks,
            BackendKind::S390,
        ] {
            let mut cfg = RunConfig::new(backend, WorkloadKind::DebugPagealloc, ModeKind::Lazy);
            cfg.design = design;
            cfg.pages = 1024;
            cfg.tasks = 3;
            cfg.rates = Some(Rates {
                interrupt: 10,
                preempt: 20,
                migrate: 10,
                remote_flush: 5,
                run_other: 0,
            });
            let r = run(&cfg);
            assert_eq!(
                r.violation_count,
                0,
                "{backend} {design}: {}",
                r.violations
                    .first()
                    .map(|v| v.to_string())
                    .unwrap_or_default()
            );
        }
    }
}

/// A backend that defers every write until `leave`, even in interrupt
/// context (the `irq-batched` bug).
struct DefersInIrq<B> {
    inner: B,
    queued: core::cell::RefCell<Vec<EntryUpdate>>,
}

impl<B: Backend> ArchHooks for DefersInIrq<B> {
    fn enter(&self) {
        self.inner.enter()
    }
    fn leave(&self) {
        for u in self.queued.take() {
            self.inner.write_entry(u);
        }
        self.inner.leave()
    }
    fn flush(&self) {
        self.inner.flush()
    }
}
impl<B: Backend> PteAccess for DefersInIrq<B> {
    fn read_entry(&self, entry: PhysAddr) -> u64 {
        self.inner.read_entry(entry)
    }
    fn write_entry(&self, update: EntryUpdate) {
        self.queued.borrow_mut().push(update);
    }
    fn get_and_clear(&self, update: EntryUpdate) -> u64 {
        self.inner.get_and_clear(update)
    }
}
impl<B: Backend> TlbFlush for DefersInIrq<B> {
    fn flush_range(&self, s: SpaceId, a: VirtAddr, b: VirtAddr, p: PageSize, f: FlushScope) {
        self.inner.flush_range(s, a, b, p, f)
    }
    fn flush_all(&self, s: SpaceId, f: FlushScope) {
        self.inner.flush_all(s, f)
    }
}
impl<B: Backend> ContextSwitch for DefersInIrq<B> {}
impl<B: Backend> Backend for DefersInIrq<B> {
    type Format = B::Format;
    type Memory = B::Memory;
    fn memory(&self) -> &B::Memory {
        self.inner.memory()
    }
}

struct IrqWriter<B> {
    backend: Rc<Observed<B>>,
    pte: PhysAddr,
}

impl<B: Backend> lazymmu_sim::machine::Kernel for IrqWriter<B> {
    fn interrupt(&self) {
        self.backend.write_entry(update(self.pte, 0));
    }
    fn run_unit(&self, _: usize) -> bool {
        false
    }
}

#[test]
fn an_interrupt_update_that_is_deferred_is_caught() {
    let (m, pte) = machine(hardware(BackendKind::X86));
    let backend = Rc::new(Observed::new(
        DefersInIrq {
            inner: x86(&m),
            queued: Default::default(),
        },
        m.clone(),
    ));
    m.set_kernel(Rc::new(IrqWriter {
        backend: backend.clone(),
        pte,
    }));
    let mode = Counters::new(
        SimEnv::new(m.clone()),
        Shared(backend.clone()),
        MisusePolicy::Count,
    );
    let s = mode.section();
    m.interrupt();
    assert_eq!(m.violations()[0].invariant, Invariant::IrqImmediate);
    drop(s);
    m.shut_down();
}

#[test]
fn a_recorded_schedule_replays_exactly() {
    use lazymmu_sim::choice::{Chooser, RandomChooser, Replay, Trace};
    use lazymmu_sim::run::run_with;
    let mut cfg = RunConfig::new(BackendKind::XenPv, WorkloadKind::Mprotect, ModeKind::Lazy);
    cfg.pages = 1024;
    cfg.tasks = 3;
    let rates = Rates {
        interrupt: 10,
        preempt: 20,
        migrate: 10,
        remote_flush: 5,
        run_other: 0,
    };
    let recorded = run_with(&cfg, &mut RandomChooser::new(7, rates));
    assert!(recorded.trace.picks.iter().any(|&p| p != 0));
    let text = recorded.trace.to_string();
    let trace: Trace = text.parse().unwrap();
    let mut replay = Replay::new(trace.picks);
    let replayed = run_with(&cfg, &mut replay);
    assert_eq!(replay.mismatches(), 0);
    assert_eq!(replayed.trace, recorded.trace);
    assert_eq!(replayed.counts, recorded.counts);
    assert_eq!(replayed.steps, recorded.steps);
    let _: &dyn Chooser = &replay;
}

#[test]
fn freeing_page_tables_before_the_flush_is_caught() {
    use lazymmu::mode::eager::Eager;
    use lazymmu::pgtable::allocator::FrameAllocator;
    use lazymmu::pgtable::format::{Attributes, X86_64};
    use lazymmu::pgtable::gather::Gather;
    use lazymmu::pgtable::memory::PageTableMemory;
    use lazymmu::pgtable::ops::{Mmu, VaRange};
    use lazymmu_sim::machine::SimFrames;

    for free_first in [false, true] {
        let mut cfg = MachineConfig::new(2, Platform::X86);
        cfg.hardware = hardware(BackendKind::X86);
        cfg.frames = 64;
        let m = Rc::new(Machine::new(cfg));
        let memory = SimMemory::new(m.clone());
        let frames = SimFrames::new(m.clone(), SpaceId(1));
        let kernel_root = m.memory().allocate_table(SpaceId::KERNEL, 0).unwrap();
        m.set_walker(lazymmu_sim::machine::walk::<X86_64>, kernel_root, |va| {
            va >> 63 != 0
        });
        let root = frames.allocate().unwrap();
        memory.zero_frame(root);
        m.set_space_root(SpaceId(1), root);
        let task = m.add_task("t0", SpaceId(1), CpuId(0), false);
        m.switch(CpuId(0), task);
        let backend = Observed::new(x86(&m), m.clone());
        // SAFETY: the frames are the machine's page-table memory, which is
        // the backend's and which the library alone changes; `root` is a
        // zeroed frame of them.
        let tables = unsafe {
            Mmu::new(&backend, &Eager, &frames, FlushScope::Local).tables_at(
                root,
                SpaceId(1),
                VaRange::Both,
            )
        };
        tables
            .map(
                VirtAddr(VA),
                PhysAddr(0x8000_0000),
                64 * 4096,
                Attributes::user_data(),
                PageSize::Size4K,
            )
            .unwrap();
        assert!(matches!(m.access(VirtAddr(VA)), Access::Hit(_)));
        if free_first {
            let mut gather =
                Gather::new_free_before_flush(&backend, &frames, SpaceId(1), FlushScope::Local);
            tables.destroy(&mut gather).unwrap();
            drop(gather);
            assert_eq!(
                m.violations()[0].invariant,
                Invariant::FreedInUse,
                "{}",
                m.violations()[0]
            );
        } else {
            let mut gather = Gather::new(&backend, &frames, SpaceId(1), FlushScope::Local);
            tables.destroy(&mut gather).unwrap();
            drop(gather);
            assert_eq!(
                m.violation_count(),
                0,
                "{:?}",
                m.violations().first().map(|v| v.to_string())
            );
            assert_eq!(m.memory().allocated(), 1, "only the kernel root is left");
        }
    }
}

/// vmalloc's lazily freed areas (`free_vmap_area_noflush`,
/// mm/vmalloc.c): CPUs may go on caching a freed area's old translations
/// until `__purge_vmap_area_lazy` flushes it, since nobody uses a freed area
/// and its addresses are handed out again only after that flush. A task
/// that finishes with such a page cached is no violation; the same page
/// cleared without the deferral is, and so is mapping the address again
/// before the purge.
#[test]
fn a_lazily_freed_area_may_stay_cached_until_the_purge_but_not_be_reused() {
    let cleared_and_finished = |deferred: bool| {
        let (m, pte) = machine(hardware(BackendKind::X86));
        assert!(matches!(m.access(VirtAddr(VA)), Access::Hit(_)));
        let backend = Observed::new(x86(&m), m.clone());
        backend.write_entry(update(pte, 0));
        if deferred {
            backend.lazily_freed(SpaceId(1), VA, VA + 4096);
        }
        backend.check_finished(m.current_task());
        (m, pte, backend)
    };
    let (m, _, _) = cleared_and_finished(false);
    let v = m.violations();
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0].invariant, Invariant::StaleTranslation);
    assert!(v[0].detail.contains("finished"), "{}", v[0].detail);

    let (m, pte, backend) = cleared_and_finished(true);
    assert_eq!(m.violation_count(), 0, "{:?}", m.violations());
    backend.write_entry(update(pte, 0x8000_0000 | LEAF));
    let v = m.violations();
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0].invariant, Invariant::StaleTranslation);
    assert!(v[0].detail.contains("lazily freed"), "{}", v[0].detail);

    // After the purge the address may be mapped again.
    let (m, pte, backend) = cleared_and_finished(true);
    backend.flush_range(
        SpaceId(1),
        VirtAddr(VA),
        VirtAddr(VA + 4096),
        PageSize::Size4K,
        FlushScope::Local,
    );
    backend.purged();
    backend.write_entry(update(pte, 0x8000_0000 | LEAF));
    assert_eq!(m.violation_count(), 0, "{:?}", m.violations());
}

/// powerpc hash: the hash-fault handler (`__hash_page_4K`,
/// arch/powerpc/mm/book3s64/hash_4k.c) sets `H_PAGE_HASHPTE` in the PTE
/// itself when a CPU first uses the page. A task's write whose entry a
/// fault marked since is in effect; the same bit in the entry when the
/// task's write cleared it, with no fault since, is a lost write.
#[test]
fn a_hash_fault_marking_a_written_entry_is_no_lost_write() {
    // The fault marks the entry after the task's write: in effect.
    let (m, pte) = machine(hardware(BackendKind::PpcHash));
    let backend = Observed::new(x86(&m), m.clone());
    remap_in_a_section(&m, pte, backend, false);
    assert_eq!(m.violation_count(), 0, "{:?}", m.violations());
    // The write that would clear the bit is lost: the bit is the fault's
    // from before the write.
    let (m, pte) = machine(hardware(BackendKind::PpcHash));
    let backend = Observed::new(DropsWrites(x86(&m)), m.clone());
    remap_in_a_section(&m, pte, backend, true);
    let v = m.violations();
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0].invariant, Invariant::WritesVisible, "{}", v[0]);
}

/// Remaps `VA` to another page inside a section (the PTE at `pte`, clear
/// of `H_PAGE_HASHPTE`), with a hash fault on `VA` before the section
/// (`fault_first`) or after the write.
fn remap_in_a_section<B: Backend + 'static>(
    m: &Rc<Machine>,
    pte: PhysAddr,
    backend: Observed<B>,
    fault_first: bool,
) {
    const HASHPTE: u64 = lazymmu::pgtable::format::ppc_hash::HASHPTE;
    if fault_first {
        assert!(matches!(m.access(VirtAddr(VA)), Access::Hit(_)));
        assert_ne!(m.memory().read(pte) & HASHPTE, 0, "the fault marks the PTE");
    }
    let backend = Rc::new(backend);
    let mode = Counters::new(
        SimEnv::new(m.clone()),
        Shared(backend.clone()),
        MisusePolicy::Count,
    );
    let _s = mode.section();
    backend.write_entry(update(pte, 0x9000_0000 | LEAF));
    if !fault_first {
        assert!(matches!(m.access(VirtAddr(VA)), Access::Hit(_)));
        assert_ne!(m.memory().read(pte) & HASHPTE, 0, "the fault marks the PTE");
    }
}
