//! One address space (an `mm_struct`) as Linux keeps it: VMAs that split
//! and merge as `mm/vma.c` splits and merges them, and the pages present in
//! the page tables.
//!
//! Each method follows one kernel path and returns the page-table
//! [`Operation`]s that path performs, with exactly the present pages it
//! touches, so that a replay can drive the library's range operations the
//! way the kernel drives its own. The history ([`super::history`]) decides
//! which path a system call takes; this module only changes the model.

use std::collections::BTreeMap;
use std::ops::Range;

use super::page_set::PageSet;
use super::PAGE_SIZE;

/// `VM_*` flags of a VMA, with Linux's bit values
/// (`include/linux/mm.h`, x86-64).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VmFlags(pub u64);

#[allow(missing_docs)] // each constant is Linux's flag of the same name
impl VmFlags {
    pub const READ: u64 = 0x1;
    pub const WRITE: u64 = 0x2;
    pub const EXEC: u64 = 0x4;
    pub const SHARED: u64 = 0x8;
    pub const MAYREAD: u64 = 0x10;
    pub const MAYWRITE: u64 = 0x20;
    pub const MAYEXEC: u64 = 0x40;
    pub const MAYSHARE: u64 = 0x80;
    pub const GROWSDOWN: u64 = 0x100;
    pub const PFNMAP: u64 = 0x400;
    pub const LOCKED: u64 = 0x2000;
    pub const IO: u64 = 0x4000;
    pub const SEQ_READ: u64 = 0x8000;
    pub const RAND_READ: u64 = 0x1_0000;
    pub const DONTCOPY: u64 = 0x2_0000;
    pub const DONTEXPAND: u64 = 0x4_0000;
    pub const LOCKONFAULT: u64 = 0x8_0000;
    pub const ACCOUNT: u64 = 0x10_0000;
    pub const NORESERVE: u64 = 0x20_0000;
    pub const WIPEONFORK: u64 = 0x200_0000;
    pub const DONTDUMP: u64 = 0x400_0000;
    pub const MIXEDMAP: u64 = 0x1000_0000;
    pub const HUGEPAGE: u64 = 0x2000_0000;
    pub const NOHUGEPAGE: u64 = 0x4000_0000;
    pub const MERGEABLE: u64 = 0x8000_0000;
    /// `VM_SPECIAL`: never merged (`mm/vma.c` `vma_merge_new_range`).
    pub const SPECIAL: u64 = Self::IO | Self::DONTEXPAND | Self::PFNMAP | Self::MIXEDMAP;
    /// `VM_ACCESS_FLAGS`.
    pub const ACCESS: u64 = Self::READ | Self::WRITE | Self::EXEC;

    /// Whether every bit of `bits` is set.
    #[must_use]
    pub fn has(self, bits: u64) -> bool {
        self.0 & bits == bits
    }

    /// Whether any bit of `bits` is set.
    #[must_use]
    pub fn any(self, bits: u64) -> bool {
        self.0 & bits != 0
    }

    /// `calc_vm_prot_bits`: `PROT_READ/WRITE/EXEC` as `VM_READ/WRITE/EXEC`
    /// (the bit values coincide).
    #[must_use]
    pub fn from_prot(prot: u64) -> u64 {
        prot & Self::ACCESS
    }

    /// The `PROT_*` bits of these flags.
    #[must_use]
    pub fn prot(self) -> u64 {
        self.0 & Self::ACCESS
    }

    /// `is_cow_mapping`: private and may be written.
    #[must_use]
    pub fn is_cow(self) -> bool {
        self.0 & (Self::SHARED | Self::MAYWRITE) == Self::MAYWRITE
    }
}

/// What backs a VMA.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum VmaBacking {
    /// Private anonymous memory.
    Anonymous,
    /// A file, by its id in the trace.
    File(u32),
    /// Shared anonymous memory: a shmem object of its own
    /// (`shmem_zero_setup`), so it merges with nothing else.
    Shmem(u64),
    /// A special mapping (`[vdso]`, `[vvar]`, ...): never merged or split.
    Special(String),
}

/// One VMA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vma {
    /// First address.
    pub start: u64,
    /// End address (exclusive).
    pub end: u64,
    /// `vm_flags`.
    pub flags: VmFlags,
    /// What backs it.
    pub backing: VmaBacking,
    /// `vm_pgoff`: the file page at `start`, or for anonymous memory the
    /// page number of the address it was first mapped at.
    pub pgoff: u64,
    /// The `anon_vma` it has, if any (`anon_vma_prepare` ran).
    pub anon_vma: Option<u64>,
    /// Its `anon_vma` came from `fork` (`vma_is_fork_child`): such a VMA
    /// does not merge with one lacking an `anon_vma`.
    pub fork_child: bool,
}

impl Vma {
    /// Pages it spans.
    #[must_use]
    pub fn pages(&self) -> u64 {
        (self.end - self.start) / PAGE_SIZE
    }

    /// `vma_is_anonymous`.
    #[must_use]
    pub fn is_anonymous(&self) -> bool {
        self.backing == VmaBacking::Anonymous
    }

    fn is_special(&self) -> bool {
        matches!(self.backing, VmaBacking::Special(_))
    }
}

