//! The machine digest that state pruning trusts: two points with the same
//! digest must have the same future, so every piece of state that decides
//! what happens next is in it, and what only decides costs is not.

use std::rc::{Rc, Weak};

use lazymmu::addr::SpaceId;
use lazymmu::cpu::CpuId;
use lazymmu::mm::{LineAccess, SharedLine};
use lazymmu_sim::choice::{Choice, ChoicePoint, Chooser, Site};
use lazymmu_sim::cost::Platform;
use lazymmu_sim::machine::{Kernel, Machine, MachineConfig};

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

/// Takes option 0 everywhere, but is not passive: the machine offers its
/// choice points to it (and so keeps the tasks' positions).
struct Attentive;

impl Chooser for Attentive {
    fn choose(&mut self, _point: &ChoicePoint, _options: &[Choice]) -> Option<usize> {
        Some(0)
    }
}

/// An interrupt handler that passes two choice points of its own and
/// changes nothing.
struct Handler(Weak<Machine>);

impl Kernel for Handler {
    fn interrupt(&self) {
        let m = self.0.upgrade().expect("the machine outlives its kernel");
        m.choice_point(Site::Primitive("handler_a"));
        m.choice_point(Site::Primitive("handler_b"));
    }
    fn run_unit(&self, _task: usize) -> bool {
        false
    }
}

fn machine_with_handler(interrupts: Option<u32>) -> Rc<Machine> {
    let mut config = MachineConfig::new(2, Platform::X86);
    config.offers.interrupts = interrupts;
    let m = Rc::new(Machine::new(config));
    m.cpu_tlb_state(CpuId::new(0));
    m.cpu_tlb_state(CpuId::new(1));
    m.set_chooser(Box::new(Attentive));
    m.set_kernel(Rc::new(Handler(Rc::downgrade(&m))));
    m
}

#[test]
fn an_interrupt_that_changes_nothing_leaves_the_digest_alone() {
    // The interrupted task resumes where it was, whatever choice points
    // the handler passed on its stack; with no limit on interrupts, how
    // many were taken decides nothing either.
    let m = machine_with_handler(None);
    m.choice_point(Site::Primitive("before"));
    let before = m.digest();
    m.interrupt();
    assert_eq!(before, m.digest(), "the handler's points are not state");
    m.choice_point(Site::Primitive("after"));
    assert_ne!(before, m.digest(), "the task's own points are");
    m.shut_down();
}

#[test]
fn interrupts_taken_are_state_under_a_limit() {
    // Under a limit, one interrupt fewer left means a different future.
    let m = machine_with_handler(Some(2));
    let before = m.digest();
    m.interrupt();
    assert_ne!(before, m.digest());
    m.shut_down();
}
