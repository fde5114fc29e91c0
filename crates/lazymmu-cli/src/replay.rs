//! `lazymmu replay FILE`: runs a trace of lazy-mode operations through one
//! of the designs and prints, for each operation, the counters, whether the
//! mode is active and the arch hook it called.
//!
//! The trace has one operation per line: `enable`, `disable`, `pause`,
//! `resume`, `irq_enter`, `irq_exit`. `#` starts a comment; blank lines are
//! skipped. Each operation prints exactly
//!
//! ```text
//! <line-number> <op> enable=<n> pause=<n> active=<true|false> hook=<enter|leave|flush|-> [misuse=<overflow|underflow>]
//! ```
//!
//! where `active` is `is_active()` after the operation (false inside an
//! interrupt). Lines are printed as they are replayed; an unknown operation
//! stops the replay with an error naming its line.
//!
//! Choices the format leaves open:
//! - `irq_exit` outside an interrupt changes nothing and is reported as
//!   `misuse=underflow`.
//! - The replayer is the caller: it keeps the token each accepted `enable`
//!   and `pause` returned and hands the newest back to the next `disable` or
//!   `resume`. An operation the design ignored (while paused, or inside an
//!   interrupt) returns nothing to keep; a `disable` while paused is
//!   ignored, so its token is kept for a later `disable`. For the stateful
//!   design a `disable` or `resume` with no token is an underflow; the
//!   counter designs decide that from their counters.
//! - For the stateful design `enable=` and `pause=` are its two per-task
//!   flags (0 or 1): the nesting depth lives in the caller's tokens.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use lazymmu::mode::counters::Counters;
use lazymmu::mode::percpu::PerCpu;
use lazymmu::mode::stateful::{FromHooks, HooksState, Stateful};
use lazymmu::mode::testing::{TestArch, TestEnv};
use lazymmu::mode::{Hook, LazyMode, Misuse, MisusePolicy, Op};

use crate::exit::{bad_input, STATUSES};
use crate::input::{Lines, QUOTE};
use crate::text::excerpt;

/// The longest trace line `replay` reads, in bytes: an operation is a word,
/// and a comment needs no more.
pub const MAX_LINE: usize = 4096;

/// Arguments of `lazymmu replay`.
#[derive(Debug, clap::Args)]
#[command(after_help = format!("\
A trace has one operation per line: enable, disable, pause, resume, irq_enter, \
irq_exit; # starts a comment. Lines longer than {MAX_LINE} bytes are refused.

{STATUSES}"))]
pub struct Args {
    /// Trace file, one operation per line; `-` reads standard input.
    pub file: PathBuf,
    /// Which design replays the trace.
    #[arg(long, value_enum, default_value_t = Design::Counters)]
    pub design: Design,
}

/// The designs `--design` selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Design {
    /// Two counters in the task (Linux 7.0).
    Counters,
    /// A state value per section, kept by the caller.
    Stateful,
    /// Counters with the CPU; sections run with preemption off.
    Percpu,
}

/// One operation of the trace format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TraceOp {
    Mode(Op),
    IrqEnter,
    IrqExit,
}

