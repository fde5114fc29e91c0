//! `lazymmu compare`: every backend × workload, eager and lazy, on the
//! simulator. The screen leads with the matrix of lazy/eager modelled
//! cycles, then the MM neighbours' policies and the three lazy-mode
//! designs; `--detail` adds every run's cycles and primitive counts,
//! `--json` prints all of it as one document, and `--svg`/`--png` draw it.

mod budget;
mod chart;
mod costs;
mod matrix;
mod names;
mod neighbours;
mod trace;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use lazymmu::backend::machine::MAX_BACKEND_CPUS;
use lazymmu::cpu::MAX_CPUS;
use lazymmu_sim::calibration::{Calibration, CalibrationErrorKind};
use lazymmu_sim::kernel_work::KernelWork;
use lazymmu_sim::run::{compare_designs, run as run_config, DesignReport};
use lazymmu_sim::scenario::{
    BackendKind, DesignKind, KernelWorkSource, ModeKind, RunConfig, RunResult, WorkloadKind,
};
use lazymmu_sim::side_by_side;
use serde::Serialize;

use crate::exit::{bad_input, usage, FINDING, STATUSES};
use crate::progress::Progress;
use crate::text::{output_width, ratio, thousands, wrap, Table};
use costs::Override;
pub use names::ALL;

/// Pages a task's workload touches unless `--pages` says otherwise.
const DEFAULT_PAGES: u64 = 4096;
/// Simulated CPUs unless `--cpus` says otherwise.
const DEFAULT_CPUS: u64 = 4;
/// System calls each task makes unless `--calls` says otherwise.
const DEFAULT_CALLS: u64 = 2;
/// The scheduler's seed unless `--seed` says otherwise.
const DEFAULT_SEED: u64 = 1;
/// The lazy-mode design of the matrix unless `--design` says otherwise.
const DEFAULT_DESIGN: DesignKind = DesignKind::Counters;

