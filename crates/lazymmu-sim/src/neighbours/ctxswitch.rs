//! `ctxswitch`: a context-switch storm between user tasks and kernel
//! threads, under one lazy-TLB policy, on the machine.
//!
//! Multi-threaded processes and kernel threads share the CPUs; at every
//! step one CPU switches task, touches its process's page, unmaps it (a
//! real PTE clear and `flush_tlb_mm_range()`), frees its page tables (a
//! real unlink, a flush that frees tables, and the free), or starts its
//! process's exit (a new process replaces it). The switches are the
//! machine's own, through the library's `LazyTlb` (`switch_mm`, borrows,
//! `mm_cpumask`), and every flush and IPI is the machine's, charged from
//! the one cost table. Checked at every step: no CPU uses a stale
//! translation of a page it touches (§6.1), and no address space or
//! page-table page is freed while a CPU may walk it (§6.7, by what the
//! TLBs hold and by the invalidations each CPU made). At the end every
//! process exits and every space must have been freed.
//!
//! Two figures come out: `cycles`, the work summed over all CPUs, and
//! `elapsed_cycles`, the time the storm takes with the CPUs running in
//! parallel: the latest CPU clock, each clock its CPU's work plus its waits
//! for shared cache lines, whose transfers happen one at a time however
//! many CPUs want them. (The storm picks CPUs at random, so this time is an
//! estimate: a CPU behind the others queues behind transfers it would on
//! hardware have overtaken.) The second is what a shared reference count
//! costs on a large machine.
//!
//! [`CtxSwitchConfig::switch_benchmark`] (`ctxswitch-bench` on the command
//! line) is the pure context-switch benchmark, will-it-scale's
//! `context_switch1_threads`, with every CPU run in time order
//! ([`Machine::run_timed`]): see [`CtxSwitchConfig::ping_pong`].

use std::collections::BTreeMap;
use std::rc::Rc;

use lazymmu::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use lazymmu::backend::x86::X86Backend;
use lazymmu::backend::{EntryUpdate, PteAccess};
use lazymmu::cpu::CpuId;
use lazymmu::mm::active_mm::{FlushRange, LazyTlb, LazyTlbPolicy, LazyTlbStats};
use lazymmu::pgtable::format::{index, Attributes, Entry, Format, X86_64};

use super::{lazy_tlb_name, machine_counts, seeded, NeighbourRow};
use crate::choice::{Chooser, Site};
use crate::cost::{Cost, Platform, Software};
use crate::invariant::Invariant;
use crate::machine::topology::NamedMachine;
use crate::machine::{
    tables_under, walk, Kernel, Machine, MachineConfig, Offers, SimCpu, SimMemory, Topology,
};
use crate::published::{PublishedFigure, Topic, PUBLISHED};

