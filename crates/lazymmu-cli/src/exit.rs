//! How a subcommand ends: its exit status and the one style every error is
//! printed in.
//!
//! Every subcommand's `run` returns `anyhow::Result<ExitCode>`. The
//! `ExitCode` says what the command found ([`FINDING`] for a violated
//! invariant or a failed guest); an error is turned into a status by
//! [`report`]:
//!
//! - a [`Usage`] error (a bad option value, a selection that cannot run)
//!   is printed as clap prints its own usage errors, with the usage line,
//!   and exits with [`USAGE`]; so does a [`BadInput`] error (a file the
//!   command refuses: an unknown operation, an overlong line), without the
//!   usage line;
//! - writing to a closed pipe (`lazymmu compare | head`) ends quietly with
//!   status 0, as other Unix tools do;
//! - anything else (an I/O error, which names its path through
//!   `anyhow::Context`) is printed as `error: ...` and exits with
//!   [`FAILURE`].

use std::fmt;
use std::io;
use std::process::ExitCode;

use clap::error::ErrorKind;

/// The run found a problem: an invariant was violated, the guest failed.
pub const FINDING: u8 = 1;
/// An error that is not the user's: a file or pipe could not be read or
/// written, a program could not be started.
pub const FAILURE: u8 = 1;
/// Bad usage: an unknown option or value, or input the command refuses.
pub const USAGE: u8 = 2;
/// `lazymmu check` explored only part of what was asked (it stopped at a
/// limit) and found no violation in that part.
pub const INCOMPLETE: u8 = 3;

/// The exit statuses, for every command's `--help`.
pub const STATUSES: &str = "\
Exit status: 0 success; 1 the run found a problem (an invariant violated, the \
guest failed) or an I/O error (the message names the path); 2 bad usage or \
input refused. Output to a closed pipe ends quietly with 0.";

/// An error in how the command was called, or input it refuses: exit
/// status [`USAGE`], printed like clap's own usage errors.
#[derive(Debug)]
pub struct Usage(pub String);

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// A [`Usage`] error as an `anyhow::Error`.
pub fn usage(message: impl fmt::Display) -> anyhow::Error {
    Usage(message.to_string()).into()
}

/// Input the command refuses (a line of a file, a trace): exit status
/// [`USAGE`]; the message names where the bad input is.
#[derive(Debug)]
pub struct BadInput(pub String);

impl fmt::Display for BadInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadInput {}

/// A [`BadInput`] error as an `anyhow::Error`.
pub fn bad_input(message: impl fmt::Display) -> anyhow::Error {
    BadInput(message.to_string()).into()
}

/// Prints `error` in the one error style and returns the exit status it
/// means. `command` is the clap command, for usage errors' hints.
pub fn report(error: &anyhow::Error, command: &mut clap::Command) -> ExitCode {
    if closed_pipe(error) {
        return ExitCode::SUCCESS;
    }
    if let Some(Usage(message)) = error.downcast_ref::<Usage>() {
        // Clap formats it: the same `error:` prefix, colour and hint as
        // its own usage errors.
        let _ = command.error(ErrorKind::ValueValidation, message).print();
        return ExitCode::from(USAGE);
    }
    let status = if error.downcast_ref::<BadInput>().is_some() {
        USAGE
    } else {
        FAILURE
    };
    let _ = clap::Error::raw(ErrorKind::Io, format!("{error:#}\n")).print();
    ExitCode::from(status)
}

/// Whether `error` is a write to a pipe whose reader has gone.
fn closed_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn a_closed_pipe_is_recognised_through_context() {
        let error = Err::<(), _>(io::Error::from(io::ErrorKind::BrokenPipe))
            .context("writing the table")
            .unwrap_err();
        assert!(closed_pipe(&error));
        assert!(!closed_pipe(&usage("bad")));
    }

    #[test]
    fn usage_errors_are_found_by_downcasting() {
        let error = usage("unknown thing");
        assert_eq!(error.downcast_ref::<Usage>().unwrap().0, "unknown thing");
    }
}
