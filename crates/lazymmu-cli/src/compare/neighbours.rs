//! The MM neighbours in `lazymmu compare`: `--workload
//! ctxswitch|ctxswitch-bench|vmalloc-grow|pgmap` under `--policy`, run on
//! the simulator's neighbour models. On the screen each mechanism gets one
//! compact table of cycles relative to its first policy, and
//! `ctxswitch-bench` on a machine with published figures (`--topology
//! power8-e880`) its switch rates next to them; `--detail` adds every
//! row's cycles and counts; JSON rows say which policy ran on which
//! machine.

use std::io::Write;

use anyhow::Result;
use lazymmu_sim::cost::Platform;
use lazymmu_sim::machine::topology::{named_machine, parse_machine, POWER8_E880};
use lazymmu_sim::machine::Topology;
use lazymmu_sim::neighbours::ctxswitch::published_rates;
use lazymmu_sim::neighbours::lazy_tlb_name;
use lazymmu_sim::neighbours::{run_named, run_switch_benchmark, NeighbourRow, NeighbourWorkload};

use super::costs::Override;
use super::matrix::BROKEN;
use super::names::{self, PERCPU_PREEMPTIBLE};
use super::{Reproduce, ALL};
use crate::exit::usage;
use crate::text::{ratio, thousands, wrap, Table};

/// What the neighbour part of a comparison runs.
#[derive(Clone, Debug)]
pub struct Selection {
    /// The workloads, in table order.
    pub workloads: Vec<NeighbourWorkload>,
    /// The policies asked for, or `None` for every policy of each
    /// workload.
    pub policies: Option<Vec<String>>,
    /// The machine `ctxswitch-bench` runs on instead of `--cpus`
    /// (`--topology`): its name as given, its shape and its cost table.
    pub machine: Option<(String, Topology, Platform)>,
}

impl Selection {
    /// The neighbour workloads among `--workload`'s values (`all` selects
    /// every one) and the policies of `--policy`.
    ///
    /// # Errors
    /// A usage error when a policy is named that no selected workload
    /// has, or `topology` is not a machine.
    pub fn new(workloads: &[String], policies: &[String], topology: Option<&str>) -> Result<Self> {
        let machine = match topology {
            Some(text) => {
                let (shape, platform) =
                    parse_machine(text).map_err(|e| usage(format!("--topology {e}")))?;
                Some((text.trim().to_owned(), shape, platform))
            }
            None => None,
        };
        let all = workloads.iter().any(|w| w == ALL);
        let workloads: Vec<NeighbourWorkload> = NeighbourWorkload::ALL
            .into_iter()
            .filter(|w| all || workloads.iter().any(|n| n == w.name()))
            .collect();
        if policies.iter().any(|p| p == ALL) {
            return Ok(Self {
                workloads,
                policies: None,
                machine,
            });
        }
        for policy in policies {
            if !workloads.iter().any(|&w| accepts(w, policy)) {
                let selected = if workloads.is_empty() {
                    "--workload selects no neighbour workload".to_owned()
                } else {
                    let names: Vec<String> = workloads
                        .iter()
                        .map(|w| format!("{} takes {}", w.name(), policies_of(*w).join("|")))
                        .collect();
                    names.join("; ")
                };
                return Err(usage(format!(
                    "policy `{policy}` applies to none of the selected workloads: {selected} \
                     (--policy is for ctxswitch, ctxswitch-bench, vmalloc-grow and pgmap)"
                )));
            }
        }
        Ok(Self {
            workloads,
            policies: Some(policies.to_vec()),
            machine,
        })
    }

    /// The policies `workload` runs under.
    fn policies(&self, workload: NeighbourWorkload) -> Vec<&str> {
        match &self.policies {
            None => workload.policies().to_vec(),
            Some(asked) => asked
                .iter()
                .map(String::as_str)
                .filter(|p| accepts(workload, p))
                .collect(),
        }
    }

    /// How many runs the selection makes.
    pub fn runs(&self, processes: &[usize]) -> usize {
        self.workloads
            .iter()
            .map(|&w| self.policies(w).len() * sizes(w, processes, 0).len())
            .sum()
    }
}

/// The policies `--policy` accepts for `workload`.
fn policies_of(workload: NeighbourWorkload) -> Vec<&'static str> {
    let mut names = workload.policies().to_vec();
    if workload == NeighbourWorkload::Pgmap {
        names.push(PERCPU_PREEMPTIBLE);
    }
    names
}

fn accepts(workload: NeighbourWorkload, policy: &str) -> bool {
    policies_of(workload).contains(&policy)
}

/// The sizes a workload runs at: process counts for vmalloc-grow, else
/// the CPU count.
fn sizes(workload: NeighbourWorkload, processes: &[usize], cpus: usize) -> Vec<usize> {
    match workload {
        NeighbourWorkload::VmallocGrow => processes.to_vec(),
        _ => vec![cpus],
    }
}

