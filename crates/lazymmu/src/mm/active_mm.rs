//! Lazy TLB: kernel threads borrow the previous address space, and the
//! policies that keep the borrowed space alive and its TLB entries correct.
//!
//! A switch to a kernel thread does not load a new page-table root: the
//! thread runs on whatever address space the CPU had (`active_mm`), since it
//! touches only the kernel half, which every address space shares. The CPU
//! is then *lazy* for that space. Two questions follow, and the three
//! [`LazyTlbPolicy`] values answer them differently:
//!
//! 1. *Lifetime.* The borrowed space must not be freed while a lazy CPU can
//!    still walk its page tables. [`LazyTlbPolicy::Refcount`] and
//!    [`LazyTlbPolicy::X86`] take a reference (`mm_count`) for every borrow:
//!    a write to a line shared by every CPU that borrows the space.
//!    [`LazyTlbPolicy::Shootdown`] takes none; instead the final drop sends
//!    an IPI to every CPU in the space's mask, and each one still borrowing
//!    switches to the kernel's address space before the space is freed
//!    (Linux 6.4 `CONFIG_MMU_LAZY_TLB_SHOOTDOWN`: `cleanup_lazy_tlbs()` and
//!    `do_shoot_lazy_tlb()` in kernel/fork.c; selected by powerpc 64-bit).
//! 2. *Flushes.* A lazy CPU never uses user translations, so
//!    [`LazyTlbPolicy::X86`] skips it when sending flush IPIs, unless page
//!    tables are being freed (a lazy CPU could still walk them
//!    speculatively): then the IPI reaches it and it switches to the
//!    kernel's address space. A skipped CPU notices the missed flushes
//!    through the space's flush generation when it switches back.
//!    (arch/x86/mm/tlb.c: `should_flush_tlb()`, called from
//!    `native_flush_tlb_multi()` only when `!info->freed_tables`;
//!    `flush_tlb_func()` switches a lazy CPU to `init_mm`;
//!    `switch_mm_irqs_off()` compares `tlb_gen` on return. Page tables reach
//!    the flush with `freed_tables` set through `tlb_remove_table()` /
//!    `tlb_flush()` in arch/x86/include/asm/tlb.h.)
//!
//! The use-after-free check ([`check_space_free`], [`check_tables_free`])
//! looks at what the hardware holds, not at the policy's bookkeeping, so a
//! policy bug cannot hide itself.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use super::{LineAccess, SharedLine};
use crate::addr::{PageSize, SpaceId, VirtAddr};
use crate::cpu::{AtomicCpuMask, Cpu, CpuId, CpuMask};

/// Which policy keeps lazily borrowed address spaces alive and decides who
/// receives flush IPIs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LazyTlbPolicy {
    /// Every borrow takes a reference on the shared counter and every end of
    /// a borrow drops it; flushes reach every CPU in the mask.
    Refcount,
    /// Borrows take no reference; the last drop shoots lazy borrowers down
    /// with IPIs before freeing; flushes reach every CPU in the mask.
    Shootdown,
    /// Borrows take references (x86 does not select the shootdown option);
    /// flushes skip lazy CPUs unless page tables are freed, and a lazy CPU
    /// that receives one switches to the kernel's address space.
    X86,
}

impl LazyTlbPolicy {
    /// Every policy.
    pub const ALL: [LazyTlbPolicy; 3] = [
        LazyTlbPolicy::Refcount,
        LazyTlbPolicy::Shootdown,
        LazyTlbPolicy::X86,
    ];

    /// Whether a borrow takes a reference on the address space.
    pub const fn borrow_takes_reference(self) -> bool {
        !matches!(self, LazyTlbPolicy::Shootdown)
    }
}

/// Marks "no address space" in a [`TaskMm`] (a kernel thread's `mm`, or the
/// `active_mm` of a task that is not running and borrows nothing).
const NO_SPACE: u32 = u32::MAX;

fn encode(space: Option<SpaceId>) -> u32 {
    match space {
        Some(SpaceId(id)) => {
            assert!(id != NO_SPACE, "space id reserved for 'none'");
            id
        }
        None => NO_SPACE,
    }
}

fn decode(raw: u32) -> Option<SpaceId> {
    (raw != NO_SPACE).then_some(SpaceId(raw))
}

/// An address space (`struct mm_struct`): its counts, the CPUs that have it
/// loaded, and its flush generation. The embedder owns the storage and
/// looks it up by [`SpaceId`] ([`MmMachine::space`]).
#[derive(Debug)]
pub struct AddressSpace {
    id: SpaceId,
    /// `mm_users`: tasks using the space as their own.
    users: AtomicU32,
    /// `mm_count`: references to the structure; all users together hold
    /// one, and each counted lazy borrow holds one.
    count: AtomicU32,
    /// `mm_cpumask`: CPUs that have the space loaded, lazily or not.
    cpumask: AtomicCpuMask,
    /// Flush generation (x86 `context.tlb_gen`): bumped by every flush.
    tlb_gen: AtomicU64,
    freed: AtomicBool,
}

