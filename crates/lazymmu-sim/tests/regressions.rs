//! Regression tests for bugs `lazymmu compare` found in the library, each
//! driven to the exact schedule that exposed it.

use std::rc::Rc;

use lazymmu::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use lazymmu::backend::x86::X86Backend;
use lazymmu::backend::{ContextSwitch, EntryUpdate, FlushScope, PteAccess, TlbFlush};
use lazymmu::mode::LazyState;
use lazymmu_sim::choice::{Choice, ChoicePoint, Chooser, Site};
use lazymmu_sim::cost::Platform;
use lazymmu_sim::hw::SimMemory;
use lazymmu_sim::machine::{Access, Kernel, Machine, MachineConfig};
use lazymmu_sim::observed::Observed;
use lazymmu_sim::platform::SimCpu;
use lazymmu_sim::run::hardware;
use lazymmu_sim::scenario::BackendKind;

/// A user leaf (x86 present | writable | user).
const LEAF: u64 = 0b111;

/// The page the tests map and unmap.
const VA: u64 = 0x40_0000;

type X86 = Observed<X86Backend<SimMemory, SimCpu>>;

/// The context-switch side of the kernel: the backend's hooks, no
/// interrupts, no other work.
struct Switches(Rc<X86>);

impl Kernel for Switches {
    fn switch_out(&self, prev: LazyState) {
        self.0.switch_out(prev)
    }
    fn switch_in(&self, next: LazyState) {
        self.0.switch_in(next)
    }
    fn interrupt(&self) {}
    fn run_unit(&self, _task: usize) -> bool {
        false
    }
}

/// Migrates the task to another CPU at the first point where that is
/// possible once the shootdown has been sent.
#[derive(Default)]
struct MigrateAfterShootdown {
    armed: bool,
    done: bool,
}

impl Chooser for MigrateAfterShootdown {
    fn choose(&mut self, point: &ChoicePoint, options: &[Choice]) -> usize {
        if point.site == Site::Primitive("shootdown") {
            self.armed = true;
        }
        if self.armed && !self.done {
            if let Some(i) = options
                .iter()
                .position(|c| matches!(c, Choice::Migrate { .. }))
            {
                self.done = true;
                return i;
            }
        }
        0
    }
}

/// Two CPUs; task 0 (space 1) on CPU 0 with one page mapped at `VA`
/// through a 4-level x86 walk; the PTE's address.
fn machine() -> (Rc<Machine>, Rc<X86>, PhysAddr) {
    let hw = hardware(BackendKind::X86);
    let mut cfg = MachineConfig::new(2, Platform::X86);
    cfg.hardware = hw;
    cfg.frames = 64;
    let m = Rc::new(Machine::new(cfg));
    let mem = m.memory();
    let frames: Vec<PhysAddr> = (0..4)
        .map(|_| mem.allocate(SpaceId(1), hw.table_key).unwrap())
        .collect();
    for (level, pair) in frames.windows(2).enumerate() {
        let shift = 39 - 9 * level as u32;
        let index = (VA >> shift) & 511;
        mem.write(pair[0].add(index * 8), pair[1].0 | LEAF);
    }
    let pte = frames[3].add(((VA >> 12) & 511) * 8);
    mem.write(pte, 0x8000_0000 | LEAF);
    let kernel_root = mem.allocate(SpaceId::KERNEL, hw.table_key).unwrap();
    m.set_walker(
        lazymmu_sim::hw::walk::<lazymmu::pgtable::format::X86_64>,
        kernel_root,
        |va| va >> 63 != 0,
    );
    m.add_task(SpaceId(1), frames[0], 0);
    let x86 = Rc::new(Observed::new(
        X86Backend::new(SimMemory::new(m.clone()), SimCpu::new(m.clone())),
        m.clone(),
    ));
    m.set_kernel(Rc::new(Switches(x86.clone())));
    (m, x86, pte)
}

/// x86 TLB flush dispatch: the shootdown went to the other CPUs and the
/// local flush ran wherever the task was afterwards. A migration in between
/// left the CPU the task came from with the stale translation (seen as
/// `stale-translation` by `lazymmu compare --seed 5 --backend x86-pks
/// --workload debug-pagealloc`). Preemption now stays off from choosing the
/// CPUs until both flushes are done, as in Linux's `flush_tlb_mm_range`.
#[test]
fn x86_flush_cannot_migrate_between_shootdown_and_local_flush() {
    let (m, x86, pte) = machine();
    assert!(
        matches!(m.access(VirtAddr(VA)), Access::Hit(_)),
        "CPU 0 caches VA"
    );
    m.set_chooser(Box::<MigrateAfterShootdown>::default());
    x86.write_entry(EntryUpdate {
        entry: pte,
        va: VirtAddr(VA),
        space: SpaceId(1),
        level: 1,
        value: 0,
        kernel: false,
        valid: false,
        leaf: true,
    });
    x86.flush_range(
        SpaceId(1),
        VirtAddr(VA),
        VirtAddr(VA + 4096),
        PageSize::Size4K,
        FlushScope::Cpus(0b11),
    );
    assert_eq!(m.preemptions(), 1, "the task migrated during the flush");
    assert_eq!(m.cpu(), 1, "and now runs on CPU 1");
    assert_eq!(
        m.violation_count(),
        0,
        "{:?}",
        m.violations().first().map(|v| v.to_string())
    );
    for cpu in 0..2 {
        assert!(
            m.tlb_entries(cpu).iter().all(|e| e.base != VA),
            "cpu{cpu} still caches VA"
        );
    }
    m.clear_kernel();
}
