//! Run-level entry operations: a run of consecutive entries of one PTE
//! table handed to the backend in one call, as Linux's batch entry points
//! do (include/linux/pgtable.h, 2024–2025: `set_ptes`,
//! `get_and_clear_full_ptes`/`clear_full_ptes`, `wrprotect_ptes`,
//! `modify_prot_start_ptes`/`modify_prot_commit_ptes`; arm64 overrides them
//! for contiguous ranges in arch/arm64/mm/contpte.c).
//!
//! Linux's generic versions are loops over the per-entry functions, and so
//! are the defaults of [`Backend`](crate::backend::Backend)'s run methods: the functions here named
//! `*_each` ([`clear_ptes_each`], [`protect_ptes_each`], [`copy_ptes_each`],
//! [`move_ptes_each`]) call the backend's [`PteAccess`] entry by entry, in
//! the order the range operations always did, so a backend that batches or
//! decorates single writes (Xen PV, s390, powerpc hash, sparc64, the
//! protected backends) keeps its exact behaviour and primitive counts. A
//! backend whose stores have nothing to batch overrides the run methods
//! with a loop over the entries themselves: the x86 native backend over
//! memory that lends a run of entries ([`PageTableMemory::run_cells`]),
//! with the loops in [`cells`]; arm64 with plain stores and one barrier
//! decision per run.
//!
//! Every run method reports what it changed as [`RunChanges`]; the range
//! operation turns that into its summary and its TLB invalidations.
//!
//! [`PageTableMemory::run_cells`]: crate::pgtable::memory::PageTableMemory::run_cells

use crate::addr::{PhysAddr, SpaceId, VirtAddr};
use crate::backend::{EntryUpdate, PteAccess};
use crate::pgtable::format::{Attributes, Entry, Format, Protection};
use crate::pgtable::ops::CopyKind;

/// The longest run: a PTE table of 4 KiB entries has 512 (s390's has 256).
pub const MAX_RUN: usize = 512;

/// A run of consecutive entries of one table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PteRun {
    /// Physical address of the first entry.
    pub entry: PhysAddr,
    /// Canonical virtual address the first entry covers.
    pub va: VirtAddr,
    /// Address space the entries belong to.
    pub space: SpaceId,
    /// Level of the table (1 for a PTE table; a run above it has one
    /// entry).
    pub level: u8,
    /// Whether the entries belong to the kernel's half.
    pub kernel: bool,
    /// Number of entries, at most [`MAX_RUN`], all in one table.
    pub count: usize,
}

impl PteRun {
    /// The same start with `count` entries.
    #[inline]
    pub const fn with_count(self, count: usize) -> Self {
        PteRun { count, ..self }
    }

    /// The entries of the run from entry `n` on (none when `n` is past
    /// its end).
    #[inline]
    pub fn tail(self, n: usize) -> Self {
        let n = n.min(self.count);
        PteRun {
            entry: self.entry_at(n),
            va: self.va_at(n),
            count: self.count - n,
            ..self
        }
    }

    /// The address of entry `i`.
    #[inline]
    pub fn entry_at(&self, i: usize) -> PhysAddr {
        self.entry.add(8 * i as u64)
    }

    /// The virtual address entry `i` covers (4 KiB apart in a PTE table;
    /// a run above it has one entry).
    #[inline]
    pub fn va_at(&self, i: usize) -> VirtAddr {
        VirtAddr(self.va.0.wrapping_add((i as u64) << 12))
    }

    /// The update that stores `value` in entry `i` (a leaf when valid), as
    /// the per-entry path describes it to the backend.
    #[inline]
    pub fn update<F: Format>(&self, i: usize, value: u64) -> EntryUpdate {
        let valid = F::is_valid(value);
        EntryUpdate {
            entry: self.entry_at(i),
            va: self.va_at(i),
            space: self.space,
            level: self.level,
            value,
            kernel: self.kernel,
            valid,
            leaf: valid,
        }
    }
}

