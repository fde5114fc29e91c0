//! The scenarios `lazymmu check` explores, the known-bad variants it must
//! catch, and the check itself. Every scenario runs on the one machine.
//!
//! - Scripted scenarios ([`Spec`]): two CPUs, two or three tasks, a few
//!   page-table entries, optionally an interrupt handler that changes
//!   kernel mappings. Workload-shaped ones give each page-table workload's
//!   lazy-section shape in small size; contract ones aim at one clause of
//!   docs/design.md §2 and §6 each.
//! - The page-table workloads themselves in small size ([`SimScenario`]).
//! - The neighbours' workloads in tiny size ([`NeighbourSystem`]).
//!
//! A [`Variant`] changes the configuration to a known-bad one by breaking
//! the library's environment or arch through the machine's fault switches,
//! or by picking another design or one of the library's known-bad
//! variants; the library code is the same.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::choice::Chooser;
use crate::explore::{
    catching, replay, Bounds, Explorer, Found, Progress, ReplayOutcome, Report, RunOutcome, System,
};
use crate::machine::Offers;
use crate::neighbours::{self, NeighbourSystem};
use crate::pct::RandomSearch;
use crate::run::run_with;
use crate::scenario::{DesignKind, RunConfig};
use crate::script::{Action, Arch, Design, Faults, Spec, TaskSpec};

/// A named scenario.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Name used in traces and on the command line.
    pub name: &'static str,
    /// What it exercises.
    pub about: &'static str,
    /// The machine it runs (default design, no faults).
    pub spec: Spec,
}

const fn w(entry: u8) -> Action {
    Action::Write {
        entry,
        kernel: false,
    }
}

const fn k(entry: u8) -> Action {
    Action::Write {
        entry,
        kernel: true,
    }
}

const fn rb(entry: u8) -> Action {
    Action::ReadBack { entry }
}

const fn ft(table: u8) -> Action {
    Action::FreeTable { table }
}

/// Touches user pages `[first, first + count)` on the running CPU.
const fn touch(first: u8, count: u8) -> Action {
    Action::Touch {
        first,
        count,
        kernel: false,
    }
}

/// Touches kernel pages `[first, first + count)` on the running CPU.
const fn ktouch(first: u8, count: u8) -> Action {
    Action::Touch {
        first,
        count,
        kernel: true,
    }
}

const fn zap(first: u8, count: u8) -> Action {
    Action::Zap { first, count }
}

const fn protect(first: u8, count: u8) -> Action {
    Action::Protect { first, count }
}

const fn zap_tables(first: u8, count: u8) -> Action {
    Action::ZapTables { first, count }
}

use Action::{DeviceWindow as DW, Query as Q};

use Action::{Disable as D, Enable as E, Pause as P, Resume as R};

fn task(name: &'static str, cpu: usize, actions: &[Action]) -> TaskSpec {
    TaskSpec {
        name,
        cpu,
        actions: actions.to_vec(),
    }
}

fn spec(arch: Arch, tasks: Vec<TaskSpec>, handler: &[Action], migrate: bool) -> Spec {
    Spec {
        arch,
        design: Design::Counters,
        faults: Faults::default(),
        cpus: 2,
        tasks,
        handler: handler.to_vec(),
        max_interrupts: if handler.is_empty() { 0 } else { 1 },
        migrate,
        cached_tables: Vec::new(),
    }
}