impl AddressSpace {
    /// A new address space with one user and the users' reference.
    pub const fn new(id: SpaceId) -> Self {
        Self {
            id,
            users: AtomicU32::new(1),
            count: AtomicU32::new(1),
            cpumask: AtomicCpuMask::new(),
            tlb_gen: AtomicU64::new(0),
            freed: AtomicBool::new(false),
        }
    }

    /// The kernel's address space (`init_mm`): never freed; its users count
    /// stands for the kernel itself.
    pub const fn kernel() -> Self {
        Self::new(SpaceId::KERNEL)
    }

    /// The space's identity.
    pub const fn id(&self) -> SpaceId {
        self.id
    }

    /// `mm_users`.
    pub fn users(&self) -> u32 {
        self.users.load(Ordering::Acquire)
    }

    /// `mm_count`.
    pub fn count(&self) -> u32 {
        self.count.load(Ordering::Acquire)
    }

    /// `mm_cpumask`.
    pub fn cpumask(&self) -> CpuMask {
        self.cpumask.load(Ordering::Acquire)
    }

    /// Leaves only `cpu` in `mm_cpumask`: sparc64's
    /// `smp_flush_tlb_pending` and `smp_flush_tlb_page` do this instead of
    /// a cross-call when the space has one user and it is running here
    /// (arch/sparc/kernel/smp_64.c). A CPU dropped from the mask flushes
    /// the space when it loads it again
    /// ([`LazyTlb::context_switch`]).
    pub fn trim_cpumask_to(&self, cpu: CpuId) {
        self.cpumask.store(CpuMask::single(cpu), Ordering::Release);
    }

    /// Puts `cpu` in `mm_cpumask`, as `switch_mm` does when the CPU loads
    /// the space (`cpumask_set_cpu`): for an embedder that starts with
    /// tasks already running on their CPUs instead of switching them in
    /// through [`LazyTlb::context_switch`].
    pub fn join_cpumask(&self, cpu: CpuId) {
        self.cpumask.insert(cpu, Ordering::AcqRel);
    }

    /// The flush generation.
    pub fn tlb_gen(&self) -> u64 {
        self.tlb_gen.load(Ordering::Acquire)
    }

    /// Moves the flush generation on and returns the new one
    /// (`inc_mm_tlb_gen()`, arch/x86/include/asm/mmu_context.h): every flush
    /// of the space does this before it reads the mask and the lazy flags,
    /// so that a CPU it leaves out, lazy or joining the mask after the
    /// read, sees a newer generation when it returns to the space and
    /// flushes then ([`LazyTlb::context_switch`]).
    pub fn inc_tlb_gen(&self) -> u64 {
        self.tlb_gen.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Whether the space has been freed (the embedder keeps the storage as
    /// a tombstone so that a late access is detectable).
    pub fn is_freed(&self) -> bool {
        self.freed.load(Ordering::Acquire)
    }
}

/// One CPU's lazy-TLB state (x86 `cpu_tlbstate` and `cpu_tlbstate_shared`).
#[derive(Debug)]
pub struct CpuTlbState {
    /// The space whose root the CPU has loaded, as the policy believes.
    loaded: AtomicU32,
    /// Whether the CPU runs a kernel thread on a borrowed space.
    lazy: AtomicBool,
    /// The flush generation of `loaded` this CPU has caught up with.
    loaded_gen: AtomicU64,
}

impl CpuTlbState {
    /// A CPU that has the kernel's address space loaded (boot state).
    pub const fn new() -> Self {
        Self {
            loaded: AtomicU32::new(SpaceId::KERNEL.0),
            lazy: AtomicBool::new(false),
            loaded_gen: AtomicU64::new(0),
        }
    }

    /// The loaded space (`cpu_tlbstate.loaded_mm`).
    pub fn loaded(&self) -> SpaceId {
        SpaceId(self.loaded.load(Ordering::Acquire))
    }

    /// Whether the CPU is lazy (`cpu_tlbstate_shared.is_lazy`).
    pub fn is_lazy(&self) -> bool {
        self.lazy.load(Ordering::Acquire)
    }

    /// The flush generation of the loaded space this CPU has seen.
    pub fn loaded_gen(&self) -> u64 {
        self.loaded_gen.load(Ordering::Acquire)
    }
}

impl Default for CpuTlbState {
    fn default() -> Self {
        Self::new()
    }
}

/// A task's view of address spaces: its own (`mm`, none for a kernel
/// thread) and the one it runs on (`active_mm`).
#[derive(Debug)]
pub struct TaskMm {
    mm: AtomicU32,
    active_mm: AtomicU32,
}

impl TaskMm {
    /// A user task owning `space` (which must already count it as a user).
    pub const fn user(space: SpaceId) -> Self {
        Self {
            mm: AtomicU32::new(space.0),
            active_mm: AtomicU32::new(space.0),
        }
    }

    /// A kernel thread that has not run yet: no `mm`, borrows nothing.
    pub const fn kernel_thread() -> Self {
        Self {
            mm: AtomicU32::new(NO_SPACE),
            active_mm: AtomicU32::new(NO_SPACE),
        }
    }

    /// Makes a task structure that is not running and borrows nothing a
    /// user task owning `space` (which must already count it as a user),
    /// for embedders that recycle task structures.
    ///
    /// # Errors
    /// [`MmError::TaskInUse`] if the structure still has an active space
    /// (it is running or has not been switched away from).
    pub fn reuse_as_user(&self, space: SpaceId) -> Result<(), MmError> {
        if self.active_mm().is_some() {
            return Err(MmError::TaskInUse);
        }
        self.set_mm(Some(space));
        self.set_active_mm(Some(space));
        Ok(())
    }

    /// The task's own address space; `None` for a kernel thread or an
    /// exited task.
    pub fn mm(&self) -> Option<SpaceId> {
        decode(self.mm.load(Ordering::Acquire))
    }

    /// The address space the task runs on (its own or borrowed); `None` for
    /// a kernel thread that is not running.
    pub fn active_mm(&self) -> Option<SpaceId> {
        decode(self.active_mm.load(Ordering::Acquire))
    }

    pub(crate) fn set_mm(&self, space: Option<SpaceId>) {
        self.mm.store(encode(space), Ordering::Release);
    }

    pub(crate) fn set_active_mm(&self, space: Option<SpaceId>) {
        self.active_mm.store(encode(space), Ordering::Release);
    }
}

/// Which translations a flush removes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushRange {
    /// Every translation of the space.
    All,
    /// `[start, end)` page by page at `stride`.
    Range {
        /// First address.
        start: VirtAddr,
        /// End (exclusive).
        end: VirtAddr,
        /// Page size of the mappings removed.
        stride: PageSize,
    },
}

/// The machine operations lazy TLB needs, on top of the CPU itself
/// ([`Cpu`]; inside [`MmMachine::on_each_cpu`]'s function, [`Cpu::cpu_id`]
/// is the CPU that function runs on). All take `&self`: the machine is
/// ambient, and [`MmMachine::on_each_cpu`] re-enters the library on other
/// CPUs.
pub trait MmMachine: Cpu {
    /// The address space named `id`. Freed spaces stay reachable as
    /// tombstones ([`AddressSpace::is_freed`]).
    fn space(&self, id: SpaceId) -> &AddressSpace;

