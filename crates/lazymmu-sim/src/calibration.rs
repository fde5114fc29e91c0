//! What the kernel's own work around the MMU costs, measured on a real
//! Linux kernel by `lazymmu calibrate`: the calibration file, its loader,
//! and the statistics that turn timed system calls into a per-call and a
//! per-page cost.
//!
//! A calibration records, for each measured system call ([`Call`]), a
//! summary of the TSC-cycle samples at every size (pages per call) and a
//! straight line fitted through their medians: `cycles = per_call +
//! per_page × pages`. The machine, kernel and date it came from travel with
//! it, so a figure can always be traced to where it was measured.
//!
//! The file is JSON, versioned by its `format` field ([`FORMAT`]). Loading
//! checks more than the syntax: every required call is present once, every
//! summary is ordered and every fit is the one its samples give
//! ([`Fit::from_medians`]), so a coefficient edited by hand is rejected.
//!
//! # From a measured cost to what the model charges
//!
//! A measured call includes the x86 MMU work the model already charges
//! itself (PTE writes, `invlpg` or a full flush, on one CPU: the process is
//! pinned, so `flush_tlb_mm_range` sends no IPI). The share the model adds
//! for the kernel's own work is therefore, per call and per page, the
//! measured coefficient less the model's own `x86` charges for the same
//! call at the same size; a share that would come out negative means the
//! model over-charges the MMU part and is held at zero, saying so.
//!
//! Which measurement stands for which workload: `fork` → [`Call::Fork`];
//! `exit` → [`Call::Exit`] (the pages are shared with the parent, as after
//! a fork); `munmap` → [`Call::Munmap`]; `mprotect` → [`Call::Mprotect`];
//! `mremap` → [`Call::Mremap`]; `vmalloc` → the per-page cost of
//! [`Call::VmallocBpfArray`] (a zeroing, memcg-charged vmalloc; its
//! per-call cost also carries the BPF map's own setup, so it bounds
//! vmalloc's from above). `vfree` cannot be timed from user space (a BPF
//! map is freed later by a workqueue, and vfree defers its TLB flush to a
//! lazy purge); its closest measured call is `munmap`, which does the same
//! per-page work — clear the PTE, free the page — plus rmap and mapcount
//! updates vfree does not, so [`Call::Munmap`]'s per-page cost bounds
//! vfree's from above, and the purge's flush is charged as the model's own
//! flush once per `lazy_max_pages`.
//!
//! The figures are the measuring machine's (x86-64, see
//! [`Calibration::machine`]); no cited factor carries them to another
//! architecture, so they apply unscaled or not at all.
//!
//! ```
//! use lazymmu_sim::calibration::{Calibration, Call};
//!
//! let calibration = Calibration::builtin();
//! let munmap = calibration.call(Call::Munmap).expect("munmap is always measured");
//! let ns = munmap.fit.per_page_ns(calibration.clock.tsc_hz);
//! assert!(ns > 0.0);
//! ```

use core::fmt;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The version of the file layout this module reads and writes.
pub const FORMAT: u32 = 1;

/// The calibration measured on the machine named in its `machine` field,
/// committed under `calibration/` in the repository.
const BUILTIN: &str = include_str!("../../../calibration/x86_64-amd-epyc-kvm-linux-6.18.json");

/// One measured system call (or the interval around one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Call {
    /// `mmap` of an anonymous private range, not touched: VMA creation
    /// (`do_mmap` → `mmap_region`).
    Mmap,
    /// The first write to every page of a fresh anonymous range: one
    /// demand-zero fault per page (`do_anonymous_page`: allocate and zero a
    /// page, charge it, add its rmap, set the PTE).
    Touch,
    /// `fork` as the parent sees it, with every page of the range touched:
    /// `copy_process` → `dup_mmap` → `copy_page_range` (write-protect both
    /// copies, take a reference and a mapcount per page) and the parent's
    /// `flush_tlb_mm`.
    Fork,
    /// From just before `fork` to the child's first instruction after it:
    /// the fork, waking the child, and `ret_from_fork`.
    ForkChild,
    /// From the child's `_exit` to its parent's `waitpid` returning, the
    /// child's pages shared copy-on-write with the parent: `do_exit` →
    /// `exit_mmap` (zap with a full-mm gather, free the page tables) and
    /// waking the parent.
    Exit,
    /// `munmap` of a touched range: `do_vmi_munmap` → `unmap_region` (zap
    /// every PTE, free the pages, flush the TLB, free the page tables).
    Munmap,
    /// `mprotect` of a touched range, alternating read-only and
    /// read-write so every PTE changes: `change_protection` →
    /// `change_pte_range`, one `flush_tlb_range`.
    Mprotect,
    /// `mremap` moving a touched range to a fixed address whose offset in
    /// a 2 MiB block differs, so `move_page_tables` moves PTEs one by one
    /// (`move_ptes`) rather than whole PMDs.
    Mremap,
    /// `bpf(BPF_MAP_CREATE)` of an array map with 4 KiB values: above
    /// 32 KiB `bpf_map_area_alloc` → `__bpf_map_area_alloc` calls
    /// `__vmalloc_node_range` with `__GFP_ZERO | __GFP_ACCOUNT`, so the
    /// per-page cost is a zeroing, charged vmalloc; the per-call cost
    /// carries the map's own setup. Measured only when the caller may
    /// create BPF maps.
    VmallocBpfArray,
}

