//! Running a configuration: build the machine for the backend, the
//! backend over the machine's primitives, the lazy mode of the chosen
//! design, the world and its workloads; run; collect counts, cycles and
//! violations.

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
use lazymmu::mode::percpu::PerCpu;
use lazymmu::mode::stateful::{FromHooks, Stateful};
use lazymmu::mode::{LazyMode, MisusePolicy};
use lazymmu::pgtable::format::{Aarch64, Format, X86_64};

use std::sync::{Arc, Mutex};

use crate::choice::{Choice, ChoicePoint, Chooser, RandomChooser, Sequential};
use crate::env::SimEnv;
use crate::hw::SimMemory;
use crate::machine::{HardwareModel, KeyModel, Machine, MachineConfig};
use crate::observed::{Checked, Eager, Observed};
use crate::platform::SimCpu;
use crate::scenario::{BackendKind, DesignKind, ModeKind, RunConfig, RunResult};
use crate::world::{Exceptions, Shared, World, CHUNK_PAGES};

impl<M, P> Exceptions for X86Backend<M, P> {}
impl<P> Exceptions for XenPv<P> {}
impl<P> Exceptions for Arm64<P> {}
impl<P> Exceptions for PpcHash<P> {}
impl<P> Exceptions for Sparc64<P> {}
impl<P> Exceptions for S390<P> {}

/// A protected backend's exception entry and return, with the frames kept
/// on a stack (one per nested exception).
pub struct ProtectedExceptions<B, K, F> {
    backend: Protected<B, K, F>,
    frames: core::cell::RefCell<Vec<lazymmu::backend::protected::KeyFrame>>,
}

impl<B, K, F> core::fmt::Debug for ProtectedExceptions<B, K, F>
where
    Protected<B, K, F>: core::fmt::Debug,
{
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.backend.fmt(f)
    }
}

mod protected_impls {
    use super::ProtectedExceptions;
    use lazymmu::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
    use lazymmu::backend::protected::{KeyFlavour, KeyRegister, Protected};
    use lazymmu::backend::{Backend, ContextSwitch, EntryUpdate, FlushScope, PteAccess, TlbFlush};
    use lazymmu::mode::{ArchHooks, LazyState};

    use crate::world::Exceptions;

    impl<B: Backend, K: KeyRegister, F: KeyFlavour> ProtectedExceptions<B, K, F> {
        /// Wraps a protected backend.
        pub fn new(backend: Protected<B, K, F>) -> Self {
            Self {
                backend,
                frames: core::cell::RefCell::new(Vec::new()),
            }
        }
    }

    impl<B: Backend, K: KeyRegister, F: KeyFlavour> Exceptions for ProtectedExceptions<B, K, F> {
        fn exception_enter(&self) {
            let frame = self.backend.exception_enter();
            self.frames.borrow_mut().push(frame);
        }
        fn exception_exit(&self) {
            let frame = self.frames.borrow_mut().pop();
            if let Some(frame) = frame {
                self.backend.exception_exit(frame);
            }
        }
    }

    impl<B: Backend, K: KeyRegister, F: KeyFlavour> ArchHooks for ProtectedExceptions<B, K, F> {
        fn enter(&self) {
            self.backend.enter()
        }
        fn leave(&self) {
            self.backend.leave()
        }
        fn flush(&self) {
            self.backend.flush()
        }
    }

    impl<B: Backend, K: KeyRegister, F: KeyFlavour> PteAccess for ProtectedExceptions<B, K, F> {
        fn read_entry(&self, entry: PhysAddr) -> u64 {
            self.backend.read_entry(entry)
        }
        fn write_entry(&self, update: EntryUpdate) {
            self.backend.write_entry(update)
        }
        fn get_and_clear(&self, update: EntryUpdate) -> u64 {
            self.backend.get_and_clear(update)
        }
        fn write_entries(&self, first: EntryUpdate, count: usize, step: u64) {
            self.backend.write_entries(first, count, step)
        }
        fn modify_prot_start(&self, update: EntryUpdate) -> u64 {
            self.backend.modify_prot_start(update)
        }
        fn modify_prot_commit(&self, update: EntryUpdate) {
            self.backend.modify_prot_commit(update)
        }
    }

