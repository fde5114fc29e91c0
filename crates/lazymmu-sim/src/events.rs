//! The event log: a ring buffer of the most recent things the machine did,
//! printed when an invariant is violated.

use core::fmt;

use lazymmu::addr::{PhysAddr, SpaceId};
use lazymmu::cpu::CpuId;
use lazymmu::mode::{Hook, LazyState};

use crate::choice::Choice;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A choice point resolved to something other than `Continue`.
    Choice(Choice),
    /// A costed machine primitive.
    Primitive(&'static str),
    /// A lazy-mode arch hook ran.
    Hook(Hook),
    /// A task was switched out of this CPU.
    SwitchOut(usize),
    /// A task was switched in on this CPU.
    SwitchIn(usize),
    /// Interrupt entry.
    IrqEnter,
    /// Interrupt exit.
    IrqExit,
    /// A page-table entry was stored to memory.
    Store {
        /// Entry address.
        entry: PhysAddr,
        /// New value.
        value: u64,
    },
    /// The library asked for a TLB invalidation.
    FlushRequest {
        /// Address space.
        space: SpaceId,
        /// First address.
        start: u64,
        /// End address (exclusive).
        end: u64,
    },
    /// A task started a unit of work.
    Unit(&'static str),
    /// A scripted task took a step (its action and the entry it names).
    Step(&'static str, u8),
    /// A task's lazy state was stored.
    LazyState(LazyState),
    /// A task finished its work.
    Done(usize),
    /// Something else worth a line.
    Note(&'static str),
}

/// One logged event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Event {
    /// Choice-point step at which it happened.
    pub step: u64,
    /// CPU.
    pub cpu: CpuId,
    /// Task running on that CPU.
    pub task: usize,
    /// What.
    pub kind: EventKind,
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "step {:>6} {} t{}: ", self.step, self.cpu, self.task)?;
        match self.kind {
            EventKind::Choice(c) => write!(f, "choice {c}"),
            EventKind::Primitive(p) => write!(f, "{p}"),
            EventKind::Hook(h) => write!(f, "hook {h}"),
            EventKind::SwitchOut(t) => write!(f, "switch out t{t}"),
            EventKind::SwitchIn(t) => write!(f, "switch in t{t}"),
            EventKind::IrqEnter => f.write_str("irq enter"),
            EventKind::IrqExit => f.write_str("irq exit"),
            EventKind::Store { entry, value } => write!(f, "store {:#x} <- {value:#x}", entry.0),
            EventKind::FlushRequest { space, start, end } => {
                write!(f, "flush request space {} [{start:#x}, {end:#x})", space.0)
            }
            EventKind::Unit(name) => write!(f, "unit {name}"),
            EventKind::Step(action, entry) => write!(f, "{action} {entry}"),
            EventKind::LazyState(s) => write!(
                f,
                "lazy state stored (enable {}, pause {})",
                s.enable_count, s.pause_count
            ),
            EventKind::Done(t) => write!(f, "t{t} done"),
            EventKind::Note(n) => f.write_str(n),
        }
    }
}

/// A ring buffer of the last `capacity` events.
#[derive(Clone, Debug)]
pub struct EventRing {
    events: Vec<Event>,
    next: usize,
    capacity: usize,
}

impl EventRing {
    /// An empty ring keeping `capacity` events.
    pub fn new(capacity: usize) -> Self {
        Self {
            events: Vec::with_capacity(capacity),
            next: 0,
            capacity: capacity.max(1),
        }
    }

    /// Appends an event, dropping the oldest when full.
    #[inline(always)]
    pub fn push(&mut self, event: Event) {
        if self.events.len() < self.capacity {
            self.events.push(event);
        } else {
            self.events[self.next] = event;
            self.next += 1;
            if self.next == self.capacity {
                self.next = 0;
            }
        }
    }

    /// The events, oldest first.
    pub fn to_vec(&self) -> Vec<Event> {
        let mut v = Vec::with_capacity(self.events.len());
        v.extend_from_slice(&self.events[self.next..]);
        v.extend_from_slice(&self.events[..self.next]);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_the_last_events_in_order() {
        let mut r = EventRing::new(3);
        for step in 0..5 {
            r.push(Event {
                step,
                cpu: CpuId(0),
                task: 0,
                kind: EventKind::Note("x"),
            });
        }
        let steps: Vec<_> = r.to_vec().iter().map(|e| e.step).collect();
        assert_eq!(steps, vec![2, 3, 4]);
    }
}
