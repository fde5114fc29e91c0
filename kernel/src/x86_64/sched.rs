//! Kernel tasks and a preemptive scheduler: a run queue per CPU, a time
//! slice of one tick, preemption on the way out of any interrupt that
//! arrived in preemptible task context, and migration between CPUs (on
//! request, or at random on a tick when a test turns that on).
//!
//! Each task carries what the lazy MMU mode and its neighbours keep per
//! task: the counter design's two bytes ([`LazyState`]), the saved
//! IA32_PKRS values (the key register while switched out, and the value a
//! section found), and its `mm`/`active_mm` ([`TaskMm`]). The context
//! switch runs their hooks in Linux's order (kernel/sched/core.c,
//! `context_switch()`): `arch_start_context_switch(prev)`, then the
//! address-space switch (`enter_lazy_tlb`/`switch_mm_irqs_off` and the lazy
//! reference), `switch_to`, and in the task that resumes,
//! `finish_task_switch()` → `arch_end_context_switch(next)`.
//!
//! A task that is put on another CPU's run queue while its registers are
//! still being saved here is not run there until it is off this CPU
//! (Linux's `p->on_cpu`, waited for in `try_to_wake_up`).

use core::arch::global_asm;
use core::cell::UnsafeCell;
use core::sync::atomic::{
    AtomicBool, AtomicU16, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};

use lazymmu::mm::active_mm::TaskMm;
use lazymmu::mm::CpuMask;
use lazymmu::mode::LazyState;

use crate::percpu::{self, MAX_CPUS};
use crate::sync::SpinLock;
use crate::{cpu, mm, smp_backend, xcall};

/// The most tasks alive at once (idle tasks included).
pub const MAX_TASKS: usize = 48;
/// Bytes of stack per task.
const STACK_BYTES: usize = 64 * 1024;

#[repr(C, align(4096))]
struct Stack([u8; STACK_BYTES]);

static mut STACKS: [Stack; MAX_TASKS] = [const { Stack([0; STACK_BYTES]) }; MAX_TASKS];

const FREE: u8 = 0;
const RESERVED: u8 = 1;
const RUNNABLE: u8 = 2;
const RUNNING: u8 = 3;
const EXITED: u8 = 4;
const DEAD: u8 = 5;

/// "None" in the key-register slots.
const NO_KEY: u64 = u64::MAX;
/// "None" in `migrate_to`.
const NO_CPU: usize = usize::MAX;

/// A kernel task.
pub struct Task {
    index: usize,
    /// Saved stack pointer while switched out; only the switch touches it.
    rsp: UnsafeCell<u64>,
    state: AtomicU8,
    /// Set while a CPU runs the task or is still saving its registers.
    on_cpu: AtomicBool,
    /// The CPU it last ran on.
    cpu: AtomicUsize,
    /// CPUs it may run on.
    affinity: AtomicU64,
    /// A CPU the task asked to move to at its next switch.
    migrate_to: AtomicUsize,
    entry: AtomicUsize,
    arg: AtomicUsize,
    name: UnsafeCell<&'static str>,
    /// `enable_count | pause_count << 8`.
    lazy: AtomicU16,
    key_live: AtomicU64,
    key_section: AtomicU64,
    /// The task unlinked page tables since its last flush of a user space
    /// (Linux's `mmu_gather.freed_tables`).
    freed_tables: AtomicBool,
    /// Forced preemption points still to take right after a lazy-state
    /// store (the test of the Linux 7.0 ordering).
    forced_preemptions: AtomicU32,
    /// Forced preemption points reached with preemption disabled, and so
    /// not taken.
    pub forced_skipped: AtomicU32,
    /// `mm` and `active_mm`, one per lazy-TLB world ([`mm::WORLDS`]).
    pub mm: [TaskMm; mm::WORLDS],
    /// Times it was switched in.
    pub switches: AtomicU64,
    /// Times it was switched in on another CPU than the one it last ran on.
    pub migrations: AtomicU64,
    /// Backend bugs this task's test provokes on purpose (a bit per
    /// `BackendBug`, [`smp_backend::bug_bit`]).
    pub expected_bugs: AtomicU32,
    /// Expected backend bugs met, by [`smp_backend::bug_bit`] position.
    pub bugs_met: [AtomicU32; 4],
    /// Sleeps attempted in atomic context (preemption off).
    pub atomic_sleeps: AtomicU32,
}

