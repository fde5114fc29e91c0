//! The kernel's own work around each modelled system call, per call and
//! per page, derived from a calibration ([`crate::calibration`]): the
//! measured cost of the call less the x86 MMU work the model itself charges
//! for the same call at the same size.
//!
//! For every call `lazymmu calibrate` measured, the model runs the same
//! call on `x86` (one CPU, one task, no disturbances, no kernel work) at
//! every measured size; its cycles are fitted the way the measurements
//! are ([`Fit::from_medians`]) and subtracted coefficient by coefficient.
//! A share that would come out negative — the model charging more for the
//! MMU part than the whole call measured — is held at zero and said so in
//! [`KernelWork::notes`].
//!
//! Which measurement stands for which row: `fork` → [`Software::ForkCall`]
//! and [`Software::ForkPage`]; `exit` → `Exit*`; `munmap` → `Munmap*`;
//! `mprotect` → `Mprotect*`; `mremap` → `Mremap*`; `vmalloc-bpf-array` →
//! `Vmalloc*` (a zeroing, memcg-charged vmalloc whose per-call cost also
//! carries the BPF map's setup: an upper bound of vmalloc's; the model's
//! own charge for it is its PTE stores, `vmap_pte_range` needing no
//! flush); and `vfree`, which cannot be timed from user space, takes
//! `munmap`'s share (`Vfree*`): munmap does the same per-page work — clear
//! the entry, free the page — plus rmap and mapcount updates vfree does
//! not, so it bounds vfree's from above.
//!
//! The figures are the measuring machine's (x86-64); no cited factor
//! carries them to another architecture, so every backend is charged them
//! unscaled.

use std::sync::{Arc, OnceLock};

use crate::calibration::{Calibration, Call, Coefficient, Fit, SizeSamples};
use crate::cost::{CostModel, Platform, Primitive, Software};
use crate::scenario::{BackendKind, KernelWorkSource, ModeKind, RunConfig, WorkloadKind};

/// One call's share: what was measured, what the model charges for its MMU
/// part, and the difference charged as the kernel's own work.
#[derive(Clone, Debug, PartialEq)]
pub struct Share {
    /// The measured call.
    pub call: Call,
    /// The cost rows it sets: per call, per page.
    pub rows: (Software, Software),
    /// The measured fit.
    pub measured: Fit,
    /// The model's x86 MMU charges for the same call, fitted the same way
    /// over the same sizes.
    pub model: Fit,
    /// Cycles per call charged (never below zero).
    pub per_call: f64,
    /// Cycles per page charged (never below zero).
    pub per_page: f64,
    /// Coefficients held at zero because the difference was negative.
    pub held: Vec<Coefficient>,
}

/// The kernel's own work per system call, as cost rows.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelWork {
    /// Where the measurement comes from: machine, kernel and date.
    pub source: String,
    /// The share of every call derived from a measurement.
    pub shares: Vec<Share>,
    /// The cost rows, rounded to whole cycles.
    pub rows: Vec<(Software, u64)>,
    /// What a reader should know: held coefficients, missing measurements,
    /// borrowed ones.
    pub notes: Vec<String>,
}

/// The measured calls with the workload whose call the model runs for
/// them and the rows they set.
const MEASURED: [(Call, Option<WorkloadKind>, Software, Software); 6] = [
    (
        Call::Fork,
        Some(WorkloadKind::Fork),
        Software::ForkCall,
        Software::ForkPage,
    ),
    (
        Call::Exit,
        Some(WorkloadKind::Exit),
        Software::ExitCall,
        Software::ExitPage,
    ),
    (
        Call::Munmap,
        Some(WorkloadKind::Munmap),
        Software::MunmapCall,
        Software::MunmapPage,
    ),
    (
        Call::Mprotect,
        Some(WorkloadKind::Mprotect),
        Software::MprotectCall,
        Software::MprotectPage,
    ),
    (
        Call::Mremap,
        Some(WorkloadKind::Mremap),
        Software::MremapCall,
        Software::MremapPage,
    ),
    (
        Call::VmallocBpfArray,
        None,
        Software::VmallocCall,
        Software::VmallocPage,
    ),
];

