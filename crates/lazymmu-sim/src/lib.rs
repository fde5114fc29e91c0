//! # lazymmu-sim
//!
//! A deterministic machine model that runs the unmodified `lazymmu` library
//! on simulated CPUs — TLBs, interrupts, preemption, migration, a Xen-style
//! hypervisor, arm64 barrier visibility, protection-key registers — checks
//! the lazy MMU contracts after every step (DESIGN.md §6), and counts what
//! each design and backend costs.
//!
//! - [`machine`]: CPUs (TLB, interrupt depth, preemption count, key
//!   register, arm64 store visibility), tasks, physical memory and the
//!   scheduler that resolves choice points;
//! - [`choice`]: choice points and the choosers that resolve them (seeded
//!   random, replay, sequential), and printable traces;
//! - [`env`](mod@env), [`platform`], [`hw`]: the library's environment, every
//!   backend's machine primitives, page-table memory, frame allocator and
//!   hardware walker, implemented over the machine;
//! - [`observed`]: the contract checks of DESIGN.md §6 around the
//!   library's backend and lazy mode, and the eager baseline;
//! - [`world`], [`scenario`], [`run`]: workloads, run configurations and
//!   results, the design comparison;
//! - [`cost`]: primitive counts and the per-platform cycle model;
//! - [`calibration`]: the kernel's own work around the MMU, measured on a
//!   real Linux kernel by `lazymmu calibrate`, and its loader;
//! - [`published`]: published figures of lazy-MMU batching and its
//!   neighbours, with their sources, to print next to the model's;
//! - [`invariant`], [`events`]: violations and the event ring printed with
//!   them;
//! - [`explore`], [`scenarios`]: the preemption-bounded exhaustive explorer
//!   and what `lazymmu check` explores, with its known-bad variants;
//! - [`neighbours`]: the MM neighbours' workloads (lazy TLB, kernel
//!   top-level sync, protection-key windows);
//! - [`program_trace`]: real programs as workloads: the trace format
//!   `lazymmu record` writes, its parser, and the per-process
//!   address-space history a replay follows.
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
pub mod env;
pub mod events;
pub mod explore;
pub mod hw;
pub mod invariant;
pub mod machine;
pub mod memory;
pub mod neighbours;
pub mod observed;
pub mod platform;
pub mod program_trace;
pub mod published;
pub mod rng;
pub mod run;
pub mod scenario;
pub mod scenarios;
pub mod tlb;
pub mod world;
