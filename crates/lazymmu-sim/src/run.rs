//! Running a configuration: build the machine for the backend, the
//! backend over the machine's primitives (with the checks under any key
//! window), the lazy mode of the chosen design, the world and its
//! workloads; run; collect counts, cycles and violations.

use std::rc::Rc;

use lazymmu::backend::arm64::Arm64;
use lazymmu::backend::ppc_hash::PpcHash;
use lazymmu::backend::protected::{KeyFlavour, Pks, Poe, Protected};
use lazymmu::backend::s390::S390;
use lazymmu::backend::sparc64::Sparc64;
use lazymmu::backend::x86::X86Backend;
use lazymmu::backend::xen_pv::XenPv;
use lazymmu::backend::Backend;
use lazymmu::mode::counters::Counters;
use lazymmu::mode::eager::Eager;
use lazymmu::mode::percpu::PerCpu;
use lazymmu::mode::stateful::{FromHooks, Stateful};
use lazymmu::mode::{LazyMode, MisusePolicy};

use crate::choice::{ChoicePoint, Chooser, RandomChooser, Sequential};
use crate::kernel_work::KernelWork;
use crate::machine::{HardwareModel, KeyModel, Machine, MachineConfig, SimCpu, SimEnv, SimMemory};
use crate::observed::{Checked, Checks, Observed};
use crate::scenario::{
    BackendKind, DesignKind, KernelWorkSource, ModeKind, RunConfig, RunResult, WorkloadKind,
};
use crate::world::{lazy_max_pages, Exceptions, Shared, World, TABLE_PAGES};

impl<M, P> Exceptions for X86Backend<M, P> {}
impl<P> Exceptions for XenPv<P> {}
impl<P> Exceptions for Arm64<P> {}
impl<P> Exceptions for PpcHash<P> {}
impl<P> Exceptions for Sparc64<P> {}
impl<P> Exceptions for S390<P> {}

/// The hardware model of a backend's platform.
pub fn hardware(backend: BackendKind) -> HardwareModel {
    let plain = HardwareModel::PLAIN;
    match backend {
        BackendKind::X86 => HardwareModel {
            flush_on_switch: true,
            ..plain
        },
        BackendKind::XenPv => HardwareModel {
            read_only_tables: true,
            flush_on_switch: true,
            ..plain
        },
        BackendKind::Arm64 => HardwareModel {
            arm64_barriers: true,
            ..plain
        },
        BackendKind::PpcHash => HardwareModel {
            hash_ptes: true,
            walk_caches: false,
            ..plain
        },
        BackendKind::Sparc64 => HardwareModel {
            walk_caches: false,
            ..plain
        },
        BackendKind::S390 => plain,
        BackendKind::X86Pks => HardwareModel {
            flush_on_switch: true,
            keys: KeyModel::Pks,
            table_key: Pks::PAGE_TABLE_KEY as u8,
            default_key: Pks::DEFAULT,
            ..plain
        },
        BackendKind::Arm64Poe => HardwareModel {
            arm64_barriers: true,
            keys: KeyModel::Poe,
            table_key: Poe::PAGE_TABLE_INDEX as u8,
            default_key: Poe::DEFAULT,
            ..plain
        },
    }
}

/// The machine configuration of a run.
pub fn machine_config(cfg: &RunConfig) -> MachineConfig {
    let mut mc = MachineConfig::new(cfg.cpus, cfg.backend.platform());
    mc.hardware = hardware(cfg.backend);
    mc.hardware.tlb_range = cfg.tlb_range && cfg.backend.is_aarch64();
    let work = match &cfg.kernel_work {
        KernelWorkSource::None => None,
        KernelWorkSource::Builtin => Some(KernelWork::builtin()),
        KernelWorkSource::Given(work) => Some(&**work),
    };
    if let Some(work) = work {
        for &(row, cycles) in &work.rows {
            mc.cost.set(row, cycles);
        }
    }
    for &(row, cycles) in &cfg.costs {
        mc.cost.set(row, cycles);
    }
    let tasks = cfg.tasks.max(1);
    mc.tasks = tasks;
    // A space per task and one per fork child, and the kernel's.
    mc.spaces = 1 + 2 * tasks;
    mc.offers = cfg.offers;
    // Tables per task: the range (one PTE table per 512 pages, twice for
    // mremap and fork targets), the vmalloc ring, plus upper levels;
    // generous slack. The linear map of kpkeys covers them all.
    let tables = cfg.pages.div_ceil(TABLE_PAGES);
    let ring = (lazy_max_pages(mc.cpus) + 2 * (cfg.pages + 1)).div_ceil(TABLE_PAGES);
    let per_task = 3 * tables
        + 32
        + if cfg.workload == WorkloadKind::Vmalloc {
            ring
        } else {
            0
        };
    let frames = (tasks as u64) * per_task * 2 + 256;
    mc.frames = (frames + frames.div_ceil(TABLE_PAGES) + 8).min(1 << 20) as u32;
    mc
}

