//! A set of pages kept as sorted, disjoint, non-adjacent runs.
//!
//! The address-space history keeps the present pages of every address
//! space here: a program that touches a gigabyte in order is one run, not
//! 262,144 entries, so memory follows the shape of the address space and
//! not the number of events.

use std::collections::BTreeMap;
use std::ops::Range;

use super::PAGE_SIZE;

/// Page-aligned address ranges, merged when they touch.
///
/// Every range the set hands out is page aligned and non-empty; ranges
/// passed in must be page aligned (the history aligns before it asks).
///
/// ```
/// use lazymmu_sim::program_trace::page_set::PageSet;
///
/// let mut set = PageSet::default();
/// set.insert(0x1000..0x3000);
/// set.insert(0x3000..0x4000); // touches: one run
/// assert_eq!(set.runs().collect::<Vec<_>>(), vec![0x1000..0x4000]);
/// let removed = set.remove(0x2000..0x3000);
/// assert_eq!(removed, vec![0x2000..0x3000]);
/// assert_eq!(set.pages(), 2);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PageSet {
    /// Run start → run end (exclusive).
    runs: BTreeMap<u64, u64>,
    /// Pages in all runs.
    pages: u64,
}

fn pages_in(range: &Range<u64>) -> u64 {
    (range.end - range.start) / PAGE_SIZE
}

impl PageSet {
    /// Number of pages in the set.
    #[must_use]
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// Whether the set holds no page.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Whether the page at `addr` (aligned down) is in the set.
    #[must_use]
    pub fn contains(&self, addr: u64) -> bool {
        let page = addr & !(PAGE_SIZE - 1);
        self.runs
            .range(..=page)
            .next_back()
            .is_some_and(|(_, &end)| end > page)
    }

    /// All runs, in address order.
    pub fn runs(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.runs.iter().map(|(&start, &end)| start..end)
    }

