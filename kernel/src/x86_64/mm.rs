//! Address spaces and lazy TLB on real CPUs: the library's
//! [`LazyTlb`] under each of its three `active_mm` policies, over a
//! [`MmMachine`] whose operations are real — CR3 loads, `invlpg` and CR3
//! or CR4.PGE flushes, cross-call IPIs — and whose frees are checked by
//! what the hardware does.
//!
//! The use-after-free check is done for real: when an address space or
//! its page tables are freed, every entry of the user half of the freed
//! pages is overwritten with [`POISON`], a present entry with reserved
//! bits set, and the pages are held in a quarantine. Any later walk of a
//! user address from a CPU whose CR3 still points at the freed root faults
//! with the reserved-bit error code; right after each free every CPU walks
//! one such address ([`CANARY`], unmapped in every live space) and reports
//! that fault. The kernel half of a poisoned root is left intact so that
//! the CPU can still take and report the fault. The library's
//! [`check_space_free`] / [`check_tables_free`] run too, against the CR3
//! value each CPU records right after loading it.
//!
//! Each policy has its own "world" (its `LazyTlb`, the per-CPU lazy-TLB
//! states, and a `TaskMm` per task), activated once, at a point where
//! every CPU runs a kernel thread on the kernel's address space; address
//! spaces are created in the active world. Switching policy under running
//! user tasks would need state the library keeps private, and Linux picks
//! one policy at build time anyway.

use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use lazymmu::addr::{PhysAddr, SpaceId, VirtAddr};
use lazymmu::backend::x86::{flush_locally, RemoteFlush};
use lazymmu::backend::FlushScope;
use lazymmu::backend::TlbFlush;
use lazymmu::cpu::{Cpu, CpuId, CpuMask};
use lazymmu::mm::active_mm::{
    check_space_free, check_tables_free, AddressSpace, CpuTlbState, FlushRange, HardwareView,
    LazyTlb, LazyTlbPolicy, MmError, MmMachine, TaskMm,
};
use lazymmu::pgtable::allocator::FrameAllocator;
use lazymmu::pgtable::gather::Gather;

use crate::env::KernelEnv;
use crate::percpu::{self, MAX_CPUS};
use crate::sched::{self, Task};
use crate::sync::{Global, SpinLock};
use crate::{cpu, interrupts, memory, page_tables, paging, pks, println, xcall};

/// The name the guest's report gives `policy`.
pub const fn policy_name(policy: LazyTlbPolicy) -> &'static str {
    match policy {
        LazyTlbPolicy::Refcount => "refcount",
        LazyTlbPolicy::Shootdown => "shootdown",
        LazyTlbPolicy::X86 => "x86",
    }
}

/// The three policies, one world each, in activation order: x86 first
/// (Linux's own policy on this architecture).
pub const WORLDS: usize = 3;
/// The policy of each world.
pub const POLICIES: [LazyTlbPolicy; WORLDS] = [
    LazyTlbPolicy::X86,
    LazyTlbPolicy::Refcount,
    LazyTlbPolicy::Shootdown,
];

/// Registered address spaces get ids from here up (lower ids belong to
/// the tests that use bare roots).
const FIRST_SPACE: u32 = 16;
/// Address spaces a boot can create.
const MAX_SPACES: usize = 48;

/// The user half the kernel's spaces map into: top-level slots 1 to 255
/// (slot 0 holds the kernel image, shared with every space).
const USER_START: u64 = paging::USER_BASE;
const USER_END: u64 = 1 << 47;

/// A user address no space maps (top-level slot 2): walking it from a live
/// root faults "not present"; from a poisoned root, with a reserved bit.
pub const CANARY: u64 = 2 << 39;

/// A present entry with reserved bits set: bit 51 (above MAXPHYADDR,
/// checked at boot) and PS (reserved in a PML4 entry): any walk through it
/// faults with the reserved-bit error code (SDM Vol. 3A §5.7, error code
/// bit 3).
pub const POISON: u64 = (1 << 51) | (1 << 7) | 1;

/// Page-fault error code: a reserved bit was set in a paging structure.
const PF_RESERVED: u64 = 1 << 3;

/// The kernel's machine for one world.
#[derive(Debug)]
pub struct KernelMachine {
    world: usize,
}