/// The scripted contract and workload-shaped scenarios, in the order
/// `lazymmu check` runs them.
pub fn machine_scenarios() -> Vec<Scenario> {
    use Arch::{Arm64, Arm64Poe, XenPv};
    vec![
        // Workload shapes, small size.
        Scenario {
            name: "fork",
            about: "copy_page_range: child entries written and parent entries write-protected in one section, a second process forking on the other CPU",
            spec: spec(
                XenPv,
                vec![
                    task("parent", 0, &[E, w(0), w(1), w(2), w(3), D]),
                    task("other", 1, &[E, w(4), w(5), D]),
                ],
                &[],
                true,
            ),
        },
        Scenario {
            name: "munmap",
            about: "zap of a range while a second task zaps on the same CPU and a third on the other",
            spec: spec(
                XenPv,
                vec![
                    task("zap", 0, &[E, w(0), w(1), w(2), D]),
                    task("zap2", 0, &[E, w(4), D]),
                    task("zap3", 1, &[E, w(6), D]),
                ],
                &[],
                false,
            ),
        },
        Scenario {
            name: "exit",
            about: "exit_mmap: zap, then free the tables, with a kernel-mapping interrupt",
            spec: spec(
                XenPv,
                vec![
                    task("exit", 0, &[E, w(0), w(1), D, E, w(2), D]),
                    task("other", 1, &[E, w(4), D]),
                ],
                &[k(10)],
                false,
            ),
        },
        Scenario {
            name: "exit-free-tables",
            about: "exit_mmap: zap a PTE table in a section, then free it through the TLB gather while the other CPU's walk cache points to it",
            spec: Spec {
                cached_tables: vec![0],
                ..spec(
                    XenPv,
                    vec![
                        task("exit", 0, &[E, w(0), w(1), D, ft(0)]),
                        task("other", 1, &[E, w(8), D]),
                    ],
                    &[],
                    true,
                )
            },
        },
        Scenario {
            name: "mprotect",
            about: "change_protection over two PTE tables, one section per table",
            spec: spec(
                XenPv,
                vec![
                    task("mprotect", 0, &[E, w(0), w(1), D, E, w(2), w(3), D]),
                    task("other", 0, &[E, w(5), D]),
                ],
                &[],
                true,
            ),
        },
        Scenario {
            name: "mremap",
            about: "move_ptes: clear at the source and write at the destination in one section",
            spec: spec(
                XenPv,
                vec![
                    task("mremap", 0, &[E, w(0), w(8), w(1), w(9), D]),
                    task("other", 1, &[E, w(4), D]),
                ],
                &[],
                true,
            ),
        },
        Scenario {
            name: "vmalloc",
            about: "vmap/vunmap of kernel ranges on arm64 (deferred barriers), with migration",
            spec: spec(
                Arm64,
                vec![
                    task("vmap", 0, &[E, k(0), k(1), k(2), D]),
                    task("vunmap", 1, &[E, k(4), D]),
                    task("waiter", 0, &[E, k(6), D]),
                ],
                &[],
                true,
            ),
        },
        Scenario {
            name: "kasan",
            about: "KASAN shadow populate: each entry written and read back under pause/resume inside a section",
            spec: spec(
                XenPv,
                vec![
                    task("kasan", 0, &[E, w(0), P, k(8), rb(8), R, w(1), D]),
                    task("other", 0, &[E, w(4), D]),
                    task("cpu1", 1, &[w(6)]),
                ],
                &[],
                false,
            ),
        },
        Scenario {
            name: "debug-pagealloc",
            about: "a zap that mid-section allocates a page whose kernel mapping changes in a nested section, plus an interrupt doing the same",
            spec: spec(
                XenPv,
                vec![
                    task("zap", 0, &[E, w(0), E, k(8), D, w(1), D]),
                    task("other", 1, &[E, w(4), D]),
                ],
                &[E, k(10), D],
                false,
            ),
        },
        // Contract scenarios.
        Scenario {
            name: "nested-pause",
            about: "nested sections with a pause inside and read-backs while paused",
            spec: spec(
                XenPv,
                vec![
                    task(
                        "nested",
                        0,
                        &[E, w(0), E, w(1), P, rb(1), w(2), rb(2), R, w(3), D, D],
                    ),
                    task("waiter", 0, &[E, w(5), D]),
                ],
                &[],
                false,
            ),
        },
        Scenario {
            name: "irq-kernel-mapping",
            about: "an interrupt handler updates a kernel mapping in the middle of a section, and asks whether lazy mode is active",
            spec: spec(
                XenPv,
                vec![
                    task("section", 0, &[E, w(0), E, w(1), D, w(2), D]),
                    task("cpu1", 1, &[E, w(4), D]),
                ],
                &[k(10), Q],
                false,
            ),
        },
        Scenario {
            name: "switch-windows",
            about: "a context switch in every window of enable, disable, pause and resume, on both CPUs and with migration",
            spec: spec(
                XenPv,
                vec![
                    task("a", 0, &[E, w(0), P, w(1), R, w(2), D]),
                    task("b", 0, &[E, w(4), D]),
                    task("c", 1, &[E, w(6), D]),
                ],
                &[],
                true,
            ),
        },
        Scenario {
            name: "arm64-migrate",
            about: "a task migrating with arm64 barriers pending, an interrupt mapping kernel memory",
            spec: spec(
                Arm64,
                vec![
                    task("a", 0, &[E, k(0), k(1), D, rb(1)]),
                    task("b", 0, &[E, k(3), D]),
                    task("c", 1, &[E, k(5), D]),
                ],
                &[k(10)],
                true,
            ),
        },
        Scenario {
            name: "pkeys-nested",
            about: "arm64 with POE-protected page tables: nested sections, a kernel-mapping interrupt (exception entry and return), preemption and migration",
            spec: spec(
                Arm64Poe,
                vec![
                    task("a", 0, &[E, k(0), E, k(1), D, k(2), D]),
                    task("b", 0, &[E, k(4), D, k(5)]),
                    task("c", 1, &[E, k(6), P, k(7), R, D]),
                ],
                &[k(10)],
                true,
            ),
        },
        Scenario {
            name: "pkeys-window-migrate",
            about: "arm64 with POE: a task writing outside any section migrates after reading its CPU's id, and the CPU it left takes a task preempted inside a section",
            spec: spec(
                Arm64Poe,
                vec![
                    task("section", 0, &[E, k(0), k(1), D]),
                    task("writer", 0, &[k(4), k(5)]),
                ],
                &[],
                true,
            ),
        },
        Scenario {
            name: "xen-multicall-switch",
            about: "a Xen PV context switch with a partly filled multicall buffer",
            spec: spec(
                XenPv,
                vec![
                    task("a", 0, &[E, w(0), w(1), w(2), D]),
                    task("b", 0, &[E, w(3), w(4), D]),
                    task("c", 1, &[w(6)]),
                ],
                &[],
                true,
            ),
        },
    ]
}

