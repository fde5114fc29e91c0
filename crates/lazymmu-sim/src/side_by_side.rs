//! Every published figure next to the model's figure for the same
//! configuration, and the factor between them.
//!
//! For each record of [`PUBLISHED`] the model runs what the source
//! describes — the same mechanism against the same baseline, the same
//! system call at the same size where the source gives one — or says why
//! it cannot ([`NotModelled`]). The configurations are chosen from what the
//! sources state, never from their figures; where a source leaves
//! something out (the CPU count, the size of "a large range"), the
//! configuration says what the model assumed.
//!
//! Comparing the two: every reading is turned into the time (or event
//! count) of the compared configuration relative to its baseline — 0.75
//! for "-25%", 1/15 for "~15x faster" — for the model and for the source,
//! and the factor is the model's ratio over the published one: 1 is
//! agreement, above 1 the model finds the compared configuration slower
//! (or saving less) than was measured.
//!
//! ```no_run
//! use lazymmu_sim::side_by_side::{compare, Selection};
//!
//! for row in compare(&Selection::default()) {
//!     if let Ok(model) = &row.model {
//!         println!("{}: published {}, model {}", row.record.workload, row.record.figure, model.text);
//!     }
//! }
//! ```

use std::sync::Arc;

use lazymmu::mm::active_mm::LazyTlbPolicy;

use crate::cost::Primitive;
use crate::machine::topology::{NamedMachine, NAMED_MACHINES};
use crate::neighbours::ctxswitch::{self, CtxSwitchConfig};
use crate::published::{
    PublishedFigure, Reading, Topic, ARM64_BATCH_BARRIERS_COMMIT, ARM64_PERF_SERIES_V4, KPKEYS_V5,
    PUBLISHED,
};
use crate::run::run;
use crate::scenario::{
    BackendKind, KernelWorkSource, ModeKind, RunConfig, RunResult, WorkloadKind,
};

/// Why the model has no figure for a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotModelled(pub &'static str);

/// The model's figure for one record.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelFigure {
    /// The figure in the record's own reading (percent, times, count).
    pub value: f64,
    /// As printed.
    pub text: String,
    /// The model's compared/baseline ratio (time or events).
    pub ratio: f64,
    /// The published compared/baseline ratio.
    pub published_ratio: f64,
    /// `ratio / published_ratio`.
    pub factor: f64,
    /// What the model ran.
    pub configuration: String,
}

/// One published record and the model's answer.
#[derive(Clone, Debug)]
pub struct Comparison {
    /// The published figure.
    pub record: &'static PublishedFigure,
    /// The model's figure, or why there is none.
    pub model: Result<ModelFigure, NotModelled>,
}

/// What the comparison runs with.
#[derive(Clone, Debug)]
pub struct Selection {
    /// The kernel's own work (the shipped calibration by default).
    pub kernel_work: KernelWorkSource,
}

impl Default for Selection {
    fn default() -> Self {
        Self {
            kernel_work: KernelWorkSource::Builtin,
        }
    }
}

/// The 1 GB mapping of micromm's fork and munmap, in 4 KiB pages.
const GIB_PAGES: u64 = 262_144;
/// "Large memory ranges" of the s390 figures, unstated: 16 MiB.
const S390_PAGES: u64 = 4096;

/// One model run: a backend and workload, a mode, and the knobs the
/// sources fix.
#[derive(Clone, Debug)]
struct Case {
    backend: BackendKind,
    workload: WorkloadKind,
    mode: ModeKind,
    pages: u64,
    cpus: usize,
    tlb_range: bool,
    key_batching: bool,
    spread: bool,
}

impl Case {
    fn new(backend: BackendKind, workload: WorkloadKind, mode: ModeKind, pages: u64) -> Case {
        Case {
            backend,
            workload,
            mode,
            pages,
            cpus: 4,
            tlb_range: true,
            key_batching: true,
            spread: false,
        }
    }

