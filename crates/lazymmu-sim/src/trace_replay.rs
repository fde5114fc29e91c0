//! A recorded program as a workload: its address-space history replayed on
//! the simulator, each system call through the same per-call path of
//! [`crate::world::syscalls`] the built-in workloads use.
//!
//! [`plan`] reads the trace once (every malformed line is found there,
//! before any run) and sizes the machine: an address-space slot for the
//! most address spaces alive at once, and page-table frames for every
//! table the trace can need. [`replay`] then streams the trace again for
//! one backend and mode, turning each [`Step`]'s operations into calls:
//!
//! | operation | path |
//! |---|---|
//! | `Populate` (faults, `MAP_POPULATE`) | mapped and touched, uncharged: Linux installs them one fault at a time, outside any lazy section, the same in both modes |
//! | `Map` | VMA bookkeeping only: a new address space gets its root |
//! | `Unmap` (munmap, brk shrinking, mremap's unmap) | [`World::munmap`] |
//! | `Zap` (`MADV_DONTNEED`) | [`World::madvise_dontneed`] per VMA |
//! | `Clean` (`MADV_FREE`) | [`World::madvise_free`] per VMA |
//! | `Protect` | [`World::mprotect`] |
//! | `Move` | [`World::mremap`] |
//! | `Copy` (fork) | [`World::fork`] |
//! | `Teardown` (exit, execve) | [`World::exit_mmap`] |
//!
//! Every call runs on CPU 0 with its address space switched in
//! (uncharged); the cycles it costs are charged to the kind of the event
//! it came from. A call whose page count differs from the history's (the
//! simulator's tables and the model's present pages disagree) is counted
//! in [`TraceRun::mismatches`].
//!
//! ```
//! use lazymmu_sim::scenario::{BackendKind, ModeKind};
//! use lazymmu_sim::trace_replay::{plan, replay, trace_config};
//!
//! let text = "lazymmu-trace 1\n\
//!             @touches faults\n\
//!             0 7 execve - = 0\n\
//!             4 7 mmap 0 4000 3 22 - 0 = 7f0000000000\n\
//!             5 7 fault 7f0000000000 2 w\n\
//!             6 7 munmap 7f0000000000 4000 = 0\n\
//!             15 7 exit 0\n";
//! let plan = plan(text.as_bytes(), "example.trace")?;
//! let cfg = trace_config(BackendKind::XenPv, ModeKind::Lazy);
//! let run = replay(&|| Ok(text.as_bytes()), "example.trace", &plan, &cfg)?;
//! assert_eq!(run.violation_count, 0);
//! assert_eq!(run.calls, 2); // the munmap and the exit
//! assert_eq!(run.pages, 2); // the two pages written, unmapped
//! # Ok::<(), lazymmu_sim::program_trace::reader::TraceError>(())
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::BufRead;
use std::ops::Range;
use std::rc::Rc;

use lazymmu::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use lazymmu::backend::Backend;
use lazymmu::cpu::CpuId;
use lazymmu::mode::LazyMode;
use lazymmu::pgtable::format::{Attributes, Protection};
use lazymmu::pgtable::ops::CopyKind;

use crate::invariant::Violation;
use crate::machine::Machine;
use crate::observed::{Checked, Checks};
use crate::program_trace::address_space::{MmId, Span, VmFlags};
use crate::program_trace::history::{StepKind, Summary};
use crate::program_trace::reader::TraceError;
use crate::program_trace::{Operation, Replay, Step, PAGE_SIZE};
use crate::run::{drive_on, machine_config, on_sim_thread, Drive};
use crate::scenario::{BackendKind, ModeKind, RunConfig, WorkloadKind};
use crate::world::{Exceptions, Mm, World, DATA_BASE, TABLE_PAGES};

/// What the first reading of a trace found: its summary and the machine a
/// replay needs.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The history's summary: calls by kind, skipped events and why.
    pub summary: Summary,
    /// Most address spaces alive at once.
    pub spaces: usize,
    /// Page-table frames that cover every table the replay can allocate:
    /// one per distinct (address space, region) at each level of a
    /// five-level table, plus the kernel's.
    pub frames: u32,
}

/// Bytes one entry covers at each level above the PTE tables, up to
/// five levels: a table is needed per distinct region of each size.
const REGION_SHIFTS: [u32; 4] = [21, 30, 39, 48];

