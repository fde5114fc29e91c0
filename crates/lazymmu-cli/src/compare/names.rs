//! The names `lazymmu compare` accepts and prints, each with a line saying
//! what it is: backends, workloads, designs, policies, and the primitives
//! counted in its tables (the glossary in `--help` and the README).
//!
//! The names themselves come from the simulator; this module only parses
//! them and explains them, so a name added there must be explained here
//! (the tests check every one).

use clap::builder::{PossibleValue, PossibleValuesParser};
use lazymmu_sim::cost::{Cost, Distance, Primitive, Software};
use lazymmu_sim::neighbours::NeighbourWorkload;
use lazymmu_sim::scenario::{BackendKind, DesignKind, WorkloadKind};

/// Selects every value of an option.
pub const ALL: &str = "all";

/// What a backend is.
pub fn backend_about(backend: BackendKind) -> &'static str {
    match backend {
        BackendKind::X86 => "x86-64 native: lazy mode batches nothing beyond the TLB gather",
        BackendKind::XenPv => "x86-64 Xen PV guest: entry writes and TLB ops as multicalls",
        BackendKind::Arm64 => "arm64: one dsb+isb per batch of valid kernel entry writes",
        BackendKind::PpcHash => "powerpc book3s64 hash MMU: hash-PTE invalidations, 192 a batch",
        BackendKind::Sparc64 => "sparc64: TSB/TLB flush addresses, 192 a batch",
        BackendKind::S390 => "s390: one multi-entry IPTE per PTE table",
        BackendKind::X86Pks => "x86-64, page tables write-protected by a PKS key",
        BackendKind::Arm64Poe => "arm64, page tables write-protected by a POE overlay",
    }
}

/// What a workload of the backend × workload matrix does.
pub fn workload_about(workload: WorkloadKind) -> &'static str {
    match workload {
        WorkloadKind::Fork => "copy an address space copy-on-write, as fork does",
        WorkloadKind::Munmap => "zap part of an address space",
        WorkloadKind::Exit => "zap a whole address space and free its tables",
        WorkloadKind::Mprotect => "change the protection of a range",
        WorkloadKind::Mremap => "move a range",
        WorkloadKind::Vmalloc => "map and free kernel ranges",
        WorkloadKind::Kasan => "KASAN shadow populate/depopulate, pausing to read back",
        WorkloadKind::DebugPagealloc => {
            "a zap whose allocation changes a kernel mapping in a nested section"
        }
    }
}

/// What an MM-neighbour workload does.
pub fn neighbour_about(workload: NeighbourWorkload) -> &'static str {
    match workload {
        NeighbourWorkload::Ctxswitch => {
            "lazy TLB: user tasks and kernel threads switching (--policy, --cpus)"
        }
        NeighbourWorkload::CtxswitchBench => {
            "lazy TLB: one process's threads switching through kernel threads"
        }
        NeighbourWorkload::VmallocGrow => {
            "kernel top-level sync: vmalloc growing in many processes (--processes)"
        }
        NeighbourWorkload::Pgmap => "nestable protection-key windows over device memory",
    }
}

/// The mechanism of the library a neighbour workload measures
/// (`lazymmu::mm`), for the heading of its table.
pub fn neighbour_mechanism(workload: NeighbourWorkload) -> &'static str {
    match workload {
        NeighbourWorkload::Ctxswitch | NeighbourWorkload::CtxswitchBench => "lazy TLB (active_mm)",
        NeighbourWorkload::VmallocGrow => "kernel top level (kernel_sync)",
        NeighbourWorkload::Pgmap => "key windows (pkey_window)",
    }
}

/// What a lazy-mode design is.
pub fn design_about(design: DesignKind) -> &'static str {
    match design {
        DesignKind::Counters => "two counters in the task (Linux 7.0)",
        DesignKind::Stateful => "a state value per section, on the caller's stack",
        DesignKind::PerCpu => "the counters with the CPU, preemption off in sections",
    }
}

/// What a neighbour policy is; `None` for a name no workload uses.
pub fn policy_about(policy: &str) -> Option<&'static str> {
    Some(match policy {
        "refcount" => "each borrow of an address space takes a reference",
        "shootdown" => "no references; the last user shoots lazy borrowers down",
        "x86" => "lazy CPUs are skipped by flush IPIs unless tables are freed",
        "fault" => "a missing kernel entry is faulted in",
        "push" => "a new kernel entry is copied to every process's table",
        "generation" => "a generation counter is checked at context switch",
        "prealloc" => "kernel second-level tables are preallocated at boot",
        "task" => "the window count is kept per task",
        "percpu" => "the window count is kept per CPU, preemption off",
        PERCPU_PREEMPTIBLE => "known bad: per-CPU count with preemption on",
        _ => return None,
    })
}

/// The known-bad pgmap policy `--policy` also accepts.
pub const PERCPU_PREEMPTIBLE: &str = "percpu-preemptible";

