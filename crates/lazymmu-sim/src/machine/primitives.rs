//! The library's machine traits over the machine: [`SimEnv`] is the lazy
//! mode's environment, [`SimCpu`] every backend's primitives, the key
//! register, lazy TLB's [`MmMachine`] and the protection-key windows'
//! [`PkeyMachine`]; [`SimMemory`] and [`SimFrames`] are page-table memory
//! and frames. Every primitive does its effect on memory and TLBs, is
//! charged as the library's documentation says, and is a choice point.

use std::rc::Rc;

use lazymmu::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use lazymmu::backend::arm64::{Arm64Primitives, Dsb};
use lazymmu::backend::machine::{BackendBug, CpuPrimitives};
use lazymmu::backend::ppc_hash::PpcHashPrimitives;
use lazymmu::backend::protected::{KeySlot, KeySlots};
use lazymmu::backend::s390::S390Primitives;
use lazymmu::backend::sparc64::Sparc64Primitives;
use lazymmu::backend::x86::{RemoteFlush, X86Primitives};
use lazymmu::backend::xen_pv::{MmuExtOp, MmuUpdate, MulticallEntry, XenPrimitives};
use lazymmu::cpu::{Cpu, CpuId, CpuMask, KeyRegister};
use lazymmu::mm::active_mm::{
    check_space_free, check_tables_free, flush_targets, AddressSpace, CpuTlbState, FlushRange,
    HardwareView, MmMachine, TaskMm,
};
use lazymmu::mm::pkey_window::{CpuKeyState, PkeyMachine, TaskKeyState};
use lazymmu::mm::{LineAccess, SharedLine};
use lazymmu::mode::percpu::PerCpuEnvironment;
use lazymmu::mode::{Environment, LazyState};
use lazymmu::pgtable::allocator::FrameAllocator;
use lazymmu::pgtable::format::{s390, Entry, Format};
use lazymmu::pgtable::memory::PageTableMemory;
use lazymmu::pgtable::walk::translate;

use super::{KeyModel, Leaf, Machine};
use crate::choice::Site;
use crate::cost::Primitive;
use crate::invariant::Invariant;

/// The environment of the task running on the machine's current CPU, as
/// the lazy mode sees it. Every lazy-state access and every re-enabling of
/// preemption is a choice point.
#[derive(Clone, Debug)]
pub struct SimEnv {
    machine: Rc<Machine>,
}

impl SimEnv {
    /// The environment over `machine`.
    pub fn new(machine: Rc<Machine>) -> Self {
        Self { machine }
    }

    /// The machine.
    pub fn machine(&self) -> &Machine {
        &self.machine
    }
}

impl Machine {
    /// Interrupt context as the library is told it (the `hide_interrupts`
    /// fault hides it).
    #[inline]
    fn told_in_interrupt(&self) -> bool {
        self.in_interrupt() && !self.config().faults.hide_interrupts
    }

    /// `preempt_disable()` of a library layer whose preemption control a
    /// fault may switch off.
    #[inline]
    fn layer_preempt_disable(&self, switched_off: bool) {
        if !switched_off {
            self.preempt_disable();
        }
    }

    /// `smp_processor_id()` as library code reads it: the running CPU's
    /// id, then, where the task could be preempted, a choice point, since
    /// the id goes stale as soon as the task migrates (what Linux's
    /// `CONFIG_DEBUG_PREEMPT` warns about as "using smp_processor_id() in
    /// preemptible code", lib/smp_processor_id.c).
    #[inline]
    fn cpu_id_point(&self) -> CpuId {
        let id = self.cpu();
        if self.preempt_count() == 0 && !self.in_interrupt() {
            self.choice_point(Site::Environment("cpu_id"));
        }
        id
    }

    /// `preempt_enable()` of such a layer: a choice point at `site`.
    #[inline]
    fn layer_preempt_enable(&self, switched_off: bool, site: Site) {
        if !switched_off {
            self.preempt_enable();
        }
        self.choice_point(site);
    }
}

/// The lazy mode's preemption control: the `preemptible_transitions` fault
/// (Linux 7.0's ordering) switches it off.
impl Cpu for SimEnv {
    #[inline]
    fn cpu_id(&self) -> CpuId {
        self.machine.cpu_id_point()
    }

    #[inline]
    fn in_interrupt(&self) -> bool {
        self.machine.told_in_interrupt()
    }

    #[inline]
    fn preempt_disable(&self) {
        let off = self.machine.config().faults.preemptible_transitions;
        self.machine.layer_preempt_disable(off);
    }

