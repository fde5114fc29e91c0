//! Lazy TLB and address-space lifetimes under the three policies, on the
//! test machine: references, shootdowns, skipped flushes, the use-after-free
//! check, and a random storm that must free everything without a violation.

use lazymmu::addr::{PageSize, SpaceId, VirtAddr};
use lazymmu::cpu::CpuId;
use lazymmu::cpu::CpuMask;
use lazymmu::mm::active_mm::{
    flush_targets, FlushRange, LazyTlb, LazyTlbPolicy, LazyTlbStats, MmError, MmMachine,
    UseAfterFree,
};
use lazymmu::mm::testing::TestMachine;
use proptest::prelude::*;

fn get(counter: &core::sync::atomic::AtomicU64) -> u64 {
    LazyTlbStats::get(counter)
}

fn one_page() -> FlushRange {
    FlushRange::Range {
        start: VirtAddr(0x40_0000),
        end: VirtAddr(0x40_1000),
        stride: PageSize::Size4K,
    }
}

/// CPU 1 runs `task` on `space`, then a kernel thread that borrows it;
/// `task` then moves to CPU 0. Returns (task, kthread).
fn lazy_borrower_on_cpu1(
    machine: &TestMachine,
    tlb: &LazyTlb<&TestMachine>,
    space: SpaceId,
) -> (usize, usize) {
    let task = machine.spawn_user(space);
    let kthread = machine.spawn_kernel_thread();
    machine.switch_to(tlb, 1, task).unwrap();
    machine.switch_to(tlb, 1, kthread).unwrap();
    machine.switch_to(tlb, 0, task).unwrap();
    assert!(machine.cpu_state_of(1).is_lazy());
    assert_eq!(machine.cpu_state_of(1).loaded(), space);
    (task, kthread)
}

#[test]
fn refcount_borrow_takes_and_drops_a_reference() {
    let machine = TestMachine::new(2);
    let tlb = LazyTlb::new(&machine, LazyTlbPolicy::Refcount);
    machine.boot(&tlb);
    let x = machine.new_space();
    let y = machine.new_space();
    let a = machine.spawn_user(x);
    let b = machine.spawn_user(y);
    let k = machine.spawn_kernel_thread();
    machine.switch_to(&tlb, 0, a).unwrap();
    assert_eq!(machine.space_of(x).count(), 1);
    machine.switch_to(&tlb, 0, k).unwrap();
    assert_eq!(
        machine.space_of(x).count(),
        2,
        "the borrow holds a reference"
    );
    assert_eq!(machine.task(k).active_mm(), Some(x));
    machine.switch_to(&tlb, 0, b).unwrap();
    assert_eq!(
        machine.space_of(x).count(),
        1,
        "the end of the borrow drops it"
    );
    assert!(!machine.space_of(x).cpumask().contains(CpuId(0)));
    assert!(machine.space_of(y).cpumask().contains(CpuId(0)));
    assert_eq!(machine.task(k).active_mm(), None);
    // Two idle boots take one each on the kernel's space; idle -> a drops
    // CPU 0's; a -> k takes one on x; k -> b drops it.
    assert_eq!(get(&tlb.stats().borrow_refs), 2 + 1 + 2);
}

