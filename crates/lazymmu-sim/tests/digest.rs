//! The machine digest that state pruning trusts: two points with the same
//! digest must have the same future, so every piece of state that decides
//! what happens next is in it, and what only decides costs is not.

use lazymmu::addr::SpaceId;
use lazymmu::cpu::CpuId;
use lazymmu::mm::{LineAccess, SharedLine};
use lazymmu_sim::cost::Platform;
use lazymmu_sim::machine::{Machine, MachineConfig};

/// A 2-CPU machine with both CPUs brought online (a CPU no one has
/// touched yet is kept in its boot state and digested apart).
fn machine() -> Machine {
    let m = Machine::new(MachineConfig::new(2, Platform::X86));
    m.cpu_tlb_state(CpuId::new(0));
    m.cpu_tlb_state(CpuId::new(1));
    m
}

#[test]
fn lazy_tlb_state_of_a_space_changes_the_digest() {
    let m = machine();
    let space = SpaceId(1);
    let before = m.digest();
    // A flush that skipped a lazy CPU moved the generation on: that CPU
    // will flush when it returns, which a space without the bump would
    // not.
    m.space(space).inc_tlb_gen();
    let bumped = m.digest();
    assert_ne!(before, bumped, "the flush generation is state");
    // A CPU joining the mask will be reached by the next flush.
    m.space(space).join_cpumask(CpuId::new(1));
    let joined = m.digest();
    assert_ne!(bumped, joined, "the mm_cpumask is state");
    // sparc64 trims the mask to the one CPU that runs the space.
    m.space(space).trim_cpumask_to(CpuId::new(0));
    assert_ne!(joined, m.digest(), "a trimmed mask is state");
}

#[test]
fn a_task_borrowing_a_space_changes_the_digest() {
    let m = machine();
    let before = m.digest();
    m.task_mm(0).reuse_as_user(SpaceId(1)).unwrap();
    assert_ne!(before, m.digest(), "which space a task uses is state");
}

#[test]
fn cache_line_traffic_leaves_the_digest_alone() {
    let m = machine();
    let before = m.digest();
    m.set_cpu(CpuId::new(1));
    m.line_access(SharedLine::SpaceCount(SpaceId(1)), LineAccess::Atomic);
    m.set_cpu(CpuId::new(0));
    m.line_access(SharedLine::SpaceCount(SpaceId(1)), LineAccess::Read);
    assert_eq!(before, m.digest(), "costs are not state");
}
