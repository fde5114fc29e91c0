//! Real programs as workloads: the trace `lazymmu record` writes, its
//! parser, and the address-space history a replay drives the simulator
//! with.
//!
//! A program trace is a line-oriented text file, versioned by its first
//! line (`lazymmu-trace 1`), with one event per line in time order: the
//! memory-management and process system calls of every thread with their
//! arguments and results, the page faults between them, and the VMAs the
//! kernel reported. `docs/trace-format.md` in the repository describes it
//! field by field.
//!
//! - [`record`]: the records and their one text form (the writer);
//! - [`reader`]: the streaming parser, with precise errors;
//! - [`page_set`]: sets of present pages as runs;
//! - [`address_space`]: one address space as Linux keeps it (VMAs that
//!   split and merge, present pages) and the page-table [`Operation`]s
//!   each kernel path performs;
//! - [`history`]: threads, address spaces and the [`Step`] each event
//!   becomes.
//!
//! [`Replay`] puts the reader and the history together:
//!
//! ```
//! use lazymmu_sim::program_trace::{Replay, history::StepKind};
//!
//! let text = "lazymmu-trace 1\n\
//!             @touches faults\n\
//!             0 7 execve - = 0\n\
//!             4 7 mmap 0 4000 3 22 - 0 = 7f0000000000\n\
//!             5 7 fault 7f0000000000 2 w\n\
//!             9 7 clone 11 = 8\n\
//!             12 8 exit 0\n\
//!             15 7 exit 0\n";
//! let mut replay = Replay::new(text.as_bytes(), "example.trace");
//! let mut copied = 0;
//! for step in replay.by_ref() {
//!     let step = step?;
//!     if step.kind == StepKind::Fork {
//!         copied = step.operations.iter().map(|op| op.pages()).sum();
//!     }
//! }
//! assert_eq!(copied, 2); // fork copies exactly the two pages written
//! let summary = replay.finish();
//! assert_eq!(summary.disagreement_count(), 0);
//! # Ok::<(), lazymmu_sim::program_trace::reader::TraceError>(())
//! ```

pub mod address_space;
pub mod history;
pub mod page_set;
pub mod reader;
pub mod record;

use std::io::BufRead;

pub use address_space::Operation;
pub use history::Step;

use history::{History, Summary};
use reader::{Reader, TraceError};

/// The page size the format and the model use.
pub const PAGE_SIZE: u64 = 4096;

/// The first word of every trace.
pub const FORMAT: &str = "lazymmu-trace";

/// The format version this crate reads and writes.
pub const VERSION: u32 = 1;

/// The longest line a trace may hold, in bytes (without the newline).
pub const MAX_LINE: usize = 4096;

/// A trace read and applied to its history, one step per event.
pub struct Replay<R> {
    reader: Reader<R>,
    history: History,
}

impl<R: BufRead> Replay<R> {
    /// Replays `input`; `name` is the file name errors carry.
    pub fn new(input: R, name: impl Into<String>) -> Self {
        Replay {
            reader: Reader::new(input, name),
            history: History::default(),
        }
    }

    /// The history so far.
    #[must_use]
    pub fn history(&self) -> &History {
        &self.history
    }

    /// The summary of everything replayed.
    #[must_use]
    pub fn finish(self) -> Summary {
        self.history.finish(self.reader.skipped_calls())
    }
}

impl<R: BufRead> Iterator for Replay<R> {
    type Item = Result<Step, TraceError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let record = match self.reader.next()? {
                Ok(record) => record,
                Err(error) => return Some(Err(error)),
            };
            let line = self.reader.lines_read();
            match self.history.apply(&record, line) {
                Ok(Some(step)) => return Some(Ok(step)),
                Ok(None) => continue,
                Err(meta) => {
                    return Some(Err(TraceError {
                        file: self.reader_name(),
                        line,
                        expected: meta.expected,
                        found: format!("`{}`", meta.found),
                    }))
                }
            }
        }
    }
}

impl<R: BufRead> Replay<R> {
    fn reader_name(&self) -> String {
        self.reader.name().to_owned()
    }
}

/// Reads a whole trace and returns its summary: the entry point for
/// tests and fuzzing (any bytes in, an error or a summary out, never a
/// panic).
///
/// # Errors
/// The first malformed line, or a metadata value the model cannot use.
pub fn summarize(input: impl BufRead, name: &str) -> Result<Summary, TraceError> {
    let mut replay = Replay::new(input, name);
    for step in replay.by_ref() {
        step?;
    }
    Ok(replay.finish())
}