/// Parameters of a `ctxswitch` run.
#[derive(Clone, Debug)]
pub struct CtxSwitchConfig {
    /// The workload's name in reports (`ctxswitch`, `ctxswitch-bench`).
    pub name: &'static str,
    /// Lazy-TLB policy.
    pub policy: LazyTlbPolicy,
    /// Simulated CPUs: 1 to [`MAX_BACKEND_CPUS`] for the storm (its pages
    /// go through the x86 backend), 1 to [`MAX_CPUS`] for the
    /// ping-pong benchmark. Equal to `topology.cpus()`.
    ///
    /// [`MAX_BACKEND_CPUS`]: lazymmu::backend::machine::MAX_BACKEND_CPUS
    /// [`MAX_CPUS`]: lazymmu::cpu::MAX_CPUS
    pub cpus: usize,
    /// How the CPUs sit: what moving a line between two of them costs.
    pub topology: Topology,
    /// The cost table (and, for [`CtxSwitchConfig::ping_pong`], whether
    /// atomics retry and the clock rates are reported at).
    pub platform: Platform,
    /// will-it-scale's `context_switch1_threads` instead of the storm: see
    /// [`CtxSwitchConfig::ping_pong`].
    pub ping_pong: bool,
    /// User processes alive at any time.
    pub processes: usize,
    /// Threads per process. The ping-pong benchmark runs one thread on
    /// each of the CPUs `0..threads` (as many as CPUs by default), and
    /// only those CPUs come online.
    pub threads: usize,
    /// Kernel threads besides the idle tasks.
    pub kthreads: usize,
    /// Steps of the storm; for the ping-pong benchmark, the context
    /// switches to make in all (at least two per CPU).
    pub steps: u64,
    /// Seed of the decisions.
    pub seed: u64,
    /// A deliberately broken machine whose IPIs to other CPUs vanish (the
    /// use-after-free check must fire).
    pub lose_ipis: bool,
    /// Relative weights of the step's actions: switch, touch memory, unmap
    /// a page, free page tables, exit.
    pub mix: [u32; 5],
    /// Cost overrides.
    pub costs: Vec<(Cost, u64)>,
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
            topology: Topology::flat(cpus),
            platform: Platform::X86,
            ping_pong: false,
            processes: 4,
            threads: cpus,
            kthreads: cpus,
            steps: 20_000,
            seed: 1,
            lose_ipis: false,
            mix: [80, 12, 5, 2, 1],
            costs: Vec::new(),
        }
    }

    /// The pure context-switch benchmark on `cpus` CPUs of one socket and
    /// the x86 cost table: [`CtxSwitchConfig::ping_pong`].
    pub fn switch_benchmark(policy: LazyTlbPolicy, cpus: usize) -> Self {
        Self::ping_pong(policy, Topology::flat(cpus), Platform::X86)
    }

    /// will-it-scale's `context_switch1_threads` with as many threads as
    /// CPUs, the benchmark behind Linux 6.4's lazy-TLB shootdown figures,
    /// on `topology` with `platform`'s costs.
    ///
    /// The test (will-it-scale tests/context_switch1.c, main.c) starts one
    /// copy per pair of threads, bound to a core, in one process (the
    /// `_threads` build); each copy writes a byte into a pipe its partner
    /// thread reads, then blocks reading the partner's reply. With one
    /// thread per CPU, a blocked reader's CPU goes idle: every switch goes
    /// from a user thread into the idle task, which borrows the process's
    /// address space (`mmgrab_lazy_tlb()`), or back (`mmdrop_lazy_tlb()`),
    /// and every CPU of the machine touches the one `mm_count`. Here each
    /// CPU runs one thread, paired with its SMT sibling
    /// ([`Topology::partner`]); a write wakes the partner at the writer's
    /// time ([`Machine::wake`]), a read blocks until woken
    /// ([`Machine::block`]), and the CPUs run in time order, so that they
    /// queue for the count's line as they would on hardware. The pipe
    /// system calls and the wake-up's own cost are not modelled: the
    /// switches and the lazy-TLB work are.
    pub fn ping_pong(policy: LazyTlbPolicy, topology: Topology, platform: Platform) -> Self {
        let cpus = topology.cpus();
        Self {
            name: "ctxswitch-bench",
            topology,
            platform,
            ping_pong: true,
            processes: 1,
            kthreads: 0,
            mix: [1, 0, 0, 0, 0],
            ..Self::new(policy, cpus)
        }
    }

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

/// The page each process maps and the storm touches, unmaps and frees.
const PAGE: u64 = 0x40_0000;
/// The physical page it maps.
const DATA: u64 = 0x1_0000_0000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A free task slot.
    Free,
    Idle,
    Kernel,
    User(usize),
}

#[derive(Clone, Debug)]
struct Process {
    space: SpaceId,
    threads: Vec<usize>,
    dying: bool,
}

/// The kernel of the storm: context switches go through lazy TLB.
struct StormKernel {
    machine: Rc<Machine>,
    tlb: LazyTlb<SimCpu>,
}

impl Kernel for StormKernel {
    fn switch_mm(&self, _cpu: CpuId, prev: usize, next: usize) -> bool {
        let m = &self.machine;
        if let Err(e) = self.tlb.context_switch(m.task_mm(prev), m.task_mm(next)) {
            m.violation(
                Invariant::OperationFailed,
                format!("switch t{prev} -> t{next}: {e:?}"),
            );
        }
        true
    }

