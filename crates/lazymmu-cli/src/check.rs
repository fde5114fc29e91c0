//! `lazymmu check`: explore every schedule of the scenarios within a
//! preemption bound, report what was covered and every invariant broken,
//! each with the shortest trace found and the command that replays it.
//!
//! A trace is `SCENARIO:C0.C1.C2...`: the scenario's name, then the option
//! taken at each choice point in order (0 = continue; trailing zeros may be
//! omitted). `--replay` takes such a string, or the path of a file holding
//! one (blank lines and lines starting with `#` are skipped).
//!
//! Exit status: 0 when every invariant holds over everything explored, 1
//! on a violation, 2 on bad usage, 3 when no violation was found but the
//! exploration stopped at `--max-schedules` (incomplete).

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::builder::{PossibleValue, PossibleValuesParser};
use clap::Args;
use serde_json::{json, Value};

use lazymmu_sim::choice::Trace;
use lazymmu_sim::explore::{Bounds, Completion, Found};
use lazymmu_sim::pct::RandomSearch;
use lazymmu_sim::scenarios::{self, CheckReport, Entry, Variant};

use crate::exit::{usage, FINDING, INCOMPLETE, STATUSES};
use crate::input::{Lines, QUOTE};
use crate::progress::Progress;
use crate::text::{count, excerpt, thousands, Table};

