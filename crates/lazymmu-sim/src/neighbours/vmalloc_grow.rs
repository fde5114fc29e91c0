//! `vmalloc-grow`: vmalloc growing across top-level slots while many
//! processes run, under one kernel top-level sync policy, on the machine.
//!
//! The kernel allocates vmalloc areas in address order, crossing into a new
//! top-level slot every so often (512 GiB per slot on 4-level x86-64; the
//! workload spreads its areas so that they cover `slots` slots). Between
//! allocations, CPUs switch between processes (loading their roots) and
//! the running processes touch vmalloc areas already allocated. Every
//! process has its own top-level table in the machine's memory, and every
//! top-level entry the library copies goes through the x86 backend like
//! any other page-table write. Checked at every access: no kernel access
//! fails for lack of a synced top-level entry (under `fault` the fault
//! handler fixes it, and that is counted as work), and no boot adds more
//! than 256 top-level entries.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::atomic::Ordering;

use lazymmu::addr::{PhysAddr, SpaceId, VirtAddr};
use lazymmu::backend::x86::X86Backend;
use lazymmu::cpu::CpuId;
use lazymmu::mm::kernel_sync::{
    AccessOutcome, KernelAccessError, KernelLayout, KernelSync, SyncPolicy, SyncStats,
    TopLevelTables, KERNEL_FIRST_SLOT, KERNEL_SLOTS,
};

use super::{machine_counts, seeded, sync_name, NeighbourRow};
use crate::choice::{Chooser, Site};
use crate::cost::{Cost, Platform, Software};
use crate::invariant::Invariant;
use crate::machine::{Kernel, Machine, MachineConfig, Offers, SimCpu, SimMemory};

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
    /// Kernel layout (4-level x86-64).
    pub layout: KernelLayout,
    /// Seed of the decisions.
    pub seed: u64,
    /// Cost overrides.
    pub costs: Vec<(Cost, u64)>,
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
            costs: Vec::new(),
        }
    }

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

/// The process tables as kernel top-level sync sees them: the machine's
/// roots of spaces 1..=N (`pgd_list`), the root each CPU has loaded, the
/// generation of each table (page metadata).
struct Tables {
    machine: Rc<Machine>,
    processes: usize,
    generations: RefCell<HashMap<u64, u32>>,
}

impl TopLevelTables for Tables {
    fn alloc_table(&self) -> Option<PhysAddr> {
        let m = &self.machine;
        m.memory().allocate_table(SpaceId::KERNEL, 0)
    }
    fn process_count(&self) -> usize {
        self.processes
    }
    fn process_table(&self, index: usize) -> PhysAddr {
        self.machine.space_root(SpaceId(index as u32 + 1))
    }
    fn cpu_count(&self) -> usize {
        self.machine.cpu_count()
    }
    fn loaded_table(&self, cpu: CpuId) -> PhysAddr {
        self.machine.space_root(self.machine.loaded_space(cpu))
    }
    fn table_generation(&self, table: PhysAddr) -> u32 {
        self.generations
            .borrow()
            .get(&table.0)
            .copied()
            .unwrap_or(0)
    }
    fn set_table_generation(&self, table: PhysAddr, generation: u32) {
        self.generations.borrow_mut().insert(table.0, generation);
    }
}

struct NoWork;

impl Kernel for NoWork {
    fn run_unit(&self, _task: usize) -> bool {
        false
    }
}

