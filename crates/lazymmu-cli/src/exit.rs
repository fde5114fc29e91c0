//! How a subcommand ends: its exit status and the one style every error is
//! printed in.
//!
//! Every subcommand's `run` returns `anyhow::Result<ExitCode>`. The
//! `ExitCode` says what the command found ([`FINDING`] for a violated
//! invariant or a failed guest); an error is turned into a status by
//! [`report`]:
//!
//! - a [`Refused`] error exits with [`USAGE`]: a bad option value or a
//!   selection that cannot run ([`usage`]) is printed as clap prints its
//!   own usage errors, with the usage line; input the command refuses (an
//!   unknown operation, an overlong line: [`bad_input`]) without it;
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

/// Why a command refused to run: exit status [`USAGE`].
#[derive(Debug)]
pub enum Refused {
    /// An option value or a selection that cannot run: printed like clap's
    /// own usage errors, with the usage line.
    Usage(String),
    /// Input the command refuses (a line of a file, a trace); the message
    /// names where the bad input is.
    BadInput(String),
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Usage(message) | Refused::BadInput(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for Refused {}

/// A [`Refused::Usage`] error as an `anyhow::Error`.
pub fn usage(message: impl fmt::Display) -> anyhow::Error {
    Refused::Usage(message.to_string()).into()
}

/// A [`Refused::BadInput`] error as an `anyhow::Error`.
pub fn bad_input(message: impl fmt::Display) -> anyhow::Error {
    Refused::BadInput(message.to_string()).into()
}

/// Prints `error` in the one error style and returns the exit status it
/// means. `command` is the clap command, for usage errors' hints.
pub fn report(error: &anyhow::Error, command: &mut clap::Command) -> ExitCode {
    if closed_pipe(error) {
        return ExitCode::SUCCESS;
    }
    let refused = error.downcast_ref::<Refused>();
    if let Some(Refused::Usage(message)) = refused {
        // Clap formats it: the same `error:` prefix, colour and hint as
        // its own usage errors.
        let _ = command.error(ErrorKind::ValueValidation, message).print();
        return ExitCode::from(USAGE);
    }
    let _ = clap::Error::raw(ErrorKind::Io, format!("{error:#}\n")).print();
    ExitCode::from(if refused.is_some() { USAGE } else { FAILURE })
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
    fn refusals_are_found_by_downcasting() {
        let error = usage("unknown thing");
        assert!(matches!(
            error.downcast_ref::<Refused>(),
            Some(Refused::Usage(m)) if m == "unknown thing"
        ));
        let error = bad_input("line 3");
        assert!(matches!(
            error.downcast_ref::<Refused>(),
            Some(Refused::BadInput(m)) if m == "line 3"
        ));
    }
}
