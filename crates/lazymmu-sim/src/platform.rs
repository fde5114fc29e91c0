//! The machine primitives of every backend, implemented over the machine.
//!
//! [`SimCpu`] is the "hardware" a backend runs on: whichever CPU the
//! machine is running. Each primitive does its effect on memory and TLBs,
//! is counted as the backend's documentation says (see
//! [`lazymmu::backend::machine::Primitive`]), and is a choice point.

use std::rc::Rc;

use lazymmu::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use lazymmu::backend::arm64::{Arm64Primitives, Dsb};
use lazymmu::backend::machine::{BackendBug, CpuPrimitives};
use lazymmu::backend::ppc_hash::PpcHashPrimitives;
use lazymmu::backend::protected::{KeyRegister, KeySlot};
use lazymmu::backend::s390::S390Primitives;
use lazymmu::backend::sparc64::Sparc64Primitives;
use lazymmu::backend::xen_pv::{MmuExtOp, MmuUpdate, MulticallEntry, XenPrimitives};

use crate::choice::Site;
use crate::cost::Primitive;
use crate::invariant::Invariant;
use crate::machine::{KeyModel, Machine};

/// The running CPU of a machine, as a backend's primitives.
#[derive(Clone, Debug)]
pub struct SimCpu {
    machine: Rc<Machine>,
}

impl SimCpu {
    /// The primitives of `machine`.
    pub fn new(machine: Rc<Machine>) -> Self {
        Self { machine }
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
    fn invalidate_on(&self, mask: u64, space: SpaceId, start: u64, end: u64) {
        let m = &self.machine;
        for cpu in 0..m.cpu_count() {
            if mask & (1 << cpu) != 0 {
                m.tlb_invalidate_range(cpu, space, start, end);
            }
        }
    }

    fn all_cpus(&self) -> u64 {
        let n = self.machine.cpu_count();
        if n >= 64 {
            u64::MAX
        } else {
            (1u64 << n) - 1
        }
    }

    /// IPIs to the remote CPUs of `mask`.
    fn ipis(&self, mask: u64) -> u64 {
        let me = 1u64 << self.machine.cpu();
        let remote = (mask & !me).count_ones() as u64;
        if remote > 0 {
            self.machine.primitive(Primitive::Ipi, remote);
        }
        remote
    }

    /// A hypervisor-applied page-table update (`mmu_update`): validated
    /// (ownership), applied, counted as one `pte_write`.
    fn hv_update(&self, u: MmuUpdate) {
        let m = &self.machine;
        m.check_owner(u.entry);
        m.apply_store(u.entry, u.value);
        m.primitive(Primitive::PteWrite, 1);
    }

    fn mmuext(&self, op: MmuExtOp) {
        let m = &self.machine;
        let me = 1u64 << m.cpu();
        let mask_of = |cpus: u64| cpus & self.all_cpus();
        match op {
            MmuExtOp::InvlpgLocal { space, va } => {
                m.primitive(Primitive::Invlpg, 1);
                self.invalidate_on(me, space, va.0, va.0 + 1);
            }
            MmuExtOp::InvlpgMulti { space, va, cpus } => {
                let mask = mask_of(cpus);
                m.primitive(Primitive::Invlpg, mask.count_ones() as u64);
                self.ipis(mask);
                self.invalidate_on(mask, space, va.0, va.0 + 1);
            }
            MmuExtOp::TlbFlushLocal { space } => {
                m.primitive(Primitive::FullFlush, 1);
                m.tlb_invalidate_space(m.cpu(), space);
            }
            MmuExtOp::TlbFlushMulti { space, cpus } => {
                let mask = mask_of(cpus);
                m.primitive(Primitive::FullFlush, mask.count_ones() as u64);
                self.ipis(mask);
                for cpu in 0..m.cpu_count() {
                    if mask & (1 << cpu) != 0 {
                        m.tlb_invalidate_space(cpu, space);
                    }
                }
            }
        }
    }
}

impl CpuPrimitives for SimCpu {
    #[inline]
    fn cpu_id(&self) -> usize {
        self.machine.cpu()
    }

    #[inline]
    fn in_interrupt(&self) -> bool {
        self.machine.in_interrupt()
    }

    #[inline]
    fn preempt_disable(&self) {
        self.machine.preempt_disable();
    }

    #[inline]
    fn preempt_enable(&self) {
        self.machine.preempt_enable();
        self.done("preempt_enable");
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
        self.machine
            .violation(invariant, format!("backend reported {bug}"));
    }
}

impl XenPrimitives for SimCpu {
    fn mmu_update(&self, update: MmuUpdate) {
        self.machine.primitive(Primitive::Hypercall, 1);
        self.hv_update(update);
        self.done("mmu_update");
    }

    fn mmuext_op(&self, op: MmuExtOp) {
        self.machine.primitive(Primitive::Hypercall, 1);
        self.mmuext(op);
        self.done("mmuext_op");
    }