static KERNEL_SPACE: AddressSpace = AddressSpace::kernel();

static SPACES: [AddressSpace; MAX_SPACES] = {
    let mut spaces = [const { AddressSpace::new(SpaceId(0)) }; MAX_SPACES];
    let mut i = 0;
    while i < MAX_SPACES {
        spaces[i] = AddressSpace::new(SpaceId(FIRST_SPACE + i as u32));
        i += 1;
    }
    spaces
};

/// Per registered space: its root (0: not created).
static ROOTS: [AtomicU64; MAX_SPACES] = [const { AtomicU64::new(0) }; MAX_SPACES];
/// Per registered space: the world it lives in.
static SPACE_WORLD: [AtomicUsize; MAX_SPACES] = [const { AtomicUsize::new(0) }; MAX_SPACES];
static NEXT_SPACE: AtomicUsize = AtomicUsize::new(0);

static CPU_STATES: [[CpuTlbState; MAX_CPUS]; WORLDS] =
    [const { [const { CpuTlbState::new() }; MAX_CPUS] }; WORLDS];

static TLBS: [Global<LazyTlb<KernelMachine>>; WORLDS] = [const { Global::new() }; WORLDS];
static ACTIVE: AtomicUsize = AtomicUsize::new(0);

/// Per CPU: invalidations of the loaded space's translations (flushes that
/// reached it and CR3 loads), for [`check_tables_free`].
static INVALIDATIONS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// Frees that left a CPU able to walk freed page tables, found by the
/// library's checks or by a CPU's walk faulting on the poison.
pub static USE_AFTER_FREE: AtomicU32 = AtomicU32::new(0);
/// Errors the library's lazy-TLB calls returned.
pub static MM_ERRORS: AtomicU32 = AtomicU32::new(0);
/// Address spaces freed.
pub static SPACES_FREED: AtomicU32 = AtomicU32::new(0);
/// Canary walks done after frees.
pub static CANARY_WALKS: AtomicU64 = AtomicU64::new(0);

/// Builds the three worlds. On the boot CPU, before it calls
/// [`boot_cpu`].
///
/// # Errors
/// A message when [`POISON`]'s bit 51 is not a reserved bit here.
pub fn init() -> Result<(), &'static str> {
    // CPUID.80000008H:EAX[7:0] is MAXPHYADDR (SDM Vol. 2A, CPUID).
    let phys_bits = cpu::cpuid(0x8000_0008, 0).eax & 0xff;
    if phys_bits > 51 {
        return Err("MAXPHYADDR above 51: the poison's bit 51 would not be reserved");
    }
    for (world, tlb) in TLBS.iter().enumerate() {
        tlb.init(LazyTlb::new(KernelMachine { world }, POLICIES[world]));
    }
    Ok(())
}

/// The active world's lazy TLB.
pub fn tlb() -> &'static LazyTlb<KernelMachine> {
    TLBS[ACTIVE.load(Ordering::Acquire)].get()
}

/// The active policy.
pub fn policy() -> LazyTlbPolicy {
    POLICIES[ACTIVE.load(Ordering::Acquire)]
}

/// Starts the executing CPU's running kernel thread on the kernel's
/// address space in the active world (a CPU coming up).
pub fn boot_cpu() {
    let world = ACTIVE.load(Ordering::Acquire);
    TLBS[world].get().boot_cpu(&sched::current().mm[world]);
}

/// Activates the next world. Every CPU must be running a kernel thread on
/// the kernel's address space (the caller's CPU its caller, the others
/// their idle tasks): each boots into the new world as it did at power-on.
///
/// # Panics
/// After the last world.
pub fn activate_next_world() -> LazyTlbPolicy {
    let next = ACTIVE.load(Ordering::Acquire) + 1;
    assert!(next < WORLDS, "every world has been used");
    ACTIVE.store(next, Ordering::Release);
    xcall::call_many(percpu::online_mask(), &|_| boot_cpu(), boot_cpu);
    POLICIES[next]
}

fn slot(space: SpaceId) -> Option<usize> {
    let index = space.0.checked_sub(FIRST_SPACE)? as usize;
    (index < NEXT_SPACE.load(Ordering::Acquire).min(MAX_SPACES)).then_some(index)
}

