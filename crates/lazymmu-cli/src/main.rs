//! `lazymmu`: the command line over the lazymmu library and simulator.
//!
//! Each subcommand lives in its own module with an `Args` struct and a
//! `run` function returning `anyhow::Result<ExitCode>`; this file only
//! dispatches. How errors are printed and which exit status they give is
//! the shared [`exit`] module's.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

mod boot;
mod calibrate;
mod check;
mod compare;
mod progress;
mod record;

use lazymmu_cli::{exit, input, replay, text};

/// Lazy MMU mode for Rust kernels: designs, simulator and tools.
#[derive(Debug, Parser)]
#[command(name = "lazymmu", version, about, propagate_version = true,
          after_help = exit::STATUSES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// One command is parsed per process: the size of its largest variant
// costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Every backend × workload on the simulator, eager and lazy: the
    /// matrix of lazy/eager modelled cycles, the MM neighbours' policies and
    /// the lazy-mode designs.
    Compare(compare::CompareArgs),
    /// Replay a trace of lazy-mode operations and print what each one did.
    Replay(replay::Args),
    /// Build a bare-metal kernel (x86-64, arm64 or both), boot it under QEMU
    /// (TCG) and show its tests and measurements; exit 0 only when the guest
    /// passed.
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
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    let result = match &cli.command {
        Command::Compare(args) => compare::run(args),
        Command::Replay(args) => replay::run(args),
        Command::Boot(args) => boot::run(args),
        Command::Check(args) => check::run(args),
        Command::Calibrate(args) => calibrate::run(args),
        Command::Record(args) => record::run(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            // Usage errors print the subcommand's usage, as clap's do.
            let mut command = Cli::command();
            command.build();
            let mut sub = matches
                .subcommand_name()
                .and_then(|name| command.find_subcommand(name))
                .cloned()
                .unwrap_or(command);
            exit::report(&error, &mut sub)
        }
    }
}