    /// The lazy-TLB state of `cpu`.
    fn cpu_state(&self, cpu: CpuId) -> &CpuTlbState;

    /// The task running on the current CPU.
    fn current_task(&self) -> &TaskMm;

    /// Loads `space`'s page-table root on the current CPU (CR3, TTBR0).
    fn load_root(&self, space: SpaceId);

    /// Removes `space`'s translations in `range` from the current CPU's TLB
    /// and paging-structure caches.
    fn flush_local(&self, space: SpaceId, range: FlushRange);

    /// Runs `func` on every CPU in `targets` and waits for all of them
    /// (`on_each_cpu_mask(..., wait = 1)`). The current CPU, if in
    /// `targets`, runs it directly; every other CPU costs one IPI.
    fn on_each_cpu(&self, targets: CpuMask, func: &dyn Fn(CpuId));

    /// Detaches the page-table pages of `space` under `range` from its tree
    /// (`free_pgtables()`), keeping them allocated until
    /// [`MmMachine::free_unlinked_tables`]. Returns how many were detached.
    fn unlink_tables(&self, space: SpaceId, range: FlushRange) -> usize;

    /// Frees the page-table pages detached by `unlink_tables` for `space`.
    /// Called only after a flush that reached every CPU that may walk them.
    fn free_unlinked_tables(&self, space: SpaceId);

    /// Frees the address space itself (`__mmdrop()` → `free_mm()`).
    fn free_space(&self, space: SpaceId);

    /// Accounts an access to a line other CPUs share. The default does
    /// nothing (a kernel has the hardware do it).
    fn line_access(&self, line: SharedLine, access: LineAccess) {
        let _ = (line, access);
    }
}

impl<M: MmMachine + ?Sized> MmMachine for &M {
    fn space(&self, id: SpaceId) -> &AddressSpace {
        (**self).space(id)
    }
    fn cpu_state(&self, cpu: CpuId) -> &CpuTlbState {
        (**self).cpu_state(cpu)
    }
    fn current_task(&self) -> &TaskMm {
        (**self).current_task()
    }
    fn load_root(&self, space: SpaceId) {
        (**self).load_root(space)
    }
    fn flush_local(&self, space: SpaceId, range: FlushRange) {
        (**self).flush_local(space, range)
    }
    fn on_each_cpu(&self, targets: CpuMask, func: &dyn Fn(CpuId)) {
        (**self).on_each_cpu(targets, func)
    }
    fn unlink_tables(&self, space: SpaceId, range: FlushRange) -> usize {
        (**self).unlink_tables(space, range)
    }
    fn free_unlinked_tables(&self, space: SpaceId) {
        (**self).free_unlinked_tables(space)
    }
    fn free_space(&self, space: SpaceId) {
        (**self).free_space(space)
    }
    fn line_access(&self, line: SharedLine, access: LineAccess) {
        (**self).line_access(line, access)
    }
}

/// Misuse of the address-space API. Nothing is changed by a refused call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmError {
    /// The operation touched an address space that has been freed.
    SpaceFreed(SpaceId),
    /// A count would have gone below zero.
    CountUnderflow(SpaceId),
    /// The kernel's address space cannot be dropped or exited.
    KernelSpace,
    /// The task has no address space of its own (a kernel thread).
    NoMm,
    /// The CPU is not in the mask of the space it switches from, or the
    /// task states do not match the CPU (a switch from a task not running).
    NotRunning,
    /// A task structure still in use was about to be reused.
    TaskInUse,
}