    #[inline]
    fn preempt_enable(&self) {
        let off = self.machine.config().faults.preemptible_transitions;
        self.machine
            .layer_preempt_enable(off, Site::Environment("preempt_enable"));
    }
}

impl Environment for SimEnv {
    #[inline]
    fn lazy_state(&self) -> LazyState {
        let s = self.machine.lazy_state();
        self.machine.choice_point(Site::Environment("lazy_state"));
        s
    }

    #[inline]
    fn set_lazy_state(&self, state: LazyState) {
        self.machine.set_lazy_state(state);
        self.machine
            .choice_point(Site::Environment("set_lazy_state"));
    }

    fn might_sleep(&self) {
        let m = &self.machine;
        if m.preempt_count() > 0 || m.in_interrupt() {
            m.violation(
                Invariant::SleepInSection,
                format!(
                    "sleeping function called from invalid context (preempt count {})",
                    m.preempt_count()
                ),
            );
        }
    }
}

impl PerCpuEnvironment for SimEnv {
    #[inline]
    fn cpu_lazy_state(&self) -> LazyState {
        let s = self.machine.cpu_lazy_state();
        self.machine
            .choice_point(Site::Environment("cpu_lazy_state"));
        s
    }

    #[inline]
    fn set_cpu_lazy_state(&self, state: LazyState) {
        self.machine.set_cpu_lazy_state(state);
        self.machine
            .choice_point(Site::Environment("set_cpu_lazy_state"));
    }
}

/// The running CPU of a machine, as every machine trait of the library.
#[derive(Clone, Debug)]
pub struct SimCpu {
    machine: Rc<Machine>,
    /// The machine's memory as this CPU stores to it.
    memory: SimMemory,
}

impl SimCpu {
    /// The primitives of `machine`.
    pub fn new(machine: Rc<Machine>) -> Self {
        Self {
            memory: SimMemory::new(machine.clone()),
            machine,
        }
    }

    /// The machine.
    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    #[inline]
    fn done(&self, name: &'static str) {
        self.machine.choice_point(Site::Primitive(name));
    }

    /// Invalidates `[start, end)` of `space` on every CPU in `mask`.
    fn invalidate_on(&self, mask: CpuMask, space: SpaceId, start: u64, end: u64) {
        let m = &self.machine;
        for cpu in mask.and(m.all_cpus()).iter() {
            m.tlb_invalidate_range(cpu, space, start, end);
        }
    }

    /// Hypervisor-applied page-table updates (`mmu_update` requests):
    /// each validated (ownership) and applied, counted as one `mmu_update`
    /// and one `pte_write`.
    fn hv_updates(&self, requests: &[MmuUpdate]) {
        let m = &self.machine;
        for u in requests {
            m.check_owner(u.entry);
            m.apply_store(u.entry, u.value);
        }
        let n = requests.len() as u64;
        m.charge(Primitive::MmuUpdate, n);
        m.charge(Primitive::PteWrite, n);
    }

    /// `xen_pgd_pin` / `xen_pgd_unpin`: one `update_va_mapping` multicall
    /// entry per page-table page of `space` and the (un)pin operation, in
    /// multicalls of at most [`MC_BATCH`](lazymmu::backend::xen_pv::MC_BATCH)
    /// entries. Pinning validates each page as Xen validates an update
    /// (charged as one per page); unpinning only drops the page types
    /// and validates nothing.
    fn repin(&self, space: SpaceId, pinned: bool) {
        let m = &self.machine;
        let pages = m.table_frames(space);
        let entries = pages + 1;
        let batch = lazymmu::backend::xen_pv::MC_BATCH as u64;
        m.charge(Primitive::Hypercall, entries.div_ceil(batch));
        m.charge(Primitive::MulticallEntry, entries);
        if pinned {
            m.charge(Primitive::MmuUpdate, pages);
        }
        m.set_pinned(space, pinned);
    }

