//! `ctxswitch`: a context-switch storm between user tasks and kernel
//! threads, under one lazy-TLB policy.
//!
//! Multi-threaded processes and kernel threads share the CPUs; at every
//! step one CPU switches task, touches its memory, unmaps a page (a flush),
//! frees page tables (a flush that frees tables), or starts its process's
//! exit (a new process replaces it). The machine model keeps each CPU's
//! root register and TLB contents per address space, delivers IPIs, and
//! tracks which core holds each shared cache line. Checked at every step:
//! no CPU uses a translation a flush removed (stale translation), and no
//! address space or page-table page is freed while a CPU may walk it. At
//! the end every process exits and every space must have been freed.
//!
//! Two figures come out: `cycles`, the work summed over all CPUs, and
//! `elapsed_cycles`, a lower bound on the time the storm takes with the
//! CPUs running in parallel — the busiest CPU's work, or the transfers of
//! the most contended cache line, which happen one at a time however many
//! CPUs wait for it, whichever is longer. The second is what a shared
//! reference count costs on a large machine.
//!
//! [`CtxSwitchConfig::switch_benchmark`] (`ctxswitch-bench` on the command
//! line) is the pure context-switch benchmark: one process's threads
//! switching through kernel threads on every CPU and nothing else.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};

use lazymmu::addr::{PageSize, SpaceId, VirtAddr};
use lazymmu::mm::active_mm::{
    check_space_free, check_tables_free, AddressSpace, CpuTlbState, FlushRange, HardwareView,
    LazyTlb, LazyTlbPolicy, LazyTlbStats, MmError, MmMachine, TaskMm,
};
use lazymmu::mm::{CpuId, CpuMask, LineAccess, SharedLine, MAX_CPUS};

use super::cost::NeighbourCosts;
use super::{Chooser, NeighbourInvariant, NeighbourRow, NeighbourViolation, Seeded, Violations};

/// Parameters of a `ctxswitch` run.
#[derive(Clone, Debug)]
pub struct CtxSwitchConfig {
    /// The workload's name in reports (`ctxswitch`, `ctxswitch-bench`).
    pub name: &'static str,
    /// Lazy-TLB policy.
    pub policy: LazyTlbPolicy,
    /// Simulated CPUs (1..=64).
    pub cpus: usize,
    /// User processes alive at any time.
    pub processes: usize,
    /// Threads per process.
    pub threads: usize,
    /// Kernel threads besides the idle tasks.
    pub kthreads: usize,
    /// Steps of the storm.
    pub steps: u64,
    /// Seed of the decisions.
    pub seed: u64,
    /// A deliberately broken machine whose IPIs to other CPUs vanish (the
    /// use-after-free check must fire).
    pub lose_ipis: bool,
    /// Relative weights of the step's actions: switch, touch memory, unmap
    /// a page, free page tables, exit.
    pub mix: [u32; 5],
    /// Cycle costs.
    pub costs: NeighbourCosts,
}

impl CtxSwitchConfig {
    /// The defaults for `cpus` CPUs: four processes with a thread per CPU
    /// each (so every address space is shared machine-wide, as in a
    /// threaded server), one kernel thread per CPU, 20,000 steps.
    pub fn new(policy: LazyTlbPolicy, cpus: usize) -> Self {
        Self {
            name: "ctxswitch",
            policy,
            cpus,
            processes: 4,
            threads: cpus,
            kthreads: cpus,
            steps: 20_000,
            seed: 1,
            lose_ipis: false,
            mix: [80, 12, 5, 2, 1],
            costs: NeighbourCosts::default(),
        }
    }

