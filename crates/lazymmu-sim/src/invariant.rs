//! The contracts the simulator checks (DESIGN.md §6) and how a violation is
//! reported.

use core::fmt;

use crate::events::Event;

/// A checked contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Invariant {
    /// §6.1: after `disable`/`leave`/`flush` the walker sees every earlier
    /// write of the task.
    WritesVisible,
    /// §6.1: no CPU holds a translation an operation promised to
    /// invalidate.
    StaleTranslation,
    /// §6.2: an update made in interrupt context did not take effect at
    /// once.
    IrqImmediate,
    /// §6.3: arch `enter`/`leave` did not alternate on a CPU.
    EnterLeave,
    /// §6.4: batched state was applied while another task's address space
    /// was current, or lost across a switch.
    BatchOwnership,
    /// §6.5: a page-table page was written while the key register denied
    /// it.
    KeyFault,
    /// §6.5: the key register was not restored exactly after a section or
    /// an exception.
    KeyRestore,
    /// §6.6: a read-back inside a section observed a stale batched value.
    StaleReadBack,
    /// A section slept (was switched out voluntarily) where its design
    /// forbids it (per-CPU state, preemption off).
    SleepInSection,
    /// The raw lazy-mode API was misused (overflow, underflow, forbidden).
    Misuse,
    /// A direct page-table store where the platform forbids it (Xen PV
    /// page tables are read-only to the guest).
    ForbiddenStore,
    /// §6.7: a page-table page was freed while a CPU may still use it (a
    /// cached translation was walked through it).
    FreedInUse,
    /// A range operation failed (out of frames, bad range): the workload
    /// could not do what it meant to.
    OperationFailed,
}

impl Invariant {
    /// A short name for reports.
    pub const fn name(self) -> &'static str {
        match self {
            Invariant::WritesVisible => "writes-visible",
            Invariant::StaleTranslation => "stale-translation",
            Invariant::IrqImmediate => "irq-immediate",
            Invariant::EnterLeave => "enter-leave-alternate",
            Invariant::BatchOwnership => "batch-ownership",
            Invariant::KeyFault => "key-fault",
            Invariant::KeyRestore => "key-restore",
            Invariant::StaleReadBack => "stale-read-back",
            Invariant::SleepInSection => "sleep-in-section",
            Invariant::Misuse => "misuse",
            Invariant::ForbiddenStore => "forbidden-store",
            Invariant::FreedInUse => "freed-in-use",
            Invariant::OperationFailed => "operation-failed",
        }
    }
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A violated contract, with where and the events that led to it.
#[derive(Clone, Debug)]
pub struct Violation {
    /// Which contract.
    pub invariant: Invariant,
    /// Step (choice points so far).
    pub step: u64,
    /// CPU.
    pub cpu: usize,
    /// Task.
    pub task: usize,
    /// What exactly went wrong.
    pub detail: String,
    /// The last events before it, oldest first.
    pub events: Vec<Event>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "invariant violated: {} at step {} on cpu{} in task t{}: {}",
            self.invariant, self.step, self.cpu, self.task, self.detail
        )?;
        writeln!(f, "last {} events:", self.events.len())?;
        for e in &self.events {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}
