//! `lazymmu check`: explore every schedule of the scenarios within a
//! preemption bound, report what was covered and every invariant broken,
//! each with the shortest trace found and the command that replays it.
//!
//! A trace is `SCENARIO:C0.C1.C2...`: the scenario's name, then the option
//! taken at each choice point in order (0 = continue; trailing zeros may be
//! omitted). `--replay` takes such a string, or the path of a file holding
//! one (blank lines and lines starting with `#` are skipped).
//!
//! Exit status: 0 when every invariant holds, 1 on a violation, 2 on bad
//! usage.

use std::io::Write;
use std::path::Path;

use anyhow::Result;
use clap::Args;
use serde_json::{json, Value};

use lazymmu_sim::choice::Trace;
use lazymmu_sim::explore::{Bounds, Found};
use lazymmu_sim::scenarios::{self, CheckReport, Entry, Variant, SIM_PREEMPTIONS};

/// Options of `lazymmu check`.
#[derive(Args, Debug)]
#[command(after_help = "\
A trace is SCENARIO:C0.C1.C2... : the scenario, then the option taken at each \
choice point in order (0 continues; trailing zeros may be left out), e.g. \
switch-windows:0.2. Every violation is printed with its shortest trace and the \
command that replays it. --replay also takes a file holding a trace (blank \
lines and lines starting with # are skipped).

Exit status: 0 when every invariant holds, 1 on a violation, 2 on bad usage.")]
pub struct CheckArgs {
    /// Check another shipped design (percpu, stateful) or a known-bad
    /// variant (linux70-xen, percpu-preemptible, nested-no-flush,
    /// irq-batched, stateful-single-slot, gather-free-before-flush,
    /// pgmap-percpu-preemptible, ctxswitch-lost-ipi); see --list.
    #[arg(long, value_name = "NAME", default_value = "default")]
    pub variant: Variant,
    /// Only these scenarios (repeatable); all by default.
    #[arg(long = "scenario", value_name = "NAME")]
    pub scenarios: Vec<String>,
    /// At most this many preemptive choices per schedule (CHESS-style
    /// bound).
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub preemptions: u32,
    /// Preemption bound for the simulator's workloads (`sim-*`), which
    /// are explored at the lower of this and --preemptions.
    #[arg(long, value_name = "N", default_value_t = SIM_PREEMPTIONS)]
    pub sim_preemptions: u32,
    /// Do not prune states already visited.
    #[arg(long)]
    pub no_prune: bool,
    /// Stop each scenario after this many schedules (the report says it is
    /// incomplete).
    #[arg(long, value_name = "N")]
    pub max_schedules: Option<u64>,
    /// Replay one schedule, given as `SCENARIO:C0.C1...` or a file holding
    /// it, and report what it ends in.
    #[arg(long, value_name = "TRACE")]
    pub replay: Option<String>,
    /// List the scenarios and variants and exit.
    #[arg(long)]
    pub list: bool,
    /// One JSON document on standard output instead of the text report.
    #[arg(long)]
    pub json: bool,
}

/// Bad usage detected after parsing: reported with exit status 2.
fn usage(message: impl std::fmt::Display) -> Result<i32> {
    eprintln!("lazymmu check: {message}");
    Ok(2)
}

/// Runs `lazymmu check`; returns the exit status.
///
/// # Errors
/// Only when standard output cannot be written.
pub fn check(args: &CheckArgs) -> Result<i32> {
    if args.list {
        return list(args.json);
    }
    if let Some(text) = &args.replay {
        return replay(args, text);
    }
    let all = scenarios::all();
    let selected: Vec<Entry> = if args.scenarios.is_empty() {
        all
    } else {
        let mut selected = Vec::new();
        for name in &args.scenarios {
            match scenarios::find(name) {
                Some(s) => selected.push(s),
                None => return usage(unknown_scenario(name)),
            }
        }
        selected
    };
    let bounds = Bounds {
        preemptions: Some(args.preemptions),
        prune: !args.no_prune,
        max_schedules: args.max_schedules,
        stop_at_first: false,
    };
    let report = scenarios::check(&selected, args.variant, bounds, args.sim_preemptions);
    if report.scenarios.is_empty() {
        return usage(format!(
            "variant {} applies to none of the selected scenarios (see --list: machine variants do not run on sim-*, neighbour variants only on their workload)",
            args.variant
        ));
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report_json(&report))?;
        writeln!(out)?;
    } else {
        write_report(&mut out, &report)?;
    }
    Ok(if report.holds() { 0 } else { 1 })
}

fn unknown_scenario(name: &str) -> String {
    let all = scenarios::all();
    let names: Vec<_> = all.iter().map(|s| s.name()).collect();
    format!(
        "unknown scenario {name:?}; known: {}, tiny",
        names.join(", ")
    )
}

