//! The address-space history of a recorded program: which thread uses
//! which address space, and what each event does to it.
//!
//! [`History`] consumes the records of a trace in order and turns each
//! event into a [`Step`]: the call, whether it failed, and the page-table
//! [`Operation`]s the kernel performed for it, with exactly the present
//! pages they touched. Threads share an address space (`CLONE_VM`); `fork`
//! copies one; `execve` and the last thread's exit tear one down.
//!
//! The trace is the truth about what the kernel did. Where the model
//! predicts another result (a call that should have failed, a VMA the
//! kernel reports differently), the step carries a [`Disagreement`] and the
//! model follows the trace; where the trace claims something impossible
//! (an overflowing length, an address past the user half) the event is
//! skipped with its reason. Nothing here panics on input.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;

use super::address_space::{
    page_align, AddressSpace, Kernel, MmId, Operation, Predicted, Thp, Touches, VmFlags, Vma,
    VmaBacking,
};
use super::record::{
    Access, Backing, Call, Event, EventKind, FileDecl, Outcome, Record, VmaReport,
};
use super::PAGE_SIZE;

/// What kind of event a step came from; the columns of a replay's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StepKind {
    /// `mmap`.
    Mmap,
    /// `munmap`.
    Munmap,
    /// `mprotect`.
    Mprotect,
    /// `mremap`.
    Mremap,
    /// `brk`.
    Brk,
    /// `madvise`.
    Madvise,
    /// `mlock`, `mlock2`, `munlock`, `mlockall`, `munlockall`.
    Mlock,
    /// `clone`/`fork` without `CLONE_VM`: a new address space.
    Fork,
    /// `clone` with `CLONE_VM`: a thread.
    Thread,
    /// `vfork` (`CLONE_VM | CLONE_VFORK`): a child borrowing the address
    /// space until it calls `execve` or exits.
    Vfork,
    /// `execve`.
    Execve,
    /// A thread ended.
    Exit,
    /// Page faults.
    Fault,
    /// A VMA the kernel reported.
    Vma,
}

impl StepKind {
    /// Every kind, in table order.
    pub const ALL: [StepKind; 14] = [
        StepKind::Mmap,
        StepKind::Munmap,
        StepKind::Mprotect,
        StepKind::Mremap,
        StepKind::Brk,
        StepKind::Madvise,
        StepKind::Mlock,
        StepKind::Fork,
        StepKind::Thread,
        StepKind::Vfork,
        StepKind::Execve,
        StepKind::Exit,
        StepKind::Fault,
        StepKind::Vma,
    ];

    /// Its name in tables.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            StepKind::Mmap => "mmap",
            StepKind::Munmap => "munmap",
            StepKind::Mprotect => "mprotect",
            StepKind::Mremap => "mremap",
            StepKind::Brk => "brk",
            StepKind::Madvise => "madvise",
            StepKind::Mlock => "mlock",
            StepKind::Fork => "fork",
            StepKind::Thread => "thread",
            StepKind::Vfork => "vfork",
            StepKind::Execve => "execve",
            StepKind::Exit => "exit",
            StepKind::Fault => "fault",
            StepKind::Vma => "vma",
        }
    }
}

/// Why an event was skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Skip {
    /// The call never returned (`= ?`).
    NoResult,
    /// The trace claims something Linux cannot do; the text says what.
    Nonsense(&'static str),
}

impl Skip {
    /// A short reason.
    #[must_use]
    pub fn reason(self) -> &'static str {
        match self {
            Skip::NoResult => "call without a result",
            Skip::Nonsense(why) => why,
        }
    }
}

/// A difference between what the model predicted and what the trace
/// shows; the model follows the trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disagreement {
    /// A short, fixed description (used to count them).
    pub what: &'static str,
    /// The values involved.
    pub detail: String,
}

/// One event of the trace as the history applied it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// Line of the trace.
    pub line: u64,
    /// Time of the event (µs).
    pub time_us: u64,
    /// The thread.
    pub tid: u32,
    /// What kind of event.
    pub kind: StepKind,
    /// The address space it acted on (the parent's for a fork).
    pub mm: Option<MmId>,
    /// The call returned an error (its operations are those Linux performs
    /// before failing, as for an `mprotect` that meets a hole).
    pub failed: bool,
    /// Page-table work, in order.
    pub operations: Vec<Operation>,
    /// Set when the event was not applied.
    pub skipped: Option<Skip>,
    /// Set when the model expected something else.
    pub disagreement: Option<Disagreement>,
}

/// Counts for one kind of step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KindCount {
    /// Events of this kind.
    pub events: u64,
    /// Calls that failed in the trace.
    pub failed: u64,
    /// Events skipped.
    pub skipped: u64,
    /// Page-table operations they performed.
    pub operations: u64,
    /// Present pages those operations touched.
    pub pages: u64,
}

/// Counts for one kind of operation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OperationCount {
    /// Operations.
    pub count: u64,
    /// Present pages they touched.
    pub pages: u64,
}

/// What a whole trace did, for tests and reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Where present pages came from.
    pub touches: Option<Touches>,
    /// Steps by kind.
    pub steps: BTreeMap<StepKind, KindCount>,
    /// Operations by name.
    pub operations: BTreeMap<&'static str, OperationCount>,
    /// Skipped events by reason.
    pub skipped: BTreeMap<&'static str, u64>,
    /// Disagreements by what disagreed.
    pub disagreements: BTreeMap<&'static str, u64>,
    /// Calls the format does not model, by name (from the reader).
    pub unknown_calls: BTreeMap<String, u64>,
    /// VMAs the kernel reported when `execve` set them up.
    pub vmas_installed: u64,
    /// Kernel VMA reports checked against the model.
    pub vmas_checked: u64,
    /// Faulting pages with no VMA allowing the access (`SIGSEGV`).
    pub faults_refused: u64,
    /// `munmap` calls over ranges with nothing mapped (legal no-ops).
    pub unmaps_of_nothing: u64,
    /// VMAs the model added because a successful call proved them.
    pub inferred_vmas: u64,
    /// Threads that appeared without a `clone` or `execve`.
    pub threads_without_origin: u64,
    /// Address spaces created (by `execve`, `fork`, or unknown origin).
    pub address_spaces: u64,
    /// Most address spaces alive at once.
    pub max_live: u64,
    /// Address spaces still alive at the end of the trace.
    pub live_at_end: u64,
}

impl Summary {
    /// All disagreements.
    #[must_use]
    pub fn disagreement_count(&self) -> u64 {
        self.disagreements.values().sum()
    }

    /// All skipped events.
    #[must_use]
    pub fn skipped_count(&self) -> u64 {
        self.skipped.values().sum()
    }

    /// Events of the given kinds.
    #[must_use]
    pub fn events(&self, kinds: &[StepKind]) -> u64 {
        kinds
            .iter()
            .map(|k| self.steps.get(k).map_or(0, |c| c.events))
            .sum()
    }

