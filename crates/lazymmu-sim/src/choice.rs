//! Choice points, the one [`Chooser`] trait that resolves them, and the
//! one [`Trace`] that records a run.
//!
//! Every call from library code into the machine (an environment method or
//! a machine primitive), every unit of work and every step of a scripted
//! task is a *choice point*: the machine lists what may happen there — carry
//! on, take an interrupt, let another CPU run, preempt, migrate, deliver a
//! remote flush — and asks the chooser to pick one. A workload's own
//! decisions (which CPU acts next, which action it takes) are choice points
//! too, offering weighted [`Choice::Pick`]s. A run is the sequence of picks,
//! so it can be printed, replayed and explored exhaustively; the same
//! chooser serves `compare` (seeded random), `check` (the explorer) and
//! replay.
//!
//! Points that offer one option do not reach the chooser and are not
//! recorded.

use core::fmt;
use std::str::FromStr;

use lazymmu::cpu::CpuId;

use crate::footprint::Footprint;
use crate::rng::SplitMix64;

/// Where a choice point is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Site {
    /// After an environment call (`lazy_state`, `preempt_enable`, ...).
    Environment(&'static str),
    /// After a machine primitive.
    Primitive(&'static str),
    /// Before a unit of work of a task.
    Unit,
    /// Before a step of a scripted task.
    Step,
    /// A decision of the workload itself.
    Decision(&'static str),
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Site::Environment(name) => write!(f, "env:{name}"),
            Site::Primitive(name) => write!(f, "prim:{name}"),
            Site::Unit => f.write_str("unit"),
            Site::Step => f.write_str("step"),
            Site::Decision(name) => write!(f, "decide:{name}"),
        }
    }
}

/// The context of a choice point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChoicePoint {
    /// Step number (choice points so far in the run).
    pub step: u64,
    /// The CPU running.
    pub cpu: CpuId,
    /// The task running on it.
    pub task: usize,
    /// Where in the code.
    pub site: Site,
    /// Whether preemption is possible here (preempt count 0, not in irq).
    pub preemptible: bool,
    /// Preemptions taken so far in the run.
    pub preemptions: u32,
    /// Options `0..free` change nothing about the schedule ([`Choice::Continue`],
    /// or a workload's own decision); options from `free` on depart from
    /// it and cost one unit of an explorer's preemption bound.
    pub free: usize,
    /// A digest of the whole state that determines the rest of the run,
    /// when the chooser asked for it ([`Chooser::wants_digest`]).
    pub digest: Option<u64>,
}

impl ChoicePoint {
    /// Whether choosing `option` departs from the schedule.
    pub fn is_preemptive(&self, option: usize) -> bool {
        option >= self.free
    }
}

/// One thing that may happen at a choice point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Choice {
    /// Nothing: the running code continues.
    Continue,
    /// An interrupt arrives; its handler runs the kernel's interrupt work.
    Interrupt,
    /// The running task keeps its CPU but stops executing for now: the
    /// task current on another CPU runs (the CPUs interleave).
    RunOther {
        /// The CPU whose task runs.
        cpu: CpuId,
    },
    /// The running task is preempted; `task` runs its next unit of work on
    /// this CPU, then the preempted task resumes here.
    Preempt {
        /// The task that runs meanwhile.
        task: usize,
    },
    /// The running task is preempted and resumes on another CPU (at once
    /// when that CPU is idle, after its task's unit of work otherwise).
    Migrate {
        /// The CPU it resumes on.
        cpu: CpuId,
    },
    /// A remote CPU's TLB shootdown arrives (an IPI flushing this CPU's
    /// TLB).
    RemoteFlush,
    /// A decision of the workload: alternative `index`, drawn with
    /// probability proportional to `weight` by a random chooser.
    Pick {
        /// Which alternative.
        index: u32,
        /// Its weight.
        weight: u32,
    },
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Choice::Continue => f.write_str("continue"),
            Choice::Interrupt => f.write_str("interrupt"),
            Choice::RunOther { cpu } => write!(f, "run {cpu}"),
            Choice::Preempt { task } => write!(f, "preempt->t{task}"),
            Choice::Migrate { cpu } => write!(f, "migrate->{cpu}"),
            Choice::RemoteFlush => f.write_str("remote-flush"),
            Choice::Pick { index, .. } => write!(f, "pick {index}"),
        }
    }
}