/// The scenarios that drive each backend's range operations, flushes and
/// hooks to where a contract of DESIGN.md §6 can break: a CPU caching the
/// pages a zap or mprotect changes (the last page of the range included),
/// another CPU's walk cache holding tables a zap frees, a switch or
/// migration while arm64 owes barriers, a key register a section finds at
/// a value of the task's own, a read-back inside an s390 section.
pub fn backend_scenarios() -> Vec<Scenario> {
    use Arch::{Arm64, Arm64Poe, PpcHash, Sparc64, X86Pks, XenPv, S390, X86};
    let user = |arch, name, about, op: Action, handler: &[Action]| Scenario {
        name,
        about,
        spec: spec(
            arch,
            vec![
                task("mm", 0, &[touch(0, 4), op]),
                task("user", 1, &[touch(0, 4)]),
            ],
            handler,
            false,
        ),
    };
    vec![
        user(
            X86,
            "x86-munmap",
            "x86: zap of four pages both CPUs cache, flushed locally and by shootdown",
            zap(0, 4),
            &[],
        ),
        user(
            X86,
            "x86-mprotect",
            "x86: four cached pages made read-only, every downgrade invalidated",
            protect(0, 4),
            &[],
        ),
        Scenario {
            name: "x86-free-tables",
            about: "x86: a zap frees two emptied PTE tables through a one-frame gather batch while both CPUs' walk caches hold them",
            spec: Spec {
                cached_tables: vec![0, 1],
                ..spec(
                    X86,
                    vec![
                        task("exit", 0, &[zap_tables(0, 2)]),
                        task("user", 1, &[touch(0, 2)]),
                    ],
                    &[],
                    false,
                )
            },
        },
        Scenario {
            name: "x86-pks-window",
            about: "x86 with PKS: nested sections inside a device-memory key window of the task's own, an interrupt (exception entry and return), migration",
            spec: spec(
                X86Pks,
                vec![
                    task("a", 0, &[DW, E, k(0), E, k(1), D, D, DW]),
                    task("b", 0, &[k(4), E, k(5), D]),
                ],
                &[k(10)],
                true,
            ),
        },
        Scenario {
            name: "poe-window",
            about: "arm64 with POE: a section inside a device-memory key window of the task's own, preemption and migration",
            spec: spec(
                Arm64Poe,
                vec![
                    task("a", 0, &[DW, E, k(0), k(1), D, DW]),
                    task("b", 0, &[E, k(4), D]),
                ],
                &[],
                true,
            ),
        },
        user(
            XenPv,
            "xen-munmap",
            "Xen PV: zap of four cached pages, the flush queued as multicall entries",
            zap(0, 4),
            &[],
        ),
        user(
            Arm64,
            "arm64-munmap",
            "arm64: zap of four cached pages by tlbi",
            zap(0, 4),
            &[],
        ),
        Scenario {
            name: "arm64-barriers-migrate",
            about: "arm64: a section maps kernel pages another CPU just found absent, and migrates there with its barriers owed",
            spec: spec(
                Arm64,
                vec![
                    task("vmap", 0, &[E, k(12), k(13), D]),
                    task("reader", 1, &[ktouch(12, 2)]),
                ],
                &[],
                true,
            ),
        },
        user(
            PpcHash,
            "ppc-hash-mprotect",
            "powerpc hash: four cached pages made read-only, hash invalidations batched per CPU, an interrupt mapping kernel memory",
            protect(0, 4),
            &[k(10)],
        ),
        Scenario {
            name: "ppc-hash-remap",
            about: "powerpc hash: two cached pages remapped inside a section, their invalidations batched until leave and no flush after it, while another CPU uses them",
            // The other CPU's hash fault on a remapped page sets
            // `H_PAGE_HASHPTE` in the new entry, as `__hash_page_4K` does.
            spec: spec(
                PpcHash,
                vec![
                    task("remap", 0, &[touch(0, 2), E, w(0), w(1), D]),
                    task("user", 1, &[touch(0, 2)]),
                ],
                &[],
                false,
            ),
        },
        user(
            Sparc64,
            "sparc64-munmap",
            "sparc64: zap of four cached pages, TSB/TLB flushes batched per CPU, an interrupt mapping kernel memory",
            zap(0, 4),
            &[k(10)],
        ),
        user(
            S390,
            "s390-munmap",
            "s390: zap of four cached pages, the entries cached and applied with one IPTE",
            zap(0, 4),
            &[],
        ),
        Scenario {
            name: "s390-read-back",
            about: "s390: entries written and read back inside a section (served from the CPU's cache), preemption, migration, a kernel-mapping interrupt",
            spec: spec(
                S390,
                vec![
                    task("a", 0, &[E, w(0), rb(0), w(1), rb(1), D]),
                    task("b", 0, &[E, w(4), rb(4), D]),
                ],
                &[k(10)],
                true,
            ),
        },
    ]
}

/// The tiny scenario whose schedule count is computed by hand: one CPU,
/// two tasks of two writes each, no lazy sections, no interrupts. Its
/// schedules are the C(4, 2) = 6 interleavings of the writes.
pub fn tiny() -> Scenario {
    Scenario {
        name: "tiny",
        about: "two tasks of two writes on one CPU",
        spec: Spec {
            cpus: 1,
            ..spec(
                Arch::XenPv,
                vec![task("a", 0, &[w(0), w(1)]), task("b", 0, &[w(2), w(3)])],
                &[],
                false,
            )
        },
    }
}

/// A simulator workload in small size, explored through the simulator's
/// own choice points.
#[derive(Clone, Debug)]
pub struct SimScenario {
    /// Name used in traces and on the command line.
    pub name: &'static str,
    /// What it exercises.
    pub about: &'static str,
    /// The run (default design; the variant picks the design).
    pub config: RunConfig,
}

impl System for SimScenario {
    fn run(&self, chooser: &mut dyn Chooser) -> RunOutcome {
        catching(|| {
            let result = run_with(&self.config, chooser);
            RunOutcome {
                violation: result.violations.into_iter().next(),
                stopped: false,
            }
        })
    }

    /// A workload's programs are per task; everything they share (page
    /// tables, frames, TLBs, lazy TLB's CPU and address-space state) is
    /// the machine's.
    fn partial_order(&self) -> bool {
        true
    }
}