    fn record(&mut self, step: &Step) {
        let count = self.steps.entry(step.kind).or_default();
        count.events += 1;
        count.failed += u64::from(step.failed);
        count.skipped += u64::from(step.skipped.is_some());
        for operation in &step.operations {
            count.operations += 1;
            count.pages += operation.pages();
            let op = self.operations.entry(operation.name()).or_default();
            op.count += 1;
            op.pages += operation.pages();
        }
        if let Some(skip) = step.skipped {
            *self.skipped.entry(skip.reason()).or_default() += 1;
        }
        if let Some(d) = &step.disagreement {
            *self.disagreements.entry(d.what).or_default() += 1;
        }
    }
}

impl fmt::Display for Summary {
    /// A table of steps by kind and of operations, then the counts that
    /// should be zero for a trace the model follows exactly.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<10} {:>9} {:>7} {:>8} {:>10} {:>10}",
            "event", "count", "failed", "skipped", "operations", "pages"
        )?;
        for (kind, c) in &self.steps {
            writeln!(
                f,
                "{:<10} {:>9} {:>7} {:>8} {:>10} {:>10}",
                kind.name(),
                c.events,
                c.failed,
                c.skipped,
                c.operations,
                c.pages
            )?;
        }
        writeln!(f)?;
        writeln!(f, "{:<10} {:>9} {:>10}", "operation", "count", "pages")?;
        for (name, c) in &self.operations {
            writeln!(f, "{:<10} {:>9} {:>10}", name, c.count, c.pages)?;
        }
        writeln!(f)?;
        let touches = match self.touches {
            Some(Touches::Faults) => "recorded faults",
            Some(Touches::WholeRanges) => "estimated: whole mapped ranges",
            None => "unknown",
        };
        writeln!(f, "present pages from: {touches}")?;
        writeln!(
            f,
            "address spaces: {} created, at most {} alive, {} alive at the end",
            self.address_spaces, self.max_live, self.live_at_end
        )?;
        writeln!(
            f,
            "kernel VMA reports: {} installed at execve, {} checked",
            self.vmas_installed, self.vmas_checked
        )?;
        writeln!(
            f,
            "faults refused: {}; munmap of nothing: {}; inferred VMAs: {}; threads without origin: {}",
            self.faults_refused,
            self.unmaps_of_nothing,
            self.inferred_vmas,
            self.threads_without_origin
        )?;
        let unknown: u64 = self.unknown_calls.values().sum();
        write!(f, "unknown calls skipped: {unknown}")?;
        for (name, n) in &self.unknown_calls {
            write!(f, " {name}={n}")?;
        }
        writeln!(f)?;
        write!(f, "skipped: {}", self.skipped_count())?;
        for (why, n) in &self.skipped {
            write!(f, "; {why}: {n}")?;
        }
        writeln!(f)?;
        write!(f, "disagreements: {}", self.disagreement_count())?;
        for (what, n) in &self.disagreements {
            write!(f, "; {what}: {n}")?;
        }
        writeln!(f)
    }
}

/// The address space of a thread whose first event is its `execve`.
const NO_MM: MmId = 0;

/// A thread.
#[derive(Clone, Copy, Debug)]
struct Task {
    mm: MmId,
    tgid: u32,
    /// Between a successful `execve` and the thread's next call: VMA
    /// reports are the mappings `execve` made.
    exec_window: bool,
}

/// An address space and how many threads use it (`mm_users`).
#[derive(Debug)]
struct Mm {
    space: AddressSpace,
    users: u32,
    /// Its layout came from kernel reports, so a VMA the model lacks is a
    /// disagreement rather than an unknown part of the layout.
    reported: bool,
}

// Linux ABI constants (include/uapi/asm-generic/mman-common.h, mman.h,
// include/uapi/linux/sched.h, include/uapi/linux/mman.h).
const MAP_SHARED: u64 = 0x01;
const MAP_TYPE: u64 = 0x0f;
const MAP_SHARED_VALIDATE: u64 = 0x03;
const MAP_DROPPABLE: u64 = 0x08;
const MAP_FIXED: u64 = 0x10;
const MAP_ANONYMOUS: u64 = 0x20;
const MAP_GROWSDOWN: u64 = 0x100;
const MAP_LOCKED: u64 = 0x2000;
const MAP_NORESERVE: u64 = 0x4000;
const MAP_POPULATE: u64 = 0x8000;
const MAP_NONBLOCK: u64 = 0x1_0000;
const MAP_STACK: u64 = 0x2_0000;
const MAP_FIXED_NOREPLACE: u64 = 0x10_0000;
const PROT_GROWSDOWN: u64 = 0x0100_0000;
const MREMAP_MAYMOVE: u64 = 1;
const MREMAP_FIXED: u64 = 2;
const MREMAP_DONTUNMAP: u64 = 4;
const CLONE_VM: u64 = 0x100;
const CLONE_VFORK: u64 = 0x4000;
const CLONE_THREAD: u64 = 0x1_0000;
const MLOCK_ONFAULT: u64 = 1;
const MCL_CURRENT: u64 = 1;
const MCL_FUTURE: u64 = 2;
const MCL_ONFAULT: u64 = 4;

/// Follows a trace's threads and address spaces.
///
/// ```
/// use lazymmu_sim::program_trace::history::{History, StepKind};
/// use lazymmu_sim::program_trace::reader::Reader;
///
/// let text = "lazymmu-trace 1\n\
///             0 7 execve - = 0\n\
///             1 7 mmap 0 3000 3 22 - 0 = 7f0000000000\n\
///             2 7 fault 7f0000001000 1 w\n\
///             3 7 munmap 7f0000000000 3000 = 0\n";
/// let mut history = History::default();
/// let mut pages = 0;
/// let mut reader = Reader::new(text.as_bytes(), "t");
/// while let Some(record) = reader.next() {
///     let record = record?;
///     if let Some(step) = history.apply(&record, reader.lines_read())? {
///         if step.kind == StepKind::Munmap {
///             pages = step.operations.iter().map(|op| op.pages()).sum();
///         }
///     }
/// }
/// assert_eq!(pages, 1); // the munmap zaps the one page touched
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct History {
    kernel: Kernel,
    files: HashMap<u32, FileDecl>,
    tasks: HashMap<u32, Task>,
    mms: HashMap<MmId, Mm>,
    next_mm: MmId,
    next_anon_vma: u64,
    next_shmem: u64,
    summary: Summary,
}

impl Default for History {
    fn default() -> Self {
        History::new(Kernel::default())
    }
}

/// A metadata line the history cannot use: what it expected there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaError {
    /// What the value should be.
    pub expected: String,
    /// The value found.
    pub found: String,
}

impl fmt::Display for MetaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "expected {}, found `{}`", self.expected, self.found)
    }
}

impl std::error::Error for MetaError {}

impl History {
    /// An empty history for a trace recorded on `kernel` (metadata lines
    /// of the trace override it).
    #[must_use]
    pub fn new(kernel: Kernel) -> Self {
        History {
            kernel,
            files: HashMap::new(),
            tasks: HashMap::new(),
            mms: HashMap::new(),
            next_mm: 0,
            next_anon_vma: 0,
            next_shmem: 0,
            summary: Summary::default(),
        }
    }

