//! The parts of the `lazymmu` command line that other crates drive: the
//! `replay` subcommand and the input, error and text helpers it stands on.
//! The fuzz targets (`fuzz/`) feed `replay` arbitrary traces through
//! [`replay::replay_input`]; the binary dispatches to it like to any other
//! subcommand.

pub mod exit;
pub mod input;
pub mod replay;
pub mod text;