/// Reads the whole trace once, without simulating: the first malformed
/// line stops it; otherwise the summary and the machine's size.
///
/// # Errors
/// The first malformed line, or a metadata value the model cannot use,
/// with its file and line number.
pub fn plan(input: impl BufRead, name: &str) -> Result<Plan, TraceError> {
    let mut replay = Replay::new(input, name);
    let mut regions: HashSet<(MmId, u32, u64)> = HashSet::new();
    let mut live: HashSet<MmId> = HashSet::new();
    let mut spaces = 0;
    let mut mms = 0u64;
    let mut note = |mm: MmId, runs: &mut dyn Iterator<Item = Range<u64>>| {
        for run in runs.filter(|r| r.end > r.start) {
            for (level, shift) in REGION_SHIFTS.iter().enumerate() {
                for region in run.start >> shift..=(run.end - 1) >> shift {
                    regions.insert((mm, level as u32, region));
                }
            }
        }
    };
    for step in replay.by_ref() {
        let step = step?;
        if step.skipped.is_some() {
            continue;
        }
        for op in &step.operations {
            let mm = op_mm(op);
            if live.insert(mm) {
                mms += 1;
            }
            match op {
                Operation::Populate { mm, runs } => note(*mm, &mut runs.iter().cloned()),
                Operation::Copy { child, spans, .. } => {
                    if live.insert(*child) {
                        mms += 1;
                    }
                    note(*child, &mut spans.iter().flat_map(|s| s.present.clone()));
                }
                Operation::Move { mm, from, to, .. } => {
                    let dest = *to..to + (from.end - from.start);
                    note(*mm, &mut std::iter::once(dest));
                }
                Operation::Teardown { mm, .. } => {
                    live.remove(mm);
                }
                _ => {}
            }
            spaces = spaces.max(live.len());
        }
    }
    let summary = replay.finish();
    // Roots, the tables below them, the kernel's interrupt page and
    // kpkeys' linear map of every frame (one PTE table per 512 frames,
    // added below), and slack for the kernel's upper levels.
    let tables = mms + regions.len() as u64 + 64;
    let frames = tables + tables.div_ceil(TABLE_PAGES) + 8;
    Ok(Plan {
        summary,
        spaces: spaces.max(1),
        frames: frames.min(u64::from(u32::MAX)) as u32,
    })
}

/// The address space an operation acts on (a fork's parent).
fn op_mm(op: &Operation) -> MmId {
    match op {
        Operation::Populate { mm, .. }
        | Operation::Map { mm, .. }
        | Operation::Unmap { mm, .. }
        | Operation::Zap { mm, .. }
        | Operation::Clean { mm, .. }
        | Operation::Protect { mm, .. }
        | Operation::Move { mm, .. }
        | Operation::Teardown { mm, .. } => *mm,
        Operation::Copy { parent, .. } => *parent,
    }
}

/// The run configuration of a replay on `backend` in `mode`: the default
/// design, CPUs and measured kernel work of the built-in workloads. Its
/// workload, pages and calls are not used.
pub fn trace_config(backend: BackendKind, mode: ModeKind) -> RunConfig {
    let mut cfg = RunConfig::new(backend, WorkloadKind::Munmap, mode);
    // The world's one built-in program makes no call and maps nothing.
    cfg.calls = 0;
    cfg.tasks = 1;
    cfg.rates = None;
    cfg
}

/// What one kind of call cost in a replay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KindCost {
    /// Calls replayed.
    pub calls: u64,
    /// Pages their page-table operations touched.
    pub pages: u64,
    /// Modelled cycles.
    pub cycles: u64,
}

/// One replay of a trace on one backend, in one mode.
#[derive(Clone, Debug)]
pub struct TraceRun {
    /// The backend.
    pub backend: BackendKind,
    /// Eager or lazy.
    pub mode: ModeKind,
    /// The cost of each kind of call that did page-table work.
    pub kinds: BTreeMap<StepKind, KindCost>,
    /// Calls replayed (with page-table work).
    pub calls: u64,
    /// Pages those calls touched.
    pub pages: u64,
    /// Modelled cycles of all of them.
    pub cycles: u64,
    /// Calls whose pages differ from the history's present pages.
    pub mismatches: u64,
    /// The first such call.
    pub first_mismatch: Option<String>,
    /// Invariant violations.
    pub violation_count: u64,
    /// The first violations, in full.
    pub violations: Vec<Violation>,
}