impl core::fmt::Display for MmError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            MmError::SpaceFreed(space) => write!(f, "address space {} has been freed", space.0),
            MmError::CountUnderflow(space) => {
                write!(
                    f,
                    "a count of address space {} would go below zero",
                    space.0
                )
            }
            MmError::KernelSpace => {
                f.write_str("the kernel's address space cannot be dropped or exited")
            }
            MmError::NoMm => f.write_str("the task has no address space of its own"),
            MmError::NotRunning => {
                f.write_str("the switch is not from the task running on this CPU")
            }
            MmError::TaskInUse => {
                f.write_str("a task structure still in use was about to be reused")
            }
        }
    }
}

impl core::error::Error for MmError {}

/// The CPUs a flush of an address space reaches, as [`flush_targets`]
/// chose them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlushTargets {
    /// The space's flush generation after this flush moved it on.
    pub gen: u64,
    /// The CPUs to flush: the space's `mm_cpumask`, the current CPU
    /// included when it is there, without the lazy CPUs left out.
    pub cpus: CpuMask,
    /// How many CPUs of the mask were left out because they only borrow
    /// the space lazily.
    pub skipped_lazy: u32,
}

/// Chooses the CPUs a flush of `space` must reach, as x86's
/// `flush_tlb_mm_range()` does (arch/x86/mm/tlb.c). It first moves the
/// space's flush generation on (`inc_mm_tlb_gen()`), then reads
/// `mm_cpumask`. With `skip_lazy` it leaves out every CPU of the mask that
/// is lazy, the current one included: this is `should_flush_tlb()`, the
/// condition `native_flush_tlb_multi()` hands `on_each_cpu_cond_mask()`
/// unless page tables are freed (`info->freed_tables`).
///
/// The order is what makes skipping safe: a CPU left out, or one that
/// joins the mask after the read, finds a newer generation when it returns
/// to or loads the space, and flushes then (`switch_mm_irqs_off()`;
/// [`LazyTlb::context_switch`]). Both users of the rule call this one
/// function: [`LazyTlb::flush_tlb_mm_range`] and an embedder's
/// [`X86Primitives::flush_targets`](crate::backend::x86::X86Primitives::flush_targets).
/// Each shared line it touches is reported through
/// [`MmMachine::line_access`]: the atomic increment of the generation and,
/// when skipping, each remote CPU's lazy flag.
pub fn flush_targets<M: MmMachine + ?Sized>(
    machine: &M,
    space: SpaceId,
    skip_lazy: bool,
) -> FlushTargets {
    let me = machine.cpu_id();
    let mm = machine.space(space);
    machine.line_access(SharedLine::SpaceCpumask(space), LineAccess::Atomic);
    let gen = mm.inc_tlb_gen();
    let mask = mm.cpumask();
    let mut cpus = mask;
    let mut skipped_lazy = 0;
    if skip_lazy {
        for cpu in mask.iter() {
            if cpu != me {
                machine.line_access(SharedLine::CpuLazy(cpu), LineAccess::Read);
            }
            if machine.cpu_state(cpu).is_lazy() {
                cpus = cpus.without(cpu);
                skipped_lazy += 1;
            }
        }
    }
    FlushTargets {
        gen,
        cpus,
        skipped_lazy,
    }
}

/// What the policy did, for reports and tests.
#[derive(Debug, Default)]
pub struct LazyTlbStats {
    /// Switches to a kernel thread that borrowed the previous space.
    pub borrows: AtomicU64,
    /// References taken or dropped for borrows (shared-line writes).
    pub borrow_refs: AtomicU64,
    /// Switches that loaded a new page-table root.
    pub root_loads: AtomicU64,
    /// Flush IPIs sent (remote CPUs only).
    pub flush_ipis: AtomicU64,
    /// CPUs skipped by a flush because they were lazy.
    pub flush_skipped_lazy: AtomicU64,
    /// IPIs sent by the final drop of a space to shoot lazy borrowers down.
    pub shootdown_ipis: AtomicU64,
    /// Lazy CPUs switched to the kernel's address space (by a shootdown or
    /// a table-freeing flush).
    pub lazy_switched_away: AtomicU64,
    /// Flushes done on return from lazy mode because the CPU missed one.
    pub catchup_flushes: AtomicU64,
    /// Address spaces freed.
    pub spaces_freed: AtomicU64,
}

