//! Protected page tables: the key register is opened per write outside a
//! section and once per section inside; it is restored exactly after
//! nested sections, pauses, exceptions and context switches.

use lazymmu::addr::{PhysAddr, SpaceId, VirtAddr};
use lazymmu::backend::arm64::Arm64;
use lazymmu::backend::machine::{BackendBug, Primitive};
use lazymmu::backend::protected::{Arm64Poe, KeyFlavour, Pks, Poe, Protected};
use lazymmu::backend::recording::Recording;
use lazymmu::backend::{ContextSwitch, EntryUpdate, PteAccess};
use lazymmu::mode::counters::Counters;
use lazymmu::mode::{LazyMode, MisusePolicy};

fn kernel_pte(index: u64, value: u64) -> EntryUpdate {
    EntryUpdate {
        entry: PhysAddr(0x70_0000 + index * 8),
        va: VirtAddr(0xffff_8000_0000_0000 + (index << 12)),
        space: SpaceId::KERNEL,
        level: 1,
        value,
        kernel: true,
        valid: value & 1 != 0,
        leaf: true,
    }
}

fn page(index: u64) -> u64 {
    (0x4000_0000 + (index << 12)) | 0x3
}

fn protected_machine<F: KeyFlavour>() -> Recording {
    let machine = Recording::new();
    machine.protect(F::DEFAULT, F::allows_page_table_writes);
    machine
}

/// The wrapper's policy does not depend on the backend it wraps; arm64
/// stands in for both flavours here.
fn wrapped<F: KeyFlavour>(machine: &Recording) -> Protected<Arm64<&Recording>, &Recording, F> {
    Protected::new(Arm64::new(machine), machine)
}

fn eager_two_key_writes_per_write<F: KeyFlavour>() {
    let machine = protected_machine::<F>();
    let protected = wrapped::<F>(&machine);
    for i in 0..10 {
        protected.write_entry(kernel_pte(i, page(i)));
    }
    assert_eq!(machine.count(Primitive::KeyWrite), 20);
    assert_eq!(machine.faults(), 0);
    assert_eq!(machine.key(), F::DEFAULT);
    assert_eq!(machine.read_memory(kernel_pte(9, 0).entry), page(9));
}

fn two_key_writes_per_outermost_section<F: KeyFlavour>() {
    let machine = protected_machine::<F>();
    let protected = wrapped::<F>(&machine);
    let mode = Counters::new(&machine, &protected, MisusePolicy::Panic);
    {
        let _outer = mode.section();
        assert!(F::allows_page_table_writes(machine.key()));
        for i in 0..10 {
            protected.write_entry(kernel_pte(i, page(i)));
        }
        {
            let _inner = mode.section();
            for i in 10..20 {
                protected.write_entry(kernel_pte(i, page(i)));
            }
        }
        assert!(F::allows_page_table_writes(machine.key()), "still open");
    }
    assert_eq!(machine.count(Primitive::KeyWrite), 2);
    assert_eq!(machine.faults(), 0);
    assert_eq!(machine.key(), F::DEFAULT, "restored exactly");
    assert_eq!(machine.count(Primitive::PteWrite), 20);
}

#[test]
fn pks_eager_writes_cost_two_key_writes_each() {
    eager_two_key_writes_per_write::<Pks>();
}

#[test]
fn poe_eager_writes_cost_two_key_writes_each() {
    eager_two_key_writes_per_write::<Poe>();
}

#[test]
fn pks_section_costs_two_key_writes() {
    two_key_writes_per_outermost_section::<Pks>();
}

#[test]
fn poe_section_costs_two_key_writes() {
    two_key_writes_per_outermost_section::<Poe>();
}

#[test]
fn a_write_with_the_register_closed_faults() {
    let machine = protected_machine::<Poe>();
    let protected = Arm64Poe::arm64_poe(&machine);
    assert_eq!(
        format_of(&protected),
        "aarch64",
        "POE protects arm64's tables"
    );
    // An eager path that forgot to open the register: straight to the
    // inner backend.
    protected.inner().write_entry(kernel_pte(0, page(0)));
    assert_eq!(machine.faults(), 1);
    assert_eq!(
        machine.read_memory(kernel_pte(0, 0).entry),
        0,
        "not written"
    );
    protected.write_entry(kernel_pte(0, page(0)));
    assert_eq!(machine.faults(), 1);
    assert_eq!(machine.read_memory(kernel_pte(0, 0).entry), page(0));
}