/// Stack of the thread [`run`] executes on: some backends keep large
/// per-CPU arrays, built on the stack before they move into place.
const RUN_STACK: usize = 64 << 20;

/// Runs one configuration, on a thread of its own with a large stack.
pub fn run(cfg: &RunConfig) -> RunResult {
    on_sim_thread(|| run_here(cfg))
}

/// Runs `f` on a thread of its own with a stack of [`RUN_STACK`] bytes,
/// passing its panic on.
pub(crate) fn on_sim_thread<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("lazymmu-sim".into())
            .stack_size(RUN_STACK)
            .spawn_scoped(scope, f)
            .expect("spawning the simulation thread")
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Runs one configuration on the calling thread.
pub fn run_here(cfg: &RunConfig) -> RunResult {
    let mut chooser: Box<dyn Chooser> = match cfg.rates {
        Some(rates) => Box::new(RandomChooser::new(cfg.seed, rates)),
        None => Box::new(Sequential),
    };
    run_with(cfg, &mut *chooser)
}

/// Runs one configuration with `chooser` resolving every choice point of
/// the measured stage (the setup stage runs sequentially): the entry point
/// of the explorer and of replays. `cfg.rates` and `cfg.seed` are not used.
pub fn run_with(cfg: &RunConfig, chooser: &mut dyn Chooser) -> RunResult {
    drive_on(cfg, machine_config(cfg), Workloads { chooser })
}

/// Builds the machine of `config`, the backend and lazy mode of `cfg` and
/// their world, and hands the world to `driver`.
pub(crate) fn drive_on<D: Drive>(cfg: &RunConfig, config: MachineConfig, driver: D) -> D::Output {
    let machine = Rc::new(Machine::new(config));
    let result = build(cfg, driver, machine.clone());
    machine.shut_down();
    result
}

/// What runs in a world once it is built: the built-in workloads
/// ([`Workloads`]) or a recorded program's replay.
pub(crate) trait Drive {
    /// What the run gives back.
    type Output;
    /// Runs in `world`, whose lazy mode keeps `bytes_per_task` bytes a
    /// task.
    fn drive<B, M>(
        self,
        cfg: &RunConfig,
        machine: &Rc<Machine>,
        world: &World<B::Format, B, Checked<M>>,
        bytes_per_task: usize,
    ) -> Self::Output
    where
        B: Backend + Exceptions + Checks + 'static,
        M: LazyMode + 'static;
}

/// The built-in workloads: the world's setup, then its programs under
/// `chooser`.
struct Workloads<'c> {
    chooser: &'c mut dyn Chooser,
}

impl Drive for Workloads<'_> {
    type Output = RunResult;

    fn drive<B, M>(
        self,
        cfg: &RunConfig,
        machine: &Rc<Machine>,
        world: &World<B::Format, B, Checked<M>>,
        bytes_per_task: usize,
    ) -> RunResult
    where
        B: Backend + Exceptions + Checks + 'static,
        M: LazyMode + 'static,
    {
        world.setup();
        lend_to(machine, self.chooser, || machine.run());
        RunResult {
            backend: cfg.backend,
            workload: cfg.workload,
            mode: cfg.mode,
            design: cfg.design,
            counts: machine.counts().nonzero(),
            cycles: machine.cycles(),
            disturbance_cycles: machine.disturbance_cycles(),
            disturbance_counts: machine.disturbance_counts().nonzero(),
            calls: cfg.calls * cfg.tasks.max(1) as u64,
            pte_updates: world.measured_updates(),
            pte_updates_total: world.backend().updates(),
            violation_count: machine.violation_count(),
            violations: machine.violations(),
            steps: machine.steps(),
            trace: crate::choice::Trace::new(
                format!("{}-{}-{}", cfg.backend, cfg.workload, cfg.mode),
                machine.trace().picks,
            ),
            bytes_per_task,
            preemptions: machine.preemptions(),
            preempted_in_section: machine.preempted_in_section(),
            interrupts: world.interrupts(),
            digest: machine.digest(),
        }
    }
}

