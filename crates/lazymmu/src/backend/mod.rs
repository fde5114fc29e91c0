//! Arch backends: portable batching policy over a small trait of machine
//! primitives per architecture.
//!
//! Range operations never touch a page-table entry directly: every read and
//! write goes through [`PteAccess`], so a backend can batch the write (Xen
//! PV multicalls, s390 IPTE), attach a side effect to it (arm64 barriers,
//! powerpc hash invalidations) or wrap it in a key-register window
//! (protected page tables). A run of consecutive entries of one PTE table
//! goes to [`Backend`]'s run methods in one call ([`runs`]), which loop
//! over the per-entry path unless the backend has a better loop. TLB
//! invalidations go through [`TlbFlush`].
//! A backend is also the [`ArchHooks`] of the lazy mode and reacts to
//! context switches through [`ContextSwitch`].
//!
//! | arch | backend | primitives |
//! |---|---|---|
//! | `x86` | [`x86::X86Backend`] | [`x86::X86Primitives`] |
//! | `xen-pv` | [`xen_pv::XenPv`] | [`xen_pv::XenPrimitives`] |
//! | `arm64` | [`arm64::Arm64`] | [`arm64::Arm64Primitives`] |
//! | `ppc-hash` | [`ppc_hash::PpcHash`] | [`ppc_hash::PpcHashPrimitives`] |
//! | `sparc64` | [`sparc64::Sparc64`] | [`sparc64::Sparc64Primitives`] |
//! | `s390` | [`s390::S390`] | [`s390::S390Primitives`] |
//! | `x86-pks` | [`protected::X86Pks`] | [`crate::cpu::KeyRegister`] over `x86` |
//! | `arm64-poe` | [`protected::Arm64Poe`] | [`crate::cpu::KeyRegister`] over `arm64` |
//!
//! `ppc-hash` and `sparc64` are one policy, [`flush_batch::FlushBatching`],
//! over different primitives.
//!
//! Every primitive trait builds on [`crate::cpu::Cpu`] (CPU id, interrupt
//! context, preemption); the ones other than x86's extend
//! [`machine::CpuPrimitives`] (entry loads, bug reports), and each documents
//! which [`machine::Primitive`] every method counts as. With the `testing`
//! feature, `recording::Recording` implements them all, and x86's, for host
//! tests.
//!
//! A backend names the page-table format it writes
//! ([`Backend::Format`]), so page tables of another format cannot be handed
//! to it, and the memory its entries live in ([`Backend::memory`]), which is
//! where page tables zero their new tables and the walker reads: the tables
//! and the backend cannot disagree about where entries are.

pub mod arm64;
pub mod flush_batch;
pub mod machine;
pub mod ppc_hash;
pub mod protected;
#[cfg(feature = "testing")]
pub mod recording;
pub mod runs;
pub mod s390;
pub mod sparc64;
pub mod x86;
pub mod xen_pv;

use crate::addr::{PageSize, PhysAddr, SpaceId, VirtAddr};
use crate::cpu::CpuMask;
use crate::mode::{ArchHooks, LazyState};
use crate::pgtable::format::Format;
use crate::pgtable::memory::PageTableMemory;
use crate::pgtable::ops::CopyKind;
use runs::{NewProtection, PteRun, RunChanges};

/// One page-table entry update as the backend sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryUpdate {
    /// Physical address of the 8-byte entry.
    pub entry: PhysAddr,
    /// First virtual address the entry covers.
    pub va: VirtAddr,
    /// Address space the entry belongs to.
    pub space: SpaceId,
    /// Level of the table holding the entry: 1 for a PTE table (4K leaves),
    /// 2 for a PMD table (2M blocks), 3 for PUD, 4 for the top of a
    /// 4-level tree and 5 for the top of a 5-level tree.
    pub level: u8,
    /// The value to store.
    pub value: u64,
    /// Whether the entry belongs to the kernel's half of the address space
    /// (arm64 barriers apply only to valid kernel entries).
    pub kernel: bool,
    /// Whether the new value is a valid (present) entry.
    pub valid: bool,
    /// Whether the new value is a leaf (page or block) rather than a table
    /// pointer.
    pub leaf: bool,
}

impl EntryUpdate {
    /// The page size a leaf at this level maps.
    pub const fn page_size(&self) -> PageSize {
        match self.level {
            1 => PageSize::Size4K,
            2 => PageSize::Size2M,
            _ => PageSize::Size1G,
        }
    }
}