#[test]
fn shootdown_borrow_takes_no_reference_and_costs_fewer_line_transfers() {
    let script = |policy| {
        let machine = TestMachine::new(4);
        let tlb = LazyTlb::new(&machine, policy);
        machine.boot(&tlb);
        let x = machine.new_space();
        // Four threads of one process and a kernel thread per CPU: every
        // switch to the kernel thread borrows the shared space.
        let threads: Vec<usize> = (0..4)
            .map(|i| {
                if i > 0 {
                    tlb.mmget(x).unwrap();
                }
                machine.spawn_user(x)
            })
            .collect();
        let kthreads: Vec<usize> = (0..4).map(|_| machine.spawn_kernel_thread()).collect();
        for _round in 0..10 {
            for (cpu, &thread) in threads.iter().enumerate() {
                machine.switch_to(&tlb, cpu, thread).unwrap();
            }
            for (cpu, &kthread) in kthreads.iter().enumerate() {
                machine.switch_to(&tlb, cpu, kthread).unwrap();
            }
        }
        let refs = get(&tlb.stats().borrow_refs);
        (machine.transfers(), refs, machine.violations().0)
    };
    let (refcount_transfers, refcount_refs, v1) = script(LazyTlbPolicy::Refcount);
    let (shootdown_transfers, shootdown_refs, v2) = script(LazyTlbPolicy::Shootdown);
    assert_eq!((v1, v2), (0, 0));
    assert_eq!(shootdown_refs, 0);
    assert!(refcount_refs >= 80, "{refcount_refs}");
    assert!(
        shootdown_transfers * 2 < refcount_transfers,
        "shootdown {shootdown_transfers} vs refcount {refcount_transfers}"
    );
}

#[test]
fn shootdown_switches_lazy_borrowers_away_before_the_free() {
    let machine = TestMachine::new(2);
    let tlb = LazyTlb::new(&machine, LazyTlbPolicy::Shootdown);
    machine.boot(&tlb);
    let x = machine.new_space();
    let (task, kthread) = lazy_borrower_on_cpu1(&machine, &tlb, x);
    machine.run_on(0, |m| tlb.exit_mm(m.task(task))).unwrap();
    assert!(machine.space_of(x).is_freed());
    assert_eq!(machine.spaces_freed(), 1);
    assert_eq!(machine.violations(), (0, None));
    assert_eq!(get(&tlb.stats().shootdown_ipis), 1);
    assert_eq!(machine.task(kthread).active_mm(), Some(SpaceId::KERNEL));
    assert_eq!(machine.cpu_state_of(1).loaded(), SpaceId::KERNEL);
    // The exiting task was switched away locally too; it can still leave.
    assert_eq!(machine.task(task).active_mm(), Some(SpaceId::KERNEL));
    let next = machine.spawn_kernel_thread();
    machine.switch_to(&tlb, 0, next).unwrap();
    let other = machine.new_space();
    let user = machine.spawn_user(other);
    machine.switch_to(&tlb, 1, user).unwrap();
    assert_eq!(machine.violations(), (0, None));
}

#[test]
fn use_after_free_check_fires_when_the_shootdown_ipi_is_lost() {
    let machine = TestMachine::new(2);
    let tlb = LazyTlb::new(&machine, LazyTlbPolicy::Shootdown);
    machine.boot(&tlb);
    let x = machine.new_space();
    let (task, _) = lazy_borrower_on_cpu1(&machine, &tlb, x);
    machine.lose_ipis(true);
    machine.run_on(0, |m| tlb.exit_mm(m.task(task))).unwrap();
    let (count, last) = machine.violations();
    assert!(count >= 1);
    assert_eq!(
        last,
        Some(UseAfterFree::SpaceLoaded {
            space: x,
            cpu: CpuId(1)
        })
    );
}

#[test]
fn use_after_free_check_fires_on_a_direct_wrong_free() {
    let machine = TestMachine::new(2);
    let tlb = LazyTlb::new(&machine, LazyTlbPolicy::Refcount);
    machine.boot(&tlb);
    let x = machine.new_space();
    let task = machine.spawn_user(x);
    machine.switch_to(&tlb, 1, task).unwrap();
    machine.free_space(x);
    assert_eq!(
        machine.violations(),
        (
            1,
            Some(UseAfterFree::SpaceLoaded {
                space: x,
                cpu: CpuId(1)
            })
        )
    );
}