/// Whether `space` is a registered address space (created by
/// [`create_space`]) whose flushes follow the lazy-TLB policy.
pub fn is_registered(space: SpaceId) -> bool {
    slot(space).is_some_and(|i| ROOTS[i].load(Ordering::Acquire) != 0)
}

/// The root of a registered space or of the kernel's.
pub fn root_of(space: SpaceId) -> PhysAddr {
    if space == SpaceId::KERNEL {
        return page_tables::kernel_root();
    }
    let i = slot(space).expect("an address space the kernel created");
    PhysAddr(ROOTS[i].load(Ordering::Acquire))
}

/// A new address space in the active world with one user (the caller,
/// who gives it up with [`release_space`]); its root links the kernel's
/// entries.
///
/// # Errors
/// A message when the ids or the page-table frames run out.
pub fn create_space() -> Result<SpaceId, &'static str> {
    let index = NEXT_SPACE.fetch_add(1, Ordering::AcqRel);
    if index >= MAX_SPACES {
        return Err("address spaces exhausted");
    }
    let root = paging::new_user_root().ok_or("no frame for a root table")?;
    SPACE_WORLD[index].store(ACTIVE.load(Ordering::Acquire), Ordering::Release);
    ROOTS[index].store(root.0, Ordering::Release);
    Ok(SpaceId(FIRST_SPACE + index as u32))
}

/// Gives up the creator's use of `space` (`mmput`): the last user tears it
/// down.
pub fn release_space(space: SpaceId) {
    report(tlb().mmput(space), "mmput");
}

/// The address space structure of `space`.
pub fn space(space: SpaceId) -> &'static AddressSpace {
    KernelMachine { world: 0 }.space_static(space)
}

/// Starts a user task of `space` (`mmget` for it, then the task's `mm`).
pub fn spawn_user(
    space: SpaceId,
    name: &'static str,
    entry: fn(usize),
    arg: usize,
    affinity: u64,
) -> &'static Task {
    report(tlb().mmget(space), "mmget");
    let world = ACTIVE.load(Ordering::Acquire);
    sched::spawn_prepared(name, entry, arg, affinity, |task| {
        report(task.mm[world].reuse_as_user(space), "reuse_as_user");
    })
}

/// The context switch's address-space part (interrupts off).
pub fn context_switch(prev: &Task, next: &Task) {
    let world = ACTIVE.load(Ordering::Acquire);
    let tlb = TLBS[world].get();
    report(
        tlb.context_switch(&prev.mm[world], &next.mm[world]),
        "context_switch",
    );
}

/// `exit_mm()` for a task that ends, if it has an address space.
pub fn exit_task(task: &Task) {
    let world = ACTIVE.load(Ordering::Acquire);
    if task.mm[world].mm().is_some() {
        report(TLBS[world].get().exit_mm(&task.mm[world]), "exit_mm");
    }
}

/// Flushes `range` of the registered `space` on the CPUs the policy says
/// may hold it (`flush_tlb_mm_range`), `freed_tables` when page tables
/// were unlinked.
pub fn flush_tlb_mm_range(space: SpaceId, range: FlushRange, freed_tables: bool) {
    let index = slot(space).expect("a registered space");
    let world = SPACE_WORLD[index].load(Ordering::Acquire);
    TLBS[world]
        .get()
        .flush_tlb_mm_range(space, range, freed_tables);
}

fn report(result: Result<(), MmError>, what: &str) {
    if let Err(error) = result {
        MM_ERRORS.fetch_add(1, Ordering::Relaxed);
        println!("FAIL lazy TLB: {what}: {error:?}");
    }
}

/// `cpus` as the one-word mask the cross-calls take: this kernel runs on at
/// most `percpu::MAX_CPUS` CPUs, all below 64.
pub fn one_word(cpus: CpuMask) -> u64 {
    cpus.to_bits().expect("the kernel's CPUs are below 64")
}

/// Runs a lazy-TLB function on other CPUs: the cross-call of
/// `on_each_cpu_mask` and of the TLB shootdown. With the
/// `debug-skip-shootdown` feature the remote CPUs are left out, which the
/// guest's tests must notice.
pub fn tlb_cross_call(targets: u64, func: &(dyn Fn(usize) + Sync), local: impl FnOnce()) {
    if cfg!(feature = "debug-skip-shootdown") {
        local();
        return;
    }
    xcall::call_many(targets, func, local);
}