impl Call {
    /// Every call, in table order.
    pub const ALL: [Call; 9] = [
        Call::Mmap,
        Call::Touch,
        Call::Fork,
        Call::ForkChild,
        Call::Exit,
        Call::Munmap,
        Call::Mprotect,
        Call::Mremap,
        Call::VmallocBpfArray,
    ];

    /// The name used in the file and on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Call::Mmap => "mmap",
            Call::Touch => "touch",
            Call::Fork => "fork",
            Call::ForkChild => "fork-child",
            Call::Exit => "exit",
            Call::Munmap => "munmap",
            Call::Mprotect => "mprotect",
            Call::Mremap => "mremap",
            Call::VmallocBpfArray => "vmalloc-bpf-array",
        }
    }

    /// Whether every calibration must carry this call. Only the vmalloc
    /// measurement may be missing: it needs the right to create BPF maps.
    pub const fn required(self) -> bool {
        !matches!(self, Call::VmallocBpfArray)
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A calibration: where it was measured, how, and what each call costs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    /// The file layout's version; [`FORMAT`] for files this module writes.
    pub format: u32,
    /// The machine the calls ran on.
    pub machine: Host,
    /// The kernel they ran on.
    pub kernel: Kernel,
    /// When the measurement finished, UTC, `YYYY-MM-DDTHH:MM:SSZ`.
    pub date: String,
    /// The cycle counter and its frequency.
    pub clock: Clock,
    /// How the samples were taken and fitted.
    pub method: Method,
    /// One entry per measured call, in [`Call::ALL`] order.
    pub calls: Vec<CallCost>,
    /// What a reader of the figures should know (clamped fits, calls that
    /// could not be measured, and why).
    pub notes: Vec<String>,
}

/// The machine a calibration was measured on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Host {
    /// `model name` from `/proc/cpuinfo`.
    pub cpu_model: String,
    /// Logical CPUs listed in `/proc/cpuinfo`.
    pub logical_cpus: u32,
    /// Whether `/proc/cpuinfo` lists the `hypervisor` flag (a guest: its
    /// page faults may also cost the host's second-level faults).
    pub hypervisor: bool,
}

/// The kernel a calibration was measured on, as `uname` reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kernel {
    /// `uname -s`.
    pub sysname: String,
    /// `uname -r`.
    pub release: String,
    /// `uname -v`.
    pub version: String,
    /// `uname -m`.
    pub machine: String,
}

/// The cycle counter behind every sample.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Clock {
    /// TSC ticks per second.
    pub tsc_hz: f64,
    /// How `tsc_hz` was found.
    pub tsc_hz_source: String,
    /// Relative difference between the frequency measured before and after
    /// the samples.
    pub tsc_hz_drift: f64,
    /// Whether `/proc/cpuinfo` lists both `constant_tsc` and `nonstop_tsc`.
    pub invariant_tsc: bool,
    /// Median cycles between two back-to-back reads of the counter: part of
    /// every per-call figure.
    pub read_overhead_cycles: f64,
}

impl Clock {
    /// Converts cycles to nanoseconds at this clock's frequency.
    pub fn ns(&self, cycles: f64) -> f64 {
        cycles_to_ns(cycles, self.tsc_hz)
    }
}

fn cycles_to_ns(cycles: f64, tsc_hz: f64) -> f64 {
    cycles * 1e9 / tsc_hz
}

/// How a calibration's samples were taken.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Method {
    /// The command that produced the file.
    pub command: String,
    /// Pages per call, in increasing order.
    pub sizes: Vec<u64>,
    /// Timed rounds over every size.
    pub repetitions: u32,
    /// Untimed rounds before them.
    pub warmup: u32,
    /// The CPU the process (and its children) was pinned to, if any.
    pub pinned_cpu: Option<u32>,
    /// The base page size in bytes.
    pub page_size: u64,
    /// `/sys/kernel/mm/transparent_hugepage/enabled`; the measured
    /// mappings themselves never use huge pages.
    pub transparent_hugepage: String,
    /// How the samples become coefficients.
    pub fit: String,
}

