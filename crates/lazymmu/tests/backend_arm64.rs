//! arm64 backend: barriers per valid kernel write eagerly, one pair per
//! section lazily, the pending flag travelling with the task.

use lazymmu::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use lazymmu::backend::arm64::Arm64;
use lazymmu::backend::machine::Primitive;
use lazymmu::backend::recording::{Call, Event, Recording};
use lazymmu::backend::{ContextSwitch, EntryUpdate, FlushScope, PteAccess, TlbFlush};
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
        FlushScope::Cpus(lazymmu::cpu::CpuMask::from_bits(0b11)),
    );
    assert_eq!(machine.count(Primitive::Tlbi), 8);
    assert_eq!(machine.calls(Call::DsbIshSt), 1);
    assert_eq!(machine.calls(Call::DsbIsh), 1);
    // Above MAX_DVM_OPS pages: one flush by ASID.
    arm.flush_range(
        SpaceId(3),
        VirtAddr(0),
        VirtAddr(1024 << 12),
        PageSize::Size4K,
        FlushScope::Cpus(lazymmu::cpu::CpuMask::from_bits(0b11)),
    );
    assert_eq!(machine.count(Primitive::Tlbi), 8);
    assert_eq!(machine.count(Primitive::FullFlush), 1);
}
