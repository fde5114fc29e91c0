//! The one cost table: what each machine primitive and each piece of the
//! kernel's own work costs, in cycles, on each platform; the counters the
//! machine keeps of how often each ran; and the names `--cost NAME=CYCLES`
//! and the reports use.
//!
//! The table has three kinds of rows: the library's machine
//! [`Primitive`]s (a hypercall, a barrier, a TLB invalidation, a root
//! load...), which the machine counts as the library calls them;
//! [`Software`] operations, the kernel work around the MMU that a workload
//! does itself (the scheduler's part of a context switch, a page fault's
//! entry and exit, ...); and cache-line transfers between CPUs by their
//! [`Distance`] in the machine's topology, which the machine counts as the
//! library touches shared lines. New software operations — the kernel work
//! measured on a real kernel — are new [`Software`] rows with their costs;
//! nothing else changes.
//!
//! Every constant is cited where it is defined. Where a source gives
//! nanoseconds the figure is converted at the clock stated next to it.
//! These are models for comparing designs (ratios), not predictions of one
//! machine's timings; `--cost NAME=CYCLES` overrides any of them.

use core::cell::Cell;
use core::fmt;

pub use lazymmu::backend::machine::Primitive;

pub use crate::machine::topology::Distance;

/// Kernel work around the MMU that a workload charges itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Software {
    /// The scheduler's own part of a context switch (picking the next task,
    /// saving and restoring registers), without the address-space work
    /// counted as primitives.
    ContextSwitch,
    /// A kernel page fault that only fixes up a top-level entry and
    /// returns (exception entry, `vmalloc_fault()`, `iret`).
    Fault,
    /// A generation compare in `switch_mm()`: two loads.
    GenerationCheck,
    /// Allocating and zeroing a page-table page.
    TableAlloc,
    /// The cache miss of a store into another process's top-level table
    /// (each one is its own page): what copying a kernel top-level entry
    /// costs beyond the store itself.
    EntryCopy,
    /// `fork`'s own work per call, beyond the MMU work the model charges
    /// itself (`copy_process`, `dup_mmap`'s VMA copies): measured.
    ForkCall,
    /// `fork`'s own work per page copied (a reference and a mapcount per
    /// page, `copy_present_ptes`): measured.
    ForkPage,
    /// `exit`'s own work per call (`do_exit`, `exit_mmap`'s VMA and
    /// table teardown, waking the parent): measured.
    ExitCall,
    /// `exit`'s own work per page unmapped (rmap, page counts, freeing
    /// the last reference): measured.
    ExitPage,
    /// `munmap`'s own work per call (VMA split and removal): measured.
    MunmapCall,
    /// `munmap`'s own work per page unmapped (rmap, freeing the page):
    /// measured.
    MunmapPage,
    /// `mprotect`'s own work per call (`mprotect_fixup`, VMA splits and
    /// merges): measured.
    MprotectCall,
    /// `mprotect`'s own work per page changed: measured.
    MprotectPage,
    /// `mremap`'s own work per call (`move_vma`, VMA copy and unmap):
    /// measured.
    MremapCall,
    /// `mremap`'s own work per page moved (`move_ptes`' rmap locking):
    /// measured.
    MremapPage,
    /// `vmalloc`'s own work per call (`vmap_area` allocation), derived from
    /// a measured call.
    VmallocCall,
    /// `vmalloc`'s own work per page (allocating and accounting the page),
    /// derived from a measured call.
    VmallocPage,
    /// `vfree`'s own work per call (freeing the `vmap_area`), derived from
    /// a measured call.
    VfreeCall,
    /// `vfree`'s own work per page (freeing the page), derived from a
    /// measured call.
    VfreePage,
}

impl Software {
    /// Every software operation, in table order.
    pub const ALL: [Software; 19] = [
        Software::ContextSwitch,
        Software::Fault,
        Software::GenerationCheck,
        Software::TableAlloc,
        Software::EntryCopy,
        Software::ForkCall,
        Software::ForkPage,
        Software::ExitCall,
        Software::ExitPage,
        Software::MunmapCall,
        Software::MunmapPage,
        Software::MprotectCall,
        Software::MprotectPage,
        Software::MremapCall,
        Software::MremapPage,
        Software::VmallocCall,
        Software::VmallocPage,
        Software::VfreeCall,
        Software::VfreePage,
    ];

