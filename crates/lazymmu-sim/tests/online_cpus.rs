//! Only the CPUs that run cost memory: the ping-pong benchmark with 4
//! threads on a 2,048-CPU machine brings 4 CPUs online and allocates
//! about what it does on a 4-CPU machine; each CPU that runs costs its
//! state. (One test in this file: the allocator's counters are the
//! process's.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use lazymmu::cpu::MAX_CPUS;
use lazymmu::mm::active_mm::LazyTlbPolicy;
use lazymmu_sim::cost::Platform;
use lazymmu_sim::machine::Topology;
use lazymmu_sim::neighbours::ctxswitch::{run, CtxSwitchConfig};

/// The system allocator, counting the bytes live and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to `System` with the caller's layout and
// pointer unchanged; the counters only observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is `System`'s.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Peak bytes allocated while the benchmark runs `threads` threads on
/// `topology`, beyond what was live before; and the CPUs that came online.
/// It runs on a thread of its own: the simulator keeps a run's memory for
/// the next run on the same thread, which would then allocate none.
fn peak_bytes(topology: Topology, threads: usize) -> (usize, u64) {
    std::thread::spawn(move || peak_bytes_here(topology, threads))
        .join()
        .expect("the benchmark's thread")
}

fn peak_bytes_here(topology: Topology, threads: usize) -> (usize, u64) {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let mut config = CtxSwitchConfig::ping_pong(LazyTlbPolicy::Refcount, topology, Platform::X86);
    config.threads = threads;
    config.steps = 8 * threads as u64;
    let row = run(&config);
    assert_eq!(row.violations, 0, "{:#?}", row.first_violations);
    assert_eq!(row.counts["switches"], config.steps);
    assert_eq!(row.counts["spaces_freed"], 1);
    (
        PEAK.load(Ordering::Relaxed) - before,
        row.counts["cpus_online"],
    )
}

#[test]
fn a_cpu_that_never_runs_costs_a_small_fraction_of_one_that_does() {
    let machine = Topology::new(16, 16, 8).unwrap();
    assert_eq!(machine.cpus(), MAX_CPUS);
    let (four, online) = peak_bytes(Topology::flat(4), 4);
    assert_eq!(online, 4);
    let (eight, online) = peak_bytes(Topology::flat(8), 8);
    assert_eq!(online, 8);
    let (four_of_many, online) = peak_bytes(machine, 4);
    assert_eq!(online, 4, "4 threads bring 4 of 2,048 CPUs online");
    let running = (eight - four) / 4;
    let possible = (four_of_many - four) / (MAX_CPUS - 4);
    eprintln!(
        "4 CPUs: {four} bytes; 8: {eight}; 4 running of {MAX_CPUS}: {four_of_many}; \
         {running} bytes a running CPU, {possible} a possible one"
    );
    // A CPU that runs holds its TLB, its lazy-TLB and key state, its
    // thread, its idle task and a coroutine; one that never runs only its
    // slot and its idle task's entry.
    assert!(
        possible * 8 < running,
        "{possible} bytes a possible CPU against {running} a running one"
    );
}
