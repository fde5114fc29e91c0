//! `lazymmu`: the command line over the lazymmu library and simulator.
//!
//! Each subcommand lives in its own module with an `Args` struct and a
//! `run` function; this file only dispatches. Errors (bad input, missing
//! files) are printed to standard error and exit with status 2, like clap's
//! own usage errors.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod boot;
mod calibrate;
mod check;
mod compare;
mod neighbours;
mod record;
mod replay;

/// Lazy MMU mode for Rust kernels: designs, simulator and tools.
#[derive(Debug, Parser)]
#[command(name = "lazymmu", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every backend × workload on the simulator, eager and lazy: primitive
    /// counts and modelled cycles with the lazy/eager ratio.
    Compare(compare::CompareArgs),
    /// Replay a trace of lazy-mode operations and print what each one did.
    Replay(replay::Args),
    /// Build the bare-metal kernel, boot it under QEMU (TCG) and show its
    /// tests and measurements; exit 0 only when the guest passed.
    Boot(boot::Args),
    /// Exhaustive, preemption-bounded exploration of the scenarios'
    /// interleavings, with replayable counterexamples.
    Check(check::CheckArgs),
    /// Time mmap, touch, fork, exit, munmap, mprotect, mremap and vmalloc on
    /// this Linux kernel and fit each call's per-call and per-page cost.
    Calibrate(calibrate::CalibrateArgs),
    /// Run a program under strace and perf and write its trace of
    /// memory-management calls and page faults.
    Record(record::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Compare(args) => compare::run(args),
        Command::Replay(args) => replay::run(args),
        Command::Boot(args) => boot::run(args),
        Command::Check(args) => check::check(args).map(|code| ExitCode::from(code as u8)),
        Command::Calibrate(args) => calibrate::run(args),
        Command::Record(args) => record::run(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}
