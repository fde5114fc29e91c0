//! Cycle costs of the events the neighbour workloads count. Each is cited
//! where it is defined; like the rest of the cost model these are for
//! comparing policies (ratios), not for predicting one machine, and
//! [`NeighbourCosts::set`] overrides any of them.

/// Cycle costs, x86-64 server core at about 2.5 GHz.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NeighbourCosts {
    /// The scheduler's own part of a context switch (picking the next task,
    /// saving and restoring registers), without the address-space work
    /// modelled separately. Li, Ding and Shen ("Quantifying the cost of
    /// context switch", ExpCS 2007) measured direct costs of a few
    /// microseconds on 2007 hardware; estimate 2,000 cycles (~0.8 µs) on a
    /// current core.
    pub switch: u64,
    /// A remote IPI round trip, sender waiting for the acknowledgement:
    /// ~2.2 µs measured on Skylake at 2.1 GHz (Amit et al., "Don't shoot
    /// down TLB shootdowns!", EuroSys 2020, §2) ≈ 4,600 cycles.
    pub ipi: u64,
    /// A cache line moving between cores because another core modified or
    /// shares it: ~100 ns for a modified line in another core's cache
    /// across a two-socket Xeon (Molka et al., "Memory Performance and Cache
    /// Coherency Effects on an Intel Nehalem Multiprocessor System", PACT
    /// 2009, Fig. 4; same order on later parts) ≈ 250 cycles. Contention
    /// queueing on a hot line is not modelled, so this is a lower bound
    /// for large machines.
    pub line_transfer: u64,
    /// Loading a page-table root (MOV to CR3), the write itself: it is a
    /// serialising instruction (Intel SDM Vol. 3A, "Serializing
    /// Instructions"); estimate 250 cycles. The TLB flush that comes with
    /// it is counted separately as a full flush.
    pub root_load: u64,
    /// A full local TLB flush: as above.
    pub full_flush: u64,
    /// One INVLPG: ~1/33 of a full flush plus refill, following the
    /// 33-page ceiling in Documentation/arch/x86/tlb.rst (the simulator's
    /// `invlpg`): 200.
    pub invlpg: u64,
    /// Copying one top-level entry into another process's table: the
    /// store misses because each process table is its own page, so one
    /// memory access, ~80 ns (Intel 64 and IA-32 Architectures
    /// Optimization Reference Manual, Skylake server memory latency) ≈ 200
    /// cycles.
    pub entry_copy: u64,
    /// A kernel page fault that only copies a top-level entry and returns
    /// (exception entry, `vmalloc_fault()`, IRET). Soares and Stumm
    /// ("FlexSC", OSDI 2010, §2) show a trap's direct cost is small next to
    /// the pipeline flush and cache/TLB pollution it causes; estimate 1,200
    /// cycles (≈ 0.5 µs) for the round trip including that pollution.
    pub fault: u64,
    /// A generation compare in `switch_mm()`: two loads that hit L1
    /// (Agner Fog, instruction tables: load latency 4–5 cycles): 5.
    pub generation_check: u64,
    /// Allocating and zeroing a page-table page at boot: clearing 4 KiB at
    /// ~16 bytes/cycle (REP STOSB fast strings, Optimization Reference
    /// Manual §3.7.6) plus allocator work ≈ 400 cycles.
    pub table_alloc: u64,
    /// WRMSR to IA32_PKRS: not serialising (Intel SDM Vol. 3A,
    /// "Serializing Instructions"), so no pipeline drain; no published
    /// latency found, estimate 60 cycles (an MSR write through microcode).
    pub key_write: u64,
}

impl Default for NeighbourCosts {
    fn default() -> Self {
        Self {
            switch: 2_000,
            ipi: 4_600,
            line_transfer: 250,
            root_load: 250,
            full_flush: 1_000,
            invlpg: 200,
            entry_copy: 200,
            fault: 1_200,
            generation_check: 5,
            table_alloc: 400,
            key_write: 60,
        }
    }
}

impl NeighbourCosts {
    /// Names of the costs `set` accepts.
    pub const NAMES: [&'static str; 11] = [
        "switch",
        "ipi",
        "line_transfer",
        "root_load",
        "full_flush",
        "invlpg",
        "entry_copy",
        "fault",
        "generation_check",
        "table_alloc",
        "key_write",
    ];

    /// Overrides one cost.
    ///
    /// # Errors
    /// A message naming the known costs when `name` is not one of them.
    pub fn set(&mut self, name: &str, cycles: u64) -> Result<(), String> {
        let slot = match name {
            "switch" => &mut self.switch,
            "ipi" => &mut self.ipi,
            "line_transfer" => &mut self.line_transfer,
            "root_load" => &mut self.root_load,
            "full_flush" => &mut self.full_flush,
            "invlpg" => &mut self.invlpg,
            "entry_copy" => &mut self.entry_copy,
            "fault" => &mut self.fault,
            "generation_check" => &mut self.generation_check,
            "table_alloc" => &mut self.table_alloc,
            "key_write" => &mut self.key_write,
            _ => {
                return Err(format!(
                    "unknown cost `{name}` (expected one of {})",
                    Self::NAMES.join(", ")
                ))
            }
        };
        *slot = cycles;
        Ok(())
    }
}