// SAFETY: `rsp` and `name` are written only while no other CPU can use the
// task (before it is published to a run queue, or by the CPU switching it
// out, which the `on_cpu` handshake orders before any CPU switches it in);
// everything else is atomic.
unsafe impl Sync for Task {}

impl Task {
    const fn new(index: usize) -> Self {
        Task {
            index,
            rsp: UnsafeCell::new(0),
            state: AtomicU8::new(FREE),
            on_cpu: AtomicBool::new(false),
            cpu: AtomicUsize::new(0),
            affinity: AtomicU64::new(0),
            migrate_to: AtomicUsize::new(NO_CPU),
            entry: AtomicUsize::new(0),
            arg: AtomicUsize::new(0),
            name: UnsafeCell::new(""),
            lazy: AtomicU16::new(0),
            key_live: AtomicU64::new(NO_KEY),
            key_section: AtomicU64::new(NO_KEY),
            freed_tables: AtomicBool::new(false),
            forced_preemptions: AtomicU32::new(0),
            forced_skipped: AtomicU32::new(0),
            mm: [const { TaskMm::kernel_thread() }; mm::WORLDS],
            switches: AtomicU64::new(0),
            migrations: AtomicU64::new(0),
            expected_bugs: AtomicU32::new(0),
            bugs_met: [const { AtomicU32::new(0) }; 4],
            atomic_sleeps: AtomicU32::new(0),
        }
    }

    /// The task's name.
    pub fn name(&self) -> &'static str {
        // SAFETY: written before the task is published, never after.
        unsafe { *self.name.get() }
    }

    /// The CPU it last ran on.
    pub fn last_cpu(&self) -> usize {
        self.cpu.load(Ordering::Acquire)
    }

    /// The task's lazy MMU state.
    pub fn lazy_state(&self) -> LazyState {
        let raw = self.lazy.load(Ordering::Relaxed);
        LazyState {
            enable_count: raw as u8,
            pause_count: (raw >> 8) as u8,
        }
    }

    /// Stores the task's lazy MMU state; then takes a forced preemption
    /// point if the task has any left (see [`force_preemptions`]).
    pub fn set_lazy_state(&self, state: LazyState) {
        let raw = u16::from(state.enable_count) | (u16::from(state.pause_count) << 8);
        self.lazy.store(raw, Ordering::Relaxed);
        if self.forced_preemptions.load(Ordering::Relaxed) > 0 {
            forced_preemption_point(self);
        }
    }

    /// A saved key-register value (`live`: while switched out; else the
    /// value the current section found).
    pub fn key(&self, live: bool) -> Option<u64> {
        let slot = if live {
            &self.key_live
        } else {
            &self.key_section
        };
        let value = slot.load(Ordering::Relaxed);
        (value != NO_KEY).then_some(value)
    }

    /// Stores a saved key-register value.
    pub fn set_key(&self, live: bool, value: u64) {
        let slot = if live {
            &self.key_live
        } else {
            &self.key_section
        };
        slot.store(value, Ordering::Relaxed);
    }

    /// Notes that the task unlinked page tables.
    pub fn note_freed_tables(&self) {
        self.freed_tables.store(true, Ordering::Relaxed);
    }

    /// Whether the task unlinked page tables since it last asked; clears
    /// the note.
    pub fn take_freed_tables(&self) -> bool {
        self.freed_tables.swap(false, Ordering::Relaxed)
    }

    /// Whether the task has exited and left its CPU for the last time.
    pub fn is_dead(&self) -> bool {
        self.state.load(Ordering::Acquire) == DEAD && !self.on_cpu.load(Ordering::Acquire)
    }

    fn is_idle(&self) -> bool {
        (0..MAX_CPUS).any(|cpu| IDLE[cpu].load(Ordering::Relaxed) == self.index + 1)
    }

    fn stack_top(&self) -> u64 {
        // SAFETY: only the address is taken.
        let stack = unsafe { core::ptr::addr_of!(STACKS[self.index]) };
        stack as u64 + STACK_BYTES as u64
    }
}

static TASKS: [Task; MAX_TASKS] = {
    let mut tasks = [const { Task::new(0) }; MAX_TASKS];
    let mut i = 0;
    while i < MAX_TASKS {
        tasks[i] = Task::new(i);
        i += 1;
    }
    tasks
};

/// Per CPU: 1 + the slot of its idle task (0: none yet).
static IDLE: [AtomicUsize; MAX_CPUS] = [const { AtomicUsize::new(0) }; MAX_CPUS];