/// The library's closures are shared with the CPUs a cross-call reaches.
struct SharedFunc<'a>(&'a dyn Fn(CpuId));

// SAFETY: the functions `LazyTlb` hands to `on_each_cpu` capture only
// references to itself and to the machine (atomics and zero-sized types)
// and copies of plain values; each run touches only atomics and the
// running CPU's own state, so several CPUs may run one at once.
unsafe impl Sync for SharedFunc<'_> {}

impl SharedFunc<'_> {
    fn call(&self, cpu: CpuId) {
        (self.0)(cpu)
    }
}

impl KernelMachine {
    fn space_static(&self, id: SpaceId) -> &'static AddressSpace {
        if id == SpaceId::KERNEL {
            return &KERNEL_SPACE;
        }
        let index =
            id.0.checked_sub(FIRST_SPACE)
                .map(|i| i as usize)
                .filter(|&i| i < MAX_SPACES)
                .unwrap_or_else(|| panic!("unknown address space {}", id.0));
        &SPACES[index]
    }
}

/// The executing CPU, as the lazy mode's environment sees it.
impl Cpu for KernelMachine {
    fn cpu_id(&self) -> CpuId {
        KernelEnv.cpu_id()
    }
    fn in_interrupt(&self) -> bool {
        KernelEnv.in_interrupt()
    }
    fn preempt_disable(&self) {
        KernelEnv.preempt_disable();
    }
    fn preempt_enable(&self) {
        KernelEnv.preempt_enable();
    }
}

impl MmMachine for KernelMachine {
    fn space(&self, id: SpaceId) -> &AddressSpace {
        self.space_static(id)
    }

    fn cpu_state(&self, cpu: CpuId) -> &CpuTlbState {
        &CPU_STATES[self.world][cpu.index()]
    }

    fn current_task(&self) -> &TaskMm {
        &sched::current().mm[self.world]
    }

    fn load_root(&self, space: SpaceId) {
        let root = root_of(space);
        // SAFETY: every root the kernel loads links the kernel's entries
        // (slot 0 and the upper half), so the running code, stack and data
        // stay mapped.
        unsafe { cpu::write_cr3(root.0) };
        percpu::record_cr3(root.0, space.0);
        INVALIDATIONS[percpu::cpu_index()].fetch_add(1, Ordering::Relaxed);
    }

    fn flush_local(&self, space: SpaceId, range: FlushRange) {
        let request = match range {
            FlushRange::All => RemoteFlush::All { space },
            FlushRange::Range { start, end, stride } => RemoteFlush::Range {
                space,
                start,
                end,
                stride,
            },
        };
        if percpu::this_cpu().loaded_space.load(Ordering::Acquire) == space.0 {
            INVALIDATIONS[percpu::cpu_index()].fetch_add(1, Ordering::Relaxed);
        }
        flush_locally(&paging::BARE_METAL, request);
    }

    fn on_each_cpu(&self, targets: CpuMask, func: &dyn Fn(CpuId)) {
        let shared = SharedFunc(func);
        let me = self.cpu_id();
        let run = |cpu: usize| shared.call(CpuId::new(cpu));
        tlb_cross_call(one_word(targets), &run, || {
            if targets.contains(me) {
                let were_enabled = cpu::disable_interrupts();
                func(me);
                if were_enabled {
                    cpu::enable_interrupts();
                }
            }
        });
    }

    fn unlink_tables(&self, space: SpaceId, range: FlushRange) -> usize {
        let (start, end) = match range {
            FlushRange::All => (USER_START, USER_END),
            FlushRange::Range { start, end, .. } => (start.0, end.0),
        };
        let index = slot(space).expect("a registered space");
        let tables =
            page_tables::tables_on(paging::backend(), paging::lazy(), root_of(space), space);
        let pending = PendingFrames { space: index };
        let mut gather = Gather::new(&NoFlush, &pending, space, FlushScope::Local);
        let zapped = tables.zap(VirtAddr(start), end - start, &mut gather);
        drop(gather);
        // The flush that follows says itself that tables were freed.
        sched::current().take_freed_tables();
        if zapped.is_err() {
            MM_ERRORS.fetch_add(1, Ordering::Relaxed);
            println!("FAIL lazy TLB: unlinking the tables of space {}", space.0);
        }
        for (cpu, count) in INVALIDATIONS.iter().enumerate() {
            UNLINK_SNAPSHOT[index][cpu].store(count.load(Ordering::Acquire), Ordering::Release);
        }
        PENDING.lock().count_for(index)
    }