    /// Whether the row is the kernel's own work around a system call,
    /// measured on a real kernel (`lazymmu calibrate`) rather than cited.
    pub const fn is_measured(self) -> bool {
        (self as usize) >= (Software::ForkCall as usize)
    }
}

/// One row of the cost table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cost {
    /// A machine primitive the library calls.
    Primitive(Primitive),
    /// Kernel work a workload does.
    Software(Software),
    /// A cache line coming to a CPU from another at this distance (the
    /// data of a read, or ownership for a write with the invalidations it
    /// takes).
    Line(Distance),
}

impl From<Distance> for Cost {
    fn from(d: Distance) -> Self {
        Cost::Line(d)
    }
}

impl From<Primitive> for Cost {
    fn from(p: Primitive) -> Self {
        Cost::Primitive(p)
    }
}

impl From<Software> for Cost {
    fn from(s: Software) -> Self {
        Cost::Software(s)
    }
}

/// Rows in the table.
pub const ROWS: usize = Primitive::ALL.len() + Software::ALL.len() + Distance::ALL.len();

impl Cost {
    /// Every row, primitives first, in table order.
    pub fn all() -> impl Iterator<Item = Cost> {
        Primitive::ALL
            .into_iter()
            .map(Cost::Primitive)
            .chain(Software::ALL.into_iter().map(Cost::Software))
            .chain(Distance::ALL.into_iter().map(Cost::Line))
    }

    /// The row's position in the table.
    pub const fn index(self) -> usize {
        match self {
            Cost::Primitive(p) => p.index(),
            Cost::Software(s) => Primitive::ALL.len() + s as usize,
            Cost::Line(d) => Primitive::ALL.len() + Software::ALL.len() + d as usize,
        }
    }

    /// The row's name in reports, JSON and `--cost NAME=CYCLES`.
    pub const fn name(self) -> &'static str {
        match self {
            Cost::Primitive(p) => match p {
                Primitive::Hypercall => "hypercall",
                Primitive::MulticallEntry => "multicall_entry",
                Primitive::MmuUpdate => "mmu_update",
                Primitive::EmulatedWrite => "emulated_write",
                Primitive::Dsb => "dsb",
                Primitive::Isb => "isb",
                Primitive::HashInvalidate => "hash_invalidate",
                Primitive::Ipte => "ipte",
                Primitive::IpteLocal => "ipte_local",
                Primitive::Tlbi => "tlbi",
                Primitive::Invlpg => "invlpg",
                Primitive::FullFlush => "full_flush",
                Primitive::Ipi => "ipi",
                Primitive::KeyWrite => "key_write",
                Primitive::PteWrite => "pte_write",
                Primitive::RootLoad => "root_load",
            },
            Cost::Software(s) => match s {
                Software::ContextSwitch => "switch",
                Software::Fault => "fault",
                Software::GenerationCheck => "generation_check",
                Software::TableAlloc => "table_alloc",
                Software::EntryCopy => "entry_copy",
                Software::ForkCall => "fork_call",
                Software::ForkPage => "fork_page",
                Software::ExitCall => "exit_call",
                Software::ExitPage => "exit_page",
                Software::MunmapCall => "munmap_call",
                Software::MunmapPage => "munmap_page",
                Software::MprotectCall => "mprotect_call",
                Software::MprotectPage => "mprotect_page",
                Software::MremapCall => "mremap_call",
                Software::MremapPage => "mremap_page",
                Software::VmallocCall => "vmalloc_call",
                Software::VmallocPage => "vmalloc_page",
                Software::VfreeCall => "vfree_call",
                Software::VfreePage => "vfree_page",
            },
            Cost::Line(d) => match d {
                Distance::SmtSibling => "line_smt",
                Distance::SameSocket => "line_socket",
                Distance::OtherSocket => "line_remote",
            },
        }
    }

    /// The row called `name`.
    ///
    /// # Errors
    /// A message listing the known names.
    pub fn parse(name: &str) -> Result<Cost, String> {
        Cost::all().find(|c| c.name() == name).ok_or_else(|| {
            let names: Vec<_> = Cost::all().map(Cost::name).collect();
            format!(
                "unknown primitive or software cost `{name}` (expected one of {})",
                names.join(", ")
            )
        })
    }
}

impl fmt::Display for Cost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The name of a primitive in reports.
pub const fn primitive_name(p: Primitive) -> &'static str {
    Cost::Primitive(p).name()
}