/// Every simulator workload in small size: 2 CPUs, 2 tasks, one call of 2
/// pages each (one PTE table per task and range), on the backend whose lazy
/// behaviour it exercises most. `exit` is left out: its teardown passes
/// some four thousand choice points per run.
pub fn simulator_scenarios() -> Vec<SimScenario> {
    use crate::scenario::{BackendKind as B, ModeKind, WorkloadKind as W};
    let small = |name, about, backend, workload| {
        let mut config = RunConfig::new(backend, workload, ModeKind::Lazy);
        config.pages = 2;
        config.calls = 1;
        config.cpus = 2;
        config.tasks = 2;
        config.rates = None;
        config.offers = Offers::ALL;
        SimScenario {
            name,
            about,
            config,
        }
    };
    // A small workload with its configuration changed by `change`.
    let with = |(name, about, backend, workload): SmallWorkload,
                change: &dyn Fn(&mut RunConfig)| {
        let mut scenario = small(name, about, backend, workload);
        change(&mut scenario.config);
        scenario
    };
    vec![
        small(
            "sim-fork",
            "simulator fork (copy with COW) on xen-pv",
            B::XenPv,
            W::Fork,
        ),
        small(
            "sim-munmap",
            "simulator munmap (zap) on xen-pv",
            B::XenPv,
            W::Munmap,
        ),
        small(
            "sim-mprotect",
            "simulator mprotect on xen-pv",
            B::XenPv,
            W::Mprotect,
        ),
        small(
            "sim-mremap",
            "simulator mremap on xen-pv",
            B::XenPv,
            W::Mremap,
        ),
        small(
            "sim-vmalloc",
            "simulator vmalloc map/free on arm64",
            B::Arm64,
            W::Vmalloc,
        ),
        small(
            "sim-kasan",
            "simulator KASAN populate/depopulate on xen-pv",
            B::XenPv,
            W::Kasan,
        ),
        small(
            "sim-debug-pagealloc",
            "simulator debug-pagealloc on xen-pv",
            B::XenPv,
            W::DebugPagealloc,
        ),
        small(
            "sim-mprotect-poe",
            "simulator mprotect on arm64-poe (key-register windows)",
            B::Arm64Poe,
            W::Mprotect,
        ),
    ]
    .into_iter()
    .chain(
        ON_EVERY_BACKEND
            .iter()
            .map(|&(name, about, backend, workload)| small(name, about, backend, workload)),
    )
    .chain(
        STRADDLING
            .iter()
            .map(|&workload| with(workload, &|config: &mut RunConfig| config.first_page = 511)),
    )
    .chain(HUGE.iter().map(|&workload| {
        with(workload, &|config: &mut RunConfig| {
            config.pages = 2 * crate::world::TABLE_PAGES;
            config.page_size = lazymmu::addr::PageSize::Size2M;
        })
    }))
    .collect()
}

/// A small simulator workload: its name, what it runs, the backend and
/// the workload.
type SmallWorkload = (
    &'static str,
    &'static str,
    crate::scenario::BackendKind,
    crate::scenario::WorkloadKind,
);

/// Workloads whose 2-page range straddles two PTE tables (it starts at
/// the last entry of one), so that the walks start in the middle of a
/// PMD entry's span and each call's sections cover two tables.
const STRADDLING: [SmallWorkload; 2] = {
    use crate::scenario::{BackendKind as B, WorkloadKind as W};
    [
        (
            "sim-munmap-straddle",
            "simulator munmap on x86 of a range across two PTE tables",
            B::X86,
            W::Munmap,
        ),
        (
            "sim-mremap-straddle",
            "simulator mremap on arm64 of a range across two PTE tables",
            B::Arm64,
            W::Mremap,
        ),
    ]
};

/// Workloads over a range of two 2 MiB leaves, as a VMA backed by
/// transparent huge pages maps it: `zap_huge_pmd` clears each leaf
/// (`tlb_remove_pmd_tlb_entry`, the gather's flush then strides 2 MiB),
/// `move_huge_pmd` moves each whole and flushes its old address at once,
/// `change_huge_pmd` changes each in place, `copy_huge_pmd` write-protects
/// each in parent and child.
const HUGE: [SmallWorkload; 5] = {
    use crate::scenario::{BackendKind as B, WorkloadKind as W};
    [
        (
            "sim-munmap-huge",
            "simulator munmap on arm64 of two 2 MiB leaves",
            B::Arm64,
            W::Munmap,
        ),
        (
            "sim-mremap-huge",
            "simulator mremap on arm64 of two 2 MiB leaves",
            B::Arm64,
            W::Mremap,
        ),
        (
            "sim-munmap-huge-x86",
            "simulator munmap on x86 of two 2 MiB leaves",
            B::X86,
            W::Munmap,
        ),
        (
            "sim-mprotect-huge",
            "simulator mprotect on x86 of two 2 MiB leaves",
            B::X86,
            W::Mprotect,
        ),
        (
            "sim-fork-huge",
            "simulator fork on x86 of two 2 MiB leaves",
            B::X86,
            W::Fork,
        ),
    ]
};