    fn free_unlinked_tables(&self, space: SpaceId) {
        let index = slot(space).expect("a registered space");
        let snapshot: [u64; MAX_CPUS] =
            core::array::from_fn(|cpu| UNLINK_SNAPSHOT[index][cpu].load(Ordering::Acquire));
        if let Err(violation) = check_tables_free(&Hardware, space, &snapshot) {
            USE_AFTER_FREE.fetch_add(1, Ordering::Relaxed);
            println!("FAIL use after free: {violation}");
        }
        let frames = PENDING.lock().take_for(index);
        for frame in frames.iter().flatten() {
            poison(*frame, 0..512);
            quarantine(*frame);
        }
        walk_canary_everywhere();
    }

    fn free_space(&self, space: SpaceId) {
        if let Err(violation) = check_space_free(&Hardware, space) {
            USE_AFTER_FREE.fetch_add(1, Ordering::Relaxed);
            println!("FAIL use after free: {violation}");
        }
        let root = root_of(space);
        poison(root, 1..256);
        quarantine(root);
        SPACES_FREED.fetch_add(1, Ordering::Relaxed);
        walk_canary_everywhere();
    }
}

/// What the hardware holds, from the CR3 value each CPU records right
/// after loading it.
struct Hardware;

impl HardwareView for Hardware {
    fn cpu_count(&self) -> usize {
        MAX_CPUS
    }

    fn root(&self, cpu: CpuId) -> SpaceId {
        let record = percpu::cpu(cpu.index());
        if !record.online.load(Ordering::Acquire) {
            return SpaceId::KERNEL;
        }
        SpaceId(record.loaded_space.load(Ordering::Acquire))
    }

    fn invalidations(&self, cpu: CpuId, _space: SpaceId) -> u64 {
        INVALIDATIONS[cpu.index()].load(Ordering::Acquire)
    }
}

static UNLINK_SNAPSHOT: [[AtomicU64; MAX_CPUS]; MAX_SPACES] =
    [const { [const { AtomicU64::new(0) }; MAX_CPUS] }; MAX_SPACES];

/// Flushes nothing: the unlink of `exit_mmap` is followed by the policy's
/// own flush (`free_page_tables`).
struct NoFlush;

impl TlbFlush for NoFlush {
    fn flush_range(
        &self,
        _space: SpaceId,
        _start: VirtAddr,
        _end: VirtAddr,
        _stride: lazymmu::addr::PageSize,
        _scope: FlushScope,
    ) {
    }
    fn flush_all(&self, _space: SpaceId, _scope: FlushScope) {}
}

const PENDING_FRAMES: usize = 64;

/// Page-table frames unlinked and not yet freed, per space.
struct Pending {
    frames: [(usize, PhysAddr); PENDING_FRAMES],
    len: usize,
}

impl Pending {
    fn count_for(&self, space: usize) -> usize {
        self.frames[..self.len]
            .iter()
            .filter(|(s, _)| *s == space)
            .count()
    }

    fn take_for(&mut self, space: usize) -> [Option<PhysAddr>; PENDING_FRAMES] {
        let mut taken = [None; PENDING_FRAMES];
        let mut kept = 0;
        for (i, slot) in taken.iter_mut().enumerate().take(self.len) {
            let (s, frame) = self.frames[i];
            if s == space {
                *slot = Some(frame);
            } else {
                self.frames[kept] = (s, frame);
                kept += 1;
            }
        }
        self.len = kept;
        taken
    }
}

static PENDING: SpinLock<Pending> = SpinLock::new(Pending {
    frames: [(0, PhysAddr(0)); PENDING_FRAMES],
    len: 0,
});

/// The "allocator" the unlinking gather frees into: it keeps the frames
/// for [`KernelMachine::free_unlinked_tables`].
struct PendingFrames {
    space: usize,
}

impl FrameAllocator for PendingFrames {
    fn allocate(&self) -> Option<PhysAddr> {
        None
    }

