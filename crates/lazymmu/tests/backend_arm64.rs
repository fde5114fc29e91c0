//! arm64 backend: barriers per valid kernel write eagerly, one pair per
//! section lazily, the pending flag travelling with the task.

use lazymmu::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use std::cell::RefCell;

use lazymmu::backend::arm64::{
    tlbi_ops, tlbi_range_pages, Arm64, Arm64Primitives, Dsb, TlbiOp, MAX_TLBI_RANGE_PAGES,
};
use lazymmu::backend::machine::{BackendBug, CpuPrimitives, Primitive};
use lazymmu::backend::recording::{Call, Event, Recording};
use lazymmu::backend::{ContextSwitch, EntryUpdate, FlushScope, PteAccess, TlbFlush};
use lazymmu::cpu::{Cpu, CpuId, CpuMask};
use lazymmu::mode::counters::Counters;
use lazymmu::mode::{LazyMode, MisusePolicy};

const TABLE: u64 = 0x80_0000;
const KERNEL_VA: u64 = 0xffff_8000_0000_0000;

fn kernel_pte(index: u64, value: u64) -> EntryUpdate {
    EntryUpdate {
        entry: PhysAddr(TABLE + index * 8),
        va: VirtAddr(KERNEL_VA + (index << 12)),
        space: SpaceId::KERNEL,
        level: 1,
        value,
        kernel: true,
        valid: value & 1 != 0,
        leaf: true,
    }
}

fn user_pte(index: u64, value: u64) -> EntryUpdate {
    EntryUpdate {
        va: VirtAddr(index << 12),
        space: SpaceId(3),
        kernel: false,
        ..kernel_pte(index, value)
    }
}

fn page(index: u64) -> u64 {
    (0x4000_0000 + (index << 12)) | 0x3
}

fn barrier_pairs(machine: &Recording) -> (u64, u64) {
    (machine.count(Primitive::Dsb), machine.count(Primitive::Isb))
}

#[test]
fn eager_writes_emit_a_barrier_pair_per_valid_kernel_entry() {
    let machine = Recording::new();
    let arm = Arm64::new(&machine);
    for i in 0..16 {
        arm.write_entry(kernel_pte(i, page(i)));
    }
    assert_eq!(barrier_pairs(&machine), (16, 16));
    // User PTEs and invalid kernel entries need none.
    arm.write_entry(user_pte(20, page(20)));
    arm.write_entry(kernel_pte(21, 0));
    assert_eq!(barrier_pairs(&machine), (16, 16));
    // A valid table entry at PMD level needs them even for user space.
    arm.write_entry(EntryUpdate {
        level: 2,
        leaf: false,
        ..user_pte(22, page(22))
    });
    assert_eq!(barrier_pairs(&machine), (17, 17));
    assert_eq!(machine.calls(Call::DsbIshSt), 17);
}

#[test]
fn a_section_emits_exactly_one_pair() {
    let machine = Recording::new();
    let arm = Arm64::new(&machine);
    let mode = Counters::new(&machine, &arm, MisusePolicy::Panic);
    {
        let _section = mode.section();
        for i in 0..16 {
            arm.write_entry(kernel_pte(i, page(i)));
        }
        assert_eq!(barrier_pairs(&machine), (0, 0));
        assert_eq!(machine.count(Primitive::PteWrite), 16);
    }
    assert_eq!(barrier_pairs(&machine), (1, 1));
    let mut order = [None; 2];
    let mut n = 0;
    machine.events(|e: Event| {
        if matches!(e.call, Call::DsbIshSt | Call::Isb) {
            order[n] = Some(e.call);
            n += 1;
        }
    });
    assert_eq!(order, [Some(Call::DsbIshSt), Some(Call::Isb)]);

    // A section without valid kernel writes owes nothing.
    {
        let _section = mode.section();
        arm.write_entry(user_pte(1, page(1)));
    }
    assert_eq!(barrier_pairs(&machine), (1, 1));
}