/// The user-space workloads on every other backend, so that each
/// backend's run operations, flushes and batching meet a second CPU, an
/// interrupt and a migration, and each call's result is checked
/// (`operation-failed`) on every backend. Left out: fork and mremap on
/// arm64-poe, whose key-register window around every page-table write
/// makes them 85 s and 38 s of CPU time at bound 2 (the POE windows are
/// checked by `sim-mprotect-poe` and `sim-munmap-arm64-poe`).
const ON_EVERY_BACKEND: [SmallWorkload; 25] = {
    use crate::scenario::{BackendKind as B, WorkloadKind as W};
    [
        ("sim-fork-x86", "simulator fork on x86", B::X86, W::Fork),
        (
            "sim-fork-x86-pks",
            "simulator fork on x86-pks",
            B::X86Pks,
            W::Fork,
        ),
        (
            "sim-fork-arm64",
            "simulator fork on arm64",
            B::Arm64,
            W::Fork,
        ),
        (
            "sim-fork-ppc-hash",
            "simulator fork on ppc-hash",
            B::PpcHash,
            W::Fork,
        ),
        (
            "sim-fork-sparc64",
            "simulator fork on sparc64",
            B::Sparc64,
            W::Fork,
        ),
        ("sim-fork-s390", "simulator fork on s390", B::S390, W::Fork),
        (
            "sim-munmap-x86",
            "simulator munmap on x86",
            B::X86,
            W::Munmap,
        ),
        (
            "sim-munmap-x86-pks",
            "simulator munmap on x86-pks",
            B::X86Pks,
            W::Munmap,
        ),
        (
            "sim-munmap-arm64",
            "simulator munmap on arm64",
            B::Arm64,
            W::Munmap,
        ),
        (
            "sim-munmap-arm64-poe",
            "simulator munmap on arm64-poe",
            B::Arm64Poe,
            W::Munmap,
        ),
        (
            "sim-munmap-ppc-hash",
            "simulator munmap on ppc-hash",
            B::PpcHash,
            W::Munmap,
        ),
        (
            "sim-munmap-sparc64",
            "simulator munmap on sparc64",
            B::Sparc64,
            W::Munmap,
        ),
        (
            "sim-munmap-s390",
            "simulator munmap on s390",
            B::S390,
            W::Munmap,
        ),
        (
            "sim-mprotect-x86",
            "simulator mprotect on x86",
            B::X86,
            W::Mprotect,
        ),
        (
            "sim-mprotect-x86-pks",
            "simulator mprotect on x86-pks",
            B::X86Pks,
            W::Mprotect,
        ),
        (
            "sim-mprotect-arm64",
            "simulator mprotect on arm64",
            B::Arm64,
            W::Mprotect,
        ),
        (
            "sim-mprotect-ppc-hash",
            "simulator mprotect on ppc-hash",
            B::PpcHash,
            W::Mprotect,
        ),
        (
            "sim-mprotect-sparc64",
            "simulator mprotect on sparc64",
            B::Sparc64,
            W::Mprotect,
        ),
        (
            "sim-mprotect-s390",
            "simulator mprotect on s390",
            B::S390,
            W::Mprotect,
        ),
        (
            "sim-mremap-x86",
            "simulator mremap on x86",
            B::X86,
            W::Mremap,
        ),
        (
            "sim-mremap-x86-pks",
            "simulator mremap on x86-pks",
            B::X86Pks,
            W::Mremap,
        ),
        (
            "sim-mremap-arm64",
            "simulator mremap on arm64",
            B::Arm64,
            W::Mremap,
        ),
        (
            "sim-mremap-ppc-hash",
            "simulator mremap on ppc-hash",
            B::PpcHash,
            W::Mremap,
        ),
        (
            "sim-mremap-sparc64",
            "simulator mremap on sparc64",
            B::Sparc64,
            W::Mremap,
        ),
        (
            "sim-mremap-s390",
            "simulator mremap on s390",
            B::S390,
            W::Mremap,
        ),
    ]
};

/// Task names of the big scenarios.
const BIG_TASKS: [&str; 16] = [
    "t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7", "t8", "t9", "t10", "t11", "t12", "t13", "t14",
    "t15",
];

/// CPUs of the big scenarios.
pub const BIG_CPUS: usize = 8;

/// Scenarios too big for exhaustive search, for `check --random`: 8 CPUs
/// and 16 tasks, two per CPU. Not in the default check ([`all`]); found by
/// name ([`find`]) so that their traces replay.
pub fn random_scenarios() -> Vec<Entry> {
    use crate::scenario::{BackendKind as B, ModeKind, WorkloadKind as W};
    // Each task maps its own entry in a section; the odd ones nest a
    // second section and read the entry back paused in it; an interrupt
    // maps kernel memory on any CPU; tasks migrate.
    let tasks = BIG_TASKS
        .iter()
        .enumerate()
        .map(|(i, &name)| {
            let e = i as u8;
            let actions: &[Action] = if i % 2 == 0 {
                &[E, w(e), D]
            } else {
                &[E, w(e), E, P, rb(e), R, D, D]
            };
            task(name, i % BIG_CPUS, actions)
        })
        .collect();
    let script = Scenario {
        name: "big-sections",
        about: "8 CPUs, 16 tasks: sections (some nested, with paused read-backs), a kernel-mapping interrupt, migration",
        spec: Spec {
            cpus: BIG_CPUS,
            ..spec(Arch::XenPv, tasks, &[k(10)], true)
        },
    };
    let big = |name, about, backend, workload| {
        let mut config = RunConfig::new(backend, workload, ModeKind::Lazy);
        config.pages = 2;
        config.cpus = BIG_CPUS;
        config.tasks = 2 * BIG_CPUS;
        config.rates = None;
        config.offers = Offers::ALL;
        Entry::Simulator(SimScenario {
            name,
            about,
            config,
        })
    };
    vec![
        Entry::Machine(script),
        big(
            "big-sim-munmap",
            "simulator munmap on xen-pv, 8 CPUs, 16 tasks",
            B::XenPv,
            W::Munmap,
        ),
        big(
            "big-sim-mprotect-poe",
            "simulator mprotect on arm64-poe, 8 CPUs, 16 tasks",
            B::Arm64Poe,
            W::Mprotect,
        ),
    ]
}

