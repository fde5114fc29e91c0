//! Compares the MM neighbours' policies on the simulator and prints a
//! table (or JSON rows with a `policy` field).
//!
//! ```text
//! cargo run --release -p lazymmu-sim --example neighbours -- ctxswitch --sizes 4,16,64
//! cargo run --release -p lazymmu-sim --example neighbours -- vmalloc-grow --sizes 10,1000,10000
//! cargo run --release -p lazymmu-sim --example neighbours -- pgmap --policy task,percpu
//! ```
//!
//! Exit status 1 when an invariant was violated, 2 on bad usage.

use std::process::ExitCode;

use lazymmu_sim::neighbours::cost::NeighbourCosts;
use lazymmu_sim::neighbours::{default_sizes, format_table, run_named, NeighbourWorkload};

fn usage(message: &str) -> ExitCode {
    eprintln!("neighbours: {message}");
    eprintln!(
        "usage: neighbours ctxswitch|vmalloc-grow|pgmap [--policy P,..] [--sizes N,..] \
         [--seed N] [--cost NAME=CYCLES] [--json]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(workload) = args.next() else {
        return usage("missing workload");
    };
    let Some(workload) = NeighbourWorkload::from_name(&workload) else {
        return usage(&format!("unknown workload `{workload}`"));
    };
    let mut policies: Vec<String> = workload.policies().iter().map(|p| p.to_string()).collect();
    let mut sizes = default_sizes(workload).to_vec();
    let mut seed = 1;
    let mut json = false;
    let mut costs = NeighbourCosts::default();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        let parsed: Result<(), String> = match arg.as_str() {
            "--policy" => {
                value("--policy").map(|v| policies = v.split(',').map(str::to_string).collect())
            }
            "--sizes" => value("--sizes").and_then(|v| {
                sizes = v
                    .split(',')
                    .map(|s| s.parse().map_err(|_| format!("bad size `{s}`")))
                    .collect::<Result<_, _>>()?;
                Ok(())
            }),
            "--seed" => value("--seed").and_then(|v| {
                seed = v.parse().map_err(|_| format!("bad seed `{v}`"))?;
                Ok(())
            }),
            "--cost" => value("--cost").and_then(|v| {
                let (name, cycles) = v
                    .split_once('=')
                    .ok_or_else(|| format!("--cost wants NAME=CYCLES, not `{v}`"))?;
                let cycles = cycles
                    .parse()
                    .map_err(|_| format!("bad cycles `{cycles}`"))?;
                costs.set(name, cycles)
            }),
            "--json" => {
                json = true;
                Ok(())
            }
            other => Err(format!("unknown option `{other}`")),
        };
        if let Err(message) = parsed {
            return usage(&message);
        }
    }
    let mut rows = Vec::new();
    for &size in &sizes {
        for policy in &policies {
            match run_named(workload, policy, size, seed, &costs) {
                Ok(row) => rows.push(row),
                Err(message) => return usage(&message),
            }
        }
    }
    if json {
        println!("{}", serde_json_rows(&rows));
    } else {
        print!("{}", format_table(&rows));
        for row in rows.iter().filter(|r| r.violations > 0) {
            for v in &row.first_violations {
                eprintln!("{} {}: {v}", row.workload, row.policy);
            }
        }
    }
    if rows.iter().any(|r| r.violations > 0) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// The rows as one JSON document `{"rows": [...]}`.
fn serde_json_rows(rows: &[lazymmu_sim::neighbours::NeighbourRow]) -> String {
    serde_json::json!({ "rows": rows }).to_string()
}