    fn mmuext(&self, op: MmuExtOp) {
        let m = &self.machine;
        let me = CpuMask::single(m.cpu());
        match op {
            MmuExtOp::InvlpgLocal { space, va } => {
                m.charge(Primitive::Invlpg, 1);
                self.invalidate_on(me, space, va.0, va.0 + 1);
            }
            MmuExtOp::InvlpgMulti { space, va, cpus } => {
                let mask = cpus.cpus().and(m.all_cpus());
                m.charge(Primitive::Invlpg, u64::from(mask.count()));
                m.ipi(mask);
                self.invalidate_on(mask, space, va.0, va.0 + 1);
            }
            MmuExtOp::TlbFlushLocal { space } => {
                m.charge(Primitive::FullFlush, 1);
                m.tlb_invalidate_space(m.cpu(), space);
            }
            MmuExtOp::TlbFlushMulti { space, cpus } => {
                let mask = cpus.cpus().and(m.all_cpus());
                m.charge(Primitive::FullFlush, u64::from(mask.count()));
                m.ipi(mask);
                for cpu in mask.iter() {
                    m.tlb_invalidate_space(cpu, space);
                }
            }
        }
    }
}

/// The primitives' preemption control: the `preemptible_windows` fault (a
/// protection-key window that can be preempted) switches it off.
impl Cpu for SimCpu {
    #[inline]
    fn cpu_id(&self) -> CpuId {
        self.machine.cpu_id_point()
    }

    #[inline]
    fn in_interrupt(&self) -> bool {
        self.machine.told_in_interrupt()
    }

    #[inline]
    fn preempt_disable(&self) {
        let off = self.machine.config().faults.preemptible_windows;
        self.machine.layer_preempt_disable(off);
    }

    #[inline]
    fn preempt_enable(&self) {
        let off = self.machine.config().faults.preemptible_windows;
        self.machine
            .layer_preempt_enable(off, Site::Primitive("preempt_enable"));
    }
}

impl CpuPrimitives for SimCpu {
    type Memory = SimMemory;

    fn memory(&self) -> &SimMemory {
        &self.memory
    }

    #[inline]
    fn read_pte(&self, entry: PhysAddr) -> u64 {
        let v = self.machine.read_entry(entry);
        self.done("read_pte");
        v
    }

    fn report(&self, bug: BackendBug) {
        let invariant = match bug {
            BackendBug::DoubleEnter | BackendBug::LeaveOutside => Invariant::EnterLeave,
            BackendBug::SwitchInSection => Invariant::SleepInSection,
            BackendBug::KeyFrameMismatch => Invariant::KeyRestore,
        };
        self.machine.violation(
            invariant,
            format!("the backend on {} reported {bug}", self.machine.cpu()),
        );
    }

    fn mm_cpumask(&self, space: SpaceId) -> CpuMask {
        self.machine.mm_cpumask(space)
    }

    fn deferred_begin(&self) {
        self.machine.deferred_begin();
    }

    fn deferred_end(&self) {
        self.machine.deferred_end();
    }
}

impl XenPrimitives for SimCpu {
    fn mmu_update(&self, requests: &[MmuUpdate]) {
        self.machine.charge(Primitive::Hypercall, 1);
        self.hv_updates(requests);
        self.done("mmu_update");
    }

    fn mmuext_op(&self, op: MmuExtOp) {
        self.machine.charge(Primitive::Hypercall, 1);
        self.mmuext(op);
        self.done("mmuext_op");
    }

    fn multicall(&self, entries: &[MulticallEntry], requests: &[MmuUpdate]) {
        let m = &self.machine;
        m.charge(Primitive::Hypercall, 1);
        m.charge(Primitive::MulticallEntry, entries.len() as u64);
        for e in entries {
            match *e {
                MulticallEntry::MmuUpdate { .. } => self.hv_updates(e.requests(requests)),
                MulticallEntry::MmuExt(op) => self.mmuext(op),
            }
        }
        self.done("multicall");
    }

    /// On a pinned table the write faults into the hypervisor, which
    /// decodes and emulates it and validates the new entry like an
    /// `mmu_update` (Xen's writable page tables, `ptwr_emulated_update`);
    /// on an unpinned one it is a plain store.
    fn native_update(&self, entry: PhysAddr, value: u64) -> u64 {
        let m = &self.machine;
        let old = m.read_entry(entry);
        if m.pinned(entry) {
            m.charge(Primitive::EmulatedWrite, 1);
            self.hv_updates(&[MmuUpdate { entry, value }]);
        } else {
            m.store_entry(entry, value);
        }
        self.done("native_update");
        old
    }

    fn table_pinned(&self, entry: PhysAddr) -> bool {
        self.machine.pinned(entry)
    }

    fn pin_tables(&self, space: SpaceId) {
        self.repin(space, true);
        self.done("pin_tables");
    }

    fn unpin_tables(&self, space: SpaceId) {
        self.repin(space, false);
        self.done("unpin_tables");
    }
}