/// The machine families the cost model distinguishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Platform {
    /// x86-64 bare metal (Skylake-class server core).
    X86,
    /// x86-64 paravirtual guest under Xen.
    XenPv,
    /// arm64 (Neoverse-class core).
    Arm64,
    /// powerpc book3s64 with the hash MMU (POWER8/9).
    PpcHash,
    /// sparc64 (UltraSPARC T-series / SPARC M7).
    Sparc64,
    /// s390x (z14 and later).
    S390,
}

impl Platform {
    /// Whether an atomic read-modify-write is a load-reserve /
    /// store-conditional loop that fails when another CPU stores to the
    /// line in between (powerpc `lwarx`/`stwcx.`: Power ISA Book II,
    /// "Atomic Update": a reservation is lost when another processor
    /// stores to its granule, and the store-conditional then fails; Linux
    /// arch/powerpc/include/asm/atomic.h builds every atomic that way),
    /// rather than one instruction that holds the line (x86 `lock`).
    pub const fn atomics_retry(self) -> bool {
        matches!(self, Platform::PpcHash)
    }
}

/// Cycle costs of every row on one platform, with overrides.
#[derive(Clone, Debug, PartialEq)]
pub struct CostModel {
    platform: Platform,
    cycles: [u64; ROWS],
}

