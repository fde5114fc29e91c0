//! The simulator's workloads as systems the explorer can enumerate.
//!
//! A run of the simulator takes a [`crate::choice::Chooser`] through
//! [`run_with_chooser`], on a thread of its own. When the explorer's
//! chooser decides without looking at the points (no pruning, which the
//! simulator cannot support: its digest does not cover the host stack
//! where each task is inside its unit of work), the run goes ahead with
//! the plan and the points are shown to the explorer afterwards. Otherwise
//! a relay sends each point over a channel to the exploring thread, which
//! asks the explorer and sends the answer back. Either way exactly one
//! side runs at a time and the run is deterministic.

use std::panic::{self, AssertUnwindSafe};
use std::sync::mpsc;

use crate::choice::{self, Choice};
use crate::explore::{ChoicePoint, Chooser, RunOutcome, System, Violation};
use crate::run::run_with_chooser;
use crate::scenario::{RunConfig, RunResult};

/// Plays a plan known in advance and records how many options each
/// choice point offered.
struct Planned {
    plan: Vec<usize>,
    offered: Vec<usize>,
}

impl choice::Chooser for Planned {
    fn choose(&mut self, _point: &choice::ChoicePoint, options: &[Choice]) -> usize {
        let pick = self.plan.get(self.offered.len()).copied().unwrap_or(0);
        self.offered.push(options.len());
        if pick < options.len() {
            pick
        } else {
            0
        }
    }
}

/// What the relay sends: a choice point with its number of options, or the
/// end of the run.
enum Message {
    Point { options: usize },
    Done(std::thread::Result<RunResult>),
}

/// Forwards choice points to the exploring thread.
struct Relay {
    points: mpsc::Sender<Message>,
    answers: mpsc::Receiver<Option<usize>>,
    stopped: bool,
}

impl choice::Chooser for Relay {
    fn choose(&mut self, _point: &choice::ChoicePoint, options: &[Choice]) -> usize {
        if self.stopped {
            return 0;
        }
        let sent = self.points.send(Message::Point {
            options: options.len(),
        });
        match (sent, self.answers.recv()) {
            (Ok(()), Ok(Some(pick))) if pick < options.len() => pick,
            _ => {
                // Pruned, or the explorer went away: carry on sequentially.
                self.stopped = true;
                0
            }
        }
    }
}

/// One simulator configuration (backend, workload, design, size) as an
/// explorer system. Only [`Choice::Continue`] is free; every interrupt,
/// preemption, migration and remote flush costs one unit of the bound.
#[derive(Clone, Debug)]
pub struct SimWorkload {
    /// The run; its `rates` and `seed` are not used.
    pub config: RunConfig,
}

impl SimWorkload {
    /// The explorer's chooser decides without looking: run ahead, then
    /// show it the points.
    fn run_ahead(&self, chooser: &mut dyn Chooser, plan: Vec<usize>) -> RunOutcome {
        let planned = Planned {
            plan,
            offered: Vec::new(),
        };
        let (result, planned) =
            match panic::catch_unwind(AssertUnwindSafe(|| run_with_chooser(&self.config, planned)))
            {
                Ok(done) => done,
                Err(panic) => {
                    return RunOutcome {
                        violation: Some(crashed(&*panic)),
                        stopped: false,
                    }
                }
            };
        let mut stopped = false;
        for options in planned.offered {
            let point = ChoicePoint {
                options,
                free: 1,
                digest: None,
            };
            if chooser.choose(&point).is_none() {
                stopped = true;
                break;
            }
        }
        RunOutcome {
            violation: first_violation(&result),
            stopped,
        }
    }

    /// The explorer's chooser looks at each point: relay them one by one.
    fn run_relayed(&self, chooser: &mut dyn Chooser) -> RunOutcome {
        let (point_tx, point_rx) = mpsc::channel();
        let (answer_tx, answer_rx) = mpsc::channel();
        let relay = Relay {
            points: point_tx.clone(),
            answers: answer_rx,
            stopped: false,
        };
        let config = self.config.clone();
        std::thread::scope(|scope| {
            scope.spawn(move || {
                let done =
                    panic::catch_unwind(AssertUnwindSafe(|| run_with_chooser(&config, relay).0));
                let _ = point_tx.send(Message::Done(done));
            });
            let mut stopped = false;
            while let Ok(message) = point_rx.recv() {
                match message {
                    Message::Point { options } => {
                        let answer = if stopped {
                            None
                        } else {
                            let answer = chooser.choose(&ChoicePoint {
                                options,
                                free: 1,
                                digest: None,
                            });
                            stopped = answer.is_none();
                            answer
                        };
                        let _ = answer_tx.send(answer);
                    }
                    Message::Done(done) => {
                        let violation = match done {
                            Ok(result) => first_violation(&result),
                            Err(panic) => Some(crashed(&*panic)),
                        };
                        return RunOutcome { violation, stopped };
                    }
                }
            }
            RunOutcome {
                violation: Some(Violation {
                    invariant: "no panic".into(),
                    detail: "the simulator thread ended without a result".into(),
                    events: Vec::new(),
                }),
                stopped,
            }
        })
    }
}

impl System for SimWorkload {
    fn run(&self, chooser: &mut dyn Chooser) -> RunOutcome {
        match chooser.plan() {
            Some(plan) => {
                let plan = plan.to_vec();
                self.run_ahead(chooser, plan)
            }
            None => self.run_relayed(chooser),
        }
    }
}

fn crashed(panic: &(dyn std::any::Any + Send)) -> Violation {
    Violation {
        invariant: "no panic".into(),
        detail: panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "the simulator panicked".into()),
        events: Vec::new(),
    }
}

fn first_violation(result: &RunResult) -> Option<Violation> {
    result.violations.first().map(|v| Violation {
        invariant: format!("{} ({})", invariant_number(v.invariant), v.invariant),
        detail: format!(
            "step {} cpu{} task t{}: {}",
            v.step, v.cpu, v.task, v.detail
        ),
        events: v.events.iter().map(|e| e.to_string()).collect(),
    })
}

/// The DESIGN.md §6 item a simulator invariant belongs to.
fn invariant_number(invariant: crate::invariant::Invariant) -> &'static str {
    use crate::invariant::Invariant as I;
    match invariant {
        I::WritesVisible | I::StaleTranslation => "1",
        I::IrqImmediate => "2",
        I::EnterLeave => "3",
        I::BatchOwnership => "4",
        I::KeyFault | I::KeyRestore => "5",
        I::StaleReadBack => "6",
        I::FreedInUse => "7",
        _ => "sim",
    }
}