struct RunQueue {
    slots: [u8; MAX_TASKS],
    head: usize,
    len: usize,
}

impl RunQueue {
    const fn new() -> Self {
        RunQueue {
            slots: [0; MAX_TASKS],
            head: 0,
            len: 0,
        }
    }

    fn push(&mut self, task: usize) {
        assert!(self.len < MAX_TASKS, "run queue overflow");
        self.slots[(self.head + self.len) % MAX_TASKS] = task as u8;
        self.len += 1;
    }

    fn pop(&mut self) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let task = self.slots[self.head] as usize;
        self.head = (self.head + 1) % MAX_TASKS;
        self.len -= 1;
        Some(task)
    }
}

static RUN_QUEUES: [SpinLock<RunQueue>; MAX_CPUS] =
    [const { SpinLock::new(RunQueue::new()) }; MAX_CPUS];

/// Per-mille chance, per tick, that the running task is moved to another
/// CPU (0: never).
static MIGRATE_PER_MILLE: AtomicU32 = AtomicU32::new(0);
/// Per-CPU xorshift state for those draws.
static RANDOM: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// Context switches, by CPU.
pub static SWITCHES: percpu::PerCpuCounter = percpu::PerCpuCounter::new();
/// Attempts to schedule with preemption disabled ("scheduling while
/// atomic"), refused.
pub static ATOMIC_SCHEDULES: AtomicU64 = AtomicU64::new(0);

global_asm!(
    r#"
    .section .text
    .global switch_context
switch_context:
    push %rbp
    push %rbx
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, (%rdi)
    mov %rsi, %rsp
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %rbx
    pop %rbp
    mov %rdx, %rax
    ret

    .global task_trampoline
task_trampoline:
    mov %rax, %rdi
    call task_start
    ud2
"#,
    options(att_syntax)
);

extern "C" {
    /// Saves the callee-saved registers on the current stack, stores the
    /// stack pointer at `save`, switches to `load` and returns there,
    /// handing back `prev` (the task that switched away) to the code that
    /// resumes.
    fn switch_context(save: *mut u64, load: u64, prev: u64) -> u64;
    static task_trampoline: u8;
}

/// The running task.
pub fn current() -> &'static Task {
    let raw = percpu::current_raw();
    assert!(raw != 0, "no current task before the scheduler starts");
    // SAFETY: the per-CPU `current` only ever holds the address of a task
    // in `TASKS`.
    unsafe { &*(raw as *const Task) }
}

/// The running task, if the scheduler is set up on this CPU.
pub fn try_current() -> Option<&'static Task> {
    let raw = percpu::current_raw();
    // SAFETY: as in `current`.
    (raw != 0).then(|| unsafe { &*(raw as *const Task) })
}

fn set_current(task: &'static Task) {
    percpu::set_current_raw(task as *const Task as u64);
}

/// Makes the boot code the boot CPU's first task ("boot", pinned to CPU
/// 0). Right after the boot CPU's per-CPU record is set up.
pub fn init_boot() {
    let task = &TASKS[0];
    task.state.store(RUNNING, Ordering::Release);
    task.on_cpu.store(true, Ordering::Release);
    task.affinity.store(1, Ordering::Release);
    // SAFETY: the task is not published yet.
    unsafe { *task.name.get() = "boot" };
    set_current(task);
}