    fn config(&self, selection: &Selection) -> RunConfig {
        let mut cfg = RunConfig::new(self.backend, self.workload, self.mode);
        cfg.pages = self.pages;
        cfg.cpus = self.cpus;
        cfg.tasks = 1;
        cfg.rates = None;
        cfg.tlb_range = self.tlb_range;
        cfg.key_batching = self.key_batching;
        cfg.spread = self.spread;
        cfg.kernel_work = selection.kernel_work.clone();
        cfg.calls = if self.workload == WorkloadKind::Vmalloc {
            // Enough calls for the lazy purge to happen once, so that its
            // flush is amortised as test_vmalloc's 500,000 loops amortise
            // it.
            crate::world::lazy_max_pages(self.cpus) / (self.pages + 1) + 2
        } else {
            2
        };
        cfg
    }

    /// `arm64 vmalloc lazy, 16 pages, 8 CPUs, FEAT_TLBIRANGE`.
    fn describe(&self) -> String {
        self.describe_as(&format!("{} {} {}", self.backend, self.workload, self.mode))
    }

    /// The compared case against `baseline`, naming what the two share
    /// once: `arm64 vmalloc lazy against eager, 16 pages, ...`.
    fn against(&self, baseline: &Case) -> String {
        let same_but_mode = Case {
            mode: self.mode,
            ..baseline.clone()
        };
        if same_but_mode.describe() == self.describe() {
            return self.describe_as(&format!(
                "{} {} {} against {}",
                self.backend, self.workload, self.mode, baseline.mode
            ));
        }
        let same_but_backend = Case {
            backend: self.backend,
            key_batching: self.key_batching,
            ..baseline.clone()
        };
        if same_but_backend.describe_as("") == self.describe_as("")
            && self.mode == baseline.mode
            && self.workload == baseline.workload
        {
            let key = if self.key_batching {
                ""
            } else {
                " (key not batched)"
            };
            let shared = Case {
                key_batching: true,
                ..self.clone()
            };
            return shared.describe_as(&format!(
                "{}{key} against {}: {} {}",
                self.backend, baseline.backend, self.workload, self.mode
            ));
        }
        format!("{} against {}", self.describe(), baseline.describe())
    }

    /// The description with `head` in place of backend, workload and mode.
    fn describe_as(&self, head: &str) -> String {
        let mut text = format!(
            "{head}, {} page{}, {} CPUs",
            self.pages,
            if self.pages == 1 { "" } else { "s" },
            self.cpus
        );
        if self.backend.is_aarch64() {
            text.push_str(if self.tlb_range {
                ", FEAT_TLBIRANGE"
            } else {
                ", no FEAT_TLBIRANGE"
            });
        }
        if !self.key_batching {
            text.push_str(", key not batched");
        }
        if self.spread {
            text.push_str(", space on 2 CPUs");
        }
        text
    }
}

/// Cycles per call of a case.
fn cycles_per_call(case: &Case, selection: &Selection) -> (f64, RunResult) {
    let result = run(&case.config(selection));
    let calls = result.calls.max(1) as f64;
    (result.cycles as f64 / calls, result)
}