impl KernelWork {
    /// Derives the shares from `calibration` (runs the model at every
    /// measured size).
    pub fn derive(calibration: &Calibration) -> KernelWork {
        let mut shares = Vec::new();
        let mut notes = Vec::new();
        for (call, workload, per_call, per_page) in MEASURED {
            let Some(cost) = calibration.call(call) else {
                notes.push(format!(
                    "`{call}` was not measured: {} and {} are charged nothing",
                    crate::cost::Cost::Software(per_call),
                    crate::cost::Cost::Software(per_page)
                ));
                continue;
            };
            let sizes: Vec<u64> = cost.samples.iter().map(|s| s.pages).collect();
            let model_cycles: Vec<SizeSamples> = sizes
                .iter()
                .map(|&pages| {
                    let cycles = model_mmu_cycles(workload, pages) as f64;
                    exact(pages, cycles.max(1.0))
                })
                .collect();
            let Ok(model) = Fit::from_medians(&model_cycles) else {
                notes.push(format!(
                    "`{call}`: the model's charges could not be fitted; nothing charged"
                ));
                continue;
            };
            let mut held = Vec::new();
            let mut share = |measured: f64, modelled: f64, coefficient: Coefficient| {
                let d = measured - modelled;
                if d < 0.0 {
                    held.push(coefficient);
                    0.0
                } else {
                    d
                }
            };
            let per_call_cycles = share(
                cost.fit.per_call_cycles,
                model.per_call_cycles,
                Coefficient::PerCall,
            );
            let per_page_cycles = share(
                cost.fit.per_page_cycles,
                model.per_page_cycles,
                Coefficient::PerPage,
            );
            for coefficient in &held {
                notes.push(format!(
                    "`{call}`: the model charges more per {} for the MMU than was measured for the whole call; its share is held at zero",
                    match coefficient {
                        Coefficient::PerCall => "call",
                        Coefficient::PerPage => "page",
                    }
                ));
            }
            shares.push(Share {
                call,
                rows: (per_call, per_page),
                measured: cost.fit.clone(),
                model,
                per_call: per_call_cycles,
                per_page: per_page_cycles,
                held,
            });
        }
        let mut rows = Vec::new();
        for s in &shares {
            rows.push((s.rows.0, s.per_call.round() as u64));
            rows.push((s.rows.1, s.per_page.round() as u64));
        }
        if let Some(munmap) = shares.iter().find(|s| s.call == Call::Munmap) {
            rows.push((Software::VfreeCall, munmap.per_call.round() as u64));
            rows.push((Software::VfreePage, munmap.per_page.round() as u64));
            notes.push(
                "vfree cannot be timed from user space: it is charged munmap's share, an upper bound (munmap also updates rmap and mapcounts)".into(),
            );
        }
        KernelWork {
            source: format!(
                "{}, {} {}, {}",
                calibration.machine.cpu_model,
                calibration.kernel.sysname,
                calibration.kernel.release,
                calibration.date
            ),
            shares,
            rows,
            notes,
        }
    }

    /// The shares derived from the calibration shipped with the simulator,
    /// computed once.
    pub fn builtin() -> &'static KernelWork {
        static BUILTIN: OnceLock<KernelWork> = OnceLock::new();
        BUILTIN.get_or_init(|| KernelWork::derive(&Calibration::builtin()))
    }

    /// The shares derived from `calibration`, shared for run
    /// configurations.
    pub fn shared(calibration: &Calibration) -> Arc<KernelWork> {
        Arc::new(KernelWork::derive(calibration))
    }

    /// The cycles a row is charged.
    pub fn cycles(&self, row: Software) -> u64 {
        self.rows
            .iter()
            .find(|&&(r, _)| r == row)
            .map_or(0, |&(_, n)| n)
    }
}

/// A size whose every quantile is `cycles` (a model figure is exact).
fn exact(pages: u64, cycles: f64) -> SizeSamples {
    SizeSamples {
        pages,
        count: 1,
        min: cycles,
        p25: cycles,
        median: cycles,
        p75: cycles,
        max: cycles,
    }
}

/// The model's own x86 MMU charges for one call of `workload` over
/// `pages` pages; for vmalloc (`None`), its PTE stores.
fn model_mmu_cycles(workload: Option<WorkloadKind>, pages: u64) -> u64 {
    let Some(workload) = workload else {
        return CostModel::new(Platform::X86).cycles(Primitive::PteWrite) * pages;
    };
    let mut cfg = RunConfig::new(BackendKind::X86, workload, ModeKind::Eager);
    cfg.pages = pages;
    cfg.calls = 1;
    cfg.tasks = 1;
    cfg.cpus = 1;
    cfg.rates = None;
    cfg.kernel_work = KernelWorkSource::None;
    crate::run::run(&cfg).cycles
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_shares_are_measured_less_the_model() {
        let work = KernelWork::builtin();
        let calibration = Calibration::builtin();
        for share in &work.shares {
            let measured = calibration.call(share.call).unwrap().fit.clone();
            assert_eq!(share.measured, measured);
            assert!(share.per_call >= 0.0 && share.per_page >= 0.0);
            if share.held.is_empty() {
                let d = measured.per_page_cycles - share.model.per_page_cycles;
                assert!((share.per_page - d).abs() < 1e-6, "{share:?}");
            }
            // The model charges something for every call's MMU part.
            assert!(share.model.cycles(4096) > 0.0, "{share:?}");
        }
        // munmap per page: the measured ~525 cycles less the model's own
        // stores and flush share.
        let munmap = work.cycles(Software::MunmapPage);
        assert!(munmap > 400 && munmap < 525, "{munmap}");
        assert_eq!(work.cycles(Software::VfreePage), munmap);
    }
}
