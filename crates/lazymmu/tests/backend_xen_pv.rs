//! Xen PV backend: multicall batching, read-back, double entry, context
//! switch and interrupt context.

use lazymmu::addr::PageSize;
use lazymmu::addr::{PhysAddr, SpaceId, VirtAddr};
use lazymmu::backend::machine::{BackendBug, Primitive};
use lazymmu::backend::recording::{Call, Recording};
use lazymmu::backend::xen_pv::{XenPv, MC_ARGS, MC_BATCH, MMU_UPDATES_PER_ENTRY};
use lazymmu::backend::{ContextSwitch, EntryUpdate, FlushScope, PteAccess, TlbFlush};
use lazymmu::mode::counters::Counters;
use lazymmu::mode::ArchHooks;
use lazymmu::mode::{LazyMode, LazyState, MisusePolicy};

const TABLE: u64 = 0x40_0000;

fn pte(index: u64, value: u64) -> EntryUpdate {
    EntryUpdate {
        entry: PhysAddr(TABLE + index * 8),
        va: VirtAddr(index << 12),
        space: SpaceId(1),
        level: 1,
        value,
        kernel: false,
        valid: value & 1 != 0,
        leaf: true,
    }
}

fn frame(index: u64) -> u64 {
    (0x1000_0000 + (index << 12)) | 0x3
}

#[test]
fn eager_writes_are_one_hypercall_each() {
    let machine = Recording::new();
    let xen = XenPv::new(&machine);
    for i in 0..40 {
        xen.write_entry(pte(i, frame(i)));
    }
    assert_eq!(machine.calls(Call::MmuUpdate), 40);
    assert_eq!(machine.count(Primitive::Hypercall), 40);
    assert_eq!(machine.count(Primitive::MulticallEntry), 0);
    assert_eq!(machine.read_memory(PhysAddr(TABLE + 39 * 8)), frame(39));
}

#[test]
fn writes_merge_into_one_mmu_update_until_the_arguments_are_full() {
    // `xen_extend_mmu_update` appends to the last `mmu_update` entry while
    // `argidx + 16 < MC_ARGS` (512): 31 requests; the 32nd opens a new
    // entry, for which `__xen_mc_entry` flushes first. A buffer of one
    // entry is issued as that hypercall alone (`xen_mc_flush`).
    assert_eq!((MC_BATCH, MC_ARGS, MMU_UPDATES_PER_ENTRY), (32, 512, 31));
    let machine = Recording::new();
    let xen = XenPv::new(&machine);
    let mode = Counters::new(&machine, &xen, MisusePolicy::Panic);
    let section = mode.section();
    for i in 0..31 {
        xen.write_entry(pte(i, frame(i)));
    }
    assert_eq!(machine.count(Primitive::Hypercall), 0);
    assert_eq!((xen.queued(), xen.queued_entries()), (31, 1));
    assert_eq!(
        machine.read_memory(PhysAddr(TABLE)),
        0,
        "queued, not written"
    );

    xen.write_entry(pte(31, frame(31)));
    assert_eq!(machine.calls(Call::MmuUpdate), 1);
    assert_eq!(machine.last_event().map(|e| e.items), Some(31));
    assert_eq!(machine.count(Primitive::MulticallEntry), 0);
    assert_eq!(xen.queued(), 1);
    assert_eq!(machine.read_memory(PhysAddr(TABLE + 30 * 8)), frame(30));
    assert_eq!(machine.read_memory(PhysAddr(TABLE + 31 * 8)), 0);

    drop(section);
    assert_eq!(machine.calls(Call::MmuUpdate), 2);
    assert_eq!(machine.last_event().map(|e| e.items), Some(1));
    assert_eq!(machine.count(Primitive::Hypercall), 2);
    assert_eq!(machine.count(Primitive::MmuUpdate), 32);
    assert_eq!(machine.count(Primitive::PteWrite), 32);
    assert_eq!(machine.read_memory(PhysAddr(TABLE + 31 * 8)), frame(31));
    assert_eq!(xen.queued(), 0);
}