impl Arm64Primitives for SimCpu {
    fn write_pte(&self, entry: PhysAddr, value: u64) {
        self.machine.store_entry(entry, value);
        self.done("write_pte");
    }

    fn dsb(&self, _kind: Dsb) {
        self.machine.dsb();
        self.done("dsb");
    }

    fn isb(&self) {
        self.machine.isb();
        self.done("isb");
    }

    fn tlbi_va(&self, space: SpaceId, va: VirtAddr, _last_level: bool) {
        self.machine.charge(Primitive::Tlbi, 1);
        self.invalidate_on(self.machine.all_cpus(), space, va.0, va.0 + 1);
        self.done("tlbi_va");
    }

    fn tlb_range(&self) -> bool {
        self.machine.config().hardware.tlb_range
    }

    /// One instruction for the whole range (FEAT_TLBIRANGE).
    fn tlbi_range(&self, space: SpaceId, va: VirtAddr, scale: u8, num: u8, _last_level: bool) {
        let pages = lazymmu::backend::arm64::tlbi_range_pages(num, scale);
        self.machine.charge(Primitive::Tlbi, 1);
        self.invalidate_on(self.machine.all_cpus(), space, va.0, va.0 + pages * 4096);
        self.done("tlbi_range");
    }

    fn tlbi_asid(&self, space: SpaceId) {
        let m = &self.machine;
        m.charge(Primitive::FullFlush, 1);
        for cpu in m.all_cpus().iter() {
            if space == SpaceId::KERNEL {
                m.tlb_invalidate_all(cpu);
            } else {
                m.tlb_invalidate_space(cpu, space);
            }
        }
        self.done("tlbi_asid");
    }

    fn task_barriers_pending(&self) -> bool {
        self.machine.task_arch() & 1 != 0
    }

    fn set_task_barriers_pending(&self, pending: bool) {
        let a = self.machine.task_arch();
        self.machine.set_task_arch((a & !1) | pending as u64);
    }
}

impl PpcHashPrimitives for SimCpu {
    fn write_pte(&self, entry: PhysAddr, value: u64) {
        self.machine.store_entry(entry, value);
        self.done("write_pte");
    }

    fn flush_hash_page(&self, space: SpaceId, va: VirtAddr, size: PageSize) {
        self.machine.charge(Primitive::HashInvalidate, 1);
        // Every tlbie sequence ends with `ptesync; tlbsync; ptesync` (Power
        // ISA v3.0B Book III §5.10.1): one synchronisation per call,
        // counted as `dsb`, which is what batching saves.
        self.machine.charge(Primitive::Dsb, 1);
        self.invalidate_on(self.machine.all_cpus(), space, va.0, va.0 + size.bytes());
        self.done("flush_hash_page");
    }

    fn flush_hash_range(&self, space: SpaceId, size: PageSize, pages: &[VirtAddr]) {
        self.machine
            .charge(Primitive::HashInvalidate, pages.len() as u64);
        self.machine.charge(Primitive::Dsb, 1);
        for va in pages {
            self.invalidate_on(self.machine.all_cpus(), space, va.0, va.0 + size.bytes());
        }
        self.done("flush_hash_range");
    }
}

impl SimCpu {
    /// The CPUs a sparc64 user flush reaches besides this one
    /// (`smp_flush_tlb_pending`, `smp_flush_tlb_page`,
    /// arch/sparc/kernel/smp_64.c): none when the space has one user and
    /// it is running here — `mm_cpumask` is then cut to this CPU — and the
    /// space's `mm_cpumask` otherwise.
    fn sparc_remote(&self, space: SpaceId) -> CpuMask {
        let m = &self.machine;
        let me = m.cpu();
        if m.current_space() == space && m.space(space).users() == 1 {
            m.space(space).trim_cpumask_to(me);
            CpuMask::EMPTY
        } else {
            m.mm_cpumask(space).without(me)
        }
    }
}

impl Sparc64Primitives for SimCpu {
    fn write_pte(&self, entry: PhysAddr, value: u64) {
        self.machine.store_entry(entry, value);
        self.done("write_pte");
    }

    fn flush_page(&self, space: SpaceId, va: VirtAddr, size: PageSize) {
        self.flush_batch(space, size, &[va]);
    }

    fn flush_batch(&self, space: SpaceId, size: PageSize, pages: &[VirtAddr]) {
        let m = &self.machine;
        let remote = self.sparc_remote(space);
        let mask = remote.with(m.cpu());
        m.charge(
            Primitive::Tlbi,
            pages.len() as u64 * u64::from(mask.count()),
        );
        m.ipi(remote);
        for va in pages {
            self.invalidate_on(mask, space, va.0, va.0 + size.bytes());
        }
        self.done("flush_batch");
    }

