//! The MM neighbours in `lazymmu compare`: `--workload
//! ctxswitch|ctxswitch-bench|vmalloc-grow|pgmap` with `--policy`, run on the simulator's
//! neighbour models, printed as their own table and added to the JSON rows
//! with a `policy` field.

use std::io::Write;

use lazymmu_sim::cost::Cost;
use lazymmu_sim::machine::topology::parse_machine;
use lazymmu_sim::neighbours::{
    format_table, run_named, run_switch_benchmark, NeighbourRow, NeighbourWorkload,
};

use crate::compare::{CompareArgs, UsageError};

/// Splits `--workload` values into the neighbour workloads and the rest
/// (which keeps `all`; `all` also selects every neighbour workload).
pub fn split(workloads: &[String]) -> (Vec<NeighbourWorkload>, Vec<String>) {
    let mut neighbours = Vec::new();
    let mut rest = Vec::new();
    for name in workloads {
        match NeighbourWorkload::from_name(name) {
            Some(w) if !neighbours.contains(&w) => neighbours.push(w),
            Some(_) => {}
            None => rest.push(name.clone()),
        }
    }
    if rest.iter().any(|w| w == "all") {
        neighbours = NeighbourWorkload::ALL.to_vec();
    }
    (neighbours, rest)
}

/// Runs the selected neighbour workloads under the selected policies, with
/// the cost overrides `costs` (the one cost table's).
///
/// # Errors
/// [`UsageError`] for a policy no selected workload knows, a bad size or a
/// bad `--topology`.
pub fn run(
    args: &CompareArgs,
    workloads: &[NeighbourWorkload],
    costs: &[(Cost, u64)],
) -> Result<Vec<NeighbourRow>, UsageError> {
    let all = args.policy.iter().any(|p| p == "all");
    for policy in args.policy.iter().filter(|p| *p != "all") {
        let known = workloads.iter().any(|w| {
            w.policies().contains(&policy.as_str())
                || (*w == NeighbourWorkload::Pgmap && policy == "percpu-preemptible")
        });
        if !known {
            let names: Vec<String> = workloads
                .iter()
                .map(|w| format!("{}: {}", w.name(), w.policies().join("|")))
                .collect();
            return Err(UsageError(format!(
                "unknown policy `{policy}` (expected {})",
                if names.is_empty() {
                    "a neighbour workload: ctxswitch, vmalloc-grow or pgmap".to_string()
                } else {
                    names.join("; ")
                }
            )));
        }
    }
    let machine = match &args.topology {
        Some(text) => Some(parse_machine(text).map_err(|e| UsageError(format!("--topology {e}")))?),
        None => None,
    };
    let mut rows = Vec::new();
    for &workload in workloads {
        let policies: Vec<&str> = if all {
            workload.policies().to_vec()
        } else {
            args.policy
                .iter()
                .map(String::as_str)
                .filter(|p| {
                    workload.policies().contains(p)
                        || (workload == NeighbourWorkload::Pgmap && *p == "percpu-preemptible")
                })
                .collect()
        };
        let sizes: Vec<usize> = match workload {
            NeighbourWorkload::VmallocGrow => args.processes.clone(),
            _ => vec![args.cpus as usize],
        };
        for size in sizes {
            for policy in &policies {
                let row = match machine {
                    Some((topology, platform)) if workload == NeighbourWorkload::CtxswitchBench => {
                        run_switch_benchmark(policy, topology, platform, args.seed, costs)
                    }
                    _ => run_named(workload, policy, size, args.seed, costs),
                };
                rows.push(row.map_err(UsageError)?);
            }
        }
    }
    Ok(rows)
}

/// The rows as JSON rows of `lazymmu compare`: the usual fields (the
/// neighbours run on the x86 cost model, with the library's default
/// lazy-mode design) plus `policy`, `cpus` and `processes`.
pub fn json_rows(rows: &[NeighbourRow]) -> Vec<serde_json::Value> {
    rows.iter()
        .map(|row| {
            serde_json::json!({
                "backend": "x86",
                "workload": row.workload,
                "mode": "lazy",
                "design": "counters",
                "policy": row.policy,
                "cpus": row.cpus,
                "processes": row.processes,
                "counts": row.counts,
                "cycles": row.cycles,
                "violations": row.violations,
            })
        })
        .collect()
}

/// Prints the neighbours' table and their first violations.
///
/// # Errors
/// I/O errors.
pub fn write(
    out: &mut impl Write,
    rows: &[NeighbourRow],
    seed: u64,
    topology: Option<&str>,
) -> std::io::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "\nMM neighbours: policies compared (`vs first` is cycles relative to the first policy at the same size)"
    )?;
    for workload in NeighbourWorkload::ALL {
        let group: Vec<NeighbourRow> = rows
            .iter()
            .filter(|r| r.workload == workload.name())
            .cloned()
            .collect();
        if !group.is_empty() {
            write!(out, "\n{}", format_table(&group))?;
        }
    }
    for row in rows.iter().filter(|r| r.violations > 0) {
        let size = if row.workload == "vmalloc-grow" {
            format!("--processes {}", row.processes)
        } else if let (Some(topology), "ctxswitch-bench") = (topology, row.workload) {
            format!("--topology {topology}")
        } else {
            format!("--cpus {}", row.cpus)
        };
        writeln!(
            out,
            "\n{} {}: {} violation(s); reproduce with: lazymmu compare --workload {} --policy {} {size} --seed {seed}",
            row.workload, row.policy, row.violations, row.workload, row.policy
        )?;
        for v in &row.first_violations {
            writeln!(out, "  {v}")?;
        }
    }
    Ok(())
}