#[test]
fn refcount_keeps_a_borrowed_space_until_the_borrow_ends() {
    let machine = TestMachine::new(2);
    let tlb = LazyTlb::new(&machine, LazyTlbPolicy::Refcount);
    machine.boot(&tlb);
    let x = machine.new_space();
    let (task, _) = lazy_borrower_on_cpu1(&machine, &tlb, x);
    machine.run_on(0, |m| tlb.exit_mm(m.task(task))).unwrap();
    assert!(!machine.space_of(x).is_freed(), "CPU 1 still borrows it");
    assert_eq!(
        machine.ipis(),
        1,
        "exit_mmap's table flush reaches the lazy CPU"
    );
    // The exited task's borrow moves to the next kernel thread on CPU 0.
    let next = machine.spawn_kernel_thread();
    machine.switch_to(&tlb, 0, next).unwrap();
    let y = machine.new_space();
    let user = machine.spawn_user(y);
    machine.switch_to(&tlb, 1, user).unwrap();
    assert!(
        !machine.space_of(x).is_freed(),
        "CPU 0's kernel thread borrows it"
    );
    tlb.mmget(y).unwrap();
    let sibling = machine.spawn_user(y);
    machine.switch_to(&tlb, 0, sibling).unwrap();
    assert!(machine.space_of(x).is_freed());
    assert_eq!(machine.violations(), (0, None));
    assert_eq!(get(&tlb.stats().shootdown_ipis), 0);
}

#[test]
fn x86_skips_lazy_cpus_and_catches_up_on_return() {
    let machine = TestMachine::new(2);
    let tlb = LazyTlb::new(&machine, LazyTlbPolicy::X86);
    machine.boot(&tlb);
    let x = machine.new_space();
    let (_task, kthread) = lazy_borrower_on_cpu1(&machine, &tlb, x);
    let before = machine.ipis();
    machine.run_on(0, |_| tlb.flush_tlb_mm_range(x, one_page(), false));
    assert_eq!(machine.ipis(), before, "the lazy CPU is skipped");
    assert_eq!(get(&tlb.stats().flush_skipped_lazy), 1);
    // Another thread of the same process comes back to CPU 1.
    tlb.mmget(x).unwrap();
    let sibling = machine.spawn_user(x);
    let _ = kthread;
    machine.switch_to(&tlb, 1, sibling).unwrap();
    assert_eq!(get(&tlb.stats().catchup_flushes), 1, "missed flush made up");
    assert_eq!(
        machine.cpu_state_of(1).loaded_gen(),
        machine.space_of(x).tlb_gen()
    );
}

/// The one x86 target rule: the generation moves on whether or not a CPU
/// is left out, every lazy CPU of the mask is left out (the flushing CPU
/// too, as `should_flush_tlb()` is asked for it as well), and none is
/// when page tables are freed.
#[test]
fn flush_targets_moves_the_generation_and_leaves_lazy_cpus_out() {
    let machine = TestMachine::new(2);
    let tlb = LazyTlb::new(&machine, LazyTlbPolicy::X86);
    machine.boot(&tlb);
    let x = machine.new_space();
    lazy_borrower_on_cpu1(&machine, &tlb, x);
    let gen = machine.space_of(x).tlb_gen();
    let chosen = machine.run_on(0, |m| flush_targets(m, x, true));
    assert_eq!(chosen.gen, gen + 1);
    assert_eq!(machine.space_of(x).tlb_gen(), gen + 1);
    assert_eq!(chosen.cpus, CpuMask::single(CpuId(0)));
    assert_eq!(chosen.skipped_lazy, 1);
    // Asked from the lazy CPU itself: it is left out of its own flush.
    let chosen = machine.run_on(1, |m| flush_targets(m, x, true));
    assert_eq!(chosen.cpus, CpuMask::single(CpuId(0)));
    assert_eq!(chosen.gen, gen + 2);
    // Freed tables: the lazy CPU is reached.
    let chosen = machine.run_on(0, |m| flush_targets(m, x, false));
    assert_eq!(chosen.cpus, CpuMask::single(CpuId(0)).with(CpuId(1)));
    assert_eq!(chosen.skipped_lazy, 0);
    assert_eq!(chosen.gen, gen + 3);
}