/// Resolves choice points: the one chooser of the simulator.
pub trait Chooser {
    /// Whether this chooser may ever pick anything but option 0 at a
    /// scheduling point. A passive chooser lets the machine skip building
    /// option lists there.
    fn is_passive(&self) -> bool {
        false
    }

    /// Whether the chooser wants a [`ChoicePoint::digest`] (an explorer
    /// pruning visited states); computing one costs a walk of the state.
    fn wants_digest(&self) -> bool {
        false
    }

    /// Whether the chooser wants the digest of the point it is shown next
    /// (asked at every point when it [`Chooser::wants_digest`]); an
    /// explorer replaying the prefix of a schedule needs none before the
    /// prefix ends.
    fn wants_digest_next(&self) -> bool {
        self.wants_digest()
    }

    /// Whether the chooser wants the [`Footprint`] of every stretch of
    /// execution between two choice points it is shown
    /// ([`Chooser::segment`]); recording them costs a little on every
    /// memory access.
    fn wants_footprints(&self) -> bool {
        false
    }

    /// What the execution since the previous choice point this chooser was
    /// shown touched (opaque for the first one of a run), handed over just
    /// before [`Chooser::choose`] when [`Chooser::wants_footprints`].
    fn segment(&mut self, footprint: Footprint) {
        let _ = footprint;
    }

    /// Picks the index of one of `options` (at least two), or `None` to
    /// stop the run here (everything from here on has been explored): the
    /// machine then runs the work in progress to its end without further
    /// choices.
    fn choose(&mut self, point: &ChoicePoint, options: &[Choice]) -> Option<usize>;
}

impl<C: Chooser + ?Sized> Chooser for &mut C {
    fn is_passive(&self) -> bool {
        (**self).is_passive()
    }
    fn wants_digest(&self) -> bool {
        (**self).wants_digest()
    }
    fn wants_digest_next(&self) -> bool {
        (**self).wants_digest_next()
    }
    fn wants_footprints(&self) -> bool {
        (**self).wants_footprints()
    }
    fn segment(&mut self, footprint: Footprint) {
        (**self).segment(footprint)
    }
    fn choose(&mut self, point: &ChoicePoint, options: &[Choice]) -> Option<usize> {
        (**self).choose(point, options)
    }
}

/// Takes option 0 everywhere: no interleaving, every workload decision its
/// first alternative.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sequential;

impl Chooser for Sequential {
    fn is_passive(&self) -> bool {
        true
    }
    fn choose(&mut self, _point: &ChoicePoint, _options: &[Choice]) -> Option<usize> {
        Some(0)
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
    /// Switches to another CPU's task per thousand choice points (where
    /// the machine offers them).
    pub run_other: u64,
}

impl Default for Rates {
    fn default() -> Self {
        Self {
            interrupt: 2,
            preempt: 2,
            migrate: 1,
            remote_flush: 1,
            run_other: 0,
        }
    }
}

/// Whether a choice is of one kind.
type KindTest = fn(&Choice) -> bool;

/// A seeded random chooser: reproducible from its seed. Scheduling
/// choices come at its [`Rates`]; a workload's weighted picks by their
/// weights.
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
    fn choose(&mut self, _point: &ChoicePoint, options: &[Choice]) -> Option<usize> {
        if matches!(options.first(), Some(Choice::Pick { .. })) {
            return Some(pick_weighted(&mut self.rng, options));
        }
        let roll = self.rng.below(1000);
        let want = |kind: KindTest| options.iter().filter(|c| kind(c)).count() as u64;
        // Walk the kinds in a fixed order, each owning a slice of the roll.
        let mut base = 0;
        let kinds: [(u64, KindTest); 5] = [
            (self.rates.interrupt, |c| matches!(c, Choice::Interrupt)),
            (self.rates.preempt, |c| matches!(c, Choice::Preempt { .. })),
            (self.rates.migrate, |c| matches!(c, Choice::Migrate { .. })),
            (self.rates.remote_flush, |c| {
                matches!(c, Choice::RemoteFlush)
            }),
            (self.rates.run_other, |c| {
                matches!(c, Choice::RunOther { .. })
            }),
        ];
        for (rate, kind) in kinds {
            if roll < base + rate {
                let n = want(kind);
                if n == 0 {
                    return Some(0);
                }
                let pick = self.rng.below(n) as usize;
                return Some(
                    options
                        .iter()
                        .enumerate()
                        .filter(|(_, c)| kind(c))
                        .nth(pick)
                        .map_or(0, |(i, _)| i),
                );
            }
            base += rate;
        }
        Some(0)
    }
}