/// Options of `lazymmu compare`.
#[derive(Args, Debug, Clone)]
#[command(
    after_help = format!("Primitive names and every value an option takes: --help.\n\n{STATUSES}"),
    after_long_help = long_help(),
)]
pub struct CompareArgs {
    /// Backends to run (comma-separated).
    #[arg(long, value_name = "NAME", value_delimiter = ',', default_value = ALL,
          value_parser = names::backend_values())]
    pub backend: Vec<String>,
    /// Workloads to run (comma-separated): those of the backend × workload
    /// matrix and those of the MM neighbours.
    #[arg(long, value_name = "NAME", value_delimiter = ',', default_value = ALL,
          value_parser = names::workload_values())]
    pub workload: Vec<String>,
    /// Pages each task's workload touches.
    #[arg(long, default_value_t = DEFAULT_PAGES,
          value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub pages: u64,
    /// Simulated CPUs: up to 64 for the page-table workloads, ctxswitch
    /// and pgmap, up to 2048 for ctxswitch-bench (one socket of that many
    /// cores on the x86 cost table; see --topology).
    #[arg(long, default_value_t = DEFAULT_CPUS,
          value_parser = clap::value_parser!(u64).range(1..=MAX_CPUS as u64))]
    pub cpus: u64,
    /// The machine ctxswitch-bench runs on instead of --cpus:
    /// SOCKETSxCORESxTHREADS on the x86 cost table (e.g. 8x28x2), or
    /// power8-e880 (16x12x8, 1536 CPUs, the POWER8 of Linux 6.4's lazy-TLB
    /// shootdown figures, on the powerpc cost table, printed next to those
    /// figures) or xeon-8176 (8x28x2).
    #[arg(long, value_name = "SHAPE")]
    pub topology: Option<String>,
    /// System calls each task of the matrix makes, each over --pages
    /// pages.
    #[arg(long, default_value_t = DEFAULT_CALLS,
          value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub calls: u64,
    /// Charge the kernel's own work around each system call from FILE (as
    /// `lazymmu calibrate --output` writes it) instead of the calibration
    /// shipped with lazymmu.
    #[arg(long, value_name = "FILE")]
    pub calibration: Option<PathBuf>,
    /// Also print every published figure of lazy-MMU batching next to the
    /// model's figure for the same configuration, and the factor between
    /// them.
    #[arg(long)]
    pub published: bool,
    /// Seed of the scheduler's random choices.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub seed: u64,
    /// Lazy-mode design of the matrix. The three designs' comparison is
    /// printed whatever this says.
    #[arg(long, value_name = "NAME", default_value = DEFAULT_DESIGN.name(),
          value_parser = names::design_values())]
    pub design: String,
    /// Override a cost of the cost table: NAME=CYCLES, NAME a primitive or
    /// a piece of the kernel's own work (listed below); repeatable.
    #[arg(long = "cost", value_name = "NAME=CYCLES", value_parser = costs::parse)]
    pub cost: Vec<Override>,
    /// Policies of the MM-neighbour workloads (comma-separated).
    #[arg(long, value_name = "NAME", value_delimiter = ',', default_value = ALL,
          value_parser = names::policy_values())]
    pub policy: Vec<String>,
    /// Processes of the vmalloc-grow workload (comma-separated).
    #[arg(long, value_name = "N", value_delimiter = ',', default_value = "10,1000,10000",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    pub processes: Vec<usize>,
    /// KASAN hazard: read shadow entries back inside the section without
    /// pausing (the simulator must report the stale read-back).
    #[arg(long)]
    pub kasan_read_back: bool,
    /// Also print every run's cycles and primitive counts, and the
    /// neighbours' counts.
    #[arg(long)]
    pub detail: bool,
    /// Print one JSON document instead of the tables.
    #[arg(long)]
    pub json: bool,
    /// Draw the chart to FILE as SVG: a heatmap of the matrix, or for one
    /// workload, bars of each backend's cycles.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Draw the chart to FILE as PNG.
    #[arg(long, value_name = "FILE")]
    pub png: Option<PathBuf>,
    /// Replay a program trace written by `lazymmu record` instead of the
    /// built-in workloads: its calls, grouped by kind, are the matrix's
    /// columns. Takes --backend, --design, --cpus and --cost.
    #[arg(long, value_name = "FILE", conflicts_with_all = [
        "workload", "pages", "policy", "processes", "kasan_read_back",
        "detail", "json", "svg", "png", "max_memory", "seed",
    ])]
    pub trace: Option<PathBuf>,
    /// Refuse a run estimated to need more memory than SIZE (bytes, or
    /// with K, M or G). Default: half the memory available when the run
    /// starts.
    #[arg(long, value_name = "SIZE", value_parser = budget::parse_size)]
    pub max_memory: Option<u64>,
}

fn long_help() -> String {
    format!(
        "Costs counted in the tables (--detail, --json) and priced by --cost:\n{}\n\
         The matrix shows lazy/eager modelled cycles: below 1 lazy sections save, above 1 they \
         cost more.\n\n{STATUSES}",
        names::glossary()
    )
}

/// What a comparison runs, from the options.
struct Selection {
    backends: Vec<BackendKind>,
    workloads: Vec<WorkloadKind>,
    designs: Vec<DesignKind>,
    neighbours: neighbours::Selection,
}

impl Selection {
    fn new(args: &CompareArgs) -> Result<Self> {
        let picked = |values: &[String], name: &str| values.iter().any(|v| v == ALL || v == name);
        let backends = BackendKind::ALL
            .iter()
            .copied()
            .filter(|b| picked(&args.backend, b.name()))
            .collect();
        let workloads: Vec<WorkloadKind> = WorkloadKind::ALL
            .iter()
            .copied()
            .filter(|w| picked(&args.workload, w.name()))
            .collect();
        let designs = DesignKind::ALL
            .iter()
            .copied()
            .filter(|d| args.design == ALL || args.design == d.name())
            .collect();
        if !workloads.is_empty() && args.cpus as usize > MAX_BACKEND_CPUS {
            return Err(usage(format!(
                "--cpus {}: the page-table workloads run on at most {MAX_BACKEND_CPUS} CPUs",
                args.cpus
            )));
        }
        Ok(Self {
            backends,
            workloads,
            designs,
            neighbours: neighbours::Selection::new(
                &args.workload,
                &args.policy,
                args.topology.as_deref(),
            )?,
        })
    }