    fn flush_kernel_range(&self, start: VirtAddr, end: VirtAddr) {
        let m = &self.machine;
        let mask = m.all_cpus();
        let pages = end.0.saturating_sub(start.0).div_ceil(4096);
        m.charge(Primitive::Tlbi, pages * u64::from(mask.count()));
        m.ipi(mask);
        self.invalidate_on(mask, SpaceId::KERNEL, start.0, end.0);
        self.done("flush_kernel_range");
    }

    fn flush_kernel_all(&self) {
        let m = &self.machine;
        let mask = m.all_cpus();
        m.charge(Primitive::FullFlush, u64::from(mask.count()));
        m.ipi(mask);
        for cpu in mask.iter() {
            m.tlb_invalidate_all(cpu);
        }
        self.done("flush_kernel_all");
    }
}

impl S390Primitives for SimCpu {
    fn write_pte(&self, entry: PhysAddr, value: u64) {
        self.machine.store_entry(entry, value);
        self.done("write_pte");
    }

    /// Sets the entry's invalid bit: `_PAGE_INVALID` for a PTE (IPTE),
    /// `_SEGMENT_ENTRY_INVALID`/`_REGION_ENTRY_INVALID` for a table entry
    /// (IDTE, which this stands for); each bit means nothing, or only a
    /// software permission of a dead entry, at the other kind.
    fn ipte(&self, entry: PhysAddr, space: SpaceId, va: VirtAddr) {
        let m = &self.machine;
        m.charge(Primitive::Ipte, 1);
        let old = m.read_entry(entry);
        m.apply_store(entry, old | s390::INVALID | s390::TABLE_INVALID);
        self.invalidate_on(m.all_cpus(), space, va.0, va.0 + 1);
        self.done("ipte");
    }

    fn ipte_range(&self, first: PhysAddr, count: usize, space: SpaceId, va: VirtAddr, local: bool) {
        let m = &self.machine;
        m.charge(
            if local {
                Primitive::IpteLocal
            } else {
                Primitive::Ipte
            },
            1,
        );
        for i in 0..count as u64 {
            let entry = first.add(i * 8);
            let old = m.read_entry(entry);
            m.apply_store(entry, old | s390::INVALID);
        }
        let cpus = if local {
            CpuMask::single(m.cpu())
        } else {
            m.all_cpus()
        };
        self.invalidate_on(cpus, space, va.0, va.0 + count as u64 * 4096);
        self.done("ipte_range");
    }

    fn flush_space(&self, space: SpaceId) {
        let m = &self.machine;
        m.charge(Primitive::FullFlush, 1);
        for cpu in m.all_cpus().iter() {
            if space == SpaceId::KERNEL {
                m.tlb_invalidate_all(cpu);
            } else {
                m.tlb_invalidate_space(cpu, space);
            }
        }
        self.done("flush_space");
    }

    fn set_flush_mm(&self, space: SpaceId) {
        self.machine.set_flush_mm(space);
    }

    fn take_flush_mm(&self, space: SpaceId) -> bool {
        self.machine.take_flush_mm(space)
    }
}

impl KeyRegister for SimCpu {
    #[inline]
    fn read_key(&self) -> u64 {
        self.machine.key()
    }

    fn write_key(&self, value: u64) {
        self.machine.key_write(value);
        if self.machine.config().hardware.keys == KeyModel::Poe {
            // MSR POR_EL1 takes effect after a context synchronisation
            // event (Arm ARM DDI 0487 K.a, D8.4): the isb is part of the
            // register write.
            self.machine.isb();
        }
        self.done("write_key");
    }
}

impl KeySlots for SimCpu {
    fn task_key(&self, slot: KeySlot) -> Option<u64> {
        self.machine.task_key(slot_index(slot))
    }

    fn set_task_key(&self, slot: KeySlot, value: u64) {
        self.machine.set_task_key(slot_index(slot), value);
    }
}

fn slot_index(slot: KeySlot) -> usize {
    match slot {
        KeySlot::Live => 0,
        KeySlot::Section => 1,
    }
}

impl X86Primitives for SimCpu {
    fn invlpg(&self, va: VirtAddr) {
        let m = self.machine();
        m.charge(Primitive::Invlpg, 1);
        let cpu = m.cpu();
        m.tlb_invalidate_range(cpu, m.loaded_space(cpu), va.0, va.0 + 1);
        self.done("invlpg");
    }

