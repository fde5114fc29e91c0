//! What a stretch of execution between two choice points touches: its
//! *footprint*, the shared locations it read and wrote. Two stretches run
//! by different CPUs whose footprints do not conflict (neither writes what
//! the other reads or writes) commute: running them in either order gives
//! the same state, which is what lets the explorer skip one of the orders
//! (sleep sets; Godefroid, "Partial-Order Methods for the Verification of
//! Concurrent Systems", LNCS 1032, 1996, chapter 5; Flanagan and Godefroid,
//! "Dynamic Partial-Order Reduction for Model Checking Software", POPL
//! 2005, §2 for the independence relation).
//!
//! Locations are the machine's shared state: page-table entries (with the
//! arm64 stores still pending on them), each CPU's TLB and other state,
//! each task's state, the frame allocator, each address space's lazy-TLB
//! state, and objects a kernel names for itself. A stretch that does
//! something the log cannot describe (a context switch, an interrupt, a
//! unit ending and another task starting) is *opaque*: dependent on
//! everything.

use core::cell::{Cell, RefCell};

use lazymmu::addr::{PhysAddr, SpaceId};
use lazymmu::cpu::CpuId;

/// A shared location.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Location {
    /// An 8-byte page-table entry (its value and any arm64 store pending
    /// on it).
    Entry(PhysAddr),
    /// A CPU's TLB and paging-structure caches.
    Tlb(CpuId),
    /// A CPU's other state (key register, stale walks, lazy-TLB and
    /// key-window state).
    Cpu(CpuId),
    /// A task's state (lazy state, saved keys, arch slot).
    Task(usize),
    /// The frame allocator (which frame comes next, who owns which).
    Allocator,
    /// An address space's lazy-TLB state (CPU mask, counts).
    Space(SpaceId),
    /// Something of the kernel's own, named by the kernel.
    Object(u64),
}

impl Location {
    fn code(self) -> u64 {
        const SHIFT: u32 = 56;
        let (tag, value) = match self {
            Location::Entry(pa) => (0, pa.0),
            Location::Tlb(cpu) => (1, u64::from(cpu.0)),
            Location::Cpu(cpu) => (2, u64::from(cpu.0)),
            Location::Task(t) => (3, t as u64),
            Location::Allocator => (4, 0),
            Location::Space(s) => (5, u64::from(s.0)),
            Location::Object(o) => (6, o & ((1 << SHIFT) - 1)),
        };
        (tag << SHIFT) | value
    }
}

/// The footprint of one stretch of execution.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Footprint {
    reads: Vec<u64>,
    writes: Vec<u64>,
    opaque: bool,
}

impl Footprint {
    /// A footprint that conflicts with everything.
    pub fn opaque() -> Self {
        Self {
            opaque: true,
            ..Self::default()
        }
    }

    /// Whether it conflicts with everything.
    pub fn is_opaque(&self) -> bool {
        self.opaque
    }

    /// Whether the two stretches commute: neither is opaque and neither
    /// writes a location the other reads or writes.
    pub fn independent(&self, other: &Footprint) -> bool {
        !self.opaque
            && !other.opaque
            && !meets(&self.writes, &other.writes)
            && !meets(&self.writes, &other.reads)
            && !meets(&self.reads, &other.writes)
    }

    /// Locations read and written, in all.
    pub fn len(&self) -> usize {
        self.reads.len() + self.writes.len()
    }

    /// Whether nothing was touched.
    pub fn is_empty(&self) -> bool {
        self.len() == 0 && !self.opaque
    }
}

/// Whether two sorted lists share an element.
fn meets(a: &[u64], b: &[u64]) -> bool {
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            core::cmp::Ordering::Less => i += 1,
            core::cmp::Ordering::Greater => j += 1,
            core::cmp::Ordering::Equal => return true,
        }
    }
    false
}