#[test]
fn the_33rd_entry_forces_a_flush() {
    // Entries that do not merge (TLB operations, 24 bytes each) fill the
    // 32 slots only if the arguments fit: 21 local operations take 504
    // bytes, and the 22nd (504 + 24 >= 512) flushes them as one
    // multicall.
    let machine = Recording::new();
    let xen = XenPv::new(&machine);
    let mode = Counters::new(&machine, &xen, MisusePolicy::Panic);
    let section = mode.section();
    for i in 0..22 {
        xen.flush_range(
            SpaceId(1),
            VirtAddr(i << 12),
            VirtAddr((i + 1) << 12),
            PageSize::Size4K,
            FlushScope::Local,
        );
    }
    assert_eq!(machine.calls(Call::Multicall), 1);
    assert_eq!(machine.last_event().map(|e| e.items), Some(21));
    assert_eq!(machine.count(Primitive::MulticallEntry), 21);
    drop(section);
    assert_eq!(machine.calls(Call::MmuExtOp), 1, "the last one alone");
    assert_eq!(machine.count(Primitive::Invlpg), 22);
}

#[test]
fn read_after_write_sees_the_old_value_until_disable() {
    let machine = Recording::new();
    machine.set_memory(PhysAddr(TABLE), frame(7));
    let xen = XenPv::new(&machine);
    let mode = Counters::new(&machine, &xen, MisusePolicy::Panic);
    {
        let _section = mode.section();
        xen.write_entry(pte(0, frame(8)));
        assert_eq!(xen.read_entry(PhysAddr(TABLE)), frame(7), "stale inside");
        {
            let _nested = mode.section();
            xen.write_entry(pte(1, frame(9)));
        }
        // The nested disable flushed: both writes are visible now.
        assert_eq!(xen.read_entry(PhysAddr(TABLE)), frame(8));
        assert_eq!(xen.read_entry(PhysAddr(TABLE + 8)), frame(9));
        xen.write_entry(pte(0, frame(10)));
        {
            // Pausing leaves lazy mode: the queued write is issued and a
            // read-back sees it.
            let _pause = mode.pause();
            assert_eq!(xen.read_entry(PhysAddr(TABLE)), frame(10));
        }
        xen.write_entry(pte(0, frame(11)));
        assert_eq!(xen.read_entry(PhysAddr(TABLE)), frame(10));
    }
    assert_eq!(xen.read_entry(PhysAddr(TABLE)), frame(11));
}

#[test]
fn get_and_clear_keeps_order_with_a_queued_write() {
    let machine = Recording::new();
    machine.set_memory(PhysAddr(TABLE), frame(1));
    let xen = XenPv::new(&machine);
    let mode = Counters::new(&machine, &xen, MisusePolicy::Panic);
    let _section = mode.section();
    xen.write_entry(pte(0, frame(2)));
    assert_eq!(xen.get_and_clear(pte(0, 0)), frame(2));
    assert_eq!(machine.read_memory(PhysAddr(TABLE)), 0);
}

#[test]
fn double_enter_is_reported() {
    let machine = Recording::new();
    let xen = XenPv::new(&machine);
    xen.enter();
    assert_eq!(machine.bugs(BackendBug::DoubleEnter), 0);
    xen.enter();
    assert_eq!(machine.bugs(BackendBug::DoubleEnter), 1);
    xen.leave();
    xen.leave();
    assert_eq!(machine.bugs(BackendBug::LeaveOutside), 1);
}

#[test]
fn switch_in_without_switch_out_reports_the_linux_7_0_double_entry() {
    // The context-switch hook re-enters a task that already entered: the
    // sequence the Linux 7.0 preemption bug produced.
    let machine = Recording::new();
    let xen = XenPv::new(&machine);
    let mode = Counters::new(&machine, &xen, MisusePolicy::Panic);
    let _section = mode.section();
    xen.switch_in(mode.state());
    assert_eq!(machine.bugs(BackendBug::DoubleEnter), 1);
}