/// Replays the trace `open` gives (opened again for this run) on the
/// backend and mode of `cfg` ([`trace_config`]), on a machine sized by
/// `plan`, on a thread with the simulator's stack.
///
/// # Errors
/// A malformed line (which [`plan`] would have found first).
pub fn replay<R: BufRead>(
    open: &(dyn Fn() -> std::io::Result<R> + Sync),
    name: &str,
    plan: &Plan,
    cfg: &RunConfig,
) -> Result<TraceRun, TraceError> {
    let mut mc = machine_config(cfg);
    // The kernel's space, the built-in program's, one per slot.
    mc.spaces = 2 + plan.spaces;
    mc.tasks = 1 + plan.spaces;
    mc.frames = plan.frames;
    let mc = &mc;
    on_sim_thread(move || {
        let input = open().map_err(|e| TraceError {
            file: name.to_owned(),
            line: 0,
            expected: "a readable file".into(),
            found: e.to_string(),
        })?;
        let driver = Replayer {
            steps: Replay::new(input, name),
            spaces: plan.spaces,
        };
        drive_on(cfg, mc.clone(), driver)
    })
}

/// Drives a world with a trace's steps.
struct Replayer<R> {
    steps: Replay<R>,
    spaces: usize,
}

/// The address spaces of a replay: a task and space id per slot, the live
/// ones by the history's id.
struct Slots {
    free: Vec<(usize, SpaceId)>,
    live: HashMap<MmId, (usize, Mm)>,
}

impl<R: BufRead> Drive for Replayer<R> {
    type Output = Result<TraceRun, TraceError>;

    fn drive<B, M>(
        mut self,
        cfg: &RunConfig,
        machine: &Rc<Machine>,
        world: &World<B::Format, B, Checked<M>>,
        _bytes_per_task: usize,
    ) -> Self::Output
    where
        B: Backend + Exceptions + Checks + 'static,
        M: LazyMode + 'static,
    {
        world.setup();
        machine.set_cpu(CpuId(0));
        // Slot i: task `mm{i}` on CPU 0 with space id 2 + i (1 is the
        // built-in program's).
        let mut slots = Slots {
            free: (0..self.spaces)
                .rev()
                .map(|i| {
                    let space = SpaceId(2 + i as u32);
                    let task = machine.add_task(&format!("mm{i}"), space, CpuId(0), false);
                    let _ = machine.task_mm(task).reuse_as_user(space);
                    (task, space)
                })
                .collect(),
            live: HashMap::new(),
        };
        let mut run = TraceRun {
            backend: cfg.backend,
            mode: cfg.mode,
            kinds: BTreeMap::new(),
            calls: 0,
            pages: 0,
            cycles: 0,
            mismatches: 0,
            first_mismatch: None,
            violation_count: 0,
            violations: Vec::new(),
        };
        while let Some(step) = self.steps.next() {
            let step = step?;
            if step.skipped.is_some() {
                continue;
            }
            let mut calls = 0;
            let mut pages = 0;
            let mut cycles = 0;
            for op in &step.operations {
                let Some((done, cost)) =
                    perform(world, machine, &mut slots, &self.steps, &step, op)
                else {
                    continue;
                };
                calls = 1;
                pages += done;
                cycles += cost;
                if done != op.pages() {
                    run.mismatches += 1;
                    run.first_mismatch.get_or_insert_with(|| {
                        format!(
                            "line {}: {} of {} pages found {}",
                            step.line,
                            op.name(),
                            op.pages(),
                            done
                        )
                    });
                }
            }
            if calls > 0 {
                let cost = run.kinds.entry(step.kind).or_default();
                cost.calls += 1;
                cost.pages += pages;
                cost.cycles += cycles;
            }
        }
        for cost in run.kinds.values() {
            run.calls += cost.calls;
            run.pages += cost.pages;
            run.cycles += cost.cycles;
        }
        run.violation_count = machine.violation_count();
        run.violations = machine.violations();
        run.violations.truncate(1);
        Ok(run)
    }
}

