//! `vmalloc-grow`: vmalloc growing across top-level slots while many
//! processes run, under one kernel top-level sync policy.
//!
//! The kernel allocates vmalloc areas in address order, crossing into a new
//! top-level slot every so often (512 GiB per slot on 4-level x86-64; the
//! workload spreads its areas so that they cover `slots` slots). Between
//! allocations, CPUs switch between processes and the running processes
//! touch vmalloc areas already allocated. Checked at every access: no
//! kernel access fails for lack of a synced top-level entry (under `fault`
//! the fault handler fixes it, and that is counted as work), and no boot
//! adds more than 256 top-level entries.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use lazymmu::addr::{PhysAddr, VirtAddr};
use lazymmu::mm::kernel_sync::{
    AccessOutcome, KernelAccessError, KernelLayout, KernelSync, SyncPolicy, SyncStats,
    TopLevelTables, KERNEL_FIRST_SLOT, KERNEL_SLOTS,
};

use super::cost::NeighbourCosts;
use super::{Chooser, NeighbourInvariant, NeighbourRow, NeighbourViolation, Seeded, Violations};

/// Parameters of a `vmalloc-grow` run.
#[derive(Clone, Debug)]
pub struct VmallocGrowConfig {
    /// Sync policy.
    pub policy: SyncPolicy,
    /// Processes (each with its own top-level table).
    pub processes: usize,
    /// CPUs.
    pub cpus: usize,
    /// vmalloc areas allocated.
    pub allocations: usize,
    /// Top-level slots the areas spread across, from the start of the
    /// vmalloc area.
    pub slots: usize,
    /// Switches and accesses between two allocations.
    pub events_per_allocation: usize,
    /// Kernel layout (4- or 5-level x86-64).
    pub layout: KernelLayout,
    /// Seed of the decisions.
    pub seed: u64,
    /// Cycle costs.
    pub costs: NeighbourCosts,
}

impl VmallocGrowConfig {
    /// The defaults for `processes` processes: 4 CPUs, 1,024 areas across
    /// the whole 4-level vmalloc area (64 slots), 8 events between
    /// allocations.
    pub fn new(policy: SyncPolicy, processes: usize) -> Self {
        Self {
            policy,
            processes,
            cpus: 4,
            allocations: 1_024,
            slots: KernelLayout::X86_64_4LEVEL.vmalloc_slots,
            events_per_allocation: 8,
            layout: KernelLayout::X86_64_4LEVEL,
            seed: 1,
            costs: NeighbourCosts::default(),
        }
    }
}

impl VmallocGrowConfig {
    /// A scenario small enough to explore: 3 processes on 2 CPUs, 2
    /// allocations in 2 slots, 2 events after each.
    pub fn tiny(policy: SyncPolicy) -> Self {
        Self {
            processes: 3,
            cpus: 2,
            allocations: 2,
            slots: 2,
            events_per_allocation: 2,
            ..Self::new(policy, 3)
        }
    }
}

/// Top-level table memory: the kernel half of the reference table and of
/// every process table, per-table generations, per-CPU loaded tables.
struct Tables {
    /// Kernel halves, table after table (index 0 is the reference).
    entries: RefCell<Vec<u64>>,
    generations: RefCell<Vec<u32>>,
    processes: usize,
    loaded: Vec<Cell<PhysAddr>>,
    next_frame: Cell<u64>,
}

const FRAME_BASE: u64 = 0x1_0000_0000;

impl Tables {
    fn new(processes: usize, cpus: usize) -> Self {
        Self {
            entries: RefCell::new(vec![0; (processes + 1) * KERNEL_SLOTS]),
            generations: RefCell::new(vec![0; processes + 1]),
            processes,
            loaded: (0..cpus).map(|_| Cell::new(Self::address(0))).collect(),
            next_frame: Cell::new(FRAME_BASE),
        }
    }

    fn address(index: usize) -> PhysAddr {
        PhysAddr(((index as u64) + 1) << 12)
    }

    fn index(table: PhysAddr) -> usize {
        (table.0 >> 12) as usize - 1
    }

    fn cell(table: PhysAddr, slot: usize) -> usize {
        assert!(slot >= KERNEL_FIRST_SLOT, "only kernel slots are modelled");
        Self::index(table) * KERNEL_SLOTS + (slot - KERNEL_FIRST_SLOT)
    }
}

impl TopLevelTables for Tables {
    fn read_slot(&self, table: PhysAddr, slot: usize) -> u64 {
        self.entries.borrow()[Self::cell(table, slot)]
    }
    fn write_slot(&self, table: PhysAddr, slot: usize, value: u64) {
        self.entries.borrow_mut()[Self::cell(table, slot)] = value;
    }
    fn alloc_table(&self) -> Option<PhysAddr> {
        let frame = self.next_frame.get();
        self.next_frame.set(frame + 0x1000);
        Some(PhysAddr(frame))
    }
    fn process_count(&self) -> usize {
        self.processes
    }
    fn process_table(&self, index: usize) -> PhysAddr {
        Self::address(index + 1)
    }
    fn cpu_count(&self) -> usize {
        self.loaded.len()
    }
    fn loaded_table(&self, cpu: usize) -> PhysAddr {
        self.loaded[cpu].get()
    }
    fn table_generation(&self, table: PhysAddr) -> u32 {
        self.generations.borrow()[Self::index(table)]
    }
    fn set_table_generation(&self, table: PhysAddr, generation: u32) {
        self.generations.borrow_mut()[Self::index(table)] = generation;
    }
}