    /// The runs of the matrix, in table order.
    fn configs(&self, args: &CompareArgs, kernel_work: &KernelWorkSource) -> Vec<RunConfig> {
        let mut configs = Vec::new();
        for &design in &self.designs {
            for &backend in &self.backends {
                for &workload in &self.workloads {
                    for &mode in ModeKind::ALL {
                        let mut cfg = RunConfig::new(backend, workload, mode);
                        cfg.design = design;
                        cfg.pages = args.pages;
                        cfg.cpus = args.cpus as usize;
                        cfg.calls = args.calls;
                        cfg.seed = args.seed;
                        cfg.costs = args.cost.clone();
                        cfg.kernel_work = kernel_work.clone();
                        cfg.read_back_without_pause = args.kasan_read_back;
                        configs.push(cfg);
                    }
                }
            }
        }
        configs
    }
}

/// The options that changed a run from the defaults, for the commands that
/// reproduce it and the headings that describe it.
pub struct Reproduce {
    pages: u64,
    cpus: u64,
    calls: u64,
    calibration: Option<PathBuf>,
    seed: u64,
    kasan_read_back: bool,
    costs: Vec<Override>,
}

impl Reproduce {
    fn new(args: &CompareArgs) -> Self {
        Self {
            pages: args.pages,
            cpus: args.cpus,
            calls: args.calls,
            calibration: args.calibration.clone(),
            seed: args.seed,
            kasan_read_back: args.kasan_read_back,
            costs: args.cost.clone(),
        }
    }

    /// ` --opt value ...` for every option that differs from its default:
    /// the machine's size and the KASAN hazard when `machine` (the matrix's
    /// runs), the seed and the costs.
    fn options(&self, machine: bool) -> String {
        let mut text = String::new();
        if machine && self.pages != DEFAULT_PAGES {
            text += &format!(" --pages {}", self.pages);
        }
        if machine && self.cpus != DEFAULT_CPUS {
            text += &format!(" --cpus {}", self.cpus);
        }
        if machine && self.calls != DEFAULT_CALLS {
            text += &format!(" --calls {}", self.calls);
        }
        if let (true, Some(path)) = (machine, &self.calibration) {
            text += &format!(" --calibration {}", path.display());
        }
        if self.seed != DEFAULT_SEED {
            text += &format!(" --seed {}", self.seed);
        }
        if machine && self.kasan_read_back {
            text += " --kasan-read-back";
        }
        for c in &self.costs {
            text += &format!(" --cost {}", costs::argument(c));
        }
        text
    }

    /// The machine and the options that changed the matrix's runs, for
    /// headings: `4 CPUs, 2 calls × 4,096 pages a task, seed 1; dsb=7`.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "{} CPUs, {} calls × {} pages a task, seed {}",
            self.cpus,
            self.calls,
            thousands(self.pages),
            self.seed
        );
        if let Some(path) = &self.calibration {
            text += &format!("; kernel work from {}", path.display());
        }
        for c in &self.costs {
            text += &format!("; {}", costs::argument(c));
        }
        if self.kasan_read_back {
            text += "; KASAN reads back without pausing";
        }
        text
    }

    /// The command that reruns one run of the matrix.
    fn run(&self, r: &RunResult) -> String {
        let mut command = format!(
            "lazymmu compare --backend {} --workload {}",
            r.backend, r.workload
        );
        if r.design != DEFAULT_DESIGN {
            command += &format!(" --design {}", r.design);
        }
        command + &self.options(true)
    }

    /// The command that reruns the designs' comparison (which depends only
    /// on the seed and the CPUs).
    fn designs(&self) -> String {
        let mut command = "lazymmu compare --backend xen-pv --workload fork".to_owned();
        if self.cpus != DEFAULT_CPUS {
            command += &format!(" --cpus {}", self.cpus);
        }
        if self.seed != DEFAULT_SEED {
            command += &format!(" --seed {}", self.seed);
        }
        command
    }
}