/// Options of `lazymmu check`.
#[derive(Args, Debug)]
#[command(after_help = format!("\
A trace is SCENARIO:C0.C1.C2... : the scenario, then the option taken at each \
choice point in order (0 continues; trailing zeros may be left out), e.g. \
switch-windows:0.2. Every violation is printed with its shortest trace and the \
command that replays it. --replay also takes a file holding one trace (blank \
lines and lines starting with # are skipped).

{STATUSES} check exits with 3 when it found no violation but stopped at \
--max-schedules before covering every schedule (incomplete)."))]
pub struct CheckArgs {
    /// Check another shipped design or a known-bad variant.
    #[arg(long, value_name = "NAME", default_value = "default", value_parser = variant_values())]
    pub variant: String,
    /// Only these scenarios (repeatable); all by default.
    #[arg(long = "scenario", value_name = "NAME", value_parser = scenario_values())]
    pub scenarios: Vec<String>,
    /// At most this many preemptive choices per schedule (CHESS-style
    /// bound).
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub preemptions: u32,
    /// A lower preemption bound for the simulator's workloads (`sim-*`)
    /// alone: they are explored at the lower of this and --preemptions
    /// (by default at --preemptions, as every other scenario).
    #[arg(long, value_name = "N")]
    pub sim_preemptions: Option<u32>,
    /// Do not prune states already visited.
    #[arg(long)]
    pub no_prune: bool,
    /// Do not skip, by sleep sets, orders of commuting stretches of
    /// different CPUs (partial-order reduction; for comparison).
    #[arg(long)]
    pub no_partial_order: bool,
    /// Stop each scenario after this many schedules; a scenario stopped
    /// there is reported incomplete, and so is the check (exit status 3).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_schedules: Option<u64>,
    /// Instead of exploring every schedule, run N schedules of each
    /// scenario drawn by probabilistic concurrency testing (PCT); without
    /// --scenario, the big scenarios (8 CPUs, 16 tasks) exhaustive search
    /// cannot cover.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub random: Option<u64>,
    /// Seed of --random (the same seed draws the same schedules).
    #[arg(long, value_name = "SEED", default_value_t = 0, requires = "random")]
    pub seed: u64,
    /// Bug depth --random looks for: DEPTH - 1 priority change points per
    /// run.
    #[arg(long, value_name = "D", default_value_t = 3, requires = "random",
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub depth: u32,
    /// Replay one schedule, given as `SCENARIO:C0.C1...` or a file holding
    /// one, and report what it ends in.
    #[arg(long, value_name = "TRACE")]
    pub replay: Option<String>,
    /// List the scenarios and variants and exit.
    #[arg(long)]
    pub list: bool,
    /// One JSON document on standard output instead of the text report.
    #[arg(long)]
    pub json: bool,
}

/// The variants `--variant` accepts, each with what it checks.
fn variant_values() -> PossibleValuesParser {
    PossibleValuesParser::new(Variant::ALL.iter().map(|v| {
        let about = if v.is_known_bad() {
            format!("known bad: {}", v.about())
        } else {
            v.about().to_owned()
        };
        PossibleValue::new(v.name()).help(about)
    }))
}

/// The scenarios `--scenario` accepts (`tiny`, a two-task scenario for
/// trying the checker out, is accepted but not listed).
fn scenario_values() -> PossibleValuesParser {
    let listed = scenarios::all()
        .into_iter()
        .chain(scenarios::random_scenarios())
        .map(|s| PossibleValue::new(s.name().to_owned()).help(s.about().to_owned()));
    let tiny = scenarios::find("tiny").map(|s| PossibleValue::new(s.name().to_owned()).hide(true));
    PossibleValuesParser::new(listed.chain(tiny))
}

/// Runs `lazymmu check`.
///
/// # Errors
/// Usage errors (a variant that applies to no selected scenario, a trace
/// that does not parse or fit); I/O errors reading a trace file or writing
/// the report.
pub fn run(args: &CheckArgs) -> Result<ExitCode> {
    let variant: Variant = args
        .variant
        .parse()
        .map_err(|_| usage(format!("unknown variant `{}`", args.variant)))?;
    if args.list {
        return list(args.json);
    }
    if let Some(text) = &args.replay {
        return replay(args, variant, text);
    }
    let selected: Vec<Entry> = if args.scenarios.is_empty() {
        if args.random.is_some() {
            scenarios::random_scenarios()
        } else {
            scenarios::all()
        }
    } else {
        args.scenarios
            .iter()
            .map(|name| {
                scenarios::find(name).ok_or_else(|| usage(format!("unknown scenario `{name}`")))
            })
            .collect::<Result<_>>()?
    };
    let bounds = Bounds {
        preemptions: Some(args.preemptions),
        prune: !args.no_prune,
        max_schedules: args.max_schedules,
        stop_at_first: false,
        partial_order: !args.no_partial_order,
    };
    let report = match args.random {
        Some(runs) => sample(
            &selected,
            variant,
            RandomSearch {
                runs,
                seed: args.seed,
                depth: args.depth,
            },
        ),
        None => explore(&selected, variant, bounds, args.sim_preemptions),
    };
    if report.scenarios.is_empty() {
        return Err(usage(format!(
            "variant {variant} applies to none of the selected scenarios (see --list: machine \
             variants do not run on sim-*, neighbour variants only on their workload)"
        )));
    }
    let mut out = BufWriter::new(std::io::stdout().lock());
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report_json(&report))?;
        writeln!(out)?;
    } else {
        write_report(&mut out, &report)?;
    }
    out.flush()?;
    Ok(ExitCode::from(verdict(&report)))
}

/// The exit status of a check: a violation, else incomplete coverage,
/// else success.
fn verdict(report: &CheckReport) -> u8 {
    if !report.holds() {
        FINDING
    } else if incomplete(report) > 0 {
        INCOMPLETE
    } else {
        0
    }
}

/// Scenarios whose exploration stopped before covering every schedule.
fn incomplete(report: &CheckReport) -> usize {
    report
        .scenarios
        .iter()
        .filter(|s| !s.report.complete() && s.report.completion != Completion::Sampled)
        .count()
}