    /// The kernel model in force.
    #[must_use]
    pub fn kernel(&self) -> &Kernel {
        &self.kernel
    }

    /// The address space a thread uses now.
    #[must_use]
    pub fn address_space_of(&self, tid: u32) -> Option<&AddressSpace> {
        self.tasks
            .get(&tid)
            .and_then(|t| self.mms.get(&t.mm))
            .map(|m| &m.space)
    }

    /// The summary so far (the live count is filled in by [`finish`]).
    ///
    /// [`finish`]: History::finish
    #[must_use]
    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    /// The summary at the end of the trace, with the calls the reader
    /// skipped.
    #[must_use]
    pub fn finish(mut self, unknown_calls: &super::reader::SkippedCalls) -> Summary {
        self.summary.live_at_end = self.mms.len() as u64;
        self.summary.touches = Some(self.kernel.touches);
        self.summary.unknown_calls = unknown_calls.by_name.clone();
        if unknown_calls.other > 0 {
            self.summary
                .unknown_calls
                .insert("(other names)".to_owned(), unknown_calls.other);
        }
        self.summary
    }

    /// Applies one record of the trace, in order; events give a step.
    ///
    /// # Errors
    /// A metadata line with a value the model cannot use (`@touches`,
    /// `@fault-around`, `@thp`, `@task-size`, `@stack-limit`,
    /// `@page-size`).
    pub fn apply(&mut self, record: &Record, line: u64) -> Result<Option<Step>, MetaError> {
        match record {
            Record::Meta { key, value } => {
                self.meta(key, value)?;
                Ok(None)
            }
            Record::File(decl) => {
                self.files.insert(decl.id, decl.clone());
                Ok(None)
            }
            Record::Event(event) => Ok(Some(self.event(event, line))),
        }
    }

    fn meta(&mut self, key: &str, value: &str) -> Result<(), MetaError> {
        let bad = |expected: &str| MetaError {
            expected: format!("{expected} after @{key}"),
            found: value.to_owned(),
        };
        match key {
            "touches" => {
                self.kernel.touches = match value.split_whitespace().next() {
                    Some("faults") => Touches::Faults,
                    Some("whole-ranges") => Touches::WholeRanges,
                    _ => return Err(bad("`faults` or `whole-ranges`")),
                };
            }
            "fault-around" => {
                let pages: u64 = value.parse().map_err(|_| bad("a page count"))?;
                if !(1..=512).contains(&pages) || !pages.is_power_of_two() {
                    return Err(bad("a power of two from 1 to 512 pages"));
                }
                self.kernel.fault_around_pages = pages;
            }
            "thp" => {
                self.kernel.thp = match value {
                    "always" => Thp::Always,
                    "madvise" => Thp::Madvise,
                    "never" => Thp::Never,
                    _ => return Err(bad("`always`, `madvise` or `never`")),
                };
            }
            "task-size" => {
                let size =
                    u64::from_str_radix(value, 16).map_err(|_| bad("a hexadecimal address"))?;
                if size % PAGE_SIZE != 0 || size == 0 {
                    return Err(bad("a page-aligned hexadecimal address"));
                }
                self.kernel.task_size = size;
            }
            "stack-limit" => {
                self.kernel.stack_limit = if value == "unlimited" {
                    u64::MAX
                } else {
                    value.parse().map_err(|_| bad("bytes or `unlimited`"))?
                };
            }
            "page-size" if value != "4096" => {
                return Err(bad("4096 (the model has 4 KiB pages only)"));
            }
            // Descriptive keys (command, kernel, recorded-by, ...) are kept
            // by the reader's caller, not needed here.
            _ => {}
        }
        Ok(())
    }

    fn new_mm(&mut self, space: AddressSpace, reported: bool) -> MmId {
        self.next_mm += 1;
        self.mms.insert(
            self.next_mm,
            Mm {
                space,
                users: 1,
                reported,
            },
        );
        self.summary.address_spaces += 1;
        self.summary.max_live = self.summary.max_live.max(self.mms.len() as u64);
        self.next_mm
    }

    /// The thread's task, created with an address space of its own when
    /// the trace never showed where it came from.
    fn task(&mut self, tid: u32, is_exec: bool) -> Task {
        if let Some(task) = self.tasks.get(&tid) {
            return *task;
        }
        // The first execve of a recording replaces an address space the
        // trace never saw: there is nothing to tear down.
        let mm = if is_exec {
            NO_MM
        } else {
            self.summary.threads_without_origin += 1;
            self.new_mm(AddressSpace::default(), false)
        };
        let task = Task {
            mm,
            tgid: tid,
            exec_window: false,
        };
        self.tasks.insert(tid, task);
        task
    }

    /// The thread leaves its address space; the last user tears it down
    /// (`mmput` → `exit_mmap`).
    fn leave(&mut self, mm: MmId) -> Option<Operation> {
        let entry = self.mms.get_mut(&mm)?;
        entry.users = entry.users.saturating_sub(1);
        if entry.users > 0 {
            return None;
        }
        let mut gone = self.mms.remove(&mm)?;
        Some(gone.space.teardown(mm))
    }

    fn event(&mut self, event: &Event, line: u64) -> Step {
        let mut step = Step {
            line,
            time_us: event.time_us,
            tid: event.tid,
            kind: StepKind::Fault,
            mm: None,
            failed: false,
            operations: Vec::new(),
            skipped: None,
            disagreement: None,
        };
        match &event.kind {
            EventKind::Call { call, result } => self.call(&mut step, call, result),
            EventKind::Fault {
                addr,
                pages,
                access,
            } => self.faults(&mut step, *addr, *pages, *access),
            EventKind::Vma(report) => self.vma_report(&mut step, report),
            EventKind::Exit(_) => {
                step.kind = StepKind::Exit;
                match self.tasks.remove(&event.tid) {
                    Some(task) => {
                        step.mm = Some(task.mm);
                        step.operations.extend(self.leave(task.mm));
                    }
                    None => step.skipped = Some(Skip::Nonsense("exit of a thread never seen")),
                }
            }
        }
        self.summary.record(&step);
        step
    }