impl CostModel {
    /// The built-in costs of `platform`.
    pub fn new(platform: Platform) -> Self {
        let mut cycles = [0u64; ROWS];
        let mut set = |c: Cost, n: u64| cycles[c.index()] = n;
        let p = |p: Primitive| Cost::Primitive(p);
        let s = |s: Software| Cost::Software(s);

        // A PTE store that hits L1: one store-port slot. Agner Fog,
        // "Instruction tables" (Skylake: MOV m64,r64 throughput 1/clock);
        // the same order on Neoverse (Arm Neoverse N1 Software Optimization
        // Guide §3.4: STR throughput 2/cycle). We charge 1 cycle
        // everywhere; the walker-visible cost of a PTE store is the side
        // effects modelled separately.
        set(p(Primitive::PteWrite), 1);
        // A remote IPI round trip, the sender waiting for the
        // acknowledgement (Linux's flush_tlb_multi()): ~2.2 µs measured on
        // Skylake at 2.1 GHz (Amit, Tai and Wei, "Don't shoot down TLB
        // shootdowns!", EuroSys 2020, §2) ≈ 4,600 cycles. Charged once per
        // send: the kernel interrupts every target before it waits
        // (`smp_call_function_many_cond`), so the targets' handlers run
        // together; how the wait grows with the number of targets is not
        // modelled. Used wherever the kernel sends IPIs (x86 native and
        // PV, sparc64 cross-calls, lazy TLB); arm64, powerpc and s390
        // broadcast invalidations in hardware.
        set(p(Primitive::Ipi), 4_600);
        // Full flush of one CPU's TLB: writing CR3 / INVPCID "all"; Andy
        // Lutomirski measured INVPCID type 2 at ~376 ns on Skylake
        // (linux-mm, 2016-01-08, "x86/mm: If INVPCID is available, use it
        // to flush global mappings") ≈ 1,000 cycles at 2.7 GHz, before the
        // refill cost the Linux TLB documentation warns about
        // (Documentation/arch/x86/tlb.rst, "collateral damage").
        set(p(Primitive::FullFlush), 1_000);
        // INVLPG of one page: "Each single flush is about 100 ns", the
        // comment on `tlb_single_page_flush_ceiling` in arch/x86/mm/tlb.c
        // (Linux 4.x and later), ≈ 200 cycles at 2 GHz. Semantics: Intel
        // SDM Vol. 3A §4.10.4.1.
        set(p(Primitive::Invlpg), 200);
        // Loading a page-table root (MOV to CR3), the write itself: a
        // serialising instruction (Intel SDM Vol. 3A, "Serializing
        // Instructions"); estimate 250 cycles. The TLB flush that may come
        // with it is counted separately as a full flush.
        set(p(Primitive::RootLoad), 250);
        // A cache line moving between CPUs, by distance: Paul E.
        // McKenney, "Is Parallel Programming Hard, And, If So, What Can
        // You Do About It?" (perfbook, §"Overheads", table "CPU 0 View of
        // Synchronization Mechanisms on 8-Socket System With Intel Xeon
        // Platinum 8176 CPUs @ 2.10GHz"): a blind CAS, one exclusive
        // transfer of the line as a `lock`-prefixed increment needs, takes
        // 7.2 ns between the hyperthreads of a core, 47.5 ns between cores
        // of a socket and 148.8 ns between sockets: 15, 100 and 312 cycles
        // at the 2.1 GHz the table normalises to. (His fourth level, 336.6
        // ns across the interconnect joining two four-socket halves, is
        // beyond the three levels modelled.) A hot line's queue is the
        // machine's: each transfer waits for the one before. These stand
        // for every platform without a measurement of its own.
        let line = |d: Distance| Cost::Line(d);
        set(line(Distance::SmtSibling), 15);
        set(line(Distance::SameSocket), 100);
        set(line(Distance::OtherSocket), 312);
        // WRMSR to IA32_PKRS (0x6E1) is explicitly not serialising (Intel
        // SDM Vol. 3A §4.6.2), unlike most WRMSRs; it still goes through the
        // microcode MSR path. No published latency found: estimate 50
        // cycles. (Arm64 overrides it below.)
        set(p(Primitive::KeyWrite), 50);

        // The scheduler's own part of a context switch: Li, Ding and Shen
        // ("Quantifying the cost of context switch", ExpCS 2007) measured
        // direct costs of a few microseconds on 2007 hardware; estimate
        // 2,000 cycles (~0.8 µs) on a current core.
        set(s(Software::ContextSwitch), 2_000);
        // A kernel page fault that only copies a top-level entry and
        // returns: Soares and Stumm ("FlexSC", OSDI 2010, §2) show a trap's
        // direct cost is small next to the pipeline flush and cache/TLB
        // pollution it causes; estimate 1,200 cycles (≈ 0.5 µs) for the
        // round trip including that pollution.
        set(s(Software::Fault), 1_200);
        // Two loads that hit L1 (Agner Fog, instruction tables: load
        // latency 4–5 cycles): 5.
        set(s(Software::GenerationCheck), 5);
        // Clearing 4 KiB at ~16 bytes/cycle (REP STOSB fast strings, Intel
        // Optimization Reference Manual §3.7.6) plus allocator work ≈ 400.
        set(s(Software::TableAlloc), 400);
        // One memory access, ~80 ns (Intel 64 and IA-32 Architectures
        // Optimization Reference Manual, Skylake server memory latency) ≈
        // 200 cycles.
        set(s(Software::EntryCopy), 200);

        match platform {
            Platform::X86 => {}
            Platform::XenPv => {
                // A PV hypercall is a guest-kernel→hypervisor transition
                // (SYSCALL into Xen, argument copy and validation, return);
                // mechanism in Barham et al., "Xen and the Art of
                // Virtualization" (SOSP 2003) §3.1 and Xen's
                // xen/arch/x86/x86_64/entry.S. Estimate 1,000 cycles for
                // the round trip without the per-entry work.
                set(p(Primitive::Hypercall), 1_000);
                // Per multicall entry Xen copies the entry in and dispatches
                // it through the hypercall table (do_multicall,
                // xen/common/multicall.c): estimate 100 cycles.
                set(p(Primitive::MulticallEntry), 100);
                // Per mmu_update request Xen validates the new PTE
                // (get_page_type on the target frame, mod_l1_entry in
                // xen/arch/x86/mm.c, the do_mmu_update loop): estimate 150
                // cycles beyond the transition.
                set(p(Primitive::MmuUpdate), 150);
                // A native write to a pinned table faults into Xen, which
                // decodes and emulates the instruction (ptwr_emulated_update,
                // xen/arch/x86/pv/ro-page-fault.c) before validating it like
                // an mmu_update (charged apart): a trap like a hypercall's
                // plus the decoding, estimate 2,000 cycles. Jeremy
                // Fitzhardinge calls these "expensive trap-and-emulate
                // faults" (commit e57778a1e304, "xen: implement
                // ptep_modify_prot_start/commit") without a figure.
                set(p(Primitive::EmulatedWrite), 2_000);
                // Guest TLB flushes are themselves MMUEXT hypercall entries;
                // the flush work inside Xen is the native cost.
            }
            Platform::Arm64 => {
                // DSB ISH waits for outstanding stores to complete across
                // the inner shareable domain (Arm ARM DDI 0487, B2.3.12);
                // the Neoverse N1 Software Optimization Guide lists barriers
                // as serialising without a fixed latency. Estimate 100
                // cycles.
                set(p(Primitive::Dsb), 100);
                // ISB flushes the pipeline: roughly the pipeline depth,
                // estimate 30 cycles (same guide, pipeline description).
                set(p(Primitive::Isb), 30);
                // TLBI VAE1IS: broadcast invalidation (Arm ARM DDI 0487
                // D8.13 for semantics); estimate 300 cycles including its
                // share of the completing DSB.
                set(p(Primitive::Tlbi), 300);
                // TLBI VMALLE1IS (whole TLB).
                set(p(Primitive::FullFlush), 1_500);
                // MSR POR_EL1 is self-synchronising only after an ISB
                // (Arm ARM DDI 0487 K.a, D8.4 "Permission Overlay"); the
                // kpkeys series charges one ISB per switch. MSR itself ~10.
                set(p(Primitive::KeyWrite), 10);
            }
            Platform::PpcHash => {
                // Invalidating one hash PTE: clear the HPTE and issue its
                // tlbie (POWER ISA v3.0B Book III §5.10; Linux
                // arch/powerpc/mm/book3s64/hash_native.c,
                // native_flush_hash_range): estimate 200 cycles.
                set(p(Primitive::HashInvalidate), 200);
                // The `ptesync; tlbsync; ptesync` that completes a flush
                // waits for every processor to finish the invalidations
                // (same ISA section): estimate 800 cycles. Charged once per
                // flush_hash_page and once per flush_hash_range batch.
                set(p(Primitive::Dsb), 800);
                set(p(Primitive::FullFlush), 5_000);
                // Line transfers on POWER: half the round trip of a
                // compare-and-swap ping-pong between two CPUs (each swap a
                // `lwarx`/`stwcx.` loop between barriers) on two 8-core
                // POWER7 sockets at 3.3 GHz under PowerVM: 70 ns between
                // SMT threads of a core, 173 ns across a socket, 443 ns
                // across sockets (Nicolas Viennot, core-to-core-latency,
                // README results "IBM Power7, 3.3GHz, 8 Cores, 2010-Q1",
                // from github.com/nviennot/core-to-core-latency issue #14).
                // No per-distance POWER8 measurement was found; POWER7 is
                // the nearest generation measured this way (AnandTech,
                // "Assessing IBM's POWER8, Part 1", 2016, gives only
                // load-to-use latencies: 13 cycles for the L2 the eight
                // threads of a POWER8 core share). Converted at the POWER8
                // E880's 4.02 GHz (the clock below): 281, 695 and 1,781
                // cycles.
                let line = |d: Distance| Cost::Line(d);
                set(line(Distance::SmtSibling), 281);
                set(line(Distance::SameSocket), 695);
                set(line(Distance::OtherSocket), 1_781);
            }
            Platform::Sparc64 => {
                // One TSB entry write + demap-page hypervisor fast trap
                // (sun4v HV_FAST_MMU_DEMAP_PAGE): Linux
                // arch/sparc/mm/tsb.c and tlb.c; a fast trap costs a few
                // hundred cycles on T-series cores (UltraSPARC Virtual
                // Machine Specification, fast-trap interface); estimate 400.
                set(p(Primitive::Tlbi), 400);
                set(p(Primitive::FullFlush), 3_000);
            }
            Platform::S390 => {
                // IPTE quiesces every CPU of the configuration: z/Arch
                // Principles of Operation SA22-7832, "INVALIDATE PAGE TABLE
                // ENTRY" (the operation is performed with all CPUs
                // quiesced); estimate 2,000 cycles on a large LPAR.
                set(p(Primitive::Ipte), 2_000);
                // The range form (IPTE with a count in R3, same PoP
                // section) invalidates up to 256 entries of one table in a
                // single quiesce, so it is charged as one IPTE.
                // IPTE with the local-clearing control purges this CPU's
                // TLB without a quiesce: estimate 200 cycles.
                set(p(Primitive::IpteLocal), 200);
                // IDTE of an address space (__tlb_flush_idte), a quiesce
                // like IPTE's plus the purge: estimate 3,000 cycles.
                set(p(Primitive::FullFlush), 3_000);
            }
        }
        Self { platform, cycles }
    }

