#![doc = include_str!("../README.md")]
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]
// The crate documentation and a few items' docs point at the host memory,
// `Host` and `verify`, which exist only with `alloc`; docs.rs builds with
// `std`. A build without it documents the rest and leaves those links as text.
#![cfg_attr(not(feature = "alloc"), allow(rustdoc::broken_intra_doc_links))]

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
