//! The machine as the library's page-table memory, frame allocator and
//! hardware walker, and the x86 primitives.

use std::rc::Rc;

use lazymmu::addr::{PhysAddr, SpaceId, VirtAddr};
use lazymmu::backend::machine::CpuPrimitives;
use lazymmu::backend::x86::{RemoteFlush, X86Primitives};
use lazymmu::pgtable::allocator::FrameAllocator;
use lazymmu::pgtable::format::Format;
use lazymmu::pgtable::memory::PageTableMemory;
use lazymmu::pgtable::walk::translate;

use crate::choice::Site;
use crate::cost::Primitive;
use crate::machine::{Leaf, Machine};
use crate::platform::SimCpu;

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

impl PageTableMemory for SimMemory {
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
        self.machine.memory().allocate(self.owner, key)
    }

    fn free(&self, frame: PhysAddr) {
        self.machine.check_table_free(frame);
        if !self.machine.memory().free(frame) {
            self.machine.violation(
                crate::invariant::Invariant::OperationFailed,
                format!("free of {:#x}, which is not an allocated frame", frame.0),
            );
        }
    }
}

struct WalkerView<'a>(&'a dyn Fn(PhysAddr) -> u64);

impl PageTableMemory for WalkerView<'_> {
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
        shift: t.size.shift(),
        global: t.attrs.global,
    })
}

impl X86Primitives for SimCpu {
    fn invlpg(&self, va: VirtAddr) {
        let m = self.machine();
        m.primitive(Primitive::Invlpg, 1);
        let space = m.current_space();
        m.tlb_invalidate_range(m.cpu(), space, va.0, va.0 + 1);
        m.choice_point(Site::Primitive("invlpg"));
    }

    fn reload_cr3(&self) {
        let m = self.machine();
        m.primitive(Primitive::FullFlush, 1);
        m.tlb_invalidate_space(m.cpu(), m.current_space());
        m.choice_point(Site::Primitive("reload_cr3"));
    }

    fn flush_global(&self) {
        let m = self.machine();
        m.primitive(Primitive::FullFlush, 1);
        m.tlb_invalidate_all(m.cpu());
        m.choice_point(Site::Primitive("flush_global"));
    }

    fn read_pkrs(&self) -> u32 {
        self.machine().key() as u32
    }

    fn write_pkrs(&self, value: u32) {
        self.machine().key_write(value as u64);
        self.machine().choice_point(Site::Primitive("wrmsr_pkrs"));
    }

    fn current_cpu(&self) -> u32 {
        self.machine().cpu() as u32
    }

    fn loaded_space(&self) -> SpaceId {
        self.machine().current_space()
    }

    fn shootdown(&self, cpus: u64, request: RemoteFlush) {
        let m = self.machine();
        let me = m.cpu();
        for cpu in 0..m.cpu_count() {
            if cpus & (1 << cpu) == 0 || cpu == me {
                continue;
            }
            m.primitive(Primitive::Ipi, 1);
            match request {
                RemoteFlush::Range {
                    space,
                    start,
                    end,
                    stride,
                } => {
                    let pages = end.0.saturating_sub(start.0).div_ceil(stride.bytes());
                    m.primitive(Primitive::Invlpg, pages);
                    m.tlb_invalidate_range(cpu, space, start.0, end.0);
                }
                RemoteFlush::All { space } => {
                    m.primitive(Primitive::FullFlush, 1);
                    if space == SpaceId::KERNEL {
                        m.tlb_invalidate_all(cpu);
                    } else {
                        m.tlb_invalidate_space(cpu, space);
                    }
                }
            }
        }
        m.choice_point(Site::Primitive("shootdown"));
    }

    /// The running CPU's preemption count, as for every other backend.
    fn preempt_disable(&self) {
        CpuPrimitives::preempt_disable(self);
    }

    /// Re-enabling is a choice point (a preemption may be pending).
    fn preempt_enable(&self) {
        CpuPrimitives::preempt_enable(self);
    }
}