#[test]
fn refcount_sends_flush_ipis_to_lazy_cpus() {
    let machine = TestMachine::new(2);
    let tlb = LazyTlb::new(&machine, LazyTlbPolicy::Refcount);
    machine.boot(&tlb);
    let x = machine.new_space();
    lazy_borrower_on_cpu1(&machine, &tlb, x);
    let before = machine.ipis();
    machine.run_on(0, |_| tlb.flush_tlb_mm_range(x, one_page(), false));
    assert_eq!(machine.ipis(), before + 1);
    assert_eq!(get(&tlb.stats().flush_ipis), 1);
}

#[test]
fn x86_table_free_reaches_lazy_cpus_and_switches_them_away() {
    let machine = TestMachine::new(2);
    let tlb = LazyTlb::new(&machine, LazyTlbPolicy::X86);
    machine.boot(&tlb);
    let x = machine.new_space();
    let (_task, kthread) = lazy_borrower_on_cpu1(&machine, &tlb, x);
    machine.run_on(0, |_| tlb.free_page_tables(x, one_page()));
    assert_eq!(machine.tables_freed(), 1);
    assert_eq!(machine.violations(), (0, None));
    assert_eq!(machine.cpu_state_of(1).loaded(), SpaceId::KERNEL);
    assert_eq!(get(&tlb.stats().lazy_switched_away), 1);
    // x86 keeps the borrow (and its reference): only the root changed.
    assert_eq!(machine.task(kthread).active_mm(), Some(x));
    assert_eq!(machine.space_of(x).count(), 2);
}

#[test]
fn use_after_free_check_fires_when_a_table_free_misses_a_lazy_cpu() {
    let machine = TestMachine::new(2);
    let tlb = LazyTlb::new(&machine, LazyTlbPolicy::X86);
    machine.boot(&tlb);
    let x = machine.new_space();
    lazy_borrower_on_cpu1(&machine, &tlb, x);
    machine.lose_ipis(true);
    machine.run_on(0, |_| tlb.free_page_tables(x, one_page()));
    assert_eq!(
        machine.violations(),
        (
            1,
            Some(UseAfterFree::TablesCached {
                space: x,
                cpu: CpuId(1)
            })
        )
    );
}

#[test]
fn misuse_is_refused_without_change() {
    let machine = TestMachine::new(1);
    let tlb = LazyTlb::new(&machine, LazyTlbPolicy::Shootdown);
    machine.boot(&tlb);
    let x = machine.new_space();
    let k = machine.spawn_kernel_thread();
    let stranger = machine.spawn_kernel_thread();
    assert_eq!(
        machine.run_on(0, |m| tlb.exit_mm(m.task(k))),
        Err(MmError::NoMm)
    );
    assert_eq!(tlb.mmput(SpaceId::KERNEL), Err(MmError::KernelSpace));
    assert_eq!(tlb.mmdrop(SpaceId::KERNEL), Err(MmError::KernelSpace));
    assert_eq!(
        machine.run_on(0, |m| tlb.context_switch(m.task(stranger), m.task(k))),
        Err(MmError::NotRunning)
    );
    tlb.mmput(x).unwrap();
    assert!(machine.space_of(x).is_freed());
    assert_eq!(tlb.mmput(x), Err(MmError::SpaceFreed(x)));
    assert_eq!(tlb.mmgrab(x), Err(MmError::SpaceFreed(x)));
    let late = machine.spawn_user(x);
    assert_eq!(
        machine.switch_to(&tlb, 0, late),
        Err(MmError::SpaceFreed(x))
    );
    assert_eq!(
        machine.running(0),
        0,
        "the refused switch left the idle task"
    );
}

/// One step of a random storm.
#[derive(Clone, Copy, Debug)]
enum Step {
    Switch { cpu: usize, pick: usize },
    Exit { cpu: usize },
    Flush { cpu: usize, tables: bool },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..4usize, 0..64usize).prop_map(|(cpu, pick)| Step::Switch { cpu, pick }),
        1 => (0..4usize).prop_map(|cpu| Step::Exit { cpu }),
        1 => (0..4usize, any::<bool>()).prop_map(|(cpu, tables)| Step::Flush { cpu, tables }),
    ]
}

