//! The ping-pong benchmark on 2,048 CPUs finishes, clean, in bounded
//! memory: what a CPU costs is its own state, not a per-CPU array sized
//! for the largest machine. (One test in this file, so that the peak
//! resident size measured is this run's.)

use lazymmu::cpu::MAX_CPUS;
use lazymmu::mm::active_mm::LazyTlbPolicy;
use lazymmu_sim::cost::Platform;
use lazymmu_sim::machine::Topology;
use lazymmu_sim::neighbours::ctxswitch::{run, CtxSwitchConfig};

/// The process's peak resident size in KiB (Linux's `VmHWM`).
fn peak_resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmHWM line")
}

#[test]
fn two_thousand_and_forty_eight_cpus_run_in_bounded_memory() {
    let topology = Topology::new(16, 16, 8).unwrap();
    assert_eq!(topology.cpus(), MAX_CPUS);
    for policy in [LazyTlbPolicy::Shootdown, LazyTlbPolicy::Refcount] {
        let mut config = CtxSwitchConfig::ping_pong(policy, topology, Platform::X86);
        // Two rounds: two switches into idle and two out, on every CPU.
        config.steps = 4 * MAX_CPUS as u64;
        let row = run(&config);
        assert_eq!(row.violations, 0, "{policy:?}: {:#?}", row.first_violations);
        assert_eq!(row.cpus, MAX_CPUS);
        assert_eq!(row.counts["switches"], 4 * MAX_CPUS as u64);
        assert_eq!(row.counts["spaces_freed"], 1);
    }
    let peak = peak_resident_kib();
    eprintln!("peak resident size {peak} KiB");
    // About 16 KiB a CPU when this was written (the test binary
    // included): the machine's CPU, TLB and task state, a coroutine's
    // touched stack pages, the lazy-TLB state.
    assert!(
        peak < 96 * 1024,
        "{peak} KiB for {MAX_CPUS} CPUs: more than 48 KiB a CPU"
    );
}