/// One call's samples and fitted cost.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallCost {
    /// Which call.
    pub call: Call,
    /// The timed interval, in words.
    pub interval: String,
    /// One summary per size, in increasing order of pages.
    pub samples: Vec<SizeSamples>,
    /// The line through the medians.
    pub fit: Fit,
}

/// The TSC-cycle samples of one call at one size.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SizeSamples {
    /// Pages per call.
    pub pages: u64,
    /// How many samples.
    pub count: u32,
    /// The smallest sample.
    pub min: f64,
    /// First quartile.
    pub p25: f64,
    /// Median.
    pub median: f64,
    /// Third quartile.
    pub p75: f64,
    /// The largest sample.
    pub max: f64,
}

impl SizeSamples {
    /// Summarises `samples` (cycles) taken at `pages` pages per call;
    /// quartiles interpolate linearly between order statistics. `None`
    /// when there are no samples.
    pub fn from_samples(pages: u64, samples: &[u64]) -> Option<SizeSamples> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        Some(SizeSamples {
            pages,
            count: u32::try_from(sorted.len()).unwrap_or(u32::MAX),
            min: sorted[0] as f64,
            p25: quantile(&sorted, 0.25),
            median: quantile(&sorted, 0.5),
            p75: quantile(&sorted, 0.75),
            max: sorted[sorted.len() - 1] as f64,
        })
    }

    /// The interquartile range relative to the median: how much the
    /// samples at this size spread.
    pub fn relative_spread(&self) -> f64 {
        (self.p75 - self.p25) / self.median
    }
}

/// The `q`-quantile of sorted, non-empty `values`, interpolating linearly
/// between the two nearest order statistics.
fn quantile(sorted: &[u64], q: f64) -> f64 {
    let position = q * (sorted.len() - 1) as f64;
    let below = position.floor() as usize;
    let above = position.ceil() as usize;
    let fraction = position - below as f64;
    sorted[below] as f64 + fraction * (sorted[above] as f64 - sorted[below] as f64)
}

/// Which coefficient a fit had to hold at zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Coefficient {
    /// The cost per call.
    PerCall,
    /// The cost per page.
    PerPage,
}

/// `cycles = per_call + per_page × pages`, fitted through the medians.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fit {
    /// Cycles per call, independent of its size.
    pub per_call_cycles: f64,
    /// Cycles per page.
    pub per_page_cycles: f64,
    /// Coefficient of determination of the line against the medians (1 is
    /// a perfect line). The largest sizes dominate it; see
    /// `max_relative_residual` for the small ones. For a cost that does not
    /// grow with size it says nothing (it is then at or below 0), and
    /// `max_relative_residual` is the spread of the medians around the
    /// constant.
    pub r_squared: f64,
    /// The largest |median − line| / median over the sizes.
    pub max_relative_residual: f64,
    /// The coefficient held at zero because the unconstrained fit made it
    /// negative (noise, or a cost too small to see at these sizes), if any.
    pub clamped: Option<Coefficient>,
}

/// Why a fit could not be made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FitError {
    /// Fewer than two distinct sizes: a line needs two.
    TooFewSizes,
    /// A median that is zero, negative or not a number.
    BadMedian {
        /// The size whose median it is.
        pages: u64,
    },
}

impl fmt::Display for FitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FitError::TooFewSizes => f.write_str("a fit needs samples at two sizes or more"),
            FitError::BadMedian { pages } => {
                write!(f, "the median at {pages} pages is not a positive number")
            }
        }
    }
}

impl std::error::Error for FitError {}

