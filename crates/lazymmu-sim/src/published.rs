//! Figures of lazy-MMU batching and its neighbours as they were published,
//! each with its exact source, to be printed next to the model's figure
//! for the same configuration.
//!
//! These figures validate the model; they are never an input to it. No cost
//! in this crate is, or may be, chosen by looking at them (docs/design.md §8).
//!
//! Each [`PublishedFigure`] keeps the figure exactly as its source printed
//! it ([`PublishedFigure::figure`], markers such as `(R)` and qualifiers
//! such as `~` included) and says how to read it ([`Reading`]); the figure
//! parses into a number with [`PublishedFigure::parse`].
//!
//! Searched for and not found: figures for the lazy MMU nesting rework
//! itself (Kevin Brodsky, "Nesting support for lazy MMU mode", v1–v5,
//! September–November 2025): its cover letters report testing (mm
//! kselftests on arm64 with DEBUG_VM, DEBUG_PAGEALLOC and KFENCE; builds on
//! other architectures) but no performance figures.

use core::fmt;

/// Where a figure was published.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Source {
    /// The subject line of the message or commit.
    pub title: &'static str,
    /// Who published it.
    pub author: &'static str,
    /// When, `YYYY-MM-DD`.
    pub date: &'static str,
    /// The list message id, and the commit and tree where it landed.
    pub reference: &'static str,
    /// Where to read it.
    pub url: &'static str,
}

/// Which mechanism a figure measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    /// arm64: `dsb ishst; isb` after kernel page-table writes deferred to
    /// the end of a lazy MMU section (Linux 6.16).
    Arm64BarrierBatching,
    /// Page tables write-protected by a protection key (kpkeys on arm64
    /// POE), the key register switched per write or once per lazy MMU
    /// section.
    ProtectedPageTables,
    /// s390: PTE updates of one table applied with one multi-entry IPTE
    /// when a lazy MMU section ends (proposal, 2026).
    S390IpteBatching,
    /// Lazy TLB `active_mm` references: refcounted, or shot down by IPI
    /// when the mm is freed (`CONFIG_MMU_LAZY_TLB_SHOOTDOWN`, Linux 6.4).
    LazyTlbShootdown,
}

/// How to read a figure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reading {
    /// Change in time taken, the compared configuration against its
    /// baseline, in percent: negative is faster, positive is an overhead.
    TimeChangePercent,
    /// Time saved by the compared configuration, at most this many percent.
    TimeSavedUpToPercent,
    /// How many times faster the compared configuration is.
    TimesFaster,
    /// How many times slower the compared configuration is.
    TimesSlower,
    /// How many times fewer events the compared configuration causes.
    TimesFewer,
    /// A quantity in the unit named: higher or lower is better as the unit
    /// says.
    Quantity(&'static str),
}

/// One published figure.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PublishedFigure {
    /// The mechanism measured.
    pub topic: Topic,
    /// Where it was published.
    pub source: &'static Source,
    /// The benchmark and its parameters.
    pub workload: &'static str,
    /// Pages per operation, when the workload has a size.
    pub pages: Option<u64>,
    /// The machine it ran on.
    pub machine: &'static str,
    /// The kernel it ran on, as the source states it.
    pub kernel: &'static str,
    /// What is compared with what.
    pub compared: &'static str,
    /// The figure exactly as published.
    pub figure: &'static str,
    /// How to read it.
    pub reading: Reading,
}

/// A statistical marker printed with a figure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Significance {
    /// `(I)`: a statistically significant improvement (95% confidence
    /// intervals do not overlap).
    Improvement,
    /// `(R)`: a statistically significant regression.
    Regression,
}

/// A word that qualifies a figure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Qualifier {
    /// `~` or `about`.
    About,
    /// `up to`.
    UpTo,
}

/// The unit a figure is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// `%`.
    Percent,
    /// `x`: a factor.
    Times,
    /// A plain count, `million` already multiplied in.
    Count,
}