#[test]
fn context_switch_flushes_and_reenters() {
    let machine = Recording::new();
    let xen = XenPv::new(&machine);
    let mode = Counters::new(&machine, &xen, MisusePolicy::Panic);
    let section = mode.section();
    for i in 0..5 {
        xen.write_entry(pte(i, frame(i)));
    }
    // Switch from task 0 (in a section) to task 1 (idle).
    xen.switch_out(machine.task_lazy_state(0));
    assert_eq!(
        machine.calls(Call::MmuUpdate),
        1,
        "switch-out issued the buffer"
    );
    assert_eq!(machine.read_memory(PhysAddr(TABLE + 4 * 8)), frame(4));
    machine.switch_task(1);
    xen.switch_in(machine.task_lazy_state(1));
    xen.write_entry(pte(10, frame(10)));
    assert_eq!(machine.calls(Call::MmuUpdate), 2, "task 1 is not batching");
    // Back to task 0, on another CPU.
    xen.switch_out(LazyState::IDLE);
    machine.switch_task(0);
    machine.set_cpu(2);
    xen.switch_in(machine.task_lazy_state(0));
    xen.write_entry(pte(11, frame(11)));
    assert_eq!(xen.queued(), 1, "task 0 batches again on its new CPU");
    drop(section);
    assert_eq!(machine.calls(Call::MmuUpdate), 3);
    assert_eq!(machine.bugs(BackendBug::DoubleEnter), 0);
    assert_eq!(machine.bugs(BackendBug::LeaveOutside), 0);
}

#[test]
fn tlb_operations_are_queued_in_a_section() {
    let machine = Recording::new();
    let xen = XenPv::new(&machine);
    let mode = Counters::new(&machine, &xen, MisusePolicy::Panic);
    let section = mode.section();
    xen.write_entry(pte(0, 0));
    xen.flush_range(
        SpaceId(1),
        VirtAddr(0),
        VirtAddr(0x1000),
        PageSize::Size4K,
        FlushScope::Cpus(lazymmu::cpu::CpuMask::from_bits(0b1111)),
    );
    xen.flush_range(
        SpaceId(1),
        VirtAddr(0),
        VirtAddr(0x3000),
        PageSize::Size4K,
        FlushScope::Local,
    );
    assert_eq!(machine.count(Primitive::Hypercall), 0);
    // The write, INVLPG_LOCAL for this CPU and INVLPG_MULTI for the other
    // three, then 3 INVLPG_LOCAL.
    assert_eq!((xen.queued(), xen.queued_entries()), (6, 6));
    drop(section);
    assert_eq!(machine.count(Primitive::Hypercall), 1);
    assert_eq!(machine.count(Primitive::MulticallEntry), 6);
    assert_eq!(machine.count(Primitive::Invlpg), 7);
    assert_eq!(machine.count(Primitive::Ipi), 1);

    // Outside a section each operation is its own hypercall.
    xen.flush_all(
        SpaceId(1),
        FlushScope::Cpus(lazymmu::cpu::CpuMask::from_bits(0b11)),
    );
    assert_eq!(machine.calls(Call::MmuExtOp), 2);
    assert_eq!(machine.count(Primitive::FullFlush), 2);
}

#[test]
fn interrupt_context_writes_are_immediate() {
    let machine = Recording::new();
    let xen = XenPv::new(&machine);
    let mode = Counters::new(&machine, &xen, MisusePolicy::Panic);
    let section = mode.section();
    xen.write_entry(pte(0, frame(0)));
    xen.write_entry(pte(1, frame(1)));
    machine.irq_enter();
    assert!(!mode.is_active());
    xen.write_entry(pte(2, frame(2)));
    assert_eq!(machine.read_memory(PhysAddr(TABLE + 16)), frame(2));
    // `xen_get_lazy_mode` is `XEN_LAZY_NONE` in interrupt context, so
    // `__xen_set_pte` makes the handler's write one `mmu_update` of its
    // own and leaves the interrupted section's buffer queued.
    assert_eq!(machine.calls(Call::MmuUpdate), 1);
    assert_eq!(machine.read_memory(PhysAddr(TABLE)), 0);
    assert_eq!((xen.queued(), xen.queued_entries()), (2, 1));
    machine.irq_exit();
    xen.write_entry(pte(3, frame(3)));
    assert_eq!(
        (xen.queued(), xen.queued_entries()),
        (3, 1),
        "the section's next write joins its buffer's last mmu_update"
    );
    drop(section);
    assert_eq!(machine.calls(Call::MmuUpdate), 2);
    assert_eq!(machine.read_memory(PhysAddr(TABLE)), frame(0));
    assert_eq!(machine.read_memory(PhysAddr(TABLE + 24)), frame(3));
}