/// What a run operation changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunChanges {
    /// One bit per entry of the run whose old translation must be
    /// invalidated: cleared (zap, move), rewritten (protect), or
    /// write-protected in the parent (copy).
    pub mask: [u64; MAX_RUN / 64],
    /// Entries cleared whose old value was dirty (zap).
    pub dirty: u64,
    /// Entries written into the child (copy).
    pub copied: u64,
    /// The entry at which the run stopped because its destination (the
    /// child's entry, the move's target) was already present; nothing from
    /// it on was changed.
    pub stopped: Option<usize>,
}

impl RunChanges {
    /// Marks entry `i` as changed.
    #[inline]
    pub fn mark(&mut self, i: usize) {
        self.mask[i / 64] |= 1 << (i % 64);
    }

    /// Entries marked. A full word (a run of one mapping) is counted
    /// without its bits: x86-64's baseline has no `popcnt`.
    #[inline]
    pub fn count(&self) -> u64 {
        self.mask
            .iter()
            .map(|&word| match word {
                u64::MAX => 64,
                word => u64::from(word.count_ones()),
            })
            .sum()
    }

    /// The first and last entries marked, if any.
    pub fn bounds(&self) -> Option<(usize, usize)> {
        let first = self.mask.iter().position(|&word| word != 0)?;
        let last = self.mask.iter().rposition(|&word| word != 0)?;
        Some((
            first * 64 + self.mask[first].trailing_zeros() as usize,
            last * 64 + 63 - self.mask[last].leading_zeros() as usize,
        ))
    }

    /// The entries marked, in order.
    pub fn marked(&self) -> impl Iterator<Item = usize> + '_ {
        (0..MAX_RUN).filter(|&i| self.mask[i / 64] & (1 << (i % 64)) != 0)
    }
}

/// A protection change as a run applies it (`change_pte_range`'s
/// `pte_modify`, mm/mprotect.c): the permissions [`Protection`] sets, every
/// other bit of each entry (its address, cacheability, dirty and accessed
/// bits) kept, as [`Format::protect_leaf`] does, for leaves of one level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewProtection {
    protection: Protection,
    level: u8,
    address: u64,
}

impl NewProtection {
    /// Leaves at `level` of format `F` get the permissions `protection`
    /// sets.
    pub fn new<F: Format>(level: u8, protection: Protection) -> Self {
        NewProtection {
            protection,
            level,
            address: F::leaf_size(level).map_or(0, F::leaf_address_mask),
        }
    }

    /// The address bits of a leaf at the protection's level, which it
    /// keeps.
    pub fn address(&self) -> u64 {
        self.address
    }

    /// The entry `old` with the new permissions ([`Format::protect_leaf`]);
    /// `old` unchanged when it is not a leaf.
    #[inline]
    pub fn apply<F: Format>(&self, old: u64) -> u64 {
        F::protect_leaf(old, self.level, self.protection)
    }
}

/// `set_ptes` (include/linux/pgtable.h) entry by entry: entry `i` of the
/// run from `first` gets `first.value + i * step` through
/// [`PteAccess::write_entry`] (see [`PteAccess::write_entries`]).
pub fn write_entries_each<B: PteAccess + ?Sized>(
    backend: &B,
    first: EntryUpdate,
    count: usize,
    step: u64,
) {
    let page = first.page_size().bytes();
    for i in 0..count as u64 {
        backend.write_entry(EntryUpdate {
            entry: first.entry.add(8 * i),
            va: VirtAddr(first.va.0.wrapping_add(i * page)),
            value: first.value + i * step,
            ..first
        });
    }
}

/// `get_and_clear_full_ptes` (include/linux/pgtable.h) over the present
/// entries of `run`, entry by entry: each present entry is read, then
/// cleared with [`PteAccess::get_and_clear_full`]
/// (`ptep_get_and_clear_full`, `full` when the whole address space is torn
/// down), and counted dirty when its old value was.
pub fn clear_ptes_each<F: Format, B: PteAccess + ?Sized>(
    backend: &B,
    run: PteRun,
    full: bool,
) -> RunChanges {
    let mut changes = RunChanges::default();
    for i in 0..run.count {
        if !F::is_valid(backend.read_entry(run.entry_at(i))) {
            continue;
        }
        let old = backend.get_and_clear_full(run.update::<F>(i, 0), full);
        changes.dirty += u64::from(F::is_valid(old) && old & F::DIRTY_BIT != 0);
        changes.mark(i);
    }
    changes
}

