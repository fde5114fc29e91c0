//! The simulator's workloads as systems the explorer can enumerate.
//!
//! A run of the simulator ([`crate::run::run_here`]) resolves every choice
//! point through a [`crate::choice::Chooser`] it owns. To let the
//! explorer's chooser decide instead, the run executes on a thread of its
//! own with a relay chooser installed (the one line in `run.rs` that calls
//! [`take_injected`]); the relay sends each choice point over a channel to
//! the exploring thread, which asks the explorer and sends the answer back.
//! Everything stays deterministic: exactly one side runs at a time.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::mpsc;

use crate::choice::{self, Choice};
use crate::explore::{ChoicePoint, Chooser, RunOutcome, System, Violation};
use crate::run::run_here;
use crate::scenario::{RunConfig, RunResult};

/// Stack of a simulator run's thread: preemption nests units of work on
/// the host stack, and some backends keep large per-CPU arrays (`run.rs`
/// uses the same size).
const RUN_STACK: usize = 256 << 20;

thread_local! {
    static INJECTED: RefCell<Option<Box<dyn choice::Chooser>>> = const { RefCell::new(None) };
}

/// The chooser an explorer installed for the run on this thread, if any.
/// Called by the simulator when it sets up a run.
pub fn take_injected() -> Option<Box<dyn choice::Chooser>> {
    INJECTED.with(|slot| slot.borrow_mut().take())
}

/// What the relay sends: a choice point with its number of options, or the
/// end of the run.
enum Message {
    Point { options: usize },
    Done(Box<RunResult>),
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
    /// The run; its `rates` and `seed` are ignored.
    pub config: RunConfig,
}

/// Plays a plan known in advance and records how many options each
/// choice point offered.
struct Planned {
    plan: Vec<usize>,
    offered: Rc<RefCell<Vec<usize>>>,
}

impl choice::Chooser for Planned {
    fn choose(&mut self, _point: &choice::ChoicePoint, options: &[Choice]) -> usize {
        let mut offered = self.offered.borrow_mut();
        let pick = self.plan.get(offered.len()).copied().unwrap_or(0);
        offered.push(options.len());
        if pick < options.len() {
            pick
        } else {
            0
        }
    }
}

impl SimWorkload {
    /// Runs with `plan` on a thread of the simulator's stack size; returns
    /// the result and the number of options at each choice point.
    fn run_planned(&self, plan: Vec<usize>) -> std::thread::Result<(RunResult, Vec<usize>)> {
        let config = self.config.clone();
        std::thread::Builder::new()
            .name("lazymmu-explore".into())
            .stack_size(RUN_STACK)
            .spawn(move || {
                let offered = Rc::new(RefCell::new(Vec::new()));
                INJECTED.with(|slot| {
                    *slot.borrow_mut() = Some(Box::new(Planned {
                        plan,
                        offered: offered.clone(),
                    }))
                });
                let result = run_here(&config);
                let offered = offered.borrow().clone();
                (result, offered)
            })
            .map_err(|e| Box::new(e.to_string()) as Box<dyn std::any::Any + Send>)?
            .join()
    }

    /// The explorer's chooser decides without looking: run ahead, then
    /// show it the points.
    fn run_ahead(&self, chooser: &mut dyn Chooser, plan: Vec<usize>) -> RunOutcome {
        let (result, offered) = match self.run_planned(plan) {
            Ok(done) => done,
            Err(panic) => return crashed(&*panic),
        };
        let mut stopped = false;
        for options in offered {
            if chooser
                .choose(&ChoicePoint {
                    options,
                    free: 1,
                    digest: None,
                })
                .is_none()
            {
                stopped = true;
                break;
            }
        }
        RunOutcome {
            violation: first_violation(&result),
            stopped,
        }
    }
}

fn crashed(panic: &(dyn std::any::Any + Send)) -> RunOutcome {
    RunOutcome {
        violation: crashed_violation(panic),
        stopped: false,
    }
}

fn crashed_violation(panic: &(dyn std::any::Any + Send)) -> Option<Violation> {
    Some(Violation {
        invariant: "no panic".into(),
        detail: panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "the simulator panicked".into()),
        events: Vec::new(),
    })
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

impl System for SimWorkload {
    fn run(&self, chooser: &mut dyn Chooser) -> RunOutcome {
        if let Some(plan) = chooser.plan() {
            let plan = plan.to_vec();
            return self.run_ahead(chooser, plan);
        }
        let (point_tx, point_rx) = mpsc::channel();
        let (answer_tx, answer_rx) = mpsc::channel();
        let config = self.config.clone();
        let done_tx = point_tx.clone();
        let spawned = std::thread::Builder::new()
            .name("lazymmu-explore".into())
            .stack_size(RUN_STACK)
            .spawn(move || {
                INJECTED.with(|slot| {
                    *slot.borrow_mut() = Some(Box::new(Relay {
                        points: point_tx,
                        answers: answer_rx,
                        stopped: false,
                    }))
                });
                let result = run_here(&config);
                let _ = done_tx.send(Message::Done(Box::new(result)));
            });
        let handle = match spawned {
            Ok(handle) => handle,
            Err(e) => {
                return RunOutcome {
                    violation: Some(Violation {
                        invariant: "no panic".into(),
                        detail: format!("cannot start a simulator thread: {e}"),
                        events: Vec::new(),
                    }),
                    stopped: false,
                }
            }
        };
        let mut stopped = false;
        let mut result = None;
        while let Ok(message) = point_rx.recv() {
            match message {
                Message::Point { options } => {
                    let answer = if stopped {
                        None
                    } else {
                        let point = ChoicePoint {
                            options,
                            free: 1,
                            // The host stack (where each task is inside its
                            // unit of work) is not in the machine's digest,
                            // so states are never pruned.
                            digest: None,
                        };
                        let answer = chooser.choose(&point);
                        stopped |= answer.is_none();
                        answer
                    };
                    let _ = answer_tx.send(answer);
                }
                Message::Done(r) => {
                    result = Some(r);
                    break;
                }
            }
        }
        let crashed = handle.join().err();
        let violation = match (result, crashed) {
            (Some(r), _) => first_violation(&r),
            (None, Some(panic)) => crashed_violation(&*panic),
            (None, None) => None,
        };
        RunOutcome { violation, stopped }
    }
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
        _ => "sim",
    }
}