#[test]
fn interrupt_write_to_a_queued_entry_issues_the_buffer_first() {
    // The one case the handler's write cannot overtake the buffer: the
    // section queued a write to the same entry, which must land first.
    let machine = Recording::new();
    let xen = XenPv::new(&machine);
    let mode = Counters::new(&machine, &xen, MisusePolicy::Panic);
    let section = mode.section();
    xen.write_entry(pte(0, frame(0)));
    machine.irq_enter();
    xen.write_entry(pte(0, frame(5)));
    assert_eq!(machine.calls(Call::MmuUpdate), 2);
    assert_eq!(machine.read_memory(PhysAddr(TABLE)), frame(5));
    assert_eq!(xen.queued(), 0);
    machine.irq_exit();
    drop(section);
    assert_eq!(machine.read_memory(PhysAddr(TABLE)), frame(5));
}

#[test]
fn mprotect_in_a_section_is_batched() {
    // ptep_modify_prot_start reads, commit queues a request merged into
    // the last `mmu_update` (`xen_ptep_modify_prot_commit` →
    // `xen_extend_mmu_update`): 64 entries are three `mmu_update`
    // hypercalls of 31, 31 and 2 requests, where clearing first would
    // trap per entry.
    let machine = Recording::new();
    for i in 0..64 {
        machine.set_memory(pte(i, 0).entry, frame(i));
    }
    let xen = XenPv::new(&machine);
    let mode = Counters::new(&machine, &xen, MisusePolicy::Panic);
    {
        let _section = mode.section();
        for i in 0..64 {
            let old = xen.modify_prot_start(pte(i, 0));
            assert_eq!(old, frame(i));
            xen.modify_prot_commit(pte(i, old & !2));
        }
        // A second start on an entry with a queued commit sees the commit.
        assert_eq!(xen.modify_prot_start(pte(63, 0)), frame(63) & !2);
    }
    assert_eq!(machine.count(Primitive::Hypercall), 3);
    assert_eq!(machine.calls(Call::MmuUpdate), 3);
    assert_eq!(machine.count(Primitive::MmuUpdate), 64);
    assert_eq!(machine.count(Primitive::EmulatedWrite), 0);
    assert_eq!(machine.read_memory(pte(63, 0).entry), frame(63) & !2);
}

#[test]
fn clears_and_write_protects_are_native_and_trapped_until_unpinned() {
    // `native_ptep_get_and_clear` and `ptep_set_wrprotect` are native
    // atomics: on a pinned table the hypervisor traps and emulates each,
    // in a section or not; after `xen_exit_mmap` unpins, plain stores.
    let machine = Recording::new();
    for i in 0..4 {
        machine.set_memory(pte(i, 0).entry, frame(i));
    }
    let xen = XenPv::new(&machine);
    let mode = Counters::new(&machine, &xen, MisusePolicy::Panic);
    {
        let _section = mode.section();
        assert_eq!(xen.get_and_clear(pte(0, 0)), frame(0));
        assert_eq!(xen.set_wrprotect(pte(1, frame(1) & !2)), frame(1));
    }
    assert_eq!(machine.count(Primitive::EmulatedWrite), 2);
    assert_eq!(machine.count(Primitive::Hypercall), 0);
    lazymmu::backend::Backend::exit_mmap(&xen, SpaceId(1));
    assert_eq!(machine.calls(Call::Unpin), 1);
    assert_eq!(xen.get_and_clear(pte(2, 0)), frame(2));
    assert_eq!(machine.count(Primitive::EmulatedWrite), 2);
    assert_eq!(machine.read_memory(pte(2, 0).entry), 0);
}

#[test]
fn a_stale_read_back_can_be_detected() {
    let machine = Recording::new();
    let xen = XenPv::new(&machine);
    let mode = Counters::new(&machine, &xen, MisusePolicy::Panic);
    let _section = mode.section();
    xen.write_entry(pte(3, frame(3)));
    xen.write_entry(pte(3, frame(4)));
    assert_eq!(xen.queued_value(PhysAddr(TABLE + 24)), Some(frame(4)));
    assert_eq!(xen.queued_value(PhysAddr(TABLE + 32)), None);
    {
        let _pause = mode.pause();
        assert_eq!(xen.queued_value(PhysAddr(TABLE + 24)), None);
    }
}