#[test]
fn the_value_found_at_enter_is_restored_exactly() {
    // Another key (say a device-memory window) is open when the section
    // starts: leave must restore that value, not the default.
    let machine = protected_machine::<Pks>();
    let protected = wrapped::<Pks>(&machine);
    let mode = Counters::new(&machine, &protected, MisusePolicy::Panic);
    let found = Pks::DEFAULT | 0b11 << 8; // key 4 access- and write-disabled
    machine.set_key(found);
    {
        let _section = mode.section();
        protected.write_entry(kernel_pte(0, page(0)));
        {
            let _pause = mode.pause();
            assert_eq!(machine.key(), found, "paused: closed again");
            protected.write_entry(kernel_pte(1, page(1)));
            assert_eq!(machine.key(), found);
        }
        assert_eq!(machine.key(), Pks::open(found));
    }
    assert_eq!(machine.key(), found);
    assert_eq!(machine.faults(), 0);
}

#[test]
fn an_exception_inside_a_section_runs_closed_and_returns_open() {
    let machine = protected_machine::<Poe>();
    let protected = Arm64Poe::arm64_poe(&machine);
    let mode = Counters::new(&machine, &protected, MisusePolicy::Panic);
    let section = mode.section();
    protected.write_entry(kernel_pte(0, page(0)));
    let open = machine.key();

    machine.irq_enter();
    let frame = protected.exception_enter();
    assert_eq!(machine.key(), Poe::DEFAULT, "the handler starts closed");
    // A handler changing a kernel mapping (KFENCE, DEBUG_PAGEALLOC) gets a
    // window of its own and its write takes effect at once.
    protected.write_entry(kernel_pte(1, page(1)));
    assert_eq!(machine.read_memory(kernel_pte(1, 0).entry), page(1));
    assert_eq!(
        machine.count(Primitive::Isb),
        1,
        "arm64 barriers at once too"
    );
    protected.exception_exit(frame);
    machine.irq_exit();

    assert_eq!(machine.key(), open, "the interrupted value is back");
    protected.write_entry(kernel_pte(2, page(2)));
    drop(section);
    assert_eq!(machine.key(), Poe::DEFAULT);
    assert_eq!(machine.faults(), 0);
    assert_eq!(machine.bugs(BackendBug::KeyFrameMismatch), 0);
    // enter + leave, exception entry + exit, and the handler's window.
    assert_eq!(machine.count(Primitive::KeyWrite), 6);
}

#[test]
fn a_handler_that_leaves_the_register_open_is_reported() {
    let machine = protected_machine::<Pks>();
    let protected = wrapped::<Pks>(&machine);
    let frame = protected.exception_enter();
    machine.set_key(Pks::open(Pks::DEFAULT));
    protected.exception_exit(frame);
    assert_eq!(machine.bugs(BackendBug::KeyFrameMismatch), 1);
    assert_eq!(machine.key(), Pks::DEFAULT);
}

#[test]
fn the_register_follows_the_task_across_a_switch() {
    let machine = protected_machine::<Poe>();
    let protected = Arm64Poe::arm64_poe(&machine);
    let mode = Counters::new(&machine, &protected, MisusePolicy::Panic);
    let section = mode.section();
    protected.write_entry(kernel_pte(0, page(0)));
    protected.switch_out(machine.task_lazy_state(0));
    machine.switch_task(1);
    machine.set_cpu(1);
    protected.switch_in(machine.task_lazy_state(1));
    assert_eq!(machine.key(), Poe::DEFAULT, "task 1 runs closed");
    protected.write_entry(kernel_pte(1, page(1)));
    assert_eq!(machine.key(), Poe::DEFAULT);
    protected.switch_out(machine.task_lazy_state(1));
    machine.switch_task(0);
    protected.switch_in(machine.task_lazy_state(0));
    assert_eq!(machine.key(), Poe::open(Poe::DEFAULT), "task 0 open again");
    protected.write_entry(kernel_pte(2, page(2)));
    drop(section);
    assert_eq!(machine.key(), Poe::DEFAULT);
    assert_eq!(machine.faults(), 0);
}