impl Fit {
    /// Fits `cycles = per_call + per_page × pages` through the medians of
    /// `samples` by least squares, weighting each size by 1/median² so
    /// that every size counts by its relative error: timing noise grows
    /// with the time measured, and an unweighted fit would let the largest
    /// size decide the per-call cost alone.
    ///
    /// Neither coefficient is allowed below zero: when the unconstrained
    /// fit makes one negative, it is held at zero and the other refitted
    /// (the non-negative least-squares solution), and [`Fit::clamped`]
    /// says which.
    ///
    /// # Errors
    /// [`FitError::TooFewSizes`] with fewer than two distinct sizes;
    /// [`FitError::BadMedian`] when a median is not a positive number.
    pub fn from_medians(samples: &[SizeSamples]) -> Result<Fit, FitError> {
        if let Some(bad) = samples
            .iter()
            .find(|s| !(s.median.is_finite() && s.median > 0.0))
        {
            return Err(FitError::BadMedian { pages: bad.pages });
        }
        let first = samples.first().map(|s| s.pages);
        if samples.len() < 2 || samples.iter().all(|s| Some(s.pages) == first) {
            return Err(FitError::TooFewSizes);
        }

        let (mut w, mut wx, mut wy, mut wxx, mut wxy) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for s in samples {
            let (x, y) = (s.pages as f64, s.median);
            let weight = 1.0 / (y * y);
            w += weight;
            wx += weight * x;
            wy += weight * y;
            wxx += weight * x * x;
            wxy += weight * x * y;
        }
        let determinant = w * wxx - wx * wx;
        let mut per_call = (wxx * wy - wx * wxy) / determinant;
        let mut per_page = (w * wxy - wx * wy) / determinant;
        let mut clamped = None;
        if per_call < 0.0 {
            per_call = 0.0;
            per_page = wxy / wxx;
            clamped = Some(Coefficient::PerCall);
        } else if per_page < 0.0 {
            per_page = 0.0;
            per_call = wy / w;
            clamped = Some(Coefficient::PerPage);
        }

        let mean = samples.iter().map(|s| s.median).sum::<f64>() / samples.len() as f64;
        let (mut residual_squares, mut total_squares, mut max_relative) = (0.0, 0.0, 0.0f64);
        for s in samples {
            let residual = s.median - (per_call + per_page * s.pages as f64);
            residual_squares += residual * residual;
            total_squares += (s.median - mean) * (s.median - mean);
            max_relative = max_relative.max(residual.abs() / s.median);
        }
        let r_squared = if total_squares > 0.0 {
            1.0 - residual_squares / total_squares
        } else {
            1.0
        };
        Ok(Fit {
            per_call_cycles: per_call,
            per_page_cycles: per_page,
            r_squared,
            max_relative_residual: max_relative,
            clamped,
        })
    }

    /// The fitted cycles of one call of `pages` pages.
    pub fn cycles(&self, pages: u64) -> f64 {
        self.per_call_cycles + self.per_page_cycles * pages as f64
    }

    /// [`Fit::per_call_cycles`] in nanoseconds at `tsc_hz`.
    pub fn per_call_ns(&self, tsc_hz: f64) -> f64 {
        cycles_to_ns(self.per_call_cycles, tsc_hz)
    }

    /// [`Fit::per_page_cycles`] in nanoseconds at `tsc_hz`.
    pub fn per_page_ns(&self, tsc_hz: f64) -> f64 {
        cycles_to_ns(self.per_page_cycles, tsc_hz)
    }
}

/// What is wrong with a calibration file.
#[derive(Clone, Debug, PartialEq)]
pub enum CalibrationErrorKind {
    /// The file could not be read.
    Read {
        /// The operating system's error kind.
        kind: io::ErrorKind,
        /// Its message.
        message: String,
    },
    /// Not JSON, or not the layout of this version: a missing, unknown or
    /// mistyped field.
    Parse {
        /// 1-based line of the problem.
        line: usize,
        /// 1-based column of the problem.
        column: usize,
        /// What the parser expected.
        message: String,
    },
    /// A layout version this module does not read.
    Format {
        /// The file's `format`.
        found: u32,
        /// The one this module reads ([`FORMAT`]).
        supported: u32,
    },
    /// A call every calibration must carry is missing.
    MissingCall(Call),
    /// A call appears twice.
    DuplicateCall(Call),
    /// A value is out of its range or disagrees with another.
    Invalid {
        /// The call it belongs to, if any.
        call: Option<Call>,
        /// What is wrong.
        reason: String,
    },
}

impl fmt::Display for CalibrationErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CalibrationErrorKind::Read { message, .. } => write!(f, "cannot read: {message}"),
            CalibrationErrorKind::Parse {
                line,
                column,
                message,
            } => write!(f, "line {line}, column {column}: {message}"),
            CalibrationErrorKind::Format { found, supported } => write!(
                f,
                "calibration format {found} is not supported (this version reads format {supported}; measure again with `lazymmu calibrate`)"
            ),
            CalibrationErrorKind::MissingCall(call) => {
                write!(f, "no measurement of `{call}`, which every calibration carries")
            }
            CalibrationErrorKind::DuplicateCall(call) => {
                write!(f, "`{call}` is measured twice")
            }
            CalibrationErrorKind::Invalid {
                call: Some(call),
                reason,
            } => write!(f, "`{call}`: {reason}"),
            CalibrationErrorKind::Invalid { call: None, reason } => f.write_str(reason),
        }
    }
}

/// A calibration file that cannot be used, and which file it was.
#[derive(Clone, Debug, PartialEq)]
pub struct CalibrationError {
    /// The file, when the calibration came from one.
    pub path: Option<PathBuf>,
    /// What is wrong.
    pub kind: CalibrationErrorKind,
}

impl CalibrationError {
    fn invalid(call: Option<Call>, reason: impl Into<String>) -> CalibrationError {
        CalibrationErrorKind::Invalid {
            call,
            reason: reason.into(),
        }
        .into()
    }
}

