#![doc = include_str!("../README.md")]
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod addr;
pub mod backend;
pub mod cpu;
#[cfg(feature = "alloc")]
pub mod host;
pub mod mm;
pub mod mode;
pub mod pgtable;
pub mod prelude;