#[test]
fn the_stateful_design_restores_each_nested_section_exactly() {
    use lazymmu::backend::protected::StatefulProtected;
    use lazymmu::mode::stateful::Stateful;

    let machine = protected_machine::<Pks>();
    let mode = Stateful::new(
        &machine,
        StatefulProtected::new(wrapped::<Pks>(&machine)),
        MisusePolicy::Panic,
    );
    let protected = mode.arch();
    let outer = mode.enable().unwrap().token;
    let open = machine.key();
    assert_eq!(open, Pks::open(Pks::DEFAULT));
    // Something between the two sections changes another key (a device
    // window opening key 4 for writes, say).
    let other = open | 0b01 << 8;
    machine.set_key(other);
    let inner = mode.enable().unwrap().token;
    assert!(Pks::allows_page_table_writes(machine.key()));
    protected.protected().write_entry(kernel_pte(0, page(0)));
    machine.set_key(Pks::open(Pks::DEFAULT)); // the inner section's code closes key 4 early
    mode.disable(inner).unwrap();
    assert_eq!(
        machine.key(),
        other,
        "the nested section restored what it found"
    );
    mode.disable(outer).unwrap();
    assert_eq!(
        machine.key(),
        Pks::DEFAULT,
        "the outermost restored the default"
    );
    assert_eq!(machine.faults(), 0);
}

#[test]
fn x86_pks_over_the_native_backend() {
    use lazymmu::backend::protected::X86Pks;

    let machine = protected_machine::<Pks>();
    let pks = X86Pks::x86_pks(&machine, &machine, &machine);
    assert_eq!(format_of(&pks), "x86-64", "PKS protects x86-64 tables");
    let mode = Counters::new(&machine, &pks, MisusePolicy::Panic);
    // Eager: 2 IA32_PKRS writes per entry write.
    for i in 0..5 {
        pks.write_entry(kernel_pte(i, page(i)));
    }
    assert_eq!(machine.count(Primitive::KeyWrite), 10);
    // A section: 2 in all.
    {
        let _section = mode.section();
        for i in 5..50 {
            pks.write_entry(kernel_pte(i, page(i)));
        }
        assert_eq!(pks.get_and_clear(kernel_pte(5, 0)), page(5));
    }
    assert_eq!(machine.count(Primitive::KeyWrite), 12);
    assert_eq!(machine.count(Primitive::PteWrite), 51);
    assert_eq!(machine.key(), Pks::DEFAULT);
    assert_eq!(machine.faults(), 0);
    // The native backend on its own writes with the register closed.
    pks.inner().write_entry(kernel_pte(60, page(60)));
    assert_eq!(machine.faults(), 1);
    assert_eq!(machine.read_memory(kernel_pte(60, 0).entry), 0);
}

#[test]
fn x86_pks_exception_inside_a_section() {
    use lazymmu::backend::protected::X86Pks;

    let machine = protected_machine::<Pks>();
    let pks = X86Pks::x86_pks(&machine, &machine, &machine);
    let mode = Counters::new(&machine, &pks, MisusePolicy::Panic);
    let outer = mode.section();
    let inner = mode.section();
    let open = machine.key();
    machine.irq_enter();
    let frame = pks.exception_enter();
    assert_eq!(machine.key(), Pks::DEFAULT);
    pks.write_entry(kernel_pte(0, page(0)));
    pks.exception_exit(frame);
    machine.irq_exit();
    assert_eq!(machine.key(), open);
    drop(inner);
    assert_eq!(
        machine.key(),
        open,
        "a nested close keeps the register open"
    );
    drop(outer);
    assert_eq!(machine.key(), Pks::DEFAULT);
    assert_eq!(machine.faults(), 0);
    assert_eq!(machine.bugs(BackendBug::KeyFrameMismatch), 0);
}

#[test]
fn a_double_enter_is_reported_and_leave_still_restores_the_default() {
    use lazymmu::mode::ArchHooks;

    let machine = protected_machine::<Poe>();
    let protected = Arm64Poe::arm64_poe(&machine);
    protected.enter();
    protected.enter();
    // The wrapper and the arm64 backend each keep a lazy flag, and each
    // reports.
    assert_eq!(machine.bugs(BackendBug::DoubleEnter), 2);
    protected.write_entry(kernel_pte(0, page(0)));
    protected.leave();
    assert_eq!(machine.key(), Poe::DEFAULT);
    assert_eq!(machine.faults(), 0);
}

#[test]
fn x86_pks_reports_a_double_enter_though_the_native_backend_keeps_no_state() {
    use lazymmu::backend::protected::X86Pks;
    use lazymmu::mode::ArchHooks;

    let machine = protected_machine::<Pks>();
    let pks = X86Pks::x86_pks(&machine, &machine, &machine);
    pks.enter();
    assert_eq!(machine.bugs(BackendBug::DoubleEnter), 0);
    pks.enter();
    assert_eq!(machine.bugs(BackendBug::DoubleEnter), 1);
    pks.leave();
    assert_eq!(machine.key(), Pks::DEFAULT);
}

/// The name of the page-table format a backend writes.
fn format_of<B: lazymmu::backend::Backend>(_: &B) -> &'static str {
    use lazymmu::pgtable::format::Format;
    B::Format::NAME
}