#[test]
fn nested_disable_and_pause_emit_what_is_owed() {
    let machine = Recording::new();
    let arm = Arm64::new(&machine);
    let mode = Counters::new(&machine, &arm, MisusePolicy::Panic);
    let outer = mode.section();
    arm.write_entry(kernel_pte(0, page(0)));
    {
        let _inner = mode.section();
        arm.write_entry(kernel_pte(1, page(1)));
    }
    assert_eq!(
        barrier_pairs(&machine),
        (1, 1),
        "the nested disable flushed"
    );
    arm.write_entry(kernel_pte(2, page(2)));
    {
        let _pause = mode.pause();
        assert_eq!(barrier_pairs(&machine), (2, 2), "pause left the mode");
        arm.write_entry(kernel_pte(3, page(3)));
        assert_eq!(barrier_pairs(&machine), (3, 3), "paused: eager");
    }
    drop(outer);
    assert_eq!(barrier_pairs(&machine), (3, 3), "nothing owed at the end");
}

#[test]
fn the_pending_flag_travels_with_the_task() {
    let machine = Recording::new();
    let arm = Arm64::new(&machine);
    let mode = Counters::new(&machine, &arm, MisusePolicy::Panic);
    let section = mode.section();
    arm.write_entry(kernel_pte(0, page(0)));
    // Task 0 is switched out on CPU 0: its stores are made visible.
    arm.switch_out(machine.task_lazy_state(0));
    assert_eq!(machine.calls(Call::DsbIsh), 1);
    assert_eq!(machine.calls(Call::Isb), 0);
    // Task 1 runs on CPU 0 outside any section: eager barriers.
    machine.switch_task(1);
    arm.switch_in(machine.task_lazy_state(1));
    arm.write_entry(kernel_pte(5, page(5)));
    assert_eq!(machine.calls(Call::Isb), 1);
    arm.switch_out(machine.task_lazy_state(1));
    // Task 0 resumes on CPU 3 and closes its section there.
    machine.switch_task(0);
    machine.set_cpu(3);
    arm.switch_in(machine.task_lazy_state(0));
    drop(section);
    assert_eq!(machine.calls(Call::Isb), 2);
    assert_eq!(
        machine.last_event().map(|e| (e.call, e.cpu)),
        Some((Call::Isb, 3))
    );
}

#[test]
fn interrupt_context_writes_get_their_barriers_at_once() {
    let machine = Recording::new();
    let arm = Arm64::new(&machine);
    let mode = Counters::new(&machine, &arm, MisusePolicy::Panic);
    let section = mode.section();
    arm.write_entry(kernel_pte(0, page(0)));
    machine.irq_enter();
    arm.write_entry(kernel_pte(1, page(1)));
    assert_eq!(barrier_pairs(&machine), (1, 1));
    machine.irq_exit();
    drop(section);
    assert_eq!(barrier_pairs(&machine), (2, 2));
}

#[test]
fn tlb_range_is_tlbi_per_page_between_barriers() {
    let machine = Recording::new();
    let arm = Arm64::new(&machine);
    arm.flush_range(
        SpaceId(3),
        VirtAddr(0),
        VirtAddr(8 << 12),
        PageSize::Size4K,
        FlushScope::Cpus(CpuMask::from_bits(0b11)),
    );
    assert_eq!(machine.count(Primitive::Tlbi), 8);
    assert_eq!(machine.calls(Call::DsbIshSt), 1);
    assert_eq!(machine.calls(Call::DsbIsh), 1);
    assert_eq!(machine.calls(Call::Isb), 0, "no isb for user mappings");
    // From MAX_DVM_OPS pages on (`__flush_tlb_range_limit_excess`): one
    // flush by ASID.
    arm.flush_range(
        SpaceId(3),
        VirtAddr(0),
        VirtAddr(512 << 12),
        PageSize::Size4K,
        FlushScope::Cpus(CpuMask::from_bits(0b11)),
    );
    assert_eq!(machine.count(Primitive::Tlbi), 8);
    assert_eq!(machine.count(Primitive::FullFlush), 1);
    // 511 pages still go one by one.
    arm.flush_range(
        SpaceId(3),
        VirtAddr(0),
        VirtAddr(511 << 12),
        PageSize::Size4K,
        FlushScope::Cpus(CpuMask::from_bits(0b11)),
    );
    assert_eq!(machine.count(Primitive::Tlbi), 8 + 511);
}

