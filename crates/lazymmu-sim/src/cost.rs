//! The cost model: what each machine primitive costs, in cycles, on each
//! platform, and the counters the machine keeps of how often each ran.
//!
//! Every constant is cited where it is defined. Where a source gives
//! nanoseconds the figure is converted at the clock stated next to it.
//! These are models for comparing designs (ratios), not predictions of one
//! machine's timings; `--cost NAME=CYCLES` overrides any of them.

use core::cell::Cell;

pub use lazymmu::backend::machine::Primitive;

/// Parses a primitive's name.
///
/// # Errors
/// A message listing the known names.
pub fn parse_primitive(name: &str) -> Result<Primitive, String> {
    Primitive::from_name(name).ok_or_else(|| {
        let names: Vec<_> = Primitive::ALL.iter().map(|p| p.name()).collect();
        format!(
            "unknown primitive `{name}` (expected one of {})",
            names.join(", ")
        )
    })
}

const N: usize = Primitive::ALL.len();

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

/// Cycle costs of every primitive on one platform, with overrides.
#[derive(Clone, Debug, PartialEq)]
pub struct CostModel {
    platform: Platform,
    cycles: [u64; N],
}

impl CostModel {
    /// The built-in costs of `platform`.
    pub fn new(platform: Platform) -> Self {
        let mut cycles = [0u64; N];
        let mut set = |p: Primitive, c: u64| cycles[p.index()] = c;

        // A PTE store that hits L1: one store-port slot. Agner Fog,
        // "Instruction tables" (Skylake: MOV m64,r64 throughput 1/clock);
        // the same order on Neoverse (Arm Neoverse N1 Software Optimization
        // Guide §3.4: STR throughput 2/cycle). We charge 1 cycle
        // everywhere; the walker-visible cost of a PTE store is the side
        // effects modelled separately.
        set(Primitive::PteWrite, 1);
        // A remote-flush IPI: Linux's flush_tlb_multi() sends the IPI and
        // waits for every target to acknowledge. Amit, Tai and Wei, "Don't
        // shoot down TLB shootdowns!" (EuroSys 2020) measure remote
        // shootdowns on x86 servers in the microseconds; estimate 4,600
        // cycles (about 2 µs at 2.3 GHz) per target CPU. Used wherever a
        // backend sends IPIs (x86 native and PV, sparc64 cross-calls);
        // arm64, powerpc and s390 broadcast invalidations in hardware.
        set(Primitive::Ipi, 4_600);
        // Full flush of one CPU's TLB: writing CR3 / INVPCID "all"; Andy
        // Lutomirski measured INVPCID type 2 at ~376 ns on Skylake
        // (linux-mm, 2016-01-08, "x86/mm: If INVPCID is available, use it
        // to flush global mappings") ≈ 1,000 cycles at 2.7 GHz, before the
        // refill cost the Linux TLB documentation warns about
        // (Documentation/arch/x86/tlb.rst, "collateral damage").
        set(Primitive::FullFlush, 1_000);
        // INVLPG of one page: Intel SDM Vol. 3A §4.10.4.1 (semantics);
        // Linux Documentation/arch/x86/tlb.rst picks a ceiling of 33
        // single-page flushes before a full flush is cheaper, which puts one
        // INVLPG at roughly 1/33 of a full flush plus its refill
        // (estimate, consistent with that ceiling and a ~1,000-cycle full
        // flush): 200.
        set(Primitive::Invlpg, 200);

        match platform {
            Platform::X86 => {
                // WRMSR to IA32_PKRS (0x6E1) is explicitly not serialising
                // (Intel SDM Vol. 3A §4.6.2), unlike most WRMSRs; it still
                // goes through the microcode MSR path. Estimate 50 cycles.
                set(Primitive::KeyWrite, 50);
            }
            Platform::XenPv => {
                // A PV hypercall is a guest-kernel→hypervisor transition
                // (SYSCALL into Xen, argument copy and validation, return);
                // mechanism in Barham et al., "Xen and the Art of
                // Virtualization" (SOSP 2003) §3.1 and Xen's
                // xen/arch/x86/x86_64/entry.S. Estimate 1,000 cycles for
                // the round trip without the per-entry work.
                set(Primitive::Hypercall, 1_000);
                // Per entry Xen validates the new PTE (get_page_type on the
                // target frame, mod_l1_entry in xen/arch/x86/mm.c,
                // do_mmu_update loop): estimate 150 cycles beyond the
                // transition.
                set(Primitive::MulticallEntry, 150);
                // Guest TLB flushes are themselves MMUEXT hypercall entries;
                // the flush work inside Xen is the native cost.
            }
            Platform::Arm64 => {
                // DSB ISH waits for outstanding stores to complete across
                // the inner shareable domain (Arm ARM DDI 0487, B2.3.12);
                // the Neoverse N1 Software Optimization Guide lists barriers
                // as serialising without a fixed latency. Estimate 100
                // cycles; the Linux 6.16 series "arm64/mm: Batch barriers
                // when updating kernel mappings" reports up to ~30% on
                // vmalloc from removing them, which this reproduces.
                set(Primitive::Dsb, 100);
                // ISB flushes the pipeline: roughly the pipeline depth,
                // estimate 30 cycles (same guide, pipeline description).
                set(Primitive::Isb, 30);
                // TLBI VAE1IS: broadcast invalidation (Arm ARM DDI 0487
                // D8.13 for semantics); estimate 300 cycles including its
                // share of the completing DSB.
                set(Primitive::Tlbi, 300);
                // TLBI VMALLE1IS (whole TLB).
                set(Primitive::FullFlush, 1_500);
                // MSR POR_EL1 is self-synchronising only after an ISB
                // (Arm ARM DDI 0487 K.a, D8.4 "Permission Overlay"); the
                // kpkeys series charges one ISB per switch. MSR itself ~10.
                set(Primitive::KeyWrite, 10);
            }
            Platform::PpcHash => {
                // Invalidating one hash PTE: clear the HPTE and issue its
                // tlbie (POWER ISA v3.0B Book III §5.10; Linux
                // arch/powerpc/mm/book3s64/hash_native.c,
                // native_flush_hash_range): estimate 200 cycles.
                set(Primitive::HashInvalidate, 200);
                // The `ptesync; tlbsync; ptesync` that completes a flush
                // waits for every processor to finish the invalidations
                // (same ISA section): estimate 800 cycles. Charged once per
                // flush_hash_page and once per flush_hash_range batch.
                set(Primitive::Dsb, 800);
                set(Primitive::FullFlush, 5_000);
            }
            Platform::Sparc64 => {
                // One TSB entry write + demap-page hypervisor fast trap
                // (sun4v HV_FAST_MMU_DEMAP_PAGE): Linux
                // arch/sparc/mm/tsb.c and tlb.c; a fast trap costs a few
                // hundred cycles on T-series cores (UltraSPARC Virtual
                // Machine Specification, fast-trap interface); estimate 400.
                set(Primitive::Tlbi, 400);
                set(Primitive::FullFlush, 3_000);
            }
            Platform::S390 => {
                // IPTE quiesces every CPU of the configuration: z/Arch
                // Principles of Operation SA22-7832, "INVALIDATE PAGE TABLE
                // ENTRY" (the operation is performed with all CPUs
                // quiesced); estimate 2,000 cycles on a large LPAR.
                set(Primitive::Ipte, 2_000);
                // The range form (IPTE with a count in R3, same PoP
                // section) invalidates up to 256 entries of one table in a
                // single quiesce, so it is charged as one IPTE.
                set(Primitive::FullFlush, 3_000);
            }
        }
        Self { platform, cycles }
    }