    impl<B: Backend, K: KeyRegister, F: KeyFlavour> TlbFlush for ProtectedExceptions<B, K, F> {
        fn flush_range(
            &self,
            space: SpaceId,
            start: VirtAddr,
            end: VirtAddr,
            stride: PageSize,
            scope: FlushScope,
        ) {
            self.backend.flush_range(space, start, end, stride, scope)
        }
        fn flush_all(&self, space: SpaceId, scope: FlushScope) {
            self.backend.flush_all(space, scope)
        }
        fn single_page_ceiling(&self) -> usize {
            self.backend.single_page_ceiling()
        }
    }

    impl<B: Backend, K: KeyRegister, F: KeyFlavour> ContextSwitch for ProtectedExceptions<B, K, F> {
        fn switch_out(&self, prev: LazyState) {
            self.backend.switch_out(prev)
        }
        fn switch_in(&self, next: LazyState) {
            self.backend.switch_in(next)
        }
    }

    impl<B: Backend, K: KeyRegister, F: KeyFlavour> Backend for ProtectedExceptions<B, K, F> {
        fn name(&self) -> &'static str {
            self.backend.name()
        }
    }
}

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
        BackendKind::PpcHash | BackendKind::Sparc64 | BackendKind::S390 => plain,
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
    for &(p, c) in &cfg.costs {
        mc.cost.set(p, c);
    }
    // Tables per task: the range (one PTE table per chunk, twice for
    // mremap/fork targets) plus upper levels; generous slack.
    let chunks = cfg.pages.div_ceil(CHUNK_PAGES);
    let per_task = 3 * chunks + 32;
    mc.frames = ((cfg.tasks.max(1) as u64) * per_task * 2 + 256).min(1 << 20) as u32;
    mc
}

/// Stack of the thread a run executes on: preemption nests whole units of
/// work on the host stack, and some backends keep large per-CPU arrays.
const RUN_STACK: usize = 256 << 20;

/// Runs one configuration, on a thread of its own with a large stack.
pub fn run(cfg: &RunConfig) -> RunResult {
    let cfg = cfg.clone();
    std::thread::Builder::new()
        .name("lazymmu-sim".into())
        .stack_size(RUN_STACK)
        .spawn(move || run_here(&cfg))
        .expect("spawning the simulation thread")
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Runs one configuration with `chooser` resolving every choice point of
/// the measured stage (instead of the seeded random chooser), on a thread
/// with a large stack, and hands the chooser back: the entry point of an
/// explorer that drives the simulator choice by choice.
pub fn run_with_chooser<C: Chooser + Send + 'static>(
    cfg: &RunConfig,
    chooser: C,
) -> (RunResult, C) {
    let cfg = cfg.clone();
    let shared = Arc::new(Mutex::new(chooser));
    let inner = shared.clone();
    let result = std::thread::Builder::new()
        .name("lazymmu-sim".into())
        .stack_size(RUN_STACK)
        .spawn(move || run_inner(&cfg, Some(Box::new(Locked(inner)))))
        .expect("spawning the simulation thread")
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    let chooser = match Arc::try_unwrap(shared) {
        Ok(m) => m.into_inner().unwrap_or_else(|e| e.into_inner()),
        Err(_) => unreachable!("the simulation thread has ended and dropped its handle"),
    };
    (result, chooser)
}

/// A chooser shared with the simulation thread.
struct Locked<C>(Arc<Mutex<C>>);

impl<C: Chooser> Chooser for Locked<C> {
    fn is_passive(&self) -> bool {
        self.0.lock().map(|c| c.is_passive()).unwrap_or(true)
    }
    fn choose(&mut self, point: &ChoicePoint, options: &[Choice]) -> usize {
        self.0
            .lock()
            .map(|mut c| c.choose(point, options))
            .unwrap_or(0)
    }
}

/// Runs one configuration on the calling thread (which needs a large
/// stack for some backends; see [`run`]).
pub fn run_here(cfg: &RunConfig) -> RunResult {
    run_inner(cfg, None)
}