/// Runs the selection, calling `done` after each run.
///
/// # Errors
/// A usage error for a size the model refuses.
pub fn run(
    selection: &Selection,
    cpus: usize,
    processes: &[usize],
    seed: u64,
    overrides: &[Override],
    mut done: impl FnMut(),
) -> Result<Vec<NeighbourRow>> {
    let mut rows = Vec::new();
    for &workload in &selection.workloads {
        for size in sizes(workload, processes, cpus) {
            for policy in selection.policies(workload) {
                let row = match &selection.machine {
                    Some((name, topology, platform))
                        if workload == NeighbourWorkload::CtxswitchBench =>
                    {
                        run_switch_benchmark(policy, *topology, *platform, seed, overrides).map(
                            |mut row| {
                                row.machine = Some(name.clone());
                                row
                            },
                        )
                    }
                    _ => run_named(workload, policy, size, seed, overrides),
                };
                rows.push(row.map_err(usage)?);
                done();
            }
        }
    }
    Ok(rows)
}

/// The size of a row as the tables print it.
fn size_label(row: &NeighbourRow) -> String {
    if row.workload == NeighbourWorkload::VmallocGrow.name() {
        format!("{} processes", thousands(row.processes as u64))
    } else if let Some(machine) = &row.machine {
        format!("{machine}, {} CPUs", thousands(row.cpus as u64))
    } else {
        format!("{} CPUs", row.cpus)
    }
}

/// What makes rows comparable: the same workload at the same size on the
/// same machine.
fn same_run(a: &NeighbourRow, b: &NeighbourRow) -> bool {
    (a.workload, a.cpus, a.processes, &a.machine) == (b.workload, b.cpus, b.processes, &b.machine)
}

fn workload_of(row: &NeighbourRow) -> Option<NeighbourWorkload> {
    NeighbourWorkload::from_name(row.workload)
}

/// The compact tables: one per mechanism, a row per workload and size, a
/// column per policy, each cell the cycles relative to the row's first
/// policy.
///
/// # Errors
/// I/O errors.
pub fn write_summary(out: &mut impl Write, rows: &[NeighbourRow], width: usize) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "\nMM neighbours: modelled cycles relative to the first policy of each row"
    )?;
    let mut mechanisms: Vec<&'static str> = Vec::new();
    for row in rows {
        if let Some(w) = workload_of(row) {
            let mechanism = names::neighbour_mechanism(w);
            if !mechanisms.contains(&mechanism) {
                mechanisms.push(mechanism);
            }
        }
    }
    for mechanism in mechanisms {
        let group: Vec<&NeighbourRow> = rows
            .iter()
            .filter(|r| workload_of(r).map(names::neighbour_mechanism) == Some(mechanism))
            .collect();
        let mut policies: Vec<&str> = Vec::new();
        for row in &group {
            if !policies.contains(&row.policy) {
                policies.push(row.policy);
            }
        }
        let mut table = Table::new(
            std::iter::once(mechanism.to_owned()).chain(policies.iter().map(|p| p.to_string())),
            1,
        );
        let mut keys: Vec<&NeighbourRow> = Vec::new();
        for row in &group {
            if !keys.iter().any(|k| same_run(k, row)) {
                keys.push(row);
            }
        }
        for key in keys {
            let same: Vec<&&NeighbourRow> = group.iter().filter(|r| same_run(r, key)).collect();
            let base = same.first().map_or(0, |r| r.cycles);
            let label = format!("  {}, {}", key.workload, size_label(key));
            let cells = policies.iter().map(|p| {
                let Some(r) = same.iter().find(|r| r.policy == *p) else {
                    return String::new();
                };
                let value = if base > 0 {
                    ratio(r.cycles as f64 / base as f64)
                } else {
                    "-".to_owned()
                };
                if r.violations > 0 {
                    value + BROKEN
                } else {
                    value
                }
            });
            table.row(std::iter::once(label).chain(cells));
        }
        table.write(out, width, "")?;
    }
    Ok(())
}

/// Every row in full: cycles, relative cycles and every count.
///
/// # Errors
/// I/O errors.
pub fn write_detail(out: &mut impl Write, rows: &[NeighbourRow], width: usize) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    writeln!(out, "\nMM neighbours, every run:")?;
    for row in rows {
        let first = rows.iter().find(|r| same_run(r, row)).unwrap_or(row);
        let relative = if first.cycles > 0 {
            ratio(row.cycles as f64 / first.cycles as f64)
        } else {
            "-".to_owned()
        };
        writeln!(
            out,
            "{} {}, {}: {} cycles ({relative} of {}), {} violations",
            row.workload,
            row.policy,
            size_label(row),
            thousands(row.cycles),
            first.policy,
            thousands(row.violations),
        )?;
        let counts: Vec<String> = row
            .counts
            .iter()
            .map(|(name, n)| format!("{name}={}", thousands(*n)))
            .collect();
        for line in wrap(&counts, width, "    ") {
            writeln!(out, "{line}")?;
        }
    }
    Ok(())
}