/// What a record compares: the compared run over the baseline run, or a
/// derived ratio.
enum Plan {
    /// Time of `compared` over time of `baseline`.
    Time { baseline: Case, compared: Case },
    /// The best time ratio over several pairs ("up to").
    Best(Vec<(Case, Case)>),
    /// Quiesce events (global IPTEs and IDTEs) of `compared` over
    /// `baseline`.
    Quiesces { baseline: Case, compared: Case },
    /// Context switches per second of the lazy-TLB benchmark on the
    /// machine the figure was published for: this policy's over
    /// refcounting's.
    Switches(LazyTlbPolicy, &'static NamedMachine),
}

/// The model's plan for a record, or why there is none.
fn plan(record: &PublishedFigure, selection: &Selection) -> Result<Plan, NotModelled> {
    use BackendKind as B;
    use ModeKind::{Eager, Lazy};
    use WorkloadKind as W;
    let workload = record.workload;
    let huge = workload.contains("h:1");
    match record.topic {
        Topic::Arm64BarrierBatching => {
            if record.source.title == ARM64_BATCH_BARRIERS_COMMIT.title {
                // "up to 30%": the best saving over the sizes the series
                // measured, on a CPU with range operations (not stated).
                let pairs = [1, 4, 16, 64, 256, 512]
                    .into_iter()
                    .map(|pages| {
                        (
                            Case::new(B::Arm64, W::Vmalloc, Eager, pages),
                            Case::new(B::Arm64, W::Vmalloc, Lazy, pages),
                        )
                    })
                    .collect();
                return Ok(Plan::Best(pairs));
            }
            debug_assert_eq!(record.source.title, ARM64_PERF_SERIES_V4.title);
            let pages = record.pages.ok_or(NotModelled("no size"))?;
            // Apple M2 (Armv8.6, 8 cores) has FEAT_TLBIRANGE; Ampere Altra
            // (Neoverse N1, Armv8.2, 80 cores; the model's largest machine
            // is 64) does not.
            let (tlb_range, cpus) = if record.machine.contains("M2") {
                (true, 8)
            } else {
                (false, lazymmu::cpu::MAX_CPUS)
            };
            let case = |mode| Case {
                tlb_range,
                cpus,
                ..Case::new(B::Arm64, W::Vmalloc, mode, pages)
            };
            Ok(Plan::Time {
                baseline: case(Eager),
                compared: case(Lazy),
            })
        }
        Topic::ProtectedPageTables => {
            debug_assert_eq!(record.source.title, KPKEYS_V5.title);
            if workload.contains("kernbench") {
                return Err(NotModelled("a kernel build is not a modelled workload"));
            }
            if workload.contains("random_size") || workload.contains("vm_map_ram") {
                return Err(NotModelled(
                    "random sizes and vm_map_ram are not modelled workloads",
                ));
            }
            if huge {
                return Err(NotModelled(
                    "large folios (h:1): Linux batches PTE operations per folio, which the model does not",
                ));
            }
            let work = if workload.contains("fork") {
                W::Fork
            } else if workload.contains("munmap") {
                W::Munmap
            } else {
                W::Vmalloc
            };
            let pages = record.pages.unwrap_or(GIB_PAGES);
            // The baseline 6.17-rc1 batches arm64's barriers; Graviton3
            // (Neoverse V1, Armv8.4) has FEAT_TLBIRANGE; the CPU count is
            // not stated.
            let baseline = Case::new(B::Arm64, work, Lazy, pages);
            let batched = record.compared.contains("with lazy MMU batching");
            let compared = Case {
                key_batching: batched,
                ..Case::new(B::Arm64Poe, work, Lazy, pages)
            };
            Ok(Plan::Time { baseline, compared })
        }
        Topic::S390IpteBatching => {
            // Per-PTE IPTEs before the change (the commit message's "up to
            // PTRS_PER_PTE single-IPTEs"): the space is attached to more
            // than one CPU.
            let case = |workload, mode| Case {
                spread: true,
                cpus: 2,
                ..Case::new(B::S390, workload, mode, S390_PAGES)
            };
            let work = if workload.starts_with("mprotect") || workload.contains("mprotect()") {
                W::Mprotect
            } else if workload.starts_with("munmap") {
                W::Munmap
            } else if workload.starts_with("mremap") {
                W::Mremap
            } else if workload.starts_with("fork") {
                W::Fork
            } else {
                return Err(NotModelled("not a system call the model runs"));
            };
            if record.reading == Reading::TimesFewer {
                let _ = selection;
                return Ok(Plan::Quiesces {
                    baseline: case(work, Eager),
                    compared: case(work, Lazy),
                });
            }
            Ok(Plan::Time {
                baseline: case(work, Eager),
                compared: case(work, Lazy),
            })
        }
        Topic::LazyTlbShootdown => {
            if !workload.contains("context_switch1") {
                return Err(NotModelled("a kernel build is not a modelled workload"));
            }
            let machine = NAMED_MACHINES
                .iter()
                .find(|m| m.published_as == Some(record.machine))
                .ok_or(NotModelled("no modelled machine of the published shape"))?;
            if record.compared.contains("SHOOTDOWN") {
                Ok(Plan::Switches(LazyTlbPolicy::Shootdown, machine))
            } else {
                Ok(Plan::Switches(LazyTlbPolicy::Refcount, machine))
            }
        }
    }
}

/// The published compared/baseline ratio of a record.
fn published_ratio(record: &PublishedFigure) -> Option<f64> {
    let figure = record.parse().ok()?;
    Some(match record.reading {
        Reading::TimeChangePercent => 1.0 + figure.value / 100.0,
        Reading::TimeSavedUpToPercent => 1.0 - figure.value / 100.0,
        Reading::TimesFaster | Reading::TimesFewer => 1.0 / figure.value,
        Reading::TimesSlower => figure.value,
        Reading::Quantity(_) => figure.value,
    })
}

/// The model's figure, written in the record's reading.
fn in_reading(reading: Reading, ratio: f64) -> (f64, String) {
    match reading {
        Reading::TimeChangePercent => {
            let v = (ratio - 1.0) * 100.0;
            (v, format!("{v:+.2}%"))
        }
        Reading::TimeSavedUpToPercent => {
            let v = (1.0 - ratio) * 100.0;
            (v, format!("up to {v:.1}%"))
        }
        Reading::TimesFaster | Reading::TimesFewer => {
            let v = 1.0 / ratio;
            (v, format!("{v:.2}x"))
        }
        Reading::TimesSlower => (ratio, format!("{ratio:.2}x")),
        Reading::Quantity(_) => (ratio, format!("{ratio:.2}")),
    }
}

/// Quiesce events of a run: global IPTEs and IDTEs.
fn quiesces(result: &RunResult) -> f64 {
    (result.count(Primitive::Ipte) + result.count(Primitive::FullFlush)) as f64
}

/// Context switches per million cycles of the lazy-TLB benchmark on
/// `machine`, its topology on its cost table.
fn switch_rate(policy: LazyTlbPolicy, machine: &NamedMachine) -> f64 {
    let config = CtxSwitchConfig::ping_pong(policy, machine.topology, machine.platform);
    let row = ctxswitch::run(&config);
    row.counts.get("switches_per_mcycle").copied().unwrap_or(0) as f64
}

/// The model's figure for one record.
fn model_figure(
    record: &PublishedFigure,
    selection: &Selection,
) -> Result<ModelFigure, NotModelled> {
    let plan = plan(record, selection)?;
    let published = published_ratio(record).ok_or(NotModelled("figure does not parse"))?;
    let (ratio, published_ratio, configuration) = match plan {
        Plan::Time { baseline, compared } => {
            let (b, _) = cycles_per_call(&baseline, selection);
            let (c, _) = cycles_per_call(&compared, selection);
            (c / b, published, compared.against(&baseline))
        }
        Plan::Best(pairs) => {
            let mut best = f64::INFINITY;
            let mut at = String::new();
            for (baseline, compared) in pairs {
                let (b, _) = cycles_per_call(&baseline, selection);
                let (c, _) = cycles_per_call(&compared, selection);
                if c / b < best {
                    best = c / b;
                    at = compared.against(&baseline);
                }
            }
            (best, published, format!("best of 1 to 512 pages: {at}"))
        }
        Plan::Quiesces { baseline, compared } => {
            let b = quiesces(&run(&baseline.config(selection)));
            let c = quiesces(&run(&compared.config(selection)));
            (
                c / b.max(1.0),
                published,
                format!("global IPTEs and IDTEs, {}", compared.against(&baseline)),
            )
        }
        Plan::Switches(policy, machine) => {
            let refcount = switch_rate(LazyTlbPolicy::Refcount, machine);
            let this = if policy == LazyTlbPolicy::Refcount {
                refcount
            } else {
                switch_rate(policy, machine)
            };
            // Compared as rates relative to refcounting: the published
            // pair's ratio against the model's.
            let published_refcount = PUBLISHED
                .iter()
                .find(|r| r.topic == Topic::LazyTlbShootdown && !r.compared.contains("SHOOTDOWN"))
                .and_then(published_ratio)
                .ok_or(NotModelled("no refcount figure to compare with"))?;
            (
                this / refcount.max(1.0),
                published / published_refcount,
                format!(
                    "ctxswitch-bench on {} ({} CPUs), switches per cycle relative to refcount",
                    machine.name,
                    machine.topology.cpus()
                ),
            )
        }
    };
    let (value, text) = match record.reading {
        // Three significant digits or more, so that the column keeps
        // its width from 1x to thousands.
        Reading::Quantity(_) if ratio >= 100.0 => (ratio, format!("{ratio:.0}x refcount")),
        Reading::Quantity(_) => (ratio, format!("{ratio:.2}x refcount")),
        reading => in_reading(reading, ratio),
    };
    Ok(ModelFigure {
        value,
        text,
        ratio,
        published_ratio,
        factor: ratio / published_ratio,
        configuration,
    })
}

/// Every published record with the model's figure next to it, in the
/// order of [`PUBLISHED`]. The model runs are spread over the host's CPUs.
pub fn compare(selection: &Selection) -> Vec<Comparison> {
    let selection = Arc::new(selection.clone());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let slots: Arc<std::sync::Mutex<Vec<Option<Comparison>>>> =
        Arc::new(std::sync::Mutex::new(vec![None; PUBLISHED.len()]));
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(PUBLISHED.len());
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let (selection, next, slots) = (selection.clone(), next.clone(), slots.clone());
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(record) = PUBLISHED.get(i) else {
                    break;
                };
                let model = model_figure(record, &selection);
                slots.lock().expect("no worker panics holding the lock")[i] =
                    Some(Comparison { record, model });
            })
        })
        .collect();
    for handle in handles {
        if let Err(panic) = handle.join() {
            std::panic::resume_unwind(panic);
        }
    }
    let slots = std::mem::take(&mut *slots.lock().expect("the workers are done"));
    slots.into_iter().flatten().collect()
}

