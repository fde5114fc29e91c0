//! Per-CPU data, reached through the GS base (Linux's `this_cpu_*` on
//! x86-64, arch/x86/include/asm/percpu.h).
//!
//! Each CPU's [`Cpu`] record is a static; `IA32_GS_BASE` points at it, so
//! `gs:[offset]` names a field of the executing CPU's record in a single
//! instruction. That matters for the fields a preemptible task updates —
//! the preemption and interrupt depths — because an instruction cannot be
//! split by a migration: `incl %gs:PREEMPT` lands on whichever CPU runs it,
//! as Linux's `__preempt_count_add` does.
//!
//! Everything else a CPU publishes to the others (its APIC id, whether it
//! is online, counters summed by the measurements) is an atomic in the
//! record, so reads from other CPUs are ordinary loads.

use core::arch::asm;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use crate::cpu;

/// The most CPUs the kernel brings up (`lazymmu boot --cpus` accepts 1 to
/// 8).
pub const MAX_CPUS: usize = 8;

/// IA32_GS_BASE (SDM Vol. 4, Table 2-2, MSR 0xC000_0101).
const MSR_GS_BASE: u32 = 0xc000_0101;

// Offsets of the fields reached through `gs`; `Cpu` is `repr(C)` and the
// assertions below keep these in step with its layout.
const OFFSET_SELF: usize = 0;
const OFFSET_INDEX: usize = 8;
const OFFSET_PREEMPT: usize = 16;
const OFFSET_IRQ: usize = 20;
const OFFSET_CURRENT: usize = 24;

/// One CPU's record.
#[repr(C, align(64))]
pub struct Cpu {
    /// The record's own address (`gs:0`), so that `this_cpu` is one load.
    this: UnsafeCell<u64>,
    /// The CPU's index (`gs:8`), 0 for the boot CPU.
    index: UnsafeCell<u64>,
    /// Preemption-disable depth (`gs:16`); only this CPU touches it, with
    /// single `gs`-relative instructions.
    preempt_count: UnsafeCell<u32>,
    /// Interrupt nesting depth (`gs:20`).
    irq_depth: UnsafeCell<u32>,
    /// The running task (`gs:24`), a `*const sched::Task`.
    current: UnsafeCell<u64>,
    /// The local APIC id.
    pub apic_id: AtomicU32,
    /// Set once the CPU runs its idle loop and takes interrupts.
    pub online: AtomicBool,
    /// The scheduler should run at the next preemption point.
    pub need_resched: AtomicBool,
    /// Physical address last loaded into CR3 on this CPU (written right
    /// after every `mov cr3`): what the hardware walks from.
    pub cr3: AtomicU64,
    /// The address space whose root that is.
    pub loaded_space: AtomicU32,
    /// Timer interrupts taken.
    pub ticks: AtomicU64,
}

const _: () = {
    assert!(core::mem::offset_of!(Cpu, this) == OFFSET_SELF);
    assert!(core::mem::offset_of!(Cpu, index) == OFFSET_INDEX);
    assert!(core::mem::offset_of!(Cpu, preempt_count) == OFFSET_PREEMPT);
    assert!(core::mem::offset_of!(Cpu, irq_depth) == OFFSET_IRQ);
    assert!(core::mem::offset_of!(Cpu, current) == OFFSET_CURRENT);
};

// SAFETY: the `UnsafeCell` fields are only read and written through `gs`
// by the CPU that owns the record (or, before `init`, by the boot code that
// fills it in once); every field other CPUs read is an atomic.
unsafe impl Sync for Cpu {}

impl Cpu {
    const fn new() -> Self {
        Cpu {
            this: UnsafeCell::new(0),
            index: UnsafeCell::new(0),
            preempt_count: UnsafeCell::new(0),
            irq_depth: UnsafeCell::new(0),
            current: UnsafeCell::new(0),
            apic_id: AtomicU32::new(0),
            online: AtomicBool::new(false),
            need_resched: AtomicBool::new(false),
            cr3: AtomicU64::new(0),
            loaded_space: AtomicU32::new(0),
            ticks: AtomicU64::new(0),
        }
    }

    /// The CPU's index.
    pub fn index(&self) -> usize {
        // SAFETY: written once by `init` before the record is published
        // (GS base), read-only afterwards.
        unsafe { *self.index.get() as usize }
    }
}

static CPUS: [Cpu; MAX_CPUS] = [const { Cpu::new() }; MAX_CPUS];

/// CPUs online (bit n = CPU n).
static ONLINE: AtomicU64 = AtomicU64::new(0);

/// Points GS at CPU `index`'s record. Runs first on every CPU, with
/// interrupts off.
///
/// # Panics
/// If `index >= MAX_CPUS`.
pub fn init(index: usize) {
    let cpu = &CPUS[index];
    // SAFETY: nothing reads this record through GS before the wrmsr below,
    // and only this CPU writes these two fields, once.
    unsafe {
        *cpu.this.get() = cpu as *const Cpu as u64;
        *cpu.index.get() = index as u64;
        cpu::wrmsr(MSR_GS_BASE, cpu as *const Cpu as u64);
    }
}

/// The record of CPU `index`.
pub fn cpu(index: usize) -> &'static Cpu {
    &CPUS[index]
}

/// The executing CPU's record. A preemptible caller may be on another CPU
/// by the time it uses the answer; only atomics are reachable through it.
#[inline]
pub fn this_cpu() -> &'static Cpu {
    let this: u64;
    // SAFETY: GS points at a `Cpu` in `CPUS` (set by `init` before any
    // caller runs); the load has no side effect.
    unsafe {
        asm!("mov {}, gs:[{off}]", out(reg) this, off = const OFFSET_SELF, options(nostack, readonly, preserves_flags))
    };
    // SAFETY: `this` is the address of a static `Cpu`.
    unsafe { &*(this as *const Cpu) }
}