/// The rows as JSON rows of `lazymmu compare`: what ran (workload, policy,
/// CPUs, processes), its counts, cycles and violations. There is no
/// backend, mode or design: the neighbour models have none of them.
pub fn json_rows(rows: &[NeighbourRow]) -> Vec<serde_json::Value> {
    rows.iter()
        .map(|row| {
            serde_json::json!({
                "workload": row.workload,
                "policy": row.policy,
                "machine": row.machine,
                "cpus": row.cpus,
                "processes": row.processes,
                "counts": row.counts,
                "cycles": row.cycles,
                "violations": row.violations,
            })
        })
        .collect()
}

/// The command that reruns `row`.
pub fn reproduce(row: &NeighbourRow, common: &Reproduce) -> String {
    let mut command = format!(
        "lazymmu compare --workload {} --policy {}",
        row.workload, row.policy
    );
    if row.workload == NeighbourWorkload::VmallocGrow.name() {
        command += &format!(" --processes {}", row.processes);
    } else if let Some(machine) = &row.machine {
        command += &format!(" --topology {machine}");
    } else {
        command += &format!(" --cpus {}", row.cpus);
    }
    command += &common.options(false);
    command
}

/// Prints each row's violations with the command that reproduces them.
///
/// # Errors
/// I/O errors.
pub fn write_violations(
    out: &mut impl Write,
    rows: &[NeighbourRow],
    common: &Reproduce,
) -> Result<()> {
    for row in rows.iter().filter(|r| r.violations > 0) {
        writeln!(
            out,
            "\n{} {}, {}: {} violation(s); reproduce with:\n  {}",
            row.workload,
            row.policy,
            size_label(row),
            thousands(row.violations),
            reproduce(row, common)
        )?;
        for v in &row.first_violations {
            writeln!(out, "  {v}")?;
        }
    }
    Ok(())
}

/// Under the lazy-TLB table: `ctxswitch-bench`'s switches per second on
/// each machine figures were published for (`--topology power8-e880`),
/// next to the published figures and the factor between them. The model's
/// constants were not chosen by looking at these (README, "Lazy TLB at
/// scale", says why they differ).
///
/// # Errors
/// I/O errors.
pub fn write_published(out: &mut impl Write, rows: &[NeighbourRow], width: usize) -> Result<()> {
    let bench = NeighbourWorkload::CtxswitchBench.name();
    let on_cpus = rows
        .iter()
        .any(|r| r.workload == bench && r.machine.is_none());
    if on_cpus {
        writeln!(
            out,
            "\n{bench} against the published POWER8 rates: --topology {}",
            POWER8_E880.name
        )?;
    }
    let mut machines: Vec<&str> = Vec::new();
    for row in rows.iter().filter(|r| r.workload == bench) {
        if let Some(machine) = row.machine.as_deref() {
            if !machines.contains(&machine) {
                machines.push(machine);
            }
        }
    }
    for name in machines {
        let Some(machine) = named_machine(name) else {
            continue;
        };
        let published = published_rates(machine);
        let Some(&(_, first)) = published.first() else {
            continue;
        };
        let rate = |policy: &str| {
            rows.iter()
                .find(|r| {
                    r.workload == bench && r.machine.as_deref() == Some(name) && r.policy == policy
                })
                .and_then(|r| r.counts.get("switches_per_second").copied())
        };
        writeln!(
            out,
            "\n{bench} on {name} ({}, {} CPUs): switches per second, model and published",
            machine.topology,
            thousands(machine.topology.cpus() as u64),
        )?;
        let mut table = Table::new(
            ["policy", "model switches/s", "published", "model/published"],
            1,
        );
        let mut pair = Vec::new();
        for &(policy, figure) in &published {
            let value = figure.parse().map(|f| f.value).ok();
            let model = rate(lazy_tlb_name(policy));
            pair.push((model, value));
            table.row([
                lazy_tlb_name(policy).to_owned(),
                model.map_or_else(|| "not run".to_owned(), thousands),
                figure.figure.to_owned(),
                match (model, value) {
                    (Some(m), Some(v)) if v > 0.0 => factor(m as f64 / v),
                    _ => "-".to_owned(),
                },
            ]);
        }
        // The two policies against each other, as the figures were
        // published: shootdown's rate over refcount's.
        if let [(Some(m0), Some(p0)), (Some(m1), Some(p1))] = pair[..] {
            if m0 > 0 && p0 > 0.0 {
                let model = m1 as f64 / m0 as f64;
                let hardware = p1 / p0;
                table.row([
                    format!(
                        "{}/{}",
                        lazy_tlb_name(published[1].0),
                        lazy_tlb_name(published[0].0)
                    ),
                    factor(model),
                    format!("about {}", factor(hardware)),
                    factor(model / hardware),
                ]);
            }
        }
        table.write(out, width, "  ")?;
        let source = first.source;
        writeln!(
            out,
            "  published for a {}:\n    {}, \"{}\", {}\n    {}",
            first.machine, source.author, source.title, source.date, first.workload
        )?;
    }
    Ok(())
}

/// A factor between two rates, with the digits that mean something:
/// `1.94`, `22.4`, `1,357`.
fn factor(value: f64) -> String {
    if value >= 100.0 {
        thousands(value.round() as u64)
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}