    /// The platform.
    pub fn platform(&self) -> Platform {
        self.platform
    }

    /// The clock the cycle costs are counted at, in MHz, where one machine
    /// gives the platform its figures: x86 2,100 (the Xeon Platinum 8176
    /// of the line-transfer costs, and the 2.1 GHz Skylake of the IPI
    /// cost), powerpc 4,020 (the POWER8 E880's 12-core modules, IBM
    /// Redpaper REDP-5137). `None` elsewhere: rates per second are then
    /// not reported.
    pub fn clock_mhz(&self) -> Option<u64> {
        match self.platform {
            Platform::X86 | Platform::XenPv => Some(2_100),
            Platform::PpcHash => Some(4_020),
            Platform::Arm64 | Platform::Sparc64 | Platform::S390 => None,
        }
    }

    /// Cycles of one `row`.
    pub fn cycles(&self, row: impl Into<Cost>) -> u64 {
        self.cycles[row.into().index()]
    }

    /// Overrides one row's cost.
    pub fn set(&mut self, row: impl Into<Cost>, cycles: u64) {
        self.cycles[row.into().index()] = cycles;
    }

    /// Modelled cycles of a set of counts.
    pub fn total(&self, counts: &Counts) -> u64 {
        Cost::all()
            .map(|c| counts.get(c).saturating_mul(self.cycles(c)))
            .fold(0u64, u64::saturating_add)
    }
}