/// Draws one of a workload's weighted decisions ([`Choice::Pick`]) by
/// weight; 0 when no option has a weight.
pub fn pick_weighted(rng: &mut SplitMix64, options: &[Choice]) -> usize {
    let weight = |c: &Choice| match c {
        Choice::Pick { weight, .. } => u64::from(*weight),
        _ => 0,
    };
    let total: u64 = options.iter().map(weight).sum();
    if total == 0 {
        return 0;
    }
    let mut draw = rng.below(total);
    for (i, c) in options.iter().enumerate() {
        let w = weight(c);
        if draw < w {
            return i;
        }
        draw -= w;
    }
    options.len() - 1
}

/// Replays a recorded sequence of picks, then takes option 0; records
/// every point it was shown.
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
    /// trace does not belong to this run).
    pub fn mismatches(&self) -> u32 {
        self.mismatches
    }

    /// How many points the replay was shown.
    pub fn points(&self) -> usize {
        self.next
    }
}

impl Chooser for Replay {
    fn choose(&mut self, _point: &ChoicePoint, options: &[Choice]) -> Option<usize> {
        let pick = self.picks.get(self.next).copied().unwrap_or(0);
        self.next += 1;
        if (pick as usize) < options.len() {
            Some(pick as usize)
        } else {
            self.mismatches += 1;
            Some(0)
        }
    }
}

/// A recorded run: the scenario it belongs to (empty for a run that is not
/// a named scenario) and the pick made at every choice point with more
/// than one option.
///
/// Printed as `NAME:0.0.3.0.1` (runs of more than two equal picks
/// shortened to `0*120`, trailing zeros dropped since missing picks replay
/// as 0) and parsed back by [`FromStr`]; `NAME:` alone is the schedule
/// that always takes option 0.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Trace {
    /// The scenario's name.
    pub scenario: String,
    /// The picks, in order.
    pub picks: Vec<u32>,
}

impl Trace {
    /// A trace with trailing zeros dropped.
    pub fn new(scenario: impl Into<String>, mut picks: Vec<u32>) -> Self {
        while picks.last() == Some(&0) {
            picks.pop();
        }
        Self {
            scenario: scenario.into(),
            picks,
        }
    }

    /// Number of non-zero picks: an upper bound on the departures from the
    /// default schedule.
    pub fn departures(&self) -> usize {
        self.picks.iter().filter(|&&c| c != 0).count()
    }

    /// Whether `self` is a shorter counterexample than `other`: fewer
    /// departures from the default, then fewer picks.
    pub fn is_shorter_than(&self, other: &Trace) -> bool {
        (self.departures(), self.picks.len(), &self.picks)
            < (other.departures(), other.picks.len(), &other.picks)
    }

    /// Parses the dotted picks alone (no scenario name).
    ///
    /// # Errors
    /// [`TraceError::BadChoice`] when an element is not a number or a
    /// `PICK*COUNT` run; [`TraceError::TooLong`] when the picks number
    /// more than [`MAX_PICKS`].
    pub fn parse_picks(text: &str) -> Result<Vec<u32>, TraceError> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(Vec::new());
        }
        let mut picks = Vec::new();
        for item in text.split('.') {
            let bad = || TraceError::BadChoice(item.to_owned());
            let (pick, times) = match item.split_once('*') {
                Some((p, n)) => (p, n.parse::<usize>().map_err(|_| bad())?),
                None => (item, 1),
            };
            let pick = pick.parse::<u32>().map_err(|_| bad())?;
            if times > MAX_PICKS - picks.len() {
                return Err(TraceError::TooLong);
            }
            picks.extend(core::iter::repeat_n(pick, times));
        }
        Ok(picks)
    }
}