    fn run_unit(&self, _task: usize) -> bool {
        false
    }
}

/// The scheduler's view: what each task slot holds, who may run, which
/// slots are free for new processes.
struct Storm {
    machine: Rc<Machine>,
    kernel: Rc<StormKernel>,
    backend: X86Backend<SimMemory, SimCpu>,
    mix: [u32; 5],
    kinds: Vec<Kind>,
    dead: Vec<bool>,
    /// Live tasks that are not running, idle tasks excepted.
    runnable: Vec<usize>,
    free_slots: Vec<usize>,
    processes: Vec<Process>,
    next_space: u32,
}

impl Storm {
    fn tlb(&self) -> &LazyTlb<SimCpu> {
        &self.kernel.tlb
    }

    fn take_runnable(&mut self, task: usize) {
        if let Some(at) = self.runnable.iter().position(|&t| t == task) {
            self.runnable.swap_remove(at);
        }
    }

    fn switch(&mut self, cpu: CpuId, next: usize) {
        let m = self.machine.clone();
        let prev = m.task_on(cpu);
        if prev == next {
            return;
        }
        m.switch(cpu, next);
        if m.task_on(cpu) != next {
            return;
        }
        self.take_runnable(next);
        if self.dead[prev] {
            // Switched away for the last time: the slot can be reused.
            self.kinds[prev] = Kind::Free;
            self.dead[prev] = false;
            self.free_slots.push(prev);
        } else if self.kinds[prev] != Kind::Idle {
            self.runnable.push(prev);
        }
        if let Kind::User(process) = self.kinds[next] {
            m.set_cpu(cpu);
            self.touch(self.processes[process].space);
            if self.processes[process].dying {
                self.exit_current(cpu);
            }
        }
    }

    /// The PTE of [`PAGE`] in `space`, if its table is there.
    fn pte(&self, space: SpaceId) -> Option<PhysAddr> {
        let m = &self.machine;
        let mut table = m.space_root(space);
        for level in (2..=X86_64::LEVELS).rev() {
            let entry = table.add(8 * index::<X86_64>(PAGE, level) as u64);
            match X86_64::decode(m.memory().read(entry), level) {
                Entry::Table(next) => table = next,
                _ => return None,
            }
        }
        Some(table.add(8 * index::<X86_64>(PAGE, 1) as u64))
    }

    /// Builds `space`'s tables down to [`PAGE`]'s PTE table (the page-fault
    /// path; kernel work the storm does not charge).
    fn fault_in_tables(&self, space: SpaceId) -> PhysAddr {
        let m = &self.machine;
        let memory = m.memory();
        let mut table = m.space_root(space);
        for level in (2..=X86_64::LEVELS).rev() {
            let entry = table.add(8 * index::<X86_64>(PAGE, level) as u64);
            table = match X86_64::decode(memory.read(entry), level) {
                Entry::Table(next) => next,
                _ => {
                    let next = memory
                        .allocate_table(space, 0)
                        .expect("the storm's machine has frames for every process");
                    memory.write(entry, X86_64::encode_table(next, level));
                    next
                }
            };
        }
        table.add(8 * index::<X86_64>(PAGE, 1) as u64)
    }

    /// The current CPU uses the page of `space`: faulted in if unmapped,
    /// and any translation it still caches must be current.
    fn touch(&self, space: SpaceId) {
        let m = &self.machine;
        let pte = self
            .pte(space)
            .unwrap_or_else(|| self.fault_in_tables(space));
        if !X86_64::is_valid(m.memory().read(pte)) {
            self.backend.write_entry(EntryUpdate {
                entry: pte,
                va: VirtAddr(PAGE),
                space,
                level: 1,
                value: X86_64::encode_leaf(
                    PhysAddr(DATA),
                    PageSize::Size4K,
                    Attributes::user_data(),
                ),
                kernel: false,
                valid: true,
                leaf: true,
            });
        }
        let _ = m.use_page(space, VirtAddr(PAGE));
    }

