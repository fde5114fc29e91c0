//! `lazymmu compare`: every backend × workload, eager and lazy, on the
//! simulator; a table of primitive counts and modelled cycles with the
//! lazy/eager ratio, as text, JSON or an SVG bar chart.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use lazymmu::backend::machine::MAX_BACKEND_CPUS;
use lazymmu_sim::cost::{parse_override, Cost};
use lazymmu_sim::run::{compare_designs, run as run_config, DesignReport};
use lazymmu_sim::scenario::{
    BackendKind, DesignKind, ModeKind, RunConfig, RunResult, WorkloadKind,
};
use serde::Serialize;

/// Options of `lazymmu compare`.
#[derive(Args, Debug, Clone)]
pub struct CompareArgs {
    /// Backends to run (comma-separated, or `all`).
    #[arg(long, value_delimiter = ',', default_value = "all")]
    pub backend: Vec<String>,
    /// Workloads to run (comma-separated, or `all`).
    #[arg(long, value_delimiter = ',', default_value = "all")]
    pub workload: Vec<String>,
    /// Pages each task's workload touches.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub pages: u64,
    /// Simulated CPUs: up to 64 for the page-table workloads, ctxswitch
    /// and pgmap, up to 2048 for ctxswitch-bench (one socket of that many
    /// cores on the x86 cost table; see --topology).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=2048))]
    pub cpus: u64,
    /// The machine ctxswitch-bench runs on instead of --cpus:
    /// SOCKETSxCORESxTHREADS on the x86 cost table (e.g. 8x28x2), or
    /// power8-e880 (16x12x8, 1536 CPUs, the POWER8 of Linux 6.4's lazy-TLB
    /// shootdown figures, on the powerpc cost table) or xeon-8176 (8x28x2).
    #[arg(long, value_name = "SHAPE")]
    pub topology: Option<String>,
    /// Seed of the scheduler's random choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Lazy-mode design of the matrix: counters, stateful, percpu, or
    /// `all`. The comparison of the three designs is always printed.
    #[arg(long, default_value = "counters")]
    pub design: String,
    /// Override a primitive's cost: NAME=CYCLES (repeatable).
    #[arg(long = "cost", value_name = "NAME=CYCLES")]
    pub cost: Vec<String>,
    /// Policies of the MM-neighbour workloads (comma-separated, or
    /// `all`): ctxswitch and ctxswitch-bench refcount|shootdown|x86; vmalloc-grow
    /// fault|push|generation|prealloc; pgmap task|percpu (and the
    /// known-bad percpu-preemptible).
    #[arg(long, value_delimiter = ',', default_value = "all")]
    pub policy: Vec<String>,
    /// Processes of the vmalloc-grow workload (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "10,1000,10000", value_parser = clap::value_parser!(usize))]
    pub processes: Vec<usize>,
    /// KASAN hazard mode: read shadow entries back inside the section
    /// without pausing (the simulator must report the stale read-back).
    #[arg(long)]
    pub kasan_read_back: bool,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Also draw a bar chart of modelled cycles to FILE (SVG).
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
}

/// A usage error (exit status 2).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn parse_list<T: std::str::FromStr<Err = String> + Copy>(
    items: &[String],
    all: &[T],
) -> Result<Vec<T>, UsageError> {
    if items.iter().any(|s| s == "all") {
        return Ok(all.to_vec());
    }
    let mut out = Vec::new();
    for item in items {
        let v = item.parse::<T>().map_err(UsageError)?;
        out.push(v);
    }
    Ok(out)
}

#[derive(Serialize)]
struct JsonRow {
    backend: &'static str,
    workload: &'static str,
    mode: &'static str,
    design: &'static str,
    counts: serde_json::Map<String, serde_json::Value>,
    cycles: u64,
    pte_updates: u64,
    violations: u64,
}

#[derive(Serialize)]
struct JsonDesign {
    design: &'static str,
    bytes_per_task: usize,
    counts: serde_json::Map<String, serde_json::Value>,
    preempted_in_section: u64,
    preemptions_survived: bool,
    sleep_reported: bool,
    nested_key_restored: bool,
    violations: u64,
}

#[derive(Serialize)]
struct JsonDoc {
    seed: u64,
    pages: u64,
    cpus: u64,
    rows: Vec<JsonRow>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    designs: Vec<JsonDesign>,
}

fn counts_map(counts: &[(Cost, u64)]) -> serde_json::Map<String, serde_json::Value> {
    counts
        .iter()
        .map(|(p, n)| (p.name().to_string(), serde_json::Value::from(*n)))
        .collect()
}