impl From<CalibrationErrorKind> for CalibrationError {
    fn from(kind: CalibrationErrorKind) -> CalibrationError {
        CalibrationError { path: None, kind }
    }
}

impl fmt::Display for CalibrationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(path) => write!(f, "calibration file {}: {}", path.display(), self.kind),
            None => write!(f, "calibration: {}", self.kind),
        }
    }
}

impl std::error::Error for CalibrationError {}

/// The first field of every layout version, read before the rest so that
/// a file of another version is named as such rather than as a mismatch.
#[derive(Deserialize)]
struct Header {
    format: u32,
}

fn parse_error(error: &serde_json::Error) -> CalibrationError {
    let message = error.to_string();
    // serde_json appends " at line L column C"; the kind carries those.
    let message = match message.rfind(" at line ") {
        Some(end) => message[..end].to_string(),
        None => message,
    };
    CalibrationErrorKind::Parse {
        line: error.line(),
        column: error.column(),
        message,
    }
    .into()
}

impl Calibration {
    /// The calibration committed with the repository (see the `machine`
    /// and `kernel` fields for where it was measured).
    pub fn builtin() -> Calibration {
        match Calibration::from_json(BUILTIN) {
            Ok(calibration) => calibration,
            // The `builtin_calibration_is_valid` test keeps this unreachable.
            Err(error) => panic!("the built-in calibration is invalid: {error}"),
        }
    }

    /// Reads and checks the calibration file at `path`.
    ///
    /// # Errors
    /// Everything [`Calibration::from_json`] rejects, and a file that
    /// cannot be read; the error names the file.
    pub fn load(path: &Path) -> Result<Calibration, CalibrationError> {
        let text = std::fs::read_to_string(path).map_err(|error| CalibrationError {
            path: Some(path.to_path_buf()),
            kind: CalibrationErrorKind::Read {
                kind: error.kind(),
                message: error.to_string(),
            },
        })?;
        Calibration::from_json(&text).map_err(|error| CalibrationError {
            path: Some(path.to_path_buf()),
            ..error
        })
    }

    /// Parses and checks a calibration.
    ///
    /// # Errors
    /// [`CalibrationErrorKind::Parse`] for text that is not JSON or not
    /// this layout; [`CalibrationErrorKind::Format`] for another layout
    /// version; [`CalibrationErrorKind::MissingCall`] and
    /// [`CalibrationErrorKind::DuplicateCall`]; and
    /// [`CalibrationErrorKind::Invalid`] for a value out of range, sizes
    /// out of order, a summary whose quantiles are out of order, or a fit
    /// that is not the one its samples give.
    pub fn from_json(text: &str) -> Result<Calibration, CalibrationError> {
        let header: Header = serde_json::from_str(text).map_err(|e| parse_error(&e))?;
        if header.format != FORMAT {
            return Err(CalibrationErrorKind::Format {
                found: header.format,
                supported: FORMAT,
            }
            .into());
        }
        let calibration: Calibration = serde_json::from_str(text).map_err(|e| parse_error(&e))?;
        calibration.validate()?;
        Ok(calibration)
    }

    /// The calibration as pretty-printed JSON, the form [`from_json`]
    /// reads.
    ///
    /// [`from_json`]: Calibration::from_json
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self)
            .expect("a calibration has only string keys and finite numbers");
        text.push('\n');
        text
    }

    /// The measurement of `call`, if it was measured.
    pub fn call(&self, call: Call) -> Option<&CallCost> {
        self.calls.iter().find(|c| c.call == call)
    }

    /// Checks what the layout alone cannot: ranges, order, presence and
    /// that every fit is the one its samples give.
    ///
    /// # Errors
    /// As [`Calibration::from_json`], except parsing.
    pub fn validate(&self) -> Result<(), CalibrationError> {
        let clock = &self.clock;
        if !(clock.tsc_hz.is_finite() && clock.tsc_hz > 0.0) {
            return Err(CalibrationError::invalid(
                None,
                format!(
                    "clock.tsc_hz must be a positive number, not {}",
                    clock.tsc_hz
                ),
            ));
        }
        if !(clock.read_overhead_cycles.is_finite() && clock.read_overhead_cycles >= 0.0) {
            return Err(CalibrationError::invalid(
                None,
                "clock.read_overhead_cycles must be a number of cycles",
            ));
        }
        if self.method.page_size == 0 {
            return Err(CalibrationError::invalid(None, "method.page_size is zero"));
        }

        for (index, cost) in self.calls.iter().enumerate() {
            if self.calls[..index].iter().any(|c| c.call == cost.call) {
                return Err(CalibrationErrorKind::DuplicateCall(cost.call).into());
            }
            validate_call(cost)?;
        }
        if let Some(&missing) = Call::ALL
            .iter()
            .find(|c| c.required() && self.call(**c).is_none())
        {
            return Err(CalibrationErrorKind::MissingCall(missing).into());
        }
        Ok(())
    }
}