/// A VMA's part of a page-table operation: the range it covers and the
/// pages present in it, so a replay touches exactly those entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Span {
    /// The range of the VMA the operation covers.
    pub range: Range<u64>,
    /// Present pages inside `range`, as runs.
    pub present: Vec<Range<u64>>,
    /// `PROT_*` bits of the VMA (before the operation).
    pub prot: u64,
    /// Shared mapping (`VM_SHARED`).
    pub shared: bool,
    /// Private and writable in principle (`is_cow_mapping`): fork
    /// write-protects both parent and child entries.
    pub cow: bool,
    /// Anonymous memory.
    pub anonymous: bool,
}

impl Span {
    /// Number of present pages in the span.
    #[must_use]
    pub fn present_pages(&self) -> u64 {
        self.present
            .iter()
            .map(|r| (r.end - r.start) / PAGE_SIZE)
            .sum()
    }
}

/// Pages in some runs.
#[must_use]
pub fn run_pages(runs: &[Range<u64>]) -> u64 {
    runs.iter().map(|r| (r.end - r.start) / PAGE_SIZE).sum()
}

/// What a run of page faults did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Faulted {
    /// Pages that became present, as runs.
    pub new: Vec<Range<u64>>,
    /// Pages whose access no VMA allowed.
    pub refused: u64,
}

/// Identifies an address space in a history.
pub type MmId = u64;

/// A page-table operation one system call performs, with its exact
/// extent. A replay performs each with the library's range operation of
/// the same name, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Pages became present: faults (with fault-around and huge pages) or
    /// population (`MAP_POPULATE`, `mlock`, `MADV_POPULATE_*`). Linux
    /// installs them one fault at a time, outside any lazy section.
    Populate {
        /// The address space.
        mm: MmId,
        /// The pages that became present.
        runs: Vec<Range<u64>>,
    },
    /// A new mapping (`mmap_region`, `do_brk_flags`): VMA bookkeeping
    /// only, no page-table entry changes.
    Map {
        /// The address space.
        mm: MmId,
        /// The new range.
        range: Range<u64>,
        /// Its `PROT_*` bits.
        prot: u64,
    },
    /// munmap's path (`do_vmi_align_munmap` → `vms_clear_ptes`): one
    /// `mmu_gather`, `unmap_vmas` over the spans, then `free_pgtables`
    /// over `tables`.
    Unmap {
        /// The address space.
        mm: MmId,
        /// Each removed VMA's part, with its present pages.
        spans: Vec<Span>,
        /// The range whose page tables may be freed (from the previous
        /// VMA's end to the next VMA's start).
        tables: Range<u64>,
    },
    /// `MADV_DONTNEED`/`MADV_REMOVE` (`zap_page_range_single` per VMA):
    /// entries cleared, VMAs and page tables kept.
    Zap {
        /// The address space.
        mm: MmId,
        /// Each VMA's part, with its present pages.
        spans: Vec<Span>,
    },
    /// `MADV_FREE` (`madvise_free_pte_range`): present entries rewritten
    /// clean and old, in a lazy section.
    Clean {
        /// The address space.
        mm: MmId,
        /// Each VMA's part, with its present pages.
        spans: Vec<Span>,
    },
    /// mprotect's path (`mprotect_fixup` → `change_protection`, one
    /// `mmu_gather` for the call): present entries get the new protection.
    Protect {
        /// The address space.
        mm: MmId,
        /// Each changed VMA's part, with its present pages.
        spans: Vec<Span>,
        /// The new `PROT_*` bits.
        prot: u64,
    },
    /// mremap's move (`move_vma` → `move_page_tables`): present entries
    /// move from `from` to `to`.
    Move {
        /// The address space.
        mm: MmId,
        /// Source range.
        from: Range<u64>,
        /// Destination start.
        to: u64,
        /// Present pages moved, at their source addresses.
        present: Vec<Range<u64>>,
    },
    /// fork's copy (`dup_mmap` → `copy_page_range` for each VMA that
    /// `vma_needs_copy`), then `flush_tlb_mm` of the parent.
    Copy {
        /// The parent.
        parent: MmId,
        /// The new child.
        child: MmId,
        /// Each copied VMA with its present pages.
        spans: Vec<Span>,
    },
    /// exit's teardown (`exit_mmap`: `tlb_gather_mmu_fullmm`, `unmap_vmas`
    /// over every VMA, `free_pgtables`).
    Teardown {
        /// The address space.
        mm: MmId,
        /// Every VMA with its present pages.
        spans: Vec<Span>,
    },
}

impl Operation {
    /// The name of the range operation a replay uses for it.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Operation::Populate { .. } => "populate",
            Operation::Map { .. } => "map",
            Operation::Unmap { .. } => "unmap",
            Operation::Zap { .. } => "zap",
            Operation::Clean { .. } => "clean",
            Operation::Protect { .. } => "protect",
            Operation::Move { .. } => "move",
            Operation::Copy { .. } => "copy",
            Operation::Teardown { .. } => "teardown",
        }
    }

    /// Present pages the operation touches.
    #[must_use]
    pub fn pages(&self) -> u64 {
        match self {
            Operation::Populate { runs, .. } => run_pages(runs),
            Operation::Map { .. } => 0,
            Operation::Move { present, .. } => run_pages(present),
            Operation::Unmap { spans, .. }
            | Operation::Zap { spans, .. }
            | Operation::Clean { spans, .. }
            | Operation::Protect { spans, .. }
            | Operation::Copy { spans, .. }
            | Operation::Teardown { spans, .. } => spans.iter().map(Span::present_pages).sum(),
        }
    }
}

