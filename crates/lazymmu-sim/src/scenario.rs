//! What a run is made of: a backend, a workload, eager or lazy, a design,
//! and the machine's parameters — and what comes out of it.

use core::fmt;
use core::str::FromStr;

use lazymmu::addr::PageSize;
use lazymmu::mm::active_mm::LazyTlbPolicy;

use crate::choice::{Rates, Trace};
use crate::cost::{Cost, Platform};
use crate::invariant::Violation;

macro_rules! named_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vm])* $variant),+ }

        impl $name {
            /// Every value, in table order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The name on the command line.
            pub const fn name(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                $name::ALL.iter().copied().find(|v| v.name() == s).ok_or_else(|| {
                    let names: Vec<_> = $name::ALL.iter().map(|v| v.name()).collect();
                    format!("unknown {} `{s}` (expected one of {})", stringify!($name).to_lowercase(), names.join(", "))
                })
            }
        }
    };
}

named_enum! {
    /// An arch backend, as named on the command line.
    BackendKind {
        /// x86-64 native.
        X86 => "x86",
        /// x86-64 Xen PV guest.
        XenPv => "xen-pv",
        /// arm64.
        Arm64 => "arm64",
        /// powerpc book3s64 hash MMU.
        PpcHash => "ppc-hash",
        /// sparc64.
        Sparc64 => "sparc64",
        /// s390 IPTE batching.
        S390 => "s390",
        /// x86-64 with page tables protected by PKS.
        X86Pks => "x86-pks",
        /// arm64 with page tables protected by POE.
        Arm64Poe => "arm64-poe",
    }
}

impl BackendKind {
    /// The cost-model platform the backend runs on.
    pub const fn platform(self) -> Platform {
        match self {
            BackendKind::X86 | BackendKind::X86Pks => Platform::X86,
            BackendKind::XenPv => Platform::XenPv,
            BackendKind::Arm64 | BackendKind::Arm64Poe => Platform::Arm64,
            BackendKind::PpcHash => Platform::PpcHash,
            BackendKind::Sparc64 => Platform::Sparc64,
            BackendKind::S390 => Platform::S390,
        }
    }

    /// Whether the backend uses the AArch64 page-table format.
    pub const fn is_aarch64(self) -> bool {
        matches!(self, BackendKind::Arm64 | BackendKind::Arm64Poe)
    }

    /// The lazy-TLB policy the architecture's kernel uses: x86's own (lazy
    /// CPUs skipped by flush IPIs, arch/x86/mm/tlb.c `should_flush_tlb()`)
    /// on x86 and Xen PV; the shootdown on powerpc, the one architecture
    /// that selects `MMU_LAZY_TLB_SHOOTDOWN` (arch/powerpc/Kconfig, `select
    /// MMU_LAZY_TLB_SHOOTDOWN if PPC_BOOK3S_64`); reference counting
    /// everywhere else (kernel/fork.c, `mmgrab_lazy_tlb()`).
    pub const fn lazy_tlb(self) -> LazyTlbPolicy {
        match self {
            BackendKind::X86 | BackendKind::X86Pks | BackendKind::XenPv => LazyTlbPolicy::X86,
            BackendKind::PpcHash => LazyTlbPolicy::Shootdown,
            BackendKind::Arm64
            | BackendKind::Arm64Poe
            | BackendKind::Sparc64
            | BackendKind::S390 => LazyTlbPolicy::Refcount,
        }
    }
}

named_enum! {
    /// A workload: a driver over the library's range operations.
    WorkloadKind {
        /// Copy an address space (copy-on-write), as fork does.
        Fork => "fork",
        /// Zap part of an address space.
        Munmap => "munmap",
        /// Zap a whole address space and free its tables.
        Exit => "exit",
        /// Change protection of a range.
        Mprotect => "mprotect",
        /// Move a range.
        Mremap => "mremap",
        /// Map and free kernel ranges.
        Vmalloc => "vmalloc",
        /// KASAN shadow populate/depopulate, pausing around each entry.
        Kasan => "kasan",
        /// A zap that, mid-section, allocates a page whose kernel mapping
        /// changes in a nested section.
        DebugPagealloc => "debug-pagealloc",
    }
}

named_enum! {
    /// With or without lazy sections.
    ModeKind {
        /// No lazy sections: every update takes effect at once.
        Eager => "eager",
        /// Range operations run inside lazy sections.
        Lazy => "lazy",
    }
}

named_enum! {
    /// Which lazy-mode design drives the backend.
    DesignKind {
        /// Two counters in the task (Linux 7.0).
        Counters => "counters",
        /// State values on the callers' stacks.
        Stateful => "stateful",
        /// State with the CPU, preemption off in sections.
        PerCpu => "percpu",
    }
}

/// Which measurement of the kernel's own work a run charges.
#[derive(Clone, Debug, Default)]
pub enum KernelWorkSource {
    /// None: only what the model charges for the MMU and its neighbours.
    None,
    /// The calibration shipped with the simulator
    /// ([`KernelWork::builtin`](crate::kernel_work::KernelWork::builtin)).
    #[default]
    Builtin,
    /// One derived from another calibration file.
    Given(std::sync::Arc<crate::kernel_work::KernelWork>),
}