/// `modify_prot_start_ptes` + `modify_prot_commit_ptes`
/// (include/linux/pgtable.h) over `run`, entry by entry: see
/// [`protect_entry`].
pub fn protect_ptes_each<F: Format, B: PteAccess + ?Sized>(
    backend: &B,
    run: PteRun,
    protection: &NewProtection,
) -> RunChanges {
    let mut changes = RunChanges::default();
    for i in 0..run.count {
        if protect_entry::<F, B>(backend, &run, i, protection) {
            changes.mark(i);
        }
    }
    changes
}

/// Rewrites entry `i` of `run` with the new protection as
/// `change_pte_range` does (mm/mprotect.c): a present entry that would
/// change is taken with [`PteAccess::modify_prot_start`] (so a dirty bit
/// the hardware sets meanwhile is not lost), and its new value, computed
/// from what that returned, is stored with
/// [`PteAccess::modify_prot_commit`]. Returns whether it changed.
pub fn protect_entry<F: Format, B: PteAccess + ?Sized>(
    backend: &B,
    run: &PteRun,
    i: usize,
    protection: &NewProtection,
) -> bool {
    let current = backend.read_entry(run.entry_at(i));
    if !F::is_valid(current) || protection.apply::<F>(current) == current {
        return false;
    }
    let old = backend.modify_prot_start(run.update::<F>(i, 0));
    if !F::is_valid(old) {
        return false;
    }
    backend.modify_prot_commit(run.update::<F>(i, protection.apply::<F>(old)));
    true
}

/// `copy_present_ptes` (mm/memory.c: `wrprotect_ptes` on the parent, then
/// `set_ptes` on the child) over the present entries of `parent`, entry by
/// entry: an entry whose child entry is present stops the run there;
/// otherwise see [`copy_entry`].
pub fn copy_ptes_each<F: Format, B: PteAccess + ?Sized>(
    backend: &B,
    parent: PteRun,
    child: PteRun,
    kind: CopyKind,
) -> RunChanges {
    copy_ptes_across::<F, B, B>(backend, backend, parent, child, kind)
}

/// [`copy_ptes_each`] with the child's entries read and written through
/// `to`, the backend of the child's tree, and the parent's through `from`.
pub fn copy_ptes_across<F: Format, P: PteAccess + ?Sized, C: PteAccess + ?Sized>(
    from: &P,
    to: &C,
    parent: PteRun,
    child: PteRun,
    kind: CopyKind,
) -> RunChanges {
    let mut changes = RunChanges::default();
    for i in 0..parent.count {
        if !F::is_valid(from.read_entry(parent.entry_at(i))) {
            continue;
        }
        if F::is_valid(to.read_entry(child.entry_at(i))) {
            changes.stopped = Some(i);
            break;
        }
        let (copied, downgraded) = copy_entry::<F, P, C>(from, to, &parent, &child, i, kind);
        changes.copied += u64::from(copied);
        if downgraded {
            changes.mark(i);
        }
    }
    changes
}

