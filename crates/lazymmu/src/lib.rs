//! # lazymmu
//!
//! Linux's nestable, pausable *lazy MMU mode* for Rust kernels and
//! hypervisors, with the page tables, range operations, TLB gathering and
//! arch backends that use it.
//!
//! - [`cpu`]: what every layer asks of the CPU (its id, interrupt context,
//!   preemption, the key register) and the CPU mask.
//! - [`mode`]: the generic mode (counters in the task, as Linux 7.0) and the
//!   two alternative designs, behind [`mode::LazyMode`].
//! - [`pgtable`]: page-table formats, range operations and the TLB gather.
//! - [`mm`]: the neighbours — lazy TLB and `active_mm`, kernel top-level
//!   sync for vmalloc, nestable protection-key windows for device memory.
//!
//! The crate is `no_std`; the `alloc` and `std` features add conveniences
//! for hosted users such as the simulator. The `testing` feature adds test
//! doubles (recording primitives, small host machines, a test environment)
//! and the known-bad variants checkers select; a kernel builds without it.
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod addr;
pub mod backend;
pub mod cpu;
pub mod mm;
pub mod mode;
pub mod pgtable;