    fn call(&mut self, step: &mut Step, call: &Call, result: &Outcome) {
        step.kind = match call {
            Call::Mmap { .. } => StepKind::Mmap,
            Call::Munmap { .. } => StepKind::Munmap,
            Call::Mprotect { .. } => StepKind::Mprotect,
            Call::Mremap { .. } => StepKind::Mremap,
            Call::Brk { .. } => StepKind::Brk,
            Call::Madvise { .. } => StepKind::Madvise,
            Call::Mlock { .. }
            | Call::Munlock { .. }
            | Call::Mlockall { .. }
            | Call::Munlockall => StepKind::Mlock,
            Call::Clone { flags } if flags & CLONE_VFORK != 0 => StepKind::Vfork,
            Call::Clone { flags } if flags & CLONE_VM != 0 => StepKind::Thread,
            Call::Clone { .. } => StepKind::Fork,
            Call::Execve { .. } => StepKind::Execve,
        };
        let is_exec = matches!(call, Call::Execve { .. });
        let task = self.task(step.tid, is_exec);
        if let Some(t) = self.tasks.get_mut(&step.tid) {
            t.exec_window = false;
        }
        step.mm = Some(task.mm);
        let value = match result {
            Outcome::Unknown => {
                step.skipped = Some(Skip::NoResult);
                return;
            }
            Outcome::Failed(_) => None,
            Outcome::Returned(v) => Some(*v),
        };
        step.failed = value.is_none();
        match *call {
            Call::Mmap {
                len,
                prot,
                flags,
                file,
                offset,
                ..
            } => {
                if let Some(addr) = value {
                    self.mmap(step, task.mm, addr, len, prot, flags, file, offset);
                }
            }
            Call::Munmap { addr, len } => self.munmap(step, task.mm, addr, len),
            Call::Mprotect { addr, len, prot } => self.mprotect(step, task.mm, addr, len, prot),
            Call::Mremap {
                old_addr,
                old_len,
                new_len,
                flags,
                new_addr,
            } => {
                if let Some(result) = value {
                    self.mremap(
                        step, task.mm, old_addr, old_len, new_len, flags, new_addr, result,
                    );
                }
            }
            Call::Brk { addr } => {
                if let Some(result) = value {
                    self.brk(step, task.mm, addr, result);
                }
            }
            Call::Madvise { addr, len, advice } => self.madvise(step, task.mm, addr, len, advice),
            Call::Mlock { addr, len, flags } => {
                let lock = VmFlags::LOCKED
                    | if flags & MLOCK_ONFAULT != 0 {
                        VmFlags::LOCKONFAULT
                    } else {
                        0
                    };
                self.mlock(step, task.mm, addr, len, Some(lock));
            }
            Call::Munlock { addr, len } => self.mlock(step, task.mm, addr, len, None),
            Call::Mlockall { flags } => {
                if value.is_some() {
                    self.mlockall(step, task.mm, Some(flags));
                }
            }
            Call::Munlockall => {
                if value.is_some() {
                    self.mlockall(step, task.mm, None);
                }
            }
            Call::Clone { flags } => {
                if let Some(child) = value {
                    self.clone_task(step, task, flags, child);
                }
            }
            Call::Execve { .. } => {
                if value.is_some() {
                    self.execve(step, task);
                }
            }
        }
    }

    /// Where the pages of a mapping come from when no faults were
    /// recorded: all of them, once mapped.
    fn estimate_touches(&mut self, step: &mut Step, mm: MmId, range: Range<u64>) {
        if self.kernel.touches == Touches::WholeRanges {
            self.populate(step, mm, range);
        }
    }

    fn populate(&mut self, step: &mut Step, mm: MmId, range: Range<u64>) {
        let files = &self.files;
        let Some(entry) = self.mms.get_mut(&mm) else {
            return;
        };
        let op = entry.space.populate(
            mm,
            range,
            |id| files.get(&id).and_then(|f| f.size),
            &mut self.next_anon_vma,
        );
        step.operations.extend(op);
    }