/// Performs one operation; the pages its call touched and the cycles it
/// cost, or `None` for an operation that is no system call's page-table
/// work (population, VMA bookkeeping). The switch to the address space's
/// task comes first and is not part of the call.
fn perform<F, B, L, R>(
    world: &World<F, B, L>,
    machine: &Machine,
    slots: &mut Slots,
    steps: &Replay<R>,
    step: &Step,
    op: &Operation,
) -> Option<(u64, u64)>
where
    F: lazymmu::pgtable::format::Format,
    B: Backend<Format = F> + Exceptions + Checks + 'static,
    L: LazyMode + 'static,
    R: BufRead,
{
    let mm = op_mm(op);
    let (task, _) = open_mm(world, machine, slots, mm)?;
    if machine.task_on(CpuId(0)) != task {
        machine.switch(CpuId(0), task);
    }
    let this = slots.live.get(&mm).map(|(_, mm)| mm.clone())?;
    let start = machine.cycles();
    let pages = match op {
        Operation::Map { .. } => None,
        Operation::Populate { runs, .. } => {
            let space = steps.history().address_space_of(step.tid);
            machine.uncounted(|| {
                for run in runs {
                    let prot = space
                        .and_then(|s| s.vma_at(run.start))
                        .map_or(VmFlags::READ | VmFlags::WRITE, |v| v.flags.prot());
                    let r = world.tables(&this).map(
                        VirtAddr(run.start),
                        PhysAddr(DATA_BASE + (run.start & ((1 << 40) - 1))),
                        run.end - run.start,
                        attributes(prot),
                        PageSize::Size4K,
                    );
                    world.check(r.map(|_| ()), "populate");
                    for va in (run.start..run.end).step_by(PAGE_SIZE as usize) {
                        let _ = machine.access_in(this.space, VirtAddr(va));
                    }
                }
            });
            None
        }
        Operation::Unmap { spans, .. } => Some(world.munmap(&this, extent(spans)?)),
        Operation::Zap { spans, .. } => Some(
            spans
                .iter()
                .map(|s| world.madvise_dontneed(&this, s.range.clone()))
                .sum(),
        ),
        Operation::Clean { spans, .. } => Some(
            spans
                .iter()
                .map(|s| world.madvise_free(&this, s.range.clone()))
                .sum(),
        ),
        Operation::Protect { spans, prot, .. } => {
            Some(world.mprotect(&this, extent(spans)?, protection(*prot)))
        }
        Operation::Move { from, to, .. } => {
            Some(world.mremap(&this, from.start, *to, from.end - from.start))
        }
        Operation::Copy { child, spans, .. } => {
            open_mm(world, machine, slots, *child)?;
            let child = slots.live.get(child).map(|(_, mm)| mm.clone())?;
            let ranges: Vec<(Range<u64>, CopyKind)> = spans
                .iter()
                .map(|s| {
                    let kind = if s.shared {
                        CopyKind::Shared
                    } else {
                        CopyKind::Private
                    };
                    (s.range.clone(), kind)
                })
                .collect();
            // The parent's task writes the child's tables (`dup_mmap`).
            machine.set_task_writes_to(task, Some(child.space));
            let copied = world.fork(&this, &child, &ranges);
            machine.set_task_writes_to(task, None);
            Some(copied)
        }
        Operation::Teardown { mm, .. } => {
            let pages = world.exit_mmap(&this);
            if let Some((task, gone)) = slots.live.remove(mm) {
                slots.free.push((task, gone.space));
            }
            Some(pages)
        }
    }?;
    Some((pages, machine.cycles() - start))
}

/// The slot of `mm`, given a new root the first time the history names
/// it; `None` when every slot is taken (the plan counted them, so never).
fn open_mm<F, B, L>(
    world: &World<F, B, L>,
    machine: &Machine,
    slots: &mut Slots,
    mm: MmId,
) -> Option<(usize, SpaceId)>
where
    F: lazymmu::pgtable::format::Format,
    B: Backend<Format = F> + Exceptions + Checks + 'static,
    L: LazyMode + 'static,
{
    if let Some((task, live)) = slots.live.get(&mm) {
        return Some((*task, live.space));
    }
    let (task, space) = slots.free.pop()?;
    // The running task builds the new root (fork's or exec's
    // `pgd_alloc`) before any task runs on it.
    let running = machine.current_task();
    machine.set_task_writes_to(running, Some(space));
    let new = machine.uncounted(|| world.new_mm(space));
    machine.set_task_writes_to(running, None);
    slots.live.insert(mm, (task, new));
    Some((task, space))
}

/// The range from the first span's start to the last one's end: the
/// call's own range (munmap and mprotect act on one range, whose VMAs
/// the spans are).
fn extent(spans: &[Span]) -> Option<Range<u64>> {
    Some(spans.first()?.range.start..spans.last()?.range.end)
}

/// The protection `mprotect` sets for `PROT_*` bits `prot`: the VMA's
/// whole new protection, as `change_protection` applies it through
/// `pte_modify` (user memory; write and execute as asked). `PROT_NONE` is
/// kept read-only, as [`attributes`] keeps it.
fn protection(prot: u64) -> Protection {
    Protection::read_only()
        .write(prot & 2 != 0)
        .execute(prot & 4 != 0)
        .user(true)
}

/// Leaf attributes of user memory with `PROT_*` bits `prot`. `PROT_NONE`
/// (Linux's `PAGE_NONE`, present but inaccessible) has no arch-neutral
/// form and is kept read-only.
fn attributes(prot: u64) -> Attributes {
    let data = Attributes {
        executable: prot & 4 != 0,
        ..Attributes::user_data()
    };
    if prot & 2 != 0 {
        data
    } else {
        data.read_only()
    }
}