/// The command that replays `trace` under `variant`.
pub fn replay_command(variant: Variant, trace: &Trace) -> String {
    if variant == Variant::Default {
        format!("lazymmu check --replay {trace}")
    } else {
        format!("lazymmu check --variant {variant} --replay {trace}")
    }
}

fn list(json: bool) -> Result<i32> {
    let mut out = std::io::stdout().lock();
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
        return Ok(0);
    }
    writeln!(out, "scenarios:")?;
    for s in &all {
        writeln!(out, "  {:<24} {}", s.name(), s.about())?;
    }
    writeln!(out, "variants:")?;
    for v in Variant::ALL {
        let tag = if v.is_known_bad() { " (known bad)" } else { "" };
        writeln!(out, "  {:<24} {}{tag}", v.name(), v.about())?;
    }
    Ok(0)
}

/// Reads a trace from the argument, or from the file it names.
fn read_trace(text: &str) -> std::result::Result<Trace, String> {
    let path = Path::new(text);
    let line = if path.is_file() {
        let contents = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read trace file {text}: {e}"))?;
        contents
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .ok_or_else(|| format!("trace file {text} holds no trace"))?
    } else {
        text.to_owned()
    };
    line.parse::<Trace>()
        .map_err(|e| format!("bad trace {line:?}: {e}"))
}

fn replay(args: &CheckArgs, text: &str) -> Result<i32> {
    let trace = match read_trace(text) {
        Ok(trace) => trace,
        Err(message) => return usage(message),
    };
    let Some(scenario) = scenarios::find(&trace.scenario) else {
        return usage(unknown_scenario(&trace.scenario));
    };
    let Some(outcome) = scenarios::replay_trace(&scenario, args.variant, &trace.picks) else {
        return usage(format!(
            "variant {} does not apply to scenario {}",
            args.variant,
            scenario.name()
        ));
    };
    if outcome.diverged {
        return usage(format!(
            "trace {trace} does not fit scenario {} under variant {}: a choice names an option the scenario does not offer",
            scenario.name(),
            args.variant
        ));
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        let doc = json!({
            "variant": args.variant.name(),
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
            "replayed {trace} (variant {}, {} choice points)",
            args.variant, outcome.choice_points
        )?;
        match &outcome.violation {
            Some(v) => {
                writeln!(out, "VIOLATION: invariant {}", v.invariant)?;
                writeln!(out, "  {}", v.detail)?;
                writeln!(out, "  last events, oldest first:")?;
                for e in &v.events {
                    writeln!(out, "    {e}")?;
                }
            }
            None => writeln!(out, "every invariant holds on this schedule")?,
        }
    }
    Ok(if outcome.violation.is_some() { 1 } else { 0 })
}

fn write_report(out: &mut impl Write, report: &CheckReport) -> std::io::Result<()> {
    let bound = report
        .bounds
        .preemptions
        .map_or("none".to_owned(), |b| b.to_string());
    writeln!(
        out,
        "lazymmu check: variant {} ({}), preemption bound {bound}, pruning {}",
        report.variant,
        report.variant.about(),
        if report.bounds.prune { "on" } else { "off" }
    )?;
    writeln!(
        out,
        "{:<24} {:>5} {:>10} {:>8} {:>9} {:>11}",
        "scenario", "bound", "schedules", "pruned", "complete", "violations"
    )?;
    for s in &report.scenarios {
        writeln!(
            out,
            "{:<24} {:>5} {:>10} {:>8} {:>9} {:>11}",
            s.scenario,
            s.bound.map_or("none".to_owned(), |b| b.to_string()),
            s.report.schedules,
            s.report.pruned,
            if s.report.complete() { "yes" } else { "no" },
            s.report.violations.len()
        )?;
    }
    writeln!(
        out,
        "{} scenarios run, {} schedules explored, {} states pruned, {:.2} s, {:.0} schedules/s",
        report.scenarios.len(),
        report.schedules(),
        report.pruned(),
        report.elapsed.as_secs_f64(),
        report.schedules_per_second()
    )?;
    let mut any = false;
    for (scenario, found) in report.violations() {
        any = true;
        write_violation(out, report.variant, scenario, found)?;
    }
    if !any {
        writeln!(out, "every invariant holds")?;
    }
    Ok(())
}

fn write_violation(
    out: &mut impl Write,
    variant: Variant,
    scenario: &str,
    found: &Found,
) -> std::io::Result<()> {
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
        found.schedules
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
        "scenarios_run": report.scenarios.len(),
        "schedules": report.schedules(),
        "pruned": report.pruned(),
        "elapsed_seconds": report.elapsed.as_secs_f64(),
        "schedules_per_second": report.schedules_per_second(),
        "holds": report.holds(),
        "scenarios": report.scenarios.iter().map(|s| json!({
            "name": s.scenario,
            "preemption_bound": s.bound,
            "schedules": s.report.schedules,
            "pruned": s.report.pruned,
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