/// A scenario of any kind.
#[derive(Clone, Debug)]
pub enum Entry {
    /// A scripted scenario.
    Machine(Scenario),
    /// A page-table workload in small size.
    Simulator(SimScenario),
    /// A neighbour workload (lazy TLB, kernel top-level sync,
    /// protection-key windows) in its tiny size.
    Neighbour(NeighbourSystem),
}

impl Entry {
    /// Its name.
    pub fn name(&self) -> &str {
        match self {
            Entry::Machine(s) => s.name,
            Entry::Simulator(s) => s.name,
            Entry::Neighbour(s) => &s.name,
        }
    }

    /// What it exercises.
    pub fn about(&self) -> &'static str {
        match self {
            Entry::Machine(s) => s.about,
            Entry::Simulator(s) => s.about,
            Entry::Neighbour(s) => s.about,
        }
    }

    /// The system to explore under `variant`; `None` when the variant does
    /// not apply (the known-bad switches of the lazy mode are exercised by
    /// the scripted scenarios, the neighbours' by their own workloads).
    pub fn system(&self, variant: Variant) -> Option<Box<dyn System>> {
        match self {
            Entry::Machine(_) if variant.is_neighbour() => None,
            Entry::Machine(s) => Some(Box::new(variant.apply(&s.spec))),
            Entry::Simulator(s) => {
                let design = match variant {
                    Variant::Default => DesignKind::Counters,
                    Variant::PerCpu => DesignKind::PerCpu,
                    Variant::Stateful => DesignKind::Stateful,
                    _ => return None,
                };
                let mut config = s.config.clone();
                config.design = design;
                Some(Box::new(SimScenario {
                    config,
                    ..s.clone()
                }))
            }
            // The neighbours do not depend on the lazy-mode design; their
            // known-bad variants replace one policy's scenario.
            Entry::Neighbour(s) => {
                let bad = match variant {
                    Variant::Default => return Some(Box::new(s.clone())),
                    Variant::PgmapPercpuPreemptible => ("pgmap-percpu", "pgmap-percpu-preemptible"),
                    Variant::CtxswitchLostIpi => ("ctxswitch-shootdown", "ctxswitch-lost-ipi"),
                    _ => return None,
                };
                if s.name != bad.0 {
                    return None;
                }
                let system = neighbours::variant(bad.1)?;
                Some(Box::new(system))
            }
        }
    }

    /// The bounds it is explored with: `bounds`, except that a simulator
    /// workload takes at most `sim_preemptions` preemptions when that is
    /// given.
    pub fn bounds(&self, bounds: Bounds, sim_preemptions: Option<u32>) -> Bounds {
        match (self, sim_preemptions) {
            (Entry::Simulator(_), Some(cap)) => Bounds {
                preemptions: Some(bounds.preemptions.map_or(cap, |b| b.min(cap))),
                ..bounds
            },
            _ => bounds,
        }
    }
}

/// Every scenario `lazymmu check` runs: the machine's, the simulator's
/// workloads, then the neighbours'.
pub fn all() -> Vec<Entry> {
    machine_scenarios()
        .into_iter()
        .chain(backend_scenarios())
        .map(Entry::Machine)
        .chain(simulator_scenarios().into_iter().map(Entry::Simulator))
        .chain(neighbours::scenarios().into_iter().map(Entry::Neighbour))
        .collect()
}

/// Finds a scenario by name (including `tiny` and the big ones of
/// [`random_scenarios`]).
pub fn find(name: &str) -> Option<Entry> {
    all()
        .into_iter()
        .chain(random_scenarios())
        .chain(std::iter::once(Entry::Machine(tiny())))
        .find(|s| s.name() == name)
}

/// A configuration to check: the default design or a known-bad variant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Variant {
    /// The library as shipped: counters in the task, transitions atomic
    /// with respect to context switches.
    #[default]
    Default,
    /// The per-CPU design as shipped (preemption off in the section).
    PerCpu,
    /// Linux 7.0's ordering: counter updated, then hook called, with
    /// preemption allowed in between, on Xen PV.
    Linux70Xen,
    /// A per-CPU design that allows preemption inside the section.
    PercpuPreemptible,
    /// A nested disable that does not flush.
    NestedNoFlush,
    /// Updates made in interrupt context are batched.
    IrqBatched,
    /// The stateful design, each section carrying the key-register value
    /// it found.
    Stateful,
    /// Nested stateful sections that save the key register in one per-task
    /// slot.
    StatefulSingleSlot,
    /// A TLB gather that frees page-table pages before the flush.
    GatherFreeBeforeFlush,
    /// Per-CPU protection-key window counts with preemption left on inside
    /// windows (neighbours: `pgmap`).
    PgmapPercpuPreemptible,
    /// Shootdown and flush IPIs that never arrive (neighbours:
    /// `ctxswitch`).
    CtxswitchLostIpi,
}

impl Variant {
    /// Every variant, the correct ones first.
    pub const ALL: [Variant; 11] = [
        Variant::Default,
        Variant::PerCpu,
        Variant::Stateful,
        Variant::Linux70Xen,
        Variant::PercpuPreemptible,
        Variant::NestedNoFlush,
        Variant::IrqBatched,
        Variant::StatefulSingleSlot,
        Variant::GatherFreeBeforeFlush,
        Variant::PgmapPercpuPreemptible,
        Variant::CtxswitchLostIpi,
    ];