/// Runs `lazymmu compare`: exit status 0, or 1 when an invariant was
/// violated.
///
/// # Errors
/// [`UsageError`] for bad option values; I/O errors writing the outputs
/// (both exit with status 2).
pub fn run(args: &CompareArgs) -> Result<std::process::ExitCode> {
    let backends = parse_list(&args.backend, BackendKind::ALL)?;
    let (neighbour_workloads, other_workloads) = crate::neighbours::split(&args.workload);
    let workloads = if other_workloads.is_empty() {
        Vec::new()
    } else {
        parse_list(&other_workloads, WorkloadKind::ALL)?
    };
    let designs = if args.design == "all" {
        DesignKind::ALL.to_vec()
    } else {
        vec![args.design.parse::<DesignKind>().map_err(UsageError)?]
    };
    let mut costs = Vec::new();
    for c in &args.cost {
        costs.push(parse_override(c).map_err(UsageError)?);
    }
    if !workloads.is_empty() && args.cpus as usize > MAX_BACKEND_CPUS {
        return Err(UsageError(format!(
            "--cpus {}: the page-table workloads run on at most {MAX_BACKEND_CPUS} CPUs",
            args.cpus
        ))
        .into());
    }
    let neighbour_rows = crate::neighbours::run(args, &neighbour_workloads, &costs)?;

    let mut configs = Vec::new();
    for &design in &designs {
        for &backend in &backends {
            for &workload in &workloads {
                for &mode in ModeKind::ALL {
                    let mut cfg = RunConfig::new(backend, workload, mode);
                    cfg.design = design;
                    cfg.pages = args.pages;
                    cfg.cpus = args.cpus as usize;
                    cfg.seed = args.seed;
                    cfg.costs = costs.clone();
                    cfg.read_back_without_pause = args.kasan_read_back;
                    configs.push(cfg);
                }
            }
        }
    }

    let progress = Progress::new(configs.len() as u64);
    let mut results = Vec::with_capacity(configs.len());
    for cfg in &configs {
        results.push(run_config(cfg));
        progress.tick();
    }
    let design_reports = if workloads.is_empty() {
        Vec::new()
    } else {
        compare_designs(args.seed, args.cpus as usize)
    };
    progress.finish();

    let violations: u64 = results.iter().map(|r| r.violation_count).sum::<u64>()
        + design_reports.iter().map(|d| d.violations).sum::<u64>()
        + neighbour_rows.iter().map(|r| r.violations).sum::<u64>();

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        let doc = JsonDoc {
            seed: args.seed,
            pages: args.pages,
            cpus: args.cpus,
            rows: results
                .iter()
                .map(|r| JsonRow {
                    backend: r.backend.name(),
                    workload: r.workload.name(),
                    mode: r.mode.name(),
                    design: r.design.name(),
                    counts: counts_map(&r.counts),
                    cycles: r.cycles,
                    pte_updates: r.pte_updates,
                    violations: r.violation_count,
                })
                .collect(),
            designs: design_reports
                .iter()
                .map(|d| JsonDesign {
                    design: d.design.name(),
                    bytes_per_task: d.bytes_per_task,
                    counts: counts_map(&d.counts),
                    preempted_in_section: d.preempted_in_section,
                    preemptions_survived: d.preemptions_survived,
                    sleep_reported: d.sleep_reported,
                    nested_key_restored: d.nested_key_restored,
                    violations: d.violations,
                })
                .collect(),
        };
        let mut doc = serde_json::to_value(&doc)?;
        if let Some(rows) = doc.get_mut("rows").and_then(|r| r.as_array_mut()) {
            rows.extend(crate::neighbours::json_rows(&neighbour_rows));
        }
        serde_json::to_writer_pretty(&mut out, &doc)?;
        writeln!(out)?;
    } else {
        if !results.is_empty() {
            write_table(&mut out, &results)?;
        }
        crate::neighbours::write(
            &mut out,
            &neighbour_rows,
            args.seed,
            args.topology.as_deref(),
        )?;
        if !design_reports.is_empty() {
            write_designs(&mut out, &design_reports)?;
        }
        for d in design_reports.iter().filter(|d| d.violations > 0) {
            writeln!(
                out,
                "\ndesign {}: {} violation(s); seed {}",
                d.design, d.violations, args.seed
            )?;
            if let Some(v) = &d.first_violation {
                write!(out, "{v}")?;
            }
        }
        for r in results.iter().filter(|r| r.violation_count > 0) {
            writeln!(
                out,
                "\n{} {} {} {}: {} violation(s); reproduce with: lazymmu compare --backend {} --workload {} --design {} --pages {} --cpus {} --seed {}",
                r.backend, r.workload, r.mode, r.design, r.violation_count, r.backend, r.workload, r.design, args.pages, args.cpus, args.seed
            )?;
            if let Some(v) = r.violations.first() {
                write!(out, "{v}")?;
            }
        }
    }
    if let Some(path) = &args.svg {
        draw_svg(path, &results).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(std::process::ExitCode::from(if violations > 0 {
        1
    } else {
        0
    }))
}