/// Copies present entry `i` of `parent` into the empty entry `i` of
/// `child` (`copy_present_pte`, mm/memory.c), the parent's entry through
/// `from` and the child's through `to`. For [`CopyKind::Private`] a
/// writable parent entry is write-protected first, in one
/// [`PteAccess::set_wrprotect`] (Linux's atomic `ptep_set_wrprotect`), and
/// the child gets what that returned, write-protected: the hardware may
/// have set the dirty bit since the read. The child's copy is old, and
/// clean too for [`CopyKind::Shared`]. Returns whether the child got an
/// entry and whether the parent's was write-protected (and so must be
/// flushed).
pub fn copy_entry<F: Format, P: PteAccess + ?Sized, C: PteAccess + ?Sized>(
    from: &P,
    to: &C,
    parent: &PteRun,
    child: &PteRun,
    i: usize,
    kind: CopyKind,
) -> (bool, bool) {
    let level = parent.level;
    let current = from.read_entry(parent.entry_at(i));
    let Entry::Leaf { phys, size, attrs } = F::decode(current, level) else {
        return (false, false);
    };
    let mut value = current;
    let mut downgraded = false;
    if kind == CopyKind::Private && attrs.writable {
        let protected = F::encode_leaf(phys, size, attrs.read_only());
        let old = from.set_wrprotect(parent.update::<F>(i, protected));
        value = match F::decode(old, level) {
            Entry::Leaf { phys, size, attrs } => F::encode_leaf(phys, size, attrs.read_only()),
            _ => protected,
        };
        downgraded = true;
    }
    let mut copied = false;
    if let Entry::Leaf { phys, size, attrs } = F::decode(value, level) {
        let child_attrs = Attributes {
            accessed: false,
            dirty: attrs.dirty && kind == CopyKind::Private,
            ..attrs
        };
        to.write_entry(child.update::<F>(i, F::encode_leaf(phys, size, child_attrs)));
        copied = true;
    }
    (copied, downgraded)
}

/// `move_ptes` (mm/mremap.c: `get_and_clear_ptes` on the source, then
/// `set_ptes` at the destination) over the present entries of `from`,
/// entry by entry: a present destination entry stops the run there;
/// otherwise the source entry is cleared with
/// [`PteAccess::get_and_clear`] (keeping the dirty bit the hardware set)
/// and its old value written at the destination.
pub fn move_ptes_each<F: Format, B: PteAccess + ?Sized>(
    backend: &B,
    from: PteRun,
    to: PteRun,
) -> RunChanges {
    let mut changes = RunChanges::default();
    for i in 0..from.count {
        if !F::is_valid(backend.read_entry(from.entry_at(i))) {
            continue;
        }
        if F::is_valid(backend.read_entry(to.entry_at(i))) {
            changes.stopped = Some(i);
            break;
        }
        let old = backend.get_and_clear(from.update::<F>(i, 0));
        backend.write_entry(to.update::<F>(i, old));
        changes.mark(i);
    }
    changes
}

/// The run operations as loops over the entries themselves, for a backend
/// whose entry stores have no side effect (x86 native): the same tables
/// and the same report as the `*_each` functions over plain memory leave,
/// with nothing between one entry and the next. Some loops store values
/// they take back before they return (see `take_chunks`), which only
/// memory that no hardware walker reads may see
/// ([`PageTableMemory::run_cells`](crate::pgtable::memory::PageTableMemory::run_cells)).
pub mod cells {
    use core::cell::Cell;

    use super::{NewProtection, RunChanges};
    use crate::pgtable::format::{Attributes, Entry, Format};
    use crate::pgtable::ops::CopyKind;

    /// [`write_entries_each`](super::write_entries_each) over `run`: entry
    /// `i` gets `value + i * step` (`set_ptes`).
    #[inline]
    pub fn fill(run: &[Cell<u64>], value: u64, step: u64) {
        let mut next = value;
        for cell in run {
            cell.set(next);
            next = next.wrapping_add(step);
        }
    }

    /// Calls `each` on the positions `0..len` in order and marks those it
    /// returns `Some(true)` for, until it returns `None` (the run stops
    /// there). The marks of 64 positions gather in a register before they
    /// are stored, so that no entry waits on the previous one's mark.
    #[inline(always)]
    fn mark_each(len: usize, mut each: impl FnMut(usize) -> Option<bool>) -> RunChanges {
        let mut changes = RunChanges::default();
        for (w, marks) in changes.mask.iter_mut().enumerate() {
            let base = w * 64;
            if base >= len {
                break;
            }
            let mut word = 0u64;
            for j in 0..(len - base).min(64) {
                match each(base + j) {
                    Some(changed) => word |= u64::from(changed) << j,
                    None => {
                        *marks = word;
                        changes.stopped = Some(base + j);
                        return changes;
                    }
                }
            }
            *marks = word;
        }
        changes
    }