/// What each row of the cost table is: the machine primitives and the
/// kernel's own work the tables count; the glossary.
pub fn cost_about(cost: Cost) -> &'static str {
    match cost {
        Cost::Primitive(p) => match p {
            Primitive::Hypercall => {
                "a trap into the hypervisor (Xen mmu_update, mmuext_op, multicall)"
            }
            Primitive::MulticallEntry => "one entry of a Xen multicall batch",
            Primitive::MmuUpdate => "one Xen mmu_update request, validated and applied",
            Primitive::EmulatedWrite => "a write to a pinned Xen table, trapped and emulated",
            Primitive::Dsb => "an arm64 dsb barrier (or powerpc ptesync; tlbsync)",
            Primitive::Isb => "an arm64 isb (pipeline synchronisation)",
            Primitive::HashInvalidate => "one powerpc hash-page-table entry invalidation",
            Primitive::Ipte => "one s390 IPTE instruction, single or multi-entry",
            Primitive::IpteLocal => "one s390 IPTE with local scope: this CPU only",
            Primitive::Tlbi => {
                "one TLB invalidation broadcast by hardware (arm64 tlbi, sparc64 demap)"
            }
            Primitive::Invlpg => "one x86 invlpg (or a Xen per-page invalidation)",
            Primitive::FullFlush => "a full TLB flush of an address space",
            Primitive::Ipi => "an inter-processor interrupt to one remote CPU",
            Primitive::KeyWrite => "a write of the protection-key register (PKRS, POR_EL1)",
            Primitive::PteWrite => "a store of one page-table entry",
            Primitive::RootLoad => "a load of a page-table root (mov cr3, msr ttbr0_el1)",
        },
        Cost::Software(s) => match s {
            Software::ContextSwitch => "the scheduler's own part of a context switch",
            Software::Fault => "a kernel fault that only fixes up a top-level entry",
            Software::GenerationCheck => "a generation compare at context switch",
            Software::TableAlloc => "allocating and zeroing a page-table page",
            Software::EntryCopy => "the cache miss of copying a kernel top-level entry",
            Software::ForkCall => "fork's own work per call, measured (copy_process)",
            Software::ForkPage => "fork's own work per page copied, measured",
            Software::ExitCall => "exit's own work per call, measured (do_exit, exit_mmap)",
            Software::ExitPage => "exit's own work per page unmapped, measured",
            Software::MunmapCall => "munmap's own work per call, measured (VMA split)",
            Software::MunmapPage => "munmap's own work per page, measured (rmap, free)",
            Software::MprotectCall => "mprotect's own work per call, measured (mprotect_fixup)",
            Software::MprotectPage => "mprotect's own work per page changed, measured",
            Software::MremapCall => "mremap's own work per call, measured (move_vma)",
            Software::MremapPage => "mremap's own work per page moved, measured",
            Software::VmallocCall => "vmalloc's own work per call, derived from a measured call",
            Software::VmallocPage => "vmalloc's own work per page, derived from a measured call",
            Software::VfreeCall => "vfree's own work per call, derived from a measured call",
            Software::VfreePage => "vfree's own work per page, derived from a measured call",
        },
        Cost::Line(d) => match d {
            Distance::SmtSibling => "a cache line moving between SMT siblings of one core",
            Distance::SameSocket => "a cache line moving between cores of one socket",
            Distance::OtherSocket => "a cache line moving between sockets",
        },
    }
}

/// The glossary of cost names, one `name  meaning` line each.
pub fn glossary() -> String {
    let width = Cost::all().map(|c| c.name().len()).max().unwrap_or(0);
    Cost::all()
        .map(|c| format!("  {:<width$}  {}\n", c.name(), cost_about(c)))
        .collect()
}

fn values(
    names: impl IntoIterator<Item = (&'static str, &'static str)>,
) -> impl Iterator<Item = PossibleValue> {
    names
        .into_iter()
        .map(|(name, about)| PossibleValue::new(name).help(about))
}

/// `--backend`'s values.
pub fn backend_values() -> PossibleValuesParser {
    let all = std::iter::once((ALL, "every backend"));
    PossibleValuesParser::new(values(
        all.chain(
            BackendKind::ALL
                .iter()
                .map(|&b| (b.name(), backend_about(b))),
        ),
    ))
}

/// `--workload`'s values: the matrix's workloads and the neighbours'.
pub fn workload_values() -> PossibleValuesParser {
    let all = std::iter::once((ALL, "every workload"));
    let matrix = WorkloadKind::ALL
        .iter()
        .map(|&w| (w.name(), workload_about(w)));
    let neighbours = NeighbourWorkload::ALL
        .iter()
        .map(|&w| (w.name(), neighbour_about(w)));
    PossibleValuesParser::new(values(all.chain(matrix).chain(neighbours)))
}

/// `--design`'s values.
pub fn design_values() -> PossibleValuesParser {
    let all = std::iter::once((ALL, "each design, one matrix each"));
    PossibleValuesParser::new(values(
        all.chain(DesignKind::ALL.iter().map(|&d| (d.name(), design_about(d)))),
    ))
}

/// Every policy name, in the order of the workloads that use it.
pub fn policy_names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Vec::new();
    for workload in NeighbourWorkload::ALL {
        for &policy in workload.policies() {
            if !names.contains(&policy) {
                names.push(policy);
            }
        }
    }
    names.push(PERCPU_PREEMPTIBLE);
    names
}

/// `--policy`'s values.
pub fn policy_values() -> PossibleValuesParser {
    let all = std::iter::once((ALL, "every policy of each selected workload"));
    PossibleValuesParser::new(values(
        all.chain(
            policy_names()
                .into_iter()
                .map(|p| (p, policy_about(p).unwrap_or_default())),
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_policy_is_explained() {
        for policy in policy_names() {
            assert!(policy_about(policy).is_some(), "{policy}");
        }
    }

    #[test]
    fn the_glossary_names_every_cost() {
        let glossary = glossary();
        for c in Cost::all() {
            assert!(glossary.contains(&format!("  {} ", c.name())), "{c}");
        }
    }
}