    fn page_range() -> FlushRange {
        FlushRange::Range {
            start: VirtAddr(PAGE),
            end: VirtAddr(PAGE + 0x1000),
            stride: PageSize::Size4K,
        }
    }

    /// munmap of the page: the PTE cleared, then `flush_tlb_mm_range()`.
    fn unmap(&self, space: SpaceId) {
        if let Some(pte) = self.pte(space) {
            let _ = self.backend.get_and_clear(EntryUpdate {
                entry: pte,
                va: VirtAddr(PAGE),
                space,
                level: 1,
                value: 0,
                kernel: false,
                valid: false,
                leaf: true,
            });
        }
        self.tlb()
            .flush_tlb_mm_range(space, Self::page_range(), false);
    }

    /// The task running on `cpu` leaves its address space and is gone; the
    /// CPU goes to its idle task.
    fn exit_current(&mut self, cpu: CpuId) {
        let m = self.machine.clone();
        let task = m.task_on(cpu);
        m.set_cpu(cpu);
        if let Err(e) = self.tlb().exit_mm(m.task_mm(task)) {
            m.violation(Invariant::OperationFailed, format!("exit t{task}: {e:?}"));
        }
        self.dead[task] = true;
        self.switch(cpu, m.idle_task(cpu));
    }

    /// A new process with `threads` threads; `None` when the spaces or
    /// task slots are used up.
    fn fork(&mut self, threads: usize) -> Option<usize> {
        let m = self.machine.clone();
        let id = self.next_space;
        if id as usize >= m.space_count() || self.free_slots.len() < threads {
            return None;
        }
        self.next_space += 1;
        let space = SpaceId(id);
        let root = m.memory().allocate_table(space, 0)?;
        m.set_space_root(space, root);
        let process = self.processes.len();
        let mut members = Vec::new();
        for thread in 0..threads {
            if thread > 0 {
                self.tlb().mmget(space).ok()?;
            }
            let task = self.free_slots.pop()?;
            if let Err(e) = m.task_mm(task).reuse_as_user(space) {
                m.violation(Invariant::OperationFailed, format!("reuse t{task}: {e:?}"));
            }
            m.set_task_space(task, space);
            self.kinds[task] = Kind::User(process);
            self.runnable.push(task);
            members.push(task);
        }
        self.processes.push(Process {
            space,
            threads: members,
            dying: false,
        });
        Some(process)
    }

    fn current_user_space(&self, cpu: CpuId) -> Option<(usize, SpaceId)> {
        let task = self.machine.task_on(cpu);
        match self.kinds[task] {
            Kind::User(process) if !self.dead[task] => {
                Some((process, self.processes[process].space))
            }
            _ => None,
        }
    }

    fn step(&mut self, threads: usize) {
        let m = self.machine.clone();
        let cpu = CpuId::new(m.pick_one_of(Site::Decision("cpu"), m.cpu_count()));
        m.set_cpu(cpu);
        // A context-switch storm: mostly switches, some memory use, a few
        // unmaps (flushes), table frees and exits.
        match m.pick(Site::Decision("action"), &self.mix) {
            0 => {
                let (kernel, user): (Vec<usize>, Vec<usize>) = self
                    .runnable
                    .iter()
                    .partition(|&&t| self.kinds[t] == Kind::Kernel);
                let mut kernel = kernel;
                if m.task_on(cpu) != m.idle_task(cpu) {
                    kernel.push(m.idle_task(cpu));
                }
                let pool = match (kernel.is_empty(), user.is_empty()) {
                    (true, true) => return,
                    (false, true) => kernel,
                    (true, false) => user,
                    (false, false) => {
                        if m.pick_one_of(Site::Decision("kind"), 2) == 0 {
                            kernel
                        } else {
                            user
                        }
                    }
                };
                let next = pool[m.pick_one_of(Site::Decision("task"), pool.len())];
                self.switch(cpu, next);
            }
            1 => {
                if let Some((_, space)) = self.current_user_space(cpu) {
                    self.touch(space);
                }
            }
            2 => {
                if let Some((_, space)) = self.current_user_space(cpu) {
                    self.unmap(space);
                    m.set_cpu(cpu);
                    self.touch(space);
                }
            }
            3 => {
                if let Some((_, space)) = self.current_user_space(cpu) {
                    if let Some(pte) = self.pte(space) {
                        m.apply_store(pte, 0);
                    }
                    self.tlb().free_page_tables(space, Self::page_range());
                }
            }
            _ => {
                if let Some((process, _)) = self.current_user_space(cpu) {
                    if self.fork(threads).is_some() {
                        self.processes[process].dying = true;
                        self.exit_current(cpu);
                    }
                }
            }
        }
    }