    fn reload_cr3(&self) {
        let m = self.machine();
        m.charge(Primitive::FullFlush, 1);
        let cpu = m.cpu();
        m.tlb_invalidate_space(cpu, m.loaded_space(cpu));
        self.done("reload_cr3");
    }

    fn flush_global(&self) {
        let m = self.machine();
        m.charge(Primitive::FullFlush, 1);
        m.tlb_invalidate_all(m.cpu());
        self.done("flush_global");
    }

    fn loaded_space(&self) -> SpaceId {
        let m = self.machine();
        m.loaded_space(m.cpu())
    }

    /// Every CPU for the kernel's space (`flush_tlb_kernel_range`); for a
    /// user space the library's [`flush_targets`] rule, leaving lazy CPUs
    /// out unless page tables are freed.
    fn flush_targets(&self, space: SpaceId, freed_tables: bool) -> CpuMask {
        if space == SpaceId::KERNEL {
            return self.machine.mm_cpumask(space);
        }
        flush_targets(self, space, !freed_tables).cpus
    }

    /// The targets are interrupted together (`native_flush_tlb_multi` →
    /// `on_each_cpu_cond_mask`): one round trip, and each target's flush.
    fn shootdown(&self, cpus: CpuMask, request: RemoteFlush) {
        let m = self.machine();
        let targets = cpus.and(m.all_cpus()).without(m.cpu());
        m.ipi(targets);
        for cpu in targets.iter() {
            if m.config().faults.lose_ipis {
                continue;
            }
            match request {
                RemoteFlush::Range {
                    space,
                    start,
                    end,
                    stride,
                } => {
                    let pages = end.0.saturating_sub(start.0).div_ceil(stride.bytes());
                    m.charge(Primitive::Invlpg, pages);
                    m.tlb_invalidate_range(cpu, space, start.0, end.0);
                }
                RemoteFlush::All { space } => {
                    m.charge(Primitive::FullFlush, 1);
                    if space == SpaceId::KERNEL {
                        m.tlb_invalidate_all(cpu);
                    } else {
                        m.tlb_invalidate_space(cpu, space);
                    }
                }
            }
        }
        self.done("shootdown");
    }
}

impl MmMachine for SimCpu {
    fn space(&self, id: SpaceId) -> &AddressSpace {
        self.machine.space(id)
    }

    fn cpu_state(&self, cpu: CpuId) -> &CpuTlbState {
        self.machine.cpu_tlb_state(cpu)
    }

    fn current_task(&self) -> &TaskMm {
        self.machine.task_mm(self.machine.current_task())
    }

    fn load_root(&self, space: SpaceId) {
        self.machine.load_root(space);
    }

    fn flush_local(&self, space: SpaceId, range: FlushRange) {
        let m = &self.machine;
        let cpu = m.cpu();
        match range {
            FlushRange::All => {
                m.charge(Primitive::FullFlush, 1);
                if space == SpaceId::KERNEL {
                    m.tlb_invalidate_all(cpu);
                } else {
                    m.tlb_invalidate_space(cpu, space);
                }
            }
            FlushRange::Range { start, end, stride } => {
                let pages = end.0.saturating_sub(start.0).div_ceil(stride.bytes());
                m.charge(Primitive::Invlpg, pages);
                m.tlb_invalidate_range(cpu, space, start.0, end.0);
            }
        }
    }

    /// The sender interrupts the targets together and waits for them all
    /// (`smp_call_function_many_cond`): one round trip.
    fn on_each_cpu(&self, targets: CpuMask, func: &dyn Fn(CpuId)) {
        let m = &self.machine;
        let here = m.cpu();
        m.ipi(targets);
        for cpu in targets.and(m.all_cpus()).iter() {
            if cpu != here && m.config().faults.lose_ipis {
                continue;
            }
            m.set_cpu(cpu);
            func(cpu);
            m.set_cpu(here);
        }
    }

    fn unlink_tables(&self, space: SpaceId, range: FlushRange) -> usize {
        self.machine.unlink_tables(space, range)
    }

    fn free_unlinked_tables(&self, space: SpaceId) {
        self.machine.free_unlinked_tables(space);
    }

    fn free_space(&self, space: SpaceId) {
        let m = &self.machine;
        if let Err(uaf) = check_space_free(self, space) {
            m.violation(Invariant::FreedInUse, uaf.to_string());
        }
        m.free_space_root(space);
    }

