//! Choice points and the choosers that resolve them.
//!
//! Every call from library code into the simulator (an environment method or
//! a machine primitive) is a *choice point*: the machine lists what may
//! happen there and asks a [`Chooser`] to pick one. A run is the sequence of
//! picks, so it can be printed, replayed and explored exhaustively.

use core::fmt;

use crate::rng::SplitMix64;

/// Where a choice point is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Site {
    /// After an environment call (`lazy_state`, `preempt_enable`, ...).
    Environment(&'static str),
    /// After a machine primitive.
    Primitive(&'static str),
    /// Between two units of work of a task.
    Unit,
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Site::Environment(name) => write!(f, "env:{name}"),
            Site::Primitive(name) => write!(f, "prim:{name}"),
            Site::Unit => f.write_str("unit"),
        }
    }
}

/// The context of a choice point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChoicePoint {
    /// Step number (choice points so far in the run).
    pub step: u64,
    /// The CPU running.
    pub cpu: usize,
    /// The task running on it.
    pub task: usize,
    /// Where in the code.
    pub site: Site,
    /// Whether preemption is possible here (preempt count 0, not in irq).
    pub preemptible: bool,
    /// Preemptions taken so far in the run (for bounded exploration).
    pub preemptions: u32,
}

/// One thing that may happen at a choice point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Choice {
    /// Nothing: the running code continues.
    Continue,
    /// An interrupt arrives; its handler changes a kernel mapping through
    /// the library.
    Interrupt,
    /// The running task is preempted; `task` runs its next unit of work on
    /// this CPU, then the preempted task resumes here.
    Preempt {
        /// The task that runs meanwhile.
        task: usize,
    },
    /// The running task is preempted and resumes on another CPU.
    Migrate {
        /// The CPU it resumes on.
        cpu: usize,
    },
    /// A remote CPU's TLB shootdown arrives (an IPI flushing this CPU's
    /// TLB).
    RemoteFlush,
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Choice::Continue => f.write_str("continue"),
            Choice::Interrupt => f.write_str("interrupt"),
            Choice::Preempt { task } => write!(f, "preempt->t{task}"),
            Choice::Migrate { cpu } => write!(f, "migrate->cpu{cpu}"),
            Choice::RemoteFlush => f.write_str("remote-flush"),
        }
    }
}

/// Resolves choice points. Option 0 is always [`Choice::Continue`].
pub trait Chooser {
    /// Whether this chooser may ever pick anything but `Continue`. A
    /// passive chooser lets the machine skip building option lists.
    fn is_passive(&self) -> bool {
        false
    }

    /// Picks the index of one of `options` (never empty).
    fn choose(&mut self, point: &ChoicePoint, options: &[Choice]) -> usize;
}

/// Always continues: a run with no interleaving at all.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sequential;

impl Chooser for Sequential {
    fn is_passive(&self) -> bool {
        true
    }
    fn choose(&mut self, _point: &ChoicePoint, _options: &[Choice]) -> usize {
        0
    }
}

/// How often the random chooser disturbs a run, in events per thousand
/// choice points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rates {
    /// Interrupts per thousand choice points.
    pub interrupt: u64,
    /// Preemptions (to another task) per thousand preemptible points.
    pub preempt: u64,
    /// Migrations per thousand preemptible points.
    pub migrate: u64,
    /// Remote flushes per thousand choice points.
    pub remote_flush: u64,
}

impl Default for Rates {
    fn default() -> Self {
        Self {
            interrupt: 2,
            preempt: 2,
            migrate: 1,
            remote_flush: 1,
        }
    }
}

/// Whether a choice is of one kind.
type KindTest = fn(&Choice) -> bool;

/// A seeded random chooser: reproducible from its seed.
#[derive(Clone, Debug)]
pub struct RandomChooser {
    rng: SplitMix64,
    rates: Rates,
}

impl RandomChooser {
    /// A chooser seeded with `seed`, disturbing at `rates`.
    pub fn new(seed: u64, rates: Rates) -> Self {
        Self {
            rng: SplitMix64::new(seed),
            rates,
        }
    }
}