/// A chooser the caller lends for one run.
struct Lent(*mut (dyn Chooser + 'static));

impl Chooser for Lent {
    fn is_passive(&self) -> bool {
        // SAFETY: see `lend`: the pointee outlives every use.
        unsafe { (*self.0).is_passive() }
    }
    fn wants_digest(&self) -> bool {
        // SAFETY: as above.
        unsafe { (*self.0).wants_digest() }
    }
    fn wants_digest_next(&self) -> bool {
        // SAFETY: as above.
        unsafe { (*self.0).wants_digest_next() }
    }
    fn wants_footprints(&self) -> bool {
        // SAFETY: as above.
        unsafe { (*self.0).wants_footprints() }
    }
    fn segment(&mut self, footprint: crate::footprint::Footprint) {
        // SAFETY: as above; never re-entrant.
        unsafe { (*self.0).segment(footprint) }
    }
    fn choose(&mut self, point: &ChoicePoint, options: &[crate::choice::Choice]) -> Option<usize> {
        // SAFETY: as above; the machine calls its chooser from one thread,
        // never re-entrantly.
        unsafe { (*self.0).choose(point, options) }
    }
}

/// Installs `chooser` in `machine` for the duration of `f`.
pub(crate) fn lend_to<R>(machine: &Machine, chooser: &mut dyn Chooser, f: impl FnOnce() -> R) -> R {
    let ptr: *mut (dyn Chooser + '_) = chooser;
    // SAFETY: only the lifetime bound changes. The machine gets the
    // pointer for the duration of `f` and loses it before `lend` returns
    // (`take_chooser`), while `chooser` is still borrowed; the machine is
    // driven from this thread only.
    let ptr: *mut (dyn Chooser + 'static) = unsafe { core::mem::transmute(ptr) };
    machine.set_chooser(Box::new(Lent(ptr)));
    let result = f();
    drop(machine.take_chooser());
    result
}

fn build<D: Drive>(cfg: &RunConfig, driver: D, machine: Rc<Machine>) -> D::Output {
    let cpu = SimCpu::new(machine.clone());
    let memory = || SimMemory::new(machine.clone());
    let observed = |b| Observed::new(b, machine.clone());
    macro_rules! go {
        ($backend:expr) => {
            with_backend(cfg, driver, machine.clone(), $backend)
        };
    }
    match cfg.backend {
        BackendKind::X86 => go!(observed(X86Backend::new(memory(), cpu))),
        BackendKind::XenPv => go!(Observed::new(XenPv::new(cpu), machine.clone())),
        BackendKind::Arm64 => go!(Observed::new(Arm64::new(cpu), machine.clone())),
        BackendKind::PpcHash => go!(Observed::new(PpcHash::new(cpu), machine.clone())),
        BackendKind::Sparc64 => go!(Observed::new(Sparc64::new(cpu), machine.clone())),
        BackendKind::S390 => go!(Observed::new(S390::new(cpu), machine.clone())),
        // A kernel whose eager path forgets to open the key register: the
        // plain backend on protected hardware.
        BackendKind::X86Pks if cfg.forget_key_open => {
            go!(observed(X86Backend::new(memory(), cpu)))
        }
        BackendKind::X86Pks if !cfg.key_batching => {
            let inner = observed(X86Backend::new(memory(), cpu.clone()));
            go!(Protected::<_, _, Pks>::unbatched(inner, cpu))
        }
        BackendKind::X86Pks => {
            let inner = observed(X86Backend::new(memory(), cpu.clone()));
            go!(Protected::<_, _, Pks>::new(inner, cpu))
        }
        BackendKind::Arm64Poe if cfg.forget_key_open => {
            go!(Observed::new(Arm64::new(cpu), machine.clone()))
        }
        BackendKind::Arm64Poe if !cfg.key_batching => {
            let inner = Observed::new(Arm64::new(cpu.clone()), machine.clone());
            go!(Protected::<_, _, Poe>::unbatched(inner, cpu))
        }
        BackendKind::Arm64Poe => {
            let inner = Observed::new(Arm64::new(cpu.clone()), machine.clone());
            go!(Protected::<_, _, Poe>::new(inner, cpu))
        }
    }
}

fn with_backend<B, D>(cfg: &RunConfig, driver: D, machine: Rc<Machine>, backend: B) -> D::Output
where
    B: Backend + Exceptions + Checks + 'static,
    D: Drive,
{
    let backend = Rc::new(backend);
    let env = SimEnv::new(machine.clone());
    let hooks = Shared(backend.clone());
    let policy = MisusePolicy::Count;
    // One run per mode type: the modes differ in type, so a macro rather
    // than a closure.
    macro_rules! run {
        ($mode:expr) => {
            with_mode(
                cfg,
                driver,
                machine.clone(),
                backend,
                Checked::new($mode, machine),
            )
        };
    }
    match (cfg.mode, cfg.design) {
        (ModeKind::Eager, _) => run!(Eager),
        (ModeKind::Lazy, DesignKind::Counters) => run!(Counters::new(env, hooks, policy)),
        (ModeKind::Lazy, DesignKind::Stateful) => {
            run!(Stateful::new(env, FromHooks::new(hooks), policy))
        }
        (ModeKind::Lazy, DesignKind::PerCpu) => run!(PerCpu::new(env, hooks, policy)),
    }
}

fn with_mode<B, M, D>(
    cfg: &RunConfig,
    driver: D,
    machine: Rc<Machine>,
    backend: Rc<B>,
    lazy: Checked<M>,
) -> D::Output
where
    B: Backend + Exceptions + Checks + 'static,
    M: LazyMode + 'static,
    D: Drive,
{
    let bytes_per_task = lazy.bytes_per_task();
    let world = World::<B::Format, B, Checked<M>>::new(
        cfg,
        machine.clone(),
        backend,
        lazy,
        cfg.backend.lazy_tlb(),
    );
    driver.drive(cfg, &machine, &world, bytes_per_task)
}

/// How one lazy-mode design fares: state size, cost, and behaviour under
/// preemption, migration, sleeping and nested key-register windows.
#[derive(Clone, Debug)]
pub struct DesignReport {
    /// The design.
    pub design: DesignKind,
    /// Bytes of lazy state it keeps per task.
    pub bytes_per_task: usize,
    /// Primitive counts of xen-pv fork under preemption and migration.
    pub counts: Vec<(crate::cost::Cost, u64)>,
    /// Modelled cycles of that run.
    pub cycles: u64,
    /// Preemptions or migrations that hit a task inside a section (0 for
    /// a design that runs sections with preemption off).
    pub preempted_in_section: u64,
    /// Whether batched state survived every such preemption (no
    /// violation).
    pub preemptions_survived: bool,
    /// Whether sleeping inside a section was reported.
    pub sleep_reported: bool,
    /// Whether every nested section of x86-pks restored the key register
    /// exactly.
    pub nested_key_restored: bool,
    /// Unexpected violations across the design's runs (a reported sleep
    /// is expected of the per-CPU design and not counted).
    pub violations: u64,
    /// The first unexpected violation, in full.
    pub first_violation: Option<crate::invariant::Violation>,
}

/// Compares the three designs on the same scenarios: xen-pv fork with
/// frequent preemption and migration; x86-pks debug-pagealloc (nested
/// sections, interrupts); debug-pagealloc sleeping inside a section.
pub fn compare_designs(seed: u64, cpus: usize) -> Vec<DesignReport> {
    use crate::choice::Rates;
    use crate::invariant::Invariant;
    use crate::scenario::WorkloadKind;
    let busy = Rates {
        interrupt: 5,
        preempt: 20,
        migrate: 10,
        remote_flush: 2,
        run_other: 0,
    };
    DesignKind::ALL
        .iter()
        .map(|&design| {
            let mut fork = RunConfig::new(BackendKind::XenPv, WorkloadKind::Fork, ModeKind::Lazy);
            fork.design = design;
            fork.seed = seed;
            fork.cpus = cpus;
            fork.tasks = 3;
            fork.pages = 1024;
            fork.rates = Some(busy);
            let fork = run(&fork);

            let mut nested = RunConfig::new(
                BackendKind::X86Pks,
                WorkloadKind::DebugPagealloc,
                ModeKind::Lazy,
            );
            nested.design = design;
            nested.seed = seed;
            nested.cpus = cpus;
            nested.pages = 1024;
            nested.rates = Some(busy);
            let nested = run(&nested);

            let mut sleep = RunConfig::new(
                BackendKind::XenPv,
                WorkloadKind::DebugPagealloc,
                ModeKind::Lazy,
            );
            sleep.design = design;
            sleep.seed = seed;
            sleep.cpus = cpus;
            sleep.pages = 512;
            sleep.sleep_in_section = true;
            sleep.rates = None;
            let sleep = run(&sleep);
            let sleeps_reported = sleep.violations_of(Invariant::SleepInSection) as u64;
            let kept_other = sleep.violations.len() as u64 - sleeps_reported;
            let not_kept = sleep.violation_count - sleep.violations.len() as u64;
            let sleep_unexpected = kept_other + not_kept;

            DesignReport {
                design,
                bytes_per_task: fork.bytes_per_task,
                counts: fork.counts.clone(),
                cycles: fork.cycles,
                preempted_in_section: fork.preempted_in_section,
                preemptions_survived: fork.violation_count == 0,
                sleep_reported: sleeps_reported > 0,
                nested_key_restored: nested.violations_of(Invariant::KeyRestore) == 0,
                violations: fork.violation_count + nested.violation_count + sleep_unexpected,
                first_violation: fork
                    .violations
                    .first()
                    .or(nested.violations.first())
                    .or(sleep
                        .violations
                        .iter()
                        .find(|v| v.invariant != Invariant::SleepInSection))
                    .cloned(),
            }
        })
        .collect()
}