/// Runs a storm under `policy`; at the end every task exits, every CPU goes
/// idle, and every space must be freed, with no violation on the way.
fn storm(policy: LazyTlbPolicy, steps: &[Step]) -> Result<(), TestCaseError> {
    const CPUS: usize = 4;
    let machine = TestMachine::new(CPUS);
    let tlb = LazyTlb::new(&machine, policy);
    machine.boot(&tlb);
    let spaces: Vec<SpaceId> = (0..3).map(|_| machine.new_space()).collect();
    let mut tasks = Vec::new();
    for (i, &space) in spaces.iter().enumerate() {
        for thread in 0..2 {
            if thread > 0 {
                tlb.mmget(space).unwrap();
            }
            tasks.push((machine.spawn_user(space), i));
        }
    }
    let kthreads: Vec<usize> = (0..3).map(|_| machine.spawn_kernel_thread()).collect();
    let mut exited = [false; 64];
    let running_anywhere = |task: usize| (0..CPUS).any(|cpu| machine.running(cpu) == task);
    for &step in steps {
        match step {
            Step::Switch { cpu, pick } => {
                let candidates: Vec<usize> = tasks
                    .iter()
                    .map(|&(t, _)| t)
                    .chain(kthreads.iter().copied())
                    .filter(|&t| !exited[t] && !running_anywhere(t))
                    .collect();
                if let Some(&next) = candidates.get(pick % candidates.len().max(1)) {
                    machine.switch_to(&tlb, cpu, next).unwrap();
                }
            }
            Step::Exit { cpu } => {
                let current = machine.running(cpu);
                if machine.task(current).mm().is_some() {
                    machine
                        .run_on(cpu, |m| tlb.exit_mm(m.task(current)))
                        .unwrap();
                    exited[current] = true;
                }
            }
            Step::Flush { cpu, tables } => {
                let current = machine.running(cpu);
                if let Some(space) = machine.task(current).mm() {
                    machine.run_on(cpu, |_| {
                        if tables {
                            tlb.free_page_tables(space, one_page());
                        } else {
                            tlb.flush_tlb_mm_range(space, one_page(), false);
                        }
                    });
                }
            }
        }
        prop_assert_eq!(machine.violations(), (0, None));
    }
    // Wind down: each remaining task exits where it runs or on CPU 0.
    for &(task, _) in &tasks {
        if exited[task] {
            continue;
        }
        let cpu = (0..CPUS)
            .find(|&c| machine.running(c) == task)
            .unwrap_or_else(|| {
                let idle = machine.spawn_kernel_thread();
                machine.switch_to(&tlb, 0, idle).unwrap();
                machine.switch_to(&tlb, 0, task).unwrap();
                0
            });
        machine.run_on(cpu, |m| tlb.exit_mm(m.task(task))).unwrap();
        exited[task] = true;
        let idle = machine.spawn_kernel_thread();
        machine.switch_to(&tlb, cpu, idle).unwrap();
    }
    // A fresh process on every CPU ends every borrow.
    let last = machine.new_space();
    for cpu in 0..CPUS {
        if cpu > 0 {
            tlb.mmget(last).unwrap();
        }
        let task = machine.spawn_user(last);
        machine.switch_to(&tlb, cpu, task).unwrap();
    }
    for &space in &spaces {
        prop_assert!(
            machine.space_of(space).is_freed(),
            "space {:?} leaked",
            space
        );
        prop_assert!(machine.space_of(space).cpumask().is_empty());
    }
    prop_assert_eq!(machine.violations(), (0, None));
    prop_assert_eq!(machine.spaces_freed(), 3);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(if cfg!(miri) { 4 } else { 64 }))]
    #[test]
    fn storms_free_everything_without_use_after_free(steps in prop::collection::vec(step(), 0..60)) {
        for policy in LazyTlbPolicy::ALL {
            storm(policy, &steps)?;
        }
    }
}