/// Parses `NAME=CYCLES` for `--cost`.
///
/// # Errors
/// A message naming the problem when the name is unknown or the number
/// does not parse.
pub fn parse_override(text: &str) -> Result<(Cost, u64), String> {
    let (name, cycles) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}`: expected NAME=CYCLES"))?;
    let row = Cost::parse(name.trim())?;
    let cycles = cycles
        .trim()
        .parse::<u64>()
        .map_err(|e| format!("`{text}`: bad cycle count: {e}"))?;
    Ok((row, cycles))
}

/// How many times each row ran.
#[derive(Debug, Clone)]
pub struct Counts {
    counts: [Cell<u64>; ROWS],
}

impl Default for Counts {
    fn default() -> Self {
        Self {
            counts: core::array::from_fn(|_| Cell::new(0)),
        }
    }
}

impl Counts {
    /// Adds `n` to a row's count.
    #[inline]
    pub fn add(&self, row: impl Into<Cost>, n: u64) {
        let c = &self.counts[row.into().index()];
        c.set(c.get() + n);
    }

    /// A row's count.
    #[inline]
    pub fn get(&self, row: impl Into<Cost>) -> u64 {
        self.counts[row.into().index()].get()
    }

    /// Every non-zero count, in table order.
    pub fn nonzero(&self) -> Vec<(Cost, u64)> {
        Cost::all()
            .map(|c| (c, self.get(c)))
            .filter(|&(_, n)| n > 0)
            .collect()
    }

    /// Resets every count to zero.
    pub fn clear(&self) {
        for c in &self.counts {
            c.set(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_index_the_table() {
        for (n, c) in Cost::all().enumerate() {
            assert_eq!(c.index(), n);
            assert_eq!(Cost::parse(c.name()).unwrap(), c);
        }
        assert_eq!(Cost::all().count(), ROWS);
        assert!(Cost::parse("nope").is_err());
    }

    #[test]
    fn override_parses_and_applies() {
        let (c, n) = parse_override("dsb=7").unwrap();
        assert_eq!((c, n), (Cost::Primitive(Primitive::Dsb), 7));
        let mut model = CostModel::new(Platform::Arm64);
        model.set(c, n);
        let counts = Counts::default();
        counts.add(Primitive::Dsb, 3);
        counts.add(Software::ContextSwitch, 1);
        assert_eq!(model.total(&counts), 21 + 2_000);
        assert!(parse_override("dsb").is_err());
        assert!(parse_override("dsb=x").is_err());
        assert_eq!(
            parse_override("switch=5").unwrap().0,
            Cost::Software(Software::ContextSwitch)
        );
    }

    #[test]
    fn one_key_register_write_cost_per_platform() {
        // The PKRS write is one figure for the whole x86 model (page-table
        // windows and device-memory windows alike).
        assert_eq!(
            CostModel::new(Platform::X86).cycles(Primitive::KeyWrite),
            50
        );
        assert_eq!(
            CostModel::new(Platform::Arm64).cycles(Primitive::KeyWrite),
            10
        );
    }
}
