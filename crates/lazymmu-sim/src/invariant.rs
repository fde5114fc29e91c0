//! The contracts the simulator checks (docs/design.md §6 and the neighbours'),
//! as one typed [`Invariant`], and the one [`Violation`] every check
//! reports.

use core::fmt;

use lazymmu::cpu::CpuId;

use crate::events::Event;

/// A checked contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Invariant {
    /// §6.1: after `disable`/`leave`/`flush` the walker sees every earlier
    /// write of the task.
    WritesVisible,
    /// §6.1: no CPU holds (or uses) a translation an operation promised to
    /// invalidate.
    StaleTranslation,
    /// §6.2: an update made in interrupt context did not take effect at
    /// once.
    IrqImmediate,
    /// §6.3: arch `enter`/`leave` did not alternate on a CPU.
    EnterLeave,
    /// §6.4: batched state was applied while another task's address space
    /// was current, deferred outside any section, or lost.
    BatchOwnership,
    /// §6.5: a protected page was accessed while the key register denied
    /// it, or was reachable while it should have been closed.
    KeyFault,
    /// §6.5: the key register was not restored exactly after a section, a
    /// window or an exception.
    KeyRestore,
    /// §6.6: a read-back inside a section observed a stale batched value.
    StaleReadBack,
    /// §6.7: an address space or page-table page was freed while a CPU
    /// may still use it.
    FreedInUse,
    /// A section slept (was switched out voluntarily) where its design
    /// forbids it (per-CPU state, preemption off).
    SleepInSection,
    /// A per-CPU protection-key window was preempted or migrated.
    PreemptedInWindow,
    /// A kernel access failed for lack of a synced top-level entry.
    MissingSync,
    /// The raw lazy-mode API was misused (overflow, underflow, forbidden),
    /// or refused a correctly nested call.
    Misuse,
    /// A direct page-table store where the platform forbids it (Xen PV
    /// page tables are read-only to the guest).
    ForbiddenStore,
    /// A library operation failed where the workload expected it to work,
    /// or returned without leaving the page tables as it promised (a
    /// simulator workload's call checks its result).
    OperationFailed,
    /// The run panicked.
    Panic,
}

impl Invariant {
    /// Every invariant.
    pub const ALL: [Invariant; 16] = [
        Invariant::WritesVisible,
        Invariant::StaleTranslation,
        Invariant::IrqImmediate,
        Invariant::EnterLeave,
        Invariant::BatchOwnership,
        Invariant::KeyFault,
        Invariant::KeyRestore,
        Invariant::StaleReadBack,
        Invariant::FreedInUse,
        Invariant::SleepInSection,
        Invariant::PreemptedInWindow,
        Invariant::MissingSync,
        Invariant::Misuse,
        Invariant::ForbiddenStore,
        Invariant::OperationFailed,
        Invariant::Panic,
    ];

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
            Invariant::FreedInUse => "freed-in-use",
            Invariant::SleepInSection => "sleep-in-section",
            Invariant::PreemptedInWindow => "preempted-in-window",
            Invariant::MissingSync => "missing-sync",
            Invariant::Misuse => "misuse",
            Invariant::ForbiddenStore => "forbidden-store",
            Invariant::OperationFailed => "operation-failed",
            Invariant::Panic => "panic",
        }
    }

    /// The item of docs/design.md §6 the invariant belongs to, if any.
    pub const fn section(self) -> Option<u8> {
        match self {
            Invariant::WritesVisible | Invariant::StaleTranslation => Some(1),
            Invariant::IrqImmediate => Some(2),
            Invariant::EnterLeave => Some(3),
            Invariant::BatchOwnership => Some(4),
            Invariant::KeyFault | Invariant::KeyRestore => Some(5),
            Invariant::StaleReadBack => Some(6),
            Invariant::FreedInUse => Some(7),
            _ => None,
        }
    }

    /// What the contract says.
    pub const fn description(self) -> &'static str {
        match self {
            Invariant::WritesVisible => "after disable the walker sees every earlier write",
            Invariant::StaleTranslation => {
                "no CPU uses a translation an operation promised to invalidate"
            }
            Invariant::IrqImmediate => "interrupt-context updates take effect immediately",
            Invariant::EnterLeave => "arch enter/leave alternate per CPU",
            Invariant::BatchOwnership => {
                "batched state belongs to the task that opened the section"
            }
            Invariant::KeyFault => {
                "protected pages are written only while the key register allows it"
            }
            Invariant::KeyRestore => {
                "the key register is restored exactly after every section and exception"
            }
            Invariant::StaleReadBack => "a read-back inside a section sees no stale batched value",
            Invariant::FreedInUse => {
                "no address space or page-table page is freed while a CPU may still use it"
            }
            Invariant::SleepInSection => "a section that cannot sleep does not sleep",
            Invariant::PreemptedInWindow => "a per-CPU window is never preempted",
            Invariant::MissingSync => "every kernel access finds its top-level entry",
            Invariant::Misuse => "the library accepts every correctly nested call",
            Invariant::ForbiddenStore => "read-only page tables are never stored to directly",
            Invariant::OperationFailed => {
                "every library operation the workload makes succeeds and leaves what it promised"
            }
            Invariant::Panic => "the run does not panic",
        }
    }
}

/// `3: arch enter/leave alternate per CPU` for a §6 item, `misuse: …`
/// otherwise.
impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.section() {
            Some(n) => write!(f, "{n}: {}", self.description()),
            None => write!(f, "{}: {}", self.name(), self.description()),
        }
    }
}

/// A violated contract, with where and the events that led to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Which contract.
    pub invariant: Invariant,
    /// Step (choice points so far).
    pub step: u64,
    /// CPU.
    pub cpu: CpuId,
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
            "invariant violated: {} ({}) at step {} on {} in task t{}: {}",
            self.invariant.name(),
            self.invariant,
            self.step,
            self.cpu,
            self.task,
            self.detail
        )?;
        writeln!(f, "last {} events:", self.events.len())?;
        for e in &self.events {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}
