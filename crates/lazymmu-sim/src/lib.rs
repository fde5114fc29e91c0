//! # lazymmu-sim
//!
//! A deterministic machine model that runs the unmodified `lazymmu` library
//! on simulated CPUs — TLBs, interrupts, preemption, migration, a Xen-style
//! hypervisor, arm64 barrier visibility, protection-key registers — checks
//! the lazy MMU contracts after every step (docs/design.md §6), and counts what
//! each design and backend costs.
//!
//! - [`machine`]: the one machine — CPUs (TLB, interrupt depth,
//!   preemption count, key register, root register, lazy-TLB and key-window
//!   state, arm64 store visibility), tasks on stackful coroutines, address
//!   spaces with their CPU masks, physical memory — its scheduler, and the
//!   library's machine traits implemented over it;
//! - [`choice`]: choice points, the one [`choice::Chooser`] that resolves
//!   them (seeded random, replay, the explorer's) and the one
//!   [`choice::Trace`];
//! - [`invariant`], [`events`]: the one typed invariant, violations and the
//!   event log printed with them;
//! - [`cost`]: the one cost table (machine primitives and the kernel's own
//!   work) and the counts;
//! - [`observed`]: the contract checks of docs/design.md §6 around the
//!   library's backend and lazy mode;
//! - [`world`], [`scenario`], [`run`]: the page-table workloads, run
//!   configurations and results, the design comparison;
//! - [`calibration`]: the kernel's own work around the MMU, measured on a
//!   real Linux kernel by `lazymmu calibrate`, and its loader;
//! - [`kernel_work`]: the share of that work the model charges per system
//!   call (measured cost less the model's own MMU charges);
//! - [`published`]: published figures of lazy-MMU batching and its
//!   neighbours, with their sources, to print next to the model's;
//! - [`side_by_side`]: each published figure next to the model's figure
//!   for the same configuration, and the factor between them;
//! - [`neighbours`]: the MM neighbours' workloads (lazy TLB, kernel
//!   top-level sync, protection-key windows) on the same machine;
//! - [`script`]: scripted contract scenarios;
//! - [`explore`], [`scenarios`]: the preemption-bounded exhaustive explorer
//!   and what `lazymmu check` explores, with its known-bad variants;
//! - [`program_trace`]: real programs as workloads: the trace format
//!   `lazymmu record` writes, its parser, and the per-process
//!   address-space history a replay follows;
//! - [`trace_replay`]: a recorded program replayed on the simulator, its
//!   calls through the built-in workloads' system-call paths.
//!
//! ```
//! use lazymmu_sim::run::run;
//! use lazymmu_sim::scenario::{BackendKind, ModeKind, RunConfig, WorkloadKind};
//!
//! let mut cfg = RunConfig::new(BackendKind::XenPv, WorkloadKind::Fork, ModeKind::Eager);
//! cfg.pages = 512;
//! let eager = run(&cfg);
//! cfg.mode = ModeKind::Lazy;
//! let lazy = run(&cfg);
//! assert_eq!(eager.violation_count + lazy.violation_count, 0);
//! assert!(lazy.cycles < eager.cycles); // multicalls batch the hypercalls
//! ```
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

pub mod calibration;
pub mod choice;
pub mod cost;
pub mod events;
pub mod explore;
pub mod footprint;
pub mod invariant;
mod kept;
pub mod kernel_work;
pub mod machine;
pub mod memory;
pub mod neighbours;
pub mod observed;
pub mod pct;
pub mod program_trace;
pub mod published;
pub mod rng;
pub mod run;
pub mod scenario;
pub mod scenarios;
pub mod script;
pub mod side_by_side;
pub mod tlb;
pub mod trace_replay;
pub mod world;