    fn line_access(&self, line: SharedLine, access: LineAccess) {
        self.machine.line_access(line, access);
    }
}

impl HardwareView for SimCpu {
    fn cpu_count(&self) -> usize {
        self.machine.cpu_count()
    }
    fn root(&self, cpu: CpuId) -> SpaceId {
        self.machine.loaded_space(cpu)
    }
    fn invalidations(&self, cpu: CpuId, space: SpaceId) -> u64 {
        self.machine.invalidations(cpu, space)
    }
}

impl PkeyMachine for SimCpu {
    fn task_keys(&self) -> &TaskKeyState {
        self.machine.task_key_state(self.machine.current_task())
    }
    fn cpu_keys(&self) -> &CpuKeyState {
        self.machine.cpu_key_state(self.machine.cpu())
    }
}

/// Page-table memory as a CPU of the machine sees it. Stores are plain CPU
/// stores (`pte_write`), subject to the hardware's rules (read-only tables,
/// key register, arm64 visibility).
#[derive(Clone, Debug)]
pub struct SimMemory {
    machine: Rc<Machine>,
}

impl SimMemory {
    /// The memory of `machine`.
    pub fn new(machine: Rc<Machine>) -> Self {
        Self { machine }
    }
}

// SAFETY: every access goes to the machine's `PhysMemory`, which checks the
// address and panics on one outside it; nothing is dereferenced.
unsafe impl PageTableMemory for SimMemory {
    #[inline]
    fn read(&self, entry: PhysAddr) -> u64 {
        self.machine.read_entry(entry)
    }

    #[inline]
    fn write(&self, entry: PhysAddr, value: u64) {
        self.machine.store_entry(entry, value);
        self.machine.choice_point(Site::Primitive("pte_write"));
    }

    #[inline]
    fn swap(&self, entry: PhysAddr, value: u64) -> u64 {
        let old = self.machine.read_entry(entry);
        self.machine.store_entry(entry, value);
        self.machine.choice_point(Site::Primitive("pte_xchg"));
        old
    }

    fn zero_frame(&self, frame: PhysAddr) {
        // A new frame is zeroed before it is linked: no walker can see it,
        // so this is neither a page-table write nor a choice point.
        self.machine.memory().zero_frame(frame);
    }
}

/// Frames for page tables, owned by one address space and carrying the
/// machine's page-table key.
#[derive(Clone, Debug)]
pub struct SimFrames {
    machine: Rc<Machine>,
    owner: SpaceId,
}

impl SimFrames {
    /// An allocator whose frames belong to `owner`.
    pub fn new(machine: Rc<Machine>, owner: SpaceId) -> Self {
        Self { machine, owner }
    }
}

impl FrameAllocator for SimFrames {
    fn allocate(&self) -> Option<PhysAddr> {
        let key = self.machine.config().hardware.table_key;
        let frame = self.machine.memory().allocate(self.owner, key)?;
        if let Some(kernel) = self.machine.kernel() {
            kernel.page_table_page(frame, true);
        }
        Some(frame)
    }

    fn free(&self, frame: PhysAddr) {
        if let Some(kernel) = self.machine.kernel() {
            kernel.page_table_page(frame, false);
        }
        self.machine.check_table_free(frame);
        if !self.machine.memory().free(frame) {
            self.machine.violation(
                Invariant::OperationFailed,
                format!("free of {:#x}, which is not an allocated frame", frame.0),
            );
        }
    }
}

struct WalkerView<'a>(&'a dyn Fn(PhysAddr) -> u64);

// SAFETY: a read-only view through a closure; the writes do nothing and
// nothing is dereferenced.
unsafe impl PageTableMemory for WalkerView<'_> {
    fn read(&self, entry: PhysAddr) -> u64 {
        (self.0)(entry)
    }
    // The walker only reads; these keep the view a complete memory for the
    // library's walker signature and are never called by it.
    fn write(&self, _entry: PhysAddr, _value: u64) {}
    fn swap(&self, entry: PhysAddr, _value: u64) -> u64 {
        (self.0)(entry)
    }
    fn zero_frame(&self, _frame: PhysAddr) {}
}

/// The hardware walker of format `F`: the library's own translation walk
/// over memory as the walker sees it.
pub fn walk<F: Format>(read: &dyn Fn(PhysAddr) -> u64, root: PhysAddr, va: u64) -> Option<Leaf> {
    let t = translate::<F, _>(&WalkerView(read), root, VirtAddr(va)).ok()?;
    Some(Leaf {
        entry: t.raw,
        at: t.entry,
        shift: t.size.shift(),
        global: t.attrs.global,
    })
}

