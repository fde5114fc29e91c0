//! A per-CPU TLB: cached translations, tagged by address space, kept until
//! invalidated (or evicted, first in first out).

use lazymmu::addr::{SpaceId, VirtAddr};

/// One cached translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TlbEntry {
    /// The address space the translation was walked in.
    pub space: SpaceId,
    /// First address of the mapped page.
    pub base: u64,
    /// log2 of the page size.
    pub shift: u32,
    /// The leaf entry the walker found (physical address and attributes).
    pub leaf: u64,
    /// Global: matches in every address space (x86 G bit, arm64 !nG).
    pub global: bool,
    /// The page-table frames the walk went through (root first, zero past
    /// the leaf's level): the paging-structure caches a real CPU keeps
    /// along with the translation.
    pub tables: [u64; 5],
}

impl TlbEntry {
    /// Whether this entry translates `va` in `space`.
    #[inline]
    pub fn matches(&self, space: SpaceId, va: u64) -> bool {
        (self.global || self.space == space) && (va >> self.shift) == (self.base >> self.shift)
    }

    /// Whether the page overlaps `[start, end)`.
    #[inline]
    pub fn overlaps(&self, start: u64, end: u64) -> bool {
        let last = self.base + ((1u64 << self.shift) - 1);
        self.base < end && last >= start
    }
}

/// A CPU's TLB.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Tlb {
    entries: Vec<TlbEntry>,
    capacity: usize,
    cursor: usize,
}

impl Tlb {
    /// An empty TLB of `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Vec::with_capacity(capacity),
            capacity: capacity.max(1),
            cursor: 0,
        }
    }

    /// The cached translation of `va` in `space`.
    #[inline]
    pub fn lookup(&self, space: SpaceId, va: VirtAddr) -> Option<TlbEntry> {
        self.entries
            .iter()
            .copied()
            .find(|e| e.matches(space, va.0))
    }

    /// Caches a translation, evicting the oldest when full.
    pub fn fill(&mut self, entry: TlbEntry) {
        if let Some(e) = self
            .entries
            .iter_mut()
            .find(|e| e.space == entry.space && e.base == entry.base && e.shift == entry.shift)
        {
            *e = entry;
            return;
        }
        if self.entries.len() < self.capacity {
            self.entries.push(entry);
        } else {
            self.entries[self.cursor] = entry;
            self.cursor = (self.cursor + 1) % self.capacity;
        }
    }

    /// Invalidates the translations of `[start, end)` in `space`, and the
    /// global ones there too (as `invlpg` and `tlbi vae1` do).
    pub fn invalidate_range(&mut self, space: SpaceId, start: u64, end: u64) {
        self.entries
            .retain(|e| !((e.global || e.space == space) && e.overlaps(start, end)));
        self.cursor = 0;
    }

    /// Invalidates the translations of `space`: its non-global ones for a
    /// user space (a CR3 write with PCID, `tlbi aside1`); for the kernel's
    /// space, whose translations are global, every kernel and global one
    /// (`tlbi vmalle1`, a flush of the kernel's mappings).
    pub fn invalidate_space(&mut self, space: SpaceId) {
        if space == SpaceId::KERNEL {
            self.entries.retain(|e| !e.global && e.space != space);
        } else {
            self.entries.retain(|e| e.global || e.space != space);
        }
        self.cursor = 0;
    }

    /// Invalidates everything, global entries included.
    pub fn invalidate_all(&mut self) {
        self.entries.clear();
        self.cursor = 0;
    }

    /// The cached translations.
    pub fn entries(&self) -> &[TlbEntry] {
        &self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(space: u32, base: u64, global: bool) -> TlbEntry {
        TlbEntry {
            space: SpaceId(space),
            base,
            shift: 12,
            leaf: base | 1,
            global,
            tables: [0; 5],
        }
    }

    #[test]
    fn tags_and_global_bit() {
        let mut t = Tlb::new(8);
        t.fill(entry(1, 0x1000, false));
        t.fill(entry(0, 0xffff_8000_0000_0000, true));
        assert!(t.lookup(SpaceId(1), VirtAddr(0x1fff)).is_some());
        assert!(t.lookup(SpaceId(2), VirtAddr(0x1000)).is_none());
        assert!(t
            .lookup(SpaceId(2), VirtAddr(0xffff_8000_0000_0000))
            .is_some());
        t.invalidate_space(SpaceId(2));
        assert!(t
            .lookup(SpaceId(2), VirtAddr(0xffff_8000_0000_0000))
            .is_some());
        t.invalidate_space(SpaceId(1));
        assert!(t.lookup(SpaceId(1), VirtAddr(0x1000)).is_none());
        t.invalidate_range(SpaceId(5), 0xffff_8000_0000_0000, 0xffff_8000_0000_1000);
        assert!(t.entries().is_empty());
        t.fill(entry(1, 0x1000, false));
        t.fill(entry(0, 0xffff_8000_0000_0000, true));
        t.invalidate_space(SpaceId::KERNEL);
        assert_eq!(
            t.entries().len(),
            1,
            "a kernel flush drops global entries, keeps user ones"
        );
    }

    #[test]
    fn evicts_oldest() {
        let mut t = Tlb::new(2);
        t.fill(entry(1, 0x1000, false));
        t.fill(entry(1, 0x2000, false));
        t.fill(entry(1, 0x3000, false));
        assert!(t.lookup(SpaceId(1), VirtAddr(0x1000)).is_none());
        assert!(t.lookup(SpaceId(1), VirtAddr(0x3000)).is_some());
    }
}