/// A short name of the compared configuration.
fn compared_label(record: &PublishedFigure) -> &'static str {
    match record.topic {
        Topic::Arm64BarrierBatching | Topic::S390IpteBatching => "batching",
        Topic::ProtectedPageTables if record.compared.contains("with lazy MMU batching") => {
            "kpkeys+batch"
        }
        Topic::ProtectedPageTables => "kpkeys",
        Topic::LazyTlbShootdown if record.compared.contains("SHOOTDOWN") => "shootdown",
        Topic::LazyTlbShootdown => "refcount",
    }
}

/// A short name of the machine.
fn machine_label(record: &PublishedFigure) -> &'static str {
    let m = record.machine;
    if m.contains("M2") {
        "Apple M2"
    } else if m.contains("Altra") {
        "Altra"
    } else if m.contains("Graviton3") {
        "Graviton3"
    } else if m.contains("s390") {
        "s390"
    } else if m.contains("POWER8") {
        "POWER8"
    } else if m.contains("144-CPU") {
        "ppc 144"
    } else {
        "-"
    }
}

/// A short name of the benchmark.
fn benchmark_label(record: &PublishedFigure) -> String {
    record
        .workload
        .replace("test_vmalloc ", "")
        .replace("_alloc_test", "")
        .replace("will-it-scale ", "")
        .replace(", as many threads as CPUs", "")
        .replace(", ", " ")
        .replace(
            "quiesce events mprotect() on four LPARs in parallel",
            "mprotect() quiesces, 4 LPARs",
        )
        .replace(" of a large range", ", large range")
}