/// How range operations read and write page-table entries.
pub trait PteAccess {
    /// Reads the entry at `entry`. Inside a lazy section some backends
    /// return the value before a batched write (Xen PV); callers that must
    /// read back pause the mode.
    fn read_entry(&self, entry: PhysAddr) -> u64;

    /// Writes an entry, possibly deferring the write or its side effects
    /// until the lazy section flushes.
    fn write_entry(&self, update: EntryUpdate);

    /// Atomically reads and clears an entry (`ptep_get_and_clear`), returning
    /// the old value. Not batched: the caller needs the old value (dirty and
    /// accessed bits) now.
    fn get_and_clear(&self, update: EntryUpdate) -> u64;

    /// Writes `count` consecutive entries of one table, as Linux's
    /// `set_ptes()` (include/linux/pgtable.h) does for a run of pages:
    /// entry `i` is at `first.entry + 8 * i`, covers
    /// `first.va + i * first.page_size()`, and gets the value
    /// `first.value + i * step` (`step` advances the address bits). The run
    /// stays inside one table.
    ///
    /// The default writes the entries one by one with
    /// [`PteAccess::write_entry`], so a backend that batches or decorates
    /// single writes keeps doing so; a backend that can store a run at once
    /// overrides it.
    fn write_entries(&self, first: EntryUpdate, count: usize, step: u64) {
        runs::write_entries_each(self, first, count, step)
    }

    /// `ptep_get_and_clear_full`: as [`PteAccess::get_and_clear`], with
    /// `full` set when the whole address space is being torn down
    /// (`tlb->fullmm`, exit and execve). Some arches skip per-entry work
    /// then: sparc64 queues no TSB/TLB flush (`tlb_batch_add` with
    /// `fullmm`), s390 clears the entry without an IPTE. The default
    /// ignores `full`.
    fn get_and_clear_full(&self, update: EntryUpdate, full: bool) -> u64 {
        let _ = full;
        self.get_and_clear(update)
    }

    /// `ptep_set_wrprotect`: replaces the entry by `update.value` (the same
    /// entry write-protected, for fork's copy-on-write) in one step, and
    /// returns the old value. Linux does this as one atomic update of the
    /// entry (x86 `clear_bit`, arm64's `cmpxchg` loop in
    /// `__ptep_set_wrprotect`, powerpc `pte_update`), or as a write
    /// (`set_pte_at` on sparc64). The default reads the entry and writes
    /// the new value through [`PteAccess::write_entry`].
    fn set_wrprotect(&self, update: EntryUpdate) -> u64 {
        let old = self.read_entry(update.entry);
        self.write_entry(update);
        old
    }

    /// `ptep_modify_prot_start`: returns the current value of an entry that
    /// is about to be rewritten in place (mprotect), so that no hardware
    /// update of its accessed and dirty bits is lost before
    /// [`PteAccess::modify_prot_commit`]. The default clears the entry, as
    /// Linux's generic version does; Xen PV only reads it (the commit
    /// preserves the bits in the hypervisor).
    fn modify_prot_start(&self, update: EntryUpdate) -> u64 {
        self.get_and_clear(update)
    }

    /// `ptep_modify_prot_commit`: stores the rewritten value. The default
    /// is [`PteAccess::write_entry`].
    fn modify_prot_commit(&self, update: EntryUpdate) {
        self.write_entry(update)
    }
}

/// Which CPUs a TLB invalidation must reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "a CPU mask is MAX_CPUS bits by design, passed once per flush; there is no allocator to box it"
)]
pub enum FlushScope {
    /// Only the CPU doing the update.
    Local,
    /// Every CPU in the mask that uses the address space.
    Cpus(CpuMask),
    /// The CPUs in the address space's `mm_cpumask` as the machine tracks
    /// it, read when the flush is issued, with preemption off (Linux's
    /// `flush_tlb_mm_range`); every CPU for the kernel's space
    /// (`flush_tlb_kernel_range`). `freed_tables` says whether page-table
    /// pages under the range are about to be freed: x86 then also reaches
    /// CPUs that only borrow the space (`should_flush_tlb`). A
    /// [`Gather`](crate::pgtable::gather::Gather) sets it itself when it
    /// holds table frames.
    Mm {
        /// Page-table pages are freed after this flush.
        freed_tables: bool,
    },
}