/// Everything that defines a run. Two runs with equal configurations give
/// equal results.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Backend.
    pub backend: BackendKind,
    /// Workload.
    pub workload: WorkloadKind,
    /// Eager or lazy.
    pub mode: ModeKind,
    /// Lazy-mode design.
    pub design: DesignKind,
    /// Pages per system call.
    pub pages: u64,
    /// System calls each task makes in the measured stage.
    pub calls: u64,
    /// CPUs.
    pub cpus: usize,
    /// Tasks running the workload concurrently.
    pub tasks: usize,
    /// Seed of the random chooser.
    pub seed: u64,
    /// How often the chooser disturbs the run; `None` runs sequentially.
    pub rates: Option<Rates>,
    /// Cost overrides.
    pub costs: Vec<(Cost, u64)>,
    /// KASAN: read back without pausing (the hazard pause exists for).
    pub read_back_without_pause: bool,
    /// debug-pagealloc: the allocation inside the outer section sleeps
    /// (a `GFP_KERNEL` allocation), switching the task out and back in.
    pub sleep_in_section: bool,
    /// Break the eager path of protected backends: write page tables
    /// without opening the key register (a bug the simulator must catch).
    pub forget_key_open: bool,
    /// What the scheduler offers at a choice point.
    pub offers: crate::machine::Offers,
    /// The kernel's own work around each system call.
    pub kernel_work: KernelWorkSource,
    /// arm64 CPUs have FEAT_TLBIRANGE (Armv8.4 and later: Neoverse V1,
    /// Graviton3, Apple M2; not Neoverse N1 or Ampere Altra).
    pub tlb_range: bool,
    /// Protected page tables open the key register once per lazy MMU
    /// section (kpkeys with its batching patch); false: once per write.
    pub key_batching: bool,
    /// Before the measured stage every task has run on the next CPU too,
    /// so its address space is in two CPUs' masks (it migrated once).
    pub spread: bool,
    /// Where each task's user range starts, in pages past its base, which
    /// is aligned at every level: 0 starts it at a PTE table's first
    /// entry; 511 makes a 2-page range straddle two PTE tables, starting
    /// in the middle of a PMD entry's span, as most munmap and mremap
    /// ranges do.
    pub first_page: u64,
    /// The size of the leaves the user workloads map their range with:
    /// 4 KiB pages, or 2 MiB ones as a VMA backed by transparent huge
    /// pages is (`pages` and `first_page` then count whole 2 MiB leaves'
    /// worth of 4 KiB pages).
    pub page_size: PageSize,
}

impl RunConfig {
    /// A run with the defaults of `lazymmu compare`.
    pub fn new(backend: BackendKind, workload: WorkloadKind, mode: ModeKind) -> Self {
        Self {
            backend,
            workload,
            mode,
            design: DesignKind::Counters,
            pages: 4096,
            calls: 2,
            cpus: 4,
            tasks: 2,
            seed: 1,
            rates: Some(Rates::default()),
            costs: Vec::new(),
            read_back_without_pause: false,
            sleep_in_section: false,
            forget_key_open: false,
            offers: crate::machine::Offers::COMPARE,
            kernel_work: KernelWorkSource::Builtin,
            tlb_range: true,
            key_batching: true,
            spread: false,
            first_page: 0,
            page_size: PageSize::Size4K,
        }
    }
}

/// What a run produced.
#[derive(Clone, Debug)]
pub struct RunResult {
    /// The configuration.
    pub backend: BackendKind,
    /// Workload.
    pub workload: WorkloadKind,
    /// Mode.
    pub mode: ModeKind,
    /// Design.
    pub design: DesignKind,
    /// Non-zero counts, in table order.
    pub counts: Vec<(Cost, u64)>,
    /// Modelled cycles.
    pub cycles: u64,
    /// Modelled cycles of the interrupts, remote flushes and scheduling
    /// the chooser injected (not in `cycles`).
    pub disturbance_cycles: u64,
    /// Counts of those disturbances.
    pub disturbance_counts: Vec<(Cost, u64)>,
    /// System calls made in the measured stage (all tasks).
    pub calls: u64,
    /// PTE updates the workload made through the library (measured stage).
    pub pte_updates: u64,
    /// PTE updates of the whole run, setup included.
    pub pte_updates_total: u64,
    /// Invariant violations in all.
    pub violation_count: u64,
    /// The first violations in full.
    pub violations: Vec<Violation>,
    /// Choice points passed.
    pub steps: u64,
    /// Picks made (the replayable trace).
    pub trace: Trace,
    /// Bytes of lazy state the design keeps per task.
    pub bytes_per_task: usize,
    /// Preemptions and migrations taken.
    pub preemptions: u32,
    /// Of those, how many hit a task inside a lazy section.
    pub preempted_in_section: u64,
    /// Interrupts handled (each changed a kernel mapping).
    pub interrupts: u64,
    /// Digest of the final state (machine, workloads, deferred work).
    pub digest: u64,
}

impl RunResult {
    /// Violations of one invariant among those kept in full.
    pub fn violations_of(&self, invariant: crate::invariant::Invariant) -> usize {
        self.violations
            .iter()
            .filter(|v| v.invariant == invariant)
            .count()
    }

    /// The count of one row of the cost table.
    pub fn count(&self, row: impl Into<Cost>) -> u64 {
        let row = row.into();
        self.counts
            .iter()
            .find(|(p, _)| *p == row)
            .map_or(0, |&(_, n)| n)
    }
}