/// The comparison as a text table of at most 100 columns: one line per
/// record, grouped by source (title and address above each group), then
/// how each model figure was made.
pub fn format_table(rows: &[Comparison]) -> String {
    use core::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Published figures next to the model's; factor = model's ratio to the baseline / published ratio"
    );
    let _ = writeln!(
        out,
        "(1.00 = agreement; above 1 the model finds the compared configuration slower than measured)"
    );
    let mut source = None;
    let mut notes: Vec<String> = Vec::new();
    for row in rows {
        if source != Some(row.record.source.title) {
            source = Some(row.record.source.title);
            let _ = writeln!(out, "\n{}", row.record.source.title);
            let _ = writeln!(out, "  {}", row.record.source.url);
            let _ = writeln!(
                out,
                "  {:<32} {:<9} {:<12} {:>15} {:>14} {:>6}",
                "benchmark", "machine", "compared", "published", "model", "factor"
            );
        }
        let mut benchmark = benchmark_label(row.record);
        benchmark.truncate(32);
        let label = format!(
            "{benchmark} ({}, {})",
            machine_label(row.record),
            compared_label(row.record)
        );
        let (model, factor) = match &row.model {
            Ok(m) => {
                notes.push(format!("{label}: {}", m.configuration));
                (m.text.clone(), format!("{:.2}", m.factor))
            }
            Err(NotModelled(why)) => {
                notes.push(format!("{label}: not modelled: {why}"));
                ("-".to_string(), "-".to_string())
            }
        };
        let _ = writeln!(
            out,
            "  {:<32} {:<9} {:<12} {:>15} {:>14} {:>6}",
            benchmark,
            machine_label(row.record),
            compared_label(row.record),
            row.record.figure,
            model,
            factor
        );
    }
    let _ = writeln!(out, "\nWhat the model ran:");
    notes.sort();
    notes.dedup();
    for note in notes {
        for line in wrap(&note, WIDTH - 2, 4) {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

/// The width [`format_table`] keeps to.
pub const WIDTH: usize = 100;

/// `text` in lines of at most `width` characters broken at spaces, every
/// line after the first indented by `indent`.
fn wrap(text: &str, width: usize, indent: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split(' ') {
        let room = if lines.is_empty() {
            width
        } else {
            width - indent
        };
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > room {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    lines.push(line);
    lines
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            if i == 0 {
                l
            } else {
                format!("{}{l}", " ".repeat(indent))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_become_ratios_and_back() {
        let r = published_ratio(&PublishedFigure {
            figure: "(I) -25.00%",
            ..PUBLISHED[1]
        })
        .unwrap();
        assert!((r - 0.75).abs() < 1e-9);
        let (v, text) = in_reading(Reading::TimeChangePercent, 0.75);
        assert!((v + 25.0).abs() < 1e-9);
        assert_eq!(text, "-25.00%");
        let (v, text) = in_reading(Reading::TimesFaster, 0.1);
        assert!((v - 10.0).abs() < 1e-9);
        assert_eq!(text, "10.00x");
    }

    #[test]
    fn notes_wrap_at_spaces_and_indent() {
        let lines = wrap("aaa bbb ccc ddd", 8, 2);
        assert_eq!(lines, ["aaa bbb", "  ccc", "  ddd"]);
        assert!(lines.iter().all(|l| l.len() <= 8));
    }

    #[test]
    fn every_record_has_a_plan_or_a_reason() {
        let selection = Selection::default();
        for record in PUBLISHED {
            match plan(record, &selection) {
                Ok(_) => {}
                Err(NotModelled(why)) => assert!(!why.is_empty(), "{record:?}"),
            }
        }
    }
}