/// An output file opened before the runs start, so that a path that
/// cannot be written fails at once.
struct Output {
    path: PathBuf,
    file: File,
}

impl Output {
    fn create(path: &Path) -> Result<Self> {
        let file =
            File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(Self {
            path: path.to_owned(),
            file,
        })
    }
}

/// The kernel's own work the matrix charges: the shipped calibration, or
/// the one `--calibration` names.
///
/// # Errors
/// A file that cannot be read (an I/O failure naming it) or that is not a
/// usable calibration (refused input naming it and what is wrong).
fn kernel_work(args: &CompareArgs) -> Result<KernelWorkSource> {
    let Some(path) = &args.calibration else {
        return Ok(KernelWorkSource::Builtin);
    };
    match Calibration::load(path) {
        Ok(calibration) => Ok(KernelWorkSource::Given(KernelWork::shared(&calibration))),
        Err(error) if matches!(error.kind, CalibrationErrorKind::Read { .. }) => {
            Err(anyhow::Error::new(error))
        }
        Err(error) => Err(bad_input(error)),
    }
}

/// Runs `lazymmu compare`: exit status 0, or [`FINDING`] when an invariant
/// was violated.
///
/// # Errors
/// Usage errors (a selection that cannot run, a run over the memory
/// limit); I/O errors writing the outputs, naming the path.
pub fn run(args: &CompareArgs) -> Result<ExitCode> {
    if let Some(path) = &args.trace {
        return trace::run(args, path);
    }
    let selection = Selection::new(args)?;
    let charts = args.svg.is_some() || args.png.is_some();
    if charts && selection.workloads.is_empty() {
        return Err(usage(
            "--svg and --png draw the lazy/eager cycles of the backend × workload matrix, \
             and --workload selects none of its workloads (only MM neighbours)",
        ));
    }
    let kernel_work = kernel_work(args)?;
    let configs = selection.configs(args, &kernel_work);
    budget::check(&configs, &selection.neighbours, args)?;
    let svg = args.svg.as_deref().map(Output::create).transpose()?;
    let png = args.png.as_deref().map(Output::create).transpose()?;

    let design_runs = if configs.is_empty() { 0 } else { 3 };
    let neighbour_runs = selection.neighbours.runs(&args.processes);
    let published_runs = usize::from(args.published);
    let progress = Progress::new(
        (configs.len() + design_runs + neighbour_runs + published_runs) as u64,
        "runs",
    );
    let mut results = Vec::with_capacity(configs.len());
    for cfg in &configs {
        progress.message(format!("{} {} {}", cfg.backend, cfg.workload, cfg.mode));
        let mut result = run_config(cfg);
        // Keep what the report prints: the schedule's trace and all but the
        // first violation would hold memory for every run until the end.
        result.trace = Default::default();
        result.violations.truncate(1);
        results.push(result);
        progress.tick();
    }
    progress.message("lazy-mode designs");
    let designs = if configs.is_empty() {
        Vec::new()
    } else {
        compare_designs(args.seed, args.cpus as usize)
    };
    (0..design_runs).for_each(|_| progress.tick());
    progress.message("MM neighbours");
    let neighbour_rows = neighbours::run(
        &selection.neighbours,
        args.cpus as usize,
        &args.processes,
        args.seed,
        &args.cost,
        || progress.tick(),
    )?;
    let published = args.published.then(|| {
        progress.message("published figures");
        let rows = side_by_side::compare(&side_by_side::Selection {
            kernel_work: kernel_work.clone(),
        });
        progress.tick();
        rows
    });
    drop(progress);

    let violations: u64 = results.iter().map(|r| r.violation_count).sum::<u64>()
        + designs.iter().map(|d| d.violations).sum::<u64>()
        + neighbour_rows.iter().map(|r| r.violations).sum::<u64>();
    let reproduce = Reproduce::new(args);

    let mut out = BufWriter::new(std::io::stdout().lock());
    if args.json {
        write_json(
            &mut out,
            args,
            &results,
            &designs,
            &neighbour_rows,
            published.as_deref(),
        )?;
    } else {
        let width = output_width();
        let screen = Screen {
            args,
            results: &results,
            designs: &designs,
            neighbours: &neighbour_rows,
            published: published.as_deref(),
            reproduce: &reproduce,
            width,
        };
        screen.write(&mut out)?;
    }
    out.flush()?;
    drop(out);

    let matrices = matrix::matrices(&results);
    for (output, format) in [(svg, chart::Format::Svg), (png, chart::Format::Png)] {
        if let Some(Output { path, mut file }) = output {
            let drawn = chart::draw(
                &mut file,
                format,
                &matrices,
                &results,
                &reproduce.describe(),
            )
            .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!("wrote {} ({drawn})", path.display());
        }
    }
    Ok(ExitCode::from(if violations > 0 { FINDING } else { 0 }))
}