    /// Every remaining thread exits; then a fresh process runs on every
    /// CPU, which ends every borrow.
    fn wind_down(&mut self) {
        let m = self.machine.clone();
        for process in 0..self.processes.len() {
            self.processes[process].dying = true;
            for thread in self.processes[process].threads.clone() {
                if self.kinds[thread] != Kind::User(process) || self.dead[thread] {
                    continue;
                }
                match (0..m.cpu_count())
                    .map(CpuId::new)
                    .find(|&cpu| m.task_on(cpu) == thread)
                {
                    Some(cpu) => self.exit_current(cpu),
                    // Runs, sees its process dying, exits.
                    None => self.switch(CpuId(0), thread),
                }
            }
        }
        if let Some(last) = self.fork(m.cpu_count()) {
            for (cpu, task) in self.processes[last].threads.clone().into_iter().enumerate() {
                self.switch(CpuId::new(cpu), task);
            }
        }
    }
}

/// Runs `ctxswitch` (or, with [`CtxSwitchConfig::ping_pong`], the
/// benchmark) with decisions from `chooser`.
///
/// # Panics
/// If `config.cpus` is out of range (1 to 64 for the storm, 1 to 2,048 for
/// the benchmark) or differs from `config.topology`.
pub fn run_with(config: &CtxSwitchConfig, chooser: &mut dyn Chooser) -> NeighbourRow {
    assert_eq!(
        config.cpus,
        config.topology.cpus(),
        "the CPU count is the topology's"
    );
    if config.ping_pong {
        return run_ping_pong(config);
    }
    assert!(
        (1..=lazymmu::backend::machine::MAX_BACKEND_CPUS).contains(&config.cpus),
        "the ctxswitch storm models 1..=64 CPUs"
    );
    let cpus = config.cpus;
    // Every exit forks a replacement: at most one per 25 steps on
    // average, plus the initial population and the final process.
    let max_spaces = 1 + config.processes + config.steps as usize / 50 + 2;
    // Live user tasks never exceed the population plus the dying threads
    // still to be switched away; twice the population and a final process
    // is ample.
    let user_slots = 2 * config.processes * config.threads + 2 * cpus;
    let mut mc = machine_config(config);
    mc.spaces = max_spaces;
    mc.tasks = config.kthreads + user_slots;
    mc.frames = (max_spaces * 6 + 64) as u32;
    let (machine, kernel) = boot(mc, config.policy, cpus);
    let first_kthread = machine.task_count();
    for k in 0..config.kthreads {
        machine.add_task(&format!("k{k}"), SpaceId::KERNEL, CpuId(0), false);
    }
    let first_user = machine.task_count();
    for u in 0..user_slots {
        machine.add_task(&format!("u{u}"), SpaceId::KERNEL, CpuId(0), false);
    }
    let slots = machine.task_count();
    let mut kinds = vec![Kind::Free; slots];
    for (index, kind) in kinds.iter_mut().enumerate().take(first_user) {
        *kind = if index < first_kthread {
            Kind::Idle
        } else {
            Kind::Kernel
        };
    }
    let mut storm = Storm {
        machine: machine.clone(),
        kernel: kernel.clone(),
        backend: X86Backend::new(
            SimMemory::new(machine.clone()),
            SimCpu::new(machine.clone()),
        ),
        mix: config.mix,
        kinds,
        dead: vec![false; slots],
        runnable: (first_kthread..first_user).collect(),
        free_slots: (first_user..slots).rev().collect(),
        processes: Vec::new(),
        next_space: 1,
    };
    for _ in 0..config.processes {
        storm.fork(config.threads);
    }
    machine.clear_counts();
    crate::run::lend_to(&machine, chooser, || {
        for _ in 0..config.steps {
            if machine.stopping() {
                break;
            }
            storm.step(config.threads);
        }
    });
    let (counts, cycles) = measured(&machine);
    storm.wind_down();
    let last = storm.processes.len().saturating_sub(1);
    for (index, process) in storm.processes.iter().enumerate() {
        if index != last && !machine.space(process.space).is_freed() {
            machine.violation(
                Invariant::OperationFailed,
                format!("space {} leaked", process.space.0),
            );
        }
    }
    drop(storm);
    finish(config, &machine, &kernel, counts, cycles)
}