fn run_inner(cfg: &RunConfig, chooser: Option<Box<dyn Chooser>>) -> RunResult {
    let machine = Rc::new(Machine::new(machine_config(cfg)));
    let cpu = SimCpu::new(machine.clone());
    match cfg.backend {
        BackendKind::X86 => with_backend::<X86_64, _>(
            cfg,
            chooser,
            machine.clone(),
            X86Backend::new(SimMemory::new(machine), cpu),
        ),
        BackendKind::XenPv => with_backend::<X86_64, _>(cfg, chooser, machine, XenPv::new(cpu)),
        BackendKind::Arm64 => with_backend::<Aarch64, _>(cfg, chooser, machine, Arm64::new(cpu)),
        BackendKind::PpcHash => with_backend::<X86_64, _>(cfg, chooser, machine, PpcHash::new(cpu)),
        BackendKind::Sparc64 => with_backend::<X86_64, _>(cfg, chooser, machine, Sparc64::new(cpu)),
        BackendKind::S390 => with_backend::<X86_64, _>(cfg, chooser, machine, S390::new(cpu)),
        BackendKind::X86Pks if cfg.forget_key_open => with_backend::<X86_64, _>(
            cfg,
            chooser,
            machine.clone(),
            X86Backend::new(SimMemory::new(machine), cpu),
        ),
        BackendKind::X86Pks => {
            let inner = X86Backend::new(SimMemory::new(machine.clone()), cpu.clone());
            let b: Protected<_, _, Pks> = Protected::new(inner, cpu);
            with_backend::<X86_64, _>(cfg, chooser, machine, ProtectedExceptions::new(b))
        }
        BackendKind::Arm64Poe if cfg.forget_key_open => {
            with_backend::<Aarch64, _>(cfg, chooser, machine, Arm64::new(cpu))
        }
        BackendKind::Arm64Poe => {
            let b: Protected<_, _, Poe> = Protected::new(Arm64::new(cpu.clone()), cpu);
            with_backend::<Aarch64, _>(cfg, chooser, machine, ProtectedExceptions::new(b))
        }
    }
}

fn with_backend<F: Format, B: Backend + Exceptions + 'static>(
    cfg: &RunConfig,
    chooser: Option<Box<dyn Chooser>>,
    machine: Rc<Machine>,
    backend: B,
) -> RunResult {
    let observed = Rc::new(Observed::new(backend, machine.clone()));
    let env = SimEnv::new(machine.clone());
    let hooks = Shared(observed.clone());
    let policy = MisusePolicy::Count;
    // One run per mode type: the modes differ in type, so a macro rather
    // than a closure.
    macro_rules! run {
        ($mode:expr) => {
            with_mode::<F, B, _>(
                cfg,
                chooser,
                machine.clone(),
                observed,
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

fn with_mode<F, B, M>(
    cfg: &RunConfig,
    chooser: Option<Box<dyn Chooser>>,
    machine: Rc<Machine>,
    observed: Rc<Observed<B>>,
    lazy: Checked<M>,
) -> RunResult
where
    F: Format,
    B: Backend + Exceptions + 'static,
    M: LazyMode + 'static,
{
    let bytes_per_task = lazy.bytes_per_task();
    let world = World::<F, B, Checked<M>>::new(cfg, machine.clone(), observed, lazy);
    machine.set_chooser(Box::new(Sequential));
    world.setup();
    if let Some(chooser) = chooser {
        machine.set_chooser(chooser);
    } else if let Some(rates) = cfg.rates {
        machine.set_chooser(Box::new(RandomChooser::new(cfg.seed, rates)));
    }
    machine.run();
    let result = RunResult {
        backend: cfg.backend,
        workload: cfg.workload,
        mode: cfg.mode,
        design: cfg.design,
        counts: machine.counts().nonzero(),
        cycles: machine.cycles(),
        pte_updates: world.measured_updates(),
        pte_updates_total: world.backend().updates(),
        violation_count: machine.violation_count(),
        violations: machine.violations(),
        steps: machine.steps(),
        trace: machine.trace(),
        bytes_per_task,
        preemptions: machine.preemptions(),
        preempted_in_section: machine.preempted_in_section(),
        interrupts: world.interrupts(),
        digest: machine.digest(),
    };
    machine.clear_kernel();
    result
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
    pub counts: Vec<(crate::cost::Primitive, u64)>,
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