/// The text report.
struct Screen<'a> {
    args: &'a CompareArgs,
    results: &'a [RunResult],
    designs: &'a [DesignReport],
    neighbours: &'a [lazymmu_sim::neighbours::NeighbourRow],
    published: Option<&'a [side_by_side::Comparison]>,
    reproduce: &'a Reproduce,
    width: usize,
}

impl Screen<'_> {
    /// The screen, section by section: the headline, the runs in full when
    /// asked, the MM neighbours, the designs, and last the violations with
    /// the commands that reproduce them. The published figures next to
    /// the model's (`--published`) come right under the headline.
    fn write(&self, out: &mut impl Write) -> Result<()> {
        self.write_headline(out)?;
        if let Some(rows) = self.published {
            write!(out, "\n{}", side_by_side::format_table(rows))?;
        }
        if self.args.detail {
            self.write_runs(out)?;
            neighbours::write_detail(out, self.neighbours, self.width)?;
        } else {
            neighbours::write_summary(out, self.neighbours, self.width)?;
        }
        neighbours::write_published(out, self.neighbours, self.width)?;
        self.write_designs(out)?;
        if !self.args.detail && !self.results.is_empty() {
            writeln!(
                out,
                "\n--detail: cycles and primitive counts of every run; --help: what the names mean"
            )?;
        }
        self.write_violations(out)?;
        neighbours::write_violations(out, self.neighbours, self.reproduce)?;
        Ok(())
    }

    /// The matrix (one per design) and its one-line legend.
    fn write_headline(&self, out: &mut impl Write) -> Result<()> {
        let matrices = matrix::matrices(self.results);
        let machine = self.reproduce.describe();
        for (index, m) in matrices.iter().enumerate() {
            if index > 0 {
                writeln!(out)?;
            }
            let title = format!(
                "lazy/eager modelled cycles, design {} ({machine})",
                m.design
            );
            matrix::write(out, m, &title, self.width)?;
        }
        if !matrices.is_empty() {
            writeln!(out, "{}", matrix::LEGEND)?;
        }
        let broken = self.results.iter().any(|r| r.violation_count > 0)
            || self.neighbours.iter().any(|r| r.violations > 0);
        if broken {
            writeln!(
                out,
                "{}: a run broke an invariant; the violations follow the tables",
                matrix::BROKEN
            )?;
        }
        Ok(())
    }

    /// Every run on a line of its own, its primitive counts under it.
    fn write_runs(&self, out: &mut impl Write) -> Result<()> {
        if self.results.is_empty() {
            return Ok(());
        }
        writeln!(out, "\nevery run: modelled cycles and primitive counts")?;
        let mut table = Table::new(
            [
                "backend",
                "workload",
                "design",
                "mode",
                "cycles",
                "lazy/eager",
                "violations",
            ],
            4,
        );
        for r in self.results {
            let ratio = match r.mode {
                ModeKind::Lazy => matrix::ratio_of(self.results, r).map_or("-".into(), ratio),
                ModeKind::Eager => String::new(),
            };
            table.row([
                r.backend.name().to_owned(),
                r.workload.name().to_owned(),
                r.design.name().to_owned(),
                r.mode.name().to_owned(),
                thousands(r.cycles),
                ratio,
                thousands(r.violation_count),
            ]);
        }
        // One block whatever the width: the counts go under each row.
        let lines = table.lines(usize::MAX, "");
        writeln!(out, "{}", lines[0])?;
        for (line, r) in lines[1..].iter().zip(self.results) {
            writeln!(out, "{line}")?;
            let counts: Vec<String> = r
                .counts
                .iter()
                .map(|(p, n)| format!("{p}={}", thousands(*n)))
                .collect();
            for line in wrap(&counts, self.width, "    ") {
                writeln!(out, "{line}")?;
            }
        }
        Ok(())
    }

    fn write_designs(&self, out: &mut impl Write) -> Result<()> {
        if self.designs.is_empty() {
            return Ok(());
        }
        writeln!(
            out,
            "\nlazy-mode designs: xen-pv fork under preemption and migration, x86-pks nested \
             sections, sleep"
        )?;
        let mut table = Table::new(
            [
                "design",
                "bytes/task",
                "preempted in section",
                "sleep in section",
                "nested keys",
                "fork cycles",
                "violations",
            ],
            1,
        )
        .left(2)
        .left(3)
        .left(4);
        for d in self.designs {
            table.row([
                d.design.name().to_owned(),
                d.bytes_per_task.to_string(),
                preempt_label(d),
                if d.sleep_reported {
                    "reported"
                } else {
                    "allowed"
                }
                .to_owned(),
                if d.nested_key_restored {
                    "restored"
                } else {
                    "WRONG"
                }
                .to_owned(),
                thousands(d.cycles),
                thousands(d.violations),
            ]);
        }
        table.write(out, self.width, "")?;
        if self.args.detail {
            for d in self.designs {
                let counts: Vec<String> = d
                    .counts
                    .iter()
                    .map(|(p, n)| format!("{p}={}", thousands(*n)))
                    .collect();
                writeln!(out, "{} fork:", d.design)?;
                for line in wrap(&counts, self.width, "    ") {
                    writeln!(out, "{line}")?;
                }
            }
        }
        Ok(())
    }

    fn write_violations(&self, out: &mut impl Write) -> Result<()> {
        for d in self.designs.iter().filter(|d| d.violations > 0) {
            writeln!(
                out,
                "\ndesign {}: {} violation(s); reproduce with:\n  {}",
                d.design,
                thousands(d.violations),
                self.reproduce.designs()
            )?;
            if let Some(v) = &d.first_violation {
                write!(out, "{v}")?;
            }
        }
        for r in self.results.iter().filter(|r| r.violation_count > 0) {
            writeln!(
                out,
                "\n{} {} {} ({}): {} violation(s); reproduce with:\n  {}",
                r.backend,
                r.workload,
                r.mode,
                r.design,
                thousands(r.violation_count),
                self.reproduce.run(r)
            )?;
            if let Some(v) = r.violations.first() {
                write!(out, "{v}")?;
            }
        }
        Ok(())
    }
}