/// How the address space learns which pages are present.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Touches {
    /// From recorded page faults (perf), with fault-around and huge pages
    /// modelled as the kernel does them.
    Faults,
    /// No faults were recorded: every page of an accessible mapping is
    /// taken as present once mapped (an upper bound).
    WholeRanges,
}

/// Transparent huge pages for anonymous memory
/// (`/sys/kernel/mm/transparent_hugepage/enabled`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Thp {
    /// Every eligible anonymous fault.
    Always,
    /// Only in VMAs with `MADV_HUGEPAGE`.
    Madvise,
    /// Never.
    Never,
}

/// What the kernel the trace was recorded on does that the model needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kernel {
    /// Where present pages come from.
    pub touches: Touches,
    /// `fault_around_bytes / PAGE_SIZE` (`mm/memory.c`, default 65536
    /// bytes: 16 pages).
    pub fault_around_pages: u64,
    /// Huge pages for anonymous memory.
    pub thp: Thp,
    /// `TASK_SIZE`: the end of the user half (47-bit x86-64:
    /// `0x7ffffffff000`).
    pub task_size: u64,
    /// `RLIMIT_STACK` in bytes: how far a stack may grow down.
    pub stack_limit: u64,
}

impl Default for Kernel {
    fn default() -> Self {
        Kernel {
            touches: Touches::Faults,
            fault_around_pages: 16,
            thp: Thp::Madvise,
            task_size: 0x7fff_ffff_f000,
            stack_limit: 8 << 20,
        }
    }
}

/// `stack_guard_gap` (`mm/mmap.c`): 256 pages.
pub const STACK_GUARD_GAP: u64 = 256 * PAGE_SIZE;

/// `HPAGE_PMD_SIZE` on x86-64.
pub const PMD_SIZE: u64 = 2 << 20;

/// `PTRS_PER_PTE` × page size: the span of one PTE table.
const PTE_TABLE_SPAN: u64 = 512 * PAGE_SIZE;

/// The model of one `mm_struct`.
#[derive(Clone, Debug, Default)]
pub struct AddressSpace {
    /// VMAs by start address; never overlapping.
    vmas: BTreeMap<u64, Vma>,
    /// Pages with a present entry.
    present: PageSet,
    /// `mm->start_brk` and `mm->brk`, once a `brk` call revealed them.
    pub(crate) brk: Option<(u64, u64)>,
    /// `mm->def_flags` (`VM_LOCKED` after `mlockall(MCL_FUTURE)`).
    pub(crate) def_flags: u64,
}

/// Why a system call fails, as the model predicts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Predicted {
    /// It succeeds.
    Success,
    /// It fails with this error (the name as Linux's `errno`).
    Fails(&'static str),
}

/// Rounds `len` up to a page; `None` on overflow.
#[must_use]
pub fn page_align(len: u64) -> Option<u64> {
    len.checked_add(PAGE_SIZE - 1).map(|l| l & !(PAGE_SIZE - 1))
}

fn page_down(addr: u64) -> u64 {
    addr & !(PAGE_SIZE - 1)
}

/// `is_mergeable_anon_vma` (`mm/vma.c`, since "mm/vma: fix incorrectly
/// disallowed anonymous VMA merges"): one side without an `anon_vma`
/// merges unless the other is a fork child; both must otherwise share it.
fn anon_vmas_mergeable(a: &Vma, b: &Vma) -> bool {
    match (a.anon_vma, b.anon_vma) {
        (None, None) => true,
        (Some(_), None) => !a.fork_child,
        (None, Some(_)) => !b.fork_child,
        (Some(x), Some(y)) => x == y,
    }
}

/// `can_vma_merge_after`/`can_vma_merge_before` for `left` directly below
/// `right`: same flags and backing, contiguous file pages, compatible
/// `anon_vma`s, neither special (`VM_SPECIAL`).
pub fn mergeable(left: &Vma, right: &Vma) -> bool {
    left.end == right.start
        && left.flags == right.flags
        && !left.flags.any(VmFlags::SPECIAL)
        && !left.is_special()
        && !right.is_special()
        && left.backing == right.backing
        && left.pgoff + left.pages() == right.pgoff
        && anon_vmas_mergeable(left, right)
}