/// Explores the scenarios, showing on a terminal which one and how many
/// of its schedules are done.
fn explore(
    selected: &[Entry],
    variant: Variant,
    bounds: Bounds,
    sim_preemptions: Option<u32>,
) -> CheckReport {
    let progress = Progress::new(selected.len() as u64, "scenarios");
    let names: Vec<&str> = selected.iter().map(|s| s.name()).collect();
    scenarios::check_with(selected, variant, bounds, sim_preemptions, &mut |at| {
        if let Some(index) = names.iter().position(|&n| n == at.scenario) {
            progress.set(index as u64);
        }
        progress.message(format!(
            "{}: {}",
            at.scenario,
            count(at.schedules, "schedule")
        ));
    })
}

/// Samples the scenarios by PCT, showing progress as [`explore`] does.
fn sample(selected: &[Entry], variant: Variant, search: RandomSearch) -> CheckReport {
    let progress = Progress::new(selected.len() as u64, "scenarios");
    let names: Vec<&str> = selected.iter().map(|s| s.name()).collect();
    scenarios::sample(selected, variant, search, &mut |at| {
        if let Some(index) = names.iter().position(|&n| n == at.scenario) {
            progress.set(index as u64);
        }
        progress.message(format!("{}: {}", at.scenario, count(at.schedules, "run")));
    })
}

/// The command that replays `trace` under `variant`.
pub fn replay_command(variant: Variant, trace: &Trace) -> String {
    if variant == Variant::Default {
        format!("lazymmu check --replay {trace}")
    } else {
        format!("lazymmu check --variant {variant} --replay {trace}")
    }
}

