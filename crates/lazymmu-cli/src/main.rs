//! The lazymmu command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod boot;

/// Lazy MMU mode: library, simulator and bare-metal kernel.
#[derive(Debug, Parser)]
#[command(name = "lazymmu", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build the bare-metal kernel, boot it under QEMU and show its tests
    /// and measurements.
    Boot(boot::BootArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Boot(args) => boot::main(args),
    }
}