/// Runs `vmalloc-grow` with decisions from `chooser`.
///
/// # Panics
/// Without processes, CPUs or allocations.
pub fn run_with(config: &VmallocGrowConfig, chooser: &mut dyn Chooser) -> NeighbourRow {
    assert!(config.processes > 0 && config.cpus > 0 && config.allocations > 0);
    let layout = config.layout;
    let mut mc = MachineConfig::new(config.cpus, Platform::X86);
    mc.hardware = crate::run::hardware(crate::scenario::BackendKind::X86);
    mc.spaces = config.processes + 1;
    mc.tasks = 0;
    mc.frames = (config.processes + KERNEL_SLOTS + 64) as u32;
    mc.offers = Offers::NONE;
    for &(row, cycles) in &config.costs {
        mc.cost.set(row, cycles);
    }
    let machine = Rc::new(Machine::new(mc));
    machine.set_kernel(Rc::new(NoWork));
    let reference = machine
        .memory()
        .allocate_table(SpaceId::KERNEL, 0)
        .expect("a frame for the kernel's top-level table");
    machine.set_walker(
        crate::machine::walk::<lazymmu::pgtable::format::X86_64>,
        reference,
        |va| va >> 63 != 0,
    );
    machine.mark_top_level(reference);
    for index in 0..config.processes {
        let space = SpaceId(index as u32 + 1);
        let root = machine
            .memory()
            .allocate_table(space, 0)
            .expect("a frame for every process's top-level table");
        machine.set_space_root(space, root);
    }
    let tables = Tables {
        machine: machine.clone(),
        processes: config.processes,
        generations: RefCell::new(HashMap::new()),
    };
    let backend = X86Backend::new(
        SimMemory::new(machine.clone()),
        SimCpu::new(machine.clone()),
    );
    let sync = KernelSync::new(&tables, &backend, reference, config.policy, layout);
    let violation = |invariant, detail: String| machine.violation(invariant, detail);
    if let Err(e) = sync.boot() {
        violation(Invariant::OperationFailed, format!("boot: {e:?}"));
    }
    let boot_tables = u64::from(sync.stats().preallocated.load(Ordering::Relaxed));
    // Process creation copies the kernel half whatever the policy (Linux's
    // pgd_ctor copies all of it): not part of the comparison.
    for index in 0..config.processes {
        sync.init_process_table(tables.process_table(index));
    }
    let setup_copies = SyncStats::get(&sync.stats().entries_copied);
    machine.clear_counts();

    let slots = config.slots.clamp(1, KERNEL_SLOTS);
    let first_slot = layout
        .vmalloc_first_slot
        .min(KERNEL_FIRST_SLOT + KERNEL_SLOTS - slots);
    let mut areas: Vec<VirtAddr> = Vec::with_capacity(config.allocations);
    let mut accesses = 0u64;
    crate::run::lend_to(&machine, chooser, || {
        for allocation in 0..config.allocations {
            let slot = first_slot + allocation * slots / config.allocations;
            let va = layout.slot_base(slot).add((allocation as u64 % 64) << 22);
            machine.set_cpu(CpuId(0));
            if let Err(e) = sync.ensure_slot(va) {
                violation(
                    Invariant::OperationFailed,
                    format!("vmalloc at {va:?}: {e:?}"),
                );
                continue;
            }
            areas.push(va);
            for _ in 0..config.events_per_allocation {
                let cpu = CpuId::new(machine.pick_one_of(Site::Decision("cpu"), config.cpus));
                machine.set_cpu(cpu);
                if machine.pick_one_of(Site::Decision("switch or access"), 2) == 0 {
                    let index = machine.pick_one_of(Site::Decision("process"), config.processes);
                    let table = tables.process_table(index);
                    sync.switch_to(table);
                    // The process switches are the same under every
                    // policy: loading the root is not the policy's work.
                    machine.disturbing(|| machine.load_root(SpaceId(index as u32 + 1)));
                } else {
                    let va = areas[machine.pick_one_of(Site::Decision("area"), areas.len())];
                    accesses += 1;
                    match sync.kernel_access(tables.loaded_table(cpu), va) {
                        Ok(AccessOutcome::Hit) | Ok(AccessOutcome::FaultFixed) => {}
                        Err(KernelAccessError::MissingSync { table, slot }) => violation(
                            Invariant::MissingSync,
                            format!("table {table:?} lacks kernel slot {slot}"),
                        ),
                        Err(other) => violation(
                            Invariant::OperationFailed,
                            format!("access {va:?}: {other:?}"),
                        ),
                    }
                }
            }
        }
    });
    let stats = sync.stats();
    let adds = stats.top_level_adds.load(Ordering::Relaxed);
    if adds as usize > KERNEL_SLOTS {
        violation(
            Invariant::OperationFailed,
            format!("{adds} top-level additions in one boot (at most {KERNEL_SLOTS})"),
        );
    }
    let get = SyncStats::get;
    let copies = get(&stats.entries_copied) - setup_copies;
    // The kernel's work besides the entry stores the backend counted.
    machine.set_cpu(CpuId(0));
    machine.charge(Software::EntryCopy, copies);
    machine.charge(Software::Fault, get(&stats.faults_fixed));
    machine.charge(Software::GenerationCheck, get(&stats.generation_checks));
    machine.charge(Software::TableAlloc, boot_tables);
    let mut counts = BTreeMap::new();
    machine_counts(&machine, &mut counts);
    counts.extend([
        ("top_level_syncs", u64::from(adds)),
        ("boot_tables", boot_tables),
        ("entries_copied", copies),
        ("tables_walked", get(&stats.tables_walked)),
        ("faults", get(&stats.faults_fixed)),
        ("generation_checks", get(&stats.generation_checks)),
        ("generation_syncs", get(&stats.generation_syncs)),
        ("accesses", accesses),
    ]);
    let row = NeighbourRow {
        workload: "vmalloc-grow",
        machine: None,
        policy: sync_name(config.policy),
        cpus: config.cpus,
        processes: config.processes,
        counts,
        cycles: machine.cycles(),
        violations: machine.violation_count(),
        first_violations: machine.violations(),
    };
    machine.shut_down();
    row
}

/// Runs `vmalloc-grow` with the configuration's seed.
pub fn run(config: &VmallocGrowConfig) -> NeighbourRow {
    run_with(config, &mut seeded(config.seed))
}