/// Records footprints while an explorer wants them; otherwise every call
/// is one test of a flag.
#[derive(Debug, Default)]
pub struct FootprintLog {
    on: Cell<bool>,
    current: RefCell<Footprint>,
}

impl FootprintLog {
    /// Starts (or stops) recording.
    pub fn set_recording(&self, on: bool) {
        self.on.set(on);
        *self.current.borrow_mut() = Footprint::opaque();
    }

    /// Whether it records.
    #[inline]
    pub fn recording(&self) -> bool {
        self.on.get()
    }

    /// Stops recording until the guard is dropped: what the machine's own
    /// choice machinery reads (the options it offers, the digest) belongs
    /// to no stretch.
    pub fn quiet(&self) -> Quiet<'_> {
        Quiet {
            log: self,
            was: self.on.replace(false),
        }
    }

    /// `location` was read.
    #[inline]
    pub fn read(&self, location: Location) {
        if self.on.get() {
            self.current.borrow_mut().reads.push(location.code());
        }
    }

    /// `location` was written.
    #[inline]
    pub fn write(&self, location: Location) {
        if self.on.get() {
            self.current.borrow_mut().writes.push(location.code());
        }
    }

    /// Every one of `locations` was written.
    #[inline]
    pub fn write_all(&self, locations: impl Iterator<Item = Location>) {
        if self.on.get() {
            let mut current = self.current.borrow_mut();
            current.writes.extend(locations.map(Location::code));
        }
    }

    /// Something happened that no footprint describes.
    #[inline]
    pub fn opaque(&self) {
        if self.on.get() {
            self.current.borrow_mut().opaque = true;
        }
    }

    /// The footprint since the last call, sorted; recording starts afresh.
    pub fn take(&self) -> Footprint {
        let mut f = core::mem::take(&mut *self.current.borrow_mut());
        if f.opaque {
            return Footprint::opaque();
        }
        for v in [&mut f.reads, &mut f.writes] {
            v.sort_unstable();
            v.dedup();
        }
        f
    }
}

/// Recording paused ([`FootprintLog::quiet`]).
#[must_use = "recording resumes when the guard is dropped"]
pub struct Quiet<'a> {
    log: &'a FootprintLog,
    was: bool,
}

impl Drop for Quiet<'_> {
    fn drop(&mut self) {
        self.log.on.set(self.was);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn footprint(reads: &[Location], writes: &[Location]) -> Footprint {
        let log = FootprintLog::default();
        log.set_recording(true);
        let _ = log.take();
        for &r in reads {
            log.read(r);
        }
        for &w in writes {
            log.write(w);
        }
        log.take()
    }

    #[test]
    fn conflicts_are_a_write_against_a_read_or_write() {
        let e = |a| Location::Entry(PhysAddr(a));
        let a = footprint(&[e(0x1000)], &[e(0x1008)]);
        let b = footprint(&[e(0x1000)], &[e(0x1010)]);
        assert!(a.independent(&b), "reads of one entry commute");
        let c = footprint(&[e(0x1008)], &[]);
        assert!(!a.independent(&c) && !c.independent(&a));
        let d = footprint(&[], &[e(0x1008)]);
        assert!(!a.independent(&d));
        assert!(!a.independent(&Footprint::opaque()));
        let t = footprint(&[Location::Tlb(CpuId(1))], &[]);
        let u = footprint(&[], &[Location::Tlb(CpuId(1))]);
        assert!(!t.independent(&u));
        assert!(t.independent(&a));
    }

    #[test]
    fn a_log_starts_opaque_and_records_only_when_on() {
        let log = FootprintLog::default();
        log.write(Location::Allocator);
        assert!(log.take().is_empty(), "off: nothing recorded");
        log.set_recording(true);
        assert!(log.take().is_opaque(), "the start of a run is opaque");
        log.write(Location::Allocator);
        log.write(Location::Allocator);
        let f = log.take();
        assert_eq!(f.len(), 1);
        assert!(!f.is_opaque());
    }
}