    fn free(&self, frame: PhysAddr) {
        let mut pending = PENDING.lock();
        let len = pending.len;
        assert!(len < PENDING_FRAMES, "too many unlinked page-table frames");
        pending.frames[len] = (self.space, frame);
        pending.len += 1;
    }
}

const QUARANTINE_FRAMES: usize = 256;

static QUARANTINE: SpinLock<([PhysAddr; QUARANTINE_FRAMES], usize)> =
    SpinLock::new(([PhysAddr(0); QUARANTINE_FRAMES], 0));

fn quarantine(frame: PhysAddr) {
    let full = {
        let mut q = QUARANTINE.lock();
        let len = q.1;
        if len < QUARANTINE_FRAMES {
            q.0[len] = frame;
            q.1 += 1;
            false
        } else {
            true
        }
    };
    if full {
        // Oldest first would be kinder; a full quarantine just frees.
        page_tables::TABLE_FRAMES.free(frame);
    }
}

/// Overwrites entries `slots` of the page-table frame `frame` with
/// [`POISON`].
fn poison(frame: PhysAddr, slots: core::ops::Range<u64>) {
    let base = memory::phys_to_virt(frame) as *mut u64;
    pks::with_page_table_window(|| {
        for slot in slots {
            // SAFETY: the frame is a page-table page that was just
            // unlinked (or a root no CPU may load any more) and belongs to
            // the quarantine from now on; the window makes it writable.
            unsafe { base.add(slot as usize).write_volatile(POISON) };
        }
    });
}

/// Every online CPU walks [`CANARY`] through its current root; a walk
/// that meets the poison counts as a use after free.
pub fn walk_canary_everywhere() {
    let walk = |cpu: usize| walk_canary(cpu);
    let me = percpu::cpu_index();
    xcall::call_many(percpu::online_mask(), &walk, || {
        let were_enabled = cpu::disable_interrupts();
        walk_canary(me);
        if were_enabled {
            cpu::enable_interrupts();
        }
    });
}

fn walk_canary(cpu: usize) {
    CANARY_WALKS.fetch_add(1, Ordering::Relaxed);
    match interrupts::read(CANARY) {
        Err(fault) if fault.error_code & PF_RESERVED != 0 => {
            USE_AFTER_FREE.fetch_add(1, Ordering::Relaxed);
            println!(
                "FAIL use after free: CPU {cpu} walked a freed root (CR3 {:#x}, error {:#x})",
                cpu::read_cr3(),
                fault.error_code
            );
        }
        Err(_) => {}
        Ok(value) => {
            USE_AFTER_FREE.fetch_add(1, Ordering::Relaxed);
            println!("FAIL CPU {cpu} read {value:#x} at the canary, which no space maps");
        }
    }
}

/// Returns the quarantined frames to the page-table pool, after one last
/// walk on every CPU.
pub fn drain_quarantine() {
    walk_canary_everywhere();
    let (frames, len) = {
        let mut q = QUARANTINE.lock();
        let taken = *q;
        q.1 = 0;
        taken
    };
    for frame in &frames[..len] {
        page_tables::TABLE_FRAMES.free(*frame);
    }
}

/// Builds a root, poisons its user half as a free does, loads it on this
/// CPU for one walk of [`CANARY`] and returns the walk's page-fault error
/// code (the check's own check).
///
/// # Errors
/// A message when no frame is left or the walk did not fault.
pub fn walk_poisoned_root() -> Result<u64, &'static str> {
    let root = paging::new_user_root().ok_or("no frame for a root")?;
    poison(root, 1..256);
    let were_enabled = cpu::disable_interrupts();
    let kernel = page_tables::kernel_root();
    // SAFETY: the root links the kernel's entries (slot 0 and the upper
    // half), untouched by the poison, so the running code stays mapped;
    // interrupts are off until the kernel's root is back.
    unsafe { cpu::write_cr3(root.0) };
    let walked = interrupts::read(CANARY);
    // SAFETY: the kernel's own root.
    unsafe { cpu::write_cr3(kernel.0) };
    if were_enabled {
        cpu::enable_interrupts();
    }
    page_tables::TABLE_FRAMES.free(root);
    match walked {
        Err(fault) => Ok(fault.error_code),
        Ok(_) => Err("a walk through a poisoned root did not fault"),
    }
}