/// Runs `vmalloc-grow` with decisions from `chooser`.
pub fn run_with(config: &VmallocGrowConfig, chooser: &mut dyn Chooser) -> NeighbourRow {
    assert!(config.processes > 0 && config.cpus > 0 && config.allocations > 0);
    let layout = config.layout;
    let tables = Tables::new(config.processes, config.cpus);
    let sync = KernelSync::new(&tables, Tables::address(0), config.policy, layout);
    let mut violations = Violations::default();
    let mut step = 0u64;
    let mut violation = |invariant, cpu, detail: String, step: u64| {
        violations.push(NeighbourViolation {
            invariant,
            step,
            cpu,
            detail,
        })
    };
    if let Err(e) = sync.boot() {
        violation(
            NeighbourInvariant::OperationFailed,
            0,
            format!("boot: {e:?}"),
            0,
        );
    }
    let boot_tables = u64::from(
        sync.stats()
            .preallocated
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    // Process creation copies the kernel half whatever the policy (Linux's
    // pgd_ctor copies all of it): not part of the comparison.
    for index in 0..config.processes {
        sync.init_process_table(tables.process_table(index));
    }
    let setup_copies = SyncStats::get(&sync.stats().entries_copied);

    let slots = config.slots.clamp(1, KERNEL_SLOTS);
    let first_slot = layout
        .vmalloc_first_slot
        .min(KERNEL_FIRST_SLOT + KERNEL_SLOTS - slots);
    let mut areas: Vec<VirtAddr> = Vec::with_capacity(config.allocations);
    let mut accesses = 0u64;
    for allocation in 0..config.allocations {
        let slot = first_slot + allocation * slots / config.allocations;
        let va = layout.slot_base(slot).add((allocation as u64 % 64) << 22);
        if let Err(e) = sync.ensure_slot(va) {
            violation(
                NeighbourInvariant::OperationFailed,
                0,
                format!("vmalloc at {va:?}: {e:?}"),
                step,
            );
            continue;
        }
        areas.push(va);
        for _ in 0..config.events_per_allocation {
            step += 1;
            let cpu = chooser.choose(config.cpus);
            if chooser.choose(2) == 0 {
                let table = tables.process_table(chooser.choose(config.processes));
                sync.switch_to(table);
                tables.loaded[cpu].set(table);
            } else {
                let va = areas[chooser.choose(areas.len())];
                accesses += 1;
                match sync.kernel_access(tables.loaded[cpu].get(), va) {
                    Ok(AccessOutcome::Hit) | Ok(AccessOutcome::FaultFixed) => {}
                    Err(KernelAccessError::MissingSync { table, slot }) => violation(
                        NeighbourInvariant::MissingSync,
                        cpu,
                        format!("table {table:?} lacks kernel slot {slot}"),
                        step,
                    ),
                    Err(other) => violation(
                        NeighbourInvariant::OperationFailed,
                        cpu,
                        format!("access {va:?}: {other:?}"),
                        step,
                    ),
                }
            }
        }
    }
    let adds = sync
        .stats()
        .top_level_adds
        .load(std::sync::atomic::Ordering::Relaxed);
    if adds as usize > KERNEL_SLOTS {
        violation(
            NeighbourInvariant::OperationFailed,
            0,
            format!("{adds} top-level additions in one boot (at most {KERNEL_SLOTS})"),
            step,
        );
    }

    let stats = sync.stats();
    let get = SyncStats::get;
    let copies = get(&stats.entries_copied) - setup_copies;
    let costs = &config.costs;
    let cycles = copies * costs.entry_copy
        + get(&stats.faults_fixed) * costs.fault
        + get(&stats.generation_checks) * costs.generation_check
        + boot_tables * costs.table_alloc;
    let counts: BTreeMap<&'static str, u64> = [
        ("top_level_syncs", u64::from(adds)),
        ("boot_tables", boot_tables),
        ("entries_copied", copies),
        ("tables_walked", get(&stats.tables_walked)),
        ("faults", get(&stats.faults_fixed)),
        ("generation_checks", get(&stats.generation_checks)),
        ("generation_syncs", get(&stats.generation_syncs)),
        ("accesses", accesses),
    ]
    .into_iter()
    .collect();
    NeighbourRow {
        workload: "vmalloc-grow",
        policy: config.policy.name(),
        cpus: config.cpus,
        processes: config.processes,
        counts,
        cycles,
        violations: violations.count(),
        first_violations: violations.first().to_vec(),
    }
}

/// Runs `vmalloc-grow` with the configuration's seed.
pub fn run(config: &VmallocGrowConfig) -> NeighbourRow {
    run_with(config, &mut Seeded::new(config.seed))
}