fn list(json: bool) -> Result<ExitCode> {
    let mut out = BufWriter::new(std::io::stdout().lock());
    let all = scenarios::all();
    if json {
        let doc = json!({
            "scenarios": all.iter().map(|s| json!({"name": s.name(), "about": s.about()})).collect::<Vec<_>>(),
            "variants": Variant::ALL.iter().map(|v| json!({
                "name": v.name(), "about": v.about(), "known_bad": v.is_known_bad(),
            })).collect::<Vec<_>>(),
        });
        serde_json::to_writer_pretty(&mut out, &doc)?;
        writeln!(out)?;
    } else {
        writeln!(out, "scenarios:")?;
        for s in &all {
            writeln!(out, "  {:<24} {}", s.name(), s.about())?;
        }
        writeln!(out, "big scenarios (for --random):")?;
        for s in &scenarios::random_scenarios() {
            writeln!(out, "  {:<24} {}", s.name(), s.about())?;
        }
        writeln!(out, "variants:")?;
        for v in Variant::ALL {
            let tag = if v.is_known_bad() { " (known bad)" } else { "" };
            writeln!(out, "  {:<24} {}{tag}", v.name(), v.about())?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// The longest trace line `--replay` reads from a file, in bytes: the
/// traces `check` prints are a few hundred bytes.
const MAX_TRACE: usize = 1 << 20;

/// Reads the trace the argument is, or the one trace of the file it
/// names.
///
/// # Errors
/// An I/O error naming the path when the argument is no trace and no
/// readable file; a usage error for a file with no trace, more than one,
/// or a line over the limit, and for a trace that does not parse.
fn read_trace(text: &str) -> Result<Trace> {
    let path = Path::new(text);
    let line = if path.is_file() {
        let file = File::open(path).with_context(|| format!("cannot read trace file {text}"))?;
        let mut lines = Lines::new(BufReader::new(file), text, MAX_TRACE);
        let mut found: Option<(usize, String)> = None;
        while let Some((number, line)) = lines.next_line()? {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some((first, _)) = &found {
                return Err(usage(format!(
                    "{text}:{number}: a second trace (the first is on line {first}); \
                     --replay replays one: keep one in the file"
                )));
            }
            found = Some((number, line.to_owned()));
        }
        found
            .map(|(_, line)| line)
            .ok_or_else(|| usage(format!("trace file {text} holds no trace")))?
    } else if text.contains(':') {
        text.to_owned()
    } else {
        // Neither a trace nor a file: say why the file could not be read.
        let error = std::fs::metadata(path)
            .err()
            .map_or_else(|| "not a regular file".to_owned(), |e| e.to_string());
        return Err(anyhow::anyhow!(
            "cannot read trace file {text}: {error} (a trace is SCENARIO:C0.C1..., e.g. \
             switch-windows:0.2)"
        ));
    };
    line.parse::<Trace>()
        .map_err(|e| usage(format!("bad trace {}: {e}", excerpt(&line, QUOTE))))
}

fn replay(args: &CheckArgs, variant: Variant, text: &str) -> Result<ExitCode> {
    let trace = read_trace(text)?;
    let scenario = scenarios::find(&trace.scenario).ok_or_else(|| {
        usage(format!(
            "unknown scenario `{}` in the trace",
            trace.scenario
        ))
    })?;
    let outcome = scenarios::replay_trace(&scenario, variant, &trace.picks).ok_or_else(|| {
        usage(format!(
            "variant {variant} does not apply to scenario {}",
            scenario.name()
        ))
    })?;
    if outcome.diverged {
        return Err(usage(format!(
            "trace {} does not fit scenario {} under variant {variant}: a choice names an \
             option the scenario does not offer",
            excerpt(&trace.to_string(), QUOTE),
            scenario.name(),
        )));
    }
    let mut out = BufWriter::new(std::io::stdout().lock());
    if args.json {
        let doc = json!({
            "variant": variant.name(),
            "trace": trace.to_string(),
            "choice_points": outcome.choice_points,
            "violation": outcome.violation.as_ref().map(|v| json!({
                "invariant": v.invariant.to_string(),
                "detail": v.detail,
                "events": v.events.iter().map(ToString::to_string).collect::<Vec<_>>(),
            })),
        });
        serde_json::to_writer_pretty(&mut out, &doc)?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "replayed {trace} (variant {variant}, {} choice points)",
            thousands(outcome.choice_points as u64)
        )?;
        match &outcome.violation {
            Some(v) => {
                writeln!(out, "VIOLATION: invariant {}", v.invariant)?;
                writeln!(out, "  {}", v.detail)?;
                writeln!(out, "  last events, oldest first:")?;
                for e in &v.events {
                    writeln!(out, "    {e}")?;
                }
                writeln!(
                    out,
                    "violation: invariant {} breaks on this schedule",
                    v.invariant
                )?;
            }
            None => writeln!(out, "every invariant holds on this schedule")?,
        }
    }
    out.flush()?;
    Ok(ExitCode::from(if outcome.violation.is_some() {
        FINDING
    } else {
        0
    }))
}

fn write_report(out: &mut impl Write, report: &CheckReport) -> Result<()> {
    let bound = report
        .bounds
        .preemptions
        .map_or("none".to_owned(), |b| b.to_string());
    match report.random {
        Some(search) => writeln!(
            out,
            "lazymmu check: variant {} ({}), {} per scenario drawn by PCT (seed {}, depth {})",
            report.variant,
            report.variant.about(),
            count(search.runs, "random run"),
            search.seed,
            search.depth
        )?,
        None => writeln!(
            out,
            "lazymmu check: variant {} ({}), preemption bound {bound}, pruning {}",
            report.variant,
            report.variant.about(),
            if report.bounds.prune { "on" } else { "off" }
        )?,
    }
    let mut table = Table::new(
        [
            "scenario",
            "bound",
            "schedules",
            "pruned",
            "complete",
            "violations",
        ],
        1,
    );
    for s in &report.scenarios {
        table.row([
            s.scenario.clone(),
            match (s.bound, report.random) {
                (_, Some(_)) => "pct".to_owned(),
                (None, None) => "none".to_owned(),
                (Some(b), None) => b.to_string(),
            },
            thousands(s.report.schedules),
            thousands(s.report.pruned),
            if s.report.complete() { "yes" } else { "NO" }.to_owned(),
            s.report.violations.len().to_string(),
        ]);
    }
    table.write(out, crate::text::output_width(), "")?;
    for (scenario, found) in report.violations() {
        write_violation(out, report.variant, scenario, found)?;
    }
    // The verdict comes last, whatever came before it.
    writeln!(out)?;
    writeln!(
        out,
        "{}, {} explored, {} pruned, {} slept, {:.2} s, {} schedules/s",
        count(report.scenarios.len() as u64, "scenario"),
        count(report.schedules(), "schedule"),
        count(report.pruned(), "state"),
        count(report.slept(), "order"),
        report.elapsed.as_secs_f64(),
        thousands(report.schedules_per_second().round() as u64)
    )?;
    let broken = report.violations().count();
    let stopped = incomplete(report);
    let limit = report.bounds.max_schedules.map_or(String::new(), |n| {
        format!(" at --max-schedules {}", thousands(n))
    });
    match (broken, stopped) {
        (0, 0) if report.random.is_some() => writeln!(
            out,
            "every invariant holds on the schedules run (a random sample, not every schedule)"
        )?,
        (0, 0) => writeln!(out, "every invariant holds")?,
        (0, n) => writeln!(
            out,
            "incomplete: {n} of {} stopped{limit} before covering every schedule; \
             no violation in what was explored",
            count(report.scenarios.len() as u64, "scenario")
        )?,
        (v, n) => {
            let cut = if n > 0 {
                format!(" ({n} scenarios stopped{limit}, incomplete)")
            } else {
                String::new()
            };
            writeln!(
                out,
                "{} found, each with its replay command above{cut}",
                count(v as u64, "violation")
            )?
        }
    }
    Ok(())
}

fn write_violation(
    out: &mut impl Write,
    variant: Variant,
    scenario: &str,
    found: &Found,
) -> Result<()> {
    writeln!(out)?;
    writeln!(
        out,
        "VIOLATION in {scenario}: invariant {}",
        found.violation.invariant
    )?;
    writeln!(out, "  {}", found.violation.detail)?;
    writeln!(
        out,
        "  shortest trace: {} ({} non-default choices; {} schedules hit this invariant)",
        found.trace,
        found.trace.departures(),
        thousands(found.schedules)
    )?;
    writeln!(out, "  replay: {}", replay_command(variant, &found.trace))?;
    writeln!(out, "  last events, oldest first:")?;
    for e in &found.violation.events {
        writeln!(out, "    {e}")?;
    }
    Ok(())
}

fn report_json(report: &CheckReport) -> Value {
    json!({
        "variant": report.variant.name(),
        "preemption_bound": report.bounds.preemptions,
        "prune": report.bounds.prune,
        "max_schedules": report.bounds.max_schedules,
        "random": report.random.map(|r| json!({"runs": r.runs, "seed": r.seed, "depth": r.depth})),
        "scenarios_run": report.scenarios.len(),
        "schedules": report.schedules(),
        "pruned": report.pruned(),
        "slept": report.slept(),
        "elapsed_seconds": report.elapsed.as_secs_f64(),
        "schedules_per_second": report.schedules_per_second(),
        "holds": report.holds(),
        "complete": incomplete(report) == 0,
        "scenarios": report.scenarios.iter().map(|s| json!({
            "name": s.scenario,
            "preemption_bound": s.bound,
            "schedules": s.report.schedules,
            "pruned": s.report.pruned,
            "slept": s.report.slept,
            "choice_points": s.report.choice_points,
            "complete": s.report.complete(),
            "violations": s.report.violations.len(),
        })).collect::<Vec<_>>(),
        "violations": report.violations().map(|(scenario, f)| json!({
            "scenario": scenario,
            "invariant": f.violation.invariant.to_string(),
            "invariant_name": f.violation.invariant.name(),
            "detail": f.violation.detail,
            "trace": f.trace.to_string(),
            "schedules": f.schedules,
            "replay": replay_command(report.variant, &f.trace),
            "events": f.violation.events.iter().map(ToString::to_string).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}