    fn multicall(&self, entries: &[MulticallEntry]) {
        let m = &self.machine;
        m.primitive(Primitive::Hypercall, 1);
        m.primitive(Primitive::MulticallEntry, entries.len() as u64);
        for e in entries {
            match *e {
                MulticallEntry::MmuUpdate(u) => self.hv_update(u),
                MulticallEntry::MmuExt(op) => self.mmuext(op),
            }
        }
        self.done("multicall");
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
        self.machine.primitive(Primitive::Tlbi, 1);
        self.invalidate_on(self.all_cpus(), space, va.0, va.0 + 1);
        self.done("tlbi_va");
    }

    fn tlbi_asid(&self, space: SpaceId) {
        let m = &self.machine;
        m.primitive(Primitive::FullFlush, 1);
        for cpu in 0..m.cpu_count() {
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
        self.machine.primitive(Primitive::HashInvalidate, 1);
        // Every tlbie sequence ends with `ptesync; tlbsync; ptesync` (Power
        // ISA v3.0B Book III §5.10.1): one synchronisation per call,
        // counted as `dsb`, which is what batching saves.
        self.machine.primitive(Primitive::Dsb, 1);
        self.invalidate_on(self.all_cpus(), space, va.0, va.0 + size.bytes());
        self.done("flush_hash_page");
    }

    fn flush_hash_range(&self, space: SpaceId, size: PageSize, pages: &[VirtAddr]) {
        self.machine
            .primitive(Primitive::HashInvalidate, pages.len() as u64);
        self.machine.primitive(Primitive::Dsb, 1);
        for va in pages {
            self.invalidate_on(self.all_cpus(), space, va.0, va.0 + size.bytes());
        }
        self.done("flush_hash_range");
    }
}

impl Sparc64Primitives for SimCpu {
    fn write_pte(&self, entry: PhysAddr, value: u64) {
        self.machine.store_entry(entry, value);
        self.done("write_pte");
    }

    fn flush_page(&self, space: SpaceId, va: VirtAddr, size: PageSize) {
        let mask = self.machine.cpus_using(space);
        self.machine
            .primitive(Primitive::Tlbi, mask.count_ones() as u64);
        self.ipis(mask);
        self.invalidate_on(mask, space, va.0, va.0 + size.bytes());
        self.done("flush_page");
    }

    fn flush_batch(&self, space: SpaceId, size: PageSize, pages: &[VirtAddr]) {
        let mask = self.machine.cpus_using(space);
        self.machine.primitive(
            Primitive::Tlbi,
            pages.len() as u64 * mask.count_ones() as u64,
        );
        self.ipis(mask);
        for va in pages {
            self.invalidate_on(mask, space, va.0, va.0 + size.bytes());
        }
        self.done("flush_batch");
    }

    fn flush_kernel_range(&self, start: VirtAddr, end: VirtAddr) {
        let mask = self.all_cpus();
        let pages = end.0.saturating_sub(start.0).div_ceil(4096);
        // Demapping page by page stops making sense past a PTE table's
        // worth; the model then charges one whole-TLB demap per CPU
        // (sun4v HV_MMU_DEMAP_ALL), as a kernel would switch strategy.
        if pages > 512 {
            self.machine
                .primitive(Primitive::FullFlush, mask.count_ones() as u64);
        } else {
            self.machine
                .primitive(Primitive::Tlbi, pages * mask.count_ones() as u64);
        }
        self.ipis(mask);
        self.invalidate_on(mask, SpaceId::KERNEL, start.0, end.0);
        self.done("flush_kernel_range");
    }
}

impl S390Primitives for SimCpu {
    fn write_pte(&self, entry: PhysAddr, value: u64) {
        self.machine.store_entry(entry, value);
        self.done("write_pte");
    }

    fn ipte(&self, entry: PhysAddr, space: SpaceId, va: VirtAddr) {
        let m = &self.machine;
        m.primitive(Primitive::Ipte, 1);
        let old = m.read_entry(entry);
        m.apply_store(entry, old & !1);
        self.invalidate_on(self.all_cpus(), space, va.0, va.0 + 1);
        self.done("ipte");
    }

    fn ipte_range(&self, first: PhysAddr, count: usize, space: SpaceId, va: VirtAddr) {
        let m = &self.machine;
        m.primitive(Primitive::Ipte, 1);
        for i in 0..count as u64 {
            let entry = first.add(i * 8);
            let old = m.read_entry(entry);
            m.apply_store(entry, old & !1);
        }
        self.invalidate_on(self.all_cpus(), space, va.0, va.0 + count as u64 * 4096);
        self.done("ipte_range");
    }

    fn flush_space(&self, space: SpaceId) {
        let m = &self.machine;
        m.primitive(Primitive::FullFlush, 1);
        for cpu in 0..m.cpu_count() {
            m.tlb_invalidate_space(cpu, space);
        }
        self.done("flush_space");
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