/// The machine of a run: `config`'s topology and cost table, x86 hardware
/// (the storm's pages are x86 pages), no disturbances the workload does not
/// make itself.
fn machine_config(config: &CtxSwitchConfig) -> MachineConfig {
    let mut mc = MachineConfig::with_topology(config.topology, config.platform);
    mc.hardware = crate::run::hardware(crate::scenario::BackendKind::X86);
    mc.offers = Offers::NONE;
    mc.faults.lose_ipis = config.lose_ipis;
    for &(row, cycles) in &config.costs {
        mc.cost.set(row, cycles);
    }
    mc
}

/// The machine with its kernel address space, walker and lazy-TLB kernel,
/// the idle tasks of CPUs `0..online` booted on the kernel's address space
/// (the CPUs that run; the others never come online).
fn boot(mc: MachineConfig, policy: LazyTlbPolicy, online: usize) -> (Rc<Machine>, Rc<StormKernel>) {
    let machine = Rc::new(Machine::new(mc));
    let kernel_root = machine
        .memory()
        .allocate_table(SpaceId::KERNEL, 0)
        .expect("a frame for the kernel root");
    machine.set_walker(walk::<X86_64>, kernel_root, X86_64::is_kernel);
    machine.set_table_finder(tables_under::<X86_64>);
    let kernel = Rc::new(StormKernel {
        machine: machine.clone(),
        tlb: LazyTlb::new(SimCpu::new(machine.clone()), policy),
    });
    machine.set_kernel(kernel.clone());
    for cpu in (0..online).map(CpuId::new) {
        machine.set_cpu(cpu);
        kernel.tlb.boot_cpu(machine.task_mm(machine.idle_task(cpu)));
    }
    (machine, kernel)
}

/// What the run did until now, before any wind-down: the machine's counts,
/// the time it took and the shared lines' transfers; and its cycles.
fn measured(machine: &Machine) -> (BTreeMap<&'static str, u64>, u64) {
    let elapsed = machine.elapsed();
    let switches = machine.counts().get(Software::ContextSwitch);
    let mut counts = BTreeMap::new();
    machine_counts(machine, &mut counts);
    let [count_lines, mask_lines, lazy_lines] = machine.line_transfers_by_kind();
    counts.extend([
        ("switches", switches),
        ("hottest_line_transfers", machine.hottest_line_transfers()),
        ("elapsed_cycles", elapsed),
        (
            "switches_per_mcycle",
            (switches * 1_000_000).checked_div(elapsed).unwrap_or(0),
        ),
        ("count_line_transfers", count_lines),
        ("mask_line_transfers", mask_lines),
        ("lazy_flag_transfers", lazy_lines),
        ("line_transfers", count_lines + mask_lines + lazy_lines),
        ("line_wait_cycles", machine.line_wait_cycles()),
    ]);
    if machine.config().cost.platform().atomics_retry() {
        counts.insert("stcx_failures", machine.stcx_failures());
    }
    if let Some(mhz) = machine.config().cost.clock_mhz() {
        let per_second = (u128::from(switches) * u128::from(mhz) * 1_000_000)
            .checked_div(u128::from(elapsed))
            .unwrap_or(0);
        counts.insert("switches_per_second", per_second as u64);
    }
    (counts, machine.cycles())
}