fn preempt_label(d: &DesignReport) -> String {
    if d.preempted_in_section == 0 {
        "never: preemption off".to_owned()
    } else if d.preemptions_survived {
        format!("{} times, batch kept", thousands(d.preempted_in_section))
    } else {
        format!("{} times, batch LOST", thousands(d.preempted_in_section))
    }
}

#[derive(Serialize)]
struct JsonRow {
    backend: &'static str,
    workload: &'static str,
    mode: &'static str,
    design: &'static str,
    counts: serde_json::Map<String, serde_json::Value>,
    cycles: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    lazy_eager: Option<f64>,
    /// System calls the run made (every task's): counts per call are
    /// `counts / calls`.
    calls: u64,
    pte_updates: u64,
    violations: u64,
}

#[derive(Serialize)]
struct JsonDesign {
    design: &'static str,
    bytes_per_task: usize,
    counts: serde_json::Map<String, serde_json::Value>,
    cycles: u64,
    preempted_in_section: u64,
    preemptions_survived: bool,
    sleep_reported: bool,
    nested_key_restored: bool,
    violations: u64,
}

fn counts_map(
    counts: &[(lazymmu_sim::cost::Cost, u64)],
) -> serde_json::Map<String, serde_json::Value> {
    counts
        .iter()
        .map(|(p, n)| (p.name().to_string(), serde_json::Value::from(*n)))
        .collect()
}