impl TraceOp {
    fn parse(word: &str) -> Option<TraceOp> {
        Some(match word {
            "enable" => TraceOp::Mode(Op::Enable),
            "disable" => TraceOp::Mode(Op::Disable),
            "pause" => TraceOp::Mode(Op::Pause),
            "resume" => TraceOp::Mode(Op::Resume),
            "irq_enter" => TraceOp::IrqEnter,
            "irq_exit" => TraceOp::IrqExit,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            TraceOp::Mode(op) => op.name(),
            TraceOp::IrqEnter => "irq_enter",
            TraceOp::IrqExit => "irq_exit",
        }
    }
}

/// The operation on a trace line, `None` for blank and comment lines.
fn parse_line(line: &str) -> Result<Option<TraceOp>, String> {
    let code = match line.find('#') {
        Some(hash) => &line[..hash],
        None => line,
    };
    let word = code.trim();
    if word.is_empty() {
        return Ok(None);
    }
    TraceOp::parse(word)
        .map(Some)
        .ok_or_else(|| format!("unknown operation {}", excerpt(word, QUOTE)))
}

/// Runs `lazymmu replay`.
///
/// # Errors
/// An I/O error naming the file when it cannot be opened or read; a
/// bad-input error naming the line when it holds an unknown operation, is
/// longer than [`MAX_LINE`] or is not UTF-8.
pub fn run(args: &Args) -> Result<ExitCode> {
    let (input, name): (Box<dyn BufRead>, String) = if args.file.as_os_str() == "-" {
        (Box::new(io::stdin().lock()), "<stdin>".to_owned())
    } else {
        let file = File::open(&args.file)
            .with_context(|| format!("cannot open trace {}", args.file.display()))?;
        (
            Box::new(BufReader::new(file)),
            args.file.display().to_string(),
        )
    };
    let mut out = BufWriter::new(io::stdout().lock());
    let result = replay_input(args.design, input, name, &mut out);
    // Whatever was replayed before an error is still printed.
    let flushed = out.flush();
    result?;
    flushed?;
    Ok(ExitCode::SUCCESS)
}

/// Replays the trace `input` (called `name` in errors) through `design`,
/// writing one line per operation to `out`: `lazymmu replay` without the
/// file and the terminal, and what the fuzzer drives.
///
/// # Errors
/// An I/O error when `input` cannot be read or `out` written; a bad-input
/// error naming the line when it holds an unknown operation, is longer
/// than [`MAX_LINE`] or is not UTF-8.
pub fn replay_input(
    design: Design,
    input: Box<dyn BufRead + '_>,
    name: String,
    out: &mut impl Write,
) -> Result<()> {
    let input = Lines::new(input, name, MAX_LINE);
    match design {
        Design::Counters => replay(
            Replayer::new(Counters::new(
                TestEnv::default(),
                TestArch::default(),
                MisusePolicy::Count,
            )),
            input,
            out,
        ),
        Design::Stateful => replay(
            Replayer::new(Stateful::new(
                TestEnv::default(),
                FromHooks::new(TestArch::default()),
                MisusePolicy::Count,
            )),
            input,
            out,
        ),
        Design::Percpu => replay(
            Replayer::new(PerCpu::new(
                TestEnv::default(),
                TestArch::default(),
                MisusePolicy::Count,
            )),
            input,
            out,
        ),
    }
}

fn replay<M: Replayable>(
    mut replayer: Replayer<M>,
    mut input: Lines<Box<dyn BufRead + '_>>,
    out: &mut impl Write,
) -> Result<()> {
    while let Some((number, line)) = input.next_line()? {
        let op = match parse_line(&line) {
            Ok(Some(op)) => op,
            Ok(None) => continue,
            Err(message) => return Err(bad_input(format!("{}: {message}", input.at()))),
        };
        let done = replayer.apply(op);
        let state = replayer.mode.state();
        write!(
            out,
            "{number} {} enable={} pause={} active={} hook={}",
            op.name(),
            state.enable_count,
            state.pause_count,
            replayer.mode.is_active(),
            done.hook.map_or("-", Hook::name),
        )?;
        if let Some(kind) = done.misuse {
            write!(out, " misuse={kind}")?;
        }
        writeln!(out)?;
    }
    Ok(())
}

/// What the replayer needs to know about a design beyond [`LazyMode`].
trait Replayable: LazyMode {
    /// The environment, for interrupt entry and exit.
    fn test_env(&self) -> &TestEnv;
    /// The token to pass when the caller holds none, if the design's
    /// tokens carry nothing (then the design detects underflow itself).
    fn spare(&self) -> Option<Self::Token>;
    /// The token an ignored operation returns; closing with it does nothing.
    fn ignored(&self) -> Self::Token;
    /// Whether `token` came from an ignored operation.
    fn is_ignored(&self, token: &Self::Token) -> bool;
}

impl Replayable for Counters<TestEnv, TestArch> {
    fn test_env(&self) -> &TestEnv {
        self.env()
    }
    fn spare(&self) -> Option<()> {
        Some(())
    }
    fn ignored(&self) {}
    fn is_ignored(&self, _: &()) -> bool {
        false
    }
}

impl Replayable for PerCpu<TestEnv, TestArch> {
    fn test_env(&self) -> &TestEnv {
        self.env()
    }
    fn spare(&self) -> Option<()> {
        Some(())
    }
    fn ignored(&self) {}
    fn is_ignored(&self, _: &()) -> bool {
        false
    }
}

impl Replayable for Stateful<TestEnv, FromHooks<TestArch>> {
    fn test_env(&self) -> &TestEnv {
        self.env()
    }
    fn spare(&self) -> Option<HooksState> {
        None
    }
    fn ignored(&self) -> HooksState {
        self.ignored_token()
    }
    fn is_ignored(&self, token: &HooksState) -> bool {
        *token == HooksState::Ignored
    }
}

/// What one replayed operation did.
struct Done {
    hook: Option<Hook>,
    misuse: Option<&'static str>,
}

/// The caller of a design: it keeps the tokens of open sections and pauses.
struct Replayer<M: Replayable> {
    mode: M,
    sections: Vec<M::Token>,
    pauses: Vec<M::Token>,
}

impl<M: Replayable> Replayer<M> {
    fn new(mode: M) -> Self {
        Replayer {
            mode,
            sections: Vec::new(),
            pauses: Vec::new(),
        }
    }