impl FlushScope {
    /// The scope of a flush that only the address space's own CPUs need:
    /// [`FlushScope::Mm`] without freed tables.
    pub const MM: FlushScope = FlushScope::Mm {
        freed_tables: false,
    };

    /// This scope, noting that page-table pages are freed after the flush
    /// when `freed` holds.
    pub const fn freeing_tables(self, freed: bool) -> FlushScope {
        match self {
            FlushScope::Mm { freed_tables } => FlushScope::Mm {
                freed_tables: freed_tables || freed,
            },
            other => other,
        }
    }
}

/// TLB invalidation, as the gather asks for it.
pub trait TlbFlush {
    /// Invalidates the translations of `[start, end)` in `space`, page by
    /// page at `stride`.
    fn flush_range(
        &self,
        space: SpaceId,
        start: VirtAddr,
        end: VirtAddr,
        stride: PageSize,
        scope: FlushScope,
    );

    /// Invalidates every translation of `space`.
    fn flush_all(&self, space: SpaceId, scope: FlushScope);

    /// The flush of a gather that tears the whole address space down
    /// (`tlb_flush` with `tlb->fullmm`, exit and execve). The default is
    /// [`TlbFlush::flush_all`] (generic `flush_tlb_mm`, x86's
    /// `flush_tlb_mm_range` to `TLB_FLUSH_ALL`); arm64 flushes only when
    /// page tables were freed, since its ASID allocator never reuses the
    /// ASID without a flush (arch/arm64/include/asm/tlb.h).
    fn flush_full_mm(&self, space: SpaceId, scope: FlushScope) {
        self.flush_all(space, scope)
    }

    /// The number of single-page invalidations above which the gather
    /// should rather flush everything (x86's `tlb_single_page_flush_ceiling`
    /// is 33).
    fn single_page_ceiling(&self) -> usize {
        33
    }
}

/// Context-switch hooks (`arch_start_context_switch`,
/// `arch_end_context_switch`), given the lazy state of the task leaving and
/// of the task arriving.
pub trait ContextSwitch {
    /// Called on the CPU before switching away from a task with `prev`.
    fn switch_out(&self, prev: LazyState) {
        let _ = prev;
    }
    /// Called on the CPU after switching to a task with `next`.
    fn switch_in(&self, next: LazyState) {
        let _ = next;
    }
}

/// Everything a range operation and the lazy mode need from an arch.
pub trait Backend: ArchHooks + PteAccess + TlbFlush + ContextSwitch {
    /// The page-table format whose entries this backend writes: page tables
    /// of another format do not take it
    /// ([`PageTables`](crate::pgtable::ops::PageTables) requires
    /// `B: Backend<Format = F>`).
    type Format: Format;

    /// The page-table memory whose entries this backend reads and writes.
    type Memory: PageTableMemory + ?Sized;

    /// The memory the backend's entries live in: page tables zero new
    /// tables in it, and their walker
    /// ([`PageTables::translate`](crate::pgtable::ops::PageTables::translate))
    /// reads it.
    fn memory(&self) -> &Self::Memory;

    /// `arch_dup_mmap`: fork has copied the page tables of the new address
    /// space `child`. Xen PV pins them (`xen_dup_mmap` → `xen_pgd_pin`).
    /// The default does nothing.
    fn dup_mmap(&self, child: SpaceId) {
        let _ = child;
    }

    /// `arch_exit_mmap`: the address space `space` is about to be torn
    /// down. Xen PV unpins its page tables, so the teardown's clears are
    /// plain stores (`xen_exit_mmap` → `xen_pgd_unpin`). The default does
    /// nothing.
    fn exit_mmap(&self, space: SpaceId) {
        let _ = space;
    }

    /// Clears the present entries of `run` (zap), as Linux's
    /// `get_and_clear_full_ptes`, with `full` set when the whole address
    /// space is being torn down (`tlb->fullmm`; see
    /// [`PteAccess::get_and_clear_full`]). The default is
    /// [`runs::clear_ptes_each`], the per-entry path.
    #[inline]
    fn clear_ptes(&self, run: PteRun, full: bool) -> RunChanges {
        runs::clear_ptes_each::<Self::Format, Self>(self, run, full)
    }

    /// Gives the present entries of `run` a new protection (mprotect), as
    /// Linux's `modify_prot_start_ptes` and `modify_prot_commit_ptes`. The
    /// default is [`runs::protect_ptes_each`], the per-entry path.
    #[inline]
    fn protect_ptes(&self, run: PteRun, protection: &NewProtection) -> RunChanges {
        runs::protect_ptes_each::<Self::Format, Self>(self, run, protection)
    }

