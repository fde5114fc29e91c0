//! Bare-metal kernels that run the lazymmu library on QEMU's paging
//! hardware and report the results of their tests and measurements on the
//! serial console, one per architecture, built from this one crate:
//!
//! - [`x86_64`] for `x86_64-unknown-none`: four CPUs, page tables protected
//!   by PKS;
//! - [`aarch64`] for `aarch64-unknown-none`: the AArch64 format and the
//!   arm64 backend with real barriers and TLB maintenance.
//!
//! What both kernels share is written once here: the test harness and its
//! report ([`check`]), the range-operation tests over a kernel's MMU
//! ([`range_tests`]), the test data frames ([`testdata`]), the measurement
//! tables ([`table`]), the frame pools ([`frames`]), the page-table memory
//! and frames the library builds tables with, the kernel's root and image
//! mapping ([`page_tables`]), the console ([`console`]) and the locks
//! ([`sync`]). Each architecture's module provides what these name through
//! the crate root: `cpu::{disable_interrupts, enable_interrupts}`,
//! `serial::write_byte`, `memory::{phys_to_virt, DATA_FRAMES,
//! PAGE_TABLE_FRAMES}`, `paging::with_page_table_window`.
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]
// Checks fail with a formatted message in a fixed stack buffer (there is no
// allocator); the size of that `Err` is irrelevant off the hot paths.
#![allow(clippy::result_large_err)]

mod check;
mod console;
mod frames;
mod page_tables;
mod range_tests;
mod sync;
mod table;
mod testdata;

#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
use x86_64::*;

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "aarch64")]
use aarch64::*;