impl LazyTlbStats {
    fn bump(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
    }

    /// Reads one counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Lazy TLB and address-space lifetimes under one [`LazyTlbPolicy`].
///
/// ```
/// use lazymmu::mm::active_mm::{LazyTlb, LazyTlbPolicy};
/// use lazymmu::mm::testing::TestMachine;
/// let machine = TestMachine::new(2);
/// let tlb = LazyTlb::new(&machine, LazyTlbPolicy::Shootdown);
/// machine.boot(&tlb);
/// let space = machine.new_space(); // one user
/// let task = machine.spawn_user(space);
/// let kthread = machine.spawn_kernel_thread();
/// machine.switch_to(&tlb, 0, task).unwrap();
/// machine.switch_to(&tlb, 0, kthread).unwrap(); // borrows `space`
/// assert!(machine.cpu_state_of(0).is_lazy());
/// assert_eq!(machine.task(kthread).active_mm(), Some(space));
/// assert!(machine.cpu_state_of(0).is_lazy());
/// ```
pub struct LazyTlb<M> {
    machine: M,
    policy: LazyTlbPolicy,
    stats: LazyTlbStats,
}

impl<M: MmMachine> LazyTlb<M> {
    /// Lazy TLB over `machine` under `policy`.
    pub fn new(machine: M, policy: LazyTlbPolicy) -> Self {
        Self {
            machine,
            policy,
            stats: LazyTlbStats::default(),
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> LazyTlbPolicy {
        self.policy
    }

    /// What the policy has done so far.
    pub fn stats(&self) -> &LazyTlbStats {
        &self.stats
    }

    /// The machine.
    pub fn machine(&self) -> &M {
        &self.machine
    }

    /// Starts the current CPU's idle task on the kernel's address space, as
    /// a CPU comes up (Linux grabs `init_mm` for each idle task the same
    /// way), taking the borrow reference the policy asks for.
    pub fn boot_cpu(&self, idle: &TaskMm) {
        let cpu = self.machine.cpu_id();
        idle.set_mm(None);
        idle.set_active_mm(Some(SpaceId::KERNEL));
        self.grab_lazy(SpaceId::KERNEL);
        let st = self.machine.cpu_state(cpu);
        st.loaded.store(SpaceId::KERNEL.0, Ordering::Release);
        st.loaded_gen.store(
            self.machine.space(SpaceId::KERNEL).tlb_gen(),
            Ordering::Release,
        );
        self.set_lazy(cpu, true);
        self.set_cpumask(SpaceId::KERNEL, cpu, true);
        self.machine.load_root(SpaceId::KERNEL);
    }

    /// `mmget()`: another task shares `space` as its own.
    ///
    /// # Errors
    /// [`MmError::SpaceFreed`] if the space is gone, [`MmError::NoMm`] if it
    /// has no users left (an exited space cannot be revived).
    pub fn mmget(&self, space: SpaceId) -> Result<(), MmError> {
        let mm = self.live(space)?;
        if mm.users() == 0 {
            return Err(MmError::NoMm);
        }
        self.machine
            .line_access(SharedLine::SpaceCount(space), LineAccess::Atomic);
        mm.users.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// `mmgrab()`: one more reference to the structure.
    ///
    /// # Errors
    /// [`MmError::SpaceFreed`] if the space is gone.
    pub fn mmgrab(&self, space: SpaceId) -> Result<(), MmError> {
        let mm = self.live(space)?;
        self.machine
            .line_access(SharedLine::SpaceCount(space), LineAccess::Atomic);
        mm.count.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// `mmdrop()`: drops a reference; the last one frees the space (after
    /// shooting lazy borrowers down under [`LazyTlbPolicy::Shootdown`]).
    ///
    /// # Errors
    /// [`MmError::SpaceFreed`], [`MmError::CountUnderflow`], or
    /// [`MmError::KernelSpace`] for the last reference of the kernel's
    /// space.
    pub fn mmdrop(&self, space: SpaceId) -> Result<(), MmError> {
        let mm = self.live(space)?;
        let count = mm.count();
        if count == 0 {
            return Err(MmError::CountUnderflow(space));
        }
        if count == 1 && space == SpaceId::KERNEL {
            return Err(MmError::KernelSpace);
        }
        self.machine
            .line_access(SharedLine::SpaceCount(space), LineAccess::Atomic);
        if mm.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.destroy(space);
        }
        Ok(())
    }

    /// `mmput()`: a task stops using `space` as its own. The last user tears
    /// the user page tables down (`exit_mmap()`), then drops the users'
    /// reference.
    ///
    /// # Errors
    /// [`MmError::SpaceFreed`], [`MmError::CountUnderflow`] with no users
    /// left, [`MmError::KernelSpace`] for the kernel's space.
    pub fn mmput(&self, space: SpaceId) -> Result<(), MmError> {
        if space == SpaceId::KERNEL {
            return Err(MmError::KernelSpace);
        }
        let mm = self.live(space)?;
        if mm.users() == 0 {
            return Err(MmError::CountUnderflow(space));
        }
        self.machine
            .line_access(SharedLine::SpaceCount(space), LineAccess::Atomic);
        if mm.users.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.exit_mmap(space);
            self.mmdrop(space)?;
        }
        Ok(())
    }

    /// `exit_mm()`: the current task gives up its address space. It keeps
    /// running on it lazily (taking the borrow reference the policy asks
    /// for) until it is switched out for the last time.
    ///
    /// # Errors
    /// [`MmError::NoMm`] for a kernel thread; errors of [`Self::mmput`].
    pub fn exit_mm(&self, task: &TaskMm) -> Result<(), MmError> {
        let space = task.mm().ok_or(MmError::NoMm)?;
        self.live(space)?;
        let cpu = self.machine.cpu_id();
        self.grab_lazy(space);
        task.set_mm(None);
        self.set_lazy(cpu, true);
        self.mmput(space)
    }

    /// Switches the current CPU from `prev` to `next` (`context_switch()` in
    /// kernel/sched/core.c): a kernel thread borrows `prev`'s space, a user
    /// task gets its own loaded, and a borrow that ends is dropped once the
    /// CPU no longer uses it (`finish_task_switch()`).
    ///
    /// # Errors
    /// [`MmError::NotRunning`] when `prev` has no active space (it was not
    /// running), [`MmError::SpaceFreed`] when `next`'s space is gone (the
    /// CPU is unchanged), or the error of dropping the ended borrow when
    /// the counts were already wrong (the switch itself is done).
    pub fn context_switch(&self, prev: &TaskMm, next: &TaskMm) -> Result<(), MmError> {
        let cpu = self.machine.cpu_id();
        let prev_active = prev.active_mm().ok_or(MmError::NotRunning)?;
        let mut drop_after = None;
        match next.mm() {
            None => {
                // To a kernel thread: borrow whatever is loaded.
                Self::bump(&self.stats.borrows);
                next.set_active_mm(Some(prev_active));
                self.set_lazy(cpu, true);
                if prev.mm().is_some() {
                    self.grab_lazy(prev_active);
                } else {
                    // Kernel thread to kernel thread: the borrow moves.
                    prev.set_active_mm(None);
                }
            }
            Some(next_mm) => {
                self.live(next_mm)?;
                self.switch_mm(cpu, next_mm);
                next.set_active_mm(Some(next_mm));
                if prev.mm().is_none() {
                    prev.set_active_mm(None);
                    drop_after = Some(prev_active);
                }
            }
        }
        match drop_after {
            Some(space) => self.drop_lazy(space),
            None => Ok(()),
        }
    }

    /// Flushes `range` of `space` on every CPU that may hold its
    /// translations (`flush_tlb_mm_range()`). `freed_tables` says whether
    /// page-table pages under the range are about to be freed: lazy CPUs
    /// must then be reached as well. The CPUs are chosen by
    /// [`flush_targets`], which lazy CPUs it leaves out under
    /// [`LazyTlbPolicy::X86`].
    pub fn flush_tlb_mm_range(&self, space: SpaceId, range: FlushRange, freed_tables: bool) {
        let cpu = self.machine.cpu_id();
        let skip_lazy = self.policy == LazyTlbPolicy::X86 && !freed_tables;
        let chosen = flush_targets(&self.machine, space, skip_lazy);
        Self::add(
            &self.stats.flush_skipped_lazy,
            u64::from(chosen.skipped_lazy),
        );
        Self::add(
            &self.stats.flush_ipis,
            u64::from(chosen.cpus.without(cpu).count()),
        );
        if chosen.cpus.is_empty() {
            return;
        }
        self.machine.on_each_cpu(chosen.cpus, &|on| {
            self.flush_func(on, space, range, chosen.gen);
        });
    }

    /// Finishes an unmap of `range` in `space` that also frees the
    /// page-table pages under it (`tlb_finish_mmu()` after
    /// `free_pgtables()`): detach them, flush — with `freed_tables` when
    /// any were detached, so that every CPU that may walk them is reached —
    /// then free them (the `tlb_remove_table()` order). The flush happens
    /// even when no table was freed: the unmapped entries need it.
    pub fn free_page_tables(&self, space: SpaceId, range: FlushRange) {
        let unlinked = self.machine.unlink_tables(space, range);
        self.flush_tlb_mm_range(space, range, unlinked > 0);
        if unlinked > 0 {
            self.machine.free_unlinked_tables(space);
        }
    }

    // ---- internals -------------------------------------------------------

    fn bump(counter: &AtomicU64) {
        LazyTlbStats::bump(counter, 1);
    }

    fn add(counter: &AtomicU64, by: u64) {
        LazyTlbStats::bump(counter, by);
    }

    fn live(&self, space: SpaceId) -> Result<&AddressSpace, MmError> {
        let mm = self.machine.space(space);
        if mm.is_freed() {
            Err(MmError::SpaceFreed(space))
        } else {
            Ok(mm)
        }
    }

    /// `mmgrab_lazy_tlb()`.
    fn grab_lazy(&self, space: SpaceId) {
        if self.policy.borrow_takes_reference() {
            Self::bump(&self.stats.borrow_refs);
            self.machine
                .line_access(SharedLine::SpaceCount(space), LineAccess::Atomic);
            self.machine
                .space(space)
                .count
                .fetch_add(1, Ordering::AcqRel);
        }
    }

    /// `mmdrop_lazy_tlb()`. The borrow held a reference, so a refusal
    /// means the counts were already wrong; it is passed on.
    fn drop_lazy(&self, space: SpaceId) -> Result<(), MmError> {
        if self.policy.borrow_takes_reference() {
            Self::bump(&self.stats.borrow_refs);
            self.mmdrop(space)
        } else {
            Ok(())
        }
    }

    fn set_lazy(&self, cpu: CpuId, lazy: bool) {
        let st = self.machine.cpu_state(cpu);
        if st.is_lazy() != lazy {
            self.machine
                .line_access(SharedLine::CpuLazy(cpu), LineAccess::Write);
            st.lazy.store(lazy, Ordering::Release);
        }
    }

    fn set_cpumask(&self, space: SpaceId, cpu: CpuId, present: bool) {
        let mm = self.machine.space(space);
        if mm.cpumask.contains(cpu, Ordering::Acquire) != present {
            // cpumask_set_cpu() / cpumask_clear_cpu(): set_bit() and
            // clear_bit(), atomic read-modify-writes of the mask's word.
            self.machine
                .line_access(SharedLine::SpaceCpumask(space), LineAccess::Atomic);
            if present {
                mm.cpumask.insert(cpu, Ordering::AcqRel);
            } else {
                mm.cpumask.remove(cpu, Ordering::AcqRel);
            }
        }
    }

    /// `switch_mm_irqs_off()` on `cpu` to `next`.
    fn switch_mm(&self, cpu: CpuId, next: SpaceId) {
        let st = self.machine.cpu_state(cpu);
        self.set_lazy(cpu, false);
        let loaded = st.loaded();
        let next_mm = self.machine.space(next);
        if loaded == next {
            // Back from lazy mode on the same space: catch up with flushes
            // skipped meanwhile.
            self.machine
                .line_access(SharedLine::SpaceCpumask(next), LineAccess::Read);
            let gen = next_mm.tlb_gen();
            // A CPU dropped from the mask meanwhile (sparc64's trimming)
            // flushes as it rejoins (sparc64's `switch_mm`).
            let rejoins = !next_mm.cpumask().contains(cpu);
            if gen > st.loaded_gen() || rejoins {
                Self::bump(&self.stats.catchup_flushes);
                self.machine.flush_local(next, FlushRange::All);
                st.loaded_gen.store(gen, Ordering::Release);
            }
            self.set_cpumask(next, cpu, true);
            return;
        }
        // Join the new space's mask before loading it, so that a flush that
        // starts after the load cannot miss this CPU; leave the old one's
        // after, so that a flush racing with the switch still reaches it.
        self.set_cpumask(next, cpu, true);
        self.machine
            .line_access(SharedLine::SpaceCpumask(next), LineAccess::Read);
        let gen = next_mm.tlb_gen();
        self.machine.load_root(next);
        // Without ASID tracking the new space's old translations cannot be
        // trusted: start it clean.
        self.machine.flush_local(next, FlushRange::All);
        st.loaded.store(next.0, Ordering::Release);
        st.loaded_gen.store(gen, Ordering::Release);
        Self::bump(&self.stats.root_loads);
        self.set_cpumask(loaded, cpu, false);
    }

    /// Switches the current CPU, lazy on `from`, to the kernel's address
    /// space (x86 `switch_mm_irqs_off(NULL, &init_mm, NULL)`;
    /// `do_shoot_lazy_tlb()`).
    fn leave_lazy(&self, cpu: CpuId, from: SpaceId) {
        Self::bump(&self.stats.lazy_switched_away);
        let st = self.machine.cpu_state(cpu);
        self.set_cpumask(SpaceId::KERNEL, cpu, true);
        self.machine.load_root(SpaceId::KERNEL);
        st.loaded.store(SpaceId::KERNEL.0, Ordering::Release);
        st.loaded_gen.store(
            self.machine.space(SpaceId::KERNEL).tlb_gen(),
            Ordering::Release,
        );
        self.set_cpumask(from, cpu, false);
    }

    /// The flush IPI handler (`flush_tlb_func()`).
    fn flush_func(&self, cpu: CpuId, space: SpaceId, range: FlushRange, gen: u64) {
        let st = self.machine.cpu_state(cpu);
        if st.loaded() != space {
            // Switched away since the mask was read: its next load of
            // `space` starts clean.
            return;
        }
        if st.is_lazy() && self.policy == LazyTlbPolicy::X86 {
            // Only table-freeing flushes reach lazy CPUs: stop using the
            // space rather than flushing it.
            self.leave_lazy(cpu, space);
            return;
        }
        self.machine.flush_local(space, range);
        if st.loaded_gen() < gen {
            st.loaded_gen.store(gen, Ordering::Release);
        }
    }

    /// `exit_mmap()`: the user page tables go, with a flush that reaches
    /// lazy CPUs.
    fn exit_mmap(&self, space: SpaceId) {
        self.free_page_tables(space, FlushRange::All);
    }

    /// `__mmdrop()`: the last reference is gone.
    fn destroy(&self, space: SpaceId) {
        if self.policy == LazyTlbPolicy::Shootdown {
            self.cleanup_lazy_tlbs(space);
        }
        self.machine
            .space(space)
            .freed
            .store(true, Ordering::Release);
        Self::bump(&self.stats.spaces_freed);
        self.machine.free_space(space);
    }

    /// `cleanup_lazy_tlbs()`: every CPU in the mask that still borrows
    /// `space` switches to the kernel's address space. Relies on the mask
    /// being a superset of the CPUs that have the space loaded, which
    /// [`Self::switch_mm`] keeps.
    fn cleanup_lazy_tlbs(&self, space: SpaceId) {
        let cpu = self.machine.cpu_id();
        self.machine
            .line_access(SharedLine::SpaceCpumask(space), LineAccess::Read);
        let targets = self.machine.space(space).cpumask();
        if targets.is_empty() {
            return;
        }
        Self::add(
            &self.stats.shootdown_ipis,
            u64::from(targets.without(cpu).count()),
        );
        self.machine.on_each_cpu(targets, &|on| {
            let current = self.machine.current_task();
            if current.active_mm() == Some(space) {
                current.set_active_mm(Some(SpaceId::KERNEL));
            }
            if self.machine.cpu_state(on).loaded() == space {
                self.leave_lazy(on, space);
            }
        });
    }
}

/// A free that would leave a CPU able to walk freed memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UseAfterFree {
    /// `cpu` still has `space`'s root loaded while the space is freed.
    SpaceLoaded {
        /// The space being freed.
        space: SpaceId,
        /// A CPU whose root register points at it.
        cpu: CpuId,
    },
    /// `cpu` has `space` loaded and has not invalidated its
    /// paging-structure caches since `space`'s tables were detached, so it
    /// may still walk the pages being freed.
    TablesCached {
        /// The space whose tables are freed.
        space: SpaceId,
        /// A CPU that may walk them.
        cpu: CpuId,
    },
}

impl core::fmt::Display for UseAfterFree {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            UseAfterFree::SpaceLoaded { space, cpu } => write!(
                f,
                "address space {} freed while CPU {cpu} has it loaded",
                space.0
            ),
            UseAfterFree::TablesCached { space, cpu } => write!(
                f,
                "page tables of space {} freed while CPU {cpu} may still walk them",
                space.0
            ),
        }
    }
}