    fn apply(&mut self, op: TraceOp) -> Done {
        let in_irq = lazymmu::cpu::Cpu::in_interrupt(self.mode.test_env());
        let outcome: Result<Option<Hook>, Misuse> = match op {
            TraceOp::IrqEnter => {
                self.mode.test_env().irq_enter();
                Ok(None)
            }
            TraceOp::IrqExit => {
                return Done {
                    hook: None,
                    misuse: (!self.mode.test_env().irq_exit()).then_some("underflow"),
                };
            }
            TraceOp::Mode(Op::Enable) => self.mode.enable().map(|step| {
                if !in_irq && !self.mode.is_ignored(&step.token) {
                    self.sections.push(step.token);
                }
                step.hook
            }),
            TraceOp::Mode(Op::Pause) => self.mode.pause_raw().map(|step| {
                if !in_irq && !self.mode.is_ignored(&step.token) {
                    self.pauses.push(step.token);
                }
                step.hook
            }),
            TraceOp::Mode(Op::Disable) => {
                let token = if in_irq {
                    Some(self.mode.ignored())
                } else if self.mode.state().pause_count > 0 {
                    // Ignored while paused: the section stays open.
                    Some(self.sections.last().copied().unwrap_or(self.mode.ignored()))
                } else {
                    self.sections.pop().or(self.mode.spare())
                };
                match token {
                    Some(token) => self.mode.disable(token).map(|step| step.hook),
                    None => Err(Misuse::Underflow(Op::Disable)),
                }
            }
            TraceOp::Mode(Op::Resume) => {
                let token = if in_irq {
                    Some(self.mode.ignored())
                } else {
                    self.pauses.pop().or(self.mode.spare())
                };
                match token {
                    Some(token) => self.mode.resume(token).map(|step| step.hook),
                    None => Err(Misuse::Underflow(Op::Resume)),
                }
            }
        };
        match outcome {
            Ok(hook) => Done { hook, misuse: None },
            Err(misuse) => Done {
                hook: None,
                misuse: Some(misuse.kind()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_with_comments_and_blanks() {
        assert_eq!(parse_line("enable"), Ok(Some(TraceOp::Mode(Op::Enable))));
        assert_eq!(parse_line("  irq_exit  # back"), Ok(Some(TraceOp::IrqExit)));
        assert_eq!(parse_line("# only a comment"), Ok(None));
        assert_eq!(parse_line("   "), Ok(None));
        assert_eq!(
            parse_line("enable twice"),
            Err("unknown operation `enable twice`".to_owned())
        );
        assert_eq!(
            parse_line("Enable"),
            Err("unknown operation `Enable`".to_owned())
        );
    }
}
