//! Random sequences of writes, nested sections, pauses and interrupt-context
//! writes on every backend: whenever no section is open every write has
//! reached memory and nothing is left pending; reads inside a section are
//! stale only where the backend says so (Xen PV); protected page tables
//! never fault and always end with the default register value.

use lazymmu::addr::{PhysAddr, SpaceId, VirtAddr};
use lazymmu::backend::arm64::{Arm64, Arm64Primitives};
use lazymmu::backend::machine::{BackendBug, Primitive};
use lazymmu::backend::ppc_hash::PpcHash;
use lazymmu::backend::protected::{Arm64Poe, KeyFlavour, Pks, Poe, X86Pks};
use lazymmu::backend::recording::Recording;
use lazymmu::backend::s390::S390;
use lazymmu::backend::sparc64::Sparc64;
use lazymmu::backend::xen_pv::XenPv;
use lazymmu::backend::{EntryUpdate, PteAccess};
use lazymmu::mode::counters::Counters;
use lazymmu::mode::{LazyMode, MisusePolicy};
use proptest::prelude::*;

const TABLE: u64 = 0x90_0000;
/// Entries of the model: the generator touches both ends of the boundary
/// between two PTE tables, so that s390 sees table changes.
const ENTRIES: u64 = 520;

#[derive(Clone, Copy, Debug)]
enum Op {
    Write { index: u64, value: u64 },
    Clear { index: u64 },
    Enable,
    Disable,
    Pause,
    Resume,
    IrqWrite { index: u64, value: u64 },
    Read { index: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    // Few entries, so reads and clears hit entries written in the same
    // section; some across the boundary between the two tables.
    let index = prop_oneof![0u64..12, 506u64..518];
    let value = (1u64..0x1000).prop_map(|n| (n << 12) | 0x3);
    prop_oneof![
        6 => (index.clone(), value.clone()).prop_map(|(index, value)| Op::Write { index, value }),
        2 => index.clone().prop_map(|index| Op::Clear { index }),
        2 => Just(Op::Enable),
        2 => Just(Op::Disable),
        1 => Just(Op::Pause),
        1 => Just(Op::Resume),
        1 => (index.clone(), value).prop_map(|(index, value)| Op::IrqWrite { index, value }),
        2 => index.prop_map(|index| Op::Read { index }),
    ]
}

fn update(index: u64, value: u64) -> EntryUpdate {
    EntryUpdate {
        entry: PhysAddr(TABLE + index * 8),
        va: VirtAddr(0xffff_a000_0000_0000 + (index << 12)),
        space: SpaceId::KERNEL,
        level: 1,
        value,
        kernel: true,
        valid: value & 1 != 0,
        leaf: true,
    }
}

/// What a backend may show to a read inside a section.
#[derive(Clone, Copy, PartialEq)]
enum Reads {
    /// Always the last value written.
    Current,
    /// Memory, which may lag behind queued writes (Xen PV).
    MayBeStale,
}

/// Runs `ops` and checks the contract; returns the machine for further
/// checks.
fn check<B: PteAccess + lazymmu::mode::ArchHooks>(
    machine: &Recording,
    backend: &B,
    reads: Reads,
    ops: &[Op],
    settled: impl Fn() -> bool,
) -> Result<(), TestCaseError> {
    let mode = Counters::new(machine, backend, MisusePolicy::Count);
    let mut model = [0u64; ENTRIES as usize];
    let mut depth = 0u32;
    let mut pauses = 0u32;
    for op in ops {
        match *op {
            Op::Write { index, value } => {
                backend.write_entry(update(index, value));
                model[index as usize] = value;
            }
            Op::Clear { index } => {
                let old = backend.get_and_clear(update(index, 0));
                if reads == Reads::Current {
                    prop_assert_eq!(old, model[index as usize]);
                }
                model[index as usize] = 0;
            }
            Op::Enable => {
                if mode.enable().is_ok() && pauses == 0 {
                    depth += 1;
                }
            }
            Op::Disable => {
                if depth > 0 && pauses == 0 {
                    mode.disable(()).expect("balanced disable");
                    depth -= 1;
                }
            }
            Op::Pause => {
                mode.pause_raw().expect("pause");
                pauses += 1;
            }
            Op::Resume => {
                if pauses > 0 {
                    mode.resume(()).expect("balanced resume");
                    pauses -= 1;
                }
            }
            Op::IrqWrite { index, value } => {
                machine.irq_enter();
                backend.write_entry(update(index, value));
                prop_assert_eq!(machine.read_memory(update(index, 0).entry), value);
                machine.irq_exit();
                model[index as usize] = value;
            }
            Op::Read { index } => {
                let read = backend.read_entry(update(index, 0).entry);
                if reads == Reads::Current || depth == 0 || pauses > 0 {
                    prop_assert_eq!(read, model[index as usize]);
                }
            }
        }
        let settled_now = depth == 0 || pauses > 0;
        let transition = matches!(op, Op::Disable | Op::Pause | Op::Resume);
        if settled_now && !transition {
            if let Op::Write { index, .. } | Op::Clear { index } = *op {
                prop_assert_eq!(
                    machine.read_memory(update(index, 0).entry),
                    model[index as usize]
                );
            }
        }
        if settled_now && transition {
            for (index, value) in model.iter().enumerate() {
                prop_assert_eq!(
                    machine.read_memory(update(index as u64, 0).entry),
                    *value,
                    "entry {} after {:?}",
                    index,
                    op
                );
            }
            prop_assert!(settled(), "something still pending after {:?}", op);
        }
        if settled_now {
            prop_assert!(settled(), "something still pending after {:?}", op);
        }
    }
    while pauses > 0 {
        mode.resume(()).expect("resume");
        pauses -= 1;
    }
    while depth > 0 {
        mode.disable(()).expect("disable");
        depth -= 1;
    }
    for (index, value) in model.iter().enumerate() {
        prop_assert_eq!(machine.read_memory(update(index as u64, 0).entry), *value);
    }
    prop_assert!(settled());
    prop_assert_eq!(mode.misuse().count(), 0);
    prop_assert_eq!(machine.bugs(BackendBug::DoubleEnter), 0);
    prop_assert_eq!(machine.bugs(BackendBug::LeaveOutside), 0);
    prop_assert_eq!(machine.preempt_count(), 0);
    prop_assert_eq!(machine.faults(), 0);
    Ok(())
}

/// Operations a case: up to 300; under Miri, which runs them a thousand
/// times slower, up to 30.
const MAX_OPS: usize = if cfg!(miri) { 30 } else { 300 };

proptest! {
    #![proptest_config(ProptestConfig::with_cases(if cfg!(miri) { 4 } else { 48 }))]

    #[test]
    fn xen_pv(ops in prop::collection::vec(op(), 1..MAX_OPS)) {
        let machine = Recording::new();
        let xen = XenPv::new(&machine);
        check(&machine, &xen, Reads::MayBeStale, &ops, || xen.queued() == 0)?;
    }

    #[test]
    fn arm64(ops in prop::collection::vec(op(), 1..MAX_OPS)) {
        let machine = Recording::new();
        let arm = Arm64::new(&machine);
        check(&machine, &arm, Reads::Current, &ops, || !machine.task_barriers_pending())?;
        // Barriers come in pairs.
        prop_assert_eq!(machine.count(Primitive::Dsb), machine.count(Primitive::Isb));
    }

    #[test]
    fn ppc_hash(ops in prop::collection::vec(op(), 1..MAX_OPS)) {
        let machine = Recording::new();
        let ppc = PpcHash::new(&machine);
        check(&machine, &ppc, Reads::Current, &ops, || ppc.pending() == 0)?;
    }

    #[test]
    fn sparc64(ops in prop::collection::vec(op(), 1..MAX_OPS)) {
        let machine = Recording::new();
        let sparc = Sparc64::new(&machine);
        check(&machine, &sparc, Reads::Current, &ops, || sparc.pending() == 0)?;
    }

    #[test]
    fn s390(ops in prop::collection::vec(op(), 1..MAX_OPS)) {
        let machine = Recording::new();
        let s390 = S390::new(&machine);
        check(&machine, &s390, Reads::Current, &ops, || s390.cached() == 0)?;
    }

    #[test]
    fn x86_pks(ops in prop::collection::vec(op(), 1..MAX_OPS)) {
        let machine = Recording::new();
        machine.protect(Pks::DEFAULT, Pks::allows_page_table_writes);
        let pks = X86Pks::x86_pks(&machine, &machine, &machine);
        check(&machine, &pks, Reads::Current, &ops, || machine.key() == Pks::DEFAULT)?;
    }

    #[test]
    fn arm64_poe(ops in prop::collection::vec(op(), 1..MAX_OPS)) {
        let machine = Recording::new();
        machine.protect(Poe::DEFAULT, Poe::allows_page_table_writes);
        let poe = Arm64Poe::arm64_poe(&machine);
        check(&machine, &poe, Reads::Current, &ops, || {
            machine.key() == Poe::DEFAULT && !machine.task_barriers_pending()
        })?;
    }
}