    /// Every entry of a run of `len` marked.
    #[inline]
    fn all_marked(len: usize) -> RunChanges {
        let mut changes = RunChanges::default();
        for (w, marks) in changes.mask.iter_mut().enumerate() {
            *marks = match len.saturating_sub(w * 64) {
                0 => 0,
                n if n >= 64 => u64::MAX,
                n => (1 << n) - 1,
            };
        }
        changes
    }

    /// The bits outside `address` that every entry of `run` has, when
    /// every entry is valid and they all have the same: a run of one
    /// mapping, as a map leaves it. The check and the loops that then do
    /// the same to every entry have no branch per entry, so the compiler
    /// makes vector code of them; other runs take the loops with a test
    /// per entry.
    #[inline]
    fn uniform<F: Format>(run: &[Cell<u64>], address: u64) -> Option<u64> {
        let key = run.first()?.get() & !address;
        let (differ, valid) = run.iter().fold((0, true), |(differ, valid), cell| {
            let value = cell.get();
            (
                differ | ((value & !address) ^ key),
                valid & F::is_valid(value),
            )
        });
        (differ == 0 && valid).then_some(key)
    }

    /// Entries of a chunk of the one-pass loops.
    const CHUNK: usize = 64;

    /// Calls `take` on the chunks of [`CHUNK`] entries of a run of `len`
    /// from its start, in order, for as long as it takes them; returns the entries
    /// taken, a multiple of [`CHUNK`]. `take` does its work on the chunk in
    /// one pass with no branch per entry, which the compiler makes vector
    /// code of, and while it does it tests whether the chunk was what the
    /// work assumes (one mapping, as a map leaves it); if not, it puts the
    /// chunk back as it was and returns false, and what is left goes entry
    /// by entry. The chunk's entries hold other values meanwhile: memory
    /// that lends runs of cells is not walked by hardware
    /// ([`PageTableMemory::run_cells`](crate::pgtable::memory::PageTableMemory::run_cells)),
    /// and nothing else runs on it between the two passes.
    #[inline(always)]
    fn take_chunks(len: usize, mut take: impl FnMut(core::ops::Range<usize>) -> bool) -> usize {
        let mut done = 0;
        while done + CHUNK <= len && take(done..done + CHUNK) {
            done += CHUNK;
        }
        done
    }

    /// The address bits of a 4 KiB leaf of `F` that hold none of the
    /// bits a run operation tests (validity excepted, which is tested on
    /// every entry): only then is a uniform run's outcome a function of
    /// its shared bits.
    fn leaf_address<F: Format>(tested: u64) -> Option<u64> {
        let address = F::leaf_address_mask(crate::addr::PageSize::Size4K);
        (address & tested == 0).then_some(address)
    }

    /// [`clear_ptes_each`](super::clear_ptes_each) over `run`.
    #[inline]
    pub fn clear<F: Format>(run: &[Cell<u64>]) -> RunChanges {
        if let Some(key) = leaf_address::<F>(F::DIRTY_BIT).and_then(|a| uniform::<F>(run, a)) {
            fill(run, 0, 0);
            let mut changes = all_marked(run.len());
            changes.dirty = if key & F::DIRTY_BIT != 0 {
                run.len() as u64
            } else {
                0
            };
            return changes;
        }
        let mut dirty = 0;
        let mut changes = mark_each(run.len(), |i| {
            let old = run[i].get();
            let valid = F::is_valid(old);
            if valid {
                run[i].set(0);
                dirty += u64::from(old & F::DIRTY_BIT != 0);
            }
            Some(valid)
        });
        changes.dirty = dirty;
        changes
    }