    /// The known-bad variants, which the check must catch.
    pub const KNOWN_BAD: [Variant; 8] = [
        Variant::Linux70Xen,
        Variant::PercpuPreemptible,
        Variant::NestedNoFlush,
        Variant::IrqBatched,
        Variant::StatefulSingleSlot,
        Variant::GatherFreeBeforeFlush,
        Variant::PgmapPercpuPreemptible,
        Variant::CtxswitchLostIpi,
    ];

    /// The shipped designs, which must pass every scenario.
    pub const SHIPPED: [Variant; 3] = [Variant::Default, Variant::PerCpu, Variant::Stateful];

    /// The name on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Variant::Default => "default",
            Variant::PerCpu => "percpu",
            Variant::Linux70Xen => "linux70-xen",
            Variant::PercpuPreemptible => "percpu-preemptible",
            Variant::NestedNoFlush => "nested-no-flush",
            Variant::IrqBatched => "irq-batched",
            Variant::Stateful => "stateful",
            Variant::StatefulSingleSlot => "stateful-single-slot",
            Variant::GatherFreeBeforeFlush => "gather-free-before-flush",
            Variant::PgmapPercpuPreemptible => "pgmap-percpu-preemptible",
            Variant::CtxswitchLostIpi => "ctxswitch-lost-ipi",
        }
    }

    /// What it is.
    pub const fn about(self) -> &'static str {
        match self {
            Variant::Default => {
                "counters in the task; update and hook atomic w.r.t. context switch"
            }
            Variant::PerCpu => "state on the CPU; preemption off for the whole section",
            Variant::Linux70Xen => {
                "Linux 7.0 ordering: counter store, preemption possible, then the hook"
            }
            Variant::PercpuPreemptible => {
                "per-CPU state with preemption allowed inside the section"
            }
            Variant::NestedNoFlush => "a nested disable does not flush",
            Variant::IrqBatched => "updates made in interrupt context are batched",
            Variant::Stateful => {
                "state on the callers' stacks; each section restores the key register it found"
            }
            Variant::StatefulSingleSlot => {
                "nested stateful sections save the key register in one per-task slot"
            }
            Variant::GatherFreeBeforeFlush => {
                "the TLB gather frees page-table pages before the flush that covers them"
            }
            Variant::PgmapPercpuPreemptible => {
                "per-CPU protection-key window counts with preemption on inside windows"
            }
            Variant::CtxswitchLostIpi => "lazy-TLB shootdown and flush IPIs that never arrive",
        }
    }

    /// Whether the variant belongs to the neighbours' workloads (and
    /// applies to none of the scripted or page-table scenarios).
    pub const fn is_neighbour(self) -> bool {
        matches!(
            self,
            Variant::PgmapPercpuPreemptible | Variant::CtxswitchLostIpi
        )
    }

    /// Whether the check must find a violation.
    pub const fn is_known_bad(self) -> bool {
        !matches!(self, Variant::Default | Variant::PerCpu | Variant::Stateful)
    }

    /// The scripted scenario under this variant.
    pub fn apply(self, spec: &Spec) -> Spec {
        let mut spec = spec.clone();
        match self {
            Variant::Default => {}
            Variant::PerCpu => spec.design = Design::PerCpu,
            Variant::Linux70Xen => spec.faults.preemptible_transitions = true,
            Variant::PercpuPreemptible => {
                spec.design = Design::PerCpu;
                spec.faults.preemptible_transitions = true;
            }
            Variant::NestedNoFlush => spec.faults.flush_is_noop = true,
            Variant::IrqBatched => spec.faults.hide_interrupts = true,
            Variant::Stateful => spec.design = Design::Stateful,
            Variant::StatefulSingleSlot => spec.design = Design::StatefulSingleSlot,
            Variant::GatherFreeBeforeFlush => spec.faults.free_before_flush = true,
            // Neighbour variants: the machine scenarios run as shipped.
            Variant::PgmapPercpuPreemptible | Variant::CtxswitchLostIpi => {}
        }
        spec
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown variant name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownVariant(pub String);

impl fmt::Display for UnknownVariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown variant {:?}; known: ", self.0)?;
        for (i, v) in Variant::ALL.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(v.name())?;
        }
        Ok(())
    }
}

impl std::error::Error for UnknownVariant {}

impl FromStr for Variant {
    type Err = UnknownVariant;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Variant::ALL
            .into_iter()
            .find(|v| v.name() == s)
            .ok_or_else(|| UnknownVariant(s.to_owned()))
    }
}

/// The outcome of exploring one scenario.
#[derive(Clone, Debug)]
pub struct ScenarioReport {
    /// The scenario's name.
    pub scenario: String,
    /// The preemption bound it was explored with.
    pub bound: Option<u32>,
    /// What the explorer covered and found.
    pub report: Report,
}

/// The outcome of a whole check.
#[derive(Clone, Debug)]
pub struct CheckReport {
    /// The variant checked.
    pub variant: Variant,
    /// The limits used.
    pub bounds: Bounds,
    /// The randomised search made instead of an exhaustive one, if so.
    pub random: Option<RandomSearch>,
    /// One entry per scenario.
    pub scenarios: Vec<ScenarioReport>,
    /// Wall time of the whole check.
    pub elapsed: Duration,
}

impl CheckReport {
    /// Schedules explored over all scenarios.
    pub fn schedules(&self) -> u64 {
        self.scenarios.iter().map(|s| s.report.schedules).sum()
    }

    /// Runs cut short at a visited state.
    pub fn pruned(&self) -> u64 {
        self.scenarios.iter().map(|s| s.report.pruned).sum()
    }

