//! # lazymmu-sim
//!
//! A deterministic machine model that runs the unmodified `lazymmu` library
//! on simulated CPUs — TLBs, interrupts, preemption, migration, a Xen-style
//! hypervisor, arm64 barrier visibility, protection-key registers — checks
//! the lazy MMU contracts after every step (DESIGN.md §6), and counts what
//! each design and backend costs.
//!
//! - [`machine`]: CPUs, tasks, memory, TLBs and the scheduler;
//! - [`choice`]: choice points and the choosers that resolve them
//!   (seeded random, replay, sequential);
//! - [`cost`]: primitive counts and the per-platform cycle model;
//! - [`explore`]: the preemption-bounded exhaustive explorer;
//! - [`scenarios`]: what `lazymmu check` explores, and its known-bad variants;
//! - [`neighbours`]: the MM neighbours' workloads (lazy TLB, kernel
//!   top-level sync, protection-key windows).
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

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
pub mod rng;
pub mod run;
pub mod scenario;
pub mod scenarios;
pub mod tlb;
pub mod world;
