use lazymmu_sim::run::run;
use lazymmu_sim::scenario::*;

#[test]
fn smoke_all() {
    let only = std::env::var("ONLY").ok();
    for &b in BackendKind::ALL {
        if only.as_deref().is_some_and(|o| o != b.name()) { continue; }
        for &w in WorkloadKind::ALL {
            for &m in ModeKind::ALL {
                let mut cfg = RunConfig::new(b, w, m);
                cfg.pages = 1024;
                let r = run(&cfg);
                println!("{b} {w} {m}: cycles {} upd {} viol {} {:?}", r.cycles, r.pte_updates, r.violation_count, r.counts);
                if let Some(v) = r.violations.first() {
                    println!("{v}");
                }
            }
        }
    }
}