    /// The user-space range `[addr, addr + len)` page aligned, or why it
    /// cannot be one.
    fn user_range(&self, addr: u64, len: u64) -> Result<Range<u64>, &'static str> {
        if addr % PAGE_SIZE != 0 {
            return Err("unaligned address");
        }
        let len = page_align(len).ok_or("length overflows")?;
        let end = addr.checked_add(len).ok_or("length overflows")?;
        if end > self.kernel.task_size {
            return Err("range past the user half");
        }
        Ok(addr..end)
    }

    fn space(&mut self, mm: MmId) -> &mut AddressSpace {
        &mut self
            .mms
            .entry(mm)
            .or_insert_with(|| Mm {
                space: AddressSpace::default(),
                users: 1,
                reported: false,
            })
            .space
    }

    /// Fills the holes of `range` with VMAs a successful call proved to
    /// exist; a disagreement when the layout came from kernel reports.
    fn infer(
        &mut self,
        step: &mut Step,
        mm: MmId,
        range: Range<u64>,
        prot: u64,
        what: &'static str,
    ) {
        let reported = self.mms.get(&mm).is_some_and(|m| m.reported);
        let holes = self.space(mm).holes(range.clone());
        if holes.is_empty() {
            return;
        }
        if reported {
            step.disagreement = Some(Disagreement {
                what,
                detail: format!(
                    "{:x}-{:x} not mapped in the model",
                    holes[0].start, holes[0].end
                ),
            });
        }
        for hole in holes {
            self.summary.inferred_vmas += 1;
            let vma = Vma {
                start: hole.start,
                end: hole.end,
                flags: VmFlags(
                    VmFlags::from_prot(prot)
                        | VmFlags::MAYREAD
                        | VmFlags::MAYWRITE
                        | VmFlags::MAYEXEC,
                ),
                backing: VmaBacking::Anonymous,
                pgoff: hole.start / PAGE_SIZE,
                anon_vma: None,
                fork_child: false,
            };
            self.space(mm).install_reported(vma);
            self.estimate_touches(step, mm, hole);
        }
    }

    /// `do_mmap` → `mmap_region`: replaces what `MAP_FIXED` covers, adds
    /// the VMA (merging), and populates it for `MAP_POPULATE`/`VM_LOCKED`.
    #[allow(clippy::too_many_arguments)]
    fn mmap(
        &mut self,
        step: &mut Step,
        mm: MmId,
        addr: u64,
        len: u64,
        prot: u64,
        flags: u64,
        file: Option<u32>,
        offset: u64,
    ) {
        let range = match self.user_range(addr, len) {
            Ok(r) if r.start < r.end => r,
            Ok(_) => return step.skipped = Some(Skip::Nonsense("mmap of length 0 succeeded")),
            Err(why) => {
                return step.skipped = Some(Skip::Nonsense(match why {
                    "unaligned address" => "mmap returned an unaligned address",
                    "length overflows" => "mmap length overflows",
                    _ => "mmap past the user half",
                }))
            }
        };
        let fixed = flags & (MAP_FIXED | MAP_FIXED_NOREPLACE) != 0;
        let def_flags = self.space(mm).def_flags;
        if !fixed && self.space(mm).vmas_in(range.clone()).next().is_some() {
            step.disagreement = Some(Disagreement {
                what: "mmap placed over VMAs the model holds",
                detail: format!("{:x}-{:x}", range.start, range.end),
            });
        }
        if let Some(unmap) = self.space(mm).unmap(mm, range.clone()) {
            step.operations.push(unmap);
        }
        let map_type = flags & MAP_TYPE;
        let shared = map_type == MAP_SHARED || map_type == MAP_SHARED_VALIDATE;
        let anonymous = flags & MAP_ANONYMOUS != 0 || file.is_none();
        let mut vm = VmFlags::from_prot(prot)
            | VmFlags::MAYREAD
            | VmFlags::MAYWRITE
            | VmFlags::MAYEXEC
            | def_flags;
        if flags & MAP_GROWSDOWN != 0 {
            vm |= VmFlags::GROWSDOWN;
        }
        if flags & MAP_LOCKED != 0 {
            vm |= VmFlags::LOCKED;
        }
        // calc_vm_flag_bits: MAP_STACK means VM_NOHUGEPAGE (Linux 6.7+).
        if flags & MAP_STACK != 0 {
            vm |= VmFlags::NOHUGEPAGE;
        }
        if shared {
            vm |= VmFlags::SHARED | VmFlags::MAYSHARE;
        }
        if map_type == MAP_DROPPABLE && anonymous {
            vm |= VmFlags::WIPEONFORK | VmFlags::DONTDUMP | VmFlags::NORESERVE;
        }
        if flags & MAP_NORESERVE != 0 {
            vm |= VmFlags::NORESERVE;
        }
        // accountable_mapping: private writable memory is charged.
        if vm & (VmFlags::NORESERVE | VmFlags::SHARED | VmFlags::WRITE) == VmFlags::WRITE {
            vm |= VmFlags::ACCOUNT;
        }
        let (backing, pgoff) = match (anonymous, shared) {
            (true, true) => {
                self.next_shmem += 1;
                (VmaBacking::Shmem(self.next_shmem), 0)
            }
            (true, false) => (VmaBacking::Anonymous, range.start / PAGE_SIZE),
            (false, _) => (VmaBacking::File(file.unwrap_or(0)), offset / PAGE_SIZE),
        };
        let vma = Vma {
            start: range.start,
            end: range.end,
            flags: VmFlags(vm),
            backing,
            pgoff,
            anon_vma: None,
            fork_child: false,
        };
        self.space(mm).insert(vma, false);
        step.operations.push(Operation::Map {
            mm,
            range: range.clone(),
            prot,
        });
        let populate =
            vm & VmFlags::LOCKED != 0 || flags & (MAP_POPULATE | MAP_NONBLOCK) == MAP_POPULATE;
        if populate {
            self.populate(step, mm, range);
        } else {
            self.estimate_touches(step, mm, range);
        }
    }

    /// munmap (`__vm_munmap` → `do_vmi_munmap`).
    fn munmap(&mut self, step: &mut Step, mm: MmId, addr: u64, len: u64) {
        let range = self.user_range(addr, len).ok().filter(|r| r.start < r.end);
        match (range, step.failed) {
            (Some(range), false) => match self.space(mm).unmap(mm, range) {
                Some(op) => step.operations.push(op),
                None => self.summary.unmaps_of_nothing += 1,
            },
            (None, false) => {
                step.skipped = Some(Skip::Nonsense("munmap of an invalid range succeeded"))
            }
            (Some(range), true) => {
                step.disagreement = Some(Disagreement {
                    what: "munmap failed where the model expected success",
                    detail: format!("{:x}-{:x}", range.start, range.end),
                });
            }
            (None, true) => {}
        }
    }

    /// mprotect (`do_mprotect_pkey`): changes up to the first hole or
    /// refusal, so a failed call may still have changed a prefix.
    fn mprotect(&mut self, step: &mut Step, mm: MmId, addr: u64, len: u64, prot: u64) {
        if prot & !(VmFlags::ACCESS | PROT_GROWSDOWN | 0x0200_0000) != 0 {
            if !step.failed {
                step.skipped = Some(Skip::Nonsense("mprotect with unknown bits succeeded"));
            }
            return;
        }
        if len == 0 {
            return;
        }
        let Ok(mut range) = self.user_range(addr, len) else {
            if !step.failed {
                step.skipped = Some(Skip::Nonsense("mprotect of an invalid range succeeded"));
            }
            return;
        };
        if prot & PROT_GROWSDOWN != 0 {
            if let Some(vma) = self.space(mm).vmas_in(range.clone()).next() {
                if vma.flags.has(VmFlags::GROWSDOWN) {
                    range.start = vma.start;
                }
            }
        }
        let prot = prot & VmFlags::ACCESS;
        let predicted = self.space(mm).plan_protect(range.clone(), prot);
        match (predicted, step.failed) {
            ((Predicted::Success, _), false) => {}
            ((Predicted::Fails(errno), _), false) => {
                if errno == "ENOMEM" {
                    self.infer(
                        step,
                        mm,
                        range.clone(),
                        prot,
                        "mprotect succeeded over a hole in the model",
                    );
                } else {
                    step.disagreement = Some(Disagreement {
                        what: "mprotect succeeded where the model expected a refusal",
                        detail: format!("{errno} at {:x}-{:x}", range.start, range.end),
                    });
                }
            }
            ((Predicted::Fails(_), reach), true) => range = reach,
            ((Predicted::Success, _), true) => {
                step.disagreement = Some(Disagreement {
                    what: "mprotect failed where the model expected success",
                    detail: format!("{:x}-{:x}", range.start, range.end),
                });
                return;
            }
        }
        if let Some(op) = self.space(mm).apply_protect(mm, range, prot) {
            step.operations.push(op);
        }
    }

    /// mremap (`do_mremap`): shrink or grow in place, or move (after
    /// unmapping the destination for `MREMAP_FIXED` and the tail when
    /// shrinking); `MREMAP_DONTUNMAP` keeps the source VMA empty.
    #[allow(clippy::too_many_arguments)]
    fn mremap(
        &mut self,
        step: &mut Step,
        mm: MmId,
        old_addr: u64,
        old_len: u64,
        new_len: u64,
        flags: u64,
        new_addr: u64,
        result: u64,
    ) {
        let (Ok(old), Ok(new)) = (
            self.user_range(old_addr, old_len),
            self.user_range(result, new_len),
        ) else {
            return step.skipped = Some(Skip::Nonsense("mremap of an invalid range succeeded"));
        };
        if new.start >= new.end {
            return step.skipped = Some(Skip::Nonsense("mremap to length 0 succeeded"));
        }
        if flags & MREMAP_FIXED != 0 && result != new_addr {
            step.disagreement = Some(Disagreement {
                what: "mremap with MREMAP_FIXED moved elsewhere",
                detail: format!("asked {new_addr:x}, got {result:x}"),
            });
        }
        let old_len = old.end - old.start;
        let new_len = new.end - new.start;
        if self.space(mm).vma_at(old.start).is_none() {
            self.infer(
                step,
                mm,
                old.start..old.end.max(old.start + PAGE_SIZE),
                0x3,
                "mremap of a range the model has unmapped",
            );
        }
        let Some(source) = self.space(mm).vma_at(old.start).cloned() else {
            return step.skipped = Some(Skip::Nonsense("mremap of an unmapped range succeeded"));
        };
        if old_len == 0 {
            // A second mapping of a shared VMA (old_len 0, MREMAP_MAYMOVE).
            let vma = Vma {
                start: new.start,
                end: new.end,
                pgoff: source.pgoff + (old.start - source.start) / PAGE_SIZE,
                anon_vma: None,
                fork_child: false,
                ..source
            };
            self.space(mm).insert(vma, false);
            step.operations.push(Operation::Map {
                mm,
                range: new.clone(),
                prot: source.flags.prot(),
            });
            return;
        }
        let move_only = flags & MREMAP_FIXED != 0 && old_len == new_len;
        if !move_only && old.end > source.end {
            step.disagreement = Some(Disagreement {
                what: "mremap source spans several VMAs in the model",
                detail: format!(
                    "{:x}-{:x} vs VMA {:x}-{:x}",
                    old.start, old.end, source.start, source.end
                ),
            });
        }
        let in_place = result == old.start && flags & (MREMAP_FIXED | MREMAP_DONTUNMAP) == 0;
        if in_place {
            if new_len < old_len {
                step.operations
                    .extend(self.space(mm).unmap(mm, old.start + new_len..old.end));
            } else if new_len > old_len {
                if old.end != source.end {
                    step.disagreement = Some(Disagreement {
                        what: "mremap grew in place a range not ending its VMA",
                        detail: format!("{:x}-{:x}", old.start, old.end),
                    });
                }
                let grown = old.end..old.start + new_len;
                if self.space(mm).vmas_in(grown.clone()).next().is_some() {
                    step.disagreement = Some(Disagreement {
                        what: "mremap grew in place over VMAs the model holds",
                        detail: format!("{:x}-{:x}", grown.start, grown.end),
                    });
                    step.operations
                        .extend(self.space(mm).unmap(mm, grown.clone()));
                }
                self.space(mm).extend(old.end, new_len - old_len);
                step.operations.push(Operation::Map {
                    mm,
                    range: grown.clone(),
                    prot: source.flags.prot(),
                });
                if source.flags.has(VmFlags::LOCKED) {
                    self.populate(step, mm, grown);
                } else {
                    self.estimate_touches(step, mm, grown);
                }
            }
            return;
        }
        if flags & MREMAP_MAYMOVE == 0 && flags & MREMAP_FIXED == 0 {
            step.disagreement = Some(Disagreement {
                what: "mremap moved without MREMAP_MAYMOVE",
                detail: format!("{:x} -> {result:x}", old.start),
            });
        }
        if flags & MREMAP_FIXED != 0 {
            step.operations
                .extend(self.space(mm).unmap(mm, new.clone()));
        } else if self.space(mm).vmas_in(new.clone()).next().is_some() {
            step.disagreement = Some(Disagreement {
                what: "mremap moved onto VMAs the model holds",
                detail: format!("{:x}-{:x}", new.start, new.end),
            });
            step.operations
                .extend(self.space(mm).unmap(mm, new.clone()));
        }
        let mut moved_len = old_len;
        if new_len < old_len {
            step.operations
                .extend(self.space(mm).unmap(mm, old.start + new_len..old.end));
            moved_len = new_len;
        }
        let keep = flags & MREMAP_DONTUNMAP != 0;
        if move_only {
            // Linux 6.17+: a pure move may span several VMAs, gaps kept.
            let pieces: Vec<Range<u64>> = self
                .space(mm)
                .vmas_in(old.clone())
                .map(|v| v.start.max(old.start)..v.end.min(old.end))
                .collect();
            for piece in pieces {
                let to = new.start + (piece.start - old.start);
                let len = piece.end - piece.start;
                let ops = self.space(mm).move_range(mm, piece, to, len, keep);
                step.operations.extend(ops);
            }
        } else {
            let ops = self.space(mm).move_range(
                mm,
                old.start..old.start + moved_len,
                new.start,
                new_len,
                keep,
            );
            step.operations.extend(ops);
            if new_len > moved_len {
                let grown = new.start + moved_len..new.end;
                step.operations.push(Operation::Map {
                    mm,
                    range: grown.clone(),
                    prot: source.flags.prot(),
                });
                self.estimate_touches(step, mm, grown);
            }
        }
    }

    /// brk (`SYSCALL_DEFINE1(brk)`): the result is the new break on
    /// success and the old one on failure; growing adds (or extends) the
    /// heap VMA with `do_brk_flags`, shrinking unmaps with
    /// `do_vmi_align_munmap`.
    fn brk(&mut self, step: &mut Step, mm: MmId, addr: u64, result: u64) {
        let space = self.space(mm);
        let Some((start_brk, current)) = space.brk else {
            // The first brk shows where the heap starts.
            space.brk = Some((result, result));
            if addr != 0 && addr == result {
                step.skipped = Some(Skip::Nonsense("brk moved before its start was known"));
            }
            return;
        };
        if addr == 0 || addr != result {
            // A query, or a refusal: the result is the current break.
            step.failed = addr != 0;
            if result != current {
                step.disagreement = Some(Disagreement {
                    what: "brk returned another break than the model's",
                    detail: format!("{result:x} vs {current:x}"),
                });
                self.space(mm).brk = Some((start_brk, result));
            }
            return;
        }
        if addr < start_brk {
            step.disagreement = Some(Disagreement {
                what: "brk below the heap start succeeded",
                detail: format!("{addr:x} < {start_brk:x}"),
            });
        }
        let (Some(newbrk), Some(oldbrk)) = (page_align(addr), page_align(current)) else {
            return step.skipped = Some(Skip::Nonsense("brk past the end of the address space"));
        };
        if newbrk > self.kernel.task_size {
            return step.skipped = Some(Skip::Nonsense("brk past the user half"));
        }
        self.space(mm).brk = Some((start_brk, addr));
        if newbrk == oldbrk {
            return;
        }
        if addr <= current {
            step.operations
                .extend(self.space(mm).unmap(mm, newbrk..oldbrk));
            return;
        }
        let grown = oldbrk..newbrk;
        if self
            .space(mm)
            .vmas_in(oldbrk..newbrk.saturating_add(PAGE_SIZE))
            .next()
            .is_some()
        {
            step.disagreement = Some(Disagreement {
                what: "brk grew over VMAs the model holds",
                detail: format!("{oldbrk:x}-{newbrk:x}"),
            });
            step.operations
                .extend(self.space(mm).unmap(mm, grown.clone()));
        }
        let space = self.space(mm);
        let merge_left = space.brk_vma_end(start_brk, oldbrk) == Some(oldbrk);
        let vma = Vma {
            start: oldbrk,
            end: newbrk,
            flags: VmFlags(
                VmFlags::READ
                    | VmFlags::WRITE
                    | VmFlags::MAYREAD
                    | VmFlags::MAYWRITE
                    | VmFlags::MAYEXEC
                    | VmFlags::ACCOUNT
                    | space.def_flags,
            ),
            backing: VmaBacking::Anonymous,
            pgoff: oldbrk / PAGE_SIZE,
            anon_vma: None,
            fork_child: false,
        };
        if merge_left {
            space.insert(vma, true);
        } else {
            // No brk VMA yet: do_brk_flags makes a new one and merges
            // nothing.
            space.install_reported(vma);
        }
        let locked = self.space(mm).def_flags & VmFlags::LOCKED != 0;
        step.operations.push(Operation::Map {
            mm,
            range: grown.clone(),
            prot: 0x3,
        });
        if locked {
            self.populate(step, mm, grown);
        } else {
            self.estimate_touches(step, mm, grown);
        }
    }

    /// madvise (`do_madvise`): zaps, cleans, populates or changes VMA
    /// flags over the mapped parts of the range; holes make it return
    /// `ENOMEM` after doing the rest.
    fn madvise(&mut self, step: &mut Step, mm: MmId, addr: u64, len: u64, advice: u64) {
        let Ok(range) = self.user_range(addr, len) else {
            if !step.failed {
                step.skipped = Some(Skip::Nonsense("madvise of an invalid range succeeded"));
            }
            return;
        };
        if range.start == range.end {
            return;
        }
        let holes = !self.space(mm).covered(range.clone());
        if step.failed && !holes {
            // EINVAL/EPERM and the like: nothing was done.
            return;
        }
        if !step.failed && holes && advice != 3 {
            step.disagreement = Some(Disagreement {
                what: "madvise succeeded over a hole in the model",
                detail: format!("{:x}-{:x}", range.start, range.end),
            });
        }
        // The advice that only sets and clears VMA flags
        // (`madvise_update_vma`), as (set, clear).
        let flags = match advice {
            0 => Some((0, VmFlags::SEQ_READ | VmFlags::RAND_READ)), // NORMAL
            1 => Some((VmFlags::RAND_READ, VmFlags::SEQ_READ)),     // RANDOM
            2 => Some((VmFlags::SEQ_READ, VmFlags::RAND_READ)),     // SEQUENTIAL
            10 => Some((VmFlags::DONTCOPY, 0)),                     // DONTFORK
            11 => Some((0, VmFlags::DONTCOPY)),                     // DOFORK
            12 => Some((VmFlags::MERGEABLE, 0)),                    // MERGEABLE
            13 => Some((0, VmFlags::MERGEABLE)),                    // UNMERGEABLE
            14 => Some((VmFlags::HUGEPAGE, VmFlags::NOHUGEPAGE)),   // HUGEPAGE
            15 => Some((VmFlags::NOHUGEPAGE, VmFlags::HUGEPAGE)),   // NOHUGEPAGE
            16 => Some((VmFlags::DONTDUMP, 0)),                     // DONTDUMP
            17 => Some((0, VmFlags::DONTDUMP)),                     // DODUMP
            18 => Some((VmFlags::WIPEONFORK, 0)),                   // WIPEONFORK
            19 => Some((0, VmFlags::WIPEONFORK)),                   // KEEPONFORK
            _ => None,
        };
        if let Some((set, clear)) = flags {
            self.space(mm)
                .modify_flags(range, move |v| Some((v.flags.0 | set) & !clear));
            return;
        }
        match advice {
            // MADV_DONTNEED, MADV_REMOVE, MADV_DONTNEED_LOCKED
            4 | 9 | 24 => step.operations.extend(self.space(mm).zap(mm, range)),
            // MADV_FREE
            8 => step.operations.extend(self.space(mm).clean(mm, range)),
            // MADV_POPULATE_READ, MADV_POPULATE_WRITE
            22 | 23 => self.populate(step, mm, range),
            // WILLNEED, COLD, PAGEOUT, COLLAPSE and the rest change no
            // entry the replay models (PAGEOUT's reclaim is not modelled).
            _ => {}
        }
    }

    /// mlock/munlock (`apply_vma_lock_flags`, then `__mm_populate` unless
    /// `MLOCK_ONFAULT`).
    fn mlock(&mut self, step: &mut Step, mm: MmId, addr: u64, len: u64, lock: Option<u64>) {
        let range = len
            .checked_add(addr % PAGE_SIZE)
            .ok_or("length overflows")
            .and_then(|len| self.user_range(page_down_start(addr), len));
        let Ok(range) = range else {
            if !step.failed {
                step.skipped = Some(Skip::Nonsense("mlock of an invalid range succeeded"));
            }
            return;
        };
        if step.failed && self.space(mm).covered(range.clone()) {
            return;
        }
        let mask = VmFlags::LOCKED | VmFlags::LOCKONFAULT;
        self.space(mm).modify_flags(range.clone(), |v| {
            if v.flags.any(VmFlags::SPECIAL) {
                None
            } else {
                Some((v.flags.0 & !mask) | lock.unwrap_or(0))
            }
        });
        if lock.is_some_and(|l| l & VmFlags::LOCKONFAULT == 0) {
            self.populate(step, mm, range);
        }
    }

    /// mlockall/munlockall (`apply_mlockall_flags`).
    fn mlockall(&mut self, step: &mut Step, mm: MmId, flags: Option<u64>) {
        let mask = VmFlags::LOCKED | VmFlags::LOCKONFAULT;
        let onfault = flags.is_some_and(|f| f & MCL_ONFAULT != 0);
        let lock = VmFlags::LOCKED | if onfault { VmFlags::LOCKONFAULT } else { 0 };
        let space = self.space(mm);
        space.def_flags &= !mask;
        if flags.is_some_and(|f| f & MCL_FUTURE != 0) {
            space.def_flags |= lock;
        }
        if flags.is_some_and(|f| f & MCL_CURRENT == 0) {
            return;
        }
        let everything = 0..self.kernel.task_size;
        self.space(mm).modify_flags(everything.clone(), |v| {
            if v.flags.any(VmFlags::SPECIAL) {
                None
            } else {
                Some((v.flags.0 & !mask) | if flags.is_some() { lock } else { 0 })
            }
        });
        if flags.is_some() && !onfault {
            self.populate(step, mm, everything);
        }
    }

    /// clone (`copy_process`): `CLONE_VM` shares the address space
    /// (`mm_users`), otherwise `dup_mmap` copies it.
    fn clone_task(&mut self, step: &mut Step, parent: Task, flags: u64, child: u64) {
        let Ok(child) = u32::try_from(child) else {
            return step.skipped = Some(Skip::Nonsense("clone returned an impossible thread id"));
        };
        if child == 0 {
            return step.skipped = Some(Skip::Nonsense("clone returned thread id 0"));
        }
        if let Some(old) = self.tasks.remove(&child) {
            // The id was reused without an exit in the trace.
            step.operations.extend(self.leave(old.mm));
        }
        let tgid = if flags & CLONE_THREAD != 0 {
            parent.tgid
        } else {
            child
        };
        let mm = if flags & CLONE_VM != 0 {
            if let Some(entry) = self.mms.get_mut(&parent.mm) {
                entry.users += 1;
            }
            parent.mm
        } else {
            let (copy, reported, mut op) = {
                let entry = self.mms.get(&parent.mm);
                let reported = entry.is_some_and(|e| e.reported);
                let empty = AddressSpace::default();
                let space = entry.map_or(&empty, |e| &e.space);
                let (copy, op) = space.fork(parent.mm, 0, &mut self.next_anon_vma);
                (copy, reported, op)
            };
            let child_mm = self.new_mm(copy, reported);
            if let Operation::Copy { child, .. } = &mut op {
                *child = child_mm;
            }
            step.operations.push(op);
            child_mm
        };
        self.tasks.insert(
            child,
            Task {
                mm,
                tgid,
                exec_window: false,
            },
        );
    }

    /// execve (`begin_new_exec`): the other threads of the group die
    /// (`de_thread`), the old address space is dropped (`exec_mmap` →
    /// `mmput`), and a new, empty one takes its place until the kernel's
    /// reports of the new mappings arrive.
    fn execve(&mut self, step: &mut Step, task: Task) {
        let siblings: Vec<u32> = self
            .tasks
            .iter()
            .filter(|(&tid, t)| t.tgid == task.tgid && tid != step.tid)
            .map(|(&tid, _)| tid)
            .collect();
        for tid in siblings {
            if let Some(sibling) = self.tasks.remove(&tid) {
                step.operations.extend(self.leave(sibling.mm));
            }
        }
        step.operations.extend(self.leave(task.mm));
        self.tasks.remove(&step.tid);
        let mm = self.new_mm(AddressSpace::default(), false);
        // A thread other than the leader takes over the group's id
        // (de_thread), and later events carry that id.
        self.tasks.insert(
            task.tgid,
            Task {
                mm,
                tgid: task.tgid,
                exec_window: true,
            },
        );
        step.mm = Some(mm);
    }

    fn faults(&mut self, step: &mut Step, addr: u64, pages: u64, access: Access) {
        step.kind = StepKind::Fault;
        let task = self.task(step.tid, false);
        step.mm = Some(task.mm);
        let Some(end) = pages
            .checked_mul(PAGE_SIZE)
            .and_then(|len| addr.checked_add(len))
            .filter(|&end| end <= self.kernel.task_size)
        else {
            return step.skipped = Some(Skip::Nonsense("fault past the user half"));
        };
        let kernel = self.kernel;
        let files = &self.files;
        let Some(entry) = self.mms.get_mut(&task.mm) else {
            return;
        };
        let (write, exec) = match access {
            Access::Read => (Some(false), false),
            Access::Write => (Some(true), false),
            Access::Execute => (Some(false), true),
            Access::Unknown => (None, false),
        };
        let faulted = entry.space.fault(
            addr..end,
            write,
            exec,
            &kernel,
            |id| files.get(&id).and_then(|f| f.size),
            &mut self.next_anon_vma,
        );
        self.summary.faults_refused += faulted.refused;
        let mut runs: Vec<Range<u64>> = Vec::new();
        for run in faulted.new {
            match runs.last_mut() {
                Some(last) if last.end == run.start => last.end = run.end,
                _ => runs.push(run),
            }
        }
        if !runs.is_empty() {
            step.operations
                .push(Operation::Populate { mm: task.mm, runs });
        }
    }

    /// A kernel VMA report: during an `execve` it is a mapping the exec
    /// made, otherwise a check of the model.
    fn vma_report(&mut self, step: &mut Step, report: &VmaReport) {
        step.kind = StepKind::Vma;
        let task = self.task(step.tid, false);
        step.mm = Some(task.mm);
        let Some(end) = report.start.checked_add(report.len).filter(|&e| {
            e <= self.kernel.task_size
                && report.start % PAGE_SIZE == 0
                && e % PAGE_SIZE == 0
                && e > report.start
        }) else {
            return step.skipped = Some(Skip::Nonsense("VMA report outside the user half"));
        };
        let vma = self.reported_vma(report, end);
        if task.exec_window {
            self.summary.vmas_installed += 1;
            let stack = vma.flags.has(VmFlags::GROWSDOWN);
            let range = vma.start..vma.end;
            let prot = vma.flags.prot();
            let entry = self.mms.entry(task.mm).or_insert_with(|| Mm {
                space: AddressSpace::default(),
                users: 1,
                reported: true,
            });
            entry.reported = true;
            entry.space.install_reported(vma);
            step.operations.push(Operation::Map {
                mm: task.mm,
                range: range.clone(),
                prot,
            });
            if stack {
                // execve wrote the arguments into the stack's top page
                // with get_user_pages, which records no fault.
                let top = range.end - PAGE_SIZE;
                let files = &self.files;
                if let Some(entry) = self.mms.get_mut(&task.mm) {
                    let op = entry.space.populate(
                        task.mm,
                        top..range.end,
                        |id| files.get(&id).and_then(|f| f.size),
                        &mut self.next_anon_vma,
                    );
                    step.operations.extend(op);
                }
            }
            return;
        }
        self.summary.vmas_checked += 1;
        let space = self.space(task.mm);
        let matches = space.vma_at(vma.start).is_some_and(|m| {
            m.start == vma.start
                && m.end == vma.end
                && m.flags.prot() == vma.flags.prot()
                && m.flags.has(VmFlags::SHARED) == vma.flags.has(VmFlags::SHARED)
        });
        if !matches {
            let model = space.vma_at(vma.start).map_or("nothing".to_owned(), |m| {
                format!("{:x}-{:x} prot {:x}", m.start, m.end, m.flags.prot())
            });
            step.disagreement = Some(Disagreement {
                what: "kernel reported a VMA the model has otherwise",
                detail: format!(
                    "kernel {:x}-{:x} prot {:x}, model {model}",
                    vma.start,
                    vma.end,
                    vma.flags.prot()
                ),
            });
            self.space(task.mm).resync(vma);
        }
    }

    /// The VMA a report describes, with the flags Linux gives such a
    /// mapping.
    fn reported_vma(&mut self, report: &VmaReport, end: u64) -> Vma {
        let mut flags = VmFlags::from_prot(report.prot)
            | VmFlags::MAYREAD
            | VmFlags::MAYWRITE
            | VmFlags::MAYEXEC;
        if report.shared {
            flags |= VmFlags::SHARED | VmFlags::MAYSHARE;
        }
        let pgoff = report.offset / PAGE_SIZE;
        let backing = match &report.backing {
            Backing::Anonymous => VmaBacking::Anonymous,
            Backing::File(id) => VmaBacking::File(*id),
            Backing::Named(name) if name == "[stack]" => {
                flags |= VmFlags::GROWSDOWN;
                VmaBacking::Anonymous
            }
            Backing::Named(name) if name == "[heap]" => VmaBacking::Anonymous,
            Backing::Named(name) => {
                // Special mappings (vdso, vvar): VM_DONTEXPAND; the vvar
                // pages are raw PFNs.
                flags |= VmFlags::DONTEXPAND;
                if name.starts_with("[vvar") {
                    flags |= VmFlags::PFNMAP | VmFlags::IO;
                }
                VmaBacking::Special(name.clone())
            }
        };
        if backing == VmaBacking::Anonymous && report.shared {
            self.next_shmem += 1;
            return Vma {
                start: report.start,
                end,
                flags: VmFlags(flags),
                backing: VmaBacking::Shmem(self.next_shmem),
                pgoff,
                anon_vma: None,
                fork_child: false,
            };
        }
        if flags & (VmFlags::SHARED | VmFlags::WRITE) == VmFlags::WRITE {
            flags |= VmFlags::ACCOUNT;
        }
        Vma {
            start: report.start,
            end,
            flags: VmFlags(flags),
            backing,
            pgoff,
            anon_vma: None,
            fork_child: false,
        }
    }
}

fn page_down_start(addr: u64) -> u64 {
    addr & !(PAGE_SIZE - 1)
}