#[test]
fn kernel_flushes_end_with_an_isb() {
    // `flush_tlb_kernel_range` and `flush_tlb_all` both end with `isb`.
    let machine = Recording::new();
    let arm = Arm64::new(&machine);
    arm.flush_range(
        SpaceId::KERNEL,
        VirtAddr(KERNEL_VA),
        VirtAddr(KERNEL_VA + (4 << 12)),
        PageSize::Size4K,
        FlushScope::Local,
    );
    assert_eq!(
        (
            machine.count(Primitive::Tlbi),
            machine.calls(Call::DsbIshSt),
            machine.calls(Call::DsbIsh),
            machine.calls(Call::Isb)
        ),
        (4, 1, 1, 1)
    );
    arm.flush_all(SpaceId::KERNEL, FlushScope::Local);
    assert_eq!(machine.count(Primitive::FullFlush), 1);
    assert_eq!(machine.calls(Call::Isb), 2);
}

fn ops(start: u64, pages: u64, stride: PageSize, range: bool) -> Vec<TlbiOp> {
    let mut ops = Vec::new();
    tlbi_ops(VirtAddr(start), pages, stride, range, |op| ops.push(op));
    ops
}

fn range(va: u64, scale: u8, num: u8) -> TlbiOp {
    TlbiOp::Range {
        va: VirtAddr(va),
        scale,
        num,
    }
}

#[test]
fn range_operations_follow_flush_tlb_range_op() {
    // Without FEAT_TLBIRANGE: one per stride step.
    assert_eq!(
        ops(0x1000, 3, PageSize::Size4K, false),
        [0x1000, 0x2000, 0x3000].map(|va| TlbiOp::Page(VirtAddr(va)))
    );
    assert_eq!(ops(0, 1024, PageSize::Size2M, false).len(), 2);
    // With it: one page alone is a single-page operation.
    assert_eq!(
        ops(0x1000, 1, PageSize::Size4K, true),
        [TlbiOp::Page(VirtAddr(0x1000))]
    );
    // Even counts in one range operation at the smallest scale that fits:
    // 16 pages = (7 + 1) << 1, 64 = (0 + 1) << 6, 512 = (7 + 1) << 6,
    // 4096 = (1 + 1) << 11.
    assert_eq!(ops(0, 16, PageSize::Size4K, true), [range(0, 0, 7)]);
    assert_eq!(ops(0, 64, PageSize::Size4K, true), [range(0, 1, 0)]);
    assert_eq!(ops(0, 512, PageSize::Size4K, true), [range(0, 1, 7)]);
    assert_eq!(ops(0, 4096, PageSize::Size4K, true), [range(0, 2, 1)]);
    // Larger scales first, a last odd page on its own: 100 = 64 + 36,
    // 3 = 2 + 1.
    assert_eq!(
        ops(0, 100, PageSize::Size4K, true),
        [range(0, 1, 0), range(64 << 12, 0, 17)]
    );
    assert_eq!(
        ops(0, 3, PageSize::Size4K, true),
        [range(0, 0, 0), TlbiOp::Page(VirtAddr(2 << 12))]
    );
    // The largest range: NUM 31 at SCALE 3 (`__TLBI_RANGE_NUM` caps at
    // 31, Linux commit e3ba51ab24fd).
    assert_eq!(
        ops(0, MAX_TLBI_RANGE_PAGES, PageSize::Size4K, true),
        [range(0, 3, 31)]
    );
    // Every page covered exactly once, in order, for every count.
    for pages in 1..=3000u64 {
        let mut next = 0u64;
        tlbi_ops(VirtAddr(0), pages, PageSize::Size4K, true, |op| match op {
            TlbiOp::Page(va) => {
                assert_eq!(va.0, next << 12);
                next += 1;
            }
            TlbiOp::Range { va, scale, num } => {
                assert_eq!(va.0, next << 12);
                assert!(scale <= 3 && num <= 31);
                next += tlbi_range_pages(num, scale);
            }
        });
        assert_eq!(next, pages, "{pages} pages");
    }
}

