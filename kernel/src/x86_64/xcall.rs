//! Cross-calls: run a function on other CPUs and wait for all of them
//! (Linux's `smp_call_function_many(mask, func, info, wait = 1)`,
//! kernel/smp.c), delivered by IPI on [`apic::CALL_FUNCTION_VECTOR`]. TLB
//! shootdowns are cross-calls, as on Linux since `native_flush_tlb_multi`
//! (arch/x86/mm/tlb.c) sends `flush_tlb_func` through
//! `on_each_cpu_cond_mask`.
//!
//! Each CPU has one outgoing request (a function and the mask of CPUs that
//! have not run it yet) and an incoming mask of the CPUs whose request
//! waits for it. A sender holds preemption off from publishing its request
//! until every target has acknowledged, and never sends from interrupt
//! context, so one request per CPU is enough.
//!
//! Every CPU that waits — for acknowledgements, for a task to leave another
//! CPU, at a test barrier — runs the requests addressed to it meanwhile
//! ([`poll`]). That is what lets two CPUs shoot each other down with
//! interrupts masked (Linux warns about that case instead), and it keeps a
//! wait from ever depending on the other CPU's interrupt flag.
//!
//! The wait is bounded: a CPU that has not answered after
//! [`ACK_TIMEOUT_MS`] stops the machine with a message naming it. Nothing
//! here assumes the other vCPUs run at any particular speed; the bound is
//! only there so that a lost IPI fails clearly instead of hanging until the
//! host's timeout.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU64, Ordering};

use lazymmu::mm::CpuMask;

use crate::percpu::{self, PerCpuCounter, MAX_CPUS};
use crate::{apic, cpu};

/// How long a sender waits for every target before it gives up (10 s: two
/// orders of magnitude above the slowest acknowledgement seen with four
/// vCPUs on two loaded host cores).
pub const ACK_TIMEOUT_MS: u64 = 10_000;

type Func = *const (dyn Fn(usize) + Sync);

struct Request {
    /// The function, valid while `pending` is not zero.
    func: UnsafeCell<Option<Func>>,
    /// CPUs that have not run it yet.
    pending: AtomicU64,
}

// SAFETY: `func` is written by the owning CPU only while `pending` is zero
// (no target reads it), and published to targets by the Release
// `fetch_or` on their incoming masks; targets read it after their Acquire
// `swap` and before they clear their `pending` bit.
unsafe impl Sync for Request {}

static REQUESTS: [Request; MAX_CPUS] = [const {
    Request {
        func: UnsafeCell::new(None),
        pending: AtomicU64::new(0),
    }
}; MAX_CPUS];

/// Per target CPU: the senders whose request it has to run.
static INCOMING: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// IPIs sent for cross-calls, by sending CPU.
pub static IPIS_SENT: PerCpuCounter = PerCpuCounter::new();
/// Requests run on behalf of another CPU, by running CPU.
pub static CALLS_RUN: PerCpuCounter = PerCpuCounter::new();

/// Runs `func(cpu)` on every online CPU of `targets` other than this one
/// and waits until all have. `local` is run here meanwhile, after the IPIs
/// are out and before the wait (Linux's `on_each_cpu_mask` order).
///
/// # Panics
/// From interrupt context (the interrupted task may own this CPU's
/// request), and when a target does not answer within
/// [`ACK_TIMEOUT_MS`].
pub fn call_many(targets: u64, func: &(dyn Fn(usize) + Sync), local: impl FnOnce()) {
    assert!(
        percpu::irq_depth() == 0,
        "cross-call with wait from interrupt context"
    );
    percpu::preempt_disable();
    let me = percpu::cpu_index();
    let targets = targets & !(1 << me) & percpu::online_mask();
    let request = &REQUESTS[me];
    if targets != 0 {
        // SAFETY: `pending` is zero (the previous request of this CPU was
        // fully acknowledged before its call returned, and preemption is
        // off), so no CPU reads `func`. The lifetime is erased because
        // the function outlives the wait below, which ends only when no
        // target will touch it again.
        unsafe {
            *request.func.get() = Some(core::mem::transmute::<
                *const (dyn Fn(usize) + Sync + '_),
                Func,
            >(func));
        }
        request.pending.store(targets, Ordering::Release);
        for target in CpuMask(targets).iter() {
            INCOMING[target].fetch_or(1 << me, Ordering::AcqRel);
            apic::send_ipi(
                percpu::cpu(target).apic_id.load(Ordering::Acquire),
                apic::CALL_FUNCTION_VECTOR,
            );
            IPIS_SENT.increment();
        }
    }
    local();
    if targets != 0 {
        wait_for(
            || request.pending.load(Ordering::Acquire) == 0,
            || {
                panic!(
                    "cross-call: CPUs {:#b} did not answer within {ACK_TIMEOUT_MS} ms",
                    request.pending.load(Ordering::Acquire)
                )
            },
        );
        // SAFETY: every target acknowledged; no one reads `func` now.
        unsafe { *request.func.get() = None };
    }
    percpu::preempt_enable();
}

/// Spins until `done()` holds, running the requests addressed to this CPU
/// meanwhile; calls `timed_out` (which must not return) after
/// [`ACK_TIMEOUT_MS`].
pub fn wait_for(done: impl Fn() -> bool, timed_out: impl FnOnce()) {
    let deadline = apic::deadline_ms(ACK_TIMEOUT_MS);
    let mut spins = 0u32;
    while !done() {
        poll();
        core::hint::spin_loop();
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(1024) && cpu::rdtsc() > deadline {
            timed_out();
            unreachable!("the timeout handler returned");
        }
    }
}

/// Runs the requests waiting for this CPU (the IPI handler, and every wait
/// loop). In task context it counts as interrupt context while it runs
/// them, as the handler would.
pub fn poll() {
    let me = percpu::cpu_index();
    if INCOMING[me].load(Ordering::Relaxed) == 0 {
        return;
    }
    let were_enabled = cpu::disable_interrupts();
    percpu::irq_enter();
    handle_pending();
    percpu::irq_exit();
    if were_enabled {
        cpu::enable_interrupts();
    }
}

/// Runs every request addressed to this CPU and acknowledges each. With
/// interrupts masked.
pub fn handle_pending() {
    let me = percpu::cpu_index();
    let senders = INCOMING[me].swap(0, Ordering::AcqRel);
    for sender in CpuMask(senders).iter() {
        let request = &REQUESTS[sender];
        // SAFETY: the sender published `func` before setting our bit, and
        // keeps it valid until we clear our `pending` bit below.
        let func = unsafe { (*request.func.get()).expect("a pending request has a function") };
        // SAFETY: as above: the function is alive until we acknowledge.
        unsafe { (*func)(me) };
        CALLS_RUN.increment();
        request.pending.fetch_and(!(1 << me), Ordering::Release);
    }
}

/// Sends the reschedule IPI to `cpu` (a task was queued there).
pub fn kick(cpu: usize) {
    apic::send_ipi(
        percpu::cpu(cpu).apic_id.load(Ordering::Acquire),
        apic::RESCHEDULE_VECTOR,
    );
}