    /// [`protect_ptes_each`](super::protect_ptes_each) over `run`.
    ///
    /// The new value of a leaf is a function of its bits outside its
    /// address ([`Format::protect_leaf`] keeps the address bits as they
    /// are), so it is worked out once per distinct bits in the run, which
    /// in a run of one mapping is once.
    #[inline]
    pub fn protect<F: Format>(run: &[Cell<u64>], protection: &NewProtection) -> RunChanges {
        let address = protection.address();
        if address & F::PERMISSION_BITS != 0 {
            // The permissions share bits with the address: entry by entry.
            return mark_each(run.len(), |i| {
                let old = run[i].get();
                let new = protection.apply::<F>(old);
                let changed = F::is_valid(old) && new != old;
                if changed {
                    run[i].set(new);
                }
                Some(changed)
            });
        }
        // The chunks of the first entry's mapping, then entry by entry.
        let Some(first) = run.first() else {
            return RunChanges::default();
        };
        let key = first.get() & !address;
        let new_key = protection.apply::<F>(key);
        let changed = new_key != key;
        // An entry of the mapping becomes itself with the bits that differ
        // between the two keys flipped, which flipped again restores it.
        let flip = key ^ new_key;
        let done = if changed {
            take_chunks(run.len(), |chunk| {
                let chunk = &run[chunk];
                let (mut differ, mut valid) = (0, true);
                for cell in chunk {
                    let value = cell.get();
                    differ |= (value & !address) ^ key;
                    valid &= F::is_valid(value);
                    cell.set(value ^ flip);
                }
                let taken = differ == 0 && valid;
                if !taken {
                    for cell in chunk {
                        cell.set(cell.get() ^ flip);
                    }
                }
                taken
            })
        } else {
            0
        };
        if done == run.len() {
            return if changed {
                all_marked(done)
            } else {
                RunChanges::default()
            };
        }
        let mut last = Some((key, new_key));
        mark_each(run.len(), |i| {
            if i < done {
                return Some(changed);
            }
            let old = run[i].get();
            if !F::is_valid(old) {
                return Some(false);
            }
            let key = old & !address;
            let new_key = match last {
                Some((seen, new_key)) if seen == key => new_key,
                _ => last.insert((key, protection.apply::<F>(key))).1,
            };
            let changed = new_key != key;
            if changed {
                run[i].set(new_key | (old & address));
            }
            Some(changed)
        })
    }

    /// [`copy_ptes_each`](super::copy_ptes_each) from `parent` into
    /// `child` (two runs of the same length).
    ///
    /// What [`copy_entry`](super::copy_entry) stores is a function of the
    /// entry's bits outside its address (decoding and encoding keep the
    /// address bits as they are), so the values are worked out once per
    /// distinct attribute bits in the run, which in a run
    /// of one mapping is once.
    #[inline]
    pub fn copy<F: Format>(
        parent: &[Cell<u64>],
        child: &[Cell<u64>],
        level: u8,
        kind: CopyKind,
    ) -> RunChanges {
        let child = &child[..parent.len()];
        // The chunks of the first entry's mapping into empty child
        // entries, then entry by entry.
        let mut values = (level == 1)
            .then(|| parent.first())
            .flatten()
            .map(|first| CopyValues::of::<F>(first.get(), level, kind));
        let (done, downgraded) = match values {
            Some(CopyValues {
                key,
                address,
                values: Some((child_bits, parent_bits)),
            }) => {
                // Entries of the mapping become themselves with these bits
                // flipped, in the parent and in the child's copy; flipped
                // again they are restored. A child entry takes the copy
                // flipped into it, which restores it too.
                let parent_flip = parent_bits.map_or(0, |bits| key ^ bits);
                let child_flip = key ^ child_bits;
                let done = take_chunks(parent.len(), |chunk| {
                    let (from, to) = (&parent[chunk.clone()], &child[chunk]);
                    let (mut differ, mut valid, mut occupied) = (0, true, 0);
                    for (source, target) in from.iter().zip(to) {
                        let value = source.get();
                        let old = target.get();
                        differ |= (value & !address) ^ key;
                        valid &= F::is_valid(value);
                        occupied |= old;
                        source.set(value ^ parent_flip);
                        target.set(old ^ value ^ child_flip);
                    }
                    let taken = differ == 0 && valid && occupied == 0;
                    if !taken {
                        for (source, target) in from.iter().zip(to) {
                            let value = source.get() ^ parent_flip;
                            source.set(value);
                            target.set(target.get() ^ value ^ child_flip);
                        }
                    }
                    taken
                });
                (done, parent_bits.is_some())
            }
            _ => (0, false),
        };
        if done == parent.len() && done > 0 {
            let mut changes = if downgraded {
                all_marked(done)
            } else {
                RunChanges::default()
            };
            changes.copied = done as u64;
            return changes;
        }
        let mut copied = done as u64;
        let mut changes = mark_each(parent.len(), |i| {
            if i < done {
                return Some(downgraded);
            }
            let current = parent[i].get();
            if !F::is_valid(current) {
                return Some(false);
            }
            if F::is_valid(child[i].get()) {
                return None;
            }
            let copy = match values {
                Some(copy) if copy.key == current & !copy.address => copy,
                _ => *values.insert(CopyValues::of::<F>(current, level, kind)),
            };
            let Some((child_bits, parent_bits)) = copy.values else {
                return Some(false);
            };
            let address = current & copy.address;
            if let Some(parent_bits) = parent_bits {
                parent[i].set(parent_bits | address);
            }
            child[i].set(child_bits | address);
            copied += 1;
            Some(parent_bits.is_some())
        });
        changes.copied = copied;
        changes
    }