fn validate_call(cost: &CallCost) -> Result<(), CalibrationError> {
    let call = Some(cost.call);
    let mut previous_pages = 0;
    for s in &cost.samples {
        if s.pages <= previous_pages {
            return Err(CalibrationError::invalid(
                call,
                format!(
                    "sizes must be positive and increasing; {} pages follows {previous_pages}",
                    s.pages
                ),
            ));
        }
        previous_pages = s.pages;
        let ordered = [s.min, s.p25, s.median, s.p75, s.max];
        let in_order = ordered.windows(2).all(|pair| pair[0] <= pair[1]);
        if s.count == 0 || !ordered.iter().all(|v| v.is_finite() && *v >= 0.0) || !in_order {
            return Err(CalibrationError::invalid(
                call,
                format!(
                    "the samples at {} pages need a count and 0 ≤ min ≤ p25 ≤ median ≤ p75 ≤ max",
                    s.pages
                ),
            ));
        }
    }
    let refit = Fit::from_medians(&cost.samples)
        .map_err(|error| CalibrationError::invalid(call, error.to_string()))?;
    if !same_fit(&refit, &cost.fit) {
        return Err(CalibrationError::invalid(
            call,
            format!(
                "the fit ({:.3} + {:.3}/page) is not the one its samples give ({:.3} + {:.3}/page)",
                cost.fit.per_call_cycles,
                cost.fit.per_page_cycles,
                refit.per_call_cycles,
                refit.per_page_cycles
            ),
        ));
    }
    Ok(())
}