/// Recording primitives of a CPU with FEAT_TLBIRANGE: range operations
/// are counted as one `tlbi` each and listed.
struct WithRange<'a> {
    machine: &'a Recording,
    ranges: RefCell<Vec<(u64, u8, u8, bool)>>,
}

impl Cpu for WithRange<'_> {
    fn cpu_id(&self) -> CpuId {
        self.machine.cpu_id()
    }
    fn in_interrupt(&self) -> bool {
        self.machine.in_interrupt()
    }
    fn preempt_disable(&self) {
        self.machine.preempt_disable()
    }
    fn preempt_enable(&self) {
        self.machine.preempt_enable()
    }
}

impl CpuPrimitives for WithRange<'_> {
    type Memory = Recording;
    fn memory(&self) -> &Recording {
        self.machine
    }
    fn report(&self, bug: BackendBug) {
        self.machine.report(bug)
    }
}

impl Arm64Primitives for WithRange<'_> {
    fn write_pte(&self, entry: PhysAddr, value: u64) {
        Arm64Primitives::write_pte(self.machine, entry, value)
    }
    fn dsb(&self, kind: Dsb) {
        self.machine.dsb(kind)
    }
    fn isb(&self) {
        self.machine.isb()
    }
    fn tlbi_va(&self, space: SpaceId, va: VirtAddr, last_level: bool) {
        self.machine.tlbi_va(space, va, last_level)
    }
    fn tlbi_asid(&self, space: SpaceId) {
        self.machine.tlbi_asid(space)
    }
    fn tlb_range(&self) -> bool {
        true
    }
    fn tlbi_range(&self, _space: SpaceId, va: VirtAddr, scale: u8, num: u8, last_level: bool) {
        self.ranges
            .borrow_mut()
            .push((va.0, scale, num, last_level));
    }
    fn task_barriers_pending(&self) -> bool {
        self.machine.task_barriers_pending()
    }
    fn set_task_barriers_pending(&self, pending: bool) {
        self.machine.set_task_barriers_pending(pending)
    }
}

#[test]
fn a_cpu_with_range_operations_flushes_large_ranges_without_a_full_flush() {
    let machine = Recording::new();
    let primitives = WithRange {
        machine: &machine,
        ranges: RefCell::new(Vec::new()),
    };
    let arm = Arm64::new(&primitives);
    assert_eq!(arm.single_page_ceiling() as u64, MAX_TLBI_RANGE_PAGES);
    arm.flush_range(
        SpaceId::KERNEL,
        VirtAddr(KERNEL_VA),
        VirtAddr(KERNEL_VA + (4096 << 12)),
        PageSize::Size4K,
        FlushScope::Local,
    );
    assert_eq!(*primitives.ranges.borrow(), [(KERNEL_VA, 2, 1, true)]);
    assert_eq!(machine.count(Primitive::FullFlush), 0);
    assert_eq!(machine.calls(Call::Isb), 1);
    // A 2 MiB stride covers its 512 pages, at any level.
    arm.flush_range(
        SpaceId(3),
        VirtAddr(0),
        VirtAddr(2 << 21),
        PageSize::Size2M,
        FlushScope::Local,
    );
    assert_eq!(primitives.ranges.borrow()[1], (0, 1, 15, false));
    // Past MAX_TLBI_RANGE_PAGES: by ASID.
    arm.flush_range(
        SpaceId(3),
        VirtAddr(0),
        VirtAddr((MAX_TLBI_RANGE_PAGES + 1) << 12),
        PageSize::Size4K,
        FlushScope::Local,
    );
    assert_eq!(machine.count(Primitive::FullFlush), 1);
}