    /// A pure context-switch benchmark: one process with a thread per CPU
    /// and a kernel thread per CPU, every step a switch (so each CPU keeps
    /// going from a user thread into a kernel thread and back), nothing
    /// else. This is the shape of the benchmark behind Linux's lazy-TLB
    /// shootdown series (one process's threads switching through idle on
    /// every CPU), where the borrowed space's reference count is the
    /// contended line.
    pub fn switch_benchmark(policy: LazyTlbPolicy, cpus: usize) -> Self {
        Self {
            name: "ctxswitch-bench",
            processes: 1,
            mix: [1, 0, 0, 0, 0],
            ..Self::new(policy, cpus)
        }
    }
}

impl CtxSwitchConfig {
    /// A scenario small enough to explore: 2 CPUs, one single-threaded
    /// process, one kernel thread, `steps` steps.
    pub fn tiny(policy: LazyTlbPolicy, steps: u64) -> Self {
        Self {
            processes: 1,
            threads: 1,
            kthreads: 1,
            steps,
            ..Self::new(policy, 2)
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LineState {
    Modified(CpuId),
    Shared(CpuMask),
}

/// The machine: CPUs with root registers and TLBs, IPIs, shared lines.
struct Model {
    cpus: usize,
    current: Cell<CpuId>,
    step: Cell<u64>,
    spaces: Vec<AddressSpace>,
    cpu_states: Vec<CpuTlbState>,
    tasks: Vec<TaskMm>,
    running: Vec<Cell<usize>>,
    roots: Vec<Cell<SpaceId>>,
    /// (cpu, space) → invalidations done.
    invalidations: RefCell<HashMap<(CpuId, u32), u64>>,
    /// (cpu, space) → the mapping version of the oldest translation the
    /// CPU caches for the space.
    cached: RefCell<HashMap<(CpuId, u32), u64>>,
    /// Mapping version per space: bumped by every unmap.
    versions: RefCell<Vec<u64>>,
    tables: RefCell<Vec<usize>>,
    unlinked: RefCell<Vec<usize>>,
    snapshots: RefCell<HashMap<u32, Vec<u64>>>,
    lines: RefCell<HashMap<SharedLine, LineState>>,
    lose_ipis: bool,
    ipis: Cell<u64>,
    transfers: Cell<u64>,
    /// Transfers of reference-count, CPU-mask and lazy-flag lines.
    transfers_by_kind: [Cell<u64>; 3],
    /// Transfers per line over the run.
    transfers_by_line: RefCell<HashMap<SharedLine, u64>>,
    /// Costs, for charging each CPU's work.
    costs: NeighbourCosts,
    /// Cycles of work each CPU did.
    cpu_work: RefCell<Vec<u64>>,
    root_loads: Cell<u64>,
    full_flushes: Cell<u64>,
    invlpgs: Cell<u64>,
    tables_freed: Cell<u64>,
    spaces_freed: Cell<u64>,
    violations: RefCell<Violations>,
}

/// Page-table pages a new process starts with.
const TABLES_PER_SPACE: usize = 6;

impl Model {
    fn violation(&self, invariant: NeighbourInvariant, detail: String) {
        self.violations.borrow_mut().push(NeighbourViolation {
            invariant,
            step: self.step.get(),
            cpu: self.current.get(),
            detail,
        });
    }

    fn bump(cell: &Cell<u64>) {
        cell.set(cell.get() + 1);
    }

    /// Charges `cycles` of work to the current CPU.
    fn charge(&self, cycles: u64) {
        self.cpu_work.borrow_mut()[self.current.get()] += cycles;
    }

    /// A lower bound on the elapsed time of the run with the CPUs working
    /// in parallel: no shorter than the busiest CPU's work, and no shorter
    /// than the transfers of the most contended line, which happen one at
    /// a time whatever the number of CPUs.
    fn elapsed(&self) -> u64 {
        let busiest = self.cpu_work.borrow().iter().copied().max().unwrap_or(0);
        let hottest = self
            .transfers_by_line
            .borrow()
            .values()
            .copied()
            .max()
            .unwrap_or(0);
        busiest.max(hottest * self.costs.line_transfer)
    }

    /// The current CPU uses translations of `space`: any it caches must be
    /// at least as new as the space's mappings.
    fn touch(&self, space: SpaceId) {
        let cpu = self.current.get();
        let version = self.versions.borrow()[space.0 as usize];
        let mut cached = self.cached.borrow_mut();
        match cached.get(&(cpu, space.0)) {
            Some(&filled) if filled < version => {
                drop(cached);
                self.violation(
                    NeighbourInvariant::StaleTranslation,
                    format!(
                        "cpu{cpu} used a translation of space {} from version {filled}, \
                         unmapped at version {version}",
                        space.0
                    ),
                );
            }
            Some(_) => {}
            None => {
                cached.insert((cpu, space.0), version);
            }
        }
    }

    fn unmap(&self, space: SpaceId) {
        self.versions.borrow_mut()[space.0 as usize] += 1;
    }
}

impl MmMachine for Model {
    fn cpu(&self) -> CpuId {
        self.current.get()
    }
    fn space(&self, id: SpaceId) -> &AddressSpace {
        &self.spaces[id.0 as usize]
    }
    fn cpu_state(&self, cpu: CpuId) -> &CpuTlbState {
        &self.cpu_states[cpu]
    }
    fn current_task(&self) -> &TaskMm {
        &self.tasks[self.running[self.current.get()].get()]
    }
    fn load_root(&self, space: SpaceId) {
        Self::bump(&self.root_loads);
        self.charge(self.costs.root_load);
        self.roots[self.current.get()].set(space);
    }
    fn flush_local(&self, space: SpaceId, range: FlushRange) {
        let cpu = self.current.get();
        match range {
            FlushRange::All => {
                Self::bump(&self.full_flushes);
                self.charge(self.costs.full_flush);
            }
            FlushRange::Range { .. } => {
                Self::bump(&self.invlpgs);
                self.charge(self.costs.invlpg);
            }
        }
        *self
            .invalidations
            .borrow_mut()
            .entry((cpu, space.0))
            .or_insert(0) += 1;
        // The model tracks one page per space: a range flush removes it too.
        self.cached.borrow_mut().remove(&(cpu, space.0));
    }
    fn on_each_cpu(&self, targets: CpuMask, func: &dyn Fn(CpuId)) {
        let here = self.current.get();
        for cpu in targets.iter().filter(|&cpu| cpu < self.cpus) {
            if cpu != here {
                Self::bump(&self.ipis);
                // The sender waits for the acknowledgement.
                self.charge(self.costs.ipi);
                if self.lose_ipis {
                    continue;
                }
            }
            self.current.set(cpu);
            func(cpu);
            self.current.set(here);
        }
    }
    fn unlink_tables(&self, space: SpaceId, range: FlushRange) -> usize {
        let index = space.0 as usize;
        let available = self.tables.borrow()[index];
        let taken = match range {
            FlushRange::All => available,
            FlushRange::Range { .. } => available.min(1),
        };
        self.tables.borrow_mut()[index] -= taken;
        self.unlinked.borrow_mut()[index] += taken;
        let snapshot = (0..self.cpus)
            .map(|cpu| self.invalidations(cpu, space))
            .collect();
        self.snapshots.borrow_mut().insert(space.0, snapshot);
        taken
    }
    fn free_unlinked_tables(&self, space: SpaceId) {
        let snapshot = self
            .snapshots
            .borrow_mut()
            .remove(&space.0)
            .unwrap_or_default();
        if let Err(uaf) = check_tables_free(self, space, &snapshot) {
            self.violation(NeighbourInvariant::UseAfterFree, uaf.to_string());
        }
        let freed = std::mem::take(&mut self.unlinked.borrow_mut()[space.0 as usize]);
        self.tables_freed
            .set(self.tables_freed.get() + freed as u64);
    }
    fn free_space(&self, space: SpaceId) {
        if let Err(uaf) = check_space_free(self, space) {
            self.violation(NeighbourInvariant::UseAfterFree, uaf.to_string());
        }
        Self::bump(&self.spaces_freed);
    }
    fn line_access(&self, line: SharedLine, access: LineAccess) {
        let cpu = self.current.get();
        let mut lines = self.lines.borrow_mut();
        let (transfer, next) = match (lines.get(&line).copied(), access) {
            (None, LineAccess::Read) => (false, LineState::Shared(CpuMask::single(cpu))),
            (None, LineAccess::Write) => (false, LineState::Modified(cpu)),
            (Some(LineState::Modified(owner)), LineAccess::Read) if owner == cpu => {
                (false, LineState::Modified(cpu))
            }
            (Some(LineState::Modified(owner)), LineAccess::Read) => {
                (true, LineState::Shared(CpuMask::single(owner).with(cpu)))
            }
            (Some(LineState::Modified(owner)), LineAccess::Write) => {
                (owner != cpu, LineState::Modified(cpu))
            }
            (Some(LineState::Shared(mask)), LineAccess::Read) => {
                (!mask.contains(cpu), LineState::Shared(mask.with(cpu)))
            }
            (Some(LineState::Shared(mask)), LineAccess::Write) => {
                (!mask.without(cpu).is_empty(), LineState::Modified(cpu))
            }
        };
        lines.insert(line, next);
        if transfer {
            Self::bump(&self.transfers);
            self.charge(self.costs.line_transfer);
            *self.transfers_by_line.borrow_mut().entry(line).or_insert(0) += 1;
            Self::bump(
                &self.transfers_by_kind[match line {
                    SharedLine::SpaceCount(_) => 0,
                    SharedLine::SpaceCpumask(_) => 1,
                    SharedLine::CpuLazy(_) => 2,
                }],
            );
        }
    }
}

impl HardwareView for Model {
    fn cpu_count(&self) -> usize {
        self.cpus
    }
    fn root(&self, cpu: CpuId) -> SpaceId {
        self.roots[cpu].get()
    }
    fn invalidations(&self, cpu: CpuId, space: SpaceId) -> u64 {
        self.invalidations
            .borrow()
            .get(&(cpu, space.0))
            .copied()
            .unwrap_or(0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A free task slot.
    Free,
    Idle(CpuId),
    Kernel,
    User(usize),
}

#[derive(Clone, Debug)]
struct Process {
    space: SpaceId,
    threads: Vec<usize>,
    dying: bool,
}

/// The scheduler's view: what each task slot holds, who may run, which
/// slots are free for new processes.
struct Sched {
    kinds: Vec<Kind>,
    dead: Vec<bool>,
    /// Live tasks that are not running, idle tasks excepted.
    runnable: Vec<usize>,
    free_slots: Vec<usize>,
    processes: Vec<Process>,
    next_space: u32,
}

impl Sched {
    fn take_runnable(&mut self, task: usize) {
        if let Some(at) = self.runnable.iter().position(|&t| t == task) {
            self.runnable.swap_remove(at);
        }
    }
}

struct Run<'a> {
    model: &'a Model,
    mix: [u32; 5],
    tlb: LazyTlb<&'a Model>,
    sched: Sched,
    switches: u64,
}

impl Run<'_> {
    fn switch(&mut self, cpu: CpuId, next: usize) {
        let model = self.model;
        let prev = model.running[cpu].get();
        model.current.set(cpu);
        model.running[cpu].set(next);
        if let Err(e) = self
            .tlb
            .context_switch(&model.tasks[prev], &model.tasks[next])
        {
            model.violation(
                NeighbourInvariant::OperationFailed,
                format!("switch t{prev} -> t{next}: {e:?}"),
            );
            if matches!(e, MmError::NotRunning | MmError::SpaceFreed(_)) {
                // Refused before anything changed.
                model.running[cpu].set(prev);
                return;
            }
        }
        self.switches += 1;
        model.charge(model.costs.switch);
        self.sched.take_runnable(next);
        if self.sched.dead[prev] {
            // Switched away for the last time: the slot can be reused.
            self.sched.kinds[prev] = Kind::Free;
            self.sched.dead[prev] = false;
            self.sched.free_slots.push(prev);
        } else if !matches!(self.sched.kinds[prev], Kind::Idle(_)) {
            self.sched.runnable.push(prev);
        }
        if let Kind::User(process) = self.sched.kinds[next] {
            model.touch(self.sched.processes[process].space);
            if self.sched.processes[process].dying {
                self.exit_current(cpu);
            }
        }
    }

    /// The task running on `cpu` leaves its address space and is gone; the
    /// CPU goes to its idle task.
    fn exit_current(&mut self, cpu: CpuId) {
        let model = self.model;
        let task = model.running[cpu].get();
        model.current.set(cpu);
        if let Err(e) = self.tlb.exit_mm(&model.tasks[task]) {
            model.violation(
                NeighbourInvariant::OperationFailed,
                format!("exit t{task}: {e:?}"),
            );
        }
        self.sched.dead[task] = true;
        self.switch(cpu, cpu);
    }

    /// A new process with `threads` threads; `None` when the preallocated
    /// spaces or task slots are used up.
    fn fork(&mut self, threads: usize) -> Option<usize> {
        let id = self.sched.next_space;
        if id as usize >= self.model.spaces.len() || self.sched.free_slots.len() < threads {
            return None;
        }
        self.sched.next_space += 1;
        let space = SpaceId(id);
        self.model.tables.borrow_mut()[id as usize] = TABLES_PER_SPACE;
        let process = self.sched.processes.len();
        let mut members = Vec::new();
        for thread in 0..threads {
            if thread > 0 {
                self.tlb.mmget(space).ok()?;
            }
            let task = self.sched.free_slots.pop()?;
            if let Err(e) = self.model.tasks[task].reuse_as_user(space) {
                self.model.violation(
                    NeighbourInvariant::OperationFailed,
                    format!("reuse t{task}: {e:?}"),
                );
            }
            self.sched.kinds[task] = Kind::User(process);
            self.sched.runnable.push(task);
            members.push(task);
        }
        self.sched.processes.push(Process {
            space,
            threads: members,
            dying: false,
        });
        Some(process)
    }

    fn current_user_space(&self, cpu: CpuId) -> Option<(usize, SpaceId)> {
        let task = self.model.running[cpu].get();
        match self.sched.kinds[task] {
            Kind::User(process) if !self.sched.dead[task] => {
                Some((process, self.sched.processes[process].space))
            }
            _ => None,
        }
    }

    fn step(&mut self, chooser: &mut dyn Chooser, threads: usize) {
        let model = self.model;
        let cpu = chooser.choose(model.cpus);
        model.current.set(cpu);
        // A context-switch storm: mostly switches, some memory use, a few
        // unmaps (flushes), table frees and exits.
        let action = chooser.choose_weighted(&self.mix);
        let page = FlushRange::Range {
            start: VirtAddr(0x40_0000),
            end: VirtAddr(0x40_1000),
            stride: PageSize::Size4K,
        };
        match action {
            0 => {
                let (kernel, user): (Vec<usize>, Vec<usize>) = self
                    .sched
                    .runnable
                    .iter()
                    .partition(|&&t| self.sched.kinds[t] == Kind::Kernel);
                let mut kernel = kernel;
                if model.running[cpu].get() != cpu {
                    kernel.push(cpu);
                }
                let pool = match (kernel.is_empty(), user.is_empty()) {
                    (true, true) => return,
                    (false, true) => kernel,
                    (true, false) => user,
                    (false, false) => {
                        if chooser.choose(2) == 0 {
                            kernel
                        } else {
                            user
                        }
                    }
                };
                let next = pool[chooser.choose(pool.len())];
                self.switch(cpu, next);
            }
            1 => {
                if let Some((_, space)) = self.current_user_space(cpu) {
                    model.touch(space);
                }
            }
            2 => {
                if let Some((_, space)) = self.current_user_space(cpu) {
                    model.unmap(space);
                    self.tlb.flush_tlb_mm_range(space, page, false);
                    model.current.set(cpu);
                    model.touch(space);
                }
            }
            3 => {
                if let Some((_, space)) = self.current_user_space(cpu) {
                    model.unmap(space);
                    self.tlb.free_page_tables(space, page);
                }
            }
            _ => {
                if let Some((process, _)) = self.current_user_space(cpu) {
                    if self.fork(threads).is_some() {
                        self.sched.processes[process].dying = true;
                        self.exit_current(cpu);
                    }
                }
            }
        }
    }

    /// Every remaining thread exits; then a fresh process runs on every
    /// CPU, which ends every borrow.
    fn wind_down(&mut self) {
        let model = self.model;
        for process in 0..self.sched.processes.len() {
            self.sched.processes[process].dying = true;
            for thread in self.sched.processes[process].threads.clone() {
                if self.sched.kinds[thread] != Kind::User(process) || self.sched.dead[thread] {
                    continue;
                }
                match (0..model.cpus).find(|&cpu| model.running[cpu].get() == thread) {
                    Some(cpu) => self.exit_current(cpu),
                    // Runs, sees its process dying, exits.
                    None => self.switch(0, thread),
                }
            }
        }
        if let Some(last) = self.fork(model.cpus) {
            for (cpu, task) in self.sched.processes[last]
                .threads
                .clone()
                .into_iter()
                .enumerate()
            {
                self.switch(cpu, task);
            }
        }
    }
}

/// Runs `ctxswitch` with decisions from `chooser`.
pub fn run_with(config: &CtxSwitchConfig, chooser: &mut dyn Chooser) -> NeighbourRow {
    assert!(
        (1..=MAX_CPUS).contains(&config.cpus),
        "ctxswitch models 1..=64 CPUs"
    );
    let cpus = config.cpus;
    // Every exit forks a replacement: at most one per 25 steps on
    // average, plus the initial population and the final process.
    let max_spaces = 1 + config.processes + config.steps as usize / 50 + 2;
    let first_user = cpus + config.kthreads;
    // Live user tasks never exceed the population plus the dying threads
    // still to be switched away; twice the population and a final process
    // is ample.
    let max_tasks = first_user + 2 * config.processes * config.threads + 2 * cpus;
    let model = Model {
        cpus,
        current: Cell::new(0),
        step: Cell::new(0),
        spaces: (0..max_spaces)
            .map(|i| AddressSpace::new(SpaceId(i as u32)))
            .collect(),
        cpu_states: (0..cpus).map(|_| CpuTlbState::new()).collect(),
        tasks: (0..max_tasks).map(|_| TaskMm::kernel_thread()).collect(),
        running: (0..cpus).map(Cell::new).collect(),
        roots: (0..cpus).map(|_| Cell::new(SpaceId::KERNEL)).collect(),
        invalidations: RefCell::new(HashMap::new()),
        cached: RefCell::new(HashMap::new()),
        versions: RefCell::new(vec![0; max_spaces]),
        tables: RefCell::new(vec![0; max_spaces]),
        unlinked: RefCell::new(vec![0; max_spaces]),
        snapshots: RefCell::new(HashMap::new()),
        lines: RefCell::new(HashMap::new()),
        lose_ipis: config.lose_ipis,
        ipis: Cell::new(0),
        transfers: Cell::new(0),
        transfers_by_kind: Default::default(),
        transfers_by_line: RefCell::new(HashMap::new()),
        costs: config.costs.clone(),
        cpu_work: RefCell::new(vec![0; cpus]),
        root_loads: Cell::new(0),
        full_flushes: Cell::new(0),
        invlpgs: Cell::new(0),
        tables_freed: Cell::new(0),
        spaces_freed: Cell::new(0),
        violations: RefCell::new(Violations::default()),
    };
    let mut kinds = vec![Kind::Free; max_tasks];
    for (index, kind) in kinds.iter_mut().enumerate().take(first_user) {
        *kind = if index < cpus {
            Kind::Idle(index)
        } else {
            Kind::Kernel
        };
    }
    let mut run = Run {
        model: &model,
        mix: config.mix,
        tlb: LazyTlb::new(&model, config.policy),
        sched: Sched {
            kinds,
            dead: vec![false; max_tasks],
            runnable: (cpus..first_user).collect(),
            free_slots: (first_user..max_tasks).rev().collect(),
            processes: Vec::new(),
            next_space: 1,
        },
        switches: 0,
    };
    for cpu in 0..cpus {
        model.current.set(cpu);
        run.tlb.boot_cpu(&model.tasks[cpu]);
    }
    for _ in 0..config.processes {
        run.fork(config.threads);
    }
    for step in 0..config.steps {
        model.step.set(step);
        run.step(chooser, config.threads);
    }
    // The storm's elapsed time, before the wind-down.
    let elapsed = model.elapsed();
    model.step.set(config.steps);
    run.wind_down();
    let last = run.sched.processes.len() - 1;
    for (index, process) in run.sched.processes.iter().enumerate() {
        if index != last && !model.spaces[process.space.0 as usize].is_freed() {
            model.violation(
                NeighbourInvariant::OperationFailed,
                format!("space {} leaked", process.space.0),
            );
        }
    }

    let stats = run.tlb.stats();
    let get = LazyTlbStats::get;
    let costs = &config.costs;
    let cycles = run.switches * costs.switch
        + model.ipis.get() * costs.ipi
        + model.transfers.get() * costs.line_transfer
        + model.root_loads.get() * costs.root_load
        + model.full_flushes.get() * costs.full_flush
        + model.invlpgs.get() * costs.invlpg;
    let hottest = model
        .transfers_by_line
        .borrow()
        .values()
        .copied()
        .max()
        .unwrap_or(0);
    let counts: BTreeMap<&'static str, u64> = [
        ("switches", run.switches),
        ("hottest_line_transfers", hottest),
        ("elapsed_cycles", elapsed),
        (
            "switches_per_mcycle",
            (run.switches * 1_000_000).checked_div(elapsed).unwrap_or(0),
        ),
        ("borrows", get(&stats.borrows)),
        ("borrow_refs", get(&stats.borrow_refs)),
        ("line_transfers", model.transfers.get()),
        ("count_line_transfers", model.transfers_by_kind[0].get()),
        ("mask_line_transfers", model.transfers_by_kind[1].get()),
        ("lazy_flag_transfers", model.transfers_by_kind[2].get()),
        ("ipis", model.ipis.get()),
        ("shootdown_ipis", get(&stats.shootdown_ipis)),
        ("flush_skipped_lazy", get(&stats.flush_skipped_lazy)),
        ("root_loads", model.root_loads.get()),
        ("full_flushes", model.full_flushes.get()),
        ("invlpg", model.invlpgs.get()),
        ("catchup_flushes", get(&stats.catchup_flushes)),
        ("spaces_freed", model.spaces_freed.get()),
    ]
    .into_iter()
    .collect();
    let violations = model.violations.borrow();
    NeighbourRow {
        workload: config.name,
        policy: config.policy.name(),
        cpus,
        processes: config.processes,
        counts,
        cycles,
        violations: violations.count(),
        first_violations: violations.first().to_vec(),
    }
}

/// Runs `ctxswitch` with the configuration's seed.
pub fn run(config: &CtxSwitchConfig) -> NeighbourRow {
    run_with(config, &mut Seeded::new(config.seed))
}