fn write_table(out: &mut impl Write, results: &[RunResult]) -> std::io::Result<()> {
    writeln!(
        out,
        "modelled cycles of each run's own work (interrupt handlers the scheduler injects are not charged); lazy/eager < 1 means batching pays"
    )?;
    writeln!(
        out,
        "{:<10} {:<16} {:<9} {:<6} {:>12} {:>7}  {:>5}  counts",
        "backend", "workload", "design", "mode", "cycles", "lazy/eager", "viol"
    )?;
    for r in results {
        let eager = results.iter().find(|e| {
            e.backend == r.backend
                && e.workload == r.workload
                && e.design == r.design
                && e.mode == ModeKind::Eager
        });
        let ratio = match (r.mode, eager) {
            (ModeKind::Lazy, Some(e)) if e.cycles > 0 => {
                format!("{:.3}", r.cycles as f64 / e.cycles as f64)
            }
            _ => "-".to_string(),
        };
        let counts: Vec<String> = r.counts.iter().map(|(p, n)| format!("{p}={n}")).collect();
        writeln!(
            out,
            "{:<10} {:<16} {:<9} {:<6} {:>12} {:>10}  {:>5}  {}",
            r.backend.name(),
            r.workload.name(),
            r.design.name(),
            r.mode.name(),
            r.cycles,
            ratio,
            r.violation_count,
            counts.join(" ")
        )?;
    }
    Ok(())
}

fn write_designs(out: &mut impl Write, reports: &[DesignReport]) -> std::io::Result<()> {
    writeln!(out, "\nlazy MMU designs (xen-pv and x86-pks, fork + nested sections, preemption, migration, sleep):")?;
    writeln!(
        out,
        "{:<9} {:>10}  {:<22} {:<15} {:<20} {:>5}  counts",
        "design", "bytes/task", "preempt+migrate", "sleep in section", "nested key restore", "viol"
    )?;
    for d in reports {
        let counts: Vec<String> = d.counts.iter().map(|(p, n)| format!("{p}={n}")).collect();
        writeln!(
            out,
            "{:<9} {:>10}  {:<22} {:<15} {:<20} {:>5}  {}",
            d.design.name(),
            d.bytes_per_task,
            preempt_label(d),
            if d.sleep_reported {
                "reported"
            } else {
                "allowed"
            },
            if d.nested_key_restored {
                "exact"
            } else {
                "WRONG"
            },
            d.violations,
            counts.join(" ")
        )?;
    }
    Ok(())
}

fn preempt_label(d: &DesignReport) -> String {
    if d.preempted_in_section == 0 {
        "none (preempt off)".to_string()
    } else if d.preemptions_survived {
        format!("{} kept", d.preempted_in_section)
    } else {
        format!("{} LOST", d.preempted_in_section)
    }
}

fn draw_svg(path: &std::path::Path, results: &[RunResult]) -> Result<()> {
    use plotters::prelude::*;
    let lazy: Vec<&RunResult> = results
        .iter()
        .filter(|r| r.mode == ModeKind::Lazy)
        .collect();
    let bars: Vec<(String, f64)> = lazy
        .iter()
        .filter_map(|r| {
            let e = results.iter().find(|e| {
                e.backend == r.backend
                    && e.workload == r.workload
                    && e.design == r.design
                    && e.mode == ModeKind::Eager
            })?;
            (e.cycles > 0).then(|| {
                (
                    format!("{} {}", r.backend, r.workload),
                    r.cycles as f64 / e.cycles as f64,
                )
            })
        })
        .collect();
    let height = (60 + bars.len() * 18).max(200) as u32;
    let root = SVGBackend::new(path, (900, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let max = bars.iter().map(|b| b.1).fold(1.0f64, f64::max) * 1.05;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "lazy / eager modelled cycles (lower is better)",
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(200)
        .build_cartesian_2d(0.0..max, 0..bars.len().max(1))?;
    let labels: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(bars.len().max(1))
        .y_label_formatter(&|i| labels.get(*i).cloned().unwrap_or_default())
        .x_desc("lazy cycles / eager cycles")
        .draw()?;
    chart.draw_series(
        bars.iter()
            .enumerate()
            .map(|(i, (_, v))| Rectangle::new([(0.0, i), (*v, i + 1)], BLUE.mix(0.6).filled())),
    )?;
    root.present()?;
    Ok(())
}

/// An indicatif bar on stderr, shown only when stderr is a terminal and the
/// run has taken more than a second.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    start: Instant,
    total: u64,
    done: std::cell::Cell<u64>,
    shown: std::cell::Cell<bool>,
}

impl Progress {
    fn new(total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::with_draw_target(
                Some(total),
                indicatif::ProgressDrawTarget::hidden(),
            );
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} runs {elapsed}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        });
        Self {
            bar,
            start: Instant::now(),
            total,
            done: std::cell::Cell::new(0),
            shown: std::cell::Cell::new(false),
        }
    }

    fn tick(&self) {
        self.done.set(self.done.get() + 1);
        if let Some(bar) = &self.bar {
            if !self.shown.get()
                && self.start.elapsed() > Duration::from_secs(1)
                && self.done.get() < self.total
            {
                bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                self.shown.set(true);
            }
            bar.set_position(self.done.get());
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