fn reserve(name: &'static str, affinity: u64) -> &'static Task {
    let task = TASKS
        .iter()
        .find(|t| {
            t.state
                .compare_exchange(FREE, RESERVED, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        })
        .expect("no free task slot");
    // SAFETY: RESERVED: no other CPU uses the task.
    unsafe { *task.name.get() = name };
    task.affinity.store(affinity, Ordering::Release);
    task.migrate_to.store(NO_CPU, Ordering::Relaxed);
    task.lazy.store(0, Ordering::Relaxed);
    task.key_live.store(NO_KEY, Ordering::Relaxed);
    task.key_section.store(NO_KEY, Ordering::Relaxed);
    task.freed_tables.store(false, Ordering::Relaxed);
    task.forced_preemptions.store(0, Ordering::Relaxed);
    task.forced_skipped.store(0, Ordering::Relaxed);
    task.switches.store(0, Ordering::Relaxed);
    task.migrations.store(0, Ordering::Relaxed);
    task.expected_bugs.store(0, Ordering::Relaxed);
    for met in &task.bugs_met {
        met.store(0, Ordering::Relaxed);
    }
    task.atomic_sleeps.store(0, Ordering::Relaxed);
    task
}

/// Lays out a new task's stack so that the first switch to it "returns"
/// into `task_trampoline` with the six callee-saved registers zero.
fn prepare_stack(task: &Task, entry: fn(usize), arg: usize) {
    task.entry.store(entry as usize, Ordering::Relaxed);
    task.arg.store(arg, Ordering::Relaxed);
    let top = task.stack_top();
    let frame = (top - 56) as *mut u64;
    // SAFETY: the stack belongs to this reserved task and nothing runs on
    // it; the seven words written lie below its top.
    unsafe {
        for i in 0..6 {
            frame.add(i).write(0);
        }
        frame
            .add(6)
            .write(core::ptr::addr_of!(task_trampoline) as u64);
        *task.rsp.get() = frame as u64;
    }
}

/// Creates CPU `cpu`'s idle task and returns its stack top. The boot CPU's
/// idle task starts like any task; an application processor arrives on the
/// stack and becomes the task ([`init_this_cpu`]).
pub fn create_idle(cpu: usize) -> u64 {
    let task = reserve("idle", 1 << cpu);
    if cpu == 0 {
        prepare_stack(task, |_| idle_loop(), 0);
    }
    task.state.store(RUNNABLE, Ordering::Release);
    IDLE[cpu].store(task.index + 1, Ordering::Release);
    task.stack_top()
}

fn idle_task(cpu: usize) -> &'static Task {
    let slot = IDLE[cpu].load(Ordering::Acquire);
    assert!(slot != 0, "CPU {cpu} has no idle task");
    &TASKS[slot - 1]
}

/// Makes an application processor's boot context its idle task.
pub fn init_this_cpu(cpu: usize) {
    let task = idle_task(cpu);
    task.state.store(RUNNING, Ordering::Release);
    task.on_cpu.store(true, Ordering::Release);
    task.cpu.store(cpu, Ordering::Release);
    RANDOM[cpu].store(0x9e37_79b9_7f4a_7c15 ^ (cpu as u64 + 1), Ordering::Relaxed);
    set_current(task);
}

/// Starts a kernel task running `entry(arg)` on one of the CPUs of
/// `affinity`.
pub fn spawn(name: &'static str, entry: fn(usize), arg: usize, affinity: u64) -> &'static Task {
    spawn_prepared(name, entry, arg, affinity, |_| {})
}

/// As [`spawn`], with `prepare` run on the task before it is queued (the
/// address-space layer gives it an `mm` there).
pub fn spawn_prepared(
    name: &'static str,
    entry: fn(usize),
    arg: usize,
    affinity: u64,
    prepare: impl FnOnce(&'static Task),
) -> &'static Task {
    let task = reserve(name, affinity);
    prepare_stack(task, entry, arg);
    prepare(task);
    task.state.store(RUNNABLE, Ordering::Release);
    let target = pick_cpu(task, percpu::cpu_index());
    enqueue(task, target);
    task
}

/// The CPU a task that leaves `from` should be queued on: where it asked
/// to go if allowed, else `from` if allowed, else the allowed online CPU
/// with the shortest queue.
fn pick_cpu(task: &Task, from: usize) -> usize {
    let allowed = task.affinity.load(Ordering::Acquire) & percpu::online_mask();
    let allowed = if allowed == 0 { 1 << from } else { allowed };
    let wanted = task.migrate_to.swap(NO_CPU, Ordering::AcqRel);
    if wanted != NO_CPU && allowed & (1 << wanted) != 0 {
        return wanted;
    }
    if allowed & (1 << from) != 0 {
        return from;
    }
    CpuMask(allowed)
        .iter()
        .min_by_key(|&cpu| RUN_QUEUES[cpu].lock().len)
        .unwrap_or(from)
}

fn enqueue(task: &'static Task, cpu: usize) {
    RUN_QUEUES[cpu].lock().push(task.index);
    if cpu == percpu::cpu_index() {
        percpu::this_cpu()
            .need_resched
            .store(true, Ordering::Release);
    } else {
        percpu::cpu(cpu).need_resched.store(true, Ordering::Release);
        xcall::kick(cpu);
    }
}

/// Runs the scheduler: the running task goes to the back of its run queue
/// (or to another CPU's, if it asked to move or may not stay), and the
/// next one runs.
pub fn schedule() {
    let were_enabled = cpu::disable_interrupts();
    if percpu::preempt_count() != 0 {
        // Linux's "BUG: scheduling while atomic": refused here.
        ATOMIC_SCHEDULES.fetch_add(1, Ordering::Relaxed);
        current().atomic_sleeps.fetch_add(1, Ordering::Relaxed);
        if were_enabled {
            cpu::enable_interrupts();
        }
        return;
    }
    let this = percpu::this_cpu();
    let me = this.index();
    this.need_resched.store(false, Ordering::Release);
    let prev = current();
    let prev_state = prev.state.load(Ordering::Acquire);
    let requeue = (prev_state == RUNNING && !prev.is_idle()).then(|| pick_cpu(prev, me));
    let next = {
        let mut queue = RUN_QUEUES[me].lock();
        match queue.pop() {
            Some(index) => &TASKS[index],
            None if requeue == Some(me) => prev,
            None => idle_task(me),
        }
    };
    if core::ptr::eq(next, prev) {
        if were_enabled {
            cpu::enable_interrupts();
        }
        return;
    }
    if let Some(target) = requeue {
        prev.state.store(RUNNABLE, Ordering::Release);
        enqueue(prev, target);
    } else if prev.is_idle() {
        prev.state.store(RUNNABLE, Ordering::Release);
    }
    context_switch(prev, next);
    if were_enabled {
        cpu::enable_interrupts();
    }
}

fn context_switch(prev: &'static Task, next: &'static Task) {
    let me = percpu::cpu_index();
    // The next task may still be saving its registers on the CPU it left.
    xcall::wait_for(
        || !next.on_cpu.load(Ordering::Acquire),
        || {
            panic!(
                "task {} stayed on CPU {} for {} ms",
                next.name(),
                next.last_cpu(),
                xcall::ACK_TIMEOUT_MS
            )
        },
    );
    next.on_cpu.store(true, Ordering::Release);
    next.state.store(RUNNING, Ordering::Release);
    if next.cpu.swap(me, Ordering::AcqRel) != me {
        next.migrations.fetch_add(1, Ordering::Relaxed);
    }
    next.switches.fetch_add(1, Ordering::Relaxed);
    SWITCHES.increment();
    // arch_start_context_switch(prev): the lazy MMU mode and the key
    // register leave with the task.
    smp_backend::switch_out(prev);
    // The address space: borrow or switch (and drop a borrow that ends).
    mm::context_switch(prev, next);
    set_current(next);
    // SAFETY: `prev` is the running task (its stack is the current one)
    // and `next` is off every CPU with its registers saved at `next.rsp`
    // (or a fresh frame from `prepare_stack`); interrupts are masked.
    let last =
        unsafe { switch_context(prev.rsp.get(), *next.rsp.get(), prev as *const Task as u64) };
    // SAFETY: `switch_context` hands back the address of the task that
    // switched to us.
    finish_switch(unsafe { &*(last as *const Task) });
}

/// `finish_task_switch()`, in the task that now runs: the task that left
/// is off this CPU, and the lazy MMU mode and key register come back with
/// this one (`arch_end_context_switch`).
fn finish_switch(last: &'static Task) {
    if last.state.load(Ordering::Acquire) == EXITED {
        last.state.store(DEAD, Ordering::Release);
    }
    last.on_cpu.store(false, Ordering::Release);
    smp_backend::switch_in(current());
}

#[no_mangle]
extern "C" fn task_start(last: u64) -> ! {
    // SAFETY: `switch_context` hands back the address of the task that
    // switched to us.
    finish_switch(unsafe { &*(last as *const Task) });
    cpu::enable_interrupts();
    let task = current();
    let entry = task.entry.load(Ordering::Relaxed);
    // SAFETY: `entry` was stored from a `fn(usize)` by `prepare_stack`.
    let entry: fn(usize) = unsafe { core::mem::transmute::<usize, fn(usize)>(entry) };
    entry(task.arg.load(Ordering::Relaxed));
    exit()
}

/// Ends the running task: a user task gives up its address space first
/// (`do_exit` → `exit_mm`).
pub fn exit() -> ! {
    let task = current();
    mm::exit_task(task);
    task.state.store(EXITED, Ordering::Release);
    loop {
        schedule();
    }
}

/// Waits for `task` to end and frees its slot.
pub fn join(task: &'static Task) {
    wait_until(|| task.is_dead());
    task.state.store(FREE, Ordering::Release);
}

/// Gives the CPU to the next task in the queue, if any.
pub fn yield_now() {
    this_cpu_request_resched();
    schedule();
}

fn this_cpu_request_resched() {
    percpu::this_cpu()
        .need_resched
        .store(true, Ordering::Release);
}

/// Moves the running task to `cpu` (returns once it runs there).
pub fn migrate_to(cpu: usize) {
    let task = current();
    task.migrate_to.store(cpu, Ordering::Release);
    schedule();
}

/// Waits until `done()` holds: yields while other tasks wait for this CPU,
/// halts until the next interrupt otherwise.
pub fn wait_until(done: impl Fn() -> bool) {
    loop {
        xcall::poll();
        if done() {
            return;
        }
        let idle = RUN_QUEUES[percpu::cpu_index()].lock().len == 0;
        if !idle {
            yield_now();
        } else if cpu::interrupts_enabled() {
            cpu::halt();
        } else {
            core::hint::spin_loop();
        }
    }
}

/// The timer tick on this CPU (interrupt context): round-robin when others
/// wait, and the random migrations a test asked for.
pub fn tick() {
    let this = percpu::this_cpu();
    let me = this.index();
    if RUN_QUEUES[me].lock().len > 0 {
        this.need_resched.store(true, Ordering::Release);
    }
    let rate = MIGRATE_PER_MILLE.load(Ordering::Relaxed);
    let Some(task) = try_current() else { return };
    if rate == 0 || task.is_idle() {
        return;
    }
    let others = task.affinity.load(Ordering::Acquire) & percpu::online_mask() & !(1 << me);
    if others == 0 || random(me) % 1000 >= u64::from(rate) {
        return;
    }
    let pick = (random(me) % u64::from(others.count_ones())) as usize;
    if let Some(target) = CpuMask(others).iter().nth(pick) {
        task.migrate_to.store(target, Ordering::Release);
        this.need_resched.store(true, Ordering::Release);
    }
}

fn random(cpu: usize) -> u64 {
    let mut x = RANDOM[cpu].load(Ordering::Relaxed);
    if x == 0 {
        x = 0x2545_f491_4f6c_dd1d;
    }
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    RANDOM[cpu].store(x, Ordering::Relaxed);
    x
}

/// Sets the per-mille chance per tick that a running task is migrated.
pub fn set_random_migration(per_mille: u32) {
    MIGRATE_PER_MILLE.store(per_mille, Ordering::Release);
}

/// Called by `preempt_enable` when the count reaches zero.
pub fn preemption_point() {
    if percpu::this_cpu().need_resched.load(Ordering::Acquire)
        && percpu::irq_depth() == 0
        && cpu::interrupts_enabled()
    {
        schedule();
    }
}

/// Called on the way out of an interrupt that arrived in preemptible task
/// context (interrupts still masked).
pub fn preempt_from_interrupt() {
    if percpu::this_cpu().need_resched.load(Ordering::Acquire) {
        schedule();
    }
}

/// Makes the running task take `count` forced preemption points, one
/// right after each of its next lazy-state stores: it is moved to the next
/// CPU there, as a timer tick could move it. A point reached with
/// preemption disabled (the counter design's guard) is not taken, and is
/// counted in [`Task::forced_skipped`].
pub fn force_preemptions(count: u32) {
    current().forced_preemptions.store(count, Ordering::Relaxed);
}

fn forced_preemption_point(task: &Task) {
    if percpu::irq_depth() != 0 {
        return;
    }
    task.forced_preemptions.fetch_sub(1, Ordering::Relaxed);
    if percpu::preempt_count() != 0 || !cpu::interrupts_enabled() {
        task.forced_skipped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let me = percpu::cpu_index();
    let online = percpu::online_mask();
    let next = CpuMask(online & !((2u64 << me) - 1))
        .iter()
        .next()
        .or_else(|| CpuMask(online & !(1 << me)).iter().next());
    if let Some(target) = next {
        task.migrate_to.store(target, Ordering::Release);
    }
    yield_now();
}

/// The idle loop: run whatever is queued, else halt until an interrupt.
pub fn idle_loop() -> ! {
    loop {
        cpu::disable_interrupts();
        let me = percpu::cpu_index();
        let work = percpu::this_cpu().need_resched.load(Ordering::Acquire)
            || RUN_QUEUES[me].lock().len > 0;
        if work {
            cpu::enable_interrupts();
            schedule();
        } else {
            cpu::enable_and_halt();
        }
    }
}

/// The tasks that are alive (not free), for the end-of-run checks.
pub fn tasks() -> impl Iterator<Item = &'static Task> {
    TASKS
        .iter()
        .filter(|t| t.state.load(Ordering::Acquire) != FREE)
}