impl Chooser for RandomChooser {
    fn choose(&mut self, _point: &ChoicePoint, options: &[Choice]) -> usize {
        let roll = self.rng.below(1000);
        let want = |kind: KindTest| options.iter().filter(|c| kind(c)).count() as u64;
        // Walk the kinds in a fixed order, each owning a slice of the roll.
        let mut base = 0;
        let kinds: [(u64, KindTest); 4] = [
            (self.rates.interrupt, |c| matches!(c, Choice::Interrupt)),
            (self.rates.preempt, |c| matches!(c, Choice::Preempt { .. })),
            (self.rates.migrate, |c| matches!(c, Choice::Migrate { .. })),
            (self.rates.remote_flush, |c| {
                matches!(c, Choice::RemoteFlush)
            }),
        ];
        for (rate, kind) in kinds {
            if roll < base + rate {
                let n = want(kind);
                if n == 0 {
                    return 0;
                }
                let pick = self.rng.below(n) as usize;
                return options
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| kind(c))
                    .nth(pick)
                    .map_or(0, |(i, _)| i);
            }
            base += rate;
        }
        0
    }
}

/// Replays a recorded sequence of picks (one per choice point that had more
/// than one option); continues once the sequence is exhausted.
#[derive(Clone, Debug, Default)]
pub struct Replay {
    picks: Vec<u32>,
    next: usize,
    mismatches: u32,
}

impl Replay {
    /// A replayer of `picks`.
    pub fn new(picks: Vec<u32>) -> Self {
        Self {
            picks,
            next: 0,
            mismatches: 0,
        }
    }

    /// How many recorded picks named an option that did not exist (the
    /// trace does not belong to this scenario).
    pub fn mismatches(&self) -> u32 {
        self.mismatches
    }
}

impl Chooser for Replay {
    fn choose(&mut self, _point: &ChoicePoint, options: &[Choice]) -> usize {
        let Some(&pick) = self.picks.get(self.next) else {
            return 0;
        };
        self.next += 1;
        if (pick as usize) < options.len() {
            pick as usize
        } else {
            self.mismatches += 1;
            0
        }
    }
}

/// A recorded run: the pick made at every choice point with more than one
/// option, printable as `0.0.3.0.1` (runs of one pick shortened to
/// `0*120`) and parsed back by [`Trace::parse`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Trace {
    /// The picks, in order.
    pub picks: Vec<u32>,
}

impl Trace {
    /// Parses the dotted form.
    ///
    /// # Errors
    /// A message when an element is not a number.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(Self::default());
        }
        let mut picks = Vec::new();
        for item in text.split('.') {
            let (pick, times) = match item.split_once('*') {
                Some((p, n)) => (
                    p,
                    n.parse::<usize>()
                        .map_err(|e| format!("bad repeat in `{item}`: {e}"))?,
                ),
                None => (item, 1),
            };
            let pick = pick
                .parse::<u32>()
                .map_err(|e| format!("bad trace element `{item}`: {e}"))?;
            if times > 1 << 32 {
                return Err(format!("repeat too large in `{item}`"));
            }
            picks.extend(core::iter::repeat_n(pick, times));
        }
        Ok(Self { picks })
    }
}

impl fmt::Display for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut i = 0;
        while i < self.picks.len() {
            let p = self.picks[i];
            let run = self.picks[i..].iter().take_while(|&&q| q == p).count();
            if !first {
                f.write_str(".")?;
            }
            first = false;
            if run > 2 {
                write!(f, "{p}*{run}")?;
            } else {
                write!(f, "{p}")?;
                if run == 2 {
                    write!(f, ".{p}")?;
                }
            }
            i += run;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_round_trips() {
        let t = Trace {
            picks: vec![0, 3, 1],
        };
        assert_eq!(Trace::parse(&t.to_string()).unwrap(), t);
        let long = Trace {
            picks: vec![0, 0, 0, 0, 2, 0, 0, 1],
        };
        assert_eq!(long.to_string(), "0*4.2.0.0.1");
        assert_eq!(Trace::parse(&long.to_string()).unwrap(), long);
        assert_eq!(Trace::parse("").unwrap(), Trace::default());
        assert!(Trace::parse("1.x").is_err());
    }

    #[test]
    fn replay_reports_out_of_range_picks() {
        let point = ChoicePoint {
            step: 0,
            cpu: 0,
            task: 0,
            site: Site::Unit,
            preemptible: true,
            preemptions: 0,
        };
        let mut r = Replay::new(vec![1, 5]);
        let options = [Choice::Continue, Choice::Interrupt];
        assert_eq!(r.choose(&point, &options), 1);
        assert_eq!(r.choose(&point, &options), 0);
        assert_eq!(r.mismatches(), 1);
        assert_eq!(r.choose(&point, &options), 0);
    }
}