/// The row: `counts` and `cycles` with the policy's statistics and the
/// violations; the machine shut down.
fn finish(
    config: &CtxSwitchConfig,
    machine: &Machine,
    kernel: &StormKernel,
    mut counts: BTreeMap<&'static str, u64>,
    cycles: u64,
) -> NeighbourRow {
    let stats = kernel.tlb.stats();
    let get = LazyTlbStats::get;
    counts.extend([
        ("borrows", get(&stats.borrows)),
        ("borrow_refs", get(&stats.borrow_refs)),
        ("shootdown_ipis", get(&stats.shootdown_ipis)),
        ("flush_skipped_lazy", get(&stats.flush_skipped_lazy)),
        ("catchup_flushes", get(&stats.catchup_flushes)),
        ("spaces_freed", get(&stats.spaces_freed)),
    ]);
    let row = NeighbourRow {
        workload: config.name,
        machine: None,
        policy: lazy_tlb_name(config.policy),
        cpus: config.cpus,
        processes: config.processes,
        counts,
        cycles,
        violations: machine.violation_count(),
        first_violations: machine.violations(),
    };
    machine.shut_down();
    row
}

/// will-it-scale's `context_switch1_threads` on the machine, every CPU on
/// a coroutine of its own and all of them in time order
/// ([`CtxSwitchConfig::ping_pong`]); then every thread exits, a new
/// process runs on every CPU (ending every lazy borrow), and the address
/// space must have been freed with no CPU still on it.
fn run_ping_pong(config: &CtxSwitchConfig) -> NeighbourRow {
    let topology = config.topology;
    let cpus = config.threads;
    assert!(
        (1..=topology.cpus()).contains(&cpus),
        "the benchmark runs 1..={} threads, one a CPU",
        topology.cpus()
    );
    let mut mc = machine_config(config);
    mc.spaces = 3;
    mc.tasks = 2 * cpus;
    mc.frames = 64;
    // The library's context-switch path is shallow: a small stack per CPU
    // keeps 2,048 coroutines cheap.
    mc.stack_bytes = 256 << 10;
    let (machine, kernel) = boot(mc, config.policy, cpus);
    let space = SpaceId(1);
    let threads = process(&machine, &kernel, space, cpus);
    // Every thread starts on its CPU; then the measured part.
    for (cpu, &task) in threads.iter().enumerate() {
        machine.switch(CpuId::new(cpu), task);
    }
    machine.clear_counts();
    let rounds = (config.steps / (2 * cpus as u64)).max(1);
    let body = {
        let machine = machine.clone();
        let threads = threads.clone();
        move |cpu: CpuId| {
            let m = &machine;
            let partner = topology
                .partner(cpu)
                .filter(|p| p.index() < cpus)
                .unwrap_or(cpu);
            // The thread that writes first; the other replies.
            let leader = cpu.index() % 2 == 0 || partner == cpu;
            for _ in 0..rounds {
                if leader {
                    m.wake(partner, m.clock_of(cpu));
                }
                // The read blocks: into the idle task, which borrows.
                m.switch(cpu, m.idle_task(cpu));
                m.block();
                // Woken: back to the thread, ending the borrow.
                m.switch(cpu, threads[cpu.index()]);
                if !leader {
                    m.wake(partner, m.clock_of(cpu));
                }
            }
        }
    };
    let all: Vec<CpuId> = (0..cpus).map(CpuId::new).collect();
    machine.run_timed(&all, body);
    let (mut counts, cycles) = measured(&machine);
    // Every thread exits; the last one tears the space down. The next
    // process's threads end the idle tasks' borrows.
    let next = process(&machine, &kernel, SpaceId(2), cpus);
    for (cpu, &task) in threads.iter().enumerate() {
        let cpu = CpuId::new(cpu);
        machine.set_cpu(cpu);
        if let Err(e) = kernel.tlb.exit_mm(machine.task_mm(task)) {
            machine.violation(Invariant::OperationFailed, format!("exit t{task}: {e:?}"));
        }
        machine.switch(cpu, machine.idle_task(cpu));
    }
    for (cpu, &successor) in next.iter().enumerate() {
        machine.switch(CpuId::new(cpu), successor);
    }
    if !machine.space(space).is_freed() {
        machine.violation(
            Invariant::OperationFailed,
            "the process's space leaked".into(),
        );
    }
    counts.insert("cpus_online", machine.online_cpus() as u64);
    finish(config, &machine, &kernel, counts, cycles)
}