    /// Options left untried by sleep sets.
    pub fn slept(&self) -> u64 {
        self.scenarios.iter().map(|s| s.report.slept).sum()
    }

    /// Schedules per second of wall time.
    pub fn schedules_per_second(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.schedules() as f64 / secs
        } else {
            0.0
        }
    }

    /// Every violation found, with the scenario it was found in.
    pub fn violations(&self) -> impl Iterator<Item = (&str, &Found)> {
        self.scenarios.iter().flat_map(|s| {
            s.report
                .violations
                .iter()
                .map(move |f| (s.scenario.as_str(), f))
        })
    }

    /// Whether every scenario held.
    pub fn holds(&self) -> bool {
        self.violations().next().is_none()
    }
}

/// Explores `scenarios` under `variant`; simulator workloads at most at
/// `sim_preemptions` when it is given (see [`Entry::bounds`]). Scenarios
/// the variant does not apply to are left out of the report.
pub fn check(
    scenarios: &[Entry],
    variant: Variant,
    bounds: Bounds,
    sim_preemptions: Option<u32>,
) -> CheckReport {
    check_with(scenarios, variant, bounds, sim_preemptions, &mut |_| {})
}

/// As [`check`], telling `progress` the scenario being explored and how
/// many of its schedules are done after every schedule. Scenarios are
/// explored on as many threads as the machine has cores, each scenario on
/// one thread (every run builds its own machine); the report lists them
/// in the order given.
pub fn check_with(
    scenarios: &[Entry],
    variant: Variant,
    bounds: Bounds,
    sim_preemptions: Option<u32>,
    progress: &mut dyn FnMut(Progress<'_>),
) -> CheckReport {
    let start = Instant::now();
    let reports = on_every_core(scenarios, progress, |s, progress| {
        let system = s.system(variant)?;
        let bounds = s.bounds(bounds, sim_preemptions);
        Some(ScenarioReport {
            scenario: s.name().to_owned(),
            bound: bounds.preemptions,
            report: Explorer::new(bounds).explore_with(s.name(), &*system, progress),
        })
    });
    CheckReport {
        variant,
        bounds,
        random: None,
        scenarios: reports,
        elapsed: start.elapsed(),
    }
}

/// How often an explorer worker tells the calling thread how far it is.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

/// The stack of each explorer worker thread: 8 MiB, a Linux main
/// thread's default (`ulimit -s`).
const WORKER_STACK_BYTES: usize = 8 << 20;

/// Runs `search` on every scenario, spread over the machine's cores, and
/// returns what it gives in the scenarios' order. `progress` is told, on
/// the calling thread, how far each scenario is.
fn on_every_core<F>(
    scenarios: &[Entry],
    progress: &mut dyn FnMut(Progress<'_>),
    search: F,
) -> Vec<ScenarioReport>
where
    F: Fn(&Entry, &mut dyn FnMut(Progress<'_>)) -> Option<ScenarioReport> + Sync,
{
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;

    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(scenarios.len())
        .max(1);
    let next = AtomicUsize::new(0);
    let mut results: Vec<Option<ScenarioReport>> = vec![None; scenarios.len()];
    let (tell, told) = mpsc::channel::<(usize, u64)>();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let tell = tell.clone();
                let (next, search) = (&next, &search);
                // The main thread's stack size: a backend's per-CPU state
                // is built on the stack (s390's 64 CPU caches), too big
                // for a spawned thread's default 2 MiB in a debug build.
                std::thread::Builder::new()
                    .stack_size(WORKER_STACK_BYTES)
                    .spawn_scoped(scope, move || {
                        let mut done = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(s) = scenarios.get(i) else { break };
                            // Telling wakes the calling thread: a few
                            // times a second is enough for a display.
                            let mut told_at: Option<Instant> = None;
                            let report = search(s, &mut |at| {
                                if told_at.is_none_or(|t| t.elapsed() >= PROGRESS_EVERY) {
                                    told_at = Some(Instant::now());
                                    let _ = tell.send((i, at.schedules));
                                }
                            });
                            if let Some(r) = &report {
                                let _ = tell.send((i, r.report.schedules));
                            }
                            done.push((i, report));
                        }
                        done
                    })
                    .expect("a worker thread for the explorer")
            })
            .collect();
        drop(tell);
        for (i, schedules) in told {
            progress(Progress {
                scenario: scenarios[i].name(),
                schedules,
            });
        }
        for handle in handles {
            let done = handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            for (i, report) in done {
                results[i] = report;
            }
        }
    });
    results.into_iter().flatten().collect()
}

/// Samples the schedules of `scenarios` under `variant` by PCT
/// ([`crate::pct`]). Scenarios the variant does not apply to are left out
/// of the report.
pub fn sample(
    scenarios: &[Entry],
    variant: Variant,
    search: RandomSearch,
    progress: &mut dyn FnMut(Progress<'_>),
) -> CheckReport {
    let start = Instant::now();
    let reports = on_every_core(scenarios, progress, |s, progress| {
        let system = s.system(variant)?;
        Some(ScenarioReport {
            scenario: s.name().to_owned(),
            bound: None,
            report: crate::pct::sample(s.name(), &*system, search, progress),
        })
    });
    CheckReport {
        variant,
        bounds: Bounds::default(),
        random: Some(search),
        scenarios: reports,
        elapsed: start.elapsed(),
    }
}

/// Replays `picks` on `scenario` under `variant`; `None` when the variant
/// does not apply to the scenario.
pub fn replay_trace(scenario: &Entry, variant: Variant, picks: &[u32]) -> Option<ReplayOutcome> {
    Some(replay(&*scenario.system(variant)?, picks))
}