    /// The parts of the set inside `range`, in address order.
    pub fn runs_in(&self, range: Range<u64>) -> impl Iterator<Item = Range<u64>> + '_ {
        // A run starting before `range` may reach into it.
        let first = self
            .runs
            .range(..range.start)
            .next_back()
            .filter(|(_, &end)| end > range.start)
            .map(|(&start, _)| start)
            .unwrap_or(range.start);
        let end = range.end;
        self.runs
            .range(first..end.max(first))
            .map(move |(&s, &e)| s.max(range.start)..e.min(end))
            .filter(|r| r.start < r.end)
    }

    /// Pages of the set inside `range`.
    #[must_use]
    pub fn pages_in(&self, range: Range<u64>) -> u64 {
        self.runs_in(range).map(|r| pages_in(&r)).sum()
    }

    /// Adds `range`; returns how many pages were not in the set before.
    pub fn insert(&mut self, range: Range<u64>) -> u64 {
        if range.start >= range.end {
            return 0;
        }
        let before = self.pages_in(range.clone());
        let mut start = range.start;
        let mut end = range.end;
        // Absorb a run that ends at or after `start` and begins before it.
        if let Some((&s, &e)) = self.runs.range(..=start).next_back() {
            if e >= start {
                start = s;
                end = end.max(e);
            }
        }
        // Absorb every run beginning inside or right after the new range.
        let absorbed: Vec<u64> = self.runs.range(start..=end).map(|(&s, _)| s).collect();
        for s in absorbed {
            if let Some(e) = self.runs.remove(&s) {
                end = end.max(e);
            }
        }
        self.runs.insert(start, end);
        let added = pages_in(&range) - before;
        self.pages += added;
        added
    }

    /// Removes `range`; returns the runs that were in the set.
    pub fn remove(&mut self, range: Range<u64>) -> Vec<Range<u64>> {
        let removed: Vec<Range<u64>> = self.runs_in(range.clone()).collect();
        if removed.is_empty() {
            return removed;
        }
        // Split a run that starts before the range.
        if let Some((&s, &e)) = self.runs.range(..range.start).next_back() {
            if e > range.start {
                self.runs.insert(s, range.start);
                if e > range.end {
                    self.runs.insert(range.end, e);
                }
            }
        }
        let inside: Vec<u64> = self
            .runs
            .range(range.start..range.end)
            .map(|(&s, _)| s)
            .collect();
        for s in inside {
            if let Some(e) = self.runs.remove(&s) {
                if e > range.end {
                    self.runs.insert(range.end, e);
                }
            }
        }
        self.pages -= removed.iter().map(pages_in).sum::<u64>();
        removed
    }

    /// Moves the pages in `from` by `to - from.start` (mremap): they leave
    /// `from` and appear at the same offsets from `to`. Returns the runs
    /// moved, at their old addresses.
    pub fn shift(&mut self, from: Range<u64>, to: u64) -> Vec<Range<u64>> {
        let moved = self.remove(from.clone());
        for run in &moved {
            let start = to + (run.start - from.start);
            self.insert(start..start + (run.end - run.start));
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    const P: u64 = PAGE_SIZE;

    #[test]
    fn insert_merges_touching_and_overlapping_runs() {
        let mut set = PageSet::default();
        assert_eq!(set.insert(P..3 * P), 2);
        assert_eq!(set.insert(5 * P..6 * P), 1);
        assert_eq!(set.insert(2 * P..5 * P), 2);
        assert_eq!(set.runs().collect::<Vec<_>>(), vec![P..6 * P]);
        assert_eq!(set.pages(), 5);
        assert_eq!(set.insert(0..P), 1);
        assert_eq!(set.runs().collect::<Vec<_>>(), vec![0..6 * P]);
    }

    #[test]
    fn remove_splits_a_run() {
        let mut set = PageSet::default();
        set.insert(0..10 * P);
        assert_eq!(set.remove(3 * P..4 * P), vec![3 * P..4 * P]);
        assert_eq!(
            set.runs().collect::<Vec<_>>(),
            vec![0..3 * P, 4 * P..10 * P]
        );
        assert_eq!(set.pages(), 9);
        assert!(set.remove(20 * P..30 * P).is_empty());
        assert!(!set.contains(3 * P + 5));
        assert!(set.contains(4 * P + 5));
    }

    fn model_pages(range: &Range<u64>) -> impl Iterator<Item = u64> {
        (range.start / P..range.end / P).map(|p| p * P)
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(Range<u64>),
        Remove(Range<u64>),
        Shift(Range<u64>, u64),
    }

    fn range() -> impl Strategy<Value = Range<u64>> {
        (0u64..64, 1u64..16).prop_map(|(start, len)| start * P..(start + len) * P)
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            range().prop_map(Op::Insert),
            range().prop_map(Op::Remove),
            (range(), 0u64..96).prop_map(|(r, to)| Op::Shift(r, to * P)),
        ]
    }

    proptest! {
        /// The run set agrees with a set of single pages after any
        /// sequence of inserts, removes and shifts.
        #[test]
        fn agrees_with_a_set_of_pages(ops in proptest::collection::vec(op(), 1..40)) {
            let mut set = PageSet::default();
            let mut model = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Insert(r) => {
                        let new = model_pages(&r).filter(|p| !model.contains(p)).count() as u64;
                        prop_assert_eq!(set.insert(r.clone()), new);
                        model.extend(model_pages(&r));
                    }
                    Op::Remove(r) => {
                        let removed: u64 = set.remove(r.clone()).iter().map(pages_in).sum();
                        let expected = model_pages(&r).filter(|p| model.remove(p)).count() as u64;
                        prop_assert_eq!(removed, expected);
                    }
                    Op::Shift(r, to) => {
                        let moved: Vec<u64> = model_pages(&r).filter(|p| model.remove(p)).collect();
                        set.shift(r.clone(), to);
                        model.extend(moved.into_iter().map(|p| p - r.start + to));
                    }
                }
                let pages: BTreeSet<u64> = set.runs().flat_map(|r| model_pages(&r).collect::<Vec<_>>()).collect();
                prop_assert_eq!(&pages, &model);
                prop_assert_eq!(set.pages(), model.len() as u64);
                // Runs are disjoint and never touch.
                let runs: Vec<_> = set.runs().collect();
                for pair in runs.windows(2) {
                    prop_assert!(pair[0].end < pair[1].start);
                }
                let probe = 7 * P..29 * P;
                let inside: u64 = set.runs_in(probe.clone()).map(|r| pages_in(&r)).sum();
                prop_assert_eq!(inside, model_pages(&probe).filter(|p| model.contains(p)).count() as u64);
            }
        }
    }
}