/// One JSON document: the options, a row per run (matrix runs with
/// `lazy_eager` on their lazy rows; neighbour runs with their `policy`),
/// and the designs.
/// One published figure and the model's, for `--json`.
fn json_published(row: &side_by_side::Comparison) -> serde_json::Value {
    let record = row.record;
    let mut value = serde_json::json!({
        "source": record.source.title,
        "url": record.source.url,
        "machine": record.machine,
        "workload": record.workload,
        "kernel": record.kernel,
        "compared": record.compared,
        "published": record.figure,
    });
    match &row.model {
        Ok(model) => {
            value["model"] = model.text.clone().into();
            value["factor"] = model.factor.into();
            value["configuration"] = model.configuration.clone().into();
        }
        Err(side_by_side::NotModelled(why)) => value["not_modelled"] = (*why).into(),
    }
    value
}

fn write_json(
    out: &mut impl Write,
    args: &CompareArgs,
    results: &[RunResult],
    designs: &[DesignReport],
    neighbour_rows: &[lazymmu_sim::neighbours::NeighbourRow],
    published: Option<&[side_by_side::Comparison]>,
) -> Result<()> {
    let mut rows: Vec<serde_json::Value> = results
        .iter()
        .map(|r| {
            serde_json::to_value(JsonRow {
                backend: r.backend.name(),
                workload: r.workload.name(),
                mode: r.mode.name(),
                design: r.design.name(),
                counts: counts_map(&r.counts),
                cycles: r.cycles,
                lazy_eager: (r.mode == ModeKind::Lazy)
                    .then(|| matrix::ratio_of(results, r))
                    .flatten(),
                calls: r.calls,
                pte_updates: r.pte_updates,
                violations: r.violation_count,
            })
        })
        .collect::<Result<_, _>>()?;
    rows.extend(neighbours::json_rows(neighbour_rows));
    let designs: Vec<JsonDesign> = designs
        .iter()
        .map(|d| JsonDesign {
            design: d.design.name(),
            bytes_per_task: d.bytes_per_task,
            counts: counts_map(&d.counts),
            cycles: d.cycles,
            preempted_in_section: d.preempted_in_section,
            preemptions_survived: d.preemptions_survived,
            sleep_reported: d.sleep_reported,
            nested_key_restored: d.nested_key_restored,
            violations: d.violations,
        })
        .collect();
    let mut doc = serde_json::json!({
        "seed": args.seed,
        "pages": args.pages,
        "cpus": args.cpus,
        "calls": args.calls,
        "rows": rows,
    });
    if !designs.is_empty() {
        doc["designs"] = serde_json::to_value(designs)?;
    }
    if let Some(published) = published {
        doc["published"] = published.iter().map(json_published).collect();
    }
    serde_json::to_writer_pretty(&mut *out, &doc)?;
    writeln!(out)?;
    Ok(())
}