/// Finds the page-table frames of a tree of format `F` below `root` that
/// an unmap of `range` detaches (`free_pgtables()`): the PTE table covering
/// a single range's start, or every table below the root for the whole
/// space. Returns the entries linking them and the frames.
pub fn tables_under<F: Format>(
    memory: &crate::memory::PhysMemory,
    root: PhysAddr,
    range: FlushRange,
) -> Vec<(PhysAddr, PhysAddr)> {
    let mut out = Vec::new();
    match range {
        FlushRange::All => {
            fn visit<F: Format>(
                memory: &crate::memory::PhysMemory,
                table: PhysAddr,
                level: u8,
                out: &mut Vec<(PhysAddr, PhysAddr)>,
            ) {
                if level == 1 {
                    return;
                }
                // The kernel half of a top-level table is the kernel's.
                let all = lazymmu::pgtable::format::entries::<F>(level);
                let entries = if level == F::LEVELS && F::SHARED_ROOT {
                    all / 2
                } else {
                    all
                };
                for i in 0..entries as u64 {
                    let entry = table.add(8 * i);
                    if let Entry::Table(next) = F::decode(memory.read(entry), level) {
                        visit::<F>(memory, next, level - 1, out);
                        out.push((entry, next));
                    }
                }
            }
            visit::<F>(memory, root, F::LEVELS, &mut out);
        }
        FlushRange::Range { start, .. } => {
            let mut table = root;
            let mut level = F::LEVELS;
            while level > 1 {
                let index = lazymmu::pgtable::format::index::<F>(start.0, level);
                let entry = table.add(8 * index as u64);
                match F::decode(memory.read(entry), level) {
                    Entry::Table(next) if level == 2 => {
                        out.push((entry, next));
                        break;
                    }
                    Entry::Table(next) => table = next,
                    _ => break,
                }
                level -= 1;
            }
        }
    }
    out
}

impl Machine {
    /// `free_pgtables()` for lazy TLB: detaches the page-table pages of
    /// `space` under `range` (with the tree's format, as installed by
    /// [`Machine::set_table_finder`]), keeping them allocated until
    /// [`Machine::free_unlinked_tables`]; returns how many.
    pub fn unlink_tables(&self, space: SpaceId, range: FlushRange) -> usize {
        let Some(find) = self.table_finder.get() else {
            return 0;
        };
        let root = self.space_root(space);
        if root.0 == 0 {
            return 0;
        }
        let found = find(self.memory(), root, range);
        for &(entry, _) in &found {
            self.apply_store(entry, 0);
        }
        let snapshot: Vec<u64> = (0..self.cpu_count())
            .map(|cpu| self.invalidations(CpuId::new(cpu), space))
            .collect();
        let mut unlinked = self.unlinked.borrow_mut();
        let slot = unlinked.entry(space).or_default();
        slot.frames.extend(found.iter().map(|&(_, frame)| frame));
        slot.invalidations = snapshot;
        found.len()
    }

    /// Frees the page-table pages [`Machine::unlink_tables`] detached for
    /// `space`, checking first that no CPU may still walk them (§6.7): by
    /// what the TLBs hold and by the invalidations each CPU made since.
    pub fn free_unlinked_tables(&self, space: SpaceId) {
        let Some(unlinked) = self.unlinked.borrow_mut().remove(&space) else {
            return;
        };
        let hw = SimCpuView(self);
        if let Err(uaf) = check_tables_free(&hw, space, &unlinked.invalidations) {
            self.violation(Invariant::FreedInUse, uaf.to_string());
        }
        for frame in unlinked.frames {
            self.check_table_free(frame);
            self.memory().free(frame);
        }
    }

    /// Frees the root of `space` (`__mmdrop()` → `free_mm()`).
    pub fn free_space_root(&self, space: SpaceId) {
        let root = self.space_root(space);
        if root.0 != 0 {
            self.check_table_free(root);
            self.memory().free(root);
        }
    }
}

/// The machine as [`HardwareView`] without a handle.
struct SimCpuView<'a>(&'a Machine);

impl HardwareView for SimCpuView<'_> {
    fn cpu_count(&self) -> usize {
        self.0.cpu_count()
    }
    fn root(&self, cpu: CpuId) -> SpaceId {
        self.0.loaded_space(cpu)
    }
    fn invalidations(&self, cpu: CpuId, space: SpaceId) -> u64 {
        self.0.invalidations(cpu, space)
    }
}