/// A process in `space` with one thread on each of the CPUs `0..cpus`,
/// each homed on its CPU and not yet running: the task ids, CPU 0's first.
fn process(machine: &Machine, kernel: &StormKernel, space: SpaceId, cpus: usize) -> Vec<usize> {
    let root = machine
        .memory()
        .allocate_table(space, 0)
        .expect("a frame for the process's root");
    machine.set_space_root(space, root);
    (0..cpus)
        .map(|cpu| {
            let task = machine.add_task(
                &format!("u{}.{cpu}", space.0),
                space,
                CpuId::new(cpu),
                false,
            );
            if cpu > 0 {
                if let Err(e) = kernel.tlb.mmget(space) {
                    machine.violation(Invariant::OperationFailed, format!("mmget: {e:?}"));
                }
            }
            if let Err(e) = machine.task_mm(task).reuse_as_user(space) {
                machine.violation(Invariant::OperationFailed, format!("t{task}: {e:?}"));
            }
            task
        })
        .collect()
}

/// Runs `ctxswitch` with the configuration's seed.
pub fn run(config: &CtxSwitchConfig) -> NeighbourRow {
    run_with(config, &mut seeded(config.seed))
}

/// The published rates of will-it-scale's `context_switch1_threads` on
/// `machine`, by lazy-TLB policy: on [`POWER8_E880`], Linux 6.4's
/// refcounting and shootdown figures
/// ([`LAZY_TLB_SHOOTDOWN_POWERPC`](crate::published::LAZY_TLB_SHOOTDOWN_POWERPC)).
/// Empty for a machine nobody published the benchmark on.
///
/// [`POWER8_E880`]: crate::machine::topology::POWER8_E880
pub fn published_rates(machine: &NamedMachine) -> Vec<(LazyTlbPolicy, &'static PublishedFigure)> {
    let Some(name) = machine.published_as else {
        return Vec::new();
    };
    PUBLISHED
        .iter()
        .filter(|f| {
            f.topic == Topic::LazyTlbShootdown
                && f.machine == name
                && f.workload
                    .starts_with("will-it-scale context_switch1_threads")
        })
        .filter_map(|f| {
            // The figures name what they measured: upstream's refcounting,
            // or the shootdown option.
            let policy = if f.compared.contains("SHOOTDOWN") {
                LazyTlbPolicy::Shootdown
            } else if f.compared.contains("refcount") {
                LazyTlbPolicy::Refcount
            } else {
                return None;
            };
            Some((policy, f))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::topology::{POWER8_E880, XEON_8176};

    #[test]
    fn the_power8_has_a_published_rate_for_each_policy_it_ran() {
        let rates = published_rates(&POWER8_E880);
        let policies: Vec<LazyTlbPolicy> = rates.iter().map(|(p, _)| *p).collect();
        assert_eq!(
            policies,
            [LazyTlbPolicy::Refcount, LazyTlbPolicy::Shootdown]
        );
        let values: Vec<f64> = rates
            .iter()
            .map(|(_, f)| f.parse().unwrap().value)
            .collect();
        assert_eq!(values, [1e6, 118e6]);
        assert!(published_rates(&XEON_8176).is_empty());
    }
}