/// The executing CPU's index (Linux's `raw_smp_processor_id()`): stable
/// only while preemption or interrupts are disabled.
#[inline]
pub fn cpu_index() -> usize {
    let index: u64;
    // SAFETY: as in `this_cpu`.
    unsafe {
        asm!("mov {}, gs:[{off}]", out(reg) index, off = const OFFSET_INDEX, options(nostack, readonly, preserves_flags))
    };
    index as usize
}

/// Disables preemption (nests): one `incl %gs:…`, so it counts on the CPU
/// that executes it even if the task was about to migrate.
#[inline]
pub fn preempt_disable() {
    // SAFETY: GS points at this CPU's record; the instruction is atomic with
    // respect to interrupts on this CPU, the only other writer. Not
    // `nomem`: it orders the caller's accesses around the critical section.
    unsafe { asm!("inc dword ptr gs:[{off}]", off = const OFFSET_PREEMPT, options(nostack)) };
}

/// Re-enables preemption; at zero, reschedules if this CPU was asked to
/// (Linux's `preempt_enable()` → `__preempt_schedule()`).
#[inline]
pub fn preempt_enable() {
    let zero: u8;
    // SAFETY: as in `preempt_disable`.
    unsafe {
        asm!("dec dword ptr gs:[{off}]", "setz {z}", off = const OFFSET_PREEMPT, z = out(reg_byte) zero, options(nostack))
    };
    if zero != 0 {
        crate::sched::preemption_point();
    }
}

/// The preemption-disable depth on this CPU.
#[inline]
pub fn preempt_count() -> u32 {
    let count: u32;
    // SAFETY: as in `this_cpu`.
    unsafe {
        asm!("mov {:e}, gs:[{off}]", out(reg) count, off = const OFFSET_PREEMPT, options(nostack, readonly, preserves_flags))
    };
    count
}

/// Enters interrupt context (the dispatcher, first thing).
#[inline]
pub fn irq_enter() {
    // SAFETY: as in `preempt_disable`.
    unsafe { asm!("inc dword ptr gs:[{off}]", off = const OFFSET_IRQ, options(nostack)) };
}

/// Leaves interrupt context.
#[inline]
pub fn irq_exit() {
    // SAFETY: as in `preempt_disable`.
    unsafe { asm!("dec dword ptr gs:[{off}]", off = const OFFSET_IRQ, options(nostack)) };
}

/// The interrupt nesting depth on this CPU.
#[inline]
pub fn irq_depth() -> u32 {
    let depth: u32;
    // SAFETY: as in `this_cpu`.
    unsafe {
        asm!("mov {:e}, gs:[{off}]", out(reg) depth, off = const OFFSET_IRQ, options(nostack, readonly, preserves_flags))
    };
    depth
}

/// The running task's address (0 before the scheduler starts). One load:
/// the answer is the caller's own task wherever it runs.
#[inline]
pub fn current_raw() -> u64 {
    let current: u64;
    // SAFETY: as in `this_cpu`.
    unsafe {
        asm!("mov {}, gs:[{off}]", out(reg) current, off = const OFFSET_CURRENT, options(nostack, readonly, preserves_flags))
    };
    current
}

/// Records the running task; the scheduler calls it with interrupts off.
#[inline]
pub fn set_current_raw(task: u64) {
    // SAFETY: as in `preempt_disable`; only the scheduler writes it.
    unsafe {
        asm!("mov gs:[{off}], {}", in(reg) task, off = const OFFSET_CURRENT, options(nostack, preserves_flags))
    };
}

/// Marks the executing CPU online.
pub fn set_online() {
    let cpu = this_cpu();
    cpu.online.store(true, Ordering::Release);
    ONLINE.fetch_or(1 << cpu.index(), Ordering::AcqRel);
}

/// The CPUs online (bit n = CPU n).
pub fn online_mask() -> u64 {
    ONLINE.load(Ordering::Acquire)
}

/// How many CPUs are online.
pub fn online_count() -> usize {
    online_mask().count_ones() as usize
}

/// Records a CR3 load on this CPU (call right after `mov cr3`, with
/// interrupts or preemption off).
pub fn record_cr3(root: u64, space: u32) {
    let cpu = this_cpu();
    cpu.cr3.store(root, Ordering::Release);
    cpu.loaded_space.store(space, Ordering::Release);
}

/// A counter with one slot per CPU: the executing CPU increments its own
/// slot, readers sum (Linux's `this_cpu_inc` on a per-CPU statistic).
pub struct PerCpuCounter([AtomicU64; MAX_CPUS]);

impl PerCpuCounter {
    /// All zero.
    pub const fn new() -> Self {
        Self([const { AtomicU64::new(0) }; MAX_CPUS])
    }

    /// Adds one on the executing CPU. Relaxed: a reader wants a count, not
    /// an ordering; a task that migrates between reading its CPU and adding
    /// still adds exactly once.
    #[inline]
    pub fn increment(&self) {
        self.add(1);
    }

    /// Adds `n` on the executing CPU.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0[cpu_index()].fetch_add(n, Ordering::Relaxed);
    }

    /// The count of CPU `cpu`.
    pub fn on(&self, cpu: usize) -> u64 {
        self.0[cpu].load(Ordering::Relaxed)
    }

    /// The count of the executing CPU.
    pub fn here(&self) -> u64 {
        self.on(cpu_index())
    }

    /// The sum over all CPUs.
    pub fn total(&self) -> u64 {
        self.0.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

impl core::fmt::Debug for PerCpuCounter {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|c| c.load(Ordering::Relaxed)))
            .finish()
    }
}