    /// Copies the present entries of `parent` into `child` for fork,
    /// write-protecting the parent's for a private mapping (Linux's
    /// `copy_present_ptes`: `wrprotect_ptes`, then `set_ptes`). The default
    /// is [`runs::copy_ptes_each`], the per-entry path.
    #[inline]
    fn copy_ptes(&self, parent: PteRun, child: PteRun, kind: CopyKind) -> RunChanges {
        runs::copy_ptes_each::<Self::Format, Self>(self, parent, child, kind)
    }

    /// Moves the present entries of `from` to `to` (mremap), as Linux's
    /// `move_ptes` with `get_and_clear_ptes` and `set_ptes`. The default is
    /// [`runs::move_ptes_each`], the per-entry path.
    #[inline]
    fn move_ptes(&self, from: PteRun, to: PteRun) -> RunChanges {
        runs::move_ptes_each::<Self::Format, Self>(self, from, to)
    }
}

impl<B: PteAccess + ?Sized> PteAccess for &B {
    #[inline]
    fn read_entry(&self, entry: PhysAddr) -> u64 {
        (**self).read_entry(entry)
    }
    #[inline]
    fn write_entry(&self, update: EntryUpdate) {
        (**self).write_entry(update)
    }
    #[inline]
    fn get_and_clear(&self, update: EntryUpdate) -> u64 {
        (**self).get_and_clear(update)
    }
    #[inline]
    fn write_entries(&self, first: EntryUpdate, count: usize, step: u64) {
        (**self).write_entries(first, count, step)
    }
    #[inline]
    fn get_and_clear_full(&self, update: EntryUpdate, full: bool) -> u64 {
        (**self).get_and_clear_full(update, full)
    }
    #[inline]
    fn set_wrprotect(&self, update: EntryUpdate) -> u64 {
        (**self).set_wrprotect(update)
    }
    #[inline]
    fn modify_prot_start(&self, update: EntryUpdate) -> u64 {
        (**self).modify_prot_start(update)
    }
    #[inline]
    fn modify_prot_commit(&self, update: EntryUpdate) {
        (**self).modify_prot_commit(update)
    }
}

impl<B: TlbFlush + ?Sized> TlbFlush for &B {
    #[inline]
    fn flush_range(
        &self,
        space: SpaceId,
        start: VirtAddr,
        end: VirtAddr,
        stride: PageSize,
        scope: FlushScope,
    ) {
        (**self).flush_range(space, start, end, stride, scope)
    }
    #[inline]
    fn flush_all(&self, space: SpaceId, scope: FlushScope) {
        (**self).flush_all(space, scope)
    }
    #[inline]
    fn flush_full_mm(&self, space: SpaceId, scope: FlushScope) {
        (**self).flush_full_mm(space, scope)
    }
    #[inline]
    fn single_page_ceiling(&self) -> usize {
        (**self).single_page_ceiling()
    }
}

impl<B: ContextSwitch + ?Sized> ContextSwitch for &B {
    #[inline]
    fn switch_out(&self, prev: LazyState) {
        (**self).switch_out(prev)
    }
    #[inline]
    fn switch_in(&self, next: LazyState) {
        (**self).switch_in(next)
    }
}

impl<B: Backend + ?Sized> Backend for &B {
    type Format = B::Format;
    type Memory = B::Memory;
    #[inline]
    fn memory(&self) -> &Self::Memory {
        (**self).memory()
    }
    fn dup_mmap(&self, child: SpaceId) {
        (**self).dup_mmap(child)
    }
    fn exit_mmap(&self, space: SpaceId) {
        (**self).exit_mmap(space)
    }
    #[inline]
    fn clear_ptes(&self, run: PteRun, full: bool) -> RunChanges {
        (**self).clear_ptes(run, full)
    }
    #[inline]
    fn protect_ptes(&self, run: PteRun, protection: &NewProtection) -> RunChanges {
        (**self).protect_ptes(run, protection)
    }
    #[inline]
    fn copy_ptes(&self, parent: PteRun, child: PteRun, kind: CopyKind) -> RunChanges {
        (**self).copy_ptes(parent, child, kind)
    }
    #[inline]
    fn move_ptes(&self, from: PteRun, to: PteRun) -> RunChanges {
        (**self).move_ptes(from, to)
    }
}
