//! What injected interrupts are charged: the batched work an interrupt
//! drains is the interrupted task's, the handler's own work is reported
//! apart, so lazy/eager ratios barely depend on interrupts (only through
//! the batches they cut short, as on real hardware).

use lazymmu_sim::choice::Rates;
use lazymmu_sim::run::run;
use lazymmu_sim::scenario::{BackendKind, ModeKind, RunConfig, WorkloadKind};

fn ratio(backend: BackendKind, workload: WorkloadKind, interrupts: u64) -> (f64, u64, u64) {
    let mut cfg = RunConfig::new(backend, workload, ModeKind::Eager);
    cfg.pages = 1024;
    cfg.rates = Some(Rates {
        interrupt: interrupts,
        preempt: 0,
        migrate: 0,
        remote_flush: 0,
        run_other: 0,
    });
    let eager = run(&cfg);
    cfg.mode = ModeKind::Lazy;
    let lazy = run(&cfg);
    assert_eq!(
        eager.violation_count + lazy.violation_count,
        0,
        "{backend} {workload}"
    );
    (
        lazy.cycles as f64 / eager.cycles as f64,
        eager.interrupts + lazy.interrupts,
        eager.disturbance_cycles + lazy.disturbance_cycles,
    )
}

#[test]
fn lazy_eager_ratios_do_not_depend_on_injected_interrupts() {
    for &backend in BackendKind::ALL {
        for &workload in WorkloadKind::ALL {
            let (quiet, none, _) = ratio(backend, workload, 0);
            assert_eq!(none, 0);
            // At the rate `compare` injects them.
            let rate = Rates::default().interrupt;
            let (busy, interrupts, handler_cycles) = ratio(backend, workload, rate);
            assert!(
                interrupts > 4,
                "{backend} {workload}: {interrupts} interrupts"
            );
            assert!(
                handler_cycles > 0,
                "{backend} {workload}: the handlers' work is reported"
            );
            let change = (busy - quiet).abs() / quiet;
            assert!(
                change < 0.05,
                "{backend} {workload}: lazy/eager {quiet:.4} without interrupts, {busy:.4} with"
            );
        }
    }
}