/// What the hardware holds, as a machine model reports it: the root each
/// CPU has loaded and how many times each CPU invalidated a space's
/// translations. The checks below use only this, never the policy's own
/// bookkeeping.
pub trait HardwareView {
    /// Number of CPUs.
    fn cpu_count(&self) -> usize;
    /// The space whose root `cpu` has loaded.
    fn root(&self, cpu: CpuId) -> SpaceId;
    /// How many invalidations of `space`'s translations `cpu` has done.
    fn invalidations(&self, cpu: CpuId, space: SpaceId) -> u64;
}

/// Checks that freeing `space` now is safe: no CPU has its root loaded.
///
/// # Errors
/// [`UseAfterFree::SpaceLoaded`] naming the first CPU that does.
pub fn check_space_free<H: HardwareView + ?Sized>(
    hw: &H,
    space: SpaceId,
) -> Result<(), UseAfterFree> {
    match (0..hw.cpu_count())
        .map(CpuId::new)
        .find(|&cpu| hw.root(cpu) == space)
    {
        Some(cpu) => Err(UseAfterFree::SpaceLoaded { space, cpu }),
        None => Ok(()),
    }
}

/// Checks that freeing page-table pages of `space` detached when the
/// per-CPU invalidation counts were `at_unlink` is safe: every CPU that has
/// `space` loaded has invalidated since.
///
/// # Errors
/// [`UseAfterFree::TablesCached`] naming the first CPU that may still walk
/// them.
pub fn check_tables_free<H: HardwareView + ?Sized>(
    hw: &H,
    space: SpaceId,
    at_unlink: &[u64],
) -> Result<(), UseAfterFree> {
    for cpu in (0..hw.cpu_count()).map(CpuId::new) {
        let before = at_unlink.get(cpu.index()).copied().unwrap_or(0);
        if hw.root(cpu) == space && hw.invalidations(cpu, space) <= before {
            return Err(UseAfterFree::TablesCached { space, cpu });
        }
    }
    Ok(())
}
