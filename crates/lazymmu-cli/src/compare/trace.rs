//! `lazymmu compare --trace FILE`: a recorded program's calls replayed on
//! every backend, eager and lazy ([`lazymmu_sim::trace_replay`]), printed
//! as the built-in workloads' matrix with the trace's kinds of call as
//! its columns, then what was replayed and what was skipped.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use lazymmu_sim::program_trace::history::{StepKind, Summary};
use lazymmu_sim::scenario::{BackendKind, ModeKind};
use lazymmu_sim::trace_replay::{plan, replay, trace_config, Plan, TraceRun};

use super::matrix::{self, Cell};
use super::{costs, CompareArgs, Selection};
use crate::exit::{bad_input, FINDING};
use crate::progress::Progress;
use crate::text::{output_width, thousands, wrap};

/// Runs the replay of the trace at `path` on the selected backends and
/// designs: exit status 0, or [`FINDING`] when an invariant was violated.
///
/// # Errors
/// A trace that cannot be read (I/O, naming the path) or is malformed
/// (bad input: its file, line and what was expected there).
pub fn run(args: &CompareArgs, path: &Path) -> Result<ExitCode> {
    let selection = Selection::new(args)?;
    let name = path.display().to_string();
    let open = || File::open(path).map(BufReader::new);
    let file = open().with_context(|| format!("cannot read {name}"))?;
    let plan = plan(file, &name).map_err(bad_input)?;

    let runs_per_design = selection.backends.len() * ModeKind::ALL.len();
    let progress = Progress::new(
        (selection.designs.len() * runs_per_design) as u64,
        "replays",
    );
    let mut matrices = Vec::new();
    for &design in &selection.designs {
        let mut runs = Vec::with_capacity(runs_per_design);
        for &backend in &selection.backends {
            for &mode in ModeKind::ALL {
                progress.message(format!("{backend} {mode}"));
                let mut cfg = trace_config(backend, mode);
                cfg.design = design;
                cfg.cpus = args.cpus as usize;
                cfg.costs = args.cost.clone();
                runs.push(replay(&open, &name, &plan, &cfg).map_err(bad_input)?);
                progress.tick();
            }
        }
        matrices.push((design, runs));
    }
    drop(progress);

    let width = output_width();
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut machine = format!("{} CPUs", args.cpus);
    for c in &args.cost {
        machine += &format!("; {}", costs::argument(c));
    }
    let mut broken = None;
    for (index, (design, runs)) in matrices.iter().enumerate() {
        if index > 0 {
            writeln!(out)?;
        }
        let title = format!("lazy/eager modelled cycles of {name}, design {design} ({machine})");
        write_matrix(&mut out, &title, runs, width)?;
        broken = broken.or_else(|| runs.iter().find(|r| r.violation_count > 0));
    }
    writeln!(out, "{}", matrix::LEGEND)?;
    if let Some((_, runs)) = matrices.first() {
        write_replayed(&mut out, &plan, runs, width)?;
    }
    if let Some(run) = broken {
        writeln!(
            out,
            "\n{}: {} {} broke an invariant {} times; the first:",
            matrix::BROKEN,
            run.backend,
            run.mode,
            run.violation_count
        )?;
        for v in &run.violations {
            writeln!(out, "  {v}")?;
        }
    }
    out.flush()?;
    Ok(ExitCode::from(if broken.is_some() { FINDING } else { 0 }))
}

/// The kinds of call that did page-table work in any run, in table order.
fn columns(runs: &[TraceRun]) -> Vec<StepKind> {
    StepKind::ALL
        .iter()
        .copied()
        .filter(|k| runs.iter().any(|r| r.kinds.contains_key(k)))
        .collect()
}