impl AddressSpace {
    /// The VMAs in address order.
    pub fn vmas(&self) -> impl Iterator<Item = &Vma> + '_ {
        self.vmas.values()
    }

    /// Number of VMAs (`mm->map_count`).
    #[must_use]
    pub fn vma_count(&self) -> usize {
        self.vmas.len()
    }

    /// The present pages.
    #[must_use]
    pub fn present(&self) -> &PageSet {
        &self.present
    }

    /// `vma_lookup`: the VMA containing `addr`.
    #[must_use]
    pub fn vma_at(&self, addr: u64) -> Option<&Vma> {
        self.vmas
            .range(..=addr)
            .next_back()
            .map(|(_, v)| v)
            .filter(|v| v.end > addr)
    }

    /// VMAs intersecting `range`, in order.
    pub fn vmas_in(&self, range: Range<u64>) -> impl Iterator<Item = &Vma> + '_ {
        let first = self.vma_at(range.start).map_or(range.start, |v| v.start);
        self.vmas
            .range(first..range.end.max(first))
            .map(|(_, v)| v)
            .filter(move |v| v.end > range.start && v.start < range.end)
    }

    /// Whether `[start, end)` is covered by VMAs without a hole.
    #[must_use]
    pub fn covered(&self, range: Range<u64>) -> bool {
        let mut at = range.start;
        for vma in self.vmas_in(range.clone()) {
            if vma.start > at {
                return false;
            }
            at = vma.end;
        }
        at >= range.end
    }

    /// The holes of `range` no VMA covers.
    #[must_use]
    pub fn holes(&self, range: Range<u64>) -> Vec<Range<u64>> {
        let mut holes = Vec::new();
        let mut at = range.start;
        for vma in self.vmas_in(range.clone()) {
            if vma.start > at {
                holes.push(at..vma.start);
            }
            at = at.max(vma.end);
        }
        if at < range.end {
            holes.push(at..range.end);
        }
        holes
    }

    /// The span of `vma` restricted to `range`, with its present pages.
    fn span(&self, vma: &Vma, range: Range<u64>) -> Span {
        let range = vma.start.max(range.start)..vma.end.min(range.end);
        Span {
            present: self.present.runs_in(range.clone()).collect(),
            range,
            prot: vma.flags.prot(),
            shared: vma.flags.has(VmFlags::SHARED),
            cow: vma.flags.is_cow(),
            anonymous: vma.is_anonymous(),
        }
    }

    fn spans(&self, range: Range<u64>) -> Vec<Span> {
        self.vmas_in(range.clone())
            .map(|v| self.span(v, range.clone()))
            .collect()
    }

    /// `__split_vma`: makes `addr` a VMA boundary if a VMA spans it. The
    /// upper part's `vm_pgoff` advances by the pages below the split.
    fn split_at(&mut self, addr: u64) {
        let Some(vma) = self.vma_at(addr) else { return };
        if vma.start == addr {
            return;
        }
        let start = vma.start;
        let Some(lower) = self.vmas.get_mut(&start) else {
            return;
        };
        let mut upper = lower.clone();
        lower.end = addr;
        upper.pgoff += (addr - start) / PAGE_SIZE;
        upper.start = addr;
        self.vmas.insert(addr, upper);
    }

    /// Makes `range` a union of whole VMAs.
    fn split_range(&mut self, range: Range<u64>) {
        self.split_at(range.start);
        self.split_at(range.end);
    }

    /// Merges the VMA starting at `start` with its neighbours where
    /// `vma_merge_new_range`/`vma_merge_existing_range` would; `left_only`
    /// is `do_brk_flags`'s `just_expand`. Returns the start of the VMA that
    /// now contains `start`.
    fn merge_around(&mut self, start: u64, left_only: bool) -> u64 {
        let Some(vma) = self.vmas.get(&start).cloned() else {
            return start;
        };
        let prev = self
            .vmas
            .range(..start)
            .next_back()
            .map(|(_, v)| v.clone())
            .filter(|p| mergeable(p, &vma));
        let next = if left_only {
            None
        } else {
            self.vmas
                .get(&vma.end)
                .cloned()
                .filter(|n| mergeable(&vma, n))
        };
        // Both sides: prev and next must also agree with each other
        // (`can_vma_merge_right` with `are_anon_vmas_compatible`).
        let next = match (&prev, next) {
            (Some(p), Some(n)) if matches!((p.anon_vma, n.anon_vma), (Some(a), Some(b)) if a != b) => {
                None
            }
            (_, n) => n,
        };
        let mut merged = vma;
        if let Some(p) = &prev {
            self.vmas.remove(&merged.start);
            merged = Vma {
                start: p.start,
                pgoff: p.pgoff,
                anon_vma: p.anon_vma.or(merged.anon_vma),
                fork_child: p.fork_child || merged.fork_child,
                ..merged
            };
        }
        if let Some(n) = next {
            self.vmas.remove(&n.start);
            merged.end = n.end;
            merged.anon_vma = merged.anon_vma.or(n.anon_vma);
            merged.fork_child |= n.fork_child;
        }
        let at = merged.start;
        self.vmas.insert(at, merged);
        at
    }

    /// Removes every VMA in `range` (splitting at its ends) and clears its
    /// present pages: `do_vmi_align_munmap`. Returns the `Unmap` operation,
    /// or `None` when nothing was mapped there (munmap of a hole succeeds
    /// and does nothing).
    pub fn unmap(&mut self, mm: MmId, range: Range<u64>) -> Option<Operation> {
        self.vmas_in(range.clone()).next()?;
        self.split_range(range.clone());
        let spans = self.spans(range.clone());
        let starts: Vec<u64> = self.vmas_in(range.clone()).map(|v| v.start).collect();
        for start in starts {
            self.vmas.remove(&start);
        }
        self.present.remove(range.clone());
        let below = self
            .vmas
            .range(..range.start)
            .next_back()
            .map_or(0, |(_, v)| v.end);
        let above = self
            .vmas
            .range(range.end..)
            .next()
            .map_or(u64::MAX, |(_, v)| v.start);
        Some(Operation::Unmap {
            mm,
            spans,
            tables: below..above,
        })
    }

    /// Inserts a new VMA over an empty range and merges it with its
    /// neighbours (`vma_merge_new_range`). Returns the start of the VMA now
    /// holding it.
    pub fn insert(&mut self, vma: Vma, left_only: bool) -> u64 {
        let start = vma.start;
        self.vmas.insert(start, vma);
        self.merge_around(start, left_only)
    }

    /// Replaces whatever is in `[vma.start, vma.end)` with `vma` as the
    /// kernel reported it, without merging: the VMAs an `execve` set up.
    pub fn install_reported(&mut self, vma: Vma) {
        let range = vma.start..vma.end;
        self.split_range(range.clone());
        let starts: Vec<u64> = self.vmas_in(range.clone()).map(|v| v.start).collect();
        let mut anon_vma = None;
        for start in starts {
            if let Some(old) = self.vmas.remove(&start) {
                anon_vma = anon_vma.or(old.anon_vma);
            }
        }
        self.vmas.insert(
            vma.start,
            Vma {
                anon_vma: vma.anon_vma.or(anon_vma),
                ..vma
            },
        );
    }

    /// Applies `change` to the flags of every VMA in `range`
    /// (`vma_modify_flags`: split at the ends, then merge with compatible
    /// neighbours). Returns the spans whose flags changed, before the
    /// change, with their present pages.
    pub fn modify_flags(
        &mut self,
        range: Range<u64>,
        change: impl Fn(&Vma) -> Option<u64>,
    ) -> Vec<Span> {
        let targets: Vec<(u64, u64)> = self
            .vmas_in(range.clone())
            .filter(|v| !v.is_special())
            .filter_map(|v| change(v).filter(|&f| f != v.flags.0).map(|f| (v.start, f)))
            .collect();
        let mut changed = Vec::new();
        for (vma_start, flags) in targets {
            let Some(vma) = self.vmas.get(&vma_start).cloned() else {
                continue;
            };
            let piece = vma.start.max(range.start)..vma.end.min(range.end);
            changed.push(self.span(&vma, piece.clone()));
            self.split_range(piece.clone());
            if let Some(v) = self.vmas.get_mut(&piece.start) {
                v.flags = VmFlags(flags);
            }
            self.merge_around(piece.start, false);
        }
        changed
    }

    /// What mprotect (`do_mprotect_pkey`) will do over `range`: the result
    /// and the prefix it changes (up to the first hole, or the first VMA
    /// whose `VM_MAY*` bits refuse `prot`, or a special mapping it would
    /// have to split).
    #[must_use]
    pub fn plan_protect(&self, range: Range<u64>, prot: u64) -> (Predicted, Range<u64>) {
        let empty = range.start..range.start;
        let Some(first) = self.vmas_in(range.clone()).next() else {
            return (Predicted::Fails("ENOMEM"), empty);
        };
        if first.start > range.start {
            return (Predicted::Fails("ENOMEM"), empty);
        }
        let (reach, mut predicted) = match self.holes(range.clone()).first() {
            Some(hole) => (range.start..hole.start, Predicted::Fails("ENOMEM")),
            None => (range.clone(), Predicted::Success),
        };
        let mut reach_end = reach.end;
        for vma in self.vmas_in(reach.clone()) {
            let may = (vma.flags.0 >> 4) & VmFlags::ACCESS;
            let split_special =
                vma.is_special() && (vma.start < reach.start || vma.end > reach.end);
            if VmFlags::from_prot(prot) & !may != 0 || split_special {
                reach_end = vma.start.max(reach.start);
                predicted = Predicted::Fails(if split_special { "EINVAL" } else { "EACCES" });
                break;
            }
        }
        (predicted, reach.start..reach_end)
    }

    /// Changes the access bits of every VMA in `range` (`mprotect_fixup`,
    /// with its `VM_ACCOUNT` rules) and returns the protect operation over
    /// the VMAs that changed (one `mmu_gather` for the call).
    pub fn apply_protect(&mut self, mm: MmId, range: Range<u64>, prot: u64) -> Option<Operation> {
        let spans = self.modify_flags(range, |v| {
            let old = v.flags.0;
            let mut new = (old & !VmFlags::ACCESS) | VmFlags::from_prot(prot);
            if new & VmFlags::WRITE != 0 {
                if old & (VmFlags::ACCOUNT | VmFlags::WRITE | VmFlags::SHARED | VmFlags::NORESERVE)
                    == 0
                {
                    new |= VmFlags::ACCOUNT;
                }
            } else if old & VmFlags::ACCOUNT != 0 && v.is_anonymous() && v.anon_vma.is_none() {
                new &= !VmFlags::ACCOUNT;
            }
            Some(new)
        });
        (!spans.is_empty()).then_some(Operation::Protect { mm, spans, prot })
    }

    /// Pages of `range` that have a present entry, per VMA: the zap of
    /// `MADV_DONTNEED` (`madvise_dontneed_single_vma`). VMAs stay.
    pub fn zap(&mut self, mm: MmId, range: Range<u64>) -> Option<Operation> {
        let spans = self.spans(range.clone());
        if spans.is_empty() {
            return None;
        }
        self.present.remove(range);
        Some(Operation::Zap { mm, spans })
    }

    /// `MADV_FREE` on private anonymous VMAs (`madvise_free_single_vma`).
    #[must_use]
    pub fn clean(&self, mm: MmId, range: Range<u64>) -> Option<Operation> {
        let spans: Vec<Span> = self
            .vmas_in(range.clone())
            .filter(|v| v.is_anonymous())
            .map(|v| self.span(v, range.clone()))
            .collect();
        (!spans.is_empty()).then_some(Operation::Clean { mm, spans })
    }

    /// Marks pages present without faults (`populate_vma_page_range`):
    /// every page of accessible VMAs in `range`, up to the end of a mapped
    /// file (`files` gives sizes). Private writable VMAs get an `anon_vma`
    /// (the pages are written).
    pub fn populate(
        &mut self,
        mm: MmId,
        range: Range<u64>,
        file_size: impl Fn(u32) -> Option<u64>,
        next_anon_vma: &mut u64,
    ) -> Option<Operation> {
        let mut runs = Vec::new();
        let targets: Vec<(u64, Range<u64>, bool)> = self
            .vmas_in(range.clone())
            .filter(|v| v.flags.any(VmFlags::ACCESS) && !v.flags.any(VmFlags::IO | VmFlags::PFNMAP))
            .map(|v| {
                let mut piece = v.start.max(range.start)..v.end.min(range.end);
                if let VmaBacking::File(id) = v.backing {
                    if let Some(size) = file_size(id) {
                        let eof = v.start
                            + (page_align(size).unwrap_or(u64::MAX) / PAGE_SIZE)
                                .saturating_sub(v.pgoff)
                                .saturating_mul(PAGE_SIZE);
                        piece.end = piece.end.min(eof.max(piece.start));
                    }
                }
                let writes = v.flags.has(VmFlags::WRITE) && !v.flags.has(VmFlags::SHARED);
                (v.start, piece, writes)
            })
            .collect();
        for (start, piece, writes) in targets {
            if piece.start >= piece.end {
                continue;
            }
            if writes {
                self.prepare_anon_vma(start, next_anon_vma);
            }
            runs.extend(self.mark_present(piece));
        }
        (!runs.is_empty()).then_some(Operation::Populate { mm, runs })
    }

    /// Adds `range` to the present pages; returns the runs that were not.
    fn mark_present(&mut self, range: Range<u64>) -> Vec<Range<u64>> {
        let mut new = Vec::new();
        let mut at = range.start;
        for run in self.present.runs_in(range.clone()) {
            if run.start > at {
                new.push(at..run.start);
            }
            at = run.end;
        }
        if at < range.end {
            new.push(at..range.end);
        }
        self.present.insert(range);
        new
    }

    /// `anon_vma_prepare` for the VMA starting at `start`: reuse a
    /// neighbour's (`find_mergeable_anon_vma`: adjacent, same backing,
    /// flags differing only in access bits, contiguous pages, neighbour not
    /// a fork child), else a new one.
    fn prepare_anon_vma(&mut self, start: u64, next_anon_vma: &mut u64) {
        let Some(vma) = self.vmas.get(&start) else {
            return;
        };
        if vma.anon_vma.is_some() {
            return;
        }
        let compatible = |a: &Vma, b: &Vma| {
            a.end == b.start
                && a.backing == b.backing
                && (a.flags.0 ^ b.flags.0) & !VmFlags::ACCESS == 0
                && a.pgoff + a.pages() == b.pgoff
        };
        let next = self
            .vmas
            .get(&vma.end)
            .filter(|n| compatible(vma, n) && !n.fork_child)
            .and_then(|n| n.anon_vma);
        let prev = self
            .vmas
            .range(..start)
            .next_back()
            .map(|(_, p)| p)
            .filter(|p| compatible(p, vma) && !p.fork_child)
            .and_then(|p| p.anon_vma);
        let id = next.or(prev).unwrap_or_else(|| {
            *next_anon_vma += 1;
            *next_anon_vma
        });
        if let Some(vma) = self.vmas.get_mut(&start) {
            vma.anon_vma = Some(id);
            vma.fork_child = false;
        }
    }

    /// Page faults on every page of `pages`, one after another
    /// (`handle_mm_fault`), with stack growth (`expand_downwards`),
    /// fault-around for file reads (`do_fault_around`) and PMD huge pages
    /// for anonymous memory (`do_huge_pmd_anonymous_page`). Pages with no
    /// VMA allowing the access are refused (the program got `SIGSEGV`).
    ///
    /// A run of pages in a VMA without fault-around or huge pages becomes
    /// present at once, so a long run costs what its VMAs cost, not what
    /// its pages do.
    pub fn fault(
        &mut self,
        pages: Range<u64>,
        write: Option<bool>,
        exec: bool,
        kernel: &Kernel,
        file_size: impl Fn(u32) -> Option<u64>,
        next_anon_vma: &mut u64,
    ) -> Faulted {
        let mut faulted = Faulted::default();
        let mut at = page_down(pages.start);
        while at < pages.end {
            let vma = match self.vma_at(at) {
                Some(v) => v.clone(),
                None => match self.grow_stack(at, kernel) {
                    Some(v) => v,
                    None => {
                        let next = self
                            .vmas
                            .range(at..)
                            .next()
                            .map_or(pages.end, |(&s, _)| s.min(pages.end));
                        faulted.refused += (next - at) / PAGE_SIZE;
                        at = next;
                        continue;
                    }
                },
            };
            let segment = at..vma.end.min(pages.end);
            at = segment.end;
            let allowed = if exec {
                vma.flags.has(VmFlags::EXEC)
            } else if write == Some(true) {
                vma.flags.has(VmFlags::WRITE)
            } else {
                vma.flags.any(VmFlags::ACCESS)
            };
            if !allowed {
                faulted.refused += (segment.end - segment.start) / PAGE_SIZE;
                continue;
            }
            // do_anonymous_page maps the zero page for a read without an
            // anon_vma; a private write (or COW) needs one.
            let private = !vma.flags.has(VmFlags::SHARED);
            if private && write == Some(true) && !vma.is_special() {
                self.prepare_anon_vma(vma.start, next_anon_vma);
            }
            let per_page = match &vma.backing {
                VmaBacking::Anonymous => self.huge_allowed(&vma, kernel),
                VmaBacking::File(_) => write != Some(true) && kernel.fault_around_pages > 1,
                _ => false,
            };
            if !per_page {
                faulted.new.extend(self.mark_present(segment));
                continue;
            }
            for page in (segment.start..segment.end).step_by(PAGE_SIZE as usize) {
                if self.present.contains(page) {
                    // A fault on a present page (COW, spurious) maps nothing
                    // around it.
                    continue;
                }
                let range = match &vma.backing {
                    VmaBacking::File(id) => {
                        self.fault_around(&vma, page, kernel.fault_around_pages, file_size(*id))
                    }
                    _ => {
                        let block = page & !(PMD_SIZE - 1);
                        if block >= vma.start
                            && block + PMD_SIZE <= vma.end
                            && self.present.pages_in(block..block + PMD_SIZE) == 0
                        {
                            block..block + PMD_SIZE
                        } else {
                            page..page + PAGE_SIZE
                        }
                    }
                };
                faulted.new.extend(self.mark_present(range));
            }
        }
        faulted.new.sort_by_key(|r| r.start);
        faulted
    }

    /// Whether an anonymous fault in `vma` may map a PMD huge page
    /// (`thp_vma_allowable_order`).
    fn huge_allowed(&self, vma: &Vma, kernel: &Kernel) -> bool {
        if vma.flags.has(VmFlags::SHARED)
            || vma.flags.has(VmFlags::NOHUGEPAGE)
            || self.def_flags & VmFlags::NOHUGEPAGE != 0
        {
            return false;
        }
        match kernel.thp {
            Thp::Always => true,
            Thp::Madvise => vma.flags.has(VmFlags::HUGEPAGE),
            Thp::Never => false,
        }
    }

    /// `do_fault_around`: the naturally aligned window of
    /// `fault_around_pages` around `page`, clamped to the VMA, the PTE table
    /// and (in `filemap_map_pages`) the end of the file.
    fn fault_around(
        &self,
        vma: &Vma,
        page: u64,
        window_pages: u64,
        file_size: Option<u64>,
    ) -> Range<u64> {
        let window = window_pages * PAGE_SIZE;
        let table = page & !(PTE_TABLE_SPAN - 1);
        let start = (page & !(window - 1)).max(vma.start).max(table);
        let mut end = (start + window).min(vma.end).min(table + PTE_TABLE_SPAN);
        if let Some(size) = file_size {
            let file_pages = page_align(size).unwrap_or(u64::MAX) / PAGE_SIZE;
            let eof = vma.start
                + file_pages
                    .saturating_sub(vma.pgoff)
                    .saturating_mul(PAGE_SIZE);
            end = end.min(eof.max(page + PAGE_SIZE));
        }
        start..end.max(page + PAGE_SIZE)
    }

    /// `expand_downwards`: a fault below a `VM_GROWSDOWN` VMA grows it to
    /// the faulting page, if the stack limit and the guard gap to the VMA
    /// below allow.
    fn grow_stack(&mut self, page: u64, kernel: &Kernel) -> Option<Vma> {
        let (&start, next) = self.vmas.range(page..).next()?;
        if !next.flags.has(VmFlags::GROWSDOWN) || next.end - page > kernel.stack_limit {
            return None;
        }
        if let Some((_, prev)) = self.vmas.range(..page).next_back() {
            if page < prev.end + STACK_GUARD_GAP && !prev.flags.has(VmFlags::GROWSDOWN) {
                return None;
            }
        }
        let mut vma = self.vmas.remove(&start)?;
        vma.pgoff -= (start - page) / PAGE_SIZE;
        vma.start = page;
        self.vmas.insert(page, vma.clone());
        Some(vma)
    }

    /// Every VMA with its present pages, and the model emptied: the
    /// teardown of `exit_mmap`.
    pub fn teardown(&mut self, mm: MmId) -> Operation {
        let spans = self
            .vmas
            .values()
            .map(|v| self.span(v, v.start..v.end))
            .collect();
        self.vmas.clear();
        self.present = PageSet::default();
        Operation::Teardown { mm, spans }
    }

    /// `dup_mmap`: the child's address space and the copy operation. VMAs
    /// with `VM_DONTCOPY` stay behind; `VM_WIPEONFORK` ones arrive empty;
    /// page tables are copied only where `vma_needs_copy` (an `anon_vma`,
    /// or `VM_PFNMAP`/`VM_MIXEDMAP`). Locks are not inherited.
    pub fn fork(
        &self,
        parent: MmId,
        child: MmId,
        next_anon_vma: &mut u64,
    ) -> (AddressSpace, Operation) {
        let mut copy = AddressSpace {
            brk: self.brk,
            def_flags: self.def_flags & VmFlags::NOHUGEPAGE,
            ..AddressSpace::default()
        };
        let mut spans = Vec::new();
        for vma in self.vmas.values() {
            if vma.flags.has(VmFlags::DONTCOPY) {
                continue;
            }
            let mut new = vma.clone();
            new.flags.0 &= !(VmFlags::LOCKED | VmFlags::LOCKONFAULT);
            if vma.flags.has(VmFlags::WIPEONFORK) {
                new.anon_vma = None;
                new.fork_child = false;
            } else if vma.anon_vma.is_some() {
                // anon_vma_fork: a new anon_vma whose parent is the old one.
                *next_anon_vma += 1;
                new.anon_vma = Some(*next_anon_vma);
                new.fork_child = true;
            }
            let needs_copy = !vma.flags.has(VmFlags::WIPEONFORK)
                && (vma.anon_vma.is_some() || vma.flags.any(VmFlags::PFNMAP | VmFlags::MIXEDMAP));
            if needs_copy {
                let span = self.span(vma, vma.start..vma.end);
                for run in &span.present {
                    copy.present.insert(run.clone());
                }
                spans.push(span);
            }
            copy.vmas.insert(new.start, new);
        }
        (
            copy,
            Operation::Copy {
                parent,
                child,
                spans,
            },
        )
    }

    /// mremap's in-place growth (`expand_vma_in_place` →
    /// `vma_merge_extend`): the VMA ending at `end` grows by `delta`.
    pub fn extend(&mut self, end: u64, delta: u64) {
        let Some(vma) = self.vma_at(end - PAGE_SIZE).cloned() else {
            return;
        };
        let mut grown = vma;
        grown.end += delta;
        self.vmas.insert(grown.start, grown.clone());
        // Merging the extension with the next VMA (vma_merge_new_range).
        self.merge_around(grown.start, false);
    }

    /// The move of `move_vma`: the VMA part `[from, from+len)` is copied to
    /// `to` (`copy_vma`, merging there), its present pages move, and the
    /// source is unmapped unless `keep_source` (`MREMAP_DONTUNMAP`, which
    /// leaves the source VMA without pages). `new_len` is the size of the
    /// destination VMA.
    pub fn move_range(
        &mut self,
        mm: MmId,
        from: Range<u64>,
        to: u64,
        new_len: u64,
        keep_source: bool,
    ) -> Vec<Operation> {
        let Some(vma) = self.vma_at(from.start).cloned() else {
            return Vec::new();
        };
        let offset_pages = (from.start - vma.start) / PAGE_SIZE;
        let mut new = vma.clone();
        new.start = to;
        new.end = to + new_len;
        new.pgoff = if vma.is_anonymous() && vma.anon_vma.is_none() {
            // copy_vma: an unfaulted anonymous VMA takes its new address.
            to / PAGE_SIZE
        } else {
            vma.pgoff + offset_pages
        };
        let present = self.present.shift(from.clone(), to);
        let mut operations = vec![Operation::Move {
            mm,
            from: from.clone(),
            to,
            present,
        }];
        self.insert(new, false);
        if keep_source {
            // dontunmap_complete: the old VMA stays, unlocked, and loses
            // its anon_vma when all of it moved.
            if vma.start == from.start && vma.end == from.end {
                if let Some(old) = self.vmas.get_mut(&vma.start) {
                    old.anon_vma = None;
                    old.fork_child = false;
                }
            }
            self.modify_flags(from, |v| {
                Some(v.flags.0 & !(VmFlags::LOCKED | VmFlags::LOCKONFAULT))
            });
        } else if let Some(unmap) = self.unmap(mm, from) {
            operations.push(unmap);
        }
        operations
    }

    /// Replaces the model's view of `[report.start, report.end)` with a VMA
    /// the kernel reported, keeping what the model knew of the flags
    /// beyond access bits and of the `anon_vma`.
    pub fn resync(&mut self, reported: Vma) {
        let known = self.vma_at(reported.start).cloned();
        let vma = match known {
            Some(k) => Vma {
                flags: VmFlags((k.flags.0 & !VmFlags::ACCESS) | reported.flags.prot()),
                anon_vma: k.anon_vma,
                fork_child: k.fork_child,
                ..reported
            },
            None => reported,
        };
        self.install_reported(vma);
    }

    /// The brk VMA below `oldbrk`, if any (`vma_prev_limit` from `oldbrk`
    /// down to `start_brk`).
    pub(crate) fn brk_vma_end(&self, start_brk: u64, oldbrk: u64) -> Option<u64> {
        self.vmas
            .range(..oldbrk)
            .next_back()
            .map(|(_, v)| v)
            .filter(|v| v.end > start_brk)
            .map(|v| v.end)
    }
}