/// A figure taken apart.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Figure {
    /// `(I)` or `(R)`, if printed.
    pub significance: Option<Significance>,
    /// `~`, `about` or `up to`, if printed.
    pub qualifier: Option<Qualifier>,
    /// The number.
    pub value: f64,
    /// Its unit.
    pub unit: Unit,
}

/// A figure that does not follow the grammar [`PublishedFigure::parse`]
/// reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FigureError {
    /// The text.
    pub figure: String,
}

impl fmt::Display for FigureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` is not `[(I)|(R)] [~|about|up to] NUMBER[%|x| million]`",
            self.figure
        )
    }
}

impl std::error::Error for FigureError {}

impl Reading {
    /// The unit a figure read this way is written in.
    pub const fn unit(self) -> Unit {
        match self {
            Reading::TimeChangePercent | Reading::TimeSavedUpToPercent => Unit::Percent,
            Reading::TimesFaster | Reading::TimesSlower | Reading::TimesFewer => Unit::Times,
            Reading::Quantity(_) => Unit::Count,
        }
    }
}

impl PublishedFigure {
    /// Takes [`PublishedFigure::figure`] apart: an optional `(I)` or `(R)`,
    /// an optional `~`, `about` or `up to`, a decimal number with an
    /// optional sign, and `%`, `x`, ` million` or nothing.
    ///
    /// # Errors
    /// [`FigureError`] when the text does not follow that grammar.
    pub fn parse(&self) -> Result<Figure, FigureError> {
        parse_figure(self.figure)
    }
}

fn parse_figure(text: &str) -> Result<Figure, FigureError> {
    let error = || FigureError {
        figure: text.to_string(),
    };
    let mut rest = text.trim();
    let significance = if let Some(after) = rest.strip_prefix("(I)") {
        rest = after.trim_start();
        Some(Significance::Improvement)
    } else if let Some(after) = rest.strip_prefix("(R)") {
        rest = after.trim_start();
        Some(Significance::Regression)
    } else {
        None
    };
    let qualifier = if let Some(after) = rest.strip_prefix('~') {
        rest = after;
        Some(Qualifier::About)
    } else if let Some(after) = rest.strip_prefix("about ") {
        rest = after;
        Some(Qualifier::About)
    } else if let Some(after) = rest.strip_prefix("up to ") {
        rest = after;
        Some(Qualifier::UpTo)
    } else {
        None
    };
    let (number, unit, scale) = if let Some(number) = rest.strip_suffix('%') {
        (number, Unit::Percent, 1.0)
    } else if let Some(number) = rest.strip_suffix('x') {
        (number, Unit::Times, 1.0)
    } else if let Some(number) = rest.strip_suffix(" million") {
        (number, Unit::Count, 1e6)
    } else {
        (rest, Unit::Count, 1.0)
    };
    let digits = number.strip_prefix('-').unwrap_or(number);
    let well_formed = !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
        && digits.starts_with(|c: char| c.is_ascii_digit())
        && digits.matches('.').count() <= 1;
    if !well_formed {
        return Err(error());
    }
    let value: f64 = number.parse().map_err(|_| error())?;
    Ok(Figure {
        significance,
        qualifier,
        value: value * scale,
        unit,
    })
}

/// Ryan Roberts, "arm64/mm: Batch barriers when updating kernel mappings":
/// the commit that defers arm64's `dsb ishst; isb` after valid kernel
/// page-table writes to the end of the lazy MMU section. Its message states
/// the vmalloc improvement. Posted as patch 11/11 of "Perf improvements for
/// hugetlb and vmalloc on arm64" v4; applied to the arm64 tree's
/// for-next/mm as 5fdd05efa1cd and merged for Linux 6.16.
pub const ARM64_BATCH_BARRIERS_COMMIT: Source = Source {
    title: "arm64/mm: Batch barriers when updating kernel mappings",
    author: "Ryan Roberts",
    date: "2025-04-22",
    reference: "commit 5fdd05efa1cd (arm64 for-next/mm, Linux 6.16); \
                <20250422081822.1836315-12-ryan.roberts@arm.com>",
    url: "https://lore.kernel.org/r/20250422081822.1836315-12-ryan.roberts@arm.com",
};

/// Ryan Roberts, "[PATCH v4 00/11] Perf improvements for hugetlb and
/// vmalloc on arm64": the cover letter's test_vmalloc.ko table (loop count
/// 500,000, the whole test repeated 10 times; times, smaller is better;
/// `(I)`/`(R)` where the 95% confidence intervals do not overlap), the
/// series against v6.15-rc3. The series also maps `vmalloc_huge()` with
/// contiguous-PTE blocks; the rows kept here are `h:0`, plain `vmalloc()`.
/// Read as quoted in full in Luiz Capitulino's reply
/// <4d18462f-8bc6-459e-9eeb-09e63559d854@redhat.com>.
pub const ARM64_PERF_SERIES_V4: Source = Source {
    title: "[PATCH v4 00/11] Perf improvements for hugetlb and vmalloc on arm64",
    author: "Ryan Roberts",
    date: "2025-04-22",
    reference: "<20250422081822.1836315-1-ryan.roberts@arm.com> (series merged for Linux 6.16)",
    url: "https://lore.kernel.org/r/20250422081822.1836315-1-ryan.roberts@arm.com",
};

/// Kevin Brodsky, "[RFC PATCH v5 00/18] pkeys-based page table hardening":
/// the cover letter's "Performance" table. kpkeys_hardened_pgtables on an
/// Amazon EC2 M7g (Graviton3), which has no POE: a mock writes
/// CONTEXTIDR_EL1 instead of POR_EL1, keeping the ISB after each write and
/// the pkey in the page tables. Figures are relative to the baseline
/// 6.17-rc1; "without batching" is the series without patch 18, "with
/// batching" switches the key once per lazy MMU section; `(R)` marks a
/// significant regression (95% confidence). micromm/fork and micromm/munmap
/// (David Hildenbrand's suite) map 1 GB, with page-sized (`h:0`) or huge
/// (`h:1`) folios, PTE-mapped in both cases; micromm/vmalloc is
/// test_vmalloc.ko. The author calls them a lower bound for real POE.
pub const KPKEYS_V5: Source = Source {
    title: "[RFC PATCH v5 00/18] pkeys-based page table hardening",
    author: "Kevin Brodsky",
    date: "2025-08-15",
    reference: "<20250815085512.2182322-1-kevin.brodsky@arm.com>",
    url: "https://lore.kernel.org/r/20250815085512.2182322-1-kevin.brodsky@arm.com",
};

/// Alexander Gordeev, "[RFC PATCH 2/2] s390/mm: Batch PTE updates in lazy
/// MMU mode": the commit message's figures for system calls "applied to
/// large memory ranges" (size, machine model and kernel not stated), and
/// the quiesce events of mprotect() on four LPARs in parallel. The same
/// figures are repeated in v2 5/6
/// <924c91e711e8b16470eb2af7e31d0b6ffcf2940c.1776264097.git.agordeev@linux.ibm.com>
/// and v4 2/4
/// <e50680152fc7d99215d53758fab4b87280d25c20.1781789772.git.agordeev@linux.ibm.com>.
pub const S390_IPTE_BATCH_RFC: Source = Source {
    title: "[RFC PATCH 2/2] s390/mm: Batch PTE updates in lazy MMU mode",
    author: "Alexander Gordeev",
    date: "2026-03-25",
    reference: "<a00e58e3293ead1881e0c5a5fb471edd23ea76aa.1774420057.git.agordeev@linux.ibm.com>",
    url: "https://lore.kernel.org/r/a00e58e3293ead1881e0c5a5fb471edd23ea76aa.1774420057.git.agordeev@linux.ibm.com",
};

/// Nicholas Piggin, "[PATCH v7 5/5] powerpc/64s: enable
/// MMU_LAZY_TLB_SHOOTDOWN": will-it-scale context_switch1_threads on a
/// 16-socket, 192-core POWER8, lazy TLB mm references refcounted (upstream)
/// against shot down; and the extra IPIs shootdown costs during a kernel
/// compile on a 144-CPU system. Commit 77f68ebeee20 in akpm/mm mm-stable,
/// merged for Linux 6.4 with "lazy tlb: shoot lazies, non-refcounting lazy
/// tlb mm reference handling scheme" (2655421ae69f). The same rates appear
/// in v4 4/4 (2021-06-05, <20210605014216.446867-5-npiggin@gmail.com>).
pub const LAZY_TLB_SHOOTDOWN_POWERPC: Source = Source {
    title: "[PATCH v7 5/5] powerpc/64s: enable MMU_LAZY_TLB_SHOOTDOWN",
    author: "Nicholas Piggin",
    date: "2023-02-03",
    reference: "commit 77f68ebeee20 (akpm/mm mm-stable, Linux 6.4); \
                <20230203071837.1136453-6-npiggin@gmail.com>",
    url: "https://lore.kernel.org/r/20230203071837.1136453-6-npiggin@gmail.com",
};

const M2: &str = "Apple M2";
const ALTRA: &str = "Ampere Altra";
const GRAVITON3: &str = "Amazon EC2 M7g (Graviton3)";
const S390: &str = "s390 (IBM Z; model not stated)";
const POWER8: &str = "16-socket 192-core POWER8";

const ARM64_SERIES: &str = "series v4 against v6.15-rc3";
const KPKEYS_OFF: &str = "kpkeys_hardened_pgtables without batching against 6.17-rc1";
const KPKEYS_ON: &str = "kpkeys_hardened_pgtables with lazy MMU batching against 6.17-rc1";
const S390_BATCH: &str = "IPTE batching in lazy MMU mode against per-PTE IPTE";

const fn arm64_vmalloc(
    pages: u64,
    workload: &'static str,
    machine: &'static str,
    figure: &'static str,
) -> PublishedFigure {
    PublishedFigure {
        topic: Topic::Arm64BarrierBatching,
        source: &ARM64_PERF_SERIES_V4,
        workload,
        pages: Some(pages),
        machine,
        kernel: "v6.15-rc3",
        compared: ARM64_SERIES,
        figure,
        reading: Reading::TimeChangePercent,
    }
}

const fn kpkeys(
    workload: &'static str,
    pages: Option<u64>,
    compared: &'static str,
    figure: &'static str,
) -> PublishedFigure {
    PublishedFigure {
        topic: Topic::ProtectedPageTables,
        source: &KPKEYS_V5,
        workload,
        pages,
        machine: GRAVITON3,
        kernel: "6.17-rc1",
        compared,
        figure,
        reading: Reading::TimeChangePercent,
    }
}

const fn s390(workload: &'static str, figure: &'static str, reading: Reading) -> PublishedFigure {
    PublishedFigure {
        topic: Topic::S390IpteBatching,
        source: &S390_IPTE_BATCH_RFC,
        workload,
        pages: None,
        machine: S390,
        kernel: "not stated",
        compared: S390_BATCH,
        figure,
        reading,
    }
}

const CONTEXT_SWITCH: &str = "will-it-scale context_switch1_threads, as many threads as CPUs";
const CONTEXT_SWITCHES: &str = "context switches per second, higher is better";

const fn lazy_tlb(
    workload: &'static str,
    machine: &'static str,
    compared: &'static str,
    figure: &'static str,
    unit: &'static str,
) -> PublishedFigure {
    PublishedFigure {
        topic: Topic::LazyTlbShootdown,
        source: &LAZY_TLB_SHOOTDOWN_POWERPC,
        workload,
        pages: None,
        machine,
        kernel: "upstream at posting (2023-02), version not stated",
        compared,
        figure,
        reading: Reading::Quantity(unit),
    }
}

/// 1 GB of 4 KiB pages, the micromm fork and munmap mapping.
const GIB_PAGES: u64 = 262_144;

/// Every figure found, grouped by source.
pub const PUBLISHED: &[PublishedFigure] = &[
    PublishedFigure {
        topic: Topic::Arm64BarrierBatching,
        source: &ARM64_BATCH_BARRIERS_COMMIT,
        workload: "vmalloc()",
        pages: None,
        machine: "not stated",
        kernel: "not stated",
        compared: "barriers batched in lazy MMU mode against one dsb+isb per kernel PTE write",
        figure: "up to 30%",
        reading: Reading::TimeSavedUpToPercent,
    },
    arm64_vmalloc(1, "test_vmalloc fix_size_alloc_test, p:1, h:0", M2, "2.14%"),
    arm64_vmalloc(
        1,
        "test_vmalloc fix_size_alloc_test, p:1, h:0",
        ALTRA,
        "1.79%",
    ),
    arm64_vmalloc(
        4,
        "test_vmalloc fix_size_alloc_test, p:4, h:0",
        M2,
        "(I) -9.93%",
    ),
    arm64_vmalloc(
        4,
        "test_vmalloc fix_size_alloc_test, p:4, h:0",
        ALTRA,
        "(I) -4.80%",
    ),
    arm64_vmalloc(
        16,
        "test_vmalloc fix_size_alloc_test, p:16, h:0",
        M2,
        "(I) -25.07%",
    ),
    arm64_vmalloc(
        16,
        "test_vmalloc fix_size_alloc_test, p:16, h:0",
        ALTRA,
        "(I) -14.24%",
    ),
    arm64_vmalloc(
        64,
        "test_vmalloc fix_size_alloc_test, p:64, h:0",
        M2,
        "(I) -29.43%",
    ),
    arm64_vmalloc(
        64,
        "test_vmalloc fix_size_alloc_test, p:64, h:0",
        ALTRA,
        "(I) -19.30%",
    ),
    arm64_vmalloc(
        256,
        "test_vmalloc fix_size_alloc_test, p:256, h:0",
        M2,
        "(I) -31.46%",
    ),
    arm64_vmalloc(
        256,
        "test_vmalloc fix_size_alloc_test, p:256, h:0",
        ALTRA,
        "(I) -20.60%",
    ),
    arm64_vmalloc(
        512,
        "test_vmalloc fix_size_alloc_test, p:512, h:0",
        M2,
        "(I) -31.96%",
    ),
    arm64_vmalloc(
        512,
        "test_vmalloc fix_size_alloc_test, p:512, h:0",
        ALTRA,
        "(I) -20.04%",
    ),
    kpkeys(
        "mmtests/kernbench, system time",
        None,
        KPKEYS_OFF,
        "(R) 3.97%",
    ),
    kpkeys(
        "mmtests/kernbench, system time",
        None,
        KPKEYS_ON,
        "(R) 2.17%",
    ),
    kpkeys("mmtests/kernbench, real time", None, KPKEYS_OFF, "0.30%"),
    kpkeys("mmtests/kernbench, real time", None, KPKEYS_ON, "0.11%"),
    kpkeys(
        "micromm/fork, 1 GB, h:0",
        Some(GIB_PAGES),
        KPKEYS_OFF,
        "(R) 217.31%",
    ),
    kpkeys(
        "micromm/fork, 1 GB, h:0",
        Some(GIB_PAGES),
        KPKEYS_ON,
        "-0.97%",
    ),
    kpkeys(
        "micromm/fork, 1 GB, h:1",
        Some(GIB_PAGES),
        KPKEYS_OFF,
        "(R) 275.25%",
    ),
    kpkeys(
        "micromm/fork, 1 GB, h:1",
        Some(GIB_PAGES),
        KPKEYS_ON,
        "(R) 2.25%",
    ),
    kpkeys(
        "micromm/munmap, 1 GB, h:0",
        Some(GIB_PAGES),
        KPKEYS_OFF,
        "(R) 15.57%",
    ),
    kpkeys(
        "micromm/munmap, 1 GB, h:0",
        Some(GIB_PAGES),
        KPKEYS_ON,
        "-1.95%",
    ),
    kpkeys(
        "micromm/munmap, 1 GB, h:1",
        Some(GIB_PAGES),
        KPKEYS_OFF,
        "(R) 169.53%",
    ),
    kpkeys(
        "micromm/munmap, 1 GB, h:1",
        Some(GIB_PAGES),
        KPKEYS_ON,
        "(R) 6.53%",
    ),
    kpkeys(
        "test_vmalloc fix_size_alloc_test, p:1, h:0",
        Some(1),
        KPKEYS_OFF,
        "(R) 17.35%",
    ),
    kpkeys(
        "test_vmalloc fix_size_alloc_test, p:1, h:0",
        Some(1),
        KPKEYS_ON,
        "(R) 14.62%",
    ),
    kpkeys(
        "test_vmalloc fix_size_alloc_test, p:4, h:0",
        Some(4),
        KPKEYS_OFF,
        "(R) 37.54%",
    ),
    kpkeys(
        "test_vmalloc fix_size_alloc_test, p:4, h:0",
        Some(4),
        KPKEYS_ON,
        "(R) 9.35%",
    ),
    kpkeys(
        "test_vmalloc fix_size_alloc_test, p:16, h:0",
        Some(16),
        KPKEYS_OFF,
        "(R) 66.08%",
    ),
    kpkeys(
        "test_vmalloc fix_size_alloc_test, p:16, h:0",
        Some(16),
        KPKEYS_ON,
        "(R) 3.15%",
    ),
    kpkeys(
        "test_vmalloc fix_size_alloc_test, p:64, h:0",
        Some(64),
        KPKEYS_OFF,
        "(R) 82.94%",
    ),
    kpkeys(
        "test_vmalloc fix_size_alloc_test, p:64, h:0",
        Some(64),
        KPKEYS_ON,
        "-0.39%",
    ),
    kpkeys(
        "test_vmalloc fix_size_alloc_test, p:256, h:0",
        Some(256),
        KPKEYS_OFF,
        "(R) 87.85%",
    ),
    kpkeys(
        "test_vmalloc fix_size_alloc_test, p:256, h:0",
        Some(256),
        KPKEYS_ON,
        "-1.67%",
    ),
    kpkeys(
        "test_vmalloc fix_size_alloc_test, p:16, h:1",
        Some(16),
        KPKEYS_OFF,
        "(R) 50.31%",
    ),
    kpkeys(
        "test_vmalloc fix_size_alloc_test, p:16, h:1",
        Some(16),
        KPKEYS_ON,
        "3.00%",
    ),
    kpkeys(
        "test_vmalloc fix_size_alloc_test, p:64, h:1",
        Some(64),
        KPKEYS_OFF,
        "(R) 59.73%",
    ),
    kpkeys(
        "test_vmalloc fix_size_alloc_test, p:64, h:1",
        Some(64),
        KPKEYS_ON,
        "2.23%",
    ),
    kpkeys(
        "test_vmalloc fix_size_alloc_test, p:256, h:1",
        Some(256),
        KPKEYS_OFF,
        "(R) 62.14%",
    ),
    kpkeys(
        "test_vmalloc fix_size_alloc_test, p:256, h:1",
        Some(256),
        KPKEYS_ON,
        "1.51%",
    ),
    kpkeys(
        "test_vmalloc random_size_alloc_test, p:1, h:0",
        None,
        KPKEYS_OFF,
        "(R) 77.82%",
    ),
    kpkeys(
        "test_vmalloc random_size_alloc_test, p:1, h:0",
        None,
        KPKEYS_ON,
        "-0.21%",
    ),
    kpkeys(
        "test_vmalloc vm_map_ram_test, p:1, h:0",
        Some(1),
        KPKEYS_OFF,
        "(R) 30.66%",
    ),
    kpkeys(
        "test_vmalloc vm_map_ram_test, p:1, h:0",
        Some(1),
        KPKEYS_ON,
        "(R) 27.30%",
    ),
    s390("mprotect() of a large range", "~15x", Reading::TimesFaster),
    s390("munmap() of a large range", "~3x", Reading::TimesFaster),
    s390("mremap() of a large range", "~28x", Reading::TimesFaster),
    s390("fork()", "~1.5x", Reading::TimesSlower),
    s390(
        "quiesce events, mprotect() on four LPARs in parallel",
        "~25x",
        Reading::TimesFewer,
    ),
    lazy_tlb(
        CONTEXT_SWITCH,
        POWER8,
        "lazy TLB mm refcounting (upstream)",
        "about 1 million",
        CONTEXT_SWITCHES,
    ),
    lazy_tlb(
        CONTEXT_SWITCH,
        POWER8,
        "CONFIG_MMU_LAZY_TLB_SHOOTDOWN",
        "118 million",
        CONTEXT_SWITCHES,
    ),
    lazy_tlb(
        "kernel compile",
        "144-CPU powerpc system",
        "CONFIG_MMU_LAZY_TLB_SHOOTDOWN against refcounting",
        "314",
        "additional IPI interrupts, lower is better",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_record_has_a_source_and_a_figure_in_its_unit() {
        for record in PUBLISHED {
            let s = record.source;
            for (name, text) in [
                ("title", s.title),
                ("author", s.author),
                ("reference", s.reference),
                ("workload", record.workload),
                ("machine", record.machine),
                ("kernel", record.kernel),
                ("compared", record.compared),
            ] {
                assert!(!text.trim().is_empty(), "{record:?}: empty {name}");
            }
            assert!(s.url.starts_with("https://lore.kernel.org/r/"), "{s:?}");
            assert!(
                s.reference.contains('<') && s.reference.contains('@'),
                "{s:?}"
            );
            let date = s.date.as_bytes();
            assert!(
                date.len() == 10 && date[4] == b'-' && date[7] == b'-',
                "{s:?}: date"
            );
            let figure = record.parse().unwrap_or_else(|e| panic!("{record:?}: {e}"));
            assert_eq!(figure.unit, record.reading.unit(), "{record:?}");
            assert_ne!(record.pages, Some(0), "{record:?}");
        }
    }

    #[test]
    fn significance_markers_agree_with_the_sign() {
        // (I) is an improvement (less time), (R) a regression (more).
        for record in PUBLISHED {
            let figure = record.parse().unwrap();
            match figure.significance {
                Some(Significance::Improvement) => assert!(figure.value < 0.0, "{record:?}"),
                Some(Significance::Regression) => assert!(figure.value > 0.0, "{record:?}"),
                None => {}
            }
        }
    }

    #[test]
    fn every_topic_has_figures() {
        for topic in [
            Topic::Arm64BarrierBatching,
            Topic::ProtectedPageTables,
            Topic::S390IpteBatching,
            Topic::LazyTlbShootdown,
        ] {
            assert!(PUBLISHED.iter().any(|r| r.topic == topic), "{topic:?}");
        }
    }

    #[test]
    fn figures_parse_as_printed() {
        let parsed = |text| parse_figure(text).unwrap();
        assert_eq!(
            parsed("(I) -25.07%"),
            Figure {
                significance: Some(Significance::Improvement),
                qualifier: None,
                value: -25.07,
                unit: Unit::Percent
            }
        );
        assert_eq!(
            parsed("(R) 217.31%").significance,
            Some(Significance::Regression)
        );
        let about = parsed("~1.5x");
        assert_eq!(
            (about.qualifier, about.value, about.unit),
            (Some(Qualifier::About), 1.5, Unit::Times)
        );
        let up_to = parsed("up to 30%");
        assert_eq!(
            (up_to.qualifier, up_to.value),
            (Some(Qualifier::UpTo), 30.0)
        );
        assert_eq!(parsed("118 million").value, 118e6);
        assert_eq!(parsed("about 1 million").qualifier, Some(Qualifier::About));
        assert_eq!(parsed("314").unit, Unit::Count);
        for bad in ["", "%", "fast", "1.2.3%", "(X) 4%", "--3%", ".5x", "30 %"] {
            assert!(parse_figure(bad).is_err(), "{bad:?} parsed");
        }
    }
}