    /// What a copy stores for entries whose bits outside the address are
    /// `key`.
    #[derive(Clone, Copy, Debug)]
    struct CopyValues {
        key: u64,
        /// The leaf's address bits.
        address: u64,
        /// The child's bits and, when the parent is write-protected, the
        /// parent's (both without the address); `None` for an entry that is
        /// not a leaf.
        values: Option<(u64, Option<u64>)>,
    }

    impl CopyValues {
        /// Worked out as [`copy_entry`](super::copy_entry) does, for the
        /// present entry `current`.
        fn of<F: Format>(current: u64, level: u8, kind: CopyKind) -> Self {
            let Entry::Leaf { size, attrs, .. } = F::decode(current, level) else {
                // Not a leaf: nothing copied, whatever its bits; compared
                // on all of them.
                return CopyValues {
                    key: current,
                    address: 0,
                    values: None,
                };
            };
            let address = F::leaf_address_mask(size);
            let downgrade = kind == CopyKind::Private && attrs.writable;
            let attrs = if downgrade { attrs.read_only() } else { attrs };
            let parent = downgrade.then(|| F::leaf_template(size, attrs));
            let child = F::leaf_template(
                size,
                Attributes {
                    accessed: false,
                    dirty: attrs.dirty && kind == CopyKind::Private,
                    ..attrs
                },
            );
            CopyValues {
                key: current & !address,
                address,
                values: Some((child, parent)),
            }
        }
    }

    /// [`move_ptes_each`](super::move_ptes_each) from `from` to `to` (two
    /// runs of the same length).
    #[inline]
    pub fn moves<F: Format>(from: &[Cell<u64>], to: &[Cell<u64>]) -> RunChanges {
        let to = &to[..from.len()];
        // Chunks of present entries into empty ones, then entry by entry;
        // a move within one chunk's reach goes entry by entry.
        let apart =
            from.as_ptr_range().end <= to.as_ptr() || to.as_ptr_range().end <= from.as_ptr();
        let done = if apart {
            take_chunks(from.len(), |chunk| {
                let (from, to) = (&from[chunk.clone()], &to[chunk]);
                let (mut valid, mut occupied) = (true, 0);
                // The target takes both values flipped into each other and
                // the source the target's: the source's value and an empty
                // source when the target was empty, and invertible
                // whatever they were.
                for (source, target) in from.iter().zip(to) {
                    let value = source.get();
                    let old = target.get();
                    valid &= F::is_valid(value);
                    occupied |= old;
                    target.set(value ^ old);
                    source.set(old);
                }
                let taken = valid && occupied == 0;
                if !taken {
                    for (source, target) in from.iter().zip(to) {
                        let old = source.get();
                        source.set(target.get() ^ old);
                        target.set(old);
                    }
                }
                taken
            })
        } else {
            0
        };
        if done == from.len() {
            return all_marked(done);
        }
        mark_each(from.len(), |i| {
            if i < done {
                return Some(true);
            }
            let old = from[i].get();
            if !F::is_valid(old) {
                return Some(false);
            }
            if F::is_valid(to[i].get()) {
                return None;
            }
            from[i].set(0);
            to[i].set(old);
            Some(true)
        })
    }
}