/// Equal up to the last few bits a decimal round trip may change.
fn same_fit(a: &Fit, b: &Fit) -> bool {
    let close = |x: f64, y: f64| (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0);
    close(a.per_call_cycles, b.per_call_cycles)
        && close(a.per_page_cycles, b.per_page_cycles)
        && close(a.r_squared, b.r_squared)
        && close(a.max_relative_residual, b.max_relative_residual)
        && a.clamped == b.clamped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(points: &[(u64, f64)]) -> Vec<SizeSamples> {
        points
            .iter()
            .map(|&(pages, median)| SizeSamples {
                pages,
                count: 1,
                min: median,
                p25: median,
                median,
                p75: median,
                max: median,
            })
            .collect()
    }

    fn close(a: f64, b: f64, tolerance: f64) -> bool {
        (a - b).abs() <= tolerance
    }

    #[test]
    fn an_exact_line_is_recovered() {
        let points: Vec<_> = [1u64, 16, 64, 512, 4096, 16384]
            .iter()
            .map(|&n| (n, 2_000.0 + 150.0 * n as f64))
            .collect();
        let fit = Fit::from_medians(&sizes(&points)).unwrap();
        assert!(close(fit.per_call_cycles, 2_000.0, 1e-6), "{fit:?}");
        assert!(close(fit.per_page_cycles, 150.0, 1e-9), "{fit:?}");
        assert!(close(fit.r_squared, 1.0, 1e-12));
        assert!(fit.max_relative_residual < 1e-12);
        assert_eq!(fit.clamped, None);
        assert!(close(fit.cycles(10), 3_500.0, 1e-6));
    }

    #[test]
    fn relative_weights_keep_the_per_call_cost_of_small_sizes() {
        // 1% multiplicative error alternating in sign: an unweighted fit
        // lets the 16384-page point (±24,600 cycles) swamp the 1,000-cycle
        // per-call cost (it gives 2,975); the relative weights keep it
        // within 1%.
        let points: Vec<_> = [1u64, 16, 64, 512, 4096, 16384]
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let sign = if i % 2 == 0 { 1.01 } else { 0.99 };
                (n, (1_000.0 + 150.0 * n as f64) * sign)
            })
            .collect();
        let fit = Fit::from_medians(&sizes(&points)).unwrap();
        assert!(close(fit.per_call_cycles, 1_000.0, 10.0), "{fit:?}");
        assert!(close(fit.per_page_cycles, 150.0, 1.5), "{fit:?}");
        assert!(fit.max_relative_residual < 0.03, "{fit:?}");
        assert!(fit.r_squared > 0.999);
    }

    #[test]
    fn a_negative_per_call_cost_is_clamped_to_zero() {
        // Pure per-page cost with the small size measured low: the free fit
        // has a negative intercept.
        let fit = Fit::from_medians(&sizes(&[(1, 90.0), (10, 1_000.0), (100, 10_000.0)])).unwrap();
        assert_eq!(fit.clamped, Some(Coefficient::PerCall));
        assert_eq!(fit.per_call_cycles, 0.0);
        assert!(
            fit.per_page_cycles > 90.0 && fit.per_page_cycles < 100.0,
            "{fit:?}"
        );
    }

    #[test]
    fn a_negative_per_page_cost_is_clamped_to_zero() {
        // A flat cost that noise makes fall with size.
        let fit =
            Fit::from_medians(&sizes(&[(1, 5_000.0), (64, 4_900.0), (4096, 4_800.0)])).unwrap();
        assert_eq!(fit.clamped, Some(Coefficient::PerPage));
        assert_eq!(fit.per_page_cycles, 0.0);
        assert!(fit.per_call_cycles > 4_800.0 && fit.per_call_cycles < 5_000.0);
    }

    #[test]
    fn a_fit_needs_two_sizes_and_positive_medians() {
        assert_eq!(
            Fit::from_medians(&sizes(&[(4, 100.0)])),
            Err(FitError::TooFewSizes)
        );
        assert_eq!(
            Fit::from_medians(&sizes(&[(4, 100.0), (4, 120.0)])),
            Err(FitError::TooFewSizes)
        );
        assert_eq!(
            Fit::from_medians(&sizes(&[(4, 100.0), (8, 0.0)])),
            Err(FitError::BadMedian { pages: 8 })
        );
    }

    #[test]
    fn quartiles_interpolate_between_order_statistics() {
        let s = SizeSamples::from_samples(8, &[40, 10, 30, 20]).unwrap();
        assert_eq!((s.pages, s.count), (8, 4));
        assert_eq!(
            (s.min, s.p25, s.median, s.p75, s.max),
            (10.0, 17.5, 25.0, 32.5, 40.0)
        );
        assert!(close(s.relative_spread(), 0.6, 1e-12));
        assert_eq!(SizeSamples::from_samples(8, &[]), None);
        let one = SizeSamples::from_samples(1, &[7]).unwrap();
        assert_eq!((one.min, one.median, one.max), (7.0, 7.0, 7.0));
    }

    /// A calibration with every call, fitted from exact lines.
    fn calibration() -> Calibration {
        let sizes = [1u64, 16, 512];
        let calls = Call::ALL
            .iter()
            .enumerate()
            .map(|(i, &call)| {
                let per_page = 100.0 * i as f64;
                let points: Vec<_> = sizes
                    .iter()
                    .map(|&n| (n, 5_000.0 + per_page * n as f64))
                    .collect();
                let samples = super::tests::sizes(&points);
                CallCost {
                    call,
                    interval: format!("{call} of N pages"),
                    fit: Fit::from_medians(&samples).unwrap(),
                    samples,
                }
            })
            .collect();
        Calibration {
            format: FORMAT,
            machine: Host {
                cpu_model: "Test CPU".into(),
                logical_cpus: 2,
                hypervisor: false,
            },
            kernel: Kernel {
                sysname: "Linux".into(),
                release: "6.18.0".into(),
                version: "#1 SMP".into(),
                machine: "x86_64".into(),
            },
            date: "2026-01-01T00:00:00Z".into(),
            clock: Clock {
                tsc_hz: 2.5e9,
                tsc_hz_source: "test".into(),
                tsc_hz_drift: 0.0,
                invariant_tsc: true,
                read_overhead_cycles: 40.0,
            },
            method: Method {
                command: "lazymmu calibrate".into(),
                sizes: sizes.to_vec(),
                repetitions: 1,
                warmup: 0,
                pinned_cpu: Some(0),
                page_size: 4096,
                transparent_hugepage: "never".into(),
                fit: "test".into(),
            },
            calls,
            notes: vec![],
        }
    }

    fn kind(text: &str) -> CalibrationErrorKind {
        Calibration::from_json(text).unwrap_err().kind
    }

    /// The calibration's JSON with `edit` applied to it as a value.
    fn edited(edit: impl FnOnce(&mut serde_json::Value)) -> String {
        let mut value = serde_json::to_value(calibration()).unwrap();
        edit(&mut value);
        serde_json::to_string_pretty(&value).unwrap()
    }

    #[test]
    fn the_file_round_trips() {
        let original = calibration();
        let text = original.to_json();
        assert_eq!(Calibration::from_json(&text).unwrap(), original);

        let path =
            std::env::temp_dir().join(format!("lazymmu-calibration-{}.json", std::process::id()));
        std::fs::write(&path, &text).unwrap();
        let loaded = Calibration::load(&path);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(loaded.unwrap(), original);
    }

    #[test]
    fn nanoseconds_follow_the_clock() {
        let c = calibration();
        let mremap = c.call(Call::Mremap).unwrap();
        assert!(close(
            mremap.fit.per_page_ns(c.clock.tsc_hz),
            700.0 / 2.5,
            1e-9
        ));
        assert!(close(c.clock.ns(2_500.0), 1_000.0, 1e-9));
    }

    #[test]
    fn a_missing_file_names_itself() {
        let path = Path::new("/nonexistent/calibration.json");
        let error = Calibration::load(path).unwrap_err();
        assert_eq!(error.path.as_deref(), Some(path));
        assert!(matches!(
            error.kind,
            CalibrationErrorKind::Read {
                kind: io::ErrorKind::NotFound,
                ..
            }
        ));
        assert!(error
            .to_string()
            .starts_with("calibration file /nonexistent/calibration.json: cannot read"));
    }

    #[test]
    fn text_that_is_not_json_gives_its_line_and_column() {
        assert_eq!(
            kind("{\n  \"format\": 1,\n  oops\n}"),
            CalibrationErrorKind::Parse {
                line: 3,
                column: 3,
                message: "key must be a string".into()
            }
        );
    }

    #[test]
    fn missing_and_unknown_fields_are_named() {
        let missing = kind(&edited(|v| {
            v.as_object_mut().unwrap().remove("clock");
        }));
        assert!(
            matches!(&missing, CalibrationErrorKind::Parse { message, .. } if message == "missing field `clock`"),
            "{missing:?}"
        );
        let unknown = kind(&edited(|v| {
            v["machine"]["colour"] = "blue".into();
        }));
        assert!(
            matches!(&unknown, CalibrationErrorKind::Parse { message, .. } if message.starts_with("unknown field `colour`")),
            "{unknown:?}"
        );
        let no_format = kind("{}");
        assert!(
            matches!(&no_format, CalibrationErrorKind::Parse { message, .. } if message == "missing field `format`"),
            "{no_format:?}"
        );
    }

    #[test]
    fn another_format_is_refused_before_its_layout_is_read() {
        assert_eq!(
            kind(r#"{"format": 2, "anything": "else"}"#),
            CalibrationErrorKind::Format {
                found: 2,
                supported: FORMAT
            }
        );
    }

    #[test]
    fn calls_must_be_present_once() {
        assert_eq!(
            kind(&edited(|v| {
                v["calls"].as_array_mut().unwrap().remove(5);
            })),
            CalibrationErrorKind::MissingCall(Call::Munmap)
        );
        assert_eq!(
            kind(&edited(|v| {
                let fork = v["calls"][2].clone();
                v["calls"].as_array_mut().unwrap().push(fork);
            })),
            CalibrationErrorKind::DuplicateCall(Call::Fork)
        );
        // The vmalloc measurement is the one that may be missing.
        let text = edited(|v| {
            v["calls"].as_array_mut().unwrap().pop();
        });
        assert!(Calibration::from_json(&text)
            .unwrap()
            .call(Call::VmallocBpfArray)
            .is_none());
    }

    #[test]
    fn a_fit_edited_by_hand_is_refused() {
        let error = kind(&edited(|v| {
            v["calls"][5]["fit"]["per_page_cycles"] = 1.0.into();
        }));
        assert!(
            matches!(&error, CalibrationErrorKind::Invalid { call: Some(Call::Munmap), reason } if reason.starts_with("the fit (")),
            "{error:?}"
        );
    }

    #[test]
    fn values_out_of_range_or_order_are_refused() {
        let error = kind(&edited(|v| v["clock"]["tsc_hz"] = (-1.0).into()));
        assert!(
            matches!(error, CalibrationErrorKind::Invalid { call: None, .. }),
            "{error:?}"
        );

        let error = kind(&edited(|v| v["calls"][1]["samples"][2]["pages"] = 8.into()));
        assert!(
            matches!(&error, CalibrationErrorKind::Invalid { call: Some(Call::Touch), reason } if reason.contains("increasing")),
            "{error:?}"
        );

        let error = kind(&edited(|v| {
            v["calls"][3]["samples"][0]["p25"] = 1e12.into()
        }));
        assert!(
            matches!(&error, CalibrationErrorKind::Invalid { call: Some(Call::ForkChild), reason } if reason.contains("p25")),
            "{error:?}"
        );

        let error = kind(&edited(|v| {
            v["calls"][0]["samples"].as_array_mut().unwrap().truncate(1);
        }));
        assert_eq!(
            error,
            CalibrationErrorKind::Invalid {
                call: Some(Call::Mmap),
                reason: FitError::TooFewSizes.to_string()
            }
        );
    }

    #[test]
    fn builtin_calibration_is_valid() {
        let calibration = Calibration::builtin();
        assert_eq!(calibration.format, FORMAT);
        for call in Call::ALL.iter().filter(|c| c.required()) {
            assert!(calibration.call(*call).is_some(), "{call} missing");
        }
    }
}
