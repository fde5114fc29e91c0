//! The headline of `lazymmu compare`: for each design, the backend ×
//! workload matrix of lazy/eager modelled cycles, built from whatever runs
//! were made (the rows and columns are the backends and workloads that
//! ran, in the order they ran), printed as a table or drawn as a heatmap.

use std::io::Write;

use anyhow::Result;
use lazymmu_sim::scenario::{BackendKind, DesignKind, ModeKind, RunResult, WorkloadKind};

use crate::text::{ratio, Table};

/// The line under every matrix.
pub const LEGEND: &str =
    "below 1.000 lazy sections save (0.250: a quarter of the eager cycles); above, they cost more";

/// Marks a value whose run broke an invariant.
pub const BROKEN: &str = "!";

/// The eager and lazy cycles of one backend and workload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cell {
    /// Modelled cycles without lazy sections.
    pub eager: u64,
    /// Modelled cycles with them.
    pub lazy: u64,
    /// Invariant violations of the two runs.
    pub violations: u64,
}

impl Cell {
    /// Lazy over eager cycles; `None` when eager cost nothing or a total
    /// left the 64-bit range (the cost model saturates there).
    pub fn ratio(&self) -> Option<f64> {
        let saturated = self.eager == u64::MAX || self.lazy == u64::MAX;
        (self.eager > 0 && !saturated).then(|| self.lazy as f64 / self.eager as f64)
    }

    /// The ratio as the table prints it, marked [`BROKEN`] when a run
    /// broke an invariant.
    pub fn label(&self) -> String {
        let value = match self.ratio() {
            Some(r) => ratio(r),
            None if self.eager == u64::MAX || self.lazy == u64::MAX => "overflow".into(),
            None => "-".into(),
        };
        if self.violations > 0 {
            value + BROKEN
        } else {
            value
        }
    }
}

/// One design's matrix.
#[derive(Clone, Debug)]
pub struct Matrix {
    /// The design of the lazy runs.
    pub design: DesignKind,
    /// Rows.
    pub backends: Vec<BackendKind>,
    /// Columns.
    pub workloads: Vec<WorkloadKind>,
    cells: Vec<Option<Cell>>,
}

impl Matrix {
    /// The cell of `backend` and `workload`, when both modes ran.
    pub fn cell(&self, backend: BackendKind, workload: WorkloadKind) -> Option<Cell> {
        let row = self.backends.iter().position(|&b| b == backend)?;
        let column = self.workloads.iter().position(|&w| w == workload)?;
        self.cells[row * self.workloads.len() + column]
    }

    /// Whether a run of the matrix broke an invariant.
    pub fn broken(&self) -> bool {
        self.cells.iter().flatten().any(|c| c.violations > 0)
    }

    /// Every cell's ratio, row by row, for scales.
    pub fn ratios(&self) -> impl Iterator<Item = f64> + '_ {
        self.cells.iter().filter_map(|c| c.and_then(|c| c.ratio()))
    }
}

/// One matrix per design among `results`, in the order the designs ran.
pub fn matrices(results: &[RunResult]) -> Vec<Matrix> {
    let mut designs: Vec<DesignKind> = Vec::new();
    for r in results {
        if !designs.contains(&r.design) {
            designs.push(r.design);
        }
    }
    designs
        .into_iter()
        .map(|design| {
            let runs: Vec<&RunResult> = results.iter().filter(|r| r.design == design).collect();
            let mut backends = Vec::new();
            let mut workloads = Vec::new();
            for r in &runs {
                if !backends.contains(&r.backend) {
                    backends.push(r.backend);
                }
                if !workloads.contains(&r.workload) {
                    workloads.push(r.workload);
                }
            }
            let cells = backends
                .iter()
                .flat_map(|&b| workloads.iter().map(move |&w| (b, w)))
                .map(|(b, w)| {
                    let find = |mode| {
                        runs.iter()
                            .find(|r| (r.backend, r.workload, r.mode) == (b, w, mode))
                    };
                    let (eager, lazy) = (find(ModeKind::Eager)?, find(ModeKind::Lazy)?);
                    Some(Cell {
                        eager: eager.cycles,
                        lazy: lazy.cycles,
                        violations: eager.violation_count + lazy.violation_count,
                    })
                })
                .collect();
            Matrix {
                design,
                backends,
                workloads,
                cells,
            }
        })
        .collect()
}

/// The lazy/eager ratio of the run `result` belongs to, for its JSON row.
pub fn ratio_of(results: &[RunResult], result: &RunResult) -> Option<f64> {
    let cycles = |mode| {
        results
            .iter()
            .find(|r| {
                (r.backend, r.workload, r.design, r.mode)
                    == (result.backend, result.workload, result.design, mode)
            })
            .map(|r| r.cycles)
    };
    Cell {
        eager: cycles(ModeKind::Eager)?,
        lazy: cycles(ModeKind::Lazy)?,
        violations: 0,
    }
    .ratio()
}

/// Prints `matrix` as a table fitted to `width`, under `title`.
///
/// # Errors
/// I/O errors.
pub fn write(out: &mut impl Write, matrix: &Matrix, title: &str, width: usize) -> Result<()> {
    let rows = matrix.backends.iter().map(|&backend| {
        let cells = matrix.workloads.iter().map(|&w| matrix.cell(backend, w));
        (backend, cells.collect())
    });
    write_rows(
        out,
        title,
        matrix.workloads.iter().map(|w| w.name()),
        rows,
        width,
    )
}

/// Prints a lazy/eager table under `title`: a row per backend, a column
/// per name in `columns`, each cell's [`Cell::label`] (empty where a run
/// is missing), fitted to `width`.
///
/// # Errors
/// I/O errors.
pub fn write_rows<'c>(
    out: &mut impl Write,
    title: &str,
    columns: impl IntoIterator<Item = &'c str>,
    rows: impl IntoIterator<Item = (BackendKind, Vec<Option<Cell>>)>,
    width: usize,
) -> Result<()> {
    writeln!(out, "{title}")?;
    let mut table = Table::new(std::iter::once("backend").chain(columns), 1);
    for (backend, cells) in rows {
        let labels = cells
            .iter()
            .map(|c| c.map_or_else(String::new, |c| c.label()));
        table.row(std::iter::once(backend.name().to_owned()).chain(labels));
    }
    table.write(out, width, "")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_and_their_labels() {
        let half = Cell {
            eager: 200,
            lazy: 100,
            violations: 0,
        };
        assert_eq!(half.ratio(), Some(0.5));
        assert_eq!(half.label(), "0.500");
        let free = Cell::default();
        assert_eq!((free.ratio(), free.label().as_str()), (None, "-"));
        let broken = Cell {
            violations: 3,
            ..half
        };
        assert_eq!(broken.label(), "0.500!");
        let saturated = Cell {
            eager: u64::MAX,
            lazy: u64::MAX,
            violations: 0,
        };
        assert_eq!(saturated.ratio(), None);
        assert_eq!(saturated.label(), "overflow");
    }
}