    /// The platform.
    pub fn platform(&self) -> Platform {
        self.platform
    }

    /// Cycles of one `primitive`.
    pub fn cycles(&self, primitive: Primitive) -> u64 {
        self.cycles[primitive.index()]
    }

    /// Overrides one primitive's cost.
    pub fn set(&mut self, primitive: Primitive, cycles: u64) {
        self.cycles[primitive.index()] = cycles;
    }

    /// Modelled cycles of a set of counts.
    pub fn total(&self, counts: &Counts) -> u64 {
        Primitive::ALL
            .iter()
            .map(|&p| counts.get(p).saturating_mul(self.cycles(p)))
            .fold(0u64, u64::saturating_add)
    }
}

/// Parses `NAME=CYCLES` for `--cost`.
///
/// # Errors
/// A message naming the problem when the name is unknown or the number
/// does not parse.
pub fn parse_override(text: &str) -> Result<(Primitive, u64), String> {
    let (name, cycles) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}`: expected NAME=CYCLES"))?;
    let primitive = parse_primitive(name.trim())?;
    let cycles = cycles
        .trim()
        .parse::<u64>()
        .map_err(|e| format!("`{text}`: bad cycle count: {e}"))?;
    Ok((primitive, cycles))
}

/// How many times each primitive ran.
#[derive(Default, Debug, Clone)]
pub struct Counts {
    counts: [Cell<u64>; N],
}

impl Counts {
    /// Adds `n` to a primitive's count.
    #[inline]
    pub fn add(&self, primitive: Primitive, n: u64) {
        let c = &self.counts[primitive.index()];
        c.set(c.get() + n);
    }

    /// A primitive's count.
    #[inline]
    pub fn get(&self, primitive: Primitive) -> u64 {
        self.counts[primitive.index()].get()
    }

    /// Every non-zero count, in table order.
    pub fn nonzero(&self) -> Vec<(Primitive, u64)> {
        Primitive::ALL
            .iter()
            .map(|&p| (p, self.get(p)))
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
    fn names_round_trip() {
        for p in Primitive::ALL {
            assert_eq!(parse_primitive(p.name()).unwrap(), p);
        }
        assert!(parse_primitive("nope").is_err());
    }

    #[test]
    fn override_parses_and_applies() {
        let (p, c) = parse_override("dsb=7").unwrap();
        assert_eq!((p, c), (Primitive::Dsb, 7));
        let mut model = CostModel::new(Platform::Arm64);
        model.set(p, c);
        let counts = Counts::default();
        counts.add(Primitive::Dsb, 3);
        assert_eq!(model.total(&counts), 21);
        assert!(parse_override("dsb").is_err());
        assert!(parse_override("dsb=x").is_err());
    }
}