impl fmt::Display for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.scenario)?;
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

/// The most picks a trace may hold: a million (4 MiB), more than the
/// 1 MiB line `check --replay` reads can spell out one by one, so that a
/// short `PICK*COUNT` run cannot make the parser fill memory.
pub const MAX_PICKS: usize = 1 << 20;

/// Why a trace string could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TraceError {
    /// No `:` separates the scenario name from the picks.
    MissingColon,
    /// The scenario name is empty.
    EmptyScenario,
    /// A pick is not a non-negative integer (or `PICK*COUNT`).
    BadChoice(String),
    /// The picks number more than [`MAX_PICKS`].
    TooLong,
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TraceError::MissingColon => f.write_str("a trace is SCENARIO:C0.C1... (no ':' found)"),
            TraceError::EmptyScenario => f.write_str("the trace names no scenario"),
            TraceError::BadChoice(c) => write!(f, "choice {c:?} is not a number"),
            TraceError::TooLong => write!(f, "more than {MAX_PICKS} choices"),
        }
    }
}

impl std::error::Error for TraceError {}

impl FromStr for Trace {
    type Err = TraceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (scenario, rest) = s.split_once(':').ok_or(TraceError::MissingColon)?;
        if scenario.is_empty() {
            return Err(TraceError::EmptyScenario);
        }
        Ok(Trace::new(scenario, Trace::parse_picks(rest)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_print_parse_and_compress() {
        let t = Trace::new("xen", vec![0, 2, 0, 1, 0, 0]);
        assert_eq!(t.to_string(), "xen:0.2.0.1");
        assert_eq!("xen:0.2.0.1".parse::<Trace>().unwrap(), t);
        assert_eq!("xen:".parse::<Trace>().unwrap().picks, Vec::<u32>::new());
        let long = Trace::new("w", vec![0, 0, 0, 0, 2, 0, 0, 1]);
        assert_eq!(long.to_string(), "w:0*4.2.0.0.1");
        assert_eq!(long.to_string().parse::<Trace>().unwrap(), long);
        assert_eq!("xen".parse::<Trace>(), Err(TraceError::MissingColon));
        assert_eq!(":1".parse::<Trace>(), Err(TraceError::EmptyScenario));
        assert_eq!(
            "x:1.y".parse::<Trace>(),
            Err(TraceError::BadChoice("y".into()))
        );
        // A short run that would fill memory is refused, however it is split.
        assert_eq!("x:0*4294967296".parse::<Trace>(), Err(TraceError::TooLong));
        assert_eq!(
            "x:0*1048575.1".parse::<Trace>().map(|t| t.picks.len()),
            Ok(MAX_PICKS)
        );
        assert_eq!("x:0*1048575.1.2".parse::<Trace>(), Err(TraceError::TooLong));
    }

    fn point() -> ChoicePoint {
        ChoicePoint {
            step: 0,
            cpu: CpuId(0),
            task: 0,
            site: Site::Unit,
            preemptible: true,
            preemptions: 0,
            free: 1,
            digest: None,
        }
    }

    #[test]
    fn replay_reports_out_of_range_picks() {
        let mut r = Replay::new(vec![1, 5]);
        let options = [Choice::Continue, Choice::Interrupt];
        assert_eq!(r.choose(&point(), &options), Some(1));
        assert_eq!(r.choose(&point(), &options), Some(0));
        assert_eq!(r.mismatches(), 1);
        assert_eq!(r.choose(&point(), &options), Some(0));
        assert_eq!(r.points(), 3);
    }

    #[test]
    fn weighted_picks_follow_their_weights() {
        let mut r = RandomChooser::new(3, Rates::default());
        let options = [
            Choice::Pick {
                index: 0,
                weight: 1,
            },
            Choice::Pick {
                index: 1,
                weight: 0,
            },
            Choice::Pick {
                index: 2,
                weight: 3,
            },
        ];
        let mut seen = [0u32; 3];
        for _ in 0..4000 {
            seen[r.choose(&point(), &options).unwrap()] += 1;
        }
        assert_eq!(seen[1], 0, "a zero weight is never drawn");
        assert!(seen[2] > 2 * seen[0], "{seen:?}");
    }
}