/// The matrix: a row per backend, a column per kind of call and the
/// total.
fn write_matrix(out: &mut impl Write, title: &str, runs: &[TraceRun], width: usize) -> Result<()> {
    let kinds = columns(runs);
    let mut backends: Vec<BackendKind> = Vec::new();
    for r in runs {
        if !backends.contains(&r.backend) {
            backends.push(r.backend);
        }
    }
    let rows = backends.iter().map(|&backend| {
        let find = |mode| runs.iter().find(|r| (r.backend, r.mode) == (backend, mode));
        let (eager, lazy) = (find(ModeKind::Eager), find(ModeKind::Lazy));
        let violations =
            eager.map_or(0, |r| r.violation_count) + lazy.map_or(0, |r| r.violation_count);
        let cell = |pick: &dyn Fn(&TraceRun) -> u64| {
            Some(Cell {
                eager: pick(eager?),
                lazy: pick(lazy?),
                violations,
            })
        };
        let mut cells: Vec<Option<Cell>> = kinds
            .iter()
            .map(|k| cell(&|r: &TraceRun| r.kinds.get(k).map_or(0, |c| c.cycles)))
            .collect();
        cells.push(cell(&|r: &TraceRun| r.cycles));
        (backend, cells)
    });
    let names = kinds.iter().map(|k| k.name()).chain(["total"]);
    matrix::write_rows(out, title, names, rows, width)
}

/// What was replayed (calls and pages by kind), what was prepared
/// without being charged, and what was skipped and why.
fn write_replayed(
    out: &mut impl Write,
    plan: &Plan,
    runs: &[TraceRun],
    width: usize,
) -> Result<()> {
    let Some(run) = runs.first() else {
        return Ok(());
    };
    let summary = &plan.summary;
    let mut words = vec![format!(
        "replayed: {} calls over {} pages:",
        thousands(run.calls),
        thousands(run.pages)
    )];
    for (kind, cost) in &run.kinds {
        words.push(format!(
            "{} {} ({} pages);",
            kind.name(),
            thousands(cost.calls),
            thousands(cost.pages)
        ));
    }
    words.extend(
        format!(
            "{} address spaces, at most {} alive.",
            summary.address_spaces, plan.spaces
        )
        .split(' ')
        .map(str::to_owned),
    );
    writeln!(out)?;
    for line in wrap(&words, width, "") {
        writeln!(out, "{line}")?;
    }
    let faults = summary.events(&[StepKind::Fault]);
    let populated = summary.operations.get("populate").map_or(0, |c| c.pages);
    let mapping_only = summary.events(&[StepKind::Mmap, StepKind::Brk, StepKind::Mremap])
        - run_calls(run, &[StepKind::Mmap, StepKind::Brk, StepKind::Mremap]);
    let prepared = format!(
        "prepared, not charged: {} faults and populations making {} pages present \
         (one fault at a time in Linux, outside lazy sections); {} calls that only \
         changed VMAs (no page-table work); {} VMA reports checked.",
        thousands(faults),
        thousands(populated),
        thousands(mapping_only),
        thousands(summary.vmas_checked)
    );
    for line in wrap(&split(&prepared), width, "") {
        writeln!(out, "{line}")?;
    }
    for line in wrap(&split(&skipped(summary)), width, "") {
        writeln!(out, "{line}")?;
    }
    if run.mismatches > 0 {
        writeln!(
            out,
            "{} calls touched other pages than the history has present; the first: {}",
            run.mismatches,
            run.first_mismatch.as_deref().unwrap_or("")
        )?;
    }
    Ok(())
}

fn run_calls(run: &TraceRun, kinds: &[StepKind]) -> u64 {
    kinds
        .iter()
        .map(|k| run.kinds.get(k).map_or(0, |c| c.calls))
        .sum()
}

fn split(text: &str) -> Vec<String> {
    text.split(' ').map(str::to_owned).collect()
}

/// The skipped events and their reasons, the unknown calls, the
/// disagreements with the kernel's own reports.
fn skipped(summary: &Summary) -> String {
    let mut text = format!("skipped: {} events", thousands(summary.skipped_count()));
    for (why, n) in &summary.skipped {
        text += &format!("; {n} {why}");
    }
    if summary.unmaps_of_nothing > 0 {
        text += &format!(
            "; {} unmaps of nothing mapped (no page-table work)",
            summary.unmaps_of_nothing
        );
    }
    let unknown: u64 = summary.unknown_calls.values().sum();
    if unknown > 0 {
        text += &format!("; {unknown} calls the replay does not know:");
        for (name, n) in &summary.unknown_calls {
            text += &format!(" {name} {n}");
        }
    }
    text += &format!(
        "; {} disagreements with the kernel's VMA reports",
        summary.disagreement_count()
    );
    for (what, n) in &summary.disagreements {
        text += &format!(" ({what}: {n})");
    }
    text + "."
}
