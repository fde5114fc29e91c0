//! The `lazymmu` command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod check;
mod compare;

/// Nestable, pausable lazy MMU mode: simulate, compare, check.
#[derive(Parser, Debug)]
#[command(name = "lazymmu", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Every backend × workload on the simulator, eager and lazy: primitive
    /// counts and modelled cycles.
    Compare(compare::CompareArgs),
    /// Exhaustive, preemption-bounded exploration of the scenarios'
    /// interleavings, with replayable counterexamples.
    Check(check::CheckArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let result = match &cli.command {
        Command::Compare(args) => compare::compare(args),
        Command::Check(args) => check::check(args),
    };
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("lazymmu: {e:#}");
            if e.downcast_ref::<compare::UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}
